//! `nicproxy capture`: frames of one MAC or one session, taken inside a running daemon's
//! worker, written as pcapng and read back with tcpdump.
//!
//! The live part runs a two-node `nicproxy lab --keep` (needs root, like the lab): it
//! captures a's MAC while the station pings a, captures nothing for a second, refuses a
//! second capture while one runs, and, with a's NIC cut, captures the session to a's proxy.
//! The other tests need no daemon: the pcapng writer's output read by tcpdump, and the
//! command's answers to bad input.

mod common;
mod ops_lab;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::pcapng::{read_pcapng, Block};
use dataplane::wire::pcapng::{Direction, PcapngWriter};
use ops_lab::{nicproxy, output, texts, KeptLab, TempPath};

const A_MAC: &str = "02:00:00:77:00:01";
const A_IP: &str = "10.88.0.1";
const STATION_IP: &str = "10.88.0.100";

/// `tcpdump -r FILE -nn` (plus `extra`): its exit status and packet lines.
fn tcpdump(file: &std::path::Path, extra: &[&str]) -> (bool, Vec<String>, String) {
    let o = output(
        Command::new("tcpdump")
            .arg("-r")
            .arg(file)
            .arg("-nn")
            .args(extra),
    );
    let (out, err) = texts(&o);
    (
        o.status.success(),
        out.lines().map(String::from).collect(),
        err,
    )
}

/// A running `nicproxy capture`, its stderr lines on a channel.
struct Running {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(args: &[&str], file: &std::path::Path, socket: &std::path::Path) -> Running {
        let mut child = nicproxy()
            .arg("capture")
            .args(args)
            .arg("-w")
            .arg(file)
            .arg("--socket")
            .arg(socket)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nicproxy capture");
        let err = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Running {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the line the command prints once the daemon has started the capture.
    fn wait_started(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                let started = l.contains(", writing ");
                self.seen.push(l);
                if started {
                    return;
                }
            }
        }
        panic!("the capture did not start: {:?}", self.seen);
    }

