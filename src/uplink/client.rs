//! The HTTPS sink: batches from the spool POSTed to the collector, acknowledged, then removed;
//! refused content split down to single records, failures retried with backoff and alerted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use crate::backoff::Backoff;
use crate::record::gap::{GapReason, GapRecord};
use crate::seal::Keyring;
use crate::spool::{RecordId, Spool, SpoolError, StoredRecord};
use crate::uplink::dead_letter::{raw_record, DeadLetterError, DeadLetters};
use crate::uplink::nats::{NatsFailureKind, NatsSink};
use crate::uplink::tls::{ClientTls, TlsError};
use crate::uplink::Ack;
use crate::uplink::UplinkSettings;

/// What kind of failure an attempt met (the label of `teledge_uplink_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// TCP connect failed or timed out, or the connection was lost.
    Connect,
    /// The TLS handshake failed (certificates, names, versions).
    Tls,
    /// No answer before the timeout.
    Timeout,
    /// A `200` whose acknowledgement does not match the batch sent.
    BadAck,
    /// An HTTP status other than 200 that is not about the batch's content.
    Status(u16),
    /// NATS refused the credentials or the certificate's identity.
    Auth,
    /// JetStream: no stream takes the subject, or none has a leader now.
    NoStream,
    /// JetStream refused a publish (a wrong expected stream, a full stream, …).
    JetStream,
}

impl FailureKind {
    /// A short label from a closed set (statuses are grouped by class, except the ones an
    /// operator acts on differently).
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Timeout => "timeout",
            FailureKind::BadAck => "bad_ack",
            FailureKind::Status(401) => "status_401",
            FailureKind::Status(403) => "status_403",
            FailureKind::Status(404) => "status_404",
            FailureKind::Status(408) => "status_408",
            FailureKind::Status(429) => "status_429",
            FailureKind::Status(s) if (500..600).contains(&s) => "status_5xx",
            FailureKind::Status(_) => "status_other",
            FailureKind::Auth => "auth",
            FailureKind::NoStream => "no_stream",
            FailureKind::JetStream => "jetstream",
        }
    }
}

/// Why a batch was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again (with backoff, and an alert while it lasts): the collector is out
    /// of reach, misconfigured or busy — nothing about the records themselves.
    #[error("{reason}")]
    Retriable { kind: FailureKind, reason: String },
    /// The collector refused the batch's content (`400`, `413`, `422`): split it; a single
    /// record so refused becomes a dead letter.
    #[error("refused with status {status}: {reason}")]
    Refused { status: u16, reason: String },
}

/// How the uplink treats an HTTP status (the contract is in the module doc of `uplink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Accepted,
    /// About the content of the batch: split, and dead-letter a single record.
    Content,
    /// Anything else: retry with backoff and raise an alert.
    Retry,
}

/// The class of an HTTP status answered to a batch.
pub fn classify(status: u16) -> StatusClass {
    match status {
        200 => StatusClass::Accepted,
        400 | 413 | 422 => StatusClass::Content,
        _ => StatusClass::Retry,
    }
}

/// Why forwarding stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the collector was not reachable before the deadline: {0}")]
    Deadline(String),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
}

/// Counters of the uplink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UplinkStats {
    /// Batches acknowledged.
    pub batches: u64,
    /// Records the collector stored as new.
    pub records: u64,
    pub duplicates: u64,
    /// Failed attempts that will be retried.
    pub retries: u64,
    /// Failed attempts in a row, now (0 while the uplink works).
    pub consecutive_failures: u64,
    /// Batches halved because the collector refused their content or size.
    pub splits: u64,
    /// Records moved to the dead-letter area.
    pub dead_lettered: u64,
    /// Dead letters removed (or not kept) because the area was full; announced upstream.
    pub dead_letter_dropped: u64,
    /// Dead letters held now (marked for resending included).
    pub dead_letters_held: u64,
    /// Dead letters put back into the spool after an operator marked them.
    pub requeued: u64,
    /// Times the spool's records were moved to a new store epoch after a `409`.
    pub epochs_started: u64,
}

