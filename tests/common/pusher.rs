//! Pusher mode for the tests: the app's credentials, a server started with them, raw
//! WebSocket frames as pusher-js sends and reads them, and channel signatures.
#![allow(dead_code)]

use super::{json, Server};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

pub const APP_ID: &str = "4242";
pub const KEY: &str = "app-key-123";
pub const APP_SECRET: &str = "app-secret-0123456789abcdef";

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Any WebSocket this file speaks over (plain or TLS).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Io for T {}

pub fn pusher_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("PLEXUS_PUSHER_APP_ID", APP_ID),
        ("PLEXUS_PUSHER_KEY", KEY),
        ("PLEXUS_PUSHER_SECRET", APP_SECRET),
    ]
}

pub async fn start(config: Option<&str>) -> Server {
    Server::start_with(config, &pusher_env()).await
}

pub async fn open(s: &Server, path: &str) -> Ws {
    let uri = format!("ws://127.0.0.1:{}{path}", s.port);
    let (ws, _) = ClientBuilder::new()
        .uri(&uri)
        .unwrap()
        .connect()
        .await
        .unwrap();
    ws
}

/// The next frame, as JSON, other than a `pusher_internal:subscription_count` (which comes
/// once a second at most, whenever a channel's count changed: see [`next_frame`]). Panics on
/// a close or after 5 s.
pub async fn next<S: Io>(ws: &mut WebSocketStream<S>) -> Value {
    loop {
        let f = next_frame(ws).await;
        if f["event"] != "pusher_internal:subscription_count" {
            return f;
        }
    }
}

/// The next frame, as JSON, whatever it is (panics on a close or after 5 s).
pub async fn next_frame<S: Io>(ws: &mut WebSocketStream<S>) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the connection is open")
            .expect("a valid frame");
        if let Some(t) = m.as_text() {
            return json(t);
        }
        assert!(!m.is_close(), "closed: {:?}", m.as_close());
    }
}

/// Reads until the close frame; returns its code.
pub async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a close within 10 s")
            .expect("a close frame before the end")
            .expect("a valid frame");
        if let Some((code, _)) = m.as_close() {
            return code.into();
        }
    }
}

pub async fn send<S: Io>(ws: &mut WebSocketStream<S>, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Connects as pusher-js does and returns the socket and its socket_id.
pub async fn connect(s: &Server) -> (Ws, String) {
    let mut ws = open(
        s,
        &format!("/app/{KEY}?protocol=7&client=js&version=8.4.0&flash=false"),
    )
    .await;
    let hello = next(&mut ws).await;
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
    let data = json(hello["data"].as_str().expect("data is a JSON string"));
    let socket_id = data["socket_id"].as_str().unwrap().to_owned();
    (ws, socket_id)
}

pub fn sign(socket_id: &str, channel: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(format!("{socket_id}:{channel}").as_bytes());
    format!("{KEY}:{}", hex::encode(mac.finalize().into_bytes()))
}

pub async fn subscribe(ws: &mut Ws, channel: &str, auth: Option<String>) -> Value {
    let mut data = json!({ "channel": channel });
    if let Some(a) = auth {
        data["auth"] = a.into();
    }
    send(ws, json!({"event": "pusher:subscribe", "data": data})).await;
    next(ws).await
}

pub fn succeeded(channel: &str) -> Value {
    json!({"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"})
}

pub fn sign_presence(socket_id: &str, channel: &str, channel_data: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(format!("{socket_id}:{channel}:{channel_data}").as_bytes());
    format!("{KEY}:{}", hex::encode(mac.finalize().into_bytes()))
}

/// Subscribes to a presence channel as `user_id` with `user_info`; returns the answer.
pub async fn join_presence(ws: &mut Ws, socket_id: &str, channel: &str, member: Value) -> Value {
    let data = member.to_string();
    let auth = sign_presence(socket_id, channel, &data);
    send(
        ws,
        json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}}),
    )
    .await;
    next(ws).await
}

/// The `presence` of a presence channel's subscription_succeeded.
pub fn presence_of(frame: &Value) -> Value {
    assert_eq!(
        frame["event"], "pusher_internal:subscription_succeeded",
        "{frame}"
    );
    json(frame["data"].as_str().unwrap())["presence"].clone()
}

/// The app as Pusher's server SDKs know it (signing HTTP API requests).
pub fn app() -> plexus_core::pusher::PusherApp {
    plexus_core::pusher::PusherApp {
        app_id: APP_ID.into(),
        key: KEY.into(),
        secret: APP_SECRET.into(),
        max_presence_members: 100,
    }
}

/// `key:hex(HMAC-SHA256(secret, "socket_id::user::user_data"))`: a `pusher:signin`'s `auth`.
pub fn sign_user(socket_id: &str, user_data: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(format!("{socket_id}::user::{user_data}").as_bytes());
    format!("{KEY}:{}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends `pusher:signin` with `auth` and `user_data`; returns the answer.
pub async fn signin(ws: &mut Ws, auth: &str, user_data: &str) -> Value {
    send(
        ws,
        json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
    )
    .await;
    next(ws).await
}

/// `pusher:signin` as the user of `user_data`, signed for `socket_id`; returns the answer.
pub async fn signin_as(ws: &mut Ws, socket_id: &str, user_data: &str) -> Value {
    signin(ws, &sign_user(socket_id, user_data), user_data).await
}

/// A request to Pusher's HTTP API, signed as the SDKs sign it (`body` null: none).
pub async fn api(s: &Server, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let query =
        plexus_core::pusher::api_auth::sign(&app(), method, path, &[], body.as_bytes(), now);
    let (status, resp) = s
        .http(method, &format!("{path}?{query}"), &[], &body)
        .await
        .unwrap();
    (status, json(&resp))
}

/// Publishes `name` with `data` on `channel` through the HTTP API (leaving out `socket_id`).
pub async fn trigger(s: &Server, channel: &str, name: &str, data: &str, socket_id: Option<&str>) {
    let mut body = json!({"name": name, "channel": channel, "data": data});
    if let Some(id) = socket_id {
        body["socket_id"] = id.into();
    }
    let (status, resp) = api(s, "POST", &format!("/apps/{APP_ID}/events"), &body).await;
    assert_eq!(status, 200, "{resp}");
}

/// The configuration of a Pusher cluster node: Redis, a lost node noticed after 2 s.
pub const CLUSTER_CONFIG: &str = "broker = \"redis\"\n[redis]\nnode_timeout_secs = 2\n";

/// Two Plexus nodes in Pusher mode sharing `redis`, with `config` (e.g. [`CLUSTER_CONFIG`]
/// plus rules).
pub async fn pusher_cluster(redis: &impl super::RedisUrl, config: &str) -> (Server, Server) {
    let url = redis.url();
    let mut env = pusher_env();
    env.push(("PLEXUS_REDIS_URL", &url));
    let n0 = Server::start_with(Some(config), &env).await;
    let n1 = Server::start_with(Some(config), &env).await;
    (n0, n1)
}
