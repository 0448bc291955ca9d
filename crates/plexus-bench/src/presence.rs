//! `plexus-bench presence` — presence at scale: N users join one presence topic within a few
//! seconds, then a share of them leave, on one node and on two nodes sharing a Redis; run
//! with merged presence diffs (`presence.diff_interval_ms`) and without (0). Prints, per run,
//! the frames and bytes the members received (`presence_state` and `presence_diff` apart),
//! the servers' CPU time, and whether every member's final view is exact.
//!
//! Each member keeps its view as phoenix.js does (one meta per user here, so a bit per user:
//! a join sets it, a leave clears it, both idempotent; diffs that come before the
//! `presence_state` wait for it and are applied after it, as `Presence` does) and, once the
//! server is quiet, the view of each member still joined must be exactly the users still
//! joined. A member whose connection the server closed counts as failed.

use crate::load::procs;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_websockets::{ClientBuilder, Message};

const SECRET: &str = "presence-bench-secret-0123456789abcdef";
const TOPIC: &str = "presence:lobby";

#[derive(clap::Args)]
pub struct Opts {
    /// The `plexus` binary to run (started by the benchmark, once per run).
    #[arg(long, default_value = "target/release/plexus")]
    plexus: String,
    /// `redis-server` for the two-node runs.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Users joining the topic (one connection each).
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Seconds over which they join (evenly spread).
    #[arg(long, default_value_t = 10.0)]
    join_secs: f64,
    /// Percent of the users that leave once all have joined (over one second).
    #[arg(long, default_value_t = 10)]
    leave_percent: usize,
    /// `presence.diff_interval_ms` values to run, comma separated (0: merging off).
    #[arg(long, default_value = "50,0")]
    intervals: String,
    /// Node counts to run, comma separated (2: two nodes on one Redis).
    #[arg(long, default_value = "1,2")]
    nodes: String,
    /// Seconds without any presence frame after which a phase is over.
    #[arg(long, default_value_t = 3.0)]
    quiet_secs: f64,
}

#[derive(Default)]
struct Counts {
    state_frames: AtomicU64,
    state_bytes: AtomicU64,
    diff_frames: AtomicU64,
    diff_bytes: AtomicU64,
    diff_entries: AtomicU64,
    other_frames: AtomicU64,
    last_frame_ms: AtomicU64,
}

/// A member's view: one bit per user; the diffs that came before its `presence_state`
/// (joined keys, left keys), applied after it.
struct View {
    bits: Vec<u64>,
    synced: bool,
    early: Vec<(Vec<String>, Vec<String>)>,
}

impl View {
    fn new(n: usize) -> Self {
        View {
            bits: vec![0; n.div_ceil(64)],
            synced: false,
            early: Vec::new(),
        }
    }

    fn diff<'a>(
        &mut self,
        joins: impl Iterator<Item = &'a str>,
        leaves: impl Iterator<Item = &'a str>,
    ) {
        if !self.synced {
            self.early.push((
                joins.map(str::to_owned).collect(),
                leaves.map(str::to_owned).collect(),
            ));
            return;
        }
        for k in joins {
            self.set(k, true);
        }
        for k in leaves {
            self.set(k, false);
        }
    }
    fn has(&self, i: usize) -> bool {
        self.bits
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, key: &str, on: bool) {
        let Some(i) = key.strip_prefix('u').and_then(|k| k.parse::<usize>().ok()) else {
            return;
        };
        if let Some(w) = self.bits.get_mut(i / 64) {
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }
}

#[derive(Deserialize)]
struct Diff<'a> {
    #[serde(borrow)]
    joins: HashMap<&'a str, serde::de::IgnoredAny>,
    #[serde(borrow)]
    leaves: HashMap<&'a str, serde::de::IgnoredAny>,
}

pub async fn run(opts: Opts) -> Result<(), String> {
    let intervals: Vec<u64> = list(&opts.intervals)?;
    let nodes: Vec<usize> = list(&opts.nodes)?;
    println!(
        "presence at scale: {} users join {TOPIC} over {} s, then {} % leave over 1 s",
        opts.users, opts.join_secs, opts.leave_percent
    );
    println!(
        "| nodes | diff interval | presence_diff frames | diff bytes | presence_state frames | state bytes | all bytes | server CPU s | exact views |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in &nodes {
        for &ms in &intervals {
            let r = one_run(&opts, n, ms).await?;
            println!(
                "| {n} | {ms} ms | {} | {} | {} | {} | {} | {:.2} | {} / {} |",
                r.diff_frames,
                mib(r.diff_bytes),
                r.state_frames,
                mib(r.state_bytes),
                mib(r.diff_bytes + r.state_bytes),
                r.cpu_secs,
                r.exact,
                r.members
            );
            eprintln!(
                "  (diff entries {}, other frames {}, join phase {:.1} s, total {:.1} s)",
                r.diff_entries, r.other_frames, r.join_secs, r.total_secs
            );
        }
    }
    Ok(())
}

