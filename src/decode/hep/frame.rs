//! One whole HEPv3 frame: the header, the chunks, the mandatory ones checked, a compressed
//! payload inflated within a bound.

use std::borrow::Cow;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::time::Timestamp;

/// The magic of a HEPv3 frame.
pub const MAGIC: [u8; 4] = *b"HEP3";
/// The alias the specification accepts for [`MAGIC`].
pub const MAGIC_EEP: [u8; 4] = *b"EEP3";
/// Frame header: magic and total length.
pub const HEADER_LEN: usize = 6;
/// Chunk header: vendor, type, length.
pub const CHUNK_HEADER_LEN: usize = 6;
/// Largest frame the 16-bit length field can describe.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;
/// Default bound of a decompressed payload: a SIP message over UDP fits in 64 KiB, and a
/// compression bomb must not turn one frame into megabytes.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 * 1024;

/// Why a buffer is not a usable HEPv3 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HepError {
    #[error("HEP frame shorter than its 6-byte header ({0} bytes)")]
    TooShort(usize),
    #[error("not a HEP frame (no HEP3/EEP3 magic)")]
    BadMagic,
    #[error("HEP version {0} is not supported (only HEPv3)")]
    UnsupportedVersion(u8),
    #[error("HEP frame declares {declared} bytes but {actual} were received")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("HEP chunk at offset {offset} runs past the end of the frame")]
    TruncatedChunk { offset: usize },
    #[error("HEP chunk at offset {offset} declares length {length}, less than its 6-byte header")]
    ChunkTooShort { offset: usize, length: u16 },
    #[error("HEP chunk type {chunk_type:#06x} has {actual} payload bytes, expected {expected}")]
    BadChunkSize {
        chunk_type: u16,
        expected: usize,
        actual: usize,
    },
    #[error("HEP IP family {0} is neither AF_INET (2) nor AF_INET6 (10)")]
    BadFamily(u8),
    #[error("HEP frame lacks the mandatory {0} chunk")]
    MissingChunk(&'static str),
    #[error("HEP compressed payload does not inflate")]
    DecompressFailed,
    #[error("HEP compressed payload inflates beyond {limit} bytes")]
    DecompressedTooLarge { limit: usize },
}

/// [`HepError`] without its details: a closed set, usable as a metric label and as an index
/// into counter arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HepErrorKind {
    TooShort,
    BadMagic,
    UnsupportedVersion,
    LengthMismatch,
    TruncatedChunk,
    ChunkTooShort,
    BadChunkSize,
    BadFamily,
    MissingChunk,
    DecompressFailed,
    DecompressedTooLarge,
}

impl HepErrorKind {
    /// Every kind, in [`HepErrorKind::index`] order.
    pub const ALL: [HepErrorKind; 11] = [
        HepErrorKind::TooShort,
        HepErrorKind::BadMagic,
        HepErrorKind::UnsupportedVersion,
        HepErrorKind::LengthMismatch,
        HepErrorKind::TruncatedChunk,
        HepErrorKind::ChunkTooShort,
        HepErrorKind::BadChunkSize,
        HepErrorKind::BadFamily,
        HepErrorKind::MissingChunk,
        HepErrorKind::DecompressFailed,
        HepErrorKind::DecompressedTooLarge,
    ];
    /// Number of kinds.
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HepErrorKind::TooShort => "too_short",
            HepErrorKind::BadMagic => "bad_magic",
            HepErrorKind::UnsupportedVersion => "unsupported_version",
            HepErrorKind::LengthMismatch => "length_mismatch",
            HepErrorKind::TruncatedChunk => "truncated_chunk",
            HepErrorKind::ChunkTooShort => "chunk_too_short",
            HepErrorKind::BadChunkSize => "bad_chunk_size",
            HepErrorKind::BadFamily => "bad_family",
            HepErrorKind::MissingChunk => "missing_chunk",
            HepErrorKind::DecompressFailed => "decompress_failed",
            HepErrorKind::DecompressedTooLarge => "decompressed_too_large",
        }
    }

    /// Position in [`HepErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl HepError {
    pub fn kind(&self) -> HepErrorKind {
        match self {
            HepError::TooShort(_) => HepErrorKind::TooShort,
            HepError::BadMagic => HepErrorKind::BadMagic,
            HepError::UnsupportedVersion(_) => HepErrorKind::UnsupportedVersion,
            HepError::LengthMismatch { .. } => HepErrorKind::LengthMismatch,
            HepError::TruncatedChunk { .. } => HepErrorKind::TruncatedChunk,
            HepError::ChunkTooShort { .. } => HepErrorKind::ChunkTooShort,
            HepError::BadChunkSize { .. } => HepErrorKind::BadChunkSize,
            HepError::BadFamily(_) => HepErrorKind::BadFamily,
            HepError::MissingChunk(_) => HepErrorKind::MissingChunk,
            HepError::DecompressFailed => HepErrorKind::DecompressFailed,
            HepError::DecompressedTooLarge { .. } => HepErrorKind::DecompressedTooLarge,
        }
    }
}

