//! The SIP parser and everything a call record reads from a message (SDP included), and the
//! owned form's view of the parse (the same message, field for field).
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
        let owned = sip::OwnedMessage::new(&msg).expect("a message shorter than 4 GiB");
        assert_eq!(owned.view(), msg);
    }
    let _ = sdp::summarize(data);
});
