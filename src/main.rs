//! `nicproxy`: the daemon and its operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod bench;
mod capture;
mod lab;
mod loadavg;
mod logwriter;
mod status;

/// Keeps a node reachable on the management network through its peers when its management
/// NIC fails.
#[derive(Debug, Parser)]
#[command(name = "nicproxy", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon for one node.
    Run {
        /// The node's TOML config.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Log format: `text` (for a terminal) or `json`.
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Show a running daemon's state: sessions, the active path of each MAC, the steering
    /// table and counters. Reads the daemon's local control socket.
    Status {
        /// The node's config (to find its control socket).
        #[arg(short, long, value_name = "FILE", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The control socket itself.
        #[arg(short, long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print the raw JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Capture the frames of one MAC or one peer session, as a running daemon's worker steers
    /// them, into a pcapng file (tcpdump -r and Wireshark read it).
    Capture(capture::CaptureArgs),
    /// Check config files without starting anything; prints every problem with file, line
    /// and key. Exits non-zero if any file is invalid.
    CheckConfig {
        /// Config files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Build a local lab of nodes in network namespaces and show a failover live (root).
    Lab(lab::LabArgs),
    /// Run the benchmark harness: each figure against its baseline measured in the same
    /// run (testpmd, rte_hash, sendmmsg, ibv_rc_pingpong, bonding); writes JSON, Markdown
    /// and SVG plots (root).
    Bench(bench::BenchArgs),
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Internal: traffic and probe agents started by `lab` inside its namespaces.
    #[command(hide = true)]
    LabAgent(lab::AgentArgs),
    /// Internal: the verbs fabric benchmark and checks run inside the Soft-RoCE guest.
    #[command(hide = true)]
    BenchGuest(bench::fabric::guest::GuestArgs),
}

/// The daemon's logging: lines go to stderr from a writer thread of their own (see
/// [`logwriter`]); the guard writes out what is queued when dropped.
fn init_logging(json: bool) -> Option<logwriter::Guard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match logwriter::start(std::io::stderr()) {
        Ok((writer, guard)) => {
            let builder = builder.with_writer(writer);
            if json {
                builder.json().init();
            } else {
                builder.init();
            }
            Some(guard)
        }
        Err(e) => {
            eprintln!("nicproxy: no log writer thread ({e}); logging to stderr directly");
            let builder = builder.with_writer(std::io::stderr);
            if json {
                builder.json().init();
            } else {
                builder.init();
            }
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format } => {
            let _log = init_logging(log_format == "json");
            match control::daemon::run_from_file(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("nicproxy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status {
            config,
            socket,
            json,
        } => status::run(config, socket, json),
        Command::Capture(args) => capture::run(args),
        Command::CheckConfig { files } => {
            let mut ok = true;
            for f in &files {
                match control::config::Config::load(f) {
                    Ok(c) => println!(
                        "{}: ok (node {}, {} peers, proxies in order: {})",
                        f.display(),
                        c.node.id,
                        c.peers.len(),
                        c.proxy_order().join(", ")
                    ),
                    Err(e) => {
                        ok = false;
                        eprintln!("{e}");
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Lab(args) => {
            let _log = init_logging(false);
            lab::main(args)
        }
        Command::LabAgent(args) => lab::agent(args),
        Command::BenchGuest(args) => {
            let _log = init_logging(false);
            bench::fabric::guest::main(args)
        }
        Command::Bench(args) => {
            let _log = init_logging(false);
            bench::main(args)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "nicproxy",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}
