//! The verbs fabric, control side: one RC queue pair per peer session, connected with
//! rdma_cm, handed to the worker, watched, and re-established after a failure.
//!
//! **Who connects.** Of two nodes, the one whose id sorts lower (byte order) connects to
//! the other's `fabric.address` (its rdma_cm port), from its own fabric IP; the other
//! accepts on a listener bound to its own `fabric.address`. The connect request carries
//! the connecting node's id as private data, and the accept carries the acceptor's: each
//! side checks that the other is the configured peer at the configured IP. The acceptor
//! checks before it accepts and turns anyone else away with rdma_reject (the reason
//! travels in the reject's private data, so the other side's log says why); the connector
//! drops a connection whose acceptor is not the node it expected. That check is not authentication: a QP only ever carries frames
//! that the steering table sends to it, and the table follows the authenticated control
//! sessions (a proxy installs a client's MACs only on its authenticated request).
//!
//! **Blocking work runs beside the control loop.** rdma_cm's address and route resolution
//! and the CM handshake take milliseconds to seconds, so two threads make the connections:
//! `np-cm-connect` (peers we connect to, with exponential back-off between attempts) and
//! `np-cm-accept` (peers that connect to us). Each posts the new QP's receive ring before
//! the connection is requested or accepted (the worker's [`SessionPreparer`]), and hands
//! the established connection to the control thread, which passes it to the worker over
//! its command ring.
//!
//! **Failure.** A QP is lost when a work request completes in error (the worker reports
//! it), or when rdma_cm reports the peer's disconnect or a device event, or the QP is in the
//! error state ([`Connection::status`], read every [`WATCH_INTERVAL`]). Control then removes
//! the session from the worker (which destroys the QP and frees its mbufs), tells the
//! daemon, which treats it like the loss of the session (fail over away from that proxy;
//! as a proxy, forget that client), and the connecting side tries again with back-off.
//!
//! **Heartbeats run beside the QP, not over it.** Hellos, heartbeats and proxy requests
//! keep using the UDP control socket on the fabric's IP interface (the IPoIB or RoCE
//! netdev), `fabric.address` port + 1. They prove that the peer's control thread is alive
//! and that the fabric's IP path works, which shares the port and the link with the QP, but
//! not that the QP itself works: a QP can break (retries exhausted, a protection error, a
//! peer that restarted) while heartbeats still flow, and heartbeats can stop while a QP
//! still looks fine. So a session counts as up for failover only while *both* are up:
//! control session and QP. A QP failure is usually seen at once (an error completion, or
//! the peer's disconnect request, which its kernel sends even when the peer process is
//! killed); a silent peer is found by the heartbeat timeout, as with UDP.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::dpdk::Mempool;
use dataplane::fabric::verbs::{
    new_fabric, AddError, NewSession, SessionPreparer, VerbsControl, VerbsCounters, VerbsEvent,
    VerbsIo, VerbsParams,
};
use dataplane::steer::SessionId;
use dataplane::verbs::{ConnStatus, Connection, Context, Listener, VerbsError};

use super::DaemonError;
use crate::config::Config;

/// How often control reads each connection's rdma_cm events and QP state.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(10);
/// First wait before connecting again; doubles per failed attempt up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest wait between connection attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long the accepting thread waits for a request before it looks at its stop flag
/// (also the time allowed from accept to established).
const ACCEPT_WAIT: Duration = Duration::from_millis(500);

/// True if this node connects to `peer` (its id sorts lower); the peer then accepts.
pub fn connects_to(own_id: &str, peer_id: &str) -> bool {
    own_id.as_bytes() < peer_id.as_bytes()
}

/// What [`start_fabric`] leaves for the control thread.
pub struct VerbsStart {
    control: VerbsControl,
    preparer: SessionPreparer,
    listener: Option<Listener>,
}

impl std::fmt::Debug for VerbsStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsStart")
            .field("device", &self.preparer.setup().context().name())
            .field("listener", &self.listener)
            .finish()
    }
}

