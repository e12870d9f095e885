//! The bonding suite: Linux bonding active-backup under the failover suite's traffic and
//! cut, in the lab guest (this host's kernel has no bonding module), with `miimon` 100 and
//! with the lowest `miimon` that works (1, 2, 5, 10 are tried in that order).
//!
//! The guest runs `nicproxy lab-agent bonding` (src/lab/bonding.rs), which builds the
//! lab's switch, station and agents around a bond and measures with the lab's own analysis,
//! so its figures mean what the failover suite's mean. The guest is booted once per
//! `nicproxy bench` run: the failover suite measures the baseline for its rows, and this
//! suite reuses that measurement when it ran before it in the same run (or measures
//! it itself when run alone).
//!
//! The guest's CPU is emulated (TCG) where KVM cannot run a stock kernel, as here: the
//! bond's own timing is kernel timers and carrier, not CPU speed, but the probes' echo and
//! the agents are slower there than on the host; the report says which accelerator ran.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use super::failover::{cdf_series, figures_of, Quantities};
use super::model::{Plot, Progress, SuiteOutcome};
use super::BenchOpts;

/// `miimon` of the classic configuration (bonding.rst's examples, most distributions).
pub const CLASSIC_MIIMON: u32 = 100;
/// Candidates for the lowest `miimon` that works, in the order they are tried.
const LOWEST_OF: &str = "1,2,5,10";
/// Most cuts per `miimon` when the guest runs under TCG (see `measure_in_guest`).
const TCG_CUTS: u32 = 20;

/// Whether vm.sh will use KVM: the same test as its own (a PVM-only /dev/kvm cannot run
/// a stock kernel).
fn kvm_usable() -> bool {
    let p = |s: &str| std::path::Path::new(s).exists();
    p("/dev/kvm") && (p("/sys/module/kvm_intel") || p("/sys/module/kvm_amd"))
}

/// One guest run: the JSON of `nicproxy lab-agent bonding` and how it went.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The guest's report.
    pub report: Value,
    /// Cuts per measured `miimon`.
    pub cuts: u32,
    /// Host wall time of the guest run, boot included.
    pub seconds: f64,
    /// The accelerator and the guest's timing line, from vm.sh.
    pub vm_lines: Vec<String>,
}

impl Measurement {
    /// The run of this `miimon` (role "run"), if it completed.
    pub fn run_of(&self, miimon: u32) -> Option<&Value> {
        self.report["runs"].as_array()?.iter().find(|r| {
            r["miimon"].as_u64() == Some(u64::from(miimon))
                && r["role"] == "run"
                && r.get("error").is_none()
        })
    }

    /// The lowest `miimon` that worked in the trials.
    pub fn lowest(&self) -> Option<u32> {
        self.report["lowest_miimon"]
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
    }

    /// Baseline label, e.g. "Linux bonding active-backup miimon=100 (guest, TCG)".
    pub fn label(&self, miimon: u32) -> String {
        format!("Linux bonding active-backup miimon={miimon} (guest)")
    }
}

/// The measurement of this `nicproxy bench` run, shared by the failover and bonding suites
/// so that the guest boots once; keyed by the cut count and --quick.
static LAST: Mutex<Option<(u32, bool, Arc<Measurement>)>> = Mutex::new(None);

/// tests/lab/vm.sh of the checkout this binary was built from.
fn vm_sh() -> Result<PathBuf, String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lab/vm.sh");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: the bonding baseline boots the lab guest from the checkout nicproxy was built in",
            p.display()
        ))
    }
}

/// Measures bonding in the guest, or returns this bench run's earlier measurement.
pub fn measure(opts: &BenchOpts, progress: &Progress) -> Result<Arc<Measurement>, String> {
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((cuts, quick, m)) = last.as_ref() {
        if *cuts == opts.cuts && *quick == opts.quick {
            progress.say("bonding: reusing this bench run's guest measurement");
            return Ok(m.clone());
        }
    }
    let m = Arc::new(measure_in_guest(opts, progress)?);
    *last = Some((opts.cuts, opts.quick, m.clone()));
    Ok(m)
}