/// What an attempt did, told to the progress hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt<'a> {
    /// A batch was acknowledged.
    Acked,
    /// The spool was found drained (nothing durable left to send).
    Drained,
    /// An attempt failed and will be retried.
    Failed { kind: FailureKind, reason: &'a str },
    /// The collector refused a batch's content; it is being split.
    Split { status: u16 },
    /// A single record was moved to the dead-letter area.
    DeadLettered { status: u16 },
}

/// Called with the uplink's totals and what the attempt did.
type ProgressHook = Box<dyn FnMut(&UplinkStats, &Attempt<'_>) + Send>;

/// A connection to the collector, re-established when lost.
pub struct Uplink {
    config: UplinkSettings,
    node: String,
    tls: ClientTls,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink")
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .finish()
    }
}

impl Uplink {
    pub fn new(config: UplinkSettings, node: String) -> Result<Self, TlsError> {
        let tls = ClientTls::new(
            &config.ca_file,
            &config.cert_file,
            &config.key_file,
            config.tls12_allowed,
        )?;
        Ok(Uplink {
            config,
            node,
            tls,
            sender: None,
        })
    }

    pub fn tls_alerts(&self) -> Arc<crate::uplink::tls::TlsAlerts> {
        self.tls.alerts.clone()
    }

    async fn connect(&mut self) -> Result<(), SendError> {
        let failed = |kind: FailureKind, reason: String| SendError::Retriable { kind, reason };
        let addr = (self.config.host.as_str(), self.config.port);
        let tcp = tokio::time::timeout(self.config.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| failed(FailureKind::Connect, "connect timed out".into()))?
            .map_err(|e| failed(FailureKind::Connect, format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.config.host.clone())
            .map_err(|e| failed(FailureKind::Tls, e.to_string()))?;
        let connector = TlsConnector::from(self.tls.config());
        let tls = tokio::time::timeout(self.config.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| failed(FailureKind::Tls, "TLS handshake timed out".into()))?
            .map_err(|e| failed(FailureKind::Tls, format!("TLS: {e}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| failed(FailureKind::Connect, e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %crate::report::Chain(&e), "Uplink connection closed.");
            }
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one encoded batch and waits for the collector's answer.
    pub async fn send(&mut self, batch_id: &str, body: Vec<u8>) -> Result<Ack, SendError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = None;
            self.connect().await?;
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err(SendError::Retriable {
                kind: FailureKind::Connect,
                reason: "no connection".into(),
            });
        };
        let request = hyper::Request::post(&self.config.path)
            .header("host", &self.config.host)
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .header("x-teledge-node", &self.node)
            .header("x-teledge-batch", batch_id)
            .body(Full::new(Bytes::from(body)))
            // Only a header value could be refused; node ids are validated, batch ids ours.
            .map_err(|e| SendError::Retriable {
                kind: FailureKind::Status(0),
                reason: format!("request: {}", crate::report::chain(&e)),
            })?;
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), 1 << 16)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper::Error>((status, body))
        };
        let result = tokio::time::timeout(self.config.timeout, exchange).await;
        let (status, body) = match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.sender = None;
                return Err(SendError::Retriable {
                    kind: FailureKind::Connect,
                    reason: format!("connection error: {}", crate::report::chain(&e)),
                });
            }
            Err(_) => {
                self.sender = None;
                return Err(SendError::Retriable {
                    kind: FailureKind::Timeout,
                    reason: "no answer before the timeout".into(),
                });
            }
        };
        let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        match classify(status) {
            StatusClass::Accepted => {
                serde_json::from_slice::<Ack>(&body).map_err(|e| SendError::Retriable {
                    kind: FailureKind::BadAck,
                    reason: format!("unreadable acknowledgement: {e}"),
                })
            }
            StatusClass::Content => Err(SendError::Refused {
                status,
                reason: text,
            }),
            StatusClass::Retry => Err(SendError::Retriable {
                kind: FailureKind::Status(status),
                reason: format!(
                    "collector answered {status} to {}: {text}",
                    self.config.path
                ),
            }),
        }
    }
}

