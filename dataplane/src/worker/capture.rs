//! Frame capture inside the worker, for `nicproxy capture`.
//!
//! Control sets a filter (a MAC, or a fabric session) over a small command ring; the worker
//! picks it up between bursts, exactly as it picks up steering tables. While no capture runs
//! the hot path pays one predictable branch per burst and nothing per frame. While one runs,
//! every frame the worker steers is tested against the filter after its steering decision
//! (so a session filter also sees frames *to* the session), and a matching frame is copied,
//! cut to the snap length, into a fixed-size byte ring that control drains. Nothing is
//! allocated per frame: both rings are allocated once, when the worker starts. When the
//! record ring is full the frame is not recorded and a capture drop is counted; forwarding
//! never waits for a capture.
//!
//! Records are stamped with the TSC (no syscall); control turns that into wall-clock time
//! with a reference it takes when the capture starts. Each record carries the generation of
//! the capture that produced it, so records of an earlier capture still in the ring when a
//! new one starts are skipped rather than reported under the new filter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::counters::DropReason;
use crate::dpdk::tsc;
use crate::steer::{Decision, Flood, SessionId, SessionMask, Source};
use crate::wire::MacAddr;

/// Bytes of one worker's record ring: at the largest snap length it still holds over a
/// hundred frames, far more than arrive between two drains (control drains every
/// millisecond).
pub const RING_BYTES: usize = 2 << 20;
/// The largest snap length a capture may ask for.
pub const MAX_SNAPLEN: u16 = 16_384;
/// The smallest snap length (an Ethernet header with two VLAN tags and an IPv6 header).
pub const MIN_SNAPLEN: u16 = 64;
/// Filter changes that may wait for the worker.
const COMMAND_DEPTH: usize = 8;
/// Bytes of a record's header in the ring.
const HDR: usize = 40;

/// Which frames a capture takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFilter {
    /// Frames whose source or destination MAC is this address (both directions, every
    /// port).
    Mac(MacAddr),
    /// Frames received from this fabric session, or steered to it (alone or in a flood).
    Session(SessionId),
}

impl CaptureFilter {
    #[inline]
    fn matches(&self, src: Source, d: &Decision, data: &[u8]) -> bool {
        match *self {
            CaptureFilter::Mac(m) => {
                data.get(0..6) == Some(&m.0[..]) || data.get(6..12) == Some(&m.0[..])
            }
            CaptureFilter::Session(s) => {
                src == Source::Session(s)
                    || match d {
                        Decision::Session(x) => *x == s,
                        Decision::Flood(f) => f.sessions.contains(s),
                        _ => false,
                    }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Command {
    Start {
        filter: CaptureFilter,
        snaplen: u16,
        generation: u32,
    },
    Stop,
}

#[derive(Clone, Copy, Debug)]
struct Active {
    filter: CaptureFilter,
    snaplen: usize,
    generation: u32,
}

/// Counts the worker publishes (one writer: relaxed load and store, as in `counters`).
#[derive(Debug, Default)]
struct Shared {
    captured: AtomicU64,
    dropped: AtomicU64,
}

/// Why a capture could not be started or stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    /// The worker thread has ended.
    #[error("changing the capture filter: the worker has stopped")]
    WorkerGone,
    /// The worker has not taken the previous filter changes (it is stalled).
    #[error("changing the capture filter: the worker has not taken the last {COMMAND_DEPTH} changes (stalled?)")]
    Stalled,
    /// The snap length is outside what the ring supports.
    #[error("snap length {0} is outside {MIN_SNAPLEN}..={MAX_SNAPLEN}")]
    Snaplen(u16),
}

/// The worker's end: holds the filter and writes records.
#[derive(Debug)]
pub struct CaptureTap {
    commands: rtrb::Consumer<Command>,
    records: rtrb::Producer<u8>,
    active: Option<Active>,
    shared: Arc<Shared>,
    captured: u64,
    dropped: u64,
}

/// Control's end: sets the filter and drains records.
#[derive(Debug)]
pub struct CaptureControl {
    commands: rtrb::Producer<Command>,
    records: rtrb::Consumer<u8>,
    shared: Arc<Shared>,
    tsc_hz: u64,
    generation: u32,
    /// TSC and wall-clock time read together when the capture started.
    clock: (u64, Duration),
    scratch: Vec<u8>,
}

/// One captured frame, as control reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapturedFrame<'a> {
    /// When the worker steered it, since the Unix epoch.
    pub time: Duration,
    /// Its length on the wire (`data` may be shorter: cut to the snap length).
    pub orig_len: u32,
    /// Where it came from.
    pub source: Source,
    /// Where the worker sent it.
    pub decision: Decision,
    /// Its first bytes.
    pub data: &'a [u8],
}

/// Frames of the current capture, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames that matched and were recorded.
    pub captured: u64,
    /// Frames that matched but found the record ring full.
    pub dropped: u64,
}

/// Creates the two ends for one worker; `tsc_hz` converts the worker's timestamps.
pub fn channel(tsc_hz: u64) -> (CaptureTap, CaptureControl) {
    let (cmd_tx, cmd_rx) = rtrb::RingBuffer::new(COMMAND_DEPTH);
    let (rec_tx, rec_rx) = rtrb::RingBuffer::new(RING_BYTES);
    let shared = Arc::new(Shared::default());
    (
        CaptureTap {
            commands: cmd_rx,
            records: rec_tx,
            active: None,
            shared: shared.clone(),
            captured: 0,
            dropped: 0,
        },
        CaptureControl {
            commands: cmd_tx,
            records: rec_rx,
            shared,
            tsc_hz: tsc_hz.max(1),
            generation: 0,
            clock: (0, Duration::ZERO),
            scratch: vec![0; HDR + usize::from(MAX_SNAPLEN)],
        },
    )
}

impl CaptureTap {
    /// Takes filter changes from control, if any: one load of the command ring's index.
    /// Call between bursts.
    #[inline]
    pub fn refresh(&mut self) {
        if !self.commands.is_empty() {
            self.apply_commands();
        }
    }

