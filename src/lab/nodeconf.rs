//! The lab's node configs and group key, generated into the run directory and validated
//! with the daemon's own config loader before anything starts.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use control::config::Config;

use super::args::{FabricArg, FailbackArg};
use super::error::{LabError, Result};
use super::names::{self, Names, NodeNames};

/// Timers and policy shared by every node of the lab.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `failover.failback`.
    pub failback: FailbackArg,
    /// `failover.hold_down_ms`.
    pub hold_down_ms: u64,
    /// `fabric.backend`. With verbs, the daemons run in the initial namespace (where
    /// Soft-RoCE works) with their NIC and kernel interface in the node's namespace
    /// (`dataplane.netns`), each with its own metrics port.
    pub fabric: FabricArg,
    /// `timers.heartbeat_ms` and `timers.multiplier` over UDP (the verbs fabric has its
    /// own): [`HEARTBEAT_MS`] × [`MULTIPLIER`], or for the fault suite and the soak
    /// [`FAULTS_HEARTBEAT_MS`] × [`FAULTS_MULTIPLIER`].
    pub heartbeat: (u64, u64),
}

/// `timers.link_poll_ms`.
pub const LINK_POLL_MS: u64 = 2;
/// `timers.heartbeat_ms`.
pub const HEARTBEAT_MS: u64 = 10;
/// `timers.multiplier`.
pub const MULTIPLIER: u64 = 3;
/// `timers.heartbeat_ms` in the fault suite and the soak, which run for minutes with
/// traffic and faults on a shared 2-vCPU machine. With every blocking call gone from the
/// control loop, one daemon's control thread was still seen not running for 84 and 112 ms
/// (the rest of the machine ran on; the vCPU's scheduling, not the daemon), and with a
/// 30 ms window (10 × 3) its peers declared it dead in the middle of a row now and then.
/// 150 ms (25 × 6) leaves a sender 125 ms; the budgets follow.
pub const FAULTS_HEARTBEAT_MS: u64 = 25;
/// `timers.multiplier` in the fault suite and the soak.
pub const FAULTS_MULTIPLIER: u64 = 6;
/// `timers.heartbeat_ms` with the verbs fabric. The lab guest's CPU is emulated (TCG)
/// on host threads shared with everything else, and on a loaded host it stalls for
/// hundreds of milliseconds: healthy sessions were declared dead after 100 ms (20 × 5)
/// again and again, and still 35 times in 6 minutes after 500 ms (50 × 10), each time
/// sending a off its proxy. Two seconds is a stall, not a dead peer. This only slows
/// the detection of a dead proxy (kill-proxy); a cut NIC is seen by the link poll.
pub const VERBS_HEARTBEAT_MS: u64 = 100;
/// `timers.multiplier` with the verbs fabric.
pub const VERBS_MULTIPLIER: u64 = 20;
/// `upstream_probe.multiplier` (unanswered probes before the upstream counts as dead): a
/// 500 ms window. The answers come back through a normal-priority worker and the
/// station's kernel, which a loaded 2-vCPU machine delays: with 250 ms, a healthy node
/// now and then declared its NIC dead and failed over in the middle of a fault-suite row.
/// Only failback uses the probe's answers in the lab, and it waits for the first one.
pub const PROBE_MULTIPLIER: u64 = 10;
/// `timers.connect_timeout_ms` with the verbs fabric (rdma_cm's address and route
/// resolution and the connection under emulation).
pub const VERBS_CONNECT_TIMEOUT_MS: u64 = 3000;
/// Metrics port of node a; with the verbs fabric every daemon shares the initial
/// namespace, so node k listens on this + k - 1.
pub const METRICS_PORT: u16 = 9469;
/// `upstream_probe.interval_ms`: the station plays the gateway the probe asks for, so
/// failback waits until the switch port really forwards (a Linux bridge's port can take
/// over a second after the link returns).
pub const PROBE_MS: u64 = 50;

/// A generated node config.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node.
    pub id: String,
    /// Its file.
    pub path: PathBuf,
    /// As the daemon will read it.
    pub config: Config,
}

