//! Intervals: 15, 30 or 60 minutes aligned in local time of an IANA zone (with `jiff`), and
//! the [`Aggregator`] that keeps each service's open intervals, closes them after a grace
//! and re-emits them with a higher revision when a late contact changes them.
//!
//! Alignment: within a stretch of constant UTC offset, intervals start where the local
//! clock shows a multiple of the length (so `+05:45` gets quarter-hours at :00, :15, ... of
//! local time); a change of offset also starts an interval. A spring-forward day in
//! Europe/Berlin has 92 quarter-hours, a fall-back day 100 (02:00–03:00 twice, told apart by
//! the offset in `local_start`).
//!
//! Attribution: a contact is counted whole in one interval, the one holding its
//! service-level event (default, as Cisco and Genesys: answer, abandon or end, or arrival +
//! T if that came first) or its arrival. Its concurrency runs over every interval it spans.
//!
//! Joining (with [`Aggregator::with_queue_join`], when a queue source is configured): a call
//! record and a queue record of the same contact are counted once, queue figures from the
//! queue, the rest from SIP; each waits at most the join window ([`JOIN_WINDOW`] in the
//! daemon) for its partner, at most [`MAX_JOIN_WAITING`] of each wait (the oldest beyond is
//! counted alone, `join_overflow`). Registrations: the node's per-minute registration
//! records are summed into the first service's interval holding the minute
//! ([`Aggregator::registrations`]); so is every call's RFC 6076 facts, whatever its service
//! (`node_sip`, [`Aggregator::call`]).
//!
//! Agents ([`Aggregator::agent_state`]): each agent's presence in each queue is followed
//! from one `teledge.agent/1` change to the next (at most [`MAX_AGENT_SPANS`]); the time
//! between is added to the intervals it spans, split exactly at their boundaries, and every
//! open presence is cut at each [`Aggregator::tick`] and at [`Aggregator::finish`], so an
//! interval holds its agents' time up to its end when it closes.
//!
//! Emission: an interval is emitted (revision 0, `final: true`) once `grace` has passed
//! after its end; from the first [`Aggregator::tick`] on, every interval of every service is,
//! with contacts or without (a missing record means the aggregator was not running). A contact that changes an emitted interval marks it; it is re-emitted
//! (revision + 1) at most once per `grace`. Closed intervals are held for
//! [`RETAIN_CLOSED`]; a contact for an interval no longer held (or more than [`AHEAD`] ahead
//! of the clock: a broken source) is counted as `too_late` in its service's interval holding
//! `now`; a contact's activity is followed for at most [`MAX_ACTIVE`]. Memory: per held interval the sums and one entry
//! per contact start and end (concurrency), bounded by the contacts of the retained hours.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::tz::TimeZone;

use super::contact::Contact;
use super::service::Services;
use crate::record::agent::{AgentPresence, AgentStateRecord};
use crate::record::interval::{
    IntervalRecord, IntervalSums, INTERVAL_SCHEMA, MAX_PAUSE_REASONS, NO_PAUSE_REASON,
    OTHER_PAUSE_REASON,
};
use crate::time::Timestamp;

/// How long closed intervals are held for late contacts (the default longest call is 4 h).
pub const RETAIN_CLOSED: Duration = Duration::from_secs(6 * 3600);
/// How far ahead of the aggregator's clock a contact may be counted: times beyond are a
/// broken source, and each would hold an interval.
pub const AHEAD: Duration = Duration::from_secs(86_400);
/// Defined beside the queue facts, the lowest module that needs it (no import loop).
pub use super::queue::MAX_ACTIVE;

/// Which interval a contact counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// The service-level event (answer, abandon, end, or threshold expiry).
    Event,
    Arrival,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Event => "event",
            Attribution::Arrival => "arrival",
        }
    }
}

/// Interval boundaries in a zone.
#[derive(Debug, Clone)]
pub struct IntervalClock {
    zone: TimeZone,
    zone_name: String,
    minutes: u32,
}

/// Why an interval clock cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("{0:?}: unknown time zone ({1})")]
    Zone(String, String),
    #[error("{0}: interval must be 15, 30 or 60 minutes")]
    Minutes(u32),
}

const NANOS: i64 = 1_000_000_000;

impl IntervalClock {
    pub fn new(zone: &str, minutes: u32) -> Result<IntervalClock, ClockError> {
        if ![15, 30, 60].contains(&minutes) {
            return Err(ClockError::Minutes(minutes));
        }
        let tz = crate::time::zone(zone)
            .map_err(|e| ClockError::Zone(zone.to_owned(), e.to_string()))?;
        Ok(IntervalClock {
            zone: tz,
            zone_name: zone.to_owned(),
            minutes,
        })
    }

    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    pub fn minutes(&self) -> u32 {
        self.minutes
    }

    fn jiff(t: Timestamp) -> jiff::Timestamp {
        jiff::Timestamp::from_nanosecond(i128::from(t.as_nanos()))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    fn ours(t: jiff::Timestamp) -> Timestamp {
        Timestamp::from_nanos(i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX))
    }

    /// The interval holding `t`: `[start, end)`.
    pub fn interval_of(&self, t: Timestamp) -> (Timestamp, Timestamp) {
        let jt = Self::jiff(t);
        let offset = i64::from(self.zone.to_offset(jt).seconds());
        let secs = t.as_nanos().div_euclid(NANOS);
        let length = i64::from(self.minutes) * 60;
        let local = secs + offset;
        let aligned = local - local.rem_euclid(length) - offset;
        let mut start = Timestamp::from_nanos(aligned.saturating_mul(NANOS));
        let mut end = Timestamp::from_nanos((aligned + length).saturating_mul(NANOS));
        // A change of offset starts an interval (and ends the one before).
        let just_after = Self::jiff(Timestamp::from_nanos(t.as_nanos().saturating_add(1)));
        if let Some(prev) = self.zone.preceding(just_after).next() {
            start = start.max(Self::ours(prev.timestamp()));
        }
        if let Some(next) = self.zone.following(jt).next() {
            end = end.min(Self::ours(next.timestamp()));
        }
        (start, end)
    }

    /// `start` in local time with its offset, RFC 3339 (`2026-03-29T03:00:00+02:00`).
    pub fn local(&self, start: Timestamp) -> String {
        let t = Self::jiff(start);
        let offset = self.zone.to_offset(t);
        let secs = offset.seconds();
        let sign = if secs < 0 { '-' } else { '+' };
        let abs = secs.unsigned_abs();
        // RFC 3339 has no seconds in an offset: historical LMT offsets are cut to minutes.
        format!(
            "{}{sign}{:02}:{:02}",
            offset.to_datetime(t).strftime("%Y-%m-%dT%H:%M:%S"),
            abs / 3600,
            abs % 3600 / 60
        )
    }
}

