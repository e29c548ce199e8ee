//! The record schemas in `schema/` (JSON Schema, documented field by field) against what
//! teledge writes: every record of every bundled capture validates, and the fields the
//! record types serialise are exactly the fields the schema files declare. A field renamed,
//! added or removed in the record types fails here until the schema file says so; a field
//! renamed in the pipeline's own types cannot reach the wire at all (the record types are
//! their own, see `src/record/mod.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use teledge::record::gap::{GapReason, GapRecord};
use teledge::record::heartbeat::{HeartbeatReason, HeartbeatRecord};
use teledge::record::interval::{AgentSums, IntervalRecord, IntervalSums, SipSums};
use teledge::record::media::{
    DelaySource, Dtmf, JitterBuffer, MediaQuality, NotScored, OrphanSource, OrphanStreamsSummary,
    RtcpReported, Score, StreamMetrics, StreamQuality, StreamRecord, Verdict, VoipMetrics,
    WiresharkFigures,
};
use teledge::record::queue::{
    FlowOut, QueueCallRecord, QueueClosedBy, QueueHangup, QueueOutcome, QueueSource, QueueTransfer,
    QueueTransferKind,
};
use teledge::record::sensor::{
    AlertKind, AlertPhase, AlertRecord, Breach, Communication, PortCounters, SensorRecord,
    SensorValue,
};
use teledge::record::{
    CallCounters, CallRecord, CaptureSummary, ClosedBy, DecodeCounters, DecodeProblem,
    FragmentCounters, Hangup, HepRtcp, Media, MediaCounters, MemoryCounters, Outcome, Party,
    Reason, Record, SctpCounters, Sdp, SdpCodec, SdpDirection, SdpMedia, State, TcpCounters,
    Transport, UserAgents,
};
use teledge::time::Timestamp;

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

/// The schema files, by file name.
pub(crate) struct Schemas {
    files: BTreeMap<String, Value>,
}

/// Keywords the validator below understands; a schema file using another one is refused, so
/// the files cannot promise more than this test checks.
const KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minimum",
    "maxItems",
    "anyOf",
    "allOf",
    "format",
];

