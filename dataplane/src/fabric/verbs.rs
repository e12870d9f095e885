//! The verbs fabric backend, worker side: tunnelled frames over RC queue pairs, straight
//! from and into mbufs.
//!
//! One worker owns one completion queue that all its QPs share, for sends and receives, so
//! one `ibv_poll_cq` per loop iteration serves every session. The packet pool's memory is
//! registered once ([`PoolRegistration`]), so that:
//!
//! - **receives are zero copy**: each posted receive is an mbuf's whole data room; on
//!   completion the mbuf is cut to the received length, the 4-byte data header
//!   ([`crate::fabric::header`]) is stripped by moving the data offset, and the mbuf goes to
//!   the worker with its session;
//! - **sends are zero copy**: a send gathers two SGEs, the data header from a small
//!   registered buffer and the mbuf's data, and the mbuf is held until the device is done
//!   with it; frames that fit the QP's inline limit together with the header are copied into
//!   the work request instead and freed at once.
//!
//! Sends are signalled selectively: one in [`SIGNAL_EVERY`], plus the last of a post when no
//! signalled send is outstanding (so a quiet link still gets its buffers back). RC
//! completes a QP's sends in order, so a signalled completion frees every mbuf up to it. A
//! full send queue, or a session that has no usable QP, is a counted drop
//! (`FabricBackpressure` / `UnknownSession`), never a wait.
//!
//! Sessions come and go at run time: control pushes [`Command`]s over a single-producer
//! ring ([`VerbsControl`]) and reads [`VerbsEvent`]s (a QP failed, a session was removed)
//! from another. Connections are made elsewhere (rdma_cm blocks); their receive rings are
//! posted by [`SessionPreparer`] in rdma_cm's prepare step, before the connection is
//! accepted or requested, so the peer never meets an empty receive queue.
//!
//! Work request ids carry no pointers: `[63] send | [62..32] generation | [31..0] index`.
//! The generation names one connection attempt (unique for the life of the process), the
//! index a slot of that session's receive or send ring. A completion of an unknown
//! generation is either *early* (the connection was established but its session has not
//! reached the worker yet: kept and replayed when it does) or *stale* (its session was
//! removed and its mbufs freed after its QP was destroyed: ignored). No mbuf is ever freed
//! while a QP that may still write into it exists: a session's rings are freed only after
//! its connection, and with it the QP, is destroyed.
#![allow(unsafe_code)]

use std::fmt;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use rdma_core_sys as sys;

use crate::counters::{DropReason, DropTally};
use crate::dpdk::{Burst, Mbuf, Mempool, BURST_SIZE};
use crate::fabric::header::{is_data_header, DATA_HEADER, DATA_HEADER_LEN};
use crate::fabric::txq::SessionTxQueue;
use crate::steer::{SessionId, MAX_SESSIONS};
use crate::verbs::{
    Access, CompletionQueue, Connection, Context, MemoryRegion, ProtectionDomain, QpConfig,
    QpSetup, QueuePair, RecvRequest, Sge, VerbsError, WcStatus, WorkCompletion,
};

/// One send in this many asks for a completion.
pub const SIGNAL_EVERY: u32 = 16;
/// Completions of sessions not yet known to the worker that it keeps for replay.
const EARLY_CAPACITY: usize = 256;
/// Events that wait for room in the event ring.
const EVENT_OVERFLOW: usize = 2 * MAX_SESSIONS;

const SEND_BIT: u64 = 1 << 63;
const GEN_MASK: u32 = 0x7FFF_FFFF;

/// Sizes of one worker's verbs fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerbsParams {
    /// Most sessions at once; session ids must be below this (at most 64).
    pub sessions: u16,
    /// Receives posted per QP (a power of two): the burst a peer can send before it has to
    /// wait for reposts.
    pub recv_depth: u32,
    /// Send queue depth per QP (a power of two, at least 2 × [`SIGNAL_EVERY`]).
    pub send_depth: u32,
    /// Largest inline send to ask for, header included (the provider may grant more).
    pub max_inline: u32,
    /// Transport and receiver-not-ready retries, RNR timer: see [`QpConfig`]. Every node
    /// must use the same values (the CM hands them to the peer).
    pub retry_count: u8,
    /// See [`QpConfig::rnr_retry_count`].
    pub rnr_retry_count: u8,
    /// See [`QpConfig::min_rnr_timer`].
    pub min_rnr_timer: u8,
}

impl Default for VerbsParams {
    fn default() -> Self {
        Self {
            sessions: 8,
            recv_depth: 256,
            send_depth: 256,
            max_inline: 128,
            retry_count: 7,
            rnr_retry_count: 7,
            min_rnr_timer: 12,
        }
    }
}

/// What went wrong while setting up the verbs fabric.
#[derive(Debug, thiserror::Error)]
pub enum VerbsFabricError {
    /// A verbs call failed.
    #[error(transparent)]
    Verbs(#[from] VerbsError),
    /// The parameters do not fit together.
    #[error("setting up the verbs fabric: {0}")]
    Params(String),
    /// The packet pool offered no memory to register.
    #[error("registering the packet pool {pool} with {device}: the pool reports no memory chunks")]
    NoPoolMemory {
        /// The pool's name.
        pool: String,
        /// The RDMA device.
        device: String,
    },
}

// ----------------------------------------------------------------------- work request ids

#[inline]
fn wr_id(send: bool, gen: u32, idx: u32) -> u64 {
    (if send { SEND_BIT } else { 0 }) | (u64::from(gen & GEN_MASK) << 32) | u64::from(idx)
}

/// (send, generation, index) of a work request id.
#[inline]
fn decode(id: u64) -> (bool, u32, u32) {
    (
        id & SEND_BIT != 0,
        ((id >> 32) as u32) & GEN_MASK,
        id as u32,
    )
}

/// Whether the send at ring index `idx` asks for a completion: one in [`SIGNAL_EVERY`],
/// and the last of a post when no signalled send is outstanding.
#[inline]
fn should_signal(idx: u32, last_of_post: bool, signal_outstanding: bool) -> bool {
    idx % SIGNAL_EVERY == SIGNAL_EVERY - 1 || (last_of_post && !signal_outstanding)
}

/// True if `idx` lies in the ring window `[head, tail)` (wrapping u32 counters).
#[inline]
fn in_window(idx: u32, head: u32, tail: u32) -> bool {
    idx.wrapping_sub(head) < tail.wrapping_sub(head)
}

// ------------------------------------------------------------------- pool registration

/// Sorted `(start, len)` chunks with touching neighbours merged: one registration covers
/// them all when the pool's memory is virtually contiguous.
fn merge_chunks(mut chunks: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    chunks.retain(|c| c.1 > 0);
    chunks.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(chunks.len());
    for (start, len) in chunks {
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= start => {
                let end = (start + len).max(last.0 + last.1);
                last.1 = end - last.0;
            }
            _ => out.push((start, len)),
        }
    }
    out
}

