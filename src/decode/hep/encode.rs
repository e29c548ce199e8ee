//! The HEPv3 encoder: a [`HepFrame`] in, the bytes of one frame out — the inverse of
//! [`super::parse`], pure (no I/O) and total (every input gives bytes or an [`EncodeError`]).
//!
//! What [`encode`] writes, in this order (receivers must not depend on it; Kamailio's order
//! varies): the mandatory chunks 0x0001 (family), 0x0002 (IP protocol), 0x0003/0x0004 or
//! 0x0005/0x0006 (addresses), 0x0007/0x0008 (ports), 0x0009/0x000a (seconds, microseconds),
//! 0x000b (protocol type); then those of the optional fields that are set: 0x000c (capture
//! id), 0x000d (keep-alive), 0x000e (auth key), 0x0011 (correlation id), 0x0012 (VLAN),
//! 0x0013 (node name), 0x0017 (TCP flags), 0x0018 (TOS), 0x0020 (MOS × 100); last the
//! payload, always uncompressed in 0x000f (heplify-server ignores 0x0010, and agents disagree
//! on its compression, see the protocol reference §2.2). Every chunk is vendor 0.
//!
//! What it refuses: addresses of another family than the frame's (a receiver would read
//! them as garbage), times before 1970 or past 2106 (the seconds chunk is 32 bits), and a
//! frame that does not fit the 16-bit length field (a payload larger than about 65 000
//! bytes) or whose variable chunk does not fit its own 16-bit length.
//!
//! Times are sent with microsecond resolution (the format's): nanoseconds are truncated.
//! The decoder reads back exactly what was written (`parse(encode(f)) == f` up to that
//! truncation, property-tested below and fuzzed by `fuzz/fuzz_targets/hep_encode.rs`).

use std::net::IpAddr;

use super::frame::{HepFrame, IpFamily, CHUNK_HEADER_LEN, HEADER_LEN, MAGIC, MAX_FRAME_LEN};

/// Why a frame cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("HEP frame would be {length} bytes, more than the 65535 its length field can say")]
    TooLarge { length: usize },
    #[error("HEP frame of family {family:?} with an address of the other family")]
    FamilyMismatch { family: IpFamily },
    #[error("capture time {nanos} ns since the epoch does not fit HEP's 32-bit seconds")]
    TimeOutOfRange { nanos: i64 },
}

impl EncodeError {
    /// The metric label of the error.
    pub fn as_str(self) -> &'static str {
        match self {
            EncodeError::TooLarge { .. } => "too_large",
            EncodeError::FamilyMismatch { .. } => "family_mismatch",
            EncodeError::TimeOutOfRange { .. } => "time_out_of_range",
        }
    }
}

/// Encodes one frame. `frame.compressed`, `vendor_chunks` and `skipped_chunks` describe how a
/// received frame arrived and are not encoded.
pub fn encode(frame: &HepFrame<'_>) -> Result<Vec<u8>, EncodeError> {
    let length = encoded_len(frame);
    if length > MAX_FRAME_LEN {
        return Err(EncodeError::TooLarge { length });
    }
    let nanos = frame.time.as_nanos();
    let seconds = u32::try_from(nanos.div_euclid(1_000_000_000))
        .map_err(|_| EncodeError::TimeOutOfRange { nanos })?;
    let micros = (nanos.rem_euclid(1_000_000_000) / 1_000) as u32;
    let family = frame.family;
    let mismatch = EncodeError::FamilyMismatch { family };

    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(length as u16).to_be_bytes());
    let mut chunk = |t: u16, body: &[u8]| {
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&t.to_be_bytes());
        // Fits: the whole frame was checked against 65535 above.
        out.extend_from_slice(&((body.len() + CHUNK_HEADER_LEN) as u16).to_be_bytes());
        out.extend_from_slice(body);
    };
    match (family, frame.src.ip(), frame.dst.ip()) {
        (IpFamily::V4, IpAddr::V4(src), IpAddr::V4(dst)) => {
            chunk(0x0001, &[2]);
            chunk(0x0002, &[frame.ip_protocol.number()]);
            chunk(0x0003, &src.octets());
            chunk(0x0004, &dst.octets());
        }
        (IpFamily::V6, IpAddr::V6(src), IpAddr::V6(dst)) => {
            chunk(0x0001, &[10]);
            chunk(0x0002, &[frame.ip_protocol.number()]);
            chunk(0x0005, &src.octets());
            chunk(0x0006, &dst.octets());
        }
        _ => return Err(mismatch),
    }
    chunk(0x0007, &frame.src.port().to_be_bytes());
    chunk(0x0008, &frame.dst.port().to_be_bytes());
    chunk(0x0009, &seconds.to_be_bytes());
    chunk(0x000a, &micros.to_be_bytes());
    chunk(0x000b, &[frame.proto_type.code()]);
    if let Some(id) = frame.capture_id {
        chunk(0x000c, &id.to_be_bytes());
    }
    if let Some(s) = frame.keep_alive_s {
        chunk(0x000d, &s.to_be_bytes());
    }
    if let Some(key) = &frame.auth_key {
        chunk(0x000e, key);
    }
    if let Some(id) = &frame.correlation_id {
        chunk(0x0011, id);
    }
    if let Some(vlan) = frame.vlan {
        chunk(0x0012, &vlan.to_be_bytes());
    }
    if let Some(name) = &frame.node_name {
        chunk(0x0013, name);
    }
    if let Some(flags) = frame.tcp_flags {
        chunk(0x0017, &[flags]);
    }
    if let Some(tos) = frame.ip_tos {
        chunk(0x0018, &[tos]);
    }
    if let Some(mos) = frame.mos {
        chunk(0x0020, &mos.to_be_bytes());
    }
    chunk(0x000f, &frame.payload);
    debug_assert_eq!(out.len(), length);
    Ok(out)
}