/// IP family of the captured packet (chunk 0x0001).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

/// Transport of the captured packet (chunk 0x0002, an IP protocol number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    Udp,
    Tcp,
    Sctp,
    /// Anything else, as sent (Kamailio historically sent wrong values here).
    Other(u8),
}

impl IpProtocol {
    pub fn from_number(n: u8) -> IpProtocol {
        match n {
            17 => IpProtocol::Udp,
            6 => IpProtocol::Tcp,
            132 => IpProtocol::Sctp,
            other => IpProtocol::Other(other),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            IpProtocol::Udp => 17,
            IpProtocol::Tcp => 6,
            IpProtocol::Sctp => 132,
            IpProtocol::Other(n) => n,
        }
    }
}

/// What the payload is (chunk 0x000b). Only the codes teledge acts on are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtoType {
    /// 1: one SIP message.
    Sip,
    /// 5: an RTCP report as JSON, correlation id = SIP Call-ID (see [`super::RtcpJson`]).
    RtcpJson,
    /// 100: a log line (not in spec rev 37, but heplify and HOMER use it).
    Log,
    /// Any other code, as sent.
    Other(u8),
}

impl ProtoType {
    pub fn from_code(code: u8) -> ProtoType {
        match code {
            1 => ProtoType::Sip,
            5 => ProtoType::RtcpJson,
            100 => ProtoType::Log,
            other => ProtoType::Other(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            ProtoType::Sip => 1,
            ProtoType::RtcpJson => 5,
            ProtoType::Log => 100,
            ProtoType::Other(n) => n,
        }
    }
}

/// A decoded HEPv3 frame. Byte strings borrow from the input unless they had to be inflated;
/// [`HepFrame::into_owned`] detaches the frame from the buffer. `Debug` leaves the
/// authentication key out (it is the listener's key when the frame is genuine).
#[derive(Clone, PartialEq, Eq)]
pub struct HepFrame<'a> {
    pub family: IpFamily,
    pub ip_protocol: IpProtocol,
    /// Source of the captured packet (not of the HEP datagram).
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Capture time at the agent: seconds (0x0009) plus microseconds (0x000a).
    pub time: Timestamp,
    pub proto_type: ProtoType,
    /// Capture agent id (0x000c).
    pub capture_id: Option<u32>,
    /// Keep-alive timer in seconds (0x000d).
    pub keep_alive_s: Option<u16>,
    /// Authentication key (0x000e), as sent; check it with [`crate::sources::hep::HepAuth`].
    pub auth_key: Option<Cow<'a, [u8]>>,
    /// The captured payload, inflated if it came in chunk 0x0010.
    pub payload: Cow<'a, [u8]>,
    /// True when the payload came compressed (chunk 0x0010).
    pub compressed: bool,
    /// Internal correlation id (0x0011), in practice the SIP Call-ID.
    pub correlation_id: Option<Cow<'a, [u8]>>,
    /// VLAN id (0x0012).
    pub vlan: Option<u16>,
    /// Capture agent name (0x0013; older documents call it "group id").
    pub node_name: Option<Cow<'a, [u8]>>,
    /// TCP flags of the captured packet (0x0017).
    pub tcp_flags: Option<u8>,
    /// IP TOS of the captured packet (0x0018).
    pub ip_tos: Option<u8>,
    /// MOS × 100 (0x0020, heplify's convention).
    pub mos: Option<u16>,
    /// Chunks of a vendor other than 0, skipped.
    pub vendor_chunks: u16,
    /// Generic chunks teledge does not keep (MACs, tags, reserved types, ...), skipped.
    pub skipped_chunks: u16,
}

