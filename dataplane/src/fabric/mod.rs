//! The fabric: how a node's frames travel to and from its peers.
//!
//! Two backends carry the same tunnelled frames, each addressed by a [`SessionId`]:
//!
//! - **verbs** (`fabric/verbs.rs`, a separate module): RC queue pairs over InfiniBand or
//!   RoCE, connected by rdma_cm. The production path where the fabric offers RDMA.
//! - **UDP** ([`udp`]): kernel UDP sockets batched with `sendmmsg`/`recvmmsg`. For fabrics
//!   that only offer IP over IB, and for hosts without RDMA. It is a real backend with its
//!   own tests, not a stand-in for verbs.
//!
//! Both work on plain byte buffers, so a worker can point them at mbuf data areas and move
//! frames without copying.

use std::net::{IpAddr, SocketAddr};

pub mod header;
#[cfg(feature = "dpdk")]
pub mod txq;
pub mod udp;
#[cfg(all(feature = "dpdk", feature = "verbs"))]
pub mod verbs;

/// Names one peer session on the fabric: the same id the steering table uses, so a
/// steering decision addresses the fabric without translation.
pub use crate::steer::SessionId;

/// What went wrong while setting up or driving a fabric backend. Every variant says what was
/// being attempted; OS failures carry the errno and its text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FabricError {
    /// A system call failed.
    #[error("{action}: {source}")]
    Os {
        /// What was being attempted, e.g. "receiving from the UDP fabric socket (recvmmsg)".
        action: &'static str,
        /// The errno, displayed with its text.
        #[source]
        source: std::io::Error,
    },
    /// Binding the fabric's local socket failed (address in use, not a local address, ...).
    #[error("binding the fabric socket to {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The errno, displayed with its text.
        #[source]
        source: std::io::Error,
    },
    /// The local address cannot serve as a fabric endpoint.
    #[error("bad local fabric address {addr}: {reason}")]
    BadLocalAddress {
        /// The address given.
        addr: SocketAddr,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A peer entry cannot be used; the whole peer table was left unchanged.
    #[error("bad fabric peer {ip} for {session}: {reason}")]
    BadPeer {
        /// The session the entry was for.
        session: SessionId,
        /// The peer address given.
        ip: IpAddr,
        /// Why it was refused.
        reason: &'static str,
    },
}
