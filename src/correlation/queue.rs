//! Queue stories: ACD queue events (Asterisk `queue_log` lines, FreeSWITCH `mod_callcenter`
//! events) in, one [`QueueCallRecord`] per caller and queue out, and the state of every
//! agent. Deterministic: driven by the events' own times, no clock, no I/O.
//!
//! # Privacy
//!
//! The assembler holds the node's [`Pseudonymizer`] and applies it the moment an event is
//! taken in: caller numbers and transfer targets by the number mode, call ids and agents
//! by the identifier hash (a FreeSWITCH caller leg's SIP Call-ID too, with the key call
//! records use, so the two records of one call share it). Nothing it keeps (the open stories, the agent table, its saved
//! [`AssemblerState`]) and nothing it emits holds them in clear.
//!
//! # Stories
//!
//! A story is keyed by the caller's call id (Asterisk uniqueid — a caller is in one queue
//! at a time — or FreeSWITCH `CC-Member-UUID`). It opens at `ENTERQUEUE` /
//! `member-queue-start`, or at the first event of a call whose entry was not seen (a
//! *partial* story, `complete: false`: the log was joined mid-call). It is emitted at its end:
//! `COMPLETECALLER`, `COMPLETEAGENT`, `TRANSFER`, `BLINDTRANSFER`, `ATTENDEDTRANSFER`,
//! `ABANDON`, `EXITWITHTIMEOUT`, `EXITEMPTY`, `EXITWITHKEY`, `WITHDRAW`, `member-queue-end`.
//! `RINGNOANSWER` / `bridge-agent-fail` count RONA, `RINGCANCELED` and `AGENTDUMP` are
//! counted, `CONNECT` / `bridge-agent-start` set the answer. A story made without its end
//! event (`superseded`, `expired`, `evicted`, `shutdown`, or open at the end of the log
//! `teledge report` read) is `answered` when an agent had answered it — talk unknown — and
//! `unknown` otherwise.
//!
//! Bounds, each counted ([`QueueCounters`]) and announced by the owner of the assembler:
//! - at most `max_open` open stories: a new one beyond it evicts the one whose last event is
//!   oldest, emitted as `closed_by: evicted`, `outcome: unknown`;
//! - a story without an event for `max_open_age` of **log time** (the latest event time
//!   seen, not the wall clock: a backlog read hours late must not expire its stories) is
//!   emitted as `closed_by: expired`;
//! - an `ENTERQUEUE` for a call with an open story emits the old one as `superseded`;
//! - at most `max_agents` agents are tracked; events of further agents are counted.
//!
//! # Agents
//!
//! Per agent (pseudonymised): logged in (`AGENTLOGIN`/`AGENTLOGOFF`; FreeSWITCH
//! `agent-status-change` to or from `Logged Out`), the queues it is a member of and whether
//! it is paused in each (`ADDMEMBER` [`PAUSED`], `REMOVEMEMBER`, `PAUSE`, `UNPAUSE`,
//! `PAUSEALL`, `UNPAUSEALL`; FreeSWITCH `On Break` counts as paused), in a call (from the
//! answer to the end), and when it last changed.
//!
//! Every change of an agent's *presence* in a queue (off, staffed, paused with its reason)
//! becomes a `teledge.agent/1` record ([`AgentStateRecord`]), taken by the owner with
//! [`QueueAssembler::take_agent_states`] (at most [`MAX_AGENT_STATES_HELD`] held; beyond,
//! counted). An agent logged in (`AGENTLOGIN`, FreeSWITCH `Available`) whose queues no event
//! named has one presence without a queue; once a queue event names one, that presence
//! ends and the queue's begins. After [`QueueAssembler::restore`],
//! [`QueueAssembler::announce_agents`] tells every presence read back (`event: restored`).
//!
//! # Wrap-up (FreeSWITCH)
//!
//! `mod_callcenter` (`outbound_agent_thread_run`) sets an agent's state after a queue call
//! to `Idle` when its status is `Available (On Demand)` — the agent does its after-call
//! work and sets itself `Waiting` — and to `Waiting` otherwise, where the agent's configured
//! `wrap-up-time` keeps calls away with no event. So an answered record with an agent waits
//! for that agent's next state change: after an `Idle`, `wrap_up_s` runs from the member's
//! leaving time to the next change of state or status; without one it is unknown. At most
//! `max_open` wait (beyond, or when the agent answers another call first, the record is made
//! without: `wrap_up_not_waited`), each at most `max_open_age` (`wrap_up_expired`); the
//! rest are made at [`QueueAssembler::finish`]. Asterisk's `queue_log` has no per-call
//! wrap-up at all.
//!
//! # Saved state
//!
//! [`QueueAssembler::state`] and [`QueueAssembler::restore`] carry the open stories and
//! the agents across a restart (the `queue_log` source writes them beside its file
//! position), so a call that entered the queue before a restart and ends after it still
//! makes one complete record.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decode::esl::{CallcenterEvent, CcAction, CcEnd};
use crate::decode::queue_log::{
    CompletedBy, ExitKind, PauseKind, QueueEvent, QueueLogLine, TransferKind,
};
use crate::privacy::Pseudonymizer;
use crate::record::agent::{AgentPresence, AgentStateRecord, AGENT_SCHEMA, MAX_REASON_CHARS};
use crate::record::queue::{
    FlowOut, QueueCallRecord, QueueClosedBy, QueueHangup, QueueOutcome, QueueSource, QueueTransfer,
    QueueTransferKind, QUEUE_SCHEMA,
};
use crate::record::stable_id;
use crate::time::Timestamp;

/// Bounds of the assembler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_open: usize,
    pub max_open_age: Duration,
    pub max_agents: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_open: 10_000,
            max_open_age: Duration::from_secs(4 * 3600),
            max_agents: 10_000,
        }
    }
}

/// What the assembler did, for metrics and the owner's gap records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounters {
    /// Events taken in.
    pub events: u64,
    /// Records emitted.
    pub records: u64,
    /// Stories whose first event was not their entry (joined mid-call).
    pub partial_stories: u64,
    /// Emitted as `evicted` (the table was full).
    pub evicted: u64,
    /// Emitted as `expired`.
    pub expired: u64,
    /// Emitted as `superseded`.
    pub superseded: u64,
    /// Events of agents beyond `max_agents`, not tracked.
    pub agents_refused: u64,
    /// Call events without a call id (nothing to attach them to).
    pub events_without_call: u64,
    /// Agent state records made (`teledge.agent/1`).
    #[serde(default)]
    pub agent_states: u64,
    /// Agent state records not kept: [`MAX_AGENT_STATES_HELD`] were waiting to be taken.
    #[serde(default)]
    pub agent_states_dropped: u64,
    /// FreeSWITCH answered records made at once, without waiting for their agent's
    /// wrap-up: `max_open` were waiting already, or the agent answered another call first.
    #[serde(default)]
    pub wrap_up_not_waited: u64,
    /// FreeSWITCH answered records whose agent's state did not change within
    /// `max_open_age` (made without a wrap-up).
    #[serde(default)]
    pub wrap_up_expired: u64,
}

/// Most agent state records held until the owner takes them
/// ([`QueueAssembler::take_agent_states`], after every event or poll).
pub const MAX_AGENT_STATES_HELD: usize = 100_000;

/// The state of one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// `Some(true)` after a login, `Some(false)` after a logoff; `None` when neither was seen
    /// (Asterisk queue members need no login).
    pub logged_in: Option<bool>,
    /// Queues the agent is a member of, and whether it is paused there.
    pub queues: BTreeMap<String, bool>,
    /// Paused everywhere (`PAUSEALL`, FreeSWITCH `On Break`), until `UNPAUSEALL`.
    pub paused_all: bool,
    /// Between an answer and the end of that call.
    pub in_call: bool,
    /// Event time of the last change, ns since the epoch.
    pub since_ns: i64,
    /// The pause reason per paused queue (`PAUSE` data), when the PBX gave one.
    #[serde(default)]
    pub reasons: BTreeMap<String, String>,
    /// The reason of a `PAUSEALL` (FreeSWITCH: `On Break`).
    #[serde(default)]
    pub paused_all_reason: Option<String>,
}

