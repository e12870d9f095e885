//! One lab run from start to cleanup: preflight, build, start, warm up, run the scenario,
//! report, tear down.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::sys::signal;

use super::agent::now_us;
use super::analysis::{self, Expect};
use super::args::{FabricArg, FailbackArg, LabArgs, Scenario};
use super::cmd;
use super::daemons::Daemons;
use super::error::{LabError, Result};
use super::feeds::{Agent, Shared};
use super::guest;
use super::manifest::{self, Manifest, Watcher};
use super::names::{self, Names};
use super::nodeconf::{self, Policy};
use super::report;
use super::scenario::{Ctx, START_TIMEOUT};
use super::svg;
use super::timeline::Timeline;
use super::topology::{self, Topology};
use super::verbs;

/// How much longer the lab waits for daemons, sessions and steady traffic with the verbs
/// fabric: it runs in the lab guest, whose CPU is emulated on host threads shared with
/// everything else (on a loaded host, starting the three daemons took over 3 minutes).
fn patience(args: &LabArgs) -> u32 {
    if args.fabric == FabricArg::Verbs {
        10
    } else {
        1
    }
}

/// Runs the lab; Ok(true) when every check passed.
pub fn run(args: &LabArgs) -> Result<bool> {
    preflight(args)?;
    if args.fabric == FabricArg::Verbs && !args.in_guest {
        signal::install().map_err(|e| LabError::io("installing the SIGINT/SIGTERM handlers", e))?;
        return guest::run_host(args);
    }
    signal::install().map_err(|e| LabError::io("installing the SIGINT/SIGTERM handlers", e))?;
    let pid = std::process::id();
    let run_dir = std::env::temp_dir().join(format!("{}{pid}", manifest::DIR_PREFIX));
    if run_dir.exists() {
        return Err(LabError::Precondition(format!(
            "{} exists (a lab of a recycled pid that was not cleaned up?): remove it with `nicproxy lab --cleanup {}`",
            run_dir.display(),
            run_dir.display()
        )));
    }
    create_private_dir(&run_dir)?;
    let out_dir = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("nicproxy-report-{pid}-{}", now_us() / 1_000_000))
    });
    let mut manifest = match Manifest::create(&run_dir) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(e);
        }
    };
    let watcher = match Watcher::spawn(manifest.path()) {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(e);
        }
    };
    let names = Names::new(pid, args.nodes);
    let mut lab = Lab {
        agents: Vec::new(),
        daemons: None,
        topology: None,
    };
    let result = body(args, &names, &run_dir, &out_dir, &mut manifest, &mut lab);
    if let Err(e) = &result {
        if !matches!(e, LabError::Interrupted) {
            if let Some(d) = &lab.daemons {
                eprintln!("daemon logs (last lines):\n{}", d.log_tails(30));
                report::copy_logs(&out_dir, &d.logs());
                eprintln!("logs copied to {}", out_dir.display());
            }
        }
    }
    let keep = args.keep && !matches!(result, Err(LabError::Interrupted));
    if keep {
        lab.keep();
        print_keep_help(&names, &run_dir);
    } else {
        lab.teardown();
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    watcher.finish(keep);
    // With --json the results are the last line, whatever happened.
    if args.json {
        match &result {
            Ok(j) => println!("{j}"),
            Err(e) => println!(
                "{}",
                serde_json::json!({ "ok": false, "error": e.to_string() })
            ),
        }
    }
    result.map(|j| j["ok"].as_bool() == Some(true))
}

/// What the run has started, torn down in reverse order.
struct Lab {
    agents: Vec<Agent>,
    daemons: Option<Daemons>,
    topology: Option<Topology>,
}

impl Lab {
    fn keep(&mut self) {
        self.agents.clear();
        if let Some(d) = &mut self.daemons {
            d.keep();
        }
        if let Some(t) = &mut self.topology {
            t.keep();
        }
    }

