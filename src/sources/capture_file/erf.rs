//! Endace ERF (Extensible Record Format, DAG capture cards), read as Wireshark's
//! `wiretap/erf.c` reads it. ERF has no file header and no magic number: a file is taken for
//! ERF when its first records read as ERF records ([`looks_like_erf`], Wireshark's `erf_open`
//! checks, a little stricter on the record type). Each record: a 64-bit little-endian
//! timestamp in 32.32 fixed point (seconds, binary fraction; rounded to the nearest
//! nanosecond as Wireshark rounds), a type (its top bit: an 8-byte extension header follows,
//! repeated while each one's top bit is set), flags, then big-endian record length, loss
//! counter and wire length; Ethernet types have a 2-byte offset/pad field before the frame,
//! multi-channel and AAL2 types a 4-byte header. The frame is the wire length or what the
//! record holds, the smaller; the rest of the record is padding. Pad records (type 48) are
//! not frames. A record's payload is read by its type with the table ERF records in pcap and
//! pcapng files (`LINKTYPE_ERF`) are read with (`decode::link`): Ethernet, IPv4/IPv6 as raw
//! IP, HDLC/POS starting `ff 03` as PPP; every other type (ATM, multi-channel, InfiniBand,
//! provenance metadata...) is handed over as a frame teledge counts as an unsupported link
//! type, as TShark lists it as a frame it does not take SIP or RTP from.
//!
//! [`pcap_record_time`]: in a classic pcap file of link type ERF, a frame's time is its ERF
//! header's, not the pcap record's (Wireshark's `pcap_read_erf_pseudoheader` sets it; pcapng
//! keeps its Enhanced Packet Block's time).

use std::io::Read;

use super::records::{be16, le64, Records};
use super::{corrupt, Ahead, CaptureError, Progress, MAX_SNAPLEN};
use crate::decode::link::{
    erf_payload_link, erf_subheader_len, ERF_HEADER, ERF_TYPE_PAD as TYPE_PAD,
};
use crate::dissect::Frame;
use crate::time::Timestamp;

/// Records Wireshark checks before taking a file for ERF, and how many must be whole unless
/// the file ends right after one.
const RECORDS_TO_CHECK: usize = 20;
const MIN_RECORDS: usize = 3;

/// Whether the bytes ahead read as ERF records (Wireshark's `erf_open`): up to 20 records,
/// each at least a header long and at most 256 KiB, of a type between 1 and 48 (Wireshark
/// takes any type but 0; teledge refuses the types nobody defined, so a text file is not
/// taken for ERF), its extension and subheaders inside it, timestamps not running back by
/// more than a second nor jumping a year; the first three whole unless the file ends
/// cleanly after one. Reads at most 20 records (1.3 MB) ahead, left in `ahead`.
pub(super) fn looks_like_erf(ahead: &mut Ahead<impl Read>) -> Result<bool, CaptureError> {
    let mut at = 0usize;
    let mut previous: Option<u64> = None;
    for checked in 0..RECORDS_TO_CHECK {
        ahead.fill(at + 16)?;
        let rest = ahead.bytes.get(at..).unwrap_or_default();
        if rest.is_empty() {
            // The file ends after a whole record (an empty file is no ERF file).
            return Ok(checked > 0);
        }
        let Some(&header) = rest.first_chunk::<16>() else {
            return Ok(checked >= MIN_RECORDS);
        };
        let rlen = usize::from(be16(&header, 10));
        if rlen < 16 || rlen - 16 > MAX_SNAPLEN as usize {
            return Ok(false);
        }
        let kind = header[8] & 0x7F;
        if kind == 0 || kind > TYPE_PAD {
            return Ok(false);
        }
        ahead.fill(at + rlen)?;
        let whole = ahead.bytes.len() >= at + rlen;
        if kind != TYPE_PAD {
            let ts = le64(&header, 0);
            if let Some(previous) = previous {
                if ts < previous && (previous - ts) >> 32 > 1 {
                    return Ok(false);
                }
                if ts > previous && (ts - previous) >> 32 > 3600 * 24 * 365 {
                    return Ok(false);
                }
            }
            previous = Some(ts);
            // The extension headers and the subheader must be in the record (and in the file:
            // Wireshark says no when they are cut off).
            let mut used = 16;
            let mut more = header[8] & 0x80 != 0;
            while more {
                let Some(&next) = ahead.bytes.get(at + used) else {
                    return Ok(false);
                };
                used += 8;
                if used > rlen || ahead.bytes.len() < at + used {
                    return Ok(false);
                }
                more = next & 0x80 != 0;
            }
            used += erf_subheader_len(kind);
            if used > rlen || ahead.bytes.len() < at + used {
                return Ok(false);
            }
        }
        if !whole {
            return Ok(checked >= MIN_RECORDS);
        }
        at += rlen;
    }
    Ok(true)
}

