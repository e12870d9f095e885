//! Hostile input for the fault suite: frames a station should never send, and fabric
//! datagrams no honest peer sends. Each function only sends and says how many went out;
//! the suite checks that the target counted them as drops and changed nothing.
//!
//! Station frames are written with an AF_PACKET socket on the station's interface. Fabric
//! messages come in two kinds: plain UDP from an address no peer is configured at, and
//! frames forged at layer 2 from node a's real fabric interface, so that they carry a's own
//! addresses and ports and pass every source check but the one under test. Those are built
//! from a real control message of a's, captured on b's fabric interface, so that replays
//! are byte-identical.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use dataplane::sys::netns;
use dataplane::sys::raw_socket::RawSocket;
use dataplane::wire::checksum;

use super::error::{LabError, Result};
use super::faults_res::Rng;
use super::names::{self, Names};

/// An ethertype no node accepts (IEEE local experimental).
const JUNK_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// The source MAC of the station's hostile frames: locally administered, nobody's.
const HOSTILE_MAC: [u8; 6] = [0x02, 0xba, 0xd0, 0, 0, 0x01];
/// MTU set on the station's path to a while oversize frames are sent.
const JUMBO_MTU: &str = "9000";
/// Pause between two hostile frames, so that no queue on the way overflows and every
/// frame reaches the daemon to be counted.
const PACE: Duration = Duration::from_micros(500);

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(mac.split(':')) {
        *o = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    out
}

fn raw_in(ns: &str, iface: &str) -> Result<RawSocket> {
    netns::run_in(ns, || RawSocket::bind(iface))
        .map_err(|e| LabError::Precondition(format!("entering {ns}: {e}")))?
        .map_err(|e| LabError::Precondition(format!("raw socket on {iface} in {ns}: {e}")))
}

/// Sends every frame, paced; returns how many the kernel took (errors are counted apart).
fn send_all(sock: &RawSocket, frames: &[Vec<u8>]) -> (u64, u64) {
    let (mut ok, mut refused) = (0, 0);
    for f in frames {
        match sock.send(f) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        std::thread::sleep(PACE);
    }
    (ok, refused)
}

/// Garbage from the station to a's MAC: random bytes after the header, random lengths
/// (header only up to a full frame), an ethertype nobody accepts. Returns frames sent.
pub fn station_garbage(n: &Names, count: u32, rng: &mut Rng) -> Result<u64> {
    let sock = raw_in(&n.station_ns, names::STATION_IF)?;
    let dst = mac_bytes(&n.victim().mac);
    let frames: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            let len = usize::try_from(rng.range(14, 1514)).unwrap_or(14);
            let mut f = vec![0u8; len];
            rng.fill(&mut f[14..]);
            f[..6].copy_from_slice(&dst);
            f[6..12].copy_from_slice(&HOSTILE_MAC);
            f[12..14].copy_from_slice(&JUNK_ETHERTYPE);
            f
        })
        .collect();
    Ok(send_all(&sock, &frames).0)
}

/// Runts from the station: shorter than a header, and a VLAN tag cut short. Returns
/// (accepted by the station's kernel, refused by it).
pub fn station_runts(n: &Names, count: u32) -> Result<(u64, u64)> {
    let sock = raw_in(&n.station_ns, names::STATION_IF)?;
    let dst = mac_bytes(&n.victim().mac);
    let frames: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut f = dst.to_vec();
            if i % 2 == 0 {
                f.extend_from_slice(&HOSTILE_MAC[..4]);
            } else {
                f.extend_from_slice(&HOSTILE_MAC);
                f.extend_from_slice(&[0x81, 0x00, 0x00]);
            }
            f
        })
        .collect();
    Ok(send_all(&sock, &frames))
}

/// Frames over a's maximum frame length (MTU 1500 + header + two tags = 1522 bytes), up
/// to 9000 bytes, written on a's port of the switch (as the switch would forward them from
/// a station with a jumbo MTU). That port and a's NIC get a jumbo MTU for the duration so
/// that the frames reach a's daemon at all, and 1500 again afterwards. (Raising the
/// station's own MTU instead disturbed the station's answers to the nodes' upstream probes
/// for long enough to fail nodes over.)
pub fn oversize(n: &Names, count: u32, rng: &mut Rng) -> Result<u64> {
    let v = n.victim();
    let links = [
        (n.switch_ns.as_str(), v.switch_port.as_str()),
        (v.ns.as_str(), names::NODE_NIC),
    ];
    let set_mtu = |mtu: &str| -> Result<()> {
        for (ns, ifname) in links {
            super::cmd::ip_in(ns, &["link", "set", ifname, "mtu", mtu])?;
        }
        Ok(())
    };
    set_mtu(JUMBO_MTU)?;
    let sent = (|| {
        let sock = raw_in(&n.switch_ns, &v.switch_port)?;
        let dst = mac_bytes(&v.mac);
        let frames: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                let len = usize::try_from(rng.range(1523, 9000)).unwrap_or(9000);
                let mut f = vec![0u8; len];
                rng.fill(&mut f[14..]);
                f[..6].copy_from_slice(&dst);
                f[6..12].copy_from_slice(&HOSTILE_MAC);
                f[12..14].copy_from_slice(&JUNK_ETHERTYPE);
                f
            })
            .collect();
        Ok(send_all(&sock, &frames).0)
    })();
    let back = set_mtu("1500");
    let sent = sent?;
    back?;
    Ok(sent)
}