    fn teardown(&mut self) {
        for a in &mut self.agents {
            a.stop(Duration::from_secs(1));
        }
        self.agents.clear();
        if let Some(mut d) = self.daemons.take() {
            d.stop_all();
        }
        if let Some(mut t) = self.topology.take() {
            t.teardown();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn preflight(args: &LabArgs) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| LabError::io("reading /proc/self/status", e))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(LabError::Precondition(
            "the lab needs root (network namespaces, bridges, DPDK's af_packet): run it with sudo"
                .into(),
        ));
    }
    for tool in ["ip", "bridge", "ping", "kill", "sysctl", "ethtool"] {
        if !cmd::have(tool) {
            return Err(LabError::Precondition(format!(
                "`{tool}` is not installed (tests/setup.sh installs what the lab needs)"
            )));
        }
    }
    if args.fabric == FabricArg::Verbs && args.in_guest {
        verbs::preflight()?;
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))
}

/// Everything one run shares between its phases.
struct Run<'a> {
    args: &'a LabArgs,
    names: &'a Names,
    run_dir: &'a Path,
    timeline: Shared,
    started: Instant,
}

fn body(
    args: &LabArgs,
    names: &Names,
    run_dir: &Path,
    out_dir: &Path,
    manifest: &mut Manifest,
    lab: &mut Lab,
) -> Result<serde_json::Value> {
    let run = Run {
        args,
        names,
        run_dir,
        timeline: Arc::new(Mutex::new(Timeline::default())),
        started: Instant::now(),
    };
    let cuts = if args.failback == FailbackArg::Never {
        1
    } else {
        args.cuts
    };
    println!(
        "nicproxy lab: {} nodes ({}), scenario {}, fabric {}, failback {}, {cuts} cut(s); run dir {}",
        names.nodes.len(),
        node_ids(names).join(" "),
        args.scenario.name(),
        args.fabric.name(),
        args.failback.name(),
        run_dir.display()
    );
    if args.failback == FailbackArg::Never && args.cuts > 1 {
        println!(
            "  failback never: a stays on its proxy after the restore, so only one cut is made"
        );
    }
    let proxies = build(&run, manifest, lab)?;
    start_agents(&run, manifest, lab, &proxies)?;
    if matches!(args.scenario, Scenario::Faults | Scenario::Soak) {
        let suite = super::faults::run(&mut ctx(&run, manifest, lab, &proxies))?;
        stop_traffic(&run, lab);
        let logs = lab.daemons.as_ref().map(Daemons::logs).unwrap_or_default();
        return super::faults::finish(suite, &lock(&run.timeline), args, out_dir, &logs);
    }
    // The plot starts a little before the first cut.
    let plot_from = now_us().saturating_sub(200_000);
    let times = ctx(&run, manifest, lab, &proxies).run()?;
    let plot_to = now_us();
    stop_traffic(&run, lab);
    summarize(&run, lab, &proxies, &times, out_dir, (plot_from, plot_to))
}

fn node_ids(names: &Names) -> Vec<String> {
    names.nodes.iter().map(|n| n.id.clone()).collect()
}

/// The scenarios' view of the lab.
fn ctx<'a>(
    run: &'a Run<'a>,
    manifest: &'a mut Manifest,
    lab: &'a mut Lab,
    proxies: &'a [String],
) -> Ctx<'a> {
    Ctx {
        names: run.names,
        args: run.args,
        timeline: &run.timeline,
        daemons: lab
            .daemons
            .as_mut()
            .unwrap_or_else(|| unreachable!("the daemons start before any scenario")),
        agents: &mut lab.agents,
        manifest,
        proxies,
    }
}

