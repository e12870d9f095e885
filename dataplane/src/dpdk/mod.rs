//! Safe wrappers over the system DPDK (via `dpdk-sys`): the EAL, mbuf pools, mbufs and
//! bursts, Ethernet ports, and `rte_hash`.
//!
//! Lifetimes follow DPDK's: every object keeps an [`Eal`] handle, so `rte_eal_cleanup` runs
//! after the last of them; a [`Port`] keeps its rx [`Mempool`]; a pool with mbufs still out
//! when dropped is leaked (with the EAL) rather than freed under them.

pub mod eal;
pub mod error;
pub mod hash;
pub mod mbuf;
pub mod mempool;
pub mod port;

pub use dpdk_sys as ffi;
pub use eal::{lcore_id, runtime_dir, tsc, Eal, LcoreRegistration};
pub use error::DpdkError;
pub use hash::{RteHash, LOOKUP_BULK_MAX};
pub use mbuf::{Burst, Mbuf, BURST_SIZE};
pub use mempool::{Mempool, PKTMBUF_HEADROOM};
pub use port::{LinkState, MacAddr, Port, PortConfig, PortQueue, PortStats};
