//! The `storm` scenario: a reconnect storm, as after a node restart — every subscriber of a
//! fresh server connects and joins at once (no concurrency limit in the workers), and a
//! connect that fails (refused, reset, timed out) is retried on phoenix.js's reconnect
//! schedule, as real clients would. Reports the time until all were joined, the spread of
//! each subscriber's time to join, the retries and the server CPU the storm cost.

use super::worker::{subscribe, ConnectStats, Spec, Ws};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// phoenix.js's `reconnectAfterMs`: 10, 50, 100, 150, 200, 250, 500, 1000, 2000 ms, then 5 s.
fn backoff(attempt: usize) -> Duration {
    const STEPS_MS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];
    Duration::from_millis(STEPS_MS.get(attempt).copied().unwrap_or(5000))
}

/// A subscriber gives up after this long (the scenario then reports it as failed).
const GIVE_UP: Duration = Duration::from_secs(60);
/// One attempt (TCP, TLS, upgrade, join) is abandoned after this long and retried.
const ATTEMPT: Duration = Duration::from_secs(10);

/// Connects and joins subscriber `i`, retrying on phoenix.js's schedule; records the time
/// from `started` (the storm's start) until it was joined.
pub(super) async fn subscribe_retrying(
    spec: &Spec,
    i: usize,
    token: Option<&str>,
    tls: Option<Arc<rustls::ClientConfig>>,
    stats: &ConnectStats,
    started: Instant,
) -> Result<Ws, String> {
    let mut attempt = 0;
    loop {
        let r = tokio::time::timeout(ATTEMPT, subscribe(spec, i, token, tls.clone(), stats))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        match r {
            Ok(ws) => {
                stats
                    .joined_after
                    .record(started.elapsed().as_micros() as u64);
                return Ok(ws);
            }
            // A refused join is an answer, not an overload: retrying would not change it.
            Err(e) if e.starts_with("refused") => return Err(e),
            Err(e) => {
                if started.elapsed() + backoff(attempt) > GIVE_UP {
                    return Err(format!("gave up after {} attempts: {e}", attempt + 1));
                }
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// The storm's result line: `wall_secs` from the first worker's start until every subscriber
/// was joined (as the coordinator saw it), the workers' join-time quantiles, retries and the
/// server's CPU over the whole storm.
pub(super) fn result(
    connected: Value,
    ready: u64,
    wall_secs: f64,
    joined_after: &super::histogram::Merged,
    retries: u64,
    server_cpu_s: f64,
    client_cpu_pct: f64,
) -> Value {
    json!({
        "connect": connected,
        "wall_secs": super::round(wall_secs, 2),
        "joined_ms": {
            "p50": joined_after.quantile_ms(0.5),
            "p99": joined_after.quantile_ms(0.99),
            "max": joined_after.quantile_ms(1.0),
        },
        "retries": retries,
        "server_cpu_s": super::round(server_cpu_s, 2),
        "server_cpu_us_per_connect": super::round(1e6 * server_cpu_s / ready.max(1) as f64, 1),
        "client_cpu_pct": client_cpu_pct.round(),
    })
}

/// The transport column of the connect and storm tables: `ws`, or `wss` with the certificate's
/// key and whether sessions were resumed (and how many handshakes did).
pub(crate) fn transport_label(r: &Value) -> String {
    let transport = r["transport"].as_str().unwrap_or("ws");
    if transport != "wss" {
        return transport.to_owned();
    }
    let cert = r["tls"]["cert"].as_str().unwrap_or("certificate ?");
    if r["tls"]["resumption"].as_bool() == Some(false) {
        format!("wss, {cert}, full handshakes")
    } else {
        let resumed = crate::report::num(r["tls_resumed"].as_f64());
        format!("wss, {cert}, resumption ({resumed} resumed)")
    }
}

/// The "Reconnect storm" table of BENCHMARKS.md (empty without storm results).
pub(crate) fn markdown(results: &[Value]) -> String {
    use std::fmt::Write;
    let num = |v: &Value| crate::report::num(v.as_f64());
    let rows: Vec<&Value> = results
        .iter()
        .filter(|r| r["scenario"] == "storm")
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "### Reconnect storm (everyone connects and joins at once)\n\n\
         | server | transport | clients | joined | failed | **all joined after (s)** | join time p50 / p99 (ms) | retries | server CPU (s) | server CPU µs per connect | generator CPU |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | **{}** | {} / {} | {} | {} | {} | {} %{} |",
            r["target"].as_str().unwrap_or("?"),
            transport_label(r),
            num(&r["subs"]),
            num(&r["connect"]["ready"]),
            num(&r["connect"]["failed"]),
            num(&r["wall_secs"]),
            num(&r["joined_ms"]["p50"]),
            num(&r["joined_ms"]["p99"]),
            num(&r["retries"]),
            num(&r["server_cpu_s"]),
            num(&r["server_cpu_us_per_connect"]),
            num(&r["client_cpu_pct"]),
            if r["client_cpu_pct"].as_f64().unwrap_or(0.0) >= 90.0 {
                " ⚠"
            } else {
                ""
            },
        );
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_follows_phoenix_js() {
        assert_eq!(backoff(0), Duration::from_millis(10));
        assert_eq!(backoff(8), Duration::from_millis(2000));
        assert_eq!(backoff(9), Duration::from_millis(5000));
        assert_eq!(backoff(100), Duration::from_millis(5000));
    }
}
