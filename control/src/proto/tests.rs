//! Session protocol: handshakes, every message type both ways, and every reject reason,
//! plus random and mutated input (totality: errors, never panics).

use std::num::NonZeroU64;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;
use crate::config::{GroupKey, MacAddr};
use crate::test_rng::TestRng;

fn key(byte: u8) -> GroupKey {
    GroupKey::from_bytes(vec![byte; 32]).expect("key")
}

fn nonce(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("nonzero")
}

fn hello_body(group: &str, mac_last: u8) -> Hello {
    Hello {
        max_version: 1,
        capabilities: Capabilities::PROXY.union(Capabilities::ANNOUNCE_ON_BEHALF),
        link: LinkFlags::new(true, true),
        group: group.to_string(),
        macs: vec![MacAddr([2, 0, 0, 0, 0, mac_last])],
    }
}

/// Two established ends, a (initiator) and b.
fn pair() -> (SessionAuth, SessionAuth) {
    let k = key(7);
    let mut a = SessionAuth::new(&k, "a", "b").expect("a");
    let mut b = SessionAuth::new(&k, "b", "a").expect("b");
    let h = a.hello(nonce(11), &hello_body("g", 1)).expect("hello");
    assert_eq!(b.open(&h), Ok(Message::Hello(hello_body("g", 1))));
    assert!(!b.is_established(), "a Hello alone establishes nothing");
    let acc = b.accept(nonce(22), &hello_body("g", 2)).expect("accept");
    assert!(b.is_established());
    assert_eq!(a.open(&acc), Ok(Message::Accept(hello_body("g", 2))));
    assert!(a.is_established());
    (a, b)
}

fn heartbeat(seq: u64) -> Message {
    Message::Heartbeat(Heartbeat {
        seq,
        tx_ns: 1_000 + seq,
        echo_seq: seq.saturating_sub(1),
        echo_tx_ns: 900,
        echo_held_ns: 50,
        link: LinkFlags::new(true, false),
    })
}

fn all_session_messages() -> Vec<Message> {
    vec![
        heartbeat(1),
        Message::ProxyRequest(ProxyRequest {
            id: 7,
            macs: vec![MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 9])],
            domains: vec![0, 20],
        }),
        Message::ProxyAck(ProxyAck {
            id: 7,
            status: AckStatus::Conflict,
        }),
        Message::ProxyRelease(ProxyRelease { id: 8 }),
        Message::LinkState(LinkFlags::new(false, true)),
    ]
}

/// Builds a correctly tagged control message with arbitrary fields and body, to reach the
/// checks that come after authentication.
#[allow(clippy::too_many_arguments)]
fn forge(
    k: &GroupKey,
    vt: u8,
    seq: u64,
    snonce: u64,
    rnonce: u64,
    sender: &str,
    receiver: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = vec![MAGIC, vt];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&snonce.to_be_bytes());
    out.extend_from_slice(&rnonce.to_be_bytes());
    out.push(sender.len() as u8);
    out.extend_from_slice(sender.as_bytes());
    out.push(receiver.len() as u8);
    out.extend_from_slice(receiver.as_bytes());
    out.extend_from_slice(body);
    let mut mac = Hmac::<Sha256>::new_from_slice(k.as_bytes()).expect("hmac");
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
    out
}

#[test]
fn every_message_round_trips_both_ways() {
    let (mut a, mut b) = pair();
    for msg in all_session_messages() {
        let wire = a.seal(&msg).expect("seal a");
        assert_eq!(classify(&wire), Ok(msg.msg_type()));
        assert_eq!(b.open(&wire).as_ref(), Ok(&msg));
        let wire = b.seal(&msg).expect("seal b");
        assert_eq!(a.open(&wire).as_ref(), Ok(&msg));
    }
    assert_eq!(a.rejects().total() + b.rejects().total(), 0);
}

