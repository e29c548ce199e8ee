//! HEP frames into the correlator: a pure adapter, no I/O.
//!
//! A HEP agent already did the capture and the reassembly: a type-1 frame carries exactly one
//! SIP message, with the addresses, transport and capture time of the packet that carried it.
//! Type 5 carries an RTCP report as JSON whose correlation id is the Call-ID of its call.
//! Other types (logs, DNS, QoS of other formats) are not call signalling and are only
//! reported back as ignored, so the caller can count them.

use crate::correlation::Correlate;
use crate::decode::hep::{self, HepFrame, ProtoType};
use crate::decode::sip::{self, SipError};
use crate::dissect::hep_message_meta;
use crate::record::Record;

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// A SIP message, handed to the call tracker.
    Sip,
    /// An RTCP report, attached to its call.
    RtcpAttached,
    /// An RTCP report for a Call-ID no call is tracked under (counted by the tracker too).
    RtcpUnmatched,
    /// A frame of a type that carries no call data teledge uses.
    Ignored(ProtoType),
}

/// Why a frame's payload could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("SIP inside HEP")]
    Sip(#[from] SipError),
    #[error("RTCP JSON inside HEP")]
    RtcpJson(#[from] serde_json::Error),
    #[error("RTCP JSON inside HEP without a (UTF-8) correlation id")]
    NoCorrelationId,
}

impl FeedError {
    /// A metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            FeedError::Sip(_) => "sip",
            FeedError::RtcpJson(_) => "rtcp_json",
            FeedError::NoCorrelationId => "no_correlation_id",
        }
    }
}

