//! `nicproxy lab --fabric verbs` on the host: the same lab, run inside the Soft-RoCE guest.
//!
//! The host kernel may have no RDMA at all, so the lab boots the project's lab guest
//! (tests/lab/vm.sh: Debian's kernel under QEMU, the host's root read-only with a RAM
//! overlay, so it runs this very binary) and runs `nicproxy lab --fabric verbs --in-guest`
//! there with the same options. The guest's stdout is this command's: the live state
//! lines and the summary stream through as they come. The output directory is shared
//! read-write with the guest (vm.sh `--share`), so report.json, throughput.svg, the
//! events and the daemons' logs land on the host directly, also when the run fails.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::agent::now_us;
use super::args::LabArgs;
use super::error::{LabError, Result};

/// Environment variable naming vm.sh explicitly.
pub const VM_SH_ENV: &str = "NICPROXY_VM_SH";
/// Where vm.sh lives in a checkout.
const VM_SH: &str = "tests/lab/vm.sh";

/// vm.sh's exit statuses of its own (the command's otherwise).
const EXIT_TIMEOUT: i32 = 124;
const EXIT_GUEST: i32 = 125;
const EXIT_HOST: i32 = 126;

/// Finds tests/lab/vm.sh: `$NICPROXY_VM_SH`, else under the current directory, else under
/// an ancestor of this executable (target/debug/nicproxy in a checkout).
pub fn locate_vm_sh() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(VM_SH_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LabError::Precondition(format!(
                "{VM_SH_ENV}={} is not a file",
                p.display()
            )))
        };
    }
    let mut tried = Vec::new();
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let candidates = cwd.iter().map(|d| d.join(VM_SH)).chain(
        exe.iter()
            .flat_map(|e| e.ancestors().skip(1))
            .map(|d| d.join(VM_SH)),
    );
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(LabError::Precondition(format!(
        "--fabric verbs runs the lab inside the Soft-RoCE guest, and its launcher {VM_SH} was not found (tried {}): run from a nicproxy checkout or set {VM_SH_ENV}",
        tried.join(", ")
    )))
}

/// Station traffic in the guest when the command line left it at the host's defaults:
/// probes every 10 ms instead of every 1 ms, TCP at 2 Mbit/s instead of 20. Every frame
/// crosses an emulated CPU several times (af_packet, the worker, TAP, the kernel, the
/// agents); at the host's rates the guest spent its time on the traffic, probes queued
/// for seconds and the daemons' heartbeats stalled for half a second, so the lab never
/// settled. Explicit values are passed through as given.
const GUEST_PROBE_INTERVAL_US: u64 = 10_000;
/// See [`GUEST_PROBE_INTERVAL_US`].
const GUEST_TCP_MBPS: u32 = 2;
/// The host lab's defaults (args.rs), which the guest replaces.
const HOST_PROBE_INTERVAL_US: u64 = 1000;
/// See [`HOST_PROBE_INTERVAL_US`].
const HOST_TCP_MBPS: u32 = 20;

/// The station's probe interval and TCP rate in the guest (see [`GUEST_PROBE_INTERVAL_US`]).
fn guest_traffic(args: &LabArgs) -> (u64, u32) {
    let probe = if args.probe_interval_us == HOST_PROBE_INTERVAL_US {
        GUEST_PROBE_INTERVAL_US
    } else {
        args.probe_interval_us
    };
    let tcp = if args.tcp_mbps == HOST_TCP_MBPS {
        GUEST_TCP_MBPS
    } else {
        args.tcp_mbps
    };
    (probe, tcp)
}

