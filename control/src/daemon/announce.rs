//! Announcements of a MAC's new place after every path change: gratuitous ARP for each IPv4
//! address and unsolicited neighbour advertisement for each IPv6 address of the kernel
//! interface, repeated `announce.count` times every `announce.interval_ms` (like bonding's
//! num_grat_arp), so that the management switch relearns the MAC on the new port.
//!
//! They are sent from the kernel interface itself (an AF_PACKET socket on it), so they take
//! exactly the path the node's own traffic takes: through the worker to the NIC, or over the
//! fabric to the active proxy and out of its NIC. The interface's other MACs (a node may own
//! several: containers, VMs) have no address we know, so each round also sends an ARP probe
//! from each of them. The addresses come from the link watcher,
//! which reads them from the kernel over netlink on its own thread (a netlink dump can wait
//! seconds for the RTNL lock, which must never stall the control thread).

use std::net::IpAddr;
use std::time::Duration;

use dataplane::sys::raw_socket::RawSocket;
use dataplane::wire::{Garp, GarpKind, MacAddr, UnsolicitedNa};

/// Sends announcement bursts for one interface.
pub struct Announcer {
    sock: RawSocket,
    mac: MacAddr,
    count: u32,
    interval: Duration,
    pending: u32,
    next_at: Duration,
    addrs: Vec<IpAddr>,
    /// The node's other MACs, each with the VLAN of a domain it is announced in: one ARP
    /// probe from each per round of a burst.
    extra: Vec<(MacAddr, Option<u16>)>,
    /// A burst of ARP probes from MACs whose addresses we do not know: (MAC, VLAN) pairs,
    /// rounds left, and when the next round is due.
    probes: Vec<(MacAddr, Option<u16>)>,
    probes_pending: u32,
    probes_next_at: Duration,
    /// Frames sent since start.
    pub sent: u64,
    /// Bursts started since start.
    pub bursts: u64,
}

impl Announcer {
    /// Announces `mac` from interface `iface`.
    pub fn new(
        iface: &str,
        mac: MacAddr,
        count: u32,
        interval: Duration,
    ) -> Result<Self, super::DaemonError> {
        let sock = RawSocket::bind(iface).map_err(|e| super::DaemonError::Io {
            action: format!("opening a packet socket on {iface} for announcements"),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Self {
            sock,
            mac,
            count,
            interval,
            pending: 0,
            next_at: Duration::ZERO,
            addrs: Vec::new(),
            extra: Vec::new(),
            probes: Vec::new(),
            probes_pending: 0,
            probes_next_at: Duration::ZERO,
            sent: 0,
            bursts: 0,
        })
    }

    /// The kernel interface's current addresses (from the link watcher).
    pub fn set_addresses(&mut self, addrs: Vec<IpAddr>) {
        self.addrs = addrs;
    }

    /// Starts a new burst now (replacing one under way), which also probes from each of
    /// `extra`: the node's other MACs, each with the VLAN to announce it in (`None`:
    /// untagged).
    pub fn trigger(&mut self, now: Duration, extra: Vec<(MacAddr, Option<u16>)>) {
        self.extra = extra;
        self.pending = self.count;
        self.next_at = now;
        self.bursts += 1;
        self.tick(now);
    }

    /// Sends the next round of each burst under way when it is due.
    pub fn tick(&mut self, now: Duration) {
        if self.probes_pending > 0 && now >= self.probes_next_at {
            self.probes_pending -= 1;
            self.probes_next_at = now + self.interval;
            let probes = std::mem::take(&mut self.probes);
            for &(mac, vlan) in &probes {
                self.probe_from(&[mac], vlan);
            }
            self.probes = probes;
        }
        if self.pending == 0 || now < self.next_at {
            return;
        }
        self.pending -= 1;
        self.next_at = now + self.interval;
        let mut buf = [0u8; 128];
        for ip in &self.addrs {
            let built = match ip {
                IpAddr::V4(v4) => Garp {
                    mac: self.mac,
                    ip: *v4,
                    vlan: None,
                    kind: GarpKind::Request,
                }
                .build(&mut buf),
                IpAddr::V6(v6) => UnsolicitedNa {
                    mac: self.mac,
                    target: *v6,
                    router: false,
                    vlan: None,
                }
                .build(&mut buf),
            };
            match built {
                Ok(n) => match self.sock.send_nowait(&buf[..n]) {
                    Ok(_) => self.sent += 1,
                    Err(e) => tracing::debug!("announce {ip}: {e}"),
                },
                Err(e) => tracing::warn!("announce {ip}: {e}"),
            }
        }
        let extra = std::mem::take(&mut self.extra);
        for &(mac, vlan) in &extra {
            self.probe_from(&[mac], vlan);
        }
        self.extra = extra;
    }

    /// Announces MACs whose IPs we do not know (a proxy's clients, or our own MAC in a
    /// domain reached through a peer): one ARP probe (RFC 5227: sender and target IP
    /// 0.0.0.0) from each MAC, broadcast, tagged with `vlan` if the domain has one, so that
    /// the switch learns the MAC on the new port at once. It leaves every ARP cache alone.
    /// Returns frames sent.
    pub fn probe_from(&mut self, macs: &[MacAddr], vlan: Option<u16>) -> usize {
        let mut buf = [0u8; 64];
        let mut sent = 0;
        for &mac in macs {
            let probe = Garp {
                mac,
                ip: std::net::Ipv4Addr::UNSPECIFIED,
                vlan: vlan.map(dataplane::wire::VlanTag::new),
                kind: GarpKind::Request,
            };
            if let Ok(n) = probe.build(&mut buf) {
                if self.sock.send_nowait(&buf[..n]).is_ok() {
                    sent += 1;
                }
            }
        }
        self.sent += sent as u64;
        sent
    }

    /// Starts a burst of ARP probes (see [`Announcer::probe_from`]) from each of `macs` in
    /// each of `vlans` (`None`: untagged), `announce.count` rounds `announce.interval_ms`
    /// apart, replacing a probe burst under way. For MACs that join the node at run time:
    /// repeated, because the first round can overtake the proxy request that makes our
    /// proxy accept the new MAC (control and data travel on different sockets).
    pub fn probe_burst(&mut self, now: Duration, macs: &[MacAddr], vlans: &[Option<u16>]) {
        self.probes = macs
            .iter()
            .flat_map(|&m| vlans.iter().map(move |&v| (m, v)))
            .collect();
        self.probes_pending = if self.probes.is_empty() {
            0
        } else {
            self.count
        };
        self.probes_next_at = now;
        self.tick(now);
    }

    /// When the next round is due, if a burst is under way.
    pub fn next_deadline(&self) -> Option<Duration> {
        let garp = (self.pending > 0).then_some(self.next_at);
        let probes = (self.probes_pending > 0).then_some(self.probes_next_at);
        match (garp, probes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
