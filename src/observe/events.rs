//! Named internal events: one type per thing that happens to the agent's data, whose
//! [`InternalEvent::emit`] both writes the log line and bumps the metric. A loss is therefore
//! never logged without being counted, nor counted without being logged, and its level is
//! decided once, here (ERROR: data lost or an operator must act; WARN: input refused).
//!
//! Events that can come in floods (a full queue, a stream of malformed frames) are logged
//! at most once per [`LOG_INTERVAL`] per event and reason; the line says how many occurrences
//! it stands for since the previous line. The metric counts every one.
//!
//! | event | metric | level |
//! |---|---|---|
//! | [`RecordsDropped`] | `teledge_records_dropped_total{reason}` | ERROR |
//! | [`SpoolAppendFailed`] | `teledge_records_dropped_total{reason="spool_append_failed"}` | ERROR |
//! | [`DecodeErrors`] | `teledge_decode_errors_total{kind}` | WARN |
//! | [`HepConnectionRefused`] | `teledge_hep_connections_closed_total{reason}` | WARN |
//! | [`UplinkAttemptFailed`] | `teledge_uplink_failures_total{kind}` | ERROR (by the forwarder) |
//! | [`HepRelayDropped`] | `teledge_hep_out_dropped_total{reason}` | WARN |
//! | [`HepRelayConnectionFailed`] | `teledge_hep_out_connection_failures_total` | WARN |
//! | [`ComponentPanicked`] | `teledge_panics_total{component}` | ERROR |
//! | a refusal by `crate::access::Access` (status page, live listen) | `teledge_access_refused_total{reason}` (counted in `Access`, read at scrape time) | WARN |
//!
//! Emitted by: the record queue and the spool writer (drops before the spool), the HEP
//! listener (refused and dropped frames, closed connections), the daemon's HEP task (frames
//! whose content cannot be used) and the ticker (the decode path's and the call table's loss
//! totals, through [`NewSince`]), the uplink component (batches to the HTTPS collector or to
//! NATS JetStream that failed and will be retried), the daemon's supervisor (a component's
//! panic caught at its boundary).

use super::agent::AgentMetrics;
pub use crate::log_limit::LOG_INTERVAL;

/// Something that happened, told once: logged and counted together.
pub trait InternalEvent {
    fn emit(self, metrics: &AgentMetrics);
}

/// Records lost before the spool (why, how many).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordsDropped {
    pub reason: DropReason,
    pub count: u64,
}

/// Why records were lost before the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The queue to the spool writer was full (capture never waits on the spool).
    QueueFull,
    /// The queue to the spool writer held its bound of bytes
    /// ([`crate::record::Record::held_bytes`]).
    QueueBytes,
    /// The spool writer had stopped: nothing could take the record.
    QueueClosed,
    /// A record that would not serialise.
    NotSerialisable,
    /// The HEP listener's queue was full (frames).
    HepQueueFull,
    /// The HEP listener's queue was at its byte bound.
    HepQueueBytes,
    /// A new call refused because the call table was full of answered calls.
    CallTableFull,
    /// The record of a call no one ever answered a message of (no response at all: an
    /// INVITE flood's), refused because the queue to the spool writer was half full: its
    /// other half is kept for records of calls that saw a response.
    QueueReserved,
}

impl DropReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::QueueBytes => "queue_bytes",
            DropReason::QueueClosed => "queue_closed",
            DropReason::NotSerialisable => "not_serialisable",
            DropReason::HepQueueFull => "hep_queue_full",
            DropReason::HepQueueBytes => "hep_queue_bytes",
            DropReason::CallTableFull => "call_table_full",
            DropReason::QueueReserved => "queue_reserved",
        }
    }
}

impl InternalEvent for RecordsDropped {
    fn emit(self, metrics: &AgentMetrics) {
        if self.count == 0 {
            return;
        }
        let reason = self.reason.label();
        metrics.records_dropped.with(&[reason]).add(self.count);
        if let Some(count) = metrics
            .log_limiter
            .due(("records_dropped", reason), self.count)
        {
            tracing::error!(reason, count, "Records dropped before the spool.");
        }
    }
}

/// A record the spool would not take (its storage failed): the record is lost.
#[derive(Debug)]
pub struct SpoolAppendFailed<'a> {
    pub error: &'a (dyn std::error::Error + 'static),
}