/// Settings of the statistics (`[stats]` and `[[service]]`).
#[derive(Debug, Clone)]
pub struct StatsSettings {
    pub clock: IntervalClock,
    pub attribution: Attribution,
    /// How long after its end an interval waits for late contacts before it is emitted.
    pub grace: Duration,
    pub services: Services,
}

impl StatsSettings {
    /// Quarter-hours in UTC, by event time, a 5-minute grace, one `default` service.
    pub fn utc_default() -> StatsSettings {
        StatsSettings {
            clock: IntervalClock {
                zone: TimeZone::UTC,
                zone_name: "UTC".into(),
                minutes: 15,
            },
            attribution: Attribution::Event,
            grace: Duration::from_secs(300),
            services: Services::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Held {
    end: Timestamp,
    sums: IntervalSums,
    /// Concurrency as a difference map: second offset → change in active contacts.
    active: BTreeMap<u32, i64>,
    /// Revisions emitted so far (0: never emitted).
    emitted: u32,
    /// Changed since its last emission.
    dirty: bool,
    last_emitted: Option<Timestamp>,
}

impl Held {
    fn runs(&self) -> Vec<[u32; 3]> {
        let mut runs: Vec<[u32; 3]> = Vec::new();
        let mut level: i64 = 0;
        let mut at: u32 = 0;
        for (&offset, &delta) in &self.active {
            if offset > at && level > 0 {
                runs.push([at, offset - at, level as u32]);
            }
            level += delta;
            at = offset;
        }
        // One canonical form (adjacent runs of one level joined), so records compare equal
        // whatever order their contacts came in.
        super::kpi::concurrency_runs(&super::kpi::concurrency_dense(&runs))
    }
}

/// Counts of what the aggregator did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AggregatorCounters {
    pub contacts: u64,
    /// Calls no service matched.
    pub unclassified: u64,
    pub too_late: u64,
    /// Queue records that tell no arrival ([`super::QueueFact::from_record`]): not counted.
    pub queue_no_arrival: u64,
    /// Call records joined with a queue record of the same contact (counted once).
    pub joined: u64,
    /// Records counted on their own before their wait for a partner ended:
    /// [`MAX_JOIN_WAITING`] were waiting.
    pub join_overflow: u64,
    pub records: u64,
    pub revisions: u64,
    /// Agent state records taken (`teledge.agent/1`).
    pub agent_states: u64,
    /// Agent state records of a queue no `[[service]]` is named like: not counted.
    pub agent_states_unclassified: u64,
    /// Agent state changes not followed: [`MAX_AGENT_SPANS`] agents and queues were open.
    pub agent_spans_refused: u64,
    /// Agent logins or logoffs whose interval was no longer held.
    pub agent_too_late: u64,
    /// Calls counted in the node's RFC 6076 section (`node_sip`).
    pub node_calls: u64,
}

/// Most agents × queues followed at once (the queue sources track at most 10,000 agents);
/// a state change beyond is counted (`agents.refused`, `agent_spans_refused`), not followed.
pub const MAX_AGENT_SPANS: usize = 50_000;

/// An agent's presence in a queue since its last change (or the last cut at a tick).
#[derive(Debug, Clone)]
struct AgentSpan {
    service: usize,
    since: Timestamp,
    state: AgentPresence,
    reason: Option<String>,
}

/// What joins a call record to a queue record of the same contact, made the way queue
/// records carry them (pseudonymised at ingest, see [`crate::privacy`]): the call's
/// Call-ID as an identifier, its caller numbers (the From user and the asserted identity's)
/// as numbers. Made by whoever holds the pseudonymiser (the daemon's spool writer, `teledge
/// report`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinKeys {
    pub call_id: String,
    pub callers: Vec<String>,
}

impl JoinKeys {
    /// The keys of a call record (clear, before the spooler pseudonymises it), made by
    /// `pseudonymizer` as the queue sources make theirs.
    pub fn of(
        call: &crate::record::CallRecord,
        pseudonymizer: &crate::privacy::Pseudonymizer,
    ) -> JoinKeys {
        let mut callers: Vec<String> = [Some(&call.caller), call.asserted_identity.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| p.user.as_deref())
            .filter(|u| !u.is_empty())
            .map(|u| pseudonymizer.number(u))
            .collect();
        callers.dedup();
        JoinKeys {
            call_id: pseudonymizer.identifier(&call.call_id),
            callers,
        }
    }
}

/// How far (seconds) a queue's arrival may lie outside its call (INVITE to end) and still
/// join it: `queue_log` times are whole seconds, and the PBX's clock is not the capture's.
pub const JOIN_SLACK: Duration = Duration::from_secs(2);
/// How long a call record or a queue record waits for its partner before it is counted on
/// its own (the daemon; `teledge report` has every record at hand and waits to the end).
pub const JOIN_WINDOW: Duration = Duration::from_secs(30);
/// Most records waiting for a partner; beyond, the oldest is counted on its own now
/// (`join_overflow`).
pub const MAX_JOIN_WAITING: usize = 20_000;

#[derive(Debug)]
struct WaitingCall {
    until: Timestamp,
    now: Timestamp,
    /// The call's contact, with `service` its classification (or `usize::MAX`: none).
    contact: Contact,
    keys: JoinKeys,
}

#[derive(Debug)]
struct WaitingFact {
    until: Timestamp,
    now: Timestamp,
    fact: super::QueueFact,
}

/// Records waiting for a partner, oldest first, found by their join keys (Call-ID, caller
/// numbers) without a scan of all of them.
#[derive(Debug)]
struct Waiting<T> {
    next: u64,
    items: BTreeMap<u64, (Vec<String>, T)>,
    by_key: std::collections::HashMap<String, Vec<u64>>,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Waiting {
            next: 0,
            items: BTreeMap::new(),
            by_key: std::collections::HashMap::new(),
        }
    }
}

impl<T> Waiting<T> {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn push_back(&mut self, keys: Vec<String>, item: T) {
        let seq = self.next;
        self.next += 1;
        for key in &keys {
            self.by_key.entry(key.clone()).or_default().push(seq);
        }
        self.items.insert(seq, (keys, item));
    }

    fn front(&self) -> Option<&T> {
        self.items.first_key_value().map(|(_, (_, item))| item)
    }

