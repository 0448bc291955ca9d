//! Soak test: a bounded churn of connects, joins, pushes, leaves and disconnects over
//! WebSocket, LongPoll and SSE, plus one publisher on the HTTP API, against one running server.
//!
//! * A short warm-up churn first (allocator arenas, lazily sized tables, the tokio worker
//!   pools all grow once), then the server is left to settle and its RSS and open file
//!   descriptors are taken as the **baseline**.
//! * The churn proper for `--secs`, printing one line every `--interval` seconds: elapsed time,
//!   server RSS (`/proc/PID/status` VmRSS), open fds (`/proc/PID/fd`), live connections
//!   (`GET /health`), operations done and errors.
//! * Then every client stops, the server is given time to settle (LongPoll sessions expire
//!   after two poll windows; a dropped SSE stream is noticed at its next write, a keep-alive
//!   comment at the latest), and the final figures are compared with the baseline.
//!
//! Fails (exit 1) when connections do not return to 0, open fds do not return to within
//! `--fd-margin` of the baseline, RSS ends more than `--rss-bound-mib` above the baseline, the
//! server still holds a topic, channel, presence entry or HTTP connection (`/metrics`,
//! `/api/channels`, presence of every soak topic), or more than `--max-error-pct` of the
//! operations failed (a churn that mostly fails would otherwise pass by leaving nothing behind).

use crate::http;
use plexus_client::{Client, ConnectOptions};
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What to churn, against which server, and the bounds the server must return to.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Socket URL, as phoenix.js takes it.
    #[arg(long, default_value = "ws://127.0.0.1:4000/socket")]
    pub url: String,
    /// Base HTTP URL of the same server (LongPoll, SSE, /health, /api/broadcast).
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    pub http: String,
    #[arg(long, env = "PLEXUS_JWT_SECRET")]
    pub secret: String,
    #[arg(long, env = "PLEXUS_API_KEY")]
    pub api_key: String,
    /// Server process id, to read its RSS and open fds from /proc.
    #[arg(long)]
    pub pid: u32,
    /// Seconds of measured churn.
    #[arg(long, default_value_t = 180)]
    pub secs: u64,
    /// Seconds of warm-up churn before the baseline is taken.
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Concurrent WebSocket workers (connect, join, push, maybe leave, disconnect, repeat).
    #[arg(long, default_value_t = 32)]
    pub ws: usize,
    /// Concurrent LongPoll workers (open a session, join by POST, poll, abandon it).
    #[arg(long, default_value_t = 12)]
    pub longpoll: usize,
    /// Concurrent SSE workers (open a stream on 1-3 topics, read, drop it).
    #[arg(long, default_value_t = 8)]
    pub sse: usize,
    /// API broadcasts per second (0: no publisher).
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// Distinct topics room:soak-0..N.
    #[arg(long, default_value_t = 16)]
    pub topics: usize,
    #[arg(long, default_value = "127.0.0.1")]
    pub sources: String,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    pub interval: u64,
    /// Longest wait, in seconds, for the server to settle after a churn (LongPoll sessions
    /// expire after two poll windows; a dropped SSE stream is noticed at its next write).
    #[arg(long, default_value_t = 90)]
    pub settle: u64,
    /// Accepted RSS growth above the post-warm-up baseline, in MiB.
    #[arg(long, default_value_t = 20)]
    pub rss_bound_mib: u64,
    /// Accepted open fds above the post-warm-up baseline.
    #[arg(long, default_value_t = 4)]
    pub fd_margin: usize,
    /// Accepted share of failed operations, in percent.
    #[arg(long, default_value_t = 1.0)]
    pub max_error_pct: f64,
}

/// Counters of one kind of client.
#[derive(Default)]
struct Counter {
    /// Connections (WebSocket), sessions (LongPoll), streams (SSE) or publishes (API) begun.
    cycles: AtomicU64,
    /// Protocol operations that succeeded (connect, join, push, leave, poll, …).
    ops: AtomicU64,
    errors: AtomicU64,
}

