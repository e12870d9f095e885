//! Ethernet MAC addresses.

use core::fmt;
use core::str::FromStr;

/// A 48-bit IEEE 802 MAC address, in transmission (network) byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00, the "unknown" target hardware address of ARP requests.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// True for ff:ff:ff:ff:ff:ff.
    pub const fn is_broadcast(&self) -> bool {
        u64_of(&self.0) == 0xffff_ffff_ffff
    }

    /// True when the I/G (group) bit is set: multicast, including broadcast.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for an individual (unicast) address.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// True for the IEEE 802.1D reserved link-local group 01:80:c2:00:00:00..0f (STP, LACP,
    /// LLDP, pause, ...), which a bridge must never forward.
    pub const fn is_link_local_group(&self) -> bool {
        u64_of(&self.0) & !0xf == 0x0180_c200_0000
    }

    /// The address as a big-endian 48-bit integer (top 16 bits zero): `aa:..:ff` is
    /// `0xaa..ff`. This is the MAC half of a steering key.
    pub const fn to_u64(self) -> u64 {
        u64_of(&self.0)
    }

    /// Inverse of [`MacAddr::to_u64`]; the top 16 bits are ignored.
    pub const fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Reads a MAC from the first six bytes of `bytes`, or `None` if there are fewer.
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        bytes.get(..6)?.try_into().ok().map(MacAddr)
    }

    /// The IPv6 multicast MAC (33:33 + low 32 bits) that carries packets to `group`.
    pub const fn ipv6_multicast(group: &core::net::Ipv6Addr) -> MacAddr {
        let o = group.octets();
        MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

const fn u64_of(b: &[u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parsing MAC address {input:?}: {reason} (expected six two-digit hex octets separated by ':' or '-', like aa:bb:cc:dd:ee:ff)")]
pub struct ParseMacError {
    /// The rejected input (truncated to 64 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseMacError {
            input: s.chars().take(64).collect(),
            reason,
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 {
                return Err(err("more than six octets"));
            }
            if part.len() != 2 {
                return Err(err("an octet is not exactly two hex digits"));
            }
            // Checked first: from_str_radix would accept a leading '+'.
            if !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err("not a hex digit"));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| err("not a hex digit"))?;
            n += 1;
        }
        if n != 6 {
            return Err(err("fewer than six octets"));
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let m: MacAddr = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(m.0, [0x02, 0xab, 0xcd, 0x00, 0x01, 0xff]);
        assert_eq!(m.to_string(), "02:ab:cd:00:01:ff");
        assert_eq!("02-ab-cd-00-01-ff".parse::<MacAddr>().unwrap(), m);
        assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
    }

    #[test]
    fn rejects_bad_strings_with_reason() {
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:ff:00",
            "2:ab:cd:00:01:ff",
            "02:ab:cd:00:01:fg",
            "02:ab:cd:00:01:+f",
            "02:ab:cd-00:01:ff",
            "02ab.cd00.01ff",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e.to_string().contains("parsing MAC address"), "{e}");
        }
    }

    #[test]
    fn classes_and_u64() {
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast());
        let mc: MacAddr = "33:33:00:00:00:01".parse().unwrap();
        assert!(mc.is_multicast() && !mc.is_broadcast() && !mc.is_unicast());
        let uc: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        assert!(uc.is_unicast());
        assert_eq!(uc.to_u64(), 0x0200_0000_0001);
        assert_eq!(MacAddr::from_u64(0xffff_0200_0000_0001), uc);
        let lldp: MacAddr = "01:80:c2:00:00:0e".parse().unwrap();
        assert!(lldp.is_link_local_group());
        assert!(!"01:80:c2:00:00:10"
            .parse::<MacAddr>()
            .unwrap()
            .is_link_local_group());
        let g: core::net::Ipv6Addr = "ff02::1:ff00:1234".parse().unwrap();
        assert_eq!(MacAddr::ipv6_multicast(&g).to_string(), "33:33:ff:00:12:34");
    }
}
