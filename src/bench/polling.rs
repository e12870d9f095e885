//! The polling suite: the wake-up latency of an `adaptive` worker, against a `busy` one in
//! the same run.
//!
//! Setup, in a network namespace of its own (made and removed by the measuring child): two
//! veth pairs, `w0`–`w1` (the LAN) and `k0`–`k1` (the kernel side). The worker's NIC port
//! is DPDK's af_packet PMD on `w1`, its kernel port af_packet on `k1`. One frame at a time
//! is sent from a packet socket on `w0` to the node's own MAC; the worker steers it NIC →
//! kernel, out of `k1`; a packet socket on `k0` receives it. The latency is send → receive
//! on the same thread's clock, frames `GAP` apart: long enough for an adaptive worker to
//! have backed off to its longest sleep, so every frame finds it asleep (the worst case).
//!
//! Both modes pay the same kernel, veth and socket costs, so adaptive minus busy, at each
//! percentile, is what the sleeping costs: the wake-up latency. Rounds alternate the modes,
//! so that a noisy moment hits both alike. The worker runs on CPU 1, the sender on CPU 0.

use std::time::{Duration, Instant};

use dataplane::dpdk::{Mempool, Port, PortConfig, PKTMBUF_HEADROOM};
use dataplane::steer::table_channel;
use dataplane::sys::netns;
use dataplane::sys::raw_socket::RawSocket;
use dataplane::worker::{self, FabricIo, Polling, WorkerSetup};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::model::{Better, Figure, Progress, SuiteOutcome};
use super::BenchOpts;

/// Set in the child process: the file it writes its raw results to.
pub const CHILD_ENV: &str = "NICPROXY_BENCH_POLLING_OUT";

use super::forwarding::{LAN_HOST, LOCAL};
const FRAME_LEN: usize = 64;
/// Between two frames: an adaptive worker backs off to its longest sleep well within it
/// (about 100 µs of spinning, then sleeps doubling from 1 µs to 200 µs: under 1 ms).
const GAP: Duration = Duration::from_millis(2);
/// A frame not back by then is counted lost (generous: a loaded machine can stall the
/// sender's wake-up for tens of milliseconds, which is late, not lost).
const LOST_AFTER: Duration = Duration::from_secs(1);
const WORKER_CPU: usize = 1;
const SENDER_CPU: usize = 0;

/// (rounds, frames per mode and round).
fn shape(opts: &BenchOpts) -> (u32, u32) {
    if opts.quick {
        (1, 200)
    } else {
        (3, 1500)
    }
}

/// Runs the suite: in the child, measures; in the parent, makes the figures.
pub fn run(opts: &BenchOpts, progress: &Progress) -> Result<SuiteOutcome, String> {
    let Some(raw) = super::child::measure_in_child("polling", CHILD_ENV, opts, progress, measure)?
    else {
        return Ok(SuiteOutcome::default());
    };
    outcome(raw)
}

/// The namespace and its two veth pairs; removed on drop (the veths go with it).
struct Net {
    ns: String,
}

