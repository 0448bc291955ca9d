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
    let session = s.longpoll_session("ghost").await;
    let token = s.token("ghost");
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
    let session = s.longpoll_session("poller").await;
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
    // The answer names the token of the next poll; a poll with the old one (its answer was
    // lost) gets the same batch again.
    let next = polled["token"].as_str().unwrap().to_owned();
    assert_eq!(next, format!("{session}~1"));
    let (_, body) = s.http("GET", &q, &[], "").await.unwrap();
    assert_eq!(json(&body), polled, "the unacknowledged batch again");
    let q = format!("/socket/longpoll?vsn=2.0.0&token={next}");
    // Nothing more: 204 after the window.
    let started = std::time::Instant::now();
    let (_, body) = s.http("GET", &q, &[], "").await.unwrap();
    let idle = json(&body);
    if idle["status"] == 200 {
        // presence_diff of our own join may still arrive; the next poll is idle.
        let token = idle["token"].as_str().unwrap();
        let q = format!("/socket/longpoll?vsn=2.0.0&token={token}");
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

/// phoenix.js polls with the token of the last answer it read. When a poll's answer is lost
/// (here: the poll went through node A, forwarded to B that holds the session, and A began
/// draining and answered 204 itself while B's poll went on and took the next broadcast),
/// the client's next poll, with the token it still holds, gets that batch.
#[tokio::test]
async fn a_batch_whose_answer_was_lost_is_answered_again() {
    let redis = common::SuiteRedis::start().await;
    let cfg = "profile = \"dev\"\nbroker = \"redis\"\n[limits]\nlongpoll_window_secs = 5\n\
               [[channels]]\ntopic = \"lp:*\"\n";
    let url = redis.url();
    let a = Server::start_with(Some(cfg), &[("PLEXUS_REDIS_URL", &url)]).await;
    let b = Server::start_with(Some(cfg), &[("PLEXUS_REDIS_URL", &url)]).await;
    let session = b.longpoll_session("mover").await;
    let poll = |token: &str| format!("/socket/longpoll?vsn=2.0.0&token={token}");
    let join = "[\"1\",\"1\",\"lp:x\",\"phx_join\",{}]";
    let (_, body) = b.http("POST", &poll(&session), &[], join).await.unwrap();
    assert_eq!(json(&body)["status"], 200);
    let (_, body) = b.http("GET", &poll(&session), &[], "").await.unwrap();
    let joined = json(&body);
    assert!(joined["messages"][0]
        .as_str()
        .unwrap()
        .contains("phx_reply"));
    let token = joined["token"].as_str().unwrap().to_owned();

    // A poll through A (forwarded to B, where it waits); then A begins draining and ends it
    // with 204 at once, while B's part of it goes on waiting.
    let (port, path) = (a.port, poll(&token));
    let through_a = tokio::spawn(async move { http_raw(port, "GET", &path, &[], "").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::process::Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status()
        .unwrap();
    let (_, _, body) = through_a.await.unwrap().unwrap();
    assert_eq!(json(&body)["status"], 204, "{body}");
    assert_eq!(json(&body)["token"], token.as_str());
    // B's poll takes the broadcast; its answer goes to A, which no longer listens.
    b.broadcast("lp:x", "msg", serde_json::json!({"n": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client polls again with the token it holds: the batch is answered again.
    let (_, body) = b.http("GET", &poll(&token), &[], "").await.unwrap();
    let polled = json(&body);
    assert_eq!(polled["status"], 200, "{polled}");
    let messages = polled["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{polled}");
    assert_eq!(json(messages[0].as_str().unwrap())[4]["n"], 1);
    assert_eq!(polled["token"], format!("{session}~2"));
}

/// A poll superseded by a newer one of the same session (a client that retried) must not keep
/// the session's wake-up: the newer poll answers a broadcast at once, not at the end of its
/// window. Repeated, since it depends on which poll the server's threads run first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_poll_does_not_swallow_the_newer_poll_s_wake_up() {
    let cfg = "profile = \"dev\"\n[limits]\nlongpoll_window_secs = 10\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let session = s.longpoll_session("retrier").await;
    let q = |token: &str| format!("/socket/longpoll?vsn=2.0.0&token={token}");
    let join = "[\"1\",\"1\",\"room:lp\",\"phx_join\",{}]";
    let (_, body) = s
        .http(
            "POST",
            &q(&session),
            &[("Content-Type", "application/x-ndjson")],
            join,
        )
        .await
        .unwrap();
    assert_eq!(json(&body)["status"], 200);
    // The join's reply and our own presence diff (sent after the diff interval) first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = s.http("GET", &q(&session), &[], "").await.unwrap();
    let mut token = json(&body)["token"].as_str().unwrap().to_owned();
    for round in 0..20 {
        let port = s.port;
        let older_path = q(&token);
        let older = tokio::spawn(async move { http_raw(port, "GET", &older_path, &[], "").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let newer_path = q(&token);
        let newer = tokio::spawn(async move { http_raw(port, "GET", &newer_path, &[], "").await });
        // The older poll is answered 204 as soon as the newer one arrives.
        let (_, _, body) = older.await.unwrap().unwrap();
        assert_eq!(json(&body)["status"], 204, "round {round}: {body}");
        let started = std::time::Instant::now();
        s.broadcast("room:lp", "msg", serde_json::json!({ "round": round }))
            .await;
        let (_, _, body) = tokio::time::timeout(Duration::from_secs(9), newer)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the newer poll slept through the broadcast"))
            .unwrap()
            .unwrap();
        let answer = json(&body);
        assert_eq!(answer["status"], 200, "round {round}: {answer}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "round {round}: answered after {:?}",
            started.elapsed()
        );
        assert!(
            answer["messages"]
                .to_string()
                .contains(&format!("\\\"round\\\":{round}")),
            "round {round}: {answer}"
        );
        token = answer["token"].as_str().unwrap().to_owned();
    }
}
