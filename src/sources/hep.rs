//! The HEP input: a listener for HEPv3 frames from PBXs, SBCs and capture agents (Asterisk
//! `res_hep`, FreeSWITCH, Kamailio `siptrace`, heplify, captagent) over UDP, TCP and TLS.
//!
//! Every frame is decoded by [`crate::decode::hep`], checked against the configured
//! authentication key and sent on as an owned [`HepEvent`] into a bounded channel. Capture
//! must never block: when the channel is full the frame is dropped and counted. Everything
//! refused is counted in [`HepStats`] (by error kind for malformed frames), never silent.
//!
//! - UDP: one frame per datagram; the declared length must equal the datagram length.
//!   Datagrams the kernel drops at the socket because its receive buffer is full (a sender
//!   faster than correlation) never reach us: their count, the socket's own (`drops` in
//!   `/proc/net/udp`), is read once a second and at the stop into
//!   `teledge_source_kernel_drops_total{source="hep"}` — until 2026-12-04 (branch `attack6`)
//!   they were neither counted nor announced (an attack campaign's HEP INVITE flood lost
//!   335,000 of 563,000 datagrams, a real call among them, without a trace).
//! - TCP and TLS: frames back to back. Each connection has a buffer bounded by the largest
//!   frame accepted; bytes that are not a frame are skipped up to the next `HEP3` magic, so a
//!   sender that writes garbage (or a frame we refuse) does not lose the frames after it.
//! - Connections are untrusted until they prove otherwise: a connection must deliver a valid
//!   frame (carrying the auth key, when one is configured) within `first_frame_timeout` of
//!   being accepted (TLS handshake included), or it is closed; only then does the longer
//!   `idle_timeout` apply. At most `max_connections` are served at once, at most
//!   `max_connections_per_source` from one IP address; refusals are counted by reason.
//! - The queue to correlation is bounded twice: by frames (the channel's capacity) and by
//!   bytes (`max_queue_bytes`, payloads plus a fixed cost per frame, released when the
//!   receiver drops the event). A frame over either bound is dropped and counted.
//!
//! Bind with [`HepListener::bind`] (errors name the address), then [`HepListener::run`] until
//! the shutdown signal turns true; `run` returns once every connection task has ended.
//!
//! Panics (a bug, in a decoder or here): one connection's task, or the handling of one UDP
//! datagram, that panics is handed to the caller's [`PanicHook`] (component
//! `hep_connection` or `hep_datagram`) and only that connection or datagram is dropped —
//! its slots are given back as it unwinds — while the listener serves on. A panic of the
//! accept or receive loop itself ends [`HepListener::run`] with that panic (the caller's
//! supervisor catches it), so a listener never dies quietly.

use crate::observe::events::{
    DecodeErrors, DropReason, HepConnectionRefused, InternalEvent, RecordsDropped,
};
use crate::observe::AgentMetrics;
use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::decode::hep::{self, Framing, HepErrorKind, HepFrame, HepFrameOwned, MAX_FRAME_LEN};

/// Where and how to listen. Filled from the configuration by the caller.
#[derive(Clone)]
pub struct HepListenerSettings {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// TLS over TCP, with the server configuration built by the caller (rustls with `ring`).
    pub tls: Option<(SocketAddr, Arc<ServerConfig>)>,
    /// When set, frames must carry this key in chunk 0x000e.
    pub auth_key: Option<Vec<u8>>,
    /// Largest frame accepted on TCP/TLS (also the bound of a connection's buffer);
    /// at most 65535, the largest the length field can say.
    pub max_frame: usize,
    /// Largest payload a compressed chunk may inflate to.
    pub max_decompressed: usize,
    /// TCP + TLS connections served at once; more are refused (closed) and counted.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A connection without a valid (authenticated) frame this long after accept is closed.
    pub first_frame_timeout: Duration,
    /// Connections served at once from one IP address.
    pub max_connections_per_source: usize,
    /// Bytes of events queued and not yet dropped by the receiver.
    pub max_queue_bytes: usize,
    /// A TLS handshake that takes longer is abandoned.
    pub tls_handshake_timeout: Duration,
}