impl Net {
    fn create() -> Result<Net, String> {
        let net = Net {
            ns: format!("npwk{:x}", std::process::id()),
        };
        let ip = |args: &[&str]| {
            crate::lab::cmd::run("ip", args)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        ip(&["netns", "add", &net.ns])?;
        // From here `net` is dropped, and the namespace removed, on every error.
        let n = net.ns.as_str();
        for (a, b) in [("w0", "w1"), ("k0", "k1")] {
            ip(&["-n", n, "link", "add", a, "type", "veth", "peer", "name", b])?;
        }
        for dev in ["w0", "w1", "k0", "k1"] {
            ip(&["-n", n, "link", "set", dev, "up"])?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        crate::lab::cmd::run_quiet("ip", &["netns", "del", &self.ns]);
    }
}

/// The child's half: every measurement, as raw JSON.
fn measure(opts: &BenchOpts, progress: &Progress) -> Result<Value, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus <= WORKER_CPU {
        return Err(format!("needs at least {} CPUs", WORKER_CPU + 1));
    }
    let (rounds, frames) = shape(opts);
    let load_before = crate::loadavg::all_three();
    let net = Net::create()?;
    // This thread, and every thread it starts (the EAL's, the worker), in the namespace.
    let _inside = netns::enter(&net.ns).map_err(|e| e.to_string())?;
    // No IPv6 autoconfiguration or router solicitations on the wires (net sysctls are
    // those of the namespace of the thread that opens them).
    for dev in ["w0", "w1", "k0", "k1"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
    }
    if !core_affinity::set_for_current(core_affinity::CoreId { id: SENDER_CPU }) {
        return Err(format!("pinning the sender to CPU {SENDER_CPU}"));
    }
    let (eal, _dirs) =
        super::child::small_eal(&format!("npwk-{}", std::process::id()), &["-l", "0"])?;
    let pool = |name: &str| {
        Mempool::new(&eal, name, 4095, 64, 2048 + PKTMBUF_HEADROOM).map_err(|e| e.to_string())
    };
    let nic = Port::open("net_af_packet0,iface=w1", &PortConfig::new(pool("wk-nic")?))
        .map_err(|e| e.to_string())?;
    let kernel = Port::open(
        "net_af_packet1,iface=k1",
        &PortConfig::new(pool("wk-kernel")?),
    )
    .map_err(|e| e.to_string())?;
    let table = super::forwarding::one_node_table()?;
    let tx = RawSocket::bind("w0").map_err(|e| e.to_string())?;
    let rx = RawSocket::bind_protocol("k0", 0x0800).map_err(|e| e.to_string())?;
    rx.set_recv_buffer(1 << 20).map_err(|e| e.to_string())?;

    let modes = [("busy", Polling::Busy), ("adaptive", Polling::ADAPTIVE)];
    let mut hist: Vec<Histogram<u64>> = modes
        .iter()
        .map(|_| Histogram::new_with_bounds(1, 10_000_000_000, 3).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut lost = [0u64; 2];
    let mut seq = 0u64;
    for round in 0..rounds {
        for (m, (label, polling)) in modes.iter().enumerate() {
            let (_publisher, reader) = table_channel(table.clone().build(), 8);
            let q = |p: &Port| p.queue(0).map_err(|e| e.to_string());
            let w = worker::spawn(
                &eal,
                WorkerSetup {
                    name: format!("np-wk-{label}"),
                    core: Some(WORKER_CPU),
                    polling: *polling,
                    nic: q(&nic)?,
                    kernel: q(&kernel)?,
                    fabric: FabricIo::None,
                    relay: worker::Relay::Alone,
                    table: reader,
                    drain_interval: Duration::from_micros(100),
                },
            )
            .map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..frames {
                std::thread::sleep(GAP);
                seq += 1;
                match one_trip(&tx, &rx, seq)? {
                    Some(d) => {
                        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
                        hist[m].saturating_record(ns);
                    }
                    None => lost[m] += 1,
                }
            }
            w.stop().map_err(|e| e.to_string())?;
        }
        progress.say(format_args!(
            "round {}/{rounds}: p50 busy {:.1} µs, adaptive {:.1} µs (load {})",
            round + 1,
            hist[0].value_at_quantile(0.5) as f64 / 1e3,
            hist[1].value_at_quantile(0.5) as f64 / 1e3,
            crate::loadavg::all_three()
        ));
    }
    let quantiles = |h: &Histogram<u64>| {
        let mut m = serde_json::Map::new();
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            m.insert(name.into(), json!(h.value_at_quantile(q) as f64 / 1e3));
        }
        m.insert("mean".into(), json!(h.mean() / 1e3));
        m.insert("samples".into(), json!(h.len()));
        Value::Object(m)
    };
    drop(_inside);
    drop(net);
    Ok(json!({
        "busy_us": quantiles(&hist[0]),
        "adaptive_us": quantiles(&hist[1]),
        "lost": {"busy": lost[0], "adaptive": lost[1]},
        "rounds": rounds,
        "frames_per_mode_and_round": frames,
        "gap_ms": GAP.as_secs_f64() * 1e3,
        "bound_us": Polling::ADAPTIVE.wake_up_latency().as_secs_f64() * 1e6,
        "loadavg_before": load_before,
        "loadavg_after": crate::loadavg::all_three(),
    }))
}

/// Sends frame `seq` and waits for it on the kernel side; returns the latency, or `None`
/// if it did not come within [`LOST_AFTER`].
fn one_trip(tx: &RawSocket, rx: &RawSocket, seq: u64) -> Result<Option<Duration>, String> {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&LOCAL.0);
    f[6..12].copy_from_slice(&LAN_HOST.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14..22].copy_from_slice(&seq.to_be_bytes());
    let t0 = Instant::now();
    tx.send(&f).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 128];
    loop {
        let left = LOST_AFTER.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Ok(None);
        }
        match rx.recv(&mut buf, left).map_err(|e| e.to_string())? {
            Some(n) if n >= 22 && buf[14..22] == seq.to_be_bytes() => {
                return Ok(Some(t0.elapsed()))
            }
            // An earlier frame that came late, or anything else: keep waiting for ours.
            Some(_) => {}
            None => return Ok(None),
        }
    }
}

/// The figures from the child's raw results.
fn outcome(raw: Value) -> Result<SuiteOutcome, String> {
    let q = |mode: &str, p: &str| raw[format!("{mode}_us")][p].as_f64().unwrap_or(f64::NAN);
    let samples = raw["adaptive_us"]["samples"].as_u64().unwrap_or(0);
    if samples == 0 || raw["busy_us"]["samples"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("no frame came through the worker: {raw}"));
    }
    let bound = raw["bound_us"].as_f64().unwrap_or(f64::NAN);
    let note = format!(
        "one frame every {} ms from a packet socket through the worker (af_packet on veth, NIC → kernel) to another; {} rounds × {} frames per mode, alternating; lost: busy {}, adaptive {}; load average {} before, {} after",
        raw["gap_ms"],
        raw["rounds"],
        raw["frames_per_mode_and_round"],
        raw["lost"]["busy"],
        raw["lost"]["adaptive"],
        raw["loadavg_before"].as_str().unwrap_or("?"),
        raw["loadavg_after"].as_str().unwrap_or("?"),
    );
    let mut figures = Vec::new();
    for p in ["p50", "p99"] {
        figures.push(
            Figure::new(
                format!("latency through an idle adaptive worker, {p}"),
                q("adaptive", p),
                "µs",
                Better::Lower,
            )
            .baseline("the same through a busy worker", q("busy", p))
            .note(note.clone()),
        );
        let extra = q("adaptive", p) - q("busy", p);
        figures.push(
            Figure::new(
                format!("wake-up latency of an adaptive worker (adaptive − busy), {p}"),
                extra,
                "µs",
                Better::Lower,
            )
            .baseline(
                "the longest sleep, which bounds it (plus timer slack)",
                bound,
            )
            .note("what a frame that finds the worker asleep waits for it: up to one sleep period"),
        );
    }
    Ok(SuiteOutcome {
        figures,
        plots: Vec::new(),
        notes: Vec::new(),
        raw,
    })
}
