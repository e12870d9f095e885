//! The worker on real DPDK vdevs and veths, built exactly as the daemon builds it: an
//! af_packet NIC on a veth into a Linux bridge (the management switch), a TAP kernel port,
//! the UDP fabric with two peers. Raw sockets on the bridge side and on the TAP, and UDP
//! sockets as the fabric peers, inject and observe; every scenario asserts what each
//! observer saw and the worker's counters exactly (every port, every drop reason), and that
//! the mempool is back at its idle baseline afterwards. tcpdump captures the host and the
//! TAP for the whole run, and the end of each run checks every frame byte for byte, VLAN
//! tag included. See `dataplane_worker/rig.rs` for the topology.
//!
//! - `dataplane_steering_paths`: NIC, kernel and session sources, unicast to local, proxied
//!   and unknown MACs, broadcast and multicast floods, failover to an uplink session,
//!   spoofed sources; untagged and VLAN 100.
//! - `dataplane_bad_frames_from_nic`: oversize, unknown ethertypes, an unmapped VLAN.
//! - `dataplane_runts_from_nic`: runts (and a chained jumbo mbuf) replayed by DPDK's pcap
//!   driver as the NIC, since no kernel interface hands over a frame under 14 bytes.
//! - `dataplane_table_update_under_traffic`: 20,000 frames while thousands of tables are
//!   published; none lost.
//!
//! Each DPDK scenario runs in a child process (one EAL per process) inside a namespace the
//! outer test makes and deletes. Needs root and tcpdump.

#[path = "dataplane_worker/capture.rs"]
mod capture;
mod common;
#[path = "dataplane_worker/rig.rs"]
mod rig;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{dpdk, env_param, inner_test_requested, run_self};
use dataplane::counters::{CountersSnapshot, DropReason};
use dataplane::steer::{SessionId, Uplink};
use dataplane::wire::pcap::PcapWriter;
use dataplane::wire::MacAddr;
use dataplane::worker::{PORT_FABRIC, PORT_KERNEL, PORT_NIC};
use rig::{
    assert_same_frames, assert_seen, frame, frames, on_fabric, untagged, Counts, Lan, Ledger,
    NicSpec, Observers, Rig, Seen, Want, D0, LOCAL, P1, P1V, P2, S1, S2, UNKNOWN, VLAN,
};

/// A child runs for a few seconds; this only bounds a hang.
const DEADLINE: Duration = Duration::from_secs(120);

fn outer(inner: &str, extra_env: &[(&str, &str)]) {
    let lan = Lan::new();
    let prefix = common::unique_name("npdw");
    let _dir = dpdk::RuntimeDir::new(&prefix);
    let mut env = vec![("NP_PREFIX", prefix.as_str())];
    env.extend_from_slice(extra_env);
    let run = run_self(inner, Some(&lan.ns), &env, DEADLINE);
    for line in run.stdout.lines().filter(|l| {
        ["rig:", "steer:", "bad:", "update:"]
            .iter()
            .any(|p| l.starts_with(p))
    }) {
        eprintln!("{line}");
    }
    run.assert_passed();
    eprintln!("{inner} took {:?}", run.elapsed);
}

const N: u32 = 40;
const NN: usize = N as usize;
const N64: u64 = N as u64;
const BROADCAST: MacAddr = MacAddr::BROADCAST;
const MULTICAST: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);

/// Runs one scenario: `send` injects, then every observer is read and the counters compared.
fn scenario(
    rig: &Rig,
    name: &str,
    sc: u16,
    send: impl FnOnce(&Observers),
    want: Want,
    counts: Counts,
) -> Seen {
    let before = rig.dp.settled();
    let t0 = Instant::now();
    send(&rig.obs);
    let seen = rig.obs.collect(sc, want);
    let got = rig.dp.counts_since(&before, &counts);
    println!("steer: {name}: {}in {:?}", got.summary(), t0.elapsed());
    assert_eq!(got, counts, "{name}: worker counters");
    assert_seen(name, &seen, want);
    rig.dp.assert_pool_baseline(name);
    seen
}

#[test]
fn dataplane_steering_paths() {
    outer("inner_steering_paths", &[]);
}

