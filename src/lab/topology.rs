//! The lab's network: namespaces, the switch and fabric bridges, and the veth pairs
//! between them. Dropping a [`Topology`] deletes its namespaces (and with them every
//! interface in them).

use std::time::{Duration, Instant};

use super::cmd::{exec_in, ip_in, run, run_quiet};
use super::error::{LabError, Result};
use super::manifest::Manifest;
use super::names::{self, Names, NodeNames};

/// The built network.
#[derive(Debug)]
pub struct Topology {
    namespaces: Vec<String>,
    keep: bool,
}

impl Topology {
    /// Builds the switch, the fabric, the station and every node's namespace with its NIC
    /// and fabric interfaces. The kernel interface comes later, from the daemon.
    pub fn build(n: &Names, manifest: &mut Manifest) -> Result<Topology> {
        let mut t = Topology {
            namespaces: Vec::new(),
            keep: false,
        };
        // Switch and fabric: bridges only, no IPv6 chatter of their own.
        t.add_ns(&n.switch_ns, manifest)?;
        no_ipv6(&n.switch_ns)?;
        // No multicast snooping: unregistered multicast (IPv6 neighbour solicitations) is
        // flooded like broadcast, as on a plain unmanaged switch.
        ip_in(
            &n.switch_ns,
            &[
                "link",
                "add",
                names::SWITCH_BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        ip_in(&n.switch_ns, &["link", "set", names::SWITCH_BRIDGE, "up"])?;
        t.add_ns(&n.fabric_ns, manifest)?;
        no_ipv6(&n.fabric_ns)?;
        ip_in(
            &n.fabric_ns,
            &["link", "add", names::FABRIC_BRIDGE, "type", "bridge"],
        )?;
        ip_in(&n.fabric_ns, &["link", "set", names::FABRIC_BRIDGE, "up"])?;

        for node in &n.nodes {
            t.add_node(n, node, manifest)?;
        }

        t.add_ns(&n.station_ns, manifest)?;
        veth_to_bridge(
            &n.switch_ns,
            names::SWITCH_BRIDGE,
            names::STATION_PORT,
            &n.station_ns,
            names::STATION_IF,
        )?;
        let v4 = format!("{}/24", names::STATION_V4);
        let v6 = format!("{}/64", names::STATION_V6);
        ip_in(
            &n.station_ns,
            &["addr", "add", &v4, "dev", names::STATION_IF],
        )?;
        ip_in(
            &n.station_ns,
            &["addr", "add", &v6, "dev", names::STATION_IF, "nodad"],
        )?;
        // veth leaves checksums to the receiver (checksum offload), and the node's NIC
        // reads frames raw with af_packet, as a real NIC would receive them: they must
        // carry real checksums, as from real hardware.
        exec_in(
            &n.station_ns,
            "ethtool",
            &["-K", names::STATION_IF, "tx", "off"],
        )?;
        ip_in(&n.station_ns, &["link", "set", names::STATION_IF, "up"])?;
        Ok(t)
    }

    fn add_ns(&mut self, name: &str, manifest: &mut Manifest) -> Result<()> {
        manifest.namespace(name)?;
        run("ip", &["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn add_node(&mut self, n: &Names, node: &NodeNames, manifest: &mut Manifest) -> Result<()> {
        self.add_ns(&node.ns, manifest)?;
        veth_to_bridge(
            &n.switch_ns,
            names::SWITCH_BRIDGE,
            &node.switch_port,
            &node.ns,
            names::NODE_NIC,
        )?;
        veth_to_bridge(
            &n.fabric_ns,
            names::FABRIC_BRIDGE,
            &node.fabric_port,
            &node.ns,
            names::NODE_FABRIC,
        )?;
        let fab = format!("{}/24", node.fabric_ip);
        ip_in(&node.ns, &["addr", "add", &fab, "dev", names::NODE_FABRIC])?;
        // The NIC belongs to DPDK and the fabric is IPv4: no IPv6 on either. The kernel
        // interface keeps its addresses if the daemon ever takes it down.
        exec_in(
            &node.ns,
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", names::NODE_NIC),
                &format!("net.ipv6.conf.{}.disable_ipv6=1", names::NODE_FABRIC),
                "net.ipv6.conf.all.keep_addr_on_down=1",
                "net.ipv6.conf.default.keep_addr_on_down=1",
            ],
        )?;
        ip_in(&node.ns, &["link", "set", names::NODE_NIC, "up"])?;
        ip_in(&node.ns, &["link", "set", names::NODE_FABRIC, "up"])?;
        Ok(())
    }

    /// Leaves everything in place when dropped (`--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Deletes the namespaces now.
    pub fn teardown(&mut self) {
        if self.keep {
            return;
        }
        for ns in self.namespaces.drain(..).rev() {
            run_quiet("ip", &["netns", "del", &ns]);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn no_ipv6(ns: &str) -> Result<()> {
    exec_in(
        ns,
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
    .map(drop)
}

/// A veth pair: `port` enslaved to `bridge` in `bridge_ns`, `end` in `end_ns`; both up
/// (the far end is set up by the caller, after configuring it).
fn veth_to_bridge(
    bridge_ns: &str,
    bridge: &str,
    port: &str,
    end_ns: &str,
    end: &str,
) -> Result<()> {
    ip_in(
        bridge_ns,
        &[
            "link", "add", port, "type", "veth", "peer", "name", end, "netns", end_ns,
        ],
    )?;
    ip_in(bridge_ns, &["link", "set", port, "master", bridge])?;
    ip_in(bridge_ns, &["link", "set", port, "up"])?;
    Ok(())
}

/// Sets a bridge port down (the cut) or up (the restore).
pub fn set_port(ns: &str, port: &str, up: bool) -> Result<()> {
    ip_in(ns, &["link", "set", port, if up { "up" } else { "down" }]).map(drop)
}

/// Waits for the daemon's kernel interface in `node`'s namespace, then gives it the
/// node's management addresses and sets it up.
pub fn configure_kernel_if(
    node: &NodeNames,
    timeout: Duration,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if ip_in(&node.ns, &["link", "show", names::NODE_KERNEL]).is_ok() {
            break;
        }
        alive()?;
        if t0.elapsed() > timeout {
            return Err(LabError::Timeout {
                what: format!(
                    "node {}'s daemon to create {} in namespace {}",
                    node.id,
                    names::NODE_KERNEL,
                    node.ns
                ),
                waited_ms: timeout.as_millis() as u64,
                detail: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let v4 = format!("{}/24", node.mgmt_v4);
    let v6 = format!("{}/64", node.mgmt_v6);
    ip_in(
        &node.ns,
        &["addr", "replace", &v4, "dev", names::NODE_KERNEL],
    )?;
    ip_in(
        &node.ns,
        &["addr", "replace", &v6, "dev", names::NODE_KERNEL, "nodad"],
    )?;
    ip_in(&node.ns, &["link", "set", names::NODE_KERNEL, "up"])?;
    Ok(())
}

/// Whether the kernel interface shows NO-CARRIER (`ip -j link show`), as a user would
/// check it.
pub fn kernel_if_no_carrier(node: &NodeNames) -> Result<bool> {
    let out = ip_in(&node.ns, &["-j", "link", "show", names::NODE_KERNEL])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Command {
        cmd: format!("ip -n {} -j link show {}", node.ns, names::NODE_KERNEL),
        status: "unparsable JSON".into(),
        stderr: e.to_string(),
    })?;
    Ok(v.get(0)
        .and_then(|l| l.get("flags"))
        .and_then(|f| f.as_array())
        .is_some_and(|flags| flags.iter().any(|f| f == "NO-CARRIER")))
}

/// The switch's FDB port for a MAC, as `bridge -j fdb show` reports it (what a user would
/// look at); None if the bridge has not learned it.
pub fn fdb_port(n: &Names, mac: &str) -> Result<Option<String>> {
    let out = run(
        "bridge",
        &[
            "-n",
            &n.switch_ns,
            "-j",
            "fdb",
            "show",
            "br",
            names::SWITCH_BRIDGE,
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Command {
        cmd: format!("bridge -n {} -j fdb show", n.switch_ns),
        status: "unparsable JSON".into(),
        stderr: e.to_string(),
    })?;
    Ok(v.as_array().and_then(|entries| {
        entries.iter().find_map(|e| {
            (e.get("mac")?.as_str()? == mac)
                .then(|| e.get("ifname")?.as_str().map(str::to_string))
                .flatten()
        })
    }))
}
