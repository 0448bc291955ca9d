//! The `connect` scenario's table: connect + subscribe rate and server CPU per connect, with
//! its chart.

use serde_json::Value;
use std::fmt::Write;

use super::chart::bars;
use super::format::{by_target, f, num, ordered};
use super::{Opts, Section};

/// Appends the table (and its charts) when the results hold this scenario.
pub(super) fn write(results: &[Value], o: &Opts, out: &mut Section) {
    let Section { md, charts } = out;
    let connect = by_target(results, "connect");
    if !connect.is_empty() {
        let _ = writeln!(md, "### Connect + subscribe rate\n");
        let _ = writeln!(md, "| server | transport | connections | failed | **connects/s** | server CPU µs per connect | generator CPU |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let mut rows = Vec::new();
        for (t, rs) in ordered(&connect) {
            for r in rs {
                let _ = writeln!(
                    md,
                    "| {t} | {} | {} | {} | **{}**{} | {} | {} % |",
                    crate::load::storm::transport_label(r),
                    num(f(&r["connect"]["ready"])),
                    num(f(&r["connect"]["failed"])),
                    num(f(&r["connects_per_s"])),
                    // The generator's processes may use all the CPU the run gave it (one core).
                    if f(&r["client_cpu_pct"]).unwrap_or(0.0) >= 90.0 {
                        " ⚠"
                    } else {
                        ""
                    },
                    num(f(&r["server_cpu_us_per_connect"])),
                    num(f(&r["client_cpu_pct"])),
                );
                rows.push((
                    format!("{t} {}", crate::load::storm::transport_label(r)),
                    f(&r["connects_per_s"]).unwrap_or(0.0),
                ));
            }
        }
        md.push('\n');
        charts.push((
            o.chart("connect.svg"),
            bars(
                "Connect + subscribe rate",
                "connections per second",
                &rows,
                false,
            ),
        ));
        let _ = writeln!(
            md,
            "![connect rate](docs/bench/{})\n",
            o.chart("connect.svg")
        );
    }
}
