//! `nicproxy bench-guest` (hidden): the verbs side of the fabric benchmark and of the
//! verbs fabric tests, run inside the Soft-RoCE lab guest (tests/lab/vm.sh: rxe_a on
//! 10.99.0.1, rxe_b on 10.99.0.2, joined by a veth). Each mode prints one line,
//! [`RESULT_TAG`] followed by a JSON object, and exits non-zero on failure (the object then
//! has an `error`).
//!
//! - `rtt`: round trips (one frame in flight, echoed by the other end as a worker forwards:
//!   the received mbuf goes straight back out) over the project's verbs fabric between two
//!   endpoints of this process, taking turns with `ibv_rc_pingpong` on the same devices
//!   with the same size, in rounds that add up to the same iteration count (the guest's
//!   CPUs are threads of a shared host, whose load changes from minute to minute); each
//!   round records what rxe's counters, the softirqs and the two threads' scheduling did
//!   (see [`super::guest_stats`]). Then a windowed one-way stream.
//! - `exchange`: N frames of mixed sizes each way, every byte checked, none lost.
//! - `failover`: the same exchange with a peer *process*; then the peer is SIGKILLed under
//!   traffic and this side must see the session down through the fabric alone (the
//!   worker's failed completion or rdma_cm's disconnect; the daemon's heartbeats, which
//!   bound the detection time, are not part of this), an unknown node is turned away with
//!   rdma_reject, and the peer, started again, reconnects and a second exchange passes.
//! - `peer`: the other process of `failover`.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use dataplane::dpdk::Eal;
use dataplane::fabric::verbs::VerbsEvent;
use dataplane::verbs::{ConnStatus, Listener, VerbsError};
use serde_json::{json, Value};

use super::guest_stats::{Snapshot, ThreadSched};
use super::verbs_pair::{build, check, pattern, Endpoint, Flow};
use super::{percentiles_json, rtt_histogram, Sizes};

/// What starts the result line on stdout.
pub const RESULT_TAG: &str = "NICPROXY-BENCH-GUEST ";
const TAG_A: u8 = 0xA0;
const TAG_B: u8 = 0xB0;
const MBUFS: u32 = 4095;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `nicproxy bench-guest` flags.
#[derive(Debug, Args)]
pub struct GuestArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Round trips and a one-way stream over the verbs fabric, then ibv_rc_pingpong.
    Rtt {
        /// Frame sizes (bytes, 32..=1514); one run each.
        #[arg(long = "size", default_values_t = [64usize, 1500])]
        sizes: Vec<usize>,
        /// Round trips per size (also ibv_rc_pingpong's -n).
        #[arg(long, default_value_t = 10_000)]
        iters: u64,
        /// Frames streamed one way per size.
        #[arg(long, default_value_t = 100_000)]
        stream: u64,
        /// Turns the fabric and ibv_rc_pingpong take, each with its share of the round
        /// trips, alternating (so both meet the same host load).
        #[arg(long, default_value_t = 5)]
        rounds: u64,
    },
    /// A checked exchange of mixed-size frames each way between two endpoints.
    Exchange {
        /// Frames each way.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Frames in flight per direction (the pace).
        #[arg(long, default_value_t = 96)]
        window: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 1200)]
        limit_s: u64,
    },
    /// Exchange with a peer process, kill it, see the session down, reconnect.
    Failover {
        /// Frames each way, before the kill and after the reconnect.
        #[arg(long, default_value_t = 20_000)]
        frames: u64,
    },
    /// The peer process of `failover` (connects to `--target` as `--id`).
    Peer {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value = "bench-b")]
        id: String,
        #[arg(long)]
        frames: u64,
    },
}

/// Runs the mode and prints its result line.
pub fn main(args: GuestArgs) -> ExitCode {
    let res = match args.mode {
        Mode::Rtt {
            sizes,
            iters,
            stream,
            rounds,
        } => rtt(&sizes, iters, stream, rounds),
        Mode::Exchange {
            frames,
            window,
            limit_s,
        } => exchange(frames, window, Duration::from_secs(limit_s)),
        Mode::Failover { frames } => failover(frames),
        Mode::Peer { target, id, frames } => peer(target, &id, frames),
    };
    let (v, code) = match res {
        Ok(v) => (v, ExitCode::SUCCESS),
        Err(e) => (json!({ "error": e }), ExitCode::FAILURE),
    };
    println!("{RESULT_TAG}{v}");
    code
}