fn verbs_err(action: impl Into<String>, e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Io {
        action: action.into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Opens the RDMA device of `fabric.address` (checking `fabric.device` if given), builds
/// the worker's side of the fabric over `pool`, and binds the listener if some peer
/// connects to us. Call it in the namespace the fabric lives in.
pub fn start_fabric(cfg: &Config, pool: &Mempool) -> Result<(VerbsIo, VerbsStart), DaemonError> {
    let ip = cfg.fabric.address.ip();
    let ctx = Context::open_by_addr(ip)
        .map_err(|e| verbs_err(format!("opening the RDMA device of fabric.address {ip}"), e))?;
    if let Some(dev) = &cfg.fabric.device {
        if dev != ctx.name() {
            return Err(verbs_err(
                "checking fabric.device",
                format!(
                    "fabric.address {ip} belongs to RDMA device {}, not to {dev}",
                    ctx.name()
                ),
            ));
        }
    }
    let params = VerbsParams {
        sessions: u16::try_from(cfg.peers.len().max(1)).unwrap_or(u16::MAX),
        ..VerbsParams::default()
    };
    let parts = new_fabric(&ctx, pool, params)
        .map_err(|e| verbs_err(format!("setting up the verbs fabric on {}", ctx.name()), e))?;
    let listener = if cfg.peers.iter().any(|p| connects_to(&p.id, &cfg.node.id)) {
        Some(Listener::bind(cfg.fabric.address).map_err(|e| {
            verbs_err(
                format!("listening for RDMA connections on {}", cfg.fabric.address),
                e,
            )
        })?)
    } else {
        None
    };
    tracing::info!(
        device = ctx.name(),
        recv_depth = params.recv_depth,
        send_depth = params.send_depth,
        listening = listener.is_some(),
        "verbs fabric ready"
    );
    Ok((
        parts.io,
        VerbsStart {
            control: parts.control,
            preparer: parts.preparer,
            listener,
        },
    ))
}

/// A change of a peer's QP, for the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpChange {
    /// Peer `i` has a working QP (and the worker has it).
    Up(usize),
    /// Peer `i` lost its QP.
    Down(usize),
}

/// A connection made by one of the rdma_cm threads.
struct Established {
    peer: usize,
    new: Box<NewSession>,
}

struct Active {
    conn: Arc<Connection>,
    gen: u32,
    since: Instant,
}

struct PeerQp {
    id: String,
    connects: bool,
    active: Option<Active>,
    established: u64,
    failures: u64,
    last_down: Option<String>,
}

enum Pending {
    Add(SessionId, Box<NewSession>),
    Remove(SessionId, u32),
}

/// The control thread's side of the verbs sessions.
pub struct VerbsSessions {
    control: VerbsControl,
    peers: Vec<PeerQp>,
    pending: VecDeque<Pending>,
    established_rx: Receiver<Established>,
    want_tx: Option<Sender<usize>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    next_watch: Instant,
}

impl std::fmt::Debug for VerbsSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsSessions")
            .field("peers", &self.peers.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| DaemonError::Io {
            action: format!("starting thread {name}"),
            source: e,
        })
}

