//! Packet-buffer pools (`rte_pktmbuf_pool_create`).
#![allow(unsafe_code)]

use std::ffi::{c_uint, c_void, CString};
use std::ptr::NonNull;
use std::sync::Arc;

use dpdk_sys as ffi;

use super::eal::Eal;
use super::error::{log_tap, DpdkError};

/// `SOCKET_ID_ANY`: let DPDK pick the NUMA node.
const SOCKET_ID_ANY: i32 = -1;

/// Headroom DPDK reserves in front of each packet (`RTE_PKTMBUF_HEADROOM` of this build).
pub const PKTMBUF_HEADROOM: u16 = 128;

/// A pool of packet mbufs. Cheap to clone (shared handle); ports keep a clone for their rx
/// queues.
///
/// The pool is freed when the last handle goes, but only if no mbuf is out of it at that
/// moment. If some are (an `Mbuf` kept past its pool, or a port that could not be closed),
/// the pool and the EAL are deliberately leaked, so those mbufs never point into freed memory;
/// a warning is logged.
#[derive(Clone, Debug)]
pub struct Mempool {
    inner: Arc<MempoolInner>,
}

#[derive(Debug)]
struct MempoolInner {
    ptr: NonNull<ffi::rte_mempool>,
    name: String,
    data_room: u16,
    eal: Option<Eal>,
}

// SAFETY: rte_mempool's default (ring mp/mc) ops are safe to use from any thread, and the
// wrapper only calls thread-safe functions through a shared reference.
unsafe impl Send for MempoolInner {}
// SAFETY: as above; no method mutates the pool through &self except via DPDK's MT-safe ops.
unsafe impl Sync for MempoolInner {}

impl Mempool {
    /// Creates a pool of `n` mbufs with `cache` per-lcore cached mbufs and `data_room` bytes of
    /// buffer each, headroom included (2048 + [`PKTMBUF_HEADROOM`] holds a 1518-byte frame).
    /// DPDK recommends `n` = 2^q - 1 and `cache` dividing `n`, at most 512.
    ///
    /// # Errors
    /// [`DpdkError::InvalidArgument`] for an empty name or one with a NUL byte, or a
    /// `data_room` smaller than the headroom; [`DpdkError::Call`] when DPDK refuses (name taken:
    /// EEXIST, name too long, out of memory: ENOMEM, cache too large: EINVAL).
    pub fn new(
        eal: &Eal,
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
    ) -> Result<Mempool, DpdkError> {
        let action =
            || format!("creating mbuf pool '{name}' (n={n}, cache={cache}, data_room={data_room})");
        if name.is_empty() {
            return Err(DpdkError::invalid(action(), "the name is empty"));
        }
        let c_name = CString::new(name)
            .map_err(|_| DpdkError::invalid(action(), "the name contains a NUL byte"))?;
        if data_room <= PKTMBUF_HEADROOM {
            return Err(DpdkError::invalid(
                action(),
                format!("data_room must exceed the {PKTMBUF_HEADROOM}-byte headroom"),
            ));
        }
        log_tap::clear();
        // SAFETY: EAL is initialised (eal exists); c_name is NUL-terminated and copied by DPDK.
        let ptr = unsafe {
            ffi::rte_pktmbuf_pool_create(
                c_name.as_ptr(),
                n as c_uint,
                cache as c_uint,
                0,
                data_room,
                SOCKET_ID_ANY,
            )
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| DpdkError::from_rte_errno(action()))?;
        Ok(Mempool {
            inner: Arc::new(MempoolInner {
                ptr,
                name: name.to_owned(),
                data_room,
                eal: Some(eal.clone()),
            }),
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Buffer bytes per mbuf, headroom included.
    pub fn data_room(&self) -> u16 {
        self.inner.data_room
    }

    /// Total number of mbufs in the pool.
    pub fn capacity(&self) -> u32 {
        // SAFETY: the pool is alive while self is; `size` is set at creation and never changes.
        unsafe { self.inner.ptr.as_ref().size }
    }

    /// Mbufs that can be allocated now (in the pool's ring or in lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is alive; the count is read with DPDK's own MT-safe accessor.
        unsafe { ffi::rte_mempool_avail_count(self.inner.ptr.as_ptr()) }
    }

    /// Mbufs currently allocated (held by the application, a port's rings, or in flight).
    pub fn in_use(&self) -> u32 {
        // SAFETY: as in `available`.
        unsafe { ffi::rte_mempool_in_use_count(self.inner.ptr.as_ptr()) }
    }

    /// The raw pool, for DPDK calls this wrapper does not cover. The pointer is valid while
    /// any handle to this pool lives; do not free it.
    pub fn as_ptr(&self) -> *mut ffi::rte_mempool {
        self.inner.ptr.as_ptr()
    }

    /// Calls `f(addr, len)` for each virtually contiguous memory chunk that backs the pool's
    /// mbufs (e.g. to register the pool with a verbs protection domain). Returns the number
    /// of chunks.
    pub fn for_each_mem_chunk<F: FnMut(*mut u8, usize)>(&self, mut f: F) -> u32 {
        unsafe extern "C" fn trampoline<F: FnMut(*mut u8, usize)>(
            _mp: *mut ffi::rte_mempool,
            opaque: *mut c_void,
            memhdr: *mut ffi::rte_mempool_memhdr,
            _idx: c_uint,
        ) {
            // SAFETY: opaque is the &mut F passed below, alive for the whole mem_iter call, and
            // DPDK calls back synchronously on this thread; memhdr points at a live chunk header.
            let (f, hdr) = unsafe { (&mut *opaque.cast::<F>(), &*memhdr) };
            f(hdr.addr.cast(), hdr.len);
        }
        // SAFETY: the pool is alive; the callback matches rte_mempool_mem_cb_t and `f` outlives
        // the call. DPDK does not unwind; a panic in `f` aborts at the extern "C" boundary.
        unsafe {
            ffi::rte_mempool_mem_iter(
                self.inner.ptr.as_ptr(),
                Some(trampoline::<F>),
                std::ptr::from_mut(&mut f).cast(),
            )
        }
    }
}

impl Drop for MempoolInner {
    fn drop(&mut self) {
        // SAFETY: the pool is alive until freed below.
        let in_use = unsafe { ffi::rte_mempool_in_use_count(self.ptr.as_ptr()) };
        if in_use != 0 {
            tracing::warn!(
                pool = %self.name,
                in_use,
                "mbuf pool dropped with mbufs still out; leaking it and the EAL so they stay valid"
            );
            std::mem::forget(self.eal.take());
            return;
        }
        // SAFETY: no mbuf is out and no handle is left (this is the last one), so nothing points
        // into the pool any more; it is freed exactly once.
        unsafe { ffi::rte_mempool_free(self.ptr.as_ptr()) };
    }
}
