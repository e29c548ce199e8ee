//! Correlation: typed events in, records out; deterministic, driven by capture time.
//!
//! [`Correlator`] joins the two trackers: SIP messages drive [`calls::CallTracker`] and teach
//! [`media::MediaTracker`] the media endpoints their SDP announces; other UDP datagrams are
//! measured as RTP/RTCP. A call ends when [`calls`] says so (the BYE, the final failure, ...);
//! its record is then held for `record_grace` (default 1 s of capture time, configurable
//! from 0 to [`calls::MAX_RECORD_GRACE`]) so that RTP and RTCP still in flight — the far side keeps sending until it has processed the BYE — are
//! measured into its streams as TShark counts them (a stream that starts within the grace
//! is the call's if it was captured before the end, whenever it is handled: with several
//! capture threads it can come after the BYE; one captured after the end is not), and then
//! made: the media of that call
//! is taken and put into it, and its media endpoints are remembered for the linger time so
//! that anything later is counted rather than reported as orphans. A record held in its
//! grace is released at once when the same Call-ID starts a new attempt, and when the
//! correlator finishes. A final response to the BYE that ended a call, seen while its
//! record waits out the grace, gives the record's `bye_answered_time` (RFC 6076 SDD). RTP that matches no call comes out as stream
//! records of its own (bounded per minute, see [`media`]).
//! [`hep::feed`] adapts HEP frames: the SIP inside them is handled like tapped SIP, and RTCP
//! relayed as JSON is attached to the call its correlation id (the Call-ID) names.
//! [`queue`] is the same idea for ACD queue events (Asterisk `queue_log`, FreeSWITCH
//! `mod_callcenter`): one queue contact record per caller and queue, and agent states.
//! [`registrations`] times REGISTER attempts (RFC 6076 RRD and IRA) into one
//! `teledge.registrations/1` record per minute of capture time, which the statistics sum
//! into the interval records (when asked: [`Correlator::with_registration_records`]).

pub mod calls;
mod footprint;
pub mod hasher;
pub mod hep;
pub mod media;
pub mod queue;
pub mod registrations;
pub mod sharded;

use crate::decode::hep::RtcpJson;
use crate::decode::sip::SipMessage;
use crate::dissect::{DatagramMeta, MessageMeta};
use crate::media::tap::ListenTap;
use crate::record::{CallRecord, ClosedBy, Record};
use crate::time::Timestamp;

use std::collections::VecDeque;
use std::time::Duration;

use calls::{CallLimits, CallTracker};
use media::{MediaLimits, MediaTracker};

/// An open call as live listen sees it ([`Correlator::listenable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenableCall {
    /// The key the tap knows the call by.
    pub call_key: String,
    /// Codecs its media endpoints announced, newest SDP first.
    pub codecs: Vec<crate::decode::sdp::Codec>,
    /// The called number (clear: classification runs before pseudonymisation).
    pub callee_user: Option<String>,
    /// Signalling addresses of caller and callee (`ip:port`).
    pub caller_address: String,
    pub callee_address: String,
}

/// A call open now, as the live status view shows it (clear identities: the daemon
/// pseudonymises them before anything leaves the pipeline).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveCall {
    pub call_id: String,
    pub caller: crate::record::Party,
    pub callee: crate::record::Party,
    pub caller_address: std::net::SocketAddr,
    pub callee_address: std::net::SocketAddr,
    pub state: crate::record::State,
    /// The INVITE (or, joined mid-call, the first message seen).
    pub started: Timestamp,
    pub answered: Option<Timestamp>,
    pub started_before_capture: bool,
    pub caller_to_callee: Vec<LiveStream>,
    pub callee_to_caller: Vec<LiveStream>,
}

/// An open RTP stream's figures so far.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveStream {
    pub codec: Option<String>,
    pub packets: u64,
    pub lost_percent: f64,
    pub jitter_ms: Option<f64>,
    /// The E-model MOS so far (`None`: not scored, e.g. wideband or no data yet).
    pub mos: Option<f64>,
}

/// Calls and their media.
#[derive(Debug)]
pub struct Correlator {
    calls: CallTracker,
    media: MediaTracker,
    /// Ended calls waiting out their grace, oldest first: (time the record is made, record).
    ending: VecDeque<(Timestamp, CallRecord, usize)>,
    /// Bytes of the records in `ending` (each weighed when it was put there,
    /// [`crate::record::held_bytes`]).
    ending_bytes: usize,
    /// The bounds of `ending` and `ending_bytes` ([`CallLimits::max_grace_records`],
    /// [`CallLimits::max_grace_bytes`]: 10,000 flood records of ~3 KB would be ~30 MiB, more
    /// with media); beyond either the oldest record is made at once (counted in
    /// `records_grace_cut_short`, `records_grace_cut_short_bytes`).
    grace_records: usize,
    grace_bytes: usize,
    grace: Duration,
    /// Times REGISTER attempts when the statistics want them
    /// ([`Correlator::with_registration_records`]).
    registrations: Option<registrations::RegistrationTracker>,
    linger: Duration,
    /// The shard this correlator is of a sharded one ([`Correlator::in_shard`]), else 0.
    shard: u32,
}

