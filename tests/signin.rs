//! An anonymous connection's sign-in (Supabase's anon key, then `setAuth`/`refresh_token` with
//! a user's JWT), over real sockets against the real server and a real application receiver:
//! the connect hook is asked about the user (a refusal refuses the sign-in, the connection
//! stays anonymous); the join hooks of the joined channels are asked again with the user
//! (a refusal closes that channel with the reason); and the webhooks around it match up: the
//! `signin` event names both ids, the channels closed by the sign-in are left by the
//! anonymous id that joined them; and on a Redis cluster the connection moves to the user's
//! cluster-wide connection cap.

mod common;

use common::receiver::{Answer, Receiver, HOOK_SECRET};
use common::tokens::{anon_key, connect, supabase_user_jwt};
use common::Server;
use plexus_client::protocol::Payload;
use serde_json::{json, Value};
use std::time::Duration;

/// Rules by Supabase's `role` claim; `open:*` has no join hook.
const CONFIG: &str = r#"
profile = "dev"
[auth]
roles_claim = "role"
[supabase]
enabled = true
[[channels]]
topic = "visitors*"
join_roles = ["anon"]
[[channels]]
topic = "open:*"
join_hook = "off"
[[channels]]
topic = "*"
"#;

async fn refresh(c: &mut plexus_client::Client, token: &str) -> plexus_client::Reply {
    c.request(
        None,
        "phoenix",
        "refresh_token",
        Payload::json(&json!({ "token": token })).expect("payload"),
    )
    .await
    .expect("reply")
}

fn body(m: &plexus_client::protocol::Message) -> Value {
    serde_json::from_str(m.payload.as_json().expect("JSON").get()).expect("JSON payload")
}

/// The application: refuses user `banned` at connect, user `eve` on `team:*` channels.
fn app(path: &str, body: &Value) -> Answer {
    let sub = body["sub"].as_str().unwrap_or("");
    let topic = body["topic"].as_str().unwrap_or("");
    match (path, sub) {
        ("/connect", "banned") => Answer::Json(json!({"allow": false, "reason": "banned user"})),
        ("/connect", "down") => Answer::Status(500),
        ("/join", "eve") if topic.starts_with("team:") || topic.starts_with("realtime:team:") => {
            Answer::Json(json!({"allow": false, "reason": "not in team 42"}))
        }
        _ => Answer::Json(json!({"allow": true})),
    }
}

async fn start_with_hooks(recv: &Receiver) -> Server {
    let (connect, join) = (recv.url("/connect"), recv.url("/join"));
    Server::start_with(
        Some(CONFIG),
        &[
            ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
            ("PLEXUS_CONNECT_HOOK_URL", connect.as_str()),
            ("PLEXUS_JOIN_HOOK_URL", join.as_str()),
            ("PLEXUS_HOOK_TIMEOUT_MS", "1000"),
        ],
    )
    .await
}

#[tokio::test]
async fn the_connect_hook_decides_a_sign_in_and_a_refused_one_stays_anonymous() {
    let recv = Receiver::start(app).await;
    let s = start_with_hooks(&recv).await;
    // Connecting as banned directly is refused by the connect hook.
    let (status, _, why) = common::http_raw(
        s.port,
        "GET",
        &format!(
            "/socket/websocket?vsn=2.0.0&token={}",
            supabase_user_jwt("banned")
        ),
        &common::ws_headers(),
        "",
    )
    .await
    .expect("answer");
    assert_eq!(status, 403, "{why}");
    // Signing in as banned on an anonymous connection is refused the same way.
    let mut c = connect(&s, &anon_key()).await;
    assert!(c.join("room:lobby", json!({})).await.expect("join").is_ok());
    let r = refresh(&mut c, &supabase_user_jwt("banned")).await;
    assert!(!r.is_ok(), "banned signed in: {:?}", r.json());
    assert_eq!(r.reason().as_deref(), Some("banned user"), "{:?}", r.json());
    assert!(
        recv.at("/connect")
            .iter()
            .any(|r| r.body["sub"] == "banned"),
        "the connect hook was asked about the user"
    );
    // A connect hook that does not answer refuses the sign-in too.
    let r = refresh(&mut c, &supabase_user_jwt("down")).await;
    assert_eq!(
        r.reason().as_deref(),
        Some("hook unavailable"),
        "{:?}",
        r.json()
    );
    // The connection stays anonymous, in its channels: the one sign-in is still to come.
    let r = c
        .push_json("room:lobby", "msg", &json!({"text": "hi"}))
        .await
        .expect("push");
    assert!(r.is_ok(), "{:?}", r.json());
    let r = refresh(&mut c, &supabase_user_jwt("carol")).await;
    assert!(r.is_ok(), "{:?}", r.json());
    recv.assert_all_signed();
}

