//! Pusher mode's WebSocket endpoint `/app/{key}` over raw WebSocket frames: the exact frames
//! pusher-js reads (connection_established, pong, subscription_succeeded, errors and close
//! codes), private channels' signatures, client events, and interop with the HTTP API and
//! Phoenix clients on the same topic. (tests/js/pusher.test.mjs drives the real pusher-js.)

mod common;

use common::pusher::*;
use common::{json, Server};
use futures_util::SinkExt;
use plexus_client::protocol::Payload;
use serde_json::json;
use tokio_websockets::{ClientBuilder, Message};

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
    // Encrypted channels need the private signature.
    let err = subscribe(&mut ws, "private-encrypted-room", None).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    assert_eq!(err["data"]["status"], 401);
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
    let (n0, n1) = pusher_cluster(&redis, CLUSTER_CONFIG).await;
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

/// The next `pusher_internal:subscription_count` on `ws` (other frames are skipped), within
/// 15 s (a change made on another node is told within `POLL_EVERY`, 10 s).
async fn count_of(ws: &mut Ws) -> u64 {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a subscription count within 15 s")
            .expect("open")
            .expect("a frame");
        let Some(text) = m.as_text() else { continue };
        let f = json(text);
        if f["event"] == "pusher_internal:subscription_count" {
            return json(f["data"].as_str().expect("data is a JSON string"))["subscription_count"]
                .as_u64()
                .expect("a count");
        }
    }
}

#[tokio::test]
async fn subscribers_are_told_the_channel_s_cluster_wide_count() {
    let redis = common::Redis::start();
    let config = format!("{CLUSTER_CONFIG}[[channels]]\ntopic = \"news\"\n");
    let (n0, n1) = pusher_cluster(&redis, &config).await;
    let (mut a, a_id) = connect(&n0).await;
    assert_eq!(subscribe(&mut a, "news", None).await, succeeded("news"));
    assert_eq!(count_of(&mut a).await, 1);
    // Two more on the other node (one a Phoenix client: every protocol counts), coalesced.
    let (mut b, _) = connect(&n1).await;
    assert_eq!(subscribe(&mut b, "news", None).await, succeeded("news"));
    let mut phx = n1.client("carol").await;
    assert!(phx.join("news", json!({})).await.unwrap().is_ok());
    let mut seen = count_of(&mut a).await;
    if seen == 2 {
        seen = count_of(&mut a).await;
    }
    assert_eq!(seen, 3);
    assert_eq!(count_of(&mut b).await, 3);
    // One leaves: the others hear 2. Presence channels get members, not counts.
    drop(phx);
    assert_eq!(count_of(&mut b).await, 2);
    let got = join_presence(&mut a, &a_id, "presence-x", json!({"user_id": "u"})).await;
    assert_eq!(presence_of(&got)["count"], 1);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    n0.broadcast("news", "marker", json!(1)).await;
    loop {
        let f = next(&mut a).await;
        assert_ne!(f["channel"], "presence-x", "{f}");
        if f["event"] == "marker" {
            break;
        }
    }
}
