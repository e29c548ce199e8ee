//! RTP and RTCP decoding, and the stream analysis over a sequence of arbitrary packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::correlation::media::{MediaLimits, MediaTracker};
use teledge::dissect::DatagramMeta;
use teledge::media::packet;
use teledge::time::Timestamp;

fuzz_target!(|data: &[u8]| {
    let _ = packet::classify(data);
    let _ = packet::decode_rtp(data);
    let _ = packet::decode_rtcp(data);
    // Split the input into datagrams of [len u8][time step u8][payload] for the tracker.
    let mut tracker = MediaTracker::new(MediaLimits::default());
    let mut rest = data;
    let mut t = 0i64;
    while rest.len() >= 2 {
        let len = usize::from(rest[0]).min(rest.len() - 2);
        t += i64::from(rest[1]) * 1_000_000;
        let payload = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let meta = DatagramMeta {
            frame: 0,
            time: Timestamp::from_nanos(t),
            src: "10.0.0.1:4000".parse().unwrap(),
            dst: "10.0.0.2:5000".parse().unwrap(),
        };
        tracker.datagram(&meta, payload, &mut |_| {});
    }
    tracker.finish(&mut |_| {});
});
