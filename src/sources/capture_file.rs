//! Capture files: pcap (either byte order, micro- or nanosecond) and pcapng (several sections
//! and interfaces, each with its own link type and timestamp resolution), read with
//! `pcap-parser` as a stream so a file of any size is read in bounded memory.
//!
//! A damaged file yields every frame before the damage, then an error that says which frame
//! and byte offset the damage is at.

use std::io::Read;

use pcap_parser::pcapng::Block;
use pcap_parser::traits::{PcapNGPacketBlock, PcapReaderIterator};
use pcap_parser::{create_reader, PcapBlockOwned, PcapError};

use crate::decode::link::LinkType;
use crate::dissect::Frame;
use crate::time::Timestamp;

/// Initial read buffer; grown for larger records up to [`MAX_RECORD`]. The reader reads
/// straight into it: hand [`read_frames`] the file itself, not a `BufReader` (that would copy
/// every byte once more).
const BUFFER: usize = 256 * 1024;
/// Largest record accepted (pcapng blocks can legitimately exceed the 256 KiB snaplen a bit).
const MAX_RECORD: usize = 16 * 1024 * 1024;

/// Why a capture could not be read (to the end).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not a pcap or pcapng file")]
    NotACapture,
    #[error("file ends in the middle of packet {frame} (byte offset {offset}): truncated capture")]
    Truncated { frame: u64, offset: u64 },
    #[error("corrupt capture at packet {frame} (byte offset {offset}): {detail}")]
    Corrupt {
        frame: u64,
        offset: u64,
        detail: String,
    },
    #[error("read error")]
    Read(#[source] pcap_parser::PcapError<&'static [u8]>),
    /// The file reads, but every one of its frames failed to decode (an unsupported link
    /// layer, a broken capture tool): not an empty capture.
    #[error("none of the {frames} frames could be decoded ({detail})")]
    Undecodable { frames: u64, detail: String },
}

/// Link type and timestamp scaling of one pcapng interface (or of a pcap file).
#[derive(Debug, Clone, Copy)]
struct Interface {
    link: LinkType,
    /// Timestamp units per second.
    units_per_second: u64,
    /// Seconds added to every timestamp (`if_tsoffset`).
    offset_secs: i64,
}

/// Progress of a read, for progress bars.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub frames: u64,
    pub bytes: u64,
}

