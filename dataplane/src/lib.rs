//! The nicproxy hot path.

pub mod fabric;
pub mod counters;
pub mod steer;
pub mod wire;
#[cfg(feature = "verbs")]
pub mod verbs;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod sys;
#[cfg(feature = "dpdk")]
pub mod worker;