impl Schemas {
    pub(crate) fn load() -> Schemas {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(schema_dir()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".schema.json") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.insert(name, serde_json::from_str(&text).unwrap());
            }
        }
        assert!(files.len() >= 8, "schema files: {:?}", files.keys());
        Schemas { files }
    }

    /// The schema file of a `"schema"` id: `teledge.call/1` → `teledge.call-1.schema.json`.
    fn file_of(id: &str) -> String {
        format!("{}.schema.json", id.replace('/', "-"))
    }

    /// `(file, schema)` a `$ref` points to, relative to `file`.
    fn resolve<'a>(&'a self, file: &'a str, reference: &str) -> (&'a str, &'a Value) {
        let (target, pointer) = reference.split_once('#').unwrap_or((reference, ""));
        let (name, doc) = if target.is_empty() {
            self.files.get_key_value(file).unwrap()
        } else {
            self.files
                .get_key_value(target)
                .unwrap_or_else(|| panic!("{file}: $ref to a missing file {target}"))
        };
        let schema = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{file}: $ref {reference} points nowhere"));
        (name.as_str(), schema)
    }

    /// Every way `value` breaks `schema`, with its JSON path.
    fn validate(
        &self,
        file: &str,
        schema: &Value,
        value: &Value,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let Some(schema) = schema.as_object() else {
            errors.push(format!("{file} {at}: a schema must be an object"));
            return;
        };
        for key in schema.keys() {
            if !KEYWORDS.contains(&key.as_str()) {
                errors.push(format!(
                    "{file} {at}: keyword {key} is not checked by this test"
                ));
            }
        }
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let (file, target) = self.resolve(file, reference);
            self.validate(file, target, value, at, errors);
        }
        for part in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.validate(file, part, value, at, errors);
        }
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
            let mut closest: Option<Vec<String>> = None;
            for part in any {
                let mut inner = Vec::new();
                self.validate(file, part, value, at, &mut inner);
                if inner.is_empty() {
                    closest = None;
                    break;
                }
                // The branch of the right type says best what is wrong.
                let right_type = !inner
                    .iter()
                    .any(|e| e.starts_with(&format!("{at}: ")) && e.contains("is not of type"));
                if right_type || closest.is_none() {
                    closest = Some(inner);
                }
            }
            if let Some(inner) = closest {
                errors.extend(inner);
            }
        }
        if let Some(expected) = schema.get("const") {
            if value != expected {
                errors.push(format!("{at}: {value} is not {expected}"));
            }
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            if !values.contains(value) {
                errors.push(format!("{at}: {value} is not one of {values:?}"));
            }
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !types.iter().any(|t| is_type(value, t)) {
                errors.push(format!("{at}: {value} is not of type {types:?}"));
                return;
            }
        }
        if let (Some(min), Some(n)) = (
            schema.get("minimum").and_then(Value::as_f64),
            value.as_f64(),
        ) {
            if n < min {
                errors.push(format!("{at}: {n} is below {min}"));
            }
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time") {
            if let Some(s) = value.as_str() {
                if !is_rfc3339_utc(s) {
                    errors.push(format!("{at}: {s:?} is not an RFC 3339 UTC time"));
                }
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str().unwrap();
                if !object.contains_key(name) {
                    errors.push(format!("{at}: required field {name} is missing"));
                }
            }
            for (name, field) in object {
                let path = format!("{at}.{name}");
                match (
                    properties.and_then(|p| p.get(name)),
                    schema.get("additionalProperties"),
                ) {
                    (Some(sub), _) => self.validate(file, sub, field, &path, errors),
                    (None, Some(Value::Bool(false))) => {
                        errors.push(format!("{path}: field not in the schema"))
                    }
                    (None, Some(sub @ Value::Object(_))) => {
                        self.validate(file, sub, field, &path, errors)
                    }
                    (None, _) => {}
                }
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    errors.push(format!("{at}: {} items, at most {max}", items.len()));
                }
            }
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    self.validate(file, item, v, &format!("{at}[{i}]"), errors);
                }
            }
        }
    }

    /// Validates one serialised record against the schema its `"schema"` field names.
    pub(crate) fn check(&self, record: &Value) -> Vec<String> {
        let id = record["schema"].as_str().unwrap_or_default();
        let file = Self::file_of(id);
        let Some(schema) = self.files.get(&file) else {
            return vec![format!(
                "no schema file {file} for a record of schema {id:?}"
            )];
        };
        let mut errors = Vec::new();
        self.validate(&file, schema, record, "$", &mut errors);
        errors
    }

    /// The field paths a schema declares (`media.offer.media[].codecs[].name`); a map
    /// (`additionalProperties` with a schema) is one field, its keys being data.
    fn paths(&self, file: &str, schema: &Value, at: &str, out: &mut BTreeSet<String>) {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let (file, target) = self.resolve(file, reference);
            self.paths(file, target, at, out);
        }
        for key in ["anyOf", "allOf"] {
            for part in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.paths(file, part, at, out);
            }
        }
        for (name, sub) in schema
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let path = join(at, name);
            out.insert(path.clone());
            self.paths(file, sub, &path, out);
        }
        if let Some(item) = schema.get("items") {
            self.paths(file, item, &format!("{at}[]"), out);
        }
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

fn is_type(value: &Value, t: &str) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        _ => false,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b.ends_with(b"Z")
        && (b.len() == 20 || (b[19] == b'.' && digits(20..b.len() - 1) && b.len() > 21))
}

