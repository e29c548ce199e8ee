//! Queue facts: what a queue system (Asterisk `queue_log`, FreeSWITCH `mod_callcenter`) says
//! about one call, the input the statistics take from the queue sources.
//!
//! A [`QueueFact`] is made per queue call (the queue system's call id, e.g. Asterisk's
//! `uniqueid`) by a queue source from its events; this module only defines the shape, the
//! sources are elsewhere. When a contact has a queue fact, the fact is the **authority** for
//! the queue KPIs of that contact: queue, arrival (enter time), wait, answered or abandoned or
//! flowed out, ring-no-answer count, talk and wrap-up; SIP gives the rest (media quality, hold
//! from re-INVITEs, who hung up when the queue does not say). A queue fact without a call
//! record is a contact on its own (a queue system on a box whose SIP is not tapped).
//!
//! Shape (every time is [`Timestamp`], every duration is seconds as the queue system reports
//! it; `None` when the queue system did not say):
//!
//! | field | Asterisk `queue_log` | FreeSWITCH `mod_callcenter` |
//! |---|---|---|
//! | `queue_call_id` | callid column (`uniqueid`) | `CC-Member-Session-UUID` |
//! | `sip_call_id` | — (the join uses the caller number and times) | `variable_sip_call_id` |
//! | `queue` | queue column | `CC-Queue` |
//! | `caller` | `ENTERQUEUE` callerid, **pseudonymised at ingest** | `CC-Member-CID-Number`, pseudonymised |
//! | `enter_time` | `ENTERQUEUE` time | `CC-Member-Joined-Time` |
//! | `end` | `CONNECT` / `ABANDON` / `EXITWITH*` / `EXITEMPTY` | `member-queue-end` cause and cancel reason |
//! | `wait_s` | `CONNECT` holdtime, `ABANDON`/`EXIT*` waittime | answered − joined / leaving − joined |
//! | `ring_s` | `CONNECT` ringtime (s) | answered − agent called |
//! | `rona` | count of `RINGNOANSWER` | count of `bridge-agent-fail` |
//! | `talk_s` | `COMPLETEAGENT`/`COMPLETECALLER` calltime, `TRANSFER` calltime | bridge terminated − answered |
//! | `wrap_up_s` | never: `queue_log` writes no per-call wrap-up (`wrapuptime` is a queue setting applied silently) | measured after an `Idle` state (agents `Available (On Demand)`): next state change − leaving time; else unknown (see `correlation::queue`) |
//! | `hangup_by` | `COMPLETECALLER` → caller, `COMPLETEAGENT` → agent | `cc_side` |
//! | `transferred` | `TRANSFER`, `BLINDTRANSFER`, `ATTENDEDTRANSFER` | — |
//! | `agent` | agent column (member name, pseudonymised if it names a person) | `CC-Agent` |
//!
//! From a `teledge.queue/1` record ([`QueueFact::from_record`], what the daemon's spool
//! writer and `teledge report --queue-log` do): `queue_call_id` ← `call_id`, `rona` ←
//! `ring_no_answer`, `transferred` ← a `transfer`, `end` ← `outcome` (`unknown` →
//! [`QueueEnd::Open`]: counted as `excluded`, not offered) and `flow_out` (`withdraw` →
//! [`FlowOut::Withdraw`]), `end_time` ← `connect_time` when answered (the fact's end is
//! when it left the queue), else the record's `end_time`. A record without `enter_time`
//! (its `ENTERQUEUE` not seen: the log began mid-stay) gets the arrival the rest tells:
//! `connect_time − wait_s`, else for abandons and flow-outs `end_time − wait_s`, else for
//! answered calls `end_time − talk_s − wait_s` (a wait or talk that is not a duration of at
//! most [`MAX_ACTIVE`] tells nothing); with none of these it is
//! no contact and `from_record` returns `None` (the caller counts it: `queue_no_arrival`).
//! The record's identities are already pseudonymised (keyed hashes), so `sip_call_id` and
//! `caller` are hashes: a call record is joined to the fact by keys made with the same
//! pseudonymiser ([`JoinKeys`](super::interval::JoinKeys), see
//! [`Aggregator::with_queue_join`](super::Aggregator::with_queue_join)) — by the SIP Call-ID
//! when the queue source tells it, else by the caller's number with the queue stay inside
//! the call (Asterisk's `queue_log` call id is a channel uniqueid, never the Call-ID).

use crate::time::Timestamp;

/// The longest a contact is followed in the concurrency timeline (the longest call the
/// configuration allows is 7 days): a bogus end cannot make it walk without end.
pub const MAX_ACTIVE: std::time::Duration = std::time::Duration::from_secs(8 * 86_400);