/// What an agent is in each queue, from its state: no presence when logged off; in each
/// queue it is a member of, staffed or paused (with the reason); logged in without a queue
/// known (an Asterisk `AGENTLOGIN` before any event of a queue, every FreeSWITCH agent):
/// one presence without a queue.
fn presence(s: &AgentState) -> BTreeMap<Option<String>, (AgentPresence, Option<String>)> {
    let mut m = BTreeMap::new();
    if s.logged_in == Some(false) {
        return m;
    }
    if !s.queues.is_empty() {
        for (q, paused) in &s.queues {
            let p = if *paused {
                (AgentPresence::Paused, s.reasons.get(q).cloned())
            } else {
                (AgentPresence::Staffed, None)
            };
            m.insert(Some(q.clone()), p);
        }
    } else if s.logged_in == Some(true) {
        let p = if s.paused_all {
            (AgentPresence::Paused, s.paused_all_reason.clone())
        } else {
            (AgentPresence::Staffed, None)
        };
        m.insert(None, p);
    }
    m
}

/// A pause reason as kept: trimmed, at most [`MAX_REASON_CHARS`] characters, `None` when
/// empty.
fn pause_reason(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.chars().take(MAX_REASON_CHARS).collect())
}

/// A FreeSWITCH answered record waiting for its agent's after-call work to end.
#[derive(Debug)]
struct WrapUpWait {
    record: QueueCallRecord,
    /// When the agent's state became `Idle` after the call (Available (On Demand) agents).
    idle_ns: Option<i64>,
}

/// A caller's stay in a queue while it is open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Story {
    record_id: String,
    call_id: String,
    #[serde(default)]
    sip_call_id: Option<String>,
    queue: String,
    caller: Option<String>,
    enter_ns: Option<i64>,
    orig_position: Option<u32>,
    connect_ns: Option<i64>,
    wait_s: Option<f64>,
    ring_s: Option<f64>,
    agent: Option<String>,
    talk_s: Option<f64>,
    ring_no_answer: u32,
    ring_no_answer_ms: u64,
    ring_canceled: u32,
    agent_dumps: u32,
    last_ns: i64,
}

/// How a story ends.
#[derive(Debug, Default)]
struct Ending {
    outcome: Option<QueueOutcome>,
    flow_out: Option<FlowOut>,
    exit_key: Option<String>,
    wait_s: Option<f64>,
    position: Option<u32>,
    talk_s: Option<f64>,
    hangup_by: Option<QueueHangup>,
    transfer: Option<QueueTransfer>,
}

/// What [`QueueAssembler::state`] saves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssemblerState {
    stories: Vec<(String, Story)>,
    agents: BTreeMap<String, AgentState>,
    latest_ns: i64,
}

/// Queue events to queue contact records.
#[derive(Debug)]
pub struct QueueAssembler {
    source: QueueSource,
    group: String,
    limits: QueueLimits,
    pseudonymizer: Pseudonymizer,
    /// Open stories by the PBX's key (uniqueid or member UUID), as written: the key never
    /// leaves the assembler but in the saved state, next to the log it came from.
    stories: HashMap<String, Story>,
    agents: BTreeMap<String, AgentState>,
    /// The latest event time seen (the log's clock), ns.
    latest_ns: i64,
    /// When expiry last ran, in log time.
    last_expiry_ns: i64,
    counters: QueueCounters,
    /// Agent state records made, until the owner takes them.
    agent_states: Vec<AgentStateRecord>,
    /// FreeSWITCH answered records waiting for their agent's wrap-up, by agent pseudonym.
    wrap_up: HashMap<String, WrapUpWait>,
}

/// How often (log time) open stories are checked for expiry.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

impl QueueAssembler {
    pub fn new(
        source: QueueSource,
        group: impl Into<String>,
        limits: QueueLimits,
        pseudonymizer: Pseudonymizer,
    ) -> Self {
        QueueAssembler {
            source,
            group: group.into(),
            limits,
            pseudonymizer,
            stories: HashMap::new(),
            agents: BTreeMap::new(),
            latest_ns: i64::MIN,
            last_expiry_ns: i64::MIN,
            counters: QueueCounters::default(),
            agent_states: Vec::new(),
            wrap_up: HashMap::new(),
        }
    }

    /// The agent state records made since the last call (`teledge.agent/1`), oldest first.
    pub fn take_agent_states(&mut self) -> Vec<AgentStateRecord> {
        std::mem::take(&mut self.agent_states)
    }

    /// Every agent's current presence as agent state records at `now` (`event:
    /// restored`): after [`QueueAssembler::restore`], so the statistics follow the agents
    /// already logged in from the start on (the time the source was down is not counted).
    pub fn announce_agents(&mut self, now: Timestamp) {
        let agents: Vec<(String, AgentState)> = self
            .agents
            .iter()
            .map(|(a, s)| (a.clone(), s.clone()))
            .collect();
        for (agent, state) in agents {
            self.announce(
                &agent,
                now.as_nanos(),
                "restored",
                &BTreeMap::new(),
                &presence(&state),
            );
        }
    }

    /// Records the changes between two presences of an agent.
    fn announce(
        &mut self,
        agent: &str,
        now: i64,
        event: &'static str,
        before: &BTreeMap<Option<String>, (AgentPresence, Option<String>)>,
        after: &BTreeMap<Option<String>, (AgentPresence, Option<String>)>,
    ) {
        let off = (AgentPresence::Off, None);
        let queues: std::collections::BTreeSet<&Option<String>> =
            before.keys().chain(after.keys()).collect();
        for queue in queues {
            let old = before.get(queue).unwrap_or(&off);
            let new = after.get(queue).unwrap_or(&off);
            if old == new {
                continue;
            }
            if self.agent_states.len() >= MAX_AGENT_STATES_HELD {
                self.counters.agent_states_dropped += 1;
                continue;
            }
            let source = match self.source {
                QueueSource::AsteriskQueueLog => "asterisk_queue_log",
                QueueSource::FreeswitchCallcenter => "freeswitch_callcenter",
            };
            let state = match new.0 {
                AgentPresence::Off => "off",
                AgentPresence::Staffed => "staffed",
                AgentPresence::Paused => "paused",
            };
            self.counters.agent_states += 1;
            self.agent_states.push(AgentStateRecord {
                schema: AGENT_SCHEMA,
                record_id: stable_id(&[
                    source.as_bytes(),
                    self.group.as_bytes(),
                    agent.as_bytes(),
                    queue.as_deref().unwrap_or("").as_bytes(),
                    &now.to_be_bytes(),
                    state.as_bytes(),
                    new.1.as_deref().unwrap_or("").as_bytes(),
                ]),
                source: self.source,
                group: self.group.clone(),
                agent: agent.to_owned(),
                queue: queue.clone(),
                time: Timestamp::from_nanos(now),
                state: new.0,
                reason: new.1.clone(),
                event,
            });
        }
    }

    pub fn counters(&self) -> QueueCounters {
        self.counters
    }

    /// Stories open now.
    pub fn open(&self) -> usize {
        self.stories.len()
    }

    /// Every agent seen, by its pseudonym.
    pub fn agents(&self) -> &BTreeMap<String, AgentState> {
        &self.agents
    }

    /// The open stories and the agents, to be saved.
    pub fn state(&self) -> AssemblerState {
        let mut stories: Vec<(String, Story)> = self
            .stories
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        stories.sort_by(|a, b| a.0.cmp(&b.0));
        AssemblerState {
            stories,
            agents: self.agents.clone(),
            latest_ns: self.latest_ns,
        }
    }

    /// Takes saved state back (at start, before any event), within the bounds.
    pub fn restore(&mut self, state: AssemblerState) {
        self.latest_ns = state.latest_ns;
        for (key, story) in state.stories.into_iter().take(self.limits.max_open) {
            self.stories.insert(key, story);
        }
        self.agents = state
            .agents
            .into_iter()
            .take(self.limits.max_agents)
            .collect();
    }

