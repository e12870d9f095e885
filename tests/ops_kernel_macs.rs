//! Run-time change of a node's own MACs (`kernel.macs`) on SIGHUP, end to end in a live
//! two-node lab (`nicproxy lab --keep`, UDP fabric; needs root like the lab).
//!
//! A "container" namespace hangs off a's kernel interface through a macvlan with a MAC of
//! its own (M) and the address 10.88.0.201. Its frames leave through a's daemon like a's
//! own, but only while M is one of a's MACs does anything come back. The test adds M,
//! removes it, adds it again and removes it again, first on a's NIC and then while a is
//! failed over to b, and checks each time that traffic between the station and the
//! container passes (added) or is dropped and counted (removed): on a's NIC as
//! `not_for_us`, and at the proxy b as `spoofed` (the container's frames, since b forgot
//! M) and `not_for_us` (the station's frames for M). Both ends keep permanent neighbour
//! entries, so ARP plays no part in what passes. Last, with M added again, a's NIC comes
//! back: the switch must move M to a's port with a's own MAC, from a's announcements
//! alone (the container stays silent). No timing is asserted.

mod common;
mod ops_lab;

use std::process::Command;
use std::time::{Duration, Instant};

use ops_lab::{output, texts, KeptLab};
use serde_json::Value;

const A_MAC: &str = "02:00:00:77:00:01";
/// The container's MAC, added to and removed from a's `kernel.macs`.
const M: &str = "02:00:00:77:01:01";
const CT_IP: &str = "10.88.0.201";
const STATION_IP: &str = "10.88.0.100";
/// Generous: the lab shares 2 CPUs with everything else.
const SETTLE: Duration = Duration::from_secs(20);

/// `ip` with arguments, panicking with its output on failure.
fn ip(args: &[&str]) {
    let o = output(Command::new("ip").args(args));
    assert!(o.status.success(), "ip {args:?}: {}", texts(&o).1);
}

