//! Frames in a TCP/TLS byte stream: where the next frame ends, and what to skip.

use super::frame::{HEADER_LEN, MAGIC, MAGIC_EEP};

/// What a stream reader should do with the bytes it has buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A frame of this many bytes starts the buffer, and all of it is there.
    Frame(usize),
    /// The buffer starts a frame (or could, once more bytes arrive); read more.
    NeedMore,
    /// The first `n` bytes (n ≥ 1) are not a frame: drop them, then try again. The bytes
    /// after them start with the magic, or a part of it.
    Garbage(usize),
}

/// Frames a TCP/TLS byte stream: HEP agents send frames back to back, so the next frame's
/// length is in its header. `max_frame` bounds what the reader is willing to buffer; a header
/// declaring less than 6 or more than `max_frame` bytes is treated as garbage (a byte is
/// skipped and the magic searched again), so one corrupt header cannot stall the stream.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Framing {
    let start = magic_start(buf);
    if start > 0 {
        return Framing::Garbage(start);
    }
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Framing::NeedMore;
    };
    let total = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if total < HEADER_LEN || total > max_frame {
        return Framing::Garbage(1);
    }
    if buf.len() >= total {
        Framing::Frame(total)
    } else {
        Framing::NeedMore
    }
}

/// The first position where the buffer starts with a magic, or ends with a prefix of one.
/// Equals `buf.len()` when no byte can start a frame.
fn magic_start(buf: &[u8]) -> usize {
    (0..buf.len())
        .find(|&i| {
            let rest = &buf[i..];
            let n = rest.len().min(4);
            rest[..n] == MAGIC[..n] || rest[..n] == MAGIC_EEP[..n]
        })
        .unwrap_or(buf.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::decode::hep::frame::MAX_FRAME_LEN;
    use crate::decode::hep::test_frames::Builder;

    #[test]
    fn frames_a_stream() {
        let frame = Builder::v4().c(15, b"INVITE").build();
        let n = frame.len();
        assert_eq!(frame_len(&frame, MAX_FRAME_LEN), Framing::Frame(n));
        assert_eq!(frame_len(&frame[..n - 1], MAX_FRAME_LEN), Framing::NeedMore);
        assert_eq!(frame_len(&frame[..3], MAX_FRAME_LEN), Framing::NeedMore);
        assert_eq!(frame_len(b"", MAX_FRAME_LEN), Framing::NeedMore);
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert_eq!(frame_len(&two, MAX_FRAME_LEN), Framing::Frame(n));
        // Garbage up to the next magic.
        let mut g = b"xxHEPHE".to_vec();
        g.extend_from_slice(&frame);
        assert_eq!(frame_len(&g, MAX_FRAME_LEN), Framing::Garbage(7));
        assert_eq!(frame_len(&g[7..], MAX_FRAME_LEN), Framing::Frame(n));
        // A partial magic at the end is kept.
        assert_eq!(frame_len(b"abcHE", MAX_FRAME_LEN), Framing::Garbage(3));
        assert_eq!(frame_len(b"abcd", MAX_FRAME_LEN), Framing::Garbage(4));
        // Impossible or oversized lengths.
        assert_eq!(
            frame_len(b"HEP3\x00\x05", MAX_FRAME_LEN),
            Framing::Garbage(1)
        );
        assert_eq!(frame_len(&frame, n - 1), Framing::Garbage(1));
    }
}
