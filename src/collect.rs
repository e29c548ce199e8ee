//! `teledge collect`: the receiving end of the uplink, small and real.
//!
//! # What it accepts
//!
//! It listens with rustls and requires a client certificate from the site CA. The certificate
//! must carry the clientAuth extended key usage, and its subject common name is the node id,
//! which must be 1 to 64 characters of `[A-Za-z0-9._-]` and neither `.` nor `..`: it names the
//! node's directory, so nothing else may reach the file system. A batch must claim that node
//! (`x-teledge-node` header and every record id `node:epoch:seq`), the sequence numbers of
//! each epoch must grow within the batch, new records are appended to
//! `<out>/<node>/<YYYY-MM-DD>.jsonl` (UTC day) and synced, and only then is the batch
//! acknowledged. A node's directory only ever holds that node's ids.
//!
//! # Deduplication and sequence regressions
//!
//! The collector keeps one watermark per node and store epoch (the highest sequence stored),
//! not every id: an agent sends each epoch's records in sequence order and re-sends only what
//! was not acknowledged. A record above the watermark is new. A record at or below it is a
//! duplicate only if the collector holds a record with the same id *and the same content*
//! (SHA-256 of the record's JSON text, which the agent re-sends byte for byte); it looks first
//! in the contents of the last [`RECENT_MAX`] records it stored for the node (a lost
//! acknowledgement re-sends at most the last batch, since the agent makes every
//! acknowledgement durable), then in the node's files, newest day first. A record at or below
//! the watermark with different content, or with an id that was never stored, means the
//! agent's sequence went backwards in an epoch (a spool restored from a snapshot, a store
//! cloned onto a second machine, an agent that reused an epoch): the whole batch is refused
//! with `409 Conflict`, nothing of it stored, the node, epoch and sequence logged at ERROR and
//! counted. The agent keeps such a batch — it is never acked as a duplicate, so it is never
//! deleted unseen — and moves its records to a new epoch (new ids), announced by an
//! `epoch_reused` gap record (see `teledge::uplink`).
//!
//! Memory is bounded by nodes × ([`MAX_EPOCHS_PER_NODE`] + [`RECENT_MAX`]), whatever the
//! volume; a batch that would give a node more epochs is refused (403). Watermarks and
//! recent contents are re-read from the output files at start, so both survive restarts;
//! lines whose id is not the directory's node are ignored with a warning and counted, and a
//! directory whose name is not a valid node id is ignored with a warning.
//!
//! # Writes
//!
//! A batch's new lines are written with one `write` and synced. Each line is
//! `{"id": "<node>:<epoch>:<seq>", "record": {...}}`; with `--stamp` it also carries
//! `"stored_at"`, the collector's clock (RFC 3339, UTC, microseconds) just before the write
//! and its sync, so the time from an event to its record being stored can be measured
//! (`scripts/bench-latency.sh`). Readers ignore it; the record's content is unchanged. If the write or the sync
//! fails (a full disk, an I/O error), the file is truncated back to its last good length, so
//! there is never a torn line nor a half-written batch that a retry would duplicate; the
//! batch is answered `503` and the agent retries. A torn last line left by a crash is cut off
//! before the next write.
//!
//! # Bounds (every one counted in [`CollectStats`] and logged when hit)
//!
//! - connections: at most `max_connections` open; more are accepted and closed at once;
//! - TLS handshakes: at most `max_handshakes` at a time, each within `handshake_timeout`,
//!   and at most `max_handshakes_per_address` of them from one source address (an IPv6
//!   /64), so one address that opens connections and sends nothing cannot hold every
//!   handshake slot and keep the nodes out;
//! - per node: at most `max_node_connections` connections; a node's batches are stored one at
//!   a time;
//! - request headers within `header_timeout` (slowloris), at most 64 KiB;
//! - a write (an answer, a fleet file) that waits `write_stall_timeout` for a peer that reads
//!   nothing back ends the connection (`stalled_writes`), so such a peer cannot hold its
//!   node's connections for ever;
//! - request body within `body_timeout`, at most `max_body` bytes compressed and
//!   `max_inflated` bytes inflated; inflating and storing run on the blocking pool, never on
//!   the async workers;
//! - at most `max_batches` bodies held and processed at once, so batches take at most
//!   `max_batches × (max_body + 2 × max_inflated)` of memory;
//! - an accept error (out of file descriptors, `EMFILE`) never ends the process: the loop backs
//!   off (10 ms doubling to 1 s) and goes on.
//!
//! # The bus
//!
//! With `--nats URL` (a [`BusConfig`]), every line of an accepted batch is also published
//! into a JetStream stream, exactly as an agent's JetStream sink would publish it (subject
//! `<prefix>.<node>.<kind>`, `Nats-Msg-Id` the record id, the line as payload; see
//! [`crate::uplink::nats`]), and the batch is acknowledged to the agent only once *every*
//! line has its PubAck; otherwise it is answered `503` (counted in `bus_failures`) and the
//! agent retries. Files come first when there are any (`--out`), so the sequence checks
//! above still refuse a regressed batch before anything is published; every line is
//! published, not only those new to the files, so a batch whose files were written but
//! whose publish failed still reaches the stream on the retry, where the duplicate window
//! drops what it already holds. Without `--out` the collector keeps no state at all and
//! several collectors behind a load balancer feed one stream: a batch retried through
//! another collector is deduplicated by the stream (within its duplicate window; the
//! watermark check against sequence regressions needs files). `--nats-create-stream`
//! makes the stream (subjects `<prefix>.>`, file storage, `--nats-replicas`,
//! `--nats-duplicate-window`) when it does not exist. `collect --from-nats` reads it back
//! into files ([`crate::bus`]).
//!
//! # Fleet repository
//!
//! With `--fleet DIR`, the collector also serves a TUF repository to its nodes, over the
//! same mutual TLS (any node certificate the collector accepts): `GET /v1/fleet/metadata/…`
//! and `GET /v1/fleet/targets/…` answer the files under `DIR/metadata` and `DIR/targets`;
//! path components are `[A-Za-z0-9._+~-]`, never `.`, `..` or empty, so nothing outside
//! `DIR` is reachable; a missing file is `404` (which ends the client's root rotation loop).
//! The collector verifies nothing in the repository: the nodes do, and a compromised
//! collector can only withhold updates (TUF's malicious mirror). A file larger than
//! `--max-body-bytes` is not served (503); files are read whole under the batch bound.
//!
//! # Logs
//!
//! INFO: node connections (address, node) and batches (node, batch, records, new,
//! duplicates); WARN: refusals with their reason and address; ERROR: sequence regressions and
//! storage failures, with the node and the file. Floods (refused connections, accept
//! errors) are logged at most once a second with running totals; a summary of the counters
//! is logged every minute when they changed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::uplink::nats::{NatsError, NatsFailureKind, Outgoing, Publisher};
use crate::uplink::tls::{server_config, ClientTls, TlsError};
use crate::uplink::{decode_body, Ack, BatchLine, NatsSettings};

