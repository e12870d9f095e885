//! ICMPv6 neighbour discovery messages (RFC 4861 §4.3, §4.4): Neighbor Solicitation and
//! Neighbor Advertisement with their link-layer address options.

use core::net::Ipv6Addr;

use super::checksum;
use super::error::{need, room, WireError};
use super::ethernet::Field;
use super::ipv6::NEXT_HEADER_ICMPV6;
use super::mac::MacAddr;

/// Byte ranges of an NS/NA message.
pub mod field {
    use super::Field;
    /// Message type.
    pub const TYPE: usize = 0;
    /// Code (0 for NDP).
    pub const CODE: usize = 1;
    /// Checksum over the IPv6 pseudo-header and the message.
    pub const CHECKSUM: Field = 2..4;
    /// NA flags (R, S, O in the top three bits); reserved in NS.
    pub const FLAGS: usize = 4;
    /// Target address.
    pub const TARGET: Field = 8..24;
    /// Start of the options.
    pub const OPTIONS: usize = 24;
}

/// ICMPv6 type of a Neighbor Solicitation.
pub const TYPE_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 type of a Neighbor Advertisement.
pub const TYPE_NEIGHBOR_ADVERT: u8 = 136;
/// Option type: source link-layer address.
pub const OPT_SOURCE_LL: u8 = 1;
/// Option type: target link-layer address.
pub const OPT_TARGET_LL: u8 = 2;
/// Length of a link-layer address option carrying a MAC.
pub const LL_OPTION_LEN: usize = 8;

const FLAG_ROUTER: u8 = 0x80;
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;

/// The flags of a Neighbor Advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct NaFlags {
    /// R: the sender is a router.
    pub router: bool,
    /// S: sent in response to a solicitation. Clear in unsolicited advertisements.
    pub solicited: bool,
    /// O: override an existing cache entry. Set in unsolicited advertisements so that
    /// neighbours update a stale MAC.
    pub override_flag: bool,
}

impl NaFlags {
    const fn to_byte(self) -> u8 {
        (if self.router { FLAG_ROUTER } else { 0 })
            | (if self.solicited { FLAG_SOLICITED } else { 0 })
            | (if self.override_flag { FLAG_OVERRIDE } else { 0 })
    }

    const fn from_byte(b: u8) -> NaFlags {
        NaFlags {
            router: b & FLAG_ROUTER != 0,
            solicited: b & FLAG_SOLICITED != 0,
            override_flag: b & FLAG_OVERRIDE != 0,
        }
    }
}

/// A parsed (or to-be-built) NS or NA message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NdpRepr {
    /// Neighbor Solicitation.
    NeighborSolicit {
        /// Address being resolved.
        target: Ipv6Addr,
        /// Source link-layer address option, if present.
        source_ll: Option<MacAddr>,
    },
    /// Neighbor Advertisement.
    NeighborAdvert {
        /// R/S/O flags.
        flags: NaFlags,
        /// Address being advertised.
        target: Ipv6Addr,
        /// Target link-layer address option, if present.
        target_ll: Option<MacAddr>,
    },
}

impl NdpRepr {
    /// Bytes this message occupies when emitted (24 + 8 per link-layer option).
    pub fn len(&self) -> usize {
        let opt = match self {
            NdpRepr::NeighborSolicit { source_ll, .. } => source_ll.is_some(),
            NdpRepr::NeighborAdvert { target_ll, .. } => target_ll.is_some(),
        };
        field::OPTIONS + if opt { LL_OPTION_LEN } else { 0 }
    }

