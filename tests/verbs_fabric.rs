//! The verbs fabric as the workers use it (`dataplane::fabric::verbs` behind
//! `FabricIo::Verbs`: the packet pool registered, receives into mbufs, zero-copy and
//! inline sends, selective signalling, the receive ring reposted), over real RC queue pairs
//! on Soft-RoCE. The host has no RDMA, so this boots the lab guest (tests/lab/vm.sh) and
//! runs the binary's hidden `bench-guest` modes there:
//!
//! - `exchange`: 1,000,000 frames of 60..1514 bytes each way between rxe_a and rxe_b,
//!   every byte checked, in order, none lost, at a pace set by a window of frames in flight
//!   (`NICPROXY_VERBS_FRAMES` overrides the count for a quick run);
//! - `failover`: a checked exchange with a peer process, which is then SIGKILLed under
//!   traffic: the fabric itself must report the session down (the worker's failed
//!   completion or rdma_cm's disconnect; the time is printed, not asserted: the daemon's
//!   heartbeats are what bound it, and `tests/verbs_failover.rs` covers those); a node that
//!   is not the expected peer is turned away with rdma_reject before any QP exists; the
//!   peer, started again, reconnects and a second checked exchange passes.

mod common_vm;

use std::time::Duration;

use serde_json::Value;

const NICPROXY: &str = env!("CARGO_BIN_EXE_nicproxy");
const TAG: &str = "NICPROXY-BENCH-GUEST ";
const FRAMES_ENV: &str = "NICPROXY_VERBS_FRAMES";

fn results(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| l.find(TAG).map(|i| &l[i + TAG.len()..]))
        .map(|j| {
            serde_json::from_str(j.trim()).unwrap_or_else(|e| panic!("bad result line ({e}): {j}"))
        })
        .collect()
}

#[test]
fn verbs_fabric_in_soft_roce_guest() {
    let frames: u64 = std::env::var(FRAMES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let script = format!(
        "{NICPROXY} bench-guest exchange --frames {frames} --limit-s 1200 && \
         {NICPROXY} bench-guest failover --frames 20000"
    );
    let run = common_vm::run_in_guest(
        &["bash".to_owned(), "-c".to_owned(), script],
        Duration::from_secs(1700),
    );
    let found = results(&run.stdout);
    if let Some(err) = found.iter().find_map(|v| v["error"].as_str()) {
        panic!("in the guest: {err}\n{}", run.transcript());
    }
    run.assert_success();
    let [ex, fo] = found.as_slice() else {
        panic!("expected two results from the guest\n{}", run.transcript());
    };

    // The exchange: everything arrived, checked and in order (the guest side fails on any
    // difference), nothing was dropped, and the worker's send paths were all used.
    for side in ["a", "b"] {
        assert_eq!(ex[side]["sent"].as_u64(), Some(frames), "{ex:#}");
        assert_eq!(ex[side]["received"].as_u64(), Some(frames), "{ex:#}");
        let c = &ex[&format!("counters_{side}")];
        let (inline, gather, signalled) = (
            c["inline"].as_u64().unwrap_or(0),
            c["gather"].as_u64().unwrap_or(0),
            c["signalled"].as_u64().unwrap_or(u64::MAX),
        );
        assert!(inline > 0 && gather > 0, "inline and zero-copy sends: {c}");
        assert!(
            signalled < (inline + gather) / 2,
            "selective signalling: {signalled} of {} sends signalled",
            inline + gather
        );
        assert_eq!(c["errors"].as_u64(), Some(0), "{c}");
    }
    assert_eq!(ex["drops"]["a"].as_u64(), Some(0), "{ex:#}");
    assert_eq!(ex["drops"]["b"].as_u64(), Some(0), "{ex:#}");

    // The kill: seen down (the guest side fails if not within 30 s), the intruder
    // refused, the peer back.
    assert!(fo["down_after_ms"].as_f64().is_some(), "{fo:#}");
    let refused = fo["intruder_refused"].as_str().unwrap_or("");
    assert!(refused.contains("not the expected peer"), "{fo:#}");
    let said = fo["intruder_said"].as_str().unwrap_or("");
    assert!(
        said.contains("rejected by the peer application") && said.contains("intruder"),
        "the refused node hears why: {said}"
    );
    assert_eq!(fo["sessions_added"].as_u64(), Some(2), "{fo:#}");
    assert_eq!(fo["sessions_removed"].as_u64(), Some(1), "{fo:#}");

    println!(
        "RESULT verbs fabric exchange: {frames} frames of {} each way, every byte checked, none lost, window {}: \
         {:.1} s guest wall ({:.0} frames/s per direction A<-B, {:.0} B<-A); sends A: {} inline, {} zero-copy, {} signalled",
        ex["sizes"].as_str().unwrap_or("?"),
        ex["window"],
        ex["wall_s"].as_f64().unwrap_or(0.0),
        ex["a"]["fps_in"].as_f64().unwrap_or(0.0),
        ex["b"]["fps_in"].as_f64().unwrap_or(0.0),
        ex["counters_a"]["inline"],
        ex["counters_a"]["gather"],
        ex["counters_a"]["signalled"],
    );
    println!(
        "RESULT verbs fabric failover: peer SIGKILLed under traffic, session down after {:.1} ms ({}); \
         intruder refused ({}); peer back: reconnected in {:.0} ms, second exchange of {} frames each way in {:.1} s",
        fo["down_after_ms"].as_f64().unwrap_or(f64::NAN),
        fo["down_reason"].as_str().unwrap_or("?"),
        refused,
        fo["reconnect_ms"].as_f64().unwrap_or(f64::NAN),
        fo["frames_each_way"],
        fo["second_exchange_s"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "guest run, boot included: {:.1} s host wall time",
        run.wall.as_secs_f64()
    );
}
