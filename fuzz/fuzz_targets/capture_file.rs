//! The whole replay path on arbitrary bytes: capture reader, link layers, IP reassembly,
//! tunnels, TCP reassembly, SIP framing and parsing, call tracking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::record::Record;
use teledge::replay::{Replay, ReplaySettings};

fuzz_target!(|data: &[u8]| {
    let mut replay = Replay::new(ReplaySettings::default());
    let mut sink = |_: Record| {};
    let _ = replay.read("fuzz", std::io::Cursor::new(data), &mut sink, |_| {});
    let _ = replay.finish(&mut sink);
});
