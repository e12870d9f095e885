//! The network of the Linux bonding baseline: the lab's cut-nic topology with the node's
//! NIC replaced by a bond. A switch namespace holds the management bridge (as in the lab:
//! no STP, no multicast snooping); the node namespace holds `bond0` (active-backup) over two
//! veths whose peers are ports of that bridge; a station namespace sits on the same bridge.
//! The bond has the node's MAC and management addresses, so the same agents and the same
//! analysis apply. Dropping a [`BondNet`] deletes its namespaces and everything in them.
//!
//! Each namespace is configured with one `ip -batch` file: in the lab guest (emulated CPU)
//! every process costs a fifth of a second.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::cmd::{exec_in, ip_in, run, run_quiet};
use super::error::{LabError, Result};
use super::names;

/// The switch bridge.
pub const BRIDGE: &str = names::SWITCH_BRIDGE;
/// The bond in the node namespace.
pub const BOND: &str = "bond0";
/// The bond's slaves (node side), primary first.
pub const SLAVES: [&str; 2] = ["nic0", "nic1"];
/// Their peers, the switch ports (bridge side), in the same order: the cut sets the first
/// down, exactly as the lab cuts a node's NIC.
pub const PORTS: [&str; 2] = ["pa0", "pa1"];
/// The bond's MAC: node a's MAC in the lab.
pub const MAC: &str = "02:00:00:77:00:01";
/// The bond's management IPv4 address: node a's in the lab.
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// The bond's management IPv6 address: node a's in the lab.
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 1);

/// How the bond is configured, as an operator would set it for a management NIC pair.
#[derive(Debug, Clone, Copy)]
pub struct BondConfig {
    /// `miimon`, ms.
    pub miimon: u32,
    /// `num_grat_arp` (also `num_unsol_na`): announcements after a failover.
    pub num_grat_arp: u8,
    /// `peer_notify_delay`, ms: between those announcements (a multiple of `miimon`).
    pub peer_notify_delay_ms: u32,
}

/// The built network.
#[derive(Debug)]
pub struct BondNet {
    /// The switch's namespace.
    pub switch_ns: String,
    /// The node's namespace (the bond).
    pub node_ns: String,
    /// The station's namespace.
    pub station_ns: String,
    namespaces: Vec<String>,
}

impl BondNet {
    /// Builds the three namespaces, named `<tag>-sw`, `<tag>-n`, `<tag>-st`; `dir` takes the
    /// batch files.
    pub fn build(tag: &str, cfg: BondConfig, dir: &Path) -> Result<BondNet> {
        let mut net = BondNet {
            switch_ns: format!("{tag}-sw"),
            node_ns: format!("{tag}-n"),
            station_ns: format!("{tag}-st"),
            namespaces: Vec::new(),
        };
        for ns in [&net.switch_ns, &net.node_ns, &net.station_ns] {
            run("ip", &["netns", "add", ns])?;
            net.namespaces.push(ns.clone());
        }
        let (sw, node, st) = (&net.switch_ns, &net.node_ns, &net.station_ns);
        // The switch bridges only; no IPv6 chatter of its own.
        exec_in(
            sw,
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        let mut b = format!(
            "link set lo up\n\
             link add {BRIDGE} type bridge mcast_snooping 0\n\
             link set {BRIDGE} up\n"
        );
        for (port, slave) in PORTS.iter().zip(SLAVES) {
            b.push_str(&format!(
                "link add {port} type veth peer name {slave} netns {node}\n\
                 link set {port} master {BRIDGE}\n\
                 link set {port} up\n"
            ));
        }
        b.push_str(&format!(
            "link add {sp} type veth peer name {si} netns {st}\n\
             link set {sp} master {BRIDGE}\n\
             link set {sp} up\n",
            sp = names::STATION_PORT,
            si = names::STATION_IF,
        ));
        batch(sw, &b, dir)?;
        // Slaves must be down to be enslaved (new veths are); the primary can only be
        // named once it is a slave.
        let notify = cfg.peer_notify_delay_ms;
        let node_batch = format!(
            "link set lo up\n\
             link add {BOND} address {MAC} type bond mode active-backup miimon {miimon} \
             fail_over_mac none num_grat_arp {grat} peer_notify_delay {notify}\n\
             link set {s0} master {BOND}\n\
             link set {s1} master {BOND}\n\
             link set {BOND} type bond primary {s0} primary_reselect always\n\
             addr add {NODE_V4}/24 dev {BOND}\n\
             addr add {NODE_V6}/64 dev {BOND} nodad\n\
             link set {s0} up\n\
             link set {s1} up\n\
             link set {BOND} up\n",
            miimon = cfg.miimon,
            grat = cfg.num_grat_arp,
            s0 = SLAVES[0],
            s1 = SLAVES[1],
        );
        batch(node, &node_batch, dir)?;
        let st_batch = format!(
            "link set lo up\n\
             addr add {v4}/24 dev {si}\n\
             addr add {v6}/64 dev {si} nodad\n",
            v4 = names::STATION_V4,
            v6 = names::STATION_V6,
            si = names::STATION_IF,
        );
        batch(st, &st_batch, dir)?;
        // As in the lab: the station sends frames with real checksums.
        if super::cmd::have("ethtool") {
            exec_in(st, "ethtool", &["-K", names::STATION_IF, "tx", "off"])?;
        }
        ip_in(st, &["link", "set", names::STATION_IF, "up"])?;
        Ok(net)
    }

    /// `/proc/net/bonding/bond0` of the node namespace: mode, primary, active slave, MII
    /// interval, delays and each slave's link failure count.
    pub fn proc_status(&self) -> Result<String> {
        exec_in(
            &self.node_ns,
            "cat",
            &[&format!("/proc/net/bonding/{BOND}")],
        )
    }

    /// One of the bond's sysfs parameters (`/sys/class/net/bond0/bonding/<name>`).
    pub fn param(&self, name: &str) -> Result<String> {
        exec_in(
            &self.node_ns,
            "cat",
            &[&format!("/sys/class/net/{BOND}/bonding/{name}")],
        )
        .map(|s| s.trim().to_string())
    }

    /// Deletes the namespaces now.
    pub fn teardown(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            run_quiet("ip", &["netns", "del", &ns]);
        }
    }
}

