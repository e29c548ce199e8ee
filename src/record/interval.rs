//! The interval record (`"type": "interval"`, `"schema": "teledge.interval/1"`): the service
//! statistics of one service over one interval, made by [`crate::stats`].
//!
//! Every figure is a *primitive sum* — a count, a total in milliseconds, a maximum, a
//! histogram's bucket counts, a concurrency timeline — so the records of many nodes, of many
//! runs of one node and of many intervals merge exactly (integers: no rounding, whatever the
//! order); ratios (service levels, ASA, AHT, abandonment rate, SIP KPIs) are computed on
//! display from these sums, each with its formula named (see [`crate::stats::kpi`]).
//!
//! Identity: a record is one *revision* of the figures of (`node`, `run`, `service`,
//! `interval_start`, `interval_minutes`). A revision supersedes the lower ones of the same
//! identity; records of different `run`s (the daemon restarted) or nodes hold different
//! contacts and are added up.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Schema id of an interval record.
pub const INTERVAL_SCHEMA: &str = "teledge.interval/1";

/// Upper bounds (inclusive, seconds) of the wait-time distribution's buckets (Cisco's
/// default "bucket intervals"); a last bucket counts longer waits.
pub const WAIT_BUCKETS_S: [u32; 9] = [8, 30, 60, 90, 120, 180, 300, 600, 1200];
/// Upper bounds (inclusive, milliseconds) of the post-dial delay histogram; a last bucket
/// counts longer delays. Percentiles are read from it (exact to the bucket).
pub const PDD_BUCKETS_MS: [u32; 14] = [
    100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12_000, 20_000,
];
/// Upper bounds (inclusive, milliseconds) of the session disconnect delay histogram (RFC
/// 6076 SDD: BYE → its final response); a last bucket counts longer delays.
pub const SDD_BUCKETS_MS: [u32; 10] = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000];
/// Upper bounds (inclusive, MOS × 100) of the MOS histogram; a last bucket counts higher.
pub const MOS_BUCKETS_CENTI: [u32; 8] = [200, 250, 300, 310, 360, 400, 430, 450];
/// The MOS below which a call counts as poor.
pub const POOR_MOS_CENTI: u32 = 360;

/// One revision of one service's figures over one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    pub schema: String,
    /// 32 hex chars over node, run, service, interval and revision.
    pub record_id: String,
    pub node: String,
    /// The aggregator run (16 hex chars, random at each start): revisions supersede within a
    /// run; runs add up.
    pub run: String,
    pub service: String,
    pub interval_start: Timestamp,
    pub interval_end: Timestamp,
    /// 15, 30 or 60. An interval cut by a change of UTC offset is shorter.
    pub interval_minutes: u32,
    /// IANA name of the zone the interval is aligned in.
    pub time_zone: String,
    /// The interval's start in local time, with its UTC offset (RFC 3339).
    pub local_start: String,
    /// `event` (the contact's service-level event: answer, abandon, end, or threshold
    /// expiry, whichever first) or `arrival`.
    pub attribution: String,
    /// 0 for the first emission; higher when contacts arrived after it.
    pub revision: u32,
    /// `false` while the interval is still open (the live view, or a run that stopped).
    #[serde(rename = "final")]
    pub closed: bool,
    /// The service's settings the sums were computed with.
    pub sl_threshold_s: u32,
    pub sl_target_percent: u32,
    pub short_abandon_s: u32,
    pub sums: IntervalSums,
}

/// The primitive sums (see the module doc; what each one counts is in
/// [`crate::stats::kpi`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IntervalSums {
    // Contacts.
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub short_abandoned: u64,
    pub flowed_out: u64,
    /// Flow-outs by kind: `timeout` (`EXITWITHTIMEOUT`, FS `TIMEOUT`), `empty`
    /// (`EXITEMPTY`, FS `NO_AGENT_TIMEOUT`), `key` (`EXITWITHKEY`, FS `EXIT_WITH_KEY`),
    /// `withdraw` (`WITHDRAW`); kinds that did not happen are left out.
    pub flowed_out_by_kind: std::collections::BTreeMap<String, u64>,
    /// Contacts that ended otherwise (busy, rejected, not reached, failed, timed out).
    pub not_connected: u64,
    pub answered_within_t: u64,
    /// Abandons (short ones included) with a wait of at most T.
    pub abandoned_within_t: u64,
    pub wait_answered_ms: u64,
    pub wait_abandoned_ms: u64,
    pub longest_wait_ms: u64,
    /// Bucket counts over [`WAIT_BUCKETS_S`] plus one for longer waits.
    pub wait_answered_buckets: Vec<u64>,
    pub wait_abandoned_buckets: Vec<u64>,
    /// Answered contacts whose ring time is known, and its total.
    pub rang: u64,
    pub ring_ms: u64,
    /// Answered contacts whose talk time is known (handled), with talk, hold and wrap-up.
    pub handled: u64,
    pub talk_ms: u64,
    pub hold_ms: u64,
    pub wrap_up_ms: u64,
    pub wrap_up_known: u64,
    pub rona: u64,
    pub transferred: u64,
    /// `caller` / `callee` hung up (answered contacts).
    pub hangup_caller: u64,
    pub hangup_callee: u64,
    /// Contacts whose figures came from a queue fact.
    pub from_queue: u64,
    /// SIP outcomes of the contacts' calls (`answered`, `busy`, ...).
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Calls classified into the service but not counted as contacts: no INVITE seen
    /// (joined mid-call) or still in progress when the record was made.
    pub excluded: u64,
    /// Contacts whose own interval was no longer held (closed more than
    /// [`crate::stats::interval::RETAIN_CLOSED`] ago, or a day ahead of the clock): counted
    /// here, in the interval open when they arrived, instead of there.
    pub too_late: u64,
    /// Queue records (`teledge.queue/1`) that tell no arrival (their `ENTERQUEUE` not seen
    /// and nothing else to derive it from): not counted as contacts, announced here, in the
    /// interval open when they came (their queue's service, else the first).
    pub queue_no_arrival: u64,
    /// Contacts active during each second of the interval (overlapping it), run-length
    /// encoded as
    /// `[offset_s, length_s, calls]`, sorted, without zero runs.
    pub concurrency: Vec<[u32; 3]>,
    // Media quality.
    pub mos_scored: u64,
    /// Σ MOS × 100 (rounded per call).
    pub mos_centi_sum: u64,
    /// Lowest MOS × 100; `null` without a scored call.
    pub mos_centi_min: Option<u32>,
    pub mos_poor: u64,
    /// Bucket counts over [`MOS_BUCKETS_CENTI`] plus one.
    pub mos_buckets: Vec<u64>,
    // SIP (RFC 6076), over the service's calls whose INVITE was seen.
    pub sip: SipSums,
    /// RFC 6076 inputs over **every** call of the node whose INVITE was seen, whatever its
    /// service (classified or not, a contact or not), and the node's registrations: in the
    /// interval of the node's *first* service only (like `sip.registrations`), so adding
    /// the services of a node up never counts a call twice. All zero in the other services.
    pub node_sip: SipSums,
    /// Calls whose interval was no longer held (see `too_late`): not in `node_sip`, counted
    /// here, in the first service's interval open when they came.
    pub node_calls_too_late: u64,
    /// The service's agents (its queue's members), from the queue sources' agent states.
    pub agents: AgentSums,
}