    /// Waits for the command to end (killing it after `timeout`); its success and stderr.
    fn finish(mut self, timeout: Duration) -> (bool, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for capture") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        let err = self.seen.join("\n");
        match status {
            Some(s) => (s.success(), err),
            None => panic!("nicproxy capture did not end within {timeout:?}: {err}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pings a from the station: `count` echo requests 50 ms apart (a burst of a's own
/// announcements may come first: the captures take enough frames to see the pings).
fn ping_a(lab: &KeptLab, count: u32) -> String {
    let o = output(Command::new("ip").args([
        "netns",
        "exec",
        &lab.station_ns(),
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.05",
        "-W",
        "1",
        A_IP,
    ]));
    let (out, err) = texts(&o);
    format!("{out}{err}")
}

fn packets(blocks: &[Block]) -> Vec<(u32, &Vec<u8>, &str, u32)> {
    blocks
        .iter()
        .filter_map(|b| match b {
            Block::Packet {
                interface,
                data,
                comment,
                flags,
            } => Some((*interface, data, comment.as_str(), *flags)),
            Block::Interface { .. } => None,
        })
        .collect()
}

#[test]
fn capture_in_a_live_lab() {
    let lab = KeptLab::start(2, "capture");
    let st = lab.wait_status("a", Duration::from_secs(15), |s| {
        s["uplink"] == "nic" && s["sessions"][0]["state"] == "up"
    });
    assert_eq!(st["uplink"], "nic", "{st}\n{}", lab.log("a"));
    let socket = lab.socket("a");

    // a's MAC, both directions, while the station pings a.
    let file = TempPath::new("mac.pcapng");
    let t0 = Instant::now();
    let mut cap = Running::spawn(&["--mac", A_MAC, "--count", "40"], file.path(), &socket);
    cap.wait_started();
    let ping = ping_a(&lab, 40);
    let (ok, err) = cap.finish(Duration::from_secs(10));
    assert!(ok, "capture failed: {err}\nping: {ping}\n{}", lab.log("a"));
    assert!(err.contains("40 frame(s) written"), "{err}");
    assert!(err.contains("count reached"), "{err}");
    eprintln!("mac capture: {:.2} s; {err}", t0.elapsed().as_secs_f64());
    let (ok, lines, terr) = tcpdump(file.path(), &["-c", "40"]);
    assert!(ok, "tcpdump -r: {terr}");
    assert_eq!(lines.len(), 40, "{lines:#?}\n{terr}");
    eprintln!("tcpdump -r (first 6):\n{}", lines[..6].join("\n"));
    let request = format!("IP {STATION_IP} > {A_IP}: ICMP echo request");
    let reply = format!("IP {A_IP} > {STATION_IP}: ICMP echo reply");
    assert!(lines.iter().any(|l| l.contains(&request)), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains(&reply)), "{lines:#?}");
    // The file names the ports and says where each frame went.
    let bytes = std::fs::read(file.path()).unwrap();
    let blocks = read_pcapng(&bytes);
    let names: Vec<&str> = blocks
        .iter()
        .filter_map(|b| match b {
            Block::Interface { name } => Some(name.as_str()),
            Block::Packet { .. } => None,
        })
        .collect();
    assert_eq!(names, ["a:nic", "a:kernel", "a:fabric"]);
    let pk = packets(&blocks);
    assert_eq!(pk.len(), 40);
    let mac: Vec<u8> = A_MAC
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let notes: Vec<&str> = pk.iter().map(|p| p.2).collect();
    eprintln!("notes: {notes:?}");
    let (mut requests_in, mut replies_out) = (0, 0);
    for (interface, data, comment, flags) in &pk {
        assert!(
            data[0..6] == mac[..] || data[6..12] == mac[..],
            "a frame neither to nor from a: {comment}"
        );
        assert_eq!(*flags, 1, "marked inbound");
        let to_a = data[0..6] == mac[..];
        // The interface is the port the frame arrived on. Frames for a may still come
        // over b's session just after a failed back (until the switch relearns a's MAC).
        match interface {
            0 => assert!(to_a && comment.starts_with("in=nic out="), "{comment}"),
            1 => assert!(!to_a && comment.starts_with("in=kernel out="), "{comment}"),
            2 => assert!(comment.starts_with("in=fabric:b out="), "{comment}"),
            other => panic!("no interface {other}"),
        }
        // Echo requests (IPv4, ICMP type 8) reach the kernel, replies leave by the NIC.
        if data.len() > 34 && data[12..14] == [8, 0] && data[23] == 1 {
            match data[34] {
                8 => {
                    assert!(comment.ends_with(" out=kernel"), "{comment}");
                    requests_in += usize::from(*comment == "in=nic out=kernel");
                }
                0 => {
                    assert!(comment.starts_with("in=kernel out="), "{comment}");
                    replies_out += usize::from(*comment == "in=kernel out=nic");
                }
                _ => {}
            }
        }
    }
    assert!(
        requests_in > 0 && replies_out > 0,
        "no echo through a's NIC in either direction: {notes:?}"
    );

    // Nothing matches: a valid pcapng with no packets after --duration.
    let empty = TempPath::new("empty.pcapng");
    let t0 = Instant::now();
    let o = output(
        nicproxy()
            .args([
                "capture",
                "--mac",
                "02:00:00:00:99:99",
                "--duration",
                "1",
                "-w",
            ])
            .arg(empty.path())
            .arg("--socket")
            .arg(&socket),
    );
    let took = t0.elapsed();
    let (_, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("0 frame(s) written"), "{err}");
    assert!(err.contains("stopped by the client"), "{err}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "--duration 1 took {took:?}"
    );
    let bytes = std::fs::read(empty.path()).unwrap();
    let blocks = read_pcapng(&bytes);
    assert_eq!(blocks.len(), 3, "three interfaces, no packets: {blocks:?}");
    let (ok, lines, terr) = tcpdump(empty.path(), &[]);
    assert!(ok, "tcpdump -r on the empty capture: {terr}");
    assert!(lines.is_empty(), "{lines:?}");

    // One capture at a time; status still answers meanwhile; Ctrl-C ends a capture with a
    // complete file.
    let busy = TempPath::new("busy.pcapng");
    let second = TempPath::new("second.pcapng");
    let mut first = Running::spawn(&["--mac", A_MAC], busy.path(), &socket);
    first.wait_started();
    assert_eq!(lab.status("a")["node"], "a");
    let o = output(
        nicproxy()
            .args(["capture", "--mac", A_MAC, "-w"])
            .arg(second.path())
            .arg("--socket")
            .arg(&socket),
    );
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("another capture is running"), "{err}");
    assert!(!second.path().exists(), "a refused capture leaves no file");
    let pid = first.child.as_ref().expect("running").id().to_string();
    let o = output(Command::new("kill").args(["-INT", &pid]));
    assert!(o.status.success(), "kill -INT {pid}: {}", texts(&o).1);
    let (ok, err) = first.finish(Duration::from_secs(6));
    assert!(ok, "{err}");
    assert!(err.contains("stopped by the client"), "{err}");
    let (ok, _, terr) = tcpdump(busy.path(), &[]);
    assert!(ok, "the file of a capture ended by SIGINT: {terr}");

    // An unknown peer is refused, naming the peers there are.
    let o = output(
        nicproxy()
            .args(["capture", "--session", "zz", "-w"])
            .arg(second.path())
            .arg("--socket")
            .arg(&socket),
    );
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no session with peer \"zz\"") && err.contains("its peers: b"),
        "{err}"
    );

