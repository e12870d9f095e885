//! Real verbs on Soft-RoCE. The host kernel has no RDMA, so the outer test boots the lab
//! guest (tests/lab/vm.sh: Debian kernel, rdma_rxe, rxe_a on 10.99.0.1 and rxe_b on
//! 10.99.0.2 joined by a veth) and runs this same binary's `inner_*` tests there; they
//! are `#[ignore]`d so that a plain `cargo test` on the host does not run them.

mod common_vm;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use dataplane::verbs::{
    device_names, Access, CompletionChannel, CompletionQueue, ConnStatus, Connection, Context,
    DownReason, Listener, MemoryRegion, PortState, ProtectionDomain, QpConfig, QpSetup,
    RecvRequest, SendFlags, SendRequest, VerbsError, WcStatus, WorkCompletion,
};

const INNER_TESTS: &[&str] = &[
    "inner_bad_input",
    "inner_completion_channel_batches_and_imm",
    "inner_exchange_100k_each_way",
    "inner_failure_reporting",
];

/// One guest boot runs every inner test (a TCG boot costs seconds).
#[test]
fn verbs_on_soft_roce_guest() {
    let run = common_vm::run_own_ignored_tests("inner_", INNER_TESTS, Duration::from_secs(1800));
    println!("--- summary ---");
    for line in run.stdout.lines().chain(run.stderr.lines()) {
        // With --nocapture a result may follow "test NAME ... " on the same line.
        if let Some(at) = line.find("RESULT ").or_else(|| line.find("vm.sh: timing")) {
            println!("{}", &line[at..]);
        }
    }
    println!(
        "guest run, boot included: {:.1} s host wall time",
        run.wall.as_secs_f64()
    );
}

/// This host has no RDMA at all: every way in must say so plainly.
#[test]
fn no_rdma_device_on_host() {
    let has_rdma = std::fs::read_dir("/sys/class/infiniband")
        .map(|d| d.count() > 0)
        .unwrap_or(false);
    if has_rdma {
        // A machine with RDMA (CI with an HCA): the bad name must still be named.
        let err = Context::open("nicproxy-no-such-dev").expect_err("bogus device name");
        let text = err.to_string();
        assert!(matches!(err, VerbsError::DeviceNotFound { .. }), "{text}");
        assert!(text.contains("nicproxy-no-such-dev"), "{text}");
        return;
    }
    const CAUSE: &str = "no RDMA device found (is rdma_rxe / an HCA driver loaded?)";
    let checks: [(&str, Result<(), VerbsError>); 4] = [
        ("device_names", device_names().map(drop)),
        ("Context::open", Context::open("rxe_a").map(drop)),
        (
            "Context::open_by_addr",
            Context::open_by_addr(IpAddr::V4(Ipv4Addr::LOCALHOST)).map(drop),
        ),
        (
            "Listener::bind",
            Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).map(drop),
        ),
    ];
    for (what, res) in checks {
        let err = res.expect_err(what);
        let text = err.to_string();
        println!("{what}: {text}");
        assert!(err.is_no_device(), "{what}: {text}");
        assert!(text.contains(CAUSE), "{what}: {text}");
    }
}

// ------------------------------------------------------------------- guest-side helpers

struct Lab {
    ip_a: IpAddr,
    ip_b: IpAddr,
    rxe_a: String,
    rxe_b: String,
}

fn lab() -> Lab {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is unset: inner tests run inside the lab guest (cargo test --test verbs_rxe boots it)")
        })
    };
    let ip = |k: &str| var(k).parse::<IpAddr>().expect("lab IP address");
    Lab {
        ip_a: ip("NICPROXY_IP_A"),
        ip_b: ip("NICPROXY_IP_B"),
        rxe_a: var("NICPROXY_RXE_A"),
        rxe_b: var("NICPROXY_RXE_B"),
    }
}

const BUF: usize = 4096;

/// One endpoint's verbs objects on the device that owns `ip`.
struct Side {
    setup: QpSetup,
    send_mr: MemoryRegion,
    recv_mr: MemoryRegion,
    ring: usize,
}