impl VerbsSessions {
    /// Starts the rdma_cm threads; peer `i` of the config is session `i`.
    pub fn start(cfg: &Config, parts: VerbsStart) -> Result<Self, DaemonError> {
        let own = cfg.node.id.clone();
        let peers: Vec<PeerQp> = cfg
            .peers
            .iter()
            .map(|p| PeerQp {
                id: p.id.clone(),
                connects: connects_to(&own, &p.id),
                active: None,
                established: 0,
                failures: 0,
                last_down: None,
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (est_tx, est_rx) = mpsc::channel();
        let mut threads = Vec::new();
        let timeout = cfg.timers.connect_timeout();
        let local = cfg.fabric.address.ip();

        let targets: Vec<Target> = cfg
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| Target {
                index: i,
                id: p.id.clone(),
                addr: p.address,
            })
            .collect();
        let mut want_tx = None;
        let outgoing: Vec<Target> = targets
            .iter()
            .filter(|t| peers[t.index].connects)
            .cloned()
            .collect();
        if !outgoing.is_empty() {
            let (tx, rx) = mpsc::channel();
            want_tx = Some(tx);
            let t = ConnectThread {
                own: own.clone(),
                local,
                timeout,
                preparer: parts.preparer.clone(),
                peers: outgoing
                    .into_iter()
                    .map(|t| Outgoing {
                        target: t,
                        wanted: true,
                        next_try: Instant::now(),
                        backoff: RETRY_MIN,
                        attempts: 0,
                    })
                    .collect(),
                want_rx: rx,
                out: est_tx.clone(),
                stop: Arc::clone(&stop),
            };
            threads.push(spawn("np-cm-connect", move || t.run())?);
        }
        if let Some(listener) = parts.listener {
            let incoming: Vec<Target> = targets
                .iter()
                .filter(|t| !peers[t.index].connects)
                .cloned()
                .collect();
            let t = AcceptThread {
                own,
                listener,
                preparer: parts.preparer.clone(),
                peers: incoming,
                out: est_tx,
                stop: Arc::clone(&stop),
            };
            threads.push(spawn("np-cm-accept", move || t.run())?);
        }
        Ok(Self {
            control: parts.control,
            peers,
            pending: VecDeque::new(),
            established_rx: est_rx,
            want_tx,
            stop,
            threads,
            next_watch: Instant::now(),
        })
    }

    /// The worker's verbs counters, as it last published them.
    pub fn counters(&self) -> VerbsCounters {
        self.control.counters()
    }

    /// Whether peer `i` has a working QP.
    pub fn is_up(&self, i: usize) -> bool {
        self.peers.get(i).is_some_and(|p| p.active.is_some())
    }

    /// Takes new connections, the worker's reports and the connections' own state, and
    /// reports every change of a peer's QP in `changes`. Never blocks.
    pub fn poll(&mut self, changes: &mut Vec<QpChange>) {
        while let Ok(est) = self.established_rx.try_recv() {
            self.install(est, changes);
        }
        while let Some(ev) = self.control.poll_event() {
            match ev {
                VerbsEvent::Failed {
                    session,
                    gen,
                    status,
                } => {
                    let i = usize::from(session.0);
                    if self.current_gen(i) == Some(gen) {
                        self.down(i, format!("a work request failed: {status}"), true, changes);
                    }
                }
                VerbsEvent::Removed {
                    session,
                    gen,
                    freed,
                    deferred,
                } => tracing::debug!(
                    %session, gen, freed, deferred, "the worker removed a verbs session"
                ),
            }
        }
        let now = Instant::now();
        if now >= self.next_watch {
            self.next_watch = now + WATCH_INTERVAL;
            for i in 0..self.peers.len() {
                let Some(a) = &self.peers[i].active else {
                    continue;
                };
                let why = match a.conn.status() {
                    Ok(ConnStatus::Up) => continue,
                    Ok(ConnStatus::Down(r)) => r.to_string(),
                    Err(e) => format!("reading its state failed: {e}"),
                };
                self.down(i, why, true, changes);
            }
        }
        self.flush_pending();
    }

    fn current_gen(&self, i: usize) -> Option<u32> {
        self.peers.get(i)?.active.as_ref().map(|a| a.gen)
    }

    fn install(&mut self, est: Established, changes: &mut Vec<QpChange>) {
        let i = est.peer;
        if self.peers[i].active.is_some() {
            // The peer came back with a new connection: the old one is dead or dying.
            self.down(i, "replaced by a new connection".into(), false, changes);
        }
        let conn = Arc::clone(est.new.connection());
        let gen = est.new.generation();
        let p = &mut self.peers[i];
        p.established += 1;
        tracing::info!(
            peer = %p.id,
            qp = conn.qp().qp_num(),
            local = %conn.local_addr(),
            remote = %conn.peer_addr(),
            gen,
            max_inline = conn.qp().max_inline_data(),
            "QP up"
        );
        p.active = Some(Active {
            conn,
            gen,
            since: Instant::now(),
        });
        self.pending
            .push_back(Pending::Add(SessionId(i as u16), est.new));
        changes.push(QpChange::Up(i));
    }

    /// Takes peer `i`'s QP out of service: control lets go of the connection before the
    /// worker is asked to remove it, so the worker holds the last reference and destroys
    /// the QP before it frees the mbufs.
    fn down(&mut self, i: usize, why: String, reconnect: bool, changes: &mut Vec<QpChange>) {
        let p = &mut self.peers[i];
        let Some(a) = p.active.take() else {
            return;
        };
        p.failures += 1;
        tracing::warn!(peer = %p.id, gen = a.gen, up_for = ?a.since.elapsed(), "QP down: {why}");
        p.last_down = Some(why);
        let gen = a.gen;
        drop(a);
        self.pending
            .push_back(Pending::Remove(SessionId(i as u16), gen));
        changes.push(QpChange::Down(i));
        if reconnect && self.peers[i].connects {
            if let Some(tx) = &self.want_tx {
                let _ = tx.send(i);
            }
        }
    }

    /// Sends queued commands in order, as far as the worker's ring takes them.
    fn flush_pending(&mut self) {
        while let Some(p) = self.pending.pop_front() {
            match p {
                Pending::Add(s, new) => match self.control.add(s, new) {
                    Ok(()) => {}
                    Err(AddError::Full(new)) => {
                        self.pending.push_front(Pending::Add(s, new));
                        return;
                    }
                    Err(AddError::OutOfRange(new)) => {
                        // Session ids are peer indices, and the fabric was sized for every
                        // peer: this is a bug. The connection is closed as it drops.
                        tracing::error!(%s, capacity = self.control.capacity(), "session id out of the fabric's range");
                        drop(new);
                    }
                },
                Pending::Remove(s, gen) => {
                    if !self.control.remove(s, gen) {
                        self.pending.push_front(Pending::Remove(s, gen));
                        return;
                    }
                }
            }
        }
    }

    /// The sessions' QPs, for `nicproxy status`.
    pub fn status_json(&self) -> serde_json::Value {
        use serde_json::json;
        let peers: Vec<_> = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({
                    "peer": p.id,
                    "session": i,
                    "role": if p.connects { "connect" } else { "accept" },
                    "qp": if p.active.is_some() { "up" } else { "down" },
                    "qp_num": p.active.as_ref().map(|a| a.conn.qp().qp_num()),
                    "generation": p.active.as_ref().map(|a| a.gen),
                    "up_for_s": p.active.as_ref().map(|a| a.since.elapsed().as_secs_f64()),
                    "established": p.established,
                    "failures": p.failures,
                    "last_down": p.last_down,
                })
            })
            .collect();
        let c = self.control.counters();
        json!({
            "sessions": peers,
            "pending_commands": self.pending.len(),
            "worker": {
                "inline_sends": c.inline_sends,
                "gather_sends": c.gather_sends,
                "signalled_sends": c.signalled,
                "early_completions": c.early,
                "stale_completions": c.stale,
                "error_completions": c.errors,
                "sessions_added": c.added,
                "sessions_removed": c.removed,
            },
        })
    }

    /// Stops the rdma_cm threads and lets go of every connection (the worker, stopped
    /// after this, destroys the QPs and frees their mbufs).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.want_tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for p in &mut self.peers {
            p.active = None;
        }
        self.flush_pending();
    }
}

