//! The one error type of the DPDK wrappers: what was being attempted, DPDK's errno text and,
//! when DPDK only explained itself in its log, the lines it logged.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fmt;

use dpdk_sys as ffi;

/// Why a DPDK operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    /// A DPDK call failed. `errno` is the positive errno (from `rte_errno` or the negative
    /// return value); `text` is `rte_strerror(errno)`; `log` holds what DPDK logged during the
    /// call, which usually names the real cause (e.g. missing hugepages).
    #[error("{action}: {text} (errno {errno}){}", LogSuffix(log))]
    Call {
        /// What was being attempted, with its arguments.
        action: String,
        /// Positive errno value.
        errno: i32,
        /// `rte_strerror(errno)`.
        text: String,
        /// DPDK log lines emitted during the call (may be empty).
        log: String,
    },
    /// An argument was rejected before DPDK was called.
    #[error("{action}: {reason}")]
    InvalidArgument {
        /// What was being attempted, with its arguments.
        action: String,
        /// What is wrong with the argument.
        reason: String,
    },
    /// `Eal::init` was called a second time in this process. DPDK supports one
    /// `rte_eal_init` per process, even after `rte_eal_cleanup`.
    #[error("initialising the DPDK EAL: it was already initialised in this process (DPDK allows one rte_eal_init per process, even after cleanup)")]
    EalAlreadyInitialized,
    /// The operation needs resources that are still in use (e.g. stopping a port whose queues
    /// are held by workers).
    #[error("{action}: {reason}")]
    Busy {
        /// What was being attempted.
        action: String,
        /// What still holds the resource.
        reason: String,
    },
}

impl DpdkError {
    /// A failed call whose errno DPDK left in `rte_errno`.
    pub(crate) fn from_rte_errno(action: impl Into<String>) -> Self {
        Self::from_errno(action, read_rte_errno())
    }

    /// A failed call that returned `-errno` (or `errno`; the sign is ignored).
    pub(crate) fn from_errno(action: impl Into<String>, errno: i32) -> Self {
        let errno = errno.checked_abs().unwrap_or(i32::MAX);
        Self::Call {
            action: action.into(),
            errno,
            text: strerror(errno),
            log: log_tap::take(),
        }
    }

    pub(crate) fn invalid(action: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            action: action.into(),
            reason: reason.into(),
        }
    }

    /// The positive errno of a failed DPDK call, if this error came from one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Call { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Renders the captured log after the message, only when there is one.
struct LogSuffix<'a>(&'a str);

impl fmt::Display for LogSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = self.0.trim();
        if log.is_empty() {
            return Ok(());
        }
        write!(f, "; DPDK said: ")?;
        for (i, line) in log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            if i > 0 {
                write!(f, " | ")?;
            }
            write!(f, "{line}")?;
        }
        Ok(())
    }
}

/// The calling thread's `rte_errno`.
pub(crate) fn read_rte_errno() -> i32 {
    // SAFETY: reads a thread-local int through the shim; no preconditions.
    unsafe { ffi::nicproxy_rte_errno() }
}

/// `rte_strerror`, which also knows DPDK's own errno values above `__ELASTERROR`.
pub(crate) fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror accepts any int and returns a pointer to a static or thread-local
    // NUL-terminated string, which is copied before any other DPDK call can overwrite it.
    let text = unsafe { ffi::rte_strerror(errno) };
    if text.is_null() {
        return format!("errno {errno}");
    }
    // SAFETY: non-null and NUL-terminated (see above); only read here.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// Access to the shim's log tap (see `shim.h`): DPDK's log kept in memory so errors can quote it.
pub(crate) mod log_tap {
    use super::ffi;

    /// Makes the tap DPDK's log stream; DPDK's output still reaches stderr when `echo`.
    pub(crate) fn install(echo: bool) -> bool {
        // SAFETY: called once per process before rte_eal_init (Eal::init's once-guard); the
        // stream the shim creates lives for the rest of the process.
        unsafe { ffi::nicproxy_log_tap_install(i32::from(echo)) == 0 }
    }

    /// Forgets the log so far, so that the next `take` holds only what a call logged.
    pub(crate) fn clear() {
        // SAFETY: locks the shim's mutex and resets a length; no preconditions.
        unsafe { ffi::nicproxy_log_tap_clear() }
    }

    /// What DPDK logged since the last `clear` (its newest 4 KiB), and clears it.
    pub(crate) fn take() -> String {
        let mut buf = [0u8; 4096];
        // SAFETY: the shim writes at most buf.len() bytes (including the NUL) into buf.
        let n = unsafe { ffi::nicproxy_log_tap_read(buf.as_mut_ptr().cast(), buf.len()) };
        clear();
        String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned()
    }
}
