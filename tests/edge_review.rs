//! The edge of the server, from the second review (issue 19): a spray of wrong API keys from
//! many forwarded addresses does not lock out the right key or the admin secret elsewhere;
//! `X-Forwarded-For` entries with a port; `/dev/echo` checks `Origin`; the demo pages only where
//! the `demo` setting is on; IPv6 clients counted per /64 by the connection caps and rate.

mod common;

use common::{http_raw, json, ws_headers, Server, API_KEY};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A config file behind a proxy on 127.0.0.1 (a config file means the prod profile).
const PROXY: &str = "trusted_proxies = [\"127.0.0.1\"]\n";
const ADMIN_SECRET: &str = "admin-secret-0123456789";

/// `GET /api/channels` with `key`, forwarded for `xff` (none: the bare peer); the status.
async fn channels(s: &Server, key: &str, xff: Option<&str>) -> u16 {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(x) = xff {
        headers.push(("X-Forwarded-For", x));
    }
    let (status, body) = s
        .http("GET", "/api/channels", &headers, "")
        .await
        .expect("the API answers");
    json(&body);
    status
}

/// `POST /admin/api/session` with `secret`, forwarded for `xff`; the status.
async fn sign_in(s: &Server, secret: &str, xff: Option<&str>) -> u16 {
    let mut headers = vec![];
    if let Some(x) = xff {
        headers.push(("X-Forwarded-For", x));
    }
    let body = serde_json::json!({ "secret": secret }).to_string();
    let (status, answer) = s
        .http("POST", "/admin/api/session", &headers, &body)
        .await
        .expect("the console answers");
    json(&answer);
    status
}

/// Sends `GET /api/channels` with a wrong key once for each of `addresses` over one
/// keep-alive connection, pipelined in batches; returns the statuses.
async fn spray(port: u16, addresses: Vec<String>) -> Vec<u16> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut statuses = Vec::with_capacity(addresses.len());
    for batch in addresses.chunks(64) {
        let mut req = String::new();
        for a in batch {
            req.push_str(&format!(
                "GET /api/channels HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                 Authorization: Bearer wrong-key\r\nX-Forwarded-For: {a}\r\n\r\n"
            ));
        }
        write.write_all(req.as_bytes()).await.expect("write");
        for _ in batch {
            let mut status = 0;
            let mut length = 0;
            loop {
                let mut line = String::new();
                let n = tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut line))
                    .await
                    .expect("an answer in time")
                    .expect("read");
                assert!(n > 0, "the server closed the connection");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
                    status = rest[..3].parse().expect("a status");
                } else if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().expect("a length");
                    }
                }
            }
            let mut body = vec![0; length];
            read.read_exact(&mut body).await.expect("body");
            statuses.push(status);
        }
    }
    statuses
}