fn measure_in_guest(opts: &BenchOpts, progress: &Progress) -> Result<Measurement, String> {
    let vm = vm_sh()?;
    let exe =
        std::env::current_exe().map_err(|e| format!("finding the nicproxy executable: {e}"))?;
    // --quick: a smoke run of the whole path (3 cuts, only miimon 1 tried as the lowest).
    // Under TCG a cut and restore took 4 s on a quiet host and 21 s at load 28 (a 50-cut
    // miimon=100 run alone took 17 min there), so the guest makes at most TCG_CUTS cuts.
    let tcg = !kvm_usable();
    let (cuts, trial_cuts, lowest_of) = if opts.quick {
        (opts.cuts.min(3), opts.cuts.min(3), "1")
    } else if tcg {
        (opts.cuts.min(TCG_CUTS), 5, LOWEST_OF)
    } else {
        (opts.cuts, 5, LOWEST_OF)
    };
    if cuts < opts.cuts && !opts.quick {
        progress.say(format_args!(
            "bonding: {cuts} cuts per miimon instead of {} (the guest's CPU is emulated: TCG)",
            opts.cuts
        ));
    }
    let total_cuts = u64::from(cuts) * 2 + u64::from(trial_cuts) * 4;
    // A cut and restore takes ~3.5 s; TCG can be several times slower under load.
    let timeout = 240 + total_cuts * 20;
    let args: Vec<String> = vec![
        "--no-rdma".into(),
        "--timeout".into(),
        timeout.to_string(),
        "--".into(),
        exe.display().to_string(),
        "lab-agent".into(),
        "bonding".into(),
        "--miimon".into(),
        CLASSIC_MIIMON.to_string(),
        "--lowest-of".into(),
        lowest_of.into(),
        "--cuts".into(),
        cuts.to_string(),
        "--trial-cuts".into(),
        trial_cuts.to_string(),
    ];
    progress.say(format_args!(
        "bonding: booting the lab guest: {} {}",
        vm.display(),
        args.join(" ")
    ));
    let t0 = Instant::now();
    let mut child = Command::new(&vm)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", vm.display()))?;
    let stdout = child.stdout.take();
    let out_reader = std::thread::spawn(move || {
        let mut all = String::new();
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
            }
        }
        all
    });
    // Progress from the guest's stderr; the rest is kept for an error message.
    let mut tail: Vec<String> = Vec::new();
    let mut vm_lines = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.starts_with("bonding ") {
                progress.say(&line);
            }
            if line.contains("vm.sh: kernel") || line.contains("vm.sh: timing") {
                progress.say(&line);
                vm_lines.push(line.clone());
            }
            tail.push(line);
            if tail.len() > 60 {
                tail.remove(0);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", vm.display()))?;
    let stdout = out_reader.join().unwrap_or_default();
    let seconds = t0.elapsed().as_secs_f64();
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = lines
        .iter()
        .rev()
        .find(|j| j.get("runs").is_some())
        .cloned();
    let partial: Vec<Value> = lines
        .iter()
        .filter_map(|j| j.get("bonding_run").cloned())
        .collect();
    let report: Value = match (status.code(), summary) {
        (Some(0), Some(j)) => j,
        // The guest ended early (e.g. its timeout) after some runs: keep those.
        (code, _) if !partial.is_empty() => {
            progress.say(format_args!(
                "bonding: the guest ended early (vm.sh exit {code:?}); keeping its {} finished run(s)",
                partial.len()
            ));
            let (runs, trials): (Vec<Value>, Vec<Value>) =
                partial.into_iter().partition(|r| r["role"] == "run");
            json!({
                "incomplete": format!("vm.sh exit {code:?} after {seconds:.0} s"),
                "runs": runs,
                "trials": trials,
                "lowest_miimon": trials.iter().find(|t| t["works"] == true).map(|t| t["miimon"].clone()),
                "lowest_of": lowest_of,
            })
        }
        (code, _) => {
            let why = match code {
                Some(124) => "the lab guest timed out",
                Some(125) => "the lab guest did not boot or its setup failed",
                Some(126) => {
                    "the host lacks what the lab guest needs (run tests/lab/vm.sh --prepare)"
                }
                _ => "the bonding baseline failed in the lab guest",
            };
            return Err(format!(
                "{why} (vm.sh exit {status}) after {seconds:.0} s; last lines:\n{}",
                tail.join("\n")
            ));
        }
    };
    progress.say(format_args!("bonding: guest run done in {seconds:.0} s"));
    Ok(Measurement {
        report,
        cuts,
        seconds,
        vm_lines,
    })
}

