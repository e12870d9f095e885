//! ARP for IPv4 over Ethernet (RFC 826).

use core::net::Ipv4Addr;

use super::error::{need, room, WireError};
use super::ethernet::Field;
use super::mac::MacAddr;

/// Byte ranges of an Ethernet/IPv4 ARP packet.
pub mod field {
    use super::Field;
    /// Hardware type (1 = Ethernet).
    pub const HTYPE: Field = 0..2;
    /// Protocol type (0x0800 = IPv4).
    pub const PTYPE: Field = 2..4;
    /// Hardware address length (6).
    pub const HLEN: usize = 4;
    /// Protocol address length (4).
    pub const PLEN: usize = 5;
    /// Operation.
    pub const OPER: Field = 6..8;
    /// Sender hardware address.
    pub const SHA: Field = 8..14;
    /// Sender protocol address.
    pub const SPA: Field = 14..18;
    /// Target hardware address.
    pub const THA: Field = 18..24;
    /// Target protocol address.
    pub const TPA: Field = 24..28;
    /// Length of the packet.
    pub const LEN: usize = 28;
}

/// ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArpOp {
    /// 1: who-has.
    Request,
    /// 2: is-at.
    Reply,
    /// Any other value (RARP and friends).
    Other(u16),
}

impl ArpOp {
    /// The wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
            ArpOp::Other(v) => v,
        }
    }

    /// From the wire value.
    pub const fn from_u16(v: u16) -> ArpOp {
        match v {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            v => ArpOp::Other(v),
        }
    }
}

/// A zero-copy view of an ARP packet (the Ethernet payload).
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn mac(b: &[u8]) -> MacAddr {
    MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Wraps `buffer` after checking it holds an Ethernet/IPv4 ARP packet's 28 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need("ARP packet", field::LEN, buffer.as_ref().len())?;
        Ok(ArpPacket { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Hardware type.
    pub fn htype(&self) -> u16 {
        be16(&self.b()[field::HTYPE])
    }
    /// Protocol type.
    pub fn ptype(&self) -> u16 {
        be16(&self.b()[field::PTYPE])
    }
    /// Hardware address length.
    pub fn hlen(&self) -> u8 {
        self.b()[field::HLEN]
    }
    /// Protocol address length.
    pub fn plen(&self) -> u8 {
        self.b()[field::PLEN]
    }
    /// Operation.
    pub fn operation(&self) -> ArpOp {
        ArpOp::from_u16(be16(&self.b()[field::OPER]))
    }
    /// Sender hardware address.
    pub fn sender_mac(&self) -> MacAddr {
        mac(&self.b()[field::SHA])
    }
    /// Sender protocol address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip(&self.b()[field::SPA])
    }
    /// Target hardware address.
    pub fn target_mac(&self) -> MacAddr {
        mac(&self.b()[field::THA])
    }
    /// Target protocol address.
    pub fn target_ip(&self) -> Ipv4Addr {
        ip(&self.b()[field::TPA])
    }
}

/// The content of an Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    /// Operation.
    pub operation: ArpOp,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Parses an ARP packet; anything but Ethernet/IPv4 ARP is `Malformed`.
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> Result<ArpRepr, WireError> {
        need("ARP packet", field::LEN, p.b().len())?;
        if p.htype() != 1 || p.ptype() != 0x0800 || p.hlen() != 6 || p.plen() != 4 {
            return Err(WireError::Malformed {
                what: "ARP packet",
                reason: "not Ethernet/IPv4 ARP (htype 1, ptype 0x0800, hlen 6, plen 4)",
            });
        }
        Ok(ArpRepr {
            operation: p.operation(),
            sender_mac: p.sender_mac(),
            sender_ip: p.sender_ip(),
            target_mac: p.target_mac(),
            target_ip: p.target_ip(),
        })
    }

    /// True for a gratuitous ARP: the sender announces its own address (SPA == TPA).
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }

    /// Writes the packet into the first 28 bytes of `buf`; returns 28.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        room("ARP packet", field::LEN, buf.len())?;
        buf[field::HTYPE].copy_from_slice(&1u16.to_be_bytes());
        buf[field::PTYPE].copy_from_slice(&0x0800u16.to_be_bytes());
        buf[field::HLEN] = 6;
        buf[field::PLEN] = 4;
        buf[field::OPER].copy_from_slice(&self.operation.to_u16().to_be_bytes());
        buf[field::SHA].copy_from_slice(&self.sender_mac.0);
        buf[field::SPA].copy_from_slice(&self.sender_ip.octets());
        buf[field::THA].copy_from_slice(&self.target_mac.0);
        buf[field::TPA].copy_from_slice(&self.target_ip.octets());
        Ok(field::LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_then_parse_round_trips() {
        let r = ArpRepr {
            operation: ArpOp::Reply,
            sender_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            sender_ip: Ipv4Addr::new(10, 0, 0, 1),
            target_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            target_ip: Ipv4Addr::new(10, 0, 0, 2),
        };
        let mut buf = [0u8; 28];
        assert_eq!(r.emit(&mut buf).unwrap(), 28);
        let p = ArpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p).unwrap(), r);
        assert!(!r.is_gratuitous());
        assert!(r.emit(&mut buf[..27]).is_err());
    }

    #[test]
    fn rejects_short_and_non_ipv4() {
        assert!(ArpPacket::new_checked(&[0u8; 27][..]).is_err());
        let mut buf = [0u8; 28];
        buf[..6].copy_from_slice(&[0, 6, 0x08, 0x00, 6, 4]); // htype 6 (IEEE 802)
        let p = ArpPacket::new_checked(&buf[..]).unwrap();
        assert!(matches!(
            ArpRepr::parse(&p),
            Err(WireError::Malformed { .. })
        ));
    }
}
