//! The session state machine and the body decoders behind authentication: valid sealed
//! messages (the seeds), mutated and then re-tagged under the group key, interleaved with
//! local handshake operations.
//!
//! Input: records `op [len:u16be bytes]` (see `nicproxy_fuzz::proto::op`), at most 32.
//! Contracts checked beyond "no panic", for every opened message:
//! - accepted: the sender index names the message's sender; the decoded body re-encodes to
//!   exactly the bytes received (the encoding is canonical); opening the same bytes again is
//!   a `Replay` (except Hello, which only records a pending handshake); a Hello changes no
//!   state, anything else leaves the session established; no other session changes state;
//! - rejected: counted exactly once, no session changes state, and never with an error
//!   that only local misuse produces.

#![no_main]

use control::proto::{Heartbeat, Message, PeerTable, ProtoError, SessionState};
use libfuzzer_sys::fuzz_target;
use nicproxy_fuzz::proto::{encode_body, hello_body, key, layout, op, our_nonce, World, PEERS};

fn states(t: &PeerTable) -> Vec<SessionState> {
    t.sessions().iter().map(|s| s.state()).collect()
}

fn check_open(t: &mut PeerTable, msg: &[u8]) {
    let before = states(t);
    let rejects = t.rejects().total();
    match t.open(msg) {
        Err(e) => {
            assert!(
                !matches!(e, ProtoError::Misuse(_) | ProtoError::BufferTooSmall { .. }),
                "local error {e:?} for received bytes"
            );
            assert_eq!(t.rejects().total(), rejects + 1, "one reject counted once");
            assert_eq!(states(t), before, "reject {e:?} changed a session's state");
        }
        Ok((idx, m)) => {
            let l = layout(msg).expect("an accepted message is well framed");
            assert_eq!(t.rejects().total(), rejects);
            assert_eq!(PEERS[idx].as_bytes(), &msg[l.sender]);
            assert_eq!(m.msg_type(), l.msg_type);
            assert_eq!(
                encode_body(&m),
                &msg[l.body],
                "{m:?} does not re-encode to the bytes it was decoded from"
            );
            let after = states(t);
            for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                if i != idx {
                    assert_eq!(b, a, "a message from {} changed session {i}", PEERS[idx]);
                }
            }
            match m {
                Message::Hello(_) => assert_eq!(before[idx], after[idx]),
                // An Accept completes our Hello (or repeats one within its session).
                _ => assert_eq!(after[idx], SessionState::Established),
            }
            if !matches!(m, Message::Hello(_)) {
                assert!(
                    matches!(t.open(msg), Err(ProtoError::Replay { .. })),
                    "{m:?} was accepted twice"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut w = World::sealed();
    let k = key();
    let mut rest = data;
    for _ in 0..32 {
        let Some((&o, tail)) = rest.split_first() else {
            break;
        };
        rest = tail;
        let p = usize::from(o >> 4) % PEERS.len();
        match o & 0x0f {
            op::OPEN_RETAG | op::OPEN_RAW => {
                let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                    break;
                };
                let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
                let (msg, tail) = tail.split_at(len);
                rest = tail;
                let mut msg = msg.to_vec();
                if o & 0x0f == op::OPEN_RETAG {
                    nicproxy_fuzz::proto::retag(&k, &mut msg);
                }
                check_open(&mut w.local, &msg);
            }
            op::HELLO => {
                let s = w.local.session(p).expect("configured peer");
                s.hello(our_nonce(p), &hello_body(0xb))
                    .expect("a hello always seals");
                assert_eq!(s.state(), SessionState::HelloSent);
            }
            op::ACCEPT => {
                let s = w.local.session(p).expect("configured peer");
                match s.accept(our_nonce(p), &hello_body(0xb)) {
                    Ok(_) => assert_eq!(s.state(), SessionState::Established),
                    Err(e) => assert_eq!(e, ProtoError::NoSession),
                }
            }
            op::RESET => {
                let s = w.local.session(p).expect("configured peer");
                s.reset();
                assert_eq!(s.state(), SessionState::Idle);
            }
            op::SEAL => {
                let s = w.local.session(p).expect("configured peer");
                let r = s.seal(&Message::Heartbeat(Heartbeat::default()));
                assert_eq!(r.is_ok(), s.is_established(), "{r:?}");
            }
            _ => {}
        }
    }
});
