//! Sun/Solaris `snoop` files (RFC 1761) and Shomiti/Finisar Surveyor's variant of them, read
//! as Wireshark's `wiretap/snoop.c` reads them: a 16-byte header (`snoop\0\0\0`, version 2
//! to 5, a DLPI link type, big-endian), then records of a 24-byte header (original and
//! captured length, record length, cumulative drops — the highest is counted as the file's
//! [`super::FileDrops`] —, seconds, microseconds), the captured
//! bytes and padding up to the record length. A first record padded by at least 16 bytes
//! (room for Shomiti's trailer) makes it a Surveyor file, whose link types are Shomiti's own.
//! An ATM (SunATM, `DL_IPATM`) record starts with a 4-byte pseudo-header, not handed over.
//! A version or a link type Wireshark does not read is refused by name; a record longer than
//! 256 KiB, or with more captured bytes than its record length holds, is damage.

use std::io::Read;

use super::records::{be32, Records};
use super::{corrupt, CaptureError, Progress, MAX_SNAPLEN};
use crate::decode::link::LinkType;
use crate::dissect::Frame;
use crate::time::Timestamp;

pub(super) const MAGIC: &[u8; 8] = b"snoop\0\0\0";

/// What a file's link type is read as (Wireshark's `snoop_encap`, `snoop_private_encap`,
/// `shomiti_encap`); `None` where Wireshark refuses the file. Types teledge does not decode
/// are kept as their pcap link types, counted as unsupported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encap {
    Link(LinkType),
    /// SunATM: a 4-byte pseudo-header, then an ATM PDU.
    Atm,
}

fn encap(network: u32, shomiti: bool) -> Option<Encap> {
    use LinkType::*;
    let link = |l| Some(Encap::Link(l));
    if shomiti {
        return match network {
            0 | 4 | 10 | 12 | 19 => link(Ethernet),
            2 | 11 | 13 | 14 => link(Unsupported(6)),
            8 => link(Unsupported(10)),
            // 802.11 behind Shomiti's radio header.
            18 => link(Unsupported(105)),
            _ => None,
        };
    }
    if network & 0x8000_0000 != 0 {
        // Solaris' private types: only ipnet(7D) is read.
        return (network == 0x8000_0005).then_some(Encap::Link(Unsupported(226)));
    }
    match network {
        0 | 4 => link(Ethernet),
        2 => link(Unsupported(6)),
        8 => link(Unsupported(10)),
        // "Other" and software loopback: Wireshark's NULL (a 4-byte address family).
        9 | 14 => link(Null),
        16 => link(Unsupported(122)),
        18 => Some(Encap::Atm),
        26 => link(Unsupported(199)),
        _ => None,
    }
}

/// Reads a snoop file from its first byte.
pub(super) fn read<R: Read>(
    input: R,
    mut on_frame: impl FnMut(&Frame<'_>, Progress),
    drops: &mut super::FileDrops,
) -> Result<u64, CaptureError> {
    let mut records = Records::new(input, 0);
    let mut header = [0u8; 16];
    records.read_exact(&mut header, 1, 0)?;
    let version = be32(&header, 8);
    let network = be32(&header, 12);
    if !(2..=5).contains(&version) {
        return Err(CaptureError::Unreadable(format!("snoop version {version}")));
    }
    let mut next = [0u8; 24];
    let got = records.read_up_to(&mut next)?;
    // Shomiti's Surveyor pads its records for a 16-byte trailer; snoop pads to 4 bytes.
    let shomiti = got == 24 && {
        let (incl, rec) = (be32(&next, 4), be32(&next, 8));
        u64::from(rec) >= 24 + u64::from(incl) + 16
    };
    let Some(encap) = encap(network, shomiti) else {
        return Err(CaptureError::Unreadable(format!(
            "{} link type {network}",
            if shomiti { "Shomiti Surveyor" } else { "snoop" }
        )));
    };
    let mut have = got;
    // The highest cumulative drop count of the records so far (counted as it rises, so a
    // read that fails part-way has counted what it read).
    let mut cumulative_drops = 0u32;
    loop {
        let start = records.offset - have as u64;
        let frame = records.frames + 1;
        match have {
            0 => return Ok(records.frames),
            24 => {}
            _ => {
                return Err(CaptureError::Truncated {
                    frame,
                    offset: start,
                })
            }
        }
        let orig = be32(&next, 0);
        let mut captured = be32(&next, 4);
        let mut record = be32(&next, 8);
        if orig > MAX_SNAPLEN || captured > MAX_SNAPLEN {
            return Err(corrupt(
                frame,
                start,
                format!("snoop record of {} bytes, over 256 KiB", orig.max(captured)),
            ));
        }
        if captured > record || record - captured < 24 {
            return Err(corrupt(
                frame,
                start,
                format!("snoop record of {record} bytes holding {captured} captured bytes"),
            ));
        }
        let mut skip_head = 0usize;
        if encap == Encap::Atm {
            if captured < 4 {
                return Err(corrupt(
                    frame,
                    start,
                    "SunATM record shorter than its header",
                ));
            }
            skip_head = 4;
            captured -= 4;
            record -= 4;
        }
        let time = Timestamp::from_secs_nanos(
            i64::from(be32(&next, 16)),
            (u64::from(be32(&next, 20)) * 1000).min(999_999_999) as u32,
        );
        let data_len = skip_head + captured as usize;
        records.read_record(data_len, frame, start)?;
        let cumulative = be32(&next, 12);
        if cumulative > cumulative_drops {
            drops.snoop_cumulative_drops = drops
                .snoop_cumulative_drops
                .saturating_add(u64::from(cumulative - cumulative_drops));
            cumulative_drops = cumulative;
        }
        let link = match encap {
            Encap::Link(link) => link,
            Encap::Atm => LinkType::Unsupported(123),
        };
        // The padding goes before the frame is handed over, so that its progress counts it.
        records.skip(u64::from(record - captured - 24), frame, start)?;
        records.emit(link, time, skip_head..data_len, &mut on_frame);
        have = records.read_up_to(&mut next)?;
    }
}
