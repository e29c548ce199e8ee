//! The live capture component: `[[capture]] threads` [`CaptureThread`]s per interface, each
//! reading its own AF_PACKET ring (one `PACKET_FANOUT` group per interface when there are
//! several: the kernel hands each flow to one of them) into the live pipeline — its own
//! decode state, the correlation shards its calls belong to — and reopening the capture with
//! backoff when the interface goes down or away.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Context, DaemonError, LiveClock, RecordQueue, SharedPipeline};
use crate::config::agent::CaptureConfig;
use crate::dissect::DissectLimits;
use crate::observe::{self, Health, Stage};
use crate::pipeline::LiveInput;
use crate::record::Record;
use crate::sources::afpacket::{Fanout, KernelStats, LiveCaptureError, LivePacket, PacketSink};
use crate::sources::capture_thread::{CaptureSettings, CaptureThread, RingGroup};

/// The running capture threads.
#[derive(Debug)]
pub(super) struct Captures {
    threads: Vec<CaptureThread>,
    groups: Vec<Arc<RingGroup>>,
}

/// The kernel's counters summed over every interface, when capture stopped.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct CaptureTotals {
    pub packets: u64,
    pub drops: u64,
    /// Times a ring grew, and the bytes of ring held at the end, over every interface.
    pub ring_grows: u64,
    pub ring_bytes: u64,
}

impl Captures {
    /// Opens every configured interface and starts its thread. An interface that is not
    /// there yet (a VLAN or bridge created later in boot, a USB NIC) is waited for, like a
    /// sensor that is unplugged; anything else (no permission, a ring the kernel refuses) is
    /// a configuration problem and stops the start.
    pub(super) fn build(configs: &[CaptureConfig], ctx: &Context) -> Result<Self, DaemonError> {
        let mut threads = Vec::new();
        let mut groups = Vec::new();
        let inputs: usize = configs.iter().map(|c| c.threads).sum();
        for (index, c) in configs.iter().enumerate() {
            // One fanout group per interface when it has several threads; the id names the
            // group in the network namespace, so it is this process's own.
            let fanout = (c.threads > 1).then(|| Fanout {
                group: fanout_group(std::process::id(), index),
            });
            // The kernel counters of each thread, summed into the interface's metric.
            let drops_by_thread: Arc<[AtomicU64]> =
                (0..c.threads).map(|_| AtomicU64::new(0)).collect();
            let group = RingGroup::new(
                CaptureSettings {
                    interface: c.interface.clone(),
                    ring: c.ring,
                    start: c.ring_start,
                    promiscuous: c.promiscuous,
                    fanout,
                },
                c.threads,
            );
            let ring_bytes = ctx.metrics.capture_ring_bytes.with(&[&c.interface]);
            let ring_grows = ctx.metrics.capture_ring_grows.with(&[&c.interface]);
            groups.push(Arc::clone(&group));
            for thread in 0..c.threads {
                let capture = match group.open(thread) {
                    Ok(capture) => Some(capture),
                    Err(
                        e @ (LiveCaptureError::InterfaceNotFound { .. }
                        | LiveCaptureError::InterfaceDown { .. }
                        | LiveCaptureError::InterfaceGone { .. }),
                    ) => {
                        if thread == 0 {
                            tracing::warn!(error = %crate::report::Chain(&e), "Interface not there yet; capturing as soon as it is there.");
                        }
                        None
                    }
                    Err(e) => return Err(e.into()),
                };
                // One memory budget for the daemon's reassembly: each capture thread decodes
                // with its share.
                let limits = DissectLimits {
                    memory_budget: crate::dissect::DEFAULT_MEMORY_BUDGET / inputs.max(1),
                    ..DissectLimits::default()
                };
                let clock =
                    LiveClock::new(ctx.clock_guard, &ctx.live_now, &ctx.metrics, &c.interface);
                let input =
                    ctx.pipeline
                        .add_input(&c.interface, limits, Some(clock.into_time_check()));
                let sink = CaptureSink {
                    pipeline: Arc::clone(&ctx.pipeline),
                    input,
                    records: ctx.records.clone(),
                    frames: 0,
                    packets: ctx.metrics.source_packets.with(&[&c.interface]),
                    bytes: ctx.metrics.source_bytes.with(&[&c.interface]),
                    health: Arc::clone(&ctx.health),
                    supervisor: Arc::clone(&ctx.supervisor),
                };
                if thread == 0 {
                    tracing::info!(interface = %c.interface, threads = c.threads, ring_bytes = group.ring_bytes(), ring_max_bytes = c.ring.total_bytes() * c.threads as u64, "Capturing.");
                }
                let drops = ctx.metrics.source_kernel_drops.with(&[&c.interface]);
                let by_thread = Arc::clone(&drops_by_thread);
                let (ring_bytes, ring_grows, of_group) = (
                    Arc::clone(&ring_bytes),
                    Arc::clone(&ring_grows),
                    Arc::clone(&group),
                );
                if thread == 0 {
                    ring_bytes.set(group.ring_bytes() as i64);
                }
                threads.push(CaptureThread::spawn(
                    Arc::clone(&group),
                    thread,
                    capture,
                    ctx.sources.clone(),
                    sink,
                    move |kernel: KernelStats| {
                        by_thread[thread].store(kernel.drops, Ordering::Relaxed);
                        drops.raise_to(by_thread.iter().map(|d| d.load(Ordering::Relaxed)).sum());
                        ring_bytes.set(of_group.ring_bytes() as i64);
                        ring_grows.raise_to(of_group.grows());
                    },
                )?);
            }
        }
        Ok(Captures { threads, groups })
    }

