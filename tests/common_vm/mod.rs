//! Running a test binary's own (ignored) tests inside the Soft-RoCE lab guest
//! (tests/lab/vm.sh), for integration tests that need a kernel with RDMA.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a guest run produced.
pub struct GuestRun {
    /// vm.sh's exit status: the command's, or 124 (guest timeout), 125 (guest did not
    /// boot or the lab setup failed), 126 (host lacks something).
    pub status: ExitStatus,
    /// The command's stdout.
    pub stdout: String,
    /// The command's stderr, the guest console and vm.sh's own lines.
    pub stderr: String,
    /// Host wall time of the whole run, boot included.
    pub wall: Duration,
}

impl GuestRun {
    /// Everything, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "vm.sh exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Panics with the transcript unless vm.sh (that is, the command) exited with 0,
    /// naming the harness failure if it was one.
    pub fn assert_success(&self) {
        let why = match self.status.code() {
            Some(0) => return,
            Some(124) => "the lab guest timed out",
            Some(125) => "the lab guest did not boot, crashed, or its RDMA setup failed",
            Some(126) => "the host lacks what the lab guest needs (run tests/lab/vm.sh --prepare)",
            _ => "the command failed inside the lab guest",
        };
        panic!("{why}\n{}", self.transcript());
    }
}

/// tests/lab/vm.sh of this checkout.
pub fn vm_sh() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lab/vm.sh")
}

/// Boots a guest that runs `args`, echoing its output as it comes (libtest shows it for
/// failed tests or with --nocapture) and collecting it.
pub fn run_in_guest(args: &[String], timeout: Duration) -> GuestRun {
    let t0 = Instant::now();
    let mut child = Command::new(vm_sh())
        .arg("--timeout")
        .arg(timeout.as_secs().max(1).to_string())
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", vm_sh().display()));
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let out_t = thread::spawn(move || tee(out, false));
    let err_t = thread::spawn(move || tee(err, true));
    let status = child.wait().expect("waiting for vm.sh");
    GuestRun {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
        wall: t0.elapsed(),
    }
}

fn tee(r: impl Read, to_stderr: bool) -> String {
    let mut all = String::new();
    for line in BufReader::new(r).lines() {
        let line = match line {
            Ok(l) => l,
            Err(_) => break,
        };
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        all.push_str(&line);
        all.push('\n');
    }
    all
}

/// Runs this test binary's ignored tests whose names contain `filter` in a guest, one at
/// a time, and checks that each of `expected` ran and passed (a filter that matches
/// nothing must not look like success).
pub fn run_own_ignored_tests(filter: &str, expected: &[&str], timeout: Duration) -> GuestRun {
    let exe = std::env::current_exe().expect("path of the test binary");
    let args = vec![
        exe.display().to_string(),
        filter.to_owned(),
        "--ignored".to_owned(),
        "--nocapture".to_owned(),
        "--test-threads=1".to_owned(),
    ];
    let run = run_in_guest(&args, timeout);
    run.assert_success();
    // With --nocapture a test's own output may split "test NAME ... ok", so check the
    // names and the summary count instead.
    for name in expected {
        assert!(
            run.stdout.contains(&format!("test {name} ...")),
            "inner test {name} did not run in the guest\n{}",
            run.transcript()
        );
    }
    let summary = format!("test result: ok. {} passed; 0 failed", expected.len());
    assert!(
        run.stdout.contains(&summary),
        "expected \"{summary}\" from the guest\n{}",
        run.transcript()
    );
    run
}
