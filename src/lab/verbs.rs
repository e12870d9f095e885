//! The lab's fabric for `--fabric verbs`, on a kernel with Soft-RoCE (the lab guest): one
//! rxe device per node, each on its own veth into the fabric bridge.
//!
//! rdma_rxe works only in the initial network namespace, so the nodes' fabric ends (and
//! the daemons, which open their RDMA device and rdma_cm there) stay in init_net, while
//! each daemon's NIC and kernel interface live in the node's namespace
//! (`dataplane.netns`). All fabric addresses are then local to one namespace, and the
//! kernel would carry traffic between them through `lo`, which rxe drops. So the local
//! routing table moves behind one policy rule per node ("from my address, to the fabric,
//! out of my veth"), each veth end accepts packets from the other local addresses, and
//! static neighbours spare ARP (which every end would answer for every address). The
//! far ends sit on the fabric bridge like the UDP lab's, so the all-paths scenario cuts
//! a node's fabric the same way.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cmd::{run, run_quiet};
use super::daemons::Daemons;
use super::error::{LabError, Result};
use super::names::{self, Names};

/// Preference of the rule that holds the local table while the lab runs: after the lab's
/// own rules, which must win over it.
const LOCAL_PREF: u32 = 100;
/// Preference of node 1's rule (node k: + k - 1); below [`LOCAL_PREF`].
const RULE_PREF: u32 = 50;
// Every node's rule (up to 8 nodes) must come before the local table.
const _: () = assert!(RULE_PREF + 8 < LOCAL_PREF);
/// Routing table of node 1 (node k: + k - 1).
const TABLE: u32 = 7700;

/// One node's RDMA end.
#[derive(Debug, Clone)]
struct End {
    /// The veth end in init_net that carries the node's fabric address.
    netdev: String,
    /// The rxe device on it.
    rxe: String,
    ip: Ipv4Addr,
    mac: String,
    rule_pref: u32,
    table: u32,
}

/// The built RDMA fabric; [`VerbsFabric::teardown`] removes it.
#[derive(Debug)]
pub struct VerbsFabric {
    ends: Vec<End>,
    /// Whether the lab moved the local table's rule (and must move it back).
    moved_local: bool,
    keep: bool,
}

/// The init_net interface name of a node's fabric end (unique per run: it carries the
/// run's tag, since init_net is shared with whatever else runs on the machine).
pub fn netdev_name(n: &Names, id: &str) -> String {
    format!("{}{id}", n.tag)
}

/// The rxe device of a node.
pub fn rxe_name(n: &Names, id: &str) -> String {
    format!("rxe_{}{id}", n.tag)
}

/// Whether this kernel can run the verbs lab: rdma_rxe loads.
pub fn preflight() -> Result<()> {
    for tool in ["rdma", "modprobe"] {
        if !super::cmd::have(tool) {
            return Err(LabError::Precondition(format!(
                "`{tool}` is not installed (the verbs lab needs iproute2's rdma and kmod)"
            )));
        }
    }
    for module in ["rdma_rxe", "tun"] {
        if !Path::new("/sys/module").join(module).exists() {
            run("modprobe", &[module]).map_err(|e| {
                LabError::Precondition(format!(
                    "--fabric verbs needs the kernel module {module} (Soft-RoCE and the TAP of the kernel interface): {e}"
                ))
            })?;
        }
    }
    Ok(())
}

impl VerbsFabric {
    /// Builds every node's fabric end in init_net, its far end on the fabric bridge in
    /// `fabric_ns`, the routing that keeps traffic between them on the wire, and the rxe
    /// devices; returns when every device has its RoCE v2 GID (rdma_cm needs it).
    pub fn build(n: &Names) -> Result<VerbsFabric> {
        let ends: Vec<End> = n
            .nodes
            .iter()
            .zip(0u32..)
            .map(|(node, k)| End {
                netdev: netdev_name(n, &node.id),
                rxe: rxe_name(n, &node.id),
                ip: node.fabric_ip,
                mac: format!("02:00:00:78:00:{:02x}", k + 1),
                rule_pref: RULE_PREF + k,
                table: TABLE + k,
            })
            .collect();
        let mut f = VerbsFabric {
            ends,
            moved_local: false,
            keep: false,
        };
        // Before anything else, so that a failure half-way leaves a teardown that knows
        // what to undo.
        f.move_local_rule()?;
        f.links(n)?;
        f.sysctls()?;
        f.routing()?;
        let mut rdma = String::new();
        for e in &f.ends {
            let _ = writeln!(rdma, "link add {} type rxe netdev {}", e.rxe, e.netdev);
        }
        batch("rdma", &["-b", "-"], &rdma)?;
        for e in &f.ends {
            wait_gid(&e.rxe, e.ip, Duration::from_secs(20))?;
        }
        Ok(f)
    }