impl std::fmt::Debug for HepFrame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let HepFrame {
            family,
            ip_protocol,
            src,
            dst,
            time,
            proto_type,
            capture_id,
            keep_alive_s,
            auth_key,
            payload,
            compressed,
            correlation_id,
            vlan,
            node_name,
            tcp_flags,
            ip_tos,
            mos,
            vendor_chunks,
            skipped_chunks,
        } = self;
        f.debug_struct("HepFrame")
            .field("family", family)
            .field("ip_protocol", ip_protocol)
            .field("src", src)
            .field("dst", dst)
            .field("time", time)
            .field("proto_type", proto_type)
            .field("capture_id", capture_id)
            .field("keep_alive_s", keep_alive_s)
            .field("auth_key", &auth_key.as_ref().map(|_| "<redacted>"))
            .field("payload", payload)
            .field("compressed", compressed)
            .field("correlation_id", correlation_id)
            .field("vlan", vlan)
            .field("node_name", node_name)
            .field("tcp_flags", tcp_flags)
            .field("ip_tos", ip_tos)
            .field("mos", mos)
            .field("vendor_chunks", vendor_chunks)
            .field("skipped_chunks", skipped_chunks)
            .finish()
    }
}

/// A frame that owns its bytes (what the listener sends on).
pub type HepFrameOwned = HepFrame<'static>;

impl<'a> HepFrame<'a> {
    /// The same frame, owning its bytes.
    pub fn into_owned(self) -> HepFrame<'static> {
        fn own(c: Option<Cow<'_, [u8]>>) -> Option<Cow<'static, [u8]>> {
            c.map(|c| Cow::Owned(c.into_owned()))
        }
        HepFrame {
            auth_key: own(self.auth_key),
            payload: Cow::Owned(self.payload.into_owned()),
            correlation_id: own(self.correlation_id),
            node_name: own(self.node_name),
            family: self.family,
            ip_protocol: self.ip_protocol,
            src: self.src,
            dst: self.dst,
            time: self.time,
            proto_type: self.proto_type,
            capture_id: self.capture_id,
            keep_alive_s: self.keep_alive_s,
            compressed: self.compressed,
            vlan: self.vlan,
            tcp_flags: self.tcp_flags,
            ip_tos: self.ip_tos,
            mos: self.mos,
            vendor_chunks: self.vendor_chunks,
            skipped_chunks: self.skipped_chunks,
        }
    }

    /// The correlation id as text, when it is UTF-8.
    pub fn correlation_id_str(&self) -> Option<&str> {
        self.correlation_id
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The node name as text, when it is UTF-8.
    pub fn node_name_str(&self) -> Option<&str> {
        self.node_name
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// True when the buffer starts like a HEPv3 frame (used to recognise HEP inside UDP).
pub fn starts_with_hep3(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC) || bytes.starts_with(&MAGIC_EEP)
}

/// Decodes one whole frame, inflating a compressed payload up to
/// [`DEFAULT_MAX_DECOMPRESSED`] bytes.
pub fn parse(bytes: &[u8]) -> Result<HepFrame<'_>, HepError> {
    parse_with_limit(bytes, DEFAULT_MAX_DECOMPRESSED)
}

/// Decodes one whole frame; a compressed payload may inflate to at most `max_decompressed`.
pub fn parse_with_limit(bytes: &[u8], max_decompressed: usize) -> Result<HepFrame<'_>, HepError> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(match bytes.first() {
            Some(&v @ (1 | 2)) => HepError::UnsupportedVersion(v),
            _ => HepError::TooShort(bytes.len()),
        });
    };
    if !starts_with_hep3(header) {
        // HEPv1/v2 start with their version byte (then length, family, protocol).
        return Err(match header[0] {
            v @ (1 | 2) => HepError::UnsupportedVersion(v),
            _ => HepError::BadMagic,
        });
    }
    let declared = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if declared != bytes.len() {
        return Err(HepError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }

    let mut raw = RawChunks::default();
    let mut offset = HEADER_LEN;
    while offset < bytes.len() {
        let Some(h) = bytes.get(offset..offset + CHUNK_HEADER_LEN) else {
            return Err(HepError::TruncatedChunk { offset });
        };
        let vendor = u16::from_be_bytes([h[0], h[1]]);
        let chunk_type = u16::from_be_bytes([h[2], h[3]]);
        let length = u16::from_be_bytes([h[4], h[5]]);
        if usize::from(length) < CHUNK_HEADER_LEN {
            return Err(HepError::ChunkTooShort { offset, length });
        }
        let Some(body) = bytes.get(offset + CHUNK_HEADER_LEN..offset + usize::from(length)) else {
            return Err(HepError::TruncatedChunk { offset });
        };
        if vendor == 0 {
            raw.take(chunk_type, body)?;
        } else {
            raw.vendor_chunks = raw.vendor_chunks.saturating_add(1);
        }
        offset += usize::from(length);
    }
    raw.into_frame(max_decompressed)
}

