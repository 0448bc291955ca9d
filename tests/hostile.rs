//! Hostile clients against the real binary, over real sockets: each test tries one way to hold,
//! fill or spoof something (the issue's defects), and checks that the server refuses it with a
//! clear error and keeps serving everyone else.

mod common;

use common::{json, Server, API_KEY};
use plexus_client::protocol::Payload;
use plexus_client::{Client, ClientError, ConnectOptions};
use serde_json::json;
use std::time::Duration;

const SECRET: &str = "hostile-suite-secret-0123456789";

fn config(extra_limits: &str) -> String {
    format!(
        r#"
profile = "prod"
jwt_secret = "{SECRET}"

[auth]
expiry_grace_secs = 1

[limits]
max_connections_per_ip = 0
max_connections_per_user = 0
connect_rate_per_ip = 0
messages_per_second = 5
message_burst = 10
{extra_limits}

[[channels]]
topic = "room:staff"
join_roles = ["staff"]

[[channels]]
topic = "hist:*"
history_size = 100

[[channels]]
topic = "room:*"
presence = true
echo = true
"#
    )
}

fn now() -> u64 {
    plexus_core::auth::unix_now()
}

fn sign(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn token(sub: &str, roles: &[&str]) -> String {
    sign(json!({"sub": sub, "exp": now() + 600, "roles": roles}))
}

async fn start(extra_limits: &str) -> Server {
    Server::start_with(Some(&config(extra_limits)), &[("PLEXUS_JWT_SECRET", "")]).await
}

async fn connect(s: &Server, token: &str) -> Client {
    Client::connect(ConnectOptions::new(s.url()).token(token))
        .await
        .unwrap()
}

async fn still_serving(s: &Server) {
    let mut c = connect(s, &token("bystander", &[])).await;
    assert!(c.heartbeat().await.unwrap().is_ok(), "{}", s.log());
}

#[tokio::test]
async fn a_fractional_exp_is_enforced_live() {
    let s = start("").await;
    let exp = now() as f64 + 1.5;
    let mut c = connect(&s, &sign(json!({"sub": "floaty", "exp": exp}))).await;
    c.recv_event("phoenix", "token_expired").await.unwrap();
    let (code, reason) = c.wait_close().await.unwrap();
    assert_eq!((code, reason.as_str()), (Some(4001), "token expired"));
    still_serving(&s).await;
}

#[tokio::test]
async fn server_events_cannot_be_forged_and_token_events_are_never_relayed() {
    let s = start("").await;
    let mut victim = connect(&s, &token("victim", &[])).await;
    let mut mallory = connect(&s, &token("mallory", &[])).await;
    assert!(victim.join("room:1", json!({})).await.unwrap().is_ok());
    assert!(mallory.join("room:1", json!({})).await.unwrap().is_ok());
    // The victim has seen mallory arrive; from here on it must hear nothing mallory forges.
    victim
        .recv_event_timeout("room:1", "presence_diff", Duration::from_secs(2))
        .await
        .unwrap();
    while victim
        .recv_timeout(Duration::from_millis(200))
        .await
        .unwrap()
        .is_some()
    {}
    let fake = json!({"joins": {"ghost": {"metas": [{"phx_ref": "x"}]}}, "leaves": {}});
    for event in [
        "presence_diff",
        "presence_state",
        "phx_reply",
        "phx_error",
        "refresh_token",
        "token_expired",
    ] {
        let reply = mallory.push_json("room:1", event, &fake).await.unwrap();
        assert_eq!(reply.reason().as_deref(), Some("reserved event"), "{event}");
    }
    // Supabase's setAuth: `access_token` on a joined channel refreshes the connection's token.
    let reply = mallory
        .push_json(
            "room:1",
            "access_token",
            &json!({"access_token": token("mallory", &[])}),
        )
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let reply = mallory
        .push_json(
            "room:1",
            "access_token",
            &json!({"access_token": "garbage"}),
        )
        .await
        .unwrap();
    assert!(!reply.is_ok());
    let leaked = victim
        .recv_timeout(Duration::from_millis(500))
        .await
        .unwrap();
    assert!(leaked.is_none(), "the victim received {leaked:?}");
    // An ordinary event still goes through.
    assert!(mallory
        .push_json("room:1", "new_msg", &json!({"body": "hi"}))
        .await
        .unwrap()
        .is_ok());
    victim.recv_event("room:1", "new_msg").await.unwrap();
    // The HTTP API cannot publish them either.
    let (status, _) = s
        .http(
            "POST",
            "/api/broadcast",
            &[("Authorization", &format!("Bearer {API_KEY}"))],
            r#"{"topic":"room:1","event":"presence_diff","payload":{}}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_refreshed_token_with_fewer_roles_loses_its_channels() {
    let s = start("").await;
    let mut c = connect(&s, &token("dana", &["staff"])).await;
    assert!(c.join("room:staff", json!({})).await.unwrap().is_ok());
    assert!(c.join("room:lobby", json!({})).await.unwrap().is_ok());
    let reply = c
        .request(
            None,
            "phoenix",
            "refresh_token",
            Payload::json(&json!({"token": token("dana", &[])})).unwrap(),
        )
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    c.recv_event("room:staff", "phx_close").await.unwrap();
    // Gone from the staff room, still in the lobby.
    let reply = c
        .push_json("room:staff", "new_msg", &json!({}))
        .await
        .unwrap();
    assert_eq!(reply.reason().as_deref(), Some("unmatched topic"));
    assert!(c
        .push_json("room:lobby", "new_msg", &json!({}))
        .await
        .unwrap()
        .is_ok());
    assert!(s.log().contains("may no longer join"), "{}", s.log());
}

#[tokio::test]
async fn malformed_frames_count_against_the_rate_limit() {
    let s = start("").await;
    let mut c = connect(&s, &token("garbler", &[])).await;
    for _ in 0..200 {
        if c.send_text("not json at all").await.is_err() {
            break;
        }
    }
    let mut rate_limited = 0;
    let closed = loop {
        match c.recv_timeout(Duration::from_secs(5)).await {
            Ok(Some(m)) => {
                if m.payload
                    .as_json()
                    .is_some_and(|p| p.get().contains("rate limited"))
                {
                    rate_limited += 1;
                }
            }
            Ok(None) => break None,
            Err(ClientError::Closed { code, .. }) => break code,
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(rate_limited > 0, "no `rate limited` reply");
    assert_eq!(closed, Some(1008));
    still_serving(&s).await;
}

#[tokio::test]
async fn longpoll_obeys_the_message_size_limit() {
    let s = start("max_message_bytes = 2048").await;
    let tok = token("poller", &[]);
    let (status, body) = s
        .http(
            "GET",
            &format!("/socket/longpoll?vsn=2.0.0&token={tok}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let session = json(&body)["token"].as_str().unwrap().to_owned();
    let big = format!(
        r#"["1","1","room:1","phx_join",{{"pad":"{}"}}]"#,
        "x".repeat(4096)
    );
    let path = format!("/socket/longpoll?vsn=2.0.0&token={session}");
    let (status, body) = s.http("POST", &path, &[], &big).await.unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_message_bytes"), "{body}");
    still_serving(&s).await;
}

/// A TCP connection to the server from `source` (a loopback address of the test's own).
async fn raw_from(s: &Server, source: &str) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    sock.connect(format!("127.0.0.1:{}", s.port).parse().unwrap())
        .await
        .unwrap()
}

/// Whether the server closed `tcp` within `within` (read returns end-of-file or an error).
async fn closed_by_server(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // a 408 or similar before the close
        }
    }
}

#[tokio::test]
async fn slowloris_and_silent_sockets_are_closed_by_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let s = start("http_header_timeout_secs = 1").await;
    let mut sockets = Vec::new();
    for i in 0..100 {
        let mut tcp = raw_from(&s, "127.0.0.3").await;
        if i % 2 == 0 {
            // Half a request header, and then nothing.
            tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        sockets.push(tcp);
    }
    still_serving(&s).await;
    for tcp in &mut sockets {
        assert!(closed_by_server(tcp, Duration::from_secs(4)).await);
    }
    let (_, metrics) = s.http("GET", "/metrics", &[], "").await.unwrap();
    let timeouts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("plexus_http_timeouts_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(timeouts >= 100, "{metrics}");
}

#[tokio::test]
async fn connections_not_yet_admitted_are_capped_per_address() {
    let s = start("max_pending_connections_per_ip = 5").await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(raw_from(&s, "127.0.0.4").await);
    }
    // The sixth from the same address is closed at once; other addresses are served.
    let mut sixth = raw_from(&s, "127.0.0.4").await;
    assert!(closed_by_server(&mut sixth, Duration::from_secs(2)).await);
    still_serving(&s).await;
    for tcp in &mut held {
        assert!(!closed_by_server(tcp, Duration::from_millis(10)).await);
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = raw_from(&s, "127.0.0.4").await;
    assert!(!closed_by_server(&mut again, Duration::from_millis(300)).await);
    let (_, metrics) = s.http("GET", "/metrics", &[], "").await.unwrap();
    assert!(
        metrics.contains("plexus_http_refused_total 1\n"),
        "{metrics}"
    );
    assert!(
        s.log().contains("too many connections not yet admitted"),
        "{}",
        s.log()
    );
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("server process {pid}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_history_flood_stays_within_the_budget_and_reads_create_nothing() {
    let s = start("history_max_bytes = 4194304\nhistory_topic_max_bytes = 1048576").await;
    let auth = format!("Bearer {API_KEY}");
    let (_, m) = s.http("GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(metric(&m, "plexus_history_topics"), 0);
    let before = rss_kib(s.pid());
    // 80 messages of 600 kB into 40 topics: 48 MB offered, 4 MiB may stay.
    let pad = "x".repeat(600_000);
    for i in 0..80 {
        let body = format!(
            r#"{{"topic":"hist:{}","event":"blob","payload":{{"pad":"{pad}"}}}}"#,
            i % 40
        );
        let (status, resp) = s
            .http("POST", "/api/broadcast", &[("Authorization", &auth)], &body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{resp}");
    }
    let (_, m) = s.http("GET", "/metrics", &[], "").await.unwrap();
    let bytes = metric(&m, "plexus_history_bytes");
    assert!(bytes <= 4 * 1024 * 1024, "{bytes} bytes retained");
    assert!(bytes >= 600_000, "the latest messages are kept: {bytes}");
    let grown = rss_kib(s.pid()).saturating_sub(before);
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    // Reading the history of topics nobody published to retains nothing: only small epoch
    // records, which the sweep forgets a minute after their last read (unit-tested in
    // broker/memory.rs).
    for i in 0..200 {
        let path = format!("/api/channels/hist:empty{i}/history?since=0");
        let (status, _) = s
            .http("GET", &path, &[("Authorization", &auth)], "")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let (_, m) = s.http("GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(metric(&m, "plexus_history_bytes"), bytes);
    still_serving(&s).await;
}

#[tokio::test]
async fn wrong_api_keys_are_throttled_per_address_and_the_scheme_is_case_insensitive() {
    let s = start("").await;
    let channels = |auth: String, from: &'static str| {
        let s = &s;
        async move {
            s.http(
                "GET",
                "/api/channels",
                &[("Authorization", &auth), ("X-Forwarded-For", from)],
                "",
            )
            .await
            .unwrap()
            .0
        }
    };
    assert_eq!(channels(format!("bearer {API_KEY}"), "").await, 200);
    assert_eq!(channels(format!("BEARER  {API_KEY}"), "").await, 200);
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(channels(format!("Bearer guess-{i}"), "").await);
    }
    assert_eq!(statuses[..10], [403; 10]);
    assert_eq!(statuses[10..], [429, 429]);
    // Locked out: even the right key waits, from this address.
    assert_eq!(channels(format!("Bearer {API_KEY}"), "").await, 429);
    // The history endpoint (which also takes user tokens) is no way around it.
    let (status, _) = s
        .http(
            "GET",
            "/api/channels/hist:x/history",
            &[("Authorization", &format!("Bearer {API_KEY}"))],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 429);
    assert!(s.log().contains("wrong API key"), "{}", s.log());
    still_serving(&s).await;
}

#[tokio::test]
async fn metrics_can_require_the_api_key() {
    let s = Server::start_with(
        Some(&format!("metrics_require_api_key = true\n{}", config(""))),
        &[("PLEXUS_JWT_SECRET", "")],
    )
    .await;
    let (status, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(status, 401, "{body}");
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = s
        .http("GET", "/metrics", &[("Authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("plexus_connections "), "{body}");
    assert!(body.contains("plexus_broker_up 1\n"), "{body}");
}

#[tokio::test]
async fn the_dev_profile_answers_only_loopback_host_names() {
    let s = Server::start().await;
    for (host, expected) in [
        ("evil.example", 403),
        ("evil.example:4000", 403),
        ("localhost", 200),
        ("127.0.0.1:9", 200),
    ] {
        // Written by hand: the harness's own requests name 127.0.0.1 in Host.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        let req = format!(
            "GET /dev/token?sub=alice HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        let status: u16 = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        assert_eq!(status, expected, "{host}: {head}\n{body}");
    }
}

#[tokio::test]
async fn sse_joins_a_repeated_topic_once_and_passes_deep_payloads_as_they_are() {
    let s = start("").await;
    let tok = token("reader", &[]);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "GET /sse?topic=room:a&topic=room:b&topic=room:a&token={tok} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Deeper than serde_json's default recursion limit (128).
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let body = format!(r#"{{"topic":"room:a","event":"deep","payload":{deep}}}"#);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut published = false;
    let mut buf = [0u8; 65536];
    while !text.contains("\"event\":\"deep\"") {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("no deep event in time")
            .unwrap();
        assert!(n > 0, "stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if !published && text.matches("event: joined").count() >= 2 {
            published = true;
            let auth = format!("Bearer {API_KEY}");
            let (status, resp) = s
                .http("POST", "/api/broadcast", &[("Authorization", &auth)], &body)
                .await
                .unwrap();
            if status != 200 {
                // The API refuses what it cannot parse: then the payload must be shallower.
                panic!("broadcast refused: {status} {resp}");
            }
        }
    }
    assert_eq!(text.matches("event: joined").count(), 2, "{text}");
    assert!(
        text.contains(&deep),
        "payload not passed as it came: {text}"
    );
}

#[tokio::test]
async fn slow_consumers_are_cut_off_and_the_others_keep_receiving() {
    let s = start("outbox_max_bytes = 262144\nwrite_timeout_secs = 1").await;
    let before = rss_kib(s.pid());
    // 20 subscribers; 2 of them (10 %) stop reading once joined. 400 broadcasts of 50 kB (20 MB)
    // are more than the kernel's socket buffers hold for a client that never reads.
    let mut stalled = Vec::new();
    let mut readers = Vec::new();
    for i in 0..20 {
        let mut c = connect(&s, &token(&format!("sub{i}"), &[])).await;
        assert!(c.join("room:fire", json!({})).await.unwrap().is_ok());
        if i % 10 == 0 {
            stalled.push(c);
            continue;
        }
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < 400 {
                match c
                    .recv_event_timeout("room:fire", "blob", Duration::from_secs(10))
                    .await
                {
                    Ok(Some(_)) => got += 1,
                    other => panic!("reader {i} stopped after {got}: {other:?}"),
                }
            }
            (got, c)
        }));
    }
    let auth = format!("Bearer {API_KEY}");
    let body = format!(
        r#"{{"topic":"room:fire","event":"blob","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(50_000)
    );
    for _ in 0..400 {
        let (status, _) = s
            .http("POST", "/api/broadcast", &[("Authorization", &auth)], &body)
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let mut healthy = Vec::new();
    for r in readers {
        let (got, c) = r.await.unwrap();
        assert_eq!(got, 400);
        healthy.push(c);
    }
    // The stalled two are gone from the topic; memory stayed bounded.
    let mut subscribers = 0;
    for _ in 0..50 {
        let (_, resp) = s
            .http("GET", "/api/channels", &[("Authorization", &auth)], "")
            .await
            .unwrap();
        subscribers = json(&resp)["channels"][0]["subscribers"]
            .as_u64()
            .unwrap_or(0);
        if subscribers == 18 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(subscribers, 18, "{}", s.log());
    // Cut off by their full outboxes (close 1013), and counted.
    let (_, m) = s.http("GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(metric(&m, "plexus_slow_consumer_closes_total"), 2, "{m}");
    let grown = rss_kib(s.pid()).saturating_sub(before);
    assert!(grown < 48 * 1024, "RSS grew by {grown} KiB");
    drop((stalled, healthy));
}

#[tokio::test]
async fn admitted_streams_leave_the_gate_and_slow_bodies_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start("max_pending_connections_per_ip = 3\nhttp_header_timeout_secs = 1").await;
    let tok = token("streamer", &[]);
    // Six SSE streams from one address: admitted clients, not counted against the gate's 3.
    let mut streams = Vec::new();
    for _ in 0..6 {
        let mut tcp = raw_from(&s, "127.0.0.5").await;
        let req = format!("GET /sse?topic=room:s&token={tok} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("event: joined") {
            let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
                .await
                .expect("no joined event")
                .unwrap();
            assert!(n > 0, "stream closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        streams.push(tcp);
    }
    // A body that never arrives: 408 after the header timeout, not a connection held forever.
    let mut slow = raw_from(&s, "127.0.0.6").await;
    let head = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"topic\""
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(4), slow.read(&mut response))
        .await
        .expect("no answer to a slow body")
        .unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    drop(streams);
    still_serving(&s).await;
}