struct Lab {
    ip_a: IpAddr,
    ip_b: IpAddr,
    rxe_a: String,
    rxe_b: String,
}

fn lab() -> Result<Lab, String> {
    let var = |k: &str| {
        std::env::var(k).map_err(|_| {
            format!("{k} is unset: bench-guest runs inside the lab guest (tests/lab/vm.sh)")
        })
    };
    let ip =
        |k: &str| -> Result<IpAddr, String> { var(k)?.parse().map_err(|e| format!("{k}: {e}")) };
    Ok(Lab {
        ip_a: ip("NICPROXY_IP_A")?,
        ip_b: ip("NICPROXY_IP_B")?,
        rxe_a: var("NICPROXY_RXE_A")?,
        rxe_b: var("NICPROXY_RXE_B")?,
    })
}

fn eal() -> Result<Eal, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let args = [
        "--no-pci".to_string(),
        "--no-huge".into(),
        "-m".into(),
        "256".into(),
        "--no-shconf".into(),
        format!("--file-prefix=npbg{}", std::process::id()),
        format!("--lcores=0@(0-{})", cpus - 1),
        "--no-telemetry".into(),
        "--log-level=*:warning".into(),
    ];
    Eal::init(&args).map_err(|e| e.to_string())
}

/// Accepts on `listener` (A) and connects from B in parallel; both sessions handed over.
fn connect_pair(lab: &Lab, a: &mut Endpoint, b: &mut Endpoint) -> Result<(), String> {
    let listener = Listener::bind(SocketAddr::new(lab.ip_a, 0)).map_err(|e| e.to_string())?;
    let target = listener.local_addr();
    let new_b = std::thread::scope(|s| {
        let prep_b = b.preparer.clone();
        let ip_b = lab.ip_b;
        let h = s.spawn(move || {
            super::verbs_pair::connect(&prep_b, ip_b, target, "bench-b", CONNECT_TIMEOUT)
        });
        let new_a = a.accept(&listener, "bench-b", CONNECT_TIMEOUT);
        let new_b = h
            .join()
            .map_err(|_| "the connecting thread panicked".to_string())?;
        a.add(new_a.map_err(|e| format!("accepting on {}: {e}", lab.rxe_a))?)?;
        new_b.map_err(|e| format!("connecting from {}: {e}", lab.rxe_b))
    })?;
    b.add(new_b)?;
    // The sessions reach the worker sides at their next receive poll; a send before
    // that would find no session (a counted drop).
    a.poll();
    b.poll();
    Ok(())
}

// --------------------------------------------------------------------------------- rtt

/// One size's round trips, pooled over its rounds.
struct RttTally {
    h: hdrhistogram::Histogram<u64>,
    /// The slowest round trips: (ms since the round started, round, µs).
    slow: Vec<(f64, usize, u64)>,
}

