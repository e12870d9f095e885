//! The fabric suites.
//!
//! - `fabric-udp` (host): frames per second and round-trip percentiles over the project's
//!   UDP fabric (`dataplane::fabric::udp`) on loopback, against `sendmmsg`/`recvmmsg` called
//!   directly on the same sockets, interleaved in the same run; 64 B, 1500 B and mixed sizes.
//! - `fabric-verbs` (Soft-RoCE guest): the host has no RDMA, so this boots the lab guest
//!   (`tests/lab/vm.sh`) and runs `nicproxy bench-guest rtt` there (see [`guest`]): round
//!   trips and frames per second over the project's verbs fabric (`dataplane::fabric::verbs`,
//!   RC QPs over rdma_cm between rxe_a and rxe_b), then `ibv_rc_pingpong` on the same
//!   devices with the same message size and iteration count. The guest prints one JSON
//!   line; this side turns it into figures.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::fabric::udp::{RecvMeta, UdpFabric, BURST};
use dataplane::fabric::SessionId;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::model::{Better, Figure, Plot, Progress, Series, SuiteOutcome};
use super::BenchOpts;

pub mod guest;
mod guest_stats;
mod raw_mmsg;
mod verbs_pair;

use raw_mmsg::{thread_cpu, wait_readable, RawMmsg};

/// Empty polls before a round-trip loop blocks in poll(2): on a loaded machine two
/// busy-polling threads would mostly measure each other's time slices.
const SPINS: u32 = 200;
/// A ping without an echo for this long is sent again (counted: on a starved machine a
/// thread can miss its turn for seconds).
const RESEND: Duration = Duration::from_secs(1);
/// A ping without an echo for this long fails the suite.
const GIVE_UP: Duration = Duration::from_secs(30);

/// Copies `body` into `buf` with the ping's number in its first 8 bytes; returns the
/// length. The echo must carry the same number, so a late echo is never taken for the
/// current one.
fn stamp(buf: &mut [u8; 2048], body: &[u8], i: u64) -> usize {
    let len = body.len().max(8);
    buf[..body.len()].copy_from_slice(body);
    buf[..8].copy_from_slice(&i.to_le_bytes());
    len
}

const IP_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const IP_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A's name for B and B's for A.
const S_B: SessionId = SessionId(2);
const S_A: SessionId = SessionId(1);

/// Frame sizes of a run: fixed, or mixed over 60..=1514 B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sizes {
    Fixed(usize),
    Mixed,
}

impl Sizes {
    pub(crate) const MIN: usize = 60;
    pub(crate) const MAX: usize = 1514;

    /// The size of frame `i`.
    pub(crate) fn len(self, i: u64) -> usize {
        match self {
            Sizes::Fixed(n) => n,
            Sizes::Mixed => Self::MIN + (mix(i) % (Self::MAX - Self::MIN + 1) as u64) as usize,
        }
    }

    pub(crate) fn label(self) -> String {
        match self {
            Sizes::Fixed(n) => format!("{n} B"),
            Sizes::Mixed => format!("mixed {}..{} B", Self::MIN, Self::MAX),
        }
    }
}

/// splitmix64: cheap, and every input bit moves every output bit.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Round trips in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub(crate) fn rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// The percentiles the suites report, in microseconds.
pub(crate) const QUANTILES: [(&str, f64); 4] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

/// p50, p90, p99, p99.9 and max of `h` in µs, as JSON.
pub(crate) fn percentiles_json(h: &Histogram<u64>) -> Value {
    let mut m = serde_json::Map::new();
    for (name, q) in QUANTILES {
        m.insert(name.into(), json!(h.value_at_quantile(q) as f64 / 1e3));
    }
    m.insert("max".into(), json!(h.max() as f64 / 1e3));
    m.insert("mean".into(), json!(h.mean() / 1e3));
    m.insert("samples".into(), json!(h.len()));
    Value::Object(m)
}

fn us(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

// ------------------------------------------------------------------------------- UDP

fn next_port(k: u32) -> u16 {
    u16::try_from(20_000 + (std::process::id().wrapping_mul(17) + k * 7) % 40_000).unwrap_or(20_000)
}

/// A on 127.0.0.1 and B on 127.0.0.2, same port (a UDP fabric names its peers by IP).
fn bind_pair() -> Result<(UdpFabric, UdpFabric), String> {
    for k in 0..200 {
        let port = next_port(k);
        let Ok(a) = UdpFabric::bind(SocketAddr::new(IP_A, port), &[(S_B, IP_B)]) else {
            continue;
        };
        if UdpSocket::bind((IP_B, port)).is_err() {
            continue;
        }
        match UdpFabric::bind(SocketAddr::new(IP_B, port), &[(S_A, IP_A)]) {
            Ok(b) => return Ok((a, b)),
            Err(_) => continue,
        }
    }
    Err("no free UDP port pair on 127.0.0.1/127.0.0.2 in 200 tries".into())
}

/// Frames per second of wall time and of this thread's CPU time.
#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    wall: f64,
    cpu: f64,
}

