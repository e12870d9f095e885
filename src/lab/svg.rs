//! The throughput plot: TCP goodput at the sink per 10 ms bin over the run, with the lab's
//! actions (cuts, restores, kills) as vertical lines and lost probes as ticks on the time
//! axis. Plain SVG text, no dependencies.

use std::fmt::Write as _;

use super::timeline::{MarkKind, Timeline};

const W: f64 = 1000.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Goodput per bin as (seconds since `t0`, Mbit/s), from the sink's cumulative counts.
pub fn series(t: &Timeline, t0: u64) -> Vec<(f64, f64)> {
    t.tcp_bins
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| {
            let dt = (w[1].0 - w[0].0) as f64 / 1e6;
            let mbit = w[1].1.saturating_sub(w[0].1) as f64 * 8.0 / 1e6;
            ((w[1].0.saturating_sub(t0)) as f64 / 1e6, mbit / dt)
        })
        .collect()
}

/// A "nice" step (1, 2 or 5 × 10^n) for about `target` ticks over `span`.
pub(crate) fn nice_step(span: f64, target: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let n = if norm < 1.5 {
        1.0
    } else if norm < 3.5 {
        2.0
    } else if norm < 7.5 {
        5.0
    } else {
        10.0
    };
    n * mag
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document. `t0`/`t1` bound the time axis (µs); `title` heads the plot;
/// `nominal_mbps` is the transfer's configured rate: the axis stops at 3× that, so that the
/// bursts after an outage (TCP sending its backlog) do not flatten the rest of the plot.
pub fn render(t: &Timeline, t0: u64, t1: u64, title: &str, nominal_mbps: f64) -> String {
    let pts = series(t, t0);
    let span = (t1.saturating_sub(t0) as f64 / 1e6).max(0.001);
    let mut ymax_data = pts.iter().map(|p| p.1).fold(0.0f64, f64::max);
    if nominal_mbps > 0.0 {
        ymax_data = ymax_data.min(3.0 * nominal_mbps);
    }
    let ystep = nice_step(ymax_data.max(1.0), 5.0);
    let ymax = (ymax_data / ystep).ceil().max(1.0) * ystep;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |s: f64| LEFT + (s / span).clamp(0.0, 1.0) * pw;
    let y = |v: f64| TOP + ph - (v / ymax).clamp(0.0, 1.0) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Grid and axes.
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
        v += ystep;
    }
    let xstep = nice_step(span, 10.0);
    let mut sec = 0.0;
    while sec <= span + xstep / 2.0 {
        let xx = x(sec);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#f0f0f0"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 16.0,
            (sec * 1000.0).round() / 1000.0
        );
        sec += xstep;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#,
        LEFT + pw / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">TCP goodput (Mbit/s, 10 ms bins)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Periods while a's NIC was cut: from each cut to the next restore.
    let mut cut_at: Option<u64> = None;
    for m in &t.marks {
        match m.kind {
            MarkKind::Cut => cut_at = Some(m.t_us),
            MarkKind::Restore => {
                if let Some(c) = cut_at.take() {
                    let (x0, x1) = (
                        x(c.saturating_sub(t0) as f64 / 1e6),
                        x(m.t_us.saturating_sub(t0) as f64 / 1e6),
                    );
                    let _ = writeln!(
                        s,
                        r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="#d62728" fill-opacity="0.07"/>"##,
                        (x1 - x0).max(0.0)
                    );
                }
            }
            _ => {}
        }
    }
    // Lost probes: short red ticks just above the time axis.
    for p in &t.probes {
        if let (Some(sent), None) = (p.sent_us, p.recv_us) {
            if sent >= t0 && sent <= t1 {
                let xx = x((sent - t0) as f64 / 1e6);
                let _ = writeln!(
                    s,
                    r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#d62728" stroke-width="1"/>"##,
                    TOP + ph - 8.0,
                    TOP + ph
                );
            }
        }
    }
    // Goodput.
    if !pts.is_empty() {
        let mut path = String::new();
        for (i, (sx, v)) in pts.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                x(*sx),
                y(*v)
            );
        }
        let _ = writeln!(
            s,
            r##"<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="1.2"/>"##
        );
    } else {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">no TCP transfer in this run</text>"##,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    // The lab's actions.
    for (i, m) in t.marks.iter().enumerate() {
        if m.t_us < t0 || m.t_us > t1 {
            continue;
        }
        let color = match m.kind {
            MarkKind::Cut => "#d62728",
            MarkKind::Restore => "#2ca02c",
            MarkKind::Kill => "#ff7f0e",
            MarkKind::Isolate => "#9467bd",
            MarkKind::Reconnect => "#17becf",
        };
        let xx = x((m.t_us - t0) as f64 / 1e6);
        let ly = TOP + 12.0 + (i % 3) as f64 * 13.0;
        let _ = writeln!(
            s,
            r#"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="{color}" stroke-dasharray="4 3"/><text x="{:.1}" y="{ly:.1}" fill="{color}">{}</text>"#,
            TOP + ph,
            xx + 3.0,
            escape(&m.label)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" fill="#d62728" text-anchor="end">| lost probe</text>"##,
        W - RIGHT,
        H - 12.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(10.0, 10.0), 1.0);
        assert_eq!(nice_step(3.0, 10.0), 0.2);
        assert_eq!(nice_step(45.0, 5.0), 10.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(nice_step(f64::NAN, 5.0), 1.0);
    }

    #[test]
    fn renders_series_marks_and_losses() {
        let mut t = Timeline::default();
        for i in 0..=100u64 {
            t.apply_line(&format!("b {} {}", 1_000_000 + i * 10_000, i * 25_000));
        }
        t.apply_line("p 0 1500000");
        t.mark(1_400_000, MarkKind::Cut, "cut 1 <a>");
        let pts = series(&t, 1_000_000);
        assert_eq!(pts.len(), 100);
        // 25 kB per 10 ms = 20 Mbit/s.
        assert!((pts[0].1 - 20.0).abs() < 1e-9);
        t.mark(1_600_000, MarkKind::Restore, "restore 1");
        let svg = render(&t, 1_000_000, 2_000_000, "lab", 20.0);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("<path d=\"M"));
        assert!(svg.contains("cut 1 &lt;a&gt;"));
        assert!(svg.contains("#d62728"));
        assert!(svg.contains("fill-opacity"), "the cut period is shaded");
        let empty = render(&Timeline::default(), 0, 0, "empty", 0.0);
        assert!(empty.contains("no TCP transfer"));
    }
}