fn rtt(sizes: &[usize], iters: u64, stream: u64, rounds: u64) -> Result<Value, String> {
    let lab = lab()?;
    if let Some(bad) = sizes
        .iter()
        .find(|&&s| !(super::verbs_pair::HDR..=Sizes::MAX).contains(&s))
    {
        return Err(format!(
            "frame size {bad} outside {}..={}",
            super::verbs_pair::HDR,
            Sizes::MAX
        ));
    }
    let rounds = rounds.clamp(1, iters.max(1));
    let eal = eal()?;
    let _main = eal.register_thread().map_err(|e| e.to_string())?;
    let mut a = Endpoint::new(&eal, lab.ip_a, "bg_a", MBUFS)?;
    let mut b = Endpoint::new(&eal, lab.ip_b, "bg_b", MBUFS)?;
    connect_pair(&lab, &mut a, &mut b)?;
    let devices = [lab.rxe_a.as_str(), lab.rxe_b.as_str()];
    let mut runs = Vec::new();
    for &size in sizes {
        // The fabric and ibv_rc_pingpong take turns, a share of the round trips each per
        // round: the guest's CPUs are threads of a shared host whose load changes by the
        // minute, and two phases run one after the other would each see a different load.
        let mut tally = RttTally {
            h: rtt_histogram(),
            slow: Vec::new(),
        };
        let (mut pp_iters, mut pp_us) = (0u64, 0.0f64);
        let mut per_round = Vec::new();
        for r in 0..rounds as usize {
            let n = iters / rounds + u64::from((r as u64) < iters % rounds);
            // The first round warms the fabric up (pool caches, QP state) unmeasured;
            // ibv_rc_pingpong's own timing likewise starts after its connection set-up.
            let warmup = if r == 0 { (iters / 10).min(500) } else { 0 };
            let ours = ping_round(&eal, &lab, &mut a, &mut b, size, n, warmup, r, &mut tally)?;
            let before = Snapshot::take(&devices);
            let pp_start = uptime_s();
            let pp = ibv_rc_pingpong(&lab, size, n)?;
            let pp_kernel = Snapshot::take(&devices).since(&before);
            pp_iters += n;
            pp_us += pp * n as f64;
            per_round.push(json!({
                "round_trips": n,
                "fabric_mean_us": ours["mean_us"],
                "ibv_rc_pingpong_usec_per_iter": pp,
                "fabric": ours,
                "ibv_rc_pingpong_guest_kernel": pp_kernel,
                "ibv_rc_pingpong_uptime_s": [pp_start, uptime_s()],
            }));
        }
        let pp_mean = pp_us / pp_iters.max(1) as f64;
        let h = &tally.h;
        let curve: Vec<Value> = [1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0]
            .iter()
            .map(|&p| json!([p, h.value_at_percentile(p) as f64 / 1e3]))
            .collect();
        let mut v = json!({
            "size": size,
            "rounds": rounds,
            "rtt_us": percentiles_json(h),
            "rtt_curve": curve,
            "over_1ms": h.count_between(1_000_000, u64::MAX),
            "slow_ms_round_us": tally.slow,
            "ibv_rc_pingpong_usec_per_iter": pp_mean,
            "per_round": per_round,
        });
        let (fps, mbit) = stream_run(&eal, &mut a, &mut b, size, stream)?;
        v["stream_fps"] = json!(fps);
        v["stream_frames"] = json!(stream);
        v["stream_window"] = json!(STREAM_WINDOW);
        v["stream_mbit_s"] = json!(mbit);
        eprintln!(
            "bench-guest: {size} B over the verbs fabric: {}; ibv_rc_pingpong -s {size}: {pp_mean:.2} usec/iter over {rounds} rounds",
            v["rtt_us"]
        );
        runs.push(v);
    }
    let counters = (a.counters(), b.counters());
    Ok(json!({
        "mode": "rtt",
        "iters": iters,
        "runs": runs,
        "counters_a": format!("{:?}", counters.0),
        "counters_b": format!("{:?}", counters.1),
        "devices": [lab.rxe_a, lab.rxe_b],
        "guest_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "guest_loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    }))
}

const STREAM_WINDOW: u64 = 128;

