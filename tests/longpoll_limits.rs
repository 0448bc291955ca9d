//! LongPoll polls do not pile up (issue 19, item 6): a session holds one waiting poll (a new
//! one makes the older answer at once), and one client address cannot hold more than its share
//! of the polls a node forwards to the others. Real Redis, two real nodes, raw HTTP.

mod common;

use common::{http_raw, json, Redis, Server};
use std::time::Duration;

/// Two nodes; the poll window is long (30 s), so that a held poll is told apart from an
/// answered one without waiting for it. 127.0.0.1 is a trusted proxy: `X-Forwarded-For` picks
/// the client address.
fn config(max_connections_per_ip: u32) -> String {
    format!(
        "profile = \"dev\"\nbroker = \"redis\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [limits]\nlongpoll_window_secs = 30\nmax_connections_per_ip = {max_connections_per_ip}\n"
    )
}

fn poll_path(token: &str) -> String {
    format!("/socket/longpoll?vsn=2.0.0&token={token}")
}

/// A LongPoll session for `sub` on `s`, opened from client address `ip`.
async fn session_from(s: &Server, sub: &str, ip: &str) -> String {
    let (st, body) = s
        .http(
            "GET",
            &poll_path(&s.token(sub)),
            &[("X-Forwarded-For", ip)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{body}");
    let token = json(&body)["token"].as_str().unwrap_or_default().to_owned();
    assert!(token.starts_with("plp."), "{body}");
    token
}

/// A heartbeat POSTed to the session: its reply is the next thing a poll answers.
async fn heartbeat(s: &Server, session: &str) {
    let (st, body) = s
        .http(
            "POST",
            &poll_path(session),
            &[],
            "[null,\"9\",\"phoenix\",\"heartbeat\",{}]",
        )
        .await
        .unwrap();
    assert_eq!(
        (st, json(&body)["status"].as_i64()),
        (200, Some(200)),
        "{body}"
    );
}

type Answer = std::io::Result<(u16, String, String)>;

fn spawn_poll(
    port: u16,
    token: &str,
    ip: &str,
    done: tokio::sync::mpsc::UnboundedSender<Answer>,
) -> tokio::task::JoinHandle<()> {
    let (path, ip) = (poll_path(token), ip.to_owned());
    tokio::spawn(async move {
        let headers: &[(&str, &str)] = if ip.is_empty() {
            &[]
        } else {
            &[("X-Forwarded-For", &ip)]
        };
        let answer = http_raw(port, "GET", &path, headers, "").await;
        let _ = done.send(answer);
    })
}

#[tokio::test]
async fn many_polls_of_one_session_hold_one_and_answer_the_rest_at_once() {
    let redis = Redis::start();
    let cfg = config(256);
    let url = redis.url();
    let a = Server::start_with(Some(&cfg), &[("PLEXUS_REDIS_URL", &url)]).await;
    let b = Server::start_with(Some(&cfg), &[("PLEXUS_REDIS_URL", &url)]).await;
    let session = session_from(&b, "alice", "10.0.0.1").await;

    // 100 polls of the session at once, all through A (forwarded to B).
    const POLLS: usize = 100;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..POLLS {
        spawn_poll(a.port, &session, "10.0.0.1", tx.clone());
    }
    // All but at most two are answered long before the 30 s window: 204, poll again.
    let mut answered = Vec::new();
    while answered.len() < POLLS - 2 {
        let answer = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {POLLS} polls of one session still held after 10 s",
                    POLLS - answered.len()
                )
            })
            .unwrap();
        // http_raw gives up on a read after 5 s: "timeout" is a poll held that long.
        let (st, _, body) =
            answer.unwrap_or_else(|e| panic!("a poll of the session was held, not answered: {e}"));
        assert_eq!(st, 200, "{body}");
        assert_eq!(json(&body)["status"], 204, "{body}");
        answered.push(body);
    }
    // The session lives on: what is held takes its next message (the heartbeat's reply).
    heartbeat(&b, &session).await;
    let mut delivered = 0;
    while answered.len() < POLLS {
        let answer = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the held poll answers with the heartbeat's reply")
            .unwrap();
        let (_, _, body) = answer.expect("a poll is answered");
        let v = json(&body);
        assert!(v["status"] == 200 || v["status"] == 204, "{body}");
        if v["status"] == 200 {
            delivered += 1;
            assert!(body.contains("phx_reply"), "{body}");
        }
        answered.push(body);
    }
    assert!(delivered >= 1, "the heartbeat's reply was not delivered");
}

