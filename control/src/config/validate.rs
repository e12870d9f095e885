//! Semantic checks that serde's types cannot express. Every problem is collected, so one
//! run of `check-config` shows them all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::locate::Seg;
use super::{Config, FabricBackend};

/// One semantic problem, located by key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) path: Vec<Seg>,
    pub(crate) message: String,
}

/// Longest node/group id: ids travel in every control message with a one-byte length, and
/// short ids keep the messages small.
pub(crate) const MAX_ID_LEN: usize = 63;
/// Most MACs one node may own; also the per-message limit of the session protocol.
pub(crate) const MAX_MACS: usize = 32;
/// Shortest accepted session detection time (heartbeat × multiplier), in ms.
pub(crate) const MIN_DETECTION_MS: u64 = 4;
/// Longest node id with the verbs backend: the id is the private data of the rdma_cm
/// connect request (`dataplane::verbs::CONNECT_PRIVATE_DATA_MAX`).
pub(crate) const MAX_VERBS_ID_LEN: usize = 55;

/// Builds a key path from string keys and integer indices: `path!["peers", 1, "id"]`.
macro_rules! path {
    ($($seg:expr),* $(,)?) => { vec![$(Seg::from($seg)),*] };
}

impl From<&str> for Seg {
    fn from(k: &str) -> Seg {
        Seg::Key(k.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Index(i)
    }
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            message: message.into(),
        });
    }

    fn range(&mut self, path: Vec<Seg>, value: u64, lo: u64, hi: u64) {
        if value < lo || value > hi {
            self.fail(path, format!("{value} is out of range {lo}..={hi}"));
        }
    }

    fn id(&mut self, path: Vec<Seg>, what: &str, id: &str) {
        if let Err(why) = check_id(id) {
            self.fail(path, format!("invalid {what} {id:?}: {why}"));
        }
    }

    fn endpoint(&mut self, path: Vec<Seg>, addr: &SocketAddr) {
        if addr.port() == 0 {
            self.fail(path, format!("{addr}: port 0 is not a usable fabric port"));
        } else if addr.ip().is_unspecified() || addr.ip().is_multicast() {
            self.fail(
                path,
                format!("{addr}: a fabric address must be a unicast address"),
            );
        }
    }
}

/// Checks an id: 1..=63 bytes of `A-Z a-z 0-9 . _ -`.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("longer than {MAX_ID_LEN} bytes"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "character {c:?} is not allowed (use A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

/// Every semantic problem of `cfg`, in file order as far as practical.
pub(crate) fn validate(cfg: &Config) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    node(&mut c, cfg);
    nic_and_kernel(&mut c, cfg);
    fabric(&mut c, cfg);
    peers(&mut c, cfg);
    domains(&mut c, cfg);
    failover(&mut c, cfg);
    timers(&mut c, cfg);
    rest(&mut c, cfg);
    c.problems
}

fn node(c: &mut Checker, cfg: &Config) {
    c.id(path!["node", "id"], "node id", &cfg.node.id);
    c.id(path!["node", "group"], "group", &cfg.node.group);
}

fn nic_and_kernel(c: &mut Checker, cfg: &Config) {
    if cfg.nic.devargs.trim().is_empty() {
        c.fail(
            path!["nic", "devargs"],
            "must name a device: a PCI address or a vdev such as net_af_packet0,iface=eth0",
        );
    }
    c.range(path!["nic", "queues"], cfg.nic.queues.into(), 1, 64);
    // Each worker owns one queue pair of the NIC (and of the kernel port).
    let workers = cfg.dataplane.cores.len().max(1);
    if usize::from(cfg.nic.queues) != workers {
        c.fail(
            path!["nic", "queues"],
            format!(
                "must equal the number of workers ({workers}: the entries of dataplane.cores, or 1 when it is empty), since each worker owns one queue pair"
            ),
        );
    }
    c.range(path!["nic", "mtu"], cfg.nic.mtu.into(), 68, 9600);

    let name = &cfg.kernel.name;
    if name.is_empty() || name.len() > 15 {
        c.fail(
            path!["kernel", "name"],
            format!("interface name {name:?} must be 1 to 15 bytes (IFNAMSIZ)"),
        );
    } else if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        c.fail(
            path!["kernel", "name"],
            format!(
                "interface name {name:?} may not be . or .. nor contain '/', ':' or whitespace"
            ),
        );
    }
    if cfg.kernel.macs.is_empty() {
        c.fail(
            path!["kernel", "macs"],
            "at least one MAC address is required",
        );
    }
    if cfg.kernel.macs.len() > MAX_MACS {
        c.fail(
            path!["kernel", "macs"],
            format!(
                "{} MACs given; at most {MAX_MACS} are supported",
                cfg.kernel.macs.len()
            ),
        );
    }
    for (i, mac) in cfg.kernel.macs.iter().enumerate() {
        if !mac.is_unicast() {
            c.fail(
                path!["kernel", "macs", i],
                format!("{mac} is not a unicast station address"),
            );
        }
        if let Some(j) = cfg.kernel.macs[..i].iter().position(|m| m == mac) {
            c.fail(
                path!["kernel", "macs", i],
                format!("duplicate MAC {mac} (also kernel.macs[{j}])"),
            );
        }
    }
    c.range(path!["kernel", "mtu"], cfg.kernel.mtu.into(), 68, 9600);
    if cfg.kernel.mtu > cfg.nic.mtu {
        c.fail(
            path!["kernel", "mtu"],
            format!(
                "kernel MTU {} exceeds nic.mtu {}: the kernel's frames leave through the NIC",
                cfg.kernel.mtu, cfg.nic.mtu
            ),
        );
    }
}

