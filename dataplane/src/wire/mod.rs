//! Zero-copy views, parsers and builders of the frames nicproxy looks at.
//!
//! Shaped like smoltcp's `wire`: each header has a view `Thing<T: AsRef<[u8]>>` with
//! `new_checked()` (validates lengths once, so accessors cannot run off the end), a
//! `mod field` of byte ranges, and where useful a `Repr` that parses and emits. Parsers of
//! untrusted bytes return [`WireError`] and never panic. Builders write into a caller's
//! `&mut [u8]` (an mbuf's data room) and return the frame length: no allocation.
//!
//! The steering hot path does not build views: it reads the few bytes it needs through
//! [`ethernet::walk_tags`] and the fixed offsets in [`ethernet::field`].

pub mod announce;
pub mod arp;
pub mod checksum;
pub mod error;
pub mod ethernet;
pub mod icmpv6;
pub mod ipv6;
pub mod mac;
pub mod neighbour;
pub mod pcap;
pub mod pcapng;

#[cfg(test)]
mod tests;

pub use announce::{Garp, GarpKind, UnsolicitedNa};
pub use arp::{ArpOp, ArpRepr};
pub use error::WireError;
pub use ethernet::{parse_l2, EthernetFrame, L2Header, VlanTag};
pub use icmpv6::{NaFlags, NdpRepr};
pub use mac::{MacAddr, ParseMacError};
pub use neighbour::{parse_neighbour, Neighbour, NeighbourMsg};
