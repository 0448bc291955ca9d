//! No silent gaps in a Redis cluster's history delivery (real `plexus` nodes, real
//! `redis-server`s started by the tests): a node paused across an empty Redis restart still
//! delivers what was published meanwhile, once and in order, after a `history_reset`; a node
//! whose subscription was dropped catches up from the stream (and tells its clients what the
//! stream no longer holds); and a Redis whose data came from a promoted replica never lets a
//! client believe it recovered, nor reuses an offset.

mod common;

use common::cluster::payload;
use common::{free_port, Redis, Server};
use plexus_client::Client;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `room:*` keeps a long history, `small:*` three messages.
const CONFIG: &str = r#"
profile = "dev"
broker = "redis"
[redis]
node_timeout_secs = 2
[[channels]]
topic = "room:*"
history_size = 1000
[[channels]]
topic = "small:*"
history_size = 3
"#;

async fn nodes(url: &str, n: usize) -> Vec<Server> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Server::start_with(Some(CONFIG), &[("PLEXUS_REDIS_URL", url)]).await);
    }
    nodes
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits until the node's `/health` says its broker is up.
async fn wait_broker_up(node: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, body)) = node.http("GET", "/health", &[], "").await {
            if common::json(&body)["broker_up"] == true {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the node's broker never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a client received on `topic` until nothing came for `quiet`: `("msg", ref, n)` for
/// broadcasts, `("history_reset", epoch, offset)` for resets.
async fn drain(c: &mut Client, quiet: Duration) -> Vec<(String, String, Value)> {
    let mut got = Vec::new();
    while let Some(m) = c.recv_timeout(quiet).await.unwrap() {
        match m.event.as_str() {
            "msg" => got.push((
                "msg".into(),
                m.msg_ref.clone().unwrap_or_default(),
                payload(&m)["n"].clone(),
            )),
            "history_reset" => {
                let p = payload(&m);
                got.push((
                    "history_reset".into(),
                    p["epoch"].as_str().unwrap_or_default().to_owned(),
                    p["offset"].clone(),
                ))
            }
            _ => {}
        }
    }
    got
}

fn msgs(range: std::ops::RangeInclusive<u64>, n0: u64) -> Vec<(String, String, Value)> {
    range
        .map(|o| ("msg".to_owned(), o.to_string(), json!(o + n0)))
        .collect()
}

/// Node B is paused (SIGSTOP) while Redis restarts empty and node A publishes three messages
/// to the new history; when B resumes, its client gets `history_reset`, then exactly those
/// three in order, then one published after — no duplicate, no loss.
#[tokio::test]
async fn a_node_paused_across_an_empty_redis_restart_replays_what_it_missed() {
    let mut redis = Redis::start();
    let nodes = nodes(&redis.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = "room:late";
    let mut c = b.client("b").await;
    let reply = c.join(topic, json!({"recover": null})).await.unwrap();
    let old_epoch = reply.json()["epoch"].as_str().unwrap().to_owned();
    for n in 1..=2 {
        a.broadcast(topic, "msg", json!({ "n": n })).await;
    }
    assert_eq!(
        drain(&mut c, Duration::from_millis(300)).await,
        msgs(1..=2, 0)
    );

    signal(b.pid(), "-STOP");
    redis.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.restart();
    wait_broker_up(a).await;
    for n in 1..=3 {
        let r = a.broadcast(topic, "msg", json!({ "n": 100 + n })).await;
        assert_eq!(r["offset"], n, "{r}");
    }
    signal(b.pid(), "-CONT");
    // Published while B resubscribes and catches up: delivered after the three, once.
    a.broadcast(topic, "msg", json!({ "n": 104 })).await;
    let got = drain(&mut c, Duration::from_secs(3)).await;
    assert!(!got.is_empty(), "nothing reached B's client");
    assert_eq!(got[0].0, "history_reset", "{got:?}");
    assert_ne!(got[0].1, old_epoch, "{got:?}");
    assert_eq!(got[0].2, 0, "{got:?}");
    assert_eq!(got[1..], msgs(1..=4, 100)[..], "{got:?}");
}

/// Node B's Redis subscription is dropped (`CLIENT KILL TYPE pubsub`) while B is paused and A
/// publishes: B catches up from the stream, and its clients get every message once, in
/// order, also those published while it catches up. Where the stream no longer holds the
/// missed offsets (a 3-message history), the client is told (`history_reset` in the same
/// epoch, with the last offset lost) before the retained ones.
#[tokio::test]
async fn a_node_whose_subscription_dropped_catches_up_or_says_what_is_lost() {
    let redis = Redis::start();
    let nodes = nodes(&redis.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut long = b.client("long").await;
    let long_epoch = long
        .join("room:gap", json!({"recover": null}))
        .await
        .unwrap();
    let long_epoch = long_epoch.json()["epoch"].as_str().unwrap().to_owned();
    let mut short = b.client("short").await;
    let short_epoch = short
        .join("small:gap", json!({"recover": null}))
        .await
        .unwrap();
    let short_epoch = short_epoch.json()["epoch"].as_str().unwrap().to_owned();
    a.broadcast("room:gap", "msg", json!({"n": 1})).await;
    a.broadcast("small:gap", "msg", json!({"n": 1})).await;
    assert_eq!(
        drain(&mut long, Duration::from_millis(300)).await,
        msgs(1..=1, 0)
    );
    assert_eq!(
        drain(&mut short, Duration::from_millis(100)).await,
        msgs(1..=1, 0)
    );

    signal(b.pid(), "-STOP");
    redis_cli(redis.port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    // A's subscription was dropped too: wait until it noticed and came back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_broker_up(a).await;
    for n in 2..=20 {
        a.broadcast("room:gap", "msg", json!({ "n": n })).await;
        a.broadcast("small:gap", "msg", json!({ "n": n })).await;
    }
    signal(b.pid(), "-CONT");
    // These race B's catch-up.
    for n in 21..=25 {
        a.broadcast("room:gap", "msg", json!({ "n": n })).await;
    }
    let got = drain(&mut long, Duration::from_secs(3)).await;
    assert_eq!(got, msgs(2..=25, 0));
    // The 3-message history kept 18..=20 only: 2..=17 are reported lost, in the same epoch.
    let got = drain(&mut short, Duration::from_millis(300)).await;
    let mut expected = vec![("history_reset".to_owned(), short_epoch, json!(17))];
    expected.extend(msgs(18..=20, 0));
    assert_eq!(got, expected);
    // Delivery goes on live, and a recovering join on B from where `long` stands is complete.
    a.broadcast("room:gap", "msg", json!({"n": 26})).await;
    assert_eq!(
        drain(&mut long, Duration::from_millis(300)).await,
        msgs(26..=26, 0)
    );
    let mut again = b.client("again").await;
    let reply = again
        .join(
            "room:gap",
            json!({"recover": {"epoch": long_epoch, "offset": 26}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["recovered"], true, "{:?}", reply.json());
}

/// A `redis-server` with extra arguments, killed on drop. Its directory is its own (a full
/// resync writes `dump.rdb` there, which a later start must not load).
struct RedisProc {
    port: u16,
    child: Child,
    dir: std::path::PathBuf,
}

impl RedisProc {
    fn start(extra: &[&str]) -> RedisProc {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("plexus-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cli(port, &["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisProc { port, child, dir }
    }

    fn info(&self, field: &str) -> String {
        let info = redis_cli(self.port, &["INFO", "replication"]);
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    fn wait_info(&self, field: &str, want: &dyn Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !want(&self.info(field)) {
            assert!(
                Instant::now() < deadline,
                "{field} on {}: {}",
                self.port,
                self.info(field)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A failover on one machine: replica R is promoted after copying messages 1..=3 only, the
/// primary P acknowledges 4 and 5, then P takes R's data (it becomes R's replica) and is
/// promoted again, so Plexus's Redis address now answers with the promoted replica's shorter
/// history. A client recovering from offset 5 must be told `recovered: false`, and the next
/// publish must start a new epoch (the joined client gets `history_reset`), never reuse offset
/// 4 of the old one.
#[tokio::test]
async fn a_promoted_replica_s_history_starts_a_new_epoch() {
    let p = RedisProc::start(&[]);
    let r = RedisProc::start(&["--replicaof", "127.0.0.1", &p.port.to_string()]);
    r.wait_info("master_link_status", &|s| s == "up");
    let url = format!("redis://127.0.0.1:{}", p.port);
    let nodes = nodes(&url, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = "room:failover";
    let mut c = b.client("b").await;
    let reply = c.join(topic, json!({"recover": null})).await.unwrap();
    let epoch = reply.json()["epoch"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        a.broadcast(topic, "msg", json!({ "n": n })).await;
    }
    let primary_offset = p.info("master_repl_offset");
    r.wait_info("master_repl_offset", &|o| {
        o.parse::<u64>().unwrap_or(0) >= primary_offset.parse().unwrap_or(u64::MAX)
    });
    assert_eq!(redis_cli(r.port, &["REPLICAOF", "NO", "ONE"]), "OK");
    for n in 4..=5 {
        a.broadcast(topic, "msg", json!({ "n": n })).await;
    }
    assert_eq!(
        drain(&mut c, Duration::from_millis(300)).await,
        msgs(1..=5, 0)
    );
    // P takes R's data (a full resync: R never had 4 and 5), then is promoted again.
    let old_replid = p.info("master_replid");
    assert_eq!(
        redis_cli(p.port, &["REPLICAOF", "127.0.0.1", &r.port.to_string()]),
        "OK"
    );
    p.wait_info("master_link_status", &|s| s == "up");
    assert_eq!(redis_cli(p.port, &["REPLICAOF", "NO", "ONE"]), "OK");
    assert_ne!(p.info("master_replid"), old_replid);
    wait_broker_up(a).await;

    let mut back = a.client("back").await;
    let reply = back
        .join(topic, json!({"recover": {"epoch": epoch, "offset": 5}}))
        .await
        .unwrap();
    let reply = reply.json();
    assert_eq!(reply["recovered"], false, "{reply:?}");
    assert_ne!(reply["epoch"], json!(epoch), "{reply:?}");
    let r6 = a.broadcast(topic, "msg", json!({"n": 6})).await;
    assert_eq!(r6["offset"], 1, "{r6}");
    let got = drain(&mut c, Duration::from_secs(2)).await;
    let expected = vec![
        (
            "history_reset".to_owned(),
            reply["epoch"].as_str().unwrap().to_owned(),
            json!(0),
        ),
        ("msg".to_owned(), "1".to_owned(), json!(6)),
    ];
    assert_eq!(got, expected);
}

/// The live path, with the faults made by hand in Redis (the shapes a lost or repeated
/// `PUBLISH` takes, e.g. with sharded pub/sub while a slot moves): a publication repeated on
/// the topic's channel is dropped, and one whose `PUBLISH` never came (written to the history
/// only) is read from the stream and delivered, in order, when the next offset arrives.
#[tokio::test]
async fn a_node_drops_a_repeated_publication_and_fills_a_live_gap_from_the_stream() {
    let redis = Redis::start();
    let nodes = nodes(&redis.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = "room:live";
    let mut c = b.client("b").await;
    let reply = c.join(topic, json!({"recover": null})).await.unwrap();
    let epoch = reply.json()["epoch"].as_str().unwrap().to_owned();
    for n in 1..=2 {
        a.broadcast(topic, "msg", json!({ "n": n })).await;
    }
    assert_eq!(
        drain(&mut c, Duration::from_millis(300)).await,
        msgs(1..=2, 0)
    );
    // Found by name, whatever their exact form (prefix, hash tag).
    let keys = redis_cli(redis.port, &["--scan", "--pattern", "*room:live*"]);
    let key = |kind: &str| {
        keys.lines()
            .find(|k| k.contains(&format!(":{kind}:")))
            .unwrap_or_else(|| panic!("no {kind} key in {keys}"))
            .to_owned()
    };
    let channel = redis_cli(redis.port, &["PUBSUB", "CHANNELS", "*room:live*"]);
    let frame = |o: u64| format!(r#"[null,"{o}","{topic}","msg",{{"n":{o}}}]"#);

    // Offset 2 again, as another node would have published it (B alone is subscribed).
    let repeated = format!("P1 feedbeef0000 2 t e={epoch}\n{}", frame(2));
    assert_eq!(
        redis_cli(redis.port, &["PUBLISH", &channel, &repeated]),
        "1"
    );
    // Offset 3 in the history, its publication lost.
    let hidden = "local o = redis.call('INCR', KEYS[1]) \
        redis.call('XADD', KEYS[2], o .. '-0', 'f', ARGV[1], 'k', 't', 't', '0') return o";
    let three = redis_cli(
        redis.port,
        &["EVAL", hidden, "2", &key("off"), &key("hist"), &frame(3)],
    );
    assert_eq!(three, "3");
    let r = a.broadcast(topic, "msg", json!({"n": 4})).await;
    assert_eq!(r["offset"], 4, "{r}");
    assert_eq!(
        drain(&mut c, Duration::from_millis(500)).await,
        msgs(3..=4, 0)
    );
}

/// A subscriber too slow for Redis's output buffer limit is disconnected by Redis, and the
/// publication that overflowed it is lost for it: the node catches up from the stream. The
/// replay is delivered as the live publication would have been: a client's push does not come
/// back to its sender (`echo` is off by default), while the other client gets it once.
#[tokio::test]
async fn a_publication_lost_to_the_output_buffer_limit_is_replayed_as_it_was_sent() {
    let redis = Redis::start();
    let nodes = nodes(&redis.url(), 2).await;
    let b = &nodes[1];
    let topic = "room:big";
    let mut sender = b.client("sender").await;
    let mut receiver = b.client("receiver").await;
    for c in [&mut sender, &mut receiver] {
        c.join(topic, json!({"recover": null})).await.unwrap();
    }
    sender
        .push_json(topic, "msg", &json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(
        drain(&mut receiver, Duration::from_millis(300)).await,
        msgs(1..=1, 0)
    );
    // 40 kB to a subscriber whose output buffer may hold 8 kB: Redis drops B's subscription.
    let limit = redis_cli(
        redis.port,
        &[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 8kb 0 0",
        ],
    );
    assert_eq!(limit, "OK");
    let pad = "x".repeat(40_000);
    let reply = sender
        .push_json(topic, "msg", &json!({"n": 2, "pad": pad}))
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let got = receiver
        .recv_event_timeout(topic, "msg", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the lost publication, replayed");
    assert_eq!(got.msg_ref.as_deref(), Some("2"));
    assert_eq!(payload(&got)["pad"].as_str().map(str::len), Some(40_000));
    let log = b.log();
    assert_eq!(
        log.matches("history caught up").count(),
        1,
        "not delivered by the catch-up:\n{log}"
    );
    sender
        .push_json(topic, "msg", &json!({"n": 3}))
        .await
        .unwrap();
    assert_eq!(
        drain(&mut receiver, Duration::from_millis(500)).await,
        msgs(3..=3, 0)
    );
    // The sender got none of its own pushes, replayed or live.
    let own = drain(&mut sender, Duration::from_millis(100)).await;
    assert_eq!(own, vec![], "{own:?}");
}