#[test]
fn layout_matches_the_documented_table() {
    let (mut a, _) = pair();
    let wire = a.seal(&Message::LinkState(LinkFlags(3))).expect("seal");
    assert_eq!(wire[0], 0x4E);
    assert_eq!(wire[1], 0x17, "version 1, type 7");
    assert_eq!(&wire[2..4], &[0, 1], "body length");
    assert_eq!(
        &wire[4..12],
        &2u64.to_be_bytes(),
        "a's second message (Hello was 1)"
    );
    assert_eq!(&wire[12..20], &11u64.to_be_bytes(), "sender nonce");
    assert_eq!(&wire[20..28], &22u64.to_be_bytes(), "receiver nonce");
    assert_eq!(&wire[28..30], &[1, b'a']);
    assert_eq!(&wire[30..32], &[1, b'b']);
    assert_eq!(wire[32], 3, "body");
    assert_eq!(wire.len(), 33 + TAG_LEN);
}

#[test]
fn wrong_key_is_bad_mac() {
    let (mut a, _) = pair();
    let mut other = SessionAuth::new(&key(8), "b", "a").expect("b");
    let wire = a.seal(&heartbeat(1)).expect("seal");
    assert_eq!(other.open(&wire), Err(ProtoError::BadMac));
    assert_eq!(other.rejects().bad_mac, 1);
}

#[test]
fn ids_are_checked_before_anything_else() {
    let k = key(7);
    let mut a = SessionAuth::new(&k, "a", "b").expect("a");
    let h = a.hello(nonce(1), &hello_body("g", 1)).expect("hello");
    // c has a configured as a peer, but the Hello is addressed to b.
    let mut c = SessionAuth::new(&k, "c", "a").expect("c");
    assert_eq!(c.open(&h), Err(ProtoError::WrongRecipient));
    // A session for another peer.
    let mut c_for_b = SessionAuth::new(&k, "c", "b").expect("c");
    assert_eq!(c_for_b.open(&h), Err(ProtoError::UnknownPeer));
    // The table rejects senders that are not configured at all.
    let mut table = PeerTable::new(&k, "b", ["x", "y"]).expect("table");
    assert_eq!(table.open(&h), Err(ProtoError::UnknownPeer));
    assert_eq!(table.rejects().unknown_peer, 1);
    let mut table = PeerTable::new(&k, "b", ["x", "a"]).expect("table");
    let (idx, msg) = table.open(&h).expect("configured peer");
    assert_eq!(idx, 1);
    assert!(matches!(msg, Message::Hello(_)));
    assert_eq!(table.index_of("a"), Some(1));
    let s = table.session(1).expect("session");
    s.accept(nonce(5), &hello_body("g", 2)).expect("accept");
    assert!(table.sessions()[1].is_established());
}

#[test]
fn replays_are_rejected_and_reordering_tolerated() {
    let (mut a, mut b) = pair();
    let wires: Vec<Vec<u8>> = (1..=70)
        .map(|i| a.seal(&heartbeat(i)).expect("seal"))
        .collect();
    // Out of order within the window: fine.
    assert!(b.open(&wires[5]).is_ok());
    assert!(b.open(&wires[3]).is_ok());
    assert!(b.open(&wires[4]).is_ok());
    // Duplicate: replay.
    assert!(matches!(b.open(&wires[4]), Err(ProtoError::Replay { .. })));
    // Jump ahead, then something older than the window.
    assert!(b.open(&wires[69]).is_ok());
    assert!(matches!(b.open(&wires[0]), Err(ProtoError::Replay { .. })));
    assert!(
        b.open(&wires[69 - 63]).is_ok(),
        "oldest slot still in the window"
    );
    assert_eq!(b.rejects().replay, 2);
}