impl Counter {
    fn op(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> (u64, u64, u64) {
        (
            self.cycles.load(Ordering::Relaxed),
            self.ops.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// Counters of one churn phase.
#[derive(Default)]
struct Stats {
    ws: Counter,
    lp: Counter,
    sse: Counter,
    api: Counter,
    /// Messages received by clients (broadcasts, presence, LongPoll batches' messages, SSE events).
    received: AtomicU64,
    /// LongPoll polls that waited out the window (204).
    idle_polls: AtomicU64,
    /// Distinct error messages with their counts (first 20 kinds).
    errors: Mutex<Vec<(String, u64)>>,
}

impl Stats {
    fn error(&self, c: &Counter, what: impl Display) {
        c.errors.fetch_add(1, Ordering::Relaxed);
        let msg = what.to_string();
        if let Ok(mut e) = self.errors.lock() {
            if let Some(entry) = e.iter_mut().find(|(m, _)| *m == msg) {
                entry.1 += 1;
            } else if e.len() < 20 {
                e.push((msg, 1));
            }
        }
    }

    fn totals(&self) -> (u64, u64) {
        let all = [&self.ws, &self.lp, &self.sse, &self.api];
        (
            all.iter().map(|c| c.ops.load(Ordering::Relaxed)).sum(),
            all.iter().map(|c| c.errors.load(Ordering::Relaxed)).sum(),
        )
    }
}

/// What every worker shares.
struct Ctx {
    o: Opts,
    issuer: plexus_core::auth::Issuer,
    addr: SocketAddr,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    seed: u64,
}

impl Ctx {
    fn source(&self) -> IpAddr {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        self.sources[i % self.sources.len()]
    }

    fn token(&self, sub: &str) -> Result<String, String> {
        self.issuer
            .issue(sub, &[], None, 3600)
            .map_err(|e| format!("token: {e}"))
    }

    fn topic(&self, rng: &mut Rng) -> String {
        format!("room:soak-{}", rng.below(self.o.topics.max(1) as u64))
    }

    /// 1..=max distinct random topics.
    fn topics(&self, rng: &mut Rng, max: u64) -> Vec<String> {
        let n = 1 + rng.below(max);
        let mut ts: Vec<String> = Vec::new();
        for _ in 0..n {
            let t = self.topic(rng);
            if !ts.contains(&t) {
                ts.push(t);
            }
        }
        ts
    }
}

/// xorshift64*: enough randomness for a load generator, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// 0..n (0 when n is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}

/// One reading of the server.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    connections: Option<u64>,
}

fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// RSS and fds first (so that the /health request's own socket is not counted), then /health.
async fn sample(ctx: &Ctx) -> Result<Sample, String> {
    let rss_kib = crate::rss_kib(ctx.o.pid).ok_or("the server exited")?;
    let fds = fd_count(ctx.o.pid).ok_or("the server exited")?;
    let connections = health_connections(ctx).await;
    Ok(Sample {
        rss_kib,
        fds,
        connections,
    })
}

async fn health_connections(ctx: &Ctx) -> Option<u64> {
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = http::Conn::open(ctx.addr, None).await?;
        c.request("GET", "/health", &[("Connection", "close")], b"")
            .await
    })
    .await
    .ok()?
    .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    v["connections"].as_u64()
}

/// What the server still holds after the churn: topics in its hub, HTTP connections not admitted
/// as clients, channels with subscribers, presence entries of the soak's topics.
#[derive(Debug, Default)]
struct Leftovers {
    /// `plexus_topics` of /metrics.
    topics: Option<u64>,
    /// `plexus_http_connections` of /metrics (the /metrics request itself is one).
    http_connections: Option<u64>,
    /// `GET /api/channels`: topics with their subscriber counts.
    channels: Vec<String>,
    /// Soak topics whose presence is not empty.
    presence: Vec<String>,
}

impl Leftovers {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match self.topics {
            Some(0) => {}
            Some(n) => p.push(format!("{n} topics left in the hub (plexus_topics)")),
            None => p.push("plexus_topics unreadable".into()),
        }
        match self.http_connections {
            Some(0 | 1) => {}
            Some(n) => p.push(format!(
                "{} HTTP connections left (plexus_http_connections {n}, one is the /metrics request)",
                n - 1
            )),
            None => p.push("plexus_http_connections unreadable".into()),
        }
        if !self.channels.is_empty() {
            p.push(format!("channels left: {}", self.channels.join(", ")));
        }
        if !self.presence.is_empty() {
            p.push(format!("presence left: {}", self.presence.join(", ")));
        }
        p
    }
}

