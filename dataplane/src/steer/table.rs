//! The immutable steering snapshot: an open-addressing hash of (domain, MAC) → [`Action`],
//! the VLAN → domain map, per-domain membership and uplink, and the frame limits.
//!
//! Layout, chosen for a handful of cycles per lookup: the key is one `u64` (16-bit domain
//! above the 48-bit MAC), the hash is a multiply-shift (Fibonacci hashing: one multiply, one
//! shift; the top bits of the product depend on every key bit), the capacity is a power of
//! two kept at least twice the entry count (load ≤ 0.5, so a miss ends at an empty slot after
//! about 2.5 probes on average), and probing is linear through a flat array of 16-byte slots
//! (key + action), four to a cache line. A lookup is a multiply, a shift, and usually one
//! cache line.

use super::types::{Action, DomainId, SessionMask, Uplink, MAX_DOMAINS};
use crate::wire::ethernet::ethertype;
use crate::wire::MacAddr;

/// Key of an empty slot. It is domain 0xffff + ff:ff:ff:ff:ff:ff, which can never be
/// installed (0xffff is not a valid domain and broadcast is never looked up), and an empty
/// slot holds [`Action::Nic`], so looking it up still answers "unknown".
pub(super) const EMPTY_KEY: u64 = u64::MAX;
/// "No domain" in the VLAN map.
pub(super) const NO_DOMAIN: u16 = 0xffff;
/// Multiplier of the multiply-shift hash (2^64 / golden ratio, odd).
const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
/// Smallest slot array; also keeps the shift below 64.
pub(super) const MIN_CAPACITY: usize = 16;
/// Size of the accepted-ethertype list.
pub const MAX_ETHERTYPES: usize = 8;
/// Ethertypes accepted by default: IPv4, ARP, IPv6. VLAN tags (0x8100, 0x88a8) are walked,
/// not "accepted": they are only valid as the first one or two tags. Everything else
/// (LLDP, 802.3 length/LLC frames such as STP, a third VLAN tag, ...) is dropped as
/// `UnknownEthertype` unless configured.
pub const DEFAULT_ETHERTYPES: [u16; 3] = [ethertype::IPV4, ethertype::ARP, ethertype::IPV6];
/// Default largest frame accepted: MTU 1500 + 14 bytes of header + 8 for two VLAN tags (no
/// FCS: DPDK strips it).
pub const DEFAULT_MAX_FRAME_LEN: usize = 1500 + 14 + 8;

/// Packs a domain and a 48-bit MAC (as [`MacAddr::to_u64`]) into a table key.
#[inline(always)]
pub const fn mac_key(domain: DomainId, mac: u64) -> u64 {
    ((domain.0 as u64) << 48) | (mac & 0xffff_ffff_ffff)
}

/// One slot of the hash array.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
pub(super) struct Slot {
    pub(super) key: u64,
    pub(super) action: Action,
}

pub(super) const EMPTY_SLOT: Slot = Slot {
    key: EMPTY_KEY,
    action: Action::Nic,
};

/// Per-domain flood membership and uplink.
///
/// NIC membership is not a separate flag: the NIC takes part in a domain exactly when the
/// domain's uplink is [`Uplink::Nic`]. While failed over, or for a domain the node has no NIC
/// on, the proxy session is the uplink and is flooded to instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DomainInfo {
    /// Where kernel frames (and client frames to unknown MACs) leave; also the only path
    /// LAN-side frames are accepted from.
    pub uplink: Uplink,
    /// The local kernel receives this domain's broadcast/multicast.
    pub kernel: bool,
    /// Client sessions (peers we proxy in this domain) that receive its broadcast/multicast.
    pub sessions: SessionMask,
}

/// An immutable steering snapshot. Built by [`super::MacTableBuilder`], published to
/// workers through [`super::publish`]; workers only read it.
#[derive(Debug, Clone)]
pub struct MacTable {
    pub(super) slots: Box<[Slot]>,
    pub(super) shift: u32,
    pub(super) len: usize,
    /// VLAN id → domain id (or [`NO_DOMAIN`]); 4096 entries.
    pub(super) vlans: Box<[u16]>,
    pub(super) untagged: u16,
    pub(super) domains: Box<[DomainInfo]>,
    /// Per domain: whether this node's NIC is cabled to it (false for a domain reached only
    /// through peers). Indexed like `domains`; missing entries are cabled.
    pub(super) nic_cabled: Box<[bool]>,
    /// Every session that is a client of ours in some domain.
    pub(super) clients: SessionMask,
    /// The NIC port's own MAC as a 48-bit value (0: none). Frames the kernel side sends
    /// from it (the upstream probe) leave by the NIC whatever the uplink.
    pub(super) nic_mac: u64,
    /// Unused entries are 0, which is never an ethertype (it is an 802.3 length).
    pub(super) ethertypes: [u16; MAX_ETHERTYPES],
    pub(super) max_frame_len: usize,
    pub(super) generation: u64,
    /// Whether the local kernel's interface takes frames (see
    /// [`super::MacTableBuilder::set_kernel_open`]).
    pub(super) kernel_open: bool,
}

