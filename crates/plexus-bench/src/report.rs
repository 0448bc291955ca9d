//! `plexus-bench report`: reads the JSON lines `plexus-bench load` wrote during one
//! `scripts/bench-compare` run and regenerates (1) the comparison tables between the markers
//! `<!-- bench-compare:start -->` / `<!-- bench-compare:end -->` in BENCHMARKS.md and (2) one
//! SVG bar chart per headline figure under `docs/bench/`. Nothing in either is written by hand.
//!
//! `--section NAME` writes another marked section instead (`<!-- bench-compare:NAME:start -->`
//! / `<!-- bench-compare:NAME:end -->`) and names its charts `NAME-*.svg`, so that a run of a
//! few servers (Pusher mode against Sockudo) leaves the main tables alone. When the results hold
//! Plexus, Plexus in Pusher mode and Sockudo, the section ends with issue 20's three target
//! ratios, each said met or not.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Results file (JSON lines from `plexus-bench load --out`).
    #[arg(long)]
    pub input: String,
    /// Markdown file whose marked section is replaced.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub markdown: String,
    /// Directory for the SVG charts.
    #[arg(long, default_value = "docs/bench")]
    pub svg_dir: String,
    /// The command line to print above the tables.
    #[arg(long, default_value = "scripts/bench-compare")]
    pub command: String,
    /// Free text about the run (date, machine, versions).
    #[arg(long, default_value = "")]
    pub about: String,
    /// Write the section marked `bench-compare:NAME` and charts `NAME-*.svg` (letters, digits
    /// and `-` only) instead of the main ones.
    #[arg(long)]
    pub section: Option<String>,
}

impl Opts {
    /// The section's start and end markers.
    fn markers(&self) -> (String, String) {
        match &self.section {
            None => (
                "<!-- bench-compare:start -->".into(),
                "<!-- bench-compare:end -->".into(),
            ),
            Some(n) => (
                format!("<!-- bench-compare:{n}:start -->"),
                format!("<!-- bench-compare:{n}:end -->"),
            ),
        }
    }

    /// A chart's file name in this section.
    fn chart(&self, name: &str) -> String {
        match &self.section {
            None => name.to_owned(),
            Some(n) => format!("{n}-{name}"),
        }
    }
}

/// The servers issue 20's targets compare, as `scripts/bench-compare` names them.
const PHOENIX: &str = "Plexus";
const PUSHER: &str = "Plexus (Pusher mode)";
const SOCKUDO: &str = "Sockudo";

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 1000.0 => {
            let s = format!("{:.0}", x);
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

/// One bar chart: labelled horizontal bars, the first (Plexus) in a highlight colour.
fn bars(title: &str, unit: &str, rows: &[(String, f64)], lower_is_better: bool) -> String {
    let w = 680.0;
    let left = 190.0;
    let bar_h = 22.0;
    let gap = 10.0;
    let top = 44.0;
    let h = top + rows.len() as f64 * (bar_h + gap) + 16.0;
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-9);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="20" font-size="15" font-weight="bold">{}</text>
<text x="10" y="36" fill="#555">{} ({} is better)</text>
"##,
        esc(title),
        esc(unit),
        if lower_is_better { "lower" } else { "higher" }
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let len = ((w - left - 110.0) * v / max).max(1.0);
        let colour = if label.starts_with("Plexus") {
            "#6d28d9"
        } else {
            "#9ca3af"
        };
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text>
<rect x="{left}" y="{y}" width="{len:.1}" height="{bar_h}" fill="{colour}"/>
<text x="{:.1}" y="{}">{}</text>
"##,
            left - 8.0,
            y + 15.0,
            esc(label),
            left + len + 6.0,
            y + 15.0,
            num(Some(*v))
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Section {
    md: String,
    charts: Vec<(String, String)>,
}

fn by_target<'a>(results: &'a [Value], scenario: &str) -> BTreeMap<String, Vec<&'a Value>> {
    let mut m: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in results.iter().filter(|r| r["scenario"] == scenario) {
        let key = r["target"].as_str().unwrap_or("?").to_owned();
        m.entry(key).or_default().push(r);
    }
    m
}

