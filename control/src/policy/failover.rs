//! The owner side: which path carries this node's own MACs.
//!
//! Candidates, best first: the local NIC (when it has one), then the proxies in priority
//! order. A path is *usable* when:
//! - NIC: link up, and the upstream probe passes (optimistically true until a probe says
//!   otherwise, so a node with a probe does not start on a proxy);
//! - proxy: session up (heartbeats), its own NIC usable (from its heartbeats and LinkState
//!   messages), and it has not refused us (a negative ack, or no ack after the retries).
//!   Its refusal is forgotten when its session restarts.
//!
//! A path is *stable* once it has been usable without interruption for `hold_down`.
//!
//! Rules, evaluated after every event:
//! 1. When the current path is unusable (or there is none), move at once to the best usable
//!    path, stable or not. Failing over never waits; and a path that just came back is
//!    better than no path, so carrier returns as soon as anything is usable.
//! 2. While the current path is usable, move only as the failback policy allows: `always`
//!    to the NIC once it is stable; `better` to the NIC or to a higher-priority proxy once
//!    stable; `never` not at all. The hold-down keeps a flapping link from pulling traffic
//!    back and forth: each flap restarts it, while each failure still fails over at once.
//! 3. Carrier is on exactly when there is a current path.
//! 4. With no usable path at all, a NIC whose link is up is taken even though its upstream
//!    probe has not answered: the probe needs the carrier to send at all.
//!
//! On a move to a proxy the machine emits `RequestProxy` and switches the uplink in the same
//! breath, without waiting for the ack. The standby sessions are established in advance,
//! and the request travels on the same session ahead of the first tunnelled frame, so the
//! proxy has installed the MACs by the time frames arrive (on RC in order; over UDP a frame
//! overtaking the request is dropped by the proxy's source-MAC check, which costs one
//! frame, not the failover time). Waiting for the ack would add a round trip plus the
//! proxy's scheduling delay to every failover. A refusal, or no ack after
//! [`FailoverParams::ack_retries`] retransmissions, makes the proxy unusable, which moves
//! us on by rule 1.
//!
//! Announcements: every move to a path emits `Announce` (GARP/NA through the new path). A
//! proxy we leave voluntarily while it still works keeps our MACs until `release_delay` has
//! passed (the announcement burst), so frames the switch still sends it during the burst
//! are delivered rather than dropped; a proxy we leave because it failed is released at once.

use std::time::Duration;

use crate::config::{Config, DomainConfig, Failback};

/// Proxy-request retransmissions before a silent proxy counts as refusing.
pub const ACK_RETRIES: u32 = 3;

/// Parameters of one owner-side machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverParams {
    /// Whether a local NIC is a candidate (false for domains reached only through peers).
    pub has_nic: bool,
    /// Proxy peer ids, highest priority first.
    pub proxies: Vec<String>,
    /// When to move back to a better path.
    pub failback: Failback,
    /// How long a returning path must be usable before a voluntary move to it.
    pub hold_down: Duration,
    /// Time to wait for a proxy's ack before sending the request again.
    pub ack_timeout: Duration,
    /// Retransmissions before giving up on a proxy.
    pub ack_retries: u32,
    /// How long a proxy left voluntarily keeps our MACs.
    pub release_delay: Duration,
}

impl FailoverParams {
    /// The machine for this node's local domains: its NIC, then its proxies.
    pub fn for_local_domains(cfg: &Config) -> FailoverParams {
        FailoverParams {
            has_nic: true,
            proxies: cfg.proxy_order(),
            failback: cfg.failover.failback,
            hold_down: cfg.hold_down(),
            ack_timeout: cfg.timers.ack_timeout(),
            ack_retries: ACK_RETRIES,
            release_delay: cfg.announce.burst_duration(),
        }
    }

    /// The machine for a domain reached only through peers (`local = false`): no NIC, its
    /// `via` peers as proxies.
    pub fn for_remote_domain(cfg: &Config, domain: &DomainConfig) -> FailoverParams {
        FailoverParams {
            has_nic: false,
            proxies: domain.via.clone(),
            ..Self::for_local_domains(cfg)
        }
    }
}

/// Where this node's frames leave.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Uplink {
    /// Nowhere: carrier is off.
    None,
    /// The local NIC.
    Nic,
    /// The session to this proxy.
    Session(String),
}

/// What the control thread must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send a ProxyRequest (our MACs and domains) to this peer.
    RequestProxy(String),
    /// Send a ProxyRelease to this peer.
    ReleaseProxy(String),
    /// Point the dataplane's uplink for our MACs here.
    SetUplink(Uplink),
    /// Start a GARP/NA burst for our addresses through the current uplink.
    Announce,
    /// Set the kernel interface's carrier.
    SetCarrier(bool),
}

