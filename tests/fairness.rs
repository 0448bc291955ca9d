//! Fair shares of the hooks and webhooks (issue 19, review of items 1 and 3): anonymous
//! connections (Supabase's anon key, a fresh `anon:<uuid>` each) count as their client
//! address, not as new users, in the hook breaker and the webhook queue; one user failing
//! every half-open trial cannot keep the breaker open; `channel_occupied` / `channel_vacated`
//! count against the share of the client whose join or leave caused them; one user cannot
//! hold all of `hooks.max_concurrent`; events a failing-event probe pulls from the queue get
//! a retry window of their own.

mod common;

use common::receiver::{Answer, Receiver, HOOK_SECRET};
use common::tokens::{anon_key, connect, exp, jwt};
use common::Server;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Supabase on (anon key accepted), Supabase's roles claim, no message rate limit (the tests
/// send many joins on one socket).
const SUPABASE: &str = r#"
profile = "dev"
[auth]
roles_claim = "role"
[supabase]
enabled = true
[limits]
messages_per_second = 0
[[channels]]
topic = "room:*"
"#;

fn user_jwt(sub: &str) -> String {
    jwt(json!({"sub": sub, "role": "authenticated", "exp": exp()}))
}

async fn start_hooks(recv: &Receiver, extra: &[(&str, &str)]) -> Server {
    let join = recv.url("/join");
    let mut env = vec![
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_JOIN_HOOK_URL", join.as_str()),
        ("PLEXUS_HOOK_TIMEOUT_MS", "2000"),
    ];
    env.extend_from_slice(extra);
    Server::start_with(Some(SUPABASE), &env).await
}

async fn start_webhooks(recv: &Receiver, events: &str, queue_max: &str) -> Server {
    let url = recv.url("/webhook");
    Server::start_with(
        Some(SUPABASE),
        &[
            ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
            ("PLEXUS_WEBHOOK_URL", url.as_str()),
            ("PLEXUS_WEBHOOK_EVENTS", events),
            ("PLEXUS_WEBHOOK_QUEUE_MAX", queue_max),
            ("PLEXUS_WEBHOOK_BATCH_MAX", "1"),
            ("PLEXUS_WEBHOOK_BACKOFF_MAX_MS", "200"),
        ],
    )
    .await
}

