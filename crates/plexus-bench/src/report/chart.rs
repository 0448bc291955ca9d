//! The SVG charts: one horizontal bar chart per headline figure, Plexus highlighted.

use std::fmt::Write;

use super::format::num;

/// One bar chart: labelled horizontal bars, the first (Plexus) in a highlight colour.
pub(super) fn bars(
    title: &str,
    unit: &str,
    rows: &[(String, f64)],
    lower_is_better: bool,
) -> String {
    let marked: Vec<(String, f64, &str)> = rows.iter().map(|(l, v)| (l.clone(), *v, "")).collect();
    bars_marked(title, unit, &marked, lower_is_better)
}

/// The same, each value printed after its mark (`"≥ "`: a lower bound).
pub(super) fn bars_marked(
    title: &str,
    unit: &str,
    rows: &[(String, f64, &str)],
    lower_is_better: bool,
) -> String {
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
    for (i, (label, v, mark)) in rows.iter().enumerate() {
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
<text x="{:.1}" y="{}">{}{}</text>
"##,
            left - 8.0,
            y + 15.0,
            esc(label),
            left + len + 6.0,
            y + 15.0,
            esc(mark),
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
}
