//! The failover suite (issue 5's benchmark): nicproxy's failover in the host lab over many
//! cuts, against Linux bonding active-backup under the same traffic and the same cut,
//! measured in the same `nicproxy bench` run.
//!
//! nicproxy: `nicproxy lab --cuts N --json` (3 nodes, UDP fabric, 1 kHz UDP probes and a
//! 20 Mbit/s TCP transfer from the station to node a; a's switch port is set down and up
//! again N times) runs as a child process, so that its signal handling, namespaces and
//! live output stay its own; its JSON report gives the figures and its throughput plot is
//! copied into the output directory.
//!
//! Baseline: the bonding suite's guest run ([`super::bonding::measure`]), done here for the
//! baseline of these rows and reused by the bonding suite when it runs after this one, so
//! the guest boots once per bench run. Both sides are analysed by the same code (the lab's
//! `analysis` and `report`), so every row compares the same quantity.
//!
//! Definitions (the lab's): failover time is from the cut to the sending of the first
//! probe after it that was answered (the first frame delivered by the new path); FDB move
//! is from the cut to the bridge reporting the MAC on the new port; probes lost per
//! failover are the unanswered probes from just before the cut to the end of the
//! failed-over period; failback is from the restore to the FDB back on the node's own port.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::bonding::{self, CLASSIC_MIIMON};
use super::model::{Better, Figure, Plot, Progress, Series, SuiteOutcome};
use super::BenchOpts;
use crate::lab::percentile;

/// The targets for the host lab.
const TARGET_MEDIAN_MS: f64 = 10.0;
const TARGET_P99_MS: f64 = 20.0;

/// The figures of one lab-style report (nicproxy's lab or the bonding run).
#[derive(Debug, Clone, Default)]
pub struct Quantities {
    /// Failover time of every cut that failed over, ms.
    pub failover: Vec<f64>,
    pub failover_median: Option<f64>,
    pub failover_p99: Option<f64>,
    pub fdb_median: Option<f64>,
    pub fdb_p99: Option<f64>,
    pub lost_median: Option<f64>,
    pub lost_max: Option<f64>,
    pub failback_median: Option<f64>,
    /// Cuts made, and cuts that never failed over.
    pub cuts: usize,
    pub failed_cuts: usize,
    pub probe_interval_us: u64,
}

impl Quantities {
    /// Reads the keys of the lab's JSON report (`nicproxy lab --json`).
    pub fn of(j: &Value) -> Quantities {
        let per_cut: Vec<&Value> = j["per_cut"].as_array().into_iter().flatten().collect();
        let col = |k: &str| -> Vec<f64> { per_cut.iter().filter_map(|c| c[k].as_f64()).collect() };
        let failover = col("failover_ms");
        let fdb = col("fdb_move_ms");
        let lost = col("frames_lost");
        let failback = col("failback_ms");
        Quantities {
            failover_median: percentile(&failover, 50.0),
            failover_p99: percentile(&failover, 99.0),
            fdb_median: percentile(&fdb, 50.0),
            fdb_p99: percentile(&fdb, 99.0),
            lost_median: percentile(&lost, 50.0),
            lost_max: percentile(&lost, 100.0),
            failback_median: percentile(&failback, 50.0),
            cuts: per_cut.len(),
            failed_cuts: per_cut.len() - failover.len(),
            probe_interval_us: j["probe_interval_us"].as_u64().unwrap_or(0),
            failover,
        }
    }

    fn rate(&self) -> String {
        match self.probe_interval_us {
            0 => "the lab's probe rate".into(),
            us => format!("{:.0} probes/s", 1e6 / us as f64),
        }
    }
}

