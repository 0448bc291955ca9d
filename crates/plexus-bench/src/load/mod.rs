//! `plexus-bench load`: the load generator for side-by-side benchmarks. A coordinator process
//! spawns worker processes (`worker.rs`) that hold the subscribers, each from its own loopback
//! source addresses, and publishes itself (`publisher.rs`) through each server's HTTP API.
//! Protocol adapters (`adapter.rs`) let the same generator drive Plexus and its peers.
//! It measures the server's CPU and RSS (its whole process tree) and its own CPU, so that a run
//! where the generator, not the server, was the bottleneck is flagged.
//!
//! Scenarios (`--scenario`): `saturation` (rate stepped up until loss or p99 above a bound),
//! `fixed` (one rate), `topics` (many small topics, random publishes), `connect` (connect +
//! subscribe rate), `idle` (memory per idle subscribed connection), `slow` (a tenth of the
//! subscribers stop reading mid-run), `storm` (everyone connects and joins at once, retrying
//! like phoenix.js: a reconnect storm after a node restart, `storm.rs`). Each result is one JSON line on stdout and, with `--out`,
//! appended to a file that `plexus-bench report` turns into tables and charts.

pub mod adapter;
mod fleet;
pub mod histogram;
pub mod procs;
pub mod publisher;
mod slow;
pub mod storm;
pub mod worker;

use adapter::{Proto, Publish};
use fleet::Fleet;
use histogram::Merged;
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Saturation,
    Fixed,
    Topics,
    Connect,
    Idle,
    Slow,
    Storm,
}

#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Name of the server under test, as it appears in the results.
    #[arg(long)]
    pub target: String,
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    #[arg(long, value_enum)]
    pub proto: Proto,
    /// Subscriber URL; `{topic}`, `{token}`, `{i}` are filled in per subscriber. Several URLs
    /// separated by whitespace (nodes of a cluster): subscriber i uses URL (i / topics) mod
    /// their count, so each topic has subscribers behind every URL.
    #[arg(long)]
    pub url: String,
    /// Base URL of the server's HTTP publish API (http://127.0.0.1:PORT).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// plexus-api | peer-post | pusher
    #[arg(long, default_value = "plexus-api")]
    pub publish: String,
    #[arg(long, env = "PLEXUS_API_KEY", default_value = "")]
    pub api_key: String,
    /// Pusher app id, key and secret (Sockudo).
    #[arg(long, default_value = "")]
    pub pusher_app: String,
    #[arg(long, default_value = "")]
    pub pusher_key: String,
    #[arg(long, default_value = "")]
    pub pusher_secret: String,
    /// HS256 secret for `{token}` (a distinct user per subscriber).
    #[arg(long)]
    pub secret: Option<String>,
    /// CA certificate (PEM) for wss:// URLs.
    #[arg(long)]
    pub ca_pem: Option<String>,
    /// Server process id; CPU and RSS are summed over it and its descendants.
    #[arg(long)]
    pub pid: u32,
    #[arg(long, default_value_t = 2000)]
    pub subs: usize,
    /// Topic name (peers' channel names are \w+).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Number of topics (`topics` scenario).
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Messages per second (first step of `saturation`).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 4.0)]
    pub secs: f64,
    /// `saturation`: each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    #[arg(long, default_value_t = 8)]
    pub max_steps: usize,
    /// `saturation`: a step fails above this p99 (ms) or with any loss.
    #[arg(long, default_value_t = 250.0)]
    pub max_p99_ms: f64,
    /// `slow`: how long the stalled subscribers read nothing, in three equal windows (long
    /// enough for their kernel buffers and the server's per-connection queue to fill).
    #[arg(long, default_value_t = 18.0)]
    pub stall_secs: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 80)]
    pub size: usize,
    /// Worker processes (0: one per 6,000 subscribers, at least 2).
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// Source addresses, comma separated; split between the workers.
    #[arg(
        long,
        default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7"
    )]
    pub sources: String,
    /// Connections each worker opens at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Publisher connections, each with one request in flight (a server that fans out
    /// before it answers a publish needs several).
    #[arg(long, default_value_t = 16)]
    pub lanes: usize,
    /// Append each result line to this file.
    #[arg(long)]
    pub out: Option<String>,
    /// `wss://`: every handshake a full one (the client keeps no TLS session to resume).
    #[arg(long)]
    pub no_tls_resumption: bool,
    /// `wss://`: the server certificate's key, as the results name it (e.g. "ECDSA P-256").
    #[arg(long)]
    pub tls_cert: Option<String>,
}

