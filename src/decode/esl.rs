//! FreeSWITCH event socket (ESL) messages and `mod_callcenter` events: bytes in, typed values
//! out. No I/O, no panic on any input (fuzzed: `fuzz/fuzz_targets/esl_stream.rs`).
//!
//! # Wire format
//!
//! The event socket is a plain TCP text protocol. Every message the server sends is a block
//! of `Name: value` header lines ended by an empty line; when a `Content-Length` header is
//! present, that many bytes of body follow the empty line. The server greets a client with
//! `Content-Type: auth/request`, answers commands (`auth …`, `event plain …`) with
//! `Content-Type: command/reply` and a `Reply-Text` (`+OK …` or `-ERR …`), sends each
//! subscribed event as `Content-Type: text/event-plain` whose body is the event — itself a
//! header block, values URL-encoded (`callcenter%3A%3Ainfo`) — and says goodbye with
//! `Content-Type: text/disconnect-notice`.
//!
//! [`EslDecoder`] frames a byte stream into [`EslMessage`]s within a bound (a message larger
//! than `max_message` bytes is an error: the connection cannot be resynchronised and must be
//! closed); [`parse_event`] turns a `text/event-plain` body into an [`EslEvent`];
//! [`callcenter`] reads a `mod_callcenter` event (`Event-Subclass: callcenter::info`) into a
//! [`CallcenterEvent`].
//!
//! # `mod_callcenter` events
//!
//! `CC-Action` names what happened (`src/mod/applications/mod_callcenter/mod_callcenter.c`):
//! `member-queue-start` / `member-queue-resume` (a caller joined, or re-joined within
//! `abandoned-resume-allowed`), `agent-offering`, `bridge-agent-start` (an agent answered),
//! `bridge-agent-fail` (the agent's leg failed: no answer, reject, busy), `bridge-agent-end`,
//! `member-queue-end` with `CC-Cause: Terminated` (after talking to an agent) or `Cancel` and
//! `CC-Cancel-Reason` `NONE`, `TIMEOUT`, `NO_AGENT_TIMEOUT`, `BREAK_OUT` (the caller hung
//! up), `EXIT_WITH_KEY`; agent events `agent-status-change`, `agent-state-change`; and
//! `members-count`. Times (`CC-Member-Joined-Time`, `CC-Agent-Called-Time`,
//! `CC-Agent-Answered-Time`, `CC-Member-Leaving-Time`, `CC-Bridge-Terminated-Time`,
//! `CC-Agent-Aborted-Time`) are Unix **seconds**; `Event-Date-Timestamp` is microseconds.
//! Events also carry the member channel's variables (names, numbers, addresses): only the
//! `CC-*` headers above, `Event-Date-Timestamp` and, in the member's own events, its
//! `variable_sip_call_id` (the caller leg's SIP Call-ID) are read; the rest is dropped here.

use crate::time::Timestamp;

/// Largest message accepted by default: `mod_callcenter` events with every channel variable
/// are a few KiB; 256 KiB leaves room for the rest of a busy socket.
pub const DEFAULT_MAX_MESSAGE: usize = 256 << 10;
/// Most headers kept of one event.
const MAX_HEADERS: usize = 512;

/// Why bytes are not an ESL message or event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EslError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("header line without ':'")]
    BadHeader,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("not a mod_callcenter event")]
    NotCallcenter,
    #[error("callcenter event without {0}")]
    MissingHeader(&'static str),
    #[error("callcenter event: {0} is not a number")]
    BadNumber(&'static str),
}

impl EslError {
    /// A metric label.
    pub fn kind(self) -> &'static str {
        match self {
            EslError::TooLarge(_) => "esl_too_large",
            EslError::BadContentLength => "esl_bad_content_length",
            EslError::BadHeader => "esl_bad_header",
            EslError::TooManyHeaders => "esl_too_many_headers",
            EslError::NotCallcenter => "esl_not_callcenter",
            EslError::MissingHeader(_) => "esl_missing_header",
            EslError::BadNumber(_) => "esl_bad_number",
        }
    }
}

/// One message of the socket: its header block and its body (empty without
/// `Content-Length`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EslMessage {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl EslMessage {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// `Content-Type`.
    pub fn content_type(&self) -> Option<&str> {
        self.header("Content-Type")
    }

    /// For a `command/reply`: whether it said `+OK`.
    pub fn reply_ok(&self) -> bool {
        self.header("Reply-Text")
            .is_some_and(|t| t.starts_with("+OK"))
    }
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Frames a byte stream into messages, holding at most `max_message` bytes.
#[derive(Debug)]
pub struct EslDecoder {
    buf: Vec<u8>,
    max_message: usize,
}

impl EslDecoder {
    pub fn new(max_message: usize) -> Self {
        EslDecoder {
            buf: Vec::new(),
            max_message,
        }
    }

