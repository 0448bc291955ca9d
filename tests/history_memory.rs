//! History memory against its budget, measured on the real process: big messages pushed into
//! many history topics (over WebSocket by senders that then leave, and through the HTTP API)
//! must not grow the server's RSS by much more than `limits.history_max_bytes`.

mod common;

use common::{json, Server, API_KEY};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

fn config(budget: u64) -> String {
    format!(
        r#"
[limits]
history_max_bytes = {budget}
messages_per_second = 0
max_connections_per_user = 0

[[channels]]
topic = "hist:*"
history_size = 100
"#
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("server process {pid}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

fn cpu(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}")) as u64
}

async fn metrics(s: &Server) -> String {
    let (status, m) = s.http("GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(status, 200, "{m}");
    m
}

/// Waits until the server counts `n` live connections (the senders are gone).
async fn connections(s: &Server, n: u64) {
    for _ in 0..200 {
        if metric(&metrics(s).await, "plexus_connections") == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still not {n} connections: {}", metrics(s).await);
}


/// A WebSocket client written by hand: its frames are masked with the key 0 (the payload goes
/// out as it is), so that pushing hundreds of megabytes from a debug build takes seconds.
struct RawSocket {
    tcp: tokio::net::TcpStream,
    read: Vec<u8>,
}

impl RawSocket {
    async fn connect(s: &Server, sub: &str) -> RawSocket {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        let req = format!(
            "GET /socket/websocket?vsn=2.0.0&token={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            s.token(sub)
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut read = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            read.extend_from_slice(&chunk[..n]);
            if let Some(i) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        assert!(read.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&read));
        read.drain(..end);
        RawSocket { tcp, read }
    }

    async fn send_text(&mut self, text: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut head = vec![0x81, 0x80 | 127];
        head.extend_from_slice(&(text.len() as u64).to_be_bytes());
        head.extend_from_slice(&[0, 0, 0, 0]);
        self.tcp.write_all(&head).await.unwrap();
        self.tcp.write_all(text).await.unwrap();
    }

    /// The next text frame from the server.
    async fn recv_text(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        loop {
            if self.read.len() >= 2 {
                let (len, at) = match self.read[1] & 0x7F {
                    126 if self.read.len() >= 4 => {
                        (u16::from_be_bytes([self.read[2], self.read[3]]) as usize, 4)
                    }
                    127 if self.read.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.read[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.read.len() >= at + len {
                    let opcode = self.read[0] & 0x0F;
                    let text = String::from_utf8_lossy(&self.read[at..at + len]).into_owned();
                    self.read.drain(..at + len);
                    assert_eq!(opcode, 1, "not a text frame: {text}");
                    return text;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(30), self.tcp.read(&mut chunk))
                .await
                .expect("no frame from the server in time")
                .unwrap();
            assert!(n > 0, "the server closed the socket");
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a message and waits for its reply, which must be `ok`.
    async fn request(&mut self, msg_ref: usize, topic: &str, event: &str, payload: &str) {
        let frame = format!(r#"["{msg_ref}","{msg_ref}","{topic}","{event}",{payload}]"#);
        self.send_text(frame.as_bytes()).await;
        let reply = self.recv_text().await;
        assert!(
            reply.contains("phx_reply") && reply.contains(r#""status":"ok""#),
            "{reply}"
        );
    }
}

/// A JSON object of `size` bytes.
fn blob(size: usize, n: usize) -> String {
    let head = format!(r#"{{"n":{n},"pad":""#);
    format!("{head}{}\"}}", "x".repeat(size - head.len() - 2))
}

/// `messages` messages of `size` bytes into `topics` topics (`hist:{prefix}{i}`, message `m`
/// into topic `m % topics`), pushed by `senders` WebSocket clients, which then leave.
async fn push_over_websocket(
    s: &Server,
    prefix: &str,
    topics: usize,
    messages: usize,
    size: usize,
    senders: usize,
) {
    let mut tasks = Vec::new();
    for k in 0..senders {
        let mut ws = RawSocket::connect(s, &format!("sender{k}")).await;
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mine = |t: usize| t % senders == k;
            for t in (0..topics).filter(|&t| mine(t)) {
                ws.request(t, &format!("hist:{prefix}{t}"), "phx_join", "{}")
                    .await;
            }
            for m in (0..messages).filter(|m| mine(m % topics)) {
                let topic = format!("hist:{prefix}{}", m % topics);
                ws.request(topics + m, &topic, "blob", &blob(size, m)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    connections(s, 0).await;
}

async fn broadcast_over_http(s: &Server, prefix: &str, topics: usize, messages: usize, size: usize) {
    let auth = format!("Bearer {API_KEY}");
    for m in 0..messages {
        let body = format!(
            r#"{{"topic":"hist:{prefix}{}","event":"blob","payload":{}}}"#,
            m % topics,
            blob(size, m)
        );
        let (status, resp) = s
            .http("POST", "/api/broadcast", &[("Authorization", &auth)], &body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{resp}");
        assert!(json(&resp)["offset"].as_u64().is_some(), "{resp}");
    }
}

#[tokio::test]
async fn explore() {
    let budget: u64 = std::env::var("BUDGET_MIB").map_or(16, |v| v.parse().unwrap()) * MIB;
    let topics: usize = std::env::var("TOPICS").map_or(120, |v| v.parse().unwrap());
    let size: usize = std::env::var("SIZE").map_or(1_000_000, |v| v.parse().unwrap());
    let messages: usize = std::env::var("MESSAGES").map_or(240, |v| v.parse().unwrap());
    let malloc: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MALLOC_") || k.starts_with("GLIBC_"))
        .collect();
    let env: Vec<(&str, &str)> = malloc.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = Server::start_with(Some(&config(budget)), &env).await;
    // warm-up
    push_over_websocket(&s, "warm", 2, 2, 1000, 1).await;
    broadcast_over_http(&s, "warm", 2, 2, 1000).await;
    let before = rss_kib(s.pid());
    let t = std::time::Instant::now();
    push_over_websocket(&s, "ws", topics, messages, size, 4).await;
    eprintln!("ws took {:?}, server cpu {} ticks", t.elapsed(), cpu(s.pid()));
    let after_ws = rss_kib(s.pid());
    let m = metrics(&s).await;
    eprintln!(
        "budget {} MiB: ws grew {} KiB, history {} B",
        budget / MIB,
        after_ws - before,
        metric(&m, "plexus_history_bytes")
    );
    if std::env::var("API").is_err() {
        return;
    }
    let t = std::time::Instant::now();
    broadcast_over_http(&s, "api", topics, messages, size).await;
    eprintln!("api took {:?}", t.elapsed());
    let after_api = rss_kib(s.pid());
    let m = metrics(&s).await;
    eprintln!(
        "api: grew {} KiB total, history {} B",
        after_api - before,
        metric(&m, "plexus_history_bytes")
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    eprintln!("after 6s: grew {} KiB", rss_kib(s.pid()) - before);
}
