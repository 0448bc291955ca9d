//! The `saturation` scenario's table: the highest sustained fan-out per subscriber count
//! and what ended the run (the server failing a step, the generator's CPU full, or the step
//! limit: only the first is the server's limit), with one chart per subscriber count.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

use super::chart::bars_marked;
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
        let _ = writeln!(md, "≥ = the server's limit was not found: the run ended at the step limit, or at a step the generator could not keep up with (its CPU full, ⚠), which is not counted as the server's failure.\n");
        let _ = writeln!(md, "| server | subscribers | highest sustained deliveries/s | at msg/s | p99 ms | server CPU | deliveries per server CPU-s | generator CPU | what ended the run |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        let mut chart: BTreeMap<String, Vec<(String, f64, &str)>> = BTreeMap::new();
        for (t, rs) in ordered(&sat) {
            for r in rs {
                let b = &r["best"];
                let failed = r["steps"]
                    .as_array()
                    .and_then(|s| s.last())
                    .filter(|l| *l != b);
                let stop = stopped(r, failed);
                let end = match (stop, failed) {
                    (Stop::Server, Some(l)) => format!(
                        "the server: {} msg/s: {} delivered/s, loss {} %, p99 {} ms",
                        num(f(&l["rate"])),
                        num(f(&l["delivered_per_s"])),
                        num(f(&l["loss_pct"])),
                        num(f(&l["lat_ms"]["p99"])),
                    ),
                    (Stop::Generator, Some(l)) => format!(
                        "the generator ({} % CPU) at {} msg/s: {} delivered/s, loss {} %, p99 {} ms ⚠",
                        num(f(&l["client_cpu_pct"])),
                        num(f(&l["rate"])),
                        num(f(&l["delivered_per_s"])),
                        num(f(&l["loss_pct"])),
                        num(f(&l["lat_ms"]["p99"])),
                    ),
                    _ => "the step limit".into(),
                };
                let at_least = if stop == Stop::Server || b.is_null() {
                    ""
                } else {
                    "≥ "
                };
                let _ = writeln!(
                    md,
                    "| {t} | {} | **{at_least}{}**{} | {} | {} | {} % | {} | {} % | {end} |",
                    num(f(&r["subs"])),
                    num(f(&b["delivered_per_s"])),
                    flag(b),
                    num(f(&b["rate"])),
                    num(f(&b["lat_ms"]["p99"])),
                    num(f(&b["server_cpu_pct"])),
                    num(f(&b["deliveries_per_server_cpu_s"])),
                    num(f(&b["client_cpu_pct"])),
                );
                chart.entry(num(f(&r["subs"]))).or_default().push((
                    t.clone(),
                    f(&b["delivered_per_s"]).unwrap_or(0.0),
                    at_least,
                ));
            }
        }
        md.push('\n');
        for (subs, rows) in chart {
            let name = o.chart(&format!("saturation-{}.svg", subs.replace(',', "")));
            let _ = writeln!(md, "![saturation, {subs} subscribers](docs/bench/{name})\n");
            charts.push((
                name,
                bars_marked(
                    &format!("Highest sustained fan-out, 1 topic × {subs} subscribers"),
                    "deliveries per second",
                    &rows,
                    false,
                ),
            ));
        }
    }
}

/// What ended a saturation run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// A step failed (loss or p99 above the bound) with the generator below 90 % of its CPU.
    Server,
    /// A step failed while the generator's CPU was full: the server's limit was not found.
    Generator,
    /// Every step passed.
    StepLimit,
}

/// The generator's word (`stopped`) or, for results written before it said, the same rule
/// applied to the last step.
fn stopped(r: &Value, failed: Option<&Value>) -> Stop {
    match (r["stopped"].as_str(), failed) {
        (Some("server"), _) => Stop::Server,
        (Some("generator"), _) => Stop::Generator,
        (Some(_), _) | (None, None) => Stop::StepLimit,
        (None, Some(l)) if l["client_bound"].as_bool() == Some(true) => Stop::Generator,
        (None, Some(_)) => Stop::Server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_not_found_is_a_lower_bound() {
        let line = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
        let results = vec![
            // Stopped by the generator (old results: inferred from the last step's flag).
            line(
                r#"{"target":"nchan","scenario":"saturation","subs":2000,"best":{"rate":56.3,"delivered_per_s":110902},"steps":[{"rate":56.3,"delivered_per_s":110902},{"rate":84.4,"delivered_per_s":115100,"loss_pct":0,"lat_ms":{"p99":1851},"client_bound":true,"client_cpu_pct":95}]}"#,
            ),
            // Every step passed.
            line(
                r#"{"target":"Plexus","scenario":"saturation","subs":2000,"best":{"rate":427.1,"delivered_per_s":835129},"steps":[{"rate":427.1,"delivered_per_s":835129}],"stopped":"step limit"}"#,
            ),
            // The server failed a step.
            line(
                r#"{"target":"Plexus","scenario":"saturation","subs":10000,"best":{"rate":57,"delivered_per_s":549386},"steps":[{"rate":57,"delivered_per_s":549386},{"rate":85.4,"delivered_per_s":823148,"loss_pct":0,"lat_ms":{"p99":413.7},"client_bound":false}],"stopped":"server"}"#,
            ),
        ];
        let o = Opts {
            input: String::new(),
            markdown: String::new(),
            svg_dir: String::new(),
            command: String::new(),
            about: String::new(),
            section: None,
        };
        let mut out = Section {
            md: String::new(),
            charts: Vec::new(),
        };
        write(&results, &o, &mut out);
        let md = &out.md;
        assert!(md.contains("| nchan | 2,000 | **≥ 110,902** |"), "{md}");
        assert!(
            md.contains("the generator (95 % CPU) at 84.4 msg/s"),
            "{md}"
        );
        assert!(md.contains("| Plexus | 2,000 | **≥ 835,129** |"), "{md}");
        assert!(md.contains("| the step limit |"), "{md}");
        assert!(md.contains("| Plexus | 10,000 | **549,386** |"), "{md}");
        assert!(
            md.contains("| the server: 85.4 msg/s: 823,148 delivered/s"),
            "{md}"
        );
        let svg = &out
            .charts
            .iter()
            .find(|(n, _)| n == "saturation-2000.svg")
            .map(|c| c.1.clone())
            .unwrap_or_default();
        assert!(
            svg.contains("≥ 835,129") && svg.contains("≥ 110,902"),
            "{svg}"
        );
    }
}
