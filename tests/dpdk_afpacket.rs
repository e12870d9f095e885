//! DPDK's af_packet PMD on one end of a veth pair, the kernel on the other, inside a network
//! namespace the test makes: the kernel side sends 10,000 checked frames of mixed sizes
//! (60..=1514 bytes) through a raw socket, the DPDK side echoes each one back with its MACs
//! swapped, and the kernel side checks that every frame came back once and intact. Then the
//! port's link state follows the peer going down and up, and the mempool is back to its
//! baseline.
//!
//! The EAL runs in a child process inside the namespace (one EAL per process, and af_packet
//! binds to interfaces of its own namespace): the outer test re-runs this binary there.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{dpdk, env_param, inner_test_requested, run_self, Netns, Veth};
use dataplane::dpdk::{Burst, Eal, Mempool, Port, PortConfig, PKTMBUF_HEADROOM};
use dataplane::sys::raw_socket::RawSocket;

const FRAMES: u32 = 10_000;
/// Frames in flight at most: well below the af_packet rx ring (512 frames) and the raw
/// socket's receive buffer, so pacing, not luck, keeps the kernel from dropping.
const WINDOW: u32 = 64;
/// Local experimental EtherType; anything else on the wire (there should be nothing) is ignored.
const ETHERTYPE: [u8; 2] = [0x88, 0xB5];
const MIN_LEN: usize = 60;
const MAX_LEN: usize = 1514;
/// No frame back for this long while some are outstanding means they were lost.
const STALL: Duration = Duration::from_secs(3);

#[test]
fn dpdk_afpacket_echo() {
    let ns = Netns::new("npaf");
    // No IPv6 autoconfiguration noise on the veth pair.
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    let veth = Veth::new_in(&ns, "npdpdk0", "npkern0");
    let prefix = common::unique_name("npaf");
    let _dir = dpdk::RuntimeDir::new(&prefix);
    let run = run_self(
        "inner_afpacket_echo",
        Some(&ns),
        &[
            ("NP_PREFIX", &prefix),
            ("NP_DPDK_IFACE", veth.a()),
            ("NP_KERNEL_IFACE", veth.b()),
        ],
        Duration::from_secs(180),
    );
    run.assert_passed();
    for line in run.stdout.lines().filter(|l| l.starts_with("afpacket:")) {
        eprintln!("{line}");
    }
    eprintln!("af_packet echo child took {:?}", run.elapsed);
}

/// What the kernel-side peer saw.
#[derive(Debug, Default)]
struct PeerReport {
    sent: u32,
    received: u32,
    corrupt: u32,
    duplicates: u32,
    send_retries: u32,
    foreign: u32,
    elapsed: Duration,
    missing: Vec<u32>,
}

fn frame_len(seq: u32) -> usize {
    MIN_LEN + (seq as usize * 7919) % (MAX_LEN - MIN_LEN + 1)
}

fn payload_byte(seq: u32, i: usize) -> u8 {
    (seq.wrapping_mul(31) as usize + i * 7) as u8
}

/// dst, src, EtherType, seq (BE), then a pattern derived from seq and position.
fn build_frame(buf: &mut [u8], seq: u32, dst: [u8; 6], src: [u8; 6]) -> usize {
    let len = frame_len(seq);
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ETHERTYPE);
    buf[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in buf[18..len].iter_mut().enumerate() {
        *b = payload_byte(seq, i);
    }
    len
}

/// The sequence number of an intact echo (MACs swapped), or why it is not one.
fn check_echo(frame: &[u8], kernel_mac: [u8; 6], dpdk_mac: [u8; 6]) -> Result<u32, &'static str> {
    if frame.len() < 18 || frame[12..14] != ETHERTYPE {
        return Err("foreign");
    }
    let seq = u32::from_be_bytes(frame[14..18].try_into().expect("4 bytes"));
    if seq >= FRAMES || frame.len() != frame_len(seq) {
        return Err("corrupt");
    }
    if frame[0..6] != kernel_mac || frame[6..12] != dpdk_mac {
        return Err("corrupt");
    }
    if frame[18..]
        .iter()
        .enumerate()
        .any(|(i, b)| *b != payload_byte(seq, i))
    {
        return Err("corrupt");
    }
    Ok(seq)
}

fn read_mac(iface: &str) -> [u8; 6] {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .expect("read MAC from sysfs");
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    mac
}