fn side(ip: IpAddr, cfg: QpConfig, ring: usize, slots: usize) -> Side {
    let ctx = Context::open_by_addr(ip).expect("open the RDMA device of the address");
    let pd = ProtectionDomain::new(&ctx).expect("PD");
    let send_cq = CompletionQueue::new(&ctx, cfg.max_send_wr, None, 0).expect("send CQ");
    let recv_cq = CompletionQueue::new(&ctx, cfg.max_recv_wr, None, 1).expect("recv CQ");
    let send_mr = MemoryRegion::alloc(&pd, slots * BUF, Access::LOCAL_WRITE).expect("send MR");
    let recv_mr = MemoryRegion::alloc(&pd, ring * BUF, Access::LOCAL_WRITE).expect("recv MR");
    let setup = QpSetup::new(pd, send_cq, recv_cq, cfg).expect("QP setup");
    Side {
        setup,
        send_mr,
        recv_mr,
        ring,
    }
}

/// Posts the whole receive ring: slot i at offset i * BUF, wr_id = i.
fn post_ring(
    qp: &dataplane::verbs::QueuePair,
    mr: &MemoryRegion,
    ring: usize,
) -> dataplane::verbs::Result<()> {
    let reqs = (0..ring)
        .map(|i| {
            Ok(RecvRequest {
                wr_id: i as u64,
                sge: mr.sge(i * BUF, BUF as u32)?,
            })
        })
        .collect::<dataplane::verbs::Result<Vec<_>>>()?;
    qp.post_recv_batch(&reqs)
}

// ------------------------------------------------------------ the 100k message exchange

const MSGS: u64 = 100_000;
const RING: usize = 256;
const SLOTS: usize = 128;
const SIGNAL_EVERY: u64 = 16;
const HDR: usize = 16;

/// 60..=4096 bytes, both ends of the range included.
fn msg_len(seq: u64) -> usize {
    match seq {
        0 => 60,
        1 => 4096,
        _ => 60 + (seq.wrapping_mul(2_654_435_761) % (4096 - 60 + 1)) as usize,
    }
}

fn pattern() -> Vec<u8> {
    (0..BUF + 512)
        .map(|k| (k as u32).wrapping_mul(131).wrapping_add(7) as u8)
        .collect()
}

/// Header: seq (8, LE), length (4, LE), direction tag (1), 3 zero bytes; then the pattern
/// starting at an offset that depends on seq and direction.
fn fill(buf: &mut [u8], seq: u64, tag: u8, pat: &[u8]) {
    let len = buf.len();
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    buf[12] = tag;
    buf[13..16].fill(0);
    let off = (seq % 251) as usize + usize::from(tag);
    buf[HDR..].copy_from_slice(&pat[off..off + len - HDR]);
}

fn check(buf: &[u8], seq: u64, tag: u8, pat: &[u8]) -> Result<(), String> {
    let len = msg_len(seq);
    if buf.len() != len {
        return Err(format!(
            "message {seq}: {} bytes, expected {len}",
            buf.len()
        ));
    }
    let got_seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if got_seq != seq {
        return Err(format!("expected message {seq}, got {got_seq}"));
    }
    let got_len = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")) as usize;
    if got_len != len || buf[12] != tag || buf[13..16] != [0, 0, 0] {
        return Err(format!("message {seq}: bad header {:?}", &buf[..HDR]));
    }
    let off = (seq % 251) as usize + usize::from(tag);
    if buf[HDR..] != pat[off..off + len - HDR] {
        let at = buf[HDR..]
            .iter()
            .zip(&pat[off..])
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "message {seq}: payload differs at byte {}",
            HDR + at
        ));
    }
    Ok(())
}

struct Stats {
    elapsed: Duration,
    inline_sends: u64,
    bytes_out: u64,
}

