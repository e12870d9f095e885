//! The proxy side: whose MACs this node carries out of its NIC.
//!
//! Each client session holds at most one set of MACs and domains; a request replaces it
//! (so a retransmitted or repeated request is harmless), a release or the loss of the
//! session removes it. Requests are accepted from members of this node's group only, and a
//! MAC can be carried for one client at a time (never this node's own), which is what lets
//! the dataplane check source MACs per session (anti-spoofing).
//!
//! A client's requests and releases share one increasing id counter per session: one that
//! arrives after a newer one (UDP may reorder) is ignored, so a late release can never undo
//! a newer request. The counter restarts with the session: report a new handshake with a
//! client as [`ProxyEvent::SessionDown`] first.

use std::collections::BTreeMap;

use crate::config::{Config, MacAddr};
use crate::proto::{AckStatus, MAX_DOMAINS, MAX_MACS};

/// Parameters of the proxy-side machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyParams {
    /// Peer ids this node proxies for: the members of its group.
    pub members: Vec<String>,
    /// Domains this node's NIC is cabled to.
    pub local_domains: Vec<u16>,
    /// This node's own MACs, which no client may claim.
    pub own_macs: Vec<MacAddr>,
    /// Announce a client's MACs from our NIC as soon as they are installed.
    pub announce_on_behalf: bool,
    /// Most MACs one client may install.
    pub max_macs: usize,
}

impl ProxyParams {
    /// Parameters from the node's config.
    pub fn from_config(cfg: &Config) -> ProxyParams {
        ProxyParams {
            members: cfg.group_peers().map(|p| p.id.clone()).collect(),
            local_domains: cfg.local_domains().map(|d| d.id).collect(),
            own_macs: cfg.kernel.macs.clone(),
            announce_on_behalf: cfg.announce.on_behalf,
            max_macs: MAX_MACS,
        }
    }
}

/// An input of the proxy-side machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyEvent<'a> {
    /// A client asks us to carry its MACs in these domains.
    Request {
        /// The client.
        peer: &'a str,
        /// Request id.
        id: u32,
        /// Its MACs.
        macs: &'a [MacAddr],
        /// The domains.
        domains: &'a [u16],
    },
    /// A client no longer needs us.
    Release {
        /// The client.
        peer: &'a str,
        /// Release id (same counter as requests).
        id: u32,
    },
    /// The session with a client ended (or restarted).
    SessionDown {
        /// The client.
        peer: &'a str,
    },
}

/// What the control thread must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProxyAction {
    /// Steer these MACs to the client's session in these domains, and accept its frames
    /// with these source MACs.
    InstallClient {
        /// The client.
        peer: String,
        /// Its complete MAC set.
        macs: Vec<MacAddr>,
        /// Its domains.
        domains: Vec<u16>,
    },
    /// Stop steering these MACs to the client.
    RemoveClient {
        /// The client.
        peer: String,
        /// The MACs to remove.
        macs: Vec<MacAddr>,
    },
    /// Send a GARP/NA burst for these MACs out of our NIC.
    AnnounceOnBehalf {
        /// The client.
        peer: String,
        /// Its MACs.
        macs: Vec<MacAddr>,
    },
    /// Answer a request.
    SendAck {
        /// The client.
        peer: String,
        /// The request answered.
        id: u32,
        /// The outcome.
        status: AckStatus,
    },
}

/// What is installed for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    /// Its MACs.
    pub macs: Vec<MacAddr>,
    /// Its domains.
    pub domains: Vec<u16>,
}

/// The proxy-side state machine. Pure and deterministic.
#[derive(Debug, Clone)]
pub struct ProxyServer {
    params: ProxyParams,
    clients: BTreeMap<String, ClientEntry>,
    /// Newest request/release id seen per client session.
    last_id: BTreeMap<String, u32>,
}

impl ProxyServer {
    /// A proxy with no clients.
    pub fn new(params: ProxyParams) -> ProxyServer {
        ProxyServer {
            params,
            clients: BTreeMap::new(),
            last_id: BTreeMap::new(),
        }
    }

    /// The installed clients.
    pub fn clients(&self) -> &BTreeMap<String, ClientEntry> {
        &self.clients
    }