/// The inner command's options: the same lab, told that it runs in the guest.
fn inner_args(args: &LabArgs, out: &Path) -> Vec<String> {
    let (probe_us, tcp_mbps) = guest_traffic(args);
    let mut v: Vec<String> = [
        "lab",
        "--fabric",
        "verbs",
        "--in-guest",
        "--nodes",
        &args.nodes.to_string(),
        "--cuts",
        &args.cuts.to_string(),
        "--scenario",
        args.scenario.name(),
        "--failback",
        args.failback.name(),
        "--hold-down-ms",
        &args.hold_down_ms.to_string(),
        "--dwell-ms",
        &args.dwell_ms.to_string(),
        "--probe-interval-us",
        &probe_us.to_string(),
        "--tcp-mbps",
        &tcp_mbps.to_string(),
        "--loss-budget",
        &args.loss_budget.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    v.push("--out".into());
    v.push(out.display().to_string());
    if args.json {
        v.push("--json".into());
    }
    v
}

/// A guest time limit that grows with the work asked for: boot and set-up, then each cut
/// (cut, failover, dwell, restore, hold-down, failback) under emulation.
fn guest_timeout_s(args: &LabArgs) -> u64 {
    let per_cut = 120 + 3 * (args.hold_down_ms + args.dwell_ms) / 1000;
    900 + u64::from(args.cuts) * per_cut
}

/// Guest memory: DPDK takes 256 MiB per daemon (`--no-huge -m 256`), the overlay and the
/// lab the rest.
fn guest_mem(args: &LabArgs) -> String {
    format!("{}M", 1024 + 384 * u32::from(args.nodes))
}

/// Runs the lab in the guest; Ok(true) when every check passed there.
pub fn run_host(args: &LabArgs) -> Result<bool> {
    let result = run_guest(args);
    match result {
        Ok((ok, json)) => {
            if args.json {
                println!("{json}");
            }
            Ok(ok)
        }
        Err(e) => {
            if args.json && !matches!(e, LabError::Interrupted) {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "fabric": "verbs", "error": e.to_string() })
                );
            }
            Err(e)
        }
    }
}

