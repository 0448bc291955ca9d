//! Webhooks on a 3-node Redis cluster (real `redis-server`, real processes, one receiver):
//! `channel_occupied`/`channel_vacated` once per cluster, not once per node, however the
//! subscribers come and go; every `disconnect` exactly once, including the connections of a
//! node killed with `kill -9`, which the node that reaps it reports (`"reaped": true`).

mod common;

use common::receiver::{Answer, Receiver, HOOK_SECRET};
use common::{Redis, Server};
use serde_json::{json, Value};
use std::time::Duration;

const CONFIG: &str = r#"
profile = "dev"
broker = "redis"
[redis]
node_timeout_secs = 2
[supabase]
enabled = true
[[channels]]
topic = "room:*"
presence = true
[[channels]]
topic = "*"
presence = true
"#;

async fn cluster(redis: &impl common::RedisUrl, recv: &Receiver) -> Vec<Server> {
    let url = redis.url();
    let hook = recv.url("/webhook");
    let env = [
        ("PLEXUS_REDIS_URL", url.as_str()),
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_WEBHOOK_URL", hook.as_str()),
        (
            "PLEXUS_WEBHOOK_EVENTS",
            "connect,disconnect,channel_occupied,channel_vacated,presence_leave",
        ),
    ];
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Server::start_with(Some(CONFIG), &env).await);
    }
    nodes
}

/// The lost node's id, from a reaped disconnect.
fn d_node(events: &[Value]) -> &str {
    events
        .iter()
        .find_map(|e| e["lost_node"].as_str())
        .unwrap_or("?")
}

fn count(events: &[Value], kind: &str, topic: &str) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["topic"] == topic)
        .count()
}

