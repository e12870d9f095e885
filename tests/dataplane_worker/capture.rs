//! tcpdump as an observer that sees VLAN tags.
//!
//! A raw socket's `recvfrom` never shows an 802.1Q tag: the kernel moves it out of the frame
//! on receive (into auxiliary data) before any packet socket sees it, and this kernel has no
//! 8021q module for a VLAN sub-interface to tell the tagged frames apart. libpcap reads that
//! auxiliary data and puts the tag back, so a capture shows each frame as it was on the wire.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `tcpdump -Q in` on one interface, writing to a temporary file.
pub struct Capture {
    iface: String,
    path: PathBuf,
    child: Option<Child>,
    stderr: mpsc::Receiver<String>,
}

impl Capture {
    /// Starts capturing frames arriving on `iface`; returns once tcpdump is listening.
    pub fn start(iface: &str) -> Capture {
        let path =
            std::env::temp_dir().join(format!("np-capture-{}-{iface}.pcap", std::process::id()));
        let mut child = Command::new("tcpdump")
            .args([
                "-i",
                iface,
                "-Q",
                "in",
                "-n",
                "-s",
                "0",
                "-U",
                "--immediate-mode",
            ])
            // 128 MiB of ring. libpcap's TPACKET_V3 blocks are 256 KiB and, in immediate
            // mode, each is handed over after 1 ms even when nearly empty: 512 blocks let a
            // tcpdump descheduled on a loaded machine fall half a second behind before the
            // kernel drops (which `finish` would report).
            .args(["-B", "131072"])
            // Stay root: a dropped-privilege tcpdump cannot write the file.
            .args(["-Z", "root", "-w"])
            .arg(&path)
            // No filter expression (e.g. `inbound`): with a kernel filter, libpcap 1.10 loses
            // the first frame that arrives just after it reports listening. `-Q in` filters
            // in user space, so the frames the test sends here also pass through the ring,
            // which the buffer above is sized for.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting tcpdump on {iface}: {e}"));
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cap = Capture {
            iface: iface.to_owned(),
            path,
            child: Some(child),
            stderr: rx,
        };
        loop {
            match cap.stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("listening on") => return cap,
                Ok(_) => {}
                Err(_) => {
                    cap.kill();
                    panic!("tcpdump on {iface} did not start listening within 10 s");
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops tcpdump (SIGINT, so it reports its drops) and returns every captured frame.
    /// Panics if the kernel dropped any: the capture would not be complete.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        let mut child = self.child.take().expect("capture running");
        crate::common::run("kill", &["-INT", &child.id().to_string()]);
        let status = child.wait().expect("waiting for tcpdump");
        let mut report = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            report.push(line);
        }
        assert!(
            status.success(),
            "tcpdump on {}: {status}: {report:?}",
            self.iface
        );
        let dropped = report
            .iter()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
        assert_eq!(
            dropped,
            Some(0),
            "tcpdump on {} dropped frames: {report:?}",
            self.iface
        );
        let bytes = std::fs::read(&self.path).expect("reading the capture");
        parse_pcap(&bytes)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The frames of a pcap file (either timestamp resolution, little-endian as written here).
fn parse_pcap(b: &[u8]) -> Vec<Vec<u8>> {
    assert!(b.len() >= 24, "pcap file header");
    let magic = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "little-endian pcap, magic {magic:#x}"
    );
    let mut at = 24;
    let mut frames = Vec::new();
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let orig = u32::from_le_bytes(b[at + 12..at + 16].try_into().expect("4 bytes")) as usize;
        assert_eq!(incl, orig, "whole frames captured");
        at += 16;
        assert!(at + incl <= b.len(), "truncated pcap record");
        frames.push(b[at..at + incl].to_vec());
        at += incl;
    }
    frames
}