/// Contents remembered per node to tell a re-sent record from a different one cheaply.
pub const RECENT_MAX: usize = 4096;
/// Store epochs kept per node: an agent starts a new one only when its spool is replaced
/// (wiped, re-imaged, quarantined), so more means a client that makes ids up.
pub const MAX_EPOCHS_PER_NODE: usize = 1024;
pub use crate::uplink::{valid_node_id, MAX_NODE_ID};

/// The collector's bounds (see the module doc).
#[derive(Debug, Clone)]
pub struct CollectLimits {
    pub max_connections: usize,
    pub max_handshakes: usize,
    /// Handshakes under way from one source address (an IPv6 /64).
    pub max_handshakes_per_address: usize,
    pub max_node_connections: usize,
    pub max_batches: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// A write waiting this long for the peer to read ends the connection.
    pub write_stall_timeout: Duration,
    /// Largest compressed batch accepted.
    pub max_body: usize,
    /// Largest inflated batch accepted.
    pub max_inflated: u64,
}

impl Default for CollectLimits {
    fn default() -> Self {
        CollectLimits {
            max_connections: 512,
            max_handshakes: 32,
            max_handshakes_per_address: 8,
            max_node_connections: 4,
            max_batches: 4,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            write_stall_timeout: Duration::from_secs(30),
            max_body: 16 << 20,
            max_inflated: 64 << 20,
        }
    }
}

/// Collector settings.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    pub listen: SocketAddr,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Where `<node>/<day>.jsonl` go; `None`: no files, the stream only (`bus` required).
    pub out_dir: Option<PathBuf>,
    pub tls12_allowed: bool,
    pub limits: CollectLimits,
    /// Adds `stored_at` to every line written (see "Writes" in the module doc).
    pub stamp: bool,
    /// A TUF repository (`DIR/metadata`, `DIR/targets`) served read-only to the nodes at
    /// `GET /v1/fleet/…` (see the module doc), or none.
    pub fleet_dir: Option<PathBuf>,
    /// Publish what is accepted into a JetStream stream (see "The bus" in the module doc).
    pub bus: Option<BusConfig>,
}

/// The collector's JetStream side: where to publish (or, for `collect --from-nats`, what
/// to read) and with what identity.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub nats: NatsSettings,
    /// TLS towards NATS (the site CA, a client certificate with clientAuth).
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub tls12_allowed: bool,
    /// The PubAck (and API request) timeout.
    pub timeout: Duration,
    /// Create the stream (`nats.stream`, subjects `<prefix>.>`, file storage) when missing.
    pub create_stream: Option<StreamPlan>,
}

/// The stream `collect --nats-create-stream` makes when it does not exist.
#[derive(Debug, Clone, Copy)]
pub struct StreamPlan {
    pub replicas: usize,
    /// How long the stream remembers a `Nats-Msg-Id`: resends within it are dropped.
    pub duplicate_window: Duration,
}

/// The collector's counters.
#[derive(Debug, Default, Serialize)]
pub struct CollectStats {
    pub accept_errors: AtomicU64,
    pub connections: AtomicU64,
    /// Closed at once: `max_connections` were open.
    pub refused_connections: AtomicU64,
    /// Closed at once: `max_handshakes` were under way.
    pub refused_handshakes: AtomicU64,
    /// Closed at once: `max_handshakes_per_address` were under way from the same address.
    pub refused_address_handshakes: AtomicU64,
    /// Connections ended because a write waited `write_stall_timeout` for the peer.
    pub stalled_writes: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub failed_handshakes: AtomicU64,
    /// Client certificates without clientAuth or a valid node id.
    pub refused_certificates: AtomicU64,
    /// Closed: the node had `max_node_connections` open.
    pub refused_node_connections: AtomicU64,
    pub batches: AtomicU64,
    pub records_stored: AtomicU64,
    pub duplicates: AtomicU64,
    /// Batches answered 4xx (malformed, other node, too large, too slow) or 503 busy.
    pub refused_batches: AtomicU64,
    /// Batches refused with 409: a sequence went backwards in an epoch.
    pub sequence_regressions: AtomicU64,
    /// Batches not stored because a write or sync failed (answered 503, file truncated back).
    pub storage_failures: AtomicU64,
    /// Lines of another node's ids found in a node's directory at start (ignored).
    pub foreign_ids_ignored: AtomicU64,
    /// Batches not acknowledged because JetStream did not acknowledge every record (503).
    pub bus_failures: AtomicU64,
    /// Records JetStream stored as new, and as duplicates (already in the stream).
    pub bus_published: AtomicU64,
    pub bus_duplicates: AtomicU64,
}

impl CollectStats {
    fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn total(&self) -> u64 {
        let all = [
            &self.accept_errors,
            &self.connections,
            &self.refused_connections,
            &self.refused_handshakes,
            &self.refused_address_handshakes,
            &self.stalled_writes,
            &self.failed_handshakes,
            &self.refused_certificates,
            &self.refused_node_connections,
            &self.batches,
            &self.refused_batches,
            &self.sequence_regressions,
            &self.storage_failures,
            &self.bus_failures,
        ];
        all.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Why the collector stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("NATS")]
    Bus(#[from] NatsError),
}

/// Publishes a batch's lines into the stream, each under its record id; `Ok` once every
/// one has its PubAck.
async fn publish_lines(
    bus: &Publisher,
    prefix: &str,
    node: &str,
    lines: &[BatchLine],
) -> Result<crate::uplink::nats::Published, NatsError> {
    let mut messages = Vec::with_capacity(lines.len());
    for line in lines {
        let message = Outgoing::line(prefix, node, line.id.clone(), line.record.get().as_bytes())
            .map_err(|e| NatsError {
            kind: NatsFailureKind::Refused,
            reason: format!("record line: {e}"),
        })?;
        messages.push(message);
    }
    bus.publish(messages).await
}

/// Connects to NATS for publishing (`parallel` batches at once), and makes the stream when
/// asked to and missing.
pub async fn connect_bus(bus: &BusConfig, parallel: usize) -> Result<Publisher, CollectError> {
    let tls = ClientTls::new(
        &bus.ca_file,
        &bus.cert_file,
        &bus.key_file,
        bus.tls12_allowed,
    )?;
    let publisher =
        Publisher::connect(&bus.nats, &tls, bus.timeout, "teledge collect", parallel).await?;
    if let (Some(plan), Some(name)) = (bus.create_stream, &bus.nats.stream) {
        let config = async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.>", bus.nats.subject_prefix)],
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: plan.replicas,
            duplicate_window: plan.duplicate_window,
            ..Default::default()
        };
        publisher
            .context()
            .get_or_create_stream(config)
            .await
            .map_err(|e| NatsError {
                kind: NatsFailureKind::NoStream,
                reason: format!("stream {name}: {}", crate::report::chain(&e)),
            })?;
        tracing::info!(stream = %name, replicas = plan.replicas, "JetStream stream ready.");
    }
    Ok(publisher)
}

