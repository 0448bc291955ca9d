//! Pusher mode's users and senders, over raw frames as pusher-js sends them: `pusher:signin`
//! (the user's `#server-to-user-` channel, `sendToUser`, `terminate_connections` on every
//! node), `user_id` on presence channels' client events, the HTTP API's `socket_id`
//! exclusion on every node, the member limit of presence channels, `private-encrypted-`
//! channels, and refused admissions and server closes told with Pusher's close codes.
//! (tests/js/pusher_users.test.mjs drives the same with pusher-js and the `pusher` SDK.)

mod common;

use common::pusher::*;
use common::Server;
use serde_json::json;
use std::time::Duration;

/// Nothing but subscription counts arrives on `ws` within `ms`.
async fn silent(ws: &mut Ws, ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(f) = tokio::time::timeout_at(deadline, next_frame(ws)).await {
        assert_eq!(
            f["event"], "pusher_internal:subscription_count",
            "unexpected: {f}"
        );
    }
}

async fn cluster(redis: &impl common::RedisUrl, extra: &[(&str, &str)]) -> Vec<Server> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut env = pusher_env();
        env.push(("PLEXUS_REDIS_URL", url.as_str()));
        env.extend_from_slice(extra);
        nodes.push(Server::start_with(Some(CLUSTER), &env).await);
    }
    nodes
}

const CLUSTER: &str = r#"
profile = "dev"
broker = "redis"
[redis]
node_timeout_secs = 2
"#;

#[tokio::test]
async fn signin_makes_the_connection_the_user_s_on_every_node() {
    let redis = common::SuiteRedis::start().await;
    let nodes = cluster(&redis, &[]).await;
    let (mut a, a_id) = connect(&nodes[0]).await;
    let (mut b, b_id) = connect(&nodes[1]).await;
    let (mut other, other_id) = connect(&nodes[1]).await;

    // Refused: another socket's signature, another user_data, no id, garbage; the
    // connection stays, anonymous.
    let data = json!({"id": "ann", "user_info": {"name": "Ann"}}).to_string();
    for (auth, user_data) in [
        (sign_user(&b_id, &data), data.clone()),
        (sign_user(&a_id, &data), json!({"id": "root"}).to_string()),
        (sign_user(&a_id, "{}"), "{}".to_owned()),
        (sign_user(&a_id, "[1]"), "[1]".to_owned()),
        ("nonsense".to_owned(), data.clone()),
    ] {
        let err = signin(&mut a, &auth, &user_data).await;
        assert_eq!(err["event"], "pusher:error", "{user_data}: {err}");
        assert_eq!(err["data"]["code"], 4009, "{err}");
    }
    // Not signed in: the user's channel is refused.
    let err = subscribe(&mut a, "#server-to-user-ann", None).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    assert_eq!(err["data"]["status"], 403);

    // Signed in on both nodes as ann; a third connection as bob.
    let ok = signin(&mut a, &sign_user(&a_id, &data), &data).await;
    assert_eq!(
        ok,
        json!({"event": "pusher:signin_success", "data": {"user_data": data}})
    );
    let again = signin(&mut a, &sign_user(&a_id, &data), &data).await;
    assert_eq!(again["data"]["message"], "already signed in", "{again}");
    assert_eq!(
        signin(&mut b, &sign_user(&b_id, &data), &data).await["event"],
        "pusher:signin_success"
    );
    let bob = json!({"id": "bob"}).to_string();
    assert_eq!(
        signin(&mut other, &sign_user(&other_id, &bob), &bob).await["event"],
        "pusher:signin_success"
    );
    // Each subscribes to its own channel, as pusher-js does after signin; not to another's.
    for ws in [&mut a, &mut b] {
        let ch = "#server-to-user-ann";
        assert_eq!(subscribe(ws, ch, None).await, succeeded(ch));
    }
    let err = subscribe(&mut other, "#server-to-user-ann", None).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    let ch = "#server-to-user-bob";
    assert_eq!(subscribe(&mut other, ch, None).await, succeeded(ch));

    // sendToUser through node A reaches ann's connections on both nodes, not bob.
    trigger(&nodes[0], "#server-to-user-ann", "note", "{\"n\":1}", None).await;
    for ws in [&mut a, &mut b] {
        let got = next(ws).await;
        assert_eq!(got["event"], "note", "{got}");
        assert_eq!(got["channel"], "#server-to-user-ann");
    }
    silent(&mut other, 300).await;

    // terminate_connections through node B closes ann's connections on both nodes.
    let (status, resp) = api(
        &nodes[1],
        "POST",
        &format!("/apps/{APP_ID}/users/ann/terminate_connections"),
        &json!({}),
    )
    .await;
    assert_eq!((status, resp), (200, json!({})));
    // Told as Pusher tells it: `pusher:error` 4009, then a close with 4009 (pusher-js does not
    // reconnect).
    for ws in [&mut a, &mut b] {
        let err = next(ws).await;
        assert_eq!(err["event"], "pusher:error", "{err}");
        assert_eq!(err["data"]["code"], 4009);
        assert_eq!(close_code(ws).await, 4009);
    }
    // bob is still connected.
    send(&mut other, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next(&mut other).await["event"], "pusher:pong");
}

