//! The node configuration: one TOML file per node.
//!
//! The structs below are the file's schema; their doc comments are the configuration
//! reference. Every table rejects unknown keys, so a misspelt key is an error, never a silent
//! default. Loading runs two passes:
//!
//! 1. serde deserialization, which checks syntax, types and unknown keys;
//! 2. semantic validation, which checks what types cannot say (duplicate ids, unknown
//!    peers, timer relations, ...), reporting every problem at once.
//!
//! Every error names the file, the line and column, and the dotted key, e.g.
//! `configs/a.toml:12:1: peers[1].id: duplicate peer id "b"`.
//!
//! The group key file is not read by [`Config::load`]: `check-config` must work on a machine
//! that does not hold the secret. The daemon reads it at start with [`Config::load_key`].

mod error;
mod key;
mod locate;
mod mac;
mod order;
mod validate;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use error::{ConfigError, Diagnostic};
pub use key::{GroupKey, KeyError, MIN_KEY_LEN};
pub use mac::{MacAddr, MacParseError};

/// A complete node configuration, validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`: who this node is.
    pub node: NodeConfig,
    /// `[nic]`: the management NIC, owned by DPDK.
    pub nic: NicConfig,
    /// `[kernel]`: the kernel interface that carries this node's own MACs and IPs.
    pub kernel: KernelConfig,
    /// `[fabric]`: the InfiniBand/RoCE (or UDP) fabric that carries the sessions.
    pub fabric: FabricConfig,
    /// `[[peers]]`: the other nodes this node may hold sessions with. Only configured peers
    /// are ever accepted.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// `[[domains]]`: the Ethernet domains (management networks) this node reaches. Left out:
    /// one local domain, id 0, named "default", untagged.
    #[serde(default = "default_domains")]
    pub domains: Vec<DomainConfig>,
    /// `[failover]`: the proxy order and when to move back.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// `[timers]`: detection intervals.
    #[serde(default)]
    pub timers: TimersConfig,
    /// `[announce]`: gratuitous ARP / unsolicited NA bursts after every change of path.
    #[serde(default)]
    pub announce: AnnounceConfig,
    /// `[upstream_probe]`: optional ARP probe of a gateway through the NIC (like bonding's
    /// `arp_ip_target`). A link can be up while everything behind it is dead; with a probe,
    /// the NIC only counts as usable while the target answers.
    #[serde(default)]
    pub upstream_probe: Option<UpstreamProbeConfig>,
    /// `[dataplane]`: worker cores and polling.
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// `[metrics]`: where metrics and the control socket listen.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Directory of the file this was loaded from; relative paths in the file resolve
    /// against it.
    #[serde(skip)]
    base_dir: PathBuf,
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, unique in its group: 1 to 63 characters of `A-Z a-z 0-9 . _ -`
    /// (at most 55 with `fabric.backend = "verbs"`, where it travels in the rdma_cm
    /// connect request). It names the node in the session protocol and in metrics.
    pub id: String,
    /// The group this node belongs to. Nodes proxy only for members of their own group.
    /// Same character set as `id`.
    pub group: String,
}

/// `[nic]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// DPDK device arguments: a PCI address (`0000:3b:00.0`) or a vdev
    /// (`net_af_packet0,iface=veth0`). Must not be empty.
    pub devargs: String,
    /// Number of rx/tx queue pairs on the NIC, shared out among the workers. Default 1,
    /// range 1..=64.
    #[serde(default = "default_queues")]
    pub queues: u16,
    /// MTU of the NIC (bytes of IP payload). Default 1500, range 68..=9600.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

