//! Forwarding rate of one worker through the full steering loop (`worker::spawn`, the real
//! loop: rx burst, steer every frame, queue, tx burst, drain timer, counters), against
//! `dpdk-testpmd` io-fwd on the same kind of vdevs, measured in the same run.
//!
//! Setup. The worker's NIC and kernel ports are `net_null` vdevs, as are testpmd's two ports;
//! each side has one forwarding core (CPU 1) and a main thread that sleeps (CPU 0). Both run
//! without hugepages. `net_null` with its default `copy=0` gives each received mbuf a length
//! of 64 bytes and leaves its data as it was, so before the run every mbuf of the NIC's pool
//! is stamped with a valid frame to the node's own MAC (steered NIC -> kernel), and every
//! mbuf of the kernel port's pool with a frame to a LAN MAC (steered kernel -> NIC, the
//! uplink). Nothing on the path writes frame data, so the stamps stay. Every frame is thus
//! really classified, looked up and sent on by the steering rules; the run asserts that no
//! frame was dropped and that each port sent exactly what the other received (a drop would
//! not be forwarding). testpmd io-fwd does the same two streams (port 0 -> 1, 1 -> 0) without
//! looking at the frames.
//!
//! Two worker variants: with no fabric (`FabricIo::None`), the forwarding loop alone; and
//! with an idle UDP fabric as the daemon runs it, whose `recvmmsg` every loop iteration
//! costs a system call.
//!
//! Each variant runs `NP_FWD_ROUNDS` rounds (default 3) of `NP_FWD_SECONDS` one-second
//! windows (default 3), interleaved; the best window counts (the machine is shared and
//! noisy; the best is the figure least disturbed by other tenants), the median is shown too.
//! Prints a table, then one JSON line.
//!
//! Run: `cargo bench --bench forwarding` (needs `dpdk-testpmd`, from Debian's `dpdk`).

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::counters::CountersSnapshot;
use dataplane::dpdk::{Eal, Mbuf, Mempool, Port, PortConfig, PKTMBUF_HEADROOM};
use dataplane::fabric::udp::UdpFabric;
use dataplane::steer::{table_channel, DomainId, DomainInfo, MacTableBuilder, SessionId, Uplink};
use dataplane::wire::MacAddr;
use dataplane::worker::{
    self, FabricIo, Polling, UdpIo, WorkerHandle, WorkerSetup, PORT_KERNEL, PORT_NIC,
};

const FRAME_LEN: usize = 64;
const POOL_MBUFS: u32 = 16_383;
const LOCAL: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 0, 0x01]);
const LAN_HOST: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 0x0a, 0x01]);
/// The CPU of the forwarding loop (the worker's, and testpmd's forwarding lcore).
const FWD_CPU: usize = 1;

fn env_num(key: &str, default: u32) -> u32 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
fn stamp(pool: &Mempool, frame: &[u8]) {
    let mut all = Vec::with_capacity(pool.capacity() as usize);
    while let Some(mut m) = Mbuf::alloc(pool) {
        let len = u16::try_from(frame.len()).expect("short frame");
        m.append(len)
            .expect("room for a 64-byte frame")
            .copy_from_slice(frame);
        all.push(m);
    }
    assert_eq!(
        all.len(),
        pool.capacity() as usize,
        "every mbuf of {} stamped",
        pool.name()
    );
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    NoFabric,
    IdleUdp,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::NoFabric => "worker, no fabric",
            Variant::IdleUdp => "worker, idle UDP fabric",
        }
    }
}

/// Per-window rates of one run, in packets per second (both directions together), plus
/// the two directions' share of the total.
struct RunRates {
    windows: Vec<f64>,
    nic_to_kernel: u64,
    kernel_to_nic: u64,
}