/// The packet pool's memory, registered with one protection domain for local writes.
pub struct PoolRegistration {
    /// (start, end, lkey) of each registered span.
    spans: Vec<(usize, usize, u32)>,
    // Field order is drop order: deregister before the pool handle may free the memory.
    _mrs: Vec<MemoryRegion>,
    pool: Mempool,
}

impl PoolRegistration {
    /// Registers every memory chunk of `pool` with `pd`.
    pub fn new(pd: &Arc<ProtectionDomain>, pool: &Mempool) -> Result<Self, VerbsFabricError> {
        let mut chunks = Vec::new();
        pool.for_each_mem_chunk(|addr, len| chunks.push((addr as usize, len)));
        let merged = merge_chunks(chunks);
        if merged.is_empty() {
            return Err(VerbsFabricError::NoPoolMemory {
                pool: pool.name().to_owned(),
                device: pd.context().name().to_owned(),
            });
        }
        let mut mrs = Vec::with_capacity(merged.len());
        let mut spans = Vec::with_capacity(merged.len());
        for (start, len) in merged {
            // SAFETY: the chunks are the pool's own memory, which stays mapped while any
            // handle to the pool lives; this struct holds one and drops it only after the
            // regions (field order).
            let mr =
                unsafe { MemoryRegion::register(pd, start as *mut u8, len, Access::LOCAL_WRITE)? };
            spans.push((start, start + len, mr.lkey()));
            mrs.push(mr);
        }
        Ok(Self {
            spans,
            _mrs: mrs,
            pool: pool.clone(),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Mempool {
        &self.pool
    }

    /// Number of registrations (memory spans) the pool needed.
    pub fn spans(&self) -> usize {
        self.spans.len()
    }

    /// The lkey of the registration that holds `addr..addr+len`.
    #[inline]
    fn lkey_of(&self, addr: usize, len: usize) -> Option<u32> {
        self.spans
            .iter()
            .find(|s| addr >= s.0 && addr + len <= s.1)
            .map(|s| s.2)
    }
}

impl fmt::Debug for PoolRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolRegistration")
            .field("pool", &self.pool.name())
            .field("spans", &self.spans.len())
            .finish()
    }
}

// ---------------------------------------------------------------------------- sessions

/// One connection's rings of posted mbufs, with the connection once it exists.
///
/// Invariant: while `conn` is `Some`, the QP may still own posted buffers, so the rings'
/// mbufs are freed only after the connection (and its QP) is destroyed: on drop, a shared
/// connection means the mbufs are leaked rather than freed under the device. Without a
/// connection the QP it was prepared for is already gone (rdma_cm's connect and accept
/// destroy it before they return an error).
struct Session {
    gen: u32,
    conn: Option<Arc<Connection>>,
    recv: Box<[Option<Mbuf>]>,
    /// Next receive index to post; `recv_done` is one past the last completed.
    recv_tail: u32,
    recv_done: u32,
    send: Box<[Option<Mbuf>]>,
    sq_head: u32,
    sq_tail: u32,
    last_signalled: Option<u32>,
    max_inline: u32,
    failed: Option<WcStatus>,
}

impl Session {
    fn new(gen: u32, recv_depth: u32, send_depth: u32) -> Self {
        Self {
            gen,
            conn: None,
            recv: (0..recv_depth).map(|_| None).collect(),
            recv_tail: 0,
            recv_done: 0,
            send: (0..send_depth).map(|_| None).collect(),
            sq_head: 0,
            sq_tail: 0,
            last_signalled: None,
            max_inline: 0,
            failed: None,
        }
    }

    fn mbufs_held(&self) -> usize {
        self.recv.iter().chain(self.send.iter()).flatten().count()
    }

    /// True when nothing but this session refers to its connection, so dropping it
    /// destroys the QP before the rings are freed.
    fn owns_connection(&self) -> bool {
        self.conn
            .as_ref()
            .map_or(true, |c| Arc::strong_count(c) == 1)
    }

    #[inline]
    fn recv_mask(&self) -> u32 {
        self.recv.len() as u32 - 1
    }

    #[inline]
    fn send_mask(&self) -> u32 {
        self.send.len() as u32 - 1
    }

    #[inline]
    fn signal_outstanding(&self) -> bool {
        self.last_signalled
            .is_some_and(|s| in_window(s, self.sq_head, self.sq_tail))
    }

    /// Frees the sends up to and including `idx` (RC completes them in order).
    #[inline]
    fn complete_sends(&mut self, idx: u32) {
        if !in_window(idx, self.sq_head, self.sq_tail) {
            return;
        }
        let mask = self.send_mask();
        let end = idx.wrapping_add(1);
        while self.sq_head != end {
            self.send[(self.sq_head & mask) as usize] = None;
            self.sq_head = self.sq_head.wrapping_add(1);
        }
    }

