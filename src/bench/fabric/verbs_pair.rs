//! One end of a verbs fabric session driven the way a worker drives it, for the guest-side
//! benchmark and tests: `dataplane::fabric::verbs` behind `FabricIo::Verbs` (the packet
//! pool registered, receives posted as whole mbufs, sends gathered from mbufs or inline,
//! selective signalling), connected with rdma_cm by the project's `SessionPreparer`.
//!
//! [`Flow`] is a checked, windowed exchange over it: every frame carries its sequence
//! number and the sender's count of frames received in order (the credit the peer may
//! use), and its body is a pattern derived from the sequence number, so every byte is
//! checked on arrival. The window keeps the frames in flight well below the send queue,
//! so a correct fabric never drops one; any counted drop fails the run.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::counters::{DropReason, DropTally};
use dataplane::dpdk::{Burst, Eal, Mbuf, Mempool, BURST_SIZE};
use dataplane::fabric::verbs::{
    new_fabric, NewSession, SessionPreparer, VerbsControl, VerbsCounters, VerbsParams,
};
use dataplane::fabric::SessionId;
use dataplane::verbs::{Connection, Context, Listener, VerbsError};
use dataplane::worker::FabricIo;

use super::{mix, Sizes};

/// The one session of a pair.
pub const SESSION: SessionId = SessionId(0);
/// Frame bytes before the pattern: Ethernet header, sequence, ack, 2 reserved.
pub const HDR: usize = 32;
const ETHERTYPE: [u8; 2] = [0x88, 0xB5];
const ACK_ONLY: u64 = u64::MAX;
const OFFSETS: usize = 4096;

/// One end: the worker's fabric, control's end of it, and the connection maker.
pub struct Endpoint {
    pub fabric: FabricIo,
    pub control: VerbsControl,
    pub preparer: SessionPreparer,
    pub pool: Mempool,
    pub tally: DropTally,
    rx: Burst,
    sessions: [SessionId; BURST_SIZE],
    /// Frames of the last poll taken so far (their sessions are at the same index).
    taken: usize,
}

impl Endpoint {
    /// Opens the RDMA device of `ip` and builds a one-session verbs fabric over a new
    /// packet pool of `mbufs` mbufs.
    pub fn new(eal: &Eal, ip: IpAddr, pool_name: &str, mbufs: u32) -> Result<Self, String> {
        let ctx = Context::open_by_addr(ip).map_err(|e| e.to_string())?;
        let pool =
            Mempool::new(eal, pool_name, mbufs, 64, 2048 + 128).map_err(|e| e.to_string())?;
        let parts = new_fabric(
            &ctx,
            &pool,
            VerbsParams {
                sessions: 1,
                ..VerbsParams::default()
            },
        )
        .map_err(|e| format!("setting up the verbs fabric on {}: {e}", ctx.name()))?;
        Ok(Self {
            fabric: FabricIo::Verbs(parts.io),
            control: parts.control,
            preparer: parts.preparer,
            pool,
            tally: DropTally::default(),
            rx: Burst::new(),
            sessions: [SessionId(0); BURST_SIZE],
            taken: 0,
        })
    }

    /// The worker-side counters of the verbs fabric.
    pub fn counters(&self) -> VerbsCounters {
        match &self.fabric {
            FabricIo::Verbs(v) => *v.counters(),
            _ => VerbsCounters::default(),
        }
    }

    /// Connects to `target` from `local` with a freshly posted receive ring; `id` travels
    /// as private data (the daemon's node id).
    pub fn connect(
        &self,
        local: IpAddr,
        target: SocketAddr,
        id: &str,
        timeout: Duration,
    ) -> Result<Box<NewSession>, VerbsError> {
        connect(&self.preparer, local, target, id, timeout)
    }

    /// Accepts one connection on `listener`, refusing (rdma_reject) any that does not
    /// claim to be `expect`.
    pub fn accept(
        &self,
        listener: &Listener,
        expect: &str,
        timeout: Duration,
    ) -> Result<Box<NewSession>, VerbsError> {
        let mut prep = self.preparer.prepare();
        let conn = listener.accept_vetted(
            self.preparer.setup(),
            b"bench-a",
            timeout,
            |from, claimed| {
                if claimed == expect.as_bytes() {
                    Ok(())
                } else {
                    Err(format!(
                        "node {:?} at {} is not the expected peer {expect:?}",
                        String::from_utf8_lossy(claimed),
                        from.ip()
                    ))
                }
            },
            |qp| prep.post(qp),
        )?;
        Ok(Box::new(prep.finish(conn)))
    }

