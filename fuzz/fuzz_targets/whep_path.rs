//! The Call-ID segment of a WHEP URL (`/whep/calls/{id}`, percent-encoded, from the network):
//! never panics, never grows, and decodes only to non-empty UTF-8.
//! (Runs are recorded in the README, *Fuzzing*.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::listen::http::percent_decode;

fuzz_target!(|data: &[u8]| {
    let Ok(segment) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(decoded) = percent_decode(segment) {
        assert!(!decoded.is_empty());
        assert!(decoded.len() <= segment.len());
    }
});
