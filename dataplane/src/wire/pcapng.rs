//! A small pcapng writer (the IETF draft "PCAP Next Generation Dump File Format"): one
//! section, Ethernet interfaces, enhanced packet blocks with nanosecond timestamps, a
//! direction flag and a comment. pcapng rather than pcap because one file then names every
//! port a frame was seen on, and carries per-frame notes (the steering decision) that
//! Wireshark shows and tcpdump skips. Off the hot path: it writes through `std::io::Write`.
//!
//! Everything is written little-endian; the byte-order magic of the section header tells
//! readers so.

use std::io::{self, Write};
use std::time::Duration;

/// Block types.
mod block {
    pub const SECTION_HEADER: u32 = 0x0A0D_0D0A;
    pub const INTERFACE_DESCRIPTION: u32 = 1;
    pub const ENHANCED_PACKET: u32 = 6;
}

/// Option codes.
mod opt {
    pub const END: u16 = 0;
    pub const COMMENT: u16 = 1;
    pub const SHB_USERAPPL: u16 = 4;
    pub const IF_NAME: u16 = 2;
    pub const IF_DESCRIPTION: u16 = 3;
    pub const IF_TSRESOL: u16 = 9;
    pub const EPB_FLAGS: u16 = 2;
}

const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const LINKTYPE_ETHERNET: u16 = 1;
/// Longest text option written: option lengths are 16 bits, and a note this long is
/// already far past useful.
const MAX_TEXT: usize = 4096;

/// The direction flag of a packet (`epb_flags` bits 0-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received on its interface.
    Inbound,
    /// Sent out of its interface.
    Outbound,
}

/// Writes one pcapng section of Ethernet frames.
#[derive(Debug)]
pub struct PcapngWriter<W: Write> {
    out: W,
    interfaces: u32,
    snaplen: u32,
}

/// Options of one block, encoded as they go into the file.
#[derive(Default)]
struct Options(Vec<u8>);

impl Options {
    fn push(&mut self, code: u16, value: &[u8]) {
        let len = value.len().min(usize::from(u16::MAX));
        self.0.extend_from_slice(&code.to_le_bytes());
        // len <= u16::MAX (just capped).
        self.0.extend_from_slice(&(len as u16).to_le_bytes());
        self.0.extend_from_slice(&value[..len]);
        self.0.resize(self.0.len() + pad(len), 0);
    }

    fn text(&mut self, code: u16, s: &str) {
        self.push(code, truncate_utf8(s, MAX_TEXT).as_bytes());
    }

    /// The encoded options with their end marker, or nothing when there are none.
    fn finish(mut self) -> Vec<u8> {
        if !self.0.is_empty() {
            self.0.extend_from_slice(&opt::END.to_le_bytes());
            self.0.extend_from_slice(&0u16.to_le_bytes());
        }
        self.0
    }
}