    /// Posts receives until the ring is full or `budget` is spent; mbufs come from `pool`.
    /// Returns the number posted, or why posting failed.
    fn post_receives(
        &mut self,
        qp: &QueuePair,
        reg: &PoolRegistration,
        budget: usize,
    ) -> Result<usize, PostError> {
        let depth = self.recv.len() as u32;
        let outstanding = self.recv_tail.wrapping_sub(self.recv_done);
        let want = (depth.saturating_sub(outstanding) as usize).min(budget);
        if want == 0 {
            return Ok(0);
        }
        let mut fresh: Burst = Burst::new();
        let mut posted = 0;
        let mut want = want;
        while want > 0 {
            let n = want.min(BURST_SIZE);
            if !Mbuf::alloc_bulk(reg.pool(), &mut fresh, n) {
                return if posted > 0 {
                    Ok(posted)
                } else {
                    Err(PostError::NoBuffer)
                };
            }
            let mut reqs: [MaybeUninit<RecvRequest<'static>>; BURST_SIZE] =
                [const { MaybeUninit::uninit() }; BURST_SIZE];
            let mut k = 0;
            let mask = self.recv_mask();
            while let Some(mut m) = fresh.pop_front() {
                let room = m.tailroom();
                let Some(buf) = m.append(room) else {
                    continue;
                };
                let addr = buf.as_mut_ptr() as usize;
                let Some(lkey) = reg.lkey_of(addr, usize::from(room)) else {
                    // Not pool memory: impossible for a pool mbuf; never post it.
                    continue;
                };
                let idx = self.recv_tail;
                let slot = &mut self.recv[(idx & mask) as usize];
                // A slot still held here belongs to a receive that completed without its
                // completion being seen (outstanding < depth proves it finished): free it.
                *slot = None;
                reqs[k].write(RecvRequest {
                    wr_id: wr_id(false, self.gen, idx),
                    // SAFETY: the data room lies inside the pool registration (lkey found
                    // above), which outlives every QP of this worker; the mbuf stays in
                    // the ring, untouched by Rust, until its completion or until the QP
                    // is destroyed.
                    sge: unsafe { Sge::from_raw(addr as u64, u32::from(room), lkey) },
                });
                *slot = Some(m);
                self.recv_tail = idx.wrapping_add(1);
                k += 1;
            }
            // SAFETY: the first k entries were written just above.
            let reqs = unsafe {
                std::slice::from_raw_parts(reqs.as_ptr().cast::<RecvRequest<'static>>(), k)
            };
            qp.post_recv_batch(reqs).map_err(PostError::Verbs)?;
            posted += k;
            want -= n;
        }
        Ok(posted)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        match Arc::try_unwrap(conn) {
            // Disconnects and destroys the QP; the rings are freed after this (fields).
            Ok(conn) => drop(conn),
            Err(shared) => {
                let _ = shared.disconnect();
                let leaked = self.mbufs_held();
                for m in self.recv.iter_mut().chain(self.send.iter_mut()) {
                    if let Some(m) = m.take() {
                        let _ = m.into_raw();
                    }
                }
                tracing::warn!(
                    peer = %shared.peer_addr(),
                    leaked,
                    "a verbs session went away while its connection was still shared; its posted mbufs are leaked rather than freed under the device"
                );
            }
        }
    }
}

#[derive(Debug)]
enum PostError {
    NoBuffer,
    Verbs(VerbsError),
}

/// A connected session on its way to the worker: the connection and the receive ring
/// posted on its QP before it was established.
pub struct NewSession(Session);

impl NewSession {
    /// The connection (clone it to watch its status).
    pub fn connection(&self) -> &Arc<Connection> {
        self.0
            .conn
            .as_ref()
            .expect("a NewSession always holds its connection")
    }

    /// The generation that names this connection in work request ids and events.
    pub fn generation(&self) -> u32 {
        self.0.gen
    }
}

impl fmt::Debug for NewSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSession")
            .field("gen", &self.0.gen)
            .field("conn", &self.0.conn)
            .finish()
    }
}

/// Posts the receive ring of a connection being set up; used inside rdma_cm's prepare step
/// (`Connection::connect_with`, `Listener::accept_with`) and then turned into a
/// [`NewSession`] with [`Prepared::finish`]. Dropping it unfinished frees the posted mbufs:
/// only do that once the QP is gone (which is the case when connect/accept failed).
pub struct Prepared {
    session: Session,
    reg: Arc<PoolRegistration>,
}

impl Prepared {
    /// Posts the whole receive ring on `qp` (call from the prepare closure).
    pub fn post(&mut self, qp: &QueuePair) -> crate::verbs::Result<()> {
        let budget = self.session.recv.len();
        match self.session.post_receives(qp, &self.reg, budget) {
            Ok(n) if n == budget => Ok(()),
            Ok(n) => Err(VerbsError::invalid(
                "posting the receive ring of a new fabric session",
                format!("only {n} of {budget} mbufs were free in the packet pool"),
            )),
            Err(PostError::NoBuffer) => Err(VerbsError::invalid(
                "posting the receive ring of a new fabric session",
                "the packet pool is exhausted",
            )),
            Err(PostError::Verbs(e)) => Err(e),
        }
    }

    /// The generation that names this attempt.
    pub fn generation(&self) -> u32 {
        self.session.gen
    }

    /// Attaches the established connection whose QP got the ring.
    pub fn finish(mut self, conn: Connection) -> NewSession {
        self.session.max_inline = conn.qp().max_inline_data();
        self.session.conn = Some(Arc::new(conn));
        NewSession(self.session)
    }
}

/// Makes [`Prepared`] rings for new connections, from any thread. Cheap to clone.
#[derive(Clone)]
pub struct SessionPreparer {
    setup: QpSetup,
    reg: Arc<PoolRegistration>,
    next_gen: Arc<AtomicU32>,
    recv_depth: u32,
    send_depth: u32,
}

impl fmt::Debug for SessionPreparer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionPreparer")
            .field("device", &self.setup.context().name())
            .field("recv_depth", &self.recv_depth)
            .finish()
    }
}

impl SessionPreparer {
    /// The PD, CQ and sizes that every connection of this worker must be created with.
    pub fn setup(&self) -> &QpSetup {
        &self.setup
    }

