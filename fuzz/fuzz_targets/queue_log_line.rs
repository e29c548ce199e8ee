//! The Asterisk `queue_log` line parser: never panics, and a parsed line's fields are the
//! line's own (no field longer than the line as text: bytes that are not UTF-8 become
//! U+FFFD, three bytes each).
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::decode::queue_log;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(parsed) = queue_log::parse_line(line) {
            let text = String::from_utf8_lossy(line).len();
            assert!(parsed.callid.len() <= text);
            assert!(parsed.event.name().len() <= text);
            let _ = (parsed.call_id(), parsed.agent(), parsed.queue());
        }
    }
});
