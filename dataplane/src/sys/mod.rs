//! Thin wrappers over Linux system interfaces that are not DPDK or verbs.

pub mod raw_socket;
pub mod netlink;
pub mod signal;
pub mod sched;
