//! Mbufs, bursts, mempools and rte_hash on a real EAL (no hugepages, no devices): allocation
//! and freeing keep the pool's in-use count exact, shared buffers refuse mutation, the burst
//! keeps its order through partial sends, and rte_hash finds what was added.
//!
//! The EAL runs in a child process (one EAL per process): the outer test re-runs this binary.

// Only the from_raw/into_raw round trip needs unsafe.
#![allow(unsafe_code)]

mod common;

use std::time::Duration;

use common::{dpdk, inner_test_requested, run_self};
use dataplane::dpdk::{
    Burst, Eal, Mbuf, Mempool, RteHash, BURST_SIZE, LOOKUP_BULK_MAX, PKTMBUF_HEADROOM,
};

#[test]
fn dpdk_mbuf_mempool_hash() {
    let prefix = common::unique_name("npm");
    let _dir = dpdk::RuntimeDir::new(&prefix);
    let run = run_self(
        "inner_mbuf_mempool_hash",
        None,
        &[("NP_PREFIX", &prefix)],
        Duration::from_secs(60),
    );
    run.assert_passed();
    eprintln!("mbuf/mempool/hash child took {:?}", run.elapsed);
}

#[test]
#[ignore = "runs only as the child of dpdk_mbuf_mempool_hash"]
fn inner_mbuf_mempool_hash() {
    if !inner_test_requested("inner_mbuf_mempool_hash") {
        return;
    }
    let prefix = common::env_param("NP_PREFIX");
    let eal = Eal::init(&dpdk::eal_args(&prefix)).expect("EAL init");
    assert!(eal.tsc_hz() > 0);
    let pool = Mempool::new(&eal, "np_mbuf_test", 1023, 32, 2048 + PKTMBUF_HEADROOM).expect("pool");
    assert_eq!(pool.capacity(), 1023);
    assert_eq!(pool.in_use(), 0);
    assert_eq!(pool.available(), 1023);

    // Memory chunks cover the pool's buffers.
    let mut chunk_bytes = 0usize;
    let chunks = pool.for_each_mem_chunk(|addr, len| {
        assert!(!addr.is_null());
        chunk_bytes += len;
    });
    assert!(chunks >= 1);
    assert!(
        chunk_bytes >= 1023 * 2048,
        "chunks hold {chunk_bytes} bytes"
    );

    // Build a frame: append, prepend, adj, trim.
    let mut m = Mbuf::alloc(&pool).expect("alloc");
    assert_eq!(pool.in_use(), 1);
    assert!(m.is_empty());
    assert_eq!(m.headroom(), PKTMBUF_HEADROOM);
    m.append(100)
        .expect("append 100")
        .copy_from_slice(&[0xAB; 100]);
    assert_eq!(m.len(), 100);
    m.prepend(4)
        .expect("prepend 4")
        .copy_from_slice(&[1, 2, 3, 4]);
    assert_eq!(m.len(), 104);
    assert_eq!(&m.data()[..5], &[1, 2, 3, 4, 0xAB]);
    m.adj(2).expect("adj 2");
    assert_eq!(&m.data()[..3], &[3, 4, 0xAB]);
    m.trim(2).expect("trim 2");
    assert_eq!(m.len(), 100);
    assert!(m.trim(101).is_none(), "trim past the data must fail");
    assert!(m.adj(101).is_none(), "adj past the data must fail");
    assert!(
        m.append(m.tailroom() + 1).is_none(),
        "append past the tailroom must fail"
    );
    assert!(
        m.prepend(m.headroom() + 1).is_none(),
        "prepend past the headroom must fail"
    );
    assert_eq!(m.len(), 100);

    // Shared buffers are read-only until exclusive again.
    let c = m.clone_ref();
    assert_eq!(m.refcnt(), 2);
    assert_eq!(pool.in_use(), 1, "a clone is the same buffer");
    assert!(m.data_mut().is_none());
    assert!(m.append(1).is_none());
    assert!(m.prepend(1).is_none());
    assert!(m.adj(1).is_none());
    assert!(m.trim(1).is_none());
    assert_eq!(c.data(), m.data());
    drop(c);
    assert_eq!(m.refcnt(), 1);
    m.data_mut().expect("exclusive again")[0] = 9;
    assert_eq!(m.data()[0], 9);

    // Raw round trip keeps ownership.
    let raw = m.into_raw();
    // SAFETY: raw came from into_raw just above and is owned by nobody else.
    let m = unsafe { Mbuf::from_raw(raw) }.expect("non-null");
    drop(m);
    assert_eq!(pool.in_use(), 0);

    // Bulk alloc is all or nothing; Burst keeps order through pops and pushes.
    let mut burst: Burst = Burst::new();
    assert_eq!(burst.capacity(), BURST_SIZE);
    assert!(Mbuf::alloc_bulk(&pool, &mut burst, BURST_SIZE));
    assert!(burst.is_full());
    assert!(!Mbuf::alloc_bulk(&pool, &mut burst, 1), "no room left");
    assert_eq!(pool.in_use(), 32);
    for (i, m) in burst.iter_mut().enumerate() {
        m.append(1).expect("append")[0] = i as u8;
    }
    let first = burst.pop_front().expect("first");
    assert_eq!(first.data()[0], 0);
    burst.push(first).expect("room for one");
    let order: Vec<u8> = burst.iter().map(|m| m.data()[0]).collect();
    let expected: Vec<u8> = (1..32).chain(std::iter::once(0)).collect();
    assert_eq!(order, expected);
    let extra = Mbuf::alloc(&pool).expect("alloc");
    let extra = burst.push(extra).expect_err("burst is full");
    drop(extra);
    assert_eq!(burst.free_all(), 32);
    assert!(burst.is_empty());
    assert_eq!(pool.in_use(), 0);

    // A pool of 63 cannot give 64 at once, and the failure leaves nothing allocated.
    let small = Mempool::new(&eal, "np_small", 63, 0, 256 + PKTMBUF_HEADROOM).expect("small pool");
    let mut big: Burst<64> = Burst::new();
    assert!(!Mbuf::alloc_bulk(&small, &mut big, 64));
    assert!(big.is_empty());
    assert_eq!(small.in_use(), 0);
    assert!(Mbuf::alloc_bulk(&small, &mut big, 63));
    assert!(Mbuf::alloc(&small).is_none(), "exhausted pool gives None");
    drop(big);
    assert_eq!(small.in_use(), 0);

    // Duplicate pool names are refused with DPDK's reason.
    let err =
        Mempool::new(&eal, "np_small", 63, 0, 256 + PKTMBUF_HEADROOM).expect_err("duplicate name");
    let msg = err.to_string();
    assert!(msg.contains("np_small") && msg.contains("exists"), "{msg}");
    drop(small);

    // rte_hash: add, lookup, bulk lookup, remove.
    let mut h = RteHash::new(&eal, "np_hash", 1024).expect("hash");
    for k in 0..100u64 {
        h.add(0x0200_0000_0000 | k, k as usize * 10).expect("add");
    }
    assert_eq!(h.len(), 100);
    assert_eq!(h.lookup(0x0200_0000_0005), Some(50));
    assert_eq!(h.lookup(0x0300_0000_0005), None);
    let keys: Vec<u64> = (0..LOOKUP_BULK_MAX as u64)
        .map(|i| {
            if i % 2 == 0 {
                0x0200_0000_0000 | i
            } else {
                0xdead_0000 | i
            }
        })
        .collect();
    let mut values = vec![usize::MAX; LOOKUP_BULK_MAX];
    let hits = h.lookup_bulk(&keys, &mut values);
    for (i, value) in values.iter().enumerate() {
        let hit = hits & (1 << i) != 0;
        assert_eq!(hit, i % 2 == 0, "key {i}");
        if hit {
            assert_eq!(*value, i * 10);
        }
    }
    assert!(h.remove(0x0200_0000_0005));
    assert!(!h.remove(0x0200_0000_0005));
    assert_eq!(h.lookup(0x0200_0000_0005), None);

    // Non-EAL threads register for an lcore id.
    let eal2 = eal.clone();
    let lcore = std::thread::spawn(move || {
        assert_eq!(dataplane::dpdk::lcore_id(), None);
        let reg = eal2.register_thread().expect("register");
        let id = reg.lcore_id();
        assert_eq!(dataplane::dpdk::lcore_id(), Some(id));
        id
    })
    .join()
    .expect("thread");
    assert_ne!(lcore, 0, "lcore 0 is the main lcore");
    assert_eq!(pool.in_use(), 0);
}
