//! The bounds that protect the application from the server: the cap on hook calls in flight,
//! the circuit breaker (failures of distinct users; including a trial call cancelled by a client hanging up), the
//! join-decision cache and its byte bound, and the channel caps checked before a join hook.

mod common;

use common::hook_app::*;
use common::receiver::{Answer, Receiver, HOOK_SECRET};
use common::{ws_headers, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn concurrency_cap_refuses_at_once_above_it() {
    let recv = Receiver::start(|path, _| match path {
        "/join" => Answer::Slow(Duration::from_millis(800), json!({"allow": true})),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let s = start(
        &recv,
        &[
            ("PLEXUS_HOOK_MAX_CONCURRENT", "2"),
            ("PLEXUS_HOOK_TIMEOUT_MS", "3000"),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(s.client(&format!("u{i}")).await);
    }
    let joins = clients.iter_mut().map(|c| c.join("room:busy", json!({})));
    let replies = futures_util::future::join_all(joins).await;
    let ok = replies
        .iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    let busy = replies
        .iter()
        .filter(|r| r.as_ref().unwrap().reason().as_deref() == Some("hook unavailable"))
        .count();
    assert_eq!((ok, busy), (2, 3));
    assert_eq!(
        metric(&s, "plexus_hook_calls_total{hook=\"join\",result=\"busy\"}").await,
        3
    );
    assert_eq!(
        recv.at("/join").len(),
        2,
        "the refused calls never reached the app"
    );
}

#[tokio::test]
async fn breaker_opens_after_failures_and_cache_spares_calls() {
    let recv = Receiver::start(|path, body| match (path, body["topic"].as_str()) {
        ("/join", Some("room:down")) => Answer::Status(500),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let s = start(
        &recv,
        &[
            ("PLEXUS_HOOK_BREAKER_THRESHOLD", "3"),
            ("PLEXUS_HOOK_BREAKER_COOLDOWN_SECS", "1"),
            ("PLEXUS_HOOK_JOIN_CACHE_SECS", "30"),
        ],
    )
    .await;
    let mut c = s.client("alice").await;
    // The cache: the same join twice is one call.
    assert!(c.join("room:a", json!({})).await.unwrap().is_ok());
    assert!(c.leave("room:a").await.unwrap().is_ok());
    assert!(c.join("room:a", json!({})).await.unwrap().is_ok());
    assert_eq!(recv.at("/join").len(), 1);
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"join\",result=\"cached\"}"
        )
        .await,
        1
    );
    // The breaker: failures of three users open it; then calls fail without reaching the app.
    for user in ["bob", "carol", "dave", "erin"] {
        let mut other = s.client(user).await;
        let r = other.join("room:down", json!({})).await.unwrap();
        assert_eq!(r.reason(), Some("hook unavailable".into()));
    }
    let r = c.join("room:down", json!({})).await.unwrap();
    assert_eq!(r.reason(), Some("hook unavailable".into()));
    let calls = |r: &Receiver| {
        r.at("/join")
            .iter()
            .filter(|q| q.body["topic"] == "room:down")
            .count()
    };
    assert_eq!(calls(&recv), 3);
    assert_eq!(metric(&s, "plexus_hook_circuit_opened_total").await, 1);
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"join\",result=\"circuit_open\"}"
        )
        .await,
        2
    );
    // After the cooldown one trial goes out; the app is back: the circuit closes.
    recv.set_handler(|_, _| Answer::Json(json!({"allow": true})));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(c.join("room:down", json!({})).await.unwrap().is_ok());
    assert!(c.join("room:b", json!({})).await.unwrap().is_ok());
}

/// The half-open circuit's trial call is awaited inside the WebSocket handshake; a client
/// that hangs up during it cancels the call. The trial must be given back: the next call
/// goes out and closes the circuit (it used to stay open for good: 503 until a restart).
#[tokio::test]
async fn a_trial_cancelled_by_a_hangup_does_not_jam_the_breaker() {
    let recv = Receiver::start(app).await;
    let s = start(
        &recv,
        &[
            ("PLEXUS_HOOK_BREAKER_THRESHOLD", "1"),
            ("PLEXUS_HOOK_BREAKER_COOLDOWN_SECS", "1"),
            ("PLEXUS_HOOK_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    let (status, body) = handshake(&s, "broken").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(handshake(&s, "alice").await.0, 503, "the circuit is open");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The trial: the app is slow, and the client gives up and closes its socket.
    let path = format!("/socket/websocket?vsn=2.0.0&token={}", s.token("slow"));
    let hung_up = tokio::time::timeout(
        Duration::from_millis(500),
        common::http_raw(s.port, "GET", &path, &ws_headers(), ""),
    )
    .await;
    assert!(hung_up.is_err(), "the slow handshake was cut short");
    let deadline = Instant::now() + Duration::from_secs(2);
    while recv.at("/connect").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recv.at("/connect").len(), 2, "the trial reached the app");
    tokio::time::sleep(Duration::from_millis(200)).await; // the server notices the hangup
    let (status, body) = handshake(&s, "alice").await;
    assert_eq!(
        status, 101,
        "the next call is the trial and closes the circuit: {body}"
    );
    assert_eq!(handshake(&s, "bob").await.0, 101);
}

/// The join cache holds small decisions only, keyed on the claims too: a join with large
/// params is asked every time (not kept), a token whose claims changed is asked again, and
/// the bytes bound drops the oldest decisions.
#[tokio::test]
async fn join_cache_keeps_small_decisions_keyed_on_claims_and_bounded_in_bytes() {
    let recv = Receiver::start(app).await;
    let s = start(
        &recv,
        &[
            ("PLEXUS_HOOK_JOIN_CACHE_SECS", "30"),
            ("PLEXUS_HOOK_JOIN_CACHE_MAX_BYTES", "1024"),
        ],
    )
    .await;
    let joins = |topic: &str| {
        recv.at("/join")
            .iter()
            .filter(|q| q.body["topic"] == topic)
            .count()
    };
    let client = |name: &str| {
        let token = plexus_core::auth::Issuer::hs256(common::SECRET.as_bytes())
            .issue("alice", &[], Some(name), 3600)
            .unwrap();
        plexus_client::Client::connect(plexus_client::ConnectOptions::new(s.url()).token(token))
    };
    let mut c = client("Alice").await.unwrap();
    // Large params: not cached.
    let big = json!({ "blob": "x".repeat(8192) });
    for _ in 0..2 {
        assert!(c.join("room:big", big.clone()).await.unwrap().is_ok());
        assert!(c.leave("room:big").await.unwrap().is_ok());
    }
    assert_eq!(joins("room:big"), 2, "large params are never cached");
    // Small params: cached for the same claims, asked again with other claims.
    for _ in 0..2 {
        assert!(c.join("room:a", json!({"x": 1})).await.unwrap().is_ok());
        assert!(c.leave("room:a").await.unwrap().is_ok());
    }
    assert_eq!(joins("room:a"), 1);
    let mut renamed = client("Alice B").await.unwrap();
    assert!(renamed
        .join("room:a", json!({"x": 1}))
        .await
        .unwrap()
        .is_ok());
    assert_eq!(
        joins("room:a"),
        2,
        "a token with other claims is asked again"
    );
    // The bytes bound (1 KiB: a few entries) drops the oldest.
    for i in 0..20 {
        let topic = format!("room:n{i}");
        assert!(c.join(&topic, json!({})).await.unwrap().is_ok());
        assert!(c.leave(&topic).await.unwrap().is_ok());
    }
    assert!(c.join("room:n0", json!({})).await.unwrap().is_ok());
    assert_eq!(joins("room:n0"), 2, "the oldest decision was dropped");
    assert!(c.join("room:n19", json!({})).await.unwrap().is_ok());
    assert_eq!(joins("room:n19"), 1, "the newest is still cached");
}

/// The channel cap and `max_per_user` refuse a join before the application is asked.
#[tokio::test]
async fn channel_caps_refuse_before_the_join_hook_is_called() {
    let recv = Receiver::start(app).await;
    let join = recv.url("/join");
    let config = "[limits]\nmax_channels_per_connection = 2\n\n[[channels]]\ntopic = \"capped:*\"\nmax_per_user = 1\n";
    let s = Server::start_with(
        Some(config),
        &[
            ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
            ("PLEXUS_JOIN_HOOK_URL", join.as_str()),
        ],
    )
    .await;
    let mut a = s.client("alice").await;
    assert!(a.join("capped:1", json!({})).await.unwrap().is_ok());
    assert!(a.join("capped:2", json!({})).await.unwrap().is_ok());
    let r = a.join("capped:3", json!({})).await.unwrap();
    assert_eq!(r.reason(), Some("too many channels".into()));
    let mut again = s.client("alice").await;
    let r = again.join("capped:1", json!({})).await.unwrap();
    assert_eq!(
        r.reason(),
        Some("already joined the maximum number of times (max_per_user)".into())
    );
    let asked: Vec<Value> = recv
        .at("/join")
        .iter()
        .map(|q| q.body["topic"].clone())
        .collect();
    assert_eq!(
        asked,
        [json!("capped:1"), json!("capped:2")],
        "refused joins never reach the app"
    );
}
