//! One user's webhook events cannot stall or crowd out everyone else's (issue 19, item 3),
//! against a real receiver that refuses (413) any request larger than 100 kB:
//! a 150 kB client push is sent without its payload (`webhooks.max_event_bytes`) and other
//! users' events arrive at once; with the cap raised, the application's 4xx for the batch
//! holding it isolates that one event, dropped at once and never retried, while the rest of the
//! batch is delivered in order; an event the application fails on (500) while it takes the
//! others holds them up for a few tries only; batches are cut at `webhooks.max_batch_bytes`;
//! and one user
//! holds at most a tenth of the queue, so another user's event still enters when it floods.

mod common;

use common::receiver::{Answer, Receiver, HOOK_SECRET};
use common::Server;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
profile = "dev"
[[channels]]
topic = "room:*"
webhook_events = ["*"]
"#;

/// The receiver's limit on a request's body.
const RECEIVER_MAX_BODY: usize = 100_000;

async fn start(url: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_WEBHOOK_URL", url),
        (
            "PLEXUS_WEBHOOK_EVENTS",
            "connect,disconnect,join,leave,client_event",
        ),
        // Short enough that a batch retried for the whole window shows, long enough that
        // "promptly" (2 s) cannot be mistaken for it.
        ("PLEXUS_WEBHOOK_RETRY_SECS", "15"),
    ];
    env.extend_from_slice(extra);
    Server::start_with(Some(CONFIG), &env).await
}

/// A receiver that answers 413 to requests larger than [`RECEIVER_MAX_BODY`].
async fn limited_receiver() -> Receiver {
    Receiver::start(|_, body: &Value| {
        if body.to_string().len() > RECEIVER_MAX_BODY {
            Answer::Status(413)
        } else {
            Answer::Json(json!({}))
        }
    })
    .await
}