    /// A fresh ring for one connection attempt, with a new generation.
    pub fn prepare(&self) -> Prepared {
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed) & GEN_MASK;
        Prepared {
            session: Session::new(gen, self.recv_depth, self.send_depth),
            reg: Arc::clone(&self.reg),
        }
    }
}

// ------------------------------------------------------------------ control <-> worker

/// A change of sessions, from control to the worker.
pub enum Command {
    /// Start carrying `session` over this connection (replacing any previous one).
    Add {
        /// The session id (the steering table's).
        session: SessionId,
        /// The connection with its posted receives.
        new: Box<NewSession>,
    },
    /// Stop carrying `session` if it is still generation `gen`: destroy its QP and free
    /// its mbufs.
    Remove {
        /// The session id.
        session: SessionId,
        /// The generation to remove.
        gen: u32,
    },
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Add { session, new } => f
                .debug_struct("Add")
                .field("session", session)
                .field("gen", &new.generation())
                .finish(),
            Command::Remove { session, gen } => f
                .debug_struct("Remove")
                .field("session", session)
                .field("gen", gen)
                .finish(),
        }
    }
}

/// News from the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerbsEvent {
    /// A work request of the session failed: the QP is in the error state and must be
    /// re-established. Reported once per generation.
    Failed {
        /// The session.
        session: SessionId,
        /// Its generation.
        gen: u32,
        /// The first error status seen.
        status: WcStatus,
    },
    /// The session was removed.
    Removed {
        /// The session.
        session: SessionId,
        /// Its generation.
        gen: u32,
        /// Mbufs freed with it (its posted receives and unfinished sends).
        freed: usize,
        /// Its connection was still shared when removed: QP and mbufs are released when
        /// the last other holder lets go.
        deferred: bool,
    },
}

/// Why [`VerbsControl::add`] gave a session back.
pub enum AddError {
    /// The command ring is full: try again later.
    Full(Box<NewSession>),
    /// The session id is not below [`VerbsControl::capacity`]: a bug of the caller.
    OutOfRange(Box<NewSession>),
}

impl fmt::Debug for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddError::Full(_) => f.write_str("Full"),
            AddError::OutOfRange(_) => f.write_str("OutOfRange"),
        }
    }
}

/// Control's ends of the two rings.
pub struct VerbsControl {
    cmds: rtrb::Producer<Command>,
    events: rtrb::Consumer<VerbsEvent>,
    sessions: u16,
    counters: Arc<CounterCells>,
}

impl fmt::Debug for VerbsControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerbsControl")
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl VerbsControl {
    /// Hands `new` to the worker as `session`; gives it back if that cannot be done now.
    pub fn add(&mut self, session: SessionId, new: Box<NewSession>) -> Result<(), AddError> {
        if session.0 >= self.sessions {
            return Err(AddError::OutOfRange(new));
        }
        match self.cmds.push(Command::Add { session, new }) {
            Ok(()) => Ok(()),
            Err(rtrb::PushError::Full(Command::Add { new, .. })) => Err(AddError::Full(new)),
            Err(rtrb::PushError::Full(Command::Remove { .. })) => {
                unreachable!("pushed an Add")
            }
        }
    }

    /// Session ids must be below this.
    pub fn capacity(&self) -> u16 {
        self.sessions
    }

    /// Asks the worker to remove `session` if it is still generation `gen`. False when the
    /// ring is full (try again later). Drop every other reference to the session's
    /// connection first, so the worker can destroy the QP before it frees the mbufs.
    pub fn remove(&mut self, session: SessionId, gen: u32) -> bool {
        self.cmds.push(Command::Remove { session, gen }).is_ok()
    }

    /// The next event from the worker, if any.
    pub fn poll_event(&mut self) -> Option<VerbsEvent> {
        self.events.pop().ok()
    }

    /// The worker's counters as it last published them (at its last flush: every drain
    /// interval while it runs).
    pub fn counters(&self) -> VerbsCounters {
        self.counters.load()
    }
}

/// The three parts of a worker's verbs fabric: the worker's, control's, and the connection
/// makers'.
#[derive(Debug)]
pub struct VerbsParts {
    /// Goes into the worker as `FabricIo::Verbs`.
    pub io: VerbsIo,
    /// Stays with control.
    pub control: VerbsControl,
    /// For the threads that make connections.
    pub preparer: SessionPreparer,
}