/// CPU and RSS of the server, the generator and the machine over a window.
struct Meter {
    server: Vec<u32>,
    client: Vec<u32>,
    at: Instant,
    server0: u64,
    client0: u64,
    machine0: (u64, u64),
}

impl Meter {
    fn start(server: Vec<u32>, client: Vec<u32>) -> Meter {
        Meter {
            server0: procs::cpu_ticks(&server),
            client0: procs::cpu_ticks(&client),
            machine0: procs::machine(),
            at: Instant::now(),
            server,
            client,
        }
    }
    /// (seconds, server CPU-seconds, server %, client %, machine %) since start.
    fn read(&self) -> (f64, f64, f64, f64, f64) {
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let s = procs::cpu_ticks(&self.server).saturating_sub(self.server0) as f64 / 100.0;
        let c = procs::cpu_ticks(&self.client).saturating_sub(self.client0) as f64 / 100.0;
        let (b1, t1) = procs::machine();
        let m = 100.0 * procs::machine_cores() as f64 * (b1.saturating_sub(self.machine0.0)) as f64
            / (t1.saturating_sub(self.machine0.1)).max(1) as f64;
        (secs, s, 100.0 * s / secs, 100.0 * c / secs, m)
    }
}

fn publish_how(o: &Opts) -> Result<Publish, String> {
    Ok(match o.publish.as_str() {
        "plexus-api" => Publish::PlexusApi {
            key: o.api_key.clone(),
        },
        "peer-post" => Publish::PeerPost,
        "pusher" => Publish::Pusher {
            app_id: o.pusher_app.clone(),
            key: o.pusher_key.clone(),
            secret: o.pusher_secret.clone(),
        },
        other => return Err(format!("unknown --publish {other}")),
    })
}

