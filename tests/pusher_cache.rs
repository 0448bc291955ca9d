//! Pusher's cache channels (`cache-`, `private-cache-`, `presence-cache-`) through raw
//! Pusher frames: right after `pusher_internal:subscription_succeeded` a subscriber gets the
//! channel's last event as a normal event frame, else `pusher:cache_miss`; private and
//! presence cache channels need their signatures; the last event is the broker's (a history
//! of one), so it is found from every node of a Redis cluster.

mod common;

use common::json;
use common::pusher::*;
use serde_json::json;
use std::time::Duration;

fn cache_miss(channel: &str) -> serde_json::Value {
    json!({"event": "pusher:cache_miss", "channel": channel})
}

/// Nothing else (but subscription counts) arrives within a short while.
async fn silent(ws: &mut Ws) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(f) = tokio::time::timeout_at(deadline, next_frame(ws)).await {
        assert_eq!(
            f["event"], "pusher_internal:subscription_count",
            "unexpected frame: {f}"
        );
    }
}

#[tokio::test]
async fn cache_channels_give_the_last_event_or_a_cache_miss() {
    let s = start(None).await;
    let ch = "cache-prices";
    let (mut a, _) = connect(&s).await;
    assert_eq!(subscribe(&mut a, ch, None).await, succeeded(ch));
    assert_eq!(next(&mut a).await, cache_miss(ch));
    // Two events: the subscribed client gets both, live; a new subscriber only the last.
    s.broadcast(ch, "price", json!({"v": 1})).await;
    s.broadcast(ch, "price", json!({"v": 2})).await;
    for v in [1, 2] {
        let e = next(&mut a).await;
        assert_eq!(e["event"], "price");
        assert_eq!(json(e["data"].as_str().unwrap())["v"], v);
    }
    let (mut b, _) = connect(&s).await;
    assert_eq!(subscribe(&mut b, ch, None).await, succeeded(ch));
    let last = next(&mut b).await;
    assert_eq!(
        last,
        json!({"event": "price", "channel": ch, "data": "{\"v\":2}"})
    );
    silent(&mut b).await;
    // Then live events as usual, once each.
    s.broadcast(ch, "price", json!({"v": 3})).await;
    assert_eq!(json(next(&mut b).await["data"].as_str().unwrap())["v"], 3);
    silent(&mut b).await;
    // A channel that is not a cache channel says nothing more after subscribing.
    let (mut c, _) = connect(&s).await;
    s.broadcast("prices", "price", json!({"v": 9})).await;
    assert_eq!(subscribe(&mut c, "prices", None).await, succeeded("prices"));
    silent(&mut c).await;
}

#[tokio::test]
async fn private_and_presence_cache_channels_need_their_signatures() {
    let s = start(None).await;
    let ch = "private-cache-orders";
    let (mut a, a_id) = connect(&s).await;
    let refused = subscribe(&mut a, ch, Some(sign("1.2", ch))).await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    silent(&mut a).await;
    assert_eq!(
        subscribe(&mut a, ch, Some(sign(&a_id, ch))).await,
        succeeded(ch)
    );
    assert_eq!(next(&mut a).await, cache_miss(ch));
    // A client event reaches the others but is not cached (the cache holds what the server
    // published): the next subscriber still gets a cache miss.
    let (mut b, b_id) = connect(&s).await;
    assert_eq!(
        subscribe(&mut b, ch, Some(sign(&b_id, ch))).await,
        succeeded(ch)
    );
    assert_eq!(next(&mut b).await, cache_miss(ch));
    send(
        &mut a,
        json!({"event": "client-typing", "channel": ch, "data": {"who": "ann"}}),
    )
    .await;
    let got = next(&mut b).await;
    assert_eq!(json(got["data"].as_str().unwrap())["who"], "ann");
    let (mut c, c_id) = connect(&s).await;
    assert_eq!(
        subscribe(&mut c, ch, Some(sign(&c_id, ch))).await,
        succeeded(ch)
    );
    assert_eq!(next(&mut c).await, cache_miss(ch));

    let ch = "presence-cache-room";
    let (mut p, p_id) = connect(&s).await;
    // A private signature is not a presence one.
    let refused = subscribe(&mut p, ch, Some(sign(&p_id, ch))).await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    s.broadcast(ch, "topic", json!("hello")).await;
    let joined = join_presence(&mut p, &p_id, ch, json!({"user_id": "ann"})).await;
    assert_eq!(presence_of(&joined)["count"], 1);
    assert_eq!(
        next(&mut p).await,
        json!({"event": "topic", "channel": ch, "data": "hello"})
    );
}

#[tokio::test]
async fn the_last_event_is_found_from_every_node() {
    let redis = common::SuiteRedis::start().await;
    let (n0, n1) = pusher_cluster(&redis, CLUSTER_CONFIG).await;
    let ch = "cache-cluster";
    let (mut a, _) = connect(&n1).await;
    assert_eq!(subscribe(&mut a, ch, None).await, succeeded(ch));
    assert_eq!(next(&mut a).await, cache_miss(ch));
    n0.broadcast(ch, "tick", json!({"n": 1})).await;
    n0.broadcast(ch, "tick", json!({"n": 2})).await;
    assert_eq!(json(next(&mut a).await["data"].as_str().unwrap())["n"], 1);
    assert_eq!(json(next(&mut a).await["data"].as_str().unwrap())["n"], 2);
    for node in [&n0, &n1] {
        let (mut b, _) = connect(node).await;
        assert_eq!(subscribe(&mut b, ch, None).await, succeeded(ch));
        let last = next(&mut b).await;
        assert_eq!(last["event"], "tick");
        assert_eq!(json(last["data"].as_str().unwrap())["n"], 2, "{last}");
        silent(&mut b).await;
    }
}
