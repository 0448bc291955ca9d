//! Pusher-format webhooks (`PLEXUS_PUSHER_WEBHOOK_URL`) received by a real HTTP server that
//! checks them as Pusher's SDKs do (`Content-Type: application/json` exactly, `X-Pusher-Key`,
//! `X-Pusher-Signature` = hex HMAC-SHA256(secret, body), computed here with the `hmac` crate):
//! on one node (every event and its fields; topics that are not Pusher channel names are not
//! reported) and on two nodes sharing Redis (one `channel_occupied` per channel, one
//! `member_added` per user whose connections are on both nodes, `member_removed` after its
//! last one, and after a `kill -9` the lost node's members removed by the survivor).

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use common::pusher::*;
use common::Server;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// The webhooks received: each request's body, and whether it passed Pusher's checks.
#[derive(Default)]
struct Got {
    bodies: Mutex<Vec<(Value, Result<(), String>)>>,
}

fn check(headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if get("content-type") != Some("application/json") {
        return Err(format!("content-type {:?}", get("content-type")));
    }
    if get("x-pusher-key") != Some(KEY) {
        return Err(format!("x-pusher-key {:?}", get("x-pusher-key")));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let expected = hex::encode(mac.finalize().into_bytes());
    if get("x-pusher-signature") != Some(expected.as_str()) {
        return Err("bad x-pusher-signature".into());
    }
    if get("x-plexus-signature").is_some() {
        return Err("a Plexus signature on a Pusher webhook".into());
    }
    Ok(())
}

async fn receive(State(got): State<Arc<Got>>, headers: HeaderMap, body: Bytes) -> &'static str {
    let checked = check(&headers, &body);
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    got.bodies.lock().push((value, checked));
    "{}"
}

struct Receiver {
    url: String,
    got: Arc<Got>,
}

impl Receiver {
    async fn start() -> Receiver {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}/pusher", l.local_addr().unwrap().port());
        let got = Arc::new(Got::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(got.clone());
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Receiver { url, got }
    }

    /// Every event received, each checked (signature, headers, `time_ms`).
    fn events(&self) -> Vec<Value> {
        let bodies = self.got.bodies.lock();
        let mut out = Vec::new();
        for (body, checked) in bodies.iter() {
            assert_eq!(checked, &Ok(()), "{body}");
            let t = body["time_ms"].as_u64().expect("time_ms");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            assert!(t <= now && now - t < 60_000, "time_ms {t}");
            assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
            out.extend(body["events"].as_array().cloned().unwrap());
        }
        out
    }

