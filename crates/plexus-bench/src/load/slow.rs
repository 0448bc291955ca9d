//! The `slow` scenario: every tenth subscriber stops reading for a while, then reads again.
//! It measures what the stalled ones cost the others (p99, loss, the server's RSS), how many
//! of the stalled sockets the server closed, and which rule closed them: the close codes the
//! stalled subscribers received (`none`: the socket ended without a close frame) and, where
//! the server exports them (Plexus's `/metrics`), the deltas of its counters of closes by a
//! full outbox (`plexus_slow_consumer_closes_total`) and by the write timeout
//! (`plexus_write_timeout_closes_total`) over the stall.

use super::{procs, publisher, round, step, Fleet, Opts};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The server's counters of closes by rule, as `/metrics` names them.
const CLOSE_COUNTERS: [(&str, &str); 2] = [
    ("outbox_bound", "plexus_slow_consumer_closes_total"),
    ("write_timeout", "plexus_write_timeout_closes_total"),
];

/// Runs the scenario on a connected fleet; the result line to emit.
pub(super) async fn run(
    o: &Opts,
    fleet: &mut Fleet,
    server: &[u32],
    connected: Value,
) -> Result<Value, String> {
    let addr = super::publish_addr(o)?;
    let mut pool = publisher::Pool::open(addr, super::publish_how(o)?, o.size, o.lanes).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = o.topic.clone();
    let all = fleet.ready;
    let before = step(o, fleet, &mut pool, server, o.secs, o.rate, all, |_| {
        base.clone()
    })
    .await?;
    let rss_before_stall = procs::rss_kib(server);
    let counters0 = close_counters(addr, &o.api_key).await;
    fleet.all("stall").await?;
    let stalled = fleet.ready.div_ceil(10);
    let active = fleet.ready - stalled;
    let window = (o.stall_secs / 3.0).max(0.5);
    let mut during = Vec::new();
    for _ in 0..3 {
        during.push(
            step(o, fleet, &mut pool, server, window, o.rate, active, |_| {
                base.clone()
            })
            .await?,
        );
    }
    // The stalled subscribers read again: a socket the server closed while they stalled now
    // ends (after what was buffered for it), one it kept stays open. A server that closes
    // with a frame sends it once the backlog ahead of it is read.
    fleet.all("resume").await?;
    let (mut closed_stalled, mut closed_others, mut codes) = (0, 0, Map::new());
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let t = fleet.take().await?;
        (closed_stalled, closed_others, codes) = (t.closed_stalled, t.closed, t.stalled_codes);
        if closed_stalled >= stalled {
            break;
        }
    }
    let counters1 = close_counters(addr, &o.api_key).await;
    // Closes by rule over the stall (null: the server exports no such counters).
    let by_rule = match (counters0, counters1) {
        (Some(a), Some(b)) => {
            let mut m = Map::new();
            for ((name, _), (x, y)) in CLOSE_COUNTERS.iter().zip(a.iter().zip(&b)) {
                m.insert((*name).to_owned(), json!(y.saturating_sub(*x)));
            }
            Value::Object(m)
        }
        _ => Value::Null,
    };
    Ok(json!({
        "connect": connected,
        "stalled": stalled,
        "stall_secs": round(window * 3.0, 1),
        "size": o.size,
        "stalled_closed_by_server": closed_stalled,
        "stalled_close_codes": codes,
        "server_closes_by_rule": by_rule,
        "others_closed": closed_others,
        "server_rss_before_stall_kib": rss_before_stall,
        "before": before,
        "during": during,
    }))
}

/// The server's close counters ([`CLOSE_COUNTERS`]) from `GET /metrics`, or `None` when it
/// has no such page or not these counters (the peers).
async fn close_counters(addr: SocketAddr, api_key: &str) -> Option<[u64; 2]> {
    let mut c = crate::http::Conn::open(addr, None).await.ok()?;
    let auth = format!("Bearer {api_key}");
    let headers: &[(&str, &str)] = if api_key.is_empty() {
        &[]
    } else {
        &[("Authorization", &auth)]
    };
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        c.request("GET", "/metrics", headers, b""),
    )
    .await
    .ok()?
    .ok()?;
    if r.status != 200 {
        return None;
    }
    parse_counters(&String::from_utf8_lossy(&r.body))
}

fn parse_counters(text: &str) -> Option<[u64; 2]> {
    let mut out = [None, None];
    for line in text.lines() {
        for (slot, (_, name)) in out.iter_mut().zip(CLOSE_COUNTERS) {
            if let Some(v) = line.strip_prefix(name).and_then(|r| r.strip_prefix(' ')) {
                *slot = v.trim().parse::<f64>().ok().map(|v| v as u64);
            }
        }
    }
    Some([out[0]?, out[1]?])
}

#[cfg(test)]
mod tests {
    use super::parse_counters;

    #[test]
    fn close_counters_are_read_from_prometheus_text() {
        let text = "# HELP plexus_slow_consumer_closes_total x\n# TYPE plexus_slow_consumer_closes_total counter\nplexus_slow_consumer_closes_total 200\nplexus_slow_consumer_closes_total_other 5\nplexus_write_timeout_closes_total 3\n";
        assert_eq!(parse_counters(text), Some([200, 3]));
        assert_eq!(
            parse_counters("plexus_slow_consumer_closes_total 1\n"),
            None
        );
        assert_eq!(parse_counters("<html>nchan</html>"), None);
    }
}