/// Why a client certificate does not name a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRefusal {
    #[error("certificate unreadable")]
    Unreadable,
    #[error("certificate lacks the clientAuth extended key usage")]
    NoClientAuth,
    #[error("certificate has no common name")]
    NoCommonName,
    #[error(
        "common name {0:?} is not a valid node id ([A-Za-z0-9._-], 1-64 characters, not . or ..)"
    )]
    BadNodeId(String),
}

/// The node a client certificate names: clientAuth EKU required, CN a valid node id.
pub fn node_of_client_certificate(cert: &CertificateDer<'_>) -> Result<String, CertificateRefusal> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| CertificateRefusal::Unreadable)?;
    // webpki already refuses an EKU without clientAuth; a certificate without any EKU (any
    // purpose) is refused here, so a server certificate of the site CA cannot act as a node.
    if !crate::uplink::tls::has_client_auth(&parsed) {
        return Err(CertificateRefusal::NoClientAuth);
    }
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .ok_or(CertificateRefusal::NoCommonName)?;
    let cn = cn.as_str().map_err(|_| CertificateRefusal::NoCommonName)?;
    if !valid_node_id(cn) {
        return Err(CertificateRefusal::BadNodeId(cn.to_owned()));
    }
    Ok(cn.to_owned())
}

/// Logs at most once a second (floods of refusals must not flood the log).
#[derive(Debug, Default)]
struct Throttle(AtomicU64);

impl Throttle {
    fn ready(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.0.swap(now, Ordering::Relaxed) != now
    }
}

#[derive(Debug)]
struct Shared {
    out_dir: Option<PathBuf>,
    bus: Option<Publisher>,
    bus_prefix: String,
    stamp: bool,
    fleet_dir: Option<PathBuf>,
    limits: CollectLimits,
    stats: Arc<CollectStats>,
    nodes: Mutex<HashMap<String, Arc<Mutex<NodeStore>>>>,
    node_connections: Mutex<HashMap<String, usize>>,
    handshakes: Arc<Semaphore>,
    /// Handshakes under way per source address.
    address_handshakes: Arc<crate::admission::PerAddress>,
    batches: Arc<Semaphore>,
    flood_log: Throttle,
}

impl Shared {
    /// The node's file store (`None` without an output directory).
    fn node(&self, node: &str) -> Option<Arc<Mutex<NodeStore>>> {
        let out_dir = self.out_dir.as_ref()?;
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            nodes
                .entry(node.to_owned())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(NodeStore::new(
                        node.to_owned(),
                        out_dir.join(node),
                    )))
                })
                .clone(),
        )
    }
}

/// A node's connection slot, given back when dropped.
struct NodeSlot {
    shared: Arc<Shared>,
    node: String,
}

impl NodeSlot {
    fn take(shared: &Arc<Shared>, node: &str) -> Option<NodeSlot> {
        let mut open = shared
            .node_connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = open.entry(node.to_owned()).or_insert(0);
        if *count >= shared.limits.max_node_connections {
            return None;
        }
        *count += 1;
        Some(NodeSlot {
            shared: shared.clone(),
            node: node.to_owned(),
        })
    }
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .node_connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.node) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.node);
            }
        }
    }
}

/// Runs the collector until the process ends. Prints the bound address on stdout first
/// (`listening <addr>`), so a caller that asked for port 0 learns the port.
pub async fn run(config: CollectConfig) -> Result<(), CollectError> {
    let tls = server_config(
        &config.ca_file,
        &config.cert_file,
        &config.key_file,
        config.tls12_allowed,
    )?;
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| CollectError::Io { path, source }
    };
    let stats = Arc::new(CollectStats::default());
    let mut nodes = HashMap::new();
    if let Some(out_dir) = &config.out_dir {
        std::fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
        nodes = load_nodes(out_dir, &stats).map_err(io_error(out_dir))?;
        tracing::info!(
            nodes = nodes.len(),
            node_epochs = nodes.values().map(|n| n.through.len()).sum::<usize>(),
            foreign_ids_ignored = stats.foreign_ids_ignored.load(Ordering::Relaxed),
            out = %out_dir.display(),
            "Collector state loaded."
        );
    }
    let bus = match &config.bus {
        Some(bus) => Some(connect_bus(bus, config.limits.max_batches).await?),
        None => None,
    };
    let limits = config.limits.clone();
    let shared = Arc::new(Shared {
        out_dir: config.out_dir.clone(),
        bus,
        bus_prefix: config
            .bus
            .as_ref()
            .map(|b| b.nats.subject_prefix.clone())
            .unwrap_or_default(),
        stamp: config.stamp,
        fleet_dir: config.fleet_dir.clone(),
        stats: stats.clone(),
        nodes: Mutex::new(
            nodes
                .into_iter()
                .map(|(k, v)| (k, Arc::new(Mutex::new(v))))
                .collect(),
        ),
        node_connections: Mutex::new(HashMap::new()),
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes.max(1))),
        address_handshakes: crate::admission::PerAddress::new(limits.max_handshakes_per_address),
        batches: Arc::new(Semaphore::new(limits.max_batches.max(1))),
        flood_log: Throttle::default(),
        limits,
    });
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| CollectError::Listen {
                addr: config.listen,
                source,
            })?;
    let local = listener
        .local_addr()
        .map_err(|source| CollectError::Listen {
            addr: config.listen,
            source,
        })?;
    println!("listening {local}");
    tracing::info!(%local, "Collector listening.");
    tokio::spawn(log_summary(stats.clone()));
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(Semaphore::new(shared.limits.max_connections.max(1)));
    let mut backoff = Duration::from_millis(10);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, a connection reset before accept: none of them is
                // a reason to stop serving. The pending connection stays in the backlog.
                let n = CollectStats::bump(&stats.accept_errors);
                if shared.flood_log.ready() {
                    tracing::warn!(error = %crate::report::Chain(&e), accept_errors = n, wait_ms = backoff.as_millis() as u64, "Accept failed; backing off.");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            let n = CollectStats::bump(&stats.refused_connections);
            if shared.flood_log.ready() {
                tracing::warn!(%peer, refused_connections = n, max = shared.limits.max_connections, "Too many connections; refused.");
            }
            drop(tcp);
            continue;
        };
        CollectStats::bump(&stats.connections);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(tcp, peer, acceptor, shared).await;
            drop(permit);
        });
    }
}

