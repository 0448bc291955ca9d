//! The failover standard (docs/deployment.md, "Redis Cluster and Sentinel"), checked per
//! message and per client with real processes: three Plexus nodes on a Redis Cluster (3
//! primaries + 3 replicas) or behind Sentinel (1 primary, 1 replica, 3 sentinels) while a
//! backend publishes 10 messages a second to a history topic and a plain topic, with a client
//! joined on every node and one that reconnects to another node with the recovery recipe:
//!
//! * the primary that owns the topics is killed with SIGKILL (cluster and Sentinel), or
//! * the topic's slot is moved to another primary while messages flow (cluster).
//!
//! On the history topic, every acknowledged message reaches every joined client exactly once,
//! or that client is told after the acknowledgement (`history_reset`); an (epoch, offset) never
//! names two messages; the reconnecting client's `recovered: true` is never a lie. On the plain
//! topic, every acknowledged message reaches every client. Publishing resumes within 10 s of
//! the promotion.

mod common;

use common::redis_topology::{RedisCluster, RedisSentinel};
use common::Server;
use plexus_client::Client;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// History and presence on `room:*`, nothing on `plain:*`. A node is declared dead only after
/// 20 s: a failover (about 4 s) must not get the nodes reaped.
const CONFIG: &str = r#"
profile = "dev"
broker = "redis"
[redis]
node_timeout_secs = 20
[[channels]]
topic = "room:*"
presence = true
history_size = 1000
[[channels]]
topic = "plain:*"
"#;

async fn nodes(url: &str, n: usize) -> Vec<Server> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Server::start_with(Some(CONFIG), &[("PLEXUS_REDIS_URL", url)]).await);
    }
    out
}

/// What one client saw, in order.
#[derive(Clone, Debug)]
enum Seen {
    /// A message `n` on `topic`, with the epoch the client held and the offset (history).
    Msg {
        topic: String,
        n: u64,
        epoch: Option<String>,
        offset: Option<u64>,
    },
    /// `history_reset` on `topic` (the client holds the new epoch from here on).
    Reset { topic: String },
}

/// A client read in the background until the test stops it.
struct Watcher {
    name: String,
    seen: Arc<Mutex<Vec<(Instant, Seen)>>>,
    task: tokio::task::JoinHandle<Client>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Watcher {
    /// Joins `topics` (asking for the epoch) and reads until stopped.
    async fn start(node: &Server, name: &str, topics: &[&str]) -> Watcher {
        let mut c = node.client(name).await;
        let mut epochs = HashMap::new();
        for t in topics {
            let r = c.join(t, json!({"recover": null})).await.unwrap();
            assert!(r.is_ok(), "{name} joins {t}: {r:?}");
            if let Some(e) = r.json()["epoch"].as_str() {
                epochs.insert(t.to_string(), e.to_owned());
            }
        }
        Self::watch(name, c, epochs)
    }

    fn watch(name: &str, mut c: Client, mut epochs: HashMap<String, String>) -> Watcher {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut beat = Instant::now();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                if beat.elapsed() > Duration::from_secs(10) {
                    let _ = c.heartbeat().await;
                    beat = Instant::now();
                }
                let Ok(Some(m)) = c.recv_timeout(Duration::from_millis(100)).await else {
                    continue;
                };
                let body: Value = m
                    .payload
                    .as_json()
                    .and_then(|j| serde_json::from_str(j.get()).ok())
                    .unwrap_or(Value::Null);
                let s = match m.event.as_str() {
                    "msg" => Seen::Msg {
                        topic: m.topic.clone(),
                        n: body["n"].as_u64().unwrap(),
                        epoch: epochs.get(&m.topic).cloned(),
                        offset: m.msg_ref.as_deref().and_then(|r| r.parse().ok()),
                    },
                    "history_reset" => {
                        let epoch = body["epoch"].as_str().unwrap_or_default().to_owned();
                        epochs.insert(m.topic.clone(), epoch);
                        Seen::Reset {
                            topic: m.topic.clone(),
                        }
                    }
                    _ => continue,
                };
                seen2.lock().unwrap().push((Instant::now(), s));
            }
            c
        });
        Watcher {
            name: name.to_owned(),
            seen,
            task,
            stop,
        }
    }

    async fn finish(self) -> (String, Vec<(Instant, Seen)>, Client) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let c = self.task.await.unwrap();
        let seen = self.seen.lock().unwrap().clone();
        (self.name, seen, c)
    }
}

/// One publish through the API: acknowledged (with its offset) or not.
#[derive(Clone, Debug)]
struct Publish {
    topic: String,
    n: u64,
    acked: Option<Instant>,
    offset: Option<u64>,
}

/// Publishes `n` = 1, 2, ... to each topic every 100 ms, through the nodes in turn, until
/// `stop`; returns every attempt.
async fn publisher(
    nodes: &[Server],
    topics: &[&str],
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<Publish> {
    let mut out = Vec::new();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let tick = Instant::now();
        for (i, topic) in topics.iter().enumerate() {
            let node = &nodes[(n as usize + i) % 2];
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                node.post_broadcast(topic, "msg", json!({ "n": n })),
            )
            .await;
            let (acked, offset) = match r {
                Ok(Ok((200, resp))) => {
                    (Some(Instant::now()), common::json(&resp)["offset"].as_u64())
                }
                _ => (None, None),
            };
            out.push(Publish {
                topic: topic.to_string(),
                n,
                acked,
                offset,
            });
        }
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed())).await;
    }
    out
}