    #[cold]
    fn apply_commands(&mut self) {
        while let Ok(c) = self.commands.pop() {
            self.active = match c {
                Command::Start {
                    filter,
                    snaplen,
                    generation,
                } => {
                    self.captured = 0;
                    self.dropped = 0;
                    self.shared.captured.store(0, Ordering::Relaxed);
                    self.shared.dropped.store(0, Ordering::Relaxed);
                    Some(Active {
                        filter,
                        snaplen: usize::from(snaplen),
                        generation,
                    })
                }
                Command::Stop => None,
            };
        }
    }

    /// Whether a capture is running: test once per burst, and offer frames only if so.
    #[inline(always)]
    pub fn is_on(&self) -> bool {
        self.active.is_some()
    }

    /// Records the frame if it matches the filter. `data` is the frame's first segment,
    /// `orig_len` its whole length.
    #[inline]
    pub fn offer(&mut self, src: Source, d: &Decision, data: &[u8], orig_len: usize) {
        let Some(a) = self.active else { return };
        if a.filter.matches(src, d, data) {
            self.record(a, src, d, data, orig_len);
        }
    }

    #[inline(never)]
    fn record(&mut self, a: Active, src: Source, d: &Decision, data: &[u8], orig_len: usize) {
        let cap = data.len().min(a.snaplen);
        let need = HDR + cap;
        if self.records.slots() < need {
            self.dropped += 1;
            self.shared.dropped.store(self.dropped, Ordering::Relaxed);
            return;
        }
        let h = encode_header(
            a.generation,
            u32::try_from(orig_len).unwrap_or(u32::MAX),
            cap,
            src,
            d,
            tsc(),
        );
        // Both fit (checked above) and this thread is the ring's only writer, so neither
        // push can fail. Control reads a record only once all of it is in the ring.
        let _ = self.records.push_entire_slice(&h);
        let _ = self.records.push_entire_slice(&data[..cap]);
        self.captured += 1;
        self.shared.captured.store(self.captured, Ordering::Relaxed);
    }
}

// Record header layout (little-endian):
//   0..4 generation, 4..8 original length, 8..10 captured length,
//   10 source kind, 11 decision kind, 12..14 source session, 14..16 decision argument
//   (session id or drop reason), 16 flood flags (bit 0 kernel, bit 1 NIC),
//   24..32 flood session mask, 32..40 TSC.
const SRC_NIC: u8 = 0;
const SRC_KERNEL: u8 = 1;
const SRC_SESSION: u8 = 2;
const DEC_KERNEL: u8 = 0;
const DEC_NIC: u8 = 1;
const DEC_SESSION: u8 = 2;
const DEC_FLOOD: u8 = 3;
const DEC_DROP: u8 = 4;

#[inline]
fn encode_header(gen: u32, orig: u32, cap: usize, src: Source, d: &Decision, t: u64) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0..4].copy_from_slice(&gen.to_le_bytes());
    h[4..8].copy_from_slice(&orig.to_le_bytes());
    // cap <= MAX_SNAPLEN, which fits 16 bits.
    h[8..10].copy_from_slice(&(cap as u16).to_le_bytes());
    let (sk, ss) = match src {
        Source::Nic => (SRC_NIC, 0),
        Source::Kernel => (SRC_KERNEL, 0),
        Source::Session(s) => (SRC_SESSION, s.0),
    };
    h[10] = sk;
    h[12..14].copy_from_slice(&ss.to_le_bytes());
    let (dk, arg, flags, mask) = match *d {
        Decision::Kernel => (DEC_KERNEL, 0, 0, 0),
        Decision::Nic => (DEC_NIC, 0, 0, 0),
        Decision::Session(s) => (DEC_SESSION, s.0, 0, 0),
        Decision::Flood(f) => (
            DEC_FLOOD,
            0,
            u8::from(f.kernel) | (u8::from(f.nic) << 1),
            f.sessions.0,
        ),
        Decision::Drop(r) => (DEC_DROP, r.index() as u16, 0, 0),
    };
    h[11] = dk;
    h[14..16].copy_from_slice(&arg.to_le_bytes());
    h[16] = flags;
    h[24..32].copy_from_slice(&mask.to_le_bytes());
    h[32..40].copy_from_slice(&t.to_le_bytes());
    h
}

