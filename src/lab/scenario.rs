//! The scenarios: what the lab breaks and restores, in which order, and what it waits for,
//! with a live state line while it waits. They only record times (see
//! [`super::analysis::CutTimes`]); the figures are computed after the run.

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use dataplane::sys::signal;

use super::agent::now_us;
use super::analysis::{BroadcastResult, CutTimes, IsolateTimes, KillTimes};
use super::args::{FailbackArg, LabArgs, Scenario};
use super::cmd::{exec_in, ip_in};
use super::daemons::Daemons;
use super::error::{LabError, Result};
use super::feeds::{Agent, Shared};
use super::manifest::Manifest;
use super::names::{self, Names, NodeNames};
use super::timeline::{MarkKind, Timeline};
use super::topology;

/// How long a failover, a takeover or a carrier change may take before the step counts as
/// failed (the run goes on, to report it).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a daemon may take to start (DPDK initialisation included).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the scenarios work on.
pub struct Ctx<'a> {
    /// The run's names.
    pub names: &'a Names,
    /// The options.
    pub args: &'a LabArgs,
    /// The shared timeline.
    pub timeline: &'a Shared,
    /// The daemons.
    pub daemons: &'a mut Daemons,
    /// The agents.
    pub agents: &'a mut [Agent],
    /// The manifest (restarted daemons are recorded).
    pub manifest: &'a mut Manifest,
    /// a's proxies, in order.
    pub proxies: &'a [String],
}