#[tokio::test]
async fn presence_client_events_carry_the_sender_s_user_id_on_every_node() {
    let redis = common::SuiteRedis::start().await;
    let nodes = cluster(&redis, &[]).await;
    let ch = "presence-chat";
    let (mut a, a_id) = connect(&nodes[0]).await;
    let (mut b, b_id) = connect(&nodes[1]).await;
    let (mut c, c_id) = connect(&nodes[0]).await;
    join_presence(&mut a, &a_id, ch, json!({"user_id": "u-a"})).await;
    join_presence(&mut b, &b_id, ch, json!({"user_id": 7})).await;
    assert_eq!(next(&mut a).await["event"], "pusher_internal:member_added");
    join_presence(&mut c, &c_id, ch, json!({"user_id": "u-c"})).await;
    for ws in [&mut a, &mut b] {
        assert_eq!(next(ws).await["event"], "pusher_internal:member_added");
    }
    send(
        &mut a,
        json!({"event": "client-typing", "channel": ch, "data": {"t": 1}}),
    )
    .await;
    // Other node and same node: with user_id; the sender gets nothing.
    for ws in [&mut b, &mut c] {
        let got = next(ws).await;
        assert_eq!(
            got,
            json!({"event": "client-typing", "channel": ch, "data": "{\"t\":1}", "user_id": "u-a"})
        );
    }
    silent(&mut a, 300).await;
    send(
        &mut b,
        json!({"event": "client-typing", "channel": ch, "data": {"t": 2}}),
    )
    .await;
    assert_eq!(next(&mut a).await["user_id"], "7");
    // Private channels have no members: no user_id.
    let p = "private-x";
    assert_eq!(
        subscribe(&mut a, p, Some(sign(&a_id, p))).await,
        succeeded(p)
    );
    assert_eq!(
        subscribe(&mut b, p, Some(sign(&b_id, p))).await,
        succeeded(p)
    );
    send(
        &mut a,
        json!({"event": "client-x", "channel": p, "data": {}}),
    )
    .await;
    let got = next(&mut b).await;
    assert_eq!(got["event"], "client-x");
    assert!(got.get("user_id").is_none(), "{got}");
}

#[tokio::test]
async fn an_api_event_with_a_socket_id_skips_that_connection_on_every_node() {
    let redis = common::SuiteRedis::start().await;
    let nodes = cluster(&redis, &[]).await;
    let (mut a, a_id) = connect(&nodes[0]).await;
    let (mut b, b_id) = connect(&nodes[1]).await;
    let (mut c, _) = connect(&nodes[1]).await;
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(subscribe(ws, "orders", None).await, succeeded("orders"));
    }
    // Published on node A excluding b (on node B), then a (on node A itself).
    trigger(&nodes[0], "orders", "created", "1", Some(&b_id)).await;
    assert_eq!(next(&mut a).await["data"], "1");
    assert_eq!(next(&mut c).await["data"], "1");
    trigger(&nodes[0], "orders", "created", "2", Some(&a_id)).await;
    assert_eq!(next(&mut b).await["data"], "2");
    assert_eq!(next(&mut c).await["data"], "2");
    // Neither excluded connection got its event: the next one each gets is the third.
    trigger(&nodes[1], "orders", "created", "3", None).await;
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(next(ws).await["data"], "3");
    }
    // The same on a cache channel, whose events go through the broker's history (the
    // exclusion travels in the history publish's envelope too).
    for ws in [&mut a, &mut b] {
        let got = subscribe(ws, "cache-orders", None).await;
        assert_eq!(got, succeeded("cache-orders"));
        assert_eq!(next(ws).await["event"], "pusher:cache_miss");
    }
    trigger(&nodes[0], "cache-orders", "created", "4", Some(&b_id)).await;
    assert_eq!(next(&mut a).await["data"], "4");
    trigger(&nodes[1], "cache-orders", "created", "5", None).await;
    assert_eq!(next(&mut b).await["data"], "5", "b was left out of 4");
    assert_eq!(next(&mut a).await["data"], "5");
    // A socket_id that is not one is refused.
    let body = json!({"name": "x", "channel": "orders", "data": "1", "socket_id": "1.2 x=3"});
    let (status, resp) = api(&nodes[0], "POST", &format!("/apps/{APP_ID}/events"), &body).await;
    assert_eq!(status, 400, "{resp}");
}

