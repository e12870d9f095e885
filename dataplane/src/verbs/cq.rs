//! Completion queues, completion channels (for sleeping until completions arrive) and the
//! work completions polled from them.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::os::raw::{c_int, c_void};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_core_sys as sys;

use super::cm::set_nonblocking;
use super::device::Context;
use super::error::{Result, VerbsError};

/// A completion channel: a file descriptor that becomes readable when a CQ armed with
/// [`CompletionQueue::req_notify`] gets a completion. Lets a worker sleep when idle.
pub struct CompletionChannel {
    ch: NonNull<sys::ibv_comp_channel>,
    ctx: Context,
}

// SAFETY: the channel is a file descriptor plus a context pointer; the verbs calls on it
// are thread safe.
unsafe impl Send for CompletionChannel {}
// SAFETY: see Send.
unsafe impl Sync for CompletionChannel {}

impl CompletionChannel {
    /// Creates a completion channel on `ctx`; its fd is non-blocking.
    pub fn new(ctx: &Context) -> Result<Arc<Self>> {
        // SAFETY: the context is open while ctx lives; the channel keeps a clone.
        let ch = unsafe { sys::ibv_create_comp_channel(ctx.as_ptr()) };
        let Some(ch) = NonNull::new(ch) else {
            return Err(VerbsError::last_os(format!(
                "creating a completion channel on {}",
                ctx.name()
            )));
        };
        let me = Arc::new(Self {
            ch,
            ctx: ctx.clone(),
        });
        set_nonblocking(me.fd(), "making a completion channel non-blocking")?;
        Ok(me)
    }

    /// The file descriptor, for epoll.
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is valid while self lives; fd is a plain field.
        unsafe { (*self.ch.as_ptr()).fd }
    }

    /// Waits up to `timeout` (forever with `None`) for a completion event. Returns the
    /// token of the CQ that fired (given to [`CompletionQueue::new`]), already
    /// acknowledged, or `None` on timeout. After a wake-up, re-arm the CQ with
    /// `req_notify` and then poll it until a poll returns nothing: an event is raised only
    /// by a completion that arrives while the CQ is armed, so completions left in the CQ
    /// (more than one poll's array took, or ones that arrived before the re-arm) never
    /// raise one, and a wait for them times out.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<usize>> {
        const OP: &str = "waiting on a completion channel";
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut cq: *mut sys::ibv_cq = ptr::null_mut();
        let mut token: *mut c_void = ptr::null_mut();
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !super::cm::wait_readable(self.fd(), left, OP)? {
                return Ok(None);
            }
            // SAFETY: the channel is valid; the out pointers are valid locals. The fd is
            // non-blocking, so this cannot hang.
            let rc = unsafe { sys::ibv_get_cq_event(self.ch.as_ptr(), &mut cq, &mut token) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            // A readiness that did not hold is not a timeout: wait out the rest.
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(VerbsError::Os {
                    op: OP.into(),
                    source: err,
                });
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
        // SAFETY: cq is the CQ the event was reported for; it is alive (it holds an Arc to
        // this channel and cannot be destroyed with unacknowledged events, which this
        // ack settles at once).
        unsafe { sys::ibv_ack_cq_events(cq, 1) };
        Ok(Some(token as usize))
    }
}

impl fmt::Debug for CompletionChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionChannel")
            .field("device", &self.ctx.name())
            .field("fd", &self.fd())
            .finish()
    }
}

impl Drop for CompletionChannel {
    fn drop(&mut self) {
        // SAFETY: every CQ using the channel holds an Arc to it, so none is left.
        let rc = unsafe { sys::ibv_destroy_comp_channel(self.ch.as_ptr()) };
        if rc != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "destroying a completion channel failed");
        }
    }
}

/// A completion queue.
pub struct CompletionQueue {
    cq: NonNull<sys::ibv_cq>,
    capacity: u32,
    ctx: Context,
    channel: Option<Arc<CompletionChannel>>,
}