    fn remove(&mut self, seq: u64) -> Option<T> {
        let (keys, item) = self.items.remove(&seq)?;
        for key in keys {
            if let Some(seqs) = self.by_key.get_mut(&key) {
                seqs.retain(|s| *s != seq);
                if seqs.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
        Some(item)
    }

    fn pop_front(&mut self) -> Option<T> {
        let seq = *self.items.first_key_value()?.0;
        self.remove(seq)
    }

    /// The records waiting under any of `keys`, each once.
    fn candidates<'a>(&'a self, keys: &[&str]) -> Vec<(u64, &'a T)> {
        let mut seqs: Vec<u64> = keys
            .iter()
            .filter_map(|k| self.by_key.get(*k))
            .flatten()
            .copied()
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.iter()
            .filter_map(|s| self.items.get(s).map(|(_, item)| (*s, item)))
            .collect()
    }
}

/// The keys a queue fact is found by: its SIP Call-ID when told (it decides alone), else
/// its caller.
fn fact_keys(fact: &super::QueueFact) -> Vec<String> {
    match (&fact.sip_call_id, &fact.caller) {
        (Some(id), _) => vec![id.clone()],
        (None, Some(caller)) => vec![caller.clone()],
        (None, None) => Vec::new(),
    }
}

/// Calls and queue facts waiting for their partner (see [`Aggregator::with_queue_join`]).
#[derive(Debug)]
struct Join {
    window: Duration,
    max_waiting: usize,
    calls: Waiting<WaitingCall>,
    facts: Waiting<WaitingFact>,
}

/// How well a queue fact fits a call: lower is better; `None`: not the same contact. The
/// SIP Call-ID (when the queue source tells it) decides alone; otherwise the caller's
/// number must be the same and the queue stay lie within the call (± [`JOIN_SLACK`]), the
/// nearest arrival first, a call classified into the queue's service before another.
fn fit(fact: &super::QueueFact, fact_service: Option<usize>, call: &WaitingCall) -> Option<u64> {
    if let Some(id) = &fact.sip_call_id {
        return (*id == call.keys.call_id).then_some(0);
    }
    let caller = fact.caller.as_ref()?;
    if !call.keys.callers.contains(caller) {
        return None;
    }
    let slack = JOIN_SLACK.as_nanos() as i64;
    let enter = fact.enter_time.as_nanos();
    let (arrival, end) = (call.contact.arrival.as_nanos(), call.contact.end.as_nanos());
    if enter < arrival.saturating_sub(slack) || enter > end.saturating_add(slack) {
        return None;
    }
    let distance_ms = (enter - arrival).unsigned_abs() / 1_000_000;
    let other_service = u64::from(fact_service.is_some_and(|s| s != call.contact.service));
    Some(1 + other_service * (1 << 40) + distance_ms)
}

/// Per-service intervals: contacts in, interval records out.
#[derive(Debug)]
pub struct Aggregator {
    settings: StatsSettings,
    node: String,
    run: String,
    /// (service, interval start) → figures.
    held: BTreeMap<(usize, Timestamp), Held>,
    counters: AggregatorCounters,
    join: Option<Join>,
    /// Open agent presences by (agent pseudonym, queue).
    agent_spans: BTreeMap<(String, Option<String>), AgentSpan>,
    /// The clock of the last [`Aggregator::tick`]: intervals older than [`RETAIN_CLOSED`]
    /// before it may be gone (never ticked, as `teledge report`: every interval is held).
    last_tick: Option<Timestamp>,
}

/// A random id for a run's interval records ([`Aggregator::new`]'s `run`), drawn at every
/// start of the daemon and of `replay --forward`: a restarted run's records add up with the
/// last run's instead of superseding them. Without randomness the clock tells runs apart as
/// well (a fixed id would make two runs' records supersede each other).
pub fn run_id() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        return Timestamp::now().as_nanos() as u64;
    }
    u64::from_le_bytes(bytes)
}

impl Aggregator {
    /// An aggregator for `node`; `run` tells its records from another run's ([`run_id`]).
    pub fn new(settings: StatsSettings, node: &str, run: u64) -> Aggregator {
        Aggregator {
            settings,
            node: node.to_owned(),
            run: format!("{run:016x}"),
            held: BTreeMap::new(),
            counters: AggregatorCounters::default(),
            join: None,
            agent_spans: BTreeMap::new(),
            last_tick: None,
        }
    }

    /// An agent state change (`teledge.agent/1`): the agent's time in its queue since its
    /// last change is added to the intervals it spans, split exactly at their boundaries
    /// (staffed, and paused by reason); a start or end of being staffed counts as a login
    /// or logoff in the interval holding it. The presence counts in the `[[service]]`
    /// named like its queue; a presence without a queue (FreeSWITCH agents, an Asterisk
    /// agent logged in before any queue event named its queues) in the first service;
    /// a queue no service is named like: not counted (`agent_states_unclassified`). An
    /// agent still staffed is counted up to `now` at every [`Aggregator::tick`] and at
    /// [`Aggregator::finish`], so a closing interval holds its agents' time up to its end.
    pub fn agent_state(&mut self, r: &AgentStateRecord, now: Timestamp) {
        self.counters.agent_states += 1;
        let service = match &r.queue {
            Some(q) => self.settings.services.by_name(q),
            None => (!self.settings.services.is_empty()).then_some(0),
        };
        let key = (r.agent.clone(), r.queue.clone());
        let previous = self.agent_spans.remove(&key);
        if let Some(span) = &previous {
            self.accrue(span, r.time, now);
        }
        let Some(service) = service else {
            self.counters.agent_states_unclassified += 1;
            return;
        };
        let was_on = previous.is_some();
        let is_on = r.state != AgentPresence::Off;
        // A presence read back at a start is no login.
        if was_on != is_on && r.event != "restored" {
            match self.agent_interval(service, r.time, now) {
                Some(held) => {
                    if is_on {
                        held.sums.agents.logins += 1;
                    } else {
                        held.sums.agents.logoffs += 1;
                    }
                    held.dirty = true;
                }
                None => self.counters.agent_too_late += 1,
            }
        }
        if !is_on {
            return;
        }
        if self.agent_spans.len() >= MAX_AGENT_SPANS {
            self.counters.agent_spans_refused += 1;
            let (open, open_end) = self.settings.clock.interval_of(now);
            let held = self.hold(service, open, open_end);
            held.sums.agents.refused += 1;
            held.dirty = true;
            return;
        }
        self.agent_spans.insert(
            key,
            AgentSpan {
                service,
                since: r.time,
                state: r.state,
                reason: r.reason.clone(),
            },
        );
    }

    /// Agents × queues followed now.
    pub fn agent_spans(&self) -> usize {
        self.agent_spans.len()
    }

    /// The oldest interval end still held, when intervals have been forgotten.
    fn horizon(&self) -> Option<Timestamp> {
        self.last_tick.map(|t| {
            Timestamp::from_nanos(t.as_nanos().saturating_sub(RETAIN_CLOSED.as_nanos() as i64))
        })
    }

    /// The interval holding `t` for an agent figure, `None` when it is no longer held or
    /// more than [`AHEAD`] ahead of `now`.
    fn agent_interval(
        &mut self,
        service: usize,
        t: Timestamp,
        now: Timestamp,
    ) -> Option<&mut Held> {
        let (start, end) = self.settings.clock.interval_of(t);
        if self.horizon().is_some_and(|h| end < h) || t > now.plus(AHEAD) {
            return None;
        }
        Some(self.hold(service, start, end))
    }