    /// One `queue_log` line.
    pub fn asterisk(&mut self, line: &QueueLogLine, out: &mut dyn FnMut(QueueCallRecord)) {
        self.counters.events += 1;
        let now = line.time.as_nanos();
        self.advance(now, out);
        let agent = line.agent().map(|a| self.pseudonymizer.identifier(a));
        let queue = line.queue().unwrap_or("").to_owned();
        match &line.event {
            QueueEvent::EnterQueue {
                caller_id,
                orig_position,
                ..
            } => {
                let Some(key) = self.call_key(line.call_id()) else {
                    return;
                };
                if let Some(old) = self.stories.remove(&key) {
                    self.counters.superseded += 1;
                    self.emit(old, now, QueueClosedBy::Superseded, Ending::default(), out);
                }
                let caller = (!caller_id.is_empty()).then(|| self.pseudonymizer.number(caller_id));
                let mut story = self.new_story(&key, &queue, now);
                story.enter_ns = Some(now);
                story.caller = caller;
                story.orig_position = *orig_position;
                self.insert(key, story, now, out);
            }
            QueueEvent::Connect { hold_s, ring_s, .. } => {
                if let Some(story) = self.story(line.call_id(), &queue, now, out) {
                    story.connect_ns = Some(now);
                    story.wait_s = Some(*hold_s as f64);
                    story.ring_s = ring_s.map(|r| r as f64);
                    story.agent = agent.clone();
                }
                if let Some(a) = &agent {
                    self.agent(a, now, "CONNECT", |s| s.in_call = true);
                }
            }
            QueueEvent::Complete {
                by,
                hold_s,
                talk_s,
                orig_position,
            } => {
                let ending = Ending {
                    outcome: Some(QueueOutcome::Answered),
                    wait_s: Some(*hold_s as f64),
                    talk_s: Some(*talk_s as f64),
                    hangup_by: Some(match by {
                        CompletedBy::Caller => QueueHangup::Caller,
                        CompletedBy::Agent => QueueHangup::Agent,
                    }),
                    ..Ending::default()
                };
                self.end(line, &queue, *orig_position, agent.clone(), ending, out);
                if let Some(a) = &agent {
                    self.agent(a, now, "COMPLETE", |s| s.in_call = false);
                }
            }
            QueueEvent::Transfer {
                kind,
                target,
                context,
                hold_s,
                talk_s,
                orig_position,
            } => {
                let (kind, target, context) = match kind {
                    TransferKind::Transfer | TransferKind::Blind => (
                        if *kind == TransferKind::Blind {
                            QueueTransferKind::Blind
                        } else {
                            QueueTransferKind::Transfer
                        },
                        (!target.is_empty()).then(|| self.pseudonymizer.number(target)),
                        (!context.is_empty()).then(|| context.clone()),
                    ),
                    // The method's data names bridges or channels: not kept.
                    TransferKind::Attended => (
                        QueueTransferKind::Attended,
                        None,
                        (!context.is_empty()).then(|| context.clone()),
                    ),
                };
                let ending = Ending {
                    outcome: Some(QueueOutcome::Answered),
                    wait_s: Some(*hold_s as f64),
                    talk_s: Some(*talk_s as f64),
                    transfer: Some(QueueTransfer {
                        kind,
                        target,
                        context,
                    }),
                    ..Ending::default()
                };
                self.end(line, &queue, *orig_position, agent.clone(), ending, out);
                if let Some(a) = &agent {
                    self.agent(a, now, "COMPLETE", |s| s.in_call = false);
                }
            }
            QueueEvent::Abandon {
                position,
                orig_position,
                wait_s,
            } => {
                let ending = Ending {
                    outcome: Some(QueueOutcome::Abandoned),
                    wait_s: Some(*wait_s as f64),
                    position: Some(*position),
                    ..Ending::default()
                };
                self.end(line, &queue, Some(*orig_position), None, ending, out);
            }
            QueueEvent::Exit {
                kind,
                detail,
                position,
                orig_position,
                wait_s,
            } => {
                let ending = Ending {
                    outcome: Some(QueueOutcome::FlowOut),
                    flow_out: Some(match kind {
                        ExitKind::Timeout => FlowOut::Timeout,
                        ExitKind::Empty => FlowOut::Empty,
                        ExitKind::Key => FlowOut::Key,
                        ExitKind::Withdraw => FlowOut::Withdraw,
                    }),
                    // A menu key; a withdraw's free text is never kept.
                    exit_key: if *kind == ExitKind::Key {
                        detail.as_ref().map(|k| k.chars().take(8).collect())
                    } else {
                        None
                    },
                    wait_s: Some(*wait_s as f64),
                    position: Some(*position),
                    ..Ending::default()
                };
                self.end(line, &queue, Some(*orig_position), None, ending, out);
            }
            QueueEvent::RingNoAnswer { ring_ms } => {
                if let Some(story) = self.story(line.call_id(), &queue, now, out) {
                    story.ring_no_answer += 1;
                    story.ring_no_answer_ms = story.ring_no_answer_ms.saturating_add(*ring_ms);
                }
            }
            QueueEvent::RingCanceled { .. } => {
                if let Some(story) = self.story(line.call_id(), &queue, now, out) {
                    story.ring_canceled += 1;
                }
            }
            QueueEvent::AgentDump => {
                if let Some(story) = self.story(line.call_id(), &queue, now, out) {
                    story.agent_dumps += 1;
                }
            }
            QueueEvent::AgentLogin { .. } => {
                if let Some(a) = &agent {
                    self.agent(a, now, "AGENTLOGIN", |s| s.logged_in = Some(true));
                }
            }
            QueueEvent::AgentLogoff { .. } => {
                if let Some(a) = &agent {
                    self.agent(a, now, "AGENTLOGOFF", |s| {
                        s.logged_in = Some(false);
                        s.in_call = false;
                    });
                }
            }
            // A membership or pause names its queue; a line of no queue (`NONE`) changes
            // none.
            QueueEvent::AddMember { paused } if !queue.is_empty() => {
                if let Some(a) = &agent {
                    let q = queue.clone();
                    self.agent(a, now, "ADDMEMBER", |s| {
                        s.reasons.remove(&q);
                        s.queues.insert(q, *paused);
                    });
                }
            }
            QueueEvent::RemoveMember if !queue.is_empty() => {
                if let Some(a) = &agent {
                    let q = queue.clone();
                    self.agent(a, now, "REMOVEMEMBER", |s| {
                        s.queues.remove(&q);
                        s.reasons.remove(&q);
                    });
                }
            }
            QueueEvent::Pause { kind, reason } => {
                if let Some(a) = &agent {
                    let q = queue.clone();
                    let kind = *kind;
                    let reason = pause_reason(reason);
                    let event = match kind {
                        PauseKind::Pause => "PAUSE",
                        PauseKind::Unpause => "UNPAUSE",
                        PauseKind::PauseAll => "PAUSEALL",
                        PauseKind::UnpauseAll => "UNPAUSEALL",
                    };
                    self.agent(a, now, event, |s| match kind {
                        PauseKind::Pause | PauseKind::Unpause if !q.is_empty() => {
                            let paused = kind == PauseKind::Pause;
                            match (paused, reason) {
                                (true, Some(r)) => s.reasons.insert(q.clone(), r),
                                _ => s.reasons.remove(&q),
                            };
                            s.queues.insert(q, paused);
                        }
                        PauseKind::Pause | PauseKind::Unpause => {}
                        PauseKind::PauseAll | PauseKind::UnpauseAll => {
                            let paused = kind == PauseKind::PauseAll;
                            s.paused_all = paused;
                            s.paused_all_reason = if paused { reason.clone() } else { None };
                            s.reasons.clear();
                            for (q, p) in s.queues.iter_mut() {
                                *p = paused;
                                if let (true, Some(r)) = (paused, &reason) {
                                    s.reasons.insert(q.clone(), r.clone());
                                }
                            }
                        }
                    });
                }
            }
            QueueEvent::AddMember { .. } | QueueEvent::RemoveMember => {}
            // Neither a story nor an agent state: the line is taken (and counted), nothing
            // follows from it here.
            QueueEvent::SysCompat
            | QueueEvent::Penalty { .. }
            | QueueEvent::RingInUse { .. }
            | QueueEvent::ConfigReload
            | QueueEvent::QueueStart
            | QueueEvent::Did { .. }
            | QueueEvent::Info { .. }
            | QueueEvent::Unknown { .. } => {}
        }
    }