    fn move_local_rule(&mut self) -> Result<()> {
        let rules = run("ip", &["-4", "rule", "show"])?;
        let has = |pref: u32| {
            rules
                .lines()
                .any(|l| l.starts_with(&format!("{pref}:")) && l.contains("lookup local"))
        };
        if has(0) {
            if !has(LOCAL_PREF) {
                run(
                    "ip",
                    &[
                        "-4",
                        "rule",
                        "add",
                        "pref",
                        &LOCAL_PREF.to_string(),
                        "lookup",
                        "local",
                    ],
                )?;
            }
            run("ip", &["-4", "rule", "del", "pref", "0", "lookup", "local"])?;
            self.moved_local = true;
        } else if !has(LOCAL_PREF) {
            return Err(LabError::Precondition(format!(
                "the IPv4 local table is looked up neither at rule preference 0 nor at {LOCAL_PREF} (`ip rule show`): the verbs lab does not know where to put its rules"
            )));
        }
        Ok(())
    }

    fn links(&self, n: &Names) -> Result<()> {
        // The daemons' metrics endpoints listen on 127.0.0.1 here, and a bare guest has
        // not brought lo up.
        let mut b = String::from("link set lo up\n");
        for (e, node) in self.ends.iter().zip(&n.nodes) {
            let _ = writeln!(
                b,
                "link add {} address {} type veth peer name {} netns {}",
                e.netdev, e.mac, node.fabric_port, n.fabric_ns
            );
            let _ = writeln!(b, "addr add {}/24 dev {}", e.ip, e.netdev);
            // Up before any route names it (the kernel refuses a route via a down device).
            let _ = writeln!(b, "link set {} up", e.netdev);
        }
        batch("ip", &["-batch", "-"], &b)?;
        let mut far = String::new();
        for node in &n.nodes {
            let _ = writeln!(
                far,
                "link set {} master {}\nlink set {} up",
                node.fabric_port,
                names::FABRIC_BRIDGE,
                node.fabric_port
            );
        }
        batch("ip", &["-n", &n.fabric_ns, "-batch", "-"], &far)?;
        Ok(())
    }

    /// Written to /proc directly: a process per setting costs a lot under emulation.
    fn sysctls(&self) -> Result<()> {
        let set = |path: String, value: &str| {
            std::fs::write(&path, value).map_err(|e| LabError::io(format!("writing {path}"), e))
        };
        for dev in ["all".to_string()]
            .into_iter()
            .chain(self.ends.iter().map(|e| e.netdev.clone()))
        {
            set(format!("/proc/sys/net/ipv4/conf/{dev}/accept_local"), "1")?;
            set(format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter"), "0")?;
        }
        for e in &self.ends {
            // Best effort: a kernel without IPv6 has no such file, and nothing needs it.
            let _ = std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", e.netdev),
                "1",
            );
        }
        Ok(())
    }

    fn routing(&self) -> Result<()> {
        let mut b = String::new();
        for e in &self.ends {
            for other in self.ends.iter().filter(|o| o.ip != e.ip) {
                let _ = writeln!(
                    b,
                    "route add {}/32 dev {} src {} table {}",
                    other.ip, e.netdev, e.ip, e.table
                );
                let _ = writeln!(
                    b,
                    "neigh replace {} lladdr {} dev {} nud permanent",
                    other.ip, other.mac, e.netdev
                );
            }
            // Only locally generated traffic (iif lo): what arrives from the wire for a
            // local address must still reach the local table.
            let _ = writeln!(
                b,
                "rule add pref {} iif lo from {} lookup {}",
                e.rule_pref, e.ip, e.table
            );
        }
        batch("ip", &["-batch", "-"], &b)
    }

    /// Leaves everything in place (`--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Removes the rxe devices, the veths (their far ends go with them), the rules and
    /// the tables, and puts the local rule back; best effort, in that order.
    pub fn teardown(&mut self) {
        if self.keep {
            return;
        }
        for e in self.ends.drain(..) {
            run_quiet("rdma", &["link", "delete", &e.rxe]);
            run_quiet("ip", &["link", "del", &e.netdev]);
            run_quiet(
                "ip",
                &["-4", "rule", "del", "pref", &e.rule_pref.to_string()],
            );
            run_quiet(
                "ip",
                &["-4", "route", "flush", "table", &e.table.to_string()],
            );
        }
        if std::mem::take(&mut self.moved_local) {
            run_quiet("ip", &["-4", "rule", "add", "pref", "0", "lookup", "local"]);
            run_quiet(
                "ip",
                &[
                    "-4",
                    "rule",
                    "del",
                    "pref",
                    &LOCAL_PREF.to_string(),
                    "lookup",
                    "local",
                ],
            );
        }
    }
}

