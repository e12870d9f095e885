//! Builders of the frames that announce a MAC's new place after a path change: gratuitous
//! ARP (IPv4) and unsolicited Neighbor Advertisement (IPv6). They write into a
//! caller-provided buffer (an mbuf's data room) and return the frame length: no allocation.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::arp::{ArpOp, ArpRepr};
use super::error::{room, WireError};
use super::ethernet::{self, ethertype, VlanTag};
use super::icmpv6::{NaFlags, NdpRepr};
use super::ipv6::{Ipv6Repr, NEXT_HEADER_ICMPV6};
use super::mac::MacAddr;

/// Minimum Ethernet frame length without FCS. Short frames are zero-padded to it here
/// rather than trusting every PMD to pad.
pub const MIN_FRAME_LEN: usize = 60;

/// The all-nodes link-local multicast group, ff02::1.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Which form of gratuitous ARP to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GarpKind {
    /// ARP request with sender = target = the address, target MAC zero. What Linux bonding
    /// and `arping -U` send; updates caches that hold the IP and switch FDBs.
    Request,
    /// ARP reply with sender = target = the address and target MAC = the MAC (`arping -A`).
    /// Some old stacks only update their caches from replies.
    Reply,
}

/// A gratuitous ARP announcing that `ip` is at `mac`, sent to the broadcast MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Garp {
    /// The MAC being announced (also the Ethernet source).
    pub mac: MacAddr,
    /// The IPv4 address being announced.
    pub ip: Ipv4Addr,
    /// Optional 802.1Q tag on the frame.
    pub vlan: Option<VlanTag>,
    /// Request or reply form.
    pub kind: GarpKind,
}

impl Garp {
    /// Length of every built GARP frame (42 or 46 bytes padded to the Ethernet minimum).
    pub const FRAME_LEN: usize = MIN_FRAME_LEN;

    /// Writes the frame into `buf` and returns its length ([`Garp::FRAME_LEN`]).
    pub fn build(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        room("gratuitous ARP", Self::FRAME_LEN, buf.len())?;
        let buf = &mut buf[..Self::FRAME_LEN];
        let off =
            ethernet::write_header(buf, MacAddr::BROADCAST, self.mac, self.vlan, ethertype::ARP)?;
        let (operation, target_mac) = match self.kind {
            GarpKind::Request => (ArpOp::Request, MacAddr::ZERO),
            GarpKind::Reply => (ArpOp::Reply, self.mac),
        };
        let n = ArpRepr {
            operation,
            sender_mac: self.mac,
            sender_ip: self.ip,
            target_mac,
            target_ip: self.ip,
        }
        .emit(&mut buf[off..])?;
        buf[off + n..].fill(0);
        Ok(Self::FRAME_LEN)
    }
}

/// An unsolicited Neighbor Advertisement (RFC 4861 §7.2.6) announcing that `target` is at
/// `mac`: sent from `target` to ff02::1 (MAC 33:33:00:00:00:01), hop limit 255, Override set,
/// Solicited clear, with a target link-layer address option.
///
/// The IPv6 source is the target address itself, as Linux does for its own addresses; a
/// proxy announcing on a client's behalf therefore sends exactly what the client would.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnsolicitedNa {
    /// The MAC being announced (Ethernet source and target link-layer option).
    pub mac: MacAddr,
    /// The IPv6 address being announced.
    pub target: Ipv6Addr,
    /// Sets the Router flag (the node forwards IPv6).
    pub router: bool,
    /// Optional 802.1Q tag on the frame.
    pub vlan: Option<VlanTag>,
}

impl UnsolicitedNa {
    /// Length of the ICMPv6 message (24 + an 8-byte option).
    pub const ICMPV6_LEN: usize = 32;

    /// Frame length: 14 (+4 with a tag) + 40 + 32.
    pub const fn frame_len(&self) -> usize {
        14 + if self.vlan.is_some() { 4 } else { 0 } + 40 + Self::ICMPV6_LEN
    }

    /// Writes the frame into `buf` and returns its length ([`UnsolicitedNa::frame_len`]).
    pub fn build(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.frame_len();
        room("unsolicited neighbour advertisement", len, buf.len())?;
        let buf = &mut buf[..len];
        let dst_mac = MacAddr::ipv6_multicast(&ALL_NODES);
        let mut off = ethernet::write_header(buf, dst_mac, self.mac, self.vlan, ethertype::IPV6)?;
        off += Ipv6Repr {
            src: self.target,
            dst: ALL_NODES,
            next_header: NEXT_HEADER_ICMPV6,
            payload_len: Self::ICMPV6_LEN as u16,
            hop_limit: 255,
        }
        .emit(&mut buf[off..])?;
        off += NdpRepr::NeighborAdvert {
            flags: NaFlags {
                router: self.router,
                solicited: false,
                override_flag: true,
            },
            target: self.target,
            target_ll: Some(self.mac),
        }
        .emit(&self.target, &ALL_NODES, &mut buf[off..])?;
        debug_assert_eq!(off, len);
        Ok(off)
    }
}