async fn metric(s: &Server, name: &str) -> u64 {
    let (_, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn joins_of(recv: &Receiver, pred: impl Fn(&str) -> bool) -> usize {
    recv.at("/join")
        .iter()
        .filter(|q| pred(q.body["sub"].as_str().unwrap_or("")))
        .count()
}

/// The types of the events of user `sub`, in order.
fn types_of(events: &[Value], sub: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["sub"] == sub)
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// A receiver that answers 503 until `up` is set, then 200.
async fn down_until(up: &Arc<AtomicBool>) -> Receiver {
    let u = up.clone();
    Receiver::start(move |_, _| {
        if u.load(Ordering::SeqCst) {
            Answer::Json(json!({}))
        } else {
            Answer::Status(503)
        }
    })
    .await
}

/// The application fails (500) on `room:boom`, allows the rest.
fn boom(path: &str, body: &Value) -> Answer {
    match (path, body["topic"].as_str()) {
        ("/join", Some("room:boom")) => Answer::Status(500),
        _ => Answer::Json(json!({"allow": true})),
    }
}

/// Six anonymous connections from one address each send one join the application fails on:
/// they used to be six "users" and opened the breaker (threshold 5), and Alice's join then
/// got `hook unavailable` without the application being asked. They are one client address.
#[tokio::test]
async fn anonymous_connections_of_one_address_count_once_in_the_breaker() {
    let recv = Receiver::start(boom).await;
    let s = start_hooks(&recv, &[]).await;
    for _ in 0..6 {
        let mut anon = connect(&s, &anon_key()).await;
        let r = anon.join("room:boom", json!({})).await.unwrap();
        assert_eq!(r.reason(), Some("hook unavailable".into()));
    }
    assert_eq!(
        joins_of(&recv, |sub| sub.starts_with("anon:")),
        6,
        "the circuit stayed closed: each anonymous join reached the app"
    );
    let mut alice = connect(&s, &user_jwt("alice")).await;
    let r = alice.join("room:a", json!({})).await.unwrap();
    assert!(r.is_ok(), "one address counts once: {r:?}");
    assert_eq!(joins_of(&recv, |sub| sub == "alice"), 1);
    assert_eq!(metric(&s, "plexus_hook_circuit_opened_total").await, 0);
}

/// With the circuit open (three users failed, threshold 3), Mallory's failing join is the
/// first call after the cooldown: the trial. Its failure used to open the circuit again for
/// another cooldown, so that Alice's join just after it got `hook unavailable` (and Mallory,
/// retrying every 50 ms, took every later trial: the circuit never closed). Now one user's
/// failed trial does not reopen it: Alice's join is the next trial, succeeds and closes it.
#[tokio::test]
async fn one_users_failed_trial_does_not_keep_the_breaker_open() {
    let recv = Receiver::start(boom).await;
    let s = start_hooks(
        &recv,
        &[
            ("PLEXUS_HOOK_BREAKER_THRESHOLD", "3"),
            ("PLEXUS_HOOK_BREAKER_COOLDOWN_SECS", "2"),
        ],
    )
    .await;
    for user in ["u1", "u2", "u3"] {
        let mut c = connect(&s, &user_jwt(user)).await;
        let r = c.join("room:boom", json!({})).await.unwrap();
        assert_eq!(r.reason(), Some("hook unavailable".into()));
    }
    assert_eq!(metric(&s, "plexus_hook_circuit_opened_total").await, 1);
    let mut mallory = connect(&s, &user_jwt("mallory")).await;
    let mut alice = connect(&s, &user_jwt("alice")).await;
    // Mallory retries every 50 ms until one of her joins reaches the app: the trial.
    let deadline = Instant::now() + Duration::from_secs(5);
    while joins_of(&recv, |sub| sub == "mallory") == 0 {
        assert!(Instant::now() < deadline, "no trial after the cooldown");
        let r = mallory.join("room:boom", json!({})).await.unwrap();
        assert_eq!(r.reason(), Some("hook unavailable".into()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trial_failed = Instant::now();
    // Her trial failed (her join was answered). Mallory again, then Alice, well within the
    // cooldown (2 s) a reopened circuit would have.
    let r = mallory.join("room:boom", json!({})).await.unwrap();
    assert_eq!(r.reason(), Some("hook unavailable".into()));
    assert_eq!(
        joins_of(&recv, |sub| sub == "mallory"),
        1,
        "mallory is not the trial again at once"
    );
    let r = alice.join("room:a", json!({})).await.unwrap();
    assert!(
        trial_failed.elapsed() < Duration::from_secs(1),
        "the test ran too slowly"
    );
    assert!(r.is_ok(), "alice's join is the next trial: {r:?}");
    assert_eq!(joins_of(&recv, |sub| sub == "alice"), 1);
    // Closed: Mallory's joins reach the app again (and fail for her alone).
    let r = mallory.join("room:boom", json!({})).await.unwrap();
    assert_eq!(r.reason(), Some("hook unavailable".into()));
    assert_eq!(joins_of(&recv, |sub| sub == "mallory"), 2);
    let r = alice.join("room:b", json!({})).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(metric(&s, "plexus_hook_circuit_opened_total").await, 1);
}

/// A really failing application (every user's join fails) keeps the circuit open: failed
/// trials of three distinct users (the threshold) open it again.
#[tokio::test]
async fn failed_trials_of_distinct_users_open_the_breaker_again() {
    let recv = Receiver::start(|path, _| match path {
        "/join" => Answer::Status(503),
        _ => Answer::Json(json!({})),
    })
    .await;
    let s = start_hooks(
        &recv,
        &[
            ("PLEXUS_HOOK_BREAKER_THRESHOLD", "3"),
            ("PLEXUS_HOOK_BREAKER_COOLDOWN_SECS", "1"),
        ],
    )
    .await;
    let mut users = Vec::new();
    for user in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        users.push(connect(&s, &user_jwt(user)).await);
    }
    for c in users.iter_mut().take(3) {
        let r = c.join("room:a", json!({})).await.unwrap();
        assert_eq!(r.reason(), Some("hook unavailable".into()));
    }
    assert_eq!(recv.at("/join").len(), 3);
    // After the cooldown, u4, u5 and u6 each try until one of their joins was sent (a trial).
    let deadline = Instant::now() + Duration::from_secs(5);
    for (i, c) in users.iter_mut().enumerate().skip(3) {
        while recv.at("/join").len() < i + 1 {
            assert!(Instant::now() < deadline, "no trial for user {i}");
            let r = c.join("room:a", json!({})).await.unwrap();
            assert_eq!(r.reason(), Some("hook unavailable".into()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Three distinct users' trials failed: open again, calls fail at once.
    for c in users.iter_mut() {
        let r = c.join("room:b", json!({})).await.unwrap();
        assert_eq!(r.reason(), Some("hook unavailable".into()));
    }
    assert_eq!(recv.at("/join").len(), 6, "the circuit is open again");
}

/// One user's joins the application answers slowly hold at most max(4, max_concurrent / 8)
/// of the hook calls in flight: with `hooks.max_concurrent = 8`, Mallory's eight slow joins
/// used to take every slot and Bob's join got `hook unavailable`. Now her fifth and later
/// joins are refused at once (`hook unavailable (busy)`) and Bob's join goes through.
#[tokio::test]
async fn one_user_holds_at_most_a_share_of_the_hook_calls_in_flight() {
    let recv = Receiver::start(|path, body| match (path, body["sub"].as_str()) {
        ("/join", Some("mallory")) => Answer::Slow(Duration::from_secs(4), json!({"allow": true})),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let s = start_hooks(
        &recv,
        &[
            ("PLEXUS_HOOK_MAX_CONCURRENT", "8"),
            ("PLEXUS_HOOK_TIMEOUT_MS", "6000"),
        ],
    )
    .await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = connect(&s, &user_jwt("mallory")).await;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.join(&format!("room:m{i}"), json!({})).await.unwrap();
            let _ = tx.send(r.reason());
            c
        }));
    }
    // Four of hers are refused at once (the other four wait for the slow app).
    let mut refused = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            Ok(Some(reason)) => refused.push(reason),
            _ => panic!("mallory's joins past her share were not refused at once: {refused:?}"),
        }
    }
    assert!(
        refused
            .iter()
            .all(|r| r.as_deref() == Some("hook unavailable (busy)")),
        "{refused:?}"
    );
    let mut bob = connect(&s, &user_jwt("bob")).await;
    let r = bob.join("room:b", json!({})).await.unwrap();
    assert!(r.is_ok(), "bob's join has a slot: {r:?}");
    assert_eq!(joins_of(&recv, |sub| sub == "mallory"), 4);
    for t in tasks {
        let _ = t.await;
    }
    assert_eq!(
        metric(&s, "plexus_hook_calls_total{hook=\"join\",result=\"busy\"}").await,
        4
    );
}

/// Anonymous connections of one address share one tenth of the webhook queue: ten of them
/// (a connect and two joins each, 30 events) used to be ten users and fill a queue of 20, and
/// Bob's connect and join were dropped.
#[tokio::test]
async fn anonymous_connections_of_one_address_share_one_webhook_share() {
    let up = Arc::new(AtomicBool::new(false));
    let recv = down_until(&up).await;
    let s = start_webhooks(&recv, "connect,join", "20").await;
    let mut anons = Vec::new();
    for _ in 0..10 {
        let mut c = connect(&s, &anon_key()).await;
        for room in ["room:x", "room:y"] {
            assert!(c.join(room, json!({})).await.unwrap().is_ok());
        }
        anons.push(c);
    }
    let mut bob = connect(&s, &user_jwt("bob")).await;
    assert!(bob.join("room:b", json!({})).await.unwrap().is_ok());
    // A reply to a later message: his join's event was emitted before it.
    assert!(bob.leave("room:b").await.unwrap().is_ok());
    up.store(true, Ordering::SeqCst);
    let events = recv
        .wait_events(Duration::from_secs(10), |e| types_of(e, "bob").len() == 2)
        .await;
    assert_eq!(types_of(&events, "bob"), ["connect", "join"]);
    let anon = events
        .iter()
        .filter(|e| e["sub"].as_str().is_some_and(|s| s.starts_with("anon:")))
        .count();
    assert_eq!(anon, 2, "one share (20 / 10) for the address: {events:#?}");
    assert_eq!(metric(&s, "plexus_webhook_dropped_overflow_total").await, 0);
}

/// `channel_occupied` / `channel_vacated` carry no `sub`, but count against the share of the
/// client whose join or leave caused them: Mallory joining and leaving 120 rooms used to fill
/// a queue of 100 with them (the application down), and Bob's connect and joins were dropped.
/// What the application receives is unchanged (no `sub` on them).
#[tokio::test]
async fn occupied_and_vacated_count_against_the_share_of_who_caused_them() {
    let up = Arc::new(AtomicBool::new(false));
    let recv = down_until(&up).await;
    let s = start_webhooks(
        &recv,
        "connect,join,leave,channel_occupied,channel_vacated",
        "100",
    )
    .await;
    let mut mallory = connect(&s, &user_jwt("mallory")).await;
    for i in 0..120 {
        let room = format!("room:{i}");
        assert!(mallory.join(&room, json!({})).await.unwrap().is_ok());
        assert!(mallory.leave(&room).await.unwrap().is_ok());
    }
    let mut bob = connect(&s, &user_jwt("bob")).await;
    assert!(bob.join("room:b", json!({})).await.unwrap().is_ok());
    assert!(bob.join("room:c", json!({})).await.unwrap().is_ok());
    up.store(true, Ordering::SeqCst);
    let events = recv
        .wait_events(Duration::from_secs(10), |e| types_of(e, "bob").len() == 3)
        .await;
    assert_eq!(types_of(&events, "bob"), ["connect", "join", "join"]);
    let occupancy: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "channel_occupied" || e["type"] == "channel_vacated")
        .collect();
    assert!(
        occupancy.iter().any(|e| e["topic"] == "room:b"),
        "bob's room:b occupied is in his share: {events:#?}"
    );
    assert!(
        occupancy.iter().all(|e| e.get("sub").is_none()),
        "the event shape is unchanged"
    );
    assert!(
        events.len() <= 10 + 5,
        "mallory's share (100 / 10) and bob's 5: {}",
        events.len()
    );
    assert_eq!(metric(&s, "plexus_webhook_dropped_overflow_total").await, 0);
}

/// During an outage, an event the failing-event probe takes from the queue gets a retry
/// window of its own: Carol's connect, queued 1.2 s into the 2 s window of Bob's, used to
/// inherit the rest of it and be dropped after one attempt just after Bob's, though the
/// application came back well within 2 s of its first attempt.
#[tokio::test]
async fn events_taken_by_the_probe_get_a_retry_window_of_their_own() {
    let up = Arc::new(AtomicBool::new(false));
    let recv = down_until(&up).await;
    let url = recv.url("/webhook");
    let s = Server::start_with(
        Some(SUPABASE),
        &[
            ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
            ("PLEXUS_WEBHOOK_URL", url.as_str()),
            ("PLEXUS_WEBHOOK_EVENTS", "connect"),
            ("PLEXUS_WEBHOOK_BATCH_MAX", "1"),
            ("PLEXUS_WEBHOOK_BACKOFF_MAX_MS", "200"),
            ("PLEXUS_WEBHOOK_RETRY_SECS", "2"),
        ],
    )
    .await;
    let carol_attempts = || {
        recv.at("/webhook")
            .iter()
            .filter(|q| q.status != 0 && q.body["events"][0]["sub"] == "carol")
            .count()
    };
    let _bob = connect(&s, &user_jwt("bob")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _carol = connect(&s, &user_jwt("carol")).await;
    // Bob's connect is dropped at the end of its window.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&s, "plexus_webhook_dropped_expired_total").await == 0 {
        assert!(Instant::now() < deadline, "bob's event was never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Carol's is still retried (it used to get one attempt, then be dropped).
    let before = carol_attempts();
    let deadline = Instant::now() + Duration::from_secs(3);
    while carol_attempts() == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    up.store(true, Ordering::SeqCst);
    let events = recv
        .wait_events(Duration::from_secs(3), |e| types_of(e, "carol").len() == 1)
        .await;
    assert_eq!(types_of(&events, "carol"), ["connect"], "{events:#?}");
    assert_eq!(types_of(&events, "bob"), Vec::<String>::new());
    assert_eq!(metric(&s, "plexus_webhook_dropped_expired_total").await, 1);
}
