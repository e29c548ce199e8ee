//! `teledge run`: the daemon. Sources → pipeline → spooler → uplink, as threads and tasks
//! joined by bounded queues.
//!
//! ```text
//!  AF_PACKET rings (fanout) ──(capture threads: LivePipeline::frame)──┐
//!  HEP listener ──(bounded channel)──(HEP task: LivePipeline::hep)────┼─ records ─(bounded)─ spool writer (Spooler) ─ sled
//!  sensor tasks ──(bridge)────────────────────────────────────────────┤                                   │
//!  queue_log threads, callcenter tasks (queue contacts) ───────────────┘                                   │
//!  ticker: LivePipeline::tick, gauges                                        uplink task ◄── durable records
//! ```
//!
//! - Capture never waits: each interface has `[[capture]] threads` capture threads (by
//!   default one a core, at most four; `threads = N` overrides it), each with its own
//!   AF_PACKET socket and ring in one
//!   `PACKET_FANOUT` group, so the kernel hands each flow to one of them. A capture thread
//!   decodes its own packets (its own decode state in the [`LivePipeline`]) and correlates
//!   them in the shard of their call ([`crate::correlation::sharded`]: SIP by Call-ID, RTP by
//!   the shard that learned its media endpoint from the SDP, `[correlation] shards`, by
//!   default one a capture thread): threads take a lock only for the shard an event
//!   belongs to, so they do not take turns at one mutex (waits are counted,
//!   `teledge_correlation_shard_lock_waits_total`). With several capture threads each shard
//!   applies its SIP in capture order within a reorder window (two block timeouts and
//!   50 ms: a call's packets from sibling threads are out of order by up to a block), so
//!   the records are those one thread would make ([`crate::correlation::sharded`],
//!   `teledge_correlation_sip_reordered_total`). It hands records on with `try_send`; a
//!   full record queue drops the record and counts it (`teledge_records_dropped_total`). The
//!   spool absorbs a slow or absent uplink.
//! - `[hep_out]` (`hep_out.rs`): the pipeline mirrors what passes to the HEP relay
//!   ([`crate::relay`]) from every capture thread, the HEP task and the ticker, whose own
//!   thread sends to HOMER from a bounded queue (a full queue drops, counts and, through the
//!   ticker, announces); it is finished after the pipeline at shutdown (2 s to drain), before
//!   the input's last losses are announced.
//! - Time moves forward on a tick of its own (the local clock), so calls and streams time out
//!   on a quiet line. Times a sender stamped (HEP from the listener, HEP captured on the wire)
//!   enter the correlator only within a tolerance of the local clock (`[correlation]
//!   future_time_tolerance_s`, `past_time_tolerance_s`); others are replaced by the local
//!   clock and counted (`teledge_timestamps_clamped_total`): one frame stamped a day ahead
//!   would otherwise hold every timeout back for a day. The local clock itself is
//!   [`LiveNow`]: the wall clock, except that after a step back it keeps moving at half
//!   speed until the wall clock catches up, so timeouts never stand still. The tick is a
//!   tokio interval; with [`Clock::Tokio`] the "now" follows tokio's clock as well, so a test
//!   under `tokio::time::pause` drives ticks, timeouts and the grace for media in flight by
//!   advancing it. The spool writer is a thread of its own (sled's fsync blocks): its flush
//!   interval stays on the system's monotonic clock.
//! - Shutdown (SIGTERM/SIGINT): sources stop, the pipeline is finished — what the TCP
//!   reassembly still holds is decoded, then open calls become partial records
//!   (`closed_by: shutdown`) —, the input losses the ticker had not announced yet are
//!   announced, the spool writer drains its queue (reading its drop counter once more after
//!   the last sender is gone) and syncs, and the uplink forwards what it can until the
//!   drain deadline; the rest stays spooled for the next start. Audit records offered from
//!   the queue's close on go into the spool directly (appended and committed at once).
//! - A panic of the spool writer, a capture thread's packet, the HEP task's frame, a tick,
//!   the HEP relay's thread, the uplink's task, a `queue_log` reader, the callcenter
//!   assembler or a sensor task is caught at that component's boundary
//!   (`supervise`): announced by a `component_panicked` gap record with what it lost, and
//!   the daemon stops as on SIGTERM ([`Daemon::failed`]); [`run`]'s summary names the
//!   components (`panicked`) and `teledge run` exits 2, so systemd restarts it. Frames the
//!   HEP relay drops are announced like the input's losses (`input_dropped`).
//! - SIGHUP re-validates the configuration file and compares it with the running one by
//!   section (`ReloadPlan`): `[uplink]` (reconnect with the new settings), `[[sensors]]`
//!   (their tasks restarted with the new set) and `[shutdown]` apply at once; every other
//!   changed section is named in the log as waiting for a restart. The uplink reconnects in
//!   any case, so renewed certificates take effect at once (they are also re-read at every
//!   handshake).
//! - Logging: at start, at info (the default level of `run`), what runs: node, interfaces,
//!   HEP listeners, sensors, spool directory, uplink target, privacy modes. A configuration
//!   failure found only at start (an address not on this host, unreadable TLS files, no
//!   capture permission) makes `run` exit 78 like `check-config` ([`DaemonError::is_configuration`]).
//! - systemd: READY once the spool is open and every source is bound; the watchdog is fed
//!   only while the data path makes progress; the status line shows calls, queue, last upload.
//!
//! Components, each built from its validated section and returning a handle (`capture`,
//! `hep`, `sensors`, `queue` (`[[queue_log]]`, `[[callcenter]]`), `ticker`, `heartbeat` (a
//! `teledge.heartbeat/1` record at start, every `[node] heartbeat_interval_s` and after a
//! reload that read a changed file), `spool_writer`, `uplink`; `config::reload` plans SIGHUP), run under one root
//! [`CancellationToken`] and one [`TaskTracker`]; every task takes a token itself (no flag
//! fed from one). The sources' token (a child of the root) stops capture, HEP, sensors (a
//! child of it each set, so SIGHUP can replace them) and the ticker; the uplink's loop has
//! its own; the root stops the metrics endpoint, the watchdog and the status line last, and
//! shutdown waits for every task. [`Systemd`] names the notify socket and watchdog interval
//! ([`Daemon::start_with`]; [`Daemon::start`] takes them from the environment). [`Daemon::start`] and [`Daemon::shutdown`] let a test drive the daemon in-process;
//! [`run`] adds the signals.

