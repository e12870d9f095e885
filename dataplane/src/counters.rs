//! Per-worker packet counters: written by one worker, read (and summed) by the control plane.
//!
//! Each worker owns one [`CounterWriter`]; the control plane holds any number of
//! [`CounterReader`]s onto the same block and sums the [`CountersSnapshot`]s of all workers
//! when metrics are scraped.
//!
//! Why `AtomicU64` with `Relaxed` `load` + `store` and not `fetch_add`: there is exactly one
//! writer per block (the writer handle is neither `Clone` nor shareable, and its methods take
//! `&mut self`), so an increment cannot race with another increment and needs no
//! read-modify-write. A relaxed load followed by a relaxed store compiles to plain `mov`s on
//! x86-64, which costs what a plain `u64` would, while still letting the control thread read
//! the value without a data race (a plain `u64` read from another thread would be undefined
//! behaviour). Readers may see a counter a few increments late and counters that were updated
//! together may be seen at slightly different moments; for metrics that is fine. Each counter
//! only ever grows, and 64 bits do not wrap in the lifetime of a machine.
//!
//! The block is aligned to a cache line so that two workers' counters never share one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why a frame was dropped. The index of a reason (`reason as usize`) addresses
/// [`CountersSnapshot::drops`]; new reasons are appended before [`DropReason::COUNT`] is
/// updated, and [`DropReason::ALL`] lists every reason in index order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header (14 bytes), or than its VLAN tags claim.
    Runt = 0,
    /// Longer than the table's maximum frame length.
    Oversize,
    /// The (inner) ethertype is not in the accepted set (includes 802.3 length fields and a
    /// third VLAN tag).
    UnknownEthertype,
    /// The frame's VLAN (or its absence) maps to no domain.
    UnknownVlan,
    /// A unicast frame from the LAN side whose destination is neither local nor proxied
    /// (normal in promiscuous mode).
    NotForUs,
    /// A broadcast/multicast frame whose domain has no member left to receive it.
    NoRoute,
    /// The domain has no uplink (neither the NIC nor a proxy session).
    NoPath,
    /// A frame from a client session whose source MAC is not registered for that session.
    Spoofed,
    /// The frame would go back out where it came from (e.g. a session's frame to its own MAC,
    /// a kernel frame to a local MAC).
    Loop,
    /// LAN-side frame that arrived on a path that is not the domain's current uplink (like
    /// bonding active-backup dropping frames on the backup slave).
    InactivePath,
    /// An IEEE 802.1D link-local group frame (01:80:c2:00:00:0x) that must not cross a bridge.
    LinkLocal,
    /// The destination MAC has an explicit `Drop` entry in the table.
    Filtered,
    /// The source session id is outside the range the table supports.
    UnknownSession,
    /// The transmit queue (NIC or kernel port) was full.
    TxFull,
    /// The fabric session could not take the frame (no send credits / queue full).
    FabricBackpressure,
    /// A frame received from the fabric did not parse as a session frame.
    MalformedFabric,
    /// No buffer could be allocated to copy or build a frame.
    NoBuffer,
    /// A frame for the local kernel while its interface has no carrier (no path at all, or
    /// the kernel has not yet taken the carrier up): like a NIC without carrier, the
    /// interface receives nothing it could not answer.
    NoCarrier,
}

impl DropReason {
    /// Number of drop reasons; the length of per-reason arrays.
    pub const COUNT: usize = 18;

    /// Every reason, in index order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Runt,
        DropReason::Oversize,
        DropReason::UnknownEthertype,
        DropReason::UnknownVlan,
        DropReason::NotForUs,
        DropReason::NoRoute,
        DropReason::NoPath,
        DropReason::Spoofed,
        DropReason::Loop,
        DropReason::InactivePath,
        DropReason::LinkLocal,
        DropReason::Filtered,
        DropReason::UnknownSession,
        DropReason::TxFull,
        DropReason::FabricBackpressure,
        DropReason::MalformedFabric,
        DropReason::NoBuffer,
        DropReason::NoCarrier,
    ];

    /// Position of this reason in per-reason arrays.
    #[inline(always)]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name, used as the metrics label value.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Oversize => "oversize",
            DropReason::UnknownEthertype => "unknown_ethertype",
            DropReason::UnknownVlan => "unknown_vlan",
            DropReason::NotForUs => "not_for_us",
            DropReason::NoRoute => "no_route",
            DropReason::NoPath => "no_path",
            DropReason::Spoofed => "spoofed",
            DropReason::Loop => "loop",
            DropReason::InactivePath => "inactive_path",
            DropReason::LinkLocal => "link_local",
            DropReason::Filtered => "filtered",
            DropReason::UnknownSession => "unknown_session",
            DropReason::TxFull => "tx_full",
            DropReason::FabricBackpressure => "fabric_backpressure",
            DropReason::MalformedFabric => "malformed_fabric",
            DropReason::NoBuffer => "no_buffer",
            DropReason::NoCarrier => "no_carrier",
        }
    }
}

