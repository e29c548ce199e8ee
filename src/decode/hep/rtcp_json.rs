//! The JSON body of a type-5 (RTCP) frame, as heplify and captagent write it.

/// The RTCP report of a type-5 frame, as heplify and captagent write it (reference §2.5).
/// Only what call records use is read; unknown fields are ignored, missing ones are `None`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct RtcpJson {
    /// SSRC of the sender of the report.
    pub ssrc: Option<u64>,
    /// RTCP packet type: 200 SR, 201 RR.
    #[serde(rename = "type")]
    pub packet_type: Option<u16>,
    pub sender_information: Option<SenderInformation>,
    #[serde(default)]
    pub report_blocks: Vec<ReportBlock>,
}

/// Sender information of an SR.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct SenderInformation {
    pub packets: Option<u64>,
    pub octets: Option<u64>,
}

/// One reception report block (RFC 3550 §6.4.1), fields as heplify names them.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct ReportBlock {
    /// SSRC of the stream reported on.
    pub source_ssrc: Option<u64>,
    /// Fraction lost since the last report, 8-bit fixed point (0..=255 = 0..<100 %).
    pub fraction_lost: Option<u64>,
    /// Cumulative packets lost (may be negative with duplicates).
    pub packets_lost: Option<i64>,
    pub highest_seq_no: Option<u64>,
    /// Interarrival jitter in RTP timestamp units (the clock rate is not in the report).
    pub ia_jitter: Option<u64>,
}

/// Reads the JSON body of a type-5 frame.
pub fn rtcp_json(payload: &[u8]) -> Result<RtcpJson, serde_json::Error> {
    serde_json::from_slice(payload)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn reads_heplify_rtcp_json() {
        let body = br#"{"sender_information":{"ntp_timestamp_sec":3650797214,"packets":106,"ntp_timestamp_usec":13217348104192,"octets":16960,"rtp_timestamp":16960},"ssrc":451916597,"type":200,"report_blocks":[{"source_ssrc":898343773,"highest_seq_no":20881,"fraction_lost":0,"ia_jitter":1,"packets_lost":0,"lsr":-1097006646,"dlsr":7733}],"report_count":0}"#;
        let r = rtcp_json(body).unwrap();
        assert_eq!(r.ssrc, Some(451_916_597));
        assert_eq!(r.packet_type, Some(200));
        assert_eq!(r.sender_information.unwrap().packets, Some(106));
        assert_eq!(r.report_blocks.len(), 1);
        assert_eq!(r.report_blocks[0].source_ssrc, Some(898_343_773));
        assert_eq!(r.report_blocks[0].ia_jitter, Some(1));
        assert!(rtcp_json(b"{not json").is_err());
        assert_eq!(rtcp_json(b"{}").unwrap(), RtcpJson::default());
    }
}
