//! Application hooks against a real HTTP receiver (tests/common/receiver.rs) that checks every
//! signature: connect, join and push hooks allowing, denying, timing out and answering
//! garbage; reply and meta passed through; a push hook that stores then broadcasts; the cap
//! on calls in flight, the circuit breaker and the join-decision cache; rules before hooks;
//! the LongPoll transport going through the same hooks.

mod common;

use common::receiver::{Answer, Receiver, HOOK_SECRET};
use common::{json, ws_headers, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SLOW: Duration = Duration::from_secs(3);

fn app(path: &str, body: &Value) -> Answer {
    let sub = body["sub"].as_str().unwrap_or("");
    let topic = body["topic"].as_str().unwrap_or("");
    match path {
        "/connect" => match sub {
            "banned" => Answer::Json(json!({"allow": false, "reason": "banned user"})),
            "slow" => Answer::Slow(SLOW, json!({"allow": true})),
            "garbage" => Answer::Raw("<html>oops</html>"),
            "broken" => Answer::Status(500),
            _ => Answer::Json(json!({"allow": true})),
        },
        "/join" => match topic {
            "room:deny" | "hist:deny" | "realtime:sb:deny" => {
                Answer::Json(json!({"allow": false, "reason": "not in team 42"}))
            }
            "room:slow" => Answer::Slow(SLOW, json!({"allow": true})),
            "room:garbage" => Answer::Raw("{\"allow\": \"maybe\"}"),
            "room:500" => Answer::Status(500),
            "room:meta" => Answer::Json(json!({
                "allow": true,
                "reply": {"team": 42, "epoch": "not-yours"},
                "meta": {"role": "lead", "phx_ref": "forged"}
            })),
            _ => Answer::Json(json!({"allow": true})),
        },
        "/push" => match body["payload"]["text"].as_str().unwrap_or("") {
            "deny" => Answer::Json(json!({"allow": false, "reason": "spam"})),
            "slow" => Answer::Slow(SLOW, json!({"allow": true})),
            "garbage" => Answer::Raw("not json"),
            "store" => Answer::Json(json!({
                "allow": true,
                "reply": {"id": 7},
                "broadcast": {"event": "new_msg", "payload": {"id": 7, "text": "stored"}}
            })),
            "silent" => {
                Answer::Json(json!({"allow": true, "broadcast": false, "reply": {"saved": true}}))
            }
            _ => Answer::Json(json!({"allow": true})),
        },
        _ => Answer::Status(404),
    }
}

fn config(recv: &Receiver) -> String {
    format!(
        r#"
[[channels]]
topic = "room:*"
presence = true
push_hook = "{push}"
push_hook_events = ["new_msg"]

[[channels]]
topic = "open:*"
join_hook = "off"

[[channels]]
topic = "staff:*"
join_roles = ["staff"]

[[channels]]
topic = "hist:*"
history_size = 10
"#,
        push = recv.url("/push")
    )
}

async fn start(recv: &Receiver, extra: &[(&str, &str)]) -> Server {
    let connect = recv.url("/connect");
    let join = recv.url("/join");
    let mut env = vec![
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_CONNECT_HOOK_URL", connect.as_str()),
        ("PLEXUS_JOIN_HOOK_URL", join.as_str()),
        ("PLEXUS_HOOK_TIMEOUT_MS", "500"),
    ];
    env.extend_from_slice(extra);
    Server::start_with(Some(&config(recv)), &env).await
}

/// The WebSocket handshake of `sub`: (status, body).
async fn handshake(s: &Server, sub: &str) -> (u16, String) {
    let path = format!("/socket/websocket?vsn=2.0.0&token={}", s.token(sub));
    let (status, _, body) = common::http_raw(s.port, "GET", &path, &ws_headers(), "")
        .await
        .unwrap();
    (status, body)
}

fn text(s: &str) -> plexus_client::protocol::Payload {
    plexus_client::protocol::Payload::json(&json!({ "text": s })).unwrap()
}

async fn metric(s: &Server, line: &str) -> u64 {
    let (_, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(line).map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
}

#[tokio::test]
async fn connect_hook_allows_denies_and_fails_clearly() {
    let recv = Receiver::start(app).await;
    let s = start(&recv, &[("PLEXUS_HOOK_BREAKER_THRESHOLD", "0")]).await;
    assert_eq!(handshake(&s, "alice").await.0, 101);
    let (status, body) = handshake(&s, "banned").await;
    assert_eq!(
        (status, json(&body)),
        (403, json!({"error": "banned user"}))
    );
    for sub in ["slow", "garbage", "broken"] {
        let started = Instant::now();
        let (status, body) = handshake(&s, sub).await;
        assert_eq!(
            (status, json(&body)),
            (503, json!({"error": "hook unavailable"})),
            "{sub}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{sub}: no hang");
    }
    let req = &recv.at("/connect")[0].body;
    assert_eq!(req["type"], "connect");
    assert_eq!(req["sub"], "alice");
    assert_eq!(req["addr"], "127.0.0.1");
    assert!(req["roles"].is_array() && req["node"].is_string() && req["at"].is_u64());
    recv.assert_all_signed();
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"connect\",result=\"timeout\"}"
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"connect\",result=\"invalid\"}"
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"connect\",result=\"error\"}"
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"connect\",result=\"deny\"}"
        )
        .await,
        1
    );
    // Every call's latency, the timed-out one included, is in the hook histogram.
    assert_eq!(
        metric(&s, "plexus_hook_call_seconds_count{hook=\"connect\"}").await,
        5
    );
}

