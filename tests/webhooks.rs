//! Webhooks against a real HTTP receiver that checks every signature: the default events in
//! batches, in order per connection, with close codes, reasons and durations; opted-in
//! presence and client events; retries after 500s and after the receiver was down for 10 s
//! (nothing lost); the bounded queue counting what it refuses.

mod common;

use common::receiver::{types_of, Answer, Receiver, HOOK_SECRET};
use common::{free_port, Server, API_KEY};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CONFIG: &str = r#"
profile = "dev"
[[channels]]
topic = "room:*"
presence = true
webhook_events = ["new_msg"]
"#;

async fn start(url: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_WEBHOOK_URL", url),
    ];
    env.extend_from_slice(extra);
    Server::start_with(Some(CONFIG), &env).await
}

fn ok(_: &str, _: &Value) -> Answer {
    Answer::Json(json!({}))
}

fn assert_unique_ids(events: &[Value]) {
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "every event once: {events:#?}");
}

async fn metric(s: &Server, name: &str) -> u64 {
    let (_, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits (up to 5 s) until the server holds no client connection.
async fn until_no_connections(s: &Server) {
    for _ in 0..500 {
        if metric(s, "plexus_connections").await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("connections still open after 5 s");
}

#[tokio::test]
async fn default_events_arrive_batched_signed_and_in_order() {
    let recv = Receiver::start(ok).await;
    let s = start(&recv.url("/webhook"), &[]).await;
    let mut alice = s.client("alice").await;
    assert!(alice.join("room:1", json!({})).await.unwrap().is_ok());
    assert!(alice.leave("room:1").await.unwrap().is_ok());
    assert!(alice.join("room:2", json!({})).await.unwrap().is_ok());
    let mut bob = s.client("bob").await;
    assert!(bob.join("room:2", json!({})).await.unwrap().is_ok());
    let carol = s.client("carol").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.close().await;
    drop(carol); // no close frame: the connection is lost
    let auth = format!("Bearer {API_KEY}");
    let (st, _) = s
        .http(
            "POST",
            "/api/disconnect",
            &[("Authorization", &auth)],
            r#"{"sub":"bob"}"#,
        )
        .await
        .unwrap();
    assert_eq!(st, 200);
    let events = recv
        .wait_events(Duration::from_secs(5), |e| {
            e.iter().filter(|e| e["type"] == "disconnect").count() == 3
                && e.iter()
                    .any(|e| e["type"] == "channel_vacated" && e["topic"] == "room:2")
        })
        .await;
    recv.assert_all_signed();
    assert_unique_ids(&events);
    assert_eq!(
        types_of(&events, "alice"),
        [
            "connect",
            "join room:1",
            "leave room:1",
            "join room:2",
            "leave room:2",
            "disconnect"
        ]
    );
    assert_eq!(
        types_of(&events, "bob"),
        ["connect", "join room:2", "leave room:2", "disconnect"]
    );
    let topic_events: Vec<String> = events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("channel_"))
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap(),
                e["topic"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        topic_events,
        [
            "channel_occupied room:1",
            "channel_vacated room:1",
            "channel_occupied room:2",
            "channel_vacated room:2"
        ]
    );
    let disconnect = |sub: &str| {
        events
            .iter()
            .find(|e| e["type"] == "disconnect" && e["sub"] == sub)
            .unwrap()
            .clone()
    };
    let a = disconnect("alice");
    assert_eq!(
        (a["code"].as_u64(), a["reason"].as_str()),
        (Some(1000), Some("closed by the client"))
    );
    assert!(a["duration_ms"].as_u64().unwrap() >= 300, "{a}");
    assert_eq!(disconnect("bob")["code"], 1001);
    assert_eq!(
        (
            disconnect("carol")["code"].as_u64(),
            disconnect("carol")["reason"].as_str()
        ),
        (Some(1006), Some("connection lost"))
    );
    for e in &events {
        assert!(
            e["at"].as_u64().unwrap() > 1_700_000_000_000 && e["node"].is_string(),
            "{e}"
        );
        if e["type"] != "channel_occupied" && e["type"] != "channel_vacated" {
            assert!(e["conn"].is_string(), "{e}");
        }
    }
    assert!(
        !events.iter().any(|e| e["type"] == "presence_join"),
        "not a default event"
    );
    // Batched: fewer requests than events.
    assert!(recv.at("/webhook").len() < events.len());
}

#[tokio::test]
async fn presence_and_client_events_are_opt_in() {
    let recv = Receiver::start(ok).await;
    let events_env = "presence_join,presence_leave,client_event";
    let s = start(
        &recv.url("/webhook"),
        &[("PLEXUS_WEBHOOK_EVENTS", events_env)],
    )
    .await;
    let mut alice = s.client("alice").await;
    assert!(alice.join("room:1", json!({})).await.unwrap().is_ok());
    for event in ["new_msg", "typing"] {
        let r = alice
            .push_json("room:1", event, &json!({"text": event}))
            .await
            .unwrap();
        assert!(r.is_ok());
    }
    assert!(alice.leave("room:1").await.unwrap().is_ok());
    let events = recv
        .wait_events(Duration::from_secs(5), |e| {
            e.iter().any(|e| e["type"] == "presence_leave")
        })
        .await;
    assert_eq!(
        types_of(&events, "alice"),
        [
            "presence_join room:1",
            "client_event room:1",
            "presence_leave room:1"
        ]
    );
    let client = events.iter().find(|e| e["type"] == "client_event").unwrap();
    assert_eq!(
        (client["event"].as_str(), &client["payload"]),
        (Some("new_msg"), &json!({"text": "new_msg"}))
    );
    assert!(events[0]["meta"]["phx_ref"].is_string());
    recv.assert_all_signed();
}

#[tokio::test]
async fn failed_batches_are_retried_until_accepted_nothing_lost() {
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let recv = Receiver::start(move |_, _| {
        if f.fetch_add(1, Ordering::SeqCst) < 3 {
            Answer::Status(500)
        } else {
            Answer::Json(json!({}))
        }
    })
    .await;
    let s = start(&recv.url("/webhook"), &[("PLEXUS_WEBHOOK_BATCH_MAX", "2")]).await;
    for i in 0..5 {
        s.client(&format!("u{i}")).await.close().await;
    }
    let events = recv
        .wait_events(Duration::from_secs(10), |e| e.len() >= 10)
        .await;
    assert_eq!(events.len(), 10, "{events:#?}");
    assert_unique_ids(&events);
    for i in 0..5 {
        assert_eq!(
            types_of(&events, &format!("u{i}")),
            ["connect", "disconnect"]
        );
    }
    assert_eq!(metric(&s, "plexus_webhook_failed_attempts_total").await, 3);
    assert_eq!(metric(&s, "plexus_webhook_delivered_total").await, 10);
}

#[tokio::test]
async fn a_receiver_down_for_10_seconds_loses_nothing() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/webhook");
    let s = start(&url, &[]).await;
    for i in 0..3 {
        let mut c = s.client(&format!("u{i}")).await;
        assert!(c.join("room:down", json!({})).await.unwrap().is_ok());
        c.close().await;
        // The next client joins an empty topic only once the server has finished this one's
        // close (its own occupied/vacated pair): `close()` returns when the frame is sent.
        until_no_connections(&s).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(metric(&s, "plexus_webhook_failed_attempts_total").await >= 3);
    let recv = Receiver::start_on(port, ok).await;
    // Per client: connect, join, leave, disconnect (12); and the topic's occupied/vacated
    // pairs, one per client when each left before the next joined (the usual case; a vacated
    // can still trail the unregistering by a moment, so fewer pairs are allowed, never an
    // unpaired one).
    let of_topic = |e: &[Value]| -> Vec<String> {
        e.iter()
            .filter(|e| e["sub"].is_null())
            .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    recv.wait_events(Duration::from_secs(8), |e| {
        e.len() - of_topic(e).len() >= 12 && of_topic(e).len() % 2 == 0
    })
    .await;
    // Anything still on its way (it would be a duplicate or a stray) shows up here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = recv.events();
    let topic_events = of_topic(&events);
    assert!(
        (1..=3).contains(&(topic_events.len() / 2)) && topic_events.len() % 2 == 0,
        "{events:#?}"
    );
    for pair in topic_events.chunks(2) {
        assert_eq!(pair, ["channel_occupied", "channel_vacated"], "{events:#?}");
    }
    assert_eq!(events.len(), 12 + topic_events.len(), "{events:#?}");
    assert_unique_ids(&events);
    for i in 0..3 {
        assert_eq!(
            types_of(&events, &format!("u{i}")),
            ["connect", "join room:down", "leave room:down", "disconnect"]
        );
    }
    assert_eq!(metric(&s, "plexus_webhook_dropped_expired_total").await, 0);
    recv.assert_all_signed();
}

#[tokio::test]
async fn the_queue_is_bounded_and_counts_what_it_refuses() {
    // Nobody listens: everything stays queued, up to the bound.
    let url = format!("http://127.0.0.1:{}/webhook", free_port());
    let s = start(
        &url,
        &[
            ("PLEXUS_WEBHOOK_QUEUE_MAX", "5"),
            ("PLEXUS_WEBHOOK_BATCH_MAX", "2"),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(s.client(&format!("u{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = metric(&s, "plexus_webhook_pending").await;
    let dropped = metric(&s, "plexus_webhook_dropped_overflow_total").await;
    assert!(
        pending <= 5 + 2,
        "queue_max plus the batch being sent: {pending}"
    );
    assert_eq!(pending + dropped, 20);
    assert!(s.log().contains("webhook queue full"), "logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_sends_its_last_disconnects_before_it_exits() {
    let recv = Receiver::start(ok).await;
    let s = start(&recv.url("/webhook"), &[]).await;
    let mut c = s.client("dana").await;
    assert!(c.join("room:d", json!({})).await.unwrap().is_ok());
    let (_s, code) = tokio::task::spawn_blocking(move || {
        let mut s = s;
        let code = s.terminate();
        (s, code)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    // Delivered before the process exited: nothing waits to be read now.
    let events = recv.events();
    assert_eq!(
        types_of(&events, "dana"),
        ["connect", "join room:d", "leave room:d", "disconnect"]
    );
    let d = events.iter().find(|e| e["type"] == "disconnect").unwrap();
    assert_eq!(
        (d["code"].as_u64(), d["reason"].as_str()),
        (Some(1012), Some("server restarting"))
    );
}