/// Random datagrams to b's data and control ports from an address of a's that is no
/// peer's (a fresh port): returns (to the data port, to the control port).
pub fn fabric_garbage(n: &Names, target: &str, count: u32, rng: &mut Rng) -> Result<(u64, u64)> {
    let a = n.victim();
    let t = n
        .node(target)
        .ok_or_else(|| LabError::Precondition(format!("no node {target}")))?;
    let sock = netns::run_in(&a.ns, || UdpSocket::bind(SocketAddrV4::new(a.fabric_ip, 0)))
        .map_err(|e| LabError::Precondition(format!("entering {}: {e}", a.ns)))?
        .map_err(|e| LabError::io("binding the hostile UDP socket", e))?;
    let data = SocketAddrV4::new(t.fabric_ip, names::FABRIC_PORT);
    let ctl = SocketAddrV4::new(t.fabric_ip, names::FABRIC_PORT + 1);
    let (mut d, mut c) = (0, 0);
    for i in 0..count * 2 {
        let len = usize::try_from(rng.range(1, 1400)).unwrap_or(1);
        let mut buf = vec![0u8; len];
        rng.fill(&mut buf);
        // Half of them look like the real thing at first glance.
        if i % 4 == 0 {
            buf[0] = 0x4e;
        }
        let to = if i % 2 == 0 { data } else { ctl };
        if sock.send_to(&buf, to).is_ok() {
            if i % 2 == 0 {
                d += 1;
            } else {
                c += 1;
            }
        }
        std::thread::sleep(PACE);
    }
    Ok((d, c))
}

/// A control message of node a's to node `target`, as it crossed the wire: the whole
/// Ethernet frame, captured on the target's fabric interface.
#[derive(Debug, Clone)]
pub struct Captured {
    frame: Vec<u8>,
    /// Offset of the UDP header.
    udp: usize,
}

impl Captured {
    fn payload(&self) -> &[u8] {
        &self.frame[self.udp + 8..]
    }
}

/// Waits (up to 3 s) for a heartbeat from a to `target` and returns it.
pub fn capture_heartbeat(n: &Names, target: &str) -> Result<Captured> {
    let a = n.victim();
    let t = n
        .node(target)
        .ok_or_else(|| LabError::Precondition(format!("no node {target}")))?;
    let sock = raw_in(&t.ns, names::NODE_FABRIC)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        let Ok(Some(len)) = sock.recv(&mut buf, Duration::from_millis(100)) else {
            continue;
        };
        let f = &buf[..len.min(buf.len())];
        if let Some(udp) = heartbeat_from(f, a.fabric_ip) {
            return Ok(Captured {
                frame: f.to_vec(),
                udp,
            });
        }
    }
    Err(LabError::Timeout {
        what: format!("a heartbeat from a on {target}'s fabric interface"),
        waited_ms: 3000,
        detail: String::new(),
    })
}

/// The UDP header offset if `f` is an IPv4/UDP control heartbeat (type 3) from `src`.
fn heartbeat_from(f: &[u8], src: Ipv4Addr) -> Option<usize> {
    if f.len() < 14 + 20 + 8 + 30 || f[12..14] != [0x08, 0x00] || f[23] != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    let from = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
    let dport = u16::from_be_bytes([*f.get(udp + 2)?, *f.get(udp + 3)?]);
    let p = f.get(udp + 8..)?;
    (from == src && dport == names::FABRIC_PORT + 1 && p.len() > 2 && p[0] == 0x4e && p[1] == 0x13)
        .then_some(udp)
}

