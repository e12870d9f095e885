//! The frame parsers of `dataplane::wire`: `parse_l2` / `walk_tags` / `EthernetFrame`,
//! `parse_neighbour`, `ArpPacket` + `ArpRepr`, `Ipv6Packet` and `NdpRepr` on arbitrary
//! bytes.
//!
//! Input: one flags byte, then the frame. Flag bit 0 fixes the ICMPv6 checksum first (of
//! the frame's IPv6 payload, and of the whole input read as an ICMPv6 message), so that
//! mutated NS/NA messages get past the checksum into the option parser.
//! Contracts checked beyond "no panic":
//! - the three views of the Ethernet header agree and the payload offset is 14, 18 or 22;
//! - an ARP packet that parses re-emits to exactly the 28 bytes it was parsed from;
//! - an NS/NA that parses re-emits to a message that parses back to the same value;
//! - `parse_neighbour` reports the same L2 header as `parse_l2`, errors only for ARP or
//!   IPv6 frames, and finds ARP exactly where `ArpRepr` alone does.

#![no_main]

use core::net::Ipv6Addr;

use dataplane::wire::arp::{ArpPacket, ArpRepr};
use dataplane::wire::ethernet::{ethertype, walk_tags, EthernetFrame};
use dataplane::wire::icmpv6::NdpRepr;
use dataplane::wire::ipv6::Ipv6Packet;
use dataplane::wire::{parse_l2, parse_neighbour, NeighbourMsg};
use libfuzzer_sys::fuzz_target;
use nicproxy_fuzz::wire::{fix_frame_checksum, fix_icmpv6_checksum};

const SRC: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const DST: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

fn check_arp(bytes: &[u8]) -> Option<ArpRepr> {
    let p = ArpPacket::new_checked(bytes).ok()?;
    let r = ArpRepr::parse(&p).ok()?;
    let mut out = [0u8; 28];
    assert_eq!(r.emit(&mut out), Ok(28));
    assert_eq!(&out[..], &bytes[..28], "{r:?} does not re-emit");
    Some(r)
}

fn check_ndp(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) {
    if let Ok(Some(r)) = NdpRepr::parse(src, dst, msg) {
        let mut out = [0u8; 64];
        let n = r.emit(src, dst, &mut out).expect("64 bytes hold any NS/NA");
        assert_eq!(n, r.len());
        assert_eq!(NdpRepr::parse(src, dst, &out[..n]), Ok(Some(r)));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, frame)) = data.split_first() else {
        return;
    };
    let mut frame = frame.to_vec();
    let fix = flags & 1 != 0;

    let l2 = parse_l2(&frame);
    let tags = walk_tags(&frame);
    let view = EthernetFrame::new_checked(&frame[..]);
    assert_eq!(l2.is_ok(), tags.is_ok());
    if let Ok(v) = &view {
        assert_eq!(v.header(), l2);
        if let Ok(h) = &l2 {
            assert_eq!(
                v.payload().map(<[u8]>::len),
                Ok(frame.len() - h.payload_offset)
            );
            assert_eq!(v.dst(), h.dst);
            assert_eq!(v.src(), h.src);
        }
    } else {
        assert!(frame.len() < 14 && l2.is_err());
    }
    if let Ok(h) = &l2 {
        assert!(matches!(h.payload_offset, 14 | 18 | 22));
        assert!(h.payload_offset <= frame.len());
        if fix {
            fix_frame_checksum(&mut frame, h.payload_offset);
        }
    }

    match parse_neighbour(&frame) {
        Ok(Some(n)) => {
            let h = parse_l2(&frame).expect("a neighbour frame has an L2 header");
            assert_eq!(n.l2, h);
            let payload = &frame[h.payload_offset..];
            match n.msg {
                NeighbourMsg::Arp(r) => {
                    assert_eq!(h.ethertype, ethertype::ARP);
                    assert_eq!(check_arp(payload), Some(r));
                }
                NeighbourMsg::Ndp {
                    src,
                    dst,
                    hop_limit,
                    repr,
                } => {
                    assert_eq!(h.ethertype, ethertype::IPV6);
                    let ip = Ipv6Packet::new_checked(payload).expect("a parsed NDP frame");
                    assert_eq!((ip.src(), ip.dst(), ip.hop_limit()), (src, dst, hop_limit));
                    assert_eq!(NdpRepr::parse(&src, &dst, ip.payload()), Ok(Some(repr)));
                    check_ndp(&src, &dst, ip.payload());
                }
            }
        }
        Ok(None) => {
            if let Ok(h) = &l2 {
                assert!(
                    h.ethertype != ethertype::ARP,
                    "a valid ARP frame not recognised"
                );
            }
        }
        Err(_) => {
            // Besides a broken L2 header, only an ARP or IPv6 payload can be in error.
            if let Ok(h) = l2 {
                assert!(matches!(h.ethertype, ethertype::ARP | ethertype::IPV6));
                if h.ethertype == ethertype::ARP {
                    assert_eq!(check_arp(&frame[h.payload_offset..]), None);
                }
            }
        }
    }

    // The same bytes read as a bare ARP packet, IPv6 packet and ICMPv6 message.
    check_arp(&frame);
    if let Ok(ip) = Ipv6Packet::new_checked(&frame[..]) {
        assert!(ip.payload().len() == usize::from(ip.payload_len()));
    }
    if fix {
        fix_icmpv6_checksum(&SRC, &DST, &mut frame);
    }
    check_ndp(&SRC, &DST, &frame);
});
