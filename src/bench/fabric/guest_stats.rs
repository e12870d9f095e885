//! What the guest's kernel did around one timed run of the verbs benchmark, so that a
//! round-trip tail can be traced to its cause: rxe's own counters (an RNR NAK, a
//! retransmission or a duplicate shows there), the softirq work and how much of it was
//! pushed to ksoftirqd (which then competes with busy-polling threads for the CPU), and for
//! the benchmark's own threads, how long they sat on a run queue while runnable.
//!
//! Everything is read from /proc and /sys as text; a file that is missing (another kernel,
//! no rxe) reads as nothing rather than failing the run.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A snapshot of the guest-wide figures.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// "rxe_a/rcvd_rnr_err" → value.
    rxe: BTreeMap<String, u64>,
    /// NET_RX, NET_TX, TASKLET and TIMER softirqs summed over the CPUs.
    softirqs: BTreeMap<String, u64>,
    /// CPU time of all ksoftirqd threads, in clock ticks.
    ksoftirqd_ticks: u64,
}

impl Snapshot {
    /// Reads the figures now; `devices` are the rxe devices whose counters matter.
    pub fn take(devices: &[&str]) -> Self {
        let mut rxe = BTreeMap::new();
        for dev in devices {
            let dir = format!("/sys/class/infiniband/{dev}/ports/1/hw_counters");
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(v) = read_u64(&e.path().to_string_lossy()) {
                    rxe.insert(format!("{dev}/{name}"), v);
                }
            }
        }
        Self {
            rxe,
            softirqs: softirqs(),
            ksoftirqd_ticks: ksoftirqd_ticks(),
        }
    }

    /// What changed from `before` to `self`, as JSON: counters that did not move are
    /// left out.
    pub fn since(&self, before: &Snapshot) -> Value {
        let diff = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
            let mut m = serde_json::Map::new();
            for (k, v) in now {
                let d = v.saturating_sub(then.get(k).copied().unwrap_or(0));
                if d > 0 {
                    m.insert(k.clone(), json!(d));
                }
            }
            Value::Object(m)
        };
        json!({
            "rxe_counters": diff(&self.rxe, &before.rxe),
            "softirqs": diff(&self.softirqs, &before.softirqs),
            "ksoftirqd_cpu_ms": self.ksoftirqd_ticks.saturating_sub(before.ksoftirqd_ticks) as f64
                * 1e3 / clock_ticks_per_s(),
        })
    }
}

/// The calling thread's scheduling figures: time on a CPU, time runnable but waiting on
/// a run queue, and the context switches it made (voluntary) or suffered (involuntary).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadSched {
    run_ns: u64,
    wait_ns: u64,
    voluntary: u64,
    involuntary: u64,
}

impl ThreadSched {
    /// Reads the calling thread's figures (zeros where /proc does not tell).
    pub fn now() -> Self {
        let sched = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        let mut it = sched
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let (run_ns, wait_ns) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            run_ns,
            wait_ns,
            voluntary: field("voluntary_ctxt_switches:"),
            involuntary: field("nonvoluntary_ctxt_switches:"),
        }
    }

    /// The change from `before`, as JSON.
    pub fn since(&self, before: &ThreadSched) -> Value {
        json!({
            "on_cpu_ms": self.run_ns.saturating_sub(before.run_ns) as f64 / 1e6,
            "runqueue_wait_ms": self.wait_ns.saturating_sub(before.wait_ns) as f64 / 1e6,
            "voluntary_switches": self.voluntary.saturating_sub(before.voluntary),
            "involuntary_switches": self.involuntary.saturating_sub(before.involuntary),
        })
    }
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn softirqs() -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/softirqs").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, counts) = l.split_once(':')?;
            let name = name.trim();
            ["NET_RX", "NET_TX", "TASKLET", "TIMER"]
                .contains(&name)
                .then(|| {
                    let sum = counts
                        .split_whitespace()
                        .filter_map(|v| v.parse::<u64>().ok())
                        .sum();
                    (name.to_owned(), sum)
                })
        })
        .collect()
}

fn ksoftirqd_ticks() -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.contains("(ksoftirqd/"))
        .map(|s| {
            // Fields after the ")" that ends the command name: utime and stime are the
            // 12th and 13th.
            let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
        })
        .sum()
}

fn clock_ticks_per_s() -> f64 {
    // USER_HZ is 100 on every Linux architecture this runs on.
    100.0
}
