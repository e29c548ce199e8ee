//! The NATS JetStream sink: records published to a JetStream stream instead of POSTed to the
//! HTTPS collector, by the agent (an `[uplink]` url `nats://…` or `tls://…`, see
//! [`crate::config::forward`]) and by `teledge collect` (what it accepts, see
//! [`crate::collect`]). One way out of the spool: the [`super::client::Forwarder`] reads,
//! splits, dead-letters, backs off and acknowledges the same way for both sinks; only the
//! exchange differs.
//!
//! # What is published
//!
//! Each record is one message, exactly the line the HTTPS uplink would put in a batch:
//! `{"id": "<node>:<epoch>:<seq>", "record": {...}}` — the record as spooled, so sealed
//! fields and pseudonyms are what leaves, never anything in clear. Its subject is
//! `<prefix>.<node>.<kind>` (`kind` the record's `"type"`: `call`, `gap`, `interval`, …),
//! its `Nats-Msg-Id` header the record id, which is stable across resends (the same record
//! keeps its id until acknowledged) and unique (a new store takes a random epoch), so the
//! stream's duplicate window drops a resend. With a configured stream, `Nats-Expected-Stream`
//! makes the server refuse a publish that would land anywhere else.
//!
//! # Acknowledgement
//!
//! A batch is published record by record, at most `max_in_flight` publishes awaiting their
//! PubAck at once, the acknowledgements awaited concurrently (an ack's timer starts when it is
//! first awaited: awaiting them one after the other after a failover would take a timeout
//! each). Only when *every* record of the batch has its PubAck (`duplicate: true` counts as
//! delivered: the stream already holds it) is the batch acknowledged in the spool; any
//! failure leaves the whole batch there, and the retry publishes it again under the same
//! ids, so the records already stored come back as duplicates and are not stored twice —
//! provided the retry comes within the stream's `duplicate_window` (default 2 min: set it
//! to the longest outage to cover, see the README).
//!
//! A PubAck from nats-server 2.9 means the message was written (`write(2)`) by the stream's
//! leader — for a replicated stream, by a quorum — not that it was synced: JetStream fsyncs
//! every 2 minutes. A process crash of the server loses nothing acknowledged; a power loss
//! of the servers can.
//!
//! # Connection
//!
//! TLS is always required (`require_tls`), with the uplink's own client configuration: the
//! site CA as the only root, the node's certificate for mutual TLS (re-read when its files
//! change), TLS 1.3 unless 1.2 is allowed. Credentials — a user with a password file, an
//! nkey seed file, or a `.creds` file — are read when connecting and never kept in a
//! settings value. A lost connection is re-established by the client with backoff and full
//! jitter (up to 8 s between attempts); publishes meanwhile time out and the batch is
//! retried by the forwarder with its own backoff.

use std::future::IntoFuture;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};
use async_nats::{ConnectErrorKind, ServerAddr};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::body::Bytes;

use crate::secret::Secret;
use crate::spool::StoredRecord;
use crate::uplink::dead_letter::raw_record;
use crate::uplink::tls::{ClientTls, TlsAlerts, TlsError};
use crate::uplink::{Ack, BatchLine, NatsAuth, NatsSettings, UplinkSettings};

/// What kind of failure a publish met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatsFailureKind {
    /// No server reachable, or the connection was lost.
    Connect,
    /// The TLS handshake failed (certificates, names, versions).
    Tls,
    /// The server refused the credentials or the certificate's identity.
    Auth,
    /// No PubAck before the timeout (a server or cluster in trouble, a lost connection).
    Timeout,
    /// No stream takes the subject (or none has a leader now).
    NoStream,
    /// The message is larger than the server's `max_payload`: about the record, not the bus.
    TooLarge,
    /// JetStream refused the publish (a wrong expected stream, a full stream with
    /// `discard: new`, …).
    Refused,
}

/// Why a batch (or a connection) failed; the reason is for logs and `/health`.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct NatsError {
    pub kind: NatsFailureKind,
    pub reason: String,
}

impl NatsError {
    fn new(kind: NatsFailureKind, reason: impl Into<String>) -> Self {
        NatsError {
            kind,
            reason: reason.into(),
        }
    }
}

