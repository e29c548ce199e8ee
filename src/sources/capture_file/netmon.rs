//! Microsoft Network Monitor 1.x (`RTSS`) and 2.x (`GMBU`) files, read as Wireshark's
//! `wiretap/netmon.c` reads them.
//!
//! A 128-byte little-endian header gives the version, the media type, the capture's start
//! as a SYSTEMTIME, and where the frame table is: one 32-bit file offset per frame, usually
//! at the end of the file. Frames are read in the table's order from the offsets it gives
//! (NetMon files may have holes between records, or put one record before another), so the
//! input must be able to seek; the table is read in windows of 16,384 entries, never whole,
//! and records are read through one 256 KiB buffer (a seek only where the next record is not
//! the next bytes).
//!
//! Records: 1.x, an 8-byte header (milliseconds since the start, original and captured
//! length as 16 bits); 2.x, 16 bytes (microseconds since the start as 64 bits, read as
//! Wireshark reads them: times ten as a signed count of 100 ns, so a "negative" delta puts
//! a frame before the start; lengths as 32 bits). 2.1 and later add a trailer after the
//! data with the frame's own media type (2 bytes), 2.2 a process index (4), 2.3 a UTC
//! timestamp (a FILETIME, 100 ns since 1601, used instead of start plus delta) and a time
//! zone index (1). Media types: NetMon's own (Ethernet, Token Ring, FDDI, NDIS WAN — ATM,
//! whose 16-byte header is not handed over in 1.x and 2.0 files —, 802.11 with NetMon's
//! radio header, raw IP for tunnels, wireless WAN and raw IP frames), a pcap link type
//! plus 0xE000 for converted pcap files, and NetMon's metadata frames (ETW events, the
//! network-info list, filters), which are handed over as frames of a link type teledge does
//! not decode (TShark lists them); payload-header, network-info and DNS-cache records are
//! not frames (Wireshark skips them too). A media type Wireshark refuses stops the read
//! there, as it does in Wireshark.
//!
//! The start time of 1.x and 2.0–2.2 files is a wall-clock time with no time zone: Wireshark
//! reads it in the zone it runs in (`mktime`), teledge reads it as UTC (so compare with
//! TShark under `TZ=UTC`). 2.3 files carry UTC per frame.
//!
//! Damage, as Wireshark: a frame table whose length is no multiple of 4, empty, or over 512
//! Mi entries, or a comment or process table out of bounds, refuses the file; a frame table
//! cut off by the end of the file too (no frame can be found without it; the file was cut
//! short). A record a table entry points to that runs past the end of the file ends the read
//! with a truncation error after the frames before it; one larger than 256 KiB is damage.

use std::io::{Read, Seek, SeekFrom};

use super::records::{le16, le32, le64, Records};
use super::{corrupt, CaptureError, Progress, MAX_SNAPLEN};
use crate::decode::link::LinkType;
use crate::dissect::Frame;
use crate::time::Timestamp;

pub(super) const MAGIC_1X: &[u8; 4] = b"RTSS";
pub(super) const MAGIC_2X: &[u8; 4] = b"GMBU";

const HEADER: usize = 128;
/// Frame-table entries read at once.
const TABLE_WINDOW: usize = 16_384;
/// Wireshark's bounds on the tables.
const MAX_FRAMES: u32 = 512 * 1024 * 1024;
const MAX_PROCESSES: u32 = 512 * 1024;
/// Seconds from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
const FILETIME_EPOCH: i64 = 11_644_473_600;
/// Bytes of NetMon's ATM header (destination, source, VPI, VCI) in 1.x and 2.0 files.
const ATM_HEADER: usize = 16;
/// What an ATM frame is counted as: NetMon's media type 4 above pcap's link type numbers
/// (pcap has none for it), as NetMon's own metadata types (0xE083..., 0xFFE0...) are.
const NETMON_ATM: u32 = 0x1_0004;

/// What a NetMon media type is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Frame(LinkType),
    /// NDIS WAN, which is ATM: its 16-byte header is not handed over (1.x and 2.0).
    Atm,
    /// A record that is not a frame (payload header, network info, DNS cache).
    Skip,
}

