//! The rig of the worker integration tests: a worker built exactly as the daemon builds it
//! (control/src/daemon/dataplane.rs), a Linux bridge standing in for the management switch,
//! and observers on every port the worker can send to.
//!
//! ```text
//!   [nphost0: raw socket, tcpdump] -- nphostsw -+- npbr0 -+- npnicsw -- npnic0 [af_packet: NIC]
//!                                                                            |
//!   [UDP peers 127.0.0.2 / .3 = sessions 1 / 2] <== fabric 127.0.0.1 ==> worker (steer)
//!                                                                            |
//!   [nptap0: raw socket, tcpdump] <------------------------------ nptap0 [net_tap: kernel port]
//! ```
//!
//! The outer test makes the namespace, bridge and veths ([`Lan`]); the inner test, re-run
//! inside that namespace, makes everything DPDK ([`Rig`]). The raw sockets inject and count
//! live; they see frames with any VLAN tag moved out by the kernel, so tcpdump captures the
//! same interfaces for the whole run and the [`Ledger`] checks at the end that each frame
//! arrived byte for byte, tag included.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dataplane::counters::{CountersSnapshot, DropReason};
use dataplane::dpdk::{Eal, Mempool, Port, PortConfig, BURST_SIZE, PKTMBUF_HEADROOM};
use dataplane::fabric::header::{DATA_HEADER, DATA_HEADER_LEN};
use dataplane::fabric::udp::UdpFabric;
use dataplane::steer::{
    table_channel, DomainId, DomainInfo, MacTableBuilder, PublishError, SessionId, SessionMask,
    TablePublisher, Uplink,
};
use dataplane::sys::raw_socket::RawSocket;
use dataplane::wire::MacAddr;
use dataplane::worker::{
    self, FabricIo, Polling, UdpIo, WorkerHandle, WorkerSetup, PORT_FABRIC, PORT_KERNEL,
    PORT_NAMES, PORT_NIC,
};

use crate::capture::Capture;
use crate::common::{self, Netns, Veth};

/// Interfaces inside the test's namespace (the namespace name is unique per run).
pub const BRIDGE: &str = "npbr0";
/// The worker's NIC (af_packet) and its bridge port.
pub const NIC_IF: &str = "npnic0";
const NIC_SW: &str = "npnicsw";
/// A host on the LAN: injector and observer, and its bridge port.
pub const HOST_IF: &str = "nphost0";
const HOST_SW: &str = "nphostsw";
/// The kernel exception port (made by DPDK's TAP driver).
pub const TAP_IF: &str = "nptap0";
/// MTU of the LAN side: room for the oversize frames of the bad-input scenario.
pub const LAN_MTU: u16 = 1800;

/// The mapped VLAN (domain 1); untagged is domain 0.
pub const VLAN: u16 = 100;
/// Domains.
pub const D0: DomainId = DomainId(0);
/// Domain of [`VLAN`].
pub const D1: DomainId = DomainId(1);
/// Sessions and their peers' addresses; the worker is 127.0.0.1.
pub const S1: SessionId = SessionId(1);
/// The second session.
pub const S2: SessionId = SessionId(2);
const FABRIC_PORT: u16 = 7000;
const WORKER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const PEER_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];

/// The node's own MAC (the TAP's), in both domains.
pub const LOCAL: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 0, 0x01]);
/// Proxied for session 1 in domain 0.
pub const P1: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 1, 0x01]);
/// Proxied for session 2 in domain 0.
pub const P2: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 2, 0x01]);
/// Proxied for session 1 in domain 1 (VLAN 100).
pub const P1V: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 1, 0x64]);
/// A MAC nobody has.
pub const UNKNOWN: MacAddr = MacAddr([0x02, 0x4e, 0x50, 0, 9, 0x09]);

/// The outer test's half: namespace, bridge and veths. Everything is
/// deleted on drop (the namespace takes its interfaces with it).
pub struct Lan {
    _veths: [Veth; 2],
    /// The namespace the inner test runs in.
    pub ns: Netns,
}