/// Sends MSGS messages and receives MSGS messages on `conn`, checking every payload.
/// One thread does both, like a fabric worker.
fn exchange(
    conn: &Connection,
    side: &mut Side,
    tag_out: u8,
    tag_in: u8,
    deadline: Instant,
) -> Result<Stats, String> {
    let pat = pattern();
    let qp = conn.qp();
    let max_inline = qp.max_inline_data() as usize;
    let mut send_wcs = [WorkCompletion::default(); 32];
    let mut recv_wcs = [WorkCompletion::default(); 32];
    let mut scratch = vec![0u8; BUF];
    let (mut next, mut done, mut rcvd) = (0u64, 0u64, 0u64);
    let (mut inline_sends, mut bytes_out) = (0u64, 0u64);
    let e = |e: dataplane::verbs::VerbsError| e.to_string();
    let t0 = Instant::now();
    while done < MSGS || rcvd < MSGS {
        if Instant::now() > deadline {
            return Err(format!(
                "no progress before the deadline: sent {next}, send-completed {done}, received {rcvd} of {MSGS}; connection {:?}",
                conn.status()
            ));
        }
        // Sends, while the ring of send slots has room (a slot is reused only after a
        // signalled completion at or after its last use).
        let mut burst = 0;
        while next < MSGS && next - done < SLOTS as u64 && burst < 32 {
            let len = msg_len(next);
            let slot = (next % SLOTS as u64) as usize;
            fill(&mut scratch[..len], next, tag_out, &pat);
            side.send_mr.write(slot * BUF, &scratch[..len]).map_err(e)?;
            let mut flags = if next % SIGNAL_EVERY == SIGNAL_EVERY - 1 || next == MSGS - 1 {
                SendFlags::SIGNALED
            } else {
                SendFlags::NONE
            };
            if len <= max_inline {
                flags = flags | SendFlags::INLINE;
                inline_sends += 1;
            }
            let sge = side.send_mr.sge(slot * BUF, len as u32).map_err(e)?;
            qp.post_send(next, &[sge], flags).map_err(e)?;
            bytes_out += len as u64;
            next += 1;
            burst += 1;
        }
        for wc in qp.send_cq().poll(&mut send_wcs).map_err(e)? {
            wc.ok().map_err(e)?;
            done = wc.wr_id() + 1;
        }
        let got = qp.recv_cq().poll(&mut recv_wcs).map_err(e)?;
        let mut repost = [0u64; 32];
        for (i, wc) in got.iter().enumerate() {
            wc.ok().map_err(e)?;
            let slot = wc.wr_id() as usize;
            let len = wc.byte_len() as usize;
            if slot >= side.ring || len > BUF {
                return Err(format!("completion for slot {slot} with {len} bytes"));
            }
            side.recv_mr
                .read(slot * BUF, &mut scratch[..len])
                .map_err(e)?;
            check(&scratch[..len], rcvd, tag_in, &pat)?;
            rcvd += 1;
            repost[i] = wc.wr_id();
        }
        if !got.is_empty() {
            let n = got.len();
            let mr = &side.recv_mr;
            let batch: Vec<RecvRequest<'_>> = repost[..n]
                .iter()
                .map(|&id| {
                    Ok(RecvRequest {
                        wr_id: id,
                        sge: mr.sge(id as usize * BUF, BUF as u32)?,
                    })
                })
                .collect::<dataplane::verbs::Result<_>>()
                .map_err(e)?;
            qp.post_recv_batch(&batch).map_err(e)?;
        }
    }
    Ok(Stats {
        elapsed: t0.elapsed(),
        inline_sends,
        bytes_out,
    })
}