/// The guest's uptime (seconds since boot, which QEMU's start precedes by little): lines
/// up a round with what the host saw at that moment.
fn uptime_s() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `warmup + n` round trips of `size` B frames, B pinging and A echoing each frame straight
/// back (the received mbuf itself, as a worker forwards), one in flight; the last `n` go
/// into `tally`. Returns the round's mean and what the guest's kernel and the two threads
/// did meanwhile.
#[allow(clippy::too_many_arguments)]
fn ping_round(
    eal: &Eal,
    lab: &Lab,
    a: &mut Endpoint,
    b: &mut Endpoint,
    size: usize,
    n: u64,
    warmup: u64,
    round: usize,
    tally: &mut RttTally,
) -> Result<Value, String> {
    let sz = Sizes::Fixed(size);
    let devices = [lab.rxe_a.as_str(), lab.rxe_b.as_str()];
    let started = Barrier::new(2);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let echo = s.spawn(|| {
            let _reg = eal.register_thread().ok();
            started.wait();
            let sched0 = ThreadSched::now();
            while !stop.load(Ordering::Acquire) {
                a.poll();
                let mut any = false;
                while let Some((_, m)) = a.next_frame() {
                    a.send(m);
                    any = true;
                }
                if any {
                    a.flush();
                }
            }
            (ThreadSched::now().since(&sched0), a.tally.total())
        });
        let res = (|| -> Result<Value, String> {
            let pat = pattern();
            let mut h = rtt_histogram();
            started.wait();
            let mut before = (Snapshot::take(&devices), ThreadSched::now(), Instant::now());
            for i in 0..warmup + n {
                if i == warmup {
                    before = (Snapshot::take(&devices), ThreadSched::now(), Instant::now());
                }
                let m = build(&b.pool, i, 0, size, TAG_B, &pat).ok_or("B's pool is empty")?;
                let t = Instant::now();
                b.send(m);
                b.flush();
                loop {
                    b.poll();
                    if let Some((_, m)) = b.next_frame() {
                        let (seq, _) = check(m.data(), sz, TAG_B, &pat)?;
                        if seq != i {
                            return Err(format!("echo {seq} arrived where {i} was due"));
                        }
                        break;
                    }
                    // Generous: the guest's CPUs are host threads, and the host's
                    // SCHED_FIFO threads (lab daemons' control loops) have stopped the
                    // whole guest for more than 10 s here.
                    if t.elapsed() > Duration::from_secs(60) {
                        return Err(format!(
                            "no echo of ping {i} of round {round} within 60 s; drops {:?}",
                            b.drops()
                        ));
                    }
                }
                if i >= warmup {
                    let ns = t.elapsed().as_nanos() as u64;
                    h.saturating_record(ns);
                    if ns >= 1_000_000 && tally.slow.len() < 64 {
                        let at = (t - before.2).as_secs_f64() * 1e3;
                        tally.slow.push((at, round, ns / 1000));
                    }
                }
            }
            let took = before.2.elapsed();
            let kernel = Snapshot::take(&devices).since(&before.0);
            let ping = ThreadSched::now().since(&before.1);
            tally
                .h
                .add(&h)
                .map_err(|e| format!("pooling the round trips: {e}"))?;
            Ok(json!({
                "uptime_s": [uptime_s() - took.as_secs_f64(), uptime_s()],
                "mean_us": h.mean() / 1e3,
                "p50_us": h.value_at_quantile(0.5) as f64 / 1e3,
                "p99_us": h.value_at_quantile(0.99) as f64 / 1e3,
                "wall_s": took.as_secs_f64(),
                "guest_kernel": kernel,
                "ping_thread": ping,
            }))
        })();
        stop.store(true, Ordering::Release);
        let (echo_sched, echo_drops) = echo
            .join()
            .map_err(|_| "the echo thread panicked".to_string())?;
        let mut v = res?;
        if echo_drops > 0 {
            return Err(format!("the echo side dropped {echo_drops} frames"));
        }
        v["echo_thread"] = echo_sched;
        Ok(v)
    })
}

/// `frames` frames of `size` B streamed B → A with [`STREAM_WINDOW`] in flight, every
/// frame checked; (frames/s, Mbit/s).
fn stream_run(
    eal: &Eal,
    a: &mut Endpoint,
    b: &mut Endpoint,
    size: usize,
    frames: u64,
) -> Result<(f64, f64), String> {
    let sz = Sizes::Fixed(size);
    let abort = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(600);
    std::thread::scope(|s| {
        let rx = s.spawn(|| -> Result<u64, String> {
            let _reg = eal.register_thread().ok();
            let mut flow = Flow::new(sz, 0, STREAM_WINDOW, TAG_A, TAG_B);
            while !flow.done(frames) {
                if abort.load(Ordering::Acquire) || Instant::now() > deadline {
                    return Err(format!(
                        "the stream stopped at {} of {frames} frames",
                        flow.received
                    ));
                }
                flow.step(a)?;
            }
            if a.tally.total() > 0 {
                return Err(format!("A dropped frames: {:?}", a.drops()));
            }
            Ok(flow.received)
        });
        let mut flow = Flow::new(sz, frames, STREAM_WINDOW, TAG_B, TAG_A);
        let res = flow.run(b, 0, deadline);
        if res.is_err() {
            abort.store(true, Ordering::Release);
        }
        let got = rx
            .join()
            .map_err(|_| "the receiving thread panicked".to_string())??;
        let took = res?;
        if got != frames {
            return Err(format!("A received {got} of {frames} streamed frames"));
        }
        Ok((
            frames as f64 / took.as_secs_f64(),
            flow.bytes_out as f64 * 8.0 / took.as_secs_f64() / 1e6,
        ))
    })
}

