//! History and recovery across the nodes of a Redis cluster (real `plexus` processes, a real
//! `redis-server` started by the test): a recovering join on another node gets every missed
//! message once, also while publishes race it, and joined clients are told when Redis lost
//! a topic's history.

mod common;

use common::cluster::{broadcast, cluster, payload};
use common::Redis;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn joined_clients_are_told_when_redis_lost_their_topic_s_history() {
    let mut redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let mut a = nodes[0].client("a").await;
    let mut b = nodes[1].client("b").await;
    let epoch = a
        .join("room:reset", json!({"recover": null}))
        .await
        .unwrap()
        .json()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    b.join("room:reset", json!({"recover": null}))
        .await
        .unwrap();
    for n in 1..=2 {
        broadcast(&nodes[0], "room:reset", "msg", json!({ "n": n })).await;
    }
    let m = b.recv_event("room:reset", "msg").await.unwrap();
    assert_eq!(m.msg_ref.as_deref(), Some("1"));
    // Redis restarts empty: the history (and its epoch) is gone.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    for c in [&mut a, &mut b] {
        let reset = c
            .recv_event_timeout("room:reset", "history_reset", Duration::from_secs(8))
            .await
            .unwrap()
            .expect("history_reset after Redis lost the history");
        let notice = payload(&reset);
        assert_eq!(notice["offset"], 0);
        assert_ne!(notice["epoch"], json!(epoch));
        assert!(notice["epoch"].is_string());
    }
    // Offsets start again, under the new epoch.
    assert_eq!(
        broadcast(&nodes[1], "room:reset", "msg", json!({"n": 3})).await["offset"],
        1
    );
}

#[tokio::test]
async fn recovery_on_another_node_gets_every_missed_message_once() {
    let redis = common::SuiteRedis::start().await;
    let nodes = cluster(&redis, 3).await;
    let mut reader = nodes[0].client("reader").await;
    let reply = reader
        .join("room:r", json!({"recover": null}))
        .await
        .unwrap();
    let epoch = reply.json()["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        broadcast(&nodes[1], "room:r", "msg", json!({"n": 1})).await["offset"],
        1
    );
    let m = reader.recv_event("room:r", "msg").await.unwrap();
    assert_eq!(m.msg_ref.as_deref(), Some("1"));
    reader.close().await;

    let mut writer = nodes[1].client("writer").await;
    writer.join("room:r", json!({})).await.unwrap();
    for n in 2..=6 {
        writer
            .push_json("room:r", "msg", &json!({"n": n}))
            .await
            .unwrap();
    }
    let mut back = nodes[2].client("reader").await;
    let reply = back
        .join("room:r", json!({"recover": {"epoch": epoch, "offset": 1}}))
        .await
        .unwrap();
    assert_eq!(reply.json()["recovered"], true, "{:?}", reply.json());
    let mut got = Vec::new();
    while let Some(m) = back
        .recv_event_timeout("room:r", "msg", Duration::from_millis(500))
        .await
        .unwrap()
    {
        got.push((
            m.msg_ref.clone().unwrap(),
            payload(&m)["n"].as_u64().unwrap(),
        ));
    }
    let expected: Vec<(String, u64)> = (2..=6).map(|n| (n.to_string(), n)).collect();
    assert_eq!(got, expected);
}

/// A recovering join reads the history's top, then the stream up to it; publishes that land
/// between the two reads reach the reader live. Rejoins on node B while node A's API publishes
/// without pause: every round continues exactly where the last one stopped.
#[tokio::test]
async fn recovering_joins_racing_publishes_get_each_message_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let redis = common::SuiteRedis::start().await;
    let nodes = cluster(&redis, 2).await;
    let topic = "race:x";
    let mut first = nodes[1].client("reader").await;
    let reply = first.join(topic, json!({"recover": null})).await.unwrap();
    let epoch = reply.json()["epoch"].as_str().unwrap().to_owned();
    first.close().await;

    let stop = AtomicBool::new(false);
    let publisher = |lane: u64| {
        let (stop, node) = (&stop, &nodes[0]);
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                node.broadcast(topic, "msg", json!({"lane": lane, "n": n}))
                    .await;
                n += 1;
            }
            n
        }
    };
    let reader = async {
        let mut last = 0u64;
        let mut received = 0usize;
        for round in 0..40 {
            let mut c = nodes[1].client("reader").await;
            let reply = c
                .join(topic, json!({"recover": {"epoch": epoch, "offset": last}}))
                .await
                .unwrap();
            assert_eq!(
                reply.json()["recovered"],
                true,
                "round {round}: {:?}",
                reply.json()
            );
            let until = Instant::now() + Duration::from_millis(40);
            while let Some(m) = c
                .recv_timeout(until.saturating_duration_since(Instant::now()))
                .await
                .unwrap()
            {
                if m.event != "msg" {
                    continue;
                }
                let offset: u64 = m.msg_ref.as_deref().unwrap().parse().unwrap();
                if offset != last + 1 {
                    // Rare under load (see the issue 20 note): the reading node's log says
                    // what its Redis subscription and the join did.
                    let log = nodes[1].log();
                    let tail: Vec<&str> = log.lines().rev().take(60).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    panic!(
                        "round {round}: after {last} came {offset}\nreading node's log:\n{}",
                        tail.join("\n")
                    );
                }
                last = offset;
                received += 1;
            }
            c.close().await;
        }
        stop.store(true, Ordering::Relaxed);
        received
    };
    let (received, a, b, c) = tokio::join!(reader, publisher(0), publisher(1), publisher(2));
    assert!(
        received > 100,
        "received {received} of {} published",
        a + b + c
    );
}
