//! Call records from real captures, against the fixture README and TShark.

use std::collections::BTreeSet;

use teledge::record::{ClosedBy, Hangup, Outcome, State};

use crate::support::*;

fn registers_in_reference(capture: &str) -> u64 {
    let set: BTreeSet<(String, String)> = tshark_messages(capture)
        .into_iter()
        .filter(|m| m.2 == "REGISTER")
        .map(|m| (m.1, m.3))
        .collect();
    set.len() as u64
}

#[test]
fn rtp_rtcp_capture_one_connected_one_ringing_registers_not_calls() {
    let capture = "rtp_rtcp_sip_ipv4_udp.pcap";
    let (calls, summary) = replay(capture);
    let start = first_frame_time(capture);
    assert_eq!(calls.len(), 2, "REGISTERs are not calls");

    let answered = call(&calls, "12013223@200.57.7.195");
    let rel = |t: teledge::time::Timestamp| t.seconds_since(start);
    assert!((rel(answered.ringing_time.unwrap()) - 0.048).abs() < 0.001);
    assert!((rel(answered.answer_time.unwrap()) - 8.478).abs() < 0.001);
    assert_eq!(answered.outcome, Outcome::Answered);
    assert_eq!(answered.state, State::Connected);
    assert!(!answered.complete, "still connected when the capture ends");
    assert_eq!(answered.closed_by, ClosedBy::CaptureEnd);
    assert_eq!(answered.end_time, None, "no end is invented");
    assert_eq!(answered.talk_duration_s, None);
    let answer = answered.media.answer.as_ref().unwrap();
    let codec = answer.media[0].codecs[0].name.as_deref().unwrap();
    assert!(codec.eq_ignore_ascii_case("PCMA"), "{codec}");

    let ringing = call(&calls, "12015624@200.57.7.195");
    assert_eq!(ringing.outcome, Outcome::InProgress);
    assert_eq!(ringing.state, State::Ringing);
    assert!(!ringing.complete);

    assert_eq!(summary.registrations, registers_in_reference(capture));
    assert!(summary.registrations > 0);
}

#[test]
fn tcp_call_answered_and_ended_by_bye() {
    let (calls, _) = replay("sip_ipv4_tcp.pcap");
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.outcome, Outcome::Answered);
    assert_eq!(c.closed_by, ClosedBy::Bye);
    assert!(c.complete);
    assert_eq!(c.transport, teledge::dissect::Transport::Tcp);
    // TShark: 200 OK at 4.349461 s, BYE at 6.500977 s.
    assert!((c.talk_duration_s.unwrap() - 2.151516).abs() < 1e-6);
    // TShark: the BYE comes from 10.33.6.101 with the callee's tag.
    assert_eq!(c.hangup_by, Some(Hangup::Callee));
    assert_eq!(c.caller.user.as_deref(), Some("101"));
    assert_eq!(c.callee.user.as_deref(), Some("201"));
    assert_eq!(c.user_agents.caller.as_deref(), Some("IPP/v.6.20A.027.012"));
    let offer = c.media.offer.as_ref().unwrap();
    assert_eq!(offer.media[0].port, 6000);
    assert_eq!(offer.media[0].address.as_deref(), Some("10.33.6.100"));
}

#[test]
fn sngrep_four_attempts_with_expected_outcomes() {
    let capture = "sngrep_aaa.pcap";
    let (calls, summary) = replay(capture);
    assert_eq!(calls.len(), 4, "exactly the four call attempts");

    let cancelled = call(&calls, "105090259-446faf7a@192.168.1.2");
    assert_eq!(cancelled.outcome, Outcome::Abandoned);
    assert_eq!(cancelled.hangup_by, Some(Hangup::Caller));
    assert_eq!(cancelled.final_status, Some(408));
    assert!(
        cancelled.retransmissions >= 3,
        "INVITE sent 3 times, CANCEL re-sent"
    );

    for id in [
        "85216695-42dcdb1d@192.168.1.2",
        "24487391-449bf2a0@192.168.1.2",
    ] {
        let rejected = call(&calls, id);
        assert_eq!(rejected.outcome, Outcome::Rejected, "{id}");
        assert_eq!(rejected.final_status, Some(403), "{id}");
        assert_eq!(
            rejected.auth_challenges, 1,
            "{id}: the 407 is inside the attempt"
        );
    }

    let unreachable = call(&calls, "11894297-4432a9f8@192.168.1.2");
    assert_eq!(unreachable.outcome, Outcome::NotReached);
    assert_eq!(unreachable.final_status, Some(480));
    assert_eq!(unreachable.auth_challenges, 1);
    assert!(unreachable.ringing_time.is_some(), "183 counts as ringing");

    assert_eq!(summary.registrations, registers_in_reference(capture));
    assert_eq!(summary.outcomes.values().sum::<u64>(), 4);
}

#[test]
fn tcp_fragmented_outcomes_follow_final_responses() {
    // Every call record's final status is the final response TShark shows for its INVITE.
    let capture = "sip_ipv4_tcp_fragmented.pcap";
    let (calls, _) = replay(capture);
    let reference = tshark_messages(capture);
    for c in &calls {
        let finals: Vec<u16> = reference
            .iter()
            .filter(|m| m.1 == c.call_id && m.3.ends_with("INVITE"))
            .filter_map(|m| m.2.parse::<u16>().ok())
            .filter(|s| *s >= 200)
            .collect();
        match c.final_status {
            Some(status) => assert!(
                finals.contains(&status),
                "{}: {status} not in {finals:?}",
                c.call_id
            ),
            None => assert!(
                finals.is_empty() || c.outcome == Outcome::Answered,
                "{}",
                c.call_id
            ),
        }
        if finals.contains(&486) && c.answer_time.is_none() {
            assert_eq!(c.outcome, Outcome::Busy, "{}", c.call_id);
        }
    }
}