/// Counters of one port (NIC, kernel, or a fabric session, as the worker numbers them).
#[derive(Debug, Default)]
struct PortCells {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: AtomicU64,
}

#[derive(Debug)]
#[repr(align(64))]
struct Block {
    ports: Box<[PortCells]>,
    drops: [AtomicU64; DropReason::COUNT],
}

/// Single-writer increment: see the module documentation for why this is not `fetch_add`.
#[inline(always)]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Creates the counters of one worker with `ports` ports: the writer goes to the worker, the
/// reader (cloneable) to the control plane.
pub fn worker_counters(ports: usize) -> (CounterWriter, CounterReader) {
    let block = Arc::new(Block {
        ports: (0..ports).map(|_| PortCells::default()).collect(),
        drops: std::array::from_fn(|_| AtomicU64::new(0)),
    });
    (
        CounterWriter {
            block: Arc::clone(&block),
        },
        CounterReader { block },
    )
}

/// The worker's handle: the only writer of its counter block. Methods take `&mut self` so the
/// single-writer rule is enforced by the borrow checker.
#[derive(Debug)]
pub struct CounterWriter {
    block: Arc<Block>,
}

impl CounterWriter {
    /// Number of ports this block counts.
    pub fn ports(&self) -> usize {
        self.block.ports.len()
    }

    /// Counts `packets` frames totalling `bytes` received on `port`. An out-of-range port is
    /// ignored (a counting bug must not take the data path down).
    #[inline]
    pub fn add_rx(&mut self, port: usize, packets: u64, bytes: u64) {
        if let Some(p) = self.block.ports.get(port) {
            bump(&p.rx_packets, packets);
            bump(&p.rx_bytes, bytes);
        }
    }

    /// Counts `packets` frames totalling `bytes` sent on `port`.
    #[inline]
    pub fn add_tx(&mut self, port: usize, packets: u64, bytes: u64) {
        if let Some(p) = self.block.ports.get(port) {
            bump(&p.tx_packets, packets);
            bump(&p.tx_bytes, bytes);
        }
    }

    /// Counts `n` frames dropped for `reason`, attributed to `port` (where they came from or
    /// were going to).
    #[inline]
    pub fn add_drop(&mut self, port: usize, reason: DropReason, n: u64) {
        if let Some(p) = self.block.ports.get(port) {
            bump(&p.drops, n);
        }
        bump(&self.block.drops[reason.index()], n);
    }

    /// Adds a batch of per-reason drop counts gathered in plain integers over a burst (see
    /// [`DropTally`]), attributing all of them to `port`.
    #[inline]
    pub fn add_tally(&mut self, port: usize, tally: &DropTally) {
        let mut total = 0u64;
        for (cell, &n) in self.block.drops.iter().zip(tally.0.iter()) {
            if n != 0 {
                bump(cell, u64::from(n));
                total += u64::from(n);
            }
        }
        if total != 0 {
            if let Some(p) = self.block.ports.get(port) {
                bump(&p.drops, total);
            }
        }
    }

    /// A reader onto this writer's block.
    pub fn reader(&self) -> CounterReader {
        CounterReader {
            block: Arc::clone(&self.block),
        }
    }
}

/// The control plane's handle onto one worker's counters.
#[derive(Debug, Clone)]
pub struct CounterReader {
    block: Arc<Block>,
}

