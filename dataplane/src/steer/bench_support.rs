//! Synthetic tables and traffic for benchmarks (benches/steering.rs) and the informational
//! cycles-per-packet measurement. Not part of the stable API.

use super::builder::MacTableBuilder;
use super::table::{mac_key, DomainInfo, MacTable};
use super::types::{DomainId, SessionId, SessionMask, Uplink};
use crate::wire::ethernet::{self, ethertype};
use crate::wire::MacAddr;

/// Sessions the synthetic tables spread proxied MACs over.
pub const SESSIONS: u16 = 8;

/// A deterministic xorshift64 generator (no dependency, reproducible runs).
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    /// Next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A random locally administered unicast MAC.
pub fn random_unicast(rng: &mut XorShift) -> MacAddr {
    let mut b = MacAddr::from_u64(rng.next_u64()).0;
    b[0] = (b[0] & 0xfc) | 0x02;
    MacAddr(b)
}

/// A table and a stream of frames to steer through it.
///
/// ```
/// use dataplane::steer::{bench_support::Workload, steer_bulk, Decision, Source};
///
/// let w = Workload::new(1024, 4096, 42);
/// let mut out = [Decision::Nic; 32];
/// for burst in w.frames.chunks(32) {
///     steer_bulk(&w.table, Source::Nic, burst, &mut out);
/// }
/// let mut actions = [dataplane::steer::Action::Nic; 32];
/// w.table.lookup_bulk(&w.keys[..32], &mut actions);
/// ```
#[derive(Debug)]
pub struct Workload {
    /// Domain 0 (untagged): uplink NIC, kernel and sessions 0..8 members; `n_macs` unicast
    /// MACs, one in eight local (kernel), the others proxied over sessions 0..8.
    pub table: Box<MacTable>,
    /// The installed MACs.
    pub macs: Vec<MacAddr>,
    /// 64-byte IPv4 frames as received from the NIC: 90% to installed MACs, 10% to unknown
    /// ones, one in 64 broadcast.
    pub frames: Vec<[u8; 64]>,
    /// The destination keys of `frames`, for `lookup_bulk`.
    pub keys: Vec<u64>,
}

impl Workload {
    /// Builds a workload of `n_macs` MACs (at least 1) and `n_frames` frames from `seed`.
    // `is_multiple_of` needs Rust 1.87; the workspace's minimum is 1.80.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn new(n_macs: usize, n_frames: usize, seed: u64) -> Workload {
        let mut rng = XorShift(seed | 1);
        let mut b = MacTableBuilder::new();
        let mut macs = Vec::with_capacity(n_macs);
        while macs.len() < n_macs.max(1) {
            let mac = random_unicast(&mut rng);
            if b.get(DomainId(0), mac).is_some() {
                continue;
            }
            let i = macs.len() as u64;
            let r = if i % 8 == 0 {
                b.add_local(DomainId(0), mac)
            } else {
                b.add_proxied(
                    DomainId(0),
                    mac,
                    SessionId((i % u64::from(SESSIONS)) as u16),
                )
            };
            r.expect("synthetic MACs are unicast and sessions are in range");
            macs.push(mac);
        }
        b.set_domain(
            DomainId(0),
            DomainInfo {
                uplink: Uplink::Nic,
                kernel: true,
                sessions: SessionMask((1 << SESSIONS) - 1),
            },
        )
        .expect("domain 0 and sessions 0..8 are valid");
        let table = b.build();
        let src = random_unicast(&mut rng);
        let mut frames = Vec::with_capacity(n_frames);
        let mut keys = Vec::with_capacity(n_frames);
        for i in 0..n_frames {
            let dst = if i % 64 == 63 {
                MacAddr::BROADCAST
            } else if rng.next_u64() % 10 == 0 {
                random_unicast(&mut rng)
            } else {
                macs[(rng.next_u64() % macs.len() as u64) as usize]
            };
            let mut f = [0u8; 64];
            ethernet::write_header(&mut f, dst, src, None, ethertype::IPV4)
                .expect("64 bytes hold a header");
            f[14] = 0x45;
            frames.push(f);
            keys.push(mac_key(DomainId(0), dst.to_u64()));
        }
        Workload {
            table,
            macs,
            frames,
            keys,
        }
    }
}