async fn metric(s: &Server, name: &str) -> u64 {
    let (_, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The types of the events of user `sub`, in order.
fn types_of(events: &[Value], sub: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["sub"] == sub)
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Mallory joins `room:big` and pushes a 150 kB event; it is accepted.
async fn mallory_pushes_150_kb(s: &Server) -> plexus_client::Client {
    let mut mallory = s.client("mallory").await;
    assert!(mallory.join("room:big", json!({})).await.unwrap().is_ok());
    let blob = "x".repeat(150_000);
    let r = mallory
        .push_json("room:big", "upload", &json!({ "blob": blob }))
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    mallory
}

/// Bob connects, joins, leaves and disconnects; returns how long after his disconnect all
/// four of his events had reached the receiver (or panics after 10 s).
async fn bob_comes_and_goes(s: &Server, recv: &Receiver) -> Duration {
    let mut bob = s.client("bob").await;
    assert!(bob.join("room:b", json!({})).await.unwrap().is_ok());
    assert!(bob.leave("room:b").await.unwrap().is_ok());
    bob.close().await;
    let closed = Instant::now();
    let events = recv
        .wait_events(Duration::from_secs(10), |e| types_of(e, "bob").len() == 4)
        .await;
    let took = closed.elapsed();
    assert_eq!(
        types_of(&events, "bob"),
        ["connect", "join", "leave", "disconnect"],
        "bob's events, in order, {took:?} after his disconnect"
    );
    took
}

#[tokio::test]
async fn a_large_client_push_is_sent_without_its_payload_and_stalls_nobody() {
    let recv = limited_receiver().await;
    let s = start(&recv.url("/webhook"), &[]).await;
    let _mallory = mallory_pushes_150_kb(&s).await;
    let took = bob_comes_and_goes(&s, &recv).await;
    assert!(
        took < Duration::from_secs(2),
        "bob's events took {took:?} (retry_secs is 15)"
    );
    let events = recv.events();
    let big = events
        .iter()
        .find(|e| e["type"] == "client_event")
        .unwrap_or_else(|| panic!("mallory's push is reported: {events:#?}"));
    assert_eq!(
        (big["sub"].as_str(), big["event"].as_str()),
        (Some("mallory"), Some("upload"))
    );
    assert_eq!(big["payload_truncated"], true, "{big}");
    let bytes = big["payload_bytes"].as_u64().unwrap_or(0);
    assert!((150_000..151_000).contains(&bytes), "{big}");
    assert!(big.get("payload").is_none(), "{big}");
    assert_eq!(metric(&s, "plexus_webhook_truncated_total").await, 1);
    assert_eq!(metric(&s, "plexus_webhook_dropped_expired_total").await, 0);
    // No request was refused: nothing was sent larger than the receiver takes.
    assert!(recv.received().iter().all(|r| r.status != 413));
    recv.assert_all_signed();
}

#[tokio::test]
async fn an_event_the_application_refuses_is_dropped_alone_at_once() {
    let recv = limited_receiver().await;
    // The cap raised past the receiver's limit, and a batch window wide enough that
    // mallory's push and bob's first events share a batch.
    let s = start(
        &recv.url("/webhook"),
        &[
            ("PLEXUS_WEBHOOK_MAX_EVENT_BYTES", "1048576"),
            ("PLEXUS_WEBHOOK_BATCH_WAIT_MS", "300"),
        ],
    )
    .await;
    let mallory = mallory_pushes_150_kb(&s).await;
    let took = bob_comes_and_goes(&s, &recv).await;
    assert!(
        took < Duration::from_secs(2),
        "bob's events took {took:?} (retry_secs is 15)"
    );
    mallory.close().await;
    let events = recv
        .wait_events(Duration::from_secs(5), |e| {
            types_of(e, "mallory").contains(&"disconnect".to_owned())
        })
        .await;
    // Only the refused event is missing; mallory's others arrive, in order.
    assert_eq!(
        types_of(&events, "mallory"),
        ["connect", "join", "leave", "disconnect"]
    );
    let refused: Vec<_> = recv
        .received()
        .into_iter()
        .filter(|r| r.status == 413)
        .collect();
    let alone: Vec<_> = refused
        .iter()
        .filter(|r| r.body["events"].as_array().map(Vec::len) == Some(1))
        .collect();
    assert_eq!(alone.len(), 1, "refused alone once, never retried");
    assert_eq!(alone[0].body["events"][0]["type"], "client_event");
    assert!(
        refused.len() >= 2,
        "the batch it was in was refused, then split: {} refusals",
        refused.len()
    );
    assert_eq!(metric(&s, "plexus_webhook_dropped_rejected_total").await, 1);
    assert_eq!(metric(&s, "plexus_webhook_dropped_expired_total").await, 0);
    let log = s.log();
    assert!(
        log.contains("refused by the application") && log.contains("client_event"),
        "logged with the event's kind"
    );
    recv.assert_all_signed();
}

#[tokio::test]
async fn an_event_the_application_fails_on_alone_holds_up_nobody() {
    // The application fails (500) on any request holding alice's "poison" push, and takes
    // everything else.
    let recv = Receiver::start(|_, body: &Value| {
        let poisoned = body["events"]
            .as_array()
            .is_some_and(|es| es.iter().any(|e| e["payload"]["poison"] == true));
        if poisoned {
            Answer::Status(500)
        } else {
            Answer::Json(json!({}))
        }
    })
    .await;
    let s = start(
        &recv.url("/webhook"),
        &[("PLEXUS_WEBHOOK_BACKOFF_MAX_MS", "400")],
    )
    .await;
    let mut alice = s.client("alice").await;
    assert!(alice.join("room:p", json!({})).await.unwrap().is_ok());
    let r = alice
        .push_json("room:p", "note", &json!({"poison": true}))
        .await
        .unwrap();
    assert!(r.is_ok());
    let took = bob_comes_and_goes(&s, &recv).await;
    assert!(
        took < Duration::from_secs(2),
        "bob's events took {took:?} (retry_secs is 15)"
    );
    // More traffic behind it: the application keeps taking it, so the event it fails on is
    // dropped after a few tries, well before retry_secs.
    let mut carol = s.client("carol").await;
    let started = Instant::now();
    let mut i = 0;
    while metric(&s, "plexus_webhook_dropped_failing_total").await == 0
        && started.elapsed() < Duration::from_secs(10)
    {
        let topic = format!("room:c{i}");
        assert!(carol.join(&topic, json!({})).await.unwrap().is_ok());
        assert!(carol.leave(&topic).await.unwrap().is_ok());
        i += 1;
        // Paced under the message rate limit (50/s).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "dropped after {:?}",
        started.elapsed()
    );
    assert_eq!(metric(&s, "plexus_webhook_dropped_failing_total").await, 1);
    assert_eq!(metric(&s, "plexus_webhook_dropped_expired_total").await, 0);
    let events = recv.events();
    assert_eq!(types_of(&events, "alice"), ["connect", "join"]);
    assert!(s.log().contains("the application failed on it"), "logged");
}

#[tokio::test]
async fn batches_are_cut_at_max_batch_bytes() {
    let recv = Receiver::start(|_, _| Answer::Json(json!({}))).await;
    let s = start(
        &recv.url("/webhook"),
        &[
            ("PLEXUS_WEBHOOK_MAX_BATCH_BYTES", "4096"),
            ("PLEXUS_WEBHOOK_BATCH_WAIT_MS", "300"),
        ],
    )
    .await;
    let mut alice = s.client("alice").await;
    assert!(alice.join("room:1", json!({})).await.unwrap().is_ok());
    let text = "y".repeat(1000);
    for i in 0..20 {
        let r = alice
            .push_json("room:1", "note", &json!({ "i": i, "text": text }))
            .await
            .unwrap();
        assert!(r.is_ok());
    }
    let events = recv
        .wait_events(Duration::from_secs(5), |e| {
            e.iter().filter(|e| e["type"] == "client_event").count() == 20
        })
        .await;
    let pushed: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "client_event")
        .filter_map(|e| e["payload"]["i"].as_u64())
        .collect();
    assert_eq!(pushed, (0..20).collect::<Vec<u64>>(), "all, in order");
    for r in recv.at("/webhook") {
        let len = r.body.to_string().len();
        assert!(len <= 4096, "a request of {len} bytes");
    }
}

#[tokio::test]
async fn one_user_holds_at_most_a_tenth_of_the_queue() {
    // The application is down (503) until `up`: everything stays queued.
    let up = Arc::new(AtomicBool::new(false));
    let u = up.clone();
    let recv = Receiver::start(move |_, _| {
        if u.load(Ordering::SeqCst) {
            Answer::Json(json!({}))
        } else {
            Answer::Status(503)
        }
    })
    .await;
    let s = start(
        &recv.url("/webhook"),
        &[
            ("PLEXUS_WEBHOOK_EVENTS", "connect,join"),
            ("PLEXUS_WEBHOOK_QUEUE_MAX", "20"),
            ("PLEXUS_WEBHOOK_BATCH_MAX", "1"),
            ("PLEXUS_WEBHOOK_BACKOFF_MAX_MS", "200"),
        ],
    )
    .await;
    // Mallory alone would fill the queue: 1 connect and 30 joins.
    let mut mallory = s.client("mallory").await;
    for i in 0..30 {
        let r = mallory.join(&format!("room:{i}"), json!({})).await.unwrap();
        assert!(r.is_ok());
    }
    let _bob = s.client("bob").await;
    // Share: 20 / 10 = 2 events (the one being retried counts). Bob's connect is queued
    // as his connection starts, maybe just after his handshake's answer: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pending = 0;
    while pending < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        pending = metric(&s, "plexus_webhook_pending").await;
    }
    up.store(true, Ordering::SeqCst);
    let events = recv
        .wait_events(Duration::from_secs(5), |e| {
            types_of(e, "bob") == ["connect"] && types_of(e, "mallory").len() == 2
        })
        .await;
    assert_eq!(types_of(&events, "bob"), ["connect"], "{events:#?}");
    assert_eq!(types_of(&events, "mallory"), ["connect", "join"]);
    assert_eq!(pending, 3, "mallory's 2 and bob's 1");
    assert_eq!(metric(&s, "plexus_webhook_dropped_share_total").await, 29);
    assert_eq!(metric(&s, "plexus_webhook_dropped_overflow_total").await, 0);
    assert!(s.log().contains("past its share of the queue"), "logged");
    // Mallory's share is free again once delivered.
    assert!(mallory.join("room:late", json!({})).await.unwrap().is_ok());
    let events = recv
        .wait_events(Duration::from_secs(5), |e| {
            types_of(e, "mallory").len() == 3
        })
        .await;
    assert_eq!(types_of(&events, "mallory"), ["connect", "join", "join"]);
}