    /// Waits for every thread, once the sources' token is cancelled (each notices within
    /// `STOP_CHECK_INTERVAL`); the runtime worker is lent out meanwhile, not blocked.
    pub(super) fn join(self) -> CaptureTotals {
        let mut totals = CaptureTotals::default();
        for group in &self.groups {
            totals.ring_grows += group.grows();
            totals.ring_bytes += group.ring_bytes();
        }
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

/// A capture thread's sink: decodes its frames (its own input) and correlates them in the
/// shards their calls belong to.
struct CaptureSink {
    pipeline: SharedPipeline,
    input: Arc<LiveInput>,
    records: RecordQueue,
    frames: u64,
    packets: Arc<observe::metrics::Counter>,
    bytes: Arc<observe::metrics::Counter>,
    health: Arc<Health>,
    supervisor: Arc<super::supervise::Supervisor>,
}

impl PacketSink for CaptureSink {
    fn packet(&mut self, packet: LivePacket<'_>) {
        self.frames += 1;
        self.packets.inc();
        self.bytes.add(packet.data.len() as u64);
        let frame = packet.frame(self.frames);
        let records = &self.records;
        // A panic on a packet (a bug in a decoder or the correlator) is caught here:
        // announced, the daemon asked to stop, and the next packets go on meanwhile.
        let fed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::panics::inject("capture");
            self.pipeline
                .frame(&self.input, &frame, &mut |r| records.push(r));
        }));
        if let Err(payload) = fed {
            // The packet, and what the correlator was doing with it: unknown.
            if let Some(gap) = self.supervisor.caught("capture", payload.as_ref(), None) {
                records.push(Record::Gap(Box::new(gap)));
            }
        }
    }

    fn batch_end(&mut self) {
        // Kernel capture times are the wall clock: the hold is measured on it too.
        let records = &self.records;
        let now = crate::time::Timestamp::now();
        let released = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.pipeline
                .release_held(&self.input, now, &mut |r| records.push(r));
        }));
        if let Err(payload) = released {
            if let Some(gap) = self.supervisor.caught("capture", payload.as_ref(), None) {
                records.push(Record::Gap(Box::new(gap)));
            }
        }
        self.health.progress(Stage::Capture);
    }
}

/// The fanout group id of the `index`-th configured interface of process `pid`: ids name
/// groups in the whole network namespace, so two daemons (or a test beside a daemon) on one
/// interface must not share one. Deterministic, so a thread that reopens its capture joins
/// its siblings' group again.
fn fanout_group(pid: u32, index: usize) -> u16 {
    let mixed = pid.wrapping_mul(0x9E37_79B9) ^ (index as u32).wrapping_mul(0x85EB_CA6B);
    (mixed ^ (mixed >> 16)) as u16
}

#[cfg(test)]
mod tests {
    use super::fanout_group;

    #[test]
    fn fanout_groups_differ_by_interface_and_process() {
        assert_ne!(fanout_group(100, 0), fanout_group(100, 1));
        assert_ne!(fanout_group(100, 0), fanout_group(101, 0));
        assert_eq!(fanout_group(100, 2), fanout_group(100, 2));
    }
}
