//! Control message bodies: their types and their encoding (the layout table is in the
//! module doc of `proto`).

use crate::config::MacAddr;

use super::reader::Reader;
use super::{MsgType, ProtoError, MAX_DOMAINS, MAX_ID_LEN, MAX_MACS};

/// Capability bits announced in Hello/Accept. Unknown bits are kept, not rejected, so
/// newer peers can announce features older ones ignore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// The node serves as a proxy for its group.
    pub const PROXY: Capabilities = Capabilities(1 << 0);
    /// As a proxy, it announces a client's MACs from its own NIC when it installs them.
    pub const ANNOUNCE_ON_BEHALF: Capabilities = Capabilities(1 << 1);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of bits.
    pub fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }
}

/// A node's link state as it reports it to its peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LinkFlags(pub u8);

impl LinkFlags {
    /// The sender's NIC link is up.
    pub const NIC_UP: u8 = 1 << 0;
    /// The sender's upstream probe passes, or it has none.
    pub const UPSTREAM_OK: u8 = 1 << 1;

    /// Builds flags from the two states.
    pub fn new(nic_up: bool, upstream_ok: bool) -> LinkFlags {
        LinkFlags((u8::from(nic_up) * Self::NIC_UP) | (u8::from(upstream_ok) * Self::UPSTREAM_OK))
    }

    /// The NIC link is up.
    pub fn nic_up(self) -> bool {
        self.0 & Self::NIC_UP != 0
    }

    /// The upstream probe passes (or none is configured).
    pub fn upstream_ok(self) -> bool {
        self.0 & Self::UPSTREAM_OK != 0
    }

    /// The sender can carry other nodes' frames out of its NIC: link up and upstream ok.
    pub fn usable(self) -> bool {
        self.nic_up() && self.upstream_ok()
    }
}

/// Body of Hello and Accept: who the sender is and what it can do. The sender's node id
/// travels in the header of every message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Highest protocol version the sender speaks (for future negotiation; v1 peers
    /// speak 1).
    pub max_version: u8,
    /// What the sender can do.
    pub capabilities: Capabilities,
    /// The sender's link state at the time of the handshake.
    pub link: LinkFlags,
    /// The sender's group, so a misconfigured peer shows up as a clear mismatch.
    pub group: String,
    /// The sender's own MACs.
    pub macs: Vec<MacAddr>,
}

/// Body of Heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's heartbeat counter.
    pub seq: u64,
    /// The sender's monotonic clock when sending, in ns.
    pub tx_ns: u64,
    /// `seq` of the last heartbeat the sender received from us (0: none yet).
    pub echo_seq: u64,
    /// `tx_ns` of that heartbeat, returned unchanged.
    pub echo_tx_ns: u64,
    /// How long the sender held that heartbeat before sending this one, in ns.
    pub echo_held_ns: u64,
    /// The sender's link state.
    pub link: LinkFlags,
}

impl Heartbeat {
    /// Round trip of the echoed heartbeat, measured on the receiver's clock: now minus
    /// when it was sent, minus how long the peer held it. `None` without an echo, or if
    /// the numbers are inconsistent (the peer's held time exceeds the elapsed time).
    pub fn rtt_ns(&self, now_ns: u64) -> Option<u64> {
        if self.echo_seq == 0 {
            return None;
        }
        now_ns
            .checked_sub(self.echo_tx_ns)?
            .checked_sub(self.echo_held_ns)
    }
}

/// Body of ProxyRequest: carry these MACs in these domains. A request replaces whatever
/// the proxy carried for this session before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// Request id: requests and releases of one client share one increasing counter, so a
    /// proxy can ignore one that arrives after a newer one.
    pub id: u32,
    /// The MACs to install, 1..=32.
    pub macs: Vec<MacAddr>,
    /// The domains to carry them in, 1..=32.
    pub domains: Vec<u16>,
}

