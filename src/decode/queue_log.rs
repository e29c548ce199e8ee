//! Asterisk `queue_log` lines: bytes in, a typed [`QueueLogLine`] out. No I/O, no panic on
//! any input (fuzzed: `fuzz/fuzz_targets/queue_log_line.rs`).
//!
//! # Line format
//!
//! `TIME|CALLID|QUEUE|AGENT|EVENT|DATA1|DATA2|…`, one event per line, as `ast_queue_log()`
//! writes it (`main/logger.c`: `"%ld|%s|%s|%s|%s|"` then the event's data, at most 8192 bytes
//! with the newline). `TIME` is Unix seconds; a fraction (`1366720340.123456`, written by
//! some replicators and by `QueueLog()` wrappers) is accepted. `CALLID` is the caller
//! channel's uniqueid, or `NONE`, `REALTIME`, `MANAGER`, `CLI` for events without a call.
//! `AGENT` is the member's interface (`SIP/8007`, `PJSIP/201`, `Local/2001@from-queue/n`)
//! or, with `log_membername_as_agent = yes` in `queues.conf`, its member name: both are kept
//! as written (the caller pseudonymises them). The same format is written to the file when a
//! realtime `queue_log` table is configured together with `queue_log_to_file = yes`.
//! A realtime table's own `time` column (`2012-07-03 15:27:23.896208`, local time) is not
//! Unix seconds: such a line is refused as [`QueueLogError::BadTime`], not guessed at.
//!
//! # Events and units
//!
//! Every event of app_queue and the agent channel driver is typed, with the units app_queue
//! writes (`apps/app_queue.c`): durations in whole **seconds**, except `RINGNOANSWER` and
//! `RINGCANCELED`, which are **milliseconds**. Fields that older Asterisk versions did not
//! write (the origposition of `ENTERQUEUE` and `COMPLETE*` before 1.4, the member uniqueid
//! and ring time of `CONNECT` before 1.6/10, the origposition of `TRANSFER` before 1.4) are
//! `Option`s. An event name not in the table is kept as [`QueueEvent::Unknown`] with its
//! data, never refused. A known event whose required field is missing or not a number is
//! an error naming the event and the field.
//!
//! | event | data (units) | variant |
//! |---|---|---|
//! | `ENTERQUEUE` | url \| callerid \| origposition [\| calleridname] | [`QueueEvent::EnterQueue`] |
//! | `CONNECT` | holdtime s \| member uniqueid \| ringtime s | [`QueueEvent::Connect`] |
//! | `COMPLETECALLER`, `COMPLETEAGENT` | holdtime s \| calltime s \| origposition | [`QueueEvent::Complete`] |
//! | `ABANDON` | position \| origposition \| waittime s | [`QueueEvent::Abandon`] |
//! | `EXITWITHTIMEOUT`, `EXITEMPTY` | position \| origposition \| waittime s | [`QueueEvent::Exit`] |
//! | `EXITWITHKEY` | key \| position \| origposition \| waittime s | [`QueueEvent::Exit`] |
//! | `WITHDRAW` | position \| origposition \| waittime s \| info | [`QueueEvent::Exit`] |
//! | `TRANSFER`, `BLINDTRANSFER` | extension \| context \| holdtime s \| calltime s \| origposition | [`QueueEvent::Transfer`] |
//! | `ATTENDEDTRANSFER` | method (`BRIDGE`, `APP`, `LINK`) \| method data (1 or 2 fields) \| holdtime s \| calltime s \| origposition | [`QueueEvent::Transfer`] |
//! | `RINGNOANSWER` | ringtime **ms** | [`QueueEvent::RingNoAnswer`] |
//! | `RINGCANCELED` | ringtime **ms** | [`QueueEvent::RingCanceled`] |
//! | `AGENTDUMP`, `SYSCOMPAT` | — | [`QueueEvent::AgentDump`], [`QueueEvent::SysCompat`] |
//! | `AGENTLOGIN` | channel | [`QueueEvent::AgentLogin`] |
//! | `AGENTLOGOFF` | channel \| logintime s | [`QueueEvent::AgentLogoff`] |
//! | `AGENTCALLBACKLOGIN` | exten@context | [`QueueEvent::AgentLogin`] |
//! | `AGENTCALLBACKLOGOFF` | exten@context \| logintime s \| reason | [`QueueEvent::AgentLogoff`] |
//! | `ADDMEMBER` | `PAUSED` or empty | [`QueueEvent::AddMember`] |
//! | `REMOVEMEMBER` | — | [`QueueEvent::RemoveMember`] |
//! | `PAUSE`, `UNPAUSE`, `PAUSEALL`, `UNPAUSEALL` | reason | [`QueueEvent::Pause`] |
//! | `PENALTY` | penalty | [`QueueEvent::Penalty`] |
//! | `RINGINUSE` | 0 or 1 | [`QueueEvent::RingInUse`] |
//! | `CONFIGRELOAD`, `QUEUESTART` | — | [`QueueEvent::ConfigReload`], [`QueueEvent::QueueStart`] |
//! | `DID` | the dialled number (FreePBX writes it before `ENTERQUEUE`) | [`QueueEvent::Did`] |
//! | `INFO` | free text | [`QueueEvent::Info`] |
//!
//! Personal data: `ENTERQUEUE`'s callerid and calleridname, `DID`, a transfer's extension and
//! the agent field are returned as written. Whoever calls the parser pseudonymises them
//! before they leave it ([`crate::correlation::queue`] does, with the site key).