    /// Always false: a message has at least its 24-byte fixed part.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parses an ICMPv6 message carried from `src` to `dst`. Returns `Ok(None)` for ICMPv6
    /// types other than NS/NA; the checksum is verified for NS/NA.
    pub fn parse(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> Result<Option<NdpRepr>, WireError> {
        need("ICMPv6 header", 4, msg.len())?;
        let ty = msg[field::TYPE];
        if ty != TYPE_NEIGHBOR_SOLICIT && ty != TYPE_NEIGHBOR_ADVERT {
            return Ok(None);
        }
        need(
            "ICMPv6 neighbour discovery message",
            field::OPTIONS,
            msg.len(),
        )?;
        if msg[field::CODE] != 0 {
            return Err(WireError::Malformed {
                what: "ICMPv6 neighbour discovery message",
                reason: "code is not 0",
            });
        }
        let len = u32::try_from(msg.len()).map_err(|_| WireError::Malformed {
            what: "ICMPv6 neighbour discovery message",
            reason: "longer than 4 GiB",
        })?;
        let sum = checksum::fold(checksum::add(
            checksum::ipv6_pseudo_header(src, dst, len, NEXT_HEADER_ICMPV6),
            msg,
        ));
        if sum != 0 {
            let found = u16::from_be_bytes([msg[2], msg[3]]);
            let mut zeroed = [0u8; field::OPTIONS];
            zeroed.copy_from_slice(&msg[..field::OPTIONS]);
            zeroed[field::CHECKSUM].fill(0);
            let expected = checksum::fold(checksum::add(
                checksum::add(
                    checksum::ipv6_pseudo_header(src, dst, len, NEXT_HEADER_ICMPV6),
                    &zeroed,
                ),
                &msg[field::OPTIONS..],
            ));
            return Err(WireError::BadChecksum { found, expected });
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&msg[field::TARGET]);
        let target = Ipv6Addr::from(t);
        let wanted = if ty == TYPE_NEIGHBOR_SOLICIT {
            OPT_SOURCE_LL
        } else {
            OPT_TARGET_LL
        };
        let ll = find_ll_option(&msg[field::OPTIONS..], wanted)?;
        Ok(Some(if ty == TYPE_NEIGHBOR_SOLICIT {
            NdpRepr::NeighborSolicit {
                target,
                source_ll: ll,
            }
        } else {
            NdpRepr::NeighborAdvert {
                flags: NaFlags::from_byte(msg[field::FLAGS]),
                target,
                target_ll: ll,
            }
        }))
    }

    /// Writes the message into `buf` with its checksum for the pseudo-header `src` → `dst`;
    /// returns its length.
    pub fn emit(&self, src: &Ipv6Addr, dst: &Ipv6Addr, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.len();
        room("ICMPv6 neighbour discovery message", len, buf.len())?;
        let buf = &mut buf[..len];
        buf.fill(0);
        let (ty, flags, target, opt) = match *self {
            NdpRepr::NeighborSolicit { target, source_ll } => (
                TYPE_NEIGHBOR_SOLICIT,
                0,
                target,
                source_ll.map(|m| (OPT_SOURCE_LL, m)),
            ),
            NdpRepr::NeighborAdvert {
                flags,
                target,
                target_ll,
            } => (
                TYPE_NEIGHBOR_ADVERT,
                flags.to_byte(),
                target,
                target_ll.map(|m| (OPT_TARGET_LL, m)),
            ),
        };
        buf[field::TYPE] = ty;
        buf[field::FLAGS] = flags;
        buf[field::TARGET].copy_from_slice(&target.octets());
        if let Some((ot, mac)) = opt {
            let o = &mut buf[field::OPTIONS..field::OPTIONS + LL_OPTION_LEN];
            o[0] = ot;
            o[1] = 1; // length in units of 8 bytes
            o[2..8].copy_from_slice(&mac.0);
        }
        // len is at most 32: the cast cannot truncate.
        let sum = checksum::fold(checksum::add(
            checksum::ipv6_pseudo_header(src, dst, len as u32, NEXT_HEADER_ICMPV6),
            buf,
        ));
        buf[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        Ok(len)
    }
}

/// Finds the first link-layer address option of type `wanted`; malformed option lengths
/// are errors (RFC 4861 §4.6: a zero length must make the packet be discarded).
fn find_ll_option(mut opts: &[u8], wanted: u8) -> Result<Option<MacAddr>, WireError> {
    let mut found = None;
    while !opts.is_empty() {
        need("ICMPv6 option header", 2, opts.len())?;
        let len = usize::from(opts[1]) * 8;
        if len == 0 {
            return Err(WireError::Malformed {
                what: "ICMPv6 option",
                reason: "option length is 0",
            });
        }
        need("ICMPv6 option", len, opts.len())?;
        if opts[0] == wanted && found.is_none() {
            found = MacAddr::from_bytes(&opts[2..len]);
        }
        opts = &opts[len..];
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (Ipv6Addr, Ipv6Addr) {
        ("2001:db8::1".parse().unwrap(), "ff02::1".parse().unwrap())
    }

    #[test]
    fn ns_and_na_round_trip() {
        let (s, d) = addrs();
        let mac = MacAddr([2, 0, 0, 0, 0, 7]);
        for r in [
            NdpRepr::NeighborSolicit {
                target: s,
                source_ll: Some(mac),
            },
            NdpRepr::NeighborSolicit {
                target: s,
                source_ll: None,
            },
            NdpRepr::NeighborAdvert {
                flags: NaFlags {
                    router: true,
                    solicited: false,
                    override_flag: true,
                },
                target: s,
                target_ll: Some(mac),
            },
        ] {
            let mut buf = [0u8; 40];
            let n = r.emit(&s, &d, &mut buf).unwrap();
            assert_eq!(n, r.len());
            assert_eq!(NdpRepr::parse(&s, &d, &buf[..n]).unwrap(), Some(r));
            // Any flipped bit breaks the checksum.
            buf[10] ^= 1;
            assert!(matches!(
                NdpRepr::parse(&s, &d, &buf[..n]),
                Err(WireError::BadChecksum { .. })
            ));
        }
    }

    #[test]
    fn other_types_and_bad_options() {
        let (s, d) = addrs();
        // Echo request: not NDP.
        assert_eq!(
            NdpRepr::parse(&s, &d, &[128, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            None
        );
        assert!(NdpRepr::parse(&s, &d, &[135, 0]).is_err());
        // Zero-length option.
        let mut buf = [0u8; 32];
        buf[0] = TYPE_NEIGHBOR_ADVERT;
        buf[24] = OPT_TARGET_LL;
        let sum = checksum::fold(checksum::add(
            checksum::ipv6_pseudo_header(&s, &d, 32, 58),
            &buf,
        ));
        buf[2..4].copy_from_slice(&sum.to_be_bytes());
        assert!(matches!(
            NdpRepr::parse(&s, &d, &buf),
            Err(WireError::Malformed { .. })
        ));
    }
}
