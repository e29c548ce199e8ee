//! `teledge run`: the daemon. Sources → correlation → spool → uplink, as threads and tasks
//! joined by bounded queues.
//!
//! ```text
//!  AF_PACKET ring ──(capture thread: decode, correlate)──┐
//!  HEP listener ──(bounded channel)──(HEP task: correlate)┼─ records ─(bounded)─ spool writer ─ sled
//!  sensor tasks ──────────────────────────────────────────┘                          │
//!                                                            uplink task ◄── durable records
//! ```
//!
//! - Capture never waits: a capture thread decodes and correlates its own packets (the shared
//!   [`Correlator`] is behind a mutex held per packet, uncontended with one interface), and
//!   hands records on with `try_send`; a full record queue drops the record and counts it
//!   (`teledge_records_dropped_total`). The spool absorbs a slow or absent uplink.
//! - Time moves forward on a tick of its own (the local clock), so calls and streams time out
//!   on a quiet line. Times a sender stamped (HEP from the listener, HEP captured on the wire)
//!   enter the correlator only within a tolerance of the local clock (`[correlation]
//!   future_time_tolerance_s`, `past_time_tolerance_s`); others are replaced by the local
//!   clock and counted (`teledge_timestamps_clamped_total`): one frame stamped a day ahead
//!   would otherwise hold every timeout back for a day. The local clock itself is
//!   [`LiveNow`]: the wall clock, except that after a step back it keeps moving at half
//!   speed until the wall clock catches up, so timeouts never stand still.
//! - Shutdown (SIGTERM/SIGINT): sources stop, the correlator is finished — open calls become
//!   partial records (`closed_by: shutdown`) —, the spool writer drains its queue and syncs,
//!   and the uplink forwards what it can until the drain deadline; the rest stays spooled
//!   for the next start.
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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch, Notify};

use crate::agent_config::AgentConfig;
use crate::correlation::Correlator;
use crate::dissect::{DatagramMeta, DissectLimits, Dissector, MessageMeta, Observer};
use crate::observe::{self, AgentMetrics, Health, Notifier, Stage};
use crate::privacy::Pseudonymizer;
use crate::record::{ClosedBy, Record};
use crate::sensors::device::{Device, SerialOpener};
use crate::sources::afpacket::{
    KernelStats, LiveCapture, LiveCaptureError, LivePacket, PacketSink, RingSettings,
    STOP_CHECK_INTERVAL,
};
use crate::sources::hep::{HepListener, HepListenerSettings, HepStats};
use crate::spool::Spool;
use crate::time::{ClockGuard, LiveNow, Skew, Timestamp};
use crate::uplink::client::{Attempt, Backoff, ForwardError, Forwarder, UplinkStats};

/// Records waiting for the spool writer.
const RECORD_QUEUE: usize = 65_536;
/// How often time moves forward without packets.
const TICK: Duration = Duration::from_secs(1);

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
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("{0}")]
    Capture(#[from] crate::sources::afpacket::LiveCaptureError),
    #[error("HEP listener: {0}")]
    Hep(#[from] crate::sources::hep::HepListenError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::uplink::tls::TlsError),
    #[error("metrics endpoint on {addr}: {source}")]
    Observe {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
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
            DaemonError::Spool(_) | DaemonError::Io(_) => false,
        }
    }
}

/// Counting hand-off of records to the spool writer: never blocks.
#[derive(Debug, Clone)]
struct RecordQueue {
    tx: SyncSender<Record>,
    metrics: Arc<AgentMetrics>,
    produced: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl RecordQueue {
    fn push(&self, record: Record) {
        let kind = record.kind();
        self.produced.fetch_add(1, Ordering::Relaxed);
        self.metrics.records_produced.with(&[kind]).inc();
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.records_dropped.with(&["queue_full"]).inc();
            }
        }
    }

    /// At shutdown, waiting is right: nothing is captured any more.
    fn push_waiting(&self, record: Record) {
        self.produced.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The correlator shared by the sources.
type SharedCorrelator = Arc<Mutex<Correlator>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A capture thread's sink: decode, then correlate under the shared lock.
struct CaptureSink {
    dissector: Dissector,
    correlator: SharedCorrelator,
    records: RecordQueue,
    frames: u64,
    packets: Arc<observe::metrics::Counter>,
    bytes: Arc<observe::metrics::Counter>,
    health: Arc<Health>,
    clock: LiveClock,
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
}

struct CorrelateObserver<'a> {
    correlator: &'a mut Correlator,
    records: &'a RecordQueue,
    clock: &'a LiveClock,
}

