//! The poll-mode workers: one loop per core, in the shape of DPDK's l2fwd.
//!
//! Each iteration:
//! 1. picks up a new steering table if control published one (one acquire load otherwise);
//! 2. receives a burst from the NIC queue, steers each frame, queues it for its port;
//! 3. the same for the kernel exception port and for the fabric;
//! 4. sends queued frames when a queue is full, and all queues on a TSC timer;
//! 5. waits per the polling mode (busy spin, or adaptive back-off).
//!
//! Nothing here allocates, locks, formats or makes a syscall per frame: bursts are fixed
//! arrays, counters are per-worker plain integers flushed on the drain timer, the table is a
//! per-worker snapshot. The only syscalls are the PMDs' own (af_packet/TAP) and the UDP
//! fabric's batched `recvmmsg`/`sendmmsg`, one per burst.

pub mod backoff;
pub mod capture;
pub mod fabric_io;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use backoff::{Backoff, Idle, Polling};
pub use fabric_io::{FabricIo, UdpIo};

use crate::counters::{worker_counters, CounterReader, CounterWriter, CountersSnapshot, DropTally};
use crate::dpdk::{tsc, Burst, DpdkError, Eal, Mbuf, PortQueue, BURST_SIZE};
use crate::steer::{steer, Decision, SessionId, Source, TableReader};

/// Counter index of the NIC port.
pub const PORT_NIC: usize = 0;
/// Counter index of the kernel exception port.
pub const PORT_KERNEL: usize = 1;
/// Counter index of the fabric.
pub const PORT_FABRIC: usize = 2;
/// While the NIC and kernel ports are busy, the fabric is polled once per this many loop
/// iterations (every iteration when they are idle).
const FABRIC_POLL_EVERY: u32 = 8;
/// Metric label of each counter index.
pub const PORT_NAMES: [&str; 3] = ["nic", "kernel", "fabric"];

/// Everything one worker drives.
#[derive(Debug)]
pub struct WorkerSetup {
    /// Thread name, e.g. `np-worker0`.
    pub name: String,
    /// The CPU to pin to, or none.
    pub core: Option<usize>,
    /// Busy or adaptive polling.
    pub polling: Polling,
    /// This worker's NIC queue.
    pub nic: PortQueue,
    /// This worker's queue of the kernel exception port.
    pub kernel: PortQueue,
    /// The fabric.
    pub fabric: FabricIo,
    /// The steering table, as published by control.
    pub table: TableReader,
    /// How often queued frames are sent even when their queue is not full.
    pub drain_interval: Duration,
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Spawning the thread failed.
    #[error("starting worker thread {name}: {source}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Pinning to the requested core failed.
    #[error("pinning worker {name} to core {core}: no such core, or not allowed")]
    Pin {
        /// The thread's name.
        name: String,
        /// The core asked for.
        core: usize,
    },
    /// Registering the thread with DPDK failed.
    #[error("worker {name}: {source}")]
    Dpdk {
        /// The thread's name.
        name: String,
        /// The DPDK error.
        #[source]
        source: DpdkError,
    },
    /// The worker thread panicked (a bug).
    #[error("worker {0} panicked")]
    Panicked(String),
}

/// A running worker: read its counters, stop it.
#[derive(Debug)]
pub struct WorkerHandle {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), WorkerError>>>,
    counters: CounterReader,
    capture: Option<capture::CaptureControl>,
}

impl WorkerHandle {
    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's counters (flushed by the worker on its drain timer).
    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// Control's end of the worker's frame capture (once: whoever takes it runs captures).
    pub fn take_capture(&mut self) -> Option<capture::CaptureControl> {
        self.capture.take()
    }

    /// Whether the thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the worker and waits for it; returns its exit status.
    pub fn stop(mut self) -> Result<(), WorkerError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), WorkerError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(WorkerError::Panicked(self.name.clone()))),
            None => Ok(()),
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Starts a worker thread. It pins itself, registers with DPDK, then polls until stopped.
pub fn spawn(eal: &Eal, setup: WorkerSetup) -> Result<WorkerHandle, WorkerError> {
    let (writer, reader) = worker_counters(PORT_NAMES.len());
    let stop = Arc::new(AtomicBool::new(false));
    let name = setup.name.clone();
    let (eal, flag) = (eal.clone(), stop.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (tap, capture) = capture::channel(eal.tsc_hz());
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let name = setup.name.clone();
            if let Some(core) = setup.core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    let e = WorkerError::Pin { name, core };
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            }
            let _lcore = match eal.register_thread() {
                Ok(r) => r,
                Err(source) => {
                    let _ = ready_tx.send(Err(source.to_string()));
                    return Err(WorkerError::Dpdk { name, source });
                }
            };
            let _ = ready_tx.send(Ok(()));
            Loop::new(setup, writer, eal.tsc_hz(), tap).run(&flag);
            Ok(())
        })
        .map_err(|source| WorkerError::Spawn {
            name: name.clone(),
            source,
        })?;
    let mut handle = WorkerHandle {
        name,
        stop,
        thread: Some(thread),
        counters: reader,
        capture: Some(capture),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        _ => Err(handle
            .stop_and_join()
            .err()
            .unwrap_or_else(|| WorkerError::Panicked(handle.name.clone()))),
    }
}