#[test]
fn old_sessions_cannot_be_replayed() {
    let (mut a, mut b) = pair();
    let old_hb = a.seal(&heartbeat(1)).expect("seal");
    let old_hello_a = {
        let mut probe = a.clone();
        probe
            .hello(nonce(11), &hello_body("g", 1))
            .expect("same hello as the handshake")
    };
    assert!(b.open(&old_hb).is_ok());

    // a restarts and opens a new session with a fresh nonce; b answers with a fresh one.
    a.reset();
    let h = a.hello(nonce(33), &hello_body("g", 1)).expect("hello");
    assert!(matches!(b.open(&h), Ok(Message::Hello(_))));
    let acc = b.accept(nonce(44), &hello_body("g", 2)).expect("accept");
    assert!(matches!(a.open(&acc), Ok(Message::Accept(_))));

    // Sequence numbers restarted, yet the old session's heartbeat is rejected.
    assert_eq!(b.open(&old_hb), Err(ProtoError::StaleSession));
    assert_eq!(b.rejects().stale_session, 1);
    // An old Accept does not fit a's new session either.
    assert!(a.open(&acc).is_err());

    // A replayed old Hello becomes only a pending Hello: the current session goes on.
    assert!(matches!(b.open(&old_hello_a), Ok(Message::Hello(_))));
    let hb = a.seal(&heartbeat(2)).expect("seal");
    assert!(b.open(&hb).is_ok(), "current session unaffected");
    // Even if b answered it, the attacker's old messages reference b's old nonce.
    b.accept(nonce(55), &hello_body("g", 2)).expect("accept");
    assert_eq!(b.open(&old_hb), Err(ProtoError::StaleSession));
}

#[test]
fn duplicate_hello_of_the_current_session_is_a_replay() {
    let k = key(7);
    let mut a = SessionAuth::new(&k, "a", "b").expect("a");
    let mut b = SessionAuth::new(&k, "b", "a").expect("b");
    let h = a.hello(nonce(1), &hello_body("g", 1)).expect("hello");
    b.open(&h).expect("hello");
    let acc = b.accept(nonce(2), &hello_body("g", 2)).expect("accept");
    a.open(&acc).expect("accept");
    assert_eq!(b.open(&h), Err(ProtoError::Replay { seq: 1 }));
    assert!(matches!(a.open(&acc), Err(ProtoError::Replay { .. })));
}

#[test]
fn no_session_no_messages() {
    let k = key(7);
    let mut a = SessionAuth::new(&k, "a", "b").expect("a");
    let mut b = SessionAuth::new(&k, "b", "a").expect("b");
    assert_eq!(a.seal(&heartbeat(1)), Err(ProtoError::NoSession));
    assert_eq!(
        b.accept(nonce(1), &hello_body("g", 1)),
        Err(ProtoError::NoSession),
        "no Hello to answer"
    );
    assert!(matches!(
        a.seal(&Message::Hello(hello_body("g", 1))),
        Err(ProtoError::Misuse(_))
    ));
    // A message of an established session reaching an idle end.
    let (mut a2, _) = pair();
    let hb = a2.seal(&heartbeat(1)).expect("seal");
    assert_eq!(b.open(&hb), Err(ProtoError::NoSession));
    // An Accept that answers no Hello of ours.
    let (_, mut b3) = {
        let k = key(7);
        let mut x = SessionAuth::new(&k, "a", "b").expect("a");
        let mut y = SessionAuth::new(&k, "b", "a").expect("b");
        let h = x.hello(nonce(9), &hello_body("g", 1)).expect("hello");
        y.open(&h).expect("hello");
        (x, y)
    };
    let acc = b3.accept(nonce(8), &hello_body("g", 2)).expect("accept");
    let mut fresh = SessionAuth::new(&key(7), "a", "b").expect("a");
    assert_eq!(fresh.open(&acc), Err(ProtoError::StaleSession));
    fresh.hello(nonce(10), &hello_body("g", 1)).expect("hello");
    assert_eq!(
        fresh.open(&acc),
        Err(ProtoError::StaleSession),
        "echoes nonce 9, not 10"
    );
}

