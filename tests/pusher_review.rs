//! Pusher mode's defects found by review (issue 20), each kept as a test that failed on the
//! code it was written against and passes since its fix. Raw frames as pusher-js sends them
//! (tests/common/pusher.rs).

mod common;

use common::pusher::*;
use common::Server;
use serde_json::{json, Value};
use std::time::Duration;

/// The next frame that is not a subscription count, or `None` after `ms`.
async fn next_within(ws: &mut Ws, ms: u64) -> Option<Value> {
    tokio::time::timeout(Duration::from_millis(ms), next(ws))
        .await
        .ok()
}

/// pusher-js subscribes its channels as soon as the connection is established, and signs in
/// when its user authentication endpoint has answered (`pusher.signin()`, Echo's
/// `connector.signin()`): subscriptions made before `pusher:signin` must survive it. (They
/// did not: the sign-in recheck asked the rules without the Pusher open rule, and departed
/// every channel no `[[channels]]` rule matches, silently for the Pusher client.)
#[tokio::test]
async fn channels_subscribed_before_signin_keep_their_events() {
    let s = start(None).await;
    let (mut ws, socket_id) = connect(&s).await;
    assert_eq!(
        subscribe(&mut ws, "orders", None).await,
        succeeded("orders")
    );
    let private = "private-orders";
    assert_eq!(
        subscribe(&mut ws, private, Some(sign(&socket_id, private))).await,
        succeeded(private)
    );
    let ok = signin_as(&mut ws, &socket_id, &json!({"id": "ann"}).to_string()).await;
    assert_eq!(ok["event"], "pusher:signin_success", "{ok}");
    // Whatever the server said about the channels (nothing a Pusher client understands).
    while let Some(f) = next_within(&mut ws, 300).await {
        eprintln!("after signin: {f}");
    }
    for channel in ["orders", private] {
        trigger(&s, channel, "shipped", "{\"n\":1}", None).await;
        let got = next_within(&mut ws, 2000).await;
        assert_eq!(
            got.as_ref().map(|f| (&f["event"], &f["channel"])),
            Some((&json!("shipped"), &json!(channel))),
            "an event on {channel}, subscribed before pusher:signin, is lost: {got:?}"
        );
    }
}

/// Every id `pusher:signin` accepts can be reached (`#server-to-user-<id>`, which pusher-js
/// subscribes to after the sign-in and `sendToUser` publishes to) and terminated (the
/// `pusher` SDK's `terminateUserConnections` accepts any non-empty string). (They once used
/// different rules: `ann smith` signed in, but could be neither reached nor terminated.)
#[tokio::test]
async fn every_user_id_signin_accepts_can_be_terminated() {
    let s = start(None).await;
    for id in ["ann smith", "user:1", "a+b@x.io"] {
        let (mut ws, socket_id) = connect(&s).await;
        let ok = signin_as(&mut ws, &socket_id, &json!({ "id": id }).to_string()).await;
        assert_eq!(ok["event"], "pusher:signin_success", "{ok}");
        // What pusher-js does next: its user's channel.
        let channel = format!("#server-to-user-{id}");
        let got = subscribe(&mut ws, &channel, None).await;
        assert_eq!(got, succeeded(&channel), "signed in as {id:?}: {got}");
        let path = format!(
            "/apps/{APP_ID}/users/{}/terminate_connections",
            id.replace(' ', "%20").replace('+', "%2B")
        );
        let (status, resp) = api(&s, "POST", &path, &json!({})).await;
        assert_eq!(status, 200, "signed in as {id:?}, not terminable: {resp}");
    }
}