impl Lan {
    /// Builds the LAN in a fresh namespace.
    pub fn new() -> Lan {
        let ns = Netns::new("npdw");
        // No IPv6 autoconfiguration, DAD or MLD: nothing but the test's frames on the wire,
        // so the worker's counters can be asserted exactly.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        // A switch forwards frames as they are: no iptables on bridged traffic (it would drop
        // the test frames, whose IPv4 ethertype carries no valid IPv4 header).
        for family in ["iptables", "ip6tables", "arptables"] {
            ns.sysctl(&format!("net.bridge.bridge-nf-call-{family}"), "0");
        }
        // STP off (ports forward at once, no BPDUs); multicast snooping off (multicast
        // floods like broadcast, as on an unmanaged switch).
        ns.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ]);
        let nic = Veth::new_in(&ns, NIC_IF, NIC_SW);
        let host = Veth::new_in(&ns, HOST_IF, HOST_SW);
        let mtu = LAN_MTU.to_string();
        for dev in [NIC_IF, NIC_SW, HOST_IF, HOST_SW] {
            ns.ip(&["link", "set", dev, "mtu", &mtu]);
        }
        for port in [NIC_SW, HOST_SW] {
            ns.ip(&["link", "set", port, "master", BRIDGE]);
        }
        ns.ip(&["link", "set", BRIDGE, "up"]);
        Lan {
            _veths: [nic, host],
            ns,
        }
    }
}

/// How the rig's NIC is made.
pub struct NicSpec {
    /// DPDK devargs.
    pub devargs: String,
    /// MTU to set (the daemon sets the configured NIC MTU); `None` for drivers without it.
    pub mtu: Option<u16>,
    /// Promiscuous mode (the daemon turns it on).
    pub promiscuous: bool,
}

impl NicSpec {
    /// The daemon's NIC: af_packet on the LAN veth. Its MTU is left as the interface has
    /// it ([`LAN_MTU`]): DPDK's af_packet refuses an ethdev MTU above 1500, but receives
    /// whatever the interface takes, which lets oversize frames reach the worker.
    pub fn af_packet() -> NicSpec {
        NicSpec {
            devargs: format!("net_af_packet0,iface={NIC_IF}"),
            mtu: None,
            promiscuous: true,
        }
    }
}

/// The DPDK half, as the daemon builds it. Fields drop in order: the worker stops before its
/// ports close, the EAL handle goes last.
pub struct Dataplane {
    /// The worker.
    pub worker: Option<WorkerHandle>,
    /// Control's copy of the steering state.
    pub table: MacTableBuilder,
    publisher: TablePublisher,
    published: u64,
    /// Mbufs in use before the worker started (ports set up, nothing moving).
    pub pool_before_worker: u32,
    /// Mbufs in use with the worker running and idle: rx rings, the fabric stash.
    pub pool_baseline: u32,
    /// The pool.
    pub pool: Mempool,
    /// The NIC and the kernel port, kept open for the worker's queues.
    _ports: [Port; 2],
    _eal: Eal,
}

/// Everything that injects or observes frames.
pub struct Observers {
    /// The LAN host (tags stripped by the kernel).
    pub host: RawSocket,
    /// The kernel side of the TAP (tags stripped by the kernel).
    pub tap: RawSocket,
    /// The fabric peers of sessions 1 and 2.
    pub peers: [UdpSocket; 2],
    /// The worker's fabric address.
    pub fabric: SocketAddr,
    /// The host's MAC.
    pub host_mac: MacAddr,
}

/// A running worker with its LAN, kernel and fabric observers.
pub struct Rig {
    /// DPDK, the worker and the table.
    pub dp: Dataplane,
    /// Injectors and observers.
    pub obs: Observers,
    /// tcpdump on the host and on the TAP, for [`Rig::check_captures`].
    captures: Option<[Capture; 2]>,
}

/// Reads an interface's MAC from sysfs.
pub fn iface_mac(iface: &str) -> MacAddr {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .unwrap_or_else(|e| panic!("reading the MAC of {iface}: {e}"));
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    MacAddr(mac)
}

fn raw(iface: &str) -> RawSocket {
    let s = RawSocket::bind(iface).unwrap_or_else(|e| panic!("{e}"));
    s.set_recv_buffer(8 << 20).unwrap_or_else(|e| panic!("{e}"));
    s
}

