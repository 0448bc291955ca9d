//! The `saturation` scenario's table: the highest sustained fan-out per subscriber count
//! and the first failing step, with one chart per subscriber count.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

use super::chart::bars;
use super::format::{by_target, f, flag, num, ordered};
use super::{Opts, Section};

/// Appends the table (and its charts) when the results hold this scenario.
pub(super) fn write(results: &[Value], o: &Opts, out: &mut Section) {
    let Section { md, charts } = out;
    // Saturation, per subscriber count.
    let sat = by_target(results, "saturation");
    if !sat.is_empty() {
        let _ = writeln!(
            md,
            "### Fan-out saturation (one topic; rate ×1.5 per step until loss or p99 > 250 ms)\n"
        );
        let _ = writeln!(md, "| server | subscribers | highest sustained deliveries/s | at msg/s | p99 ms | server CPU | deliveries per server CPU-s | first failing step |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        let mut chart: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for (t, rs) in ordered(&sat) {
            for r in rs {
                let b = &r["best"];
                let fail = r["steps"]
                    .as_array()
                    .and_then(|s| s.last())
                    .filter(|l| *l != b)
                    .map(|l| {
                        format!(
                            "{} msg/s: {} delivered/s, loss {} %, p99 {} ms{}",
                            num(f(&l["rate"])),
                            num(f(&l["delivered_per_s"])),
                            num(f(&l["loss_pct"])),
                            num(f(&l["lat_ms"]["p99"])),
                            flag(l)
                        )
                    })
                    .unwrap_or_else(|| "none (step limit)".into());
                let _ = writeln!(
                    md,
                    "| {t} | {} | **{}**{} | {} | {} | {} % | {} | {fail} |",
                    num(f(&r["subs"])),
                    num(f(&b["delivered_per_s"])),
                    flag(b),
                    num(f(&b["rate"])),
                    num(f(&b["lat_ms"]["p99"])),
                    num(f(&b["server_cpu_pct"])),
                    num(f(&b["deliveries_per_server_cpu_s"])),
                );
                chart
                    .entry(num(f(&r["subs"])))
                    .or_default()
                    .push((t.clone(), f(&b["delivered_per_s"]).unwrap_or(0.0)));
            }
        }
        md.push('\n');
        for (subs, rows) in chart {
            let name = o.chart(&format!("saturation-{}.svg", subs.replace(',', "")));
            let _ = writeln!(md, "![saturation, {subs} subscribers](docs/bench/{name})\n");
            charts.push((
                name,
                bars(
                    &format!("Highest sustained fan-out, 1 topic × {subs} subscribers"),
                    "deliveries per second",
                    &rows,
                    false,
                ),
            ));
        }
    }
}
