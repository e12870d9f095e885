//! Memory regions and the scatter/gather entries that point into them.
//!
//! Safety model: the device only touches memory through an (address, length, lkey) triple
//! that it checks against a live registration, so a work request can never make it reach
//! memory outside a registered region. What Rust must guarantee is that a region's memory
//! stays valid for as long as it is registered ([`MemoryRegion`] owns it, or the caller of
//! [`MemoryRegion::register`] promises it), and that inline sends, which the CPU copies at
//! post time without any key check, read valid memory: an [`Sge`] borrows its region for
//! that. Region contents are read and written by copying ([`MemoryRegion::read`],
//! [`MemoryRegion::write`]), never through references, because the device may write into
//! the memory at any time while receives are posted.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::fmt;
use std::marker::PhantomData;
use std::ops::BitOr;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_core_sys as sys;

use super::error::{Result, VerbsError};
use super::pd::ProtectionDomain;

/// Access rights of a memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u32);

impl Access {
    /// Only local reads (sends from the region).
    pub const NONE: Self = Self(0);
    /// The device may write (needed for receives).
    pub const LOCAL_WRITE: Self = Self(sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    /// Peers may RDMA-write into the region.
    pub const REMOTE_WRITE: Self = Self(sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);
    /// Peers may RDMA-read the region.
    pub const REMOTE_READ: Self = Self(sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    /// Peers may run atomics on the region.
    pub const REMOTE_ATOMIC: Self = Self(sys::ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0);

    /// The raw `ibv_access_flags` bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl BitOr for Access {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Memory registered with a protection domain.
pub struct MemoryRegion {
    mr: NonNull<sys::ibv_mr>,
    addr: NonNull<u8>,
    len: usize,
    lkey: u32,
    rkey: u32,
    /// Set when this region allocated its memory (freed after deregistration).
    owned: Option<Layout>,
    pd: Arc<ProtectionDomain>,
}

// SAFETY: the region's memory is only accessed through raw copies or by the device, the
// ibv_mr is only passed to thread-safe verbs calls, and the fields are immutable.
unsafe impl Send for MemoryRegion {}
// SAFETY: shared methods only read immutable fields or copy out of the memory; writing
// needs `&mut self`.
unsafe impl Sync for MemoryRegion {}

const PAGE: usize = 4096;

impl MemoryRegion {
    /// Allocates `len` zeroed, page-aligned bytes and registers them with `pd`.
    pub fn alloc(pd: &Arc<ProtectionDomain>, len: usize, access: Access) -> Result<Self> {
        let op = "allocating a memory region";
        let layout = Layout::from_size_align(len.max(1), PAGE)
            .map_err(|_| VerbsError::invalid(op, "length overflows a page-aligned layout"))?;
        if len == 0 {
            return Err(VerbsError::invalid(op, "length is 0"));
        }
        // SAFETY: the layout has a non-zero size.
        let mem = unsafe { alloc::alloc_zeroed(layout) };
        let Some(mem) = NonNull::new(mem) else {
            return Err(VerbsError::invalid(
                op,
                format!("out of memory for {len} bytes"),
            ));
        };
        // SAFETY: mem is a fresh allocation of len bytes, owned by the region from here on
        // and freed only after deregistration (in Drop, or just below on failure).
        match unsafe { Self::register_inner(pd, mem, len, access, Some(layout)) } {
            Ok(mr) => Ok(mr),
            Err(e) => {
                // SAFETY: registration failed, so nothing else refers to mem.
                unsafe { alloc::dealloc(mem.as_ptr(), layout) };
                Err(e)
            }
        }
    }

    /// Registers `len` bytes at `addr` that this region does not own (e.g. a DPDK
    /// mempool's memory).
    ///
    /// # Safety
    /// The memory must stay allocated and mapped, and must not be moved, for as long as
    /// the returned region (or anything derived from it) lives.
    pub unsafe fn register(
        pd: &Arc<ProtectionDomain>,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Self> {
        let op = "registering a memory region";
        let Some(addr) = NonNull::new(addr) else {
            return Err(VerbsError::invalid(op, "address is NULL"));
        };
        if len == 0 {
            return Err(VerbsError::invalid(op, "length is 0"));
        }
        // SAFETY: the caller keeps the memory valid for the region's life.
        unsafe { Self::register_inner(pd, addr, len, access, None) }
    }

    /// # Safety
    /// `addr..addr+len` stays valid while the region lives.
    unsafe fn register_inner(
        pd: &Arc<ProtectionDomain>,
        addr: NonNull<u8>,
        len: usize,
        access: Access,
        owned: Option<Layout>,
    ) -> Result<Self> {
        let Ok(flags) = i32::try_from(access.0) else {
            return Err(VerbsError::invalid(
                "registering a memory region",
                "access flags out of range",
            ));
        };
        // SAFETY: pd is alive (the region keeps an Arc), and the caller guarantees the
        // memory; ibv_reg_mr pins it.
        let mr = unsafe { sys::ibv_reg_mr(pd.as_ptr(), addr.as_ptr().cast(), len, flags) };
        let Some(mr) = NonNull::new(mr) else {
            return Err(VerbsError::last_os(format!(
                "registering {len} bytes of memory with {}",
                pd.context().name()
            )));
        };
        // SAFETY: ibv_reg_mr returned a valid ibv_mr; its keys never change.
        let (lkey, rkey) = unsafe { ((*mr.as_ptr()).lkey, (*mr.as_ptr()).rkey) };
        Ok(Self {
            mr,
            addr,
            len,
            lkey,
            rkey,
            owned,
            pd: Arc::clone(pd),
        })
    }

    /// The key that local work requests use.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    /// The key a peer uses for RDMA to this region.
    pub fn rkey(&self) -> u32 {
        self.rkey
    }

    /// Start of the region.
    pub fn addr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the region is empty (never: registration rejects 0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The protection domain it is registered with.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    fn check(&self, offset: usize, len: usize, op: &'static str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(VerbsError::invalid(op, "range outside the memory region")),
        }
    }

    /// A scatter/gather entry for `len` bytes at `offset` in this region.
    #[inline]
    pub fn sge(&self, offset: usize, len: u32) -> Result<Sge<'_>> {
        self.check(offset, len as usize, "building a scatter/gather entry")?;
        Ok(Sge {
            raw: sys::ibv_sge {
                addr: self.addr.as_ptr() as u64 + offset as u64,
                length: len,
                lkey: self.lkey,
            },
            _region: PhantomData,
        })
    }

    /// Copies `dst.len()` bytes at `offset` out of the region (e.g. a received message).
    #[inline]
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check(offset, dst.len(), "reading from a memory region")?;
        // SAFETY: the range is inside the live region (checked), dst is a distinct Rust
        // buffer, and no Rust reference into the region exists (copies only).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.addr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    /// Copies `src` into the region at `offset` (e.g. a message to send).
    #[inline]
    pub fn write(&mut self, offset: usize, src: &[u8]) -> Result<()> {
        self.check(offset, src.len(), "writing to a memory region")?;
        // SAFETY: the range is inside the live region (checked), `&mut self` excludes
        // other Rust access to it, and src is a distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.addr.as_ptr().add(offset), src.len())
        };
        Ok(())
    }
}

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &self.addr)
            .field("len", &self.len)
            .field("lkey", &self.lkey)
            .field("owned", &self.owned.is_some())
            .finish()
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: the ibv_mr is valid and deregistered once; after this the device
        // rejects the keys, so the memory may go.
        let rc = unsafe { sys::ibv_dereg_mr(self.mr.as_ptr()) };
        if rc != 0 {
            // Freeing memory the device may still reach would be worse than a leak.
            tracing::error!(
                error = %std::io::Error::from_raw_os_error(rc),
                "deregistering a memory region failed; leaking its memory"
            );
            return;
        }
        if let Some(layout) = self.owned {
            // SAFETY: the memory was allocated with this layout in `alloc` and is no longer
            // registered.
            unsafe { alloc::dealloc(self.addr.as_ptr(), layout) };
        }
    }
}