use crate::observe::events::{DropReason, InternalEvent, NewSince, RecordsDropped};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bounded;
use crate::config::agent::AgentConfig;
use crate::correlation::sharded::ShardedCorrelator;
use crate::observe::{self, AgentMetrics, Health, Notifier, Stage};
use crate::pipeline::{LivePipeline, TimeCheck};
use crate::privacy::Pseudonymizer;
use crate::record::{ClosedBy, Record};
use crate::sources::afpacket::LiveCaptureError;
use crate::spool::Spool;
use crate::spooler::Spooler;
pub use crate::time::Clock;
use crate::time::{ClockGuard, LiveNow, Skew, Timestamp};

mod capture;
mod fleet;
mod heartbeat;
mod hep;
mod hep_out;
mod listen;
mod queue;
mod sensors;
mod spool_writer;
mod status;
mod supervise;
mod ticker;
mod uplink;

pub use crate::config::reload::ReloadPlan;
pub use hep::HepAddrs;

/// How often time moves forward without packets. Short, because it also releases call
/// records whose grace for media in flight has passed when no other message does, and so is
/// part of what a crash can lose (README, "What a crash can lose").
const TICK: Duration = Duration::from_millis(250);

/// What a run did, printed at exit (and used by tests to account for every record).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RunSummary {
    pub records_produced: u64,
    pub records_dropped_queue_full: u64,
    pub records_spooled: u64,
    pub records_forwarded: u64,
    /// Refused by the collector for good and kept in the dead-letter area.
    pub records_dead_lettered: u64,
    pub records_left_in_spool: u64,
    /// Packets the kernel passed to the capture rings (including those it dropped).
    pub packets_captured: u64,
    pub kernel_drops: u64,
    /// Times a capture ring grew from its start size, and the bytes of ring held at the end.
    pub capture_ring_grows: u64,
    pub capture_ring_bytes: u64,
    /// Components whose panic stopped the run (each announced by a `component_panicked` gap record): the
    /// run then ends with a failure exit, so systemd restarts it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub panicked: Vec<String>,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(transparent)]
    Capture(#[from] crate::sources::afpacket::LiveCaptureError),
    #[error(transparent)]
    Hep(#[from] crate::sources::hep::HepListenError),
    #[error("TLS")]
    Tls(#[from] crate::uplink::tls::TlsError),
    #[error("metrics endpoint on {addr}")]
    Observe {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Relay(#[from] crate::relay::RelayError),
    /// SIGTERM or SIGINT while the start waited for the spool (nothing had been captured).
    #[error("stopped before the start completed")]
    StoppedBeforeStart,
}

impl DaemonError {
    /// True when the failure is the configuration's (or the host's setup, which only a
    /// person can fix): `run` exits 78 then, which systemd does not restart. A port taken
    /// by another process or a transient I/O error is not: a restart may well succeed.
    pub fn is_configuration(&self) -> bool {
        use std::io::ErrorKind::{AddrNotAvailable, NotFound, PermissionDenied};
        let io_kind = |e: &std::io::Error| matches!(e.kind(), AddrNotAvailable | PermissionDenied);
        match self {
            DaemonError::Tls(_) => true,
            DaemonError::Hep(crate::sources::hep::HepListenError::Bind { source, .. }) => {
                io_kind(source)
            }
            DaemonError::Hep(crate::sources::hep::HepListenError::MaxFrame(_)) => true,
            DaemonError::Observe { source, .. } => io_kind(source),
            DaemonError::Capture(e) => matches!(
                e,
                LiveCaptureError::InvalidSettings { .. }
                    | LiveCaptureError::PermissionDenied { .. }
                    | LiveCaptureError::RingAllocation { .. }
                    | LiveCaptureError::UnsupportedLinkType { .. }
            ),
            DaemonError::Spool(crate::spool::SpoolError::Io(e)) => {
                matches!(e.kind(), PermissionDenied | NotFound)
            }
            DaemonError::Spool(_) | DaemonError::Io(_) | DaemonError::StoppedBeforeStart => false,
            // The TLS files of [hep_out] were checked by the configuration; a thread that
            // would not start is the host's trouble, maybe passing.
            DaemonError::Relay(e) => !matches!(e, crate::relay::RelayError::Thread(_)),
        }
    }
}

/// Counting hand-off of records to the spool writer: never blocks.
#[derive(Debug, Clone)]
struct RecordQueue {
    tx: bounded::BoundedSender<Record>,
    metrics: Arc<AgentMetrics>,
    produced: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

/// A call record no response ever came for (neither provisional nor final): what an INVITE
/// flood makes, and what the record queue keeps its second half from (`RecordQueue::push`).
fn unanswered_call(record: &Record) -> bool {
    matches!(record, Record::Call(call)
        if call.final_status.is_none() && call.first_provisional_time.is_none())
}

impl RecordQueue {
    /// Queues a record, never waiting: beyond the queue's bounds it is dropped, counted by
    /// reason and announced (a `records_not_spooled` gap by the spool writer). The record
    /// of a call that saw no response at all (an INVITE flood's: nothing answered it) is
    /// dropped already from half the bounds (`queue_reserved`), so a flood of such calls,
    /// made faster than the spool writer takes them, cannot push out the records of calls
    /// that were answered or refused: until 2026-12-04 (branch `attack6`) an INVITE flood
    /// filled the queue and a real call's record placed during it was dropped among 132,760
    /// flood records (`scripts/attack-campaign.sh invite`).
    fn push(&self, record: Record) {
        let kind = record.kind();
        self.produced.fetch_add(1, Ordering::Relaxed);
        self.metrics.records_produced.with(&[kind]).inc();
        if unanswered_call(&record) && self.tx.half_full() {
            self.dropped.fetch_add(1, Ordering::Release);
            RecordsDropped {
                reason: DropReason::QueueReserved,
                count: 1,
            }
            .emit(&self.metrics);
            return;
        }
        let weight = record.held_bytes();
        let reason = match self.tx.try_send_weighted(record, weight) {
            Ok(()) => return,
            Err(bounded::TrySendError::Full(_)) => DropReason::QueueFull,
            Err(bounded::TrySendError::FullBytes(_)) => DropReason::QueueBytes,
            Err(bounded::TrySendError::Disconnected(_)) => DropReason::QueueClosed,
        };
        self.dropped.fetch_add(1, Ordering::Release);
        RecordsDropped { reason, count: 1 }.emit(&self.metrics);
    }

    /// Waits for room instead of dropping: right at shutdown (nothing is captured any more)
    /// and for a source that can wait without losing anything (a file it tails: the lines
    /// stay in the file, so a full queue slows the reader down instead of costing records).
    fn push_waiting(&self, record: Record) {
        self.produced.fetch_add(1, Ordering::Relaxed);
        self.metrics.records_produced.with(&[record.kind()]).inc();
        let weight = record.held_bytes();
        if self.tx.send_weighted(record, weight).is_err() {
            self.dropped.fetch_add(1, Ordering::Release);
            RecordsDropped {
                reason: DropReason::QueueClosed,
                count: 1,
            }
            .emit(&self.metrics);
        }
    }
}

/// Where the audit sink's records go ([`Daemon::audit`]): the record queue while it is open
/// (it is made before anything that audits starts), then, from the moment the shutdown
/// closes it — a supervisor logging in during the drain, a live-listen session that took
/// longer than [`SESSIONS_END_WAIT`] to end — straight into the spool by a spooler of its
/// own, appended and committed at once beside the writer's last appends, so a record
/// offered after the queue closed is spooled, not dropped. `Closed` once every task has
/// ended (nothing of the daemon's can audit then, but a clone of the sink held elsewhere
/// still can): a record offered then goes into the spool if it is still open (someone
/// holds it), or into the spool opened again for it, appended and committed, and closed
/// again ([`AfterEnd`]); only a spool that will not open at all loses it, counted
/// (`queue_closed`) and logged — the one place nothing is left to announce it in.
#[derive(Debug)]
enum AuditPath {
    Queue(RecordQueue),
    Spool(LateSpool),
    Closed(AfterEnd),
}

/// The way into the spool once the daemon has ended: it holds no spool (a sink that
/// outlives the daemon must not keep its store's lock), only what opens it again.
#[derive(Debug)]
struct AfterEnd {
    spool: std::sync::Weak<Mutex<Spool>>,
    config: crate::spool::SpoolConfig,
    keyring: crate::seal::Keyring,
    privacy: crate::privacy::Privacy,
    health: Arc<Health>,
}

impl AfterEnd {
    fn offer(&self, record: Record, metrics: &AgentMetrics) {
        let spool = match self.spool.upgrade() {
            Some(spool) => spool,
            None => match Spool::open(self.config.clone(), self.keyring.clone()) {
                Ok((spool, _)) => Arc::new(Mutex::new(spool)),
                Err(e) => {
                    tracing::error!(error = %crate::report::Chain(&e), "A record offered after teledge stopped cannot be spooled: the spool does not open.");
                    RecordsDropped {
                        reason: DropReason::QueueClosed,
                        count: 1,
                    }
                    .emit(metrics);
                    return;
                }
            },
        };
        let mut spooler = Spooler::new(
            spool,
            Pseudonymizer::new(self.privacy.clone()),
            Duration::ZERO,
            None,
        );
        // A record that does not reach the spool is counted and announced there.
        spool_writer::append(&mut spooler, record, &self.health, metrics);
        if let Err(e) = spooler.commit() {
            tracing::error!(error = %crate::report::Chain(&e), "Spool commit of a record offered after teledge stopped failed.");
        }
    }
}

/// The last synchronous way into the spool, after the record queue closed.
#[derive(Debug)]
struct LateSpool {
    spooler: Spooler,
    health: Arc<Health>,
    metrics: Arc<AgentMetrics>,
    produced: Arc<AtomicU64>,
}

impl AuditPath {
    fn offer(&mut self, record: Record, metrics: &AgentMetrics) {
        match self {
            AuditPath::Queue(queue) => queue.push(record),
            AuditPath::Spool(late) => {
                late.produced.fetch_add(1, Ordering::Relaxed);
                late.metrics.records_produced.with(&[record.kind()]).inc();
                // A record that does not reach the spool is counted and announced there.
                spool_writer::append(&mut late.spooler, record, &late.health, &late.metrics);
                if let Err(e) = late.spooler.commit() {
                    tracing::error!(error = %crate::report::Chain(&e), "Spool commit of a record offered after the record queue closed failed.");
                }
            }
            AuditPath::Closed(after) => after.offer(record, metrics),
        }
    }
}

/// The pipeline shared by the sources: every capture thread decodes its own frames and
/// correlates them in the shard of their call (no lock every packet takes).
type SharedPipeline = Arc<LivePipeline>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How far a capture thread's packets can trail a sibling's: two ring block timeouts (the
/// longest a block can hold a packet back, and its thread's turn) and a margin.
fn thread_skew(captures: &[crate::config::agent::CaptureConfig]) -> Duration {
    let block = captures
        .iter()
        .map(|c| c.ring.block_timeout_ms)
        .max()
        .unwrap_or(0);
    Duration::from_millis(2 * u64::from(block) + 50)
}

/// The SIP reorder window of the correlation shards
/// ([`ShardedCorrelator::with_reorder_window`]): with more than one capture thread, their
/// skew, so one call's SIP is applied in capture order whichever thread captured it; with
/// one, none.
fn reorder_window(captures: &[crate::config::agent::CaptureConfig]) -> Duration {
    let threads: usize = captures.iter().map(|c| c.threads).sum();
    if threads > 1 {
        thread_skew(captures)
    } else {
        Duration::ZERO
    }
}

/// How long a capture thread holds RTP of a flow no route names yet: the skew (a sibling
/// thread's block can hold the SDP back), and, with a reorder window, the window and a tick
/// more (the SDP is applied, and its route written, once the window has passed: on a later
/// message of its shard, or on the tick).
fn media_hold(captures: &[crate::config::agent::CaptureConfig]) -> Duration {
    let window = reorder_window(captures);
    let tick = if window.is_zero() {
        Duration::ZERO
    } else {
        TICK
    };
    thread_skew(captures) + window + tick
}

/// What every component is built with.
#[derive(Debug, Clone)]
struct Context {
    metrics: Arc<AgentMetrics>,
    health: Arc<Health>,
    pipeline: SharedPipeline,
    /// The pipeline's loss totals already told as events.
    losses_told: Arc<Mutex<NewSince>>,
    /// HEP frames from the listener the pipeline could not use (their content), for the
    /// ticker's announcements.
    hep_unused: Arc<AtomicU64>,
    records: RecordQueue,
    /// One "now" for the tick and every source's guard: it never goes back.
    live_now: Arc<LiveNow>,
    clock_guard: ClockGuard,
    /// Cancelled first at shutdown: every source and the ticker stop.
    sources: CancellationToken,
    tracker: TaskTracker,
    /// The status page's feed, when `[status]` enables the page.
    status: Option<Arc<status::StatusFeed>>,
    /// Catches the panics of the components (`supervise`): each is announced and stops the
    /// daemon with a failure exit.
    supervisor: Arc<supervise::Supervisor>,
}

/// How the daemon talks to systemd: where notifications go, and the watchdog interval
/// systemd asked for (`None`: no watchdog).
#[derive(Debug, Clone)]
pub struct Systemd {
    pub notifier: Notifier,
    pub watchdog: Option<Duration>,
}

impl Systemd {
    /// `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`, as systemd sets them.
    pub fn from_env() -> Systemd {
        Systemd {
            notifier: Notifier::from_env(),
            watchdog: observe::systemd::watchdog_interval(),
        }
    }
}

/// The local clock's guard over times that enter the live correlator, with its counters.
#[derive(Debug, Clone)]
struct LiveClock {
    guard: ClockGuard,
    now: Arc<LiveNow>,
    future: Arc<observe::metrics::Counter>,
    past: Arc<observe::metrics::Counter>,
}

impl LiveClock {
    fn new(guard: ClockGuard, now: &Arc<LiveNow>, metrics: &AgentMetrics, source: &str) -> Self {
        LiveClock {
            guard,
            now: Arc::clone(now),
            future: metrics.clock_clamped.with(&[source, Skew::Future.as_str()]),
            past: metrics.clock_clamped.with(&[source, Skew::Past.as_str()]),
        }
    }

    /// `time`, or the local clock when `time` is outside the tolerance (counted).
    fn check(&self, time: Timestamp) -> Timestamp {
        let (time, skew) = self.guard.check(time, self.now.now());
        match skew {
            Some(Skew::Future) => self.future.inc(),
            Some(Skew::Past) => self.past.inc(),
            None => {}
        }
        time
    }

    /// The check as a pipeline input's [`TimeCheck`].
    fn into_time_check(self) -> TimeCheck {
        Box::new(move |time| self.check(time))
    }
}

/// A running daemon: every component started, until [`Daemon::shutdown`].
#[derive(Debug)]
pub struct Daemon {
    ctx: Context,
    root: CancellationToken,
    notifier: Notifier,
    spool: Arc<Mutex<Spool>>,
    captures: capture::Captures,
    hep: Option<hep::HepInput>,
    /// The HEP relay to HOMER (`[hep_out]`).
    hep_out: Option<crate::relay::HepRelay>,
    sensors: sensors::Sensors,
    queues: queue::QueueInputs,
    ticker: tokio::task::JoinHandle<ticker::InputLosses>,
    heartbeat: heartbeat::Heartbeat,
    writer: spool_writer::SpoolWriter,
    uplink: uplink::Uplink,
    produced: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    /// What runs, by section: SIGHUP applies what it can and says what waits for a restart.
    running: toml::Table,
    drain_timeout: Duration,
    observe_addr: Option<SocketAddr>,
    access: Option<Arc<crate::access::Access>>,
    audit: crate::access::audit::AuditSink,
    /// Where the audit sink's records go: the record queue, then the spool directly once
    /// the queue closes ([`AuditPath`]).
    audit_queue: Arc<Mutex<AuditPath>>,
    /// The spooler of [`AuditPath::Spool`], taken at shutdown when the queue closes.
    late_spooler: Spooler,
    /// The way of [`AuditPath::Closed`], taken at the end of the shutdown.
    after_end: AfterEnd,
    listeners: CancellationToken,
    /// Live-listen sessions ([`Daemon::session_tracker`]).
    sessions: TaskTracker,
}

/// How long a shutdown waits for live-listen sessions to end and audit their end.
const SESSIONS_END_WAIT: Duration = Duration::from_secs(5);

/// How often a start retries a spool that could not be opened for lack of space (or on a
/// read-only file system).
const SPOOL_ROOM_RETRY: Duration = Duration::from_secs(5);

/// Opens the spool; while the file system is full (sled cannot even open a store then) or
/// read-only (ext4 remounts itself read-only after an error, until someone repairs it) the
/// start waits and retries every [`SPOOL_ROOM_RETRY`], saying so in the journal (once a
/// minute) and in `systemctl status`, and asking systemd for more start time, instead of
/// exiting: a unit that failed five times in a row would stay down for good
/// (`StartLimitBurst`), also once the disk had room again. `stop` (SIGTERM, SIGINT) ends the
/// wait ([`DaemonError::StoppedBeforeStart`]): systemd takes each `EXTEND_TIMEOUT_USEC` as
/// more stop time too, so a wait that ignored it never stopped. Any other error fails the
/// start as before.
async fn open_spool_when_there_is_room(
    config: &AgentConfig,
    notifier: &observe::Notifier,
    stop: &CancellationToken,
) -> Result<(Spool, Vec<crate::spool::SpoolEvent>), DaemonError> {
    let mut waiting_since = None;
    loop {
        match Spool::open(config.forward.spool.clone(), config.forward.keyring.clone()) {
            Ok(opened) => {
                if waiting_since.is_some() {
                    tracing::warn!("The spool opened: the file system has room again.");
                }
                return Ok(opened);
            }
            Err(e) if e.is_out_of_space() || e.is_read_only() => {
                let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
                let why = if e.is_read_only() {
                    "read-only"
                } else {
                    "full"
                };
                let message = format!(
                    "waiting for room to open the spool in {} (file system {why}, {}s): {}",
                    config.forward.spool.dir.display(),
                    since.elapsed().as_secs(),
                    crate::report::Chain(&e)
                );
                // Logged every minute, not every retry.
                if since.elapsed().as_secs() % 60 < SPOOL_ROOM_RETRY.as_secs() {
                    tracing::error!("The file system is {why}: {message}.");
                }
                let _ = notifier.notify(&[
                    observe::NotifyState::Status(&message),
                    observe::NotifyState::ExtendTimeout(SPOOL_ROOM_RETRY * 3),
                ]);
                tokio::select! {
                    () = tokio::time::sleep(SPOOL_ROOM_RETRY) => {}
                    () = stop.cancelled() => {
                        tracing::warn!("Stopped while waiting to open the spool: nothing was captured.");
                        return Err(DaemonError::StoppedBeforeStart);
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Daemon {
    /// Opens the spool, binds every listener (port 0 picks a free port: see
    /// [`Daemon::hep_addrs`], [`Daemon::observe_addr`]) and starts every component. Must run
    /// inside a multi-threaded tokio runtime (capture threads lend out a worker when joined).
    pub async fn start(config: AgentConfig, config_path: &Path) -> Result<Daemon, DaemonError> {
        Daemon::start_with(config, config_path, Systemd::from_env(), Clock::Wall).await
    }

    /// [`Daemon::start`] with the systemd notify socket and watchdog given rather than taken
    /// from the environment (a test's own socket), and the clock the daemon's "now" (ticks,
    /// timeouts, the grace for media in flight) follows: [`Clock::Tokio`] lets a test drive
    /// it with `tokio::time::pause` / `advance`.
    pub async fn start_with(
        config: AgentConfig,
        config_path: &Path,
        systemd: Systemd,
        clock: Clock,
    ) -> Result<Daemon, DaemonError> {
        Daemon::start_until(
            config,
            config_path,
            systemd,
            clock,
            CancellationToken::new(),
        )
        .await
    }

    /// [`Daemon::start_with`], given up when `stop` is cancelled while the start waits for a
    /// spool it cannot open yet (a full or read-only file system):
    /// [`DaemonError::StoppedBeforeStart`].
    pub async fn start_until(
        config: AgentConfig,
        config_path: &Path,
        systemd: Systemd,
        clock: Clock,
        stop: CancellationToken,
    ) -> Result<Daemon, DaemonError> {
        // What runs, said once at info (the default level of `run`): an operator reading
        // the journal sees the node, its sources and where records go without TELEDGE_LOG.
        let uplink = &config.forward.uplink;
        tracing::info!(
            node = %config.forward.node_id,
            config = %config_path.display(),
            interfaces = ?config.captures.iter().map(|c| c.interface.as_str()).collect::<Vec<_>>(),
            hep = ?config.hep.as_ref().map(|h| (h.udp, h.tcp, h.tls.as_ref().map(|t| t.0), h.auth_key.is_some())),
            sensors = ?config.sensors.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            queue_logs = ?config.queue_logs.iter().map(|q| q.path.display().to_string()).collect::<Vec<_>>(),
            callcenters = ?config.callcenters.iter().map(|c| c.address).collect::<Vec<_>>(),
            spool = %config.forward.spool.dir.display(),
            uplink = %format!("https://{}:{}{}", uplink.host, uplink.port, uplink.path),
            privacy = ?config.forward.privacy,
            // How long after a call's end its record is made: part of what a crash can lose.
            record_grace_ms = config.calls.record_grace.as_millis() as u64,
            "Starting teledge {}.",
            env!("CARGO_PKG_VERSION")
        );
        let notifier = systemd.notifier.clone();
        let metrics = Arc::new(AgentMetrics::new());
        let mut stages = vec![Stage::SpoolWriter, Stage::Uplink, Stage::Correlation];
        if !config.captures.is_empty() {
            stages.push(Stage::Capture);
        }
        if !config.sensors.is_empty() {
            stages.push(Stage::Sensors);
        }
        let health = Arc::new(Health::new(&stages, config.observe.health.clone()));
        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        let supervisor = supervise::Supervisor::new(&config.forward.node_id, &metrics);

        // The spool first: nothing is captured that could not be kept. Opening a large store
        // after a crash can take a while: ask systemd for more start time first.
        let _ = notifier.notify(&[observe::NotifyState::ExtendTimeout(Duration::from_secs(
            120,
        ))]);
        let (spool, events) = open_spool_when_there_is_room(&config, &notifier, &stop).await?;
        for event in events {
            tracing::error!(
                ?event,
                "Spool store could not be opened and was moved aside."
            );
        }
        let spool = Arc::new(Mutex::new(spool));
        metrics.watch_spool(Arc::clone(&spool));
        health.set_spool_open(true);

        // The supervisor view's access control and audit (`[status]`, `[[supervisor]]`):
        // refusals are counted in `Access` and read at scrape time. Audit records go to the
        // record queue once it exists (the slot is filled below and emptied at shutdown, so
        // the endpoint, which outlives the spool writer, never holds the queue open).
        let access = config
            .status
            .enabled
            .then(|| Arc::new(crate::access::Access::new(config.status.access.clone())));
        if let Some(access) = &access {
            metrics.watch_access(access);
        }
        // Records → spool writer thread: the queue first, so that nothing that audits (the
        // endpoint below) can start before it exists.
        let (record_tx, record_rx) = bounded::channel_weighted::<Record>(
            config.record_queue_records,
            config.record_queue_bytes,
        );
        let produced = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let records = RecordQueue {
            tx: record_tx,
            metrics: Arc::clone(&metrics),
            produced: Arc::clone(&produced),
            dropped: Arc::clone(&dropped),
        };
        let audit_queue = Arc::new(Mutex::new(AuditPath::Queue(records.clone())));
        let audit = {
            let slot = Arc::clone(&audit_queue);
            // Weak: a sink that outlives the daemon (a task waiting for the end of the
            // bound's window) must not keep the metrics, and through them the spool and its
            // store's lock, alive.
            let metrics = Arc::downgrade(&metrics);
            crate::access::audit::AuditSink::new(&config.forward.node_id, move |record| {
                match metrics.upgrade() {
                    Some(metrics) => lock(&slot).offer(record, &metrics),
                    // The daemon and its metrics are gone: the record is still spooled
                    // (`AuditPath::Closed`), its counts go nowhere anyone reads.
                    None => lock(&slot).offer(record, &AgentMetrics::new()),
                }
            })
        };
        metrics.watch_audit(&audit);
        // Cancelled at shutdown right after the sources: status streams close and live
        // listen sessions end (and are audited) while the record queue is still open.
        let listeners = root.child_token();
        // The tasks that end with `listeners` and audit their end (live-listen sessions):
        // awaited at shutdown before the record queue closes, so their audit records reach
        // the spool.
        let sessions = TaskTracker::new();
        // Live listen: the tap the correlator feeds, and the pipeline its lookups read (set
        // once the pipeline exists, below).
        let listen_tap = crate::media::tap::ListenTap::new(config.listen.limits);
        let listen_pipeline: listen::PipelineSlot = Arc::default();

        // The status page's snapshots: published by the ticker, read by the page.
        let status_feed = access.as_ref().map(|_| {
            let (tx, rx) = tokio::sync::watch::channel(Arc::default());
            let feed = Arc::new(status::StatusFeed::new(
                tx,
                config.stats.settings.services.clone(),
                Pseudonymizer::new(config.forward.privacy.clone()),
                &config.forward.node_id,
            ));
            (feed, rx)
        });

        let observe_addr = if config.observe.enabled {
            let listener = observe::http::bind(config.observe.listen)
                .await
                .map_err(|source| DaemonError::Observe {
                    addr: config.observe.listen,
                    source,
                })?;
            let addr = listener.local_addr().ok();
            let tls = match config.status.tls.as_ref().filter(|_| config.status.enabled) {
                Some(t) => Some(crate::access::tls::server_config(
                    &t.cert_file,
                    &t.key_file,
                    t.client_ca_file.as_deref(),
                )?),
                None => None,
            };
            let endpoint = observe::http::Endpoint {
                tls,
                metrics: Arc::clone(&metrics),
                health: Arc::clone(&health),
                page: match (&access, &status_feed) {
                    (Some(access), Some((_, snapshots))) => Some(observe::page::Page::new(
                        Arc::clone(access),
                        audit.clone(),
                        snapshots.clone(),
                        Arc::clone(&metrics),
                        listeners.clone(),
                    )),
                    _ => None,
                },
                listen: listen::whep_service(
                    &config,
                    &listen_tap,
                    &listen_pipeline,
                    access.as_ref(),
                    &audit,
                    &listeners,
                    &sessions,
                    &metrics,
                ),
            };
            // The root token: the endpoint answers until everything else has stopped.
            tracker.spawn(observe::http::serve_with(
                listener,
                endpoint,
                config.observe.bounds(),
                root.clone(),
            ));
            addr
        } else {
            None
        };

        let committed = Arc::new(Notify::new());
        let late_spooler = Spooler::new(
            Arc::clone(&spool),
            Pseudonymizer::new(config.forward.privacy.clone()),
            config.forward.spool.flush_interval,
            Some(Arc::clone(&committed)),
        );
        let writer = spool_writer::SpoolWriter::spawn(
            record_rx,
            Spooler::new(
                Arc::clone(&spool),
                Pseudonymizer::new(config.forward.privacy.clone()),
                config.forward.spool.flush_interval,
                Some(Arc::clone(&committed)),
            ),
            Arc::clone(&health),
            Arc::clone(&metrics),
            Arc::clone(&dropped),
            status_feed.as_ref().map(|(feed, _)| Arc::clone(feed)),
            config.stats.enabled.then(|| {
                let mut aggregator = crate::stats::Aggregator::new(
                    config.stats.settings.clone(),
                    &config.forward.node_id,
                    crate::stats::run_id(),
                );
                // A queue source: its records and the calls of the same contacts join.
                if !config.queue_logs.is_empty() || !config.callcenters.is_empty() {
                    aggregator = aggregator.with_queue_join(
                        crate::stats::interval::JOIN_WINDOW,
                        crate::stats::interval::MAX_JOIN_WAITING,
                    );
                }
                (aggregator, Arc::clone(&produced))
            }),
            Arc::clone(&supervisor),
        )?;

        let ctx = Context {
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
            // With the statistics, REGISTER attempts are timed too (RFC 6076 RRD, IRA), in
            // every shard; live listen's tap is fed by every shard.
            pipeline: Arc::new(LivePipeline::new(
                ShardedCorrelator::new(config.shards, config.calls, config.media)
                    .with_registration_records(config.stats.enabled)
                    .with_listen_tap(&listen_tap)
                    .with_reorder_window(reorder_window(&config.captures)),
                media_hold(&config.captures),
            )),
            losses_told: Arc::default(),
            hep_unused: Arc::default(),
            records,
            live_now: Arc::new(LiveNow::new(clock)),
            clock_guard: config.clock_tolerance,
            sources: root.child_token(),
            tracker: tracker.clone(),
            status: status_feed.map(|(feed, _)| feed),
            supervisor,
        };
        let hep_out = hep_out::start(config.hep_out.as_ref(), &ctx)?;
        let _ = listen_pipeline.set(Arc::clone(&ctx.pipeline));
        let captures = capture::Captures::build(&config.captures, &ctx)?;
        let hep = match &config.hep {
            Some(h) => {
                Some(hep::HepInput::build(h, config.queue_frames, config.queue_bytes, &ctx).await?)
            }
            None => None,
        };
        let sensors = sensors::Sensors::build(&config.sensors, &ctx);
        let queues = queue::QueueInputs::build(
            &config.queue_logs,
            &config.callcenters,
            &Pseudonymizer::new(config.forward.privacy.clone()),
            &config.forward.node_id,
            &ctx,
        )?;
        let uplink = uplink::Uplink::prepare(&config.forward, &ctx)?;
        if let Some(settings) = &config.fleet {
            fleet::spawn(settings, &config.forward, &ctx)?;
        }

        // Ready: the spool is open, every source bound, every configuration file read. What
        // follows cannot fail and starts at once; it comes after READY so it does not delay
        // it (on a one-core box, or under qemu-user, its first run competed with the start).
        let _ = notifier.ready();
        let ticker = ticker::spawn(&ctx, &spool);
        let heartbeat = heartbeat::Heartbeat::spawn(
            &ctx,
            &config.forward.node_id,
            config.heartbeat_interval,
            &config.config_sha256,
        );
        let uplink = uplink.start(&spool, committed, &ctx);
        if let Some(interval) = systemd.watchdog.filter(|_| notifier.is_enabled()) {
            let dog = observe::Watchdog::new(notifier.clone(), interval).with_counters(
                metrics.watchdog_pings.clone(),
                metrics.watchdog_withheld.clone(),
            );
            tracker.spawn(dog.run(Arc::clone(&health).watchdog_probe(), root.clone()));
        }
        {
            // The status line every few seconds.
            let notifier = notifier.clone();
            let metrics = Arc::clone(&metrics);
            let stop = root.clone();
            tracker.spawn(async move {
                let mut status_tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = status_tick.tick() => {
                            let _ = notifier.status(&metrics.status(SystemTime::now()).to_string());
                        }
                        () = stop.cancelled() => break,
                    }
                }
            });
        }
        tracing::info!("teledge running.");
        let weak_spool = Arc::downgrade(&spool);
        Ok(Daemon {
            ctx,
            root,
            notifier,
            spool,
            captures,
            hep,
            hep_out,
            sensors,
            queues,
            ticker,
            heartbeat,
            writer,
            uplink,
            produced,
            dropped,
            running: config.sections.expose().clone(),
            drain_timeout: config.drain_timeout,
            observe_addr,
            access,
            audit,
            audit_queue,
            late_spooler,
            after_end: AfterEnd {
                spool: weak_spool,
                config: config.forward.spool.clone(),
                keyring: config.forward.keyring.clone(),
                privacy: config.forward.privacy.clone(),
                health: Arc::clone(&health),
            },
            listeners,
            sessions,
        })
    }

    /// Access control of the status page and live listen (`None`: `[status]` is not
    /// enabled, and nothing of the supervisor view may be served).
    pub fn access(&self) -> Option<&Arc<crate::access::Access>> {
        self.access.as_ref()
    }

    /// Where audit records of logins and listen sessions go (through the spool).
    pub fn audit(&self) -> &crate::access::audit::AuditSink {
        &self.audit
    }

    /// Cancelled at shutdown right after the sources stop, while audit records can still
    /// reach the spool: a live listen session ends (and writes its audit record) on it.
    pub fn listeners_token(&self) -> CancellationToken {
        self.listeners.clone()
    }

    /// The tracker live-listen sessions run on: they end with [`Daemon::listeners_token`],
    /// and a shutdown waits for them (at most 5 s) before the record queue closes, so the
    /// audit record each writes at its end is spooled.
    pub fn session_tracker(&self) -> TaskTracker {
        self.sessions.clone()
    }

    /// Where the HEP listener is bound, if there is one.
    pub fn hep_addrs(&self) -> Option<HepAddrs> {
        self.hep.as_ref().map(|h| h.addrs)
    }

    /// Where `/metrics` and `/health` are served, if they are.
    pub fn observe_addr(&self) -> Option<SocketAddr> {
        self.observe_addr
    }

    /// The daemon's metrics (they outlive it: a test reads them after shutdown).
    pub fn metrics(&self) -> &Arc<AgentMetrics> {
        &self.ctx.metrics
    }

    /// SIGHUP with a valid new configuration: applies the sections that can change at once
    /// (`[uplink]`, `[[sensors]]`, `[shutdown]`), names the others as waiting for a restart,
    /// and reconnects the uplink in any case (renewed certificates take effect).
    pub async fn reload(&mut self, new: &AgentConfig) -> ReloadPlan {
        let plan = ReloadPlan::new(&self.running, new.sections.expose());
        for section in &plan.applied {
            match *section {
                "uplink" => self.uplink.reconfigure(new.forward.uplink.clone()),
                "sensors" => self.sensors.replace(&new.sensors).await,
                "shutdown" => self.drain_timeout = new.drain_timeout,
                "supervisor" => {
                    if let Some(access) = &self.access {
                        access.replace(&new.status.access);
                    }
                }
                _ => {}
            }
            if let Some(value) = new.sections.expose().get(*section) {
                self.running.insert((*section).to_owned(), value.clone());
            }
        }
        self.uplink.reconnect();
        self.heartbeat.config_read(&new.config_sha256);
        plan
    }

    /// Reconnects the uplink (SIGHUP with a configuration that has problems still does).
    pub fn reconnect_uplink(&self) {
        self.uplink.reconnect();
    }

    /// Stops in pipeline order: the sources stop (and what they had accepted is
    /// correlated), the pipeline is finished (the reassembly's data decoded, open calls
    /// become partial records), the record queue drains into the spool and is committed,
    /// the uplink forwards until drained or the drain deadline, the spool is synced; then
    /// the metrics endpoint, the watchdog and the status line stop, and every task is
    /// awaited.
    pub async fn shutdown(self) -> RunSummary {
        tracing::info!("Stopping: sources first, then the queue, the spool and the uplink.");
        let _ = self.notifier.stopping();
        let deadline = Instant::now() + self.drain_timeout;
        let Daemon {
            ctx,
            root,
            spool,
            captures,
            hep,
            hep_out,
            sensors,
            queues,
            ticker,
            heartbeat,
            writer,
            uplink,
            produced,
            dropped,
            audit_queue,
            late_spooler,
            after_end,
            audit,
            listeners,
            sessions,
            ..
        } = self;
        ctx.sources.cancel();
        listeners.cancel();
        let captured = captures.join();
        if let Some(hep) = hep {
            hep.join().await;
        }
        sensors.join().await;
        queues.join().await;
        // What the ticker announced of the input's losses: the rest is announced below,
        // once nothing can lose input any more.
        let mut input_losses = ticker.await.unwrap_or_default();
        heartbeat.join().await;
        {
            // What the reassembly still holds is decoded first, then open calls become
            // partial records. Nothing is captured any more: waiting for room is right.
            let p = &ctx.pipeline;
            let records = &ctx.records;
            p.finish(ctx.live_now.now(), ClosedBy::Shutdown, &mut |r| {
                records.push_waiting(r)
            });
            ticker::publish_pipeline_counters(p, &ctx.metrics, &mut lock(&ctx.losses_told));
        }
        // The relay sends what the pipeline mirrored, the records of calls closed just now
        // included; what it cannot send by its deadline is counted, and announced below.
        hep_out::finish(hep_out, Duration::from_secs(2)).await;
        {
            let records = &ctx.records;
            // The input's losses since the ticker's last announcement (it announces at most
            // once a minute: those of the last minute were counted and never announced).
            let node = lock(&spool).node_id().to_owned();
            for gap in input_losses.due(
                &node,
                &ctx.metrics,
                ticker::LossTotals::of(&ctx),
                Instant::now(),
                true,
            ) {
                records.push_waiting(Record::Gap(Box::new(gap)));
            }
        }
        // Live-listen sessions ended with `listeners` above; their audit records go into the
        // queue before it closes (under load a session's end could come after it, and its
        // record was counted as dropped, `queue_closed`).
        sessions.close();
        if tokio::time::timeout(SESSIONS_END_WAIT, sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = sessions.len(),
                "Live-listen sessions still ending at shutdown; their audit records go straight into the spool."
            );
        }
        let Context {
            records,
            tracker,
            metrics,
            health: ctx_health,
            supervisor,
            ..
        } = ctx;
        // The last sender: the writer drains the queue, commits and ends. Audit records from
        // now on (a login during the drain, a session that outlived its wait) are appended to
        // the spool and committed at once, beside the writer's last appends.
        *lock(&audit_queue) = AuditPath::Spool(LateSpool {
            spooler: late_spooler,
            health: Arc::clone(&ctx_health),
            metrics: Arc::clone(&metrics),
            produced: Arc::clone(&produced),
        });
        drop(records);
        let spooled = writer.join().await;
        let forwarded = uplink.drain(deadline).await;
        let left = {
            let mut s = lock(&spool);
            // Panics after the first of their component (each first one was announced at
            // once), summed: nothing can panic any more, the writer has ended.
            for gap in supervisor.remaining_gaps() {
                if let Err(e) = s.append(&gap.to_json()) {
                    tracing::error!(error = %crate::report::Chain(&e), "Cannot spool the announcement of a component's panics.");
                }
            }
            // Losses still pending (counted since the uplink's last round) are announced
            // before the close, not left in memory.
            if let Err(e) = s.announce_drops() {
                tracing::error!(error = %crate::report::Chain(&e), "Spool could not announce its pending losses at shutdown; they are kept in its ledger.");
            }
            if let Err(e) = s.flush() {
                tracing::error!(error = %crate::report::Chain(&e), "Spool flush at shutdown failed.");
            }
            s.stats().records
        };
        root.cancel();
        tracker.close();
        tracker.wait().await;
        // Sessions that outlived their wait above are awaited too: every task has ended
        // when this returns.
        sessions.wait().await;
        // Nothing of the daemon's can audit any more: the refusals suppressed in the last
        // window are announced (their window's end would never come), then the way into the
        // spool closes (it must not keep the spool open through a sink someone still holds).
        audit.announce_suppressed();
        *lock(&audit_queue) = AuditPath::Closed(after_end);
        RunSummary {
            records_produced: produced.load(Ordering::Relaxed),
            records_dropped_queue_full: dropped.load(Ordering::Relaxed),
            records_spooled: spooled,
            records_forwarded: forwarded.records,
            records_dead_lettered: forwarded.dead_lettered,
            records_left_in_spool: left,
            packets_captured: captured.packets,
            kernel_drops: captured.drops,
            capture_ring_grows: captured.ring_grows,
            capture_ring_bytes: captured.ring_bytes,
            panicked: supervisor.panicked(),
        }
    }

    /// Cancelled when a component panicked (`supervise`): the daemon should stop, and
    /// `teledge run` exit with a failure code.
    pub fn failed(&self) -> CancellationToken {
        self.ctx.supervisor.failed()
    }
}

/// Runs the daemon until SIGTERM/SIGINT. `config_path` is re-validated on SIGHUP.
pub fn run(config: AgentConfig, config_path: PathBuf) -> Result<RunSummary, DaemonError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("teledge")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        // SIGTERM/SIGINT, from the start on: a start waiting for the spool stops too.
        let stop = CancellationToken::new();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                stop.cancel();
            });
        }
        let mut daemon = match Daemon::start_until(
            config,
            &config_path,
            Systemd::from_env(),
            Clock::Wall,
            stop.clone(),
        )
        .await
        {
            Err(DaemonError::StoppedBeforeStart) => return Ok(RunSummary::default()),
            started => started?,
        };
        let failed = daemon.failed();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                // A component panicked: the same stop, then a failure exit (`cli::run`).
                () = failed.cancelled() => {
                    tracing::error!("A component panicked: stopping (final accounting as on SIGTERM), then exiting with a failure code for systemd to restart teledge.");
                    break;
                }
                _ = hup.recv() => reload(&mut daemon, &config_path).await,
            }
        }
        Ok(daemon.shutdown().await)
    })
}

/// SIGHUP: re-validates the file; applies what it can, or keeps the running configuration.
async fn reload(daemon: &mut Daemon, config_path: &Path) {
    let _ = daemon.notifier.reloading();
    match crate::config::agent::load(config_path) {
        Ok(new) => {
            for warning in &new.warnings {
                tracing::warn!("SIGHUP: {}: {warning}", config_path.display());
            }
            let plan = daemon.reload(&new).await;
            tracing::info!(
                applied = %plan.applied.join(", "),
                needs_restart = %plan.needs_restart.join(", "),
                "SIGHUP: configuration valid. {}",
                plan.summary()
            );
        }
        Err(errors) => {
            tracing::error!(
                "SIGHUP: configuration has problems (keeping the running one):\n{errors}"
            );
            daemon.reconnect_uplink();
        }
    }
    let _ = daemon.notifier.ready();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// An answered call of a bundled capture, and the same call as if nothing had ever
    /// answered its INVITE.
    fn calls() -> (Record, Record) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/b2bua_direct_media.pcap"
        );
        let mut replay = crate::replay::Replay::new(crate::replay::ReplaySettings::default());
        let mut answered = None;
        let mut sink = |r: Record| {
            if let Record::Call(c) = r {
                if c.final_status == Some(200) {
                    answered.get_or_insert(c);
                }
            }
        };
        let file = std::fs::File::open(path).unwrap();
        replay.read(path, file, &mut sink, |_| {}).unwrap();
        replay.finish(&mut sink);
        let answered = answered.expect("an answered call");
        let mut unanswered = answered.clone();
        unanswered.final_status = None;
        unanswered.first_provisional_time = None;
        (Record::Call(answered), Record::Call(unanswered))
    }

    /// A flood of calls nothing answered (an INVITE flood's records) takes at most half the
    /// record queue: the other half stays for the records of calls that saw a response, and
    /// every record refused is counted (`queue_reserved`, then `queue_full`) for the spool
    /// writer's `records_not_spooled` announcement. Before, the flood filled the whole queue
    /// and the answered call's record was dropped as `queue_full`.
    #[test]
    fn a_flood_of_unanswered_calls_leaves_half_the_record_queue_to_answered_ones() {
        let (answered, unanswered) = calls();
        let metrics = Arc::new(AgentMetrics::new());
        let (tx, rx) = bounded::channel_weighted::<Record>(1_024, 48 << 20);
        let queue = RecordQueue {
            tx,
            metrics: Arc::clone(&metrics),
            produced: Arc::default(),
            dropped: Arc::default(),
        };
        for _ in 0..5_000 {
            queue.push(unanswered.clone());
        }
        // The reserve is for calls that saw a response: they fill it to the bound.
        for _ in 0..1_000 {
            queue.push(answered.clone());
        }
        let queued: Vec<Record> = rx.try_iter().collect();
        let answered_queued = queued
            .iter()
            .filter(|r| matches!(r, Record::Call(c) if c.final_status == Some(200)))
            .count();
        assert_eq!(queued.len(), 1_024);
        assert_eq!(answered_queued, 512);
        let dropped = &metrics.records_dropped;
        assert_eq!(dropped.with(&["queue_reserved"]).get(), 5_000 - 512);
        assert_eq!(dropped.with(&["queue_full"]).get(), 1_000 - 512);
        assert_eq!(
            queue.dropped.load(Ordering::Acquire),
            5_000 - 512 + 1_000 - 512
        );
    }
}