impl Observer for CorrelateObserver<'_> {
    fn sip(&mut self, meta: &MessageMeta, message: &crate::decode::sip::SipMessage<'_>) {
        let records = self.records;
        // Kernel times are the local clock already; HEP frames captured on the wire carry
        // their sender's time, which must not drive the correlator's clock unchecked.
        let meta = MessageMeta {
            time: self.clock.check(meta.time),
            ..*meta
        };
        self.correlator
            .sip(&meta, message, &mut |r| records.push(r));
    }

    fn datagram(&mut self, meta: &DatagramMeta, payload: &[u8]) {
        let records = self.records;
        let meta = DatagramMeta {
            time: self.clock.check(meta.time),
            ..*meta
        };
        self.correlator
            .datagram(&meta, payload, &mut |r| records.push(r));
    }
}

impl PacketSink for CaptureSink {
    fn packet(&mut self, packet: LivePacket<'_>) {
        self.frames += 1;
        self.packets.inc();
        self.bytes.add(packet.data.len() as u64);
        let frame = packet.frame(self.frames);
        let mut correlator = lock(&self.correlator);
        let mut observer = CorrelateObserver {
            correlator: &mut correlator,
            records: &self.records,
            clock: &self.clock,
        };
        self.dissector.frame(&frame, &mut observer);
    }

    fn batch_end(&mut self) {
        self.health.progress(Stage::Capture);
    }
}

impl CaptureSink {
    /// Publishes the decoder's error and drop counters by kind (they only grow), and the
    /// bytes its reassembly holds for `interface`.
    fn report_decode_errors(&self, metrics: &AgentMetrics, interface: &str) {
        let s = self.dissector.stats();
        for (kind, n) in s.loss_counters() {
            if n > 0 {
                metrics.decode_errors.with(&[kind]).raise_to(n);
            }
        }
        metrics
            .reassembly_bytes_held
            .with(&[interface])
            .set(i64::try_from(s.memory.held_bytes).unwrap_or(i64::MAX));
    }
}

/// Runs the daemon until SIGTERM/SIGINT. `config_path` is re-validated on SIGHUP.
pub fn run(config: AgentConfig, config_path: PathBuf) -> Result<RunSummary, DaemonError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("teledge")
        .enable_all()
        .build()?;
    runtime.block_on(run_async(config, config_path))
}