    /// Hands a connected session to the worker side (applied at the next receive poll).
    pub fn add(&mut self, new: Box<NewSession>) -> Result<(Arc<Connection>, u32), String> {
        let conn = Arc::clone(new.connection());
        let gen = new.generation();
        self.control
            .add(SESSION, new)
            .map_err(|e| format!("handing the session to the worker: {e:?}"))?;
        Ok((conn, gen))
    }

    /// One receive poll (commands included); take the frames with [`Endpoint::next_frame`]
    /// before the next poll.
    #[inline]
    pub fn poll(&mut self) -> usize {
        // Frames not taken are freed: the burst starts empty, so frame i has sessions[i].
        self.rx.free_all();
        self.taken = 0;
        self.fabric
            .rx_burst(&mut self.rx, &mut self.sessions, &mut self.tally)
    }

    /// Takes the next frame of the last poll.
    #[inline]
    pub fn next_frame(&mut self) -> Option<(SessionId, Mbuf)> {
        let m = self.rx.pop_front()?;
        let s = self.sessions[self.taken.min(BURST_SIZE - 1)];
        self.taken += 1;
        Some((s, m))
    }

    /// Queues `m` to the session and posts when the queue is full.
    #[inline]
    pub fn send(&mut self, m: Mbuf) {
        self.fabric.tx(SESSION, m, &mut self.tally);
    }

    /// Posts what is queued.
    #[inline]
    pub fn flush(&mut self) {
        self.fabric.flush(&mut self.tally);
    }

    /// Drops counted so far, by reason (empty when none).
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), u64::from(self.tally.0[r.index()])))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// [`Endpoint::connect`] with only the connection maker (which may go to another thread).
pub fn connect(
    preparer: &SessionPreparer,
    local: IpAddr,
    target: SocketAddr,
    id: &str,
    timeout: Duration,
) -> Result<Box<NewSession>, VerbsError> {
    let mut prep = preparer.prepare();
    let conn = Connection::connect_with(
        preparer.setup(),
        Some(local),
        target,
        id.as_bytes(),
        timeout,
        |qp| prep.post(qp),
    )?;
    Ok(Box::new(prep.finish(conn)))
}

/// Spins a little, then yields, then sleeps: idle polling that leaves CPU to others.
pub fn backoff(idle: u32) {
    match idle {
        0..=32 => std::hint::spin_loop(),
        33..=256 => std::thread::yield_now(),
        _ => std::thread::sleep(Duration::from_micros(50)),
    }
}

/// The shared pattern frames' bodies are cut from.
pub fn pattern() -> Vec<u8> {
    (0..(OFFSETS + Sizes::MAX) as u64)
        .map(|i| mix(i ^ 0x5eed) as u8)
        .collect()
}

fn body_offset(seq: u64, tag: u8) -> usize {
    (mix(seq ^ (u64::from(tag) << 56)) % OFFSETS as u64) as usize
}

/// Writes frame `seq` (or an ack-only frame) of `len` bytes into a new mbuf.
pub fn build(pool: &Mempool, seq: u64, ack: u64, len: usize, tag: u8, pat: &[u8]) -> Option<Mbuf> {
    let mut m = Mbuf::alloc(pool)?;
    let buf = m.append(u16::try_from(len).ok()?)?;
    buf[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, tag ^ 1]);
    buf[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, tag]);
    buf[12..14].copy_from_slice(&ETHERTYPE);
    buf[14..22].copy_from_slice(&seq.to_le_bytes());
    buf[22..30].copy_from_slice(&ack.to_le_bytes());
    buf[30..32].copy_from_slice(&[tag, 0]);
    if seq == ACK_ONLY {
        buf[HDR..].fill(0);
    } else {
        let off = body_offset(seq, tag);
        buf[HDR..].copy_from_slice(&pat[off..off + len - HDR]);
    }
    Some(m)
}

/// (seq, ack) of a frame, after checking its header and, for data, every body byte
/// against what frame `seq` of `sizes` from `tag` must hold.
pub fn check(f: &[u8], sizes: Sizes, tag: u8, pat: &[u8]) -> Result<(u64, u64), String> {
    if f.len() < HDR || f[12..14] != ETHERTYPE || f[30] != tag {
        return Err(format!(
            "a frame of {} B with a bad header: {:02x?}",
            f.len(),
            &f[..f.len().min(HDR)]
        ));
    }
    let seq = u64::from_le_bytes(f[14..22].try_into().map_err(|_| "short")?);
    let ack = u64::from_le_bytes(f[22..30].try_into().map_err(|_| "short")?);
    if seq != ACK_ONLY {
        let want = sizes.len(seq);
        if f.len() != want {
            return Err(format!("frame {seq}: {} B, expected {want}", f.len()));
        }
        let off = body_offset(seq, tag);
        if f[HDR..] != pat[off..off + want - HDR] {
            let at = f[HDR..]
                .iter()
                .zip(&pat[off..])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!("frame {seq}: payload differs at byte {}", HDR + at));
        }
    }
    Ok((seq, ack))
}

