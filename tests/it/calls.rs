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
    assert_eq!(c.transport, teledge::record::Transport::Tcp);
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
        // No 180/183: it never rang (it showed the challenge's 34 s and 51 s as ringing).
        assert_eq!(rejected.ringing_time, None, "{id}");
        assert_eq!(rejected.ring_duration_s, None, "{id}: never rang");
    }
    assert_eq!(
        cancelled.ring_duration_s, None,
        "a 100 Trying only, then the CANCEL: it never rang"
    );

    let unreachable = call(&calls, "11894297-4432a9f8@192.168.1.2");
    assert_eq!(unreachable.outcome, Outcome::NotReached);
    assert_eq!(unreachable.final_status, Some(480));
    assert_eq!(unreachable.auth_challenges, 1);
    assert!(unreachable.ringing_time.is_some(), "183 counts as ringing");
    let rang = unreachable.ring_duration_s.unwrap();
    assert!((0.0..0.1).contains(&rang), "183 → 480: {rang}");

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

#[test]
fn capture_starting_mid_call_yields_partial_records() {
    // sip_ipv4_tcp_fragmented.pcap starts while calls are up: 28 Call-IDs show a BYE, an
    // UPDATE, a 200, a 486 or a CANCEL first. Before, their messages were counted as
    // orphans and the calls were not recorded at all.
    let (calls, summary) = replay("sip_ipv4_tcp_fragmented.pcap");
    let epoch = |s: i64, us: u32| teledge::time::Timestamp::from_secs_nanos(s, us * 1000);
    let partial: Vec<_> = calls.iter().filter(|c| c.started_before_capture).collect();
    assert_eq!(
        partial.len() as u64,
        summary.call_counters.started_before_capture
    );
    assert_eq!(
        partial.len(),
        28,
        "TShark: 28 INVITE dialogs without their INVITE"
    );
    assert!(partial
        .iter()
        .all(|c| !c.complete && c.invite_time.is_none()));

    // TShark: UPDATE from 493124 (frame 86, 1531993990.861456), its 200, then a BYE from
    // 0406 (frame 1105, 1531994072.183871) and its 200.
    let c = call(&calls, "80c4c8f96092e8126945b37b77600");
    assert_eq!(c.outcome, Outcome::Answered);
    assert_eq!(c.closed_by, ClosedBy::Bye);
    assert!(!c.roles_known);
    assert_eq!(c.caller.user.as_deref(), Some("493124"));
    assert_eq!(c.hangup_by, Some(Hangup::Callee), "0406 hung up");
    assert_eq!(c.first_message_time, epoch(1_531_993_990, 861_456));
    assert_eq!(c.end_time, Some(epoch(1_531_994_072, 183_871)));
    assert_eq!(
        c.messages, 3,
        "UPDATE, 200, BYE; the BYE's 200 came after the end"
    );

    // TShark: a BYE (frame 261, 1531994000.542771) and its 200, nothing else.
    let c = call(&calls, "cdcd7035-30d3-4b8a-b14e-b2fb9031d9ab");
    assert_eq!(c.closed_by, ClosedBy::Bye);
    assert_eq!(c.end_time, Some(epoch(1_531_994_000, 542_771)));
    assert_eq!(
        c.caller.user.as_deref(),
        Some("79266522236"),
        "the BYE's sender"
    );

    // TShark: 486 to an INVITE not captured, then its ACK: a busy call.
    let c = call(&calls, "044e6256592e8113b15b37b77600");
    assert_eq!(c.outcome, Outcome::Busy);
    assert!(c.roles_known);
    // CANCEL, its 200, the 487 and the ACK: the caller gave up.
    let c = call(&calls, "0ea83236592e81fcb05b37b77600");
    assert_eq!(c.outcome, Outcome::Abandoned);
    assert_eq!(c.hangup_by, Some(Hangup::Caller));
    // OPTIONS pings are no calls.
    assert!(calls.iter().all(|c| !c.call_id.ends_with("0050569fb59b")));
}