async fn run_async(config: AgentConfig, config_path: PathBuf) -> Result<RunSummary, DaemonError> {
    // What runs, said once at info (the default level of `run`): an operator reading the
    // journal sees the node, its sources and where records go without TELEDGE_LOG.
    let uplink = &config.forward.uplink;
    tracing::info!(
        node = %config.forward.node_id,
        config = %config_path.display(),
        interfaces = ?config.captures.iter().map(|c| c.interface.as_str()).collect::<Vec<_>>(),
        hep = ?config.hep.as_ref().map(|h| (h.udp, h.tcp, h.tls.as_ref().map(|t| t.0), h.auth_key.is_some())),
        sensors = ?config.sensors.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        spool = %config.forward.spool.dir.display(),
        uplink = %format!("https://{}:{}{}", uplink.host, uplink.port, uplink.path),
        privacy = ?config.forward.privacy,
        "Starting teledge {}.",
        env!("CARGO_PKG_VERSION")
    );
    let notifier = Notifier::from_env();
    let metrics = Arc::new(AgentMetrics::new());
    let mut stages = vec![Stage::SpoolWriter, Stage::Uplink, Stage::Correlation];
    if !config.captures.is_empty() {
        stages.push(Stage::Capture);
    }
    if !config.sensors.is_empty() {
        stages.push(Stage::Sensors);
    }
    let health = Arc::new(Health::new(&stages, config.observe.health.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);

    // The spool first: nothing is captured that could not be kept. Opening a large store
    // after a crash can take a while: ask systemd for more start time first.
    let _ = notifier.notify(&[observe::NotifyState::ExtendTimeout(Duration::from_secs(
        120,
    ))]);
    let (spool, events) =
        Spool::open(config.forward.spool.clone(), config.forward.keyring.clone())?;
    for event in events {
        tracing::error!(
            ?event,
            "Spool store could not be opened and was moved aside."
        );
    }
    let mut spool_age = SpoolAge::new(spool.stats().records);
    let spool = Arc::new(Mutex::new(spool));
    metrics.watch_spool(Arc::clone(&spool));
    health.set_spool_open(true);

    if config.observe.enabled {
        let listener = observe::http::bind(config.observe.listen)
            .await
            .map_err(|source| DaemonError::Observe {
                addr: config.observe.listen,
                source,
            })?;
        let endpoint = observe::http::Endpoint {
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
        };
        tokio::spawn(observe::http::serve(listener, endpoint, stop_rx.clone()));
    }

    // Records → spool writer thread.
    let (record_tx, record_rx) = sync_channel::<Record>(RECORD_QUEUE);
    let produced = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let records = RecordQueue {
        tx: record_tx,
        metrics: Arc::clone(&metrics),
        produced: Arc::clone(&produced),
        dropped: Arc::clone(&dropped),
    };
    let spooled_notify = Arc::new(Notify::new());
    let writer = {
        let spool = Arc::clone(&spool);
        let pseudonymizer = Pseudonymizer::new(config.forward.privacy.clone());
        let flush_every = config.forward.spool.flush_interval;
        let health = Arc::clone(&health);
        let notify = Arc::clone(&spooled_notify);
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                spool_writer(
                    record_rx,
                    &spool,
                    &pseudonymizer,
                    flush_every,
                    &health,
                    &notify,
                )
            })?
    };

    let correlator: SharedCorrelator =
        Arc::new(Mutex::new(Correlator::new(config.calls, config.media)));

    let clock_guard = config.clock_tolerance;
    // One "now" for the tick and every source's guard: it never goes back.
    let live_now = Arc::new(LiveNow::default());

    // Live capture threads.
    let capture_stop = Arc::new(AtomicBool::new(false));
    let mut captures = Vec::new();
    for c in &config.captures {
        let mut ring = RingSettings::with_total_bytes(c.ring_bytes);
        ring.block_size = c.block_bytes;
        ring.block_count = (c.ring_bytes / u64::from(c.block_bytes)).max(1) as u32;
        ring.block_timeout_ms = c.block_timeout.as_millis() as u32;
        // An interface that is not there yet (a VLAN or bridge created later in boot, a USB
        // NIC) is waited for, like a sensor that is unplugged; anything else (no permission,
        // a ring the kernel refuses) is a configuration problem and stops the start.
        let capture = match LiveCapture::open(&c.interface, ring, c.promiscuous) {
            Ok(capture) => Some(capture),
            Err(
                e @ (LiveCaptureError::InterfaceNotFound { .. }
                | LiveCaptureError::InterfaceDown { .. }
                | LiveCaptureError::InterfaceGone { .. }),
            ) => {
                tracing::warn!("{e}; capturing as soon as it is there.");
                None
            }
            Err(e) => return Err(e.into()),
        };
        // One memory budget for the daemon's reassembly: each interface decodes with its share.
        let limits = DissectLimits {
            memory_budget: crate::dissect::DEFAULT_MEMORY_BUDGET / config.captures.len().max(1),
            ..DissectLimits::default()
        };
        let sink = CaptureSink {
            dissector: Dissector::new(limits),
            correlator: Arc::clone(&correlator),
            records: records.clone(),
            frames: 0,
            packets: metrics.source_packets.with(&[&c.interface]),
            bytes: metrics.source_bytes.with(&[&c.interface]),
            health: Arc::clone(&health),
            clock: LiveClock::new(clock_guard, &live_now, &metrics, &c.interface),
        };
        tracing::info!(interface = %c.interface, ring_bytes = c.ring_bytes, "Capturing.");
        let stop = Arc::clone(&capture_stop);
        let metrics = Arc::clone(&metrics);
        let interface = c.interface.clone();
        let promiscuous = c.promiscuous;
        let thread = std::thread::Builder::new()
            .name(format!("capture-{interface}"))
            .spawn(move || {
                capture_loop(
                    capture,
                    &interface,
                    ring,
                    promiscuous,
                    &stop,
                    sink,
                    &metrics,
                )
            })?;
        captures.push((c.interface.clone(), thread));
    }

    // HEP listener and its correlation task.
    let hep_stats = Arc::new(HepStats::default());
    let mut hep_task = None;
    if let Some(hep) = &config.hep {
        let tls = match &hep.tls {
            Some((addr, cert, key)) => Some((
                *addr,
                crate::uplink::tls::server_config_without_client_auth(cert, key)?,
            )),
            None => None,
        };
        let settings = HepListenerSettings {
            udp: hep.udp,
            tcp: hep.tcp,
            tls,
            auth_key: hep
                .auth_key
                .as_ref()
                .map(|k| k.expose().as_bytes().to_vec()),
            idle_timeout: hep.idle_timeout,
            first_frame_timeout: hep.first_frame_timeout,
            max_connections: hep.max_connections,
            max_connections_per_source: hep.max_connections_per_source,
            max_queue_bytes: config.queue_bytes,
            ..HepListenerSettings::default()
        };
        let (tx, mut rx) = mpsc::channel(config.queue_frames);
        let listener = HepListener::bind(settings, Arc::clone(&hep_stats), tx).await?;
        tracing::info!(udp = ?listener.udp_addr(), tcp = ?listener.tcp_addr(), tls = ?listener.tls_addr(), "HEP listener bound.");
        tokio::spawn(listener.run(stop_rx.clone()));
        let correlator = Arc::clone(&correlator);
        let records = records.clone();
        let packets = metrics.source_packets.with(&["hep"]);
        let bytes = metrics.source_bytes.with(&["hep"]);
        let errors = Arc::clone(&metrics.decode_errors);
        let hep_stats = Arc::clone(&hep_stats);
        let clock = LiveClock::new(clock_guard, &live_now, &metrics, "hep");
        hep_task = Some(tokio::spawn(async move {
            let mut correlated = 0u64;
            while let Some(mut event) = rx.recv().await {
                correlated += 1;
                packets.inc();
                bytes.add(event.frame.payload.len() as u64);
                // The sender's clock: checked against ours before it drives any timeout.
                event.frame.time = clock.check(event.frame.time);
                let mut c = lock(&correlator);
                if let Err(e) =
                    crate::correlation::hep::feed(&mut c, &event.frame, event.sequence, &mut |r| {
                        records.push(r)
                    })
                {
                    errors.with(&[e.kind()]).inc();
                    tracing::debug!("HEP frame not used: {e}");
                }
            }
            let stats = &hep_stats;
            tracing::info!(
                correlated,
                frames = stats.frames.load(Ordering::Relaxed),
                malformed = stats.malformed_total(),
                auth_rejected = stats.auth_rejected.load(Ordering::Relaxed),
                dropped_full = stats.dropped_full.load(Ordering::Relaxed),
                dropped_queue_bytes = stats.dropped_queue_bytes.load(Ordering::Relaxed),
                resync_bytes = stats.resync_bytes.load(Ordering::Relaxed),
                "HEP input stopped."
            );
        }));
    }

    // Sensors: one task per device; records bridged into the record queue. The set is
    // replaced as a whole when SIGHUP brings other sensors.
    let (sensor_tx, mut sensor_rx) = mpsc::channel::<Record>(1024);
    let mut sensors = SensorSet::start(&config.sensors, &sensor_tx);
    let sensor_bridge = {
        let records = records.clone();
        let metrics = Arc::clone(&metrics);
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            while let Some(record) = sensor_rx.recv().await {
                match &record {
                    Record::Sensor(s) => metrics.sensor_readings.with(&[&s.device]).inc(),
                    Record::Alert(a) => metrics.sensor_alerts.with(&[&a.device]).inc(),
                    _ => {}
                }
                health.progress(Stage::Sensors);
                records.push(record);
            }
        })
    };

    // Time moves on without packets; gauges follow.
    let ticker = {
        let spool = Arc::clone(&spool);
        let hep_stats = config.hep.is_some().then(|| Arc::clone(&hep_stats));
        let live_now = Arc::clone(&live_now);
        let correlator = Arc::clone(&correlator);
        let records = records.clone();
        let metrics = Arc::clone(&metrics);
        let health = Arc::clone(&health);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let mut c = lock(&correlator);
                c.advance(live_now.now(), &mut |r| records.push(r));
                metrics.calls_active.set(c.calls().open_calls() as i64);
                metrics.call_table_bytes.set(c.calls().held_bytes() as i64);
                let (calls, media) = (c.calls().counters(), c.media().counters());
                for (table, n) in [
                    ("calls_in_setup", calls.evicted_in_setup),
                    ("ended_dialogs", calls.ended_forgotten),
                    ("ended_media_endpoints", media.ended_endpoints_forgotten),
                    ("orphan_stream_records", media.orphan_streams_summarised),
                    ("calls_joined_mid_dialog", calls.partial_calls_refused),
                ] {
                    if n > 0 {
                        metrics.state_evictions.with(&[table]).raise_to(n);
                    }
                }
                if calls.dropped_at_capacity > 0 {
                    metrics
                        .records_dropped
                        .with(&["call_table_full"])
                        .raise_to(calls.dropped_at_capacity);
                }
                metrics
                    .streams_active
                    .set(c.media().active_streams() as i64);
                drop(c);
                // try_lock: a flush in progress is not worth waiting for; next second.
                if let Ok(s) = spool.try_lock() {
                    let age = spool_age.update(&s.stats(), SystemTime::now());
                    drop(s);
                    metrics.spool_oldest_age_seconds.set(age);
                }
                if let Some(h) = &hep_stats {
                    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                    let errors = &metrics.decode_errors;
                    errors
                        .with(&["hep_malformed"])
                        .raise_to(h.malformed_total());
                    errors
                        .with(&["hep_auth_rejected"])
                        .raise_to(load(&h.auth_rejected));
                    let dropped = metrics.records_dropped.with(&["hep_queue_full"]);
                    dropped.raise_to(load(&h.dropped_full));
                    let dropped = metrics.records_dropped.with(&["hep_queue_bytes"]);
                    dropped.raise_to(load(&h.dropped_queue_bytes));
                    for (reason, counter) in [
                        ("refused_max_connections", &h.connections_refused),
                        ("refused_per_source", &h.connections_refused_per_source),
                        ("no_valid_first_frame", &h.first_frame_timeouts),
                        ("idle", &h.idle_timeouts),
                        ("tls_handshake_failed", &h.tls_handshake_failures),
                    ] {
                        metrics
                            .hep_connections_closed
                            .with(&[reason])
                            .raise_to(load(counter));
                    }
                }
                health.progress(Stage::Correlation);
            }
        })
    };

    // Uplink.
    let mut forwarder = Forwarder::new(
        &config.forward.node_id,
        &config.forward.uplink,
        &config.forward.keyring,
    )?;
    metrics.watch_tls_alerts(forwarder.tls_alerts());
    forwarder.on_progress({
        let metrics = Arc::clone(&metrics);
        let health = Arc::clone(&health);
        move |stats: &UplinkStats, attempt: &Attempt<'_>| {
            metrics.observe_uplink(stats, SystemTime::now());
            match *attempt {
                Attempt::Acked => health.uplink_acked(),
                Attempt::Drained => health.spool_drained(),
                Attempt::Failed { kind, reason } => {
                    metrics.uplink_failures.with(&[kind.label()]).inc();
                    health.uplink_failed(reason);
                }
                Attempt::Split { .. } | Attempt::DeadLettered { .. } => health.uplink_answered(),
            }
            health.set_dead_letters(stats.dead_letters_held);
            health.progress(Stage::Uplink);
        }
    });
    health.set_dead_letters(forwarder.stats.dead_letters_held);
    metrics.observe_uplink(&forwarder.stats, SystemTime::now());
    {
        // Read at scrape time: a renewed certificate shows at once.
        let cert = config.forward.uplink.cert_file.clone();
        metrics
            .uplink_client_cert_not_after_timestamp_seconds
            .set_source(move || crate::uplink::tls::certificate_not_after(&cert).map(|t| t as f64));
    }
    let reconnect = Arc::new(Notify::new());
    // SIGHUP hands a changed [uplink] over here; the forwarder reconnects with it.
    let (uplink_config_tx, uplink_configs) = watch::channel(config.forward.uplink.clone());
    let forwarder = {
        let spool = Arc::clone(&spool);
        let health = Arc::clone(&health);
        let notify = Arc::clone(&spooled_notify);
        let reconnect = Arc::clone(&reconnect);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    result = forwarder.forward_until_drained(&spool, None) => {
                        if let Err(e) = result {
                            tracing::error!("Forwarding failed: {e}");
                        }
                    }
                    _ = stop.changed() => break,
                    _ = reconnect.notified() => {
                        let uplink_config = uplink_configs.borrow().clone();
                        if let Err(e) = forwarder.reconfigure(uplink_config) {
                            tracing::error!("Uplink not reloaded: {e}");
                        }
                        continue;
                    }
                }
                health.progress(Stage::Uplink);
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => break,
                }
            }
            forwarder
        })
    };

    // Ready: the spool is open, every source bound.
    let _ = notifier.ready();
    if let Some(dog) = observe::Watchdog::from_env(notifier.clone()) {
        let dog = dog.with_counters(
            metrics.watchdog_pings.clone(),
            metrics.watchdog_withheld.clone(),
        );
        tokio::spawn(dog.run(Arc::clone(&health).watchdog_probe(), stop_rx.clone()));
    }
    tracing::info!("teledge running.");

    // Wait for a signal; status line every few seconds.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    // What runs, by section: SIGHUP applies what it can and says what waits for a restart.
    let mut running = config.sections.expose().clone();
    let mut drain_timeout = config.drain_timeout;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                let _ = notifier.reloading();
                match crate::agent_config::load(&config_path) {
                    Ok(new) => {
                        for warning in &new.warnings {
                            tracing::warn!("SIGHUP: {}: {warning}", config_path.display());
                        }
                        let plan = ReloadPlan::new(&running, new.sections.expose());
                        for section in &plan.applied {
                            match *section {
                                "uplink" => {
                                    let cert = new.forward.uplink.cert_file.clone();
                                    metrics
                                        .uplink_client_cert_not_after_timestamp_seconds
                                        .set_source(move || crate::uplink::tls::certificate_not_after(&cert).map(|t| t as f64));
                                    let _ = uplink_config_tx.send(new.forward.uplink.clone());
                                }
                                "sensors" => {
                                    sensors.stop().await;
                                    sensors = SensorSet::start(&new.sensors, &sensor_tx);
                                }
                                "shutdown" => drain_timeout = new.drain_timeout,
                                _ => {}
                            }
                            if let Some(value) = new.sections.expose().get(*section) {
                                running.insert((*section).to_owned(), value.clone());
                            }
                        }
                        tracing::info!(
                            applied = %plan.applied.join(", "),
                            needs_restart = %plan.needs_restart.join(", "),
                            "SIGHUP: configuration valid. {}",
                            plan.summary()
                        );
                    }
                    Err(errors) => tracing::error!("SIGHUP: configuration has problems (keeping the running one):\n{errors}"),
                }
                reconnect.notify_one();
                let _ = notifier.ready();
            }
            _ = status_tick.tick() => {
                let _ = notifier.status(&metrics.status(SystemTime::now()).to_string());
            }
        }
    }

    // Shutdown, in pipeline order.
    tracing::info!("Stopping: sources first, then the queue, the spool and the uplink.");
    let _ = notifier.stopping();
    let deadline = Instant::now() + drain_timeout;
    capture_stop.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let mut kernel_drops = 0;
    let mut packets_captured = 0;
    for (interface, thread) in captures {
        // A capture thread notices the flag within its 100 ms poll; meanwhile this worker
        // is lent out rather than blocked.
        match tokio::task::block_in_place(|| thread.join()) {
            Ok(stats) => {
                kernel_drops += stats.drops;
                packets_captured += stats.packets;
                tracing::info!(%interface, packets = stats.packets, drops = stats.drops, "Capture stopped.");
            }
            Err(_) => tracing::error!("Capture thread of {interface} panicked."),
        }
    }
    if let Some(task) = hep_task {
        // The listener stopped with the signal; its channel closes and the task ends.
        let _ = task.await;
    }
    sensors.stop().await;
    drop(sensor_tx);
    let _ = sensor_bridge.await;
    let _ = ticker.await;
    {
        let mut c = lock(&correlator);
        c.finish(ClosedBy::Shutdown, &mut |r| records.push_waiting(r));
    }
    drop(records);
    let spooled = match tokio::task::spawn_blocking(move || writer.join()).await {
        Ok(Ok(n)) => n,
        _ => {
            tracing::error!("Spool writer failed.");
            0
        }
    };
    let mut forwarder = forwarder
        .await
        .map_err(|e| DaemonError::Io(std::io::Error::other(e.to_string())))?;
    let drained = forwarder.forward_until_drained(&spool, Some(deadline));
    let forwarded_stats = match tokio::time::timeout_at(deadline.into(), drained).await {
        Ok(Ok(stats)) => stats,
        Ok(Err(ForwardError::Deadline(reason))) => {
            tracing::warn!("Collector not reached before the drain deadline ({reason}); the rest stays spooled.");
            forwarder.stats
        }
        Ok(Err(e)) => {
            tracing::error!("Forwarding at shutdown failed: {e}");
            forwarder.stats
        }
        Err(_) => {
            tracing::warn!("Drain deadline reached; the rest stays spooled.");
            forwarder.stats
        }
    };
    let left = {
        let mut s = lock(&spool);
        let _ = s.flush();
        s.stats().records
    };
    Ok(RunSummary {
        records_produced: produced.load(Ordering::Relaxed),
        records_dropped_queue_full: dropped.load(Ordering::Relaxed),
        records_spooled: spooled,
        records_forwarded: forwarded_stats.records,
        records_dead_lettered: forwarded_stats.dead_lettered,
        records_left_in_spool: left,
        packets_captured,
        kernel_drops,
    })
}

