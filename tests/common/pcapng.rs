//! Reading back the pcapng files `nicproxy capture` writes.

/// A pcapng block of interest, read back from a file.
#[derive(Debug)]
pub enum Block {
    /// An interface description.
    Interface {
        /// Its `if_name` option.
        name: String,
    },
    /// An enhanced packet.
    Packet {
        /// Its interface's index.
        interface: u32,
        /// The captured bytes.
        data: Vec<u8>,
        /// Its comment option (nicproxy writes the frame's path there).
        comment: String,
        /// Its `epb_flags` option.
        flags: u32,
    },
}

/// Reads a little-endian pcapng file (what nicproxy writes); panics on anything else.
pub fn read_pcapng(file: &[u8]) -> Vec<Block> {
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0x0A0D_0D0A, "not pcapng: no section header");
    assert_eq!(u32_at(8), 0x1A2B_3C4D, "not little-endian pcapng");
    let mut out = Vec::new();
    let mut at = 0;
    while at < file.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
        assert!(
            len >= 12 && len % 4 == 0 && at + len <= file.len(),
            "block at {at}"
        );
        assert_eq!(
            u32_at(at + len - 4) as usize,
            len,
            "trailing length at {at}"
        );
        let body = &file[at + 8..at + len - 4];
        let opts = |mut o: &[u8]| {
            let mut v = Vec::new();
            while o.len() >= 4 {
                let code = u16::from_le_bytes([o[0], o[1]]);
                let l = usize::from(u16::from_le_bytes([o[2], o[3]]));
                if code == 0 {
                    break;
                }
                v.push((code, o[4..4 + l].to_vec()));
                o = &o[4 + l + (4 - l % 4) % 4..];
            }
            v
        };
        match kind {
            1 => {
                let name = opts(&body[8..])
                    .into_iter()
                    .find(|(c, _)| *c == 2)
                    .map(|(_, v)| String::from_utf8(v).unwrap())
                    .unwrap_or_default();
                out.push(Block::Interface { name });
            }
            6 => {
                let w = |i: usize| u32::from_le_bytes(body[i * 4..i * 4 + 4].try_into().unwrap());
                let caplen = w(3) as usize;
                let data = body[20..20 + caplen].to_vec();
                let mut comment = String::new();
                let mut flags = 0;
                for (c, v) in opts(&body[20 + caplen + (4 - caplen % 4) % 4..]) {
                    match c {
                        1 => comment = String::from_utf8(v).unwrap(),
                        2 => flags = u32::from_le_bytes(v[..4].try_into().unwrap()),
                        _ => {}
                    }
                }
                out.push(Block::Packet {
                    interface: w(0),
                    data,
                    comment,
                    flags,
                });
            }
            _ => {}
        }
        at += len;
    }
    out
}
