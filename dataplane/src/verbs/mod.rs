//! Safe wrappers over libibverbs and librdmacm for the verbs fabric: devices, protection
//! domains, memory regions, completion queues, RC queue pairs, and rdma_cm connection
//! setup by IP address.
//!
//! Ownership encodes teardown order: a [`Connection`] owns its QP, rdma_cm id and event
//! channel and holds `Arc`s to the CQs and PD it was set up with; CQs and PDs hold their
//! [`Context`]; a [`MemoryRegion`] holds its PD. So nothing is destroyed while something
//! built on it lives, and a connection goes QP, CQ, PD, id, channel.
//!
//! Hot path (`post_send`, `post_recv`, `CompletionQueue::poll`): no allocation, no lock
//! of ours, no syscall (rxe's doorbell aside); errors are returned, never panics.

mod cm;
mod cq;
mod device;
mod error;
mod mr;
mod pd;
mod qp;

pub use cm::{
    ConnStatus, Connection, DownReason, Listener, ACCEPT_PRIVATE_DATA_MAX,
    CONNECT_PRIVATE_DATA_MAX, REJECT_PRIVATE_DATA_MAX,
};
pub use cq::{CompletionChannel, CompletionQueue, WcOpcode, WcStatus, WorkCompletion};
pub use device::{device_names, Context, PortAttr, PortState};
pub use error::{Result, VerbsError};
pub use mr::{Access, MemoryRegion, Sge};
pub use pd::ProtectionDomain;
pub use qp::{QpConfig, QpSetup, QpState, QueuePair, RecvRequest, SendFlags, SendRequest};
