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
        let _ = writeln!(md, "The stalled subscribers read nothing for the whole stall, then read again: a socket the server closed while they stalled then ends (counted in *stalled closed by the server*); one it kept open holds what the server buffered for it, in the kernel and in the server.\n");
        let _ = writeln!(md, "| server | subscribers × msg/s × bytes | stall | p99 before | p99 of the others during the stall (3 windows) | loss for the others | server RSS before → max | **stalled closed by the server** | others closed |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
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
                    "| {t} | {} × {} × {} | {stall} | {} ms | {} ms | {} % | {:.1} → {:.1} MiB | **{} of {}** | {} |",
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
                    num(others),
                );
            }
        }
        md.push('\n');
    }
}