#[tokio::test]
async fn presence_channels_hold_at_most_max_presence_members_users() {
    let s = Server::start_with(
        None,
        &[
            pusher_env(),
            vec![("PLEXUS_PUSHER_MAX_PRESENCE_MEMBERS", "2")],
        ]
        .concat(),
    )
    .await;
    let ch = "presence-small";
    let mut held = Vec::new();
    for user in ["1", "2"] {
        let (mut ws, id) = connect(&s).await;
        let got = join_presence(&mut ws, &id, ch, json!({ "user_id": user })).await;
        assert_eq!(
            got["event"], "pusher_internal:subscription_succeeded",
            "{got}"
        );
        held.push(ws);
    }
    // A third user is refused, as Pusher refuses it; another connection of user 2 is not.
    let (mut third, third_id) = connect(&s).await;
    let err = join_presence(&mut third, &third_id, ch, json!({ "user_id": "3" })).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    assert_eq!(err["data"]["type"], "LimitReached");
    assert_eq!(err["data"]["status"], 4100);
    let (mut two_again, two_id) = connect(&s).await;
    let ok = join_presence(&mut two_again, &two_id, ch, json!({ "user_id": "2" })).await;
    assert_eq!(presence_of(&ok)["count"], 2);
    // Other channels are not affected; once user 1 leaves there is room again.
    let other = join_presence(
        &mut third,
        &third_id,
        "presence-other",
        json!({"user_id": "3"}),
    )
    .await;
    assert_eq!(presence_of(&other)["count"], 1);
    drop(held.remove(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = join_presence(&mut third, &third_id, ch, json!({ "user_id": "3" })).await;
    assert_eq!(presence_of(&ok)["count"], 2, "{ok}");
}

#[tokio::test]
async fn encrypted_channels_are_signed_relayed_as_they_are_and_have_no_client_events() {
    let s = start(None).await;
    let ch = "private-encrypted-vault";
    let (mut a, a_id) = connect(&s).await;
    let err = subscribe(&mut a, ch, Some(sign("1.1", ch))).await;
    assert_eq!(err["data"]["status"], 401, "{err}");
    assert_eq!(
        subscribe(&mut a, ch, Some(sign(&a_id, ch))).await,
        succeeded(ch)
    );
    // The SDK's ciphertext is relayed byte for byte.
    let sealed = r#"{"nonce":"bm9uY2U=","ciphertext":"Y2lwaGVy"}"#;
    trigger(&s, ch, "secret", sealed, None).await;
    let got = next(&mut a).await;
    assert_eq!(got["data"], sealed, "{got}");
    send(
        &mut a,
        json!({"event": "client-x", "channel": ch, "data": {}}),
    )
    .await;
    let err = next(&mut a).await;
    assert_eq!(err["event"], "pusher:error");
    assert_eq!(
        err["data"]["message"],
        "client events are not allowed on private-encrypted channels"
    );
}

#[tokio::test]
async fn refused_admissions_close_with_pusher_s_codes() {
    // Two connections per address: the third is told 4100 (reconnect after a back-off).
    let config = "profile = \"dev\"\n[limits]\nmax_connections_per_ip = 2\n";
    let s = start(Some(config)).await;
    let _one = connect(&s).await;
    let _two = connect(&s).await;
    let mut third = open(&s, &format!("/app/{KEY}?protocol=7")).await;
    let err = next(&mut third).await;
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(err["data"]["code"], 4100);
    assert_eq!(close_code(&mut third).await, 4100);

    // A foreign Origin is unauthorized: 4009 (pusher-js stops retrying).
    let uri = format!("ws://127.0.0.1:{}/app/{KEY}?protocol=7", s.port);
    let (mut foreign, _) = tokio_websockets::ClientBuilder::new()
        .uri(&uri)
        .unwrap()
        .add_header(
            http::header::ORIGIN,
            http::HeaderValue::from_static("https://evil.example"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = next(&mut foreign).await;
    assert_eq!(err["data"]["code"], 4009, "{err}");
    assert!(err["data"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("origin")));
    assert_eq!(close_code(&mut foreign).await, 4009);
}
