//! Ethernet II frames with up to two VLAN tags (802.1Q, and 802.1ad QinQ).

use super::error::{need, room, WireError};
use super::mac::MacAddr;

/// A byte range inside a header.
pub type Field = core::ops::Range<usize>;

/// Byte ranges of the untagged Ethernet header.
pub mod field {
    use super::Field;
    /// Destination MAC.
    pub const DESTINATION: Field = 0..6;
    /// Source MAC.
    pub const SOURCE: Field = 6..12;
    /// Ethertype, or the TPID of the first VLAN tag.
    pub const ETHERTYPE: Field = 12..14;
    /// Length of the untagged header.
    pub const HEADER_LEN: usize = 14;
    /// Length of one VLAN tag (TPID + TCI).
    pub const TAG_LEN: usize = 4;
}

/// Ethertype values this project names.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q customer VLAN tag (C-tag).
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (S-tag, the outer tag of QinQ).
    pub const QINQ: u16 = 0x88a8;
    /// LLDP (sent to the 01:80:c2:00:00:0e link-local group).
    pub const LLDP: u16 = 0x88cc;
    /// Values below this are 802.3 length fields, not ethertypes.
    pub const MIN_ETHERTYPE: u16 = 0x0600;

    /// True for a TPID that opens a VLAN tag.
    #[inline(always)]
    pub const fn is_vlan_tpid(et: u16) -> bool {
        et == VLAN || et == QINQ
    }
}

/// A VLAN tag to put on a built frame (always an 802.1Q C-tag, TPID 0x8100).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// VLAN id, 1..=4094.
    pub vid: u16,
    /// Priority code point, 0..=7 (higher bits are ignored).
    pub pcp: u8,
}

impl VlanTag {
    /// A tag for `vid` at priority 0.
    pub const fn new(vid: u16) -> VlanTag {
        VlanTag { vid, pcp: 0 }
    }

    /// The 16-bit tag control information (PCP, DEI=0, VID).
    pub const fn tci(&self) -> u16 {
        ((self.pcp as u16 & 7) << 13) | (self.vid & 0x0fff)
    }
}

/// The parsed layer-2 header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Header {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// VID of the outer tag (802.1Q or 802.1ad), if the frame is tagged. VID 0 is a
    /// priority tag; steering treats it as untagged.
    pub vlan: Option<u16>,
    /// VID of the inner 802.1Q tag of a double-tagged frame.
    pub inner_vlan: Option<u16>,
    /// Ethertype after the tags. A third tag is not walked: its TPID shows up here.
    pub ethertype: u16,
    /// Offset of the layer-3 payload (14, 18 or 22).
    pub payload_offset: usize,
}

/// Tags walked by [`walk_tags`]: the layer-3 ethertype, its offset and the raw outer/inner
/// TCIs (`None` when absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tags {
    /// Ethertype after the tags.
    pub ethertype: u16,
    /// Offset of the layer-3 payload.
    pub payload_offset: usize,
    /// TCI of the outer tag.
    pub outer_tci: Option<u16>,
    /// TCI of the inner tag.
    pub inner_tci: Option<u16>,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Walks the VLAN tags of `frame`: an outer 0x8100 or 0x88a8 tag, then optionally an inner
/// 0x8100 tag. The caller has checked `frame.len() >= 14`; a frame too short for the tags it
/// announces is `Truncated`.
#[inline(always)]
pub fn walk_tags(frame: &[u8]) -> Result<Tags, WireError> {
    need("Ethernet header", field::HEADER_LEN, frame.len())?;
    let mut t = Tags {
        ethertype: be16(frame, 12),
        payload_offset: field::HEADER_LEN,
        outer_tci: None,
        inner_tci: None,
    };
    if ethertype::is_vlan_tpid(t.ethertype) {
        need("outer VLAN tag", 18, frame.len())?;
        t.outer_tci = Some(be16(frame, 14));
        t.ethertype = be16(frame, 16);
        t.payload_offset = 18;
        if t.ethertype == ethertype::VLAN {
            need("inner VLAN tag", 22, frame.len())?;
            t.inner_tci = Some(be16(frame, 18));
            t.ethertype = be16(frame, 20);
            t.payload_offset = 22;
        }
    }
    Ok(t)
}