    /// Adds an agent's presence from `span.since` to `to` to the intervals it spans, each
    /// piece in whole milliseconds (rounded down); pieces in intervals no longer held, and
    /// any part more than [`MAX_ACTIVE`] before `to`, are counted in `agents.too_late_ms`
    /// of the interval open at `now`.
    fn accrue(&mut self, span: &AgentSpan, to: Timestamp, now: Timestamp) {
        let to = to.min(now.plus(AHEAD));
        let floor = to.as_nanos().saturating_sub(MAX_ACTIVE.as_nanos() as i64);
        let mut t = Timestamp::from_nanos(span.since.as_nanos().max(floor));
        let horizon = self.horizon();
        // Time further back than MAX_ACTIVE is not walked interval by interval (a bogus
        // or long-silent presence must not hold years of intervals): counted as late.
        let mut late_ms =
            (t.as_nanos().min(to.as_nanos()) - span.since.as_nanos()).max(0) as u64 / 1_000_000;
        while t < to {
            let (start, end) = self.settings.clock.interval_of(t);
            let piece_end = to.min(end);
            if piece_end <= t {
                break;
            }
            let ms = ((piece_end.as_nanos() - t.as_nanos()) / 1_000_000) as u64;
            if horizon.is_some_and(|h| end < h) {
                late_ms += ms;
            } else {
                let held = self.hold(span.service, start, end);
                let agents = &mut held.sums.agents;
                agents.staffed_ms += ms;
                if span.state == AgentPresence::Paused {
                    agents.paused_ms += ms;
                    let reason = span.reason.as_deref().unwrap_or(NO_PAUSE_REASON);
                    let by = &mut agents.paused_by_reason_ms;
                    if by.contains_key(reason) || by.len() < MAX_PAUSE_REASONS {
                        *by.entry(reason.to_owned()).or_default() += ms;
                    } else {
                        *by.entry(OTHER_PAUSE_REASON.to_owned()).or_default() += ms;
                        agents.pause_reasons_folded += 1;
                    }
                }
                held.dirty = true;
            }
            t = piece_end;
        }
        if late_ms > 0 {
            let (open, open_end) = self.settings.clock.interval_of(now);
            let held = self.hold(span.service, open, open_end);
            held.sums.agents.too_late_ms += late_ms;
            held.dirty = true;
        }
    }

    /// Counts every open agent presence up to `now`; they go on from there. The daemon's
    /// [`Aggregator::tick`] does this every second; a reader of a log, which has no ticks
    /// (`teledge report`), calls it as the log's time advances — a presence is counted
    /// back at most [`MAX_ACTIVE`] from where it is cut, so one that ran unchanged
    /// longer between two cuts would lose its beginning.
    pub fn follow_agents(&mut self, now: Timestamp) {
        self.cut_agents(now);
    }

    /// Counts every open agent presence up to `at` and stops following them (no logoff
    /// counted): the end of a `queue_log` that `teledge report` read, whose agents still
    /// logged in count up to its last line.
    pub fn end_agents(&mut self, at: Timestamp) {
        self.cut_agents(at);
        self.agent_spans.clear();
    }

    /// Counts every open agent presence up to `now` (the presences go on from `now`).
    fn cut_agents(&mut self, now: Timestamp) {
        let mut spans = std::mem::take(&mut self.agent_spans);
        for span in spans.values_mut() {
            if span.since < now {
                self.accrue(span, now, now);
                span.since = now;
            }
        }
        self.agent_spans = spans;
    }

    /// A call for the node's RFC 6076 section (`node_sip`): every call whose INVITE was
    /// seen and that ended (as a contact would be, whatever its service), in the first
    /// service's interval holding its service-level event (or arrival, by the
    /// attribution).
    fn node_call(&mut self, call: &crate::record::CallRecord, now: Timestamp) {
        let Some(first) = self.settings.services.get(0) else {
            return;
        };
        let contact = Contact::from_call(call, 0);
        if contact.outcome == super::contact::ContactOutcome::Excluded {
            return;
        }
        let Some(sip) = contact.sip else {
            return;
        };
        let at = match self.settings.attribution {
            Attribution::Event => contact.event_time(first.sl_threshold_s),
            Attribution::Arrival => contact.arrival,
        };
        let horizon = Timestamp::from_nanos(
            now.as_nanos()
                .saturating_sub(RETAIN_CLOSED.as_nanos() as i64),
        );
        let (start, end) = self.settings.clock.interval_of(at);
        if end < horizon || at > now.plus(AHEAD) {
            let (open, open_end) = self.settings.clock.interval_of(now);
            let held = self.hold(0, open, open_end);
            held.sums.node_calls_too_late += 1;
            held.dirty = true;
            return;
        }
        self.counters.node_calls += 1;
        let held = self.hold(0, start, end);
        held.sums.node_sip.add(&sip);
        held.dirty = true;
    }

    /// Joins call records with the queue records of the same contacts (when a queue source
    /// is configured): each call record ([`Aggregator::call_keyed`]) and each queue record
    /// ([`Aggregator::queue_record`]) waits up to `window` for its partner. Joined, the
    /// contact counts **once**, in the queue's service, its queue figures from the queue
    /// (arrival, wait, outcome, talk, wrap-up, RONA, transfers) and the rest from SIP (MOS,
    /// hold, RFC 6076 facts, who hung up when the queue does not say); a call no queue record
    /// joined counts as a call, a queue record no call joined as a queue contact on its own.
    /// At most `max_waiting` calls and as many queue facts wait (the daemon:
    /// [`MAX_JOIN_WAITING`]); beyond, the oldest is counted alone (`join_overflow`).
    pub fn with_queue_join(mut self, window: Duration, max_waiting: usize) -> Aggregator {
        self.join = Some(Join {
            window,
            max_waiting: max_waiting.max(1),
            calls: Waiting::default(),
            facts: Waiting::default(),
        });
        self
    }

    /// Records waiting for their partner: (calls, queue facts).
    pub fn join_waiting(&self) -> (usize, usize) {
        self.join
            .as_ref()
            .map_or((0, 0), |j| (j.calls.len(), j.facts.len()))
    }

