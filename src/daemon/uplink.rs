//! The uplink component: forwards durable records to the collector (or to NATS JetStream,
//! the same forwarder with another sink: see `crate::uplink::nats`) while the daemon runs,
//! reconnects on SIGHUP, and drains what it can under the deadline at shutdown.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::Notify;

use super::{Context, DaemonError};
use crate::config::ForwardConfig;
use crate::observe::events::{InternalEvent, UplinkAttemptFailed};
use crate::observe::{AgentMetrics, Stage};
use crate::spool::Spool;
use crate::uplink::client::{Attempt, Forwarder, UplinkStats};
use crate::uplink::forwarding::{Forwarding, NotDrained};
use crate::uplink::UplinkSettings as UplinkConfig;

/// The running uplink: the forwarding task, fed into the daemon's metrics and health.
#[derive(Debug)]
pub(super) struct Uplink {
    forwarding: Forwarding,
    metrics: Arc<AgentMetrics>,
}

/// The uplink set up but not started: everything that can fail (the TLS files) is done.
/// The daemon starts it right after READY, so its first attempt does not compete with the
/// start-up for the CPU (a one-core box, or qemu-user translating code).
#[derive(Debug)]
pub(super) struct PreparedUplink {
    forwarder: Forwarder,
    metrics: Arc<AgentMetrics>,
    health: Arc<crate::observe::Health>,
}

impl Uplink {
    /// Sets up the forwarder (TLS files read now); [`PreparedUplink::start`] starts it.
    pub(super) fn prepare(
        config: &ForwardConfig,
        ctx: &Context,
    ) -> Result<PreparedUplink, DaemonError> {
        let metrics = &ctx.metrics;
        let health = &ctx.health;
        let mut forwarder = Forwarder::new(&config.node_id, &config.uplink, &config.keyring)?;
        metrics.watch_tls_alerts(forwarder.tls_alerts());
        forwarder.on_progress({
            let metrics = Arc::clone(metrics);
            let health = Arc::clone(health);
            move |stats: &UplinkStats, attempt: &Attempt<'_>| {
                metrics.observe_uplink(stats, SystemTime::now());
                match *attempt {
                    Attempt::Acked => health.uplink_acked(),
                    Attempt::Drained => health.spool_drained(),
                    Attempt::Failed { kind, reason } => {
                        UplinkAttemptFailed { kind: kind.label() }.emit(&metrics);
                        health.uplink_failed(reason);
                    }
                    Attempt::Split { .. } | Attempt::DeadLettered { .. } => {
                        health.uplink_answered()
                    }
                }
                health.set_dead_letters(stats.dead_letters_held);
                health.progress(Stage::Uplink);
            }
        });
        health.set_dead_letters(forwarder.stats.dead_letters_held);
        metrics.observe_uplink(&forwarder.stats, SystemTime::now());
        watch_certificate(metrics, &config.uplink);
        Ok(PreparedUplink {
            forwarder,
            metrics: Arc::clone(metrics),
            health: Arc::clone(health),
        })
    }

    /// Takes a changed `[uplink]` (SIGHUP): used at the next [`Uplink::reconnect`].
    pub(super) fn reconfigure(&self, config: UplinkConfig) {
        watch_certificate(&self.metrics, &config);
        self.forwarding.reconfigure(config);
    }

    /// Reconnects, so renewed certificates (or a new `[uplink]`) take effect at once.
    pub(super) fn reconnect(&self) {
        self.forwarding.reconnect();
    }

    /// Stops the forwarding loop and forwards what the spool holds until it is drained or
    /// `deadline` passes; the rest stays spooled for the next start.
    pub(super) async fn drain(self, deadline: Instant) -> UplinkStats {
        match self.forwarding.drain(deadline).await {
            Ok(stats) => stats,
            Err(NotDrained { stats, reason }) => {
                tracing::warn!(%reason, "Collector not reached before the drain deadline; the rest stays spooled.");
                stats
            }
        }
    }
}

impl PreparedUplink {
    /// Starts forwarding whatever the spool holds; `committed` wakes it after every commit.
    pub(super) fn start(
        self,
        spool: &Arc<Mutex<Spool>>,
        committed: Arc<Notify>,
        ctx: &Context,
    ) -> Uplink {
        let tracker = &ctx.tracker;
        let supervisor = Arc::clone(&ctx.supervisor);
        let health = self.health;
        // A panic of the forwarding task: announced, and the daemon stops (the records stay
        // spooled: nothing is lost, the next start sends them). The announcement waits in
        // the supervisor for the shutdown: the task outlives the record queue, which a
        // sender held here would keep open.
        let on_panic: crate::uplink::forwarding::OnPanic = Box::new(move |payload| {
            if let Some(gap) = supervisor.caught("uplink", payload, Some(0)) {
                supervisor.keep(gap);
            }
        });
        let forwarding = Forwarding::start_supervised(
            self.forwarder,
            spool,
            committed,
            tracker,
            move || health.progress(Stage::Uplink),
            Some(on_panic),
        );
        Uplink {
            forwarding,
            metrics: self.metrics,
        }
    }
}

/// The client certificate's expiry, read at scrape time: a renewed certificate shows at once.
fn watch_certificate(metrics: &AgentMetrics, uplink: &UplinkConfig) {
    let cert = uplink.cert_file.clone();
    metrics
        .uplink_client_cert_not_after_timestamp_seconds
        .set_source(move || crate::uplink::tls::certificate_not_after(&cert).map(|t| t as f64));
}