/// Checks the failover standard for what `watchers` saw of `published`; returns a report of
/// what each client was told (for the failure message and the log).
fn check_standard(
    published: &[Publish],
    watchers: &[(String, Vec<(Instant, Seen)>)],
    history_topic: &str,
    plain_topic: &str,
) -> String {
    let mut report = String::new();
    // An (epoch, offset) names one message, whoever received it.
    let mut names: HashMap<(String, u64), u64> = HashMap::new();
    for (name, seen) in watchers {
        let mut got: HashMap<&str, Vec<u64>> = HashMap::new();
        let mut resets: Vec<Instant> = Vec::new();
        for (at, s) in seen {
            match s {
                Seen::Msg {
                    topic,
                    n,
                    epoch,
                    offset,
                } => {
                    got.entry(topic.as_str()).or_default().push(*n);
                    if let (Some(e), Some(o)) = (epoch, offset) {
                        let first = *names.entry((e.clone(), *o)).or_insert(*n);
                        assert_eq!(
                            first, *n,
                            "{name}: epoch {e} offset {o} named message {first} and message {n}"
                        );
                    }
                }
                Seen::Reset { topic, .. } if topic == history_topic => resets.push(*at),
                Seen::Reset { .. } => {}
            }
        }
        for (topic, ns) in &got {
            let unique: HashSet<&u64> = ns.iter().collect();
            assert_eq!(
                unique.len(),
                ns.len(),
                "{name}: duplicates on {topic}: {ns:?}"
            );
        }
        let mut missed_told = 0;
        for p in published {
            let Some(acked) = p.acked else { continue };
            let received = got
                .get(p.topic.as_str())
                .is_some_and(|ns| ns.contains(&p.n));
            if received {
                continue;
            }
            if p.topic == history_topic && resets.iter().any(|r| *r >= acked) {
                missed_told += 1;
                continue;
            }
            panic!(
                "{name} never got acknowledged message {} on {} (offset {:?}) and was not told \
                 after it (resets at {:?} after the ack)\n{report}",
                p.n,
                p.topic,
                p.offset,
                resets
                    .iter()
                    .map(|r| r.checked_duration_since(acked))
                    .collect::<Vec<_>>()
            );
        }
        report.push_str(&format!(
            "{name}: {} history, {} plain messages; {} resets; {missed_told} missed but told\n",
            got.get(history_topic).map_or(0, Vec::len),
            got.get(plain_topic).map_or(0, Vec::len),
            resets.len()
        ));
    }
    report
}

/// The scenario: clients on every node, a publisher, `disrupt` in the middle, a client that
/// recovers on another node afterwards; then the standard. `disrupt` returns when Redis
/// serves the topics again (the promotion, or the end of the move). Returns the nodes, still
/// running.
async fn scenario<F, Fut>(
    url: &str,
    history_topic: &str,
    plain_topic: &str,
    disrupt: F,
) -> Vec<Server>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Instant>,
{
    let nodes = nodes(url, 3).await;
    let topics = [history_topic, plain_topic];
    let mut watchers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        watchers.push(Watcher::start(node, &format!("w{i}"), &topics).await);
    }
    // The client that will come back on another node with the recovery recipe.
    let mut leaver = nodes[0].client("leaver").await;
    let epoch = leaver
        .join(history_topic, json!({"recover": null}))
        .await
        .unwrap()
        .json()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    let stop = std::sync::atomic::AtomicBool::new(false);
    let run = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The leaver leaves after what it has received.
        let mut last = 0u64;
        let until = Instant::now() + Duration::from_millis(300);
        while let Ok(Some(m)) = leaver
            .recv_event_timeout(
                history_topic,
                "msg",
                until.saturating_duration_since(Instant::now()),
            )
            .await
        {
            last = m.msg_ref.as_deref().unwrap().parse().unwrap();
        }
        leaver.close().await;
        let started = Instant::now();
        let back_at = disrupt().await;
        eprintln!(
            "disrupted for {:?} (until Redis served again)",
            back_at - started
        );
        // Messages flow for a while after the promotion / move.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut back = nodes[2].client("leaver").await;
        let reply = back
            .join(
                history_topic,
                json!({"recover": {"epoch": epoch, "offset": last}}),
            )
            .await
            .unwrap();
        let mut epochs = HashMap::new();
        if let Some(e) = reply.json()["epoch"].as_str() {
            epochs.insert(history_topic.to_owned(), e.to_owned());
        }
        let recovered = reply.json()["recovered"] == true;
        let rejoined = Watcher::watch("leaver", back, epochs);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (back_at, last, recovered, rejoined)
    };
    let (published, (back_at, last, recovered, rejoined)) =
        tokio::join!(publisher(&nodes, &topics, &stop), run);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Publishing resumed within 10 s of the promotion.
    let resumed = published
        .iter()
        .filter(|p| p.topic == history_topic)
        .filter_map(|p| p.acked)
        .find(|a| *a >= back_at);
    let resumed = resumed.expect("no history publish acknowledged after the promotion");
    assert!(
        resumed - back_at < Duration::from_secs(10),
        "publishing resumed {:?} after the promotion",
        resumed - back_at
    );
    let acked = published.iter().filter(|p| p.acked.is_some()).count();
    eprintln!(
        "{acked} of {} publishes acknowledged; resumed {:?} after Redis served again",
        published.len(),
        resumed - back_at
    );

    let mut seen = Vec::new();
    for w in watchers {
        let (name, s, _c) = w.finish().await;
        seen.push((name, s));
    }
    let report = check_standard(&published, &seen, history_topic, plain_topic);
    eprint!("{report}");

    // The recovering client: `recovered: true` means every acknowledged message after its
    // offset, exactly once, from the same epoch.
    let (_, back_seen, _c) = rejoined.finish().await;
    if recovered {
        let got: Vec<u64> = back_seen
            .iter()
            .filter_map(|(_, s)| match s {
                Seen::Msg { topic, offset, .. } if topic == history_topic => *offset,
                _ => None,
            })
            .collect();
        let expected: Vec<u64> = published
            .iter()
            .filter(|p| p.topic == history_topic && p.acked.is_some())
            .filter_map(|p| p.offset)
            .filter(|o| *o > last)
            .collect();
        for o in &expected {
            assert!(
                got.contains(o),
                "recovered: true after offset {last}, but acknowledged offset {o} never came \
                 (got {got:?})"
            );
        }
        let unique: HashSet<&u64> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "duplicates after recovery: {got:?}"
        );
    }
    eprintln!("the reconnecting client was answered recovered: {recovered}");
    nodes
}