/// Creates a worker's verbs fabric on `ctx`: PD, the shared CQ, the pool registration, the
/// header buffer and the rings.
pub fn new_fabric(
    ctx: &Context,
    pool: &Mempool,
    params: VerbsParams,
) -> Result<VerbsParts, VerbsFabricError> {
    let p = params;
    if p.sessions == 0 || usize::from(p.sessions) > MAX_SESSIONS {
        return Err(VerbsFabricError::Params(format!(
            "{} sessions asked for; 1 to {MAX_SESSIONS} are supported",
            p.sessions
        )));
    }
    if !p.recv_depth.is_power_of_two() || p.recv_depth < 2 || p.recv_depth > 1 << 15 {
        return Err(VerbsFabricError::Params(format!(
            "receive depth {} must be a power of two from 2 to 32768",
            p.recv_depth
        )));
    }
    if !p.send_depth.is_power_of_two() || p.send_depth < 2 * SIGNAL_EVERY || p.send_depth > 1 << 15
    {
        return Err(VerbsFabricError::Params(format!(
            "send depth {} must be a power of two from {} to 32768",
            p.send_depth,
            2 * SIGNAL_EVERY
        )));
    }
    let pd = ProtectionDomain::new(ctx)?;
    // Every posted request completes once at most, so this bounds the queue: sessions ×
    // (receives + sends), with room for the rings of connections still being set up.
    let cqe = (u32::from(p.sessions) + 2) * (p.recv_depth + p.send_depth);
    let cq = CompletionQueue::new(ctx, cqe, None, 0)?;
    let setup = QpSetup::new(
        Arc::clone(&pd),
        Arc::clone(&cq),
        Arc::clone(&cq),
        QpConfig {
            max_send_wr: p.send_depth,
            max_recv_wr: p.recv_depth,
            max_send_sge: 2,
            max_recv_sge: 1,
            max_inline_data: p.max_inline,
            retry_count: p.retry_count,
            rnr_retry_count: p.rnr_retry_count,
            min_rnr_timer: p.min_rnr_timer,
        },
    )?;
    let reg = Arc::new(PoolRegistration::new(&pd, pool)?);
    let mut header = MemoryRegion::alloc(&pd, 64, Access::NONE)?;
    header.write(0, &DATA_HEADER)?;
    let (cmd_tx, cmd_rx) = rtrb::RingBuffer::new(4 * usize::from(p.sessions) + 16);
    let (ev_tx, ev_rx) = rtrb::RingBuffer::new(4 * usize::from(p.sessions) + 16);
    let published = Arc::new(CounterCells::default());
    let io = VerbsIo {
        slots: (0..p.sessions).map(|_| None).collect(),
        by_gen: Vec::with_capacity(usize::from(p.sessions)),
        zombies: Vec::with_capacity(usize::from(p.sessions)),
        cmds: cmd_rx,
        events: Events {
            ring: ev_tx,
            overflow: Vec::with_capacity(EVENT_OVERFLOW),
        },
        early: Vec::with_capacity(EARLY_CAPACITY),
        newest_gen: None,
        wcs: Box::new([WorkCompletion::default(); BURST_SIZE]),
        tx: SessionTxQueue::new(),
        owed: 0,
        header_sge: (header.addr() as u64, header.lkey()),
        counters: VerbsCounters::default(),
        published: Arc::clone(&published),
        cq,
        _header: header,
        reg: Arc::clone(&reg),
    };
    Ok(VerbsParts {
        io,
        control: VerbsControl {
            cmds: cmd_tx,
            events: ev_rx,
            sessions: p.sessions,
            counters: published,
        },
        preparer: SessionPreparer {
            setup,
            reg,
            next_gen: Arc::new(AtomicU32::new(1)),
            recv_depth: p.recv_depth,
            send_depth: p.send_depth,
        },
    })
}

// ------------------------------------------------------------------------- worker side

/// Plain counters of the worker's verbs fabric, beyond the port counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerbsCounters {
    /// Frames sent inline (copied into the work request).
    pub inline_sends: u64,
    /// Frames sent from the mbuf (two SGEs, zero copy).
    pub gather_sends: u64,
    /// Signalled sends.
    pub signalled: u64,
    /// Completions that arrived before their session reached the worker.
    pub early: u64,
    /// Completions of removed sessions, ignored.
    pub stale: u64,
    /// Error completions (flushes included).
    pub errors: u64,
    /// Sessions added and removed.
    pub added: u64,
    /// See `added`.
    pub removed: u64,
}

/// [`VerbsCounters`] as the worker publishes them for control: the worker is the only
/// writer and stores whole values (no read-modify-write), control loads them.
#[derive(Debug, Default)]
struct CounterCells([AtomicU64; 8]);

impl CounterCells {
    fn store(&self, c: &VerbsCounters) {
        let v = [
            c.inline_sends,
            c.gather_sends,
            c.signalled,
            c.early,
            c.stale,
            c.errors,
            c.added,
            c.removed,
        ];
        for (cell, v) in self.0.iter().zip(v) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    fn load(&self) -> VerbsCounters {
        let r = |i: usize| self.0[i].load(Ordering::Relaxed);
        VerbsCounters {
            inline_sends: r(0),
            gather_sends: r(1),
            signalled: r(2),
            early: r(3),
            stale: r(4),
            errors: r(5),
            added: r(6),
            removed: r(7),
        }
    }
}

struct Events {
    ring: rtrb::Producer<VerbsEvent>,
    overflow: Vec<VerbsEvent>,
}

impl Events {
    fn send(&mut self, ev: VerbsEvent) {
        if !self.overflow.is_empty() || self.ring.push(ev).is_err() {
            // Kept in order behind the ring; with a full overflow the event is lost, and
            // control still sees the QP state in Connection::status.
            if self.overflow.len() < self.overflow.capacity() {
                self.overflow.push(ev);
            }
        }
    }