impl Drop for VerbsFabric {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Each node's fabric port counters and RC queue pairs, from its daemon's status: the
/// proof that the sessions carried frames over RC. `a_rc_frames` sums what a's worker
/// sent and received on the fabric (data frames only: control messages travel beside the
/// QPs over UDP and are not counted there).
pub fn counters(d: &Daemons, n: &Names) -> Value {
    let mut nodes = serde_json::Map::new();
    for node in &n.nodes {
        let Some(st) = d.status(&node.id) else {
            nodes.insert(node.id.clone(), Value::Null);
            continue;
        };
        let fabric = st["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["port"] == "fabric"))
            .cloned()
            .unwrap_or(Value::Null);
        let qps: Vec<Value> = st["fabric_verbs"]["sessions"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|q| {
                        json!({
                            "peer": q["peer"], "role": q["role"], "qp": q["qp"],
                            "established": q["established"], "failures": q["failures"],
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let up = qps.iter().filter(|q| q["qp"] == "up").count();
        nodes.insert(
            node.id.clone(),
            json!({
                "fabric_rx_packets": fabric["rx_packets"],
                "fabric_tx_packets": fabric["tx_packets"],
                "fabric_rx_bytes": fabric["rx_bytes"],
                "fabric_tx_bytes": fabric["tx_bytes"],
                "fabric_drops": fabric["drops"],
                "qps_up": up,
                "qps": qps,
            }),
        );
    }
    let a = &nodes[&n.victim().id];
    let a_rc =
        a["fabric_rx_packets"].as_u64().unwrap_or(0) + a["fabric_tx_packets"].as_u64().unwrap_or(0);
    json!({ "a_rc_frames": a_rc, "nodes": nodes })
}

/// Runs `program args` with `input` on stdin (`ip -batch -`, `rdma -b -`): one process
/// for many commands.
pub fn batch(program: &str, args: &[&str], input: &str) -> Result<()> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            what: line.clone(),
            source,
        })?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(input.as_bytes())
            .map_err(|e| LabError::io(format!("writing to `{line}`"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("waiting for `{line}`"), e))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{line} <<EOF\n{input}EOF"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The RoCE v2 GID of `ip` as sysfs shows it (an IPv4-mapped IPv6 address).
fn mapped_gid(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!(
        "0000:0000:0000:0000:0000:ffff:{:02x}{:02x}:{:02x}{:02x}",
        o[0], o[1], o[2], o[3]
    )
}

/// Waits until `rxe` lists `ip` as a RoCE v2 GID: rxe fills its GID table asynchronously
/// after the address and the link come up, and rdma_cm cannot resolve the address before.
fn wait_gid(rxe: &str, ip: Ipv4Addr, timeout: Duration) -> Result<()> {
    let want = mapped_gid(ip);
    let port = Path::new("/sys/class/infiniband").join(rxe).join("ports/1");
    let t0 = Instant::now();
    loop {
        // Only the first entries matter: a fresh device has few.
        for i in 0..16 {
            let gid = std::fs::read_to_string(port.join(format!("gids/{i}"))).unwrap_or_default();
            let kind = std::fs::read_to_string(port.join(format!("gid_attrs/types/{i}")))
                .unwrap_or_default();
            if gid.trim() == want && kind.trim() == "RoCE v2" {
                return Ok(());
            }
        }
        if t0.elapsed() > timeout {
            return Err(LabError::Timeout {
                what: format!("the RoCE v2 GID of {ip} on {rxe}"),
                waited_ms: timeout.as_millis() as u64,
                detail: format!("no {want} in {}/gids", port.display()),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_gid_matches_sysfs_format() {
        let n = Names::new(4_194_304, 8);
        for node in &n.nodes {
            assert!(netdev_name(&n, &node.id).len() <= 15);
        }
        assert_eq!(netdev_name(&n, "h"), "npl400000h");
        assert_eq!(rxe_name(&n, "a"), "rxe_npl400000a");
        assert_eq!(
            mapped_gid(Ipv4Addr::new(10, 77, 0, 1)),
            "0000:0000:0000:0000:0000:ffff:0a4d:0001"
        );
    }
}
