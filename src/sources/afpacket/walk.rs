//! The pure `TPACKET_V3` block walker: a retired block is bytes, every header in it is
//! bounds-checked rather than trusted, and each packet is handed on as a [`LivePacket`].

use std::mem::{offset_of, size_of};

use crate::decode::link::LinkType;
use crate::dissect::Frame;
use crate::time::Timestamp;

/// Counters of what this side of the ring did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureCounters {
    /// Packets handed on.
    pub packets: u64,
    /// Bytes handed on (captured lengths, VLAN tags included).
    pub bytes: u64,
    /// Blocks read and handed back.
    pub blocks: u64,
    /// Packets cut by the kernel because they did not fit a block.
    pub truncated: u64,
    /// Packets whose VLAN tag the kernel had stripped and we put back.
    pub vlan_tags_restored: u64,
    /// Outgoing copies on a loopback interface skipped here (the arriving copy is kept).
    pub loopback_duplicates: u64,
    /// Blocks whose headers pointed outside the block; the rest of such a block is skipped.
    pub malformed_blocks: u64,
}

/// One captured packet, borrowing the ring (or the re-tagging buffer) until the callback
/// returns.
#[derive(Debug, Clone, Copy)]
pub struct LivePacket<'a> {
    /// When the kernel received or sent it.
    pub time: Timestamp,
    /// The frame as on the wire, from the link-layer header (cut to the block if larger).
    pub data: &'a [u8],
    /// Length on the wire.
    pub original_len: u32,
    pub link: LinkType,
    /// Sent by this host (as opposed to received).
    pub outgoing: bool,
}

impl<'a> LivePacket<'a> {
    /// True when the kernel kept less than the whole frame.
    pub fn is_truncated(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.original_len)
    }

    /// The packet as a frame of the decode path; `number` counts frames since open.
    pub fn frame(&self, number: u64) -> Frame<'a> {
        Frame {
            number,
            time: self.time,
            link: self.link,
            data: self.data,
        }
    }
}

// ---- Ring layout (linux/if_packet.h), checked against libc's definitions at compile time.

pub(super) const TPACKET_ALIGNMENT: usize = libc::TPACKET_ALIGNMENT;
pub(super) const TPACKET3_HDRLEN: usize = libc::TPACKET3_HDRLEN;
/// `struct tpacket_block_desc`: the block header. `hdr.bh1` (`tpacket_hdr_v1`) starts at 8.
const BLOCK_HDR: usize = offset_of!(libc::tpacket_block_desc, hdr);
pub(super) const BLOCK_STATUS: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, block_status);
const BLOCK_NUM_PKTS: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, num_pkts);
const BLOCK_FIRST_PKT: usize = BLOCK_HDR + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);
/// `struct tpacket3_hdr`: the packet header.
const PKT_NEXT: usize = offset_of!(libc::tpacket3_hdr, tp_next_offset);
const PKT_SEC: usize = offset_of!(libc::tpacket3_hdr, tp_sec);
const PKT_NSEC: usize = offset_of!(libc::tpacket3_hdr, tp_nsec);
const PKT_SNAPLEN: usize = offset_of!(libc::tpacket3_hdr, tp_snaplen);
const PKT_LEN: usize = offset_of!(libc::tpacket3_hdr, tp_len);
const PKT_STATUS: usize = offset_of!(libc::tpacket3_hdr, tp_status);
const PKT_MAC: usize = offset_of!(libc::tpacket3_hdr, tp_mac);
const PKT_VLAN_TCI: usize =
    offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci);
const PKT_VLAN_TPID: usize =
    offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid);
/// The `sockaddr_ll` after the packet header, aligned to 16.
const PKT_SLL: usize = TPACKET3_HDRLEN - size_of::<libc::sockaddr_ll>();
const PKT_SLL_PKTTYPE: usize = PKT_SLL + offset_of!(libc::sockaddr_ll, sll_pkttype);

// The offsets of linux/if_packet.h, the same on every architecture (fixed-width fields;
// `seq_num` is `__aligned_u64`, so 32-bit ARM lays the block header out like 64-bit).
const _: () = {
    assert!(BLOCK_STATUS == 8);
    assert!(BLOCK_NUM_PKTS == 12);
    assert!(BLOCK_FIRST_PKT == 16);
    assert!(size_of::<libc::tpacket3_hdr>() == 48);
    assert!(PKT_NEXT == 0 && PKT_SEC == 4 && PKT_NSEC == 8 && PKT_SNAPLEN == 12);
    assert!(PKT_LEN == 16 && PKT_STATUS == 20 && PKT_MAC == 24);
    assert!(PKT_VLAN_TCI == 32 && PKT_VLAN_TPID == 36);
    assert!(PKT_SLL == 48 && PKT_SLL_PKTTYPE == 58);
};