/// Waits until `iface` reports operstate up (or unknown, as TAP does), at most 5 s.
fn wait_oper_up(iface: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/sys/class/net/{iface}/operstate"))
            .unwrap_or_default();
        if matches!(state.trim(), "up" | "unknown") {
            return;
        }
        assert!(Instant::now() < deadline, "{iface} is not up: {state}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Rig {
    /// Starts EAL, the pool, the NIC, the TAP kernel port, the UDP fabric and the worker
    /// (adaptive polling, as in the lab), with [`base_table`] published, and tcpdump on the
    /// host and the TAP for [`Rig::check_captures`].
    pub fn start(prefix: &str, nic: NicSpec) -> Rig {
        Self::start_with(prefix, nic, true)
    }

    /// [`Rig::start`], with or without the tcpdump captures (a long stream checks its frames
    /// on the raw socket instead: under a loaded machine tcpdump may fall behind).
    pub fn start_with(prefix: &str, nic: NicSpec, captures: bool) -> Rig {
        let eal = Eal::init(&common::dpdk::eal_args(prefix)).expect("EAL init");
        // The daemon's pool: its default size, 256 cached per lcore.
        let pool =
            Mempool::new(&eal, "np-pool", 8191, 256, 2048 + PKTMBUF_HEADROOM).expect("mempool");
        let mut nic_cfg = PortConfig::new(pool.clone());
        nic_cfg.mtu = nic.mtu;
        nic_cfg.promiscuous = nic.promiscuous;
        let nic_port = Port::open(&nic.devargs, &nic_cfg).expect("open the NIC");
        let mut k_cfg = PortConfig::new(pool.clone());
        k_cfg.mtu = Some(1500);
        let kernel = Port::open(&format!("net_tap0,iface={TAP_IF},mac={LOCAL}"), &k_cfg)
            .expect("open the TAP kernel port");
        for iface in [TAP_IF, HOST_IF, NIC_IF] {
            if std::path::Path::new("/sys/class/net").join(iface).exists() {
                wait_oper_up(iface);
            }
        }

        let fabric_addr = SocketAddr::new(IpAddr::V4(WORKER_IP), FABRIC_PORT);
        let sessions = [(S1, IpAddr::V4(PEER_IPS[0])), (S2, IpAddr::V4(PEER_IPS[1]))];
        let sock = UdpFabric::bind(fabric_addr, &sessions).expect("bind the fabric");
        let peers = PEER_IPS.map(|ip| {
            let s = UdpSocket::bind((ip, FABRIC_PORT)).expect("bind a fabric peer");
            s.set_nonblocking(true).expect("non-blocking peer");
            s
        });

        // Observers exist before the worker runs, so they see everything it sends.
        let obs = Observers {
            host: raw(HOST_IF),
            tap: raw(TAP_IF),
            peers,
            fabric: fabric_addr,
            host_mac: iface_mac(HOST_IF),
        };
        let captures = captures.then(|| [Capture::start(HOST_IF), Capture::start(TAP_IF)]);
        let table = base_table();
        let (publisher, reader) = table_channel(table.clone().build(), 8);
        let pool_before_worker = pool.in_use();
        let setup = WorkerSetup {
            name: "np-worker0".into(),
            core: None,
            polling: Polling::ADAPTIVE,
            nic: nic_port.queue(0).expect("NIC queue"),
            kernel: kernel.queue(0).expect("kernel queue"),
            fabric: FabricIo::Udp(UdpIo::new(sock, pool.clone())),
            relay: worker::Relay::Alone,
            table: reader,
            drain_interval: Duration::from_micros(100),
        };
        let handle = worker::spawn(&eal, setup).expect("spawn the worker");
        // Idle for a while: the rx rings and the fabric stash fill, then stay as they are.
        std::thread::sleep(Duration::from_millis(100));
        let pool_baseline = pool.in_use();
        println!(
            "rig: pool in use {pool_before_worker} before the worker, {pool_baseline} with it idle (of {})",
            pool.capacity()
        );
        Rig {
            dp: Dataplane {
                worker: Some(handle),
                table,
                publisher,
                published: 0,
                pool_before_worker,
                pool_baseline,
                pool,
                _ports: [nic_port, kernel],
                _eal: eal,
            },
            obs,
            captures,
        }
    }

    /// Stops the captures and checks them against `ledger`: every frame of the run that
    /// reached the host or the kernel, byte for byte with its VLAN tag, and nothing else.
    pub fn check_captures(&mut self, ledger: &Ledger) {
        let [host, tap] = self.captures.take().expect("captures running");
        // Let tcpdump write out the last frames.
        std::thread::sleep(Duration::from_millis(200));
        for (name, got, want) in [
            ("host", host.finish(), &ledger.host),
            ("kernel (TAP)", tap.finish(), &ledger.tap),
        ] {
            let mut by_scenario: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
            for f in got {
                match marker(&f) {
                    Some((sc, _)) => by_scenario.entry(sc).or_default().push(f),
                    None => panic!("capture on the {name}: foreign frame {}", describe(&f)),
                }
            }
            let total: usize = by_scenario.values().map(Vec::len).sum();
            for (sc, frames) in &mut by_scenario {
                frames.sort();
                let mut expected = want.get(sc).cloned().unwrap_or_default();
                expected.sort();
                let seqs = |v: &[Vec<u8>]| -> Vec<u32> {
                    let mut s: Vec<u32> = v.iter().filter_map(|f| marker(f)).map(|m| m.1).collect();
                    s.sort_unstable();
                    s
                };
                assert_eq!(
                    frames.len(),
                    expected.len(),
                    "capture on the {name}, scenario {sc}: frame count; captured {:?}, expected {:?}",
                    seqs(frames),
                    seqs(&expected)
                );
                for (g, w) in frames.iter().zip(&expected) {
                    assert_eq!(g, w, "capture on the {name}, scenario {sc}: frame bytes");
                }
            }
            for (sc, expected) in want {
                assert!(
                    by_scenario.contains_key(sc) || expected.is_empty(),
                    "capture on the {name}: nothing of scenario {sc}"
                );
            }
            println!("rig: tcpdump on the {name}: {total} frames, each as expected, tags included");
        }
    }
}

/// What the host and the kernel must have received, per scenario, exactly as sent (tags
/// included): checked against the captures at the end of a run.
#[derive(Debug, Default)]
pub struct Ledger {
    host: BTreeMap<u16, Vec<Vec<u8>>>,
    tap: BTreeMap<u16, Vec<Vec<u8>>>,
}

impl Ledger {
    /// The host must have received `frames` in scenario `sc`.
    pub fn host(&mut self, sc: u16, frames: &[Vec<u8>]) {
        self.host.entry(sc).or_default().extend_from_slice(frames);
    }

    /// The kernel must have received `frames` in scenario `sc`.
    pub fn tap(&mut self, sc: u16, frames: &[Vec<u8>]) {
        self.tap.entry(sc).or_default().extend_from_slice(frames);
    }
}

/// The steering state of the rig: untagged = domain 0, VLAN 100 = domain 1; the local MAC
/// in both; P1, P2 proxied in domain 0 and P1V in domain 1; uplink the NIC; the kernel a
/// member of both; sessions 1 and 2 members of domain 0, session 1 of domain 1.
pub fn base_table() -> MacTableBuilder {
    let mut t = MacTableBuilder::new();
    t.map_vlan(VLAN, D1).expect("map VLAN");
    for (d, sessions) in [(D0, [S1, S2].as_slice()), (D1, [S1].as_slice())] {
        let mut mask = SessionMask::EMPTY;
        for &s in sessions {
            mask.insert(s);
        }
        t.set_domain(
            d,
            DomainInfo {
                uplink: Uplink::Nic,
                kernel: true,
                sessions: mask,
            },
        )
        .expect("domain");
        t.add_local(d, LOCAL).expect("local MAC");
    }
    t.add_proxied(D0, P1, S1).expect("P1");
    t.add_proxied(D0, P2, S2).expect("P2");
    t.add_proxied(D1, P1V, S1).expect("P1V");
    t
}

impl Dataplane {
    /// Builds the current table and hands it to the worker, retrying while the worker has not
    /// yet taken the previous ones (as the daemon does).
    pub fn publish(&mut self) {
        let mut snapshot = self.table.build();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.publisher.publish(snapshot) {
                Ok(()) => {
                    self.published += 1;
                    return;
                }
                Err(PublishError::Full { table, .. }) if Instant::now() < deadline => {
                    snapshot = table;
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Tables published since the start.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Frees tables the worker gave back; returns the total so far.
    pub fn reclaimed(&mut self) -> u64 {
        self.publisher.reclaim();
        self.publisher.reclaimed_total()
    }

    /// Tables published and not yet given back.
    pub fn in_flight(&self) -> usize {
        self.publisher.in_flight()
    }

    /// The worker's counters once they stop moving (the worker flushes them every 100 µs
    /// while busy, and before each sleep).
    pub fn settled(&self) -> CountersSnapshot {
        let w = self.worker.as_ref().expect("worker running");
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = w.counters();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = w.counters();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// The counts since `before`, once they equal `want` (or 3 s have passed) and have
    /// stopped moving: a slow kernel path delays frames, it must not fail the comparison,
    /// while anything extra still shows.
    pub fn counts_since(&self, before: &CountersSnapshot, want: &Counts) -> Counts {
        let w = self.worker.as_ref().expect("worker running");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Counts::between(before, &w.counters()) != *want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        Counts::between(before, &self.settled())
    }

    /// Asserts the pool is back at its idle baseline (waiting a little for in-flight mbufs).
    pub fn assert_pool_baseline(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.pool.in_use() != self.pool_baseline && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            self.pool.in_use(),
            self.pool_baseline,
            "{what}: mbufs in use are back at the idle baseline"
        );
    }

    /// Stops the worker and asserts every mbuf it held went back: in use is what the ports
    /// hold alone, as before the worker started.
    pub fn stop_and_check_pool(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().expect("worker exits cleanly");
        }
        assert_eq!(
            self.pool.in_use(),
            self.pool_before_worker,
            "after the worker stopped, the pool holds only what the ports hold"
        );
        println!(
            "rig: pool back to {} after the worker stopped (it held {} idle: the fabric stash is {BURST_SIZE})",
            self.pool_before_worker,
            self.pool_baseline - self.pool_before_worker
        );
    }
}

/// What one scenario changed in the worker's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames received per port (NIC, kernel, fabric).
    pub rx: [u64; 3],
    /// Frames sent per port.
    pub tx: [u64; 3],
    /// Drops per reason, only the non-zero ones, in reason order.
    pub drops: Vec<(DropReason, u64)>,
}

impl Counts {
    /// Nothing at all.
    pub fn none() -> Counts {
        Counts::default()
    }

    /// Adds `n` frames received on `port`.
    pub fn rx(mut self, port: usize, n: u64) -> Counts {
        self.rx[port] += n;
        self
    }

    /// Adds `n` frames sent on `port`.
    pub fn tx(mut self, port: usize, n: u64) -> Counts {
        self.tx[port] += n;
        self
    }

    /// Adds `n` drops for `reason`.
    pub fn drop(mut self, reason: DropReason, n: u64) -> Counts {
        match self.drops.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => self.drops.push((reason, n)),
        }
        self.drops.sort();
        self
    }

    /// The difference `after - before`.
    pub fn between(before: &CountersSnapshot, after: &CountersSnapshot) -> Counts {
        let port = |i: usize| (before.ports[i], after.ports[i]);
        let mut c = Counts::none();
        for i in [PORT_NIC, PORT_KERNEL, PORT_FABRIC] {
            let (b, a) = port(i);
            c.rx[i] = a.rx_packets - b.rx_packets;
            c.tx[i] = a.tx_packets - b.tx_packets;
        }
        for r in DropReason::ALL {
            let n = after.drops_for(r) - before.drops_for(r);
            if n > 0 {
                c.drops.push((r, n));
            }
        }
        c
    }

    /// A one-line summary for the log.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, name) in PORT_NAMES.iter().enumerate() {
            if self.rx[i] + self.tx[i] > 0 {
                s.push_str(&format!("{name} rx {} tx {}; ", self.rx[i], self.tx[i]));
            }
        }
        for (r, n) in &self.drops {
            s.push_str(&format!("drop {} {n}; ", r.name()));
        }
        s
    }
}

