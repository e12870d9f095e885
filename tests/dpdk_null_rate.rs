//! A sanity figure, not a benchmark: the rx → tx echo loop of the wrappers on a `net_null`
//! vdev (rx makes 64-byte packets from the pool, tx frees them) for one second, printed in
//! Mpps. Asserts only that packets flowed and every mbuf went back to the pool. The
//! criterion benches measure speed properly; this shows the wrappers' overhead is sane.

mod common;

use std::time::{Duration, Instant};

use common::{dpdk, env_param, inner_test_requested, run_self};
use dataplane::dpdk::{tsc, Burst, Eal, Mempool, Port, PortConfig, PKTMBUF_HEADROOM};

#[test]
fn dpdk_null_echo_rate() {
    let prefix = common::unique_name("npnul");
    let _dir = dpdk::RuntimeDir::new(&prefix);
    let run = run_self(
        "inner_null_echo_rate",
        None,
        &[("NP_PREFIX", &prefix)],
        Duration::from_secs(60),
    );
    run.assert_passed();
    for line in run.stdout.lines().filter(|l| l.contains("null echo:")) {
        eprintln!("{line}");
    }
}

#[test]
#[ignore = "runs only as the child of dpdk_null_echo_rate"]
fn inner_null_echo_rate() {
    if !inner_test_requested("inner_null_echo_rate") {
        return;
    }
    let eal = Eal::init(&dpdk::eal_args(&env_param("NP_PREFIX"))).expect("EAL init");
    let pool = Mempool::new(&eal, "np_null", 8191, 256, 2048 + PKTMBUF_HEADROOM).expect("mempool");
    let mut port = Port::open("net_null0", &PortConfig::new(pool.clone())).expect("net_null port");
    let mut burst: Burst = Burst::new();
    let (mut rx, mut tx, mut dropped) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let t0 = tsc();
    while start.elapsed() < Duration::from_secs(1) {
        // Check the clock once per 1024 bursts, not per burst.
        for _ in 0..1024 {
            rx += port.rx_burst(0, &mut burst) as u64;
            tx += port.tx_burst(0, &mut burst) as u64;
            dropped += burst.free_all() as u64;
        }
    }
    let cycles = tsc() - t0;
    let secs = start.elapsed().as_secs_f64();
    let mode = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    println!(
        "null echo: {:.2} Mpps rx->tx on net_null ({rx} rx, {tx} tx, {dropped} dropped in {secs:.2} s, {:.1} cycles/packet, {mode})",
        rx as f64 / secs / 1e6,
        cycles as f64 / rx.max(1) as f64,
    );
    assert!(
        rx > 0 && tx == rx && dropped == 0,
        "rx {rx} tx {tx} dropped {dropped}"
    );
    assert_eq!(pool.in_use(), 0, "nothing held between bursts");

    // The worker shape: a registered non-EAL thread owns the queue, the main thread reads
    // stats and link meanwhile, and the port outlives the Port handle until the queue is gone.
    let before = port.stats().expect("stats");
    let mut queue = port.queue(0).expect("claim queue 0");
    let worker_eal = eal.clone();
    let worker = std::thread::spawn(move || {
        let reg = worker_eal
            .register_thread()
            .expect("register worker thread");
        let mut burst: Burst = Burst::new();
        let mut moved = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            queue.rx_burst(&mut burst);
            moved += queue.tx_burst(&mut burst) as u64;
            burst.free_all();
        }
        (reg.lcore_id(), moved, queue)
    });
    let mut polls = 0;
    while !worker.is_finished() {
        assert!(port.link().expect("link").up);
        let _ = port.stats().expect("stats");
        polls += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let (lcore, moved, queue) = worker.join().expect("worker");
    let after = port.stats().expect("stats");
    println!("null echo: worker on lcore {lcore} moved {moved} packets in 0.3 s while the main thread polled {polls} times");
    assert!(moved > 0);
    assert_eq!(after.tx_packets - before.tx_packets, moved);
    drop(port);
    // The queue still holds the port open; dropping it closes the port.
    drop(queue);
    assert_eq!(pool.in_use(), 0);
}
