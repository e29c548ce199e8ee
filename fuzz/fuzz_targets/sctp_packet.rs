//! SCTP decoding and user-message reassembly from arbitrary packets.
//!
//! Input: a sequence of records `[time u8][len u16][packet...]`, each an SCTP packet (common
//! header and chunks) from one of four directions (picked by the time byte's low bits), so the
//! fuzzer explores bundled and malformed chunks, fragments in any order, duplicates, TSN wrap,
//! the byte bound and the timeout. Complete messages go to the SIP parser, as in the decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::decode::sctp::{self, Chunk};
use teledge::reassembly::sctp::{AssociationKey, Reassembled, SctpLimits, SctpReassembler};
use teledge::time::Timestamp;

fuzz_target!(|data: &[u8]| {
    let limits = SctpLimits {
        max_fragments: 64,
        max_bytes: 64 * 1024,
        ..SctpLimits::default()
    };
    let mut reassembler = SctpReassembler::new(limits);
    let keys: Vec<AssociationKey> = (0..4u16)
        .map(|i| AssociationKey {
            src: format!("10.0.0.1:{}", 5060 + i).parse().unwrap(),
            dst: "10.0.0.2:5060".parse().unwrap(),
        })
        .collect();
    let mut rest = data;
    let mut secs = 0i64;
    while rest.len() >= 3 {
        let tick = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let packet = &rest[3..3 + len];
        rest = &rest[3 + len..];
        secs += i64::from(tick >> 2);
        let key = keys[usize::from(tick & 3)];
        let Ok(parsed) = sctp::parse(packet) else {
            continue;
        };
        for chunk in parsed.chunks() {
            let Ok(Chunk::Data(chunk)) = chunk else {
                continue;
            };
            let now = Timestamp::from_secs_nanos(secs, 0);
            if chunk.begin && chunk.end {
                let _ = teledge::decode::sip::parse(chunk.payload);
            } else if let Reassembled::Message(m) = reassembler.add(key, now, &chunk) {
                assert!(m.len() <= teledge::reassembly::sctp::MAX_USER_MESSAGE);
                let _ = teledge::decode::sip::parse(&m);
            }
            assert!(reassembler.bytes_held() <= 64 * 1024);
            assert!(reassembler.fragments_held() <= 64);
        }
    }
});