/// Marks the test's frames: anything else seen by an observer is foreign.
pub const MAGIC: [u8; 4] = *b"NPDW";
/// Bytes of the marker after the Ethernet header: magic, scenario, sequence number.
const MARK_LEN: usize = 10;

/// A test frame: header (with an 802.1Q tag when `vlan` is given), then the marker, then a
/// pattern up to `len` bytes in all.
pub fn frame(
    dst: MacAddr,
    src: MacAddr,
    vlan: Option<u16>,
    ethertype: u16,
    scenario: u16,
    seq: u32,
    len: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    if let Some(vid) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&scenario.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    let mut i = 0u32;
    while f.len() < len {
        f.push((seq.wrapping_mul(131).wrapping_add(i * 7)) as u8);
        i += 1;
    }
    f
}

/// `n` frames of one scenario, numbered from 0.
pub fn frames(
    n: u32,
    dst: MacAddr,
    src: MacAddr,
    vlan: Option<u16>,
    scenario: u16,
    len: usize,
) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| frame(dst, src, vlan, 0x0800, scenario, i, len))
        .collect()
}

/// The (scenario, sequence number) of a test frame, tagged or not.
pub fn marker(f: &[u8]) -> Option<(u16, u32)> {
    let at = if f.get(12..14) == Some(&[0x81, 0x00]) {
        18
    } else {
        14
    };
    let m = f.get(at..at + MARK_LEN)?;
    if m[..4] != MAGIC {
        return None;
    }
    Some((
        u16::from_be_bytes([m[4], m[5]]),
        u32::from_be_bytes([m[6], m[7], m[8], m[9]]),
    ))
}

