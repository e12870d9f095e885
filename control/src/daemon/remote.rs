//! Domains this node reaches only through peers (`local = false` in `[[domains]]`): a network
//! that only some peers are cabled to. Each such domain has its own owner-side failover
//! machine with no NIC, whose proxies are the domain's `via` peers in order; it runs next to
//! the machine of the local domains and shares the sessions with it.
//!
//! A proxy request replaces what the proxy carried for us before, so the request sent to a
//! peer always names every domain for which some machine has chosen that peer: the
//! `Requests` bookkeeping here answers "which domains does peer P carry for us now".

use ::dataplane::steer::DomainId;

use crate::config::Config;
use crate::policy::{Failover, FailoverParams};

/// Which failover machine an action came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Machine {
    /// The machine of the local domains (NIC first, then the proxies).
    Local,
    /// The machine of `remote[i]`.
    Remote(usize),
}

/// One domain reached only through peers.
pub(super) struct RemoteDomain {
    pub name: String,
    pub domain: DomainId,
    pub failover: Failover,
}

/// The peer each machine has asked to carry its domains, if any.
pub(super) struct Requests {
    local: Option<String>,
    remote: Vec<Option<String>>,
}

impl Requests {
    pub fn new(remote: usize) -> Self {
        Self {
            local: None,
            remote: vec![None; remote],
        }
    }

    fn slot(&mut self, m: Machine) -> &mut Option<String> {
        match m {
            Machine::Local => &mut self.local,
            Machine::Remote(i) => &mut self.remote[i],
        }
    }

    /// `m` asks `peer`.
    pub fn request(&mut self, m: Machine, peer: &str) {
        *self.slot(m) = Some(peer.to_owned());
    }

    /// `m` lets go of `peer` (a machine that has moved on keeps its newer choice).
    pub fn release(&mut self, m: Machine, peer: &str) {
        let slot = self.slot(m);
        if slot.as_deref() == Some(peer) {
            *slot = None;
        }
    }

    /// The machines whose domains `peer` is asked to carry.
    pub fn machines_on(&self, peer: &str) -> Vec<Machine> {
        let mut v = Vec::new();
        if self.local.as_deref() == Some(peer) {
            v.push(Machine::Local);
        }
        v.extend(
            self.remote
                .iter()
                .enumerate()
                .filter(|(_, p)| p.as_deref() == Some(peer))
                .map(|(i, _)| Machine::Remote(i)),
        );
        v
    }
}

/// The remote-domain machines of `cfg`, in config order.
pub(super) fn machines(cfg: &Config) -> Vec<RemoteDomain> {
    cfg.domains
        .iter()
        .filter(|d| !d.local)
        .map(|d| RemoteDomain {
            name: d.name.clone(),
            domain: DomainId(d.id),
            failover: Failover::new(FailoverParams::for_remote_domain(cfg, d)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_track_each_machine_and_keep_newer_choices() {
        let mut r = Requests::new(2);
        r.request(Machine::Local, "b");
        r.request(Machine::Remote(1), "b");
        r.request(Machine::Remote(0), "c");
        assert_eq!(
            r.machines_on("b"),
            [Machine::Local, Machine::Remote(1)],
            "both machines ride on b"
        );
        assert_eq!(r.machines_on("c"), [Machine::Remote(0)]);
        // The local machine moves to c, then its delayed release of b arrives.
        r.request(Machine::Local, "c");
        r.release(Machine::Local, "b");
        assert_eq!(r.machines_on("c"), [Machine::Local, Machine::Remote(0)]);
        assert_eq!(r.machines_on("b"), [Machine::Remote(1)]);
        r.release(Machine::Remote(1), "b");
        assert!(r.machines_on("b").is_empty());
    }
}