    /// One `mod_callcenter` event. `now` is used when the event carries no
    /// `Event-Date-Timestamp`.
    pub fn callcenter(
        &mut self,
        event: &CallcenterEvent,
        now: Timestamp,
        out: &mut dyn FnMut(QueueCallRecord),
    ) {
        self.counters.events += 1;
        let at = event.event_time.unwrap_or(now).as_nanos();
        self.advance(at, out);
        let secs = |t: Option<i64>| t.map(|s| Timestamp::from_secs_nanos(s, 0).as_nanos());
        let agent = event
            .agent
            .as_deref()
            .map(|a| self.pseudonymizer.identifier(a));
        let queue = event.queue.clone().unwrap_or_default();
        let key = event.member_uuid.as_deref();
        match event.action {
            CcAction::MemberQueueStart | CcAction::MemberQueueResume => {
                let Some(key) = self.call_key(key) else {
                    return;
                };
                if let Some(old) = self.stories.remove(&key) {
                    self.counters.superseded += 1;
                    self.emit(old, at, QueueClosedBy::Superseded, Ending::default(), out);
                }
                let mut story = self.new_story(&key, &queue, at);
                if let Some(session) = &event.session_uuid {
                    story.call_id = self.pseudonymizer.identifier(session);
                }
                story.enter_ns = secs(event.joined).or(Some(at));
                story.sip_call_id = event
                    .sip_call_id
                    .as_deref()
                    .map(|c| self.pseudonymizer.identifier(c));
                story.caller = event
                    .cid_number
                    .as_deref()
                    .map(|n| self.pseudonymizer.number(n));
                self.insert(key, story, at, out);
            }
            CcAction::BridgeAgentStart => {
                if let Some(story) = self.story(key, &queue, at, out) {
                    let answered = event.agent_answered;
                    story.connect_ns = secs(answered).or(Some(at));
                    if let (Some(a), Some(j)) = (answered, event.joined) {
                        story.wait_s = Some((a - j).max(0) as f64);
                    }
                    if let (Some(a), Some(c)) = (answered, event.agent_called) {
                        story.ring_s = Some((a - c).max(0) as f64);
                    }
                    story.agent = agent.clone();
                }
                if let Some(a) = &agent {
                    self.agent(a, at, "bridge-agent-start", |s| s.in_call = true);
                }
            }
            CcAction::BridgeAgentFail => {
                if let Some(story) = self.story(key, &queue, at, out) {
                    story.ring_no_answer += 1;
                    if let (Some(end), Some(c)) = (event.agent_aborted, event.agent_called) {
                        let ms = (end - c).max(0).saturating_mul(1000) as u64;
                        story.ring_no_answer_ms = story.ring_no_answer_ms.saturating_add(ms);
                    }
                }
            }
            CcAction::BridgeAgentEnd => {
                if let Some(story) = self.story(key, &queue, at, out) {
                    if let (Some(end), Some(a)) = (event.bridge_terminated, event.agent_answered) {
                        story.talk_s = Some((end - a).max(0) as f64);
                    }
                }
                if let Some(a) = &agent {
                    self.agent(a, at, "bridge-agent-end", |s| s.in_call = false);
                }
            }
            CcAction::MemberQueueEnd => {
                let Some(key) = self.call_key(key) else {
                    return;
                };
                let end_ns = secs(event.leaving).unwrap_or(at);
                let mut story = match self.stories.remove(&key) {
                    Some(s) => s,
                    None => {
                        self.counters.partial_stories += 1;
                        let mut s = self.new_story(&key, &queue, at);
                        if let Some(session) = &event.session_uuid {
                            s.call_id = self.pseudonymizer.identifier(session);
                        }
                        s.enter_ns = secs(event.joined);
                        s.sip_call_id = event
                            .sip_call_id
                            .as_deref()
                            .map(|c| self.pseudonymizer.identifier(c));
                        s.caller = event
                            .cid_number
                            .as_deref()
                            .map(|n| self.pseudonymizer.number(n));
                        s
                    }
                };
                let waited = |until: Option<i64>| match (until, event.joined) {
                    (Some(u), Some(j)) => Some((u - j).max(0) as f64),
                    _ => None,
                };
                let mut ending = Ending::default();
                match event.end {
                    Some(CcEnd::Terminated) => {
                        ending.outcome = Some(QueueOutcome::Answered);
                        if story.connect_ns.is_none() {
                            story.connect_ns = secs(event.agent_answered);
                        }
                        if story.agent.is_none() {
                            story.agent = agent.clone();
                        }
                        ending.wait_s = story.wait_s.or_else(|| waited(event.agent_answered));
                        if story.talk_s.is_none() {
                            if let (Some(l), Some(a)) = (event.leaving, event.agent_answered) {
                                ending.talk_s = Some((l - a).max(0) as f64);
                            }
                        }
                    }
                    Some(reason) => {
                        let flow_out = match reason {
                            CcEnd::Timeout => Some(FlowOut::Timeout),
                            CcEnd::NoAgentTimeout => Some(FlowOut::Empty),
                            CcEnd::ExitWithKey => Some(FlowOut::Key),
                            CcEnd::CallerLeft | CcEnd::Terminated => None,
                        };
                        ending.outcome = Some(if flow_out.is_some() {
                            QueueOutcome::FlowOut
                        } else {
                            QueueOutcome::Abandoned
                        });
                        ending.flow_out = flow_out;
                        ending.wait_s = waited(event.leaving);
                    }
                    None => {}
                }
                if ending.outcome == Some(QueueOutcome::Answered) && story.agent.is_some() {
                    let record = self.make(story, end_ns, QueueClosedBy::Event, ending);
                    self.wait_wrap_up(record, out);
                } else {
                    self.emit(story, end_ns, QueueClosedBy::Event, ending, out);
                }
            }
            CcAction::AgentStatusChange | CcAction::AgentStateChange => {
                if let (Some(a), Some(status)) = (&agent, event.agent_status.as_deref()) {
                    let status = status.to_owned();
                    let is_status = event.action == CcAction::AgentStatusChange;
                    let name = if is_status {
                        "agent-status-change"
                    } else {
                        "agent-state-change"
                    };
                    self.agent(a, at, name, |s| {
                        if is_status {
                            s.logged_in = Some(status != "Logged Out");
                            s.paused_all = status == "On Break";
                            s.paused_all_reason = s.paused_all.then(|| status.clone());
                        } else {
                            s.in_call = status == "In a queue call";
                        }
                    });
                    self.wrap_up_state(a, at, is_status, &status, out);
                }
            }
            CcAction::AgentOffering | CcAction::MembersCount | CcAction::Other => {}
        }
    }

    /// Every open story becomes a record (`closed_by: shutdown`): the source stops and
    /// will not save them.
    pub fn finish(&mut self, now: Timestamp, out: &mut dyn FnMut(QueueCallRecord)) {
        self.flush_wrap_up(now.as_nanos(), true, out);
        let mut open: Vec<Story> = self.stories.drain().map(|(_, s)| s).collect();
        open.sort_by_key(|s| s.last_ns);
        for story in open {
            self.emit(
                story,
                now.as_nanos(),
                QueueClosedBy::Shutdown,
                Ending::default(),
                out,
            );
        }
    }

    /// The key of a call event, counted when there is none.
    fn call_key(&mut self, call_id: Option<&str>) -> Option<String> {
        match call_id {
            Some(id) => Some(id.to_owned()),
            None => {
                self.counters.events_without_call += 1;
                None
            }
        }
    }

    fn new_story(&self, key: &str, queue: &str, now: i64) -> Story {
        let source = match self.source {
            QueueSource::AsteriskQueueLog => "asterisk_queue_log",
            QueueSource::FreeswitchCallcenter => "freeswitch_callcenter",
        };
        Story {
            record_id: stable_id(&[
                source.as_bytes(),
                self.group.as_bytes(),
                key.as_bytes(),
                queue.as_bytes(),
                &now.to_be_bytes(),
            ]),
            call_id: self.pseudonymizer.identifier(key),
            sip_call_id: None,
            queue: queue.to_owned(),
            caller: None,
            enter_ns: None,
            orig_position: None,
            connect_ns: None,
            wait_s: None,
            ring_s: None,
            agent: None,
            talk_s: None,
            ring_no_answer: 0,
            ring_no_answer_ms: 0,
            ring_canceled: 0,
            agent_dumps: 0,
            last_ns: now,
        }
    }