/// Logs the counters once a minute when they changed.
async fn log_summary(stats: Arc<CollectStats>) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let now = stats.total();
        if now != last {
            last = now;
            let counters = serde_json::to_string(&*stats).unwrap_or_default();
            tracing::info!(%counters, "Collector counters.");
        }
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let stats = &shared.stats;
    // The address's share first: a flood from one source is refused here and leaves the
    // global handshake slots to everyone else.
    let Some(address_slot) = shared.address_handshakes.take(peer.ip()) else {
        let n = CollectStats::bump(&stats.refused_address_handshakes);
        if shared.flood_log.ready() {
            tracing::warn!(%peer, refused_address_handshakes = n, max = shared.limits.max_handshakes_per_address, "Too many TLS handshakes under way from this address; refused.");
        }
        return;
    };
    let Ok(handshake_slot) = shared.handshakes.clone().try_acquire_owned() else {
        let n = CollectStats::bump(&stats.refused_handshakes);
        if shared.flood_log.ready() {
            tracing::warn!(%peer, refused_handshakes = n, max = shared.limits.max_handshakes, "Too many TLS handshakes under way; refused.");
        }
        return;
    };
    let (tcp, stalled) = crate::admission::StallGuard::new(tcp, shared.limits.write_stall_timeout);
    let tls =
        match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                CollectStats::bump(&stats.failed_handshakes);
                tracing::warn!(%peer, error = %crate::report::Chain(&e), "TLS handshake refused.");
                return;
            }
            Err(_) => {
                let n = CollectStats::bump(&stats.failed_handshakes);
                if shared.flood_log.ready() {
                    tracing::warn!(%peer, failed_handshakes = n, "TLS handshake timed out.");
                }
                return;
            }
        };
    drop(handshake_slot);
    drop(address_slot);
    let node = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(node_of_client_certificate)
    {
        Some(Ok(node)) => node,
        Some(Err(reason)) => {
            CollectStats::bump(&stats.refused_certificates);
            tracing::warn!(%peer, %reason, "Client certificate refused.");
            return;
        }
        None => {
            CollectStats::bump(&stats.refused_certificates);
            tracing::warn!(%peer, "No client certificate; refused.");
            return;
        }
    };
    let Some(_slot) = NodeSlot::take(&shared, &node) else {
        CollectStats::bump(&stats.refused_node_connections);
        tracing::warn!(%peer, %node, max = shared.limits.max_node_connections, "Too many connections from this node; refused.");
        return;
    };
    tracing::info!(%peer, %node, "Node connected.");
    let service = {
        let shared = shared.clone();
        let node = node.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            let node = node.clone();
            async move { Ok::<_, hyper::Error>(handle(req, &node, peer, &shared).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .max_buf_size(64 << 10);
    match builder.serve_connection(TokioIo::new(tls), service).await {
        Ok(()) => tracing::debug!(%peer, %node, "Node disconnected."),
        Err(_) if stalled.load(Ordering::Relaxed) => {
            let n = CollectStats::bump(&stats.stalled_writes);
            tracing::warn!(%peer, %node, stalled_writes = n, wait_ms = shared.limits.write_stall_timeout.as_millis() as u64, "Node read nothing back; connection closed.");
        }
        Err(e) => {
            tracing::info!(%peer, %node, error = %crate::report::Chain(&e), "Node connection ended.")
        }
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn handle(
    req: Request<Incoming>,
    node: &str,
    peer: SocketAddr,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let stats = &shared.stats;
    let refuse = |status: StatusCode, reason: String| {
        CollectStats::bump(&stats.refused_batches);
        tracing::warn!(%peer, %node, status = status.as_u16(), %reason, "Batch refused.");
        reply(status, reason)
    };
    if req.method() == hyper::Method::GET {
        if let Some(path) = req
            .uri()
            .path()
            .strip_prefix(crate::fleet::transport::FLEET_PREFIX)
        {
            return fleet_file(shared, node, peer, path).await;
        }
    }
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/batches" {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {} {}", req.method(), req.uri().path()),
        );
    }
    let claimed = req
        .headers()
        .get("x-teledge-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if claimed != node {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("certificate is for node {node:?}, batch claims {claimed:?}"),
        );
    }
    let batch = req
        .headers()
        .get("x-teledge-batch")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    // A bounded number of bodies held at once: memory stays bounded whatever the clients do.
    let limits = &shared.limits;
    let slot =
        match tokio::time::timeout(limits.body_timeout, shared.batches.clone().acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            _ => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "collector busy; retry".into(),
                )
            }
        };
    let body = match tokio::time::timeout(
        limits.body_timeout,
        Limited::new(req.into_body(), limits.max_body).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("batch larger than {} bytes", limits.max_body),
            )
        }
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("body: {}", crate::report::chain(&*e)),
            )
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {:?}", limits.body_timeout),
            )
        }
    };
    let store = shared.node(node);
    let stamp = shared.stamp;
    let max_inflated = limits.max_inflated;
    let node_owned = node.to_owned();
    // Inflating and writing block: off the async workers.
    let outcome = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let inflated = decode_body(&body, max_inflated).map_err(|e| {
            HandleError::Refused(
                StatusCode::BAD_REQUEST,
                format!("body: {}", crate::report::chain(&e)),
            )
        })?;
        drop(body);
        let lines = parse_batch(&node_owned, &inflated).map_err(|e| match e {
            BatchError::Malformed(m) => HandleError::Refused(StatusCode::BAD_REQUEST, m),
            BatchError::OtherNode(m) => HandleError::Refused(StatusCode::FORBIDDEN, m),
        })?;
        drop(inflated);
        let Some(through) = lines.last().map(|l| l.id.clone()) else {
            return Err(HandleError::Refused(
                StatusCode::BAD_REQUEST,
                "empty batch".into(),
            ));
        };
        let stored = match store {
            Some(store) => {
                let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
                Some(store.store(&lines, stamp)?)
            }
            None => None,
        };
        Ok((stored, lines, through))
    })
    .await;
    // Into the stream too: every line, not only those new to the files (a batch whose
    // publish failed after its files were written comes back as duplicates there, and must
    // still reach the stream, whose duplicate window drops what it already holds).
    let outcome = match outcome {
        Ok(Ok((stored, lines, through))) => match &shared.bus {
            Some(bus) => match publish_lines(bus, &shared.bus_prefix, node, &lines).await {
                Ok(published) => {
                    stats
                        .bus_published
                        .fetch_add(published.new, Ordering::Relaxed);
                    stats
                        .bus_duplicates
                        .fetch_add(published.duplicates, Ordering::Relaxed);
                    let counts = stored.unwrap_or((published.new, published.duplicates));
                    Ok(Ok((counts, lines.len(), through)))
                }
                Err(e) => {
                    let n = CollectStats::bump(&stats.bus_failures);
                    tracing::error!(%node, %batch, kind = ?e.kind, error = %e, bus_failures = n, "JetStream did not acknowledge every record; batch not acknowledged.");
                    return reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("bus failure; retry: {e}"),
                    );
                }
            },
            None => Ok(Ok((stored.unwrap_or_default(), lines.len(), through))),
        },
        Ok(Err(e)) => Ok(Err(e)),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(Ok(((accepted, duplicates), records, through))) => {
            CollectStats::bump(&stats.batches);
            stats.records_stored.fetch_add(accepted, Ordering::Relaxed);
            stats.duplicates.fetch_add(duplicates, Ordering::Relaxed);
            tracing::info!(
                %node,
                %batch,
                records,
                new = accepted,
                duplicates,
                "Batch stored."
            );
            let ack = Ack {
                batch,
                accepted,
                duplicates,
                through,
            };
            reply(StatusCode::OK, serde_json::to_vec(&ack).unwrap_or_default())
        }
        Ok(Err(HandleError::Refused(status, reason))) => refuse(status, reason),
        Ok(Err(HandleError::Store(StoreError::Regression {
            epoch,
            seq,
            id,
            why,
        }))) => {
            let n = CollectStats::bump(&stats.sequence_regressions);
            tracing::error!(%peer, %node, epoch, seq, %id, why, sequence_regressions = n, "Sequence went backwards in an epoch; batch refused, nothing stored. The agent keeps it and sends it again under a new epoch.");
            reply(
                StatusCode::CONFLICT,
                format!("sequence regression: node {node} epoch {epoch} seq {seq} ({id}): {why}; the agent's store reused an epoch"),
            )
        }
        Ok(Err(HandleError::Store(StoreError::TooManyEpochs(held)))) => refuse(
            StatusCode::FORBIDDEN,
            format!("node {node} already has {held} store epochs (at most {MAX_EPOCHS_PER_NODE}); batch refused"),
        ),
        Ok(Err(HandleError::Store(StoreError::Io { path, source }))) => {
            CollectStats::bump(&stats.storage_failures);
            tracing::error!(%node, file = %path.display(), error = %source, "Cannot store a batch; not acknowledged, file truncated back.");
            reply(StatusCode::SERVICE_UNAVAILABLE, "storage failure; retry")
        }
        Err(e) => {
            CollectStats::bump(&stats.storage_failures);
            tracing::error!(%node, error = %crate::report::Chain(&e), "Batch task failed; not acknowledged.");
            reply(StatusCode::SERVICE_UNAVAILABLE, "internal failure; retry")
        }
    }
}