/// Parses the layer-2 header of `frame`.
pub fn parse_l2(frame: &[u8]) -> Result<L2Header, WireError> {
    let t = walk_tags(frame)?;
    Ok(L2Header {
        dst: MacAddr([frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]]),
        src: MacAddr([frame[6], frame[7], frame[8], frame[9], frame[10], frame[11]]),
        vlan: t.outer_tci.map(|tci| tci & 0x0fff),
        inner_vlan: t.inner_tci.map(|tci| tci & 0x0fff),
        ethertype: t.ethertype,
        payload_offset: t.payload_offset,
    })
}

/// Writes an Ethernet header (with an optional 802.1Q tag) at the start of `buf` and returns
/// its length (14 or 18).
pub fn write_header(
    buf: &mut [u8],
    dst: MacAddr,
    src: MacAddr,
    vlan: Option<VlanTag>,
    ethertype: u16,
) -> Result<usize, WireError> {
    let len = field::HEADER_LEN + if vlan.is_some() { field::TAG_LEN } else { 0 };
    room("Ethernet header", len, buf.len())?;
    if let Some(tag) = vlan {
        if tag.vid == 0 || tag.vid >= 0x0fff {
            return Err(WireError::BadVlanId {
                what: "Ethernet header",
                vid: tag.vid,
            });
        }
    }
    buf[field::DESTINATION].copy_from_slice(&dst.0);
    buf[field::SOURCE].copy_from_slice(&src.0);
    let mut at = 12;
    if let Some(tag) = vlan {
        buf[at..at + 2].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        buf[at + 2..at + 4].copy_from_slice(&tag.tci().to_be_bytes());
        at += field::TAG_LEN;
    }
    buf[at..at + 2].copy_from_slice(&ethertype.to_be_bytes());
    Ok(len)
}

