//! The Linux bonding baseline of the failover benchmark (issue 5), run where the bonding
//! module exists (the lab guest: `nicproxy lab-agent bonding`, hidden).
//!
//! It is the lab's cut-nic scenario with nicproxy replaced by bonding active-backup: the
//! same switch (a Linux bridge), the same station agent (UDP probes every millisecond and
//! a paced TCP transfer), the same node agent (echo and sink, on the bond), the same switch
//! agent watching the bridge FDB, the same cut (the active slave's switch port set down,
//! as the lab sets a node's NIC port down), and the same analysis
//! ([`super::analysis::evaluate`], [`super::report::json`]), so the figures mean the same.
//!
//! The bond is set up as an operator would for a pair of management NICs:
//! `mode active-backup`, `miimon` as measured, `primary` the first slave with
//! `primary_reselect always` (so that it fails back when the link returns, as nicproxy does
//! with `failback = always`), `fail_over_mac none` (the default: the MAC moves with the
//! active slave, and the switch learns it from the gratuitous ARPs and from traffic),
//! `num_grat_arp` = `num_unsol_na` = 3 every 50 ms (nicproxy's `announce` defaults; the
//! delay rounded up to a multiple of `miimon`), `updelay` and `downdelay` 0 (the defaults).
//!
//! Output: progress on stderr; on stdout one line `{"bonding_run": ...}` per run as it
//! ends, then one JSON object (one line): the kernel, each run's report (the lab's keys plus
//! the bond's settings as the kernel reports them, and the station's probe send gaps), the
//! trials of the lowest `miimon`, and which one was lowest.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::agent::now_us;
use super::analysis::{self, CutTimes, Expect};
use super::args::LabArgs;
use super::bonding_net::{self, BondConfig, BondNet, MAC, PORTS, SLAVES};
use super::cmd::run;
use super::error::{LabError, Result};
use super::feeds::{Agent, Shared};
use super::names;
use super::report;
use super::timeline::{MarkKind, Timeline};

/// Options of `nicproxy lab-agent bonding`.
#[derive(Debug, Clone, clap::Args)]
pub struct BondingArgs {
    /// `miimon` values to measure, each over `--cuts` cuts.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub miimon: Vec<u32>,
    /// Candidates for the lowest `miimon` that works, tried in this order over
    /// `--trial-cuts` cuts each; the first that works is then measured over `--cuts`.
    #[arg(long, value_delimiter = ',')]
    pub lowest_of: Vec<u32>,
    /// Cuts per measured `miimon`.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub cuts: u32,
    /// Cuts per trial of a candidate for the lowest `miimon`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub trial_cuts: u32,
    /// `num_grat_arp` and `num_unsol_na`.
    #[arg(long, default_value_t = 3)]
    pub num_grat_arp: u8,
    /// Wanted delay between those announcements (`peer_notify_delay`, rounded up to a
    /// multiple of `miimon`).
    #[arg(long, default_value_t = 50, value_name = "MS")]
    pub notify_delay_ms: u32,
    /// How long each state (failed over, restored) lasts before the next step.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub dwell_ms: u64,
    /// Interval of the station's UDP probes.
    #[arg(long, default_value_t = 1000, value_name = "US")]
    pub probe_interval_us: u64,
    /// Rate of the station's TCP transfer, Mbit/s (0: none).
    #[arg(long, default_value_t = 20, value_name = "MBPS")]
    pub tcp_mbps: u32,
    /// Most probes one failover may lose before its check fails.
    #[arg(long, default_value_t = 100, value_name = "PROBES")]
    pub loss_budget: u64,
}

/// What "works" means for a `miimon` value, in the report's words.
pub const WORKS_MEANS: &str = "every cut failed over (a probe answered through the backup \
slave and the bridge FDB on its port) and back (FDB on the primary's port again), the bond \
counted exactly one link failure per cut on the primary and none on the backup (no \
spurious failover while both links were up), and the TCP transfer survived (no reset, every \
byte delivered)";