// SAFETY: polling, arming and destroying a CQ are thread-safe verbs calls (the providers
// lock the CQ), and the Rust fields are immutable.
unsafe impl Send for CompletionQueue {}
// SAFETY: see Send.
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// Creates a CQ of at least `min_entries` entries on `ctx`, optionally reporting to
    /// `channel`; `token` identifies it in [`CompletionChannel::wait`].
    pub fn new(
        ctx: &Context,
        min_entries: u32,
        channel: Option<&Arc<CompletionChannel>>,
        token: usize,
    ) -> Result<Arc<Self>> {
        let op = || {
            format!(
                "creating a completion queue of {min_entries} entries on {}",
                ctx.name()
            )
        };
        let cqe = c_int::try_from(min_entries)
            .map_err(|_| VerbsError::invalid(op(), "too many entries"))?;
        if let Some(ch) = channel {
            if ch.ctx != *ctx {
                return Err(VerbsError::invalid(
                    op(),
                    format!("the completion channel belongs to {}", ch.ctx.name()),
                ));
            }
        }
        let ch_ptr = channel.map_or(ptr::null_mut(), |c| c.ch.as_ptr());
        // SAFETY: the context and channel are alive and kept alive by the CQ; the token is
        // only handed back, never dereferenced.
        let cq = unsafe { sys::ibv_create_cq(ctx.as_ptr(), cqe, token as *mut c_void, ch_ptr, 0) };
        let Some(cq) = NonNull::new(cq) else {
            return Err(VerbsError::last_os(op()));
        };
        // SAFETY: a freshly created CQ; cqe is the real size the provider chose.
        let real = unsafe { (*cq.as_ptr()).cqe };
        Ok(Arc::new(Self {
            cq,
            capacity: u32::try_from(real).unwrap_or(min_entries),
            ctx: ctx.clone(),
            channel: channel.cloned(),
        }))
    }

    /// The number of entries the provider actually allocated (at least the requested).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The device.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The raw CQ, for verbs calls this module does not wrap.
    pub fn as_ptr(&self) -> *mut sys::ibv_cq {
        self.cq.as_ptr()
    }

    /// Polls up to `wcs.len()` completions into the caller's array and returns the filled
    /// part. No allocation, no syscall.
    #[inline]
    pub fn poll<'w>(&self, wcs: &'w mut [WorkCompletion]) -> Result<&'w [WorkCompletion]> {
        let n = c_int::try_from(wcs.len()).unwrap_or(c_int::MAX);
        // SAFETY: the CQ is alive; WorkCompletion is repr(transparent) over ibv_wc and the
        // array has room for n entries.
        let got = unsafe {
            sys::nicproxy_ibv_poll_cq(self.cq.as_ptr(), n, wcs.as_mut_ptr().cast::<sys::ibv_wc>())
        };
        match usize::try_from(got) {
            Ok(got) => Ok(&wcs[..got.min(wcs.len())]),
            Err(_) => Err(VerbsError::errno("polling a completion queue", -got)),
        }
    }

    /// Arms the CQ: the next completion (only solicited ones if `solicited_only`) wakes
    /// the completion channel once.
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        if self.channel.is_none() {
            return Err(VerbsError::invalid(
                "arming a completion queue",
                "the queue was created without a completion channel",
            ));
        }
        // SAFETY: the CQ is alive.
        let rc = unsafe {
            sys::nicproxy_ibv_req_notify_cq(self.cq.as_ptr(), c_int::from(solicited_only))
        };
        if rc != 0 {
            return Err(VerbsError::errno("arming a completion queue", rc));
        }
        Ok(())
    }
}

impl fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("device", &self.ctx.name())
            .field("capacity", &self.capacity)
            .field("channel", &self.channel.is_some())
            .finish()
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: every QP using this CQ holds an Arc to it, so none is left; channel
        // events were acknowledged as they were read.
        let rc = unsafe { sys::ibv_destroy_cq(self.cq.as_ptr()) };
        if rc != 0 {
            tracing::warn!(error = %io::Error::from_raw_os_error(rc), "destroying a completion queue failed");
        }
    }
}

/// One work completion, as the device wrote it.
#[repr(transparent)]
#[derive(Clone, Copy, Default)]
pub struct WorkCompletion(sys::ibv_wc);