/// Chunks as found, before the mandatory ones are checked.
#[derive(Default)]
struct RawChunks<'a> {
    family: Option<u8>,
    ip_protocol: Option<u8>,
    src4: Option<Ipv4Addr>,
    dst4: Option<Ipv4Addr>,
    src6: Option<Ipv6Addr>,
    dst6: Option<Ipv6Addr>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    seconds: Option<u32>,
    micros: Option<u32>,
    proto_type: Option<u8>,
    capture_id: Option<u32>,
    keep_alive_s: Option<u16>,
    auth_key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    compressed: Option<&'a [u8]>,
    correlation_id: Option<&'a [u8]>,
    vlan: Option<u16>,
    node_name: Option<&'a [u8]>,
    tcp_flags: Option<u8>,
    ip_tos: Option<u8>,
    mos: Option<u16>,
    vendor_chunks: u16,
    skipped_chunks: u16,
}

fn fixed<const N: usize>(chunk_type: u16, body: &[u8]) -> Result<[u8; N], HepError> {
    body.try_into().map_err(|_| HepError::BadChunkSize {
        chunk_type,
        expected: N,
        actual: body.len(),
    })
}

fn u8_of(t: u16, body: &[u8]) -> Result<u8, HepError> {
    fixed::<1>(t, body).map(|[b]| b)
}

fn u16_of(t: u16, body: &[u8]) -> Result<u16, HepError> {
    fixed::<2>(t, body).map(u16::from_be_bytes)
}

fn u32_of(t: u16, body: &[u8]) -> Result<u32, HepError> {
    fixed::<4>(t, body).map(u32::from_be_bytes)
}

impl<'a> RawChunks<'a> {
    fn take(&mut self, t: u16, body: &'a [u8]) -> Result<(), HepError> {
        match t {
            0x0001 => self.family = Some(u8_of(t, body)?),
            0x0002 => self.ip_protocol = Some(u8_of(t, body)?),
            0x0003 => self.src4 = Some(Ipv4Addr::from(fixed::<4>(t, body)?)),
            0x0004 => self.dst4 = Some(Ipv4Addr::from(fixed::<4>(t, body)?)),
            0x0005 => self.src6 = Some(Ipv6Addr::from(fixed::<16>(t, body)?)),
            0x0006 => self.dst6 = Some(Ipv6Addr::from(fixed::<16>(t, body)?)),
            0x0007 => self.src_port = Some(u16_of(t, body)?),
            0x0008 => self.dst_port = Some(u16_of(t, body)?),
            0x0009 => self.seconds = Some(u32_of(t, body)?),
            0x000a => self.micros = Some(u32_of(t, body)?),
            0x000b => self.proto_type = Some(u8_of(t, body)?),
            0x000c => self.capture_id = Some(u32_of(t, body)?),
            0x000d => self.keep_alive_s = Some(u16_of(t, body)?),
            0x000e => self.auth_key = Some(body),
            0x000f => self.payload = Some(body),
            0x0010 => self.compressed = Some(body),
            0x0011 => self.correlation_id = Some(body),
            0x0012 => self.vlan = Some(u16_of(t, body)?),
            0x0013 => self.node_name = Some(body),
            0x0017 => self.tcp_flags = Some(u8_of(t, body)?),
            0x0018 => self.ip_tos = Some(u8_of(t, body)?),
            0x0020 => self.mos = Some(u16_of(t, body)?),
            // MACs, Ethernet type, R-factor, geo, jitter, tags, ...: documented, not kept.
            _ => self.skipped_chunks = self.skipped_chunks.saturating_add(1),
        }
        Ok(())
    }