/// The name in `prefix` + a number whose channel lives in the same slot owner as `topic`'s.
fn topic_on_same_primary(c: &RedisCluster, topic: &str, prefix: &str) -> String {
    let owner = c.primary_for_key(&format!("plexus:t:{{{topic}}}"));
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|t| c.primary_for_key(&format!("plexus:t:{{{t}}}")) == owner)
        .expect("a topic on the same primary")
}

#[tokio::test]
async fn a_killed_cluster_primary_loses_nothing_silently() {
    let mut cluster = RedisCluster::start().await;
    let history = "room:busy";
    let plain = topic_on_same_primary(&cluster, history, "plain:busy");
    let url = cluster.url();
    let slot = cluster.slot_for_key(&format!("plexus:t:{{{history}}}"));
    let victim = cluster.primary_for_key(&format!("plexus:t:{{{history}}}"));
    let cluster = Arc::new(tokio::sync::Mutex::new(&mut cluster));
    scenario(&url, history, &plain, || async {
        let mut c = cluster.lock().await;
        c.kill9(victim);
        let promoted = c.wait_promoted(slot, Duration::from_secs(30)).await;
        eprintln!("primary {victim} killed; {promoted} now owns slot {slot}");
        Instant::now()
    })
    .await;
}

#[tokio::test]
async fn a_slot_moved_under_traffic_loses_nothing_silently() {
    let cluster = RedisCluster::start().await;
    let history = "room:moving";
    let plain = topic_on_same_primary(&cluster, history, "plain:moving");
    let url = cluster.url();
    let key = format!("plexus:t:{{{history}}}");
    let slot = cluster.slot_for_key(&key);
    let from = cluster.primary_for_key(&key);
    let to = cluster
        .primaries()
        .into_iter()
        .find(|p| *p != from)
        .unwrap();
    let plain_slot = cluster.slot_for_key(&format!("plexus:t:{{{plain}}}"));
    let _nodes = scenario(&url, history, &plain, || async {
        cluster.move_slot(slot, to).await;
        if plain_slot != slot {
            cluster.move_slot(plain_slot, to).await;
        }
        eprintln!("slots {slot} and {plain_slot} moved from {from} to {to}");
        Instant::now()
    })
    .await;
    // The subscriptions followed: the new owner has the topics' channels.
    let channels = common::redis_topology::call(to, &["PUBSUB", "SHARDCHANNELS", "plexus:t:*"])
        .unwrap()
        .text();
    assert!(
        channels.contains(&format!("plexus:t:{{{history}}}")),
        "{channels}"
    );
}

#[tokio::test]
async fn a_killed_sentinel_primary_loses_nothing_silently() {
    let sentinel = RedisSentinel::start("plexus").await;
    let url = sentinel.url();
    let sentinel = Arc::new(tokio::sync::Mutex::new(sentinel));
    let s2 = sentinel.clone();
    scenario(&url, "room:busy", "plain:busy", || async move {
        let mut s = s2.lock().await;
        let old = s.kill9_primary();
        let new = s.wait_failover(old, Duration::from_secs(30)).await;
        eprintln!("primary {old} killed; sentinels promoted {new}");
        Instant::now()
    })
    .await;
    drop(sentinel);
}