/// How long a failover or a failback may take before the step counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Warm-up limit: the emulated CPU of the guest is slow to start the agents.
const WARM_UP: Duration = Duration::from_secs(30);

/// Runs the baseline and prints its JSON object on stdout.
pub fn main(a: &BondingArgs) -> Result<()> {
    load_module()?;
    let mut runs = Vec::new();
    for &m in &a.miimon {
        runs.push(emit(measure_or_error(a, m, a.cuts, "run")));
    }
    let mut trials = Vec::new();
    let mut lowest = None;
    for &m in &a.lowest_of {
        let t = emit(measure_or_error(a, m, a.trial_cuts, "trial"));
        let works = t["works"].as_bool() == Some(true);
        trials.push(t);
        if works {
            lowest = Some(m);
            break;
        }
    }
    if let Some(m) = lowest {
        if a.miimon.contains(&m) {
            // Already measured in full.
        } else if a.trial_cuts >= a.cuts {
            let mut t = trials.last().cloned().unwrap_or(Value::Null);
            t["role"] = json!("run");
            runs.push(emit(t));
        } else {
            runs.push(emit(measure_or_error(a, m, a.cuts, "run")));
        }
    }
    let out = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string()).unwrap_or_default(),
        "kernel_hz": kernel_hz(),
        "works_means": WORKS_MEANS,
        "lowest_of": a.lowest_of,
        "lowest_miimon": lowest,
        "runs": runs,
        "trials": trials,
    });
    println!("{out}");
    Ok(())
}

/// Prints one run's report as soon as it is done (`{"bonding_run": ...}`, one line), so
/// that a guest that times out later still hands over what it measured.
fn emit(run: Value) -> Value {
    println!("{}", json!({ "bonding_run": run }));
    run
}

/// The station's gaps between consecutive probes, ms: (p99, max). A probe every
/// millisecond means gaps of 1 ms; longer ones are time the station was not scheduled
/// (the guest's emulated CPU starved by its host), during which no failover can be seen.
fn send_gaps(t: &Timeline) -> (Option<f64>, Option<f64>) {
    let sent: Vec<u64> = t.probes.iter().filter_map(|p| p.sent_us).collect();
    let gaps: Vec<f64> = sent
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]) as f64 / 1000.0)
        .collect();
    (
        analysis::percentile(&gaps, 99.0),
        analysis::percentile(&gaps, 100.0),
    )
}

/// `modprobe bonding` without the default bond0 it would create in init_net.
fn load_module() -> Result<()> {
    if std::path::Path::new("/sys/module/bonding").exists() {
        return Ok(());
    }
    run("modprobe", &["bonding", "max_bonds=0"]).map(drop).map_err(|e| {
        LabError::Precondition(format!(
            "this kernel has no bonding module ({e}): run the bonding baseline in the lab guest (tests/lab/vm.sh --no-rdma)"
        ))
    })
}

/// The kernel's tick rate from its config next to its modules (the lab guest links
/// /lib/modules/<release> into the unpacked kernel package): miimon is rounded to ticks.
fn kernel_hz() -> Option<u32> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim();
    let moddir = std::fs::canonicalize(format!("/lib/modules/{release}")).ok()?;
    let candidates = [
        moddir.join(format!("../../../boot/config-{release}")),
        format!("/boot/config-{release}").into(),
    ];
    candidates.iter().find_map(|p| {
        std::fs::read_to_string(p)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("CONFIG_HZ=")?.parse().ok())
    })
}

fn measure_or_error(a: &BondingArgs, miimon: u32, cuts: u32, role: &str) -> Value {
    match measure(a, miimon, cuts, role) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("bonding miimon={miimon} ({role}): failed: {e}");
            json!({ "miimon": miimon, "role": role, "ok": false, "works": false,
                    "error": e.to_string() })
        }
    }
}