    fn into_frame(self, max_decompressed: usize) -> Result<HepFrame<'a>, HepError> {
        let family = match self.family {
            Some(2) => IpFamily::V4,
            Some(10) => IpFamily::V6,
            Some(other) => return Err(HepError::BadFamily(other)),
            None => return Err(HepError::MissingChunk("IP family (0x0001)")),
        };
        let ip_protocol = self
            .ip_protocol
            .map(IpProtocol::from_number)
            .ok_or(HepError::MissingChunk("IP protocol (0x0002)"))?;
        let (src_ip, dst_ip): (IpAddr, IpAddr) = match family {
            IpFamily::V4 => (
                self.src4
                    .ok_or(HepError::MissingChunk("IPv4 source (0x0003)"))?
                    .into(),
                self.dst4
                    .ok_or(HepError::MissingChunk("IPv4 destination (0x0004)"))?
                    .into(),
            ),
            IpFamily::V6 => (
                self.src6
                    .ok_or(HepError::MissingChunk("IPv6 source (0x0005)"))?
                    .into(),
                self.dst6
                    .ok_or(HepError::MissingChunk("IPv6 destination (0x0006)"))?
                    .into(),
            ),
        };
        let src_port = self
            .src_port
            .ok_or(HepError::MissingChunk("source port (0x0007)"))?;
        let dst_port = self
            .dst_port
            .ok_or(HepError::MissingChunk("destination port (0x0008)"))?;
        let seconds = self
            .seconds
            .ok_or(HepError::MissingChunk("timestamp (0x0009)"))?;
        let proto_type = self
            .proto_type
            .map(ProtoType::from_code)
            .ok_or(HepError::MissingChunk("protocol type (0x000b)"))?;
        // A plain payload wins over a compressed one: it needs no trust in the inflater.
        let (payload, compressed) = match (self.payload, self.compressed) {
            (Some(p), _) => (Cow::Borrowed(p), false),
            (None, Some(c)) => (Cow::Owned(inflate(c, max_decompressed)?), true),
            (None, None) => return Err(HepError::MissingChunk("payload (0x000f/0x0010)")),
        };
        // Microseconds past a second are carried over rather than rejected: the time stays
        // monotonic for agents that send a raw microsecond counter.
        let micros = i64::from(self.micros.unwrap_or(0));
        let time = Timestamp::from_nanos(
            i64::from(seconds)
                .saturating_mul(1_000_000_000)
                .saturating_add(micros.saturating_mul(1_000)),
        );
        Ok(HepFrame {
            family,
            ip_protocol,
            src: SocketAddr::new(src_ip, src_port),
            dst: SocketAddr::new(dst_ip, dst_port),
            time,
            proto_type,
            capture_id: self.capture_id,
            keep_alive_s: self.keep_alive_s,
            auth_key: self.auth_key.map(Cow::Borrowed),
            payload,
            compressed,
            correlation_id: self.correlation_id.map(Cow::Borrowed),
            vlan: self.vlan,
            node_name: self.node_name.map(Cow::Borrowed),
            tcp_flags: self.tcp_flags,
            ip_tos: self.ip_tos,
            mos: self.mos,
            vendor_chunks: self.vendor_chunks,
            skipped_chunks: self.skipped_chunks,
        })
    }
}

