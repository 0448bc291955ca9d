//! What Redis Cluster mode (`redis+cluster://`) and Sentinel mode (`redis+sentinel://`) add
//! to the cluster suites (which run in every mode, see `SuiteRedis`), with real processes:
//! topics spread over the shards (keys and sharded channels), one `SPUBLISH` per broadcast,
//! the admin console's cluster view, and `broker_up` / `/health` when Redis is unreachable.

mod common;

use common::cluster::cluster;
use common::redis_topology::{call, RedisCluster, RedisSentinel};
use common::{json, Server};
use serde_json::json;
use std::time::{Duration, Instant};

/// With 200 topics joined and published to, every primary holds the keys and the sharded
/// channels of a fair share of them, each topic's on one shard only.
#[tokio::test]
async fn two_hundred_topics_spread_over_the_shards() {
    let c = RedisCluster::start().await;
    let nodes = cluster(&c, 2).await;
    // Two clients: one may join 100 channels.
    let mut clients = [
        nodes[0].client("spread0").await,
        nodes[0].client("spread1").await,
    ];
    let topics: Vec<String> = (0..200).map(|i| format!("room:spread{i}")).collect();
    for (i, t) in topics.iter().enumerate() {
        let r = clients[i % 2].join(t, json!({})).await.unwrap();
        assert!(r.is_ok(), "{t}: {r:?}");
        nodes[1].broadcast(t, "msg", json!({})).await;
    }
    let primaries = c.primaries();
    assert_eq!(primaries.len(), 3);
    let mut total = 0;
    for p in &primaries {
        let channels = call(*p, &["PUBSUB", "SHARDCHANNELS", "plexus:t:*"])
            .unwrap()
            .text();
        let mine: Vec<&String> = topics
            .iter()
            .filter(|t| channels.lines().any(|l| l == format!("plexus:t:{{{t}}}")))
            .collect();
        // Every key of those topics (history, offset, epoch, presence, counter) is here too.
        for t in &mine {
            let keys = call(*p, &["KEYS", &format!("*{{{t}}}*")]).unwrap().text();
            for kind in ["hist", "off", "epoch", "pres"] {
                assert!(
                    keys.lines().any(|k| k == format!("plexus:{kind}:{{{t}}}")),
                    "{t}'s {kind} key is not on its channel's primary {p}: {keys}"
                );
            }
        }
        eprintln!("primary {p}: {} of 200 topics", mine.len());
        assert!(
            mine.len() >= 40,
            "primary {p} holds {} of 200 topics",
            mine.len()
        );
        total += mine.len();
    }
    assert_eq!(total, 200, "each topic's channel on exactly one primary");
}

/// A broadcast is one `SPUBLISH` (plain topic), or one history script that publishes with
/// `SPUBLISH` inside (history topic): counted with `INFO commandstats` on every primary.
#[tokio::test]
async fn a_broadcast_is_one_spublish() {
    let c = RedisCluster::start().await;
    let nodes = cluster(&c, 2).await;
    let mut a = nodes[0].client("a").await;
    let mut b = nodes[1].client("b").await;
    for t in ["plain:count", "room:count"] {
        assert!(a.join(t, json!({})).await.unwrap().is_ok());
        assert!(b.join(t, json!({})).await.unwrap().is_ok());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sum = |cmd: &str| -> u64 {
        c.primaries()
            .iter()
            .map(|p| c.commandstats(*p).get(cmd).copied().unwrap_or(0))
            .sum()
    };
    c.reset_stats();
    for n in 0..50 {
        nodes[n % 2]
            .broadcast("plain:count", "msg", json!({"n": n}))
            .await;
    }
    for _ in 0..50 {
        let m = b.recv_event("plain:count", "msg").await.unwrap();
        assert_eq!(m.event, "msg");
    }
    assert_eq!(sum("spublish"), 50, "one SPUBLISH per plain broadcast");
    assert_eq!(sum("publish"), 0, "no cluster-wide PUBLISH");
    // Once first, so that the script is loaded where it runs (a first EVALSHA is refused).
    nodes[0].broadcast("room:count", "msg", json!({})).await;
    c.reset_stats();
    for n in 0..50 {
        nodes[n % 2]
            .broadcast("room:count", "msg", json!({"n": n}))
            .await;
    }
    let scripts: Vec<(u16, std::collections::HashMap<String, u64>)> = c
        .primaries()
        .iter()
        .map(|p| (*p, c.commandstats(*p)))
        .collect();
    assert_eq!(
        sum("evalsha") + sum("eval"),
        50,
        "one script per history broadcast: {scripts:?}"
    );
    assert_eq!(sum("publish"), 0);
    drop((a, b));
}

/// Every node's console lists every node with its figures (node-to-node calls over sharded
/// channels), and `/health` and `plexus_broker_up` say the broker is up.
async fn cluster_view_and_broker_up(nodes: &[Server]) {
    for s in nodes {
        let console = s.admin_session().await;
        let (st, resp) = s
            .http(
                "GET",
                "/admin/api/overview",
                &[("Authorization", &console)],
                "",
            )
            .await
            .unwrap();
        assert_eq!(st, 200, "{resp}");
        let listed = json(&resp)["nodes"].as_array().unwrap().clone();
        assert_eq!(listed.len(), nodes.len(), "{resp}");
        assert!(
            listed.iter().all(|n| n.get("error").is_none()),
            "a node's figures are missing: {resp}"
        );
        let (_, health) = s.http("GET", "/health", &[], "").await.unwrap();
        assert_eq!(json(&health)["broker_up"], true, "{health}");
        let (_, metrics) = s.http("GET", "/metrics", &[], "").await.unwrap();
        assert!(metrics.contains("plexus_broker_up 1"), "{metrics}");
    }
}

/// `broker_up` turns false on every node within `within`.
async fn wait_broker_down(nodes: &[Server], within: Duration) {
    let deadline = Instant::now() + within;
    for s in nodes {
        loop {
            let (_, health) = s.http("GET", "/health", &[], "").await.unwrap();
            let (_, metrics) = s.http("GET", "/metrics", &[], "").await.unwrap();
            if json(&health)["broker_up"] == false && metrics.contains("plexus_broker_up 0") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker_up still true with Redis gone: {health}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn cluster_mode_console_and_broker_up() {
    let mut c = RedisCluster::start().await;
    let nodes = cluster(&c, 3).await;
    cluster_view_and_broker_up(&nodes).await;
    // Every Redis process gone: the nodes say so.
    for p in c.ports() {
        c.kill9(p);
    }
    wait_broker_down(&nodes, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn sentinel_mode_console_and_broker_up() {
    let s = RedisSentinel::start("plexus").await;
    let nodes = cluster(&s, 2).await;
    cluster_view_and_broker_up(&nodes).await;
    // The data nodes gone (the sentinels still answer, naming a dead primary).
    drop(s);
    wait_broker_down(&nodes, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_bad_cluster_or_sentinel_url_is_a_clear_startup_error() {
    for (url, says) in [
        ("redis+sentinel://127.0.0.1:1", "master's name"),
        ("redis+cluster://", "no host"),
        ("redis+cluster://127.0.0.1:notaport", "invalid port"),
    ] {
        // PLEXUS_REDIS_URL alone selects the Redis broker.
        let out = common::plexus_command(&[("PLEXUS_REDIS_URL", url)])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{url}: {err}");
    }
}
