//! The metric families the daemon exposes, as one struct whose fields the pipeline bumps.
//!
//! Names follow Prometheus conventions: `teledge_` prefix, `_total` on counters, base units
//! (`_seconds`, `_bytes`), timestamps as `_timestamp_seconds` (Unix time). Label values come
//! from closed sets (source names from the configuration, decode-error kinds and record kinds
//! from the code) and every family is capped anyway (see [`super::metrics::Family`]).
//!
//! Where another module already keeps a count ([`SpoolStats`], [`UplinkStats`],
//! [`TlsAlerts`]), the metric mirrors it rather than counting twice: spool values are read at
//! scrape time ([`AgentMetrics::watch_spool`]), uplink counters are raised to the uplink's
//! own totals ([`AgentMetrics::observe_uplink`]).

use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::metrics::{Counter, Family, Gauge, Kind, Registry, Sampled};
use crate::spool::{Spool, SpoolStats};
use crate::uplink::client::UplinkStats;
use crate::uplink::tls::TlsAlerts;

/// Most capture sources (interfaces, HEP listeners, files) told apart.
const MAX_SOURCES: usize = 32;
/// Decode-error kinds are `&'static str`s of the decoders: a few dozen at most.
const MAX_ERROR_KINDS: usize = 64;
/// Record kinds, drop reasons and bounded tables: small closed sets.
const MAX_SMALL_SET: usize = 16;
/// Bounded tables by name (`teledge_state_evictions_total`): a closed set of the
/// correlation's and the queue tracker's tables, 16 today, with room for the next ones (a
/// label beyond would be folded into the family's overflow series).
const MAX_TABLES: usize = 32;
/// Services told apart in the statistics' metrics.
const MAX_SERVICES: usize = 64;
/// Serial sensors on one box.
const MAX_SENSORS: usize = 64;

