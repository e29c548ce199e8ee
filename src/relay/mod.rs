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
//!   quality reports when a call's record is made), encoded by [`crate::decode::hep::encode()`].
//! - The relay never slows capture: the mirror only queues (`try_send`); when the queue is
//!   full the frame is dropped and counted (`teledge_hep_out_dropped_total{reason="queue_full"}`,
//!   [`HepRelayDropped`]). The queue is bounded in frames (`queue_frames`) and in bytes
//!   (`queue_bytes`, each frame as held; `reason="queue_bytes"` beyond): a frame is up to
//!   64 KiB, so the frame bound alone let large SIP messages hold gigabytes while the server
//!   was away. A replay may wait instead ([`Overflow::Wait`]): it has no ring to
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
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::bounded::{self, BoundedReceiver, BoundedSender, TrySendError};
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

/// What a queued frame holds: its buffer and its slot in the queue.
fn held_bytes(frame: &Vec<u8>) -> usize {
    frame.capacity() + std::mem::size_of::<Queued>()
}

/// Every reason of `teledge_hep_out_dropped_total`.
pub const DROP_REASONS: [&str; 9] = [
    "queue_full",
    "queue_bytes",
    "closed",
    "send_failed",
    "shutdown",
    "too_large",
    "family_mismatch",
    "time_out_of_range",
    // The sender thread panicked (a bug): the frame in its hand and the queue.
    "panicked",
];

/// Called with a panic of the sender thread (caught at its boundary) and the frames it lost
/// (the frame in hand and those queued, counted as `panicked`); frames offered after it
/// are counted as `closed`.
pub type OnPanic = Box<dyn FnOnce(&(dyn std::any::Any + Send), u64) + Send>;

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
    tx: BoundedSender<Queued>,
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
        HepRelay::start_supervised(config, overflow, metrics, None)
    }

    /// [`HepRelay::start`], with `on_panic` told of a panic of the sender thread (the daemon
    /// announces it and stops, see `crate::daemon`).
    pub fn start_supervised(
        config: &HepOutConfig,
        overflow: Overflow,
        metrics: Arc<AgentMetrics>,
        on_panic: Option<OnPanic>,
    ) -> Result<(HepRelay, HepMirror), RelayError> {
        let tls = match &config.transport {
            HepOutTransport::Tls(tls) => Some(tls_client(tls)?),
            _ => None,
        };
        let (tx, rx) = bounded::channel_weighted(config.queue_frames, config.queue_bytes);
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
        let thread_metrics = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name("hep-out".into())
            .spawn(move || {
                // A panic of the sender (a bug in it or in rustls) is caught here: the frame
                // in hand and the queue are counted as lost, and the owner told.
                let in_hand = Arc::new(AtomicBool::new(false));
                let hand = Arc::clone(&in_hand);
                let rx = rx;
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    sender.run(&rx, &hand)
                }));
                if let Err(payload) = run {
                    let lost =
                        u64::from(in_hand.load(Ordering::Relaxed)) + rx.try_iter().count() as u64;
                    HepRelayDropped {
                        reason: "panicked",
                        count: lost,
                    }
                    .emit(&thread_metrics);
                    thread_metrics.hep_out_connected.set(0);
                    match on_panic {
                        Some(on_panic) => on_panic(payload.as_ref(), lost),
                        None => tracing::error!(
                            message = crate::panics::message(payload.as_ref()),
                            lost,
                            "The HEP relay thread panicked: it sends nothing more."
                        ),
                    }
                }
            })
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
        let weight = held_bytes(&bytes);
        let mut item = (kind, bytes);
        let give_up = match self.overflow {
            Overflow::Wait(wait) if !self.waited_out => Some(Instant::now() + wait),
            _ => None,
        };
        loop {
            let (reason, back) = match self.tx.try_send_weighted(item, weight) {
                Ok(()) => {
                    self.waited_out = false;
                    return;
                }
                Err(TrySendError::Full(back)) => ("queue_full", back),
                Err(TrySendError::FullBytes(back)) => ("queue_bytes", back),
                Err(TrySendError::Disconnected(_)) => {
                    HepRelayDropped {
                        reason: "closed",
                        count: 1,
                    }
                    .emit(&self.metrics);
                    return;
                }
            };
            match give_up {
                Some(at) if Instant::now() < at => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                _ => {
                    self.waited_out = give_up.is_some() || self.waited_out;
                    HepRelayDropped { reason, count: 1 }.emit(&self.metrics);
                    return;
                }
            }
        }
    }
}

/// The client configuration: the CA given, nothing else; a client certificate if given.
fn tls_client(
    tls: &HepOutTls,
) -> Result<
    (
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    ),
    RelayError,
