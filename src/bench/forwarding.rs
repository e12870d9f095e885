//! The forwarding suite: frames per second of one worker through the full loop
//! (`dataplane::worker::spawn`: rx burst, steer the burst, move it to tx buffers, tx burst,
//! drain timer, counters), against `dpdk-testpmd` on the same vdev pair in the same run.
//!
//! Setup. The worker's NIC and kernel ports are `net_null` vdevs, as are testpmd's two
//! ports; each side has one forwarding core (CPU 1) and a main thread that sleeps (CPU 0). `net_null` (default `copy=0`) gives each received mbuf a
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
//! Where the gap to io-fwd lies: a floor loop on the worker's own ports, queues, bursts and
//! CPU that moves each burst straight to the other port (io-fwd's work in this process),
//! once as is and once reading each frame's MACs (the least a forwarder that looks at
//! frames does). The worker against the second is the cost of steering itself.
//!
//! Memory: everything runs twice, on 4 kB pages (`--no-huge`, anywhere) and on 2 MB
//! hugepages (`--in-memory`, the production setup; needs root to reserve them, else the
//! report says why it was skipped), each in its own child process, both sides alike.
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
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::counters::CountersSnapshot;
use dataplane::dpdk::{Burst, Eal, Mbuf, Mempool, Port, PortConfig, PortStats, PKTMBUF_HEADROOM};
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
/// The node's own MAC (frames to it go NIC → kernel) and a LAN host's (kernel → NIC).
pub(super) const LOCAL: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 0, 0x01]);
pub(super) const LAN_HOST: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 0x0a, 0x01]);
/// The CPU of the forwarding loop (the worker's, and testpmd's forwarding lcore).
const FWD_CPU: usize = 1;
/// The worker thread's name, by which its CPU time is found.
const WORKER_NAME: &str = "np-fwd";
/// The floor loop's thread name.
const FLOOR_NAME: &str = "np-floor";
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
    let child = |key: &str, memory: Memory| {
        super::child::measure_in_child("forwarding", key, opts, progress, |o, p| {
            measure(o, p, memory)
        })
    };
    if std::env::var_os(CHILD_HUGE_ENV).is_some() {
        child(CHILD_HUGE_ENV, Memory::Huge)?;
        return Ok(SuiteOutcome::default());
    }
    let Some(raw) = child(CHILD_ENV, Memory::Small)? else {
        return Ok(SuiteOutcome::default());
    };
    // The same again on 2 MB pages, where hugepages can be reserved (root): the
    // production setup. Without, the figures say so rather than fail the suite.
    let huge = match HugepageReservation::new(HUGEPAGES) {
        Ok(_reserved) => {
            progress.say("again on 2 MB hugepages");
            child(CHILD_HUGE_ENV, Memory::Huge)
        }
        Err(e) => Err(e),
    };
    outcome(&raw, huge)
}

/// The memory the EAL of both sides (the worker's and testpmd's) runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Memory {
    /// 4 kB pages (`--no-huge`): runs anywhere, without root. In this VM every page is
    /// also a guest page, so a TLB miss walks two page tables: a frame's memory costs
    /// far more than on hugepages (testpmd io-fwd ran 2.5x faster per CPU-second on them).
    Small,
    /// 2 MB hugepages (`--in-memory`), as the daemon runs in production.
    Huge,
}

impl Memory {
    fn eal_args(self) -> &'static [&'static str] {
        match self {
            Memory::Small => &["--no-huge", "-m", "1024", "--no-shconf"],
            Memory::Huge => &["--in-memory"],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Memory::Small => "4 kB pages",
            Memory::Huge => "2 MB hugepages",
        }
    }
}

/// Set in the child that measures on hugepages.
const CHILD_HUGE_ENV: &str = "NICPROXY_BENCH_FORWARDING_HUGE_OUT";
/// 2 MB pages reserved for the hugepage run: the worker's pools (about 80 MB), testpmd's
/// (about 40 MB) and both EALs' own, with room to spare.
const HUGEPAGES: u64 = 300;
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Hugepages added to the system's reservation for the run, given back on drop (by
/// subtracting them again, so that a reservation someone else made meanwhile stays).
struct HugepageReservation(u64);