#[tokio::test]
async fn join_hook_narrows_rules_and_passes_reply_and_meta() {
    let recv = Receiver::start(app).await;
    let s = start(&recv, &[("PLEXUS_HOOK_BREAKER_THRESHOLD", "0")]).await;
    let mut c = s.client("alice").await;
    let ok = c.join("room:1", json!({"team": 42})).await.unwrap();
    assert!(ok.is_ok(), "{:?}", ok.json());
    let r = c.join("room:deny", json!({})).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason()),
        ("error", Some("not in team 42".into()))
    );
    for topic in ["room:slow", "room:garbage", "room:500"] {
        let started = Instant::now();
        let r = c.join(topic, json!({})).await.unwrap();
        assert_eq!(
            r.json(),
            json!({"reason": "hook unavailable", "retry": true}),
            "{topic}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{topic}: no hang"
        );
    }
    // Reply and meta pass through; Plexus's own fields cannot be overridden.
    let r = c.join("room:meta", json!({})).await.unwrap();
    assert_eq!(r.json(), json!({"team": 42}));
    let state = c.recv_event("room:meta", "presence_state").await.unwrap();
    let state: Value = serde_json::from_str(state.payload.as_json().unwrap().get()).unwrap();
    let meta = &state["alice"]["metas"][0];
    assert_eq!(meta["role"], "lead");
    assert_ne!(meta["phx_ref"], "forged");
    // Rules first: a topic they refuse never reaches the hook; `join_hook = "off"` has none.
    let before = recv.at("/join").len();
    assert_eq!(
        c.join("staff:1", json!({})).await.unwrap().reason(),
        Some("unauthorized".into())
    );
    assert!(c.join("open:1", json!({})).await.unwrap().is_ok());
    assert_eq!(recv.at("/join").len(), before);
    let req = &recv.at("/join")[0].body;
    assert_eq!(req["type"], "join");
    assert_eq!(req["topic"], "room:1");
    assert_eq!(req["params"], json!({"team": 42}));
    assert!(req["conn"].as_str().unwrap().contains('-'));
    assert_eq!(req["addr"], "127.0.0.1");
    recv.assert_all_signed();
}

