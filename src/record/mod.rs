//! Records: what teledge produces, in one envelope (`"type"` tag) so every output, the spool and
//! the collector handle calls, capture summaries, sensor readings and gaps alike.
//!
//! These types *are* the wire schema, and they are teledge's only record types that derive
//! `Serialize`. The module is a leaf: it imports nothing of the pipeline (only
//! [`crate::time`] for timestamps); the pipeline's own types are converted into these
//! (`impl From<&Internal> for record::X`, next to each internal type), so renaming a field
//! inside the pipeline cannot change a record. The JSON Schema files in `schema/` list every
//! field of every record kind, and `tests/it/schema.rs` holds them and these types together
//! (see `schema/README.md`).
//!
//! # Call record schema, version 1 (`"schema": "teledge.call/1"`)
//!
//! One JSON object per call attempt (a Call-ID that carried an INVITE, or an INVITE dialog
//! joined after its INVITE), one per line (JSON Lines), made the moment the call ends (see
//! [`crate::correlation::calls`]); the record is final.
//! Times are RFC 3339 UTC with microseconds; durations are seconds (float, µs precision);
//! absent facts are `null`, never invented.
//!
//! Identities: records are made with what was captured (`teledge replay` prints them so, on
//! the machine that holds the capture anyway). Before a record enters the spool — and so
//! before anything leaves the box — [`crate::privacy`] rewrites every field that could name
//! a person: numbers, names, Call-IDs, User-Agents, reason texts, URI parameters, DTMF
//! digits, and addresses when configured; its module doc has the table, field by field.
//!
//! Fields:
//!
//! | field | meaning |
//! |---|---|
//! | `type` | `"call"` |
//! | `schema` | `"teledge.call/1"`; a new major version is a breaking change |
//! | `record_id` | 32 hex chars, a hash of Call-ID, first INVITE time (for a partial record the first message's time) and caller address: replaying the same capture gives the same ids, so a collector can drop duplicates; what is stored or sent is that id keyed under the identifier key (HMAC-SHA256, 32 hex chars; see `crate::privacy`), so it cannot be used to test guesses of the Call-ID |
//! | `call_id` | the SIP Call-ID |
//! | `linked_call_id` | leg-linking header of a B2BUA (`X-CID`, `X-Call-ID`, `X-Orig-Call-ID`) |
//! | `caller`, `callee` | `{user, display_name, uri}` from From and To of the first INVITE (each text at most 256 bytes, as every header text a record holds; longer ones are cut and counted) |
//! | `asserted_identity` | P-Asserted-Identity of the first INVITE, same shape |
//! | `diverted_from` | the first Diversion entry, same shape |
//! | `transport` | `udp`, `tcp` or `ws` (of the first INVITE) |
//! | `caller_address`, `callee_address` | signalling `ip:port` of the first INVITE's source and destination |
//! | `started_before_capture` | `true` when the dialog's INVITE was not seen: the call was in progress when the capture (or the daemon) started, and the record holds only what was seen after (answer time only when the first INVITE's provisional responses were seen, the end, who hung up, media from later SDP and RTP); `complete` is then `false` |
//! | `roles_known` | `false` when nothing seen tells who called whom (a dialog joined at a BYE, re-INVITE, UPDATE, ACK or 2xx): `caller` is then the sender of the first request seen and `callee` its peer, and `hangup_by` is relative to that naming |
//! | `invite_time` | first INVITE; `null` when it was not seen (`started_before_capture`) |
//! | `first_message_time` | the first message of the dialog seen (the INVITE, or for a partial record the first message after the capture started) |
//! | `first_provisional_time` | first 1xx (including 100 Trying) |
//! | `ringing_time` | first 180 or 183 |
//! | `answer_time` | first 2xx to the INVITE |
//! | `end_time` | BYE, CANCEL, or the final failure response; `null` while the call is open |
//! | `bye_answered_time` | the first final response to the BYE that ended the call (RFC 6076 session disconnect delay = this − `end_time`); `null` when the call did not end by a seen BYE, or the response was not seen within `record_grace` (the record is made then) |
//! | `last_message_time` | the last message of the dialog seen |
//! | `post_dial_delay_s` | INVITE → first 180/183; without one, INVITE → final response (`null` without the INVITE) |
//! | `time_to_answer_s` | INVITE → answer (`null` without the INVITE) |
//! | `ring_duration_s` | ringing (first 180/183) → answer, CANCEL, or final failure; `null` for a call that never rang (no 180/183: refused, challenged and refused, answered at once, abandoned while only trying) |
//! | `talk_duration_s` | answer → BYE; `null` when not ended by BYE |
//! | `outcome` | `answered`, `abandoned` (caller cancelled before answer), `busy`, `rejected`, `not_reached`, `no_answer`, `failed`, `timed_out` (no final answer within the setup timeout), `in_progress` (no final answer yet when the capture or the daemon stopped) |
//! | `state` | where the dialog stood when the record was made: `calling`, `proceeding`, `ringing`, `early_media`, `connected`, `ended` |
//! | `complete` | `true` when the whole call, from its INVITE to its end, was in the capture; `false` for calls still open (`closed_by` says why the record was made anyway) and for `started_before_capture` |
//! | `closed_by` | `bye` (the BYE, or the 200 of a BYE not seen), `cancel`, `final_response`, `timeout`, `capture_end`, `shutdown`, `evicted` (the call table was full and this call, the oldest still in setup or joined mid-call, made room) |
//! | `final_status`, `final_reason` | final response to the INVITE (status code and reason phrase) |
//! | `reason` | the Reason header (RFC 3326) of the BYE/CANCEL/final response: `{protocol, cause, text}` |
//! | `q850_cause` | the Q.850 cause, when a Reason says one |
//! | `hangup_by` | `caller` or `callee` (who sent BYE or CANCEL) |
//! | `user_agents` | `{caller, callee}`: User-Agent of the caller, User-Agent or Server of the callee |
//! | `messages` | SIP messages of this Call-ID seen until the record was made (what comes after its end — the 200 of the BYE, an ACK — is counted in the tracker's `late_messages`) |
//! | `retransmissions` | requests and responses seen again (same transaction, same status) |
//! | `auth_challenges` | 401/407 answered by a new INVITE in the same Call-ID (one attempt, not two calls) |
//! | `forks` | distinct To-tags in responses to the INVITE (early dialogs) |
//! | `early_media` | a 18x carried SDP |
//! | `hold_count`, `hold_duration_s` | re-INVITE/UPDATE holds (sendonly, inactive or `c=0.0.0.0`) and their total time |
//! | `media` | `{offer, answer, renegotiations}`: the SDP of the first offer and answer, each `{media: [{media, address, port, protocol, rtcp_port, rtcp_mux, direction, codecs: [{payload_type, name, clock_rate}]}]}`; `renegotiations` counts later SDP |
//! | `media_quality` | `{caller_to_callee, callee_to_caller, unknown_direction, verdict}`: the RTP streams of the call by direction (a media relay's second leg is a stream of its own; a stream between endpoints that two legs of a B2BUA with direct media both negotiated is in both legs' records, with its RTCP), each a *stream* as below; RTP after the call's end is counted, not measured; `verdict` is `{mos, r_factor, worst_direction}` of the lowest-scoring stream, `null` when no stream could be scored |
//! | `hep_rtcp` | RTCP that a HEP agent relayed as JSON (HEP type 5) with this Call-ID as correlation id, one entry per reporter and reported SSRC (at most 16; more are counted, not kept): `{reporter_ssrc, source_ssrc, reports, first_time, last_time, last_fraction_lost_percent, max_fraction_lost_percent, last_cumulative_lost, last_jitter, max_jitter, last_highest_seq}`; jitter is in RTP timestamp units as reported (the report does not name the clock rate). `[]` without HEP RTCP. Added to `teledge.call/1` without a version bump: a new field that readers may ignore |
//!
//! A *stream* is `{src, dst, ssrc, codec, codecs, metrics, score, not_scored, rtcp}`:
//!
//! - `metrics` (see [`crate::media::stream`] for the rules): `start_time`, `end_time`,
//!   `duration_s`, `packets`, `expected` (highest extended sequence − first + 1), `lost`
//!   (never negative), `lost_percent`, `duplicates`, `out_of_order`, `wrong_timestamp` (voice
//!   packets behind the jitter reference), `timestamp_jumps` (sustained RTP timestamp resets
//!   taken as a new reference), `sequence_resets` (a sender restarting its sequence
//!   numbers, RFC 3550 A.1), `min/mean/max_delta_ms`, `min/mean/max_jitter_ms` (RFC 3550
//!   over voice packets only; `null` without a clock rate, e.g. telephone-event),
//!   `max_skew_ms`, `payload_types`, `loss_bursts` (runs of 1..9 and 10+ lost packets),
//!   `jitter_buffers` (`[{size_ms: 50|200, discarded, resyncs, effective_loss_percent,
//!   burst_ratio}]`, fixed playout buffers re-anchored on talkspurts, timestamp jumps and
//!   sustained delay shifts), `comfort_noise_packets`, `dtmf` (`[{digit, time, duration_ms}]`,
//!   RFC 4733 events), and `wireshark`: `{version, expected, lost, sequence_errors,
//!   wrong_timestamp, min/mean/max_delta_ms, min/mean/max_jitter_ms, max_skew_ms}` as
//!   `tshark -z rtp,streams` of that version (4.0, Debian 12's) prints them (`lost` negative
//!   with duplicates). The two sets agree on ordinary streams; they differ where TShark 4.0's
//!   rules do (DTMF or unknown payload types inside voice, timestamps going back or reset);
//! - `score`: `{model, codec, ie, bpl, packet_loss_percent, burst_ratio, one_way_delay_ms,
//!   delay_source, jitter_buffer_ms, r_factor, mos}` — the G.107 E-model after the 50 ms
//!   buffer, with every input written down; `delay_source` is `rtcp_capture` (half the mean
//!   RTCP round trip measured from capture times), `rtcp_xr` (half the round trip an endpoint
//!   reported in RFC 3611 VoIP metrics) or `assumed_default` (0 ms); `null` with `not_scored`
//!   saying why (`wideband`, `video`, `unknown_codec`, `no_data`);
//! - `rtcp`: what the stream's receiver reported (`reports`, `last_fraction_lost_percent`,
//!   `last_cumulative_lost`, `last/max_jitter_ms`, `voip_metrics` from RFC 3611 XR), beside the
//!   measured `metrics`, and the round trips the tap saw between itself and the receiver
//!   (`round_trip_samples`, `round_trip_rejected` (outside −2..5000 ms),
//!   `min/mean/max/last_round_trip_ms`, see [`crate::correlation::media`]); `null` without
//!   RTCP.
//!
//! # Orphan stream record (`"type": "stream"`, `"schema": "teledge.stream/1"`)
//!
//! RTP that matched no call: `record_id` plus the *stream* fields above. At most
//! `max_orphan_records_per_minute` (300) per minute of capture time; the rest of that minute
//! is summed up in one summary record:
//!
//! # Orphan streams summary (`"type": "orphan_streams"`, `"schema": "teledge.orphan_streams/1"`)
//!
//! `record_id`, `interval_start`, `interval_end`, `streams`, `packets`, `lost`, `by_source`
//! (`[{src_ip, streams, packets}]`, the first 16 sources), `other_sources` (streams from
//! further sources). So an orphan RTP flood cannot push call records out of the spool.
//!
//! # Capture summary (`"type": "capture_summary"`)
//!
//! Written last by `teledge replay`: frames, SIP messages by transport, decode errors, REGISTER
//! and other non-call transactions, calls by outcome, the first decode problems with their
//! frame numbers, media counters (RTP/RTCP packets, share attributed to calls, streams, RTP
//! and RTCP after a call's end, orphan streams summed up) and `call_counters` (every counter
//! of the call tracker: calls started before the capture, late messages, evictions, fields
//! cut to their caps, ...).