> {
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
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
    backoff: Backoff,
    metrics: Arc<AgentMetrics>,
    deadline: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Sender {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(mut self, rx: &BoundedReceiver<Queued>, in_hand: &AtomicBool) {
        let mut conn: Option<Conn> = None;
        let mut pending: Option<Queued> = None;
        let mut retry_at = Instant::now();
        loop {
            let deadline = self.deadline();
            if self.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            in_hand.store(pending.is_some(), Ordering::Relaxed);
            let item = match pending.take() {
                Some(item) => item,
                None => match rx.recv_timeout(TICK) {
                    Ok(item) => {
                        in_hand.store(true, Ordering::Relaxed);
                        crate::panics::inject("hep_out");
                        item
                    }
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
                    self.metrics.hep_out_frames.with(&[item.0.as_str()]).inc();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::io::Read;
    use std::net::TcpListener;

    use super::*;
    use crate::decode::hep::{frame_len, parse, Framing};
    use crate::dissect::{MessageMeta, Transport};
    use crate::time::Timestamp;

    fn config(address: &str, transport: HepOutTransport, queue: usize) -> HepOutConfig {
        let mut c = HepOutConfig::to(address, transport);
        c.queue_frames = queue;
        c.reconnect_min = Duration::from_millis(10);
        c.reconnect_max = Duration::from_millis(50);
        c
    }

    fn sip(mirror: &mut HepMirror, n: u32) {
        let raw = format!(
            "OPTIONS sip:a@h SIP/2.0\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\n\
             Call-ID: c-{n}\r\nCSeq: {n} OPTIONS\r\n\r\n"
        );
        mirror_sip(mirror, n, &raw);
    }

    /// Mirrors one SIP message, as frame `n` at second `n`.
    fn mirror_sip(mirror: &mut HepMirror, n: u32, raw: &str) {
        let message = crate::decode::sip::parse(raw.as_bytes()).unwrap();
        let meta = MessageMeta {
            frame: u64::from(n),
            time: Timestamp::from_secs_nanos(1_700_000_000 + i64::from(n), 0),
            src: "10.0.0.1:5060".parse().unwrap(),
            dst: "10.0.0.2:5060".parse().unwrap(),
            transport: Transport::Udp,
        };
        mirror.mirror(Mirrored::Sip {
            meta: &meta,
            message: &message,
        });
    }

    /// A SIP MESSAGE with a body of `body` bytes (a frame of about that size).
    fn large_sip(mirror: &mut HepMirror, n: u32, body: usize) {
        let raw = format!(
            "MESSAGE sip:a@h SIP/2.0\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\n\
             Call-ID: m-{n}\r\nCSeq: {n} MESSAGE\r\nContent-Type: text/plain\r\n\
             Content-Length: {body}\r\n\r\n{}",
            "x".repeat(body)
        );
        mirror_sip(mirror, n, &raw);
    }

    /// Regression: the queue was bounded by frames only, so 10,000 frames of large SIP
    /// messages (up to 64 KiB each) could hold 640 MiB while the server was away. Against a
    /// dead server, frames of ~16 KiB stop at the byte bound long before the frame bound,
    /// every one counted; against a live one, the bytes come back as frames are sent (a
    /// replay waiting for room gets every frame through a queue of four frames' bytes).
    #[test]
    fn the_queue_is_bounded_in_bytes_and_gives_them_back() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = Arc::new(AgentMetrics::new());
        let mut c = config(&format!("127.0.0.1:{port}"), HepOutTransport::Tcp, 10_000);
        c.queue_bytes = 64 << 10;
        let (relay, mut mirror) =
            HepRelay::start(&c, Overflow::Drop, Arc::clone(&metrics)).unwrap();
        for n in 0..200 {
            large_sip(&mut mirror, n, 16 << 10);
        }
        let by_bytes = series(
            &metrics,
            "teledge_hep_out_dropped_total{reason=\"queue_bytes\"}",
        );
        // Three frames of 16 KiB and change fit in 64 KiB; at most one more in the sender's
        // hand (its bytes given back when it took it).
        assert!((195..=197).contains(&by_bytes), "{by_bytes}");
        assert!(mirror.tx.bytes_waiting() <= 64 << 10);
        relay.finish(Duration::ZERO);
        assert_eq!(dropped_total(&metrics), 200);

        // A live server: every frame goes through the same small queue.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let metrics = Arc::new(AgentMetrics::new());
        let mut c = config(&address, HepOutTransport::Tcp, 10_000);
        c.queue_bytes = 64 << 10;
        let (relay, mut mirror) = HepRelay::start(
            &c,
            Overflow::Wait(Duration::from_secs(5)),
            Arc::clone(&metrics),
        )
        .unwrap();
        let reader = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_frames(&mut stream, 100).len()
        });
        for n in 0..100 {
            large_sip(&mut mirror, n, 16 << 10);
        }
        assert_eq!(reader.join().unwrap(), 100);
        relay.finish(Duration::from_secs(5));
        assert_eq!(dropped_total(&metrics), 0);
        assert_eq!(mirror.tx.bytes_waiting(), 0);
    }

    fn series(metrics: &AgentMetrics, line_start: &str) -> u64 {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// A server that is not there: the frame in hand waits for a connection, the queue
    /// fills, and every frame beyond it is dropped at once and counted — in the metrics
    /// /metrics shows — as are those still queued when the relay stops.
    #[test]
    fn a_full_queue_drops_and_counts_every_frame() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = Arc::new(AgentMetrics::new());
        let (relay, mut mirror) = HepRelay::start(
            &config(&format!("127.0.0.1:{port}"), HepOutTransport::Tcp, 16),
            Overflow::Drop,
            Arc::clone(&metrics),
        )
        .unwrap();
        let started = Instant::now();
        for n in 0..200 {
            sip(&mut mirror, n);
        }
        // Never waits: 200 frames against a dead server in far less than one connect timeout.
        assert!(started.elapsed() < IO_TIMEOUT, "{:?}", started.elapsed());
        let full = series(
            &metrics,
            "teledge_hep_out_dropped_total{reason=\"queue_full\"}",
        );
        // 16 queued, at most one in the sender's hand.
        assert!((183..=184).contains(&full), "{full}");
        // The sender tries (and fails) to connect, told as an event.
        let deadline = Instant::now() + IO_TIMEOUT;
        while series(&metrics, "teledge_hep_out_connection_failures_total") == 0 {
            assert!(Instant::now() < deadline, "no connection failure counted");
            std::thread::sleep(Duration::from_millis(10));
        }
        relay.finish(Duration::ZERO);
        let shutdown = series(
            &metrics,
            "teledge_hep_out_dropped_total{reason=\"shutdown\"}",
        );
        assert_eq!(full + shutdown, 200);
        assert_eq!(dropped_total(&metrics), 200);
        assert_eq!(series(&metrics, "teledge_hep_out_frames_total"), 0);
        // After the relay stopped, a frame has nowhere to go: counted too.
        sip(&mut mirror, 1);
        assert_eq!(
            series(&metrics, "teledge_hep_out_dropped_total{reason=\"closed\"}"),
            1
        );
    }

    /// Reads frames off a TCP connection with our own framer and decoder until `n` came.
    fn read_frames(stream: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut buf, mut frames) = (Vec::new(), Vec::new());
        while frames.len() < n {
            let mut chunk = [0u8; 4096];
            let got = stream.read(&mut chunk).unwrap();
            assert!(got > 0, "connection closed after {} frames", frames.len());
            buf.extend_from_slice(&chunk[..got]);
            while let Framing::Frame(len) = frame_len(&buf, 65_535) {
                frames.push(buf.drain(..len).collect());
            }
        }
        frames
    }

    /// TCP: frames arrive back to back, in order, as encoded; when the server closes the
    /// connection, the relay notices, reconnects with backoff and goes on.
    #[test]
    fn tcp_frames_arrive_in_order_and_the_relay_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let metrics = Arc::new(AgentMetrics::new());
        let (relay, mut mirror) = HepRelay::start(
            &config(&address, HepOutTransport::Tcp, 1000),
            Overflow::Drop,
            Arc::clone(&metrics),
        )
        .unwrap();
        for n in 0..10 {
            sip(&mut mirror, n);
        }
        let (mut first, _) = listener.accept().unwrap();
        let frames = read_frames(&mut first, 10);
        for (n, bytes) in frames.iter().enumerate() {
            let f = parse(bytes).unwrap();
            assert_eq!(f.correlation_id_str(), Some(format!("c-{n}").as_str()));
            assert_eq!(
                f.time,
                Timestamp::from_secs_nanos(1_700_000_000 + n as i64, 0)
            );
        }
        drop(first);
        // The relay sees the close while idle, then reconnects for the next frames.
        std::thread::sleep(Duration::from_millis(300));
        for n in 10..20 {
            sip(&mut mirror, n);
        }
        let (mut second, _) = listener.accept().unwrap();
        let frames = read_frames(&mut second, 10);
        let ids: Vec<String> = frames
            .iter()
            .map(|b| parse(b).unwrap().correlation_id_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, (10..20).map(|n| format!("c-{n}")).collect::<Vec<_>>());
        relay.finish(Duration::from_secs(1));
        assert_eq!(
            series(&metrics, "teledge_hep_out_frames_total{type=\"sip\"}"),
            20
        );
        assert_eq!(dropped_total(&metrics), 0);
    }
}
