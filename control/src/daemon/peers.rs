//! The sessions with configured peers over the fabric's control channel: handshake,
//! authenticated heartbeats with RTT, and failure detection (BFD-like: a session is down
//! when no authenticated message arrived for `heartbeat × multiplier`).
//!
//! Liveness is judged only from authenticated control messages from that very peer, never
//! from data traffic or other nodes' messages: a dead path cannot look alive (bonding's
//! arp_validate lesson).

use std::net::{SocketAddr, UdpSocket};
use std::num::NonZeroU64;
use std::time::Duration;

use crate::config::{Config, GroupKey, MacAddr};
use crate::proto::{
    Capabilities, Heartbeat, Hello, LinkFlags, Message, PeerTable, ProtoError, MAX_CONTROL_LEN,
};

/// The control channel listens on the fabric address's port plus this offset.
pub const CONTROL_PORT_OFFSET: u16 = 1;

/// The control address of a fabric data address.
pub fn control_addr(data: SocketAddr) -> SocketAddr {
    SocketAddr::new(data.ip(), data.port().wrapping_add(CONTROL_PORT_OFFSET))
}

/// Session state of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// No session; Hellos are sent periodically.
    Down,
    /// Hello sent, waiting for Accept.
    Connecting,
    /// Authenticated both ways; heartbeats flow.
    Up,
}

/// One configured peer.
#[derive(Debug)]
pub struct Peer {
    /// The peer's node id.
    pub id: String,
    /// Where its control messages come from and go to.
    pub ctl_addr: SocketAddr,
    /// Session state.
    pub state: PeerState,
    /// The peer's link flags, as last reported.
    pub link: LinkFlags,
    /// The peer's MACs from its Hello.
    pub macs: Vec<MacAddr>,
    /// Latest heartbeat RTT.
    pub rtt: Option<Duration>,
    /// When the last authenticated message arrived.
    last_rx: Duration,
    next_hello: Duration,
    next_heartbeat: Duration,
    hb_seq: u64,
    /// (seq, tx_ns, when received) of the peer's last heartbeat, echoed in ours.
    echo: Option<(u64, u64, Duration)>,
    /// The ids of our proxy requests and releases to it.
    pub requests: RequestIds,
    /// Sessions established since start (1 = never restarted).
    pub established_count: u64,
    /// The longest silence between two authenticated messages of an up session since
    /// start: how close the peer came to the detection time (the margin operators size
    /// `timers.multiplier` by).
    pub max_rx_gap: Duration,
}

/// The ids of our proxy requests and releases to one peer. Every message gets a new id
/// (the peer ignores one older than the newest it has seen, so a late release never undoes
/// a newer request), but a retry of the same ask keeps the earlier tries' acks valid: a
/// proxy slower than our retry timer still answers what we ask.
#[derive(Debug, Default)]
pub struct RequestIds {
    last: u32,
    /// What the messages since id `since` asked: (domains, MACs); no domains: a release.
    ask: Option<(Vec<u16>, Vec<MacAddr>)>,
    since: u32,
}

impl RequestIds {
    /// The id for the next request (`domains` non-empty) or release (`domains` empty).
    pub fn next(&mut self, domains: Vec<u16>, macs: Vec<MacAddr>) -> u32 {
        self.last = self.last.wrapping_add(1);
        let ask = Some((domains, macs));
        if self.ask != ask {
            self.ask = ask;
            self.since = self.last;
        }
        self.last
    }

    /// Whether an ack with `id` answers what we ask the peer now.
    pub fn answers(&self, id: u32) -> bool {
        self.ask.is_some() && (self.since..=self.last).contains(&id)
    }

    /// A new session with the peer: it starts from nothing, and no ack from the old one
    /// answers what we ask in the new one.
    pub fn new_session(&mut self) {
        self.ask = None;
    }
}

/// What a received message means for the rest of the control plane.
#[derive(Debug)]
pub enum PeerEvent {
    /// A session came up (with the peer's link flags and MACs).
    Up(usize),
    /// A session went down (timeout, or the peer restarted).
    Down(usize),
    /// The peer reported a new link state.
    Link(usize, LinkFlags),
    /// A heartbeat round trip was measured.
    Rtt(usize, Duration),
    /// Any other message for the failover or proxy machines.
    Message(usize, Message),
}