/// Bytes of padding after `len` bytes to reach a 32-bit boundary.
const fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<W: Write> PcapngWriter<W> {
    /// Writes the section header block, naming the application that wrote the file.
    /// `snaplen` is every interface's: libpcap (so tcpdump) refuses a section whose
    /// interfaces differ in snap length or link type.
    pub fn new(mut out: W, application: &str, snaplen: u32) -> io::Result<Self> {
        let mut o = Options::default();
        o.text(opt::SHB_USERAPPL, application);
        let mut body = Vec::with_capacity(16);
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        // Section length unknown: the file is written as a stream.
        body.extend_from_slice(&(-1i64).to_le_bytes());
        write_block(&mut out, block::SECTION_HEADER, &body, &[], &o.finish())?;
        Ok(PcapngWriter {
            out,
            interfaces: 0,
            snaplen,
        })
    }

    /// Describes an Ethernet interface (timestamps in nanoseconds); returns its id for
    /// [`PcapngWriter::write_packet`]. Interfaces are numbered from 0 in the order added.
    pub fn add_interface(&mut self, name: &str, description: &str) -> io::Result<u32> {
        let mut o = Options::default();
        o.text(opt::IF_NAME, name);
        if !description.is_empty() {
            o.text(opt::IF_DESCRIPTION, description);
        }
        // 10^-9 s.
        o.push(opt::IF_TSRESOL, &[9]);
        let mut body = Vec::with_capacity(8);
        body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&self.snaplen.to_le_bytes());
        write_block(
            &mut self.out,
            block::INTERFACE_DESCRIPTION,
            &body,
            &[],
            &o.finish(),
        )?;
        self.interfaces += 1;
        Ok(self.interfaces - 1)
    }

    /// Appends one frame seen on `interface` at `ts` since the epoch. `data` is what was
    /// kept of it, `orig_len` its length on the wire.
    pub fn write_packet(
        &mut self,
        interface: u32,
        ts: Duration,
        orig_len: u32,
        data: &[u8],
        direction: Option<Direction>,
        comment: Option<&str>,
    ) -> io::Result<()> {
        if interface >= self.interfaces {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "pcapng: packet on interface {interface}, but only {} described",
                    self.interfaces
                ),
            ));
        }
        let caplen = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "pcapng: packet over 4 GiB")
        })?;
        let mut o = Options::default();
        if let Some(c) = comment {
            o.text(opt::COMMENT, c);
        }
        if let Some(d) = direction {
            let bits: u32 = match d {
                Direction::Inbound => 1,
                Direction::Outbound => 2,
            };
            o.push(opt::EPB_FLAGS, &bits.to_le_bytes());
        }
        // Nanoseconds since the epoch fit 64 bits until 2554.
        let ns = u64::try_from(ts.as_nanos()).unwrap_or(u64::MAX);
        let mut head = [0u8; 20];
        head[0..4].copy_from_slice(&interface.to_le_bytes());
        head[4..8].copy_from_slice(&((ns >> 32) as u32).to_le_bytes());
        head[8..12].copy_from_slice(&(ns as u32).to_le_bytes());
        head[12..16].copy_from_slice(&caplen.to_le_bytes());
        head[16..20].copy_from_slice(&orig_len.max(caplen).to_le_bytes());
        write_block(
            &mut self.out,
            block::ENHANCED_PACKET,
            &head,
            data,
            &o.finish(),
        )
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One block: type, length, the fixed body, variable data padded to 32 bits, options,
/// length again.
fn write_block<W: Write>(
    out: &mut W,
    kind: u32,
    fixed: &[u8],
    data: &[u8],
    options: &[u8],
) -> io::Result<()> {
    let total = 12 + fixed.len() + data.len() + pad(data.len()) + options.len();
    let total = u32::try_from(total)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pcapng: block over 4 GiB"))?;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(fixed)?;
    out.write_all(data)?;
    out.write_all(&[0u8; 3][..pad(data.len())])?;
    out.write_all(options)?;
    out.write_all(&total.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block as read back: type and body (between the two length fields).
    fn blocks(file: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < file.len() {
            let kind = u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
            let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "block length {len} is not a multiple of 4");
            let trailer = u32::from_le_bytes(file[at + len - 4..at + len].try_into().unwrap());
            assert_eq!(trailer as usize, len, "leading and trailing lengths differ");
            out.push((kind, file[at + 8..at + len - 4].to_vec()));
            at += len;
        }
        assert_eq!(at, file.len());
        out
    }

    /// (code, value) of each option, up to the end marker.
    fn options(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let code = u16::from_le_bytes([b[0], b[1]]);
            let len = usize::from(u16::from_le_bytes([b[2], b[3]]));
            if code == 0 {
                assert_eq!(len, 0);
                assert_eq!(b.len(), 4, "bytes after the end of options");
                return out;
            }
            out.push((code, b[4..4 + len].to_vec()));
            b = &b[4 + len + pad(len)..];
        }
    }

    #[test]
    fn a_section_with_two_interfaces_and_packets_reads_back() {
        let mut w = PcapngWriter::new(Vec::new(), "nicproxy test", 2048).unwrap();
        assert_eq!(w.add_interface("a:nic", "the NIC").unwrap(), 0);
        assert_eq!(w.add_interface("a:kernel", "").unwrap(), 1);
        let frame: Vec<u8> = (0..61).collect();
        let ts = Duration::new(1_700_000_000, 123_456_789);
        w.write_packet(
            1,
            ts,
            1514,
            &frame,
            Some(Direction::Inbound),
            Some("in=kernel out=nic"),
        )
        .unwrap();
        w.write_packet(0, ts, 0, &frame[..60], None, None).unwrap();
        let file = w.into_inner().unwrap();
        let b = blocks(&file);
        assert_eq!(b.len(), 5);

        let (kind, shb) = &b[0];
        assert_eq!(*kind, 0x0A0D_0D0A);
        assert_eq!(&shb[0..4], &[0x4d, 0x3c, 0x2b, 0x1a]);
        assert_eq!(&shb[4..8], &[1, 0, 0, 0], "version 1.0");
        assert_eq!(&shb[8..16], &[0xff; 8], "section length unknown");
        assert_eq!(options(&shb[16..]), [(4, b"nicproxy test".to_vec())]);

        let (kind, idb) = &b[1];
        assert_eq!(*kind, 1);
        assert_eq!(&idb[0..2], &[1, 0], "LINKTYPE_ETHERNET");
        assert_eq!(u32::from_le_bytes(idb[4..8].try_into().unwrap()), 2048);
        assert_eq!(
            options(&idb[8..]),
            [
                (2, b"a:nic".to_vec()),
                (3, b"the NIC".to_vec()),
                (9, vec![9])
            ]
        );
        assert_eq!(
            options(&b[2].1[8..]),
            [(2, b"a:kernel".to_vec()), (9, vec![9])]
        );

        let (kind, epb) = &b[3];
        assert_eq!(*kind, 6);
        let word = |i: usize| u32::from_le_bytes(epb[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), 1, "interface");
        let ns = (u64::from(word(1)) << 32) | u64::from(word(2));
        assert_eq!(ns, 1_700_000_000_123_456_789);
        assert_eq!(word(3), 61);
        assert_eq!(word(4), 1514);
        assert_eq!(&epb[20..81], &frame[..]);
        assert_eq!(&epb[81..84], &[0, 0, 0], "padding");
        assert_eq!(
            options(&epb[84..]),
            [
                (1, b"in=kernel out=nic".to_vec()),
                (2, 1u32.to_le_bytes().to_vec())
            ]
        );

        let epb = &b[4].1;
        assert_eq!(epb.len(), 20 + 60, "no options, no end marker");
        assert_eq!(
            u32::from_le_bytes(epb[16..20].try_into().unwrap()),
            60,
            "original length is never below the captured length"
        );
    }

    #[test]
    fn bad_interface_and_long_comments_are_handled() {
        let mut w = PcapngWriter::new(Vec::new(), "t", 64).unwrap();
        let e = w
            .write_packet(0, Duration::ZERO, 1, &[0], None, None)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        w.add_interface("x", "").unwrap();
        let long = "é".repeat(5000);
        w.write_packet(0, Duration::ZERO, 1, &[0], None, Some(&long))
            .unwrap();
        let file = w.into_inner().unwrap();
        let b = blocks(&file);
        let o = options(&b[2].1[24..]);
        assert_eq!(o[0].0, 1);
        assert!(o[0].1.len() <= MAX_TEXT);
        assert!(
            std::str::from_utf8(&o[0].1).is_ok(),
            "cut at a char boundary"
        );
    }
}
