//! From what happened (the scenario's times and the timeline) to the figures and checks of
//! the report. Pure: everything is computed after the run, from recorded times, so late
//! events (an echo that arrived after the scenario moved on) are counted too.
//!
//! Definitions (all times on the station's probes, which go out every interval):
//! - failover time: from the cut to the sending of the first probe after it that was
//!   answered, i.e. to the first probe that made it through the new path;
//! - FDB move time: from the cut to the bridge reporting the MAC on the proxy's port;
//! - frames lost per failover: probes sent from just before the cut (in flight at the cut)
//!   to the end of the failed-over period that were never answered;
//! - failback time: from the restore to the bridge reporting the MAC back on the node's own
//!   port. It includes the hold-down (`failover.hold_down_ms`), reported separately.

use serde::Serialize;

use super::timeline::Timeline;

/// Probes sent this long before an action count as in flight at it.
pub const IN_FLIGHT_US: u64 = 5_000;

/// The times the scenario recorded for one cut.
#[derive(Debug, Clone, Default)]
pub struct CutTimes {
    /// 1-based.
    pub index: u32,
    /// a's first proxy.
    pub proxy: String,
    /// Its switch port.
    pub proxy_port: String,
    /// Just before the cut command.
    pub cut_before: u64,
    /// The cut command returned.
    pub cut: u64,
    /// The failed-over state was seen (FDB on the proxy's port and probes answered).
    pub failover_done: Option<u64>,
    /// End of the failed-over period (before the next action).
    pub failover_end: u64,
    /// kill-proxy.
    pub kill: Option<KillTimes>,
    /// all-paths.
    pub isolate: Option<IsolateTimes>,
    /// broadcast.
    pub broadcast: Option<BroadcastResult>,
    /// Just before the restore command.
    pub restore_before: u64,
    /// The restore command returned.
    pub restore: u64,
    /// The failback was seen (None: not expected, failback never).
    pub failback_done: Option<Option<u64>>,
    /// End of the restored period.
    pub restore_end: u64,
}

/// Times of the kill-proxy step.
#[derive(Debug, Clone, Default)]
pub struct KillTimes {
    /// The proxy expected to take over.
    pub next: String,
    /// Its switch port.
    pub next_port: String,
    /// Just before the kill.
    pub before: u64,
    /// The kill returned.
    pub at: u64,
    /// End of the period on the next proxy.
    pub end: u64,
}

/// Times of the all-paths step.
#[derive(Debug, Clone, Default)]
pub struct IsolateTimes {
    /// The proxies' fabric ports were cut (command returned).
    pub at: u64,
    /// `ip link show` showed NO-CARRIER on a's kernel interface after the carrier dropped.
    pub no_carrier_shown: bool,
    /// The first proxy's fabric came back (command returned).
    pub reconnect: u64,
    /// End of the period on the reconnected proxy.
    pub end: u64,
}

/// The broadcast step's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BroadcastResult {
    /// ARP: the station resolved a's IPv4 address to a's MAC through the proxy and got
    /// echo replies.
    pub arp_ok: bool,
    /// What was seen.
    pub arp_detail: String,
    /// IPv6 ND: the same for a's IPv6 address.
    pub nd_ok: bool,
    /// What was seen.
    pub nd_detail: String,
}

