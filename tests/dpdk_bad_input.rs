//! Bad input to the DPDK wrappers gives a clear error naming the cause: no panic, no hang.
//! Garbled device strings, an af_packet port on an interface that does not exist, EAL
//! without usable hugepages, bad EAL arguments, and a second EAL init in one process.
//!
//! Each case needs a fresh process (one EAL per process), so every outer test runs an
//! `#[ignore]`d inner test of this binary as a child with a deadline.

mod common;

use std::time::Duration;

use common::{dpdk, env_param, inner_test_requested, run_self, Netns};
use dataplane::dpdk::{DpdkError, Eal, Mempool, Port, PortConfig, PKTMBUF_HEADROOM};

/// Every case finishes in well under a second; this only bounds a hang.
const DEADLINE: Duration = Duration::from_secs(60);

fn outer(inner: &str, netns: Option<&Netns>) {
    let prefix = common::unique_name("npbad");
    let _dir = dpdk::RuntimeDir::new(&prefix);
    let run = run_self(inner, netns, &[("NP_PREFIX", &prefix)], DEADLINE);
    run.assert_passed();
    for line in run.stdout.lines().filter(|l| l.starts_with("bad input:")) {
        eprintln!("{line}");
    }
    eprintln!("{inner} took {:?}", run.elapsed);
}

#[test]
fn dpdk_bad_devargs() {
    // In a namespace of its own, so the absent-interface case cannot find one by chance.
    let ns = Netns::new("npbd");
    outer("inner_bad_devargs", Some(&ns));
}