    fn retry(&mut self) {
        let mut sent = 0;
        for ev in &self.overflow {
            if self.ring.push(*ev).is_err() {
                break;
            }
            sent += 1;
        }
        self.overflow.drain(..sent);
    }
}

/// The worker's side of the verbs fabric.
pub struct VerbsIo {
    slots: Box<[Option<Session>]>,
    /// (generation, session index) of every session in `slots`.
    by_gen: Vec<(u32, u16)>,
    /// Removed sessions whose connection is still shared; freed once it is not.
    zombies: Vec<Session>,
    cmds: rtrb::Consumer<Command>,
    events: Events,
    early: Vec<WorkCompletion>,
    newest_gen: Option<u32>,
    /// Boxed: the worker moves its fabric by value, and this is most of its size.
    wcs: Box<[WorkCompletion; BURST_SIZE]>,
    tx: SessionTxQueue,
    /// Sessions (bit = index) with receives to repost.
    owed: u64,
    header_sge: (u64, u32),
    counters: VerbsCounters,
    published: Arc<CounterCells>,
    // Drop order: sessions (QPs) above, then the CQ, the header region, the pool
    // registration.
    cq: Arc<CompletionQueue>,
    _header: MemoryRegion,
    reg: Arc<PoolRegistration>,
}

impl fmt::Debug for VerbsIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerbsIo")
            .field("sessions", &self.by_gen.len())
            .field("zombies", &self.zombies.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl VerbsIo {
    /// The counters.
    pub fn counters(&self) -> &VerbsCounters {
        &self.counters
    }

    #[inline]
    fn slot_of_gen(&self, gen: u32) -> Option<usize> {
        self.by_gen
            .iter()
            .find(|(g, _)| *g == gen)
            .map(|(_, s)| usize::from(*s))
    }

    /// Applies control's commands, frees zombies that became free, retries events.
    fn poll_commands(
        &mut self,
        out: &mut Burst,
        sessions: &mut [SessionId; BURST_SIZE],
        tally: &mut DropTally,
    ) -> usize {
        let mut delivered = 0;
        while let Ok(cmd) = self.cmds.pop() {
            match cmd {
                Command::Add { session, new } => {
                    delivered += self.add_session(session, *new, out, sessions, tally);
                }
                Command::Remove { session, gen } => {
                    let i = usize::from(session.0);
                    if self
                        .slots
                        .get(i)
                        .and_then(Option::as_ref)
                        .is_some_and(|s| s.gen == gen)
                    {
                        self.remove_slot(i);
                    }
                }
            }
        }
        if !self.zombies.is_empty() {
            let mut i = 0;
            while i < self.zombies.len() {
                if self.zombies[i].owns_connection() {
                    let z = self.zombies.swap_remove(i);
                    drop(z);
                } else {
                    i += 1;
                }
            }
        }
        if !self.events.overflow.is_empty() {
            self.events.retry();
        }
        delivered
    }

    fn add_session(
        &mut self,
        session: SessionId,
        new: NewSession,
        out: &mut Burst,
        sessions: &mut [SessionId; BURST_SIZE],
        tally: &mut DropTally,
    ) -> usize {
        let i = usize::from(session.0);
        let s = new.0;
        if i >= self.slots.len() {
            // Control checks the range; a bad id still must not take the QP down with
            // mbufs freed under it: Session's drop handles that.
            drop(s);
            return 0;
        }
        if self.slots[i].is_some() {
            self.remove_slot(i);
        }
        let gen = s.gen;
        self.by_gen.push((gen, session.0));
        self.newest_gen = Some(self.newest_gen.map_or(gen, |g| g.max(gen)));
        self.slots[i] = Some(s);
        self.counters.added += 1;
        // Completions that beat the session here, in arrival order; older generations'
        // leftovers go.
        let mut early = std::mem::take(&mut self.early);
        let mut keep = 0;
        let mut delivered = 0;
        for k in 0..early.len() {
            let wc = early[k];
            let (_, g, _) = decode(wc.wr_id());
            if g == gen {
                delivered += self.on_completion(wc, i, out, sessions, tally);
            } else if g > gen {
                early[keep] = wc;
                keep += 1;
            }
        }
        early.truncate(keep);
        self.early = early;
        delivered
    }

    fn remove_slot(&mut self, i: usize) {
        let Some(s) = self.slots[i].take() else {
            return;
        };
        self.by_gen.retain(|(g, _)| *g != s.gen);
        self.owed &= !(1u64 << i);
        self.counters.removed += 1;
        let session = SessionId(i as u16);
        let gen = s.gen;
        let freed = s.mbufs_held();
        if s.owns_connection() {
            drop(s);
            self.events.send(VerbsEvent::Removed {
                session,
                gen,
                freed,
                deferred: false,
            });
        } else {
            if let Some(c) = &s.conn {
                // Stop the device from using the buffers; they are freed with the QP.
                let _ = c.disconnect();
            }
            self.zombies.push(s);
            self.events.send(VerbsEvent::Removed {
                session,
                gen,
                freed: 0,
                deferred: true,
            });
        }
    }

    fn fail(&mut self, i: usize, status: WcStatus) {
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        if s.failed.is_some() {
            return;
        }
        s.failed = Some(status);
        let gen = s.gen;
        self.events.send(VerbsEvent::Failed {
            session: SessionId(i as u16),
            gen,
            status,
        });
    }

    /// Handles one completion of the session in slot `i`. Returns 1 if a frame was
    /// delivered into `out`.
    #[inline]
    fn on_completion(
        &mut self,
        wc: WorkCompletion,
        i: usize,
        out: &mut Burst,
        sessions: &mut [SessionId; BURST_SIZE],
        tally: &mut DropTally,
    ) -> usize {
        let (send, _, idx) = decode(wc.wr_id());
        let ok = wc.is_ok();
        if !ok {
            self.counters.errors += 1;
        }
        let Some(s) = self.slots[i].as_mut() else {
            return 0;
        };
        if send {
            s.complete_sends(idx);
            if !ok {
                self.fail(i, wc.status());
            }
            return 0;
        }
        // Receives complete in order, so a completion outside the window of outstanding
        // receives is a leftover whose slot has been reused: never touch that slot.
        if !in_window(idx, s.recv_done, s.recv_tail) {
            self.counters.stale += 1;
            return 0;
        }
        let mask = s.recv_mask();
        let m = s.recv[(idx & mask) as usize].take();
        s.recv_done = idx.wrapping_add(1);
        if !ok {
            drop(m);
            self.fail(i, wc.status());
            return 0;
        }
        if s.failed.is_none() {
            self.owed |= 1u64 << i;
        }
        let Some(mut m) = m else {
            tally.count(DropReason::MalformedFabric);
            return 0;
        };
        let got = wc.byte_len() as usize;
        let room = m.len();
        let framed = got <= room
            && got >= DATA_HEADER_LEN + 14
            && m.trim((room - got) as u16).is_some()
            && is_data_header(&m.data()[..DATA_HEADER_LEN])
            && m.adj(DATA_HEADER_LEN as u16).is_some();
        if !framed {
            tally.count(DropReason::MalformedFabric);
            return 0;
        }
        let at = out.len();
        match out.push(m) {
            Ok(()) => {
                sessions[at] = SessionId(i as u16);
                1
            }
            Err(m) => {
                drop(m);
                tally.count(DropReason::NoBuffer);
                0
            }
        }
    }

    /// Reposts receives for the sessions that used some.
    #[inline]
    fn repost(&mut self, tally: &mut DropTally) {
        let mut owed = self.owed;
        while owed != 0 {
            let i = owed.trailing_zeros() as usize;
            owed &= owed - 1;
            let Some(s) = self.slots[i].as_mut() else {
                self.owed &= !(1u64 << i);
                continue;
            };
            // Taken out for the call (a move, not a reference-count update) so that the
            // rings can be borrowed mutably beside it.
            let Some(conn) = s.conn.take() else {
                continue;
            };
            let posted = s.post_receives(conn.qp(), &self.reg, BURST_SIZE);
            s.conn = Some(conn);
            match posted {
                Ok(_) => {
                    if s.recv_tail.wrapping_sub(s.recv_done) as usize >= s.recv.len() {
                        self.owed &= !(1u64 << i);
                    }
                }
                // Left owed: the next iteration tries again.
                Err(PostError::NoBuffer) => tally.count(DropReason::NoBuffer),
                Err(PostError::Verbs(_)) => {
                    self.owed &= !(1u64 << i);
                    self.fail(i, WcStatus::LocalQpOperation);
                }
            }
        }
    }

    /// Receives up to a burst of frames into `out` (see `FabricIo::rx_burst`).
    #[inline]
    pub(crate) fn rx_burst(
        &mut self,
        out: &mut Burst,
        sessions: &mut [SessionId; BURST_SIZE],
        tally: &mut DropTally,
    ) -> usize {
        let mut delivered = 0;
        if !self.cmds.is_empty() || !self.zombies.is_empty() || !self.events.overflow.is_empty() {
            delivered += self.poll_commands(out, sessions, tally);
        }
        let room = BURST_SIZE - out.len();
        if room == 0 {
            return delivered;
        }
        let n = match self.cq.poll(&mut self.wcs[..room]) {
            Ok(got) => got.len(),
            Err(_) => {
                tally.count(DropReason::MalformedFabric);
                0
            }
        };
        for k in 0..n {
            let wc = self.wcs[k];
            let (send, gen, _) = decode(wc.wr_id());
            match self.slot_of_gen(gen) {
                Some(i) => delivered += self.on_completion(wc, i, out, sessions, tally),
                None if !send && self.newest_gen.map_or(true, |g| gen > g) => {
                    self.counters.early += 1;
                    if self.early.len() < self.early.capacity() {
                        self.early.push(wc);
                    } else {
                        // Its mbuf stays in the ring and is freed when the ring wraps
                        // onto it, or with the session.
                        tally.count(DropReason::UnknownSession);
                    }
                }
                None => self.counters.stale += 1,
            }
        }
        if self.owed != 0 {
            self.repost(tally);
        }
        delivered
    }

    /// The queue `FabricIo::tx` fills and [`VerbsIo::flush`] posts.
    #[inline]
    pub(crate) fn tx_queue(&mut self) -> &mut SessionTxQueue {
        &mut self.tx
    }

    /// Posts everything queued, one chain (one doorbell) per session. Returns (frames,
    /// bytes) posted, headers included in the bytes.
    #[inline]
    pub(crate) fn flush(&mut self, tally: &mut DropTally) -> (u64, u64) {
        // The worker flushes every drain interval: the place to publish the counters.
        self.published.store(&self.counters);
        let n = self.tx.len();
        if n == 0 {
            return (0, 0);
        }
        let mut frames: [Option<Mbuf>; BURST_SIZE] = [const { None }; BURST_SIZE];
        for (k, m) in self.tx.drain().enumerate() {
            frames[k] = Some(m);
        }
        let mut total = (0, 0);
        let mut taken: u32 = 0;
        for k in 0..n {
            if taken & (1 << k) != 0 {
                continue;
            }
            let session = self.tx.session_at(k);
            let mut group = [0usize; BURST_SIZE];
            let mut g = 0;
            for j in k..n {
                if taken & (1 << j) == 0 && self.tx.session_at(j) == session {
                    taken |= 1 << j;
                    group[g] = j;
                    g += 1;
                }
            }
            let (f, b) = self.post_group(session, &mut frames, &group[..g], tally);
            total.0 += f;
            total.1 += b;
        }
        total
    }

    /// Posts the frames `idxs` of `frames` to `session` as one chain.
    fn post_group(
        &mut self,
        session: SessionId,
        frames: &mut [Option<Mbuf>; BURST_SIZE],
        idxs: &[usize],
        tally: &mut DropTally,
    ) -> (u64, u64) {
        let i = usize::from(session.0);
        let drop_all = |frames: &mut [Option<Mbuf>; BURST_SIZE], reason, tally: &mut DropTally| {
            for &j in idxs {
                frames[j] = None;
            }
            tally.add(reason, idxs.len() as u64);
        };
        let Some(s) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            drop_all(frames, DropReason::UnknownSession, tally);
            return (0, 0);
        };
        let Some(conn) = s.conn.as_ref() else {
            drop_all(frames, DropReason::UnknownSession, tally);
            return (0, 0);
        };
        if s.failed.is_some() {
            drop_all(frames, DropReason::FabricBackpressure, tally);
            return (0, 0);
        }
        let depth = s.send.len() as u32;
        let free = depth - s.sq_tail.wrapping_sub(s.sq_head);
        let (hdr_addr, hdr_lkey) = self.header_sge;

        let mut sges = [[sys::ibv_sge::default(); 2]; BURST_SIZE];
        let mut wrs: [MaybeUninit<sys::ibv_send_wr>; BURST_SIZE] =
            [const { MaybeUninit::uninit() }; BURST_SIZE];
        // For each built request: the frame's index in `frames`, whether it is inline.
        let mut built = [(0usize, false, false); BURST_SIZE];
        let mut k = 0;
        let mut sig_out = s.signal_outstanding();
        let last = idxs.len().min(free as usize);
        for (q, &j) in idxs.iter().enumerate() {
            if q >= last {
                frames[j] = None;
                tally.count(DropReason::FabricBackpressure);
                continue;
            }
            let Some(m) = frames[j].as_ref() else {
                continue;
            };
            let data = m.data();
            let len = data.len();
            let inline = DATA_HEADER_LEN + len <= s.max_inline as usize;
            let lkey = if inline {
                0
            } else {
                match self.reg.lkey_of(data.as_ptr() as usize, len) {
                    Some(l) => l,
                    None => {
                        // An mbuf from outside the registered pool: cannot be gathered.
                        frames[j] = None;
                        tally.count(DropReason::NoBuffer);
                        continue;
                    }
                }
            };
            let idx = s.sq_tail.wrapping_add(k as u32);
            let signalled = should_signal(idx, q + 1 == last, sig_out);
            sig_out |= signalled;
            sges[k] = [
                sys::ibv_sge {
                    addr: hdr_addr,
                    length: DATA_HEADER_LEN as u32,
                    lkey: hdr_lkey,
                },
                sys::ibv_sge {
                    addr: data.as_ptr() as u64,
                    length: len as u32,
                    lkey,
                },
            ];
            let mut flags = 0;
            if signalled {
                flags |= sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            if inline {
                flags |= sys::ibv_send_flags::IBV_SEND_INLINE.0;
            }
            wrs[k].write(sys::ibv_send_wr {
                wr_id: wr_id(true, s.gen, idx),
                next: ptr::null_mut(),
                sg_list: sges[k].as_mut_ptr(),
                num_sge: 2,
                opcode: sys::ibv_wr_opcode::IBV_WR_SEND,
                send_flags: flags,
                ..Default::default()
            });
            built[k] = (j, inline, signalled);
            k += 1;
        }
        if k == 0 {
            return (0, 0);
        }
        // Chain in place: the arrays do not move until the post returns.
        for w in 0..k - 1 {
            let next = wrs[w + 1].as_mut_ptr();
            // SAFETY: wrs[w] was initialised above; only its `next` field is written.
            unsafe { (*wrs[w].as_mut_ptr()).next = next };
        }
        let first = wrs[0].as_mut_ptr();
        let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is alive (the session holds its connection); wrs[..k] are
        // initialised and chained, the last with next = NULL; each sg_list points at two
        // SGEs in `sges`, which lives until after the call. Gathered data lies in the pool
        // registration (lkey checked) and its mbuf is kept in the send ring until the
        // device is done; inline data is copied during the call.
        let rc = unsafe { sys::nicproxy_ibv_post_send(conn.qp().as_ptr(), first, &mut bad) };
        let posted = if rc == 0 {
            k
        } else if bad.is_null() {
            0
        } else {
            // SAFETY: on failure bad points at the first unposted request of our chain,
            // which lies in `wrs`; both pointers are into the same array.
            let off = unsafe { bad.offset_from(first) };
            usize::try_from(off).unwrap_or(0).min(k)
        };
        let mut bytes = 0u64;
        let mask = s.send_mask();
        for (w, &(j, inline, signalled)) in built[..k].iter().enumerate() {
            let m = frames[j].take();
            if w >= posted {
                drop(m);
                tally.count(DropReason::FabricBackpressure);
                continue;
            }
            let idx = s.sq_tail.wrapping_add(w as u32);
            bytes += m.as_ref().map_or(0, |m| m.len() as u64) + DATA_HEADER_LEN as u64;
            if signalled {
                s.last_signalled = Some(idx);
                self.counters.signalled += 1;
            }
            if inline {
                self.counters.inline_sends += 1;
                drop(m);
            } else {
                self.counters.gather_sends += 1;
                s.send[(idx & mask) as usize] = m;
            }
        }
        s.sq_tail = s.sq_tail.wrapping_add(posted as u32);
        if rc != 0 && rc != libc::ENOMEM {
            self.fail(i, WcStatus::LocalQpOperation);
        }
        (posted as u64, bytes)
    }
}

impl Drop for VerbsIo {
    fn drop(&mut self) {
        // Sessions before the CQ and the registration (field order does the rest); each
        // destroys its QP before freeing its mbufs, or leaks them if still shared.
        for s in self.slots.iter_mut() {
            drop(s.take());
        }
        self.zombies.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_request_ids_round_trip() {
        for (send, gen, idx) in [
            (false, 1, 0),
            (true, GEN_MASK, u32::MAX),
            (true, 12345, 7),
            (false, 0x4000_0000, 0x8000_0001),
        ] {
            assert_eq!(decode(wr_id(send, gen, idx)), (send, gen, idx));
        }
        // A generation above 31 bits wraps into range instead of setting the send bit.
        assert_eq!(decode(wr_id(false, u32::MAX, 3)), (false, GEN_MASK, 3));
    }

    #[test]
    fn signalling_is_one_in_sixteen_plus_the_tail() {
        let mut signalled = 0;
        let mut outstanding = false;
        for idx in 0..64u32 {
            let s = should_signal(idx, false, outstanding);
            outstanding |= s;
            signalled += u32::from(s);
        }
        assert_eq!(signalled, 64 / SIGNAL_EVERY);
        // A lone send on a quiet queue asks for its completion; with one outstanding, not.
        assert!(should_signal(3, true, false));
        assert!(!should_signal(3, true, true));
        assert!(should_signal(SIGNAL_EVERY - 1, false, true));
    }

    #[test]
    fn ring_windows_wrap() {
        assert!(in_window(5, 5, 6));
        assert!(!in_window(6, 5, 6));
        assert!(!in_window(4, 5, 6));
        assert!(in_window(1, u32::MAX - 1, 3));
        assert!(!in_window(3, u32::MAX - 1, 3));
        assert!(!in_window(0, 0, 0));
    }

    #[test]
    fn touching_chunks_merge_into_one_registration() {
        let merged = merge_chunks(vec![
            (0x3000, 0x1000),
            (0x1000, 0x2000),
            (0x8000, 0x10),
            (0x9000, 0),
        ]);
        assert_eq!(merged, vec![(0x1000, 0x3000), (0x8000, 0x10)]);
        assert_eq!(
            merge_chunks(vec![(0x1000, 0x2000), (0x1800, 0x100)]),
            vec![(0x1000, 0x2000)]
        );
        assert!(merge_chunks(Vec::new()).is_empty());
    }
}
