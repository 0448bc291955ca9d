//! Review of the Redis Cluster / Sentinel broker: each test here reproduces one defect found
//! in review, with real `redis-server` processes and real `plexus` nodes (see
//! `tests/common/redis_topology`).

mod common;

use common::cluster::CONFIG;
use common::redis_topology::{call, RedisCluster};
use common::Server;
use serde_json::json;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A seed given as an IPv6 literal (`redis+cluster://[::1]:p`, the documented URL form for
/// IPv6) is accepted and reaches the cluster. The link used to rebuild it as
/// `redis://::1:p`, which no URL parser accepts: the node refused to start.
#[tokio::test]
async fn cluster_seed_as_ipv6_literal() {
    let c = RedisCluster::start().await;
    let seed = c.primaries()[0];
    // That one node also listens on ::1 (it still announces 127.0.0.1 to the cluster).
    call(seed, &["CONFIG", "SET", "bind", "127.0.0.1 ::1"]).unwrap();
    let url = format!("redis+cluster://[::1]:{seed}");
    let node = Server::start_with(Some(CONFIG), &[("PLEXUS_REDIS_URL", &url)]).await;
    let mut a = node.client("v6").await;
    assert!(a.join("room:v6", json!({})).await.unwrap().is_ok());
    node.broadcast("room:v6", "msg", json!({"n": 1})).await;
    let m = a.recv_event("room:v6", "msg").await.unwrap();
    assert_eq!(common::cluster::payload(&m), json!({"n": 1}));
}

/// Starts `plexus` with `config` and `url` and waits (up to 10 s) for it to exit; `None`
/// when it is still running then (it is killed). Returns the exit success and the log.
async fn run_until_exit(config: &str, url: &str) -> (Option<bool>, String) {
    let dir = std::env::temp_dir();
    let tag = format!(
        "plexus-review-{}-{}",
        std::process::id(),
        common::free_port()
    );
    let cfg = dir.join(format!("{tag}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join(format!("{tag}.log"));
    let mut child = common::plexus_command(&[
        ("PLEXUS_CONFIG", cfg.to_str().unwrap()),
        ("PLEXUS_REDIS_URL", url),
    ])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&cfg);
    let _ = std::fs::remove_file(&log);
    (status, text)
}

/// A `redis.prefix` holding a `{` puts the hash tag in the prefix: `a{b:off:{topic}` hashes
/// `b:off:{topic`, so the keys of one topic land in different slots and every history
/// publish fails with CROSSSLOT. In cluster mode the node must refuse such a prefix at start
/// (with a clear message) instead of starting and failing every history publish.
#[tokio::test]
async fn cluster_prefix_with_a_brace_is_refused_at_start() {
    let c = RedisCluster::start().await;
    let config = CONFIG.replace("[redis]\n", "[redis]\nprefix = \"app{1\"\n");
    assert!(config.contains("prefix = \"app{1\""));
    // The keys of one topic really are in different slots with that prefix.
    assert_ne!(
        c.slot_for_key("app{1:off:{room:x}"),
        c.slot_for_key("app{1:hist:{room:x}")
    );
    let (status, log) = run_until_exit(&config, &c.url()).await;
    assert_eq!(status, Some(false), "the node must refuse to start:\n{log}");
    assert!(log.contains("prefix"), "the error names the prefix:\n{log}");
}

/// The sharded channel of `topic` (default prefix).
fn channel(topic: &str) -> String {
    format!("plexus:t:{{{topic}}}")
}

/// Subscribers of a sharded channel on the primary on `port` (`PUBSUB SHARDNUMSUB`).
fn shard_subscribers(port: u16, channel: &str) -> i64 {
    let r = call(port, &["PUBSUB", "SHARDNUMSUB", channel]).unwrap();
    r.items().get(1).and_then(|r| r.int()).unwrap_or(-1)
}

/// A topic's slot migrates (the server sends `-SUNSUBSCRIBE`, the node re-subscribes it where
/// the slot went, after a short delay) and its last local client leaves within that delay.
/// The node must not subscribe the channel again after it was given up: the re-subscribe
/// used to check only when the server's unsubscribe arrived, so the node stayed subscribed
/// to a topic nobody on it joined (a leak, for as long as the node runs, and every message
/// of that topic delivered to it for nothing).
#[tokio::test]
async fn no_resubscribe_after_leave_during_slot_migration() {
    let c = RedisCluster::start().await;
    let node = Server::start_with(Some(CONFIG), &[("PLEXUS_REDIS_URL", &c.url())]).await;
    let topic = "plain:migrating";
    let ch = channel(topic);
    let mut a = node.client("mig").await;
    assert!(a.join(topic, json!({})).await.unwrap().is_ok());
    let slot = c.slot_for_key(&ch);
    let from = c.owner_of_slot(slot).unwrap();
    let to = c.primaries().into_iter().find(|p| *p != from).unwrap();
    assert_eq!(shard_subscribers(from, &ch), 1);
    // The slot moves by hand (as `move_slot` does), so that the leave falls right after the
    // source gives the slot up.
    let view = c.view();
    let id = |p: u16| view.iter().find(|n| n.port == p).unwrap().id.clone();
    let s = slot.to_string();
    call(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &id(from)]).unwrap();
    call(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &id(to)]).unwrap();
    let keys = call(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]).unwrap();
    let keys: Vec<String> = keys.items().iter().map(|k| k.text()).collect();
    if !keys.is_empty() {
        let to_s = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &to_s, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        call(from, &args).unwrap();
    }
    call(to, &["CLUSTER", "SETSLOT", &s, "NODE", &id(to)]).unwrap();
    call(from, &["CLUSTER", "SETSLOT", &s, "NODE", &id(to)]).unwrap();
    for p in c
        .primaries()
        .into_iter()
        .filter(|p| ![from, to].contains(p))
    {
        call(p, &["CLUSTER", "SETSLOT", &s, "NODE", &id(to)]).unwrap();
    }
    // The node got its -SUNSUBSCRIBE; its last client leaves before it re-subscribes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(a.leave(topic).await.unwrap().is_ok());
    // Long enough for every re-subscribe attempt the node makes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for p in c.primaries() {
        assert_eq!(
            shard_subscribers(p, &ch),
            0,
            "primary {p} still has the node subscribed to {ch}, which no client joined \
             (slot {slot} moved {from} -> {to})"
        );
    }
    // The node still follows a topic joined again.
    assert!(a.join(topic, json!({})).await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shard_subscribers(to, &ch), 1);
}

