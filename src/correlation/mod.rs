//! Correlation: typed events in, records out; deterministic, driven by capture time.
//!
//! [`Correlator`] joins the two trackers: SIP messages drive [`calls::CallTracker`] and teach
//! [`media::MediaTracker`] the media endpoints their SDP announces; other UDP datagrams are
//! measured as RTP/RTCP. A call ends when [`calls`] says so (the BYE, the final failure, ...);
//! its record is then held for `record_grace` (default 250 ms of capture time) so that RTP and
//! RTCP still in flight — the far side keeps sending until it has processed the BYE — are
//! measured into its streams as TShark counts them, and then made: the media of that call
//! is taken and put into it, and its media endpoints are remembered for the linger time so
//! that anything later is counted rather than reported as orphans. A record held in its
//! grace is released at once when the same Call-ID starts a new attempt, and when the
//! correlator finishes. RTP that matches no call comes out as stream
//! records of its own (bounded per minute, see [`media`]).
//! [`hep::feed`] adapts HEP frames: the SIP inside them is handled like tapped SIP, and RTCP
//! relayed as JSON is attached to the call its correlation id (the Call-ID) names.
//! [`queue`] is the same idea for ACD queue events (Asterisk `queue_log`, FreeSWITCH
//! `mod_callcenter`): one queue contact record per caller and queue, and agent states.

pub mod calls;
pub mod hep;
pub mod media;
pub mod queue;

use crate::decode::hep::RtcpJson;
use crate::decode::sip::SipMessage;
use crate::dissect::{DatagramMeta, MessageMeta};
use crate::record::{CallRecord, ClosedBy, Record};
use crate::time::Timestamp;

use std::collections::VecDeque;
use std::time::Duration;

use calls::{CallLimits, CallTracker};
use media::{MediaLimits, MediaTracker};

/// Ended calls held in their grace at most; beyond it the oldest record is made at once.
const MAX_CALLS_IN_GRACE: usize = 10_000;

/// Calls and their media.
#[derive(Debug)]
pub struct Correlator {
    calls: CallTracker,
    media: MediaTracker,
    /// Ended calls waiting out their grace, oldest first: (time the record is made, record).
    ending: VecDeque<(Timestamp, CallRecord)>,
    grace: Duration,
}

impl Correlator {
    pub fn new(calls: CallLimits, media: MediaLimits) -> Self {
        let media = MediaLimits {
            ended_linger: calls.linger,
            ..media
        };
        Correlator {
            grace: calls.record_grace,
            calls: CallTracker::new(calls),
            media: MediaTracker::new(media),
            ending: VecDeque::new(),
        }
    }

    pub fn calls(&self) -> &CallTracker {
        &self.calls
    }

    pub fn media(&self) -> &MediaTracker {
        &self.media
    }

    /// Handles a SIP message.
    pub fn sip(&mut self, meta: &MessageMeta, msg: &SipMessage<'_>, out: &mut impl FnMut(Record)) {
        let sdp = calls::summarize_sdp(msg);
        let now = meta.time;
        let mut ended = Vec::new();
        self.calls
            .message(meta, msg, sdp.as_ref(), &mut |call| ended.push(call));
        self.hold(ended, now, out);
        if let (Some(sdp), Some(side)) = (sdp, self.calls.side_of(msg)) {
            let key = calls::call_key(msg.call_id);
            // A new attempt in the same Call-ID: the ended one's media is complete now.
            self.release_call(key, out);
            self.media.learn(key, side, &calls::capped_sdp(&sdp));
        }
        self.release(now, out);
    }

    /// Ended calls wait out their grace (see the module doc).
    fn hold(&mut self, ended: Vec<CallRecord>, now: Timestamp, out: &mut impl FnMut(Record)) {
        let at = now.plus(self.grace);
        for call in ended {
            if self.ending.len() >= MAX_CALLS_IN_GRACE {
                // A flood of short calls: the oldest record is made now rather than held
                // without bound; nothing is lost, its trailing media is not waited for.
                if let Some((at, call)) = self.ending.pop_front() {
                    self.calls.note_grace_cut_short();
                    emit(&mut self.media, call, at, out);
                }
            }
            self.media.closing(&call.call_id);
            self.ending.push_back((at, call));
        }
    }

