//! Plexus benchmarks. Each subcommand prints its figures; `BENCHMARKS.md` records them.
//!
//! * `conns` — memory per idle connection: opens N connections, each a distinct user with an
//!   ordinary token (`sub`, two roles, `iat`, `exp`) and joined to
//!   one channel, and prints the server's RSS growth per connection.
//! * `soak` — a bounded churn of connects/joins/pushes/leaves/disconnects over WebSocket,
//!   LongPoll and SSE with an API publisher; prints server RSS, open fds and connections over
//!   time and fails if they do not return to their baseline once the churn stops.
//! * `load` — the side-by-side load generator (`load/`): worker processes hold the subscribers,
//!   protocol adapters drive Plexus and its peers alike; `scripts/bench-compare` runs it.
//! * `report` — turns `load` results into BENCHMARKS.md's table and the SVG charts.
//! * `presence` — presence at scale, with merged presence diffs and without (`presence.rs`).

mod http;
mod load;
mod presence;
mod report;
mod soak;

use clap::{Parser, Subcommand};
use plexus_client::{Client, ConnectOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(
    name = "plexus-bench",
    about = "Load and memory benchmarks for Plexus",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Idle connections: server RSS growth per joined connection.
    Conns {
        /// Socket URL, as phoenix.js takes it.
        #[arg(long, default_value = "ws://127.0.0.1:4000/socket")]
        url: String,
        /// HS256 secret the server verifies tokens with.
        #[arg(long, env = "PLEXUS_JWT_SECRET")]
        secret: String,
        /// Number of connections (one process holds at most ~19,900 here).
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        /// Distinct topics; connection i joins room:bench-(i mod topics).
        #[arg(long, default_value_t = 1)]
        topics: usize,
        /// Server process id, to read its RSS from /proc.
        #[arg(long)]
        pid: u32,
        /// Local source addresses, comma separated (127.0.0.x spreads the port range).
        #[arg(long, default_value = "127.0.0.1")]
        sources: String,
        /// Connections opened at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Seconds to hold the connections after measuring.
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// Soak: bounded churn over WebSocket, LongPoll and SSE; RSS, fds and connections must
    /// return to their post-warm-up baseline.
    Soak(soak::Opts),
    /// Presence at scale: many users join one presence topic, some leave; merged diffs or not.
    Presence(presence::Opts),
    /// Side-by-side load generator: one scenario against one server.
    Load(Box<load::Opts>),
    /// A worker process of `load` (started by it; JSON spec as the argument).
    #[command(hide = true)]
    LoadWorker { spec: String },
    /// Results of `load` (JSON lines) → a markdown table in BENCHMARKS.md and SVG charts.
    Report(report::Opts),
}

/// `127.0.0.1,127.0.0.2` → the local addresses to connect from.
pub(crate) fn parse_sources(list: &str) -> Result<Vec<IpAddr>, String> {
    list.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("bad source address {s:?}"))
        })
        .collect()
}

/// The roles every benchmark user's token carries: an ordinary JWT has a couple (`sub`,
/// `roles`, `iat`, `exp`), and a token without roles would understate what the server keeps
/// per connection.
pub(crate) const BENCH_ROLES: [&str; 2] = ["user", "subscriber"];

/// An ordinary HS256 token for benchmark user `sub`: `sub`, [`BENCH_ROLES`], `iat`, and `exp`
/// an hour ahead.
pub(crate) fn bench_token(issuer: &plexus_core::auth::Issuer, sub: &str) -> Result<String, String> {
    let roles = BENCH_ROLES.map(str::to_owned);
    issuer
        .issue(sub, &roles, None, 3600)
        .map_err(|e| e.to_string())
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() {
    match Cli::parse().cmd {
        Cmd::Conns {
            url,
            secret,
            n,
            topics,
            pid,
            sources,
            concurrency,
            hold,
        } => {
            if let Err(e) = conns(
                url,
                secret,
                n,
                topics.max(1),
                pid,
                sources,
                concurrency,
                hold,
            )
            .await
            {
                eprintln!("plexus-bench: {e}");
                std::process::exit(1);
            }
        }
        Cmd::Load(opts) => {
            if let Err(e) = load::run(*opts).await {
                eprintln!("plexus-bench: {e}");
                std::process::exit(1);
            }
        }
        Cmd::LoadWorker { spec } => {
            let r = match serde_json::from_str(&spec) {
                Ok(spec) => load::worker::run(spec).await,
                Err(e) => Err(format!("bad worker spec: {e}")),
            };
            if let Err(e) = r {
                eprintln!("plexus-bench worker: {e}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        Cmd::Report(opts) => {
            if let Err(e) = report::run(opts) {
                eprintln!("plexus-bench: {e}");
                std::process::exit(1);
            }
        }
        Cmd::Presence(opts) => {
            if let Err(e) = presence::run(opts).await {
                eprintln!("plexus-bench: {e}");
                std::process::exit(1);
            }
        }
        Cmd::Soak(opts) => {
            if let Err(e) = soak::run(opts).await {
                eprintln!("plexus-bench: {e}");
                std::process::exit(1);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn conns(
    url: String,
    secret: String,
    n: usize,
    topics: usize,
    pid: u32,
    sources: String,
    concurrency: usize,
    hold: u64,
) -> Result<(), String> {
    let sources = parse_sources(&sources)?;
    let issuer = plexus_core::auth::Issuer::hs256(secret.as_bytes());
    let before = rss_kib(pid).ok_or_else(|| format!("cannot read RSS of pid {pid}"))?;
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let token = bench_token(&issuer, &format!("bench-{i}"))?;
        let opts = ConnectOptions::new(url.clone())
            .token(token)
            .source(SocketAddr::new(sources[i % sources.len()], 0));
        let topic = format!("room:bench-{}", i % topics);
        tasks.push(tokio::spawn(async move {
            let r = async {
                let mut c = Client::connect(opts).await.map_err(|e| e.to_string())?;
                let reply = c
                    .join(&topic, serde_json::json!({}))
                    .await
                    .map_err(|e| e.to_string())?;
                if !reply.is_ok() {
                    return Err(format!("join refused: {:?}", reply.reason()));
                }
                Ok(c)
            }
            .await;
            drop(permit);
            r
        }));
    }
    let mut clients = Vec::with_capacity(n);
    let mut errors = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the server settle (allocator, pending tasks).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).ok_or("server exited")?;
    let ok = clients.len();
    let per_conn = if ok > 0 {
        (after.saturating_sub(before) as f64 * 1024.0) / ok as f64
    } else {
        0.0
    };
    println!(
        "{}",
        serde_json::json!({
            "connections": ok,
            "errors": errors,
            "first_error": first_error,
            "topics": topics,
            "connect_secs": (connect_secs * 10.0).round() / 10.0,
            "server_rss_before_kib": before,
            "server_rss_after_kib": after,
            "bytes_per_connection": per_conn.round(),
        })
    );
    if hold > 0 {
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    drop(clients);
    Ok(())
}
