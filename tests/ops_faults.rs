//! The fault-injection suite, end to end: `nicproxy lab --scenario faults` builds a lab of
//! three nodes with traffic, flaps a's NIC 1,000 times at random 1–50 ms intervals, kills
//! and restarts the active proxy, takes a proxy's fabric link and address away, restarts
//! a failed-over owner, kills every proxy at once (with a's NIC cut, then also with it
//! restored while no proxy is left), sends SIGHUP with broken configs, and
//! sends hostile frames and datagrams; after each it checks the daemons, their state, the
//! switch's FDB, the probes lost against the failover budget, the mempool and the fds. The
//! test asserts every row of the table it prints.
//!
//! Needs root, like every lab test. Takes about two minutes, most of it the flaps.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// The report directory, removed when the test ends.
struct OutDir(PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_fault_is_survived_within_budget() {
    let out =
        OutDir(std::env::temp_dir().join(format!("nicproxy-faultstest-{}", std::process::id())));
    let t0 = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_nicproxy"))
        .args(["lab", "--scenario", "faults", "--json", "--flaps", "1000"])
        // As in tests/lab_udp.rs: the bridge may take a restored port into forwarding only
        // ~1.1 s after it came up, and the daemon fails back after the hold-down.
        .args(["--hold-down-ms", "1500", "--dwell-ms", "300"])
        .arg("--out")
        .arg(&out.0)
        .output()
        .expect("running nicproxy lab --scenario faults");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!(
        "lab --scenario faults: {} in {:.1} s",
        run.status,
        t0.elapsed().as_secs_f64()
    );
    // The table and the summary, without the live state lines.
    let summary: String = stdout
        .lines()
        .filter(|l| !l.trim_start().starts_with('['))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{summary}");
    let json: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON last line ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
                run.status
            )
        });
    assert!(
        json.get("error").is_none(),
        "the suite could not run: {}\nstderr:\n{stderr}",
        json["error"]
    );
    assert!(json["seed"].is_u64(), "the seed is reported: {json}");
    let rows = json["rows"].as_array().expect("rows");
    let faults: Vec<&str> = rows.iter().filter_map(|r| r["fault"].as_str()).collect();
    for wanted in [
        "NIC flaps",
        "SIGKILL of the active proxy",
        "restart of the killed proxy",
        "fabric link down and up",
        "fabric address removed",
        "failed-over owner",
        "every proxy down at once",
        "NIC cut and restored while every proxy",
        "SIGHUP with a broken config",
        "garbage frames from the station",
        "oversize frames",
        "runt frames",
        "garbage datagrams to b's fabric data port",
        "garbage datagrams to b's control port",
        "unauthenticated control messages",
        "replayed control messages",
        "unknown peer",
        "MAC as source",
        "end of the suite",
    ] {
        assert!(
            faults.iter().any(|f| f.contains(wanted)),
            "no row for {wanted:?}: {faults:?}"
        );
    }
    let flaps = rows
        .iter()
        .find(|r| r["fault"].as_str().is_some_and(|f| f.contains("NIC flaps")))
        .expect("flap row");
    assert_eq!(flaps["times"], 1000, "1,000 flaps were made");
    let mut failed = Vec::new();
    for r in rows {
        let name = r["fault"].as_str().unwrap_or("?");
        if r["survived"] != true {
            failed.push(format!("{name}: did not survive"));
        }
        let (lost, budget) = (r["frames_lost"].as_u64(), r["budget"].as_u64());
        if !matches!((lost, budget), (Some(l), Some(b)) if l <= b) {
            failed.push(format!("{name}: {lost:?} frames lost, budget {budget:?}"));
        }
        for c in r["checks"].as_array().into_iter().flatten() {
            if c["ok"] != true {
                failed.push(format!("{name}: {}: {}", c["what"], c["detail"]));
            }
        }
    }
    if !failed.is_empty() {
        print_daemon_events(&out.0);
    }
    assert!(
        failed.is_empty(),
        "{} failure(s):\n{}\n(seed {}, load {})",
        failed.len(),
        failed.join("\n"),
        json["seed"],
        json["load_average"]
    );
    assert_eq!(json["tcp_survived"], true, "TCP: {}", json["tcp"]);
    assert!(
        json["ok"] == true,
        "the suite reports a failure the rows do not show: {json}"
    );
    assert!(run.status.success(), "exit status {}", run.status);
    eprintln!("timing margins: {}", json["margins"]);
}

/// The daemons' path changes, session losses and upstream verdicts from the report's copy
/// of their logs, for a failure message (the report directory is removed afterwards).
fn print_daemon_events(dir: &std::path::Path) {
    for node in ["a", "b", "c"] {
        let text =
            std::fs::read_to_string(dir.join(format!("daemon-{node}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                [
                    "path changed",
                    "no heartbeat",
                    "upstream",
                    "not usable",
                    "restarted",
                    "ERROR",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect();
        eprintln!("--- daemon {node}: {} events, the last 60 ---", lines.len());
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("{l}");
        }
    }
}