impl CounterReader {
    /// Reads every counter once (relaxed loads; see the module documentation).
    pub fn snapshot(&self) -> CountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            ports: self
                .block
                .ports
                .iter()
                .map(|p| PortSnapshot {
                    rx_packets: r(&p.rx_packets),
                    rx_bytes: r(&p.rx_bytes),
                    tx_packets: r(&p.tx_packets),
                    tx_bytes: r(&p.tx_bytes),
                    drops: r(&p.drops),
                })
                .collect(),
            drops: std::array::from_fn(|i| r(&self.block.drops[i])),
        }
    }
}

/// Per-reason drop counts kept in plain integers on the worker's stack during one burst and
/// flushed with [`CounterWriter::add_tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropTally(pub [u32; DropReason::COUNT]);

impl DropTally {
    /// Counts one drop.
    #[inline(always)]
    pub fn count(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }

    /// Counts `n` drops (saturating).
    #[inline(always)]
    pub fn add(&mut self, reason: DropReason, n: u64) {
        let slot = &mut self.0[reason.index()];
        *slot = slot.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Total drops counted.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|&n| u64::from(n)).sum()
    }
}

/// One port's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortSnapshot {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames dropped (all reasons).
    pub drops: u64,
}

impl PortSnapshot {
    fn add(&mut self, o: &PortSnapshot) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.drops += o.drops;
    }
}

/// All counters of one worker (or the sum over several) at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Per-port counters, indexed by the worker's port number.
    pub ports: Vec<PortSnapshot>,
    /// Drops per reason, indexed by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
}

impl CountersSnapshot {
    /// Drops counted for `reason`.
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Adds `other` into `self`; ports missing on one side count as zero.
    pub fn add(&mut self, other: &CountersSnapshot) {
        if self.ports.len() < other.ports.len() {
            self.ports
                .resize(other.ports.len(), PortSnapshot::default());
        }
        for (a, b) in self.ports.iter_mut().zip(other.ports.iter()) {
            a.add(b);
        }
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
    }

    /// Sums the snapshots of several workers.
    pub fn sum<'a>(snapshots: impl IntoIterator<Item = &'a CountersSnapshot>) -> CountersSnapshot {
        let mut total = CountersSnapshot {
            ports: Vec::new(),
            drops: [0; DropReason::COUNT],
        };
        for s in snapshots {
            total.add(s);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_densely_and_named_uniquely() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn writer_counts_reader_sees_and_sums() {
        let (mut w1, r1) = worker_counters(3);
        let (mut w2, r2) = worker_counters(2);
        w1.add_rx(0, 4, 400);
        w1.add_tx(1, 2, 120);
        w1.add_drop(2, DropReason::Spoofed, 3);
        w1.add_rx(7, 1, 1); // out of range: ignored, no panic
        w2.add_rx(0, 1, 60);
        let mut t = DropTally::default();
        t.count(DropReason::Runt);
        t.count(DropReason::Runt);
        t.count(DropReason::NoPath);
        assert_eq!(t.total(), 3);
        w2.add_tally(1, &t);

        let s1 = r1.snapshot();
        assert_eq!(s1.ports[0].rx_packets, 4);
        assert_eq!(s1.ports[0].rx_bytes, 400);
        assert_eq!(s1.ports[1].tx_bytes, 120);
        assert_eq!(s1.ports[2].drops, 3);
        assert_eq!(s1.drops_for(DropReason::Spoofed), 3);

        let total = CountersSnapshot::sum([&s1, &r2.snapshot()]);
        assert_eq!(total.ports.len(), 3);
        assert_eq!(total.ports[0].rx_packets, 5);
        assert_eq!(total.ports[1].drops, 3);
        assert_eq!(total.drops_for(DropReason::Runt), 2);
        assert_eq!(total.drops_for(DropReason::NoPath), 1);
        assert_eq!(total.drops_for(DropReason::Spoofed), 3);
    }

    #[test]
    fn reader_on_another_thread_sees_monotonic_counts() {
        let (mut w, r) = worker_counters(1);
        let reader = std::thread::spawn(move || {
            let mut last = 0;
            loop {
                let now = r.snapshot().ports[0].rx_packets;
                assert!(now >= last, "counter went backwards: {last} -> {now}");
                last = now;
                if now == 100_000 {
                    break;
                }
                std::thread::yield_now();
            }
        });
        for _ in 0..100_000 {
            w.add_rx(0, 1, 64);
        }
        reader.join().unwrap();
    }
}
