//! Steering cost per frame, in TSC cycles, against DPDK's rte_hash in the same run.
//!
//! For tables of 16, 1k, 4k and 64k MACs, 90% of frames to known MACs, bursts of 32:
//! - `steer_bulk`: the whole decision (parse the Ethernet/VLAN header, look up the
//!   destination, apply the rules), what a worker does per frame;
//! - `lookup_bulk`: only our table's lookup of prepared keys;
//! - `rte_hash_lookup_bulk_data`: DPDK's hash lookup of the same keys (the baseline).
//!
//! Run: `cargo bench --bench steering` (needs root only for nothing; EAL runs without
//! hugepages). Prints a table and, last, one JSON line.

use std::hint::black_box;

use dataplane::dpdk::{tsc, Eal, RteHash, LOOKUP_BULK_MAX};
use dataplane::steer::bench_support::Workload;
use dataplane::steer::{mac_key, steer_bulk, Action, Decision, DomainId, Source};

const FRAMES: usize = 1 << 14;
const ROUNDS: usize = 200;
const BURST: usize = 32;

fn cycles_per_item(items: usize, mut f: impl FnMut()) -> f64 {
    // Warm up, then take the best of several runs: the machine is shared and noisy, and
    // the minimum is the figure least disturbed by other tenants.
    f();
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t0 = tsc();
        f();
        let dt = tsc().wrapping_sub(t0) as f64;
        best = best.min(dt / items as f64);
    }
    best
}

fn main() {
    let eal = Eal::init(&[
        "--no-pci",
        "--no-huge",
        "-m",
        "256",
        "--no-shconf",
        "--log-level=*:error",
        &format!("--file-prefix=np-bench-{}", std::process::id()),
    ])
    .expect("EAL init");
    let mut rows = Vec::new();
    println!(
        "{:>7} {:>12} {:>12} {:>12} {:>8}",
        "MACs", "steer_bulk", "lookup_bulk", "rte_hash", "ratio"
    );
    for &n in &[16usize, 1024, 4096, 65536] {
        let w = Workload::new(n, FRAMES, 42);
        let mut hash =
            RteHash::new(&eal, &format!("bench{n}"), (n * 2).max(64) as u32).expect("rte_hash");
        for (i, m) in w.macs.iter().enumerate() {
            hash.add(mac_key(DomainId(0), m.to_u64()), i + 1)
                .expect("rte_hash add");
        }
        let mut decisions = [Decision::Drop(dataplane::counters::DropReason::NoRoute); BURST];
        let steer = cycles_per_item(FRAMES * ROUNDS, || {
            for _ in 0..ROUNDS {
                for chunk in w.frames.chunks(BURST) {
                    steer_bulk(&w.table, Source::Nic, chunk, &mut decisions[..chunk.len()]);
                    black_box(&decisions);
                }
            }
        });
        let mut actions = [Action::Drop; BURST];
        let lookup = cycles_per_item(FRAMES * ROUNDS, || {
            for _ in 0..ROUNDS {
                for chunk in w.keys.chunks(BURST) {
                    w.table.lookup_bulk(chunk, &mut actions[..chunk.len()]);
                    black_box(&actions);
                }
            }
        });
        let mut values = [0usize; LOOKUP_BULK_MAX];
        let rte = cycles_per_item(FRAMES * ROUNDS, || {
            for _ in 0..ROUNDS {
                for chunk in w.keys.chunks(BURST) {
                    black_box(hash.lookup_bulk(chunk, &mut values[..chunk.len()]));
                }
            }
        });
        println!(
            "{n:>7} {steer:>12.1} {lookup:>12.1} {rte:>12.1} {:>7.2}x",
            rte / steer
        );
        rows.push(format!(
            r#"{{"macs":{n},"steer_bulk_cycles":{steer:.2},"lookup_bulk_cycles":{lookup:.2},"rte_hash_cycles":{rte:.2}}}"#
        ));
    }
    println!(
        r#"{{"bench":"steering","unit":"tsc_cycles_per_frame","rows":[{}]}}"#,
        rows.join(",")
    );
}