#[test]
fn crossed_hellos_complete_one_handshake() {
    let k = key(7);
    let mut a = SessionAuth::new(&k, "a", "b").expect("a");
    let mut b = SessionAuth::new(&k, "b", "a").expect("b");
    assert!(!a.answers_crossed_hello());
    assert!(b.answers_crossed_hello());
    let ha = a.hello(nonce(1), &hello_body("g", 1)).expect("hello");
    let hb = b.hello(nonce(2), &hello_body("g", 2)).expect("hello");
    // a ignores b's Hello (opens it, does not answer); b answers a's.
    assert!(matches!(a.open(&hb), Ok(Message::Hello(_))));
    assert!(matches!(b.open(&ha), Ok(Message::Hello(_))));
    let acc = b.accept(nonce(3), &hello_body("g", 2)).expect("accept");
    assert!(matches!(a.open(&acc), Ok(Message::Accept(_))));
    let wire = a.seal(&heartbeat(1)).expect("seal");
    assert!(b.open(&wire).is_ok());
    let wire = b.seal(&heartbeat(1)).expect("seal");
    assert!(a.open(&wire).is_ok());
}

#[test]
fn authenticated_but_malformed_bodies() {
    let k = key(7);
    let (_, mut b) = pair();
    // b's session: peer a with nonce 11, local nonce 22; seqs from 2 on are new.
    let mac = [2u8, 0, 0, 0, 0, 1];
    let mut req = vec![0, 0, 0, 1, 1];
    req.extend_from_slice(&mac);
    let cases: Vec<(u8, Vec<u8>, &str)> = vec![
        (
            0x14,
            {
                let mut v = vec![0, 0, 0, 1, 33];
                v.extend_from_slice(&[0; 33 * 6]);
                v.extend_from_slice(&[1, 0, 0]);
                v
            },
            "MAC count",
        ),
        (
            0x14,
            {
                let mut v = vec![0, 0, 0, 1, 0];
                v.push(1);
                v.extend_from_slice(&[0, 0]);
                v
            },
            "MAC count",
        ),
        (
            0x14,
            {
                let mut v = req.clone();
                v.push(0);
                v
            },
            "domain count",
        ),
        (
            0x14,
            {
                let mut v = req.clone();
                v.extend_from_slice(&[2, 0, 0]);
                v
            },
            "domains",
        ),
        (
            0x14,
            {
                let mut v = req.clone();
                v.extend_from_slice(&[1, 0, 0, 9]);
                v
            },
            "trailing bytes",
        ),
        (0x15, vec![0, 0, 0, 1, 9], "status"),
        (0x15, vec![0, 0, 0, 1], "status"),
        (0x13, vec![0; 40], "link flags"),
        (0x16, vec![0, 0, 1], "request id"),
        (0x17, vec![], "link flags"),
    ];
    for (seq, (vt, body, field)) in (2u64..).zip(cases) {
        let wire = forge(&k, vt, seq, 11, 22, "a", "b", &body);
        assert_eq!(
            b.open(&wire),
            Err(ProtoError::Malformed { field }),
            "{vt:#x} {body:?}"
        );
    }
    // A Hello with a non-UTF-8 group, and one with a receiver nonce.
    let mut hello = vec![1, 0, 0, 0, 0, 0, 2, 0xff, 0xfe, 0];
    let wire = forge(&k, 0x11, 1, 77, 0, "a", "b", &hello);
    assert_eq!(b.open(&wire), Err(ProtoError::Malformed { field: "group" }));
    hello = vec![1, 0, 0, 0, 0, 0, 1, b'g', 0];
    let wire = forge(&k, 0x11, 1, 77, 5, "a", "b", &hello);
    assert_eq!(
        b.open(&wire),
        Err(ProtoError::Malformed {
            field: "receiver nonce"
        })
    );
    let wire = forge(&k, 0x11, 1, 0, 0, "a", "b", &hello);
    assert_eq!(
        b.open(&wire),
        Err(ProtoError::Malformed {
            field: "sender nonce"
        })
    );
    let wire = forge(&k, 0x11, 1, 77, 0, "a", "b", &hello);
    assert!(matches!(b.open(&wire), Ok(Message::Hello(h)) if h.group == "g" && h.macs.is_empty()));
    // Malformed rejects did not consume sequence numbers: seq 2 is still new.
    let wire = forge(&k, 0x17, 2, 11, 22, "a", "b", &[1]);
    assert_eq!(b.open(&wire), Ok(Message::LinkState(LinkFlags(1))));
    assert_eq!(b.rejects().malformed, 13);
}