/// Plexus rows first, then the peers by name.
fn ordered<T>(m: &BTreeMap<String, T>) -> Vec<(&String, &T)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by_key(|(k, _)| (!k.starts_with("Plexus"), (*k).clone()));
    v
}

fn flag(step: &Value) -> &'static str {
    if step["client_bound"].as_bool() == Some(true) {
        " ⚠"
    } else {
        ""
    }
}

fn build(results: &[Value], o: &Opts) -> Section {
    let mut md = String::new();
    let mut charts = Vec::new();
    let (start, end) = o.markers();
    let _ = writeln!(md, "{start}\n");
    let _ = writeln!(
        md,
        "Generated by `{}` (do not edit by hand). {}\n",
        o.command, o.about
    );
    let _ = writeln!(
        md,
        "![deliveries per server CPU-second](docs/bench/{})\n",
        o.chart("efficiency.svg")
    );

    // Fixed load: latency and efficiency at the same deliveries/s.
    let fixed = by_target(results, "fixed");
    if !fixed.is_empty() {
        let _ = writeln!(md, "### Latency and efficiency at a fixed load\n");
        let _ = writeln!(md, "| server | subscribers × msg/s | delivered/s | loss | p50 ms | p99 ms | max ms | server CPU | **deliveries per server CPU-s** | generator CPU |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        let mut eff = Vec::new();
        let mut p99 = Vec::new();
        for (t, rs) in ordered(&fixed) {
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
                // Several rates per server: one bar each, named by its rate.
                let label = match (rs.len(), f(&s["rate"])) {
                    (2.., Some(rate)) => format!("{t} {}/s", num(Some(rate))),
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
                    r["transport"].as_str().unwrap_or("ws"),
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
                    format!("{t} {}", r["transport"].as_str().unwrap_or("ws")),
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

    let slow = by_target(results, "slow");
    if !slow.is_empty() {
        let _ = writeln!(
            md,
            "### Slow consumers (a tenth of the subscribers stop reading)\n"
        );
        let _ = writeln!(md, "| server | subscribers × msg/s | p99 before | p99 after the stall (3 windows) | loss for the others | server RSS before → max | sockets closed by the server |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
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
                let _ = writeln!(
                    md,
                    "| {t} | {} × {} | {} ms | {} ms | {} % | {:.1} → {:.1} MiB | {} |",
                    num(f(&r["subs"])),
                    num(f(&r["before"]["rate"])),
                    num(f(&r["before"]["lat_ms"]["p99"])),
                    p99s.join(" · "),
                    num(Some(loss)),
                    f(&r["before"]["server_rss_max_kib"]).unwrap_or(0.0) / 1024.0,
                    rss_max / 1024.0,
                    num(during.last().and_then(|d| f(&d["closed"]))),
                );
            }
        }
        md.push('\n');
    }
    let _ = writeln!(md, "⚠ = the load generator used at least 90 % of its CPU in that step: the figure may be the generator's limit rather than the server's.\n");
    if let Some(t) = pusher_targets(results) {
        md.push_str(&t);
    }
    let _ = write!(md, "{end}");
    Section { md, charts }
}

/// One figure of issue 20's comparison: its value for each of the three servers.
struct Figure {
    name: String,
    higher_is_better: bool,
    /// The Pusher mode must be at least (higher is better) or at most this times Sockudo's.
    vs_sockudo: Option<f64>,
    /// `None`: not measured; `Some(None)`: measured without a value (no step sustained).
    phoenix: Option<Option<f64>>,
    pusher: Option<Option<f64>>,
    sockudo: Option<Option<f64>>,
}

/// The last result of `target` in `scenario` that `pick` accepts, and the value it gives.
fn last_of(
    results: &[Value],
    target: &str,
    scenario: &str,
    pick: impl Fn(&Value) -> Option<Option<f64>>,
) -> Option<Option<f64>> {
    results
        .iter()
        .rev()
        .filter(|r| r["target"] == target && r["scenario"] == scenario && r["error"].is_null())
        .find_map(pick)
}

/// A fixed-load result's step (the one step, whether or not it passed).
fn fixed_step(r: &Value) -> &Value {
    if r["best"].is_null() {
        &r["steps"][0]
    } else {
        &r["best"]
    }
}

/// Issue 20's targets, when the results hold Plexus, its Pusher mode and Sockudo: the Pusher
/// mode's highest sustained fan-out ≥ 3× Sockudo's, its idle memory per subscribed connection
/// ≤ 1/10 of Sockudo's, and the Pusher mode within 10 % of the Phoenix mode on each figure.
fn pusher_targets(results: &[Value]) -> Option<String> {
    let has = |t: &str| results.iter().any(|r| r["target"] == t);
    if !(has(PHOENIX) && has(PUSHER) && has(SOCKUDO)) {
        return None;
    }
    let mut figures = Vec::new();
    let three = |name: String,
                 higher_is_better: bool,
                 vs_sockudo: Option<f64>,
                 scenario: &str,
                 pick: &dyn Fn(&Value) -> Option<Option<f64>>| {
        let get = |t: &str| last_of(results, t, scenario, pick);
        let (phoenix, pusher, sockudo) = (get(PHOENIX), get(PUSHER), get(SOCKUDO));
        // A figure none of the three measured is left out.
        if phoenix.is_none() && pusher.is_none() && sockudo.is_none() {
            return None;
        }
        Some(Figure {
            name,
            higher_is_better,
            vs_sockudo,
            phoenix,
            pusher,
            sockudo,
        })
    };
    let mut subs: Vec<u64> = results
        .iter()
        .filter(|r| r["scenario"] == "saturation")
        .filter_map(|r| r["subs"].as_u64())
        .collect();
    subs.sort_unstable();
    subs.dedup();
    for n in subs {
        figures.extend(three(
            format!(
                "highest sustained fan-out, {} subscribers (deliveries/s)",
                num(Some(n as f64))
            ),
            true,
            Some(3.0),
            "saturation",
            &|r| (r["subs"].as_u64() == Some(n)).then(|| f(&r["best"]["delivered_per_s"])),
        ));
    }
    figures.extend(three(
        "idle memory per subscribed connection (bytes)".into(),
        false,
        Some(0.1),
        "idle",
        &|r| (r["proto"] != "raw").then(|| f(&r["bytes_per_connection"])),
    ));
    figures.extend(three(
        "fixed load: deliveries per server CPU-second".into(),
        true,
        None,
        "fixed",
        &|r| Some(f(&fixed_step(r)["deliveries_per_server_cpu_s"])),
    ));
    figures.extend(three(
        "fixed load: p99 latency (ms)".into(),
        false,
        None,
        "fixed",
        &|r| Some(f(&fixed_step(r)["lat_ms"]["p99"])),
    ));
    figures.extend(three(
        "connect + subscribe rate, ws (connects/s)".into(),
        true,
        None,
        "connect",
        &|r| (r["transport"] == "ws").then(|| f(&r["connects_per_s"])),
    ));
    figures.extend(three(
        "server CPU per connect, ws (µs)".into(),
        false,
        None,
        "connect",
        &|r| (r["transport"] == "ws").then(|| f(&r["server_cpu_us_per_connect"])),
    ));
    if figures.is_empty() {
        return None;
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Issue 20's targets: Pusher mode against Sockudo and against Phoenix mode\n"
    );
    let _ = writeln!(md, "| figure | {PHOENIX} (Phoenix) | {PUSHER} | {SOCKUDO} | Pusher mode ÷ Sockudo | Pusher mode ÷ Phoenix mode (target: within 10 %) |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    // Per figure: met (Some(true)), missed (Some(false)) or undecided (None: neither server
    // sustained even the first step).
    let (mut vs_sockudo, mut vs_phoenix) = (Vec::new(), Vec::new());
    for g in &figures {
        let cell = |v: Option<Option<f64>>| match v {
            Some(Some(x)) => num(Some(x)),
            Some(None) if g.higher_is_better => "none sustained".into(),
            Some(None) => "–".into(),
            None => "not measured".into(),
        };
        // `ours` against `theirs` with the target ratio `t` (≥ t when higher is better).
        let judge = |ours: Option<Option<f64>>,
                     theirs: Option<Option<f64>>,
                     t: f64,
                     them: &str,
                     show_target: bool|
         -> (String, Option<bool>) {
            let sign = if g.higher_is_better { "≥" } else { "≤" };
            match (ours, theirs) {
                (Some(Some(a)), Some(Some(b))) if b > 0.0 => {
                    let r = a / b;
                    let ok = if g.higher_is_better { r >= t } else { r <= t };
                    let target = if show_target {
                        format!(" (target {sign} {t}×)")
                    } else {
                        String::new()
                    };
                    (format!("{r:.2}×{target}: {}", verdict(ok)), Some(ok))
                }
                (Some(Some(_)), Some(None)) if g.higher_is_better => {
                    (format!("{them} sustained no step: met"), Some(true))
                }
                (Some(None), Some(Some(_))) if g.higher_is_better => (
                    "Pusher mode sustained no step: **not met**".into(),
                    Some(false),
                ),
                (Some(None), Some(None)) if g.higher_is_better => {
                    ("neither sustained the first step: undecided".into(), None)
                }
                _ => ("not measured: **not met**".into(), Some(false)),
            }
        };
        let sockudo = match g.vs_sockudo {
            None => match (g.pusher, g.sockudo) {
                (Some(Some(p)), Some(Some(s))) if s > 0.0 => format!("{:.2}×", p / s),
                _ => "–".into(),
            },
            Some(t) => {
                let (text, ok) = judge(g.pusher, g.sockudo, t, SOCKUDO, true);
                vs_sockudo.push((g.name.clone(), ok));
                text
            }
        };
        let limit = if g.higher_is_better { 0.9 } else { 1.1 };
        let (phoenix, ok) = judge(g.pusher, g.phoenix, limit, "Phoenix mode", false);
        vs_phoenix.push((g.name.clone(), ok));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {sockudo} | {phoenix} |",
            g.name,
            cell(g.phoenix),
            cell(g.pusher),
            cell(g.sockudo)
        );
    }
    let summary = |v: &[(String, Option<bool>)]| -> String {
        let of = |want: Option<bool>| -> Vec<&str> {
            v.iter()
                .filter(|(_, ok)| *ok == want)
                .map(|(n, _)| n.as_str())
                .collect()
        };
        let (missed, undecided) = (of(Some(false)), of(None));
        let mut out = if v.is_empty() {
            "not measured".to_owned()
        } else if !missed.is_empty() {
            format!("**not met** ({})", missed.join("; "))
        } else if undecided.len() == v.len() {
            "undecided".to_owned()
        } else {
            "met".to_owned()
        };
        if !undecided.is_empty() {
            let _ = write!(
                out,
                " [undecided, neither sustained the first step: {}]",
                undecided.join("; ")
            );
        }
        out
    };
    let pick = |v: &[(String, Option<bool>)], what: &str| -> Vec<(String, Option<bool>)> {
        v.iter()
            .filter(|(n, _)| n.contains(what))
            .cloned()
            .collect()
    };
    let _ = writeln!(
        md,
        "\nHighest sustained fan-out ≥ 3× Sockudo's: {}. Idle memory per subscribed connection ≤ 1/10 of Sockudo's: {}. Pusher mode within 10 % of Phoenix mode on each figure: {}.\n",
        summary(&pick(&vs_sockudo, "fan-out")),
        summary(&pick(&vs_sockudo, "memory")),
        summary(&vs_phoenix)
    );
    Some(md)
}

pub fn run(o: Opts) -> Result<(), String> {
    let text = std::fs::read_to_string(&o.input).map_err(|e| format!("{}: {e}", o.input))?;
    let results: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if let Some(n) = &o.section {
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!(
                "--section must be letters, digits and '-', not {n:?}"
            ));
        }
    }
    let section = build(&results, &o);
    let (start, end) = o.markers();
    let doc = std::fs::read_to_string(&o.markdown).map_err(|e| format!("{}: {e}", o.markdown))?;
    let new = match (doc.find(&start), doc.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}{}", &doc[..a], section.md, &doc[b + end.len()..])
        }
        _ => format!("{doc}\n{}\n", section.md),
    };
    std::fs::write(&o.markdown, new).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&o.svg_dir).map_err(|e| e.to_string())?;
    for (name, svg) in section.charts {
        std::fs::write(format!("{}/{name}", o.svg_dir), svg).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_charts() {
        assert_eq!(num(Some(1234567.0)), "1,234,567");
        assert_eq!(num(Some(12.25)), "12.2");
        let svg = bars(
            "t",
            "u",
            &[("Plexus".into(), 2.0), ("nchan".into(), 1.0)],
            false,
        );
        assert!(svg.contains("#6d28d9") && svg.ends_with("</svg>\n"));
    }

    fn line(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or(Value::Null)
    }

    #[test]
    fn pusher_targets_say_which_are_met() {
        let sat = |t: &str, subs: u64, best: &str| {
            line(&format!(
                r#"{{"target":"{t}","scenario":"saturation","subs":{subs},"best":{best},"steps":[]}}"#
            ))
        };
        let idle = |t: &str, b: u64| {
            line(&format!(
                r#"{{"target":"{t}","scenario":"idle","proto":"pusher","bytes_per_connection":{b}}}"#
            ))
        };
        let mut results = vec![
            sat(PHOENIX, 2000, r#"{"delivered_per_s":800000}"#),
            sat(PUSHER, 2000, r#"{"delivered_per_s":600000}"#),
            sat(SOCKUDO, 2000, r#"{"delivered_per_s":70000}"#),
            sat(PHOENIX, 10000, r#"{"delivered_per_s":500000}"#),
            sat(PUSHER, 10000, r#"{"delivered_per_s":480000}"#),
            sat(SOCKUDO, 10000, "null"),
            idle(PHOENIX, 3800),
            idle(PUSHER, 4000),
            idle(SOCKUDO, 150000),
        ];
        let md = pusher_targets(&results).unwrap_or_default();
        // 600k / 70k = 8.57×; Sockudo sustained nothing at 10,000; 4000 / 150000 = 0.03×.
        assert!(md.contains("8.57× (target ≥ 3×): met"), "{md}");
        assert!(md.contains("Sockudo sustained no step: met"), "{md}");
        assert!(md.contains("0.03× (target ≤ 0.1×): met"), "{md}");
        // 600k / 800k = 0.75: more than 10 % below the Phoenix mode; 4000 / 3800 = 1.05 is within.
        assert!(md.contains("0.75×: **not met**"), "{md}");
        assert!(md.contains("1.05×: met"), "{md}");
        assert!(
            md.contains("Highest sustained fan-out ≥ 3× Sockudo's: met."),
            "{md}"
        );
        assert!(md.contains("Pusher mode within 10 % of Phoenix mode on each figure: **not met** (highest sustained fan-out, 2,000 subscribers"), "{md}");
        // Sockudo's idle memory only 5× the Pusher mode's: the 1/10 target is missed.
        results.push(idle(SOCKUDO, 20000));
        let md = pusher_targets(&results).unwrap_or_default();
        assert!(md.contains("0.20× (target ≤ 0.1×): **not met**"), "{md}");
        // Neither the Pusher mode nor Sockudo sustained a step: undecided, not met nor missed.
        results.push(sat(PHOENIX, 5000, r#"{"delivered_per_s":300000}"#));
        results.push(sat(PUSHER, 5000, "null"));
        results.push(sat(SOCKUDO, 5000, "null"));
        let md = pusher_targets(&results).unwrap_or_default();
        assert!(
            md.contains("| none sustained | none sustained | neither sustained the first step: undecided | Pusher mode sustained no step: **not met** |"),
            "{md}"
        );
        assert!(
            md.contains("Highest sustained fan-out ≥ 3× Sockudo's: met [undecided, neither sustained the first step: highest sustained fan-out, 5,000 subscribers (deliveries/s)]."),
            "{md}"
        );
        // Without Sockudo in the results there is no such table.
        results.retain(|r| r["target"] != SOCKUDO);
        assert!(pusher_targets(&results).is_none());
    }
}
