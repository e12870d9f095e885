//! A minimal pcap (libpcap 2.4, LINKTYPE_ETHERNET) writer for captures and for checking
//! built frames with tcpdump. Off the hot path: it writes through `std::io::Write`.

use std::io::{self, Write};
use std::time::Duration;

/// Writes Ethernet frames into a pcap stream.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    snaplen: u32,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header (microsecond timestamps, snaplen 65535).
    pub fn new(mut out: W) -> io::Result<Self> {
        let snaplen = 65_535u32;
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h[4..6].copy_from_slice(&2u16.to_le_bytes());
        h[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs stay 0.
        h[16..20].copy_from_slice(&snaplen.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        out.write_all(&h)?;
        Ok(PcapWriter { out, snaplen })
    }

    /// Appends one frame captured at `ts` since the epoch; frames longer than the snaplen
    /// are cut (with their original length recorded).
    pub fn write_frame(&mut self, ts: Duration, frame: &[u8]) -> io::Result<()> {
        let orig = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let incl = orig.min(self.snaplen);
        let mut h = [0u8; 16];
        // pcap stores 32-bit seconds; wrap rather than fail in 2106.
        h[0..4].copy_from_slice(&(ts.as_secs() as u32).to_le_bytes());
        h[4..8].copy_from_slice(&ts.subsec_micros().to_le_bytes());
        h[8..12].copy_from_slice(&incl.to_le_bytes());
        h[12..16].copy_from_slice(&orig.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(&frame[..incl as usize])
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
