//! The Internet checksum (RFC 1071) and the IPv6 pseudo-header (RFC 8200 §8.1).

use core::net::Ipv6Addr;

/// Adds `data` as big-endian 16-bit words (an odd last byte is padded with zero) to the
/// running one's-complement sum `acc`. Sums stay in a `u64` so no carry is lost for any
/// frame size; [`fold`] reduces them at the end.
pub fn add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits and complements it: the value to put in a checksum field.
/// A packet whose checksum field is correct folds, with the field included, to 0.
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IPv6 pseudo-header sum for an upper-layer packet of `len` bytes with protocol
/// `next_header`.
pub fn ipv6_pseudo_header(src: &Ipv6Addr, dst: &Ipv6Addr, len: u32, next_header: u8) -> u64 {
    let mut acc = add(0, &src.octets());
    acc = add(acc, &dst.octets());
    acc += u64::from(len >> 16) + u64::from(len & 0xffff);
    acc + u64::from(next_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement 220d).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(fold(add(0, &[0x12])), !0x1200);
        assert_eq!(fold(0), 0xffff);
    }
}