/// A zero-copy view of an Ethernet frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking its length; accessors may then panic on short
    /// buffers. Use [`EthernetFrame::new_checked`] for untrusted bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after checking it holds at least an untagged header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need("Ethernet header", field::HEADER_LEN, buffer.as_ref().len())?;
        Ok(EthernetFrame { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        MacAddr(
            self.buffer.as_ref()[field::DESTINATION]
                .try_into()
                .unwrap_or([0; 6]),
        )
    }

    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        MacAddr(
            self.buffer.as_ref()[field::SOURCE]
                .try_into()
                .unwrap_or([0; 6]),
        )
    }

    /// The ethertype field at offset 12 (a TPID when the frame is tagged).
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), 12)
    }

    /// The header with its VLAN tags walked.
    pub fn header(&self) -> Result<L2Header, WireError> {
        parse_l2(self.buffer.as_ref())
    }

    /// The layer-3 payload after any VLAN tags.
    pub fn payload(&self) -> Result<&[u8], WireError> {
        let off = walk_tags(self.buffer.as_ref())?.payload_offset;
        Ok(&self.buffer.as_ref()[off..])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC.
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    /// Sets the ethertype field at offset 12.
    pub fn set_ethertype(&mut self, et: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&et.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0d];
    const S: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];

    fn frame(tags: &[(u16, u16)], et: u16, payload: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&D);
        f.extend_from_slice(&S);
        for &(tpid, tci) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&et.to_be_bytes());
        f.resize(f.len() + payload, 0xaa);
        f
    }

    #[test]
    fn walks_untagged_single_and_double_tags() {
        struct Case {
            tags: &'static [(u16, u16)],
            vlan: Option<u16>,
            inner: Option<u16>,
            et: u16,
            off: usize,
        }
        let cases = [
            Case {
                tags: &[],
                vlan: None,
                inner: None,
                et: 0x0800,
                off: 14,
            },
            Case {
                tags: &[(0x8100, 0xe00a)],
                vlan: Some(10),
                inner: None,
                et: 0x86dd,
                off: 18,
            },
            Case {
                tags: &[(0x88a8, 100)],
                vlan: Some(100),
                inner: None,
                et: 0x0806,
                off: 18,
            },
            Case {
                tags: &[(0x88a8, 100), (0x8100, 0x2007)],
                vlan: Some(100),
                inner: Some(7),
                et: 0x0800,
                off: 22,
            },
            Case {
                tags: &[(0x8100, 5), (0x8100, 6)],
                vlan: Some(5),
                inner: Some(6),
                et: 0x0800,
                off: 22,
            },
            // A third tag is not walked: its TPID is reported as the ethertype.
            Case {
                tags: &[(0x88a8, 1), (0x8100, 2), (0x8100, 3)],
                vlan: Some(1),
                inner: Some(2),
                et: 0x8100,
                off: 22,
            },
        ];
        for c in cases {
            let f = frame(c.tags, c.et, 46);
            let h = parse_l2(&f).unwrap();
            assert_eq!(h.dst, MacAddr(D));
            assert_eq!(h.src, MacAddr(S));
            assert_eq!(h.vlan, c.vlan);
            assert_eq!(h.inner_vlan, c.inner);
            assert_eq!(h.ethertype, c.et);
            assert_eq!(h.payload_offset, c.off);
            let v = EthernetFrame::new_checked(&f[..]).unwrap();
            assert_eq!(
                v.payload().unwrap().len(),
                46 + if c.tags.len() > 2 { 4 } else { 0 }
            );
        }
    }

    #[test]
    fn truncated_headers_are_typed_errors() {
        for len in 0..14 {
            let e = parse_l2(&frame(&[], 0x0800, 0)[..len]).unwrap_err();
            assert!(matches!(e, WireError::Truncated { need: 14, .. }), "{e}");
        }
        let f = frame(&[(0x8100, 5)], 0x0800, 0);
        assert!(matches!(
            parse_l2(&f[..16]),
            Err(WireError::Truncated { need: 18, .. })
        ));
        let f = frame(&[(0x88a8, 5), (0x8100, 6)], 0x0800, 0);
        assert!(matches!(
            parse_l2(&f[..20]),
            Err(WireError::Truncated { need: 22, .. })
        ));
        assert!(EthernetFrame::new_checked(&f[..13]).is_err());
    }

    #[test]
    fn writes_headers_with_and_without_tag() {
        let mut buf = [0u8; 18];
        let n = write_header(&mut buf, MacAddr(D), MacAddr(S), None, 0x0806).unwrap();
        assert_eq!(n, 14);
        assert_eq!(&buf[..14], &frame(&[], 0x0806, 0)[..]);
        let tag = VlanTag { vid: 42, pcp: 5 };
        let n = write_header(&mut buf, MacAddr(D), MacAddr(S), Some(tag), 0x86dd).unwrap();
        assert_eq!(n, 18);
        assert_eq!(&buf[..], &frame(&[(0x8100, 0xa02a)], 0x86dd, 0)[..]);
        assert!(matches!(
            write_header(&mut buf[..17], MacAddr(D), MacAddr(S), Some(tag), 0x0800),
            Err(WireError::BufferTooSmall {
                need: 18,
                have: 17,
                ..
            })
        ));
        for vid in [0, 4095] {
            assert!(matches!(
                write_header(&mut buf, MacAddr(D), MacAddr(S), Some(VlanTag::new(vid)), 1),
                Err(WireError::BadVlanId { .. })
            ));
        }
        let mut v = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        v.set_dst(MacAddr::BROADCAST);
        v.set_src(MacAddr(D));
        v.set_ethertype(0x0800);
        assert_eq!(v.dst(), MacAddr::BROADCAST);
        assert_eq!(v.src(), MacAddr(D));
        assert_eq!(v.ethertype(), 0x0800);
    }
}
