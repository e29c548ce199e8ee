//! The HEP relay: what the agent sees, forwarded to a HOMER server (heplify-server, HOMER 11,
//! or any HEPv3 receiver) as it is seen. Configured by `[hep_out]` ([`crate::config::hep_out`],
//! off by default); `teledge replay --hep-out ADDR` pushes a capture file the same way.
//!
//! ```text
//!  pipeline (capture path) ──Mirror──► HepMirror: frames (pure, [`frames`]) ──try_send──►
//!      bounded queue (queue_frames) ──► "hep-out" thread ──► UDP / TCP / TLS ──► HOMER
//! ```
//!
//! - The pipeline hands every SIP message, every RTCP packet of a call and every call record
//!   to [`HepMirror`] ([`crate::pipeline::Mirror`]); [`frames`] turns them into HEPv3 frames
//!   (type 1 SIP, type 5 RTCP JSON with the Call-ID as correlation id, type 34 per-stream
//!   quality reports when a call's record is made), encoded by [`crate::decode::hep::encode`].
//! - The relay never slows capture: the mirror only queues (`try_send`); when the queue is
//!   full the frame is dropped and counted (`teledge_hep_out_dropped_total{reason="queue_full"}`,
//!   [`HepRelayDropped`]). A replay may wait instead ([`Overflow::Wait`]): it has no ring to
//!   overflow, and a file pushed into HOMER should arrive whole.
//! - One thread sends. UDP: one frame per datagram (a send error drops that frame, counted).
//!   TCP/TLS: frames back to back on one connection, connected on the first frame and again
//!   after any failure with exponential backoff and jitter ([`crate::backoff`]); the frame in
//!   hand waits for the connection, the rest wait in the queue. A frame whose write failed is
//!   counted as `send_failed`. A connection the server closed is noticed while idle (a
//!   non-blocking peek) before the next frame goes into it. TLS is rustls with `ring`,
//!   trusting the configured CA only, with an optional client certificate.
//! - [`HepRelay::finish`] sends what is queued until a deadline, then counts the rest as
//!   `shutdown` and stops. Every frame is therefore sent or counted, by reason.
//!
//! Privacy: HEP carries SIP as captured — numbers and names in clear, unlike records, which
//! are pseudonymised before the spool. That is what HOMER is for; use TLS beyond a trusted
//! network.

pub mod frames;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::config::hep_out::{HepOutConfig, HepOutTls, HepOutTransport};
use crate::observe::events::{HepRelayConnectionFailed, HepRelayDropped, InternalEvent};
use crate::observe::AgentMetrics;
use crate::pipeline::{Mirror, Mirrored};
use crate::secret::Secret;
use frames::{FrameKind, Identity, Kinds, Made};

/// How long a connection attempt or a blocked write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the sender looks at its queue and at a quiet connection.
const TICK: Duration = Duration::from_millis(50);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot read the TLS files of [hep_out]")]
    Tls(#[from] crate::uplink::tls::TlsError),
    #[error("TLS configuration of [hep_out]")]
    Rustls(#[from] rustls::Error),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("cannot start the HEP relay thread")]
    Thread(#[source] io::Error),
}

/// What the mirror does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the frame and count it (live capture: never wait).
    Drop,
    /// Wait up to this long for room, then drop and count (replay). After one timeout the
    /// mirror stops waiting until the queue takes a frame again, so a dead server costs one
    /// wait, not one per frame.
    Wait(Duration),
}

type Queued = (FrameKind, Vec<u8>);

/// Every reason of `teledge_hep_out_dropped_total`.
pub const DROP_REASONS: [&str; 7] = [
    "queue_full",
    "closed",
    "send_failed",
    "shutdown",
    "too_large",
    "family_mismatch",
    "time_out_of_range",
];

/// Frames dropped so far, all reasons.
pub fn dropped_total(metrics: &AgentMetrics) -> u64 {
    DROP_REASONS
        .iter()
        .map(|r| metrics.hep_out_dropped.with(&[r]).get())
        .sum()
}

/// The running relay: its sender thread and what stops it.
#[derive(Debug)]
pub struct HepRelay {
    thread: Option<JoinHandle<()>>,
    deadline: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
}

/// The pipeline's side of the relay: turns events into frames and queues them.
pub struct HepMirror {
    tx: SyncSender<Queued>,
    identity: Identity,
    kinds: Kinds,
    overflow: Overflow,
    waited_out: bool,
    metrics: Arc<AgentMetrics>,
}

impl std::fmt::Debug for HepMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HepMirror")
            .field("identity", &self.identity)
            .field("kinds", &self.kinds)
            .field("overflow", &self.overflow)
            .finish_non_exhaustive()
    }
}