/// A subject token from a record's `"type"` (or node id): `[A-Za-z0-9_-]`, anything else
/// `_`, never empty. NATS reserves `.`, `*`, `>` and white space in subjects.
pub fn subject_token(s: &str) -> String {
    let token: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "record".to_owned()
    } else {
        token
    }
}

/// Whether `prefix` is a valid subject prefix: dot-separated tokens of `[A-Za-z0-9_-]`.
pub fn valid_subject_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 128
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// The record's `"type"`, as a subject token.
pub fn kind_of(record: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let kind = serde_json::from_slice::<Kind<'_>>(record)
        .ok()
        .and_then(|k| k.kind)
        .unwrap_or_default();
    subject_token(&kind)
}

/// The subject of a record: `<prefix>.<node>.<kind>`.
pub fn subject(prefix: &str, node: &str, kind: &str) -> String {
    format!("{prefix}.{}.{kind}", subject_token(node))
}

/// One message to publish: the record's id (its `Nats-Msg-Id`), subject and line.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: String,
    pub subject: String,
    pub payload: Bytes,
}

impl Outgoing {
    /// A batch line `{"id", "record"}` of `node`'s record (the HTTPS uplink's line).
    pub fn line(prefix: &str, node: &str, id: String, record: &[u8]) -> serde_json::Result<Self> {
        let payload = serde_json::to_vec(&BatchLine {
            id: id.clone(),
            record: raw_record(record),
        })?;
        Ok(Outgoing {
            subject: subject(prefix, node, &kind_of(record)),
            id,
            payload: Bytes::from(payload),
        })
    }
}

/// What JetStream said of a batch: all of it stored, `new` for the first time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    pub new: u64,
    pub duplicates: u64,
}

/// A connection to NATS with its JetStream context.
pub struct Publisher {
    js: Context,
    stream: Option<String>,
    max_in_flight: usize,
    /// The client's last connection event worth telling (a TLS or authorisation error while
    /// reconnecting), added to a timeout's reason.
    last_event: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.stream)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

fn read_secret(path: &Path, what: &str) -> Result<Secret<String>, NatsError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        NatsError::new(
            NatsFailureKind::Auth,
            format!("{what} {}: {e}", path.display()),
        )
    })?;
    let first = text.lines().next().unwrap_or("").trim().to_owned();
    if first.is_empty() {
        return Err(NatsError::new(
            NatsFailureKind::Auth,
            format!("{what} {} is empty", path.display()),
        ));
    }
    Ok(Secret::new(first))
}

