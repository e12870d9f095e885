//! A small steering table that holds every case the rules distinguish, and the mapping from
//! an input byte to the frame's source.

use std::sync::OnceLock;

use dataplane::steer::{
    Action, DomainId, DomainInfo, MacTable, MacTableBuilder, SessionId, SessionMask, Source, Uplink,
};
use dataplane::wire::ethernet::ethertype;
use dataplane::wire::MacAddr;

/// Our own MAC (delivered to the kernel) in every domain.
pub const LOCAL_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
/// The NIC port's own MAC (the upstream probe's source).
pub const NIC_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xfe]);
/// Blackholed in domain 0.
pub const DROP_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0x0f, 0x0f]);

/// The MAC proxied for session `s` in domain `d` (see [`table`] for which exist).
pub const fn proxied_mac(d: u8, s: u8) -> MacAddr {
    MacAddr([2, 0, 0, d, 1, s])
}

/// VLAN ids the table maps: 10 → domain 1, 20 → 2, 30 → 3, 40 → 4, 100 → 0. Any other
/// VLAN is unmapped.
pub const VLANS: [(u16, u16); 5] = [(10, 1), (20, 2), (30, 3), (40, 4), (100, 0)];

/// Builds the table:
///
/// | domain | how frames reach it | uplink | kernel | flood sessions | proxied MACs |
/// |---|---|---|---|---|---|
/// | 0 | untagged, VLAN 100 | NIC | yes | 0, 1, 2 | sessions 0..=4 |
/// | 1 | VLAN 10 | session 1 (failed over) | yes | 0, 2 | sessions 0, 2 |
/// | 2 | VLAN 20, not cabled | session 3 | yes | 5 | session 5 |
/// | 3 | VLAN 30 | none | no | 4 | session 4 |
/// | 4 | VLAN 40 | never configured | no | none | none |
///
/// [`LOCAL_MAC`] is local in domains 0..=3, [`DROP_MAC`] is blackholed in domain 0, the NIC
/// MAC is [`NIC_MAC`] and LLDP is accepted besides IPv4, ARP and IPv6.
pub fn build() -> Box<MacTable> {
    let mut b = MacTableBuilder::new();
    let set = |b: &mut MacTableBuilder, d: u16, uplink, kernel, sessions: &[u16]| {
        let mut mask = SessionMask::EMPTY;
        for &s in sessions {
            mask.insert(SessionId(s));
        }
        b.set_domain(
            DomainId(d),
            DomainInfo {
                uplink,
                kernel,
                sessions: mask,
            },
        )
        .expect("fixture domains are valid");
    };
    set(&mut b, 0, Uplink::Nic, true, &[0, 1, 2]);
    set(&mut b, 1, Uplink::Session(SessionId(1)), true, &[0, 2]);
    set(&mut b, 2, Uplink::Session(SessionId(3)), true, &[5]);
    set(&mut b, 3, Uplink::None, false, &[4]);
    for (vid, d) in VLANS {
        b.map_vlan(vid, DomainId(d))
            .expect("fixture VLANs are valid");
    }
    b.set_nic_cabled(DomainId(2), false);
    for d in 0..=3 {
        b.add_local(DomainId(d), LOCAL_MAC)
            .expect("fixture MACs are unicast");
    }
    let proxied: [(u8, &[u8]); 4] = [(0, &[0, 1, 2, 3, 4]), (1, &[0, 2]), (2, &[5]), (3, &[4])];
    for (d, sessions) in proxied {
        for &s in sessions {
            b.add_proxied(
                DomainId(u16::from(d)),
                proxied_mac(d, s),
                SessionId(u16::from(s)),
            )
            .expect("fixture MACs are unicast");
        }
    }
    b.insert(DomainId(0), DROP_MAC, Action::Drop)
        .expect("fixture MACs are unicast");
    b.set_nic_mac(Some(NIC_MAC)).expect("unicast");
    b.accept_ethertype(ethertype::LLDP)
        .expect("LLDP is a valid ethertype");
    b.build()
}

/// The table of [`build`], built once.
pub fn table() -> &'static MacTable {
    static T: OnceLock<Box<MacTable>> = OnceLock::new();
    T.get_or_init(build)
}

/// The source a `steer` input's first byte selects: low two bits 0 → NIC, 1 → kernel,
/// 2 → session 0..=63 (the high six bits), 3 → session 60..=123 (mostly out of range).
pub fn source(b: u8) -> Source {
    let high = u16::from(b >> 2);
    match b & 3 {
        0 => Source::Nic,
        1 => Source::Kernel,
        2 => Source::Session(SessionId(high)),
        _ => Source::Session(SessionId(60 + high)),
    }
}

/// The first byte that selects `s` (inverse of [`source`] for sessions below 64).
pub fn source_byte(s: Source) -> u8 {
    match s {
        Source::Nic => 0,
        Source::Kernel => 1,
        Source::Session(SessionId(id)) if id < 64 => 2 | ((id as u8) << 2),
        Source::Session(SessionId(id)) => 3 | (((id.clamp(60, 123) - 60) as u8) << 2),
    }
}