/// Where the forwarder's batches go: the HTTPS collector or a JetStream stream (the
/// uplink's url says which). Everything else about forwarding is the same for both.
#[derive(Debug)]
enum Sink {
    Https(Uplink),
    Nats(NatsSink),
}

impl Sink {
    fn new(config: &UplinkSettings, node: &str) -> Result<Self, TlsError> {
        Ok(match &config.nats {
            Some(nats) => Sink::Nats(NatsSink::new(node, config, nats)?),
            None => Sink::Https(Uplink::new(config.clone(), node.to_owned())?),
        })
    }

    fn tls_alerts(&self) -> Arc<crate::uplink::tls::TlsAlerts> {
        match self {
            Sink::Https(u) => u.tls_alerts(),
            Sink::Nats(n) => n.tls_alerts(),
        }
    }

    /// Sends a batch of `node`'s records and returns the acknowledgement.
    async fn send(
        &mut self,
        node: &str,
        batch_id: &str,
        batch: &[StoredRecord],
    ) -> Result<Ack, SendError> {
        match self {
            Sink::Https(uplink) => {
                let level = uplink.config.compression_level;
                let body =
                    encode_batch_at(node, batch, level).map_err(|e| SendError::Retriable {
                        kind: FailureKind::BadAck,
                        reason: format!("batch not encoded: {e}"),
                    })?;
                uplink.send(batch_id, body).await
            }
            Sink::Nats(sink) => sink.send(batch_id, batch).await.map_err(|e| {
                let kind = match e.kind {
                    NatsFailureKind::Connect => FailureKind::Connect,
                    NatsFailureKind::Tls => FailureKind::Tls,
                    NatsFailureKind::Auth => FailureKind::Auth,
                    NatsFailureKind::Timeout => FailureKind::Timeout,
                    NatsFailureKind::NoStream => FailureKind::NoStream,
                    NatsFailureKind::Refused => FailureKind::JetStream,
                    // About the record, not the bus: split down to it and dead-letter it,
                    // as the collector's 413.
                    NatsFailureKind::TooLarge => {
                        return SendError::Refused {
                            status: 413,
                            reason: e.reason,
                        }
                    }
                };
                SendError::Retriable {
                    kind,
                    reason: e.reason,
                }
            }),
        }
    }
}

/// Single records dead-lettered in a row, without any batch acknowledged in between, after
/// which a content refusal is treated as a failing collector instead (retried, alerted,
/// records kept in the spool): a collector that refuses everything is broken or of another
/// version, and its refusals say nothing about the records.
pub const MAX_DEAD_LETTERS_IN_A_ROW: u32 = 8;

/// The uplink's state for alerting: failing since when, and why.
#[derive(Debug)]
struct Failing {
    since: Instant,
    kind: FailureKind,
    attempts: u64,
}

/// A split in progress: batches stay at most `limit` records until the collector has
/// acknowledged past `through`, the end of the refused batch.
#[derive(Debug, Clone, Copy)]
struct Split {
    through: RecordId,
    limit: usize,
}

/// The forwarder: the one place that moves records from the spool to the collector, used by
/// the daemon, `replay --forward` and the load generator alike.
pub struct Forwarder {
    uplink: Sink,
    uplink_config: UplinkSettings,
    node: String,
    dead_letters: DeadLetters,
    backoff: Backoff,
    split: Option<Split>,
    dead_in_a_row: u32,
    /// The spool moved to a new epoch after a `409` and no batch was accepted since: another
    /// `409` is then a failing collector, not a reused epoch.
    new_epoch_since_ack: bool,
    failing: Option<Failing>,
    /// Old clear-text dead letters are looked for once, at the first round.
    legacy_checked: bool,
    /// The last record of a batch the collector acknowledged that is not yet removed from
    /// the spool: its removal (flushed lazily) runs while the next batch is in flight. Kept
    /// here, not in a local, so a round cancelled in between (stop, reconnect) still
    /// removes it at the next round instead of sending the batch again.
    unacked: Option<RecordId>,
    pub stats: UplinkStats,
    /// Told after every attempt (the daemon's metrics and health), so an outage shows while
    /// it lasts, not only when the backlog has drained.
    progress: Option<ProgressHook>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("uplink", &self.uplink)
            .field("stats", &self.stats)
            .field("failing", &self.failing)
            .finish()
    }
}