/// Most pause reasons kept apart per interval; the time of further reasons is counted
/// under [`OTHER_PAUSE_REASON`] (and the spans so folded in `pause_reasons_folded`).
pub const MAX_PAUSE_REASONS: usize = 16;
/// The key the time of pauses beyond [`MAX_PAUSE_REASONS`] reasons is counted under.
pub const OTHER_PAUSE_REASON: &str = "_other";
/// The key of pauses the PBX gave no reason for.
pub const NO_PAUSE_REASON: &str = "_none";

/// Agent figures of one service (its queue) over one interval, from `teledge.agent/1`
/// state changes: the time between two changes of one agent in one queue is split exactly
/// at the interval boundaries (each piece in whole milliseconds, rounded down); an agent
/// still staffed when an interval closes counts up to its end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSums {
    /// Σ agent time staffed (logged in or a member), paused time included, ms.
    pub staffed_ms: u64,
    /// Σ agent time paused (a part of `staffed_ms`), ms.
    pub paused_ms: u64,
    /// `paused_ms` by pause reason (at most [`MAX_PAUSE_REASONS`] per interval of one node,
    /// beyond them [`OTHER_PAUSE_REASON`]; no reason: [`NO_PAUSE_REASON`]).
    pub paused_by_reason_ms: std::collections::BTreeMap<String, u64>,
    /// Pause spans whose reason was beyond the bound, counted under `_other`.
    pub pause_reasons_folded: u64,
    /// An agent became staffed (login, membership) / stopped being staffed, in this queue.
    pub logins: u64,
    pub logoffs: u64,
    /// Agent time not counted in its own interval, counted here, in the interval open when
    /// its state change (or cut) came, ms: intervals no longer held (closed more than the
    /// retention ago), or more than 8 days (`MAX_ACTIVE`) before it.
    pub too_late_ms: u64,
    /// Agent state changes not followed: [`crate::stats::interval::MAX_AGENT_SPANS`] agents
    /// and queues were open already.
    pub refused: u64,
}

/// Sums for the RFC 6076 SIP KPIs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SipSums {
    pub invites: u64,
    /// Final response 2xx.
    pub established: u64,
    /// Final response 3xx (taken out of SER's and SEER's denominators).
    pub redirected: u64,
    /// Final 200, 480, 486, 600 or 603 (SEER's numerator).
    pub effective: u64,
    /// Final 408, 500, 503 or 504 (ISA's numerator).
    pub ineffective: u64,
    /// Established and ended by a BYE (SCR's numerator).
    pub completed: u64,
    /// Σ duration of completed sessions (SDT).
    pub completed_ms: u64,
    /// Calls with a post-dial delay (SRD), its total and its histogram over
    /// [`PDD_BUCKETS_MS`] plus one.
    pub pdd_count: u64,
    pub pdd_ms: u64,
    pub pdd_buckets: Vec<u64>,
    /// Calls ended by a BYE whose final response was seen (RFC 6076 SDD), the delays'
    /// total and their histogram over [`SDD_BUCKETS_MS`] plus one.
    pub sdd_count: u64,
    pub sdd_ms: u64,
    pub sdd_buckets: Vec<u64>,
    /// REGISTER attempts of the node (from its `teledge.registrations/1` records, counted
    /// in the interval of the node's *first* service only: registrations belong to no
    /// service), that ended in the interval: registered, failed or timed out (RFC 6076
    /// IRA's numerator: `registrations_ineffective`), challenged and not retried.
    pub registrations: u64,
    pub registered: u64,
    pub registrations_ineffective: u64,
    pub registrations_challenge_unanswered: u64,
    /// REGISTERs not timed (too many attempts open at once).
    pub registrations_not_timed: u64,
    /// Σ registration request delay (RFC 6076 RRD: first REGISTER → 2xx, challenges
    /// included) and its histogram over
    /// [`RRD_BUCKETS_MS`](crate::record::registration::RRD_BUCKETS_MS) plus one.
    pub rrd_ms: u64,
    pub rrd_buckets: Vec<u64>,
}
