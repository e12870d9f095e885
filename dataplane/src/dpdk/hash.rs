//! A thin `rte_hash` wrapper with 8-byte keys (a MAC address widened to `u64`) and `usize`
//! values: the baseline the steering table is measured against.
#![allow(unsafe_code)]

use std::ffi::{c_void, CString};
use std::ptr::NonNull;

use dpdk_sys as ffi;

use super::eal::Eal;
use super::error::{log_tap, DpdkError};

/// Most keys one [`RteHash::lookup_bulk`] call looks up (`RTE_HASH_LOOKUP_BULK_MAX`).
pub const LOOKUP_BULK_MAX: usize = 64;

/// An `rte_hash` table from `u64` keys to `usize` values. Single writer (`&mut self`), many
/// readers (`&self`); it is not changed while read, so no DPDK concurrency flag is needed.
#[derive(Debug)]
pub struct RteHash {
    ptr: NonNull<ffi::rte_hash>,
    name: String,
    _eal: Eal,
}

// SAFETY: the table is only mutated through &mut self; lookups through &self are read-only in
// rte_hash (no RW-concurrency flag needed when no writer runs concurrently).
unsafe impl Send for RteHash {}
// SAFETY: see Send.
unsafe impl Sync for RteHash {}

impl RteHash {
    /// Creates a table for `entries` keys, hashed with CRC32 (DPDK's `rte_hash_crc`).
    ///
    /// # Errors
    /// [`DpdkError::InvalidArgument`] for an empty name or one with a NUL byte;
    /// [`DpdkError::Call`] when DPDK refuses (name taken, too many entries, no memory).
    pub fn new(eal: &Eal, name: &str, entries: u32) -> Result<RteHash, DpdkError> {
        let action = || format!("creating hash table '{name}' for {entries} entries");
        if name.is_empty() {
            return Err(DpdkError::invalid(action(), "the name is empty"));
        }
        let c_name = CString::new(name)
            .map_err(|_| DpdkError::invalid(action(), "the name contains a NUL byte"))?;
        let params = ffi::rte_hash_parameters {
            name: c_name.as_ptr(),
            entries,
            reserved: 0,
            key_len: 8,
            hash_func: Some(ffi::nicproxy_rte_hash_crc),
            hash_func_init_val: 0,
            socket_id: -1,
            extra_flag: 0,
        };
        log_tap::clear();
        // SAFETY: EAL is initialised (eal exists); params and the name are valid for the call
        // and DPDK copies the name.
        let ptr = unsafe { ffi::rte_hash_create(&params) };
        let ptr = NonNull::new(ptr).ok_or_else(|| DpdkError::from_rte_errno(action()))?;
        Ok(RteHash {
            ptr,
            name: name.to_owned(),
            _eal: eal.clone(),
        })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Inserts or replaces `key` → `value`.
    ///
    /// # Errors
    /// [`DpdkError::Call`] with ENOSPC when the table is full.
    pub fn add(&mut self, key: u64, value: usize) -> Result<(), DpdkError> {
        // SAFETY: the table is alive and exclusively borrowed; the key is 8 readable bytes;
        // the value is stored as an opaque pointer-sized integer, never dereferenced.
        let rc = unsafe {
            ffi::rte_hash_add_key_data(
                self.ptr.as_ptr(),
                std::ptr::from_ref(&key).cast(),
                value as *mut c_void,
            )
        };
        if rc < 0 {
            return Err(DpdkError::from_errno(
                format!("adding key {key:#x} to hash table '{}'", self.name),
                rc,
            ));
        }
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: u64) -> bool {
        // SAFETY: the table is alive and exclusively borrowed; the key is 8 readable bytes.
        unsafe { ffi::rte_hash_del_key(self.ptr.as_ptr(), std::ptr::from_ref(&key).cast()) >= 0 }
    }

    /// The value of `key`.
    #[inline]
    pub fn lookup(&self, key: u64) -> Option<usize> {
        let mut data: *mut c_void = std::ptr::null_mut();
        // SAFETY: the table is alive and not being written (&self); key and data are valid.
        let rc = unsafe {
            ffi::rte_hash_lookup_data(
                self.ptr.as_ptr(),
                std::ptr::from_ref(&key).cast(),
                &mut data,
            )
        };
        (rc >= 0).then_some(data as usize)
    }

    /// Looks up to [`LOOKUP_BULK_MAX`] keys at once, writing each hit's value to the same
    /// index of `values`. Returns the hit mask (bit i set = `keys[i]` found). Keys beyond 64 or
    /// beyond `values.len()` are not looked up (their bits are 0).
    #[inline]
    pub fn lookup_bulk(&self, keys: &[u64], values: &mut [usize]) -> u64 {
        let n = keys.len().min(values.len()).min(LOOKUP_BULK_MAX);
        if n == 0 {
            return 0;
        }
        let mut key_ptrs = [std::ptr::null::<c_void>(); LOOKUP_BULK_MAX];
        for (p, k) in key_ptrs.iter_mut().zip(&keys[..n]) {
            *p = std::ptr::from_ref(k).cast();
        }
        let mut data = [std::ptr::null_mut::<c_void>(); LOOKUP_BULK_MAX];
        let mut hits = 0u64;
        // SAFETY: the table is alive and not being written; key_ptrs holds n pointers to 8
        // readable bytes each; data has room for n results; n <= RTE_HASH_LOOKUP_BULK_MAX.
        let rc = unsafe {
            ffi::rte_hash_lookup_bulk_data(
                self.ptr.as_ptr(),
                key_ptrs.as_mut_ptr(),
                n as u32,
                &mut hits,
                data.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return 0;
        }
        for (i, (v, d)) in values.iter_mut().zip(&data[..n]).enumerate() {
            if hits & (1 << i) != 0 {
                *v = *d as usize;
            }
        }
        hits
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        // SAFETY: the table is alive.
        let n = unsafe { ffi::rte_hash_count(self.ptr.as_ptr()) };
        usize::try_from(n).unwrap_or(0)
    }

    /// Whether the table has no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for RteHash {
    fn drop(&mut self) {
        // SAFETY: the table is alive and owned by self; freed exactly once; EAL is still up
        // (self holds a handle until after this).
        unsafe { ffi::rte_hash_free(self.ptr.as_ptr()) };
    }
}