/// The figures of one cut.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CutResult {
    /// 1-based.
    pub cut: u32,
    /// a's proxy.
    pub proxy: String,
    /// How long the cut command took to return (the cut itself is timed by the switch
    /// agent, which saw the port go down).
    pub cut_cmd_ms: f64,
    /// How long the restore command took to return.
    pub restore_cmd_ms: f64,
    /// Cut → first probe answered through the proxy.
    pub failover_ms: Option<f64>,
    /// Longest gap between answered probes in the failover.
    pub outage_ms: Option<f64>,
    /// Cut → FDB on the proxy's port.
    pub fdb_move_ms: Option<f64>,
    /// Probes lost in the failover.
    pub frames_lost: u64,
    /// Probes sent in the failed-over period.
    pub probes_sent: u64,
    /// The TCP transfer moved bytes while a was proxied (None: no transfer).
    pub tcp_flowing_proxied: Option<bool>,
    /// kill-proxy: the next proxy.
    pub next_proxy: Option<String>,
    /// kill-proxy: kill → first probe answered through the next proxy.
    pub next_failover_ms: Option<f64>,
    /// kill-proxy: kill → FDB on the next proxy's port.
    pub next_fdb_move_ms: Option<f64>,
    /// kill-proxy: probes lost from the kill on.
    pub next_frames_lost: Option<u64>,
    /// all-paths: cut of the proxies' fabric → carrier off on a's kernel interface.
    pub carrier_lost_ms: Option<f64>,
    /// all-paths: `ip link show` reported NO-CARRIER.
    pub no_carrier_shown: Option<bool>,
    /// all-paths: one proxy's fabric restored → carrier back.
    pub carrier_back_ms: Option<f64>,
    /// all-paths: one proxy's fabric restored → first probe answered.
    pub path_back_ms: Option<f64>,
    /// broadcast findings.
    pub broadcast: Option<BroadcastResult>,
    /// Restore → the switch port forwards again. The bridge takes the port into forwarding
    /// asynchronously (after the kernel's link watch has run); until then it neither
    /// learns nor forwards, whatever the node sends.
    pub port_forwarding_ms: Option<f64>,
    /// Restore → FDB back on a's own port (includes the hold-down).
    pub failback_ms: Option<f64>,
    /// The FDB returned to a's port (None: not expected).
    pub fdb_back: Option<bool>,
    /// Probes lost from the restore on.
    pub failback_frames_lost: u64,
    /// The TCP transfer moved bytes after the failback.
    pub tcp_flowing_restored: Option<bool>,
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// The figures of one cut from its times and the timeline.
pub fn evaluate(t: &Timeline, c: &CutTimes, mac: &str, own_port: &str, tcp: bool) -> CutResult {
    let within = |at: Option<u64>, from: u64, to: u64| at.filter(|x| *x >= from && *x < to);
    let answered =
        |from: u64, to: u64| within(t.first_answered_after(from).map(|(s, _)| s), from, to);
    let flowing = |from: Option<u64>, to: u64| {
        tcp.then(|| from.is_some_and(|f| t.tcp_bytes_at(to) > t.tcp_bytes_at(f)))
    };

    // The cut took effect between the command's start and its return; the switch agent saw
    // when (a late sighting is no better than the return).
    let cut = t
        .link_change(own_port, false, c.cut_before, c.cut)
        .unwrap_or(c.cut);
    let restore = t
        .link_change(own_port, true, c.restore_before, c.restore)
        .unwrap_or(c.restore);
    let mut r = CutResult {
        cut: c.index,
        proxy: c.proxy.clone(),
        cut_cmd_ms: ms(c.cut - c.cut_before),
        restore_cmd_ms: ms(c.restore.saturating_sub(c.restore_before)),
        failover_ms: answered(cut, c.failover_end).map(|s| ms(s - cut)),
        outage_ms: Some(ms(t.longest_gap(c.cut_before, c.failover_end))),
        fdb_move_ms: within(t.fdb_at(mac, &c.proxy_port, cut), cut, c.failover_end)
            .map(|f| ms(f - cut)),
        frames_lost: t.lost_in(c.cut_before.saturating_sub(IN_FLIGHT_US), c.failover_end),
        probes_sent: t.sent_in(c.cut_before, c.failover_end),
        tcp_flowing_proxied: flowing(c.failover_done, c.failover_end),
        broadcast: c.broadcast.clone(),
        ..CutResult::default()
    };
    if let Some(k) = &c.kill {
        r.next_proxy = Some(k.next.clone());
        r.next_failover_ms = answered(k.at, k.end).map(|s| ms(s - k.at));
        r.next_fdb_move_ms =
            within(t.fdb_at(mac, &k.next_port, k.at), k.at, k.end).map(|f| ms(f - k.at));
        r.next_frames_lost = Some(t.lost_in(k.before.saturating_sub(IN_FLIGHT_US), k.end));
    }
    if let Some(i) = &c.isolate {
        r.carrier_lost_ms =
            within(t.carrier_at(false, i.at), i.at, i.reconnect).map(|x| ms(x - i.at));
        r.no_carrier_shown = Some(i.no_carrier_shown);
        r.carrier_back_ms = within(t.carrier_at(true, i.reconnect), i.reconnect, i.end)
            .map(|x| ms(x - i.reconnect));
        r.path_back_ms = answered(i.reconnect, i.end).map(|s| ms(s - i.reconnect));
    }
    r.port_forwarding_ms =
        within(t.forwarding_at(own_port, restore), restore, c.restore_end).map(|f| ms(f - restore));
    match c.failback_done {
        None => {}
        Some(_) => {
            let back = within(t.fdb_at(mac, own_port, restore), restore, c.restore_end);
            r.failback_ms = back.map(|b| ms(b - restore));
            r.fdb_back = Some(back.is_some());
        }
    }
    r.failback_frames_lost =
        t.lost_in(c.restore_before.saturating_sub(IN_FLIGHT_US), c.restore_end);
    r.tcp_flowing_restored = flowing(c.failback_done.flatten().or(Some(restore)), c.restore_end);
    r
}