async fn get(ctx: &Ctx, path: &str, auth: Option<&str>) -> Result<Vec<u8>, String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = http::Conn::open(ctx.addr, None).await?;
        let mut headers = vec![("Connection", "close")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = c.request("GET", path, &headers, b"").await?;
        if r.status != 200 {
            return Err(format!("GET {path}: HTTP {}", r.status));
        }
        Ok(r.body)
    })
    .await
    .map_err(|_| format!("GET {path} timed out"))?
}

async fn leftovers(ctx: &Ctx) -> Result<Leftovers, String> {
    let mut l = Leftovers::default();
    let metrics = String::from_utf8_lossy(&get(ctx, "/metrics", None).await?).into_owned();
    let metric = |name: &str| {
        metrics.lines().find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
    };
    l.topics = metric("plexus_topics");
    l.http_connections = metric("plexus_http_connections");
    let auth = format!("Bearer {}", ctx.o.api_key);
    let body = get(ctx, "/api/channels", Some(&auth)).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    for c in v["channels"].as_array().into_iter().flatten() {
        l.channels
            .push(format!("{} ({} subscribers)", c["topic"], c["subscribers"]));
    }
    for i in 0..ctx.o.topics.max(1) {
        let topic = format!("room:soak-{i}");
        let path = format!("/api/channels/{}/presence", topic.replace(':', "%3A"));
        let body = get(ctx, &path, Some(&auth)).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let n = v["presence"].as_object().map_or(0, |p| p.len());
        if n > 0 {
            l.presence.push(format!("{topic} ({n} keys)"));
        }
    }
    Ok(l)
}

