//! The steering suite: cost per frame in TSC cycles, against DPDK's rte_hash in the same run.
//!
//! For tables of 16, 1k, 4k and 64k MACs (domain 0: uplink NIC, kernel and eight client
//! sessions; one MAC in eight local, the rest proxied), 90% of frames to installed MACs, 10%
//! to unknown ones, one in 64 broadcast, bursts of 32, frames in random order (so that
//! consecutive frames rarely share a header and bulk steering's reuse of the previous
//! decision seldom applies: this is the cost of a full decision):
//! - `steer_bulk`: the whole decision (parse the Ethernet/VLAN header, look up the
//!   destination, apply the rules), what a worker does per frame;
//! - `lookup_bulk`: only our table's lookup of prepared keys;
//! - `rte_hash_lookup_bulk_data`: DPDK's hash lookup of the same keys (the baseline).
//!
//! Best of 7 timed passes after a warm-up (the machine is shared; the minimum is the figure
//! least disturbed by other tenants). DPDK allows one EAL per process, so the measurement
//! runs in a child process (this binary, `bench --suite steering`, with [`CHILD_ENV`] naming
//! the file for the raw results), like the forwarding suite.

use std::hint::black_box;

use dataplane::counters::DropReason;
use dataplane::dpdk::{tsc, RteHash, LOOKUP_BULK_MAX};
use dataplane::steer::bench_support::Workload;
use dataplane::steer::{mac_key, steer_bulk, Action, Decision, DomainId, Source};
use serde_json::{json, Value};

use super::model::{Better, Figure, Plot, Progress, Series, SuiteOutcome};
use super::BenchOpts;

/// Set in the child process: the file it writes its raw results to.
pub const CHILD_ENV: &str = "NICPROXY_BENCH_STEERING_OUT";

const SIZES: [usize; 4] = [16, 1024, 4096, 65536];
const FRAMES: usize = 1 << 14;
const BURST: usize = 32;
const TARGET_CYCLES: f64 = 20.0;

/// Runs the suite: in the child, measures; in the parent, starts the child and makes the
/// figures from what it measured.
pub fn run(opts: &BenchOpts, progress: &Progress) -> Result<SuiteOutcome, String> {
    match super::child::measure_in_child("steering", CHILD_ENV, opts, progress, measure)? {
        Some(raw) => outcome(&raw),
        None => Ok(SuiteOutcome::default()),
    }
}

/// Best cycles per item of `f` over `passes` timed runs after one warm-up.
fn cycles_per_item(items: usize, passes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..passes {
        let t0 = tsc();
        f();
        let dt = tsc().wrapping_sub(t0) as f64;
        best = best.min(dt / items as f64);
    }
    best
}

