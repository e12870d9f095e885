//! `nicproxy lab`: a local lab of nodes in network namespaces that shows a failover live.
//!
//! The lab builds a management switch (a Linux bridge in its own namespace), a fabric (a
//! second bridge), one namespace per node and a station namespace; starts one daemon per
//! node; runs probes and a TCP transfer from the station to node `a`; cuts `a`'s NIC at the
//! switch (and, per scenario, kills or isolates its proxies), measures how the traffic and
//! the switch's FDB follow, and cleans everything up again.
//!
//! Traffic, FDB and carrier watching run in small agents (`nicproxy lab-agent ...`, hidden)
//! started inside the namespaces with `ip netns exec`. They stream timestamped events as
//! text lines to the lab, which keeps the timeline and computes the figures.
//!
//! Cleanup is layered: the lab tears down what it built on every return path (also after
//! SIGINT/SIGTERM, which only set a flag the waits poll), and a watcher process in its own
//! process group does it from a manifest file if the lab itself dies (SIGKILL, abort).

mod agent;
mod analysis;
mod args;
mod bonding;
mod bonding_net;
pub(crate) mod cmd;
mod daemons;
mod error;
mod faults;
mod faults_inject;
mod faults_res;
mod faults_soak;
mod feeds;
mod guest;
mod manifest;
mod names;
mod nodeconf;
mod report;
mod run;
mod scenario;
pub(crate) mod svg;
mod timeline;
mod topology;
mod verbs;

use std::process::ExitCode;

pub use analysis::percentile;
pub use args::{AgentArgs, LabArgs};

/// Runs `nicproxy lab`; the exit code is 0 when every check of the scenario passed, 1 when
/// one failed, 2 when the lab could not run, 130 when interrupted.
pub fn main(args: LabArgs) -> ExitCode {
    if let Some(dir) = &args.cleanup {
        return match manifest::cleanup_dir(dir) {
            Ok(n) => {
                println!("nicproxy lab: cleaned up {n} item(s) of {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nicproxy lab: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run::run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error::LabError::Interrupted) => {
            eprintln!("nicproxy lab: interrupted; cleaned up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("nicproxy lab: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs one hidden `nicproxy lab-agent` (inside a lab namespace).
pub fn agent(args: AgentArgs) -> ExitCode {
    match agent::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nicproxy lab-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
