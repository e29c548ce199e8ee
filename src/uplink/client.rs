//! The HTTPS sink: batches from the spool POSTed to the collector, acknowledged, then removed.

use std::path::PathBuf;
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

use crate::config::UplinkConfig;
use crate::spool::{Spool, SpoolError, StoredRecord};
use crate::uplink::tls::{ClientTls, TlsError};
use crate::uplink::{encode_lines, Ack};

/// Why a batch was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again: connection refused or lost, timeout, TLS failure, 408/429/5xx.
    #[error("retriable: {0}")]
    Retriable(String),
    /// The collector refused the batch for good (4xx).
    #[error("rejected with status {0}: {1}")]
    Permanent(u16, String),
}

/// Why forwarding stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the collector was not reachable before the deadline: {0}")]
    Deadline(String),
    #[error("dead-letter area: {0}")]
    DeadLetter(std::io::Error),
}

/// Counters of the uplink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UplinkStats {
    pub batches: u64,
    pub records: u64,
    pub duplicates: u64,
    pub retries: u64,
    pub dead_lettered_batches: u64,
    pub dead_letter_dropped_files: u64,
}

/// Called with the uplink's totals and whether the attempt was acknowledged.
type ProgressHook = Box<dyn FnMut(&UplinkStats, bool) + Send>;

/// Exponential backoff with full jitter between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next wait: uniform in [min, min(max, min·2^attempt)].
    pub fn next_wait(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let mut random = [0u8; 8];
        // Without randomness the wait is the cap: still bounded, merely not jittered.
        let fraction = getrandom::getrandom(&mut random)
            .map(|()| u64::from_le_bytes(random) as f64 / u64::MAX as f64)
            .unwrap_or(1.0);
        self.min + (cap.saturating_sub(self.min)).mul_f64(fraction)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A connection to the collector, re-established when lost.
pub struct Uplink {
    config: UplinkConfig,
    node: String,
    tls: ClientTls,
    sender: Option<SendRequest<Full<Bytes>>>,
    pub stats: UplinkStats,
    /// Told the totals after every attempt (the daemon's metrics), so an outage shows its
    /// retries while it lasts, not only when the backlog has drained.
    progress: Option<ProgressHook>,
}

impl std::fmt::Debug for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink")
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Uplink {
    pub fn new(config: UplinkConfig, node: String) -> Result<Self, TlsError> {
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
            stats: UplinkStats::default(),
            progress: None,
        })
    }

    /// Calls `f(totals, acknowledged)` after every attempt to send a batch.
    pub fn on_progress(&mut self, f: impl FnMut(&UplinkStats, bool) + Send + 'static) {
        self.progress = Some(Box::new(f));
    }

    fn report(&mut self, acknowledged: bool) {
        if let Some(f) = self.progress.as_mut() {
            f(&self.stats, acknowledged);
        }
    }

    pub fn tls_alerts(&self) -> Arc<crate::uplink::tls::TlsAlerts> {
        self.tls.alerts.clone()
    }

    async fn connect(&mut self) -> Result<(), SendError> {
        let retriable = |e: &dyn std::fmt::Display| SendError::Retriable(e.to_string());
        let addr = (self.config.host.as_str(), self.config.port);
        let tcp = tokio::time::timeout(self.config.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::Retriable("connect timed out".into()))?
            .map_err(|e| retriable(&e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.config.host.clone()).map_err(|e| retriable(&e))?;
        let connector = TlsConnector::from(self.tls.config());
        let tls = tokio::time::timeout(self.config.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| SendError::Retriable("TLS handshake timed out".into()))?
            .map_err(|e| SendError::Retriable(format!("TLS: {e}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| retriable(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "Uplink connection closed.");
            }
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one encoded batch and waits for its acknowledgement.
    pub async fn send(&mut self, batch_id: &str, body: Vec<u8>) -> Result<Ack, SendError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = None;
            self.connect().await?;
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err(SendError::Retriable("no connection".into()));
        };
        let request = hyper::Request::post(&self.config.path)
            .header("host", &self.config.host)
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .header("x-teledge-node", &self.node)
            .header("x-teledge-batch", batch_id)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::Permanent(0, e.to_string()))?;
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
                return Err(SendError::Retriable(e.to_string()));
            }
            Err(_) => {
                self.sender = None;
                return Err(SendError::Retriable("no answer before the timeout".into()));
            }
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        match status {
            200 => serde_json::from_slice::<Ack>(&body)
                .map_err(|e| SendError::Retriable(format!("unreadable acknowledgement: {e}"))),
            408 | 429 => Err(SendError::Retriable(format!("status {status}"))),
            // A sequence regression (see `collect`): the records must not be deleted, and
            // an operator must hear of it; kept and retried.
            409 => {
                tracing::error!(status, reason = %text, "Collector refused a batch as a sequence regression; kept in the spool.");
                Err(SendError::Retriable(format!("status {status}: {text}")))
            }
            400..=499 => Err(SendError::Permanent(status, text)),
            _ => Err(SendError::Retriable(format!("status {status}: {text}"))),
        }
    }
}