impl Default for HepListenerSettings {
    fn default() -> Self {
        HepListenerSettings {
            udp: None,
            tcp: None,
            tls: None,
            auth_key: None,
            max_frame: MAX_FRAME_LEN,
            max_decompressed: hep::DEFAULT_MAX_DECOMPRESSED,
            max_connections: 256,
            idle_timeout: Duration::from_secs(300),
            first_frame_timeout: Duration::from_secs(5),
            max_connections_per_source: 16,
            max_queue_bytes: 32 << 20,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for HepListenerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key and the TLS configuration (private key) are never printed.
        f.debug_struct("HepListenerSettings")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.as_ref().map(|(addr, _)| addr))
            .field("auth_key", &self.auth_key.as_ref().map(|_| "<set>"))
            .field("max_frame", &self.max_frame)
            .field("max_decompressed", &self.max_decompressed)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("first_frame_timeout", &self.first_frame_timeout)
            .field(
                "max_connections_per_source",
                &self.max_connections_per_source,
            )
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .finish()
    }
}

/// How a frame reached the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HepInput {
    Udp,
    Tcp,
    Tls,
}

/// One accepted frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepEvent {
    pub frame: HepFrameOwned,
    /// The agent that sent the frame (not the captured packet's source).
    pub received_from: SocketAddr,
    pub input: HepInput,
    /// Position of the frame among those accepted by this listener, from 1.
    pub sequence: u64,
    /// This event's share of the queue's byte bound, given back when the event is dropped.
    pub charge: QueueCharge,
}

/// Fixed cost of a queued event beside its payload (the frame's fields, the channel slot).
const EVENT_OVERHEAD: usize = 256;

/// Bytes an event holds against the queue's bound; released on drop. A clone holds nothing
/// (only the original was counted), and charges never make events unequal.
#[derive(Debug, Default)]
pub struct QueueCharge {
    queued: Option<Arc<AtomicUsize>>,
    bytes: usize,
}

impl QueueCharge {
    /// The bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Clone for QueueCharge {
    fn clone(&self) -> Self {
        QueueCharge::default()
    }
}