/// The pid of the `redis-server` on `port` (`INFO server`).
fn redis_pid(port: u16) -> String {
    common::redis_topology::info(port, "server").unwrap()["process_id"].clone()
}

fn signal(pid: &str, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// Sentinel mode, the primary freezes instead of dying (a paused VM, a host cut off: no
/// connection is reset). The sentinels promote the replica; the node must follow within
/// seconds (the contract: publishing resumes within 10 s of the promotion). It used to notice
/// a failover only when its subscription connection broke, which a frozen primary never does:
/// every publish then failed on the old primary for as long as it stayed frozen.
#[tokio::test]
async fn sentinel_follows_a_failover_away_from_a_frozen_primary() {
    let s = common::redis_topology::RedisSentinel::start("plexus").await;
    // A node timeout longer than the failover: the node must follow the new primary, not
    // close its clients as cut off (which it would after 3/4 of a 2 s timeout).
    let config = CONFIG.replace("node_timeout_secs = 2", "node_timeout_secs = 20");
    assert!(config.contains("node_timeout_secs = 20"));
    let node = Server::start_with(Some(&config), &[("PLEXUS_REDIS_URL", &s.url())]).await;
    let mut a = node.client("frozen").await;
    let topic = "room:frozen";
    assert!(a.join(topic, json!({})).await.unwrap().is_ok());
    assert_eq!(node.try_broadcast(topic, 0).await, 200);
    let old = s.primary_port();
    let pid = redis_pid(old);
    signal(&pid, "-STOP");
    let new = s.wait_failover(old, Duration::from_secs(20)).await;
    let promoted = Instant::now();
    let mut ok = false;
    let mut n = 1;
    while promoted.elapsed() < Duration::from_secs(10) {
        if node.try_broadcast(topic, n).await == 200 {
            ok = true;
            break;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(&pid, "-CONT");
    assert!(
        ok,
        "no publish succeeded within 10 s of {new}'s promotion (old primary {old} frozen):\n{}",
        node.log()
    );
    // The client gets it (through the new primary's subscription).
    loop {
        let m = a.recv_event(topic, "msg").await.unwrap();
        if common::cluster::payload(&m)["n"] == json!(n) {
            break;
        }
    }
}

/// A node with `CONFIG` at `url`, without the per-address connect and message rates (the
/// test's clients all come from 127.0.0.1).
async fn node_on(url: &str) -> Server {
    let config = CONFIG.replace(
        "[limits]\n",
        "[limits]\nconnect_rate_per_ip = 0\nmessages_per_second = 0\n",
    );
    assert!(config.contains("connect_rate_per_ip = 0"));
    Server::start_with(Some(&config), &[("PLEXUS_REDIS_URL", url)]).await
}

/// The members of a node's counter set (`<prefix>:ncnt:{<node>}`) on one Redis, with the
/// node's id: there is one node here.
fn counter_set(port: u16) -> (String, Vec<String>) {
    let keys = call(port, &["KEYS", "plexus:ncnt:*"]).unwrap();
    let key = keys.items().first().map(|k| k.text()).unwrap_or_default();
    let node = key
        .trim_start_matches("plexus:ncnt:{")
        .trim_end_matches('}')
        .to_owned();
    let members = call(port, &["SMEMBERS", &key]).unwrap();
    (node, members.items().iter().map(|m| m.text()).collect())
}

/// A burst of joins (many users joining many topics at once, Redis a round trip of 1 ms away)
/// fills the registry writer's queue (4096 ops): the ops it drops are made good by a whole
/// rewrite of the connection registry, but the counter set (`ncnt`), kept by `Index` ops of
/// that same queue, is not rewritten. A counter missing from it is not reaped when the node
/// dies: its share stays in Redis for ever (a per-user join limit refuses that user, a topic
/// stays occupied and `channel_vacated` never comes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_set_complete_after_a_join_burst() {
    let redis = common::Redis::start();
    // One writer op per round trip, while the joins run concurrently.
    let delay = Arc::new(AtomicU64::new(500));
    let proxy = delay_proxy(redis.port, delay.clone()).await;
    let node = node_on(&format!("redis://127.0.0.1:{proxy}")).await;
    // `limited:*` has a per-user join limit: one counter per (topic, user).
    let (clients, per_client) = (100usize, 50usize);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut c = node.client(&format!("burst{i}")).await;
        tasks.push(tokio::spawn(async move {
            for j in 0..per_client {
                let r = c.join(&format!("limited:s{j}"), json!({})).await.unwrap();
                assert!(r.is_ok(), "{r:?}");
            }
            c
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.unwrap());
    }
    // Redis near again: the writer drains its queue quickly.
    delay.store(0, Ordering::Relaxed);
    // Every share this node holds in Redis is in its counter set (once the writer drained).
    let deadline = Instant::now() + Duration::from_secs(8);
    let missing = loop {
        let (_, set) = counter_set(redis.port);
        // One node: every counter in Redis is a share of this node's.
        let counters = call(redis.port, &["KEYS", "plexus:cnt:*"]).unwrap();
        let held: Vec<String> = counters.items().iter().map(|k| k.text()).collect();
        assert!(held.len() >= clients * per_client, "{} shares", held.len());
        let missing: Vec<String> = held.into_iter().filter(|k| !set.contains(k)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        missing.is_empty(),
        "{} counters this node holds are not in its counter set (never reaped), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    drop(kept);
}

/// A TCP proxy to `127.0.0.1:upstream` that delays every chunk by `delay` microseconds each
/// way (order kept, throughput not limited; changed at any time); returns its port. Runs
/// until the test ends.
async fn delay_proxy(upstream: u16, delay: Arc<AtomicU64>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Arc<AtomicU64>,
    ) {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0
                    || tx
                        .send((
                            tokio::time::Instant::now()
                                + Duration::from_micros(delay.load(Ordering::Relaxed)),
                            buf[..n].to_vec(),
                        ))
                        .is_err()
                {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((at, bytes)) = rx.recv().await {
                if at > tokio::time::Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
                if to.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
    }
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            pipe(cr, sw, delay.clone());
            pipe(sr, cw, delay.clone());
        }
    });
    port
}

/// A node's presence index (`<prefix>:npres:{<node>}`, the topics where it has presence)
/// only grows: a presence leave removes the entry from the topic's hash but never the topic
/// from the index. A node that sees many short-lived presence topics (a room per document,
/// per match) keeps every one of them for its whole life, and each re-announce and the reap
/// of the node walk them all, one `HKEYS`/`HGETALL` per topic ever seen.
#[tokio::test]
async fn presence_index_shrinks_when_presence_leaves() {
    let redis = common::Redis::start();
    let node = node_on(&redis.url()).await;
    let mut a = node.client("pres").await;
    let topics: Vec<String> = (0..30).map(|i| format!("room:p{i}")).collect();
    for t in &topics {
        assert!(a.join(t, json!({})).await.unwrap().is_ok());
    }
    let index = || {
        let keys = call(redis.port, &["KEYS", "plexus:npres:*"]).unwrap();
        let key = keys.items().first().map(|k| k.text()).unwrap_or_default();
        call(redis.port, &["SMEMBERS", &key]).unwrap().items().len()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while index() < topics.len() {
        assert!(Instant::now() < deadline, "presence indexed: {}", index());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in &topics {
        assert!(a.leave(t).await.unwrap().is_ok());
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while index() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        index(),
        0,
        "topics without any presence of this node stay in its presence index"
    );
}

/// A cluster password holding a `?` (or `#`), written into the URL as is: the query was cut
/// off before the credentials were split from the hosts, so the node refused to start with
/// "invalid port in `:<start of the password>`", writing part of the password to its log.
/// The credentials end at the last `@`; only what follows the hosts is a query.
#[tokio::test]
async fn cluster_password_with_a_question_mark() {
    let c = RedisCluster::start().await;
    let password = "hunter2?and#more";
    for p in c.ports() {
        call(p, &["CONFIG", "SET", "masterauth", password]).unwrap();
        call(p, &["CONFIG", "SET", "requirepass", password]).unwrap();
    }
    let seeds: Vec<String> = c.ports().iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let url = format!("redis+cluster://:{password}@{}", seeds.join(","));
    let (status, log) = run_until_exit(CONFIG, &url).await;
    assert!(
        !log.contains("hunter2"),
        "the password is in the log:\n{log}"
    );
    assert_eq!(status, None, "the node must run:\n{log}");
    assert!(log.contains("redis cluster subscription up"), "{log}");
}

/// The re-announce after a reconnect writes this node's counter shares from a snapshot
/// (`HSET <counter> <node> <n>`), several round trips after taking it, while joins and leaves
/// go on: a count in or out whose local change comes after the snapshot and whose script
/// lands before the `HSET` is undone. The counters then disagree with the subscribers until
/// the next reconnect: a leave undone keeps a topic occupied (no `channel_vacated`) or a
/// per-user limit full; a join undone reports a topic vacated while joined, or lets one more
/// join through a limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_exact_after_reconnects_under_churn() {
    let redis = common::Redis::start();
    let node = node_on(&redis.url()).await;
    let topics = 4usize;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = node.client(&format!("churn{i}")).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = 0usize;
            let topic = |k: usize| format!("plain:churn{}", k % topics);
            assert!(c.join(&topic(k), json!({})).await.unwrap().is_ok());
            while !stop.load(Ordering::Relaxed) {
                // Leave one, join the next: always one topic joined.
                let _ = c.leave(&topic(k)).await.unwrap();
                k += 1;
                let r = c.join(&topic(k), json!({})).await.unwrap();
                assert!(r.is_ok(), "{r:?}");
            }
            (c, topic(k))
        }));
    }
    // Reconnects (each one re-announces) while the clients churn.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = call(redis.port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut joined: std::collections::HashMap<String, i64> = Default::default();
    let mut kept = Vec::new();
    for t in tasks {
        let (c, topic) = t.await.unwrap();
        *joined.entry(topic).or_default() += 1;
        kept.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut wrong = Vec::new();
    for k in 0..topics {
        let topic = format!("plain:churn{k}");
        let key = format!("plexus:cnt:{{{topic}}}chan:{topic}");
        let vals = call(redis.port, &["HVALS", &key]).unwrap();
        let n: i64 = vals.items().iter().filter_map(|v| v.int()).sum();
        let want = joined.get(&topic).copied().unwrap_or(0);
        if n != want {
            wrong.push(format!("{topic}: Redis counts {n}, {want} joined"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
    drop(kept);
}

/// The ids of the nodes registered in the cluster (`SMEMBERS plexus:nodes`).
fn node_ids(c: &RedisCluster) -> Vec<String> {
    let port = c.live_ports()[0];
    let r = common::redis_topology::cluster_call(port, &["SMEMBERS", "plexus:nodes"]).unwrap();
    r.items().iter().map(|m| m.text()).collect()
}

/// Cluster mode: a node's liveness is one key (`plexus:alive:{<node>}`, TTL `node_timeout`)
/// on one shard. When that shard fails over and the promotion takes longer than what is
/// left of the key's TTL, the promoted replica no longer holds it: the other nodes reap a
/// node that is alive and serving (presence leaves broadcast for its connected users,
/// `disconnect` webhooks for its live connections, its counters dropped), a race with its
/// next heartbeat. No node here is dead: none may be reaped.
#[tokio::test]
async fn a_shard_failover_does_not_reap_live_nodes() {
    let mut c = RedisCluster::start().await;
    let nodes = common::cluster::cluster(&c, 2).await;
    let mut a = nodes[0].client("alive-a").await;
    let mut b = nodes[1].client("alive-b").await;
    assert!(a.join("room:alive", json!({})).await.unwrap().is_ok());
    assert!(b.join("room:alive", json!({})).await.unwrap().is_ok());
    let ids = node_ids(&c);
    assert_eq!(ids.len(), 2, "{ids:?}");
    // The shard holding the first node's liveness fails.
    let victim = c.primary_for_key(&format!("plexus:alive:{{{}}}", ids[0]));
    let slot = c.slot_for_key(&format!("plexus:alive:{{{}}}", ids[0]));
    c.kill9(victim);
    c.wait_promoted(slot, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, n) in nodes.iter().enumerate() {
        let log = n.log();
        assert!(
            !log.contains("heartbeat expired"),
            "node {i} reaped a live node after the failover of {victim}:\n{}",
            log.lines()
                .filter(|l| l.contains("heartbeat expired"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