    /// Makes the records of ended calls whose grace has passed.
    fn release(&mut self, now: Timestamp, out: &mut impl FnMut(Record)) {
        while self.ending.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((at, call)) = self.ending.pop_front() {
                emit(&mut self.media, call, at, out);
            }
        }
    }

    /// Makes the record of the ended call with this key now, if one waits.
    fn release_call(&mut self, key: &str, out: &mut impl FnMut(Record)) {
        if self.ending.is_empty() {
            return;
        }
        if let Some(i) = self
            .ending
            .iter()
            .position(|(_, c)| calls::call_key(&c.call_id) == key)
        {
            if let Some((at, call)) = self.ending.remove(i) {
                emit(&mut self.media, call, at, out);
            }
        }
    }

    /// Ended calls waiting out their grace.
    pub fn calls_in_grace(&self) -> usize {
        self.ending.len()
    }

    /// Attaches an RTCP report relayed by a HEP agent to the call with this Call-ID; false when
    /// no such call is tracked (counted in the call counters).
    pub fn hep_rtcp(&mut self, call_id: &str, time: Timestamp, report: &RtcpJson) -> bool {
        self.calls.hep_rtcp(call_id, time, report)
    }

    /// Handles a UDP datagram that is not SIP.
    pub fn datagram(&mut self, meta: &DatagramMeta, payload: &[u8], out: &mut impl FnMut(Record)) {
        self.media
            .datagram(meta, payload, &mut |s| out(Record::Stream(Box::new(s))));
        self.orphan_summaries(out);
    }

    fn orphan_summaries(&mut self, out: &mut impl FnMut(Record)) {
        for summary in self.media.take_orphan_summaries() {
            out(Record::OrphanStreams(Box::new(summary)));
        }
    }

    /// Moves time forward (per frame in replay, per tick live).
    pub fn advance(&mut self, now: Timestamp, out: &mut impl FnMut(Record)) {
        let mut ended = Vec::new();
        self.calls.advance(now, &mut |call| ended.push(call));
        self.hold(ended, now, out);
        self.release(now, out);
        self.media
            .advance(now, &mut |s| out(Record::Stream(Box::new(s))));
        self.orphan_summaries(out);
    }

    /// Reports everything still open.
    pub fn finish(&mut self, closed_by: ClosedBy, out: &mut impl FnMut(Record)) {
        while let Some((at, call)) = self.ending.pop_front() {
            emit(&mut self.media, call, at, out);
        }
        let Correlator { calls, media, .. } = self;
        calls.finish(closed_by, &mut |mut call| {
            call.media_quality = media.take_call(&call.call_id);
            out(Record::Call(Box::new(call)));
        });
        media.finish(&mut |s| out(Record::Stream(Box::new(s))));
        self.orphan_summaries(out);
    }
}