fn fabric(c: &mut Checker, cfg: &Config) {
    c.endpoint(path!["fabric", "address"], &cfg.fabric.address);
    match (&cfg.fabric.device, cfg.fabric.backend) {
        (Some(_), FabricBackend::Udp) => c.fail(
            path!["fabric", "device"],
            "an RDMA device only applies to backend = \"verbs\"",
        ),
        (Some(d), FabricBackend::Verbs) if d.trim().is_empty() => c.fail(
            path!["fabric", "device"],
            "must not be empty (leave it out to let rdma_cm pick the device)",
        ),
        _ => {}
    }
    if cfg.fabric.key_file.as_os_str().is_empty() {
        c.fail(path!["fabric", "key_file"], "must name the group key file");
    }
    if cfg.fabric.backend == FabricBackend::Verbs && cfg.node.id.len() > MAX_VERBS_ID_LEN {
        c.fail(
            path!["node", "id"],
            format!(
                "with backend = \"verbs\" the node id travels in the rdma_cm connect request, which holds at most {MAX_VERBS_ID_LEN} bytes; {:?} has {}",
                cfg.node.id,
                cfg.node.id.len()
            ),
        );
    }
}

/// Checks a network namespace name: a file name directly under /run/netns.
fn check_netns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name == "." || name == ".." {
        return Err("may not be . or ..");
    }
    if name.contains(['/', '\0']) {
        return Err("may not contain '/' or NUL");
    }
    if name.len() > 255 {
        return Err("is longer than 255 bytes");
    }
    Ok(())
}

fn peers(c: &mut Checker, cfg: &Config) {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    let own = cfg.fabric.address;
    for (i, peer) in cfg.peers.iter().enumerate() {
        c.id(path!["peers", i, "id"], "peer id", &peer.id);
        if peer.id == cfg.node.id {
            c.fail(
                path!["peers", i, "id"],
                format!("peer id {:?} is this node's own id", peer.id),
            );
        }
        if let Some(j) = ids.insert(&peer.id, i) {
            c.fail(
                path!["peers", i, "id"],
                format!("duplicate peer id {:?} (also peers[{j}])", peer.id),
            );
            ids.insert(&peer.id, j);
        }
        c.endpoint(path!["peers", i, "address"], &peer.address);
        if peer.address.is_ipv4() != own.is_ipv4() {
            c.fail(
                path!["peers", i, "address"],
                format!(
                    "{} is not of the address family of fabric.address {own}",
                    peer.address
                ),
            );
        }
        if peer.address == own {
            c.fail(
                path!["peers", i, "address"],
                format!("{} is this node's own fabric.address", peer.address),
            );
        }
        // The UDP backend recognises a peer by its address and the group's one data port
        // (and uses that port + 1 for control messages).
        if cfg.fabric.backend == FabricBackend::Udp && peer.address.port() != own.port() {
            c.fail(
                path!["peers", i, "address"],
                format!(
                    "port {} differs from fabric.address's port {}: the UDP fabric uses one port for the whole group",
                    peer.address.port(),
                    own.port()
                ),
            );
        }
        if let Some(j) = addrs.insert(peer.address, i) {
            c.fail(
                path!["peers", i, "address"],
                format!("duplicate peer address {} (also peers[{j}])", peer.address),
            );
            addrs.insert(peer.address, j);
        }
        if let Some(g) = &peer.group {
            c.id(path!["peers", i, "group"], "group", g);
        }
    }
}

