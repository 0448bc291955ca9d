//! Supabase channels at the frame level (the client suites in tests/js and tests/py run
//! Supabase's own clients): the join reply, ack or silence, the envelope of API broadcasts, a
//! forged `system` refused, `apikey` and `/realtime/v1/websocket`, and `setAuth` failures
//! closing the channel with Supabase's notice.

mod common;

use common::{json, Server, API_KEY};
use plexus_client::protocol::{Frame, Payload};
use plexus_client::{Client, ConnectOptions};
use serde_json::{json, Value};
use std::time::Duration;

const CONFIG: &str =
    "profile = \"dev\"\n[supabase]\nenabled = true\n[[channels]]\ntopic = \"*\"\npresence = true\n";

fn body(m: &plexus_client::protocol::Message) -> Value {
    serde_json::from_str(m.payload.as_json().unwrap().get()).unwrap()
}

/// A client as realtime-js connects: `/realtime/v1/websocket?apikey=…&vsn=2.0.0`.
async fn supabase_client(s: &Server, sub: &str) -> Client {
    let url = format!("ws://127.0.0.1:{}/realtime/v1", s.port);
    Client::connect(ConnectOptions::new(url).param("apikey", s.token(sub)))
        .await
        .unwrap()
}

#[tokio::test]
async fn broadcasts_follow_self_and_ack_and_the_api_wraps_its_events() {
    let s = Server::start_with(Some(CONFIG), &[]).await;
    let mut a = supabase_client(&s, "a").await;
    let mut b = supabase_client(&s, "b").await;
    let config = |self_, ack| json!({"config": {"broadcast": {"self": self_, "ack": ack}, "presence": {"key": ""}, "postgres_changes": [], "private": false}});
    let reply = a.join("realtime:r1", config(false, false)).await.unwrap();
    assert_eq!(reply.json(), json!({"postgres_changes": []}));
    b.join("realtime:r1", config(true, true)).await.unwrap();

    // Without ack: no reply at all (realtime-js resolved `ok` already); not echoed.
    let envelope = json!({"type": "broadcast", "event": "msg", "payload": {"n": 1}});
    a.send_text(&format!(
        r#"["1","50","realtime:r1","broadcast",{envelope}]"#
    ))
    .await
    .unwrap();
    let m = b.recv_event("realtime:r1", "broadcast").await.unwrap();
    assert_eq!(body(&m), envelope);
    assert!(a
        .recv_event_timeout("realtime:r1", "phx_reply", Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    // With ack and self: a reply, and the sender hears itself.
    let r = b
        .push_json(
            "realtime:r1",
            "broadcast",
            &json!({"type": "broadcast", "event": "msg", "payload": {"n": 2}}),
        )
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    let m = b.recv_event("realtime:r1", "broadcast").await.unwrap();
    assert_eq!(body(&m)["payload"]["n"], 2);

    // The HTTP API's event arrives in the envelope.
    let auth = format!("Bearer {API_KEY}");
    let (st, _) = s
        .http(
            "POST",
            "/api/broadcast",
            &[("Authorization", &auth)],
            &json!({"topic": "realtime:r1", "event": "news", "payload": {"k": "v"}}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(st, 200);
    let m = a.recv_event("realtime:r1", "broadcast").await.unwrap();
    assert_eq!(body(&m)["payload"]["n"], 2, "b's broadcast first");
    let m = a.recv_event("realtime:r1", "broadcast").await.unwrap();
    assert_eq!(
        body(&m),
        json!({"type": "broadcast", "event": "news", "payload": {"k": "v"}})
    );
}

#[tokio::test]
async fn server_events_cannot_be_forged_and_binary_payloads_are_refused() {
    let s = Server::start_with(Some(CONFIG), &[]).await;
    let mut a = supabase_client(&s, "a").await;
    let mut b = supabase_client(&s, "b").await;
    a.join("realtime:r2", json!({})).await.unwrap();
    b.join("realtime:r2", json!({})).await.unwrap();
    let forged =
        json!({"extension": "system", "status": "error", "message": "bye", "channel": "r2"});
    let r = a.push_json("realtime:r2", "system", &forged).await.unwrap();
    assert!(!r.is_ok());
    assert!(r.reason().unwrap().contains("only broadcast"), "{r:?}");
    assert!(b
        .recv_event_timeout("realtime:r2", "system", Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    // A presence key is stored and sent in every diff: bounded.
    let long = "k".repeat(257);
    let r = a
        .join(
            "realtime:r2b",
            json!({"config": {"presence": {"key": long}}}),
        )
        .await
        .unwrap();
    assert!(r.reason().unwrap().contains("too long"), "{r:?}");
    // realtime-js's kind 3 with an ArrayBuffer payload (encoding 0).
    let mut frame = vec![3, 1, 2, 11, 1, 0, 0];
    frame.extend_from_slice(b"199realtime:r2x\x00\xff");
    a.send_frame(Frame::Binary(frame.into())).await.unwrap();
    let reply = a.wait_reply("99").await.unwrap();
    assert!(
        reply.reason().unwrap().contains("not supported"),
        "{reply:?}"
    );
    // Plain binary pushes are not broadcasts either.
    let r = a
        .push(
            "realtime:r2",
            "file",
            Payload::Binary(bytes::Bytes::from_static(b"\x01")),
        )
        .await
        .unwrap();
    assert!(!r.is_ok());
}

#[tokio::test]
async fn a_foreign_access_token_closes_the_channel_with_supabase_s_notice() {
    let s = Server::start_with(Some(CONFIG), &[]).await;
    let mut c = supabase_client(&s, "erin").await;
    c.join("realtime:r3", json!({})).await.unwrap();
    let join_ref = c.join_ref("realtime:r3").unwrap().to_owned();
    // The same user's newer token: silent.
    let t = s.token("erin");
    c.send_text(&format!(
        r#"["{join_ref}","76","realtime:r3","access_token",{{"access_token":"{t}"}}]"#
    ))
    .await
    .unwrap();
    assert!(c
        .recv_event_timeout("realtime:r3", "phx_reply", Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    let t = s.token("mallory");
    c.send_text(&format!(
        r#"["{join_ref}","77","realtime:r3","access_token",{{"access_token":"{t}"}}]"#
    ))
    .await
    .unwrap();
    let notice = c.recv_event("realtime:r3", "system").await.unwrap();
    assert_eq!(notice.join_ref.as_deref(), Some(join_ref.as_str()));
    let n = body(&notice);
    assert_eq!(
        (&n["extension"], &n["status"], &n["channel"]),
        (&json!("system"), &json!("error"), &json!("r3"))
    );
    let close = c.recv_event("realtime:r3", "phx_close").await.unwrap();
    assert_eq!(close.msg_ref.as_deref(), Some(join_ref.as_str()));
    // The channel is gone: pushes are unmatched.
    let r = c
        .push_json(
            "realtime:r3",
            "broadcast",
            &json!({"type": "broadcast", "event": "x", "payload": {}}),
        )
        .await
        .unwrap();
    assert_eq!(r.reason().as_deref(), Some("unmatched topic"));
}

#[tokio::test]
async fn without_supabase_the_path_and_apikey_are_not_served() {
    let s = Server::start().await;
    let (st, body) = s
        .http("GET", "/realtime/v1/websocket", &[], "")
        .await
        .unwrap();
    assert_eq!(st, 404, "{body}");
    let url = format!("ws://127.0.0.1:{}/socket", s.port);
    let refused = Client::connect(ConnectOptions::new(url).param("apikey", s.token("x"))).await;
    assert!(refused.is_err(), "apikey is a token only with Supabase on");
    assert!(json(&body)["error"].is_string());
}
