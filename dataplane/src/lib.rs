//! The nicproxy hot path.

pub mod counters;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod fabric;
pub mod steer;
pub mod sys;
#[cfg(feature = "verbs")]
pub mod verbs;
pub mod wire;
#[cfg(feature = "dpdk")]
pub mod worker;