    // With a's NIC cut, a's traffic crosses the session to b: capture that session.
    lab.set_nic("a", false);
    let st = lab.wait_status("a", Duration::from_secs(10), |s| s["uplink"] == "proxy:b");
    assert_eq!(st["uplink"], "proxy:b", "{st}\n{}", lab.log("a"));
    let sess = TempPath::new("session.pcapng");
    let mut cap = Running::spawn(&["--session", "b", "--count", "20"], sess.path(), &socket);
    cap.wait_started();
    let ping = ping_a(&lab, 40);
    let (ok, err) = cap.finish(Duration::from_secs(10));
    assert!(
        ok,
        "session capture failed: {err}\nping: {ping}\n{}",
        lab.log("a")
    );
    let (ok, lines, terr) = tcpdump(sess.path(), &[]);
    assert!(ok, "{terr}");
    assert_eq!(lines.len(), 20, "{lines:#?}");
    eprintln!(
        "session capture, tcpdump -r (first 6):\n{}",
        lines[..6].join("\n")
    );
    assert!(lines.iter().any(|l| l.contains(&request)), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains(&reply)), "{lines:#?}");
    let bytes = std::fs::read(sess.path()).unwrap();
    for (interface, _, comment, _) in packets(&read_pcapng(&bytes)) {
        match interface {
            2 => assert!(comment.starts_with("in=fabric:b out="), "{comment}"),
            _ => assert!(comment.contains("fabric:b"), "{comment}"),
        }
    }
    lab.set_nic("a", true);
}