impl WorkCompletion {
    /// The caller's id of the work request.
    #[inline]
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    /// Success, or why the request failed.
    #[inline]
    pub fn status(&self) -> WcStatus {
        WcStatus::from_raw(self.0.status)
    }

    /// True if the request succeeded.
    #[inline]
    pub fn is_ok(&self) -> bool {
        self.0.status == sys::ibv_wc_status::IBV_WC_SUCCESS
    }

    /// What kind of request completed (only meaningful on success).
    #[inline]
    pub fn opcode(&self) -> WcOpcode {
        WcOpcode::from_raw(self.0.opcode)
    }

    /// Bytes received (receive completions).
    #[inline]
    pub fn byte_len(&self) -> u32 {
        self.0.byte_len
    }

    /// The immediate data sent with the message, if any (host byte order).
    #[inline]
    pub fn imm_data(&self) -> Option<u32> {
        if self.0.wc_flags & sys::ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0 {
            // SAFETY: the flag says the imm_data member of the union is the valid one; it
            // is a plain integer either way.
            Some(u32::from_be(unsafe { self.0.__bindgen_anon_1.imm_data }))
        } else {
            None
        }
    }

    /// The local QP number the completion belongs to.
    #[inline]
    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }

    /// This completion as a `Result`, the error naming the request and the status.
    #[inline]
    pub fn ok(&self) -> Result<()> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(VerbsError::WorkCompletion {
                wr_id: self.wr_id(),
                status: self.status(),
            })
        }
    }
}

impl fmt::Debug for WorkCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkCompletion")
            .field("wr_id", &self.wr_id())
            .field("status", &self.status())
            .field("opcode", &self.opcode())
            .field("byte_len", &self.byte_len())
            .finish()
    }
}

/// Status of a work completion (`enum ibv_wc_status`). `Display` gives libibverbs'
/// `ibv_wc_status_str` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcStatus {
    /// Success.
    Success,
    /// Local length error (message larger than the receive buffer).
    LocalLength,
    /// Local QP operation error.
    LocalQpOperation,
    /// Local protection error (bad lkey or address).
    LocalProtection,
    /// Flushed because the QP went to the error state.
    WrFlush,
    /// Bad response from the peer.
    BadResponse,
    /// Local access error.
    LocalAccess,
    /// The peer found the request invalid.
    RemoteInvalidRequest,
    /// The peer denied access.
    RemoteAccess,
    /// The peer failed the operation.
    RemoteOperation,
    /// Transport retries exhausted: the peer is unreachable or dead.
    RetryExceeded,
    /// Receiver-not-ready retries exhausted: the peer posted no receive in time.
    RnrRetryExceeded,
    /// The peer aborted.
    RemoteAbort,
    /// Fatal device error.
    Fatal,
    /// Response timeout.
    ResponseTimeout,
    /// General error.
    General,
    /// Any other status value.
    Other(u32),
}

impl WcStatus {
    fn from_raw(v: sys::ibv_wc_status::Type) -> Self {
        use sys::ibv_wc_status as s;
        match v {
            s::IBV_WC_SUCCESS => Self::Success,
            s::IBV_WC_LOC_LEN_ERR => Self::LocalLength,
            s::IBV_WC_LOC_QP_OP_ERR => Self::LocalQpOperation,
            s::IBV_WC_LOC_PROT_ERR => Self::LocalProtection,
            s::IBV_WC_WR_FLUSH_ERR => Self::WrFlush,
            s::IBV_WC_BAD_RESP_ERR => Self::BadResponse,
            s::IBV_WC_LOC_ACCESS_ERR => Self::LocalAccess,
            s::IBV_WC_REM_INV_REQ_ERR => Self::RemoteInvalidRequest,
            s::IBV_WC_REM_ACCESS_ERR => Self::RemoteAccess,
            s::IBV_WC_REM_OP_ERR => Self::RemoteOperation,
            s::IBV_WC_RETRY_EXC_ERR => Self::RetryExceeded,
            s::IBV_WC_RNR_RETRY_EXC_ERR => Self::RnrRetryExceeded,
            s::IBV_WC_REM_ABORT_ERR => Self::RemoteAbort,
            s::IBV_WC_FATAL_ERR => Self::Fatal,
            s::IBV_WC_RESP_TIMEOUT_ERR => Self::ResponseTimeout,
            s::IBV_WC_GENERAL_ERR => Self::General,
            other => Self::Other(other),
        }
    }

