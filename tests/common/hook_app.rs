//! The application side of the hook tests: a receiver answering like an application (`app`),
//! a server configured with hooks pointing at it (`config`, `start`), and small helpers.
#![allow(dead_code)]

use super::receiver::{Answer, Receiver, HOOK_SECRET};
use super::{ws_headers, Server};
use serde_json::{json, Value};
use std::time::Duration;

pub const SLOW: Duration = Duration::from_secs(3);

pub fn app(path: &str, body: &Value) -> Answer {
    let sub = body["sub"].as_str().unwrap_or("");
    let topic = body["topic"].as_str().unwrap_or("");
    match path {
        "/connect" => match sub {
            "banned" => Answer::Json(json!({"allow": false, "reason": "banned user"})),
            "slow" => Answer::Slow(SLOW, json!({"allow": true})),
            "garbage" => Answer::Raw("<html>oops</html>"),
            "broken" => Answer::Status(500),
            _ => Answer::Json(json!({"allow": true})),
        },
        "/join" => match topic {
            "room:deny" | "hist:deny" | "realtime:sb:deny" => {
                Answer::Json(json!({"allow": false, "reason": "not in team 42"}))
            }
            "room:slow" => Answer::Slow(SLOW, json!({"allow": true})),
            "room:garbage" => Answer::Raw("{\"allow\": \"maybe\"}"),
            "room:500" => Answer::Status(500),
            "room:meta" => Answer::Json(json!({
                "allow": true,
                "reply": {"team": 42, "epoch": "not-yours"},
                "meta": {"role": "lead", "phx_ref": "forged"}
            })),
            _ => Answer::Json(json!({"allow": true})),
        },
        "/push" => match body["payload"]["text"].as_str().unwrap_or("") {
            "deny" => Answer::Json(json!({"allow": false, "reason": "spam"})),
            "slow" => Answer::Slow(SLOW, json!({"allow": true})),
            "garbage" => Answer::Raw("not json"),
            "store" => Answer::Json(json!({
                "allow": true,
                "reply": {"id": 7},
                "broadcast": {"event": "new_msg", "payload": {"id": 7, "text": "stored"}}
            })),
            "silent" => {
                Answer::Json(json!({"allow": true, "broadcast": false, "reply": {"saved": true}}))
            }
            _ => Answer::Json(json!({"allow": true})),
        },
        _ => Answer::Status(404),
    }
}

pub fn config(recv: &Receiver) -> String {
    format!(
        r#"
[[channels]]
topic = "room:*"
presence = true
push_hook = "{push}"
push_hook_events = ["new_msg"]

[[channels]]
topic = "open:*"
join_hook = "off"

[[channels]]
topic = "staff:*"
join_roles = ["staff"]

[[channels]]
topic = "hist:*"
history_size = 10
"#,
        push = recv.url("/push")
    )
}

pub async fn start(recv: &Receiver, extra: &[(&str, &str)]) -> Server {
    let connect = recv.url("/connect");
    let join = recv.url("/join");
    let mut env = vec![
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_CONNECT_HOOK_URL", connect.as_str()),
        ("PLEXUS_JOIN_HOOK_URL", join.as_str()),
        ("PLEXUS_HOOK_TIMEOUT_MS", "500"),
    ];
    env.extend_from_slice(extra);
    Server::start_with(Some(&config(recv)), &env).await
}

/// The WebSocket handshake of `sub`: (status, body).
pub async fn handshake(s: &Server, sub: &str) -> (u16, String) {
    let path = format!("/socket/websocket?vsn=2.0.0&token={}", s.token(sub));
    let (status, _, body) = super::http_raw(s.port, "GET", &path, &ws_headers(), "")
        .await
        .unwrap();
    (status, body)
}

pub fn text(s: &str) -> plexus_client::protocol::Payload {
    plexus_client::protocol::Payload::json(&json!({ "text": s })).unwrap()
}

pub async fn metric(s: &Server, line: &str) -> u64 {
    let (_, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(line).map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
}
