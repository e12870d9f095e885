//! Config loading and validation: the shipped example configs, defaults, and every
//! class of error with its exact location.

use std::path::{Path, PathBuf};

use super::*;

/// A temp directory removed on drop, also when a test fails.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("nicproxy-ctl-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const MINIMAL: &str = r#"[node]
id = "a"
group = "g"

[nic]
devargs = "net_null0"

[kernel]
name = "mgmt0"
macs = ["02:00:00:00:00:01"]

[fabric]
backend = "udp"
address = "10.0.0.1:4792"
key_file = "k.key"

[[peers]]
id = "b"
address = "10.0.0.2:4792"

[[peers]]
id = "c"
address = "10.0.0.3:4792"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_named(text, "t.toml")
}

/// The rendered diagnostics of a config that must fail.
fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("config accepted:\n{text}"),
        Err(e) => {
            let lines: Vec<String> = e.diagnostics().iter().map(|d| d.to_string()).collect();
            assert_eq!(e.to_string(), lines.join("\n"));
            lines
        }
    }
}

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn every_shipped_config_validates() {
    let mut seen = 0;
    for entry in std::fs::read_dir(configs_dir()).expect("configs/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // Relative key files resolve next to the config.
        if cfg.fabric.key_file.is_relative() {
            assert_eq!(cfg.key_path().parent(), path.parent());
        }
        assert!(
            !cfg.proxy_order().is_empty(),
            "{}: no proxies",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} configs found");
}

#[test]
fn lab_group_backs_each_other_up() {
    let load = |n: &str| Config::load(configs_dir().join(format!("node-{n}.toml"))).expect(n);
    let (a, b, c) = (load("a"), load("b"), load("c"));
    let mut ids = vec![a.node.id.clone(), b.node.id.clone(), c.node.id.clone()];
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    for cfg in [&a, &b, &c] {
        let mut order = cfg.proxy_order();
        order.sort();
        let mut others: Vec<String> = ids.iter().filter(|i| **i != cfg.node.id).cloned().collect();
        others.sort();
        assert_eq!(
            order, others,
            "{} must be backed by both others",
            cfg.node.id
        );
        // Each peer's address is that peer's own fabric address.
        for peer in &cfg.peers {
            let other = [&a, &b, &c]
                .into_iter()
                .find(|o| o.node.id == peer.id)
                .expect("peer");
            assert_eq!(peer.address, other.fabric.address);
        }
    }
    assert_eq!(a.proxy_order(), ["b", "c"]);
    assert_eq!(b.proxy_order(), ["c", "a"]);
    assert_eq!(c.proxy_order(), ["b", "a"]);
    assert_eq!(b.failover.failback, Failback::Better);
    let verbs = Config::load(configs_dir().join("node-a-verbs.toml")).expect("verbs config");
    assert_eq!(verbs.fabric.backend, FabricBackend::Verbs);
    assert_eq!(verbs.fabric.device.as_deref(), Some("rxe_a"));
}

#[test]
fn defaults_fill_a_minimal_config() {
    let cfg = parse(MINIMAL).expect("minimal config");
    assert_eq!(cfg.nic.queues, 1);
    assert_eq!(cfg.nic.mtu, 1500);
    assert_eq!(cfg.kernel.backend, KernelBackend::Auto);
    assert_eq!(cfg.timers, TimersConfig::default());
    assert_eq!(cfg.timers.detection_time(), Duration::from_millis(15));
    assert_eq!(cfg.failover.failback, Failback::Always);
    assert_eq!(cfg.hold_down(), Duration::from_secs(2));
    assert_eq!(cfg.announce.count, 3);
    assert_eq!(cfg.announce.burst_duration(), Duration::from_millis(100));
    assert!(cfg.announce.on_behalf);
    assert_eq!(cfg.dataplane.mbufs, 8191);
    assert!(cfg.dataplane.eal_args.is_empty());
    assert_eq!(cfg.dataplane.polling, Polling::Adaptive);
    assert!(cfg.upstream_probe.is_none());
    assert_eq!(cfg.metrics.listen.to_string(), "127.0.0.1:9469");
    assert_eq!(cfg.control_socket(), PathBuf::from("/run/nicproxy/a.sock"));
    assert_eq!(cfg.domains.len(), 1);
    assert!(cfg.domains[0].local);
    assert_eq!(cfg.local_domains().count(), 1);
    assert_eq!(cfg.peer_group(&cfg.peers[0]), "g");
    assert_eq!(cfg.group_peers().count(), 2);
    // HRW order over the group's peers.
    let mut order = cfg.proxy_order();
    assert_eq!(order.len(), 2);
    order.sort();
    assert_eq!(order, ["b", "c"]);
}

#[test]
fn kernel_backend_resolution() {
    assert_eq!(
        KernelBackend::Auto.resolve_with(true),
        KernelBackend::VirtioUser
    );
    assert_eq!(KernelBackend::Auto.resolve_with(false), KernelBackend::Tap);
    assert_eq!(KernelBackend::Tap.resolve_with(true), KernelBackend::Tap);
    assert_eq!(
        KernelBackend::VirtioUser.resolve_with(false),
        KernelBackend::VirtioUser
    );
}

#[test]
fn parse_errors_name_line_and_key() {
    // (text appended to MINIMAL or a replacement, expected rendering)
    let cases: &[(&str, &str)] = &[
        // Unknown key inside a table.
        (
            "[timers]\nheartbeat_ms = 5\nhaertbeat = 3\n",
            "t.toml:27:1: timers.haertbeat: unknown field `haertbeat`, expected one of `link_poll_ms`, `heartbeat_ms`, `multiplier`, `connect_timeout_ms`, `ack_timeout_ms`",
        ),
        // Unknown table.
        ("[metric]\nlisten = \"1.2.3.4:5\"\n", "t.toml:25:2: metric: unknown field `metric`"),
        // Wrong type.
        ("[timers]\nmultiplier = \"3\"\n", "t.toml:26:14: timers.multiplier: invalid type: string \"3\", expected u64"),
        // Bad enum value.
        ("[failover]\nfailback = \"sometimes\"\n", "t.toml:26:12: failover.failback: unknown variant `sometimes`, expected one of `always`, `better`, `never`"),
        // Bad address in an array of tables.
        ("[[peers]]\nid = \"d\"\naddress = \"10.0.0.4\"\n", "t.toml:27:11: peers[2].address: invalid socket address syntax"),
    ];
    for (extra, want) in cases {
        let text = format!("{MINIMAL}\n{extra}");
        let got = errors(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with(want), "\n got: {}\nwant: {want}", got[0]);
    }
}

#[test]
fn parse_errors_inside_values() {
    let bad_mac = MINIMAL.replace(
        "macs = [\"02:00:00:00:00:01\"]",
        "macs = [\"02:00:00:00:00:01\", \"02:00:00:00:00\"]",
    );
    assert_eq!(
        errors(&bad_mac),
        // serde reports an element's error at the array, so the key stops there; the
        // message names the bad value.
        ["t.toml:10:8: kernel.macs: invalid MAC address \"02:00:00:00:00\": expected six hex octets separated by ':' or '-', like aa:bb:cc:00:11:22"]
    );
    let missing = MINIMAL.replace("group = \"g\"\n", "");
    let got = errors(&missing);
    assert!(
        got[0].starts_with("t.toml:1:1: node: missing field `group`"),
        "{got:?}"
    );
    let syntax = MINIMAL
        .replace("queues", "")
        .replace("devargs = \"net_null0\"", "devargs = [\"x\"");
    let got = errors(&syntax);
    // An unclosed array is noticed where the next line starts.
    assert!(got[0].starts_with("t.toml:8:1: invalid array"), "{got:?}");
    let negative = format!("{MINIMAL}[nic]\n");
    assert!(
        errors(&negative)[0].contains("duplicate key"),
        "redefined table"
    );
    assert!(errors("")[0].starts_with("t.toml:1:1: missing field `node`"));
}

/// Each semantic rule, with the exact location of its report.
#[test]
fn semantic_errors_name_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "id = \"c\"\naddress = \"10.0.0.3:4792\"",
            "id = \"b\"\naddress = \"10.0.0.3:4792\"",
            "t.toml:22:1: peers[1].id: duplicate peer id \"b\" (also peers[0])",
        ),
        (
            "id = \"c\"",
            "id = \"a\"",
            "t.toml:22:1: peers[1].id: peer id \"a\" is this node's own id",
        ),
        (
            "address = \"10.0.0.3:4792\"",
            "address = \"10.0.0.2:4792\"",
            "t.toml:23:1: peers[1].address: duplicate peer address 10.0.0.2:4792 (also peers[0])",
        ),
        (
            "address = \"10.0.0.3:4792\"",
            "address = \"10.0.0.1:4792\"",
            "t.toml:23:1: peers[1].address: 10.0.0.1:4792 is this node's own fabric.address",
        ),
        (
            "address = \"10.0.0.3:4792\"",
            "address = \"10.0.0.3:4800\"",
            "t.toml:23:1: peers[1].address: port 4800 differs from fabric.address's port 4792: the UDP fabric uses one port for the whole group",
        ),
        (
            "address = \"10.0.0.3:4792\"",
            "address = \"[fd00::3]:4792\"",
            "t.toml:23:1: peers[1].address: [fd00::3]:4792 is not of the address family of fabric.address 10.0.0.1:4792",
        ),
        (
            "devargs = \"net_null0\"",
            "devargs = \"  \"",
            "t.toml:6:1: nic.devargs: must name a device",
        ),
        (
            "macs = [\"02:00:00:00:00:01\"]",
            "macs = [\"02:00:00:00:00:01\", \"01:00:5e:00:00:01\"]",
            "t.toml:10:30: kernel.macs[1]: 01:00:5e:00:00:01 is not a unicast station address",
        ),
        (
            "macs = [\"02:00:00:00:00:01\"]",
            "macs = [\"02:00:00:00:00:01\", \"02:00:00:00:00:01\"]",
            "t.toml:10:30: kernel.macs[1]: duplicate MAC 02:00:00:00:00:01 (also kernel.macs[0])",
        ),
        (
            "macs = [\"02:00:00:00:00:01\"]",
            "macs = []",
            "t.toml:10:1: kernel.macs: at least one MAC address is required",
        ),
        (
            "name = \"mgmt0\"",
            "name = \"a-very-long-ifname\"",
            "t.toml:9:1: kernel.name: interface name \"a-very-long-ifname\" must be 1 to 15 bytes",
        ),
        (
            "name = \"mgmt0\"",
            "name = \"mg/mt\"",
            "t.toml:9:1: kernel.name: interface name \"mg/mt\" may not be",
        ),
        (
            "id = \"a\"",
            "id = \"node a\"",
            "t.toml:2:1: node.id: invalid node id \"node a\": character ' ' is not allowed",
        ),
        (
            "key_file = \"k.key\"",
            "key_file = \"k.key\"\ndevice = \"mlx5_0\"",
            "t.toml:16:1: fabric.device: an RDMA device only applies to backend = \"verbs\"",
        ),
        (
            "address = \"10.0.0.1:4792\"",
            "address = \"10.0.0.1:0\"",
            "t.toml:14:1: fabric.address: 10.0.0.1:0: port 0",
        ),
    ];
    for (from, to, want) in cases {
        assert!(MINIMAL.contains(from), "case {from:?} does not apply");
        let text = MINIMAL.replacen(from, to, 1);
        let got = errors(&text);
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "\n got: {got:#?}\nwant: {want}"
        );
    }
}

