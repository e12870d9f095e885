//! The data header in front of every tunnelled Ethernet frame.
//!
//! The full session protocol (control messages, authentication) is the control plane's
//! (`control::proto`); the dataplane only needs this 4-byte header, so it lives here and the
//! control plane builds on it:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | magic `0x4E` (`'N'`) |
//! | 1 | 1 | version 1 (high nibble), type 0 = data (low nibble) |
//! | 2 | 1 | flags: none defined in v1; receivers ignore them |
//! | 3 | 1 | reserved, sent as 0, ignored |

/// The magic byte that starts every fabric message.
pub const MAGIC: u8 = 0x4E;
/// The protocol version, in the high nibble of byte 1.
pub const VERSION: u8 = 1;
/// The message type of a tunnelled frame, in the low nibble of byte 1.
pub const TYPE_DATA: u8 = 0;
/// Bytes of the data header.
pub const DATA_HEADER_LEN: usize = 4;
/// The data header as sent.
pub const DATA_HEADER: [u8; DATA_HEADER_LEN] = [MAGIC, (VERSION << 4) | TYPE_DATA, 0, 0];

/// Whether `bytes` start with a valid data header (flags and reserved bits are ignored, for
/// forward compatibility).
#[inline]
pub fn is_data_header(bytes: &[u8]) -> bool {
    matches!(bytes, [MAGIC, vt, _, _, ..] if *vt == DATA_HEADER[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        assert!(is_data_header(&DATA_HEADER));
        assert!(is_data_header(&[0x4E, 0x10, 0xff, 0xff, 1, 2]));
        assert!(!is_data_header(&[0x4E, 0x10, 0]));
        assert!(!is_data_header(&[0x4F, 0x10, 0, 0]));
        assert!(!is_data_header(&[0x4E, 0x20, 0, 0]));
        assert!(!is_data_header(&[0x4E, 0x13, 0, 0]));
        assert!(!is_data_header(&[]));
    }
}