impl Rig {
    fn new(prefix: &str) -> Rig {
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
        .expect("EAL init");
        let nic_pool =
            Mempool::new(&eal, "fwd-nic", POOL_MBUFS, 256, 2048 + PKTMBUF_HEADROOM).expect("pool");
        let kernel_pool =
            Mempool::new(&eal, "fwd-kernel", POOL_MBUFS, 256, 2048 + PKTMBUF_HEADROOM)
                .expect("pool");
        // NIC -> kernel: to our own MAC. Kernel -> NIC: to a LAN MAC (not in the table: out
        // of the uplink).
        stamp(&nic_pool, &frame(LOCAL, LAN_HOST));
        stamp(&kernel_pool, &frame(LAN_HOST, LOCAL));
        let size = format!("size={FRAME_LEN}");
        let nic =
            Port::open(&format!("net_null0,{size}"), &PortConfig::new(nic_pool)).expect("NIC port");
        let kernel = Port::open(&format!("net_null1,{size}"), &PortConfig::new(kernel_pool))
            .expect("kernel port");
        let fabric_pool =
            Mempool::new(&eal, "fwd-fabric", 1023, 32, 2048 + PKTMBUF_HEADROOM).expect("pool");
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
            .expect("domain");
        table.add_local(DomainId(0), LOCAL).expect("local MAC");
        Rig {
            eal,
            nic,
            kernel,
            fabric_pool,
            table,
        }
    }

    fn spawn(&self, variant: Variant) -> WorkerHandle {
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
                    .expect("a free UDP port on loopback");
                FabricIo::Udp(UdpIo::new(sock, self.fabric_pool.clone()))
            }
        };
        let (_publisher, reader) = table_channel(self.table.clone().build(), 8);
        worker::spawn(
            &self.eal,
            WorkerSetup {
                name: "np-fwd".into(),
                core: Some(FWD_CPU),
                polling: Polling::Busy,
                nic: self.nic.queue(0).expect("NIC queue"),
                kernel: self.kernel.queue(0).expect("kernel queue"),
                fabric,
                table: reader,
                drain_interval: Duration::from_micros(100),
            },
        )
        .expect("spawn the worker")
    }

    fn run(&self, variant: Variant, windows: u32) -> RunRates {
        let nic_before = self.nic.stats().expect("stats");
        let kernel_before = self.kernel.stats().expect("stats");
        let w = self.spawn(variant);
        std::thread::sleep(Duration::from_millis(300));
        let total =
            |s: &CountersSnapshot| s.ports[PORT_NIC].rx_packets + s.ports[PORT_KERNEL].rx_packets;
        let mut last = (Instant::now(), w.counters());
        let mut rates = Vec::new();
        for _ in 0..windows {
            std::thread::sleep(Duration::from_secs(1));
            let now = (Instant::now(), w.counters());
            let dt = now.0.duration_since(last.0).as_secs_f64();
            rates.push((total(&now.1) - total(&last.1)) as f64 / dt);
            last = now;
        }
        w.stop().expect("worker stops cleanly");
        // The loop drains its queues on the way out, so the counts now balance exactly.
        let c = last_counters_after_stop(&self.nic, &self.kernel, nic_before, kernel_before);
        RunRates {
            windows: rates,
            nic_to_kernel: c.0,
            kernel_to_nic: c.1,
        }
    }
}

/// After a run: frames the worker sent out of each null port (port stats), which must equal
/// what the other port received; returns (NIC -> kernel, kernel -> NIC).
fn last_counters_after_stop(
    nic: &Port,
    kernel: &Port,
    nic_before: dataplane::dpdk::PortStats,
    kernel_before: dataplane::dpdk::PortStats,
) -> (u64, u64) {
    let n = nic.stats().expect("stats");
    let k = kernel.stats().expect("stats");
    let nic_rx = n.rx_packets - nic_before.rx_packets;
    let nic_tx = n.tx_packets - nic_before.tx_packets;
    let k_rx = k.rx_packets - kernel_before.rx_packets;
    let k_tx = k.tx_packets - kernel_before.tx_packets;
    assert!(nic_rx > 0 && k_rx > 0, "frames flowed both ways");
    assert_eq!(
        k_tx, nic_rx,
        "every frame from the NIC was steered to the kernel and sent (none dropped)"
    );
    assert_eq!(
        nic_tx, k_rx,
        "every frame from the kernel was steered to the NIC and sent (none dropped)"
    );
    (nic_rx, k_rx)
}