/// One queue of a port, used for both rx and tx by this worker only (DPDK queues are
/// single-threaded). Outgoing frames wait in `pending` until it fills or the drain timer fires.
struct TxQueue {
    queue: PortQueue,
    pending: Burst,
    /// Bytes in `pending`, summed as frames are queued.
    pending_bytes: u64,
    port: usize,
}

impl TxQueue {
    #[inline]
    fn push(&mut self, m: Mbuf, out: &mut Stats) {
        if self.pending.is_full() {
            self.flush(out);
        }
        let len = m.len() as u64;
        match self.pending.push(m) {
            Ok(()) => self.pending_bytes += len,
            Err(m) => {
                drop(m);
                out.tally[self.port].count(crate::counters::DropReason::TxFull);
            }
        }
    }

    #[inline]
    fn flush(&mut self, out: &mut Stats) {
        if self.pending.is_empty() {
            return;
        }
        let sent = self.queue.tx_burst(&mut self.pending);
        let mut bytes = std::mem::take(&mut self.pending_bytes);
        if !self.pending.is_empty() {
            // The driver took only part of the burst (rare): what it left is dropped.
            bytes -= self.pending.iter().map(|m| m.len() as u64).sum::<u64>();
            let dropped = self.pending.free_all();
            let slot = &mut out.tally[self.port].0[crate::counters::DropReason::TxFull.index()];
            *slot = slot.saturating_add(u32::try_from(dropped).unwrap_or(u32::MAX));
        }
        out.tx[self.port].0 += sent as u64;
        out.tx[self.port].1 += bytes;
    }
}

/// Counts gathered between two flushes to the shared counters.
#[derive(Default)]
struct Stats {
    rx: [(u64, u64); 3],
    tx: [(u64, u64); 3],
    tally: [DropTally; 3],
}

struct Loop {
    nic_tx: TxQueue,
    kernel_tx: TxQueue,
    fabric: FabricIo,
    table: TableReader,
    polling: Polling,
    drain_tsc: u64,
    counters: CounterWriter,
    capture: capture::CaptureTap,
}

