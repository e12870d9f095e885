//! The control plane's mutable view of the steering state, which produces immutable
//! [`MacTable`] snapshots.

use std::collections::{BTreeMap, HashMap};

use super::table::{
    mac_key, DomainInfo, MacTable, DEFAULT_ETHERTYPES, DEFAULT_MAX_FRAME_LEN, EMPTY_KEY,
    EMPTY_SLOT, MAX_ETHERTYPES, MIN_CAPACITY, NO_DOMAIN,
};
use super::types::{Action, DomainId, SessionId, SessionMask, Uplink, MAX_DOMAINS, MAX_SESSIONS};
use crate::wire::ethernet::{ethertype, field};
use crate::wire::MacAddr;

/// Why a change to the steering state was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Session ids index a 64-bit mask.
    #[error("{doing}: session id {session} is out of range (must be below {max})", max = MAX_SESSIONS)]
    BadSession {
        /// What was being attempted.
        doing: &'static str,
        /// The rejected id.
        session: u16,
    },
    /// Domain ids index the per-domain array.
    #[error("{doing}: domain id {domain} is out of range (must be below {max})", max = MAX_DOMAINS)]
    BadDomain {
        /// What was being attempted.
        doing: &'static str,
        /// The rejected id.
        domain: u16,
    },
    /// VLAN ids are 1..=4094.
    #[error("mapping VLAN {vid} to a domain: VLAN ids are 1..=4094")]
    BadVlan {
        /// The rejected id.
        vid: u16,
    },
    /// Group MACs are flooded by domain membership, never looked up.
    #[error("installing {mac} in domain {domain}: broadcast/multicast MACs cannot be table entries (floods follow domain membership)")]
    GroupMac {
        /// The rejected MAC.
        mac: MacAddr,
        /// Its domain.
        domain: u16,
    },
    /// The accepted-ethertype list is full.
    #[error("accepting ethertype {ethertype:#06x}: the list already holds {max} types", max = MAX_ETHERTYPES)]
    TooManyEthertypes {
        /// The rejected ethertype.
        ethertype: u16,
    },
    /// Not an ethertype that can be accepted.
    #[error("accepting ethertype {ethertype:#06x}: values below 0x0600 are 802.3 lengths and VLAN TPIDs are walked, not accepted")]
    BadEthertype {
        /// The rejected ethertype.
        ethertype: u16,
    },
    /// Frames shorter than a header, or absurdly long, cannot be a limit.
    #[error("setting the maximum frame length to {len}: must be between 64 and 65535")]
    BadMaxFrameLen {
        /// The rejected length.
        len: usize,
    },
}

fn check_session(doing: &'static str, s: SessionId) -> Result<(), TableError> {
    if usize::from(s.0) < MAX_SESSIONS {
        Ok(())
    } else {
        Err(TableError::BadSession {
            doing,
            session: s.0,
        })
    }
}

fn check_domain(doing: &'static str, d: DomainId) -> Result<(), TableError> {
    if usize::from(d.0) < MAX_DOMAINS {
        Ok(())
    } else {
        Err(TableError::BadDomain { doing, domain: d.0 })
    }
}

fn check_action(doing: &'static str, a: Action) -> Result<(), TableError> {
    match a {
        Action::Session(s) => check_session(doing, s),
        _ => Ok(()),
    }
}

fn check_uplink(doing: &'static str, u: Uplink) -> Result<(), TableError> {
    match u {
        Uplink::Session(s) => check_session(doing, s),
        _ => Ok(()),
    }
}

/// The control plane's steering state. Every change is validated here, so a built
/// [`MacTable`] is always consistent; [`MacTableBuilder::build`] makes a snapshot to publish.
///
/// Defaults: untagged frames belong to domain 0; no VLAN is mapped; no domain has members or
/// an uplink; IPv4, ARP and IPv6 are accepted; frames up to 1522 bytes (MTU 1500) pass.
#[derive(Debug, Clone)]
pub struct MacTableBuilder {
    entries: HashMap<u64, Action>,
    vlans: BTreeMap<u16, DomainId>,
    untagged: Option<DomainId>,
    domains: BTreeMap<DomainId, DomainInfo>,
    /// Domains our NIC is not cabled to (reached only through peers).
    remote: std::collections::BTreeSet<DomainId>,
    nic_mac: Option<MacAddr>,
    ethertypes: Vec<u16>,
    max_frame_len: usize,
    generation: u64,
    kernel_open: bool,
}