impl HepRelay {
    /// Starts the sender thread; returns the relay and the mirror to give the pipeline
    /// ([`crate::pipeline::Pipeline::set_mirror`]). Nothing is connected yet: the first
    /// frame connects (a server down at start is retried like one that goes away).
    pub fn start(
        config: &HepOutConfig,
        overflow: Overflow,
        metrics: Arc<AgentMetrics>,
    ) -> Result<(HepRelay, HepMirror), RelayError> {
        let tls = match &config.transport {
            HepOutTransport::Tls(tls) => Some(tls_client(tls)?),
            _ => None,
        };
        let (tx, rx) = mpsc::sync_channel(config.queue_frames);
        let deadline = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let sender = Sender {
            address: config.address.clone(),
            tcp: !matches!(config.transport, HepOutTransport::Udp),
            tls,
            backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
            metrics: Arc::clone(&metrics),
            deadline: Arc::clone(&deadline),
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name("hep-out".into())
            .spawn(move || sender.run(rx))
            .map_err(RelayError::Thread)?;
        tracing::info!(
            address = %config.address,
            transport = config.transport.as_str(),
            capture_id = config.capture_id,
            "HEP relay started."
        );
        let mirror = HepMirror {
            tx,
            identity: Identity {
                capture_id: config.capture_id,
                auth_key: config
                    .auth_key
                    .as_ref()
                    .map(|k| Secret::new(k.expose().as_bytes().to_vec())),
                node_name: config.node_name.as_ref().map(|n| n.as_bytes().to_vec()),
            },
            kinds: Kinds {
                sip: config.sip,
                rtcp: config.rtcp,
                stream_reports: config.stream_reports,
            },
            overflow,
            waited_out: false,
            metrics,
        };
        Ok((
            HepRelay {
                thread: Some(thread),
                deadline,
                stop,
            },
            mirror,
        ))
    }

    /// Sends what is queued, for at most `drain`, then stops; what is left is counted as
    /// `shutdown`. Frames queued after this are counted as `closed`.
    pub fn finish(mut self, drain: Duration) {
        self.stop_within(drain);
    }

    fn stop_within(&mut self, drain: Duration) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + drain);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("The HEP relay thread panicked.");
            }
        }
    }
}

impl Drop for HepRelay {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.store(true, Ordering::Relaxed);
            self.stop_within(Duration::ZERO);
        }
    }
}

impl Mirror for HepMirror {
    fn mirror(&mut self, event: Mirrored<'_>) {
        for made in frames::frames(event, &self.identity, self.kinds) {
            match made {
                Made::Frame(kind, bytes) => self.queue(kind, bytes),
                Made::Failed(_, e) => HepRelayDropped {
                    reason: e.as_str(),
                    count: 1,
                }
                .emit(&self.metrics),
                Made::Skipped(reason) => self.metrics.hep_out_skipped.with(&[reason]).inc(),
            }
        }
    }

    fn own_frame(&self, hep: &crate::decode::hep::HepFrame<'_>) -> bool {
        let own = frames::is_own(hep, &self.identity);
        if own {
            self.metrics.hep_out_skipped.with(&["own_frame"]).inc();
        }
        own
    }
}