/// How a queue call left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueEnd {
    /// Connected to an agent (`CONNECT`; FS `bridge-agent-start`).
    Answered,
    /// The caller hung up while queued (`ABANDON`; FS `Cancel` + `BREAK_OUT`).
    Abandoned,
    /// Left the queue by the queue's own rule, not by the caller hanging up: a flow-out.
    FlowOut(FlowOut),
    /// Still queued when the fact was made (the queue source flushes it at shutdown).
    Open,
}

/// Why a call flowed out of the queue (not an abandon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowOut {
    /// `EXITWITHTIMEOUT`; FS `TIMEOUT`.
    Timeout,
    /// `EXITEMPTY`; FS `NO_AGENT_TIMEOUT`.
    Empty,
    /// `EXITWITHKEY`; FS `EXIT_WITH_KEY`.
    Key,
    /// `WITHDRAW`: taken out of the queue by the PBX (AMI `QueueWithdrawCaller`), not by
    /// hanging up.
    Withdraw,
}

impl FlowOut {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowOut::Timeout => "timeout",
            FlowOut::Empty => "empty",
            FlowOut::Key => "key",
            FlowOut::Withdraw => "withdraw",
        }
    }
}

/// Who ended a queue call after it was connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueHangup {
    Caller,
    Agent,
}

/// What a queue system says about one call (see the module doc for the sources of each
/// field). Made by a queue source; the statistics take it as the authority for queue KPIs.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueFact {
    /// The queue system's id of the call (Asterisk `uniqueid`, FS member session UUID).
    pub queue_call_id: String,
    /// The SIP Call-ID of the call's leg into the PBX, when the queue source can tell it:
    /// joins the fact to the call record (before pseudonymisation, as the record has it).
    pub sip_call_id: Option<String>,
    /// The queue's name: the service this contact is counted in.
    pub queue: String,
    /// The caller, already pseudonymised by the queue source.
    pub caller: Option<String>,
    /// The agent (member) that answered, if any.
    pub agent: Option<String>,
    /// When the call entered the queue: the contact's arrival.
    pub enter_time: Timestamp,
    pub end: QueueEnd,
    /// When it left the queue (connect, abandon, flow-out).
    pub end_time: Option<Timestamp>,
    /// Seconds in the queue until connect, abandon or flow-out (`holdtime`/`waittime`).
    pub wait_s: Option<f64>,
    /// Seconds the answering agent's phone rang before it answered.
    pub ring_s: Option<f64>,
    /// Ring-no-answer events: agents offered the call who did not take it.
    pub rona: u32,
    /// Seconds connected to the agent (`calltime`).
    pub talk_s: Option<f64>,
    /// After-call work in seconds, when the queue system tells it.
    pub wrap_up_s: Option<f64>,
    pub hangup_by: Option<QueueHangup>,
    /// Ended by a transfer (the queue leg ends; what follows is another leg).
    pub transferred: bool,
}

