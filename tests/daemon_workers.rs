//! The real `nicproxy` daemon started with two workers (`dataplane.cores = [0, 1]`,
//! `nic.queues = 2`): its NIC is an af_packet vdev on a veth (two queue pairs, spread by
//! the kernel's fanout hash), its kernel port a two-queue TAP.
//!
//! A station namespace on the other end of the veth echoes 16 UDP flows (distinct source
//! ports) off the node's kernel interface, every datagram checked. Meanwhile `nicproxy
//! capture` records the node's MAC: the pcapng file must hold frames steered by each worker
//! (the frame comments name the worker) and read back in tcpdump. Then `nicproxy status`
//! and `GET /metrics` must show both workers, each having received NIC frames; and SIGTERM
//! must stop the daemon with exit status 0, its kernel interface gone (the ports closed).
//!
//! No peers: the node runs on its NIC alone, which is all this test is about. Needs root.
//!
//! `NICPROXY_TEST_KERNEL_BACKEND=virtio-user` runs it with virtio-user over vhost-kernel as
//! the kernel port (two queues), where /dev/vhost-net exists: not on the CI host, but in
//! the lab guest (`tests/lab/vm.sh --no-rdma -- sh -c 'modprobe vhost_net; <this test
//! binary>'`), where it passed.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pcapng::{read_pcapng, Block};
use common::{Netns, Veth};
use dataplane::sys::netns::run_in;
use serde_json::Value;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
const STATION_IP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);
const NODE_MAC: &str = "02:4e:57:00:00:01";
const ECHO_PORT: u16 = 7007;
const METRICS: &str = "127.0.0.1:9469";
const FLOWS: u16 = 16;
const PER_FLOW: u16 = 20;
/// Frames the capture takes: fewer than the flows make (each datagram crosses a worker
/// twice: 640 frames), so it ends by count; more than 14 flows' worth, so it holds frames
/// of both workers however the flows were scheduled (unless the hash put 15 of the 16
/// flows on one queue).
const CAPTURED: usize = 600;
/// Generous: the machine's 2 CPUs are shared with everything else.
const SETTLE: Duration = Duration::from_secs(60);

/// The daemon's process, killed (if still running) and its files removed on drop.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("w.sock")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_dir_all(control::daemon::eal_runtime_dir("w", c.id()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the node's config and key into a fresh directory and starts the daemon in `ns`.
fn start_daemon(ns: &Netns, nic: &str, tap: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("nicproxy-workers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    let key = dir.join("group.key");
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&key)
        .and_then(|mut f| f.write_all("5a".repeat(32).as_bytes()))
        .expect("writing the key");
    let config = dir.join("w.toml");
    let text = format!(
        "[node]\nid = \"w\"\ngroup = \"g\"\n\n\
         [nic]\ndevargs = \"net_af_packet0,iface={nic}\"\nqueues = 2\n\n\
         [kernel]\nname = \"{tap}\"\nmacs = [\"{NODE_MAC}\"]\nbackend = \"{kb}\"\n\n\
         [fabric]\nbackend = \"udp\"\naddress = \"127.0.0.1:4792\"\nkey_file = \"{key}\"\n\n\
         [dataplane]\ncores = [0, 1]\npolling = \"adaptive\"\ncontrol_rt_priority = 0\n\
         eal_args = [\"--no-huge\", \"-m\", \"256\"]\n\n\
         [metrics]\nlisten = \"{METRICS}\"\ncontrol_socket = \"{sock}\"\n",
        key = key.display(),
        kb = std::env::var("NICPROXY_TEST_KERNEL_BACKEND").unwrap_or_else(|_| "tap".into()),
        sock = dir.join("w.sock").display(),
    );
    std::fs::write(&config, text).expect("writing the config");
    let log = dir.join("w.log");
    let log_file = std::fs::File::create(&log).expect("creating the log");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_nicproxy")])
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("starting nicproxy run");
    Daemon {
        child: Some(child),
        dir,
        log,
    }
}

