//! Table-driven tests of every steering rule, the table, and publication.

use std::collections::HashMap;

use super::bench_support::{random_unicast, XorShift};
use super::*;
use crate::counters::DropReason::{self, *};
use crate::wire::ethernet::ethertype;
use crate::wire::MacAddr;

const D0: DomainId = DomainId(0); // untagged: uplink NIC, kernel, clients S1 S2
const D1: DomainId = DomainId(1); // VLAN 10: uplink NIC, kernel, client S1
const D2: DomainId = DomainId(2); // VLAN 20: reachable only through peer C (S3)
const D3: DomainId = DomainId(3); // VLAN 30: no path, kernel, client S2
const D4: DomainId = DomainId(4); // VLAN 40: uplink NIC, no members
const D5: DomainId = DomainId(5); // VLAN 50: no path, no members

const S1: SessionId = SessionId(1); // client A
const S2: SessionId = SessionId(2); // client B
const S3: SessionId = SessionId(3); // peer C, cabled to D2
const S5: SessionId = SessionId(5); // proxy P, used after a failover
const S63: SessionId = SessionId(63);

const fn mac(last: u16) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, (last >> 8) as u8, last as u8])
}
const LOCAL: MacAddr = mac(0x0001);
const A: MacAddr = mac(0x0a01);
const A2: MacAddr = mac(0x0a02);
const B: MacAddr = mac(0x0b01);
const Z: MacAddr = mac(0x3f01); // client on session 63
const BLACK: MacAddr = mac(0xdead);
const LAN: MacAddr = mac(0x9999);
const BCAST: MacAddr = MacAddr::BROADCAST;
const MCAST: MacAddr = MacAddr([0x33, 0x33, 0, 0, 0, 1]);
const LLDP: MacAddr = MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x0e]);

/// VLAN tag stacks.
#[derive(Clone, Copy, Debug)]
enum Tags {
    Untagged,
    /// 802.1Q priority tag, VID 0.
    Prio,
    /// 802.1Q with this VID.
    Q(u16),
    /// 802.1ad outer VID + 802.1Q inner VID.
    QinQ(u16, u16),
}

fn frame_with(dst: MacAddr, src: MacAddr, tags: Tags, et: u16, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(64));
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    let mut tag = |tpid: u16, vid: u16| {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(0x2000 | vid).to_be_bytes());
    };
    match tags {
        Tags::Untagged => {}
        Tags::Prio => tag(0x8100, 0),
        Tags::Q(v) => tag(0x8100, v),
        Tags::QinQ(o, i) => {
            tag(0x88a8, o);
            tag(0x8100, i);
        }
    }
    f.extend_from_slice(&et.to_be_bytes());
    f.resize(len.max(f.len()), 0x45);
    f
}

fn frame(dst: MacAddr, src: MacAddr, tags: Tags) -> Vec<u8> {
    frame_with(dst, src, tags, ethertype::IPV4, 64)
}

fn base_builder() -> MacTableBuilder {
    let mut b = MacTableBuilder::new();
    b.map_vlan(10, D1).unwrap();
    b.map_vlan(20, D2).unwrap();
    b.map_vlan(30, D3).unwrap();
    b.map_vlan(40, D4).unwrap();
    b.map_vlan(50, D5).unwrap();
    let info = |uplink, kernel, sessions: &[SessionId]| {
        let mut m = SessionMask::EMPTY;
        sessions.iter().for_each(|&s| m.insert(s));
        DomainInfo {
            uplink,
            kernel,
            sessions: m,
        }
    };
    b.set_domain(D0, info(Uplink::Nic, true, &[S1, S2, S63]))
        .unwrap();
    b.set_domain(D1, info(Uplink::Nic, true, &[S1])).unwrap();
    b.set_domain(D2, info(Uplink::Session(S3), true, &[]))
        .unwrap();
    // D2 is reached only through peer C: our NIC is not cabled to it.
    b.set_nic_cabled(D2, false);
    b.set_domain(D3, info(Uplink::None, true, &[S2])).unwrap();
    b.set_domain(D4, info(Uplink::Nic, false, &[])).unwrap();
    b.set_domain(D5, info(Uplink::None, false, &[])).unwrap();
    for d in [D0, D1, D2, D3] {
        b.add_local(d, LOCAL).unwrap();
    }
    b.add_proxied(D0, A, S1).unwrap();
    b.add_proxied(D1, A, S1).unwrap();
    b.add_proxied(D0, A2, S1).unwrap();
    b.add_proxied(D0, B, S2).unwrap();
    b.add_proxied(D3, B, S2).unwrap();
    b.add_proxied(D0, Z, S63).unwrap();
    b.insert(D0, BLACK, Action::Drop).unwrap();
    b
}

fn flood(kernel: bool, nic: bool, sessions: &[SessionId]) -> Decision {
    let mut m = SessionMask::EMPTY;
    sessions.iter().for_each(|&s| m.insert(s));
    Decision::Flood(Flood {
        sessions: m,
        kernel,
        nic,
    })
}

fn dropped(r: DropReason) -> Decision {
    Decision::Drop(r)
}

struct Case {
    name: &'static str,
    source: Source,
    frame: Vec<u8>,
    want: Decision,
}

fn case(name: &'static str, source: Source, frame: Vec<u8>, want: Decision) -> Case {
    Case {
        name,
        source,
        frame,
        want,
    }
}