/// Namespaces, configs, daemons, kernel interfaces; returns a's proxy order.
fn build(run: &Run<'_>, manifest: &mut Manifest, lab: &mut Lab) -> Result<Vec<String>> {
    let names = run.names;
    lab.topology = Some(Topology::build(names, manifest, run.args.fabric)?);
    println!(
        "  built ({:.1} s): switch {} (bridge {}), fabric {} (10.77.0.0/24), station {} ({}), nodes {}",
        run.started.elapsed().as_secs_f64(),
        names.switch_ns,
        names::SWITCH_BRIDGE,
        names.fabric_ns,
        names.station_ns,
        names::STATION_V4,
        names
            .nodes
            .iter()
            .map(|n| n.ns.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let configs = nodeconf::write_all(
        run.run_dir,
        names,
        Policy {
            failback: run.args.failback,
            hold_down_ms: run.args.hold_down_ms,
            fabric: run.args.fabric,
            heartbeat: match run.args.scenario {
                Scenario::Faults | Scenario::Soak => {
                    (nodeconf::FAULTS_HEARTBEAT_MS, nodeconf::FAULTS_MULTIPLIER)
                }
                _ => (nodeconf::HEARTBEAT_MS, nodeconf::MULTIPLIER),
            },
        },
    )?;
    let proxies = configs[0].config.proxy_order();
    println!(
        "  configs validated; a's proxies in order: {}",
        proxies.join(", ")
    );
    let slow = patience(run.args);
    let daemons = lab.daemons.insert(Daemons::start_all(
        names,
        &configs,
        run.run_dir,
        manifest,
        super::daemons::STATUS_TIMEOUT * slow,
    )?);
    for node in &names.nodes {
        topology::configure_kernel_if(node, START_TIMEOUT * slow, &mut || {
            if signal::stop_requested() {
                return Err(LabError::Interrupted);
            }
            daemons.check_alive()
        })?;
    }
    println!(
        "  daemons up ({:.1} s): every node's {} has its addresses",
        run.started.elapsed().as_secs_f64(),
        names::NODE_KERNEL
    );
    Ok(proxies)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_string()).collect()
}

/// The switch and node agents, then (once a has its sessions) the station's traffic, and
/// waits until that traffic flows steadily through a's NIC.
fn start_agents(
    run: &Run<'_>,
    manifest: &mut Manifest,
    lab: &mut Lab,
    proxies: &[String],
) -> Result<()> {
    let (names, args) = (run.names, run.args);
    let slow = patience(args);
    let v = names.victim();
    let mut switch = strings(&["switch", "--bridge", names::SWITCH_BRIDGE]);
    for n in &names.nodes {
        switch.extend(strings(&["--mac", &n.mac]));
    }
    let log = |name: &str| run.run_dir.join(format!("agent-{name}.log"));
    lab.agents.push(Agent::spawn(
        "switch",
        &names.switch_ns,
        &switch,
        &run.timeline,
        &log("switch"),
    )?);
    let node = strings(&[
        "node",
        "--udp-port",
        &names::ECHO_PORT.to_string(),
        "--tcp-port",
        &names::SINK_PORT.to_string(),
        "--carrier-if",
        names::NODE_KERNEL,
    ]);
    lab.agents.push(Agent::spawn(
        "node",
        &v.ns,
        &node,
        &run.timeline,
        &log("node"),
    )?);
    {
        let mut ctx = ctx(run, manifest, lab, proxies);
        if !ctx.wait_for("agents", now_us(), Duration::from_secs(5) * slow, &|t| {
            t.node_ready
        })? {
            return Err(LabError::Timeout {
                what: "the node agent to listen".into(),
                waited_ms: 5000 * u64::from(slow),
                detail: String::new(),
            });
        }
        ctx.wait_sessions(Duration::from_secs(15) * slow)?;
    }
    let station = strings(&[
        "station",
        "--target",
        &v.mgmt_v4.to_string(),
        "--udp-port",
        &names::ECHO_PORT.to_string(),
        "--tcp-port",
        &names::SINK_PORT.to_string(),
        "--interval-us",
        &args.probe_interval_us.to_string(),
        "--tcp-mbps",
        &args.tcp_mbps.to_string(),
    ]);
    lab.agents.push(Agent::spawn(
        "station",
        &names.station_ns,
        &station,
        &run.timeline,
        &log("station"),
    )?);
    let tcp = args.tcp_mbps > 0;
    let steady = ctx(run, manifest, lab, proxies).wait_for(
        "warm-up",
        now_us(),
        Duration::from_secs(15) * slow,
        &|t| {
            // The last 50 probes (20 under emulation, where the station sends a few per
            // second when the guest falls behind) all answered; each got 20 ms to come
            // back (more under emulation, where 20 ms is noise).
            t.answering(
                if slow > 1 { 20 } else { 50 },
                now_us(),
                20_000 * u64::from(slow) * 2,
            ) && t.fdb_port(&v.mac) == Some(v.switch_port.as_str())
                && (!tcp || t.tcp_bytes() > 0)
        },
    )?;
    if !steady {
        let t = lock(&run.timeline);
        return Err(LabError::Timeout {
            what: "steady traffic from the station to a through a's NIC".into(),
            waited_ms: 15_000 * u64::from(slow),
            detail: format!(
                "{} probes sent, {} answered; switch has a's MAC on {}; {} TCP bytes received",
                t.probes.iter().filter(|p| p.sent_us.is_some()).count(),
                t.probes.iter().filter(|p| p.recv_us.is_some()).count(),
                t.fdb_port(&v.mac).unwrap_or("no port"),
                t.tcp_bytes()
            ),
        });
    }
    let fdb = topology::fdb_port(names, &v.mac)?;
    println!(
        "  traffic steady ({:.1} s): bridge fdb show: {} on {}",
        run.started.elapsed().as_secs_f64(),
        v.mac,
        fdb.as_deref().unwrap_or("?")
    );
    Ok(())
}

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Timeline> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops the traffic: the station finishes its probes and closes the transfer, and the
/// sink must then see the end of the stream; then the other agents stop.
fn stop_traffic(run: &Run<'_>, lab: &mut Lab) {
    if let Some(station) = lab.agents.last_mut() {
        station.stop(Duration::from_secs(8));
    }
    if run.args.tcp_mbps > 0 {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            let done = {
                let t = lock(&run.timeline);
                t.tcp.eof_bytes.is_some() || !t.tcp.errors.is_empty()
            };
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for a in &mut lab.agents {
        a.stop(Duration::from_secs(2));
    }
}

/// The figures, the checks, the files and the summary table; returns the JSON report.
fn summarize(
    run: &Run<'_>,
    lab: &Lab,
    proxies: &[String],
    times: &[analysis::CutTimes],
    out_dir: &Path,
    (plot_from, plot_to): (u64, u64),
) -> Result<serde_json::Value> {
    let (names, args) = (run.names, run.args);
    let v = names.victim();
    let tcp = args.tcp_mbps > 0;
    let t = lock(&run.timeline);
    let results: Vec<_> = times
        .iter()
        .map(|c| analysis::evaluate(&t, c, &v.mac, &v.switch_port, tcp))
        .collect();
    let checks = analysis::checks(
        &results,
        &t,
        Expect {
            loss_budget: args.loss_budget,
            failback: args.failback != FailbackArg::Never,
            tcp,
        },
    );
    let inputs = report::Inputs {
        args,
        nodes: node_ids(names),
        proxies,
        results: &results,
        checks: &checks,
        timeline: &t,
        out_dir,
    };
    let mut j = report::json(&inputs);
    if args.fabric == FabricArg::Verbs {
        if let Some(d) = &lab.daemons {
            j["verbs"] = verbs::counters(d, names);
        }
    }
    let title = format!(
        "nicproxy lab: {} ({} nodes, failback {}), TCP {} Mbit/s station -> a",
        args.scenario.name(),
        names.nodes.len(),
        args.failback.name(),
        args.tcp_mbps
    );
    let plot = svg::render(&t, plot_from, plot_to, &title, f64::from(args.tcp_mbps));
    let logs = lab.daemons.as_ref().map(Daemons::logs).unwrap_or_default();
    report::write_files(out_dir, &j, &plot, &t, &logs)?;
    println!("{}", report::table(&inputs, &j));
    if t.bad_lines > 0 {
        println!("note: {} agent event lines did not parse", t.bad_lines);
    }
    Ok(j)
}

fn print_keep_help(n: &Names, run_dir: &Path) {
    let v = n.victim();
    println!(
        "\nthe lab is left running (--keep). Try:\n  \
         ip netns exec {st} ping {ip}\n  \
         bridge -n {sw} fdb show br {br} | grep 02:00:00:77\n  \
         ip -n {sw} link set {port} down      # cut a's NIC\n  \
         ip -n {a} addr show {kif}\n  \
         cat {dir}/a.log\n\
         remove it with: nicproxy lab --cleanup {dir}",
        st = n.station_ns,
        ip = v.mgmt_v4,
        sw = n.switch_ns,
        br = names::SWITCH_BRIDGE,
        port = v.switch_port,
        a = v.ns,
        kif = names::NODE_KERNEL,
        dir = run_dir.display(),
    );
}
