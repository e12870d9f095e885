//! The steering decision: for each frame, where it goes. The hottest code in nicproxy.
//!
//! # Concepts
//! - A *domain* ([`DomainId`]) is an L2 network. The NIC's untagged traffic belongs to one
//!   domain and each VLAN id maps to one, through the table. The outer VID of a tagged frame
//!   (802.1Q 0x8100 or 802.1ad 0x88a8, single or QinQ) picks the domain; VID 0 (priority tag)
//!   counts as untagged. The same mapping applies to frames from the kernel and from
//!   sessions: peers share the VLAN numbering of the management network, and frames keep
//!   their tags over the fabric.
//! - A *session* ([`SessionId`], below 64) is a fabric session to a peer. In a domain a
//!   session plays one of two roles. It is a *client* when we proxy that peer's MACs (table
//!   entries `(domain, mac) → Session(s)`), and it is our *uplink* when this node reaches the
//!   domain's LAN through that peer ([`DomainInfo::uplink`] is `Uplink::Session(s)`): after a
//!   failover of our NIC, or for a domain that only the peer is cabled to. Because the role
//!   is per domain, one session can be our uplink in one domain and our client in another.
//! - Each domain has an *uplink* ([`Uplink`]): `Nic` normally, `Session(p)` when failed over
//!   to proxy `p` or when the domain is reachable only through peer `p`, `None` when no path
//!   is left. The NIC takes part in a domain exactly when the uplink is `Nic`; LAN-side frames
//!   are accepted only from the current uplink (as bonding's active-backup drops what arrives
//!   on a backup slave), which keeps a recovering NIC and a proxy from delivering the same
//!   broadcast twice.
//!
//! # Rules
//! Bad frames, whatever their source: under 14 bytes or shorter than their tags → `Runt`;
//! longer than the table's maximum (default 1522 = MTU 1500 + 14 + two tags) → `Oversize`;
//! an ethertype after the tags outside the accepted set (default IPv4, ARP, IPv6; LLDP and
//! others can be added; 802.3 length/LLC frames and a third VLAN tag never pass) →
//! `UnknownEthertype`; a VLAN (or untagged) that maps to no domain → `UnknownVlan`.
//!
//! *From the NIC*, or *from our uplink session* (the proxy relays LAN frames to us). When
//! the NIC is not the domain's uplink, its frames are refused with `InactivePath` (floods
//! reach us through the proxy, so taking them here too would deliver them twice), except a
//! unicast for one of our own MACs in a domain the NIC is cabled to: the switch sends a
//! unicast to one port only, so it is delivered to the kernel (the switch relearned our MAC
//! on the NIC before we moved back to it). Otherwise:
//! - unicast to a local MAC → Kernel; to a proxied MAC → that session (to the very session
//!   it came from → `Loop`); unknown → `NotForUs`; blackholed → `Filtered`;
//! - broadcast/multicast → Flood {kernel if member, the domain's client sessions}, never
//!   back to the NIC or to the session it came from; nobody to flood to → `NoRoute`;
//! - link-local 01:80:c2:00:00:0x (LLDP, LACP, STP) → the kernel only, and only from our own
//!   wire (from a session → `LinkLocal`); a bridge must not forward these.
//!
//! *From the kernel*:
//! - unicast to a proxied MAC → hairpin to that session; to a local MAC → `Loop`; any other
//!   unicast → the uplink (NIC, or the proxy's session when failed over, or `NoPath`);
//! - broadcast/multicast → Flood {the uplink (NIC flag or proxy session), every client
//!   session of the domain}: proxied peers are on our L2 domain and would not see our
//!   broadcast otherwise, since the switch does not send it back to us. Empty → `NoPath`;
//! - link-local → the NIC if it is the uplink, else `LinkLocal`.
//!
//! *From a session that is neither the domain's uplink nor a member of it*: `InactivePath`
//! (typically the proxy we just left, still relaying LAN floods), unless the session is a
//! client of ours in another domain or claims another session's MAC: then `Spoofed`.
//!
//! *From a client session `s`*:
//! - the source MAC must be registered for `s` in the frame's domain (its entry is
//!   `Session(s)`; one lookup in the same hash), else `Spoofed`;
//! - unicast to a local MAC → Kernel; to another proxied MAC → that session; to one of `s`'s
//!   own MACs → `Loop`; otherwise → the uplink (normally the NIC; `NoPath` if none);
//! - broadcast/multicast → Flood {the uplink, the kernel if member, the other client
//!   sessions}, never echoed to `s`; empty → `NoRoute`;
//! - link-local → `LinkLocal`.
//!
//! Source MACs of NIC and kernel frames are not checked (it would cost a second lookup per
//! frame on the fast path); only client sessions, which are the trust boundary of the
//! fabric, are.
//!
//! # Publication
//! The control plane edits a [`MacTableBuilder`], builds an immutable [`MacTable`] and
//! publishes it to every worker through [`publish`]: no locks and no atomic
//! read-modify-write on the worker, which swaps tables between bursts.

pub mod builder;
pub mod classify;
pub mod decide;
pub mod publish;
pub mod table;
pub mod types;

#[doc(hidden)]
pub mod bench_support;

#[cfg(test)]
mod tests;

pub use builder::{MacTableBuilder, TableError};
pub use classify::{classify, Classified};
pub use decide::{decide, steer, steer_bulk, steer_bulk_from};
pub use publish::{table_channel, PublishError, TablePublisher, TableReader};
pub use table::{
    mac_key, DomainInfo, MacTable, DEFAULT_ETHERTYPES, DEFAULT_MAX_FRAME_LEN, MAX_ETHERTYPES,
};
pub use types::{
    Action, Decision, DomainId, Flood, SessionId, SessionMask, Source, Uplink, MAX_DOMAINS,
    MAX_SESSIONS,
};