#[tokio::test]
async fn one_address_cannot_take_every_forwarded_poll() {
    let redis = Redis::start();
    // Two connections per address: four forwarded polls in flight per address.
    let cfg = config(2);
    let url = redis.url();
    let a = Server::start_with(Some(&cfg), &[("PLEXUS_REDIS_URL", &url)]).await;
    let b = Server::start_with(Some(&cfg), &[("PLEXUS_REDIS_URL", &url)]).await;
    // Sessions on B (opened from addresses of their own), all polled from 10.0.0.1 via A.
    let mut flood = Vec::new();
    for i in 1..=5 {
        flood.push(session_from(&b, &format!("user{i}"), &format!("10.1.0.{i}")).await);
    }
    let victim = session_from(&b, "victim", "10.2.0.1").await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut held = Vec::new();
    for s in &flood[..4] {
        held.push(spawn_poll(a.port, s, "10.0.0.1", tx.clone()));
    }
    // A fifth poll from that address is not forwarded: answered at once (429, body 204).
    // (Sent until refused: one sent before all four were forwarded is held like them, and
    // takes a place too.)
    let (fifth_tx, mut fifth_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut refused = None;
    for _ in 0..40 {
        spawn_poll(a.port, &flood[4], "10.0.0.1", fifth_tx.clone());
        match tokio::time::timeout(Duration::from_millis(500), fifth_rx.recv()).await {
            // An earlier fifth poll that was held (forwarded before all four were) and that
            // http_raw gave up on after 5 s.
            Ok(Some(Err(_))) => {}
            Ok(Some(Ok(answer))) => {
                let (st, _, body) = answer;
                if st == 429 {
                    refused = Some(body);
                    break;
                }
                // An earlier fifth poll, superseded by this one (204).
                assert_eq!(json(&body)["status"], 204, "{body}");
            }
            Ok(None) => unreachable!(),
            Err(_) => {} // held: forwarded before the four were
        }
    }
    let body = refused.expect("the fifth forwarded poll of one address was never refused");
    let v = json(&body);
    assert_eq!(v["status"], 204, "{body}");
    assert_eq!(v["token"], flood[4].as_str(), "{body}");
    assert!(
        v["error"].as_str().unwrap().contains("too many polls"),
        "{body}"
    );
    // Of the four, none was answered meanwhile, except refused (429) if a fifth overtook it.
    while let Ok(answer) = rx.try_recv() {
        if let Ok((st, _, body)) = answer {
            assert_eq!(st, 429, "a held poll was answered: {body}");
        }
    }

    // Another address's poll through A is forwarded and held as usual, and takes its message.
    let (vtx, mut vrx) = tokio::sync::mpsc::unbounded_channel();
    spawn_poll(a.port, &victim, "10.0.0.2", vtx);
    // Its poll answers with the heartbeat's reply (not 410, not 429).
    heartbeat(&b, &victim).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), vrx.recv())
        .await
        .expect("the victim's poll takes its message")
        .unwrap();
    let (st, _, body) = answer.expect("answered");
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["status"], 200, "{body}");
    assert!(body.contains("phx_reply"), "{body}");
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn a_forwarded_poll_leaves_the_gate_only_once_its_session_is_held() {
    let redis = Redis::start();
    let cfg = "profile = \"dev\"\nbroker = \"redis\"\n\
               [limits]\nlongpoll_window_secs = 30\nmax_pending_connections_per_ip = 2\n";
    let a = Server::start_with(Some(cfg), &[("PLEXUS_REDIS_URL", &redis.url())]).await;
    // A "node" that listens on its channel and never answers: made-up session tokens naming
    // it are forwarded there.
    let mut mute = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "SUBSCRIBE",
            "plexus:n:{mute}",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = mute.stdout.take().unwrap();
    let subscribed = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(out).lines();
        // "subscribe", the channel, 1.
        for _ in 0..3 {
            lines.next();
        }
        lines
    });
    let _lines = subscribed.join().unwrap();

    // Two polls of made-up sessions of that node: they stay in the gate (2 per address) while
    // A waits to hear whether the session exists.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..2 {
        spawn_poll(a.port, &format!("plp.mute.x{i}"), "", tx.clone());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third connection from the same address is closed at accept (before the fix, the two
    // had left the gate and this one was forwarded and held too).
    let third = http_raw(a.port, "GET", &poll_path("plp.mute.x2"), &[], "").await;
    match third {
        // Closed (EOF or reset) at once; "timeout": held 5 s like a forwarded poll.
        Err(e) => assert!(
            !e.to_string().contains("timeout"),
            "the third poll was not refused at accept: {e}"
        ),
        Ok((st, _, body)) => panic!("the third poll was let in: {st} {body}"),
    }
    // The two answer 410 once the owner failed to say it holds them (2 s).
    for _ in 0..2 {
        let (st, _, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("answered")
            .unwrap()
            .expect("answered");
        assert_eq!(
            (st, json(&body)["status"].as_i64()),
            (200, Some(410)),
            "{body}"
        );
    }
    let _ = mute.kill();
    let _ = mute.wait();
}
