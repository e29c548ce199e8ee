//! Call tracking: SIP messages in, one [`CallRecord`] per call attempt out.
//!
//! Dialogs are keyed by Call-ID. The tracker is deterministic: it is driven only by the
//! messages and their capture times (`advance` moves time forward), so replay, live capture
//! and tests behave alike without a clock.
//!
//! What it understands:
//! - retransmissions: a request with a transaction (method, CSeq, Via branch) already seen, or
//!   a response with a (status, CSeq, To-tag) already seen, is counted and otherwise ignored;
//! - auth challenges: 401/407 followed by a new INVITE (higher CSeq, no To-tag) in the same
//!   Call-ID continues the same attempt; a challenge not followed up ends it as rejected;
//! - provisional responses, ringing (180/183) and early media (18x with SDP);
//! - CANCEL before answer (abandoned), BYE from either side (who hung up), re-INVITE/UPDATE
//!   holds (sendonly/inactive/`c=0.0.0.0`) and resumes;
//! - forking: the distinct To-tags of the responses are counted; the answered one is the dialog;
//! - calls that never end: a setup that gets no final answer within `setup_timeout` is closed as
//!   timed out; a connected call longer than `max_call_duration` is closed (still answered,
//!   marked incomplete);
//! - REGISTER and other out-of-dialog transactions are counted, not reported as calls.
//!
//! An ended call is kept for `linger` (default 32 s, SIP's Timer B) to absorb late
//! retransmissions, a challenged one (401/407) for `setup_timeout` so the INVITE with
//! credentials joins the same attempt; then its record is emitted.
//! The table is bounded by `max_calls`; calls refused at the bound are counted.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use crate::decode::hep::{ReportBlock, RtcpJson};
use crate::decode::sdp::{self, SdpSummary};
use crate::decode::sip::{Method, NameAddr, SipMessage, StartLine};
use crate::dissect::{MessageMeta, Transport};
use crate::record::{
    CallRecord, ClosedBy, Hangup, HepRtcp, Media, Outcome, Party, Reason, State, UserAgents,
    CALL_SCHEMA,
};
use crate::time::{round_secs, Timestamp};

/// A side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Caller,
    Callee,
}

/// Timeouts and bounds of the call table.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Calls tracked at once.
    pub max_calls: usize,
    /// A call without a final answer and without any message for this long is timed out.
    pub setup_timeout: Duration,
    /// A connected call without BYE is closed after this long.
    pub max_call_duration: Duration,
    /// How long an ended call is kept for late retransmissions and challenge retries.
    pub linger: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            max_calls: 100_000,
            setup_timeout: Duration::from_secs(300),
            max_call_duration: Duration::from_secs(4 * 3600),
            linger: Duration::from_secs(32),
        }
    }
}

/// Counters of the tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallCounters {
    pub calls: u64,
    /// REGISTER transactions (distinct Call-ID and CSeq).
    pub registrations: u64,
    /// Other out-of-dialog transactions (OPTIONS, MESSAGE, SUBSCRIBE, ...).
    pub other_transactions: u64,
    /// Messages of dialogs whose INVITE was never seen (started before the capture).
    pub orphan_messages: u64,
    pub dropped_at_capacity: u64,
    /// HEP RTCP reports (type 5) attached to a tracked call.
    pub hep_rtcp_attached: u64,
    /// HEP RTCP reports whose correlation id names no tracked call.
    pub hep_rtcp_unmatched: u64,
    /// HEP RTCP entries not kept because the call already had [`MAX_HEP_RTCP_PER_CALL`].
    pub hep_rtcp_dropped: u64,
}

/// Most transactions remembered per call for retransmission detection.
const MAX_SEEN_PER_CALL: usize = 512;
/// Most HEP RTCP entries (reporter and reported SSRC pairs) kept per call.
pub const MAX_HEP_RTCP_PER_CALL: usize = 16;
/// Most To-tags remembered per call.
const MAX_FORKS: usize = 16;
/// Most out-of-dialog transactions remembered for de-duplication before the set is reset.
const MAX_OUT_OF_DIALOG_SEEN: usize = 100_000;