/// The switch's FDB ports of a's MAC and of M, polled until `done` holds for them or
/// [`SETTLE`] has passed; returns the last pair seen.
fn wait_fdb(
    lab: &KeptLab,
    done: impl Fn(&Option<String>, &Option<String>) -> bool,
) -> (Option<String>, Option<String>) {
    let port = |mac: &str| {
        let o = output(Command::new("bridge").args([
            "-n",
            &lab.switch_ns(),
            "-j",
            "fdb",
            "show",
            "br",
            "br0",
        ]));
        let v: Value = serde_json::from_str(&texts(&o).0).unwrap_or(Value::Null);
        v.as_array()?.iter().find_map(|e| {
            (e["mac"].as_str()? == mac).then(|| e["ifname"].as_str().map(str::to_owned))?
        })
    };
    let until = Instant::now() + SETTLE;
    loop {
        let seen = (port(A_MAC), port(M));
        if done(&seen.0, &seen.1) || Instant::now() > until {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pings `to` from namespace `ns`, requests 200 ms apart until `count` replies came back or
/// `deadline_s` passed; returns (requests sent, replies received).
fn ping(ns: &str, to: &str, count: u32, deadline_s: u32) -> (u64, u64) {
    let o = output(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-w",
        &deadline_s.to_string(),
        to,
    ]));
    let (out, err) = texts(&o);
    let field = |suffix: &str| {
        out.split(',')
            .find_map(|part| part.trim().strip_suffix(suffix))
            .and_then(|n| n.split_whitespace().last()?.parse().ok())
            .unwrap_or_else(|| panic!("no ping summary from {ns} to {to}:\n{out}{err}"))
    };
    (field(" packets transmitted"), field(" received"))
}

/// A drop counter of a node's status (summed over its workers).
fn drops(lab: &KeptLab, node: &str, reason: &str) -> u64 {
    lab.status(node)["drops"][reason].as_u64().unwrap_or(0)
}

/// The MACs b carries for a, empty if none.
fn carried_for_a(status: &Value) -> Vec<String> {
    status["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["peer"] == "a")
        .flat_map(|c| c["macs"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect()
}

/// Whether a's steering table sends M to the kernel (in its one domain).
fn a_owns_m(status: &Value) -> bool {
    status["steering_table"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["mac"] == M && e["action"] == "Kernel")
}

/// The pid of the lab's daemon for `node`, from the run's manifest.
fn daemon_pid(lab: &KeptLab, node: &str) -> u32 {
    let manifest = std::fs::read_to_string(lab.run_dir.join("manifest")).expect("manifest");
    let config = lab.run_dir.join(format!("{node}.toml"));
    let config = config.to_str().expect("UTF-8 path");
    manifest
        .lines()
        .filter_map(|l| l.strip_prefix("pid "))
        .filter_map(|p| p.trim().parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == config.as_bytes()))
        })
        .unwrap_or_else(|| panic!("no daemon of node {node} in the manifest:\n{manifest}"))
}

/// Writes a's config with `macs` and sends a's daemon SIGHUP; waits until its log reports
/// the MACs applied (panics, with the log, if it reports anything else).
fn set_a_macs(lab: &KeptLab, macs: &[&str]) {
    let path = lab.run_dir.join("a.toml");
    let text = std::fs::read_to_string(&path).expect("a's config");
    let line = text
        .lines()
        .find(|l| l.starts_with("macs = "))
        .expect("a macs line")
        .to_owned();
    let list: Vec<String> = macs.iter().map(|m| format!("\"{m}\"")).collect();
    let text = text.replace(&line, &format!("macs = [{}]", list.join(", ")));
    std::fs::write(&path, text).expect("writing a's config");
    let log_path = lab.run_dir.join("a.log");
    let before = std::fs::read_to_string(&log_path).unwrap_or_default().len();
    let pid = daemon_pid(lab, "a");
    let o = output(Command::new("kill").args(["-HUP", &pid.to_string()]));
    assert!(o.status.success(), "kill -HUP {pid}: {}", texts(&o).1);
    let t0 = Instant::now();
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let new = log.get(before..).unwrap_or_default();
        if let Some(l) = new.lines().find(|l| l.contains("SIGHUP")) {
            assert!(
                l.contains("kernel.macs applied"),
                "a's daemon did not apply the MACs: {l}"
            );
            eprintln!("a: {}", l.trim());
            return;
        }
        assert!(
            t0.elapsed() < SETTLE,
            "a's daemon said nothing about SIGHUP:\n{}",
            lab.log("a")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Passes when both directions between the station and the container work.
fn assert_traffic_passes(lab: &KeptLab, ct: &str, when: &str) {
    let (_, n) = ping(&lab.station_ns(), CT_IP, 3, 30);
    assert_eq!(n, 3, "{when}: station -> container\n{}", lab.log("a"));
    let (_, n) = ping(ct, STATION_IP, 3, 30);
    assert_eq!(n, 3, "{when}: container -> station\n{}", lab.log("a"));
}

/// Drops of frames that reach a node's NIC for a MAC it does not carry, by node: `not_for_us`
/// on the NIC path, `inactive_path` while that node is (for a moment) on a proxy.
fn unclaimed_drops(lab: &KeptLab) -> [u64; 2] {
    ["a", "b"].map(|n| drops(lab, n, "not_for_us") + drops(lab, n, "inactive_path"))
}

/// Pings the container from the station for 3 s and checks that nothing comes back and
/// that every request was dropped and counted: at `node` where the switch sends frames
/// for M, or at both while it floods them. Counted over both nodes: on this loaded
/// machine a node's NIC path can flap for a moment (the lab's timers are short), and a
/// frame then counts as `inactive_path`, or at the other node.
fn assert_station_frames_dropped(lab: &KeptLab, node: &str, when: &str) {
    let before = unclaimed_drops(lab);
    let (sent, n) = ping(&lab.station_ns(), CT_IP, 5, 3);
    let after = unclaimed_drops(lab);
    let delta = [after[0] - before[0], after[1] - before[1]];
    assert_eq!(n, 0, "{when}: the container answered the station");
    assert!(
        sent > 0 && delta[0] + delta[1] >= sent,
        "{when}: a and b counted {delta:?} drops for {sent} frames to M"
    );
    eprintln!(
        "{when}: station -> M: 0/{sent} answered; dropped as not for them: a +{}, b +{} (expected mostly at {node})",
        delta[0], delta[1]
    );
}

#[test]
fn kernel_macs_change_live_on_the_nic_and_through_a_proxy() {
    let lab = KeptLab::start(2, "macs");
    let t_start = Instant::now();
    let st = lab.wait_status("a", SETTLE, |s| {
        s["uplink"] == "nic" && s["sessions"][0]["state"] == "up"
    });
    assert_eq!(st["uplink"], "nic", "{st}\n{}", lab.log("a"));

    // The container: a macvlan on a's kernel interface, moved to a namespace of its own.
    let ct = common::Netns::new("npm");
    ct.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    ct.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    let mv = common::unique_name("mv");
    ip(&[
        "-n",
        &lab.ns("a"),
        "link",
        "add",
        "link",
        "mgmt0",
        "name",
        &mv,
        "address",
        M,
        "type",
        "macvlan",
        "mode",
        "bridge",
    ]);
    ip(&["-n", &lab.ns("a"), "link", "set", &mv, "netns", ct.name()]);
    ct.ip(&["addr", "add", &format!("{CT_IP}/24"), "dev", &mv]);
    ct.ip(&["link", "set", &mv, "up"]);
    let station_mac = {
        let o = output(Command::new("ip").args([
            "-n",
            &lab.station_ns(),
            "-br",
            "link",
            "show",
            "eth0",
        ]));
        texts(&o)
            .0
            .split_whitespace()
            .nth(2)
            .expect("station MAC")
            .to_owned()
    };
    ct.ip(&[
        "neigh",
        "replace",
        STATION_IP,
        "lladdr",
        &station_mac,
        "dev",
        &mv,
        "nud",
        "permanent",
    ]);
    ip(&[
        "-n",
        &lab.station_ns(),
        "neigh",
        "replace",
        CT_IP,
        "lladdr",
        M,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);

    // M is not a's yet: the station's frames for it reach a's NIC and are dropped there.
    assert_station_frames_dropped(&lab, "a", "before the add");

    // Added on the NIC path.
    set_a_macs(&lab, &[A_MAC, M]);
    let st = lab.wait_status("a", SETTLE, a_owns_m);
    assert!(
        a_owns_m(&st),
        "M not in a's table: {}",
        st["steering_table"]
    );
    assert_traffic_passes(&lab, ct.name(), "added, on the NIC");

    // Removed on the NIC path (the switch has learned M on a's port by now).
    set_a_macs(&lab, &[A_MAC]);
    let st = lab.wait_status("a", SETTLE, |s| !a_owns_m(s));
    assert!(!a_owns_m(&st), "M still in a's table");
    assert_station_frames_dropped(&lab, "a", "removed, on the NIC");

    // a fails over to b, which carries a's one MAC.
    lab.set_nic("a", false);
    let st = lab.wait_status("a", SETTLE, |s| s["uplink"] == "proxy:b");
    assert_eq!(st["uplink"], "proxy:b", "{st}\n{}", lab.log("a"));
    let sb = lab.wait_status("b", SETTLE, |s| carried_for_a(s) == [A_MAC]);
    assert_eq!(carried_for_a(&sb), [A_MAC], "{}", sb["clients"]);

    // Added while failed over: b learns M, and traffic passes through b both ways.
    set_a_macs(&lab, &[A_MAC, M]);
    let sb = lab.wait_status("b", SETTLE, |s| carried_for_a(s).len() == 2);
    let mut carried = carried_for_a(&sb);
    carried.sort();
    assert_eq!(carried, [A_MAC, M], "{}\n{}", sb["clients"], lab.log("b"));
    assert_traffic_passes(&lab, ct.name(), "added, through proxy b");

    // Removed while failed over: b forgets M. The container's frames still reach b over
    // a's session and are dropped there as spoofed; the station's frames for M reach b's
    // NIC (the switch learned M there) and are dropped as not for b.
    set_a_macs(&lab, &[A_MAC]);
    let sb = lab.wait_status("b", SETTLE, |s| carried_for_a(s) == [A_MAC]);
    assert_eq!(carried_for_a(&sb), [A_MAC], "{}", sb["clients"]);
    let before = drops(&lab, "b", "spoofed");
    let (sent, n) = ping(ct.name(), STATION_IP, 5, 3);
    let after = drops(&lab, "b", "spoofed");
    assert_eq!(
        n, 0,
        "removed, through b: the station answered the container"
    );
    // At least one: a session that flaps under load leaves a without a path for a moment,
    // and its frames are then dropped at a (no_path), not at b.
    assert!(
        sent > 0 && after > before,
        "removed, through b: b counted {} spoofed drops for {sent} frames from M",
        after - before
    );
    eprintln!(
        "removed, through b: M -> station: 0/{sent} answered, b spoofed +{}",
        after - before
    );
    assert_station_frames_dropped(&lab, "b", "removed, through b");

    // Added again while failed over, then a's NIC comes back: the switch must move M back
    // to a's port with a's own MAC, though the container stays silent (its neighbour
    // entries are permanent): a's announcements after the failback probe from M too.
    set_a_macs(&lab, &[A_MAC, M]);
    let sb = lab.wait_status("b", SETTLE, |s| carried_for_a(s).len() == 2);
    assert_eq!(carried_for_a(&sb).len(), 2, "{}", sb["clients"]);
    let through_b = wait_fdb(&lab, |a, m| a.is_some() && a == m);
    assert_eq!(through_b.0, through_b.1, "M and a's MAC on different ports");
    lab.set_nic("a", true);
    let st = lab.wait_status("a", SETTLE, |s| s["uplink"] == "nic");
    assert_eq!(st["uplink"], "nic", "{st}\n{}", lab.log("a"));
    let back = wait_fdb(&lab, |a, m| a.is_some() && *a != through_b.0 && m == a);
    assert!(
        back.0.is_some() && back.0 != through_b.0 && back.1 == back.0,
        "after the failback the switch has a's MAC on {:?} and M on {:?} (both were on {:?})\n{}",
        back.0,
        back.1,
        through_b.0,
        lab.log("a")
    );
    eprintln!(
        "failback: a's MAC and M moved together from {:?} to {:?}",
        through_b.0, back.0
    );

    // What a's kernel port did with its MAC filter, for the record.
    let log = std::fs::read_to_string(lab.run_dir.join("a.log")).unwrap_or_default();
    if let Some(l) = log
        .lines()
        .rev()
        .find(|l| l.contains("kernel port MAC filter"))
    {
        eprintln!("a's last MAC change: {}", l.trim());
    }
    eprintln!(
        "checks after the lab came up: {:.1} s",
        t_start.elapsed().as_secs_f64()
    );
}
