//! Why a fabric message was rejected, and counters of rejects by reason.

/// Why a fabric message could not be decoded or was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Shorter than its header or than the lengths it declares.
    #[error("decoding a session message: truncated")]
    Truncated,
    /// A version this code does not speak.
    #[error("decoding a session message: unknown protocol version {0}")]
    UnknownVersion(u8),
    /// A type nibble with no meaning in this version.
    #[error("decoding a session message: unknown message type {0}")]
    UnknownType(u8),
    /// The HMAC tag does not match: wrong key, or altered in transit.
    #[error("authenticating a control message: tag mismatch (wrong group key or altered message)")]
    BadMac,
    /// A sequence number already seen or older than the replay window.
    #[error("authenticating a control message: replayed or too old (sequence {seq})")]
    Replay {
        /// The rejected sequence number.
        seq: u64,
    },
    /// The sender is not a configured peer.
    #[error("authenticating a control message: sender is not a configured peer")]
    UnknownPeer,
    /// The message names another node as its receiver.
    #[error("authenticating a control message: addressed to another node")]
    WrongRecipient,
    /// A session message arrived, or was to be sent, with no session established.
    #[error("session message without an established session")]
    NoSession,
    /// The message belongs to another session (nonces do not match the current one).
    #[error("authenticating a control message: belongs to another session")]
    StaleSession,
    /// A field holds a value the protocol does not allow.
    #[error("decoding a session message: malformed {field}")]
    Malformed {
        /// The offending field.
        field: &'static str,
    },
    /// The caller's buffer cannot hold what was to be written.
    #[error("encoding a session message: buffer of {have} bytes, {need} needed")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// An API used out of order (e.g. Hello through `seal`).
    #[error("session protocol misuse: {0}")]
    Misuse(&'static str),
}

/// Rejected messages by reason. Plain integers: one owner (the control thread) updates them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectCounters {
    /// [`ProtoError::Truncated`]
    pub truncated: u64,
    /// [`ProtoError::UnknownVersion`]
    pub unknown_version: u64,
    /// [`ProtoError::UnknownType`]
    pub unknown_type: u64,
    /// [`ProtoError::BadMac`]
    pub bad_mac: u64,
    /// [`ProtoError::Replay`]
    pub replay: u64,
    /// [`ProtoError::UnknownPeer`]
    pub unknown_peer: u64,
    /// [`ProtoError::WrongRecipient`]
    pub wrong_recipient: u64,
    /// [`ProtoError::NoSession`]
    pub no_session: u64,
    /// [`ProtoError::StaleSession`]
    pub stale_session: u64,
    /// [`ProtoError::Malformed`]
    pub malformed: u64,
}

impl RejectCounters {
    /// Counts one reject.
    pub fn record(&mut self, err: &ProtoError) {
        let slot = match err {
            ProtoError::Truncated => &mut self.truncated,
            ProtoError::UnknownVersion(_) => &mut self.unknown_version,
            ProtoError::UnknownType(_) => &mut self.unknown_type,
            ProtoError::BadMac => &mut self.bad_mac,
            ProtoError::Replay { .. } => &mut self.replay,
            ProtoError::UnknownPeer => &mut self.unknown_peer,
            ProtoError::WrongRecipient => &mut self.wrong_recipient,
            ProtoError::NoSession => &mut self.no_session,
            ProtoError::StaleSession => &mut self.stale_session,
            ProtoError::Malformed { .. } => &mut self.malformed,
            // Local errors, not rejects of received input.
            ProtoError::BufferTooSmall { .. } | ProtoError::Misuse(_) => return,
        };
        *slot += 1;
    }

    /// Adds another set of counters to this one.
    pub fn add(&mut self, o: &RejectCounters) {
        self.truncated += o.truncated;
        self.unknown_version += o.unknown_version;
        self.unknown_type += o.unknown_type;
        self.bad_mac += o.bad_mac;
        self.replay += o.replay;
        self.unknown_peer += o.unknown_peer;
        self.wrong_recipient += o.wrong_recipient;
        self.no_session += o.no_session;
        self.stale_session += o.stale_session;
        self.malformed += o.malformed;
    }

    /// All rejects.
    pub fn total(&self) -> u64 {
        self.as_pairs().iter().map(|(_, n)| n).sum()
    }

    /// (reason label, count) pairs, for metrics.
    pub fn as_pairs(&self) -> [(&'static str, u64); 10] {
        [
            ("truncated", self.truncated),
            ("unknown_version", self.unknown_version),
            ("unknown_type", self.unknown_type),
            ("bad_mac", self.bad_mac),
            ("replay", self.replay),
            ("unknown_peer", self.unknown_peer),
            ("wrong_recipient", self.wrong_recipient),
            ("no_session", self.no_session),
            ("stale_session", self.stale_session),
            ("malformed", self.malformed),
        ]
    }
}
