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
pub mod relay;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use backoff::{Backoff, Idle, Polling};
pub use fabric_io::{FabricIo, UdpIo};
pub use relay::{relays, Relay, Relayed};

use crate::counters::{worker_counters, CounterReader, CounterWriter, CountersSnapshot, DropTally};
use crate::dpdk::{tsc, Burst, DpdkError, Eal, Mbuf, PortQueue, BURST_SIZE};
use crate::steer::{classify, decide, Decision, MacTable, SessionId, Source, TableReader};

/// Counter index of the NIC port.
pub const PORT_NIC: usize = 0;
/// Counter index of the kernel exception port.
pub const PORT_KERNEL: usize = 1;
/// Counter index of the fabric.
pub const PORT_FABRIC: usize = 2;
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
    /// The fabric: on worker 0 only when there are several ([`FabricIo::None`] on the
    /// others, which pass their session frames to worker 0 through `relay`).
    pub fabric: FabricIo,
    /// This worker's part in getting session frames to the fabric's owner ([`relays`]).
    pub relay: Relay,
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

/// Frames a tx buffer holds: room for one whole rx burst on top of a burst that is not yet
/// full, so a steered burst always moves in with one [`Burst::scatter`].
const TX_ROOM: usize = 2 * BURST_SIZE;

/// One queue of a port, used for both rx and tx by this worker only (DPDK queues are
/// single-threaded). Outgoing frames wait in `pending` until a burst's worth is there or the
/// drain timer fires.
struct TxQueue {
    queue: PortQueue,
    pending: Burst<TX_ROOM>,
    /// Bytes in `pending`, summed as frames are queued.
    pending_bytes: u64,
    port: usize,
}

impl TxQueue {
    fn new(queue: PortQueue, port: usize) -> Self {
        Self {
            queue,
            pending: Burst::new(),
            pending_bytes: 0,
            port,
        }
    }

    /// Queues one frame (the per-frame path: floods, and bursts with mixed decisions).
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