/// The length [`encode`] writes (also when it is over the limit).
pub fn encoded_len(frame: &HepFrame<'_>) -> usize {
    let c = |body: usize| CHUNK_HEADER_LEN + body;
    let addr = match frame.family {
        IpFamily::V4 => 4,
        IpFamily::V6 => 16,
    };
    let opt = |present: bool, body: usize| if present { c(body) } else { 0 };
    let bytes = |b: &Option<std::borrow::Cow<'_, [u8]>>| b.as_ref().map_or(0, |b| c(b.len()));
    HEADER_LEN
        + c(1)
        + c(1)
        + 2 * c(addr)
        + 2 * c(2)
        + 2 * c(4)
        + c(1)
        + opt(frame.capture_id.is_some(), 4)
        + opt(frame.keep_alive_s.is_some(), 2)
        + bytes(&frame.auth_key)
        + bytes(&frame.correlation_id)
        + opt(frame.vlan.is_some(), 2)
        + bytes(&frame.node_name)
        + opt(frame.tcp_flags.is_some(), 1)
        + opt(frame.ip_tos.is_some(), 1)
        + opt(frame.mos.is_some(), 2)
        + c(frame.payload.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::borrow::Cow;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;
    use crate::decode::hep::frame::{parse, IpProtocol, ProtoType};
    use crate::time::Timestamp;

    fn sip_frame() -> HepFrame<'static> {
        HepFrame {
            family: IpFamily::V4,
            ip_protocol: IpProtocol::Udp,
            src: "212.202.0.1:12010".parse().unwrap(),
            dst: "82.116.0.211:5060".parse().unwrap(),
            time: Timestamp::from_secs_nanos(1_313_440_459, 120_000_000),
            proto_type: ProtoType::Sip,
            capture_id: Some(228),
            keep_alive_s: None,
            auth_key: None,
            payload: Cow::Borrowed(b"INVITE sip:bob"),
            compressed: false,
            correlation_id: None,
            vlan: None,
            node_name: None,
            tcp_flags: None,
            ip_tos: None,
            mos: None,
            vendor_chunks: 0,
            skipped_chunks: 0,
        }
    }

    /// The example frame of the specification (rev 37) has the chunks in the order we
    /// write them: our bytes are the specification's, byte for byte.
    #[test]
    fn encodes_the_specification_example() {
        let mut expected = vec![
            0x48, 0x45, 0x50, 0x33, 0x00, 0x71, 0x00, 0x00, 0x00, 0x01, 0x00, 0x07, 0x02, 0x00,
            0x00, 0x00, 0x02, 0x00, 0x07, 0x11, 0x00, 0x00, 0x00, 0x03, 0x00, 0x0a, 0xd4, 0xca,
            0x00, 0x01, 0x00, 0x00, 0x00, 0x04, 0x00, 0x0a, 0x52, 0x74, 0x00, 0xd3, 0x00, 0x00,
            0x00, 0x07, 0x00, 0x08, 0x2e, 0xea, 0x00, 0x00, 0x00, 0x08, 0x00, 0x08, 0x13, 0xc4,
            0x00, 0x00, 0x00, 0x09, 0x00, 0x0a, 0x4e, 0x49, 0x82, 0xcb, 0x00, 0x00, 0x00, 0x0a,
            0x00, 0x0a, 0x00, 0x01, 0xd4, 0xc0, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x07, 0x01, 0x00,
            0x00, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x00, 0x00, 0xe4, 0x00, 0x00, 0x00, 0x0f, 0x00,
            0x14,
        ];
        expected.extend_from_slice(b"INVITE sip:bob");
        assert_eq!(encode(&sip_frame()).unwrap(), expected);
    }

    #[test]
    fn refuses_what_the_format_cannot_say() {
        let mut f = sip_frame();
        f.dst = "[2001:db8::1]:5060".parse().unwrap();
        assert_eq!(
            encode(&f),
            Err(EncodeError::FamilyMismatch {
                family: IpFamily::V4
            })
        );
        let mut f = sip_frame();
        f.time = Timestamp::from_secs_nanos(-1, 0);
        assert_eq!(encode(&f).unwrap_err().as_str(), "time_out_of_range");
        f.time = Timestamp::from_secs_nanos(1 << 32, 0);
        assert_eq!(encode(&f).unwrap_err().as_str(), "time_out_of_range");
        let mut f = sip_frame();
        f.payload = Cow::Owned(vec![b'x'; 65_535]);
        assert!(matches!(encode(&f), Err(EncodeError::TooLarge { .. })));
        // The largest payload that fits gives a frame of exactly 65535 bytes.
        let room = MAX_FRAME_LEN - (encoded_len(&sip_frame()) - 14);
        f.payload = Cow::Owned(vec![b'x'; room]);
        let bytes = encode(&f).unwrap();
        assert_eq!(bytes.len(), MAX_FRAME_LEN);
        assert_eq!(parse(&bytes).unwrap().payload.len(), room);
    }

    fn opt_bytes(max: usize) -> impl Strategy<Value = Option<Cow<'static, [u8]>>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..max).prop_map(Cow::Owned))
    }

    prop_compose! {
        fn frames()(
            v6 in any::<bool>(),
            a4 in any::<[u8; 4]>(), b4 in any::<[u8; 4]>(),
            a6 in any::<[u8; 16]>(), b6 in any::<[u8; 16]>(),
            ports in any::<(u16, u16)>(),
            proto in any::<u8>(),
            secs in 0i64..=i64::from(u32::MAX),
            nanos in 0u32..1_000_000_000,
            proto_type in any::<u8>(),
            capture_id in any::<Option<u32>>(),
            keep_alive_s in any::<Option<u16>>(),
            auth_key in opt_bytes(40),
            payload in proptest::collection::vec(any::<u8>(), 0..2000),
            correlation_id in opt_bytes(80),
            vlan in any::<Option<u16>>(),
            node_name in opt_bytes(40),
            tcp_flags in any::<Option<u8>>(),
            ip_tos in any::<Option<u8>>(),
            mos in any::<Option<u16>>(),
        ) -> HepFrame<'static> {
            let (family, src, dst) = if v6 {
                (IpFamily::V6, SocketAddr::new(Ipv6Addr::from(a6).into(), ports.0),
                 SocketAddr::new(Ipv6Addr::from(b6).into(), ports.1))
            } else {
                (IpFamily::V4, SocketAddr::new(Ipv4Addr::from(a4).into(), ports.0),
                 SocketAddr::new(Ipv4Addr::from(b4).into(), ports.1))
            };
            HepFrame {
                family,
                ip_protocol: IpProtocol::from_number(proto),
                src,
                dst,
                time: Timestamp::from_secs_nanos(secs, nanos),
                proto_type: ProtoType::from_code(proto_type),
                capture_id,
                keep_alive_s,
                auth_key,
                payload: Cow::Owned(payload),
                compressed: false,
                correlation_id,
                vlan,
                node_name,
                tcp_flags,
                ip_tos,
                mos,
                vendor_chunks: 0,
                skipped_chunks: 0,
            }
        }
    }

    proptest! {
        /// Whatever is encoded decodes to itself (the time to the microsecond), and the
        /// frame's length field is its length.
        #[test]
        fn round_trips_through_our_decoder(frame in frames()) {
            let bytes = encode(&frame).unwrap();
            prop_assert_eq!(bytes.len(), encoded_len(&frame));
            prop_assert_eq!(usize::from(u16::from_be_bytes([bytes[4], bytes[5]])), bytes.len());
            let back = parse(&bytes).unwrap();
            let nanos = frame.time.as_nanos();
            let expected = HepFrame {
                time: Timestamp::from_nanos(nanos - nanos % 1_000),
                ..frame
            };
            prop_assert_eq!(back, expected);
        }

        /// Any payload size: bytes that decode, or `TooLarge`, never a panic.
        #[test]
        fn large_payloads_encode_or_are_refused(extra in 0usize..70_000, frame in frames()) {
            let mut frame = frame;
            frame.payload = Cow::Owned(vec![0x5a; extra]);
            match encode(&frame) {
                Ok(bytes) => prop_assert!(parse(&bytes).is_ok()),
                Err(e) => prop_assert_eq!(e, EncodeError::TooLarge { length: encoded_len(&frame) }),
            }
        }
    }
}