#[derive(Debug)]
struct Call {
    call_id: String,
    linked_call_id: Option<String>,
    caller: Party,
    callee: Party,
    asserted_identity: Option<Party>,
    diverted_from: Option<Party>,
    caller_tag: Option<String>,
    transport: Transport,
    caller_address: SocketAddr,
    callee_address: SocketAddr,
    invite_cseq: u32,
    invite_time: Timestamp,
    first_provisional: Option<Timestamp>,
    ringing: Option<Timestamp>,
    answer: Option<Timestamp>,
    cancelled: Option<Timestamp>,
    bye: Option<(Timestamp, Hangup)>,
    final_response: Option<(u16, String, Timestamp)>,
    last_message: Timestamp,
    reason: Option<Reason>,
    user_agents: UserAgents,
    messages: u32,
    retransmissions: u32,
    auth_challenges: u32,
    to_tags: Vec<String>,
    early_media: bool,
    hold_since: Option<Timestamp>,
    hold_count: u32,
    hold_total: f64,
    media: Media,
    seen: HashSet<u64>,
    hep_rtcp: Vec<HepRtcp>,
    /// Set when the call ended; the record is emitted `linger` later.
    closed: Option<(ClosedBy, Timestamp)>,
}

/// The call table.
#[derive(Debug)]
pub struct CallTracker {
    limits: CallLimits,
    calls: HashMap<String, Call>,
    out_of_dialog_seen: HashSet<u64>,
    counters: CallCounters,
    last_sweep: Timestamp,
}

impl CallTracker {
    pub fn new(limits: CallLimits) -> Self {
        CallTracker {
            limits,
            calls: HashMap::new(),
            out_of_dialog_seen: HashSet::new(),
            counters: CallCounters::default(),
            last_sweep: Timestamp::default(),
        }
    }

    pub fn counters(&self) -> CallCounters {
        self.counters
    }

    /// Calls currently tracked.
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    /// Handles one SIP message; records of calls that this message's time closed go to `out`.
    /// `sdp` is the message's SDP, summarised once by the caller (media correlation needs it
    /// too).
    pub fn message(
        &mut self,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        sdp: Option<&SdpSummary>,
        out: &mut impl FnMut(CallRecord),
    ) {
        // The message is applied before time advances: a message of a call is proof the call
        // is alive, even when the capture's clock jumped past a timeout since the last one.
        self.apply(meta, msg, sdp);
        self.advance(meta.time, out);
    }

    /// Which side of a tracked call sent this message; `None` when the call is not tracked.
    pub fn side_of(&self, msg: &SipMessage<'_>) -> Option<Side> {
        let call = self.calls.get(msg.call_id)?;
        let from_caller = msg.from.tag.is_some() && msg.from.tag == call.caller_tag.as_deref();
        let is_request = msg.method().is_some();
        Some(if is_request == from_caller {
            Side::Caller
        } else {
            Side::Callee
        })
    }

    fn apply(&mut self, meta: &MessageMeta, msg: &SipMessage<'_>, sdp: Option<&SdpSummary>) {
        let is_initial_invite = msg.method() == Some(Method::Invite) && msg.to.tag.is_none();
        if let Some(call) = self.calls.get_mut(msg.call_id) {
            call.on_message(meta, msg, sdp);
            return;
        }
        if is_initial_invite {
            if self.calls.len() >= self.limits.max_calls {
                self.counters.dropped_at_capacity += 1;
                return;
            }
            self.counters.calls += 1;
            let mut call = Call::new(meta, msg);
            call.on_message(meta, msg, sdp);
            self.calls.insert(msg.call_id.to_owned(), call);
            return;
        }
        if msg.cseq.method == Method::Invite
            || msg.to.tag.is_some() && msg.cseq.method != Method::Register
        {
            self.counters.orphan_messages += 1;
            return;
        }
        // An out-of-dialog transaction: count each request once (retransmissions and
        // responses share its Call-ID and CSeq).
        if msg.method().is_some() {
            let key = hash_of(&(msg.call_id, msg.cseq.number, msg.cseq.method.as_str()));
            if self.out_of_dialog_seen.len() >= MAX_OUT_OF_DIALOG_SEEN {
                self.out_of_dialog_seen.clear();
            }
            if self.out_of_dialog_seen.insert(key) {
                if msg.cseq.method == Method::Register {
                    self.counters.registrations += 1;
                } else {
                    self.counters.other_transactions += 1;
                }
            }
        }
    }