/// A file of the fleet repository: only `metadata/…` and `targets/…` under `--fleet DIR`
/// (no other path reaches the file system), read on the blocking pool under the same
/// bound as batch bodies (at most `max_batches` held at once, each at most `max_body`).
async fn fleet_file(
    shared: &Shared,
    node: &str,
    peer: SocketAddr,
    path: &str,
) -> Response<Full<Bytes>> {
    let Some(file) = shared
        .fleet_dir
        .as_deref()
        .and_then(|dir| crate::fleet::tuf::repository_path(dir, path))
    else {
        return reply(StatusCode::NOT_FOUND, "no such repository file");
    };
    let Ok(Ok(slot)) = tokio::time::timeout(
        shared.limits.body_timeout,
        shared.batches.clone().acquire_owned(),
    )
    .await
    else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "collector busy; retry");
    };
    let max = shared.limits.max_body as u64;
    let read = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let meta = std::fs::metadata(&file)?;
        if !meta.is_file() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        if meta.len() > max {
            return Err(std::io::Error::other(format!(
                "{} bytes, more than --max-body-bytes {max}",
                meta.len()
            )));
        }
        std::fs::read(&file)
    })
    .await;
    match read {
        Ok(Ok(bytes)) => {
            tracing::debug!(%peer, %node, path, bytes = bytes.len(), "Fleet file served.");
            reply(StatusCode::OK, bytes)
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            reply(StatusCode::NOT_FOUND, "no such repository file")
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, %node, path, error = %e, "Fleet file not served.");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "repository file unreadable",
            )
        }
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "internal failure; retry"),
    }
}

enum HandleError {
    Refused(StatusCode, String),
    Store(StoreError),
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        HandleError::Store(e)
    }
}

/// Why a batch body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchError {
    Malformed(String),
    /// A record claims another node than the certificate's.
    OtherNode(String),
}

/// Parses an inflated batch body; every record must belong to `node`, and each epoch's
/// sequence numbers must grow. Pure, for fuzzing.
pub fn parse_batch(node: &str, inflated: &[u8]) -> Result<Vec<BatchLine>, BatchError> {
    let mut lines = Vec::new();
    let mut last: HashMap<u64, u64> = HashMap::new();
    for (n, line) in inflated.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let parsed: BatchLine = serde_json::from_slice(line)
            .map_err(|e| BatchError::Malformed(format!("line {}: {e}", n + 1)))?;
        let Some((epoch, seq)) = id_of_node(node, &parsed.id) else {
            return Err(BatchError::OtherNode(format!(
                "record {} is not an id of node {node} (node:epoch:seq)",
                parsed.id
            )));
        };
        if last.insert(epoch, seq).is_some_and(|prev| seq <= prev) {
            return Err(BatchError::Malformed(format!(
                "line {}: record {} out of sequence order",
                n + 1,
                parsed.id
            )));
        }
        lines.push(parsed);
    }
    Ok(lines)
}

/// Why a batch was not stored.
#[derive(Debug)]
enum StoreError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The batch would bring the node past [`MAX_EPOCHS_PER_NODE`].
    TooManyEpochs(usize),
    /// A record at or below its epoch's watermark that the collector does not hold as is.
    Regression {
        epoch: u64,
        seq: u64,
        id: String,
        why: &'static str,
    },
}

/// One node's state: watermarks, recent contents, the file being appended to.
#[derive(Debug)]
struct NodeStore {
    node: String,
    dir: PathBuf,
    /// Highest sequence stored per store epoch.
    through: HashMap<u64, u64>,
    /// Content hashes of the last [`RECENT_MAX`] records stored, by (epoch, seq).
    recent: HashMap<(u64, u64), u64>,
    recent_order: VecDeque<(u64, u64)>,
    /// The file appended to and its length after the last successful sync.
    file: Option<(PathBuf, u64)>,
    /// The last record found to regress, so an agent retrying it does not cost a scan.
    last_regression: Option<(String, u64, &'static str)>,
}

impl NodeStore {
    fn new(node: String, dir: PathBuf) -> Self {
        NodeStore {
            node,
            dir,
            through: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            file: None,
            last_regression: None,
        }
    }

