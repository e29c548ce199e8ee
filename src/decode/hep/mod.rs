//! HEPv3 (EEP) frame decoder: bytes in, typed frame out.
//!
//! The wire format (HEP3 specification rev 37, as written down in the project's protocol
//! reference §2): a 6-byte header — `"HEP3"` (or its alias `"EEP3"`) and a big-endian total
//! length that includes the header — followed by chunks `vendor u16 | type u16 | length u16 |
//! payload`, where the chunk length includes its own 6-byte header.
//!
//! What [`parse`] promises:
//! - the declared total length equals the buffer length (heplify-server's rule for UDP; TCP
//!   readers cut the buffer with [`frame_len`] first);
//! - generic chunks (vendor 0) of a fixed size are checked for that size, as heplify-server
//!   does, so a 3-byte "IPv4 address" is an error, not a guess;
//! - chunks of another vendor are skipped and counted, never read as generic ones (a vendor
//!   chunk of type 0x000f is not the payload: heplify-server gets this wrong);
//! - unknown generic chunks are skipped and counted;
//! - compressed payloads (chunk 0x0010) are inflated whatever the agent used: gzip (`1f 8b`),
//!   zlib (captagent's `compress()`, `78 9c`) or raw deflate, up to a bound;
//! - a repeated chunk replaces the earlier one (agents do not repeat chunks; this keeps the
//!   decoder simple and total);
//! - no I/O and no panic on any input (the fuzz target `hep_frame` holds it to that).
//!
//! Mandatory chunks: IP family, IP protocol, both addresses of that family, both ports,
//! timestamp seconds, protocol type and a payload (plain or compressed). Every agent we know
//! (heplify, captagent, Asterisk, FreeSWITCH, Kamailio) sends them; a frame without them could
//! not be attributed to a call anyway. Microseconds default to 0, the rest is optional.
//!
//! The parts: [`frame`] decodes one whole frame, [`mod@encode`] writes one (the HEP relay's
//! encoder, the decoder's inverse), [`framing`] finds frames in a TCP/TLS stream, [`mod@rtcp_json`] reads the JSON body of an RTCP report. Whether a frame is let in
//! (the auth key) is the listener's policy, in [`crate::sources::hep`].

pub mod encode;
pub mod frame;
pub mod framing;
pub mod rtcp_json;
#[cfg(test)]
pub(crate) mod test_frames;

pub use encode::{encode, encoded_len, EncodeError};
pub use frame::{
    parse, parse_with_limit, starts_with_hep3, HepError, HepErrorKind, HepFrame, HepFrameOwned,
    IpFamily, IpProtocol, ProtoType, CHUNK_HEADER_LEN, DEFAULT_MAX_DECOMPRESSED, HEADER_LEN, MAGIC,
    MAGIC_EEP, MAX_FRAME_LEN,
};
pub use framing::{frame_len, Framing};
pub use rtcp_json::{rtcp_json, ReportBlock, RtcpJson, SenderInformation};
