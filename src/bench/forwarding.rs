//! The forwarding suite: frames per second of one worker through the full loop
//! (`dataplane::worker::spawn`: rx burst, steer the burst, move it to tx buffers, tx burst,
//! drain timer, counters), against `dpdk-testpmd` on the same vdev pair in the same run.
//!
//! Setup. The worker's NIC and kernel ports are `net_null` vdevs, as are testpmd's two
//! ports; each side has one forwarding core (CPU 1) and a main thread that sleeps (CPU 0).
//! Both run without hugepages. `net_null` (default `copy=0`) gives each received mbuf a
//! length of 64 bytes and leaves its data as it was, so every mbuf of the NIC's pool is first
//! stamped with a valid frame to the node's own MAC (steered NIC → kernel), and every mbuf
//! of the kernel port's pool with a frame to a LAN MAC (steered kernel → NIC, the uplink).
//! Nothing on the path writes frame data, so the stamps stay: every frame is really
//! classified, looked up and moved by the steering rules, and the run checks that none was
//! dropped and that each port sent exactly what the other received.
//!
//! Baselines, same vdevs, same run: testpmd `io` forwarding (the baseline; it never
//! reads a frame), and testpmd `mac` forwarding, which reads and writes each frame's Ethernet
//! header, as any forwarder that looks at frames must (steering reads it).
//!
//! Worker variants: no fabric (`FabricIo::None`), the forwarding loop alone; and an idle UDP
//! fabric as the daemon runs it, whose socket the loop polls (a system call) every
//! `worker::FABRIC_POLL_INTERVAL` while the ports are busy.
//!
//! Figures per 1-second window: the rate by the wall clock (the best window counts: the
//! machine is shared, and the best is the window least disturbed by other tenants), and
//! the rate per CPU-second of the forwarding thread (frames / the thread's time on a CPU in
//! that window, from `/proc/PID/task/TID/schedstat`), which load on the machine disturbs far
//! less; its median counts.
//!
//! DPDK allows one EAL per process and pins the thread that starts it, so the suite runs its
//! measurements in a child process (this binary, `bench --suite forwarding`, with
//! [`CHILD_ENV`] naming the file for the raw results) and builds the figures from them.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::counters::CountersSnapshot;
use dataplane::dpdk::{Eal, Mbuf, Mempool, Port, PortConfig, PortStats, PKTMBUF_HEADROOM};
use dataplane::fabric::udp::UdpFabric;
use dataplane::steer::{table_channel, DomainId, DomainInfo, MacTableBuilder, SessionId, Uplink};
use dataplane::wire::MacAddr;
use dataplane::worker::{
    self, FabricIo, Polling, UdpIo, WorkerHandle, WorkerSetup, FABRIC_POLL_INTERVAL, PORT_KERNEL,
    PORT_NIC,
};
use serde_json::{json, Value};

use super::model::{Better, Figure, Plot, Progress, Series, SuiteOutcome};
use super::BenchOpts;

/// Set in the child process: the file it writes its raw results to.
pub const CHILD_ENV: &str = "NICPROXY_BENCH_FORWARDING_OUT";

const FRAME_LEN: usize = 64;
const POOL_MBUFS: u32 = 16_383;
const LOCAL: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 0, 0x01]);
const LAN_HOST: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 0x0a, 0x01]);
/// The CPU of the forwarding loop (the worker's, and testpmd's forwarding lcore).
const FWD_CPU: usize = 1;
/// The worker thread's name, by which its CPU time is found.
const WORKER_NAME: &str = "np-fwd";
const TARGET: f64 = 0.90;

/// Rounds and 1-second windows per round: `quick` is one short round.
fn shape(opts: &BenchOpts) -> (u32, u32) {
    if opts.quick {
        (1, 2)
    } else {
        (3, 3)
    }
}

/// Runs the suite: in the child, measures; in the parent, starts the child and makes the
/// figures from what it measured.
pub fn run(opts: &BenchOpts, progress: &Progress) -> Result<SuiteOutcome, String> {
    match super::child::measure_in_child("forwarding", CHILD_ENV, opts, progress, measure)? {
        Some(raw) => outcome(&raw),
        None => Ok(SuiteOutcome::default()),
    }
}