/// A channel the server departs on its own (here: a rule that refuses the signed-in user, as
/// the sign-in recheck applies it) is told to the client as a refused subscription and given
/// back by the Pusher side: no more `pusher_internal:subscription_count` for it. (It used to
/// stay registered in `SubscriptionCounts` until the connection closed.)
#[tokio::test]
async fn a_channel_the_server_departed_is_no_longer_counted_to_the_connection() {
    let config = r#"
[[channels]]
topic = "lobby-{sub}"
deny = true
"#;
    let s = start(Some(config)).await;
    let (mut ann, ann_id) = connect(&s).await;
    // Anonymous, `lobby-ann` matches no rule: open.
    assert_eq!(
        subscribe(&mut ann, "lobby-ann", None).await,
        succeeded("lobby-ann")
    );
    // Told its count (1) at the next tick.
    let count = tokio::time::timeout(Duration::from_secs(3), next_frame(&mut ann))
        .await
        .expect("a count");
    assert_eq!(
        count["event"], "pusher_internal:subscription_count",
        "{count}"
    );
    // Signed in as ann, the rule refuses ann `lobby-ann`: the server departs it, and tells
    // the client as a refused subscription.
    let closed = signin_as(&mut ann, &ann_id, &json!({"id": "ann"}).to_string()).await;
    assert_eq!(closed["event"], "pusher:subscription_error", "{closed}");
    assert_eq!(closed["channel"], "lobby-ann");
    assert_eq!(closed["data"]["status"], 403);
    let ok = next(&mut ann).await;
    assert_eq!(ok["event"], "pusher:signin_success", "{ok}");
    trigger(&s, "lobby-ann", "hello", "{}", None).await;
    assert_eq!(
        next_within(&mut ann, 500).await,
        None,
        "departed: no events"
    );
    // Two other connections subscribe: the channel's count changes (to 2, the others).
    let mut others = Vec::new();
    for _ in 0..2 {
        let (mut other, _) = connect(&s).await;
        assert_eq!(
            subscribe(&mut other, "lobby-ann", None).await,
            succeeded("lobby-ann")
        );
        others.push(other);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    if let Ok(f) = tokio::time::timeout_at(deadline, next_frame(&mut ann)).await {
        panic!("ann left lobby-ann server-side, yet hears: {f}");
    }
}

/// The keys of Redis whose names contain `part` (redis-cli, as an operator would look).
fn redis_keys(redis: &common::Redis, part: &str) -> Vec<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan", "--pattern"])
        .arg(format!("*{part}*"))
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// An anonymous client subscribing to public `cache-<anything>` channels leaves nothing in
/// Redis for names nobody published on. (Each subscription's history read used to settle an
/// epoch key kept an hour: Redis memory grew with the names a client invented.)
#[tokio::test]
async fn subscribing_to_invented_cache_channels_leaves_nothing_in_redis() {
    let redis = common::Redis::start();
    let url = redis.url();
    let mut env = pusher_env();
    env.push(("PLEXUS_REDIS_URL", url.as_str()));
    let s = Server::start_with(Some("profile = \"dev\"\nbroker = \"redis\"\n"), &env).await;
    let (mut ws, _) = connect(&s).await;
    for prefix in ["plain-x", "cache-x"] {
        for i in 0..40 {
            let channel = format!("{prefix}{i}");
            let got = subscribe(&mut ws, &channel, None).await;
            assert_eq!(got, succeeded(&channel));
            if prefix.starts_with("cache-") {
                assert_eq!(next(&mut ws).await["event"], "pusher:cache_miss");
            }
            send(
                &mut ws,
                json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}),
            )
            .await;
        }
    }
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(redis_keys(&redis, "plain-x"), Vec::<String>::new());
    let left = redis_keys(&redis, "cache-x");
    assert!(
        left.is_empty(),
        "{} keys outlive the client's subscriptions, e.g. {:?}",
        left.len(),
        left.first()
    );
}