    /// Attaches an RTCP report relayed by a HEP agent to the call with this Call-ID. Returns
    /// false (and counts it) when no such call is tracked: RTCP outlives calls and may belong
    /// to calls that began before the capture.
    pub fn hep_rtcp(&mut self, call_id: &str, time: Timestamp, report: &RtcpJson) -> bool {
        let Some(call) = self.calls.get_mut(call_id) else {
            self.counters.hep_rtcp_unmatched += 1;
            return false;
        };
        self.counters.hep_rtcp_attached += 1;
        let reporter = report.ssrc.map(ssrc_text);
        let blocks: Vec<Option<&ReportBlock>> = if report.report_blocks.is_empty() {
            vec![None]
        } else {
            report.report_blocks.iter().map(Some).collect()
        };
        for block in blocks {
            let source = block.and_then(|b| b.source_ssrc).map(ssrc_text);
            let index = call
                .hep_rtcp
                .iter()
                .position(|e| e.reporter_ssrc == reporter && e.source_ssrc == source);
            let entry = match index {
                Some(i) => &mut call.hep_rtcp[i],
                None if call.hep_rtcp.len() < MAX_HEP_RTCP_PER_CALL => {
                    call.hep_rtcp.push(HepRtcp {
                        reporter_ssrc: reporter.clone(),
                        source_ssrc: source,
                        first_time: time,
                        ..HepRtcp::default()
                    });
                    let last = call.hep_rtcp.len() - 1;
                    &mut call.hep_rtcp[last]
                }
                None => {
                    self.counters.hep_rtcp_dropped += 1;
                    continue;
                }
            };
            entry.reports = entry.reports.saturating_add(1);
            entry.last_time = entry.last_time.max(time);
            if let Some(b) = block {
                if let Some(f) = b.fraction_lost {
                    // 8-bit fixed point; anything larger is a broken agent, clamp to 100 %.
                    let percent = round_secs((f.min(256) as f64) * 100.0 / 256.0);
                    entry.last_fraction_lost_percent = Some(percent);
                    entry.max_fraction_lost_percent =
                        Some(entry.max_fraction_lost_percent.unwrap_or(0.0).max(percent));
                }
                if b.packets_lost.is_some() {
                    entry.last_cumulative_lost = b.packets_lost;
                }
                if let Some(j) = b.ia_jitter {
                    entry.last_jitter = Some(j);
                    entry.max_jitter = Some(entry.max_jitter.unwrap_or(0).max(j));
                }
                if b.highest_seq_no.is_some() {
                    entry.last_highest_seq = b.highest_seq_no;
                }
            }
        }
        true
    }

    /// Moves time forward: emits calls whose linger passed and closes calls that timed out.
    pub fn advance(&mut self, now: Timestamp, out: &mut impl FnMut(CallRecord)) {
        if now.seconds_since(self.last_sweep) < 1.0 {
            return;
        }
        self.last_sweep = now;
        let limits = self.limits;
        let due: Vec<String> = self
            .calls
            .iter_mut()
            .filter_map(|(id, call)| call.due(now, &limits).then(|| id.clone()))
            .collect();
        for id in due {
            if let Some(call) = self.calls.remove(&id) {
                out(call.into_record());
            }
        }
    }

    /// Emits every call still tracked, as it stands (open calls are marked incomplete).
    pub fn finish(&mut self, closed_by: ClosedBy, out: &mut impl FnMut(CallRecord)) {
        let mut calls: Vec<Call> = self.calls.drain().map(|(_, c)| c).collect();
        calls.sort_by_key(|c| c.invite_time);
        for mut call in calls {
            if call.closed.is_none() {
                call.closed = Some((closed_by, call.last_message));
            }
            out(call.into_record());
        }
    }
}

impl Call {
    fn new(meta: &MessageMeta, invite: &SipMessage<'_>) -> Call {
        Call {
            call_id: invite.call_id.to_owned(),
            linked_call_id: invite.linked_call_id.map(str::to_owned),
            caller: party(&invite.from),
            callee: party(&invite.to),
            asserted_identity: invite.asserted_identity.as_ref().map(party),
            diverted_from: invite.diversion.as_ref().map(party),
            caller_tag: invite.from.tag.map(str::to_owned),
            transport: meta.transport,
            caller_address: meta.src,
            callee_address: meta.dst,
            invite_cseq: invite.cseq.number,
            invite_time: meta.time,
            first_provisional: None,
            ringing: None,
            answer: None,
            cancelled: None,
            bye: None,
            final_response: None,
            last_message: meta.time,
            reason: None,
            user_agents: UserAgents {
                caller: invite.user_agent.map(str::to_owned),
                callee: None,
            },
            messages: 0,
            retransmissions: 0,
            auth_challenges: 0,
            to_tags: Vec::new(),
            early_media: false,
            hold_since: None,
            hold_count: 0,
            hold_total: 0.0,
            media: Media::default(),
            seen: HashSet::new(),
            hep_rtcp: Vec::new(),
            closed: None,
        }
    }

