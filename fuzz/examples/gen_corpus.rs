//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`: valid sealed
//! messages of every type and handshake step, data messages, representative frames from
//! every source, ARP and NS/NA frames, and the example configs. The seeds are committed;
//! run this again after a change of the fixtures or of a wire format:
//!
//! ```text
//! cd fuzz && cargo run --example gen_corpus
//! ```

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use control::config::MacAddr as CfgMac;
use control::proto::{
    encode_data_header, AckStatus, Heartbeat, LinkFlags, Message, ProxyAck, ProxyRelease,
    ProxyRequest,
};
use dataplane::steer::{SessionId, Source};
use dataplane::wire::ethernet::{ethertype, write_header, VlanTag};
use dataplane::wire::icmpv6::{NaFlags, NdpRepr};
use dataplane::wire::ipv6::{Ipv6Repr, NEXT_HEADER_ICMPV6};
use dataplane::wire::{ArpOp, ArpRepr, Garp, GarpKind, MacAddr, UnsolicitedNa};
use nicproxy_fuzz::proto::{hello_body, op, open_record, our_nonce, peer_nonce, World};
use nicproxy_fuzz::steer::{proxied_mac, source_byte, DROP_MAC, LOCAL_MAC, NIC_MAC};

fn dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&d).expect("create corpus directory");
    d
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    fs::write(dir(target).join(name), bytes).expect("write seed");
}

/// Every message node-a can send in its established session, sealed in order.
fn session_messages() -> Vec<(&'static str, Message)> {
    let mac = CfgMac([2, 0, 0, 0, 0, 0x0a]);
    vec![
        (
            "heartbeat",
            Message::Heartbeat(Heartbeat {
                seq: 7,
                tx_ns: 1_000_000,
                echo_seq: 6,
                echo_tx_ns: 990_000,
                echo_held_ns: 1_500,
                link: LinkFlags::new(true, true),
            }),
        ),
        (
            "proxy-request",
            Message::ProxyRequest(ProxyRequest {
                id: 3,
                macs: vec![mac, CfgMac([2, 0, 0, 0, 0, 0x1a])],
                domains: vec![0, 10],
            }),
        ),
        (
            "proxy-ack",
            Message::ProxyAck(ProxyAck {
                id: 3,
                status: AckStatus::Conflict,
            }),
        ),
        (
            "proxy-release",
            Message::ProxyRelease(ProxyRelease { id: 4 }),
        ),
        (
            "link-state",
            Message::LinkState(LinkFlags::new(false, true)),
        ),
    ]
}

fn proto() {
    let mut w = World::sealed();
    let mut all = Vec::new();
    for (name, m) in session_messages() {
        let bytes = w.remotes[0].seal(&m).expect("seal");
        write("proto_open", &format!("a-{name}"), &bytes);
        write(
            "proto_sealed",
            &format!("a-{name}"),
            &open_record(op::OPEN_RETAG, &bytes),
        );
        all.extend(open_record(op::OPEN_RAW, &bytes));
    }
    // The whole session in one input, then a replay of its last message.
    let last = w.remotes[0]
        .seal(&Message::LinkState(LinkFlags::new(true, true)))
        .expect("seal");
    all.extend(open_record(op::OPEN_RAW, &last));
    all.extend(open_record(op::OPEN_RAW, &last));
    write("proto_sealed", "a-session-and-replay", &all);

    // node-c answers the Hello we sent it.
    let mut w = World::sealed();
    let accept = w.remotes[1]
        .accept(peer_nonce(1), &hello_body(0xc))
        .expect("accept");
    write("proto_open", "c-accept", &accept);
    write(
        "proto_sealed",
        "c-accept",
        &open_record(op::OPEN_RETAG, &accept),
    );

    // node-d opens a session; we accept; it sends a heartbeat in the new session.
    let mut w = World::sealed();
    let hello = w.remotes[2]
        .hello(peer_nonce(2), &hello_body(0xd))
        .expect("hello");
    write("proto_open", "d-hello", &hello);
    let mut seed = open_record(op::OPEN_RETAG, &hello);
    seed.push(op::ACCEPT | (2 << 4));
    let (_, _) = w.local.open(&hello).expect("hello opens");
    let ours = w
        .local
        .session(2)
        .expect("node-d")
        .accept(our_nonce(2), &hello_body(0xb))
        .expect("accept");
    w.remotes[2]
        .open(&ours)
        .expect("our accept opens at node-d");
    let hb = w.remotes[2]
        .seal(&session_messages()[0].1)
        .expect("heartbeat");
    seed.extend(open_record(op::OPEN_RETAG, &hb));
    write("proto_sealed", "d-handshake-heartbeat", &seed);

    // We open a session to node-d; it answers.
    let mut w = World::sealed();
    let ours = w
        .local
        .session(2)
        .expect("node-d")
        .hello(our_nonce(2), &hello_body(0xb))
        .expect("hello");
    w.remotes[2].open(&ours).expect("our hello opens at node-d");
    let acc = w.remotes[2]
        .accept(peer_nonce(2), &hello_body(0xd))
        .expect("accept");
    let mut seed = vec![op::HELLO | (2 << 4)];
    seed.extend(open_record(op::OPEN_RETAG, &acc));
    seed.push(op::SEAL | (2 << 4));
    seed.push(op::RESET | (2 << 4));
    seed.extend(open_record(op::OPEN_RETAG, &acc));
    write("proto_sealed", "d-hello-accept-reset", &seed);

    // Data messages: a minimal frame and a tagged one.
    let mut m = vec![0u8; 4 + 14];
    encode_data_header(&mut m).expect("header");
    m[4..10].copy_from_slice(&[0xff; 6]);
    m[16..18].copy_from_slice(&ethertype::ARP.to_be_bytes());
    write("proto_data", "data-min", &m);
    let mut m = vec![0u8; 4 + 64];
    encode_data_header(&mut m).expect("header");
    write_header(
        &mut m[4..],
        LOCAL_MAC,
        MacAddr([2, 0, 0, 0, 0, 9]),
        Some(VlanTag::new(10)),
        ethertype::IPV4,
    )
    .expect("header");
    write("proto_data", "data-vlan", &m);
    write("proto_data", "control-hello", &hello);
}

