//! The queue contact record (`"type": "queue"`, `"schema": "teledge.queue/1"`): one caller's
//! stay in one ACD queue, from entering it to being answered and finishing, abandoning, or
//! flowing out — as the PBX's queue events tell it (Asterisk `queue_log`, FreeSWITCH
//! `mod_callcenter`). Made by [`crate::correlation::queue`] when the story is complete (or
//! cannot complete: see `closed_by`). These are the authority for queue KPIs (offered,
//! answered, abandoned, flow-outs, wait, RONA); SIP call records give the rest.
//!
//! Identities are pseudonymised **at ingest** ([`crate::correlation::queue`] holds the site
//! key's [`crate::privacy::Pseudonymizer`]): `caller`, `agent`, `call_id` and a transfer's
//! `target` never exist in clear outside the parser's caller, so the spool writer leaves
//! this record as it is.
//!
//! | field | meaning (units) |
//! |---|---|
//! | `type`, `schema` | `"queue"`, `"teledge.queue/1"` |
//! | `record_id` | 32 hex chars: SHA-256 of source, group, the PBX's call id, queue and the first event's time; the same log read again gives the same id, so a collector drops duplicates |
//! | `source` | `asterisk_queue_log` or `freeswitch_callcenter` |
//! | `group` | the configured name of the PBX the events came from (`[[queue_log]] group`, `[[callcenter]] group`) |
//! | `call_id` | the caller's call id in the PBX (Asterisk uniqueid; FreeSWITCH `CC-Member-Session-UUID`), keyed hash outside `clear` |
//! | `sip_call_id` | the SIP Call-ID of the caller's leg when the PBX tells it (FreeSWITCH: `variable_sip_call_id` of the member channel; `queue_log` does not), keyed hash under the same key as call records' `call_id`, so it equals the `call_id` of that leg's `teledge.call/1` record; `null` otherwise |
//! | `queue` | queue name as configured in the PBX |
//! | `caller` | caller id number (`ENTERQUEUE` data2, `CC-Member-CID-Number`), by the number mode; `null` when not seen or empty |
//! | `enter_time` | when the caller entered the queue (`ENTERQUEUE`, `member-queue-start`); `null` when that event was not seen |
//! | `orig_position` | position on entering (1 = first) |
//! | `connect_time` | when an agent answered (`CONNECT`, `CC-Agent-Answered-Time`); `null` if never |
//! | `end_time` | the event that ended the stay (`COMPLETE*`, `TRANSFER`s, `ABANDON`, `EXIT*`, `WITHDRAW`, `member-queue-end`), or when the record was made without one (`closed_by` not `event`) |
//! | `outcome` | `answered` (an agent took the call), `abandoned` (the caller hung up while waiting), `flow_out` (left the queue without an agent otherwise: see `flow_out`), `unknown` (the story did not end and no agent had answered: `closed_by` says why; a story that did not end after an agent answered is `answered`, its `talk_s` `null`) |
//! | `flow_out` | `timeout` (`EXITWITHTIMEOUT`, FS `TIMEOUT`), `empty` (`EXITEMPTY`, FS `NO_AGENT_TIMEOUT`), `key` (`EXITWITHKEY`, FS `EXIT_WITH_KEY`), `withdraw` (`WITHDRAW`); `null` unless `outcome` is `flow_out` |
//! | `exit_key` | the key pressed (`EXITWITHKEY`) |
//! | `wait_s` | seconds waited in the queue: until the answer (`CONNECT` holdtime; FS answered − joined) or until abandon/flow-out (waittime; FS leaving − joined). Asterisk writes whole seconds |
//! | `ring_s` | seconds the answering agent's phone rang (`CONNECT` ringtime; FS answered − called) |
//! | `position` | position when the caller abandoned or flowed out |
//! | `agent` | the agent who answered (the queue member or agent), keyed hash outside `clear` |
//! | `talk_s` | seconds from the answer to the end (`COMPLETE*`/transfer calltime; FS bridge end − answered) |
//! | `hangup_by` | `caller` (`COMPLETECALLER`) or `agent` (`COMPLETEAGENT`); `null` otherwise |
//! | `transfer` | `{kind, target, context}`: `kind` `transfer`, `blind` or `attended`; `target` the extension (number mode; `null` for attended, whose data names bridges or channels); `context` the dialplan context, or the attended method (`BRIDGE`, `APP`, `LINK`) |
//! | `ring_no_answer` | agents rung who did not answer (RONA: `RINGNOANSWER`, FS `bridge-agent-fail`) |
//! | `ring_no_answer_s` | their ring time summed (seconds; Asterisk writes milliseconds) |
//! | `ring_canceled` | `RINGCANCELED`: the caller hung up while an agent rang |
//! | `agent_dumps` | `AGENTDUMP`: an agent hung up during the announcement |
//! | `wrap_up_s` | after-call work of this contact, seconds: FreeSWITCH, when the agent's state went `Idle` after the call (status `Available (On Demand)`), from the member's leaving time to the agent's next state or status change (the record is made then); `null` otherwise — `queue_log` writes no per-call wrap-up, and an agent going straight to `Waiting` is held back by its configured `wrap-up-time` silently |
//! | `complete` | `true` when the stay was followed from entering to its end |
//! | `closed_by` | `event` (its end event), `superseded` (the same call entered a queue again before an end was seen), `expired` (no event for `max_open_age_s` of log time), `evicted` (the table of open stays was full; this was the one waiting longest), `shutdown` (open when the source stopped; FreeSWITCH only: the `queue_log` source keeps open stays across restarts) |