    fn on_message(&mut self, meta: &MessageMeta, msg: &SipMessage<'_>, sdp: Option<&SdpSummary>) {
        self.messages = self.messages.saturating_add(1);
        self.last_message = self.last_message.max(meta.time);
        if self.is_retransmission(msg) {
            self.retransmissions = self.retransmissions.saturating_add(1);
            return;
        }
        match msg.start {
            StartLine::Request { method, .. } => self.on_request(meta, msg, method, sdp),
            StartLine::Response { status, reason } => {
                self.on_response(meta, msg, status, reason, sdp)
            }
        }
    }

    fn is_retransmission(&mut self, msg: &SipMessage<'_>) -> bool {
        let key = match msg.start {
            StartLine::Request { method, .. } => hash_of(&(
                0u8,
                method.as_str(),
                msg.cseq.number,
                msg.via_branch.unwrap_or(""),
            )),
            StartLine::Response { status, .. } => hash_of(&(
                1u8,
                status,
                msg.cseq.number,
                msg.cseq.method.as_str(),
                msg.to.tag.unwrap_or(""),
            )),
        };
        if self.seen.contains(&key) {
            return true;
        }
        if self.seen.len() < MAX_SEEN_PER_CALL {
            self.seen.insert(key);
        }
        false
    }

    fn on_request(
        &mut self,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        method: Method<'_>,
        sdp: Option<&SdpSummary>,
    ) {
        let t = meta.time;
        match method {
            Method::Invite if msg.to.tag.is_none() => {
                if msg.cseq.number > self.invite_cseq {
                    // The same attempt, re-sent after a challenge (or a 491/422 retry).
                    if let Some((401 | 407, _, _)) = self.final_response {
                        self.auth_challenges = self.auth_challenges.saturating_add(1);
                    }
                    self.invite_cseq = msg.cseq.number;
                    if self.answer.is_none() {
                        self.final_response = None;
                        self.closed = None;
                    }
                }
                if self.media.offer.is_none() {
                    self.media.offer = sdp.cloned();
                }
            }
            Method::Invite | Method::Update => {
                if let Some(sdp) = sdp {
                    self.media.renegotiations = self.media.renegotiations.saturating_add(1);
                    self.on_sdp_direction(sdp, t);
                }
            }
            Method::Cancel if self.answer.is_none() && self.final_response.is_none() => {
                self.cancelled.get_or_insert(t);
                self.set_reason(msg);
                self.close(ClosedBy::Cancel, t);
            }
            Method::Bye => {
                let hangup = if msg.from.tag.is_some() && msg.from.tag == self.caller_tag.as_deref()
                {
                    Hangup::Caller
                } else {
                    Hangup::Callee
                };
                if self.bye.is_none() {
                    self.bye = Some((t, hangup));
                    self.set_reason(msg);
                    if let Some(since) = self.hold_since.take() {
                        self.hold_total += t.seconds_since(since);
                    }
                }
                self.close(ClosedBy::Bye, t);
            }
            _ => {}
        }
    }