/// The captured frame with a new UDP payload and ports: lengths and the IPv4 header
/// checksum fixed, the UDP checksum left out (0, allowed over IPv4: the capture may hold
/// a checksum that the sender's NIC offload never filled in).
fn rebuild(c: &Captured, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = c.frame[..c.udp + 8].to_vec();
    f.extend_from_slice(payload);
    let udp = c.udp;
    let ip_len = u16::try_from(f.len() - 14).unwrap_or(u16::MAX);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = checksum::fold(checksum::add(0, &f[14..udp]));
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f[udp..udp + 2].copy_from_slice(&port.to_be_bytes());
    f[udp + 2..udp + 4].copy_from_slice(&port.to_be_bytes());
    let udp_len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    f[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
    f[udp + 6..udp + 8].copy_from_slice(&[0, 0]);
    f
}

/// The forged control messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// The captured message, byte for byte, again.
    Replay,
    /// Its tag with one bit flipped: not authenticated.
    BadTag,
    /// Its sender id changed to one that is no configured peer's.
    UnknownPeer,
}

/// Sends `count` forged copies of `c` from a's fabric interface. Returns frames sent.
pub fn forge_control(n: &Names, c: &Captured, kind: Forgery, count: u32) -> Result<u64> {
    let a = n.victim();
    let sock = raw_in(&a.ns, names::NODE_FABRIC)?;
    let mut payload = c.payload().to_vec();
    match kind {
        Forgery::Replay => {}
        Forgery::BadTag => {
            if let Some(last) = payload.last_mut() {
                *last ^= 0x01;
            }
        }
        Forgery::UnknownPeer => {
            // Sender id: length at byte 28, the id from 29; same length, another name.
            if let Some(b) = payload.get_mut(29) {
                *b = b'q';
            }
        }
    }
    let frame = rebuild(c, names::FABRIC_PORT + 1, &payload);
    let frames = vec![frame; usize::try_from(count).unwrap_or(0)];
    Ok(send_all(&sock, &frames).0)
}

/// Data frames on a's session to `target` (from a's own address and data port, as a's
/// daemon would send them) whose inner source MAC is `spoofed`, another node's MAC: a
/// broadcast ARP request that, forwarded, would teach the switch the wrong port for it.
pub fn spoofed_data(n: &Names, c: &Captured, spoofed: &str, count: u32) -> Result<u64> {
    let a = n.victim();
    let sock = raw_in(&a.ns, names::NODE_FABRIC)?;
    let src = mac_bytes(spoofed);
    let mut payload = dataplane::fabric::header::DATA_HEADER.to_vec();
    payload.extend_from_slice(&[0xff; 6]);
    payload.extend_from_slice(&src);
    payload.extend_from_slice(&[0x08, 0x06]);
    // ARP request: Ethernet/IPv4, who has 10.88.0.254, tell 10.88.0.3 (c's address).
    payload.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    payload.extend_from_slice(&src);
    payload.extend_from_slice(&[10, 88, 0, 3]);
    payload.extend_from_slice(&[0; 6]);
    payload.extend_from_slice(&[10, 88, 0, 254]);
    payload.resize(dataplane::fabric::header::DATA_HEADER_LEN + 60, 0);
    let frame = rebuild(c, names::FABRIC_PORT, &payload);
    let frames = vec![frame; usize::try_from(count).unwrap_or(0)];
    Ok(send_all(&sock, &frames).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Captured {
        // Ethernet + IPv4 (20 bytes) + UDP + a 40-byte control-like payload.
        let mut f = vec![0u8; 14 + 20 + 8 + 40];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 77, 0, 1]);
        f[30..34].copy_from_slice(&[10, 77, 0, 2]);
        f[36..38].copy_from_slice(&(names::FABRIC_PORT + 1).to_be_bytes());
        f[42] = 0x4e;
        f[43] = 0x13;
        Captured { frame: f, udp: 34 }
    }

    #[test]
    fn finds_heartbeats_and_rebuilds_valid_ipv4() {
        let c = sample();
        assert_eq!(
            heartbeat_from(&c.frame, Ipv4Addr::new(10, 77, 0, 1)),
            Some(34)
        );
        assert_eq!(heartbeat_from(&c.frame, Ipv4Addr::new(10, 77, 0, 9)), None);
        assert_eq!(
            heartbeat_from(&c.frame[..40], Ipv4Addr::new(10, 77, 0, 1)),
            None
        );
        let f = rebuild(&c, names::FABRIC_PORT, &[1, 2, 3]);
        assert_eq!(f.len(), 14 + 20 + 8 + 3);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 31);
        // A correct IPv4 header checksum folds to 0 with itself included.
        assert_eq!(checksum::fold(checksum::add(0, &f[14..34])), 0);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), names::FABRIC_PORT);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 11);
        assert_eq!(&f[42..], &[1, 2, 3]);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(mac_bytes("02:00:00:77:00:03"), [2, 0, 0, 0x77, 0, 3]);
    }
}