    /// The client whose MACs include `mac`, if any.
    pub fn client_of(&self, mac: &MacAddr) -> Option<&str> {
        self.clients
            .iter()
            .find(|(_, e)| e.macs.contains(mac))
            .map(|(peer, _)| peer.as_str())
    }

    /// This node's own MACs changed at run time: requests claiming any of them are refused
    /// from now on. (The caller checks first that no client holds one of them: see
    /// [`ProxyServer::client_of`].)
    pub fn set_own_macs(&mut self, macs: Vec<MacAddr>) {
        self.params.own_macs = macs;
    }

    /// Feeds one event and returns the actions to carry out, in order.
    pub fn handle(&mut self, event: ProxyEvent<'_>) -> Vec<ProxyAction> {
        match event {
            ProxyEvent::Request {
                peer,
                id,
                macs,
                domains,
            } => self.request(peer, id, macs, domains),
            ProxyEvent::Release { peer, id } => {
                if !self.newer(peer, id) {
                    return Vec::new();
                }
                self.remove(peer).into_iter().collect()
            }
            ProxyEvent::SessionDown { peer } => {
                self.last_id.remove(peer);
                self.remove(peer).into_iter().collect()
            }
        }
    }

    /// Records `id` if it is newer than anything seen from `peer` in this session.
    fn newer(&mut self, peer: &str, id: u32) -> bool {
        match self.last_id.get(peer) {
            Some(&last) if id <= last => false,
            _ => {
                self.last_id.insert(peer.to_string(), id);
                true
            }
        }
    }

    fn remove(&mut self, peer: &str) -> Option<ProxyAction> {
        self.clients
            .remove(peer)
            .map(|e| ProxyAction::RemoveClient {
                peer: peer.to_string(),
                macs: e.macs,
            })
    }

    fn request(
        &mut self,
        peer: &str,
        id: u32,
        macs: &[MacAddr],
        domains: &[u16],
    ) -> Vec<ProxyAction> {
        let ack = |status| ProxyAction::SendAck {
            peer: peer.to_string(),
            id,
            status,
        };
        if !self.params.members.iter().any(|m| m == peer) {
            return vec![ack(AckStatus::NotInGroup)];
        }
        if !self.newer(peer, id) {
            return Vec::new();
        }
        let mut want: Vec<MacAddr> = macs.to_vec();
        want.sort();
        want.dedup();
        let mut doms: Vec<u16> = domains.to_vec();
        doms.sort();
        doms.dedup();
        if let Err(status) = self.check(peer, &want, &doms) {
            return vec![ack(status)];
        }
        let mut out = Vec::new();
        let entry = ClientEntry {
            macs: want,
            domains: doms,
        };
        if self.clients.get(peer) != Some(&entry) {
            if let Some(old) = self.clients.get(peer) {
                let gone: Vec<MacAddr> = old
                    .macs
                    .iter()
                    .filter(|m| !entry.macs.contains(m))
                    .copied()
                    .collect();
                if !gone.is_empty() {
                    out.push(ProxyAction::RemoveClient {
                        peer: peer.to_string(),
                        macs: gone,
                    });
                }
            }
            out.push(ProxyAction::InstallClient {
                peer: peer.to_string(),
                macs: entry.macs.clone(),
                domains: entry.domains.clone(),
            });
            if self.params.announce_on_behalf {
                out.push(ProxyAction::AnnounceOnBehalf {
                    peer: peer.to_string(),
                    macs: entry.macs.clone(),
                });
            }
            self.clients.insert(peer.to_string(), entry);
        }
        out.push(ack(AckStatus::Ok));
        out
    }

