//! The lab's results: the summary table, the JSON object (the last line with `--json`, and
//! report.json), and the files of the output directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::analysis::{percentile, Check, CutResult};
use super::args::LabArgs;
use super::error::{LabError, Result};
use super::timeline::Timeline;

/// Everything the report is made of.
pub struct Inputs<'a> {
    /// Options of the run.
    pub args: &'a LabArgs,
    /// Node ids.
    pub nodes: Vec<String>,
    /// a's proxy order.
    pub proxies: &'a [String],
    /// Per cut.
    pub results: &'a [CutResult],
    /// Checks.
    pub checks: &'a [Check],
    /// The timeline.
    pub timeline: &'a Timeline,
    /// Where the files go.
    pub out_dir: &'a Path,
}

fn values(results: &[CutResult], f: impl Fn(&CutResult) -> Option<f64>) -> Vec<f64> {
    results.iter().filter_map(f).collect()
}

/// The JSON report. Keys: `failover_ms_median`, `failover_ms_p99` (cut → first probe
/// answered through the proxy, over the cuts), `frames_lost` (probes lost in all failovers
/// together), `frames_lost_max` (worst failover), `fdb_followed` (the FDB moved to the
/// proxy, to the next proxy when one was killed, and back to a's port after every restore
/// when failback is expected), `failback_ms` (median restore → FDB back on a's port,
/// including the hold-down; null with failback never), `ok` (every check passed), and the
/// details.
pub fn json(i: &Inputs<'_>) -> Value {
    let r = i.results;
    let failover = values(r, |c| c.failover_ms);
    let fdb = values(r, |c| c.fdb_move_ms);
    let failback = values(r, |c| c.failback_ms);
    let next = values(r, |c| c.next_failover_ms);
    let fdb_followed = !r.is_empty()
        && r.iter().all(|c| {
            c.fdb_move_ms.is_some()
                && (c.next_proxy.is_none() || c.next_fdb_move_ms.is_some())
                && match c.fdb_back {
                    Some(back) => back == (i.args.failback != super::args::FailbackArg::Never),
                    None => true,
                }
        });
    let t = &i.timeline.tcp;
    let ok = i.checks.iter().all(|c| c.ok) && !i.checks.is_empty();
    json!({
        "ok": ok,
        "scenario": i.args.scenario.name(),
        "nodes": i.nodes,
        "proxy_order": i.proxies,
        "fabric": i.args.fabric.name(),
        "failback_policy": i.args.failback.name(),
        "hold_down_ms": i.args.hold_down_ms,
        "probe_interval_us": i.args.probe_interval_us,
        "cuts": r.len(),
        "failover_ms_median": percentile(&failover, 50.0),
        "failover_ms_p99": percentile(&failover, 99.0),
        "failover_ms_max": percentile(&failover, 100.0),
        "fdb_move_ms_median": percentile(&fdb, 50.0),
        "fdb_move_ms_p99": percentile(&fdb, 99.0),
        "frames_lost": r.iter().map(|c| c.frames_lost).sum::<u64>(),
        "frames_lost_max": r.iter().map(|c| c.frames_lost).max(),
        "loss_budget": i.args.loss_budget,
        "fdb_followed": fdb_followed,
        "failback_ms": percentile(&failback, 50.0),
        "failback_ms_p99": percentile(&failback, 99.0),
        "failback_frames_lost": r.iter().map(|c| c.failback_frames_lost).sum::<u64>(),
        "next_proxy_failover_ms_median": percentile(&next, 50.0),
        "tcp": if i.args.tcp_mbps == 0 { Value::Null } else { json!({
            "mbps": i.args.tcp_mbps,
            "sent_bytes": t.sent_bytes,
            "received_bytes": t.eof_bytes,
            "closed_cleanly": t.closed_us.is_some(),
            "errors": t.errors,
        })},
        "tcp_survived": (i.args.tcp_mbps > 0).then(|| i.checks.iter()
            .filter(|c| c.name.contains("TCP"))
            .all(|c| c.ok)),
        "probes_sent": i.timeline.probes.iter().filter(|p| p.sent_us.is_some()).count(),
        "per_cut": r,
        "checks": i.checks,
        "out_dir": i.out_dir.display().to_string(),
    })
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.1}"))
}

