//! What the SIP reorder window does (`correlation::sharded`): a capture file through the live
//! pipeline with SHARDS correlation shards (environment, default 2) and THREADS inputs (third
//! argument, default 1; frames spread by flow as `PACKET_FANOUT` does, each input in capture
//! order), with the reorder window the daemon sets for more than one capture thread (second
//! argument, milliseconds) or without it (0), and the daemon's media hold and tick. Meant for
//! an instruction count, which is repeatable on a loaded machine, and for comparing the
//! records with and without the window (SHOW=1 prints every record on stderr):
//!
//! ```text
//! cargo build --release --example sip_window_cost -p teledge
//! target/release/teledge-gencap --out sip.pcap --calls 3000 --no-rtp-packets --interval-ms 20
//! valgrind --tool=callgrind target/release/examples/sip_window_cost sip.pcap 0
//! valgrind --tool=callgrind target/release/examples/sip_window_cost sip.pcap 250
//! ```
//!
//! Prints the frames, the records by type, the SIP messages the window put back in order and
//! the media hold's counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use teledge::correlation::calls::CallLimits;
use teledge::correlation::media::MediaLimits;
use teledge::correlation::sharded::ShardedCorrelator;
use teledge::dissect::DissectLimits;
use teledge::pipeline::LivePipeline;
use teledge::record::{ClosedBy, Record};
use teledge::time::Timestamp;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: sip_window_cost CAPTURE WINDOW_MS [THREADS]");
    let window_ms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(250);
    let shards: usize = std::env::var("SHARDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let correlator = ShardedCorrelator::new(shards, CallLimits::default(), MediaLimits::default())
        .with_reorder_window(Duration::from_millis(window_ms));
    // The daemon's media hold: the threads' skew (the window's length when it has one), and
    // with a window the window and a tick more (`daemon::media_hold`).
    let window = Duration::from_millis(window_ms);
    let (skew, tick_every) = (Duration::from_millis(250), Duration::from_millis(250));
    let hold = if window.is_zero() {
        skew
    } else {
        skew + window + tick_every
    };
    let live = LivePipeline::new(correlator, hold);
    // Like PACKET_FANOUT by flow: both directions of a flow (Ethernet, IPv4, UDP: the
    // addresses and ports at bytes 26..38) on one input of `threads`, each in capture order.
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let inputs: Vec<_> = (0..threads.max(1))
        .map(|i| live.add_input(&format!("thread-{i}"), DissectLimits::default(), None))
        .collect();
    let input_of = |data: &[u8]| {
        let flow = data.get(26..38).unwrap_or_default();
        let (a, b) = flow.split_at(flow.len().min(4));
        let (ports_a, ports_b) = (
            b.get(4..6).unwrap_or_default(),
            b.get(6..8).unwrap_or_default(),
        );
        let side = |ip: &[u8], port: &[u8]| -> u64 {
            ip.iter()
                .chain(port)
                .fold(0u64, |h, &x| h.wrapping_mul(31).wrapping_add(u64::from(x)))
        };
        let key = side(a, ports_a) ^ side(b.get(..4).unwrap_or_default(), ports_b);
        &inputs[(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % inputs.len()]
    };
    let mut frames = 0u64;
    let mut records = std::collections::BTreeMap::<&str, u64>::new();
    let show = std::env::var_os("SHOW").is_some();
    let mut count = |r: Record| {
        // Serialised only when shown, so that the count measures the pipeline.
        if show {
            eprintln!("{}", serde_json::to_string(&r).unwrap());
        }
        let kind = match r {
            Record::Call(_) => "call",
            Record::Stream(_) => "stream",
            Record::OrphanStreams(_) => "orphan_streams",
            _ => "other",
        };
        *records.entry(kind).or_default() += 1;
    };
    let mut last = Timestamp::default();
    let mut next_tick = None::<Timestamp>;
    teledge::sources::capture_file::read_frames(std::fs::File::open(&path).unwrap(), |f, _| {
        frames += 1;
        last = f.time;
        let input = input_of(f.data);
        live.frame(input, f, &mut count);
        for input in &inputs {
            live.release_held(input, f.time, &mut count);
        }
        // The daemon's ticker: every 250 ms of capture time.
        let tick = *next_tick.get_or_insert(f.time);
        if f.time >= tick {
            live.tick(f.time, &mut count);
            next_tick = Some(f.time.plus(tick_every));
        }
    })
    .unwrap();
    live.finish(last, ClosedBy::CaptureEnd, &mut count);
    let stats = live.correlator().stats();
    println!(
        "{frames} frames, records {records:?}, window {window_ms} ms, {} SIP reordered; \
         hold {:?}",
        stats.sip_reordered,
        live.hold_counters()
    );
}