impl QueueFact {
    /// The fact of a queue contact record (mapping in the module doc); `None` when the
    /// record tells no arrival.
    pub fn from_record(r: &crate::record::queue::QueueCallRecord) -> Option<QueueFact> {
        use crate::record::queue as rec;
        let end = match (r.outcome, r.flow_out) {
            (rec::QueueOutcome::Answered, _) => QueueEnd::Answered,
            (rec::QueueOutcome::Abandoned, _) => QueueEnd::Abandoned,
            (rec::QueueOutcome::FlowOut, kind) => QueueEnd::FlowOut(match kind {
                Some(rec::FlowOut::Timeout) => FlowOut::Timeout,
                Some(rec::FlowOut::Empty) => FlowOut::Empty,
                Some(rec::FlowOut::Key) => FlowOut::Key,
                Some(rec::FlowOut::Withdraw) => FlowOut::Withdraw,
                // A flow-out whose kind was not told: the queue's own rule, i.e. timeout.
                None => FlowOut::Timeout,
            }),
            (rec::QueueOutcome::Unknown, _) => QueueEnd::Open,
        };
        let end_time = match end {
            QueueEnd::Answered => r.connect_time,
            QueueEnd::Open => None,
            _ => Some(r.end_time),
        };
        let back = |t: Timestamp, s: f64| -> Option<Timestamp> {
            // A wait beyond what the aggregator follows is a broken source, not an arrival.
            if !s.is_finite() || s < 0.0 || s > MAX_ACTIVE.as_secs_f64() {
                return None;
            }
            let nanos = (s * 1e9).round() as i64;
            Some(Timestamp::from_nanos(t.as_nanos().checked_sub(nanos)?))
        };
        let enter_time = r
            .enter_time
            .or_else(|| match (end, r.connect_time, r.wait_s) {
                (_, Some(c), Some(w)) => back(c, w),
                (QueueEnd::Abandoned | QueueEnd::FlowOut(_), None, Some(w)) => back(r.end_time, w),
                (QueueEnd::Answered, None, Some(w)) => back(r.end_time, r.talk_s? + w),
                _ => None,
            })?;
        // An answered record without its connect time: the answer is arrival + wait.
        let end_time = match (end, end_time, r.wait_s) {
            (QueueEnd::Answered, None, Some(w)) => std::time::Duration::try_from_secs_f64(w)
                .ok()
                .map(|d| enter_time.plus(d)),
            (_, t, _) => t,
        };
        Some(QueueFact {
            queue_call_id: r.call_id.clone(),
            sip_call_id: r.sip_call_id.clone(),
            queue: r.queue.clone(),
            caller: r.caller.clone(),
            agent: r.agent.clone(),
            enter_time,
            end,
            end_time,
            wait_s: r.wait_s,
            ring_s: r.ring_s,
            rona: r.ring_no_answer,
            talk_s: r.talk_s,
            wrap_up_s: r.wrap_up_s,
            hangup_by: r.hangup_by.map(|h| match h {
                rec::QueueHangup::Caller => QueueHangup::Caller,
                rec::QueueHangup::Agent => QueueHangup::Agent,
            }),
            transferred: r.transfer.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::queue::{self as rec, QueueCallRecord};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_secs_nanos(1_700_000_000 + secs, 0)
    }

    fn record(outcome: rec::QueueOutcome) -> QueueCallRecord {
        QueueCallRecord {
            schema: rec::QUEUE_SCHEMA,
            record_id: "0".repeat(32),
            source: rec::QueueSource::AsteriskQueueLog,
            group: "pbx".into(),
            call_id: "h:1".into(),
            sip_call_id: None,
            queue: "support".into(),
            caller: None,
            enter_time: Some(t(0)),
            orig_position: Some(1),
            connect_time: None,
            end_time: t(40),
            outcome,
            flow_out: None,
            exit_key: None,
            wait_s: None,
            ring_s: None,
            position: None,
            agent: None,
            talk_s: None,
            hangup_by: None,
            transfer: None,
            ring_no_answer: 2,
            ring_no_answer_s: 30.0,
            ring_canceled: 0,
            agent_dumps: 0,
            wrap_up_s: None,
            complete: true,
            closed_by: rec::QueueClosedBy::Event,
        }
    }

    #[test]
    fn answered_ends_at_its_connect_and_carries_rona_and_transfer() {
        let mut r = record(rec::QueueOutcome::Answered);
        r.connect_time = Some(t(8));
        r.wait_s = Some(8.0);
        r.talk_s = Some(32.0);
        r.transfer = Some(rec::QueueTransfer {
            kind: rec::QueueTransferKind::Blind,
            target: None,
            context: None,
        });
        let f = QueueFact::from_record(&r).unwrap();
        assert_eq!(
            (f.end, f.end_time, f.rona),
            (QueueEnd::Answered, Some(t(8)), 2)
        );
        assert!(f.transferred);
        assert_eq!(f.queue_call_id, "h:1");
    }

    #[test]
    fn withdraw_is_its_own_flow_out_and_unknown_stays_open() {
        let mut r = record(rec::QueueOutcome::FlowOut);
        r.flow_out = Some(rec::FlowOut::Withdraw);
        let f = QueueFact::from_record(&r).unwrap();
        assert_eq!(f.end, QueueEnd::FlowOut(FlowOut::Withdraw));
        assert_eq!(f.end_time, Some(t(40)));
        let f = QueueFact::from_record(&record(rec::QueueOutcome::Unknown)).unwrap();
        assert_eq!((f.end, f.end_time), (QueueEnd::Open, None));
    }

    #[test]
    fn a_missing_arrival_is_told_by_the_rest_or_the_record_is_no_fact() {
        // Abandoned after 12 s: arrival = end − wait.
        let mut r = record(rec::QueueOutcome::Abandoned);
        r.enter_time = None;
        r.wait_s = Some(12.0);
        assert_eq!(QueueFact::from_record(&r).unwrap().enter_time, t(28));
        // Answered, seen only from its COMPLETE: end − talk − hold; answer = arrival + hold.
        let mut r = record(rec::QueueOutcome::Answered);
        r.enter_time = None;
        r.wait_s = Some(3.0);
        r.talk_s = Some(10.0);
        let f = QueueFact::from_record(&r).unwrap();
        assert_eq!((f.enter_time, f.end_time), (t(27), Some(t(30))));
        // Nothing tells it (or a wait that is no duration): no fact.
        let mut r = record(rec::QueueOutcome::Abandoned);
        r.enter_time = None;
        assert_eq!(QueueFact::from_record(&r), None);
        r.wait_s = Some(f64::NAN);
        assert_eq!(QueueFact::from_record(&r), None);
        r.wait_s = Some(1e300);
        assert_eq!(QueueFact::from_record(&r), None);
    }
}