use crate::time::Timestamp;

/// Longest line accepted, newline excluded: Asterisk formats a line into 8192 bytes.
pub const MAX_LINE_LEN: usize = 8192;
/// Most data fields kept of an unknown event.
const MAX_UNKNOWN_FIELDS: usize = 16;

/// Why a line is not a `queue_log` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueLogError {
    #[error("empty line")]
    Empty,
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    TooLong,
    #[error("fewer than 5 fields (time|callid|queue|agent|event)")]
    TooFewFields,
    #[error("time is not Unix seconds")]
    BadTime,
    #[error("empty event name")]
    NoEvent,
    #[error("{event}: field {field} missing")]
    MissingField {
        event: &'static str,
        field: &'static str,
    },
    #[error("{event}: field {field} is not a number")]
    BadNumber {
        event: &'static str,
        field: &'static str,
    },
}

impl QueueLogError {
    /// A metric label.
    pub fn kind(self) -> &'static str {
        match self {
            QueueLogError::Empty => "queue_log_empty",
            QueueLogError::TooLong => "queue_log_too_long",
            QueueLogError::TooFewFields => "queue_log_too_few_fields",
            QueueLogError::BadTime => "queue_log_bad_time",
            QueueLogError::NoEvent => "queue_log_no_event",
            QueueLogError::MissingField { .. } => "queue_log_missing_field",
            QueueLogError::BadNumber { .. } => "queue_log_bad_number",
        }
    }
}

/// One line of the `queue_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLogLine {
    /// When Asterisk wrote the line.
    pub time: Timestamp,
    /// The caller channel's uniqueid; `NONE`, `REALTIME`, `MANAGER` or `CLI` for events
    /// without a call (see [`QueueLogLine::call_id`]).
    pub callid: String,
    /// The queue name; `NONE` for events of no queue (`QUEUESTART`, `PAUSEALL`, agent logins).
    pub queue: String,
    /// The member (interface or member name); `NONE` for caller events.
    pub agent: String,
    pub event: QueueEvent,
}

impl QueueLogLine {
    /// The caller's uniqueid, or `None` for the placeholders Asterisk writes for events
    /// without a call.
    pub fn call_id(&self) -> Option<&str> {
        match self.callid.as_str() {
            "" | "NONE" | "REALTIME" | "MANAGER" | "CLI" => None,
            id => Some(id),
        }
    }

    /// The member, or `None` for `NONE`.
    pub fn agent(&self) -> Option<&str> {
        none_if_placeholder(&self.agent)
    }

    /// The queue, or `None` for `NONE`.
    pub fn queue(&self) -> Option<&str> {
        none_if_placeholder(&self.queue)
    }
}

fn none_if_placeholder(value: &str) -> Option<&str> {
    match value {
        "" | "NONE" => None,
        v => Some(v),
    }
}

/// How the caller left the queue without reaching an agent, other than by hanging up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// `EXITWITHTIMEOUT`: the queue's timeout expired.
    Timeout,
    /// `EXITEMPTY`: no reachable members (`leavewhenempty`).
    Empty,
    /// `EXITWITHKEY`: the caller pressed a menu key.
    Key,
    /// `WITHDRAW`: withdrawn by the AMI action `QueueWithdrawCaller`.
    Withdraw,
}

/// Who ended a connected queue call (`COMPLETECALLER` / `COMPLETEAGENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletedBy {
    Caller,
    Agent,
}

/// Which transfer ended the queue call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// `TRANSFER` (Asterisk before 12).
    Transfer,
    /// `BLINDTRANSFER`.
    Blind,
    /// `ATTENDEDTRANSFER`.
    Attended,
}

/// A `PAUSE`-family event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseKind {
    Pause,
    Unpause,
    /// Every queue of the member at once (`queue` is `NONE`).
    PauseAll,
    UnpauseAll,
}

