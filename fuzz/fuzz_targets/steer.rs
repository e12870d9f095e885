//! Frame classification and steering (`dataplane::steer::{classify, steer, steer_bulk}`)
//! of arbitrary frames from every source, on a fixed table that holds every case the rules
//! distinguish (`nicproxy_fuzz::steer::build`) and on the benchmark's random-MAC table.
//!
//! Input: one byte selecting the source (`nicproxy_fuzz::steer::source`), then the frame.
//! Contracts checked beyond "no panic" (the rules are in the `dataplane::steer` module doc):
//! - `classify` agrees with the slow-path parser `parse_l2` (MACs, ethertype, payload
//!   offset, domain of the outer VLAN), and its drop reasons are the documented ones;
//! - `steer`, `steer_bulk` and `classify` + `decide` give the same decision;
//! - a flood is never empty, never goes back to its source, and reaches only the domain's
//!   members and its uplink; unicast never goes back to its source either;
//! - every delivery is backed by the table: to a session only for a MAC proxied on it or as
//!   the domain's uplink; to the kernel only for a local MAC or link-local control from our
//!   own wire; out of the NIC only when it is the uplink (or for the upstream probe);
//! - a session's frame with a source MAC not registered for it is never delivered: it is
//!   `Spoofed`, or `InactivePath` when the session is neither the domain's uplink nor a
//!   member of it, nor a client anywhere, and claims no other session's MAC (the proxy we
//!   just left); frames from the NIC while it is not the uplink are dropped as
//!   `InactivePath` except unicast to our own MAC in a cabled domain.

#![no_main]

use std::sync::OnceLock;

use dataplane::counters::DropReason;
use dataplane::steer::bench_support::Workload;
use dataplane::steer::{
    classify, decide, steer, steer_bulk, Action, Decision, MacTable, Source, Uplink, MAX_SESSIONS,
};
use dataplane::wire::parse_l2;
use libfuzzer_sys::fuzz_target;

fn random_table() -> &'static MacTable {
    static T: OnceLock<Box<MacTable>> = OnceLock::new();
    T.get_or_init(|| Workload::new(64, 0, 42).table)
}