impl Rate {
    fn since(t: Instant, cpu: Duration, frames: u64) -> Rate {
        let (wall, cpu) = (t.elapsed(), thread_cpu().saturating_sub(cpu));
        Rate {
            wall: frames as f64 / wall.as_secs_f64(),
            cpu: frames as f64 / cpu.as_secs_f64().max(1e-9),
        }
    }

    fn best(self, o: Rate) -> Rate {
        Rate {
            wall: self.wall.max(o.wall),
            cpu: self.cpu.max(o.cpu),
        }
    }
}

/// A table of frames to send: frame `i` of a run is `bodies[i % len]`.
fn bodies(sizes: Sizes) -> Vec<Vec<u8>> {
    (0..256u64)
        .map(|i| vec![(i as u8).wrapping_mul(31); sizes.len(i)])
        .collect()
}

/// Streams `total` frames A → B through the fabric, one thread, 32 at a time.
fn fabric_stream(
    a: &mut UdpFabric,
    b: &mut UdpFabric,
    bodies: &[Vec<u8>],
    total: u64,
) -> Result<Rate, String> {
    let mut store = Box::new([[0u8; 2048]; BURST]);
    let mut meta = [RecvMeta::default(); BURST];
    let (mut sent, mut got) = (0u64, 0u64);
    let (t, cpu) = (Instant::now(), thread_cpu());
    let deadline = t + Duration::from_secs(60);
    while got < total {
        let frames: [(SessionId, &[u8]); BURST] =
            std::array::from_fn(|i| (S_B, &bodies[(sent as usize + i) % bodies.len()][..]));
        sent += a.send_burst(&frames) as u64;
        while got < sent {
            let mut bufs = store.each_mut().map(|b| &mut b[..]);
            let k = b
                .recv_burst(&mut bufs, &mut meta)
                .map_err(|e| e.to_string())?;
            got += meta[..k].iter().filter(|m| m.session == Some(S_A)).count() as u64;
            if k == 0 && Instant::now() > deadline {
                return Err(format!(
                    "UDP fabric stream lost frames: {got} of {sent} arrived"
                ));
            }
        }
    }
    Ok(Rate::since(t, cpu, got))
}

/// The same stream with raw sendmmsg/recvmmsg on the same sockets.
fn raw_stream(
    tx: &mut RawMmsg,
    rx: &mut RawMmsg,
    bodies: &[Vec<u8>],
    total: u64,
) -> Result<Rate, String> {
    let mut lens = [0usize; BURST];
    let (mut sent, mut got) = (0u64, 0u64);
    let (t, cpu) = (Instant::now(), thread_cpu());
    let deadline = t + Duration::from_secs(60);
    while got < total {
        let frames: [&[u8]; BURST] =
            std::array::from_fn(|i| &bodies[(sent as usize + i) % bodies.len()][..]);
        sent += tx.send(&frames) as u64;
        while got < sent {
            let k = rx.recv(&mut lens);
            got += k as u64;
            if k == 0 && Instant::now() > deadline {
                return Err(format!(
                    "raw mmsg stream lost frames: {got} of {sent} arrived"
                ));
            }
        }
    }
    Ok(Rate::since(t, cpu, got))
}