    async fn wait(&self, within: Duration, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let events = self.events();
            if cond(&events) || std::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn count(events: &[Value], name: &str, channel: &str) -> usize {
    events
        .iter()
        .filter(|e| e["name"] == name && e["channel"] == channel)
        .count()
}

fn members(events: &[Value], name: &str, channel: &str, user: &str) -> usize {
    events
        .iter()
        .filter(|e| e["name"] == name && e["channel"] == channel && e["user_id"] == user)
        .count()
}

fn env<'a>(recv: &'a Receiver, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = pusher_env();
    env.push(("PLEXUS_PUSHER_WEBHOOK_URL", recv.url.as_str()));
    env.extend_from_slice(extra);
    env
}

#[tokio::test]
async fn every_pusher_event_with_pusher_s_fields_on_one_node() {
    let recv = Receiver::start().await;
    let s = Server::start_with(None, &env(&recv, &[])).await;
    // Occupied and vacated once, whatever the subscribers in between.
    let (mut a, a_id) = connect(&s).await;
    let (mut b, _) = connect(&s).await;
    assert_eq!(subscribe(&mut a, "news", None).await, succeeded("news"));
    assert_eq!(subscribe(&mut b, "news", None).await, succeeded("news"));
    send(
        &mut a,
        json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}),
    )
    .await;
    send(
        &mut b,
        json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}),
    )
    .await;
    // Presence: ann twice, bob once.
    let ch = "presence-room";
    let (mut p1, p1_id) = connect(&s).await;
    let (mut p2, p2_id) = connect(&s).await;
    let (mut p3, p3_id) = connect(&s).await;
    join_presence(&mut p1, &p1_id, ch, json!({"user_id": "ann"})).await;
    join_presence(&mut p2, &p2_id, ch, json!({"user_id": "ann"})).await;
    join_presence(&mut p3, &p3_id, ch, json!({"user_id": 7})).await;
    // A client event on the presence channel, with the sender's user_id and socket_id.
    send(
        &mut p3,
        json!({"event": "client-wave", "channel": ch, "data": {"hi": 1}}),
    )
    .await;
    // And on a private channel, without user_id.
    let pch = "private-notes";
    assert_eq!(
        subscribe(&mut a, pch, Some(sign(&a_id, pch))).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // A cache channel with nothing cached.
    assert_eq!(
        subscribe(&mut b, "cache-x", None).await,
        succeeded("cache-x")
    );
    // A Phoenix client on a topic that is no Pusher channel name: not reported.
    let mut phx = s.client("phx-user").await;
    assert!(phx.join("room:1", json!({})).await.unwrap().is_ok());
    drop(p1);
    drop(p2);
    let events = recv
        .wait(Duration::from_secs(5), |e| {
            count(e, "channel_vacated", "news") >= 1
                && members(e, "member_removed", ch, "ann") >= 1
                && count(e, "client_event", ch) >= 1
                && count(e, "cache_miss", "cache-x") >= 1
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events_now = recv.events();
    assert_eq!(events.len(), events_now.len(), "{events_now:#?}");
    assert_eq!(count(&events, "channel_occupied", "news"), 1, "{events:#?}");
    assert_eq!(count(&events, "channel_vacated", "news"), 1);
    assert_eq!(count(&events, "channel_occupied", ch), 1);
    assert_eq!(
        count(&events, "channel_vacated", ch),
        0,
        "bob is still there"
    );
    assert_eq!(members(&events, "member_added", ch, "ann"), 1);
    assert_eq!(members(&events, "member_added", ch, "7"), 1);
    assert_eq!(members(&events, "member_removed", ch, "ann"), 1);
    assert_eq!(members(&events, "member_removed", ch, "7"), 0);
    let wave = events.iter().find(|e| e["name"] == "client_event").unwrap();
    assert_eq!(
        wave,
        &json!({"name": "client_event", "channel": ch, "event": "client-wave",
                "data": "{\"hi\":1}", "socket_id": p3_id, "user_id": "7"})
    );
    assert_eq!(
        events.iter().find(|e| e["name"] == "cache_miss").unwrap(),
        &json!({"name": "cache_miss", "channel": "cache-x"})
    );
    assert_eq!(
        events
            .iter()
            .find(|e| e["name"] == "channel_occupied")
            .unwrap(),
        &json!({"name": "channel_occupied", "channel": "news"})
    );
    assert!(
        events.iter().all(|e| e["channel"] != "room:1"),
        "{events:#?}"
    );
    // Plexus's own fields are not in Pusher's events.
    assert!(events.iter().all(|e| e.get("type").is_none()));
    // A connection signed in as a user (pusher:signin) is still its socket_id.
    let (mut c, c_id) = connect(&s).await;
    let user_data = json!({"id": "carol"}).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(format!("{c_id}::user::{user_data}").as_bytes());
    let auth = format!("{KEY}:{}", hex::encode(mac.finalize().into_bytes()));
    send(
        &mut c,
        json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
    )
    .await;
    assert_eq!(next(&mut c).await["event"], "pusher:signin_success");
    assert_eq!(
        subscribe(&mut c, pch, Some(sign(&c_id, pch))).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    send(
        &mut c,
        json!({"event": "client-note", "channel": pch, "data": "text"}),
    )
    .await;
    let events = recv
        .wait(Duration::from_secs(5), |e| {
            count(e, "client_event", pch) >= 1
        })
        .await;
    let note = events
        .iter()
        .find(|e| e["name"] == "client_event" && e["channel"] == pch)
        .unwrap();
    assert_eq!(
        note,
        &json!({"name": "client_event", "channel": pch, "event": "client-note",
                "data": "text", "socket_id": c_id})
    );
    // The sink's figures, beside Plexus's own (off here).
    let (status, metrics) = s.http("GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(status, 200);
    let delivered = metrics
        .lines()
        .find_map(|l| l.strip_prefix("plexus_pusher_webhook_delivered_total "))
        .expect("plexus_pusher_webhook_delivered_total");
    assert!(delivered.parse::<u64>().unwrap() >= events.len() as u64);
    assert!(!metrics.contains("\nplexus_webhook_delivered_total"));
}

/// Subscribes to the public `channel`; returns its answer, past the presence frames of other
/// channels that may come first (members joining on the other node).
async fn subscribe_past_presence(ws: &mut Ws, channel: &str) -> Value {
    send(
        ws,
        json!({"event": "pusher:subscribe", "data": {"channel": channel}}),
    )
    .await;
    loop {
        let f = next(ws).await;
        if f["channel"] == channel {
            return f;
        }
        assert!(
            f["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("pusher_internal:member_")),
            "{f}"
        );
    }
}

#[tokio::test]
async fn once_per_cluster_and_a_lost_node_s_members_removed() {
    let redis = common::SuiteRedis::start().await;
    let url = redis.url();
    let recv = Receiver::start().await;
    let env = env(&recv, &[("PLEXUS_REDIS_URL", url.as_str())]);
    let config = "broker = \"redis\"\n[redis]\nnode_timeout_secs = 2\n";
    let n0 = Server::start_with(Some(config), &env).await;
    let mut n1 = Server::start_with(Some(config), &env).await;
    let ch = "presence-cluster";
    // ann on both nodes, bob on node 1 only; a public channel on both.
    let (mut a0, a0_id) = connect(&n0).await;
    let (mut a1, a1_id) = connect(&n1).await;
    let (mut b1, b1_id) = connect(&n1).await;
    let (j0, j1, j2) = tokio::join!(
        join_presence(&mut a0, &a0_id, ch, json!({"user_id": "ann"})),
        join_presence(&mut a1, &a1_id, ch, json!({"user_id": "ann"})),
        join_presence(&mut b1, &b1_id, ch, json!({"user_id": "bob"})),
    );
    for j in [j0, j1, j2] {
        assert_eq!(j["event"], "pusher_internal:subscription_succeeded");
    }
    let (r0, r1) = tokio::join!(
        subscribe_past_presence(&mut a0, "ticker"),
        subscribe_past_presence(&mut a1, "ticker")
    );
    assert_eq!((r0, r1), (succeeded("ticker"), succeeded("ticker")));
    let events = recv
        .wait(Duration::from_secs(5), |e| {
            members(e, "member_added", ch, "bob") >= 1
                && members(e, "member_added", ch, "ann") >= 1
                && count(e, "channel_occupied", "ticker") >= 1
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a duplicate would show by now
    let events_now = recv.events();
    assert_eq!(events.len(), events_now.len(), "{events_now:#?}");
    assert_eq!(count(&events, "channel_occupied", ch), 1, "{events:#?}");
    assert_eq!(count(&events, "channel_occupied", "ticker"), 1);
    assert_eq!(members(&events, "member_added", ch, "ann"), 1);
    assert_eq!(members(&events, "member_added", ch, "bob"), 1);

    // Node 1 dies: bob (only there) is removed by the survivor, ann (also on node 0) is not,
    // and neither channel is vacated (node 0 still has subscribers).
    n1.kill9();
    let events = recv
        .wait(Duration::from_secs(15), |e| {
            members(e, "member_removed", ch, "bob") >= 1
        })
        .await;
    assert_eq!(
        members(&events, "member_removed", ch, "bob"),
        1,
        "{events:#?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = recv.events();
    assert_eq!(members(&events, "member_removed", ch, "bob"), 1);
    assert_eq!(members(&events, "member_removed", ch, "ann"), 0);
    assert_eq!(count(&events, "channel_vacated", ch), 0);
    assert_eq!(count(&events, "channel_vacated", "ticker"), 0);

    // Ann's last connection leaves: removed once, and both channels vacated once.
    drop(a0);
    let events = recv
        .wait(Duration::from_secs(5), |e| {
            members(e, "member_removed", ch, "ann") >= 1
                && count(e, "channel_vacated", ch) >= 1
                && count(e, "channel_vacated", "ticker") >= 1
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events_now = recv.events();
    assert_eq!(events.len(), events_now.len(), "{events_now:#?}");
    assert_eq!(members(&events, "member_removed", ch, "ann"), 1);
    assert_eq!(count(&events, "channel_vacated", ch), 1);
    assert_eq!(count(&events, "channel_vacated", "ticker"), 1);
    assert_eq!(count(&events, "channel_occupied", ch), 1);
    drop(n0);
}
