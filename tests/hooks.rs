//! Application hooks against a real HTTP receiver (tests/common/receiver.rs) that checks every
//! signature: connect, join and push hooks allowing, denying, timing out and answering
//! garbage; reply and meta passed through; a push hook that stores then broadcasts; rules
//! before hooks; LongPoll, HTTP history polling and Supabase going through the same hooks.
//! The bounds (cap, breaker, cache) are in `hook_limits.rs`.

mod common;

use common::hook_app::*;
use common::receiver::{Receiver, HOOK_SECRET};
use common::{json, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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
async fn longpoll_joins_go_through_the_hook() {
    let recv = Receiver::start(app).await;
    let s = start(&recv, &[]).await;
    let session = s.longpoll_session("alice").await;
    let token = s.token("alice");
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
