//! A lab left running for the operations tests: `nicproxy lab --keep` builds the namespaces,
//! starts a daemon per node and runs one cut and restore of a's NIC; the tests then poke
//! the live daemons. Dropping the [`KeptLab`] removes it again (`nicproxy lab --cleanup`),
//! also when a test fails.

#![allow(dead_code)] // Each test file uses its own part.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The nicproxy binary under test.
pub fn nicproxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nicproxy"))
}

/// Runs a command to its end, panicking only if it cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A running lab.
pub struct KeptLab {
    /// The lab's run directory (configs, control sockets, daemon logs, manifest).
    pub run_dir: PathBuf,
    /// Its report directory.
    pub out_dir: PathBuf,
    /// The namespace tag (`npl<pid in hex>`).
    pub tag: String,
    /// The lab's JSON results.
    pub json: Value,
}

impl KeptLab {
    /// Runs `nicproxy lab --nodes N --cuts 1 --keep` and returns once it has printed its
    /// results; panics (after cleaning up) if the lab could not run.
    pub fn start(nodes: u8, name: &str) -> KeptLab {
        let out_dir =
            std::env::temp_dir().join(format!("nicproxy-ops-{name}-{}", std::process::id()));
        let t0 = Instant::now();
        let child = nicproxy()
            .args(["lab", "--nodes", &nodes.to_string()])
            .args(["--cuts", "1", "--keep", "--json"])
            .args([
                "--dwell-ms",
                "300",
                "--hold-down-ms",
                "1500",
                "--tcp-mbps",
                "5",
            ])
            .arg("--out")
            .arg(&out_dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting nicproxy lab");
        let pid = child.id();
        // Known before the lab prints anything, so a failed run is cleaned up too.
        let mut lab = KeptLab {
            run_dir: std::env::temp_dir().join(format!("nicproxy-lab-{pid}")),
            out_dir,
            tag: format!("npl{pid:x}"),
            json: Value::Null,
        };
        let out = child.wait_with_output().expect("waiting for nicproxy lab");
        let status = out.status;
        let (stdout, stderr) = texts(&out);
        eprintln!(
            "nicproxy lab --keep: {status} in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let printed_dir = stdout
            .lines()
            .find_map(|l| l.split_once("run dir ").map(|(_, d)| d.trim().to_string()));
        if let Some(d) = printed_dir {
            lab.run_dir = PathBuf::from(d);
        }
        lab.json = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null);
        assert!(
            lab.json.is_object() && lab.json.get("error").is_none(),
            "the lab did not run ({status}): {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            lab.json
        );
        assert!(
            stdout.contains(&lab.ns("a")),
            "namespace {} not in the lab's output:\n{stdout}",
            lab.ns("a")
        );
        lab
    }

    /// A node's namespace.
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.tag)
    }

    /// The switch's namespace.
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.tag)
    }

    /// The station's namespace.
    pub fn station_ns(&self) -> String {
        format!("{}-st", self.tag)
    }

    /// A node's control socket.
    pub fn socket(&self, node: &str) -> PathBuf {
        self.run_dir.join(format!("{node}.sock"))
    }

    /// `nicproxy status --socket <node's> --json`, parsed.
    pub fn status(&self, node: &str) -> Value {
        let o = output(
            nicproxy()
                .args(["status", "--json", "--socket"])
                .arg(self.socket(node)),
        );
        let (out, err) = texts(&o);
        assert!(o.status.success(), "nicproxy status failed: {err}");
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
    }

    /// Waits until node's status satisfies `f`; returns the last status either way.
    pub fn wait_status(&self, node: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let s = self.status(node);
            if f(&s) || t0.elapsed() > timeout {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets a node's NIC port on the switch up or down (cuts or restores its NIC).
    pub fn set_nic(&self, node: &str, up: bool) {
        let o = output(Command::new("ip").args([
            "-n",
            &self.switch_ns(),
            "link",
            "set",
            &format!("p{node}"),
            if up { "up" } else { "down" },
        ]));
        assert!(o.status.success(), "ip link set: {}", texts(&o).1);
    }

    /// A daemon's log, for failure messages.
    pub fn log(&self, node: &str) -> String {
        let text =
            std::fs::read_to_string(self.run_dir.join(format!("{node}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for KeptLab {
    fn drop(&mut self) {
        if self.run_dir.exists() {
            let o = nicproxy()
                .arg("lab")
                .arg("--cleanup")
                .arg(&self.run_dir)
                .output();
            match o {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "nicproxy lab --cleanup {}: {}",
                    self.run_dir.display(),
                    texts(&o).1
                ),
                Err(e) => eprintln!("nicproxy lab --cleanup: {e}"),
            }
        }
        let _ = std::fs::remove_dir_all(&self.out_dir);
    }
}

/// A temporary file or directory, removed on drop.
pub struct TempPath(pub PathBuf);

impl TempPath {
    /// A fresh path under the temp dir, unique to this process and `name`.
    pub fn new(name: &str) -> TempPath {
        TempPath(std::env::temp_dir().join(format!("nicproxy-ops-{}-{name}", std::process::id())))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