impl PartialEq for QueueCharge {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for QueueCharge {}

impl Drop for QueueCharge {
    fn drop(&mut self) {
        if let Some(queued) = &self.queued {
            queued.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// Counters of the listener, shared with whoever reports metrics.
#[derive(Debug, Default)]
pub struct HepStats {
    /// Frames accepted and offered to the channel.
    pub frames: AtomicU64,
    /// Bytes of accepted frames.
    pub bytes: AtomicU64,
    /// Frames that did not decode, by [`HepErrorKind::index`].
    pub malformed: [AtomicU64; HepErrorKind::COUNT],
    /// Frames without the configured key, or with another one.
    pub auth_rejected: AtomicU64,
    /// Frames dropped because the channel was full.
    pub dropped_full: AtomicU64,
    /// Frames dropped because the queued bytes would exceed `max_queue_bytes`.
    pub dropped_queue_bytes: AtomicU64,
    /// Frames dropped because the receiving end had gone.
    pub dropped_closed: AtomicU64,
    /// TCP and TLS connections accepted (and served).
    pub connections: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed at once because `max_connections_per_source` were open from the
    /// same IP address.
    pub connections_refused_per_source: AtomicU64,
    /// Connections closed because no valid frame came within `first_frame_timeout`.
    pub first_frame_timeouts: AtomicU64,
    /// Connections closed for idleness.
    pub idle_timeouts: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Stream bytes skipped to find the next frame.
    pub resync_bytes: AtomicU64,
    /// Chunks of other vendors skipped in accepted frames.
    pub vendor_chunks: AtomicU64,
    /// Socket errors on accept/receive/read (the listener keeps going).
    pub io_errors: AtomicU64,
}

impl HepStats {
    /// Malformed frames of one kind.
    pub fn malformed(&self, kind: HepErrorKind) -> u64 {
        self.malformed
            .get(kind.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Malformed frames of every kind.
    pub fn malformed_total(&self) -> u64 {
        self.malformed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Where the listener hands a contained panic: the component (`hep_connection`,
/// `hep_datagram`) and the panic's payload.
pub type PanicHook = Arc<dyn Fn(&'static str, Box<dyn Any + Send>) + Send + Sync>;

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HepListenError {
    #[error("HEP {input} listener cannot bind {addr}")]
    Bind {
        input: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("HEP max_frame must be between 6 and 65535, not {0}")]
    MaxFrame(usize),
}

/// The bound sockets and what the frame handlers share.
pub struct HepListener {
    udp: Option<UdpSocket>,
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, TlsAcceptor)>,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
}

/// What every receive loop needs.
#[derive(Debug)]
struct Shared {
    settings: HepListenerSettings,
    auth: HepAuth,
    stats: Arc<HepStats>,
    /// Where refused frames, dropped frames and refused connections are told: one named
    /// event each logs and counts them (`observe::events`).
    metrics: Arc<AgentMetrics>,
    tx: mpsc::Sender<HepEvent>,
    sequence: AtomicU64,
    /// Bytes of events sent and not yet dropped by the receiver.
    queued_bytes: Arc<AtomicUsize>,
    /// Open TCP/TLS connections by source address.
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

impl std::fmt::Debug for HepListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HepListener")
            .field("udp", &self.udp_addr())
            .field("tcp", &self.tcp_addr())
            .field("tls", &self.tls_addr())
            .finish()
    }
}

impl HepListener {
    /// Binds every configured socket. Nothing is served before [`HepListener::run`].
    pub async fn bind(
        settings: HepListenerSettings,
        stats: Arc<HepStats>,
        metrics: Arc<AgentMetrics>,
        tx: mpsc::Sender<HepEvent>,
    ) -> Result<HepListener, HepListenError> {
        if !(hep::HEADER_LEN..=MAX_FRAME_LEN).contains(&settings.max_frame) {
            return Err(HepListenError::MaxFrame(settings.max_frame));
        }
        let bind_error = |input, addr| {
            move |source| HepListenError::Bind {
                input,
                addr,
                source,
            }
        };
        let udp = match settings.udp {
            Some(addr) => Some(
                UdpSocket::bind(addr)
                    .await
                    .map_err(bind_error("UDP", addr))?,
            ),
            None => None,
        };
        let tcp = match settings.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(bind_error("TCP", addr))?,
            ),
            None => None,
        };
        let tls = match &settings.tls {
            Some((addr, config)) => Some((
                TcpListener::bind(addr)
                    .await
                    .map_err(bind_error("TLS", *addr))?,
                TlsAcceptor::from(Arc::clone(config)),
            )),
            None => None,
        };
        let auth = match &settings.auth_key {
            Some(key) => HepAuth::key(key),
            None => HepAuth::none(),
        };
        let connections = Arc::new(Semaphore::new(settings.max_connections));
        Ok(HepListener {
            udp,
            tcp,
            tls,
            connections,
            shared: Arc::new(Shared {
                settings,
                auth,
                stats,
                metrics,
                tx,
                sequence: AtomicU64::new(0),
                queued_bytes: Arc::new(AtomicUsize::new(0)),
                per_source: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The bound UDP address (with the port the system chose for port 0).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().and_then(|s| s.local_addr().ok())
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|s| s.local_addr().ok())
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(s, _)| s.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled, then closes every connection and returns once
    /// all tasks have ended.
    ///
    /// A panic of a connection's task or of one datagram's handling goes to `panics` (see the
    /// module doc); a panic of a loop itself is resumed here, ending `run` with it.
    pub async fn run(self, shutdown: CancellationToken, panics: PanicHook) {
        let mut tasks = JoinSet::new();
        if let Some(socket) = self.udp {
            tasks.spawn(udp_loop(
                socket,
                Arc::clone(&self.shared),
                shutdown.clone(),
                Arc::clone(&panics),
            ));
        }
        if let Some(listener) = self.tcp {
            tasks.spawn(accept_loop(
                listener,
                None,
                Arc::clone(&self.shared),
                Arc::clone(&self.connections),
                shutdown.clone(),
                Arc::clone(&panics),
            ));
        }
        if let Some((listener, acceptor)) = self.tls {
            tasks.spawn(accept_loop(
                listener,
                Some(acceptor),
                Arc::clone(&self.shared),
                Arc::clone(&self.connections),
                shutdown.clone(),
                Arc::clone(&panics),
            ));
        }
        while let Some(ended) = tasks.join_next().await {
            if let Err(e) = ended {
                if e.is_panic() {
                    // The others are aborted as the set drops; the caller's supervisor
                    // catches this one.
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

async fn udp_loop(
    socket: UdpSocket,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    panics: PanicHook,
) {
    // One byte more than the largest frame: a longer datagram shows up as a length mismatch
    // instead of being silently cut to a frame-sized prefix.
    let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
    let mut read_drops = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                shared.kernel_drops(&socket);
                return;
            }
            _ = read_drops.tick() => shared.kernel_drops(&socket),
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::panics::inject("hep_datagram");
                        shared.frame(&buf[..n], from, HepInput::Udp);
                    }));
                    if let Err(payload) = handled {
                        panics("hep_datagram", payload);
                    }
                }
                Err(e) => {
                    // ICMP errors from earlier sends and the like; the socket stays usable.
                    bump(&shared.stats.io_errors);
                    tracing::debug!(error = %crate::report::Chain(&e), "HEP UDP receive failed.");
                }
            },
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    panics: PanicHook,
) {
    // A connection task that panicked: dropped (its slots given back as it unwound),
    // handed to the hook; the listener serves on.
    let reaped = |ended: Result<(), tokio::task::JoinError>| {
        if let Err(e) = ended {
            if e.is_panic() {
                panics("hep_connection", e.into_panic());
            }
        }
    };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            // Reap finished connection tasks so the set does not grow with the history.
            Some(ended) = connections.join_next(), if !connections.is_empty() => reaped(ended),
            accepted = listener.accept() => {
                crate::panics::inject("hep_listener");
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, aborted handshakes: keep accepting, but
                        // not in a hot loop.
                        bump(&shared.stats.io_errors);
                        tracing::warn!(error = %crate::report::Chain(&e), "HEP accept failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    shared.closed(&shared.stats.connections_refused, "refused_max_connections", peer);
                    continue; // dropping the stream closes it
                };
                let Some(source_slot) = SourceSlot::take(&shared, peer.ip()) else {
                    shared.closed(&shared.stats.connections_refused_per_source, "refused_per_source", peer);
                    continue;
                };
                bump(&shared.stats.connections);
                let shared = Arc::clone(&shared);
                let tls = tls.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    connection(stream, peer, tls, &shared, shutdown).await;
                    drop(source_slot);
                    drop(permit);
                });
            }
        }
    }
    // Connections watch the same signal and end by themselves; wait for them.
    while let Some(ended) = connections.join_next().await {
        reaped(ended);
    }
}

/// One connection's place in the per-address count; given back on drop.
struct SourceSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl SourceSlot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<SourceSlot> {
        let mut open = shared.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= shared.settings.max_connections_per_source {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            shared: Arc::clone(shared),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: &Shared,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // The first valid frame must come within this, handshake included.
    let first_frame_by = tokio::time::Instant::now() + shared.settings.first_frame_timeout;
    match tls {
        None => {
            serve_stream(
                stream,
                peer,
                HepInput::Tcp,
                shared,
                first_frame_by,
                shutdown,
            )
            .await
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(
                shared
                    .settings
                    .tls_handshake_timeout
                    .min(shared.settings.first_frame_timeout),
                acceptor.accept(stream),
            );
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                done = handshake => match done {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %crate::report::Chain(&e), "HEP TLS handshake failed.");
                        shared.closed(&shared.stats.tls_handshake_failures, "tls_handshake_failed", peer);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "HEP TLS handshake timed out.");
                        shared.closed(&shared.stats.tls_handshake_failures, "tls_handshake_failed", peer);
                        return;
                    }
                },
            };
            serve_stream(
                stream,
                peer,
                HepInput::Tls,
                shared,
                first_frame_by,
                shutdown,
            )
            .await;
        }
    }
}

/// Reads frames back to back from one connection until it closes, idles out or shutdown.
/// Until a first frame is accepted, the connection lives only until `first_frame_by`.
async fn serve_stream<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    input: HepInput,
    shared: &Shared,
    first_frame_by: tokio::time::Instant,
    shutdown: CancellationToken,
) {
    let max_frame = shared.settings.max_frame;
    // Never more than one frame plus one read is held: the buffer is bounded by max_frame.
    let mut buf: Vec<u8> = Vec::with_capacity(max_frame.min(16 * 1024));
    let mut chunk = vec![0u8; 16 * 1024];
    let mut trusted = false;
    loop {
        let deadline = if trusted {
            tokio::time::Instant::now() + shared.settings.idle_timeout
        } else {
            first_frame_by
        };
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tokio::time::timeout_at(deadline, stream.read(&mut chunk)) => r,
        };
        let n = match read {
            Err(_) if !trusted => {
                shared.closed(
                    &shared.stats.first_frame_timeouts,
                    "no_valid_first_frame",
                    peer,
                );
                return;
            }
            Err(_) => {
                shared.closed(&shared.stats.idle_timeouts, "idle", peer);
                return;
            }
            Ok(Err(e)) => {
                bump(&shared.stats.io_errors);
                tracing::debug!(%peer, error = %crate::report::Chain(&e), "HEP connection read failed.");
                return;
            }
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        loop {
            match hep::frame_len(&buf[used..], max_frame) {
                Framing::Frame(len) => {
                    crate::panics::inject("hep_connection");
                    trusted |= shared.frame(&buf[used..used + len], peer, input);
                    used += len;
                }
                Framing::Garbage(skip) => {
                    shared
                        .stats
                        .resync_bytes
                        .fetch_add(skip as u64, Ordering::Relaxed);
                    used += skip;
                }
                Framing::NeedMore => break,
            }
        }
        buf.drain(..used);
    }
}

/// Datagrams the kernel dropped at `socket` because its receive buffer was full, since the
/// socket was made: the `drops` column of its line in `/proc/net/udp` or `udp6` (this
/// network namespace's), found by the socket's inode. `None` where that cannot be read
/// (not Linux, no `/proc`).
fn udp_socket_drops(socket: &UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .ok()?
        .ino();
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .find_map(|table| udp_drops(&std::fs::read_to_string(table).ok()?, inode))
}

/// The `drops` column (the last) of the line of socket `inode` (the 10th column) in a
/// `/proc/net/udp` table.
pub fn udp_drops(table: &str, inode: u64) -> Option<u64> {
    // No allocation a line: on a PBX the table holds a line for every RTP socket.
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.nth(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        fields.last()?.parse().ok()
    })
}

