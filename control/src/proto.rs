//! The session protocol between nicproxy nodes, version 1.
//!
//! Every fabric message (a UDP datagram, or one RC send) starts with the same two bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | magic `0x4E` (`'N'`) |
//! | 1 | 1 | version (high nibble, 1) and type (low nibble) |
//!
//! Types: 0 Data, 1 Hello, 2 Accept, 3 Heartbeat, 4 ProxyRequest, 5 ProxyAck,
//! 6 ProxyRelease, 7 LinkState. Others are rejected as unknown.
//!
//! # Data (type 0): a tunnelled Ethernet frame
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic, version/type as above |
//! | 2 | 1 | flags: none defined in v1; receivers ignore them |
//! | 3 | 1 | reserved, sent as 0, ignored |
//! | 4 | n ≥ 14 | the Ethernet frame, from its destination MAC |
//!
//! Data frames carry no MAC tag. Per-frame HMAC would cost the hot path (a SHA-256 per
//! frame is several hundred ns, far above the whole forwarding budget), and it would add
//! nothing the session does not already bind: on verbs a frame can only arrive on the RC
//! queue pair that was connected to a configured peer, on UDP it is accepted only from a
//! configured peer's address. Against a node that forges frames, the proxy's dataplane
//! accepts a session's frames only with source MACs installed for that session
//! (anti-spoofing), and the session's liveness is judged only from authenticated
//! heartbeats, never from data traffic (bonding's `arp_validate` lesson: other traffic must
//! not make a dead path look healthy).
//!
//! # Control messages (types 1..=7)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic, version/type |
//! | 2 | 2 | body length B, big endian |
//! | 4 | 8 | sequence number, per session and direction, from 1 |
//! | 12 | 8 | sender's session nonce (never 0) |
//! | 20 | 8 | receiver's session nonce (0 in Hello) |
//! | 28 | 1 | sender id length S, 1..=63 |
//! | 29 | S | sender node id |
//! | 29+S | 1 | receiver id length R, 1..=63 |
//! | 30+S | R | receiver node id |
//! | 30+S+R | B | body (below) |
//! | 30+S+R+B | 16 | tag: HMAC-SHA256 under the group key over every byte before it, truncated to its first 16 bytes |
//!
//! Multi-byte integers are big endian. A 128-bit tag leaves a forger a 2^-128 chance per
//! attempt, ample for an online attack, and saves 16 bytes per heartbeat.
//!
//! Bodies:
//!
//! | type | body |
//! |---|---|
//! | Hello, Accept | max version u8, capabilities u32, link flags u8, group (u8 length + bytes), MAC count u8 (≤ 32), MACs 6 bytes each |
//! | Heartbeat | seq u64, tx time ns u64, echoed seq u64, echoed tx time ns u64, echo held ns u64, link flags u8 |
//! | ProxyRequest | request id u32, MAC count u8 (1..=32), MACs, domain count u8 (1..=32), domain ids u16 each |
//! | ProxyAck | request id u32, status u8 |
//! | ProxyRelease | request id u32 |
//! | LinkState | link flags u8 |
//!
//! Link flags: bit 0 the sender's NIC link is up, bit 1 its upstream probe passes (or none
//! is configured). Other bits are ignored.
//!
//! ## Authentication and replay protection
//!
//! The tag covers the node ids of both ends, so a message meant for another peer fails
//! ([`ProtoError::WrongRecipient`]) and only configured peers are accepted
//! ([`ProtoError::UnknownPeer`]). Each session is named by a pair of random 64-bit nonces,
//! one chosen by each end: Hello carries the initiator's, Accept the responder's and echoes
//! the initiator's, and every later message carries both. A message from an earlier session
//! therefore never matches the current one ([`ProtoError::StaleSession`]), which is why
//! sequence numbers can restart at 1 in each session; and since each end picks a fresh nonce
//! per handshake, a recorded session cannot be replayed even after a restart. Within a
//! session, a 64-message sliding window (as in IPsec) rejects duplicates and messages older
//! than the window ([`ProtoError::Replay`]) while tolerating UDP's reordering. A replayed
//! Hello can at worst make the responder start a new session, which breaks the current one:
//! a denial of service that anyone on the path can achieve by dropping packets anyway.
//!
//! Heartbeats carry their own sequence and the sender's clock, and echo the last heartbeat
//! received with the time it was held, so each end measures the round trip on its own clock
//! without synchronised clocks (see [`Heartbeat::rtt_ns`]).
//!
//! # Totality
//!
//! Every parser here returns a message or a typed [`ProtoError`] for every byte string,
//! never panics and never reads out of bounds; the tests feed random and mutated input.

