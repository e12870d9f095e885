//! Builders read back by the parsers, a hand-computed known-good frame, tcpdump's opinion of
//! the built frames, and a no-panic sweep of the parsers over hostile bytes.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::*;

const MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn garp_request_and_reply_parse_back() {
    for (kind, vlan) in [
        (GarpKind::Request, None),
        (GarpKind::Reply, None),
        (GarpKind::Request, Some(VlanTag::new(42))),
        (GarpKind::Reply, Some(VlanTag { vid: 4094, pcp: 7 })),
    ] {
        let g = Garp {
            mac: MAC,
            ip: Ipv4Addr::new(10, 0, 0, 5),
            vlan,
            kind,
        };
        let mut buf = [0xeeu8; 128];
        let n = g.build(&mut buf).unwrap();
        assert_eq!(n, 60);
        let nb = parse_neighbour(&buf[..n]).unwrap().unwrap();
        assert_eq!(nb.l2.dst, MacAddr::BROADCAST);
        assert_eq!(nb.l2.src, MAC);
        assert_eq!(nb.l2.vlan, vlan.map(|t| t.vid));
        let NeighbourMsg::Arp(a) = nb.msg else {
            panic!("not ARP: {nb:?}")
        };
        assert!(a.is_gratuitous());
        assert_eq!(a.sender_mac, MAC);
        assert_eq!(a.sender_ip, Ipv4Addr::new(10, 0, 0, 5));
        match kind {
            GarpKind::Request => {
                assert_eq!(a.operation, ArpOp::Request);
                assert_eq!(a.target_mac, MacAddr::ZERO);
            }
            GarpKind::Reply => {
                assert_eq!(a.operation, ArpOp::Reply);
                assert_eq!(a.target_mac, MAC);
            }
        }
        // Padding is zeroed, whatever the buffer held before.
        let arp_end = nb.l2.payload_offset + 28;
        assert!(buf[arp_end..n].iter().all(|&b| b == 0));
    }
}

#[test]
fn garp_known_good_bytes() {
    let g = Garp {
        mac: MAC,
        ip: Ipv4Addr::new(192, 0, 2, 7),
        vlan: None,
        kind: GarpKind::Request,
    };
    let mut buf = [0u8; 60];
    g.build(&mut buf).unwrap();
    let mut want = hex(concat!(
        "ffffffffffff",
        "02005e100001",
        "0806", // Ethernet
        "0001",
        "0800",
        "06",
        "04",
        "0001", // Ethernet/IPv4, request
        "02005e100001",
        "c0000207", // sender
        "000000000000",
        "c0000207", // target
    ));
    want.resize(60, 0);
    assert_eq!(&buf[..], &want[..]);
}

#[test]
fn unsolicited_na_known_good_bytes() {
    // Computed independently (a short Python script summing the pseudo-header and the
    // message by hand): checksum 0x9afc.
    let want = hex(concat!(
        "333300000001",
        "02005e100001",
        "86dd",
        "60000000",
        "0020",
        "3a",
        "ff",
        "20010db8000000000000000000000010",
        "ff020000000000000000000000000001",
        "88",
        "00",
        "9afc",
        "20000000",
        "20010db8000000000000000000000010",
        "0201",
        "02005e100001",
    ));
    let na = UnsolicitedNa {
        mac: MAC,
        target: "2001:db8::10".parse().unwrap(),
        router: false,
        vlan: None,
    };
    let mut buf = [0u8; 128];
    let n = na.build(&mut buf).unwrap();
    assert_eq!(n, 86);
    assert_eq!(&buf[..n], &want[..]);
}

