//! Run-time changes of the node's own MACs (`kernel.macs`), applied when SIGHUP finds them
//! changed in the config file. Every other key still needs a restart: a SIGHUP that changes
//! them is reported and the running values are kept.
//!
//! A change of the MAC set:
//! 1. is checked: the first MAC is the kernel interface's own address, given to the port
//!    when it was created, so it stays; a MAC that a client of ours holds cannot become
//!    ours;
//! 2. goes into the steering table (own MACs → kernel, in every domain) and is published to
//!    every worker;
//! 3. goes into the kernel port's MAC filter, where its driver keeps one. Neither kernel
//!    port driver does: DPDK's TAP PMD has no such operation (ENOTSUP), and virtio-user
//!    over vhost-kernel offers no MAC table (no control queue; virtio answers -1, which
//!    reads as EPERM). Both pass every frame the kernel sends, and the steering table
//!    decides, which is what the kernel side of the port needs anyway: it sends frames
//!    *from* our MACs to anyone;
//! 4. reaches the proxy in use: each failover machine riding on a proxy asks it again with
//!    the new set, retransmitted like a first request, so the proxy's source-MAC check
//!    accepts the added MACs and refuses the removed ones, and frames for a removed MAC
//!    stop coming back to us. A later request to any proxy carries the new set anyway;
//! 5. is announced: a burst of ARP probes (RFC 5227) from each added MAC, in every domain
//!    that has a path, so the switch learns the MAC on the path in use (the MAC's IP
//!    addresses, if any, live behind the kernel interface where we do not see them).

use std::time::Duration;

use ::dataplane::steer::DomainId;
use ::dataplane::wire::MacAddr as WireMac;

use super::Daemon;
use crate::config::{Config, MacAddr};
use crate::policy::Failover;

/// The config sections, `kernel.macs` left out, in which `new` differs from `old`.
pub(super) fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut kernel = new.kernel.clone();
    kernel.macs.clone_from(&old.kernel.macs);
    let sections = [
        ("node", old.node != new.node),
        ("nic", old.nic != new.nic),
        ("kernel", old.kernel != kernel),
        ("fabric", old.fabric != new.fabric),
        ("peers", old.peers != new.peers),
        ("domains", old.domains != new.domains),
        ("failover", old.failover != new.failover),
        ("timers", old.timers != new.timers),
        ("announce", old.announce != new.announce),
        ("upstream_probe", old.upstream_probe != new.upstream_probe),
        ("dataplane", old.dataplane != new.dataplane),
        ("metrics", old.metrics != new.metrics),
    ];
    let mut out: Vec<&'static str> = sections
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| *name)
        .collect();
    let mut same_macs = new.clone();
    same_macs.kernel.macs.clone_from(&old.kernel.macs);
    if out.is_empty() && same_macs != *old {
        // A field this list does not know yet (or where the file lives).
        out.push("other");
    }
    out
}

/// What a change of `kernel.macs` adds and removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MacChange {
    /// MACs in the new set only.
    pub added: Vec<MacAddr>,
    /// MACs in the old set only.
    pub removed: Vec<MacAddr>,
}

/// The change from `old` to `new`, or why it cannot be applied while running.
pub(super) fn mac_change(old: &[MacAddr], new: &[MacAddr]) -> Result<MacChange, String> {
    if old.first() != new.first() {
        return Err(format!(
            "kernel.macs[0] is the kernel interface's own address, set when its port was created ({} now, {} asked); changing it needs a restart",
            fmt_first(old),
            fmt_first(new)
        ));
    }
    Ok(MacChange {
        added: new.iter().filter(|m| !old.contains(m)).copied().collect(),
        removed: old.iter().filter(|m| !new.contains(m)).copied().collect(),
    })
}

fn fmt_first(macs: &[MacAddr]) -> String {
    macs.first()
        .map_or_else(|| "none".into(), ToString::to_string)
}