    fn remember(&mut self, epoch: u64, seq: u64, hash: u64) {
        let through = self.through.entry(epoch).or_insert(seq);
        *through = (*through).max(seq);
        if self.recent.insert((epoch, seq), hash).is_none() {
            self.recent_order.push_back((epoch, seq));
        }
        while self.recent_order.len() > RECENT_MAX {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    /// Stores the new records of a batch; returns (new, duplicates). With `stamp`, each line
    /// written says when (`stored_at`).
    fn store(&mut self, lines: &[BatchLine], stamp: bool) -> Result<(u64, u64), StoreError> {
        let mut fresh: Vec<(&BatchLine, u64, u64, u64)> = Vec::new();
        // Records at or below their watermark: (id, epoch, seq, hash).
        let mut older: Vec<(&str, u64, u64, u64)> = Vec::new();
        for line in lines {
            // parse_batch checked the node prefix and the form `node:epoch:seq`.
            let Some((epoch, seq)) = id_of_node(&self.node, &line.id) else {
                continue;
            };
            let hash = content_hash(line.record.get());
            if self.through.get(&epoch).is_none_or(|t| seq > *t) {
                fresh.push((line, epoch, seq, hash));
            } else {
                older.push((&line.id, epoch, seq, hash));
            }
        }
        let new_epochs: HashSet<u64> = fresh
            .iter()
            .map(|f| f.1)
            .filter(|e| !self.through.contains_key(e))
            .collect();
        if self.through.len() + new_epochs.len() > MAX_EPOCHS_PER_NODE {
            return Err(StoreError::TooManyEpochs(self.through.len()));
        }
        self.check_older(&older)?;
        let duplicates = older.len() as u64;
        if fresh.is_empty() {
            return Ok((0, duplicates));
        }
        let mut buf = Vec::new();
        let stored_at = stamp.then(crate::time::Timestamp::now);
        for (line, ..) in &fresh {
            let line = StoredLine {
                id: &line.id,
                record: &line.record,
                stored_at,
            };
            serde_json::to_writer(&mut buf, &line).map_err(|e| StoreError::Io {
                path: self.dir.clone(),
                source: e.into(),
            })?;
            buf.push(b'\n');
        }
        self.append(&buf)?;
        for (_, epoch, seq, hash) in &fresh {
            self.remember(*epoch, *seq, *hash);
        }
        Ok((fresh.len() as u64, duplicates))
    }

    /// Every record at or below its watermark must be held with the same content.
    fn check_older(&mut self, older: &[(&str, u64, u64, u64)]) -> Result<(), StoreError> {
        let regression = |id: &str, epoch, seq, why| StoreError::Regression {
            epoch,
            seq,
            id: id.to_owned(),
            why,
        };
        let mut unknown: HashMap<String, (u64, u64, u64)> = HashMap::new();
        for &(id, epoch, seq, hash) in older {
            if let Some((last_id, last_hash, why)) = &self.last_regression {
                if last_id == id && *last_hash == hash {
                    return Err(regression(id, epoch, seq, why));
                }
            }
            match self.recent.get(&(epoch, seq)) {
                Some(h) if *h == hash => {}
                Some(_) => {
                    self.last_regression = Some((id.to_owned(), hash, "different content"));
                    return Err(regression(id, epoch, seq, "different content"));
                }
                None => {
                    unknown.insert(id.to_owned(), (epoch, seq, hash));
                }
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let held = self.find_on_disk(&unknown.keys().cloned().collect())?;
        // Lowest sequence first, so the report names where the regression starts.
        let mut unknown: Vec<_> = unknown.into_iter().collect();
        unknown.sort_by_key(|(_, (epoch, seq, _))| (*epoch, *seq));
        for (id, (epoch, seq, hash)) in unknown {
            let why = match held.get(&id) {
                Some(h) if *h == hash => continue,
                Some(_) => "different content",
                None => "below the watermark but never stored",
            };
            self.last_regression = Some((id.clone(), hash, why));
            return Err(regression(&id, epoch, seq, why));
        }
        Ok(())
    }

    /// Content hashes of the wanted ids found in the node's files, newest day first.
    fn find_on_disk(&self, wanted: &HashSet<String>) -> Result<HashMap<String, u64>, StoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let mut found = HashMap::new();
        let mut files = jsonl_files(&self.dir).map_err(io(&self.dir))?;
        files.reverse();
        for path in files {
            let file = File::open(&path).map_err(io(&path))?;
            for line in std::io::BufReader::new(file).split(b'\n') {
                let line = line.map_err(io(&path))?;
                let Ok(parsed) = serde_json::from_slice::<BatchLine>(&line) else {
                    continue;
                };
                if wanted.contains(&parsed.id) {
                    found.insert(parsed.id, content_hash(parsed.record.get()));
                }
            }
            if found.len() == wanted.len() {
                break;
            }
        }
        Ok(found)
    }

    /// Appends whole lines to today's file and syncs; on failure the file is cut back to its
    /// last good length, so no torn line or half batch stays behind.
    fn append(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let day = humantime::format_rfc3339(SystemTime::now()).to_string();
        let path = self.dir.join(format!("{}.jsonl", &day[..10]));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io(&path))?;
        let committed = match &self.file {
            Some((p, len)) if *p == path => *len,
            _ => good_length(&mut file, &path).map_err(io(&path))?,
        };
        let actual = file.metadata().map_err(io(&path))?.len();
        if actual != committed {
            tracing::warn!(file = %path.display(), good = committed, found = actual, "Cutting an unacknowledged tail off.");
            file.set_len(committed).map_err(io(&path))?;
        }
        // A file (and a node directory) new to this process: its name is made durable with
        // its first lines, before they are acknowledged (a synced file whose directory entry
        // a power cut took would lose acknowledged records).
        let new_file = !matches!(&self.file, Some((p, _)) if *p == path);
        let synced = file.write_all(buf).and_then(|()| file.sync_data());
        let synced = synced.and_then(|()| {
            if !new_file {
                return Ok(());
            }
            crate::durable::sync_dir(&self.dir)?;
            match self.dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => crate::durable::sync_dir(parent),
                _ => Ok(()),
            }
        });
        match synced {
            Ok(()) => {
                self.file = Some((path, committed + buf.len() as u64));
                Ok(())
            }
            Err(source) => {
                if let Err(e) = file.set_len(committed).and_then(|()| file.sync_data()) {
                    // Remembered: the next write cuts the tail before appending.
                    tracing::error!(file = %path.display(), error = %crate::report::Chain(&e), "Cannot truncate after a failed write; will retry before the next write.");
                }
                self.file = Some((path.clone(), committed));
                Err(StoreError::Io { path, source })
            }
        }
    }

    /// Reads a node's files: watermarks and recent contents; foreign ids are ignored.
    fn load(node: String, dir: PathBuf, stats: &CollectStats) -> std::io::Result<NodeStore> {
        let mut store = NodeStore::new(node, dir);
        for path in jsonl_files(&store.dir)? {
            let mut foreign = 0u64;
            let mut unreadable = 0u64;
            let file = File::open(&path)?;
            for line in std::io::BufReader::new(file).split(b'\n') {
                // A torn last line (a crash mid-write) was never acknowledged: skip it (it is
                // cut off before the next write to that file).
                let Ok(parsed) = serde_json::from_slice::<BatchLine>(&line?) else {
                    unreadable += 1;
                    continue;
                };
                let Some((epoch, seq)) = id_of_node(&store.node, &parsed.id) else {
                    foreign += 1;
                    continue;
                };
                store.remember(epoch, seq, content_hash(parsed.record.get()));
            }
            if unreadable > 0 {
                tracing::warn!(node = %store.node, file = %path.display(), lines = unreadable, "Lines that are not records (a write torn by a crash?); skipped.");
            }
            if foreign > 0 {
                stats
                    .foreign_ids_ignored
                    .fetch_add(foreign, Ordering::Relaxed);
                tracing::warn!(node = %store.node, file = %path.display(), lines = foreign, "Lines with ids of another node in this node's directory; ignored.");
            }
        }
        Ok(store)
    }
}

/// A line of a node's file: the batch line, and with `--stamp` the time it was written.
#[derive(Serialize)]
struct StoredLine<'a> {
    id: &'a str,
    record: &'a serde_json::value::RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_at: Option<crate::time::Timestamp>,
}

/// SHA-256 of a record's JSON text, first 8 bytes.
fn content_hash(record: &str) -> u64 {
    let digest = Sha256::digest(record.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

use crate::record::stored::day_files as jsonl_files;

/// The length of a file up to and including its last newline: what was written whole.
fn good_length(file: &mut File, path: &Path) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(i) = memchr::memrchr(b'\n', part) {
            let good = start + i as u64 + 1;
            if good != len {
                tracing::warn!(file = %path.display(), good, len, "Torn last line (a write that never completed) will be cut off.");
            }
            return Ok(good);
        }
        end = start;
    }
    if len > 0 {
        tracing::warn!(file = %path.display(), len, "File without a whole line will be cut off.");
    }
    Ok(0)
}

/// `(epoch, seq)` of a record id `node:epoch:seq` of this node, both in plain decimal.
fn id_of_node(node: &str, id: &str) -> Option<(u64, u64)> {
    let (epoch, seq) = id.strip_prefix(node)?.strip_prefix(':')?.split_once(':')?;
    let number = |text: &str| -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    Some((number(epoch)?, number(seq)?))
}

/// The collector's files for another source of lines (`collect --from-nats`): the same
/// `<node>/<day>.jsonl` files, watermarks, deduplication and regression checks as batches
/// received over HTTPS (see the module doc).
#[derive(Debug)]
pub struct Files {
    out_dir: PathBuf,
    stamp: bool,
    stats: CollectStats,
    nodes: HashMap<String, NodeStore>,
}

/// Why lines were not stored in the files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a valid node id: {0:?}")]
    BadNode(String),
    #[error(
        "record {id} (epoch {epoch}, seq {seq}): {why}; a sequence went backwards in an epoch"
    )]
    Regression {
        epoch: u64,
        seq: u64,
        id: String,
        why: &'static str,
    },
    #[error("the node already has {0} store epochs (at most {MAX_EPOCHS_PER_NODE})")]
    TooManyEpochs(usize),
}