/// One direction pair of a checked, windowed exchange.
pub struct Flow {
    pub sizes: Sizes,
    /// Frames to send (`u64::MAX`: until stopped).
    pub send_total: u64,
    pub window: u64,
    pub tag_out: u8,
    pub tag_in: u8,
    pub next_seq: u64,
    pub peer_ack: u64,
    /// Frames received, all in order (RC keeps order: anything else is an error).
    pub received: u64,
    pub ack_sent: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pat: Vec<u8>,
}

impl Flow {
    pub fn new(sizes: Sizes, send_total: u64, window: u64, tag_out: u8, tag_in: u8) -> Self {
        Self {
            sizes,
            send_total,
            window,
            tag_out,
            tag_in,
            next_seq: 0,
            peer_ack: 0,
            received: 0,
            ack_sent: 0,
            bytes_in: 0,
            bytes_out: 0,
            pat: pattern(),
        }
    }

    /// One worker iteration: receive and check, send what the window allows, acknowledge.
    /// Returns whether anything moved.
    pub fn step(&mut self, ep: &mut Endpoint) -> Result<bool, String> {
        let mut progress = ep.poll() > 0;
        while let Some((s, m)) = ep.next_frame() {
            if s != SESSION {
                return Err(format!("a frame from session {s:?}"));
            }
            let (seq, ack) = check(m.data(), self.sizes, self.tag_in, &self.pat)?;
            if ack > self.next_seq {
                return Err(format!(
                    "the peer acknowledged {ack} of {} sent",
                    self.next_seq
                ));
            }
            self.peer_ack = self.peer_ack.max(ack);
            if seq != ACK_ONLY {
                if seq != self.received {
                    return Err(format!(
                        "frame {seq} arrived where {} was due (lost or reordered)",
                        self.received
                    ));
                }
                self.received += 1;
                self.bytes_in += m.len() as u64;
            }
        }
        let mut burst = 0;
        while burst < BURST_SIZE
            && self.next_seq < self.send_total
            && self.next_seq < self.peer_ack + self.window
        {
            let len = self.sizes.len(self.next_seq);
            let Some(m) = build(
                &ep.pool,
                self.next_seq,
                self.received,
                len,
                self.tag_out,
                &self.pat,
            ) else {
                break;
            };
            ep.send(m);
            self.next_seq += 1;
            self.bytes_out += len as u64;
            self.ack_sent = self.received;
            burst += 1;
            progress = true;
        }
        // Without data to carry it, the credit goes in an ack-only frame, or a peer whose
        // window is full would wait for us forever.
        if self.received >= self.ack_sent + (self.window / 4).max(1)
            || (burst == 0 && self.received > self.ack_sent)
        {
            if let Some(m) = build(
                &ep.pool,
                ACK_ONLY,
                self.received,
                Sizes::MIN,
                self.tag_out,
                &self.pat,
            ) {
                ep.send(m);
                self.ack_sent = self.received;
                progress = true;
            }
        }
        ep.flush();
        if ep.tally.total() > 0 {
            return Err(format!("the fabric dropped frames: {:?}", ep.drops()));
        }
        Ok(progress)
    }

    /// True once everything was sent and acknowledged and `expect` frames arrived.
    pub fn done(&self, expect: u64) -> bool {
        self.peer_ack >= self.send_total
            && self.received >= expect
            && self.ack_sent >= self.received
    }

    /// Steps until [`Flow::done`] or the deadline. Backs off when idle, as the workers'
    /// adaptive polling does: in a guest with two emulated CPUs, two busy-polling threads
    /// would starve the kernel's rxe processing that moves their frames.
    pub fn run(
        &mut self,
        ep: &mut Endpoint,
        expect: u64,
        deadline: Instant,
    ) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut idle = 0u32;
        while !self.done(expect) {
            if Instant::now() > deadline {
                return Err(format!(
                    "no finish before the deadline: sent {}, peer acked {}, received {} of {expect}; drops {:?}; counters {:?}",
                    self.next_seq, self.peer_ack, self.received, ep.drops(), ep.counters()
                ));
            }
            if self.step(ep)? {
                idle = 0;
            } else {
                idle += 1;
                backoff(idle);
            }
        }
        Ok(t0.elapsed())
    }
}