mod auth;
mod data;
mod error;
mod message;
mod peers;
mod reader;
mod replay;

pub use auth::{SessionAuth, SessionState};
pub use data::{encode_data_header, parse_data, DATA_HEADER_LEN};
pub use error::{ProtoError, RejectCounters};
pub use message::{
    AckStatus, Capabilities, Heartbeat, Hello, LinkFlags, Message, ProxyAck, ProxyRelease,
    ProxyRequest,
};
pub use peers::PeerTable;
pub use replay::{ReplayWindow, REPLAY_WINDOW};

/// First byte of every message.
pub const MAGIC: u8 = 0x4E;
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Bytes of the truncated HMAC-SHA256 tag.
pub const TAG_LEN: usize = 16;
/// Longest node or group id on the wire.
pub const MAX_ID_LEN: usize = 63;
/// Most MACs in one Hello, Accept or ProxyRequest.
pub const MAX_MACS: usize = 32;
/// Most domains in one ProxyRequest.
pub const MAX_DOMAINS: usize = 32;
/// Every control message fits in this many bytes (the largest, a Hello with 32 MACs and
/// 63-byte ids and group, takes 435), so receive buffers of this size never truncate one.
pub const MAX_CONTROL_LEN: usize = 512;

/// Message types (the low nibble of byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// A tunnelled Ethernet frame.
    Data = 0,
    /// Session open request.
    Hello = 1,
    /// Session open answer.
    Accept = 2,
    /// Liveness and RTT.
    Heartbeat = 3,
    /// Install my MACs and send them out of your NIC.
    ProxyRequest = 4,
    /// Answer to a ProxyRequest.
    ProxyAck = 5,
    /// Stop carrying my MACs.
    ProxyRelease = 6,
    /// My NIC or upstream changed.
    LinkState = 7,
}

impl MsgType {
    /// Decodes a type nibble.
    pub fn from_nibble(n: u8) -> Option<MsgType> {
        Some(match n {
            0 => MsgType::Data,
            1 => MsgType::Hello,
            2 => MsgType::Accept,
            3 => MsgType::Heartbeat,
            4 => MsgType::ProxyRequest,
            5 => MsgType::ProxyAck,
            6 => MsgType::ProxyRelease,
            7 => MsgType::LinkState,
            _ => return None,
        })
    }
}

/// Reads the type of a message from its first two bytes, checking magic and version: the
/// dataplane's first question (frame or control message?) costs two byte loads.
pub fn classify(bytes: &[u8]) -> Result<MsgType, ProtoError> {
    let (&magic, &vt) = match bytes {
        [m, v, ..] => (m, v),
        _ => return Err(ProtoError::Truncated),
    };
    if magic != MAGIC {
        return Err(ProtoError::Malformed { field: "magic" });
    }
    let version = vt >> 4;
    if version != VERSION {
        return Err(ProtoError::UnknownVersion(version));
    }
    MsgType::from_nibble(vt & 0x0f).ok_or(ProtoError::UnknownType(vt & 0x0f))
}

/// The second byte for a message of this type.
pub(crate) fn version_type(t: MsgType) -> u8 {
    VERSION << 4 | t as u8
}

#[cfg(test)]
mod tests;
