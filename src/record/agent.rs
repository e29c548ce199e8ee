//! The agent state record (`"type": "agent"`, `"schema": "teledge.agent/1"`): one change of
//! one ACD agent's presence in one queue, as the PBX's queue events tell it (Asterisk
//! `queue_log`, FreeSWITCH `mod_callcenter`). Made by [`crate::correlation::queue`] whenever
//! an agent event changes what the agent is in a queue: *off* (not logged in, not a member),
//! *staffed* (logged in or a member, not paused) or *paused* (staffed and paused, with the
//! pause reason when the PBX gives one). The statistics ([`crate::stats`]) turn the spans
//! between two records of one agent and queue into staffed and paused agent-seconds per
//! interval.
//!
//! Identities are pseudonymised **at ingest**, like the queue contact record's: `agent` is a
//! keyed hash outside `clear`.
//!
//! | field | meaning |
//! |---|---|
//! | `type`, `schema` | `"agent"`, `"teledge.agent/1"` |
//! | `record_id` | 32 hex chars: SHA-256 of source, group, agent, queue, time, state and reason; the same log read again gives the same ids |
//! | `source` | `asterisk_queue_log` or `freeswitch_callcenter` |
//! | `group` | the configured name of the PBX (`[[queue_log]] group`, `[[callcenter]] group`) |
//! | `agent` | the queue member or agent (Asterisk's agent column, FreeSWITCH `CC-Agent`), keyed hash outside `clear` |
//! | `queue` | the queue this presence is in; `null` when the events name none: an Asterisk agent logged in (`AGENTLOGIN`) whose queues no event named yet, and every FreeSWITCH agent (its events name no queue: agents join queues by tiers, which no event reports) |
//! | `time` | when the change happened (the event's time) |
//! | `state` | `off`, `staffed` or `paused` (see above) |
//! | `reason` | the pause reason (`PAUSE`/`PAUSEALL` data, at most 32 characters; FreeSWITCH `On Break`); `null` unless `paused`, or when the PBX gave none |
//! | `event` | the event that made the change (`ADDMEMBER`, `REMOVEMEMBER`, `PAUSE`, `UNPAUSE`, `PAUSEALL`, `UNPAUSEALL`, `AGENTLOGIN`, `AGENTLOGOFF`, `agent-status-change`, or `restored`: the state read back from the source's state file at a start) |

use serde::Serialize;

use crate::record::queue::QueueSource;
use crate::time::Timestamp;

/// Schema id of an agent state record.
pub const AGENT_SCHEMA: &str = "teledge.agent/1";

/// Longest pause reason kept (characters); longer ones are cut.
pub const MAX_REASON_CHARS: usize = 32;

/// What an agent is in one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentPresence {
    /// Not logged in, not a member.
    Off,
    /// Logged in (or a member), not paused.
    Staffed,
    /// Staffed and paused.
    Paused,
}

/// One change of an agent's presence in one queue; fields in the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentStateRecord {
    pub schema: &'static str,
    pub record_id: String,
    pub source: QueueSource,
    pub group: String,
    pub agent: String,
    pub queue: Option<String>,
    pub time: Timestamp,
    pub state: AgentPresence,
    pub reason: Option<String>,
    pub event: &'static str,
}