fn seed_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub async fn run(o: Opts) -> Result<(), String> {
    let sources = crate::parse_sources(&o.sources)?;
    let host = o
        .http
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let addr = tokio::net::lookup_host(host.as_str())
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let ctx = Arc::new(Ctx {
        issuer: plexus_core::auth::Issuer::hs256(o.secret.as_bytes()),
        addr,
        sources,
        next_source: AtomicUsize::new(0),
        seed: seed_now(),
        o,
    });
    let o = &ctx.o;
    let start = sample(&ctx).await?;
    if start.connections.is_none() {
        return Err(format!("GET {}/health failed", o.http));
    }
    println!(
        "soak: {} WebSocket, {} LongPoll, {} SSE workers, API publisher at {}/s, {} topics; \
         warm-up {} s, churn {} s; server pid {}",
        o.ws, o.longpoll, o.sse, o.rate, o.topics, o.warmup, o.secs, o.pid
    );
    println!(
        "start: rss {:.1} MiB, fds {}, connections {}",
        mib(start.rss_kib),
        start.fds,
        start.connections.unwrap_or(0)
    );

    // Warm-up, then the baseline.
    let warm = churn(&ctx, "warm-up", o.warmup).await;
    let (baseline, settled) = settle(&ctx, None).await?;
    println!(
        "baseline (after the {} s warm-up and {:.0} s of settling): rss {:.1} MiB, fds {}, connections {}",
        o.warmup,
        settled.as_secs_f64(),
        mib(baseline.rss_kib),
        baseline.fds,
        baseline.connections.unwrap_or(u64::MAX)
    );
    let (_, warm_errors) = warm.totals();

    // The churn proper.
    let stats = churn(&ctx, "churn", o.secs).await;
    let (final_, settled) = settle(&ctx, Some(baseline.fds + o.fd_margin)).await?;

    // Report.
    let secs = o.secs.max(1) as f64;
    let (ops, errors) = stats.totals();
    let rate = |c: &Counter| {
        let (cycles, ops, errors) = c.get();
        serde_json::json!({
            "cycles": cycles,
            "ops": ops,
            "ops_per_s": (ops as f64 / secs * 10.0).round() / 10.0,
            "errors": errors,
        })
    };
    println!(
        "churn done: {} ops ({:.0}/s), {} errors, {} messages received, {} LongPoll polls answered 204",
        ops,
        ops as f64 / secs,
        errors,
        stats.received.load(Ordering::Relaxed),
        stats.idle_polls.load(Ordering::Relaxed)
    );
    for (name, c, what) in [
        ("websocket", &stats.ws, "connections"),
        ("longpoll", &stats.lp, "sessions"),
        ("sse", &stats.sse, "streams"),
        ("api", &stats.api, "broadcasts"),
    ] {
        let (cycles, ops, errors) = c.get();
        println!(
            "  {name:<9} {cycles:>6} {what:<11} {ops:>7} ops ({:>6.1}/s)  {errors} errors",
            ops as f64 / secs
        );
    }
    if let Ok(e) = stats.errors.lock() {
        for (msg, n) in e.iter() {
            println!("  error ×{n}: {msg}");
        }
    }
    let rss_growth_kib = final_.rss_kib as i64 - baseline.rss_kib as i64;
    println!(
        "final (after {:.0} s of settling): rss {:.1} MiB ({:+.1} MiB vs baseline), fds {} ({:+} vs baseline), connections {}",
        settled.as_secs_f64(),
        mib(final_.rss_kib),
        rss_growth_kib as f64 / 1024.0,
        final_.fds,
        final_.fds as i64 - baseline.fds as i64,
        final_
            .connections
            .map_or("unknown".to_owned(), |c| c.to_string())
    );
    println!(
        "note: RSS is compared with the post-warm-up baseline, not the start: glibc malloc keeps \
         freed memory in its arenas, so RSS rarely returns to the start; a growth within {} MiB \
         is accepted, fds must return to within {} of the baseline and connections to 0.",
        o.rss_bound_mib, o.fd_margin
    );

    let left = leftovers(&ctx).await?;
    println!(
        "server state: plexus_topics {}, plexus_http_connections {} (this request included), \
         {} channels with subscribers, {} soak topics with presence",
        left.topics.map_or("?".to_owned(), |n| n.to_string()),
        left.http_connections
            .map_or("?".to_owned(), |n| n.to_string()),
        left.channels.len(),
        left.presence.len()
    );
    let mut failures = left.problems();
    if final_.connections != Some(0) {
        failures.push(format!(
            "connections did not return to 0 ({})",
            final_
                .connections
                .map_or("unknown".to_owned(), |c| c.to_string())
        ));
    }
    if final_.fds > baseline.fds + o.fd_margin {
        failures.push(format!(
            "open fds did not return to the baseline: {} > {} + {}",
            final_.fds, baseline.fds, o.fd_margin
        ));
    }
    if rss_growth_kib > (o.rss_bound_mib * 1024) as i64 {
        failures.push(format!(
            "RSS grew {:.1} MiB above the baseline (bound {} MiB)",
            rss_growth_kib as f64 / 1024.0,
            o.rss_bound_mib
        ));
    }
    let error_pct = if ops + errors > 0 {
        errors as f64 * 100.0 / (ops + errors) as f64
    } else {
        100.0
    };
    if error_pct > o.max_error_pct {
        failures.push(format!(
            "{error_pct:.2}% of the operations failed (bound {}%)",
            o.max_error_pct
        ));
    }
    println!(
        "{}",
        serde_json::json!({
            "secs": o.secs,
            "warmup_secs": o.warmup,
            "warmup_errors": warm_errors,
            "start": {"rss_kib": start.rss_kib, "fds": start.fds},
            "baseline": {"rss_kib": baseline.rss_kib, "fds": baseline.fds},
            "final": {"rss_kib": final_.rss_kib, "fds": final_.fds, "connections": final_.connections},
            "settle_secs": settled.as_secs(),
            "leftovers": left.problems(),
            "websocket": rate(&stats.ws),
            "longpoll": rate(&stats.lp),
            "sse": rate(&stats.sse),
            "api": rate(&stats.api),
            "received": stats.received.load(Ordering::Relaxed),
            "longpoll_idle_polls": stats.idle_polls.load(Ordering::Relaxed),
            "ok": failures.is_empty(),
        })
    );
    if failures.is_empty() {
        println!("soak: OK");
        Ok(())
    } else {
        Err(format!("soak FAILED: {}", failures.join("; ")))
    }
}

