//! A failover end to end with the real daemon: two nodes `a` and `b`, each with its NIC (a
//! veth to a Linux bridge, the management switch) and its kernel interface `mgmt0` in its
//! own network namespace (`dataplane.netns`), and a station on the bridge that pings `a`.
//! Cutting `a`'s switch port must move `a`'s MAC in the bridge's FDB to `b`'s port while the
//! ping goes on through `b` and the fabric; restoring it must bring both back; killing `b`
//! while `a` depends on it must take `a`'s carrier away, and restarting `b` must give it
//! back.
//!
//! - `verbs_failover_in_soft_roce_guest` runs it with `fabric.backend = "verbs"`: the host
//!   has no RDMA, so it boots the Soft-RoCE lab guest (tests/lab/vm.sh) and runs this
//!   binary's ignored `inner_verbs_failover` there. The daemons stay in the guest's initial
//!   namespace, where rxe works, with fabric addresses on rxe_a/rxe_b (10.99.0.1/2), and
//!   the frames between `b`'s NIC and `a` travel over an RC queue pair. With
//!   `NICPROXY_TEST_KERNEL_BACKEND=virtio-user`, `a`'s kernel port is virtio-user over
//!   vhost-kernel (the host has no /dev/vhost-net), so every ping to `a` crosses it both
//!   ways; `b` keeps TAP. It is not the default: one CI-like run of it ended in a guest
//!   kernel soft lockup (a ping and ksoftirqd stuck for 20 minutes), cause not found.
//! - `udp_failover_with_netns_on_host` runs the same scenario on the host with the UDP
//!   fabric over loopback (127.0.1.1/2): a quick check of the daemon, `dataplane.netns`
//!   and the UDP path, without a guest.
//!
//! In the guest run, killing `b` must make `a` report the session down within its
//! heartbeat budget (interval × multiplier, plus one interval), timed by `a`'s own log;
//! and both daemons' `/metrics` must show `nicproxy_verbs_work_requests_total` move with
//! the failover's traffic (inline, gathered and signalled sends) and count the lost QP
//! and its successor (sessions removed and added).
//!
//! Both also check a domain that `a` reaches only through `b` (`local = false`, VLAN 30 on
//! the same switch): the station reaches `a` there through `b` before, during and after
//! the failover.
//!
//! Both need root (namespaces, DPDK); without it they say so and pass.

mod common;
mod common_vm;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use common::lab::is_root;

const NICPROXY: &str = env!("CARGO_BIN_EXE_nicproxy");
const MAC_A: &str = "02:00:00:88:00:01";
const MAC_B: &str = "02:00:00:88:00:02";
const IP_A: &str = "10.88.0.1";
const IP_B: &str = "10.88.0.2";
const IP_STATION: &str = "10.88.0.100";
/// The "bmc" domain, VLAN 30 on the same switch: only b is cabled to it (by config), so a
/// reaches it through b at all times, its own NIC up or not.
const BMC_VLAN: u16 = 30;
const IP_A_BMC: &str = "10.89.0.1";
const IP_STATION_BMC: &str = "10.89.0.100";

#[test]
fn verbs_failover_in_soft_roce_guest() {
    if !is_root() {
        eprintln!("skipped: the lab guest needs root");
        return;
    }
    let run = common_vm::run_own_ignored_tests(
        "inner_verbs_failover",
        &["inner_verbs_failover"],
        Duration::from_secs(1500),
    );
    println!("--- summary ---");
    for line in run.stdout.lines().chain(run.stderr.lines()) {
        if let Some(at) = line.find("RESULT ").or_else(|| line.find("vm.sh: timing")) {
            println!("{}", &line[at..]);
        }
    }
    println!(
        "guest run, boot included: {:.1} s host wall time",
        run.wall.as_secs_f64()
    );
}

#[test]
#[ignore = "needs RDMA: runs inside the lab guest"]
fn inner_verbs_failover() {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is unset: this runs inside the lab guest (cargo test --test verbs_failover boots it)")
        })
    };
    let ip = |k: &str| var(k).parse::<IpAddr>().expect("lab IP address");
    // The guest's kernel has tun as a module, and the lab set-up does not load it.
    if !Path::new("/dev/net/tun").exists() {
        run(&["modprobe", "tun"], None);
    }
    // a's kernel port may be virtio-user over vhost-kernel.
    if virtio_user_for_a() && !Path::new("/dev/vhost-net").exists() {
        run(&["modprobe", "vhost_net"], None);
    }
    Scenario::run(Fabric::Verbs {
        a: SocketAddr::new(ip("NICPROXY_IP_A"), 7471),
        b: SocketAddr::new(ip("NICPROXY_IP_B"), 7471),
    });
}

#[test]
fn udp_failover_with_netns_on_host() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces, DPDK)");
        return;
    }
    let port = 30_000 + (std::process::id() % 10_000) as u16 * 2;
    Scenario::run(Fabric::Udp {
        a: SocketAddr::from((Ipv4Addr::new(127, 0, 1, 1), port)),
        b: SocketAddr::from((Ipv4Addr::new(127, 0, 1, 2), port)),
    });
}

// ------------------------------------------------------------------------------ the lab

#[derive(Clone, Copy, Debug)]
enum Fabric {
    Verbs { a: SocketAddr, b: SocketAddr },
    Udp { a: SocketAddr, b: SocketAddr },
}

impl Fabric {
    fn name(self) -> &'static str {
        match self {
            Fabric::Verbs { .. } => "verbs",
            Fabric::Udp { .. } => "udp",
        }
    }

    fn addrs(self) -> (SocketAddr, SocketAddr) {
        match self {
            Fabric::Verbs { a, b } | Fabric::Udp { a, b } => (a, b),
        }
    }

    fn is_verbs(self) -> bool {
        matches!(self, Fabric::Verbs { .. })
    }
}

