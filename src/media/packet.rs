//! RTP and RTCP packets (RFC 3550, RFC 3611): recognition by content and decoding; RTCP with
//! the webrtc-rs `rtcp` crate.
//!
//! The RTP path runs for every media packet, so it reads the fixed header in place (checked
//! against the `rtp` crate's decoder by a test), allocates nothing and never copies the
//! payload. RTCP is rare (one compound packet every few seconds per stream); it is decoded in
//! full and reduced to the facts a call record needs.

/// What a UDP payload looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rtp,
    Rtcp,
    Other,
}

/// Classifies a UDP payload by its first bytes. RTP and RTCP share the version bits; RTCP
/// packet types 200–207 fall where RTP would have a marker bit and payload type 72–79, which
/// RFC 5761 §4 reserves so the two can share a port.
pub fn classify(payload: &[u8]) -> Kind {
    let (Some(&b0), Some(&b1)) = (payload.first(), payload.get(1)) else {
        return Kind::Other;
    };
    if b0 >> 6 != 2 {
        return Kind::Other;
    }
    if (200..=207).contains(&b1) {
        // The length field (in 32-bit words, minus one) must fit the datagram.
        let words = payload.get(2..4).map_or(usize::MAX, |l| {
            usize::from(u16::from_be_bytes([l[0], l[1]]))
        });
        return if payload.len() >= 8 && (words + 1) * 4 <= payload.len() {
            Kind::Rtcp
        } else {
            Kind::Other
        };
    }
    if payload.len() >= 12 {
        Kind::Rtp
    } else {
        Kind::Other
    }
}

/// The fixed facts of an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Payload bytes after the header and before padding.
    pub payload_len: usize,
    /// The first payload bytes (RFC 4733 events are read from them).
    pub payload_head: [u8; 4],
}

/// Why an RTP packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("not RTP version 2")]
    Version,
    #[error("RTP header longer than the packet")]
    Truncated,
    #[error("RTP padding longer than the payload")]
    Padding,
}

/// Decodes an RTP packet's header (RFC 3550 §5.1), read in place: this runs for every media
/// packet. The `rtp` crate's `Header::unmarshal` gives the same fields (a test checks both
/// on every header shape) but needs a copy of the header (its extension parser panics on an
/// extension element longer than the packet, found by the `media_packet` fuzzer) and builds
/// `Vec`s for CSRCs and extensions that the analysis never reads: it was a tenth of the
/// instructions of an RTP replay.
pub fn decode_rtp(data: &[u8]) -> Result<RtpPacket, RtpError> {
    let Some(fixed) = data.first_chunk::<12>() else {
        return Err(if data.first().is_some_and(|b| b >> 6 == 2) {
            RtpError::Truncated
        } else {
            RtpError::Version
        });
    };
    if fixed[0] >> 6 != 2 {
        return Err(RtpError::Version);
    }
    let padding = fixed[0] & 0x20 != 0;
    let has_extension = fixed[0] & 0x10 != 0;
    let csrc_count = usize::from(fixed[0] & 0x0F);
    let mut header_len = 12 + 4 * csrc_count;
    if header_len > data.len() {
        return Err(RtpError::Truncated);
    }
    if has_extension {
        // Skipped by its length word (RFC 3550 §5.3.1): the analysis never needs extensions.
        let ext = data
            .get(header_len..header_len + 4)
            .ok_or(RtpError::Truncated)?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        header_len += 4 + 4 * words;
        if header_len > data.len() {
            return Err(RtpError::Truncated);
        }
    }
    let mut payload_len = data.len() - header_len;
    if padding {
        let pad = usize::from(*data.last().ok_or(RtpError::Padding)?);
        if pad == 0 || pad > payload_len {
            return Err(RtpError::Padding);
        }
        payload_len -= pad;
    }
    // Four bytes or fewer: a fixed-size copy when there are four (every voice packet), where
    // a copy of a variable length is a call to `memcpy`.
    let mut payload_head = [0u8; 4];
    let head = &data[header_len..header_len + payload_len.min(4)];
    match head.first_chunk::<4>() {
        Some(four) => payload_head = *four,
        None => payload_head[..head.len()].copy_from_slice(head),
    }
    Ok(RtpPacket {
        marker: fixed[1] & 0x80 != 0,
        payload_type: fixed[1] & 0x7F,
        sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
        timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
        payload_len,
        payload_head,
    })
}

