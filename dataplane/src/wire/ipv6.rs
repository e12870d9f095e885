//! The fixed IPv6 header (RFC 8200). Extension headers are not walked: neighbour discovery
//! packets carry none.

use core::net::Ipv6Addr;

use super::error::{need, room, WireError};
use super::ethernet::Field;

/// Byte ranges of the fixed IPv6 header.
pub mod field {
    use super::Field;
    /// Version, traffic class, flow label.
    pub const VER_TC_FLOW: Field = 0..4;
    /// Payload length.
    pub const PAYLOAD_LEN: Field = 4..6;
    /// Next header.
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC: Field = 8..24;
    /// Destination address.
    pub const DST: Field = 24..40;
    /// Length of the fixed header.
    pub const HEADER_LEN: usize = 40;
}

/// Next-header value of ICMPv6.
pub const NEXT_HEADER_ICMPV6: u8 = 58;

/// A zero-copy view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    Ipv6Addr::from(o)
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps `buffer` after checking the version is 6 and the buffer holds the header and the
    /// payload length it announces (trailing Ethernet padding is allowed).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Ipv6Packet { buffer };
        let b = p.buffer.as_ref();
        need("IPv6 header", field::HEADER_LEN, b.len())?;
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed {
                what: "IPv6 header",
                reason: "version is not 6",
            });
        }
        need(
            "IPv6 payload",
            field::HEADER_LEN + usize::from(p.payload_len()),
            b.len(),
        )?;
        Ok(p)
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Payload length field.
    pub fn payload_len(&self) -> u16 {
        let b = &self.b()[field::PAYLOAD_LEN];
        u16::from_be_bytes([b[0], b[1]])
    }
    /// Next header.
    pub fn next_header(&self) -> u8 {
        self.b()[field::NEXT_HEADER]
    }
    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }
    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        addr(&self.b()[field::SRC])
    }
    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        addr(&self.b()[field::DST])
    }
    /// The payload, exactly `payload_len` bytes (padding cut off).
    pub fn payload(&self) -> &[u8] {
        let end = (field::HEADER_LEN + usize::from(self.payload_len())).min(self.b().len());
        &self.b()[field::HEADER_LEN..end]
    }
}

/// The fixed header's content (traffic class and flow label are always written as 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next header.
    pub next_header: u8,
    /// Payload length.
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
}

impl Ipv6Repr {
    /// Reads the header fields of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv6Packet<T>) -> Ipv6Repr {
        Ipv6Repr {
            src: p.src(),
            dst: p.dst(),
            next_header: p.next_header(),
            payload_len: p.payload_len(),
            hop_limit: p.hop_limit(),
        }
    }

    /// Writes the 40-byte header at the start of `buf`; returns 40.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        room("IPv6 header", field::HEADER_LEN, buf.len())?;
        buf[field::VER_TC_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
        buf[field::PAYLOAD_LEN].copy_from_slice(&self.payload_len.to_be_bytes());
        buf[field::NEXT_HEADER] = self.next_header;
        buf[field::HOP_LIMIT] = self.hop_limit;
        buf[field::SRC].copy_from_slice(&self.src.octets());
        buf[field::DST].copy_from_slice(&self.dst.octets());
        Ok(field::HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let r = Ipv6Repr {
            src: "fe80::1".parse().unwrap(),
            dst: "ff02::1".parse().unwrap(),
            next_header: NEXT_HEADER_ICMPV6,
            payload_len: 8,
            hop_limit: 255,
        };
        let mut buf = [0u8; 50];
        r.emit(&mut buf).unwrap();
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Ipv6Repr::parse(&p), r);
        assert_eq!(p.payload().len(), 8);
        assert!(Ipv6Packet::new_checked(&buf[..47]).is_err());
        buf[0] = 0x45;
        assert!(matches!(
            Ipv6Packet::new_checked(&buf[..]),
            Err(WireError::Malformed { .. })
        ));
    }
}
