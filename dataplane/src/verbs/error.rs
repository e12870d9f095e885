//! The one error type of the verbs layer: every variant says what was being attempted and
//! carries the errno text, the rdma_cm event or the work-completion status behind it.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::cq::WcStatus;

/// What went wrong in the verbs layer, and while doing what.
#[derive(Debug, thiserror::Error)]
pub enum VerbsError {
    /// The kernel offers no RDMA device at all (no HCA driver, no rdma_rxe).
    #[error("{op}: no RDMA device found (is rdma_rxe / an HCA driver loaded?)")]
    NoDevice {
        /// What was attempted.
        op: Cow<'static, str>,
    },
    /// Devices exist, but none with the requested name.
    #[error("opening RDMA device {name:?}: no such device (present: {present})")]
    DeviceNotFound {
        /// The name asked for.
        name: String,
        /// The names that do exist, comma separated.
        present: String,
    },
    /// A libibverbs / librdmacm / libc call failed with an errno.
    #[error("{op}: {source}")]
    Os {
        /// What was attempted.
        op: Cow<'static, str>,
        /// The errno, as text through `Display`.
        #[source]
        source: io::Error,
    },
    /// Nothing happened within the allowed time.
    #[error("{op}: timed out after {timeout:?}")]
    Timeout {
        /// What was attempted.
        op: Cow<'static, str>,
        /// The time that was allowed.
        timeout: Duration,
    },
    /// The peer's connection manager refused the connection.
    #[error("connecting to {peer}: rejected by the peer ({reason})")]
    Rejected {
        /// Whom we connected to.
        peer: SocketAddr,
        /// Why, decoded from the CM reject reason.
        reason: Cow<'static, str>,
    },
    /// A connection request was turned away with `rdma_reject` because the listener's
    /// check refused it (an unknown peer); the peer sees a reject carrying `reason`.
    #[error("refused the rdma_cm connection request from {peer}: {reason}")]
    Refused {
        /// Who asked.
        peer: SocketAddr,
        /// Why it was refused (also sent to the peer as the reject's private data).
        reason: String,
    },
    /// rdma_cm reported an event other than the one the step waits for.
    #[error("{op}: rdma_cm reported {event} (status {status}: {status_text})")]
    CmEvent {
        /// What was attempted.
        op: Cow<'static, str>,
        /// The event's name, e.g. `RDMA_CM_EVENT_UNREACHABLE`.
        event: &'static str,
        /// The event's raw status.
        status: i32,
        /// The status as text (negative statuses are errnos).
        status_text: String,
    },
    /// The arguments or the objects passed do not fit together.
    #[error("{op}: {reason}")]
    Invalid {
        /// What was attempted.
        op: Cow<'static, str>,
        /// What does not fit.
        reason: Cow<'static, str>,
    },
    /// A work request completed with an error status.
    #[error("work request {wr_id:#x} completed with {status}")]
    WorkCompletion {
        /// The caller's id of the failed work request.
        wr_id: u64,
        /// Its status; `Display` gives the ibv_wc_status_str text.
        status: WcStatus,
    },
}

/// Result of the verbs layer.
pub type Result<T> = std::result::Result<T, VerbsError>;

impl VerbsError {
    /// An error from the current `errno` (for calls that return -1 or NULL).
    pub(crate) fn last_os(op: impl Into<Cow<'static, str>>) -> Self {
        Self::Os {
            op: op.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// An error from an errno value returned directly (ibv_post_*, ibv_modify_qp style).
    pub(crate) fn errno(op: impl Into<Cow<'static, str>>, errno: i32) -> Self {
        Self::Os {
            op: op.into(),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    pub(crate) fn invalid(
        op: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::Invalid {
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// The OS error number behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the failure means "no RDMA here at all", so callers can fall back to
    /// another fabric instead of retrying.
    pub fn is_no_device(&self) -> bool {
        matches!(self, Self::NoDevice { .. })
    }
}
