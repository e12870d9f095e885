//! What `cargo bench --bench NAME` runs: the NAME suite of the benchmark harness, through the
//! binary as `nicproxy bench --suite NAME`, so that there is one implementation and two
//! entry points. Results go to `<target dir>/bench/NAME` (bench.json, bench.md, plots); the
//! table is printed. `--quick` after `--` is passed on.

use std::path::Path;
use std::process::{Command, ExitCode};

pub fn run(suite: &str) -> ExitCode {
    // CARGO_TARGET_TMPDIR is <target dir>/tmp.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out = tmp.parent().unwrap_or(tmp).join("bench").join(suite);
    // cargo passes `--bench` to harness-less benches; keep only the harness's own flags.
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "--quick")
        .collect();
    let status = Command::new(env!("CARGO_BIN_EXE_nicproxy"))
        .args(["bench", "--suite", suite, "--out"])
        .arg(&out)
        .args(&extra)
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("nicproxy bench --suite {suite}: {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("starting {}: {e}", env!("CARGO_BIN_EXE_nicproxy"));
            ExitCode::FAILURE
        }
    }
}