#[test]
#[ignore = "runs only as the child of dataplane_steering_paths, inside its namespace"]
fn inner_steering_paths() {
    if !inner_test_requested("inner_steering_paths") {
        return;
    }
    let mut rig = Rig::start(&env_param("NP_PREFIX"), NicSpec::af_packet());
    let h = rig.obs.host_mac;
    let mut ledger = Ledger::default();

    // From the NIC.
    let sent = frames(N, LOCAL, h, None, 1, 64);
    let name = "NIC unicast to the local MAC -> kernel";
    let seen = scenario(
        &rig,
        name,
        1,
        |o| o.send_host(&sent),
        Want {
            tap: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_NIC, N64).tx(PORT_KERNEL, N64),
    );
    assert_same_frames(name, &seen.tap, &sent, untagged);
    ledger.tap(1, &sent);

    let sent = frames(N, LOCAL, h, Some(VLAN), 2, 64);
    let name = "NIC unicast to the local MAC, VLAN 100 -> kernel, tag kept";
    let seen = scenario(
        &rig,
        name,
        2,
        |o| o.send_host(&sent),
        Want {
            tap: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_NIC, N64).tx(PORT_KERNEL, N64),
    );
    assert_same_frames(name, &seen.tap, &sent, untagged);
    ledger.tap(2, &sent);

    let to_p1 = frames(N, P1, h, None, 3, 64);
    let to_p2 = frames(N, P2, h, None, 3, 100);
    let name = "NIC unicast to proxied MACs -> their sessions";
    let seen = scenario(
        &rig,
        name,
        3,
        |o| {
            for (a, b) in to_p1.iter().zip(&to_p2) {
                o.send_host(std::slice::from_ref(a));
                o.send_host(std::slice::from_ref(b));
            }
        },
        Want {
            s1: NN,
            s2: NN,
            ..Want::default()
        },
        Counts::none()
            .rx(PORT_NIC, 2 * N64)
            .tx(PORT_FABRIC, 2 * N64),
    );
    assert_same_frames(name, &seen.peers[0], &to_p1, on_fabric);
    assert_same_frames(name, &seen.peers[1], &to_p2, on_fabric);

    let sent = frames(N, P1V, h, Some(VLAN), 4, 80);
    let name = "NIC unicast to a proxied MAC, VLAN 100 -> its session, tag kept";
    let seen = scenario(
        &rig,
        name,
        4,
        |o| o.send_host(&sent),
        Want {
            s1: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_NIC, N64).tx(PORT_FABRIC, N64),
    );
    assert_same_frames(name, &seen.peers[0], &sent, on_fabric);

    for (sc, dst, what) in [(5, BROADCAST, "broadcast"), (6, MULTICAST, "multicast")] {
        let sent = frames(N, dst, h, None, sc, 64);
        let name = format!("NIC {what} -> kernel + sessions 1 and 2");
        let seen = scenario(
            &rig,
            &name,
            sc,
            |o| o.send_host(&sent),
            Want {
                tap: NN,
                s1: NN,
                s2: NN,
                ..Want::default()
            },
            // One frame in, three copies out: counted once per destination.
            Counts::none()
                .rx(PORT_NIC, N64)
                .tx(PORT_KERNEL, N64)
                .tx(PORT_FABRIC, 2 * N64),
        );
        assert_same_frames(&name, &seen.tap, &sent, untagged);
        ledger.tap(sc, &sent);
        assert_same_frames(&name, &seen.peers[0], &sent, on_fabric);
        assert_same_frames(&name, &seen.peers[1], &sent, on_fabric);
    }

    let sent = frames(N, BROADCAST, h, Some(VLAN), 7, 64);
    let name = "NIC broadcast, VLAN 100 -> kernel + session 1 (the only member)";
    let seen = scenario(
        &rig,
        name,
        7,
        |o| o.send_host(&sent),
        Want {
            tap: NN,
            s1: NN,
            ..Want::default()
        },
        Counts::none()
            .rx(PORT_NIC, N64)
            .tx(PORT_KERNEL, N64)
            .tx(PORT_FABRIC, N64),
    );
    assert_same_frames(name, &seen.peers[0], &sent, on_fabric);
    ledger.tap(7, &sent);

    let sent = frames(N, UNKNOWN, h, None, 8, 64);
    scenario(
        &rig,
        "NIC unknown unicast -> counted drop",
        8,
        |o| o.send_host(&sent),
        Want::default(),
        Counts::none()
            .rx(PORT_NIC, N64)
            .drop(DropReason::NotForUs, N64),
    );

    // From the kernel, uplink the NIC.
    let sent = frames(N, h, LOCAL, None, 9, 64);
    let name = "kernel unicast -> NIC (uplink NIC)";
    let seen = scenario(
        &rig,
        name,
        9,
        |o| o.send_kernel(&sent),
        Want {
            host: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_KERNEL, N64).tx(PORT_NIC, N64),
    );
    assert_same_frames(name, &seen.host, &sent, untagged);
    ledger.host(9, &sent);

    let sent = frames(N, h, LOCAL, Some(VLAN), 10, 64);
    let name = "kernel unicast, VLAN 100 -> NIC, tag kept";
    let seen = scenario(
        &rig,
        name,
        10,
        |o| o.send_kernel(&sent),
        Want {
            host: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_KERNEL, N64).tx(PORT_NIC, N64),
    );
    assert_same_frames(name, &seen.host, &sent, untagged);
    ledger.host(10, &sent);

    let sent = frames(N, P1, LOCAL, None, 11, 64);
    let name = "kernel unicast to a proxied MAC -> its session (hairpin)";
    let seen = scenario(
        &rig,
        name,
        11,
        |o| o.send_kernel(&sent),
        Want {
            s1: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_KERNEL, N64).tx(PORT_FABRIC, N64),
    );
    assert_same_frames(name, &seen.peers[0], &sent, on_fabric);

    let sent = frames(N, BROADCAST, LOCAL, None, 12, 64);
    let name = "kernel broadcast -> NIC + sessions 1 and 2";
    let seen = scenario(
        &rig,
        name,
        12,
        |o| o.send_kernel(&sent),
        Want {
            host: NN,
            s1: NN,
            s2: NN,
            ..Want::default()
        },
        Counts::none()
            .rx(PORT_KERNEL, N64)
            .tx(PORT_NIC, N64)
            .tx(PORT_FABRIC, 2 * N64),
    );
    assert_same_frames(name, &seen.host, &sent, untagged);
    ledger.host(12, &sent);

    // Failed over: domain 0 leaves through session 2's proxy; session 1 stays a client.
    rig.dp
        .table
        .set_uplink(D0, Uplink::Session(S2))
        .expect("uplink");
    rig.dp.table.remove_session_member(D0, S2);
    publish_and_wait(&mut rig);

    let sent = frames(N, h, LOCAL, None, 13, 64);
    let name = "kernel unicast -> session 2 (uplink session)";
    let seen = scenario(
        &rig,
        name,
        13,
        |o| o.send_kernel(&sent),
        Want {
            s2: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_KERNEL, N64).tx(PORT_FABRIC, N64),
    );
    assert_same_frames(name, &seen.peers[1], &sent, on_fabric);

    let sent = frames(N, BROADCAST, LOCAL, None, 14, 64);
    scenario(
        &rig,
        "kernel broadcast (uplink session 2) -> sessions 2 and 1, not the NIC",
        14,
        |o| o.send_kernel(&sent),
        Want {
            s1: NN,
            s2: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_KERNEL, N64).tx(PORT_FABRIC, 2 * N64),
    );

    // The NIC is not the uplink now: floods and frames for proxied MACs arriving on it are
    // refused (the proxy relays them), but unicast for our own MAC is still delivered (the
    // switch may have relearned it on our NIC before we moved back).
    let to_local = frames(N, LOCAL, h, None, 15, 64);
    let refused = [
        frames(N, BROADCAST, h, None, 15, 64),
        frames(N, P1, h, None, 15, 64),
    ]
    .concat();
    let name = "NIC frames while failed over -> own unicast to kernel, the rest inactive path";
    let seen = scenario(
        &rig,
        name,
        15,
        |o| {
            o.send_host(&to_local);
            o.send_host(&refused);
        },
        Want {
            tap: NN,
            ..Want::default()
        },
        Counts::none()
            .rx(PORT_NIC, 3 * N64)
            .tx(PORT_KERNEL, N64)
            .drop(DropReason::InactivePath, 2 * N64),
    );
    assert_same_frames(name, &seen.tap, &to_local, untagged);
    ledger.tap(15, &to_local);

    let sent = frames(N, LOCAL, h, None, 16, 64);
    let name = "LAN frames relayed by the uplink session -> kernel";
    let seen = scenario(
        &rig,
        name,
        16,
        |o| o.send_session(S2, &sent),
        Want {
            tap: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_FABRIC, N64).tx(PORT_KERNEL, N64),
    );
    assert_same_frames(name, &seen.tap, &sent, untagged);
    ledger.tap(16, &sent);

    rig.dp.table = rig::base_table();
    publish_and_wait(&mut rig);

    // From a client session.
    let spoof_p2 = frames(N, h, P2, None, 17, 64);
    let spoof_unknown = frames(N, h, UNKNOWN, None, 17, 64);
    let spoof_vlan = frames(N, h, P1, Some(VLAN), 17, 64);
    scenario(
        &rig,
        "session 1 with a spoofed source MAC -> counted drop",
        17,
        |o| {
            // Session 2's MAC, nobody's MAC, and session 1's own MAC in the wrong domain.
            o.send_session(S1, &spoof_p2);
            o.send_session(S1, &spoof_unknown);
            o.send_session(S1, &spoof_vlan);
        },
        Want::default(),
        Counts::none()
            .rx(PORT_FABRIC, 3 * N64)
            .drop(DropReason::Spoofed, 3 * N64),
    );

    let sent = frames(N, h, P1, None, 18, 64);
    let name = "session 1 unicast to the LAN -> NIC";
    let seen = scenario(
        &rig,
        name,
        18,
        |o| o.send_session(S1, &sent),
        Want {
            host: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_FABRIC, N64).tx(PORT_NIC, N64),
    );
    assert_same_frames(name, &seen.host, &sent, untagged);
    ledger.host(18, &sent);

    let sent = frames(N, h, P1V, Some(VLAN), 19, 64);
    let name = "session 1 unicast, VLAN 100 -> NIC, tag kept";
    let seen = scenario(
        &rig,
        name,
        19,
        |o| o.send_session(S1, &sent),
        Want {
            host: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_FABRIC, N64).tx(PORT_NIC, N64),
    );
    assert_same_frames(name, &seen.host, &sent, untagged);
    ledger.host(19, &sent);

    let sent = frames(N, BROADCAST, P1, None, 20, 64);
    let name = "session 1 broadcast -> NIC + kernel + session 2, not back to 1";
    let seen = scenario(
        &rig,
        name,
        20,
        |o| o.send_session(S1, &sent),
        Want {
            host: NN,
            tap: NN,
            s2: NN,
            ..Want::default()
        },
        Counts::none()
            .rx(PORT_FABRIC, N64)
            .tx(PORT_NIC, N64)
            .tx(PORT_KERNEL, N64)
            .tx(PORT_FABRIC, N64),
    );
    assert_same_frames(name, &seen.peers[1], &sent, on_fabric);
    ledger.host(20, &sent);
    ledger.tap(20, &sent);

    rig.dp.stop_and_check_pool();
    rig.check_captures(&ledger);
}

