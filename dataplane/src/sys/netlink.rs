//! The few rtnetlink calls the control plane needs on the node's kernel interface: raise or
//! drop its carrier (the kernel keeps the interface, its MAC and its addresses; only the
//! carrier changes, as when a cable is pulled), read its carrier, and list its IPv4 and IPv6
//! addresses so that gratuitous ARP and unsolicited NA announce every one of them.
//!
//! A plain NETLINK_ROUTE socket, one request at a time, each answered by an ACK or a dump.
//! This runs on the control thread only, never per packet.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct NetlinkError {
    /// What was being attempted, naming the interface.
    pub action: String,
    /// The OS or kernel error.
    #[source]
    pub source: io::Error,
}

// rtnetlink constants (linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h) that libc does
// not export for every target.
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_CARRIER: u16 = 33;
const IFLA_OPERSTATE: u16 = 16;
/// RFC 2863 operational state "up" (`IF_OPER_UP`).
const IF_OPER_UP: u8 = 6;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;
const IFADDRMSG: usize = 8;

/// A NETLINK_ROUTE socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// The interface index of `name` in the caller's network namespace.
pub fn if_index(name: &str) -> Result<u32, NetlinkError> {
    let action = || format!("looking up interface '{name}'");
    let c = std::ffi::CString::new(name).map_err(|_| NetlinkError {
        action: action(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"),
    })?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(NetlinkError {
            action: action(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(idx)
}

impl Netlink {
    /// Opens a socket with a 1 s receive timeout, so a kernel that never answers cannot hang
    /// the control thread.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let err = |action: &str| NetlinkError {
            action: action.to_string(),
            source: io::Error::last_os_error(),
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(err("opening a netlink socket"));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval and its size is passed along.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("setting the netlink receive timeout"));
        }
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Raises or drops the carrier of interface `ifindex` (IFLA_CARRIER). TAP and
    /// virtio-user's tap implement it; the interface keeps its addresses and routes' config.
    pub fn set_carrier(&mut self, ifindex: u32, on: bool) -> Result<(), NetlinkError> {
        let mut msg = [0u8; NLMSG_HDR + IFINFOMSG + 8];
        let seq = self.header(&mut msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
        msg[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let a = NLMSG_HDR + IFINFOMSG;
        msg[a..a + 2].copy_from_slice(&5u16.to_ne_bytes());
        msg[a + 2..a + 4].copy_from_slice(&IFLA_CARRIER.to_ne_bytes());
        msg[a + 4] = u8::from(on);
        self.request(&msg, seq, || {
            format!(
                "setting carrier {} on interface #{ifindex}",
                if on { "on" } else { "off" }
            )
        })
    }

    /// Sends request `msg` (sequence number `seq`, asking for an ack) and waits for its ack;
    /// an error names `action`.
    fn request(
        &mut self,
        msg: &[u8],
        seq: u32,
        action: impl Fn() -> String,
    ) -> Result<(), NetlinkError> {
        self.send(msg)
            .and_then(|()| self.wait_ack(seq))
            .map_err(|source| NetlinkError {
                action: action(),
                source,
            })
    }

    /// Brings interface `ifindex` administratively up (IFF_UP), as `ip link set up` does.
    /// DPDK's virtio-user leaves the tap it creates over vhost-kernel down, where its TAP
    /// PMD brings its own interface up.
    pub fn set_up(&mut self, ifindex: u32) -> Result<(), NetlinkError> {
        let mut msg = [0u8; NLMSG_HDR + IFINFOMSG];
        let seq = self.header(&mut msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
        let h = NLMSG_HDR;
        msg[h + 4..h + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        // ifi_flags, then ifi_change: which flags the request changes.
        let up = libc::IFF_UP as u32;
        msg[h + 8..h + 12].copy_from_slice(&up.to_ne_bytes());
        msg[h + 12..h + 16].copy_from_slice(&up.to_ne_bytes());
        self.request(&msg, seq, || format!("bringing interface #{ifindex} up"))
    }

    /// Whether interface `ifindex` has carrier.
    pub fn carrier(&mut self, ifindex: u32) -> Result<bool, NetlinkError> {
        self.link_u8(ifindex, IFLA_CARRIER, "carrier")
            .map(|c| c != 0)
    }

    /// Whether interface `ifindex` is operationally up. The kernel sets this state from its
    /// deferred link-watch work after a carrier change, in the same step that swaps the
    /// interface's queue discipline in or out: until an interface whose carrier came back
    /// reports it, everything the kernel sends on it is dropped.
    pub fn oper_up(&mut self, ifindex: u32) -> Result<bool, NetlinkError> {
        self.link_u8(ifindex, IFLA_OPERSTATE, "operational state")
            .map(|s| s == IF_OPER_UP)
    }

    /// The first byte of link attribute `attr` of interface `ifindex`.
    fn link_u8(&mut self, ifindex: u32, attr: u16, what: &str) -> Result<u8, NetlinkError> {
        let mut msg = [0u8; NLMSG_HDR + IFINFOMSG];
        let seq = self.header(&mut msg, RTM_GETLINK, NLM_F_REQUEST);
        msg[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let action = || format!("reading the {what} of interface #{ifindex}");
        self.send(&msg).map_err(|source| NetlinkError {
            action: action(),
            source,
        })?;
        let mut value = None;
        self.read_replies(seq, |ty, body| {
            if ty == RTM_NEWLINK && body.len() >= IFINFOMSG {
                for (kind, val) in attrs(&body[IFINFOMSG..]) {
                    if kind == attr {
                        value = val.first().copied();
                    }
                }
            }
        })
        .map_err(|source| NetlinkError {
            action: action(),
            source,
        })?;
        value.ok_or_else(|| NetlinkError {
            action: action(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the kernel sent no link attribute {attr} ({what})"),
            ),
        })
    }

    /// Every IPv4 and IPv6 address of interface `ifindex`.
    pub fn addresses(&mut self, ifindex: u32) -> Result<Vec<IpAddr>, NetlinkError> {
        let mut msg = [0u8; NLMSG_HDR + IFADDRMSG];
        let seq = self.header(&mut msg, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
        let action = || format!("listing the addresses of interface #{ifindex}");
        self.send(&msg).map_err(|source| NetlinkError {
            action: action(),
            source,
        })?;
        let mut out = Vec::new();
        self.read_replies(seq, |ty, body| {
            if ty != RTM_NEWADDR || body.len() < IFADDRMSG {
                return;
            }
            let family = body[0];
            let index = u32::from_ne_bytes([body[4], body[5], body[6], body[7]]);
            if index != ifindex {
                return;
            }
            // IFA_LOCAL is the interface's own IPv4 address (IFA_ADDRESS is the peer's on
            // point-to-point links); IPv6 only sends IFA_ADDRESS.
            let (mut local, mut address) = (None, None);
            for (kind, val) in attrs(&body[IFADDRMSG..]) {
                let ip = match (i32::from(family), val.len()) {
                    (libc::AF_INET, 4) => {
                        Some(IpAddr::V4(Ipv4Addr::new(val[0], val[1], val[2], val[3])))
                    }
                    (libc::AF_INET6, 16) => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(val);
                        Some(IpAddr::V6(Ipv6Addr::from(b)))
                    }
                    _ => None,
                };
                match kind {
                    IFA_LOCAL => local = ip,
                    IFA_ADDRESS => address = ip,
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push(ip);
            }
        })
        .map_err(|source| NetlinkError {
            action: action(),
            source,
        })?;
        Ok(out)
    }

    fn header(&mut self, msg: &mut [u8], ty: u16, flags: u16) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&ty.to_ne_bytes());
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        self.seq
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl is valid; nl_family marks it netlink, pid 0 is the
        // kernel.
        let mut to: libc::sockaddr_nl = unsafe { mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `to` are valid for the lengths passed.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait_ack(&mut self, seq: u32) -> io::Result<()> {
        self.read_replies(seq, |_, _| {})
    }

    /// Reads replies to request `seq` until its ACK, NLMSG_DONE, or (for a plain request) its
    /// one answer, handing each message's type and body to `f`. A kernel error is returned.
    fn read_replies(&mut self, seq: u32, mut f: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            if std::time::Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no netlink answer"));
            }
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &self.buf[..n as usize];
            let mut done = false;
            while rest.len() >= NLMSG_HDR {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < NLMSG_HDR || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink message",
                    ));
                }
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                let body = &rest[NLMSG_HDR..len];
                if mseq == seq {
                    match ty {
                        NLMSG_ERROR => {
                            let code = body
                                .get(..4)
                                .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                            if code != 0 {
                                return Err(io::Error::from_raw_os_error(-code));
                            }
                            done = true;
                        }
                        NLMSG_DONE => done = true,
                        _ => {
                            f(ty, body);
                            if u16::from_ne_bytes([rest[6], rest[7]]) & 2 == 0 {
                                // Not part of a multi-part dump: the single answer.
                                done = true;
                            }
                        }
                    }
                }
                let aligned = (len + 3) & !3;
                rest = rest.get(aligned..).unwrap_or(&[]);
            }
            if done {
                return Ok(());
            }
        }
    }
}

/// Iterates the rtattrs of a netlink body: (type, value).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let val = &b[4..len];
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, val))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_are_total() {
        let b = [8u8, 0, 33, 0, 1, 0, 0, 0, 5, 0, 1, 0, 9];
        let v: Vec<_> = attrs(&b).collect();
        assert_eq!(v, vec![(33, &[1u8, 0, 0, 0][..]), (1, &[9u8][..])]);
        assert_eq!(attrs(&[255, 0, 1]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }

    #[test]
    fn loopback_has_its_addresses_and_unknown_names_fail() {
        let lo = if_index("lo").expect("lo exists");
        let mut nl = Netlink::open().expect("netlink socket");
        let addrs = nl.addresses(lo).expect("dump");
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
        let e = if_index("no-such-if0").unwrap_err().to_string();
        assert!(e.contains("no-such-if0"), "{e}");
    }
}