#[test]
fn header_framing_errors() {
    let (mut a, mut b) = pair();
    let wire = a.seal(&heartbeat(1)).expect("seal");
    let mut long = wire.clone();
    long.push(0);
    assert_eq!(
        b.open(&long),
        Err(ProtoError::Malformed { field: "length" })
    );
    let mut zero_id = wire.clone();
    zero_id[28] = 0;
    assert_eq!(
        b.open(&zero_id),
        Err(ProtoError::Malformed { field: "sender id" })
    );
    let mut big_id = wire.clone();
    big_id[30] = 64;
    assert_eq!(
        b.open(&big_id),
        Err(ProtoError::Malformed {
            field: "receiver id"
        })
    );
    let mut v2 = wire.clone();
    v2[1] = 0x23;
    assert_eq!(b.open(&v2), Err(ProtoError::UnknownVersion(2)));
    let mut t9 = wire.clone();
    t9[1] = 0x19;
    assert_eq!(b.open(&t9), Err(ProtoError::UnknownType(9)));
    let mut data = wire.clone();
    data[1] = 0x10;
    assert_eq!(b.open(&data), Err(ProtoError::Malformed { field: "type" }));
    assert_eq!(b.open(&[]), Err(ProtoError::Truncated));
    assert_eq!(b.open(&[0x4E]), Err(ProtoError::Truncated));
    // Every strict prefix is truncated (or, once past the ids, still short of the tag).
    for n in 2..wire.len() {
        assert_eq!(b.open(&wire[..n]), Err(ProtoError::Truncated), "prefix {n}");
    }
    // After all that, the genuine message still goes through.
    assert_eq!(b.open(&wire), Ok(heartbeat(1)));
    let r = b.rejects();
    assert_eq!(r.unknown_version, 1);
    assert_eq!(r.unknown_type, 1);
    assert_eq!(r.truncated as usize, 2 + wire.len() - 2);
}

#[test]
fn every_bit_flip_is_rejected() {
    let (mut a, mut b) = pair();
    let msgs = all_session_messages();
    for msg in &msgs {
        let wire = a.seal(msg).expect("seal");
        for bit in 0..wire.len() * 8 {
            let mut bad = wire.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(b.open(&bad).is_err(), "{msg:?}: flipped bit {bit} accepted");
        }
        assert_eq!(b.open(&wire).as_ref(), Ok(msg), "the original still opens");
    }
}

#[test]
fn random_input_never_panics() {
    let (mut a, mut b) = pair();
    let mut table = PeerTable::new(&key(7), "b", ["a", "c"]).expect("table");
    let mut rng = TestRng::new(0xf00d);
    let valid = a.seal(&heartbeat(1)).expect("seal");
    let mut buf = vec![0u8; 600];
    for i in 0..100_000u32 {
        let len = rng.below(buf.len() as u64) as usize;
        let input = &mut buf[..len];
        match i % 3 {
            0 => rng.fill(input),
            1 => {
                // Plausible headers: valid magic and version, random rest.
                rng.fill(input);
                if len >= 2 {
                    input[0] = MAGIC;
                    input[1] = 0x10 | (rng.below(9) as u8);
                }
            }
            _ => {
                // Mutations of a valid message: a few random bytes changed, maybe cut.
                let n = len.min(valid.len());
                input[..n].copy_from_slice(&valid[..n]);
                for _ in 0..1 + rng.below(3) {
                    if n > 0 {
                        input[rng.below(n as u64) as usize] = rng.next_u64() as u8;
                    }
                }
            }
        }
        assert!(b.open(input).is_err(), "random input accepted: {input:?}");
        assert!(table.open(input).is_err());
        let _ = parse_data(input);
        let _ = classify(input);
    }
    assert!(b.rejects().total() >= 100_000 - 1);
}

