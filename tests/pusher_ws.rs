//! Pusher mode's WebSocket endpoint `/app/{key}` over raw WebSocket frames: the exact frames
//! pusher-js reads (connection_established, pong, subscription_succeeded, errors and close
//! codes), private channels' signatures, client events, and interop with the HTTP API and
//! Phoenix clients on the same topic. (tests/js/pusher.test.mjs drives the real pusher-js.)

mod common;

use common::{json, Server};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use plexus_client::protocol::Payload;
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

const APP_ID: &str = "4242";
const KEY: &str = "app-key-123";
const APP_SECRET: &str = "app-secret-0123456789abcdef";

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Any WebSocket this file speaks over (plain or TLS).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Io for T {}

fn pusher_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("PLEXUS_PUSHER_APP_ID", APP_ID),
        ("PLEXUS_PUSHER_KEY", KEY),
        ("PLEXUS_PUSHER_SECRET", APP_SECRET),
    ]
}

async fn start(config: Option<&str>) -> Server {
    Server::start_with(config, &pusher_env()).await
}

async fn open(s: &Server, path: &str) -> Ws {
    let uri = format!("ws://127.0.0.1:{}{path}", s.port);
    let (ws, _) = ClientBuilder::new()
        .uri(&uri)
        .unwrap()
        .connect()
        .await
        .unwrap();
    ws
}

/// The next frame, as JSON (panics on a close or after 5 s).
async fn next<S: Io>(ws: &mut WebSocketStream<S>) -> Value {
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
async fn close_code(ws: &mut Ws) -> u16 {
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

async fn send<S: Io>(ws: &mut WebSocketStream<S>, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Connects as pusher-js does and returns the socket and its socket_id.
async fn connect(s: &Server) -> (Ws, String) {
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

fn sign(socket_id: &str, channel: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(format!("{socket_id}:{channel}").as_bytes());
    format!("{KEY}:{}", hex::encode(mac.finalize().into_bytes()))
}

async fn subscribe(ws: &mut Ws, channel: &str, auth: Option<String>) -> Value {
    let mut data = json!({ "channel": channel });
    if let Some(a) = auth {
        data["auth"] = a.into();
    }
    send(ws, json!({"event": "pusher:subscribe", "data": data})).await;
    next(ws).await
}

fn succeeded(channel: &str) -> Value {
    json!({"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"})
}

#[tokio::test]
async fn connection_established_and_ping_pong_as_pusher_js_reads_them() {
    let s = start(None).await;
    let mut ws = open(
        &s,
        &format!("/app/{KEY}?protocol=7&client=js&version=8.4.0"),
    )
    .await;
    let hello = next(&mut ws).await;
    assert_eq!(hello["event"], "pusher:connection_established");
    assert!(hello.get("channel").is_none());
    let data = json(hello["data"].as_str().unwrap());
    let id = data["socket_id"].as_str().unwrap();
    let (a, b) = id.split_once('.').unwrap();
    assert!(
        !a.is_empty() && !b.is_empty() && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit()),
        "{id}"
    );
    // Half the idle timeout (60 s by default).
    assert_eq!(data["activity_timeout"], 30);
    send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"event": "pusher:pong", "data": {}})
    );
    // Two connections never share a socket_id.
    let (_, other) = connect(&s).await;
    assert_ne!(other, id);
}

#[tokio::test]
async fn a_wrong_key_or_protocol_is_refused_with_pusher_s_codes() {
    let s = start(None).await;
    for (path, code) in [
        ("/app/wrong-key?protocol=7".to_owned(), 4001u16),
        (format!("/app/{KEY}?protocol=5"), 4007),
        (format!("/app/{KEY}?protocol=x"), 4006),
        (format!("/app/{KEY}"), 4008),
    ] {
        let mut ws = open(&s, &path).await;
        let err = next(&mut ws).await;
        assert_eq!(err["event"], "pusher:error", "{path}");
        assert_eq!(err["data"]["code"], code, "{path}: {err}");
        assert!(err["data"]["message"].is_string());
        assert_eq!(close_code(&mut ws).await, code, "{path}");
    }
}

#[tokio::test]
async fn the_endpoint_exists_only_in_pusher_mode() {
    let s = Server::start().await;
    let headers = common::ws_headers();
    let (status, body) = s
        .http("GET", &format!("/app/{KEY}?protocol=7"), &headers, "")
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(json(&body)["error"].is_string());
}