    /// Bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held, waiting for the rest of a message.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, `Ok(None)` when more bytes are needed. An error means the
    /// stream cannot be framed any more: the caller closes the connection.
    pub fn next_message(&mut self) -> Result<Option<EslMessage>, EslError> {
        // Blank lines between messages carry nothing.
        let start = self
            .buf
            .iter()
            .position(|&b| b != b'\n' && b != b'\r')
            .unwrap_or(self.buf.len());
        self.buf.drain(..start);
        let Some(header_end) = find_blank_line(&self.buf) else {
            if self.buf.len() > self.max_message {
                return Err(EslError::TooLarge(self.max_message));
            }
            return Ok(None);
        };
        let headers = parse_headers(&self.buf[..header_end.0], false)?;
        let length = match find(&headers, "Content-Length") {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| EslError::BadContentLength)?,
            None => 0,
        };
        let total = header_end.1.saturating_add(length);
        if total > self.max_message {
            return Err(EslError::TooLarge(self.max_message));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let body = self.buf[header_end.1..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(EslMessage { headers, body }))
    }
}

/// `(end of the header text, start of the body)` of the first empty line (`\n\n` or
/// `\r\n\r\n`).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some((line_start, i + 1));
            }
            line_start = i + 1;
        }
    }
    None
}

/// `Name: value` lines; values URL-decoded when `url_decode`.
fn parse_headers(text: &[u8], url_decode: bool) -> Result<Vec<(String, String)>, EslError> {
    let mut headers = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(EslError::BadHeader)?;
        if headers.len() >= MAX_HEADERS {
            return Err(EslError::TooManyHeaders);
        }
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
        let raw = &line[colon + 1..];
        let raw = raw.strip_prefix(b" ").unwrap_or(raw);
        let value = if url_decode {
            String::from_utf8_lossy(&percent_decode(raw)).into_owned()
        } else {
            String::from_utf8_lossy(raw).into_owned()
        };
        headers.push((name, value));
    }
    Ok(headers)
}

/// `%XX` decoded (a `%` not followed by two hex digits is kept as is); `+` is kept, as
/// FreeSWITCH's `switch_url_encode` writes a space as `%20`.
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// An event of the socket (`text/event-plain`), its header values URL-decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EslEvent {
    pub headers: Vec<(String, String)>,
}

impl EslEvent {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

/// The event in a `text/event-plain` body. A body of its own after the event's headers
/// (`Content-Length` inside the event) is ignored.
pub fn parse_event(body: &[u8]) -> Result<EslEvent, EslError> {
    let end = find_blank_line(body).map_or(body.len(), |(end, _)| end);
    Ok(EslEvent {
        headers: parse_headers(&body[..end], true)?,
    })
}

/// What a `mod_callcenter` event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcAction {
    /// `member-queue-start`.
    MemberQueueStart,
    /// `member-queue-resume`: re-joined within `abandoned-resume-allowed`.
    MemberQueueResume,
    AgentOffering,
    BridgeAgentStart,
    BridgeAgentFail,
    BridgeAgentEnd,
    MemberQueueEnd,
    AgentStatusChange,
    AgentStateChange,
    MembersCount,
    /// Another action (`agent-add`, `agent-*-get`, `agent-max-no-answer`, ...).
    Other,
}

impl CcAction {
    fn from_name(name: &str) -> CcAction {
        match name {
            "member-queue-start" => CcAction::MemberQueueStart,
            "member-queue-resume" => CcAction::MemberQueueResume,
            "agent-offering" => CcAction::AgentOffering,
            "bridge-agent-start" => CcAction::BridgeAgentStart,
            "bridge-agent-fail" => CcAction::BridgeAgentFail,
            "bridge-agent-end" => CcAction::BridgeAgentEnd,
            "member-queue-end" => CcAction::MemberQueueEnd,
            "agent-status-change" => CcAction::AgentStatusChange,
            "agent-state-change" => CcAction::AgentStateChange,
            "members-count" => CcAction::MembersCount,
            _ => CcAction::Other,
        }
    }
}

/// `CC-Cause` and `CC-Cancel-Reason` of `member-queue-end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcEnd {
    /// `Terminated`: the call ended after talking to an agent.
    Terminated,
    /// `Cancel` with `NONE` (treated as the caller leaving) or `BREAK_OUT`.
    CallerLeft,
    /// `Cancel` / `TIMEOUT`: `max-wait-time` reached.
    Timeout,
    /// `Cancel` / `NO_AGENT_TIMEOUT`: no agent for `max-wait-time-with-no-agent`.
    NoAgentTimeout,
    /// `Cancel` / `EXIT_WITH_KEY`.
    ExitWithKey,
}

