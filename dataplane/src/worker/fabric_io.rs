//! Moves frames between mbufs and a fabric backend, for the worker.
//!
//! Receive is zero-copy into mbufs: the backend writes each datagram straight into the data
//! room of a pre-allocated mbuf, and the data header is then stripped by moving the data
//! offset. Send gathers the 4-byte data header and the mbuf's data without copying them in
//! user space. The kernel copies for UDP; verbs ([`crate::fabric::verbs`]) sends from the
//! registered mbuf memory itself.

use crate::counters::{DropReason, DropTally};
use crate::dpdk::{Burst, Mbuf, Mempool, BURST_SIZE};
use crate::fabric::header::{is_data_header, DATA_HEADER, DATA_HEADER_LEN};
use crate::fabric::txq::SessionTxQueue;
use crate::fabric::udp::{RecvMeta, TxFrame, UdpFabric};
use crate::steer::SessionId;

/// A fabric backend as the worker drives it.
#[derive(Debug)]
pub enum FabricIo {
    /// Kernel UDP sockets (IP over IB, or hosts without RDMA).
    Udp(UdpIo),
    /// RC queue pairs sharing one completion queue, zero copy from and into mbufs.
    #[cfg(feature = "verbs")]
    Verbs(crate::fabric::verbs::VerbsIo),
    /// No fabric: nothing arrives, and a frame steered to a session is dropped as
    /// `UnknownSession`. No system call at all, so a benchmark measures the NIC/kernel
    /// forwarding loop alone (with `Udp`, every loop iteration pays one `recvmmsg`).
    None,
}

impl FabricIo {
    /// Receives up to a burst of frames into `out` (from its current length on), with the
    /// session each came from in `sessions` at the same index. Returns how many arrived.
    #[inline]
    pub fn rx_burst(
        &mut self,
        out: &mut Burst,
        sessions: &mut [SessionId; BURST_SIZE],
        tally: &mut DropTally,
    ) -> usize {
        match self {
            FabricIo::Udp(u) => u.rx_burst(out, sessions, tally),
            #[cfg(feature = "verbs")]
            FabricIo::Verbs(v) => v.rx_burst(out, sessions, tally),
            FabricIo::None => 0,
        }
    }

    /// Queues `m` for `session`; sends the queue first when it is full. Returns (frames,
    /// bytes) sent by that.
    #[inline]
    pub fn tx(&mut self, session: SessionId, m: Mbuf, tally: &mut DropTally) -> (u64, u64) {
        let mut sent = (0, 0);
        if self.tx_queue().is_some_and(|q| q.is_full()) {
            sent = self.flush(tally);
        }
        let Some(q) = self.tx_queue() else {
            drop(m);
            tally.count(DropReason::UnknownSession);
            return sent;
        };
        if let Err(m) = q.push(session, m) {
            // Only if the flush above left the queue full, which no backend does.
            drop(m);
            tally.count(DropReason::FabricBackpressure);
        }
        sent
    }

    /// The backend's transmit queue (`None` for `FabricIo::None`).
    #[inline]
    fn tx_queue(&mut self) -> Option<&mut SessionTxQueue> {
        match self {
            FabricIo::Udp(u) => Some(&mut u.tx),
            #[cfg(feature = "verbs")]
            FabricIo::Verbs(v) => Some(v.tx_queue()),
            FabricIo::None => None,
        }
    }

    /// Sends what is queued. Returns (frames, bytes) sent.
    #[inline]
    pub fn flush(&mut self, tally: &mut DropTally) -> (u64, u64) {
        match self {
            FabricIo::Udp(u) => u.flush(tally),
            #[cfg(feature = "verbs")]
            FabricIo::Verbs(v) => v.flush(tally),
            FabricIo::None => (0, 0),
        }
    }
}

/// The UDP backend with its mbuf stash and tx queue.
#[derive(Debug)]
pub struct UdpIo {
    sock: UdpFabric,
    pool: Mempool,
    /// Mbufs allocated ahead, into which the next datagrams are received.
    stash: Burst,
    tx: SessionTxQueue,
    seen_unknown: u64,
    seen_truncated: u64,
}

impl UdpIo {
    /// Drives `sock`, receiving into mbufs from `pool`.
    pub fn new(sock: UdpFabric, pool: Mempool) -> Self {
        Self {
            sock,
            pool,
            stash: Burst::new(),
            tx: SessionTxQueue::new(),
            seen_unknown: 0,
            seen_truncated: 0,
        }
    }