/// What happened, with the event's typed data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueEvent {
    /// A call entered the queue.
    EnterQueue {
        url: String,
        caller_id: String,
        orig_position: Option<u32>,
        caller_name: Option<String>,
    },
    /// The caller was bridged to a member.
    Connect {
        /// Seconds the caller waited in the queue before the answer.
        hold_s: u64,
        /// The member channel's uniqueid.
        member_uniqueid: Option<String>,
        /// Seconds the member's phone rang before it answered.
        ring_s: Option<u64>,
    },
    /// A connected call ended normally.
    Complete {
        by: CompletedBy,
        hold_s: u64,
        /// Seconds from the answer to the end.
        talk_s: u64,
        orig_position: Option<u32>,
    },
    /// The caller hung up while waiting.
    Abandon {
        position: u32,
        orig_position: u32,
        wait_s: u64,
    },
    /// The caller left the queue without an agent (a flow-out).
    Exit {
        kind: ExitKind,
        /// The key pressed (`EXITWITHKEY`); the withdraw info (`WITHDRAW`).
        detail: Option<String>,
        position: u32,
        orig_position: u32,
        wait_s: u64,
    },
    /// A connected call was transferred away.
    Transfer {
        kind: TransferKind,
        /// Extension (`TRANSFER`, `BLINDTRANSFER`) or the method's data (`ATTENDEDTRANSFER`).
        target: String,
        /// Context (`TRANSFER`, `BLINDTRANSFER`) or the method (`BRIDGE`, `APP`, `LINK`).
        context: String,
        hold_s: u64,
        talk_s: u64,
        orig_position: Option<u32>,
    },
    /// A member was rung and did not answer (RONA).
    RingNoAnswer {
        ring_ms: u64,
    },
    /// The caller hung up while a member was ringing.
    RingCanceled {
        ring_ms: Option<u64>,
    },
    /// The member hung up during the announcement before the bridge.
    AgentDump,
    /// Answered, but the channels were not compatible: dropped.
    SysCompat,
    /// An agent logged in (the channel, or `exten@context` for callback agents).
    AgentLogin {
        channel: String,
    },
    /// An agent logged off after `login_s` seconds.
    AgentLogoff {
        channel: String,
        login_s: Option<u64>,
        reason: Option<String>,
    },
    /// A member was added to the queue, paused or not.
    AddMember {
        paused: bool,
    },
    RemoveMember,
    Pause {
        kind: PauseKind,
        reason: String,
    },
    Penalty {
        penalty: i64,
    },
    RingInUse {
        enabled: bool,
    },
    ConfigReload,
    QueueStart,
    /// The number dialled (FreePBX's `DID` line).
    Did {
        did: String,
    },
    Info {
        text: String,
    },
    /// An event name not in the table, with up to 16 data fields.
    Unknown {
        name: String,
        data: Vec<String>,
    },
}

impl QueueEvent {
    /// The event's name as written (`Unknown` keeps its own).
    pub fn name(&self) -> &str {
        match self {
            QueueEvent::EnterQueue { .. } => "ENTERQUEUE",
            QueueEvent::Connect { .. } => "CONNECT",
            QueueEvent::Complete {
                by: CompletedBy::Caller,
                ..
            } => "COMPLETECALLER",
            QueueEvent::Complete {
                by: CompletedBy::Agent,
                ..
            } => "COMPLETEAGENT",
            QueueEvent::Abandon { .. } => "ABANDON",
            QueueEvent::Exit { kind, .. } => match kind {
                ExitKind::Timeout => "EXITWITHTIMEOUT",
                ExitKind::Empty => "EXITEMPTY",
                ExitKind::Key => "EXITWITHKEY",
                ExitKind::Withdraw => "WITHDRAW",
            },
            QueueEvent::Transfer { kind, .. } => match kind {
                TransferKind::Transfer => "TRANSFER",
                TransferKind::Blind => "BLINDTRANSFER",
                TransferKind::Attended => "ATTENDEDTRANSFER",
            },
            QueueEvent::RingNoAnswer { .. } => "RINGNOANSWER",
            QueueEvent::RingCanceled { .. } => "RINGCANCELED",
            QueueEvent::AgentDump => "AGENTDUMP",
            QueueEvent::SysCompat => "SYSCOMPAT",
            QueueEvent::AgentLogin { .. } => "AGENTLOGIN",
            QueueEvent::AgentLogoff { .. } => "AGENTLOGOFF",
            QueueEvent::AddMember { .. } => "ADDMEMBER",
            QueueEvent::RemoveMember => "REMOVEMEMBER",
            QueueEvent::Pause { kind, .. } => match kind {
                PauseKind::Pause => "PAUSE",
                PauseKind::Unpause => "UNPAUSE",
                PauseKind::PauseAll => "PAUSEALL",
                PauseKind::UnpauseAll => "UNPAUSEALL",
            },
            QueueEvent::Penalty { .. } => "PENALTY",
            QueueEvent::RingInUse { .. } => "RINGINUSE",
            QueueEvent::ConfigReload => "CONFIGRELOAD",
            QueueEvent::QueueStart => "QUEUESTART",
            QueueEvent::Did { .. } => "DID",
            QueueEvent::Info { .. } => "INFO",
            QueueEvent::Unknown { name, .. } => name,
        }
    }
}

