//! The upstream probe (bonding's `arp_ip_target`): a NIC whose link is up is usable only
//! while something behind it answers. Every `interval_ms` the probe sends an ARP request for
//! `upstream_probe.target` from the NIC port's own MAC (not the node's kernel MAC, so the
//! answer comes back through the NIC even while the node's MAC is being carried by a proxy);
//! the steering table sends frames from that MAC out of the NIC whatever the active path,
//! and delivers frames for it to the kernel interface, where this module reads them with an
//! ARP-only packet socket. The upstream is dead after `multiplier` intervals without an
//! answer.
//!
//! It also closes a gap the link detector leaves: after a cable comes back, a switch port
//! may take a while to forward (STP, or a Linux bridge's link watch, seen at up to 1.6 s in
//! the lab), and failing back before that blackholes the node. After a link loss the
//! upstream counts as dead until a probe is answered again, so failback waits for proof.

use std::net::Ipv4Addr;
use std::time::Duration;

use dataplane::sys::raw_socket::RawSocket;
use dataplane::wire::arp::ArpPacket;
use dataplane::wire::ethernet::write_header;
use dataplane::wire::{ArpOp, ArpRepr, MacAddr};

use crate::config::UpstreamProbeConfig;

const ETH_P_ARP: u16 = 0x0806;

/// The probe's state.
pub struct UpstreamProbe {
    sock: RawSocket,
    nic_mac: MacAddr,
    source: Ipv4Addr,
    target: Ipv4Addr,
    interval: Duration,
    window: Duration,
    next_send: Duration,
    last_reply: Option<Duration>,
    /// Since when the link has been up without interruption (the silence window of a path
    /// that was never answered starts there, not at start-up).
    link_up_since: Option<Duration>,
    verdict: Option<bool>,
    /// Probes sent since start.
    pub sent: u64,
    /// Answers received since start.
    pub answered: u64,
}

impl UpstreamProbe {
    /// A probe sending from `nic_mac` through the kernel interface `iface`.
    pub fn new(
        iface: &str,
        nic_mac: MacAddr,
        cfg: &UpstreamProbeConfig,
    ) -> Result<Self, super::DaemonError> {
        let sock =
            RawSocket::bind_protocol(iface, ETH_P_ARP).map_err(|e| super::DaemonError::Io {
                action: format!("opening the upstream probe's ARP socket on {iface}"),
                source: std::io::Error::other(e.to_string()),
            })?;
        let interval = Duration::from_millis(cfg.interval_ms);
        Ok(Self {
            sock,
            nic_mac,
            source: cfg.source.unwrap_or(Ipv4Addr::UNSPECIFIED),
            target: cfg.target,
            interval,
            window: interval * u32::try_from(cfg.multiplier).unwrap_or(u32::MAX),
            next_send: Duration::ZERO,
            last_reply: None,
            link_up_since: None,
            verdict: None,
            sent: 0,
            answered: 0,
        })
    }

    /// The link went down: nothing behind it can answer, and after it returns only a new
    /// answer proves the path. Returns the new verdict if it changed.
    pub fn link_lost(&mut self) -> Option<bool> {
        self.last_reply = None;
        self.link_up_since = None;
        self.set(false)
    }

    fn set(&mut self, v: bool) -> Option<bool> {
        if self.verdict == Some(v) {
            return None;
        }
        self.verdict = Some(v);
        Some(v)
    }

    /// Sends a probe when due, reads answers, and returns the verdict if it changed.
    pub fn tick(&mut self, now: Duration, link_up: bool) -> Option<bool> {
        let mut buf = [0u8; 128];
        while let Ok(Some(n)) = self.sock.recv(&mut buf, Duration::ZERO) {
            if self.is_answer(&buf[..n]) {
                self.answered += 1;
                self.last_reply = Some(now);
            }
        }
        if !link_up {
            self.link_up_since = None;
        } else if self.link_up_since.is_none() {
            self.link_up_since = Some(now);
        }
        if link_up && now >= self.next_send {
            self.next_send = now + self.interval;
            self.send();
        }
        match self.last_reply {
            Some(t) if link_up && now.saturating_sub(t) <= self.window => self.set(true),
            Some(_) => self.set(false),
            // Never answered since start or since the last link loss: dead once a full
            // window has passed without an answer (at start the policy assumes it alive).
            None if self.verdict == Some(false) => None,
            None => match self.link_up_since {
                Some(t) if now.saturating_sub(t) >= self.window + self.interval => self.set(false),
                _ => None,
            },
        }
    }

    fn send(&mut self) {
        let mut frame = [0u8; 64];
        let Ok(h) = write_header(
            &mut frame,
            MacAddr::BROADCAST,
            self.nic_mac,
            None,
            ETH_P_ARP,
        ) else {
            return;
        };
        let req = ArpRepr {
            operation: ArpOp::Request,
            sender_mac: self.nic_mac,
            sender_ip: self.source,
            target_mac: MacAddr([0; 6]),
            target_ip: self.target,
        };
        let Ok(n) = req.emit(&mut frame[h..]) else {
            return;
        };
        // Pad to the Ethernet minimum (the rest of `frame` is zero).
        let len = (h + n).max(60);
        if self.sock.send_nowait(&frame[..len]).is_ok() {
            self.sent += 1;
        }
    }

    fn is_answer(&self, frame: &[u8]) -> bool {
        let Some(arp) = frame.get(14..).and_then(|p| ArpPacket::new_checked(p).ok()) else {
            return false;
        };
        arp.operation() == ArpOp::Reply
            && arp.sender_ip() == self.target
            && arp.target_mac() == self.nic_mac
    }

    /// When the next probe is due; never while the link is down.
    pub fn next_deadline(&self) -> Duration {
        deadline(self.next_send, self.link_up_since.is_some())
    }
}

impl UpstreamProbe {
    /// Whether the upstream counts as alive (alive until proven dead at start).
    pub fn ok(&self) -> bool {
        self.verdict != Some(false)
    }
}

/// The probe's deadline for the control loop's sleep. While the link is down nothing is
/// sent and `next_send` stays where it was, in the past: returned as is, it kept the
/// control loop from sleeping at all, and the SCHED_FIFO control thread spun at 100% CPU
/// for as long as the node was failed over, until the kernel's RT throttling
/// (`sched_rt_runtime_us`, 950 ms per second) stopped it for 50 ms every second: no
/// heartbeats for 50 ms, so every proxy declared the node's session dead once a second
/// (found by the lab's fault suite).
fn deadline(next_send: Duration, link_up: bool) -> Duration {
    if link_up {
        next_send
    } else {
        Duration::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_deadline_while_the_link_is_down() {
        let past = Duration::from_millis(5);
        assert_eq!(deadline(past, true), past);
        assert_eq!(deadline(past, false), Duration::MAX);
    }
}
