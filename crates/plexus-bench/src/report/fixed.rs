//! The `fixed` scenario's table: latency and deliveries per server CPU-second at one rate,
//! with the efficiency and p99 charts.

use serde_json::Value;
use std::fmt::Write;

use super::chart::bars;
use super::format::{by_target, f, flag, num, ordered};
use super::{Opts, Section};

/// Appends the table (and its charts) when the results hold this scenario.
pub(super) fn write(results: &[Value], o: &Opts, out: &mut Section) {
    let Section { md, charts } = out;
    // Fixed load: latency and efficiency at the same deliveries/s.
    let fixed = by_target(results, "fixed");
    if !fixed.is_empty() {
        let _ = writeln!(md, "### Latency and efficiency at a fixed load\n");
        let _ = writeln!(md, "| server | subscribers × msg/s | delivered/s | loss | p50 ms | p99 ms | max ms | server CPU | **deliveries per server CPU-s** | generator CPU |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        let mut eff = Vec::new();
        let mut p99 = Vec::new();
        for (t, rs) in ordered(&fixed) {
            // A server run at several rates gets one bar per rate.
            let several = rs.len() >= 2;
            for r in rs {
                let s = &r["best"];
                let s = if s.is_null() { &r["steps"][0] } else { s };
                let _ = writeln!(
                    md,
                    "| {t} | {} × {} | {} | {} % | {} | {} | {} | {} % | **{}**{} | {} % |",
                    num(f(&r["subs"])),
                    num(f(&s["rate"])),
                    num(f(&s["delivered_per_s"])),
                    num(f(&s["loss_pct"])),
                    num(f(&s["lat_ms"]["p50"])),
                    num(f(&s["lat_ms"]["p99"])),
                    num(f(&s["lat_ms"]["max"])),
                    num(f(&s["server_cpu_pct"])),
                    num(f(&s["deliveries_per_server_cpu_s"])),
                    flag(s),
                    num(f(&s["client_cpu_pct"])),
                );
                let label = match f(&s["rate"]) {
                    Some(rate) if several => format!("{t} {}/s", num(Some(rate))),
                    _ => t.clone(),
                };
                if let Some(v) = f(&s["deliveries_per_server_cpu_s"]) {
                    eff.push((label.clone(), v));
                }
                if let Some(v) = f(&s["lat_ms"]["p99"]) {
                    p99.push((label, v));
                }
            }
        }
        md.push('\n');
        charts.push((
            o.chart("efficiency.svg"),
            bars(
                "Fan-out efficiency at a fixed load (2,000 subscribers)",
                "deliveries per server CPU-second",
                &eff,
                false,
            ),
        ));
        charts.push((
            o.chart("latency-p99.svg"),
            bars(
                "p99 latency at a fixed load (2,000 subscribers)",
                "milliseconds, publish → receipt",
                &p99,
                true,
            ),
        ));
        let _ = writeln!(
            md,
            "![p99 latency](docs/bench/{})\n",
            o.chart("latency-p99.svg")
        );
    }
}