    /// A call record with its [`JoinKeys`]: joined with a waiting queue record of the same
    /// contact, else waiting for one (with queue joins on), else counted at once like
    /// [`Aggregator::call`].
    pub fn call_keyed(&mut self, call: &crate::record::CallRecord, keys: JoinKeys, now: Timestamp) {
        if self.join.is_none() {
            return self.call(call, now);
        }
        self.node_call(call, now);
        let Some(join) = self.join.as_mut() else {
            return;
        };
        let classified = self.settings.services.classify(call);
        let waiting = WaitingCall {
            until: now.plus(join.window),
            now,
            contact: Contact::from_call(call, classified.unwrap_or(usize::MAX)),
            keys,
        };
        let services = &self.settings.services;
        let keys: Vec<String> = std::iter::once(waiting.keys.call_id.clone())
            .chain(waiting.keys.callers.iter().cloned())
            .collect();
        let lookup: Vec<&str> = keys.iter().map(String::as_str).collect();
        let best = join
            .facts
            .candidates(&lookup)
            .into_iter()
            .filter_map(|(i, f)| {
                Some((fit(&f.fact, services.by_name(&f.fact.queue), &waiting)?, i))
            })
            .min();
        if let Some((_, i)) = best {
            if let Some(f) = join.facts.remove(i) {
                self.counters.joined += 1;
                return self.joined(&f.fact, waiting.contact, now);
            }
        }
        if join.calls.len() >= join.max_waiting {
            if let Some(oldest) = join.calls.pop_front() {
                self.counters.join_overflow += 1;
                self.call_alone(oldest);
            }
        }
        if let Some(join) = self.join.as_mut() {
            join.calls.push_back(keys, waiting);
        }
    }

    fn call_alone(&mut self, w: WaitingCall) {
        if w.contact.service == usize::MAX {
            self.counters.unclassified += 1;
        } else {
            self.contact(&w.contact, w.now);
        }
    }

    /// A queue fact and the contact of its call, counted once (see `with_queue_join`).
    fn joined(&mut self, fact: &super::QueueFact, mut contact: Contact, now: Timestamp) {
        let service = self
            .settings
            .services
            .by_name(&fact.queue)
            .or((contact.service != usize::MAX).then_some(contact.service));
        let Some(service) = service else {
            self.counters.unclassified += 1;
            return;
        };
        contact.service = service;
        contact.apply_queue_fact(fact);
        self.contact(&contact, now);
    }

    /// A queue fact, joined with a waiting call of the same contact or waiting for one.
    pub fn queue_fact_joining(&mut self, fact: super::QueueFact, now: Timestamp) {
        let Some(join) = self.join.as_mut() else {
            return self.queue_fact(&fact, None, now);
        };
        let service = self.settings.services.by_name(&fact.queue);
        let keys = fact_keys(&fact);
        if keys.is_empty() {
            // Neither a Call-ID nor a caller: nothing can join it.
            return self.queue_fact(&fact, None, now);
        }
        let lookup: Vec<&str> = keys.iter().map(String::as_str).collect();
        let best = join
            .calls
            .candidates(&lookup)
            .into_iter()
            .filter_map(|(i, c)| Some((fit(&fact, service, c)?, i)))
            .min();
        if let Some((_, i)) = best {
            if let Some(call) = join.calls.remove(i) {
                self.counters.joined += 1;
                return self.joined(&fact, call.contact, now);
            }
        }
        if join.facts.len() >= join.max_waiting {
            if let Some(oldest) = join.facts.pop_front() {
                self.counters.join_overflow += 1;
                self.queue_fact(&oldest.fact, None, oldest.now);
            }
        }
        if let Some(join) = self.join.as_mut() {
            let until = now.plus(join.window);
            join.facts.push_back(keys, WaitingFact { until, now, fact });
        }
    }

    /// Counts on their own the calls and queue facts whose wait ended by `now` (all of them
    /// with `all`).
    fn flush_join(&mut self, now: Timestamp, all: bool) {
        loop {
            let Some(join) = self.join.as_mut() else {
                return;
            };
            let call = join.calls.front().is_some_and(|c| all || c.until <= now);
            let fact = join.facts.front().is_some_and(|f| all || f.until <= now);
            if call {
                if let Some(c) = join.calls.pop_front() {
                    self.call_alone(c);
                }
            } else if fact {
                if let Some(f) = join.facts.pop_front() {
                    self.queue_fact(&f.fact, None, f.now);
                }
            } else {
                return;
            }
        }
    }

    pub fn settings(&self) -> &StatsSettings {
        &self.settings
    }

    pub fn counters(&self) -> AggregatorCounters {
        self.counters
    }

    /// A call record, classified (clear numbers) and counted if it is a contact.
    pub fn call(&mut self, call: &crate::record::CallRecord, now: Timestamp) {
        self.node_call(call, now);
        match self.settings.services.classify(call) {
            Some(service) => self.contact(&Contact::from_call(call, service), now),
            None => self.counters.unclassified += 1,
        }
    }

    /// A queue call: its [`QueueFact`](super::QueueFact) is the authority for the queue
    /// figures; the call record of its SIP leg, when the queue source joined one, gives
    /// hold, media quality and the SIP facts. The service is the queue's name when a
    /// `[[service]]` has it, else the call's classification; neither: not counted
    /// (unclassified).
    pub fn queue_fact(
        &mut self,
        fact: &super::QueueFact,
        call: Option<&crate::record::CallRecord>,
        now: Timestamp,
    ) {
        if let Some(call) = call {
            self.node_call(call, now);
        }
        let service = self
            .settings
            .services
            .by_name(&fact.queue)
            .or_else(|| call.and_then(|c| self.settings.services.classify(c)));
        let Some(service) = service else {
            self.counters.unclassified += 1;
            return;
        };
        let contact = match call {
            Some(call) => {
                let mut contact = Contact::from_call(call, service);
                contact.apply_queue_fact(fact);
                contact
            }
            None => Contact::from_queue_fact(fact, service),
        };
        self.contact(&contact, now);
    }

    /// A queue contact record (`teledge.queue/1`) as a [`QueueFact`](super::QueueFact):
    /// with queue joins on ([`Aggregator::with_queue_join`]) joined with the call record of
    /// the same contact (by the keys of [`JoinKeys`], which the caller made with the same
    /// pseudonymiser as the queue record's identities), else on its own. It counts in the
    /// `[[service]]` named like its queue, else in its call's service, else nowhere
    /// (`unclassified`). A record telling no arrival is counted in `queue_no_arrival` — the
    /// counter and the `queue_no_arrival` sum of the interval open at `now` (its queue's
    /// service, else the first), so the collector learns of it too.
    pub fn queue_record(&mut self, record: &crate::record::queue::QueueCallRecord, now: Timestamp) {
        match super::QueueFact::from_record(record) {
            Some(fact) => self.queue_fact_joining(fact, now),
            None => {
                // Announced upstream too: in the interval of its queue's service (else the
                // first service) open at `now`, like a contact too late.
                self.counters.queue_no_arrival += 1;
                let service = self.settings.services.by_name(&record.queue).unwrap_or(0);
                if service < self.settings.services.len() {
                    let (open, open_end) = self.settings.clock.interval_of(now);
                    let held = self.hold(service, open, open_end);
                    held.sums.queue_no_arrival += 1;
                    held.dirty = true;
                }
            }
        }
    }

