//! Process signals as flags the control loop polls: SIGINT/SIGTERM ask for a clean stop,
//! SIGHUP asks for a config reload. The handlers only store to atomics, the one thing a
//! signal handler may safely do here.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

extern "C" fn on_reload(_: libc::c_int) {
    RELOAD.store(true, Ordering::Relaxed);
}

/// Installs the handlers. Call once, early, from the main thread.
pub fn install() -> io::Result<()> {
    let handlers: [(libc::c_int, extern "C" fn(libc::c_int)); 3] = [
        (libc::SIGINT, on_stop),
        (libc::SIGTERM, on_stop),
        (libc::SIGHUP, on_reload),
    ];
    for (sig, handler) in handlers {
        // SAFETY: an all-zero sigaction is a valid starting point (empty mask, no flags).
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa` is fully initialised; the handler is async-signal-safe (one atomic
        // store); the old action is not needed.
        let rc = unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Asks the loop to stop, as a signal would (for tests and for fatal errors elsewhere).
pub fn request_stop() {
    STOP.store(true, Ordering::Relaxed);
}

/// Whether SIGHUP arrived since the last call; clears the flag.
pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::Relaxed)
}