/// The field paths of a serialised record (arrays as `[]`; an empty object is one field).
fn value_paths(value: &Value, at: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            for (name, field) in object {
                let path = join(at, name);
                out.insert(path.clone());
                value_paths(field, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                value_paths(item, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

fn json(record: &Record) -> Value {
    serde_json::to_value(record).unwrap()
}

fn time(secs: i64) -> Timestamp {
    Timestamp::from_secs_nanos(1_767_225_600 + secs, 123_456_000)
}

fn party(user: &str) -> Party {
    Party {
        user: Some(user.into()),
        display_name: Some("Agent".into()),
        uri: Some(format!("sip:{user}@example.com")),
    }
}

fn sdp() -> Sdp {
    Sdp {
        media: vec![SdpMedia {
            media: "audio".into(),
            address: Some("192.0.2.1".into()),
            port: 4000,
            protocol: "RTP/AVP".into(),
            rtcp_port: Some(4001),
            rtcp_mux: false,
            direction: SdpDirection::SendRecv,
            codecs: vec![SdpCodec {
                payload_type: 8,
                name: Some("PCMA".into()),
                clock_rate: Some(8000),
            }],
        }],
    }
}

/// A stream with every optional part present (a score *and* a reason for none, which no real
/// stream has, so that both shapes are in the field set).
fn stream() -> StreamQuality {
    let some = Some(1.5);
    StreamQuality {
        src: "192.0.2.1:4000".into(),
        dst: "192.0.2.2:5000".into(),
        ssrc: "0x00000001".into(),
        codec: Some("PCMA".into()),
        codecs: vec!["PCMA".into()],
        metrics: StreamMetrics {
            start_time: time(0),
            end_time: time(10),
            duration_s: 10.0,
            packets: 500,
            expected: 500,
            lost: 0,
            lost_percent: 0.0,
            duplicates: 0,
            out_of_order: 0,
            wrong_timestamp: 0,
            timestamp_jumps: 0,
            sequence_resets: 0,
            min_delta_ms: some,
            mean_delta_ms: some,
            max_delta_ms: some,
            min_jitter_ms: some,
            mean_jitter_ms: some,
            max_jitter_ms: some,
            max_skew_ms: some,
            payload_types: vec![8],
            loss_bursts: vec![0; 10],
            jitter_buffers: vec![JitterBuffer {
                size_ms: 50.0,
                discarded: 0,
                resyncs: 0,
                effective_loss_percent: 0.0,
                burst_ratio: 1.0,
            }],
            comfort_noise_packets: 0,
            dtmf: vec![Dtmf {
                digit: '5',
                time: time(3),
                duration_ms: Some(100.0),
            }],
            wireshark: WiresharkFigures {
                version: "4.0",
                expected: 500,
                lost: 0,
                sequence_errors: 0,
                wrong_timestamp: 0,
                min_delta_ms: some,
                mean_delta_ms: some,
                max_delta_ms: some,
                min_jitter_ms: some,
                mean_jitter_ms: some,
                max_jitter_ms: some,
                max_skew_ms: some,
            },
            saturated: vec!["duplicates"],
        },
        score: Some(Score {
            model: "G.107",
            codec: "PCMA".into(),
            ie: 0.0,
            bpl: 25.1,
            packet_loss_percent: 0.0,
            burst_ratio: 1.0,
            one_way_delay_ms: 0.0,
            delay_source: DelaySource::AssumedDefault,
            jitter_buffer_ms: 50.0,
            r_factor: 93.2,
            mos: 4.41,
        }),
        not_scored: Some(NotScored::Wideband("G722".into())),
        rtcp: Some(RtcpReported {
            reports: 2,
            last_fraction_lost_percent: some,
            last_cumulative_lost: Some(1),
            max_jitter_ms: some,
            last_jitter_ms: some,
            round_trip_samples: 1,
            round_trip_rejected: 0,
            min_round_trip_ms: some,
            mean_round_trip_ms: some,
            max_round_trip_ms: some,
            last_round_trip_ms: some,
            voip_metrics: Some(VoipMetrics {
                source_ssrc: 1,
                loss_rate: 0.0,
                discard_rate: 0.0,
                round_trip_delay_ms: 20,
                end_system_delay_ms: 40,
                r_factor: Some(90),
                mos_lq: Some(4.2),
                mos_cq: Some(4.1),
            }),
        }),
    }
}

/// One record of every kind, every optional field present: the field set of the types.
fn every_field_present() -> Vec<Record> {
    let call = CallRecord {
        schema: teledge::record::CALL_SCHEMA,
        record_id: "0123456789abcdef0123456789abcdef".into(),
        call_id: "a84b4c76e66710@pc33.example.com".into(),
        linked_call_id: Some("b84b4c76e66710".into()),
        caller: party("1001"),
        callee: party("2002"),
        asserted_identity: Some(party("1001")),
        diverted_from: Some(party("3003")),
        transport: Transport::Udp,
        caller_address: "192.0.2.1:5060".into(),
        callee_address: "192.0.2.2:5060".into(),
        started_before_capture: false,
        roles_known: true,
        invite_time: Some(time(0)),
        first_message_time: time(0),
        first_provisional_time: Some(time(1)),
        ringing_time: Some(time(1)),
        answer_time: Some(time(5)),
        end_time: Some(time(65)),
        bye_answered_time: Some(time(65)),
        last_message_time: time(65),
        post_dial_delay_s: Some(1.0),
        time_to_answer_s: Some(5.0),
        ring_duration_s: Some(4.0),
        talk_duration_s: Some(60.0),
        outcome: Outcome::Answered,
        state: State::Ended,
        complete: true,
        closed_by: ClosedBy::Bye,
        final_status: Some(200),
        final_reason: Some("OK".into()),
        reason: Some(Reason {
            protocol: "Q.850".into(),
            cause: Some(16),
            text: Some("Normal call clearing".into()),
        }),
        q850_cause: Some(16),
        hangup_by: Some(Hangup::Caller),
        user_agents: UserAgents {
            caller: Some("Phone/1.0".into()),
            callee: Some("PBX/2.0".into()),
        },
        messages: 7,
        retransmissions: 0,
        auth_challenges: 0,
        forks: 1,
        early_media: false,
        hold_count: 0,
        hold_duration_s: 0.0,
        media: Media {
            offer: Some(sdp()),
            answer: Some(sdp()),
            renegotiations: 0,
        },
        media_quality: MediaQuality {
            caller_to_callee: vec![stream()],
            callee_to_caller: vec![stream()],
            unknown_direction: vec![stream()],
            verdict: Some(Verdict {
                mos: 4.41,
                r_factor: 93.2,
                worst_direction: "caller_to_callee",
            }),
        },
        hep_rtcp: vec![HepRtcp {
            reporter_ssrc: Some("0x00000001".into()),
            source_ssrc: Some("0x00000002".into()),
            reports: 1,
            first_time: time(10),
            last_time: time(10),
            last_fraction_lost_percent: Some(0.0),
            max_fraction_lost_percent: Some(0.0),
            last_cumulative_lost: Some(0),
            last_jitter: Some(12),
            max_jitter: Some(12),
            last_highest_seq: Some(1000),
        }],
        saturated: vec!["messages"],
    };
    let summary = CaptureSummary {
        schema: teledge::record::SUMMARY_SCHEMA,
        files: vec!["a.pcap".into()],
        calls: 1,
        outcomes: BTreeMap::new(),
        registrations: 0,
        other_transactions: 0,
        orphan_messages: 0,
        decode: DecodeCounters {
            problems: vec![DecodeProblem {
                frame: 1,
                kind: "sip".into(),
                detail: "bad".into(),
            }],
            fragments: FragmentCounters::default(),
            tcp: TcpCounters::default(),
            sctp: SctpCounters::default(),
            memory: MemoryCounters::default(),
            ..DecodeCounters::default()
        },
        media: MediaCounters::default(),
        calls_dropped_at_capacity: 0,
        call_counters: CallCounters::default(),
        undecodable_files: vec!["b.pcap".into()],
        capture_drops: teledge::record::CaptureDrops {
            interface_statistics: 3,
            packet_drop_counts: 2,
            erf_loss_counters: 1,
            snoop_cumulative_drops: 4,
        },
    };
    let mut gap = GapRecord::new("edge-01", GapReason::StoreQuarantined, None);
    gap.first_dropped = Some("edge-01:1:1".into());
    gap.last_dropped = Some("edge-01:1:9".into());
    gap.epoch = Some(1);
    gap.detail = Some("will not open".into());
    gap.set_aside = Some("quarantine-1".into());
    gap.status = Some(413);
    gap.run_started = Some("2026-12-03T10:00:00Z".into());
    gap.run_last_seen = Some("2026-12-03T10:59:00Z".into());
    gap.counted_since = Some("2026-12-03T10:58:00Z".into());
    let mut update = teledge::record::update::UpdateRecord::new(
        "edge-01",
        teledge::record::update::UpdateKind::Package,
        teledge::record::update::UpdateStep::RolledBack,
    );
    update.target = Some("packages/teledge_0.2.0_arm64.deb".into());
    update.version = Some("0.2.0".into());
    update.previous = Some("0.1.0".into());
    update.reason = Some("unhealthy".into());
    update.detail = Some("not healthy within 120s; back on 0.1.0, healthy".into());
    update.targets_version = Some(7);
    vec![
        Record::Call(Box::new(call)),
        Record::Stream(Box::new(StreamRecord {
            schema: teledge::record::media::STREAM_SCHEMA,
            record_id: "0123456789abcdef0123456789abcdef".into(),
            stream: stream(),
        })),
        Record::OrphanStreams(Box::new(OrphanStreamsSummary {
            schema: teledge::record::media::ORPHAN_SUMMARY_SCHEMA,
            record_id: "0123456789abcdef0123456789abcdef".into(),
            interval_start: time(0),
            interval_end: time(60),
            streams: 1,
            packets: 500,
            lost: 0,
            by_source: vec![OrphanSource {
                src_ip: "192.0.2.1".into(),
                streams: 1,
                packets: 500,
            }],
            other_sources: 0,
        })),
        Record::CaptureSummary(Box::new(summary)),
        Record::Sensor(Box::new(SensorRecord {
            schema: teledge::record::sensor::SENSOR_SCHEMA,
            record_id: "0123456789abcdef0123456789abcdef".into(),
            device: "server-room-ups".into(),
            model: "Megatec Q1".into(),
            port: "/dev/ttyUSB0".into(),
            time: time(0),
            communication: Communication::Ok,
            last_good_time: Some(time(0)),
            stale: false,
            values: vec![SensorValue {
                name: "temperature".into(),
                value: 21.5,
                unit: "°C".into(),
            }],
            states: BTreeMap::new(),
            counters: PortCounters::default(),
        })),
        Record::Alert(Box::new(AlertRecord {
            schema: teledge::record::sensor::ALERT_SCHEMA,
            record_id: "0123456789abcdef0123456789abcdef".into(),
            alert_id: "0123456789abcdef0123456789abcdef".into(),
            device: "server-room-ups".into(),
            model: "Megatec Q1".into(),
            port: "/dev/ttyUSB0".into(),
            kind: AlertKind::Limit,
            reading: "temperature".into(),
            phase: AlertPhase::Ended,
            breach: Some(Breach::High),
            limit: Some(30.0),
            unit: "°C".into(),
            started: time(0),
            ended: Some(time(60)),
            duration_s: Some(60.0),
            value: Some(31.0),
            extreme: Some(33.0),
        })),
        Record::Gap(Box::new(gap)),
        Record::Interval(Box::new(IntervalRecord {
            schema: teledge::record::interval::INTERVAL_SCHEMA.into(),
            record_id: "0123456789abcdef0123456789abcdef".into(),
            node: "edge-01".into(),
            run: "00000000000000ff".into(),
            service: "sales".into(),
            interval_start: Timestamp::from_secs_nanos(1_767_225_600, 0),
            interval_end: Timestamp::from_secs_nanos(1_767_226_500, 0),
            interval_minutes: 15,
            time_zone: "Europe/Berlin".into(),
            local_start: "2026-01-01T01:00:00+01:00".into(),
            attribution: "event".into(),
            revision: 1,
            closed: true,
            sl_threshold_s: 20,
            sl_target_percent: 80,
            short_abandon_s: 5,
            sums: IntervalSums {
                offered: 3,
                answered: 2,
                abandoned: 1,
                wait_answered_buckets: vec![2, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                // A map: its keys are data, not fields (left empty as in the summary).
                outcomes: BTreeMap::new(),
                concurrency: vec![[0, 60, 1]],
                mos_centi_min: Some(410),
                mos_buckets: vec![0, 0, 0, 0, 0, 0, 1, 0, 0],
                sip: SipSums {
                    invites: 3,
                    pdd_buckets: vec![1; 15],
                    sdd_count: 1,
                    sdd_ms: 3,
                    sdd_buckets: vec![1; 11],
                    registrations: 2,
                    registered: 1,
                    registrations_ineffective: 1,
                    rrd_ms: 120,
                    rrd_buckets: vec![1; 15],
                    ..SipSums::default()
                },
                node_sip: SipSums {
                    invites: 4,
                    pdd_buckets: vec![1; 15],
                    sdd_buckets: vec![1; 11],
                    rrd_buckets: vec![1; 15],
                    ..SipSums::default()
                },
                node_calls_too_late: 1,
                agents: AgentSums {
                    staffed_ms: 900_000,
                    paused_ms: 60_000,
                    // A map: its keys are data, not fields (left empty as `outcomes`).
                    paused_by_reason_ms: BTreeMap::new(),
                    logins: 1,
                    ..AgentSums::default()
                },
                ..IntervalSums::default()
            },
        })),
        Record::Queue(Box::new(QueueCallRecord {
            schema: teledge::record::queue::QUEUE_SCHEMA,
            record_id: "0123456789abcdef0123456789abcdef".into(),
            source: QueueSource::AsteriskQueueLog,
            group: "pbx1".into(),
            call_id: "h:0123456789abcdef".into(),
            sip_call_id: Some("h:0123456789abcdef".into()),
            queue: "support".into(),
            caller: Some("h:0123456789abcdef".into()),
            enter_time: Some(time(0)),
            orig_position: Some(1),
            connect_time: Some(time(10)),
            end_time: time(130),
            outcome: QueueOutcome::Answered,
            flow_out: Some(FlowOut::Key),
            exit_key: Some("5".into()),
            wait_s: Some(10.0),
            ring_s: Some(3.0),
            position: Some(1),
            agent: Some("h:0123456789abcdef".into()),
            talk_s: Some(120.0),
            hangup_by: Some(QueueHangup::Agent),
            transfer: Some(QueueTransfer {
                kind: QueueTransferKind::Blind,
                target: Some("h:0123456789abcdef".into()),
                context: Some("from-internal".into()),
            }),
            ring_no_answer: 1,
            ring_no_answer_s: 15.0,
            ring_canceled: 0,
            agent_dumps: 0,
            wrap_up_s: Some(0.0),
            complete: true,
            closed_by: QueueClosedBy::Event,
        })),
        Record::Registrations(Box::new(
            teledge::record::registration::RegistrationsRecord {
                schema: teledge::record::registration::REGISTRATIONS_SCHEMA.into(),
                record_id: "0123456789abcdef0123456789abcdef".into(),
                minute_start: time(0),
                attempts: 3,
                registered: 1,
                challenged: 1,
                failed: 1,
                timed_out: 1,
                challenge_unanswered: 0,
                rrd_ms: 17_497,
                rrd_buckets: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
                not_timed: 0,
            },
        )),
        Record::Update(Box::new(update)),
        Record::Agent(Box::new(teledge::record::agent::AgentStateRecord {
            schema: teledge::record::agent::AGENT_SCHEMA,
            record_id: "0123456789abcdef0123456789abcdef".into(),
            source: QueueSource::AsteriskQueueLog,
            group: "pbx1".into(),
            agent: "h:0123456789abcdef".into(),
            queue: Some("support".into()),
            time: time(0),
            state: teledge::record::agent::AgentPresence::Paused,
            reason: Some("Lunch".into()),
            event: "PAUSE",
        })),
        Record::Audit(Box::new(teledge::record::audit::AuditRecord {
            schema: teledge::record::audit::AUDIT_SCHEMA,
            record_id: "0123456789abcdef0123456789abcdef".into(),
            node: "edge-01".into(),
            action: teledge::record::audit::AuditAction::Listen,
            principal: Some("alice".into()),
            auth: teledge::record::audit::AuditAuth::Session,
            call_id: Some("h:0123456789abcdef".into()),
            service: Some("sales".into()),
            session: Some("0123456789abcdef".into()),
            start: time(0),
            end: time(95),
            duration_s: 95.0,
            outcome: teledge::record::audit::AuditOutcome::Ok,
            reason: Some("call_ended".into()),
            status: Some(201),
            client_address: "192.0.2.7:50000".into(),
            user_agent: Some("Mozilla/5.0".into()),
        })),
        Record::Heartbeat(Box::new(HeartbeatRecord {
            schema: teledge::record::heartbeat::HEARTBEAT_SCHEMA.into(),
            node: "edge-01".into(),
            version: "0.1.0".into(),
            arch: "arm64".into(),
            config_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                .into(),
            reason: HeartbeatReason::Reload,
            started: "2026-01-01T00:00:00.000Z".into(),
            uptime_s: 3600.5,
            time: "2026-01-01T01:00:00.500Z".into(),
        })),
    ]
}

#[test]
fn the_schema_files_declare_exactly_the_fields_the_record_types_write() {
    let schemas = Schemas::load();
    let records = every_field_present();
    let mut kinds = BTreeSet::new();
    for record in &records {
        let value = json(record);
        let id = value["schema"].as_str().unwrap().to_owned();
        kinds.insert(id.clone());
        let errors = schemas.check(&value);
        assert!(errors.is_empty(), "{id}: {errors:#?}");
        let file = Schemas::file_of(&id);
        let mut declared = BTreeSet::new();
        schemas.paths(&file, &schemas.files[&file], "", &mut declared);
        let mut written = BTreeSet::new();
        value_paths(&value, "", &mut written);
        let undocumented: Vec<_> = written.difference(&declared).collect();
        let not_written: Vec<_> = declared.difference(&written).collect();
        assert!(
            undocumented.is_empty() && not_written.is_empty(),
            "{id}: written but not in {file}: {undocumented:?}; in {file} but not written: {not_written:?}"
        );
    }
    // Every record schema file is one a record kind uses.
    let files: BTreeSet<String> = kinds.iter().map(|k| Schemas::file_of(k)).collect();
    for name in schemas.files.keys() {
        assert!(
            files.contains(name) || name == "teledge.defs-1.schema.json",
            "{name} describes no record kind"
        );
    }
}

#[test]
fn a_record_that_breaks_its_schema_is_refused() {
    // The validator is real: a renamed field, a missing one, a wrong type and an unknown
    // enum value are each found.
    let schemas = Schemas::load();
    let call = json(&every_field_present()[0]);
    let mut renamed = call.clone();
    let answer = renamed
        .as_object_mut()
        .unwrap()
        .remove("answer_time")
        .unwrap();
    renamed["answered_time"] = answer;
    let errors = schemas.check(&renamed);
    assert!(
        errors.iter().any(|e| e.contains("answered_time")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("answer_time")),
        "{errors:?}"
    );
    let mut nested = call.clone();
    nested["media_quality"]["caller_to_callee"][0]["metrics"]["lost"] = "none".into();
    nested["outcome"] = "hung_up".into();
    nested["first_message_time"] = "yesterday".into();
    let errors = schemas.check(&nested);
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn every_record_of_every_bundled_capture_validates() {
    let schemas = Schemas::load();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut captures: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    captures.sort();
    assert!(captures.len() >= 20, "{captures:?}");
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for capture in &captures {
        let out = Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args(["replay", "--registrations"])
            .arg(capture)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {out:?}", capture.display());
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            let errors = schemas.check(&record);
            assert!(
                errors.is_empty(),
                "{}: {errors:#?}\n{line}",
                capture.display()
            );
            *by_kind
                .entry(record["type"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(by_kind.get("capture_summary"), Some(&captures.len()));
    assert!(
        by_kind.get("call").copied().unwrap_or(0) >= captures.len(),
        "{by_kind:?}"
    );
    assert!(by_kind.contains_key("stream"), "{by_kind:?}");
    assert!(by_kind.contains_key("registrations"), "{by_kind:?}");
}

#[test]
fn a_gap_record_of_a_real_spool_validates() {
    let schemas = Schemas::load();
    let dir = tempfile::tempdir().unwrap();
    let mut config = teledge::spool::SpoolConfig::new(dir.path().join("spool"), "edge-01");
    config.max_bytes = 64 << 10;
    config.disk_reserve_bytes = 0;
    let keyring = teledge::seal::Keyring::new((1, [7; 32]), &[]);
    let (mut spool, _) = teledge::spool::Spool::open(config, keyring).unwrap();
    let record = vec![b'x'; 2000];
    for _ in 0..200 {
        spool.append(&record).unwrap();
    }
    spool.flush().unwrap();
    assert!(spool.stats().dropped_oldest > 0, "{:?}", spool.stats());
    let gaps: Vec<Value> = spool
        .read(None, 10_000)
        .unwrap()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok())
        .filter(|v| v["type"] == "gap")
        .collect();
    assert!(!gaps.is_empty());
    for gap in &gaps {
        assert_eq!(gap["reason"], "spool_full_drop_oldest");
        let errors = schemas.check(gap);
        assert!(errors.is_empty(), "{errors:#?}\n{gap}");
    }
}

#[test]
fn queue_records_made_from_queue_log_lines_validate() {
    use teledge::correlation::queue::{QueueAssembler, QueueLimits};
    use teledge::decode::queue_log::parse_line;
    use teledge::privacy::{Privacy, Pseudonymizer};
    let schemas = Schemas::load();
    let mut assembler = QueueAssembler::new(
        QueueSource::AsteriskQueueLog,
        "pbx1",
        QueueLimits::default(),
        Pseudonymizer::new(Privacy::keyed_hash([1; 32])),
    );
    let mut records = Vec::new();
    for line in [
        "100|1.1|q|NONE|ENTERQUEUE||4930123|1",
        "105|1.1|q|SIP/1|RINGNOANSWER|5000",
        "110|1.1|q|SIP/2|CONNECT|10|1.2|2",
        "170|1.1|q|SIP/2|COMPLETECALLER|10|60|1",
        "200|2.1|q|NONE|ENTERQUEUE||4930124|1",
        "230|2.1|q|NONE|EXITWITHKEY|3|1|1|30",
        "300|3.1|q|SIP/2|ATTENDEDTRANSFER|BRIDGE|b-1|4|30|1",
        "400|4.1|q|NONE|ENTERQUEUE||4930125|1",
    ] {
        let parsed = parse_line(line.as_bytes()).unwrap();
        assembler.asterisk(&parsed, &mut |r| records.push(r));
    }
    assembler.finish(time(500), &mut |r| records.push(r));
    assert_eq!(records.len(), 4);
    for record in records {
        let value = json(&Record::Queue(Box::new(record)));
        let errors = schemas.check(&value);
        assert!(errors.is_empty(), "{errors:#?}\n{value:#}");
    }
}

fn schema_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `required` field of a schema file: (JSON pointer of the object, field).
fn required_fields(schema: &Value, at: &str, out: &mut BTreeSet<(String, String)>) {
    match schema {
        Value::Object(object) => {
            for name in object
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let pointer = if at.is_empty() { "/" } else { at };
                out.insert((pointer.to_owned(), name.as_str().unwrap().to_owned()));
            }
            for (key, sub) in object.iter().filter(|(k, _)| *k != "required") {
                let key = key.replace('~', "~0").replace('/', "~1");
                required_fields(sub, &format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, sub) in items.iter().enumerate() {
                required_fields(sub, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn required_fields_are_frozen_within_a_schema_version() {
    // Records are kept for years: one written by an older teledge under the same "schema"
    // name lacks the fields added since, so a field added to a version cannot be required.
    let schemas = Schemas::load();
    let mut now = BTreeSet::new();
    for (file, schema) in &schemas.files {
        let mut fields = BTreeSet::new();
        required_fields(schema, "", &mut fields);
        now.extend(fields.into_iter().map(|(at, f)| format!("{file} {at} {f}")));
    }
    let frozen: BTreeSet<String> =
        std::fs::read_to_string(schema_fixtures().join("required-fields.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(str::to_owned)
            .collect();
    let added: Vec<_> = now.difference(&frozen).collect();
    let dropped: Vec<_> = frozen.difference(&now).collect();
    assert!(
        added.is_empty() && dropped.is_empty(),
        "required fields changed within a schema version (schema/README.md: a field added to a \
         version is listed in `properties` only; a field made required, or a required one \
         dropped, needs a new version and file, whose lines then go into \
         tests/data/schema/required-fields.txt):\nnewly required: {added:#?}\nno longer \
         required: {dropped:#?}"
    );
}

#[test]
fn an_interval_record_as_the_first_interval_1_wrote_it_validates() {
    // The fixture has exactly the fields of teledge.interval/1 as its schema file first
    // declared them (3c4eacd, when a test held that file equal to the record type): it is
    // valid under that file, which refuses any field added since ("additionalProperties":
    // false), so the fixture cannot hold one.
    let schemas = Schemas::load();
    let mut first = Schemas::load();
    first.files.insert(
        "teledge.interval-1.schema.json".to_owned(),
        read_json(&schema_fixtures().join("teledge.interval-1.3c4eacd.schema.json")),
    );
    let old = read_json(&schema_fixtures().join("interval-1.3c4eacd.json"));
    let errors = first.check(&old);
    assert!(errors.is_empty(), "not what 3c4eacd wrote: {errors:#?}");

    // Today's file takes it, and teledge reads it back (the statistics merge records of
    // many runs, old ones too): the sums added since read as zero.
    let errors = schemas.check(&old);
    assert!(errors.is_empty(), "{errors:#?}");
    let read: IntervalRecord = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(read.sums.offered, 4);
    assert_eq!(read.sums.sip.invites, 4);
    assert_eq!(
        (read.sums.sip.sdd_count, read.sums.node_sip.clone()),
        (0, SipSums::default())
    );
    assert_eq!(read.sums.agents, AgentSums::default());

    // Today's records still validate, and carry fields the first file refuses.
    let today = every_field_present()
        .into_iter()
        .map(|r| json(&r))
        .find(|v| v["type"] == "interval")
        .unwrap();
    assert!(schemas.check(&today).is_empty());
    assert!(!first.check(&today).is_empty());

    // The fields the first version wrote stay required: without any one of them, refused.
    let mut fields = Vec::new();
    for (at, object) in [
        ("", &old),
        ("sums", &old["sums"]),
        ("sums.sip", &old["sums"]["sip"]),
    ] {
        fields.extend(object.as_object().unwrap().keys().map(|k| (at, k.clone())));
    }
    assert!(fields.len() > 60, "{fields:?}");
    for (at, field) in fields {
        let mut without = old.clone();
        let object = at
            .split('.')
            .filter(|p| !p.is_empty())
            .fold(&mut without, |v, p| &mut v[p]);
        object.as_object_mut().unwrap().remove(&field);
        assert!(
            !schemas.check(&without).is_empty(),
            "{at}.{field} is no longer required"
        );
    }
}