    fn on_response(
        &mut self,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        status: u16,
        phrase: &str,
        sdp: Option<&SdpSummary>,
    ) {
        let t = meta.time;
        if msg.cseq.method != Method::Invite {
            return;
        }
        if msg.cseq.number != self.invite_cseq {
            // A response to a re-INVITE: its SDP is a renegotiation answer.
            if (200..300).contains(&status) && sdp.is_some() {
                self.media.renegotiations = self.media.renegotiations.saturating_add(1);
            }
            return;
        }
        if let Some(tag) = msg.to.tag {
            if self.to_tags.len() < MAX_FORKS && !self.to_tags.iter().any(|t| t == tag) {
                self.to_tags.push(tag.to_owned());
            }
        }
        if self.user_agents.callee.is_none() && status != 100 {
            self.user_agents.callee = msg.server.or(msg.user_agent).map(str::to_owned);
        }
        match status {
            100..=199 => {
                self.first_provisional.get_or_insert(t);
                if status == 180 || status == 183 {
                    self.ringing.get_or_insert(t);
                }
                if let Some(sdp) = sdp {
                    self.early_media = true;
                    self.media.answer.get_or_insert_with(|| sdp.clone());
                }
            }
            200..=299 => {
                if self.answer.is_none() {
                    self.answer = Some(t);
                    self.final_response = Some((status, phrase.to_owned(), t));
                    // A 200 that crossed a CANCEL wins: the call was answered.
                    self.closed = None;
                    if let Some(sdp) = sdp {
                        if !self.early_media || self.media.answer.is_none() {
                            self.media.answer = Some(sdp.clone());
                        }
                    }
                }
            }
            _ => {
                if self.answer.is_none() && self.final_response.is_none() {
                    self.final_response = Some((status, phrase.to_owned(), t));
                    if self.reason.is_none() {
                        self.set_reason(msg);
                    }
                    let by = if self.cancelled.is_some() {
                        ClosedBy::Cancel
                    } else {
                        ClosedBy::FinalResponse
                    };
                    self.close(by, t);
                }
            }
        }
    }

    fn on_sdp_direction(&mut self, sdp: &SdpSummary, t: Timestamp) {
        match (sdp.is_hold(), self.hold_since) {
            (true, None) => {
                self.hold_since = Some(t);
                self.hold_count = self.hold_count.saturating_add(1);
            }
            (false, Some(since)) => {
                self.hold_total += t.seconds_since(since);
                self.hold_since = None;
            }
            _ => {}
        }
    }

    fn set_reason(&mut self, msg: &SipMessage<'_>) {
        let mut reasons = msg.reasons().peekable();
        let first = reasons.peek().copied();
        let q850 = msg
            .reasons()
            .find(|r| r.protocol.eq_ignore_ascii_case("Q.850"));
        if let Some(r) = q850.or(first) {
            self.reason = Some(Reason {
                protocol: r.protocol.to_owned(),
                cause: r.cause,
                text: r.text.map(str::to_owned),
            });
        }
    }

    fn close(&mut self, by: ClosedBy, t: Timestamp) {
        if self.closed.is_none() {
            self.closed = Some((by, t));
        }
    }

    /// True when the record should be emitted now; closes timed-out calls on the way.
    fn due(&mut self, now: Timestamp, limits: &CallLimits) -> bool {
        if let Some((_, at)) = self.closed {
            // A challenged attempt waits for the INVITE with credentials (people type
            // passwords: sngrep's sample retries after 34 s); others only for retransmissions.
            let wait = match self.final_response {
                Some((401 | 407, _, _)) => limits.setup_timeout,
                _ => limits.linger,
            };
            return now.seconds_since(at) > wait.as_secs_f64();
        }
        match self.answer {
            None if now.seconds_since(self.last_message) > limits.setup_timeout.as_secs_f64() => {
                self.closed = Some((ClosedBy::Timeout, now));
                true
            }
            Some(answer) if now.seconds_since(answer) > limits.max_call_duration.as_secs_f64() => {
                self.closed = Some((ClosedBy::Timeout, now));
                true
            }
            _ => false,
        }
    }

    fn outcome(&self) -> Outcome {
        if self.answer.is_some() {
            return Outcome::Answered;
        }
        if self.cancelled.is_some() || self.bye.is_some() {
            return Outcome::Abandoned;
        }
        if let Some((status, _, _)) = self.final_response {
            return classify_failure(status);
        }
        match self.closed {
            Some((ClosedBy::Timeout, _)) => Outcome::TimedOut,
            _ => Outcome::InProgress,
        }
    }

    fn state(&self) -> State {
        let ended = self.bye.is_some()
            || (self.answer.is_none()
                && (self.final_response.is_some() || self.cancelled.is_some()));
        if ended {
            State::Ended
        } else if self.answer.is_some() {
            State::Connected
        } else if self.early_media {
            State::EarlyMedia
        } else if self.ringing.is_some() {
            State::Ringing
        } else if self.first_provisional.is_some() {
            State::Proceeding
        } else {
            State::Calling
        }
    }