/// An input of the owner-side machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Only time passed (call at [`Failover::next_deadline`]).
    Tick,
    /// The local NIC's link state, from the link poll.
    NicLink(bool),
    /// The upstream probe's verdict.
    Upstream(bool),
    /// A proxy's session came up (handshake done) or went down (heartbeats missed).
    Session {
        /// The peer.
        peer: &'a str,
        /// Up or down.
        up: bool,
    },
    /// A proxy's own NIC state (its heartbeat or LinkState flags: link up and upstream ok).
    PeerLink {
        /// The peer.
        peer: &'a str,
        /// It can carry our frames.
        usable: bool,
    },
    /// A proxy answered our latest request.
    Ack {
        /// The peer.
        peer: &'a str,
        /// Installed, or refused.
        accepted: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    None,
    Nic,
    Proxy(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckWait {
    Idle,
    Waiting { deadline: Duration, retries: u32 },
    Acked,
}

#[derive(Debug, Clone)]
struct ProxyState {
    id: String,
    session_up: bool,
    link_usable: bool,
    refused: bool,
    usable_since: Option<Duration>,
    /// We asked it to carry our MACs and have not released them.
    installed: bool,
    ack: AckWait,
    /// A voluntary move away: release it at this time.
    release_at: Option<Duration>,
}

impl ProxyState {
    fn usable(&self) -> bool {
        self.session_up && self.link_usable && !self.refused
    }
}

/// One proxy as the machine sees it, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStatus {
    /// Peer id.
    pub id: String,
    /// Its session is up.
    pub session_up: bool,
    /// Its NIC can carry our frames.
    pub link_usable: bool,
    /// It refused us (or never answered) in this session.
    pub refused: bool,
    /// It carries, or is asked to carry, our MACs.
    pub installed: bool,
}

/// The owner-side failover state machine. Pure: no clock, no I/O; time comes with each
/// event and must not go backwards (an earlier time is treated as the latest seen).
#[derive(Debug, Clone)]
pub struct Failover {
    params: FailoverParams,
    now: Duration,
    nic_up: bool,
    upstream_ok: bool,
    nic_since: Option<Duration>,
    proxies: Vec<ProxyState>,
    target: Target,
    carrier: bool,
}

impl Failover {
    /// A machine with no path yet: uplink none, carrier off (start the kernel interface
    /// with carrier off), every session down, the NIC down until the first poll says
    /// otherwise.
    pub fn new(params: FailoverParams) -> Failover {
        let proxies = params
            .proxies
            .iter()
            .map(|id| ProxyState {
                id: id.clone(),
                session_up: false,
                link_usable: false,
                refused: false,
                usable_since: None,
                installed: false,
                ack: AckWait::Idle,
                release_at: None,
            })
            .collect();
        Failover {
            params,
            now: Duration::ZERO,
            nic_up: false,
            upstream_ok: true,
            nic_since: None,
            proxies,
            target: Target::None,
            carrier: false,
        }
    }

    /// Feeds one event at time `now` and returns the actions to carry out, in order.
    /// Timers due at or before `now` fire first.
    pub fn handle(&mut self, now: Duration, event: Event<'_>) -> Vec<Action> {
        let now = now.max(self.now);
        self.now = now;
        let mut out = Vec::new();
        self.run_timers(now, &mut out);
        let unproven_nic = self.target == Target::Nic && !self.nic_usable();
        self.apply(event);
        self.refresh_since(now);
        self.reselect(now, &mut out);
        if unproven_nic
            && self.target == Target::Nic
            && self.nic_usable()
            && !out.contains(&Action::Announce)
        {
            // The NIC taken as the last resort (rule 4) has just been proven by its probe:
            // the switch forwards on it now, while the burst sent when it was taken may have
            // been dropped by a switch port still coming up (seconds, on a Linux bridge).
            out.push(Action::Announce);
        }
        out
    }

    /// When the machine next needs a [`Event::Tick`] even if nothing happens: an ack
    /// timeout, a delayed release, or the end of a hold-down that may allow a failback.
    pub fn next_deadline(&self) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut consider = |t: Duration| next = Some(next.map_or(t, |n| n.min(t)));
        for p in &self.proxies {
            if let AckWait::Waiting { deadline, .. } = p.ack {
                consider(deadline);
            }
            if let Some(t) = p.release_at {
                consider(t);
            }
        }
        if let Target::Proxy(cur) = self.target {
            if self.params.failback != Failback::Never {
                if let Some(since) = self.nic_since {
                    let at = since + self.params.hold_down;
                    if at > self.now {
                        consider(at);
                    }
                }
            }
            if self.params.failback == Failback::Better {
                for p in &self.proxies[..cur] {
                    if let Some(since) = p.usable_since {
                        let at = since + self.params.hold_down;
                        if at > self.now {
                            consider(at);
                        }
                    }
                }
            }
        }
        next
    }

    /// The current uplink.
    pub fn uplink(&self) -> Uplink {
        self.to_uplink(self.target)
    }

    /// Whether the kernel interface should have carrier.
    pub fn carrier(&self) -> bool {
        self.carrier
    }

    /// Whether the local NIC can carry our frames now.
    pub fn nic_usable(&self) -> bool {
        self.params.has_nic && self.nic_up && self.upstream_ok
    }

    /// Each proxy's state, in priority order.
    pub fn proxy_status(&self) -> Vec<ProxyStatus> {
        self.proxies
            .iter()
            .map(|p| ProxyStatus {
                id: p.id.clone(),
                session_up: p.session_up,
                link_usable: p.link_usable,
                refused: p.refused,
                installed: p.installed,
            })
            .collect()
    }

    /// Asks the proxy in use again, because what a request carries (the node's MAC set)
    /// changed: the proxy replaces what it holds for us and its source-MAC check follows.
    /// The request is retransmitted and judged like a first one (no ack after the retries,
    /// or a refusal, makes the proxy unusable). No action when no proxy is in use: the next
    /// request carries the new set anyway.
    pub fn resync(&mut self, now: Duration) -> Vec<Action> {
        let now = now.max(self.now);
        self.now = now;
        let Target::Proxy(i) = self.target else {
            return Vec::new();
        };
        let ack_timeout = self.params.ack_timeout;
        let p = &mut self.proxies[i];
        if !p.installed || !p.session_up {
            return Vec::new();
        }
        p.ack = AckWait::Waiting {
            deadline: now + ack_timeout,
            retries: 0,
        };
        vec![Action::RequestProxy(p.id.clone())]
    }

    /// The parameters the machine was built with.
    pub fn params(&self) -> &FailoverParams {
        &self.params
    }

    fn to_uplink(&self, t: Target) -> Uplink {
        match t {
            Target::None => Uplink::None,
            Target::Nic => Uplink::Nic,
            Target::Proxy(i) => Uplink::Session(self.proxies[i].id.clone()),
        }
    }

    fn proxy_index(&self, peer: &str) -> Option<usize> {
        self.proxies.iter().position(|p| p.id == peer)
    }

    fn run_timers(&mut self, now: Duration, out: &mut Vec<Action>) {
        let (ack_timeout, max_retries) = (self.params.ack_timeout, self.params.ack_retries);
        for p in &mut self.proxies {
            if let AckWait::Waiting { deadline, retries } = p.ack {
                if deadline <= now {
                    if retries < max_retries {
                        out.push(Action::RequestProxy(p.id.clone()));
                        p.ack = AckWait::Waiting {
                            deadline: now + ack_timeout,
                            retries: retries + 1,
                        };
                    } else {
                        // Silent: as good as a refusal. The sweep or the reselection
                        // releases it once we have moved on.
                        p.refused = true;
                        p.ack = AckWait::Idle;
                    }
                }
            }
            if p.release_at.is_some_and(|t| t <= now) {
                p.release_at = None;
                if p.installed {
                    p.installed = false;
                    out.push(Action::ReleaseProxy(p.id.clone()));
                }
            }
        }
    }

    fn apply(&mut self, event: Event<'_>) {
        match event {
            Event::Tick => {}
            Event::NicLink(up) => self.nic_up = up,
            Event::Upstream(ok) => self.upstream_ok = ok,
            Event::Session { peer, up } => {
                let Some(i) = self.proxy_index(peer) else {
                    return;
                };
                let p = &mut self.proxies[i];
                if up && !p.session_up {
                    p.session_up = true;
                    p.refused = false;
                    // Its NIC state arrives with its first heartbeat.
                    p.link_usable = false;
                } else if !up && p.session_up {
                    // The proxy drops our MACs with the session: nothing left to release.
                    p.session_up = false;
                    p.link_usable = false;
                    p.refused = false;
                    p.installed = false;
                    p.ack = AckWait::Idle;
                    p.release_at = None;
                }
            }
            Event::PeerLink { peer, usable } => {
                let Some(i) = self.proxy_index(peer) else {
                    return;
                };
                let p = &mut self.proxies[i];
                if p.session_up {
                    p.link_usable = usable;
                }
            }
            Event::Ack { peer, accepted } => {
                let Some(i) = self.proxy_index(peer) else {
                    return;
                };
                let p = &mut self.proxies[i];
                if !p.session_up {
                    return;
                }
                if accepted {
                    if matches!(p.ack, AckWait::Waiting { .. }) {
                        p.ack = AckWait::Acked;
                    }
                } else {
                    p.refused = true;
                    p.ack = AckWait::Idle;
                }
            }
        }
    }

    fn refresh_since(&mut self, now: Duration) {
        let nic = self.nic_usable();
        self.nic_since = if nic {
            Some(self.nic_since.unwrap_or(now))
        } else {
            None
        };
        for p in &mut self.proxies {
            p.usable_since = if p.usable() {
                Some(p.usable_since.unwrap_or(now))
            } else {
                None
            };
        }
    }

    fn usable(&self, t: Target) -> bool {
        match t {
            Target::None => false,
            Target::Nic => self.nic_usable(),
            Target::Proxy(i) => self.proxies[i].usable(),
        }
    }

    fn stable(&self, since: Option<Duration>, now: Duration) -> bool {
        since.is_some_and(|s| now >= s + self.params.hold_down)
    }

    fn best_usable(&self) -> Target {
        if self.nic_usable() {
            return Target::Nic;
        }
        if let Some(i) = self.proxies.iter().position(ProxyState::usable) {
            return Target::Proxy(i);
        }
        // The last resort: a NIC whose link is up but whose upstream probe has not answered
        // (yet). The probe speaks through the kernel interface, which sends nothing without
        // carrier, so with no path at all it could never prove the NIC again: a node whose
        // proxies are all gone would stay cut off after its cable came back. Any proxy that
        // becomes usable still takes precedence (rule 1: the NIC is not usable).
        if self.params.has_nic && self.nic_up {
            return Target::Nic;
        }
        Target::None
    }

    /// Where to go while the current path still works.
    fn voluntary(&self, now: Duration) -> Target {
        let Target::Proxy(cur) = self.target else {
            return self.target;
        };
        let nic_stable = self.nic_usable() && self.stable(self.nic_since, now);
        match self.params.failback {
            Failback::Never => self.target,
            Failback::Always if nic_stable => Target::Nic,
            Failback::Always => self.target,
            Failback::Better if nic_stable => Target::Nic,
            Failback::Better => self.proxies[..cur]
                .iter()
                .position(|p| p.usable() && self.stable(p.usable_since, now))
                .map_or(self.target, Target::Proxy),
        }
    }

    fn reselect(&mut self, now: Duration, out: &mut Vec<Action>) {
        let current_ok = self.usable(self.target);
        let want = if current_ok {
            self.voluntary(now)
        } else {
            self.best_usable()
        };
        if want != self.target {
            self.switch(want, current_ok, now, out);
        }
        self.sweep(out);
    }

    fn switch(&mut self, new: Target, old_ok: bool, now: Duration, out: &mut Vec<Action>) {
        let old = self.target;
        if let Target::Proxy(j) = new {
            let ack_timeout = self.params.ack_timeout;
            let p = &mut self.proxies[j];
            // Still installed from before (its delayed release is cancelled): no new request.
            p.release_at = None;
            if !p.installed {
                out.push(Action::RequestProxy(p.id.clone()));
                p.installed = true;
                p.ack = AckWait::Waiting {
                    deadline: now + ack_timeout,
                    retries: 0,
                };
            }
        }
        self.target = new;
        out.push(Action::SetUplink(self.to_uplink(new)));
        if new == Target::None {
            if self.carrier {
                self.carrier = false;
                out.push(Action::SetCarrier(false));
            }
        } else {
            if !self.carrier {
                self.carrier = true;
                out.push(Action::SetCarrier(true));
            }
            out.push(Action::Announce);
        }
        if let Target::Proxy(i) = old {
            let delay = self.params.release_delay;
            let p = &mut self.proxies[i];
            // Retransmissions are for the path we use, not the one we leave.
            p.ack = AckWait::Idle;
            if p.installed {
                if old_ok && new != Target::None && !delay.is_zero() {
                    p.release_at = Some(now + delay);
                } else {
                    p.installed = false;
                    if p.session_up {
                        out.push(Action::ReleaseProxy(p.id.clone()));
                    }
                }
            }
        }
    }

    /// Releases proxies that carry our MACs although we do not use them and they no
    /// longer work (their NIC failed while a delayed release was pending, or they refused).
    fn sweep(&mut self, out: &mut Vec<Action>) {
        let target = self.target;
        for (i, p) in self.proxies.iter_mut().enumerate() {
            if target != Target::Proxy(i) && p.installed && !p.usable() {
                p.installed = false;
                p.release_at = None;
                p.ack = AckWait::Idle;
                if p.session_up {
                    out.push(Action::ReleaseProxy(p.id.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
