//! What every agent shares: the event writer, the stop signal (stdin closing) and the
//! clock.
//!
//! The clock is the realtime clock in microseconds: the agents and the lab are separate
//! processes in separate namespaces, and this is the clock they all read the same way.
//! A run lasts seconds, so a clock step is unlikely; the lab would see it as a gap.

use std::fmt;
use std::io::{BufWriter, Read, Stdout, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Buffered event lines on stdout, flushed every few ms by a background thread (a probe
/// every millisecond must not cost a write system call each).
#[derive(Clone)]
pub struct Events {
    out: Arc<Mutex<BufWriter<Stdout>>>,
}

impl Events {
    /// The writer, with its flusher thread (which ends with the process).
    pub fn new() -> Events {
        let e = Events {
            out: Arc::new(Mutex::new(BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            ))),
        };
        let flusher = e.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(5));
            flusher.flush();
        });
        e
    }

    /// Writes one event line.
    pub fn emit(&self, args: fmt::Arguments<'_>) {
        if let Ok(mut w) = self.out.lock() {
            let _ = w.write_fmt(args);
            let _ = w.write_all(b"\n");
        }
    }

    /// Flushes what is buffered.
    pub fn flush(&self) {
        if let Ok(mut w) = self.out.lock() {
            let _ = w.flush();
        }
    }
}

/// Set when the agent's stdin closes: the lab is done with it (or gone).
#[derive(Clone)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Starts the thread that watches stdin.
    pub fn watch_stdin() -> Stop {
        let s = Stop(Arc::new(AtomicBool::new(false)));
        let flag = s.0.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            flag.store(true, Ordering::Relaxed);
        });
        s
    }

    /// Whether the agent should stop.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether a socket error only means "nothing now, try again" (a read timeout, a
/// non-blocking socket with nothing to do, a signal).
pub fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}
