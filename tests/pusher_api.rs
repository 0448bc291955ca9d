//! Pusher's HTTP API (Pusher mode): what it refuses and with which status, requests signed
//! here with `plexus_core::pusher::api_auth::sign` (the scheme the official SDKs use; the SDK
//! itself is exercised in tests/js/pusher_api.test.mjs), and an accepted event reaching a
//! Phoenix client joined to the topic of the same name.

mod common;

use common::{json, Server};
use plexus_core::pusher::api_auth::sign;
use plexus_core::pusher::PusherApp;
use serde_json::json;

const APP_ID: &str = "77";
const KEY: &str = "rust-pusher-key";
const SECRET: &str = "rust-pusher-secret-0123456789";

fn app() -> PusherApp {
    PusherApp {
        app_id: APP_ID.into(),
        key: KEY.into(),
        secret: SECRET.into(),
        max_presence_members: 100,
    }
}

fn env() -> [(&'static str, &'static str); 3] {
    [
        ("PLEXUS_PUSHER_APP_ID", APP_ID),
        ("PLEXUS_PUSHER_KEY", KEY),
        ("PLEXUS_PUSHER_SECRET", SECRET),
    ]
}

const RULES: &str = "[[channels]]\ntopic = \"news-*\"\n";

async fn start() -> Server {
    Server::start_with(Some(RULES), &env()).await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sends a request signed with `app` at `timestamp`: (status, JSON body).
async fn send_as(
    s: &Server,
    app: &PusherApp,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &str,
    timestamp: u64,
) -> (u16, serde_json::Value) {
    let query = sign(app, method, path, params, body.as_bytes(), timestamp);
    let (status, resp) = s
        .http(method, &format!("{path}?{query}"), &[], body)
        .await
        .unwrap();
    (status, json(&resp))
}

async fn post(s: &Server, path: &str, body: &str) -> (u16, serde_json::Value) {
    send_as(s, &app(), "POST", path, &[], body, now()).await
}

const EVENTS: &str = "/apps/77/events";

fn event(channels: &[String], data: &str) -> String {
    json!({ "name": "e", "channels": channels, "data": data }).to_string()
}

fn one(channel: &str) -> Vec<String> {
    vec![channel.to_string()]
}

fn assert_error(status: u16, body: &serde_json::Value, expected: u16, needle: &str) {
    assert_eq!(status, expected, "{body}");
    let reason = body["error"].as_str().unwrap_or_default();
    assert!(reason.contains(needle), "{needle:?} not in {body}");
}

#[tokio::test]
async fn a_signed_event_reaches_a_phoenix_client() {
    let s = start().await;
    let mut c = s.client("alice").await;
    c.join("news-rust", json!({})).await.unwrap();
    let (st, body) = post(&s, EVENTS, &event(&one("news-rust"), r#"{"a":1}"#)).await;
    assert_eq!((st, &body), (200, &json!({})));
    let m = c.recv_event("news-rust", "e").await.unwrap();
    assert_eq!(m.payload.as_json().unwrap().get(), r#"{"a":1}"#);
    // `info` asks for the channels' counts in the answer.
    let body = json!({
        "name": "e", "channels": ["news-rust", "news-nobody"], "data": "2",
        "info": "subscription_count",
    })
    .to_string();
    let (st, body) = post(&s, EVENTS, &body).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body,
        json!({ "channels": {
            "news-rust": { "subscription_count": 1 },
            "news-nobody": { "subscription_count": 0 },
        } })
    );
    let batch = json!({ "batch": [
        { "name": "e", "channel": "news-rust", "data": "3", "info": "subscription_count" },
        { "name": "e", "channel": "news-nobody", "data": "4" },
    ] })
    .to_string();
    let (st, body) = post(&s, "/apps/77/batch_events", &batch).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, json!({ "batch": [{ "subscription_count": 1 }, {}] }));
    for expected in ["2", "3"] {
        let m = c.recv_event("news-rust", "e").await.unwrap();
        assert_eq!(m.payload.as_json().unwrap().get(), expected);
    }
    // user_count is for presence channels only.
    let body = json!({ "name": "e", "channel": "news-rust", "data": "5", "info": "user_count" })
        .to_string();
    let (st, b) = post(&s, EVENTS, &body).await;
    assert_error(st, &b, 400, "presence");
}

#[tokio::test]
async fn signature_refusals_are_401_and_another_app_404() {
    let s = start().await;
    let body = event(&one("news-x"), "{}");
    // Another secret.
    let forged = PusherApp {
        secret: "not-the-secret-0123456789".into(),
        ..app()
    };
    let (st, b) = send_as(&s, &forged, "POST", EVENTS, &[], &body, now()).await;
    assert_error(st, &b, 401, "invalid auth_signature");
    // Another key.
    let other_key = PusherApp {
        key: "other".into(),
        ..app()
    };
    let (st, b) = send_as(&s, &other_key, "POST", EVENTS, &[], &body, now()).await;
    assert_error(st, &b, 401, "unknown auth_key");
    // Stale: 601 s in the past, or in the future.
    for ts in [now() - 601, now() + 601] {
        let (st, b) = send_as(&s, &app(), "POST", EVENTS, &[], &body, ts).await;
        assert_error(st, &b, 401, "auth_timestamp");
    }
    // Unsigned.
    let (st, resp) = s.http("POST", EVENTS, &[], &body).await.unwrap();
    assert_error(
        st,
        &json(&resp),
        401,
        "missing query parameter auth_signature",
    );
    // A body other than the signed one.
    let query = sign(&app(), "POST", EVENTS, &[], body.as_bytes(), now());
    let tampered = event(&one("news-y"), "{}");
    let (st, resp) = s
        .http("POST", &format!("{EVENTS}?{query}"), &[], &tampered)
        .await
        .unwrap();
    assert_error(st, &json(&resp), 401, "body_md5");
    // Signed for another path.
    let query = sign(
        &app(),
        "POST",
        "/apps/77/batch_events",
        &[],
        body.as_bytes(),
        now(),
    );
    let (st, resp) = s
        .http("POST", &format!("{EVENTS}?{query}"), &[], &body)
        .await
        .unwrap();
    assert_error(st, &json(&resp), 401, "invalid auth_signature");
    // Another app id, even correctly signed.
    let (st, b) = post(&s, "/apps/78/events", &body).await;
    assert_error(st, &b, 404, "no such app");
    let (st, b) = send_as(&s, &app(), "GET", "/apps/78/channels", &[], "", now()).await;
    assert_error(st, &b, 404, "no such app");
}

#[tokio::test]
async fn pusher_limits_on_events() {
    let s = start().await;
    // Channels: 100 accepted, 101 refused.
    let hundred: Vec<String> = (0..100).map(|i| format!("news-{i}")).collect();
    let (st, b) = post(&s, EVENTS, &event(&hundred, "{}")).await;
    assert_eq!(st, 200, "{b}");
    let many: Vec<String> = (0..101).map(|i| format!("news-{i}")).collect();
    let (st, b) = post(&s, EVENTS, &event(&many, "{}")).await;
    assert_error(st, &b, 400, "1 to 100 channels");
    // Channel names: Pusher's alphabet, 200 characters at most.
    for bad in ["room:lobby", "news x", "news-é", ""] {
        let (st, b) = post(&s, EVENTS, &event(&one(bad), "{}")).await;
        assert_error(st, &b, 400, "invalid channel name");
    }
    let long = format!("news-{}", "a".repeat(196));
    let (st, b) = post(&s, EVENTS, &event(&one(&long), "{}")).await;
    assert_error(st, &b, 400, "invalid channel name");
    let longest = format!("news-{}", "a".repeat(195));
    let (st, b) = post(&s, EVENTS, &event(&one(&longest), "{}")).await;
    assert_eq!(st, 200, "{b}");
    // Event names: 200 characters; the protocol's own names are reserved.
    let name = "e".repeat(201);
    let body = json!({ "name": name, "channel": "news-a", "data": "{}" }).to_string();
    let (st, b) = post(&s, EVENTS, &body).await;
    assert_error(st, &b, 400, "event name");
    for reserved in [
        "pusher:subscribe",
        "pusher_internal:member_added",
        "phx_reply",
    ] {
        let body = json!({ "name": reserved, "channel": "news-a", "data": "{}" }).to_string();
        let (st, b) = post(&s, EVENTS, &body).await;
        assert_eq!(st, 400, "{reserved}: {b}");
    }
    // Data: 10 KiB.
    let (st, b) = post(
        &s,
        EVENTS,
        &event(&one("news-a"), &"x".repeat(10 * 1024 + 1)),
    )
    .await;
    assert_error(st, &b, 413, "more than 10240");
    // Shape: data must be a string; channel or channels; socket_id digits.digits.
    let body = json!({ "name": "e", "channel": "news-a", "data": {"a": 1} }).to_string();
    let (st, b) = post(&s, EVENTS, &body).await;
    assert_error(st, &b, 400, "invalid body");
    let body = json!({ "name": "e", "data": "{}" }).to_string();
    let (st, b) = post(&s, EVENTS, &body).await;
    assert_error(st, &b, 400, "\"channel\" or \"channels\"");
    let body =
        json!({ "name": "e", "channel": "news-a", "data": "{}", "socket_id": "abc" }).to_string();
    let (st, b) = post(&s, EVENTS, &body).await;
    assert_error(st, &b, 400, "invalid socket_id");
    let (st, b) = post(&s, EVENTS, "not json").await;
    assert_error(st, &b, 400, "invalid body");
    // Batches: 10 events at most, one channel each.
    let ev = json!({ "name": "e", "channel": "news-a", "data": "{}" });
    let ten = json!({ "batch": vec![ev.clone(); 10] }).to_string();
    let (st, b) = post(&s, "/apps/77/batch_events", &ten).await;
    assert_eq!((st, &b), (200, &json!({})));
    let eleven = json!({ "batch": vec![ev; 11] }).to_string();
    let (st, b) = post(&s, "/apps/77/batch_events", &eleven).await;
    assert_error(st, &b, 400, "at most 10 events");
    // Queries: user_count only for presence channels; users only of presence channels.
    let (st, b) = send_as(
        &s,
        &app(),
        "GET",
        "/apps/77/channels/news-a",
        &[("info", "user_count")],
        "",
        now(),
    )
    .await;
    assert_error(st, &b, 400, "presence");
    let (st, b) = send_as(
        &s,
        &app(),
        "GET",
        "/apps/77/channels/news-a/users",
        &[],
        "",
        now(),
    )
    .await;
    assert_error(st, &b, 400, "presence");
    let (st, b) = send_as(
        &s,
        &app(),
        "GET",
        "/apps/77/channels/bad:name",
        &[],
        "",
        now(),
    )
    .await;
    assert_error(st, &b, 400, "invalid channel name");
}

#[tokio::test]
async fn max_message_bytes_below_10_kib_lowers_the_data_limit() {
    let config = format!("[limits]\nmax_message_bytes = 4096\n{RULES}");
    let s = Server::start_with(Some(&config), &env()).await;
    let (st, b) = post(&s, EVENTS, &event(&one("news-a"), &"x".repeat(4096))).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = post(&s, EVENTS, &event(&one("news-a"), &"x".repeat(4097))).await;
    assert_error(st, &b, 413, "more than 4096");
}

#[tokio::test]
async fn without_pusher_mode_there_is_no_pusher_api() {
    let s = Server::start_with(Some(RULES), &[]).await;
    let (st, b) = post(&s, EVENTS, &event(&one("news-a"), "{}")).await;
    assert_error(st, &b, 404, "no such endpoint");
}

#[tokio::test]
async fn wrong_signatures_are_throttled_like_wrong_api_keys() {
    let s = start().await;
    let body = event(&one("news-x"), "{}");
    let forged = PusherApp {
        secret: "not-the-secret-0123456789".into(),
        ..app()
    };
    // Stale requests are refused before any secret is compared: they do not count.
    for _ in 0..12 {
        let (st, b) = send_as(&s, &forged, "POST", EVENTS, &[], &body, now() - 3600).await;
        assert_error(st, &b, 401, "auth_timestamp");
    }
    for _ in 0..10 {
        let (st, b) = send_as(&s, &forged, "POST", EVENTS, &[], &body, now()).await;
        assert_error(st, &b, 401, "invalid auth_signature");
    }
    // The address is out of attempts: even a good signature waits.
    let (st, b) = post(&s, EVENTS, &body).await;
    assert_error(st, &b, 429, "too many wrong signatures");
}

#[tokio::test]
async fn hostile_requests_get_json_errors() {
    let s = start().await;
    // A path segment that is not UTF-8 once decoded, signed as sent.
    for path in ["/apps/77/channels/%FF", "/apps/77/channels/%FF/users"] {
        let (st, b) = send_as(&s, &app(), "GET", path, &[], "", now()).await;
        assert_error(st, &b, 400, "");
    }
    let (st, b) = send_as(
        &s,
        &app(),
        "POST",
        "/apps/77/users/%FF/terminate_connections",
        &[],
        "{}",
        now(),
    )
    .await;
    assert_error(st, &b, 400, "");
    // A timestamp past u64, garbage and repeated parameters.
    let body = event(&one("news-a"), "{}");
    let q = sign(&app(), "POST", EVENTS, &[], body.as_bytes(), now());
    for query in [
        q.replace("auth_timestamp=", "auth_timestamp=99999999999999999999999"),
        format!("{q}&auth_signature=00"),
        "auth_signature=%FF%FE&auth_key=%00".to_string(),
        format!("{}&{q}", "x=1&".repeat(500)),
    ] {
        let (st, resp) = s
            .http("POST", &format!("{EVENTS}?{query}"), &[], &body)
            .await
            .unwrap();
        assert_error(st, &json(&resp), 401, "");
    }
    // The server is still there and serves a good request.
    let (st, b) = post(&s, EVENTS, &body).await;
    assert_eq!(st, 200, "{b}");
}
