//! Hands frames bound for a fabric session from the workers that do not own the fabric to
//! the one that does.
//!
//! The fabric (a UDP socket, or verbs queue pairs sharing one completion queue) is driven by
//! one worker, worker 0: its receive side is one source, and its send queues, like DPDK's,
//! are single-threaded. The other workers forward between their own NIC and kernel queues
//! and pass what they steer to a session to worker 0 through a single-producer,
//! single-consumer ring each (`rtrb`: a fixed array, one acquire load and one release store
//! per frame, no lock, no allocation). Worker 0 drains the rings every loop iteration and
//! sends the frames with its own. A full ring is a counted drop
//! ([`crate::counters::DropReason::FabricBackpressure`]), never a wait.
//!
//! Frames in a ring when the workers stop are freed with the ring.

use crate::dpdk::Mbuf;
use crate::steer::SessionId;

/// A frame on its way to the fabric owner, with the session it goes to.
#[derive(Debug)]
pub struct Relayed {
    /// The session to send it on.
    pub session: SessionId,
    /// The frame.
    pub mbuf: Mbuf,
}

/// A worker's part in relaying session frames.
#[derive(Debug, Default)]
pub enum Relay {
    /// The only worker (or a worker whose fabric needs no relay): sends its session frames
    /// itself.
    #[default]
    Alone,
    /// The fabric's owner: sends its own session frames and those the other workers pass
    /// through these rings.
    Owner(Vec<rtrb::Consumer<Relayed>>),
    /// A worker without the fabric: passes its session frames to the owner.
    Sender(rtrb::Producer<Relayed>),
}

/// Ring depth per sending worker: a few bursts, enough for the owner to fall a few loop
/// iterations behind without loss.
pub const RELAY_DEPTH: usize = 1024;

/// The relays of `workers` workers: index 0 is the fabric's owner, the rest send to it.
/// One worker gets [`Relay::Alone`].
pub fn relays(workers: usize) -> Vec<Relay> {
    if workers <= 1 {
        return vec![Relay::Alone];
    }
    let (producers, consumers): (Vec<_>, Vec<_>) = (1..workers)
        .map(|_| rtrb::RingBuffer::new(RELAY_DEPTH))
        .unzip();
    std::iter::once(Relay::Owner(consumers))
        .chain(producers.into_iter().map(Relay::Sender))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_and_a_sender_per_other_worker() {
        assert!(matches!(relays(1).as_slice(), [Relay::Alone]));
        let r = relays(3);
        assert_eq!(r.len(), 3);
        match &r[0] {
            Relay::Owner(c) => assert_eq!(c.len(), 2),
            other => panic!("worker 0 is {other:?}"),
        }
        assert!(r[1..].iter().all(|x| matches!(x, Relay::Sender(_))));
    }
}