/// All sessions, with the control socket.
pub struct Peers {
    sock: UdpSocket,
    table: PeerTable,
    /// The peers, in config order (their index is the fabric session id).
    pub peers: Vec<Peer>,
    hello: Hello,
    heartbeat: Duration,
    detection: Duration,
    hello_interval: Duration,
    /// Messages that failed authentication or parsing, or came from an unexpected address.
    pub rejected_source: u64,
    buf: Vec<u8>,
    urandom: Option<std::fs::File>,
}

impl Peers {
    /// Binds the control socket and prepares one idle session per configured peer.
    pub fn new(cfg: &Config, key: &GroupKey) -> Result<Peers, super::DaemonError> {
        let local = control_addr(cfg.fabric.address);
        let sock = UdpSocket::bind(local).map_err(|e| super::DaemonError::Io {
            action: format!("binding the control socket to {local}"),
            source: e,
        })?;
        sock.set_nonblocking(true)
            .map_err(|e| super::DaemonError::Io {
                action: "making the control socket non-blocking".into(),
                source: e,
            })?;
        let table = PeerTable::new(key, &cfg.node.id, cfg.peers.iter().map(|p| p.id.as_str()))?;
        let peers = cfg
            .peers
            .iter()
            .map(|p| Peer {
                id: p.id.clone(),
                ctl_addr: control_addr(p.address),
                state: PeerState::Down,
                link: LinkFlags::default(),
                macs: Vec::new(),
                rtt: None,
                last_rx: Duration::ZERO,
                next_hello: Duration::ZERO,
                next_heartbeat: Duration::ZERO,
                hb_seq: 0,
                echo: None,
                requests: RequestIds::default(),
                established_count: 0,
                max_rx_gap: Duration::ZERO,
            })
            .collect();
        let heartbeat = cfg.timers.heartbeat();
        Ok(Peers {
            sock,
            table,
            peers,
            hello: Hello {
                max_version: crate::proto::VERSION,
                capabilities: Capabilities::PROXY,
                link: LinkFlags::new(false, true),
                group: cfg.node.group.clone(),
                macs: cfg.kernel.macs.clone(),
            },
            heartbeat,
            detection: cfg.timers.detection_time(),
            hello_interval: (heartbeat * 10)
                .clamp(Duration::from_millis(20), Duration::from_millis(500)),
            rejected_source: 0,
            buf: vec![0; MAX_CONTROL_LEN * 2],
            urandom: std::fs::File::open("/dev/urandom").ok(),
        })
    }

    /// Our MACs changed at run time: the Hellos of later handshakes carry the new set.
    pub fn set_macs(&mut self, macs: Vec<MacAddr>) {
        self.hello.macs = macs;
    }

    /// Our control loop ran `lag` late: extends every up session's silence allowance by that
    /// much (never beyond `now`), so that a stall of this thread, or of the whole machine,
    /// does not count against the peers. Messages that did arrive meanwhile are read (and
    /// reset the silence) before sessions are judged anyway; this covers peers that could
    /// not send either. A peer that died during the stall is found `lag` later.
    pub fn forgive(&mut self, lag: Duration, now: Duration) {
        for p in &mut self.peers {
            if p.state == PeerState::Up {
                p.last_rx = (p.last_rx + lag).min(now);
            }
        }
    }

    /// Our link flags, sent in Hellos, heartbeats and LinkState messages.
    pub fn set_local_link(&mut self, link: LinkFlags, now: Duration) {
        if self.hello.link == link {
            return;
        }
        self.hello.link = link;
        // Tell every peer at once: a client must not wait a heartbeat to learn that its
        // proxy lost its NIC.
        for i in 0..self.peers.len() {
            if self.peers[i].state == PeerState::Up {
                self.send(i, &Message::LinkState(link));
                self.peers[i].next_heartbeat = now + self.heartbeat;
            }
        }
    }

    /// Authenticated rejects so far, by reason.
    pub fn rejects(&self) -> crate::proto::RejectCounters {
        self.table.rejects()
    }

    fn nonce(&mut self) -> NonZeroU64 {
        use std::io::Read;
        let mut b = [0u8; 8];
        if let Some(f) = self.urandom.as_mut() {
            let _ = f.read_exact(&mut b);
        }
        let v = u64::from_ne_bytes(b)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        NonZeroU64::new(v).unwrap_or(NonZeroU64::MIN)
    }

