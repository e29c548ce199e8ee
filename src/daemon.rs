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
//! - Time moves forward on a tick of its own, so calls and streams time out on a quiet line.
//! - Shutdown (SIGTERM/SIGINT): sources stop, the correlator is finished — open calls become
//!   partial records (`closed_by: shutdown`) —, the spool writer drains its queue and syncs,
//!   and the uplink forwards what it can until the drain deadline; the rest stays spooled
//!   for the next start. SIGHUP re-validates the configuration file and reconnects the
//!   uplink, so renewed certificates take effect at once (they are also re-read at every
//!   handshake).
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
use crate::time::Timestamp;
use crate::uplink::client::{forward_until_drained, Backoff, DeadLetters, ForwardError, Uplink};

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
        let kind = match &record {
            Record::Call(_) => "call",
            Record::Stream(_) => "stream",
            Record::CaptureSummary(_) => "capture_summary",
            Record::Sensor(_) => "sensor",
            Record::Alert(_) => "alert",
        };
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
}

struct CorrelateObserver<'a> {
    correlator: &'a mut Correlator,
    records: &'a RecordQueue,
}

impl Observer for CorrelateObserver<'_> {
    fn sip(&mut self, meta: &MessageMeta, message: &crate::decode::sip::SipMessage<'_>) {
        let records = self.records;
        self.correlator.sip(meta, message, &mut |r| records.push(r));
    }

    fn datagram(&mut self, meta: &DatagramMeta, payload: &[u8]) {
        let records = self.records;
        self.correlator
            .datagram(meta, payload, &mut |r| records.push(r));
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
        let sink = CaptureSink {
            dissector: Dissector::new(DissectLimits::default()),
            correlator: Arc::clone(&correlator),
            records: records.clone(),
            frames: 0,
            packets: metrics.source_packets.with(&[&c.interface]),
            bytes: metrics.source_bytes.with(&[&c.interface]),
            health: Arc::clone(&health),
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
            auth_key: hep.auth_key.as_ref().map(|k| k.as_bytes().to_vec()),
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
        hep_task = Some(tokio::spawn(async move {
            let mut correlated = 0u64;
            while let Some(event) = rx.recv().await {
                correlated += 1;
                packets.inc();
                bytes.add(event.frame.payload.len() as u64);
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
                resync_bytes = stats.resync_bytes.load(Ordering::Relaxed),
                "HEP input stopped."
            );
        }));
    }

    // Sensors: one task per device; records bridged into the record queue.
    let mut sensor_tasks = Vec::new();
    if !config.sensors.is_empty() {
        let (tx, mut rx) = mpsc::channel::<Record>(1024);
        for device in &config.sensors {
            let opener = SerialOpener {
                path: device.port.clone(),
                serial: device.profile.serial.clone(),
            };
            tracing::info!(device = %device.name, port = %device.port.display(), model = %device.profile.model, "Reading sensor.");
            sensor_tasks.push(tokio::spawn(
                Device::new(device.clone(), opener, tx.clone()).run(stop_rx.clone()),
            ));
        }
        drop(tx);
        let records = records.clone();
        let metrics = Arc::clone(&metrics);
        let health = Arc::clone(&health);
        sensor_tasks.push(tokio::spawn(async move {
            while let Some(record) = rx.recv().await {
                match &record {
                    Record::Sensor(s) => metrics.sensor_readings.with(&[&s.device]).inc(),
                    Record::Alert(a) => metrics.sensor_alerts.with(&[&a.device]).inc(),
                    _ => {}
                }
                health.progress(Stage::Sensors);
                records.push(record);
            }
            crate::record::sensor::PortCounters::default()
        }));
    }

    // Time moves on without packets; gauges follow.
    let ticker = {
        let spool = Arc::clone(&spool);
        let hep_stats = config.hep.is_some().then(|| Arc::clone(&hep_stats));
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
                c.advance(Timestamp::now(), &mut |r| records.push(r));
                metrics.calls_active.set(c.calls().open_calls() as i64);
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
                }
                health.progress(Stage::Correlation);
            }
        })
    };

    // Uplink.
    let mut uplink = Uplink::new(
        config.forward.uplink.clone(),
        config.forward.node_id.clone(),
    )?;
    metrics.watch_tls_alerts(uplink.tls_alerts());
    let report_progress = {
        let metrics = Arc::clone(&metrics);
        let health = Arc::clone(&health);
        move |stats: &crate::uplink::client::UplinkStats, acknowledged: bool| {
            metrics.observe_uplink(stats, SystemTime::now());
            if acknowledged {
                health.uplink_current();
            }
            health.progress(Stage::Uplink);
        }
    };
    uplink.on_progress(report_progress.clone());
    {
        // Read at scrape time: a renewed certificate shows at once.
        let cert = config.forward.uplink.cert_file.clone();
        metrics
            .uplink_client_cert_not_after_timestamp_seconds
            .set_source(move || crate::uplink::tls::certificate_not_after(&cert).map(|t| t as f64));
    }
    let dead_letters = DeadLetters::for_uplink(&config.forward.uplink);
    let reconnect = Arc::new(Notify::new());
    let forwarder = {
        let spool = Arc::clone(&spool);
        let metrics = Arc::clone(&metrics);
        let health = Arc::clone(&health);
        let notify = Arc::clone(&spooled_notify);
        let reconnect = Arc::clone(&reconnect);
        let uplink_config = config.forward.uplink.clone();
        let node = config.forward.node_id.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            loop {
                let round = forward_until_drained(
                    &spool,
                    &mut uplink,
                    &dead_letters,
                    uplink_config.batch_records,
                    &mut backoff,
                    None,
                );
                tokio::select! {
                    result = round => {
                        match result {
                            Ok(stats) => {
                                metrics.observe_uplink(&stats, SystemTime::now());
                                health.uplink_current();
                            }
                            Err(e) => tracing::error!("Forwarding failed: {e}"),
                        }
                    }
                    _ = stop.changed() => break,
                    _ = reconnect.notified() => {
                        match Uplink::new(uplink_config.clone(), node.clone()) {
                            Ok(mut fresh) => {
                                // Totals carry over: the metrics mirror them and never go down.
                                fresh.stats = std::mem::take(&mut uplink.stats);
                                fresh.on_progress(report_progress.clone());
                                uplink = fresh;
                            }
                            Err(e) => tracing::error!("Uplink not reloaded: {e}"),
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
            (uplink, dead_letters, backoff)
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
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                let _ = notifier.reloading();
                match crate::agent_config::load(&config_path) {
                    Ok(_) => tracing::info!("SIGHUP: configuration valid; reconnecting the uplink with the current certificates."),
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
    let deadline = Instant::now() + config.drain_timeout;
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
    for task in sensor_tasks {
        let _ = task.await;
    }
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
    let (mut uplink, dead_letters, mut backoff) = forwarder
        .await
        .map_err(|e| DaemonError::Io(std::io::Error::other(e.to_string())))?;
    let batch = config.forward.uplink.batch_records;
    let drained = forward_until_drained(
        &spool,
        &mut uplink,
        &dead_letters,
        batch,
        &mut backoff,
        Some(deadline),
    );
    let forwarded_stats = match tokio::time::timeout_at(deadline.into(), drained).await {
        Ok(Ok(stats)) => stats,
        Ok(Err(ForwardError::Deadline(reason))) => {
            tracing::warn!("Collector not reached before the drain deadline ({reason}); the rest stays spooled.");
            uplink.stats
        }
        Ok(Err(e)) => {
            tracing::error!("Forwarding at shutdown failed: {e}");
            uplink.stats
        }
        Err(_) => {
            tracing::warn!("Drain deadline reached; the rest stays spooled.");
            uplink.stats
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
