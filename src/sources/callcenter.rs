//! FreeSWITCH `mod_callcenter` events over the event socket (`mod_event_socket`, inbound
//! mode): teledge connects as a client, authenticates, subscribes to
//! `event plain CUSTOM callcenter::info`, and hands every `mod_callcenter` event on,
//! decoded ([`crate::decode::esl`]). Lost connections are retried with backoff; the
//! password is never logged.
//!
//! What is not promised: events FreeSWITCH emits while no connection is up are not queued by
//! it for us and are lost (each reconnection is counted; the stories they would have ended
//! are emitted as `expired` or `superseded` by the assembler, never invented). Queue calls
//! open when the daemon stops are emitted as `closed_by: shutdown`.
//!
//! Tested against a stand-in server in the tests (FreeSWITCH is not packaged in Debian) that
//! speaks the protocol as FreeSWITCH does and replays `mod_callcenter` event text from
//! FreeSWITCH's documentation: see `tests/it/callcenter.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::decode::esl::{self, CallcenterEvent, EslDecoder, EslError, EslMessage};
use crate::secret::Secret;

/// How the client connects.
#[derive(Debug, Clone)]
pub struct CallcenterSettings {
    pub address: SocketAddr,
    pub password: Secret<String>,
    pub connect_timeout: Duration,
    /// A connection silent this long is closed and made again (FreeSWITCH sends a
    /// `HEARTBEAT` only when subscribed; `mod_callcenter` may be quiet for hours, so the
    /// default is long).
    pub idle_timeout: Duration,
    pub max_message: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl CallcenterSettings {
    pub fn new(address: SocketAddr, password: Secret<String>) -> Self {
        CallcenterSettings {
            address,
            password,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(24 * 3600),
            max_message: esl::DEFAULT_MAX_MESSAGE,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Counters of the client (they only grow).
#[derive(Debug, Default)]
pub struct CallcenterStats {
    pub connections: AtomicU64,
    pub connect_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    pub disconnects: AtomicU64,
    pub events: AtomicU64,
    /// Messages or events that did not decode (a stream that cannot be framed closes the
    /// connection).
    pub decode_errors: AtomicU64,
    /// Events of the subscription that are not `mod_callcenter`'s (ignored).
    pub other_events: AtomicU64,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum CallcenterError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("event socket: {0}")]
    Esl(#[from] EslError),
    #[error("event socket refused the password")]
    AuthRefused,
    #[error("event socket refused the subscription: {0}")]
    SubscribeRefused(String),
    #[error("event socket closed the connection")]
    Closed,
    #[error("event socket silent for {0:?}")]
    Idle(Duration),
}

/// Runs the client until `stop` is cancelled, sending every `mod_callcenter` event to `tx`
/// (waiting for room: TCP holds FreeSWITCH back meanwhile). Ends when `stop` is cancelled or
/// `tx` is closed.
pub async fn run(
    settings: CallcenterSettings,
    tx: mpsc::Sender<CallcenterEvent>,
    stats: Arc<CallcenterStats>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.retry_min, settings.retry_max);
    loop {
        let result = tokio::select! {
            r = session(&settings, &tx, &stats, &mut backoff) => r,
            () = stop.cancelled() => return,
        };
        if tx.is_closed() {
            return;
        }
        match &result {
            Err(CallcenterError::AuthRefused) => {
                stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(address = %settings.address, "FreeSWITCH event socket refused the password: check [[callcenter]] password.");
            }
            Err(CallcenterError::Connect { .. } | CallcenterError::ConnectTimeout(_)) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(), "FreeSWITCH event socket not reachable; retrying.");
            }
            Err(e) => {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "FreeSWITCH event socket connection lost; reconnecting.");
            }
            Ok(()) => {}
        }
        let wait = backoff.next_wait();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One connection: authenticate, subscribe, read events until it ends.
async fn session(
    settings: &CallcenterSettings,
    tx: &mpsc::Sender<CallcenterEvent>,
    stats: &CallcenterStats,
    backoff: &mut Backoff,
) -> Result<(), CallcenterError> {
    let addr = settings.address;
    let mut stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| CallcenterError::ConnectTimeout(addr))?
        .map_err(|source| CallcenterError::Connect { addr, source })?;
    let mut decoder = EslDecoder::new(settings.max_message);
    let mut buf = vec![0u8; 16 << 10];
    let idle = settings.idle_timeout;

    let greeting = next_message(&mut stream, &mut decoder, &mut buf, idle).await?;
    if greeting.content_type() != Some("auth/request") {
        return Err(CallcenterError::Closed);
    }
    let auth = format!("auth {}\n\n", settings.password.expose());
    stream.write_all(auth.as_bytes()).await?;
    let reply = next_reply(&mut stream, &mut decoder, &mut buf, idle).await?;
    if !reply.reply_ok() {
        return Err(CallcenterError::AuthRefused);
    }
    stream
        .write_all(b"event plain CUSTOM callcenter::info\n\n")
        .await?;
    let reply = next_reply(&mut stream, &mut decoder, &mut buf, idle).await?;
    if !reply.reply_ok() {
        return Err(CallcenterError::SubscribeRefused(
            reply
                .header("Reply-Text")
                .unwrap_or("")
                .chars()
                .take(80)
                .collect(),
        ));
    }
    stats.connections.fetch_add(1, Ordering::Relaxed);
    backoff.reset();
    tracing::info!(address = %addr, "Reading mod_callcenter events from the FreeSWITCH event socket.");
    loop {
        let message = next_message(&mut stream, &mut decoder, &mut buf, idle).await?;
        match message.content_type() {
            Some("text/event-plain") => {
                let event = esl::parse_event(&message.body).and_then(|e| esl::callcenter(&e));
                match event {
                    Ok(event) => {
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        if tx.send(event).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(EslError::NotCallcenter) => {
                        stats.other_events.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "mod_callcenter event not used.");
                    }
                }
            }
            Some("text/disconnect-notice") => return Err(CallcenterError::Closed),
            // Replies to nothing we sent, logs, API responses: not ours.
            _ => {}
        }
    }
}

/// The next `command/reply`, skipping events that arrive before it.
async fn next_reply(
    stream: &mut TcpStream,
    decoder: &mut EslDecoder,
    buf: &mut [u8],
    idle: Duration,
) -> Result<EslMessage, CallcenterError> {
    loop {
        let m = next_message(stream, decoder, buf, idle).await?;
        match m.content_type() {
            Some("command/reply") => return Ok(m),
            Some("text/disconnect-notice") => return Err(CallcenterError::Closed),
            _ => {}
        }
    }
}

async fn next_message(
    stream: &mut TcpStream,
    decoder: &mut EslDecoder,
    buf: &mut [u8],
    idle: Duration,
) -> Result<EslMessage, CallcenterError> {
    loop {
        if let Some(m) = decoder.next_message()? {
            return Ok(m);
        }
        let n = tokio::time::timeout(idle, stream.read(buf))
            .await
            .map_err(|_| CallcenterError::Idle(idle))??;
        if n == 0 {
            return Err(CallcenterError::Closed);
        }
        decoder.push(&buf[..n]);
    }
}