    /// Seals and sends a message to peer `i`; failures are logged, never fatal (the
    /// heartbeat timeout is what declares a path dead).
    pub fn send(&mut self, i: usize, msg: &Message) {
        let Some(session) = self.table.session(i) else {
            return;
        };
        match session.seal(msg) {
            Ok(bytes) => self.send_bytes(i, &bytes),
            Err(e) => tracing::debug!(peer = %self.peers[i].id, "not sent: {e}"),
        }
    }

    fn send_bytes(&self, i: usize, bytes: &[u8]) {
        if let Err(e) = self.sock.send_to(bytes, self.peers[i].ctl_addr) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                tracing::debug!(peer = %self.peers[i].id, "control send: {e}");
            }
        }
    }

    /// Sends due Hellos and heartbeats, and declares timed-out sessions down.
    pub fn tick(&mut self, now: Duration, now_ns: u64, events: &mut Vec<PeerEvent>) {
        for i in 0..self.peers.len() {
            match self.peers[i].state {
                PeerState::Up => {
                    if now.saturating_sub(self.peers[i].last_rx) > self.detection {
                        tracing::warn!(peer = %self.peers[i].id, "session down: no heartbeat for {:?} (detection time {:?})", now.saturating_sub(self.peers[i].last_rx), self.detection);
                        self.down(i, now, events);
                        continue;
                    }
                    if now >= self.peers[i].next_heartbeat {
                        let p = &mut self.peers[i];
                        p.hb_seq += 1;
                        let (echo_seq, echo_tx_ns, echo_held_ns) = match p.echo {
                            Some((s, t, at)) => (s, t, now.saturating_sub(at).as_nanos() as u64),
                            None => (0, 0, 0),
                        };
                        let hb = Heartbeat {
                            seq: p.hb_seq,
                            tx_ns: now_ns,
                            echo_seq,
                            echo_tx_ns,
                            echo_held_ns,
                            link: self.hello.link,
                        };
                        p.next_heartbeat = now + self.heartbeat;
                        self.send(i, &Message::Heartbeat(hb));
                    }
                }
                PeerState::Down | PeerState::Connecting => {
                    if now >= self.peers[i].next_hello {
                        let nonce = self.nonce();
                        let hello = self.hello.clone();
                        if let Some(s) = self.table.session(i) {
                            match s.hello(nonce, &hello) {
                                Ok(bytes) => self.send_bytes(i, &bytes),
                                Err(e) => tracing::debug!("hello: {e}"),
                            }
                        }
                        self.peers[i].state = PeerState::Connecting;
                        self.peers[i].next_hello = now + self.hello_interval;
                    }
                }
            }
        }
    }

    fn down(&mut self, i: usize, now: Duration, events: &mut Vec<PeerEvent>) {
        if let Some(s) = self.table.session(i) {
            s.reset();
        }
        let p = &mut self.peers[i];
        p.state = PeerState::Down;
        p.echo = None;
        p.rtt = None;
        p.next_hello = now;
        events.push(PeerEvent::Down(i));
    }

    fn up(&mut self, i: usize, hello: Hello, now: Duration, events: &mut Vec<PeerEvent>) {
        let p = &mut self.peers[i];
        p.state = PeerState::Up;
        p.link = hello.link;
        p.macs = hello.macs;
        p.last_rx = now;
        p.next_heartbeat = now;
        p.established_count += 1;
        p.requests.new_session();
        tracing::info!(peer = %p.id, "session up (link {})", if p.link.usable() { "usable" } else { "not usable" });
        events.push(PeerEvent::Up(i));
    }

    /// Reads every pending control message and turns it into events. Never blocks.
    pub fn poll(&mut self, now: Duration, now_ns: u64, events: &mut Vec<PeerEvent>) {
        loop {
            let (n, from) = match self.sock.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("control recv: {e}");
                    return;
                }
            };
            let bytes = self.buf[..n].to_vec();
            let (i, msg) = match self.table.open(&bytes) {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(%from, "control message rejected: {e}");
                    continue;
                }
            };
            if from != self.peers[i].ctl_addr {
                // Authenticated, but from somewhere the config does not know this peer at.
                self.rejected_source += 1;
                tracing::debug!(%from, peer = %self.peers[i].id, "control message from an unexpected address");
                continue;
            }
            let p = &mut self.peers[i];
            if p.state == PeerState::Up {
                p.max_rx_gap = p.max_rx_gap.max(now.saturating_sub(p.last_rx));
            }
            p.last_rx = now;
            match msg {
                Message::Hello(h) => {
                    let crossed = self.peers[i].state == PeerState::Connecting;
                    let answer = !crossed
                        || self
                            .table
                            .session(i)
                            .is_some_and(|s| s.answers_crossed_hello());
                    if self.peers[i].state == PeerState::Up {
                        // The peer restarted: its old session (and whatever it carried for
                        // us or we for it) is gone.
                        tracing::info!(peer = %self.peers[i].id, "peer restarted its session");
                        self.down(i, now, events);
                    }
                    if !answer {
                        continue;
                    }
                    let nonce = self.nonce();
                    let ours = self.hello.clone();
                    let sent = match self.table.session(i).map(|s| s.accept(nonce, &ours)) {
                        Some(Ok(bytes)) => {
                            self.send_bytes(i, &bytes);
                            true
                        }
                        Some(Err(e)) => {
                            tracing::debug!("accept: {e}");
                            false
                        }
                        None => false,
                    };
                    if sent {
                        self.up(i, h, now, events);
                    }
                }
                Message::Accept(h) => {
                    if self.peers[i].state != PeerState::Up {
                        self.up(i, h, now, events);
                    }
                }
                Message::Heartbeat(hb) => {
                    let p = &mut self.peers[i];
                    if let Some(rtt) = hb.rtt_ns(now_ns) {
                        p.rtt = Some(Duration::from_nanos(rtt));
                        events.push(PeerEvent::Rtt(i, Duration::from_nanos(rtt)));
                    }
                    p.echo = Some((hb.seq, hb.tx_ns, now));
                    if hb.link != p.link {
                        p.link = hb.link;
                        events.push(PeerEvent::Link(i, hb.link));
                    }
                }
                Message::LinkState(l) => {
                    if l != self.peers[i].link {
                        self.peers[i].link = l;
                        events.push(PeerEvent::Link(i, l));
                    }
                }
                other => events.push(PeerEvent::Message(i, other)),
            }
        }
    }

    /// The raw socket, to wait on.
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Index of a peer by id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.id == id)
    }
}

