//! The live capture component: one thread per interface reading its AF_PACKET ring into the
//! shared pipeline (its own decode state, the one correlator), reopening the capture with
//! backoff when the interface goes down or away.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{lock, Context, DaemonError, LiveClock, RecordQueue, SharedPipeline, TICK};
use crate::agent_config::CaptureConfig;
use crate::dissect::DissectLimits;
use crate::observe::{self, AgentMetrics, Health, Stage};
use crate::pipeline::InputId;
use crate::sources::afpacket::{
    KernelStats, LiveCapture, LiveCaptureError, LivePacket, PacketSink, RingSettings,
    STOP_CHECK_INTERVAL,
};
use crate::uplink::client::Backoff;

/// The running capture threads.
#[derive(Debug)]
pub(super) struct Captures {
    threads: Vec<(String, JoinHandle<KernelStats>)>,
}

/// The kernel's counters summed over every interface, when capture stopped.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct CaptureTotals {
    pub packets: u64,
    pub drops: u64,
}

impl Captures {
    /// Opens every configured interface and starts its thread. An interface that is not
    /// there yet (a VLAN or bridge created later in boot, a USB NIC) is waited for, like a
    /// sensor that is unplugged; anything else (no permission, a ring the kernel refuses) is
    /// a configuration problem and stops the start.
    pub(super) fn build(configs: &[CaptureConfig], ctx: &Context) -> Result<Self, DaemonError> {
        let mut threads = Vec::new();
        for c in configs {
            let ring = c.ring();
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
            // One memory budget for the daemon's reassembly: each interface decodes with its
            // share.
            let limits = DissectLimits {
                memory_budget: crate::dissect::DEFAULT_MEMORY_BUDGET / configs.len().max(1),
                ..DissectLimits::default()
            };
            let clock = LiveClock::new(ctx.clock_guard, &ctx.live_now, &ctx.metrics, &c.interface);
            let input =
                lock(&ctx.pipeline).add_input(&c.interface, limits, Some(clock.into_time_check()));
            let sink = CaptureSink {
                pipeline: Arc::clone(&ctx.pipeline),
                input,
                records: ctx.records.clone(),
                frames: 0,
                packets: ctx.metrics.source_packets.with(&[&c.interface]),
                bytes: ctx.metrics.source_bytes.with(&[&c.interface]),
                health: Arc::clone(&ctx.health),
            };
            tracing::info!(interface = %c.interface, ring_bytes = c.ring_bytes, "Capturing.");
            let stop = ctx.sources.clone();
            let metrics = Arc::clone(&ctx.metrics);
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
            threads.push((c.interface.clone(), thread));
        }
        Ok(Captures { threads })
    }

    /// Waits for every thread, once the sources' token is cancelled (each notices within
    /// [`STOP_CHECK_INTERVAL`]); the runtime worker is lent out meanwhile, not blocked.
    pub(super) fn join(self) -> CaptureTotals {
        let mut totals = CaptureTotals::default();
        for (interface, thread) in self.threads {
            match tokio::task::block_in_place(|| thread.join()) {
                Ok(stats) => {
                    totals.drops += stats.drops;
                    totals.packets += stats.packets;
                    tracing::info!(%interface, packets = stats.packets, drops = stats.drops, "Capture stopped.");
                }
                Err(_) => tracing::error!("Capture thread of {interface} panicked."),
            }
        }
        totals
    }
}

/// A capture thread's sink: decode and correlate its interface's frames under the shared
/// lock.
struct CaptureSink {
    pipeline: SharedPipeline,
    input: InputId,
    records: RecordQueue,
    frames: u64,
    packets: Arc<observe::metrics::Counter>,
    bytes: Arc<observe::metrics::Counter>,
    health: Arc<Health>,
}

impl PacketSink for CaptureSink {
    fn packet(&mut self, packet: LivePacket<'_>) {
        self.frames += 1;
        self.packets.inc();
        self.bytes.add(packet.data.len() as u64);
        let frame = packet.frame(self.frames);
        let records = &self.records;
        lock(&self.pipeline).frame(self.input, &frame, &mut |r| records.push(r));
    }

    fn batch_end(&mut self) {
        self.health.progress(Stage::Capture);
    }
}

/// A capture thread: reads the ring into the sink until `stop` is cancelled, publishes the
/// kernel's counters every second (the decode counters are the ticker's, summed over
/// interfaces), and when the interface goes down or away closes the capture and reopens it
/// with backoff (capped at 30 s) — a flapping link or a recreated VLAN interface must not
/// end capture for good. Returns the kernel's counters summed over every opening.
fn capture_loop(
    first: Option<LiveCapture>,
    interface: &str,
    ring: RingSettings,
    promiscuous: bool,
    stop: &CancellationToken,
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
    // A blocking thread cannot select: it looks at the token at least every
    // STOP_CHECK_INTERVAL (the ring wait's timeout).
    while !stop.is_cancelled() {
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
        }
    }
    if let Some(k) = capture.as_mut().and_then(|c| c.stats().ok()) {
        current = k;
    }
    let total = add_stats(closed, current);
    drops.raise_to(total.drops);
    total
}

fn add_stats(a: KernelStats, b: KernelStats) -> KernelStats {
    KernelStats {
        packets: a.packets + b.packets,
        drops: a.drops + b.drops,
        freeze_queue: a.freeze_queue + b.freeze_queue,
    }
}