/// One 1-second window: frames forwarded (both directions), wall time, and CPU time of the
/// forwarding thread.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    frames: u64,
    secs: f64,
    cpu_secs: f64,
}

impl Window {
    fn mpps(&self) -> f64 {
        self.frames as f64 / self.secs.max(1e-9) / 1e6
    }

    fn mpps_per_cpu(&self) -> f64 {
        self.frames as f64 / self.cpu_secs.max(1e-9) / 1e6
    }

    fn json(&self) -> Value {
        json!({
            "frames": self.frames,
            "secs": self.secs,
            "cpu_secs": self.cpu_secs,
            "mpps": self.mpps(),
            "mpps_per_cpu_second": self.mpps_per_cpu(),
        })
    }
}

/// Nanoseconds task `tid` of process `pid` has run on a CPU (schedstat's first field).
fn task_cpu_ns(pid: u32, tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The thread of process `pid` whose name starts with `prefix`.
fn find_task(pid: u32, prefix: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            comm.trim().starts_with(prefix).then_some(tid)
        })
}

/// The thread of `pid` with the most CPU time: testpmd's forwarding lcore.
fn busiest_task(pid: u32) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((task_cpu_ns(pid, tid)?, tid))
        })
        .max()
        .map(|(_, tid)| tid)
}

fn frame(dst: MacAddr, src: MacAddr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    // A plausible IPv4 header start; steering reads only the first 14 bytes.
    f[14] = 0x45;
    f
}