/// Every metric the daemon exposes. Build once, share as `Arc<AgentMetrics>`.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// When each internal event was last logged (see [`super::events`]).
    pub(crate) log_limiter: crate::log_limit::Limiter,

    // Capture and decode.
    /// Frames received, by source.
    pub source_packets: Arc<Family<Counter>>,
    /// Bytes of frames received, by source.
    pub source_bytes: Arc<Family<Counter>>,
    /// Frames the kernel dropped before we read them (AF_PACKET statistics), by source.
    pub source_kernel_drops: Arc<Family<Counter>>,
    /// Bytes of capture ring held now (every capture thread's, both rings while one
    /// replaces another), by source.
    pub capture_ring_bytes: Arc<Family<Gauge>>,
    /// Times an interface's capture rings grew from their start size, by source.
    pub capture_ring_grows: Arc<Family<Counter>>,
    /// Decode problems and reassembly drops, by kind (the names of
    /// [`crate::dissect::DissectStats::loss_counters`]).
    pub decode_errors: Arc<Family<Counter>>,
    /// Bytes held by reassembly (fragments, TCP, SIP framing, SCTP), by source; bounded by
    /// the decode path's memory budget.
    pub reassembly_bytes_held: Arc<Family<Gauge>>,

    // Correlation.
    pub calls_active: Arc<Gauge>,
    /// Bytes the call table holds (open calls and ended dialogs), as it accounts them.
    pub call_table_bytes: Arc<Gauge>,
    pub streams_active: Arc<Gauge>,
    /// Correlation shards (`[correlation] shards`).
    pub correlation_shards: Arc<Gauge>,
    /// Times a capture thread found the correlation shard it needed held by another thread
    /// and waited: low when sharding keeps threads apart.
    pub correlation_shard_lock_waits: Arc<Counter>,
    /// Media endpoint → shard routes held.
    pub correlation_media_routes: Arc<Gauge>,
    /// RTP/RTCP datagrams a capture thread held back because no route named their flow
    /// yet, by what became of them: `routed` (released to the call's shard when its SDP
    /// was handled), `unrouted` (released as orphans after the hold), `hold_full` (not held:
    /// the hold was at its bound).
    pub correlation_media_held: Arc<Family<Counter>>,
    /// SIP messages that reached their correlation shard after one captured later (several
    /// capture threads), by what the shard's reorder window did: `reordered` (put back in
    /// capture order), `late` (came more than the window late: applied after later ones),
    /// `window_full` (applied before the window passed: it was at its bound).
    pub correlation_sip_reordered: Arc<Family<Counter>>,
    /// Entries evicted from a bounded table because it was full or timed out, by table.
    pub state_evictions: Arc<Family<Counter>>,
    /// Sender times (HEP) too far from the local clock, replaced by it; by source and
    /// direction (`future`, `past`).
    pub clock_clamped: Arc<Family<Counter>>,
    /// HEP TCP/TLS connections refused or closed by the listener's bounds, by reason.
    pub hep_connections_closed: Arc<Family<Counter>>,

    // Records.
    /// Records produced, by kind (`call`, `stream`, `sensor`, ...).
    pub records_produced: Arc<Family<Counter>>,
    /// Records lost before the spool, by reason (`channel_full`).
    pub records_dropped: Arc<Family<Counter>>,

    // Spool (read at scrape time, see `watch_spool`).
    pub spool_records: Arc<Sampled>,
    pub spool_bytes: Arc<Sampled>,
    pub spool_disk_bytes: Arc<Sampled>,
    /// Age of the oldest unacknowledged record; the spool does not know record times, so the
    /// daemon pushes it once a second (`SpoolAge` in `daemon.rs`).
    pub spool_oldest_age_seconds: Arc<Sampled>,
    pub spool_appended: Arc<Sampled>,
    pub spool_acked: Arc<Sampled>,
    /// Records removed or refused by the spool's bound, by reason (`oldest`, `newest`,
    /// `disk_full`), or set aside because they would not open (`unreadable`).
    pub spool_dropped: Arc<Family<Sampled>>,
    pub spool_gap_records: Arc<Sampled>,
    /// Stores quarantined (would not open) and old quarantines deleted, by event.
    pub spool_quarantines: Arc<Family<Sampled>>,
    pub spool_compactions: Arc<Sampled>,
    pub spool_generation: Arc<Sampled>,

    // Uplink (raised to the uplink's own totals, see `observe_uplink`).
    /// Batches acknowledged by the collector ("uploads ok").
    pub uplink_batches_acked: Arc<Counter>,
    pub uplink_records_acked: Arc<Counter>,
    pub uplink_records_duplicate: Arc<Counter>,
    /// Failed attempts that will be retried ("upload retries").
    pub uplink_retries: Arc<Counter>,
    /// Failed attempts by kind (`connect`, `tls`, `timeout`, `bad_ack`, `status_404`, ...).
    pub uplink_failures: Arc<Family<Counter>>,
    /// Failed attempts in a row now; 0 while the uplink works ("uplink failing" when > 0).
    pub uplink_consecutive_failures: Arc<Gauge>,
    /// Batches halved because the collector refused their content or size.
    pub uplink_batch_splits: Arc<Counter>,
    /// Single records refused for good and moved to the dead-letter area.
    pub uplink_records_dead_lettered: Arc<Counter>,
    /// Dead letters removed or not kept because the area was full (announced upstream).
    pub uplink_dead_letter_records_dropped: Arc<Counter>,
    pub uplink_dead_letter_records: Arc<Gauge>,
    pub uplink_dead_letters_requeued: Arc<Counter>,
    pub uplink_last_success_timestamp_seconds: Arc<Gauge>,
    /// Not-after of the client certificate in use; set its source where certificates are
    /// read (it can change when the certificate is reloaded).
    pub uplink_client_cert_not_after_timestamp_seconds: Arc<Sampled>,
    pub uplink_tls_reloads: Arc<Sampled>,
    pub uplink_tls_reload_failures: Arc<Sampled>,

    // Sensors (for later).
    pub sensor_readings: Arc<Family<Counter>>,
    pub sensor_alerts: Arc<Family<Counter>>,

    // Service statistics: the open interval of each service (see `crate::stats`).
    /// Contacts of the open interval by service and figure (`offered`, `answered`,
    /// `abandoned`, `short_abandoned`, `flowed_out`, `not_connected`, `answered_within_t`,
    /// `abandoned_within_t`, outcomes as `outcome_<name>`).
    pub interval_contacts: Arc<Family<Gauge>>,
    /// Scored calls of the open interval with MOS at most `le`, by service (cumulative).
    pub interval_mos_calls: Arc<Family<Gauge>>,
    /// Σ wait of answered contacts (ms), peak concurrent contacts and start of the open
    /// interval, by service.
    pub interval_wait_answered_ms: Arc<Family<Gauge>>,
    pub interval_peak_concurrent: Arc<Family<Gauge>>,
    pub interval_start_timestamp_seconds: Arc<Family<Gauge>>,
    /// Agent figures of the open interval by service and figure (`staffed_ms`,
    /// `paused_ms`, `logins`, `logoffs`), from the queue sources' agent states.
    pub interval_agents: Arc<Family<Gauge>>,
    /// The node's RFC 6076 inputs over every call of the open interval, by figure
    /// (`invites`, `established`, `redirected`, `effective`, `ineffective`, `completed`,
    /// `completed_ms`, `pdd_count`, `pdd_ms`, `sdd_count`, `sdd_ms`, `registrations`,
    /// `registered`, `registrations_ineffective`, `rrd_ms`).
    pub interval_node_sip: Arc<Family<Gauge>>,
    /// Agent state records of a queue no `[[service]]` is named like (not counted).
    pub stats_agent_states_unclassified: Arc<Counter>,
    /// Calls no `[[service]]` matched; contacts too late for their interval (counted in the
    /// open one); interval records emitted (revisions included) and revisions.
    pub stats_calls_unclassified: Arc<Counter>,
    pub stats_contacts_too_late: Arc<Counter>,
    pub stats_queue_no_arrival: Arc<Counter>,
    /// Call records joined with the queue record of the same contact (counted once).
    pub stats_queue_joined: Arc<Counter>,
    /// Call or queue records counted on their own before their wait for a partner ended.
    pub stats_join_overflow: Arc<Counter>,
    pub stats_interval_records: Arc<Counter>,
    pub stats_interval_revisions: Arc<Counter>,

    // The HEP relay to HOMER (`[hep_out]`, see `crate::relay`).
    /// Frames sent, by type (`sip`, `rtcp`, `stream_report`).
    pub hep_out_frames: Arc<Family<Counter>>,
    pub hep_out_bytes: Arc<Counter>,
    /// Frames lost on the way out, by reason (`queue_full`, `send_failed`, `too_large`,
    /// `shutdown`, ...).
    pub hep_out_dropped: Arc<Family<Counter>>,
    /// Events not relayed on purpose, by reason (`own_frame`, `stream_without_call`, ...).
    pub hep_out_skipped: Arc<Family<Counter>>,
    pub hep_out_connection_failures: Arc<Counter>,
    /// 1 while the TCP/TLS connection to the server is up (UDP: once the socket is open).
    pub hep_out_connected: Arc<Gauge>,

    // The process and systemd.
    /// Panics of long-lived threads and tasks caught at their boundary, by component.
    pub panics: Arc<Family<Counter>>,
    pub watchdog_pings: Arc<Counter>,
    /// Watchdog ticks without a ping because the data path made no progress.
    pub watchdog_withheld: Arc<Counter>,
    pub start_time_seconds: Arc<Gauge>,

    // The status page and access control (see `crate::access`; read at scrape time from
    // the daemon's `Access`, see `watch_access`).
    /// Requests refused by access control, by reason (`no_credentials`, `bad_credentials`,
    /// `not_permitted`, `not_monitorable`, `no_randomness`).
    pub access_refused: Arc<Family<Sampled>>,
    /// Sessions ended early to make room for a new login.
    pub access_sessions_evicted: Arc<Sampled>,
    /// Audit records of refusals without valid credentials beyond their bound a minute (not
    /// written; announced by a gap record).
    pub audit_suppressed: Arc<Sampled>,
    /// Status page event streams (SSE) open now.
    pub status_streams: Arc<Gauge>,
    /// Status page event streams refused because too many were open.
    pub status_streams_refused: Arc<Counter>,
    /// Connections to the `[observe]` endpoint refused or ended by its bounds, by reason
    /// (`per_address`, `head_timeout`, `head_too_large`, `write_stalled`).
    pub observe_connections_closed: Arc<Family<Counter>>,

    // Live listen (WHEP; read at scrape time from `listen::whep::Whep`, see `watch_listen`).
    /// Listen sessions running now.
    pub listen_sessions: Arc<Sampled>,
    /// Listen sessions started and ended (`event`).
    pub listen_session_events: Arc<Family<Sampled>>,
    /// WHEP offers refused after authentication, by reason (authentication failures are in
    /// `teledge_access_refused_total`).
    pub listen_refused: Arc<Family<Sampled>>,
    /// Packets of live listen: `tapped` (handed from capture to a session), `tap_dropped` (a
    /// full session queue: capture never waits), `sent` (to browsers), `skipped` (not G.711).
    pub listen_packets: Arc<Family<Sampled>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut r = Registry::new();
        let build_info = r.family::<Gauge>(
            "teledge_build_info",
            "Always 1; the version is in the label.",
            Kind::Gauge,
            &["version"],
            1,
        );
        build_info.with(&[env!("CARGO_PKG_VERSION")]).set(1);
        let source = &["source"];
        let m = AgentMetrics {
            source_packets: r.family(
                "teledge_source_packets_total",
                "Frames received, by source.",
                Kind::Counter,
                source,
                MAX_SOURCES,
            ),
            source_bytes: r.family(
                "teledge_source_bytes_total",
                "Bytes of frames received, by source.",
                Kind::Counter,
                source,
                MAX_SOURCES,
            ),
            source_kernel_drops: r.family(
                "teledge_source_kernel_drops_total",
                "Frames dropped by the kernel before teledge read them, by source.",
                Kind::Counter,
                source,
                MAX_SOURCES,
            ),
            capture_ring_bytes: r.family(
                "teledge_capture_ring_bytes",
                "Bytes of capture ring held now, by source.",
                Kind::Gauge,
                source,
                MAX_SOURCES,
            ),
            capture_ring_grows: r.family(
                "teledge_capture_ring_grows_total",
                "Times the capture rings of a source grew from their start size.",
                Kind::Counter,
                source,
                MAX_SOURCES,
            ),
            decode_errors: r.family(
                "teledge_decode_errors_total",
                "Decode problems, by kind.",
                Kind::Counter,
                &["kind"],
                MAX_ERROR_KINDS,
            ),
            reassembly_bytes_held: r.family(
                "teledge_reassembly_bytes_held",
                "Bytes held by packet reassembly, by source.",
                Kind::Gauge,
                source,
                MAX_SOURCES,
            ),
            calls_active: r.gauge("teledge_calls_active", "Calls being tracked."),
            call_table_bytes: r.gauge(
                "teledge_call_table_bytes",
                "Bytes held by the call table (open calls and ended dialogs).",
            ),
            streams_active: r.gauge("teledge_media_streams_active", "RTP streams being tracked."),
            correlation_shards: r.gauge("teledge_correlation_shards", "Correlation shards."),
            correlation_shard_lock_waits: r.counter(
                "teledge_correlation_shard_lock_waits_total",
                "Times a thread waited for a correlation shard another thread held.",
            ),
            correlation_media_routes: r.gauge(
                "teledge_correlation_media_routes",
                "Media endpoints routed to a correlation shard.",
            ),
            correlation_media_held: r.family(
                "teledge_correlation_media_held_total",
                "RTP/RTCP held until a route named its flow, by outcome.",
                Kind::Counter,
                &["outcome"],
                MAX_SMALL_SET,
            ),
            correlation_sip_reordered: r.family(
                "teledge_correlation_sip_reordered_total",
                "SIP put back in capture order by a correlation shard's reorder window, by outcome.",
                Kind::Counter,
                &["outcome"],
                MAX_SMALL_SET,
            ),
            state_evictions: r.family(
                "teledge_state_evictions_total",
                "Entries evicted from a bounded table (full or timed out), by table.",
                Kind::Counter,
                &["table"],
                MAX_TABLES,
            ),
            clock_clamped: r.family(
                "teledge_timestamps_clamped_total",
                "Sender timestamps too far from the local clock, replaced by it, by source and direction.",
                Kind::Counter,
                &["source", "direction"],
                MAX_SOURCES,
            ),
            hep_connections_closed: r.family(
                "teledge_hep_connections_closed_total",
                "HEP TCP/TLS connections refused or closed by the listener's bounds, by reason.",
                Kind::Counter,
                &["reason"],
                MAX_SMALL_SET,
            ),
            records_produced: r.family(
                "teledge_records_produced_total",
                "Records produced, by kind.",
                Kind::Counter,
                &["kind"],
                MAX_SMALL_SET,
            ),
            records_dropped: r.family(
                "teledge_records_dropped_total",
                "Records lost before reaching the spool, by reason.",
                Kind::Counter,
                &["reason"],
                MAX_SMALL_SET,
            ),
            spool_records: r.sampled(
                "teledge_spool_records",
                "Records in the spool, not yet acknowledged by the collector.",
                Kind::Gauge,
            ),
            spool_bytes: r.sampled(
                "teledge_spool_bytes",
                "Sealed record bytes held by the spool (the quantity its bound applies to).",
                Kind::Gauge,
            ),
            spool_disk_bytes: r.sampled(
                "teledge_spool_disk_bytes",
                "Bytes the spool database takes on disk.",
                Kind::Gauge,
            ),
            spool_oldest_age_seconds: r.sampled(
                "teledge_spool_oldest_age_seconds",
                "Age of the oldest record not yet acknowledged.",
                Kind::Gauge,
            ),
            spool_appended: r.sampled(
                "teledge_spool_records_appended_total",
                "Records appended to the spool.",
                Kind::Counter,
            ),
            spool_acked: r.sampled(
                "teledge_spool_records_acked_total",
                "Records removed from the spool after the collector acknowledged them.",
                Kind::Counter,
            ),
            spool_dropped: r.family(
                "teledge_spool_records_dropped_total",
                "Records removed or refused by the spool bound, by reason.",
                Kind::Counter,
                &["reason"],
                MAX_SMALL_SET,
            ),
            spool_quarantines: r.family(
                "teledge_spool_quarantines_total",
                "Spool stores moved aside because they would not open, and old quarantined data deleted, by event.",
                Kind::Counter,
                &["event"],
                MAX_SMALL_SET,
            ),
            spool_gap_records: r.sampled(
                "teledge_spool_gap_records_total",
                "Gap records written to announce dropped records upstream.",
                Kind::Counter,
            ),
            spool_compactions: r.sampled(
                "teledge_spool_compactions_total",
                "Drained spool databases replaced by a fresh generation.",
                Kind::Counter,
            ),
            spool_generation: r.sampled(
                "teledge_spool_generation",
                "Generation number of the spool database in use.",
                Kind::Gauge,
            ),
            uplink_batches_acked: r.counter(
                "teledge_uplink_batches_acked_total",
                "Batches acknowledged by the collector.",
            ),
            uplink_records_acked: r.counter(
                "teledge_uplink_records_acked_total",
                "Records the collector acknowledged as newly stored.",
            ),
            uplink_records_duplicate: r.counter(
                "teledge_uplink_records_duplicate_total",
                "Records the collector acknowledged as already stored.",
            ),
            uplink_retries: r.counter(
                "teledge_uplink_retries_total",
                "Failed batch attempts that will be retried (see teledge_uplink_failures_total).",
            ),
            uplink_failures: r.family(
                "teledge_uplink_failures_total",
                "Failed batch attempts (retried, records kept in the spool), by kind.",
                Kind::Counter,
                &["kind"],
                MAX_SMALL_SET,
            ),
            uplink_consecutive_failures: r.gauge(
                "teledge_uplink_consecutive_failures",
                "Failed batch attempts in a row now; 0 while the uplink works.",
            ),
            uplink_batch_splits: r.counter(
                "teledge_uplink_batch_splits_total",
                "Batches halved because the collector refused their content (400, 413, 422).",
            ),
            uplink_records_dead_lettered: r.counter(
                "teledge_uplink_records_dead_lettered_total",
                "Single records the collector refused for good, moved to the dead-letter area.",
            ),
            uplink_dead_letter_records_dropped: r.counter(
                "teledge_uplink_dead_letter_records_dropped_total",
                "Dead letters removed or not kept because the dead-letter area was full.",
            ),
            uplink_dead_letter_records: r.gauge(
                "teledge_uplink_dead_letter_records",
                "Records held in the dead-letter area.",
            ),
            uplink_dead_letters_requeued: r.counter(
                "teledge_uplink_dead_letters_requeued_total",
                "Dead letters put back into the spool after an operator marked them for resending.",
            ),
            uplink_last_success_timestamp_seconds: r.gauge(
                "teledge_uplink_last_success_timestamp_seconds",
                "Unix time of the last batch the collector acknowledged.",
            ),
            uplink_client_cert_not_after_timestamp_seconds: r.sampled(
                "teledge_uplink_client_cert_not_after_timestamp_seconds",
                "Unix time at which the client certificate in use expires.",
                Kind::Gauge,
            ),
            uplink_tls_reloads: r.sampled(
                "teledge_uplink_tls_reloads_total",
                "Client certificate and key reloads after their files changed.",
                Kind::Counter,
            ),
            uplink_tls_reload_failures: r.sampled(
                "teledge_uplink_tls_reload_failures_total",
                "Changed certificate or key files that could not be used (the old pair is kept).",
                Kind::Counter,
            ),
            sensor_readings: r.family(
                "teledge_sensor_readings_total",
                "Sensor readings decoded, by sensor.",
                Kind::Counter,
                &["sensor"],
                MAX_SENSORS,
            ),
            sensor_alerts: r.family(
                "teledge_sensor_alerts_total",
                "Sensor alerts raised, by sensor.",
                Kind::Counter,
                &["sensor"],
                MAX_SENSORS,
            ),
            interval_contacts: r.family(
                "teledge_interval_contacts",
                "Contacts of the open interval, by service and figure.",
                Kind::Gauge,
                &["service", "figure"],
                MAX_SERVICES * 24,
            ),
            interval_mos_calls: r.family(
                "teledge_interval_mos_calls",
                "Scored calls of the open interval with MOS at most le, by service.",
                Kind::Gauge,
                &["service", "le"],
                MAX_SERVICES * 10,
            ),
            interval_wait_answered_ms: r.family(
                "teledge_interval_wait_answered_milliseconds",
                "Sum of the waits of answered contacts of the open interval, by service.",
                Kind::Gauge,
                &["service"],
                MAX_SERVICES,
            ),
            interval_peak_concurrent: r.family(
                "teledge_interval_peak_concurrent_contacts",
                "Most contacts active at one second of the open interval, by service.",
                Kind::Gauge,
                &["service"],
                MAX_SERVICES,
            ),
            interval_start_timestamp_seconds: r.family(
                "teledge_interval_start_timestamp_seconds",
                "Start of the open interval, by service.",
                Kind::Gauge,
                &["service"],
                MAX_SERVICES,
            ),
            interval_agents: r.family(
                "teledge_interval_agents",
                "Agent figures of the open interval (staffed_ms, paused_ms, logins, logoffs), by service.",
                Kind::Gauge,
                &["service", "figure"],
                MAX_SERVICES * 4,
            ),
            interval_node_sip: r.family(
                "teledge_interval_node_sip",
                "RFC 6076 inputs over every call of the node in the open interval, by figure.",
                Kind::Gauge,
                &["figure"],
                16,
            ),
            stats_agent_states_unclassified: r.counter(
                "teledge_stats_agent_states_unclassified_total",
                "Agent state records of a queue no [[service]] is named like: not counted.",
            ),
            stats_calls_unclassified: r.counter(
                "teledge_stats_calls_unclassified_total",
                "Calls no [[service]] matched: not contacts.",
            ),
            stats_contacts_too_late: r.counter(
                "teledge_stats_contacts_too_late_total",
                "Contacts whose interval was no longer held, counted in the open one.",
            ),
            stats_queue_no_arrival: r.counter(
                "teledge_stats_queue_no_arrival_total",
                "Queue records that tell no arrival (no ENTERQUEUE, no wait): not contacts.",
            ),
            stats_queue_joined: r.counter(
                "teledge_stats_queue_joined_total",
                "Call records joined with the queue record of the same contact (counted once).",
            ),
            stats_join_overflow: r.counter(
                "teledge_stats_join_overflow_total",
                "Call or queue records counted on their own early: too many waited for a partner.",
            ),
            stats_interval_records: r.counter(
                "teledge_stats_interval_records_total",
                "Interval records emitted (revisions included).",
            ),
            stats_interval_revisions: r.counter(
                "teledge_stats_interval_revisions_total",
                "Interval records re-emitted because late contacts changed them.",
            ),
            hep_out_frames: r.family(
                "teledge_hep_out_frames_total",
                "HEP frames sent to the HOMER server, by type.",
                Kind::Counter,
                &["type"],
                MAX_SMALL_SET,
            ),
            hep_out_bytes: r.counter(
                "teledge_hep_out_bytes_total",
                "Bytes of HEP frames sent to the HOMER server.",
            ),
            hep_out_dropped: r.family(
                "teledge_hep_out_dropped_total",
                "HEP frames lost on the way to the HOMER server, by reason.",
                Kind::Counter,
                &["reason"],
                MAX_SMALL_SET,
            ),
            hep_out_skipped: r.family(
                "teledge_hep_out_skipped_total",
                "Events not relayed to the HOMER server on purpose, by reason.",
                Kind::Counter,
                &["reason"],
                MAX_SMALL_SET,
            ),
            hep_out_connection_failures: r.counter(
                "teledge_hep_out_connection_failures_total",
                "Failed connections or sends to the HOMER server (retried with backoff).",
            ),
            hep_out_connected: r.gauge(
                "teledge_hep_out_connected",
                "1 while the HEP relay has a connection (or socket) to the HOMER server.",
            ),
            panics: r.family(
                "teledge_panics_total",
                "Panics of the daemon's threads and tasks caught at their boundary (each stops the daemon with a failure exit), by component.",
                Kind::Counter,
                &["component"],
                MAX_SMALL_SET,
            ),
            watchdog_pings: r.counter(
                "teledge_watchdog_pings_total",
                "WATCHDOG=1 notifications sent to systemd.",
            ),
            watchdog_withheld: r.counter(
                "teledge_watchdog_withheld_total",
                "Watchdog ticks without a ping because the data path made no progress.",
            ),
            access_refused: r.family(
                "teledge_access_refused_total",
                "Status page and live listen requests refused by access control, by reason.",
                Kind::Counter,
                &["reason"],
                MAX_SMALL_SET,
            ),
            access_sessions_evicted: r.sampled(
                "teledge_access_sessions_evicted_total",
                "Supervisor sessions ended early to make room for a new login.",
                Kind::Counter,
            ),
            audit_suppressed: r.sampled(
                "teledge_audit_suppressed_total",
                "Audit records of refusals without valid credentials not written (beyond 60 a minute; announced by a gap record).",
                Kind::Counter,
            ),
            status_streams: r.gauge(
                "teledge_status_streams",
                "Status page event streams (SSE) open now.",
            ),
            status_streams_refused: r.counter(
                "teledge_status_streams_refused_total",
                "Status page event streams refused because the most allowed were open.",
            ),
            observe_connections_closed: r.family(
                "teledge_observe_connections_closed_total",
                "Connections to the metrics/status endpoint refused or ended by its bounds, by reason.",
                Kind::Counter,
                &["reason"],
                8,
            ),
            listen_sessions: r.sampled(
                "teledge_listen_sessions",
                "Live listen (WHEP) sessions running now.",
                Kind::Gauge,
            ),
            listen_session_events: r.family(
                "teledge_listen_session_events_total",
                "Live listen sessions started and ended.",
                Kind::Counter,
                &["event"],
                MAX_SMALL_SET,
            ),
            listen_refused: r.family(
                "teledge_listen_refused_total",
                "Live listen offers refused after authentication, by reason.",
                Kind::Counter,
                &["reason"],
                MAX_SMALL_SET,
            ),
            listen_packets: r.family(
                "teledge_listen_packets_total",
                "Live listen packets: tapped from capture, dropped at a full session queue, sent, skipped (not G.711).",
                Kind::Counter,
                &["what"],
                MAX_SMALL_SET,
            ),
            start_time_seconds: r.gauge(
                "teledge_start_time_seconds",
                "Unix time at which the process started.",
            ),
            // Last: every field above registered its metric in `r` first.
            registry: r,
            log_limiter: crate::log_limit::Limiter::default(),
        };
        m.start_time_seconds.set(unix_seconds(SystemTime::now()));
        m
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.registry.render()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reads the spool's levels and counters at scrape time. A scrape never waits for the
    /// spool: if it is locked (a flush in progress) the last values are shown again.
    /// Reads access control's refusal counts at scrape time (they are counted once, in
    /// [`crate::access::Access`]).
    pub fn watch_access(&self, access: &Arc<crate::access::Access>) {
        for reason in crate::access::Denied::ALL {
            let access = Arc::clone(access);
            self.access_refused
                .with(&[reason.code()])
                .set_source(move || Some(access.refused(reason) as f64));
        }
        let access = Arc::clone(access);
        self.access_sessions_evicted
            .set_source(move || Some(access.sessions_evicted() as f64));
    }

    /// Reads the audit sink's suppressed refusals at scrape time (counted once, in the sink,
    /// whichever listener refused: the status page, live listen).
    pub fn watch_audit(&self, audit: &crate::access::audit::AuditSink) {
        let suppressed = audit.suppressed_reader();
        self.audit_suppressed
            .set_source(move || Some(suppressed() as f64));
    }

    /// Reads live listen's counters at scrape time (counted once, in the WHEP service and
    /// its tap).
    #[cfg(feature = "listen")]
    pub fn watch_listen(&self, whep: &crate::listen::whep::Whep) {
        use std::sync::atomic::{AtomicU64, Ordering};
        type Pick = fn(&crate::listen::whep::WhepCounters) -> &AtomicU64;
        // Weak handles: the service holds what holds these metrics (see `Whep::downgrade`).
        let counter = |pick: Pick| {
            let whep = whep.downgrade();
            move || {
                whep.upgrade()
                    .map(|w| pick(w.counters()).load(Ordering::Relaxed) as f64)
            }
        };
        let w = whep.downgrade();
        self.listen_sessions
            .set_source(move || w.upgrade().map(|w| w.sessions() as f64));
        let events: [(&str, Pick); 2] = [
            ("started", |c| &c.sessions_started),
            ("ended", |c| &c.sessions_ended),
        ];
        for (event, pick) in events {
            self.listen_session_events
                .with(&[event])
                .set_source(counter(pick));
        }
        let refused: [(&str, Pick); 7] = [
            ("no_such_call", |c| &c.refused_not_active),
            ("denied", |c| &c.refused_denied),
            ("listeners_full", |c| &c.refused_full),
            ("supervisor_listeners_full", |c| &c.refused_supervisor_full),
            ("codec_not_g711", |c| &c.refused_codec),
            ("bad_offer", |c| &c.refused_bad_offer),
            ("setup_failed", |c| &c.setup_failed),
        ];
        for (reason, pick) in refused {
            self.listen_refused
                .with(&[reason])
                .set_source(counter(pick));
        }
        let packets: [(&str, Pick); 3] = [
            ("sent", |c| &c.packets_sent),
            ("skipped", |c| &c.packets_skipped),
            ("samples_overflowed", |c| &c.samples_overflowed),
        ];
        for (what, pick) in packets {
            self.listen_packets.with(&[what]).set_source(counter(pick));
        }
        let tap = whep.tap().clone();
        self.listen_packets
            .with(&["tapped"])
            .set_source(move || Some(tap.counters().packets_forwarded as f64));
        let tap = whep.tap().clone();
        self.listen_packets
            .with(&["tap_dropped"])
            .set_source(move || Some(tap.counters().packets_dropped as f64));
    }

    pub fn watch_spool(&self, spool: Arc<Mutex<Spool>>) {
        let stat = |pick: fn(&SpoolStats) -> u64| {
            let spool = spool.clone();
            move || try_read(&spool, |s| pick(&s.stats()) as f64)
        };
        self.spool_records.set_source(stat(|s| s.records));
        self.spool_bytes.set_source(stat(|s| s.bytes));
        self.spool_appended.set_source(stat(|s| s.appended));
        self.spool_acked.set_source(stat(|s| s.acked));
        self.spool_gap_records.set_source(stat(|s| s.gap_records));
        self.spool_compactions.set_source(stat(|s| s.compactions));
        self.spool_generation.set_source(stat(|s| s.generation));
        self.spool_dropped
            .with(&["oldest"])
            .set_source(stat(|s| s.dropped_oldest));
        self.spool_dropped
            .with(&["newest"])
            .set_source(stat(|s| s.dropped_newest));
        self.spool_dropped
            .with(&["disk_full"])
            .set_source(stat(|s| s.dropped_disk_full));
        self.spool_dropped
            .with(&["unreadable"])
            .set_source(stat(|s| s.set_aside));
        self.spool_quarantines
            .with(&["quarantined"])
            .set_source(stat(|s| s.quarantined));
        self.spool_quarantines
            .with(&["pruned"])
            .set_source(stat(|s| s.quarantines_pruned));
        let disk = spool.clone();
        self.spool_disk_bytes.set_source(move || {
            try_read(&disk, |s| s.size_on_disk().ok().map(|b| b as f64)).flatten()
        });
    }

    /// Raises the uplink counters to the uplink's own totals; call it after every batch.
    /// A rise in acknowledged batches also stamps the last-success time with `now`.
    pub fn observe_uplink(&self, stats: &UplinkStats, now: SystemTime) {
        let before = self.uplink_batches_acked.get();
        self.uplink_batches_acked.raise_to(stats.batches);
        if self.uplink_batches_acked.get() > before {
            self.uplink_last_success_timestamp_seconds
                .set(unix_seconds(now));
        }
        self.uplink_records_acked.raise_to(stats.records);
        self.uplink_records_duplicate.raise_to(stats.duplicates);
        self.uplink_retries.raise_to(stats.retries);
        self.uplink_consecutive_failures
            .set(stats.consecutive_failures as i64);
        self.uplink_batch_splits.raise_to(stats.splits);
        self.uplink_records_dead_lettered
            .raise_to(stats.dead_lettered);
        self.uplink_dead_letter_records_dropped
            .raise_to(stats.dead_letter_dropped);
        self.uplink_dead_letter_records
            .set(stats.dead_letters_held as i64);
        self.uplink_dead_letters_requeued.raise_to(stats.requeued);
    }

    /// Reads the TLS reload counters at scrape time.
    pub fn watch_tls_alerts(&self, alerts: Arc<TlsAlerts>) {
        use std::sync::atomic::Ordering::Relaxed;
        let a = alerts.clone();
        self.uplink_tls_reloads
            .set_source(move || Some(a.reloads.load(Relaxed) as f64));
        self.uplink_tls_reload_failures
            .set_source(move || Some(alerts.reload_failures.load(Relaxed) as f64));
    }

    /// The inputs of the systemd status line, as last seen (no callback is run).
    pub fn status(&self, now: SystemTime) -> super::systemd::StatusLine {
        let last = self.uplink_last_success_timestamp_seconds.get();
        super::systemd::StatusLine {
            active_calls: self.calls_active.get().max(0) as u64,
            queued_records: self.spool_records.last().map(|v| v as u64),
            last_upload_age: (last > 0)
                .then(|| Duration::from_secs(unix_seconds(now).saturating_sub(last).max(0) as u64)),
        }
    }
}