/// A capture thread: reads the ring into the sink until `stop`, publishes the kernel's
/// counters and the decode errors every second, and when the interface goes down or away
/// closes the capture and reopens it with backoff (capped at 30 s) — a flapping link or a
/// recreated VLAN interface must not end capture for good. Returns the kernel's counters
/// summed over every opening.
fn capture_loop(
    first: Option<LiveCapture>,
    interface: &str,
    ring: RingSettings,
    promiscuous: bool,
    stop: &AtomicBool,
    mut sink: CaptureSink,
    metrics: &AgentMetrics,
) -> KernelStats {
    let drops = metrics.source_kernel_drops.with(&[interface]);
    let mut capture = first;
    // Counters of captures already closed; the open one's are added on top.
    let mut closed = KernelStats::default();
    let mut current = KernelStats::default();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut reopen_at = Instant::now();
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let Some(open) = capture.as_mut() else {
            if Instant::now() < reopen_at {
                std::thread::sleep(STOP_CHECK_INTERVAL);
                continue;
            }
            match LiveCapture::open(interface, ring, promiscuous) {
                Ok(c) => {
                    tracing::info!(interface, "Capture reopened.");
                    backoff.reset();
                    capture = Some(c);
                }
                Err(e) => {
                    tracing::debug!(interface, "Capture not reopened yet: {e}");
                    reopen_at = Instant::now() + backoff.next_wait();
                }
            }
            continue;
        };
        if let Err(e) = open.next_batch(STOP_CHECK_INTERVAL, |p| sink.packet(p)) {
            tracing::warn!("{e}; reopening with backoff.");
            if let Ok(k) = open.stats() {
                current = k;
            }
            closed = add_stats(closed, current);
            current = KernelStats::default();
            capture = None;
            reopen_at = Instant::now() + backoff.next_wait();
        }
        sink.batch_end();
        if last_report.elapsed() >= TICK {
            last_report = Instant::now();
            if let Some(k) = capture.as_mut().and_then(|c| c.stats().ok()) {
                current = k;
            }
            drops.raise_to(add_stats(closed, current).drops);
            sink.report_decode_errors(metrics, interface);
        }
    }
    if let Some(k) = capture.as_mut().and_then(|c| c.stats().ok()) {
        current = k;
    }
    let total = add_stats(closed, current);
    drops.raise_to(total.drops);
    sink.report_decode_errors(metrics, interface);
    total
}