impl MacTable {
    /// Home slot of `key`.
    #[inline(always)]
    pub(super) fn home(&self, key: u64) -> usize {
        // shift >= 64 - log2(capacity): the result is below the capacity, and usize holds it.
        (key.wrapping_mul(HASH_MUL) >> self.shift) as usize
    }

    #[inline(always)]
    fn probe_from(&self, mut i: usize, key: u64) -> Action {
        let mask = self.slots.len() - 1;
        // Terminates: load <= 0.5 leaves empty slots, and every probe either hits the key,
        // hits an empty slot or moves on.
        loop {
            let s = &self.slots[i & mask];
            if s.key == key {
                return s.action;
            }
            if s.key == EMPTY_KEY {
                return Action::Nic;
            }
            i += 1;
        }
    }

    /// Looks up a packed key (see [`mac_key`]); unknown keys answer [`Action::Nic`].
    #[inline(always)]
    pub fn lookup_key(&self, key: u64) -> Action {
        self.probe_from(self.home(key), key)
    }

    /// Looks up `mac` in `domain`; unknown MACs answer [`Action::Nic`].
    #[inline]
    pub fn lookup(&self, domain: DomainId, mac: MacAddr) -> Action {
        self.lookup_key(mac_key(domain, mac.to_u64()))
    }

    /// Looks up many keys: `out[i]` gets the answer for `keys[i]` (up to the shorter length).
    /// Hashes a burst of keys first, then probes, so the slot loads are independent and the
    /// CPU overlaps their cache misses (a prefetch without `unsafe`).
    pub fn lookup_bulk(&self, keys: &[u64], out: &mut [Action]) {
        const BURST: usize = 32;
        for (k, o) in keys.chunks(BURST).zip(out.chunks_mut(BURST)) {
            let mut home = [0usize; BURST];
            for (h, &key) in home.iter_mut().zip(k) {
                *h = self.home(key);
            }
            for ((o, &key), &h) in o.iter_mut().zip(k).zip(&home) {
                *o = self.probe_from(h, key);
            }
        }
    }

    /// The installed action for `mac` in `domain`, or `None` when the table has no entry.
    pub fn get(&self, domain: DomainId, mac: MacAddr) -> Option<Action> {
        let key = mac_key(domain, mac.to_u64());
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = &self.slots[i & mask];
            if s.key == key {
                return Some(s.action);
            }
            if s.key == EMPTY_KEY {
                return None;
            }
            i += 1;
        }
    }

    /// Every installed entry, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = (DomainId, MacAddr, Action)> + '_ {
        self.slots.iter().filter(|s| s.key != EMPTY_KEY).map(|s| {
            // The top 16 bits of a key are the domain: the shift leaves exactly them.
            (
                DomainId((s.key >> 48) as u16),
                MacAddr::from_u64(s.key),
                s.action,
            )
        })
    }

    /// Number of installed (domain, MAC) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no MAC is installed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots (a power of two, at least twice [`MacTable::len`]).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Membership and uplink of `domain` (all empty/`None` for an unconfigured domain).
    #[inline(always)]
    pub fn domain(&self, domain: DomainId) -> DomainInfo {
        self.domains
            .get(usize::from(domain.0))
            .copied()
            .unwrap_or_default()
    }

    /// The NIC port's own MAC, if set.
    pub fn nic_mac(&self) -> Option<MacAddr> {
        (self.nic_mac != 0).then(|| MacAddr::from_u64(self.nic_mac))
    }

    /// Whether this node's NIC is cabled to `domain` (false only for domains marked as
    /// reached through peers).
    #[inline(always)]
    pub fn nic_cabled(&self, domain: DomainId) -> bool {
        self.nic_cabled
            .get(usize::from(domain.0))
            .copied()
            .unwrap_or(true)
    }

    /// The domain of a frame with outer VLAN id `vid` (`None` or 0 = untagged or
    /// priority-tagged), or `None` if that VLAN is not mapped.
    #[inline(always)]
    pub fn domain_of_vlan(&self, vid: Option<u16>) -> Option<DomainId> {
        let d = match vid {
            None | Some(0) => self.untagged,
            Some(v) => self
                .vlans
                .get(usize::from(v & 0x0fff))
                .copied()
                .unwrap_or(NO_DOMAIN),
        };
        (d != NO_DOMAIN).then_some(DomainId(d))
    }

    /// True when `et` (the ethertype after the VLAN tags) is accepted.
    #[inline(always)]
    pub fn accepts_ethertype(&self, et: u16) -> bool {
        // Unused list entries are 0; the bound check (802.3 lengths are below 0x0600) keeps
        // a frame with length field 0 from matching them. A fold over the fixed-size array
        // compiles to branch-free compares (`contains` was an out-of-line call, about 4% of
        // the worker's time in the forwarding benchmark).
        et >= ethertype::MIN_ETHERTYPE
            && self
                .ethertypes
                .iter()
                .fold(false, |hit, &x| hit | (x == et))
    }

    /// Largest frame accepted, in bytes (without FCS).
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Snapshot counter of the builder that made this table: later snapshots have larger
    /// generations.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Checked at compile time: domain ids fit below the reserved "no domain" value.
const _: () = assert!(MAX_DOMAINS <= NO_DOMAIN as usize);
