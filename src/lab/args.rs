//! The command lines of `nicproxy lab` and of the hidden `nicproxy lab-agent`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Options of `nicproxy lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Number of nodes (a, b, c, ...); node a is the one whose NIC fails.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=8))]
    pub nodes: u8,
    /// How many times to cut and restore the NIC (median and p99 are over these).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub cuts: u32,
    /// What to break.
    #[arg(long, value_enum, default_value_t = Scenario::CutNic)]
    pub scenario: Scenario,
    /// Failback policy of every node (`failover.failback`). With `never`, only one cut is
    /// made: the node stays on its proxy after the restore.
    #[arg(long, value_enum, default_value_t = FailbackArg::Always)]
    pub failback: FailbackArg,
    /// Fabric backend.
    #[arg(long, value_enum, default_value_t = FabricArg::Udp)]
    pub fabric: FabricArg,
    /// Print one JSON object with the results as the last line.
    #[arg(long)]
    pub json: bool,
    /// Where to write report.json, throughput.svg and the daemons' logs (default: a fresh
    /// directory under the temp dir).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Leave the lab running at the end, for poking; `--cleanup RUN_DIR` removes it later.
    #[arg(long)]
    pub keep: bool,
    /// `failover.hold_down_ms` of every node: how long the NIC must stay up before failback
    /// (default: the daemon's own default). The lab's switch may take a restored port into
    /// forwarding only up to ~1.1 s after it came up; announcements sent before that are
    /// lost (see the report's "port fwd").
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub hold_down_ms: u64,
    /// How long the lab stays in each state (failed over, restored) before the next step.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub dwell_ms: u64,
    /// Interval of the station's UDP probes to node a.
    #[arg(long, default_value_t = 1000, value_name = "US",
          value_parser = clap::value_parser!(u64).range(100..=100_000))]
    pub probe_interval_us: u64,
    /// Rate of the station's TCP transfer to node a, in Mbit/s (0: no transfer).
    #[arg(long, default_value_t = 20, value_name = "MBPS",
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub tcp_mbps: u32,
    /// Most probes one failover may lose before the run counts as failed.
    #[arg(long, default_value_t = 100, value_name = "PROBES")]
    pub loss_budget: u64,
    /// Set by `--fabric verbs` on the host when it re-runs the lab inside the Soft-RoCE
    /// guest (tests/lab/vm.sh): build the lab here, on this kernel's rdma_rxe.
    #[arg(long, hide = true)]
    pub in_guest: bool,
    /// `--scenario faults`: how many NIC flaps (down, then up after 1–50 ms, then the next
    /// after 1–50 ms).
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub flaps: u32,
    /// `--scenario faults|soak`: seed of the random flap intervals and hostile input
    /// (default: from the clock; printed either way, so a run can be repeated).
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
    /// `--scenario soak`: how long to run.
    #[arg(long, default_value_t = 600, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub soak_secs: u64,
    /// Remove a lab left by `--keep` (or by a lab that was killed): its run directory.
    #[arg(long, value_name = "RUN_DIR", exclusive = true)]
    pub cleanup: Option<PathBuf>,
}

/// What the lab breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Cut a's NIC: a fails over to its first proxy; restore it: a fails back.
    CutNic,
    /// Cut a's NIC, then SIGKILL its proxy's daemon: the next proxy takes over.
    KillProxy,
    /// Cut a's NIC and the fabric of every proxy: a's kernel interface loses carrier;
    /// restore one proxy's fabric: carrier returns.
    AllPaths,
    /// Cut a's NIC, then check that ARP and IPv6 neighbour solicitation from the station
    /// reach a through its proxy and that a's answers come back.
    Broadcast,
    /// The fault-injection suite (NIC flaps, SIGKILL and restarts, fabric link loss, every
    /// proxy down, SIGHUP with a broken config, hostile input), one table row per fault.
    Faults,
    /// Traffic and periodic faults for `--soak-secs`, sampling the daemons' RSS and fds.
    Soak,
}

impl Scenario {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::CutNic => "cut-nic",
            Scenario::KillProxy => "kill-proxy",
            Scenario::AllPaths => "all-paths",
            Scenario::Broadcast => "broadcast",
            Scenario::Faults => "faults",
            Scenario::Soak => "soak",
        }
    }
}

/// `failover.failback` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailbackArg {
    /// Back to the NIC once it has been up for the hold-down.
    Always,
    /// Also back to a higher-priority proxy.
    Better,
    /// Stay on the proxy.
    Never,
}

impl FailbackArg {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            FailbackArg::Always => "always",
            FailbackArg::Better => "better",
            FailbackArg::Never => "never",
        }
    }
}

/// Fabric backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FabricArg {
    /// UDP over a bridge between the namespaces.
    Udp,
    /// RC queue pairs over Soft-RoCE inside the lab guest.
    Verbs,
}

impl FabricArg {
    /// The config value (`fabric.backend`), also used in the report.
    pub fn name(self) -> &'static str {
        match self {
            FabricArg::Udp => "udp",
            FabricArg::Verbs => "verbs",
        }
    }
}

/// Options of the hidden `nicproxy lab-agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Which agent.
    #[command(subcommand)]
    pub kind: AgentKind,
}

/// The agents. Each streams timestamped text events on stdout and stops when its stdin
/// closes, so none outlives the lab.
#[derive(Debug, clap::Subcommand)]
pub enum AgentKind {
    /// In the station: UDP probes to the target (answered by its echo agent) and a paced
    /// TCP transfer to its sink.
    Station {
        /// The node's management address.
        #[arg(long)]
        target: Ipv4Addr,
        /// UDP port of the echo agent.
        #[arg(long)]
        udp_port: u16,
        /// TCP port of the sink.
        #[arg(long)]
        tcp_port: u16,
        /// Probe interval.
        #[arg(long)]
        interval_us: u64,
        /// TCP rate in Mbit/s; 0: no transfer.
        #[arg(long)]
        tcp_mbps: u32,
    },
    /// In a node: UDP echo, TCP sink, carrier watch of the kernel interface.
    Node {
        /// UDP echo port.
        #[arg(long)]
        udp_port: u16,
        /// TCP sink port.
        #[arg(long)]
        tcp_port: u16,
        /// Kernel interface whose carrier to watch.
        #[arg(long)]
        carrier_if: String,
    },
    /// In the switch: watches where the bridge learned the given MACs.
    Switch {
        /// The bridge.
        #[arg(long)]
        bridge: String,
        /// MACs to watch (aa:bb:cc:dd:ee:ff).
        #[arg(long = "mac", required = true)]
        macs: Vec<String>,
    },
    /// The Linux bonding baseline of the failover benchmark (where the bonding module
    /// exists: the lab guest); prints one JSON object.
    Bonding(super::bonding::BondingArgs),
    /// Outside the namespaces, in its own process group: when its stdin closes without a
    /// `done` or `keep` line (the lab died), removes everything the manifest lists.
    Cleanup {
        /// The lab's manifest file.
        #[arg(long)]
        manifest: PathBuf,
    },
}
