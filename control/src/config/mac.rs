//! Ethernet MAC addresses as they appear in configs and on the session protocol.
//!
//! Local to the control crate for now; the dataplane has its own wire type and the two are
//! to be unified.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A 48-bit Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {text:?}: expected six hex octets separated by ':' or '-', like aa:bb:cc:00:11:22")]
pub struct MacParseError {
    /// The rejected text.
    pub text: String,
}

impl MacAddr {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The group bit (I/G) is set: multicast or broadcast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// All zero: never a valid station address.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// A usable station address: neither group nor all-zero.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            text: s.to_string(),
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for slot in &mut out {
            let part = parts.next().ok_or_else(err)?;
            // from_str_radix alone would accept a leading '+'.
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_separators_and_any_case() {
        let want = MacAddr([0x02, 0xab, 0x00, 0x10, 0xff, 0x0e]);
        assert_eq!("02:ab:00:10:ff:0e".parse::<MacAddr>(), Ok(want));
        assert_eq!("02-AB-00-10-FF-0E".parse::<MacAddr>(), Ok(want));
        assert_eq!(want.to_string(), "02:ab:00:10:ff:0e");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "02:ab:00:10:ff",
            "02:ab:00:10:ff:0e:11",
            "2:ab:00:10:ff:0e",
            "02:ab:00:10:ff:0g",
            "02ab0010ff0e",
            "02:ab-00:10:ff:0e",
            "+2:ab:00:10:ff:0e",
            "02:ab:00:10:ff:0e ",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn classifies() {
        assert!(MacAddr([0x02, 0, 0, 0, 0, 1]).is_unicast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!MacAddr([0; 6]).is_unicast());
    }
}