/// `iters` round trips through the fabric: A sends one frame, B's thread echoes it, A
/// busy-polls for it. Returns B for the next round.
fn fabric_rtt(
    a: &mut UdpFabric,
    mut b: UdpFabric,
    sizes: Sizes,
    iters: u64,
    h: &mut Histogram<u64>,
    resent: &mut u64,
) -> Result<UdpFabric, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    let echo = std::thread::spawn(move || {
        let mut store = Box::new([[0u8; 2048]; BURST]);
        let mut meta = [RecvMeta::default(); BURST];
        let mut idle = 0;
        while !st.load(Ordering::Relaxed) {
            let mut bufs = store.each_mut().map(|b| &mut b[..]);
            let k = b.recv_burst(&mut bufs, &mut meta).unwrap_or(0);
            for (m, buf) in meta[..k].iter().zip(bufs.iter()) {
                if m.session == Some(S_A) {
                    b.send_burst(&[(S_A, &buf[..m.len])]);
                }
            }
            idle = if k == 0 { idle + 1 } else { 0 };
            if idle > SPINS {
                let _ = b.wait_readable(Duration::from_millis(10));
            }
        }
        b
    });
    let bodies = bodies(sizes);
    let mut store = Box::new([[0u8; 2048]; BURST]);
    let mut meta = [RecvMeta::default(); BURST];
    let mut result = Ok(());
    let mut ping = [0u8; 2048];
    'outer: for i in 0..iters {
        let len = stamp(&mut ping, &bodies[i as usize % bodies.len()], i);
        let t = Instant::now();
        let mut last_try = t;
        let mut sent = a.send_burst(&[(S_B, &ping[..len])]) == 1;
        let mut idle = 0;
        'wait: loop {
            let mut bufs = store.each_mut().map(|b| &mut b[..]);
            let k = a
                .recv_burst(&mut bufs, &mut meta)
                .map_err(|e| e.to_string())?;
            for (m, buf) in meta[..k].iter().zip(bufs.iter()) {
                if m.session == Some(S_B) && m.len == len && buf[..8] == i.to_le_bytes() {
                    break 'wait;
                }
            }
            idle = if k == 0 { idle + 1 } else { 0 };
            if idle > SPINS {
                let _ = a.wait_readable(Duration::from_millis(10));
            }
            // A datagram lost on a starved machine is sent again, and counted.
            if !sent || last_try.elapsed() > RESEND {
                *resent += u64::from(sent);
                last_try = Instant::now();
                sent = a.send_burst(&[(S_B, &ping[..len])]) == 1;
            }
            if t.elapsed() > GIVE_UP {
                result = Err(format!(
                    "UDP fabric ping {i} got no echo within {GIVE_UP:?}"
                ));
                break 'outer;
            }
        }
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    stop.store(true, Ordering::Relaxed);
    let b = echo
        .join()
        .map_err(|_| "the echo thread panicked".to_string())?;
    result.map(|()| b)
}

/// The same round trips with raw sendmmsg/recvmmsg on the same sockets.
#[allow(clippy::too_many_arguments)]
fn raw_rtt(
    a_fd: std::os::fd::RawFd,
    b_fd: std::os::fd::RawFd,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    sizes: Sizes,
    iters: u64,
    h: &mut Histogram<u64>,
    resent: &mut u64,
) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    let mut echo_side = RawMmsg::new(b_fd, a_addr)?;
    let echo = std::thread::spawn(move || {
        let mut lens = [0usize; BURST];
        let mut copy = [0u8; 2048];
        let mut idle = 0;
        while !st.load(Ordering::Relaxed) {
            let k = echo_side.recv(&mut lens);
            for (i, &len) in lens[..k].iter().enumerate() {
                copy[..len].copy_from_slice(echo_side.datagram(i, len));
                echo_side.send(&[&copy[..len]]);
            }
            idle = if k == 0 { idle + 1 } else { 0 };
            if idle > SPINS {
                wait_readable(b_fd, 10);
            }
        }
    });
    let mut ping = RawMmsg::new(a_fd, b_addr)?;
    let bodies = bodies(sizes);
    let mut lens = [0usize; BURST];
    let mut result = Ok(());
    let mut buf = [0u8; 2048];
    'outer: for i in 0..iters {
        let len = stamp(&mut buf, &bodies[i as usize % bodies.len()], i);
        let t = Instant::now();
        let mut last_try = t;
        let mut sent = ping.send(&[&buf[..len]]) == 1;
        let mut idle = 0;
        'wait: loop {
            let k = ping.recv(&mut lens);
            for (j, &l) in lens[..k].iter().enumerate() {
                if l == len && ping.datagram(j, l)[..8] == i.to_le_bytes() {
                    break 'wait;
                }
            }
            idle = if k == 0 { idle + 1 } else { 0 };
            if idle > SPINS {
                wait_readable(a_fd, 10);
            }
            if !sent || last_try.elapsed() > RESEND {
                *resent += u64::from(sent);
                last_try = Instant::now();
                sent = ping.send(&[&buf[..len]]) == 1;
            }
            if t.elapsed() > GIVE_UP {
                result = Err(format!("raw ping {i} got no echo within {GIVE_UP:?}"));
                break 'outer;
            }
        }
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    stop.store(true, Ordering::Relaxed);
    echo.join()
        .map_err(|_| "the echo thread panicked".to_string())?;
    result
}

