//! `cargo bench --bench forwarding`: the forwarding suite of the benchmark harness (`src/bench/forwarding.rs`),
//! run through the binary as `nicproxy bench --suite forwarding`, so that there is one
//! implementation and two entry points. Results go to `<target dir>/bench/forwarding` (bench.json,
//! bench.md, plots); the table is printed. Extra arguments after `--` (e.g. `--quick`)
//! are passed on.

use std::path::Path;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    // CARGO_TARGET_TMPDIR is <target dir>/tmp.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out = tmp.parent().unwrap_or(tmp).join("bench").join("forwarding");
    // cargo passes `--bench` to harness-less benches; keep only the harness's own flags.
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "--quick")
        .collect();
    let status = Command::new(env!("CARGO_BIN_EXE_nicproxy"))
        .args(["bench", "--suite", "forwarding", "--out"])
        .arg(&out)
        .args(&extra)
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("nicproxy bench --suite forwarding: {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("starting {}: {e}", env!("CARGO_BIN_EXE_nicproxy"));
            ExitCode::FAILURE
        }
    }
}
