//! Sealing and opening control messages for one peer: the HMAC tag, the session nonces
//! and the replay window (see the `proto` module doc for the layout and the reasoning).

use std::num::NonZeroU64;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::GroupKey;

use super::message::put_short_str;
use super::reader::Reader;
use super::{
    classify, version_type, Hello, Message, MsgType, ProtoError, RejectCounters, ReplayWindow,
    MAGIC, MAX_ID_LEN, TAG_LEN,
};

type HmacSha256 = Hmac<Sha256>;

/// Where the handshake with this peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No session: nothing but Hello is accepted.
    Idle,
    /// We sent a Hello and wait for the Accept that echoes its nonce.
    HelloSent,
    /// Both nonces are known; every message type flows.
    Established,
}

#[derive(Debug, Clone, Copy)]
struct PendingHello {
    nonce: u64,
    seq: u64,
}

/// The authentication state of the session with one configured peer: its keyed MAC, our
/// transmit sequence, the session nonces and the receive replay window, and counters of
/// what was rejected.
///
/// Handshake: the initiator calls [`hello`](Self::hello) and sends the result; the
/// responder [`open`](Self::open)s it, gets [`Message::Hello`], and answers with
/// [`accept`](Self::accept); the initiator `open`s the Accept and the session is
/// established at both ends. If both ends send Hello at once, the end for which
/// [`answers_crossed_hello`](Self::answers_crossed_hello) is true answers the peer's Hello
/// (abandoning its own) and the other ignores the peer's Hello, so exactly one handshake
/// completes. After a session is declared dead, call [`reset`](Self::reset).
#[derive(Clone)]
pub struct SessionAuth {
    mac: HmacSha256,
    local_id: String,
    peer_id: String,
    state: SessionState,
    local_nonce: u64,
    peer_nonce: u64,
    tx_seq: u64,
    rx: ReplayWindow,
    pending: Option<PendingHello>,
    rejects: RejectCounters,
}

impl std::fmt::Debug for SessionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the keyed MAC state.
        f.debug_struct("SessionAuth")
            .field("local_id", &self.local_id)
            .field("peer_id", &self.peer_id)
            .field("state", &self.state)
            .field("tx_seq", &self.tx_seq)
            .field("rx", &self.rx)
            .field("rejects", &self.rejects)
            .finish_non_exhaustive()
    }
}

/// A parsed control header; all slices borrow the message.
pub(crate) struct Header<'a> {
    pub(crate) msg_type: MsgType,
    pub(crate) seq: u64,
    pub(crate) sender_nonce: u64,
    pub(crate) receiver_nonce: u64,
    pub(crate) sender: &'a [u8],
    pub(crate) receiver: &'a [u8],
    pub(crate) body: &'a [u8],
    /// Everything the tag covers.
    pub(crate) signed: &'a [u8],
    pub(crate) tag: &'a [u8],
}

/// Parses the header and framing of a control message without authenticating it.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header<'_>, ProtoError> {
    let msg_type = classify(bytes)?;
    if msg_type == MsgType::Data {
        return Err(ProtoError::Malformed { field: "type" });
    }
    let mut r = Reader::new(bytes);
    r.take(2, ProtoError::Truncated)?;
    let body_len = usize::from(u16::from_be_bytes(r.array(ProtoError::Truncated)?));
    let seq = u64::from_be_bytes(r.array(ProtoError::Truncated)?);
    let sender_nonce = u64::from_be_bytes(r.array(ProtoError::Truncated)?);
    let receiver_nonce = u64::from_be_bytes(r.array(ProtoError::Truncated)?);
    let sender = id_field(&mut r, "sender id")?;
    let receiver = id_field(&mut r, "receiver id")?;
    let body = r.take(body_len, ProtoError::Truncated)?;
    let tag = r.take(TAG_LEN, ProtoError::Truncated)?;
    if r.remaining() != 0 {
        return Err(ProtoError::Malformed { field: "length" });
    }
    let signed = bytes
        .get(..bytes.len() - TAG_LEN)
        .ok_or(ProtoError::Truncated)?;
    Ok(Header {
        msg_type,
        seq,
        sender_nonce,
        receiver_nonce,
        sender,
        receiver,
        body,
        signed,
        tag,
    })
}

