//! The coordinator's side of the worker processes (`worker.rs`): a fleet of them, started
//! with their slices of the subscribers and driven over stdin/stdout, one JSON line each way.

use super::histogram::Merged;
use super::{procs, worker::Spec, Opts, Scenario};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

pub(super) struct Worker {
    pub(super) child: Child,
    pub(super) stdin: ChildStdin,
    pub(super) lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    pub(super) async fn cmd(&mut self, c: &str) -> Result<Value, String> {
        self.stdin
            .write_all(format!("{c}\n").as_bytes())
            .await
            .map_err(|e| format!("worker stdin: {e}"))?;
        self.line().await
    }
    pub(super) async fn line(&mut self) -> Result<Value, String> {
        let l = self
            .lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("a worker exited")?;
        serde_json::from_str(&l).map_err(|e| format!("worker said {l:?}: {e}"))
    }
}

pub(super) struct Fleet {
    pub(super) workers: Vec<Worker>,
    pub(super) ready: u64,
    pub(super) failed: u64,
    pub(super) first_error: Option<String>,
    pub(super) connect_secs: f64,
    pub(super) resumed: u64,
    pub(super) retries: u64,
    pub(super) joined_after: Merged,
    /// Server CPU ticks and time when a TLS warm-up (`Spec::tls_warmup`) ended.
    pub(super) warm: Option<(u64, Instant)>,
}

impl Fleet {
    pub(super) async fn start(o: &Opts, stall_every: usize) -> Result<Fleet, String> {
        let sources = crate::parse_sources(&o.sources)?;
        let procs = if o.procs > 0 {
            o.procs
        } else {
            o.subs.div_ceil(6000).max(2)
        }
        .min(o.subs.max(1));
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut workers = Vec::new();
        for k in 0..procs {
            let from = o.subs * k / procs;
            let to = o.subs * (k + 1) / procs;
            let mine: Vec<IpAddr> = sources
                .iter()
                .enumerate()
                .filter(|(j, _)| j % procs == k || sources.len() < procs)
                .map(|(_, s)| *s)
                .collect();
            let spec = Spec {
                proto: o.proto,
                url: o.url.clone(),
                from,
                to,
                topic: o.topic.clone(),
                topics: o.topics,
                sources: mine,
                secret: o.secret.clone(),
                ca_pem: o.ca_pem.clone(),
                concurrency: if o.scenario == Scenario::Storm {
                    to - from
                } else {
                    o.concurrency
                },
                stall_every,
                no_resume: o.no_tls_resumption,
                storm: o.scenario == Scenario::Storm,
                tls_warmup: o.scenario == Scenario::Connect
                    && o.url.starts_with("wss:")
                    && !o.no_tls_resumption,
            };
            let spec = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
            let mut child = tokio::process::Command::new(&exe)
                .arg("load-worker")
                .arg(spec)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("spawn worker: {e}"))?;
            let stdin = child.stdin.take().ok_or("worker stdin")?;
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            workers.push(Worker {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
        }
        let mut fleet = Fleet {
            workers,
            ready: 0,
            failed: 0,
            first_error: None,
            connect_secs: 0.0,
            resumed: 0,
            retries: 0,
            joined_after: Merged::default(),
            warm: None,
        };
        if o.scenario == Scenario::Connect && o.url.starts_with("wss:") && !o.no_tls_resumption {
            // Every worker has connected each subscriber once: the server's CPU and the time
            // from here on are the reconnects' (each resuming its own TLS session).
            for w in &mut fleet.workers {
                w.line().await?;
            }
            let server = procs::tree(o.pid);
            fleet.warm = Some((procs::cpu_ticks(&server), Instant::now()));
            for w in &mut fleet.workers {
                w.stdin
                    .write_all(b"go\n")
                    .await
                    .map_err(|e| format!("worker stdin: {e}"))?;
            }
        }
        for w in &mut fleet.workers {
            let r = w.line().await?;
            fleet.ready += r["ready"].as_u64().unwrap_or(0);
            fleet.failed += r["failed"].as_u64().unwrap_or(0);
            fleet.connect_secs = fleet.connect_secs.max(r["secs"].as_f64().unwrap_or(0.0));
            fleet.resumed += r["resumed"].as_u64().unwrap_or(0);
            fleet.retries += r["retries"].as_u64().unwrap_or(0);
            let joined: Vec<[u64; 2]> =
                serde_json::from_value(r["joined_after"].clone()).unwrap_or_default();
            fleet.joined_after.add(&joined);
            if fleet.first_error.is_none() {
                fleet.first_error = r["first_error"].as_str().map(str::to_owned);
            }
        }
        Ok(fleet)
    }

    pub(super) fn pids(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.workers.iter().filter_map(|w| w.child.id()).collect();
        p.push(std::process::id());
        p
    }

    /// Received messages and latencies since the last take, over all workers, and how many
    /// sockets ended so far.
    pub(super) async fn take(&mut self) -> Result<Take, String> {
        let mut t = Take::default();
        for w in &mut self.workers {
            let r = w.cmd("take").await?;
            t.received += r["received"].as_u64().unwrap_or(0);
            t.closed += r["closed"].as_u64().unwrap_or(0);
            t.closed_stalled += r["closed_stalled"].as_u64().unwrap_or(0);
            if let Some(codes) = r["stalled_close_codes"].as_object() {
                for (code, n) in codes {
                    let sum = n.as_u64().unwrap_or(0)
                        + t.stalled_codes
                            .get(code)
                            .and_then(Value::as_u64)
                            .unwrap_or(0);
                    t.stalled_codes.insert(code.clone(), json!(sum));
                }
            }
            let sparse: Vec<[u64; 2]> =
                serde_json::from_value(r["hist"].clone()).unwrap_or_default();
            t.hist.add(&sparse);
        }
        Ok(t)
    }

    /// Sends `stall` or `resume` to every worker.
    pub(super) async fn all(&mut self, cmd: &str) -> Result<(), String> {
        for w in &mut self.workers {
            w.cmd(cmd).await?;
        }
        Ok(())
    }
}

/// What the workers said since the last `take`.
#[derive(Default)]
pub(super) struct Take {
    pub(super) received: u64,
    pub(super) hist: Merged,
    /// Sockets of counted subscribers that ended (in total, not since the last take).
    pub(super) closed: u64,
    /// Sockets of stalled subscribers that ended (in total).
    pub(super) closed_stalled: u64,
    /// Those by the close code they received (`none`: no close frame), in total.
    pub(super) stalled_codes: serde_json::Map<String, Value>,
}