impl Loop {
    fn new(
        s: WorkerSetup,
        counters: CounterWriter,
        tsc_hz: u64,
        capture: capture::CaptureTap,
    ) -> Self {
        let drain_tsc = (u128::from(tsc_hz) * s.drain_interval.as_nanos() / 1_000_000_000) as u64;
        Self {
            nic_tx: TxQueue {
                queue: s.nic,
                pending: Burst::new(),
                pending_bytes: 0,
                port: PORT_NIC,
            },
            kernel_tx: TxQueue {
                queue: s.kernel,
                pending: Burst::new(),
                pending_bytes: 0,
                port: PORT_KERNEL,
            },
            fabric: s.fabric,
            table: s.table,
            polling: s.polling,
            drain_tsc: drain_tsc.max(1),
            counters,
            capture,
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut rx: Burst = Burst::new();
        let mut sessions = [SessionId(0); BURST_SIZE];
        let mut stats = Stats::default();
        let mut backoff = Backoff::new(self.polling);
        let mut last_drain = tsc();
        let mut iteration: u32 = 0;
        while !stop.load(Ordering::Relaxed) {
            self.table.refresh();
            self.capture.refresh();
            let mut work = 0;

            let n = self.nic_tx.queue.rx_burst(&mut rx);
            if n > 0 {
                work += n;
                self.dispatch_all(&mut rx, Source::Nic, PORT_NIC, None, &mut stats);
            }
            let n = self.kernel_tx.queue.rx_burst(&mut rx);
            if n > 0 {
                work += n;
                self.dispatch_all(&mut rx, Source::Kernel, PORT_KERNEL, None, &mut stats);
            }
            // A kernel-socket fabric costs a system call per poll, about as much as a whole
            // burst of steering: while the NIC and kernel keep the loop busy, poll it every
            // FABRIC_POLL_EVERY iterations (its socket buffer holds far more than arrives
            // meanwhile); when they are idle, every iteration.
            iteration = iteration.wrapping_add(1);
            if work == 0 || iteration % FABRIC_POLL_EVERY == 0 {
                let n = self
                    .fabric
                    .rx_burst(&mut rx, &mut sessions, &mut stats.tally[PORT_FABRIC]);
                if n > 0 {
                    work += n;
                    self.dispatch_all(
                        &mut rx,
                        Source::Nic,
                        PORT_FABRIC,
                        Some(&sessions),
                        &mut stats,
                    );
                }
            }

            let now = tsc();
            if now.wrapping_sub(last_drain) >= self.drain_tsc {
                self.drain(&mut stats);
                last_drain = now;
            }
            match backoff.after(work) {
                Idle::Spin => core::hint::spin_loop(),
                Idle::Sleep(d) => {
                    self.drain(&mut stats);
                    std::thread::sleep(d);
                    last_drain = tsc();
                }
            }
        }
        self.drain(&mut stats);
    }

    /// Steers every frame of `rx` (all from one port) and queues it where it goes.
    #[inline]
    fn dispatch_all(
        &mut self,
        rx: &mut Burst,
        source: Source,
        port: usize,
        sessions: Option<&[SessionId; BURST_SIZE]>,
        stats: &mut Stats,
    ) {
        let table = self.table.table();
        let capturing = self.capture.is_on();
        let mut i = 0;
        while let Some(m) = rx.pop_front() {
            let src = match sessions {
                Some(s) => Source::Session(s[i]),
                None => source,
            };
            i += 1;
            stats.rx[port].0 += 1;
            stats.rx[port].1 += m.len() as u64;
            let d = steer(table, src, m.data());
            if capturing {
                self.capture.offer(src, &d, m.data(), m.len());
            }
            match d {
                Decision::Kernel => self.kernel_tx.push(m, stats),
                Decision::Nic => self.nic_tx.push(m, stats),
                Decision::Session(s) => {
                    let (n, b) = self.fabric.tx(s, m, &mut stats.tally[PORT_FABRIC]);
                    stats.tx[PORT_FABRIC].0 += n;
                    stats.tx[PORT_FABRIC].1 += b;
                }
                Decision::Flood(f) => {
                    // Every copy but the last shares the buffer (a refcount bump, no copy):
                    // no destination mutates frame data on the way out.
                    let mut left = f.copies();
                    let mut m = Some(m);
                    let mut take = |m: &mut Option<Mbuf>| -> Option<Mbuf> {
                        left = left.saturating_sub(1);
                        if left == 0 {
                            m.take()
                        } else {
                            m.as_ref().map(Mbuf::clone_ref)
                        }
                    };
                    if f.kernel {
                        if let Some(c) = take(&mut m) {
                            self.kernel_tx.push(c, stats);
                        }
                    }
                    if f.nic {
                        if let Some(c) = take(&mut m) {
                            self.nic_tx.push(c, stats);
                        }
                    }
                    for s in f.sessions.iter() {
                        if let Some(c) = take(&mut m) {
                            let (n, b) = self.fabric.tx(s, c, &mut stats.tally[PORT_FABRIC]);
                            stats.tx[PORT_FABRIC].0 += n;
                            stats.tx[PORT_FABRIC].1 += b;
                        }
                    }
                }
                Decision::Drop(reason) => {
                    stats.tally[port].count(reason);
                    drop(m);
                }
            }
        }
    }

    /// Sends every queue and publishes the counts gathered since the last drain.
    fn drain(&mut self, stats: &mut Stats) {
        self.nic_tx.flush(stats);
        self.kernel_tx.flush(stats);
        let (n, b) = self.fabric.flush(&mut stats.tally[PORT_FABRIC]);
        stats.tx[PORT_FABRIC].0 += n;
        stats.tx[PORT_FABRIC].1 += b;
        for p in 0..PORT_NAMES.len() {
            let (rp, rb) = stats.rx[p];
            let (tp, tb) = stats.tx[p];
            if rp > 0 {
                self.counters.add_rx(p, rp, rb);
            }
            if tp > 0 {
                self.counters.add_tx(p, tp, tb);
            }
            if stats.tally[p].total() > 0 {
                self.counters.add_tally(p, &stats.tally[p]);
            }
        }
        *stats = Stats::default();
    }
}
