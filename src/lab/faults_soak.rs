//! `nicproxy lab --scenario soak`: traffic for `--soak-secs` with a fault every
//! [`FAULT_EVERY`] (NIC cut and restore, a burst of NIC flaps, the proxy's fabric link down
//! and up, SIGHUP), sampling every daemon's RSS, open fds and mempool in use every
//! [`SAMPLE_EVERY`]. No daemon is restarted, so each node's samples come from one process
//! from start to end and its RSS can be compared. `nicproxy bench --suite soak` runs it and
//! turns the samples into figures and a plot.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::agent::now_us;
use super::error::Result;
use super::faults::Runner;
use super::faults_res as res;
use super::topology;

/// How often the daemons are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How often a fault is injected.
pub const FAULT_EVERY: Duration = Duration::from_secs(15);

/// Runs the soak; returns its samples, faults and per-node summary (`ok` when every fault
/// was recovered from and every daemon lived).
pub fn run(r: &mut Runner<'_, '_>) -> Result<Value> {
    let secs = r.ctx.args.soak_secs;
    let ids: Vec<String> = r.ctx.names.nodes.iter().map(|n| n.id.clone()).collect();
    let pids: Vec<(String, u32)> = ids
        .iter()
        .filter_map(|id| Some((id.clone(), r.ctx.daemons.pid(id)?)))
        .collect();
    println!("soak: {secs} s, a sample every {SAMPLE_EVERY:?}, a fault every {FAULT_EVERY:?}");
    let t0 = Instant::now();
    let mut next_sample = t0;
    let mut next_fault = t0 + FAULT_EVERY;
    let mut samples = Vec::new();
    let mut faults = Vec::new();
    let mut k = 0u32;
    while t0.elapsed() < Duration::from_secs(secs) {
        r.ctx.check()?;
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let t = t0.elapsed().as_secs_f64();
            for (id, pid) in &pids {
                let pool = r
                    .ctx
                    .daemons
                    .status(id)
                    .and_then(|s| s.get("mempool_in_use").and_then(Value::as_u64));
                samples.push(json!({
                    "t_s": t, "node": id, "rss_kib": res::rss_kib(*pid),
                    "fds": res::fd_count(*pid), "mempool_in_use": pool,
                }));
            }
        }
        if Instant::now() >= next_fault {
            let t = t0.elapsed().as_secs_f64();
            let (what, ok) = fault(r, k)?;
            println!(
                "  soak {t:>6.0} s: {what}: {}",
                if ok { "recovered" } else { "NOT RECOVERED" }
            );
            faults.push(json!({"t_s": t, "what": what, "ok": ok}));
            k += 1;
            next_fault = Instant::now() + FAULT_EVERY;
            next_sample = next_sample.max(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let summary: serde_json::Map<String, Value> = ids
        .iter()
        .map(|id| (id.clone(), summarize(&samples, id)))
        .collect();
    let ok = faults.iter().all(|f| f["ok"] == json!(true));
    Ok(json!({
        "ok": ok,
        "seconds": t0.elapsed().as_secs_f64(),
        "samples": samples,
        "faults": faults,
        "summary": summary,
    }))
}

fn summarize(samples: &[Value], id: &str) -> Value {
    let mine: Vec<&Value> = samples.iter().filter(|s| s["node"] == json!(id)).collect();
    let field = |s: &Value, k: &str| s.get(k).and_then(Value::as_u64);
    let first = mine.first().copied();
    let last = mine.last().copied();
    let max_rss = mine.iter().filter_map(|s| field(s, "rss_kib")).max();
    json!({
        "rss_kib_start": first.and_then(|s| field(s, "rss_kib")),
        "rss_kib_end": last.and_then(|s| field(s, "rss_kib")),
        "rss_kib_max": max_rss,
        "fds_start": first.and_then(|s| field(s, "fds")),
        "fds_end": last.and_then(|s| field(s, "fds")),
        "mempool_start": first.and_then(|s| field(s, "mempool_in_use")),
        "mempool_end": last.and_then(|s| field(s, "mempool_in_use")),
    })
}

/// The `k`-th fault of the rotation; (what, recovered).
fn fault(r: &mut Runner<'_, '_>, k: u32) -> Result<(String, bool)> {
    let v = r.ctx.names.victim().clone();
    let first = r.ctx.proxies[0].clone();
    let sw = r.ctx.names.switch_ns.clone();
    let back_on_nic = |r: &mut Runner<'_, '_>, since: u64| -> Result<bool> {
        let timeout = Duration::from_millis(r.ctx.args.hold_down_ms) + Duration::from_secs(8);
        let mac = v.mac.clone();
        let port = v.switch_port.clone();
        r.ctx.wait_for("soak", since, timeout, &|t| {
            t.fdb_at(&mac, &port, since).is_some() && t.first_answered_after(since).is_some()
        })
    };
    match k % 4 {
        0 => {
            topology::set_port(&sw, &v.switch_port, false)?;
            let cut = now_us();
            let p1 = r.ctx.node(&first)?.switch_port.clone();
            let mac = v.mac.clone();
            let over = r
                .ctx
                .wait_for("soak cut", cut, Duration::from_secs(5), &|t| {
                    t.fdb_at(&mac, &p1, cut).is_some() && t.first_answered_after(cut).is_some()
                })?;
            std::thread::sleep(Duration::from_millis(500));
            topology::set_port(&sw, &v.switch_port, true)?;
            let back = back_on_nic(r, now_us())?;
            Ok(("NIC cut and restore".into(), over && back))
        }
        1 => {
            for _ in 0..50 {
                topology::set_port(&sw, &v.switch_port, false)?;
                std::thread::sleep(Duration::from_millis(r.rng.range(1, 50)));
                topology::set_port(&sw, &v.switch_port, true)?;
                std::thread::sleep(Duration::from_millis(r.rng.range(1, 50)));
            }
            let back = back_on_nic(r, now_us())?;
            Ok(("50 NIC flaps".into(), back))
        }
        2 => {
            let port = r.ctx.node(&first)?.fabric_port.clone();
            let fab = r.ctx.names.fabric_ns.clone();
            topology::set_port(&fab, &port, false)?;
            std::thread::sleep(Duration::from_millis(500));
            topology::set_port(&fab, &port, true)?;
            let up = wait_sessions(r)?;
            Ok((format!("{first}'s fabric link down and up"), up))
        }
        _ => {
            let ok = r
                .ctx
                .daemons
                .pid(&v.id)
                .is_some_and(|pid| super::cmd::signal(pid, "HUP"));
            Ok(("SIGHUP (config unchanged)".into(), ok && wait_sessions(r)?))
        }
    }
}

fn wait_sessions(r: &mut Runner<'_, '_>) -> Result<bool> {
    let ids: Vec<String> = r.ctx.names.nodes.iter().map(|n| n.id.clone()).collect();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        r.ctx.check()?;
        let all = ids.iter().all(|id| {
            r.ctx.daemons.status(id).is_some_and(|s| {
                s.get("sessions")
                    .and_then(Value::as_array)
                    .is_some_and(|l| l.iter().all(|x| x["state"] == json!("up")))
            })
        });
        if all {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(false)
}