impl HugepageReservation {
    fn new(pages: u64) -> Result<Self, String> {
        let read = || -> Result<u64, String> {
            std::fs::read_to_string(NR_HUGEPAGES)
                .map_err(|e| format!("reading {NR_HUGEPAGES}: {e}"))?
                .trim()
                .parse()
                .map_err(|e| format!("parsing {NR_HUGEPAGES}: {e}"))
        };
        let before = read()?;
        std::fs::write(NR_HUGEPAGES, (before + pages).to_string()).map_err(|e| {
            format!("reserving {pages} hugepages in {NR_HUGEPAGES} (needs root): {e}")
        })?;
        let reservation = HugepageReservation(pages);
        let got = read()?.saturating_sub(before);
        if got < pages {
            return Err(format!(
                "reserving {pages} hugepages: the kernel gave {got} (memory too fragmented?)"
            ));
        }
        Ok(reservation)
    }
}

impl Drop for HugepageReservation {
    fn drop(&mut self) {
        if let Ok(now) = std::fs::read_to_string(NR_HUGEPAGES) {
            if let Ok(now) = now.trim().parse::<u64>() {
                let _ = std::fs::write(NR_HUGEPAGES, now.saturating_sub(self.0).to_string());
            }
        }
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
    fn new(prefix: &str, memory: Memory) -> Result<Rig, String> {
        let mut args = vec!["--no-pci"];
        args.extend_from_slice(memory.eal_args());
        let prefix = format!("--file-prefix={prefix}");
        args.extend_from_slice(&[
            &prefix,
            // The main thread (which sleeps) on CPU 0; the worker pins itself to FWD_CPU.
            "-l",
            "0",
            "--log-level=*:error",
            "--no-telemetry",
        ]);
        let eal = Eal::init(&args).map_err(|e| e.to_string())?;
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
        let table = one_node_table()?;
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
        let out = sample_windows(windows, || {
            Ok((Instant::now(), total(&w.counters()), task_cpu_ns(pid, tid)))
        })?;
        w.stop().map_err(|e| e.to_string())?;
        // The loop drains its queues on the way out, so the counts now balance exactly.
        let checked = check_balance(
            &(stats(&self.nic)?, nic_before),
            &(stats(&self.kernel)?, kernel_before),
        )?;
        Ok((out, checked))
    }
}

/// The floor a forwarder built on nicproxy's wrappers stands on: the same ports, queues,
/// [`Burst`]s and CPU as the worker, moving each received burst straight to the other
/// port with no steering, counters or tx buffering (testpmd io-fwd's work, in this
/// process). With `touch`, it also reads each frame's first 8 bytes (a destination MAC),
/// the least any forwarder that looks at frames does. Not nicproxy's path: a measurement
/// of what the worker's path costs on top of it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Floor {
    Io,
    ReadHeader,
}

impl Rig {
    /// Runs the floor loop for `windows` 1-second windows.
    fn run_floor(&self, floor: Floor, windows: u32) -> Result<Vec<Window>, String> {
        let q = |p: &Port| p.queue(0).map_err(|e| e.to_string());
        let (mut nic, mut kernel) = (q(&self.nic)?, q(&self.kernel)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (eal, flag) = (self.eal.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(FLOOR_NAME.into())
            .spawn(move || -> Result<u64, String> {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: FWD_CPU }) {
                    return Err(format!("pinning the floor loop to CPU {FWD_CPU}"));
                }
                let _lcore = eal.register_thread().map_err(|e| e.to_string())?;
                let mut rx: Burst = Burst::new();
                let mut seen = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    for dir in 0..2 {
                        let (from, to) = if dir == 0 {
                            (&mut nic, &mut kernel)
                        } else {
                            (&mut kernel, &mut nic)
                        };
                        if from.rx_burst(&mut rx) == 0 {
                            continue;
                        }
                        if floor == Floor::ReadHeader {
                            for m in rx.iter() {
                                if let Some(h) = m.data().first_chunk::<8>() {
                                    seen ^= u64::from_ne_bytes(*h);
                                }
                            }
                        }
                        to.tx_burst(&mut rx);
                        rx.free_all();
                    }
                }
                Ok(std::hint::black_box(seen))
            })
            .map_err(|e| format!("starting the floor loop: {e}"))?;
        let pid = std::process::id();
        let total = || -> Result<u64, String> {
            let (n, k) = (self.nic.stats(), self.kernel.stats());
            Ok(n.map_err(|e| e.to_string())?.rx_packets + k.map_err(|e| e.to_string())?.rx_packets)
        };
        std::thread::sleep(Duration::from_millis(300));
        let measured = (|| {
            let tid = find_task(pid, FLOOR_NAME).ok_or("the floor thread is not in /proc")?;
            sample_windows(windows, || {
                Ok((Instant::now(), total()?, task_cpu_ns(pid, tid)))
            })
        })();
        stop.store(true, Ordering::Relaxed);
        thread
            .join()
            .map_err(|_| "the floor loop panicked".to_string())??;
        measured
    }
}