/// NetMon's own media types (Wireshark's `netmon_encap`); `None` where Wireshark refuses.
/// Types teledge does not decode keep their pcap link types where pcap has one.
fn netmon_media(network: u16) -> Option<Media> {
    use LinkType::*;
    let frame = |l| Some(Media::Frame(l));
    match network {
        // 0 is what some NetMon 3.4 VPN captures put on Ethernet frames.
        0 | 1 => frame(Ethernet),
        2 => frame(Unsupported(6)),
        3 => frame(Unsupported(10)),
        4 => Some(Media::Atm),
        // 802.11 behind NetMon's radio header.
        6 => frame(Unsupported(105)),
        // Tunnels, wireless WAN, raw IP frames.
        7..=9 => frame(RawIp),
        _ => None,
    }
}

/// The media type in a 2.1+ trailer (Wireshark's `netmon_process_record`).
fn trailer_media(network: u16) -> Result<Media, String> {
    let refused = || {
        Err(format!(
            "NetMon media type {network:#06x}, unknown or unsupported"
        ))
    };
    match network {
        // Message Analyzer's exported types: 802.11, then WFP captures.
        0xE080 => Ok(Media::Frame(LinkType::Unsupported(105))),
        0xE083..=0xE088 => Ok(Media::Frame(LinkType::Unsupported(u32::from(network)))),
        0xE081 | 0xE082 | 0xE089 | 0xE08A => refused(),
        // A converted pcap file: its link type.
        n if n & 0xF000 == 0xE000 => {
            Ok(Media::Frame(LinkType::from_linktype(i32::from(n & 0x0FFF))))
        }
        n if n < 12 => match netmon_media(n) {
            // The ATM header is removed only where the file's media type says ATM.
            Some(Media::Atm) => Ok(Media::Frame(LinkType::Unsupported(NETMON_ATM))),
            Some(media) => Ok(media),
            None => refused(),
        },
        // Event Tracing for Windows events, the adapters list, a NetMon filter.
        0xFFE0 | 0xFFFB | 0xFFFF => Ok(Media::Frame(LinkType::Unsupported(u32::from(network)))),
        0xFFFC..=0xFFFE => Ok(Media::Skip),
        _ => refused(),
    }
}

/// Seconds since 1970 of a SYSTEMTIME read as UTC, out-of-range fields carried over as
/// `mktime` carries them.
fn systemtime_secs(year: u16, month: u16, day: u16, hour: u16, min: u16, sec: u16) -> i64 {
    let months = i64::from(year) * 12 + i64::from(month) - 1;
    let (y, m) = (months.div_euclid(12), months.rem_euclid(12) + 1);
    // Days from 1970-01-01 to the first of that month (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468 + i64::from(day) - 1;
    days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec)
}