/// Inflates gzip, zlib or raw deflate, chosen by the first bytes, to at most `limit` bytes.
fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, HepError> {
    let is_gzip = data.starts_with(&[0x1f, 0x8b]);
    // RFC 1950: CM = 8 (deflate) in the low nibble of CMF, and CMF·256 + FLG divisible by 31.
    let is_zlib = match data {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    };
    let reader: Box<dyn Read + '_> = if is_gzip {
        Box::new(flate2::read::GzDecoder::new(data))
    } else if is_zlib {
        Box::new(flate2::read::ZlibDecoder::new(data))
    } else {
        Box::new(flate2::read::DeflateDecoder::new(data))
    };
    let mut out = Vec::new();
    // One byte over the limit tells "too large" from "exactly the limit".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|_| HepError::DecompressFailed)?;
    if out.len() > limit {
        return Err(HepError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::decode::hep::framing::{frame_len, Framing};
    use crate::decode::hep::test_frames::Builder;
    use std::io::Write;

    /// The example frame of the specification (rev 37), byte for byte.
    const SPEC_EXAMPLE_HEAD: &[u8] = &[
        0x48, 0x45, 0x50, 0x33, 0x00, 0x71, 0x00, 0x00, 0x00, 0x01, 0x00, 0x07, 0x02, 0x00, 0x00,
        0x00, 0x02, 0x00, 0x07, 0x11, 0x00, 0x00, 0x00, 0x03, 0x00, 0x0a, 0xd4, 0xca, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x04, 0x00, 0x0a, 0x52, 0x74, 0x00, 0xd3, 0x00, 0x00, 0x00, 0x07, 0x00,
        0x08, 0x2e, 0xea, 0x00, 0x00, 0x00, 0x08, 0x00, 0x08, 0x13, 0xc4, 0x00, 0x00, 0x00, 0x09,
        0x00, 0x0a, 0x4e, 0x49, 0x82, 0xcb, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x0a, 0x00, 0x01, 0xd4,
        0xc0, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x07, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x0a, 0x00,
        0x00, 0x00, 0xe4, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x14,
    ];

    #[test]
    fn decodes_the_specification_example() {
        let mut bytes = SPEC_EXAMPLE_HEAD.to_vec();
        bytes.extend_from_slice(b"INVITE sip:bob");
        assert_eq!(bytes.len(), 0x71);
        let f = parse(&bytes).unwrap();
        assert_eq!(f.family, IpFamily::V4);
        assert_eq!(f.ip_protocol, IpProtocol::Udp);
        assert_eq!(
            f.src,
            "212.202.0.1:12010".parse::<std::net::SocketAddr>().unwrap()
        );
        assert_eq!(
            f.dst,
            "82.116.0.211:5060".parse::<std::net::SocketAddr>().unwrap()
        );
        assert_eq!(
            f.time,
            Timestamp::from_secs_nanos(1_313_440_459, 120_000_000)
        );
        assert_eq!(f.proto_type, ProtoType::Sip);
        assert_eq!(f.capture_id, Some(228));
        assert_eq!(&*f.payload, b"INVITE sip:bob");
        assert!(!f.compressed);
        assert_eq!(frame_len(&bytes, MAX_FRAME_LEN), Framing::Frame(0x71));
    }

    #[test]
    fn keeps_every_optional_chunk() {
        let bytes = Builder::v4()
            .c(0x0c, &2002u32.to_be_bytes())
            .c(0x0d, &30u16.to_be_bytes())
            .c(0x0e, b"myHep")
            .c(0x11, b"abc@host")
            .c(0x12, &42u16.to_be_bytes())
            .c(0x13, b"node1")
            .c(0x17, &[0x18])
            .c(0x18, &[0xb8])
            .c(0x20, &438u16.to_be_bytes())
            .c(0x14, &[0; 8]) // source MAC: documented, skipped
            .c(0x26, b"k=v") // tags: skipped
            .chunk(0x0002, 0x000f, b"vendor payload, not ours")
            .c(0x0f, b"SIP/2.0 200 OK\r\n\r\n")
            .build();
        let f = parse(&bytes).unwrap();
        assert_eq!(f.capture_id, Some(2002));
        assert_eq!(f.keep_alive_s, Some(30));
        assert_eq!(f.auth_key.as_deref(), Some(&b"myHep"[..]));
        assert_eq!(f.correlation_id_str(), Some("abc@host"));
        assert_eq!(f.vlan, Some(42));
        assert_eq!(f.node_name_str(), Some("node1"));
        assert_eq!(f.tcp_flags, Some(0x18));
        assert_eq!(f.ip_tos, Some(0xb8));
        assert_eq!(f.mos, Some(438));
        assert_eq!(f.skipped_chunks, 2);
        assert_eq!(f.vendor_chunks, 1);
        assert_eq!(&*f.payload, b"SIP/2.0 200 OK\r\n\r\n");
        let owned = f.clone().into_owned();
        assert_eq!(owned, f);
    }

    #[test]
    fn decodes_ipv6_tcp_sctp_and_other_codes() {
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let bytes = Builder::default()
            .c(1, &[10])
            .c(2, &[6])
            .c(5, &a.octets())
            .c(6, &b.octets())
            .c(7, &1u16.to_be_bytes())
            .c(8, &2u16.to_be_bytes())
            .c(9, &1u32.to_be_bytes())
            .c(11, &[53])
            .c(15, b"{}")
            .build();
        let f = parse(&bytes).unwrap();
        assert_eq!(f.family, IpFamily::V6);
        assert_eq!(f.ip_protocol, IpProtocol::Tcp);
        assert_eq!(f.src, SocketAddr::new(a.into(), 1));
        assert_eq!(f.dst, SocketAddr::new(b.into(), 2));
        assert_eq!(f.proto_type, ProtoType::Other(53));
        assert_eq!(f.proto_type.code(), 53);
        assert_eq!(f.time, Timestamp::from_secs_nanos(1, 0));
        assert_eq!(IpProtocol::from_number(132), IpProtocol::Sctp);
        assert_eq!(IpProtocol::from_number(22).number(), 22);
        assert_eq!(ProtoType::from_code(5), ProtoType::RtcpJson);
        assert_eq!(ProtoType::from_code(100), ProtoType::Log);
    }

    #[test]
    fn accepts_the_eep3_alias() {
        let mut bytes = Builder::v4().c(15, b"x").build();
        bytes[..4].copy_from_slice(b"EEP3");
        assert!(parse(&bytes).is_ok());
    }

    fn compressed_frame(payload: &[u8]) -> Vec<u8> {
        Builder::v4().c(0x10, payload).build()
    }

    #[test]
    fn inflates_gzip_zlib_and_raw_deflate() {
        let sip = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n".repeat(3);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&sip).unwrap();
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(&sip).unwrap();
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&sip).unwrap();
        for body in [
            gz.finish().unwrap(),
            zl.finish().unwrap(),
            raw.finish().unwrap(),
        ] {
            let bytes = compressed_frame(&body);
            let f = parse(&bytes).unwrap();
            assert!(f.compressed);
            assert_eq!(&*f.payload, &sip[..]);
        }
    }

    #[test]
    fn a_plain_payload_wins_over_a_compressed_one() {
        let bytes = Builder::v4().c(0x10, b"junk").c(0x0f, b"plain").build();
        assert_eq!(&*parse(&bytes).unwrap().payload, b"plain");
    }

    #[test]
    fn bounds_the_inflated_size() {
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        zl.write_all(&vec![b'a'; 1_000_000]).unwrap();
        let bytes = compressed_frame(&zl.finish().unwrap());
        assert_eq!(
            parse(&bytes),
            Err(HepError::DecompressedTooLarge {
                limit: DEFAULT_MAX_DECOMPRESSED
            })
        );
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        zl.write_all(&[b'a'; 100]).unwrap();
        let bytes = compressed_frame(&zl.finish().unwrap());
        assert!(parse_with_limit(&bytes, 100).is_ok());
        assert_eq!(
            parse_with_limit(&bytes, 99).unwrap_err().kind(),
            HepErrorKind::DecompressedTooLarge
        );
    }

    #[test]
    fn a_broken_compressed_payload_is_an_error() {
        let bytes = compressed_frame(&[0x78, 0x9c, 1, 2, 3, 4, 5]);
        assert_eq!(parse(&bytes), Err(HepError::DecompressFailed));
        let bytes = compressed_frame(&[0x1f, 0x8b, 0, 0]);
        assert_eq!(parse(&bytes), Err(HepError::DecompressFailed));
    }

    #[test]
    fn header_errors() {
        assert_eq!(parse(b""), Err(HepError::TooShort(0)));
        assert_eq!(parse(b"HEP3\x00"), Err(HepError::TooShort(5)));
        assert_eq!(parse(b"HEP2\x00\x06"), Err(HepError::BadMagic));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(HepError::BadMagic));
        // HEPv2: version, length, family, protocol, ...
        assert_eq!(
            parse(&[2, 16, 2, 17, 0, 0, 0, 0]),
            Err(HepError::UnsupportedVersion(2))
        );
        assert_eq!(parse(&[1, 16]), Err(HepError::UnsupportedVersion(1)));
        let mut bytes = Builder::v4().c(15, b"x").build();
        bytes.push(0);
        assert_eq!(
            parse(&bytes),
            Err(HepError::LengthMismatch {
                declared: bytes.len() - 1,
                actual: bytes.len()
            })
        );
    }

    #[test]
    fn chunk_errors() {
        // A chunk header cut short.
        let mut bytes = Builder::v4().c(15, b"x").build();
        bytes.extend_from_slice(&[0, 0, 0]);
        let n = bytes.len() as u16;
        bytes[4..6].copy_from_slice(&n.to_be_bytes());
        assert_eq!(
            parse(&bytes),
            Err(HepError::TruncatedChunk {
                offset: bytes.len() - 3
            })
        );
        // A chunk body running past the frame.
        let mut bytes = Builder::v4().c(15, b"xyz").build();
        let len = bytes.len();
        bytes[len - 4..len - 3].copy_from_slice(&[0x20]); // chunk length low byte: 9 → 0x20
        assert_eq!(
            parse(&bytes).unwrap_err().kind(),
            HepErrorKind::TruncatedChunk
        );
        // A chunk length below its own header.
        let mut bytes = Builder::v4().c(15, b"xyz").build();
        let len = bytes.len();
        bytes[len - 4] = 5;
        assert_eq!(
            parse(&bytes),
            Err(HepError::ChunkTooShort {
                offset: len - 9,
                length: 5
            })
        );
        // A fixed-size chunk of the wrong size.
        let bytes = Builder::v4().c(3, &[1, 2, 3]).c(15, b"x").build();
        assert_eq!(
            parse(&bytes),
            Err(HepError::BadChunkSize {
                chunk_type: 3,
                expected: 4,
                actual: 3
            })
        );
        let bytes = Builder::v4().c(0x12, &[0]).c(15, b"x").build();
        assert_eq!(
            parse(&bytes).unwrap_err().kind(),
            HepErrorKind::BadChunkSize
        );
    }

    #[test]
    fn family_and_mandatory_chunks() {
        let bytes = Builder::v4().c(1, &[7]).c(15, b"x").build();
        assert_eq!(parse(&bytes), Err(HepError::BadFamily(7)));
        // IPv6 family with IPv4 addresses only.
        let bytes = Builder::v4().c(1, &[10]).c(15, b"x").build();
        assert_eq!(
            parse(&bytes),
            Err(HepError::MissingChunk("IPv6 source (0x0005)"))
        );
        assert_eq!(
            parse(&Builder::v4().build()),
            Err(HepError::MissingChunk("payload (0x000f/0x0010)"))
        );
        let no_time = Builder::default()
            .c(1, &[2])
            .c(2, &[17])
            .c(3, &[1, 1, 1, 1])
            .c(4, &[1, 1, 1, 1])
            .c(7, &[0, 1])
            .c(8, &[0, 1])
            .c(11, &[1])
            .c(15, b"x")
            .build();
        assert_eq!(
            parse(&no_time),
            Err(HepError::MissingChunk("timestamp (0x0009)"))
        );
        assert_eq!(
            parse(&Builder::default().c(15, b"x").build())
                .unwrap_err()
                .kind(),
            HepErrorKind::MissingChunk
        );
    }

    #[test]
    fn error_kinds_index_their_table() {
        for (i, kind) in HepErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert!(!kind.as_str().is_empty());
        }
    }
}