/// Reads every frame of a capture and hands it to `on_frame`. Returns the number of frames.
/// Frames of interfaces whose link type teledge does not decode are still handed over (the
/// decoder counts them).
pub fn read_frames<R: Read + Send>(
    input: R,
    mut on_frame: impl FnMut(&Frame<'_>, Progress),
) -> Result<u64, CaptureError> {
    let mut reader = match create_reader(BUFFER, input) {
        Ok(r) => r,
        Err(PcapError::Eof) => return Err(CaptureError::NotACapture),
        Err(PcapError::HeaderNotRecognized) => return Err(CaptureError::NotACapture),
        Err(PcapError::Incomplete(_)) | Err(PcapError::UnexpectedEof) => {
            return Err(CaptureError::Truncated {
                frame: 1,
                offset: 0,
            })
        }
        Err(e) => return Err(CaptureError::Read(e.to_owned_vec())),
    };
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut frames: u64 = 0;
    let mut last_time = Timestamp::default();
    let mut capacity = BUFFER;

    loop {
        let offset = reader.consumed() as u64;
        match reader.next() {
            Ok((len, block)) => {
                let frame_data = match &block {
                    PcapBlockOwned::LegacyHeader(header) => {
                        interfaces.clear();
                        interfaces.push(Interface {
                            link: LinkType::from_linktype(header.network.0),
                            units_per_second: if header.is_nanosecond_precision() {
                                1_000_000_000
                            } else {
                                1_000_000
                            },
                            offset_secs: 0,
                        });
                        None
                    }
                    PcapBlockOwned::Legacy(packet) => {
                        let Some(iface) = interfaces.first() else {
                            return Err(corrupt(frames + 1, offset, "packet before file header"));
                        };
                        let units = iface.units_per_second;
                        // Nanosecond files store nanoseconds in the usec field.
                        let nanos = u64::from(packet.ts_usec) * (1_000_000_000 / units);
                        let time = Timestamp::from_secs_nanos(
                            i64::from(packet.ts_sec),
                            nanos.min(999_999_999) as u32,
                        );
                        let caplen = (packet.caplen as usize).min(packet.data.len());
                        Some((iface.link, time, &packet.data[..caplen]))
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                        // Interface ids are per section.
                        interfaces.clear();
                        None
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        let Some(units_per_second) = idb.ts_resolution().filter(|u| *u > 0) else {
                            return Err(corrupt(
                                frames + 1,
                                offset,
                                "interface with an invalid timestamp resolution",
                            ));
                        };
                        interfaces.push(Interface {
                            link: LinkType::from_linktype(idb.linktype.0),
                            units_per_second,
                            offset_secs: idb.ts_offset(),
                        });
                        None
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let Some(iface) = interfaces.get(epb.if_id as usize) else {
                            return Err(corrupt(
                                frames + 1,
                                offset,
                                format!("packet names undeclared interface {}", epb.if_id),
                            ));
                        };
                        let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                        let secs = ticks / iface.units_per_second;
                        let rest = ticks % iface.units_per_second;
                        let nanos = (u128::from(rest) * 1_000_000_000
                            / u128::from(iface.units_per_second))
                            as u32;
                        let secs = i64::try_from(secs)
                            .unwrap_or(i64::MAX)
                            .saturating_add(iface.offset_secs);
                        let time = Timestamp::from_secs_nanos(secs, nanos);
                        Some((iface.link, time, epb.packet_data()))
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        // Simple packets have no timestamp: keep the last one so time never
                        // runs backwards.
                        let Some(iface) = interfaces.first() else {
                            return Err(corrupt(frames + 1, offset, "packet before interface"));
                        };
                        Some((iface.link, last_time, spb.packet_data()))
                    }
                    PcapBlockOwned::NG(_) => None,
                };
                if let Some((link, time, data)) = frame_data {
                    frames += 1;
                    last_time = time;
                    let frame = Frame {
                        number: frames,
                        time,
                        link,
                        data,
                    };
                    on_frame(
                        &frame,
                        Progress {
                            frames,
                            bytes: offset + len as u64,
                        },
                    );
                }
                // Without a shift: `consume` moves the rest of the buffer to its start
                // whenever half of it has been read, copying every byte of the file once
                // more; `refill` shifts only the partial record left at the end.
                reader.consume_noshift(len);
            }
            Err(PcapError::Eof) => return Ok(frames),
            Err(PcapError::UnexpectedEof) => {
                return Err(CaptureError::Truncated {
                    frame: frames + 1,
                    offset,
                })
            }
            Err(PcapError::Incomplete(_)) | Err(PcapError::BufferTooSmall) => {
                let before = reader.data().len();
                reader
                    .refill()
                    .map_err(|e| CaptureError::Read(e.to_owned_vec()))?;
                if reader.data().len() == before {
                    if reader.reader_exhausted() {
                        if before == 0 {
                            return Ok(frames);
                        }
                        return Err(CaptureError::Truncated {
                            frame: frames + 1,
                            offset,
                        });
                    }
                    // The buffer is full and the record still does not fit.
                    capacity = grow(&mut *reader, capacity, frames, offset)?;
                }
            }
            Err(e) => return Err(corrupt(frames + 1, offset, e.to_string())),
        }
    }
}

fn grow(
    reader: &mut (dyn PcapReaderIterator + Send),
    capacity: usize,
    frames: u64,
    offset: u64,
) -> Result<usize, CaptureError> {
    let bigger = capacity * 2;
    if bigger > MAX_RECORD || !reader.grow(bigger) {
        return Err(corrupt(
            frames + 1,
            offset,
            format!("record larger than {MAX_RECORD} bytes"),
        ));
    }
    Ok(bigger)
}

fn corrupt(frame: u64, offset: u64, detail: impl ToString) -> CaptureError {
    CaptureError::Corrupt {
        frame,
        offset,
        detail: detail.to_string(),
    }
}