#[tokio::test]
async fn public_channels_get_api_broadcasts_with_data_as_a_string() {
    let s = start(None).await;
    let (mut ws, _) = connect(&s).await;
    assert_eq!(subscribe(&mut ws, "news", None).await, succeeded("news"));
    s.broadcast("news", "headline", json!({"title": "hi"}))
        .await;
    let got = next(&mut ws).await;
    assert_eq!(got["event"], "headline");
    assert_eq!(got["channel"], "news");
    assert_eq!(json(got["data"].as_str().unwrap()), json!({"title": "hi"}));
    // A string payload arrives as that string.
    s.broadcast("news", "plain", json!("just text")).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"event": "plain", "channel": "news", "data": "just text"})
    );
    // Unsubscribed: nothing more. Pusher does not acknowledge an unsubscribe: the pong after
    // it shows it was handled (frames are handled in order), the pong after the broadcast that
    // the broadcast was not sent.
    send(
        &mut ws,
        json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}),
    )
    .await;
    send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next(&mut ws).await["event"], "pusher:pong");
    s.broadcast("news", "late", json!({})).await;
    send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next(&mut ws).await["event"], "pusher:pong");
}

#[tokio::test]
async fn private_channels_need_the_app_s_signature_for_this_socket() {
    let s = start(None).await;
    let (mut ws, socket_id) = connect(&s).await;
    let (_, other_id) = connect(&s).await;
    let refused = [
        None,
        Some("garbage".to_owned()),
        // Replayed: signed for another connection.
        Some(sign(&other_id, "private-a")),
        // Signed for another channel.
        Some(sign(&socket_id, "private-b")),
        // Another app's key.
        Some(sign(&socket_id, "private-a").replacen(KEY, "other-key", 1)),
    ];
    for auth in refused {
        let err = subscribe(&mut ws, "private-a", auth.clone()).await;
        assert_eq!(err["event"], "pusher:subscription_error", "{auth:?}: {err}");
        assert_eq!(err["channel"], "private-a");
        assert_eq!(err["data"]["type"], "AuthError");
        assert_eq!(err["data"]["status"], 401);
    }
    // Not joined: an API broadcast does not reach it.
    s.broadcast("private-a", "secret", json!({})).await;
    let ok = subscribe(&mut ws, "private-a", Some(sign(&socket_id, "private-a"))).await;
    assert_eq!(ok, succeeded("private-a"));
    s.broadcast("private-a", "after", json!({"n": 1})).await;
    assert_eq!(next(&mut ws).await["event"], "after");
}