fn lock(t: &Shared) -> MutexGuard<'_, Timeline> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Polls `cond` every millisecond until it holds (true) or `timeout` passes (false);
/// an agent that died is an error.
fn wait(
    tl: &Shared,
    agents: &mut [Agent],
    timeout: Duration,
    cond: &dyn Fn(&Timeline) -> bool,
) -> Result<bool> {
    let t0 = Instant::now();
    loop {
        for a in agents.iter_mut() {
            a.check_alive()?;
        }
        if cond(&lock(tl)) {
            return Ok(true);
        }
        if t0.elapsed() >= timeout {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_string()).collect()
}

/// One bond with this `miimon`, `cuts` cuts and restores under traffic; the report.
fn measure(a: &BondingArgs, miimon: u32, cuts: u32, role: &str) -> Result<Value> {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("nicproxy-bonding-{pid}-{role}-{miimon}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let result = measure_in(a, miimon, cuts, role, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure_in(
    a: &BondingArgs,
    miimon: u32,
    cuts: u32,
    role: &str,
    dir: &std::path::Path,
) -> Result<Value> {
    let t_start = Instant::now();
    let load_before = crate::loadavg::one_minute();
    let notify = a.notify_delay_ms.div_ceil(miimon.max(1)) * miimon.max(1);
    let cfg = BondConfig {
        miimon,
        num_grat_arp: a.num_grat_arp,
        peer_notify_delay_ms: notify,
    };
    let tag = format!("npb{:x}{}{miimon}", std::process::id(), &role[..1]);
    eprintln!("bonding miimon={miimon} ({role}, {cuts} cuts): building {tag}-*");
    // Declared before the agents, so dropped after them.
    let net = BondNet::build(&tag, cfg, dir)?;
    let tl: Shared = Arc::new(Mutex::new(Timeline::default()));
    let mut agents: Vec<Agent> = Vec::new();
    let log = |name: &str| dir.join(format!("agent-{name}.log"));
    agents.push(Agent::spawn(
        "switch",
        &net.switch_ns,
        &strings(&["switch", "--bridge", bonding_net::BRIDGE, "--mac", MAC]),
        &tl,
        &log("switch"),
    )?);
    agents.push(Agent::spawn(
        "node",
        &net.node_ns,
        &strings(&[
            "node",
            "--udp-port",
            &names::ECHO_PORT.to_string(),
            "--tcp-port",
            &names::SINK_PORT.to_string(),
            "--carrier-if",
            bonding_net::BOND,
        ]),
        &tl,
        &log("node"),
    )?);
    if !wait(&tl, &mut agents, WARM_UP, &|t| t.node_ready)? {
        return Err(LabError::Timeout {
            what: "the node agent on the bond to listen".into(),
            waited_ms: WARM_UP.as_millis() as u64,
            detail: String::new(),
        });
    }
    agents.push(Agent::spawn(
        "station",
        &net.station_ns,
        &strings(&[
            "station",
            "--target",
            &bonding_net::NODE_V4.to_string(),
            "--udp-port",
            &names::ECHO_PORT.to_string(),
            "--tcp-port",
            &names::SINK_PORT.to_string(),
            "--interval-us",
            &a.probe_interval_us.to_string(),
            "--tcp-mbps",
            &a.tcp_mbps.to_string(),
        ]),
        &tl,
        &log("station"),
    )?);
    let tcp = a.tcp_mbps > 0;
    let steady = |t: &Timeline| {
        t.answering(50, now_us(), 20_000)
            && t.fdb_port(MAC) == Some(PORTS[0])
            && (!tcp || t.tcp_bytes() > 0)
    };
    if !wait(&tl, &mut agents, WARM_UP, &steady)? {
        let t = lock(&tl);
        return Err(LabError::Timeout {
            what: "steady traffic from the station to the bond through its primary".into(),
            waited_ms: WARM_UP.as_millis() as u64,
            detail: format!(
                "{} probes sent, {} answered; bridge has the MAC on {}; {} TCP bytes",
                t.probes.iter().filter(|p| p.sent_us.is_some()).count(),
                t.probes.iter().filter(|p| p.recv_us.is_some()).count(),
                t.fdb_port(MAC).unwrap_or("no port"),
                t.tcp_bytes()
            ),
        });
    }
    let dwell = Duration::from_millis(a.dwell_ms);
    let mut times = Vec::new();
    for k in 1..=cuts {
        times.push(cut_and_restore(&net, &tl, &mut agents, k, cuts, dwell)?);
    }
    stop_traffic(&tl, &mut agents, tcp);
    let proc_text = net.proc_status().unwrap_or_default();
    let param = |n: &str| net.param(n).unwrap_or_default();
    let bond = json!({
        "mode": bonding_net::proc_field(&proc_text, "Bonding Mode"),
        "primary": bonding_net::proc_field(&proc_text, "Primary Slave"),
        "active_slave": bonding_net::proc_field(&proc_text, "Currently Active Slave"),
        "miimon_ms": param("miimon"),
        "updelay_ms": param("updelay"),
        "downdelay_ms": param("downdelay"),
        "peer_notif_delay_ms": param("peer_notif_delay"),
        "num_grat_arp": param("num_grat_arp"),
        "num_unsol_na": param("num_unsol_na"),
        "fail_over_mac": param("fail_over_mac"),
        "use_carrier": param("use_carrier"),
        "link_failures": bonding_net::link_failures(&proc_text),
    });
    drop(agents);
    drop(net);

    let t = lock(&tl);
    let results: Vec<_> = times
        .iter()
        .map(|c| analysis::evaluate(&t, c, MAC, PORTS[0], tcp))
        .collect();
    let checks = analysis::checks(
        &results,
        &t,
        Expect {
            loss_budget: a.loss_budget,
            failback: true,
            tcp,
        },
    );
    let lab_args = as_lab_args(a, cuts)?;
    let proxies = [SLAVES[1].to_string()];
    let inputs = report::Inputs {
        args: &lab_args,
        nodes: vec![bonding_net::BOND.to_string()],
        proxies: &proxies,
        results: &results,
        checks: &checks,
        timeline: &t,
        out_dir: dir,
    };
    let mut j = report::json(&inputs);
    eprintln!("{}", report::table(&inputs, &j));
    let failures = bonding_net::link_failures(&proc_text);
    let count = |s: &str| failures.iter().find(|(n, _)| n == s).map(|(_, c)| *c);
    let every_cut = results
        .iter()
        .all(|r| r.failover_ms.is_some() && r.fdb_move_ms.is_some() && r.fdb_back == Some(true));
    let no_spurious = count(SLAVES[0]) == Some(u64::from(cuts)) && count(SLAVES[1]) == Some(0);
    // The transfer itself: no reset and every byte delivered. A proxied period without
    // bytes (TCP backing off after the losses of a slow failover) is reported by the
    // checks, but the connection survived it.
    let tcp_ok = !tcp
        || checks
            .iter()
            .any(|c| c.name.starts_with("the TCP transfer survives") && c.ok);
    j["works"] = json!(every_cut && no_spurious && tcp_ok);
    j["works_detail"] = json!({
        "every_cut_failed_over_and_back": every_cut,
        "one_link_failure_per_cut_on_primary_none_on_backup": no_spurious,
        "tcp_survived": tcp_ok,
    });
    j["miimon"] = json!(miimon);
    j["role"] = json!(role);
    j["fabric"] = json!("none: Linux bonding active-backup");
    j["scenario"] = json!("cut-nic: the active slave's switch port set down, then up");
    j["nodes"] = json!([bonding_net::BOND]);
    j["proxy_order"] = json!([SLAVES[1]]);
    j["bond"] = bond;
    j["load_before"] = json!(load_before);
    j["load_after"] = json!(crate::loadavg::one_minute());
    j["seconds"] = json!(t_start.elapsed().as_secs_f64());
    let (gap_p99, gap_max) = send_gaps(&t);
    j["probe_send_gap_ms_p99"] = json!(gap_p99);
    j["probe_send_gap_ms_max"] = json!(gap_max);
    j.as_object_mut().map(|o| o.remove("out_dir"));
    Ok(j)
}

/// The lab's options for the report: the same keys and budgets, with no hold-down
/// (bonding's `updelay` is 0).
fn as_lab_args(a: &BondingArgs, cuts: u32) -> Result<LabArgs> {
    #[derive(clap::Parser)]
    struct AsLab {
        #[command(flatten)]
        lab: LabArgs,
    }
    use clap::Parser as _;
    let s = |v: &dyn std::fmt::Display| v.to_string();
    AsLab::try_parse_from([
        "lab".to_string(),
        "--cuts".into(),
        s(&cuts),
        "--hold-down-ms".into(),
        "0".into(),
        "--dwell-ms".into(),
        s(&a.dwell_ms),
        "--probe-interval-us".into(),
        s(&a.probe_interval_us),
        "--tcp-mbps".into(),
        s(&a.tcp_mbps),
        "--loss-budget".into(),
        s(&a.loss_budget),
    ])
    .map(|x| x.lab)
    .map_err(|e| LabError::Precondition(format!("the bonding run's lab options: {e}")))
}

/// One cut of the active slave's switch port and its restore, timed as the lab's
/// cut-nic scenario times them.
fn cut_and_restore(
    net: &BondNet,
    tl: &Shared,
    agents: &mut [Agent],
    k: u32,
    cuts: u32,
    dwell: Duration,
) -> Result<CutTimes> {
    let (own, backup) = (PORTS[0], PORTS[1]);
    let cut_before = now_us();
    super::topology::set_port(&net.switch_ns, own, false)?;
    let cut = now_us();
    lock(tl).mark(cut, MarkKind::Cut, format!("cut {k}"));
    let over = |t: &Timeline| {
        t.fdb_at(MAC, backup, cut).is_some() && t.first_answered_after(cut).is_some()
    };
    let done = wait(tl, agents, STEP_TIMEOUT, &over)?;
    let failover_done = done.then(now_us);
    std::thread::sleep(dwell);
    let failover_end = now_us();
    let restore_before = now_us();
    super::topology::set_port(&net.switch_ns, own, true)?;
    let restore = now_us();
    lock(tl).mark(restore, MarkKind::Restore, format!("restore {k}"));
    // Back on the primary, and steady again before the next cut.
    let back =
        |t: &Timeline| t.fdb_at(MAC, own, restore).is_some() && t.answering(20, now_us(), 20_000);
    let fb = wait(tl, agents, STEP_TIMEOUT, &back)?;
    let failback_done = fb.then(now_us);
    std::thread::sleep(dwell);
    let restore_end = now_us();
    let ms = |x: Option<u64>, from: u64| {
        x.map_or("not seen".to_string(), |x| {
            format!("{:.1} ms", (x - from) as f64 / 1000.0)
        })
    };
    eprintln!(
        "bonding cut {k}/{cuts}: failover seen after {}, failback seen after {}",
        ms(failover_done, cut),
        ms(failback_done, restore)
    );
    Ok(CutTimes {
        index: k,
        proxy: SLAVES[1].to_string(),
        proxy_port: backup.to_string(),
        cut_before,
        cut,
        failover_done,
        failover_end,
        restore_before,
        restore,
        failback_done: Some(failback_done),
        restore_end,
        ..CutTimes::default()
    })
}

/// The station finishes its probes and closes the transfer; the sink must then see the
/// end of the stream; then the other agents stop.
fn stop_traffic(tl: &Shared, agents: &mut [Agent], tcp: bool) {
    if let Some(station) = agents.last_mut() {
        station.stop(Duration::from_secs(8));
    }
    if tcp {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            let done = {
                let t = lock(tl);
                t.tcp.eof_bytes.is_some() || !t.tcp.errors.is_empty()
            };
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for a in agents.iter_mut() {
        a.stop(Duration::from_secs(2));
    }
}
