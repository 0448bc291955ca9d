//! Channel semantics over a real WebSocket: join, leave, rejoin, push → broadcast, heartbeat,
//! binary frames, malformed frames, limits and close codes.

mod common;

use bytes::Bytes;
use common::{json, Server};
use plexus_client::protocol::Payload;
use plexus_client::{Client, ClientError, ConnectOptions};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn push_is_broadcast_to_others_but_not_echoed_to_the_sender() {
    let s = Server::start().await;
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    assert!(alice.join("room:lobby", json!({})).await.unwrap().is_ok());
    assert!(bob.join("room:lobby", json!({})).await.unwrap().is_ok());

    let reply = alice
        .push_json("room:lobby", "new_msg", &json!({"body": "hi"}))
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let m = bob.recv_event("room:lobby", "new_msg").await.unwrap();
    // Phoenix's shape, `[null, null, topic, event, payload]`: room:* keeps history in the dev
    // profile, but offsets ride in `ref` only for joins that ask for them.
    assert_eq!((m.join_ref, m.msg_ref), (None, None));
    assert_eq!(m.payload.as_json().unwrap().get(), r#"{"body":"hi"}"#);
    assert!(alice
        .recv_event_timeout("room:lobby", "new_msg", Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn echo_rule_sends_the_broadcast_back_to_the_sender() {
    let cfg = "profile = \"dev\"\n[[channels]]\ntopic = \"room:*\"\necho = true\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let mut alice = s.client("alice").await;
    alice.join("room:echo", json!({})).await.unwrap();
    alice
        .push_json("room:echo", "new_msg", &json!({"n": 1}))
        .await
        .unwrap();
    let m = alice.recv_event("room:echo", "new_msg").await.unwrap();
    assert_eq!(m.payload.as_json().unwrap().get(), r#"{"n":1}"#);
}

#[tokio::test]
async fn leave_replies_ok_then_closes_the_channel() {
    let s = Server::start().await;
    let mut c = s.client("alice").await;
    c.join("room:a", json!({})).await.unwrap();
    let join_ref = c.join_ref("room:a").unwrap().to_owned();
    assert!(c.leave("room:a").await.unwrap().is_ok());
    let close = c.recv_event("room:a", "phx_close").await.unwrap();
    assert_eq!(close.join_ref.as_deref(), Some(join_ref.as_str()));
    // No longer joined: pushes are unmatched.
    let r = c.push_json("room:a", "new_msg", &json!({})).await.unwrap();
    assert_eq!(r.status, "error");
    assert_eq!(r.reason().as_deref(), Some("unmatched topic"));
    // Leaving again is fine, as in Phoenix (clients leave refused channels to stop rejoining).
    assert!(c.leave("room:a").await.unwrap().is_ok());
}

#[tokio::test]
async fn rejoining_closes_the_old_join_first() {
    let s = Server::start().await;
    let mut c = s.client("alice").await;
    c.join("room:a", json!({})).await.unwrap();
    let first = c.join_ref("room:a").unwrap().to_owned();
    assert!(c.join("room:a", json!({})).await.unwrap().is_ok());
    let close = c.recv_event("room:a", "phx_close").await.unwrap();
    assert_eq!(close.join_ref.as_deref(), Some(first.as_str()));
    // Still subscribed exactly once: one broadcast arrives once.
    let mut other = s.client("bob").await;
    other.join("room:a", json!({})).await.unwrap();
    other.push_json("room:a", "ping", &json!({})).await.unwrap();
    c.recv_event("room:a", "ping").await.unwrap();
    assert!(c
        .recv_event_timeout("room:a", "ping", Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn unjoined_topic_heartbeat_and_phoenix_topic() {
    let s = Server::start().await;
    let mut c = s.client("alice").await;
    let r = c
        .push_json("room:nope", "new_msg", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.reason().as_deref(), Some("unmatched topic"));
    assert!(c.heartbeat().await.unwrap().is_ok());
    let r = c
        .request(None, "phoenix", "bogus", Payload::empty_object())
        .await
        .unwrap();
    assert_eq!(r.status, "error");
    assert!(r.reason().unwrap().contains("unknown event"));
}

#[tokio::test]
async fn join_outside_the_rules_is_unauthorized() {
    let s = Server::start().await;
    let mut c = s.client("alice").await;
    let r = c.join("secret", json!({})).await.unwrap();
    assert_eq!(r.status, "error");
    assert_eq!(r.reason().as_deref(), Some("unauthorized"));
    let r = c
        .join(&format!("room:{}", "x".repeat(300)), json!({}))
        .await
        .unwrap();
    assert_eq!(r.reason().as_deref(), Some("topic too long"));
    let r = c
        .request(None, "room:a", "phx_reply", Payload::empty_object())
        .await
        .unwrap();
    assert_eq!(r.reason().as_deref(), Some("unmatched topic"));
}

#[tokio::test]
async fn binary_push_becomes_a_binary_broadcast() {
    let s = Server::start().await;
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    alice.join("room:bin", json!({})).await.unwrap();
    bob.join("room:bin", json!({})).await.unwrap();
    let data = Bytes::from_static(&[0, 1, 2, 254, 255]);
    let r = alice
        .push("room:bin", "file", Payload::Binary(data.clone()))
        .await
        .unwrap();
    assert!(r.is_ok());
    let m = bob.recv_event("room:bin", "file").await.unwrap();
    match m.payload {
        Payload::Binary(b) => assert_eq!(b, data),
        other => panic!("expected binary, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_error_replies_and_the_socket_keeps_working() {
    let s = Server::start().await;
    let mut c = s.client("alice").await;
    let mut bystander = s.client("bob").await;
    bystander.join("room:a", json!({})).await.unwrap();

    c.send_text("this is not json").await.unwrap();
    let m = c.recv().await.unwrap();
    assert_eq!(
        (m.topic.as_str(), m.event.as_str()),
        ("phoenix", "phx_reply")
    );
    assert!(m
        .payload
        .as_json()
        .unwrap()
        .get()
        .contains("invalid message"));

    c.send_text(r#"[null,"41","room:a","x"]"#).await.unwrap();
    let r = c.wait_reply("41").await.unwrap();
    assert!(r.reason().unwrap().contains("expected 5 elements"), "{r:?}");

    c.send_text(r#"[null,"42",7,"x",{}]"#).await.unwrap();
    let r = c.wait_reply("42").await.unwrap();
    assert!(r.reason().unwrap().contains("topic"), "{r:?}");

    c.send_binary(&[0, 9, 9]).await.unwrap();
    let m = c.recv().await.unwrap();
    assert!(m
        .payload
        .as_json()
        .unwrap()
        .get()
        .contains("invalid binary message"));
    c.send_binary(&[7, 1, 2, 3]).await.unwrap();
    let m = c.recv().await.unwrap();
    assert!(m.payload.as_json().unwrap().get().contains("kind 7"));

    assert!(c.heartbeat().await.unwrap().is_ok());
    assert!(bystander.heartbeat().await.unwrap().is_ok());
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_others_are_unaffected() {
    let cfg = "profile = \"dev\"\n[limits]\nmax_message_bytes = 4096\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let mut big = s.client("alice").await;
    let mut other = s.client("bob").await;
    big.join("room:a", json!({})).await.unwrap();
    let body = "x".repeat(10_000);
    // The close arrives while the client waits for its reply.
    let code = match big
        .push_json("room:a", "new_msg", &json!({ "body": body }))
        .await
    {
        Err(ClientError::Closed { code, .. }) => code,
        other => panic!("expected a close, got {other:?}"),
    };
    assert_eq!(code, Some(1009));
    assert!(other.heartbeat().await.unwrap().is_ok());
}

#[tokio::test]
async fn too_many_channels_is_refused() {
    let cfg = "profile = \"dev\"\n[limits]\nmax_channels_per_connection = 3\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let mut c = s.client("alice").await;
    for i in 0..3 {
        assert!(c
            .join(&format!("room:{i}"), json!({}))
            .await
            .unwrap()
            .is_ok());
    }
    let r = c.join("room:3", json!({})).await.unwrap();
    assert_eq!(r.reason().as_deref(), Some("too many channels"));
}

#[tokio::test]
async fn silent_socket_is_closed_after_the_idle_timeout() {
    let cfg = "profile = \"dev\"\n[limits]\nidle_timeout_secs = 1\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let mut c = s.client("alice").await;
    let (code, reason) = c.wait_close().await.unwrap();
    assert_eq!(code, Some(4000));
    assert_eq!(reason, "heartbeat timeout");
}

#[tokio::test]
async fn heartbeats_keep_a_socket_alive() {
    let cfg = "profile = \"dev\"\n[limits]\nidle_timeout_secs = 1\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let mut c = s.client("alice").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(c.heartbeat().await.unwrap().is_ok());
    }
}

#[tokio::test]
async fn drain_closes_clients_with_1012_and_exits() {
    let mut s = Server::start().await;
    let mut c = s.client("alice").await;
    c.join("room:a", json!({})).await.unwrap();
    let waiter = tokio::spawn(async move { c.wait_close().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let code = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let (close, reason) = waiter.await.unwrap().unwrap();
    assert_eq!(close, Some(1012));
    assert_eq!(reason, "server restarting");
}

#[tokio::test]
async fn drain_says_draining_first_then_stops_accepting_then_closes_clients() {
    let cfg = "profile = \"dev\"\ndrain_notice_secs = 1\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let mut c = s.client("alice").await;
    c.join("room:a", json!({})).await.unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The notice: health checks see draining, new clients are refused, live ones stay.
    let (st, body) = s.http("GET", "/health", &[], "").await.unwrap();
    assert_eq!(
        (st, json(&body)["status"].as_str()),
        (503, Some("draining"))
    );
    let refused = Client::connect(ConnectOptions::new(s.url()).token(s.token("late"))).await;
    assert!(refused.is_err());
    assert!(c.heartbeat().await.unwrap().is_ok());
    // Then the port closes before the clients are told to go: their reconnects fail fast.
    let (close, _) = c.wait_close().await.unwrap();
    assert_eq!(close, Some(1012));
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await;
    assert!(
        connect.is_err(),
        "the listener was still open when clients were closed"
    );
}

#[tokio::test]
async fn websocket_pings_are_answered_with_pongs_and_a_close_is_echoed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let token = s.token("pinger");
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let req = format!(
        "GET /socket/websocket?vsn=2.0.0&token={token} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    // Masked client frames: ping "hi", then close 1000.
    let mask = [7u8, 1, 2, 3];
    let masked = |op: u8, payload: &[u8]| {
        let mut f = vec![0x80 | op, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    tcp.write_all(&masked(0x9, b"hi")).await.unwrap();
    let mut pong = [0u8; 4];
    tcp.read_exact(&mut pong).await.unwrap();
    assert_eq!(pong, [0x8A, 2, b'h', b'i']);
    tcp.write_all(&masked(0x8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let mut close = [0u8; 4];
    tcp.read_exact(&mut close).await.unwrap();
    assert_eq!(close, [0x88, 2, 0x03, 0xE8]);
}