/// The rows for one side: `prefix: quantity`, each with the same quantity of `baseline`
/// when given; a quantity that was not measured (no cut got that far) is left out.
pub fn figures_of(
    prefix: &str,
    q: &Quantities,
    baseline: Option<(&str, &Quantities)>,
    note: &str,
) -> Vec<Figure> {
    type Pick = fn(&Quantities) -> Option<f64>;
    let rate = q.rate();
    let rows: [(String, &str, Pick); 7] = [
        (
            "failover time (cut → first probe answered via the new path), median".into(),
            "ms",
            |q| q.failover_median,
        ),
        ("failover time, p99".into(), "ms", |q| q.failover_p99),
        (
            "FDB move (cut → bridge learns the MAC on the new port), median".into(),
            "ms",
            |q| q.fdb_median,
        ),
        ("FDB move, p99".into(), "ms", |q| q.fdb_p99),
        (
            format!("probes lost per failover at {rate}, median"),
            "probes",
            |q| q.lost_median,
        ),
        (
            "probes lost per failover, worst cut".into(),
            "probes",
            |q| q.lost_max,
        ),
        (
            "failback (restore → FDB back on the own port), median".into(),
            "ms",
            |q| q.failback_median,
        ),
    ];
    let mut out = Vec::new();
    for (what, unit, pick) in rows {
        let Some(v) = pick(q) else { continue };
        let mut f = Figure::new(format!("{prefix}: {what}"), v, unit, Better::Lower).note(format!(
            "{} cuts ({} never failed over); {note}",
            q.cuts, q.failed_cuts
        ));
        if let Some((name, b)) = baseline {
            if let Some(bv) = pick(b) {
                f = f.baseline(name, bv);
            }
        }
        out.push(f);
    }
    out
}

/// The targets on nicproxy's failover rows.
fn with_targets(mut figures: Vec<Figure>) -> Vec<Figure> {
    for f in &mut figures {
        if f.name.contains("failover time") && f.name.ends_with("median") {
            *f = f.clone().target(
                format!("median ≤ {TARGET_MEDIAN_MS} ms"),
                f.value <= TARGET_MEDIAN_MS,
            );
        } else if f.name.contains("failover time, p99") {
            *f = f.clone().target(
                format!("p99 ≤ {TARGET_P99_MS} ms"),
                f.value <= TARGET_P99_MS,
            );
        }
    }
    figures
}

/// The empirical CDF of failover times, as a step line.
pub fn cdf_series(label: &str, values: &[f64]) -> Series {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mut points = Vec::with_capacity(v.len() * 2);
    for (i, x) in v.iter().enumerate() {
        points.push((*x, i as f64 / n));
        points.push((*x, (i + 1) as f64 / n));
    }
    Series {
        label: label.into(),
        points,
    }
}

/// Runs `nicproxy lab --cuts N --json --out DIR` and returns its JSON report, streaming
/// the cut lines as progress and keeping the whole output in DIR/lab.log.
fn run_lab(cuts: u32, dir: &Path, progress: &Progress) -> Result<Value, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("finding the nicproxy executable: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let args = [
        "lab".to_string(),
        "--cuts".into(),
        cuts.to_string(),
        "--json".into(),
        "--out".into(),
        dir.display().to_string(),
    ];
    progress.say(format_args!("host lab: nicproxy {}", args.join(" ")));
    let mut child = Command::new(&exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting nicproxy lab: {e}"))?;
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut all = String::new();
        if let Some(e) = stderr {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
            }
        }
        all
    });
    // Each cut takes ~5 s (1 s proxied, 2 s hold-down, 1 s back on the NIC); the lab's own
    // step timeouts end a stuck cut long before this.
    let deadline = Instant::now() + Duration::from_secs(120 + u64::from(cuts) * 40);
    let mut log = String::new();
    let mut last = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("cut ")
                || line.starts_with("failover:")
                || line.starts_with("failback:")
            {
                progress.say(format_args!("host lab: {line}"));
            }
            if !line.trim().is_empty() {
                last.clone_from(&line);
            }
            log.push_str(&line);
            log.push('\n');
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for nicproxy lab: {e}"))?;
    let stderr = err_reader.join().unwrap_or_default();
    let _ = std::fs::write(
        dir.join("lab.log"),
        format!("{log}\n--- stderr ---\n{stderr}"),
    );
    let j: Value = serde_json::from_str(&last).map_err(|_| {
        format!(
            "nicproxy lab ({status}) did not end with its JSON report; last line: {last}; stderr: {}",
            stderr.lines().rev().take(10).collect::<Vec<_>>().join(" | ")
        )
    })?;
    if j.get("per_cut").is_none() {
        return Err(format!(
            "nicproxy lab failed ({status}): {}",
            j["error"].as_str().unwrap_or(&last)
        ));
    }
    Ok(j)
}