/// Result of a ProxyRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AckStatus {
    /// Installed.
    Ok = 0,
    /// The requester is not in the proxy's group.
    NotInGroup = 1,
    /// A MAC is the proxy's own or is carried for another client.
    Conflict = 2,
    /// A domain is not one the proxy's NIC is cabled to.
    UnknownDomain = 3,
    /// More MACs or domains than the proxy accepts.
    TooMany = 4,
    /// The request is invalid (no MACs, non-unicast MAC, no domains).
    Invalid = 5,
}

impl AckStatus {
    fn from_u8(v: u8) -> Option<AckStatus> {
        Some(match v {
            0 => AckStatus::Ok,
            1 => AckStatus::NotInGroup,
            2 => AckStatus::Conflict,
            3 => AckStatus::UnknownDomain,
            4 => AckStatus::TooMany,
            5 => AckStatus::Invalid,
            _ => return None,
        })
    }
}

/// Body of ProxyAck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAck {
    /// The id of the request answered.
    pub id: u32,
    /// The outcome.
    pub status: AckStatus,
}

/// Body of ProxyRelease: stop carrying what request ids before this one installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyRelease {
    /// From the same counter as [`ProxyRequest::id`].
    pub id: u32,
}

/// A decoded control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens a session (initiator → responder).
    Hello(Hello),
    /// Accepts a session (responder → initiator).
    Accept(Hello),
    /// Liveness, link state and RTT.
    Heartbeat(Heartbeat),
    /// Client → proxy.
    ProxyRequest(ProxyRequest),
    /// Proxy → client.
    ProxyAck(ProxyAck),
    /// Client → proxy.
    ProxyRelease(ProxyRelease),
    /// A link-state change, sent at once rather than with the next heartbeat.
    LinkState(LinkFlags),
}

