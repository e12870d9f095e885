//! The transmit queue both fabric backends collect a burst in: mbufs, each tagged with the
//! session it goes to, sent as one batch when the queue is full or the worker drains.

use crate::dpdk::{Burst, Mbuf, BURST_SIZE};
use crate::steer::SessionId;

/// Up to a burst of frames waiting to go out, each with its session.
#[derive(Debug, Default)]
pub struct SessionTxQueue {
    frames: Burst,
    sessions: [SessionId; BURST_SIZE],
}

impl SessionTxQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True if nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// True if one more frame does not fit: send the queue first.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.frames.is_full()
    }

    /// Queues `m` for `session`; gives it back if the queue is full.
    #[inline]
    pub fn push(&mut self, session: SessionId, m: Mbuf) -> Result<(), Mbuf> {
        let at = self.frames.len();
        self.frames.push(m)?;
        self.sessions[at] = session;
        Ok(())
    }

    /// The queued frames, in order.
    #[inline]
    pub fn frames(&self) -> &[Mbuf] {
        self.frames.as_slice()
    }

    /// The session of each queued frame, at the same index as [`SessionTxQueue::frames`].
    #[inline]
    pub fn sessions(&self) -> &[SessionId] {
        &self.sessions[..self.frames.len()]
    }

    /// Takes every queued frame out, in order (their sessions stay readable through
    /// [`SessionTxQueue::session_at`] until the next push).
    #[inline]
    pub fn drain(&mut self) -> impl Iterator<Item = Mbuf> + '_ {
        self.frames.drain()
    }

    /// The session of the frame that was at index `i` (also after a drain).
    #[inline]
    pub fn session_at(&self, i: usize) -> SessionId {
        self.sessions[i]
    }

    /// Frees every queued frame (a backend that copied them out, like the kernel's UDP).
    #[inline]
    pub fn free_all(&mut self) -> usize {
        self.frames.free_all()
    }
}
