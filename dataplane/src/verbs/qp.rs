//! Reliable-connected queue pairs: their configuration and the hot-path posting calls.
//!
//! A [`QueuePair`] is created and destroyed by its [`Connection`](super::Connection)
//! (rdma_cm drives its state transitions); this file only posts work and reads its state.
#![allow(unsafe_code)]

use std::fmt;
use std::mem::MaybeUninit;
use std::ops::BitOr;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_core_sys as sys;

use super::cq::CompletionQueue;
use super::device::Context;
use super::error::{Result, VerbsError};
use super::mr::Sge;
use super::pd::ProtectionDomain;

/// Sizes and retry policy of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpConfig {
    /// Send queue depth. With selective signalling, signal at least once per this many
    /// sends, or the queue fills with requests whose slots are never reclaimed.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// Scatter/gather entries per send.
    pub max_send_sge: u32,
    /// Scatter/gather entries per receive.
    pub max_recv_sge: u32,
    /// Largest inline send, bytes (the provider may grant more).
    pub max_inline_data: u32,
    /// Transport retries before a send fails with `RetryExceeded` (0..=7).
    pub retry_count: u8,
    /// Receiver-not-ready retries before a send fails with `RnrRetryExceeded` (0..=7;
    /// 7 means retry forever).
    ///
    /// The CM handshake hands both retry counts to the *peer*, whose sends use them: give
    /// both sides the same values.
    pub rnr_retry_count: u8,
    /// How long a peer whose send found our receive queue empty waits before retrying
    /// (IB encoding: 1 = 0.01 ms, 12 = 0.64 ms, 31 = 491 ms, 0 = 655 ms).
    pub min_rnr_timer: u8,
}

impl Default for QpConfig {
    fn default() -> Self {
        Self {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 64,
            retry_count: 7,
            rnr_retry_count: 7,
            min_rnr_timer: 12,
        }
    }
}

/// Everything a connection needs to create its queue pair: a PD and two CQs of one
/// device, and the sizes. The CQs may be shared by several connections.
#[derive(Debug, Clone)]
pub struct QpSetup {
    pub(crate) pd: Arc<ProtectionDomain>,
    pub(crate) send_cq: Arc<CompletionQueue>,
    pub(crate) recv_cq: Arc<CompletionQueue>,
    pub(crate) config: QpConfig,
}

impl QpSetup {
    /// Checks that the PD and the CQs belong to the same device.
    pub fn new(
        pd: Arc<ProtectionDomain>,
        send_cq: Arc<CompletionQueue>,
        recv_cq: Arc<CompletionQueue>,
        config: QpConfig,
    ) -> Result<Self> {
        for (what, cq) in [("send", &send_cq), ("receive", &recv_cq)] {
            if cq.context() != pd.context() {
                return Err(VerbsError::invalid(
                    "preparing a queue pair setup",
                    format!(
                        "the {what} CQ belongs to {} but the PD to {}",
                        cq.context().name(),
                        pd.context().name()
                    ),
                ));
            }
        }
        if config.retry_count > 7 || config.rnr_retry_count > 7 {
            return Err(VerbsError::invalid(
                "preparing a queue pair setup",
                "retry counts go from 0 to 7",
            ));
        }
        if config.min_rnr_timer > 31 {
            return Err(VerbsError::invalid(
                "preparing a queue pair setup",
                "the RNR timer code goes from 0 to 31",
            ));
        }
        Ok(Self {
            pd,
            send_cq,
            recv_cq,
            config,
        })
    }

    /// The device all parts belong to.
    pub fn context(&self) -> &Context {
        self.pd.context()
    }

    /// The protection domain.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// The sizes and retry policy.
    pub fn config(&self) -> &QpConfig {
        &self.config
    }

    pub(crate) fn init_attr(&self) -> sys::ibv_qp_init_attr {
        sys::ibv_qp_init_attr {
            send_cq: self.send_cq.as_ptr(),
            recv_cq: self.recv_cq.as_ptr(),
            cap: sys::ibv_qp_cap {
                max_send_wr: self.config.max_send_wr,
                max_recv_wr: self.config.max_recv_wr,
                max_send_sge: self.config.max_send_sge,
                max_recv_sge: self.config.max_recv_sge,
                max_inline_data: self.config.max_inline_data,
            },
            qp_type: sys::ibv_qp_type::IBV_QPT_RC,
            // Selective signalling: only sends flagged SIGNALED produce completions.
            sq_sig_all: 0,
            ..Default::default()
        }
    }
}

