//! The small Copy types of the steering decision.

use crate::counters::DropReason;

/// An L2 network (broadcast domain). The NIC's untagged traffic and each VLAN id map to one
/// through the table. Ids are dense small integers below [`MAX_DOMAINS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainId(pub u16);

/// Domain ids must be below this (the per-domain array is indexed by id). 0xffff is also
/// reserved inside the table as "no domain".
pub const MAX_DOMAINS: usize = 4096;

/// A fabric session to a peer. Ids are dense small integers below [`MAX_SESSIONS`] so that
/// a set of sessions fits in a [`SessionMask`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u16);

impl core::fmt::Display for SessionId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "session {}", self.0)
    }
}

/// Session ids must be below this. 64 peers per node keeps [`Decision`] at 16 bytes; widen
/// [`SessionMask`] to `[u64; 4]` if a group ever needs more.
pub const MAX_SESSIONS: usize = 64;

/// A set of sessions, one bit per [`SessionId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SessionMask(pub u64);

impl SessionMask {
    /// No session.
    pub const EMPTY: SessionMask = SessionMask(0);

    /// The set holding only `s` (empty if `s` is out of range).
    #[inline(always)]
    pub const fn only(s: SessionId) -> SessionMask {
        SessionMask(bit(s))
    }

    /// True when `s` is in the set.
    #[inline(always)]
    pub const fn contains(self, s: SessionId) -> bool {
        self.0 & bit(s) != 0
    }

    /// Adds `s` (ignored if out of range).
    #[inline(always)]
    pub fn insert(&mut self, s: SessionId) {
        self.0 |= bit(s);
    }

    /// Removes `s`.
    #[inline(always)]
    pub fn remove(&mut self, s: SessionId) {
        self.0 &= !bit(s);
    }

    /// True when no session is in the set.
    #[inline(always)]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of sessions in the set.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// The sessions in the set, lowest id first.
    pub fn iter(self) -> impl Iterator<Item = SessionId> {
        let mut m = self.0;
        core::iter::from_fn(move || {
            if m == 0 {
                return None;
            }
            let i = m.trailing_zeros();
            m &= m - 1;
            // i < 64: the cast cannot truncate.
            Some(SessionId(i as u16))
        })
    }
}

#[inline(always)]
const fn bit(s: SessionId) -> u64 {
    if (s.0 as usize) < MAX_SESSIONS {
        1u64 << s.0
    } else {
        0
    }
}

/// What the table says about a (domain, MAC): where frames to that MAC go. A MAC the table
/// does not name answers [`Action::Nic`]: it lives out on the LAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// One of this node's own MACs: deliver to the local kernel.
    Kernel,
    /// A MAC proxied for a peer: send over that peer's session. Also registers the MAC as a
    /// legitimate source for frames arriving from that session (anti-spoofing).
    Session(SessionId),
    /// On the LAN side (also the answer for an unknown MAC).
    Nic,
    /// Blackholed: frames to this MAC are dropped and counted as
    /// [`DropReason::Filtered`].
    Drop,
}

/// Where frames from the local kernel (and unknown unicast from client sessions) leave a
/// domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Uplink {
    /// The local NIC: the normal state.
    Nic,
    /// This node is failed over to the proxy behind this session; also used for a domain the
    /// node has no NIC on and reaches only through the peer cabled to it.
    Session(SessionId),
    /// No path: such frames are dropped and counted as [`DropReason::NoPath`].
    #[default]
    None,
}

/// Where a frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Received on the local NIC.
    Nic,
    /// Sent by the local kernel (exception path).
    Kernel,
    /// Received over a fabric session.
    Session(SessionId),
}

/// The destinations of a broadcast/multicast frame. Never includes where the frame came
/// from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flood {
    /// Sessions to copy the frame to.
    pub sessions: SessionMask,
    /// Copy to the local kernel.
    pub kernel: bool,
    /// Copy to the local NIC.
    pub nic: bool,
}

impl Flood {
    /// Number of copies this flood makes.
    pub const fn copies(&self) -> u32 {
        self.sessions.len() + self.kernel as u32 + self.nic as u32
    }
}

/// The steering verdict for one frame: small and `Copy` (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Deliver to the local kernel.
    Kernel,
    /// Send out of the local NIC.
    Nic,
    /// Send over this session.
    Session(SessionId),
    /// Copy to several destinations (never empty: an empty flood is a drop).
    Flood(Flood),
    /// Drop and count.
    Drop(DropReason),
}

const _: () = assert!(core::mem::size_of::<Decision>() <= 16);
const _: () = assert!(core::mem::size_of::<Action>() == 4);
