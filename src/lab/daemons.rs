//! The node daemons: `ip netns exec <ns> nicproxy run --config <file>`, one per node, each
//! logging to a file in the run directory, each in its own process group so that a Ctrl-C
//! at the terminal reaches the lab only (which then stops them in order). A config with
//! `dataplane.netns` (the verbs lab) starts its daemon in the lab's own namespace
//! instead: the daemon enters the node's namespace itself for its NIC and kernel
//! interface, and keeps its fabric where Soft-RoCE works.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cmd;
use super::error::{LabError, Result};
use super::manifest::Manifest;
use super::names::Names;
use super::nodeconf::NodeConfig;

/// One node's daemon.
#[derive(Debug)]
struct Daemon {
    id: String,
    ns: String,
    config: PathBuf,
    /// Whether the daemon enters the node's namespace itself (`dataplane.netns`).
    own_netns: bool,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Killed on purpose by the scenario: its exit is not an error.
    killed: bool,
}

/// Every daemon of the lab.
#[derive(Debug)]
pub struct Daemons {
    list: Vec<Daemon>,
    keep: bool,
    /// How long a `status` request may take.
    status_timeout: Duration,
}

impl Daemons {
    /// Starts one daemon per node config. `status_timeout` bounds each `status` request
    /// (longer under an emulated CPU, where a busy daemon answers late).
    pub fn start_all(
        n: &Names,
        configs: &[NodeConfig],
        run_dir: &Path,
        manifest: &mut Manifest,
        status_timeout: Duration,
    ) -> Result<Daemons> {
        let mut d = Daemons {
            list: Vec::new(),
            keep: false,
            status_timeout,
        };
        for c in configs {
            let node = n
                .node(&c.id)
                .ok_or_else(|| LabError::Precondition(format!("no namespace for node {}", c.id)))?;
            d.list.push(Daemon {
                id: c.id.clone(),
                ns: node.ns.clone(),
                config: c.path.clone(),
                own_netns: c.config.dataplane.netns.is_some(),
                socket: c.config.control_socket(),
                log: run_dir.join(format!("{}.log", c.id)),
                child: None,
                killed: false,
            });
            d.start(&c.id, manifest)?;
        }
        Ok(d)
    }

    fn get(&mut self, id: &str) -> &mut Daemon {
        self.list
            .iter_mut()
            .find(|d| d.id == id)
            .unwrap_or_else(|| unreachable!("the lab only names its own nodes"))
    }

    /// (Re)starts node `id`'s daemon.
    pub fn start(&mut self, id: &str, manifest: &mut Manifest) -> Result<()> {
        let d = self.get(id);
        let exe = std::env::current_exe()
            .map_err(|e| LabError::io("finding the nicproxy executable", e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&d.log)
            .map_err(|e| LabError::io(format!("opening {}", d.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| LabError::io(format!("opening {}", d.log.display()), e))?;
        let mut command = if d.own_netns {
            Command::new(&exe)
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &d.ns]).arg(&exe);
            c
        };
        command
            .args(["run", "--config"])
            .arg(&d.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // The log is a file: no terminal colour codes in it.
        command.env("NO_COLOR", "1");
        let child = command.spawn().map_err(|source| LabError::Spawn {
            what: format!("nicproxy run for node {}", d.id),
            source,
        })?;
        manifest.pid(child.id())?;
        d.child = Some(child);
        d.killed = false;
        Ok(())
    }

    /// SIGKILLs node `id`'s daemon (the kill-proxy scenario) and reaps it; returns when the
    /// signal was sent (µs, the agents' clock).
    pub fn kill(&mut self, id: &str) -> Result<u64> {
        let d = self.get(id);
        d.killed = true;
        let mut at = super::agent::now_us();
        if let Some(mut c) = d.child.take() {
            c.kill()
                .map_err(|e| LabError::io(format!("killing node {id}'s daemon"), e))?;
            at = super::agent::now_us();
            let _ = c.wait();
            remove_runtime_dir(id, c.id());
        }
        Ok(at)
    }

    /// The pid of node `id`'s daemon while it runs (the fault suite and the soak read its
    /// /proc entries).
    pub fn pid(&self, id: &str) -> Option<u32> {
        self.list
            .iter()
            .find(|d| d.id == id)?
            .child
            .as_ref()
            .map(Child::id)
    }

    /// An error naming the first daemon that exited without being asked to, with the end
    /// of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        for d in &mut self.list {
            if d.killed {
                continue;
            }
            let Some(c) = d.child.as_mut() else { continue };
            if let Ok(Some(status)) = c.try_wait() {
                d.child = None;
                return Err(LabError::Exited {
                    what: format!("node {}'s daemon", d.id),
                    detail: format!("{status}; log {}:\n{}", d.log.display(), tail(&d.log, 25)),
                });
            }
        }
        Ok(())
    }

    /// Asks node `id`'s daemon for its status over the control socket (None if it does not
    /// answer within a short timeout).
    pub fn status(&self, id: &str) -> Option<serde_json::Value> {
        let d = self.list.iter().find(|d| d.id == id)?;
        query_status_within(&d.socket, self.status_timeout)
    }

    /// The logs' paths, by node.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.list
            .iter()
            .map(|d| (d.id.clone(), d.log.clone()))
            .collect()
    }

    /// The last lines of every log, for an error report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for d in &self.list {
            s.push_str(&format!(
                "--- node {} ({}) ---\n{}\n",
                d.id,
                d.log.display(),
                tail(&d.log, lines)
            ));
        }
        s
    }

    /// Leaves the daemons running when dropped (`--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Stops every daemon: SIGTERM (they release their proxies and exit), then SIGKILL for
    /// any still there after 3 s.
    pub fn stop_all(&mut self) {
        if self.keep {
            return;
        }
        for d in &self.list {
            if let Some(c) = &d.child {
                cmd::signal(c.id(), "TERM");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for d in &mut self.list {
            let Some(mut c) = d.child.take() else {
                continue;
            };
            cmd::wait_or_kill(&mut c, deadline);
            remove_runtime_dir(&d.id, c.id());
        }
    }
}

/// Removes the DPDK runtime directory of node `id`'s daemon `pid` once it is gone: one that
/// exits cleanly removes it itself, one that was killed cannot.
fn remove_runtime_dir(id: &str, pid: u32) {
    let _ = std::fs::remove_dir_all(control::daemon::eal_runtime_dir(id, pid));
}

impl Drop for Daemons {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// How long a `status` request may take on the host.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(300);

/// One `status` request on a control socket, each read and write bounded by `timeout`.
pub fn query_status_within(socket: &Path, timeout: Duration) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(b"status\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(line.trim()).ok()
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