/// Where a block's packets come from.
#[derive(Debug, Clone, Copy)]
pub struct WalkContext {
    /// The link-layer framing of the interface's packets.
    pub link: LinkType,
    /// A loopback interface: its outgoing copies are skipped (the arriving copy is kept).
    pub loopback: bool,
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let b = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

/// Hands on every packet of one retired block; returns how many. Pure: the block is bytes,
/// so malformed headers are bounds-checked, not trusted (the fuzz target `afpacket_block`
/// holds it to that). `scratch` holds a frame whose VLAN tag is put back; `counters` are
/// added to.
pub fn walk_block(
    block: &[u8],
    context: WalkContext,
    scratch: &mut Vec<u8>,
    counters: &mut CaptureCounters,
    f: &mut impl FnMut(LivePacket<'_>),
) -> usize {
    let (Some(count), Some(first)) = (
        u32_at(block, BLOCK_NUM_PKTS),
        u32_at(block, BLOCK_FIRST_PKT),
    ) else {
        counters.malformed_blocks += 1;
        return 0;
    };
    let mut handed = 0;
    let mut offset = first as usize;
    for index in 0..count {
        let Some(packet) = block.get(offset..) else {
            counters.malformed_blocks += 1;
            break;
        };
        match read_packet(packet, context, scratch, counters) {
            Some(Some(live)) => {
                counters.packets += 1;
                counters.bytes += live.data.len() as u64;
                f(live);
                handed += 1;
            }
            Some(None) => {}
            None => {
                counters.malformed_blocks += 1;
                break;
            }
        }
        let next = u32_at(packet, PKT_NEXT).unwrap_or(0) as usize;
        if next == 0 {
            // The last packet has no next; an earlier one without is damage.
            if index + 1 < count {
                counters.malformed_blocks += 1;
            }
            break;
        }
        offset = offset.saturating_add(next);
    }
    handed
}

/// One packet at the start of `packet`: `None` when its header is out of bounds,
/// `Some(None)` when it is skipped (the outgoing copy on a loopback).
fn read_packet<'a>(
    packet: &'a [u8],
    context: WalkContext,
    scratch: &'a mut Vec<u8>,
    counters: &mut CaptureCounters,
) -> Option<Option<LivePacket<'a>>> {
    let sec = u32_at(packet, PKT_SEC)?;
    let nsec = u32_at(packet, PKT_NSEC)?;
    let snaplen = u32_at(packet, PKT_SNAPLEN)? as usize;
    let len = u32_at(packet, PKT_LEN)?;
    let status = u32_at(packet, PKT_STATUS)?;
    let mac = usize::from(u16_at(packet, PKT_MAC)?);
    let tci = u32_at(packet, PKT_VLAN_TCI)?;
    let tpid = u16_at(packet, PKT_VLAN_TPID)?;
    let pkttype = *packet.get(PKT_SLL_PKTTYPE)?;
    let data = packet.get(mac..mac.checked_add(snaplen)?)?;
    let outgoing = pkttype == libc::PACKET_OUTGOING;
    if outgoing && context.loopback {
        counters.loopback_duplicates += 1;
        return Some(None);
    }
    let time = Timestamp::from_secs_nanos(i64::from(sec), nsec);
    let mut live = LivePacket {
        time,
        data,
        original_len: len,
        link: context.link,
        outgoing,
    };
    if (snaplen as u64) < u64::from(len) {
        counters.truncated += 1;
    }
    // libpcap's test: some drivers leave the VALID bit unset for tag 0 and others the reverse.
    let tagged = status & libc::TP_STATUS_VLAN_VALID != 0 || tci != 0;
    if tagged && context.link == LinkType::Ethernet && data.len() >= 12 {
        let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
            tpid
        } else {
            ETHERTYPE_VLAN
        };
        scratch.clear();
        scratch.extend_from_slice(&data[..12]);
        scratch.extend_from_slice(&tpid.to_be_bytes());
        scratch.extend_from_slice(&(tci as u16).to_be_bytes());
        scratch.extend_from_slice(&data[12..]);
        live.data = scratch.as_slice();
        live.original_len = len.saturating_add(4);
        counters.vlan_tags_restored += 1;
    }
    Some(Some(live))
}