/// Flags of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendFlags(u32);

impl SendFlags {
    /// Unsignalled, copied from registered memory by the device.
    pub const NONE: Self = Self(0);
    /// Produce a completion for this send (and, implicitly, for the unsignalled sends
    /// before it).
    pub const SIGNALED: Self = Self(sys::ibv_send_flags::IBV_SEND_SIGNALED.0);
    /// Copy the payload into the work request at post time (up to `max_inline_data`
    /// bytes): no lkey needed, the buffer is free again as soon as the post returns.
    pub const INLINE: Self = Self(sys::ibv_send_flags::IBV_SEND_INLINE.0);
    /// Wake a peer waiting for solicited completions only.
    pub const SOLICITED: Self = Self(sys::ibv_send_flags::IBV_SEND_SOLICITED.0);
    /// Wait for earlier RDMA reads and atomics first.
    pub const FENCE: Self = Self(sys::ibv_send_flags::IBV_SEND_FENCE.0);

    /// True if every flag of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for SendFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// One send of a batch: a single-SGE message (the shape of an mbuf).
#[derive(Debug, Clone, Copy)]
pub struct SendRequest<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// The payload.
    pub sge: Sge<'a>,
    /// Signalled / inline / solicited.
    pub flags: SendFlags,
    /// Immediate data delivered with the message (host byte order), if any.
    pub imm: Option<u32>,
}

/// One receive of a batch: a single-SGE buffer.
#[derive(Debug, Clone, Copy)]
pub struct RecvRequest<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// The buffer to receive into.
    pub sge: Sge<'a>,
}

/// Work requests chained into one post (one doorbell); a burst is 32 packets.
const BATCH: usize = 32;

/// State of a queue pair (`enum ibv_qp_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    /// Reset.
    Reset,
    /// Initialised.
    Init,
    /// Ready to receive.
    ReadyToReceive,
    /// Ready to send: connected and working.
    ReadyToSend,
    /// Send queue drained.
    SendQueueDrained,
    /// Send queue error.
    SendQueueError,
    /// Error: every posted request is flushed; the connection must be re-established.
    Error,
    /// A value this crate does not know.
    Other(u32),
}

impl QpState {
    fn from_raw(v: sys::ibv_qp_state::Type) -> Self {
        use sys::ibv_qp_state as s;
        match v {
            s::IBV_QPS_RESET => Self::Reset,
            s::IBV_QPS_INIT => Self::Init,
            s::IBV_QPS_RTR => Self::ReadyToReceive,
            s::IBV_QPS_RTS => Self::ReadyToSend,
            s::IBV_QPS_SQD => Self::SendQueueDrained,
            s::IBV_QPS_SQE => Self::SendQueueError,
            s::IBV_QPS_ERR => Self::Error,
            other => Self::Other(other),
        }
    }
}

/// A connected RC queue pair. Owned by a [`Connection`](super::Connection), which
/// destroys it; the QP keeps its PD and CQs alive.
pub struct QueuePair {
    qp: NonNull<sys::ibv_qp>,
    qp_num: u32,
    max_inline: u32,
    pub(crate) send_cq: Arc<CompletionQueue>,
    pub(crate) recv_cq: Arc<CompletionQueue>,
    pub(crate) pd: Arc<ProtectionDomain>,
}

// SAFETY: posting to and querying a QP are thread-safe verbs calls (the providers lock
// the queues), and the Rust fields are immutable.
unsafe impl Send for QueuePair {}
// SAFETY: see Send.
unsafe impl Sync for QueuePair {}

impl QueuePair {
    /// Wraps a QP that rdma_cm created with `setup` (the caller destroys it).
    ///
    /// # Safety
    /// `qp` is a valid QP created with `setup`'s PD and CQs, alive until the wrapper is
    /// dropped.
    pub(crate) unsafe fn from_raw(
        qp: NonNull<sys::ibv_qp>,
        setup: &QpSetup,
        max_inline: u32,
    ) -> Self {
        Self {
            qp,
            // SAFETY: the caller guarantees qp is valid; qp_num never changes.
            qp_num: unsafe { (*qp.as_ptr()).qp_num },
            max_inline,
            send_cq: Arc::clone(&setup.send_cq),
            recv_cq: Arc::clone(&setup.recv_cq),
            pd: Arc::clone(&setup.pd),
        }
    }

