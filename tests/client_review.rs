//! Clients the second review found badly served (issue 19), over real sockets against the real
//! server: V1 messages sent as binary WebSocket frames (Python's `phx-events`), whose replies
//! are text frames as Phoenix's; Supabase presence metas stamped with the tracker's verified
//! `sub`; and Supabase's everyday auth flow (the anon key, then `setAuth` with the user's JWT),
//! where an anonymous connection is upgraded once and two users never swap.

mod common;

use common::tokens::{anon_key, connect, supabase_user_jwt};
use common::Server;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;

/// A WebSocket written by hand, to see the opcode of each frame the server sends.
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Opens `/socket/websocket?<query>` and completes the handshake.
    async fn connect(s: &Server, query: &str) -> RawWs {
        let mut tcp = TcpStream::connect(("127.0.0.1", s.port))
            .await
            .expect("connect");
        let mut req = format!(
            "GET /socket/websocket?{query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            s.port
        );
        for (k, v) in common::ws_headers() {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.expect("handshake");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
                .await
                .expect("handshake answer in time")
                .expect("read");
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawWs {
            tcp,
            buf: buf[end..].to_vec(),
        }
    }

    /// Sends one masked frame.
    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&f).await.expect("send");
    }

    /// The next frame from the server: (opcode, payload).
    async fn recv(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return (op, payload);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut chunk))
                .await
                .expect("a frame from the server in time")
                .expect("read");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame, which must be a text frame holding a V1 object.
    async fn recv_v1(&mut self) -> Value {
        let (op, payload) = self.recv().await;
        let text = String::from_utf8_lossy(&payload).to_string();
        assert_eq!(op, OP_TEXT, "V1 is answered in text frames: {text}");
        common::json(&text)
    }
}

#[tokio::test]
async fn v1_messages_in_binary_frames_are_decoded_and_answered_in_text() {
    let s = Server::start().await;
    let token = s.token("binv1");
    // No vsn: V1, as phx-events connects.
    let mut ws = RawWs::connect(&s, &format!("token={token}")).await;

    ws.send(
        OP_BINARY,
        br#"{"topic":"room:bin","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
    )
    .await;
    let reply = ws.recv_v1().await;
    assert_eq!(
        (
            &reply["event"],
            &reply["topic"],
            &reply["ref"],
            &reply["payload"]["status"]
        ),
        (
            &json!("phx_reply"),
            &json!("room:bin"),
            &json!("1"),
            &json!("ok")
        ),
        "{reply}"
    );

    // A heartbeat in a binary frame (answered inline), then a push.
    ws.send(
        OP_BINARY,
        br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2"}"#,
    )
    .await;
    ws.send(
        OP_BINARY,
        br#"{"topic":"room:bin","event":"msg","payload":{"n":1},"ref":"3","join_ref":"1"}"#,
    )
    .await;
    let mut seen = Vec::new();
    while !(seen.iter().any(|m: &Value| m["ref"] == "2") && seen.iter().any(|m| m["ref"] == "3")) {
        seen.push(ws.recv_v1().await);
    }
    for r in ["2", "3"] {
        let m = seen.iter().find(|m| m["ref"] == r).expect("reply");
        assert_eq!(
            (&m["event"], &m["payload"]["status"]),
            (&json!("phx_reply"), &json!("ok")),
            "{m}"
        );
    }
    // Invalid UTF-8 and non-JSON binary frames: the bad text frame's error, connection open.
    for bad in [
        &[0xff, 0xfe, b'{'][..],
        b"not json",
        br#"[null,"9","phoenix","heartbeat",{}]"#,
    ] {
        ws.send(OP_BINARY, bad).await;
        let m = loop {
            let m = ws.recv_v1().await;
            if m["event"] == "phx_reply" && m["payload"]["status"] == "error" {
                break m;
            }
        };
        let reason = m["payload"]["response"]["reason"].as_str().unwrap_or("");
        assert!(reason.starts_with("invalid message"), "{m}");
    }
    ws.send(
        OP_BINARY,
        br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"10"}"#,
    )
    .await;
    loop {
        let m = ws.recv_v1().await;
        if m["ref"] == "10" {
            assert_eq!(m["payload"]["status"], "ok", "{m}");
            break;
        }
    }
}

/// Supabase channels with Supabase's roles claim (`role`) and rules by role.
const SUPABASE: &str = r#"
profile = "dev"
[auth]
roles_claim = "role"
[supabase]
enabled = true
[[channels]]
topic = "visitors*"
join_roles = ["anon"]
presence = true
[[channels]]
topic = "members*"
join_roles = ["authenticated"]
presence = true
[[channels]]
topic = "*"
presence = true
"#;

/// `setAuth` as realtime-js sends it on a joined channel: `access_token`, no reply on success.
async fn set_auth(c: &mut plexus_client::Client, topic: &str, token: &str) {
    let join_ref = c.join_ref(topic).expect("joined").to_owned();
    let frame = json!([join_ref, null, topic, "access_token", {"access_token": token}]);
    c.send_text(&frame.to_string()).await.expect("send");
}