/// The index of the RoCE v2 GID that holds `ip` on `dev` (rxe's is 1); 1 if not found.
fn gid_index(dev: &str, ip: IpAddr) -> u32 {
    let IpAddr::V4(v4) = ip else { return 1 };
    let o = v4.octets();
    let want = format!(
        "0000:0000:0000:0000:0000:ffff:{:02x}{:02x}:{:02x}{:02x}",
        o[0], o[1], o[2], o[3]
    );
    let p = format!("/sys/class/infiniband/{dev}/ports/1");
    (0..16)
        .find(|i| {
            let gid = std::fs::read_to_string(format!("{p}/gids/{i}")).unwrap_or_default();
            let ty =
                std::fs::read_to_string(format!("{p}/gid_attrs/types/{i}")).unwrap_or_default();
            gid.trim() == want && ty.trim() == "RoCE v2"
        })
        .unwrap_or(1)
}

/// Kills a child on drop unless it was waited for.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Runs ibv_rc_pingpong between rxe_a (server) and rxe_b; its usec/iter.
fn ibv_rc_pingpong(lab: &Lab, size: usize, iters: u64) -> Result<f64, String> {
    // A new port per run: a run's server may still hold the last one.
    static RUNS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let port = 18_000
        + (std::process::id() % 1000) as u16 * 16
        + RUNS.fetch_add(1, Ordering::Relaxed) % 16;
    let (ga, gb) = (
        gid_index(&lab.rxe_a, lab.ip_a),
        gid_index(&lab.rxe_b, lab.ip_b),
    );
    let common = |dev: &str, gid: u32| {
        vec![
            "-d".to_string(),
            dev.to_string(),
            "-g".into(),
            gid.to_string(),
            "-s".into(),
            size.to_string(),
            "-n".into(),
            iters.to_string(),
            "-p".into(),
            port.to_string(),
        ]
    };
    // The server waits for the client's TCP connection; its stdout is a pipe, so it
    // prints nothing until it exits: give it time to listen, and retry the client while
    // it cannot connect yet.
    let mut server = ChildGuard(Some(
        Command::new("timeout")
            .arg("600")
            .arg("ibv_rc_pingpong")
            .args(common(&lab.rxe_a, ga))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting ibv_rc_pingpong (ibverbs-utils): {e}"))?,
    ));
    let mut text = String::new();
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(300));
        let client = Command::new("timeout")
            .arg("600")
            .arg("ibv_rc_pingpong")
            .args(common(&lab.rxe_b, gb))
            .arg(lab.ip_a.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running the ibv_rc_pingpong client: {e}"))?;
        text = String::from_utf8_lossy(&client.stdout).into_owned()
            + &String::from_utf8_lossy(&client.stderr);
        if !text.contains("Couldn't connect") {
            break;
        }
    }
    let _ = server.0.as_mut().map(Child::wait);
    parse_usec_per_iter(&text)
        .ok_or_else(|| format!("the ibv_rc_pingpong client gave no usec/iter:\n{text}"))
}

/// "1000 iters in 0.12 seconds = 120.00 usec/iter" → 120.0.
fn parse_usec_per_iter(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.contains("usec/iter"))?
        .split('=')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------- exchange