impl Drop for VerbsSessions {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ------------------------------------------------------------------- rdma_cm threads

#[derive(Clone)]
struct Target {
    index: usize,
    id: String,
    addr: SocketAddr,
}

struct Outgoing {
    target: Target,
    wanted: bool,
    next_try: Instant,
    backoff: Duration,
    attempts: u64,
}

struct ConnectThread {
    own: String,
    local: IpAddr,
    timeout: Duration,
    preparer: SessionPreparer,
    peers: Vec<Outgoing>,
    want_rx: Receiver<usize>,
    out: Sender<Established>,
    stop: Arc<AtomicBool>,
}

impl ConnectThread {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let due = self
                .peers
                .iter()
                .enumerate()
                .filter(|(_, p)| p.wanted)
                .min_by_key(|(_, p)| p.next_try)
                .map(|(k, p)| (k, p.next_try));
            let wait = match due {
                Some((k, at)) if at <= now => {
                    self.attempt(k);
                    continue;
                }
                Some((_, at)) => (at - now).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            match self.want_rx.recv_timeout(wait) {
                Ok(i) => self.want(i),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(i) = self.want_rx.try_recv() {
                self.want(i);
            }
        }
    }

    fn want(&mut self, index: usize) {
        if let Some(p) = self.peers.iter_mut().find(|p| p.target.index == index) {
            if !p.wanted {
                // A connection that just failed is not retried in a tight loop.
                p.wanted = true;
                p.next_try = Instant::now() + p.backoff;
            }
        }
    }