#[tokio::test]
async fn occupied_and_vacated_once_per_cluster_and_disconnects_once_even_after_kill_9() {
    let redis = common::SuiteRedis::start().await;
    let recv = Receiver::start(|_, _| Answer::Json(json!({}))).await;
    let mut nodes = cluster(&redis, &recv).await;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            clients.push(node.client(&format!("n{i}c{j}")).await);
        }
    }
    // Rounds of every client joining at once, then leaving at once, across three nodes. The
    // leaves are counted in the background (after the leave replies), so each round waits
    // for its `channel_vacated` before the next one joins: otherwise the next round's joins
    // could overtake the last decrements and the topic would never reach 0 in between.
    let rounds = 4;
    for round in 1..=rounds {
        let joins = clients.iter_mut().map(|c| c.join("room:shared", json!({})));
        for r in futures_util::future::join_all(joins).await {
            assert!(r.unwrap().is_ok());
        }
        let leaves = clients.iter_mut().map(|c| c.leave("room:shared"));
        for r in futures_util::future::join_all(leaves).await {
            assert!(r.unwrap().is_ok());
        }
        let events = recv
            .wait_events(Duration::from_secs(5), |e| {
                count(e, "channel_vacated", "room:shared") >= round
            })
            .await;
        assert_eq!(
            count(&events, "channel_vacated", "room:shared"),
            round,
            "round {round}: {events:#?}"
        );
    }
    let events = recv.events();
    tokio::time::sleep(Duration::from_millis(500)).await; // any duplicate would show by now
    let events_now = recv.events();
    assert_eq!(
        count(&events_now, "channel_occupied", "room:shared"),
        rounds,
        "{events:#?}"
    );
    assert_eq!(count(&events_now, "channel_vacated", "room:shared"), rounds);

    // Node 2's clients: one alone on room:solo (vacated when the node dies), one on
    // room:shared with a client of node 0 (not vacated), one tracked in presence.
    assert!(clients[4]
        .join("room:solo", json!({}))
        .await
        .unwrap()
        .is_ok());
    assert!(clients[5]
        .join("room:shared", json!({}))
        .await
        .unwrap()
        .is_ok());
    assert!(clients[0]
        .join("room:shared", json!({}))
        .await
        .unwrap()
        .is_ok());
    // A Supabase client on node 2 tracks itself under a key of its choosing, here another
    // user's id: its leave is broadcast when node 2 is reaped, but never reported as that
    // user's `presence_leave`.
    let url = format!("ws://127.0.0.1:{}/realtime/v1", nodes[2].port);
    let mut sb = plexus_client::Client::connect(
        plexus_client::ConnectOptions::new(url).param("apikey", nodes[2].token("n2sb")),
    )
    .await
    .unwrap();
    let config = json!({"config": {"presence": {"key": "n0c0"}}});
    assert!(sb.join("realtime:lobby", config).await.unwrap().is_ok());
    let track = json!({"type": "presence", "event": "track", "payload": {"x": 1}});
    assert!(sb
        .push_json("realtime:lobby", "presence", &track)
        .await
        .unwrap()
        .is_ok());
    // Node 2's webhooks are out before it dies (its queue dies with it).
    recv.wait_events(Duration::from_secs(5), |e| {
        count(e, "channel_occupied", "room:solo") == 1
            && e.iter()
                .any(|e| e["type"] == "connect" && e["sub"] == "n2sb")
    })
    .await;
    nodes[2].kill9();
    let reaped = |e: &Value| e["type"] == "disconnect" && e["reaped"] == true;
    recv.wait_events(Duration::from_secs(12), |e| {
        e.iter().filter(|e| reaped(e)).count() >= 3 && count(e, "channel_vacated", "room:solo") >= 1
    })
    .await;
    // Wait a little: a second report of the same disconnects (from either survivor) would show
    // by now. (The reap lock keeps the other survivor from reaping the same node within its
    // lock time; the registry being taken atomically is what makes a later reap find nothing.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = recv.events();
    for sub in ["n2c0", "n2c1"] {
        let d: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "disconnect" && e["sub"] == sub)
            .collect();
        assert_eq!(d.len(), 1, "{sub}: {d:#?}");
        assert_eq!(d[0]["reaped"], true);
        assert_eq!(
            (d[0]["code"].as_u64(), d[0]["reason"].as_str()),
            (Some(1006), Some("node lost"))
        );
        assert!(d[0]["conn"]
            .as_str()
            .unwrap()
            .starts_with(d[0]["lost_node"].as_str().unwrap()));
    }
    assert_eq!(count(&events, "channel_vacated", "room:solo"), 1);
    let solo = events
        .iter()
        .find(|e| e["type"] == "channel_vacated" && e["topic"] == "room:solo")
        .unwrap();
    assert_eq!(solo["reaped"], true);
    assert_eq!(
        count(&events, "channel_vacated", "room:shared"),
        rounds,
        "still occupied"
    );
    let mut leaves: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["type"] == "presence_leave" && e["reaped"] == true)
        .map(|e| {
            assert!(e["conn"]
                .as_str()
                .is_some_and(|c| c.starts_with(d_node(&events))));
            (
                e["sub"].as_str().unwrap_or("?"),
                e["topic"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    leaves.sort();
    assert_eq!(
        leaves,
        [("n2c0", "room:solo"), ("n2c1", "room:shared")],
        "the server-tracked presences only, under their real sub"
    );
    // The survivors' clients disconnect normally: once each, not reaped. (Seven connections
    // in all: six clients and node 2's Supabase client.)
    let survivors: Vec<_> = clients.drain(..4).collect();
    for c in survivors {
        c.close().await;
    }
    recv.wait_events(Duration::from_secs(5), |e| {
        e.iter().filter(|e| e["type"] == "disconnect").count() >= 7
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = recv.events();
    assert_eq!(
        events.iter().filter(|e| e["type"] == "disconnect").count(),
        7
    );
    assert_eq!(events.iter().filter(|e| e["type"] == "connect").count(), 7);
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "ids unique across the cluster");
    recv.assert_all_signed();
}

fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(redis.port.to_string())
        .args(args)
        .output()
        .expect("redis-cli (installed with redis-server)");
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The registry holds exactly the live connections however fast they come and go (its writes
/// are applied in order), and a reaper that hits a Redis error after taking a dead node's
/// registry still reports its disconnects (it reports them first: the registry is gone).
#[tokio::test]
async fn registry_exact_under_churn_and_reaped_disconnects_survive_a_redis_error() {
    let redis = Redis::start();
    let recv = Receiver::start(|_, _| Answer::Json(json!({}))).await;
    let url = redis.url();
    let hook = recv.url("/webhook");
    let env = [
        ("PLEXUS_REDIS_URL", url.as_str()),
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_WEBHOOK_URL", hook.as_str()),
        ("PLEXUS_WEBHOOK_EVENTS", "connect,disconnect"),
    ];
    let survivor = Server::start_with(Some(CONFIG), &env).await;
    let mut doomed = Server::start_with(Some(CONFIG), &env).await;
    // Churn: 30 connections opened and closed at once, 2 kept.
    let churn = (0..30).map(|i| {
        let node = &doomed;
        async move { node.client(&format!("churn{i}")).await }
    });
    let churned = futures_util::future::join_all(churn).await;
    futures_util::future::join_all(churned.into_iter().map(|c| c.close())).await;
    let _kept = [doomed.client("kept0").await, doomed.client("kept1").await];
    let events = recv
        .wait_events(Duration::from_secs(10), |e| {
            e.iter().filter(|e| e["type"] == "disconnect").count() >= 30
                && e.iter().filter(|e| e["type"] == "connect").count() >= 32
        })
        .await;
    let node = events
        .iter()
        .find(|e| e["sub"] == "kept0")
        .and_then(|e| e["node"].as_str())
        .expect("the connect of kept0")
        .to_owned();
    let registry = format!("plexus:nconn:{{{node}}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while redis_cli(&redis, &["HLEN", &registry]) != "2" && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        redis_cli(&redis, &["HLEN", &registry]),
        "2",
        "only the live connections"
    );
    // A counter of the doomed node that Redis will refuse to reap (a string, not a hash).
    redis_cli(&redis, &["SET", "plexus:cnt:{broken}broken", "x"]);
    redis_cli(
        &redis,
        &[
            "SADD",
            &format!("plexus:ncnt:{{{node}}}"),
            "plexus:cnt:{broken}broken",
        ],
    );
    doomed.kill9();
    let events = recv
        .wait_events(Duration::from_secs(12), |e| {
            e.iter().filter(|e| e["reaped"] == true).count() >= 2
        })
        .await;
    let mut reaped: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "disconnect" && e["reaped"] == true)
        .filter_map(|e| e["sub"].as_str())
        .collect();
    reaped.sort();
    assert_eq!(reaped, ["kept0", "kept1"], "{events:#?}");
    drop(survivor);
}

/// `channel_vacated` means the topic has no subscriber left: a count out that matches no count
/// in (here this node's share of the counter was lost in Redis) does not report it while a
/// subscriber remains.
#[tokio::test]
async fn an_unmatched_count_out_does_not_report_vacated() {
    let redis = Redis::start();
    let recv = Receiver::start(|_, _| Answer::Json(json!({}))).await;
    let url = redis.url();
    let hook = recv.url("/webhook");
    let env = [
        ("PLEXUS_REDIS_URL", url.as_str()),
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_WEBHOOK_URL", hook.as_str()),
        ("PLEXUS_WEBHOOK_EVENTS", "channel_occupied,channel_vacated"),
        ("PLEXUS_WEBHOOK_BATCH_WAIT_MS", "10"),
    ];
    let s = Server::start_with(Some(CONFIG), &env).await;
    let mut a = s.client("a").await;
    let mut b = s.client("b").await;
    assert!(a.join("room:x", json!({})).await.unwrap().is_ok());
    assert!(b.join("room:x", json!({})).await.unwrap().is_ok());
    recv.wait_events(Duration::from_secs(5), |e| {
        count(e, "channel_occupied", "room:x") == 1
    })
    .await;
    let keys = redis_cli(&redis, &["--raw", "KEYS", "plexus:cnt:*room:x*"]);
    let key = keys
        .lines()
        .next()
        .expect("the subscriber counter of room:x");
    redis_cli(&redis, &["DEL", key]);
    assert!(a.leave("room:x").await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&recv.events(), "channel_vacated", "room:x"),
        0,
        "b is still subscribed"
    );
    drop(b);
}