/// Nearest-rank percentile (`p` in 0..=100) of the values; None when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// One pass/fail check of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The evidence.
    pub detail: String,
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// What the checks need to know about the run.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Most probes one failover may lose.
    pub loss_budget: u64,
    /// Whether failback is expected after a restore.
    pub failback: bool,
    /// Whether a TCP transfer ran.
    pub tcp: bool,
}

/// The checks of a run, per cut and for the TCP transfer.
pub fn checks(results: &[CutResult], t: &Timeline, e: Expect) -> Vec<Check> {
    let mut out = Vec::new();
    let fmt = |v: Option<f64>| v.map_or_else(|| "never".to_string(), |x| format!("{x:.1} ms"));
    for r in results {
        let k = r.cut;
        out.push(check(
            format!("cut {k}: a fails over to {}", r.proxy),
            r.failover_ms.is_some(),
            format!("first probe answered after the cut: {}", fmt(r.failover_ms)),
        ));
        out.push(check(
            format!("cut {k}: the FDB moves to {}'s port", r.proxy),
            r.fdb_move_ms.is_some(),
            format!("moved after {}", fmt(r.fdb_move_ms)),
        ));
        out.push(check(
            format!(
                "cut {k}: probe loss within budget ({} probes)",
                e.loss_budget
            ),
            r.frames_lost <= e.loss_budget,
            format!("{} of {} probes lost", r.frames_lost, r.probes_sent),
        ));
        if let Some(f) = r.tcp_flowing_proxied {
            out.push(check(
                format!("cut {k}: TCP keeps flowing through the proxy"),
                f,
                if f {
                    "bytes arrived while proxied"
                } else {
                    "no bytes arrived while proxied"
                },
            ));
        }
        if let Some(next) = &r.next_proxy {
            out.push(check(
                format!("cut {k}: {next} takes over when {} dies", r.proxy),
                r.next_failover_ms.is_some(),
                format!(
                    "first probe answered after the kill: {}",
                    fmt(r.next_failover_ms)
                ),
            ));
            out.push(check(
                format!("cut {k}: the FDB follows to {next}'s port"),
                r.next_fdb_move_ms.is_some(),
                format!("moved after {}", fmt(r.next_fdb_move_ms)),
            ));
        }
        if let Some(shown) = r.no_carrier_shown {
            out.push(check(
                format!("cut {k}: a's mgmt0 loses carrier when no path is left"),
                r.carrier_lost_ms.is_some() && shown,
                format!(
                    "carrier off after {}; ip link show NO-CARRIER: {shown}",
                    fmt(r.carrier_lost_ms)
                ),
            ));
            out.push(check(
                format!("cut {k}: carrier and traffic return with one path"),
                r.carrier_back_ms.is_some() && r.path_back_ms.is_some(),
                format!(
                    "carrier back after {}, first probe answered after {}",
                    fmt(r.carrier_back_ms),
                    fmt(r.path_back_ms)
                ),
            ));
        }
        if let Some(b) = &r.broadcast {
            out.push(check(
                format!(
                    "cut {k}: ARP reaches a through {} and the reply returns",
                    r.proxy
                ),
                b.arp_ok,
                b.arp_detail.clone(),
            ));
            out.push(check(
                format!(
                    "cut {k}: IPv6 ND reaches a through {} and the reply returns",
                    r.proxy
                ),
                b.nd_ok,
                b.nd_detail.clone(),
            ));
        }
        match r.fdb_back {
            Some(back) if e.failback => {
                out.push(check(
                    format!("cut {k}: a fails back and the FDB returns to its port"),
                    back,
                    format!(
                        "returned after {} (switch port forwarding after {})",
                        fmt(r.failback_ms),
                        fmt(r.port_forwarding_ms)
                    ),
                ));
                out.push(check(
                    format!(
                        "cut {k}: failback probe loss within budget ({} probes)",
                        e.loss_budget
                    ),
                    r.failback_frames_lost <= e.loss_budget,
                    format!("{} probes lost from the restore on", r.failback_frames_lost),
                ));
            }
            Some(back) => out.push(check(
                format!(
                    "cut {k}: a stays on {} after the restore (failback never)",
                    r.proxy
                ),
                !back,
                if back {
                    "the FDB returned to a's port"
                } else {
                    "the FDB stayed"
                },
            )),
            None => {}
        }
    }
    if e.tcp {
        let tcp = &t.tcp;
        let complete = tcp.sent_bytes.is_some() && tcp.sent_bytes == tcp.eof_bytes;
        out.push(check(
            "the TCP transfer survives (no reset, every byte delivered)",
            tcp.errors.is_empty() && complete && tcp.closed_us.is_some(),
            format!(
                "sent {}, received {}{}",
                tcp.sent_bytes.map_or("?".into(), |b| b.to_string()),
                tcp.eof_bytes.map_or("?".into(), |b| b.to_string()),
                if tcp.errors.is_empty() {
                    String::new()
                } else {
                    format!("; errors: {}", tcp.errors.join("; "))
                }
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[5.0, 1.0, 3.0, 2.0, 4.0], 50.0), Some(3.0));
        assert_eq!(percentile(&[5.0, 1.0, 3.0, 2.0, 4.0], 99.0), Some(5.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
        assert_eq!(percentile(&hundred, 0.0), Some(1.0));
    }

    /// A run of probes every ms from 0 to 3 s; a cut at 1 s with an outage of 12 ms; the
    /// FDB moves at +15 ms; restore at 2 s, FDB back at +600 ms with 2 probes lost.
    fn scripted() -> (Timeline, CutTimes) {
        let mut t = Timeline::default();
        for seq in 0..3000u64 {
            let sent = seq * 1000;
            t.apply_line(&format!("p {seq} {sent}"));
            let lost = (1000..1012).contains(&seq) || (2600..2602).contains(&seq);
            if !lost {
                t.apply_line(&format!("r {seq} {}", sent + 200));
            }
        }
        for (at, port) in [
            (0, "pa"),
            (1_000_500, "-"),
            (1_015_000, "pb"),
            (2_600_000, "pa"),
        ] {
            t.apply_line(&format!("f {at} m {port}"));
        }
        for i in 0..300u64 {
            t.apply_line(&format!("b {} {}", i * 10_000, i * 1000));
        }
        // The restore command returned 2 ms after it took effect.
        t.apply_line("l 2000000 pa 1");
        let c = CutTimes {
            index: 1,
            proxy: "b".into(),
            proxy_port: "pb".into(),
            cut_before: 999_800,
            cut: 1_000_000,
            failover_done: Some(1_020_000),
            failover_end: 2_000_000,
            restore_before: 1_999_900,
            restore: 2_002_000,
            failback_done: Some(Some(2_600_000)),
            restore_end: 3_000_000,
            ..CutTimes::default()
        };
        (t, c)
    }

    #[test]
    fn evaluates_a_scripted_cut() {
        let (t, c) = scripted();
        let r = evaluate(&t, &c, "m", "pa", true);
        assert_eq!(r.failover_ms, Some(12.0));
        assert_eq!(r.fdb_move_ms, Some(15.0));
        assert_eq!(r.frames_lost, 12);
        assert_eq!(r.outage_ms, Some(13.0));
        assert_eq!(r.failback_ms, Some(600.0));
        assert_eq!(r.fdb_back, Some(true));
        assert_eq!(r.failback_frames_lost, 2);
        assert_eq!(r.tcp_flowing_proxied, Some(true));
        let checks = checks(
            &[r],
            &t,
            Expect {
                loss_budget: 11,
                failback: true,
                tcp: false,
            },
        );
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, ["cut 1: probe loss within budget (11 probes)"]);
    }

    #[test]
    fn a_failover_that_never_completes_is_reported_as_such() {
        let (mut t, mut c) = scripted();
        // Nothing answered after the cut, and the FDB never moves.
        for p in t.probes.iter_mut().skip(1000) {
            p.recv_us = None;
        }
        t.fdb.retain(|f| f.port.as_deref() != Some("pb"));
        c.failover_done = None;
        let r = evaluate(&t, &c, "m", "pa", true);
        assert_eq!(r.failover_ms, None);
        assert_eq!(r.fdb_move_ms, None);
        assert_eq!(r.tcp_flowing_proxied, Some(false));
        assert!(r.frames_lost >= 1000);
        let checks = checks(
            &[r],
            &t,
            Expect {
                loss_budget: 100,
                failback: true,
                tcp: true,
            },
        );
        assert!(checks.iter().filter(|c| !c.ok).count() >= 4);
    }
}