impl Correlator {
    pub fn new(calls: CallLimits, media: MediaLimits) -> Self {
        let media = MediaLimits {
            ended_linger: calls.linger,
            ..media
        };
        Correlator {
            grace: calls.record_grace,
            grace_records: calls.max_grace_records.max(1),
            grace_bytes: calls.max_grace_bytes,
            registrations: None,
            linger: calls.linger,
            shard: 0,
            calls: CallTracker::new(calls),
            media: MediaTracker::new(media),
            ending: VecDeque::new(),
            ending_bytes: 0,
        }
    }

    /// Also times REGISTER attempts and makes a `teledge.registrations/1` record per minute
    /// (for the statistics: the daemon with `[stats]`, `teledge report`, `replay
    /// --registrations`); off by default, so a replay's records are the calls' and streams'.
    /// The timeout of an attempt is the `linger` (SIP Timer F, 32 s).
    pub fn with_registration_records(mut self, on: bool) -> Self {
        self.set_registration_records(on);
        self
    }

    /// [`Correlator::with_registration_records`] in place.
    pub fn set_registration_records(&mut self, on: bool) {
        self.registrations =
            on.then(|| registrations::RegistrationTracker::new(self.linger).in_shard(self.shard));
    }

    /// Shard `shard` of a sharded correlator ([`sharded`]): every shard makes its own
    /// per-minute records (registrations, orphan summaries), which add up; the shard goes
    /// into their ids so that two shards with the same figures do not make one id (shard
    /// 0's are one correlator's).
    pub fn in_shard(mut self, shard: u32) -> Self {
        self.shard = shard;
        self.media.set_shard(shard);
        if let Some(r) = self.registrations.take() {
            self.registrations = Some(r.in_shard(shard));
        }
        self
    }

    pub fn calls(&self) -> &CallTracker {
        &self.calls
    }

    pub fn media(&self) -> &MediaTracker {
        &self.media
    }

    /// Live listen's hook ([`crate::media::tap`]): the media tracker hands RTP of listened
    /// calls to it, and the calls' end closes their listeners. Each correlator (or shard)
    /// holds a clone of the one tap.
    pub fn set_listen_tap(&mut self, tap: ListenTap) {
        self.media.set_tap(tap);
    }

    /// A call live listen may listen to: open, with the codecs its SDP announced; `None`
    /// when no open call has this Call-ID.
    pub fn listenable(&self, call_id: &str) -> Option<ListenableCall> {
        let (callee_user, caller_address, callee_address) = self.calls.open_call_facts(call_id)?;
        let key = calls::call_key(call_id);
        Some(ListenableCall {
            call_key: key.to_owned(),
            codecs: self.media.call_codecs(key),
            callee_user,
            caller_address,
            callee_address,
        })
    }

    /// Handles a SIP message.
    pub fn sip(&mut self, meta: &MessageMeta, msg: &SipMessage<'_>, out: &mut impl FnMut(Record)) {
        self.sip_learning(meta, msg, out, &mut |_, _| {});
    }

    /// [`Correlator::sip`], telling `learned` every media endpoint its SDP taught the media
    /// tracker, and whether it is an RTCP-only one (a sharded correlator routes RTP to and
    /// from them to this correlator; RTCP only to and from RTCP-only ones).
    pub fn sip_learning(
        &mut self,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        out: &mut impl FnMut(Record),
        learned: &mut impl FnMut(std::net::SocketAddr, bool),
    ) {
        let sdp = calls::summarize_sdp(msg);
        let now = meta.time;
        self.bye_answered(msg, now);
        if let Some(registrations) = self.registrations.as_mut() {
            registrations.message(now, msg);
        }
        let mut ended = Vec::new();
        self.calls
            .message(meta, msg, sdp.as_ref(), &mut |call| ended.push(call));
        self.hold(ended, now, out);
        if let (Some(sdp), Some(side)) = (sdp, self.calls.side_of(msg)) {
            let key = calls::call_key(msg.call_id);
            // A new attempt in the same Call-ID: the ended one's media is complete now.
            self.release_call(key, out);
            let sdp = calls::capped_sdp(&sdp);
            self.media.learn(key, side, &sdp);
            for (addr, rtcp_only, _) in media::announced(&sdp) {
                learned(addr, rtcp_only);
            }
        }
        self.release(now, out);
    }

    /// A final response to a BYE while the call it ended waits out its grace: the call's
    /// `bye_answered_time` (RFC 6076 SDD). Later ones (retransmissions, a response after
    /// the grace) change nothing; the tracker counts them as late messages.
    fn bye_answered(&mut self, msg: &SipMessage<'_>, now: Timestamp) {
        if self.ending.is_empty()
            || msg.cseq.method != crate::decode::sip::Method::Bye
            || msg.status().is_none_or(|s| s < 200)
        {
            return;
        }
        let key = calls::call_key(msg.call_id);
        if let Some((_, call, _)) = self.ending.iter_mut().find(|(_, c, _)| {
            c.closed_by == ClosedBy::Bye
                && c.bye_answered_time.is_none()
                && calls::call_key(&c.call_id) == key
        }) {
            if call.end_time.is_some_and(|e| e <= now) {
                call.bye_answered_time = Some(now);
            }
        }
    }