/// Rules about appended tables; MINIMAL and the blank line after it take 24 lines.
#[test]
fn semantic_errors_in_optional_tables() {
    let cases: &[(&str, &str)] = &[
        (
            "[failover]\nproxies = [\"b\", \"x\", \"a\", \"b\"]\n",
            "t.toml:26:17: failover.proxies[1]: unknown peer \"x\": not in [[peers]]",
        ),
        (
            "[failover]\nproxies = [\"b\", \"x\", \"a\", \"b\"]\n",
            "t.toml:26:22: failover.proxies[2]: \"a\" is this node itself",
        ),
        (
            "[failover]\nproxies = [\"b\", \"x\", \"a\", \"b\"]\n",
            "t.toml:26:27: failover.proxies[3]: peer \"b\" is listed twice (also [0])",
        ),
        (
            "[[peers]]\nid = \"z\"\naddress = \"10.0.0.9:1\"\ngroup = \"other\"\n[failover]\nproxies = [\"z\"]\n",
            "t.toml:30:12: failover.proxies[0]: peer \"z\" is in group \"other\"",
        ),
        (
            "[timers]\nheartbeat_ms = 1\nmultiplier = 3\n",
            "t.toml:27:1: timers.multiplier: detection time heartbeat_ms × multiplier = 1 × 3 = 3 ms is below 4 ms",
        ),
        (
            "[timers]\nmultiplier = 1\n",
            "t.toml:26:1: timers.multiplier: 1 is out of range 2..=255",
        ),
        (
            "[timers]\nlink_poll_ms = 0\n",
            "t.toml:26:1: timers.link_poll_ms: 0 is out of range 1..=1000",
        ),
        ("[announce]\ncount = 0\n", "t.toml:26:1: announce.count: 0 is out of range 1..=30"),
        (
            "[upstream_probe]\ntarget = \"255.255.255.255\"\n",
            "t.toml:26:1: upstream_probe.target: 255.255.255.255 is not a unicast address",
        ),
        (
            "[dataplane]\ncores = [1, 2, 1]\n",
            "t.toml:26:16: dataplane.cores[2]: core 1 is listed twice (also [0])",
        ),
        ("[dataplane]\nmbufs = 10\n", "t.toml:26:1: dataplane.mbufs: 10 is out of range 1023..=1048575"),
        (
            "[[domains]]\nid = 0\nname = \"m\"\n[[domains]]\nid = 0\nname = \"m\"\nvlan = 5000\n",
            "t.toml:29:1: domains[1].id: duplicate domain id 0 (also domains[0])",
        ),
        (
            "[[domains]]\nid = 0\nname = \"m\"\n[[domains]]\nid = 0\nname = \"m\"\nvlan = 5000\n",
            "t.toml:30:1: domains[1].name: duplicate domain name \"m\"",
        ),
        (
            "[[domains]]\nid = 0\nname = \"m\"\n[[domains]]\nid = 0\nname = \"m\"\nvlan = 5000\n",
            "t.toml:31:1: domains[1].vlan: 5000 is out of range 1..=4094",
        ),
        (
            "[[domains]]\nid = 0\nname = \"m\"\nlocal = false\n",
            "t.toml:25:3: domains: no domain is local",
        ),
        (
            "[[domains]]\nid = 0\nname = \"m\"\nlocal = false\n",
            "t.toml:25:1: domains[0].via: a domain with local = false needs `via`",
        ),
        (
            "[[domains]]\nid = 0\nname = \"m\"\nvia = [\"b\"]\n",
            "t.toml:28:1: domains[0].via: a local domain is reached through the NIC",
        ),
        (
            "[kernel2]\n",
            "t.toml:25:2: kernel2: unknown field",
        ),
    ];
    for (extra, want) in cases {
        let text = format!("{MINIMAL}\n{extra}");
        let got = errors(&text);
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "\n got: {got:#?}\nwant: {want}"
        );
    }
}