    /// Opens a story, evicting the stalest one when the table is full.
    fn insert(
        &mut self,
        key: String,
        story: Story,
        now: i64,
        out: &mut dyn FnMut(QueueCallRecord),
    ) {
        if self.stories.len() >= self.limits.max_open {
            let stalest = self
                .stories
                .iter()
                .min_by_key(|(_, s)| s.last_ns)
                .map(|(k, _)| k.clone());
            if let Some(old) = stalest.and_then(|k| self.stories.remove(&k)) {
                self.counters.evicted += 1;
                self.emit(old, now, QueueClosedBy::Evicted, Ending::default(), out);
            }
        }
        self.stories.insert(key, story);
    }

    /// The open story of a call, opened as a partial one when its entry was not seen.
    fn story(
        &mut self,
        call_id: Option<&str>,
        queue: &str,
        now: i64,
        out: &mut dyn FnMut(QueueCallRecord),
    ) -> Option<&mut Story> {
        let key = self.call_key(call_id)?;
        if !self.stories.contains_key(&key) {
            self.counters.partial_stories += 1;
            let story = self.new_story(&key, queue, now);
            self.insert(key.clone(), story, now, out);
        }
        let story = self.stories.get_mut(&key)?;
        story.last_ns = story.last_ns.max(now);
        Some(story)
    }

    /// An Asterisk end event: the story (or a partial one) is emitted.
    fn end(
        &mut self,
        line: &QueueLogLine,
        queue: &str,
        orig_position: Option<u32>,
        agent: Option<String>,
        ending: Ending,
        out: &mut dyn FnMut(QueueCallRecord),
    ) {
        let now = line.time.as_nanos();
        let Some(key) = self.call_key(line.call_id()) else {
            return;
        };
        let mut story = match self.stories.remove(&key) {
            Some(s) => s,
            None => {
                self.counters.partial_stories += 1;
                self.new_story(&key, queue, now)
            }
        };
        if story.orig_position.is_none() {
            story.orig_position = orig_position;
        }
        if story.agent.is_none() && ending.outcome == Some(QueueOutcome::Answered) {
            story.agent = agent;
        }
        self.emit(story, now, QueueClosedBy::Event, ending, out);
    }

    /// Applies an agent event to the agent's state; a change of its presence in a queue is
    /// an agent state record.
    fn agent(
        &mut self,
        agent: &str,
        now: i64,
        event: &'static str,
        change: impl FnOnce(&mut AgentState),
    ) {
        if !self.agents.contains_key(agent) && self.agents.len() >= self.limits.max_agents {
            self.counters.agents_refused += 1;
            return;
        }
        let state = self.agents.entry(agent.to_owned()).or_default();
        let before = presence(state);
        change(state);
        state.since_ns = now;
        let after = presence(state);
        if before != after {
            self.announce(agent, now, event, &before, &after);
        }
    }