    /// Ended calls wait out their grace (see the module doc).
    fn hold(&mut self, ended: Vec<CallRecord>, now: Timestamp, out: &mut impl FnMut(Record)) {
        let at = now.plus(self.grace);
        for call in ended {
            let weight = crate::record::held_bytes(&call);
            if self.ending.len() >= self.grace_records {
                // A flood of short calls: the oldest record is made now rather than held
                // without bound; nothing is lost, its trailing media is not waited for.
                if let Some((at, call)) = self.pop_ending() {
                    self.calls.note_grace_cut_short();
                    emit(&mut self.media, call, at, out);
                }
            }
            // The same by bytes (large records: media, long headers).
            while !self.ending.is_empty() && self.ending_bytes + weight > self.grace_bytes {
                if let Some((at, call)) = self.pop_ending() {
                    self.calls.note_grace_cut_short_bytes();
                    emit(&mut self.media, call, at, out);
                }
            }
            // The end as captured (the BYE, the final answer), else the moment it was ended
            // (a timeout, the end of input).
            self.media
                .closing(&call.call_id, call.end_time.unwrap_or(now));
            self.media.tap().call_ended(calls::call_key(&call.call_id));
            self.ending_bytes += weight;
            self.ending.push_back((at, call, weight));
        }
    }

    /// The oldest record in its grace, taken out (its bytes too).
    fn pop_ending(&mut self) -> Option<(Timestamp, CallRecord)> {
        let (at, call, weight) = self.ending.pop_front()?;
        self.ending_bytes -= weight;
        Some((at, call))
    }

