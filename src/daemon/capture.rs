//! The live capture component: one [`CaptureThread`] per interface reading its AF_PACKET
//! ring into the shared pipeline (its own decode state, the one correlator), reopening the
//! capture with backoff when the interface goes down or away.

use std::sync::Arc;

use super::{lock, Context, DaemonError, LiveClock, RecordQueue, SharedPipeline};
use crate::config::agent::CaptureConfig;
use crate::dissect::DissectLimits;
use crate::observe::{self, Health, Stage};
use crate::pipeline::InputId;
use crate::sources::afpacket::{
    KernelStats, LiveCapture, LiveCaptureError, LivePacket, PacketSink,
};
use crate::sources::capture_thread::{CaptureSettings, CaptureThread};

/// The running capture threads.
#[derive(Debug)]
pub(super) struct Captures {
    threads: Vec<CaptureThread>,
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
            let ring = c.ring;
            let capture = match LiveCapture::open(&c.interface, ring, c.promiscuous) {
                Ok(capture) => Some(capture),
                Err(
                    e @ (LiveCaptureError::InterfaceNotFound { .. }
                    | LiveCaptureError::InterfaceDown { .. }
                    | LiveCaptureError::InterfaceGone { .. }),
                ) => {
                    tracing::warn!(error = %crate::report::Chain(&e), "Interface not there yet; capturing as soon as it is there.");
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
            tracing::info!(interface = %c.interface, ring_bytes = c.ring.total_bytes(), "Capturing.");
            let drops = ctx.metrics.source_kernel_drops.with(&[&c.interface]);
            let settings = CaptureSettings {
                interface: c.interface.clone(),
                ring,
                promiscuous: c.promiscuous,
            };
            threads.push(CaptureThread::spawn(
                settings,
                capture,
                ctx.sources.clone(),
                sink,
                move |kernel: KernelStats| drops.raise_to(kernel.drops),
            )?);
        }
        Ok(Captures { threads })
    }

    /// Waits for every thread, once the sources' token is cancelled (each notices within
    /// `STOP_CHECK_INTERVAL`); the runtime worker is lent out meanwhile, not blocked.
    pub(super) fn join(self) -> CaptureTotals {
        let mut totals = CaptureTotals::default();
        for thread in self.threads {
            let interface = thread.interface().to_owned();
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