/// Writes `frame` into the data room of every mbuf of `pool` (see the module docs).
fn stamp(pool: &Mempool, frame: &[u8]) -> Result<(), String> {
    let mut all = Vec::with_capacity(pool.capacity() as usize);
    let len = u16::try_from(frame.len()).map_err(|_| "frame too long".to_string())?;
    while let Some(mut m) = Mbuf::alloc(pool) {
        m.append(len)
            .ok_or("no room for a 64-byte frame in an mbuf")?
            .copy_from_slice(frame);
        all.push(m);
    }
    if all.len() != pool.capacity() as usize {
        return Err(format!(
            "stamped {} of the {} mbufs of {}",
            all.len(),
            pool.capacity(),
            pool.name()
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    NoFabric,
    IdleUdp,
}

struct Rig {
    eal: Eal,
    nic: Port,
    kernel: Port,
    /// The UDP fabric's receive stash comes from its own pool, so that nothing ever writes
    /// into the stamped ones.
    fabric_pool: Mempool,
    table: MacTableBuilder,
}

impl Rig {
    fn new(prefix: &str) -> Result<Rig, String> {
        let eal = Eal::init(&[
            "--no-pci",
            "--no-huge",
            "-m",
            "1024",
            "--no-shconf",
            &format!("--file-prefix={prefix}"),
            // The main thread (which sleeps) on CPU 0; the worker pins itself to FWD_CPU.
            "-l",
            "0",
            "--log-level=*:error",
            "--no-telemetry",
        ])
        .map_err(|e| e.to_string())?;
        let pool = |name: &str, n: u32, cache: u32| {
            Mempool::new(&eal, name, n, cache, 2048 + PKTMBUF_HEADROOM).map_err(|e| e.to_string())
        };
        let nic_pool = pool("fwd-nic", POOL_MBUFS, 256)?;
        let kernel_pool = pool("fwd-kernel", POOL_MBUFS, 256)?;
        // NIC -> kernel: to our own MAC. Kernel -> NIC: to a LAN MAC (not in the table: out
        // of the uplink).
        stamp(&nic_pool, &frame(LOCAL, LAN_HOST))?;
        stamp(&kernel_pool, &frame(LAN_HOST, LOCAL))?;
        let size = format!("size={FRAME_LEN}");
        let nic = Port::open(&format!("net_null0,{size}"), &PortConfig::new(nic_pool))
            .map_err(|e| e.to_string())?;
        let kernel = Port::open(&format!("net_null1,{size}"), &PortConfig::new(kernel_pool))
            .map_err(|e| e.to_string())?;
        let fabric_pool = pool("fwd-fabric", 1023, 32)?;
        let mut table = MacTableBuilder::new();
        table
            .set_domain(
                DomainId(0),
                DomainInfo {
                    uplink: Uplink::Nic,
                    kernel: true,
                    sessions: Default::default(),
                },
            )
            .map_err(|e| e.to_string())?;
        table
            .add_local(DomainId(0), LOCAL)
            .map_err(|e| e.to_string())?;
        Ok(Rig {
            eal,
            nic,
            kernel,
            fabric_pool,
            table,
        })
    }

    fn spawn(&self, variant: Variant) -> Result<WorkerHandle, String> {
        let fabric = match variant {
            Variant::NoFabric => FabricIo::None,
            Variant::IdleUdp => {
                let peer = [(SessionId(1), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))];
                // Port 0 is refused (the data port is fixed cluster-wide); find a free one.
                let sock = (20_000u16..60_000)
                    .step_by(97)
                    .find_map(|p| {
                        UdpFabric::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p), &peer)
                            .ok()
                    })
                    .ok_or("no free UDP port on loopback")?;
                FabricIo::Udp(UdpIo::new(sock, self.fabric_pool.clone()))
            }
        };
        let (_publisher, reader) = table_channel(self.table.clone().build(), 8);
        let q = |p: &Port| p.queue(0).map_err(|e| e.to_string());
        worker::spawn(
            &self.eal,
            WorkerSetup {
                name: WORKER_NAME.into(),
                core: Some(FWD_CPU),
                polling: Polling::Busy,
                nic: q(&self.nic)?,
                kernel: q(&self.kernel)?,
                fabric,
                relay: worker::Relay::Alone,
                table: reader,
                drain_interval: Duration::from_micros(100),
            },
        )
        .map_err(|e| e.to_string())
    }

    /// Runs the worker for `windows` 1-second windows; returns them and the frames checked
    /// (NIC → kernel, kernel → NIC).
    fn run(&self, variant: Variant, windows: u32) -> Result<(Vec<Window>, (u64, u64)), String> {
        let stats = |p: &Port| p.stats().map_err(|e| e.to_string());
        let (nic_before, kernel_before) = (stats(&self.nic)?, stats(&self.kernel)?);
        let w = self.spawn(variant)?;
        std::thread::sleep(Duration::from_millis(300));
        let pid = std::process::id();
        let tid = find_task(pid, WORKER_NAME).ok_or("the worker thread is not in /proc")?;
        let total =
            |s: &CountersSnapshot| s.ports[PORT_NIC].rx_packets + s.ports[PORT_KERNEL].rx_packets;
        let sample = || (Instant::now(), total(&w.counters()), task_cpu_ns(pid, tid));
        let mut last = sample();
        let mut out = Vec::new();
        for _ in 0..windows {
            std::thread::sleep(Duration::from_secs(1));
            let now = sample();
            out.push(Window {
                frames: now.1 - last.1,
                secs: now.0.duration_since(last.0).as_secs_f64(),
                cpu_secs: now
                    .2
                    .zip(last.2)
                    .map_or(f64::NAN, |(a, b)| (a - b) as f64 / 1e9),
            });
            last = now;
        }
        w.stop().map_err(|e| e.to_string())?;
        // The loop drains its queues on the way out, so the counts now balance exactly.
        let checked = check_balance(
            &(stats(&self.nic)?, nic_before),
            &(stats(&self.kernel)?, kernel_before),
        )?;
        Ok((out, checked))
    }
}