/// Writes the group key (`group.key`, mode 600) and one config per node into `dir`, and
/// validates each.
pub fn write_all(dir: &Path, n: &Names, policy: Policy) -> Result<Vec<NodeConfig>> {
    let key_path = dir.join("group.key");
    write_key(&key_path)?;
    n.nodes
        .iter()
        .map(|node| {
            let path = dir.join(format!("{}.toml", node.id));
            let text = render(
                n,
                node,
                policy,
                &key_path,
                &dir.join(format!("{}.sock", node.id)),
            );
            let config =
                Config::from_str_named(&text, &path.display().to_string()).map_err(|source| {
                    LabError::Config {
                        node: node.id.clone(),
                        source: Box::new(source),
                    }
                })?;
            std::fs::write(&path, &text)
                .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
            Ok(NodeConfig {
                id: node.id.clone(),
                path,
                config,
            })
        })
        .collect()
}

/// 32 random bytes as 64 hex digits, in a file only root may read.
fn write_key(path: &Path) -> Result<()> {
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| LabError::io("reading /dev/urandom", e))?;
    let hex: String = raw.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .map_err(|e| LabError::io(format!("writing the group key {}", path.display()), e))
}

/// The config text of one node.
fn render(n: &Names, node: &NodeNames, policy: Policy, key: &Path, socket: &Path) -> String {
    let verbs = policy.fabric == FabricArg::Verbs;
    let (heartbeat, multiplier) = if verbs {
        (VERBS_HEARTBEAT_MS, VERBS_MULTIPLIER)
    } else {
        policy.heartbeat
    };
    // No upstream probe with the verbs fabric. In the guest its answers were late by
    // seconds whenever the emulated CPU fell behind (silence windows of 250 ms, 1 s and
    // 3 s were all exceeded, dozens of times a minute), and each silence made a healthy
    // NIC unusable: nodes dropped off their NIC, proxies refused, and a cut found no
    // proxy. Without it a NIC is usable while its link is up; failback waits for the
    // hold-down only, and a's own traffic through the restored port re-teaches the
    // switch if it forwards later than that.
    let probe = if verbs {
        String::new()
    } else {
        format!(
            "[upstream_probe]\ntarget = \"{}\"\ninterval_ms = {PROBE_MS}\nmultiplier = {PROBE_MULTIPLIER}\n\n",
            names::STATION_V4
        )
    };
    let index = n.nodes.iter().position(|x| x.id == node.id).unwrap_or(0);
    let metrics_port = if verbs {
        METRICS_PORT + u16::try_from(index).unwrap_or(0)
    } else {
        METRICS_PORT
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# nicproxy lab node {id}: generated by `nicproxy lab`, run {tag}.\n\
         [node]\nid = \"{id}\"\ngroup = \"lab\"\n\n\
         [nic]\ndevargs = \"net_af_packet0,iface={nic}\"\n\n\
         [kernel]\nname = \"{kernel}\"\nmacs = [\"{mac}\"]\nbackend = \"tap\"\n\n\
         [fabric]\nbackend = \"{backend}\"\naddress = \"{ip}:{port}\"\nkey_file = {key}\n",
        id = node.id,
        tag = n.tag,
        nic = names::NODE_NIC,
        kernel = names::NODE_KERNEL,
        mac = node.mac,
        ip = node.fabric_ip,
        port = names::FABRIC_PORT,
        key = toml_string(key),
        backend = policy.fabric.name(),
    );
    for peer in n.nodes.iter().filter(|p| p.id != node.id) {
        let _ = writeln!(
            s,
            "[[peers]]\nid = \"{}\"\naddress = \"{}:{}\"\n",
            peer.id,
            peer.fabric_ip,
            names::FABRIC_PORT
        );
    }
    let _ = write!(
        s,
        "[failover]\nfailback = \"{failback}\"\nhold_down_ms = {hold}\n\n\
         [timers]\nlink_poll_ms = {LINK_POLL_MS}\nheartbeat_ms = {heartbeat}\nmultiplier = {multiplier}\n{connect}\n\
         {probe}\
         [dataplane]\npolling = \"adaptive\"\neal_args = [\"--no-huge\", \"-m\", \"256\"]\n{netns}\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\ncontrol_socket = {socket}\n",
        failback = policy.failback.name(),
        hold = policy.hold_down_ms,
        socket = toml_string(socket),
        connect = if verbs {
            format!("connect_timeout_ms = {VERBS_CONNECT_TIMEOUT_MS}\n")
        } else {
            String::new()
        },
        netns = if verbs {
            format!("netns = \"{}\"\n", node.ns)
        } else {
            String::new()
        },
    );
    s
}