impl Drop for BondNet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Runs `ip -n <ns> -batch <file>` over `commands`.
fn batch(ns: &str, commands: &str, dir: &Path) -> Result<()> {
    let file = dir.join(format!("{ns}.ip"));
    std::fs::write(&file, commands)
        .map_err(|e| LabError::io(format!("writing {}", file.display()), e))?;
    let path = file.display().to_string();
    ip_in(ns, &["-batch", &path]).map(drop)
}

/// The link failure count of each slave in a `/proc/net/bonding/*` text, in order.
pub fn link_failures(proc_text: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut slave: Option<String> = None;
    for line in proc_text.lines() {
        if let Some(s) = line.strip_prefix("Slave Interface:") {
            slave = Some(s.trim().to_string());
        } else if let Some(n) = line.strip_prefix("Link Failure Count:") {
            if let (Some(s), Ok(n)) = (slave.take(), n.trim().parse()) {
                out.push((s, n));
            }
        }
    }
    out
}

/// The value of a `Key: value` line of a `/proc/net/bonding/*` text (the first one: the
/// bond's own, before the slaves' sections).
pub fn proc_field<'a>(proc_text: &'a str, key: &str) -> Option<&'a str> {
    proc_text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC: &str = "Ethernet Channel Bonding Driver: v6.1.0-56-amd64

Bonding Mode: fault-tolerance (active-backup)
Primary Slave: nic0 (primary_reselect always)
Currently Active Slave: nic0
MII Status: up
MII Polling Interval (ms): 1
Up Delay (ms): 0
Down Delay (ms): 0
Peer Notification Delay (ms): 0

Slave Interface: nic0
MII Status: up
Speed: 10000 Mbps
Duplex: full
Link Failure Count: 5
Permanent HW addr: 02:00:00:77:00:01
Slave queue ID: 0

Slave Interface: nic1
MII Status: up
Speed: 10000 Mbps
Duplex: full
Link Failure Count: 0
Permanent HW addr: 9a:1b:2c:3d:4e:5f
Slave queue ID: 0
";

    #[test]
    fn reads_the_bonding_proc_file() {
        assert_eq!(
            link_failures(PROC),
            vec![("nic0".to_string(), 5), ("nic1".to_string(), 0)]
        );
        assert_eq!(proc_field(PROC, "Currently Active Slave"), Some("nic0"));
        assert_eq!(proc_field(PROC, "MII Status"), Some("up"));
        assert_eq!(proc_field(PROC, "MII Polling Interval (ms)"), Some("1"));
        assert_eq!(proc_field(PROC, "Nope"), None);
        assert!(link_failures("").is_empty());
    }
}