/// `[kernel]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// Name of the kernel interface nicproxy creates, at most 15 bytes (IFNAMSIZ), no `/`,
    /// `:` or whitespace.
    pub name: String,
    /// The node's own MAC addresses (`aa:bb:cc:dd:ee:ff`), unicast, at least one, at most
    /// 32, no duplicates. The first is the kernel interface's address.
    pub macs: Vec<MacAddr>,
    /// MTU of the kernel interface. Default 1500; must not exceed `nic.mtu`, since the
    /// kernel's frames leave through the NIC.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// How the kernel interface is made: `"virtio-user"` (vhost-kernel, needs
    /// /dev/vhost-net), `"tap"`, or `"auto"` (virtio-user when /dev/vhost-net exists, else
    /// tap). Default `"auto"`.
    #[serde(default)]
    pub backend: KernelBackend,
}

/// The exception-path device type; see [`KernelConfig::backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelBackend {
    /// virtio-user over vhost-kernel: the production choice.
    VirtioUser,
    /// The TAP PMD: the fallback.
    Tap,
    /// virtio-user when /dev/vhost-net exists, else TAP.
    #[default]
    Auto,
}

impl KernelBackend {
    /// Resolves `Auto` given whether /dev/vhost-net is present; the others stay as they are.
    pub fn resolve_with(self, vhost_net_present: bool) -> KernelBackend {
        match self {
            KernelBackend::Auto if vhost_net_present => KernelBackend::VirtioUser,
            KernelBackend::Auto => KernelBackend::Tap,
            other => other,
        }
    }

    /// Resolves `Auto` by looking for /dev/vhost-net on this machine.
    pub fn resolve(self) -> KernelBackend {
        self.resolve_with(Path::new("/dev/vhost-net").exists())
    }
}

/// `[fabric]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabricConfig {
    /// `"verbs"` (RC queue pairs connected with rdma_cm) or `"udp"`.
    pub backend: FabricBackend,
    /// This node's fabric address, `IP:port`: its IPoIB or RoCE address for verbs (the port
    /// is the rdma_cm port), the local bind address for UDP. Port 0 is not allowed.
    pub address: SocketAddr,
    /// RDMA device name (e.g. `mlx5_0`, `rxe0`). Only with `backend = "verbs"`; left out,
    /// rdma_cm picks the device that owns `address`.
    #[serde(default)]
    pub device: Option<String>,
    /// Path of the pre-shared group key that authenticates control messages
    /// (HMAC-SHA256). Relative paths resolve against the config file's directory. The file
    /// holds the key as hex text, at least 64 hex digits (32 bytes); whitespace is ignored.
    /// It must not be readable by group or others. Create one with
    /// `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > group.key; chmod 600 group.key`
    /// and copy it to every node of the group. Read at daemon start, not by `check-config`.
    pub key_file: PathBuf,
}

/// The fabric transport; see [`FabricConfig::backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FabricBackend {
    /// InfiniBand / RoCE RC queue pairs.
    Verbs,
    /// UDP datagrams (labs, and fabrics without RDMA).
    Udp,
}

/// `[[peers]]`: one entry per peer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's node id (its `node.id`). Unique, and not this node's own id.
    pub id: String,
    /// The peer's fabric address, `IP:port`, of the same address family as
    /// `fabric.address`. Unique.
    pub address: SocketAddr,
    /// The peer's group. Default: this node's group. Only peers of this node's group serve
    /// as its proxies or are served by it.
    #[serde(default)]
    pub group: Option<String>,
}

/// `[[domains]]`: one Ethernet domain (a management network).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// Domain id, the same on every node of the group. Unique.
    pub id: u16,
    /// Human-readable name, unique. Used in logs and metrics.
    pub name: String,
    /// 802.1Q VLAN id (1..=4094) of the domain on the NIC; left out: untagged. Unique.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Whether this node's NIC is cabled to the domain. Default true. At least one domain
    /// must be local.
    #[serde(default = "default_true")]
    pub local: bool,
    /// For a domain that is not local: the peers, in priority order, through which this node
    /// reaches it, permanently. Required (non-empty) when `local = false`, not allowed when
    /// `local = true`. Peers of this node's group only.
    #[serde(default)]
    pub via: Vec<String>,
}