fn publish_addr(o: &Opts) -> Result<SocketAddr, String> {
    let url = o.publish_url.as_deref().ok_or("--publish-url is needed")?;
    let hostport = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| format!("--publish-url must be http://IP:PORT, not {url}"))?;
    if !addr.ip().is_loopback() {
        return Err("loopback addresses only".into());
    }
    Ok(addr)
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// Publishes one step at `rate` for `secs` and waits for the deliveries (at most 3 s more).
#[allow(clippy::too_many_arguments)]
async fn step(
    o: &Opts,
    fleet: &mut Fleet,
    pool: &mut publisher::Pool,
    server: &[u32],
    secs: f64,
    rate: f64,
    subs_per_message: u64,
    mut topic: impl FnMut(u64) -> String,
) -> Result<Value, String> {
    fleet.take().await?; // zero the counters
    let failed0 = pool
        .counts
        .failed
        .load(std::sync::atomic::Ordering::Relaxed);
    let meter = Meter::start(server.to_vec(), fleet.pids());
    let count = (rate * secs).round().max(1.0) as u64;
    let sent0 = pool.counts.sent.load(std::sync::atomic::Ordering::Relaxed);
    let (_, _) = pool.run(rate, count, o.size, &mut topic).await;
    // Publishing ends when the last request has been answered.
    let answered_by = Instant::now() + Duration::from_secs(10);
    while pool.counts.sent.load(std::sync::atomic::Ordering::Relaxed) - sent0
        + pool
            .counts
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
        - failed0
        < count
        && Instant::now() < answered_by
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pub_secs = meter.at.elapsed().as_secs_f64();
    let expected = count * subs_per_message;
    let (mut received, mut hist) = (0u64, Merged::default());
    let mut closed;
    let mut rss_max = procs::rss_kib(server);
    let drain_until = Instant::now() + Duration::from_secs(3);
    loop {
        let t = fleet.take().await?;
        received += t.received;
        hist.add_merged(&t.hist);
        closed = t.closed;
        rss_max = rss_max.max(procs::rss_kib(server));
        if received >= expected || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (secs, server_cpu_s, server_pct, client_pct, machine_pct) = meter.read();
    let active_secs = pub_secs.max(secs.min(pub_secs + 3.0));
    let loss = expected.saturating_sub(received);
    let pub_failed = pool
        .counts
        .failed
        .load(std::sync::atomic::Ordering::Relaxed)
        - failed0;
    // The CPUs the generator may use (all of them, or the one `taskset` gave it).
    let client_cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    Ok(json!({
        "rate": round(rate, 1),
        "published": count,
        "publish_secs": round(pub_secs, 2),
        "publish_failed": pub_failed,
        "publish_error": pool.counts.first_error.lock().ok().and_then(|e| e.clone()),
        "expected": expected,
        "received": received,
        "loss_pct": round(100.0 * loss as f64 / expected.max(1) as f64, 3),
        "delivered_per_s": (received as f64 / active_secs).round(),
        "lat_ms": {"p50": hist.quantile_ms(0.5), "p99": hist.quantile_ms(0.99), "max": hist.quantile_ms(1.0)},
        "server_cpu_pct": server_pct.round(),
        "client_cpu_pct": client_pct.round(),
        // The generator's own cost (all its processes): what limits the figures it can measure.
        "client_cpu_us_per_delivery": if received > 0 { round(1e4 * client_pct * secs / received as f64, 2) } else { 0.0 },
        "machine_cpu_pct": machine_pct.round(),
        "deliveries_per_server_cpu_s": if server_cpu_s > 0.0 { (received as f64 / server_cpu_s).round() } else { 0.0 },
        "server_rss_max_kib": rss_max,
        "closed": closed,
        "generator_procs": fleet.workers.len(),
        // The generator used (nearly) all the CPU it had: the figure may be the generator's
        // limit, not the server's.
        "client_bound": client_pct >= 90.0 * client_cores,
    }))
}

fn emit(o: &Opts, mut v: Value) {
    v["target"] = json!(o.target);
    v["scenario"] = json!(format!("{:?}", o.scenario).to_lowercase());
    v["proto"] = json!(format!("{:?}", o.proto).to_lowercase());
    v["subs"] = json!(o.subs);
    v["transport"] = json!(if o.url.starts_with("wss:") {
        "wss"
    } else {
        "ws"
    });
    if o.url.starts_with("wss:") {
        v["tls"] = json!({"cert": o.tls_cert, "resumption": !o.no_tls_resumption});
    }
    v["at"] = json!(worker::now_us() / 1_000_000);
    let line = v.to_string();
    println!("{line}");
    if let Some(path) = &o.out {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

pub async fn run(o: Opts) -> Result<(), String> {
    let server = procs::tree(o.pid);
    if server.is_empty() || procs::rss_kib(&server) == 0 {
        return Err(format!("no process {}", o.pid));
    }
    let rss0 = procs::rss_kib(&server);
    let stall_every = if o.scenario == Scenario::Slow { 10 } else { 0 };
    let meter = Meter::start(server.clone(), vec![std::process::id()]);
    let mut fleet = Fleet::start(&o, stall_every).await?;
    let (mut connect_secs_wall, mut connect_cpu_s, ..) = meter.read();
    if let Some((ticks, at)) = fleet.warm {
        // Only the measured (resuming) connects.
        connect_secs_wall = at.elapsed().as_secs_f64();
        connect_cpu_s = procs::cpu_ticks(&server).saturating_sub(ticks) as f64 / 100.0;
    }
    // The workers did all their work since they started: their whole CPU time.
    let connect_client_pct = procs::cpu_ticks(&fleet.pids()) as f64 / connect_secs_wall.max(1e-3);
    let server = procs::tree(o.pid); // nginx may have spawned nothing new; refresh anyway
    let connected = json!({
        "ready": fleet.ready,
        "failed": fleet.failed,
        "first_error": fleet.first_error,
    });
    if fleet.ready == 0 {
        emit(
            &o,
            json!({"error": "no subscriber connected", "connect": connected}),
        );
        return Err(format!("no subscriber connected: {:?}", fleet.first_error));
    }
    match o.scenario {
        Scenario::Connect => {
            let secs = fleet.connect_secs.max(1e-3);
            emit(
                &o,
                json!({
                    "connect": connected,
                    "connects_per_s": (fleet.ready as f64 / secs).round(),
                    "secs": round(secs, 2),
                    "wall_secs": round(connect_secs_wall, 2),
                    "server_cpu_us_per_connect": round(1e6 * connect_cpu_s / fleet.ready as f64, 1),
                    "client_cpu_pct": connect_client_pct.round(),
                    "tls_resumed": fleet.resumed,
                }),
            );
        }
        Scenario::Storm => {
            let mut r = storm::result(
                connected,
                fleet.ready,
                connect_secs_wall,
                &fleet.joined_after,
                fleet.retries,
                connect_cpu_s,
                connect_client_pct,
            );
            r["tls_resumed"] = json!(fleet.resumed);
            emit(&o, r);
        }
        Scenario::Idle => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let rss1 = procs::rss_kib(&server);
            emit(
                &o,
                json!({
                    "connect": connected,
                    "server_rss_kib": {"before": rss0, "after": rss1},
                    "bytes_per_connection": ((rss1.saturating_sub(rss0)) as f64 * 1024.0 / fleet.ready as f64).round(),
                }),
            );
        }
        Scenario::Saturation | Scenario::Fixed | Scenario::Topics => {
            let mut pool = publisher::Pool::open(
                publish_addr(&o)?,
                publish_how(&o)?,
                o.size,
                if o.scenario == Scenario::Topics {
                    o.lanes.max(8)
                } else {
                    o.lanes
                },
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let steps = if o.scenario == Scenario::Fixed {
                1
            } else {
                o.max_steps
            };
            let mut rate = o.rate;
            let mut best: Option<Value> = None;
            let mut all = Vec::new();
            // What ended the steps: "server" (a step failed), "generator" (a step failed while
            // the generator's CPU was full: the server's limit was not found) or "step limit".
            let mut stopped = "step limit";
            let mut rng = 0x2545F4914F6CDD1Du64;
            for _ in 0..steps {
                let (per_msg, topics) = if o.scenario == Scenario::Topics {
                    (
                        (fleet.ready / o.topics.max(1) as u64).max(1),
                        o.topics.max(1),
                    )
                } else {
                    (fleet.ready, 1)
                };
                let base = o.topic.clone();
                let r = step(
                    &o,
                    &mut fleet,
                    &mut pool,
                    &server,
                    o.secs,
                    rate,
                    per_msg,
                    |_| {
                        if topics == 1 {
                            base.clone()
                        } else {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            worker::topic_of(&base, topics, (rng % topics as u64) as usize)
                        }
                    },
                )
                .await?;
                let p99 = r["lat_ms"]["p99"].as_f64().unwrap_or(f64::MAX);
                let ok = r["loss_pct"].as_f64().unwrap_or(100.0) == 0.0
                    && p99 <= o.max_p99_ms
                    && r["publish_failed"].as_u64().unwrap_or(1) == 0;
                eprintln!("  {} {:?} rate {rate:.0}/s: {r}", o.target, o.scenario);
                all.push(r.clone());
                if !ok {
                    // A step the generator could not keep up with (its CPU full: late
                    // receipts, hence loss or a high p99) is not a failure of the server.
                    stopped = if r["client_bound"].as_bool() == Some(true) {
                        "generator"
                    } else {
                        "server"
                    };
                    break;
                }
                best = Some(r);
                rate *= o.factor;
            }
            emit(
                &o,
                json!({
                    "connect": connected,
                    "topics": o.topics,
                    "best": best,
                    "steps": all,
                    "stopped": stopped,
                    "max_p99_ms": o.max_p99_ms,
                }),
            );
        }
        Scenario::Slow => {
            let r = slow::run(&o, &mut fleet, &server, connected).await?;
            emit(&o, r);
        }
    }
    for w in &mut fleet.workers {
        let _ = w.stdin.write_all(b"quit\n").await;
    }
    Ok(())
}