#[tokio::test]
async fn a_sign_in_asks_the_join_hooks_again_and_closes_what_they_refuse() {
    let recv = Receiver::start(app).await;
    let s = start_with_hooks(&recv).await;
    let mut c = connect(&s, &anon_key()).await;
    for (topic, params) in [
        ("team:42", json!({"team": 42})),
        ("realtime:team:sb", json!({"config": {}})),
        ("room:lobby", json!({})),
        ("open:hall", json!({})),
    ] {
        let r = c.join(topic, params).await.expect("join");
        assert!(r.is_ok(), "{topic}: {:?}", r.json());
    }
    let r = refresh(&mut c, &supabase_user_jwt("eve")).await;
    assert!(r.is_ok(), "{:?}", r.json());
    // The channels eve's join hook refuses are closed with its reason (in any order).
    let (mut close, mut notice) = (None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while close.is_none() || notice.is_none() {
        let m = tokio::time::timeout_at(deadline, c.recv())
            .await
            .expect("team:42 and realtime:team:sb closed after the sign-in")
            .expect("message");
        match (m.topic.as_str(), m.event.as_str()) {
            ("team:42", "phx_close") => close = Some(body(&m)),
            ("realtime:team:sb", "system") => notice = Some(body(&m)),
            _ => {}
        }
    }
    let why = close.unwrap_or_default()["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(why.contains("not in team 42"), "{why}");
    let message = notice.unwrap_or_default()["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("not in team 42"), "{message}");
    // The join hook was asked with eve and the join's params.
    let asked: Vec<Value> = recv
        .at("/join")
        .into_iter()
        .map(|r| r.body)
        .filter(|b| b["sub"] == "eve")
        .collect();
    let team = asked.iter().find(|b| b["topic"] == "team:42");
    assert_eq!(
        team.map(|b| b["params"].clone()),
        Some(json!({"team": 42})),
        "{asked:#?}"
    );
    assert!(
        !asked.iter().any(|b| b["topic"] == "open:hall"),
        "no join hook for open:*: {asked:#?}"
    );
    // The others stay joined, as eve.
    for topic in ["room:lobby", "open:hall"] {
        let r = c
            .push_json(topic, "msg", &json!({"text": "hi"}))
            .await
            .expect("push");
        assert!(r.is_ok(), "{topic}: {:?}", r.json());
    }
    let r = c
        .push_json("team:42", "msg", &json!({}))
        .await
        .expect("push");
    assert_eq!(r.reason().as_deref(), Some("unmatched topic"));
    recv.assert_all_signed();
}

#[tokio::test]
async fn webhooks_around_a_sign_in_match_up() {
    let recv = Receiver::start(|_: &str, _: &Value| Answer::Json(json!({}))).await;
    let url = recv.url("/webhook");
    let s = Server::start_with(
        Some(CONFIG),
        &[
            ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
            ("PLEXUS_WEBHOOK_URL", url.as_str()),
        ],
    )
    .await;
    let mut c = connect(&s, &anon_key()).await;
    assert!(c.join("open:a", json!({})).await.expect("join").is_ok());
    assert!(c
        .join("visitors:hall", json!({}))
        .await
        .expect("join")
        .is_ok());
    let r = refresh(&mut c, &supabase_user_jwt("ivy")).await;
    assert!(r.is_ok(), "{:?}", r.json());
    c.close().await;
    let events = recv
        .wait_events(Duration::from_secs(10), |e| {
            e.iter().any(|e| e["type"] == "disconnect")
        })
        .await;
    let anon = events
        .iter()
        .find(|e| e["type"] == "connect")
        .and_then(|e| e["sub"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(anon.starts_with("anon:"), "{events:#?}");
    let seen: Vec<String> = events
        .iter()
        .map(|e| {
            let sub = e["sub"].as_str().unwrap_or("-");
            let sub = if sub == anon { "anon" } else { sub };
            match e["type"].as_str().unwrap_or("") {
                "signin" => format!(
                    "signin {sub} from {} keeping {}",
                    if e["anonymous"] == anon.as_str() {
                        "anon"
                    } else {
                        "?"
                    },
                    e["topics"]
                ),
                t => format!("{t} {sub} {}", e["topic"].as_str().unwrap_or("")),
            }
        })
        .filter(|e| !e.starts_with("channel_"))
        .collect();
    assert_eq!(
        seen,
        [
            "connect anon ",
            "join anon open:a",
            "join anon visitors:hall",
            // Closed by the sign-in: left by the anonymous id that joined it.
            "leave anon visitors:hall",
            r#"signin ivy from anon keeping ["open:a"]"#,
            "leave ivy open:a",
            "disconnect ivy ",
        ],
        "{events:#?}"
    );
    let conns: std::collections::HashSet<&Value> = events
        .iter()
        .filter(|e| !e["conn"].is_null())
        .map(|e| &e["conn"])
        .collect();
    assert_eq!(conns.len(), 1, "one connection throughout: {events:#?}");
    recv.assert_all_signed();
}

/// Two nodes on one Redis, one connection per user cluster-wide.
const CLUSTER: &str = r#"
profile = "dev"
broker = "redis"
[redis]
node_timeout_secs = 2
[limits]
max_connections_per_user = 1
[auth]
roles_claim = "role"
[supabase]
enabled = true
[[channels]]
topic = "*"
"#;

/// The WebSocket handshake's status with `token` on `s`.
async fn handshake(s: &Server, token: &str) -> u16 {
    let path = format!("/socket/websocket?vsn=2.0.0&token={token}");
    let (status, _, _) = common::http_raw(s.port, "GET", &path, &common::ws_headers(), "")
        .await
        .expect("answer");
    status
}

#[tokio::test]
async fn a_sign_in_moves_the_connection_to_the_users_cluster_wide_cap() {
    let redis = common::Redis::start();
    let url = redis.url();
    let a = Server::start_with(Some(CLUSTER), &[("PLEXUS_REDIS_URL", &url)]).await;
    let b = Server::start_with(Some(CLUSTER), &[("PLEXUS_REDIS_URL", &url)]).await;
    // full-id is connected on node a: signing in as full-id on node b is refused.
    let mut first = connect(&a, &supabase_user_jwt("full-id")).await;
    assert!(first.heartbeat().await.expect("heartbeat").is_ok());
    let mut c = connect(&b, &anon_key()).await;
    assert!(c.join("room:x", json!({})).await.expect("join").is_ok());
    let r = refresh(&mut c, &supabase_user_jwt("full-id")).await;
    assert_eq!(
        r.reason().as_deref(),
        Some("too many connections for this user"),
        "{:?}",
        r.json()
    );
    // Still anonymous: it may sign in as a user with room; then that user is full everywhere.
    let r = refresh(&mut c, &supabase_user_jwt("free-id")).await;
    assert!(r.is_ok(), "{:?}", r.json());
    assert_eq!(
        handshake(&a, &supabase_user_jwt("free-id")).await,
        429,
        "the signed-in connection on node b counts in free-id's cluster-wide cap"
    );
    // Its end gives the user's place back.
    c.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while std::time::Instant::now() < deadline {
        status = handshake(&a, &supabase_user_jwt("free-id")).await;
        if status == 101 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 101, "free-id's place given back");
}