/// Runs testpmd io-fwd on two null vdevs for `windows` one-second stats periods; returns the
/// rate (both ports' rx together) of each full period.
fn testpmd(windows: u32) -> Vec<f64> {
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
        .args(["--forward-mode=io", "--nb-cores=1", "--stats-period=1"])
        .arg(format!("--total-num-mbufs={POOL_MBUFS}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting dpdk-testpmd (Debian package dpdk) under stdbuf (coreutils)");
    let out = child.stdout.take().expect("piped stdout");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let mut started = Some(started_tx);
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // The first stats block ends the start-up period.
            if line.contains("Port statistics") {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
            s.push_str(&line);
            s.push('\n');
        }
        s
    });
    let mut err = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // Start-up (until the first stats block, whose period is partial), then the windows,
    // then a period and a half so the last one is printed (testpmd prints every 1-2 s).
    let _ = started_rx.recv_timeout(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500) + Duration::from_secs(u64::from(windows)));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let rates = parse_testpmd(&stdout);
    assert!(
        !rates.is_empty(),
        "no stats from testpmd:\n{stdout}\n{stderr}"
    );
    rates
}

/// Sums the ports' `Rx-pps` of each periodic stats block. The first block measures from
/// start-up (a partial period), so it is skipped.
fn parse_testpmd(out: &str) -> Vec<f64> {
    let mut periods = Vec::new();
    for block in out.split("Port statistics").skip(1) {
        let pps: f64 = block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Rx-pps:"))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .sum();
        periods.push(pps);
    }
    periods.into_iter().skip(1).collect()
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes DPDK's runtime directories of this run (EAL makes one even without shared
/// config) on drop.
struct RuntimeDirs(Vec<std::path::PathBuf>);

impl Drop for RuntimeDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn main() {
    let pid = std::process::id();
    let _dirs = RuntimeDirs(
        [format!("npfwd-{pid}"), format!("npfwd-tp-{pid}")]
            .iter()
            .map(|p| std::path::Path::new("/var/run/dpdk").join(p))
            .collect(),
    );
    let windows = env_num("NP_FWD_SECONDS", 3).max(1);
    let rounds = env_num("NP_FWD_ROUNDS", 3).max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus > FWD_CPU, "needs at least 2 CPUs");
    let load_before = loadavg();
    let rig = Rig::new(&format!("npfwd-{pid}"));

    let mut worker = Vec::new();
    let mut worker_udp = Vec::new();
    let mut pmd = Vec::new();
    let (mut n2k, mut k2n) = (0u64, 0u64);
    for round in 0..rounds {
        let r = rig.run(Variant::NoFabric, windows);
        n2k += r.nic_to_kernel;
        k2n += r.kernel_to_nic;
        worker.extend(r.windows);
        let t = testpmd(windows);
        pmd.extend(t);
        let r = rig.run(Variant::IdleUdp, windows);
        worker_udp.extend(r.windows);
        eprintln!(
            "round {}/{rounds}: worker best {:.2} Mpps, idle-UDP worker best {:.2}, testpmd best {:.2} (load {})",
            round + 1,
            best(&worker) / 1e6,
            best(&worker_udp) / 1e6,
            best(&pmd) / 1e6,
            loadavg()
        );
    }
    let load_after = loadavg();
    let (w, wu, t) = (best(&worker), best(&worker_udp), best(&pmd));
    println!(
        "forwarding, {FRAME_LEN}-byte frames, net_null x2, one forwarding core, both directions together"
    );
    println!(
        "{:<26} {:>10} {:>10} {:>9} {:>8}",
        "path", "best Mpps", "median", "windows", "ratio"
    );
    for (name, v) in [
        (Variant::NoFabric.name(), &worker),
        (Variant::IdleUdp.name(), &worker_udp),
        ("testpmd io-fwd", &pmd),
    ] {
        println!(
            "{name:<26} {:>10.2} {:>10.2} {:>9} {:>7.2}x",
            best(v) / 1e6,
            median(v) / 1e6,
            v.len(),
            best(v) / t
        );
    }
    println!(
        "worker frames checked: {n2k} NIC->kernel and {k2n} kernel->NIC, none dropped; load average {load_before} before, {load_after} after"
    );
    println!(
        r#"{{"bench":"forwarding","unit":"Mpps","frame_len":{FRAME_LEN},"vdevs":"net_null x2","worker_mpps":{:.3},"worker_idle_udp_mpps":{:.3},"testpmd_mpps":{:.3},"ratio":{:.3},"ratio_idle_udp":{:.3},"worker_median_mpps":{:.3},"testpmd_median_mpps":{:.3},"rounds":{rounds},"windows_per_round":{windows},"loadavg_before":"{load_before}","loadavg_after":"{load_after}"}}"#,
        w / 1e6,
        wu / 1e6,
        t / 1e6,
        w / t,
        wu / t,
        median(&worker) / 1e6,
        median(&pmd) / 1e6,
    );
}