use serde::Serialize;

use crate::time::Timestamp;

/// Schema id of a queue contact record.
pub const QUEUE_SCHEMA: &str = "teledge.queue/1";

/// Where the queue events came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueSource {
    AsteriskQueueLog,
    FreeswitchCallcenter,
}

/// How the stay in the queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOutcome {
    Answered,
    Abandoned,
    FlowOut,
    Unknown,
}

/// Why the record was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueClosedBy {
    Event,
    Superseded,
    Expired,
    Evicted,
    Shutdown,
}

/// How a caller left the queue without an agent, other than by hanging up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowOut {
    Timeout,
    Empty,
    Key,
    Withdraw,
}

/// Who ended an answered queue call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueHangup {
    Caller,
    Agent,
}

/// Which transfer ended an answered queue call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueTransferKind {
    Transfer,
    Blind,
    Attended,
}

/// A transfer that ended the queue call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueTransfer {
    pub kind: QueueTransferKind,
    pub target: Option<String>,
    pub context: Option<String>,
}

/// A queue contact record (`teledge.queue/1`); fields in the module doc.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueCallRecord {
    pub schema: &'static str,
    pub record_id: String,
    pub source: QueueSource,
    pub group: String,
    pub call_id: String,
    pub sip_call_id: Option<String>,
    pub queue: String,
    pub caller: Option<String>,
    pub enter_time: Option<Timestamp>,
    pub orig_position: Option<u32>,
    pub connect_time: Option<Timestamp>,
    pub end_time: Timestamp,
    pub outcome: QueueOutcome,
    pub flow_out: Option<FlowOut>,
    pub exit_key: Option<String>,
    pub wait_s: Option<f64>,
    pub ring_s: Option<f64>,
    pub position: Option<u32>,
    pub agent: Option<String>,
    pub talk_s: Option<f64>,
    pub hangup_by: Option<QueueHangup>,
    pub transfer: Option<QueueTransfer>,
    pub ring_no_answer: u32,
    pub ring_no_answer_s: f64,
    pub ring_canceled: u32,
    pub agent_dumps: u32,
    pub wrap_up_s: Option<f64>,
    pub complete: bool,
    pub closed_by: QueueClosedBy,
}
