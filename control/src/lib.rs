//! The nicproxy control plane.
//!
//! Everything here is pure logic that runs without DPDK or verbs, so its tests run anywhere:
//!
//! - [`config`]: the TOML node configuration, its validation (errors name file, line and key)
//!   and the derived proxy order;
//! - [`proto`]: the session protocol between nodes: the wire format, HMAC authentication and
//!   replay protection of control messages, and the minimal header of tunnelled frames;
//! - [`policy`]: the failover state machines, the owner side (which path carries this node's
//!   MACs) and the proxy side (whose MACs this node carries), driven by events with the time
//!   passed in, so they are deterministic.

pub mod config;
pub mod policy;
pub mod proto;

#[cfg(feature = "dpdk")]
pub mod daemon;
#[cfg(test)]
mod test_rng;
