//! The reconnect grace of the webhooks (`webhooks.disconnect_grace_ms`) against a real
//! receiver that checks every signature, on real server processes: a user who reconnects
//! within the grace gets one `reconnect` (both connection ids) instead of `disconnect` and
//! `connect`, and the presence leave / vacancy of the channels it rejoins are paired away;
//! after the grace, or without rejoining, the held events arrive; the cap on held events sends
//! the excess at once; a drain sends what it holds; on two nodes with Redis a reconnect that
//! lands on the other node is paired exactly once, and a node killed with `kill -9` while it
//! holds a disconnect still has it reported by the node that reaps it.

mod common;

use common::receiver::{types_of, Answer, Receiver, HOOK_SECRET};
use common::Server;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
profile = "dev"
drain_timeout_secs = 3
[[channels]]
topic = "room:*"
presence = true
"#;

const EVENTS: &str = "connect,disconnect,reconnect,join,leave,presence_join,presence_leave,\
                      channel_occupied,channel_vacated";

async fn start(url: &str, grace_ms: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_WEBHOOK_URL", url),
        ("PLEXUS_WEBHOOK_EVENTS", EVENTS),
        ("PLEXUS_WEBHOOK_DISCONNECT_GRACE_MS", grace_ms),
        ("PLEXUS_WEBHOOK_BATCH_WAIT_MS", "10"),
    ];
    env.extend_from_slice(extra);
    Server::start_with(Some(CONFIG), &env).await
}

fn ok(_: &str, _: &Value) -> Answer {
    Answer::Json(json!({}))
}

/// `type` of the channel events of `topic`, in order.
fn topic_events(events: &[Value], topic: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["topic"] == topic && e["type"].as_str().unwrap().starts_with("channel_"))
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

fn find<'a>(events: &'a [Value], sub: &str, kind: &str, nth: usize) -> &'a Value {
    events
        .iter()
        .filter(|e| e["sub"] == sub && e["type"] == kind)
        .nth(nth)
        .unwrap_or_else(|| panic!("no {kind} #{nth} of {sub}: {events:#?}"))
}

