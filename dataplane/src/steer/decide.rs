//! Second half of steering: the rules, as a pure function of the table, the source and the
//! classified frame. See the module documentation of [`super`] for the rules in prose.

use super::classify::{classify, Classified};
use super::table::{DomainInfo, MacTable};
use super::types::{Action, Decision, Flood, SessionId, SessionMask, Source, Uplink, MAX_SESSIONS};
use crate::counters::DropReason;

/// Steers one frame.
///
/// Always inlined: with plain `#[inline]` the compiler kept it out of line once `decide`
/// grew (the carrier check), a call per frame that took the steering suite's full decision
/// from 15 to 29 cycles.
#[inline(always)]
pub fn steer(table: &MacTable, source: Source, frame: &[u8]) -> Decision {
    match classify(table, frame) {
        Ok(c) => decide(table, source, &c),
        Err(r) => Decision::Drop(r),
    }
}

/// Steers a burst: `out[i]` gets the decision for `frames[i]` (up to the shorter length).
/// `F` is anything that shows the frame bytes, e.g. a worker's mbuf wrapper.
#[inline]
pub fn steer_bulk<F: AsRef<[u8]>>(
    table: &MacTable,
    source: Source,
    frames: &[F],
    out: &mut [Decision],
) {
    for (f, o) in frames.iter().zip(out.iter_mut()) {
        *o = steer(table, source, f.as_ref());
    }
}

/// Steers a burst whose frames come from different sources (a fabric burst: each frame's
/// session): `out[i]` gets the decision for `frames[i]` from `source(i)`.
///
/// (Reusing the previous frame's decision for a frame with the same first 14 bytes was
/// tried here: it made a burst of one flow cheaper but cost random traffic 20 to 30 cycles
/// per frame in the steering suite, so every frame is steered in full.)
#[inline]
pub fn steer_bulk_from<F: AsRef<[u8]>>(
    table: &MacTable,
    source: impl Fn(usize) -> Source,
    frames: &[F],
    out: &mut [Decision],
) {
    for (i, (f, o)) in frames.iter().zip(out.iter_mut()).enumerate() {
        *o = steer(table, source(i), f.as_ref());
    }
}

/// Applies the rules to an already classified frame.
#[inline(always)]
pub fn decide(table: &MacTable, source: Source, c: &Classified) -> Decision {
    let d = decide_open(table, source, c);
    if table.kernel_open {
        d
    } else {
        without_kernel(d)
    }
}

/// A decision with the local kernel left out: its interface has no carrier.
#[cold]
fn without_kernel(d: Decision) -> Decision {
    match d {
        Decision::Kernel => Decision::Drop(DropReason::NoCarrier),
        Decision::Flood(f) if f.kernel => {
            flood(Flood { kernel: false, ..f }, DropReason::NoCarrier)
        }
        d => d,
    }
}

#[inline(always)]
fn decide_open(table: &MacTable, source: Source, c: &Classified) -> Decision {
    let dom = table.domain(c.domain);
    match source {
        Source::Nic => {
            if dom.uplink != Uplink::Nic {
                // Floods also reach us through our proxy, so taking them here too would
                // deliver them twice. A unicast frame for one of our own MACs, though, the
                // switch sends to one port only: it arrives here when the switch relearned
                // our MAC on the NIC before we moved back to it, and dropping it would turn
                // an early relearn into loss.
                return match (c.is_group(), table.lookup_key(c.dst_key())) {
                    (false, Action::Kernel) if table.nic_cabled(c.domain) => Decision::Kernel,
                    _ => Decision::Drop(DropReason::InactivePath),
                };
            }
            from_lan(table, &dom, c, None)
        }
        Source::Kernel => from_kernel(table, &dom, c),
        Source::Session(s) => {
            if usize::from(s.0) >= MAX_SESSIONS {
                Decision::Drop(DropReason::UnknownSession)
            } else if dom.uplink == Uplink::Session(s) {
                // Our proxy relays LAN traffic to us: same rules as from our own NIC.
                from_lan(table, &dom, c, Some(s))
            } else if !dom.sessions.contains(s)
                && !table.clients.contains(s)
                && !matches!(table.lookup_key(c.src_key()), Action::Session(x) if x != s)
            {
                // Neither our path nor a client of ours anywhere, and not claiming another
                // session's MAC: typically the proxy we just left, still relaying LAN floods
                // for a moment. A stale path, not a spoof (which would alarm an operator on
                // every failback).
                Decision::Drop(DropReason::InactivePath)
            } else {
                from_client(table, &dom, c, s)
            }
        }
    }
}

