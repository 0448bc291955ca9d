//! Phoenix's V1 protocol (`vsn=1.0.0`, or no `vsn` at all) over real sockets: JSON objects
//! `{topic, event, payload, ref}` both ways, on WebSocket and LongPoll, with every feature
//! working as in V2 — and V1 and V2 clients in the same rooms.

mod common;

use common::{json, Server};
use plexus_client::protocol::Vsn;
use plexus_client::{Client, ConnectOptions};
use serde_json::{json, Value};
use std::time::Duration;

async fn v1_client(s: &Server, sub: &str) -> Client {
    Client::connect(
        ConnectOptions::new(s.url())
            .token(s.token(sub))
            .vsn(Vsn::V1),
    )
    .await
    .unwrap()
}

fn body(m: &plexus_client::protocol::Message) -> Value {
    serde_json::from_str(m.payload.as_json().unwrap().get()).unwrap()
}

#[tokio::test]
async fn v1_and_v2_clients_share_rooms_and_presence() {
    let s = Server::start().await;
    let mut old = v1_client(&s, "old").await;
    let mut new = s.client("new").await;
    assert!(old.heartbeat().await.unwrap().is_ok());
    let reply = old.join("room:mix", json!({})).await.unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let state = old.recv_event("room:mix", "presence_state").await.unwrap();
    assert!(body(&state).get("old").is_some(), "{state:?}");
    assert!(new.join("room:mix", json!({})).await.unwrap().is_ok());
    // Our own join's diff first, then the V2 client's.
    loop {
        let diff = old.recv_event("room:mix", "presence_diff").await.unwrap();
        if body(&diff)["joins"].get("new").is_some() {
            break;
        }
    }

    // V1 → V2 and V2 → V1, each with its reply.
    let r = old
        .push_json("room:mix", "msg", &json!({"from": "old"}))
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    let m = new.recv_event("room:mix", "msg").await.unwrap();
    assert_eq!(body(&m)["from"], "old");
    new.push_json("room:mix", "msg", &json!({"from": "new"}))
        .await
        .unwrap();
    let m = old.recv_event("room:mix", "msg").await.unwrap();
    assert_eq!((body(&m)["from"].as_str(), m.msg_ref), (Some("new"), None));

    // A refused join answers in V1 too.
    let r = old.join("admin:x", json!({})).await.unwrap();
    assert!(!r.is_ok());
    // Leave: ok, then phx_close.
    assert!(old.leave("room:mix").await.unwrap().is_ok());
    old.recv_event("room:mix", "phx_close").await.unwrap();
}

#[tokio::test]
async fn v1_frames_are_phoenix_s_objects_and_bad_binary_frames_get_an_error_reply() {
    let s = Server::start().await;
    let mut raw = v1_client(&s, "raw").await;
    // Raw V1 text in, raw V1 text out: read through a second V1 client's decoder, and the
    // error reply to a binary frame that carries no V1 object keeps the connection open
    // (binary frames that carry one: tests/client_review.rs).
    raw.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#)
        .await
        .unwrap();
    let m = raw.recv().await.unwrap();
    assert_eq!(
        (m.topic.as_str(), m.event.as_str(), m.msg_ref.as_deref()),
        ("phoenix", "phx_reply", Some("7"))
    );
    assert_eq!(body(&m), json!({"status": "ok", "response": {}}));
    raw.send_binary(&[0, 1, 1, 1, 1, b'x', b'y', b'z', b'e'])
        .await
        .unwrap();
    let m = raw.recv().await.unwrap();
    assert_eq!(body(&m)["status"], "error");
    assert!(body(&m)["response"]["reason"]
        .as_str()
        .unwrap()
        .contains("invalid message"));
    // A V2 array on a V1 socket is an error reply, not a crash.
    raw.send_text(r#"[null,"9","phoenix","heartbeat",{}]"#)
        .await
        .unwrap();
    let m = raw.recv().await.unwrap();
    assert_eq!(body(&m)["status"], "error");
    assert!(raw.heartbeat().await.unwrap().is_ok());
}

#[tokio::test]
async fn v1_recovery_and_api_broadcasts_carry_offsets_when_asked() {
    let s = Server::start().await;
    let mut c = v1_client(&s, "v1").await;
    let reply = c
        .join("room:v1hist", json!({"recover": null}))
        .await
        .unwrap();
    let epoch = reply.json()["epoch"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        s.broadcast("room:v1hist", "msg", json!({ "n": n })).await;
    }
    let m = c.recv_event("room:v1hist", "msg").await.unwrap();
    assert_eq!(m.msg_ref.as_deref(), Some("1"));
    c.close().await;
    let mut back = v1_client(&s, "v1").await;
    let reply = back
        .join(
            "room:v1hist",
            json!({"recover": {"epoch": epoch, "offset": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["recovered"], true, "{:?}", reply.json());
    for n in 2..=3 {
        let m = back.recv_event("room:v1hist", "msg").await.unwrap();
        assert_eq!(
            (m.msg_ref.as_deref(), body(&m)["n"].as_u64()),
            (Some(n.to_string().as_str()), Some(n))
        );
    }
}

#[tokio::test]
async fn longpoll_without_vsn_speaks_v1() {
    let cfg = "profile = \"dev\"\n[limits]\nlongpoll_window_secs = 1\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let token = s.token("lp1");
    let (st, body) = s
        .http("GET", &format!("/socket/longpoll?token={token}"), &[], "")
        .await
        .unwrap();
    assert_eq!(st, 200, "{body}");
    let session = json(&body)["token"].as_str().unwrap().to_owned();
    let q = format!("/socket/longpoll?token={session}");
    let lines = "{\"topic\":\"room:lp1\",\"event\":\"phx_join\",\"payload\":{},\"ref\":\"1\",\"join_ref\":\"1\"}\n{\"topic\":\"phoenix\",\"event\":\"heartbeat\",\"payload\":{},\"ref\":\"2\"}";
    let (_, body) = s.http("POST", &q, &[], lines).await.unwrap();
    assert_eq!(json(&body)["status"], 200);
    let mut seen: Vec<Value> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    for _ in 0..3 {
        let (_, body) = s.http("GET", &q, &[], "").await.unwrap();
        if let Some(msgs) = json(&body)["messages"].as_array() {
            texts.extend(msgs.iter().map(|m| m.as_str().unwrap().to_owned()));
            seen.extend(msgs.iter().map(|m| json(m.as_str().unwrap())));
        }
        if seen.len() >= 2 {
            break;
        }
    }
    let join = seen
        .iter()
        .find(|m| m["ref"] == "1")
        .unwrap_or_else(|| panic!("{seen:?}"));
    // Phoenix's V1 reply object (the dev profile's room:* reply says where history stands).
    assert!(
        texts.iter().any(|t| t
            .starts_with(r#"{"event":"phx_reply","payload":{"response":{"epoch":"#)
            && t.ends_with(r#","status":"ok"},"ref":"1","topic":"room:lp1"}"#)),
        "{texts:?}"
    );
    assert_eq!(
        (&join["event"], &join["topic"], &join["payload"]["status"]),
        (&json!("phx_reply"), &json!("room:lp1"), &json!("ok"))
    );
    assert!(seen
        .iter()
        .any(|m| m["ref"] == "2" && m["topic"] == "phoenix"));
    // An unsupported vsn is refused with a JSON 400 and logged.
    let (st, body) = s
        .http(
            "GET",
            &format!("/socket/longpoll?vsn=9&token={token}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(st, 400);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("unsupported vsn"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.log().contains("unsupported vsn"));
}
