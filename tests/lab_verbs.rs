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

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::lab::{is_root, num, OutDir};

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
    eprintln!(
        "lab --fabric verbs: {} in {:.1} s (guest boot included)",
        run.status,
        t0.elapsed().as_secs_f64()
    );
    let j = common::lab::result(&run, &out.0);
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