/// The frame as a raw socket on the parent interface sees it: the kernel moves an 802.1Q
/// tag out of the data.
pub fn untagged(f: &[u8]) -> Vec<u8> {
    if f.get(12..14) == Some(&[0x81, 0x00]) {
        [&f[..12], &f[16..]].concat()
    } else {
        f.to_vec()
    }
}

/// What every observer saw of one scenario.
#[derive(Debug, Default)]
pub struct Seen {
    /// Frames at the LAN host (tags stripped).
    pub host: Vec<Vec<u8>>,
    /// Frames at the kernel side of the TAP (tags stripped).
    pub tap: Vec<Vec<u8>>,
    /// Datagrams at the peers of sessions 1 and 2 (data header included).
    pub peers: [Vec<Vec<u8>>; 2],
    /// Frames or datagrams without this scenario's marker (should be none).
    pub foreign: Vec<String>,
}

impl Seen {
    fn counts(&self) -> [usize; 4] {
        [
            self.host.len(),
            self.tap.len(),
            self.peers[0].len(),
            self.peers[1].len(),
        ]
    }
}

/// How many frames each observer should see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    /// At the LAN host.
    pub host: usize,
    /// At the TAP.
    pub tap: usize,
    /// At session 1's peer.
    pub s1: usize,
    /// At session 2's peer.
    pub s2: usize,
}