fn exchange(frames: u64, window: u64, limit: Duration) -> Result<Value, String> {
    let lab = lab()?;
    let eal = eal()?;
    let _main = eal.register_thread().map_err(|e| e.to_string())?;
    let mut a = Endpoint::new(&eal, lab.ip_a, "bg_a", MBUFS)?;
    let mut b = Endpoint::new(&eal, lab.ip_b, "bg_b", MBUFS)?;
    connect_pair(&lab, &mut a, &mut b)?;
    let deadline = Instant::now() + limit;
    let run = |ep: &mut Endpoint, tag_out, tag_in| -> Result<Value, String> {
        let _reg = eal.register_thread().map_err(|e| e.to_string())?;
        let mut flow = Flow::new(Sizes::Mixed, frames, window, tag_out, tag_in);
        let took = flow.run(ep, frames, deadline)?;
        Ok(json!({
            "sent": flow.next_seq,
            "received": flow.received,
            "seconds": took.as_secs_f64(),
            "fps_in": flow.received as f64 / took.as_secs_f64(),
            "mbit_s_out": flow.bytes_out as f64 * 8.0 / took.as_secs_f64() / 1e6,
            "bytes_out": flow.bytes_out,
        }))
    };
    let t0 = Instant::now();
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| run(&mut a, TAG_A, TAG_B));
        let hb = s.spawn(|| run(&mut b, TAG_B, TAG_A));
        (ha.join(), hb.join())
    });
    let wall = t0.elapsed();
    let ra = ra.map_err(|_| "thread A panicked".to_string())??;
    let rb = rb.map_err(|_| "thread B panicked".to_string())??;
    let (ca, cb) = (a.counters(), b.counters());
    let in_use = (a.pool.in_use(), b.pool.in_use());
    Ok(json!({
        "mode": "exchange",
        "frames_each_way": frames,
        "sizes": Sizes::Mixed.label(),
        "window": window,
        "wall_s": wall.as_secs_f64(),
        "a": ra,
        "b": rb,
        "counters_a": {"inline": ca.inline_sends, "gather": ca.gather_sends, "signalled": ca.signalled, "errors": ca.errors, "early": ca.early, "stale": ca.stale},
        "counters_b": {"inline": cb.inline_sends, "gather": cb.gather_sends, "signalled": cb.signalled, "errors": cb.errors, "early": cb.early, "stale": cb.stale},
        "drops": {"a": a.tally.total(), "b": b.tally.total()},
        "mbufs_in_use": [in_use.0, in_use.1],
    }))
}

// ---------------------------------------------------------------------------- failover

