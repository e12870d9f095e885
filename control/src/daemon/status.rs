//! The local control socket: `nicproxy status` connects, sends one line (`status`), and
//! reads one JSON object. A separate thread does the socket I/O with timeouts and asks the
//! control thread for a snapshot over a channel, so a slow or stuck client can never delay
//! failure detection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::Duration;

/// A request from the status thread to the control thread.
pub struct StatusRequest {
    /// Where to send the JSON answer.
    pub reply: SyncSender<String>,
}

/// Serves the control socket at `path` until the process ends; returns the receiving end
/// the control loop polls.
pub fn serve(
    path: &Path,
    capture: super::capture::Service,
) -> Result<Receiver<StatusRequest>, super::DaemonError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| super::DaemonError::Io {
            action: format!("creating {}", dir.display()),
            source: e,
        })?;
    }
    // A stale socket from a crashed run would make bind fail; a live daemon for the same
    // node would be a config error we can detect: if connecting works, someone serves it.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(super::DaemonError::Io {
            action: format!("binding the control socket {}", path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another nicproxy serves it",
            ),
        });
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| super::DaemonError::Io {
        action: format!("binding the control socket {}", path.display()),
        source: e,
    })?;
    let (tx, rx) = mpsc::channel();
    let owned: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("np-status".into())
        .spawn(move || {
            super::raise_aux_thread();
            accept_loop(&listener, &tx, &owned, &capture)
        })
        .map_err(|e| super::DaemonError::Io {
            action: "starting the status thread".into(),
            source: e,
        })?;
    Ok(rx)
}

fn accept_loop(
    listener: &UnixListener,
    tx: &Sender<StatusRequest>,
    _path: &Path,
    capture: &super::capture::Service,
) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => c,
            Err(_) => continue,
        });
        // Bounded read: a client cannot make us buffer more than a short line.
        let mut limited = (&mut reader).take(256);
        if limited.read_line(&mut line).is_err() {
            continue;
        }
        if super::capture::Request::is_request(&line) {
            // Streams on a thread of its own: status requests keep being answered.
            capture.serve(conn, line.trim());
            continue;
        }
        let answer = match line.trim() {
            "status" | "" => {
                let (reply, wait) = mpsc::sync_channel(1);
                if tx.send(StatusRequest { reply }).is_err() {
                    return;
                }
                wait.recv_timeout(Duration::from_secs(2))
                    .unwrap_or_else(|_| r#"{"error":"the control thread did not answer"}"#.into())
            }
            other => serde_json::json!({ "error": format!("unknown request {other:?}; send \"status\"") }).to_string(),
        };
        let _ = conn.write_all(answer.as_bytes());
        let _ = conn.write_all(b"\n");
    }
}

use std::io::Read as _;

use ::dataplane::counters::{CountersSnapshot, DropReason};
use ::dataplane::worker::PORT_NAMES;
use serde_json::json;

/// A counter snapshot's ports for the status JSON: one object per port, in port order.
pub fn ports_json(c: &CountersSnapshot) -> serde_json::Value {
    PORT_NAMES
        .iter()
        .zip(c.ports.iter())
        .map(|(name, p)| {
            json!({"port": name, "rx_packets": p.rx_packets, "rx_bytes": p.rx_bytes,
                   "tx_packets": p.tx_packets, "tx_bytes": p.tx_bytes, "drops": p.drops})
        })
        .collect()
}

/// A counter snapshot's drops for the status JSON: reason → count, the reasons seen only.
pub fn drops_json(c: &CountersSnapshot) -> serde_json::Value {
    DropReason::ALL
        .iter()
        .filter(|r| c.drops_for(**r) > 0)
        .map(|r| (r.name().to_string(), json!(c.drops_for(*r))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Each worker's counters for the status JSON, in worker order: its ports and its drops by
/// reason, as the summed `ports` and `drops`. Shows how the NIC spreads flows over the
/// workers' queues, and which worker drops what.
pub fn workers_json(workers: &[CountersSnapshot]) -> serde_json::Value {
    workers
        .iter()
        .enumerate()
        .map(|(w, c)| json!({"worker": w, "ports": ports_json(c), "drops": drops_json(c)}))
        .collect()
}