impl Files {
    /// Opens (creates) the output directory and reads every node's state from it.
    pub fn open(out_dir: &Path, stamp: bool) -> Result<Files, CollectError> {
        let io_error = |source| CollectError::Io {
            path: out_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(out_dir).map_err(io_error)?;
        let stats = CollectStats::default();
        let nodes = load_nodes(out_dir, &stats).map_err(io_error)?;
        Ok(Files {
            out_dir: out_dir.to_owned(),
            stamp,
            stats,
            nodes,
        })
    }

    /// Stores `node`'s lines (new ones appended and synced); returns (new, duplicates).
    pub fn store(&mut self, node: &str, lines: &[BatchLine]) -> Result<(u64, u64), FilesError> {
        if !valid_node_id(node) {
            return Err(FilesError::BadNode(node.to_owned()));
        }
        let out_dir = &self.out_dir;
        let store = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeStore::new(node.to_owned(), out_dir.join(node)));
        let stored = store.store(lines, self.stamp).map_err(|e| match e {
            StoreError::Io { path, source } => FilesError::Io { path, source },
            StoreError::TooManyEpochs(n) => FilesError::TooManyEpochs(n),
            StoreError::Regression {
                epoch,
                seq,
                id,
                why,
            } => FilesError::Regression {
                epoch,
                seq,
                id,
                why,
            },
        })?;
        self.stats
            .records_stored
            .fetch_add(stored.0, Ordering::Relaxed);
        self.stats.duplicates.fetch_add(stored.1, Ordering::Relaxed);
        Ok(stored)
    }

    /// Counters (records stored, duplicates, foreign ids found at start).
    pub fn stats(&self) -> &CollectStats {
        &self.stats
    }
}

/// The node of a record id `node:epoch:seq` (a valid node id), or `None`.
pub fn node_of_id(id: &str) -> Option<&str> {
    let node = id.split(':').next()?;
    (valid_node_id(node) && id_of_node(node, id).is_some()).then_some(node)
}

