//! The SIP parser and everything a call record reads from a message (SDP included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::decode::{sdp, sip};

fuzz_target!(|data: &[u8]| {
    let _ = sip::starts_with_sip(data);
    if let Ok(msg) = sip::parse(data) {
        let _ = msg.reasons().count();
        let _ = msg.header_values("v").count();
        if let Some(body) = msg.sdp() {
            let _ = sdp::summarize(body);
        }
    }
    let _ = sdp::summarize(data);
});
