//! The minimal header of tunnelled Ethernet frames (hot path: no allocation, no
//! formatting, a handful of byte compares).

use super::{version_type, MsgType, ProtoError, MAGIC, VERSION};

/// Bytes of the data header in front of every tunnelled frame.
pub const DATA_HEADER_LEN: usize = 4;
/// Shortest Ethernet frame we tunnel: a bare header (the NIC pads to 60 on the wire).
const MIN_FRAME: usize = 14;

/// Writes the data header into the first [`DATA_HEADER_LEN`] bytes of `buf` (the headroom
/// in front of a frame) and returns the header length.
pub fn encode_data_header(buf: &mut [u8]) -> Result<usize, ProtoError> {
    let have = buf.len();
    let Some(h) = buf.get_mut(..DATA_HEADER_LEN) else {
        return Err(ProtoError::BufferTooSmall {
            need: DATA_HEADER_LEN,
            have,
        });
    };
    h.copy_from_slice(&[MAGIC, version_type(MsgType::Data), 0, 0]);
    Ok(DATA_HEADER_LEN)
}

/// Checks the data header of a received message and returns the Ethernet frame after it.
pub fn parse_data(bytes: &[u8]) -> Result<&[u8], ProtoError> {
    let [magic, vt, _flags, _reserved, frame @ ..] = bytes else {
        return Err(ProtoError::Truncated);
    };
    if *magic != MAGIC {
        return Err(ProtoError::Malformed { field: "magic" });
    }
    if vt >> 4 != VERSION {
        return Err(ProtoError::UnknownVersion(vt >> 4));
    }
    if vt & 0x0f != MsgType::Data as u8 {
        return Err(ProtoError::Malformed { field: "type" });
    }
    if frame.len() < MIN_FRAME {
        return Err(ProtoError::Truncated);
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0xAAu8; 64];
        assert_eq!(encode_data_header(&mut buf), Ok(4));
        assert_eq!(&buf[..4], &[0x4E, 0x10, 0, 0]);
        assert_eq!(parse_data(&buf).map(<[u8]>::len), Ok(60));
        assert_eq!(crate::proto::classify(&buf), Ok(MsgType::Data));
    }

    #[test]
    fn rejects() {
        assert_eq!(
            encode_data_header(&mut [0u8; 3]),
            Err(ProtoError::BufferTooSmall { need: 4, have: 3 })
        );
        let mut ok = [0u8; 18];
        encode_data_header(&mut ok).expect("header");
        assert!(parse_data(&ok).is_ok());
        assert_eq!(parse_data(&ok[..17]), Err(ProtoError::Truncated));
        assert_eq!(parse_data(&ok[..3]), Err(ProtoError::Truncated));
        assert_eq!(parse_data(&[]), Err(ProtoError::Truncated));
        let mut bad = ok;
        bad[0] = 0x4F;
        assert_eq!(
            parse_data(&bad),
            Err(ProtoError::Malformed { field: "magic" })
        );
        let mut bad = ok;
        bad[1] = 0x20;
        assert_eq!(parse_data(&bad), Err(ProtoError::UnknownVersion(2)));
        let mut bad = ok;
        bad[1] = 0x13;
        assert_eq!(
            parse_data(&bad),
            Err(ProtoError::Malformed { field: "type" })
        );
        // Flags and reserved bits are ignored (forward compatibility).
        let mut flagged = ok;
        flagged[2] = 0xff;
        flagged[3] = 0xff;
        assert!(parse_data(&flagged).is_ok());
    }
}