impl MacTable {
    /// A table of `n` random MACs (see [`Workload`]), for benchmarks.
    #[doc(hidden)]
    pub fn with_random_macs(n: usize, seed: u64) -> Box<MacTable> {
        Workload::new(n, 0, seed).table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steer::{steer, steer_bulk, Action, Decision, Source};
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    #[test]
    fn workload_is_consistent() {
        let w = Workload::new(1000, 640, 7);
        assert_eq!(w.table.len(), 1000);
        assert!(w.table.capacity() >= 2000 && w.table.capacity().is_power_of_two());
        for m in &w.macs {
            assert_ne!(w.table.lookup(DomainId(0), *m), Action::Nic);
        }
        let mut out = vec![Decision::Nic; w.frames.len()];
        steer_bulk(&w.table, Source::Nic, &w.frames, &mut out);
        let floods = out
            .iter()
            .filter(|d| matches!(d, Decision::Flood(_)))
            .count();
        assert_eq!(floods, 10);
        for (f, d) in w.frames.iter().zip(&out) {
            assert_eq!(*d, steer(&w.table, Source::Nic, f));
        }
        let mut acts = vec![Action::Drop; w.keys.len()];
        w.table.lookup_bulk(&w.keys, &mut acts);
        for (k, a) in w.keys.iter().zip(&acts) {
            assert_eq!(*a, w.table.lookup_key(*k));
        }
    }

    /// TSC rate estimate from /proc/cpuinfo (constant_tsc machines run it at the nominal
    /// clock); the measurement itself uses `Instant`, since reading the TSC needs `unsafe`.
    fn cpu_mhz() -> f64 {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("cpu MHz"))
                    .and_then(|l| l.split(':').nth(1))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(1000.0)
    }

    fn per_packet(mut run: impl FnMut() -> usize) -> f64 {
        // Warm up, then take the best of 5 runs of ~60 ms each.
        run();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let mut pkts = 0usize;
            while t.elapsed() < Duration::from_millis(60) {
                pkts += run();
            }
            best = best.min(t.elapsed().as_nanos() as f64 / pkts as f64);
        }
        best
    }

    /// Informational: prints ns and estimated TSC cycles per packet; asserts nothing about
    /// speed. Run with
    /// `cargo test -p dataplane --no-default-features --release -- --ignored --nocapture steering_cycles`.
    #[test]
    #[ignore = "measurement, run in release mode by hand"]
    fn steering_cycles_per_packet() {
        let mhz = cpu_mhz();
        println!("TSC estimate {mhz:.0} MHz; bursts of 32, 4096 frames, 64-byte IPv4, 90% hits");
        println!(
            "{:>7} {:>22} {:>22} {:>22}",
            "MACs", "steer_bulk ns (cyc)", "steer ns (cyc)", "lookup_bulk ns (cyc)"
        );
        for n in [16usize, 1024, 4096, 65_536] {
            let w = Workload::new(n, 4096, 42);
            let mut out = [Decision::Nic; 32];
            let bulk = per_packet(|| {
                for burst in w.frames.chunks(32) {
                    steer_bulk(&w.table, Source::Nic, black_box(burst), &mut out);
                    black_box(&out);
                }
                w.frames.len()
            });
            let single = per_packet(|| {
                for f in &w.frames {
                    black_box(steer(&w.table, Source::Nic, black_box(f)));
                }
                w.frames.len()
            });
            let mut acts = [Action::Nic; 32];
            let lookup = per_packet(|| {
                for burst in w.keys.chunks(32) {
                    w.table.lookup_bulk(black_box(burst), &mut acts);
                    black_box(&acts);
                }
                w.keys.len()
            });
            let c = |ns: f64| format!("{ns:6.2} ({:5.1})", ns * mhz / 1000.0);
            println!("{n:>7} {:>22} {:>22} {:>22}", c(bulk), c(single), c(lookup));
        }
    }
}