/// Parses one line (without its newline; a trailing `\r` is ignored). Bytes that are not
/// UTF-8 (a caller name in Latin-1) are replaced, never refused.
pub fn parse_line(line: &[u8]) -> Result<QueueLogLine, QueueLogError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE_LEN {
        return Err(QueueLogError::TooLong);
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(QueueLogError::Empty);
    }
    let text = String::from_utf8_lossy(line);
    let mut fields = text.split('|');
    let (Some(time), Some(callid), Some(queue), Some(agent), Some(event)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(QueueLogError::TooFewFields);
    };
    let time = parse_time(time.trim())?;
    let event_name = event.trim();
    if event_name.is_empty() {
        return Err(QueueLogError::NoEvent);
    }
    let data: Vec<&str> = fields.collect();
    let event = parse_event(event_name, &data)?;
    Ok(QueueLogLine {
        time,
        callid: callid.trim().to_owned(),
        queue: queue.trim().to_owned(),
        agent: agent.trim().to_owned(),
        event,
    })
}

/// Unix seconds, with an optional fraction of up to 9 digits.
fn parse_time(text: &str) -> Result<Timestamp, QueueLogError> {
    let (secs, frac) = match text.split_once('.') {
        Some((s, f)) => (s, Some(f)),
        None => (text, None),
    };
    if secs.is_empty() || secs.len() > 12 || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QueueLogError::BadTime);
    }
    let secs: i64 = secs.parse().map_err(|_| QueueLogError::BadTime)?;
    let nanos = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let value: u32 = f.parse().map_err(|_| QueueLogError::BadTime)?;
            value * 10u32.pow(9 - f.len() as u32)
        }
        Some(_) => return Err(QueueLogError::BadTime),
    };
    Ok(Timestamp::from_secs_nanos(secs, nanos))
}

/// The data fields of one event, read in order.
struct Data<'a> {
    event: &'static str,
    fields: &'a [&'a str],
    at: usize,
}

impl<'a> Data<'a> {
    fn new(event: &'static str, fields: &'a [&'a str]) -> Self {
        Data {
            event,
            fields,
            at: 0,
        }
    }

    /// The next field, `None` when the line ends (or the field is empty).
    fn opt_text(&mut self) -> Option<&'a str> {
        let field = self.fields.get(self.at).map(|f| f.trim());
        self.at += 1;
        field.filter(|f| !f.is_empty())
    }

    /// The next field as written, empty when the line ends.
    fn text(&mut self) -> String {
        self.opt_text().unwrap_or_default().to_owned()
    }

    fn opt_number<T: std::str::FromStr>(
        &mut self,
        field: &'static str,
    ) -> Result<Option<T>, QueueLogError> {
        match self.opt_text() {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| QueueLogError::BadNumber {
                    event: self.event,
                    field,
                }),
        }
    }

    fn number<T: std::str::FromStr>(&mut self, field: &'static str) -> Result<T, QueueLogError> {
        self.opt_number(field)?.ok_or(QueueLogError::MissingField {
            event: self.event,
            field,
        })
    }

    /// The rest of the fields joined by `|` (free text that may itself hold pipes).
    fn rest(&mut self) -> String {
        let rest = self.fields.get(self.at..).unwrap_or_default().join("|");
        self.at = self.fields.len();
        rest.trim().to_owned()
    }
}