/// `[failover]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// This node's proxies, in priority order: peer ids of this node's group. Left out: every
    /// peer of the group, ordered by rendezvous hashing of (this node's id, peer id), so
    /// that the first choices of the group's nodes spread over different peers. See
    /// [`Config::proxy_order`].
    #[serde(default)]
    pub proxies: Option<Vec<String>>,
    /// When to move back to a better path that returns: `"always"` (back to the NIC once it
    /// has been up for `hold_down_ms`), `"better"` (also back to a higher-priority proxy once
    /// it has been usable for `hold_down_ms`), `"never"` (stay on a working proxy until it
    /// fails). Default `"always"`. Failing over is always immediate.
    #[serde(default)]
    pub failback: Failback,
    /// How long a returning path must stay usable before we move back to it, against
    /// flapping links. Default 2000, at most 600000. 0 moves back at once.
    #[serde(default = "default_hold_down_ms")]
    pub hold_down_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            proxies: None,
            failback: Failback::default(),
            hold_down_ms: default_hold_down_ms(),
        }
    }
}

/// Failback policy; see [`FailoverConfig::failback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failback {
    /// Back to the NIC once it is stable; between proxies, stay.
    #[default]
    Always,
    /// Back to the NIC, or to a higher-priority proxy, once it is stable.
    Better,
    /// Stay on the current path while it works.
    Never,
}

/// `[timers]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimersConfig {
    /// Interval of the NIC link-state poll, in ms. Default 2, range 1..=1000.
    #[serde(default = "default_link_poll_ms")]
    pub link_poll_ms: u64,
    /// Interval of session heartbeats, in ms. Default 5, range 1..=10000.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A session is declared down after `multiplier` heartbeat intervals without a valid
    /// heartbeat (BFD's detect multiplier). Default 3, range 2..=255; the detection time
    /// `heartbeat_ms * multiplier` must be at least 4 ms, since scheduling jitter on shared
    /// cores would otherwise declare live sessions dead.
    #[serde(default = "default_multiplier")]
    pub multiplier: u64,
    /// How long one attempt to establish a session (rdma_cm connect, Hello/Accept) may take
    /// before it is retried, in ms. Default 1000, range 1..=60000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long to wait for a proxy's answer to a proxy request before sending it again, in
    /// ms; after 3 unanswered retries the proxy counts as refusing until its session
    /// restarts. Default 50, range 1..=10000.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
}

impl Default for TimersConfig {
    fn default() -> Self {
        Self {
            link_poll_ms: default_link_poll_ms(),
            heartbeat_ms: default_heartbeat_ms(),
            multiplier: default_multiplier(),
            connect_timeout_ms: default_connect_timeout_ms(),
            ack_timeout_ms: default_ack_timeout_ms(),
        }
    }
}

impl TimersConfig {
    /// The link-state poll interval.
    pub fn link_poll(&self) -> Duration {
        Duration::from_millis(self.link_poll_ms)
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Silence after which a session is declared down: interval × multiplier.
    pub fn detection_time(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.saturating_mul(self.multiplier))
    }

    /// The session establishment timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The proxy-request retransmission timeout.
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
}

/// `[announce]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// Gratuitous ARPs / unsolicited NAs sent per MAC and address after every change of
    /// path (bonding's `num_grat_arp`). Default 3, range 1..=30.
    #[serde(default = "default_announce_count")]
    pub count: u32,
    /// Interval between the announcements of one burst, in ms. Default 50, range 1..=10000.
    #[serde(default = "default_announce_interval_ms")]
    pub interval_ms: u64,
    /// Whether this node, acting as a proxy, also announces its clients' MACs from its own
    /// NIC as soon as it installs them; that moves the switch's FDB one fabric round trip
    /// sooner. Default true.
    #[serde(default = "default_true")]
    pub on_behalf: bool,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            count: default_announce_count(),
            interval_ms: default_announce_interval_ms(),
            on_behalf: true,
        }
    }
}

