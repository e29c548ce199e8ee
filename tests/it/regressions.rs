//! Inputs that once crashed a fuzz target (`fuzz/regressions/<target>/`), replayed through
//! the same entry points on every test run.

use teledge::correlation::media::{MediaLimits, MediaTracker};
use teledge::decode::sip;
use teledge::dissect::DatagramMeta;
use teledge::media::packet;
use teledge::time::Timestamp;

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn sip_message_regressions() {
    for input in inputs("sip_message") {
        if let Ok(msg) = sip::parse(&input) {
            let _ = msg.sdp();
            let _ = msg.reasons().count();
        }
    }
}

#[test]
fn media_packet_regressions() {
    for input in inputs("media_packet") {
        let _ = packet::decode_rtcp(&input);
        let _ = packet::decode_rtp(&input);
        let mut tracker = MediaTracker::new(MediaLimits::default());
        let meta = DatagramMeta {
            frame: 1,
            time: Timestamp::from_nanos(0),
            src: "10.0.0.1:4000".parse().unwrap(),
            dst: "10.0.0.2:5000".parse().unwrap(),
        };
        tracker.datagram(&meta, &input, &mut |_| {});
        tracker.finish(&mut |_| {});
    }
}
