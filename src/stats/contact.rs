//! Contacts: the facts of one inbound contact, derived from a call record (SIP) and, when a
//! queue source knows the call, from its [`QueueFact`] — which is then the authority for
//! the queue figures (arrival, wait, outcome, talk, wrap-up, RONA, transfers).
//!
//! From a `teledge.call/1` record:
//! - arrival: the first INVITE (a call joined mid-call, or still in progress when its record
//!   was made, is *excluded*: counted, not a contact);
//! - answered: `answer_time`; wait = `time_to_answer_s` (INVITE → 2xx: delay, queue and ring
//!   time, as Cisco's ASA counts it); ring = `ring_duration_s` only when the call rang (a
//!   18x was seen); talk = `talk_duration_s` (answer → BYE, hold included); hold =
//!   `hold_duration_s` (re-INVITE/UPDATE sendonly, inactive, `c=0.0.0.0`);
//! - abandoned: outcome `abandoned` (the caller cancelled); wait = arrival → `end_time`;
//! - anything else that ended (busy, rejected, not reached, no answer, failed, timed out):
//!   *not connected*;
//! - who hung up: `hangup_by`; MOS: the call's `media_quality.verdict`.
//!
//! All durations are integer milliseconds, so sums merge exactly.

use super::queue::{FlowOut, QueueEnd, QueueFact, QueueHangup};
use crate::record::{CallRecord, Hangup, Outcome};
use crate::time::Timestamp;

/// How a contact ended, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactOutcome {
    Answered,
    Abandoned,
    FlowOut(FlowOut),
    /// Ended without reaching anyone, not by the caller: busy, rejected, failed, ...
    NotConnected,
    /// Not counted as a contact: no INVITE seen, or still in progress.
    Excluded,
}

/// Who ended an answered contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HungUp {
    Caller,
    /// The callee: the agent.
    Callee,
}

/// The SIP facts of the contact's call, for the RFC 6076 KPIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipFacts {
    pub final_status: Option<u16>,
    /// Established (2xx) and ended by BYE, with its duration.
    pub completed_ms: Option<u64>,
    /// Post-dial delay (RFC 6076 SRD): INVITE → first 18x, else → final response.
    pub pdd_ms: Option<u64>,
    /// Session disconnect delay (RFC 6076 SDD): BYE → its final response, when seen.
    pub sdd_ms: Option<u64>,
}

/// One contact's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    /// Index into the configured services.
    pub service: usize,
    pub arrival: Timestamp,
    /// When the contact ended (last activity): the concurrency timeline runs arrival → end.
    pub end: Timestamp,
    pub outcome: ContactOutcome,
    /// The SIP outcome (`answered`, `busy`, ...), or the queue's (`abandoned`, `flow_out`).
    pub sip_outcome: &'static str,
    pub answer_time: Option<Timestamp>,
    /// Time in queue/setup until answer, abandon or flow-out.
    pub wait_ms: Option<u64>,
    pub ring_ms: Option<u64>,
    pub talk_ms: Option<u64>,
    pub hold_ms: Option<u64>,
    pub wrap_up_ms: Option<u64>,
    pub rona: u32,
    pub transferred: bool,
    pub hung_up: Option<HungUp>,
    /// MOS × 100, rounded.
    pub mos_centi: Option<u32>,
    pub sip: Option<SipFacts>,
    /// The queue figures came from a queue fact.
    pub from_queue: bool,
}

fn ms(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1000.0).round() as u64
    } else {
        0
    }
}

fn ms_between(later: Timestamp, earlier: Timestamp) -> u64 {
    let nanos = later.as_nanos().saturating_sub(earlier.as_nanos()).max(0);
    // Rounded to the millisecond, as every duration here.
    ((nanos + 500_000) / 1_000_000) as u64
}

