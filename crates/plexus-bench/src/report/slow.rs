//! The `slow` scenario's table: what subscribers that stop reading cost the others.

use serde_json::Value;
use std::fmt::Write;

use super::format::{by_target, f, num, ordered};
use super::{Opts, Section};

/// Appends the table when the results hold this scenario.
pub(super) fn write(results: &[Value], _o: &Opts, out: &mut Section) {
    let md = &mut out.md;
    let slow = by_target(results, "slow");
    if !slow.is_empty() {
        let _ = writeln!(
            md,
            "### Slow consumers (a tenth of the subscribers stop reading)\n"
        );
        let _ = writeln!(md, "The stalled subscribers read nothing for the whole stall, then read again: a socket the server closed while they stalled then ends (counted in *stalled closed by the server*); one it kept open holds what the server buffered for it, in the kernel and in the server. *Which rule* gives the server's own counters over the stall where it exports them (Plexus: closes by a full outbox, `plexus_slow_consumer_closes_total`, and by the write timeout, `plexus_write_timeout_closes_total`; a socket whose outbox filled while a write to it was blocked counts in both: the queue is dropped at once, the socket closes when that write times out), then the close codes the stalled subscribers received (*no close frame*: the socket just ended).\n");
        let _ = writeln!(md, "| server | subscribers × msg/s × bytes | stall | p99 before | p99 of the others during the stall (3 windows) | loss for the others | server RSS before → max | **stalled closed by the server** | which rule | others closed |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        for (t, rs) in ordered(&slow) {
            for r in rs {
                let during = r["during"].as_array().cloned().unwrap_or_default();
                let p99s: Vec<String> =
                    during.iter().map(|d| num(f(&d["lat_ms"]["p99"]))).collect();
                let loss: f64 = during
                    .iter()
                    .filter_map(|d| f(&d["loss_pct"]))
                    .fold(0.0, f64::max);
                let rss_max = during
                    .iter()
                    .filter_map(|d| f(&d["server_rss_max_kib"]))
                    .fold(0.0, f64::max);
                let stall = match f(&r["stall_secs"]) {
                    Some(s) => format!("{} s", num(Some(s))),
                    None => "–".into(),
                };
                // Results written before the stalled sockets were resumed counted only the
                // others' closes.
                let others = f(&r["others_closed"]).or(during.last().and_then(|d| f(&d["closed"])));
                let _ = writeln!(
                    md,
                    "| {t} | {} × {} × {} | {stall} | {} ms | {} ms | {} % | {:.1} → {:.1} MiB | **{} of {}** | {} | {} |",
                    num(f(&r["subs"])),
                    num(f(&r["before"]["rate"])),
                    num(f(&r["size"]).or(Some(80.0))),
                    num(f(&r["before"]["lat_ms"]["p99"])),
                    p99s.join(" · "),
                    num(Some(loss)),
                    f(&r["before"]["server_rss_max_kib"]).unwrap_or(0.0) / 1024.0,
                    rss_max / 1024.0,
                    num(f(&r["stalled_closed_by_server"])),
                    num(f(&r["stalled"])),
                    closed_how(r),
                    num(others),
                );
            }
        }
        md.push('\n');
    }
}

/// The rule that closed the stalled sockets: the server's counters, then the close codes.
fn closed_how(r: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(by) = r["server_closes_by_rule"].as_object() {
        parts.push(format!(
            "outbox bound {}, write timeout {}",
            num(f(&by["outbox_bound"])),
            num(f(&by["write_timeout"]))
        ));
    }
    if let Some(codes) = r["stalled_close_codes"].as_object() {
        let mut c: Vec<String> = codes
            .iter()
            .map(|(code, n)| match code.as_str() {
                "none" => format!("no close frame × {}", num(f(n))),
                _ => format!("close {code} × {}", num(f(n))),
            })
            .collect();
        if !c.is_empty() {
            c.sort();
            parts.push(c.join(", "));
        }
    }
    if parts.is_empty() {
        "–".into()
    } else {
        parts.join("; ")
    }
}
