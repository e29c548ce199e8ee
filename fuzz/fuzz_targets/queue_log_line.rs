//! The Asterisk `queue_log` line parser: never panics, and a parsed line's fields are the
//! line's own (no field longer than the line).
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::decode::queue_log;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(parsed) = queue_log::parse_line(line) {
            assert!(parsed.callid.len() <= line.len());
            assert!(parsed.event.name().len() <= line.len());
            let _ = (parsed.call_id(), parsed.agent(), parsed.queue());
        }
    }
});