fn run_peer(iface: &str, dpdk_mac: [u8; 6]) -> PeerReport {
    let sock = RawSocket::bind(iface).expect("raw socket on the kernel end");
    sock.set_recv_buffer(8 << 20).expect("receive buffer");
    let kernel_mac = read_mac(iface);
    let mut seen = vec![false; FRAMES as usize];
    let mut report = PeerReport::default();
    let mut tx = [0u8; MAX_LEN];
    let mut rx = [0u8; 2048];
    let start = Instant::now();
    let mut last_progress = Instant::now();
    while report.received < FRAMES {
        while report.sent < FRAMES && report.sent - (report.received + report.corrupt) < WINDOW {
            let len = build_frame(&mut tx, report.sent, dpdk_mac, kernel_mac);
            match sock.send(&tx[..len]) {
                Ok(_) => report.sent += 1,
                Err(e) if matches!(e.source.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) => {
                    // The send was refused, nothing went out: try the same frame again.
                    report.send_retries += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => panic!("{e}"),
            }
        }
        match sock
            .recv(&mut rx, Duration::from_millis(100))
            .expect("recv")
        {
            Some(n) => match check_echo(&rx[..n.min(rx.len())], kernel_mac, dpdk_mac) {
                Ok(seq) => {
                    if std::mem::replace(&mut seen[seq as usize], true) {
                        report.duplicates += 1;
                    } else {
                        report.received += 1;
                        last_progress = Instant::now();
                    }
                }
                Err("foreign") => report.foreign += 1,
                Err(_) => report.corrupt += 1,
            },
            None if last_progress.elapsed() > STALL => break,
            None => {}
        }
    }
    report.elapsed = start.elapsed();
    report.missing = (0..FRAMES)
        .filter(|s| !seen[*s as usize])
        .take(20)
        .collect();
    report
}

fn iface_flags(iface: &str) -> u32 {
    let text =
        std::fs::read_to_string(format!("/sys/class/net/{iface}/flags")).expect("read flags");
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).expect("hex flags")
}