#[tokio::test]
async fn bad_frames_and_unsupported_channels_get_errors_not_crashes() {
    let s = start(None).await;
    let (mut ws, _) = connect(&s).await;
    for bad in [
        "not json".to_owned(),
        json!({"event": "pusher_internal:subscription_succeeded", "channel": "x", "data": "{}"})
            .to_string(),
        json!({"event": "pusher:subscribe", "data": {}}).to_string(),
        json!({"event": "hello", "channel": "x", "data": {}}).to_string(),
    ] {
        ws.send(Message::text(bad.clone())).await.unwrap();
        let err = next(&mut ws).await;
        assert_eq!(err["event"], "pusher:error", "{bad}: {err}");
        assert!(err["data"]["message"].is_string());
    }
    for name in ["a b", "room:1", &"x".repeat(201), ""] {
        let err = subscribe(&mut ws, name, None).await;
        assert_eq!(err["event"], "pusher:error", "{name}: {err}");
    }
    for name in ["private-encrypted-room"] {
        let err = subscribe(&mut ws, name, None).await;
        assert_eq!(err["event"], "pusher:subscription_error", "{name}: {err}");
        assert_eq!(err["data"]["status"], 501);
    }
    // Pusher's reserved events cannot be published either (forged subscription_succeeded).
    let auth = format!("Bearer {}", common::API_KEY);
    let body =
        json!({"topic": "news", "event": "pusher_internal:subscription_succeeded", "payload": {}});
    let (status, _) = s
        .http(
            "POST",
            "/api/broadcast",
            &[("Authorization", &auth)],
            &body.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    // Still serving.
    assert_eq!(subscribe(&mut ws, "news", None).await, succeeded("news"));
}

#[tokio::test]
async fn client_events_on_private_channels_reach_the_others_not_the_sender() {
    let s = start(None).await;
    let (mut a, a_id) = connect(&s).await;
    let (mut b, b_id) = connect(&s).await;
    let ch = "private-chat";
    assert_eq!(
        subscribe(&mut a, ch, Some(sign(&a_id, ch))).await,
        succeeded(ch)
    );
    assert_eq!(
        subscribe(&mut b, ch, Some(sign(&b_id, ch))).await,
        succeeded(ch)
    );
    send(
        &mut a,
        json!({"event": "client-typing", "channel": ch, "data": {"who": "a"}}),
    )
    .await;
    let got = next(&mut b).await;
    assert_eq!(got["event"], "client-typing");
    assert_eq!(got["channel"], ch);
    assert_eq!(json(got["data"].as_str().unwrap()), json!({"who": "a"}));
    // Not echoed: A's next frame is the pong.
    send(&mut a, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next(&mut a).await["event"], "pusher:pong");

    // Not on public channels, nor on channels not subscribed.
    assert_eq!(subscribe(&mut a, "lobby", None).await, succeeded("lobby"));
    send(
        &mut a,
        json!({"event": "client-x", "channel": "lobby", "data": {}}),
    )
    .await;
    assert_eq!(next(&mut a).await["event"], "pusher:error");
    send(
        &mut a,
        json!({"event": "client-x", "channel": "private-other", "data": {}}),
    )
    .await;
    assert_eq!(next(&mut a).await["event"], "pusher:error");

    // 10 per second: a burst of 15 gets at least one 4301 error.
    for i in 0..15 {
        send(
            &mut a,
            json!({"event": "client-n", "channel": ch, "data": {"i": i}}),
        )
        .await;
    }
    let mut limited = false;
    for _ in 0..15 {
        let m = next(&mut a).await;
        if m["event"] == "pusher:error" && m["data"]["code"] == 4301 {
            limited = true;
            break;
        }
    }
    assert!(limited, "no 4301 error after 15 client events at once");
}

#[tokio::test]
async fn pusher_and_phoenix_clients_share_a_topic_both_ways() {
    // A rule governs the topic for both protocols.
    let config = "[[channels]]\ntopic = \"private-room-*\"\n";
    let s = start(Some(config)).await;
    let ch = "private-room-1";
    let (mut ws, id) = connect(&s).await;
    assert_eq!(
        subscribe(&mut ws, ch, Some(sign(&id, ch))).await,
        succeeded(ch)
    );
    let mut phx = s.client("alice").await;
    assert!(phx.join(ch, json!({})).await.unwrap().is_ok());

    // Phoenix → Pusher.
    let reply = phx
        .push(
            ch,
            "msg",
            Payload::json(&json!({"text": "from phoenix"})).unwrap(),
        )
        .await
        .unwrap();
    assert!(reply.is_ok());
    let got = next(&mut ws).await;
    assert_eq!(got["event"], "msg");
    assert_eq!(
        json(got["data"].as_str().unwrap()),
        json!({"text": "from phoenix"})
    );

    // Pusher → Phoenix.
    send(
        &mut ws,
        json!({"event": "client-msg", "channel": ch, "data": {"text": "from pusher"}}),
    )
    .await;
    let m = phx.recv_event(ch, "client-msg").await.unwrap();
    assert_eq!(common::cluster::payload(&m), json!({"text": "from pusher"}));
}

#[tokio::test]
async fn the_server_pings_a_silent_connection_then_closes_it_with_4201() {
    let config = "[limits]\nidle_timeout_secs = 2\n";
    let s = start(Some(config)).await;
    let mut ws = open(&s, &format!("/app/{KEY}?protocol=7")).await;
    let hello = next(&mut ws).await;
    assert_eq!(json(hello["data"].as_str().unwrap())["activity_timeout"], 1);
    assert_eq!(
        next(&mut ws).await,
        json!({"event": "pusher:ping", "data": {}})
    );
    // Answered: pinged again later rather than closed.
    send(&mut ws, json!({"event": "pusher:pong", "data": {}})).await;
    assert_eq!(next(&mut ws).await["event"], "pusher:ping");
    // Not answered: closed as Pusher closes it.
    assert_eq!(close_code(&mut ws).await, 4201);
}

#[tokio::test]
async fn wss_through_plexus_s_tls() {
    let dir = std::env::temp_dir().join(format!("plexus-pusher-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let s = start(Some(&config)).await;
    let tls = plexus_client::ConnectOptions::new("wss://localhost")
        .tls_roots_pem(c.cert.pem().as_bytes())
        .unwrap()
        .tls
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let name = plexus_client::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let uri = format!("wss://localhost:{}/app/{KEY}?protocol=7&client=js", s.port);
    let (mut ws, _) = ClientBuilder::new()
        .uri(&uri)
        .unwrap()
        .connect_on(stream)
        .await
        .unwrap();
    let hello = next(&mut ws).await;
    assert_eq!(hello["event"], "pusher:connection_established");
    send(
        &mut ws,
        json!({"event": "pusher:subscribe", "data": {"channel": "news"}}),
    )
    .await;
    assert_eq!(next(&mut ws).await, succeeded("news"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn prod_profile_public_channels_are_open_to_pusher_clients_only() {
    // Prod denies topics no rule matches to Phoenix clients; a Pusher connection's authority
    // is the app's signature (public channels need none).
    let config = format!(
        "profile = \"prod\"\njwt_secret = \"{}\"\n[[channels]]\ntopic = \"private-staff\"\njoin_roles = [\"staff\"]\n",
        common::SECRET
    );
    let s = start(Some(&config)).await;
    let (mut ws, id) = connect(&s).await;
    assert_eq!(subscribe(&mut ws, "news", None).await, succeeded("news"));
    let mut phx = s.client("alice").await;
    assert!(!phx.join("news", json!({})).await.unwrap().is_ok());
    // A rule that matches governs Pusher connections too: its roles, which they do not have.
    let err = subscribe(&mut ws, "private-staff", Some(sign(&id, "private-staff"))).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    assert_eq!(err["data"]["status"], 403);
}

#[tokio::test]
async fn across_two_nodes_client_events_and_api_broadcasts_reach_the_other_node() {
    let redis = common::Redis::start();
    let url = redis.url();
    let mut env = pusher_env();
    env.push(("PLEXUS_REDIS_URL", &url));
    let config = "broker = \"redis\"\n[redis]\nnode_timeout_secs = 2\n";
    let n0 = Server::start_with(Some(config), &env).await;
    let n1 = Server::start_with(Some(config), &env).await;
    let ch = "private-cluster";
    let (mut a, a_id) = connect(&n0).await;
    let (mut b, b_id) = connect(&n1).await;
    assert_eq!(
        subscribe(&mut a, ch, Some(sign(&a_id, ch))).await,
        succeeded(ch)
    );
    assert_eq!(
        subscribe(&mut b, ch, Some(sign(&b_id, ch))).await,
        succeeded(ch)
    );
    // A socket_id signed for on one node is refused on the other (another socket).
    let (mut c, _) = connect(&n1).await;
    let err = subscribe(&mut c, ch, Some(sign(&a_id, ch))).await;
    assert_eq!(err["event"], "pusher:subscription_error");

    send(
        &mut b,
        json!({"event": "client-hi", "channel": ch, "data": {"from": "n1"}}),
    )
    .await;
    let got = next(&mut a).await;
    assert_eq!(got["event"], "client-hi");
    assert_eq!(json(got["data"].as_str().unwrap()), json!({"from": "n1"}));

    n1.broadcast(ch, "news", json!({"n": 1})).await;
    assert_eq!(next(&mut a).await["event"], "news");
    assert_eq!(next(&mut b).await["event"], "news");
}

fn sign_presence(socket_id: &str, channel: &str, channel_data: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(format!("{socket_id}:{channel}:{channel_data}").as_bytes());
    format!("{KEY}:{}", hex::encode(mac.finalize().into_bytes()))
}

/// Subscribes to a presence channel as `user_id` with `user_info`; returns the answer.
async fn join_presence(ws: &mut Ws, socket_id: &str, channel: &str, member: Value) -> Value {
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
fn presence_of(frame: &Value) -> Value {
    assert_eq!(
        frame["event"], "pusher_internal:subscription_succeeded",
        "{frame}"
    );
    json(frame["data"].as_str().unwrap())["presence"].clone()
}

#[tokio::test]
async fn presence_channels_have_one_member_per_user_whatever_its_connections() {
    let s = start(None).await;
    let ch = "presence-room";
    let (mut a, a_id) = connect(&s).await;
    let (mut b, b_id) = connect(&s).await;
    let (mut b2, b2_id) = connect(&s).await;

    let got = join_presence(
        &mut a,
        &a_id,
        ch,
        json!({"user_id": "u1", "user_info": {"name": "A"}}),
    )
    .await;
    assert_eq!(
        presence_of(&got),
        json!({"ids": ["u1"], "hash": {"u1": {"name": "A"}}, "count": 1})
    );
    // A number user_id is a string member id.
    let got = join_presence(
        &mut b,
        &b_id,
        ch,
        json!({"user_id": 2, "user_info": {"name": "B"}}),
    )
    .await;
    let presence = presence_of(&got);
    assert_eq!(presence["count"], 2);
    assert_eq!(presence["hash"]["2"], json!({"name": "B"}));
    let added = next(&mut a).await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(added["channel"], ch);
    assert_eq!(
        json(added["data"].as_str().unwrap()),
        json!({"user_id": "2", "user_info": {"name": "B"}})
    );

    // The same user's second connection: still two members, nobody told.
    let got = join_presence(
        &mut b2,
        &b2_id,
        ch,
        json!({"user_id": "2", "user_info": {"name": "B"}}),
    )
    .await;
    assert_eq!(presence_of(&got)["count"], 2);
    // Its join (and the diff it published) is done once a frame after it is answered.
    send(&mut b2, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next(&mut b2).await["event"], "pusher:pong");
    s.broadcast(ch, "marker", json!(1)).await;
    assert_eq!(next(&mut a).await["event"], "marker");
    assert_eq!(next(&mut b).await["event"], "marker");

    // Its first connection leaving: still a member. The last one: member_removed.
    send(
        &mut b,
        json!({"event": "pusher:unsubscribe", "data": {"channel": ch}}),
    )
    .await;
    send(&mut b, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next(&mut b).await["event"], "pusher:pong");
    s.broadcast(ch, "marker", json!(2)).await;
    assert_eq!(next(&mut a).await["event"], "marker");
    drop(b2); // the connection's end departs its channels
    let removed = next(&mut a).await;
    assert_eq!(removed["event"], "pusher_internal:member_removed");
    assert_eq!(
        json(removed["data"].as_str().unwrap()),
        json!({"user_id": "2"})
    );

    // Refused: a signature over other channel_data, no channel_data, a user_info over 1 KB.
    let (mut c, c_id) = connect(&s).await;
    let signed = json!({"user_id": "u3"}).to_string();
    let auth = sign_presence(&c_id, ch, &signed);
    let forged = json!({"user_id": "u1"}).to_string();
    send(&mut c, json!({"event": "pusher:subscribe", "data": {"channel": ch, "auth": auth, "channel_data": forged}})).await;
    let err = next(&mut c).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    assert_eq!(err["data"]["status"], 401);
    let auth = sign_presence(&c_id, ch, "");
    let err = subscribe(&mut c, ch, Some(auth)).await;
    assert_eq!(err["data"]["status"], 401, "{err}");
    let big = json!({"user_id": "u3", "user_info": {"x": "y".repeat(1100)}});
    let err = join_presence(&mut c, &c_id, ch, big).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    assert_eq!(err["data"]["status"], 400);
}

#[tokio::test]
async fn presence_members_across_two_nodes() {
    let redis = common::Redis::start();
    let url = redis.url();
    let mut env = pusher_env();
    env.push(("PLEXUS_REDIS_URL", &url));
    let config = "broker = \"redis\"\n[redis]\nnode_timeout_secs = 2\n";
    let n0 = Server::start_with(Some(config), &env).await;
    let n1 = Server::start_with(Some(config), &env).await;
    let ch = "presence-cluster";
    let (mut a, a_id) = connect(&n0).await;
    let (mut b, b_id) = connect(&n1).await;
    let (mut b2, b2_id) = connect(&n0).await;
    let got = join_presence(&mut a, &a_id, ch, json!({"user_id": "ann"})).await;
    assert_eq!(presence_of(&got)["count"], 1);
    let got = join_presence(&mut b, &b_id, ch, json!({"user_id": "bob"})).await;
    assert_eq!(
        presence_of(&got)["ids"].as_array().unwrap().len(),
        2,
        "{got}"
    );
    let added = next(&mut a).await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(json(added["data"].as_str().unwrap())["user_id"], "bob");
    // Bob again, on the other node: one member.
    let got = join_presence(&mut b2, &b2_id, ch, json!({"user_id": "bob"})).await;
    assert_eq!(presence_of(&got)["count"], 2);
    send(&mut b2, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next(&mut b2).await["event"], "pusher:pong");
    n1.broadcast(ch, "marker", json!(1)).await;
    assert_eq!(next(&mut a).await["event"], "marker");
    // Both of Bob's connections gone: removed once.
    drop(b);
    drop(b2);
    let removed = next(&mut a).await;
    assert_eq!(
        removed["event"], "pusher_internal:member_removed",
        "{removed}"
    );
    assert_eq!(json(removed["data"].as_str().unwrap())["user_id"], "bob");
    n1.broadcast(ch, "marker", json!(2)).await;
    assert_eq!(next(&mut a).await["event"], "marker");
}