impl AnnounceConfig {
    /// Interval between announcements of one burst.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// How long one burst lasts, from its first announcement to its last.
    pub fn burst_duration(&self) -> Duration {
        self.interval().saturating_mul(self.count.saturating_sub(1))
    }
}

/// `[upstream_probe]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamProbeConfig {
    /// IPv4 address to probe with ARP through the NIC, typically the gateway. Unicast.
    pub target: Ipv4Addr,
    /// Sender IP of the ARP requests. Left out: 0.0.0.0, an RFC 5227 ARP probe, which needs
    /// no address on the node.
    #[serde(default)]
    pub source: Option<Ipv4Addr>,
    /// Probe interval, in ms. Default 100, range 1..=60000.
    #[serde(default = "default_probe_interval_ms")]
    pub interval_ms: u64,
    /// The upstream counts as dead after this many unanswered probes in a row. Default 3,
    /// range 1..=255.
    #[serde(default = "default_multiplier")]
    pub multiplier: u64,
}

/// `[dataplane]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// CPU cores of the workers, one worker per core, no duplicates. Empty (the default):
    /// one worker, not pinned, which suits labs where several nodes share few cores.
    #[serde(default)]
    pub cores: Vec<u16>,
    /// `"busy"` (spin on dedicated cores: lowest latency) or `"adaptive"` (back off when
    /// idle, so several nodes can share cores). Default `"adaptive"`.
    #[serde(default)]
    pub polling: Polling,
    /// Extra arguments for DPDK's EAL, e.g. `["--no-huge", "-m", "256"]` for a lab without
    /// hugepages. nicproxy always adds `--in-memory` and a per-node `--file-prefix`, and
    /// `--no-pci` when the NIC is a vdev. Default: none.
    #[serde(default)]
    pub eal_args: Vec<String>,
    /// Mbufs in the packet pool. Default 8191, range 1023..=1048575.
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    /// SCHED_FIFO priority of the control thread (1..=99), so that failure detection keeps
    /// its millisecond timers on a loaded machine; 0 leaves it at normal priority. Default 10.
    #[serde(default = "default_control_rt_priority")]
    pub control_rt_priority: u8,
    /// A network namespace, by name (a file under /run/netns, as `ip netns add` makes), in
    /// which the daemon opens its NIC, creates its kernel interface (the TAP or virtio-user
    /// device appears there) and opens the netlink and packet sockets that watch and
    /// announce them. The fabric (UDP sockets, rdma_cm, the RDMA device), the control
    /// socket and the metrics endpoint stay in the namespace the daemon was started in.
    /// Left out (the default): everything in the daemon's own namespace. For labs and
    /// containers whose management NIC lives in another namespace than the fabric (Soft-RoCE
    /// works only in the initial namespace). At most 255 bytes, no `/`, not `.` or `..`.
    #[serde(default)]
    pub netns: Option<String>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            cores: Vec::new(),
            polling: Polling::default(),
            eal_args: Vec::new(),
            mbufs: default_mbufs(),
            control_rt_priority: default_control_rt_priority(),
            netns: None,
        }
    }
}

/// Worker polling mode; see [`DataplaneConfig::polling`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Polling {
    /// Spin without pause.
    Busy,
    /// Back off when idle.
    #[default]
    Adaptive,
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus metrics endpoint. Default `127.0.0.1:9469`.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    /// Path of the control socket (`nicproxy status` talks to it). Default
    /// `/run/nicproxy/<node id>.sock`.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
            control_socket: None,
        }
    }
}