impl InternalEvent for SpoolAppendFailed<'_> {
    fn emit(self, metrics: &AgentMetrics) {
        let reason = "spool_append_failed";
        metrics.records_dropped.with(&[reason]).inc();
        if let Some(count) = metrics.log_limiter.due(("records_dropped", reason), 1) {
            tracing::error!(
                error = %chain(self.error),
                count,
                "Spool append failed: record dropped."
            );
        }
    }
}

/// Frames or messages that did not decode, by kind (`sip`, `hep_malformed`,
/// `hep_auth_rejected`, `tcp-resync`, ...), from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeErrors<'a> {
    pub source: &'a str,
    pub kind: &'a str,
    pub count: u64,
}

impl InternalEvent for DecodeErrors<'_> {
    fn emit(self, metrics: &AgentMetrics) {
        if self.count == 0 {
            return;
        }
        metrics.decode_errors.with(&[self.kind]).add(self.count);
        if let Some(count) = metrics
            .log_limiter
            .due(("decode_errors", self.kind), self.count)
        {
            tracing::warn!(
                source = self.source,
                kind = self.kind,
                count,
                "Input that did not decode, dropped."
            );
        }
    }
}

/// A HEP TCP/TLS connection refused or closed by the listener's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HepConnectionRefused<'a> {
    /// `refused_max_connections`, `refused_per_source`, `no_valid_first_frame`, `idle`,
    /// `tls_handshake_failed`.
    pub reason: &'a str,
    pub peer: std::net::SocketAddr,
}

impl InternalEvent for HepConnectionRefused<'_> {
    fn emit(self, metrics: &AgentMetrics) {
        metrics.hep_connections_closed.with(&[self.reason]).inc();
        if let Some(count) = metrics
            .log_limiter
            .due(("hep_connections_closed", self.reason), 1)
        {
            tracing::warn!(
                reason = self.reason,
                peer = %self.peer,
                count,
                "HEP connection refused or closed."
            );
        }
    }
}

/// A batch not delivered — to the HTTPS collector or to NATS JetStream — and kept in the
/// spool to be retried: counted by kind (`connect`, `tls`, `timeout`, `status_5xx`, …, and for
/// JetStream `auth`, `no_stream`, `jetstream`). Nothing is lost. The forwarder logs it, at
/// ERROR once when the uplink starts failing or the kind changes and at WARN when it works
/// again (not once per retry), so the event only counts; `/health` is told by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkAttemptFailed<'a> {
    pub kind: &'a str,
}

impl InternalEvent for UplinkAttemptFailed<'_> {
    fn emit(self, metrics: &AgentMetrics) {
        metrics.uplink_failures.with(&[self.kind]).inc();
    }
}

/// HEP frames for the HOMER server lost by the relay (`crate::relay`): its queue was full,
/// a send failed, a frame would not encode, or shutdown came first. The records are not
/// affected (they go through the spool); what HOMER shows misses these frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HepRelayDropped<'a> {
    /// `queue_full`, `queue_bytes`, `closed`, `send_failed`, `too_large`,
    /// `family_mismatch`, `time_out_of_range`, `shutdown`.
    pub reason: &'a str,
    pub count: u64,
}

impl InternalEvent for HepRelayDropped<'_> {
    fn emit(self, metrics: &AgentMetrics) {
        if self.count == 0 {
            return;
        }
        metrics.hep_out_dropped.with(&[self.reason]).add(self.count);
        if let Some(count) = metrics
            .log_limiter
            .due(("hep_out_dropped", self.reason), self.count)
        {
            tracing::warn!(
                reason = self.reason,
                count,
                "HEP frames for the HOMER server dropped."
            );
        }
    }
}

/// The relay could not connect or send to the HOMER server; it retries with backoff.
#[derive(Debug)]
pub struct HepRelayConnectionFailed<'a> {
    pub address: &'a str,
    pub error: &'a (dyn std::error::Error + 'static),
}

/// A long-lived thread or task of the daemon panicked (caught at its boundary; the daemon
/// stops with a failure exit and announces it upstream, see `crate::daemon`).
#[derive(Debug, Clone, Copy)]
pub struct ComponentPanicked<'a> {
    pub component: &'a str,
    pub message: &'a str,
}

