//! Helpers shared by the integration tests: unique names, network namespaces and veth pairs
//! that clean up after themselves (also when a test fails), and re-running this test binary
//! as a child process (inside a namespace or not) with a deadline.
//!
//! DPDK's EAL can be initialised once per process and must live in the test's namespace, so
//! a DPDK test is an outer `#[test]` that sets up the namespace and runs an `#[ignore]`d inner
//! test of the same binary inside it (see [`run_self`] and [`inner_test_requested`]).
#![allow(dead_code)]

pub mod dpdk;
pub mod lab;
pub mod pcapng;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Environment variable naming the inner test a parent process asked for.
pub const INNER_ENV: &str = "NICPROXY_INNER_TEST";

/// A name unique to this process and call, `prefix` + pid (hex) + counter, at most 15 bytes
/// (IFNAMSIZ - 1) when `prefix` has at most 5.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{n}", std::process::id());
    assert!(
        name.len() <= 15,
        "name {name} is longer than IFNAMSIZ - 1; use a shorter prefix"
    );
    name
}

/// Runs a command, panicking with its output if it cannot run or fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and ignores how it ends (for cleanup).
pub fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A network namespace, deleted on drop (with every interface in it).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `prefix` + a unique suffix, with `lo` up.
    pub fn new(prefix: &str) -> Netns {
        let ns = Netns {
            name: unique_name(prefix),
        };
        run("ip", &["netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args...`, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `program args...` inside the namespace, panicking on failure; returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv6.conf.all.disable_ipv6`, `1`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        run_quiet("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair, deleted on drop. Both ends are up.
#[derive(Debug)]
pub struct Veth {
    a: String,
    b: String,
    ns: Option<String>,
}

impl Veth {
    /// A veth pair `a` <-> `b` in the current namespace.
    pub fn new(a: &str, b: &str) -> Veth {
        Self::create(None, a, b)
    }

    /// A veth pair `a` <-> `b` inside `ns`.
    pub fn new_in(ns: &Netns, a: &str, b: &str) -> Veth {
        Self::create(Some(ns.name().to_owned()), a, b)
    }

    fn create(ns: Option<String>, a: &str, b: &str) -> Veth {
        let veth = Veth {
            a: a.to_owned(),
            b: b.to_owned(),
            ns,
        };
        veth.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        veth.ip(&["link", "set", a, "up"]);
        veth.ip(&["link", "set", b, "up"]);
        veth
    }

    /// The first end's name.
    pub fn a(&self) -> &str {
        &self.a
    }

    /// The second end's name.
    pub fn b(&self) -> &str {
        &self.b
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut full: Vec<&str> = Vec::new();
        if let Some(ns) = &self.ns {
            full.extend_from_slice(&["-n", ns]);
        }
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        match &self.ns {
            Some(ns) => run_quiet("ip", &["-n", ns, "link", "del", &self.a]),
            None => run_quiet("ip", &["link", "del", &self.a]),
        }
    }
}

/// What a child test process did.
#[derive(Debug)]
pub struct ChildRun {
    /// Exit code (`None`: killed by a signal, e.g. at the deadline).
    pub code: Option<i32>,
    /// Whether the deadline killed it.
    pub timed_out: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl ChildRun {
    /// Panics (showing the child's output) unless the child ran exactly one test and it passed.
    pub fn assert_passed(&self) {
        assert!(
            !self.timed_out
                && self.code == Some(0)
                && self.stdout.contains("test result: ok. 1 passed"),
            "child test failed (code {:?}, timed out: {}, {:?}):\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.timed_out,
            self.elapsed,
            self.stdout,
            self.stderr
        );
    }
}

/// Runs the `#[ignore]`d test `test` of this test binary in a child process, inside `netns`
/// when given, with `env` set and [`INNER_ENV`] = `test`. Kills it at `timeout`.
pub fn run_self(
    test: &str,
    netns: Option<&Netns>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> ChildRun {
    let exe = std::env::current_exe().expect("path of the running test binary");
    let exe = exe.to_str().expect("test binary path is UTF-8");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name(), exe]);
            c
        }
        None => Command::new(exe),
    };
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(INNER_ENV, test)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child test") {
            break status;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("reaping the killed child test");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    ChildRun {
        code: status.code(),
        timed_out,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// In an inner test: whether the parent asked for `test`. Inner tests return early when not
/// (e.g. under `cargo test -- --ignored`), since they need the parent's setup.
pub fn inner_test_requested(test: &str) -> bool {
    let asked = std::env::var(INNER_ENV).is_ok_and(|v| v == test);
    if !asked {
        eprintln!("{test}: skipped, it only runs when started by its outer test");
    }
    asked
}

/// A required environment variable of an inner test.
pub fn env_param(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("inner test needs {key} in its environment"))
}
