//! Protection domains: the scope that ties memory registrations to queue pairs.
#![allow(unsafe_code)]

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_core_sys as sys;

use super::device::Context;
use super::error::{Result, VerbsError};

/// A protection domain of one device. Memory regions and queue pairs hold an `Arc` to it,
/// so it is deallocated only after all of them are gone.
pub struct ProtectionDomain {
    pd: NonNull<sys::ibv_pd>,
    ctx: Context,
}

// SAFETY: a PD is only used through thread-safe verbs calls; libibverbs allows using it
// from any thread.
unsafe impl Send for ProtectionDomain {}
// SAFETY: see Send; no method mutates Rust-visible state.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    /// Allocates a protection domain on `ctx`.
    pub fn new(ctx: &Context) -> Result<Arc<Self>> {
        // SAFETY: the context is open while `ctx` lives, and the PD keeps a clone of it.
        let pd = unsafe { sys::ibv_alloc_pd(ctx.as_ptr()) };
        let Some(pd) = NonNull::new(pd) else {
            return Err(VerbsError::last_os(format!(
                "allocating a protection domain on {}",
                ctx.name()
            )));
        };
        Ok(Arc::new(Self {
            pd,
            ctx: ctx.clone(),
        }))
    }

    /// The device this PD belongs to.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The raw PD, for verbs calls this module does not wrap.
    pub fn as_ptr(&self) -> *mut sys::ibv_pd {
        self.pd.as_ptr()
    }
}

impl fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectionDomain")
            .field("device", &self.ctx.name())
            .finish()
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: every MR and QP of this PD holds an Arc to it, so none is left; the
        // context is still open (self.ctx is dropped after this).
        let rc = unsafe { sys::ibv_dealloc_pd(self.pd.as_ptr()) };
        if rc != 0 {
            tracing::warn!(
                device = self.ctx.name(),
                error = %std::io::Error::from_raw_os_error(rc),
                "deallocating a protection domain failed"
            );
        }
    }
}