/// The failed checks of a lab report, by name.
fn failed_checks(j: &Value) -> Vec<String> {
    j["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"].as_bool() != Some(true))
        .map(|c| {
            format!(
                "{} ({})",
                c["name"].as_str().unwrap_or("?"),
                c["detail"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Runs the failover suite.
pub fn run(opts: &BenchOpts, progress: &Progress) -> Result<SuiteOutcome, String> {
    let lab_dir = opts.out.join("failover-lab");
    let mut notes = Vec::new();
    // A lab that could not run at all (exit 2: e.g. an agent or daemon that did not start
    // within the lab's timeouts on a heavily loaded machine) is tried once more; a lab
    // whose checks failed has run and is reported as it is.
    let lab = match run_lab(opts.cuts, &lab_dir, progress) {
        Ok(j) => j,
        Err(e) => {
            progress.say(format_args!(
                "host lab could not run, trying once more: {e}"
            ));
            notes.push(format!(
                "the first host lab could not run (load {:.1}) and was retried: {e}",
                crate::loadavg::one_minute()
            ));
            std::thread::sleep(Duration::from_secs(10));
            run_lab(opts.cuts, &lab_dir, progress)?
        }
    };
    let nq = Quantities::of(&lab);
    notes.push(format!(
        "nicproxy: host lab, 3 nodes, UDP fabric, {}, TCP {} Mbit/s, hold-down {} ms before failback (included in its failback time); command: nicproxy lab --cuts {} --json; TCP survived: {}; FDB followed every cut: {}",
        nq.rate(),
        lab["tcp"]["mbps"],
        lab["hold_down_ms"],
        opts.cuts,
        lab["tcp_survived"],
        lab["fdb_followed"]
    ));
    let failed = failed_checks(&lab);
    if !failed.is_empty() {
        notes.push(format!(
            "nicproxy lab checks that failed: {}",
            failed.join("; ")
        ));
    }
    let throughput = lab_dir.join("throughput.svg");
    let copy = opts.out.join("failover-throughput.svg");
    match std::fs::copy(&throughput, &copy) {
        Ok(_) => notes.push(format!(
            "throughput over time of the host lab, cuts shaded: {}",
            copy.display()
        )),
        Err(e) => notes.push(format!(
            "no throughput plot ({}: {e})",
            throughput.display()
        )),
    }

    let lab_note = format!("host lab (nicproxy lab --cuts {})", opts.cuts);
    let mut plot = Plot {
        name: "failover-cdf".into(),
        title: "Failover time CDF: nicproxy (host lab) and Linux bonding (lab guest)".into(),
        x_label: "cut → first probe answered via the new path (ms)".into(),
        y_label: "fraction of cuts".into(),
        series: vec![cdf_series("nicproxy, host lab", &nq.failover)],
        markers: vec![super::model::Marker {
            x: TARGET_MEDIAN_MS,
            label: "median target".into(),
        }],
    };
    let mut figures;
    let mut raw = json!({ "nicproxy": lab });
    match bonding::measure(opts, progress) {
        Ok(m) => {
            notes.extend(bonding::notes_of(&m));
            let classic = m.run_of(CLASSIC_MIIMON);
            let classic_q = classic.map(Quantities::of);
            let classic_label = m.label(CLASSIC_MIIMON);
            let base = classic_q.as_ref().map(|q| (classic_label.as_str(), q));
            figures = with_targets(figures_of("nicproxy", &nq, base, &lab_note));
            match (classic, &classic_q) {
                (Some(run), Some(q)) => {
                    notes.push(format!(
                        "baseline miimon={CLASSIC_MIIMON}: {}",
                        bonding::classic_note(run)
                    ));
                    plot.series
                        .push(cdf_series(&m.label(CLASSIC_MIIMON), &q.failover));
                }
                _ => notes.push(format!(
                    "bonding miimon={CLASSIC_MIIMON} did not complete: {}",
                    bonding::error_of(&m.report, CLASSIC_MIIMON)
                )),
            }
            if let Some((low, run)) = m.lowest().and_then(|l| m.run_of(l).map(|r| (l, r))) {
                let q = Quantities::of(run);
                let label = m.label(low);
                let mut rows = with_targets(figures_of(
                    &format!("nicproxy vs miimon={low}"),
                    &nq,
                    Some((&label, &q)),
                    &lab_note,
                ));
                for f in &mut rows {
                    f.target = None;
                }
                figures.extend(rows);
                notes.push(format!(
                    "baseline miimon={low}: {}",
                    bonding::classic_note(run)
                ));
                plot.series.push(cdf_series(&label, &q.failover));
            } else {
                notes.push("no lowest working miimon was measured (see the trials)".into());
            }
            raw["bonding"] = m.report.clone();
            raw["bonding_guest_seconds"] = json!(m.seconds);
        }
        Err(e) => {
            progress.say(format_args!("bonding baseline failed: {e}"));
            notes.push(format!(
                "bonding baseline FAILED, rows have no baseline: {e}"
            ));
            figures = with_targets(figures_of("nicproxy", &nq, None, &lab_note));
        }
    }
    Ok(SuiteOutcome {
        figures,
        plots: vec![plot],
        notes,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lab report of three cuts; the second never failed over.
    fn report() -> Value {
        json!({
            "probe_interval_us": 1000,
            "per_cut": [
                { "failover_ms": 4.0, "fdb_move_ms": 6.0, "frames_lost": 5, "failback_ms": 2010.0 },
                { "failover_ms": null, "fdb_move_ms": null, "frames_lost": 900, "failback_ms": 2030.0 },
                { "failover_ms": 8.0, "fdb_move_ms": 9.0, "frames_lost": 7, "failback_ms": 2020.0 },
            ],
        })
    }

    #[test]
    fn quantities_come_from_every_cut() {
        let q = Quantities::of(&report());
        assert_eq!(q.cuts, 3);
        assert_eq!(q.failed_cuts, 1);
        assert_eq!(q.failover, vec![4.0, 8.0]);
        assert_eq!(q.failover_median, Some(4.0));
        assert_eq!(q.failover_p99, Some(8.0));
        assert_eq!(q.fdb_median, Some(6.0));
        // The cut that never failed over counts its losses too.
        assert_eq!(q.lost_median, Some(7.0));
        assert_eq!(q.lost_max, Some(900.0));
        assert_eq!(q.failback_median, Some(2020.0));
        assert_eq!(q.rate(), "1000 probes/s");
        let empty = Quantities::of(&json!({}));
        assert_eq!((empty.cuts, empty.failover_median), (0, None));
    }

    #[test]
    fn rows_pair_each_quantity_with_the_same_one_of_the_baseline() {
        let q = Quantities::of(&report());
        let mut b = q.clone();
        b.failover_median = Some(50.0);
        b.failback_median = None;
        let rows = with_targets(figures_of("nicproxy", &q, Some(("bonding", &b)), "n"));
        assert_eq!(rows.len(), 7);
        let median = &rows[0];
        assert!(
            median.name.starts_with("nicproxy: failover time") && median.name.ends_with("median")
        );
        assert_eq!(median.baseline.as_ref().map(|b| b.value), Some(50.0));
        assert_eq!(median.ratio(), Some(4.0 / 50.0));
        assert!(median.target.as_ref().is_some_and(|t| t.met));
        assert!(rows[1]
            .target
            .as_ref()
            .is_some_and(|t| t.met && t.text.contains("20")));
        assert!(rows[2].target.is_none());
        let failback = rows.last().expect("failback row");
        assert!(failback.name.contains("failback") && failback.baseline.is_none());
        // A quantity nobody measured is left out rather than reported as zero.
        let mut none = q.clone();
        none.fdb_median = None;
        none.fdb_p99 = None;
        assert_eq!(figures_of("x", &none, None, "").len(), 5);
    }

    #[test]
    fn cdf_is_a_nondecreasing_step_to_one() {
        let s = cdf_series("x", &[3.0, 1.0, 2.0]);
        assert_eq!(
            s.points,
            vec![
                (1.0, 0.0),
                (1.0, 1.0 / 3.0),
                (2.0, 1.0 / 3.0),
                (2.0, 2.0 / 3.0),
                (3.0, 2.0 / 3.0),
                (3.0, 1.0)
            ]
        );
        assert!(cdf_series("x", &[]).points.is_empty());
    }
}
