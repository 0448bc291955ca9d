//! Clients the second review found badly served (issue 19), over real sockets against the real
//! server: V1 messages sent as binary WebSocket frames (Python's `phx-events`), whose replies
//! are text frames as Phoenix's; Supabase presence metas stamped with the tracker's verified
//! `sub`; and Supabase's everyday auth flow (the anon key, then `setAuth` with the user's JWT),
//! where an anonymous connection is upgraded once and two users never swap.

mod common;

use common::{Server, SECRET};
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
    for bad in [&[0xff, 0xfe, b'{'][..], b"not json", br#"[null,"9","phoenix","heartbeat",{}]"#] {
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

/// An HS256 JWT with exactly these claims, signed with the test secret.
fn jwt(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

fn exp() -> u64 {
    plexus_core::auth::unix_now() + 3600
}
