//! The HEP component: the listener (UDP, TCP, TLS) and the task that correlates its frames.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Context, DaemonError, LiveClock};
use crate::config::agent::HepConfig;
use crate::observe::events::{DecodeErrors, InternalEvent};
use crate::record::Record;
use crate::sources::hep::{HepListener, HepListenerSettings, HepStats, PanicHook};

/// The running HEP input.
#[derive(Debug)]
pub(super) struct HepInput {
    /// Where the listener is bound (port 0 in the configuration picks a free port).
    pub addrs: HepAddrs,
    task: JoinHandle<()>,
}

/// The bound addresses of the HEP listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HepAddrs {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
}

impl HepInput {
    /// Binds the listener and starts it and its correlation task. The listener stops when
    /// the sources' token is cancelled.
    pub(super) async fn build(
        hep: &HepConfig,
        queue_frames: usize,
        queue_bytes: usize,
        ctx: &Context,
    ) -> Result<Self, DaemonError> {
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
            max_queue_bytes: queue_bytes,
            ..HepListenerSettings::default()
        };
        let stats = Arc::new(HepStats::default());
        let (tx, mut rx) = mpsc::channel(queue_frames);
        let listener =
            HepListener::bind(settings, Arc::clone(&stats), Arc::clone(&ctx.metrics), tx).await?;
        let addrs = HepAddrs {
            udp: listener.udp_addr(),
            tcp: listener.tcp_addr(),
            tls: listener.tls_addr(),
        };
        tracing::info!(udp = ?addrs.udp, tcp = ?addrs.tcp, tls = ?addrs.tls, "HEP listener bound.");
        // A connection's or a datagram's panic: that connection or datagram dropped,
        // announced, and the listener serves on (`Supervisor::contained`); a panic of the
        // listener's loops ends `run` and is caught by the guard: announced, and the daemon
        // stops as for any other component.
        let panics: PanicHook = {
            let supervisor = Arc::clone(&ctx.supervisor);
            let records = ctx.records.clone();
            Arc::new(move |component, payload| {
                // What the connection had buffered (part of a frame at most) is unknown.
                if let Some(gap) = supervisor.contained(component, payload.as_ref(), None) {
                    records.push(Record::Gap(Box::new(gap)));
                }
            })
        };
        ctx.tracker.spawn(Arc::clone(&ctx.supervisor).guard(
            "hep_listener",
            ctx.records.clone(),
            listener.run(ctx.sources.clone(), panics),
        ));

        let pipeline = Arc::clone(&ctx.pipeline);
        let records = ctx.records.clone();
        let packets = ctx.metrics.source_packets.with(&["hep"]);
        let bytes = ctx.metrics.source_bytes.with(&["hep"]);
        let metrics = Arc::clone(&ctx.metrics);
        let unused = Arc::clone(&ctx.hep_unused);
        let hep_stats = Arc::clone(&stats);
        let supervisor = Arc::clone(&ctx.supervisor);
        let clock = LiveClock::new(ctx.clock_guard, &ctx.live_now, &ctx.metrics, "hep");
        // No shutdown branch on purpose: this task ends when the listener, stopped by the
        // sources' token, drops the channel's sender — after every frame already accepted
        // has been correlated, so a frame the listener took is never lost at shutdown.
        let task = ctx.tracker.spawn(async move {
            let mut correlated = 0u64;
            while let Some(mut event) = rx.recv().await {
                correlated += 1;
                packets.inc();
                bytes.add(event.frame.payload.len() as u64);
                // The sender's clock: checked against ours before it drives any timeout.
                event.frame.time = clock.check(event.frame.time);
                // A panic on a frame (a bug in a decoder or the correlator) is caught here:
                // announced, the daemon asked to stop, and the next frames go on meanwhile.
                let fed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::panics::inject("hep");
                    pipeline.hep(&event.frame, event.sequence, &mut |r| records.push(r))
                }));
                let fed = match fed {
                    Ok(fed) => fed,
                    Err(payload) => {
                        // The frame, and what the correlator was doing with it: unknown.
                        if let Some(gap) = supervisor.caught("hep", payload.as_ref(), None) {
                            records.push(Record::Gap(Box::new(gap)));
                        }
                        continue;
                    }
                };
                if let Err(e) = fed {
                    // Announced upstream by the ticker (an `input_dropped` gap record).
                    unused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %crate::report::Chain(&e), "HEP frame not used.");
                    DecodeErrors {
                        source: "hep",
                        kind: e.kind(),
                        count: 1,
                    }
                    .emit(&metrics);
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
        });
        Ok(HepInput { addrs, task })
    }

    /// Waits until the listener has stopped and every frame it accepted is correlated.
    pub(super) async fn join(self) {
        let _ = self.task.await;
    }
}