/// A reception report block: what a receiver says about a source (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceptionReport {
    /// The SSRC reported on.
    pub source_ssrc: u32,
    /// Fraction lost since the previous report, 0..1.
    pub fraction_lost: f64,
    pub cumulative_lost: i32,
    /// Interarrival jitter in RTP timestamp units (converted to ms by whoever knows the clock).
    pub jitter_units: u32,
    /// Middle 32 bits of the NTP time of the last SR received from the source.
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// RFC 3611 §4.7 VoIP metrics, as the endpoint computed them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoipMetrics {
    pub source_ssrc: u32,
    /// Loss and discard rates, 0..1.
    pub loss_rate: f64,
    pub discard_rate: f64,
    pub round_trip_delay_ms: u16,
    pub end_system_delay_ms: u16,
    /// R-factor and MOS as reported; `None` where the endpoint said "unavailable" (127).
    pub r_factor: Option<u8>,
    pub mos_lq: Option<f64>,
    pub mos_cq: Option<f64>,
}

/// What one RTCP compound packet says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RtcpSummary {
    /// SSRC of the sender of the packet.
    pub sender_ssrc: Option<u32>,
    /// Sender info of an SR: middle 32 bits of its NTP time (for round-trip computation),
    /// packets and octets sent.
    pub sr_ntp_middle: Option<u32>,
    pub sender_packets: Option<u32>,
    pub sender_octets: Option<u32>,
    pub reports: Vec<ReceptionReport>,
    pub voip_metrics: Vec<VoipMetrics>,
    /// SDES CNAME of the sender.
    pub cname: Option<String>,
}

