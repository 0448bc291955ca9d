//! What the second review found in the hooks (issue 19): one user's failing requests must not
//! open the circuit breaker for everyone (4xx answers are the application's refusal of one
//! request, and each user counts once), requests larger than `hooks.max_request_bytes` are
//! refused locally and never sent, the join-decision cache keeps history reads, live joins and
//! roles apart, and every hook request carries a unique signed `id` for replay checks.

mod common;

use common::hook_app::*;
use common::receiver::{Answer, Receiver};
use serde_json::{json, Value};

/// The Express example's body limit, scaled down: the application answers 413 to a join
/// request body larger than this.
const APP_BODY_LIMIT: usize = 2048;

fn joins_of(recv: &Receiver, sub: &str) -> usize {
    recv.at("/join")
        .iter()
        .filter(|q| q.body["sub"] == sub)
        .count()
}

fn app_with_body_limit(path: &str, body: &Value) -> Answer {
    let too_large = body.to_string().len() > APP_BODY_LIMIT;
    match (path, body["sub"].as_str(), body["topic"].as_str()) {
        ("/join", _, _) if too_large => Answer::Status(413),
        ("/join", Some("mallory"), Some("room:boom")) => Answer::Status(500),
        _ => Answer::Json(json!({"allow": true})),
    }
}

/// One signed-in user sending joins the application answers 413 (too large for its body
/// limit) used to open the breaker in a few milliseconds, and every other user's join then got
/// `hook unavailable` without the application being asked. A 4xx is the application's refusal
/// of that request: the client is told so, and the breaker does not count it.
#[tokio::test]
async fn a_users_joins_answered_413_do_not_open_the_breaker() {
    let recv = Receiver::start(app_with_body_limit).await;
    // The defaults: threshold 5, cooldown 5 s, max_request_bytes 64 KiB.
    let s = start(&recv, &[]).await;
    let mut mallory = s.client("mallory").await;
    let big = json!({ "blob": "x".repeat(4 * APP_BODY_LIMIT) });
    let mut refusals = Vec::new();
    for _ in 0..8 {
        refusals.push(mallory.join("room:a", big.clone()).await.unwrap().reason());
    }
    let mut alice = s.client("alice").await;
    let r = alice.join("room:a", json!({})).await.unwrap();
    assert!(r.is_ok(), "4xx answers do not open the circuit: {r:?}");
    assert_eq!(joins_of(&recv, "alice"), 1, "alice's join reached the app");
    assert_eq!(joins_of(&recv, "mallory"), 8, "each of mallory's was asked");
    let why = Some("request too large for the hook (HTTP 413)".to_owned());
    assert!(refusals.iter().all(|r| *r == why), "{refusals:?}");
    let r = mallory.join("room:a", big).await.unwrap();
    assert_eq!(
        r.json(),
        json!({"reason": "request too large for the hook (HTTP 413)", "retry": false}),
        "the client is told why"
    );
    assert_eq!(metric(&s, "plexus_hook_circuit_opened_total").await, 0);
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"join\",result=\"rejected\"}"
        )
        .await,
        9
    );
}

/// Failures that do count (5xx), but all for one user: one user counts once, so the circuit
/// stays closed for everyone else.
#[tokio::test]
async fn one_users_failing_joins_do_not_open_the_breaker_for_everyone() {
    let recv = Receiver::start(app_with_body_limit).await;
    let s = start(&recv, &[]).await;
    let mut mallory = s.client("mallory").await;
    for _ in 0..8 {
        let r = mallory.join("room:boom", json!({})).await.unwrap();
        assert_eq!(r.reason(), Some("hook unavailable".into()));
    }
    let mut alice = s.client("alice").await;
    let r = alice.join("room:b", json!({})).await.unwrap();
    assert!(r.is_ok(), "one user's failures count once: {r:?}");
    assert_eq!(joins_of(&recv, "alice"), 1, "alice's join reached the app");
    assert_eq!(joins_of(&recv, "mallory"), 8, "the circuit stayed closed");
    assert_eq!(metric(&s, "plexus_hook_circuit_opened_total").await, 0);
}

