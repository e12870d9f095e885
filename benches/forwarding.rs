//! `cargo bench --bench forwarding`: the forwarding suite of the benchmark harness
//! (`src/bench/forwarding.rs`), run through `nicproxy bench --suite forwarding` (see `suite/mod.rs`).

use std::process::ExitCode;

mod suite;

fn main() -> ExitCode {
    suite::run("forwarding")
}
