//! The daemon: one control thread that runs the sessions, the detectors and the failover
//! policy, and drives the dataplane (which runs on its own worker thread).
//!
//! Loop, about every millisecond (sooner when a timer is due):
//! 1. poll the NIC's link state every `timers.link_poll_ms` (the local-link detector);
//! 2. read control messages from peers (handshakes, heartbeats, proxy requests and acks);
//! 3. send due Hellos and heartbeats, and declare silent sessions down (path liveness);
//! 4. feed every change to the owner-side failover machine and the proxy-side machine, and
//!    carry out their actions: steering table updates, proxy requests and releases,
//!    announcements, carrier changes;
//! 5. answer status requests.

mod announce;
pub mod capture;
mod dataplane;
#[cfg(feature = "verbs")]
mod fabric_verbs;
mod kernel_macs;
mod linkwatch;
mod metrics;
mod peers;
mod remote;
mod status;
mod upstream;

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use ::dataplane::steer::{DomainId, SessionId, Uplink as SteerUplink};
use ::dataplane::sys::netlink::{self, Netlink};
use ::dataplane::sys::signal;

use self::announce::Announcer;
use self::dataplane::Dataplane;
use self::peers::{PeerEvent, PeerState, Peers};
use self::remote::{Machine, RemoteDomain, Requests};
use crate::config::{Config, ConfigError, GroupKey};
use crate::policy::{
    Action, Event, Failover, FailoverParams, ProxyAction, ProxyEvent, ProxyParams, ProxyServer,
    Uplink,
};
use crate::proto::{AckStatus, LinkFlags, Message, ProxyAck, ProxyRelease, ProxyRequest};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config is invalid or the key unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// DPDK refused something.
    #[error(transparent)]
    Dpdk(#[from] ::dataplane::dpdk::DpdkError),
    /// The steering table refused an entry.
    #[error("steering table: {0}")]
    Table(#[from] ::dataplane::steer::TableError),
    /// The fabric could not be set up.
    #[error(transparent)]
    Fabric(#[from] ::dataplane::fabric::FabricError),
    /// The worker could not start.
    #[error(transparent)]
    Worker(#[from] ::dataplane::worker::WorkerError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    /// The session protocol refused our own parameters.
    #[error("session protocol: {0}")]
    Proto(crate::proto::ProtoError),
    /// An OS call failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being attempted.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Entering or leaving `dataplane.netns` failed.
    #[error(transparent)]
    Netns(#[from] ::dataplane::sys::netns::NetnsError),
    /// A configured feature the daemon does not do yet.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Loads the config, starts the node, runs until SIGINT/SIGTERM.
/// SCHED_FIFO priority for the daemon's helper threads (link watcher, status, metrics,
/// capture, log writer): one below the control thread's, 0 when the control thread runs at
/// normal priority. They exchange memory with the control thread (requests, replies, log
/// lines, address lists), and the allocator's per-arena locks are not priority-inheriting:
/// a normal-priority helper preempted by the machine's load while it held the lock of the
/// control thread's arena stopped the control thread for up to 200 ms (found by the fault
/// suite, during NIC flaps, with load averages around 20). Running them in the real-time
/// class bounds that wait by their own short critical sections. They mostly sleep.
static AUX_RT_PRIORITY: AtomicU8 = AtomicU8::new(0);

/// The helper threads' SCHED_FIFO priority (0: normal priority).
pub fn aux_rt_priority() -> u8 {
    AUX_RT_PRIORITY.load(Ordering::Relaxed)
}

/// Moves the calling helper thread to [`aux_rt_priority`], if any.
pub fn raise_aux_thread() {
    let prio = aux_rt_priority();
    if prio > 0 {
        if let Err(e) = ::dataplane::sys::sched::set_realtime(prio) {
            tracing::warn!("a helper thread stays at normal priority: {e}");
        }
    }
}

pub fn run_from_file(path: &Path) -> Result<(), DaemonError> {
    let cfg = Config::load(path)?;
    let prio = cfg.dataplane.control_rt_priority;
    AUX_RT_PRIORITY.store(if prio > 1 { prio - 1 } else { prio }, Ordering::Relaxed);
    let key = cfg.load_key()?;
    signal::install().map_err(|e| DaemonError::Io {
        action: "installing signal handlers".into(),
        source: e,
    })?;
    let mut d = Daemon::start(cfg, &key, path)?;
    let r = d.run();
    d.shutdown();
    // The ports close where they were opened: af_packet and TAP reach their interfaces
    // by name when they stop.
    match d.cfg.dataplane.netns.clone() {
        Some(ns) => {
            if let Err(e) = ::dataplane::sys::netns::run_in(&ns, move || drop(d)) {
                tracing::warn!("closing the ports in network namespace {ns}: {e}");
            }
        }
        None => drop(d),
    }
    r
}

/// The EAL file prefix of node `node`'s daemon running as process `pid`: unique per
/// process, so that several daemons (a lab's nodes) share a machine.
pub(crate) fn eal_file_prefix(node: &str, pid: u32) -> String {
    format!("nicproxy-{node}-{pid}")
}

/// The DPDK runtime directory of node `node`'s daemon running as process `pid`. The daemon
/// removes it when it exits; one that was killed leaves it behind for whoever killed it.
pub fn eal_runtime_dir(node: &str, pid: u32) -> std::path::PathBuf {
    ::dataplane::dpdk::runtime_dir(&eal_file_prefix(node, pid))
}

struct Daemon {
    cfg: Config,
    config_path: std::path::PathBuf,
    dp: Dataplane,
    peers: Peers,
    failover: Failover,
    proxy: ProxyServer,
    announcer: Announcer,
    started: Instant,
    nic_up: Option<bool>,
    /// The upstream probe, if configured.
    upstream: Option<upstream::UpstreamProbe>,
    /// For kernel-backed NIC vdevs: the interface whose carrier is the link state.
    /// Netlink link requests, on a thread of their own (see `linkwatch`).
    linkwatch: linkwatch::LinkWatcher,
    /// The NIC's link comes from the link watcher (kernel-backed vdevs), not from DPDK.
    nic_link_from_watcher: bool,
    /// The carrier last asked of the kernel interface (`carrier` is the one carried out).
    carrier_wanted: Option<bool>,
    /// Announcements wait until a pending carrier-on has been carried out.
    announce_pending: bool,
    next_link_poll: Duration,
    carrier: Option<bool>,
    local_domains: Vec<DomainId>,
    /// Domains reached only through peers, each with its own failover machine.
    remote: Vec<RemoteDomain>,
    /// Which peer each machine has asked to carry its domains.
    requests: Requests,
    /// Peers whose requested domains changed in this loop iteration: one request (or
    /// release) each, sent at the end of the iteration, however many machines moved.
    requests_dirty: Vec<String>,
    status_rx: std::sync::mpsc::Receiver<status::StatusRequest>,
    failovers: u64,
    last_change: Option<(Duration, String)>,
    metrics: metrics::Metrics,
    scrape_rx: std::sync::mpsc::Receiver<metrics::ScrapeRequest>,
    /// When the path in use was found dead, until the new proxy acknowledges.
    failure_detected_at: Option<Duration>,
    /// The latest the control loop ran after one of its timers was due, since start: a
    /// stalled control thread delays heartbeats and failure detection by this much.
    max_loop_lag: Duration,
    /// Per peer: whether the policy machines were told its session is up (the control
    /// session and, with verbs, its QP).
    session_up: Vec<bool>,
    /// With `fabric.backend = "verbs"`: the peers' queue pairs.
    #[cfg(feature = "verbs")]
    verbs: Option<fabric_verbs::VerbsSessions>,
}

impl Daemon {
    fn start(cfg: Config, key: &GroupKey, path: &Path) -> Result<Daemon, DaemonError> {
        if usize::from(cfg.nic.queues) != self::dataplane::worker_count(&cfg) {
            return Err(DaemonError::Unsupported(
                "each worker owns one NIC queue pair: nic.queues must equal the number of workers (the entries of dataplane.cores, or 1 when it is empty)",
            ));
        }
        #[cfg_attr(not(feature = "verbs"), allow(unused_mut))]
        let mut dp = Dataplane::start(&cfg)?;
        tracing::info!(
            node = %cfg.node.id,
            nic = %cfg.nic.devargs,
            kernel = %cfg.kernel.name,
            backend = ?dp.kernel_backend,
            "dataplane up"
        );
        // The kernel interface and the NIC's netdev live in dataplane.netns, if set: so do
        // the sockets that watch and announce them.
        let ns = match &cfg.dataplane.netns {
            Some(name) => Some(::dataplane::sys::netns::enter(name)?),
            None => None,
        };
        let ifindex = wait_for_interface(&cfg.kernel.name, Duration::from_secs(5))?;
        let mut nl = Netlink::open()?;
        let nic_if = match self::dataplane::kernel_backed_iface(&cfg.nic.devargs) {
            Some(name) => Some(netlink::if_index(name)?),
            None => None,
        };
        // No path is chosen yet: the kernel sees no carrier, and receives nothing, until the
        // first decision.
        dp.table.set_kernel_open(false);
        dp.publish();
        nl.set_carrier(ifindex, false)?;
        let linkwatch = linkwatch::LinkWatcher::start(nl, nic_if, ifindex, cfg.timers.link_poll())
            .map_err(|e| DaemonError::Io {
                action: "starting the link watcher thread".into(),
                source: e,
            })?;
        let mac = cfg
            .kernel
            .macs
            .first()
            .map(|m| ::dataplane::wire::MacAddr(m.0))
            .unwrap_or_default();
        let announcer = Announcer::new(
            &cfg.kernel.name,
            mac,
            cfg.announce.count,
            cfg.announce.interval(),
        )?;
        let upstream = match &cfg.upstream_probe {
            Some(p) => {
                let nic_mac = ::dataplane::wire::MacAddr(dp.nic.mac()?);
                dp.table.set_nic_mac(Some(nic_mac))?;
                for d in cfg.local_domains() {
                    dp.table.add_local(DomainId(d.id), nic_mac)?;
                }
                dp.publish();
                Some(upstream::UpstreamProbe::new(&cfg.kernel.name, nic_mac, p)?)
            }
            None => None,
        };
        if let Some(ns) = ns {
            ns.leave()?;
        }
        let peers = Peers::new(&cfg, key)?;
        #[cfg(feature = "verbs")]
        let verbs = match dp.verbs.take() {
            Some(v) => Some(fabric_verbs::VerbsSessions::start(&cfg, v)?),
            None => None,
        };
        let failover = Failover::new(FailoverParams::for_local_domains(&cfg));
        let remote = remote::machines(&cfg);
        for r in &remote {
            // Our own frames in such a domain never leave by the NIC, and what the NIC
            // receives in it is not ours.
            dp.table.set_nic_cabled(r.domain, false);
        }
        dp.publish();
        let proxy = ProxyServer::new(ProxyParams::from_config(&cfg));
        let capture = capture::Service::new(&cfg, dp.take_captures());
        let status_rx = status::serve(&cfg.control_socket(), capture)?;
        let scrape_rx = metrics::serve(cfg.metrics.listen)?;
        let metrics = metrics::Metrics::new(&cfg.node.id);
        let local_domains = cfg.local_domains().map(|d| DomainId(d.id)).collect();
        tracing::info!(proxies = ?cfg.proxy_order(), "control up");
        let cfg_peers = cfg.peers.len();
        Ok(Daemon {
            config_path: path.to_path_buf(),
            cfg,
            dp,
            peers,
            failover,
            proxy,
            announcer,
            started: Instant::now(),
            nic_up: None,
            upstream,
            linkwatch,
            nic_link_from_watcher: nic_if.is_some(),
            carrier_wanted: Some(false),
            announce_pending: false,
            next_link_poll: Duration::ZERO,
            carrier: Some(false),
            local_domains,
            requests: Requests::new(remote.len()),
            requests_dirty: Vec::new(),
            remote,
            status_rx,
            failovers: 0,
            last_change: None,
            metrics,
            scrape_rx,
            failure_detected_at: None,
            max_loop_lag: Duration::ZERO,
            session_up: vec![false; cfg_peers],
            #[cfg(feature = "verbs")]
            verbs,
        })
    }

    fn run(&mut self) -> Result<(), DaemonError> {
        let prio = self.cfg.dataplane.control_rt_priority;
        if prio > 0 {
            match ::dataplane::sys::sched::set_realtime(prio) {
                Ok(()) => tracing::info!("control thread at SCHED_FIFO priority {prio}"),
                Err(e) => tracing::warn!(
                    "control thread stays at normal priority ({e}); failure detection may misfire on a loaded machine"
                ),
            }
        }
        self.await_first_link(Duration::from_secs(2));
        let mut events = Vec::new();
        let mut due: Option<Duration> = None;
        let mut body = Duration::ZERO;
        while !signal::stop_requested() {
            let now = self.started.elapsed();
            if let Some(d) = due {
                let lag = now.saturating_sub(d);
                if lag > self.cfg.timers.heartbeat() && lag > self.max_loop_lag {
                    // A new worst: worth a line, as it eats into the peers' detection time.
                    tracing::warn!(
                        "control loop ran {lag:?} after a timer was due (its previous pass took {body:?})"
                    );
                }
                self.max_loop_lag = self.max_loop_lag.max(lag);
                if lag > self.cfg.timers.heartbeat() {
                    // We were not running: the peers' silence during that time is not
                    // theirs to answer for (when the whole machine stalls, their control
                    // threads did not run either).
                    self.peers.forgive(lag, now);
                }
            }
            let now_ns = now.as_nanos() as u64;
            if signal::take_reload() {
                self.reload(now);
            }
            if now >= self.next_link_poll {
                self.poll_link(now);
                self.next_link_poll = now + self.cfg.timers.link_poll();
            }
            let link_up = self.nic_up == Some(true);
            if let Some(v) = self.upstream.as_mut().and_then(|p| p.tick(now, link_up)) {
                self.on_upstream(now, v);
            }
            self.peers.poll(now, now_ns, &mut events);
            self.peers.tick(now, now_ns, &mut events);
            for e in events.drain(..) {
                self.on_peer_event(now, e);
            }
            #[cfg(feature = "verbs")]
            self.poll_verbs(now);
            if self.failover.next_deadline().is_some_and(|d| d <= now) {
                let actions = self.failover.handle(now, Event::Tick);
                self.apply(now, Machine::Local, actions);
            }
            for i in 0..self.remote.len() {
                let f = &mut self.remote[i].failover;
                if f.next_deadline().is_some_and(|d| d <= now) {
                    let actions = f.handle(now, Event::Tick);
                    self.apply(now, Machine::Remote(i), actions);
                }
            }
            self.flush_requests();
            self.announcer.tick(now);
            while let Ok(req) = self.status_rx.try_recv() {
                let _ = req.reply.try_send(self.status_json(now).to_string());
            }
            while let Ok(req) = self.scrape_rx.try_recv() {
                let _ = req.reply.try_send(self.scrape());
            }
            if !self.dp.workers_running() {
                tracing::error!("a worker thread ended; stopping");
                break;
            }
            self.dp.flush_tables();
            body = self.started.elapsed().saturating_sub(now);
            due = Some(self.wait(now));
        }
        Ok(())
    }

    /// Sleeps until the next timer or a control message, at most 1 ms; returns when the
    /// next timer is due.
    fn wait(&self, now: Duration) -> Duration {
        let mut until = now + Duration::from_millis(1);
        let remote = self
            .remote
            .iter()
            .filter_map(|r| r.failover.next_deadline());
        for d in [
            self.failover.next_deadline(),
            self.announcer.next_deadline(),
            Some(self.next_link_poll),
            self.upstream
                .as_ref()
                .map(upstream::UpstreamProbe::next_deadline),
        ]
        .into_iter()
        .flatten()
        .chain(remote)
        {
            until = until.min(d);
        }
        let sleep = until.saturating_sub(self.started.elapsed());
        if !sleep.is_zero() {
            // Wakes early for a control message; on a high-resolution timer otherwise.
            let _ = ::dataplane::sys::wait::readable(self.peers.socket(), sleep);
        }
        until
    }

    /// Waits (up to `timeout`) for the first report of the NIC's link before any session
    /// is polled. Without it, a daemon restarted next to running peers saw a session come
    /// up before the link watcher's first report, took the NIC for down, moved its MACs to
    /// a proxy (the switch's FDB with them) and back a moment later (found by the lab's
    /// fault suite, restarting a killed proxy).
    fn await_first_link(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        while self.nic_up.is_none() && t0.elapsed() < timeout && !signal::stop_requested() {
            self.poll_link(self.started.elapsed());
            if self.nic_up.is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if self.nic_up.is_none() {
            tracing::warn!("no NIC link state within {timeout:?}; starting without it");
        }
    }

    fn poll_link(&mut self, now: Duration) {
        while let Ok(ev) = self.linkwatch.events.try_recv() {
            match ev {
                linkwatch::LinkEvent::NicCarrier(up) => self.on_nic_link(now, up),
                linkwatch::LinkEvent::KernelCarrierSet(on) => {
                    tracing::info!("kernel interface carrier {}", if on { "on" } else { "off" });
                    self.carrier = Some(on);
                    // The kernel can answer now: let its frames through. (A carrier-off
                    // asked for meanwhile has closed it again and wins.)
                    if on && self.carrier_wanted == Some(true) && !self.dp.table.kernel_open() {
                        self.dp.table.set_kernel_open(true);
                        self.dp.publish();
                    }
                    if on && std::mem::take(&mut self.announce_pending) {
                        self.announce_local(now);
                    }
                }
                linkwatch::LinkEvent::Addresses(a) => self.announcer.set_addresses(a),
                linkwatch::LinkEvent::Failed(what) => {
                    tracing::error!("link watcher: {what} failed")
                }
            }
        }
        if !self.nic_link_from_watcher {
            let up = match self.dp.nic.link() {
                Ok(l) => l.up,
                Err(e) => {
                    tracing::warn!("reading the NIC link state: {e}");
                    false
                }
            };
            self.on_nic_link(now, up);
        }
    }

    fn on_nic_link(&mut self, now: Duration, up: bool) {
        if self.nic_up == Some(up) {
            return;
        }
        tracing::info!("NIC link {}", if up { "up" } else { "down" });
        if !up && self.failover.uplink() == Uplink::Nic {
            self.failure_detected_at = Some(now);
        }
        self.nic_up = Some(up);
        if !up {
            if let Some(v) = self.upstream.as_mut().and_then(|p| p.link_lost()) {
                self.on_upstream(now, v);
            }
        }
        let upstream_ok = self.upstream.as_ref().map_or(true, |p| p.ok());
        self.peers
            .set_local_link(LinkFlags::new(up, upstream_ok), now);
        let actions = self.failover.handle(now, Event::NicLink(up));
        self.apply(now, Machine::Local, actions);
    }

    fn on_upstream(&mut self, now: Duration, ok: bool) {
        tracing::info!("upstream {}", if ok { "answers" } else { "is silent" });
        if !ok && self.failover.uplink() == Uplink::Nic {
            self.failure_detected_at = Some(now);
        }
        self.peers
            .set_local_link(LinkFlags::new(self.nic_up == Some(true), ok), now);
        let actions = self.failover.handle(now, Event::Upstream(ok));
        self.apply(now, Machine::Local, actions);
    }

    fn on_peer_event(&mut self, now: Duration, e: PeerEvent) {
        match e {
            PeerEvent::Up(i) if !self.qp_up(i) => {
                tracing::info!(peer = %self.peers.peers[i].id, "session up; waiting for its QP");
            }
            PeerEvent::Up(i) => {
                self.session_up[i] = true;
                let id = self.peers.peers[i].id.clone();
                self.metrics.session_up.with_label_values(&[&id]).set(1);
                let usable = self.peers.peers[i].link.usable();
                self.feed_all(now, |f, now| {
                    let mut actions = f.handle(
                        now,
                        Event::Session {
                            peer: &id,
                            up: true,
                        },
                    );
                    actions.extend(f.handle(now, Event::PeerLink { peer: &id, usable }));
                    actions
                });
            }
            PeerEvent::Down(i) => {
                self.session_up[i] = false;
                let id = self.peers.peers[i].id.clone();
                self.metrics.session_up.with_label_values(&[&id]).set(0);
                if self.failover.uplink() == Uplink::Session(id.clone()) {
                    self.failure_detected_at = Some(now);
                }
                self.feed_all(now, |f, now| {
                    f.handle(
                        now,
                        Event::Session {
                            peer: &id,
                            up: false,
                        },
                    )
                });
                let pa = self.proxy.handle(ProxyEvent::SessionDown { peer: &id });
                self.apply_proxy(now, pa);
            }
            PeerEvent::Link(i, flags) => {
                let id = self.peers.peers[i].id.clone();
                tracing::info!(peer = %id, "peer link {}", if flags.usable() { "usable" } else { "not usable" });
                let usable = flags.usable();
                self.feed_all(now, |f, now| {
                    f.handle(now, Event::PeerLink { peer: &id, usable })
                });
            }
            PeerEvent::Rtt(i, rtt) => {
                let id = &self.peers.peers[i].id;
                self.metrics
                    .rtt
                    .with_label_values(&[id])
                    .observe(rtt.as_secs_f64());
            }
            PeerEvent::Message(i, msg) => self.on_message(now, i, msg),
        }
    }

    /// Whether peer `i`'s data path exists: always with UDP; with verbs, its QP is up.
    fn qp_up(&self, i: usize) -> bool {
        #[cfg(feature = "verbs")]
        if let Some(v) = &self.verbs {
            return v.is_up(i);
        }
        let _ = i;
        true
    }

    /// A session counts as up for the policy machines only while its control session and
    /// its QP both are: QP changes go through the same paths as control-session changes.
    #[cfg(feature = "verbs")]
    fn poll_verbs(&mut self, now: Duration) {
        let Some(v) = self.verbs.as_mut() else {
            return;
        };
        let mut changes = Vec::new();
        v.poll(&mut changes);
        for c in changes {
            match c {
                fabric_verbs::QpChange::Up(i) => {
                    if self.peers.peers[i].state == PeerState::Up && !self.session_up[i] {
                        self.on_peer_event(now, PeerEvent::Up(i));
                    }
                }
                fabric_verbs::QpChange::Down(i) if self.session_up[i] => {
                    self.on_peer_event(now, PeerEvent::Down(i));
                }
                fabric_verbs::QpChange::Down(i) => {
                    // Never reported up, but a client may have asked us to proxy over it.
                    let id = self.peers.peers[i].id.clone();
                    let pa = self.proxy.handle(ProxyEvent::SessionDown { peer: &id });
                    self.apply_proxy(now, pa);
                }
            }
        }
    }

    fn on_message(&mut self, now: Duration, i: usize, msg: Message) {
        let id = self.peers.peers[i].id.clone();
        match msg {
            Message::ProxyRequest(r) => {
                let pa = self.proxy.handle(ProxyEvent::Request {
                    peer: &id,
                    id: r.id,
                    macs: &r.macs,
                    domains: &r.domains,
                });
                self.apply_proxy(now, pa);
            }
            Message::ProxyRelease(r) => {
                let pa = self.proxy.handle(ProxyEvent::Release {
                    peer: &id,
                    id: r.id,
                });
                self.apply_proxy(now, pa);
            }
            Message::ProxyAck(a) => {
                if !self.peers.peers[i].requests.answers(a.id) {
                    tracing::debug!(peer = %id, "stale ack {} ignored", a.id);
                    return;
                }
                let accepted = a.status == AckStatus::Ok;
                if accepted && self.failover.uplink() == Uplink::Session(id.clone()) {
                    if let Some(t0) = self.failure_detected_at.take() {
                        let d = now.saturating_sub(t0);
                        self.metrics.failover_duration.observe(d.as_secs_f64());
                        tracing::info!(peer = %id, "failover complete in {:.2} ms (detection to ack)", d.as_secs_f64() * 1e3);
                    }
                }
                if !accepted {
                    tracing::warn!(peer = %id, "proxy refused: {:?}", a.status);
                }
                // The ack answers the request naming every machine that rides on this peer.
                for m in self.requests.machines_on(&id) {
                    let actions = self.machine(m).handle(
                        now,
                        Event::Ack {
                            peer: &id,
                            accepted,
                        },
                    );
                    self.apply(now, m, actions);
                }
            }
            other => tracing::debug!(peer = %id, "unexpected {:?}", other.msg_type()),
        }
    }

    fn machine(&mut self, m: Machine) -> &mut Failover {
        match m {
            Machine::Local => &mut self.failover,
            Machine::Remote(i) => &mut self.remote[i].failover,
        }
    }

    /// Feeds one event to every failover machine (local, then remote) and carries out
    /// their actions.
    fn feed_all(
        &mut self,
        now: Duration,
        mut f: impl FnMut(&mut Failover, Duration) -> Vec<Action>,
    ) {
        let actions = f(&mut self.failover, now);
        self.apply(now, Machine::Local, actions);
        for i in 0..self.remote.len() {
            let actions = f(&mut self.remote[i].failover, now);
            self.apply(now, Machine::Remote(i), actions);
        }
    }

    /// The domains of machine `m`.
    fn domains_of(&self, m: Machine) -> Vec<DomainId> {
        match m {
            Machine::Local => self.local_domains.clone(),
            Machine::Remote(i) => vec![self.remote[i].domain],
        }
    }

    /// Tells `peer` what it carries for us now: a request naming the domains of every
    /// machine that chose it (a request replaces the previous one), or a release if none.
    fn send_proxy_state(&mut self, peer: &str) {
        let Some(i) = self.peers.index_of(peer) else {
            return;
        };
        let mut domains: Vec<u16> = self
            .requests
            .machines_on(peer)
            .into_iter()
            .flat_map(|m| self.domains_of(m))
            .map(|d| d.0)
            .collect();
        domains.sort_unstable();
        domains.dedup();
        let macs = if domains.is_empty() {
            Vec::new()
        } else {
            self.cfg.kernel.macs.clone()
        };
        let id = self.peers.peers[i]
            .requests
            .next(domains.clone(), macs.clone());
        if domains.is_empty() {
            tracing::info!(%peer, "releasing proxy");
            self.peers
                .send(i, &Message::ProxyRelease(ProxyRelease { id }));
        } else {
            tracing::info!(%peer, ?domains, "requesting proxy");
            let req = ProxyRequest { id, macs, domains };
            self.peers.send(i, &Message::ProxyRequest(req));
        }
    }

    fn mark_dirty(&mut self, peer: String) {
        if !self.requests_dirty.contains(&peer) {
            self.requests_dirty.push(peer);
        }
    }

    /// Sends what changed for each peer since the last call.
    fn flush_requests(&mut self) {
        for peer in std::mem::take(&mut self.requests_dirty) {
            self.send_proxy_state(&peer);
        }
    }

    /// Whether any machine has a path: the kernel interface's carrier.
    fn any_path(&self) -> bool {
        self.failover.carrier() || self.remote.iter().any(|r| r.failover.carrier())
    }

    fn apply(&mut self, now: Duration, who: Machine, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::RequestProxy(peer) => {
                    self.requests.request(who, &peer);
                    self.mark_dirty(peer);
                }
                Action::ReleaseProxy(peer) => {
                    self.requests.release(who, &peer);
                    self.mark_dirty(peer);
                }
                Action::Announce if who != Machine::Local => {
                    // The kernel interface's own addresses belong to the local domains; in a
                    // domain reached through a peer, teach the switch the MAC's new port with
                    // ARP probes in that domain's VLAN.
                    let Machine::Remote(r) = who else { continue };
                    let vlan = self.vlan_of(self.remote[r].domain);
                    let macs: Vec<_> = self
                        .cfg
                        .kernel
                        .macs
                        .iter()
                        .map(|m| ::dataplane::wire::MacAddr(m.0))
                        .collect();
                    self.announcer.probe_from(&macs, vlan);
                }
                Action::SetUplink(u) if who != Machine::Local => {
                    let Machine::Remote(r) = who else { continue };
                    let steer = self.steer_uplink(&u);
                    let d = self.remote[r].domain;
                    if let Err(e) = self.dp.table.set_uplink(d, steer) {
                        tracing::error!("setting the uplink of domain {}: {e}", d.0);
                    }
                    self.dp.publish();
                    tracing::info!(domain = %self.remote[r].name, uplink = %uplink_label(&u), "path of a remote domain changed");
                }
                Action::SetUplink(u) => {
                    let steer = self.steer_uplink(&u);
                    for d in &self.local_domains {
                        if let Err(e) = self.dp.table.set_uplink(*d, steer) {
                            tracing::error!("setting the uplink of domain {}: {e}", d.0);
                        }
                    }
                    self.dp.publish();
                    let label = uplink_label(&u);
                    if matches!(u, Uplink::Session(_)) {
                        self.failovers += 1;
                        self.metrics.failovers.inc();
                    }
                    self.metrics.active_path.reset();
                    for m in &self.cfg.kernel.macs {
                        self.metrics
                            .active_path
                            .with_label_values(&[&m.to_string(), &label])
                            .set(1);
                    }
                    tracing::info!(uplink = %label, "path changed");
                    self.last_change = Some((now, label));
                }
                Action::Announce => {
                    if self.carrier_wanted == Some(true) && self.carrier != Some(true) {
                        // The kernel drops what it sends without carrier: announce once the
                        // link watcher has raised it.
                        self.announce_pending = true;
                    } else {
                        self.announce_local(now);
                    }
                }
                Action::SetCarrier(_) => {
                    // One interface for every domain: carrier while any domain has a path.
                    let on = self.any_path();
                    if self.carrier_wanted != Some(on) {
                        self.carrier_wanted = Some(on);
                        if !on {
                            // Like a NIC without carrier, the interface receives nothing
                            // from now on; it opens again once the carrier is back up.
                            self.dp.table.set_kernel_open(false);
                            self.dp.publish();
                        }
                        self.linkwatch.set_kernel_carrier(on);
                    }
                }
            }
        }
    }

    /// The VLAN of a domain, `None` if untagged.
    /// Announces the node's new path in its local domains: GARP/NA for the kernel
    /// interface's addresses from its own MAC, and ARP probes from each of its other MACs
    /// in each local domain (their addresses are not ours to know), so the switch moves
    /// every one of them, on failback as on failover.
    fn announce_local(&mut self, now: Duration) {
        let mut vlans: Vec<Option<u16>> = self
            .local_domains
            .iter()
            .map(|d| self.vlan_of(*d))
            .collect();
        vlans.sort_unstable();
        vlans.dedup();
        let extra = self
            .cfg
            .kernel
            .macs
            .iter()
            .skip(1)
            .flat_map(|m| {
                vlans
                    .iter()
                    .map(move |&v| (::dataplane::wire::MacAddr(m.0), v))
            })
            .collect();
        self.announcer.trigger(now, extra);
    }

    fn vlan_of(&self, d: DomainId) -> Option<u16> {
        self.cfg
            .domains
            .iter()
            .find(|c| c.id == d.0)
            .and_then(|c| c.vlan)
    }

    fn steer_uplink(&self, u: &Uplink) -> SteerUplink {
        match u {
            Uplink::None => SteerUplink::None,
            Uplink::Nic => SteerUplink::Nic,
            Uplink::Session(p) => match self.peers.index_of(p) {
                Some(i) => SteerUplink::Session(SessionId(i as u16)),
                None => SteerUplink::None,
            },
        }
    }

    fn apply_proxy(&mut self, _now: Duration, actions: Vec<ProxyAction>) {
        let mut changed = false;
        for a in actions {
            match a {
                ProxyAction::InstallClient {
                    peer,
                    macs,
                    domains,
                } => {
                    let Some(i) = self.peers.index_of(&peer) else {
                        continue;
                    };
                    let s = SessionId(i as u16);
                    self.dp.table.remove_client(s);
                    for d in &domains {
                        for m in &macs {
                            if let Err(e) = self.dp.table.add_proxied(
                                DomainId(*d),
                                ::dataplane::wire::MacAddr(m.0),
                                s,
                            ) {
                                tracing::error!(%peer, "installing {m}: {e}");
                            }
                        }
                        if let Err(e) = self.dp.table.add_session_member(DomainId(*d), s) {
                            tracing::error!(%peer, "adding to domain {d}: {e}");
                        }
                    }
                    tracing::info!(%peer, macs = ?macs.iter().map(ToString::to_string).collect::<Vec<_>>(), "proxying for client");
                    changed = true;
                }
                ProxyAction::RemoveClient { peer, .. } => {
                    let Some(i) = self.peers.index_of(&peer) else {
                        continue;
                    };
                    self.dp.table.remove_client(SessionId(i as u16));
                    tracing::info!(%peer, "no longer proxying for client");
                    changed = true;
                }
                ProxyAction::AnnounceOnBehalf { peer, macs } => {
                    if changed {
                        self.dp.publish();
                        changed = false;
                    }
                    let macs: Vec<_> = macs
                        .iter()
                        .map(|m| ::dataplane::wire::MacAddr(m.0))
                        .collect();
                    // In every domain the client is carried in, with that domain's tag.
                    let domains = self
                        .proxy
                        .clients()
                        .get(&peer)
                        .map(|c| c.domains.clone())
                        .unwrap_or_default();
                    let mut sent = 0;
                    for d in domains {
                        sent += self.announcer.probe_from(&macs, self.vlan_of(DomainId(d)));
                    }
                    tracing::info!(%peer, sent, "announced the client's MACs from our NIC");
                }
                ProxyAction::SendAck { peer, id, status } => {
                    if changed {
                        // The table must be live before the client learns it may rely on it.
                        self.dp.publish();
                        changed = false;
                    }
                    if let Some(i) = self.peers.index_of(&peer) {
                        self.peers
                            .send(i, &Message::ProxyAck(ProxyAck { id, status }));
                    }
                }
            }
        }
        if changed {
            self.dp.publish();
        }
    }

    fn scrape(&mut self) -> String {
        let counters = self.dp.counters_per_worker();
        self.metrics.update_counters(&counters);
        #[cfg(feature = "verbs")]
        if let Some(v) = &self.verbs {
            self.metrics.update_verbs(0, &v.counters());
        }
        self.metrics
            .mempool_in_use
            .set(i64::from(self.dp.pool.in_use()));
        self.metrics.clients.set(self.proxy.clients().len() as i64);
        self.metrics
            .carrier
            .set(i64::from(self.carrier == Some(true)));
        self.metrics.announcements.set(self.announcer.sent as i64);
        self.metrics
            .control_loop_max_lag
            .set(self.max_loop_lag.as_secs_f64());
        for p in &self.peers.peers {
            self.metrics
                .max_rx_gap
                .with_label_values(&[p.id.as_str()])
                .set(p.max_rx_gap.as_secs_f64());
        }
        for (reason, n) in self.peers.rejects().as_pairs() {
            self.metrics
                .control_rejects
                .with_label_values(&[reason])
                .set(n as i64);
        }
        self.metrics
            .control_rejects
            .with_label_values(&["unexpected_source"])
            .set(self.peers.rejected_source as i64);
        self.metrics.encode()
    }

    fn reload(&mut self, now: Duration) {
        // A broken config is reported and the running one kept; of a valid one, a change of
        // kernel.macs is applied (see kernel_macs), the rest reported.
        match Config::load(&self.config_path) {
            Ok(new) if new == self.cfg => tracing::info!("SIGHUP: config unchanged"),
            Ok(new) => self.reload_changed(now, &new),
            Err(e) => {
                tracing::error!("SIGHUP: the new config is invalid, keeping the running one: {e}")
            }
        }
    }

    fn status_json(&self, now: Duration) -> serde_json::Value {
        use serde_json::json;
        let per_worker = self.dp.counters_per_worker();
        let counters = ::dataplane::counters::CountersSnapshot::sum(&per_worker);
        let ports = status::ports_json(&counters);
        let drops = status::drops_json(&counters);
        let sessions: Vec<_> = self
            .peers
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({"peer": p.id, "session": i, "state": match p.state { PeerState::Up => "up", PeerState::Connecting => "connecting", PeerState::Down => "down" },
                       "rtt_us": p.rtt.map(|r| r.as_secs_f64() * 1e6), "peer_nic_usable": p.link.usable(),
                       "established": p.established_count, "max_rx_gap_ms": p.max_rx_gap.as_secs_f64() * 1e3})
            })
            .collect();
        let clients: Vec<_> = self
            .proxy
            .clients()
            .iter()
            .map(|(peer, c)| json!({"peer": peer, "macs": c.macs.iter().map(ToString::to_string).collect::<Vec<_>>(), "domains": c.domains}))
            .collect();
        let table: Vec<_> = self
            .dp
            .table
            .clone()
            .build()
            .entries()
            .map(|(d, m, a)| json!({"domain": d.0, "mac": m.to_string(), "action": format!("{a:?}")}))
            .collect();
        json!({
            "node": self.cfg.node.id,
            "uptime_s": now.as_secs_f64(),
            "control_loop_max_lag_ms": self.max_loop_lag.as_secs_f64() * 1e3,
            "nic_link": self.nic_up,
            "uplink": uplink_label(&self.failover.uplink()),
            "carrier": self.carrier,
            "proxy_order": self.failover.params().proxies,
            "remote_domains": self.remote.iter().map(|r| json!({"domain": r.domain.0, "name": r.name, "uplink": uplink_label(&r.failover.uplink()), "carrier": r.failover.carrier(), "proxy_order": r.failover.params().proxies})).collect::<Vec<_>>(),
            "proxies": self.failover.proxy_status().iter().map(|p| json!({"peer": p.id, "session_up": p.session_up, "link_usable": p.link_usable, "refused": p.refused, "installed": p.installed})).collect::<Vec<_>>(),
            "sessions": sessions,
            "clients": clients,
            "steering_table": table,
            "ports": ports,
            "drops": drops,
            "workers": status::workers_json(&per_worker),
            "mempool_in_use": self.dp.pool.in_use(),
            "failovers_total": self.failovers,
            "last_change": self.last_change.as_ref().map(|(t, l)| json!({"at_s": t.as_secs_f64(), "uplink": l})),
            "announcements_sent": self.announcer.sent,
            "upstream_probe": self.upstream.as_ref().map(|p| json!({"ok": p.ok(), "sent": p.sent, "answered": p.answered})),
            "control_rejects": self.peers.rejects().total() + self.peers.rejected_source,
            "fabric_verbs": self.verbs_status(),
        })
    }

    fn verbs_status(&self) -> serde_json::Value {
        #[cfg(feature = "verbs")]
        if let Some(v) = &self.verbs {
            return v.status_json();
        }
        serde_json::Value::Null
    }

    fn shutdown(&mut self) {
        tracing::info!("stopping");
        // Let our proxies forget us rather than wait for the heartbeat timeout.
        for i in 0..self.peers.peers.len() {
            if self.peers.peers[i].state == PeerState::Up {
                let id = self.peers.peers[i].requests.next(Vec::new(), Vec::new());
                self.peers
                    .send(i, &Message::ProxyRelease(ProxyRelease { id }));
            }
        }
        // Control lets go of the QPs first, so the worker destroys them before it frees
        // their mbufs.
        #[cfg(feature = "verbs")]
        if let Some(v) = self.verbs.as_mut() {
            v.shutdown();
        }
        self.dp.stop();
        let _ = std::fs::remove_file(self.cfg.control_socket());
    }
}

fn uplink_label(u: &Uplink) -> String {
    match u {
        Uplink::None => "none".into(),
        Uplink::Nic => "nic".into(),
        Uplink::Session(p) => format!("proxy:{p}"),
    }
}

fn wait_for_interface(name: &str, timeout: Duration) -> Result<u32, DaemonError> {
    let t0 = Instant::now();
    loop {
        match netlink::if_index(name) {
            Ok(i) => return Ok(i),
            Err(e) if t0.elapsed() > timeout => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
