//! The benchmark harness end to end: `nicproxy bench --suite failover,bonding --quick`
//! runs the host lab (5 cuts) and the Linux bonding baseline in the lab guest (3 cuts at
//! miimon 100, 3 at miimon 1), and writes bench.json, bench.md and the plots;
//! `--suite polling --quick` runs a busy and an adaptive worker over af_packet ports in a
//! namespace and times frames through them.
//!
//! A smoke test of the harness, not of the figures: it checks that every expected figure
//! is there, finite and of the right sign, that nicproxy's rows carry the bonding baseline
//! measured in the same run, and that the plots were written; it asserts no timing (the
//! machine may be loaded). Needs root (the lab's namespaces) and the lab guest
//! (tests/lab/vm.sh --prepare, done by tests/setup.sh), as CI has. Takes 3–4 minutes
//! under TCG.

mod ops_lab;

use ops_lab::{nicproxy, output, texts, TempPath};
use serde_json::Value;

/// The quantities every side reports (see src/bench/failover.rs).
const QUANTITIES: [&str; 4] = [
    "failover time (cut → first probe answered via the new path), median",
    "failover time, p99",
    "FDB move (cut → bridge learns the MAC on the new port), median",
    "failback (restore → FDB back on the own port), median",
];

fn figures<'a>(suite: &'a Value, name: &str) -> &'a [Value] {
    assert!(
        suite["error"].is_null(),
        "suite {name} failed: {}",
        suite["error"]
    );
    suite["figures"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("suite {name} has no figures: {suite}"))
}

fn figure<'a>(figs: &'a [Value], name: &str) -> &'a Value {
    figs.iter().find(|f| f["name"] == name).unwrap_or_else(|| {
        let names: Vec<&str> = figs.iter().filter_map(|f| f["name"].as_str()).collect();
        panic!("no figure {name:?}; figures: {names:#?}")
    })
}

fn positive(f: &Value) -> f64 {
    let v = f["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("figure without a number: {f}"));
    assert!(v.is_finite() && v > 0.0, "not a positive figure: {f}");
    v
}

/// Runs `nicproxy bench --suite SUITES --quick --out OUT`, checks it succeeded, and
/// returns its bench.json.
fn bench_quick(suites: &str, out: &TempPath) -> Value {
    let o = output(nicproxy().args([
        "bench",
        "--suite",
        suites,
        "--quick",
        "--out",
        &out.path().display().to_string(),
    ]));
    let (stdout, stderr) = texts(&o);
    assert!(
        o.status.success(),
        "nicproxy bench failed ({}):\n{stdout}\n{stderr}",
        o.status
    );
    let text = std::fs::read_to_string(out.path().join("bench.json")).expect("bench.json");
    serde_json::from_str(&text).expect("bench.json parses")
}

#[test]
fn bench_failover_and_bonding_quick() {
    let out = TempPath::new("bench");
    let j = bench_quick("failover,bonding", &out);
    let suites = j["suites"].as_array().expect("suites");
    let by_name = |n: &str| {
        suites
            .iter()
            .find(|s| s["suite"] == n)
            .unwrap_or_else(|| panic!("no suite {n} in bench.json"))
    };
    let failover = figures(by_name("failover"), "failover");
    let bonding = figures(by_name("bonding"), "bonding");

    for q in QUANTITIES {
        // nicproxy's row, with bonding miimon=100 from the same run as its baseline.
        let f = figure(failover, &format!("nicproxy: {q}"));
        positive(f);
        let b = &f["baseline"];
        assert!(
            b["name"]
                .as_str()
                .is_some_and(|n| n.contains("bonding") && n.contains("miimon=100")),
            "the baseline is not bonding miimon=100: {f}"
        );
        let bv = b["value"].as_f64().expect("baseline value");
        assert!(bv.is_finite() && bv > 0.0, "bad baseline: {f}");
        // The bonding suite reports the same measurement under its own name.
        let same = figure(bonding, &format!("bonding miimon=100: {q}"));
        assert_eq!(
            positive(same),
            bv,
            "bonding suite and baseline differ: {same}"
        );
    }
    // Probes lost are counts: finite and not negative (a perfect failover loses none).
    let lost = failover
        .iter()
        .find(|f| {
            f["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("nicproxy: probes lost per failover at"))
        })
        .unwrap_or_else(|| panic!("no probes-lost figure in {failover:?}"));
    assert!(lost["value"]
        .as_f64()
        .is_some_and(|v| v.is_finite() && v >= 0.0));
    // The targets are attached to nicproxy's failover rows (met or not: that is
    // a figure, not a test result).
    let median = figure(failover, &format!("nicproxy: {}", QUANTITIES[0]));
    assert!(median["target"]["text"]
        .as_str()
        .is_some_and(|t| t.contains("10 ms")));

    for file in [
        "bench.md",
        "failover-cdf.svg",
        "failover-throughput.svg",
        "bonding-failover-cdf.svg",
        "failover-lab/report.json",
    ] {
        let p = out.path().join(file);
        let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(meta.len() > 0, "{} is empty", p.display());
    }
    let md = std::fs::read_to_string(out.path().join("bench.md")).expect("bench.md");
    assert!(md.contains("nicproxy: failover time") && md.contains("bonding miimon=100"));
}

#[test]
fn bench_polling_quick() {
    let out = TempPath::new("bench-polling");
    let j = bench_quick("polling", &out);
    let suite = j["suites"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["suite"] == "polling"))
        .unwrap_or_else(|| panic!("no polling suite in {j}"));
    let figs = figures(suite, "polling");
    for p in ["p50", "p99"] {
        let f = figure(
            figs,
            &format!("latency through an idle adaptive worker, {p}"),
        );
        positive(f);
        assert!(
            f["baseline"]["value"]
                .as_f64()
                .is_some_and(|v| v.is_finite() && v > 0.0),
            "no busy baseline: {f}"
        );
        let w = figure(
            figs,
            &format!("wake-up latency of an adaptive worker (adaptive − busy), {p}"),
        );
        assert!(w["value"].as_f64().is_some_and(f64::is_finite), "{w}");
    }
    // Every frame went through the worker, in both modes: the worker lost none.
    let raw = &suite["raw"];
    for mode in ["busy", "adaptive"] {
        assert_eq!(
            raw["lost"][mode], 0,
            "frames lost with a {mode} worker: {raw}"
        );
        let sent = raw["rounds"].as_u64().unwrap_or(0)
            * raw["frames_per_mode_and_round"].as_u64().unwrap_or(0);
        assert!(sent > 0, "{raw}");
        assert_eq!(raw[format!("{mode}_us")]["samples"], sent, "{raw}");
    }
    // The namespace is gone.
    let ns = output(std::process::Command::new("ip").args(["netns", "list"]));
    assert!(!texts(&ns).0.contains("npwk"), "namespace left behind");
}