    fn check(&self, peer: &str, macs: &[MacAddr], domains: &[u16]) -> Result<(), AckStatus> {
        if macs.is_empty() || domains.is_empty() || macs.iter().any(|m| !m.is_unicast()) {
            return Err(AckStatus::Invalid);
        }
        if macs.len() > self.params.max_macs || domains.len() > MAX_DOMAINS {
            return Err(AckStatus::TooMany);
        }
        let taken = |m: &MacAddr| {
            self.params.own_macs.contains(m)
                || self
                    .clients
                    .iter()
                    .any(|(other, e)| other != peer && e.macs.contains(m))
        };
        if macs.iter().any(taken) {
            return Err(AckStatus::Conflict);
        }
        if domains
            .iter()
            .any(|d| !self.params.local_domains.contains(d))
        {
            return Err(AckStatus::UnknownDomain);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn server(on_behalf: bool) -> ProxyServer {
        ProxyServer::new(ProxyParams {
            members: vec!["a".into(), "b".into()],
            local_domains: vec![0, 20],
            own_macs: vec![mac(100)],
            announce_on_behalf: on_behalf,
            max_macs: 4,
        })
    }

    fn req<'a>(peer: &'a str, id: u32, macs: &'a [MacAddr], domains: &'a [u16]) -> ProxyEvent<'a> {
        ProxyEvent::Request {
            peer,
            id,
            macs,
            domains,
        }
    }

    fn ack(peer: &str, id: u32, status: AckStatus) -> ProxyAction {
        ProxyAction::SendAck {
            peer: peer.into(),
            id,
            status,
        }
    }

    fn install(peer: &str, macs: &[MacAddr], domains: &[u16]) -> ProxyAction {
        ProxyAction::InstallClient {
            peer: peer.into(),
            macs: macs.to_vec(),
            domains: domains.to_vec(),
        }
    }

    fn remove(peer: &str, macs: &[MacAddr]) -> ProxyAction {
        ProxyAction::RemoveClient {
            peer: peer.into(),
            macs: macs.to_vec(),
        }
    }

    fn announce(peer: &str, macs: &[MacAddr]) -> ProxyAction {
        ProxyAction::AnnounceOnBehalf {
            peer: peer.into(),
            macs: macs.to_vec(),
        }
    }

    #[test]
    fn install_replace_release() {
        let mut s = server(true);
        assert_eq!(
            s.handle(req("a", 1, &[mac(1), mac(2)], &[0])),
            [
                install("a", &[mac(1), mac(2)], &[0]),
                announce("a", &[mac(1), mac(2)]),
                ack("a", 1, AckStatus::Ok)
            ]
        );
        // The same request again: only the ack.
        assert_eq!(
            s.handle(req("a", 2, &[mac(2), mac(1)], &[0])),
            [ack("a", 2, AckStatus::Ok)]
        );
        // A replacement drops the MAC no longer listed.
        assert_eq!(
            s.handle(req("a", 3, &[mac(2), mac(3)], &[0, 20])),
            [
                remove("a", &[mac(1)]),
                install("a", &[mac(2), mac(3)], &[0, 20]),
                announce("a", &[mac(2), mac(3)]),
                ack("a", 3, AckStatus::Ok)
            ]
        );
        assert_eq!(
            s.handle(ProxyEvent::Release { peer: "a", id: 4 }),
            [remove("a", &[mac(2), mac(3)])]
        );
        assert!(s.clients().is_empty());
        assert_eq!(s.handle(ProxyEvent::Release { peer: "a", id: 5 }), []);
    }

    #[test]
    fn stale_ids_are_ignored() {
        let mut s = server(false);
        assert_eq!(
            s.handle(req("a", 5, &[mac(1)], &[0])),
            [install("a", &[mac(1)], &[0]), ack("a", 5, AckStatus::Ok)]
        );
        // A release older than the request (reordered) must not undo it.
        assert_eq!(s.handle(ProxyEvent::Release { peer: "a", id: 4 }), []);
        assert_eq!(s.handle(req("a", 5, &[mac(9)], &[0])), []);
        assert_eq!(s.clients()["a"].macs, [mac(1)]);
        // A new session restarts the counter.
        assert_eq!(
            s.handle(ProxyEvent::SessionDown { peer: "a" }),
            [remove("a", &[mac(1)])]
        );
        assert_eq!(
            s.handle(req("a", 1, &[mac(1)], &[0])),
            [install("a", &[mac(1)], &[0]), ack("a", 1, AckStatus::Ok)]
        );
        assert_eq!(s.handle(ProxyEvent::SessionDown { peer: "zz" }), []);
    }

