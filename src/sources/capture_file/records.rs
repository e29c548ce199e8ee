//! What the NetMon, snoop and ERF readers share: reading a record's bytes from a buffered
//! input while keeping count of the file offset, and handing a frame over.

use std::io::{BufRead, BufReader, Read};

use pcap_parser::PcapError;

use super::{CaptureError, Progress, BUFFER};
use crate::decode::link::LinkType;
use crate::dissect::Frame;
use crate::time::Timestamp;

/// A buffered input and the file offset of its next byte.
pub(super) struct Records<R> {
    pub(super) input: BufReader<R>,
    pub(super) offset: u64,
    /// Frames handed over so far.
    pub(super) frames: u64,
    /// The record being read (reused).
    pub(super) buffer: Vec<u8>,
}

impl<R: Read> Records<R> {
    pub(super) fn new(input: R, offset: u64) -> Self {
        Records {
            input: BufReader::with_capacity(BUFFER, input),
            offset,
            frames: 0,
            buffer: Vec::new(),
        }
    }

    /// Reads up to `buf.len()` bytes; fewer only at the end of the input.
    pub(super) fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, CaptureError> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(CaptureError::Read(PcapError::ReadError)),
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    /// Reads exactly `buf.len()` bytes, or says the file ends inside record `frame` (which
    /// began at `start`).
    pub(super) fn read_exact(
        &mut self,
        buf: &mut [u8],
        frame: u64,
        start: u64,
    ) -> Result<(), CaptureError> {
        if self.read_up_to(buf)? < buf.len() {
            return Err(CaptureError::Truncated {
                frame,
                offset: start,
            });
        }
        Ok(())
    }

    /// Reads `len` bytes into [`Records::buffer`] (`len` is bounded by the caller).
    pub(super) fn read_record(
        &mut self,
        len: usize,
        frame: u64,
        start: u64,
    ) -> Result<(), CaptureError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.resize(len, 0);
        let result = self.read_exact(&mut buffer, frame, start);
        self.buffer = buffer;
        result
    }

    /// Skips `len` bytes (a record's padding), or says the file ends inside record `frame`.
    pub(super) fn skip(
        &mut self,
        mut len: u64,
        frame: u64,
        start: u64,
    ) -> Result<(), CaptureError> {
        while len > 0 {
            let available = match self.input.fill_buf() {
                Ok(b) => b.len(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(CaptureError::Read(PcapError::ReadError)),
            };
            if available == 0 {
                return Err(CaptureError::Truncated {
                    frame,
                    offset: start,
                });
            }
            let n = available.min(usize::try_from(len).unwrap_or(usize::MAX));
            self.input.consume(n);
            self.offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    /// Hands `data` (a part of [`Records::buffer`]) over as the next frame.
    pub(super) fn emit(
        &mut self,
        link: LinkType,
        time: Timestamp,
        data: std::ops::Range<usize>,
        on_frame: &mut impl FnMut(&Frame<'_>, Progress),
    ) {
        self.frames += 1;
        let frame = Frame {
            number: self.frames,
            time,
            link,
            data: &self.buffer[data],
        };
        on_frame(
            &frame,
            Progress {
                frames: self.frames,
                bytes: self.offset,
            },
        );
    }
}

/// The `u16` and `u32` at `at` of a slice the caller has checked the length of.
pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(super) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