impl Config {
    /// Reads, parses and validates the config file at `path`. Does not read the key file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_named(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `name` is the file name used in error messages, and its
    /// directory is the base of relative paths in the file.
    pub fn from_str_named(text: &str, name: &str) -> Result<Config, ConfigError> {
        let tree = locate::Tree::parse(text);
        let mut config: Config = toml::from_str(text).map_err(|e| {
            ConfigError::Parse(Diagnostic::from_toml(name, text, tree.as_ref(), &e))
        })?;
        let problems = validate::validate(&config);
        if !problems.is_empty() {
            let diagnostics = problems
                .into_iter()
                .map(|p| Diagnostic::from_problem(name, text, tree.as_ref(), p))
                .collect();
            return Err(ConfigError::Invalid(diagnostics));
        }
        config.base_dir = Path::new(name)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(config)
    }

    /// This node's proxies in priority order: `failover.proxies` when given, otherwise every
    /// peer of this node's group ordered by descending rendezvous (HRW) score of
    /// (node id, peer id). HRW spreads load: each node gets its own pseudo-random order, so
    /// when several NICs fail their traffic lands on different proxies, and removing a peer
    /// from the group leaves the relative order of the others unchanged.
    pub fn proxy_order(&self) -> Vec<String> {
        match &self.failover.proxies {
            Some(list) => list.clone(),
            None => {
                order::rendezvous_order(&self.node.id, self.group_peers().map(|p| p.id.as_str()))
            }
        }
    }

    /// The peers that belong to this node's group.
    pub fn group_peers(&self) -> impl Iterator<Item = &PeerConfig> {
        self.peers
            .iter()
            .filter(|p| self.peer_group(p) == self.node.group)
    }

    /// The group of a peer (its own `group`, or this node's when left out).
    pub fn peer_group<'a>(&'a self, peer: &'a PeerConfig) -> &'a str {
        peer.group.as_deref().unwrap_or(&self.node.group)
    }

    /// The configured peer with this id.
    pub fn peer(&self, id: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// The domains this node's NIC is cabled to.
    pub fn local_domains(&self) -> impl Iterator<Item = &DomainConfig> {
        self.domains.iter().filter(|d| d.local)
    }

    /// The key file path, resolved against the config file's directory.
    pub fn key_path(&self) -> PathBuf {
        self.base_dir.join(&self.fabric.key_file)
    }

    /// Reads the group key named by `fabric.key_file` (see [`FabricConfig::key_file`] for
    /// the format).
    pub fn load_key(&self) -> Result<GroupKey, ConfigError> {
        let path = self.key_path();
        key::load(&path).map_err(|source| ConfigError::Key { path, source })
    }

    /// The control socket path, configured or default.
    pub fn control_socket(&self) -> PathBuf {
        match &self.metrics.control_socket {
            Some(p) => self.base_dir.join(p),
            None => PathBuf::from(format!("/run/nicproxy/{}.sock", self.node.id)),
        }
    }

    /// Failback hold-down as a duration.
    pub fn hold_down(&self) -> Duration {
        Duration::from_millis(self.failover.hold_down_ms)
    }
}

fn default_domains() -> Vec<DomainConfig> {
    vec![DomainConfig {
        id: 0,
        name: "default".to_string(),
        vlan: None,
        local: true,
        via: Vec::new(),
    }]
}
fn default_true() -> bool {
    true
}
fn default_queues() -> u16 {
    1
}
fn default_mtu() -> u16 {
    1500
}
fn default_hold_down_ms() -> u64 {
    2000
}
fn default_link_poll_ms() -> u64 {
    2
}
fn default_heartbeat_ms() -> u64 {
    5
}
fn default_multiplier() -> u64 {
    3
}
fn default_connect_timeout_ms() -> u64 {
    1000
}
fn default_ack_timeout_ms() -> u64 {
    50
}
fn default_announce_count() -> u32 {
    3
}
fn default_announce_interval_ms() -> u64 {
    50
}
fn default_probe_interval_ms() -> u64 {
    100
}
fn default_mbufs() -> u32 {
    8191
}
fn default_control_rt_priority() -> u8 {
    10
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9469))
}

#[cfg(test)]
mod tests;
