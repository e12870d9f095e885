//! Two workers, as the daemon runs N of them: each owns one queue pair of the NIC (an
//! af_packet vdev with `qpairs=2` on a veth, which the kernel's fanout hash spreads by flow)
//! and of the kernel port (a two-queue TAP); worker 0 drives the UDP fabric and worker 1
//! passes its session frames to it through the relay ring.
//!
//! A host on the other end of the veth sends frames of 16 flows (distinct source MACs, IPs
//! and UDP ports) to the node's own MAC, and as many to a MAC proxied over session 1. The
//! test checks that both workers received NIC frames (the flows were spread), that every
//! frame arrived exactly once (at the TAP, or at the session's peer socket), that the
//! workers' counters, summed, account for every frame (rx on the NIC; tx on the kernel port
//! and, on worker 0 alone, on the fabric), and that the mempool's in-use count returns to
//! its idle baseline.
//!
//! The DPDK half runs in a child process (one EAL per process) inside a namespace the outer
//! test makes and deletes. Needs root.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{dpdk, env_param, inner_test_requested, run_self, Netns, Veth};
use dataplane::counters::CountersSnapshot;
use dataplane::dpdk::{Eal, Mempool, Port, PortConfig, PKTMBUF_HEADROOM};
use dataplane::fabric::header::DATA_HEADER_LEN;
use dataplane::fabric::udp::UdpFabric;
use dataplane::steer::{table_channel, DomainId, DomainInfo, MacTableBuilder, SessionId, Uplink};
use dataplane::sys::raw_socket::RawSocket;
use dataplane::wire::MacAddr;
use dataplane::worker::{
    self, relays, FabricIo, Polling, UdpIo, WorkerHandle, WorkerSetup, PORT_FABRIC, PORT_KERNEL,
    PORT_NIC,
};

const DEADLINE: Duration = Duration::from_secs(120);
const WORKERS: usize = 2;
const FLOWS: u16 = 16;
/// Frames per flow and destination.
const PER_FLOW: u16 = 25;
const LOCAL: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 0, 0x01]);
const PROXIED: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 1, 0x01]);
const S1: SessionId = SessionId(1);
const FABRIC_PORT: u16 = 7000;
const WORKER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Marks the test's frames (first payload bytes), so that the kernel's own frames on the
/// TAP are told apart.
const MAGIC: [u8; 4] = *b"NPMW";

#[test]
fn dataplane_two_workers_spread_flows() {
    let ns = Netns::new("npmw");
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    let host = common::unique_name("npmh");
    let nic = common::unique_name("npmn");
    let tap = common::unique_name("npmt");
    let _veth = Veth::new_in(&ns, &host, &nic);
    let prefix = common::unique_name("npmw");
    let _dir = dpdk::RuntimeDir::new(&prefix);
    let run = run_self(
        "inner_two_workers",
        Some(&ns),
        &[
            ("NP_PREFIX", prefix.as_str()),
            ("NP_HOST_IF", host.as_str()),
            ("NP_NIC_IF", nic.as_str()),
            ("NP_TAP_IF", tap.as_str()),
        ],
        DEADLINE,
    );
    for line in run.stdout.lines().filter(|l| l.starts_with("workers:")) {
        eprintln!("{line}");
    }
    run.assert_passed();
    eprintln!("inner_two_workers took {:?}", run.elapsed);
}