    /// The raw QP, for verbs calls this module does not wrap.
    pub fn as_ptr(&self) -> *mut sys::ibv_qp {
        self.qp.as_ptr()
    }

    /// The QP number (also the `qp_num` of its work completions).
    pub fn qp_num(&self) -> u32 {
        self.qp_num
    }

    /// The largest inline send the provider granted.
    pub fn max_inline_data(&self) -> u32 {
        self.max_inline
    }

    /// The protection domain.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// The CQ that send completions go to.
    pub fn send_cq(&self) -> &Arc<CompletionQueue> {
        &self.send_cq
    }

    /// The CQ that receive completions go to.
    pub fn recv_cq(&self) -> &Arc<CompletionQueue> {
        &self.recv_cq
    }

    #[inline]
    fn check_inline(&self, sges: &[Sge<'_>], flags: SendFlags) -> Result<()> {
        if flags.contains(SendFlags::INLINE) {
            let total: u64 = sges.iter().map(|s| u64::from(s.len())).sum();
            if total > u64::from(self.max_inline) {
                return Err(VerbsError::invalid(
                    "posting an inline send",
                    "payload larger than the QP's max_inline_data",
                ));
            }
        }
        Ok(())
    }

    /// Posts one send of the bytes in `sges`.
    #[inline]
    pub fn post_send(&self, wr_id: u64, sges: &[Sge<'_>], flags: SendFlags) -> Result<()> {
        self.post_send_inner(wr_id, sges, flags, None)
    }

    /// Posts one send carrying 32 bits of immediate data as well.
    #[inline]
    pub fn post_send_with_imm(
        &self,
        wr_id: u64,
        sges: &[Sge<'_>],
        flags: SendFlags,
        imm: u32,
    ) -> Result<()> {
        self.post_send_inner(wr_id, sges, flags, Some(imm))
    }

    #[inline]
    fn post_send_inner(
        &self,
        wr_id: u64,
        sges: &[Sge<'_>],
        flags: SendFlags,
        imm: Option<u32>,
    ) -> Result<()> {
        self.check_inline(sges, flags)?;
        let mut wr = send_wr(wr_id, Sge::raw_ptr(sges), sges.len(), flags, imm)?;
        let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is alive; wr and its sg_list (borrowed from sges, whose regions
        // are borrowed too) are valid for the call. Non-inline payloads are checked by
        // the device against live registrations; inline ones are copied now.
        let rc = unsafe { sys::nicproxy_ibv_post_send(self.qp.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(VerbsError::errno("posting a send", rc));
        }
        Ok(())
    }

    /// Posts up to any number of single-SGE sends, chained 32 per doorbell. On error,
    /// the requests before the failed one were posted.
    pub fn post_send_batch(&self, reqs: &[SendRequest<'_>]) -> Result<()> {
        for chunk in reqs.chunks(BATCH) {
            let mut wrs: [MaybeUninit<sys::ibv_send_wr>; BATCH] =
                [const { MaybeUninit::uninit() }; BATCH];
            for (i, r) in chunk.iter().enumerate() {
                self.check_inline(std::slice::from_ref(&r.sge), r.flags)?;
                let sg = Sge::raw_ptr(std::slice::from_ref(&r.sge));
                let mut wr = send_wr(r.wr_id, sg, 1, r.flags, r.imm)?;
                if i + 1 < chunk.len() {
                    // The next element's final address: the array does not move.
                    wr.next = wrs[i + 1].as_mut_ptr();
                }
                wrs[i].write(wr);
            }
            let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
            // SAFETY: wrs[..chunk.len()] are initialised and chained in order, the last
            // with next = NULL; the SGEs live in `reqs`, borrowed for the call.
            let rc = unsafe {
                sys::nicproxy_ibv_post_send(self.qp.as_ptr(), wrs[0].as_mut_ptr(), &mut bad)
            };
            if rc != 0 {
                return Err(VerbsError::errno("posting a batch of sends", rc));
            }
        }
        Ok(())
    }

    /// Posts one receive buffer (scattered over `sges`).
    #[inline]
    pub fn post_recv(&self, wr_id: u64, sges: &[Sge<'_>]) -> Result<()> {
        let num_sge = i32::try_from(sges.len())
            .map_err(|_| VerbsError::invalid("posting a receive", "too many SGEs"))?;
        let mut wr = sys::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: Sge::raw_ptr(sges),
            num_sge,
        };
        let mut bad: *mut sys::ibv_recv_wr = ptr::null_mut();
        // SAFETY: the QP is alive and wr is valid for the call; the device checks the
        // buffer against live registrations before writing into it.
        let rc = unsafe { sys::nicproxy_ibv_post_recv(self.qp.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(VerbsError::errno("posting a receive", rc));
        }
        Ok(())
    }

    /// Posts any number of single-SGE receives, chained 32 per doorbell.
    pub fn post_recv_batch(&self, reqs: &[RecvRequest<'_>]) -> Result<()> {
        for chunk in reqs.chunks(BATCH) {
            let mut wrs: [MaybeUninit<sys::ibv_recv_wr>; BATCH] =
                [const { MaybeUninit::uninit() }; BATCH];
            for (i, r) in chunk.iter().enumerate() {
                let next = if i + 1 < chunk.len() {
                    wrs[i + 1].as_mut_ptr()
                } else {
                    ptr::null_mut()
                };
                wrs[i].write(sys::ibv_recv_wr {
                    wr_id: r.wr_id,
                    next,
                    sg_list: Sge::raw_ptr(std::slice::from_ref(&r.sge)),
                    num_sge: 1,
                });
            }
            let mut bad: *mut sys::ibv_recv_wr = ptr::null_mut();
            // SAFETY: wrs[..chunk.len()] are initialised and chained, the last with
            // next = NULL; the SGEs live in `reqs`, borrowed for the call.
            let rc = unsafe {
                sys::nicproxy_ibv_post_recv(self.qp.as_ptr(), wrs[0].as_mut_ptr(), &mut bad)
            };
            if rc != 0 {
                return Err(VerbsError::errno("posting a batch of receives", rc));
            }
        }
        Ok(())
    }

    /// Sets the RNR NAK timer of an established (RTS) QP.
    pub(crate) fn set_min_rnr_timer(&self, code: u8) -> Result<()> {
        let mut attr = sys::ibv_qp_attr {
            min_rnr_timer: code,
            ..Default::default()
        };
        // SAFETY: the QP is alive; attr is valid and only min_rnr_timer is selected, an
        // attribute that the RTS->RTS transition accepts.
        let rc = unsafe {
            sys::ibv_modify_qp(
                self.qp.as_ptr(),
                &mut attr,
                sys::ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER.0 as i32,
            )
        };
        if rc != 0 {
            return Err(VerbsError::errno("setting a queue pair's RNR timer", rc));
        }
        Ok(())
    }

    /// The QP's current state (a syscall: for the control plane, not per packet).
    pub fn state(&self) -> Result<QpState> {
        let mut attr = sys::ibv_qp_attr::default();
        let mut init = sys::ibv_qp_init_attr::default();
        // SAFETY: the QP is alive; attr and init are valid, writable structs.
        let rc = unsafe {
            sys::ibv_query_qp(
                self.qp.as_ptr(),
                &mut attr,
                sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                &mut init,
            )
        };
        if rc != 0 {
            return Err(VerbsError::errno("querying a queue pair's state", rc));
        }
        Ok(QpState::from_raw(attr.qp_state))
    }
}

fn send_wr(
    wr_id: u64,
    sg_list: *mut sys::ibv_sge,
    num_sge: usize,
    flags: SendFlags,
    imm: Option<u32>,
) -> Result<sys::ibv_send_wr> {
    let num_sge = i32::try_from(num_sge)
        .map_err(|_| VerbsError::invalid("posting a send", "too many SGEs"))?;
    let mut wr = sys::ibv_send_wr {
        wr_id,
        next: ptr::null_mut(),
        sg_list,
        num_sge,
        opcode: sys::ibv_wr_opcode::IBV_WR_SEND,
        send_flags: flags.0,
        ..Default::default()
    };
    if let Some(imm) = imm {
        wr.opcode = sys::ibv_wr_opcode::IBV_WR_SEND_WITH_IMM;
        wr.__bindgen_anon_1.imm_data = imm.to_be();
    }
    Ok(wr)
}

impl fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePair")
            .field("qp_num", &self.qp_num)
            .field("device", &self.pd.context().name())
            .field("max_inline", &self.max_inline)
            .finish()
    }
}