    /// Sends once a full burst is waiting (what l2fwd does): full bursts go out at once,
    /// the rest on the drain timer.
    #[inline]
    fn flush_if_burst(&mut self, out: &mut Stats) {
        if self.pending.len() >= BURST_SIZE {
            self.flush(out);
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

/// Counts gathered in plain integers between two flushes to the shared counters (on the
/// drain timer: the shared block is written once per drain, not per frame or burst).
#[derive(Default)]
struct Stats {
    rx: [(u64, u64); 3],
    tx: [(u64, u64); 3],
    tally: [DropTally; 3],
}

/// Lanes of [`Burst::scatter`]: the two destinations a burst can move to in bulk.
const LANE_KERNEL: u8 = 0;
const LANE_NIC: u8 = 1;

/// Per-burst scratch, kept across bursts so that nothing is initialised per burst.
struct Scratch {
    decisions: [Decision; BURST_SIZE],
    lanes: [u8; BURST_SIZE],
    sessions: [SessionId; BURST_SIZE],
}

/// Steers `frames` into `decisions` and their tx lanes into `lanes` (Kernel and Nic are
/// the only bulk lanes; anything else clears the returned `bulk` flag), summing the bytes
/// received and the bytes bound for the NIC. Branch-free past the steering itself.
#[inline(always)]
fn steer_lanes(
    table: &MacTable,
    source: impl Fn(usize) -> Source,
    frames: &[Mbuf],
    decisions: &mut [Decision],
    lanes: &mut [u8],
) -> (bool, u64, u64) {
    let (mut rx_bytes, mut nic_bytes) = (0u64, 0u64);
    let mut bulk = true;
    for (i, ((m, d), l)) in frames
        .iter()
        .zip(decisions.iter_mut())
        .zip(lanes.iter_mut())
        .enumerate()
    {
        // classify and decide are inline(always); `steer` itself is only #[inline], and
        // was left out of line once this loop was specialised per source (a call per frame).
        *d = match classify(table, m.data()) {
            Ok(c) => decide(table, source(i), &c),
            Err(r) => Decision::Drop(r),
        };
        let len = m.len() as u64;
        let (lane, ok) = match d {
            Decision::Kernel => (LANE_KERNEL, true),
            Decision::Nic => (LANE_NIC, true),
            _ => (LANE_KERNEL, false),
        };
        *l = lane;
        bulk &= ok;
        rx_bytes += len;
        nic_bytes += len * u64::from(lane);
    }
    (bulk, rx_bytes, nic_bytes)
}

struct Loop {
    nic_tx: TxQueue,
    kernel_tx: TxQueue,
    fabric: FabricIo,
    relay: Relay,
    /// TSC ticks between two fabric polls while the NIC and kernel keep the loop busy (0:
    /// every iteration).
    fabric_poll_tsc: u64,
    table: TableReader,
    polling: Polling,
    drain_tsc: u64,
    counters: CounterWriter,
    capture: capture::CaptureTap,
    scratch: Scratch,
}

/// While the NIC and kernel ports keep the loop busy, a kernel-socket fabric (one
/// `recvmmsg` per poll, about as much as steering a whole burst) is polled at most this
/// often. This is the latency it adds to a fabric frame, and only while the other two
/// ports deliver frames on every iteration; when they are idle, or the fabric itself
/// delivered on its last poll, it is polled every iteration. The socket buffer holds far
/// more than arrives meanwhile.
pub const FABRIC_POLL_INTERVAL: Duration = Duration::from_micros(50);

fn ticks(tsc_hz: u64, d: Duration) -> u64 {
    u64::try_from(u128::from(tsc_hz) * d.as_nanos() / 1_000_000_000).unwrap_or(u64::MAX)
}

impl Loop {
    fn new(
        s: WorkerSetup,
        counters: CounterWriter,
        tsc_hz: u64,
        capture: capture::CaptureTap,
    ) -> Self {
        // Polling verbs is a completion-queue read in user space, cheap enough for every
        // iteration; a socket poll is a system call.
        let fabric_poll_tsc = match s.fabric {
            FabricIo::Udp(_) => ticks(tsc_hz, FABRIC_POLL_INTERVAL),
            _ => 0,
        };
        Self {
            nic_tx: TxQueue::new(s.nic, PORT_NIC),
            kernel_tx: TxQueue::new(s.kernel, PORT_KERNEL),
            fabric: s.fabric,
            relay: s.relay,
            fabric_poll_tsc,
            table: s.table,
            polling: s.polling,
            drain_tsc: ticks(tsc_hz, s.drain_interval).max(1),
            counters,
            capture,
            scratch: Scratch {
                decisions: [Decision::Nic; BURST_SIZE],
                lanes: [0; BURST_SIZE],
                sessions: [SessionId(0); BURST_SIZE],
            },
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut rx: Burst = Burst::new();
        let mut stats = Stats::default();
        let mut backoff = Backoff::new(self.polling);
        let mut now = tsc();
        let mut last_drain = now;
        let mut last_fabric = now;
        let mut fabric_busy = false;
        while !stop.load(Ordering::Relaxed) {
            self.table.refresh();
            self.capture.refresh();
            let mut work = 0;

            let n = self.nic_tx.queue.rx_burst(&mut rx);
            if n > 0 {
                work += n;
                self.forward(&mut rx, Source::Nic, PORT_NIC, false, &mut stats);
            }
            let n = self.kernel_tx.queue.rx_burst(&mut rx);
            if n > 0 {
                work += n;
                self.forward(&mut rx, Source::Kernel, PORT_KERNEL, false, &mut stats);
            }
            if work == 0 || fabric_busy || now.wrapping_sub(last_fabric) >= self.fabric_poll_tsc {
                last_fabric = now;
                let n = self.fabric.rx_burst(
                    &mut rx,
                    &mut self.scratch.sessions,
                    &mut stats.tally[PORT_FABRIC],
                );
                fabric_busy = n > 0;
                if n > 0 {
                    work += n;
                    self.forward(&mut rx, Source::Nic, PORT_FABRIC, true, &mut stats);
                }
            }

            if let Relay::Owner(_) = self.relay {
                work += self.send_relayed(&mut stats);
            }

            now = tsc();
            if now.wrapping_sub(last_drain) >= self.drain_tsc {
                self.drain(&mut stats);
                last_drain = now;
            }
            match backoff.after(work) {
                Idle::Spin => core::hint::spin_loop(),
                Idle::Sleep(d) => {
                    self.drain(&mut stats);
                    std::thread::sleep(d);
                    now = tsc();
                    last_drain = now;
                }
            }
        }
        self.drain(&mut stats);
    }

    /// Steers the whole burst `rx` (all from one port; from the fabric when `from_fabric`,
    /// each frame's session then in the scratch) and moves every frame where it goes.
    ///
    /// In bulk: prefetch every frame's header, steer them all, count the burst in locals,
    /// then, when every frame goes to the NIC or the kernel (the common case), move the
    /// whole burst to those tx buffers in one pass. A burst with any other decision (a
    /// session, a flood, a drop) is moved frame by frame, in order.
    #[inline]
    fn forward(
        &mut self,
        rx: &mut Burst,
        source: Source,
        port: usize,
        from_fabric: bool,
        stats: &mut Stats,
    ) {
        let table = self.table.table();
        let sc = &mut self.scratch;
        let frames = rx.as_slice();
        let n = frames.len().min(BURST_SIZE);
        let frames = &frames[..n];
        for m in frames {
            m.prefetch_data();
        }
        let decisions = &mut sc.decisions[..n];
        let lanes = &mut sc.lanes[..n];
        // One pass per burst, specialised per source (a constant source lets the rules'
        // match on it fold away): steer, lane and byte counts together, so each frame's
        // mbuf and decision are touched once.
        let (bulk, rx_bytes, nic_bytes) = if from_fabric {
            let sessions = &sc.sessions;
            steer_lanes(
                table,
                |i| Source::Session(sessions.get(i).copied().unwrap_or_default()),
                frames,
                decisions,
                lanes,
            )
        } else {
            match source {
                Source::Nic => steer_lanes(table, |_| Source::Nic, frames, decisions, lanes),
                Source::Kernel => steer_lanes(table, |_| Source::Kernel, frames, decisions, lanes),
                s => steer_lanes(table, |_| s, frames, decisions, lanes),
            }
        };
        stats.rx[port].0 += n as u64;
        stats.rx[port].1 += rx_bytes;

        if self.capture.is_on() {
            for (i, (m, d)) in frames.iter().zip(decisions.iter()).enumerate() {
                let src = if from_fabric {
                    Source::Session(sc.sessions[i])
                } else {
                    source
                };
                self.capture.offer(src, d, m.data(), m.len());
            }
        }

        if bulk
            && rx.scatter(
                &sc.lanes[..n],
                [&mut self.kernel_tx.pending, &mut self.nic_tx.pending],
            )
        {
            self.kernel_tx.pending_bytes += rx_bytes - nic_bytes;
            self.nic_tx.pending_bytes += nic_bytes;
        } else {
            for i in 0..n {
                let Some(m) = rx.pop_front() else { break };
                let d = self.scratch.decisions[i];
                self.deliver(m, d, port, stats);
            }
        }
        self.kernel_tx.flush_if_burst(stats);
        self.nic_tx.flush_if_burst(stats);
    }

    /// Moves one steered frame where its decision says.
    #[inline]
    fn deliver(&mut self, m: Mbuf, d: Decision, port: usize, stats: &mut Stats) {
        match d {
            Decision::Kernel => self.kernel_tx.push(m, stats),
            Decision::Nic => self.nic_tx.push(m, stats),
            Decision::Session(s) => self.send_to_session(s, m, stats),
            Decision::Flood(f) => {
                // Every copy but the last shares the buffer (a refcount bump, no copy): no
                // destination mutates frame data on the way out.
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
                        self.send_to_session(s, c, stats);
                    }
                }
            }
            Decision::Drop(reason) => {
                stats.tally[port].count(reason);
                drop(m);
            }
        }
    }

    /// Sends `m` over `session`: on the fabric if this worker drives it, else through the
    /// relay to the worker that does.
    #[inline]
    fn send_to_session(&mut self, session: SessionId, m: Mbuf, stats: &mut Stats) {
        if let Relay::Sender(ring) = &mut self.relay {
            if ring.push(Relayed { session, mbuf: m }).is_err() {
                // The error holds the frame: dropping it frees it.
                stats.tally[PORT_FABRIC].count(crate::counters::DropReason::FabricBackpressure);
            }
            return;
        }
        let (n, b) = self.fabric.tx(session, m, &mut stats.tally[PORT_FABRIC]);
        stats.tx[PORT_FABRIC].0 += n;
        stats.tx[PORT_FABRIC].1 += b;
    }

    /// The fabric owner's share of the relay: sends up to a burst from each other worker's
    /// ring. Returns how many frames it moved.
    fn send_relayed(&mut self, stats: &mut Stats) -> usize {
        let Relay::Owner(rings) = &mut self.relay else {
            return 0;
        };
        let mut moved = 0;
        for ring in rings.iter_mut() {
            for _ in 0..BURST_SIZE {
                let Ok(r) = ring.pop() else { break };
                let (n, b) = self
                    .fabric
                    .tx(r.session, r.mbuf, &mut stats.tally[PORT_FABRIC]);
                stats.tx[PORT_FABRIC].0 += n;
                stats.tx[PORT_FABRIC].1 += b;
                moved += 1;
            }
        }
        moved
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