/// Batches that the collector refused for good, kept (bounded) for an operator.
#[derive(Debug)]
pub struct DeadLetters {
    dir: PathBuf,
    max_bytes: u64,
}

impl DeadLetters {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        DeadLetters { dir, max_bytes }
    }

    /// The dead-letter area an uplink configuration names.
    pub fn for_uplink(config: &UplinkConfig) -> Self {
        DeadLetters::new(config.dead_letter_dir.clone(), config.dead_letter_max_bytes)
    }

    /// Stores a batch; returns how many older files were removed to stay in bounds.
    pub fn store(&self, batch_id: &str, body: &[u8]) -> std::io::Result<u64> {
        std::fs::create_dir_all(&self.dir)?;
        let name = batch_id.replace([':', '/'], "_");
        let path = self.dir.join(format!("{name}.jsonl.gz"));
        std::fs::write(&path, body)?;
        std::fs::File::open(&path)?.sync_all()?;
        let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, e.path(), meta.len()))
            })
            .collect();
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        let mut removed = 0;
        for (_, file, len) in files {
            if total <= self.max_bytes || file == path {
                break;
            }
            std::fs::remove_file(&file)?;
            total -= len;
            removed += 1;
        }
        Ok(removed)
    }
}

/// Sends everything in the spool, oldest first, until it is empty. Retriable failures are
/// retried with backoff until `deadline` (if any); permanent ones go to the dead letters.
///
/// The spool is locked only to read a batch and to acknowledge it, never across the network
/// exchange, so producers keep appending while a batch is in flight.
pub async fn forward_until_drained(
    spool: &Mutex<Spool>,
    uplink: &mut Uplink,
    dead_letters: &DeadLetters,
    batch_records: usize,
    backoff: &mut Backoff,
    deadline: Option<Instant>,
) -> Result<UplinkStats, ForwardError> {
    loop {
        let (batch, node) = {
            let mut spool = lock(spool);
            spool.announce_drops()?;
            (spool.read(None, batch_records)?, spool.node_id().to_owned())
        };
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            let mut spool = lock(spool);
            spool.flush()?;
            spool.compact_if_drained()?;
            return Ok(uplink.stats);
        };
        let batch_id = format!("{node}:{}:{}-{}", first.id.epoch, first.id.seq, last.id.seq);
        let last_id = last.id;
        let body = encode_batch(&node, &batch).map_err(|e| ForwardError::Spool(e.into()))?;
        match uplink.send(&batch_id, body.clone()).await {
            Ok(ack) => {
                backoff.reset();
                uplink.stats.batches += 1;
                uplink.stats.records += ack.accepted;
                uplink.stats.duplicates += ack.duplicates;
                lock(spool).ack(last_id)?;
                uplink.report(true);
            }
            Err(SendError::Permanent(status, reason)) => {
                tracing::error!(batch = %batch_id, status, reason = %reason, "Collector rejected a batch; moved to dead letters.");
                let removed = dead_letters
                    .store(&batch_id, &body)
                    .map_err(ForwardError::DeadLetter)?;
                uplink.stats.dead_lettered_batches += 1;
                uplink.stats.dead_letter_dropped_files += removed;
                lock(spool).ack(last_id)?;
                uplink.report(false);
            }
            Err(SendError::Retriable(reason)) => {
                uplink.stats.retries += 1;
                uplink.report(false);
                let wait = backoff.next_wait();
                if deadline.is_some_and(|d| Instant::now() + wait > d) {
                    lock(spool).flush()?;
                    return Err(ForwardError::Deadline(reason));
                }
                tracing::warn!(batch = %batch_id, reason = %reason, wait_ms = wait.as_millis() as u64, "Uplink failed; retrying.");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Locks the spool; a poisoned lock (a panicking producer) still holds a consistent spool,
/// because every spool operation leaves sled consistent.
fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|p| p.into_inner())
}

/// Encodes a batch in the wire format (see the module doc of `uplink`).
pub fn encode_batch(node: &str, records: &[StoredRecord]) -> std::io::Result<Vec<u8>> {
    let mut lines = Vec::with_capacity(records.len());
    for r in records {
        let id = r.id.display(node);
        // Records are JSON already; anything else is carried as a string so nothing is lost.
        let record = match std::str::from_utf8(&r.payload)
            .ok()
            .and_then(|s| serde_json::value::RawValue::from_string(s.to_owned()).ok())
        {
            Some(raw) => raw,
            None => serde_json::value::to_raw_value(&String::from_utf8_lossy(&r.payload))?,
        };
        lines.push(serde_json::to_vec(&crate::uplink::BatchLine {
            id,
            record,
        })?);
    }
    encode_lines(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_full_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 0..20 {
            let w = b.next_wait();
            let cap = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
            assert!(w >= Duration::from_secs(1) && w <= cap, "{attempt}: {w:?}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }
}