    /// Moves the log's clock and expires stories quiet for longer than `max_open_age`.
    fn advance(&mut self, now: i64, out: &mut dyn FnMut(QueueCallRecord)) {
        if now <= self.latest_ns {
            return;
        }
        self.latest_ns = now;
        let every = EXPIRY_EVERY.as_nanos() as i64;
        if self.last_expiry_ns != i64::MIN && now - self.last_expiry_ns < every {
            return;
        }
        self.last_expiry_ns = now;
        self.flush_wrap_up(now, false, out);
        let max_age = i64::try_from(self.limits.max_open_age.as_nanos()).unwrap_or(i64::MAX);
        let mut quiet: Vec<String> = self
            .stories
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.last_ns) > max_age)
            .map(|(k, _)| k.clone())
            .collect();
        quiet.sort();
        for key in quiet {
            if let Some(story) = self.stories.remove(&key) {
                self.counters.expired += 1;
                self.emit(story, now, QueueClosedBy::Expired, Ending::default(), out);
            }
        }
    }

    fn emit(
        &mut self,
        story: Story,
        end_ns: i64,
        closed_by: QueueClosedBy,
        ending: Ending,
        out: &mut dyn FnMut(QueueCallRecord),
    ) {
        self.counters.records += 1;
        out(self.make(story, end_ns, closed_by, ending));
    }

    fn make(
        &self,
        story: Story,
        end_ns: i64,
        closed_by: QueueClosedBy,
        ending: Ending,
    ) -> QueueCallRecord {
        // An agent answered (`CONNECT`, `bridge-agent-start`) but the end never came (the
        // PBX restarted mid-call, the log ends, the story expired or was superseded): the
        // contact was answered all the same — only its talk is unknown.
        let outcome = ending.outcome.unwrap_or(if story.connect_ns.is_some() {
            QueueOutcome::Answered
        } else {
            QueueOutcome::Unknown
        });
        let complete = story.enter_ns.is_some() && closed_by == QueueClosedBy::Event;
        QueueCallRecord {
            schema: QUEUE_SCHEMA,
            record_id: story.record_id,
            source: self.source,
            group: self.group.clone(),
            call_id: story.call_id,
            sip_call_id: story.sip_call_id,
            queue: story.queue,
            caller: story.caller,
            enter_time: story.enter_ns.map(Timestamp::from_nanos),
            orig_position: story.orig_position,
            connect_time: story.connect_ns.map(Timestamp::from_nanos),
            end_time: Timestamp::from_nanos(end_ns),
            outcome,
            flow_out: ending.flow_out,
            exit_key: ending.exit_key,
            wait_s: story.wait_s.or(ending.wait_s),
            ring_s: story.ring_s,
            position: ending.position,
            agent: story.agent,
            talk_s: ending.talk_s.or(story.talk_s),
            hangup_by: ending.hangup_by,
            transfer: ending.transfer,
            ring_no_answer: story.ring_no_answer,
            ring_no_answer_s: story.ring_no_answer_ms as f64 / 1000.0,
            ring_canceled: story.ring_canceled,
            agent_dumps: story.agent_dumps,
            wrap_up_s: None,
            complete,
            closed_by,
        }
    }

    /// A FreeSWITCH answered record: waits for its agent's after-call work (see
    /// [`QueueAssembler::wrap_up_state`]), or is made at once when it cannot wait.
    fn wait_wrap_up(&mut self, record: QueueCallRecord, out: &mut dyn FnMut(QueueCallRecord)) {
        self.counters.records += 1;
        let Some(agent) = record.agent.clone() else {
            return out(record);
        };
        if let Some(old) = self.wrap_up.remove(&agent) {
            // The agent answered again before its state told the end of the last call's
            // wrap-up: that one is not known.
            self.counters.wrap_up_not_waited += 1;
            out(old.record);
        }
        if self.wrap_up.len() >= self.limits.max_open {
            self.counters.wrap_up_not_waited += 1;
            return out(record);
        }
        self.wrap_up.insert(
            agent,
            WrapUpWait {
                record,
                idle_ns: None,
            },
        );
    }

    /// An agent's state or status changed: the wrap-up of its last answered call ends.
    ///
    /// What `mod_callcenter` does after a queue call (`outbound_agent_thread_run`): it sets
    /// the agent's state to `Idle` when its status is `Available (On Demand)` — the agent
    /// then does its after-call work and sets itself `Waiting` again — and to `Waiting`
    /// otherwise, where the agent's configured `wrap-up-time` keeps calls away silently (no
    /// event tells it, nor its end). So the wrap-up is measured only after an `Idle`: from
    /// the member's leaving time (`CC-Member-Leaving-Time`, whole seconds, the bridge's end)
    /// to the next change of the agent's state (`Waiting`, `Receiving`, ...) or status
    /// (`On Break`, `Logged Out`); straight to `Waiting` it is unknown (`null`).
    fn wrap_up_state(
        &mut self,
        agent: &str,
        at: i64,
        is_status: bool,
        value: &str,
        out: &mut dyn FnMut(QueueCallRecord),
    ) {
        let Some(wait) = self.wrap_up.get_mut(agent) else {
            return;
        };
        if !is_status && value == "Idle" {
            wait.idle_ns.get_or_insert(at);
            return;
        }
        if is_status && wait.idle_ns.is_none() {
            // A status change before the state told anything: the state change follows.
            return;
        }
        let Some(mut wait) = self.wrap_up.remove(agent) else {
            return;
        };
        if wait.idle_ns.is_some() {
            let end = wait.record.end_time.as_nanos();
            wait.record.wrap_up_s = Some(at.saturating_sub(end).max(0) as f64 / 1e9);
        }
        out(wait.record);
    }

    /// The answered records still waiting for a wrap-up, made without one: those quiet
    /// for `max_open_age` (log time `now`), or all of them.
    fn flush_wrap_up(&mut self, now: i64, all: bool, out: &mut dyn FnMut(QueueCallRecord)) {
        let max_age = i64::try_from(self.limits.max_open_age.as_nanos()).unwrap_or(i64::MAX);
        let mut due: Vec<(i64, String)> = self
            .wrap_up
            .iter()
            .filter(|(_, w)| all || now.saturating_sub(w.record.end_time.as_nanos()) > max_age)
            .map(|(a, w)| (w.record.end_time.as_nanos(), a.clone()))
            .collect();
        due.sort();
        for (_, agent) in due {
            if let Some(wait) = self.wrap_up.remove(&agent) {
                if !all {
                    self.counters.wrap_up_expired += 1;
                }
                out(wait.record);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::queue_log::parse_line;
    use crate::privacy::{Privacy, PrivacyMode};

    fn assembler(limits: QueueLimits) -> QueueAssembler {
        QueueAssembler::new(
            QueueSource::AsteriskQueueLog,
            "pbx-1",
            limits,
            Pseudonymizer::new(Privacy::keyed_hash([7; 32])),
        )
    }

    fn feed(a: &mut QueueAssembler, lines: &str) -> Vec<QueueCallRecord> {
        let mut out = Vec::new();
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let parsed = parse_line(line.as_bytes()).unwrap();
            a.asterisk(&parsed, &mut |r| out.push(r));
        }
        out
    }

    #[test]
    fn an_answered_call_in_one_record_with_hashed_identities() {
        let mut a = assembler(QueueLimits::default());
        let out = feed(
            &mut a,
            "1784160000|1.1|700|NONE|ENTERQUEUE||441632960111|1
             1784160005|1.1|700|PJSIP/202|RINGNOANSWER|15000
             1784160010|1.1|700|PJSIP/201|CONNECT|10|1.2|3
             1784160130|1.1|700|PJSIP/201|COMPLETEAGENT|10|120|1",
        );
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(r.outcome, QueueOutcome::Answered);
        assert_eq!(
            r.enter_time,
            Some(Timestamp::from_secs_nanos(1_784_160_000, 0))
        );
        assert_eq!(
            r.connect_time,
            Some(Timestamp::from_secs_nanos(1_784_160_010, 0))
        );
        assert_eq!(r.end_time, Timestamp::from_secs_nanos(1_784_160_130, 0));
        assert_eq!(
            (r.wait_s, r.ring_s, r.talk_s),
            (Some(10.0), Some(3.0), Some(120.0))
        );
        assert_eq!((r.ring_no_answer, r.ring_no_answer_s), (1, 15.0));
        assert_eq!(r.hangup_by, Some(QueueHangup::Agent));
        assert!(r.complete);
        let p = Pseudonymizer::new(Privacy::keyed_hash([7; 32]));
        assert_eq!(r.caller.as_deref(), Some(p.number("441632960111").as_str()));
        assert_eq!(r.agent.as_deref(), Some(p.identifier("PJSIP/201").as_str()));
        assert_eq!(r.call_id, p.identifier("1.1"));
        let json = serde_json::to_string(r).unwrap();
        for clear in ["441632960111", "PJSIP", "\"1.1\""] {
            assert!(!json.contains(clear), "{clear} in {json}");
        }
        assert_eq!(a.open(), 0);
        assert!(!a.agents()[&p.identifier("PJSIP/201")].in_call);
    }

    #[test]
    fn abandon_and_each_flow_out() {
        let mut a = assembler(QueueLimits::default());
        let out = feed(
            &mut a,
            "100|2.1|q|NONE|ENTERQUEUE||111|1
             168|2.1|q|NONE|ABANDON|1|1|68
             200|2.2|q|NONE|ENTERQUEUE||222|1
             500|2.2|q|NONE|EXITWITHTIMEOUT|2|1|300
             600|2.3|q|NONE|ENTERQUEUE||333|1
             601|2.3|q|NONE|EXITEMPTY|1|1|1
             700|2.4|q|NONE|ENTERQUEUE||444|2
             742|2.4|q|NONE|EXITWITHKEY|5|1|2|42",
        );
        let got: Vec<_> = out
            .iter()
            .map(|r| {
                (
                    r.outcome,
                    r.flow_out,
                    r.wait_s,
                    r.position,
                    r.exit_key.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (QueueOutcome::Abandoned, None, Some(68.0), Some(1), None),
                (
                    QueueOutcome::FlowOut,
                    Some(FlowOut::Timeout),
                    Some(300.0),
                    Some(2),
                    None
                ),
                (
                    QueueOutcome::FlowOut,
                    Some(FlowOut::Empty),
                    Some(1.0),
                    Some(1),
                    None
                ),
                (
                    QueueOutcome::FlowOut,
                    Some(FlowOut::Key),
                    Some(42.0),
                    Some(1),
                    Some("5".into())
                ),
            ]
        );
        assert!(out.iter().all(|r| r.complete));
    }

    #[test]
    fn transfers_end_the_story_and_hash_the_target() {
        let mut a = assembler(QueueLimits::default());
        let out = feed(
            &mut a,
            "100|3.1|q|NONE|ENTERQUEUE||111|1
             104|3.1|q|SIP/8007|CONNECT|4|3.2|2
             134|3.1|q|SIP/8007|BLINDTRANSFER|4930555|from-internal|4|30|1
             200|3.3|q|NONE|ENTERQUEUE||111|1
             204|3.3|q|SIP/8007|CONNECT|4|3.4|2
             234|3.3|q|SIP/8007|ATTENDEDTRANSFER|BRIDGE|abc|4|30|1",
        );
        assert_eq!(out.len(), 2);
        let t = out[0].transfer.as_ref().unwrap();
        assert_eq!(t.kind, QueueTransferKind::Blind);
        assert!(t.target.as_deref().unwrap().starts_with("h:"));
        assert_eq!(t.context.as_deref(), Some("from-internal"));
        assert_eq!(out[0].talk_s, Some(30.0));
        let t = out[1].transfer.as_ref().unwrap();
        assert_eq!(
            (t.kind, t.target.as_deref(), t.context.as_deref()),
            (QueueTransferKind::Attended, None, Some("BRIDGE"))
        );
    }

    #[test]
    fn partial_superseded_evicted_and_expired_stories() {
        let mut a = assembler(QueueLimits {
            max_open: 2,
            max_open_age: Duration::from_secs(600),
            max_agents: 1,
        });
        // Joined mid-call: a partial record.
        let out = feed(&mut a, "100|4.1|q|SIP/1|COMPLETECALLER|5|50|1");
        assert_eq!(out.len(), 1);
        assert!(!out[0].complete);
        assert_eq!(out[0].enter_time, None);
        assert_eq!(out[0].outcome, QueueOutcome::Answered);
        // The same call entering again before an end: superseded.
        let out = feed(
            &mut a,
            "200|4.2|q|NONE|ENTERQUEUE||1|1
             210|4.2|q2|NONE|ENTERQUEUE||1|1",
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].closed_by, QueueClosedBy::Superseded);
        assert_eq!(out[0].queue, "q");
        // A full table evicts the stalest.
        let out = feed(
            &mut a,
            "220|4.3|q|NONE|ENTERQUEUE||1|1
             230|4.4|q|NONE|ENTERQUEUE||1|1",
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].closed_by, out[0].queue.as_str()),
            (QueueClosedBy::Evicted, "q2")
        );
        assert_eq!(out[0].outcome, QueueOutcome::Unknown);
        // Quiet for longer than the age in log time: expired at the next event.
        let out = feed(&mut a, "2000|NONE|NONE|NONE|QUEUESTART|");
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.closed_by == QueueClosedBy::Expired));
        let c = a.counters();
        assert_eq!(
            (c.partial_stories, c.superseded, c.evicted, c.expired),
            (1, 1, 1, 2)
        );
        // A second agent beyond max_agents is counted, not tracked.
        feed(
            &mut a,
            "2001|NONE|q|Alice|ADDMEMBER|
             2002|NONE|q|Bob|ADDMEMBER|",
        );
        // SIP/1 (the partial call's agent) holds the one place.
        assert_eq!(a.agents().len(), 1);
        assert_eq!(a.counters().agents_refused, 2);
    }

    #[test]
    fn agent_states_follow_login_membership_and_pauses() {
        let mut a = assembler(QueueLimits::default());
        feed(
            &mut a,
            "1|1.9|NONE|Agent/1001|AGENTLOGIN|SIP/1001-0001
             2|MANAGER|sales|Agent/1001|ADDMEMBER|
             3|MANAGER|support|Agent/1001|ADDMEMBER|PAUSED
             4|NONE|sales|Agent/1001|PAUSE|Lunch
             5|NONE|NONE|Agent/1001|UNPAUSEALL|",
        );
        let p = Pseudonymizer::new(Privacy::keyed_hash([7; 32]));
        let s = &a.agents()[&p.identifier("Agent/1001")];
        assert_eq!(s.logged_in, Some(true));
        assert_eq!(
            s.queues,
            BTreeMap::from([("sales".into(), false), ("support".into(), false)])
        );
        assert_eq!(s.since_ns, Timestamp::from_secs_nanos(5, 0).as_nanos());
        feed(
            &mut a,
            "6|NONE|NONE|Agent/1001|PAUSEALL|
             7|NONE|sales|Agent/1001|REMOVEMEMBER|
             8|1.9|NONE|Agent/1001|AGENTLOGOFF|SIP/1001-0001|7",
        );
        let s = &a.agents()[&p.identifier("Agent/1001")];
        assert_eq!(s.logged_in, Some(false));
        assert!(s.paused_all);
        assert_eq!(s.queues, BTreeMap::from([("support".into(), true)]));
    }

    #[test]
    fn state_survives_a_restart_and_the_story_completes() {
        let mut a = assembler(QueueLimits::default());
        assert!(feed(&mut a, "100|5.1|q|NONE|ENTERQUEUE||123|1").is_empty());
        let saved = serde_json::to_string(&a.state()).unwrap();
        assert!(!saved.contains("\"123\""), "{saved}");
        let mut b = assembler(QueueLimits::default());
        b.restore(serde_json::from_str(&saved).unwrap());
        let out = feed(&mut b, "130|5.1|q|NONE|ABANDON|1|1|30");
        assert_eq!(out.len(), 1);
        assert!(out[0].complete);
        assert_eq!(out[0].enter_time, Some(Timestamp::from_secs_nanos(100, 0)));
    }

    #[test]
    fn clear_mode_keeps_numbers_and_keep_digits_cuts_them() {
        let mut a = QueueAssembler::new(
            QueueSource::AsteriskQueueLog,
            "g",
            QueueLimits::default(),
            Pseudonymizer::new(Privacy::new(
                PrivacyMode::KeepLastDigits(3),
                Default::default(),
                [1; 32],
            )),
        );
        let out = feed(
            &mut a,
            "1|6.1|q|NONE|ENTERQUEUE||+4930123456|1
             9|6.1|q|NONE|ABANDON|1|1|8",
        );
        assert_eq!(out[0].caller.as_deref(), Some("+*******456"));
    }

    #[test]
    fn a_freeswitch_caller_legs_sip_call_id_is_hashed_as_call_records_hash_theirs() {
        use crate::decode::esl::{callcenter, parse_event};
        let mut a = QueueAssembler::new(
            QueueSource::FreeswitchCallcenter,
            "fs1",
            QueueLimits::default(),
            Pseudonymizer::new(Privacy::keyed_hash([7; 32])),
        );
        let mut out = Vec::new();
        for text in [
            "Event-Subclass: callcenter::info\nCC-Action: member-queue-start\nCC-Queue: q\nCC-Member-UUID: m1\nCC-Member-Session-UUID: s1\nCC-Member-CID-Number: 1001\nvariable_sip_call_id: abc%40pbx\nEvent-Date-Timestamp: 1000000000\n\n",
            // The agent channel's variables: its Call-ID is not the caller's.
            "Event-Subclass: callcenter::info\nCC-Action: bridge-agent-start\nCC-Queue: q\nCC-Member-UUID: m1\nCC-Agent: a1\nCC-Member-Joined-Time: 1000\nCC-Agent-Called-Time: 1002\nCC-Agent-Answered-Time: 1005\nvariable_sip_call_id: agent-leg\n\n",
            "Event-Subclass: callcenter::info\nCC-Action: member-queue-end\nCC-Queue: q\nCC-Member-UUID: m1\nCC-Cause: Terminated\nCC-Member-Joined-Time: 1000\nCC-Agent-Answered-Time: 1005\nCC-Member-Leaving-Time: 1065\nvariable_sip_call_id: abc%40pbx\n\n",
        ] {
            let event = callcenter(&parse_event(text.as_bytes()).unwrap()).unwrap();
            a.callcenter(&event, Timestamp::from_secs_nanos(2000, 0), &mut |r| {
                out.push(r)
            });
        }
        // The answered record waits for its agent's wrap-up (no state change follows
        // here): made at the source's end, without one.
        assert!(out.is_empty());
        a.finish(Timestamp::from_secs_nanos(2000, 0), &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].wrap_up_s, None);
        let p = Pseudonymizer::new(Privacy::keyed_hash([7; 32]));
        assert_eq!(
            out[0].sip_call_id.as_deref(),
            Some(p.identifier("abc@pbx").as_str())
        );
        assert_eq!(
            (out[0].wait_s, out[0].ring_s, out[0].talk_s),
            (Some(5.0), Some(3.0), Some(60.0))
        );
        assert_eq!(out[0].enter_time, Some(Timestamp::from_secs_nanos(1000, 0)));
    }

    /// The same class on FreeSWITCH: a member bridged to an agent (`bridge-agent-start`)
    /// whose `member-queue-end` never comes (the source stopped, FreeSWITCH restarted) is
    /// answered, talk unknown — it was `unknown`, so neither offered nor answered.
    #[test]
    fn a_freeswitch_member_bridged_whose_end_never_comes_is_answered() {
        use crate::decode::esl::{callcenter, parse_event};
        let mut a = QueueAssembler::new(
            QueueSource::FreeswitchCallcenter,
            "fs1",
            QueueLimits::default(),
            Pseudonymizer::new(Privacy::keyed_hash([7; 32])),
        );
        let mut out = Vec::new();
        for text in [
            "Event-Subclass: callcenter::info\nCC-Action: member-queue-start\nCC-Queue: q\nCC-Member-UUID: m1\nCC-Member-Session-UUID: s1\nCC-Member-CID-Number: 1001\nEvent-Date-Timestamp: 1000000000\n\n",
            "Event-Subclass: callcenter::info\nCC-Action: bridge-agent-start\nCC-Queue: q\nCC-Member-UUID: m1\nCC-Agent: a1\nCC-Member-Joined-Time: 1000\nCC-Agent-Called-Time: 1002\nCC-Agent-Answered-Time: 1005\n\n",
        ] {
            let event = callcenter(&parse_event(text.as_bytes()).unwrap()).unwrap();
            a.callcenter(&event, Timestamp::from_secs_nanos(1005, 0), &mut |r| {
                out.push(r)
            });
        }
        assert!(out.is_empty());
        a.finish(Timestamp::from_secs_nanos(1100, 0), &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].closed_by, out[0].outcome, out[0].complete),
            (QueueClosedBy::Shutdown, QueueOutcome::Answered, false)
        );
        assert_eq!(
            (out[0].wait_s, out[0].ring_s, out[0].talk_s),
            (Some(5.0), Some(3.0), None)
        );
        assert_eq!(
            out[0].connect_time,
            Some(Timestamp::from_secs_nanos(1005, 0))
        );
    }

    /// Agent states from `queue_log` lines in `app_queue`'s format (written by hand: no
    /// Asterisk here), the expected records worked out from the lines:
    /// - PJSIP/201 joins `support` (staffed), pauses there for "Lunch", joins `sales`
    ///   paused (no reason), is unpaused everywhere (`UNPAUSEALL`: both queues staffed, in
    ///   queue order), leaves `support`;
    /// - Agent/1001 logs in (no queue named yet: a presence without a queue), is unpaused
    ///   in `q` (now known as its queue: the queue-less presence ends, `q` is staffed), logs
    ///   off.
    #[test]
    fn agent_states_become_records_of_each_change_per_queue() {
        let mut a = assembler(QueueLimits::default());
        feed(
            &mut a,
            "1000|NONE|support|PJSIP/201|ADDMEMBER|
             1060|NONE|support|PJSIP/201|PAUSE|Lunch
             1070|NONE|sales|PJSIP/201|ADDMEMBER|PAUSED
             1080|NONE|NONE|PJSIP/201|UNPAUSEALL|
             1090|NONE|support|PJSIP/201|REMOVEMEMBER|
             2000|1.9|NONE|Agent/1001|AGENTLOGIN|SIP/1001-0001
             2010|NONE|q|Agent/1001|UNPAUSE|
             2020|1.9|NONE|Agent/1001|AGENTLOGOFF|SIP/1001-0001|20",
        );
        let states = a.take_agent_states();
        let got: Vec<_> = states
            .iter()
            .map(|r| {
                (
                    r.queue.as_deref(),
                    r.time.as_nanos() / 1_000_000_000,
                    r.state,
                    r.reason.as_deref(),
                    r.event,
                )
            })
            .collect();
        use AgentPresence::{Off, Paused, Staffed};
        assert_eq!(
            got,
            vec![
                (Some("support"), 1000, Staffed, None, "ADDMEMBER"),
                (Some("support"), 1060, Paused, Some("Lunch"), "PAUSE"),
                (Some("sales"), 1070, Paused, None, "ADDMEMBER"),
                (Some("sales"), 1080, Staffed, None, "UNPAUSEALL"),
                (Some("support"), 1080, Staffed, None, "UNPAUSEALL"),
                (Some("support"), 1090, Off, None, "REMOVEMEMBER"),
                (None, 2000, Staffed, None, "AGENTLOGIN"),
                (None, 2010, Off, None, "UNPAUSE"),
                (Some("q"), 2010, Staffed, None, "UNPAUSE"),
                (Some("q"), 2020, Off, None, "AGENTLOGOFF"),
            ]
        );
        let p = Pseudonymizer::new(Privacy::keyed_hash([7; 32]));
        assert_eq!(states[0].agent, p.identifier("PJSIP/201"));
        let json = serde_json::to_string(&states).unwrap();
        assert!(
            !json.contains("PJSIP") && !json.contains("Agent/"),
            "{json}"
        );
        assert!(a.take_agent_states().is_empty());
        assert_eq!(a.counters().agent_states, 10);
        // A restart: the agents' presence read back is announced (PJSIP/201 still staffed
        // in `sales`; Agent/1001 is logged off: nothing).
        let saved = a.state();
        let mut b = assembler(QueueLimits::default());
        b.restore(saved);
        b.announce_agents(Timestamp::from_secs_nanos(5000, 0));
        let restored: Vec<_> = b
            .take_agent_states()
            .into_iter()
            .map(|r| (r.queue, r.state, r.event))
            .collect();
        assert_eq!(restored, vec![(Some("sales".into()), Staffed, "restored")]);
    }

    /// FreeSWITCH wrap-up, events in `mod_callcenter`'s documented format and in the order
    /// `outbound_agent_thread_run` fires them (no FreeSWITCH here). Agent a1 is `Available
    /// (On Demand)`: after its call (joined 1000, answered 1005, leaving 1065) its state
    /// becomes `Idle` (1065.5) and, its after-call work done, `Waiting` at 1095.25: the
    /// answered record is made then, wrap-up 1095.25 − 1065 = 30.25 s. Then `Available`:
    /// its next call (leaving 1200) goes straight to `Waiting` (1200.1): the configured
    /// `wrap-up-time` is silent, the wrap-up unknown (`null`), the record made at once.
    #[test]
    fn freeswitch_wrap_up_is_measured_after_idle_and_unknown_otherwise() {
        use crate::decode::esl::{callcenter, parse_event};
        let mut a = QueueAssembler::new(
            QueueSource::FreeswitchCallcenter,
            "fs1",
            QueueLimits::default(),
            Pseudonymizer::new(Privacy::keyed_hash([7; 32])),
        );
        let mut out = Vec::new();
        let send = |a: &mut QueueAssembler, out: &mut Vec<QueueCallRecord>, text: &str| {
            let event = callcenter(&parse_event(text.as_bytes()).unwrap()).unwrap();
            a.callcenter(&event, Timestamp::from_secs_nanos(1, 0), &mut |r| {
                out.push(r)
            });
        };
        let call = |m: &str, joined: u32, answered: u32, leaving: u32| {
            [
                format!("Event-Subclass: callcenter::info\nCC-Action: member-queue-start\nCC-Queue: q\nCC-Member-UUID: {m}\nCC-Member-Session-UUID: s{m}\nEvent-Date-Timestamp: {joined}000000\n\n"),
                format!("Event-Subclass: callcenter::info\nCC-Action: bridge-agent-start\nCC-Queue: q\nCC-Member-UUID: {m}\nCC-Agent: a1\nCC-Member-Joined-Time: {joined}\nCC-Agent-Called-Time: {joined}\nCC-Agent-Answered-Time: {answered}\nEvent-Date-Timestamp: {answered}000000\n\n"),
                format!("Event-Subclass: callcenter::info\nCC-Action: bridge-agent-end\nCC-Queue: q\nCC-Member-UUID: {m}\nCC-Agent: a1\nCC-Agent-Answered-Time: {answered}\nCC-Bridge-Terminated-Time: {leaving}\nEvent-Date-Timestamp: {leaving}000000\n\n"),
                format!("Event-Subclass: callcenter::info\nCC-Action: member-queue-end\nCC-Queue: q\nCC-Member-UUID: {m}\nCC-Agent: a1\nCC-Cause: Terminated\nCC-Member-Joined-Time: {joined}\nCC-Agent-Answered-Time: {answered}\nCC-Member-Leaving-Time: {leaving}\nEvent-Date-Timestamp: {leaving}000000\n\n"),
            ]
        };
        let agent = |action: &str, header: &str, value: &str, at_us: u64| {
            format!("Event-Subclass: callcenter::info\nCC-Action: {action}\nCC-Agent: a1\n{header}: {value}\nEvent-Date-Timestamp: {at_us}\n\n")
        };
        send(
            &mut a,
            &mut out,
            &agent(
                "agent-status-change",
                "CC-Agent-Status",
                "Available (On Demand)",
                900_000_000,
            ),
        );
        for e in call("m1", 1000, 1005, 1065) {
            send(&mut a, &mut out, &e);
        }
        send(
            &mut a,
            &mut out,
            &agent(
                "agent-state-change",
                "CC-Agent-State",
                "Idle",
                1_065_500_000,
            ),
        );
        assert!(out.is_empty(), "made before its wrap-up ended: {out:?}");
        send(
            &mut a,
            &mut out,
            &agent(
                "agent-state-change",
                "CC-Agent-State",
                "Waiting",
                1_095_250_000,
            ),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].wrap_up_s, Some(30.25));
        assert_eq!(out[0].talk_s, Some(60.0));
        send(
            &mut a,
            &mut out,
            &agent(
                "agent-status-change",
                "CC-Agent-Status",
                "Available",
                1_100_000_000,
            ),
        );
        for e in call("m2", 1150, 1160, 1200) {
            send(&mut a, &mut out, &e);
        }
        send(
            &mut a,
            &mut out,
            &agent(
                "agent-state-change",
                "CC-Agent-State",
                "Waiting",
                1_200_100_000,
            ),
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].wrap_up_s, None);
        // The agent's presence: staffed from its first status (no queue: FreeSWITCH events
        // name none), the change of status keeps it staffed (no new record).
        let states: Vec<_> = a
            .take_agent_states()
            .into_iter()
            .map(|r| (r.queue, r.state, r.time.as_nanos() / 1_000_000))
            .collect();
        assert_eq!(states, vec![(None, AgentPresence::Staffed, 900_000)]);
        assert_eq!(a.counters().records, 2);
    }
}