impl HepMirror {
    fn queue(&mut self, kind: FrameKind, bytes: Vec<u8>) {
        let mut item = (kind, bytes);
        let give_up = match self.overflow {
            Overflow::Wait(wait) if !self.waited_out => Some(Instant::now() + wait),
            _ => None,
        };
        loop {
            match self.tx.try_send(item) {
                Ok(()) => {
                    self.waited_out = false;
                    return;
                }
                Err(TrySendError::Full(back)) => match give_up {
                    Some(at) if Instant::now() < at => {
                        item = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    _ => {
                        self.waited_out = give_up.is_some() || self.waited_out;
                        HepRelayDropped {
                            reason: "queue_full",
                            count: 1,
                        }
                        .emit(&self.metrics);
                        return;
                    }
                },
                Err(TrySendError::Disconnected(_)) => {
                    HepRelayDropped {
                        reason: "closed",
                        count: 1,
                    }
                    .emit(&self.metrics);
                    return;
                }
            }
        }
    }
}

/// The client configuration: the CA given, nothing else; a client certificate if given.
fn tls_client(
    tls: &HepOutTls,
) -> Result<(Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>), RelayError> {
    let roots = crate::uplink::tls::load_roots(&tls.ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match &tls.client_cert {
        Some((cert, key)) => builder.with_client_auth_cert(
            crate::uplink::tls::load_certs(cert)?,
            crate::uplink::tls::load_private_key(key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    let name = rustls_pki_types::ServerName::try_from(tls.server_name.clone())
        .map_err(|_| RelayError::ServerName(tls.server_name.clone()))?;
    Ok((Arc::new(config), name))
}

/// A connection to the server.
enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Conn::Udp(s) => s.send(frame).map(drop),
            Conn::Tcp(s) => s.write_all(frame),
            Conn::Tls(s) => {
                s.write_all(frame)?;
                s.flush()
            }
        }
    }

    /// True when the server closed a TCP/TLS connection (seen without blocking).
    fn closed(&mut self) -> bool {
        let sock = match self {
            Conn::Udp(_) => return false,
            Conn::Tcp(s) => &*s,
            Conn::Tls(s) => s.get_ref(),
        };
        if sock.set_nonblocking(true).is_err() {
            return true;
        }
        let mut buf = [0u8; 1];
        let closed = match sock.peek(&mut buf) {
            Ok(0) => true,
            // The server said something (an alert, close_notify): it is going away or
            // speaking a protocol we do not; start afresh.
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        };
        closed || sock.set_nonblocking(false).is_err()
    }
}

/// The sender thread's state.
struct Sender {
    address: String,
    tcp: bool,
    tls: Option<(Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>)>,
    backoff: Backoff,
    metrics: Arc<AgentMetrics>,
    deadline: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Sender {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(mut self, rx: Receiver<Queued>) {
        let mut conn: Option<Conn> = None;
        let mut pending: Option<Queued> = None;
        let mut retry_at = Instant::now();
        loop {
            let deadline = self.deadline();
            if self.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d)
            {
                break;
            }
            let item = match pending.take() {
                Some(item) => item,
                None => match rx.recv_timeout(TICK) {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) => {
                        if deadline.is_some() {
                            break; // Finishing, and the queue is empty.
                        }
                        if conn.as_mut().is_some_and(Conn::closed) {
                            conn = None;
                            self.metrics.hep_out_connected.set(0);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            let Some(c) = conn.as_mut() else {
                let now = Instant::now();
                if now < retry_at {
                    std::thread::sleep((retry_at - now).min(TICK));
                    pending = Some(item);
                    continue;
                }
                match self.connect() {
                    Ok(c) => {
                        conn = Some(c);
                        self.backoff.reset();
                        self.metrics.hep_out_connected.set(1);
                    }
                    Err(e) => {
                        HepRelayConnectionFailed {
                            address: &self.address,
                            error: &e,
                        }
                        .emit(&self.metrics);
                        retry_at = Instant::now() + self.backoff.next_wait();
                    }
                }
                pending = Some(item);
                continue;
            };
            match c.send(&item.1) {
                Ok(()) => {
                    self.metrics
                        .hep_out_frames
                        .with(&[item.0.as_str()])
                        .inc();
                    self.metrics.hep_out_bytes.add(item.1.len() as u64);
                }
                Err(e) => {
                    HepRelayDropped {
                        reason: "send_failed",
                        count: 1,
                    }
                    .emit(&self.metrics);
                    HepRelayConnectionFailed {
                        address: &self.address,
                        error: &e,
                    }
                    .emit(&self.metrics);
                    if self.tcp {
                        conn = None;
                        retry_at = Instant::now() + self.backoff.next_wait();
                    } else {
                        self.metrics.hep_out_connected.set(1);
                    }
                }
            }
        }
        // What is left was never sent.
        let left = u64::from(pending.is_some()) + rx.try_iter().count() as u64;
        HepRelayDropped {
            reason: "shutdown",
            count: left,
        }
        .emit(&self.metrics);
        self.metrics.hep_out_connected.set(0);
    }

    fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = self.address.to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.address),
            ));
        }
        Ok(addrs)
    }

    fn connect(&self) -> io::Result<Conn> {
        let addrs = self.resolve()?;
        if !self.tcp {
            let target = addrs[0];
            let local: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0".parse().map_err(io::Error::other)?
            } else {
                "[::]:0".parse().map_err(io::Error::other)?
            };
            let socket = UdpSocket::bind(local)?;
            socket.connect(target)?;
            return Ok(Conn::Udp(socket));
        }
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                Ok(stream) => {
                    stream.set_write_timeout(Some(IO_TIMEOUT))?;
                    stream.set_read_timeout(Some(IO_TIMEOUT))?;
                    let Some((config, name)) = &self.tls else {
                        return Ok(Conn::Tcp(stream));
                    };
                    let client = rustls::ClientConnection::new(Arc::clone(config), name.clone())
                        .map_err(io::Error::other)?;
                    let mut tls = rustls::StreamOwned::new(client, stream);
                    // The handshake now, so a refused certificate is a connection failure
                    // (with the reason), not a lost frame.
                    while tls.conn.is_handshaking() {
                        tls.conn.complete_io(&mut tls.sock)?;
                    }
                    return Ok(Conn::Tls(Box::new(tls)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
    }
}