/// The time of an ERF timestamp: seconds in the high 32 bits, a binary fraction in the low,
/// rounded to the nearest nanosecond (Wireshark's arithmetic).
pub(super) fn erf_time(ts: u64) -> Timestamp {
    let mut secs = (ts >> 32) as i64;
    let mut fraction = (ts & 0xFFFF_FFFF) * 1_000_000_000;
    fraction += (fraction & 0x8000_0000) << 1;
    let mut nanos = (fraction >> 32) as u32;
    if nanos >= 1_000_000_000 {
        nanos -= 1_000_000_000;
        secs += 1;
    }
    Timestamp::from_secs_nanos(secs, nanos)
}

/// The time of a classic pcap frame of link type ERF: its ERF header's timestamp, as
/// Wireshark reads it (`None` for a frame too short to hold a header: it keeps the record's
/// time and fails to decode as a truncated link-layer header).
pub(super) fn pcap_record_time(frame: &[u8]) -> Option<Timestamp> {
    let header = frame.get(..ERF_HEADER)?;
    Some(erf_time(le64(header, 0)))
}

/// The ERF record types whose loss counter field holds a colour instead (libpcap's
/// `pcap-dag.c`): COLOR_HDLC_POS, COLOR_ETH, DSM_COLOR_HDLC_POS, DSM_COLOR_ETH,
/// COLOR_MC_HDLC_POS, COLOR_HASH_POS, COLOR_HASH_ETH.
const COLOR_TYPES: [u8; 7] = [10, 11, 15, 16, 17, 19, 20];

/// The records a capture card lost before this one, by an ERF header's type (byte 8) and
/// loss counter (bytes 12–13); 0 for the colour types.
fn loss_counter(kind: u8, lctr: u16) -> u64 {
    if COLOR_TYPES.contains(&(kind & 0x7F)) {
        0
    } else {
        u64::from(lctr)
    }
}

/// The loss counter of an ERF record carried as a pcap/pcapng frame (link type ERF: the frame
/// starts with the ERF header); 0 for a frame too short to hold one.
pub(super) fn loss_in_frame(frame: &[u8]) -> u64 {
    match frame.get(..ERF_HEADER) {
        Some(header) => loss_counter(header[8], be16(header, 12)),
        None => 0,
    }
}

/// Reads an ERF file from its first byte; adds the records' loss counters to `drops`.
pub(super) fn read<R: Read>(
    input: R,
    mut on_frame: impl FnMut(&Frame<'_>, Progress),
    drops: &mut super::FileDrops,
) -> Result<u64, CaptureError> {
    let mut records = Records::new(input, 0);
    let mut header = [0u8; 16];
    loop {
        let start = records.offset;
        let frame = records.frames + 1;
        match records.read_up_to(&mut header)? {
            0 => return Ok(records.frames),
            16 => {}
            _ => {
                return Err(CaptureError::Truncated {
                    frame,
                    offset: start,
                })
            }
        }
        let kind = header[8];
        let rlen = u32::from(be16(&header, 10));
        let wlen = u32::from(be16(&header, 14));
        let Some(body) = rlen.checked_sub(16).filter(|&b| b <= MAX_SNAPLEN) else {
            return Err(corrupt(
                frame,
                start,
                format!("ERF record length {rlen}, under 16"),
            ));
        };
        if body == 0 && kind & 0x7F != TYPE_PAD {
            return Err(corrupt(frame, start, "ERF record with no bytes"));
        }
        records.read_record(body as usize, frame, start)?;
        // Counted for every record, pad records too, as libpcap counts them.
        drops.erf_loss_counters = drops
            .erf_loss_counters
            .saturating_add(loss_counter(kind, be16(&header, 12)));
        if kind == TYPE_PAD {
            continue;
        }
        // Extension headers, then the type's subheader.
        let mut skip = 0usize;
        let mut more = kind & 0x80 != 0;
        while more {
            let Some(&next) = records.buffer.get(skip) else {
                return Err(corrupt(
                    frame,
                    start,
                    "ERF extension headers past the record",
                ));
            };
            skip += 8;
            more = next & 0x80 != 0;
        }
        skip += erf_subheader_len(kind & 0x7F);
        if skip > body as usize {
            return Err(corrupt(frame, start, "ERF headers past the record"));
        }
        let captured = (wlen as usize).min(body as usize - skip);
        let data = skip..skip + captured;
        let link = erf_payload_link(kind & 0x7F, &records.buffer[data.clone()]);
        let time = erf_time(le64(&header, 0));
        records.emit(link, time, data, &mut on_frame);
    }
}