fn parse_event(name: &str, fields: &[&str]) -> Result<QueueEvent, QueueLogError> {
    Ok(match name {
        "ENTERQUEUE" => {
            let mut d = Data::new("ENTERQUEUE", fields);
            QueueEvent::EnterQueue {
                url: d.text(),
                caller_id: d.text(),
                orig_position: d.opt_number("origposition")?,
                caller_name: d.opt_text().map(str::to_owned),
            }
        }
        "CONNECT" => {
            let mut d = Data::new("CONNECT", fields);
            QueueEvent::Connect {
                hold_s: d.number("holdtime")?,
                member_uniqueid: d.opt_text().map(str::to_owned),
                ring_s: d.opt_number("ringtime")?,
            }
        }
        "COMPLETECALLER" | "COMPLETEAGENT" => {
            let (event, by) = if name == "COMPLETECALLER" {
                ("COMPLETECALLER", CompletedBy::Caller)
            } else {
                ("COMPLETEAGENT", CompletedBy::Agent)
            };
            let mut d = Data::new(event, fields);
            QueueEvent::Complete {
                by,
                hold_s: d.number("holdtime")?,
                talk_s: d.number("calltime")?,
                orig_position: d.opt_number("origposition")?,
            }
        }
        "ABANDON" => {
            let mut d = Data::new("ABANDON", fields);
            QueueEvent::Abandon {
                position: d.number("position")?,
                orig_position: d.number("origposition")?,
                wait_s: d.number("waittime")?,
            }
        }
        "EXITWITHTIMEOUT" | "EXITEMPTY" => {
            let (event, kind) = if name == "EXITEMPTY" {
                ("EXITEMPTY", ExitKind::Empty)
            } else {
                ("EXITWITHTIMEOUT", ExitKind::Timeout)
            };
            let mut d = Data::new(event, fields);
            QueueEvent::Exit {
                kind,
                detail: None,
                position: d.number("position")?,
                orig_position: d.number("origposition")?,
                wait_s: d.number("waittime")?,
            }
        }
        "EXITWITHKEY" => {
            let mut d = Data::new("EXITWITHKEY", fields);
            QueueEvent::Exit {
                kind: ExitKind::Key,
                detail: d.opt_text().map(str::to_owned),
                position: d.number("position")?,
                orig_position: d.number("origposition")?,
                wait_s: d.number("waittime")?,
            }
        }
        "WITHDRAW" => {
            let mut d = Data::new("WITHDRAW", fields);
            let position = d.number("position")?;
            let orig_position = d.number("origposition")?;
            let wait_s = d.number("waittime")?;
            let info = d.rest();
            QueueEvent::Exit {
                kind: ExitKind::Withdraw,
                detail: (!info.is_empty()).then_some(info),
                position,
                orig_position,
                wait_s,
            }
        }
        "TRANSFER" | "BLINDTRANSFER" => {
            let (event, kind) = if name == "TRANSFER" {
                ("TRANSFER", TransferKind::Transfer)
            } else {
                ("BLINDTRANSFER", TransferKind::Blind)
            };
            let mut d = Data::new(event, fields);
            QueueEvent::Transfer {
                kind,
                target: d.text(),
                context: d.text(),
                hold_s: d.number("holdtime")?,
                talk_s: d.number("calltime")?,
                orig_position: d.opt_number("origposition")?,
            }
        }
        "ATTENDEDTRANSFER" => {
            // method|data|holdtime|calltime|origposition, where `LINK` has two data fields:
            // the numbers are the last three fields, whatever the method wrote before them.
            let event = "ATTENDEDTRANSFER";
            let n = fields.len();
            if n < 4 {
                return Err(QueueLogError::MissingField {
                    event,
                    field: "calltime",
                });
            }
            let method = fields[0].trim().to_owned();
            let target = fields[1..n - 3]
                .iter()
                .map(|f| f.trim())
                .collect::<Vec<_>>()
                .join("|");
            let mut d = Data::new(event, &fields[n - 3..]);
            QueueEvent::Transfer {
                kind: TransferKind::Attended,
                target,
                context: method,
                hold_s: d.number("holdtime")?,
                talk_s: d.number("calltime")?,
                orig_position: d.opt_number("origposition")?,
            }
        }
        "RINGNOANSWER" => QueueEvent::RingNoAnswer {
            ring_ms: Data::new("RINGNOANSWER", fields).number("ringtime")?,
        },
        "RINGCANCELED" => QueueEvent::RingCanceled {
            ring_ms: Data::new("RINGCANCELED", fields).opt_number("ringtime")?,
        },
        "AGENTDUMP" => QueueEvent::AgentDump,
        "SYSCOMPAT" => QueueEvent::SysCompat,
        "AGENTLOGIN" | "AGENTCALLBACKLOGIN" => QueueEvent::AgentLogin {
            channel: Data::new("AGENTLOGIN", fields).text(),
        },
        "AGENTLOGOFF" | "AGENTCALLBACKLOGOFF" => {
            let mut d = Data::new("AGENTLOGOFF", fields);
            QueueEvent::AgentLogoff {
                channel: d.text(),
                login_s: d.opt_number("logintime")?,
                reason: d.opt_text().map(str::to_owned),
            }
        }
        "ADDMEMBER" => QueueEvent::AddMember {
            paused: Data::new("ADDMEMBER", fields)
                .opt_text()
                .is_some_and(|f| f.eq_ignore_ascii_case("PAUSED")),
        },
        "REMOVEMEMBER" => QueueEvent::RemoveMember,
        "PAUSE" | "UNPAUSE" | "PAUSEALL" | "UNPAUSEALL" => QueueEvent::Pause {
            kind: match name {
                "PAUSE" => PauseKind::Pause,
                "UNPAUSE" => PauseKind::Unpause,
                "PAUSEALL" => PauseKind::PauseAll,
                _ => PauseKind::UnpauseAll,
            },
            reason: Data::new("PAUSE", fields).rest(),
        },
        "PENALTY" => QueueEvent::Penalty {
            penalty: Data::new("PENALTY", fields).number("penalty")?,
        },
        "RINGINUSE" => QueueEvent::RingInUse {
            enabled: Data::new("RINGINUSE", fields).number::<i64>("ringinuse")? != 0,
        },
        "CONFIGRELOAD" => QueueEvent::ConfigReload,
        "QUEUESTART" => QueueEvent::QueueStart,
        "DID" => QueueEvent::Did {
            did: Data::new("DID", fields).text(),
        },
        "INFO" => QueueEvent::Info {
            text: Data::new("INFO", fields).rest(),
        },
        other => QueueEvent::Unknown {
            name: other.chars().take(64).collect(),
            data: fields
                .iter()
                .take(MAX_UNKNOWN_FIELDS)
                .map(|f| f.trim().to_owned())
                .collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str) -> QueueEvent {
        parse_line(line.as_bytes())
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .event
    }

    #[test]
    fn the_documented_example_line() {
        let l =
            parse_line(b"1366720340|1366720340.303267|MYQUEUE|SIP/8007|RINGNOANSWER|1000").unwrap();
        assert_eq!(l.time, Timestamp::from_secs_nanos(1_366_720_340, 0));
        assert_eq!(l.call_id(), Some("1366720340.303267"));
        assert_eq!(l.queue(), Some("MYQUEUE"));
        assert_eq!(l.agent(), Some("SIP/8007"));
        assert_eq!(l.event, QueueEvent::RingNoAnswer { ring_ms: 1000 });
    }

    #[test]
    fn member_names_as_agents_and_placeholder_call_ids() {
        // `log_membername_as_agent = yes`: the member name (a person's) instead of the
        // interface; realtime members logged with `REALTIME` as the call id.
        let l = parse_line(b"1700000000|1700000000.5|sales|Alice Smith|CONNECT|3|1700000000.6|2")
            .unwrap();
        assert_eq!(l.agent(), Some("Alice Smith"));
        let l = parse_line(b"1700000000|REALTIME|sales|Alice Smith|ADDMEMBER|PAUSED").unwrap();
        assert_eq!(l.call_id(), None);
        assert_eq!(l.event, QueueEvent::AddMember { paused: true });
        let l = parse_line(b"1700000000|MANAGER|sales|PJSIP/201|REMOVEMEMBER|").unwrap();
        assert_eq!((l.call_id(), l.agent()), (None, Some("PJSIP/201")));
    }

    #[test]
    fn times_with_fractions_and_bad_times() {
        let l = parse_line(b"1366720340.25|NONE|NONE|NONE|QUEUESTART|").unwrap();
        assert_eq!(
            l.time,
            Timestamp::from_secs_nanos(1_366_720_340, 250_000_000)
        );
        assert_eq!(l.call_id(), None);
        assert_eq!(l.queue(), None);
        for bad in [
            "2012-07-03 15:27:23.896208|1.1|q|NONE|ENTERQUEUE||1|1",
            "-5|1.1|q|NONE|QUEUESTART",
            "12.|1.1|q|NONE|QUEUESTART",
            "12.1234567890|1.1|q|NONE|QUEUESTART",
            "x|1.1|q|NONE|QUEUESTART",
        ] {
            assert_eq!(
                parse_line(bad.as_bytes()).unwrap_err(),
                QueueLogError::BadTime,
                "{bad}"
            );
        }
    }

    #[test]
    fn enterqueue_with_and_without_the_optional_fields() {
        assert_eq!(
            event("1|1.1|q|NONE|ENTERQUEUE||+4930123|1|Alice"),
            QueueEvent::EnterQueue {
                url: String::new(),
                caller_id: "+4930123".into(),
                orig_position: Some(1),
                caller_name: Some("Alice".into()),
            }
        );
        // Asterisk 1.2: url|callerid only.
        assert_eq!(
            event("1|1.1|q|NONE|ENTERQUEUE||01773597776"),
            QueueEvent::EnterQueue {
                url: String::new(),
                caller_id: "01773597776".into(),
                orig_position: None,
                caller_name: None,
            }
        );
    }

    #[test]
    fn connect_complete_and_their_units() {
        assert_eq!(
            event("1|1.1|q|PJSIP/201|CONNECT|10|1.2|3"),
            QueueEvent::Connect {
                hold_s: 10,
                member_uniqueid: Some("1.2".into()),
                ring_s: Some(3),
            }
        );
        assert_eq!(
            event("1|1.1|q|Local/2004@from-internal/n|CONNECT|1|1266833911.7"),
            QueueEvent::Connect {
                hold_s: 1,
                member_uniqueid: Some("1266833911.7".into()),
                ring_s: None,
            }
        );
        assert_eq!(
            event("1|1.1|q|PJSIP/201|COMPLETEAGENT|10|120|1"),
            QueueEvent::Complete {
                by: CompletedBy::Agent,
                hold_s: 10,
                talk_s: 120,
                orig_position: Some(1),
            }
        );
        assert_eq!(
            event("1|1.1|q|PJSIP/201|COMPLETECALLER|6|25"),
            QueueEvent::Complete {
                by: CompletedBy::Caller,
                hold_s: 6,
                talk_s: 25,
                orig_position: None,
            }
        );
    }

    #[test]
    fn abandons_and_flow_outs() {
        assert_eq!(
            event("1|1.1|q|NONE|ABANDON|1|1|68"),
            QueueEvent::Abandon {
                position: 1,
                orig_position: 1,
                wait_s: 68
            }
        );
        for (name, kind) in [
            ("EXITWITHTIMEOUT", ExitKind::Timeout),
            ("EXITEMPTY", ExitKind::Empty),
        ] {
            assert_eq!(
                event(&format!("1|1.1|q|NONE|{name}|2|3|300")),
                QueueEvent::Exit {
                    kind,
                    detail: None,
                    position: 2,
                    orig_position: 3,
                    wait_s: 300
                }
            );
        }
        assert_eq!(
            event("1|1.1|q|NONE|EXITWITHKEY|5|1|2|42"),
            QueueEvent::Exit {
                kind: ExitKind::Key,
                detail: Some("5".into()),
                position: 1,
                orig_position: 2,
                wait_s: 42
            }
        );
        assert_eq!(
            event("1|1.1|q|NONE|WITHDRAW|1|1|9|moved|elsewhere"),
            QueueEvent::Exit {
                kind: ExitKind::Withdraw,
                detail: Some("moved|elsewhere".into()),
                position: 1,
                orig_position: 1,
                wait_s: 9
            }
        );
    }

    #[test]
    fn transfers_of_every_kind() {
        assert_eq!(
            event("1|1.1|q|SIP/8007|TRANSFER|200|from-internal|4|30|1"),
            QueueEvent::Transfer {
                kind: TransferKind::Transfer,
                target: "200".into(),
                context: "from-internal".into(),
                hold_s: 4,
                talk_s: 30,
                orig_position: Some(1),
            }
        );
        assert_eq!(
            event("1|1.1|q|SIP/8007|BLINDTRANSFER|200|default|4|30|2"),
            QueueEvent::Transfer {
                kind: TransferKind::Blind,
                target: "200".into(),
                context: "default".into(),
                hold_s: 4,
                talk_s: 30,
                orig_position: Some(2),
            }
        );
        assert_eq!(
            event("1|1.1|q|SIP/8007|ATTENDEDTRANSFER|BRIDGE|abc-123|4|30|1"),
            QueueEvent::Transfer {
                kind: TransferKind::Attended,
                target: "abc-123".into(),
                context: "BRIDGE".into(),
                hold_s: 4,
                talk_s: 30,
                orig_position: Some(1),
            }
        );
        // LINK writes two channel names.
        assert_eq!(
            event("1|1.1|q|SIP/8007|ATTENDEDTRANSFER|LINK|Local/a;1|Local/b;2|4|30|1"),
            QueueEvent::Transfer {
                kind: TransferKind::Attended,
                target: "Local/a;1|Local/b;2".into(),
                context: "LINK".into(),
                hold_s: 4,
                talk_s: 30,
                orig_position: Some(1),
            }
        );
        assert!(matches!(
            parse_line(b"1|1.1|q|SIP/8007|ATTENDEDTRANSFER|APP"),
            Err(QueueLogError::MissingField { .. })
        ));
    }

    #[test]
    fn ring_events_are_milliseconds() {
        assert_eq!(
            event("1|1.1|q|SIP/8007|RINGNOANSWER|15000"),
            QueueEvent::RingNoAnswer { ring_ms: 15_000 }
        );
        assert_eq!(
            event("1|1.1|q|SIP/8007|RINGCANCELED|2345"),
            QueueEvent::RingCanceled {
                ring_ms: Some(2345)
            }
        );
        assert_eq!(
            event("1|1.1|q|SIP/8007|RINGCANCELED"),
            QueueEvent::RingCanceled { ring_ms: None }
        );
        assert_eq!(event("1|1.1|q|SIP/8007|AGENTDUMP|"), QueueEvent::AgentDump);
        assert_eq!(event("1|1.1|q|SIP/8007|SYSCOMPAT|"), QueueEvent::SysCompat);
    }

    #[test]
    fn agent_and_member_events() {
        assert_eq!(
            event("1|1.1|NONE|Agent/1001|AGENTLOGIN|SIP/1001-00000001"),
            QueueEvent::AgentLogin {
                channel: "SIP/1001-00000001".into()
            }
        );
        assert_eq!(
            event("1|1.1|NONE|Agent/1001|AGENTLOGOFF|SIP/1001-00000001|3600"),
            QueueEvent::AgentLogoff {
                channel: "SIP/1001-00000001".into(),
                login_s: Some(3600),
                reason: None,
            }
        );
        assert_eq!(
            event("1|1.1|NONE|Agent/3001|AGENTCALLBACKLOGOFF|1002@pcm-dev|43|CommandLogoff"),
            QueueEvent::AgentLogoff {
                channel: "1002@pcm-dev".into(),
                login_s: Some(43),
                reason: Some("CommandLogoff".into()),
            }
        );
        assert_eq!(
            event("1|CLI|sales|SIP/0004f2040001|ADDMEMBER|"),
            QueueEvent::AddMember { paused: false }
        );
        assert_eq!(
            event("1|MANAGER|sales|Alice|ADDMEMBER|PAUSED"),
            QueueEvent::AddMember { paused: true }
        );
        assert_eq!(
            event("1|NONE|sales|Alice|REMOVEMEMBER|"),
            QueueEvent::RemoveMember
        );
        assert_eq!(
            event("1|NONE|sales|Alice|PAUSE|Lunch"),
            QueueEvent::Pause {
                kind: PauseKind::Pause,
                reason: "Lunch".into()
            }
        );
        assert_eq!(
            event("1|NONE|NONE|Alice|UNPAUSEALL|"),
            QueueEvent::Pause {
                kind: PauseKind::UnpauseAll,
                reason: String::new()
            }
        );
        assert_eq!(
            event("1|NONE|sales|Alice|PENALTY|-2"),
            QueueEvent::Penalty { penalty: -2 }
        );
        assert_eq!(
            event("1|NONE|sales|Alice|RINGINUSE|1"),
            QueueEvent::RingInUse { enabled: true }
        );
    }

    #[test]
    fn markers_did_info_and_unknown_events() {
        assert_eq!(
            event("1|NONE|NONE|NONE|CONFIGRELOAD|"),
            QueueEvent::ConfigReload
        );
        assert_eq!(
            event("1|NONE|NONE|NONE|QUEUESTART|"),
            QueueEvent::QueueStart
        );
        assert_eq!(
            event("1|1.1|q|NONE|DID|+4930555"),
            QueueEvent::Did {
                did: "+4930555".into()
            }
        );
        assert_eq!(
            event("1|1.1|q|NONE|INFO|CALLER|note|x"),
            QueueEvent::Info {
                text: "CALLER|note|x".into()
            }
        );
        assert_eq!(
            event("1|1.1|q|NONE|FULL|"),
            QueueEvent::Unknown {
                name: "FULL".into(),
                data: vec![String::new()]
            }
        );
        assert_eq!(event("1|1.1|q|NONE|FULL|").name(), "FULL");
    }

    #[test]
    fn bad_lines_are_clear_errors() {
        assert_eq!(parse_line(b"").unwrap_err(), QueueLogError::Empty);
        assert_eq!(parse_line(b" \r").unwrap_err(), QueueLogError::Empty);
        assert_eq!(
            parse_line(b"1|2|3|4").unwrap_err(),
            QueueLogError::TooFewFields
        );
        assert_eq!(parse_line(b"1|2|3|4|").unwrap_err(), QueueLogError::NoEvent);
        assert_eq!(
            parse_line(b"1|1.1|q|NONE|ABANDON|1|x|3").unwrap_err(),
            QueueLogError::BadNumber {
                event: "ABANDON",
                field: "origposition"
            }
        );
        assert_eq!(
            parse_line(b"1|1.1|q|NONE|CONNECT").unwrap_err(),
            QueueLogError::MissingField {
                event: "CONNECT",
                field: "holdtime"
            }
        );
        let long = format!("1|1.1|q|NONE|INFO|{}", "x".repeat(MAX_LINE_LEN));
        assert_eq!(
            parse_line(long.as_bytes()).unwrap_err(),
            QueueLogError::TooLong
        );
        assert_eq!(
            parse_line(b"1|1.1|q|NONE|ABANDON|1|1|3\r").unwrap().event,
            QueueEvent::Abandon {
                position: 1,
                orig_position: 1,
                wait_s: 3
            }
        );
        // Latin-1 in a caller name is replaced, not refused.
        let l = parse_line(b"1|1.1|q|NONE|ENTERQUEUE||123|1|M\xfcller").unwrap();
        assert!(
            matches!(l.event, QueueEvent::EnterQueue { caller_name: Some(n), .. } if n.starts_with('M'))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_line(&bytes);
        }

        #[test]
        fn any_pipe_soup_parses_or_fails_cleanly(text in "[0-9|A-Z.]{0,80}") {
            let _ = parse_line(text.as_bytes());
        }
    }
}