impl Default for MacTableBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MacTableBuilder {
    /// An empty state with the defaults above.
    pub fn new() -> Self {
        MacTableBuilder {
            entries: HashMap::new(),
            vlans: BTreeMap::new(),
            untagged: Some(DomainId(0)),
            domains: BTreeMap::new(),
            remote: std::collections::BTreeSet::new(),
            nic_mac: None,
            ethertypes: DEFAULT_ETHERTYPES.to_vec(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            generation: 0,
            kernel_open: true,
        }
    }

    /// Installs (or replaces) the action for `mac` in `domain`; returns the previous one.
    /// `Action::Session(s)` also registers `mac` as a source allowed on session `s`.
    pub fn insert(
        &mut self,
        domain: DomainId,
        mac: MacAddr,
        action: Action,
    ) -> Result<Option<Action>, TableError> {
        check_domain("installing a MAC", domain)?;
        check_action("installing a MAC", action)?;
        if mac.is_multicast() {
            return Err(TableError::GroupMac {
                mac,
                domain: domain.0,
            });
        }
        Ok(self.entries.insert(mac_key(domain, mac.to_u64()), action))
    }

    /// Installs one of this node's own MACs (delivered to the kernel).
    pub fn add_local(&mut self, domain: DomainId, mac: MacAddr) -> Result<&mut Self, TableError> {
        self.insert(domain, mac, Action::Kernel)?;
        Ok(self)
    }

    /// Installs a MAC proxied for the peer on `session`.
    pub fn add_proxied(
        &mut self,
        domain: DomainId,
        mac: MacAddr,
        session: SessionId,
    ) -> Result<&mut Self, TableError> {
        self.insert(domain, mac, Action::Session(session))?;
        Ok(self)
    }

    /// Removes the entry for `mac` in `domain`; returns it.
    pub fn remove(&mut self, domain: DomainId, mac: MacAddr) -> Option<Action> {
        self.entries.remove(&mac_key(domain, mac.to_u64()))
    }

    /// The entry for `mac` in `domain`.
    pub fn get(&self, domain: DomainId, mac: MacAddr) -> Option<Action> {
        self.entries.get(&mac_key(domain, mac.to_u64())).copied()
    }

    /// The (domain, MAC) pairs registered for `session`, sorted.
    pub fn session_macs(&self, session: SessionId) -> Vec<(DomainId, MacAddr)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, a)| **a == Action::Session(session))
            .map(|(&k, _)| (DomainId((k >> 48) as u16), MacAddr::from_u64(k)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Forgets a session entirely: its MACs, its domain memberships, and any uplink through
    /// it (which becomes [`Uplink::None`] until policy picks another). Returns how many MACs
    /// were removed.
    pub fn remove_session(&mut self, session: SessionId) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, a| *a != Action::Session(session));
        for info in self.domains.values_mut() {
            info.sessions.remove(session);
            if info.uplink == Uplink::Session(session) {
                info.uplink = Uplink::None;
            }
        }
        before - self.entries.len()
    }

    /// Forgets what a session carries as our client: its MACs and its domain memberships.
    /// Unlike [`Self::remove_session`], an uplink through the session stays: the peer can
    /// be our proxy and our client at once (each carried the other across a failover),
    /// and ending the one role must not end the other (it did: the lab saw a node's own
    /// traffic blackholed while its control plane reported it on that proxy). Returns how
    /// many MACs were removed.
    pub fn remove_client(&mut self, session: SessionId) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, a| *a != Action::Session(session));
        for info in self.domains.values_mut() {
            info.sessions.remove(session);
        }
        before - self.entries.len()
    }

    /// Sets the domain of untagged (and priority-tagged, VID 0) frames; `None` drops them as
    /// `UnknownVlan`.
    pub fn set_untagged_domain(
        &mut self,
        domain: Option<DomainId>,
    ) -> Result<&mut Self, TableError> {
        if let Some(d) = domain {
            check_domain("mapping untagged frames to a domain", d)?;
        }
        self.untagged = domain;
        Ok(self)
    }

    /// Maps frames whose outer VLAN id is `vid` to `domain`.
    pub fn map_vlan(&mut self, vid: u16, domain: DomainId) -> Result<&mut Self, TableError> {
        if vid == 0 || vid >= 0x0fff {
            return Err(TableError::BadVlan { vid });
        }
        check_domain("mapping a VLAN to a domain", domain)?;
        self.vlans.insert(vid, domain);
        Ok(self)
    }

    /// Unmaps `vid`: its frames are then dropped as `UnknownVlan`.
    pub fn unmap_vlan(&mut self, vid: u16) -> &mut Self {
        self.vlans.remove(&vid);
        self
    }

    /// Replaces the whole configuration of `domain`.
    pub fn set_domain(
        &mut self,
        domain: DomainId,
        info: DomainInfo,
    ) -> Result<&mut Self, TableError> {
        check_domain("configuring a domain", domain)?;
        check_uplink("configuring a domain", info.uplink)?;
        self.domains.insert(domain, info);
        Ok(self)
    }

    /// The configuration of `domain` (default if never set).
    pub fn domain(&self, domain: DomainId) -> DomainInfo {
        self.domains.get(&domain).copied().unwrap_or_default()
    }

    fn domain_mut(
        &mut self,
        doing: &'static str,
        d: DomainId,
    ) -> Result<&mut DomainInfo, TableError> {
        check_domain(doing, d)?;
        Ok(self.domains.entry(d).or_default())
    }

    /// Sets where `domain`'s kernel frames leave: the NIC, a proxy session (failed over, or a
    /// domain reachable only through the peer cabled to it), or nowhere.
    pub fn set_uplink(
        &mut self,
        domain: DomainId,
        uplink: Uplink,
    ) -> Result<&mut Self, TableError> {
        check_uplink("setting a domain's uplink", uplink)?;
        self.domain_mut("setting a domain's uplink", domain)?.uplink = uplink;
        Ok(self)
    }

    /// Sets the uplink of every configured domain whose uplink is `from` to `to` (the
    /// failover of a node whose domains all share its NIC).
    pub fn replace_uplink(&mut self, from: Uplink, to: Uplink) -> Result<usize, TableError> {
        check_uplink("moving uplinks", to)?;
        let mut n = 0;
        for info in self.domains.values_mut().filter(|i| i.uplink == from) {
            info.uplink = to;
            n += 1;
        }
        Ok(n)
    }

    /// Sets whether the local kernel receives `domain`'s broadcast/multicast.
    pub fn set_kernel_member(
        &mut self,
        domain: DomainId,
        member: bool,
    ) -> Result<&mut Self, TableError> {
        self.domain_mut("setting kernel membership", domain)?.kernel = member;
        Ok(self)
    }

    /// Adds `session` to `domain`'s broadcast/multicast members.
    pub fn add_session_member(
        &mut self,
        domain: DomainId,
        session: SessionId,
    ) -> Result<&mut Self, TableError> {
        check_session("adding a session to a domain", session)?;
        self.domain_mut("adding a session to a domain", domain)?
            .sessions
            .insert(session);
        Ok(self)
    }

    /// Removes `session` from `domain`'s broadcast/multicast members.
    pub fn remove_session_member(&mut self, domain: DomainId, session: SessionId) -> &mut Self {
        if let Some(info) = self.domains.get_mut(&domain) {
            info.sessions.remove(session);
        }
        self
    }

    /// Adds `et` to the accepted ethertypes (e.g. LLDP, 0x88cc).
    pub fn accept_ethertype(&mut self, et: u16) -> Result<&mut Self, TableError> {
        if et < ethertype::MIN_ETHERTYPE || ethertype::is_vlan_tpid(et) {
            return Err(TableError::BadEthertype { ethertype: et });
        }
        if !self.ethertypes.contains(&et) {
            if self.ethertypes.len() == MAX_ETHERTYPES {
                return Err(TableError::TooManyEthertypes { ethertype: et });
            }
            self.ethertypes.push(et);
        }
        Ok(self)
    }

    /// Stops accepting `et`.
    pub fn reject_ethertype(&mut self, et: u16) -> &mut Self {
        self.ethertypes.retain(|&e| e != et);
        self
    }

    /// Sets the largest accepted frame, in bytes without FCS.
    pub fn set_max_frame_len(&mut self, len: usize) -> Result<&mut Self, TableError> {
        if !(64..=65_535).contains(&len) {
            return Err(TableError::BadMaxFrameLen { len });
        }
        self.max_frame_len = len;
        Ok(self)
    }

    /// Sets the largest accepted frame from an IP MTU: MTU + 14 (header) + 8 (two VLAN tags).
    pub fn set_mtu(&mut self, mtu: usize) -> Result<&mut Self, TableError> {
        self.set_max_frame_len(mtu + field::HEADER_LEN + 2 * field::TAG_LEN)
    }

    /// Number of installed entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no MAC is installed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Makes an immutable snapshot of the current state. Each snapshot gets the next
    /// generation number.
    /// Marks whether this node's NIC is cabled to `domain` (default: yes). Frames for our
    /// own MACs that arrive on the NIC in a cabled domain are delivered even while the NIC
    /// is not the domain's path; in a domain reached only through peers they never are.
    pub fn set_nic_cabled(&mut self, domain: DomainId, cabled: bool) -> &mut Self {
        if cabled {
            self.remote.remove(&domain);
        } else {
            self.remote.insert(domain);
        }
        self
    }

    /// Sets the NIC port's own MAC. Frames from the kernel side with this source MAC (the
    /// upstream probe, which must test the NIC's path even while we are failed over) leave
    /// by the NIC in domains it is cabled to, whatever the uplink. A unicast MAC only.
    pub fn set_nic_mac(&mut self, mac: Option<MacAddr>) -> Result<&mut Self, TableError> {
        if let Some(m) = mac {
            if m.is_multicast() {
                return Err(TableError::GroupMac { mac: m, domain: 0 });
            }
        }
        self.nic_mac = mac;
        Ok(self)
    }

    /// Sets whether the local kernel's interface takes frames (the default). Closed, every
    /// frame for it is dropped as [`crate::counters::DropReason::NoCarrier`] and floods
    /// leave it out, while the rest of the table works as before. The control plane closes
    /// it before it drops the interface's carrier and opens it once the kernel has taken
    /// the carrier up again: until then the kernel transmits nothing (its queue discipline
    /// is still the no-op one), so a frame it answered would need a neighbour lookup whose
    /// solicitation is lost, and its answers would wait a whole retransmission time (1 s)
    /// for the next one (seen in the lab: ~0.5 s of probes lost after a path came back).
    pub fn set_kernel_open(&mut self, open: bool) -> &mut Self {
        self.kernel_open = open;
        self
    }

    /// Whether the local kernel's interface takes frames.
    pub fn kernel_open(&self) -> bool {
        self.kernel_open
    }

    pub fn build(&mut self) -> Box<MacTable> {
        self.generation += 1;
        let capacity = (self.entries.len() * 2)
            .next_power_of_two()
            .max(MIN_CAPACITY);
        let mut table = MacTable {
            slots: vec![EMPTY_SLOT; capacity].into_boxed_slice(),
            // capacity is a power of two >= 16: the shift is in 0..=60.
            shift: 64 - capacity.trailing_zeros(),
            len: 0,
            vlans: vec![NO_DOMAIN; 4096].into_boxed_slice(),
            untagged: self.untagged.map_or(NO_DOMAIN, |d| d.0),
            domains: Box::new([]),
            nic_cabled: Box::new([]),
            clients: self
                .domains
                .values()
                .fold(SessionMask::EMPTY, |m, i| SessionMask(m.0 | i.sessions.0)),
            nic_mac: self.nic_mac.map_or(0, |m| m.to_u64()),
            ethertypes: [0; MAX_ETHERTYPES],
            max_frame_len: self.max_frame_len,
            generation: self.generation,
            kernel_open: self.kernel_open,
        };
        // Insert in key order: the slot layout then depends only on the content, not on the
        // HashMap's iteration order, which makes snapshots reproducible.
        let mut keys: Vec<_> = self.entries.iter().map(|(&k, &a)| (k, a)).collect();
        keys.sort_unstable_by_key(|&(k, _)| k);
        for (key, action) in keys {
            insert_slot(&mut table, key, action);
        }
        for (&vid, &d) in &self.vlans {
            table.vlans[usize::from(vid)] = d.0;
        }
        let n_domains = self
            .domains
            .keys()
            .map(|d| usize::from(d.0) + 1)
            .chain(self.vlans.values().map(|d| usize::from(d.0) + 1))
            .chain(self.untagged.map(|d| usize::from(d.0) + 1))
            .max()
            .unwrap_or(0);
        let mut domains = vec![DomainInfo::default(); n_domains];
        for (&d, &info) in &self.domains {
            domains[usize::from(d.0)] = info;
        }
        table.nic_cabled = (0..n_domains)
            .map(|d| !self.remote.contains(&DomainId(d as u16)))
            .collect();
        table.domains = domains.into_boxed_slice();
        for (slot, &et) in table.ethertypes.iter_mut().zip(&self.ethertypes) {
            *slot = et;
        }
        Box::new(table)
    }
}

fn insert_slot(t: &mut MacTable, key: u64, action: Action) {
    debug_assert_ne!(key, EMPTY_KEY);
    let mask = t.slots.len() - 1;
    let mut i = t.home(key);
    loop {
        let s = &mut t.slots[i & mask];
        if s.key == EMPTY_KEY || s.key == key {
            if s.key == EMPTY_KEY {
                t.len += 1;
            }
            s.key = key;
            s.action = action;
            return;
        }
        i += 1;
    }
}
