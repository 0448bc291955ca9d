//! [`RedisCluster`]: six `redis-server --cluster-enabled yes` processes joined by
//! `redis-cli --cluster create --cluster-replicas 1` (3 primaries + 3 replicas), with helpers
//! to find owners of keys and slots, kill and restart nodes, wait for a promotion, migrate one
//! slot live, and read per-node command counts.

use super::{call, commandstats, data_node_args, info, poll, role, Proc, Reply};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

/// The cluster node timeout: a dead primary is failed over about 3-4 s after it dies.
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// One line of `CLUSTER NODES`, as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterNode {
    pub port: u16,
    pub id: String,
    pub primary: bool,
    /// Flagged `fail` or `fail?` (or `handshake`/`noaddr`) by the node that answered.
    pub failed: bool,
    /// A replica's primary's id.
    pub primary_id: Option<String>,
    /// Owned slot ranges, inclusive (migration markers `[slot->-id]` left out).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    let mut nodes = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let addr = f[1].split(['@', ',']).next().unwrap_or("");
        let Some(port) = addr.rsplit(':').next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let flags: Vec<&str> = f[2].split(',').collect();
        let slots = f[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        nodes.push(ClusterNode {
            port,
            id: f[0].to_owned(),
            primary: flags.contains(&"master"),
            failed: flags
                .iter()
                .any(|x| matches!(*x, "fail" | "fail?" | "handshake" | "noaddr")),
            primary_id: (f[3] != "-").then(|| f[3].to_owned()),
            slots,
        });
    }
    nodes
}

/// `CLUSTER NODES` of one node, parsed.
pub fn cluster_nodes(port: u16) -> Result<Vec<ClusterNode>, String> {
    Ok(parse_nodes(&call(port, &["CLUSTER", "NODES"])?.text()))
}

/// One live node as one node sees it: port, primary?, its primary's port, its slots.
type Topology = (u16, bool, Option<u16>, Vec<(u16, u16)>);