/// Failures of distinct users still open the circuit (the breaker still protects a failing
/// application), and calls then fail at once without reaching it.
#[tokio::test]
async fn failures_of_distinct_users_still_open_the_breaker() {
    let recv = Receiver::start(|path, _| match path {
        "/join" => Answer::Status(503),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let s = start(&recv, &[("PLEXUS_HOOK_BREAKER_THRESHOLD", "3")]).await;
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let mut c = s.client(user).await;
        let r = c.join("room:a", json!({})).await.unwrap();
        assert_eq!(
            r.json(),
            json!({"reason": "hook unavailable", "retry": true})
        );
    }
    assert_eq!(
        recv.at("/join").len(),
        3,
        "the third user's failure opened it"
    );
    assert_eq!(metric(&s, "plexus_hook_circuit_opened_total").await, 1);
}

/// A join or push whose request would be larger than `hooks.max_request_bytes` is refused
/// with a clear reason; the application never sees it.
#[tokio::test]
async fn requests_over_max_request_bytes_are_refused_locally() {
    let recv = Receiver::start(app).await;
    let s = start(&recv, &[("PLEXUS_HOOK_MAX_REQUEST_BYTES", "4096")]).await;
    let mut c = s.client("alice").await;
    let big = json!({ "blob": "x".repeat(8192) });
    let r = c.join("room:a", big).await.unwrap();
    assert_eq!(
        r.json(),
        json!({"reason": "params too large for the hook", "retry": false})
    );
    assert_eq!(recv.at("/join").len(), 0, "never forwarded");
    assert!(c.join("room:a", json!({"x": 1})).await.unwrap().is_ok());
    let r = c
        .push_json("room:a", "new_msg", &json!({ "text": "y".repeat(8192) }))
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason()),
        ("error", Some("payload too large for the hook".into()))
    );
    assert_eq!(recv.at("/push").len(), 0, "never forwarded");
    assert!(c
        .push("room:a", "new_msg", text("hi"))
        .await
        .unwrap()
        .is_ok());
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"join\",result=\"too_large\"}"
        )
        .await,
        1
    );
    // The default (64 KiB) holds too: the 150 kB params of the review.
    let s = start(&recv, &[]).await;
    let mut c = s.client("alice").await;
    let r = c
        .join("room:b", json!({ "blob": "x".repeat(150_000) }))
        .await
        .unwrap();
    assert_eq!(r.reason(), Some("params too large for the hook".into()));
    assert!(!recv.at("/join").iter().any(|q| q.body["topic"] == "room:b"));
}

/// With the join cache on, an application allowing history reads (no `conn`) but not live
/// joins: the cached read decision used to grant a live WebSocket join with the same params.
#[tokio::test]
async fn a_cached_history_read_does_not_grant_a_live_join() {
    let recv = Receiver::start(|path, body: &Value| match path {
        "/join" if body.get("conn").is_none() => Answer::Json(json!({"allow": true})),
        "/join" => Answer::Json(json!({"allow": false, "reason": "history only"})),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let s = start(&recv, &[("PLEXUS_HOOK_JOIN_CACHE_SECS", "30")]).await;
    let token = s.token("alice");
    let path = format!("/api/channels/hist:x/history?token={token}");
    for _ in 0..2 {
        let (status, body) = s.http("GET", &path, &[], "").await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(recv.at("/join").len(), 1, "the read decision is cached");
    let mut c = s.client("alice").await;
    let r = c.join("hist:x", json!({"history": true})).await.unwrap();
    assert_eq!(
        r.reason(),
        Some("history only".into()),
        "the live join was asked, not served the read's decision"
    );
    assert_eq!(recv.at("/join").len(), 2);
}

/// Roles `["a,b"]` and `["a", "b"]` are different users to the application; the cache key
/// used to join them with commas.
#[tokio::test]
async fn cached_decisions_do_not_confuse_roles_joined_by_commas() {
    let recv = Receiver::start(|path, body: &Value| match path {
        "/join" if body["roles"] == json!(["a", "b"]) => Answer::Json(json!({"allow": true})),
        "/join" => Answer::Json(json!({"allow": false, "reason": "not a and b"})),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let s = start(&recv, &[("PLEXUS_HOOK_JOIN_CACHE_SECS", "30")]).await;
    let exp = plexus_core::auth::unix_now() + 3600;
    let token = |roles: &[&str]| {
        plexus_core::auth::Issuer::hs256(common::SECRET.as_bytes())
            .issue_claims(&plexus_core::auth::Claims {
                sub: "alice".into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                name: None,
                exp,
                iat: None,
                iss: None,
                aud: None,
            })
            .unwrap()
    };
    let connect = |t: String| {
        plexus_client::Client::connect(plexus_client::ConnectOptions::new(s.url()).token(t))
    };
    let mut two = connect(token(&["a", "b"])).await.unwrap();
    assert!(two.join("room:r", json!({})).await.unwrap().is_ok());
    let mut one = connect(token(&["a,b"])).await.unwrap();
    let r = one.join("room:r", json!({})).await.unwrap();
    assert_eq!(r.reason(), Some("not a and b".into()));
    assert_eq!(recv.at("/join").len(), 2);
}

/// Every hook request carries a unique `id` inside the signed body, so that a receiver can
/// refuse a request it has already seen within the timestamp window.
#[tokio::test]
async fn every_hook_request_has_a_unique_signed_id() {
    let recv = Receiver::start(app).await;
    let s = start(&recv, &[]).await;
    let mut c = s.client("alice").await;
    for topic in ["room:a", "room:b"] {
        assert!(c.join(topic, json!({})).await.unwrap().is_ok());
    }
    for _ in 0..2 {
        let r = c.push("room:a", "new_msg", text("hi")).await.unwrap();
        assert!(r.is_ok());
    }
    let _again = s.client("alice").await;
    let got = recv.received();
    let kinds: Vec<&str> = got.iter().filter_map(|q| q.body["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["connect", "join", "join", "push", "push", "connect"]
    );
    let mut ids = std::collections::HashSet::new();
    for q in &got {
        assert!(q.signed, "bad signature on {}", q.body);
        let id = q.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {}", q.body));
        assert!(
            id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(ids.insert(id.to_owned()), "id {id} seen twice");
    }
}