/// Checks every case one by one and as one bulk call.
fn run(table: &MacTable, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let got = steer(table, c.source, &c.frame);
        if got != c.want {
            failures.push(format!("{}: got {got:?}, want {:?}", c.name, c.want));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    for source in [
        Source::Nic,
        Source::Kernel,
        Source::Session(S1),
        Source::Session(S3),
    ] {
        let frames: Vec<&[u8]> = cases
            .iter()
            .filter(|c| c.source == source)
            .map(|c| &c.frame[..])
            .collect();
        let mut out = vec![Decision::Nic; frames.len()];
        steer_bulk(table, source, &frames, &mut out);
        let want: Vec<_> = cases
            .iter()
            .filter(|c| c.source == source)
            .map(|c| c.want)
            .collect();
        assert_eq!(out, want, "bulk from {source:?}");
    }
}

const NIC: Source = Source::Nic;
const KERNEL: Source = Source::Kernel;
const FROM_A: Source = Source::Session(S1);
const FROM_B: Source = Source::Session(S2);
const FROM_C: Source = Source::Session(S3);

#[test]
fn bad_frames_are_dropped_by_reason() {
    let t = base_builder().build();
    let ok = frame(LOCAL, LAN, Tags::Untagged);
    let mut cases = Vec::new();
    for source in [NIC, KERNEL, FROM_A] {
        for len in [0, 1, 6, 12, 13] {
            cases.push(case("runt", source, ok[..len].to_vec(), dropped(Runt)));
        }
    }
    let q = frame(LOCAL, LAN, Tags::Q(10));
    let qq = frame(LOCAL, LAN, Tags::QinQ(20, 7));
    cases.extend([
        case("tag cut after TPID", NIC, q[..15].to_vec(), dropped(Runt)),
        case(
            "tag cut before inner type",
            NIC,
            q[..17].to_vec(),
            dropped(Runt),
        ),
        case(
            "QinQ cut in inner tag",
            FROM_C,
            qq[..19].to_vec(),
            dropped(Runt),
        ),
        case(
            "QinQ cut before inner type",
            FROM_C,
            qq[..21].to_vec(),
            dropped(Runt),
        ),
        case(
            "header only is enough",
            NIC,
            ok[..14].to_vec(),
            Decision::Kernel,
        ),
        case(
            "max length untagged",
            NIC,
            frame_with(LOCAL, LAN, Tags::Untagged, 0x0800, 1522),
            Decision::Kernel,
        ),
        case(
            "max length QinQ",
            FROM_C,
            frame_with(LOCAL, LAN, Tags::QinQ(20, 7), 0x0800, 1522),
            Decision::Kernel,
        ),
        case(
            "one byte over",
            NIC,
            frame_with(LOCAL, LAN, Tags::Untagged, 0x0800, 1523),
            dropped(Oversize),
        ),
        case(
            "jumbo",
            KERNEL,
            frame_with(LAN, LOCAL, Tags::Q(10), 0x86dd, 9018),
            dropped(Oversize),
        ),
        case(
            "LLDP not accepted by default",
            NIC,
            frame_with(LLDP, LAN, Tags::Untagged, ethertype::LLDP, 64),
            dropped(UnknownEthertype),
        ),
        case(
            "802.3 length field (STP/LLC)",
            NIC,
            frame_with(
                MacAddr([1, 0x80, 0xc2, 0, 0, 0]),
                LAN,
                Tags::Untagged,
                0x0026,
                64,
            ),
            dropped(UnknownEthertype),
        ),
        case(
            "unknown ethertype in a tag",
            NIC,
            frame_with(LOCAL, LAN, Tags::Q(10), 0x88b5, 64),
            dropped(UnknownEthertype),
        ),
        case(
            "unknown ethertype in QinQ",
            FROM_C,
            frame_with(LOCAL, LAN, Tags::QinQ(20, 7), 0x9000, 64),
            dropped(UnknownEthertype),
        ),
        case(
            "third tag",
            FROM_C,
            frame_with(LOCAL, LAN, Tags::QinQ(20, 7), 0x8100, 64),
            dropped(UnknownEthertype),
        ),
        case(
            "unmapped VLAN",
            NIC,
            frame(LOCAL, LAN, Tags::Q(99)),
            dropped(UnknownVlan),
        ),
        case(
            "unmapped outer VLAN of QinQ (inner is mapped)",
            NIC,
            frame(LOCAL, LAN, Tags::QinQ(99, 10)),
            dropped(UnknownVlan),
        ),
        case(
            "session id out of range",
            Source::Session(SessionId(64)),
            ok.clone(),
            dropped(UnknownSession),
        ),
        case(
            "ARP accepted",
            NIC,
            frame_with(LOCAL, LAN, Tags::Untagged, 0x0806, 60),
            Decision::Kernel,
        ),
        case(
            "IPv6 accepted",
            NIC,
            frame_with(LOCAL, LAN, Tags::Q(10), 0x86dd, 78),
            Decision::Kernel,
        ),
    ]);
    run(&t, &cases);

    // The limits are configuration.
    let mut b = base_builder();
    b.set_mtu(9000).unwrap();
    b.accept_ethertype(ethertype::LLDP).unwrap();
    b.set_untagged_domain(None).unwrap();
    let t = b.build();
    run(
        &t,
        &[
            case(
                "jumbo with MTU 9000",
                KERNEL,
                frame_with(LAN, LOCAL, Tags::Q(10), 0x86dd, 9018),
                Decision::Nic,
            ),
            case(
                "over MTU 9000",
                KERNEL,
                frame_with(LAN, LOCAL, Tags::Q(10), 0x86dd, 9023),
                dropped(Oversize),
            ),
            case(
                "LLDP accepted",
                NIC,
                frame_with(LLDP, LAN, Tags::Q(10), ethertype::LLDP, 64),
                Decision::Kernel,
            ),
            case(
                "untagged unmapped",
                NIC,
                frame(LOCAL, LAN, Tags::Untagged),
                dropped(UnknownVlan),
            ),
            case(
                "priority tag counts as untagged",
                NIC,
                frame(LOCAL, LAN, Tags::Prio),
                dropped(UnknownVlan),
            ),
        ],
    );
}

#[test]
fn from_nic() {
    let t = base_builder().build();
    run(
        &t,
        &[
            case(
                "to local",
                NIC,
                frame(LOCAL, LAN, Tags::Untagged),
                Decision::Kernel,
            ),
            case(
                "to local, priority tag",
                NIC,
                frame(LOCAL, LAN, Tags::Prio),
                Decision::Kernel,
            ),
            case(
                "to local, VLAN 10",
                NIC,
                frame(LOCAL, LAN, Tags::Q(10)),
                Decision::Kernel,
            ),
            case(
                "to proxied",
                NIC,
                frame(A, LAN, Tags::Untagged),
                Decision::Session(S1),
            ),
            case(
                "to proxied second MAC",
                NIC,
                frame(A2, LAN, Tags::Untagged),
                Decision::Session(S1),
            ),
            case(
                "to proxied, VLAN 10",
                NIC,
                frame(A, LAN, Tags::Q(10)),
                Decision::Session(S1),
            ),
            case(
                "to proxied on session 63",
                NIC,
                frame(Z, LAN, Tags::Untagged),
                Decision::Session(S63),
            ),
            case(
                "to proxied MAC in a domain it is not in",
                NIC,
                frame(B, LAN, Tags::Q(10)),
                dropped(NotForUs),
            ),
            case(
                "to unknown",
                NIC,
                frame(LAN, mac(0x7777), Tags::Untagged),
                dropped(NotForUs),
            ),
            case(
                "to blackholed",
                NIC,
                frame(BLACK, LAN, Tags::Untagged),
                dropped(Filtered),
            ),
            case(
                "broadcast",
                NIC,
                frame(BCAST, LAN, Tags::Untagged),
                flood(true, false, &[S1, S2, S63]),
            ),
            case(
                "multicast VLAN 10",
                NIC,
                frame(MCAST, LAN, Tags::Q(10)),
                flood(true, false, &[S1]),
            ),
            case(
                "broadcast, no members",
                NIC,
                frame(BCAST, LAN, Tags::Q(40)),
                dropped(NoRoute),
            ),
            case(
                "domain reachable only through a peer",
                NIC,
                frame(LOCAL, LAN, Tags::QinQ(20, 1)),
                dropped(InactivePath),
            ),
            case(
                "domain without a path",
                NIC,
                frame(BCAST, LAN, Tags::Q(30)),
                dropped(InactivePath),
            ),
            case(
                "link-local to the kernel",
                NIC,
                frame_with(LLDP, LAN, Tags::Untagged, 0x0800, 64),
                Decision::Kernel,
            ),
            case(
                "link-local, kernel not member",
                NIC,
                frame_with(LLDP, LAN, Tags::Q(40), 0x0800, 64),
                dropped(NoRoute),
            ),
        ],
    );
}

#[test]
fn from_kernel() {
    let t = base_builder().build();
    run(
        &t,
        &[
            case(
                "to the LAN",
                KERNEL,
                frame(LAN, LOCAL, Tags::Untagged),
                Decision::Nic,
            ),
            case(
                "to the LAN, VLAN 10",
                KERNEL,
                frame(LAN, LOCAL, Tags::Q(10)),
                Decision::Nic,
            ),
            case(
                "hairpin to proxied",
                KERNEL,
                frame(A, LOCAL, Tags::Untagged),
                Decision::Session(S1),
            ),
            case(
                "hairpin to proxied, VLAN 10",
                KERNEL,
                frame(A, LOCAL, Tags::Q(10)),
                Decision::Session(S1),
            ),
            case(
                "to itself",
                KERNEL,
                frame(LOCAL, LOCAL, Tags::Untagged),
                dropped(Loop),
            ),
            case(
                "to blackholed",
                KERNEL,
                frame(BLACK, LOCAL, Tags::Untagged),
                dropped(Filtered),
            ),
            case(
                "broadcast: NIC and every client",
                KERNEL,
                frame(BCAST, LOCAL, Tags::Untagged),
                flood(false, true, &[S1, S2, S63]),
            ),
            case(
                "multicast VLAN 10",
                KERNEL,
                frame(MCAST, LOCAL, Tags::Q(10)),
                flood(false, true, &[S1]),
            ),
            case(
                "broadcast, only the NIC",
                KERNEL,
                frame(BCAST, LOCAL, Tags::Q(40)),
                flood(false, true, &[]),
            ),
            case(
                "peer-only domain: unicast via the peer",
                KERNEL,
                frame(LAN, LOCAL, Tags::QinQ(20, 5)),
                Decision::Session(S3),
            ),
            case(
                "peer-only domain: broadcast via the peer",
                KERNEL,
                frame(BCAST, LOCAL, Tags::Q(20)),
                flood(false, false, &[S3]),
            ),
            case(
                "no path: unicast",
                KERNEL,
                frame(LAN, LOCAL, Tags::Q(30)),
                dropped(NoPath),
            ),
            case(
                "no path: proxied peers still get broadcast",
                KERNEL,
                frame(BCAST, LOCAL, Tags::Q(30)),
                flood(false, false, &[S2]),
            ),
            case(
                "no path: hairpin still works",
                KERNEL,
                frame(B, LOCAL, Tags::Q(30)),
                Decision::Session(S2),
            ),
            case(
                "no path, no members: broadcast",
                KERNEL,
                frame(BCAST, LOCAL, Tags::Q(50)),
                dropped(NoPath),
            ),
            case(
                "link-local out of the NIC",
                KERNEL,
                frame(LLDP, LOCAL, Tags::Untagged),
                Decision::Nic,
            ),
            case(
                "link-local never over the fabric",
                KERNEL,
                frame(LLDP, LOCAL, Tags::Q(20)),
                dropped(LinkLocal),
            ),
        ],
    );
}

#[test]
fn from_client_session() {
    let t = base_builder().build();
    run(
        &t,
        &[
            case(
                "to the LAN",
                FROM_A,
                frame(LAN, A, Tags::Untagged),
                Decision::Nic,
            ),
            case(
                "to the LAN from second MAC",
                FROM_A,
                frame(LAN, A2, Tags::Untagged),
                Decision::Nic,
            ),
            case(
                "to the LAN, VLAN 10",
                FROM_A,
                frame(LAN, A, Tags::Q(10)),
                Decision::Nic,
            ),
            case(
                "to local",
                FROM_A,
                frame(LOCAL, A, Tags::Untagged),
                Decision::Kernel,
            ),
            case(
                "to another client",
                FROM_A,
                frame(B, A, Tags::Untagged),
                Decision::Session(S2),
            ),
            case(
                "to its own other MAC",
                FROM_A,
                frame(A2, A, Tags::Untagged),
                dropped(Loop),
            ),
            case(
                "to blackholed",
                FROM_A,
                frame(BLACK, A, Tags::Untagged),
                dropped(Filtered),
            ),
            case(
                "spoofed: another client's MAC",
                FROM_A,
                frame(LAN, B, Tags::Untagged),
                dropped(Spoofed),
            ),
            case(
                "spoofed: unknown MAC",
                FROM_A,
                frame(LAN, LAN, Tags::Untagged),
                dropped(Spoofed),
            ),
            case(
                "spoofed: our MAC",
                FROM_A,
                frame(LAN, LOCAL, Tags::Untagged),
                dropped(Spoofed),
            ),
            case(
                "spoofed: right MAC, wrong domain",
                FROM_A,
                frame(LAN, A, Tags::Q(30)),
                dropped(Spoofed),
            ),
            case(
                "spoofed broadcast",
                FROM_A,
                frame(BCAST, B, Tags::Untagged),
                dropped(Spoofed),
            ),
            case(
                "broadcast: NIC, kernel, other clients, not back",
                FROM_A,
                frame(BCAST, A, Tags::Untagged),
                flood(true, true, &[S2, S63]),
            ),
            case(
                "broadcast VLAN 10, sole client",
                FROM_A,
                frame(BCAST, A, Tags::Q(10)),
                flood(true, true, &[]),
            ),
            case(
                "multicast",
                FROM_A,
                frame(MCAST, A, Tags::Untagged),
                flood(true, true, &[S2, S63]),
            ),
            case(
                "link-local",
                FROM_A,
                frame(LLDP, A, Tags::Untagged),
                dropped(LinkLocal),
            ),
            case(
                "no path: unicast",
                FROM_B,
                frame(LAN, B, Tags::Q(30)),
                dropped(NoPath),
            ),
            case(
                "no path: to local still works",
                FROM_B,
                frame(LOCAL, B, Tags::Q(30)),
                Decision::Kernel,
            ),
            case(
                "no path: broadcast to kernel only",
                FROM_B,
                frame(BCAST, B, Tags::Q(30)),
                flood(true, false, &[]),
            ),
            case(
                "session 63 broadcast",
                Source::Session(S63),
                frame(BCAST, Z, Tags::Untagged),
                flood(true, true, &[S1, S2]),
            ),
            case(
                "client of an unconfigured session",
                Source::Session(SessionId(9)),
                frame(LAN, A, Tags::Untagged),
                dropped(Spoofed),
            ),
        ],
    );
}

#[test]
fn from_uplink_session_of_a_peer_only_domain() {
    let t = base_builder().build();
    run(
        &t,
        &[
            case(
                "to local",
                FROM_C,
                frame(LOCAL, LAN, Tags::QinQ(20, 5)),
                Decision::Kernel,
            ),
            case(
                "to local, single tag",
                FROM_C,
                frame(LOCAL, LAN, Tags::Q(20)),
                Decision::Kernel,
            ),
            case(
                "any source is fine (LAN traffic)",
                FROM_C,
                frame(LOCAL, mac(0x4242), Tags::Q(20)),
                Decision::Kernel,
            ),
            case(
                "to unknown",
                FROM_C,
                frame(LAN, mac(0x4242), Tags::Q(20)),
                dropped(NotForUs),
            ),
            case(
                "broadcast to the kernel",
                FROM_C,
                frame(BCAST, LAN, Tags::Q(20)),
                flood(true, false, &[]),
            ),
            case(
                "link-local",
                FROM_C,
                frame(LLDP, LAN, Tags::Q(20)),
                dropped(LinkLocal),
            ),
            // In D0 the same session is neither our uplink nor a client of ours: its frames
            // there are a path we do not use (a stale path), not a spoof.
            case(
                "proxy of another domain, in D0: not our path",
                FROM_C,
                frame(LOCAL, LAN, Tags::Untagged),
                dropped(InactivePath),
            ),
            case(
                "proxy of another domain claiming a client's MAC: spoofed",
                FROM_C,
                frame(LOCAL, A, Tags::Untagged),
                dropped(Spoofed),
            ),
        ],
    );
}

#[test]
fn failover_moves_the_uplink_to_the_proxy() {
    let mut b = base_builder();
    assert_eq!(
        b.replace_uplink(Uplink::Nic, Uplink::Session(S5)).unwrap(),
        3
    );
    let t = b.build();
    let from_p = Source::Session(S5);
    run(
        &t,
        &[
            case(
                "kernel to the LAN via proxy",
                KERNEL,
                frame(LAN, LOCAL, Tags::Untagged),
                Decision::Session(S5),
            ),
            case(
                "kernel hairpin unchanged",
                KERNEL,
                frame(A, LOCAL, Tags::Untagged),
                Decision::Session(S1),
            ),
            case(
                "kernel broadcast: proxy and clients",
                KERNEL,
                frame(BCAST, LOCAL, Tags::Untagged),
                flood(false, false, &[S1, S2, S5, S63]),
            ),
            case(
                "kernel link-local stays home",
                KERNEL,
                frame(LLDP, LOCAL, Tags::Untagged),
                dropped(LinkLocal),
            ),
            case(
                "NIC is no longer the path: unicast to us still delivered",
                NIC,
                frame(LOCAL, LAN, Tags::Untagged),
                Decision::Kernel,
            ),
            case(
                "NIC is no longer the path: floods dropped (they come through the proxy)",
                NIC,
                frame(BCAST, LAN, Tags::Untagged),
                dropped(InactivePath),
            ),
            case(
                "NIC is no longer the path: unicast to a proxied MAC dropped",
                NIC,
                frame(A, LAN, Tags::Untagged),
                dropped(InactivePath),
            ),
            case(
                "from proxy to local",
                from_p,
                frame(LOCAL, LAN, Tags::Untagged),
                Decision::Kernel,
            ),
            case(
                "from proxy to our client",
                from_p,
                frame(A, LAN, Tags::Untagged),
                Decision::Session(S1),
            ),
            case(
                "from proxy broadcast: kernel and clients, not back",
                from_p,
                frame(BCAST, LAN, Tags::Untagged),
                flood(true, false, &[S1, S2, S63]),
            ),
            case(
                "client to the LAN via proxy",
                FROM_A,
                frame(LAN, A, Tags::Untagged),
                Decision::Session(S5),
            ),
            case(
                "client broadcast via proxy",
                FROM_A,
                frame(BCAST, A, Tags::Untagged),
                flood(true, false, &[S2, S5, S63]),
            ),
        ],
    );

    // Last proxy gone: no path at all.
    b.replace_uplink(Uplink::Session(S5), Uplink::None).unwrap();
    let t = b.build();
    run(
        &t,
        &[
            case(
                "kernel unicast",
                KERNEL,
                frame(LAN, LOCAL, Tags::Untagged),
                dropped(NoPath),
            ),
            case(
                "kernel broadcast reaches clients",
                KERNEL,
                frame(BCAST, LOCAL, Tags::Untagged),
                flood(false, false, &[S1, S2, S63]),
            ),
            case(
                "client unicast",
                FROM_A,
                frame(LAN, A, Tags::Untagged),
                dropped(NoPath),
            ),
        ],
    );

    // Back to the NIC.
    b.replace_uplink(Uplink::None, Uplink::Nic).unwrap();
    let t = b.build();
    run(
        &t,
        &[case(
            "kernel unicast",
            KERNEL,
            frame(LAN, LOCAL, Tags::Untagged),
            Decision::Nic,
        )],
    );
}

/// Exhaustive: whatever the frame and source, a flood never goes back where it came from
/// and is never empty.
#[test]
fn floods_never_echo_and_are_never_empty() {
    let mut b = base_builder();
    let tables = [b.build(), {
        b.replace_uplink(Uplink::Nic, Uplink::Session(S5)).unwrap();
        b.build()
    }];
    let tag_sets = [
        Tags::Untagged,
        Tags::Prio,
        Tags::Q(10),
        Tags::Q(20),
        Tags::QinQ(20, 3),
        Tags::Q(30),
        Tags::Q(40),
        Tags::Q(50),
    ];
    let mut sources = vec![NIC, KERNEL];
    sources.extend((0..64).map(|s| Source::Session(SessionId(s))));
    let mut floods = 0;
    for t in &tables {
        for tags in tag_sets {
            for dst in [BCAST, MCAST] {
                for src in [LOCAL, A, A2, B, Z, LAN] {
                    for &source in &sources {
                        if let Decision::Flood(f) = steer(t, source, &frame(dst, src, tags)) {
                            floods += 1;
                            assert!(f.copies() > 0);
                            match source {
                                Source::Nic => assert!(!f.nic, "{source:?} {tags:?}"),
                                Source::Kernel => assert!(!f.kernel, "{source:?} {tags:?}"),
                                Source::Session(s) => {
                                    assert!(!f.sessions.contains(s), "{source:?} {tags:?} {f:?}")
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(floods > 50, "only {floods} floods exercised");
}

/// Steering sees hostile bytes from the NIC and from peers: random and mutated frames of
/// every length must give a decision, never a panic.
#[test]
fn steering_never_panics_on_garbage() {
    let t = base_builder().build();
    let mut rng = XorShift(0xdead_beef);
    let seeds = [
        frame(BCAST, A, Tags::QinQ(20, 3)),
        frame(A, LAN, Tags::Q(10)),
        frame(LOCAL, A, Tags::Untagged),
    ];
    let mut drops = 0;
    for i in 0..100_000u64 {
        let mut f = if i % 2 == 0 {
            let len = (rng.next_u64() % 1600) as usize;
            (0..len).map(|_| rng.next_u64() as u8).collect()
        } else {
            seeds[(i % 3) as usize].clone()
        };
        if !f.is_empty() {
            for _ in 0..rng.next_u64() % 3 {
                let at = (rng.next_u64() as usize) % f.len();
                f[at] = rng.next_u64() as u8;
            }
            if i % 7 == 0 {
                f.truncate((rng.next_u64() as usize) % (f.len() + 1));
            }
        }
        let source = match rng.next_u64() % 4 {
            0 => NIC,
            1 => KERNEL,
            2 => FROM_A,
            _ => Source::Session(SessionId((rng.next_u64() % 80) as u16)),
        };
        if let Decision::Drop(_) = steer(&t, source, &f) {
            drops += 1;
        }
    }
    assert!(
        drops > 50_000,
        "random bytes should mostly be dropped: {drops}"
    );
}

#[test]
fn builder_rejects_invalid_state() {
    let mut b = MacTableBuilder::new();
    let errs = [
        b.insert(D0, BCAST, Action::Kernel).unwrap_err(),
        b.insert(D0, MCAST, Action::Session(S1)).unwrap_err(),
        b.insert(D0, A, Action::Session(SessionId(64))).unwrap_err(),
        b.insert(DomainId(4096), A, Action::Kernel).unwrap_err(),
        b.map_vlan(0, D1).unwrap_err(),
        b.map_vlan(4095, D1).unwrap_err(),
        b.map_vlan(10, DomainId(0xffff)).unwrap_err(),
        b.set_uplink(D0, Uplink::Session(SessionId(100)))
            .unwrap_err(),
        b.add_session_member(D0, SessionId(64)).unwrap_err(),
        b.accept_ethertype(0x8100).unwrap_err(),
        b.accept_ethertype(0x88a8).unwrap_err(),
        b.accept_ethertype(0x05ff).unwrap_err(),
        b.set_max_frame_len(13).unwrap_err(),
    ];
    for e in errs {
        let msg = e.to_string();
        assert!(
            msg.contains(": "),
            "error must say what was attempted: {msg}"
        );
    }
    for et in 0x9000..0x9005 {
        b.accept_ethertype(et).unwrap();
    }
    assert!(matches!(
        b.accept_ethertype(0x9005),
        Err(TableError::TooManyEthertypes { .. })
    ));
    assert!(b.is_empty(), "rejected inserts must not change the state");
}

#[test]
fn builder_edits_and_session_removal() {
    let mut b = base_builder();
    b.set_uplink(D2, Uplink::Session(S1)).unwrap();
    assert_eq!(b.session_macs(S1), vec![(D0, A), (D0, A2), (D1, A)]);
    assert_eq!(b.remove_session(S1), 3);
    assert!(b.session_macs(S1).is_empty());
    assert!(!b.domain(D0).sessions.contains(S1));
    assert_eq!(b.domain(D2).uplink, Uplink::None);
    assert_eq!(b.remove(D0, B), Some(Action::Session(S2)));
    assert_eq!(b.remove(D0, B), None);
    b.remove_session_member(D0, S2);
    let g1 = b.build();
    let g2 = b.build();
    assert!(g2.generation() > g1.generation());
    let t = g2;
    assert_eq!(t.get(D0, A), None);
    assert_eq!(t.lookup(D0, A), Action::Nic);
    assert_eq!(t.get(D0, LOCAL), Some(Action::Kernel));
    assert_eq!(
        steer(&t, NIC, &frame(BCAST, LAN, Tags::Untagged)),
        flood(true, false, &[S63])
    );
    b.unmap_vlan(10);
    assert_eq!(
        steer(&b.build(), NIC, &frame(LOCAL, LAN, Tags::Q(10))),
        dropped(UnknownVlan)
    );
    b.set_kernel_member(D0, false).unwrap();
    b.reject_ethertype(ethertype::ARP);
    let t = b.build();
    assert_eq!(
        steer(&t, NIC, &frame_with(LOCAL, LAN, Tags::Untagged, 0x0806, 60)),
        dropped(UnknownEthertype)
    );
    assert_eq!(
        steer(&t, NIC, &frame(BCAST, LAN, Tags::Untagged)),
        flood(false, false, &[S63])
    );
}

/// The open-addressing table against a HashMap, at sizes around the capacity steps.
#[test]
fn table_matches_a_hashmap() {
    let mut rng = XorShift(12345);
    for n in [0usize, 1, 7, 8, 9, 16, 17, 1000, 4096, 70_000] {
        let mut b = MacTableBuilder::new();
        let mut model = HashMap::new();
        while model.len() < n {
            let d = DomainId((rng.next_u64() % 4) as u16);
            let m = random_unicast(&mut rng);
            let a = match rng.next_u64() % 3 {
                0 => Action::Kernel,
                1 => Action::Session(SessionId((rng.next_u64() % 64) as u16)),
                _ => Action::Drop,
            };
            b.insert(d, m, a).unwrap();
            model.insert((d, m), a);
        }
        let t = b.build();
        assert_eq!(t.len(), n);
        assert!(t.capacity().is_power_of_two() && t.capacity() >= 2 * n && t.capacity() >= 16);
        assert_eq!(t.entries().count(), n);
        for (&(d, m), &a) in &model {
            assert_eq!(t.lookup(d, m), a);
            assert_eq!(t.get(d, m), Some(a));
        }
        for (d, m, a) in t.entries() {
            assert_eq!(model.get(&(d, m)), Some(&a));
        }
        let mut keys = Vec::new();
        let mut want = Vec::new();
        for _ in 0..2000 {
            let d = DomainId((rng.next_u64() % 5) as u16);
            let m = random_unicast(&mut rng);
            keys.push(mac_key(d, m.to_u64()));
            want.push(model.get(&(d, m)).copied().unwrap_or(Action::Nic));
        }
        for (&(d, m), &a) in model.iter().take(1000) {
            keys.push(mac_key(d, m.to_u64()));
            want.push(a);
        }
        let mut got = vec![Action::Drop; keys.len()];
        t.lookup_bulk(&keys, &mut got);
        assert_eq!(got, want, "n = {n}");
    }
    // The empty-slot key itself answers "unknown".
    let t = base_builder().build();
    assert_eq!(t.lookup_key(u64::MAX), Action::Nic);
    assert_eq!(t.lookup(DomainId(0xffff), BCAST), Action::Nic);
}

/// A table update between two halves of a burst does not change how the burst is steered:
/// the burst borrows one snapshot; the swap happens at the next loop iteration.
#[test]
fn update_applies_between_bursts_only() {
    let mut b = base_builder();
    let (mut publisher, mut reader) = publish::table_channel(b.build(), 4);
    let burst: Vec<Vec<u8>> = (0..32).map(|_| frame(A, LAN, Tags::Untagged)).collect();
    let mut out = [Decision::Nic; 32];

    assert!(!reader.refresh());
    {
        let t = reader.table();
        steer_bulk(t, NIC, &burst[..16], &mut out[..16]);
        // Control moves A to session 2 mid-burst.
        b.add_proxied(D0, A, S2).unwrap();
        publisher.publish(b.build()).unwrap();
        steer_bulk(t, NIC, &burst[16..], &mut out[16..]);
    }
    assert!(out.iter().all(|d| *d == Decision::Session(S1)), "{out:?}");
    assert!(reader.refresh());
    steer_bulk(reader.table(), NIC, &burst, &mut out);
    assert!(out.iter().all(|d| *d == Decision::Session(S2)), "{out:?}");
    assert_eq!(publisher.reclaim(), 1);
    assert_eq!(publisher.reclaimed_total(), 1);
    assert_eq!(publisher.in_flight(), 0);
}

#[test]
fn publisher_refuses_when_worker_is_behind_or_gone() {
    let mut b = base_builder();
    let (mut publisher, mut reader) = publish::table_channel(b.build(), 2);
    publisher.publish(b.build()).unwrap();
    publisher.publish(b.build()).unwrap();
    let newest = b.build();
    let gen = newest.generation();
    match publisher.publish(newest) {
        Err(e @ PublishError::Full { .. }) => {
            assert!(e.to_string().contains("publishing table generation"), "{e}");
            let PublishError::Full {
                table, in_flight, ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!((table.generation(), in_flight), (gen, 2));
            // The worker takes both, keeps the newest, returns the rest.
            assert!(reader.refresh());
            assert_eq!(reader.table().generation(), gen - 1);
            publisher.publish(table).unwrap();
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(reader.refresh());
    assert_eq!(reader.table().generation(), gen);
    publisher.reclaim();
    assert_eq!(publisher.reclaimed_total(), 3);
    assert_eq!(publisher.in_flight(), 0);
    drop(reader);
    assert!(matches!(
        publisher.publish(b.build()),
        Err(PublishError::Disconnected { .. })
    ));
}

#[test]
fn ten_thousand_tables_published_while_a_worker_reads() {
    const TABLES: u64 = 10_000;
    let mut b = base_builder();
    let initial = b.build();
    let first = initial.generation();
    let (mut publisher, mut reader) = publish::table_channel(initial, 4);

    let worker = std::thread::spawn(move || {
        let mut last = first;
        let mut swaps = 0u64;
        let mut bursts = 0u64;
        let f = frame(A, LAN, Tags::Untagged);
        loop {
            if reader.refresh() {
                swaps += 1;
            } else {
                // Like the adaptive poll mode: the machine has 2 shared cores.
                std::thread::yield_now();
            }
            let t = reader.table();
            let g = t.generation();
            assert!(g >= last, "generation went back: {last} -> {g}");
            last = g;
            // Every snapshot is internally consistent: A is on session generation % 64.
            let want = Decision::Session(SessionId((g % 64) as u16));
            assert_eq!(steer(t, NIC, &f), want, "generation {g}");
            bursts += 1;
            if g == first + TABLES {
                break;
            }
        }
        // Nothing was freed on this thread while running.
        let freed_here = TABLE_DROPS.with(|c| c.get());
        (swaps, bursts, freed_here, reader)
    });

    let mut retries = 0u64;
    for i in 1..=TABLES {
        let g = first + i;
        b.add_proxied(D0, A, SessionId((g % 64) as u16)).unwrap();
        let mut t = b.build();
        assert_eq!(t.generation(), g);
        loop {
            match publisher.publish(t) {
                Ok(()) => break,
                Err(PublishError::Full { table, .. }) => {
                    t = table;
                    retries += 1;
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let (swaps, bursts, freed_here, reader) = worker.join().unwrap();
    assert_eq!(freed_here, 0, "the worker freed tables");
    // Every table the worker replaced came back: the initial one and all but the last.
    publisher.reclaim();
    assert_eq!(publisher.reclaimed_total(), TABLES);
    assert_eq!(publisher.in_flight(), 0);
    assert_eq!(reader.table().generation(), first + TABLES);
    println!("{TABLES} tables: {swaps} swaps over {bursts} bursts, {retries} publish retries");
}

thread_local! {
    /// Tables dropped on this thread (test builds only), to prove workers free nothing.
    pub(super) static TABLE_DROPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Drop for MacTable {
    fn drop(&mut self) {
        TABLE_DROPS.with(|c| c.set(c.get() + 1));
    }
}

#[test]
fn upstream_probe_from_the_nic_mac_leaves_by_the_nic_whatever_the_uplink() {
    const NICMAC: MacAddr = mac(0x0e01);
    let mut b = base_builder();
    b.set_nic_mac(Some(NICMAC)).unwrap();
    assert!(b.set_nic_mac(Some(BCAST)).is_err());
    let t = b.build();
    assert_eq!(t.nic_mac(), Some(NICMAC));
    // D0's uplink is the NIC, D2's is a proxy session, D3 has no path: the probe always
    // tests the NIC, except in D2, which the NIC is not cabled to.
    assert_eq!(
        steer(&t, KERNEL, &frame(BCAST, NICMAC, Tags::Untagged)),
        Decision::Nic
    );
    assert_eq!(
        steer(&t, KERNEL, &frame(LAN, NICMAC, Tags::Q(30))),
        Decision::Nic
    );
    assert_ne!(
        steer(&t, KERNEL, &frame(LAN, NICMAC, Tags::QinQ(20, 1))),
        Decision::Nic
    );
    // Other kernel frames still follow the uplink.
    assert_eq!(
        steer(&t, KERNEL, &frame(LAN, LOCAL, Tags::Q(30))),
        Decision::Drop(DropReason::NoPath)
    );
}

/// Bulk steering, with one source or a source per frame, decides exactly as one-by-one
/// steering does: runs of one flow, interleaved with tagged frames, runts, oversize frames,
/// other sources and near-identical headers.
#[test]
fn bulk_reuse_matches_steering_frame_by_frame() {
    let t = base_builder().build();
    let mut long = frame(LOCAL, LAN, Tags::Untagged);
    long.resize(t.max_frame_len() + 1, 0);
    let mut runt = frame(LOCAL, LAN, Tags::Untagged);
    runt.truncate(13);
    let mut arp = frame(LOCAL, LAN, Tags::Untagged);
    arp[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
    let mut lldp = frame(LOCAL, LAN, Tags::Untagged);
    lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
    let pieces: Vec<Vec<u8>> = vec![
        frame(LOCAL, LAN, Tags::Untagged),
        frame(LOCAL, LAN, Tags::Untagged),
        long.clone(),
        frame(LOCAL, LAN, Tags::Untagged),
        runt,
        frame(LOCAL, LAN, Tags::Untagged),
        lldp,
        arp,
        frame(LOCAL, LAN, Tags::Q(10)),
        frame(LOCAL, LAN, Tags::Q(20)),
        frame(LOCAL, LAN, Tags::Q(20)),
        frame(A, LAN, Tags::Untagged),
        frame(A, B, Tags::Untagged),
        frame(A, B, Tags::Untagged),
        frame(BCAST, A, Tags::Untagged),
        frame(BCAST, A, Tags::Untagged),
        frame(BCAST, B, Tags::Untagged),
        long,
        frame(LAN, A, Tags::Untagged),
        frame(LAN, A, Tags::Untagged),
    ];
    let sources = [NIC, KERNEL, FROM_A, FROM_B, FROM_C];
    let mut rng = XorShift(7);
    for round in 0..200 {
        // Shuffled runs of repeated pieces, each frame from a random or a repeated source.
        let mut frames = Vec::new();
        let mut srcs = Vec::new();
        while frames.len() < 32 {
            let p = &pieces[(rng.next_u64() % pieces.len() as u64) as usize];
            let s = sources[(rng.next_u64() % sources.len() as u64) as usize];
            for _ in 0..=(rng.next_u64() % 4) {
                frames.push(p.clone());
                srcs.push(if round % 2 == 0 { s } else { FROM_A });
            }
        }
        let mut got = vec![Decision::Nic; frames.len()];
        steer_bulk_from(&t, |i| srcs[i], &frames, &mut got);
        let want: Vec<Decision> = frames
            .iter()
            .zip(&srcs)
            .map(|(f, &s)| steer(&t, s, f))
            .collect();
        assert_eq!(got, want, "round {round}");
        let mut got = vec![Decision::Nic; frames.len()];
        steer_bulk(&t, KERNEL, &frames, &mut got);
        let want: Vec<Decision> = frames.iter().map(|f| steer(&t, KERNEL, f)).collect();
        assert_eq!(got, want, "round {round}, from the kernel");
    }
}

/// While the kernel's interface has no carrier, nothing reaches it (counted as
/// `no_carrier`), floods still reach everyone else, and every other rule is unchanged;
/// opened again, the same frames reach it.
#[test]
fn a_closed_kernel_receives_nothing_and_the_rest_is_unchanged() {
    let mut b = base_builder();
    b.set_kernel_open(false);
    assert!(!b.kernel_open());
    let closed = b.build();
    let open = b.set_kernel_open(true).build();
    let s1 = Source::Session(S1);
    let s3 = Source::Session(S3);
    // (source, frame, decision while closed, decision while open)
    let cases = [
        (
            NIC,
            frame(LOCAL, LAN, Tags::Untagged),
            dropped(NoCarrier),
            Decision::Kernel,
        ),
        (
            NIC,
            frame(LOCAL, LAN, Tags::Q(10)),
            dropped(NoCarrier),
            Decision::Kernel,
        ),
        (
            s1,
            frame(LOCAL, A, Tags::Untagged),
            dropped(NoCarrier),
            Decision::Kernel,
        ),
        (
            s3,
            frame(LOCAL, LAN, Tags::Q(20)),
            dropped(NoCarrier),
            Decision::Kernel,
        ),
        (
            NIC,
            frame(BCAST, LAN, Tags::Untagged),
            flood(false, false, &[S1, S2, S63]),
            flood(true, false, &[S1, S2, S63]),
        ),
        (
            s1,
            frame(BCAST, A, Tags::Q(10)),
            flood(false, true, &[]),
            flood(true, true, &[]),
        ),
        // A flood whose only member was the kernel.
        (
            s3,
            frame(BCAST, LAN, Tags::Q(20)),
            dropped(NoCarrier),
            flood(true, false, &[]),
        ),
        (
            NIC,
            frame(LLDP, LAN, Tags::Untagged),
            dropped(NoCarrier),
            Decision::Kernel,
        ),
        // Not for the kernel: as before.
        (
            NIC,
            frame(A, LAN, Tags::Untagged),
            Decision::Session(S1),
            Decision::Session(S1),
        ),
        (
            KERNEL,
            frame(LAN, LOCAL, Tags::Untagged),
            Decision::Nic,
            Decision::Nic,
        ),
        (
            s1,
            frame(LAN, A, Tags::Untagged),
            Decision::Nic,
            Decision::Nic,
        ),
        (
            NIC,
            frame(BLACK, LAN, Tags::Untagged),
            dropped(Filtered),
            dropped(Filtered),
        ),
    ];
    for (i, (src, f, want_closed, want_open)) in cases.iter().enumerate() {
        assert_eq!(steer(&closed, *src, f), *want_closed, "case {i} closed");
        assert_eq!(steer(&open, *src, f), *want_open, "case {i} open");
    }
}

/// A peer can be our proxy and our client at once: ending the client role keeps our uplink
/// through it (and its frames still come in as our proxy's), while forgetting the session
/// altogether ends both.
#[test]
fn removing_a_client_keeps_our_uplink_through_the_same_peer() {
    let mut b = base_builder();
    // D0's uplink goes through S1, which is also a client there (A, A2) and in D1.
    let mut info = b.domain(D0);
    info.uplink = Uplink::Session(S1);
    b.set_domain(D0, info).unwrap();
    assert_eq!(b.remove_client(S1), 3);
    let t = b.build();
    assert_eq!(t.domain(D0).uplink, Uplink::Session(S1));
    assert!(!t.domain(D0).sessions.contains(S1));
    assert!(!t.domain(D1).sessions.contains(S1));
    assert_eq!(
        steer(&t, KERNEL, &frame(LAN, LOCAL, Tags::Untagged)),
        Decision::Session(S1)
    );
    assert_eq!(
        steer(&t, Source::Session(S1), &frame(LOCAL, LAN, Tags::Untagged)),
        Decision::Kernel
    );
    // The client's MAC is gone: from the NIC it is no longer ours to carry.
    assert_ne!(
        steer(&t, NIC, &frame(A, LAN, Tags::Untagged)),
        Decision::Session(S1)
    );
    assert_eq!(b.remove_session(S1), 0);
    assert_eq!(b.build().domain(D0).uplink, Uplink::None);
}