fn add_stats(a: KernelStats, b: KernelStats) -> KernelStats {
    KernelStats {
        packets: a.packets + b.packets,
        drops: a.drops + b.drops,
        freeze_queue: a.freeze_queue + b.freeze_queue,
    }
}

/// What a SIGHUP does with a changed configuration file, by top-level section: `uplink`
/// (reconnect with the new settings), `sensors` (the tasks restarted with the new set, when
/// there were sensors and still are) and `shutdown` (the drain deadline) apply at once;
/// every other section (`node`, `capture`, `hep`, `correlation`, `spool`, `privacy`,
/// `observe`) and a change from or to no sensors at all take a restart.
#[derive(Debug, Default, PartialEq, Eq)]
struct ReloadPlan {
    applied: Vec<&'static str>,
    needs_restart: Vec<&'static str>,
}

impl ReloadPlan {
    const SECTIONS: [&'static str; 10] = [
        "node",
        "capture",
        "hep",
        "correlation",
        "sensors",
        "spool",
        "privacy",
        "uplink",
        "observe",
        "shutdown",
    ];

    fn new(running: &toml::Table, new: &toml::Table) -> Self {
        let mut plan = ReloadPlan::default();
        let has_sensors = |t: &toml::Table| {
            t.get("sensors")
                .and_then(toml::Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        for section in Self::SECTIONS {
            if running.get(section) == new.get(section) {
                continue;
            }
            let live = match section {
                "uplink" | "shutdown" => true,
                "sensors" => has_sensors(running) && has_sensors(new),
                _ => false,
            };
            if live {
                plan.applied.push(section);
            } else {
                plan.needs_restart.push(section);
            }
        }
        plan
    }

    fn summary(&self) -> String {
        let applied = if self.applied.is_empty() {
            "Nothing changed that applies at once".to_owned()
        } else {
            format!("Applied: {}", self.applied.join(", "))
        };
        let restart = if self.needs_restart.is_empty() {
            String::new()
        } else {
            format!(
                "; changed but needs a restart to take effect: {}",
                self.needs_restart.join(", ")
            )
        };
        format!("{applied}{restart}; the uplink reconnects with the current certificates.")
    }
}

/// The running sensor tasks, stopped together (at shutdown, or to be replaced on SIGHUP).
struct SensorSet {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<crate::record::sensor::PortCounters>>,
}

impl SensorSet {
    fn start(
        devices: &[crate::sensors::device::DeviceSettings],
        tx: &mpsc::Sender<Record>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let tasks = devices
            .iter()
            .map(|device| {
                let opener = SerialOpener {
                    path: device.port.clone(),
                    serial: device.profile.serial.clone(),
                };
                tracing::info!(device = %device.name, port = %device.port.display(), model = %device.profile.model, "Reading sensor.");
                tokio::spawn(Device::new(device.clone(), opener, tx.clone()).run(stop_rx.clone()))
            })
            .collect();
        SensorSet { stop, tasks }
    }

    /// Stops every task and waits for them (each closes its port).
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The age of the oldest record in the spool. The spool keeps no append times (they would
/// cost a write per record), so the daemon notes, once a second, how many records had been
/// appended by then; the oldest record's age is the age of the first note that counts it —
/// never more than a second too young. Records left from before this start count as old as
/// the start (a lower bound). The notes are bounded: when full, every other one is dropped,
/// which only coarsens the answer for very old backlogs.
#[derive(Debug)]
struct SpoolAge {
    /// (records appended since open, when)
    notes: std::collections::VecDeque<(u64, SystemTime)>,
    backlog_at_open: u64,
    started: SystemTime,
}

impl SpoolAge {
    const MAX_NOTES: usize = 4096;

    fn new(backlog_at_open: u64) -> Self {
        SpoolAge {
            notes: std::collections::VecDeque::new(),
            backlog_at_open,
            started: SystemTime::now(),
        }
    }

    /// Notes the counters and returns the oldest record's age in seconds.
    fn update(&mut self, stats: &crate::spool::SpoolStats, now: SystemTime) -> f64 {
        if self.notes.back().is_none_or(|&(n, _)| n < stats.appended) {
            if self.notes.len() >= Self::MAX_NOTES {
                let kept: std::collections::VecDeque<_> =
                    self.notes.iter().copied().step_by(2).collect();
                self.notes = kept;
            }
            self.notes.push_back((stats.appended, now));
        }
        if stats.records == 0 {
            return 0.0;
        }
        let removed = stats.acked + stats.dropped_oldest;
        let since = match removed.checked_sub(self.backlog_at_open) {
            // Still a record from before this start.
            None => self.started,
            // The oldest record is the one appended `index`-th since open.
            Some(index) => {
                while self.notes.len() > 1 && self.notes.get(1).is_some_and(|&(n, _)| n <= index) {
                    self.notes.pop_front();
                }
                self.notes
                    .iter()
                    .find(|&&(n, _)| n > index)
                    .map_or(now, |&(_, t)| t)
            }
        };
        now.duration_since(since).unwrap_or_default().as_secs_f64()
    }
}

/// The spool writer: pseudonymises and appends records, commits in groups (durable at most
/// one flush interval after the append), and wakes the uplink. Returns records spooled.
fn spool_writer(
    rx: Receiver<Record>,
    spool: &Mutex<Spool>,
    pseudonymizer: &Pseudonymizer,
    flush_every: Duration,
    health: &Health,
    notify: &Notify,
) -> u64 {
    let mut spooled = 0u64;
    let mut dirty = false;
    let mut last_flush = Instant::now();
    loop {
        let received = rx.recv_timeout(flush_every);
        let closed = matches!(received, Err(RecvTimeoutError::Disconnected));
        if let Ok(mut record) = received {
            pseudonymizer.apply(&mut record);
            match serde_json::to_vec(&record) {
                Ok(json) => match lock(spool).append(&json) {
                    Ok(id) => {
                        spooled += u64::from(id.is_some());
                        dirty = true;
                    }
                    Err(e) => tracing::error!("Spool append failed: {e}"),
                },
                Err(e) => tracing::error!("Record not serialisable: {e}"),
            }
        }
        if dirty && (closed || last_flush.elapsed() >= flush_every) {
            if let Err(e) = lock(spool).flush() {
                tracing::error!("Spool flush failed: {e}");
            }
            dirty = false;
            last_flush = Instant::now();
            notify.notify_one();
        }
        health.progress(Stage::SpoolWriter);
        if closed {
            return spooled;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolStats;

    fn stats(records: u64, appended: u64, acked: u64) -> SpoolStats {
        SpoolStats {
            records,
            appended,
            acked,
            ..SpoolStats::default()
        }
    }

    #[test]
    fn reload_plan_applies_uplink_sensors_and_shutdown_and_names_the_rest() {
        let table = |text: &str| -> toml::Table { toml::from_str(text).unwrap() };
        let old = table("[uplink]\nurl = \"a\"\n[hep]\nudp = \"x\"\n[[sensors]]\nname = \"s\"\n");
        assert_eq!(ReloadPlan::new(&old, &old), ReloadPlan::default());
        let new = table("[uplink]\nurl = \"b\"\n[hep]\nudp = \"y\"\n[[sensors]]\nname = \"t\"\n[shutdown]\ndrain_timeout_s = 5\n");
        let plan = ReloadPlan::new(&old, &new);
        assert_eq!(plan.applied, ["sensors", "uplink", "shutdown"]);
        assert_eq!(plan.needs_restart, ["hep"]);
        assert!(plan
            .summary()
            .contains("needs a restart to take effect: hep"));
        // From some sensors to none: the health stages are set at start, so a restart.
        let none = table("[uplink]\nurl = \"a\"\n[hep]\nudp = \"x\"\n");
        assert_eq!(ReloadPlan::new(&old, &none).needs_restart, ["sensors"]);
    }

    #[test]
    fn oldest_age_follows_appends_and_acks() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut age = SpoolAge::new(0);
        age.started = t0;
        assert_eq!(age.update(&stats(0, 0, 0), at(0)), 0.0);
        // 10 records by t+1, 20 by t+2, 30 by t+3.
        assert_eq!(age.update(&stats(10, 10, 0), at(1)), 0.0);
        age.update(&stats(20, 20, 0), at(2));
        assert_eq!(age.update(&stats(30, 30, 0), at(3)), 2.0);
        // The first 15 acknowledged: the oldest is the 16th, appended by t+2.
        assert_eq!(age.update(&stats(15, 30, 15), at(5)), 3.0);
        // All acknowledged: no age.
        assert_eq!(age.update(&stats(0, 30, 30), at(6)), 0.0);
        // A backlog from before the start counts from the start.
        let mut old = SpoolAge::new(100);
        old.started = t0;
        assert_eq!(old.update(&stats(100, 0, 0), at(7)), 7.0);
        // Bounded notes.
        for i in 1..=10_000 {
            old.update(&stats(100 + i, i, 0), at(7 + i));
        }
        assert!(old.notes.len() <= SpoolAge::MAX_NOTES);
    }
}
