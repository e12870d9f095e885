//! `PeerTable::open` and `SessionAuth::open` on arbitrary bytes, as a node receives them
//! from anyone on the fabric.
//!
//! The receiver holds another group's key than the one the seed messages were sealed with,
//! so nothing may authenticate. Contracts checked beyond "no panic":
//! - every input is rejected, and only with a framing error, `UnknownPeer`,
//!   `WrongRecipient` or `BadMac`: no input reaches the protocol checks or the body
//!   decoders without a valid tag;
//! - the framing verdict agrees with an independent reading of the documented layout
//!   (`nicproxy_fuzz::proto::layout`), and classification errors are the same as
//!   `classify`'s;
//! - each reject is counted exactly once, and no reject changes any session's state.

#![no_main]

use control::proto::{classify, MsgType, ProtoError};
use libfuzzer_sys::fuzz_target;
use nicproxy_fuzz::proto::{layout, World, LOCAL, PEERS};

fuzz_target!(|data: &[u8]| {
    let mut w = World::foreign();
    let states: Vec<_> = w.local.sessions().iter().map(|s| s.state()).collect();
    let before = w.local.rejects().total();

    let err = match w.local.open(data) {
        Ok(m) => panic!("unauthenticated input opened as {m:?}"),
        Err(e) => e,
    };
    assert_eq!(
        w.local.rejects().total(),
        before + 1,
        "one reject counted once"
    );
    let after: Vec<_> = w.local.sessions().iter().map(|s| s.state()).collect();
    assert_eq!(states, after, "a reject changed a session's state");

    match classify(data) {
        Err(e) => assert_eq!(err, e, "open and classify disagree"),
        Ok(MsgType::Data) => assert_eq!(err, ProtoError::Malformed { field: "type" }),
        Ok(_) => {}
    }
    let framed = matches!(
        err,
        ProtoError::UnknownPeer | ProtoError::WrongRecipient | ProtoError::BadMac
    );
    let l = layout(data);
    assert_eq!(
        framed,
        l.is_some(),
        "framing verdict {err:?} vs layout {l:?}"
    );
    if let Some(l) = l {
        let sender = &data[l.sender];
        let known = PEERS.iter().any(|p| p.as_bytes() == sender);
        let to_us = &data[l.receiver] == LOCAL.as_bytes();
        let want = if !known {
            ProtoError::UnknownPeer
        } else if !to_us {
            ProtoError::WrongRecipient
        } else {
            ProtoError::BadMac
        };
        assert_eq!(err, want);
    }

    // Each session on its own, whoever the sender is.
    for i in 0..PEERS.len() {
        let s = w.local.session(i).expect("configured peer");
        let state = s.state();
        let n = s.rejects().total();
        assert!(s.open(data).is_err(), "unauthenticated input opened");
        assert_eq!(s.rejects().total(), n + 1);
        assert_eq!(s.state(), state);
    }
});
