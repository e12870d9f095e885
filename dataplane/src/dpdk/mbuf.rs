//! Owned packet buffers ([`Mbuf`]) and the fixed-size array the rx/tx bursts work on
//! ([`Burst`]).
//!
//! An `Mbuf` is freed when dropped. Its data can be changed only while it is the only
//! reference to the buffer (refcount 1): after [`Mbuf::clone_ref`], every mutating accessor
//! returns `None` until the other references are gone. Only single-segment mbufs are
//! described by `data()`: nicproxy's pools hold a full frame per mbuf.
#![allow(unsafe_code)]

use std::fmt;
use std::ptr::NonNull;

use dpdk_sys as ffi;

use super::mempool::Mempool;

/// Default burst size: the hot path moves packets 32 at a time.
pub const BURST_SIZE: usize = 32;

/// One packet buffer, owned: dropping it frees it back to its pool.
///
/// `repr(transparent)` over a non-null pointer, so `Option<Mbuf>` has the layout of
/// `*mut rte_mbuf` (null = `None`) and a [`Burst`] can be handed to DPDK as a pointer array.
#[repr(transparent)]
pub struct Mbuf {
    ptr: NonNull<ffi::rte_mbuf>,
}

// SAFETY: an Mbuf is the unique owner of its reference; freeing it from another thread is
// allowed (mempool puts are MT-safe), and shared buffers are only read (mutation needs refcnt 1).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Allocates one mbuf (empty, default headroom). `None` when the pool is exhausted: a
    /// counted drop for the caller, not an error.
    #[inline]
    pub fn alloc(pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: the pool is alive (pool handle); alloc returns a fresh mbuf or null.
        let ptr = unsafe { ffi::nicproxy_rte_pktmbuf_alloc(pool.as_ptr()) };
        NonNull::new(ptr).map(|ptr| Mbuf { ptr })
    }

    /// Allocates `count` mbufs onto the end of `burst`, all or nothing. Returns `false` (and
    /// leaves `burst` as it was) when the pool has fewer than `count` or `burst` lacks room.
    #[inline]
    pub fn alloc_bulk<const N: usize>(pool: &Mempool, burst: &mut Burst<N>, count: usize) -> bool {
        burst.compact();
        if count > N - burst.len {
            return false;
        }
        let Ok(n) = u32::try_from(count) else {
            return false;
        };
        let tail = burst.slots[burst.len..]
            .as_mut_ptr()
            .cast::<*mut ffi::rte_mbuf>();
        // SAFETY: tail points at `count` free slots (checked above) laid out as *mut rte_mbuf
        // (Mbuf is repr(transparent) over NonNull; Option<NonNull> has the pointer's layout).
        let rc = unsafe { ffi::nicproxy_rte_pktmbuf_alloc_bulk(pool.as_ptr(), tail, n) };
        let got = if rc == 0 { count } else { 0 };
        // SAFETY: on success the first `count` free slots hold owned mbufs; on failure none.
        unsafe { burst.rx_filled(got) };
        rc == 0
    }

    /// Takes ownership of a raw mbuf (e.g. one DPDK handed over). `None` for null.
    ///
    /// # Safety
    /// `ptr` must be a valid mbuf that the caller owns one reference to, which it gives up.
    pub unsafe fn from_raw(ptr: *mut ffi::rte_mbuf) -> Option<Mbuf> {
        NonNull::new(ptr).map(|ptr| Mbuf { ptr })
    }

    /// Gives up ownership without freeing; the caller must free it or pass it to DPDK.
    #[inline]
    pub fn into_raw(self) -> *mut ffi::rte_mbuf {
        let ptr = self.ptr.as_ptr();
        std::mem::forget(self);
        ptr
    }

    /// The raw mbuf, still owned by `self`.
    #[inline]
    pub fn as_ptr(&self) -> *mut ffi::rte_mbuf {
        self.ptr.as_ptr()
    }

    #[inline]
    fn raw(&self) -> &ffi::rte_mbuf {
        // SAFETY: self owns a reference, so the mbuf is alive; fields read here (lengths,
        // offsets, port) are not changed by other holders, which may only read (refcnt > 1).
        unsafe { self.ptr.as_ref() }
    }

    /// Another owned reference to the same buffer (refcount + 1), e.g. to send one frame out
    /// of several ports. While shared, the data must not change: `data_mut`, `append`,
    /// `prepend`, `adj` and `trim` return `None` until this is the only reference again.
    #[inline]
    pub fn clone_ref(&self) -> Mbuf {
        // SAFETY: the mbuf is alive; the update is atomic and the new reference is owned by
        // the returned Mbuf.
        unsafe { ffi::nicproxy_rte_pktmbuf_refcnt_update(self.ptr.as_ptr(), 1) };
        Mbuf { ptr: self.ptr }
    }

    /// Number of references to the buffer.
    #[inline]
    pub fn refcnt(&self) -> u16 {
        // SAFETY: the mbuf is alive; an atomic load.
        unsafe { ffi::nicproxy_rte_mbuf_refcnt_read(self.ptr.as_ptr()) }
    }

    /// Whether this is the only reference, so the buffer may be changed.
    #[inline]
    pub fn is_exclusive(&self) -> bool {
        self.refcnt() == 1
    }

    /// Packet length (all segments).
    #[inline]
    pub fn len(&self) -> usize {
        self.raw().pkt_len as usize
    }

    /// Whether the packet has no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.raw().pkt_len == 0
    }

    /// Number of segments (1 for every mbuf nicproxy makes).
    #[inline]
    pub fn segments(&self) -> u16 {
        self.raw().nb_segs
    }

    /// The port the packet was received on (meaningless for allocated mbufs).
    #[inline]
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// Free bytes in front of the data.
    #[inline]
    pub fn headroom(&self) -> u16 {
        self.raw().data_off
    }

    /// Free bytes after the data of the first segment (the only one in nicproxy's mbufs).
    #[inline]
    pub fn tailroom(&self) -> u16 {
        let m = self.raw();
        m.buf_len
            .saturating_sub(m.data_off)
            .saturating_sub(m.data_len)
    }

    /// The packet bytes of the first segment.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's buffer (DPDK's
        // invariant); shared holders do not write it, and &self keeps it alive.
        unsafe {
            std::slice::from_raw_parts(
                m.buf_addr.cast::<u8>().add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }

    /// Starts loading the first cache line of the packet data, so that reading the headers
    /// a few frames later does not stall (the rx path touches only the mbuf header, not the
    /// data). A hint: it never faults and changes nothing.
    #[inline(always)]
    pub fn prefetch_data(&self) {
        let m = self.raw();
        let p = m
            .buf_addr
            .cast::<u8>()
            .cast_const()
            .wrapping_add(usize::from(m.data_off));
        #[cfg(target_arch = "x86_64")]
        #[allow(unused_unsafe)]
        // SAFETY: a prefetch is only a hint to the cache: it reads nothing the program sees
        // and never faults, whatever the address (it is older toolchains that mark it unsafe).
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p;
    }

    /// The packet bytes of the first segment, writable; `None` while the buffer is shared.
    #[inline]
    pub fn data_mut(&mut self) -> Option<&mut [u8]> {
        if !self.is_exclusive() {
            return None;
        }
        let m = self.raw();
        let (base, off, len) = (
            m.buf_addr.cast::<u8>(),
            usize::from(m.data_off),
            usize::from(m.data_len),
        );
        // SAFETY: as in data(), and refcnt 1 means no other reference can read concurrently;
        // &mut self makes this the only live slice.
        Some(unsafe { std::slice::from_raw_parts_mut(base.add(off), len) })
    }

    /// Grows the packet by `len` bytes at the end and returns them (uninitialised contents
    /// from a previous use). `None` without tailroom or while shared.
    #[inline]
    pub fn append(&mut self, len: u16) -> Option<&mut [u8]> {
        if !self.is_exclusive() {
            return None;
        }
        // SAFETY: the mbuf is exclusively ours; DPDK checks the tailroom and returns null when
        // short, otherwise a pointer to `len` bytes inside the buffer.
        let p = unsafe { ffi::nicproxy_rte_pktmbuf_append(self.ptr.as_ptr(), len) };
        // SAFETY: non-null means `len` writable bytes at p, borrowed for &mut self.
        NonNull::new(p).map(|p| unsafe {
            std::slice::from_raw_parts_mut(p.as_ptr().cast::<u8>(), usize::from(len))
        })
    }

    /// Grows the packet by `len` bytes at the front (e.g. to add an encapsulation header) and
    /// returns them. `None` without headroom or while shared.
    #[inline]
    pub fn prepend(&mut self, len: u16) -> Option<&mut [u8]> {
        if !self.is_exclusive() {
            return None;
        }
        // SAFETY: as in append, with the headroom.
        let p = unsafe { ffi::nicproxy_rte_pktmbuf_prepend(self.ptr.as_ptr(), len) };
        // SAFETY: non-null means `len` writable bytes at p, borrowed for &mut self.
        NonNull::new(p).map(|p| unsafe {
            std::slice::from_raw_parts_mut(p.as_ptr().cast::<u8>(), usize::from(len))
        })
    }

    /// Removes `len` bytes from the front (e.g. to strip a header). `None` if the first
    /// segment is shorter or the buffer is shared.
    #[inline]
    pub fn adj(&mut self, len: u16) -> Option<()> {
        if !self.is_exclusive() {
            return None;
        }
        // SAFETY: the mbuf is exclusively ours; DPDK checks the length and returns null when
        // the segment is too short.
        let p = unsafe { ffi::nicproxy_rte_pktmbuf_adj(self.ptr.as_ptr(), len) };
        (!p.is_null()).then_some(())
    }

    /// Removes `len` bytes from the end. `None` if the last segment is shorter or the buffer
    /// is shared.
    #[inline]
    pub fn trim(&mut self, len: u16) -> Option<()> {
        if !self.is_exclusive() {
            return None;
        }
        // SAFETY: the mbuf is exclusively ours; DPDK checks the length and returns -1 when
        // the segment is too short.
        let rc = unsafe { ffi::nicproxy_rte_pktmbuf_trim(self.ptr.as_ptr(), len) };
        (rc == 0).then_some(())
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: self owns one reference; free drops it (and returns the buffer to its pool
        // when it was the last).
        unsafe { ffi::nicproxy_rte_pktmbuf_free(self.ptr.as_ptr()) };
    }
}

impl AsRef<[u8]> for Mbuf {
    /// The packet bytes of the first segment, as [`Mbuf::data`]: lets a burst be steered in
    /// bulk ([`crate::steer::steer_bulk`]).
    #[inline(always)]
    fn as_ref(&self) -> &[u8] {
        self.data()
    }
}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf")
            .field("ptr", &self.ptr)
            .field("len", &self.len())
            .field("refcnt", &self.refcnt())
            .finish()
    }
}