impl Publisher {
    /// Connects to the first server that answers, with TLS required and `tls`'s
    /// configuration. `parallel` is how many batches may be published at once through this
    /// connection (the collector's); the in-flight bound is per batch.
    pub async fn connect(
        settings: &NatsSettings,
        tls: &ClientTls,
        timeout: Duration,
        name: &str,
        parallel: usize,
    ) -> Result<Self, NatsError> {
        let mut servers = Vec::new();
        for url in &settings.servers {
            let addr = ServerAddr::from_str(url).map_err(|e| {
                NatsError::new(
                    NatsFailureKind::Connect,
                    format!("server {url:?}: {}", crate::report::chain(&e)),
                )
            })?;
            servers.push(addr);
        }
        let last_event = Arc::new(Mutex::new(None));
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .require_tls(true)
            .tls_client_config((*tls.config()).clone())
            .connection_timeout(timeout)
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                let mut backoff = crate::backoff::Backoff::new(
                    Duration::from_millis(100),
                    Duration::from_secs(8),
                );
                let mut wait = Duration::ZERO;
                for _ in 0..attempts.min(16) {
                    wait = backoff.next_wait();
                }
                wait
            })
            .event_callback({
                let last_event = Arc::clone(&last_event);
                move |event| {
                    let last_event = Arc::clone(&last_event);
                    async move {
                        match &event {
                            async_nats::Event::Connected => {
                                tracing::info!("NATS connected.");
                                *last_event.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            }
                            async_nats::Event::Disconnected => {
                                tracing::warn!("NATS connection lost; reconnecting.");
                            }
                            other => {
                                tracing::warn!(event = %other, "NATS connection event.");
                                *last_event.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(other.to_string());
                            }
                        }
                    }
                }
            });
        options = match &settings.auth {
            NatsAuth::Certificate => options,
            NatsAuth::UserPassword {
                user,
                password_file,
            } => {
                let password = read_secret(password_file, "password file")?;
                options.user_and_password(user.clone(), password.expose().clone())
            }
            NatsAuth::Nkey { seed_file } => {
                let seed = read_secret(seed_file, "nkey seed file")?;
                options.nkey(seed.expose().clone())
            }
            NatsAuth::Credentials { file } => {
                options.credentials_file(file).await.map_err(|e| {
                    NatsError::new(
                        NatsFailureKind::Auth,
                        format!("credentials file {}: {e}", file.display()),
                    )
                })?
            }
        };
        let client = options.connect(servers).await.map_err(|e| {
            let kind = match e.kind() {
                ConnectErrorKind::Tls => NatsFailureKind::Tls,
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    NatsFailureKind::Auth
                }
                ConnectErrorKind::TimedOut => NatsFailureKind::Timeout,
                _ => NatsFailureKind::Connect,
            };
            NatsError::new(
                kind,
                format!(
                    "NATS {}: {}",
                    settings.servers.join(","),
                    crate::report::chain(&e)
                ),
            )
        })?;
        let max_in_flight = settings.max_in_flight.max(1);
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .max_ack_inflight(max_in_flight.saturating_mul(parallel.max(1)))
            .backpressure_on_inflight(true)
            .build(client);
        Ok(Publisher {
            js,
            stream: settings.stream.clone(),
            max_in_flight,
            last_event,
        })
    }

    /// The JetStream context (streams and consumers).
    pub fn context(&self) -> &Context {
        &self.js
    }

    fn publish_error(&self, e: &async_nats::jetstream::context::PublishError) -> NatsError {
        let kind = match e.kind() {
            PublishErrorKind::StreamNotFound => NatsFailureKind::NoStream,
            PublishErrorKind::TimedOut | PublishErrorKind::MaxAckPending => {
                NatsFailureKind::Timeout
            }
            PublishErrorKind::BrokenPipe => NatsFailureKind::Connect,
            PublishErrorKind::MaxPayloadExceeded => NatsFailureKind::TooLarge,
            _ => NatsFailureKind::Refused,
        };
        let mut reason = format!("JetStream publish: {}", crate::report::chain(e));
        if kind == NatsFailureKind::Timeout {
            if let Some(event) = self
                .last_event
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                reason.push_str(&format!(" (last connection event: {event})"));
            }
        }
        NatsError::new(kind, reason)
    }

    /// Publishes every message, at most `max_in_flight` awaiting their PubAck at once, and
    /// waits for all of them: `Ok` only when every one is stored (new or duplicate). On a
    /// failure the rest are still awaited (so none is left pending), and the first failure
    /// is returned.
    pub async fn publish(&self, messages: Vec<Outgoing>) -> Result<Published, NatsError> {
        let mut pending: FuturesUnordered<<PublishAckFuture as IntoFuture>::IntoFuture> =
            FuturesUnordered::new();
        let mut published = Published::default();
        let mut first_error: Option<NatsError> = None;
        let take = |result: Result<jetstream::publish::PublishAck, _>,
                    published: &mut Published,
                    first_error: &mut Option<NatsError>| {
            match result {
                Ok(ack) if ack.duplicate => published.duplicates += 1,
                Ok(_) => published.new += 1,
                Err(e) => {
                    if first_error.is_none() {
                        *first_error = Some(self.publish_error(&e));
                    }
                }
            }
        };
        for message in messages {
            while pending.len() >= self.max_in_flight {
                if let Some(result) = pending.next().await {
                    take(result, &mut published, &mut first_error);
                }
            }
            if first_error.is_some() {
                break;
            }
            let mut publish = PublishMessage::build()
                .payload(message.payload)
                .message_id(&message.id);
            if let Some(stream) = &self.stream {
                publish = publish.expected_stream(stream);
            }
            match self.js.send_publish(message.subject, publish).await {
                Ok(ack) => pending.push(ack.into_future()),
                Err(e) => {
                    first_error = Some(self.publish_error(&e));
                    break;
                }
            }
        }
        while let Some(result) = pending.next().await {
            take(result, &mut published, &mut first_error);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(published),
        }
    }
}