#[inline(always)]
fn flood(f: Flood, empty: DropReason) -> Decision {
    if f.copies() == 0 {
        Decision::Drop(empty)
    } else {
        Decision::Flood(f)
    }
}

#[inline(always)]
fn via_uplink(up: Uplink) -> Decision {
    match up {
        Uplink::Nic => Decision::Nic,
        Uplink::Session(p) => Decision::Session(p),
        Uplink::None => Decision::Drop(DropReason::NoPath),
    }
}

/// Sessions a frame leaving by `up` reaches besides the domain's members.
#[inline(always)]
fn with_uplink(mut sessions: SessionMask, up: Uplink) -> SessionMask {
    if let Uplink::Session(p) = up {
        sessions.insert(p);
    }
    sessions
}

/// A frame from the domain's uplink: the NIC (`via` = `None`) or the proxy session `via`.
#[inline(always)]
fn from_lan(t: &MacTable, dom: &DomainInfo, c: &Classified, via: Option<SessionId>) -> Decision {
    if c.is_group() {
        if c.is_link_local() {
            // Link-local control frames (LLDP, LACP, STP) are for this box's kernel only, and
            // only from its own wire.
            return match (via, dom.kernel) {
                (None, true) => Decision::Kernel,
                (None, false) => Decision::Drop(DropReason::NoRoute),
                (Some(_), _) => Decision::Drop(DropReason::LinkLocal),
            };
        }
        let mut sessions = dom.sessions;
        if let Some(s) = via {
            sessions.remove(s);
        }
        return flood(
            Flood {
                sessions,
                kernel: dom.kernel,
                nic: false,
            },
            DropReason::NoRoute,
        );
    }
    match t.lookup_key(c.dst_key()) {
        Action::Kernel => Decision::Kernel,
        Action::Session(x) if Some(x) == via => Decision::Drop(DropReason::Loop),
        Action::Session(x) => Decision::Session(x),
        Action::Nic => Decision::Drop(DropReason::NotForUs),
        Action::Drop => Decision::Drop(DropReason::Filtered),
    }
}

/// A frame the local kernel sent.
#[inline(always)]
fn from_kernel(t: &MacTable, dom: &DomainInfo, c: &Classified) -> Decision {
    if c.src == t.nic_mac && t.nic_mac != 0 && t.nic_cabled(c.domain) {
        // The upstream probe, sent from the NIC port's own MAC: it tests the NIC's path.
        return Decision::Nic;
    }
    let up = dom.uplink;
    if c.is_group() {
        if c.is_link_local() {
            return if up == Uplink::Nic {
                Decision::Nic
            } else {
                Decision::Drop(DropReason::LinkLocal)
            };
        }
        return flood(
            Flood {
                sessions: with_uplink(dom.sessions, up),
                kernel: false,
                nic: up == Uplink::Nic,
            },
            DropReason::NoPath,
        );
    }
    match t.lookup_key(c.dst_key()) {
        Action::Session(x) => Decision::Session(x),
        Action::Kernel => Decision::Drop(DropReason::Loop),
        Action::Drop => Decision::Drop(DropReason::Filtered),
        Action::Nic => via_uplink(up),
    }
}

/// A frame from a peer we proxy for, on session `s`.
#[inline(always)]
fn from_client(t: &MacTable, dom: &DomainInfo, c: &Classified, s: SessionId) -> Decision {
    if t.lookup_key(c.src_key()) != Action::Session(s) {
        return Decision::Drop(DropReason::Spoofed);
    }
    let up = dom.uplink;
    if c.is_group() {
        if c.is_link_local() {
            return Decision::Drop(DropReason::LinkLocal);
        }
        let mut sessions = with_uplink(dom.sessions, up);
        sessions.remove(s);
        return flood(
            Flood {
                sessions,
                kernel: dom.kernel,
                nic: up == Uplink::Nic,
            },
            DropReason::NoRoute,
        );
    }
    match t.lookup_key(c.dst_key()) {
        Action::Kernel => Decision::Kernel,
        Action::Session(x) if x == s => Decision::Drop(DropReason::Loop),
        Action::Session(x) => Decision::Session(x),
        Action::Drop => Decision::Drop(DropReason::Filtered),
        Action::Nic => via_uplink(up),
    }
}