impl Shared {
    /// The UDP socket's kernel drops into `teledge_source_kernel_drops_total{source="hep"}`
    /// (the socket's count only grows; announced upstream with the input's other losses).
    fn kernel_drops(&self, socket: &UdpSocket) {
        if let Some(n) = udp_socket_drops(socket) {
            self.metrics.source_kernel_drops.with(&["hep"]).raise_to(n);
        }
    }

    /// A connection refused or closed by a bound: the listener's own count, and the event
    /// (logged and counted in the agent's metrics once).
    fn closed(&self, counter: &AtomicU64, reason: &'static str, peer: SocketAddr) {
        bump(counter);
        HepConnectionRefused { reason, peer }.emit(&self.metrics);
    }

    /// A frame refused (malformed, not authenticated): the event of its kind.
    fn refused(&self, kind: &'static str) {
        DecodeErrors {
            source: "hep",
            kind,
            count: 1,
        }
        .emit(&self.metrics);
    }

    /// A frame accepted and then dropped by a bound of the queue: lost, told once.
    fn dropped(&self, reason: DropReason) {
        RecordsDropped { reason, count: 1 }.emit(&self.metrics);
    }

    /// Decodes, checks and forwards one frame; never blocks. True when the frame was valid
    /// and authenticated (whether or not the queue had room for it).
    fn frame(&self, bytes: &[u8], from: SocketAddr, input: HepInput) -> bool {
        let stats = &self.stats;
        let frame = match hep::parse_with_limit(bytes, self.settings.max_decompressed) {
            Ok(f) => f,
            Err(e) => {
                if let Some(c) = stats.malformed.get(e.kind().index()) {
                    bump(c);
                }
                tracing::debug!(%from, error = %crate::report::Chain(&e), "HEP frame refused.");
                self.refused("hep_malformed");
                return false;
            }
        };
        if let Err(e) = self.auth.check(&frame) {
            bump(&stats.auth_rejected);
            tracing::debug!(%from, error = %crate::report::Chain(&e), "HEP frame refused.");
            self.refused("hep_auth_rejected");
            return false;
        }
        bump(&stats.frames);
        stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        stats
            .vendor_chunks
            .fetch_add(u64::from(frame.vendor_chunks), Ordering::Relaxed);
        let cost = EVENT_OVERHEAD
            + frame.payload.len()
            + frame.correlation_id.as_ref().map_or(0, |c| c.len());
        // Reserve the bytes first; give them back when over the bound.
        let before = self.queued_bytes.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.settings.max_queue_bytes {
            self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
            bump(&stats.dropped_queue_bytes);
            self.dropped(DropReason::HepQueueBytes);
            return true;
        }
        let event = HepEvent {
            frame: frame.into_owned(),
            received_from: from,
            input,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            charge: QueueCharge {
                queued: Some(Arc::clone(&self.queued_bytes)),
                bytes: cost,
            },
        };
        // A refused event is dropped here, and its charge with it.
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&stats.dropped_full);
                self.dropped(DropReason::HepQueueFull);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => bump(&stats.dropped_closed),
        }
        true
    }
}