impl Message {
    /// The wire type.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Message::Hello(_) => MsgType::Hello,
            Message::Accept(_) => MsgType::Accept,
            Message::Heartbeat(_) => MsgType::Heartbeat,
            Message::ProxyRequest(_) => MsgType::ProxyRequest,
            Message::ProxyAck(_) => MsgType::ProxyAck,
            Message::ProxyRelease(_) => MsgType::ProxyRelease,
            Message::LinkState(_) => MsgType::LinkState,
        }
    }

    /// Appends the body to `out`. Fails on values the wire cannot carry (too many MACs,
    /// an overlong group), so a bad local value never produces a message peers reject.
    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        match self {
            Message::Hello(h) | Message::Accept(h) => {
                out.push(h.max_version);
                out.extend_from_slice(&h.capabilities.0.to_be_bytes());
                out.push(h.link.0);
                put_short_str(out, &h.group, "group")?;
                put_macs(out, &h.macs, 0)?;
            }
            Message::Heartbeat(hb) => {
                for v in [
                    hb.seq,
                    hb.tx_ns,
                    hb.echo_seq,
                    hb.echo_tx_ns,
                    hb.echo_held_ns,
                ] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.push(hb.link.0);
            }
            Message::ProxyRequest(r) => {
                out.extend_from_slice(&r.id.to_be_bytes());
                put_macs(out, &r.macs, 1)?;
                if r.domains.is_empty() || r.domains.len() > MAX_DOMAINS {
                    return Err(ProtoError::Malformed {
                        field: "domain count",
                    });
                }
                out.push(r.domains.len() as u8);
                for d in &r.domains {
                    out.extend_from_slice(&d.to_be_bytes());
                }
            }
            Message::ProxyAck(a) => {
                out.extend_from_slice(&a.id.to_be_bytes());
                out.push(a.status as u8);
            }
            Message::ProxyRelease(r) => out.extend_from_slice(&r.id.to_be_bytes()),
            Message::LinkState(l) => out.push(l.0),
        }
        Ok(())
    }

    /// Decodes a body of type `t` (a control type; Data is not a body).
    pub(crate) fn decode_body(t: MsgType, body: &[u8]) -> Result<Message, ProtoError> {
        let mut r = Reader::new(body);
        let msg = match t {
            MsgType::Hello | MsgType::Accept => {
                let h = Hello {
                    max_version: r.u8("max version")?,
                    capabilities: Capabilities(r.u32("capabilities")?),
                    link: LinkFlags(r.u8("link flags")?),
                    group: get_short_str(&mut r, "group")?,
                    macs: get_macs(&mut r, 0)?,
                };
                if t == MsgType::Hello {
                    Message::Hello(h)
                } else {
                    Message::Accept(h)
                }
            }
            MsgType::Heartbeat => Message::Heartbeat(Heartbeat {
                seq: r.u64("heartbeat seq")?,
                tx_ns: r.u64("tx time")?,
                echo_seq: r.u64("echo seq")?,
                echo_tx_ns: r.u64("echo tx time")?,
                echo_held_ns: r.u64("echo held time")?,
                link: LinkFlags(r.u8("link flags")?),
            }),
            MsgType::ProxyRequest => {
                let id = r.u32("request id")?;
                let macs = get_macs(&mut r, 1)?;
                let n = usize::from(r.u8("domain count")?);
                if n == 0 || n > MAX_DOMAINS {
                    return Err(ProtoError::Malformed {
                        field: "domain count",
                    });
                }
                let mut domains = Vec::with_capacity(n);
                for _ in 0..n {
                    domains.push(r.u16("domains")?);
                }
                Message::ProxyRequest(ProxyRequest { id, macs, domains })
            }
            MsgType::ProxyAck => {
                let id = r.u32("request id")?;
                let status = AckStatus::from_u8(r.u8("status")?)
                    .ok_or(ProtoError::Malformed { field: "status" })?;
                Message::ProxyAck(ProxyAck { id, status })
            }
            MsgType::ProxyRelease => Message::ProxyRelease(ProxyRelease {
                id: r.u32("request id")?,
            }),
            MsgType::LinkState => Message::LinkState(LinkFlags(r.u8("link flags")?)),
            MsgType::Data => return Err(ProtoError::Malformed { field: "type" }),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Appends a one-byte length and an id-like string (1..=63 bytes).
pub(crate) fn put_short_str(
    out: &mut Vec<u8>,
    s: &str,
    field: &'static str,
) -> Result<(), ProtoError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(ProtoError::Malformed { field });
    }
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Reads a one-byte length and an id-like string.
pub(crate) fn get_short_bytes<'a>(
    r: &mut Reader<'a>,
    field: &'static str,
) -> Result<&'a [u8], ProtoError> {
    let n = usize::from(r.u8(field)?);
    if n == 0 || n > MAX_ID_LEN {
        return Err(ProtoError::Malformed { field });
    }
    r.take(n, ProtoError::Malformed { field })
}

fn get_short_str(r: &mut Reader<'_>, field: &'static str) -> Result<String, ProtoError> {
    let bytes = get_short_bytes(r, field)?;
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| ProtoError::Malformed { field })
}

fn put_macs(out: &mut Vec<u8>, macs: &[MacAddr], min: usize) -> Result<(), ProtoError> {
    if macs.len() < min || macs.len() > MAX_MACS {
        return Err(ProtoError::Malformed { field: "MAC count" });
    }
    out.push(macs.len() as u8);
    for m in macs {
        out.extend_from_slice(&m.0);
    }
    Ok(())
}

fn get_macs(r: &mut Reader<'_>, min: usize) -> Result<Vec<MacAddr>, ProtoError> {
    let n = usize::from(r.u8("MAC count")?);
    if n < min || n > MAX_MACS {
        return Err(ProtoError::Malformed { field: "MAC count" });
    }
    let mut macs = Vec::with_capacity(n);
    for _ in 0..n {
        macs.push(MacAddr(r.array(ProtoError::Malformed { field: "MACs" })?));
    }
    Ok(macs)
}