/// Reads a NetMon file. `input` is the whole file, read from its first byte; it has been read
/// `consumed` bytes into.
pub(super) fn read<R: Read + Seek>(
    input: R,
    consumed: u64,
    mut on_frame: impl FnMut(&Frame<'_>, Progress),
) -> Result<u64, CaptureError> {
    let mut records = Records::new(input, consumed);
    let size = records
        .input
        .seek(SeekFrom::End(0))
        .map_err(|_| CaptureError::NotSeekable("NetMon"))?;
    records.offset = size;
    let go = |records: &mut Records<R>, to: u64| -> Result<(), CaptureError> {
        if records.offset != to {
            let by = i64::try_from(to).unwrap_or(i64::MAX) - records.offset as i64;
            records
                .input
                .seek_relative(by)
                .map_err(|_| CaptureError::NotSeekable("NetMon"))?;
            records.offset = to;
        }
        Ok(())
    };
    go(&mut records, 0)?;
    let mut header = [0u8; HEADER];
    if records.read_up_to(&mut header)? < 64 {
        return Err(CaptureError::Truncated {
            frame: 1,
            offset: 0,
        });
    }
    let (minor, major) = (header[4], header[5]);
    if !matches!(major, 1 | 2) {
        return Err(CaptureError::Unreadable(format!(
            "NetMon major version {major}"
        )));
    }
    let file_network = le16(&header, 6);
    let Some(file_media) = netmon_media(file_network) else {
        return Err(CaptureError::Unreadable(format!(
            "NetMon media type {file_network}"
        )));
    };
    let per_frame = major == 2 && minor >= 1;
    let field = |i: usize| le16(&header, 8 + 2 * i);
    let start_secs = systemtime_secs(field(0), field(1), field(3), field(4), field(5), field(6));
    let start_nanos = i64::from(field(7)) * 1_000_000;
    let table_offset = le32(&header, 24);
    let table_len = le32(&header, 28);
    let table_frames = table_len / 4;
    if !table_len.is_multiple_of(4) || table_frames == 0 || table_frames > MAX_FRAMES {
        return Err(corrupt(
            1,
            0,
            format!("NetMon frame table length {table_len}"),
        ));
    }
    if major == 2 && minor >= 2 {
        let (comment_offset, comment_len) = (le32(&header, 40), le32(&header, 44));
        if comment_len > 0
            && (!(17..=MAX_FRAMES).contains(&comment_len) || u64::from(comment_offset) > size)
        {
            return Err(corrupt(1, 0, "NetMon comment table out of bounds"));
        }
        let (process_offset, processes) = (le32(&header, 48), le32(&header, 52));
        if process_offset > 0
            && processes > 0
            && (processes > MAX_PROCESSES || u64::from(process_offset) > size)
        {
            return Err(corrupt(1, 0, "NetMon process table out of bounds"));
        }
    }
    let table_end = u64::from(table_offset) + u64::from(table_len);
    if table_end > size {
        return Err(CaptureError::IndexTruncated {
            format: "NetMon",
            offset: u64::from(table_offset),
            size,
        });
    }
    let record_header = if major == 1 { 8 } else { 16 };
    let trailer = match (major, minor) {
        (2, 1) => 2,
        (2, 2) => 6,
        (2, m) if m >= 3 => 15,
        _ => 0,
    };
    let mut window: Vec<u8> = Vec::new();
    let mut entry = 0u32;
    let mut head = [0u8; 16];
    let mut tail = [0u8; 15];
    while entry < table_frames {
        let at = entry as usize % TABLE_WINDOW;
        if at == 0 {
            let n = (table_frames - entry).min(TABLE_WINDOW as u32) as usize;
            window.resize(n * 4, 0);
            go(&mut records, u64::from(table_offset) + u64::from(entry) * 4)?;
            let mut table = std::mem::take(&mut window);
            let read = records.read_exact(&mut table, records.frames + 1, table_end);
            window = table;
            read?;
        }
        let start = u64::from(le32(&window, at * 4));
        entry += 1;
        let frame = records.frames + 1;
        go(&mut records, start)?;
        records.read_exact(&mut head[..record_header], frame, start)?;
        let (delta_nanos, captured) = if major == 1 {
            (
                i64::from(le32(&head, 0)) * 1_000_000,
                u32::from(le16(&head, 6)),
            )
        } else {
            // Microseconds times ten, taken as a signed count of 100 ns (Wireshark).
            let hundreds = le64(&head, 0).wrapping_mul(10) as i64;
            (hundreds.wrapping_mul(100), le32(&head, 12))
        };
        if captured > MAX_SNAPLEN {
            return Err(corrupt(
                frame,
                start,
                format!("NetMon record of {captured} bytes, over 256 KiB"),
            ));
        }
        let mut skip_head = 0usize;
        if !per_frame && file_media == Media::Atm {
            if (captured as usize) < ATM_HEADER {
                return Err(corrupt(
                    frame,
                    start,
                    "NetMon ATM record shorter than its header",
                ));
            }
            skip_head = ATM_HEADER;
        }
        records.read_record(captured as usize, frame, start)?;
        let mut media = file_media;
        let mut time = {
            let t = start_nanos.saturating_add(delta_nanos);
            Timestamp::from_secs_nanos(
                start_secs.saturating_add(t.div_euclid(1_000_000_000)),
                t.rem_euclid(1_000_000_000) as u32,
            )
        };
        if trailer > 0 {
            records.read_exact(&mut tail[..trailer], frame, start)?;
            media = trailer_media(le16(&tail, 0)).map_err(|e| corrupt(frame, start, e))?;
            if trailer == 15 {
                let ticks = le64(&tail, 6);
                time = Timestamp::from_secs_nanos(
                    (ticks / 10_000_000) as i64 - FILETIME_EPOCH,
                    ((ticks % 10_000_000) * 100) as u32,
                );
            }
        }
        let link = match media {
            Media::Skip => continue,
            Media::Frame(link) => link,
            Media::Atm => LinkType::Unsupported(NETMON_ATM),
        };
        records.emit(link, time, skip_head..captured as usize, &mut on_frame);
    }
    Ok(records.frames)
}