impl Want {
    fn as_array(&self) -> [usize; 4] {
        [self.host, self.tap, self.s1, self.s2]
    }
}

/// How long observers keep listening once they have what they wanted: frames that should
/// not exist (duplicates, wrong port) would show up in this window.
const QUIET: Duration = Duration::from_millis(150);

fn describe(f: &[u8]) -> String {
    let head: Vec<String> = f.iter().take(24).map(|b| format!("{b:02x}")).collect();
    format!("{} bytes: {}", f.len(), head.join(""))
}

impl Observers {
    /// Sends frames from the LAN host, retrying a send the kernel refused for lack of room.
    pub fn send_host(&self, frames: &[Vec<u8>]) {
        send_all(&self.host, frames);
    }

    /// Sends frames as the local kernel would (on the TAP).
    pub fn send_kernel(&self, frames: &[Vec<u8>]) {
        send_all(&self.tap, frames);
    }

    /// Sends frames as the peer of `session` (1 or 2), each behind the data header.
    pub fn send_session(&self, session: SessionId, frames: &[Vec<u8>]) {
        let peer = &self.peers[usize::from(session.0) - 1];
        for f in frames {
            let d = [&DATA_HEADER[..], f].concat();
            let sent = peer.send_to(&d, self.fabric).expect("peer send");
            assert_eq!(sent, d.len());
        }
    }

