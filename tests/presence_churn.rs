//! Presence under churn on two nodes sharing a real Redis, and on one node: a few hundred
//! users join one presence topic fast (over both nodes) while some of them leave again, and every member still
//! joined must end with exactly the users still joined — its view kept as phoenix.js keeps it
//! (`Presence.syncState`/`syncDiff`: diffs that come before the `presence_state` wait for it,
//! joins add metas by `phx_ref`, leaves remove them, a key without metas goes). Run with merged
//! diffs (`presence.diff_interval_ms` 50) and without (0).
//!
//! They reproduced the cross-node presence defect that each joiner's `presence_state` was its
//! own whole-topic `HGETALL` through the node's one Redis connection (under load, commands
//! behind those reads timed out and their writes and diffs were lost), and that a leave's diff
//! could be published before Redis had removed the meta (BENCHMARKS.md, "Presence at scale").
//! On one node, joiners share the node's state between two flushes of the topic's diff.

mod common;

use common::Server;
use plexus_client::{Client, ClientError, ConnectOptions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "presence:churn";

const CONFIG: &str = r#"
profile = "dev"
broker = "redis"
[limits]
max_connections_per_ip = 0
connect_rate_per_ip = 0.0
max_pending_connections_per_ip = 0
[[channels]]
topic = "presence:*"
presence = true
"#;

/// A member's view as phoenix.js keeps it: key → phx_refs, diffs before the state held back.
#[derive(Default)]
struct View {
    state: Option<BTreeMap<String, BTreeSet<String>>>,
    early: Vec<Value>,
}

fn refs(entry: &Value) -> Vec<String> {
    entry["metas"]
        .as_array()
        .map(|metas| {
            metas
                .iter()
                .filter_map(|m| m["phx_ref"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl View {
    fn on_state(&mut self, state: &Value) {
        let mut s = BTreeMap::new();
        for (key, entry) in state.as_object().into_iter().flatten() {
            s.insert(key.clone(), refs(entry).into_iter().collect());
        }
        self.state = Some(s);
        for diff in std::mem::take(&mut self.early) {
            self.on_diff(diff);
        }
    }

    fn on_diff(&mut self, diff: Value) {
        let Some(state) = self.state.as_mut() else {
            self.early.push(diff);
            return;
        };
        for (key, entry) in diff["joins"].as_object().into_iter().flatten() {
            state.entry(key.clone()).or_default().extend(refs(entry));
        }
        for (key, entry) in diff["leaves"].as_object().into_iter().flatten() {
            if let Some(held) = state.get_mut(key) {
                for r in refs(entry) {
                    held.remove(&r);
                }
                if held.is_empty() {
                    state.remove(key);
                }
            }
        }
    }

    fn keys(&self) -> BTreeSet<String> {
        self.state
            .as_ref()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }
}

fn payload(m: &plexus_client::protocol::Message) -> Value {
    m.payload
        .as_json()
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or(Value::Null)
}

fn apply(view: &mut View, m: &plexus_client::protocol::Message) {
    if m.topic != TOPIC {
        return;
    }
    match m.event.as_str() {
        "presence_state" => view.on_state(&payload(m)),
        "presence_diff" => view.on_diff(payload(m)),
        _ => {}
    }
}

/// One user: joins on `url`, keeps its view; a leaver leaves after `leave_after` and is done,
/// a stayer reads until `done` is set and nothing came for a while, and returns its view (and
/// its connection, still joined).
async fn member(
    url: String,
    token: String,
    leave_after: Option<Duration>,
    done: Arc<AtomicBool>,
    left: Arc<AtomicUsize>,
) -> Result<Option<(View, Client)>, ClientError> {
    let mut c = Client::connect(ConnectOptions::new(url).token(token)).await?;
    let reply = c.join(TOPIC, json!({})).await?;
    assert!(reply.is_ok(), "{:?}", reply.json());
    let mut view = View::default();
    if let Some(after) = leave_after {
        let until = tokio::time::Instant::now() + after;
        while let Ok(m) = tokio::time::timeout_at(until, c.recv()).await {
            apply(&mut view, &m?);
        }
        c.leave(TOPIC).await?;
        c.close().await;
        left.fetch_add(1, Ordering::SeqCst);
        return Ok(None);
    }
    loop {
        match c.recv_timeout(Duration::from_millis(1500)).await? {
            Some(m) => apply(&mut view, &m),
            None if done.load(Ordering::SeqCst) => return Ok(Some((view, c))),
            None => {}
        }
    }
}

/// `two_nodes`: two nodes on one Redis, else one node with the embedded broker (whose joiners
/// share the node's state between flushes, `DiffCoalescer::shared_state`).
async fn churn(two_nodes: bool, interval_ms: &str) {
    let redis = two_nodes.then(common::Redis::start);
    let url = redis.as_ref().map(|r| r.url()).unwrap_or_default();
    let mut env = vec![("PLEXUS_PRESENCE_DIFF_INTERVAL_MS", interval_ms)];
    let nodes = if two_nodes {
        env.push(("PLEXUS_REDIS_URL", url.as_str()));
        vec![
            Server::start_with(Some(CONFIG), &env).await,
            Server::start_with(Some(CONFIG), &env).await,
        ]
    } else {
        let config = CONFIG.replace("broker = \"redis\"\n", "");
        vec![Server::start_with(Some(&config), &env).await]
    };
    let users = 400;
    let done = Arc::new(AtomicBool::new(false));
    let left = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut stayers = BTreeSet::new();
    let mut leavers = 0;
    // One join every 4 ms, alternating nodes; every fourth user leaves 0–390 ms after joining,
    // while others are still arriving.
    for i in 0..users {
        let node = &nodes[i % nodes.len()];
        let sub = format!("u{i:03}");
        let leave_after = (i % 4 == 0).then(|| Duration::from_millis((i as u64 * 37) % 200));
        if leave_after.is_some() {
            leavers += 1;
        } else {
            stayers.insert(sub.clone());
        }
        tasks.push(tokio::spawn(member(
            node.url(),
            node.token(&sub),
            leave_after,
            done.clone(),
            left.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while left.load(Ordering::SeqCst) < leavers {
        assert!(tokio::time::Instant::now() < deadline, "leavers stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::SeqCst);
    let mut wrong = Vec::new();
    let mut views = 0;
    let mut joined = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let Some((view, client)) = t.await.expect("member task").expect("member") else {
            continue;
        };
        joined.push(client);
        views += 1;
        let keys = view.keys();
        if keys != stayers {
            let ghosts: Vec<_> = keys.difference(&stayers).cloned().collect();
            let missing: Vec<_> = stayers.difference(&keys).cloned().collect();
            wrong.push(format!("u{i:03}: ghosts {ghosts:?}, missing {missing:?}"));
        }
    }
    assert_eq!(views, stayers.len());
    // What a member joining now is told (Redis's copy) must be exact too.
    let mut probe = nodes[0].client("probe").await;
    assert!(probe.join(TOPIC, json!({})).await.unwrap().is_ok());
    let mut fresh = View::default();
    fresh.on_state(&payload(
        &probe.recv_event(TOPIC, "presence_state").await.unwrap(),
    ));
    let mut fresh_keys = fresh.keys();
    fresh_keys.remove("probe");
    assert_eq!(fresh_keys, stayers, "presence_state of a new member");
    assert!(
        wrong.is_empty(),
        "{} of {} views inexact, e.g.:\n{}",
        wrong.len(),
        views,
        wrong[..wrong.len().min(5)].join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_ends_exact_under_churn_on_two_nodes_with_merged_diffs() {
    churn(true, "50").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_ends_exact_under_churn_on_two_nodes_without_merging() {
    churn(true, "0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_ends_exact_under_churn_on_one_node_with_merged_diffs() {
    churn(false, "50").await;
}
