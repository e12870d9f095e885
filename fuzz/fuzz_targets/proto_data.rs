//! `control::proto::classify` and `parse_data` on arbitrary bytes: the dataplane's first
//! look at every fabric message.
//!
//! Contracts checked beyond "no panic":
//! - `classify` reads only the first two bytes;
//! - `parse_data` accepts exactly the messages `classify` calls Data that carry at least an
//!   Ethernet header, and returns the bytes after the 4-byte header;
//! - writing a fresh data header over an accepted message's header gives a message that
//!   parses to the same frame (flags and reserved bits are ignored).

#![no_main]

use control::proto::{classify, encode_data_header, parse_data, MsgType, DATA_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t = classify(data);
    assert_eq!(t, classify(&data[..data.len().min(2)]), "read past byte 2");

    match parse_data(data) {
        Ok(frame) => {
            assert_eq!(t, Ok(MsgType::Data));
            assert!(frame.len() >= 14);
            assert_eq!(frame, &data[DATA_HEADER_LEN..]);
            let mut copy = data.to_vec();
            assert_eq!(encode_data_header(&mut copy), Ok(DATA_HEADER_LEN));
            assert_eq!(parse_data(&copy), Ok(frame));
        }
        Err(e) => {
            let data_type = t == Ok(MsgType::Data);
            assert!(
                !data_type || data.len() < DATA_HEADER_LEN + 14,
                "a Data message of {} bytes rejected: {e:?}",
                data.len()
            );
        }
    }
});