/// Boots the guest, streams its output, and returns whether the checks passed and the
/// JSON object to print last.
fn run_guest(args: &LabArgs) -> Result<(bool, serde_json::Value)> {
    if args.keep {
        return Err(LabError::Unsupported(
            "--keep does not apply to --fabric verbs: the lab runs in a guest that powers off at the end".into(),
        ));
    }
    let vm_sh = locate_vm_sh()?;
    let exe =
        std::env::current_exe().map_err(|e| LabError::io("finding the nicproxy executable", e))?;
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "nicproxy-report-{}-{}",
            std::process::id(),
            now_us() / 1_000_000
        ))
    });
    std::fs::create_dir_all(&out)
        .map_err(|e| LabError::io(format!("creating {}", out.display()), e))?;
    let out = out
        .canonicalize()
        .map_err(|e| LabError::io(format!("resolving {}", out.display()), e))?;
    let timeout = guest_timeout_s(args);
    let (probe_us, tcp_mbps) = guest_traffic(args);
    println!(
        "nicproxy lab: --fabric verbs runs in the Soft-RoCE guest ({}, emulated CPU: slower than the host, its figures are the guest's); station traffic there: probes every {probe_us} us, TCP {tcp_mbps} Mbit/s; results in {}",
        vm_sh.display(),
        out.display()
    );
    let mut command = Command::new(&vm_sh);
    command
        .args(["--no-rdma", "--mem", &guest_mem(args), "--timeout"])
        .arg(timeout.to_string())
        .arg("--share")
        .arg(&out)
        .arg("--")
        .arg(&exe)
        .args(inner_args(args, &out))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let t0 = Instant::now();
    let mut child = command.spawn().map_err(|source| LabError::Spawn {
        what: format!("{} -- {} lab ...", vm_sh.display(), exe.display()),
        source,
    })?;
    // The state lines pass through as they come; the inner JSON line (with --json, the
    // inner lab's last line) is held back to be printed last, after vm.sh's own lines.
    let mut json: Option<serde_json::Value> = None;
    if let Some(stdout) = child.stdout.take() {
        let mut lock = std::io::stdout().lock();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if args.json && line.starts_with('{') {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    json = Some(v);
                    continue;
                }
            }
            let _ = writeln!(lock, "{line}");
            let _ = lock.flush();
        }
    }
    let status = child
        .wait()
        .map_err(|e| LabError::io(format!("waiting for {}", vm_sh.display()), e))?;
    let wall = t0.elapsed().as_secs_f64();
    let code = status.code();
    if dataplane::sys::signal::stop_requested() || code == Some(130) || code == Some(143) {
        return Err(LabError::Interrupted);
    }
    let guest = serde_json::json!({
        "vm_sh": vm_sh.display().to_string(),
        "wall_s": (wall * 10.0).round() / 10.0,
        "exit": code,
        "load_avg": crate::loadavg::one_minute(),
    });
    match code {
        Some(0 | 1) => {
            let mut j = json.unwrap_or_else(|| serde_json::json!({ "ok": code == Some(0) }));
            j["guest"] = guest;
            println!("guest run: {wall:.1} s wall time, boot included");
            Ok((code == Some(0), j))
        }
        Some(EXIT_TIMEOUT) => Err(LabError::Timeout {
            what: "the lab inside the Soft-RoCE guest".into(),
            waited_ms: timeout * 1000,
            detail: format!("partial results in {}", out.display()),
        }),
        Some(EXIT_GUEST) => Err(LabError::Exited {
            what: "the Soft-RoCE guest".into(),
            detail: "it did not boot, crashed, or its set-up failed (see the console lines above)"
                .into(),
        }),
        Some(EXIT_HOST) => Err(LabError::Precondition(format!(
            "the host lacks what the Soft-RoCE guest needs: run `{} --prepare` (as root)",
            vm_sh.display()
        ))),
        _ => Err(LabError::Exited {
            what: "the lab inside the Soft-RoCE guest".into(),
            detail: format!(
                "{status}; {}",
                json.and_then(|j| j.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "see its messages above".into())
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        lab: LabArgs,
    }

    fn parse(args: &[&str]) -> LabArgs {
        Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .lab
    }

    #[test]
    fn inner_command_line_parses_back_to_the_same_lab() {
        let outer = parse(&[
            "--fabric",
            "verbs",
            "--cuts",
            "2",
            "--nodes",
            "4",
            "--scenario",
            "kill-proxy",
            "--failback",
            "better",
            "--hold-down-ms",
            "700",
            "--tcp-mbps",
            "0",
            "--json",
        ]);
        let inner_v = inner_args(&outer, Path::new("/tmp/out dir"));
        let inner = parse(
            &inner_v
                .iter()
                .skip(1)
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert!(inner.in_guest && !outer.in_guest);
        assert_eq!(inner.fabric, super::super::args::FabricArg::Verbs);
        assert_eq!(inner.cuts, 2);
        assert_eq!(inner.nodes, 4);
        assert_eq!(inner.scenario, outer.scenario);
        assert_eq!(inner.failback, outer.failback);
        assert_eq!(inner.hold_down_ms, 700);
        assert_eq!(inner.tcp_mbps, 0, "explicit values pass through");
        assert_eq!(
            inner.probe_interval_us, GUEST_PROBE_INTERVAL_US,
            "defaults are lighter"
        );
        assert!(inner.json);
        assert_eq!(inner.out.as_deref(), Some(Path::new("/tmp/out dir")));
        assert!(guest_timeout_s(&outer) > 600);
        assert_eq!(guest_mem(&outer), "2560M");
    }

    #[test]
    fn vm_sh_from_the_environment_must_exist() {
        // Only the explicit variable is tested: the search depends on where tests run.
        std::env::set_var(VM_SH_ENV, "/nonexistent/vm.sh");
        let err = locate_vm_sh().unwrap_err().to_string();
        std::env::remove_var(VM_SH_ENV);
        assert!(err.contains("NICPROXY_VM_SH=/nonexistent/vm.sh"), "{err}");
    }
}