#[tokio::test]
async fn a_wrong_key_spray_from_many_forwarded_addresses_locks_out_only_those_that_failed() {
    let config = format!("{PROXY}admin_secret = \"{ADMIN_SECRET}\"\n");
    let s = Server::start_with(Some(&config), &[]).await;
    // More addresses than the guard's table holds (10,000), one wrong key each, over four
    // keep-alive connections.
    let n: u32 = 10_400;
    let all: Vec<String> = (0..n)
        .map(|i| std::net::Ipv4Addr::from(0x0b00_0000 + i).to_string())
        .collect();
    let started = std::time::Instant::now();
    let sprays: Vec<_> = all
        .chunks(all.len() / 4 + 1)
        .map(|c| tokio::spawn(spray(s.port, c.to_vec())))
        .collect();
    let mut statuses = Vec::new();
    for sp in sprays {
        statuses.extend(sp.await.expect("spray"));
    }
    eprintln!("{n} wrong keys in {:?}", started.elapsed());
    // The right key: from an address that never failed, from the bare peer (the proxy
    // itself), from an address of the spray that failed once; the admin secret from an address
    // that never failed and from the peer.
    assert_eq!(channels(&s, API_KEY, Some("198.51.100.77")).await, 200);
    assert_eq!(channels(&s, API_KEY, None).await, 200);
    assert_eq!(channels(&s, API_KEY, Some("11.0.40.1")).await, 200);
    assert_eq!(sign_in(&s, ADMIN_SECRET, Some("198.51.100.78")).await, 200);
    assert_eq!(sign_in(&s, ADMIN_SECRET, None).await, 200);
    // One address that fails its whole burst (10): refused from then on, even with the right
    // key (for the next 6 s, until it has an attempt again).
    let guesser = "203.0.113.9";
    for _ in 0..10 {
        assert_eq!(channels(&s, "wrong-key", Some(guesser)).await, 403);
    }
    assert_eq!(channels(&s, API_KEY, Some(guesser)).await, 429);
    assert_eq!(sign_in(&s, ADMIN_SECRET, Some(guesser)).await, 429);
    // The others still are not.
    assert_eq!(channels(&s, API_KEY, Some("198.51.100.77")).await, 200);

    // No address of the spray was refused for what the others did.
    let refused = statuses.iter().filter(|st| **st == 403).count();
    assert_eq!(refused, n as usize, "each a first failure: 403, not 429");
}

#[tokio::test]
async fn forwarded_for_entries_with_a_port_are_the_client_and_an_unreadable_one_is_the_peer() {
    let s = Server::start_with(Some(PROXY), &[]).await;
    // `6.6.6.6` is written by the client; the proxy appended the address it saw, with a port.
    for xff in ["6.6.6.6, 10.0.0.1:5555", "6.6.6.7, [2001:db8::5]:443"] {
        for _ in 0..10 {
            assert_eq!(channels(&s, "wrong-key", Some(xff)).await, 403);
        }
    }
    assert_eq!(channels(&s, API_KEY, Some("10.0.0.1")).await, 429);
    assert_eq!(channels(&s, API_KEY, Some("2001:db8::5")).await, 429);
    assert_eq!(channels(&s, API_KEY, Some("6.6.6.6")).await, 200);
    assert_eq!(channels(&s, API_KEY, Some("6.6.6.7")).await, 200);
    // An entry that is no address: nothing left of it is believed, the failures count
    // against the peer.
    for _ in 0..10 {
        assert_eq!(
            channels(&s, "wrong-key", Some("6.6.6.8, unknown")).await,
            403
        );
    }
    assert_eq!(channels(&s, API_KEY, Some("6.6.6.8")).await, 200);
    assert_eq!(channels(&s, API_KEY, None).await, 429);
}

#[tokio::test]
async fn dev_echo_refuses_a_foreign_origin() {
    let s = Server::start().await;
    let mut headers = ws_headers();
    headers.push(("Origin", "https://evil.example"));
    let (status, _, body) = http_raw(s.port, "GET", "/dev/echo", &headers, "")
        .await
        .expect("answer");
    assert_eq!(status, 403, "{body}");
    assert!(json(&body)["error"]
        .as_str()
        .is_some_and(|e| e.contains("origin not allowed")));
    // A loopback page (the dev profile allows those) and a client without `Origin` still get
    // the echo.
    let local = format!("http://localhost:{}", s.port);
    for origin in [Some(local.as_str()), None] {
        let mut headers = ws_headers();
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        let (status, _, _) = http_raw(s.port, "GET", "/dev/echo", &headers, "")
            .await
            .expect("answer");
        assert_eq!(status, 101, "{origin:?}");
    }
}

const DEMO_PATHS: [&str; 6] = [
    "/",
    "/demo/roles",
    "/demo/live",
    "/assets/demo.js",
    "/assets/demo.css",
    "/assets/phoenix.min.js",
];

async fn demo_statuses(s: &Server) -> Vec<u16> {
    let mut out = Vec::new();
    for p in DEMO_PATHS {
        let (status, body) = s.http("GET", p, &[], "").await.expect("answer");
        if status == 404 {
            assert!(json(&body)["error"].is_string(), "{p}: {body}");
        }
        out.push(status);
    }
    out
}