#[tokio::test]
async fn push_hook_decides_stores_then_broadcasts() {
    let recv = Receiver::start(app).await;
    let s = start(&recv, &[("PLEXUS_HOOK_BREAKER_THRESHOLD", "0")]).await;
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    assert!(alice.join("room:chat", json!({})).await.unwrap().is_ok());
    assert!(bob.join("room:chat", json!({})).await.unwrap().is_ok());
    // Allowed as sent.
    let r = alice
        .push("room:chat", "new_msg", text("hi"))
        .await
        .unwrap();
    assert!(r.is_ok());
    let m = bob.recv_event("room:chat", "new_msg").await.unwrap();
    assert_eq!(
        json(m.payload.as_json().unwrap().get()),
        json!({"text": "hi"})
    );
    // Stored by the app, which returns what to broadcast and the reply.
    let r = alice
        .push("room:chat", "new_msg", text("store"))
        .await
        .unwrap();
    assert_eq!((r.status.as_str(), r.json()), ("ok", json!({"id": 7})));
    let m = bob.recv_event("room:chat", "new_msg").await.unwrap();
    assert_eq!(
        json(m.payload.as_json().unwrap().get()),
        json!({"id": 7, "text": "stored"})
    );
    // Handled by the app: replied, not broadcast.
    let r = alice
        .push("room:chat", "new_msg", text("silent"))
        .await
        .unwrap();
    assert_eq!(r.json(), json!({"saved": true}));
    let r = alice
        .push("room:chat", "new_msg", text("deny"))
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason()),
        ("error", Some("spam".into()))
    );
    for t in ["slow", "garbage"] {
        let started = Instant::now();
        let r = alice.push("room:chat", "new_msg", text(t)).await.unwrap();
        assert_eq!(r.reason(), Some("hook unavailable".into()), "{t}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Only push_hook_events go to the hook.
    let before = recv.at("/push").len();
    assert!(alice
        .push("room:chat", "typing", text("deny"))
        .await
        .unwrap()
        .is_ok());
    assert_eq!(recv.at("/push").len(), before);
    // Nothing refused or failed reached bob: the next thing he gets is "typing".
    let m = bob.recv_event("room:chat", "typing").await.unwrap();
    assert_eq!(
        json(m.payload.as_json().unwrap().get()),
        json!({"text": "deny"})
    );
    let req = &recv.at("/push")[0].body;
    assert_eq!(
        (req["type"].as_str(), req["event"].as_str()),
        (Some("push"), Some("new_msg"))
    );
    assert_eq!(req["payload"], json!({"text": "hi"}));
    recv.assert_all_signed();
}

#[tokio::test]
async fn concurrency_cap_refuses_at_once_above_it() {
    let recv = Receiver::start(|path, _| match path {
        "/join" => Answer::Slow(Duration::from_millis(800), json!({"allow": true})),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let s = start(
        &recv,
        &[
            ("PLEXUS_HOOK_MAX_CONCURRENT", "2"),
            ("PLEXUS_HOOK_TIMEOUT_MS", "3000"),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(s.client(&format!("u{i}")).await);
    }
    let joins = clients.iter_mut().map(|c| c.join("room:busy", json!({})));
    let replies = futures_util::future::join_all(joins).await;
    let ok = replies
        .iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    let busy = replies
        .iter()
        .filter(|r| r.as_ref().unwrap().reason().as_deref() == Some("hook unavailable"))
        .count();
    assert_eq!((ok, busy), (2, 3));
    assert_eq!(
        metric(&s, "plexus_hook_calls_total{hook=\"join\",result=\"busy\"}").await,
        3
    );
    assert_eq!(
        recv.at("/join").len(),
        2,
        "the refused calls never reached the app"
    );
}

#[tokio::test]
async fn breaker_opens_after_failures_and_cache_spares_calls() {
    let recv = Receiver::start(|path, body| match (path, body["topic"].as_str()) {
        ("/join", Some("room:down")) => Answer::Status(500),
        _ => Answer::Json(json!({"allow": true})),
    })
    .await;
    let s = start(
        &recv,
        &[
            ("PLEXUS_HOOK_BREAKER_THRESHOLD", "3"),
            ("PLEXUS_HOOK_BREAKER_COOLDOWN_SECS", "1"),
            ("PLEXUS_HOOK_JOIN_CACHE_SECS", "30"),
        ],
    )
    .await;
    let mut c = s.client("alice").await;
    // The cache: the same join twice is one call.
    assert!(c.join("room:a", json!({})).await.unwrap().is_ok());
    assert!(c.leave("room:a").await.unwrap().is_ok());
    assert!(c.join("room:a", json!({})).await.unwrap().is_ok());
    assert_eq!(recv.at("/join").len(), 1);
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"join\",result=\"cached\"}"
        )
        .await,
        1
    );
    // The breaker: three failures open it; then calls fail without reaching the app.
    for _ in 0..5 {
        let r = c.join("room:down", json!({})).await.unwrap();
        assert_eq!(r.reason(), Some("hook unavailable".into()));
    }
    let calls = |r: &Receiver| {
        r.at("/join")
            .iter()
            .filter(|q| q.body["topic"] == "room:down")
            .count()
    };
    assert_eq!(calls(&recv), 3);
    assert_eq!(metric(&s, "plexus_hook_circuit_opened_total").await, 1);
    assert_eq!(
        metric(
            &s,
            "plexus_hook_calls_total{hook=\"join\",result=\"circuit_open\"}"
        )
        .await,
        2
    );
    // After the cooldown one trial goes out; the app is back: the circuit closes.
    recv.set_handler(|_, _| Answer::Json(json!({"allow": true})));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(c.join("room:down", json!({})).await.unwrap().is_ok());
    assert!(c.join("room:b", json!({})).await.unwrap().is_ok());
}

/// The half-open circuit's trial call is awaited inside the WebSocket handshake; a client
/// that hangs up during it cancels the call. The trial must be given back: the next call
/// goes out and closes the circuit (it used to stay open for good: 503 until a restart).
#[tokio::test]
async fn a_trial_cancelled_by_a_hangup_does_not_jam_the_breaker() {
    let recv = Receiver::start(app).await;
    let s = start(
        &recv,
        &[
            ("PLEXUS_HOOK_BREAKER_THRESHOLD", "1"),
            ("PLEXUS_HOOK_BREAKER_COOLDOWN_SECS", "1"),
            ("PLEXUS_HOOK_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    let (status, body) = handshake(&s, "broken").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(handshake(&s, "alice").await.0, 503, "the circuit is open");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The trial: the app is slow, and the client gives up and closes its socket.
    let path = format!("/socket/websocket?vsn=2.0.0&token={}", s.token("slow"));
    let hung_up = tokio::time::timeout(
        Duration::from_millis(500),
        common::http_raw(s.port, "GET", &path, &ws_headers(), ""),
    )
    .await;
    assert!(hung_up.is_err(), "the slow handshake was cut short");
    let deadline = Instant::now() + Duration::from_secs(2);
    while recv.at("/connect").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recv.at("/connect").len(), 2, "the trial reached the app");
    tokio::time::sleep(Duration::from_millis(200)).await; // the server notices the hangup
    let (status, body) = handshake(&s, "alice").await;
    assert_eq!(
        status, 101,
        "the next call is the trial and closes the circuit: {body}"
    );
    assert_eq!(handshake(&s, "bob").await.0, 101);
}

/// The join cache holds small decisions only, keyed on the claims too: a join with large
/// params is asked every time (not kept), a token whose claims changed is asked again, and
/// the bytes bound drops the oldest decisions.
#[tokio::test]
async fn join_cache_keeps_small_decisions_keyed_on_claims_and_bounded_in_bytes() {
    let recv = Receiver::start(app).await;
    let s = start(
        &recv,
        &[
            ("PLEXUS_HOOK_JOIN_CACHE_SECS", "30"),
            ("PLEXUS_HOOK_JOIN_CACHE_MAX_BYTES", "1024"),
        ],
    )
    .await;
    let joins = |topic: &str| {
        recv.at("/join")
            .iter()
            .filter(|q| q.body["topic"] == topic)
            .count()
    };
    let client = |name: &str| {
        let token = plexus_core::auth::Issuer::hs256(common::SECRET.as_bytes())
            .issue("alice", &[], Some(name), 3600)
            .unwrap();
        plexus_client::Client::connect(plexus_client::ConnectOptions::new(s.url()).token(token))
    };
    let mut c = client("Alice").await.unwrap();
    // Large params: not cached.
    let big = json!({ "blob": "x".repeat(8192) });
    for _ in 0..2 {
        assert!(c.join("room:big", big.clone()).await.unwrap().is_ok());
        assert!(c.leave("room:big").await.unwrap().is_ok());
    }
    assert_eq!(joins("room:big"), 2, "large params are never cached");
    // Small params: cached for the same claims, asked again with other claims.
    for _ in 0..2 {
        assert!(c.join("room:a", json!({"x": 1})).await.unwrap().is_ok());
        assert!(c.leave("room:a").await.unwrap().is_ok());
    }
    assert_eq!(joins("room:a"), 1);
    let mut renamed = client("Alice B").await.unwrap();
    assert!(renamed
        .join("room:a", json!({"x": 1}))
        .await
        .unwrap()
        .is_ok());
    assert_eq!(
        joins("room:a"),
        2,
        "a token with other claims is asked again"
    );
    // The bytes bound (1 KiB: a few entries) drops the oldest.
    for i in 0..20 {
        let topic = format!("room:n{i}");
        assert!(c.join(&topic, json!({})).await.unwrap().is_ok());
        assert!(c.leave(&topic).await.unwrap().is_ok());
    }
    assert!(c.join("room:n0", json!({})).await.unwrap().is_ok());
    assert_eq!(joins("room:n0"), 2, "the oldest decision was dropped");
    assert!(c.join("room:n19", json!({})).await.unwrap().is_ok());
    assert_eq!(joins("room:n19"), 1, "the newest is still cached");
}

/// The channel cap and `max_per_user` refuse a join before the application is asked.
#[tokio::test]
async fn channel_caps_refuse_before_the_join_hook_is_called() {
    let recv = Receiver::start(app).await;
    let join = recv.url("/join");
    let config = "[limits]\nmax_channels_per_connection = 2\n\n[[channels]]\ntopic = \"capped:*\"\nmax_per_user = 1\n";
    let s = Server::start_with(
        Some(config),
        &[
            ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
            ("PLEXUS_JOIN_HOOK_URL", join.as_str()),
        ],
    )
    .await;
    let mut a = s.client("alice").await;
    assert!(a.join("capped:1", json!({})).await.unwrap().is_ok());
    assert!(a.join("capped:2", json!({})).await.unwrap().is_ok());
    let r = a.join("capped:3", json!({})).await.unwrap();
    assert_eq!(r.reason(), Some("too many channels".into()));
    let mut again = s.client("alice").await;
    let r = again.join("capped:1", json!({})).await.unwrap();
    assert_eq!(
        r.reason(),
        Some("already joined the maximum number of times (max_per_user)".into())
    );
    let asked: Vec<Value> = recv
        .at("/join")
        .iter()
        .map(|q| q.body["topic"].clone())
        .collect();
    assert_eq!(
        asked,
        [json!("capped:1"), json!("capped:2")],
        "refused joins never reach the app"
    );
}

#[tokio::test]
async fn longpoll_joins_go_through_the_hook() {
    let recv = Receiver::start(app).await;
    let s = start(&recv, &[]).await;
    let token = s.token("alice");
    let (status, body) = s
        .http(
            "GET",
            &format!("/socket/longpoll?vsn=2.0.0&token={token}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let session = json(&body)["token"].as_str().unwrap().to_owned();
    let path = format!("/socket/longpoll?vsn=2.0.0&token={token}&token={session}");
    let msgs = r#"["1","1","room:deny","phx_join",{}]"#;
    let (status, _) = s.http("POST", &path, &[], msgs).await.unwrap();
    assert!(status == 200 || status == 204, "{status}");
    let (_, body) = s.http("GET", &path, &[], "").await.unwrap();
    assert!(body.contains("not in team 42"), "{body}");
    assert_eq!(recv.at("/join").len(), 1);
    // Connecting over LongPoll went through the connect hook too.
    let (status, body) = s
        .http(
            "GET",
            &format!("/socket/longpoll?vsn=2.0.0&token={}", s.token("banned")),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("banned user"), "{body}");
}

#[tokio::test]
async fn history_polling_asks_the_join_hook_too() {
    let recv = Receiver::start(app).await;
    let s = start(&recv, &[]).await;
    let token = s.token("alice");
    let (status, body) = s
        .http(
            "GET",
            &format!("/api/channels/hist:deny/history?token={token}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        (status, json(&body)),
        (403, json!({"error": "not in team 42"}))
    );
    let (status, body) = s
        .http(
            "GET",
            &format!("/api/channels/hist:ok/history?token={token}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let req = &recv.at("/join")[0].body;
    assert_eq!(
        (req["topic"].as_str(), &req["params"]),
        (Some("hist:deny"), &json!({"history": true}))
    );
    assert!(req.get("conn").is_none());
    recv.assert_all_signed();
}

#[tokio::test]
async fn supabase_joins_and_broadcasts_go_through_the_hooks() {
    let recv = Receiver::start(app).await;
    let config = format!(
        "profile = \"dev\"\n[supabase]\nenabled = true\n[[channels]]\ntopic = \"sb:*\"\npush_hook = \"{}\"\n",
        recv.url("/push")
    );
    let join = recv.url("/join");
    let env = [
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_JOIN_HOOK_URL", join.as_str()),
    ];
    let s = Server::start_with(Some(&config), &env).await;
    let connect = |sub: &str| {
        let url = format!("ws://127.0.0.1:{}/realtime/v1", s.port);
        plexus_client::Client::connect(
            plexus_client::ConnectOptions::new(url).param("apikey", s.token(sub)),
        )
    };
    let (mut a, mut b) = (connect("a").await.unwrap(), connect("b").await.unwrap());
    let config = |sub: &str| json!({"config": {"broadcast": {"self": false, "ack": true}, "presence": {"key": ""}, "postgres_changes": []}, "access_token": s.token(sub)});
    let r = a.join("realtime:sb:deny", config("a")).await.unwrap();
    assert_eq!(r.reason(), Some("not in team 42".into()));
    assert!(a.join("realtime:sb:1", config("a")).await.unwrap().is_ok());
    assert!(b.join("realtime:sb:1", config("b")).await.unwrap().is_ok());
    let sent = json!({"type": "broadcast", "event": "new_msg", "payload": {"text": "store"}});
    let r = a
        .push_json("realtime:sb:1", "broadcast", &sent)
        .await
        .unwrap();
    assert_eq!((r.status.as_str(), r.json()), ("ok", json!({"id": 7})));
    let m = b.recv_event("realtime:sb:1", "broadcast").await.unwrap();
    assert_eq!(
        json(m.payload.as_json().unwrap().get()),
        json!({"type": "broadcast", "event": "new_msg", "payload": {"id": 7, "text": "stored"}})
    );
    // The application sees the event and payload inside the envelope, and never the token.
    let push = &recv.at("/push")[0].body;
    assert_eq!(
        (push["event"].as_str(), &push["payload"]),
        (Some("new_msg"), &json!({"text": "store"}))
    );
    let joined = &recv.at("/join")[0].body;
    assert!(joined["params"].get("access_token").is_none(), "{joined}");
    assert!(joined["params"]["config"].is_object());
    recv.assert_all_signed();
}