    fn to_raw(self) -> sys::ibv_wc_status::Type {
        use sys::ibv_wc_status as s;
        match self {
            Self::Success => s::IBV_WC_SUCCESS,
            Self::LocalLength => s::IBV_WC_LOC_LEN_ERR,
            Self::LocalQpOperation => s::IBV_WC_LOC_QP_OP_ERR,
            Self::LocalProtection => s::IBV_WC_LOC_PROT_ERR,
            Self::WrFlush => s::IBV_WC_WR_FLUSH_ERR,
            Self::BadResponse => s::IBV_WC_BAD_RESP_ERR,
            Self::LocalAccess => s::IBV_WC_LOC_ACCESS_ERR,
            Self::RemoteInvalidRequest => s::IBV_WC_REM_INV_REQ_ERR,
            Self::RemoteAccess => s::IBV_WC_REM_ACCESS_ERR,
            Self::RemoteOperation => s::IBV_WC_REM_OP_ERR,
            Self::RetryExceeded => s::IBV_WC_RETRY_EXC_ERR,
            Self::RnrRetryExceeded => s::IBV_WC_RNR_RETRY_EXC_ERR,
            Self::RemoteAbort => s::IBV_WC_REM_ABORT_ERR,
            Self::Fatal => s::IBV_WC_FATAL_ERR,
            Self::ResponseTimeout => s::IBV_WC_RESP_TIMEOUT_ERR,
            Self::General => s::IBV_WC_GENERAL_ERR,
            Self::Other(v) => v,
        }
    }

    /// libibverbs' description of the status, e.g. "RNR retry counter exceeded".
    pub fn as_str(self) -> &'static str {
        // SAFETY: ibv_wc_status_str accepts any value and returns a pointer to a static,
        // NUL-terminated string ("unknown" for values it does not know).
        let s = unsafe { CStr::from_ptr(sys::ibv_wc_status_str(self.to_raw())) };
        s.to_str().unwrap_or("unknown")
    }

    /// True if a completion with this status means the connection is broken: on an RC
    /// QP every error status leaves the QP in the error state (later requests complete
    /// with `WrFlush`), so only `Success` keeps it usable.
    pub fn breaks_connection(self) -> bool {
        !matches!(self, Self::Success)
    }
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of request a completion is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    /// A send.
    Send,
    /// An RDMA write.
    RdmaWrite,
    /// An RDMA read.
    RdmaRead,
    /// A receive.
    Recv,
    /// A receive of an RDMA write with immediate data.
    RecvRdmaWithImm,
    /// Anything else (atomics, memory windows, TSO).
    Other(u32),
}

impl WcOpcode {
    fn from_raw(v: sys::ibv_wc_opcode::Type) -> Self {
        use sys::ibv_wc_opcode as o;
        match v {
            o::IBV_WC_SEND => Self::Send,
            o::IBV_WC_RDMA_WRITE => Self::RdmaWrite,
            o::IBV_WC_RDMA_READ => Self::RdmaRead,
            o::IBV_WC_RECV => Self::Recv,
            o::IBV_WC_RECV_RDMA_WITH_IMM => Self::RecvRdmaWithImm,
            other => Self::Other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wc_status_text_comes_from_libibverbs() {
        assert_eq!(
            WcStatus::RnrRetryExceeded.to_string(),
            "RNR retry counter exceeded"
        );
        assert_eq!(WcStatus::Success.as_str(), "success");
        for raw in 0..30 {
            assert_eq!(WcStatus::from_raw(raw).to_raw(), raw);
        }
        assert!(!WcStatus::Success.breaks_connection());
        assert!(WcStatus::WrFlush.breaks_connection());
    }

    #[test]
    fn a_zeroed_work_completion_reads_as_success_without_imm() {
        let wc = WorkCompletion::default();
        assert!(wc.is_ok() && wc.ok().is_ok());
        assert_eq!(wc.imm_data(), None);
        assert_eq!(wc.opcode(), WcOpcode::Send);
    }
}
