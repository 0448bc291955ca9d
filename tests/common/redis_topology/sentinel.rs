//! [`RedisSentinel`]: one primary, one replica and three `redis-server --sentinel` processes
//! monitoring them (quorum 2, `down-after-milliseconds 1000`, `failover-timeout 5000`), with
//! helpers to find the primary, kill it and wait for the failover.

use super::{call, data_node_args, info, poll, role, Proc, Reply};
use std::collections::HashMap;
use std::time::Duration;

/// A primary, its replica and three sentinels, killed on drop.
pub struct RedisSentinel {
    master_name: String,
    data: Vec<Proc>,
    sentinels: Vec<Proc>,
}

impl RedisSentinel {
    /// Starts the primary, the replica (`--replicaof`) and three sentinels (each with its
    /// config file in its directory; sentinels rewrite it), and returns once the replica is
    /// in sync and every sentinel knows the primary, the replica and the two other sentinels.
    pub async fn start(master_name: &str) -> RedisSentinel {
        let primary = Proc::start("sentinel-data", |dir, port, _| data_node_args(dir, port));
        let primary_port = primary.port.to_string();
        let replica = Proc::start("sentinel-data", |dir, port, _| {
            let mut args = data_node_args(dir, port);
            args.extend(["--replicaof", "127.0.0.1", &primary_port].map(String::from));
            args
        });
        let sentinels = (0..3)
            .map(|_| {
                Proc::start("sentinel", |dir, port, _| {
                    let conf = dir.join("sentinel.conf");
                    let m = master_name;
                    let text = format!(
                        "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                         sentinel monitor {m} 127.0.0.1 {primary_port} 2\n\
                         sentinel down-after-milliseconds {m} 1000\n\
                         sentinel failover-timeout {m} 5000\n\
                         sentinel parallel-syncs {m} 1\n",
                        dir = dir.display(),
                        log = dir.join("sentinel.log").display(),
                    );
                    std::fs::write(&conf, text).expect("write sentinel.conf");
                    vec![conf.display().to_string(), "--sentinel".into()]
                })
            })
            .collect();
        let s = RedisSentinel {
            master_name: master_name.to_owned(),
            data: vec![primary, replica],
            sentinels,
        };
        poll("a monitored primary", Duration::from_secs(30), || {
            s.health()
        })
        .await;
        s
    }

    /// `redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/<master_name>`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{}", seeds.join(","), self.master_name)
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The two data nodes' ports (the initial primary first), killed ones included.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|d| d.port).collect()
    }

    /// The primary's port as the first answering sentinel reports it
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub fn primary_port(&self) -> u16 {
        self.sentinels
            .iter()
            .filter(|s| s.alive())
            .find_map(|s| self.reported_primary(s.port).ok())
            .unwrap_or_else(|| panic!("no sentinel reports {}", self.master_name))
    }

    fn reported_primary(&self, sentinel: u16) -> Result<u16, String> {
        let r = call(
            sentinel,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master_name],
        )?;
        r.items()
            .get(1)
            .and_then(Reply::int)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("sentinel {sentinel} answers {r:?}"))
    }

    /// SIGKILL to the current primary; returns its port.
    pub fn kill9_primary(&mut self) -> u16 {
        let port = self.primary_port();
        match self.data.iter_mut().find(|d| d.port == port) {
            Some(d) => d.kill9(),
            None => panic!(
                "the sentinels' primary {port} is not one of {:?}",
                self.data_ports()
            ),
        }
        port
    }

    /// Starts a killed data node again on its port as a replica of `primary` (as an operator
    /// would: the sentinels only reconfigure a returning old primary after their 10 s INFO
    /// period) and waits until its link is up.
    pub async fn restart(&mut self, port: u16, primary: u16) {
        let node = match self.data.iter_mut().find(|d| d.port == port) {
            Some(d) => d,
            None => panic!("no data node on port {port}"),
        };
        assert!(!node.alive(), "data node {port} is running");
        if let Some(i) = node.args.iter().position(|a| a == "--replicaof") {
            node.args.drain(i..i + 3);
        }
        node.args
            .extend(["--replicaof", "127.0.0.1", &primary.to_string()].map(String::from));
        if let Err(log) = node.spawn() {
            panic!("data node {port} did not restart:\n{log}");
        }
        poll(
            &format!("{port} replicating {primary}"),
            Duration::from_secs(30),
            || {
                let repl = info(port, "replication")?;
                let field = |k: &str| repl.get(k).map(String::as_str).unwrap_or("");
                if field("role") == "slave"
                    && field("master_port") == primary.to_string()
                    && field("master_link_status") == "up"
                {
                    Ok(())
                } else {
                    Err(format!("{repl:?}"))
                }
            },
        )
        .await;
    }

    /// Waits until a sentinel reports a primary other than `old_port` that answers `ROLE` as
    /// master; returns its port.
    pub async fn wait_failover(&self, old_port: u16, timeout: Duration) -> u16 {
        poll("a sentinel failover", timeout, || {
            let mut seen = Vec::new();
            for s in self.sentinels.iter().filter(|s| s.alive()) {
                let p = self.reported_primary(s.port)?;
                if p != old_port && role(p).as_deref() == Ok("master") {
                    return Ok(p);
                }
                seen.push(p);
            }
            Err(format!("sentinels report {seen:?}"))
        })
        .await
    }

    /// The sentinels' logs, for failure messages.
    pub fn sentinel_logs(&self) -> String {
        self.sentinels.iter().map(Proc::log).collect()
    }

    /// Ready when the replica is in sync and every sentinel sees the primary up, one
    /// replica and two other sentinels.
    fn health(&self) -> Result<(), String> {
        let repl = info(self.data[1].port, "replication")?;
        if repl.get("master_link_status").map(String::as_str) != Some("up") {
            return Err(format!("replica: {repl:?}"));
        }
        for s in &self.sentinels {
            let r = call(s.port, &["SENTINEL", "MASTER", &self.master_name])?;
            let fields: HashMap<String, String> = r
                .items()
                .chunks(2)
                .filter_map(|kv| Some((kv.first()?.text(), kv.get(1)?.text())))
                .collect();
            let field = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
            if field("flags") != "master"
                || field("num-slaves") != "1"
                || field("num-other-sentinels") != "2"
            {
                return Err(format!("sentinel {}: {fields:?}", s.port));
            }
        }
        Ok(())
    }
}