    /// A minute of the node's REGISTER attempts (`teledge.registrations/1`): summed into the
    /// `sip` section of the interval holding the minute, in the first service (registrations
    /// belong to no service; the first one, `default` without `[[service]]`, carries the
    /// node's figures, so adding services up never counts them twice). Intervals start on
    /// whole minutes in every zone whose offset is whole minutes, so a minute lies in one
    /// interval. Too late (or too far ahead) like a contact: counted in `too_late`.
    pub fn registrations(
        &mut self,
        r: &crate::record::registration::RegistrationsRecord,
        now: Timestamp,
    ) {
        if self.settings.services.is_empty() {
            return;
        }
        let horizon = Timestamp::from_nanos(
            now.as_nanos()
                .saturating_sub(RETAIN_CLOSED.as_nanos() as i64),
        );
        let (start, end) = self.settings.clock.interval_of(r.minute_start);
        if end < horizon || r.minute_start > now.plus(AHEAD) {
            self.counters.too_late += 1;
            let (open, open_end) = self.settings.clock.interval_of(now);
            let held = self.hold(0, open, open_end);
            held.sums.too_late += 1;
            held.dirty = true;
            return;
        }
        let held = self.hold(0, start, end);
        held.sums.sip.add_registrations(r);
        held.sums.node_sip.add_registrations(r);
        held.dirty = true;
    }

    /// Counts a contact in its interval and its concurrency in the intervals it spans.
    /// `now` is the aggregator's clock (the capture time in replay): an interval closed more
    /// than [`RETAIN_CLOSED`] before it is no longer held.
    pub fn contact(&mut self, c: &Contact, now: Timestamp) {
        let Some(threshold) = self
            .settings
            .services
            .get(c.service)
            .map(|s| s.sl_threshold_s)
        else {
            self.counters.unclassified += 1;
            return;
        };
        let at = match self.settings.attribution {
            Attribution::Event => c.event_time(threshold),
            Attribution::Arrival => c.arrival,
        };
        let horizon = Timestamp::from_nanos(
            now.as_nanos()
                .saturating_sub(RETAIN_CLOSED.as_nanos() as i64),
        );
        let (start, end) = self.settings.clock.interval_of(at);
        if end < horizon || at > now.plus(AHEAD) {
            self.counters.too_late += 1;
            let (open, open_end) = self.settings.clock.interval_of(now);
            let held = self.hold(c.service, open, open_end);
            held.sums.too_late += 1;
            held.dirty = true;
            return;
        }
        self.counters.contacts += 1;
        // Fields borrowed apart: the service's settings are read while its interval is
        // written, without a copy per contact.
        let held = self.held.entry((c.service, start)).or_insert_with(|| Held {
            end,
            ..Held::default()
        });
        if let Some(service) = self.settings.services.get(c.service) {
            held.sums.add(c, service);
        }
        held.dirty = true;
        if c.outcome == super::contact::ContactOutcome::Excluded {
            return;
        }
        // Active during second s when it overlaps [s, s + 1): floor(arrival) <= s <
        // ceil(end), at least the second it arrived in (a call shorter than a second
        // counts too).
        let first = c.arrival.max(horizon).as_nanos().div_euclid(NANOS);
        let last = ceil_secs(c.end)
            .max(first + 1)
            .min(first.saturating_add(MAX_ACTIVE.as_secs() as i64))
            .min(ceil_secs(now.plus(AHEAD)));
        let mut s = first;
        while s < last {
            let (start, end) = self
                .settings
                .clock
                .interval_of(Timestamp::from_nanos(s * NANOS));
            let start_s = start.as_nanos().div_euclid(NANOS);
            let end_s = end.as_nanos().div_euclid(NANOS);
            let to = last.min(end_s);
            let held = self.hold(c.service, start, end);
            *held.active.entry((s - start_s) as u32).or_default() += 1;
            *held.active.entry((to - start_s) as u32).or_default() -= 1;
            held.dirty = true;
            s = to;
        }
    }

    fn hold(&mut self, service: usize, start: Timestamp, end: Timestamp) -> &mut Held {
        self.held.entry((service, start)).or_insert_with(|| Held {
            end,
            ..Held::default()
        })
    }

    fn record(
        &self,
        service: usize,
        start: Timestamp,
        held: &Held,
        closed: bool,
        revision: u32,
    ) -> IntervalRecord {
        let settings = self
            .settings
            .services
            .get(service)
            .cloned()
            .unwrap_or_else(super::service::ServiceSettings::default_service);
        let mut sums = held.sums.clone();
        sums.concurrency = held.runs();
        let record_id = crate::record::stable_id(&[
            self.node.as_bytes(),
            self.run.as_bytes(),
            settings.name.as_bytes(),
            &start.as_nanos().to_be_bytes(),
            &revision.to_be_bytes(),
            &[u8::from(closed)],
        ]);
        IntervalRecord {
            schema: INTERVAL_SCHEMA.to_owned(),
            record_id,
            node: self.node.clone(),
            run: self.run.clone(),
            service: settings.name.clone(),
            interval_start: start,
            interval_end: held.end,
            interval_minutes: self.settings.clock.minutes,
            time_zone: self.settings.clock.zone_name.clone(),
            local_start: self.settings.clock.local(start),
            attribution: self.settings.attribution.as_str().to_owned(),
            revision,
            closed,
            sl_threshold_s: settings.sl_threshold_s,
            sl_target_percent: settings.sl_target_percent,
            short_abandon_s: settings.short_abandon_s,
            sums,
        }
    }

    /// The interval records due at `now`: intervals whose grace has passed (first
    /// emission), and changed emitted ones (a revision, at most once per grace). Intervals
    /// older than [`RETAIN_CLOSED`] are forgotten.
    pub fn tick(&mut self, now: Timestamp) -> Vec<IntervalRecord> {
        self.flush_join(now, false);
        self.last_tick = Some(now);
        self.cut_agents(now);
        let grace = self.settings.grace;
        // Every service has a current interval, with contacts or not: a missing record
        // then means the aggregator was not running, never "no calls".
        let (open_start, open_end) = self.settings.clock.interval_of(now);
        for service in 0..self.settings.services.len() {
            self.held
                .entry((service, open_start))
                .or_insert_with(|| Held {
                    end: open_end,
                    dirty: true,
                    ..Held::default()
                });
        }
        let mut due = Vec::new();
        for (&(service, start), held) in &self.held {
            let closes = held.end.plus(grace);
            let revise = held.last_emitted.is_none_or(|at| at.plus(grace) <= now);
            if now >= closes && held.dirty && revise {
                due.push((service, start));
            }
        }
        let mut out = Vec::new();
        for key in due {
            let Some(held) = self.held.get(&key) else {
                continue;
            };
            let revision = held.emitted;
            out.push(self.record(key.0, key.1, held, true, revision));
            if let Some(held) = self.held.get_mut(&key) {
                held.emitted += 1;
                held.dirty = false;
                held.last_emitted = Some(now);
            }
            self.counters.records += 1;
            self.counters.revisions += u64::from(revision > 0);
        }
        let horizon = Timestamp::from_nanos(
            now.as_nanos()
                .saturating_sub(RETAIN_CLOSED.as_nanos() as i64),
        );
        self.held.retain(|_, h| h.end >= horizon || h.dirty);
        out
    }