//! # Sensor record (`"type": "sensor"`, `"schema": "teledge.sensor/1"`)
//!
//! One per device at its record cadence: `record_id`, `device` (configured name), `model`,
//! `port`, `time`, `communication` (`ok` or `lost`), `last_good_time`, `stale` (values older
//! than the staleness bound: they are the last known, not current), `values`
//! (`[{name, value, unit}]`), `states` (UPS flags such as `on_battery`, `battery_low`), and the
//! port's `counters` (polls, failures, timeouts, retries, bad CRCs, Modbus exceptions, bad
//! replies, garbage bytes, reopens, open failures, unsolicited alerts).
//!
//! # Alert record (`"type": "alert"`, `"schema": "teledge.alert/1"`)
//!
//! Two per deviation, sharing `alert_id`: `phase` `started` (with `value`, the reading that
//! opened it) and `ended` (with `ended`, `duration_s` and `extreme`, the worst value).
//! `kind` is `limit` (a value outside `limit`, `breach` `high` or `low`; hysteresis keeps a value
//! hovering at a limit from flapping), `state` (a UPS flag: on battery, battery low, fault,
//! overload, replace battery) or `communication` (the device stopped answering; ended when it
//! answers again). Also `device`, `model`, `port`, `reading`, `unit`, `started`.
//!
//! # Queue contact record (`"type": "queue"`, `"schema": "teledge.queue/1"`)
//!
//! One caller's stay in one ACD queue, from the PBX's queue events (Asterisk `queue_log`,
//! FreeSWITCH `mod_callcenter`): queue, caller, enter/answer/end times, outcome (answered,
//! abandoned, flow-out and its kind), wait, ring and talk seconds, agent, transfer, RONA
//! count. Field by field in [`queue`].
//!
//! # Gap record (`"type": "gap"`, `"schema": "teledge.gap/1"`)
//!
//! Records lost or set aside on the way out, made by the spool and the uplink (see [`gap`]):
//! `node`, `reason`, `dropped`, `first_dropped`, `last_dropped`, `time`, and where they apply
//! `epoch`, `detail`, `set_aside`, `status`.
//!
//! # Heartbeat record (`"type": "heartbeat"`, `"schema": "teledge.heartbeat/1"`)
//!
//! What a node runs — `version`, `arch`, `config_sha256`, `started`, `uptime_s` — at start,
//! periodically and after a reload that changed the configuration; fields in [`heartbeat`].
//!
//! # Registrations record (`"type": "registrations"`, `"schema": "teledge.registrations/1"`)
//!
//! The REGISTER attempts that ended in one minute: counts, the RFC 6076 registration request
//! delay (sum and histogram) and the ineffective attempts; no identity. Fields in
//! [`registration`].
//!
//! # Audit record (`"type": "audit"`, `"schema": "teledge.audit/1"`)
//!
//! A supervisor's page login or live listen session: who, which call, action, start, end,
//! outcome, client address; fields in [`audit`].
//!
//! # Agent state record (`"type": "agent"`, `"schema": "teledge.agent/1"`)
//!
//! A change of one ACD agent's presence (off, staffed, paused with its reason) in one queue,
//! from the PBX's queue events; the agent pseudonymised at ingest. Fields in [`agent`].
//!
//! # Interval record (`"type": "interval"`, `"schema": "teledge.interval/1"`)
//!
//! One service's contact-centre statistics over one 15/30/60-minute interval, as primitive
//! sums that merge exactly across nodes, runs and intervals; revised when late contacts
//! change it. Fields and identity rules in [`interval`].

