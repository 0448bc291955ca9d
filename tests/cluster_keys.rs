//! Redis keys built from what clients choose (topics, a token's `sub`) are unambiguous
//! (issue 19, item 11b): topic `limited:x:y` joined by `z` and topic `limited:x` joined by `y:z`
//! are two per-user join counters, not one.

mod common;

use common::cluster::cluster;
use common::Redis;
use serde_json::json;

#[tokio::test]
async fn per_user_join_limits_of_colon_pairs_are_separate() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    // `limited:*` allows one join per user in the cluster.
    let mut z = nodes[0].client("z").await;
    let mut yz = nodes[1].client("y:z").await;
    let r = z.join("limited:x:y", json!({})).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    let r = yz.join("limited:x", json!({})).await.unwrap();
    assert!(
        r.is_ok(),
        "user y:z on limited:x shared user z's limit on limited:x:y: {r:?}"
    );
    // Each limit still holds for its own user and topic.
    let mut z2 = nodes[1].client("z").await;
    let r = z2.join("limited:x:y", json!({})).await.unwrap();
    assert!(
        r.reason().unwrap_or_default().contains("max_per_user"),
        "{r:?}"
    );
    let mut yz2 = nodes[0].client("y:z").await;
    let r = yz2.join("limited:x", json!({})).await.unwrap();
    assert!(
        r.reason().unwrap_or_default().contains("max_per_user"),
        "{r:?}"
    );
}