/// Why an RTCP packet was refused.
#[derive(Debug, thiserror::Error)]
pub enum RtcpError {
    #[error("malformed RTCP: empty packet")]
    Empty,
    #[error("malformed RTCP: a packet's length runs beyond the datagram")]
    Length,
    #[error("malformed RTCP")]
    Decode(#[source] rtcp::Error),
    /// The `rtcp` crate panicked on the packet (caught; see the fuzzing notes in the README).
    #[error("malformed RTCP: the decoder panicked")]
    DecoderPanicked,
}

/// The SR, RR, SDES and XR packets of an RTCP compound packet, decoded by the `rtcp` crate
/// one by one (what [`decode_rtcp`] summarises, and what the HEP relay turns into HOMER's
/// JSON). An error when none of them decodes.
pub fn rtcp_packets(
    data: &[u8],
) -> Result<Vec<Box<dyn rtcp::packet::Packet + Send + Sync>>, RtcpError> {
    // Each packet of the compound is decoded on its own, so that trailing bytes after the last
    // packet (seen from real gateways) or one packet type the crate refuses do not cost the
    // reports around it.
    let mut packets = Vec::new();
    let mut rest = data;
    let mut first_error = None;
    while rest.len() >= 4 {
        let words = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let len = (words + 1) * 4;
        let Some(one) = rest.get(..len) else {
            first_error.get_or_insert(RtcpError::Length);
            break;
        };
        rest = &rest[len..];
        // Only the packet types a call record uses go to the crate: its feedback decoders
        // (RTPFB/PSFB) panic on short packets (found by the `media_packet` fuzzer), and BYE
        // and APP say nothing about quality.
        if !matches!(one[1], 200 | 201 | 202 | 207) {
            continue;
        }
        // A panic in the crate on some other malformed packet must cost this packet, not the
        // process: network input never takes the agent down.
        let decoded = std::panic::catch_unwind(|| {
            let mut buf = one;
            rtcp::packet::unmarshal(&mut buf)
        });
        match decoded {
            Ok(Ok(mut decoded)) => packets.append(&mut decoded),
            Ok(Err(e)) => {
                first_error.get_or_insert(RtcpError::Decode(e));
            }
            Err(_) => {
                first_error.get_or_insert(RtcpError::DecoderPanicked);
            }
        }
    }
    if packets.is_empty() {
        return Err(first_error.unwrap_or(RtcpError::Empty));
    }
    Ok(packets)
}

/// Decodes an RTCP compound packet.
pub fn decode_rtcp(data: &[u8]) -> Result<RtcpSummary, RtcpError> {
    use rtcp::extended_report::{ExtendedReport, VoIPMetricsReportBlock};
    use rtcp::receiver_report::ReceiverReport;
    use rtcp::sender_report::SenderReport;
    use rtcp::source_description::{SdesType, SourceDescription};

    let packets = match rtcp_packets(data) {
        Ok(packets) => packets,
        // Whole packets, none of a type a call record uses (a lone BYE, APP, feedback):
        // valid RTCP that says nothing about quality, not a decode error (campaign
        // 2026-12-03c: an Android phone's BYE-only packet, which TShark decodes).
        Err(RtcpError::Empty) if data.len() >= 4 => return Ok(RtcpSummary::default()),
        Err(e) => return Err(e),
    };
    let mut summary = RtcpSummary::default();
    let reception = |r: &rtcp::reception_report::ReceptionReport| ReceptionReport {
        source_ssrc: r.ssrc,
        fraction_lost: f64::from(r.fraction_lost) / 256.0,
        // A 24-bit signed count (RFC 3550 §6.4.1).
        cumulative_lost: ((r.total_lost << 8) as i32) >> 8,
        jitter_units: r.jitter,
        last_sr: r.last_sender_report,
        delay_since_last_sr: r.delay,
    };
    for packet in &packets {
        let any = packet.as_any();
        if let Some(sr) = any.downcast_ref::<SenderReport>() {
            summary.sender_ssrc = Some(sr.ssrc);
            summary.sr_ntp_middle = Some((sr.ntp_time >> 16) as u32);
            summary.sender_packets = Some(sr.packet_count);
            summary.sender_octets = Some(sr.octet_count);
            summary.reports.extend(sr.reports.iter().map(reception));
        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            summary.sender_ssrc = Some(rr.ssrc);
            summary.reports.extend(rr.reports.iter().map(reception));
        } else if let Some(sdes) = any.downcast_ref::<SourceDescription>() {
            let cname = sdes
                .chunks
                .iter()
                .flat_map(|c| c.items.iter())
                .find(|i| i.sdes_type == SdesType::SdesCname);
            if let Some(item) = cname {
                summary.cname = Some(String::from_utf8_lossy(&item.text).into_owned());
            }
        } else if let Some(xr) = any.downcast_ref::<ExtendedReport>() {
            summary.sender_ssrc.get_or_insert(xr.sender_ssrc);
            for block in &xr.reports {
                if let Some(vm) = block.as_any().downcast_ref::<VoIPMetricsReportBlock>() {
                    let available = |v: u8| (v != 127).then_some(v);
                    summary.voip_metrics.push(VoipMetrics {
                        source_ssrc: vm.ssrc,
                        loss_rate: f64::from(vm.loss_rate) / 256.0,
                        discard_rate: f64::from(vm.discard_rate) / 256.0,
                        round_trip_delay_ms: vm.round_trip_delay,
                        end_system_delay_ms: vm.end_system_delay,
                        r_factor: available(vm.rfactor),
                        mos_lq: available(vm.mos_lq).map(|m| f64::from(m) / 10.0),
                        mos_cq: available(vm.mos_cq).map(|m| f64::from(m) / 10.0),
                    });
                }
            }
        }
    }
    Ok(summary)
}

/// XR VoIP metrics as records write them (`rtcp.voip_metrics` of a *stream*).
impl From<&VoipMetrics> for crate::record::media::VoipMetrics {
    fn from(v: &VoipMetrics) -> Self {
        crate::record::media::VoipMetrics {
            source_ssrc: v.source_ssrc,
            loss_rate: v.loss_rate,
            discard_rate: v.discard_rate,
            round_trip_delay_ms: v.round_trip_delay_ms,
            end_system_delay_ms: v.end_system_delay_ms,
            r_factor: v.r_factor,
            mos_lq: v.mos_lq,
            mos_cq: v.mos_cq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_util::marshal::Unmarshal;

    /// The decoder this module had before reading headers in place: the `rtp` crate's
    /// `Header::unmarshal` on a copy of the fixed header with the X bit cleared.
    fn decode_rtp_with_crate(data: &[u8]) -> Result<RtpPacket, RtpError> {
        if data.first().is_none_or(|b| b >> 6 != 2) {
            return Err(RtpError::Version);
        }
        let fixed_len = 12 + 4 * usize::from(data[0] & 0x0F);
        let fixed = data.get(..fixed_len).ok_or(RtpError::Truncated)?;
        let mut copy = [0u8; 12 + 4 * 15];
        copy[..fixed_len].copy_from_slice(fixed);
        let has_extension = copy[0] & 0x10 != 0;
        copy[0] &= !0x10;
        let mut buf = &copy[..fixed_len];
        let header = rtp::header::Header::unmarshal(&mut buf).map_err(|_| RtpError::Truncated)?;
        let mut header_len = fixed_len;
        if has_extension {
            let ext = data
                .get(header_len..header_len + 4)
                .ok_or(RtpError::Truncated)?;
            header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            if header_len > data.len() {
                return Err(RtpError::Truncated);
            }
        }
        let mut payload_len = data.len() - header_len;
        if header.padding {
            let pad = usize::from(*data.last().ok_or(RtpError::Padding)?);
            if pad == 0 || pad > payload_len {
                return Err(RtpError::Padding);
            }
            payload_len -= pad;
        }
        let mut payload_head = [0u8; 4];
        let head = &data[header_len..header_len + payload_len.min(4)];
        payload_head[..head.len()].copy_from_slice(head);
        Ok(RtpPacket {
            marker: header.marker,
            payload_type: header.payload_type,
            sequence: header.sequence_number,
            timestamp: header.timestamp,
            ssrc: header.ssrc,
            payload_len,
            payload_head,
        })
    }

    #[test]
    fn in_place_header_decode_equals_the_rtp_crate() {
        // Every first byte (version, padding, extension, CSRC count) and marker/payload type
        // bit, lengths around every header size, extension lengths and padding counts that
        // fit and that do not: a deterministic pseudo-random walk (xorshift).
        let mut next = crate::testing::xorshift(0x9E37_79B9_7F4A_7C15u64);
        let mut compared = 0;
        for b0 in 0..=255u8 {
            for round in 0..64 {
                let len = (next() % 120) as usize;
                let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(first) = data.first_mut() {
                    *first = b0;
                }
                let csrc_end = 12 + 4 * usize::from(b0 & 0x0F);
                if round % 2 == 0 && data.len() >= csrc_end + 4 {
                    // A plausible extension length, so both outcomes are reached.
                    data[csrc_end + 2] = 0;
                    data[csrc_end + 3] = (next() % 8) as u8;
                }
                if round % 3 == 0 {
                    if let Some(last) = data.last_mut() {
                        *last = (next() % 16) as u8;
                    }
                }
                assert_eq!(
                    decode_rtp(&data),
                    decode_rtp_with_crate(&data),
                    "{data:02x?}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 256 * 64);
        let ok = |d: &[u8]| decode_rtp(d).is_ok();
        assert!(ok(&[0x80, 0x08, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7, 0xD5]));
        assert!(!ok(&[0x80, 0x08, 0, 1]));
    }

    #[test]
    fn classifies_rtp_rtcp_and_other() {
        let mut rtp = vec![0x80, 0x08, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
        rtp.extend_from_slice(&[0xD5; 160]);
        assert_eq!(classify(&rtp), Kind::Rtp);
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 9];
        assert_eq!(classify(&rr), Kind::Rtcp);
        assert_eq!(classify(b"INVITE sip:x SIP/2.0"), Kind::Other);
        assert_eq!(classify(&[0x80, 201, 0, 9, 0, 0, 0, 9]), Kind::Other);

        let p = decode_rtp(&rtp).unwrap();
        assert_eq!(
            (p.payload_type, p.sequence, p.timestamp, p.ssrc),
            (8, 1, 160, 7)
        );
        assert_eq!(p.payload_len, 160);
    }

    /// Found by the `media_packet` fuzzer: a header extension whose element claims more bytes
    /// than the packet has made the `rtp` crate panic.
    #[test]
    fn oversized_header_extension_is_an_error_not_a_panic() {
        // X bit set; one-byte profile 0xBEDE, 1 word, element id 1 with length 16 (0x1F).
        let packet = [
            0x90, 8, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7, 0xBE, 0xDE, 0, 1, 0x1F, 0, 0, 0,
        ];
        let p = decode_rtp(&packet).unwrap();
        assert_eq!(p.payload_len, 0);
        let mut truncated = packet.to_vec();
        truncated[15] = 9; // the extension claims 9 words
        assert_eq!(decode_rtp(&truncated), Err(RtpError::Truncated));
    }

    #[test]
    fn padding_is_checked() {
        let mut rtp = vec![0xA0, 0x08, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7, 1, 2, 3, 2];
        assert_eq!(decode_rtp(&rtp).unwrap().payload_len, 2);
        *rtp.last_mut().unwrap() = 9;
        assert_eq!(decode_rtp(&rtp), Err(RtpError::Padding));
    }

    /// A compound SR+RR+SDES from the Wireshark sample capture, with two stray bytes after
    /// the SDES: the reports around them must survive.
    #[test]
    fn trailing_bytes_after_compound_are_tolerated() {
        let mut compound = vec![0x81, 201, 0, 7, 0, 0, 0, 9, 0, 0, 0, 7, 64, 0, 0, 1];
        compound.extend_from_slice(&[0, 0, 0, 100, 0, 0, 0, 80, 0, 0, 0, 5, 0, 0, 0, 6]);
        compound.extend_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 9, 1, 1, b'x', 0]);
        compound.extend_from_slice(&[0, 0]);
        let s = decode_rtcp(&compound).unwrap();
        assert_eq!(s.reports.len(), 1);
        assert_eq!(s.cname.as_deref(), Some("x"));
    }

    /// Found by the `media_packet` fuzzer: a transport-layer NACK without its FCI made the
    /// `rtcp` crate read past the packet and panic.
    #[test]
    fn short_feedback_packet_does_not_panic() {
        let mut compound = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        // The fuzzer's bytes: RTPFB NACK, length 1 word (two SSRCs, no FCI).
        compound.extend_from_slice(&[
            0x81, 0xCD, 0x00, 0x01, 0x0E, 0x00, 0x99, 0x99, 0x99, 0x92, 0x9D, 0x93,
        ]);
        let s = decode_rtcp(&compound).unwrap();
        assert_eq!(s.sender_ssrc, Some(9));
    }

    #[test]
    fn decodes_receiver_report() {
        // RR from SSRC 9 about SSRC 7: 25% lost, cumulative -1 (0xFFFFFF), jitter 80.
        let rr = [
            0x81, 201, 0, 7, 0, 0, 0, 9, 0, 0, 0, 7, 64, 0xFF, 0xFF, 0xFF, 0, 0, 0, 100, 0, 0, 0,
            80, 0, 0, 0, 5, 0, 0, 0, 6,
        ];
        let s = decode_rtcp(&rr).unwrap();
        assert_eq!(s.sender_ssrc, Some(9));
        let r = s.reports[0];
        assert_eq!(r.source_ssrc, 7);
        assert_eq!(r.fraction_lost, 0.25);
        assert_eq!(r.cumulative_lost, -1);
        assert_eq!(r.jitter_units, 80);
        assert_eq!((r.last_sr, r.delay_since_last_sr), (5, 6));
    }
}