#[test]
fn records_are_made_when_the_call_ends_not_at_the_end_of_the_capture() {
    // sip_ipv4_tcp.pcap: the BYE is frame 81 (TShark). The record must come out while the
    // capture is read, as the BYE is seen (plus the record grace for media in flight, here
    // none), not after a linger or at the end of the file.
    let bytes = data("sip_ipv4_tcp.pcap");
    let mut replay = teledge::replay::Replay::new(teledge::replay::ReplaySettings {
        calls: teledge::correlation::calls::CallLimits {
            record_grace: std::time::Duration::ZERO,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut during_read = Vec::new();
    let mut sink = |r: teledge::record::Record| {
        if let teledge::record::Record::Call(c) = r {
            during_read.push(*c);
        }
    };
    // The capture ends moments after the BYE: no linger has passed when it ends.
    replay
        .read(
            "sip_ipv4_tcp.pcap",
            std::io::Cursor::new(&bytes[..]),
            &mut sink,
            |_| {},
        )
        .unwrap();
    assert_eq!(during_read.len(), 1, "made during the read");
    let c = &during_read[0];
    assert_eq!(c.closed_by, ClosedBy::Bye);
    assert!(c.complete);
    let summary = replay.finish(&mut |_| {});
    assert_eq!(summary.call_counters.late_messages, 1, "the 200 of the BYE");
}

/// Child side of `junk_invites_with_large_headers_hold_bounded_memory`: feeds the junk into
/// a correlator and prints what /proc says.
fn junk_child() {
    use teledge::correlation::Correlator;
    let rss = |field: &str| -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let before = rss("VmRSS:");
    let mut correlator = Correlator::new(Default::default(), Default::default());
    let big = "j".repeat(4000);
    let codecs: String = (96..127)
        .map(|pt| format!("a=rtpmap:{pt} X{big:.60}/8000\r\n"))
        .collect();
    let mut records = 0u64;
    for i in 0..5000u32 {
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 10.9.0.1\r\ns=-\r\nc=IN IP4 10.9.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP {}\r\n{codecs}",
            10_000 + i,
            (96..127).map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
        );
        let text = format!(
            "INVITE sip:{big}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.1;branch=z9hG4bK{i}{big}\r\nFrom: \"{big}\" <sip:{i}{big}@x>;tag={big}\r\nTo: \"{big}\" <sip:{big}@pbx>\r\nCall-ID: {i}-{big}\r\nCSeq: 1 INVITE\r\nUser-Agent: {big}\r\nP-Asserted-Identity: \"{big}\" <sip:{big}@x>\r\nDiversion: <sip:{big}@x>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        let msg = teledge::decode::sip::parse(text.as_bytes()).unwrap();
        let meta = teledge::dissect::MessageMeta {
            frame: u64::from(i),
            time: teledge::time::Timestamp::from_secs_nanos(1_700_000_000 + i64::from(i) / 100, 0),
            src: "10.9.0.1:5060".parse().unwrap(),
            dst: "10.9.0.2:5060".parse().unwrap(),
            transport: teledge::dissect::Transport::Udp,
        };
        correlator.sip(&meta, &msg, &mut |_| records += 1);
    }
    println!(
        "JUNK calls={} held={} truncated={} rss_before_kib={before} hwm_kib={}",
        correlator.calls().open_calls(),
        correlator.calls().held_bytes(),
        correlator.calls().counters().fields_truncated,
        rss("VmHWM:")
    );
}

#[test]
fn junk_invites_with_large_headers_hold_bounded_memory() {
    // Issue 10 item 10: 5,000 junk INVITEs with 4 KB headers took 336 MB. Measured in a
    // process of its own (this test binary, re-run on this test alone), from /proc.
    if std::env::var_os("TELEDGE_JUNK_CHILD").is_some() {
        return junk_child();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "calls::junk_invites_with_large_headers_hold_bounded_memory",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TELEDGE_JUNK_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("JUNK ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("{stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("calls"), 5000, "{line}");
    assert!(field("truncated") >= 5000 * 10, "{line}");
    let held = field("held");
    assert!(held < 5000 * 8 * 1024, "{line}: held bytes");
    let grown_mib = (field("hwm_kib") - field("rss_before_kib")) / 1024;
    assert!(grown_mib < 64, "{line}: grew {grown_mib} MiB");
}

#[test]
fn b2bua_direct_media_gives_both_directions_and_rtcp_to_both_legs() {
    // Issue 11 item 5: two Call-IDs whose SDP name the same endpoints each got one RTP
    // direction (both looked one-way) and RTCP attached to neither. Expected figures: TShark
    // on the same file (tests/data/tshark/b2bua_direct_media.pcap.rtp_streams.txt).
    let capture = "b2bua_direct_media.pcap";
    let (calls, _) = replay(capture);
    let reference =
        std::fs::read_to_string(data_path(&format!("tshark/{capture}.rtp_streams.txt"))).unwrap();
    let rows: Vec<Vec<&str>> = reference
        .lines()
        .filter(|l| l.contains("0x"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(calls.len(), 2);
    for leg in ["legA@b2bua.example", "legB@b2bua.example"] {
        let c = call(&calls, leg);
        let q = &c.media_quality;
        assert_eq!(q.caller_to_callee.len(), 1, "{leg}: {q:#?}");
        assert_eq!(q.callee_to_caller.len(), 1, "{leg}");
        for (stream, src) in [
            (&q.caller_to_callee[0], "10.1.0.1:20000"),
            (&q.callee_to_caller[0], "10.2.0.1:30000"),
        ] {
            assert_eq!(stream.src, src, "{leg}");
            let row = rows
                .iter()
                .find(|r| format!("{}:{}", r[2], r[3]) == src)
                .unwrap();
            assert_eq!(stream.metrics.packets.to_string(), row[8], "{leg} {src}");
            let max_jitter: f64 = row[row.len() - 1].parse().unwrap();
            assert!(
                (stream.metrics.max_jitter_ms.unwrap() - max_jitter).abs() < 0.01,
                "{leg} {src}"
            );
            let rtcp = stream.rtcp.as_ref().expect("the receiver's RTCP report");
            assert_eq!(rtcp.reports, 1, "{leg} {src}");
        }
    }
}

#[test]
fn sipp_branch_403_then_bye_stays_rejected() {
    // Issue 11 item 1, on SIPp's own branch scenarios: INVITE → 180 → 403 → BYE was
    // reported abandoned by the caller. TShark's reference gives each Call-ID's final status.
    let capture = "sipp_branch_403_bye.pcap";
    let (calls, summary) = replay(capture);
    let reference = tshark_messages(capture);
    assert_eq!(calls.len(), 10);
    let mut rejected = 0;
    for c in &calls {
        let statuses: Vec<String> = reference
            .iter()
            .filter(|m| m.1 == c.call_id && m.3 == "1 INVITE")
            .map(|m| m.2.clone())
            .collect();
        let byes = reference
            .iter()
            .filter(|m| m.1 == c.call_id && m.2 == "BYE")
            .count();
        assert_eq!(byes, 1, "{}: a BYE follows in every call", c.call_id);
        if statuses.iter().any(|s| s == "403") {
            rejected += 1;
            assert_eq!(c.outcome, Outcome::Rejected, "{}", c.call_id);
            assert_eq!(c.final_status, Some(403));
            assert_eq!(c.hangup_by, None, "nobody hung up a call that was refused");
            assert_eq!(c.closed_by, ClosedBy::FinalResponse);
            assert_eq!(c.talk_duration_s, None);
        } else {
            assert!(statuses.iter().any(|s| s == "200"), "{}", c.call_id);
            assert_eq!(c.outcome, Outcome::Answered, "{}", c.call_id);
            assert_eq!(c.hangup_by, Some(Hangup::Caller));
        }
    }
    assert_eq!(rejected, 9);
    // The BYE and its 200 after each 403 are late messages, counted.
    assert_eq!(summary.call_counters.late_messages, 9 * 2 + 1);
    assert_eq!(summary.registrations, 10);
}

/// A caller that sends its INVITE again with a new CSeq before any final response, every one
/// answered 2xx (the wiki's DTMFsipinfo.pcap, campaign 2026-12-03c: INVITE 1, 2 and 3 within
/// 130 ms; 200 to 1 at frame 4, to 2 at frame 10, to 3 at frame 14, each ACKed). The first 2xx
/// makes the dialog and answers the call (RFC 3261 §12.1), where TShark's first 200 is; the
/// call used to be answered only at the 200 to the newest INVITE (the others taken for
/// responses to re-INVITEs).
#[test]
fn a_2xx_to_an_earlier_initial_invite_answers_the_call() {
    let sip = |start: &str, cseq: &str, to_tag: &str| {
        format!(
            "{start}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{}\r\n\
             From: <sip:a@x>;tag=f1\r\nTo: <sip:b@x>{to_tag}\r\nCall-ID: pipelined@x\r\n\
             CSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
            cseq.split(' ').next().unwrap()
        )
    };
    let invite = "INVITE sip:b@x SIP/2.0";
    let ok = "SIP/2.0 200 OK";
    let tag = ";tag=t1";
    let (caller, callee) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let messages = [
        (caller, sip(invite, "1 INVITE", "")),
        (caller, sip(invite, "2 INVITE", "")),
        (callee, sip("SIP/2.0 100 Trying", "1 INVITE", "")),
        (callee, sip(ok, "1 INVITE", tag)),
        (caller, sip(invite, "3 INVITE", "")),
        (caller, sip("ACK sip:b@x SIP/2.0", "1 ACK", tag)),
        (callee, sip(ok, "2 INVITE", tag)),
        (callee, sip(ok, "3 INVITE", tag)),
        (caller, sip("BYE sip:b@x SIP/2.0", "4 BYE", tag)),
        (callee, sip(ok, "4 BYE", tag)),
    ];
    // A classic pcap of Ethernet frames, one message 10 ms after the other.
    let mut pcap = Vec::new();
    for v in [0xA1B2_C3D4u32, 0x0004_0002, 0, 0, 65_535, 1] {
        pcap.extend_from_slice(&v.to_le_bytes());
    }
    for (i, (src, text)) in messages.iter().enumerate() {
        let dst = if *src == caller { callee } else { caller };
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(*src, dst, 64)
            .udp(5060, 5060)
            .write(&mut frame, text.as_bytes())
            .unwrap();
        let us = 1_000_000 + 10_000 * i as u32;
        for v in [
            us / 1_000_000,
            us % 1_000_000,
            frame.len() as u32,
            frame.len() as u32,
        ] {
            pcap.extend_from_slice(&v.to_le_bytes());
        }
        pcap.extend_from_slice(&frame);
    }
    let (calls, _, result) = replay_bytes(&pcap, patient_settings());
    result.unwrap();
    let c = call(&calls, "pipelined@x");
    assert_eq!(c.outcome, Outcome::Answered);
    // The 200 to CSeq 1 is the fourth message: 1.030 s.
    let answer = c.answer_time.expect("answered").as_nanos();
    assert_eq!(answer, 1_030_000_000, "{:?}", c.answer_time);
    assert_eq!(c.hangup_by, Some(Hangup::Caller));
}