    /// Every interval not yet emitted in its last state, emitted now: closed when its end
    /// has passed `now`, else open (`final: false`). For the end of a replay or a run.
    pub fn finish(&mut self, now: Timestamp) -> Vec<IntervalRecord> {
        self.flush_join(now, true);
        self.cut_agents(now);
        let mut out = Vec::new();
        for (&(service, start), held) in &self.held {
            if held.dirty {
                out.push(self.record(service, start, held, held.end <= now, held.emitted));
            }
        }
        self.held.clear();
        self.counters.records += out.len() as u64;
        out
    }

    /// The open intervals' records at `now` (not emitted; for the live view and metrics).
    pub fn open(&self, now: Timestamp) -> Vec<IntervalRecord> {
        self.held
            .iter()
            .filter(|(_, h)| h.end > now)
            .map(|(&(service, start), held)| self.record(service, start, held, false, held.emitted))
            .collect()
    }
}

fn ceil_secs(t: Timestamp) -> i64 {
    let n = t.as_nanos();
    n.div_euclid(NANOS) + i64::from(n.rem_euclid(NANOS) != 0)
}

#[cfg(test)]
mod tests {
    //! Agent figures of the aggregator, every expected value worked out by hand in the
    //! test's doc (no value read back from the code under test).

    use super::*;

    #[test]
    fn every_run_draws_its_own_id() {
        // The daemon and `replay --forward` both take theirs here (one drew 0 on failure).
        let ids: std::collections::BTreeSet<u64> = (0..8).map(|_| run_id()).collect();
        assert_eq!(ids.len(), 8);
    }
    use crate::record::agent::{AgentPresence, AgentStateRecord, AGENT_SCHEMA};
    use crate::record::queue::QueueSource;
    use crate::stats::service::ServiceSettings;

    fn utc(t: &str) -> Timestamp {
        let t: jiff::Timestamp = t.parse().unwrap();
        Timestamp::from_nanos(t.as_nanosecond() as i64)
    }

    fn settings(zone: &str, queue: &str) -> StatsSettings {
        let mut service = ServiceSettings::default_service();
        service.name = queue.into();
        StatsSettings {
            clock: IntervalClock::new(zone, 15).unwrap(),
            attribution: Attribution::Event,
            grace: Duration::from_secs(300),
            services: Services::new(vec![service]),
        }
    }

    fn change(
        agent: &str,
        queue: Option<&str>,
        time: &str,
        state: AgentPresence,
        reason: Option<&str>,
    ) -> AgentStateRecord {
        AgentStateRecord {
            schema: AGENT_SCHEMA,
            record_id: String::new(),
            source: QueueSource::AsteriskQueueLog,
            group: "pbx".into(),
            agent: agent.into(),
            queue: queue.map(str::to_owned),
            time: utc(time),
            state,
            reason: reason.map(str::to_owned),
            event: "test",
        }
    }

    fn feed(a: &mut Aggregator, changes: &[AgentStateRecord]) {
        for c in changes {
            a.agent_state(c, c.time);
        }
    }

    /// `(local_start, staffed_ms, paused_ms, logins, logoffs)` of each record with agents.
    fn figures(records: &[IntervalRecord]) -> Vec<(String, u64, u64, u64, u64)> {
        let mut out: Vec<_> = records
            .iter()
            .filter(|r| r.sums.agents != Default::default())
            .map(|r| {
                let a = &r.sums.agents;
                (
                    r.local_start.clone(),
                    a.staffed_ms,
                    a.paused_ms,
                    a.logins,
                    a.logoffs,
                )
            })
            .collect();
        out.sort();
        out
    }