/// Runs every worker for `secs`, printing a line every interval; returns the phase's counters.
async fn churn(ctx: &Arc<Ctx>, label: &str, secs: u64) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    let began = Instant::now();
    let deadline = began + Duration::from_secs(secs);
    let mut set = JoinSet::new();
    for w in 0..ctx.o.ws {
        set.spawn(worker(
            ctx.clone(),
            stats.clone(),
            deadline,
            w,
            Transport::WebSocket,
        ));
    }
    for w in 0..ctx.o.longpoll {
        set.spawn(worker(
            ctx.clone(),
            stats.clone(),
            deadline,
            w,
            Transport::LongPoll,
        ));
    }
    for w in 0..ctx.o.sse {
        set.spawn(worker(
            ctx.clone(),
            stats.clone(),
            deadline,
            w,
            Transport::Sse,
        ));
    }
    if ctx.o.rate > 0 {
        set.spawn(publisher(ctx.clone(), stats.clone(), deadline));
    }
    // Workers finish the cycle they are in; one that is stuck past this is cut off.
    let cutoff = deadline + Duration::from_secs(45);
    let interval = Duration::from_secs(ctx.o.interval.max(1));
    let mut tick = tokio::time::interval_at(began + interval, interval);
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Err(e)) if e.is_panic() => stats.error(&stats.ws, format!("worker panicked: {e}")),
                Some(_) => {}
            },
            _ = tick.tick() => progress(ctx, label, began, &stats).await,
            _ = tokio::time::sleep_until(cutoff) => {
                let stuck = set.len();
                set.abort_all();
                while set.join_next().await.is_some() {}
                stats.error(&stats.ws, format!("{stuck} workers still busy 45 s after the end, cut off"));
                break;
            }
        }
    }
    println!(
        "{label} stopped after {:.1} s (every client done)",
        began.elapsed().as_secs_f64()
    );
    stats
}

async fn progress(ctx: &Ctx, label: &str, began: Instant, stats: &Stats) {
    let s = sample(ctx).await.unwrap_or_default();
    let (ops, errors) = stats.totals();
    println!(
        "[{label} {:>4.0} s] rss {:>6.1} MiB  fds {:>5}  connections {:>5}  ops {:>8} (ws {} lp {} sse {} api {})  errors {}",
        began.elapsed().as_secs_f64(),
        mib(s.rss_kib),
        s.fds,
        s.connections.map_or("?".to_owned(), |c| c.to_string()),
        ops,
        stats.ws.ops.load(Ordering::Relaxed),
        stats.lp.ops.load(Ordering::Relaxed),
        stats.sse.ops.load(Ordering::Relaxed),
        stats.api.ops.load(Ordering::Relaxed),
        errors
    );
}