fn spawn_peer(target: SocketAddr, id: &str, frames: u64) -> Result<ChildGuard, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let child = Command::new(exe)
        .args([
            "bench-guest",
            "peer",
            "--target",
            &target.to_string(),
            "--id",
            id,
            "--frames",
            &frames.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the peer process: {e}"))?;
    Ok(ChildGuard(Some(child)))
}

/// What the peer printed, once it exits by itself or after `grace`, when it is killed.
fn peer_output(g: &mut ChildGuard, grace: Duration) -> String {
    let Some(mut c) = g.0.take() else {
        return String::new();
    };
    let t0 = Instant::now();
    while matches!(c.try_wait(), Ok(None)) && t0.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    c.wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn failover(frames: u64) -> Result<Value, String> {
    let lab = lab()?;
    let eal = eal()?;
    let _main = eal.register_thread().map_err(|e| e.to_string())?;
    let mut a = Endpoint::new(&eal, lab.ip_a, "bg_a", MBUFS)?;
    let listener = Listener::bind(SocketAddr::new(lab.ip_a, 0)).map_err(|e| e.to_string())?;
    let target = listener.local_addr();
    let limit = Duration::from_secs(600);

    // 1. The peer process connects; a checked exchange each way.
    let t_spawn = Instant::now();
    let mut child = spawn_peer(target, "bench-b", frames)?;
    let new = a
        .accept(&listener, "bench-b", CONNECT_TIMEOUT)
        .map_err(|e| {
            format!(
                "accepting the peer: {e}\n{}",
                peer_output(&mut child, Duration::ZERO)
            )
        })?;
    let first_up = t_spawn.elapsed();
    let (conn, gen) = a.add(new)?;
    let mut flow = Flow::new(Sizes::Mixed, frames, 96, TAG_A, TAG_B);
    let took1 = flow
        .run(&mut a, frames, Instant::now() + limit)
        .map_err(|e| {
            format!(
                "first exchange: {e}\n{}",
                peer_output(&mut child, Duration::ZERO)
            )
        })?;

    // 2. The peer keeps streaming; kill it under traffic.
    let until = Instant::now() + Duration::from_millis(300);
    let mut idle = 0;
    while Instant::now() < until {
        idle = if flow.step(&mut a)? { 0 } else { idle + 1 };
        super::verbs_pair::backoff(idle);
    }
    let streamed = flow.received - frames;
    let t_kill = Instant::now();
    if let Some(c) = child.0.as_mut() {
        c.kill().map_err(|e| format!("SIGKILL of the peer: {e}"))?;
        let _ = c.wait();
    }
    // Seen the way control sees it: the worker's failed completion, or the connection's
    // own state (the peer's disconnect), read every few ms while the worker polls.
    let mut next_status = Instant::now();
    let (down_after, why) = loop {
        std::thread::yield_now();
        a.poll();
        while a.next_frame().is_some() {}
        a.tally = Default::default();
        if let Some(VerbsEvent::Failed { status, .. }) = a.control.poll_event() {
            break (t_kill.elapsed(), format!("work completion: {status}"));
        }
        if Instant::now() >= next_status {
            next_status = Instant::now() + Duration::from_millis(2);
            if let ConnStatus::Down(r) = conn.status().map_err(|e| e.to_string())? {
                break (t_kill.elapsed(), format!("connection: {r}"));
            }
        }
        if t_kill.elapsed() > Duration::from_secs(30) {
            return Err("the session was not seen down within 30 s of the peer's SIGKILL".into());
        }
    };
    drop(conn);
    let removed = a.control.remove(super::verbs_pair::SESSION, gen);
    // Let the worker side destroy the QP and free its ring.
    let t_rm = Instant::now();
    loop {
        a.poll();
        while a.next_frame().is_some() {}
        if matches!(a.control.poll_event(), Some(VerbsEvent::Removed { .. }))
            || t_rm.elapsed() > Duration::from_secs(5)
        {
            break;
        }
    }
    a.tally = Default::default();

    // 3. An unknown node is turned away before any QP exists.
    let mut intruder = spawn_peer(target, "intruder", 1)?;
    let refused = match a.accept(&listener, "bench-b", CONNECT_TIMEOUT) {
        Err(VerbsError::Refused { reason, .. }) => reason,
        Err(e) => return Err(format!("the intruder's request: {e}")),
        Ok(_) => return Err("an unknown node's connection was accepted".into()),
    };
    let intruder_said = peer_output(&mut intruder, Duration::from_secs(60));

    // 4. The peer returns: it reconnects and a second exchange passes.
    let t_back = Instant::now();
    let mut child = spawn_peer(target, "bench-b", frames)?;
    let new = a
        .accept(&listener, "bench-b", CONNECT_TIMEOUT)
        .map_err(|e| {
            format!(
                "accepting the returning peer: {e}\n{}",
                peer_output(&mut child, Duration::ZERO)
            )
        })?;
    let reconnect = t_back.elapsed();
    let (conn2, _gen2) = a.add(new)?;
    let mut flow2 = Flow::new(Sizes::Mixed, frames, 96, TAG_A, TAG_B);
    let took2 = flow2
        .run(&mut a, frames, Instant::now() + limit)
        .map_err(|e| {
            format!(
                "exchange after the reconnect: {e}\n{}",
                peer_output(&mut child, Duration::ZERO)
            )
        })?;
    drop(conn2);
    drop(child);
    let c = a.counters();
    Ok(json!({
        "mode": "failover",
        "frames_each_way": frames,
        "first_connect_ms": first_up.as_secs_f64() * 1e3,
        "first_exchange_s": took1.as_secs_f64(),
        "streamed_before_kill": streamed,
        "down_after_ms": down_after.as_secs_f64() * 1e3,
        "down_reason": why,
        "removed_sent": removed,
        "intruder_refused": refused,
        "intruder_said": intruder_said.trim(),
        "reconnect_ms": reconnect.as_secs_f64() * 1e3,
        "second_exchange_s": took2.as_secs_f64(),
        "sessions_added": c.added,
        "sessions_removed": c.removed,
    }))
}

fn peer(target: SocketAddr, id: &str, frames: u64) -> Result<Value, String> {
    let lab = lab()?;
    let eal = eal()?;
    let _main = eal.register_thread().map_err(|e| e.to_string())?;
    let mut b = Endpoint::new(&eal, lab.ip_b, "bg_peer", MBUFS)?;
    let new = b
        .connect(lab.ip_b, target, id, CONNECT_TIMEOUT)
        .map_err(|e| format!("connecting as {id:?}: {e}"))?;
    b.add(new)?;
    let mut flow = Flow::new(Sizes::Mixed, frames, 96, TAG_B, TAG_A);
    flow.run(&mut b, frames, Instant::now() + Duration::from_secs(600))?;
    // Then keep streaming until killed, so the kill lands under traffic.
    flow.send_total = u64::MAX;
    let mut idle = 0;
    loop {
        let moved = flow
            .step(&mut b)
            .map_err(|e| format!("streaming after the exchange: {e}"))?;
        idle = if moved { 0 } else { idle + 1 };
        super::verbs_pair::backoff(idle);
    }
}