#[test]
#[ignore = "runs only as the child of dpdk_bad_devargs"]
fn inner_bad_devargs() {
    if !inner_test_requested("inner_bad_devargs") {
        return;
    }
    let eal = Eal::init(&dpdk::eal_args(&env_param("NP_PREFIX"))).expect("EAL init");
    let pool = Mempool::new(&eal, "np_bad", 511, 0, 2048 + PKTMBUF_HEADROOM).expect("mempool");
    let cfg = PortConfig::new(pool.clone());
    // (device string, what the error must say about the cause)
    let cases = [
        ("", "empty"),
        ("   ", "empty"),
        ("%%%garbage%%%", "failed to parse device"),
        ("net_nosuchdriver0", "failed to parse device"),
        ("0000:zz:00.0", "failed to parse device"),
        ("net_af_packet0", "needs iface="),
        // DPDK 22.11's af_packet driver segfaults on this one; the wrapper must catch it.
        ("net_af_packet0,iface", "'iface' has no value"),
        ("net_af_packet0,iface=", "not a valid interface name"),
        (
            "net_af_packet0,iface=averyveryverylongname",
            "not a valid interface name",
        ),
        (
            "net_af_packet0,iface=npabsent0",
            "interface 'npabsent0' does not exist",
        ),
        (
            "net_af_packet0,iface=lo,qpairs=notanumber",
            "invalid qpairs value",
        ),
        ("net_af_packet0,,,=,=", "has no key"),
        ("net_null0,size=64,bogus", "'bogus' has no value"),
        // An unknown key: the null driver rejects it without saying which; DPDK's own words.
        (
            "net_null0,size=64,bogus=1",
            "Driver cannot attach the device (net_null0)",
        ),
    ];
    for (devargs, cause) in cases {
        let err = Port::open(devargs, &cfg).expect_err(devargs);
        let msg = err.to_string();
        println!("bad input: {devargs:?} -> {msg}");
        assert!(
            msg.contains(&format!("opening port '{devargs}'")),
            "names the device: {msg}"
        );
        assert!(msg.contains(cause), "names the cause ({cause}): {msg}");
    }
    let mut zero = PortConfig::new(pool.clone());
    zero.rx_queues = 0;
    let err = Port::open("net_null0", &zero).expect_err("zero queues");
    println!("bad input: zero rx queues -> {err}");
    assert!(
        matches!(err, DpdkError::InvalidArgument { .. })
            && err.to_string().contains("at least one"),
        "{err}"
    );
    let mut many = PortConfig::new(pool.clone());
    many.rx_queues = 2000;
    let err = Port::open("net_null0", &many).expect_err("2000 queues");
    println!("bad input: 2000 rx queues -> {err}");
    assert!(err.to_string().contains("2000 rx"), "{err}");

    // Nothing was left behind: a good device opens and works.
    let port = Port::open("net_null0", &cfg).expect("a good device after the bad ones");
    drop(port);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn dpdk_no_hugepages() {
    outer("inner_no_hugepages", None);
}

#[test]
#[ignore = "runs only as the child of dpdk_no_hugepages"]
fn inner_no_hugepages() {
    if !inner_test_requested("inner_no_hugepages") {
        return;
    }
    // Hugepage mode (no --no-huge) with --huge-dir pointing at a plain directory: EAL finds
    // no hugetlbfs mount there whatever the machine's nr_hugepages, so this fails the same
    // way everywhere and changes nothing on the system. (--in-memory is left out on purpose:
    // it maps hugepages without a mount and would succeed where some are reserved.)
    let dir = std::env::temp_dir().join(format!("np-not-hugetlbfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let args = [
        "--no-pci".to_owned(),
        "--no-shconf".to_owned(),
        format!("--file-prefix={}", env_param("NP_PREFIX")),
        format!("--huge-dir={}", dir.display()),
        "--no-telemetry".to_owned(),
    ];
    let result = Eal::init(&args);
    let _ = std::fs::remove_dir(&dir);
    let err = result.expect_err("EAL without usable hugepages");
    let msg = err.to_string();
    println!("bad input: no hugepages -> {msg}");
    assert!(msg.contains("initialising the DPDK EAL"), "{msg}");
    assert!(
        msg.contains("Cannot get hugepage information"),
        "names the cause: {msg}"
    );
    assert!(msg.contains("--no-huge"), "says what to do: {msg}");
}

#[test]
fn dpdk_second_eal_init() {
    outer("inner_second_eal_init", None);
}

#[test]
#[ignore = "runs only as the child of dpdk_second_eal_init"]
fn inner_second_eal_init() {
    if !inner_test_requested("inner_second_eal_init") {
        return;
    }
    let args = dpdk::eal_args(&env_param("NP_PREFIX"));
    let eal = Eal::init(&args).expect("first EAL init");
    let err = Eal::init(&args).expect_err("second EAL init while the first is alive");
    println!("bad input: second EAL init -> {err}");
    assert!(matches!(err, DpdkError::EalAlreadyInitialized), "{err}");
    assert!(err.to_string().contains("already initialised"), "{err}");
    // Not even after cleanup: DPDK cannot init twice in one process.
    drop(eal);
    let err = Eal::init(&args).expect_err("EAL init after cleanup");
    println!("bad input: EAL init after cleanup -> {err}");
    assert!(matches!(err, DpdkError::EalAlreadyInitialized), "{err}");
}

#[test]
fn dpdk_bad_eal_args() {
    outer("inner_bad_eal_args", None);
}

#[test]
#[ignore = "runs only as the child of dpdk_bad_eal_args"]
fn inner_bad_eal_args() {
    if !inner_test_requested("inner_bad_eal_args") {
        return;
    }
    let err = Eal::init(&["--no-pci", "--bogus-option"]).expect_err("unknown option");
    println!("bad input: unknown EAL option -> {err}");
    assert!(err.to_string().contains("--bogus-option"), "{err}");
    assert!(
        err.to_string().contains("Invalid 'command line' arguments"),
        "{err}"
    );

    let err = Eal::init(&["--no-pci", "--lcores=garbage"]).expect_err("bad lcores");
    println!("bad input: bad --lcores -> {err}");
    assert!(err.to_string().contains("lcores"), "{err}");

    let err = Eal::init(&["bad\0arg"]).expect_err("NUL in an argument");
    println!("bad input: NUL in an argument -> {err}");
    assert!(matches!(err, DpdkError::InvalidArgument { .. }), "{err}");

    // A failed init leaves the process able to init properly.
    let eal = Eal::init(&dpdk::eal_args(&env_param("NP_PREFIX"))).expect("EAL init after failures");
    assert!(eal.tsc_hz() > 0);
}