#[test]
fn unsolicited_na_parses_back_with_flags_and_option() {
    for (vlan, router) in [(None, false), (Some(VlanTag::new(7)), true)] {
        let target: Ipv6Addr = "fe80::5e:10ff:fe00:1".parse().unwrap();
        let na = UnsolicitedNa {
            mac: MAC,
            target,
            router,
            vlan,
        };
        let mut buf = [0u8; 128];
        let n = na.build(&mut buf).unwrap();
        assert_eq!(n, na.frame_len());
        let nb = parse_neighbour(&buf[..n]).unwrap().unwrap();
        assert_eq!(nb.l2.dst.to_string(), "33:33:00:00:00:01");
        assert_eq!(nb.l2.src, MAC);
        assert_eq!(nb.l2.vlan, vlan.map(|t| t.vid));
        let NeighbourMsg::Ndp {
            src,
            dst,
            hop_limit,
            repr,
        } = nb.msg
        else {
            panic!("not NDP: {nb:?}")
        };
        assert_eq!(src, target);
        assert_eq!(dst, "ff02::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(hop_limit, 255);
        assert_eq!(
            repr,
            NdpRepr::NeighborAdvert {
                flags: NaFlags {
                    router,
                    solicited: false,
                    override_flag: true
                },
                target,
                target_ll: Some(MAC),
            }
        );
        // Trailing Ethernet padding does not upset the parser.
        let mut padded = buf[..n].to_vec();
        padded.resize(n + 10, 0);
        assert!(parse_neighbour(&padded).unwrap().is_some());
    }
}

#[test]
fn builders_reject_small_buffers_and_bad_vids() {
    let g = Garp {
        mac: MAC,
        ip: Ipv4Addr::LOCALHOST,
        vlan: None,
        kind: GarpKind::Request,
    };
    assert!(matches!(
        g.build(&mut [0u8; 59]),
        Err(WireError::BufferTooSmall { need: 60, .. })
    ));
    let na = UnsolicitedNa {
        mac: MAC,
        target: Ipv6Addr::LOCALHOST,
        router: false,
        vlan: Some(VlanTag::new(5000)),
    };
    assert!(matches!(
        na.build(&mut [0u8; 128]),
        Err(WireError::BadVlanId { vid: 5000, .. })
    ));
    assert!(matches!(
        UnsolicitedNa { vlan: None, ..na }.build(&mut [0u8; 85]),
        Err(WireError::BufferTooSmall { need: 86, .. })
    ));
}

#[test]
fn recognises_ns_and_ignores_other_traffic() {
    // A Neighbor Solicitation built from the parts.
    let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let target: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let dst: Ipv6Addr = "ff02::1:ff00:2".parse().unwrap();
    let mut f = [0u8; 86];
    let mut off = ethernet::write_header(
        &mut f,
        MacAddr::ipv6_multicast(&dst),
        MAC,
        None,
        ethernet::ethertype::IPV6,
    )
    .unwrap();
    off += ipv6::Ipv6Repr {
        src,
        dst,
        next_header: 58,
        payload_len: 32,
        hop_limit: 255,
    }
    .emit(&mut f[off..])
    .unwrap();
    let ns = NdpRepr::NeighborSolicit {
        target,
        source_ll: Some(MAC),
    };
    ns.emit(&src, &dst, &mut f[off..]).unwrap();
    let nb = parse_neighbour(&f).unwrap().unwrap();
    assert!(matches!(nb.msg, NeighbourMsg::Ndp { repr, .. } if repr == ns));

    // UDP over IPv6 and plain IPv4: well-formed, not neighbour traffic.
    f[14 + 6] = 17;
    assert_eq!(parse_neighbour(&f).unwrap(), None);
    let mut v4 = [0u8; 60];
    ethernet::write_header(&mut v4, MAC, MAC, None, 0x0800).unwrap();
    assert_eq!(parse_neighbour(&v4).unwrap(), None);
    // A truncated ARP is an error, not a panic.
    let mut arp = [0u8; 60];
    Garp {
        mac: MAC,
        ip: Ipv4Addr::LOCALHOST,
        vlan: None,
        kind: GarpKind::Reply,
    }
    .build(&mut arp)
    .unwrap();
    assert!(matches!(
        parse_neighbour(&arp[..30]),
        Err(WireError::Truncated { .. })
    ));
}

/// Removes a temp file when the test ends, pass or fail.
struct TempFile(std::path::PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn tcpdump_decodes_built_frames() {
    let Ok(out) = std::process::Command::new("tcpdump")
        .arg("--version")
        .output()
    else {
        eprintln!("SKIPPED: tcpdump is not installed");
        return;
    };
    assert!(out.status.success());
    let path = std::env::temp_dir().join(format!("nicproxy-wire-{}.pcap", std::process::id()));
    let _guard = TempFile(path.clone());
    let ip = Ipv4Addr::new(10, 0, 0, 5);
    let garp = |vlan, kind| Garp {
        mac: MAC,
        ip,
        vlan,
        kind,
    };
    let na = UnsolicitedNa {
        mac: MAC,
        target: "2001:db8::10".parse().unwrap(),
        router: false,
        vlan: None,
    };
    let mut buf = [0u8; 128];
    let mut frames = Vec::new();
    let n = garp(None, GarpKind::Request).build(&mut buf).unwrap();
    frames.push(buf[..n].to_vec());
    let n = garp(Some(VlanTag::new(42)), GarpKind::Reply)
        .build(&mut buf)
        .unwrap();
    frames.push(buf[..n].to_vec());
    let n = na.build(&mut buf).unwrap();
    frames.push(buf[..n].to_vec());
    let mut w = pcap::PcapWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    for (i, f) in (1u64..).zip(&frames) {
        w.write_frame(std::time::Duration::from_secs(i), f).unwrap();
    }
    w.into_inner().unwrap();
    let out = std::process::Command::new("tcpdump")
        .args(["-nn", "-e", "-vv", "-r"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump failed: {text} {:?}",
        out.stderr
    );
    println!("{text}");
    assert!(
        text.contains("Request who-has 10.0.0.5 tell 10.0.0.5"),
        "{text}"
    );
    assert!(text.contains("vlan 42"), "{text}");
    assert!(
        text.contains("Reply 10.0.0.5 is-at 02:00:5e:10:00:01"),
        "{text}"
    );
    assert!(text.contains("neighbor advertisement"), "{text}");
    assert!(text.contains("tgt is 2001:db8::10"), "{text}");
    assert!(text.contains("Flags [override]"), "{text}");
    assert!(text.contains("hlim 255"), "{text}");
    assert!(text.contains("icmp6 sum ok"), "{text}");
    assert!(!text.contains("bad"), "{text}");
}

/// Parsers see hostile bytes from the NIC and from peers: none may panic. A deterministic
/// xorshift sweep over random, truncated and mutated-valid frames.
#[test]
fn parsers_never_panic_on_garbage() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let mut buf = [0u8; 128];
    let n = UnsolicitedNa {
        mac: MAC,
        target: Ipv6Addr::LOCALHOST,
        router: true,
        vlan: Some(VlanTag::new(3)),
    }
    .build(&mut buf)
    .unwrap();
    seeds.push(buf[..n].to_vec());
    let n = Garp {
        mac: MAC,
        ip: Ipv4Addr::LOCALHOST,
        vlan: None,
        kind: GarpKind::Request,
    }
    .build(&mut buf)
    .unwrap();
    seeds.push(buf[..n].to_vec());
    let mut ok = 0usize;
    for i in 0..200_000u64 {
        let mut f = if i % 3 == 0 {
            let len = (rnd() % 130) as usize;
            (0..len).map(|_| rnd() as u8).collect()
        } else {
            seeds[(i % 2) as usize].clone()
        };
        if !f.is_empty() {
            for _ in 0..(rnd() % 4) {
                let at = (rnd() as usize) % f.len();
                f[at] = rnd() as u8;
            }
            let cut = (rnd() as usize) % (f.len() + 1);
            if i % 5 == 0 {
                f.truncate(cut);
            }
        }
        let _ = parse_l2(&f);
        if let Ok(Some(_)) = parse_neighbour(&f) {
            ok += 1;
        }
        if let Ok(v) = EthernetFrame::new_checked(&f[..]) {
            let _ = (v.dst(), v.src(), v.ethertype(), v.payload());
        }
    }
    // Some mutations leave a valid frame: the sweep reached the deep parsers.
    assert!(ok > 1000, "only {ok} frames parsed");
}
