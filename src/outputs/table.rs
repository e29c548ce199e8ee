//! A table of calls for a supervisor: one line per call — when it came in (local time in a
//! chosen zone), who called whom, the outcome, how long it took to answer, how long it rang
//! (only calls that rang), how long they talked, who hung up, the voice quality — and a
//! summary by outcome. SIP status codes and Call-IDs, an engineer's figures, are shown only
//! when asked for (`verbose`).

use std::collections::BTreeMap;
use std::io::{self, Write};

use jiff::tz::TimeZone;

use crate::record::{CallRecord, CaptureSummary, Hangup, Outcome};

/// How the table is shown.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// Times are shown in this zone (an IANA zone; `replay --tz`, else the system's).
    pub zone: TimeZone,
    /// Adds the final SIP status and the Call-ID of every call.
    pub verbose: bool,
    /// With services (`replay --config` with `[[service]]`): a SERVICE column, each call
    /// classified on its clear numbers as the statistics do (`-`: no service matched).
    pub services: Option<crate::stats::Services>,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            zone: TimeZone::UTC,
            verbose: false,
            services: None,
        }
    }
}

/// Writes the table of `calls` (in call order) followed by the summary.
pub fn write_table(
    out: &mut impl Write,
    calls: &[CallRecord],
    summary: &CaptureSummary,
    options: &TableOptions,
) -> io::Result<()> {
    let zone_name = options.zone.iana_name().unwrap_or("local");
    write!(
        out,
        "{:<25}  {:<20}  {:<20}  {:<12}  {:>8}  {:>6}  {:>8}  {:<7}  {:>4}",
        format!("TIME ({zone_name})"),
        "CALLER",
        "CALLEE",
        "OUTCOME",
        "ANSWER s",
        "RING s",
        "TALK s",
        "HUNG UP",
        "MOS"
    )?;
    if options.services.is_some() {
        write!(out, "  {:<16}", "SERVICE")?;
    }
    if options.verbose {
        write!(out, "  {:<4}  CALL-ID", "SIP")?;
    }
    writeln!(out)?;
    for call in calls {
        let time = local_time(
            call.invite_time.unwrap_or(call.first_message_time),
            &options.zone,
        );
        let outcome = if call.complete || call.outcome == Outcome::InProgress {
            outcome_label(call.outcome)
        } else {
            format!("{}*", outcome_label(call.outcome))
        };
        let mos = call
            .media_quality
            .verdict
            .as_ref()
            .map(|v| format!("{:.2}", v.mos))
            .unwrap_or_else(|| "-".into());
        let hung_up = match call.hangup_by {
            Some(Hangup::Caller) => "caller",
            Some(Hangup::Callee) => "callee",
            None => "-",
        };
        write!(
            out,
            "{:<25}  {:<20}  {:<20}  {:<12}  {:>8}  {:>6}  {:>8}  {:<7}  {:>4}",
            time,
            clip(party_label(&call.caller), 20),
            clip(party_label(&call.callee), 20),
            outcome,
            secs(call.time_to_answer_s),
            secs(call.ring_duration_s),
            secs(call.talk_duration_s),
            hung_up,
            mos,
        )?;
        if let Some(services) = &options.services {
            let name = services
                .classify(call)
                .and_then(|i| services.get(i))
                .map_or("-", |s| s.name.as_str());
            write!(out, "  {:<16}", clip(name, 16))?;
        }
        if options.verbose {
            write!(
                out,
                "  {:<4}  {}",
                call.final_status.map(|s| s.to_string()).unwrap_or_default(),
                call.call_id
            )?;
        }
        writeln!(out)?;
    }
    if !calls.is_empty() {
        writeln!(
            out,
            "ANSWER: seconds from the call to its answer; RING: seconds it rang (only calls \
             that rang); TALK: seconds from the answer to the hang-up"
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
            outcome_label(outcome),
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
    let drops = &summary.capture_drops;
    if drops.total() > 0 {
        writeln!(
            out,
            "the capture lost {} packets before they were written (interface statistics {}, packet drop counts {}, ERF loss counters {}, snoop drops {}): the calls they belonged to are measured without them",
            drops.total(),
            drops.interface_statistics,
            drops.packet_drop_counts,
            drops.erf_loss_counters,
            drops.snoop_cumulative_drops,
        )?;
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

/// A capture time in `zone`, to the second, with the zone's abbreviation (which also tells
/// the two 02:30 of a night when the clocks go back apart).
fn local_time(t: crate::time::Timestamp, zone: &TimeZone) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(t.as_nanos())) {
        Ok(ts) => ts
            .to_zoned_datetime(zone.clone())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        // Outside jiff's range (years -9999..=9999): only a broken capture has such times.
        Err(_) => t.to_string(),
    }
}

/// An outcome as people say it (`not reached`, not `not_reached`).
fn outcome_label(outcome: Outcome) -> String {
    outcome.as_str().replace('_', " ")
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn local_times_follow_the_zone_and_tell_the_repeated_hour_apart() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let at = |secs: i64| crate::time::Timestamp::from_secs_nanos(secs, 0);
        // 2026-10-25: clocks go back at 03:00 CEST to 02:00 CET; 02:30 happens twice.
        assert_eq!(
            local_time(at(1_792_888_200), &berlin),
            "2026-10-25 02:30:00 CEST"
        );
        assert_eq!(
            local_time(at(1_792_891_800), &berlin),
            "2026-10-25 02:30:00 CET"
        );
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        assert_eq!(
            local_time(at(1_774_746_000), &berlin),
            "2026-03-29 03:00:00 CEST"
        );
        let kathmandu = TimeZone::get("Asia/Kathmandu").unwrap();
        assert_eq!(
            local_time(at(1_792_888_200), &kathmandu),
            "2026-10-25 06:15:00 +0545"
        );
        assert_eq!(
            local_time(at(1_792_888_200), &TimeZone::UTC),
            "2026-10-25 00:30:00 UTC"
        );
    }
}
