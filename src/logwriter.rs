//! The daemon's log output, written by a thread of its own.
//!
//! Writing a log line to stderr can block: on a pipe whose reader is slow, or on a file
//! when the kernel throttles writers with too many dirty pages (seen in the lab while other
//! jobs wrote gigabytes: a control-loop pass that logged a link change took 191 ms, every
//! peer declared the node dead, and it flapped). The control thread's heartbeats must not
//! wait for that. Each log line is handed over a bounded channel to a writer thread; when
//! the channel is full the line is dropped and counted, and the writer reports the count
//! with its next line.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines that may wait for the writer thread.
const QUEUE_LINES: usize = 4096;

/// The `MakeWriter` for `tracing_subscriber`: one buffer per event, sent when dropped.
#[derive(Clone)]
pub struct NonBlocking {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

/// Keeps the writer thread; dropping it (at exit) writes out every queued line.
pub struct Guard {
    thread: Option<JoinHandle<()>>,
    tx: Option<SyncSender<Vec<u8>>>,
}

/// Starts the writer thread on `out` (stderr for the daemon).
pub fn start(out: impl Write + Send + 'static) -> io::Result<(NonBlocking, Guard)> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let thread = std::thread::Builder::new()
        .name("np-log".into())
        .spawn(move || write_lines(rx, out, &d))?;
    Ok((
        NonBlocking {
            tx: tx.clone(),
            dropped,
        },
        Guard {
            thread: Some(thread),
            tx: Some(tx),
        },
    ))
}

fn write_lines(rx: Receiver<Vec<u8>>, mut out: impl Write, dropped: &AtomicU64) {
    let mut raised = false;
    // An empty buffer is the guard's "write out and stop" (events are never empty).
    while let Ok(line) = rx.recv().map(|l| (!l.is_empty()).then_some(l)) {
        let Some(line) = line else { break };
        if !raised && control::daemon::aux_rt_priority() > 0 {
            // The daemon's helper-thread class (see there): this thread frees every line
            // the control thread allocates.
            raised = true;
            control::daemon::raise_aux_thread();
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(
                out,
                "nicproxy: {lost} log line(s) dropped: the log output was too slow"
            );
        }
        let _ = out.write_all(&line);
    }
    let _ = out.flush();
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The global subscriber keeps a sender of its own, so the channel never closes:
        // queue the stop marker behind every line, and wait for the thread a bounded time
        // so that exit never hangs on a stuck output.
        let deadline = Instant::now() + Duration::from_secs(2);
        if let Some(tx) = self.tx.take() {
            let mut stop = Vec::new();
            loop {
                match tx.try_send(stop) {
                    Err(TrySendError::Full(v)) if Instant::now() < deadline => {
                        stop = v;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    _ => break,
                }
            }
        }
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// One event's text.
pub struct Line {
    buf: Vec<u8>,
    to: NonBlocking,
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.to.tx.try_send(std::mem::take(&mut self.buf)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.to.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlocking {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::with_capacity(256),
            to: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An output that blocks until released, then records what it got.
    struct Gate(Arc<(Mutex<bool>, Mutex<Vec<u8>>)>);

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            while !*self.0 .0.lock().expect("lock") {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.0 .1.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_never_blocks_the_logger_and_drops_are_reported() {
        let shared = Arc::new((Mutex::new(false), Mutex::new(Vec::new())));
        let (w, guard) = start(Gate(shared.clone())).expect("writer thread");
        let t0 = std::time::Instant::now();
        let n = QUEUE_LINES + 100;
        for i in 0..n {
            let mut line = tracing_subscriber::fmt::MakeWriter::make_writer(&w);
            writeln!(line, "line {i}").expect("buffer");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "logging waited for the output"
        );
        *shared.0.lock().expect("lock") = true;
        drop(w);
        drop(guard);
        let text = String::from_utf8(shared.1.lock().expect("lock").clone()).expect("utf8");
        assert!(text.contains("line 0\n"), "{}", &text[..40.min(text.len())]);
        assert!(text.contains("log line(s) dropped"), "the drop is reported");
        let kept = text.lines().filter(|l| l.starts_with("line ")).count();
        assert!(kept >= QUEUE_LINES && kept < n, "kept {kept} of {n}");
    }
}
