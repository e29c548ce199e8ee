//! WebSocket framing (RFC 6455 §5.2), for SIP over WebSocket (RFC 7118).
//!
//! Pure: reads a frame header from the front of a buffer, and unmasks payloads. The stream
//! state (upgrade handshake, message assembly) lives in `reassembly::sip_stream`.

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    /// Masking key; clients must mask every frame they send.
    pub mask: Option<[u8; 4]>,
    /// Bytes of header before the payload.
    pub header_len: usize,
    pub payload_len: u64,
}

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    Reserved(u8),
}

/// Why a buffer does not start with a usable frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("WebSocket reserved bits set without an extension")]
    ReservedBits,
    #[error("WebSocket frame length {0} over the limit")]
    TooLong(u64),
}

/// Reads the frame header at the start of `data`: `Ok(None)` when more bytes are needed.
/// Frames longer than `max_payload` are refused so a corrupt length cannot make the caller
/// buffer without bound.
pub fn frame_header(data: &[u8], max_payload: u64) -> Result<Option<FrameHeader>, WsError> {
    let (Some(&b0), Some(&b1)) = (data.first(), data.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        // RSV1 is permessage-deflate, which SIP endpoints do not negotiate; treat any as corrupt.
        return Err(WsError::ReservedBits);
    }
    let opcode = match b0 & 0x0F {
        0 => Opcode::Continuation,
        1 => Opcode::Text,
        2 => Opcode::Binary,
        8 => Opcode::Close,
        9 => Opcode::Ping,
        10 => Opcode::Pong,
        other => Opcode::Reserved(other),
    };
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut header_len) = match b1 & 0x7F {
        126 => match data.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match data.get(2..10) {
            Some(b) => {
                let mut len = [0u8; 8];
                len.copy_from_slice(b);
                (u64::from_be_bytes(len), 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if payload_len > max_payload {
        return Err(WsError::TooLong(payload_len));
    }
    let mask = if masked {
        let Some(key) = data.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// Appends `payload` to `out`, unmasked with `key` when there is one.
pub fn unmask_into(payload: &[u8], key: Option<[u8; 4]>, out: &mut Vec<u8>) {
    match key {
        Some(key) => out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k)),
        None => out.extend_from_slice(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_masked_text_frame() {
        // RFC 6455 §5.7: a masked "Hello".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let h = frame_header(&frame, 1 << 20).unwrap().unwrap();
        assert!(h.fin);
        assert_eq!(h.opcode, Opcode::Text);
        assert_eq!(h.header_len, 6);
        let mut out = Vec::new();
        unmask_into(&frame[6..], h.mask, &mut out);
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn incomplete_and_oversized() {
        assert_eq!(frame_header(&[0x81], 10), Ok(None));
        assert_eq!(frame_header(&[0x81, 0xFE, 0x01], 10), Ok(None));
        assert_eq!(
            frame_header(&[0x82, 0x7F, 0, 0, 0, 1, 0, 0, 0, 0], 1 << 20),
            Err(WsError::TooLong(1 << 32))
        );
    }
}
