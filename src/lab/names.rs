//! Every name and address of one lab run.
//!
//! Namespaces carry a per-run tag (from the pid) so that several labs can run at once.
//! Interfaces are created directly inside their namespaces (`ip link add ... peer name ...
//! netns ...`), so their names only need to be unique per namespace and never touch the
//! host's: they stay short and readable (`nic`, `fab`, `pa`, `fa`).

use std::net::{Ipv4Addr, Ipv6Addr};

/// The switch bridge, in the switch namespace.
pub const SWITCH_BRIDGE: &str = "br0";
/// The fabric bridge, in the fabric namespace.
pub const FABRIC_BRIDGE: &str = "fbr";
/// A node's NIC (driven by DPDK's af_packet PMD), in the node's namespace.
pub const NODE_NIC: &str = "nic";
/// A node's fabric interface, in the node's namespace.
pub const NODE_FABRIC: &str = "fab";
/// The kernel interface the daemon creates, in the node's namespace.
pub const NODE_KERNEL: &str = "mgmt0";
/// The station's interface.
pub const STATION_IF: &str = "eth0";
/// The station's port on the switch.
pub const STATION_PORT: &str = "pst";
/// UDP port of the fabric (the daemon also uses the next one for control messages).
pub const FABRIC_PORT: u16 = 4792;
/// UDP echo port of the node agent.
pub const ECHO_PORT: u16 = 7000;
/// TCP sink port of the node agent.
pub const SINK_PORT: u16 = 7001;

/// One node's names and addresses.
#[derive(Debug, Clone)]
pub struct NodeNames {
    /// Node id: "a", "b", ...
    pub id: String,
    /// Its namespace.
    pub ns: String,
    /// Its NIC's port on the switch bridge.
    pub switch_port: String,
    /// Its fabric interface's port on the fabric bridge.
    pub fabric_port: String,
    /// Its kernel interface's MAC.
    pub mac: String,
    /// Fabric address.
    pub fabric_ip: Ipv4Addr,
    /// Management IPv4 address (on the kernel interface).
    pub mgmt_v4: Ipv4Addr,
    /// Management IPv6 address (on the kernel interface).
    pub mgmt_v6: Ipv6Addr,
}

/// All names of one run.
#[derive(Debug, Clone)]
pub struct Names {
    /// The per-run tag in every namespace name.
    pub tag: String,
    /// The management switch's namespace.
    pub switch_ns: String,
    /// The fabric's namespace.
    pub fabric_ns: String,
    /// The station's namespace.
    pub station_ns: String,
    /// The nodes, a first.
    pub nodes: Vec<NodeNames>,
}

/// The station's management addresses.
pub const STATION_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 100);
/// See [`STATION_V4`].
pub const STATION_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 0x100);

impl Names {
    /// Names for `nodes` nodes (2..=8), tagged with `pid`.
    pub fn new(pid: u32, nodes: u8) -> Names {
        let tag = format!("npl{pid:x}");
        let nodes = (1..=nodes)
            .map(|index| {
                let id = char::from(b'a' + index - 1).to_string();
                NodeNames {
                    ns: format!("{tag}-{id}"),
                    switch_port: format!("p{id}"),
                    fabric_port: format!("f{id}"),
                    mac: format!("02:00:00:77:00:{index:02x}"),
                    fabric_ip: Ipv4Addr::new(10, 77, 0, index),
                    mgmt_v4: Ipv4Addr::new(10, 88, 0, index),
                    mgmt_v6: Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, u16::from(index)),
                    id,
                }
            })
            .collect();
        Names {
            switch_ns: format!("{tag}-sw"),
            fabric_ns: format!("{tag}-fab"),
            station_ns: format!("{tag}-st"),
            tag,
            nodes,
        }
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&NodeNames> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node whose NIC fails: a.
    pub fn victim(&self) -> &NodeNames {
        &self.nodes[0]
    }

    /// The switch port a MAC's FDB entry points to when it belongs to this node's NIC.
    pub fn port_owner(&self, port: &str) -> Option<&NodeNames> {
        self.nodes.iter().find(|n| n.switch_port == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_are_distinct() {
        let n = Names::new(4_194_304, 8);
        assert_eq!(n.nodes.len(), 8);
        assert_eq!(n.victim().id, "a");
        assert_eq!(n.nodes[7].id, "h");
        assert_eq!(n.nodes[7].mac, "02:00:00:77:00:08");
        assert_eq!(n.nodes[2].mgmt_v6.to_string(), "fd00:88::3");
        assert_eq!(STATION_V6.to_string(), "fd00:88::100");
        let mut all: Vec<&str> = vec![&n.switch_ns, &n.fabric_ns, &n.station_ns];
        for node in &n.nodes {
            all.push(&node.ns);
            assert!(node.switch_port.len() <= 15 && node.fabric_port.len() <= 15);
        }
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "namespace names collide");
        assert!(n.switch_ns.contains("400000"));
        assert_eq!(n.port_owner("pc").map(|x| x.id.as_str()), Some("c"));
    }
}