    /// The socket, e.g. to read its counters.
    pub fn socket(&self) -> &UdpFabric {
        &self.sock
    }

    fn rx_burst(
        &mut self,
        out: &mut Burst,
        sessions: &mut [SessionId; BURST_SIZE],
        tally: &mut DropTally,
    ) -> usize {
        let missing = BURST_SIZE - self.stash.len();
        if missing > 0 && !Mbuf::alloc_bulk(&self.pool, &mut self.stash, missing) {
            tally.count(DropReason::NoBuffer);
        }
        let slots = self.stash.len().min(BURST_SIZE - out.len());
        if slots == 0 {
            return 0;
        }
        let mut bufs: [&mut [u8]; BURST_SIZE] = Default::default();
        let mut rooms = [0u16; BURST_SIZE];
        let mut k = 0;
        for m in self.stash.iter_mut().take(slots) {
            let room = m.tailroom();
            match m.append(room) {
                Some(buf) => {
                    bufs[k] = buf;
                    rooms[k] = room;
                    k += 1;
                }
                None => break,
            }
        }
        let mut meta = [RecvMeta::default(); BURST_SIZE];
        let got = match self.sock.recv_burst(&mut bufs[..k], &mut meta[..k]) {
            Ok(n) => n,
            Err(_) => {
                tally.count(DropReason::MalformedFabric);
                0
            }
        };
        let mut delivered = 0;
        for i in 0..k {
            let Some(mut m) = self.stash.pop_front() else {
                break;
            };
            let ok = i < got
                && meta[i].session.is_some()
                && is_data_header(&m.data()[..meta[i].len.min(DATA_HEADER_LEN)]);
            if ok {
                // meta.len <= room, both u16-bounded, so the cast is lossless.
                let len = meta[i].len as u16;
                let trimmed = m
                    .trim(rooms[i] - len)
                    .and_then(|()| m.adj(DATA_HEADER_LEN as u16));
                if trimmed.is_some() && m.len() >= 14 {
                    sessions[out.len()] = meta[i].session.unwrap_or_default();
                    if out.push(m).is_ok() {
                        delivered += 1;
                    }
                    continue;
                }
                tally.count(DropReason::MalformedFabric);
                drop(m);
                continue;
            }
            if i < got && meta[i].session.is_some() {
                tally.count(DropReason::MalformedFabric);
            }
            // Give the unused room back and keep the mbuf for the next burst.
            let _ = m.trim(rooms[i]);
            if let Err(m) = self.stash.push(m) {
                drop(m);
            }
        }
        let c = self.sock.counters();
        if c.unknown_source != self.seen_unknown {
            tally.add(
                DropReason::UnknownSession,
                c.unknown_source - self.seen_unknown,
            );
            self.seen_unknown = c.unknown_source;
        }
        if c.truncated != self.seen_truncated {
            tally.add(DropReason::Oversize, c.truncated - self.seen_truncated);
            self.seen_truncated = c.truncated;
        }
        delivered
    }

    fn flush(&mut self, tally: &mut DropTally) -> (u64, u64) {
        let n = self.tx.len();
        if n == 0 {
            return (0, 0);
        }
        let queued = self.tx.frames();
        let sessions = self.tx.sessions();
        let frames: [TxFrame<'_>; BURST_SIZE] = core::array::from_fn(|i| TxFrame {
            session: sessions.get(i).copied().unwrap_or_default(),
            head: if i < n { &DATA_HEADER } else { &[] },
            body: queued.get(i).map_or(&[][..], Mbuf::data),
        });
        let before = self.sock.counters().sent;
        let done = self.sock.send_burst_gather(&frames[..n]);
        let sent = self.sock.counters().sent - before;
        let bytes: u64 = queued[..n.min(sent as usize)]
            .iter()
            .map(|m| m.len() as u64 + DATA_HEADER_LEN as u64)
            .sum();
        // The kernel copied what it took; what the full socket refused is a counted drop
        // (back-pressure), never a wait on the hot path.
        tally.add(DropReason::FabricBackpressure, (n - done) as u64);
        tally.add(DropReason::UnknownSession, done as u64 - sent);
        self.tx.free_all();
        (sent, bytes)
    }
}