/// An IPv4 ICMP echo request from 10.0.0.1 to 10.0.0.2 with `payload` bytes of data.
fn echo_request(payload: usize) -> Vec<u8> {
    fn checksum(b: &[u8]) -> u16 {
        let mut sum: u32 = b
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
    let mut f = vec![0u8; 14 + 20 + 8 + payload];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[8, 0]);
    let total = (20 + 8 + payload) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut f[34..];
    icmp[0] = 8;
    icmp[4..6].copy_from_slice(&7u16.to_be_bytes());
    icmp[6..8].copy_from_slice(&1u16.to_be_bytes());
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn pcapng_writer_output_reads_in_tcpdump() {
    let file = TempPath::new("writer.pcapng");
    let mut w = PcapngWriter::new(
        std::fs::File::create(file.path()).unwrap(),
        "nicproxy ops test",
        2048,
    )
    .unwrap();
    w.add_interface("t:nic", "test").unwrap();
    w.add_interface("t:kernel", "").unwrap();
    let frame = echo_request(56);
    let ts = Duration::new(1_700_000_000, 123_456_789);
    w.write_packet(
        0,
        ts,
        frame.len() as u32,
        &frame,
        Some(Direction::Inbound),
        Some("in=nic out=kernel"),
    )
    .unwrap();
    // Cut to 64 bytes on the second interface: tcpdump still decodes the headers.
    w.write_packet(
        1,
        ts + Duration::from_millis(1),
        frame.len() as u32,
        &frame[..64],
        Some(Direction::Outbound),
        None,
    )
    .unwrap();
    w.into_inner().unwrap();
    let (ok, lines, err) = tcpdump(file.path(), &["-tt", "--nano"]);
    assert!(ok, "tcpdump -r: {err}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("1700000000.123456789 IP 10.0.0.1 > 10.0.0.2: ICMP echo request, id 7, seq 1, length 64"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("1700000000.124456789 IP 10.0.0.1 > 10.0.0.2: ICMP echo request"),
        "{}",
        lines[1]
    );
    let (ok, lines, err) = tcpdump(file.path(), &["-v"]);
    assert!(ok, "{err}");
    assert!(lines.iter().any(|l| l.contains("ttl 64")), "{lines:?}");
}

#[test]
fn capture_refuses_bad_input_clearly() {
    let file = TempPath::new("bad.pcapng");
    let run = |args: &[&str]| {
        let o = output(nicproxy().arg("capture").args(args));
        let (out, err) = texts(&o);
        (o.status.code(), out, err)
    };
    let f = file.path().to_str().unwrap();
    let nowhere = TempPath::new("nowhere.sock");
    let sock = nowhere.path().to_str().unwrap();

    let (code, _, err) = run(&["--mac", "02:zz:00:00:00:01", "-w", f, "--socket", sock]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("invalid value '02:zz:00:00:00:01' for '--mac"),
        "{err}"
    );
    assert!(
        err.contains("two hex digits") || err.contains("hex"),
        "{err}"
    );
    assert!(!file.path().exists(), "no file for a refused command line");

    let (code, _, err) = run(&["-w", f, "--socket", sock]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--mac <MAC>|--session <PEER>"), "{err}");

    let (code, _, err) = run(&["--mac", A_MAC, "-w", f]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--config <FILE>|--socket <PATH>"), "{err}");

    let (code, _, err) = run(&["--mac", A_MAC, "-w", f, "--socket", sock, "--duration", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--duration"), "{err}");

    let (code, _, err) = run(&["--mac", A_MAC, "-w", f, "--socket", sock, "--snaplen", "10"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--snaplen"), "{err}");

    let (code, out, err) = run(&["--mac", A_MAC, "-w", f, "--socket", sock]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(&format!(
            "cannot connect to {sock} (is the daemon running?)"
        )),
        "{err}"
    );
    assert!(
        !file.path().exists(),
        "no file left when nothing was captured"
    );

    let (code, _, err) = run(&[
        "--mac",
        A_MAC,
        "-w",
        "/nonexistent-dir/x.pcapng",
        "--socket",
        sock,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot create /nonexistent-dir/x.pcapng") && err.contains("No such file"),
        "{err}"
    );

    let (code, _, err) = run(&[
        "--mac",
        A_MAC,
        "-w",
        f,
        "--config",
        "/nonexistent/node.toml",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/node.toml"), "{err}");
}