/// A path as a TOML basic string.
fn toml_string(p: &Path) -> String {
    serde_json::Value::String(p.display().to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_validate_and_order_proxies() {
        let n = Names::new(1234, 3);
        let policy = Policy {
            failback: FailbackArg::Better,
            hold_down_ms: 300,
            fabric: FabricArg::Udp,
            heartbeat: (HEARTBEAT_MS, MULTIPLIER),
        };
        let dir = Path::new("/run/lab-test");
        let text = render(
            &n,
            &n.nodes[0],
            policy,
            &dir.join("group.key"),
            &dir.join("a.sock"),
        );
        let cfg = Config::from_str_named(&text, "/run/lab-test/a.toml").unwrap();
        assert_eq!(cfg.node.id, "a");
        assert_eq!(cfg.nic.devargs, "net_af_packet0,iface=nic");
        assert_eq!(cfg.kernel.macs[0].to_string(), "02:00:00:77:00:01");
        assert_eq!(cfg.fabric.address.to_string(), "10.77.0.1:4792");
        assert_eq!(cfg.peers.len(), 2);
        assert_eq!(cfg.failover.hold_down_ms, 300);
        assert_eq!(cfg.timers.heartbeat_ms, HEARTBEAT_MS);
        assert_eq!(cfg.control_socket(), dir.join("a.sock"));
        assert_eq!(cfg.key_path(), dir.join("group.key"));
        let mut order = cfg.proxy_order();
        order.sort();
        assert_eq!(order, ["b", "c"]);
    }

    #[test]
    fn every_lab_size_validates() {
        for count in 2..=8 {
            let n = Names::new(99, count);
            for node in &n.nodes {
                let text = render(
                    &n,
                    node,
                    Policy {
                        failback: FailbackArg::Always,
                        hold_down_ms: 0,
                        fabric: FabricArg::Udp,
                        heartbeat: (HEARTBEAT_MS, MULTIPLIER),
                    },
                    Path::new("/k"),
                    Path::new("/s.sock"),
                );
                let cfg = Config::from_str_named(&text, "x.toml")
                    .unwrap_or_else(|e| panic!("{count} nodes, node {}: {e}", node.id));
                assert_eq!(cfg.proxy_order().len(), usize::from(count) - 1);
            }
        }
    }

    #[test]
    fn verbs_configs_keep_the_fabric_in_init_net() {
        let n = Names::new(77, 3);
        for (k, node) in n.nodes.iter().enumerate() {
            let text = render(
                &n,
                node,
                Policy {
                    failback: FailbackArg::Always,
                    hold_down_ms: 500,
                    fabric: FabricArg::Verbs,
                    heartbeat: (HEARTBEAT_MS, MULTIPLIER),
                },
                Path::new("/k"),
                Path::new("/s.sock"),
            );
            let cfg = Config::from_str_named(&text, "x.toml")
                .unwrap_or_else(|e| panic!("node {}: {e}\n{text}", node.id));
            assert_eq!(cfg.fabric.backend, control::config::FabricBackend::Verbs);
            assert_eq!(cfg.dataplane.netns.as_deref(), Some(node.ns.as_str()));
            assert_eq!(cfg.timers.heartbeat_ms, VERBS_HEARTBEAT_MS);
            assert!(cfg.upstream_probe.is_none());
            assert_eq!(
                cfg.metrics.listen.port(),
                METRICS_PORT + u16::try_from(k).unwrap()
            );
        }
    }

    #[test]
    fn key_is_64_hex_digits_and_private() {
        let dir = std::env::temp_dir().join(format!("nicproxy-lab-keytest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("group.key");
        write_key(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text.len(), 64);
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(mode & 0o777, 0o600);
        control::config::GroupKey::from_hex(&text).unwrap();
    }
}