pub mod agent;
pub mod audit;
mod call;
pub mod gap;
pub mod heartbeat;
pub mod interval;
pub mod json;
pub mod media;
pub mod queue;
pub mod registration;
pub mod sensor;
pub mod stored;
mod summary;
pub mod text;
pub mod update;
pub mod weigh;

pub use call::{
    CallRecord, ClosedBy, Hangup, HepRtcp, Media, Outcome, Party, Reason, Sdp, SdpCodec,
    SdpDirection, SdpMedia, State, Transport, UserAgents, CALL_SCHEMA,
};
pub use summary::{
    CallCounters, CaptureDrops, DecodeCounters, DecodeProblem, FragmentCounters, MediaCounters,
    MemoryCounters, SctpCounters, TcpCounters,
};

use serde::Serialize;

/// Every kind of record, tagged by `"type"`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Call(Box<CallRecord>),
    /// An RTP stream that belongs to no call (`teledge.stream/1`).
    Stream(Box<media::StreamRecord>),
    /// Orphan streams of a minute beyond the budget of individual records
    /// (`teledge.orphan_streams/1`).
    OrphanStreams(Box<media::OrphanStreamsSummary>),
    CaptureSummary(Box<CaptureSummary>),
    /// A reading of a hardware sensor (`teledge.sensor/1`).
    Sensor(Box<sensor::SensorRecord>),
    /// A deviation of a sensor reading, a device flag or device communication
    /// (`teledge.alert/1`).
    Alert(Box<sensor::AlertRecord>),
    /// Records lost or set aside on the way out (`teledge.gap/1`), made by the spool and
    /// the uplink.
    Gap(Box<gap::GapRecord>),
    /// One service's statistics over one interval (`teledge.interval/1`), made by
    /// [`crate::stats`].
    Interval(Box<interval::IntervalRecord>),
    /// A caller's stay in an ACD queue, from the PBX's queue events (`teledge.queue/1`).
    Queue(Box<queue::QueueCallRecord>),
    /// The REGISTER attempts that ended in one minute, timed (`teledge.registrations/1`).
    Registrations(Box<registration::RegistrationsRecord>),
    /// A step of a signed update on this node (`teledge.update/1`).
    Update(Box<update::UpdateRecord>),
    /// What this node runs: version, architecture, configuration digest, uptime
    /// (`teledge.heartbeat/1`).
    Heartbeat(Box<heartbeat::HeartbeatRecord>),
    /// A supervisor's login or live listen session (`teledge.audit/1`).
    Audit(Box<audit::AuditRecord>),
    /// A change of an ACD agent's presence in a queue, from the PBX's queue events
    /// (`teledge.agent/1`).
    Agent(Box<agent::AgentStateRecord>),
}

