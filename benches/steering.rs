//! `cargo bench --bench steering`: the steering suite of the benchmark harness
//! (`src/bench/steering.rs`), run through `nicproxy bench --suite steering` (see `suite/mod.rs`).

use std::process::ExitCode;

mod suite;

fn main() -> ExitCode {
    suite::run("steering")
}