/// Waits until no connection is left and the fd count is stable (and, with `target`, at most
/// `target`), or `--settle` seconds; returns the reading taken then and the time it took.
async fn settle(ctx: &Ctx, target: Option<usize>) -> Result<(Sample, Duration), String> {
    let began = Instant::now();
    let limit = Duration::from_secs(ctx.o.settle);
    let mut last: Option<Sample> = None;
    let mut stable = 0;
    let mut readings = 0u64;
    loop {
        let s = sample(ctx).await?;
        readings += 1;
        let quiet = s.connections == Some(0) && target.is_none_or(|t| s.fds <= t);
        stable = match last {
            Some(l) if quiet && l.fds == s.fds => stable + 1,
            _ => 0,
        };
        last = Some(s);
        // Three equal readings a second apart with nothing connected.
        if stable >= 2 || began.elapsed() >= limit {
            break;
        }
        if readings.is_multiple_of(5) {
            println!(
                "  settling {:>3.0} s: rss {:.1} MiB, fds {}, connections {}",
                began.elapsed().as_secs_f64(),
                mib(s.rss_kib),
                s.fds,
                s.connections.map_or("?".to_owned(), |c| c.to_string())
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The allocator gives freed pages back a moment after the last free.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut s = sample(ctx).await?;
    if s.connections.is_none() {
        s.connections = last.and_then(|l| l.connections);
    }
    Ok((s, began.elapsed()))
}

fn worker_rng(ctx: &Ctx, kind: u64, w: usize) -> Rng {
    Rng::new(ctx.seed ^ (kind << 56) ^ ((w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// The transports a worker churns.
#[derive(Clone, Copy)]
enum Transport {
    WebSocket,
    LongPoll,
    Sse,
}

/// Runs cycles of one transport until `deadline`, each bounded by 30 s; a failed cycle is
/// counted and followed by a short pause.
async fn worker(ctx: Arc<Ctx>, stats: Arc<Stats>, deadline: Instant, w: usize, t: Transport) {
    let (kind, name) = match t {
        Transport::WebSocket => (1, "websocket"),
        Transport::LongPoll => (2, "longpoll"),
        Transport::Sse => (3, "sse"),
    };
    let counter = match t {
        Transport::WebSocket => &stats.ws,
        Transport::LongPoll => &stats.lp,
        Transport::Sse => &stats.sse,
    };
    let mut rng = worker_rng(&ctx, kind, w);
    let mut cycle = 0u64;
    while Instant::now() < deadline {
        cycle += 1;
        counter.cycles.fetch_add(1, Ordering::Relaxed);
        let one = async {
            match t {
                Transport::WebSocket => ws_cycle(&ctx, &stats, w, cycle, &mut rng).await,
                Transport::LongPoll => lp_cycle(&ctx, &stats, w, cycle, &mut rng).await,
                Transport::Sse => sse_cycle(&ctx, &stats, w, cycle, &mut rng).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), one).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stats.error(counter, e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => stats.error(counter, format!("{name} cycle timed out (30 s)")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket: connect, join 1-3 topics, push 1-4 messages, read for a moment, sometimes leave,
// disconnect (mostly politely, sometimes by dropping the TCP connection); one cycle in ten
// sends its joins and hangs up without waiting for the replies.

async fn ws_cycle(
    ctx: &Ctx,
    stats: &Stats,
    w: usize,
    cycle: u64,
    rng: &mut Rng,
) -> Result<(), String> {
    let c = &stats.ws;
    let token = ctx.token(&format!("ws-{w}-{cycle}"))?;
    let opts = ConnectOptions::new(ctx.o.url.clone())
        .token(token)
        .source(SocketAddr::new(ctx.source(), 0));
    let mut client = Client::connect(opts)
        .await
        .map_err(|e| format!("websocket connect: {e}"))?;
    c.op();
    let topics = ctx.topics(rng, 3);
    if rng.chance(10) {
        // A client that vanishes mid-join: the joins are sent, the replies never read.
        for (i, t) in topics.iter().enumerate() {
            let r = i + 1;
            client
                .send_text(
                    &serde_json::json!([r.to_string(), r.to_string(), t, "phx_join", {}])
                        .to_string(),
                )
                .await
                .map_err(|e| format!("websocket join: {e}"))?;
        }
        tokio::time::sleep(rng.millis(0, 20)).await;
        drop(client);
        c.op();
        return Ok(());
    }
    for t in &topics {
        let reply = client
            .join(t, serde_json::json!({}))
            .await
            .map_err(|e| format!("websocket join: {e}"))?;
        if !reply.is_ok() {
            return Err(format!("websocket join refused: {:?}", reply.reason()));
        }
        c.op();
    }
    for i in 0..1 + rng.below(4) {
        let t = &topics[rng.below(topics.len() as u64) as usize];
        let reply = client
            .push_json(
                t,
                "msg",
                &serde_json::json!({"body": "soak message", "worker": w, "n": i}),
            )
            .await
            .map_err(|e| format!("websocket push: {e}"))?;
        if !reply.is_ok() {
            return Err(format!("websocket push refused: {:?}", reply.reason()));
        }
        c.op();
    }
    // Hold the connection for a moment, reading what others send (broadcasts, presence).
    let until = Instant::now() + rng.millis(0, 800);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match client.recv_timeout(left).await {
            Ok(Some(_)) => {
                stats.received.fetch_add(1, Ordering::Relaxed);
                if left.is_zero() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return Err(format!("websocket read: {e}")),
        }
    }
    if rng.chance(50) {
        for t in &topics {
            let reply = client
                .leave(t)
                .await
                .map_err(|e| format!("websocket leave: {e}"))?;
            if !reply.is_ok() {
                return Err(format!("websocket leave refused: {:?}", reply.reason()));
            }
            c.op();
        }
    }
    if rng.chance(75) {
        client.close().await;
    } else {
        drop(client);
    }
    c.op();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// LongPoll: open a session, join 1-2 topics and push once in one POST (or, one session in
// ten, only send a heartbeat), poll 1-3 times, sometimes leave, sometimes start one more poll
// and hang up mid-poll, then stop polling: the session expires after two windows.

fn lp_status(body: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "longpoll: bad body ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })
}

async fn lp_cycle(
    ctx: &Ctx,
    stats: &Stats,
    w: usize,
    cycle: u64,
    rng: &mut Rng,
) -> Result<(), String> {
    let c = &stats.lp;
    let source = ctx.source();
    let mut conn = http::Conn::open(ctx.addr, Some(source)).await?;
    let token = ctx.token(&format!("lp-{w}-{cycle}"))?;
    let r = conn
        .request(
            "GET",
            &format!("/socket/longpoll?vsn=2.0.0&token={token}"),
            &[],
            b"",
        )
        .await
        .map_err(|e| format!("longpoll open: {e}"))?;
    let v = lp_status(&r.body)?;
    let session = match (v["status"].as_u64(), v["token"].as_str()) {
        (Some(410), Some(s)) if s.starts_with("plp.") => s.to_owned(),
        _ => return Err(format!("longpoll open: HTTP {} {v}", r.status)),
    };
    c.op();
    let q = format!("/socket/longpoll?vsn=2.0.0&token={session}");
    let ndjson = [("Content-Type", "application/x-ndjson")];

    // Join and push in one POST. One session in ten stays quiet instead: a heartbeat and no
    // channel, so that its later polls wait out the window and answer 204.
    let quiet = rng.chance(10);
    let topics = if quiet {
        Vec::new()
    } else {
        ctx.topics(rng, 2)
    };
    let mut lines = Vec::new();
    let mut join_refs = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        let r = (i + 1).to_string();
        lines.push(serde_json::json!([r, r, t, "phx_join", {}]).to_string());
        join_refs.push(r);
    }
    match topics.first() {
        Some(t) => lines.push(
            serde_json::json!(["1", (topics.len() + 1).to_string(), t, "msg", {"body": "soak longpoll", "worker": w}])
                .to_string(),
        ),
        None => {
            lines.push(r#"[null,"1","phoenix","heartbeat",{}]"#.to_owned());
            join_refs.push("1".to_owned());
        }
    }
    let r = conn
        .request("POST", &q, &ndjson, lines.join("\n").as_bytes())
        .await
        .map_err(|e| format!("longpoll post: {e}"))?;
    let v = lp_status(&r.body)?;
    if v["status"] != 200 {
        return Err(format!("longpoll post: HTTP {} {v}", r.status));
    }
    c.op();

    // Poll; the join replies arrive with the first poll.
    let mut replies_ok = 0;
    let polls = if quiet { 2 } else { 1 + rng.below(3) };
    for _ in 0..polls {
        let r = conn
            .request("GET", &q, &[], b"")
            .await
            .map_err(|e| format!("longpoll poll: {e}"))?;
        let v = lp_status(&r.body)?;
        match v["status"].as_u64() {
            Some(200) => {
                let messages = v["messages"].as_array().cloned().unwrap_or_default();
                stats
                    .received
                    .fetch_add(messages.len() as u64, Ordering::Relaxed);
                for m in messages {
                    let m: serde_json::Value = m
                        .as_str()
                        .and_then(|s| serde_json::from_str(s).ok())
                        .unwrap_or_default();
                    if m[3] == "phx_reply" && join_refs.iter().any(|r| m[1] == *r.as_str()) {
                        if m[4]["status"] != "ok" {
                            return Err(format!("longpoll join/heartbeat refused: {m}"));
                        }
                        replies_ok += 1;
                    }
                }
            }
            Some(204) => {
                stats.idle_polls.fetch_add(1, Ordering::Relaxed);
            }
            _ => return Err(format!("longpoll poll: HTTP {} {v}", r.status)),
        }
        c.op();
    }
    if replies_ok < join_refs.len() {
        return Err(format!(
            "longpoll: {replies_ok} of {} join/heartbeat replies polled",
            join_refs.len()
        ));
    }
    if !quiet && rng.chance(30) {
        let line = serde_json::json!(["1", "99", topics[0], "phx_leave", {}]).to_string();
        let r = conn
            .request("POST", &q, &ndjson, line.as_bytes())
            .await
            .map_err(|e| format!("longpoll leave: {e}"))?;
        let v = lp_status(&r.body)?;
        if v["status"] != 200 {
            return Err(format!("longpoll leave: HTTP {} {v}", r.status));
        }
        c.op();
    }
    drop(conn);
    if rng.chance(20) {
        // A client that hangs up in the middle of a poll.
        let mut conn = http::Conn::open(ctx.addr, Some(source)).await?;
        conn.send("GET", &q, &[], b"")
            .await
            .map_err(|e| format!("longpoll abandoned poll: {e}"))?;
        tokio::time::sleep(rng.millis(50, 500)).await;
        drop(conn);
        c.op();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SSE: open a stream on 1-3 topics, read it for 0.5-4 s, drop it; one cycle in ten hangs up
// right after sending the request.

async fn sse_cycle(
    ctx: &Ctx,
    stats: &Stats,
    w: usize,
    cycle: u64,
    rng: &mut Rng,
) -> Result<(), String> {
    let c = &stats.sse;
    let topics = ctx.topics(rng, 3);
    let token = ctx.token(&format!("sse-{w}-{cycle}"))?;
    let mut path = String::from("/sse?");
    for t in &topics {
        path.push_str("topic=");
        path.push_str(&t.replace(':', "%3A"));
        path.push('&');
    }
    path.push_str("token=");
    path.push_str(&token);
    let mut conn = http::Conn::open(ctx.addr, Some(ctx.source())).await?;
    conn.send("GET", &path, &[("Accept", "text/event-stream")], b"")
        .await
        .map_err(|e| format!("sse open: {e}"))?;
    if rng.chance(10) {
        // A client that hangs up while its stream is being opened (the joins under way).
        tokio::time::sleep(rng.millis(0, 20)).await;
        drop(conn);
        c.op();
        return Ok(());
    }
    let head = conn
        .read_head()
        .await
        .map_err(|e| format!("sse open: {e}"))?;
    if head.status != 200 {
        let body = conn.read_body(&head).await.unwrap_or_default();
        return Err(format!(
            "sse open: HTTP {} {}",
            head.status,
            String::from_utf8_lossy(&body)
        ));
    }
    if !head.chunked() {
        return Err("sse: the stream is not chunked".into());
    }
    c.op();
    let until = Instant::now() + rng.millis(500, 4000);
    let mut text = String::new();
    let mut joined = 0;
    loop {
        let chunk = match tokio::time::timeout_at(until, conn.next_chunk()).await {
            Err(_) => break,
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return Err("sse: the server ended the stream".into()),
            Ok(Err(e)) => return Err(format!("sse read: {e}")),
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if event.starts_with(':') || event.starts_with("retry:") {
                continue;
            }
            if event.contains("event: join_error") {
                return Err(format!("sse join refused: {}", event.trim()));
            }
            if event.contains("event: joined") {
                joined += 1;
                c.op();
            } else if event.contains("data: ") {
                stats.received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if joined < topics.len() {
        return Err(format!(
            "sse: {joined} of {} joined events read",
            topics.len()
        ));
    }
    // The stream is dropped with the connection, as a browser tab that closes.
    drop(conn);
    c.op();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The API publisher: POST /api/broadcast to a random topic at `--rate` per second over one
// kept-alive connection (reopened after an error).

async fn publisher(ctx: Arc<Ctx>, stats: Arc<Stats>, deadline: Instant) {
    let c = &stats.api;
    let mut rng = worker_rng(&ctx, 4, 0);
    let auth = format!("Bearer {}", ctx.o.api_key);
    let interval = Duration::from_micros(1_000_000 / ctx.o.rate.max(1));
    let mut next = Instant::now();
    let mut conn: Option<http::Conn> = None;
    let mut seq = 0u64;
    while next < deadline {
        tokio::time::sleep_until(next).await;
        next += interval;
        seq += 1;
        c.cycles.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "topic": ctx.topic(&mut rng),
            "event": "news",
            "payload": {"seq": seq, "body": "soak broadcast"},
        })
        .to_string();
        let result = async {
            if conn.is_none() {
                conn = Some(http::Conn::open(ctx.addr, Some(ctx.source())).await?);
            }
            let Some(cn) = conn.as_mut() else {
                return Err("no connection".to_owned());
            };
            let r = cn
                .request(
                    "POST",
                    "/api/broadcast",
                    &[
                        ("Authorization", auth.as_str()),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                )
                .await?;
            if r.status != 200 {
                return Err(format!(
                    "HTTP {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), result).await {
            Ok(Ok(())) => c.op(),
            Ok(Err(e)) => {
                conn = None;
                stats.error(c, format!("api broadcast: {e}"));
            }
            Err(_) => {
                conn = None;
                stats.error(c, "api broadcast timed out (10 s)");
            }
        }
    }
}
