//! SCTP packets (RFC 9260 §3): the common header and the chunks after it, for SIP over SCTP
//! (RFC 4168).
//!
//! Pure: a packet in, its ports, verification tag and an iterator over its chunks out; DATA
//! chunks (§3.3.1) are decoded field by field, every other chunk type is reported by its type
//! only. Several chunks may be bundled in one packet; a chunk's length excludes its padding to
//! a multiple of four. The CRC32c is not checked: captures taken on the sending host carry
//! checksums the NIC had yet to fill in (TShark does not check it by default either). The
//! reassembly of fragmented user messages lives in `reassembly::sctp`.

/// Length of the common header.
pub const COMMON_HEADER_LEN: usize = 12;
/// Length of a DATA chunk's header (type, flags, length, TSN, stream, SSN, PPID).
const DATA_HEADER_LEN: usize = 16;
/// Chunk type of DATA.
const CHUNK_DATA: u8 = 0;

/// An SCTP packet: common header, chunks still encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SctpPacket<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub verification_tag: u32,
    chunks: &'a [u8],
}

/// One chunk of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    Data(DataChunk<'a>),
    /// Any other chunk (INIT, SACK, HEARTBEAT, I-DATA, ...), by its type.
    Other {
        kind: u8,
    },
}

/// A DATA chunk: one user message, or one fragment of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataChunk<'a> {
    pub tsn: u32,
    pub stream: u16,
    /// Stream sequence number (meaningless when `unordered`).
    pub ssn: u16,
    /// Payload protocol identifier; SIP uses 0 (none assigned).
    pub ppid: u32,
    /// U flag: delivered out of stream order.
    pub unordered: bool,
    /// B flag: first fragment of the user message.
    pub begin: bool,
    /// E flag: last fragment of the user message.
    pub end: bool,
    pub payload: &'a [u8],
}

/// Why a packet or chunk does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SctpError {
    #[error("SCTP packet shorter than its common header")]
    Truncated,
    #[error("SCTP chunk length {0} below its header")]
    ChunkTooShort(u16),
    #[error("SCTP chunk of {declared} bytes runs past the packet ({left} left)")]
    ChunkOverrun { declared: u16, left: usize },
    #[error("SCTP DATA chunk of {0} bytes shorter than its header")]
    DataTooShort(u16),
}

/// Reads the common header.
pub fn parse(packet: &[u8]) -> Result<SctpPacket<'_>, SctpError> {
    let header = packet
        .get(..COMMON_HEADER_LEN)
        .ok_or(SctpError::Truncated)?;
    Ok(SctpPacket {
        src_port: u16::from_be_bytes([header[0], header[1]]),
        dst_port: u16::from_be_bytes([header[2], header[3]]),
        verification_tag: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        chunks: &packet[COMMON_HEADER_LEN..],
    })
}

impl<'a> SctpPacket<'a> {
    /// The chunks in order. After an error the iterator ends.
    pub fn chunks(&self) -> Chunks<'a> {
        Chunks { rest: self.chunks }
    }
}

/// Iterator over the chunks of a packet.
#[derive(Debug, Clone)]
pub struct Chunks<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Result<Chunk<'a>, SctpError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Fewer than four bytes left is padding (or trailing garbage after the last chunk).
        if self.rest.len() < 4 {
            self.rest = &[];
            return None;
        }
        let kind = self.rest[0];
        let flags = self.rest[1];
        let declared = u16::from_be_bytes([self.rest[2], self.rest[3]]);
        let length = usize::from(declared);
        if length < 4 {
            self.rest = &[];
            return Some(Err(SctpError::ChunkTooShort(declared)));
        }
        if length > self.rest.len() {
            let left = self.rest.len();
            self.rest = &[];
            return Some(Err(SctpError::ChunkOverrun { declared, left }));
        }
        let chunk = &self.rest[..length];
        // The padding of the last chunk may be missing (snapshot length); never past the end.
        let padded = length.next_multiple_of(4).min(self.rest.len());
        self.rest = &self.rest[padded..];
        if kind != CHUNK_DATA {
            return Some(Ok(Chunk::Other { kind }));
        }
        if length < DATA_HEADER_LEN {
            self.rest = &[];
            return Some(Err(SctpError::DataTooShort(declared)));
        }
        Some(Ok(Chunk::Data(DataChunk {
            tsn: u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            stream: u16::from_be_bytes([chunk[8], chunk[9]]),
            ssn: u16::from_be_bytes([chunk[10], chunk[11]]),
            ppid: u32::from_be_bytes([chunk[12], chunk[13], chunk[14], chunk[15]]),
            unordered: flags & 0x04 != 0,
            begin: flags & 0x02 != 0,
            end: flags & 0x01 != 0,
            payload: &chunk[DATA_HEADER_LEN..],
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_chunk(flags: u8, tsn: u32, payload: &[u8]) -> Vec<u8> {
        let mut c = vec![0, flags];
        c.extend_from_slice(&((16 + payload.len()) as u16).to_be_bytes());
        c.extend_from_slice(&tsn.to_be_bytes());
        c.extend_from_slice(&[0, 1, 0, 7, 0, 0, 0, 0]);
        c.extend_from_slice(payload);
        while c.len() % 4 != 0 {
            c.push(0);
        }
        c
    }

    #[test]
    fn bundled_chunks_with_padding() {
        let mut packet = vec![0x13, 0xC4, 0x13, 0xC5, 0, 0, 0, 9, 0, 0, 0, 0];
        // A SACK, then two DATA chunks of odd lengths (padded).
        packet.extend_from_slice(&[3, 0, 0, 16]);
        packet.extend_from_slice(&[0; 12]);
        packet.extend(data_chunk(0x03, 10, b"abc"));
        packet.extend(data_chunk(0x02, 11, b"hello"));
        let p = parse(&packet).unwrap();
        assert_eq!(
            (p.src_port, p.dst_port, p.verification_tag),
            (5060, 5061, 9)
        );
        let chunks: Vec<_> = p.chunks().collect::<Result<_, _>>().unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0], Chunk::Other { kind: 3 });
        let Chunk::Data(second) = chunks[2] else {
            panic!("{chunks:?}")
        };
        assert_eq!(second.tsn, 11);
        assert_eq!(
            (second.begin, second.end, second.unordered),
            (true, false, false)
        );
        assert_eq!((second.stream, second.ssn), (1, 7));
        assert_eq!(second.payload, b"hello");
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        let header = [0u8; 12];
        assert_eq!(parse(&header[..11]), Err(SctpError::Truncated));
        let mut packet = header.to_vec();
        packet.extend_from_slice(&[0, 3, 0, 2]);
        assert_eq!(
            parse(&packet).unwrap().chunks().next(),
            Some(Err(SctpError::ChunkTooShort(2)))
        );
        let mut packet = header.to_vec();
        packet.extend_from_slice(&[0, 3, 0, 40, 1, 2]);
        assert!(matches!(
            parse(&packet).unwrap().chunks().next(),
            Some(Err(SctpError::ChunkOverrun { declared: 40, .. }))
        ));
        let mut packet = header.to_vec();
        packet.extend_from_slice(&[0, 3, 0, 8, 1, 2, 3, 4]);
        let mut chunks = parse(&packet).unwrap().chunks();
        assert_eq!(chunks.next(), Some(Err(SctpError::DataTooShort(8))));
        assert_eq!(chunks.next(), None);
    }
}
