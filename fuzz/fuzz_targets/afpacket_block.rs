//! The TPACKET_V3 block walker on arbitrary blocks: never panics, never hands on more packets
//! than the block header declares or bytes from outside the block, and counts what it hands.
//!
//! Input: one byte choosing the interface (bit 0: raw IP instead of Ethernet, bit 1: a
//! loopback), then the block as the kernel would have left it in the ring (block header with
//! packet count and first offset, packet headers with their next offsets, frames).
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::decode::link::LinkType;
use teledge::sources::afpacket::{walk_block, CaptureCounters, LivePacket, WalkContext};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, block)) = data.split_first() else {
        return;
    };
    let context = WalkContext {
        link: if choice & 1 == 0 {
            LinkType::Ethernet
        } else {
            LinkType::RawIp
        },
        loopback: choice & 2 != 0,
    };
    let declared = block
        .get(12..16)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let mut counters = CaptureCounters::default();
    let mut scratch = Vec::new();
    let mut seen = 0usize;
    let mut bytes = 0u64;
    let handed = walk_block(
        block,
        context,
        &mut scratch,
        &mut counters,
        &mut |packet: LivePacket<'_>| {
            // A re-tagged frame is the block's bytes plus the 4-byte tag, never more.
            assert!(packet.data.len() <= block.len() + 4);
            seen += 1;
            bytes += packet.data.len() as u64;
        },
    );
    assert_eq!(handed, seen);
    assert!(handed as u64 <= u64::from(declared));
    assert_eq!(counters.packets, handed as u64);
    assert_eq!(counters.bytes, bytes);
    assert!(counters.vlan_tags_restored <= counters.packets);
    assert!(counters.malformed_blocks <= 1);
});