/// An IPv4/UDP frame of flow `flow` to `dst`, carrying [`MAGIC`] and `(flow, seq)`.
fn frame(dst: MacAddr, flow: u16, seq: u16) -> Vec<u8> {
    let [fh, fl] = flow.to_be_bytes();
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&[0x02, 0x4e, 0x50, 0x0f, fh, fl]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4: 20 bytes, UDP, 10.(flow).0.2 -> 10.0.0.1, checksum left 0 (nobody checks it on
    // the way: the kernel's flow hash reads the addresses and ports only).
    let payload_len = 8 + 4 + 4;
    let total = u16::try_from(20 + payload_len).unwrap_or(u16::MAX);
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[10, fl, fh, 2, 10, 0, 0, 1]);
    // UDP: source port per flow.
    f.extend_from_slice(&(10_000 + flow).to_be_bytes());
    f.extend_from_slice(&7u16.to_be_bytes());
    f.extend_from_slice(&u16::try_from(payload_len).unwrap_or(0).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&flow.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(64, 0);
    f
}

/// `(flow, seq)` of one of the test's frames.
fn marker(f: &[u8]) -> Option<(u16, u16)> {
    let p = f.get(42..50)?;
    (p[..4] == MAGIC).then(|| {
        (
            u16::from_be_bytes([p[4], p[5]]),
            u16::from_be_bytes([p[6], p[7]]),
        )
    })
}

fn table() -> MacTableBuilder {
    let mut t = MacTableBuilder::new();
    t.set_domain(
        DomainId(0),
        DomainInfo {
            uplink: Uplink::Nic,
            kernel: true,
            sessions: Default::default(),
        },
    )
    .expect("domain");
    t.set_untagged_domain(Some(DomainId(0))).expect("untagged");
    t.add_local(DomainId(0), LOCAL).expect("local MAC");
    t.add_proxied(DomainId(0), PROXIED, S1)
        .expect("proxied MAC");
    t
}

fn sum(workers: &[WorkerHandle]) -> CountersSnapshot {
    CountersSnapshot::sum(
        &workers
            .iter()
            .map(WorkerHandle::counters)
            .collect::<Vec<_>>(),
    )
}

#[test]
#[ignore = "run by dataplane_two_workers_spread_flows inside its namespace"]
fn inner_two_workers() {
    if !inner_test_requested("inner_two_workers") {
        return;
    }
    let (prefix, host_if, nic_if, tap_if) = (
        env_param("NP_PREFIX"),
        env_param("NP_HOST_IF"),
        env_param("NP_NIC_IF"),
        env_param("NP_TAP_IF"),
    );
    let eal = Eal::init(&dpdk::eal_args(&prefix)).expect("EAL init");
    let pool = Mempool::new(&eal, "np-pool", 8191, 256, 2048 + PKTMBUF_HEADROOM).expect("pool");
    let queues = u16::try_from(WORKERS).expect("few workers");
    let mut nic_cfg = PortConfig::new(pool.clone());
    nic_cfg.promiscuous = true;
    (nic_cfg.rx_queues, nic_cfg.tx_queues) = (queues, queues);
    (nic_cfg.rx_descriptors, nic_cfg.tx_descriptors) = (512, 512);
    let nic = Port::open(
        &format!("net_af_packet0,iface={nic_if},qpairs={WORKERS}"),
        &nic_cfg,
    )
    .expect("open the two-queue af_packet NIC");
    let mut k_cfg = PortConfig::new(pool.clone());
    (k_cfg.rx_queues, k_cfg.tx_queues) = (queues, queues);
    (k_cfg.rx_descriptors, k_cfg.tx_descriptors) = (512, 512);
    let kernel = Port::open(&format!("net_tap0,iface={tap_if},mac={LOCAL}"), &k_cfg)
        .expect("open the two-queue TAP");

    let host = RawSocket::bind(&host_if).expect("raw socket on the host end");
    let tap_obs = RawSocket::bind(&tap_if).expect("raw socket on the TAP");
    tap_obs.set_recv_buffer(8 << 20).expect("TAP socket buffer");
    let peer = UdpSocket::bind((PEER_IP, FABRIC_PORT)).expect("bind the session's peer");
    peer.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("peer timeout");
    // The peer reads on a thread of its own from the start, so that its socket buffer never
    // overflows while the test reads the TAP.
    let stop_peer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peer_reader = {
        let stop = stop_peer.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = peer.recv(&mut buf) {
                    if let Some(m) = buf.get(DATA_HEADER_LEN..n).and_then(marker) {
                        got.push(m);
                    }
                }
            }
            got
        })
    };
    let sock = UdpFabric::bind(
        SocketAddr::new(IpAddr::V4(WORKER_IP), FABRIC_PORT),
        &[(S1, IpAddr::V4(PEER_IP))],
    )
    .expect("bind the fabric");

    let base = table();
    let mut publishers = Vec::new();
    let mut workers = Vec::new();
    let mut fabric = Some(FabricIo::Udp(UdpIo::new(sock, pool.clone())));
    for (i, relay) in relays(WORKERS).into_iter().enumerate() {
        let (publisher, reader) = table_channel(base.clone().build(), 8);
        publishers.push(publisher);
        let q = u16::try_from(i).expect("queue index");
        let setup = WorkerSetup {
            name: format!("np-worker{i}"),
            core: None,
            polling: Polling::ADAPTIVE,
            nic: nic.queue(q).expect("NIC queue"),
            kernel: kernel.queue(q).expect("kernel queue"),
            fabric: fabric.take().unwrap_or(FabricIo::None),
            relay,
            table: reader,
            drain_interval: Duration::from_micros(100),
        };
        workers.push(worker::spawn(&eal, setup).expect("spawn a worker"));
    }
    // Idle for a while: rx rings and the fabric stash fill, then stay as they are.
    std::thread::sleep(Duration::from_millis(200));
    let baseline = pool.in_use();
    let before = sum(&workers);
    let before_each: Vec<_> = workers.iter().map(WorkerHandle::counters).collect();

    // Flows interleaved, paced a little so that the af_packet rings never overflow on a
    // loaded machine (loss there would be the kernel's, not the workers').
    let mut sent_local = HashSet::new();
    let mut sent_proxied = HashSet::new();
    for seq in 0..PER_FLOW {
        for flow in 0..FLOWS {
            host.send(&frame(LOCAL, flow, seq))
                .expect("send to the local MAC");
            sent_local.insert((flow, seq));
            host.send(&frame(PROXIED, flow, seq))
                .expect("send to the proxied MAC");
            sent_proxied.insert((flow, seq));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let total = sent_local.len() + sent_proxied.len();

    // Collect at the TAP until everything arrived or 10 s passed, then the peer's.
    let mut got_local = HashSet::new();
    let mut dup = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    while got_local.len() < sent_local.len() && Instant::now() < deadline {
        if let Ok(Some(n)) = tap_obs.recv(&mut buf, Duration::from_millis(20)) {
            if let Some(m) = marker(&buf[..n]) {
                dup += usize::from(!got_local.insert(m));
            }
        }
    }
    // Late duplicates would show up meanwhile.
    std::thread::sleep(Duration::from_millis(200));
    while let Ok(Some(n)) = tap_obs.recv(&mut buf, Duration::from_millis(1)) {
        if let Some(m) = marker(&buf[..n]) {
            dup += usize::from(!got_local.insert(m));
        }
    }
    stop_peer.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut got_proxied = HashSet::new();
    for m in peer_reader.join().expect("the peer's reader") {
        dup += usize::from(!got_proxied.insert(m));
    }

    // Counters: the workers publish them on their drain timer (100 µs).
    let settle = Instant::now() + Duration::from_secs(5);
    let (after, in_use) = loop {
        let after = sum(&workers);
        let in_use = pool.in_use();
        let rx = after.ports[PORT_NIC].rx_packets - before.ports[PORT_NIC].rx_packets;
        if (rx >= total as u64 && in_use == baseline) || Instant::now() > settle {
            break (after, in_use);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let each: Vec<_> = workers
        .iter()
        .zip(&before_each)
        .map(|(w, b)| {
            let c = w.counters();
            (
                c.ports[PORT_NIC].rx_packets - b.ports[PORT_NIC].rx_packets,
                c.ports[PORT_FABRIC].tx_packets - b.ports[PORT_FABRIC].tx_packets,
            )
        })
        .collect();
    let d = |p: usize, f: fn(&dataplane::counters::PortSnapshot) -> u64| {
        f(&after.ports[p]) - f(&before.ports[p])
    };
    println!(
        "\nworkers: {total} frames of {FLOWS} flows sent; NIC rx per worker {:?}, fabric tx per worker {:?}; at the TAP {}, at the peer {}, duplicates {dup}; pool in use {in_use} (baseline {baseline})",
        each.iter().map(|e| e.0).collect::<Vec<_>>(),
        each.iter().map(|e| e.1).collect::<Vec<_>>(),
        got_local.len(),
        got_proxied.len(),
    );

    assert_eq!(
        got_local, sent_local,
        "every frame to the local MAC reached the TAP"
    );
    assert_eq!(
        got_proxied, sent_proxied,
        "every frame to the proxied MAC reached the peer"
    );
    assert_eq!(dup, 0, "no frame delivered twice");
    assert!(
        each.iter().all(|e| e.0 > 0),
        "both workers received NIC frames (flows spread by the fanout hash): {each:?}"
    );
    assert_eq!(
        d(PORT_NIC, |p| p.rx_packets),
        total as u64,
        "NIC rx summed over the workers"
    );
    assert_eq!(
        d(PORT_KERNEL, |p| p.tx_packets),
        sent_local.len() as u64,
        "kernel tx summed"
    );
    assert_eq!(
        d(PORT_FABRIC, |p| p.tx_packets),
        sent_proxied.len() as u64,
        "fabric tx summed"
    );
    assert_eq!(
        each[1].1, 0,
        "worker 1 sends nothing on the fabric itself: it relays to worker 0"
    );
    assert_eq!(d(PORT_NIC, |p| p.drops), 0, "no frame from the NIC dropped");
    assert_eq!(
        d(PORT_FABRIC, |p| p.drops),
        0,
        "no frame to the fabric dropped"
    );
    assert_eq!(in_use, baseline, "mempool in use back at its idle baseline");

    for w in workers {
        w.stop().expect("worker stops cleanly");
    }
    drop(publishers);
}