fn wait_link(port: &Port, up: bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if port.link().expect("link").up == up {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!(
        "link of {} did not go {} within 5 s",
        port.name(),
        if up { "up" } else { "down" }
    );
}

#[test]
#[ignore = "runs only as the child of dpdk_afpacket_echo, inside its namespace"]
fn inner_afpacket_echo() {
    if !inner_test_requested("inner_afpacket_echo") {
        return;
    }
    let prefix = env_param("NP_PREFIX");
    let dpdk_iface = env_param("NP_DPDK_IFACE");
    let kernel_iface = env_param("NP_KERNEL_IFACE");

    // The peer thread starts before EAL so that it keeps its own CPU affinity.
    let (mac_tx, mac_rx) = mpsc::channel::<[u8; 6]>();
    let peer_done = Arc::new(AtomicBool::new(false));
    let peer = {
        let done = Arc::clone(&peer_done);
        let iface = kernel_iface.clone();
        std::thread::spawn(move || {
            let Ok(mac) = mac_rx.recv() else {
                return PeerReport::default();
            };
            let report = run_peer(&iface, mac);
            done.store(true, Ordering::Release);
            report
        })
    };

    let eal = Eal::init(&dpdk::eal_args(&prefix)).expect("EAL init");
    let pool = Mempool::new(&eal, "np_afp", 4095, 128, 2048 + PKTMBUF_HEADROOM).expect("mempool");
    let mut cfg = PortConfig::new(pool.clone());
    cfg.promiscuous = true;
    let mut port = Port::open(&format!("net_af_packet0,iface={dpdk_iface}"), &cfg)
        .expect("open af_packet port");
    let mac = port.mac().expect("MAC");
    assert_eq!(mac, read_mac(&dpdk_iface), "port MAC is the interface's");
    assert!(port.is_promiscuous());
    assert_ne!(
        iface_flags(&dpdk_iface) & libc::IFF_PROMISC as u32,
        0,
        "kernel sees promiscuous mode"
    );
    wait_link(&port, true);
    let baseline = pool.in_use();
    println!(
        "afpacket: port {} ({}) mac {mac:02x?}, pool in use at start: {baseline}",
        port.name(),
        port.id()
    );

    mac_tx.send(mac).expect("start the peer");
    let mut burst: Burst = Burst::new();
    let (mut echoed, mut tx_retries, mut dropped) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut idle = 0u32;
    while !peer_done.load(Ordering::Acquire) && Instant::now() < deadline {
        if port.rx_burst(0, &mut burst) == 0 {
            // Adaptive polling: the peer shares our two cores.
            idle += 1;
            if idle > 64 {
                std::thread::sleep(Duration::from_micros(50));
            }
            continue;
        }
        idle = 0;
        for m in burst.iter_mut() {
            let data = m.data_mut().expect("a received mbuf is exclusive");
            if data.len() >= 12 {
                let (dst, src) = data[..12].split_at_mut(6);
                dst.swap_with_slice(src);
            }
        }
        let mut attempts = 0;
        while !burst.is_empty() && attempts < 1000 {
            echoed += port.tx_burst(0, &mut burst) as u64;
            if !burst.is_empty() {
                tx_retries += 1;
                attempts += 1;
                std::thread::yield_now();
            }
        }
        dropped += burst.free_all() as u64;
    }
    let report = peer.join().expect("peer thread");
    let stats = port.stats().expect("stats");
    println!(
        "afpacket: peer sent {} got back {} intact in {:?} ({:.0} frames/s round trip), corrupt {}, duplicates {}, foreign {}, send retries {}",
        report.sent,
        report.received,
        report.elapsed,
        f64::from(report.received) / report.elapsed.as_secs_f64(),
        report.corrupt,
        report.duplicates,
        report.foreign,
        report.send_retries
    );
    println!("afpacket: dpdk echoed {echoed}, tx retries {tx_retries}, dropped {dropped}; port stats {stats:?}");
    assert_eq!(report.sent, FRAMES);
    assert_eq!(
        report.received, FRAMES,
        "frames lost; first missing: {:?}",
        report.missing
    );
    assert_eq!(report.corrupt, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(dropped, 0);
    assert!(stats.rx_packets >= u64::from(FRAMES), "{stats:?}");
    assert!(stats.tx_packets >= u64::from(FRAMES), "{stats:?}");
    drop(burst);
    assert_eq!(pool.in_use(), baseline, "every mbuf went back to the pool");

    // af_packet's link state is set by start/stop only: it does not follow the kernel
    // interface's carrier, and it cannot set the link or add MACs. Those calls must fail
    // cleanly with ENOTSUP, and MTU changes reach the kernel interface.
    common::run("ip", &["link", "set", &kernel_iface, "down"]);
    std::thread::sleep(Duration::from_millis(100));
    println!(
        "afpacket: link with the kernel peer down: {:?} (af_packet does not track carrier)",
        port.link().expect("link")
    );
    common::run("ip", &["link", "set", &kernel_iface, "up"]);
    for result in [
        port.set_link_down(),
        port.set_link_up(),
        port.add_mac([2, 0, 0, 0, 0, 9]),
    ] {
        let err = result.expect_err("af_packet does not support this");
        assert_eq!(err.errno(), Some(libc::ENOTSUP), "{err}");
        assert!(err.to_string().contains("not supported"), "{err}");
    }
    port.set_mtu(1400).expect("set MTU");
    assert_eq!(port.mtu().expect("MTU"), 1400);
    let kernel_mtu =
        std::fs::read_to_string(format!("/sys/class/net/{dpdk_iface}/mtu")).expect("read MTU");
    assert_eq!(kernel_mtu.trim(), "1400");
    port.set_mtu(1500).expect("restore MTU");

    // A claimed queue blocks stop; the port's own burst calls skip it.
    let mut q = port.queue(0).expect("claim queue 0");
    assert!(port.queue(0).is_err(), "queue 0 is already claimed");
    assert!(port.queue(1).is_err(), "there is no queue 1");
    let mut empty: Burst = Burst::new();
    assert_eq!(port.rx_burst(0, &mut empty), 0);
    assert_eq!(q.rx_burst(&mut empty), 0);
    assert!(matches!(
        port.stop(),
        Err(dataplane::dpdk::DpdkError::Busy { .. })
    ));
    drop(q);

    // Stop/start round trip, then close: the interface is left as found (not promiscuous).
    // The same device cannot be opened twice at once...
    let devargs = format!("net_af_packet0,iface={dpdk_iface}");
    let err = Port::open(&devargs, &cfg).expect_err("second open of an open device");
    println!("afpacket: second open: {err}");
    assert!(
        matches!(err, dataplane::dpdk::DpdkError::Busy { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&devargs) && err.to_string().contains("already open"),
        "{err}"
    );
    assert!(port.stats().is_ok(), "the open port is untouched");

    port.stop().expect("stop");
    assert!(
        !port.link().expect("link").up,
        "a stopped port reports its link down"
    );
    port.start().expect("start");
    wait_link(&port, true);
    drop(port);
    assert_eq!(pool.in_use(), 0);
    assert_eq!(
        iface_flags(&dpdk_iface) & libc::IFF_PROMISC as u32,
        0,
        "promiscuous mode undone on close"
    );

    // ...but closing removed the device, so it can be opened again.
    let again = Port::open(&devargs, &cfg).expect("reopen after close");
    assert_eq!(again.name(), "net_af_packet0");
    drop(again);
    assert_eq!(pool.in_use(), 0);
}