impl Ctx<'_> {
    pub(super) fn tl(&self) -> MutexGuard<'_, Timeline> {
        self.timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn victim(&self) -> &NodeNames {
        self.names.victim()
    }

    pub(super) fn node(&self, id: &str) -> Result<&NodeNames> {
        self.names
            .node(id)
            .ok_or_else(|| LabError::Precondition(format!("a's proxy {id} is not a lab node")))
    }

    /// Interrupt, dead daemon or dead agent: the run cannot go on.
    pub fn check(&mut self) -> Result<()> {
        if signal::stop_requested() {
            return Err(LabError::Interrupted);
        }
        self.daemons.check_alive()?;
        for a in self.agents.iter_mut() {
            a.check_alive()?;
        }
        Ok(())
    }

    /// When a port change issued at `before` and returned at `after` took effect, as the
    /// switch agent saw it (its report can lag a few ms); `after` if it saw nothing.
    pub(super) fn took_effect(&self, port: &str, up: bool, before: u64, after: u64) -> u64 {
        let t0 = Instant::now();
        loop {
            if let Some(t) = self.tl().link_change(port, up, before, after) {
                return t;
            }
            if t0.elapsed() > Duration::from_millis(30) {
                return after;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub(super) fn mark(&self, t: u64, kind: MarkKind, label: String) {
        self.tl().mark(t, kind, label);
    }

    /// Polls `cond` every millisecond until it holds (true) or `timeout` passes (false),
    /// printing a state line every `period` and whenever the FDB or the carrier changes.
    pub fn wait_for(
        &mut self,
        phase: &str,
        since: u64,
        timeout: Duration,
        cond: &dyn Fn(&Timeline) -> bool,
    ) -> Result<bool> {
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut next_line = t0;
        let mut seen = self.changes();
        loop {
            self.check()?;
            let met = cond(&self.tl());
            let changes = self.changes();
            if met || changes != seen || Instant::now() >= next_line {
                self.live(phase, since);
                seen = changes;
                next_line = Instant::now() + period;
            }
            if met {
                return Ok(true);
            }
            if t0.elapsed() >= timeout {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stays in the current state for `d`, printing state lines.
    pub fn observe(&mut self, phase: &str, since: u64, d: Duration) -> Result<()> {
        self.wait_for(phase, since, d, &|_| false).map(drop)
    }

    fn changes(&self) -> (usize, usize) {
        let t = self.tl();
        (t.fdb.len(), t.carrier.len())
    }

    /// One live state line: time since `since`, where the switch has a's MAC, probes lost
    /// since then, TCP bytes, and a's daemon's own view.
    fn live(&self, phase: &str, since: u64) {
        let now = now_us();
        let v = self.victim();
        let (port, lost, bytes, carrier) = {
            let t = self.tl();
            let port = t.fdb_port(&v.mac).map(str::to_string);
            // Echoes of the last 20 ms may still be on their way.
            let lost = t.lost_in(
                since.saturating_sub(super::analysis::IN_FLIGHT_US),
                now.saturating_sub(20_000),
            );
            (port, lost, t.tcp_bytes(), t.carrier_now())
        };
        let owner = port
            .as_deref()
            .and_then(|p| self.names.port_owner(p))
            .map_or(String::new(), |n| format!(" ({})", n.id));
        let daemon = self.daemons.status(&v.id).map_or_else(
            || "a: (no status)".to_string(),
            |s| {
                format!(
                    "a: uplink={} carrier={}",
                    s.get("uplink").and_then(|u| u.as_str()).unwrap_or("?"),
                    match s.get("carrier").and_then(serde_json::Value::as_bool) {
                        Some(true) => "on",
                        Some(false) => "off",
                        None => "?",
                    }
                )
            },
        );
        let kernel = match carrier {
            Some(true) => "up",
            Some(false) => "NO-CARRIER",
            None => "-",
        };
        println!(
            "  [{phase:<12}] {:>+9.1} ms  fdb {}={}{owner:<4}  lost {lost:>5}  tcp {:>8.2} MB  mgmt0 {kernel:<10}  {daemon}",
            (now as f64 - since as f64) / 1000.0,
            v.id,
            port.as_deref().unwrap_or("-"),
            bytes as f64 / 1e6,
        );
    }

    /// Prints every daemon's view (path, counters, clients) when a step takes longer than
    /// it should, so that a slow or failed step shows where frames stopped.
    pub(super) fn diagnose(&self, why: &str) {
        println!("  {why}; the daemons report:");
        for n in &self.names.nodes {
            let Some(s) = self.daemons.status(&n.id) else {
                println!("    {}: no status", n.id);
                continue;
            };
            let ports = s
                .get("ports")
                .and_then(|p| p.as_array())
                .map(|list| {
                    list.iter()
                        .map(|p| {
                            format!(
                                "{} rx {} tx {}",
                                p.get("port").and_then(|x| x.as_str()).unwrap_or("?"),
                                p.get("rx_packets").unwrap_or(&serde_json::Value::Null),
                                p.get("tx_packets").unwrap_or(&serde_json::Value::Null)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let clients = s
                .get("clients")
                .and_then(|c| c.as_array())
                .map(|list| {
                    list.iter()
                        .filter_map(|c| c.get("peer").and_then(|p| p.as_str()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            println!(
                "    {}: uplink={} nic_link={} carrier={} clients=[{clients}] {ports} drops={}",
                n.id,
                s.get("uplink").and_then(|u| u.as_str()).unwrap_or("?"),
                s.get("nic_link").unwrap_or(&serde_json::Value::Null),
                s.get("carrier").unwrap_or(&serde_json::Value::Null),
                s.get("drops").unwrap_or(&serde_json::Value::Null),
            );
        }
    }

    /// Waits until a's sessions with every peer are up, as its daemon reports (no status:
    /// a fixed settle time instead).
    pub fn wait_sessions(&mut self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        let a = self.victim().id.clone();
        loop {
            self.check()?;
            match self.daemons.status(&a) {
                Some(s) => {
                    let sessions = s.get("sessions").and_then(|x| x.as_array());
                    let up = sessions.is_some_and(|list| {
                        self.proxies.iter().all(|p| {
                            list.iter().any(|x| {
                                x.get("peer").and_then(|v| v.as_str()) == Some(p.as_str())
                                    && x.get("state").and_then(|v| v.as_str()) == Some("up")
                            })
                        })
                    });
                    // Every node on its own NIC, not only a: a node that is still settling
                    // (or failed over at start) would turn the first cut into a different
                    // scenario.
                    let ids: Vec<String> = self.names.nodes.iter().map(|n| n.id.clone()).collect();
                    let all_on_nic = ids.iter().all(|id| {
                        self.daemons.status(id).is_some_and(|st| {
                            st.get("uplink").and_then(|u| u.as_str()) == Some("nic")
                        })
                    });
                    if up && all_on_nic {
                        return Ok(());
                    }
                    if t0.elapsed() > timeout {
                        return Err(LabError::Timeout {
                            what: "a's sessions with all its peers, and every node on its NIC"
                                .into(),
                            waited_ms: timeout.as_millis() as u64,
                            detail: format!("a's status: {s}"),
                        });
                    }
                }
                None if t0.elapsed() > Duration::from_secs(2) => {
                    // A daemon without a control socket: give the sessions time instead.
                    return Ok(());
                }
                None => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the scenario `self.args.cuts` times (once with failback never).
    pub fn run(&mut self) -> Result<Vec<CutTimes>> {
        let cuts = if self.args.failback == FailbackArg::Never {
            1
        } else {
            self.args.cuts
        };
        let mut all = Vec::new();
        for k in 1..=cuts {
            println!(
                "cut {k}/{cuts}: {} ({})",
                self.args.scenario.name(),
                self.describe()
            );
            let mut c = self.cut_nic(k)?;
            match self.args.scenario {
                Scenario::CutNic => {}
                Scenario::KillProxy => c.kill = Some(self.kill_proxy()?),
                Scenario::AllPaths => c.isolate = Some(self.all_paths(k)?),
                Scenario::Broadcast => c.broadcast = Some(self.broadcast(k)?),
                // Run by `super::faults` instead (see `run::body`).
                Scenario::Faults | Scenario::Soak => {}
            }
            self.restore_nic(k, &mut c)?;
            // The killed proxy is needed again for the next cut only.
            if self.args.scenario == Scenario::KillProxy && k < cuts {
                self.restart(&c.proxy.clone())?;
            }
            all.push(c);
        }
        Ok(all)
    }

    fn describe(&self) -> String {
        let p = &self.proxies[0];
        match self.args.scenario {
            Scenario::CutNic => format!("cut a's NIC, a fails over to {p}, restore, a fails back"),
            Scenario::KillProxy => format!(
                "cut a's NIC, kill {p}'s daemon, {} takes over",
                self.proxies.get(1).map_or("?", String::as_str)
            ),
            Scenario::AllPaths => {
                "cut a's NIC and every proxy's fabric, a's mgmt0 loses carrier; restore one".into()
            }
            Scenario::Broadcast => "cut a's NIC, ARP and ND from the station reach a".into(),
            Scenario::Faults | Scenario::Soak => "see the fault suite".into(),
        }
    }

    fn dwell(&self) -> Duration {
        Duration::from_millis(self.args.dwell_ms)
    }

    fn cut_nic(&mut self, k: u32) -> Result<CutTimes> {
        let v = self.victim().clone();
        let proxy = self.proxies[0].clone();
        let proxy_port = self.node(&proxy)?.switch_port.clone();
        let cut_before = now_us();
        topology::set_port(&self.names.switch_ns, &v.switch_port, false)?;
        let cut = now_us();
        let at = self.took_effect(&v.switch_port, false, cut_before, cut);
        self.mark(at, MarkKind::Cut, format!("cut {k}"));
        let over = |t: &Timeline| {
            t.fdb_at(&v.mac, &proxy_port, cut).is_some() && t.first_answered_after(cut).is_some()
        };
        let mut done = self.wait_for("failover", cut, Duration::from_millis(500), &over)?;
        if !done {
            self.diagnose("failover not seen 500 ms after the cut");
            done = self.wait_for("failover", cut, STEP_TIMEOUT, &over)?;
        }
        let failover_done = done.then(now_us);
        if !done {
            println!("  failover to {proxy} not seen within {STEP_TIMEOUT:?}");
        }
        self.observe("proxied", cut, self.dwell())?;
        Ok(CutTimes {
            index: k,
            proxy,
            proxy_port,
            cut_before,
            cut,
            failover_done,
            failover_end: now_us(),
            ..CutTimes::default()
        })
    }

    fn restore_nic(&mut self, k: u32, c: &mut CutTimes) -> Result<()> {
        let v = self.victim().clone();
        c.restore_before = now_us();
        topology::set_port(&self.names.switch_ns, &v.switch_port, true)?;
        c.restore = now_us();
        let restore = c.restore;
        let at = self.took_effect(&v.switch_port, true, c.restore_before, restore);
        self.mark(at, MarkKind::Restore, format!("restore {k}"));
        if self.args.failback == FailbackArg::Never {
            c.failback_done = Some(None);
            self.observe("restored", restore, self.dwell())?;
        } else {
            // Expected within the hold-down and a little; past that, show what the daemons
            // see, then keep waiting.
            let expected = Duration::from_millis(self.args.hold_down_ms + 500);
            let port = v.switch_port.clone();
            let back = |t: &Timeline| t.fdb_at(&v.mac, &port, restore).is_some();
            let mut done = self.wait_for("failback", restore, expected, &back)?;
            if !done {
                self.diagnose(&format!(
                    "failback not seen {} ms after the restore",
                    expected.as_millis()
                ));
                done = self.wait_for("failback", restore, STEP_TIMEOUT, &back)?;
            }
            let timeout = expected + STEP_TIMEOUT;
            if !done {
                println!("  failback to a's NIC not seen within {timeout:?}");
            }
            c.failback_done = Some(done.then(now_us));
            self.observe("on NIC", restore, self.dwell())?;
        }
        c.restore_end = now_us();
        Ok(())
    }

    fn kill_proxy(&mut self) -> Result<KillTimes> {
        let v = self.victim().clone();
        let proxy = self.proxies[0].clone();
        let next = self.proxies.get(1).cloned().ok_or_else(|| {
            LabError::Precondition(
                "kill-proxy needs a second proxy: run with --nodes 3 or more".into(),
            )
        })?;
        let next_port = self.node(&next)?.switch_port.clone();
        let before = now_us();
        let at = self.daemons.kill(&proxy)?;
        self.mark(at, MarkKind::Kill, format!("kill {proxy}"));
        let ok = self.wait_for("takeover", at, STEP_TIMEOUT, &|t| {
            t.fdb_at(&v.mac, &next_port, at).is_some() && t.first_answered_after(at).is_some()
        })?;
        if !ok {
            println!("  takeover by {next} not seen within {STEP_TIMEOUT:?}");
        }
        self.observe(&format!("on {next}"), at, self.dwell())?;
        Ok(KillTimes {
            next,
            next_port,
            before,
            at,
            end: now_us(),
        })
    }

    /// Brings a killed daemon back (and its kernel interface's addresses), and waits until
    /// a has its sessions again.
    pub(super) fn restart(&mut self, id: &str) -> Result<()> {
        println!("  restarting {id}'s daemon");
        self.daemons.start(id, self.manifest)?;
        let node = self.node(id)?.clone();
        let daemons = &mut *self.daemons;
        topology::configure_kernel_if(&node, START_TIMEOUT, &mut || {
            if signal::stop_requested() {
                return Err(LabError::Interrupted);
            }
            daemons.check_alive()
        })?;
        self.wait_sessions(Duration::from_secs(10))
    }

    fn all_paths(&mut self, k: u32) -> Result<IsolateTimes> {
        let fabric_ports: Vec<String> = self
            .proxies
            .iter()
            .map(|p| self.node(p).map(|n| n.fabric_port.clone()))
            .collect::<Result<_>>()?;
        for port in &fabric_ports {
            topology::set_port(&self.names.fabric_ns, port, false)?;
        }
        let at = now_us();
        self.mark(at, MarkKind::Isolate, format!("isolate {k}"));
        let lost = self.wait_for("no path", at, STEP_TIMEOUT, &|t| {
            t.carrier_at(false, at).is_some()
        })?;
        let no_carrier_shown = lost && topology::kernel_if_no_carrier(self.victim())?;
        if !lost {
            println!("  carrier loss on a's mgmt0 not seen within {STEP_TIMEOUT:?}");
        }
        self.observe("no path", at, self.dwell() / 2)?;
        let first = self.proxies[0].clone();
        topology::set_port(&self.names.fabric_ns, &fabric_ports[0], true)?;
        let reconnect = now_us();
        self.mark(reconnect, MarkKind::Reconnect, format!("{first} back"));
        let timeout = STEP_TIMEOUT * 2;
        let back = self.wait_for("one path", reconnect, timeout, &|t| {
            t.carrier_at(true, reconnect).is_some() && t.first_answered_after(reconnect).is_some()
        })?;
        if !back {
            println!("  carrier and traffic through {first} not back within {timeout:?}");
        }
        self.observe(&format!("on {first}"), reconnect, self.dwell() / 2)?;
        let end = now_us();
        for port in &fabric_ports[1..] {
            topology::set_port(&self.names.fabric_ns, port, true)?;
        }
        Ok(IsolateTimes {
            at,
            no_carrier_shown,
            reconnect,
            end,
        })
    }

    fn broadcast(&mut self, k: u32) -> Result<BroadcastResult> {
        let v = self.victim().clone();
        let st = self.names.station_ns.clone();
        let (arp_ok, arp_detail) = resolve_and_ping(&st, &v, false)?;
        let (nd_ok, nd_detail) = resolve_and_ping(&st, &v, true)?;
        println!("  cut {k}: ARP {arp_detail}; ND {nd_detail}");
        self.check()?;
        Ok(BroadcastResult {
            arp_ok,
            arp_detail,
            nd_ok,
            nd_detail,
        })
    }
}

/// Flushes the station's neighbour cache for one family, pings a, and reads back which MAC
/// the station resolved a's address to: (a's MAC and replies, what was seen).
fn resolve_and_ping(st: &str, v: &NodeNames, v6: bool) -> Result<(bool, String)> {
    let family = if v6 { "-6" } else { "-4" };
    let addr = if v6 {
        v.mgmt_v6.to_string()
    } else {
        v.mgmt_v4.to_string()
    };
    ip_in(st, &[family, "neigh", "flush", "dev", names::STATION_IF])?;
    let ping = exec_in(
        st,
        "ping",
        &[family, "-c", "3", "-i", "0.2", "-W", "1", "-q", &addr],
    );
    let received = match &ping {
        Ok(out) => out
            .split(',')
            .find_map(|part| part.trim().strip_suffix(" received"))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0),
        Err(_) => 0,
    };
    let neigh = ip_in(st, &[family, "-j", "neigh", "show", &addr])?;
    let lladdr = serde_json::from_str::<serde_json::Value>(&neigh)
        .ok()
        .and_then(|j| {
            j.as_array()?
                .iter()
                .find_map(|e| e.get("lladdr")?.as_str().map(str::to_string))
        });
    let ok = received > 0 && lladdr.as_deref() == Some(v.mac.as_str());
    Ok((
        ok,
        format!(
            "{addr}: {received}/3 echo replies, resolved to {}",
            lladdr.as_deref().unwrap_or("nothing")
        ),
    ))
}