impl Contact {
    /// The contact of a call record of service `service`.
    pub fn from_call(call: &CallRecord, service: usize) -> Contact {
        let arrival = call.invite_time.unwrap_or(call.first_message_time);
        let end = call.end_time.unwrap_or(call.last_message_time).max(arrival);
        let excluded = call.invite_time.is_none() || call.outcome == Outcome::InProgress;
        let outcome = if excluded {
            ContactOutcome::Excluded
        } else {
            match call.outcome {
                Outcome::Answered => ContactOutcome::Answered,
                Outcome::Abandoned => ContactOutcome::Abandoned,
                _ => ContactOutcome::NotConnected,
            }
        };
        let wait_ms = match outcome {
            ContactOutcome::Answered => call
                .time_to_answer_s
                .map(ms)
                .or_else(|| call.answer_time.map(|a| ms_between(a, arrival))),
            ContactOutcome::Abandoned => Some(ms_between(end, arrival)),
            _ => None,
        };
        let answered = outcome == ContactOutcome::Answered;
        let sip = call.invite_time.map(|_| SipFacts {
            final_status: call.final_status,
            completed_ms: (call.outcome == Outcome::Answered
                && call.closed_by == crate::record::ClosedBy::Bye)
                .then(|| call.talk_duration_s.map(ms))
                .flatten(),
            pdd_ms: call.post_dial_delay_s.map(ms),
            sdd_ms: match (call.closed_by, call.end_time, call.bye_answered_time) {
                (crate::record::ClosedBy::Bye, Some(bye), Some(answered)) => {
                    Some(ms_between(answered, bye))
                }
                _ => None,
            },
        });
        Contact {
            service,
            arrival,
            end,
            outcome,
            sip_outcome: call.outcome.as_str(),
            answer_time: call.answer_time,
            wait_ms,
            ring_ms: if answered && call.ringing_time.is_some() {
                call.ring_duration_s.map(ms)
            } else {
                None
            },
            talk_ms: if answered {
                call.talk_duration_s.map(ms)
            } else {
                None
            },
            hold_ms: answered.then(|| ms(call.hold_duration_s)),
            wrap_up_ms: None,
            rona: 0,
            transferred: false,
            hung_up: call.hangup_by.map(|h| match h {
                Hangup::Caller => HungUp::Caller,
                Hangup::Callee => HungUp::Callee,
            }),
            mos_centi: call
                .media_quality
                .verdict
                .as_ref()
                .filter(|v| v.mos.is_finite())
                .map(|v| (v.mos * 100.0).round().clamp(0.0, 500.0) as u32),
            sip,
            from_queue: false,
        }
    }

    /// A contact known only from a queue fact (no call record for it).
    pub fn from_queue_fact(fact: &QueueFact, service: usize) -> Contact {
        let mut contact = Contact {
            service,
            arrival: fact.enter_time,
            end: fact.enter_time,
            outcome: ContactOutcome::Excluded,
            sip_outcome: "in_progress",
            answer_time: None,
            wait_ms: None,
            ring_ms: None,
            talk_ms: None,
            hold_ms: None,
            wrap_up_ms: None,
            rona: 0,
            transferred: false,
            hung_up: None,
            mos_centi: None,
            sip: None,
            from_queue: true,
        };
        contact.apply_queue_fact(fact);
        contact
    }

    /// Makes the queue fact the authority for the queue figures of this contact (the call
    /// record keeps media quality, hold and the SIP facts).
    pub fn apply_queue_fact(&mut self, fact: &QueueFact) {
        self.from_queue = true;
        self.arrival = fact.enter_time;
        let wait_ms = fact
            .wait_s
            .map(ms)
            .or_else(|| fact.end_time.map(|e| ms_between(e, fact.enter_time)));
        self.wait_ms = wait_ms;
        let left = fact
            .end_time
            .or_else(|| wait_ms.map(|w| fact.enter_time.plus(std::time::Duration::from_millis(w))));
        let (outcome, label) = match fact.end {
            QueueEnd::Answered => (ContactOutcome::Answered, "answered"),
            QueueEnd::Abandoned => (ContactOutcome::Abandoned, "abandoned"),
            QueueEnd::FlowOut(kind) => (ContactOutcome::FlowOut(kind), "flow_out"),
            QueueEnd::Open => (ContactOutcome::Excluded, "in_progress"),
        };
        self.outcome = outcome;
        self.sip_outcome = label;
        if outcome == ContactOutcome::Answered {
            self.answer_time = left;
            if fact.ring_s.is_some() {
                self.ring_ms = fact.ring_s.map(ms);
            }
            if fact.talk_s.is_some() {
                self.talk_ms = fact.talk_s.map(ms);
            }
            self.wrap_up_ms = fact.wrap_up_s.map(ms);
        } else {
            self.answer_time = None;
            self.talk_ms = None;
            self.ring_ms = None;
        }
        let queue_end = match (left, self.talk_ms) {
            (Some(l), Some(t)) => l.plus(std::time::Duration::from_millis(t)),
            (Some(l), None) => l,
            (None, _) => fact.enter_time,
        };
        self.end = self.end.max(queue_end).max(self.arrival);
        self.rona = fact.rona;
        self.transferred = fact.transferred;
        if let Some(h) = fact.hangup_by {
            self.hung_up = Some(match h {
                QueueHangup::Caller => HungUp::Caller,
                QueueHangup::Agent => HungUp::Callee,
            });
        }
    }

    /// When the contact's service-level event happened: answer, abandon or end, or the
    /// threshold's expiry (arrival + T) if that came first (Cisco, Genesys).
    pub fn event_time(&self, threshold_s: u32) -> Timestamp {
        let expiry = self
            .arrival
            .plus(std::time::Duration::from_secs(u64::from(threshold_s)));
        let happened = match self.outcome {
            ContactOutcome::Answered => self
                .answer_time
                .or_else(|| self.wait_ms.map(|w| self.arrival.plus(ms_dur(w)))),
            ContactOutcome::Abandoned | ContactOutcome::FlowOut(_) => {
                self.wait_ms.map(|w| self.arrival.plus(ms_dur(w)))
            }
            ContactOutcome::NotConnected | ContactOutcome::Excluded => Some(self.end),
        }
        .unwrap_or(self.end);
        happened.min(expiry)
    }
}

fn ms_dur(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms)
}
