//! The call record (schema documented in the parent module).

use serde::Serialize;

use crate::time::Timestamp;

/// Schema id written in every call record.
pub const CALL_SCHEMA: &str = "teledge.call/1";

/// A party of the call as named in a SIP header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Party {
    pub user: Option<String>,
    pub display_name: Option<String>,
    pub uri: Option<String>,
}

/// How the call attempt ended, in a supervisor's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Answered,
    /// The caller gave up (CANCEL, or BYE before any final answer).
    Abandoned,
    Busy,
    Rejected,
    NotReached,
    NoAnswer,
    Failed,
    TimedOut,
    /// No final answer yet when the record was made.
    InProgress,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Abandoned => "abandoned",
            Outcome::Busy => "busy",
            Outcome::Rejected => "rejected",
            Outcome::NotReached => "not_reached",
            Outcome::NoAnswer => "no_answer",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::InProgress => "in_progress",
        }
    }
}

/// Where the dialog stood when the record was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Calling,
    Proceeding,
    Ringing,
    EarlyMedia,
    Connected,
    Ended,
}

/// Why the record was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    Bye,
    Cancel,
    FinalResponse,
    Timeout,
    CaptureEnd,
    Shutdown,
    /// The call table was full: the oldest call still in setup (or joined mid-call) made room
    /// for a new one.
    Evicted,
}

/// Who ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hangup {
    Caller,
    Callee,
}

/// A Reason header value (RFC 3326).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub protocol: String,
    pub cause: Option<u16>,
    pub text: Option<String>,
}

/// User agents of both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserAgents {
    pub caller: Option<String>,
    pub callee: Option<String>,
}

/// How the first INVITE travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over WebSocket (RFC 7118).
    Ws,
    /// SIP over SCTP (RFC 4168).
    Sctp,
}

/// SDP of the call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Media {
    pub offer: Option<Sdp>,
    pub answer: Option<Sdp>,
    pub renegotiations: u32,
}

/// The media facts of one SDP body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sdp {
    pub media: Vec<SdpMedia>,
}

/// One `m=` section, session-level defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SdpMedia {
    /// `audio`, `video`, `image` (T.38), ...
    pub media: String,
    /// Connection address (media-level `c=` over session-level).
    pub address: Option<String>,
    pub port: u16,
    /// Transport protocol, e.g. `RTP/AVP`, `RTP/SAVP`, `udptl`.
    pub protocol: String,
    /// `a=rtcp`, the RTP port with `a=rtcp-mux`, else port + 1.
    pub rtcp_port: Option<u16>,
    pub rtcp_mux: bool,
    pub direction: SdpDirection,
    pub codecs: Vec<SdpCodec>,
}

/// Media direction (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpDirection {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// A payload format of a media section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SdpCodec {
    pub payload_type: u8,
    pub name: Option<String>,
    pub clock_rate: Option<u32>,
}

/// One call attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    pub schema: &'static str,
    pub record_id: String,
    pub call_id: String,
    pub linked_call_id: Option<String>,
    pub caller: Party,
    pub callee: Party,
    pub asserted_identity: Option<Party>,
    pub diverted_from: Option<Party>,
    pub transport: Transport,
    pub caller_address: String,
    pub callee_address: String,
    /// The dialog's INVITE was not seen: the call was in progress when the capture started.
    pub started_before_capture: bool,
    /// Whether `caller` and `callee` are known to be the right way round.
    pub roles_known: bool,
    /// The first INVITE; `None` when it was not seen (`started_before_capture`).
    pub invite_time: Option<Timestamp>,
    pub first_message_time: Timestamp,
    pub first_provisional_time: Option<Timestamp>,
    pub ringing_time: Option<Timestamp>,
    pub answer_time: Option<Timestamp>,
    pub end_time: Option<Timestamp>,
    /// The first final response to the BYE that ended the call (RFC 6076 SDD = this −
    /// `end_time`), when it came within the record grace; `None` otherwise.
    pub bye_answered_time: Option<Timestamp>,
    pub last_message_time: Timestamp,
    pub post_dial_delay_s: Option<f64>,
    pub time_to_answer_s: Option<f64>,
    pub ring_duration_s: Option<f64>,
    pub talk_duration_s: Option<f64>,
    pub outcome: Outcome,
    pub state: State,
    pub complete: bool,
    pub closed_by: ClosedBy,
    pub final_status: Option<u16>,
    pub final_reason: Option<String>,
    pub reason: Option<Reason>,
    pub q850_cause: Option<u16>,
    pub hangup_by: Option<Hangup>,
    pub user_agents: UserAgents,
    pub messages: u32,
    pub retransmissions: u32,
    pub auth_challenges: u32,
    pub forks: u32,
    pub early_media: bool,
    pub hold_count: u32,
    pub hold_duration_s: f64,
    pub media: Media,
    /// RTP/RTCP measured for this call, by direction, with the verdict.
    pub media_quality: super::media::MediaQuality,
    /// RTCP reports a HEP agent relayed for this call (HEP type 5), per reported stream.
    pub hep_rtcp: Vec<HepRtcp>,
    /// The counters above that saturated at 2^32 − 1 (`messages`, `retransmissions`,
    /// `auth_challenges`, `hold_count`, `media.renegotiations`, `hep_rtcp.reports`): each a
    /// lower bound, not a count. Empty for nearly every call.
    pub saturated: Vec<&'static str>,
}

/// What RTCP reports relayed by a HEP agent (type 5, RTCP as JSON, correlated by Call-ID)
/// said about one stream: one entry per (reporter SSRC, reported SSRC).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HepRtcp {
    /// SSRC of the sender of the reports (`0x%08X`).
    pub reporter_ssrc: Option<String>,
    /// SSRC of the stream reported on; `None` for sender reports without a report block.
    pub source_ssrc: Option<String>,
    pub reports: u32,
    pub first_time: Timestamp,
    pub last_time: Timestamp,
    /// Fraction lost of the last report, in percent (the 8-bit field / 256).
    pub last_fraction_lost_percent: Option<f64>,
    pub max_fraction_lost_percent: Option<f64>,
    /// Cumulative packets lost of the last report.
    pub last_cumulative_lost: Option<i64>,
    /// Interarrival jitter in RTP timestamp units, as reported: the JSON does not carry the
    /// clock rate, so no conversion to milliseconds is guessed.
    pub last_jitter: Option<u64>,
    pub max_jitter: Option<u64>,
    pub last_highest_seq: Option<u64>,
}
