//! Recognises neighbour-resolution frames: ARP requests/replies and ICMPv6 NS/NA. Used by
//! tests to read back what the builders made, and by capture/diagnostics to spot
//! announcements; it is not on the forwarding path.

use core::net::Ipv6Addr;

use super::arp::{ArpPacket, ArpRepr};
use super::error::WireError;
use super::ethernet::{ethertype, parse_l2, L2Header};
use super::icmpv6::NdpRepr;
use super::ipv6::{Ipv6Packet, NEXT_HEADER_ICMPV6};

/// A neighbour-resolution frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The frame's layer-2 header.
    pub l2: L2Header,
    /// What it carries.
    pub msg: NeighbourMsg,
}

/// The neighbour-resolution message of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighbourMsg {
    /// ARP (request, reply, or other operation).
    Arp(ArpRepr),
    /// ICMPv6 Neighbor Solicitation or Advertisement.
    Ndp {
        /// IPv6 source.
        src: Ipv6Addr,
        /// IPv6 destination.
        dst: Ipv6Addr,
        /// IPv6 hop limit (RFC 4861 requires 255; reported, not enforced, here).
        hop_limit: u8,
        /// The message.
        repr: NdpRepr,
    },
}

/// Parses `frame`. `Ok(None)` means a well-formed frame that is not ARP or NS/NA; errors
/// mean a truncated or malformed ARP/IPv6/ICMPv6 part (including a bad ICMPv6 checksum).
pub fn parse_neighbour(frame: &[u8]) -> Result<Option<Neighbour>, WireError> {
    let l2 = parse_l2(frame)?;
    let payload = &frame[l2.payload_offset..];
    let msg = match l2.ethertype {
        ethertype::ARP => NeighbourMsg::Arp(ArpRepr::parse(&ArpPacket::new_checked(payload)?)?),
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(payload)?;
            if ip.next_header() != NEXT_HEADER_ICMPV6 {
                return Ok(None);
            }
            let (src, dst) = (ip.src(), ip.dst());
            match NdpRepr::parse(&src, &dst, ip.payload())? {
                Some(repr) => NeighbourMsg::Ndp {
                    src,
                    dst,
                    hop_limit: ip.hop_limit(),
                    repr,
                },
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(Neighbour { l2, msg }))
}