    /// One agent of queue `support`: member at 10:10:00, paused ("Lunch") at 10:20:00.5,
    /// unpaused at 10:50:00, removed at 11:05:30. By hand, per quarter-hour:
    /// - 10:00: staffed 10:10 → 10:15 = 300 s, a login;
    /// - 10:15: staffed 900 s, of them paused 10:20:00.5 → 10:30 = 599.5 s;
    /// - 10:30: staffed and paused 900 s;
    /// - 10:45: staffed 900 s, paused 10:45 → 10:50 = 300 s;
    /// - 11:00: staffed 11:00 → 11:05:30 = 330 s, a logoff.
    ///
    /// Total staffed 3,330 s (10:10 → 11:05:30), paused 1,799.5 s, all of it "Lunch".
    #[test]
    fn agent_time_is_split_exactly_at_interval_boundaries_with_pauses_by_reason() {
        let mut a = Aggregator::new(settings("UTC", "support"), "n", 1);
        let q = Some("support");
        feed(
            &mut a,
            &[
                change(
                    "h:a",
                    q,
                    "2026-01-05T10:10:00Z",
                    AgentPresence::Staffed,
                    None,
                ),
                change(
                    "h:a",
                    q,
                    "2026-01-05T10:20:00.5Z",
                    AgentPresence::Paused,
                    Some("Lunch"),
                ),
                change(
                    "h:a",
                    q,
                    "2026-01-05T10:50:00Z",
                    AgentPresence::Staffed,
                    None,
                ),
                change("h:a", q, "2026-01-05T11:05:30Z", AgentPresence::Off, None),
            ],
        );
        let records = a.finish(utc("2026-01-05T12:00:00Z"));
        assert_eq!(
            figures(&records),
            vec![
                ("2026-01-05T10:00:00+00:00".into(), 300_000, 0, 1, 0),
                ("2026-01-05T10:15:00+00:00".into(), 900_000, 599_500, 0, 0),
                ("2026-01-05T10:30:00+00:00".into(), 900_000, 900_000, 0, 0),
                ("2026-01-05T10:45:00+00:00".into(), 900_000, 300_000, 0, 0),
                ("2026-01-05T11:00:00+00:00".into(), 330_000, 0, 0, 1),
            ]
        );
        let lunch: u64 = records
            .iter()
            .map(|r| {
                r.sums
                    .agents
                    .paused_by_reason_ms
                    .get("Lunch")
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(lunch, 1_799_500);
    }

    /// An agent staffed from 10:10 and still logged in: the tick at 10:20:05 (the 10:00
    /// interval's end + the 5 min grace) emits 10:00 with the agent counted up to its end,
    /// 10:10 → 10:15 = 300 s; the open 10:15 interval holds 10:15 → 10:20:05 = 305 s. A
    /// queue no service is named like is not counted.
    #[test]
    fn an_agent_still_staffed_counts_up_to_the_interval_end_when_it_closes() {
        let mut a = Aggregator::new(settings("UTC", "support"), "n", 1);
        feed(
            &mut a,
            &[
                change(
                    "h:a",
                    Some("support"),
                    "2026-01-05T10:10:00Z",
                    AgentPresence::Staffed,
                    None,
                ),
                change(
                    "h:b",
                    Some("sales"),
                    "2026-01-05T10:10:00Z",
                    AgentPresence::Staffed,
                    None,
                ),
            ],
        );
        let closed = a.tick(utc("2026-01-05T10:20:05Z"));
        assert_eq!(
            figures(&closed),
            vec![("2026-01-05T10:00:00+00:00".into(), 300_000, 0, 1, 0)]
        );
        let open = a.open(utc("2026-01-05T10:20:05Z"));
        assert_eq!(
            figures(&open),
            vec![("2026-01-05T10:15:00+00:00".into(), 305_000, 0, 0, 0)]
        );
        assert_eq!(a.counters().agent_states_unclassified, 1);
        assert_eq!(a.agent_spans(), 1);
    }

    /// 17 pause reasons of 10 s each in one quarter-hour: 16 kept apart, the 17th counted
    /// under `_other` (10 s, one span folded); paused 170 s in all.
    #[test]
    fn pause_reasons_are_bounded_and_the_rest_counted() {
        let mut a = Aggregator::new(settings("UTC", "q"), "n", 1);
        let mut changes = Vec::new();
        for i in 0..17 {
            let reason = format!("r{i:02}");
            let start = format!("2026-01-05T10:00:{:02}Z", i * 2);
            changes.push(change(
                &format!("h:{i}"),
                Some("q"),
                &start,
                AgentPresence::Paused,
                Some(&reason),
            ));
        }
        for i in 0..17 {
            let end = format!("2026-01-05T10:00:{:02}Z", i * 2 + 10);
            changes.push(change(
                &format!("h:{i}"),
                Some("q"),
                &end,
                AgentPresence::Off,
                None,
            ));
        }
        changes.sort_by_key(|c| c.time);
        feed(&mut a, &changes);
        let records = a.finish(utc("2026-01-05T11:00:00Z"));
        let agents = &records
            .iter()
            .find(|r| r.sums.agents.paused_ms > 0)
            .unwrap()
            .sums
            .agents;
        assert_eq!((agents.paused_ms, agents.staffed_ms), (170_000, 170_000));
        assert_eq!(agents.paused_by_reason_ms.len(), 17);
        assert_eq!(agents.paused_by_reason_ms[OTHER_PAUSE_REASON], 10_000);
        assert_eq!(agents.pause_reasons_folded, 1);
        assert_eq!((agents.logins, agents.logoffs), (17, 17));
    }

    /// 29 March 2026 in Europe/Berlin: 02:00 CET becomes 03:00 CEST (01:00 UTC). An agent
    /// staffed 00:50 → 01:10 UTC (a presence without a queue: the first service) counts
    /// 600 s in the quarter-hour starting 01:45+01:00 and 600 s in the one starting
    /// 03:00+02:00, the next local quarter-hour after the change.
    #[test]
    fn agent_time_splits_at_a_daylight_saving_change() {
        let mut a = Aggregator::new(settings("Europe/Berlin", "q"), "n", 1);
        feed(
            &mut a,
            &[
                change(
                    "h:a",
                    None,
                    "2026-03-29T00:50:00Z",
                    AgentPresence::Staffed,
                    None,
                ),
                change(
                    "h:a",
                    None,
                    "2026-03-29T01:10:00Z",
                    AgentPresence::Off,
                    None,
                ),
            ],
        );
        let records = a.finish(utc("2026-03-29T02:00:00Z"));
        assert_eq!(
            figures(&records),
            vec![
                ("2026-03-29T01:45:00+01:00".into(), 600_000, 0, 1, 0),
                ("2026-03-29T03:00:00+02:00".into(), 600_000, 0, 0, 1),
            ]
        );
    }

    /// Two nodes, each with its own agents, merged, give the sums of one aggregator fed
    /// both: agent figures merge exactly (integers).
    #[test]
    fn agent_figures_of_two_nodes_merge_exactly() {
        let first = [
            change(
                "h:a",
                Some("q"),
                "2026-01-05T10:01:00.25Z",
                AgentPresence::Staffed,
                None,
            ),
            change(
                "h:a",
                Some("q"),
                "2026-01-05T10:21:00Z",
                AgentPresence::Paused,
                Some("Break"),
            ),
            change(
                "h:a",
                Some("q"),
                "2026-01-05T10:40:00Z",
                AgentPresence::Off,
                None,
            ),
        ];
        let second = [
            change(
                "h:b",
                Some("q"),
                "2026-01-05T10:05:00Z",
                AgentPresence::Paused,
                None,
            ),
            change(
                "h:b",
                Some("q"),
                "2026-01-05T10:33:20.125Z",
                AgentPresence::Off,
                None,
            ),
        ];
        let end = utc("2026-01-05T12:00:00Z");
        let mut a = Aggregator::new(settings("UTC", "q"), "a", 1);
        feed(&mut a, &first);
        let mut b = Aggregator::new(settings("UTC", "q"), "b", 2);
        feed(&mut b, &second);
        let merged = crate::stats::merge::merge(a.finish(end).into_iter().chain(b.finish(end)));
        let mut all = Aggregator::new(settings("UTC", "q"), "ab", 3);
        let mut both: Vec<_> = first.iter().chain(&second).cloned().collect();
        both.sort_by_key(|c| c.time);
        feed(&mut all, &both);
        let one = all.finish(end);
        let sums = |rs: &[IntervalRecord]| -> Vec<(i64, crate::record::interval::AgentSums)> {
            let mut v: Vec<_> = rs
                .iter()
                .filter(|r| r.sums.agents != Default::default())
                .map(|r| (r.interval_start.as_nanos(), r.sums.agents.clone()))
                .collect();
            v.sort_by_key(|x| x.0);
            v
        };
        assert_eq!(sums(&merged), sums(&one));
        // By hand: staffed a 10:01:00.25 → 10:40 (2,339.75 s) + b 10:05 → 10:33:20.125
        // (1,700.125 s), each piece rounded down to the millisecond.
        let staffed: u64 = sums(&one).iter().map(|(_, s)| s.staffed_ms).sum();
        assert_eq!(staffed, 2_339_750 + 1_700_125);
    }
}