#[test]
#[ignore = "needs RDMA: runs inside the lab guest"]
fn inner_exchange_100k_each_way() {
    let lab = lab();
    let cfg = QpConfig {
        max_send_wr: SLOTS as u32,
        max_recv_wr: RING as u32,
        max_inline_data: 128,
        ..QpConfig::default()
    };
    let listener = Listener::bind(SocketAddr::new(lab.ip_a, 0)).expect("listen on A");
    assert_eq!(
        listener.context().map(|c| c.name().to_owned()).as_deref(),
        Some(lab.rxe_a.as_str())
    );
    let target = listener.local_addr();
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + Duration::from_secs(1500);
    let barrier = Arc::new(Barrier::new(2));
    let (ip_a, ip_b) = (lab.ip_a, lab.ip_b);

    let bar = Arc::clone(&barrier);
    let a = thread::spawn(move || {
        let mut s = side(ip_a, cfg, RING, SLOTS);
        let (mr, ring) = (&s.recv_mr, s.ring);
        let conn = listener
            .accept_with(&s.setup, b"nicproxy-A", timeout, |qp| {
                post_ring(qp, mr, ring)
            })
            .expect("accept on A");
        assert_eq!(conn.peer_private_data(), b"nicproxy-B");
        assert_eq!(conn.peer_addr().ip(), ip_b);
        let stats = exchange(&conn, &mut s, 0xA, 0xB, deadline);
        // Tear down only when both sides are done: the last ACKs may still be in flight.
        bar.wait();
        stats
    });
    let bar = Arc::clone(&barrier);
    let b = thread::spawn(move || {
        let mut s = side(ip_b, cfg, RING, SLOTS);
        let (mr, ring) = (&s.recv_mr, s.ring);
        let conn =
            Connection::connect_with(&s.setup, Some(ip_b), target, b"nicproxy-B", timeout, |qp| {
                post_ring(qp, mr, ring)
            })
            .expect("connect from B");
        assert_eq!(conn.peer_private_data(), b"nicproxy-A");
        assert_eq!(conn.context().name(), "rxe_b");
        let stats = exchange(&conn, &mut s, 0xB, 0xA, deadline);
        bar.wait();
        stats
    });
    let sa = a.join().expect("thread A").expect("A's exchange");
    let sb = b.join().expect("thread B").expect("B's exchange");
    let wall = sa.elapsed.max(sb.elapsed).as_secs_f64();
    for (name, s) in [("A->B", &sa), ("B->A", &sb)] {
        println!(
            "RESULT exchange {name}: {MSGS} messages of 60..4096 B, {:.1} MB, every payload checked, \
             {} inline; {:.2} s: {:.0} msg/s, {:.1} Mbit/s",
            s.bytes_out as f64 / 1e6,
            s.inline_sends,
            s.elapsed.as_secs_f64(),
            MSGS as f64 / s.elapsed.as_secs_f64(),
            s.bytes_out as f64 * 8.0 / s.elapsed.as_secs_f64() / 1e6
        );
    }
    println!(
        "RESULT exchange both ways: {} messages in {wall:.2} s guest wall time = {:.0} msg/s total",
        2 * MSGS,
        2.0 * MSGS as f64 / wall
    );
}

// -------------------------------------------------------------------------- bad input

fn assert_quick<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> dataplane::verbs::Result<T>,
) -> VerbsError {
    let t0 = Instant::now();
    let res = f();
    let took = t0.elapsed();
    let err = res.expect_err(what);
    println!(
        "RESULT {what}: error after {:.2} s: {err}",
        took.as_secs_f64()
    );
    assert!(
        took <= timeout + Duration::from_secs(2),
        "{what}: took {took:?}, the timeout was {timeout:?}"
    );
    err
}

