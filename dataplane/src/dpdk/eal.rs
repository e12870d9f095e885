//! The DPDK Environment Abstraction Layer: initialised once per process, cleaned up when the
//! last handle to it (and so the last mempool, port and hash built on it) is gone.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CString};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use dpdk_sys as ffi;

use super::error::{log_tap, DpdkError};

/// `rte_lcore_id()` of a thread that is neither an EAL thread nor registered.
const LCORE_ID_ANY: u32 = u32::MAX;

/// Process-wide EAL state: DPDK allows one `rte_eal_init` per process.
static EAL_STATE: AtomicU8 = AtomicU8::new(STATE_NONE);
const STATE_NONE: u8 = 0;
const STATE_INITIALISING: u8 = 1;
const STATE_UP: u8 = 2;

/// A handle to the initialised EAL. Cheap to clone; every mempool, port and hash keeps one,
/// so `rte_eal_cleanup` runs only after the last of them is dropped.
#[derive(Clone, Debug)]
pub struct Eal {
    _inner: Arc<EalInner>,
}

#[derive(Debug)]
struct EalInner {
    /// The runtime directory EAL made (`/var/run/dpdk/PREFIX`), even with `--in-memory` or
    /// `--no-shconf`, where it stays empty: removed after the cleanup so that every run
    /// with a per-process prefix does not leave one behind.
    runtime_dir: Option<std::path::PathBuf>,
}

