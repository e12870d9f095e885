//! The one error type of the frame parsers and builders.

/// What went wrong while parsing or building a frame. Parsers of untrusted bytes return
/// these instead of panicking; the steering path turns them into counted drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes end before the header or field being parsed.
    #[error("parsing {what}: truncated, need {need} bytes but the frame has {have}")]
    Truncated {
        /// The header or field being parsed.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The output buffer cannot hold the frame being built.
    #[error("building {what}: buffer too small, need {need} bytes but have {have}")]
    BufferTooSmall {
        /// The frame being built.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A field holds a value this parser does not accept.
    #[error("parsing {what}: {reason}")]
    Malformed {
        /// The header or field being parsed.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The ICMPv6 checksum does not match the packet.
    #[error("parsing ICMPv6: checksum {found:#06x} is wrong, the packet sums to {expected:#06x}")]
    BadChecksum {
        /// Checksum carried by the packet.
        found: u16,
        /// Checksum computed over the packet.
        expected: u16,
    },
    /// A VLAN id outside 1..=4094 was asked for on a built frame.
    #[error("building {what}: VLAN id {vid} is outside 1..=4094")]
    BadVlanId {
        /// The frame being built.
        what: &'static str,
        /// The rejected VLAN id.
        vid: u16,
    },
}

/// Checks that `have >= need`, naming `what` in the error.
#[inline(always)]
pub(crate) fn need(what: &'static str, need: usize, have: usize) -> Result<(), WireError> {
    if have < need {
        Err(WireError::Truncated { what, need, have })
    } else {
        Ok(())
    }
}

/// Checks that an output buffer of `have` bytes fits `need`.
#[inline(always)]
pub(crate) fn room(what: &'static str, need: usize, have: usize) -> Result<(), WireError> {
    if have < need {
        Err(WireError::BufferTooSmall { what, need, have })
    } else {
        Ok(())
    }
}