/// Feeds one HEP frame to the correlator; records it completes go to `out`.
pub fn feed(
    correlator: &mut impl Correlate,
    frame: &HepFrame<'_>,
    frame_no: u64,
    out: &mut impl FnMut(Record),
) -> Result<Fed, FeedError> {
    match frame.proto_type {
        ProtoType::Sip => {
            let message = sip::parse(&frame.payload)?;
            correlator.sip(&hep_message_meta(frame, frame_no), &message, out);
            Ok(Fed::Sip)
        }
        ProtoType::RtcpJson => {
            let call_id = frame
                .correlation_id_str()
                .ok_or(FeedError::NoCorrelationId)?;
            let report = hep::rtcp_json(&frame.payload)?;
            if correlator.hep_rtcp(call_id, frame.time, &report) {
                Ok(Fed::RtcpAttached)
            } else {
                Ok(Fed::RtcpUnmatched)
            }
        }
        other => Ok(Fed::Ignored(other)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::borrow::Cow;

    use super::*;
    use crate::correlation::calls::CallLimits;
    use crate::correlation::media::MediaLimits;
    use crate::correlation::Correlator;
    use crate::decode::hep::{IpFamily, IpProtocol};
    use crate::record::ClosedBy;
    use crate::record::Transport;
    use crate::time::Timestamp;

    fn frame(proto: ProtoType, payload: &[u8], cid: Option<&str>, secs: i64) -> HepFrame<'static> {
        HepFrame {
            family: IpFamily::V4,
            ip_protocol: IpProtocol::Tcp,
            src: "10.0.0.1:5060".parse().unwrap(),
            dst: "10.0.0.2:5060".parse().unwrap(),
            time: Timestamp::from_secs_nanos(secs, 0),
            proto_type: proto,
            capture_id: None,
            keep_alive_s: None,
            auth_key: None,
            payload: Cow::Owned(payload.to_vec()),
            compressed: false,
            correlation_id: cid.map(|c| Cow::Owned(c.as_bytes().to_vec())),
            vlan: None,
            node_name: None,
            tcp_flags: None,
            ip_tos: None,
            mos: None,
            vendor_chunks: 0,
            skipped_chunks: 0,
        }
    }

    const INVITE: &[u8] = b"INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn sip_then_rtcp_json_end_up_in_the_record() {
        let mut c = Correlator::new(CallLimits::default(), MediaLimits::default());
        let mut records = Vec::new();
        let mut out = |r: Record| records.push(r);
        let f = frame(ProtoType::Sip, INVITE, Some("c1"), 100);
        assert_eq!(feed(&mut c, &f, 1, &mut out).unwrap(), Fed::Sip);
        let rtcp = br#"{"ssrc":1,"type":201,"report_blocks":[{"source_ssrc":2,"fraction_lost":64,"packets_lost":3,"ia_jitter":80,"highest_seq_no":9}]}"#;
        let f = frame(ProtoType::RtcpJson, rtcp, Some("c1"), 101);
        assert_eq!(feed(&mut c, &f, 2, &mut out).unwrap(), Fed::RtcpAttached);
        let rtcp = br#"{"ssrc":1,"type":201,"report_blocks":[{"source_ssrc":2,"fraction_lost":0,"packets_lost":3,"ia_jitter":20}]}"#;
        let f = frame(ProtoType::RtcpJson, rtcp, Some("c1"), 102);
        assert_eq!(feed(&mut c, &f, 3, &mut out).unwrap(), Fed::RtcpAttached);
        let f = frame(ProtoType::RtcpJson, rtcp, Some("other"), 102);
        assert_eq!(feed(&mut c, &f, 4, &mut out).unwrap(), Fed::RtcpUnmatched);
        let f = frame(ProtoType::RtcpJson, rtcp, None, 102);
        assert!(matches!(
            feed(&mut c, &f, 5, &mut out),
            Err(FeedError::NoCorrelationId)
        ));
        let f = frame(ProtoType::RtcpJson, b"[", Some("c1"), 102);
        assert_eq!(
            feed(&mut c, &f, 6, &mut out).unwrap_err().kind(),
            "rtcp_json"
        );
        let f = frame(ProtoType::Sip, b"hello", None, 102);
        assert_eq!(feed(&mut c, &f, 7, &mut out).unwrap_err().kind(), "sip");
        let f = frame(ProtoType::Log, b"log", None, 102);
        assert_eq!(
            feed(&mut c, &f, 8, &mut out).unwrap(),
            Fed::Ignored(ProtoType::Log)
        );
        let counters = c.calls().counters();
        assert_eq!(counters.hep_rtcp_attached, 2);
        assert_eq!(counters.hep_rtcp_unmatched, 1);
        c.finish(ClosedBy::CaptureEnd, &mut out);
        let call = records
            .iter()
            .find_map(|r| match r {
                Record::Call(c) => Some(c),
                _ => None,
            })
            .unwrap();
        assert_eq!(call.transport, Transport::Tcp);
        assert_eq!(call.hep_rtcp.len(), 1);
        let e = &call.hep_rtcp[0];
        assert_eq!(e.reporter_ssrc.as_deref(), Some("0x00000001"));
        assert_eq!(e.source_ssrc.as_deref(), Some("0x00000002"));
        assert_eq!(e.reports, 2);
        assert_eq!(e.max_fraction_lost_percent, Some(25.0));
        assert_eq!(e.last_fraction_lost_percent, Some(0.0));
        assert_eq!(e.last_cumulative_lost, Some(3));
        assert_eq!((e.last_jitter, e.max_jitter), (Some(20), Some(80)));
        assert_eq!(e.last_highest_seq, Some(9));
        assert_eq!(e.first_time, Timestamp::from_secs_nanos(101, 0));
        assert_eq!(e.last_time, Timestamp::from_secs_nanos(102, 0));
    }

    #[test]
    fn rtcp_entries_per_call_are_bounded() {
        let mut c = Correlator::new(CallLimits::default(), MediaLimits::default());
        let mut out = |_: Record| {};
        feed(
            &mut c,
            &frame(ProtoType::Sip, INVITE, None, 100),
            1,
            &mut out,
        )
        .unwrap();
        for ssrc in 0..40 {
            let body = format!(r#"{{"ssrc":{ssrc},"report_blocks":[]}}"#);
            let f = frame(ProtoType::RtcpJson, body.as_bytes(), Some("c1"), 100);
            feed(&mut c, &f, 2, &mut out).unwrap();
        }
        let counters = c.calls().counters();
        assert_eq!(counters.hep_rtcp_attached, 40);
        assert_eq!(
            counters.hep_rtcp_dropped,
            40 - crate::correlation::calls::MAX_HEP_RTCP_PER_CALL as u64
        );
    }
}