/// The parts of a `mod_callcenter` event teledge uses; times in Unix seconds as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallcenterEvent {
    pub action: CcAction,
    /// `Event-Date-Timestamp` (µs), when present.
    pub event_time: Option<Timestamp>,
    pub queue: Option<String>,
    /// `CC-Member-UUID`: one caller's stay in one queue.
    pub member_uuid: Option<String>,
    /// `CC-Member-Session-UUID`: the caller's channel.
    pub session_uuid: Option<String>,
    /// `CC-Member-CID-Number` (personal data: the caller pseudonymises it).
    pub cid_number: Option<String>,
    /// `variable_sip_call_id` of the member (caller) channel, in the events that carry the
    /// member channel's variables (`member-queue-start`, `-resume`, `-end`): the SIP
    /// Call-ID of the caller's leg. Other events carry the agent channel's: not read there.
    pub sip_call_id: Option<String>,
    pub agent: Option<String>,
    pub joined: Option<i64>,
    pub agent_called: Option<i64>,
    pub agent_answered: Option<i64>,
    pub agent_aborted: Option<i64>,
    pub leaving: Option<i64>,
    pub bridge_terminated: Option<i64>,
    pub end: Option<CcEnd>,
    /// `CC-Agent-Status` or `CC-Agent-State` of an agent event.
    pub agent_status: Option<String>,
}

/// Reads a `mod_callcenter` event; [`EslError::NotCallcenter`] for any other event.
pub fn callcenter(event: &EslEvent) -> Result<CallcenterEvent, EslError> {
    if event.header("Event-Subclass") != Some("callcenter::info") {
        return Err(EslError::NotCallcenter);
    }
    let action = event
        .header("CC-Action")
        .ok_or(EslError::MissingHeader("CC-Action"))?;
    let text = |name: &str| {
        event
            .header(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let epoch = |name: &'static str| -> Result<Option<i64>, EslError> {
        match event.header(name).map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            // FreeSWITCH writes 0 for a time that did not happen (an agent never called).
            Some(v) => match v.parse::<i64>() {
                Ok(0) => Ok(None),
                Ok(t) if t > 0 => Ok(Some(t)),
                _ => Err(EslError::BadNumber(name)),
            },
        }
    };
    let event_time = match event.header("Event-Date-Timestamp").map(str::trim) {
        None | Some("") => None,
        Some(v) => {
            let us: i64 = v
                .parse()
                .map_err(|_| EslError::BadNumber("Event-Date-Timestamp"))?;
            Some(Timestamp::from_nanos(us.saturating_mul(1000)))
        }
    };
    let action = CcAction::from_name(action.trim());
    let end = match (action, event.header("CC-Cause").map(str::trim)) {
        (CcAction::MemberQueueEnd, Some("Terminated")) => Some(CcEnd::Terminated),
        (CcAction::MemberQueueEnd, Some("Cancel")) => {
            Some(match event.header("CC-Cancel-Reason").map(str::trim) {
                Some("TIMEOUT") => CcEnd::Timeout,
                Some("NO_AGENT_TIMEOUT") => CcEnd::NoAgentTimeout,
                Some("EXIT_WITH_KEY") => CcEnd::ExitWithKey,
                _ => CcEnd::CallerLeft,
            })
        }
        (CcAction::MemberQueueEnd, _) => return Err(EslError::MissingHeader("CC-Cause")),
        _ => None,
    };
    Ok(CallcenterEvent {
        action,
        event_time,
        queue: text("CC-Queue"),
        member_uuid: text("CC-Member-UUID"),
        session_uuid: text("CC-Member-Session-UUID"),
        cid_number: text("CC-Member-CID-Number"),
        sip_call_id: match action {
            CcAction::MemberQueueStart | CcAction::MemberQueueResume | CcAction::MemberQueueEnd => {
                text("variable_sip_call_id")
            }
            _ => None,
        },
        agent: text("CC-Agent"),
        joined: epoch("CC-Member-Joined-Time")?,
        agent_called: epoch("CC-Agent-Called-Time")?,
        agent_answered: epoch("CC-Agent-Answered-Time")?,
        agent_aborted: epoch("CC-Agent-Aborted-Time")?,
        leaving: epoch("CC-Member-Leaving-Time")?,
        bridge_terminated: epoch("CC-Bridge-Terminated-Time")?,
        end,
        agent_status: text("CC-Agent-Status").or_else(|| text("CC-Agent-State")),
    })
}