fn id_field<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a [u8], ProtoError> {
    let n = usize::from(r.array::<1>(ProtoError::Truncated)?[0]);
    if n == 0 || n > MAX_ID_LEN {
        return Err(ProtoError::Malformed { field });
    }
    r.take(n, ProtoError::Truncated)
}

impl SessionAuth {
    /// Authentication state for the session between `local_id` and `peer_id`, idle.
    /// Fails if an id cannot travel on the wire (empty or over 63 bytes).
    pub fn new(key: &GroupKey, local_id: &str, peer_id: &str) -> Result<SessionAuth, ProtoError> {
        for (id, field) in [(local_id, "local id"), (peer_id, "peer id")] {
            if id.is_empty() || id.len() > MAX_ID_LEN {
                return Err(ProtoError::Malformed { field });
            }
        }
        // HMAC accepts keys of any length; GroupKey guarantees at least 32 bytes.
        let mac = HmacSha256::new_from_slice(key.as_bytes())
            .map_err(|_| ProtoError::Misuse("HMAC rejected the key length"))?;
        Ok(SessionAuth {
            mac,
            local_id: local_id.to_string(),
            peer_id: peer_id.to_string(),
            state: SessionState::Idle,
            local_nonce: 0,
            peer_nonce: 0,
            tx_seq: 0,
            rx: ReplayWindow::default(),
            pending: None,
            rejects: RejectCounters::default(),
        })
    }

    /// Starts a new session as initiator with a fresh random `nonce`: forgets the current
    /// session and returns the Hello to send.
    pub fn hello(&mut self, nonce: NonZeroU64, body: &Hello) -> Result<Vec<u8>, ProtoError> {
        self.reset();
        self.local_nonce = nonce.get();
        self.state = SessionState::HelloSent;
        self.seal_raw(MsgType::Hello, 0, &Message::Hello(body.clone()))
    }

    /// Answers the last Hello that [`open`](Self::open) returned, with a fresh random
    /// `nonce`, replacing any current session. Returns the Accept to send.
    pub fn accept(&mut self, nonce: NonZeroU64, body: &Hello) -> Result<Vec<u8>, ProtoError> {
        let pending = self.pending.take().ok_or(ProtoError::NoSession)?;
        self.state = SessionState::Established;
        self.local_nonce = nonce.get();
        self.peer_nonce = pending.nonce;
        self.tx_seq = 0;
        self.rx = ReplayWindow::default();
        self.rx.commit(pending.seq);
        self.seal_raw(
            MsgType::Accept,
            pending.nonce,
            &Message::Accept(body.clone()),
        )
    }

    /// Seals a message of the established session (anything but Hello and Accept, which
    /// go through [`hello`](Self::hello) and [`accept`](Self::accept)).
    pub fn seal(&mut self, msg: &Message) -> Result<Vec<u8>, ProtoError> {
        if matches!(msg, Message::Hello(_) | Message::Accept(_)) {
            return Err(ProtoError::Misuse(
                "Hello and Accept are sealed by hello() and accept()",
            ));
        }
        if self.state != SessionState::Established {
            return Err(ProtoError::NoSession);
        }
        self.seal_raw(msg.msg_type(), self.peer_nonce, msg)
    }