fn rtt_figures(what: &str, mine: &Value, base: &Value, base_name: &str, note: &str) -> Vec<Figure> {
    let mut out = Vec::new();
    for key in ["p50", "p90", "p99", "p99.9", "max"] {
        out.push(
            Figure::new(
                format!("{what}, RTT {key}"),
                us(mine, key),
                "µs",
                Better::Lower,
            )
            .baseline(base_name, us(base, key))
            .note(note),
        );
    }
    out
}

/// Percentile curve of a histogram: (percentile, µs) points for a plot.
fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    [
        1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
    ]
    .iter()
    .map(|&p| (p, h.value_at_percentile(p) as f64 / 1e3))
    .collect()
}

/// `nicproxy bench --suite fabric-udp`.
pub fn run_udp(opts: &BenchOpts, progress: &Progress) -> Result<SuiteOutcome, String> {
    let (mut a, b) = bind_pair()?;
    let mut b = Some(b);
    let (stream_total, rounds, rtt_iters) = if opts.quick {
        (20_000, 2, 2_000)
    } else {
        (200_000, 5, 20_000)
    };
    let mut out = SuiteOutcome::default();
    let mut raw_results = Vec::new();
    let mut plot = Plot {
        name: "fabric-udp-rtt".into(),
        title: "UDP fabric round trips on loopback vs raw sendmmsg/recvmmsg".into(),
        x_label: "percentile".into(),
        y_label: "RTT (µs)".into(),
        series: Vec::new(),
        markers: Vec::new(),
    };
    for sizes in [Sizes::Fixed(64), Sizes::Fixed(1500), Sizes::Mixed] {
        let label = sizes.label();
        progress.say(format_args!(
            "UDP {label}: frames/s, best of {rounds} interleaved rounds of {stream_total}"
        ));
        let table = bodies(sizes);
        let (mut fab, mut raw) = (Rate::default(), Rate::default());
        for _ in 0..rounds {
            let bb = b.as_mut().ok_or("receiver lost")?;
            fab = fab.best(fabric_stream(&mut a, bb, &table, stream_total)?);
            let mut tx = RawMmsg::new(a.raw_fd(), bb.local_addr())?;
            let mut rx = RawMmsg::new(bb.raw_fd(), a.local_addr())?;
            raw = raw.best(raw_stream(&mut tx, &mut rx, &table, stream_total)?);
        }
        progress.say(format_args!(
            "UDP {label}: fabric {:.0} frames/s ({:.0}/CPU-s), raw {:.0} frames/s ({:.0}/CPU-s)",
            fab.wall, fab.cpu, raw.wall, raw.cpu
        ));
        out.figures.push(
            Figure::new(format!("UDP fabric, {label}, frames/s"), fab.wall, "frames/s", Better::Higher)
                .baseline("sendmmsg/recvmmsg on the same sockets", raw.wall)
                .note(format!(
                    "loopback, one thread sending and receiving in bursts of {BURST}; best of {rounds} interleaved rounds of {stream_total} frames"
                )),
        );
        out.figures.push(
            Figure::new(
                format!("UDP fabric, {label}, frames per CPU-second"),
                fab.cpu,
                "frames/CPU-s",
                Better::Higher,
            )
            .baseline("sendmmsg/recvmmsg on the same sockets", raw.cpu)
            .note(
                "the same runs, per second of the thread's CPU time (steadier on a shared machine)",
            ),
        );

        progress.say(format_args!(
            "UDP {label}: RTT, {rounds} interleaved rounds of {} pings",
            rtt_iters / rounds
        ));
        let (mut hf, mut hr) = (rtt_histogram(), rtt_histogram());
        let per_round = (rtt_iters / rounds).max(1);
        let (mut resent_f, mut resent_r) = (0, 0);
        for _ in 0..rounds {
            let bb = b.take().ok_or("receiver lost")?;
            let (b_fd, b_addr) = (bb.raw_fd(), bb.local_addr());
            b = Some(fabric_rtt(
                &mut a,
                bb,
                sizes,
                per_round,
                &mut hf,
                &mut resent_f,
            )?);
            raw_rtt(
                a.raw_fd(),
                b_fd,
                a.local_addr(),
                b_addr,
                sizes,
                per_round,
                &mut hr,
                &mut resent_r,
            )?;
        }
        let (pf, pr) = (percentiles_json(&hf), percentiles_json(&hr));
        progress.say(format_args!(
            "UDP {label}: RTT fabric {pf}, raw {pr}; pings sent again after {RESEND:?}: fabric {resent_f}, raw {resent_r}"
        ));
        if resent_f + resent_r > 0 {
            out.notes.push(format!(
                "UDP {label}: {resent_f} fabric and {resent_r} raw pings got no echo within {RESEND:?} and were sent again (their RTT counts from the first send)"
            ));
        }
        out.figures.extend(rtt_figures(
            &format!("UDP fabric, {label}"),
            &pf,
            &pr,
            "sendmmsg/recvmmsg on the same sockets",
            "ping-pong on loopback, one frame in flight; both ends poll 200 times, then block in poll(2); the echo thread answers through the same API",
        ));
        plot.series.push(Series {
            label: format!("fabric {label}"),
            points: curve(&hf),
        });
        plot.series.push(Series {
            label: format!("raw {label}"),
            points: curve(&hr),
        });
        raw_results.push(json!({
            "sizes": label,
            "fps": {"fabric_wall": fab.wall, "fabric_cpu": fab.cpu, "raw_wall": raw.wall, "raw_cpu": raw.cpu},
            "rtt_us": {"fabric": pf, "raw": pr},
            "pings_resent": {"fabric": resent_f, "raw": resent_r},
        }));
    }
    let bb = b.as_ref().ok_or("receiver lost")?;
    let (ca, cb) = (a.counters(), bb.counters());
    if ca.errors + cb.errors + cb.unknown_source + cb.kernel_drops + ca.kernel_drops > 0 {
        return Err(format!(
            "the UDP fabric counted errors or drops: A {ca:?}, B {cb:?}"
        ));
    }
    out.plots.push(plot);
    out.notes.push(format!(
        "UDP fabric on loopback between 127.0.0.1 and 127.0.0.2; the baseline calls sendmmsg/recvmmsg on the very same sockets, interleaved round by round; {} CPUs",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    out.raw = json!({ "udp": raw_results });
    Ok(out)
}

// ----------------------------------------------------------------------------- verbs

/// tests/lab/vm.sh: `NICPROXY_VM_SH`, else under the current directory or one of the
/// executable's ancestors.
pub(crate) fn find_vm_sh() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("NICPROXY_VM_SH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("NICPROXY_VM_SH={} is not a file", p.display()))
        };
    }
    let rel = PathBuf::from("tests/lab/vm.sh");
    let mut tried = Vec::new();
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(PathBuf::from));
    }
    for r in roots {
        let p = r.join(&rel);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    Err(format!(
        "the Soft-RoCE lab guest script tests/lab/vm.sh was not found (set NICPROXY_VM_SH, or run from the source tree); tried: {}",
        tried.join(", ")
    ))
}

