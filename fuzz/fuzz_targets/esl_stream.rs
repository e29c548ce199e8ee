//! The FreeSWITCH event-socket framer, event parser and mod_callcenter reader: never panic,
//! and the framer never holds more than its bound plus one read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::decode::esl;

fuzz_target!(|data: &[u8]| {
    const MAX: usize = 4096;
    let mut decoder = esl::EslDecoder::new(MAX);
    for chunk in data.chunks(97) {
        decoder.push(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    if let Ok(event) = esl::parse_event(&message.body) {
                        let _ = esl::callcenter(&event);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.held() <= MAX + 97);
    }
    if let Ok(event) = esl::parse_event(data) {
        let _ = esl::callcenter(&event);
    }
});