/// The agent's JetStream sink: connects on first use, publishes a batch, answers it like
/// the collector would.
pub struct NatsSink {
    node: String,
    settings: NatsSettings,
    timeout: Duration,
    tls: ClientTls,
    publisher: Option<Publisher>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("servers", &self.settings.servers)
            .field("connected", &self.publisher.is_some())
            .finish()
    }
}

impl NatsSink {
    /// A sink for `node`'s records with the uplink's TLS files and timeout.
    pub fn new(node: &str, uplink: &UplinkSettings, nats: &NatsSettings) -> Result<Self, TlsError> {
        let tls = ClientTls::new(
            &uplink.ca_file,
            &uplink.cert_file,
            &uplink.key_file,
            uplink.tls12_allowed,
        )?;
        Ok(NatsSink {
            node: node.to_owned(),
            settings: nats.clone(),
            timeout: uplink.timeout,
            tls,
            publisher: None,
        })
    }

    pub fn tls_alerts(&self) -> Arc<TlsAlerts> {
        self.tls.alerts.clone()
    }

    /// Publishes a batch of the spool; the answer is an [`Ack`] as the collector would give
    /// (`through` the last id), only once every record is acknowledged by JetStream.
    pub async fn send(
        &mut self,
        batch_id: &str,
        records: &[StoredRecord],
    ) -> Result<Ack, NatsError> {
        let prefix = &self.settings.subject_prefix;
        let mut messages = Vec::with_capacity(records.len());
        for r in records {
            let id = r.id.display(&self.node);
            let line = Outgoing::line(prefix, &self.node, id, &r.payload).map_err(|e| {
                NatsError::new(NatsFailureKind::Refused, format!("record line: {e}"))
            })?;
            messages.push(line);
        }
        let through = messages.last().map(|m| m.id.clone()).unwrap_or_default();
        if self.publisher.is_none() {
            let name = format!("teledge {}", self.node);
            let publisher =
                Publisher::connect(&self.settings, &self.tls, self.timeout, &name, 1).await?;
            self.publisher = Some(publisher);
        }
        let Some(publisher) = self.publisher.as_ref() else {
            return Err(NatsError::new(NatsFailureKind::Connect, "not connected"));
        };
        let published = publisher.publish(messages).await?;
        Ok(Ack {
            batch: batch_id.to_owned(),
            accepted: published.new,
            duplicates: published.duplicates,
            through,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nats://` and `tls://` are not special schemes to the url crate under async-nats: a
    /// host is taken as written, a non-ASCII one percent-encoded (never converted to its
    /// Punycode form, whichever `idna` back end is built in), which no DNS name matches; so
    /// the configuration check refuses non-ASCII hosts (`config::nats`).
    #[test]
    fn server_hosts_are_taken_as_written() {
        let addr = ServerAddr::from_str("tls://xn--bcher-kva.example:4222").unwrap();
        assert_eq!(addr.host(), "xn--bcher-kva.example");
        assert_eq!(addr.port(), 4222);
        let addr = ServerAddr::from_str("nats://bücher.example:4222").unwrap();
        assert_eq!(addr.host(), "b%C3%BCcher.example");
    }

    #[test]
    fn subjects_are_prefix_node_kind_with_safe_tokens() {
        assert_eq!(
            subject("teledge", "edge-01", &kind_of(br#"{"type":"call","x":1}"#)),
            "teledge.edge-01.call"
        );
        assert_eq!(kind_of(br#"{"no":"type"}"#), "record");
        assert_eq!(kind_of(b"not json"), "record");
        assert_eq!(kind_of(br#"{"type":"a.b *>"}"#), "a_b___");
        assert_eq!(subject("p.q", "n.1", "gap"), "p.q.n_1.gap");
        assert!(valid_subject_prefix("teledge"));
        assert!(valid_subject_prefix("site-a.teledge"));
        for bad in ["", "a..b", "a.*", "a b", ".a", "a.>"] {
            assert!(!valid_subject_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn the_message_is_the_https_batch_line() {
        let m = Outgoing::line("t", "n", "n:1:2".into(), br#"{"type":"call","a":1}"#).unwrap();
        assert_eq!(m.subject, "t.n.call");
        assert_eq!(m.id, "n:1:2");
        assert_eq!(
            &m.payload[..],
            br#"{"id":"n:1:2","record":{"type":"call","a":1}}"#
        );
    }
}