/// One scatter/gather entry: `length` bytes at `addr` under key `lkey`. It borrows the
/// region it came from, so the region outlives every post that uses it.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Sge<'a> {
    raw: sys::ibv_sge,
    _region: PhantomData<&'a MemoryRegion>,
}

impl Sge<'_> {
    /// An entry from raw parts, for memory registered elsewhere (e.g. an mbuf of a
    /// mempool whose memory was registered once).
    ///
    /// # Safety
    /// `addr..addr+length` must be readable memory for as long as the entry is used in an
    /// inline send, and lie inside a live registration with key `lkey` until the work
    /// requests that use it complete.
    pub unsafe fn from_raw(addr: u64, length: u32, lkey: u32) -> Sge<'static> {
        Sge {
            raw: sys::ibv_sge { addr, length, lkey },
            _region: PhantomData,
        }
    }

    /// The address.
    pub fn addr(&self) -> u64 {
        self.raw.addr
    }

    /// The length in bytes.
    pub fn len(&self) -> u32 {
        self.raw.length
    }

    /// True for a zero-length entry.
    pub fn is_empty(&self) -> bool {
        self.raw.length == 0
    }

    /// The local key.
    pub fn lkey(&self) -> u32 {
        self.raw.lkey
    }

    pub(crate) fn raw_ptr(sges: &[Sge<'_>]) -> *mut sys::ibv_sge {
        // repr(transparent) over ibv_sge; verbs never writes through sg_list.
        sges.as_ptr().cast::<sys::ibv_sge>().cast_mut()
    }
}

impl fmt::Debug for Sge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sge")
            .field("addr", &format_args!("{:#x}", self.raw.addr))
            .field("length", &self.raw.length)
            .field("lkey", &self.raw.lkey)
            .finish()
    }
}
