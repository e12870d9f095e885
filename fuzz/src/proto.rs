//! The session protocol world: node "node-b" (us) and three peers, one in each handshake
//! state, with fixed keys and nonces so that sealed seed messages stay valid forever.

use std::num::NonZeroU64;
use std::ops::Range;
use std::sync::OnceLock;

use control::config::{GroupKey, MacAddr};
use control::proto::{
    Capabilities, Hello, LinkFlags, Message, MsgType, PeerTable, SessionAuth, MAGIC, MAX_ID_LEN,
    TAG_LEN, VERSION,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Our node id.
pub const LOCAL: &str = "node-b";
/// The configured peers, in table order: "node-a" has an established session (it opened
/// it), we sent "node-c" a Hello it has not answered yet, "node-d" is idle.
pub const PEERS: [&str; 3] = ["node-a", "node-c", "node-d"];
/// Group name carried in the Hello bodies.
pub const GROUP: &str = "fuzz";

/// The group key every seed message is sealed with.
pub fn key() -> GroupKey {
    GroupKey::from_bytes(vec![0x42; 32]).expect("32 bytes is a valid key length")
}

/// Another group's key: nothing sealed with [`key`] may authenticate under it.
pub fn other_key() -> GroupKey {
    GroupKey::from_bytes(vec![0x24; 32]).expect("32 bytes is a valid key length")
}

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("fixture nonces are non-zero")
}

/// The nonce we use towards peer `p` (index into [`PEERS`]) in every Hello or Accept.
pub fn our_nonce(p: usize) -> NonZeroU64 {
    nz(0xB1 + p as u64)
}

/// The nonce peer `p` uses in every Hello or Accept it sends.
pub fn peer_nonce(p: usize) -> NonZeroU64 {
    nz(0xA1 + 0x10 * p as u64)
}

/// A Hello/Accept body whose one MAC ends in `mac_last`.
pub fn hello_body(mac_last: u8) -> Hello {
    Hello {
        max_version: VERSION,
        capabilities: Capabilities::PROXY.union(Capabilities::ANNOUNCE_ON_BEHALF),
        link: LinkFlags::new(true, true),
        group: GROUP.to_string(),
        macs: vec![MacAddr([2, 0, 0, 0, 0, mac_last])],
    }
}

/// Our side (the table that receives fuzzed bytes) and each peer's own session with us
/// (`remotes[p]`: local id `PEERS[p]`, peer id [`LOCAL`]), consistent with each other.
#[derive(Clone, Debug)]
pub struct World {
    /// Node "node-b": one session per peer.
    pub local: PeerTable,
    /// The peers' ends, which seal the seed messages.
    pub remotes: Vec<SessionAuth>,
}

impl World {
    /// Builds the world under `key`: node-a established (it initiated), node-c with our
    /// Hello pending at its end, node-d idle.
    pub fn new(key: &GroupKey) -> World {
        let mut local = PeerTable::new(key, LOCAL, PEERS).expect("fixture ids are valid");
        let mut remotes: Vec<SessionAuth> = PEERS
            .iter()
            .map(|p| SessionAuth::new(key, p, LOCAL).expect("fixture ids are valid"))
            .collect();

        let hello = remotes[0]
            .hello(peer_nonce(0), &hello_body(0xa))
            .expect("hello seals");
        let (idx, _) = local.open(&hello).expect("node-a's hello opens");
        let accept = local
            .session(idx)
            .expect("node-a's session")
            .accept(our_nonce(0), &hello_body(0xb))
            .expect("accept seals");
        remotes[0]
            .open(&accept)
            .expect("our accept opens at node-a");

        let hello = local
            .session(1)
            .expect("node-c's session")
            .hello(our_nonce(1), &hello_body(0xb))
            .expect("hello seals");
        remotes[1].open(&hello).expect("our hello opens at node-c");
        World { local, remotes }
    }

    /// A copy of the world under [`key`], built once.
    pub fn sealed() -> World {
        static W: OnceLock<World> = OnceLock::new();
        W.get_or_init(|| World::new(&key())).clone()
    }

