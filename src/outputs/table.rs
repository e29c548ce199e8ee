//! A table of calls for people: one line per call and a summary by outcome.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::record::{CallRecord, CaptureSummary, Outcome};

/// Writes the table of `calls` (in call order) followed by the summary.
pub fn write_table(
    out: &mut impl Write,
    calls: &[CallRecord],
    summary: &CaptureSummary,
) -> io::Result<()> {
    writeln!(
        out,
        "{:<19}  {:<20}  {:<20}  {:<12}  {:>6}  {:>8}  {:<4}  {:>4}  CALL-ID",
        "TIME (UTC)", "CALLER", "CALLEE", "OUTCOME", "RING s", "TALK s", "SIP", "MOS"
    )?;
    for call in calls {
        let time = call
            .invite_time
            .unwrap_or(call.first_message_time)
            .to_string();
        let time = time.get(..19).unwrap_or(&time).replace('T', " ");
        let outcome = if call.complete || call.outcome == Outcome::InProgress {
            call.outcome.as_str().to_owned()
        } else {
            format!("{}*", call.outcome.as_str())
        };
        let mos = call
            .media_quality
            .verdict
            .as_ref()
            .map(|v| format!("{:.2}", v.mos))
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<19}  {:<20}  {:<20}  {:<12}  {:>6}  {:>8}  {:<4}  {:>4}  {}",
            time,
            clip(party_label(&call.caller), 20),
            clip(party_label(&call.callee), 20),
            outcome,
            secs(call.ring_duration_s),
            secs(call.talk_duration_s),
            call.final_status.map(|s| s.to_string()).unwrap_or_default(),
            mos,
            call.call_id,
        )?;
    }
    if calls
        .iter()
        .any(|c| !c.complete && c.outcome != Outcome::InProgress)
    {
        writeln!(
            out,
            "* incomplete: still open when the capture ended (connected or timed out), or \
             started before it (its INVITE not seen; the time is its first message's)"
        )?;
    }
    writeln!(out)?;
    let mut by_outcome: BTreeMap<Outcome, u64> = BTreeMap::new();
    for call in calls {
        *by_outcome.entry(call.outcome).or_default() += 1;
    }
    let total = calls.len() as f64;
    writeln!(out, "{} calls", calls.len())?;
    for (outcome, count) in by_outcome {
        writeln!(
            out,
            "  {:<12} {:>6}  {:>5.1}%",
            outcome.as_str(),
            count,
            100.0 * count as f64 / total
        )?;
    }
    let scored: Vec<f64> = calls
        .iter()
        .filter_map(|c| c.media_quality.verdict.as_ref().map(|v| v.mos))
        .collect();
    if !scored.is_empty() {
        let worst = scored.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = scored.iter().sum::<f64>() / scored.len() as f64;
        writeln!(
            out,
            "quality: {} calls scored, mean MOS {mean:.2}, worst {worst:.2}",
            scored.len()
        )?;
    }
    let m = &summary.media;
    writeln!(
        out,
        "{} RTP streams ({} in no call), {} RTP packets ({:.1}% attributed to calls), {} RTCP",
        m.streams,
        m.orphan_streams,
        m.rtp_packets,
        if m.rtp_packets > 0 {
            100.0 * m.rtp_packets_in_calls as f64 / m.rtp_packets as f64
        } else {
            0.0
        },
        m.rtcp_packets
    )?;
    if m.rtp_after_call_end + m.rtcp_after_call_end > 0 {
        writeln!(
            out,
            "{} RTP and {} RTCP packets after their call's end (counted, not measured)",
            m.rtp_after_call_end, m.rtcp_after_call_end
        )?;
    }
    if m.orphan_streams_summarised > 0 {
        writeln!(
            out,
            "{} orphan streams beyond the per-minute budget, summed up in summary records",
            m.orphan_streams_summarised
        )?;
    }
    let c = &summary.call_counters;
    if c.started_before_capture + c.late_messages + c.evicted_in_setup > 0 {
        writeln!(
            out,
            "{} calls started before the capture, {} messages after their call's end, {} calls evicted at the table's bound",
            c.started_before_capture, c.late_messages, c.evicted_in_setup
        )?;
    }
    let d = &summary.decode;
    writeln!(
        out,
        "{} frames, {} SIP messages ({} UDP, {} TCP, {} WebSocket, {} SCTP, {} HEP), {} REGISTER and {} other transactions, {} decode errors{}",
        d.frames,
        d.sip_messages(),
        d.sip_messages_udp,
        d.sip_messages_tcp,
        d.sip_messages_ws,
        d.sip_messages_sctp,
        d.sip_messages_hep,
        summary.registrations,
        summary.other_transactions,
        d.errors.values().sum::<u64>(),
        errors_by_kind(d),
    )?;
    for file in &summary.undecodable_files {
        writeln!(out, "{file}: no frame could be decoded")?;
    }
    Ok(())
}

/// ` (link 12, sip 1)`, or nothing when there was no error.
fn errors_by_kind(d: &crate::record::DecodeCounters) -> String {
    if d.errors.is_empty() {
        return String::new();
    }
    let kinds: Vec<String> = d.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(" ({})", kinds.join(", "))
}

fn party_label(party: &crate::record::Party) -> &str {
    party
        .user
        .as_deref()
        .or(party.display_name.as_deref())
        .or(party.uri.as_deref())
        .unwrap_or("-")
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut clipped: String = s.chars().take(width - 1).collect();
        clipped.push('…');
        clipped
    }
}

fn secs(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v:.1}"))
        .unwrap_or_else(|| "-".into())
}
