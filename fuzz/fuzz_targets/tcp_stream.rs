//! TCP reassembly and SIP/WebSocket stream framing driven by arbitrary segments.
//!
//! Input: a sequence of records `[flags u8][seq offset u16][len u8][payload...]`, so the
//! fuzzer explores reordering, overlaps, retransmissions, gaps and resynchronisation. Bit 3
//! of the flags picks one of two directions; the memory budget is small, so eviction and
//! the stall timeout are explored too, and the bytes held must stay within it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::reassembly::sip_stream::{SipStream, StreamEvent};
use teledge::reassembly::tcp::{FlowKey, Segment, TcpLimits, TcpReassembler};
use teledge::time::Timestamp;

fuzz_target!(|data: &[u8]| {
    let keys = [
        FlowKey {
            src: "10.0.0.1:5060".parse().unwrap(),
            dst: "10.0.0.2:5060".parse().unwrap(),
        },
        FlowKey {
            src: "10.0.0.2:5060".parse().unwrap(),
            dst: "10.0.0.1:5060".parse().unwrap(),
        },
    ];
    let limits = TcpLimits {
        max_pending_bytes: 4096,
        max_bytes: 16 * 1024,
        ..TcpLimits::default()
    };
    let mut tcp: TcpReassembler<SipStream> = TcpReassembler::new(limits);
    let mut rest = data;
    let mut i = 0i64;
    while rest.len() >= 4 {
        let flags = rest[0];
        let seq = u32::from(u16::from_be_bytes([rest[1], rest[2]]));
        let len = usize::from(rest[3]).min(rest.len() - 4);
        let payload = &rest[4..4 + len];
        rest = &rest[4 + len..];
        i += 1;
        let segment = Segment {
            seq: seq.wrapping_sub(1000),
            syn: flags & 1 != 0,
            fin: flags & 2 != 0,
            rst: flags & 4 != 0,
            payload,
            // Now and then cut by a snapshot length.
            cut: if flags & 0x40 != 0 { u32::from(rest.first().copied().unwrap_or(0)) } else { 0 },
        };
        let now = Timestamp::from_secs_nanos(i * i64::from(flags >> 4), 0);
        let key = keys[usize::from(flags >> 3 & 1)];
        tcp.segment(key, now, segment, |stream, delivery| {
            let mut on_event = |event: StreamEvent<'_>| {
                if let StreamEvent::Message(bytes, _) | StreamEvent::Cut(bytes, _) = event {
                    let _ = teledge::decode::sip::parse(bytes);
                }
            };
            stream.push(delivery.data, delivery.after_gap, &mut on_event);
            if delivery.cut > 0 {
                stream.cut(delivery.cut as usize, &mut on_event);
            }
        });
        assert!(tcp.bytes_held() <= 16 * 1024, "{}", tcp.bytes_held());
    }
    tcp.flush(Timestamp::from_secs_nanos(i64::MAX / 2_000_000_000, 0), |_, stream, d| {
        stream.push(d.data, d.after_gap, &mut |_| {});
    });
});