fn frame(dst: MacAddr, src: MacAddr, vlan: Option<u16>, et: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    let n = write_header(&mut f, dst, src, vlan.map(VlanTag::new), et).expect("header");
    if n < f.len() {
        f[n] = 0x45;
    }
    f
}

fn steer() {
    let lan = MacAddr([2, 0, 0, 0, 0x99, 1]);
    let lldp = MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x0e]);
    let cases: Vec<(&str, Source, Vec<u8>)> = vec![
        (
            "nic-to-local",
            Source::Nic,
            frame(LOCAL_MAC, lan, None, ethertype::IPV4, 64),
        ),
        (
            "nic-to-proxied",
            Source::Nic,
            frame(proxied_mac(0, 2), lan, None, ethertype::IPV4, 64),
        ),
        (
            "nic-broadcast",
            Source::Nic,
            frame(MacAddr::BROADCAST, lan, None, ethertype::ARP, 60),
        ),
        (
            "nic-lldp",
            Source::Nic,
            frame(lldp, lan, None, ethertype::LLDP, 60),
        ),
        (
            "nic-vlan10-inactive",
            Source::Nic,
            frame(LOCAL_MAC, lan, Some(10), ethertype::IPV4, 64),
        ),
        (
            "nic-drop",
            Source::Nic,
            frame(DROP_MAC, lan, None, ethertype::IPV4, 64),
        ),
        (
            "kernel-unicast",
            Source::Kernel,
            frame(lan, LOCAL_MAC, None, ethertype::IPV4, 64),
        ),
        (
            "kernel-broadcast-v10",
            Source::Kernel,
            frame(MacAddr::BROADCAST, LOCAL_MAC, Some(10), ethertype::ARP, 60),
        ),
        (
            "kernel-probe",
            Source::Kernel,
            frame(MacAddr::BROADCAST, NIC_MAC, None, ethertype::ARP, 60),
        ),
        (
            "kernel-probe-v20",
            Source::Kernel,
            frame(MacAddr::BROADCAST, NIC_MAC, Some(20), ethertype::ARP, 60),
        ),
        (
            "kernel-v30-nopath",
            Source::Kernel,
            frame(lan, LOCAL_MAC, Some(30), ethertype::IPV4, 64),
        ),
        (
            "s2-client-to-lan",
            Source::Session(SessionId(2)),
            frame(lan, proxied_mac(0, 2), None, ethertype::IPV4, 64),
        ),
        (
            "s2-client-broadcast",
            Source::Session(SessionId(2)),
            frame(
                MacAddr::BROADCAST,
                proxied_mac(0, 2),
                None,
                ethertype::ARP,
                60,
            ),
        ),
        (
            "s2-spoofed",
            Source::Session(SessionId(2)),
            frame(lan, proxied_mac(0, 1), None, ethertype::IPV4, 64),
        ),
        (
            "s1-uplink-v10",
            Source::Session(SessionId(1)),
            frame(MacAddr::BROADCAST, lan, Some(10), ethertype::ARP, 60),
        ),
        (
            "s3-remote-v20",
            Source::Session(SessionId(3)),
            frame(proxied_mac(2, 5), lan, Some(20), ethertype::IPV6, 80),
        ),
        ("s5-qinq", Source::Session(SessionId(5)), {
            let mut f = frame(
                MacAddr::BROADCAST,
                proxied_mac(2, 5),
                Some(20),
                ethertype::VLAN,
                70,
            );
            f[12..14].copy_from_slice(&ethertype::QINQ.to_be_bytes());
            f[18..20].copy_from_slice(&7u16.to_be_bytes());
            f[20..22].copy_from_slice(&ethertype::IPV4.to_be_bytes());
            f
        }),
        (
            "s70-out-of-range",
            Source::Session(SessionId(70)),
            frame(lan, LOCAL_MAC, None, ethertype::IPV4, 64),
        ),
    ];
    for (name, src, f) in cases {
        let mut seed = vec![source_byte(src)];
        seed.extend_from_slice(&f);
        write("steer", name, &seed);
    }
}

