//! The HEPv3 decoder and the stream framer: never panic, and the framer always makes progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::decode::hep::{self, Framing};
use teledge::sources::hep::HepAuth;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = hep::parse_with_limit(data, 4096) {
        let _ = HepAuth::key(b"k").check(&frame);
        let _ = frame.correlation_id_str();
        if frame.proto_type == hep::ProtoType::RtcpJson {
            let _ = hep::rtcp_json(&frame.payload);
        }
        let _ = frame.into_owned();
    }
    // Frame the input as a TCP stream: every step consumes bytes or asks for more.
    let mut rest = data;
    loop {
        match hep::frame_len(rest, hep::MAX_FRAME_LEN) {
            Framing::Frame(n) => {
                assert!(n >= hep::HEADER_LEN && n <= rest.len());
                let _ = hep::parse(&rest[..n]);
                rest = &rest[n..];
            }
            Framing::Garbage(n) => {
                assert!(n >= 1 && n <= rest.len());
                rest = &rest[n..];
            }
            Framing::NeedMore => break,
        }
    }
    assert!(rest.len() < hep::MAX_FRAME_LEN);
});
