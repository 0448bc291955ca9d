//! The `idle` scenario's table: server memory per idle connection, with its chart.

use serde_json::Value;
use std::fmt::Write;

use super::chart::bars;
use super::format::{by_target, f, num, ordered};
use super::{Opts, Section};

/// Appends the table (and its charts) when the results hold this scenario.
pub(super) fn write(results: &[Value], o: &Opts, out: &mut Section) {
    let Section { md, charts } = out;
    let idle = by_target(results, "idle");
    if !idle.is_empty() {
        let _ = writeln!(md, "### Memory per idle connection\n");
        let _ = writeln!(md, "| server | state | connections | server RSS before → after | **bytes per connection** |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        let mut rows = Vec::new();
        for (t, rs) in ordered(&idle) {
            for r in rs {
                let state = if r["proto"] == "raw" && t.starts_with("Plexus") {
                    "connected, not joined"
                } else {
                    "subscribed to one channel"
                };
                let _ = writeln!(
                    md,
                    "| {t} | {state} | {} | {:.1} MiB → {:.1} MiB | **{}** |",
                    num(f(&r["connect"]["ready"])),
                    f(&r["server_rss_kib"]["before"]).unwrap_or(0.0) / 1024.0,
                    f(&r["server_rss_kib"]["after"]).unwrap_or(0.0) / 1024.0,
                    num(f(&r["bytes_per_connection"])),
                );
                if state.starts_with("subscribed") {
                    rows.push((t.clone(), f(&r["bytes_per_connection"]).unwrap_or(0.0)));
                }
            }
        }
        md.push('\n');
        charts.push((
            o.chart("idle-memory.svg"),
            bars(
                "Memory per idle subscribed connection",
                "bytes of server RSS",
                &rows,
                true,
            ),
        ));
        let _ = writeln!(
            md,
            "![idle memory](docs/bench/{})\n",
            o.chart("idle-memory.svg")
        );
    }
}
