//! Running `nicproxy lab` from a test: its report directory, its JSON result, and what to
//! print when it failed.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// The report directory of one run, removed when the test ends (passed or not).
pub struct OutDir(pub PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this process runs as root (the lab needs it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A number of the lab's JSON, or a panic naming the key.
pub fn num(j: &Value, key: &str) -> f64 {
    j[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number: {}", j[key]))
}

/// The JSON object a lab run printed last; panics with its output if there is none. Prints
/// the summary (stdout without the live state lines), which explains any failed assertion,
/// and, if the run failed, the end of each daemon's log from the report directory `out`.
pub fn result(run: &Output, out: &Path) -> Value {
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "the lab printed no JSON last line ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
                run.status
            )
        });
    let live =
        |l: &&str| l.starts_with("  [") && !l.starts_with("  [ ok ]") && !l.starts_with("  [FAIL]");
    let summary: Vec<&str> = stdout.lines().filter(|l| !live(l)).collect();
    eprintln!("{}", summary.join("\n"));
    if json["ok"] != Value::Bool(true) {
        eprintln!("stderr:\n{stderr}");
        for node in ["a", "b", "c"] {
            let log =
                std::fs::read_to_string(out.join(format!("daemon-{node}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- daemon {node} (last lines) ---\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
    assert!(
        json.get("error").is_none(),
        "the lab could not run: {}\nstderr:\n{stderr}",
        json["error"]
    );
    json
}