/// Publishes the control copy of the table and waits until the worker has adopted it (it
/// gives the replaced table back on adoption).
fn publish_and_wait(rig: &mut Rig) {
    rig.dp.publish();
    let deadline = Instant::now() + Duration::from_secs(2);
    while rig.dp.in_flight() > 0 {
        rig.dp.reclaimed();
        assert!(Instant::now() < deadline, "the worker adopts a new table");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn dataplane_bad_frames_from_nic() {
    outer("inner_bad_frames", &[]);
}

#[test]
#[ignore = "runs only as the child of dataplane_bad_frames_from_nic, inside its namespace"]
fn inner_bad_frames() {
    if !inner_test_requested("inner_bad_frames") {
        return;
    }
    let mut rig = Rig::start(&env_param("NP_PREFIX"), NicSpec::af_packet());
    let h = rig.obs.host_mac;
    let max = dataplane::steer::DEFAULT_MAX_FRAME_LEN;
    let mut ledger = Ledger::default();

    let sent = frames(N, LOCAL, h, Some(VLAN), 30, max);
    scenario(
        &rig,
        "largest frame the table accepts (1522 bytes, tagged) -> kernel",
        30,
        |o| o.send_host(&sent),
        Want {
            tap: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_NIC, N64).tx(PORT_KERNEL, N64),
    );
    ledger.tap(30, &sent);

    let mut sent = frames(N, LOCAL, h, None, 31, max + 1);
    sent.extend(frames(N, LOCAL, h, Some(VLAN), 31, 1700));
    scenario(
        &rig,
        "oversize frames (1523 and 1700 bytes) -> counted drop",
        31,
        |o| o.send_host(&sent),
        Want::default(),
        Counts::none()
            .rx(PORT_NIC, 2 * N64)
            .drop(DropReason::Oversize, 2 * N64),
    );

    let sent: Vec<Vec<u8>> = (0..N)
        .flat_map(|i| {
            [
                // Local experimental ethertype, an 802.3 length, an unaccepted ethertype
                // behind a tag.
                frame(LOCAL, h, None, 0x88b5, 32, i, 64),
                frame(LOCAL, h, None, 0x0040, 32, i, 64),
                frame(LOCAL, h, Some(VLAN), 0x88cc, 32, i, 64),
            ]
        })
        .collect();
    scenario(
        &rig,
        "unknown ethertypes -> counted drop",
        32,
        |o| o.send_host(&sent),
        Want::default(),
        Counts::none()
            .rx(PORT_NIC, 3 * N64)
            .drop(DropReason::UnknownEthertype, 3 * N64),
    );

    let sent = frames(N, LOCAL, h, Some(200), 33, 64);
    scenario(
        &rig,
        "unmapped VLAN 200 -> counted drop",
        33,
        |o| o.send_host(&sent),
        Want::default(),
        Counts::none()
            .rx(PORT_NIC, N64)
            .drop(DropReason::UnknownVlan, N64),
    );

    // Still forwarding after all that.
    let sent = frames(N, LOCAL, h, None, 34, 64);
    scenario(
        &rig,
        "good frames after the bad ones -> kernel",
        34,
        |o| o.send_host(&sent),
        Want {
            tap: NN,
            ..Want::default()
        },
        Counts::none().rx(PORT_NIC, N64).tx(PORT_KERNEL, N64),
    );
    ledger.tap(34, &sent);
    rig.dp.stop_and_check_pool();
    rig.check_captures(&ledger);
}

/// Deletes a file on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn dataplane_runts_from_nic() {
    outer("inner_runts", &[]);
}

#[test]
#[ignore = "runs only as the child of dataplane_runts_from_nic, inside its namespace"]
fn inner_runts() {
    if !inner_test_requested("inner_runts") {
        return;
    }
    // A kernel interface never hands af_packet a frame under 14 bytes, so the runts come
    // from DPDK's pcap driver replaying a capture: the same rx path into the worker, with
    // bytes no kernel would let through. It replays once, when the worker first polls.
    let dir = std::env::temp_dir();
    let rx = TempFile(dir.join(format!("np-runts-rx-{}.pcap", std::process::id())));
    let tx = TempFile(dir.join(format!("np-runts-tx-{}.pcap", std::process::id())));
    let h = MacAddr([0x02, 0x4e, 0x50, 0, 7, 7]);
    let good = |seq| frame(LOCAL, h, None, 0x0800, 40, seq, 64);
    let full = good(99);
    let tagged = frame(LOCAL, h, Some(VLAN), 0x0800, 40, 98, 64);
    let mut capture: Vec<(Vec<u8>, Option<DropReason>)> = Vec::new();
    for seq in 0..5 {
        capture.push((good(seq), None));
    }
    for len in [0usize, 1, 6, 12, 13] {
        capture.push((full[..len].to_vec(), Some(DropReason::Runt)));
    }
    // Claims a tag but ends inside it.
    capture.push((tagged[..16].to_vec(), Some(DropReason::Runt)));
    // 3000 bytes do not fit one mbuf: the driver chains two; the worker must free both.
    for len in [1523usize, 2048, 3000] {
        capture.push((
            frame(LOCAL, h, None, 0x0800, 40, 97, len),
            Some(DropReason::Oversize),
        ));
    }
    capture.push((
        frame(LOCAL, h, None, 0x88b5, 40, 96, 64),
        Some(DropReason::UnknownEthertype),
    ));
    capture.push((
        frame(LOCAL, h, None, 0x0100, 40, 95, 64),
        Some(DropReason::UnknownEthertype),
    ));
    for seq in 5..10 {
        capture.push((good(seq), None));
    }
    {
        let file = std::fs::File::create(&rx.0).expect("create the capture");
        let mut w = PcapWriter::new(std::io::BufWriter::new(file)).expect("pcap header");
        for (i, (f, _)) in capture.iter().enumerate() {
            w.write_frame(Duration::from_millis(i as u64), f)
                .expect("write a frame");
        }
        w.into_inner().expect("flush the capture");
    }
    let spec = NicSpec {
        devargs: format!(
            "net_pcap0,rx_pcap={},tx_pcap={}",
            rx.0.display(),
            tx.0.display()
        ),
        mtu: None,
        promiscuous: false,
    };
    let mut rig = Rig::start(&env_param("NP_PREFIX"), spec);
    let mut want = Counts::none()
        .rx(PORT_NIC, capture.len() as u64)
        .tx(PORT_KERNEL, 10);
    for (_, r) in &capture {
        if let Some(r) = r {
            want = want.drop(*r, 1);
        }
    }
    let seen = rig.obs.collect(
        40,
        Want {
            tap: 10,
            ..Want::default()
        },
    );
    let zero = CountersSnapshot {
        ports: vec![Default::default(); 3],
        drops: [0; DropReason::COUNT],
    };
    let got = rig.dp.counts_since(&zero, &want);
    println!(
        "bad: pcap replay of {} frames: {}",
        capture.len(),
        got.summary()
    );
    assert_seen(
        "pcap replay",
        &seen,
        Want {
            tap: 10,
            ..Want::default()
        },
    );
    let good_frames: Vec<Vec<u8>> = (0..10).map(good).collect();
    assert_same_frames("pcap replay", &seen.tap, &good_frames, untagged);
    assert_eq!(got, want, "pcap replay: worker counters");
    rig.dp.assert_pool_baseline("pcap replay");
    rig.dp.stop_and_check_pool();
    let mut ledger = Ledger::default();
    ledger.tap(40, &good_frames);
    rig.check_captures(&ledger);
    drop(rig);
    // Nothing was sent out of the NIC: the tx capture holds its file header only.
    let len = std::fs::metadata(&tx.0).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, 24, "no frame left through the NIC");
}