/// Checks a list of peer ids used as proxies (`failover.proxies`, `domains[i].via`).
fn proxy_list(c: &mut Checker, cfg: &Config, base: Vec<Seg>, list: &[String]) {
    for (i, id) in list.iter().enumerate() {
        let mut path = base.clone();
        path.push(Seg::Index(i));
        if *id == cfg.node.id {
            c.fail(
                path,
                format!("{id:?} is this node itself; a node cannot proxy for itself"),
            );
            continue;
        }
        let Some(peer) = cfg.peer(id) else {
            c.fail(path, format!("unknown peer {id:?}: not in [[peers]]"));
            continue;
        };
        let group = cfg.peer_group(peer);
        if group != cfg.node.group {
            c.fail(
                path,
                format!(
                    "peer {id:?} is in group {group:?}, not in this node's group {:?}; nodes proxy only within their group",
                    cfg.node.group
                ),
            );
            continue;
        }
        if let Some(j) = list[..i].iter().position(|other| other == id) {
            c.fail(path, format!("peer {id:?} is listed twice (also [{j}])"));
        }
    }
}

fn domains(c: &mut Checker, cfg: &Config) {
    if cfg.domains.is_empty() {
        c.fail(path!["domains"], "at least one domain is required");
    }
    if !cfg.domains.is_empty() && !cfg.domains.iter().any(|d| d.local) {
        c.fail(
            path!["domains"],
            "no domain is local: the NIC must be cabled to at least one domain",
        );
    }
    for (i, d) in cfg.domains.iter().enumerate() {
        if let Some(j) = cfg.domains[..i].iter().position(|o| o.id == d.id) {
            c.fail(
                path!["domains", i, "id"],
                format!("duplicate domain id {} (also domains[{j}])", d.id),
            );
        }
        if d.name.trim().is_empty() {
            c.fail(path!["domains", i, "name"], "must not be empty");
        } else if let Some(j) = cfg.domains[..i].iter().position(|o| o.name == d.name) {
            c.fail(
                path!["domains", i, "name"],
                format!("duplicate domain name {:?} (also domains[{j}])", d.name),
            );
        }
        if let Some(vlan) = d.vlan {
            c.range(path!["domains", i, "vlan"], vlan.into(), 1, 4094);
            if let Some(j) = cfg.domains[..i].iter().position(|o| o.vlan == Some(vlan)) {
                c.fail(
                    path!["domains", i, "vlan"],
                    format!("VLAN {vlan} is already used by domains[{j}]"),
                );
            }
        }
        if d.local && !d.via.is_empty() {
            c.fail(
                path!["domains", i, "via"],
                "a local domain is reached through the NIC; `via` is only for domains with local = false",
            );
        }
        if !d.local && d.via.is_empty() {
            c.fail(
                path!["domains", i, "via"],
                "a domain with local = false needs `via`: the peers that reach it",
            );
        }
        proxy_list(c, cfg, path!["domains", i, "via"], &d.via);
    }
}

fn failover(c: &mut Checker, cfg: &Config) {
    if let Some(list) = &cfg.failover.proxies {
        proxy_list(c, cfg, path!["failover", "proxies"], list);
    }
    c.range(
        path!["failover", "hold_down_ms"],
        cfg.failover.hold_down_ms,
        0,
        600_000,
    );
}

fn timers(c: &mut Checker, cfg: &Config) {
    let t = &cfg.timers;
    c.range(path!["timers", "link_poll_ms"], t.link_poll_ms, 1, 1000);
    c.range(path!["timers", "heartbeat_ms"], t.heartbeat_ms, 1, 10_000);
    c.range(path!["timers", "multiplier"], t.multiplier, 2, 255);
    let detection = t.heartbeat_ms.saturating_mul(t.multiplier);
    if t.heartbeat_ms >= 1 && t.multiplier >= 2 && detection < MIN_DETECTION_MS {
        c.fail(
            path!["timers", "multiplier"],
            format!(
                "detection time heartbeat_ms × multiplier = {} × {} = {detection} ms is below {MIN_DETECTION_MS} ms; scheduling jitter would declare live sessions dead",
                t.heartbeat_ms, t.multiplier
            ),
        );
    }
    c.range(
        path!["timers", "connect_timeout_ms"],
        t.connect_timeout_ms,
        1,
        60_000,
    );
    c.range(
        path!["timers", "ack_timeout_ms"],
        t.ack_timeout_ms,
        1,
        10_000,
    );
}

