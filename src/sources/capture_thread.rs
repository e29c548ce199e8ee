//! The thread that captures one interface: reads its AF_PACKET ring into a [`PacketSink`]
//! until cancelled, and when the interface goes down or away closes the capture and reopens
//! it with backoff (capped at 30 s) — a flapping link or a recreated VLAN interface must not
//! end capture for good. The one capture loop: the daemon and the tests run this.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::sources::afpacket::{
    CaptureFilter, Fanout, KernelStats, LiveCapture, LiveCaptureError, PacketSink, RingSettings,
    STOP_CHECK_INTERVAL,
};

/// How often the kernel's counters are read and handed to the caller.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What to capture.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub interface: String,
    pub ring: RingSettings,
    /// Ask the NIC for frames not addressed to this host (a port mirror).
    pub promiscuous: bool,
    /// The fanout group this thread's socket joins (one of several threads of the
    /// interface), also when it reopens.
    pub fanout: Option<Fanout>,
}

impl CaptureSettings {
    /// Opens the capture these settings describe.
    pub fn open(&self) -> Result<LiveCapture, LiveCaptureError> {
        LiveCapture::open_with(
            &self.interface,
            self.ring,
            self.promiscuous,
            CaptureFilter::IpOnly,
            self.fanout,
        )
    }
}

/// A capture running on its thread.
#[derive(Debug)]
pub struct CaptureThread {
    interface: String,
    thread: JoinHandle<KernelStats>,
}

impl CaptureThread {
    /// Opens the capture (its errors come back here, before any thread starts) and runs it.
    pub fn open_and_spawn<S: PacketSink + Send + 'static>(
        settings: CaptureSettings,
        stop: CancellationToken,
        sink: S,
    ) -> Result<Self, LiveCaptureError> {
        let capture = settings.open()?;
        let interface = settings.interface.clone();
        Self::spawn(settings, Some(capture), stop, sink, |_| {}).map_err(|source| {
            LiveCaptureError::Io {
                interface,
                operation: "spawning the capture thread",
                source,
            }
        })
    }

    /// Runs a capture on a thread named after the interface until `stop` is cancelled
    /// (looked at every [`STOP_CHECK_INTERVAL`]). `first` is the capture already open, if
    /// it could be; without it the interface is opened as soon as it is there. `kernel`
    /// receives the kernel's counters, summed over every opening, every second and at the
    /// end.
    pub fn spawn<S: PacketSink + Send + 'static>(
        settings: CaptureSettings,
        first: Option<LiveCapture>,
        stop: CancellationToken,
        mut sink: S,
        mut kernel: impl FnMut(KernelStats) + Send + 'static,
    ) -> std::io::Result<Self> {
        let interface = settings.interface.clone();
        let thread = std::thread::Builder::new()
            .name(format!("capture-{interface}"))
            .spawn(move || capture_loop(first, &settings, &stop, &mut sink, &mut kernel))?;
        Ok(CaptureThread { interface, thread })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Waits for the thread (after `stop`): the kernel's counters summed over every opening.
    pub fn join(self) -> std::thread::Result<KernelStats> {
        self.thread.join()
    }
}

fn capture_loop(
    first: Option<LiveCapture>,
    settings: &CaptureSettings,
    stop: &CancellationToken,
    sink: &mut impl PacketSink,
    kernel: &mut impl FnMut(KernelStats),
) -> KernelStats {
    let interface = settings.interface.as_str();
    let mut capture = first;
    // Counters of captures already closed; the open one's are added on top.
    let mut closed = KernelStats::default();
    let mut current = KernelStats::default();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut reopen_at = Instant::now();
    let mut last_report = Instant::now();
    // A blocking thread cannot select: it looks at the token at least every
    // STOP_CHECK_INTERVAL (the ring wait's timeout).
    while !stop.is_cancelled() {
        let Some(open) = capture.as_mut() else {
            if Instant::now() < reopen_at {
                std::thread::sleep(STOP_CHECK_INTERVAL);
                continue;
            }
            match settings.open() {
                Ok(c) => {
                    tracing::info!(interface, "Capture reopened.");
                    backoff.reset();
                    capture = Some(c);
                }
                Err(e) => {
                    tracing::debug!(interface, error = %crate::report::Chain(&e), "Capture not reopened yet.");
                    reopen_at = Instant::now() + backoff.next_wait();
                }
            }
            continue;
        };
        if let Err(e) = open.next_batch(STOP_CHECK_INTERVAL, |p| sink.packet(p)) {
            tracing::warn!(error = %crate::report::Chain(&e), "Capture failed; reopening with backoff.");
            if let Ok(k) = open.stats() {
                current = k;
            }
            closed = add_stats(closed, current);
            current = KernelStats::default();
            capture = None;
            reopen_at = Instant::now() + backoff.next_wait();
        }
        sink.batch_end();
        if last_report.elapsed() >= STATS_EVERY {
            last_report = Instant::now();
            if let Some(k) = capture.as_mut().and_then(|c| c.stats().ok()) {
                current = k;
            }
            kernel(add_stats(closed, current));
        }
    }
    if let Some(k) = capture.as_mut().and_then(|c| c.stats().ok()) {
        current = k;
    }
    let total = add_stats(closed, current);
    kernel(total);
    total
}

fn add_stats(a: KernelStats, b: KernelStats) -> KernelStats {
    KernelStats {
        packets: a.packets + b.packets,
        drops: a.drops + b.drops,
        freeze_queue: a.freeze_queue + b.freeze_queue,
    }
}