fn check(t: &MacTable, src: Source, frame: &[u8]) {
    let d = steer(t, src, frame);
    let mut out = [Decision::Nic; 3];
    steer_bulk(t, src, &[frame, frame, frame], &mut out);
    assert!(
        out.iter().all(|o| *o == d),
        "steer_bulk {out:?} vs steer {d:?}"
    );

    let l2 = parse_l2(frame);
    let c = match classify(t, frame) {
        Err(r) => {
            assert_eq!(d, Decision::Drop(r));
            match r {
                DropReason::Runt => assert!(l2.is_err()),
                DropReason::Oversize => assert!(frame.len() > t.max_frame_len()),
                DropReason::UnknownEthertype => {
                    let h = l2.expect("ethertype is checked after the tags");
                    assert!(!t.accepts_ethertype(h.ethertype));
                }
                DropReason::UnknownVlan => {
                    let h = l2.expect("the VLAN is checked after the tags");
                    assert_eq!(t.domain_of_vlan(h.vlan), None);
                }
                other => panic!("classify dropped with {other:?}"),
            }
            return;
        }
        Ok(c) => c,
    };
    assert_eq!(d, decide(t, src, &c));
    assert!(frame.len() <= t.max_frame_len());
    let h = l2.expect("a classified frame has a valid L2 header");
    assert_eq!(h.dst.to_u64(), c.dst);
    assert_eq!(h.src.to_u64(), c.src);
    assert_eq!(h.ethertype, c.ethertype);
    assert!(t.accepts_ethertype(c.ethertype));
    assert_eq!(h.payload_offset, usize::from(c.l3_offset));
    assert_eq!(t.domain_of_vlan(h.vlan), Some(c.domain));
    assert_eq!(c.is_group(), h.dst.is_multicast());

    let dom = t.domain(c.domain);
    let to = t.lookup_key(c.dst_key());
    match d {
        Decision::Flood(f) => {
            assert!(f.copies() > 0, "empty flood");
            assert!(c.is_group() && !c.is_link_local());
            match src {
                Source::Nic => assert!(!f.nic, "flood back to the NIC"),
                Source::Kernel => assert!(!f.kernel, "flood back to the kernel"),
                Source::Session(s) => assert!(!f.sessions.contains(s), "flood back to {s}"),
            }
            let mut members = dom.sessions;
            if let Uplink::Session(p) = dom.uplink {
                members.insert(p);
            }
            assert_eq!(f.sessions.0 & !members.0, 0, "flood to non-members");
            assert!(!f.nic || dom.uplink == Uplink::Nic);
            assert!(!f.kernel || dom.kernel);
        }
        Decision::Session(x) => {
            assert!(usize::from(x.0) < MAX_SESSIONS);
            assert!(!c.is_group());
            assert_ne!(src, Source::Session(x), "unicast back to its session");
            assert!(
                to == Action::Session(x) || (to == Action::Nic && dom.uplink == Uplink::Session(x)),
                "to {x} for a MAC that maps to {to:?} (uplink {:?})",
                dom.uplink
            );
        }
        Decision::Nic => {
            assert_ne!(src, Source::Nic, "back out of the NIC");
            let probe = src == Source::Kernel
                && t.nic_mac().map(|m| m.to_u64()) == Some(c.src)
                && t.nic_cabled(c.domain);
            assert!(probe || dom.uplink == Uplink::Nic);
        }
        Decision::Kernel => {
            assert_ne!(src, Source::Kernel, "back to the kernel");
            assert!(
                to == Action::Kernel || (c.is_link_local() && src == Source::Nic && dom.kernel)
            );
        }
        Decision::Drop(r) => match r {
            DropReason::Filtered => assert_eq!(to, Action::Drop),
            DropReason::UnknownSession => {
                assert!(matches!(src, Source::Session(s) if usize::from(s.0) >= MAX_SESSIONS));
            }
            DropReason::Spoofed => {
                let Source::Session(s) = src else {
                    panic!("Spoofed from {src:?}")
                };
                assert_ne!(t.lookup_key(c.src_key()), Action::Session(s));
            }
            DropReason::InactivePath => match src {
                // Our NIC while it is not the domain's path (a unicast for our own MAC
                // would have gone to the kernel in a cabled domain).
                Source::Nic => assert!(dom.uplink != Uplink::Nic),
                // A session that is neither the domain's path nor a member of it.
                Source::Session(s) => {
                    assert!(dom.uplink != Uplink::Session(s) && !dom.sessions.contains(s));
                }
                Source::Kernel => panic!("InactivePath from the kernel"),
            },
            DropReason::NoPath => assert!(matches!(dom.uplink, Uplink::None)),
            DropReason::Runt
            | DropReason::Oversize
            | DropReason::UnknownEthertype
            | DropReason::UnknownVlan => panic!("classify's reason {r:?} after classify passed"),
            _ => {}
        },
    }

    if let Source::Session(s) = src {
        if usize::from(s.0) < MAX_SESSIONS
            && dom.uplink != Uplink::Session(s)
            && t.lookup_key(c.src_key()) != Action::Session(s)
        {
            // Never delivered: Spoofed, or InactivePath when the session is neither a
            // member of the domain nor a client anywhere and claims no other session's MAC
            // (the proxy we just left, relaying floods).
            assert!(
                matches!(
                    d,
                    Decision::Drop(DropReason::Spoofed) | Decision::Drop(DropReason::InactivePath)
                ),
                "spoofed source passed: {d:?}"
            );
            if d == Decision::Drop(DropReason::InactivePath) {
                assert!(!dom.sessions.contains(s));
                assert!(!matches!(t.lookup_key(c.src_key()), Action::Session(x) if x != s));
            }
        }
    }
    if src == Source::Nic && dom.uplink != Uplink::Nic {
        let own = !c.is_group() && to == Action::Kernel && t.nic_cabled(c.domain);
        let want = if own {
            Decision::Kernel
        } else {
            Decision::Drop(DropReason::InactivePath)
        };
        assert_eq!(d, want);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&b, frame)) = data.split_first() else {
        return;
    };
    let src = nicproxy_fuzz::steer::source(b);
    check(nicproxy_fuzz::steer::table(), src, frame);
    check(random_table(), src, frame);
});
