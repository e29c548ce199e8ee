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

/// INVITE-dialog methods: a Call-ID whose messages carry one of them in CSeq is a call, even
/// when its INVITE came before the capture (a partial record).
const DIALOG_METHODS: [&str; 7] = ["INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "PRACK", "INFO"];

/// One record per INVITE dialog (its INVITE seen or not), and every message TShark
/// attributes to its Call-ID either counted in the record or, after the call ended, counted
/// as late.
fn assert_grouped(capture: &str, settings: teledge::replay::ReplaySettings) {
    let mut per_call_id: BTreeMap<String, u32> = BTreeMap::new();
    let mut dialogs: BTreeSet<String> = BTreeSet::new();
    let mut invited: BTreeSet<String> = BTreeSet::new();
    let mut messages = tshark_messages(capture);
    messages.sort();
    for (_, call_id, start, cseq) in messages {
        let method = cseq.split_whitespace().nth(1).unwrap_or("");
        if DIALOG_METHODS.contains(&method) {
            dialogs.insert(call_id.clone());
        }
        // What comes before the dialog's first message in its Call-ID (SIPp registers under
        // the Call-ID of the call it then makes) is an out-of-dialog transaction.
        if dialogs.contains(&call_id) {
            *per_call_id.entry(call_id.clone()).or_default() += 1;
        }
        if start == "INVITE" {
            invited.insert(call_id);
        }
    }
    let (calls, summary, result) = replay_bytes(&data(capture), settings);
    result.unwrap();
    let recorded: BTreeSet<String> = calls.iter().map(|c| c.call_id.clone()).collect();
    assert_eq!(recorded, dialogs, "{capture}: one record per INVITE dialog");
    let mut in_records = 0;
    for call in &calls {
        assert_eq!(
            call.started_before_capture,
            !invited.contains(&call.call_id),
            "{capture}: {} started before the capture",
            call.call_id
        );
        assert!(
            call.messages <= per_call_id[&call.call_id],
            "{capture}: messages of {}",
            call.call_id
        );
        in_records += call.messages;
    }
    let of_dialogs: u32 = dialogs.iter().map(|id| per_call_id[id]).sum();
    assert_eq!(
        u64::from(in_records) + summary.call_counters.late_messages,
        u64::from(of_dialogs),
        "{capture}: every message in a record or counted late"
    );
}

#[test]
fn udp_ipv4_messages_match_tshark() {
    assert_same_messages("rtp_rtcp_sip_ipv4_udp.pcap");
    assert_same_messages("sngrep_aaa.pcap");
}

#[test]
fn generated_and_recorded_captures_match_tshark() {
    for capture in ["b2bua_direct_media.pcap", "sipp_branch_403_bye.pcap"] {
        assert_same_messages(capture);
        assert_grouped(capture, teledge::replay::ReplaySettings::default());
    }
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
    assert_eq!(calls[0].transport, teledge::record::Transport::Ws);
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

/// Every capture in `tests/data` is in [`ALL_CAPTURES`] (which the media and robustness
/// suites walk) and has TShark's references, from the pinned version.
#[test]
fn every_capture_is_listed_with_pinned_tshark_references() {
    let mut on_disk: Vec<String> = std::fs::read_dir(data_path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = ALL_CAPTURES.iter().map(|c| c.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "tests/data and ALL_CAPTURES differ");
    for capture in ALL_CAPTURES {
        for kind in ["rtp_streams.txt", "sip.tsv", "rtcp_rtt.tsv"] {
            let path = data_path(&format!("tshark/{capture}.{kind}"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                assert_ne!(kind, "rtp_streams.txt", "{capture}: no RTP reference");
                continue;
            };
            assert!(
                text.starts_with(&format!("# {PINNED_TSHARK}")),
                "{}: not from the pinned TShark",
                path.display()
            );
        }
    }
}

/// Every SIP message of every capture TShark finds SIP in (HEP through
/// tests/tshark/hep3.lua), teledge finds: same frame, Call-ID, start line and CSeq.
#[test]
fn every_sip_message_of_every_capture_matches_tshark() {
    let mut compared = 0;
    for capture in ALL_CAPTURES {
        if data_path(&format!("tshark/{capture}.sip.tsv")).exists() {
            assert_same_messages(capture);
            compared += 1;
        }
    }
    assert!(compared >= 13, "{compared} captures compared");
}

/// The generated media captures are what `teledge-gencap --media-scenario` writes today, and
/// the installed TShark (the pinned version) still reports their streams as the references
/// say.
#[test]
fn generated_media_captures_are_reproducible() {
    pinned_tshark();
    let dir = std::env::temp_dir().join(format!("teledge-media-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for scenario in [
        "rtcp-clock-offset",
        "early-burst",
        "timestamp-reset",
        "dtmf-in-voice",
        "static-payload-types",
    ] {
        let name = format!("gen_{}.pcap", scenario.replace('-', "_"));
        let path = dir.join(&name);
        let status = std::process::Command::new(crate::support::tool("teledge-gencap"))
            .args(["--media-scenario", scenario, "--out"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "{scenario}");
        assert!(
            std::fs::read(&path).unwrap() == data(&name),
            "{name}: the generator no longer writes the bundled capture; regenerate it and its \
             references (tests/tshark/regenerate.py)"
        );
        let out = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&path)
            .args(["-q", "-o", "rtp.heuristic_rtp:TRUE", "-z", "rtp,streams"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let reference =
            std::fs::read_to_string(data_path(&format!("tshark/{name}.rtp_streams.txt"))).unwrap();
        let body: String = reference
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), body, "{name}");
    }
    std::fs::remove_dir_all(&dir).ok();
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
    assert_eq!(calls[0].transport, teledge::record::Transport::Sctp);
    assert_eq!(calls[0].outcome, teledge::record::Outcome::Answered);
    assert_eq!(summary.registrations, 1);
}

/// PcapPlusPlus's `sip_reqs.pcap`: an INVITE, then a CANCEL and an ACK inside PPPoE sessions
/// (both used to be counted as non-IP frames), and a BYE cut inside its last header name (it
/// used to fail as a malformed header line; TShark reads the headers before the cut).
#[test]
fn pppoe_and_a_cut_head_match_tshark() {
    let capture = "pppoe_sip_reqs.pcap";
    assert_same_messages(capture);
    assert_grouped(capture, patient_settings());
    let (_, summary, result) = replay_bytes(&data(capture), patient_settings());
    result.unwrap();
    assert_eq!(summary.decode.non_ip, 0);
    assert_eq!(summary.decode.frames_failed, 0);
    assert_eq!(summary.decode.sip_parse_errors, 0);
    assert_eq!(summary.decode.sip_messages_udp, 4);
}

/// PcapPlusPlus's `sip_resp.pcap`: a dialog joined on a 100 Trying that carries a To-tag,
/// then 180 and 200 of the same INVITE. The 180 can only answer the initial INVITE, so the
/// 200 is the answer: TShark's frame 3 is the answer time and 200 the final status.
#[test]
fn a_call_joined_on_a_tagged_100_is_answered_at_its_200() {
    let capture = "sip_joined_100_with_tag.pcap";
    assert_same_messages(capture);
    assert_grouped(capture, patient_settings());
    let (calls, _, result) = replay_bytes(&data(capture), patient_settings());
    result.unwrap();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert!(c.started_before_capture && c.roles_known);
    assert_eq!(c.outcome, teledge::record::Outcome::Answered);
    assert_eq!(c.final_status, Some(200));
    let answer = tshark_messages(capture)
        .into_iter()
        .find(|m| m.2 == "200" && m.3 == "1 INVITE")
        .unwrap();
    let mut frames = Vec::new();
    teledge::sources::capture_file::read_frames(
        std::io::Cursor::new(&data(capture)[..]),
        |f: &teledge::dissect::Frame<'_>, _| {
            frames.push(f.time);
        },
    )
    .unwrap();
    assert_eq!(c.answer_time, Some(frames[answer.0 as usize - 1]));
    assert_eq!(c.caller_address, "200.57.7.195:5060");
}

/// The call of aboutsip/pkts' `simple_invite_scenario.pcap` as two taps deliver it
/// (`tests/tshark/make_derived.py`): inside Geneve (RFC 8926; Ethernet and bare IP inside, as
/// AWS Gateway Load Balancer sends), whose datagrams used to be counted as "other" with no
/// call found; and in a pcapng with three interfaces of different link types and timestamp
/// resolutions, one of them binary (2^-20 s), which used to be refused whole as corrupt.
#[test]
fn geneve_and_a_pcapng_with_three_interfaces_match_tshark() {
    for capture in ["geneve_sip.pcap", "pcapng_three_interfaces.pcapng"] {
        assert_same_messages(capture);
        assert_grouped(capture, patient_settings());
        let (calls, summary, result) = replay_bytes(&data(capture), patient_settings());
        result.unwrap();
        assert_eq!(summary.decode.frames_failed, 0, "{capture}");
        assert_eq!(summary.decode.sip_messages_udp, 7, "{capture}");
        assert_eq!(calls.len(), 1, "{capture}");
        let c = &calls[0];
        assert_eq!(c.outcome, teledge::record::Outcome::Answered, "{capture}");
        // TShark's frame.time_epoch of the INVITE (frame 1, nanoseconds), the 200 (frame 4)
        // and the BYE (frame 6: on the binary-resolution interface of the pcapng,
        // 1362868695.081385612 there).
        let at =
            |secs: i64, nanos: u32| Some(teledge::time::Timestamp::from_secs_nanos(secs, nanos));
        assert_eq!(c.invite_time, at(1_362_868_678, 972_518_000), "{capture}");
        assert_eq!(c.answer_time, at(1_362_868_683, 78_535_000), "{capture}");
        let bye = if capture.ends_with(".pcapng") {
            81_385_612
        } else {
            81_386_000
        };
        assert_eq!(c.end_time, at(1_362_868_695, bye), "{capture}");
    }
}
