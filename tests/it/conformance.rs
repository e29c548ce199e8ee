//! Every SIP message TShark decodes, teledge decodes: same frame, Call-ID, start line, CSeq,
//! and every dialog groups the messages TShark attributes to its Call-ID.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::*;

fn assert_same_messages(capture: &str) {
    let mut expected = tshark_messages(capture);
    let mut got = teledge_messages(capture);
    assert!(!expected.is_empty(), "{capture}: empty reference");
    expected.sort();
    got.sort();
    let missing: Vec<_> = expected.iter().filter(|m| !got.contains(m)).collect();
    let extra: Vec<_> = got.iter().filter(|m| !expected.contains(m)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{capture}: {} missing {missing:?}, {} extra {extra:?}",
        missing.len(),
        extra.len()
    );
}

/// Each call record counts exactly the messages TShark shows for its Call-ID.
fn assert_grouped(capture: &str, settings: teledge::replay::ReplaySettings) {
    let mut per_call_id: BTreeMap<String, u32> = BTreeMap::new();
    let mut invited: BTreeSet<String> = BTreeSet::new();
    for (_, call_id, start, _) in tshark_messages(capture) {
        *per_call_id.entry(call_id.clone()).or_default() += 1;
        if start == "INVITE" {
            invited.insert(call_id);
        }
    }
    let (calls, _, result) = replay_bytes(&data(capture), settings);
    result.unwrap();
    let recorded: BTreeSet<String> = calls.iter().map(|c| c.call_id.clone()).collect();
    assert_eq!(recorded, invited, "{capture}: one record per INVITE dialog");
    for call in &calls {
        assert_eq!(
            call.messages, per_call_id[&call.call_id],
            "{capture}: messages of {}",
            call.call_id
        );
    }
}

#[test]
fn udp_ipv4_messages_match_tshark() {
    assert_same_messages("rtp_rtcp_sip_ipv4_udp.pcap");
    assert_same_messages("sngrep_aaa.pcap");
}

#[test]
fn tcp_messages_match_tshark() {
    assert_same_messages("sip_ipv4_tcp.pcap");
}

#[test]
fn tcp_fragmented_all_406_messages_over_70_call_ids() {
    let capture = "sip_ipv4_tcp_fragmented.pcap";
    assert_same_messages(capture);
    let got = teledge_messages(capture);
    assert_eq!(got.len(), 406);
    let call_ids: BTreeSet<_> = got.iter().map(|m| m.1.clone()).collect();
    assert_eq!(call_ids.len(), 70);
    assert_grouped(capture, teledge::replay::ReplaySettings::default());
}

#[test]
fn websocket_messages_match_tshark() {
    let capture = "websocket-sip.pcapng";
    assert_same_messages(capture);
    assert_eq!(teledge_messages(capture).len(), 11);
    assert_grouped(capture, teledge::replay::ReplaySettings::default());
    let (calls, summary) = replay(capture);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].transport, teledge::dissect::Transport::Ws);
    assert_eq!(summary.decode.sip_messages_ws, 11);
}

#[test]
fn erspan_gre_messages_match_tshark() {
    let capture = "erspan_sip_ipv4_udp.pcapng";
    assert_same_messages(capture);
    assert_grouped(capture, teledge::replay::ReplaySettings::default());
}

#[test]
fn ipv6_messages_match_tshark_and_form_one_dialog() {
    let capture = "sip_ipv6_udp.pcap";
    assert_same_messages(capture);
    // This capture's clock jumps by decades between messages (2012 to 2092), so the test
    // lifts the timeouts: it is about decoding and grouping, not time.
    assert_grouped(capture, patient_settings());
    let (calls, _, _) = replay_bytes(&data(capture), patient_settings());
    assert_eq!(calls[0].outcome, teledge::record::Outcome::Answered);
    assert_eq!(calls[0].closed_by, teledge::record::ClosedBy::Bye);
}

#[test]
fn ipv6_fragments_reassemble_into_one_datagram() {
    let (_, summary) = replay("ipv6_udp_fragmented.pcap");
    let fragments = summary.decode.fragments;
    assert_eq!(fragments.fragments, 4);
    assert_eq!(fragments.reassembled, 1);
    // TShark: udp.length 5387 = 8-byte UDP header + the 5379-byte payload.
    assert_eq!(fragments.largest_reassembled, 5387);
    assert_eq!(
        fragments.overlap_conflicts + fragments.malformed + fragments.timed_out,
        0
    );
}

/// `dumpcap -i any` on a host whose SIP runs over loopback writes Linux cooked v1 frames of
/// hardware type 772: every one of them used to fail as "shorter than its link-layer header",
/// and the replay exited 0 with no call.
#[test]
fn linux_cooked_loopback_capture_matches_tshark() {
    let capture = "sip_loopback_sll.pcap";
    assert_same_messages(capture);
    assert_grouped(capture, teledge::replay::ReplaySettings::default());
    let (calls, summary) = replay(capture);
    assert_eq!(summary.decode.link_errors, 0);
    assert_eq!(summary.decode.frames_failed, 0);
    assert!(summary.undecodable_files.is_empty());
    let mut transports: Vec<_> = calls.iter().map(|c| format!("{:?}", c.transport)).collect();
    transports.sort();
    assert_eq!(transports, ["Tcp", "Udp"]);
    assert!(calls
        .iter()
        .all(|c| c.outcome == teledge::record::Outcome::Answered));
}

/// SIP over SCTP (RFC 4168): a fragmented INVITE (out of order, one fragment retransmitted),
/// bundled responses, a non-SIP chunk, and a fragmented REGISTER over IPv6.
#[test]
fn sctp_messages_match_tshark() {
    let capture = "sip_sctp.pcap";
    assert_same_messages(capture);
    assert_grouped(capture, teledge::replay::ReplaySettings::default());
    let (calls, summary) = replay(capture);
    let expected = tshark_messages(capture).len() as u64;
    assert_eq!(summary.decode.sip_messages_sctp, expected);
    assert_eq!(summary.decode.sctp.reassembled, 2, "INVITE and REGISTER");
    assert_eq!(summary.decode.sctp.duplicates, 1);
    assert_eq!(summary.decode.sctp_packets, 18);
    assert_eq!(summary.decode.frames_failed, 0);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].transport, teledge::dissect::Transport::Sctp);
    assert_eq!(calls[0].outcome, teledge::record::Outcome::Answered);
    assert_eq!(summary.registrations, 1);
}