    #[test]
    fn refusals() {
        let mut s = server(false);
        let cases: &[(&str, &[MacAddr], &[u16], AckStatus)] = &[
            ("x", &[mac(1)], &[0], AckStatus::NotInGroup),
            ("a", &[], &[0], AckStatus::Invalid),
            ("a", &[mac(1)], &[], AckStatus::Invalid),
            ("a", &[MacAddr::BROADCAST], &[0], AckStatus::Invalid),
            ("a", &[MacAddr([0; 6])], &[0], AckStatus::Invalid),
            (
                "a",
                &[mac(1), mac(2), mac(3), mac(4), mac(5)],
                &[0],
                AckStatus::TooMany,
            ),
            ("a", &[mac(100)], &[0], AckStatus::Conflict),
            ("a", &[mac(1)], &[7], AckStatus::UnknownDomain),
        ];
        for (i, (peer, macs, domains, status)) in cases.iter().enumerate() {
            let id = i as u32 + 1;
            assert_eq!(
                s.handle(req(peer, id, macs, domains)),
                [ack(peer, id, *status)],
                "case {i}"
            );
        }
        assert!(s.clients().is_empty(), "no refusal installs anything");
        // Duplicates within one request are merged, not refused.
        let n = cases.len() as u32 + 1;
        assert_eq!(
            s.handle(req("a", n, &[mac(1), mac(1)], &[0, 0])),
            [install("a", &[mac(1)], &[0]), ack("a", n, AckStatus::Ok)]
        );
        // Another client may not claim a's MAC; a refused request keeps b's old state.
        assert_eq!(
            s.handle(req("b", 1, &[mac(7)], &[0])),
            [install("b", &[mac(7)], &[0]), ack("b", 1, AckStatus::Ok)]
        );
        assert_eq!(
            s.handle(req("b", 2, &[mac(7), mac(1)], &[0])),
            [ack("b", 2, AckStatus::Conflict)]
        );
        assert_eq!(s.clients()["b"].macs, [mac(7)]);
        // Once a's session is gone, b may take the MAC.
        s.handle(ProxyEvent::SessionDown { peer: "a" });
        assert_eq!(
            s.handle(req("b", 3, &[mac(7), mac(1)], &[0])),
            [
                install("b", &[mac(1), mac(7)], &[0]),
                ack("b", 3, AckStatus::Ok)
            ]
        );
    }

    #[test]
    fn a_client_changes_its_macs_and_own_macs_change_at_run_time() {
        let mut s = server(true);
        s.handle(req("a", 1, &[mac(1)], &[0]));
        // a adds a MAC: everything is installed again (the source check follows).
        assert_eq!(
            s.handle(req("a", 2, &[mac(1), mac(2)], &[0])),
            [
                install("a", &[mac(1), mac(2)], &[0]),
                announce("a", &[mac(1), mac(2)]),
                ack("a", 2, AckStatus::Ok)
            ]
        );
        assert_eq!(s.client_of(&mac(2)), Some("a"));
        // a removes it: the MAC is removed before the rest is installed again.
        assert_eq!(
            s.handle(req("a", 3, &[mac(1)], &[0])),
            [
                remove("a", &[mac(2)]),
                install("a", &[mac(1)], &[0]),
                announce("a", &[mac(1)]),
                ack("a", 3, AckStatus::Ok)
            ]
        );
        assert_eq!(s.client_of(&mac(2)), None);
        // Our own set grows by mac(3): no client may claim it any more.
        s.set_own_macs(vec![mac(100), mac(3)]);
        assert_eq!(
            s.handle(req("b", 1, &[mac(3)], &[0])),
            [ack("b", 1, AckStatus::Conflict)]
        );
        // And mac(100), which we gave up, may be claimed.
        s.set_own_macs(vec![mac(3)]);
        assert_eq!(
            s.handle(req("b", 2, &[mac(100)], &[0])),
            [
                install("b", &[mac(100)], &[0]),
                announce("b", &[mac(100)]),
                ack("b", 2, AckStatus::Ok)
            ]
        );
    }

    #[test]
    fn params_from_config() {
        let cfg = crate::config::Config::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/example-full.toml"
        ))
        .expect("example config");
        let p = ProxyParams::from_config(&cfg);
        assert_eq!(p.members, ["n2", "n3"]);
        assert_eq!(p.local_domains, [0]);
        assert_eq!(p.own_macs, cfg.kernel.macs);
        assert!(p.announce_on_behalf);
    }
}