/// `track(meta)` as realtime-js sends it.
async fn track(c: &mut plexus_client::Client, topic: &str, meta: Value) {
    let r = c
        .push_json(
            topic,
            "presence",
            &json!({"type": "presence", "event": "track", "payload": meta}),
        )
        .await
        .expect("track");
    assert!(r.is_ok(), "{:?}", r.json());
}

fn body(m: &plexus_client::protocol::Message) -> Value {
    serde_json::from_str(m.payload.as_json().expect("JSON").get()).expect("JSON payload")
}

/// The metas a `presence_diff` joins under `key`.
async fn joined_metas(c: &mut plexus_client::Client, topic: &str, key: &str) -> Vec<Value> {
    loop {
        let diff = c.recv_event(topic, "presence_diff").await.expect("diff");
        if let Some(metas) = body(&diff)["joins"][key]["metas"].as_array() {
            return metas.clone();
        }
    }
}

#[tokio::test]
async fn supabase_presence_metas_carry_the_trackers_verified_sub() {
    let s = Server::start_with(Some(SUPABASE), &[]).await;
    let mut alice = connect(&s, &supabase_user_jwt("alice-id")).await;
    let mut bob = connect(&s, &supabase_user_jwt("bob-id")).await;
    let topic = "realtime:lobby";
    let keyed = json!({"config": {"presence": {"key": "alice"}}});
    assert!(alice.join(topic, keyed).await.expect("join").is_ok());
    assert!(bob.join(topic, json!({})).await.expect("join").is_ok());
    // A client-chosen key and meta that claim to be someone else.
    track(
        &mut alice,
        topic,
        json!({"name": "Admin", "role": "admin", "sub": "admin-id"}),
    )
    .await;
    let metas = joined_metas(&mut bob, topic, "alice").await;
    assert_eq!(metas[0]["sub"], "alice-id", "{metas:?}");
    assert_eq!(
        metas[0]["name"], "Admin",
        "the rest is the client's: {metas:?}"
    );
    // The presence_state a later joiner gets says the same.
    let mut carol = connect(&s, &supabase_user_jwt("carol-id")).await;
    assert!(carol.join(topic, json!({})).await.expect("join").is_ok());
    let state = carol
        .recv_event(topic, "presence_state")
        .await
        .expect("state");
    assert_eq!(body(&state)["alice"]["metas"][0]["sub"], "alice-id");
}

