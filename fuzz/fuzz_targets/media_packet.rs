//! RTP and RTCP decoding, and the stream analysis over a sequence of arbitrary packets, both
//! for flows no SDP announced (orphans) and for a call's announced endpoints, whose RTCP is
//! joined to its streams (round trips from LSR/DLSR) when the call is taken.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::correlation::calls::Side;
use teledge::correlation::media::{MediaLimits, MediaTracker};
use teledge::decode::sdp;
use teledge::dissect::DatagramMeta;
use teledge::media::packet;
use teledge::time::Timestamp;

const OFFER: &[u8] = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
const ANSWER: &[u8] = b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
m=audio 5000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

fuzz_target!(|data: &[u8]| {
    let _ = packet::classify(data);
    let _ = packet::decode_rtp(data);
    let _ = packet::decode_rtcp(data);
    // Split the input into datagrams of [len u8][time step u8][payload] for the tracker; the
    // low bits of the time step pick the direction and whether the flow is the call's RTP or
    // RTCP.
    let mut tracker = MediaTracker::new(MediaLimits::default());
    let in_call = data.first().is_some_and(|b| b & 1 == 1);
    if in_call {
        if let (Ok(offer), Ok(answer)) = (sdp::summarize(OFFER), sdp::summarize(ANSWER)) {
            tracker.learn("fuzz", Side::Caller, &offer);
            tracker.learn("fuzz", Side::Callee, &answer);
        }
    }
    let mut rest = data.get(1..).unwrap_or_default();
    let mut t = 0i64;
    while rest.len() >= 2 {
        let len = usize::from(rest[0]).min(rest.len() - 2);
        let step = rest[1];
        t += i64::from(step) * 1_000_000;
        let payload = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let rtcp = u16::from(step & 2 != 0);
        let (src, dst) = if step & 1 == 0 {
            (("10.0.0.1", 4000 + rtcp), ("10.0.0.2", 5000 + rtcp))
        } else {
            (("10.0.0.2", 5000 + rtcp), ("10.0.0.1", 4000 + rtcp))
        };
        let meta = DatagramMeta {
            frame: 0,
            time: Timestamp::from_nanos(t),
            src: format!("{}:{}", src.0, src.1).parse().unwrap(),
            dst: format!("{}:{}", dst.0, dst.1).parse().unwrap(),
        };
        tracker.datagram(&meta, payload, &mut |_| {});
    }
    if in_call {
        let _ = tracker.take_call("fuzz");
    }
    tracker.finish(&mut |_| {});
});