    fn seal_raw(
        &mut self,
        t: MsgType,
        receiver_nonce: u64,
        msg: &Message,
    ) -> Result<Vec<u8>, ProtoError> {
        let mut body = Vec::with_capacity(64);
        msg.encode_body(&mut body)?;
        let body_len = u16::try_from(body.len()).map_err(|_| ProtoError::Malformed {
            field: "body length",
        })?;
        self.tx_seq += 1;
        let mut out = Vec::with_capacity(
            30 + self.local_id.len() + self.peer_id.len() + body.len() + TAG_LEN,
        );
        out.push(MAGIC);
        out.push(version_type(t));
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&self.tx_seq.to_be_bytes());
        out.extend_from_slice(&self.local_nonce.to_be_bytes());
        out.extend_from_slice(&receiver_nonce.to_be_bytes());
        put_short_str(&mut out, &self.local_id, "local id")?;
        put_short_str(&mut out, &self.peer_id, "peer id")?;
        out.extend_from_slice(&body);
        let tag = self.mac.clone().chain_update(&out).finalize().into_bytes();
        out.extend_from_slice(&tag[..TAG_LEN]);
        Ok(out)
    }

    /// Authenticates and decodes a received control message from this peer. A reject is
    /// counted by reason and leaves the session state untouched.
    pub fn open(&mut self, bytes: &[u8]) -> Result<Message, ProtoError> {
        let result = self.open_inner(bytes);
        if let Err(e) = &result {
            self.rejects.record(e);
        }
        result
    }

    fn open_inner(&mut self, bytes: &[u8]) -> Result<Message, ProtoError> {
        let h = parse_header(bytes)?;
        if h.sender != self.peer_id.as_bytes() {
            return Err(ProtoError::UnknownPeer);
        }
        if h.receiver != self.local_id.as_bytes() {
            return Err(ProtoError::WrongRecipient);
        }
        // Constant-time compare of the truncated tag.
        self.mac
            .clone()
            .chain_update(h.signed)
            .verify_truncated_left(h.tag)
            .map_err(|_| ProtoError::BadMac)?;
        // From here on the peer wrote every byte: what remains are protocol checks.
        if h.sender_nonce == 0 {
            return Err(ProtoError::Malformed {
                field: "sender nonce",
            });
        }
        let current = self.state == SessionState::Established
            && h.sender_nonce == self.peer_nonce
            && h.receiver_nonce == self.local_nonce;
        match h.msg_type {
            MsgType::Hello => {
                if h.receiver_nonce != 0 {
                    return Err(ProtoError::Malformed {
                        field: "receiver nonce",
                    });
                }
                let same_session =
                    self.state == SessionState::Established && h.sender_nonce == self.peer_nonce;
                if same_session && !self.rx.check(h.seq) {
                    return Err(ProtoError::Replay { seq: h.seq });
                }
                let msg = Message::decode_body(h.msg_type, h.body)?;
                if same_session {
                    self.rx.commit(h.seq);
                }
                self.pending = Some(PendingHello {
                    nonce: h.sender_nonce,
                    seq: h.seq,
                });
                Ok(msg)
            }
            MsgType::Accept if self.state == SessionState::HelloSent => {
                if h.receiver_nonce != self.local_nonce {
                    return Err(ProtoError::StaleSession);
                }
                let msg = Message::decode_body(h.msg_type, h.body)?;
                self.state = SessionState::Established;
                self.peer_nonce = h.sender_nonce;
                self.rx = ReplayWindow::default();
                self.rx.commit(h.seq);
                Ok(msg)
            }
            _ => {
                if self.state != SessionState::Established {
                    return Err(if h.msg_type == MsgType::Accept {
                        ProtoError::StaleSession
                    } else {
                        ProtoError::NoSession
                    });
                }
                if !current {
                    return Err(ProtoError::StaleSession);
                }
                if !self.rx.check(h.seq) {
                    return Err(ProtoError::Replay { seq: h.seq });
                }
                let msg = Message::decode_body(h.msg_type, h.body)?;
                self.rx.commit(h.seq);
                Ok(msg)
            }
        }
    }

    /// Forgets the session (after it was declared dead): back to idle.
    pub fn reset(&mut self) {
        self.state = SessionState::Idle;
        self.local_nonce = 0;
        self.peer_nonce = 0;
        self.tx_seq = 0;
        self.rx = ReplayWindow::default();
        self.pending = None;
    }

    /// Where the handshake stands.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Whether the session is established.
    pub fn is_established(&self) -> bool {
        self.state == SessionState::Established
    }

    /// When both ends sent Hello at once: true if this end should answer the peer's Hello
    /// (its id sorts after the peer's), false if it should ignore it and wait for Accept.
    pub fn answers_crossed_hello(&self) -> bool {
        self.local_id > self.peer_id
    }

    /// This node's id.
    pub fn local_id(&self) -> &str {
        &self.local_id
    }

    /// The peer's id.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// Rejected messages by reason.
    pub fn rejects(&self) -> &RejectCounters {
        &self.rejects
    }
}