impl Forwarder {
    /// A forwarder of node `node`'s records, with the agent's backoff (1 s to 60 s); `keyring`
    /// seals its dead letters.
    pub fn new(node: &str, settings: &UplinkSettings, keyring: &Keyring) -> Result<Self, TlsError> {
        let uplink = Sink::new(settings, node)?;
        let dead_letters = DeadLetters::for_uplink(settings, node, keyring);
        let mut stats = UplinkStats::default();
        if let Ok((held, _)) = dead_letters.count() {
            stats.dead_letters_held = held;
        }
        Ok(Forwarder {
            uplink,
            uplink_config: settings.clone(),
            node: node.to_owned(),
            dead_letters,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            split: None,
            dead_in_a_row: 0,
            new_epoch_since_ack: false,
            failing: None,
            legacy_checked: false,
            unacked: None,
            stats,
            progress: None,
        })
    }

    /// Other backoff bounds (tests and the load generator).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Calls `f(totals, attempt)` after every attempt to send a batch.
    pub fn on_progress(&mut self, f: impl FnMut(&UplinkStats, &Attempt<'_>) + Send + 'static) {
        self.progress = Some(Box::new(f));
    }

    pub fn tls_alerts(&self) -> Arc<crate::uplink::tls::TlsAlerts> {
        self.uplink.tls_alerts()
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// A fresh connection with the certificates as they are now (SIGHUP); totals, state
    /// and hook carry over.
    pub fn reconnect(&mut self) -> Result<(), TlsError> {
        self.uplink = Sink::new(&self.uplink_config, &self.node)?;
        Ok(())
    }

    /// The settings it forwards with.
    pub fn settings(&self) -> &UplinkSettings {
        &self.uplink_config
    }

    /// A fresh connection with a changed `[uplink]` section (SIGHUP); totals, state and hook
    /// carry over. On error the running connection and its settings are kept.
    pub fn reconfigure(&mut self, config: UplinkSettings) -> Result<(), TlsError> {
        self.uplink = Sink::new(&config, &self.node)?;
        self.uplink_config = config;
        Ok(())
    }

    fn report(&mut self, attempt: Attempt<'_>) {
        if let Some(f) = self.progress.as_mut() {
            f(&self.stats, &attempt);
        }
    }

    /// A failed attempt: counted, logged at ERROR once per change of state (not once per
    /// retry), reported.
    fn failed(&mut self, kind: FailureKind, reason: &str) {
        self.stats.retries += 1;
        self.stats.consecutive_failures += 1;
        match &mut self.failing {
            Some(f) if f.kind == kind => {
                f.attempts += 1;
                tracing::debug!(
                    kind = kind.label(),
                    reason,
                    attempts = f.attempts,
                    "Uplink still failing."
                );
            }
            _ => {
                tracing::error!(
                    kind = kind.label(),
                    reason,
                    "Uplink failing: records stay in the spool and are retried with backoff."
                );
                let since = self.failing.as_ref().map_or_else(Instant::now, |f| f.since);
                self.failing = Some(Failing {
                    since,
                    kind,
                    attempts: 1,
                });
            }
        }
        self.report(Attempt::Failed { kind, reason });
    }

    fn recovered(&mut self) {
        self.stats.consecutive_failures = 0;
        if let Some(f) = self.failing.take() {
            tracing::warn!(
                failed_attempts = f.attempts,
                seconds = f.since.elapsed().as_secs(),
                "Uplink working again."
            );
        }
    }

    /// Sends everything in the spool, oldest first, until it is empty. Failures are retried
    /// with backoff until `deadline` (if any); content refusals split the batch, and only a
    /// single refused record becomes a dead letter.
    ///
    /// The spool is locked only to read a batch and to acknowledge it, never across the
    /// network exchange, so producers keep appending while a batch is in flight.
    ///
    /// Pipelined by one step, within the same memory: once batch N is acknowledged, batch
    /// N+1 is read (after N's last record) and sent, and N's records are removed from the
    /// spool while N+1 is in flight. N's removal is always complete before N+1's answer is
    /// acted on, so a refusal, a split or a failure sees the spool as before. The removal
    /// is made durable lazily ([`Spool::ack_lazily`]: with the group commit, at most one
    /// flush per `spool.flush_interval`, and at the end of every round), not by an fsync
    /// per batch; a crash in between sends those batches again (duplicates the collector
    /// drops, never a loss).
    pub async fn forward_until_drained(
        &mut self,
        spool: &Mutex<Spool>,
        deadline: Option<Instant>,
    ) -> Result<UplinkStats, ForwardError> {
        loop {
            let (batch, node) = {
                let mut spool = lock(spool);
                spool.announce_drops()?;
                self.requeue_marked(&mut spool)?;
                let limit = self
                    .split
                    .map_or(self.uplink_config.batch_records, |s| s.limit);
                let batch = spool.read(self.unacked, limit)?;
                (
                    trim_to_bytes(batch, self.uplink_config.batch_max_bytes),
                    spool.node_id().to_owned(),
                )
            };
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                {
                    let mut spool = lock(spool);
                    if let Some(through) = self.unacked {
                        spool.ack_lazily(through)?;
                        self.unacked = None;
                    }
                    spool.flush()?;
                    spool.compact_if_drained()?;
                }
                // An operator may have removed dead letters by hand: seen within a round.
                self.stats.dead_letters_held = self.dead_letters.count()?.0;
                self.report(Attempt::Drained);
                return Ok(self.stats);
            };
            let batch_id = format!("{node}:{}:{}-{}", first.id.epoch, first.id.seq, last.id.seq);
            let last_id = last.id;
            let send = self.uplink.send(&node, &batch_id, &batch);
            let answer = match self.unacked {
                None => send.await,
                Some(through) => {
                    let unacked = &mut self.unacked;
                    let remove = async {
                        // The request goes out first (its connection task runs), then the
                        // removal (and a flush, once an interval) blocks this task while the
                        // collector works.
                        tokio::task::yield_now().await;
                        let removed = lock(spool).ack_lazily(through);
                        if removed.is_ok() {
                            *unacked = None;
                        }
                        removed
                    };
                    let (answer, removed) = tokio::join!(send, remove);
                    removed?;
                    answer
                }
            };
            let answer = match answer {
                Ok(ack) => check_ack(ack, batch.len(), &last_id.display(&node)),
                Err(e) => Err(e),
            };
            match answer {
                Ok(ack) => {
                    self.backoff.reset();
                    self.recovered();
                    self.dead_in_a_row = 0;
                    self.new_epoch_since_ack = false;
                    // Inside a refused range the batches grow back step by step.
                    self.split = self.split.and_then(|s| {
                        (last_id < s.through).then(|| Split {
                            through: s.through,
                            limit: (s.limit * 2).min(self.uplink_config.batch_records),
                        })
                    });
                    self.stats.batches += 1;
                    self.stats.records += ack.accepted;
                    self.stats.duplicates += ack.duplicates;
                    // Removed from the spool while the next batch is in flight (above), or
                    // at the end of the round.
                    self.unacked = Some(last_id);
                    self.report(Attempt::Acked);
                }
                Err(SendError::Refused { status, reason }) if batch.len() > 1 => {
                    let through = self.split.map_or(last_id, |s| s.through.max(last_id));
                    self.split = Some(Split {
                        through,
                        limit: batch.len() / 2,
                    });
                    self.stats.splits += 1;
                    self.recovered();
                    tracing::info!(batch = %batch_id, status, reason = %reason, records = batch.len(), "Collector refused a batch; splitting it.");
                    self.report(Attempt::Split { status });
                }
                Err(SendError::Refused { status, reason })
                    if self.dead_in_a_row < MAX_DEAD_LETTERS_IN_A_ROW =>
                {
                    self.recovered();
                    self.dead_in_a_row += 1;
                    // The refused record is isolated: what follows it goes in full batches.
                    self.split = None;
                    let record = &batch[0];
                    self.dead_letter(spool, record, status, &reason)?;
                    self.report(Attempt::DeadLettered { status });
                }
                // `teledge collect` holds other records under these ids: the spool was
                // restored from a backup or snapshot (or cloned). Retrying the same ids would
                // never succeed; new ids do (see `Spool::start_new_epoch`).
                Err(SendError::Retriable {
                    kind: FailureKind::Status(409),
                    reason,
                }) if !self.new_epoch_since_ack => {
                    self.new_epoch_since_ack = true;
                    self.split = None;
                    lock(spool).start_new_epoch(&reason)?;
                    self.stats.epochs_started += 1;
                }
                Err(e) => {
                    let (kind, reason) = match e {
                        SendError::Retriable { kind, reason } => (kind, reason),
                        SendError::Refused { status, reason } => (
                            FailureKind::Status(status),
                            format!(
                                "collector refused {MAX_DEAD_LETTERS_IN_A_ROW} records in a row \
                                 (status {status}: {reason}); treated as a collector problem"
                            ),
                        ),
                    };
                    self.failed(kind, &reason);
                    let wait = self.backoff.next_wait();
                    if deadline.is_some_and(|d| Instant::now() + wait > d) {
                        lock(spool).flush()?;
                        return Err(ForwardError::Deadline(reason));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Moves one refused record to the dead-letter area, announces it (and anything the
    /// area's bound removed) by gap records, then removes it from the spool.
    fn dead_letter(
        &mut self,
        spool: &Mutex<Spool>,
        record: &StoredRecord,
        status: u16,
        reason: &str,
    ) -> Result<(), ForwardError> {
        let stored = self
            .dead_letters
            .store(record.id, &record.payload, status, reason)?;
        let id = record.id.display(&self.node);
        if stored.refused {
            tracing::error!(record = %id, status, reason, "Collector refused a record larger than the whole dead-letter area; dropped and announced upstream.");
        } else {
            tracing::error!(record = %id, status, reason, "Collector refused a record; kept as a dead letter (teledge dead-letters list).");
        }
        let mut gaps = Vec::new();
        // A refused gap record is kept, but not announced by another one: no chains.
        if !is_gap(&record.payload) {
            if stored.refused {
                gaps.push(gap_record(
                    &self.node,
                    GapReason::DeadLetterAreaFull,
                    1,
                    Some(&id),
                    Some(&id),
                    Some(status),
                ));
            } else {
                gaps.push(gap_record(
                    &self.node,
                    GapReason::DeadLetter,
                    1,
                    Some(&id),
                    Some(&id),
                    Some(status),
                ));
            }
        }
        self.stats.dead_lettered += u64::from(!stored.refused);
        let dropped = stored.dropped.len() as u64 + u64::from(stored.refused);
        if dropped > 0 {
            self.stats.dead_letter_dropped += dropped;
            tracing::error!(
                dropped,
                "Dead-letter area full: oldest dead letters removed (announced upstream)."
            );
            if !stored.dropped.is_empty() {
                gaps.push(gap_record(
                    &self.node,
                    GapReason::DeadLetterAreaFull,
                    stored.dropped.len() as u64,
                    stored.dropped.first().map(String::as_str),
                    stored.dropped.last().map(String::as_str),
                    None,
                ));
            }
        }
        let mut spool = lock(spool);
        for gap in gaps {
            spool.append(&gap)?;
        }
        spool.flush()?;
        spool.ack(record.id)?;
        drop(spool);
        self.stats.dead_letters_held = self.dead_letters.count()?.0;
        Ok(())
    }

    /// Puts the dead letters an operator marked for resending back into the spool (see
    /// [`DeadLetters::requeue_marked`]); a cheap directory read when there are none.
    pub fn requeue_marked(&mut self, spool: &mut Spool) -> Result<u64, ForwardError> {
        let mut requeued = self.dead_letters.requeue_marked(spool)?;
        if !self.legacy_checked {
            requeued += self.dead_letters.requeue_legacy(spool)?;
            self.legacy_checked = true;
        }
        if requeued > 0 {
            self.stats.requeued += requeued;
            self.stats.dead_letters_held = self.dead_letters.count()?.0;
        }
        Ok(requeued)
    }
}

/// Keeps the first records of a batch whose lines total at most `max_bytes` (always one).
fn trim_to_bytes(mut batch: Vec<StoredRecord>, max_bytes: usize) -> Vec<StoredRecord> {
    let mut total = 0usize;
    let mut keep = 0;
    for r in &batch {
        // The line: the payload, its id and the JSON around them.
        total = total.saturating_add(r.payload.len() + 64);
        if keep > 0 && total > max_bytes {
            break;
        }
        keep += 1;
    }
    batch.truncate(keep);
    batch
}

/// An acknowledgement must account for every record of the batch, through its last id;
/// anything else is not trusted to remove records from the spool.
fn check_ack(ack: Ack, records: usize, last_id: &str) -> Result<Ack, SendError> {
    if ack.accepted + ack.duplicates != records as u64 || ack.through != last_id {
        return Err(SendError::Retriable {
            kind: FailureKind::BadAck,
            reason: format!(
                "acknowledgement does not match the batch: {} accepted + {} duplicates of {records}, through {} (sent through {last_id})",
                ack.accepted, ack.duplicates, ack.through
            ),
        });
    }
    Ok(ack)
}

fn is_gap(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a str>,
    }
    serde_json::from_slice::<Kind<'_>>(payload).is_ok_and(|k| k.kind == Some("gap"))
}

/// A gap record announcing dead letters (`teledge.gap/1`, see [`crate::record::gap`]).
fn gap_record(
    node: &str,
    reason: GapReason,
    dropped: u64,
    first: Option<&str>,
    last: Option<&str>,
    status: Option<u16>,
) -> Vec<u8> {
    let mut gap = GapRecord::new(node, reason, Some(dropped));
    gap.first_dropped = first.map(str::to_owned);
    gap.last_dropped = last.map(str::to_owned);
    gap.status = status;
    gap.to_json()
}

/// Locks the spool; a poisoned lock (a panicking producer) still holds a consistent spool,
/// because every spool operation leaves sled consistent.
fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|p| p.into_inner())
}

/// Encodes a batch in the wire format (see the module doc of `uplink`): lines are written
/// into one reused buffer handed to gzip (fastest level) 64 KiB at a time, so neither a
/// buffer per line nor a deflate call per JSON token.
///
/// A record the spool opened is JSON this agent wrote (sealed, so nobody else could have),
/// and is copied into its line as it is: `{"id":"<id>","record":<payload>}`, the bytes
/// serde_json writes for a [`crate::uplink::BatchLine`] (node ids need no escaping). Parsing
/// each payload to prove it (`RawValue::from_string`) was a quarter of the agent's CPU per
/// batch. A payload that is not one line of UTF-8 between braces goes through
/// [`raw_record`] instead (as a JSON string if it is not JSON); anything else the collector
/// cannot read is refused by it and isolated by the split (module doc).
pub fn encode_batch(node: &str, records: &[StoredRecord]) -> std::io::Result<Vec<u8>> {
    encode_batch_at(node, records, crate::uplink::DEFAULT_COMPRESSION_LEVEL)
}

/// [`encode_batch`] at gzip level `level` (0 to 9; `uplink.compression_level`).
pub fn encode_batch_at(
    node: &str,
    records: &[StoredRecord],
    level: u32,
) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    const CHUNK: usize = 64 * 1024;
    let raw: usize = records.iter().map(|r| r.payload.len() + 48).sum();
    // Call records compress about 4:1 at this level: room for that without regrowing.
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw / 3 + 64),
        flate2::Compression::new(level.min(9)),
    );
    let plain_id = crate::uplink::valid_node_id(node);
    let mut chunk = Vec::with_capacity(CHUNK + 1024);
    for r in records {
        let p = &r.payload;
        let one_object = p.first() == Some(&b'{')
            && p.last() == Some(&b'}')
            && !p.contains(&b'\n')
            && std::str::from_utf8(p).is_ok();
        if plain_id && one_object {
            write!(
                chunk,
                "{{\"id\":\"{node}:{}:{}\",\"record\":",
                r.id.epoch, r.id.seq
            )?;
            chunk.extend_from_slice(p);
            chunk.push(b'}');
        } else {
            serde_json::to_writer(
                &mut chunk,
                &crate::uplink::BatchLine {
                    id: r.id.display(node),
                    record: raw_record(p),
                },
            )?;
        }
        chunk.push(b'\n');
        if chunk.len() >= CHUNK {
            gz.write_all(&chunk)?;
            chunk.clear();
        }
    }
    gz.write_all(&chunk)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copied line is byte for byte what serde_json writes for a `BatchLine`; a payload
    /// that is not one JSON object on one line still goes through `raw_record`.
    #[test]
    fn batch_lines_are_the_serde_lines() {
        let records = [
            StoredRecord {
                id: RecordId { epoch: 7, seq: 1 },
                payload: br#"{"type":"call","n":"\u00e9\n","x":[1,2]}"#.to_vec(),
            },
            StoredRecord {
                id: RecordId { epoch: 7, seq: 2 },
                payload: b"not json\n{".to_vec(),
            },
            StoredRecord {
                id: RecordId { epoch: 7, seq: 3 },
                payload: vec![b'{', 0xff, b'}'],
            },
        ];
        let body = encode_batch("edge-01", &records).unwrap();
        let text = String::from_utf8(crate::uplink::decode_body(&body, 1 << 20).unwrap()).unwrap();
        let expected: String = records
            .iter()
            .map(|r| {
                let line = serde_json::to_string(&crate::uplink::BatchLine {
                    id: r.id.display("edge-01"),
                    record: raw_record(&r.payload),
                })
                .unwrap();
                format!("{line}\n")
            })
            .collect();
        assert_eq!(text, expected);
        let lines: Vec<crate::uplink::BatchLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0].record.get(),
            r#"{"type":"call","n":"\u00e9\n","x":[1,2]}"#
        );
        assert_eq!(lines[1].record.get(), r#""not json\n{""#);
        // Every level (`uplink.compression_level`) inflates to the same lines; level 0 is
        // gzip's stored blocks (larger than the plain text), 9 no larger than 1.
        let sizes: Vec<usize> = [0, 1, 9]
            .into_iter()
            .map(|level| {
                let body = encode_batch_at("edge-01", &records, level).unwrap();
                let inflated = crate::uplink::decode_body(&body, 1 << 20).unwrap();
                assert_eq!(
                    String::from_utf8(inflated).unwrap(),
                    expected,
                    "level {level}"
                );
                body.len()
            })
            .collect();
        assert!(
            sizes[0] > expected.len() && sizes[2] <= sizes[1],
            "{sizes:?}"
        );
    }

