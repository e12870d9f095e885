//! End to end: `nicproxy lab --fabric verbs`, the lab's cut-nic scenario over RC queue
//! pairs (issue 5's scenario 5). The host has no RDMA, so the lab boots the Soft-RoCE
//! guest (tests/lab/vm.sh) and runs itself there: three nodes, each daemon with its own
//! rxe device, the station's probes and TCP transfer to a, one cut of a's NIC and its
//! restore. The test asserts on the JSON object the lab prints last, as tests/lab_udp.rs
//! does for the UDP fabric: a failed over and back, the switch's FDB followed, the probe
//! loss stayed within the budget, and a's frames crossed the fabric over RC.
//!
//! Needs root (the guest, and the lab inside it). The guest's CPU is emulated, so the
//! failover figures are the guest's, not the host's; the test asserts on what happened,
//! not on how fast. One run takes about two minutes here.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// The report directory, removed when the test ends (passed or not).
struct OutDir(PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn num(j: &Value, key: &str) -> f64 {
    j[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number: {}", j[key]))
}

#[test]
fn lab_cut_nic_over_verbs_in_soft_roce_guest() {
    if !is_root() {
        eprintln!("skipped: the lab guest needs root");
        return;
    }
    let out =
        OutDir(std::env::temp_dir().join(format!("nicproxy-labverbs-{}", std::process::id())));
    let t0 = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_nicproxy"))
        .args([
            "lab",
            "--fabric",
            "verbs",
            "--json",
            "--cuts",
            "1",
            "--dwell-ms",
            "500",
            "--hold-down-ms",
            "1500",
            "--out",
        ])
        .arg(&out.0)
        .env(
            "NICPROXY_VM_SH",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lab/vm.sh"),
        )
        .output()
        .expect("running nicproxy lab --fabric verbs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!(
        "lab --fabric verbs: {} in {:.1} s (guest boot included)",
        run.status,
        t0.elapsed().as_secs_f64()
    );
    let j = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "the lab printed no JSON last line ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
                run.status
            )
        });
    // The summary without the live state lines explains a failed assertion; the daemons'
    // logs (written to the shared report directory by the guest) explain the summary.
    let live =
        |l: &&str| l.starts_with("  [") && !l.starts_with("  [ ok ]") && !l.starts_with("  [FAIL]");
    eprintln!(
        "{}",
        stdout
            .lines()
            .filter(|l| !live(l))
            .collect::<Vec<_>>()
            .join("\n")
    );
    if j["ok"] != Value::Bool(true) {
        eprintln!("stderr (guest console, vm.sh):\n{stderr}");
        for node in ["a", "b", "c"] {
            let log = std::fs::read_to_string(out.0.join(format!("daemon-{node}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- daemon {node} (last lines) ---\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
    assert!(
        j.get("error").is_none(),
        "the lab could not run: {}\nstderr:\n{stderr}",
        j["error"]
    );
    assert_eq!(j["fabric"], "verbs");
    assert!(
        out.0.join("report.json").is_file() && out.0.join("throughput.svg").is_file(),
        "the guest's report files did not reach the host's {}",
        out.0.display()
    );

    let cut = &j["per_cut"][0];
    assert_eq!(
        cut["proxy"], j["proxy_order"][0],
        "a fails over to its first proxy"
    );
    let failover = num(&j, "failover_ms_median");
    assert!(failover >= 0.0, "a failed over: {failover} ms");
    assert!(
        num(&j, "frames_lost") <= num(&j, "loss_budget"),
        "probe loss {} over the budget {}",
        j["frames_lost"],
        j["loss_budget"]
    );
    assert_eq!(
        j["fdb_followed"], true,
        "the FDB moves to the proxy's port and back"
    );
    assert!(num(&j, "failback_ms") > 0.0, "a fails back");

    // The proof that the session ran over verbs: a's worker moved data frames over its
    // RC queue pairs (control messages travel beside them and are not counted), and the
    // QPs to every peer were up at the end.
    let v = &j["verbs"];
    assert!(
        v["a_rc_frames"].as_u64().unwrap_or(0) > 0,
        "no frame crossed a's RC queue pairs: {v}"
    );
    let a = &v["nodes"]["a"];
    assert!(
        a["fabric_tx_packets"].as_u64().unwrap_or(0) > 0
            && a["fabric_rx_packets"].as_u64().unwrap_or(0) > 0,
        "a sent and received over RC while proxied: {a}"
    );
    assert_eq!(
        a["qps_up"].as_u64(),
        Some(2),
        "a's QPs to b and c are up: {a}"
    );
    let proxy = cut["proxy"].as_str().unwrap_or("b");
    assert!(
        v["nodes"][proxy]["fabric_tx_packets"].as_u64().unwrap_or(0) > 0,
        "the proxy {proxy} sent a's frames back over RC: {v}"
    );
    println!(
        "verbs lab: failover {} ms, FDB move {} ms, {} probes lost (budget {}), failback {} ms, TCP survived {}, a's RC frames {}, guest {} s, host load {}",
        j["failover_ms_median"],
        j["fdb_move_ms_median"],
        j["frames_lost"],
        j["loss_budget"],
        j["failback_ms"],
        j["tcp_survived"],
        v["a_rc_frames"],
        j["guest"]["wall_s"],
        j["guest"]["load_avg"]
    );
}