/// The human summary.
pub fn table(i: &Inputs<'_>, j: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nresults: scenario {}, {} nodes, failback {}, hold-down {} ms, probes every {} us",
        i.args.scenario.name(),
        i.nodes.len(),
        i.args.failback.name(),
        i.args.hold_down_ms,
        i.args.probe_interval_us
    );
    let _ = writeln!(
        s,
        "{:>4} {:>6} {:>12} {:>10} {:>12} {:>6} {:>12} {:>12} {:>9} {:>8}",
        "cut",
        "proxy",
        "failover ms",
        "outage ms",
        "fdb move ms",
        "lost",
        "port fwd ms",
        "failback ms",
        "fdb back",
        "fb lost"
    );
    for c in i.results {
        let _ = writeln!(
            s,
            "{:>4} {:>6} {:>12} {:>10} {:>12} {:>6} {:>12} {:>12} {:>9} {:>8}",
            c.cut,
            c.proxy,
            cell(c.failover_ms),
            cell(c.outage_ms),
            cell(c.fdb_move_ms),
            c.frames_lost,
            cell(c.port_forwarding_ms),
            cell(c.failback_ms),
            c.fdb_back.map_or("-", |b| if b { "yes" } else { "NO" }),
            c.failback_frames_lost
        );
        if let Some(next) = &c.next_proxy {
            let _ = writeln!(
                s,
                "     {} killed: {next} took over after {} ms, FDB followed after {} ms, {} probes lost",
                c.proxy,
                cell(c.next_failover_ms),
                cell(c.next_fdb_move_ms),
                c.next_frames_lost.unwrap_or(0)
            );
        }
        if c.no_carrier_shown.is_some() {
            let _ = writeln!(
                s,
                "     no path: carrier off after {} ms (NO-CARRIER shown: {}); one path back: carrier after {} ms, traffic after {} ms",
                cell(c.carrier_lost_ms),
                c.no_carrier_shown.unwrap_or(false),
                cell(c.carrier_back_ms),
                cell(c.path_back_ms)
            );
        }
        if let Some(b) = &c.broadcast {
            let _ = writeln!(s, "     ARP: {}\n     ND:  {}", b.arp_detail, b.nd_detail);
        }
    }
    let f = |k: &str| cell(j.get(k).and_then(Value::as_f64));
    let _ = writeln!(
        s,
        "failover: median {} ms, p99 {} ms; FDB move: median {} ms; probes lost: {} in all, at most {} per failover (budget {})",
        f("failover_ms_median"),
        f("failover_ms_p99"),
        f("fdb_move_ms_median"),
        j["frames_lost"],
        j["frames_lost_max"],
        i.args.loss_budget
    );
    let _ = writeln!(
        s,
        "failback: median {} ms after the restore (hold-down {} ms included), {} probes lost in all; FDB followed: {}",
        f("failback_ms"),
        i.args.hold_down_ms,
        j["failback_frames_lost"],
        j["fdb_followed"]
    );
    let _ = writeln!(
        s,
        "(outage: longest gap between answered probes; port fwd: restore -> the switch port forwards again)"
    );
    let _ = writeln!(s, "checks:");
    for c in i.checks {
        let _ = writeln!(
            s,
            "  [{}] {}: {}",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    let _ = writeln!(
        s,
        "report: {}\nplot:   {}",
        i.out_dir.join("report.json").display(),
        i.out_dir.join("throughput.svg").display()
    );
    let _ = write!(
        s,
        "RESULT: {}",
        if j["ok"].as_bool() == Some(true) {
            "PASS"
        } else {
            "FAIL"
        }
    );
    s
}

/// Writes report.json, throughput.svg and the raw timeline (events.txt), and copies the
/// daemons' logs, into `dir`.
pub fn write_files(
    dir: &Path,
    j: &Value,
    svg: &str,
    t: &Timeline,
    logs: &[(String, PathBuf)],
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| LabError::io(format!("writing {}", p.display()), e))
    };
    write(
        "report.json",
        &serde_json::to_string_pretty(j).unwrap_or_else(|_| j.to_string()),
    )?;
    write("throughput.svg", svg)?;
    write("events.txt", &events_text(t))?;
    copy_logs(dir, logs);
    Ok(())
}

/// Copies the daemons' logs into `dir` (best effort: they matter most when something
/// failed, and a missing log must not hide that failure).
pub fn copy_logs(dir: &Path, logs: &[(String, PathBuf)]) {
    let _ = std::fs::create_dir_all(dir);
    for (id, path) in logs {
        let _ = std::fs::copy(path, dir.join(format!("daemon-{id}.log")));
    }
}

/// The raw timeline as text, one event per line in the agents' format (see
/// [`super::timeline`]), probes merged into `probe <seq> <sent_us> <recv_us|->`, and the
/// lab's actions as `mark <us> <label>`: for plotting or checking a run by other means.
pub fn events_text(t: &Timeline) -> String {
    let mut s = String::with_capacity(t.probes.len() * 40);
    for m in &t.marks {
        let _ = writeln!(s, "mark {} {}", m.t_us, m.label);
    }
    for f in &t.fdb {
        let _ = writeln!(
            s,
            "f {} {} {}",
            f.t_us,
            f.mac,
            f.port.as_deref().unwrap_or("-")
        );
    }
    for (at, v) in &t.carrier {
        let _ = writeln!(
            s,
            "c {at} {}",
            match v {
                Some(true) => "1",
                Some(false) => "0",
                None => "-",
            }
        );
    }
    for (at, port, up) in &t.links {
        let _ = writeln!(s, "l {at} {port} {}", u8::from(*up));
    }
    for (at, port, state) in &t.port_states {
        let _ = writeln!(s, "s {at} {port} {state}");
    }
    for (at, b) in &t.tcp_bins {
        let _ = writeln!(s, "b {at} {b}");
    }
    for (seq, p) in t.probes.iter().enumerate() {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |x| x.to_string());
        let _ = writeln!(s, "probe {seq} {} {}", opt(p.sent_us), opt(p.recv_us));
    }
    s
}