fn wire() {
    let mac = MacAddr([2, 0, 0, 0, 0, 7]);
    let mut buf = [0u8; 128];
    let put = |name: &str, fix: u8, f: &[u8]| {
        let mut seed = vec![fix];
        seed.extend_from_slice(f);
        write("wire_neighbour", name, &seed);
    };
    for (name, kind, vlan) in [
        ("garp-request", GarpKind::Request, None),
        ("garp-reply-vlan", GarpKind::Reply, Some(VlanTag::new(10))),
    ] {
        let n = Garp {
            mac,
            ip: Ipv4Addr::new(10, 0, 0, 7),
            vlan,
            kind,
        }
        .build(&mut buf)
        .expect("garp");
        put(name, 0, &buf[..n]);
    }
    let n = UnsolicitedNa {
        mac,
        target: "2001:db8::7".parse().expect("address"),
        router: false,
        vlan: Some(VlanTag::new(3)),
    }
    .build(&mut buf)
    .expect("na");
    put("unsolicited-na-vlan", 1, &buf[..n]);

    // A Neighbor Solicitation with a source link-layer option, built by hand.
    let src: Ipv6Addr = "fe80::7".parse().expect("address");
    let dst: Ipv6Addr = "ff02::1:ff00:1".parse().expect("address");
    let ns = NdpRepr::NeighborSolicit {
        target: "2001:db8::1".parse().expect("address"),
        source_ll: Some(mac),
    };
    let mut f = vec![0u8; 14 + 40 + ns.len()];
    write_header(
        &mut f,
        MacAddr::ipv6_multicast(&dst),
        mac,
        None,
        ethertype::IPV6,
    )
    .expect("eth");
    Ipv6Repr {
        src,
        dst,
        next_header: NEXT_HEADER_ICMPV6,
        payload_len: ns.len() as u16,
        hop_limit: 255,
    }
    .emit(&mut f[14..])
    .expect("ipv6");
    ns.emit(&src, &dst, &mut f[54..]).expect("ns");
    put("ns-source-ll", 1, &f);

    // A bare NA (the target also reads the whole input as an ICMPv6 message).
    let na = NdpRepr::NeighborAdvert {
        flags: NaFlags {
            router: true,
            solicited: true,
            override_flag: false,
        },
        target: src,
        target_ll: Some(mac),
    };
    let n = na
        .emit(
            &Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            &Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            &mut buf,
        )
        .expect("na");
    put("bare-na", 0, &buf[..n]);

    // An ARP request inside QinQ.
    let mut f = vec![0u8; 22 + 28];
    write_header(
        &mut f,
        MacAddr::BROADCAST,
        mac,
        Some(VlanTag::new(100)),
        ethertype::VLAN,
    )
    .expect("eth");
    f[12..14].copy_from_slice(&ethertype::QINQ.to_be_bytes());
    f[18..20].copy_from_slice(&5u16.to_be_bytes());
    f[20..22].copy_from_slice(&ethertype::ARP.to_be_bytes());
    ArpRepr {
        operation: ArpOp::Request,
        sender_mac: mac,
        sender_ip: Ipv4Addr::new(10, 0, 0, 7),
        target_mac: MacAddr::ZERO,
        target_ip: Ipv4Addr::new(10, 0, 0, 1),
    }
    .emit(&mut f[22..])
    .expect("arp");
    put("arp-qinq", 0, &f);
}

fn config() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for entry in fs::read_dir(&configs).expect("configs/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            write("config", &name, &fs::read(&path).expect("read config"));
        }
    }
    write(
        "config",
        "group-key",
        b"000102030405060708090a0b0c0d0e0f\n101112131415161718191A1B1C1D1E1F\n",
    );
}

fn main() {
    proto();
    steer();
    wire();
    config();
    println!("seeds written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