/// After a run: frames the worker sent out of each null port must equal what the other
/// port received (no drop); returns (NIC → kernel, kernel → NIC).
fn check_balance(
    nic: &(PortStats, PortStats),
    kernel: &(PortStats, PortStats),
) -> Result<(u64, u64), String> {
    let nic_rx = nic.0.rx_packets - nic.1.rx_packets;
    let nic_tx = nic.0.tx_packets - nic.1.tx_packets;
    let k_rx = kernel.0.rx_packets - kernel.1.rx_packets;
    let k_tx = kernel.0.tx_packets - kernel.1.tx_packets;
    if nic_rx == 0 || k_rx == 0 {
        return Err("no frames flowed".into());
    }
    if k_tx != nic_rx || nic_tx != k_rx {
        return Err(format!(
            "frames lost by the worker: NIC rx {nic_rx} vs kernel tx {k_tx}, kernel rx {k_rx} vs NIC tx {nic_tx}"
        ));
    }
    Ok((nic_rx, k_rx))
}

/// One completed testpmd stats period: when it was printed, the ports' cumulative rx, and
/// the forwarding thread's CPU time then.
#[derive(Clone, Copy)]
struct Period {
    at: Instant,
    rx_total: u64,
    cpu_ns: Option<u64>,
}

/// Runs testpmd (`mode` = io or mac) on two null vdevs for about `windows` stats periods.
fn testpmd(mode: &str, windows: u32) -> Result<Vec<Window>, String> {
    let prefix = format!("npfwd-tp-{}", std::process::id());
    // Line-buffered: its stats must arrive as they are printed, not when a pipe buffer fills.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "dpdk-testpmd"])
        .args([
            "-l",
            &format!("0,{FWD_CPU}"),
            "--no-pci",
            "--no-huge",
            "-m",
            "1024",
        ])
        .args(["--no-shconf", &format!("--file-prefix={prefix}")])
        .args([
            &format!("--vdev=net_null0,size={FRAME_LEN}"),
            &format!("--vdev=net_null1,size={FRAME_LEN}"),
        ])
        .args(["--log-level=*:error", "--no-telemetry", "--"])
        .args([
            &format!("--forward-mode={mode}"),
            "--nb-cores=1",
            "--stats-period=1",
        ])
        .arg(format!("--total-num-mbufs={POOL_MBUFS}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("starting dpdk-testpmd (Debian package dpdk) under stdbuf (coreutils): {e}")
        })?;
    let pid = child.id();
    let out = child.stdout.take().ok_or("no stdout")?;
    let periods: Arc<Mutex<Vec<Period>>> = Arc::default();
    let log: Arc<Mutex<String>> = Arc::default();
    let reader = {
        let (periods, log) = (periods.clone(), log.clone());
        std::thread::spawn(move || {
            let mut tid = None;
            let (mut rx, mut ports_done) = (0u64, 0);
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let t = line.trim();
                if t.contains("Port statistics") {
                    (rx, ports_done) = (0, 0);
                } else if let Some(rest) = t.strip_prefix("RX-packets:") {
                    rx += rest
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                } else if t.starts_with("Tx-pps:") {
                    ports_done += 1;
                    if ports_done == 2 {
                        // DPDK names its worker lcore threads rte-worker-N.
                        tid = tid
                            .or_else(|| find_task(pid, "rte-worker"))
                            .or_else(|| busiest_task(pid));
                        let cpu_ns = tid.and_then(|t| task_cpu_ns(pid, t));
                        if let Ok(mut p) = periods.lock() {
                            p.push(Period {
                                at: Instant::now(),
                                rx_total: rx,
                                cpu_ns,
                            });
                        }
                    }
                }
                if let Ok(mut l) = log.lock() {
                    if l.len() < 64 * 1024 {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            }
        })
    };
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // The first period ends start-up; then `windows` full periods after it.
    let deadline = Instant::now() + Duration::from_secs(30 + u64::from(windows) * 3);
    let need = windows as usize + 2;
    while periods.lock().map_or(0, |p| p.len()) < need && Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let stop_by = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < stop_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    let periods = periods.lock().map(|p| p.clone()).unwrap_or_default();
    let windows: Vec<Window> = periods
        .windows(2)
        .skip(1)
        .map(|w| Window {
            frames: w[1].rx_total.saturating_sub(w[0].rx_total),
            secs: w[1].at.duration_since(w[0].at).as_secs_f64(),
            cpu_secs: w[1]
                .cpu_ns
                .zip(w[0].cpu_ns)
                .map_or(f64::NAN, |(a, b)| a.saturating_sub(b) as f64 / 1e9),
        })
        .filter(|w| w.frames > 0)
        .collect();
    if windows.is_empty() {
        let log = log.lock().map(|l| l.clone()).unwrap_or_default();
        return Err(format!(
            "no stats periods from testpmd {mode}:\n{log}\n{stderr}"
        ));
    }
    Ok(windows)
}

/// Removes DPDK's runtime directories of this run (EAL makes one even without shared
/// config) on drop.
struct RuntimeDirs(Vec<PathBuf>);

impl Drop for RuntimeDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The child's half: every measurement, as raw JSON.
fn measure(opts: &BenchOpts, progress: &Progress) -> Result<Value, String> {
    let pid = std::process::id();
    let _dirs = RuntimeDirs(
        [format!("npfwd-{pid}"), format!("npfwd-tp-{pid}")]
            .iter()
            .map(|p| Path::new("/var/run/dpdk").join(p))
            .collect(),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus <= FWD_CPU {
        return Err(format!("needs at least {} CPUs", FWD_CPU + 1));
    }
    let (rounds, windows) = shape(opts);
    let load_before = crate::loadavg::all_three();
    let rig = Rig::new(&format!("npfwd-{pid}"))?;
    let mut series: [(&str, Vec<Window>); 4] = [
        ("worker", Vec::new()),
        ("worker_idle_udp", Vec::new()),
        ("testpmd_io", Vec::new()),
        ("testpmd_mac", Vec::new()),
    ];
    let (mut n2k, mut k2n) = (0u64, 0u64);
    for round in 0..rounds {
        // Interleaved, so that a noisy moment hits every series alike.
        let (w, c) = rig.run(Variant::NoFabric, windows)?;
        series[0].1.extend(w);
        n2k += c.0;
        k2n += c.1;
        series[2].1.extend(testpmd("io", windows)?);
        let (w, c) = rig.run(Variant::IdleUdp, windows)?;
        series[1].1.extend(w);
        n2k += c.0;
        k2n += c.1;
        series[3].1.extend(testpmd("mac", windows)?);
        let best = |v: &[Window]| v.iter().map(Window::mpps).fold(0.0, f64::max);
        progress.say(format_args!(
            "round {}/{rounds}: worker {:.2} Mpps, idle-UDP worker {:.2}, testpmd io {:.2}, mac {:.2} (best windows; load {})",
            round + 1,
            best(&series[0].1),
            best(&series[1].1),
            best(&series[2].1),
            best(&series[3].1),
            crate::loadavg::all_three()
        ));
    }
    let mut raw = serde_json::Map::new();
    for (name, v) in &series {
        raw.insert(
            (*name).into(),
            Value::Array(v.iter().map(Window::json).collect()),
        );
    }
    raw.insert("frame_len".into(), json!(FRAME_LEN));
    raw.insert("vdevs".into(), json!("net_null x2"));
    raw.insert("rounds".into(), json!(rounds));
    raw.insert("windows_per_round".into(), json!(windows));
    raw.insert(
        "frames_checked".into(),
        json!({"nic_to_kernel": n2k, "kernel_to_nic": k2n, "dropped": 0}),
    );
    raw.insert(
        "fabric_poll_interval_us".into(),
        json!(FABRIC_POLL_INTERVAL.as_micros()),
    );
    raw.insert("loadavg_before".into(), json!(load_before));
    raw.insert("loadavg_after".into(), json!(crate::loadavg::all_three()));
    Ok(Value::Object(raw))
}

fn series(raw: &Value, name: &str, per_cpu: bool) -> Vec<f64> {
    raw[name]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|w| {
                    w[if per_cpu {
                        "mpps_per_cpu_second"
                    } else {
                        "mpps"
                    }]
                    .as_f64()
                })
                .filter(|x| x.is_finite())
                .collect()
        })
        .unwrap_or_default()
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// The parent's half: figures from the raw results.
fn outcome(raw: &Value) -> Result<SuiteOutcome, String> {
    let io = series(raw, "testpmd_io", false);
    let mac = series(raw, "testpmd_mac", false);
    let io_cpu = series(raw, "testpmd_io", true);
    if io.is_empty() {
        return Err("no testpmd io-fwd windows".into());
    }
    let load = format!(
        "load average {} before, {} after",
        raw["loadavg_before"].as_str().unwrap_or("?"),
        raw["loadavg_after"].as_str().unwrap_or("?")
    );
    let shape = format!(
        "{} rounds x {} 1-s windows, interleaved",
        raw["rounds"], raw["windows_per_round"]
    );
    let target = format!("≥ {TARGET:.2}× testpmd io-fwd");
    let mut figures = Vec::new();
    for (key, what) in [
        ("worker", "no fabric"),
        ("worker_idle_udp", "idle UDP fabric"),
    ] {
        let wall = series(raw, key, false);
        let cpu = series(raw, key, true);
        let (w, t) = (best(&wall), best(&io));
        figures.push(
            Figure::new(
                format!("forwarding, 1 worker, {what}, net_null×2, 64 B (best window)"),
                w,
                "Mpps",
                Better::Higher,
            )
            .baseline("dpdk-testpmd io-fwd", t)
            .target(target.clone(), w >= TARGET * t)
            .note(format!(
                "both directions together; medians {:.2} vs {:.2}; {shape}; {load}",
                median(&wall),
                median(&io)
            )),
        );
        let (w, t) = (median(&cpu), median(&io_cpu));
        figures.push(
            Figure::new(
                format!("forwarding, 1 worker, {what}, per CPU-second of the forwarding thread (median)"),
                w,
                "Mpps/CPU-s",
                Better::Higher,
            )
            .baseline("dpdk-testpmd io-fwd, per CPU-second", t)
            .target(target.clone(), w >= TARGET * t)
            .note(format!(
                "frames / time the thread ran (schedstat): disturbed far less by load; {shape}; {load}"
            )),
        );
    }
    let w = best(&series(raw, "worker", false));
    figures.push(
        Figure::new(
            "forwarding, 1 worker, no fabric, against a forwarder that reads headers (best window)",
            w,
            "Mpps",
            Better::Higher,
        )
        .baseline("dpdk-testpmd mac-fwd", best(&mac))
        .note(format!(
            "mac-fwd rewrites each frame's MACs (touches the header as steering must; io-fwd never reads a frame); {load}"
        )),
    );
    let mut plot_series = Vec::new();
    for (key, label) in [
        ("worker", "worker, no fabric"),
        ("worker_idle_udp", "worker, idle UDP fabric"),
        ("testpmd_io", "testpmd io-fwd"),
        ("testpmd_mac", "testpmd mac-fwd"),
    ] {
        let v = series(raw, key, false);
        plot_series.push(Series {
            label: label.into(),
            points: v
                .iter()
                .enumerate()
                .map(|(i, &y)| (i as f64 + 1.0, y))
                .collect(),
        });
    }
    Ok(SuiteOutcome {
        figures,
        plots: vec![Plot {
            name: "forwarding-windows".into(),
            title: "Forwarding rate per 1-s window, net_null×2, 64 B, one core".into(),
            x_label: "window".into(),
            y_label: "Mpps".into(),
            series: plot_series,
            markers: Vec::new(),
        }],
        notes: vec![
            format!(
                "frames checked: {} NIC→kernel, {} kernel→NIC, none dropped",
                raw["frames_checked"]["nic_to_kernel"], raw["frames_checked"]["kernel_to_nic"]
            ),
            format!(
                "the idle UDP fabric is polled every {} µs while the ports are busy",
                raw["fabric_poll_interval_us"]
            ),
        ],
        raw: raw.clone(),
    })
}
