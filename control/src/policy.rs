//! The failover policy: pure, deterministic state machines with time passed in.
//!
//! - [`Failover`] (owner side) decides which path carries this node's own MACs: the local
//!   NIC, a proxy's session, or nothing (carrier off). One instance serves the node's
//!   local domains; each domain reached only through peers gets its own, without a NIC.
//! - [`ProxyServer`] (proxy side) decides which clients' MACs this node carries.
//!
//! Both take events and return actions for the control thread to carry out; neither
//! reads a clock or does I/O, so their tests replay exact event sequences.

mod failover;
mod proxy;

pub use failover::{Action, Event, Failover, FailoverParams, ProxyStatus, Uplink, ACK_RETRIES};
pub use proxy::{ClientEntry, ProxyAction, ProxyEvent, ProxyParams, ProxyServer};
