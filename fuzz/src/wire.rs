//! Lets the neighbour-parser target get past the ICMPv6 checksum, which mutation alone
//! almost never satisfies.

use core::net::Ipv6Addr;

use dataplane::wire::checksum;
use dataplane::wire::icmpv6::field;
use dataplane::wire::ipv6::NEXT_HEADER_ICMPV6;

/// Writes the correct checksum into the ICMPv6 message `msg` carried from `src` to `dst`,
/// if it is long enough to hold the field.
pub fn fix_icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &mut [u8]) {
    let Ok(len) = u32::try_from(msg.len()) else {
        return;
    };
    if msg.len() < field::CHECKSUM.end {
        return;
    }
    msg[field::CHECKSUM].fill(0);
    let sum = checksum::fold(checksum::add(
        checksum::ipv6_pseudo_header(src, dst, len, NEXT_HEADER_ICMPV6),
        msg,
    ));
    msg[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
}

/// In a frame of Ethernet + IPv6 + ICMPv6 starting at `l3` (the IPv6 header), fixes the
/// ICMPv6 checksum in place; frames of any other shape are left alone.
pub fn fix_frame_checksum(frame: &mut [u8], l3: usize) {
    let Some(ip) = frame.get_mut(l3..) else {
        return;
    };
    if ip.len() < 40 || ip[0] >> 4 != 6 || ip[6] != NEXT_HEADER_ICMPV6 {
        return;
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let mut a = [0u8; 16];
    a.copy_from_slice(&ip[8..24]);
    let src = Ipv6Addr::from(a);
    a.copy_from_slice(&ip[24..40]);
    let dst = Ipv6Addr::from(a);
    let Some(msg) = ip.get_mut(40..40 + payload_len) else {
        return;
    };
    fix_icmpv6_checksum(&src, &dst, msg);
}