impl InternalEvent for ComponentPanicked<'_> {
    fn emit(self, metrics: &AgentMetrics) {
        metrics.panics.with(&[self.component]).inc();
        if let Some(count) = metrics
            .log_limiter
            .due(("component_panicked", self.component), 1)
        {
            tracing::error!(
                component = self.component,
                message = self.message,
                count,
                "A component panicked (a bug): what it held is accounted for and announced, and teledge stops with a failure exit so systemd restarts it."
            );
        }
    }
}

impl InternalEvent for HepRelayConnectionFailed<'_> {
    fn emit(self, metrics: &AgentMetrics) {
        metrics.hep_out_connection_failures.inc();
        metrics.hep_out_connected.set(0);
        if let Some(count) = metrics.log_limiter.due(("hep_out_connection", ""), 1) {
            tracing::warn!(
                address = self.address,
                error = %chain(self.error),
                count,
                "HEP relay: no connection to the HOMER server; retrying."
            );
        }
    }
}

pub use crate::report::chain;

/// Totals that only grow, kept where the work is done (a pipeline's loss counters), turned
/// into events of what is new since the last look: the event then counts and logs the new
/// part. Two sources adding to one metric (the decode path and the HEP task both count
/// `sip`) therefore add up; a raise of the metric to one source's total would hide the other.
#[derive(Debug, Default)]
pub struct NewSince {
    seen: std::collections::HashMap<&'static str, u64>,
}

impl NewSince {
    /// How much `total` grew since the last call with `key`.
    pub fn new_since(&mut self, key: &'static str, total: u64) -> u64 {
        let seen = self.seen.entry(key).or_default();
        let new = total.saturating_sub(*seen);
        *seen = (*seen).max(total);
        new
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with logs captured; returns them.
    fn logs(f: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn series(metrics: &AgentMetrics, line_start: &str) -> Option<u64> {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn every_loss_event_is_logged_at_its_level_and_counted() {
        let metrics = AgentMetrics::new();
        let peer: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let io = std::io::Error::other("disk on fire");
        let out = logs(|| {
            RecordsDropped {
                reason: DropReason::QueueFull,
                count: 3,
            }
            .emit(&metrics);
            RecordsDropped {
                reason: DropReason::QueueClosed,
                count: 1,
            }
            .emit(&metrics);
            SpoolAppendFailed { error: &io }.emit(&metrics);
            DecodeErrors {
                source: "eth0",
                kind: "sip",
                count: 2,
            }
            .emit(&metrics);
            HepConnectionRefused {
                reason: "refused_per_source",
                peer,
            }
            .emit(&metrics);
        });
        let line = |needle: &str| {
            out.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {out}"))
                .to_owned()
        };
        assert!(line("reason=\"queue_full\"").contains("ERROR"), "{out}");
        assert!(line("reason=\"queue_full\"").contains("count=3"), "{out}");
        assert!(line("reason=\"queue_closed\"").contains("ERROR"), "{out}");
        assert!(line("disk on fire").contains("ERROR"), "{out}");
        assert!(line("kind=\"sip\"").contains("WARN"), "{out}");
        assert!(line("192.0.2.7:40000").contains("WARN"), "{out}");
        let dropped = |reason: &str| {
            series(
                &metrics,
                &format!("teledge_records_dropped_total{{reason=\"{reason}\"}}"),
            )
        };
        assert_eq!(dropped("queue_full"), Some(3));
        // A closed queue is its own reason, not "queue full".
        assert_eq!(dropped("queue_closed"), Some(1));
        assert_eq!(dropped("spool_append_failed"), Some(1));
        assert_eq!(
            series(&metrics, "teledge_decode_errors_total{kind=\"sip\"}"),
            Some(2)
        );
        assert_eq!(
            series(
                &metrics,
                "teledge_hep_connections_closed_total{reason=\"refused_per_source\"}"
            ),
            Some(1)
        );
    }

    #[test]
    fn a_flood_of_drops_is_counted_in_full_but_logged_once() {
        let metrics = AgentMetrics::new();
        let out = logs(|| {
            for _ in 0..1000 {
                RecordsDropped {
                    reason: DropReason::QueueFull,
                    count: 1,
                }
                .emit(&metrics);
            }
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert_eq!(
            series(
                &metrics,
                "teledge_records_dropped_total{reason=\"queue_full\"}"
            ),
            Some(1000)
        );
    }
}
