//! The write-through fan-out (a broadcast written to the socket by the publisher while the
//! connection's queue is empty) keeps every connection's bytes in order: under broadcasts,
//! replies and pushes mixed on the same connections, and when the socket takes only part of a
//! frame (a client with a tiny receive buffer that stops reading). Real server process, raw
//! WebSocket clients over real sockets (so that the receive buffer and the reading can be
//! controlled), every frame parsed and checked.

mod common;

use common::{json, Server, API_KEY};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;

const SECRET: &str = "write-through-suite-secret-0123456789";

fn config(extra_limits: &str) -> String {
    format!(
        r#"
profile = "prod"
jwt_secret = "{SECRET}"

[websocket]
write_through = true

[limits]
max_connections_per_ip = 0
max_connections_per_user = 0
connect_rate_per_ip = 0
messages_per_second = 100000
message_burst = 100000
{extra_limits}

[[channels]]
topic = "room:*"
presence = true
echo = true
"#
    )
}

fn token(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": plexus_core::auth::unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn start(extra_limits: &str) -> Server {
    Server::start_with(Some(&config(extra_limits)), &[("PLEXUS_JWT_SECRET", "")]).await
}

/// The read side of a raw WebSocket client: server frames (unmasked), parsed by hand.
struct Reader {
    tcp: OwnedReadHalf,
    buf: Vec<u8>,
}

impl Reader {
    /// The next data frame's payload (text or binary); `None` when the server closed.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((op, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                assert_eq!(
                    op & 0x80,
                    0x80,
                    "fragmented frames are not sent by the server"
                );
                return match op & 0x0F {
                    0x8 => None,
                    0x9 | 0xA => continue,
                    code => Some((code, payload)),
                };
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next message as JSON (a Phoenix V2 array).
    async fn next_json(&mut self) -> Option<serde_json::Value> {
        let (op, payload) = self.next().await?;
        assert_eq!(op, 0x1, "a text frame");
        let text = String::from_utf8(payload).expect("UTF-8");
        Some(json(&text))
    }
}

/// (first byte, payload, bytes used) of a complete unmasked frame at the start of `buf`.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    Some((buf[0], buf[at..at + len].to_vec(), at + len))
}

/// The write side: masked text frames.
struct Writer {
    tcp: OwnedWriteHalf,
}

impl Writer {
    async fn send(&mut self, msg: serde_json::Value) {
        let payload = msg.to_string().into_bytes();
        let mask = [0x1Bu8, 0x2C, 0x3D, 0x4E];
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp
            .write_all(&frame)
            .await
            .expect("write to the server");
    }
}

/// A raw WebSocket connection (Phoenix V2) for `sub`; `recv_buffer`: the socket's receive
/// buffer size (the kernel may round it up).
async fn connect_raw(s: &Server, sub: &str, recv_buffer: Option<u32>) -> (Reader, Writer) {
    let sock = TcpSocket::new_v4().unwrap();
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n).unwrap();
    }
    let addr = format!("127.0.0.1:{}", s.port).parse().unwrap();
    let mut tcp = sock.connect(addr).await.unwrap();
    let req = format!(
        "GET /socket/websocket?vsn=2.0.0&token={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token(sub)
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed during the handshake: {}", s.log());
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (r, w) = tcp.into_split();
    (
        Reader {
            tcp: r,
            buf: buf[head_end..].to_vec(),
        },
        Writer { tcp: w },
    )
}

/// Joins `topic` and waits for the join's reply (skipping the pushes before it).
async fn join(r: &mut Reader, w: &mut Writer, topic: &str) {
    w.send(json!(["1", "1", topic, "phx_join", {}])).await;
    loop {
        let m = r.next_json().await.expect("the join's reply");
        if m[3] == "phx_reply" && m[1] == "1" {
            assert_eq!(m[4]["status"], "ok", "{m}");
            return;
        }
    }
}

/// `plexus_write_through_frames_total{outcome="…"}` from `/metrics`.
async fn written_through(s: &Server, outcome: &str) -> u64 {
    let (_, m) = s.http("GET", "/metrics", &[], "").await.unwrap();
    let prefix = format!("plexus_write_through_frames_total{{outcome=\"{outcome}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {m}"))
}

async fn publish(s: &Server, topic: &str, payload: serde_json::Value) {
    let auth = format!("Bearer {API_KEY}");
    let body = json!({"topic": topic, "event": "api", "payload": payload}).to_string();
    let (status, resp) = s
        .http("POST", "/api/broadcast", &[("Authorization", &auth)], &body)
        .await
        .unwrap();
    assert_eq!(status, 200, "{resp}");
}

