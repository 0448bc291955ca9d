//! Shared helpers of the tables: reading numbers out of result lines, printing them, grouping
//! results by server.

use serde_json::Value;
use std::collections::BTreeMap;

pub(super) fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

pub(crate) fn num(v: Option<f64>) -> String {
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

pub(super) fn by_target<'a>(
    results: &'a [Value],
    scenario: &str,
) -> BTreeMap<String, Vec<&'a Value>> {
    let mut m: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in results.iter().filter(|r| r["scenario"] == scenario) {
        let key = r["target"].as_str().unwrap_or("?").to_owned();
        m.entry(key).or_default().push(r);
    }
    m
}

/// Plexus rows first, then the peers by name.
pub(super) fn ordered<T>(m: &BTreeMap<String, T>) -> Vec<(&String, &T)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by_key(|(k, _)| (!k.starts_with("Plexus"), (*k).clone()));
    v
}

pub(super) fn flag(step: &Value) -> &'static str {
    if step["client_bound"].as_bool() == Some(true) {
        " ⚠"
    } else {
        ""
    }
}

/// A fixed-load result's step (the one step, whether or not it passed).
pub(super) fn fixed_step(r: &Value) -> &Value {
    if r["best"].is_null() {
        &r["steps"][0]
    } else {
        &r["best"]
    }
}