/// Why a frame was refused by [`HepAuth::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("HEP frame carries no authentication key")]
    Missing,
    #[error("HEP frame carries a wrong authentication key")]
    Wrong,
}

/// The authentication key a listener expects (chunk 0x000e). Without a configured key every
/// frame is accepted, keyed or not.
#[derive(Clone, Default)]
pub struct HepAuth {
    /// SHA-256 of the key: comparing digests takes the same time whatever the length of the
    /// key sent, so neither its bytes nor its length leak through timing.
    expected: Option<[u8; 32]>,
}

impl std::fmt::Debug for HepAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key (not even its digest).
        f.debug_struct("HepAuth")
            .field("key_configured", &self.expected.is_some())
            .finish()
    }
}

impl HepAuth {
    /// Accepts every frame.
    pub fn none() -> Self {
        HepAuth { expected: None }
    }

    /// Accepts only frames carrying this key.
    pub fn key(key: &[u8]) -> Self {
        HepAuth {
            expected: Some(digest(key)),
        }
    }

    pub fn is_required(&self) -> bool {
        self.expected.is_some()
    }

    pub fn check(&self, frame: &HepFrame<'_>) -> Result<(), AuthError> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let Some(sent) = frame.auth_key.as_deref() else {
            return Err(AuthError::Missing);
        };
        let got = digest(sent);
        // Constant time: every byte is compared, whatever differs first.
        let diff = expected
            .iter()
            .zip(got.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(AuthError::Wrong)
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::decode::hep::parse;
    use crate::decode::hep::test_frames::Builder;

    /// The `drops` column of a socket's line, found by its inode (a real `/proc/net/udp`
    /// line of Linux 6.1).
    #[test]
    fn udp_drops_are_read_from_the_sockets_own_line() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops             \n\
  312: 0100007F:2364 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6114507 2 0000000000000000 0\n\
  313: 0100007F:2365 00000000:0000 07 00000000:00034200 00:00000000 00000000     0        0 6114508 2 0000000000000000 2961\n";
        assert_eq!(udp_drops(table, 6_114_507), Some(0));
        assert_eq!(udp_drops(table, 6_114_508), Some(2961));
        assert_eq!(udp_drops(table, 1), None);
        assert_eq!(udp_drops("", 1), None);
    }

    #[test]
    fn auth_is_constant_time_and_strict() {
        let with = |key: Option<&[u8]>| {
            let mut b = Builder::v4();
            if let Some(k) = key {
                b = b.c(0x0e, k);
            }
            b.c(15, b"x").build()
        };
        let keyed = with(Some(b"myHep"));
        let other = with(Some(b"myHep2"));
        let none = with(None);
        let auth = HepAuth::key(b"myHep");
        assert!(auth.is_required());
        assert_eq!(auth.check(&parse(&keyed).unwrap()), Ok(()));
        assert_eq!(auth.check(&parse(&other).unwrap()), Err(AuthError::Wrong));
        assert_eq!(auth.check(&parse(&none).unwrap()), Err(AuthError::Missing));
        let open = HepAuth::none();
        assert_eq!(open.check(&parse(&none).unwrap()), Ok(()));
        assert_eq!(open.check(&parse(&other).unwrap()), Ok(()));
        assert!(!format!("{auth:?}").contains("myHep"));
    }
}