pub use weigh::held_bytes;

impl Record {
    /// The bytes this record holds, as the record queue weighs it ([`held_bytes`]).
    pub fn held_bytes(&self) -> usize {
        match self {
            Record::Call(body) => held_bytes(&**body),
            Record::Stream(body) => held_bytes(&**body),
            Record::OrphanStreams(body) => held_bytes(&**body),
            Record::CaptureSummary(body) => held_bytes(&**body),
            Record::Sensor(body) => held_bytes(&**body),
            Record::Alert(body) => held_bytes(&**body),
            Record::Gap(body) => held_bytes(&**body),
            Record::Interval(body) => held_bytes(&**body),
            Record::Queue(body) => held_bytes(&**body),
            Record::Registrations(body) => held_bytes(&**body),
            Record::Update(body) => held_bytes(&**body),
            Record::Heartbeat(body) => held_bytes(&**body),
            Record::Audit(body) => held_bytes(&**body),
            Record::Agent(body) => held_bytes(&**body),
        }
    }

    /// The record's `"type"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Call(_) => "call",
            Record::Stream(_) => "stream",
            Record::OrphanStreams(_) => "orphan_streams",
            Record::CaptureSummary(_) => "capture_summary",
            Record::Sensor(_) => "sensor",
            Record::Alert(_) => "alert",
            Record::Gap(_) => "gap",
            Record::Interval(_) => "interval",
            Record::Queue(_) => "queue",
            Record::Registrations(_) => "registrations",
            Record::Update(_) => "update",
            Record::Heartbeat(_) => "heartbeat",
            Record::Audit(_) => "audit",
            Record::Agent(_) => "agent",
        }
    }
}

/// A stable record id: 32 hex characters of SHA-256 over the parts, so the same input
/// always gives the same id and a collector can drop duplicates.
pub fn stable_id(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    // One allocation: `format!` per byte was 16 a record.
    hex::encode(&digest[..16])
}

/// What a replay saw, written after the calls.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureSummary {
    pub schema: &'static str,
    pub files: Vec<String>,
    pub calls: u64,
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub registrations: u64,
    pub other_transactions: u64,
    /// Messages of Call-IDs that started before the capture (no INVITE seen).
    pub orphan_messages: u64,
    pub decode: DecodeCounters,
    pub media: MediaCounters,
    pub calls_dropped_at_capacity: u64,
    /// Every counter of the call tracker (calls started before the capture, late messages,
    /// evictions, truncated fields, ...).
    pub call_counters: CallCounters,
    /// Files of which not one frame could be decoded (every frame failed, see
    /// `decode.errors` for the kinds): not an empty capture, a capture teledge cannot read.
    pub undecodable_files: Vec<String>,
    /// Packets the files say were lost before they were written, summed over the files.
    pub capture_drops: CaptureDrops,
}

/// Schema id of the capture summary.
pub const SUMMARY_SCHEMA: &str = "teledge.capture_summary/1";