/// The steering table of a node alone on its LAN: one domain, out of the NIC, with the
/// kernel port and [`LOCAL`] as its own MAC.
pub(super) fn one_node_table() -> Result<MacTableBuilder, String> {
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
    Ok(table)
}

/// Samples (when, frames so far, the thread's CPU ns so far) now and after each of
/// `windows` 1-second windows; returns the windows.
fn sample_windows(
    windows: u32,
    mut sample: impl FnMut() -> Result<(Instant, u64, Option<u64>), String>,
) -> Result<Vec<Window>, String> {
    let mut last = sample()?;
    let mut out = Vec::new();
    for _ in 0..windows {
        std::thread::sleep(Duration::from_secs(1));
        let now = sample()?;
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
    Ok(out)
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
fn testpmd(mode: &str, windows: u32, memory: Memory) -> Result<Vec<Window>, String> {
    let prefix = format!("npfwd-tp-{}", std::process::id());
    // Line-buffered: its stats must arrive as they are printed, not when a pipe buffer fills.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "dpdk-testpmd"])
        .args(["-l", &format!("0,{FWD_CPU}"), "--no-pci"])
        .args(memory.eal_args())
        .arg(format!("--file-prefix={prefix}"))
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

/// The child's half: every measurement, as raw JSON.
fn measure(opts: &BenchOpts, progress: &Progress, memory: Memory) -> Result<Value, String> {
    let pid = std::process::id();
    let _dirs =
        super::child::RuntimeDirs::of(&[&format!("npfwd-{pid}"), &format!("npfwd-tp-{pid}")]);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus <= FWD_CPU {
        return Err(format!("needs at least {} CPUs", FWD_CPU + 1));
    }
    let (rounds, windows) = shape(opts);
    let load_before = crate::loadavg::all_three();
    let rig = Rig::new(&format!("npfwd-{pid}"), memory)?;
    let mut series: [(&str, Vec<Window>); 6] = [
        ("worker", Vec::new()),
        ("worker_idle_udp", Vec::new()),
        ("testpmd_io", Vec::new()),
        ("testpmd_mac", Vec::new()),
        ("floor_io", Vec::new()),
        ("floor_read_header", Vec::new()),
    ];
    let (mut n2k, mut k2n) = (0u64, 0u64);
    for round in 0..rounds {
        // Interleaved, so that a noisy moment hits every series alike.
        let (w, c) = rig.run(Variant::NoFabric, windows)?;
        series[0].1.extend(w);
        n2k += c.0;
        k2n += c.1;
        series[2].1.extend(testpmd("io", windows, memory)?);
        let (w, c) = rig.run(Variant::IdleUdp, windows)?;
        series[1].1.extend(w);
        n2k += c.0;
        k2n += c.1;
        series[3].1.extend(testpmd("mac", windows, memory)?);
        series[4].1.extend(rig.run_floor(Floor::Io, windows)?);
        series[5]
            .1
            .extend(rig.run_floor(Floor::ReadHeader, windows)?);
        let best = |v: &[Window]| v.iter().map(Window::mpps).fold(0.0, f64::max);
        progress.say(format_args!(
            "{}, round {}/{rounds}: worker {:.2} Mpps, idle-UDP worker {:.2}, testpmd io {:.2}, mac {:.2} (best windows; load {})",
            memory.label(),
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
    raw.insert("tsc_hz".into(), json!(rig.eal.tsc_hz()));
    raw.insert("vdevs".into(), json!("net_null x2"));
    raw.insert("memory".into(), json!(memory.label()));
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

/// The parent's half: figures from the raw results, on 4 kB pages and, when measured, on
/// hugepages (or why not).
fn outcome(small: &Value, huge: Result<Option<Value>, String>) -> Result<SuiteOutcome, String> {
    let mut out = memory_outcome(small)?;
    let mut raw = serde_json::Map::new();
    raw.insert("pages_4k".into(), small.clone());
    match huge {
        Ok(Some(h)) => {
            let more = memory_outcome(&h)?;
            out.figures.extend(more.figures);
            out.plots.extend(more.plots);
            out.notes.extend(more.notes);
            raw.insert("hugepages_2m".into(), h);
        }
        Ok(None) => {}
        Err(e) => out
            .notes
            .push(format!("not measured on 2 MB hugepages: {e}")),
    }
    out.raw = Value::Object(raw);
    Ok(out)
}

/// The figures of one memory setup.
fn memory_outcome(raw: &Value) -> Result<SuiteOutcome, String> {
    let pages = raw["memory"].as_str().unwrap_or("4 kB pages");
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
                format!("forwarding, 1 worker, {what}, net_null×2, 64 B, {pages} (best window)"),
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
                format!("forwarding, 1 worker, {what}, {pages}, per CPU-second of the forwarding thread (median)"),
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
            format!("forwarding, 1 worker, no fabric, {pages}, against a forwarder that reads headers (best window)"),
            w,
            "Mpps",
            Better::Higher,
        )
        .baseline("dpdk-testpmd mac-fwd", best(&mac))
        .note(format!(
            "mac-fwd rewrites each frame's MACs (touches the header as steering must; io-fwd never reads a frame); {load}"
        )),
    );
    // Where the gap to io-fwd is: the same loop without steering in this process, with
    // and without reading each frame's header (figures without a target: evidence).
    let io_cpu_median = median(&io_cpu);
    for (key, what) in [
        ("floor_io", "rx→tx, no steering"),
        (
            "floor_read_header",
            "rx→tx reading each frame's MACs, no steering",
        ),
    ] {
        let cpu = series(raw, key, true);
        if cpu.is_empty() {
            continue;
        }
        figures.push(
            Figure::new(
                format!("forwarding floor on nicproxy's wrappers, {what}, {pages}, per CPU-second (median)"),
                median(&cpu),
                "Mpps/CPU-s",
                Better::Higher,
            )
            .baseline("dpdk-testpmd io-fwd, per CPU-second", io_cpu_median)
            .note(format!(
                "the worker's ports, queues, bursts and CPU, with none of its work: what any forwarder on them pays; {shape}; {load}"
            )),
        );
    }
    let floor_read = median(&series(raw, "floor_read_header", true));
    if floor_read > 0.0 {
        figures.push(
            Figure::new(
                format!("forwarding, 1 worker, no fabric, {pages}, against the floor that reads headers, per CPU-second (median)"),
                median(&series(raw, "worker", true)),
                "Mpps/CPU-s",
                Better::Higher,
            )
            .baseline("floor loop reading each frame's MACs, per CPU-second", floor_read)
            .note(format!(
                "the ratio is the cost of steering, counters and tx buffering alone; {shape}; {load}"
            )),
        );
    }
    // What the target leaves for steering: at ≥ 0.90× io-fwd the worker may spend at most
    // io-fwd's own time per frame / 9 on top of it (per CPU-second: load disturbs it least).
    let worker_cpu = median(&series(raw, "worker", true));
    if worker_cpu > 0.0 && io_cpu_median > 0.0 {
        // In TSC cycles, the steering suite's unit.
        let ghz = raw["tsc_hz"].as_f64().unwrap_or(0.0) / 1e9;
        if ghz > 0.0 {
            let (io_c, worker_c) = (1e3 * ghz / io_cpu_median, 1e3 * ghz / worker_cpu);
            figures.push(
                Figure::new(
                    format!("forwarding, 1 worker, no fabric, {pages}: cycles per frame on top of io-fwd's, per CPU-second (median)"),
                    worker_c - io_c,
                    "cycles/frame",
                    Better::Lower,
                )
                .baseline(format!("what ≥ {TARGET:.2}× io-fwd leaves: io-fwd's cycles per frame × (1/{TARGET:.2} − 1)"), io_c * (1.0 / TARGET - 1.0))
                .note(format!(
                    "io-fwd {io_c:.1} cycles/frame, the worker {worker_c:.1} (TSC {ghz:.2} GHz); compare the steering suite's cycles per frame for the decision alone; {shape}; {load}"
                )),
            );
        }
    }
    let mut plot_series = Vec::new();
    for (key, label) in [
        ("worker", "worker, no fabric"),
        ("worker_idle_udp", "worker, idle UDP fabric"),
        ("testpmd_io", "testpmd io-fwd"),
        ("testpmd_mac", "testpmd mac-fwd"),
        ("floor_io", "floor loop, no steering"),
        ("floor_read_header", "floor loop reading headers"),
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
            name: format!(
                "forwarding-windows-{}",
                if pages.starts_with('2') { "huge" } else { "4k" }
            ),
            title: format!("Forwarding rate per 1-s window, net_null×2, 64 B, one core, {pages}"),
            x_label: "window".into(),
            y_label: "Mpps".into(),
            series: plot_series,
            markers: Vec::new(),
        }],
        notes: vec![
            format!(
                "{pages}: frames checked: {} NIC→kernel, {} kernel→NIC, none dropped",
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