#[test]
fn reports_every_problem_at_once() {
    let text = MINIMAL
        .replacen("id = \"c\"", "id = \"b\"", 1)
        .replace("devargs = \"net_null0\"", "devargs = \"\"");
    let got = errors(&format!("{text}\n[timers]\nmultiplier = 1\n"));
    assert_eq!(got.len(), 3, "{got:#?}");
}

#[test]
fn kernel_mtu_must_fit_the_nic() {
    let text = MINIMAL.replace("macs = [", "mtu = 9000\nmacs = [");
    let got = errors(&text);
    assert_eq!(got, ["t.toml:10:1: kernel.mtu: kernel MTU 9000 exceeds nic.mtu 1500: the kernel's frames leave through the NIC"]);
}

#[test]
fn io_errors_name_the_file() {
    let err = Config::load("/nonexistent/nicproxy.toml").expect_err("must fail");
    assert!(
        err.to_string()
            .starts_with("reading config /nonexistent/nicproxy.toml: "),
        "{err}"
    );
    assert!(err.diagnostics().is_empty());
}

#[test]
fn load_key_resolves_relative_to_the_config() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cfg");
    let cfg_path = dir.path().join("node.toml");
    std::fs::write(&cfg_path, MINIMAL).expect("write config");
    let cfg = Config::load(&cfg_path).expect("config");
    assert_eq!(cfg.key_path(), dir.path().join("k.key"));
    let err = cfg.load_key().expect_err("no key yet");
    assert!(
        err.to_string().starts_with(&format!(
            "group key {}: reading the key file",
            dir.path().join("k.key").display()
        )),
        "{err}"
    );

    let key_path = dir.path().join("k.key");
    std::fs::write(&key_path, "ab".repeat(40) + "\n").expect("write key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(cfg.load_key().expect("key").as_bytes(), [0xab; 40]);
}

#[test]
fn queues_must_match_the_workers() {
    let two_cores = format!("{MINIMAL}[dataplane]\ncores = [1, 2]\n");
    let got = errors(&two_cores);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("nic.queues: must equal the number of workers (2"),
        "{got:?}"
    );
    let fixed = two_cores.replace(
        "devargs = \"net_null0\"",
        "devargs = \"net_null0\"\nqueues = 2",
    );
    assert!(parse(&fixed).is_ok(), "{:?}", errors(&fixed));
    let too_many = MINIMAL.replace(
        "devargs = \"net_null0\"",
        "devargs = \"net_null0\"\nqueues = 3",
    );
    assert!(
        errors(&too_many)[0].contains("(1: the entries"),
        "{:?}",
        errors(&too_many)
    );
}
