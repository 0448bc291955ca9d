//! Pusher mode's presence channels over raw WebSocket frames: members keyed by `user_id`,
//! one member per user whatever its connections, `member_added`/`member_removed`, on one node
//! and across two. (tests/js/pusher.test.mjs drives the real pusher-js.)

mod common;

use common::json;
use common::pusher::*;
use serde_json::json;

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
    let redis = common::SuiteRedis::start().await;
    let (n0, n1) = pusher_cluster(&redis, CLUSTER_CONFIG).await;
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

#[tokio::test]
async fn a_killed_node_s_members_are_removed_on_the_other() {
    let redis = common::SuiteRedis::start().await;
    let (n0, mut n1) = pusher_cluster(&redis, CLUSTER_CONFIG).await;
    let ch = "presence-crash";
    let (mut a, a_id) = connect(&n0).await;
    let (mut b, b_id) = connect(&n1).await;
    join_presence(&mut a, &a_id, ch, json!({"user_id": "ann"})).await;
    let got = join_presence(&mut b, &b_id, ch, json!({"user_id": "bob"})).await;
    assert_eq!(presence_of(&got)["count"], 2);
    assert_eq!(next(&mut a).await["event"], "pusher_internal:member_added");
    // kill -9: no leave is ever sent by node 1; node 0 notices it is gone (2 s heartbeat
    // timeout) and removes its members.
    n1.kill9();
    let removed = tokio::time::timeout(std::time::Duration::from_secs(15), next(&mut a))
        .await
        .expect("member_removed after the node's timeout");
    assert_eq!(
        removed["event"], "pusher_internal:member_removed",
        "{removed}"
    );
    assert_eq!(json(removed["data"].as_str().unwrap())["user_id"], "bob");
    // The channel has one member for a newcomer.
    let (mut c, c_id) = connect(&n0).await;
    let got = join_presence(&mut c, &c_id, ch, json!({"user_id": "cat"})).await;
    assert_eq!(presence_of(&got)["count"], 2, "{got}");
}
