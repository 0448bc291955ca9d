//! LongPoll sessions at the HTTP level: the session lifecycle and that clients who vanish mid-poll
//! do not leave sessions (or connection slots) behind.

mod common;

use common::{http_raw, json, Server};
use std::time::Duration;

async fn connections(s: &Server) -> u64 {
    let (_, body) = s.http("GET", "/health", &[], "").await.unwrap();
    json(&body)["connections"].as_u64().unwrap()
}

#[tokio::test]
async fn a_client_that_vanishes_mid_poll_is_reaped() {
    let cfg = "profile = \"dev\"\n[limits]\nlongpoll_window_secs = 1\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let token = s.token("ghost");
    let (st, body) = s
        .http(
            "GET",
            &format!("/socket/longpoll?vsn=2.0.0&token={token}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(st, 200);
    let session = json(&body)["token"].as_str().unwrap().to_owned();
    assert!(session.starts_with("plp."));
    assert_eq!(connections(&s).await, 1);

    // A poll whose client hangs up before the answer.
    let port = s.port;
    let path = format!("/socket/longpoll?vsn=2.0.0&token={token}&token={session}");
    let abandoned = tokio::spawn(async move { http_raw(port, "GET", &path, &[], "").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    abandoned.abort();

    let mut left = u64::MAX;
    for _ in 0..60 {
        left = connections(&s).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the abandoned session was not reaped");
    let (_, body) = s
        .http(
            "POST",
            &format!("/socket/longpoll?vsn=2.0.0&token={session}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(json(&body)["status"], 410);
}

#[tokio::test]
async fn polls_deliver_replies_and_answer_204_when_idle() {
    let cfg = "profile = \"dev\"\n[limits]\nlongpoll_window_secs = 1\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let token = s.token("poller");
    let (_, body) = s
        .http(
            "GET",
            &format!("/socket/longpoll?vsn=2.0.0&token={token}"),
            &[],
            "",
        )
        .await
        .unwrap();
    let session = json(&body)["token"].as_str().unwrap().to_owned();
    let q = format!("/socket/longpoll?vsn=2.0.0&token={session}");
    let lines =
        "[\"1\",\"1\",\"room:lp\",\"phx_join\",{}]\n[null,\"2\",\"phoenix\",\"heartbeat\",{}]";
    let (_, body) = s
        .http(
            "POST",
            &q,
            &[("Content-Type", "application/x-ndjson")],
            lines,
        )
        .await
        .unwrap();
    assert_eq!(json(&body)["status"], 200);
    let (_, body) = s.http("GET", &q, &[], "").await.unwrap();
    let polled = json(&body);
    assert_eq!(polled["status"], 200);
    let messages: Vec<serde_json::Value> = polled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json(m.as_str().unwrap()))
        .collect();
    assert_eq!(messages[0][3], "phx_reply");
    assert_eq!(messages[0][4]["status"], "ok");
    assert!(messages.iter().any(|m| m[1] == "2" && m[2] == "phoenix"));
    // Nothing more: 204 after the window.
    let started = std::time::Instant::now();
    let (_, body) = s.http("GET", &q, &[], "").await.unwrap();
    let idle = json(&body);
    if idle["status"] == 200 {
        // presence_diff of our own join may still arrive; the next poll is idle.
        let (_, body) = s.http("GET", &q, &[], "").await.unwrap();
        assert_eq!(json(&body)["status"], 204);
    } else {
        assert_eq!(idle["status"], 204);
        assert!(started.elapsed() >= Duration::from_millis(900));
    }
}

#[tokio::test]
async fn a_session_whose_token_expired_is_closed() {
    let cfg =
        "profile = \"dev\"\n[auth]\nexpiry_grace_secs = 1\n[limits]\nlongpoll_window_secs = 5\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let short = plexus_core::auth::Issuer::hs256(common::SECRET.as_bytes())
        .issue("brief", &[], None, 1)
        .unwrap();
    let (_, body) = s
        .http(
            "GET",
            &format!("/socket/longpoll?vsn=2.0.0&token={short}"),
            &[],
            "",
        )
        .await
        .unwrap();
    let session = json(&body)["token"].as_str().unwrap().to_owned();
    let q = format!("/socket/longpoll?vsn=2.0.0&token={session}");
    // Still polling well within the window, yet closed once exp + grace has passed.
    let mut status = serde_json::Value::Null;
    for _ in 0..40 {
        let (_, body) = s
            .http("POST", &q, &[], "[null,\"1\",\"phoenix\",\"heartbeat\",{}]")
            .await
            .unwrap();
        status = json(&body)["status"].clone();
        if status == 410 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 410, "the expired session kept working");
}

#[tokio::test]
async fn refusals_use_the_statuses_phoenix_js_longpoll_knows() {
    // phoenix.js's LongPoll understands 200/204/410/403/500 in the body and throws on anything
    // else: a cap (429) must read 500 (retried later), a bad token 403 (closed for good).
    let s = Server::start_with(
        Some("profile = \"dev\"\n[limits]\nmax_connections_per_user = 1\n"),
        &[],
    )
    .await;
    let _held = s.client("capped").await;
    let token = s.token("capped");
    let (status, body) = s
        .http(
            "GET",
            &format!("/socket/longpoll?vsn=2.0.0&token={token}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(json(&body)["status"], 500, "{body}");
    let (status, body) = s
        .http("GET", "/socket/longpoll?vsn=2.0.0&token=garbage", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["status"], 403, "{body}");
}