    #[test]
    fn only_content_refusals_are_not_retried() {
        assert_eq!(classify(200), StatusClass::Accepted);
        for s in [400, 413, 422] {
            assert_eq!(classify(s), StatusClass::Content, "{s}");
        }
        for s in [
            401, 403, 404, 405, 408, 409, 421, 429, 500, 502, 503, 301, 204,
        ] {
            assert_eq!(classify(s), StatusClass::Retry, "{s}");
        }
    }

    #[test]
    fn batches_are_bounded_by_bytes_but_never_empty() {
        let rec = |seq, len| StoredRecord {
            id: RecordId { epoch: 0, seq },
            payload: vec![b'x'; len],
        };
        let batch: Vec<_> = (0..10).map(|i| rec(i, 936)).collect();
        assert_eq!(trim_to_bytes(batch.clone(), 3000).len(), 3);
        assert_eq!(trim_to_bytes(batch, 1 << 20).len(), 10);
        assert_eq!(trim_to_bytes(vec![rec(0, 1 << 20)], 1000).len(), 1);
    }

    #[test]
    fn an_acknowledgement_must_cover_the_batch() {
        let ack = |accepted, through: &str| Ack {
            batch: "b".into(),
            accepted,
            duplicates: 1,
            through: through.into(),
        };
        assert!(check_ack(ack(2, "n:0:2"), 3, "n:0:2").is_ok());
        assert!(check_ack(ack(1, "n:0:2"), 3, "n:0:2").is_err());
        assert!(check_ack(ack(2, "n:0:1"), 3, "n:0:2").is_err());
    }
}