    /// Collects what every observer sees of `scenario` until each has `want` (or 3 s pass),
    /// then listens [`QUIET`] longer for anything extra.
    pub fn collect(&self, scenario: u16, want: Want) -> Seen {
        let mut seen = Seen::default();
        let deadline = Instant::now() + Duration::from_secs(3);
        let target = want.as_array();
        let mut quiet_until: Option<Instant> = None;
        let mut buf = vec![0u8; 4096];
        loop {
            let mut any = false;
            for (s, is_host) in [(&self.host, true), (&self.tap, false)] {
                while let Some(n) = s.recv(&mut buf, Duration::ZERO).expect("raw recv") {
                    any = true;
                    let f = buf[..n.min(buf.len())].to_vec();
                    let list = if is_host {
                        &mut seen.host
                    } else {
                        &mut seen.tap
                    };
                    match marker(&f) {
                        Some((sc, _)) if sc == scenario => list.push(f),
                        _ => seen
                            .foreign
                            .push(format!("{}: {}", s.iface(), describe(&f))),
                    }
                }
            }
            for (i, p) in self.peers.iter().enumerate() {
                loop {
                    match p.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            any = true;
                            let d = buf[..n].to_vec();
                            let ok = from == self.fabric
                                && d.len() >= DATA_HEADER_LEN
                                && marker(&d[DATA_HEADER_LEN..]).is_some_and(|m| m.0 == scenario);
                            if ok {
                                seen.peers[i].push(d);
                            } else {
                                seen.foreign.push(format!(
                                    "peer {} from {from}: {}",
                                    i + 1,
                                    describe(&d)
                                ));
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("peer recv: {e}"),
                    }
                }
            }
            let now = Instant::now();
            let complete = seen
                .counts()
                .iter()
                .zip(target.iter())
                .all(|(got, want)| got >= want);
            match quiet_until {
                None if complete || now > deadline => quiet_until = Some(now + QUIET),
                Some(t) if now > t => return seen,
                _ => {}
            }
            if !any {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

fn send_all(sock: &RawSocket, frames: &[Vec<u8>]) {
    for f in frames {
        let mut tries = 0;
        loop {
            match sock.send(f) {
                Ok(n) => {
                    assert_eq!(n, f.len(), "whole frame sent");
                    break;
                }
                Err(e)
                    if matches!(e.source.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN))
                        && tries < 10_000 =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// Asserts that each observer saw exactly what `want` says and nothing foreign.
pub fn assert_seen(what: &str, seen: &Seen, want: Want) {
    let got = Want {
        host: seen.host.len(),
        tap: seen.tap.len(),
        s1: seen.peers[0].len(),
        s2: seen.peers[1].len(),
    };
    assert!(
        seen.foreign.is_empty(),
        "{what}: foreign frames: {:#?}",
        seen.foreign
    );
    assert_eq!(got, want, "{what}: frames seen per observer");
}

/// Asserts that `got` holds each of `sent` exactly once, byte for byte, as transformed by
/// `view` (e.g. [`untagged`] for a parent interface, or the fabric's header prepended).
pub fn assert_same_frames(
    what: &str,
    got: &[Vec<u8>],
    sent: &[Vec<u8>],
    view: impl Fn(&[u8]) -> Vec<u8>,
) {
    let mut want: Vec<Vec<u8>> = sent.iter().map(|f| view(f)).collect();
    let mut got = got.to_vec();
    want.sort();
    got.sort();
    assert_eq!(got.len(), want.len(), "{what}: count");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "{what}: frame differs");
    }
}

/// The datagram a peer receives for `frame`: the data header, then the frame unchanged.
pub fn on_fabric(frame: &[u8]) -> Vec<u8> {
    [&DATA_HEADER[..], frame].concat()
}