    /// A copy of the world under [`other_key`], built once.
    pub fn foreign() -> World {
        static W: OnceLock<World> = OnceLock::new();
        W.get_or_init(|| World::new(&other_key())).clone()
    }
}

/// Where the parts of a control message lie, worked out from the layout table in the
/// `control::proto` module doc independently of the crate's parser (a differential check of
/// its framing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The message type.
    pub msg_type: MsgType,
    /// The sender id.
    pub sender: Range<usize>,
    /// The receiver id.
    pub receiver: Range<usize>,
    /// The body.
    pub body: Range<usize>,
    /// The tag (always the last [`TAG_LEN`] bytes).
    pub tag: Range<usize>,
}

/// The layout of a well-framed control message, or `None` when its framing is broken
/// (wrong magic, version or type, an id length outside 1..=63, or a total length that
/// disagrees with the declared body length).
pub fn layout(b: &[u8]) -> Option<Layout> {
    if b.len() < 29 || b[0] != MAGIC || b[1] >> 4 != VERSION {
        return None;
    }
    let msg_type = MsgType::from_nibble(b[1] & 0x0f)?;
    if msg_type == MsgType::Data {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let s = usize::from(b[28]);
    if s == 0 || s > MAX_ID_LEN {
        return None;
    }
    let r = usize::from(*b.get(29 + s)?);
    if r == 0 || r > MAX_ID_LEN {
        return None;
    }
    let body = 30 + s + r..30 + s + r + body_len;
    let tag = body.end..body.end + TAG_LEN;
    (tag.end == b.len()).then_some(Layout {
        msg_type,
        sender: 29..29 + s,
        receiver: 30 + s..30 + s + r,
        body,
        tag,
    })
}

/// Replaces the tag of a well-framed message with the correct one under `key`, so that a
/// mutated message gets past authentication and into the protocol checks and body decoders.
/// Leaves badly framed messages alone.
pub fn retag(key: &GroupKey, msg: &mut [u8]) {
    if layout(msg).is_none() {
        return;
    }
    let split = msg.len() - TAG_LEN;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(&msg[..split]);
    let tag = mac.finalize().into_bytes();
    msg[split..].copy_from_slice(&tag[..TAG_LEN]);
}

/// The body bytes `msg` encodes to, obtained through the public sealing API (a Hello for
/// Hello/Accept, whose bodies share one encoding; an established session's `seal` for the
/// rest).
pub fn encode_body(msg: &Message) -> Vec<u8> {
    let sealed = match msg {
        Message::Hello(h) | Message::Accept(h) => {
            let mut s = SessionAuth::new(&key(), "x", "y").expect("fixture ids are valid");
            s.hello(nz(1), h)
        }
        other => World::sealed().remotes[0].seal(other),
    }
    .expect("a decoded message re-encodes");
    let l = layout(&sealed).expect("sealed messages are well framed");
    sealed[l.body].to_vec()
}

/// Ops of the `proto_sealed` input format: a sequence of records `op [len:u16be bytes]`.
/// The low nibble of `op` is the operation, the high nibble (mod 3) the peer it concerns.
pub mod op {
    /// `op len:u16be bytes`: re-tag `bytes` under [`super::key`], then open them.
    pub const OPEN_RETAG: u8 = 0;
    /// `op len:u16be bytes`: open `bytes` as they are.
    pub const OPEN_RAW: u8 = 1;
    /// Start a session with the peer: our Hello with [`super::our_nonce`].
    pub const HELLO: u8 = 2;
    /// Answer the peer's pending Hello with [`super::our_nonce`].
    pub const ACCEPT: u8 = 3;
    /// Forget the session with the peer.
    pub const RESET: u8 = 4;
    /// Seal a heartbeat to the peer (advances our sequence; fails without a session).
    pub const SEAL: u8 = 5;
}

/// One record of an `OPEN_*` op: `op`, then the big-endian length and the bytes.
pub fn open_record(op: u8, msg: &[u8]) -> Vec<u8> {
    let len = u16::try_from(msg.len()).expect("seed messages are short");
    let mut out = vec![op];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    out
}