/// Calls of a Redis command so far (`INFO commandstats`).
fn redis_calls(redis: &common::Redis, command: &str) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `pusher_internal:subscription_count` (always on) costs idle subscriptions little Redis
/// work: a channel's count is read after a local change, else once per `POLL_EVERY` (10 s).
/// (It was read every second for every channel: 500 HVALS in 5 idle seconds here.)
#[tokio::test]
async fn idle_subscriptions_cost_redis_nothing() {
    let redis = common::Redis::start();
    let url = redis.url();
    let mut env = pusher_env();
    env.push(("PLEXUS_REDIS_URL", url.as_str()));
    let s = Server::start_with(Some("profile = \"dev\"\nbroker = \"redis\"\n"), &env).await;
    let (mut ws, _) = connect(&s).await;
    for i in 0..100 {
        let channel = format!("idle-{i}");
        assert_eq!(
            subscribe(&mut ws, &channel, None).await,
            succeeded(&channel)
        );
        if i % 40 == 39 {
            tokio::time::sleep(Duration::from_secs(1)).await; // the message rate limit
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // the counts are told once
    let before = redis_calls(&redis, "hvals");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = redis_calls(&redis, "hvals") - before;
    eprintln!("HVALS in 5 idle seconds, 100 channels, 1 connection: {during}");
    assert!(
        during < 100,
        "{during} HVALS in 5 s with nothing changing (100 idle channels)"
    );
    drop(ws);
}

/// A cache channel's last event is the application's "initial state" (docs/pusher.md: the
/// HTTP API's trigger; its `cache_miss` webhook asks the application to fill it). On
/// `private-cache-`/`presence-cache-` channels a subscriber's client event must not replace
/// it. (It did: new subscribers got the client's event instead, with no `user_id`, and no
/// `pusher:cache_miss` asked the application to set it again.)
#[tokio::test]
async fn a_client_event_does_not_replace_the_server_s_cached_state() {
    let s = start(None).await;
    let ch = "private-cache-scores";
    let (mut a, a_id) = connect(&s).await;
    let first = subscribe(&mut a, ch, Some(sign(&a_id, ch))).await;
    assert_eq!(first, succeeded(ch));
    assert_eq!(next(&mut a).await["event"], "pusher:cache_miss");
    trigger(&s, ch, "score", "{\"home\":1}", None).await;
    assert_eq!(next(&mut a).await["event"], "score");
    send(
        &mut a,
        json!({"event": "client-typing", "channel": ch, "data": {"x": 1}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut b, b_id) = connect(&s).await;
    assert_eq!(
        subscribe(&mut b, ch, Some(sign(&b_id, ch))).await,
        succeeded(ch)
    );
    let cached = next(&mut b).await;
    assert_eq!(
        cached["event"], "score",
        "the server's cached state was replaced by a client's event: {cached}"
    );
}

/// Members of the Redis sets whose key names contain `part`, and that contain `member`.
fn redis_set_members(redis: &common::Redis, part: &str, member: &str) -> Vec<String> {
    let mut found = Vec::new();
    for key in redis_keys(redis, part) {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "SMEMBERS", &key])
            .output()
            .expect("redis-cli");
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|m| m.contains(member))
                .map(str::to_owned),
        );
    }
    found
}

/// A topic a node no longer counts a subscriber of leaves its counter index (`ncnt:<node>`).
/// (It stayed for the node's life: with Pusher's open public channels, an anonymous client
/// subscribing to and leaving invented names grew that set without bound.)
#[tokio::test]
async fn channels_a_client_left_are_not_remembered_in_redis() {
    let redis = common::Redis::start();
    let url = redis.url();
    let mut env = pusher_env();
    env.push(("PLEXUS_REDIS_URL", url.as_str()));
    let s = Server::start_with(Some("profile = \"dev\"\nbroker = \"redis\"\n"), &env).await;
    let (mut ws, _) = connect(&s).await;
    for i in 0..40 {
        let channel = format!("invented-{i}");
        assert_eq!(
            subscribe(&mut ws, &channel, None).await,
            succeeded(&channel)
        );
        send(
            &mut ws,
            json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}),
        )
        .await;
    }
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left = redis_set_members(&redis, "ncnt", "invented-");
    assert!(
        left.is_empty(),
        "{} channels nobody is in are still indexed, e.g. {:?}",
        left.len(),
        left.first()
    );
}