/// Runs the bonding suite: bonding alone, `miimon` 100 against the lowest that works.
pub fn run(opts: &BenchOpts, progress: &Progress) -> Result<SuiteOutcome, String> {
    let m = measure(opts, progress)?;
    let classic = m.run_of(CLASSIC_MIIMON).ok_or_else(|| {
        format!(
            "bonding miimon={CLASSIC_MIIMON} did not complete in the guest: {}",
            error_of(&m.report, CLASSIC_MIIMON)
        )
    })?;
    let classic_q = Quantities::of(classic);
    let mut figures = figures_of(
        &format!("bonding miimon={CLASSIC_MIIMON}"),
        &classic_q,
        None,
        &classic_note(classic),
    );
    let mut plot = Plot {
        name: "bonding-failover-cdf".into(),
        title: "Linux bonding active-backup: failover time CDF (lab guest)".into(),
        x_label: "cut → first probe answered through the backup slave (ms)".into(),
        y_label: "fraction of cuts".into(),
        series: vec![cdf_series(&m.label(CLASSIC_MIIMON), &classic_q.failover)],
        markers: Vec::new(),
    };
    let mut notes = notes_of(&m);
    match m.lowest().and_then(|l| m.run_of(l).map(|r| (l, r))) {
        Some((low, run)) => {
            let q = Quantities::of(run);
            figures.extend(figures_of(
                &format!("bonding miimon={low}"),
                &q,
                Some((&m.label(CLASSIC_MIIMON), &classic_q)),
                &classic_note(run),
            ));
            plot.series.push(cdf_series(&m.label(low), &q.failover));
        }
        None => notes.push(format!(
            "no lowest miimon: none of {} worked, or its full run failed",
            m.report["lowest_of"]
        )),
    }
    Ok(SuiteOutcome {
        figures,
        plots: vec![plot],
        notes,
        raw: json!({ "bonding": m.report, "guest_seconds": m.seconds }),
    })
}

/// The error of a run that failed, or a placeholder.
pub fn error_of(report: &Value, miimon: u32) -> String {
    report["runs"]
        .as_array()
        .and_then(|runs| {
            runs.iter()
                .find(|r| r["miimon"].as_u64() == Some(u64::from(miimon)))
        })
        .and_then(|r| r["error"].as_str())
        .unwrap_or("no report for it")
        .to_string()
}

/// How one bonding run was set up and went, in one line.
pub fn classic_note(run: &Value) -> String {
    let b = &run["bond"];
    format!(
        "{} cuts in the lab guest (load {}), miimon {} ms, updelay {} ms, num_grat_arp {} every {} ms, fail_over_mac {}; works: {}",
        run["cuts"],
        run["load_before"],
        b["miimon_ms"].as_str().unwrap_or("?"),
        b["updelay_ms"].as_str().unwrap_or("?"),
        b["num_grat_arp"].as_str().unwrap_or("?"),
        b["peer_notif_delay_ms"].as_str().unwrap_or("?"),
        b["fail_over_mac"].as_str().unwrap_or("?"),
        run["works"]
    )
}

/// The guest run's context: kernel, tick, accelerator, what "works" meant, the trials.
pub fn notes_of(m: &Measurement) -> Vec<String> {
    let r = &m.report;
    let mut notes = vec![
        format!(
            "station probe send gaps in the guest (1 ms when the guest keeps up; longer gaps are emulated-CPU stalls that delay what the probes can see): {}",
            r["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|run| format!(
                    "miimon={}: p99 {} ms, max {} ms",
                    run["miimon"], run["probe_send_gap_ms_p99"], run["probe_send_gap_ms_max"]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        format!(
            "bonding ran in the lab guest, {} cuts per measured miimon: kernel {}, CONFIG_HZ={} (miimon is rounded up to whole ticks: {} ms), {:.0} s of guest run boot included",
            m.cuts,
            r["kernel"].as_str().unwrap_or("?"),
            r["kernel_hz"],
            r["kernel_hz"].as_u64().map_or("?".to_string(), |hz| format!("{:.0}", 1000.0 / hz as f64)),
            m.seconds
        ),
        format!("lowest miimon: the first of {} that works, where works means: {}", r["lowest_of"], r["works_means"].as_str().unwrap_or("?")),
    ];
    notes.extend(m.vm_lines.iter().cloned());
    for t in r["trials"].as_array().into_iter().flatten() {
        notes.push(format!(
            "trial miimon={}: works {}, {} cuts, failover median {} ms, p99 {} ms{}",
            t["miimon"],
            t["works"],
            t["cuts"],
            t["failover_ms_median"],
            t["failover_ms_p99"],
            t["error"]
                .as_str()
                .map_or(String::new(), |e| format!(", error: {e}"))
        ));
    }
    notes
}