fn rest(c: &mut Checker, cfg: &Config) {
    c.range(path!["announce", "count"], cfg.announce.count.into(), 1, 30);
    c.range(
        path!["announce", "interval_ms"],
        cfg.announce.interval_ms,
        1,
        10_000,
    );

    if let Some(p) = &cfg.upstream_probe {
        let t = p.target;
        if t.is_unspecified() || t.is_broadcast() || t.is_multicast() || t.is_loopback() {
            c.fail(
                path!["upstream_probe", "target"],
                format!("{t} is not a unicast address that can answer ARP"),
            );
        }
        if let Some(s) = p.source {
            if s.is_broadcast() || s.is_multicast() || s.is_loopback() {
                c.fail(
                    path!["upstream_probe", "source"],
                    format!("{s} cannot be an ARP sender address"),
                );
            }
        }
        c.range(
            path!["upstream_probe", "interval_ms"],
            p.interval_ms,
            1,
            60_000,
        );
        c.range(path!["upstream_probe", "multiplier"], p.multiplier, 1, 255);
    }

    let cores = &cfg.dataplane.cores;
    for (i, core) in cores.iter().enumerate() {
        if let Some(j) = cores[..i].iter().position(|o| o == core) {
            c.fail(
                path!["dataplane", "cores", i],
                format!("core {core} is listed twice (also [{j}])"),
            );
        }
    }
    c.range(
        path!["dataplane", "mbufs"],
        cfg.dataplane.mbufs.into(),
        1023,
        1_048_575,
    );
    c.range(
        path!["dataplane", "control_rt_priority"],
        cfg.dataplane.control_rt_priority.into(),
        0,
        99,
    );
    if let Some(ns) = &cfg.dataplane.netns {
        if let Err(why) = check_netns_name(ns) {
            c.fail(
                path!["dataplane", "netns"],
                format!("network namespace name {ns:?} {why}"),
            );
        }
    }

    if let Some(p) = &cfg.metrics.control_socket {
        if p.as_os_str().is_empty() {
            c.fail(path!["metrics", "control_socket"], "must not be empty");
        }
    }
    if let IpAddr::V4(v4) = cfg.metrics.listen.ip() {
        if v4.is_multicast() || v4.is_broadcast() {
            c.fail(
                path!["metrics", "listen"],
                "cannot listen on a multicast or broadcast address",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"[node]
id = "NODE"
group = "g"
[nic]
devargs = "net_null0"
[kernel]
name = "mgmt0"
macs = ["02:00:00:00:00:01"]
[fabric]
backend = "BACKEND"
address = "10.0.0.1:4792"
key_file = "k.key"
[[peers]]
id = "b"
address = "10.0.0.2:4792"
"#;

    fn config(id: &str, backend: &str, extra: &str) -> Result<Config, String> {
        let text = format!(
            "{}{extra}",
            BASE.replace("NODE", id).replace("BACKEND", backend)
        );
        Config::from_str_named(&text, "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn netns_is_optional_and_checked() {
        let cfg = config("a", "udp", "").expect("no netns");
        assert_eq!(cfg.dataplane.netns, None);
        let cfg = config("a", "udp", "[dataplane]\nnetns = \"node-a\"\n").expect("a name");
        assert_eq!(cfg.dataplane.netns.as_deref(), Some("node-a"));
        for (bad, why) in [
            ("", "must not be empty"),
            ("..", "may not be . or .."),
            ("x/y", "may not contain '/'"),
        ] {
            let err =
                config("a", "udp", &format!("[dataplane]\nnetns = \"{bad}\"\n")).expect_err(bad);
            assert!(
                err.contains("dataplane.netns: network namespace name") && err.contains(why),
                "{err}"
            );
        }
    }

    #[test]
    fn verbs_node_ids_fit_the_connect_request() {
        let long = "n".repeat(56);
        config(&"n".repeat(55), "verbs", "").expect("55 bytes fit");
        config(&long, "udp", "").expect("UDP has no such limit");
        let err = config(&long, "verbs", "").expect_err("56 bytes");
        assert!(
            err.contains("node.id: with backend = \"verbs\"") && err.contains("at most 55 bytes"),
            "{err}"
        );
    }
}