#[test]
#[ignore = "needs RDMA: runs inside the lab guest"]
fn inner_bad_input() {
    let lab = lab();
    let names = device_names().expect("device list");
    assert!(
        names.contains(&lab.rxe_a) && names.contains(&lab.rxe_b),
        "{names:?}"
    );

    // A device name that does not exist.
    let err = Context::open("rxe_nonexistent").expect_err("bogus device name");
    let text = err.to_string();
    println!("RESULT open nonexistent device: {text}");
    assert!(matches!(err, VerbsError::DeviceNotFound { .. }), "{text}");
    assert!(
        text.contains("\"rxe_nonexistent\"") && text.contains("no such device"),
        "{text}"
    );
    assert!(
        text.contains(&lab.rxe_a),
        "the error lists the devices present: {text}"
    );

    // Opening by address finds the right device; its port is up on Ethernet.
    let ctx_a = Context::open_by_addr(lab.ip_a).expect("device of IP A");
    assert_eq!(ctx_a.name(), lab.rxe_a);
    assert_eq!(
        Context::open_by_addr(lab.ip_b)
            .expect("device of IP B")
            .name(),
        lab.rxe_b
    );
    assert_eq!(Context::open(&lab.rxe_a).expect("by name"), ctx_a);
    let routed = Context::open_for_route(
        Some(lab.ip_b),
        SocketAddr::new(lab.ip_a, 1),
        Duration::from_secs(5),
    )
    .expect("device of the route B -> A");
    assert_eq!(routed.name(), lab.rxe_b);
    let port = ctx_a.query_port(1).expect("port 1");
    assert_eq!(port.state, PortState::Active, "{port:?}");
    assert!(port.is_ethernet && port.active_mtu >= 1024, "{port:?}");
    let err = Context::open_by_addr(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect_err("lo has no rxe");
    println!("RESULT open device of 127.0.0.1: {err}");

    let cfg = QpConfig::default();
    let a = side(lab.ip_a, cfg, 4, 4);
    let b = side(lab.ip_b, cfg, 4, 4);

    // Misuse: a QP setup of rxe_a for a route that leaves by rxe_b.
    let t = Duration::from_secs(5);
    let err = assert_quick("connect with the wrong device's setup", t, || {
        Connection::connect(
            &a.setup,
            Some(lab.ip_b),
            SocketAddr::new(lab.ip_a, 18_515),
            b"",
            t,
        )
    });
    assert!(matches!(err, VerbsError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("leaves by device rxe_b"), "{err}");

    // An address and port where nobody listens: the peer's CM rejects.
    let err = assert_quick("connect to a port without listener", t, || {
        Connection::connect(
            &b.setup,
            Some(lab.ip_b),
            SocketAddr::new(lab.ip_a, 18_515),
            b"",
            t,
        )
    });
    let text = err.to_string();
    assert!(matches!(err, VerbsError::Rejected { .. }), "{text}");
    assert!(
        text.contains("10.99.0.1:18515") && text.contains("no listener"),
        "{text}"
    );

    // A listener that vets requests turns an unknown one away with rdma_reject: the
    // connector hears the reason, no QP is ever accepted, and the listener goes on.
    let listener = Listener::bind(SocketAddr::new(lab.ip_a, 0)).expect("listen");
    let target = listener.local_addr();
    let setup_a = a.setup.clone();
    let vetting = thread::spawn(move || {
        let mut asked = None;
        let res = listener.accept_vetted(
            &setup_a,
            b"A",
            Duration::from_secs(30),
            |from, claimed| {
                asked = Some((from, claimed.to_vec()));
                Err("node \"intruder\" is not a configured peer".to_owned())
            },
            |_| panic!("a refused request must not get a QP"),
        );
        (res.map(drop), asked)
    });
    let err = assert_quick("connect to a listener that refuses us", t, || {
        Connection::connect(&b.setup, Some(lab.ip_b), target, b"intruder", t)
    });
    let text = err.to_string();
    assert!(matches!(err, VerbsError::Rejected { .. }), "{text}");
    assert!(
        text.contains("rejected by the peer application") && text.contains("not a configured peer"),
        "{text}"
    );
    let (res, asked) = vetting.join().expect("vetting thread");
    let refused = res.expect_err("the listener refused");
    println!("RESULT listener side of the refusal: {refused}");
    assert!(matches!(refused, VerbsError::Refused { .. }), "{refused}");
    let (from, claimed) = asked.expect("vet was asked");
    assert_eq!(
        (from.ip(), claimed.as_slice()),
        (lab.ip_b, &b"intruder"[..])
    );

    // An address nobody has: no answer at all, so the timeout must fire.
    let t = Duration::from_secs(3);
    let err = assert_quick("connect to an unreachable address", t, || {
        Connection::connect(
            &b.setup,
            Some(lab.ip_b),
            SocketAddr::from(([10, 99, 0, 77], 18_515)),
            b"",
            t,
        )
    });
    let text = err.to_string();
    assert!(
        matches!(err, VerbsError::Timeout { .. } | VerbsError::CmEvent { .. }),
        "{text}"
    );
    assert!(
        text.contains("10.99.0.77") && text.contains("timed out"),
        "{text}"
    );

    // Private data beyond what the CM carries.
    let err = Connection::connect(
        &b.setup,
        Some(lab.ip_b),
        SocketAddr::new(lab.ip_a, 1),
        &[0; 56],
        t,
    )
    .expect_err("too much private data");
    assert!(err.to_string().contains("at most 55 fit"), "{err}");

    // Memory region bounds.
    let err = a
        .send_mr
        .sge(4 * BUF - 10, 20)
        .expect_err("SGE past the end");
    assert!(
        err.to_string().contains("outside the memory region"),
        "{err}"
    );
    let mut buf = [0u8; 8];
    assert!(a.recv_mr.read(usize::MAX - 2, &mut buf).is_err());

    // CQs and PD of different devices do not make a setup.
    let err = QpSetup::new(
        Arc::clone(a.setup.pd()),
        CompletionQueue::new(&Context::open(&lab.rxe_b).expect("rxe_b"), 8, None, 0).expect("CQ"),
        CompletionQueue::new(&ctx_a, 8, None, 0).expect("CQ"),
        cfg,
    )
    .expect_err("mixed devices");
    assert!(
        err.to_string().contains("the send CQ belongs to rxe_b"),
        "{err}"
    );
}

// -------------------------------------------------------------------- failure reporting

#[test]
#[ignore = "needs RDMA: runs inside the lab guest"]
fn inner_failure_reporting() {
    let lab = lab();
    // No RNR retries: a send that finds no receive posted fails at once.
    let cfg = QpConfig {
        max_send_wr: 8,
        max_recv_wr: 8,
        rnr_retry_count: 0,
        ..QpConfig::default()
    };
    let listener = Listener::bind(SocketAddr::new(lab.ip_a, 0)).expect("listen");
    let target = listener.local_addr();
    let t = Duration::from_secs(30);
    let (tx, rx) = mpsc::channel();
    let ip_a = lab.ip_a;
    let a = thread::spawn(move || {
        let s = side(ip_a, cfg, 8, 8);
        // Accepts, but posts no receive at all.
        let conn = listener.accept(&s.setup, b"", t).expect("accept");
        tx.send(()).expect("signal accepted");
        (conn, s)
    });
    let mut b = side(lab.ip_b, cfg, 8, 8);
    let conn_b = Connection::connect(&b.setup, Some(lab.ip_b), target, b"", t).expect("connect");
    rx.recv_timeout(t).expect("A accepted");
    let (conn_a, _side_a) = a.join().expect("thread A");
    assert_eq!(conn_a.status().expect("status A"), ConnStatus::Up);
    assert_eq!(conn_b.status().expect("status B"), ConnStatus::Up);

    // B sends into A's empty receive queue.
    b.send_mr.write(0, &[0x55; 200]).expect("write");
    let sge = b.send_mr.sge(0, 200).expect("sge");
    conn_b
        .qp()
        .post_send(42, &[sge], SendFlags::SIGNALED)
        .expect("post");
    let mut wcs = [WorkCompletion::default(); 4];
    let deadline = Instant::now() + t;
    let wc = loop {
        let got = conn_b.qp().send_cq().poll(&mut wcs).expect("poll");
        if let Some(wc) = got.first() {
            break *wc;
        }
        assert!(
            Instant::now() < deadline,
            "no completion for the send within {t:?}"
        );
        thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(wc.wr_id(), 42);
    assert_eq!(wc.status(), WcStatus::RnrRetryExceeded, "{wc:?}");
    let err = wc.ok().expect_err("failed completion");
    println!("RESULT send into an empty receive queue: {err}");
    assert!(
        err.to_string().contains("RNR retry counter exceeded"),
        "{err}"
    );
    assert_eq!(
        conn_b.status().expect("status B"),
        ConnStatus::Down(DownReason::QpError)
    );
    println!(
        "RESULT B after the failed send: {:?}",
        conn_b.status().expect("status")
    );

    // B goes away: A hears of it through rdma_cm.
    drop(conn_b);
    let t0 = Instant::now();
    let why = conn_a
        .wait_down(Duration::from_secs(10))
        .expect("wait_down")
        .expect("A sees the disconnect");
    println!(
        "RESULT A after B dropped its connection: down ({why}) after {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(why, DownReason::PeerDisconnected);
}

// ------------------------------------------------------- sleeping on a completion channel

#[test]
#[ignore = "needs RDMA: runs inside the lab guest"]
fn inner_completion_channel_batches_and_imm() {
    let lab = lab();
    let cfg = QpConfig {
        max_send_wr: 64,
        max_recv_wr: 64,
        ..QpConfig::default()
    };
    // A's receive CQ reports to a completion channel, so A can sleep instead of polling.
    let ctx_a = Context::open_by_addr(lab.ip_a).expect("rxe_a");
    let pd_a = ProtectionDomain::new(&ctx_a).expect("PD");
    let chan = CompletionChannel::new(&ctx_a).expect("completion channel");
    let recv_cq = CompletionQueue::new(&ctx_a, 64, Some(&chan), 7).expect("recv CQ");
    let send_cq = CompletionQueue::new(&ctx_a, 64, None, 0).expect("send CQ");
    let setup_a =
        QpSetup::new(Arc::clone(&pd_a), send_cq, Arc::clone(&recv_cq), cfg).expect("setup");
    let recv_mr = MemoryRegion::alloc(&pd_a, 64 * BUF, Access::LOCAL_WRITE).expect("MR");

    let listener = Listener::bind(SocketAddr::new(lab.ip_a, 0)).expect("listen");
    let target = listener.local_addr();
    let t = Duration::from_secs(30);
    let ip_b = lab.ip_b;
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let b = thread::spawn(move || {
        let mut s = side(ip_b, cfg, 4, 64);
        let conn = Connection::connect(&s.setup, Some(ip_b), target, b"", t).expect("connect");
        go_rx.recv_timeout(t).expect("A is waiting");
        for i in 0..40u8 {
            s.send_mr
                .write(usize::from(i) * BUF, &[i; 100])
                .expect("write");
        }
        // 32 sends in one batch (one doorbell), then 8 more with immediate data.
        let reqs = (0..32u64)
            .map(|i| SendRequest {
                wr_id: i,
                sge: s.send_mr.sge(i as usize * BUF, 100).expect("sge"),
                flags: if i == 31 {
                    SendFlags::SIGNALED
                } else {
                    SendFlags::NONE
                },
                imm: None,
            })
            .collect::<Vec<_>>();
        conn.qp().post_send_batch(&reqs).expect("batch");
        for i in 32..40u64 {
            let sge = s.send_mr.sge(i as usize * BUF, 100).expect("sge");
            conn.qp()
                .post_send_with_imm(
                    i,
                    &[sge],
                    SendFlags::SIGNALED | SendFlags::SOLICITED,
                    0xC0DE_0000 + i as u32,
                )
                .expect("send with imm");
        }
        let mut wcs = [WorkCompletion::default(); 16];
        let (mut last, deadline) = (0, Instant::now() + t);
        while last != 39 {
            for wc in conn.qp().send_cq().poll(&mut wcs).expect("poll") {
                wc.ok().expect("send completion");
                last = wc.wr_id();
            }
            assert!(Instant::now() < deadline, "sends did not complete");
        }
        conn.wait_down(t).expect("wait for A to hang up")
    });

    let conn = listener
        .accept_with(&setup_a, b"", t, |qp| post_ring(qp, &recv_mr, 64))
        .expect("accept");
    recv_cq.req_notify(false).expect("arm");
    // Nothing sent yet: the wait times out, promptly.
    let t0 = Instant::now();
    assert_eq!(
        chan.wait(Some(Duration::from_millis(200))).expect("wait"),
        None
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    go_tx.send(()).expect("go");

    let mut wcs = [WorkCompletion::default(); 32];
    let mut got = 0u64;
    let mut wakeups = 0;
    let mut buf = [0u8; 100];
    let start = Instant::now();
    while got < 40 {
        let Some(token) = chan.wait(Some(t)).expect("wait") else {
            // Tell a lost event (completions waiting, no wake-up) from lost messages.
            let waiting = recv_cq.poll(&mut wcs).expect("poll").len();
            panic!(
                "no completion event within {t:?} after {got} of 40 messages \
                 ({wakeups} wake-ups, {:.1} s since go); {waiting} completions were \
                 waiting in the CQ; sender finished: {}",
                start.elapsed().as_secs_f64(),
                b.is_finished()
            );
        };
        assert_eq!(token, 7, "the token given to the CQ");
        wakeups += 1;
        // Re-arm before draining, or a completion between the two would be missed; then
        // drain until the CQ is empty: an event stands for every completion up to the
        // re-arm, and completions left behind fire no new event (all 40 can be waiting
        // at the first wake-up, more than one poll of 32 takes).
        recv_cq.req_notify(false).expect("re-arm");
        loop {
            let polled = recv_cq.poll(&mut wcs).expect("poll");
            let n = polled.len();
            for wc in polled {
                wc.ok().expect("receive completion");
                assert_eq!(wc.wr_id(), got, "receives complete in order");
                assert_eq!(wc.byte_len(), 100);
                recv_mr
                    .read(wc.wr_id() as usize * BUF, &mut buf)
                    .expect("read");
                assert_eq!(buf, [got as u8; 100]);
                let want_imm = (got >= 32).then(|| 0xC0DE_0000 + got as u32);
                assert_eq!(wc.imm_data(), want_imm, "message {got}");
                got += 1;
            }
            if n == 0 {
                break;
            }
        }
    }
    println!("RESULT completion channel: 40 messages (32 in one batch, 8 with immediate data) in {wakeups} wake-ups");
    drop(conn);
    assert_eq!(
        b.join().expect("thread B"),
        Some(DownReason::PeerDisconnected)
    );
}