/// Six cluster nodes, killed on drop.
pub struct RedisCluster {
    nodes: Vec<Proc>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and returns once every node says
    /// `cluster_state:ok`, all views agree, and every replica's link to its primary is up.
    pub async fn start() -> RedisCluster {
        let nodes: Vec<Proc> = (0..6)
            .map(|_| {
                Proc::start("cluster", |dir, port, bus| {
                    let mut args = data_node_args(dir, port);
                    let conf = dir.join("nodes.conf").display().to_string();
                    args.extend(
                        [
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            &conf,
                            "--cluster-node-timeout",
                            &NODE_TIMEOUT_MS.to_string(),
                            // Explicit bus ports: free_port's ports + 10000 may pass 65535.
                            "--cluster-port",
                            &bus.to_string(),
                        ]
                        .map(String::from),
                    );
                    args
                })
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        create.args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = tokio::task::spawn_blocking(move || create.output())
            .await
            .expect("redis-cli task")
            .expect("redis-cli (installed with redis-server)");
        let c = RedisCluster { nodes };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_healthy(Duration::from_secs(30)).await;
        c
    }

    /// `redis+cluster://127.0.0.1:p1,...` with all six nodes as seeds (a test may have killed
    /// some of them).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// All six ports, killed nodes included.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Ports of the processes running now.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| n.port)
            .collect()
    }

    /// `CLUSTER NODES` as the first live node that answers sees it.
    pub fn view(&self) -> Vec<ClusterNode> {
        self.live_ports()
            .into_iter()
            .find_map(|p| cluster_nodes(p).ok())
            .unwrap_or_else(|| panic!("no cluster node answers"))
    }

    /// Ports of the current primaries that own slots, run and are not flagged failed, sorted.
    pub fn primaries(&self) -> Vec<u16> {
        let live = self.live_ports();
        let mut ports: Vec<u16> = self
            .view()
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty() && live.contains(&n.port))
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot_for_key(&self, key: &str) -> u16 {
        let port = self.live_ports().first().copied().unwrap_or(0);
        call(port, &["CLUSTER", "KEYSLOT", key])
            .ok()
            .and_then(|r| r.int())
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or_else(|| panic!("CLUSTER KEYSLOT {key} failed"))
    }

    /// The port of the primary that owns `slot` now; `None` while its owner is dead and not
    /// yet replaced.
    pub fn owner_of_slot(&self, slot: u16) -> Option<u16> {
        self.view()
            .into_iter()
            .find(|n| n.primary && !n.failed && n.owns(slot))
            .map(|n| n.port)
            .filter(|p| self.live_ports().contains(p))
    }

    /// The port of the primary that owns `key`'s slot now.
    pub fn primary_for_key(&self, key: &str) -> u16 {
        let slot = self.slot_for_key(key);
        self.owner_of_slot(slot)
            .unwrap_or_else(|| panic!("no live primary owns slot {slot}: {:?}", self.view()))
    }

    /// The port of a live, not failed replica of the primary on `port`.
    pub fn replica_of(&self, port: u16) -> Option<u16> {
        let view = self.view();
        let id = view.iter().find(|n| n.port == port)?.id.clone();
        view.iter()
            .find(|n| !n.primary && !n.failed && n.primary_id.as_deref() == Some(id.as_str()))
            .map(|n| n.port)
    }

    /// Sends a keyed command through the cluster (following redirections).
    pub fn call(&self, args: &[&str]) -> Result<Reply, String> {
        let port = self.live_ports().first().copied().unwrap_or(0);
        super::cluster_call(port, args)
    }

    fn node_mut(&mut self, port: u16) -> &mut Proc {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// SIGKILL to the node on `port` (its directory, and so its `nodes.conf`, stays).
    pub fn kill9(&mut self, port: u16) {
        self.node_mut(port).kill9();
    }

    /// Starts a killed node again on its port with its `nodes.conf` (a failed-over primary
    /// comes back as a replica of its successor), then waits for the whole cluster to be
    /// healthy again.
    pub async fn restart(&mut self, port: u16) {
        let node = self.node_mut(port);
        assert!(!node.alive(), "node {port} is running");
        if let Err(log) = node.spawn() {
            panic!("cluster node {port} did not restart:\n{log}");
        }
        self.wait_healthy(Duration::from_secs(30)).await;
    }

    /// Waits until a live node owns `slot` as primary, answers `ROLE` as master, every live
    /// node agrees on it and says `cluster_state:ok`; returns its port.
    pub async fn wait_promoted(&self, slot: u16, timeout: Duration) -> u16 {
        poll(&format!("a primary for slot {slot}"), timeout, || {
            let live = self.live_ports();
            let mut owners = Vec::new();
            for &p in &live {
                let state = call(p, &["CLUSTER", "INFO"])?.text();
                if !state.contains("cluster_state:ok") {
                    return Err(format!("node {p}: {state}"));
                }
                let owner = cluster_nodes(p)?
                    .into_iter()
                    .find(|n| n.primary && !n.failed && n.owns(slot))
                    .map(|n| n.port);
                owners.push(owner);
            }
            match owners.first() {
                Some(&Some(o)) if owners.iter().all(|x| *x == Some(o)) && live.contains(&o) => {
                    let r = role(o)?;
                    if r == "master" {
                        Ok(o)
                    } else {
                        Err(format!("owner {o} says ROLE {r}"))
                    }
                }
                _ => Err(format!("owners per live node {live:?}: {owners:?}")),
            }
        })
        .await
    }

    /// Moves `slot` with its keys to the primary on `to` while the cluster serves: SETSLOT
    /// IMPORTING/MIGRATING, MIGRATE the keys 100 at a time, SETSLOT NODE on the destination,
    /// the source and the other primaries; returns once every live node sees the new owner
    /// and no node marks the slot as migrating or importing.
    pub async fn move_slot(&self, slot: u16, to: u16) {
        let view = self.view();
        let id_of = |port: u16| {
            view.iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .unwrap_or_else(|| panic!("no cluster node on port {port}"))
        };
        let from = self
            .owner_of_slot(slot)
            .unwrap_or_else(|| panic!("no live primary owns slot {slot}"));
        if from == to {
            return;
        }
        let (from_id, to_id, slot_s) = (id_of(from), id_of(to), slot.to_string());
        let ok = |port: u16, args: &[&str]| {
            if let Err(e) = call(port, args) {
                panic!("{args:?} on {port}: {e}");
            }
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]);
        loop {
            let keys = call(from, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"])
                .unwrap_or_else(|e| panic!("GETKEYSINSLOT on {from}: {e}"));
            let keys: Vec<String> = keys.items().iter().map(Reply::text).collect();
            if keys.is_empty() {
                break;
            }
            let to_s = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_s, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            ok(from, &args);
            tokio::task::yield_now().await;
        }
        let others = self
            .primaries()
            .into_iter()
            .filter(|p| ![to, from].contains(p));
        for p in [to, from].into_iter().chain(others) {
            ok(p, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        }
        let marker = format!("[{slot}-");
        poll(
            &format!("slot {slot} owned by {to}"),
            Duration::from_secs(10),
            || {
                for p in self.live_ports() {
                    let text = call(p, &["CLUSTER", "NODES"])?.text();
                    let owner = parse_nodes(&text)
                        .into_iter()
                        .find(|n| n.primary && !n.failed && n.owns(slot))
                        .map(|n| n.port);
                    if owner != Some(to) || text.contains(&marker) {
                        return Err(format!("node {p} sees:\n{text}"));
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    /// `INFO commandstats` of the node on `port`: calls per command.
    pub fn commandstats(&self, port: u16) -> HashMap<String, u64> {
        commandstats(port).unwrap_or_else(|e| panic!("INFO commandstats on {port}: {e}"))
    }

    /// `CONFIG RESETSTAT` on every live node.
    pub fn reset_stats(&self) {
        for p in self.live_ports() {
            if let Err(e) = call(p, &["CONFIG", "RESETSTAT"]) {
                panic!("CONFIG RESETSTAT on {p}: {e}");
            }
        }
    }

    /// Waits until every live node says `cluster_state:ok`, all live nodes see the same
    /// topology with no live node flagged failed, and every live replica's link is up.
    async fn wait_healthy(&self, timeout: Duration) {
        poll("a healthy cluster", timeout, || self.health()).await;
    }

    fn health(&self) -> Result<(), String> {
        let live = self.live_ports();
        let mut first: Option<Vec<Topology>> = None;
        for &p in &live {
            let state = call(p, &["CLUSTER", "INFO"])?.text();
            if !state.contains("cluster_state:ok") {
                return Err(format!("node {p}:\n{state}"));
            }
            let view = cluster_nodes(p)?;
            let port_of = |id: &str| view.iter().find(|n| n.id == id).map(|n| n.port);
            let mut topo = Vec::new();
            for n in view.iter().filter(|n| live.contains(&n.port)) {
                if n.failed {
                    return Err(format!("node {p} flags {} as failed", n.port));
                }
                let primary = n.primary_id.as_deref().and_then(port_of);
                topo.push((n.port, n.primary, primary, n.slots.clone()));
            }
            topo.sort();
            match &first {
                None => first = Some(topo),
                Some(t) if *t != topo => return Err(format!("views differ: {t:?} vs {topo:?}")),
                Some(_) => {}
            }
        }
        for (port, primary, of, _) in first.unwrap_or_default() {
            if primary {
                continue;
            }
            let repl = info(port, "replication")?;
            let up = repl.get("master_link_status").map(String::as_str) == Some("up");
            let of_live = of.is_some_and(|o| live.contains(&o));
            if of_live
                && (!up || repl.get("master_sync_in_progress").map(String::as_str) != Some("0"))
            {
                return Err(format!("replica {port} of {of:?}: {repl:?}"));
            }
        }
        Ok(())
    }
}