#[test]
fn dataplane_table_update_under_traffic() {
    outer("inner_table_update", &[]);
}

/// Frames streamed through the worker while tables change.
const STREAM: u32 = 20_000;
/// Frames in flight at most, well inside every queue on the path (af_packet ring, TAP,
/// socket buffers), so a loss is the worker's, not the kernel's.
const WINDOW: u32 = 128;
/// The sender waits for a new table after every this many frames, so that tables really
/// change under the traffic (at least 20,000 / 8 = 2,500 of them, whatever the timing).
const FRAMES_PER_TABLE: u32 = 8;

#[test]
#[ignore = "runs only as the child of dataplane_table_update_under_traffic, inside its namespace"]
fn inner_table_update() {
    if !inner_test_requested("inner_table_update") {
        return;
    }
    let mut rig = Rig::start_with(&env_param("NP_PREFIX"), NicSpec::af_packet(), false);
    let h = rig.obs.host_mac;
    // Alternate domains: untagged (domain 0) and VLAN 100 (domain 1).
    let stream_frame = |seq: u32| {
        frame(
            LOCAL,
            h,
            (seq % 2 == 1).then_some(VLAN),
            0x0800,
            50,
            seq,
            64,
        )
    };
    let before = rig.dp.settled();
    let published_before = rig.dp.published();
    let received = AtomicU32::new(0);
    let tables = AtomicU64::new(0);
    let stream_done = AtomicBool::new(false);
    let obs = &rig.obs;
    let dp = &mut rig.dp;
    let t0 = Instant::now();
    let (observed, sent, published) = std::thread::scope(|s| {
        let observer = s.spawn(|| {
            let mut seen = vec![false; STREAM as usize];
            let (mut distinct, mut dups, mut foreign, mut corrupt) = (0u32, 0u32, 0u32, 0u32);
            let mut buf = [0u8; 2048];
            let mut last = Instant::now();
            while distinct < STREAM && last.elapsed() < Duration::from_secs(3) {
                let Some(n) = obs
                    .tap
                    .recv(&mut buf, Duration::from_millis(50))
                    .expect("recv")
                else {
                    continue;
                };
                let got = &buf[..n.min(buf.len())];
                match rig::marker(got) {
                    Some((50, seq)) if seq < STREAM => {
                        // Byte for byte, as the raw socket shows it (tag moved out).
                        if got != untagged(&stream_frame(seq)).as_slice() {
                            corrupt += 1;
                        } else if std::mem::replace(&mut seen[seq as usize], true) {
                            dups += 1;
                        } else {
                            distinct += 1;
                            received.store(distinct, Ordering::Release);
                            last = Instant::now();
                        }
                    }
                    _ => foreign += 1,
                }
            }
            let missing: Vec<u32> = (0..STREAM)
                .filter(|&i| !seen[i as usize])
                .take(10)
                .collect();
            (distinct, dups, foreign, corrupt, missing)
        });
        let sender = s.spawn(|| {
            let mut sent = 0u32;
            let mut stalled = Instant::now();
            while sent < STREAM {
                let behind = u64::from(sent / FRAMES_PER_TABLE) > tables.load(Ordering::Acquire);
                if behind || sent - received.load(Ordering::Acquire) >= WINDOW {
                    if stalled.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                    continue;
                }
                stalled = Instant::now();
                obs.send_host(&[stream_frame(sent)]);
                sent += 1;
            }
            stream_done.store(true, Ordering::Release);
            sent
        });
        // Control: add and remove unrelated proxied MACs, one published table per change.
        let mut k = 0u32;
        while !stream_done.load(Ordering::Acquire) {
            let mac = |k: u32| MacAddr([0x02, 0xaa, 0, (k >> 16) as u8, (k >> 8) as u8, k as u8]);
            let session = SessionId(1 + (k % 2) as u16);
            dp.table
                .add_proxied(if k % 3 == 0 { rig::D1 } else { D0 }, mac(k), session)
                .expect("add");
            if k >= 64 {
                let old = k - 64;
                dp.table
                    .remove(if old % 3 == 0 { rig::D1 } else { D0 }, mac(old));
            }
            dp.publish();
            tables.store(dp.published() - published_before, Ordering::Release);
            k += 1;
        }
        let sent = sender.join().expect("sender");
        (
            observer.join().expect("observer"),
            sent,
            dp.published() - published_before,
        )
    });
    let elapsed = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(2);
    while rig.dp.in_flight() > 0 && Instant::now() < deadline {
        rig.dp.reclaimed();
        std::thread::sleep(Duration::from_millis(1));
    }
    let reclaimed = rig.dp.reclaimed();
    let want = Counts::none()
        .rx(PORT_NIC, u64::from(STREAM))
        .tx(PORT_KERNEL, u64::from(STREAM));
    let got = rig.dp.counts_since(&before, &want);
    let (distinct, dups, foreign, corrupt, missing) = observed;
    println!(
        "update: {sent} frames sent, {distinct} arrived ({dups} duplicates, {foreign} foreign) in {elapsed:?} ({:.0} frames/s) while {published} tables were published during it ({:.0}/s); worker gave back {reclaimed}; {}",
        f64::from(distinct) / elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64(),
        got.summary()
    );
    assert_eq!(sent, STREAM, "the sender was never stalled for 3 s");
    assert_eq!(
        distinct, STREAM,
        "every frame arrived; first missing {missing:?}"
    );
    assert_eq!(dups, 0);
    assert_eq!(corrupt, 0, "frames arrived intact");
    assert_eq!(foreign, 0);
    assert!(
        published >= u64::from(STREAM / FRAMES_PER_TABLE),
        "{published} tables published during the stream"
    );
    // Every published table was adopted: each adoption hands the replaced one back.
    assert_eq!(
        reclaimed,
        rig.dp.published(),
        "the worker adopted every table"
    );
    assert_eq!(got, want, "worker counters");
    rig.dp.assert_pool_baseline("table updates under traffic");
    rig.dp.stop_and_check_pool();
}