#[test]
fn encoder_refuses_what_the_wire_cannot_carry() {
    let (mut a, _) = pair();
    let too_many = Message::ProxyRequest(ProxyRequest {
        id: 1,
        macs: vec![MacAddr([2, 0, 0, 0, 0, 1]); 33],
        domains: vec![0],
    });
    assert_eq!(
        a.seal(&too_many),
        Err(ProtoError::Malformed { field: "MAC count" })
    );
    let no_domain = Message::ProxyRequest(ProxyRequest {
        id: 1,
        macs: vec![MacAddr([2, 0, 0, 0, 0, 1])],
        domains: vec![],
    });
    assert_eq!(
        a.seal(&no_domain),
        Err(ProtoError::Malformed {
            field: "domain count"
        })
    );
    let mut c = SessionAuth::new(&key(7), "c", "d").expect("c");
    let long_group = Hello {
        group: "g".repeat(64),
        ..hello_body("g", 1)
    };
    assert_eq!(
        c.hello(nonce(1), &long_group),
        Err(ProtoError::Malformed { field: "group" })
    );
    assert!(SessionAuth::new(&key(7), "", "b").is_err());
    assert!(SessionAuth::new(&key(7), "a", &"b".repeat(64)).is_err());
}

#[test]
fn the_largest_message_fits_max_control_len() {
    let k = key(7);
    let (long_a, long_b) = ("a".repeat(MAX_ID_LEN), "b".repeat(MAX_ID_LEN));
    let mut a = SessionAuth::new(&k, &long_a, &long_b).expect("a");
    let mut b = SessionAuth::new(&k, &long_b, &long_a).expect("b");
    let big = Hello {
        group: "g".repeat(MAX_ID_LEN),
        macs: vec![MacAddr([2, 0, 0, 0, 0, 1]); MAX_MACS],
        ..hello_body("g", 1)
    };
    let wire = a.hello(nonce(1), &big).expect("hello");
    assert_eq!(wire.len(), 435);
    assert!(wire.len() <= MAX_CONTROL_LEN);
    assert_eq!(b.open(&wire), Ok(Message::Hello(big.clone())));
    b.accept(nonce(2), &big).expect("accept");
    let req = Message::ProxyRequest(ProxyRequest {
        id: u32::MAX,
        macs: vec![MacAddr([2, 0, 0, 0, 0, 1]); MAX_MACS],
        domains: vec![u16::MAX; MAX_DOMAINS],
    });
    let wire = b.seal(&req).expect("seal");
    assert!(wire.len() <= MAX_CONTROL_LEN, "{}", wire.len());
}

#[test]
fn heartbeat_rtt() {
    let hb = Heartbeat {
        seq: 9,
        tx_ns: 5_000,
        echo_seq: 4,
        echo_tx_ns: 1_000,
        echo_held_ns: 300,
        link: LinkFlags::new(true, true),
    };
    assert_eq!(hb.rtt_ns(2_000), Some(700));
    assert_eq!(hb.rtt_ns(1_200), None, "held longer than elapsed");
    assert_eq!(Heartbeat { echo_seq: 0, ..hb }.rtt_ns(2_000), None);
    assert!(hb.link.usable());
    assert!(!LinkFlags::new(true, false).usable());
    assert!(LinkFlags(0xfd).nic_up(), "unknown bits ignored");
}

#[test]
fn reject_counters_sum() {
    let mut c = RejectCounters::default();
    for e in [
        ProtoError::Truncated,
        ProtoError::UnknownVersion(3),
        ProtoError::UnknownType(9),
        ProtoError::BadMac,
        ProtoError::Replay { seq: 1 },
        ProtoError::UnknownPeer,
        ProtoError::WrongRecipient,
        ProtoError::NoSession,
        ProtoError::StaleSession,
        ProtoError::Malformed { field: "x" },
        ProtoError::Misuse("not counted"),
    ] {
        c.record(&e);
    }
    assert_eq!(c.total(), 10);
    assert!(c.as_pairs().iter().all(|(_, n)| *n == 1));
    let mut d = c;
    d.add(&c);
    assert_eq!(d.total(), 20);
}