const ETHERTYPE_VLAN: u16 = 0x8100;

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet header as the kernel writes it, followed by its frame.
    struct Fake {
        sec: u32,
        nsec: u32,
        len: u32,
        status: u32,
        tci: u32,
        tpid: u16,
        pkttype: u8,
        frame: Vec<u8>,
    }

    fn fake(frame: &[u8]) -> Fake {
        Fake {
            sec: 1_767_225_600,
            nsec: 5,
            len: frame.len() as u32,
            status: libc::TP_STATUS_USER,
            tci: 0,
            tpid: 0,
            pkttype: libc::PACKET_HOST,
            frame: frame.to_vec(),
        }
    }

    fn put32(block: &mut [u8], at: usize, value: u32) {
        block[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }

    /// Lays packets out in a block the way `tpacket_rcv` does.
    fn block_of(packets: &[Fake]) -> Vec<u8> {
        let mut block = vec![0u8; 8192];
        let first = 48;
        put32(&mut block, BLOCK_STATUS, libc::TP_STATUS_USER);
        put32(&mut block, BLOCK_NUM_PKTS, packets.len() as u32);
        put32(&mut block, BLOCK_FIRST_PKT, first as u32);
        let mut at = first;
        for (i, p) in packets.iter().enumerate() {
            let mac = 80; // TPACKET_ALIGN(TPACKET3_HDRLEN) + alignment of the IP header
            let size = (mac + p.frame.len()).next_multiple_of(16);
            let next = if i + 1 == packets.len() { 0 } else { size };
            put32(&mut block, at + PKT_NEXT, next as u32);
            put32(&mut block, at + PKT_SEC, p.sec);
            put32(&mut block, at + PKT_NSEC, p.nsec);
            put32(&mut block, at + PKT_SNAPLEN, p.frame.len() as u32);
            put32(&mut block, at + PKT_LEN, p.len);
            put32(&mut block, at + PKT_STATUS, p.status);
            block[at + PKT_MAC..at + PKT_MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
            put32(&mut block, at + PKT_VLAN_TCI, p.tci);
            block[at + PKT_VLAN_TPID..at + PKT_VLAN_TPID + 2]
                .copy_from_slice(&p.tpid.to_ne_bytes());
            block[at + PKT_SLL_PKTTYPE] = p.pkttype;
            block[at + mac..at + mac + p.frame.len()].copy_from_slice(&p.frame);
            at += size;
        }
        block
    }

    const ETHERNET: WalkContext = WalkContext {
        link: LinkType::Ethernet,
        loopback: false,
    };

    /// Each packet handed on: time, bytes, original length, truncated.
    type Seen = Vec<(Timestamp, Vec<u8>, u32, bool)>;

    fn walk(block: &[u8], context: WalkContext) -> (Seen, CaptureCounters) {
        let mut seen = Vec::new();
        let mut counters = CaptureCounters::default();
        let mut scratch = Vec::new();
        let handed = walk_block(
            block,
            context,
            &mut scratch,
            &mut counters,
            &mut |p: LivePacket<'_>| {
                seen.push((p.time, p.data.to_vec(), p.original_len, p.is_truncated()));
            },
        );
        assert_eq!(handed, seen.len());
        (seen, counters)
    }

    fn ethernet_frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xaa; 6];
        frame.extend([0xbb; 6]);
        frame.extend(ethertype.to_be_bytes());
        frame.extend(payload);
        frame
    }

    #[test]
    fn packets_come_out_in_order_with_their_times() {
        let a = ethernet_frame(0x0800, b"first");
        let b = ethernet_frame(0x86dd, b"second packet");
        let mut second = fake(&b);
        second.nsec = 999_999_999;
        let (seen, counters) = walk(&block_of(&[fake(&a), second]), ETHERNET);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1, a);
        assert_eq!(seen[1].1, b);
        assert_eq!(seen[0].0, Timestamp::from_secs_nanos(1_767_225_600, 5));
        assert_eq!(
            seen[1].0,
            Timestamp::from_secs_nanos(1_767_225_600, 999_999_999)
        );
        assert_eq!(counters.packets, 2);
        assert_eq!(counters.bytes, (a.len() + b.len()) as u64);
        assert_eq!(counters.malformed_blocks, 0);
    }

    #[test]
    fn stripped_vlan_tag_is_put_back() {
        let inner = ethernet_frame(0x0800, b"ip packet");
        let mut tagged = fake(&inner);
        tagged.status |= libc::TP_STATUS_VLAN_VALID;
        tagged.tci = 0x2064; // priority 1, VLAN 100
        let mut outer = fake(&inner);
        outer.status |= libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
        outer.tci = 7;
        outer.tpid = 0x88a8;
        let (seen, counters) = walk(&block_of(&[tagged, outer]), ETHERNET);
        let mut expected = inner[..12].to_vec();
        expected.extend([0x81, 0x00, 0x20, 0x64]);
        expected.extend(&inner[12..]);
        assert_eq!(seen[0].1, expected);
        assert_eq!(seen[0].2, inner.len() as u32 + 4);
        assert!(!seen[0].3);
        assert_eq!(&seen[1].1[12..16], &[0x88, 0xa8, 0x00, 0x07]);
        assert_eq!(counters.vlan_tags_restored, 2);
    }

    #[test]
    fn vlan_tag_is_not_invented_on_raw_ip() {
        let mut packet = fake(b"\x45rawip-packet");
        packet.tci = 100;
        let context = WalkContext {
            link: LinkType::RawIp,
            loopback: false,
        };
        let (seen, counters) = walk(&block_of(&[packet]), context);
        assert_eq!(seen[0].1, b"\x45rawip-packet");
        assert_eq!(counters.vlan_tags_restored, 0);
    }

    #[test]
    fn cut_packets_are_flagged() {
        let frame = ethernet_frame(0x0800, &[0; 100]);
        let mut cut = fake(&frame);
        cut.len = 70_000;
        let (seen, counters) = walk(&block_of(&[cut]), ETHERNET);
        assert!(seen[0].3);
        assert_eq!(seen[0].2, 70_000);
        assert_eq!(counters.truncated, 1);
    }

    #[test]
    fn outgoing_copies_are_skipped_on_loopback_only() {
        let frame = ethernet_frame(0x0800, b"x");
        let mut sent = fake(&frame);
        sent.pkttype = libc::PACKET_OUTGOING;
        let block = block_of(&[sent, fake(&frame)]);
        let loopback = WalkContext {
            link: LinkType::Ethernet,
            loopback: true,
        };
        let (seen, counters) = walk(&block, loopback);
        assert_eq!((seen.len(), counters.loopback_duplicates), (1, 1));
        let (seen, counters) = walk(&block, ETHERNET);
        assert_eq!((seen.len(), counters.loopback_duplicates), (2, 0));
    }

    #[test]
    fn headers_pointing_outside_the_block_are_counted_not_trusted() {
        let frame = ethernet_frame(0x0800, b"payload");
        let good = block_of(&[fake(&frame), fake(&frame)]);

        let mut first_outside = good.clone();
        put32(&mut first_outside, BLOCK_FIRST_PKT, 1 << 20);
        let (seen, counters) = walk(&first_outside, ETHERNET);
        assert_eq!((seen.len(), counters.malformed_blocks), (0, 1));

        let mut snaplen_outside = good.clone();
        put32(&mut snaplen_outside, 48 + PKT_SNAPLEN, 9000);
        let (seen, counters) = walk(&snaplen_outside, ETHERNET);
        assert_eq!((seen.len(), counters.malformed_blocks), (0, 1));

        let mut count_too_high = good.clone();
        put32(&mut count_too_high, BLOCK_NUM_PKTS, 1000);
        let (seen, counters) = walk(&count_too_high, ETHERNET);
        assert_eq!((seen.len(), counters.malformed_blocks), (2, 1));

        let (seen, _) = walk(&good[..20], ETHERNET);
        assert!(seen.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_block_bytes_are_walked_without_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            first in 0u32..600,
            count in 0u32..50,
        ) {
            let mut block = bytes;
            block.resize(block.len().max(24), 0);
            put32(&mut block, BLOCK_FIRST_PKT, first);
            put32(&mut block, BLOCK_NUM_PKTS, count);
            let (seen, _) = walk(&block, ETHERNET);
            proptest::prop_assert!(seen.len() <= count as usize);
        }
    }
}
