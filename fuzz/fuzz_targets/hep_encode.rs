//! The HEPv3 encoder against the decoder: any frame the decoder accepts encodes (unless it
//! is too large once its payload is written uncompressed), and the encoding decodes to the
//! same frame — addresses, ports, time, chunks and payload bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::decode::hep;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = hep::parse_with_limit(data, 4096) else {
        return;
    };
    match hep::encode(&frame) {
        Ok(bytes) => {
            assert_eq!(bytes.len(), hep::encoded_len(&frame));
            let back = hep::parse(&bytes).expect("our own encoding decodes");
            let expected = hep::HepFrame {
                compressed: false,
                vendor_chunks: 0,
                skipped_chunks: 0,
                ..frame
            };
            assert_eq!(back, expected);
        }
        Err(hep::EncodeError::TooLarge { length }) => {
            assert!(frame.compressed && length > hep::MAX_FRAME_LEN)
        }
        Err(e) => panic!("a decoded frame failed to encode: {e}"),
    }
});
