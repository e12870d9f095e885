//! First half of steering: validate a frame and extract what the decision needs (domain,
//! destination and source keys). Reads at most the first 22 bytes.

use super::table::{mac_key, MacTable};
use super::types::DomainId;
use crate::counters::DropReason;
use crate::wire::ethernet::walk_tags;

/// What steering needs to know about a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The frame's domain (from its outer VLAN, or the untagged domain).
    pub domain: DomainId,
    /// Destination MAC as a 48-bit integer.
    pub dst: u64,
    /// Source MAC as a 48-bit integer.
    pub src: u64,
    /// Ethertype after the VLAN tags.
    pub ethertype: u16,
    /// Offset of the layer-3 payload.
    pub l3_offset: u16,
}

impl Classified {
    /// Table key of the destination.
    #[inline(always)]
    pub const fn dst_key(&self) -> u64 {
        mac_key(self.domain, self.dst)
    }

    /// Table key of the source.
    #[inline(always)]
    pub const fn src_key(&self) -> u64 {
        mac_key(self.domain, self.src)
    }

    /// Broadcast or multicast destination (I/G bit).
    #[inline(always)]
    pub const fn is_group(&self) -> bool {
        self.dst & (1 << 40) != 0
    }

    /// Destination in the IEEE 802.1D link-local block 01:80:c2:00:00:0x.
    #[inline(always)]
    pub const fn is_link_local(&self) -> bool {
        self.dst & !0xf == 0x0180_c200_0000
    }
}

/// Validates `frame` against `table` and extracts its keys, or says why it must be dropped:
/// `Runt` (under 14 bytes, or shorter than its tags), `Oversize` (over the table's maximum),
/// `UnknownEthertype` (not in the accepted set, including 802.3 lengths and a third tag),
/// `UnknownVlan` (its VLAN, or untagged, maps to no domain).
#[inline(always)]
pub fn classify(table: &MacTable, frame: &[u8]) -> Result<Classified, DropReason> {
    let Some(h) = frame.first_chunk::<14>() else {
        return Err(DropReason::Runt);
    };
    if frame.len() > table.max_frame_len {
        return Err(DropReason::Oversize);
    }
    let tags = walk_tags(frame).map_err(|_| DropReason::Runt)?;
    if !table.accepts_ethertype(tags.ethertype) {
        return Err(DropReason::UnknownEthertype);
    }
    let domain = table
        .domain_of_vlan(tags.outer_tci.map(|tci| tci & 0x0fff))
        .ok_or(DropReason::UnknownVlan)?;
    Ok(Classified {
        domain,
        dst: u64::from_be_bytes([0, 0, h[0], h[1], h[2], h[3], h[4], h[5]]),
        src: u64::from_be_bytes([0, 0, h[6], h[7], h[8], h[9], h[10], h[11]]),
        ethertype: tags.ethertype,
        // At most 22.
        l3_offset: tags.payload_offset as u16,
    })
}
