//! Pusher's HTTP API on two nodes sharing Redis: an event published through one node reaches
//! Phoenix clients on the other, channel queries count subscribers and presence of every node,
//! and `terminate_connections` closes the user's connections everywhere. Requests are signed
//! with `plexus_core::pusher::api_auth::sign`, the official SDKs' scheme.

mod common;

use common::{json, Server};
use plexus_core::pusher::api_auth::sign;
use plexus_core::pusher::PusherApp;
use serde_json::json;

const CONFIG: &str = r#"
profile = "dev"
broker = "redis"
[redis]
node_timeout_secs = 2
[[channels]]
topic = "presence-*"
presence = true
[[channels]]
topic = "news-*"
"#;

fn app() -> PusherApp {
    PusherApp {
        app_id: "5".into(),
        key: "cluster-key".into(),
        secret: "cluster-secret-0123456789".into(),
        max_presence_members: 100,
    }
}

async fn nodes(redis: &impl common::RedisUrl) -> Vec<Server> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let env = [
            ("PLEXUS_REDIS_URL", url.as_str()),
            ("PLEXUS_PUSHER_APP_ID", "5"),
            ("PLEXUS_PUSHER_KEY", "cluster-key"),
            ("PLEXUS_PUSHER_SECRET", "cluster-secret-0123456789"),
        ];
        nodes.push(Server::start_with(Some(CONFIG), &env).await);
    }
    nodes
}

async fn signed(
    s: &Server,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let query = sign(&app(), method, path, params, body.as_bytes(), now);
    let (status, resp) = s
        .http(method, &format!("{path}?{query}"), &[], body)
        .await
        .unwrap();
    (status, json(&resp))
}

#[tokio::test]
async fn events_queries_and_terminate_across_nodes() {
    let redis = common::SuiteRedis::start().await;
    let nodes = nodes(&redis).await;
    let mut on_b = nodes[1].client("bob").await;
    let mut also_b = nodes[1].client("carol").await;
    assert!(on_b.join("news-x", json!({})).await.unwrap().is_ok());
    assert!(on_b.join("presence-room", json!({})).await.unwrap().is_ok());
    assert!(also_b
        .join("presence-room", json!({}))
        .await
        .unwrap()
        .is_ok());

    // Published through node A, received on node B.
    let body = json!({ "name": "tick", "channel": "news-x", "data": "{\"n\":1}" }).to_string();
    let (st, resp) = signed(&nodes[0], "POST", "/apps/5/events", &[], &body).await;
    assert_eq!((st, &resp), (200, &json!({})));
    let m = on_b.recv_event("news-x", "tick").await.unwrap();
    assert_eq!(m.payload.as_json().unwrap().get(), r#"{"n":1}"#);

    // Node A sees node B's subscribers and presence.
    let (st, info) = signed(
        &nodes[0],
        "GET",
        "/apps/5/channels/presence-room",
        &[("info", "subscription_count,user_count")],
        "",
    )
    .await;
    assert_eq!(st, 200, "{info}");
    assert_eq!(
        info,
        json!({ "occupied": true, "subscription_count": 2, "user_count": 2 })
    );
    let (_, users) = signed(
        &nodes[0],
        "GET",
        "/apps/5/channels/presence-room/users",
        &[],
        "",
    )
    .await;
    assert_eq!(
        users,
        json!({ "users": [{ "id": "bob" }, { "id": "carol" }] })
    );
    let (_, list) = signed(&nodes[0], "GET", "/apps/5/channels", &[], "").await;
    assert_eq!(
        list,
        json!({ "channels": { "news-x": {}, "presence-room": {} } })
    );

    // Terminated through node A: bob's connection on node B closes, carol's stays.
    let (st, resp) = signed(
        &nodes[0],
        "POST",
        "/apps/5/users/bob/terminate_connections",
        &[],
        "{}",
    )
    .await;
    assert_eq!((st, &resp), (200, &json!({})));
    let (code, _) = on_b.wait_close().await.unwrap();
    assert_eq!(code, Some(1001));
    let body = json!({ "name": "still", "channel": "presence-room", "data": "1" }).to_string();
    let (st, _) = signed(&nodes[0], "POST", "/apps/5/events", &[], &body).await;
    assert_eq!(st, 200);
    let m = also_b.recv_event("presence-room", "still").await.unwrap();
    assert_eq!(m.payload.as_json().unwrap().get(), "1");
}