/// Reads from the spool if it is free right now; a poisoned lock still holds a consistent
/// spool (see `uplink::client::lock`).
fn try_read<T>(spool: &Mutex<Spool>, f: impl FnOnce(&Spool) -> T) -> Option<T> {
    match spool.try_lock() {
        Ok(s) => Some(f(&s)),
        Err(TryLockError::Poisoned(p)) => Some(f(&p.into_inner())),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Whole seconds since the Unix epoch (0 for a clock before 1970).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::valid_metric_name;

    #[test]
    fn every_family_is_registered_once_with_a_valid_prefixed_name() {
        let m = AgentMetrics::new();
        assert!(m.registry().errors().is_empty(), "{:?}", m.registry());
        let names = m.registry().names();
        assert!(names.len() >= 30, "{names:?}");
        for name in names {
            assert!(
                name.starts_with("teledge_") && valid_metric_name(name),
                "{name}"
            );
        }
    }

    #[test]
    fn uplink_counters_follow_the_uplink_totals_and_stamp_success() {
        let m = AgentMetrics::new();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut s = UplinkStats {
            retries: 2,
            ..Default::default()
        };
        m.observe_uplink(&s, t);
        assert_eq!(m.uplink_last_success_timestamp_seconds.get(), 0);
        s.batches = 1;
        s.records = 500;
        m.observe_uplink(&s, t);
        assert_eq!(m.uplink_batches_acked.get(), 1);
        assert_eq!(m.uplink_retries.get(), 2);
        assert_eq!(m.uplink_last_success_timestamp_seconds.get(), 1_700_000_000);
        let status = m.status(t + Duration::from_secs(4));
        assert_eq!(status.last_upload_age, Some(Duration::from_secs(4)));
    }
}