#[tokio::test]
async fn supabase_anon_key_then_set_auth_signs_in_once_and_rechecks_channels() {
    let s = Server::start_with(Some(SUPABASE), &[]).await;
    // supabase-js connects with the anon key.
    let mut c = connect(&s, &anon_key()).await;
    let (visitors, room, members) = (
        "realtime:visitors:hall",
        "realtime:room",
        "realtime:members:hall",
    );
    assert!(c.join(visitors, json!({})).await.expect("join").is_ok());
    let keyed = json!({"config": {"presence": {"key": "ivy"}}});
    assert!(c.join(room, keyed).await.expect("join").is_ok());
    let r = c.join(members, json!({})).await.expect("join");
    assert_eq!(
        r.reason().as_deref(),
        Some("unauthorized"),
        "{:?}",
        r.json()
    );
    // A Phoenix channel under the same anon-only rule.
    assert!(c
        .join("visitors:hall", json!({}))
        .await
        .expect("join")
        .is_ok());
    let mut watcher = connect(&s, &supabase_user_jwt("watcher-id")).await;
    assert!(watcher.join(room, json!({})).await.expect("join").is_ok());
    // Tracked while anonymous: no user to vouch for.
    track(&mut c, room, json!({"sub": "ivy-id"})).await;
    assert_eq!(
        joined_metas(&mut watcher, room, "ivy").await[0]["sub"],
        Value::Null
    );

    // The user signs in: setAuth(<user JWT>) on every joined channel, as realtime-js does.
    set_auth(&mut c, room, &supabase_user_jwt("ivy-id")).await;
    set_auth(&mut c, visitors, &supabase_user_jwt("ivy-id")).await;
    // The anon-only channels are authorised again and left: the Supabase channel with
    // Supabase's notice, then phx_close; the Phoenix one with phx_close and the reason.
    let (mut notice, mut closed, mut phoenix_close) = (None, false, None);
    while notice.is_none() || !closed || phoenix_close.is_none() {
        let m = c.recv().await.expect("message");
        match (m.topic.as_str(), m.event.as_str()) {
            (t, "system") if t == visitors => notice = Some(body(&m)),
            (t, "phx_close") if t == visitors => closed = true,
            ("visitors:hall", "phx_close") => phoenix_close = Some(body(&m)),
            _ => {}
        }
    }
    let notice = notice.unwrap_or_default();
    assert_eq!(notice["status"], "error");
    let message = notice["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("unauthorized"), "{message}");
    let why = phoenix_close.unwrap_or_default()["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(why.contains("may no longer join"), "{why}");
    // The others stay joined; the user may now join members-only channels.
    assert!(c.join(members, json!({})).await.expect("join").is_ok());
    track(&mut c, room, json!({"sub": "forged"})).await;
    assert_eq!(
        joined_metas(&mut watcher, room, "ivy").await[0]["sub"],
        "ivy-id"
    );
    // The API's disconnect of the user reaches the connection that signed in.
    let auth = format!("Bearer {}", common::API_KEY);
    let (st, resp) = s
        .http(
            "POST",
            "/api/disconnect",
            &[("Authorization", &auth)],
            r#"{"sub":"ivy-id"}"#,
        )
        .await
        .expect("API");
    assert_eq!(
        (st, common::json(&resp)["disconnected"].as_u64()),
        (200, Some(1)),
        "{resp}"
    );
    c.wait_close().await.expect("closed by the API");
}

#[tokio::test]
async fn two_users_never_swap_on_one_connection() {
    let s = Server::start_with(Some(SUPABASE), &[]).await;
    let mut c = connect(&s, &anon_key()).await;
    let room = "realtime:swap";
    assert!(c.join(room, json!({})).await.expect("join").is_ok());
    // A fresh anon key keeps the connection anonymous (silently).
    set_auth(&mut c, room, &anon_key()).await;
    let r = c
        .request(
            None,
            "phoenix",
            "refresh_token",
            plexus_client::protocol::Payload::json(
                &json!({"token": supabase_user_jwt("first-id")}),
            )
            .expect("payload"),
        )
        .await
        .expect("reply");
    assert!(r.is_ok(), "the one upgrade: {:?}", r.json());
    // Then neither another user nor the anon key again.
    for (token, reason) in [
        (supabase_user_jwt("second-id"), "same sub"),
        (anon_key(), "anonymous"),
    ] {
        let r = c
            .request(
                None,
                "phoenix",
                "refresh_token",
                plexus_client::protocol::Payload::json(&json!({ "token": token }))
                    .expect("payload"),
            )
            .await
            .expect("reply");
        let why = r.reason().unwrap_or_default();
        assert!(!r.is_ok() && why.contains(reason), "{:?}", r.json());
    }
    // On a Supabase channel, another user's setAuth closes it with the reason.
    set_auth(&mut c, room, &supabase_user_jwt("second-id")).await;
    let notice = c.recv_event(room, "system").await.expect("notice");
    let message = body(&notice)["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("same sub"), "{message}");
    c.recv_event(room, "phx_close").await.expect("closed");
    // The connection itself stays open, still the first user's.
    assert!(c.heartbeat().await.expect("heartbeat").is_ok());
}

#[tokio::test]
async fn anon_tokens_need_supabase_and_the_anon_role() {
    // Without Supabase channels a token without sub is refused, as before.
    let s = Server::start().await;
    let (st, body) = s
        .http(
            "GET",
            &format!("/socket/websocket?token={}", anon_key()),
            &common::ws_headers(),
            "",
        )
        .await
        .expect("answer");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("sub"), "{body}");
    // With them, `anon_role = "off"` refuses anonymous tokens too.
    let s = Server::start_with(Some(SUPABASE), &[("PLEXUS_SUPABASE_ANON_ROLE", "off")]).await;
    let (st, body) = s
        .http(
            "GET",
            &format!("/socket/websocket?token={}", anon_key()),
            &common::ws_headers(),
            "",
        )
        .await
        .expect("answer");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("sub"), "{body}");
}

#[tokio::test]
async fn a_sign_in_counts_in_the_users_connection_cap() {
    let capped = SUPABASE.replace("[auth]", "[limits]\nmax_connections_per_user = 1\n[auth]");
    let s = Server::start_with(Some(&capped), &[]).await;
    let mut first = connect(&s, &supabase_user_jwt("capped-id")).await;
    assert!(first.heartbeat().await.expect("heartbeat").is_ok());
    // Anonymous connections are not the user's: this one is admitted.
    let mut c = connect(&s, &anon_key()).await;
    let room = "realtime:capped";
    assert!(c.join(room, json!({})).await.expect("join").is_ok());
    set_auth(&mut c, room, &supabase_user_jwt("capped-id")).await;
    let notice = c.recv_event(room, "system").await.expect("notice");
    let message = body(&notice)["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("too many connections"), "{message}");
    // Still anonymous, still connected; another user may sign in on it.
    let r = c
        .request(
            None,
            "phoenix",
            "refresh_token",
            plexus_client::protocol::Payload::json(
                &json!({"token": supabase_user_jwt("other-id")}),
            )
            .expect("payload"),
        )
        .await
        .expect("reply");
    assert!(r.is_ok(), "{:?}", r.json());
}
