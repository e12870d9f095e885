//! The hidden `nicproxy lab-agent`: small programs the lab starts inside its namespaces.
//! Each streams timestamped events on stdout, one per line, for the lab's timeline (see
//! [`super::timeline`] for the format), and stops when its stdin closes.

mod io;
mod node;
mod station;
mod switch;

use super::args::{AgentArgs, AgentKind};
use super::error::Result;

pub use io::now_us;

/// Runs the agent the arguments name until its stdin closes.
pub fn run(args: AgentArgs) -> Result<()> {
    match args.kind {
        AgentKind::Station {
            target,
            udp_port,
            tcp_port,
            interval_us,
            tcp_mbps,
        } => station::run(&station::Params {
            target,
            udp_port,
            tcp_port,
            interval_us,
            tcp_mbps,
        }),
        AgentKind::Node {
            udp_port,
            tcp_port,
            carrier_if,
        } => node::run(udp_port, tcp_port, &carrier_if),
        AgentKind::Switch { bridge, macs } => switch::run(&bridge, &macs),
        AgentKind::Cleanup { manifest } => super::manifest::watch(&manifest),
        AgentKind::Bonding(a) => super::bonding::main(&a),
    }
}