impl Drop for EalInner {
    fn drop(&mut self) {
        // SAFETY: the last handle is gone, and every DPDK object made through this crate holds
        // a handle, so nothing of ours still points into DPDK memory. Mempools that still had
        // mbufs out leaked their handle on purpose, so this does not run in that case.
        let rc = unsafe { ffi::rte_eal_cleanup() };
        if rc != 0 {
            tracing::warn!(
                "rte_eal_cleanup failed: {}",
                DpdkError::from_errno("cleaning up the EAL", rc)
            );
        }
        if let Some(dir) = &self.runtime_dir {
            // The telemetry socket is ours (unique prefix) and would be unlinked only at
            // process exit, after this; then the directory, only if empty: with shared
            // config, files another process may use stay.
            let _ = std::fs::remove_file(dir.join("dpdk_telemetry.v2"));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The runtime directory EAL uses for file prefix `prefix`, by DPDK's rule: under
/// `/var/run/dpdk` for root, else under `$XDG_RUNTIME_DIR/dpdk` (or `/tmp/dpdk`). EAL makes
/// it even with `--in-memory` or `--no-shconf`; a process that dies without cleaning up
/// leaves it behind for whoever started it to remove.
pub fn runtime_dir(prefix: &str) -> std::path::PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let base = if unsafe { libc::getuid() } == 0 {
        std::path::PathBuf::from("/var/run")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map_or_else(|| "/tmp".into(), Into::into)
    };
    base.join("dpdk").join(prefix)
}

impl Eal {
    /// Initialises the EAL with `args`, the EAL command line without a program name (e.g.
    /// `["--no-pci", "--in-memory", "--file-prefix=np1", "-l", "0"]`). The calling thread
    /// becomes the main lcore (EAL pins it to that lcore's CPUs).
    ///
    /// DPDK's log keeps going to stderr; it is also captured so that errors can quote it.
    ///
    /// # Errors
    /// [`DpdkError::EalAlreadyInitialized`] on a second call in the same process;
    /// [`DpdkError::InvalidArgument`] for an argument with a NUL byte;
    /// [`DpdkError::Call`] when `rte_eal_init` fails, with DPDK's log lines that name the cause
    /// (e.g. "Cannot get hugepage information").
    pub fn init(args: &[impl AsRef<str>]) -> Result<Eal, DpdkError> {
        let action = || {
            let joined: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
            format!("initialising the DPDK EAL with [{}]", joined.join(" "))
        };
        let mut owned = Vec::with_capacity(args.len() + 1);
        owned.push(CString::from(c"nicproxy"));
        for arg in args {
            let arg = arg.as_ref();
            owned.push(CString::new(arg).map_err(|_| {
                DpdkError::invalid(action(), format!("argument {arg:?} contains a NUL byte"))
            })?);
        }
        let argc = c_int::try_from(owned.len())
            .map_err(|_| DpdkError::invalid(action(), "too many arguments"))?;

        if EAL_STATE
            .compare_exchange(
                STATE_NONE,
                STATE_INITIALISING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(DpdkError::EalAlreadyInitialized);
        }

        if !log_tap::install(true) {
            tracing::warn!("could not install the DPDK log tap; errors will not quote DPDK's log");
        }
        log_tap::clear();

        // EAL keeps pointers into argv (getopt permutes it, some options are stored as given),
        // so the strings and the array live for the rest of the process. It is a few bytes once.
        let strings: &'static mut [CString] = owned.leak();
        let argv: &'static mut [*mut c_char] = strings
            .iter_mut()
            .map(|s| s.as_ptr().cast_mut())
            .collect::<Vec<_>>()
            .leak();

        // SAFETY: argv holds argc valid NUL-terminated strings that are never freed; the
        // once-guard above makes this the only rte_eal_init call in flight in the process.
        let rc = unsafe { ffi::rte_eal_init(argc, argv.as_mut_ptr()) };
        if rc < 0 {
            let mut err = DpdkError::from_rte_errno(action());
            add_hint(&mut err);
            // DPDK resets its own once-flag on most failures, so a corrected retry may work;
            // if it cannot, rte_eal_init says so itself (EALREADY).
            EAL_STATE.store(STATE_NONE, Ordering::Release);
            return Err(err);
        }
        log_tap::clear();
        EAL_STATE.store(STATE_UP, Ordering::Release);
        // SAFETY: EAL is up; the returned string is owned by EAL and lives as long as it,
        // and it is copied out at once.
        let dir = unsafe { ffi::rte_eal_get_runtime_dir() };
        let runtime_dir = (!dir.is_null()).then(|| {
            // SAFETY: non-null, a NUL-terminated path EAL built during init.
            let c = unsafe { std::ffi::CStr::from_ptr(dir) };
            std::path::PathBuf::from(c.to_string_lossy().into_owned())
        });
        Ok(Eal {
            _inner: Arc::new(EalInner { runtime_dir }),
        })
    }

    /// Registers the calling thread (a thread EAL did not create) as an lcore, so that it gets
    /// an lcore id and mempool caches. The registration ends when the guard is dropped. On an
    /// EAL thread, or one registered already, it returns that thread's lcore id and the guard
    /// does nothing on drop.
    ///
    /// # Errors
    /// [`DpdkError::Call`] when no lcore is left (`RTE_MAX_LCORE`) or EAL refuses (multi-process).
    pub fn register_thread(&self) -> Result<LcoreRegistration, DpdkError> {
        if let Some(id) = lcore_id() {
            return Ok(LcoreRegistration {
                lcore_id: id,
                registered_here: false,
                _eal: self.clone(),
                _not_send: PhantomData,
            });
        }
        log_tap::clear();
        // SAFETY: EAL is initialised (self exists); the call only touches this thread's
        // per-lcore state and EAL's lcore table under EAL's own lock.
        let rc = unsafe { ffi::rte_thread_register() };
        if rc != 0 {
            return Err(DpdkError::from_rte_errno(
                "registering this thread as a DPDK lcore",
            ));
        }
        let id = lcore_id().ok_or_else(|| {
            DpdkError::from_errno("registering this thread as a DPDK lcore", libc::ENOMEM)
        })?;
        Ok(LcoreRegistration {
            lcore_id: id,
            registered_here: true,
            _eal: self.clone(),
            _not_send: PhantomData,
        })
    }

    /// TSC ticks per second, as measured by EAL at init.
    pub fn tsc_hz(&self) -> u64 {
        // SAFETY: EAL is initialised (self exists), so the value has been calibrated.
        unsafe { ffi::nicproxy_rte_get_tsc_hz() }
    }

    /// Number of lcores EAL runs (its `-l`/`--lcores` set plus registered threads).
    pub fn lcore_count(&self) -> u32 {
        // SAFETY: reads EAL's configuration; EAL is initialised.
        unsafe { ffi::rte_lcore_count() }
    }
}

/// The time-stamp counter; with [`Eal::tsc_hz`] it times the hot path without a syscall.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions.
    unsafe { ffi::nicproxy_rte_rdtsc() }
}

/// The calling thread's lcore id, or `None` for a thread that is not an EAL thread and has
/// not registered.
#[inline]
pub fn lcore_id() -> Option<u32> {
    // SAFETY: reads a thread-local; valid on any thread, before or after EAL init.
    let id = unsafe { ffi::nicproxy_rte_lcore_id() };
    (id != LCORE_ID_ANY).then_some(id)
}

/// Keeps a non-EAL thread registered as an lcore; unregisters it on drop. Not `Send`: the
/// registration belongs to the thread that made it.
#[derive(Debug)]
pub struct LcoreRegistration {
    lcore_id: u32,
    registered_here: bool,
    _eal: Eal,
    _not_send: PhantomData<*const ()>,
}

impl LcoreRegistration {
    /// The lcore id this thread now has.
    pub fn lcore_id(&self) -> u32 {
        self.lcore_id
    }
}

impl Drop for LcoreRegistration {
    fn drop(&mut self) {
        if self.registered_here {
            // SAFETY: this thread registered itself in register_thread (the guard is !Send, so
            // this runs on the same thread) and EAL is still up (the guard holds a handle).
            unsafe { ffi::rte_thread_unregister() };
        }
    }
}

/// Adds an actionable hint to EAL init failures whose cause is well known.
fn add_hint(err: &mut DpdkError) {
    if let DpdkError::Call { log, .. } = err {
        let lower = log.to_ascii_lowercase();
        if lower.contains("hugepage") {
            log.push_str(
                "\nhint: no usable hugepages; reserve some (echo N > /proc/sys/vm/nr_hugepages) or pass --no-huge",
            );
        }
    }
}
