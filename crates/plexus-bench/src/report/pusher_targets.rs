//! Issue 20's targets (Pusher mode against Sockudo and against the Phoenix mode), said met or
//! not, when one run's results hold Plexus, Plexus in Pusher mode and Sockudo.

use serde_json::Value;
use std::fmt::Write;

use super::format::{f, fixed_step, num};

/// The servers issue 20's targets compare, as `scripts/bench-compare` names them.
const PHOENIX: &str = "Plexus";
const PUSHER: &str = "Plexus (Pusher mode)";
const SOCKUDO: &str = "Sockudo";

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

/// Issue 20's targets, when the results hold Plexus, its Pusher mode and Sockudo: the Pusher
/// mode's highest sustained fan-out ≥ 3× Sockudo's, its idle memory per subscribed connection
/// ≤ 1/10 of Sockudo's, and the Pusher mode within 10 % of the Phoenix mode on each figure.
pub(super) fn pusher_targets(results: &[Value]) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