    fn attempt(&mut self, k: usize) {
        let target = self.peers[k].target.clone();
        let mut prep = self.preparer.prepare();
        let result = Connection::connect_with(
            self.preparer.setup(),
            Some(self.local),
            target.addr,
            self.own.as_bytes(),
            self.timeout,
            |qp| prep.post(qp),
        );
        let p = &mut self.peers[k];
        p.attempts += 1;
        let conn = match result {
            Ok(conn) if conn.peer_private_data() == target.id.as_bytes() => conn,
            Ok(conn) => {
                let other = String::from_utf8_lossy(conn.peer_private_data()).into_owned();
                // Destroy the QP before its receive ring is freed.
                drop(conn);
                drop(prep);
                self.failed(k, format!("node {other:?} answered at {}", target.addr));
                return;
            }
            Err(e) => {
                // connect_with destroyed the QP before returning.
                drop(prep);
                self.failed(k, e.to_string());
                return;
            }
        };
        let new = Box::new(prep.finish(conn));
        p.wanted = false;
        p.backoff = RETRY_MIN;
        p.attempts = 0;
        if self
            .out
            .send(Established {
                peer: target.index,
                new,
            })
            .is_err()
        {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn failed(&mut self, k: usize, why: String) {
        let p = &mut self.peers[k];
        // The first failure of a series is news; the retries of an absent peer are not.
        if p.attempts == 1 {
            tracing::info!(peer = %p.target.id, addr = %p.target.addr, "RDMA connect failed (retrying with back-off): {why}");
        } else {
            tracing::debug!(peer = %p.target.id, attempt = p.attempts, "RDMA connect failed: {why}");
        }
        p.next_try = Instant::now() + p.backoff;
        p.backoff = (p.backoff * 2).min(RETRY_MAX);
    }
}

struct AcceptThread {
    own: String,
    listener: Listener,
    preparer: SessionPreparer,
    peers: Vec<Target>,
    out: Sender<Established>,
    stop: Arc<AtomicBool>,
}

impl AcceptThread {
    fn run(self) {
        while !self.stop.load(Ordering::Relaxed) {
            let mut prep = self.preparer.prepare();
            let mut peer = None;
            let result = self.listener.accept_vetted(
                self.preparer.setup(),
                self.own.as_bytes(),
                ACCEPT_WAIT,
                |from, claimed| {
                    let t = self
                        .peers
                        .iter()
                        .find(|t| t.id.as_bytes() == claimed && t.addr.ip() == from.ip());
                    peer = t.map(|t| t.index);
                    match t {
                        Some(_) => Ok(()),
                        None => Err(format!(
                            "node {:?} at {} is not a configured peer of {}",
                            String::from_utf8_lossy(claimed),
                            from.ip(),
                            self.own
                        )),
                    }
                },
                |qp| prep.post(qp),
            );
            let conn = match result {
                Ok(conn) => conn,
                Err(VerbsError::Timeout { .. }) => continue,
                Err(e @ VerbsError::Refused { .. }) => {
                    tracing::warn!("{e}");
                    continue;
                }
                Err(e) => {
                    tracing::debug!("accepting an RDMA connection: {e}");
                    continue;
                }
            };
            let Some(index) = peer else {
                // vet accepted, so it named the peer; keep the QP out of service otherwise.
                drop(conn);
                drop(prep);
                continue;
            };
            let new = Box::new(prep.finish(conn));
            if self.out.send(Established { peer: index, new }).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_side_connects() {
        assert!(connects_to("a", "b"));
        assert!(!connects_to("b", "a"));
        assert!(!connects_to("a", "a"));
        // Byte order, not a locale's: "B" < "a", "n10" < "n9".
        assert!(connects_to("B", "a"));
        assert!(connects_to("n10", "n9"));
    }
}
