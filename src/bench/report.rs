//! Writing a bench run: `bench.json`, `bench.md` and one SVG per plot.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use super::model::{Better, Figure, Plot};
use super::SuiteRecord;
use crate::lab::svg::{escape, nice_step};

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio_cell(f: &Figure) -> String {
    match (f.ratio(), f.better) {
        (Some(r), Better::Higher) => format!("{r:.2}× (higher is better)"),
        (Some(r), Better::Lower) => format!("{r:.2}× (lower is better)"),
        (None, _) => String::new(),
    }
}

/// The Markdown table of every figure, suite by suite.
pub fn markdown(records: &[SuiteRecord]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# nicproxy bench\n");
    let _ = writeln!(
        s,
        "| suite | figure | value | baseline | baseline value | ratio | target | note |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in records {
        if let Some(e) = &r.error {
            let _ = writeln!(
                s,
                "| {} | **failed** | | | | | | {} |",
                r.suite_name(),
                e.replace('|', "\\|").replace('\n', " ")
            );
            continue;
        }
        for f in &r.outcome.figures {
            let (bname, bval) = match &f.baseline {
                Some(b) => (b.name.clone(), format!("{} {}", fmt_num(b.value), f.unit)),
                None => (String::new(), String::new()),
            };
            let target = match &f.target {
                Some(t) => format!(
                    "{} {}",
                    t.text,
                    if t.met { "(met)" } else { "(**not met**)" }
                ),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} {} | {} | {} | {} | {} | {} |",
                r.suite_name(),
                f.name.replace('|', "\\|"),
                fmt_num(f.value),
                f.unit,
                bname,
                bval,
                ratio_cell(f),
                target,
                f.note.replace('|', "\\|")
            );
        }
    }
    let _ = writeln!(s);
    for r in records {
        let _ = writeln!(
            s,
            "- {}: {:.1} s, load average {:.2} before, {:.2} after{}",
            r.suite_name(),
            r.seconds,
            r.load_before,
            r.load_after,
            if r.outcome.notes.is_empty() {
                String::new()
            } else {
                format!("; {}", r.outcome.notes.join("; "))
            }
        );
    }
    s
}

/// A line plot as SVG text.
pub fn svg(p: &Plot) -> String {
    const W: f64 = 900.0;
    const H: f64 = 420.0;
    const L: f64 = 80.0;
    const R: f64 = 180.0;
    const T: f64 = 40.0;
    const B: f64 = 55.0;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf",
    ];
    let pts = p.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let ystep = nice_step(y1.max(1e-9), 5.0);
    let ymax = (y1 / ystep).ceil().max(1.0) * ystep;
    let (pw, ph) = (W - L - R, H - T - B);
    let x = |v: f64| L + ((v - x0) / (x1 - x0)).clamp(0.0, 1.0) * pw;
    let y = |v: f64| T + ph - (v / ymax).clamp(0.0, 1.0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12"><rect width="{W}" height="{H}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        L + pw / 2.0,
        escape(&p.title)
    );
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            L + pw,
            L - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
        v += ystep;
    }
    let xstep = nice_step(x1 - x0, 8.0);
    let mut xv = (x0 / xstep).ceil() * xstep;
    while xv <= x1 + xstep / 2.0 {
        let xx = x(xv);
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            T + ph + 16.0,
            fmt_num(xv)
        );
        xv += xstep;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#444"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"##,
        L + pw / 2.0,
        H - 12.0,
        escape(&p.x_label),
        T + ph / 2.0,
        T + ph / 2.0,
        escape(&p.y_label)
    );
    for m in &p.markers {
        let xx = x(m.x);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{T}" x2="{xx:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
            T + ph,
            xx + 3.0,
            T + 12.0,
            escape(&m.label)
        );
    }
    for (i, series) in p.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut path = String::new();
        for (j, &(px, py)) in series
            .points
            .iter()
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .enumerate()
        {
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { " L" },
                x(px),
                y(py)
            );
        }
        if !path.is_empty() {
            let _ = writeln!(
                s,
                r#"<path d="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>"#
            );
        }
        let ly = T + 14.0 + i as f64 * 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            L + pw + 10.0,
            ly - 4.0,
            L + pw + 30.0,
            ly - 4.0,
            L + pw + 35.0,
            ly,
            escape(&series.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes bench.json, bench.md and the plots into `dir`; returns the Markdown.
pub fn write(dir: &Path, records: &[SuiteRecord]) -> io::Result<String> {
    let json = serde_json::json!({
        "bench": "nicproxy",
        "version": env!("CARGO_PKG_VERSION"),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "suites": records,
    });
    std::fs::write(
        dir.join("bench.json"),
        serde_json::to_string_pretty(&json).map_err(io::Error::other)? + "\n",
    )?;
    let md = markdown(records);
    std::fs::write(dir.join("bench.md"), &md)?;
    for r in records {
        for p in &r.outcome.plots {
            std::fs::write(dir.join(format!("{}.svg", p.name)), svg(p))?;
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::super::model::{Marker, Series, SuiteOutcome};
    use super::super::Suite;
    use super::*;

    fn record() -> SuiteRecord {
        SuiteRecord {
            suite: Suite::Forwarding,
            seconds: 1.5,
            load_before: 0.5,
            load_after: 0.7,
            outcome: SuiteOutcome {
                figures: vec![Figure::new("fwd | 64 B", 40.0, "Mpps", Better::Higher)
                    .baseline("testpmd io-fwd", 50.0)
                    .target("≥ 0.90×", false)],
                plots: vec![Plot {
                    name: "p".into(),
                    title: "t <x>".into(),
                    x_label: "x".into(),
                    y_label: "y".into(),
                    series: vec![Series {
                        label: "s".into(),
                        points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, f64::NAN)],
                    }],
                    markers: vec![Marker {
                        x: 1.0,
                        label: "cut".into(),
                    }],
                }],
                notes: vec!["net_null".into()],
                raw: serde_json::Value::Null,
            },
            error: None,
        }
    }

    #[test]
    fn markdown_has_ratio_target_and_escapes() {
        let md = markdown(&[record()]);
        assert!(
            md.contains("| forwarding | fwd \\| 64 B | 40.00 Mpps |"),
            "{md}"
        );
        assert!(md.contains("0.80× (higher is better)"), "{md}");
        assert!(md.contains("(**not met**)"));
        assert!(md.contains("load average 0.50 before"));
    }

    #[test]
    fn svg_draws_series_markers_and_skips_nan() {
        let r = record();
        let s = svg(&r.outcome.plots[0]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("t &lt;x&gt;"));
        assert!(s.contains("M80.0,"), "{s}");
        assert!(!s.contains("NaN"));
        assert!(s.contains(">cut<"));
        // An empty plot renders too.
        let empty = Plot {
            series: vec![],
            markers: vec![],
            ..r.outcome.plots[0].clone()
        };
        assert!(svg(&empty).ends_with("</svg>\n"));
    }

    #[test]
    fn writes_three_kinds_of_file() {
        let dir = std::env::temp_dir().join(format!("np-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, &[record()]).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap())
                .unwrap();
        assert_eq!(json["suites"][0]["suite"], "forwarding");
        assert_eq!(json["suites"][0]["figures"][0]["baseline"]["value"], 50.0);
        assert!(dir.join("bench.md").exists() && dir.join("p.svg").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