/// `nicproxy status --json` of the daemon, or `None` while it does not answer yet.
fn status(d: &Daemon) -> Option<Value> {
    let o = Command::new(env!("CARGO_BIN_EXE_nicproxy"))
        .args(["status", "--json", "--socket"])
        .arg(d.socket())
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

/// Waits until the daemon's status satisfies `f`; panics with its log at `SETTLE`.
fn wait_status(d: &mut Daemon, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(s) = status(d) {
            if f(&s) {
                return s;
            }
        }
        if let Some(Ok(Some(st))) = d.child.as_mut().map(Child::try_wait) {
            panic!("the daemon exited ({st}) waiting for {what}:\n{}", d.log());
        }
        assert!(
            t0.elapsed() < SETTLE,
            "waiting for {what}: {:?}\n{}",
            status(d),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until interface `ifname` is gone from `ns` or `timeout` passed; returns whether
/// it is gone.
fn wait_gone(ns: &Netns, ifname: &str, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        let o = Command::new("ip")
            .args(["-n", ns.name(), "link", "show", ifname])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if o.is_ok_and(|s| !s.success()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Echoes every datagram back to its sender until `stop` is set.
fn serve_echo(sock: &UdpSocket, stop: &std::sync::atomic::AtomicBool) {
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("echo timeout");
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// One flow: `PER_FLOW` datagrams, each sent until its own echo returns (stop and wait,
/// up to 10 tries of 2 s: loss on a loaded machine is retried, never a failure by itself).
/// Returns the tries that needed a retransmission, or what failed.
fn run_flow(sock: &UdpSocket, flow: u16) -> Result<u32, String> {
    let to = SocketAddr::from((NODE_IP, ECHO_PORT));
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("flow timeout");
    let mut retries = 0;
    let mut buf = [0u8; 256];
    for seq in 0..PER_FLOW {
        let msg = format!("flow {flow} seq {seq} {}", "x".repeat(usize::from(seq) * 5));
        let mut ok = false;
        for attempt in 0..10 {
            if attempt > 0 {
                retries += 1;
            }
            sock.send_to(msg.as_bytes(), to).expect("sending");
            // Skip echoes of earlier tries of this flow.
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if from == to && &buf[..n] == msg.as_bytes() {
                    ok = true;
                    break;
                }
            }
            if ok {
                break;
            }
        }
        if !ok {
            return Err(format!("flow {flow}: no echo for seq {seq} after 10 tries"));
        }
    }
    Ok(retries)
}

/// A running `nicproxy capture` of the node's MAC into `file`, its stderr in `log`.
struct Capture {
    child: Child,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    fn start(d: &Daemon) -> Capture {
        let file = d.dir.join("mac.pcapng");
        let log = d.dir.join("capture.log");
        let child = Command::new(env!("CARGO_BIN_EXE_nicproxy"))
            .args([
                "capture",
                "--mac",
                NODE_MAC,
                "--count",
                &CAPTURED.to_string(),
            ])
            .arg("-w")
            .arg(&file)
            .arg("--socket")
            .arg(d.socket())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("capture log"))
            .spawn()
            .expect("starting nicproxy capture");
        let mut c = Capture { child, file, log };
        let t0 = Instant::now();
        // The command says ", writing FILE" once the daemon has started the capture.
        while !c.stderr().contains(", writing ") {
            if let Ok(Some(st)) = c.child.try_wait() {
                panic!(
                    "nicproxy capture ended ({st}) before starting: {}",
                    c.stderr()
                );
            }
            assert!(
                t0.elapsed() < SETTLE,
                "the capture did not start: {}",
                c.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the command has ended (by count, or otherwise).
    fn ended(&mut self) -> bool {
        std::thread::sleep(Duration::from_millis(200));
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Waits for the command to end by count; returns the frames' comments.
    fn finish(mut self) -> Vec<String> {
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().expect("waiting for nicproxy capture") {
                break st;
            }
            if t0.elapsed() > SETTLE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("nicproxy capture did not end: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = self.stderr();
        assert!(st.success(), "nicproxy capture failed ({st}): {err}");
        assert!(err.contains("count reached"), "{err}");
        let o = Command::new("tcpdump")
            .arg("-r")
            .arg(&self.file)
            .arg("-nn")
            .output()
            .expect("running tcpdump");
        let lines = String::from_utf8_lossy(&o.stdout).lines().count();
        assert!(
            o.status.success() && lines == CAPTURED,
            "tcpdump -r read {lines} frames: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let bytes = std::fs::read(&self.file).expect("the capture file");
        read_pcapng(&bytes)
            .into_iter()
            .filter_map(|b| match b {
                Block::Packet { comment, .. } => Some(comment),
                Block::Interface { .. } => None,
            })
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /metrics` from inside `ns`.
fn scrape(ns: &Netns) -> String {
    run_in(ns.name(), || {
        let mut s = TcpStream::connect(METRICS).expect("connecting to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("reading /metrics");
        answer
    })
    .expect("entering the node's namespace")
}

/// The value of `name{...}` whose labels include every one of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn nic_rx(worker: &Value) -> u64 {
    worker["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"] == "nic")
        .and_then(|p| p["rx_packets"].as_u64())
        .unwrap_or(0)
}

#[test]
fn daemon_with_two_workers_spreads_flows_and_stops_clean() {
    let t0 = Instant::now();
    let node = Netns::new("npdw");
    let station = Netns::new("npds");
    for ns in [&node, &station] {
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    }
    let nic = common::unique_name("npdn");
    let host = common::unique_name("npdh");
    let tap = common::unique_name("npdk");
    let _veth = Veth::new_in(&node, &nic, &host);
    node.ip(&["link", "set", &host, "netns", station.name()]);
    // veth leaves UDP checksums to the receiver, and af_packet reads the frames raw, as a
    // real NIC would receive them: they must carry real checksums, or the node's kernel
    // drops them (UdpInCsumErrors).
    station.exec("ethtool", &["-K", &host, "tx", "off"]);
    station.ip(&["addr", "add", &format!("{STATION_IP}/24"), "dev", &host]);
    station.ip(&["link", "set", &host, "up"]);

    let mut d = start_daemon(&node, &nic, &tap);
    let st = wait_status(&mut d, "the NIC path", |s| s["uplink"] == "nic");
    assert_eq!(
        st["workers"].as_array().map(Vec::len),
        Some(2),
        "status: {st}"
    );
    node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", &tap]);
    node.ip(&["link", "set", &tap, "up"]);

    // 16 flows, each echoed off the node's kernel, every datagram checked.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echo = run_in(node.name(), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT)).expect("binding the echo socket")
    })
    .expect("entering the node's namespace");
    let echo_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || serve_echo(&echo, &stop))
    };
    // One round: 16 flows, each echoed off the node's kernel, every datagram checked.
    let round = || {
        let socks: Vec<UdpSocket> = run_in(station.name(), || {
            (0..FLOWS)
                .map(|_| UdpSocket::bind((STATION_IP, 0)).expect("binding a flow's socket"))
                .collect()
        })
        .expect("entering the station's namespace");
        let flows: Vec<_> = socks
            .into_iter()
            .enumerate()
            .map(|(i, s)| std::thread::spawn(move || run_flow(&s, i as u16)))
            .collect();
        flows
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a flow's thread panicked".into()))
            })
            .collect::<Vec<Result<u32, String>>>()
    };
    let mut capture = Capture::start(&d);
    let t_flows = Instant::now();
    let results = round();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{failed:#?}\nstatus: {:#}\n{}",
        status(&d).unwrap_or_default(),
        d.log()
    );
    let retries: u32 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    eprintln!(
        "{FLOWS} flows x {PER_FLOW} datagrams echoed in {:.2} s ({retries} retransmissions)",
        t_flows.elapsed().as_secs_f64()
    );
    // The capture ends by count. Frames that crossed a worker before it had armed its
    // capture, or while its ring was full on a loaded machine, are not in it: more rounds
    // until it has its count (once, in a clean-clone run, one round was not enough).
    for _ in 0..5 {
        if capture.ended() {
            break;
        }
        let _ = round();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = echo_thread.join();

    // The capture took frames from both workers, each frame's comment naming its worker.
    let comments = capture.finish();
    assert_eq!(comments.len(), CAPTURED);
    let by_worker: Vec<usize> = ["worker=0", "worker=1"]
        .iter()
        .map(|w| comments.iter().filter(|c| c.ends_with(w)).count())
        .collect();
    assert!(
        by_worker.iter().all(|n| *n > 0) && by_worker.iter().sum::<usize>() == CAPTURED,
        "captured frames per worker {by_worker:?}: {comments:#?}"
    );
    eprintln!(
        "capture of {NODE_MAC}: {CAPTURED} frames, per worker {by_worker:?}, e.g. {:?}",
        comments[0]
    );

    // Both workers received NIC frames, in status and in the metrics.
    let st = wait_status(&mut d, "NIC frames on both workers", |s| {
        s["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 2 && w.iter().all(|w| nic_rx(w) > 0))
    });
    let per_worker: Vec<u64> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(nic_rx)
        .collect();
    let total = u64::from(FLOWS) * u64::from(PER_FLOW);
    assert!(
        per_worker.iter().sum::<u64>() >= total,
        "NIC rx per worker {per_worker:?} < {total} datagrams sent"
    );
    eprintln!("status: NIC rx per worker {per_worker:?}");
    let text = scrape(&node);
    let mut from_metrics = Vec::new();
    for w in ["0", "1"] {
        let rx = metric(
            &text,
            "nicproxy_rx_packets_total",
            &[("worker", w), ("port", "nic")],
        )
        .unwrap_or_else(|| panic!("no NIC rx series for worker {w}:\n{text}"));
        let tx = metric(
            &text,
            "nicproxy_tx_packets_total",
            &[("worker", w), ("port", "nic")],
        )
        .unwrap_or(0.0);
        assert!(rx > 0.0, "worker {w} received no NIC frame:\n{text}");
        from_metrics.push((rx, tx));
    }
    eprintln!("metrics: NIC (rx, tx) per worker {from_metrics:?}");

    // SIGTERM: a clean stop, and the kernel interface goes with the port.
    let mut child = d.child.take().expect("the daemon's process");
    let pid = child.id();
    let o = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(o.success(), "kill -TERM {pid}");
    let t_stop = Instant::now();
    let exit = loop {
        if let Some(st) = child.try_wait().expect("waiting for the daemon") {
            break st;
        }
        if t_stop.elapsed() > SETTLE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon did not stop within {SETTLE:?}:\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = d.log();
    assert!(exit.success(), "the daemon exited with {exit}:\n{log}");
    // A daemon that exits cleanly leaves no DPDK runtime directory behind.
    let runtime = control::daemon::eal_runtime_dir("w", pid);
    let left = runtime.exists();
    let _ = std::fs::remove_dir_all(&runtime);
    assert!(
        !left,
        "{} left behind after a clean exit",
        runtime.display()
    );
    assert!(log.contains("stopping"), "{log}");
    assert!(!log.contains("ERROR"), "the daemon logged errors:\n{log}");
    assert!(
        wait_gone(&node, &tap, Duration::from_secs(10)),
        "the kernel interface {tap} is still there after the daemon stopped"
    );
    eprintln!(
        "stopped in {:.2} s; the whole test took {:.1} s",
        t_stop.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