/// Broadcasts from the API (some large), each client's own pushes broadcast to everyone
/// (echo on), their replies, heartbeats and presence pushes, all on the same connections at
/// once: every connection receives each sender's messages exactly once and in order, and its
/// replies in the order of its requests.
#[tokio::test]
async fn order_holds_per_connection_under_broadcasts_replies_and_pushes() {
    const CLIENTS: usize = 6;
    const PUSHES: u64 = 300;
    const API: u64 = 600;
    let s = start("").await;
    let topic = "room:order";
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for i in 0..CLIENTS {
        // Client 0 has a small receive buffer and pauses now and then: its socket fills, so
        // broadcasts queue behind one another and behind its replies while others are
        // written through (a write-through that jumped the queue would show up here).
        let buffer = (i == 0).then_some(4 * 1024);
        let (mut r, mut w) = connect_raw(&s, &format!("user{i}"), buffer).await;
        join(&mut r, &mut w, topic).await;
        readers.push(r);
        writers.push(w);
    }
    let senders: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(i, mut w)| {
            tokio::spawn(async move {
                for n in 0..PUSHES {
                    // Refs 100.. for pushes, heartbeats in between (replies of their own).
                    let r = (100 + 2 * n).to_string();
                    w.send(json!(["1", r, topic, "c", {"from": i, "n": n}]))
                        .await;
                    if n % 10 == 0 {
                        let r = (101 + 2 * n).to_string();
                        w.send(json!([null, r, "phoenix", "heartbeat", {}])).await;
                    }
                    if n % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                w
            })
        })
        .collect();
    let checks: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(me, mut r)| {
            tokio::spawn(async move {
                let mut next_api = 0u64;
                let mut next_from: HashMap<u64, u64> = HashMap::new();
                let mut last_ref = 1u64;
                let mut replies = 0u64;
                let mut read = 0u64;
                let want_replies = PUSHES + PUSHES / 10;
                let done = |api: u64, from: &HashMap<u64, u64>, replies: u64| {
                    api == API
                        && replies == want_replies
                        && (0..CLIENTS as u64).all(|j| from.get(&j) == Some(&PUSHES))
                };
                while !done(next_api, &next_from, replies) {
                    let m = tokio::time::timeout(Duration::from_secs(30), r.next_json())
                        .await
                        .unwrap_or_else(|_| {
                            panic!("client {me}: stalled at api {next_api}, {next_from:?}, {replies} replies")
                        })
                        .unwrap_or_else(|| panic!("client {me}: closed"));
                    read += 1;
                    if me == 0 && read.is_multiple_of(16) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    match m[3].as_str().unwrap() {
                        "api" => {
                            assert_eq!(m[4]["n"], next_api, "client {me}: API broadcasts out of order");
                            if let Some(pad) = m[4]["pad"].as_str() {
                                assert_eq!(pad.len(), 100_000);
                            }
                            next_api += 1;
                        }
                        "c" => {
                            let from = m[4]["from"].as_u64().unwrap();
                            let n = m[4]["n"].as_u64().unwrap();
                            let next = next_from.entry(from).or_default();
                            assert_eq!(n, *next, "client {me}: pushes of {from} out of order");
                            *next += 1;
                        }
                        "phx_reply" => {
                            let r: u64 = m[1].as_str().unwrap().parse().unwrap();
                            assert!(r > last_ref, "client {me}: reply {r} after {last_ref}");
                            assert_eq!(m[4]["status"], "ok", "{m}");
                            last_ref = r;
                            replies += 1;
                        }
                        "presence_diff" | "presence_state" => {}
                        other => panic!("client {me}: unexpected {other}: {m}"),
                    }
                }
                r
            })
        })
        .collect();
    for n in 0..API {
        let payload = if n % 6 == 1 {
            json!({"n": n, "pad": "p".repeat(100_000)})
        } else {
            json!({"n": n})
        };
        publish(&s, topic, payload).await;
    }
    for w in senders {
        w.await.unwrap();
    }
    for c in checks {
        c.await.unwrap();
    }
    assert!(
        written_through(&s, "whole").await > 0,
        "no broadcast was written through"
    );
}

/// A client with a tiny receive buffer that stops reading: the fan-out writes part of a large
/// frame (the socket's buffers are full), the task writes the rest when the client reads
/// again, and the client gets every byte of every broadcast, in order; a reading client on the
/// same topic is not held up.
#[tokio::test]
async fn a_partly_written_frame_is_finished_first_and_nothing_is_lost() {
    const N: u64 = 40;
    const PAD: usize = 150_000;
    let s = start("outbox_max_bytes = 33554432\nwrite_timeout_secs = 60").await;
    let topic = "room:big";
    let (mut stalled, mut sw) = connect_raw(&s, "stalled", Some(4096)).await;
    join(&mut stalled, &mut sw, topic).await;
    let (mut reader, mut rw) = connect_raw(&s, "reader", None).await;
    join(&mut reader, &mut rw, topic).await;
    // The stalled client's presence diff of the reader's join, still unread: fine, it is
    // part of the stream checked below.
    let reading = tokio::spawn(async move {
        let mut next = 0;
        while next < N {
            let m = reader.next_json().await.expect("the reader's stream");
            if m[3] == "api" {
                assert_eq!(m[4]["n"], next);
                assert_eq!(m[4]["pad"].as_str().map(str::len), Some(PAD));
                next += 1;
            }
        }
        (reader, rw)
    });
    for n in 0..N {
        publish(
            &s,
            topic,
            json!({"n": n, "pad": format!("{n:0>6}").repeat(PAD / 6)}),
        )
        .await;
    }
    reading.await.unwrap();
    assert!(
        written_through(&s, "partial").await > 0,
        "no frame was written in part: the test did not reach the path it is for"
    );
    // Now the stalled client reads everything: whole frames, in order, each byte right.
    let mut next = 0;
    while next < N {
        let m = tokio::time::timeout(Duration::from_secs(30), stalled.next_json())
            .await
            .expect("the stalled client's stream resumes")
            .expect("not closed");
        if m[3] == "api" {
            assert_eq!(m[4]["n"], next);
            assert_eq!(
                m[4]["pad"].as_str().unwrap(),
                format!("{next:0>6}").repeat(PAD / 6)
            );
            next += 1;
        }
    }
    // The connection still works both ways after the partial writes.
    sw.send(json!([null, "9", "phoenix", "heartbeat", {}]))
        .await;
    loop {
        let m = stalled.next_json().await.expect("the heartbeat's reply");
        if m[3] == "phx_reply" && m[1] == "9" {
            break;
        }
    }
}