#[tokio::test]
async fn the_demo_pages_are_served_only_where_the_demo_setting_is_on() {
    let prod = Server::start_with(None, &[("PLEXUS_PROFILE", "prod")]).await;
    assert_eq!(demo_statuses(&prod).await, [404; 6]);
    let prod_demo =
        Server::start_with(None, &[("PLEXUS_PROFILE", "prod"), ("PLEXUS_DEMO", "true")]).await;
    assert_eq!(demo_statuses(&prod_demo).await, [200; 6]);
    let dev = Server::start().await;
    assert_eq!(demo_statuses(&dev).await, [200; 6]);
    let dev_off = Server::start_with(Some("profile = \"dev\"\ndemo = false\n"), &[]).await;
    assert_eq!(demo_statuses(&dev_off).await, [404; 6]);
}

/// `plexus check` with `env`; (exit code, stdout, stderr).
fn check(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
        .arg("check")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PLEXUS_JWT_SECRET", common::SECRET)
        .env("PLEXUS_API_KEY", API_KEY)
        .envs(env.iter().copied())
        .output()
        .expect("plexus check runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plexus_check_says_whether_the_demo_pages_are_on() {
    let (code, out, err) = check(&[("PLEXUS_PROFILE", "prod")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("demo pages: off"), "{out}");
    let (code, out, err) = check(&[("PLEXUS_PROFILE", "prod"), ("PLEXUS_DEMO", "1")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("demo pages: on"), "{out}");
    let (code, out, err) = check(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("demo pages: on"), "{out}");
    let (code, _, err) = check(&[("PLEXUS_DEMO", "maybe")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("PLEXUS_DEMO"), "{err}");
}

/// A WebSocket handshake to `/socket/websocket` forwarded for `xff`: the status, and the
/// socket (kept open by the caller to hold the connection).
async fn ws_from(s: &Server, xff: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(("127.0.0.1", s.port))
        .await
        .expect("connect");
    let token = s.token("user");
    let mut req = format!(
        "GET /socket/websocket?vsn=2.0.0&token={token} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
         X-Forwarded-For: {xff}\r\n",
        s.port
    );
    for (k, v) in ws_headers() {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, stream)
}

#[tokio::test]
async fn ipv6_clients_count_per_slash_64_in_the_connection_cap() {
    let s = Server::start_with(
        Some(&format!("{PROXY}[limits]\nmax_connections_per_ip = 2\n")),
        &[],
    )
    .await;
    let (a, _held_a) = ws_from(&s, "2001:db8:1:2::1").await;
    let (b, _held_b) = ws_from(&s, "2001:db8:1:2::2").await;
    assert_eq!((a, b), (101, 101));
    // A third address of the same /64 is the same host: over the cap.
    let (c, _) = ws_from(&s, "2001:db8:1:2:ffff::3").await;
    assert_eq!(c, 429);
    // Another /64 is another host.
    let (d, _held_d) = ws_from(&s, "2001:db8:1:3::1").await;
    assert_eq!(d, 101);
}

#[tokio::test]
async fn ipv6_clients_count_per_slash_64_in_the_connect_rate() {
    let s = Server::start_with(
        Some(&format!(
            "{PROXY}[limits]\nconnect_rate_per_ip = 0.01\nconnect_burst_per_ip = 2\n"
        )),
        &[],
    )
    .await;
    let mut held = Vec::new();
    for host in ["2001:db8:9:9::1", "2001:db8:9:9::2"] {
        let (st, sock) = ws_from(&s, host).await;
        assert_eq!(st, 101, "{host}");
        held.push(sock);
    }
    let (st, _) = ws_from(&s, "2001:db8:9:9:abcd::3").await;
    assert_eq!(st, 429);
    let (st, _held) = ws_from(&s, "2001:db8:9:a::1").await;
    assert_eq!(st, 101);
}