/// A call ended at `now`: its media goes into its record, its endpoints are remembered.
fn emit(
    media: &mut MediaTracker,
    mut call: CallRecord,
    now: Timestamp,
    out: &mut impl FnMut(Record),
) {
    call.media_quality = media.end_call(&call.call_id, now);
    out(Record::Call(Box::new(call)));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xD5; 160]);
        p
    }

    #[test]
    fn an_orphan_rtp_flood_is_summed_up_beyond_the_per_minute_budget() {
        let mut correlator = Correlator::new(CallLimits::default(), MediaLimits::default());
        let mut records = Vec::new();
        let start = 1_700_000_000_000_000_000i64;
        let streams = 2000u32;
        for i in 0..streams {
            for seq in 0..3u16 {
                let meta = DatagramMeta {
                    frame: 0,
                    time: Timestamp::from_nanos(
                        start + i64::from(i) * 10_000_000 + i64::from(seq) * 1_000_000,
                    ),
                    src: format!("10.66.{}.{}:4000", i / 250, i % 250)
                        .parse()
                        .unwrap(),
                    dst: "10.0.0.1:5000".parse().unwrap(),
                };
                correlator.datagram(&meta, &rtp(seq, i), &mut |r| records.push(r));
            }
        }
        // The streams go idle; time moves on past the minute.
        correlator.advance(Timestamp::from_nanos(start + 200_000_000_000), &mut |r| {
            records.push(r)
        });
        correlator.finish(ClosedBy::CaptureEnd, &mut |r| records.push(r));
        let single = records
            .iter()
            .filter(|r| matches!(r, Record::Stream(_)))
            .count();
        let summed: u64 = records
            .iter()
            .filter_map(|r| match r {
                Record::OrphanStreams(s) => Some(s.streams),
                _ => None,
            })
            .sum();
        let budget = MediaLimits::default().max_orphan_records_per_minute;
        assert_eq!(single, budget, "one record each while the budget lasts");
        assert_eq!(single as u64 + summed, u64::from(streams), "none lost");
        let counters = correlator.media().counters();
        assert_eq!(counters.orphan_streams_summarised, summed);
        assert_eq!(counters.orphan_streams, u64::from(streams));
    }

    fn sip_at(
        c: &mut Correlator,
        ms: i64,
        text: &str,
        src: &str,
        dst: &str,
        out: &mut Vec<Record>,
    ) {
        let msg = crate::decode::sip::parse(text.as_bytes()).unwrap();
        let meta = MessageMeta {
            frame: 0,
            time: Timestamp::from_nanos(1_700_000_000_000_000_000 + ms * 1_000_000),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            transport: crate::dissect::Transport::Udp,
        };
        c.sip(&meta, &msg, &mut |r| out.push(r));
    }

    #[test]
    fn a_call_joined_at_its_reinvite_gets_its_media_and_rtp_after_the_bye_is_counted() {
        let mut c = Correlator::new(CallLimits::default(), MediaLimits::default());
        let mut out = Vec::new();
        let sdp = "v=0\r\no=- 1 2 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n";
        let reinvite = format!(
            "INVITE sip:a@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKr\r\nFrom: <sip:b@x>;tag=B\r\nTo: <sip:a@x>;tag=A\r\nCall-ID: mid@x\r\nCSeq: 9 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sip_at(
            &mut c,
            0,
            &reinvite,
            "10.0.0.2:5060",
            "10.0.0.1:5060",
            &mut out,
        );
        let rtp_at = |c: &mut Correlator, ms: i64, seq: u16, out: &mut Vec<Record>| {
            let meta = DatagramMeta {
                frame: 0,
                time: Timestamp::from_nanos(1_700_000_000_000_000_000 + ms * 1_000_000),
                src: "10.0.0.1:6000".parse().unwrap(),
                dst: "10.0.0.2:4000".parse().unwrap(),
            };
            c.datagram(&meta, &rtp(seq, 77), &mut |r| out.push(r));
        };
        for i in 0..50u16 {
            rtp_at(&mut c, 100 + i64::from(i) * 20, i, &mut out);
        }
        let bye = "BYE sip:b@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKbye\r\nFrom: <sip:a@x>;tag=A\r\nTo: <sip:b@x>;tag=B\r\nCall-ID: mid@x\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n";
        sip_at(
            &mut c,
            1200,
            bye,
            "10.0.0.1:5060",
            "10.0.0.2:5060",
            &mut out,
        );
        // In flight within the grace after the BYE: measured into the call's stream.
        for i in 50..55u16 {
            rtp_at(&mut c, 150 + i64::from(i) * 20, i, &mut out);
        }
        assert!(
            !out.iter().any(|r| matches!(r, Record::Call(_))),
            "held for its grace"
        );
        let after_grace = Timestamp::from_nanos(1_700_000_000_000_000_000 + 1_500 * 1_000_000);
        c.advance(after_grace, &mut |r| out.push(r));
        assert_eq!(c.calls_in_grace(), 0);
        // Later still: counted, no orphan stream.
        for i in 55..60u16 {
            rtp_at(&mut c, 1500 + i64::from(i) * 20, i, &mut out);
        }
        c.finish(ClosedBy::CaptureEnd, &mut |r| out.push(r));
        let calls: Vec<&CallRecord> = out
            .iter()
            .filter_map(|r| match r {
                Record::Call(c) => Some(&**c),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 1);
        let call = calls[0];
        assert!(call.started_before_capture);
        assert_eq!(call.outcome, crate::record::Outcome::Answered);
        assert_eq!(call.media_quality.streams(), 1);
        assert_eq!(
            call.media_quality.callee_to_caller.len(),
            1,
            "toward the re-INVITE's sender"
        );
        assert_eq!(call.media_quality.callee_to_caller[0].metrics.packets, 55);
        assert!(!out.iter().any(|r| matches!(r, Record::Stream(_))));
        assert_eq!(c.media().counters().rtp_after_call_end, 5);
    }
}