async fn metric(s: &Server, name: &str) -> u64 {
    let (_, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .filter(|v| v.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits until the node holds `n` events (its teardowns were processed) and recorded them
/// (a reconnect can claim them).
async fn wait_held(s: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(s, "plexus_webhook_grace_held").await < n
        || metric(s, "plexus_webhook_grace_recorded_total").await < n
    {
        assert!(Instant::now() < deadline, "never held {n} events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reconnect_within_the_grace_is_one_reconnect_event_and_rejoined_channels_stay_quiet() {
    let recv = Receiver::start(ok).await;
    let s = start(&recv.url("/webhook"), "1500", &[]).await;
    let mut alice = s.client("alice").await;
    assert!(alice.join("room:1", json!({})).await.unwrap().is_ok());
    recv.wait_events(Duration::from_secs(5), |e| {
        e.iter().any(|e| e["type"] == "presence_join")
    })
    .await;
    alice.close().await;
    // presence_leave, channel_vacated, disconnect.
    wait_held(&s, 3).await;
    let mut again = s.client("alice").await;
    assert!(again.join("room:1", json!({})).await.unwrap().is_ok());
    // Past the grace: whatever was going to be sent was.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events = recv.events();
    recv.assert_all_signed();
    assert_eq!(
        types_of(&events, "alice"),
        [
            "connect",
            "join room:1",
            "presence_join room:1",
            "leave room:1",
            "reconnect",
            "join room:1",
        ],
        "{events:#?}"
    );
    assert_eq!(topic_events(&events, "room:1"), ["channel_occupied"]);
    let first = find(&events, "alice", "connect", 0)["conn"].clone();
    let second = find(&events, "alice", "join", 1)["conn"].clone();
    assert_ne!(first, second);
    let reconnect = find(&events, "alice", "reconnect", 0);
    assert_eq!(reconnect["previous_conn"], first);
    assert_eq!(reconnect["conn"], second);
    assert_eq!(find(&events, "alice", "leave", 0)["conn"], first);
    // Three pairs: disconnect+connect, presence_leave+presence_join, vacated+occupied.
    assert_eq!(metric(&s, "plexus_webhook_grace_suppressed_total").await, 3);
    assert_eq!(metric(&s, "plexus_webhook_grace_sent_total").await, 0);
    assert_eq!(metric(&s, "plexus_webhook_grace_held").await, 0);
    // The new connection's own disconnect is held and sent as usual.
    again.close().await;
    let events = recv
        .wait_events(Duration::from_secs(5), |e| {
            e.iter().any(|e| e["type"] == "disconnect")
        })
        .await;
    let tail: Vec<String> = types_of(&events, "alice").into_iter().skip(6).collect();
    assert_eq!(
        tail,
        ["leave room:1", "presence_leave room:1", "disconnect"],
        "{events:#?}"
    );
    assert_eq!(find(&events, "alice", "disconnect", 0)["conn"], second);
    assert_eq!(
        topic_events(&events, "room:1"),
        ["channel_occupied", "channel_vacated"]
    );
}

#[tokio::test]
async fn after_the_grace_the_disconnect_then_the_connect_arrive_as_without_one() {
    let recv = Receiver::start(ok).await;
    let s = start(&recv.url("/webhook"), "800", &[]).await;
    let alice = s.client("alice").await;
    recv.wait_events(Duration::from_secs(5), |e| !e.is_empty())
        .await;
    alice.close().await;
    wait_held(&s, 1).await;
    let held_at = Instant::now();
    let events = recv
        .wait_events(Duration::from_secs(5), |e| {
            e.iter().any(|e| e["type"] == "disconnect")
        })
        .await;
    // Not before the grace.
    assert!(
        held_at.elapsed() >= Duration::from_millis(700),
        "{events:#?}"
    );
    let _again = s.client("alice").await;
    let events = recv
        .wait_events(Duration::from_secs(5), |e| {
            e.iter().filter(|e| e["type"] == "connect").count() == 2
        })
        .await;
    assert_eq!(
        types_of(&events, "alice"),
        ["connect", "disconnect", "connect"]
    );
    assert_eq!(
        find(&events, "alice", "disconnect", 0)["conn"],
        find(&events, "alice", "connect", 0)["conn"]
    );
    assert_eq!(metric(&s, "plexus_webhook_grace_suppressed_total").await, 0);
    assert_eq!(metric(&s, "plexus_webhook_grace_sent_total").await, 1);
}

#[tokio::test]
async fn a_user_who_reconnects_without_rejoining_gets_the_presence_leave_and_a_vacancy_pairs_with_anyone(
) {
    let recv = Receiver::start(ok).await;
    let s = start(&recv.url("/webhook"), "1200", &[]).await;
    let mut alice = s.client("alice").await;
    assert!(alice.join("room:1", json!({})).await.unwrap().is_ok());
    assert!(alice.join("room:2", json!({})).await.unwrap().is_ok());
    recv.wait_events(Duration::from_secs(5), |e| {
        e.iter().filter(|e| e["type"] == "presence_join").count() == 2
    })
    .await;
    alice.close().await;
    // 2 presence_leave, 2 channel_vacated, disconnect.
    wait_held(&s, 5).await;
    // Alice is back but in no channel; bob occupies room:2.
    let _again = s.client("alice").await;
    let mut bob = s.client("bob").await;
    assert!(bob.join("room:2", json!({})).await.unwrap().is_ok());
    recv.wait_events(Duration::from_secs(5), |e| {
        e.iter().filter(|e| e["type"] == "presence_leave").count() == 2
            && e.iter().any(|e| e["type"] == "channel_vacated")
    })
    .await;
    // Anything else the end of the grace would send.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = recv.events();
    let alice_events = types_of(&events, "alice");
    assert!(
        alice_events.contains(&"reconnect".to_owned()),
        "{events:#?}"
    );
    assert!(!alice_events.contains(&"disconnect".to_owned()));
    assert_eq!(
        alice_events.iter().filter(|e| *e == "connect").count(),
        1,
        "{events:#?}"
    );
    // Alice did not rejoin: her presence leaves are sent, after the grace.
    assert!(alice_events.contains(&"presence_leave room:1".to_owned()));
    assert!(alice_events.contains(&"presence_leave room:2".to_owned()));
    // room:1 was left empty: vacated. room:2 was occupied again by bob within the grace:
    // neither its vacancy nor bob's occupancy is sent.
    assert_eq!(
        topic_events(&events, "room:1"),
        ["channel_occupied", "channel_vacated"]
    );
    assert_eq!(topic_events(&events, "room:2"), ["channel_occupied"]);
    // bob's join and presence_join are his own.
    assert_eq!(
        types_of(&events, "bob"),
        ["connect", "join room:2", "presence_join room:2"]
    );
    assert_eq!(metric(&s, "plexus_webhook_grace_sent_total").await, 3);
    assert_eq!(metric(&s, "plexus_webhook_grace_suppressed_total").await, 2);
}

#[tokio::test]
async fn past_the_cap_held_events_are_sent_at_once_not_dropped() {
    let recv = Receiver::start(ok).await;
    let s = start(
        &recv.url("/webhook"),
        "3000",
        &[("PLEXUS_WEBHOOK_DISCONNECT_GRACE_MAX", "2")],
    )
    .await;
    let mut clients = Vec::new();
    for sub in ["u1", "u2", "u3"] {
        clients.push(s.client(sub).await);
    }
    recv.wait_events(Duration::from_secs(5), |e| e.len() == 3)
        .await;
    let mut clients = clients.into_iter();
    for _ in 0..2 {
        clients.next().unwrap().close().await;
    }
    wait_held(&s, 2).await;
    let started = Instant::now();
    clients.next().unwrap().close().await;
    // The third does not fit: sent at once.
    let events = recv
        .wait_events(Duration::from_secs(2), |e| {
            e.iter().any(|e| e["type"] == "disconnect")
        })
        .await;
    assert!(started.elapsed() < Duration::from_millis(2000));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "disconnect")
            .map(|e| e["sub"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["u3"]
    );
    assert_eq!(metric(&s, "plexus_webhook_grace_over_cap_total").await, 1);
    assert_eq!(metric(&s, "plexus_webhook_grace_held").await, 2);
    // The held two follow at the end of their grace: nothing lost.
    let events = recv
        .wait_events(Duration::from_secs(6), |e| {
            e.iter().filter(|e| e["type"] == "disconnect").count() == 3
        })
        .await;
    assert_eq!(
        events.iter().filter(|e| e["type"] == "disconnect").count(),
        3
    );
}

#[tokio::test]
async fn a_draining_node_sends_what_it_holds_before_it_exits() {
    let recv = Receiver::start(ok).await;
    // A grace longer than the drain: the drain's deadline sends the held events.
    let mut s = start(&recv.url("/webhook"), "60000", &[]).await;
    let mut alice = s.client("alice").await;
    assert!(alice.join("room:1", json!({})).await.unwrap().is_ok());
    recv.wait_events(Duration::from_secs(5), |e| {
        e.iter().any(|e| e["type"] == "presence_join")
    })
    .await;
    alice.close().await;
    wait_held(&s, 3).await;
    let started = Instant::now();
    let code = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    let events = recv.events();
    assert_eq!(
        types_of(&events, "alice"),
        [
            "connect",
            "join room:1",
            "presence_join room:1",
            "leave room:1",
            "presence_leave room:1",
            "disconnect"
        ],
        "{events:#?}"
    );
    assert_eq!(
        topic_events(&events, "room:1"),
        ["channel_occupied", "channel_vacated"]
    );
}

mod cluster {
    use super::*;
    use common::SuiteRedis;

    const CLUSTER_CONFIG: &str = r#"
profile = "dev"
broker = "redis"
[redis]
node_timeout_secs = 2
[[channels]]
topic = "room:*"
presence = true
"#;

    async fn node(redis: &SuiteRedis, recv: &Receiver, grace_ms: &str) -> Server {
        let url = redis.url();
        let hook = recv.url("/webhook");
        let env = [
            ("PLEXUS_REDIS_URL", url.as_str()),
            ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
            ("PLEXUS_WEBHOOK_URL", hook.as_str()),
            ("PLEXUS_WEBHOOK_EVENTS", EVENTS),
            ("PLEXUS_WEBHOOK_DISCONNECT_GRACE_MS", grace_ms),
            ("PLEXUS_WEBHOOK_BATCH_WAIT_MS", "10"),
        ];
        Server::start_with(Some(CLUSTER_CONFIG), &env).await
    }

    #[tokio::test]
    async fn a_reconnect_on_the_other_node_is_paired_exactly_once_cluster_wide() {
        let redis = SuiteRedis::start().await;
        let recv = Receiver::start(ok).await;
        let a = node(&redis, &recv, "2000").await;
        let b = node(&redis, &recv, "2000").await;
        let mut alice = a.client("alice").await;
        assert!(alice.join("room:1", json!({})).await.unwrap().is_ok());
        // bob leaves for good; carol stays on b in room:2.
        let mut bob = a.client("bob").await;
        assert!(bob.join("room:2", json!({})).await.unwrap().is_ok());
        let mut carol = b.client("carol").await;
        assert!(carol.join("room:2", json!({})).await.unwrap().is_ok());
        recv.wait_events(Duration::from_secs(5), |e| {
            e.iter().filter(|e| e["type"] == "presence_join").count() == 3
        })
        .await;
        alice.close().await;
        bob.close().await;
        // alice: presence_leave, vacated, disconnect; bob: presence_leave, disconnect.
        wait_held(&a, 5).await;
        let mut again = b.client("alice").await;
        assert!(again.join("room:1", json!({})).await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let events = recv.events();
        recv.assert_all_signed();
        assert_eq!(
            types_of(&events, "alice"),
            [
                "connect",
                "join room:1",
                "presence_join room:1",
                "leave room:1",
                "reconnect",
                "join room:1",
            ],
            "{events:#?}"
        );
        let reconnect = find(&events, "alice", "reconnect", 0);
        assert_eq!(
            reconnect["previous_conn"],
            find(&events, "alice", "connect", 0)["conn"]
        );
        assert_eq!(reconnect["conn"], find(&events, "alice", "join", 1)["conn"]);
        assert_eq!(reconnect["node"], find(&events, "alice", "join", 1)["node"]);
        assert_ne!(
            reconnect["node"],
            find(&events, "alice", "connect", 0)["node"]
        );
        assert_eq!(topic_events(&events, "room:1"), ["channel_occupied"]);
        // bob did not come back: his presence leave and disconnect, once; room:2 has carol.
        assert_eq!(
            types_of(&events, "bob"),
            [
                "connect",
                "join room:2",
                "presence_join room:2",
                "leave room:2",
                "presence_leave room:2",
                "disconnect"
            ]
        );
        assert_eq!(topic_events(&events, "room:2"), ["channel_occupied"]);
        // The pairs were claimed on b; a sent only bob's two.
        assert_eq!(metric(&b, "plexus_webhook_grace_suppressed_total").await, 3);
        assert_eq!(metric(&a, "plexus_webhook_grace_suppressed_total").await, 0);
        assert_eq!(metric(&a, "plexus_webhook_grace_sent_total").await, 2);
        drop(carol);
    }

    #[tokio::test]
    async fn a_node_killed_while_it_holds_a_disconnect_has_it_reported_by_the_reaper() {
        let redis = SuiteRedis::start().await;
        let recv = Receiver::start(ok).await;
        let mut a = node(&redis, &recv, "30000").await;
        let b = node(&redis, &recv, "30000").await;
        let alice = a.client("alice").await;
        recv.wait_events(Duration::from_secs(5), |e| {
            e.iter().any(|e| e["type"] == "connect")
        })
        .await;
        alice.close().await;
        wait_held(&a, 1).await;
        a.kill9();
        let events = recv
            .wait_events(Duration::from_secs(15), |e| {
                e.iter().any(|e| e["type"] == "disconnect")
            })
            .await;
        let d = find(&events, "alice", "disconnect", 0);
        assert_eq!(d["reaped"], true, "{events:#?}");
        assert_eq!(d["conn"], find(&events, "alice", "connect", 0)["conn"]);
        assert_eq!(
            events.iter().filter(|e| e["type"] == "disconnect").count(),
            1
        );
        drop(b);
    }

    #[tokio::test]
    async fn a_disconnect_claimed_by_a_reconnect_is_not_reported_again_when_its_node_dies() {
        let redis = SuiteRedis::start().await;
        let recv = Receiver::start(ok).await;
        let mut a = node(&redis, &recv, "30000").await;
        let b = node(&redis, &recv, "30000").await;
        let alice = a.client("alice").await;
        // bob stays on a: the reaper reports his disconnect, which tells that it ran.
        let _bob = a.client("bob").await;
        recv.wait_events(Duration::from_secs(5), |e| {
            e.iter().filter(|e| e["type"] == "connect").count() == 2
        })
        .await;
        alice.close().await;
        wait_held(&a, 1).await;
        let _again = b.client("alice").await;
        recv.wait_events(Duration::from_secs(5), |e| {
            e.iter().any(|e| e["type"] == "reconnect")
        })
        .await;
        a.kill9();
        let events = recv
            .wait_events(Duration::from_secs(15), |e| {
                e.iter()
                    .any(|e| e["type"] == "disconnect" && e["sub"] == "bob")
            })
            .await;
        assert_eq!(find(&events, "bob", "disconnect", 0)["reaped"], true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = recv.events();
        assert_eq!(
            types_of(&events, "alice"),
            ["connect", "reconnect"],
            "{events:#?}"
        );
        drop(b);
    }

    /// A hold's record is claimable only within its grace: once the grace of a killed node's
    /// held `disconnect` is over and the reaper reported it, the user's next connect is a
    /// `connect`, not a `reconnect` naming a connection already reported gone.
    #[tokio::test]
    async fn a_hold_of_a_killed_node_is_not_claimed_after_its_grace() {
        let redis = SuiteRedis::start().await;
        let recv = Receiver::start(ok).await;
        let mut a = node(&redis, &recv, "1000").await;
        let b = node(&redis, &recv, "1000").await;
        let alice = a.client("alice").await;
        recv.wait_events(Duration::from_secs(5), |e| {
            e.iter().any(|e| e["type"] == "connect")
        })
        .await;
        alice.close().await;
        wait_held(&a, 1).await;
        a.kill9();
        recv.wait_events(Duration::from_secs(15), |e| {
            e.iter().any(|e| e["type"] == "disconnect")
        })
        .await;
        let _again = b.client("alice").await;
        let events = recv
            .wait_events(Duration::from_secs(5), |e| {
                e.iter().filter(|e| e["sub"] == "alice").count() == 3
            })
            .await;
        assert_eq!(
            types_of(&events, "alice"),
            ["connect", "disconnect", "connect"],
            "{events:#?}"
        );
        assert_eq!(find(&events, "alice", "disconnect", 0)["reaped"], true);
    }
}