impl From<ProtoError> for super::DaemonError {
    fn from(e: ProtoError) -> Self {
        super::DaemonError::Proto(e)
    }
}

#[cfg(test)]
mod tests {
    use super::RequestIds;
    use crate::config::MacAddr;

    #[test]
    fn an_ack_to_an_earlier_try_of_the_same_ask_counts_and_one_to_another_ask_does_not() {
        let m = vec![MacAddr([2, 0, 0, 0, 0, 1])];
        let mut ids = RequestIds::default();
        assert!(!ids.answers(0), "nothing asked yet");
        let first = ids.next(vec![0], m.clone());
        let retry = ids.next(vec![0], m.clone());
        assert!(retry > first);
        assert!(ids.answers(first) && ids.answers(retry));
        assert!(!ids.answers(retry + 1), "an id never sent");

        // A different ask (another domain): acks to the old one are stale.
        let other = ids.next(vec![0, 1], m.clone());
        assert!(!ids.answers(first) && !ids.answers(retry) && ids.answers(other));
        // Different MACs are a different ask too.
        let macs = ids.next(vec![0, 1], vec![]);
        assert!(!ids.answers(other) && ids.answers(macs));
        // A release, then the same request again: only the newest counts.
        let release = ids.next(vec![], vec![]);
        assert!(ids.answers(release) && !ids.answers(macs));
        let again = ids.next(vec![0], m.clone());
        assert!(!ids.answers(release) && ids.answers(again) && !ids.answers(first));
    }

    #[test]
    fn acks_from_before_a_new_session_do_not_answer_the_same_ask_in_it() {
        let m = vec![MacAddr([2, 0, 0, 0, 0, 1])];
        let mut ids = RequestIds::default();
        let old = ids.next(vec![0], m.clone());
        ids.new_session();
        assert!(!ids.answers(old));
        let new = ids.next(vec![0], m.clone());
        assert!(!ids.answers(old) && ids.answers(new));
    }
}