    /// Makes the records of ended calls whose grace has passed.
    fn release(&mut self, now: Timestamp, out: &mut impl FnMut(Record)) {
        while self.ending.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((at, call)) = self.pop_ending() {
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
            .position(|(_, c, _)| calls::call_key(&c.call_id) == key)
        {
            if let Some((at, call, weight)) = self.ending.remove(i) {
                self.ending_bytes -= weight;
                emit(&mut self.media, call, at, out);
            }
        }
    }

    /// The calls open now with their media's live figures, for the status view: a plain
    /// function of this correlator (a sharded daemon calls it per shard and concatenates).
    /// At most `limit` calls, the most recent first; `.1` is how many more are open.
    pub fn active_calls(&self, limit: usize) -> (Vec<ActiveCall>, usize) {
        let mut calls: Vec<ActiveCall> = self.calls.active().collect();
        calls.sort_by_key(|c| std::cmp::Reverse(c.started));
        let more = calls.len().saturating_sub(limit);
        calls.truncate(limit);
        for call in &mut calls {
            let (forward, back) = self.media.live(calls::call_key(&call.call_id));
            call.caller_to_callee = forward;
            call.callee_to_caller = back;
        }
        (calls, more)
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

    /// The call an RTCP packet belongs to, as [`Correlator::datagram`] attributes it (see
    /// [`MediaTracker::rtcp_call`]); `None` for a packet that is not RTCP or matches no call.
    pub fn rtcp_call(&self, meta: &DatagramMeta, payload: &[u8]) -> Option<std::sync::Arc<str>> {
        self.media.rtcp_call(meta, payload)
    }

    /// [`Correlator::rtcp_call`] of a packet that is RTCP; `None` for anything else.
    pub fn rtcp_attributed(
        &self,
        meta: &DatagramMeta,
        payload: &[u8],
    ) -> Option<std::sync::Arc<str>> {
        if crate::media::packet::classify(payload) != crate::media::packet::Kind::Rtcp {
            return None;
        }
        self.rtcp_call(meta, payload)
    }

    fn orphan_summaries(&mut self, out: &mut impl FnMut(Record)) {
        if !self.media.has_orphan_summaries() {
            return;
        }
        for summary in self.media.take_orphan_summaries() {
            out(Record::OrphanStreams(Box::new(summary)));
        }
    }

    /// Moves time forward (per frame in replay, per tick live).
    pub fn advance(&mut self, now: Timestamp, out: &mut impl FnMut(Record)) {
        let mut ended = Vec::new();
        self.calls.advance(now, &mut |call| ended.push(call));
        if !ended.is_empty() {
            self.hold(ended, now, out);
        }
        self.release(now, out);
        if let Some(registrations) = self.registrations.as_mut() {
            registrations.advance(now, &mut |r| out(Record::Registrations(Box::new(r))));
        }
        self.media
            .advance(now, &mut |s| out(Record::Stream(Box::new(s))));
        self.orphan_summaries(out);
    }

    /// Reports everything still open.
    pub fn finish(&mut self, closed_by: ClosedBy, out: &mut impl FnMut(Record)) {
        while let Some((at, call)) = self.pop_ending() {
            emit(&mut self.media, call, at, out);
        }
        let Correlator { calls, media, .. } = self;
        calls.finish(closed_by, &mut |mut call| {
            call.media_quality = media.take_call(&call.call_id);
            out(Record::Call(Box::new(call)));
        });
        media.finish(&mut |s| out(Record::Stream(Box::new(s))));
        if let Some(registrations) = self.registrations.as_mut() {
            registrations.finish(&mut |r| out(Record::Registrations(Box::new(r))));
        }
        media.tap().all_ended();
        self.orphan_summaries(out);
    }
}

/// Told, as it is correlated, about an RTCP packet the media tracker attributes to a call,
/// with that call's Call-ID (the pipeline's mirror: [`crate::pipeline::Mirror`]).
pub type RtcpSeen<'a> = Option<&'a mut dyn FnMut(&DatagramMeta, &[u8], &str)>;

/// `rtcp` again, for one more call.
pub fn rtcp_again<'s>(rtcp: &'s mut RtcpSeen<'_>) -> RtcpSeen<'s> {
    match rtcp {
        Some(f) => Some(&mut **f),
        None => None,
    }
}

/// Where decoded events go: one [`Correlator`] (replay), or correlators sharded by call
/// ([`sharded::ShardedCorrelator`], the daemon). The pipeline's decode adapter and
/// [`hep::feed`] hand their events to either.
pub trait Correlate {
    /// A SIP message ([`Correlator::sip`]).
    fn sip(&mut self, meta: &MessageMeta, msg: &SipMessage<'_>, out: &mut impl FnMut(Record));
    /// A UDP datagram that is not SIP ([`Correlator::datagram`]).
    fn datagram(&mut self, meta: &DatagramMeta, payload: &[u8], out: &mut impl FnMut(Record)) {
        self.datagram_with_rtcp(meta, payload, out, None);
    }
    /// [`Correlate::datagram`], telling `rtcp` about every RTCP packet attributed to a call
    /// as it is correlated: this one (after it was measured, as [`Correlator::rtcp_call`]
    /// attributes it), or packets held back before it that it releases.
    fn datagram_with_rtcp(
        &mut self,
        meta: &DatagramMeta,
        payload: &[u8],
        out: &mut impl FnMut(Record),
        rtcp: RtcpSeen<'_>,
    );
    /// An RTCP report relayed by a HEP agent ([`Correlator::hep_rtcp`]).
    fn hep_rtcp(&mut self, call_id: &str, time: Timestamp, report: &RtcpJson) -> bool;
}

impl Correlate for Correlator {
    fn sip(&mut self, meta: &MessageMeta, msg: &SipMessage<'_>, out: &mut impl FnMut(Record)) {
        Correlator::sip(self, meta, msg, out);
    }

    fn datagram_with_rtcp(
        &mut self,
        meta: &DatagramMeta,
        payload: &[u8],
        out: &mut impl FnMut(Record),
        rtcp: RtcpSeen<'_>,
    ) {
        Correlator::datagram(self, meta, payload, out);
        if let Some(rtcp) = rtcp {
            if let Some(call_id) = self.rtcp_attributed(meta, payload) {
                rtcp(meta, payload, &call_id);
            }
        }
    }

    fn hep_rtcp(&mut self, call_id: &str, time: Timestamp, report: &RtcpJson) -> bool {
        Correlator::hep_rtcp(self, call_id, time, report)
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

    /// RTP under ever new SSRCs to ever new ports (three packets each, past probation)
    /// filled the stream table with orphans; a stream a call's SDP announced was then turned
    /// away (`streams_dropped_at_capacity`) until the orphans went idle, 60 s later — a
    /// sprayer sending 1,700 new streams a second kept every call unmeasured for as long as
    /// it sprayed. The call table makes room for real calls; the stream table now makes
    /// room for a call's stream by closing an orphan (reported, counted).
    #[test]
    fn an_orphan_spray_filling_the_stream_table_does_not_keep_a_call_unmeasured() {
        let max_streams = 100;
        let mut c = Correlator::new(
            CallLimits::default(),
            MediaLimits {
                max_streams,
                ..MediaLimits::default()
            },
        );
        let mut out = Vec::new();
        let base = 1_700_000_000_000_000_000i64;
        for i in 0..(2 * max_streams as u32) {
            for seq in 0..3u16 {
                let meta = DatagramMeta {
                    frame: 0,
                    time: Timestamp::from_nanos(base + i64::from(i) * 1_000_000),
                    src: format!("10.66.{}.{}:4000", i / 250, i % 250)
                        .parse()
                        .unwrap(),
                    dst: format!("10.0.0.1:{}", 20_000 + 2 * i).parse().unwrap(),
                };
                c.datagram(&meta, &rtp(seq, i), &mut |r| out.push(r));
            }
        }
        assert_eq!(c.media().active_streams(), max_streams, "the table is full");
        let sdp = "v=0\r\no=- 1 2 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n";
        let reinvite = format!(
            "INVITE sip:a@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKr\r\nFrom: <sip:b@x>;tag=B\r\nTo: <sip:a@x>;tag=A\r\nCall-ID: mid@x\r\nCSeq: 9 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sip_at(
            &mut c,
            500,
            &reinvite,
            "10.0.0.2:5060",
            "10.0.0.1:5060",
            &mut out,
        );
        for i in 0..50u16 {
            let meta = DatagramMeta {
                frame: 0,
                time: Timestamp::from_nanos(base + (600 + i64::from(i) * 20) * 1_000_000),
                src: "10.0.0.1:6000".parse().unwrap(),
                dst: "10.0.0.2:4000".parse().unwrap(),
            };
            c.datagram(&meta, &rtp(i, 77), &mut |r| out.push(r));
        }
        assert!(c.media().active_streams() <= max_streams, "the bound holds");
        let counters = c.media().counters();
        assert_eq!(counters.orphans_closed_for_calls, 1, "{counters:?}");
        c.finish(ClosedBy::CaptureEnd, &mut |r| out.push(r));
        let call = out
            .iter()
            .find_map(|r| match r {
                Record::Call(c) => Some(&**c),
                _ => None,
            })
            .unwrap();
        assert_eq!(call.media_quality.streams(), 1, "{:?}", call.media_quality);
        assert_eq!(call.media_quality.callee_to_caller[0].metrics.packets, 50);
        // Every orphan is reported, the one closed early too.
        let orphans: u64 = out
            .iter()
            .map(|r| match r {
                Record::Stream(_) => 1,
                Record::OrphanStreams(s) => s.streams,
                _ => 0,
            })
            .sum();
        assert_eq!(orphans, c.media().counters().orphan_streams);
    }

    /// Every SDP of a dialog added its media endpoints to the endpoint table and none was
    /// forgotten while the dialog lasted: one dialog re-INVITEd with ever new ports (by a
    /// party to a call, or anyone on the tapped link) filled the table (`max_endpoints`),
    /// and from then on every new call's SDP was turned away (`endpoints_dropped_at_capacity`)
    /// and its RTP measured as orphans, for as long as that dialog lasted (hours). A call
    /// now keeps its newest endpoints only (the oldest are forgotten past a per-call cap,
    /// counted), so one dialog cannot hold the table.
    #[test]
    fn one_dialog_reinvited_with_new_ports_cannot_hold_the_endpoint_table() {
        let max_endpoints = 200;
        let mut c = Correlator::new(
            CallLimits::default(),
            MediaLimits {
                max_endpoints,
                ..MediaLimits::default()
            },
        );
        let mut out = Vec::new();
        let reinvite = |cseq: u32, port: u32| {
            let sdp = format!("v=0\r\no=- 1 {cseq} IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\n");
            format!(
                "INVITE sip:a@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKr{cseq}\r\nFrom: <sip:b@x>;tag=B\r\nTo: <sip:a@x>;tag=A\r\nCall-ID: hog@x\r\nCSeq: {cseq} INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            )
        };
        for i in 0..(max_endpoints as u32) {
            let text = reinvite(10 + i, 10_000 + 2 * i);
            sip_at(
                &mut c,
                i64::from(i),
                &text,
                "10.0.0.2:5060",
                "10.0.0.1:5060",
                &mut out,
            );
        }
        // A new call, its SDP learned now, then its RTP.
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n";
        let invite = format!(
            "INVITE sip:a@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKnew\r\nFrom: <sip:c@x>;tag=C\r\nTo: <sip:a@x>\r\nCall-ID: new@x\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sip_at(
            &mut c,
            1000,
            &invite,
            "10.0.0.9:5060",
            "10.0.0.1:5060",
            &mut out,
        );
        for i in 0..50u16 {
            let meta = DatagramMeta {
                frame: 0,
                time: Timestamp::from_nanos(
                    1_700_000_000_000_000_000 + (1100 + i64::from(i) * 20) * 1_000_000,
                ),
                src: "10.0.0.1:6000".parse().unwrap(),
                dst: "10.0.0.9:4000".parse().unwrap(),
            };
            c.datagram(&meta, &rtp(i, 99), &mut |r| out.push(r));
        }
        let counters = c.media().counters();
        assert_eq!(counters.endpoints_dropped_at_capacity, 0, "{counters:?}");
        assert!(counters.call_endpoints_forgotten > 0, "{counters:?}");
        assert_eq!(counters.orphan_streams, 0, "{counters:?}");
        c.finish(ClosedBy::CaptureEnd, &mut |r| out.push(r));
        let new = out
            .iter()
            .find_map(|r| match r {
                Record::Call(c) if c.call_id == "new@x" => Some(&**c),
                _ => None,
            })
            .unwrap();
        assert_eq!(new.media_quality.streams(), 1, "{:?}", new.media_quality);
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
        let grace_ms = CallLimits::default().record_grace.as_millis() as i64;
        let after_grace_ms = 1200 + grace_ms;
        let after_grace =
            Timestamp::from_nanos(1_700_000_000_000_000_000 + after_grace_ms * 1_000_000);
        c.advance(after_grace, &mut |r| out.push(r));
        assert_eq!(c.calls_in_grace(), 0);
        // Later still: counted, no orphan stream.
        for i in 55..60u16 {
            rtp_at(&mut c, after_grace_ms + i64::from(i) * 20, i, &mut out);
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

    /// A re-INVITE of dialog `call_id` from 10.0.0.2 announcing its media at 10.0.0.2:4000.
    fn reinvite_announcing_4000(call_id: &str) -> String {
        let sdp = "v=0\r\no=- 1 2 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n";
        format!(
            "INVITE sip:a@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKr\r\nFrom: <sip:b@x>;tag=B\r\nTo: <sip:a@x>;tag=A\r\nCall-ID: {call_id}\r\nCSeq: 9 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    }

    /// The BYE of dialog `call_id`, from 10.0.0.1.
    fn bye_from_a(call_id: &str) -> String {
        format!("BYE sip:b@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKbye\r\nFrom: <sip:a@x>;tag=A\r\nTo: <sip:b@x>;tag=B\r\nCall-ID: {call_id}\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n")
    }

    /// `count` RTP packets from `src` to 10.0.0.2:4000, 20 ms apart from `from_ms`.
    fn rtp_to_4000(c: &mut Correlator, from_ms: i64, src: &str, count: u16, out: &mut Vec<Record>) {
        for seq in 0..count {
            let meta = DatagramMeta {
                frame: 0,
                time: Timestamp::from_nanos(
                    1_700_000_000_000_000_000 + (from_ms + i64::from(seq) * 20) * 1_000_000,
                ),
                src: src.parse().unwrap(),
                dst: "10.0.0.2:4000".parse().unwrap(),
            };
            c.datagram(&meta, &rtp(seq, 77), &mut |r| out.push(r));
        }
    }

    fn the_call(out: &[Record]) -> &CallRecord {
        out.iter()
            .find_map(|r| match r {
                Record::Call(c) => Some(&**c),
                _ => None,
            })
            .unwrap()
    }

    /// RTP captured between a re-INVITE and the BYE but handled after the BYE (two capture
    /// threads: the SIP reorder window applies SDP and BYE together while the RTP waits for
    /// its route) is the call's; a stream that starts after the BYE is media after the end.
    #[test]
    fn rtp_captured_before_the_bye_but_handled_after_it_is_the_calls() {
        let mut c = Correlator::new(CallLimits::default(), MediaLimits::default());
        let mut out = Vec::new();
        let (a, b) = ("10.0.0.1:5060", "10.0.0.2:5060");
        sip_at(
            &mut c,
            0,
            &reinvite_announcing_4000("late@x"),
            b,
            a,
            &mut out,
        );
        sip_at(&mut c, 1200, &bye_from_a("late@x"), a, b, &mut out);
        // Captured between the re-INVITE and the BYE, handled after the BYE.
        rtp_to_4000(&mut c, 100, "10.0.0.1:6000", 50, &mut out);
        // A stream that starts after the BYE: not the call's conversation.
        rtp_to_4000(&mut c, 1300, "10.0.0.1:6002", 5, &mut out);
        c.finish(ClosedBy::CaptureEnd, &mut |r| out.push(r));
        let call = the_call(&out);
        assert_eq!(call.media_quality.streams(), 1, "{:?}", call.media_quality);
        assert_eq!(call.media_quality.callee_to_caller[0].metrics.packets, 50);
        assert_eq!(c.media().counters().rtp_after_call_end, 5);
        assert!(!out.iter().any(|r| matches!(r, Record::Stream(_))));
    }

    /// The mirror of the test above: RTP captured after the BYE but handled before it (two
    /// capture threads: the BYE held in the SIP reorder window while the RTP went on) is
    /// media after the end, as a replay in capture order counts it, not a stream of the
    /// call; the stream captured before the BYE stays the call's.
    #[test]
    fn rtp_captured_after_the_bye_but_handled_before_it_is_not_the_calls() {
        let mut c = Correlator::new(CallLimits::default(), MediaLimits::default());
        let mut out = Vec::new();
        let (a, b) = ("10.0.0.1:5060", "10.0.0.2:5060");
        sip_at(
            &mut c,
            0,
            &reinvite_announcing_4000("early@x"),
            b,
            a,
            &mut out,
        );
        rtp_to_4000(&mut c, 100, "10.0.0.1:6000", 50, &mut out);
        // Captured after the BYE (1,200 ms), handled before it.
        rtp_to_4000(&mut c, 1300, "10.0.0.1:6002", 5, &mut out);
        sip_at(&mut c, 1200, &bye_from_a("early@x"), a, b, &mut out);
        c.finish(ClosedBy::CaptureEnd, &mut |r| out.push(r));
        let call = the_call(&out);
        assert_eq!(call.media_quality.streams(), 1, "{:?}", call.media_quality);
        assert_eq!(call.media_quality.callee_to_caller[0].metrics.packets, 50);
        let counters = c.media().counters();
        assert_eq!(counters.rtp_after_call_end, 5);
        assert_eq!(counters.streams, 1);
        assert_eq!(counters.rtp_packets, 50);
        assert!(!out.iter().any(|r| matches!(r, Record::Stream(_))));
    }

    /// Ended calls' records held in their grace are bounded by bytes too: beyond the bound
    /// the oldest is made at once (counted), none is lost or made twice.
    #[test]
    fn records_in_their_grace_are_bounded_by_bytes_and_none_lost() {
        let mut c = Correlator::new(CallLimits::default(), MediaLimits::default());
        c.grace_bytes = 40_000;
        let mut out = Vec::new();
        let (a, b) = ("10.0.0.1:5060", "10.0.0.2:5060");
        for i in 0..200 {
            let id = format!("grace-bytes-{i}");
            let invite = msg(&id, "INVITE sip:b@x SIP/2.0", "INVITE", 1, false, "inv");
            sip_at(&mut c, 0, &invite, a, b, &mut out);
            let ok = msg(&id, "SIP/2.0 200 OK", "INVITE", 1, true, "inv");
            sip_at(&mut c, 0, &ok, b, a, &mut out);
            let bye = msg(&id, "BYE sip:b@x SIP/2.0", "BYE", 2, true, "bye");
            sip_at(&mut c, 0, &bye, a, b, &mut out);
            assert!(c.ending_bytes <= 40_000, "{}", c.ending_bytes);
        }
        let early = c.calls().counters().records_grace_cut_short_bytes;
        assert!(early > 100, "{early}");
        assert_eq!(c.calls().counters().records_grace_cut_short, 0);
        c.advance(
            Timestamp::from_nanos(1_700_000_000_000_000_000 + 5_000_000_000),
            &mut |r| out.push(r),
        );
        let mut ids: Vec<String> = out
            .iter()
            .filter_map(|r| match r {
                Record::Call(call) => Some(call.call_id.clone()),
                _ => None,
            })
            .collect();
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!((before, ids.len()), (200, 200));
        assert_eq!(c.ending_bytes, 0);
    }

    /// A SIP message of call `id`: a request when `start` names a method, else a response.
    fn msg(id: &str, start: &str, method: &str, cseq: u32, to_tag: bool, branch: &str) -> String {
        let to = if to_tag {
            "<sip:b@x>;tag=B"
        } else {
            "<sip:b@x>"
        };
        format!(
            "{start}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{branch}\r\nFrom: <sip:a@x>;tag=A\r\nTo: {to}\r\nCall-ID: {id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// Every way a call ends: its record is made exactly once, one grace (default 1 s) after
    /// the ending message, not before and not after a linger; retransmissions and late
    /// answers arriving 5 s after the record was made open no second call.
    #[test]
    fn every_call_end_makes_one_record_a_grace_later_and_late_retransmissions_none() {
        const CALLER: &str = "10.0.0.1:5060";
        const CALLEE: &str = "10.0.0.2:5060";
        let invite = |id: &str| msg(id, "INVITE sip:b@x SIP/2.0", "INVITE", 1, false, "inv");
        let resp = |id: &str, status: &str, cseq: u32, method: &str, branch: &str| {
            msg(id, &format!("SIP/2.0 {status}"), method, cseq, true, branch)
        };
        let ack = |id: &str| msg(id, "ACK sip:b@x SIP/2.0", "ACK", 1, true, "ack");
        let bye = |id: &str| msg(id, "BYE sip:b@x SIP/2.0", "BYE", 2, true, "bye");
        let cancel = |id: &str| msg(id, "CANCEL sip:b@x SIP/2.0", "CANCEL", 1, false, "inv");
        // (name, messages before the end (ms, text, from caller), the ending message, what
        // may come after it, outcome, closed_by)
        type Step = (i64, String, bool);
        struct Case {
            name: &'static str,
            before: Vec<Step>,
            end: Step,
            after: Vec<Step>,
            outcome: crate::record::Outcome,
            closed_by: ClosedBy,
            /// The record's `end_time`: the ending message's, or the CANCEL's.
            end_ms: i64,
        }
        use crate::record::Outcome;
        let cases = |id: &'static str| -> Vec<Case> {
            vec![
                Case {
                    name: "BYE answered",
                    before: vec![
                        (0, invite(id), true),
                        (50, resp(id, "180 Ringing", 1, "INVITE", "inv"), false),
                        (2000, resp(id, "200 OK", 1, "INVITE", "inv"), false),
                        (2010, ack(id), true),
                    ],
                    end: (9000, bye(id), true),
                    after: vec![
                        (9010, resp(id, "200 OK", 2, "BYE", "bye"), false),
                        (15_000, bye(id), true),
                        (15_010, resp(id, "200 OK", 2, "BYE", "bye"), false),
                    ],
                    outcome: Outcome::Answered,
                    closed_by: ClosedBy::Bye,
                    end_ms: 0,
                },
                Case {
                    name: "BYE never answered",
                    before: vec![
                        (0, invite(id), true),
                        (2000, resp(id, "200 OK", 1, "INVITE", "inv"), false),
                        (2010, ack(id), true),
                    ],
                    end: (9000, bye(id), false),
                    after: vec![
                        (9500, bye(id), false),
                        (10_500, bye(id), false),
                        (15_000, bye(id), false),
                    ],
                    outcome: Outcome::Answered,
                    closed_by: ClosedBy::Bye,
                    end_ms: 0,
                },
                Case {
                    name: "final failure ACKed",
                    before: vec![
                        (0, invite(id), true),
                        (40, resp(id, "180 Ringing", 1, "INVITE", "inv"), false),
                    ],
                    end: (900, resp(id, "486 Busy Here", 1, "INVITE", "inv"), false),
                    after: vec![
                        (910, ack(id), true),
                        (7000, resp(id, "486 Busy Here", 1, "INVITE", "inv"), false),
                        (7010, ack(id), true),
                        (7020, invite(id), true),
                    ],
                    outcome: Outcome::Busy,
                    closed_by: ClosedBy::FinalResponse,
                    end_ms: 0,
                },
                Case {
                    name: "CANCEL completed",
                    before: vec![
                        (0, invite(id), true),
                        (40, resp(id, "180 Ringing", 1, "INVITE", "inv"), false),
                        (5000, cancel(id), true),
                        (5010, resp(id, "200 OK", 1, "CANCEL", "inv"), false),
                    ],
                    end: (
                        5020,
                        resp(id, "487 Request Terminated", 1, "INVITE", "inv"),
                        false,
                    ),
                    after: vec![
                        (5030, ack(id), true),
                        (11_100, cancel(id), true),
                        (
                            11_110,
                            resp(id, "487 Request Terminated", 1, "INVITE", "inv"),
                            false,
                        ),
                        (11_120, ack(id), true),
                    ],
                    outcome: Outcome::Abandoned,
                    closed_by: ClosedBy::Cancel,
                    end_ms: 5000,
                },
                Case {
                    // The UAS re-sends its 200 (no ACK comes) and gives up with a BYE after
                    // 64·T1 (RFC 3261 13.3.1.4); its 200 retransmissions go on meanwhile.
                    name: "2xx never ACKed",
                    before: vec![
                        (0, invite(id), true),
                        (2000, resp(id, "200 OK", 1, "INVITE", "inv"), false),
                        (2500, resp(id, "200 OK", 1, "INVITE", "inv"), false),
                        (3500, resp(id, "200 OK", 1, "INVITE", "inv"), false),
                    ],
                    end: (34_000, bye(id), false),
                    after: vec![
                        (34_010, resp(id, "200 OK", 2, "BYE", "bye"), true),
                        (40_000, resp(id, "200 OK", 1, "INVITE", "inv"), false),
                        (40_100, bye(id), false),
                    ],
                    outcome: Outcome::Answered,
                    closed_by: ClosedBy::Bye,
                    end_ms: 0,
                },
            ]
        };
        let grace = CallLimits::default().record_grace;
        assert_eq!(grace, Duration::from_secs(1), "the default the issue asks");
        let grace_ms = grace.as_millis() as i64;
        for case in cases("end@test") {
            let mut c = Correlator::new(CallLimits::default(), MediaLimits::default());
            let mut out = Vec::new();
            let send =
                |c: &mut Correlator, (ms, text, from_caller): &Step, out: &mut Vec<Record>| {
                    let (src, dst) = if *from_caller {
                        (CALLER, CALLEE)
                    } else {
                        (CALLEE, CALLER)
                    };
                    sip_at(c, *ms, text, src, dst, out);
                };
            let at = |ms: i64| Timestamp::from_nanos(1_700_000_000_000_000_000 + ms * 1_000_000);
            let calls = |out: &Vec<Record>| {
                out.iter()
                    .filter_map(|r| match r {
                        Record::Call(c) => Some((**c).clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            };
            for step in &case.before {
                send(&mut c, step, &mut out);
            }
            let end_ms = case.end.0;
            send(&mut c, &case.end, &mut out);
            c.advance(at(end_ms + grace_ms - 10), &mut |r| out.push(r));
            assert!(calls(&out).is_empty(), "{}: held for its grace", case.name);
            c.advance(at(end_ms + grace_ms), &mut |r| out.push(r));
            let made = calls(&out);
            assert_eq!(made.len(), 1, "{}: made when the grace passed", case.name);
            assert_eq!(made[0].outcome, case.outcome, "{}", case.name);
            assert_eq!(made[0].closed_by, case.closed_by, "{}", case.name);
            assert!(made[0].complete, "{}", case.name);
            let end_time = if case.end_ms > 0 { case.end_ms } else { end_ms };
            assert_eq!(
                made[0].end_time.map(|t| t.as_nanos()),
                Some(at(end_time).as_nanos()),
                "{}: the call's end",
                case.name
            );
            let late_before = c.calls().counters().late_messages;
            for step in &case.after {
                send(&mut c, step, &mut out);
                c.advance(at(step.0), &mut |r| out.push(r));
            }
            assert!(
                case.after.iter().any(|s| s.0 >= end_ms + grace_ms + 5000),
                "{}: something comes 5 s after the record",
                case.name
            );
            // Not a new call, not a partial record: absorbed by the tombstone, counted.
            let late = c.calls().counters().late_messages - late_before;
            assert_eq!(
                late,
                case.after.len() as u64,
                "{}: every late message counted",
                case.name
            );
            c.finish(ClosedBy::CaptureEnd, &mut |r| out.push(r));
            assert_eq!(calls(&out).len(), 1, "{}: {:#?}", case.name, calls(&out));
            assert_eq!(c.calls().counters().calls, 1, "{}", case.name);
        }
    }
}
