//! `nicproxy bench`: the benchmark harness behind the figures in the README and the issues.
//!
//! Each suite measures nicproxy and, in the same run, the baseline it is compared with
//! (testpmd io-fwd, rte_hash, a plain sendmmsg loop, ibv_rc_pingpong, Linux bonding). The
//! results go to `--out` as `bench.json` (everything, raw results included), `bench.md` (the
//! table) and one SVG per plot. Progress goes to stderr; a suite that fails is reported as
//! failed and the others still run. The machine's load average is recorded with every
//! suite: these machines are shared, so ratios against a baseline taken in the same run are
//! the figures to compare, not absolute rates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use serde::Serialize;

mod bonding;
mod child;
pub(crate) mod fabric;
mod failover;
mod forwarding;
pub mod model;
mod polling;
mod report;
mod soak;
mod steering;

use model::{Progress, SuiteOutcome};

/// The suites, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Suite {
    /// Steering cost per frame in TSC cycles, against rte_hash_lookup_bulk_data.
    Steering,
    /// Frames per second of one worker through the full loop, against testpmd io-fwd.
    Forwarding,
    /// Wake-up latency of an adaptive worker, against a busy one.
    Polling,
    /// UDP fabric frames/s and RTT percentiles, against a plain sendmmsg/recvmmsg loop.
    FabricUdp,
    /// Verbs fabric frames/s and RTT percentiles in the Soft-RoCE guest, against
    /// ibv_rc_pingpong on the same devices.
    FabricVerbs,
    /// Failover time over many cuts in the host lab (median, p99, frames lost).
    Failover,
    /// Linux bonding active-backup failover in the guest under the same traffic.
    Bonding,
    /// RSS and fds of a daemon under traffic and faults for `--soak-minutes` (not default).
    Soak,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Steering => "steering",
            Suite::Forwarding => "forwarding",
            Suite::Polling => "polling",
            Suite::FabricUdp => "fabric-udp",
            Suite::FabricVerbs => "fabric-verbs",
            Suite::Failover => "failover",
            Suite::Bonding => "bonding",
            Suite::Soak => "soak",
        }
    }

    const DEFAULT: [Suite; 7] = [
        Suite::Steering,
        Suite::Forwarding,
        Suite::Polling,
        Suite::FabricUdp,
        Suite::FabricVerbs,
        Suite::Failover,
        Suite::Bonding,
    ];
}

/// `nicproxy bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Suites to run, comma-separated (default: all but soak).
    #[arg(long, value_delimiter = ',', value_name = "SUITE")]
    pub suite: Vec<Suite>,
    /// Directory for bench.json, bench.md and the plots.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub out: PathBuf,
    /// Short runs (fewer rounds, cuts and samples): a smoke test of the harness, not
    /// figures to quote.
    #[arg(long)]
    pub quick: bool,
    /// Failover cuts in the failover and bonding suites.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub cuts: u32,
    /// Length of the soak suite.
    #[arg(long, value_name = "MINUTES", default_value_t = 10)]
    pub soak_minutes: u32,
}

/// What every suite gets.
#[derive(Debug)]
pub struct BenchOpts {
    pub quick: bool,
    pub out: PathBuf,
    pub cuts: u32,
    pub soak_minutes: u32,
}

/// One suite's result as the report keeps it.
#[derive(Debug, Serialize)]
pub struct SuiteRecord {
    pub suite: Suite,
    pub seconds: f64,
    /// 1-minute load average before and after the suite.
    pub load_before: f64,
    pub load_after: f64,
    #[serde(flatten)]
    pub outcome: SuiteOutcome,
    pub error: Option<String>,
}

impl SuiteRecord {
    fn suite_name(&self) -> &'static str {
        self.suite.name()
    }
}

/// Runs `nicproxy bench`.
pub fn main(args: BenchArgs) -> ExitCode {
    let suites: Vec<Suite> = if args.suite.is_empty() {
        Suite::DEFAULT.to_vec()
    } else {
        args.suite.clone()
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("nicproxy bench: creating {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let opts = BenchOpts {
        quick: args.quick,
        out: args.out.clone(),
        cuts: if args.quick {
            args.cuts.min(5)
        } else {
            args.cuts
        },
        soak_minutes: args.soak_minutes,
    };
    let mut records = Vec::new();
    for (i, &suite) in suites.iter().enumerate() {
        let progress = Progress::new(suite.name());
        progress.say(format_args!("suite {}/{} starting", i + 1, suites.len()));
        let load_before = crate::loadavg::one_minute();
        let t0 = Instant::now();
        let result = match suite {
            Suite::Steering => steering::run(&opts, &progress),
            Suite::Forwarding => forwarding::run(&opts, &progress),
            Suite::Polling => polling::run(&opts, &progress),
            Suite::FabricUdp => fabric::run_udp(&opts, &progress),
            Suite::FabricVerbs => fabric::run_verbs(&opts, &progress),
            Suite::Failover => failover::run(&opts, &progress),
            Suite::Bonding => bonding::run(&opts, &progress),
            Suite::Soak => soak::run(&opts, &progress),
        };
        let seconds = t0.elapsed().as_secs_f64();
        let (outcome, error) = match result {
            Ok(o) => (o, None),
            Err(e) => {
                progress.say(format_args!("FAILED: {e}"));
                (SuiteOutcome::default(), Some(e))
            }
        };
        progress.say(format_args!("done in {seconds:.1} s"));
        records.push(SuiteRecord {
            suite,
            seconds,
            load_before,
            load_after: crate::loadavg::one_minute(),
            outcome,
            error,
        });
    }
    match report::write(&opts.out, &records) {
        Ok(md) => {
            println!("{md}");
            eprintln!(
                "nicproxy bench: wrote {}/bench.json, bench.md and the plots",
                opts.out.display()
            );
        }
        Err(e) => {
            eprintln!("nicproxy bench: writing the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    if records.iter().any(|r| r.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