/// The child's half: cycles per frame for every size, as raw JSON.
fn measure(opts: &BenchOpts, progress: &Progress) -> Result<Value, String> {
    let (eal, _dirs) =
        super::child::small_eal(&format!("np-bench-steer-{}", std::process::id()), &[])?;
    let (rounds, passes) = if opts.quick { (20, 3) } else { (200, 7) };
    let load_before = crate::loadavg::all_three();
    let mut rows = Vec::new();
    for &n in &SIZES {
        let w = Workload::new(n, FRAMES, 42);
        let capacity = u32::try_from((n * 2).max(64)).map_err(|_| "table too large")?;
        let mut hash =
            RteHash::new(&eal, &format!("bench{n}"), capacity).map_err(|e| e.to_string())?;
        for (i, m) in w.macs.iter().enumerate() {
            hash.add(mac_key(DomainId(0), m.to_u64()), i + 1)
                .map_err(|e| e.to_string())?;
        }
        let items = FRAMES * rounds;
        let mut decisions = [Decision::Drop(DropReason::NoRoute); BURST];
        let steer = cycles_per_item(items, passes, || {
            for _ in 0..rounds {
                for chunk in w.frames.chunks(BURST) {
                    steer_bulk(&w.table, Source::Nic, chunk, &mut decisions[..chunk.len()]);
                    black_box(&decisions);
                }
            }
        });
        // The same decisions one call per frame, without bulk steering's reuse of the
        // previous decision: what the reuse check costs (or saves) on mixed traffic.
        let single = cycles_per_item(items, passes, || {
            for _ in 0..rounds {
                for chunk in w.frames.chunks(BURST) {
                    for (d, f) in decisions.iter_mut().zip(chunk) {
                        *d = dataplane::steer::steer(&w.table, Source::Nic, f);
                    }
                    black_box(&decisions);
                }
            }
        });
        let mut actions = [Action::Drop; BURST];
        let lookup = cycles_per_item(items, passes, || {
            for _ in 0..rounds {
                for chunk in w.keys.chunks(BURST) {
                    w.table.lookup_bulk(chunk, &mut actions[..chunk.len()]);
                    black_box(&actions);
                }
            }
        });
        let mut values = [0usize; LOOKUP_BULK_MAX];
        let rte = cycles_per_item(items, passes, || {
            for _ in 0..rounds {
                for chunk in w.keys.chunks(BURST) {
                    black_box(hash.lookup_bulk(chunk, &mut values[..chunk.len()]));
                }
            }
        });
        progress.say(format_args!(
            "{n} MACs: steer_bulk {steer:.1}, steer frame by frame {single:.1}, lookup_bulk {lookup:.1}, rte_hash {rte:.1} cycles per frame"
        ));
        rows.push(json!({
            "macs": n,
            "steer_bulk_cycles": steer,
            "steer_single_cycles": single,
            "lookup_bulk_cycles": lookup,
            "rte_hash_cycles": rte,
        }));
    }
    Ok(json!({
        "unit": "tsc_cycles_per_frame",
        "tsc_hz": eal.tsc_hz(),
        "frames": FRAMES,
        "rounds": rounds,
        "passes": passes,
        "rows": rows,
        "loadavg_before": load_before,
        "loadavg_after": crate::loadavg::all_three(),
    }))
}

/// The parent's half: figures from the raw results.
fn outcome(raw: &Value) -> Result<SuiteOutcome, String> {
    let rows = raw["rows"].as_array().ok_or("no rows in the results")?;
    let load = format!(
        "load average {} before, {} after",
        raw["loadavg_before"].as_str().unwrap_or("?"),
        raw["loadavg_after"].as_str().unwrap_or("?")
    );
    let mut figures = Vec::new();
    let mut series = [
        (
            "steer_bulk (full decision)",
            "steer_bulk_cycles",
            Vec::new(),
        ),
        (
            "lookup_bulk (lookup only)",
            "lookup_bulk_cycles",
            Vec::new(),
        ),
        ("rte_hash_lookup_bulk_data", "rte_hash_cycles", Vec::new()),
    ];
    for r in rows {
        let n = r["macs"].as_u64().unwrap_or(0);
        let get = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let (steer, lookup, rte) = (
            get("steer_bulk_cycles"),
            get("lookup_bulk_cycles"),
            get("rte_hash_cycles"),
        );
        for (_, key, points) in series.iter_mut() {
            points.push(((n as f64).log2(), get(key)));
        }
        figures.push(
            Figure::new(
                format!("steering, full decision per frame, {n} MACs"),
                steer,
                "cycles/frame",
                Better::Lower,
            )
            .baseline("rte_hash_lookup_bulk_data (lookup only)", rte)
            .target(
                format!("≤ {TARGET_CYCLES:.0} cycles/frame"),
                steer <= TARGET_CYCLES,
            )
            .note(format!(
                "parse + VLAN + lookup + rules, bursts of 32, frames in random order; best of {} passes; {load}",
                raw["passes"]
            )),
        );
        figures.push(
            Figure::new(
                format!("steering, table lookup alone, {n} MACs"),
                lookup,
                "cycles/frame",
                Better::Lower,
            )
            .baseline("rte_hash_lookup_bulk_data", rte)
            .note(format!("same keys as the baseline; {load}")),
        );
    }
    Ok(SuiteOutcome {
        figures,
        plots: vec![Plot {
            name: "steering-cycles".into(),
            title: "Steering cost per frame by table size".into(),
            x_label: "log2(MACs in the table)".into(),
            y_label: "TSC cycles per frame".into(),
            series: series
                .into_iter()
                .map(|(label, _, points)| Series {
                    label: label.into(),
                    points,
                })
                .collect(),
            markers: Vec::new(),
        }],
        notes: vec![format!(
            "TSC at {} Hz; {} frames x {} rounds per pass",
            raw["tsc_hz"], raw["frames"], raw["rounds"]
        )],
        raw: raw.clone(),
    })
}
