//! Thin wrappers over Linux system interfaces that are not DPDK or verbs.

pub mod netlink;
pub mod netns;
pub mod raw_socket;
pub mod sched;
pub mod signal;
pub mod wait;