/// Every node's state, from the output directory.
fn load_nodes(out_dir: &Path, stats: &CollectStats) -> std::io::Result<HashMap<String, NodeStore>> {
    let mut nodes = HashMap::new();
    for entry in std::fs::read_dir(out_dir)? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !valid_node_id(name) {
            tracing::warn!(dir = %path.display(), "Not a valid node id; directory ignored.");
            continue;
        }
        let store = NodeStore::load(name.to_owned(), path.clone(), stats)?;
        nodes.insert(name.to_owned(), store);
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(ids: &[&str]) -> Vec<BatchLine> {
        lines_with(ids, 1)
    }

    fn lines_with(ids: &[&str], n: u32) -> Vec<BatchLine> {
        ids.iter()
            .map(|id| {
                serde_json::from_str(&format!(r#"{{"id":"{id}","record":{{"n":{n}}}}}"#)).unwrap()
            })
            .collect()
    }

    fn store_in(dir: &Path) -> NodeStore {
        NodeStore::new("n1".into(), dir.join("n1"))
    }

    #[test]
    fn watermarks_drop_resent_records_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let stats = CollectStats::default();
        let mut store = store_in(dir.path());
        assert_eq!(
            store.store(&lines(&["n1:0:0", "n1:0:1"]), false).unwrap(),
            (2, 0)
        );
        // A lost acknowledgement: the agent sends the batch again with one more record.
        assert_eq!(
            store
                .store(&lines(&["n1:0:0", "n1:0:1", "n1:0:2"]), false)
                .unwrap(),
            (1, 2)
        );
        // Another epoch of the node.
        assert_eq!(store.store(&lines(&["n1:3:0"]), false).unwrap(), (1, 0));
        // After a restart the watermarks come back from the files.
        let mut reloaded = NodeStore::load("n1".into(), dir.path().join("n1"), &stats).unwrap();
        assert_eq!(reloaded.through.get(&0), Some(&2));
        assert_eq!(reloaded.through.get(&3), Some(&0));
        assert_eq!(
            reloaded
                .store(&lines(&["n1:0:2", "n1:0:3"]), false)
                .unwrap(),
            (1, 1)
        );
    }

    #[test]
    fn stamped_lines_say_when_they_were_stored_and_still_deduplicate() {
        let dir = tempfile::tempdir().unwrap();
        let stats = CollectStats::default();
        let mut store = store_in(dir.path());
        let before = crate::time::Timestamp::now();
        assert_eq!(
            store.store(&lines(&["n1:0:0", "n1:0:1"]), true).unwrap(),
            (2, 0)
        );
        let after = crate::time::Timestamp::now();
        let files = jsonl_files(&dir.path().join("n1")).unwrap();
        let text = std::fs::read_to_string(&files[0]).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let at = v["stored_at"].as_str().unwrap();
            let at = humantime::parse_rfc3339(at).unwrap();
            let at = crate::time::Timestamp::from_nanos(
                at.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64,
            );
            // Microseconds in the text: within a microsecond of the window.
            assert!(at.as_nanos() >= before.as_nanos() - 1000, "{line}");
            assert!(at <= after, "{line}");
            assert_eq!(v["record"]["n"], 1, "the record itself is unchanged");
        }
        // Read back after a restart: the same records re-sent are duplicates, not conflicts.
        let mut reloaded = NodeStore::load("n1".into(), dir.path().join("n1"), &stats).unwrap();
        assert_eq!(
            reloaded.store(&lines(&["n1:0:0", "n1:0:1"]), true).unwrap(),
            (0, 2)
        );
        // Without the stamp, no field.
        let mut plain = NodeStore::new("n2".into(), dir.path().join("n2"));
        plain
            .store(
                &[serde_json::from_str(r#"{"id":"n2:0:0","record":{}}"#).unwrap()],
                false,
            )
            .unwrap();
        let files = jsonl_files(&dir.path().join("n2")).unwrap();
        assert!(!std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("stored_at"));
    }

    #[test]
    fn a_sequence_going_backwards_is_refused_not_acked() {
        let dir = tempfile::tempdir().unwrap();
        let stats = CollectStats::default();
        let mut store = store_in(dir.path());
        store
            .store(&lines(&["n1:7:0", "n1:7:1", "n1:7:2"]), false)
            .unwrap();
        // Same ids, other content: a store that reused epoch 7.
        let err = store
            .store(&lines_with(&["n1:7:0", "n1:7:1"], 2), false)
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Regression {
                    epoch: 7,
                    seq: 0,
                    why: "different content",
                    ..
                }
            ),
            "{err:?}"
        );
        // Nothing of the refused batch was written.
        let text =
            std::fs::read_to_string(&jsonl_files(&dir.path().join("n1")).unwrap()[0]).unwrap();
        assert_eq!(text.lines().count(), 3);
        // The same after a restart, where the contents come from the files; and a gap in
        // the stored sequence cannot be filled from below the watermark.
        store.store(&lines(&["n1:8:0", "n1:8:5"]), false).unwrap();
        let mut reloaded = NodeStore::load("n1".into(), dir.path().join("n1"), &stats).unwrap();
        assert!(matches!(
            reloaded.store(&lines_with(&["n1:7:1"], 2), false),
            Err(StoreError::Regression { seq: 1, .. })
        ));
        assert!(matches!(
            reloaded.store(&lines(&["n1:8:3"]), false),
            Err(StoreError::Regression {
                why: "below the watermark but never stored",
                ..
            })
        ));
        // True duplicates are still acknowledged, found in memory or on disk.
        let mut cold = NodeStore::load("n1".into(), dir.path().join("n1"), &stats).unwrap();
        cold.recent.clear();
        assert_eq!(
            cold.store(&lines(&["n1:7:1", "n1:7:2", "n1:7:3"]), false)
                .unwrap(),
            (1, 2)
        );
    }

    #[test]
    fn foreign_ids_in_a_node_directory_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("n1");
        std::fs::create_dir_all(&node_dir).unwrap();
        std::fs::write(
            node_dir.join("2026-01-01.jsonl"),
            "{\"id\":\"n1:1:0\",\"record\":{}}\n{\"id\":\"n2:1:9\",\"record\":{}}\n{\"id\":\"n1:1:1\",\"rec",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("..x")).unwrap();
        let stats = CollectStats::default();
        let nodes = load_nodes(dir.path(), &stats).unwrap();
        assert_eq!(stats.foreign_ids_ignored.load(Ordering::Relaxed), 1);
        let n1 = &nodes["n1"];
        assert_eq!(n1.through.get(&1), Some(&0));
        assert!(!n1.through.values().any(|s| *s == 9));
        // The torn last line is cut off before the next write.
        let mut n1 = NodeStore::load("n1".into(), node_dir.clone(), &stats).unwrap();
        n1.file = None;
        let mut file = OpenOptions::new()
            .read(true)
            .open(node_dir.join("2026-01-01.jsonl"))
            .unwrap();
        assert_eq!(
            good_length(&mut file, Path::new("x")).unwrap(),
            "{\"id\":\"n1:1:0\",\"record\":{}}\n{\"id\":\"n2:1:9\",\"record\":{}}\n".len() as u64
        );
    }

    #[test]
    fn epochs_per_node_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_in(dir.path());
        let ids: Vec<String> = (0..MAX_EPOCHS_PER_NODE)
            .map(|e| format!("n1:{e}:0"))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(
            store.store(&lines(&ids), false).unwrap(),
            (MAX_EPOCHS_PER_NODE as u64, 0)
        );
        assert!(matches!(
            store.store(&lines(&["n1:999999:0"]), false),
            Err(StoreError::TooManyEpochs(MAX_EPOCHS_PER_NODE))
        ));
        // Known epochs go on.
        assert_eq!(store.store(&lines(&["n1:5:1"]), false).unwrap(), (1, 0));
    }

    #[test]
    fn node_ids_are_safe_directory_names() {
        for good in ["edge-01", "a.b_c", "..a", "X"] {
            assert!(valid_node_id(good), "{good}");
        }
        let long = "a".repeat(MAX_NODE_ID + 1);
        for bad in [
            "",
            ".",
            "..",
            "/abs",
            "a/../b",
            "a\\b",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(!valid_node_id(bad), "{bad}");
        }
    }

    #[test]
    fn ids_must_be_node_epoch_seq_in_order() {
        assert!(parse_batch("n1", br#"{"id":"n1:x","record":{}}"#).is_err());
        assert!(parse_batch("n1", br#"{"id":"n2:0:1","record":{}}"#).is_err());
        assert!(parse_batch("n1", br#"{"id":"n1x:0:1","record":{}}"#).is_err());
        assert_eq!(
            parse_batch("n1", br#"{"id":"n1:0:1","record":{}}"#)
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            parse_batch(
                "n1",
                b"{\"id\":\"n1:0:1\",\"record\":{}}\n{\"id\":\"n1:0:1\",\"record\":{}}"
            ),
            Err(BatchError::Malformed(_))
        ));
    }
}