/// Runs a command; its stdout, or a panic naming the command and its stderr.
fn run(cmd: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    if let Some(text) = stdin {
        let mut w = child.stdin.take().expect("piped stdin");
        w.write_all(text.as_bytes()).expect("writing stdin");
    }
    let out = child.wait_with_output().expect("waiting for a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces, a temp directory and daemons, torn down on drop (also when a check fails).
struct Lab {
    ns_a: String,
    ns_b: String,
    ns_sw: String,
    ns_st: String,
    dir: PathBuf,
    daemons: [Option<Daemon>; 2],
    pings: Vec<Pinger>,
    made_ns: Vec<String>,
    /// `bridge monitor fdb` on the switch, its lines with the time they arrived.
    fdb_monitor: Option<Child>,
    fdb_log: Option<Arc<Mutex<Vec<String>>>>,
    /// tcpdump on the switch ports (with NICPROXY_DUMP_LOGS).
    captures: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.pings.clear();
        if let Some(mut m) = self.fdb_monitor.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
        for d in self.daemons.iter_mut().flatten() {
            let _ = d.child.kill();
            let _ = d.child.wait();
            forget_runtime_dir(d);
        }
        for mut c in self.captures.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() || std::env::var_os("NICPROXY_DUMP_LOGS").is_some() {
            for port in ["pa", "pb"] {
                if let Ok(text) = std::fs::read_to_string(self.dir.join(format!("{port}.pcap.txt")))
                {
                    eprintln!("--- frames of a's MAC on {port} ---\n{text}");
                }
            }
            if let Some(m) = &self.fdb_log {
                eprintln!(
                    "--- bridge FDB events ---\n{}",
                    m.lock().expect("fdb log").join("\n")
                );
            }
            for d in self.daemons.iter().flatten() {
                eprintln!(
                    "--- log of daemon {} (last 60 lines) ---\n{}",
                    d.node,
                    d.log_tail(60)
                );
            }
        }
        for ns in &self.made_ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::env::var_os("NICPROXY_KEEP_LAB").is_some() {
            eprintln!("kept {} (NICPROXY_KEEP_LAB)", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct Daemon {
    node: &'static str,
    child: Child,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// One `nicproxy status` answer, or why there is none.
fn status(socket: &Path) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"status\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))
}

fn port<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["port"] == name))
        .unwrap_or(&Value::Null)
}

fn counter(st: &Value, port_name: &str, key: &str) -> u64 {
    port(st, port_name)[key].as_u64().unwrap_or(0)
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t0.elapsed());
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A ping from the station to `a`, its replies collected with their receive times.
struct Pinger {
    child: Child,
    replies: Arc<Mutex<Vec<(f64, u64)>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Pinger {
    fn start(ns: &str, target: &str, size: u32, interval: &str) -> Pinger {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-D", "-n", "-i", interval])
            .args(["-s", &size.to_string(), target])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting ping");
        let out = child.stdout.take().expect("piped stdout");
        let replies = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&replies);
        let reader = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // "[1700000000.123456] 64 bytes from 10.88.0.1: icmp_seq=5 ttl=64 time=1.2 ms"
                if !line.contains("bytes from") {
                    continue;
                }
                let ts = line
                    .strip_prefix('[')
                    .and_then(|l| l.split(']').next())
                    .and_then(|t| t.parse::<f64>().ok());
                let seq = line
                    .split("icmp_seq=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse::<u64>().ok());
                if let (Some(ts), Some(seq)) = (ts, seq) {
                    sink.lock().expect("replies").push((ts, seq));
                }
            }
        });
        Pinger {
            child,
            replies,
            reader: Some(reader),
        }
    }

    /// Replies received after `since` (seconds since the epoch).
    fn replies_after(&self, since: f64) -> usize {
        let r = self.replies.lock().expect("replies");
        r.iter().filter(|(t, _)| *t > since).count()
    }

    /// The longest gap between consecutive replies received in `[from, to]`, counting
    /// from `from` (so an outage that starts at `from` is measured).
    fn longest_gap(&self, from: f64, to: f64) -> f64 {
        let r = self.replies.lock().expect("replies");
        let mut last = from;
        let mut gap: f64 = 0.0;
        for (t, _) in r.iter().filter(|(t, _)| *t > from && *t <= to) {
            gap = gap.max(t - last);
            last = *t;
        }
        gap
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Removes the DPDK runtime directory of daemon `d` once it is gone (one that exits cleanly
/// removes it itself; a killed one cannot).
fn forget_runtime_dir(d: &Daemon) {
    let _ = std::fs::remove_dir_all(control::daemon::eal_runtime_dir(d.node, d.child.id()));
}

/// Whether node a's kernel port is virtio-user over vhost-kernel in the guest
/// (`NICPROXY_TEST_KERNEL_BACKEND=virtio-user`; vm.sh passes the environment on).
fn virtio_user_for_a() -> bool {
    std::env::var("NICPROXY_TEST_KERNEL_BACKEND").is_ok_and(|v| v == "virtio-user")
}

/// A log line without its terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then a final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since the epoch of a daemon log line's timestamp ("2026-11-21T18:19:24.928455Z",
/// tracing's UTC format).
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|v| v.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

// ----------------------------------------------------------------------------- scenario

struct Scenario {
    lab: Lab,
    fabric: Fabric,
    key: PathBuf,
    metrics_base: u16,
    restarts: u32,
    /// Whether this kernel has 802.1Q, for the bmc domain's VLAN.
    vlans: bool,
    /// Start of the FDB log's clock.
    t0: f64,
}

impl Scenario {
    fn run(fabric: Fabric) {
        let t_start = Instant::now();
        let pid = std::process::id();
        let tag = format!("{}{pid}", if fabric.is_verbs() { "v" } else { "u" });
        let dir = std::env::temp_dir().join(format!("nicproxy-vfab-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let lab = Lab {
            ns_a: format!("vfa{tag}"),
            ns_b: format!("vfb{tag}"),
            ns_sw: format!("vfs{tag}"),
            ns_st: format!("vft{tag}"),
            dir,
            daemons: [None, None],
            pings: Vec::new(),
            made_ns: Vec::new(),
            fdb_monitor: None,
            fdb_log: None,
            captures: Vec::new(),
        };
        let mut s = Scenario {
            key: lab.dir.join("group.key"),
            lab,
            fabric,
            metrics_base: 20_000 + (pid % 10_000) as u16 * 2,
            restarts: 0,
            vlans: false,
            t0: 0.0,
        };
        s.build_topology();
        s.write_configs();
        println!(
            "RESULT [{}] topology and configs ready in {:.2} s",
            fabric.name(),
            t_start.elapsed().as_secs_f64()
        );
        s.scenario(t_start);
    }

    fn build_topology(&mut self) {
        let l = &mut self.lab;
        let (a, b, sw, st) = (
            l.ns_a.clone(),
            l.ns_b.clone(),
            l.ns_sw.clone(),
            l.ns_st.clone(),
        );
        for ns in [&a, &b, &sw, &st] {
            run(&["ip", "netns", "add", ns], None);
            l.made_ns.push(ns.clone());
        }
        // One `ip -batch` per namespace: every exec costs a lot under the guest's TCG.
        run(
            &["ip", "-batch", "-"],
            Some(&format!(
                "link add name nic netns {a} type veth peer name pa netns {sw}\n\
                 link add name nic netns {b} type veth peer name pb netns {sw}\n\
                 link add name st0 netns {st} type veth peer name ps netns {sw}\n"
            )),
        );
        run(
            &["ip", "-n", &sw, "-batch", "-"],
            Some(
                "link add br0 type bridge\n\
                 link set pa master br0\nlink set pb master br0\nlink set ps master br0\n\
                 link set lo up\nlink set br0 up\nlink set pa up\nlink set pb up\nlink set ps up\n",
            ),
        );
        for ns in [&a, &b] {
            run(
                &["ip", "-n", ns, "-batch", "-"],
                Some("link set lo up\nlink set nic up\n"),
            );
        }
        run(
            &["ip", "-n", &st, "-batch", "-"],
            Some(&format!(
                "link set lo up\naddr add {IP_STATION}/24 dev st0\nlink set st0 up\n"
            )),
        );
        // Kernels without 802.1Q (this project's CI host has none; the lab guest's Debian
        // kernel has it) cannot put the station or a's kernel on VLAN 30: the bmc domain's
        // traffic is checked only where they can.
        let _ = Command::new("modprobe").arg("8021q").status();
        self.vlans = Command::new("ip")
            .args(["-n", &st, "link", "add", "link", "st0", "name"])
            .arg(format!("st0.{BMC_VLAN}"))
            .args(["type", "vlan", "id", &BMC_VLAN.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if self.vlans {
            run(
                &["ip", "-n", &st, "-batch", "-"],
                Some(&format!(
                    "addr add {IP_STATION_BMC}/24 dev st0.{BMC_VLAN}\nlink set st0.{BMC_VLAN} up\n"
                )),
            );
            // A management switch learns per VLAN: a's MAC sits on a's port in the untagged
            // VLAN and on b's port in VLAN 30 at the same time. Without VLAN filtering a
            // Linux bridge has one FDB entry per MAC, which would flap between the two.
            run(
                &[
                    "ip",
                    "-n",
                    &sw,
                    "link",
                    "set",
                    "br0",
                    "type",
                    "bridge",
                    "vlan_filtering",
                    "1",
                ],
                None,
            );
            run(
                &["bridge", "-n", &sw, "-batch", "-"],
                Some(
                    &["pa", "pb", "ps"]
                        .iter()
                        .map(|p| format!("vlan add dev {p} vid {BMC_VLAN}\n"))
                        .collect::<String>(),
                ),
            );
        }
        let l = &mut self.lab;
        let mut mon = Command::new("bridge")
            .args(["-n", &sw, "monitor", "fdb"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting bridge monitor");
        let out = mon.stdout.take().expect("piped stdout");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let t0 = epoch();
        self.t0 = t0;
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock()
                    .expect("fdb log")
                    .push(format!("{:9.3} {line}", epoch() - t0));
            }
        });
        l.fdb_monitor = Some(mon);
        l.fdb_log = Some(log);
        if std::env::var_os("NICPROXY_DUMP_LOGS").is_some() {
            // Every frame a's MAC sends or receives on the switch ports, for the dump.
            for port in ["pa", "pb"] {
                let file = std::fs::File::create(l.dir.join(format!("{port}.pcap.txt")))
                    .expect("capture file");
                let cap = Command::new("ip")
                    .args([
                        "netns", "exec", &sw, "tcpdump", "-l", "-n", "-e", "-tt", "-i", port,
                    ])
                    .args(["ether", "host", MAC_A])
                    .stdout(file)
                    .stderr(Stdio::null())
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("starting tcpdump");
                l.captures.push(cap);
            }
        }
    }

    fn write_configs(&self) {
        std::fs::write(&self.key, "5a".repeat(32)).expect("key");
        let mut perm = std::fs::metadata(&self.key).expect("key").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
        std::fs::set_permissions(&self.key, perm).expect("key mode");
        let (fa, fb) = self.fabric.addrs();
        for (node, peer, mac, ns, own, other, k, bmc) in [
            (
                "a",
                "b",
                MAC_A,
                &self.lab.ns_a,
                fa,
                fb,
                0u16,
                "local = false\nvia = [\"b\"]\n",
            ),
            ("b", "a", MAC_B, &self.lab.ns_b, fb, fa, 1u16, ""),
        ] {
            let text = format!(
                "[node]\nid = \"{node}\"\ngroup = \"lab\"\n\n\
                 [nic]\ndevargs = \"net_af_packet0,iface=nic\"\n\n\
                 [kernel]\nname = \"mgmt0\"\nmacs = [\"{mac}\"]\nbackend = \"{kernel}\"\n\n\
                 [fabric]\nbackend = \"{backend}\"\naddress = \"{own}\"\nkey_file = \"group.key\"\n\n\
                 [[peers]]\nid = \"{peer}\"\naddress = \"{other}\"\n\n\
                 [[domains]]\nid = 0\nname = \"mgmt\"\n\n\
                 [[domains]]\nid = 1\nname = \"bmc\"\nvlan = {BMC_VLAN}\n{bmc}\n\
                 [failover]\nproxies = [\"{peer}\"]\nfailback = \"always\"\nhold_down_ms = 300\n\n\
                 [timers]\nheartbeat_ms = {hb}\nmultiplier = {mult}\nconnect_timeout_ms = 2000\nack_timeout_ms = {ack}\n\n\
                 [dataplane]\npolling = \"adaptive\"\neal_args = [\"--no-huge\", \"-m\", \"256\"]\nnetns = \"{ns}\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics}\"\ncontrol_socket = \"{node}.sock\"\n",
                backend = self.fabric.name(),
                // virtio-user (the production choice where /dev/vhost-net exists) for a in
                // the guest when asked; TAP otherwise.
                kernel = if self.fabric.is_verbs() && node == "a" && virtio_user_for_a() {
                    "virtio-user"
                } else {
                    "tap"
                },
                metrics = self.metrics_base + k,
                hb = self.heartbeat().0,
                mult = self.heartbeat().1,
                // A proxy request is retransmitted every ack timeout with a new id, and an
                // ack of an earlier id does not count: in the guest a proxy's control loop
                // stalled 217 ms once (TCG on a loaded host), longer than the default's four
                // 50 ms tries, and a refused its proxy for the bmc domain.
                ack = if self.fabric.is_verbs() { 300 } else { 50 },
            );
            let path = self.lab.dir.join(format!("{node}.toml"));
            std::fs::write(&path, text).expect("config");
            let out = run(
                &[NICPROXY, "check-config", path.to_str().expect("utf-8")],
                None,
            );
            assert!(out.contains("ok"), "{out}");
        }
    }

    fn start(&mut self, k: usize) {
        let node = ["a", "b"][k];
        let config = self.lab.dir.join(format!("{node}.toml"));
        let log = self.lab.dir.join(format!("{node}-{}.log", self.restarts));
        self.restarts += 1;
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(NICPROXY)
            .args(["run", "--config", config.to_str().expect("utf-8")])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .expect("starting nicproxy");
        self.lab.daemons[k] = Some(Daemon {
            node,
            child,
            socket: self.lab.dir.join(format!("{node}.sock")),
            config,
            log,
        });
    }

    /// Notes a step of the scenario in the FDB event log, to read the two together.
    fn mark(&self, what: &str) {
        if let Some(log) = &self.lab.fdb_log {
            log.lock()
                .expect("fdb log")
                .push(format!("{:9.3} === {what}", epoch() - self.t0));
        }
    }

    fn daemon(&self, k: usize) -> &Daemon {
        self.lab.daemons[k].as_ref().expect("daemon running")
    }

    fn status(&mut self, k: usize) -> Value {
        let d = self.lab.daemons[k].as_mut().expect("daemon running");
        if let Ok(Some(exit)) = d.child.try_wait() {
            panic!(
                "daemon {} exited ({exit}); config {}; log:\n{}",
                d.node,
                d.config.display(),
                d.log_tail(40)
            );
        }
        status(&d.socket).unwrap_or(Value::Null)
    }

    fn wait_status(
        &mut self,
        k: usize,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let t0 = Instant::now();
        loop {
            let st = self.status(k);
            if !st.is_null() && f(&st) {
                return (st, t0.elapsed());
            }
            assert!(
                t0.elapsed() < timeout,
                "timed out after {timeout:?} waiting for daemon {}: {what}; last status: {st:#}",
                self.daemon(k).node
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The bridge port `mac` is learnt on, if any.
    fn fdb_port(&self, mac: &str) -> Option<String> {
        let out = run(
            &["bridge", "-n", &self.lab.ns_sw, "fdb", "show", "br", "br0"],
            None,
        );
        // The untagged VLAN's entry (VLAN 1 with filtering on, no VLAN without).
        let other_vlan = format!("vlan {BMC_VLAN}");
        out.lines()
            .filter(|l| l.starts_with(mac) && !l.contains("permanent") && !l.contains(&other_vlan))
            .find_map(|l| {
                let mut w = l.split_whitespace();
                w.find(|x| *x == "dev")
                    .and_then(|_| w.next())
                    .map(str::to_owned)
            })
    }

    /// Where do a's frames go when the FDB does not follow a failback? Prints a's port
    /// counters now and at the failback, and the kernel's view of the wire.
    fn diagnose_failback(&mut self, at_nic: &Value) {
        let now = self.status(0);
        let b = self.status(1);
        eprintln!(
            "DIAG failback: FDB still not on pa 2 s after the restore\n\
             a ports at failback: {}\na ports now: {}\na drops now: {}\nb drops now: {}\nb clients: {}",
            at_nic["ports"], now["ports"], now["drops"], b["drops"], b["clients"]
        );
        let ns_a = self.lab.ns_a.clone();
        let ns_sw = self.lab.ns_sw.clone();
        for (ns, dev) in [
            (&ns_a, "nic"),
            (&ns_a, "mgmt0"),
            (&ns_sw, "pa"),
            (&ns_sw, "pb"),
        ] {
            let out = run(
                &["ip", "-n", ns, "-s", "-o", "link", "show", "dev", dev],
                None,
            );
            eprintln!("DIAG {dev}: {}", out.trim());
        }
    }

    fn kernel_carrier(&self, ns: &str) -> bool {
        let out = run(
            &["ip", "-n", ns, "-o", "link", "show", "dev", "mgmt0"],
            None,
        );
        !out.contains("NO-CARRIER")
    }

    /// a reaches the bmc domain through b while its own NIC is up: the station pings a's
    /// address there, the frames cross b's NIC and the fabric, and b carries a's MAC in that
    /// domain only.
    fn check_remote_domain(&mut self, t_start: Instant) {
        let fab = self.fabric.name();
        let long = Duration::from_secs(60);
        let (st_a, _) = self.wait_status(0, "bmc domain on proxy:b", long, |st| {
            st["remote_domains"][0]["uplink"] == "proxy:b"
        });
        assert_eq!(
            st_a["uplink"], "nic",
            "the local domains stay on the NIC\n{st_a:#}"
        );
        assert_eq!(st_a["remote_domains"][0]["name"], "bmc", "{st_a:#}");
        let (st_b, _) = self.wait_status(1, "b carries a in the bmc domain", long, |st| {
            st["clients"][0]["peer"] == "a"
        });
        assert_eq!(
            st_b["clients"][0]["domains"],
            serde_json::json!([1]),
            "{st_b:#}"
        );
        if !self.vlans {
            assert!(
                !self.fabric.is_verbs(),
                "the lab guest's kernel must have 802.1Q for the bmc domain's check"
            );
            println!(
                "RESULT [{fab}] domain reached only through b: set up (b carries a's MAC in domain 1 only); \
                 no 802.1Q in this kernel, so its traffic is checked in the guest run only"
            );
            return;
        }
        let st = self.lab.ns_st.clone();
        let since = epoch() - 0.001;
        self.lab
            .pings
            .push(Pinger::start(&st, IP_A_BMC, 56, "0.05"));
        let (_, took) = wait_for("ping replies from a in the bmc domain", long, || {
            (self.lab.pings[2].replies_after(since) >= 3).then_some(())
        });
        let st_a = self.status(0);
        assert!(
            counter(&st_a, "fabric", "rx_packets") >= 3
                && counter(&st_a, "fabric", "tx_packets") >= 3,
            "the bmc domain's frames did not cross the fabric\n{st_a:#}"
        );
        assert_eq!(
            self.fdb_port(MAC_A).as_deref(),
            Some("pa"),
            "a's own NIC keeps its MAC"
        );
        println!(
            "RESULT [{fab}] domain reached only through b: 3 ping replies from a's {IP_A_BMC} (VLAN {BMC_VLAN}) \
             {:.2} s after pinging, {:.1} s after start, while a's own traffic stays on its NIC",
            took.as_secs_f64(),
            t_start.elapsed().as_secs_f64()
        );
    }

    /// In the guest, a's kernel port is virtio-user over vhost-kernel: the daemon says so,
    /// and the pings answered so far crossed it both ways.
    fn check_virtio_user_kernel_port(&mut self) {
        let log = std::fs::read_to_string(&self.daemon(0).log).unwrap_or_default();
        let up = log
            .lines()
            .find(|l| l.contains("dataplane up"))
            .unwrap_or_default();
        assert!(
            up.contains("VirtioUser"),
            "a's kernel port is not virtio-user: {up:?}\n{log}"
        );
        let st_a = self.status(0);
        let (rx, tx) = (
            counter(&st_a, "kernel", "rx_packets"),
            counter(&st_a, "kernel", "tx_packets"),
        );
        assert!(
            rx >= 3 && tx >= 3,
            "a's virtio-user kernel port: rx {rx}, tx {tx} after the first pings\n{st_a:#}"
        );
        println!(
            "RESULT [verbs] a's kernel port is virtio-user over vhost-kernel: {rx} frames from a's kernel, {tx} to it, after the first pings"
        );
    }

    /// (heartbeat interval in ms, multiplier) of both daemons. The guest runs under TCG
    /// on a shared machine, where a thread can stall for longer than 100 ms: sessions
    /// would flap. A 300 ms window there, 100 ms on the host.
    fn heartbeat(&self) -> (u64, u64) {
        if self.fabric.is_verbs() {
            (30, 10)
        } else {
            (20, 5)
        }
    }

    /// The first line of a's log, logged at or after `since` (seconds since the epoch),
    /// that reports the session with b down, by its heartbeats or by its QP (a session
    /// counts as up only while both are): (when, which).
    fn first_down_report(&self, since: f64) -> Option<(f64, &'static str)> {
        let log = std::fs::read_to_string(&self.daemon(0).log).ok()?;
        log.lines().find_map(|l| {
            let l = strip_ansi(l);
            let what = if l.contains("session down") && l.contains("peer=b") {
                "no heartbeat"
            } else if l.contains("QP down") && l.contains("peer=b") {
                "QP down"
            } else {
                return None;
            };
            let at = log_time(&l)?;
            (at >= since).then_some((at, what))
        })
    }

    /// `GET /metrics` of daemon `k` (it listens in the initial namespace); the body.
    fn scrape(&self, k: usize) -> String {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.metrics_base + k as u16));
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connecting to {}'s metrics at {addr}: {e}", ["a", "b"][k]));
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        // One write: the server reads the request line only and closes, and bytes of the
        // request still unread then would reset the connection under the answer.
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes())
            .expect("sending the scrape request");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut c, &mut text).expect("reading the scrape");
        assert!(text.starts_with("HTTP/1.1 200"), "scrape of {addr}: {text}");
        text.split_once("\r\n\r\n")
            .map_or(text.clone(), |(_, b)| b.to_owned())
    }

    /// `nicproxy_verbs_work_requests_total` of daemon `k` by kind (worker 0), from
    /// `/metrics`; every kind is exported from the first scrape on.
    fn verbs_metrics(&self, k: usize) -> std::collections::BTreeMap<String, u64> {
        let body = self.scrape(k);
        let series: std::collections::BTreeMap<String, u64> = body
            .lines()
            .filter(|l| l.starts_with("nicproxy_verbs_work_requests_total{"))
            .filter(|l| l.contains("worker=\"0\""))
            .filter_map(|l| {
                let kind = l.split("kind=\"").nth(1)?.split('"').next()?;
                let v = l.rsplit(' ').next()?.parse::<f64>().ok()?;
                Some((kind.to_owned(), v as u64))
            })
            .collect();
        for kind in [
            "inline_send",
            "gather_send",
            "signalled_send",
            "early_completion",
            "stale_completion",
            "error_completion",
            "session_added",
            "session_removed",
        ] {
            assert!(
                series.contains_key(kind),
                "no nicproxy_verbs_work_requests_total{{worker=\"0\",kind=\"{kind}\"}} in {}'s /metrics:\n{body}",
                ["a", "b"][k]
            );
        }
        series
    }

    /// The failover's traffic shows in `/metrics`: both daemons sent over their QP, small
    /// frames inline and big ones gathered from the mbuf, with some sends signalled.
    fn check_verbs_metrics_moved(&self, before: &[std::collections::BTreeMap<String, u64>; 2]) {
        let mut line = Vec::new();
        for (k, node) in ["a", "b"].into_iter().enumerate() {
            let now = self.verbs_metrics(k);
            let moved = |kind: &str| now[kind].saturating_sub(before[k][kind]);
            for kind in ["inline_send", "gather_send", "signalled_send"] {
                assert!(
                    moved(kind) > 0,
                    "{node}'s nicproxy_verbs_work_requests_total{{kind=\"{kind}\"}} did not move with the traffic over the fabric: {:?} -> {now:?}",
                    before[k]
                );
            }
            assert!(now["session_added"] >= 1, "{node}: {now:?}");
            line.push(format!(
                "{node} +{} inline, +{} gathered, +{} signalled, errors {}",
                moved("inline_send"),
                moved("gather_send"),
                moved("signalled_send"),
                now["error_completion"]
            ));
        }
        println!(
            "RESULT [verbs] /metrics nicproxy_verbs_work_requests_total since the cut: {}",
            line.join("; ")
        );
    }

    fn qp_up(st: &Value) -> bool {
        st["fabric_verbs"]["sessions"][0]["qp"] == "up"
    }

    fn scenario(mut self, t_start: Instant) {
        let fab = self.fabric.name();
        let long = Duration::from_secs(60);

        // --- both daemons up, a on its NIC, its kernel interface addressed
        self.start(0);
        self.start(1);
        // EAL's start-up alone took over 60 s in the guest while the host was loaded (no
        // log line at all by then, from either daemon): the first answer gets longer.
        let startup = Duration::from_secs(240);
        for k in 0..2 {
            self.wait_status(
                k,
                "session (and QP) up, uplink nic, carrier on",
                startup,
                |st| st["uplink"] == "nic" && st["carrier"] == true,
            );
        }
        let verbs = self.fabric.is_verbs();
        let (st_a, _) = self.wait_status(0, "session with b up (and its QP)", long, |st| {
            st["sessions"][0]["state"] == "up" && (!verbs || Self::qp_up(st))
        });
        if self.fabric.is_verbs() {
            assert!(Self::qp_up(&st_a), "{st_a:#}");
            assert_eq!(st_a["fabric_verbs"]["sessions"][0]["role"], "connect");
            let st_b = self.status(1);
            assert_eq!(st_b["fabric_verbs"]["sessions"][0]["role"], "accept");
            assert!(Self::qp_up(&st_b), "{st_b:#}");
        }
        println!(
            "RESULT [{fab}] daemons up, sessions{} up, both on their NICs: {:.2} s after start",
            if self.fabric.is_verbs() {
                " and QPs"
            } else {
                ""
            },
            t_start.elapsed().as_secs_f64()
        );
        for (ns, ip) in [(self.lab.ns_a.clone(), IP_A), (self.lab.ns_b.clone(), IP_B)] {
            run(
                &["ip", "-n", &ns, "-batch", "-"],
                Some(&format!("addr add {ip}/24 dev mgmt0\nlink set mgmt0 up\n")),
            );
        }
        if self.vlans {
            run(
                &["ip", "-n", &self.lab.ns_a.clone(), "-batch", "-"],
                Some(&format!(
                    "link add link mgmt0 name mgmt0.{BMC_VLAN} type vlan id {BMC_VLAN}\n\
                     addr add {IP_A_BMC}/24 dev mgmt0.{BMC_VLAN}\nlink set mgmt0.{BMC_VLAN} up\n"
                )),
            );
        }
        let st = self.lab.ns_st.clone();
        self.lab.pings.push(Pinger::start(&st, IP_A, 56, "0.05"));
        // Big frames: more than any inline limit, so they cross the fabric zero copy.
        self.lab.pings.push(Pinger::start(&st, IP_A, 1200, "0.2"));
        let now = epoch() - 0.001;
        wait_for("ping replies from a through its NIC", long, || {
            (self.lab.pings[0].replies_after(now) >= 3 && self.lab.pings[1].replies_after(now) >= 1)
                .then_some(())
        });
        wait_for("a's MAC on a's switch port", long, || {
            (self.fdb_port(MAC_A).as_deref() == Some("pa")).then_some(())
        });
        if verbs && virtio_user_for_a() {
            self.check_virtio_user_kernel_port();
        }
        self.check_remote_domain(t_start);

        // --- cut a's switch port: failover to b
        let (baseline, _) = self.wait_status(0, "baseline", long, |_| true);
        // The verbs fabric's work requests, as Prometheus sees them, before the failover
        // puts a's traffic on the QP.
        let verbs_before = verbs.then(|| [self.verbs_metrics(0), self.verbs_metrics(1)]);
        let fab_tx0 = counter(&baseline, "fabric", "tx_packets");
        let fab_rx0 = counter(&baseline, "fabric", "rx_packets");
        let pool_up = baseline["mempool_in_use"].as_u64().unwrap_or(0);
        let cut_at = epoch();
        let t_cut = Instant::now();
        self.mark("cut");
        run(
            &[
                "ip",
                "-n",
                &self.lab.ns_sw.clone(),
                "link",
                "set",
                "pa",
                "down",
            ],
            None,
        );
        self.wait_status(0, "uplink proxy:b after the cut", long, |st| {
            st["uplink"] == "proxy:b"
        });
        let to_proxy = t_cut.elapsed();
        wait_for("a's MAC on b's switch port", long, || {
            (self.fdb_port(MAC_A).as_deref() == Some("pb")).then_some(())
        });
        let to_fdb = t_cut.elapsed();
        wait_for("ping replies through b", long, || {
            (self.lab.pings[0].replies_after(cut_at) >= 1).then_some(())
        });
        let ping_back = t_cut.elapsed();
        if self.vlans {
            wait_for("replies in the bmc domain after the cut", long, || {
                (self.lab.pings[2].replies_after(cut_at) >= 3).then_some(())
            });
        }
        wait_for("more ping replies through b, big ones too", long, || {
            (self.lab.pings[0].replies_after(cut_at) >= 5
                && self.lab.pings[1].replies_after(cut_at) >= 2)
                .then_some(())
        });
        thread::sleep(Duration::from_secs(1));
        let after = self.status(0);
        let st_b = self.status(1);
        let tx = counter(&after, "fabric", "tx_packets") - fab_tx0;
        let rx = counter(&after, "fabric", "rx_packets") - fab_rx0;
        let tx_bytes =
            counter(&after, "fabric", "tx_bytes") - counter(&baseline, "fabric", "tx_bytes");
        assert!(
            tx >= 10 && rx >= 10,
            "a's fabric carried too little after the failover: tx {tx}, rx {rx}\n{after:#}"
        );
        assert!(
            tx_bytes >= 1200,
            "no big frame went over the fabric: {tx_bytes} bytes in {tx} frames"
        );
        assert!(counter(&st_b, "fabric", "rx_packets") >= 10, "{st_b:#}");
        // A status is a snapshot: on a starved guest the session may be re-establishing at
        // that very moment, so wait for b to carry a rather than sample it once.
        self.wait_status(1, "b carries a", long, |st| st["clients"][0]["peer"] == "a");
        if self.fabric.is_verbs() {
            assert!(Self::qp_up(&after), "{after:#}");
        }
        let gap = self.lab.pings[0].longest_gap(cut_at, epoch());
        println!(
            "RESULT [{fab}] failover (seen by polling every 20 ms + a status/bridge call): uplink proxy:b \
             {:.0} ms after the cut, FDB on b's port by {:.0} ms, first ping reply through b by {:.0} ms; \
             longest gap between ping replies {:.0} ms (20 pings/s)",
            to_proxy.as_secs_f64() * 1e3,
            to_fdb.as_secs_f64() * 1e3,
            ping_back.as_secs_f64() * 1e3,
            gap * 1e3
        );
        println!(
            "RESULT [{fab}] over the fabric since the cut: a sent {tx} frames ({tx_bytes} B incl. headers), \
             received {rx}; b received {}",
            counter(&st_b, "fabric", "rx_packets")
        );
        let log = std::fs::read_to_string(&self.daemon(0).log).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .rev()
            .find(|l| l.contains("failover complete in"))
        {
            let at = line.find("failover complete").unwrap_or(0);
            println!("RESULT [{fab}] a's log: {}", &line[at..]);
        }
        // 200 pings of 1000 B offered at 100/s, each waited for up to 10 s: a rate and a
        // loss figure that do not depend on how late the last replies are.
        let t_burst = Instant::now();
        let burst = run(
            &[
                "ip", "netns", "exec", &st, "ping", "-q", "-c", "200", "-i", "0.01", "-W", "10",
                "-s", "1000", IP_A,
            ],
            None,
        );
        let t_burst = t_burst.elapsed().as_secs_f64();
        for line in burst
            .lines()
            .filter(|l| l.contains("transmitted") || l.contains("rtt"))
        {
            println!(
                "RESULT [{fab}] 200 pings of 1000 B at 100/s through b and the fabric ({t_burst:.1} s): {line}"
            );
        }
        if let Some(before) = &verbs_before {
            self.check_verbs_metrics_moved(before);
        }
        let (da, db) = (self.status(0), self.status(1));
        println!(
            "RESULT [{fab}] drops so far: a {} / b {}; fabric a tx {} rx {}, b tx {} rx {}",
            da["drops"],
            db["drops"],
            counter(&da, "fabric", "tx_packets"),
            counter(&da, "fabric", "rx_packets"),
            counter(&db, "fabric", "tx_packets"),
            counter(&db, "fabric", "rx_packets")
        );

        // --- restore: failback to the NIC
        let back_at = epoch();
        self.mark("restore");
        let t_restore = Instant::now();
        run(
            &[
                "ip",
                "-n",
                &self.lab.ns_sw.clone(),
                "link",
                "set",
                "pa",
                "up",
            ],
            None,
        );
        let (_, to_nic) = self.wait_status(0, "uplink nic after the restore", long, |st| {
            st["uplink"] == "nic"
        });
        self.mark("a reports uplink nic");
        let at_nic = self.status(0);
        let mut diagnosed = false;
        let (_, to_fdb) = wait_for("a's MAC back on a's switch port", long, || {
            let done = self.fdb_port(MAC_A).as_deref() == Some("pa");
            if !done && !diagnosed && t_restore.elapsed() > Duration::from_secs(2) {
                diagnosed = true;
                self.diagnose_failback(&at_nic);
            }
            done.then_some(())
        });
        wait_for("ping replies after the failback", long, || {
            (self.lab.pings[0].replies_after(back_at + to_nic.as_secs_f64()) >= 3).then_some(())
        });
        // b now carries a only in the bmc domain: the request shrank with the failback.
        self.wait_status(1, "b carries a in domain 1 only", long, |st| {
            st["clients"][0]["domains"] == serde_json::json!([1])
        });
        let after_failback = epoch();
        if self.vlans {
            wait_for("replies in the bmc domain after the failback", long, || {
                (self.lab.pings[2].replies_after(after_failback) >= 3).then_some(())
            });
        }
        println!(
            "RESULT [{fab}] failback: uplink nic {:.0} ms after the restore (hold-down 300 ms), FDB back after {:.0} ms more",
            to_nic.as_secs_f64() * 1e3,
            to_fdb.as_secs_f64() * 1e3
        );

        // --- cut again, then kill b: no path left, a's carrier goes
        self.mark("second cut");
        run(
            &[
                "ip",
                "-n",
                &self.lab.ns_sw.clone(),
                "link",
                "set",
                "pa",
                "down",
            ],
            None,
        );
        self.wait_status(0, "uplink proxy:b after the second cut", long, |st| {
            st["uplink"] == "proxy:b"
        });
        self.mark("kill b");
        let t_kill = Instant::now();
        let killed_at = epoch();
        {
            let b = self.lab.daemons[1].as_mut().expect("b");
            b.child.kill().expect("SIGKILL b");
            let _ = b.child.wait();
            forget_runtime_dir(b);
        }
        let (st_down, to_off) = self.wait_status(0, "carrier off with b gone", long, |st| {
            st["carrier"] == false && st["uplink"] == "none"
        });
        let ns_a = self.lab.ns_a.clone();
        wait_for("mgmt0 NO-CARRIER in a's namespace", long, || {
            (!self.kernel_carrier(&ns_a)).then_some(())
        });
        let mut down_detail = String::new();
        if self.fabric.is_verbs() {
            let (st_down, _) = self.wait_status(0, "QP down", long, |st| !Self::qp_up(st));
            // The QP's posted receives go back to the pool. Status says "down" once control
            // has taken the QP out of service; the worker destroys it and frees its mbufs a
            // moment later (four runs in seventy read the pool in between), so wait for it.
            let in_use = |st: &Value| st["mempool_in_use"].as_u64().unwrap_or(u64::MAX);
            let (st_freed, waited) = self.wait_status(
                0,
                &format!(
                    "the QP's receive ring back in the pool (mbufs in use {pool_up} with the QP, {} when it went down)",
                    in_use(&st_down)
                ),
                Duration::from_secs(20),
                |st| pool_up.saturating_sub(in_use(st)) >= 200,
            );
            down_detail = format!(
                "; QP down ({}); mbufs in use {pool_up} -> {} ({:.0} ms after status said down)",
                st_down["fabric_verbs"]["sessions"][0]["last_down"],
                in_use(&st_freed),
                waited.as_secs_f64() * 1e3
            );
        }
        let _ = st_down;
        println!(
            "RESULT [{fab}] b killed while a depended on it: a's carrier off after {:.0} ms{down_detail}",
            to_off.as_secs_f64() * 1e3
        );
        // a must report the session down within its heartbeat budget (interval ×
        // multiplier), plus one interval of slack. Timed by the daemon's own log (the same
        // clock as `killed_at`): polling status from the test would add the test's own
        // stalls on a starved guest (765 ms measured that way once, for ~300 ms logged).
        let (hb, mult) = self.heartbeat();
        let budget = Duration::from_millis(hb * mult + hb);
        let (report, _) = wait_for("a's log to report the session with b down", long, || {
            self.first_down_report(killed_at)
        });
        let detected = Duration::from_secs_f64((report.0 - killed_at).max(0.0));
        println!(
            "RESULT [{fab}] b SIGKILLed: a reported the session down {:.0} ms after the kill ({}; heartbeat budget {hb} ms × {mult} + {hb} ms slack = {} ms)",
            detected.as_secs_f64() * 1e3,
            report.1,
            budget.as_millis()
        );
        // On the host the UDP fabric has only the heartbeats, and its 120 ms budget is
        // within the stalls of a loaded CI machine: asserted where the budget is the
        // guest's, which was chosen for them.
        if verbs {
            assert!(
                detected <= budget,
                "a reported b's session down {detected:?} after the kill ({}), beyond its heartbeat budget {budget:?}",
                report.1
            );
        }

        // --- restart b: the path and the carrier come back
        self.mark("restart b");
        let t_restart = Instant::now();
        self.start(1);
        // The restarted daemon's start-up is as slow as the first (see `startup`).
        let (st_back, to_on) =
            self.wait_status(0, "carrier on through the restarted b", startup, |st| {
                st["carrier"] == true && st["uplink"] == "proxy:b"
            });
        wait_for("mgmt0 has carrier again", long, || {
            self.kernel_carrier(&ns_a).then_some(())
        });
        let resumed = epoch();
        wait_for("ping replies through the restarted b", long, || {
            (self.lab.pings[0].replies_after(resumed) >= 3).then_some(())
        });
        let mut up_detail = String::new();
        if self.fabric.is_verbs() {
            assert!(Self::qp_up(&st_back), "{st_back:#}");
            assert!(
                st_back["fabric_verbs"]["sessions"][0]["established"].as_u64() >= Some(2),
                "{st_back:#}"
            );
            let pool_again = st_back["mempool_in_use"].as_u64().unwrap_or(0);
            assert!(
                pool_again.abs_diff(pool_up) <= 64,
                "mbufs in use {pool_again} with the new QP vs {pool_up} with the first"
            );
            up_detail = format!(
                "; new QP {}",
                st_back["fabric_verbs"]["sessions"][0]["qp_num"]
            );
            // The lost QP and the new one, in /metrics (published with the next counters).
            let before = verbs_before
                .as_ref()
                .map(|b| b[0].clone())
                .unwrap_or_default();
            let (now, _) = wait_for(
                "a's /metrics to count the QP removed and re-added",
                long,
                || {
                    let now = self.verbs_metrics(0);
                    (now["session_removed"] > before["session_removed"]
                        && now["session_added"] > before["session_added"])
                        .then_some(now)
                },
            );
            up_detail += &format!(
                "; /metrics: sessions added {} -> {}, removed {} -> {}",
                before["session_added"],
                now["session_added"],
                before["session_removed"],
                now["session_removed"]
            );
        }
        println!(
            "RESULT [{fab}] b restarted {:.2} s after the kill: a's carrier on again {:.2} s after the restart{up_detail}",
            t_kill.elapsed().as_secs_f64() - t_restart.elapsed().as_secs_f64(),
            to_on.as_secs_f64()
        );

        // --- restore and stop cleanly (SIGTERM), as a service manager would
        run(
            &[
                "ip",
                "-n",
                &self.lab.ns_sw.clone(),
                "link",
                "set",
                "pa",
                "up",
            ],
            None,
        );
        self.wait_status(0, "uplink nic at the end", long, |st| st["uplink"] == "nic");
        self.lab.pings.clear();
        for k in 0..2 {
            let d = self.lab.daemons[k].as_mut().expect("daemon");
            run(&["kill", "-TERM", &d.child.id().to_string()], None);
            let t0 = Instant::now();
            let code = loop {
                if let Some(s) = d.child.try_wait().expect("wait") {
                    break s;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "daemon {} did not stop on SIGTERM",
                    d.node
                );
                thread::sleep(Duration::from_millis(20));
            };
            assert!(
                code.success(),
                "daemon {} exited with {code}:\n{}",
                d.node,
                d.log_tail(30)
            );
            let log = std::fs::read_to_string(&d.log).unwrap_or_default();
            assert!(
                !log.contains("leak") && !log.contains("panicked"),
                "daemon {}:\n{}",
                d.node,
                d.log_tail(30)
            );
        }
        println!(
            "RESULT [{fab}] scenario passed in {:.1} s",
            t_start.elapsed().as_secs_f64()
        );
    }
}