fn u16_at(h: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([h[at], h[at + 1]])
}

fn u32_at(h: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

fn u64_at(h: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Source and decision of a header; `None` for kinds this build does not know.
fn decode_path(h: &[u8]) -> Option<(Source, Decision)> {
    let source = match h[10] {
        SRC_NIC => Source::Nic,
        SRC_KERNEL => Source::Kernel,
        SRC_SESSION => Source::Session(SessionId(u16_at(h, 12))),
        _ => return None,
    };
    let arg = u16_at(h, 14);
    let decision = match h[11] {
        DEC_KERNEL => Decision::Kernel,
        DEC_NIC => Decision::Nic,
        DEC_SESSION => Decision::Session(SessionId(arg)),
        DEC_FLOOD => Decision::Flood(Flood {
            sessions: SessionMask(u64_at(h, 24)),
            kernel: h[16] & 1 != 0,
            nic: h[16] & 2 != 0,
        }),
        DEC_DROP => Decision::Drop(*DropReason::ALL.get(usize::from(arg))?),
        _ => return None,
    };
    Some((source, decision))
}

impl CaptureControl {
    /// Starts a capture (replacing any running one): the worker applies it before its next
    /// burst. Records left from an earlier capture are discarded.
    pub fn start(&mut self, filter: CaptureFilter, snaplen: u16) -> Result<(), CaptureError> {
        if !(MIN_SNAPLEN..=MAX_SNAPLEN).contains(&snaplen) {
            return Err(CaptureError::Snaplen(snaplen));
        }
        let generation = self.generation.wrapping_add(1);
        // The clock reference is read before the worker can stamp a record of this
        // capture, so no record predates it.
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let clock = (tsc(), wall);
        // Records of earlier captures that arrive after this are skipped by generation.
        self.discard();
        self.send(Command::Start {
            filter,
            snaplen,
            generation,
        })?;
        self.generation = generation;
        self.clock = clock;
        Ok(())
    }

    /// Stops the capture; the worker stops recording before its next burst.
    pub fn stop(&mut self) -> Result<(), CaptureError> {
        self.send(Command::Stop)
    }

    fn send(&mut self, c: Command) -> Result<(), CaptureError> {
        if self.commands.is_abandoned() {
            return Err(CaptureError::WorkerGone);
        }
        self.commands.push(c).map_err(|_| CaptureError::Stalled)
    }

    /// Whether the worker has ended (it dropped its end).
    pub fn worker_gone(&self) -> bool {
        self.records.is_abandoned() && self.records.is_empty()
    }

    /// Counts of the current capture (of the last one until the worker has taken a new
    /// one: it resets them when it does).
    pub fn stats(&self) -> CaptureStats {
        CaptureStats {
            captured: self.shared.captured.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// Drops every complete record in the ring.
    fn discard(&mut self) {
        while self.next_record().is_some() {}
    }

    /// Pops the next complete record into `scratch`; returns its captured length.
    fn next_record(&mut self) -> Option<usize> {
        if self.records.slots() < HDR {
            return None;
        }
        let mut h = [0u8; HDR];
        {
            let chunk = self.records.read_chunk(HDR).ok()?;
            let (a, b) = chunk.as_slices();
            h[..a.len()].copy_from_slice(a);
            h[a.len()..].copy_from_slice(b);
            // Not committed: the header stays until the whole record is there.
        }
        let cap = usize::from(u16_at(&h, 8));
        let total = HDR + cap;
        if self.records.slots() < total {
            // The worker is between the header and the data of this record.
            return None;
        }
        if self.scratch.len() < total {
            self.scratch.resize(total, 0);
        }
        self.records
            .pop_entire_slice(&mut self.scratch[..total])
            .ok()?;
        Some(cap)
    }

    /// Hands every complete record of the current capture to `f`, at most `max` of them;
    /// returns how many.
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(&CapturedFrame<'_>)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(cap) = self.next_record() else { break };
            let h = &self.scratch[..HDR];
            if u32_at(h, 0) != self.generation {
                continue;
            }
            let Some((source, decision)) = decode_path(h) else {
                continue;
            };
            let ticks = u64_at(h, 32).saturating_sub(self.clock.0);
            let nanos = u128::from(ticks) * 1_000_000_000 / u128::from(self.tsc_hz);
            let since = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            let frame = CapturedFrame {
                time: self.clock.1 + since,
                orig_len: u32_at(h, 4),
                source,
                decision,
                data: &self.scratch[HDR..HDR + cap],
            };
            f(&frame);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0x77, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0x77, 0, 2]);

    fn frame(dst: MacAddr, src: MacAddr, len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[0..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f
    }

    fn drain(c: &mut CaptureControl) -> Vec<(Source, Decision, u32, Vec<u8>, Duration)> {
        let mut out = Vec::new();
        c.poll(usize::MAX, |f| {
            out.push((f.source, f.decision, f.orig_len, f.data.to_vec(), f.time))
        });
        out
    }

    #[test]
    fn off_until_started_then_mac_filter_takes_both_directions() {
        let (mut tap, mut ctl) = channel(1_000_000_000);
        tap.refresh();
        assert!(!tap.is_on());
        let to_a = frame(A, B, 100, 0xaa);
        tap.offer(Source::Nic, &Decision::Kernel, &to_a, to_a.len());
        assert_eq!(ctl.poll(usize::MAX, |_| {}), 0, "nothing before start");

        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        ctl.start(CaptureFilter::Mac(A), 2048).unwrap();
        assert!(!tap.is_on(), "applied only at the worker's next refresh");
        tap.refresh();
        assert!(tap.is_on());
        let from_a = frame(B, A, 60, 0xbb);
        let other = frame(B, MacAddr([2, 0, 0, 0, 0, 9]), 60, 0xcc);
        tap.offer(Source::Nic, &Decision::Kernel, &to_a, to_a.len());
        tap.offer(
            Source::Kernel,
            &Decision::Session(SessionId(3)),
            &from_a,
            from_a.len(),
        );
        tap.offer(Source::Nic, &Decision::Nic, &other, other.len());
        let got = drain(&mut ctl);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, Source::Nic);
        assert_eq!(got[0].1, Decision::Kernel);
        assert_eq!(got[0].3, to_a);
        assert_eq!(got[1].0, Source::Kernel);
        assert_eq!(got[1].1, Decision::Session(SessionId(3)));
        assert_eq!(got[1].3, from_a);
        for g in &got {
            // The test's tsc_hz is a guess, so only the order of magnitude is checked.
            assert!(g.4 >= before && g.4 < after + Duration::from_secs(3600));
        }
        assert_eq!(
            ctl.stats(),
            CaptureStats {
                captured: 2,
                dropped: 0
            }
        );
        ctl.stop().unwrap();
        tap.refresh();
        assert!(!tap.is_on());
    }

    #[test]
    fn session_filter_sees_frames_from_and_to_the_session_and_floods() {
        let (mut tap, mut ctl) = channel(2_000_000_000);
        let s = SessionId(1);
        ctl.start(CaptureFilter::Session(s), 256).unwrap();
        tap.refresh();
        let f = frame(A, B, 80, 1);
        let flood = Decision::Flood(Flood {
            sessions: SessionMask::only(s),
            kernel: true,
            nic: false,
        });
        tap.offer(Source::Session(s), &Decision::Kernel, &f, 80);
        tap.offer(Source::Kernel, &Decision::Session(s), &f, 80);
        tap.offer(Source::Nic, &flood, &f, 80);
        tap.offer(Source::Kernel, &Decision::Session(SessionId(2)), &f, 80);
        tap.offer(Source::Session(SessionId(2)), &Decision::Kernel, &f, 80);
        tap.offer(
            Source::Session(s),
            &Decision::Drop(DropReason::Spoofed),
            &f,
            80,
        );
        let got = drain(&mut ctl);
        let paths: Vec<_> = got.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(
            paths,
            [
                (Source::Session(s), Decision::Kernel),
                (Source::Kernel, Decision::Session(s)),
                (Source::Nic, flood),
                (Source::Session(s), Decision::Drop(DropReason::Spoofed)),
            ]
        );
    }

    #[test]
    fn snaplen_cuts_and_keeps_the_original_length() {
        let (mut tap, mut ctl) = channel(1_000_000_000);
        ctl.start(CaptureFilter::Mac(A), 64).unwrap();
        tap.refresh();
        let big = frame(A, B, 1514, 7);
        let small = frame(A, B, 20, 8);
        tap.offer(Source::Nic, &Decision::Kernel, &big, 9000);
        tap.offer(Source::Nic, &Decision::Kernel, &small, 20);
        let got = drain(&mut ctl);
        assert_eq!(got[0].2, 9000);
        assert_eq!(got[0].3, big[..64]);
        assert_eq!(got[1].2, 20);
        assert_eq!(got[1].3, small);
        assert_eq!(
            ctl.start(CaptureFilter::Mac(A), 10),
            Err(CaptureError::Snaplen(10))
        );
        assert_eq!(
            ctl.start(CaptureFilter::Mac(A), MAX_SNAPLEN + 1),
            Err(CaptureError::Snaplen(MAX_SNAPLEN + 1))
        );
    }

    #[test]
    fn a_full_ring_counts_drops_and_recovers_once_drained() {
        let (mut tap, mut ctl) = channel(1_000_000_000);
        ctl.start(CaptureFilter::Mac(A), 2048).unwrap();
        tap.refresh();
        let f = frame(A, B, 2048, 3);
        let fits = RING_BYTES / (HDR + 2048);
        for _ in 0..fits + 10 {
            tap.offer(Source::Nic, &Decision::Kernel, &f, f.len());
        }
        assert_eq!(
            ctl.stats(),
            CaptureStats {
                captured: fits as u64,
                dropped: 10
            }
        );
        assert_eq!(drain(&mut ctl).len(), fits);
        tap.offer(Source::Nic, &Decision::Kernel, &f, f.len());
        assert_eq!(drain(&mut ctl).len(), 1);
    }

    #[test]
    fn records_of_an_earlier_capture_are_not_reported_by_the_next() {
        let (mut tap, mut ctl) = channel(1_000_000_000);
        ctl.start(CaptureFilter::Mac(A), 128).unwrap();
        tap.refresh();
        let f = frame(A, B, 60, 1);
        tap.offer(Source::Nic, &Decision::Kernel, &f, 60);
        // A new capture starts before the worker saw it: the worker still records under
        // the first filter until its next refresh.
        ctl.start(CaptureFilter::Mac(B), 128).unwrap();
        tap.offer(Source::Nic, &Decision::Kernel, &f, 60);
        assert_eq!(drain(&mut ctl).len(), 0, "old generation skipped");
        tap.refresh();
        tap.offer(Source::Nic, &Decision::Kernel, &f, 60);
        assert_eq!(drain(&mut ctl).len(), 1);
        assert_eq!(ctl.stats().captured, 1);
    }

    #[test]
    fn a_stalled_or_ended_worker_is_an_error_not_a_hang() {
        let (tap, mut ctl) = channel(1_000_000_000);
        for _ in 0..COMMAND_DEPTH {
            ctl.stop().unwrap();
        }
        assert_eq!(ctl.stop(), Err(CaptureError::Stalled));
        assert!(!ctl.worker_gone());
        drop(tap);
        assert!(ctl.worker_gone());
        assert_eq!(
            ctl.start(CaptureFilter::Mac(A), 128),
            Err(CaptureError::WorkerGone)
        );
    }
}
