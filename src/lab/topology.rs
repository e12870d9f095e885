//! The lab's network: namespaces, the switch and fabric bridges, and the veth pairs
//! between them. Dropping a [`Topology`] deletes its namespaces (and with them every
//! interface in them).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::args::FabricArg;
use super::cmd::{exec_in, ip_in, run, run_quiet};
use super::error::{LabError, Result};
use super::manifest::Manifest;
use super::names::{self, Names, NodeNames};
use super::verbs::VerbsFabric;

/// The built network.
#[derive(Debug)]
pub struct Topology {
    namespaces: Vec<String>,
    /// With `--fabric verbs`: the nodes' RDMA ends in init_net.
    verbs: Option<VerbsFabric>,
    keep: bool,
}

impl Topology {
    /// Builds the switch, the fabric, the station and every node's namespace with its NIC
    /// and fabric interfaces. The kernel interface comes later, from the daemon. With the
    /// verbs fabric, the nodes' fabric interfaces are rxe devices in init_net instead (see
    /// [`super::verbs`]), on the same fabric bridge.
    pub fn build(n: &Names, manifest: &mut Manifest, fabric: FabricArg) -> Result<Topology> {
        let mut t = Topology {
            namespaces: Vec::new(),
            verbs: None,
            keep: false,
        };
        if fabric == FabricArg::Verbs {
            t.build_batched(n, manifest)?;
            t.verbs = Some(VerbsFabric::build(n)?);
            return Ok(t);
        }
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

    /// The same switch, fabric bridge, station and node namespaces as [`Topology::build`]
    /// makes for the UDP fabric, minus the nodes' fabric interfaces, in a handful of
    /// processes: the verbs lab runs under an emulated CPU, where starting a process costs
    /// a good fraction of a second and the one-command-per-step build took over a minute.
    /// Sysctls are written from a thread inside each namespace, without a process.
    fn build_batched(&mut self, n: &Names, manifest: &mut Manifest) -> Result<()> {
        let all: Vec<&str> = [n.switch_ns.as_str(), n.fabric_ns.as_str()]
            .into_iter()
            .chain(n.nodes.iter().map(|x| x.ns.as_str()))
            .chain([n.station_ns.as_str()])
            .collect();
        let mut b = String::new();
        for ns in &all {
            manifest.namespace(ns)?;
            let _ = writeln!(b, "netns add {ns}");
        }
        // Recorded before they exist: teardown ignores the ones that were never made.
        self.namespaces.extend(all.iter().map(|s| (*s).to_string()));
        // Both ends of every veth are created straight in their namespaces, so their
        // names never meet the initial namespace's.
        for node in &n.nodes {
            let _ = writeln!(
                b,
                "link add {} netns {} type veth peer name {} netns {}",
                node.switch_port,
                n.switch_ns,
                names::NODE_NIC,
                node.ns
            );
        }
        let _ = writeln!(
            b,
            "link add {} netns {} type veth peer name {} netns {}",
            names::STATION_PORT,
            n.switch_ns,
            names::STATION_IF,
            n.station_ns
        );
        ip_batch(None, &b)?;

        let no_v6 = [
            "net/ipv6/conf/all/disable_ipv6",
            "net/ipv6/conf/default/disable_ipv6",
        ];
        sysctls_in(&n.switch_ns, &no_v6)?;
        sysctls_in(&n.fabric_ns, &no_v6)?;
        let nic_v6 = format!("net/ipv6/conf/{}/disable_ipv6", names::NODE_NIC);
        for node in &n.nodes {
            sysctls_in(
                &node.ns,
                &[
                    &nic_v6,
                    "net/ipv6/conf/all/keep_addr_on_down",
                    "net/ipv6/conf/default/keep_addr_on_down",
                ],
            )?;
        }

        // No multicast snooping: see build().
        let mut sw = format!(
            "link set lo up\nlink add {br} type bridge mcast_snooping 0\nlink set {br} up\n",
            br = names::SWITCH_BRIDGE
        );
        for port in n
            .nodes
            .iter()
            .map(|x| x.switch_port.as_str())
            .chain([names::STATION_PORT])
        {
            let _ = writeln!(
                sw,
                "link set {port} master {}\nlink set {port} up",
                names::SWITCH_BRIDGE
            );
        }
        ip_batch(Some(&n.switch_ns), &sw)?;
        ip_batch(
            Some(&n.fabric_ns),
            &format!(
                "link set lo up\nlink add {br} type bridge\nlink set {br} up\n",
                br = names::FABRIC_BRIDGE
            ),
        )?;
        for node in &n.nodes {
            ip_batch(
                Some(&node.ns),
                &format!("link set lo up\nlink set {} up\n", names::NODE_NIC),
            )?;
        }
        // Real checksums from the station: see build().
        exec_in(
            &n.station_ns,
            "ethtool",
            &["-K", names::STATION_IF, "tx", "off"],
        )?;
        ip_batch(
            Some(&n.station_ns),
            &format!(
                "link set lo up\naddr add {v4}/24 dev {st}\naddr add {v6}/64 dev {st} nodad\nlink set {st} up\n",
                v4 = names::STATION_V4,
                v6 = names::STATION_V6,
                st = names::STATION_IF
            ),
        )?;
        Ok(())
    }

    /// Leaves everything in place when dropped (`--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
        if let Some(v) = &mut self.verbs {
            v.keep();
        }
    }

    /// Deletes the namespaces now.
    pub fn teardown(&mut self) {
        if self.keep {
            return;
        }
        if let Some(mut v) = self.verbs.take() {
            v.teardown();
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

/// `ip [-n ns] -batch -` with `lines` on stdin.
fn ip_batch(ns: Option<&str>, lines: &str) -> Result<()> {
    match ns {
        Some(ns) => super::verbs::batch("ip", &["-n", ns, "-batch", "-"], lines),
        None => super::verbs::batch("ip", &["-batch", "-"], lines),
    }
}

/// Sets each sysctl (a path under /proc/sys) to 1 inside namespace `ns`, from a thread
/// that enters it: /proc/sys/net belongs to the namespace of whoever opens it.
fn sysctls_in(ns: &str, paths: &[&str]) -> Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            dataplane::sys::netns::run_in(ns, || {
                for p in paths {
                    let path = format!("/proc/sys/{p}");
                    std::fs::write(&path, "1").map_err(|e| {
                        LabError::io(format!("writing {path} in namespace {ns}"), e)
                    })?;
                }
                Ok(())
            })
            .map_err(|e| LabError::Precondition(format!("setting sysctls in {ns}: {e}")))?
        })
        .join()
        .unwrap_or_else(|_| {
            Err(LabError::Precondition(format!(
                "the thread setting sysctls in {ns} panicked"
            )))
        })
    })
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
