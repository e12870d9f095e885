//! Dispatch of received control messages to the session of their sender; only configured
//! peers have one.

use crate::config::GroupKey;

use super::auth::parse_header;
use super::{Message, ProtoError, RejectCounters, SessionAuth};

/// The [`SessionAuth`] of every configured peer, indexed in configuration order.
#[derive(Debug, Clone)]
pub struct PeerTable {
    sessions: Vec<SessionAuth>,
    /// Rejects that happen before a sender's session is known (counted here, not per peer).
    rejects: RejectCounters,
}

impl PeerTable {
    /// One idle session per peer id.
    pub fn new<'a>(
        key: &GroupKey,
        local_id: &str,
        peers: impl IntoIterator<Item = &'a str>,
    ) -> Result<PeerTable, ProtoError> {
        let sessions = peers
            .into_iter()
            .map(|p| SessionAuth::new(key, local_id, p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PeerTable {
            sessions,
            rejects: RejectCounters::default(),
        })
    }

    /// Authenticates and decodes a received control message; returns the index of the
    /// sender's session with the message.
    pub fn open(&mut self, bytes: &[u8]) -> Result<(usize, Message), ProtoError> {
        let sender = match parse_header(bytes) {
            Ok(h) => h.sender,
            Err(e) => {
                self.rejects.record(&e);
                return Err(e);
            }
        };
        let Some(idx) = self
            .sessions
            .iter()
            .position(|s| s.peer_id().as_bytes() == sender)
        else {
            self.rejects.record(&ProtoError::UnknownPeer);
            return Err(ProtoError::UnknownPeer);
        };
        self.sessions[idx].open(bytes).map(|m| (idx, m))
    }

    /// The index of a peer's session.
    pub fn index_of(&self, peer_id: &str) -> Option<usize> {
        self.sessions.iter().position(|s| s.peer_id() == peer_id)
    }

    /// A peer's session by index.
    pub fn session(&mut self, idx: usize) -> Option<&mut SessionAuth> {
        self.sessions.get_mut(idx)
    }

    /// All sessions.
    pub fn sessions(&self) -> &[SessionAuth] {
        &self.sessions
    }

    /// Rejects by reason, over the table and every session.
    pub fn rejects(&self) -> RejectCounters {
        let mut total = self.rejects;
        for s in &self.sessions {
            total.add(s.rejects());
        }
        total
    }
}