/// A fixed-capacity array of mbufs for rx and tx bursts: no allocation, `N` pointers inline.
///
/// Rx appends to the end. Tx sends from the front and leaves what the port did not take in
/// the burst, so the caller decides to retry or to drop them ([`Burst::free_all`] returns the
/// count to add to a drop counter). Dropping a burst frees what it still holds.
pub struct Burst<const N: usize = BURST_SIZE> {
    /// Invariant: `slots[head..head + len]` are `Some`, every other slot is `None`.
    slots: [Option<Mbuf>; N],
    head: usize,
    len: usize,
}

impl<const N: usize> Default for Burst<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Burst<N> {
    /// An empty burst.
    pub const fn new() -> Self {
        Self {
            slots: [const { None }; N],
            head: 0,
            len: 0,
        }
    }

    /// How many mbufs it can hold.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// How many mbufs it holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether no more can be added.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Adds an mbuf at the end; gives it back when full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == N {
            return Err(m);
        }
        if self.head + self.len == N {
            self.compact();
        }
        self.slots[self.head + self.len] = Some(m);
        self.len += 1;
        Ok(())
    }

    /// Removes the first mbuf.
    #[inline]
    pub fn pop_front(&mut self) -> Option<Mbuf> {
        if self.len == 0 {
            return None;
        }
        let m = self.slots[self.head].take();
        self.head += 1;
        self.len -= 1;
        if self.len == 0 {
            self.head = 0;
        }
        m
    }

    /// The held mbufs, in order.
    #[inline]
    pub fn as_slice(&self) -> &[Mbuf] {
        let live = &self.slots[self.head..self.head + self.len];
        // SAFETY: every slot in the live range is Some (invariant), and Option<Mbuf> has the
        // same layout as Mbuf when Some (non-null pointer niche, Mbuf is repr(transparent)).
        unsafe { std::slice::from_raw_parts(live.as_ptr().cast::<Mbuf>(), live.len()) }
    }

    /// The held mbufs, in order, mutable (swapping them keeps the invariant: none can be
    /// removed through this slice).
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        let live = &mut self.slots[self.head..self.head + self.len];
        // SAFETY: as in as_slice; a &mut Mbuf cannot make a slot None.
        unsafe { std::slice::from_raw_parts_mut(live.as_mut_ptr().cast::<Mbuf>(), live.len()) }
    }

    /// Iterates over the held mbufs.
    #[inline]
    pub fn iter(&self) -> std::slice::Iter<'_, Mbuf> {
        self.as_slice().iter()
    }

    /// Iterates mutably over the held mbufs.
    #[inline]
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Mbuf> {
        self.as_mut_slice().iter_mut()
    }

    /// Removes and yields every held mbuf, front first.
    pub fn drain(&mut self) -> impl Iterator<Item = Mbuf> + '_ {
        std::iter::from_fn(move || self.pop_front())
    }

    /// Frees every held mbuf in one bulk call and returns how many there were (for a drop
    /// counter).
    #[inline]
    pub fn free_all(&mut self) -> usize {
        let n = self.len;
        if n == 0 {
            return 0;
        }
        let live = self.slots[self.head..self.head + n]
            .as_mut_ptr()
            .cast::<*mut ffi::rte_mbuf>();
        // SAFETY: the live range holds n owned mbuf pointers (layout as in as_slice); DPDK
        // frees them all, and the slots are then cleared without dropping (forget below).
        unsafe { ffi::nicproxy_rte_pktmbuf_free_bulk(live, n as u32) };
        self.forget_front(n);
        n
    }

    /// Moves every held mbuf, in order, to `outs[lanes[i]]` and leaves `self` empty: the
    /// worker sends a whole steered burst to its tx buffers in one pass, with no per-frame
    /// drop glue or capacity check. Moves nothing and returns `false` when `lanes` is
    /// shorter than the burst, names a lane `outs` does not have, or an output lacks room
    /// for the whole burst (the caller then falls back to moving frames one by one).
    #[inline]
    pub fn scatter<const M: usize, const K: usize>(
        &mut self,
        lanes: &[u8],
        outs: [&mut Burst<M>; K],
    ) -> bool {
        let n = self.len;
        let Some(lanes) = lanes.get(..n) else {
            return false;
        };
        // Branch-free over the burst: the largest lane and whether all lanes are equal.
        let first = lanes.first().copied().unwrap_or(0);
        let (max, same) = lanes
            .iter()
            .fold((0u8, true), |(mx, eq), &l| (mx.max(l), eq & (l == first)));
        if usize::from(max) >= K {
            return false;
        }
        let mut outs = outs;
        for o in outs.iter_mut() {
            o.compact();
            if M - o.len < n {
                return false;
            }
        }
        let src = self.slots[self.head..self.head + n].as_ptr();
        if same {
            // The common case (a burst from one port to one destination): one copy of the
            // pointer array.
            let o = &mut outs[usize::from(first)];
            let dst = o.slots[o.len..].as_mut_ptr();
            // SAFETY: src holds n live slots and dst has room for n (checked above); the
            // two arrays are distinct objects. The pointers change owner: the source slots
            // are cleared below without dropping, so each mbuf keeps exactly one owner.
            unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
            o.len += n;
        } else {
            let mut lens = [0usize; K];
            for (i, o) in outs.iter().enumerate() {
                lens[i] = o.len;
            }
            for (i, &lane) in lanes.iter().enumerate() {
                let l = usize::from(lane);
                // SAFETY: l < K (max checked above), lens[l] < M (room for all n checked
                // above), i < n; each mbuf pointer is moved, not copied: the source slots are
                // cleared below without dropping.
                unsafe {
                    let at = *lens.get_unchecked(l);
                    let dst = outs.get_unchecked_mut(l).slots.as_mut_ptr().add(at);
                    std::ptr::write(dst, std::ptr::read(src.add(i)));
                    *lens.get_unchecked_mut(l) = at + 1;
                }
            }
            for (o, len) in outs.iter_mut().zip(lens) {
                o.len = len;
            }
        }
        // The mbufs now belong to the outputs: clear the source without freeing them.
        self.forget_front(n);
        true
    }

    /// Moves everything to the front so that the free space is one run at the end.
    #[inline]
    fn compact(&mut self) {
        if self.head != 0 {
            let (head, len) = (self.head, self.len);
            for i in 0..len {
                self.slots.swap(i, head + i);
            }
            self.head = 0;
        }
    }

    /// Empties the first `n` live slots without freeing: their mbufs now belong to DPDK.
    #[inline]
    fn forget_front(&mut self, n: usize) {
        for slot in &mut self.slots[self.head..self.head + n] {
            std::mem::forget(slot.take());
        }
        self.head += n;
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }

    /// Pointer to the free tail (after compacting) and its length: where rx writes.
    #[inline]
    pub(crate) fn rx_space(&mut self) -> (*mut *mut ffi::rte_mbuf, usize) {
        self.compact();
        let free = &mut self.slots[self.len..];
        (free.as_mut_ptr().cast(), free.len())
    }

    /// Records that DPDK wrote `n` mbufs into the space `rx_space` returned, and clears the
    /// rest of that space without freeing: vector PMDs may leave pointers they still own there.
    ///
    /// # Safety
    /// The first `n` slots of that space must now hold valid owned mbuf pointers.
    #[inline]
    pub(crate) unsafe fn rx_filled(&mut self, n: usize) {
        debug_assert!(self.head == 0 && self.len + n <= N);
        self.len += n;
        for slot in &mut self.slots[self.len..] {
            std::mem::forget(slot.take());
        }
    }

    /// Pointer to the live range and its length: what tx sends.
    #[inline]
    pub(crate) fn tx_pending(&mut self) -> (*mut *mut ffi::rte_mbuf, usize) {
        let live = &mut self.slots[self.head..self.head + self.len];
        (live.as_mut_ptr().cast(), live.len())
    }

    /// Records that DPDK took the first `n` mbufs of the range `tx_pending` returned.
    ///
    /// # Safety
    /// DPDK must really have taken ownership of those `n` mbufs.
    #[inline]
    pub(crate) unsafe fn tx_sent(&mut self, n: usize) {
        self.forget_front(n.min(self.len));
    }
}

impl<const N: usize> Drop for Burst<N> {
    fn drop(&mut self) {
        self.free_all();
    }
}

impl<const N: usize> fmt::Debug for Burst<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Burst")
            .field("capacity", &N)
            .field("len", &self.len)
            .finish()
    }
}