fn list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|x| x.trim().parse().map_err(|_| format!("bad list item {x:?}")))
        .collect()
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

struct RunResult {
    diff_frames: u64,
    diff_bytes: u64,
    diff_entries: u64,
    state_frames: u64,
    state_bytes: u64,
    other_frames: u64,
    cpu_secs: f64,
    exact: usize,
    members: usize,
    join_secs: f64,
    total_secs: f64,
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        // The servers before the Redis they use (started first).
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_port(port: u16) -> Result<(), String> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("nothing listens on {port}"))
}

async fn one_run(opts: &Opts, nodes: usize, interval_ms: u64) -> Result<RunResult, String> {
    let mut procs = Procs(Vec::new());
    let redis_url = if nodes > 1 {
        let port = free_port()?;
        let child = Command::new(&opts.redis_server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", opts.redis_server))?;
        procs.0.push(child);
        wait_port(port).await?;
        Some(format!("redis://127.0.0.1:{port}"))
    } else {
        None
    };
    let config =
        std::env::temp_dir().join(format!("plexus-presence-bench-{}.toml", std::process::id()));
    // Bounds raised so that the run measures presence, not the caps: one address opens every
    // connection, and without merging a member may be thousands of diffs behind.
    std::fs::write(
        &config,
        format!(
            "profile = \"dev\"\njwt_secret = \"{SECRET}\"\n{}\n[limits]\nmax_connections_per_ip = 0\nconnect_rate_per_ip = 0.0\nmax_pending_connections_per_ip = 0\nidle_timeout_secs = 3600\nwrite_timeout_secs = 600\noutbox_max_frames = 10000000\noutbox_max_bytes = 1073741824\n[[channels]]\ntopic = \"presence:*\"\npresence = true\n",
            if redis_url.is_some() { "broker = \"redis\"" } else { "" }
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut ports = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..nodes {
        let port = free_port()?;
        let mut cmd = Command::new(&opts.plexus);
        cmd.arg("--config")
            .arg(&config)
            .env("PLEXUS_LISTEN", format!("127.0.0.1:{port}"))
            .env("PLEXUS_PRESENCE_DIFF_INTERVAL_MS", interval_ms.to_string())
            .env("PLEXUS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(
                    std::env::temp_dir().join(format!("plexus-presence-bench-{port}.log")),
                )
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
            );
        if let Some(url) = &redis_url {
            cmd.env("PLEXUS_REDIS_URL", url);
        }
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", opts.plexus))?;
        pids.push(child.id());
        procs.0.push(child);
        wait_port(port).await?;
        ports.push(port);
    }
    let cpu_before = procs::cpu_ticks(&pids);
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let n = opts.users;
    let views: Arc<Vec<Mutex<View>>> = Arc::new((0..n).map(|_| Mutex::new(View::new(n))).collect());
    let leaving: Vec<Arc<AtomicBool>> = (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut tasks = Vec::new();
    let issuer = plexus_core::auth::Issuer::hs256(SECRET.as_bytes());
    let gap = Duration::from_secs_f64(opts.join_secs / n as f64);
    let mut next = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(next).await;
        next += gap;
        let token = issuer
            .issue(&format!("u{i}"), &[], None, 3600)
            .map_err(|e| e.to_string())?;
        let url = format!(
            "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0&token={token}",
            ports[i % ports.len()]
        );
        let counts = counts.clone();
        let views = views.clone();
        let leave = leaving[i].clone();
        tasks.push(tokio::spawn(async move {
            member(i, url, counts, views, leave, started).await
        }));
    }
    wait_quiet(&counts, started, opts.quiet_secs).await;
    let join_secs = started.elapsed().as_secs_f64();
    let leavers = n * opts.leave_percent / 100;
    // Every tenth user (for 10 %) leaves, spread over one second.
    let step = (n / leavers.max(1)).max(1);
    let left: Vec<usize> = (0..n).step_by(step).take(leavers).collect();
    let gap = Duration::from_secs_f64(1.0 / left.len().max(1) as f64);
    for &i in &left {
        leaving[i].store(true, Relaxed);
        tokio::time::sleep(gap).await;
    }
    wait_quiet(&counts, started, opts.quiet_secs).await;
    let cpu = procs::cpu_ticks(&pids).saturating_sub(cpu_before);
    let total_secs = started.elapsed().as_secs_f64();
    // Exact: each remaining member sees every user but the leavers.
    let mut expected = View::new(n);
    for i in 0..n {
        expected.set(&format!("u{i}"), true);
    }
    for &i in &left {
        expected.set(&format!("u{i}"), false);
    }
    let mut exact = 0;
    let mut members = 0;
    let mut wrong: HashMap<usize, usize> = HashMap::new();
    for i in 0..n {
        if leaving[i].load(Relaxed) {
            continue;
        }
        members += 1;
        let v = views[i].lock().await;
        if v.bits == expected.bits {
            exact += 1;
            continue;
        }
        // Which users the inexact views get wrong (missing or extra), and in how many views.
        for (w, (got, want)) in v.bits.iter().zip(&expected.bits).enumerate() {
            let mut d = got ^ want;
            while d != 0 {
                let b = d.trailing_zeros() as usize;
                *wrong.entry(w * 64 + b).or_insert(0usize) += 1;
                d &= d - 1;
            }
        }
    }
    if !wrong.is_empty() {
        let mut w: Vec<_> = wrong.into_iter().collect();
        w.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let shown: Vec<String> = w
            .iter()
            .take(8)
            .map(|(u, n)| {
                format!(
                    "u{u} ({} in {n})",
                    if expected.has(*u) { "missing" } else { "extra" }
                )
            })
            .collect();
        eprintln!(
            "  {} users wrong in some view: {}",
            w.len(),
            shown.join(", ")
        );
    }
    let mut failed = 0;
    for t in tasks {
        if t.is_finished() {
            if let Ok(Err(e)) = t.await {
                if failed == 0 {
                    eprintln!("  a member failed: {e}");
                }
                failed += 1;
            }
        } else {
            t.abort();
        }
    }
    if failed > 0 {
        eprintln!("  {failed} members failed");
    }
    let _ = std::fs::remove_file(&config);
    drop(procs);
    Ok(RunResult {
        diff_frames: counts.diff_frames.load(Relaxed),
        diff_bytes: counts.diff_bytes.load(Relaxed),
        diff_entries: counts.diff_entries.load(Relaxed),
        state_frames: counts.state_frames.load(Relaxed),
        state_bytes: counts.state_bytes.load(Relaxed),
        other_frames: counts.other_frames.load(Relaxed),
        cpu_secs: cpu as f64 / 100.0,
        exact,
        members,
        join_secs,
        total_secs,
    })
}

/// Waits until no presence frame has arrived for `quiet` seconds.
async fn wait_quiet(counts: &Counts, started: Instant, quiet: f64) {
    let quiet_ms = (quiet * 1000.0) as u64;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = started.elapsed().as_millis() as u64;
        if now.saturating_sub(counts.last_frame_ms.load(Relaxed)) > quiet_ms {
            return;
        }
    }
}

/// One member: joins, keeps its view, leaves when told to.
async fn member(
    i: usize,
    url: String,
    counts: Arc<Counts>,
    views: Arc<Vec<Mutex<View>>>,
    leave: Arc<AtomicBool>,
    started: Instant,
) -> Result<(), String> {
    let uri = url.parse::<http::Uri>().map_err(|e| e.to_string())?;
    let addr = format!(
        "{}:{}",
        uri.host().unwrap_or("127.0.0.1"),
        uri.port_u16().unwrap_or(80)
    );
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut ws, _) = ClientBuilder::from_uri(uri)
        .connect_on(stream)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    use futures_util::{SinkExt, StreamExt};
    ws.send(Message::text(format!(
        "[\"1\",\"1\",\"{TOPIC}\",\"phx_join\",{{}}]"
    )))
    .await
    .map_err(|e| e.to_string())?;
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else {
                    return Err("closed by the server".into());
                };
                let Some(text) = msg.as_text() else { continue };
                let Ok((_, _, _, event, payload)) =
                    serde_json::from_str::<(Option<&str>, Option<&str>, &str, &str, &RawValue)>(text)
                else {
                    continue;
                };
                let len = text.len() as u64;
                match event {
                    "presence_state" => {
                        counts.state_frames.fetch_add(1, Relaxed);
                        counts.state_bytes.fetch_add(len, Relaxed);
                        let state: HashMap<&str, serde::de::IgnoredAny> =
                            serde_json::from_str(payload.get()).map_err(|e| e.to_string())?;
                        let mut v = views[i].lock().await;
                        for k in state.keys() {
                            v.set(k, true);
                        }
                        v.synced = true;
                        for (joins, leaves) in std::mem::take(&mut v.early) {
                            v.diff(joins.iter().map(String::as_str), leaves.iter().map(String::as_str));
                        }
                    }
                    "presence_diff" => {
                        counts.diff_frames.fetch_add(1, Relaxed);
                        counts.diff_bytes.fetch_add(len, Relaxed);
                        let diff: Diff = serde_json::from_str(payload.get()).map_err(|e| e.to_string())?;
                        counts.diff_entries.fetch_add((diff.joins.len() + diff.leaves.len()) as u64, Relaxed);
                        views[i]
                            .lock()
                            .await
                            .diff(diff.joins.keys().copied(), diff.leaves.keys().copied());
                    }
                    _ => {
                        counts.other_frames.fetch_add(1, Relaxed);
                        continue;
                    }
                }
                counts.last_frame_ms.fetch_max(started.elapsed().as_millis() as u64, Relaxed);
            }
            _ = check.tick() => {
                if leave.load(Relaxed) {
                    let _ = ws.send(Message::text(format!(
                        "[\"1\",\"2\",\"{TOPIC}\",\"phx_leave\",{{}}]"
                    ))).await;
                    let _ = ws.close().await;
                    return Ok(());
                }
            }
        }
    }
}