fn list(macs: &[MacAddr]) -> String {
    if macs.is_empty() {
        return "none".into();
    }
    macs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a MAC filter error means that the driver keeps no filter: ENOTSUP when it has
/// no such operation (TAP), or virtio's bare -1 (EPERM) when the device offers no MAC table
/// (virtio-user over vhost-kernel).
fn keeps_no_filter(e: &::dataplane::dpdk::DpdkError, port: &str) -> bool {
    match e.errno() {
        Some(libc::EOPNOTSUPP) => true,
        Some(libc::EPERM) => port.starts_with("virtio_user"),
        _ => false,
    }
}

impl Daemon {
    /// SIGHUP found a valid config that differs from the running one: applies a change of
    /// `kernel.macs`, reports the rest as needing a restart.
    pub(super) fn reload_changed(&mut self, now: Duration, new: &Config) {
        let others = changed_sections(&self.cfg, new);
        if !others.is_empty() {
            tracing::warn!(
                "SIGHUP: the config changed in [{}]; live reload of these is not supported yet, restart the daemon to apply them (running values kept)",
                others.join(", ")
            );
        }
        if new.kernel.macs == self.cfg.kernel.macs {
            return;
        }
        match self.set_kernel_macs(now, &new.kernel.macs) {
            Ok(summary) => tracing::info!("SIGHUP: kernel.macs applied: {summary}"),
            Err(why) => tracing::error!(
                "SIGHUP: kernel.macs not applied, keeping [{}]: {why}",
                list(&self.cfg.kernel.macs)
            ),
        }
    }

    /// Makes `macs` the node's own MACs; returns a summary for the log.
    fn set_kernel_macs(&mut self, now: Duration, macs: &[MacAddr]) -> Result<String, String> {
        let change = mac_change(&self.cfg.kernel.macs, macs)?;
        if let Some((m, peer)) = change
            .added
            .iter()
            .find_map(|m| self.proxy.client_of(m).map(|p| (m, p)))
        {
            return Err(format!(
                "{m} is carried for client {peer}; it can become ours once {peer} gives it up"
            ));
        }
        let domains: Vec<DomainId> = self.cfg.domains.iter().map(|d| DomainId(d.id)).collect();
        // Adds first, so a full table leaves the running set untouched.
        let mut table = self.dp.table.clone();
        for d in &domains {
            for m in &change.removed {
                table.remove(*d, WireMac(m.0));
            }
            for m in &change.added {
                table
                    .add_local(*d, WireMac(m.0))
                    .map_err(|e| format!("adding {m} to the steering table: {e}"))?;
            }
        }
        self.dp.table = table;
        self.dp.publish();
        let filter = self.update_kernel_filter(&change);

        self.cfg.kernel.macs = macs.to_vec();
        self.proxy.set_own_macs(macs.to_vec());
        self.peers.set_macs(macs.to_vec());
        let label = super::uplink_label(&self.failover.uplink());
        self.metrics.active_path.reset();
        for m in macs {
            self.metrics
                .active_path
                .with_label_values(&[&m.to_string(), &label])
                .set(1);
        }
        // The proxy in use (of each machine) learns the new set.
        self.feed_all(now, Failover::resync);
        self.announce_added(now, &change.added);
        Ok(format!(
            "added [{}], removed [{}], now [{}]; steering table published; kernel port MAC filter: {filter}",
            list(&change.added),
            list(&change.removed),
            list(macs)
        ))
    }

    /// Adds and removes the MACs in the kernel port's filter; returns what happened.
    fn update_kernel_filter(&mut self, change: &MacChange) -> String {
        let port = &self.dp.kernel;
        let name = port.name();
        let (mut added, mut removed) = (0, 0);
        let mut unsupported = None;
        let mut failed = Vec::new();
        for m in &change.added {
            match port.add_mac(m.0) {
                Ok(()) => added += 1,
                Err(e) if keeps_no_filter(&e, name) => unsupported = Some(e),
                Err(e) => {
                    tracing::warn!("kernel port MAC filter, {m}: {e}");
                    failed.push(m.to_string());
                }
            }
        }
        // DPDK answers success for a MAC that is not in the filter: a removal is no proof
        // that the driver keeps one.
        for m in &change.removed {
            match port.remove_mac(m.0) {
                Ok(()) => removed += 1,
                Err(e) if keeps_no_filter(&e, name) => unsupported = Some(e),
                Err(e) => {
                    tracing::warn!("kernel port MAC filter, {m}: {e}");
                    failed.push(m.to_string());
                }
            }
        }
        if let Some(e) = unsupported {
            format!(
                "{name} keeps no MAC filter ({e}): it passes every frame, the steering table decides"
            )
        } else if failed.is_empty() {
            format!("{added} added, {removed} removed on {name}")
        } else {
            format!(
                "{added} added, {removed} removed on {name}, failed for [{}]",
                failed.join(", ")
            )
        }
    }

    /// ARP probe bursts from the added MACs in every domain that has a path now.
    fn announce_added(&mut self, now: Duration, added: &[MacAddr]) {
        if added.is_empty() || self.carrier != Some(true) {
            // Without carrier the kernel drops what we send; the proxy in use (if any)
            // announces them on our behalf once it has installed them.
            return;
        }
        let mut vlans: Vec<Option<u16>> = Vec::new();
        if self.failover.carrier() {
            vlans.extend(self.local_domains.iter().map(|d| self.vlan_of(*d)));
        }
        for r in &self.remote {
            if r.failover.carrier() {
                vlans.push(self.vlan_of(r.domain));
            }
        }
        vlans.sort_unstable();
        vlans.dedup();
        let macs: Vec<WireMac> = added.iter().map(|m| WireMac(m.0)).collect();
        self.announcer.probe_burst(now, &macs, &vlans);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str, macs: &str) -> Config {
        let text = format!(
            "[node]\nid = \"a\"\ngroup = \"g\"\n\n[nic]\ndevargs = \"net_null0\"\n\n\
             [kernel]\nname = \"mgmt0\"\nmacs = [{macs}]\n\n\
             [fabric]\nbackend = \"udp\"\naddress = \"10.0.0.1:4792\"\nkey_file = \"k\"\n\n\
             [[peers]]\nid = \"b\"\naddress = \"10.0.0.2:4792\"\n{extra}"
        );
        Config::from_str_named(&text, "a.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().expect("MAC")
    }

    const A: &str = "\"02:00:00:00:00:01\"";
    const B: &str = "\"02:00:00:00:00:02\"";

    #[test]
    fn only_a_change_of_macs_is_not_a_section_change() {
        let old = cfg("", A);
        assert!(changed_sections(&old, &cfg("", &format!("{A}, {B}"))).is_empty());
        assert_eq!(
            changed_sections(
                &old,
                &cfg("\n[timers]\nheartbeat_ms = 7\n", &format!("{A}, {B}"))
            ),
            ["timers"]
        );
        let mut mtu = old.clone();
        mtu.kernel.mtu = 1400;
        assert_eq!(changed_sections(&old, &mtu), ["kernel"]);
    }

    #[test]
    fn mac_change_keeps_the_first_and_diffs_the_rest() {
        let a = mac("02:00:00:00:00:01");
        let b = mac("02:00:00:00:00:02");
        let c = mac("02:00:00:00:00:03");
        assert_eq!(
            mac_change(&[a, b], &[a, c]),
            Ok(MacChange {
                added: vec![c],
                removed: vec![b]
            })
        );
        assert_eq!(mac_change(&[a], &[a, b, c]).map(|c| c.added.len()), Ok(2));
        let err = mac_change(&[a, b], &[b]).unwrap_err();
        assert!(
            err.contains("kernel.macs[0]") && err.contains("restart"),
            "{err}"
        );
        // A reordering of the others is no change.
        assert_eq!(
            mac_change(&[a, b, c], &[a, c, b]),
            Ok(MacChange {
                added: vec![],
                removed: vec![]
            })
        );
    }
}