/// The rxe counters that mean trouble (RNR NAKs, retransmissions, duplicates, sequence
/// errors), summed over the rounds of one size, for the fabric or for ibv_rc_pingpong.
fn rxe_errors(run: &Value, ibv: bool) -> String {
    let mut sum = std::collections::BTreeMap::<String, u64>::new();
    for round in run["per_round"].as_array().into_iter().flatten() {
        let k = if ibv {
            &round["ibv_rc_pingpong_guest_kernel"]
        } else {
            &round["fabric"]["guest_kernel"]
        };
        for (name, v) in k["rxe_counters"].as_object().into_iter().flatten() {
            let counter = name.rsplit('/').next().unwrap_or(name);
            if !matches!(
                counter,
                "sent_pkts" | "rcvd_pkts" | "rdma_sends" | "rdma_recvs"
            ) {
                *sum.entry(counter.to_owned()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    if sum.is_empty() {
        "none".into()
    } else {
        sum.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `nicproxy bench --suite fabric-verbs`.
pub fn run_verbs(opts: &BenchOpts, progress: &Progress) -> Result<SuiteOutcome, String> {
    let vm = find_vm_sh()?;
    let exe = std::env::current_exe().map_err(|e| format!("finding the nicproxy binary: {e}"))?;
    let (iters, stream, rounds) = if opts.quick {
        (2_000, 20_000, 2)
    } else {
        (10_000, 100_000, 10)
    };
    let sizes = ["64", "1500"];
    progress.say(format_args!(
        "booting the Soft-RoCE guest ({}) for {iters} round trips per size ({}) and {stream} streamed frames, then ibv_rc_pingpong",
        vm.display(),
        sizes.join(", ")
    ));
    let t0 = Instant::now();
    let child = Command::new(&vm)
        .args(["--timeout", "1500", "--"])
        .arg(&exe)
        .args([
            "bench-guest",
            "rtt",
            "--iters",
            &iters.to_string(),
            "--stream",
            &stream.to_string(),
            "--rounds",
            &rounds.to_string(),
        ])
        .args(sizes.iter().flat_map(|s| ["--size", s]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", vm.display()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {}: {e}", vm.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    progress.say(format_args!(
        "guest run done in {:.1} s ({})",
        t0.elapsed().as_secs_f64(),
        out.status
    ));
    let line = stdout
        .lines()
        .find_map(|l| {
            l.find(guest::RESULT_TAG)
                .map(|i| &l[i + guest::RESULT_TAG.len()..])
        })
        .ok_or_else(|| {
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            format!(
                "the guest printed no result ({}); stdout:\n{stdout}\nlast stderr lines:\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;
    let v: Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("the guest's result is not JSON ({e}): {line}"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("in the guest: {e}"));
    }
    let mut fig = SuiteOutcome::default();
    let mut plot = Plot {
        name: "fabric-verbs-rtt".into(),
        title: "Verbs fabric round trips (Soft-RoCE, emulated CPU)".into(),
        x_label: "percentile".into(),
        y_label: "RTT (µs)".into(),
        series: Vec::new(),
        markers: Vec::new(),
    };
    for r in v["runs"].as_array().into_iter().flatten() {
        let size = r["size"].as_u64().unwrap_or(0);
        let pp = r["ibv_rc_pingpong_usec_per_iter"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let rtt = &r["rtt_us"];
        let note = format!(
            "{iters} round trips of {size} B frames (+4 B header) through dataplane::fabric::verbs, one in flight, busy-polling; ibv_rc_pingpong -s {size} (busy-polling too), {iters} iterations in all, on the same rxe devices in the same guest run; the two take turns in {rounds} rounds of {} each, so both meet the same host load; rxe error counters during the fabric's rounds: {}, during ibv_rc_pingpong's: {}",
            iters / rounds,
            rxe_errors(r, false),
            rxe_errors(r, true)
        );
        let ratio = us(rtt, "mean") / pp;
        fig.figures.push(
            Figure::new(
                format!("verbs fabric, {size} B, mean RTT"),
                us(rtt, "mean"),
                "µs",
                Better::Lower,
            )
            .baseline("ibv_rc_pingpong usec/iter", pp)
            .target("≤ 1.3× ibv_rc_pingpong", ratio <= 1.3)
            .note(note.clone()),
        );
        for key in ["p50", "p90", "p99", "p99.9", "max"] {
            let val = us(rtt, key);
            let f = Figure::new(
                format!("verbs fabric, {size} B, RTT {key}"),
                val,
                "µs",
                Better::Lower,
            )
            .baseline("ibv_rc_pingpong usec/iter (its mean)", pp)
            .note(note.clone());
            fig.figures.push(if key == "p50" {
                f.target("≤ 1.3× ibv_rc_pingpong", val / pp <= 1.3)
            } else {
                f
            });
        }
        fig.figures.push(
            Figure::new(format!("verbs fabric, {size} B, frames/s one way"), r["stream_fps"].as_f64().unwrap_or(0.0), "frames/s", Better::Higher)
                .note(format!("{} frames streamed A→B with {} in flight, every frame checked; no baseline: ibv_rc_pingpong has one message in flight", r["stream_frames"], r["stream_window"])),
        );
        if let Some(points) = r["rtt_curve"].as_array() {
            plot.series.push(Series {
                label: format!("fabric {size} B"),
                points: points
                    .iter()
                    .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                    .collect(),
            });
            plot.markers.push(super::model::Marker {
                x: 50.0,
                label: format!("ibv_rc_pingpong {size} B: {pp:.0} µs"),
            });
        }
    }
    if fig.figures.is_empty() {
        return Err(format!("the guest's result has no runs: {line}"));
    }
    fig.plots.push(plot);
    fig.notes.push(format!(
        "Soft-RoCE (rdma_rxe) in a QEMU TCG guest: an emulated CPU, so absolute times are ~100× a real host's; the ratio to ibv_rc_pingpong in the same run is the figure. Guest run {:.0} s including boot.",
        t0.elapsed().as_secs_f64()
    ));
    fig.raw = v;
    Ok(fig)
}