/// The text of an event as FreeSWITCH sends it: the body's header values URL-encoded, the
/// outer block with `Content-Length` and `Content-Type: text/event-plain`. For tests and
/// the stand-in server.
pub fn encode_event_plain(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut body = String::new();
    for (name, value) in headers {
        body.push_str(name);
        body.push_str(": ");
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                body.push(b as char);
            } else {
                body.push_str(&format!("%{b:02X}"));
            }
        }
        body.push('\n');
    }
    body.push('\n');
    let mut out = format!(
        "Content-Length: {}\nContent-Type: text/event-plain\n\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_replies_and_events_split_anywhere() {
        let event = encode_event_plain(&[
            ("Event-Name", "CUSTOM"),
            ("Event-Subclass", "callcenter::info"),
            ("CC-Action", "member-queue-start"),
            ("CC-Queue", "support@default"),
            ("CC-Member-CID-Name", "CHOUINARD MO"),
        ]);
        let mut stream = b"Content-Type: auth/request\n\n".to_vec();
        stream.extend_from_slice(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n");
        stream.extend_from_slice(&event);
        stream.extend_from_slice(b"Content-Type: text/disconnect-notice\nContent-Length: 3\n\nbye");
        for split in 0..stream.len() {
            let mut d = EslDecoder::new(DEFAULT_MAX_MESSAGE);
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                d.push(part);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 4, "split at {split}");
            assert_eq!(got[0].content_type(), Some("auth/request"));
            assert!(got[1].reply_ok());
            assert_eq!(got[2].content_type(), Some("text/event-plain"));
            let e = parse_event(&got[2].body).unwrap();
            assert_eq!(e.header("Event-Subclass"), Some("callcenter::info"));
            assert_eq!(e.header("cc-member-cid-name"), Some("CHOUINARD MO"));
            assert_eq!(got[3].body, b"bye");
            assert_eq!(d.held(), 0);
        }
    }

    #[test]
    fn bounds_and_bad_lengths_are_errors() {
        let mut d = EslDecoder::new(64);
        d.push(&[b'x'; 65]);
        assert_eq!(d.next_message(), Err(EslError::TooLarge(64)));
        let mut d = EslDecoder::new(64);
        d.push(b"Content-Length: 1000\n\n");
        assert_eq!(d.next_message(), Err(EslError::TooLarge(64)));
        let mut d = EslDecoder::new(64);
        d.push(b"Content-Length: -1\n\n");
        assert_eq!(d.next_message(), Err(EslError::BadContentLength));
        let mut d = EslDecoder::new(64);
        d.push(b"no colon here\n\n");
        assert_eq!(d.next_message(), Err(EslError::BadHeader));
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode(b"a%3A%3Ab"), b"a::b");
        assert_eq!(percent_decode(b"100%"), b"100%");
        assert_eq!(percent_decode(b"%4"), b"%4");
        assert_eq!(percent_decode(b"%zz%20"), b"%zz ");
    }

    #[test]
    fn callcenter_events_are_read_and_others_refused() {
        let e = parse_event(b"Event-Subclass: callcenter%3A%3Ainfo\nCC-Action: member-queue-end\nCC-Queue: support%40default\nCC-Cause: Cancel\nCC-Cancel-Reason: NO_AGENT_TIMEOUT\nCC-Member-Joined-Time: 9000\nCC-Member-Leaving-Time: 10050\nCC-Agent-Called-Time: 0\nEvent-Date-Timestamp: 1500000000123456\n\n").unwrap();
        let cc = callcenter(&e).unwrap();
        assert_eq!(cc.action, CcAction::MemberQueueEnd);
        assert_eq!(cc.end, Some(CcEnd::NoAgentTimeout));
        assert_eq!(cc.queue.as_deref(), Some("support@default"));
        assert_eq!((cc.joined, cc.leaving), (Some(9000), Some(10050)));
        assert_eq!(cc.agent_called, None, "0 is 'never'");
        assert_eq!(
            cc.event_time,
            Some(Timestamp::from_nanos(1_500_000_000_123_456_000))
        );
        let other = parse_event(b"Event-Name: HEARTBEAT\n\n").unwrap();
        assert_eq!(callcenter(&other), Err(EslError::NotCallcenter));
        let bad = parse_event(b"Event-Subclass: callcenter::info\nCC-Action: member-queue-end\nCC-Cause: Terminated\nCC-Member-Joined-Time: soon\n\n").unwrap();
        assert_eq!(
            callcenter(&bad),
            Err(EslError::BadNumber("CC-Member-Joined-Time"))
        );
        let no_cause =
            parse_event(b"Event-Subclass: callcenter::info\nCC-Action: member-queue-end\n\n")
                .unwrap();
        assert_eq!(
            callcenter(&no_cause),
            Err(EslError::MissingHeader("CC-Cause"))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_stream_frames_or_fails_within_its_bound(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            split in 0usize..400,
        ) {
            let mut d = EslDecoder::new(128);
            let split = split.min(bytes.len());
            for part in [&bytes[..split], &bytes[split..]] {
                d.push(part);
                loop {
                    match d.next_message() {
                        Ok(Some(m)) => {
                            if let Ok(e) = parse_event(&m.body) {
                                let _ = callcenter(&e);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
            }
            proptest::prop_assert!(d.held() <= 128 + 400);
        }
    }
}