    fn into_record(self) -> CallRecord {
        let outcome = self.outcome();
        let state = self.state();
        let (closed_by, _) = self
            .closed
            .unwrap_or((ClosedBy::CaptureEnd, self.last_message));
        let failure_time = match self.final_response {
            Some((status, _, t)) if status >= 300 => Some(t),
            _ => None,
        };
        let end_time = match outcome {
            Outcome::Answered => self.bye.map(|(t, _)| t),
            Outcome::Abandoned => self.cancelled.or(self.bye.map(|(t, _)| t)),
            _ => failure_time,
        };
        let since_invite =
            |t: Option<Timestamp>| t.map(|t| round_secs(t.seconds_since(self.invite_time)));
        let ring_start = self.ringing.unwrap_or(self.invite_time);
        let ring_end = self.answer.or(self.cancelled).or(failure_time);
        let hangup_by = match outcome {
            Outcome::Abandoned => Some(Hangup::Caller),
            _ => self.bye.map(|(_, h)| h),
        };
        let hold_open = match (self.hold_since, end_time) {
            (Some(since), Some(end)) => end.seconds_since(since),
            (Some(since), None) => self.last_message.seconds_since(since),
            _ => 0.0,
        };
        let q850_cause = self
            .reason
            .as_ref()
            .filter(|r| r.protocol.eq_ignore_ascii_case("Q.850"))
            .and_then(|r| r.cause);
        CallRecord {
            schema: CALL_SCHEMA,
            record_id: record_id(&self.call_id, self.invite_time, self.caller_address),
            linked_call_id: self.linked_call_id,
            caller: self.caller,
            callee: self.callee,
            asserted_identity: self.asserted_identity,
            diverted_from: self.diverted_from,
            transport: self.transport,
            caller_address: self.caller_address.to_string(),
            callee_address: self.callee_address.to_string(),
            invite_time: self.invite_time,
            first_provisional_time: self.first_provisional,
            ringing_time: self.ringing,
            answer_time: self.answer,
            end_time,
            last_message_time: self.last_message,
            post_dial_delay_s: since_invite(self.ringing.or(failure_time).or(self.answer)),
            time_to_answer_s: since_invite(self.answer),
            ring_duration_s: ring_end.map(|end| round_secs(end.seconds_since(ring_start))),
            talk_duration_s: match (self.answer, self.bye) {
                (Some(a), Some((b, _))) => Some(round_secs(b.seconds_since(a))),
                _ => None,
            },
            outcome,
            state,
            complete: matches!(
                closed_by,
                ClosedBy::Bye | ClosedBy::Cancel | ClosedBy::FinalResponse
            ),
            closed_by,
            final_status: self.final_response.as_ref().map(|f| f.0),
            final_reason: self.final_response.map(|f| f.1),
            q850_cause,
            reason: self.reason,
            hangup_by,
            user_agents: self.user_agents,
            messages: self.messages,
            retransmissions: self.retransmissions,
            auth_challenges: self.auth_challenges,
            forks: self.to_tags.len() as u32,
            early_media: self.early_media,
            hold_count: self.hold_count,
            hold_duration_s: round_secs(self.hold_total + hold_open),
            media: self.media,
            media_quality: Default::default(),
            hep_rtcp: self.hep_rtcp,
            call_id: self.call_id,
        }
    }
}

/// Maps a final failure status to what a supervisor calls it.
pub fn classify_failure(status: u16) -> Outcome {
    match status {
        486 | 600 => Outcome::Busy,
        401 | 403 | 407 | 603 | 607 | 608 => Outcome::Rejected,
        404 | 410 | 480 | 484 | 485 | 604 => Outcome::NotReached,
        408 | 487 => Outcome::NoAnswer,
        _ => Outcome::Failed,
    }
}

fn party(addr: &NameAddr<'_>) -> Party {
    Party {
        user: addr.user.map(str::to_owned),
        display_name: addr.display_name.map(str::to_owned),
        uri: Some(addr.uri.to_owned()),
    }
}

/// The SDP of a message, summarised (`None` without SDP or when it does not parse).
pub fn summarize_sdp(msg: &SipMessage<'_>) -> Option<SdpSummary> {
    msg.sdp().and_then(|body| sdp::summarize(body).ok())
}

fn ssrc_text(ssrc: u64) -> String {
    format!("0x{ssrc:08X}")
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A stable id: the same call in the same capture always gets the same id.
fn record_id(call_id: &str, invite_time: Timestamp, caller: SocketAddr) -> String {
    crate::record::stable_id(&[
        call_id.as_bytes(),
        &invite_time.as_nanos().to_be_bytes(),
        caller.to_string().as_bytes(),
    ])
}
