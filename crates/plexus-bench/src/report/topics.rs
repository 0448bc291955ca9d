//! The `topics` scenario's table: many small topics, random publishes.

use serde_json::Value;
use std::fmt::Write;

use super::format::{by_target, f, flag, num, ordered};
use super::{Opts, Section};

/// Appends the table when the results hold this scenario.
pub(super) fn write(results: &[Value], _o: &Opts, out: &mut Section) {
    let md = &mut out.md;
    let topics = by_target(results, "topics");
    if !topics.is_empty() {
        let _ = writeln!(
            md,
            "### Many small topics (2 subscribers each, random publishes over HTTP)\n"
        );
        let _ = writeln!(md, "| server | topics | highest sustained publishes/s | deliveries/s | p99 ms | server CPU | deliveries per server CPU-s |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for (t, rs) in ordered(&topics) {
            for r in rs {
                let b = &r["best"];
                let _ = writeln!(
                    md,
                    "| {t} | {} | {} | **{}**{} | {} | {} % | {} |",
                    num(f(&r["topics"])),
                    num(f(&b["rate"])),
                    num(f(&b["delivered_per_s"])),
                    flag(b),
                    num(f(&b["lat_ms"]["p99"])),
                    num(f(&b["server_cpu_pct"])),
                    num(f(&b["deliveries_per_server_cpu_s"])),
                );
            }
        }
        md.push('\n');
    }
}
