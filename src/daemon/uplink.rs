//! The uplink component: forwards durable records to the collector while the daemon runs,
//! reconnects on SIGHUP, and drains what it can under the deadline at shutdown.

use crate::report::Chain;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Context, DaemonError};
use crate::config::ForwardConfig;
use crate::observe::{AgentMetrics, Stage};
use crate::spool::Spool;
use crate::uplink::client::{Attempt, ForwardError, Forwarder, UplinkStats};
use crate::uplink::UplinkSettings as UplinkConfig;

/// The running uplink.
#[derive(Debug)]
pub(super) struct Uplink {
    task: JoinHandle<Forwarder>,
    /// Stops the forwarding loop (not the drain at shutdown).
    stop: CancellationToken,
    configs: watch::Sender<UplinkConfig>,
    reconnect: Arc<Notify>,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<AgentMetrics>,
}

impl Uplink {
    /// Sets up the forwarder (TLS files read now) and starts forwarding whatever the spool
    /// holds; `committed` wakes it after every commit.
    pub(super) fn build(
        config: &ForwardConfig,
        ctx: &Context,
        spool: &Arc<Mutex<Spool>>,
        committed: Arc<Notify>,
    ) -> Result<Self, DaemonError> {
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
                        metrics.uplink_failures.with(&[kind.label()]).inc();
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
        let reconnect = Arc::new(Notify::new());
        // SIGHUP hands a changed [uplink] over here; the forwarder reconnects with it.
        let (configs, mut uplink_configs) = watch::channel(config.uplink.clone());
        let stop = CancellationToken::new();
        let task = {
            let spool = Arc::clone(spool);
            let health = Arc::clone(health);
            let reconnect = Arc::clone(&reconnect);
            let stop = stop.clone();
            ctx.tracker.spawn(async move {
                loop {
                    tokio::select! {
                        result = forwarder.forward_until_drained(&spool, None) => {
                            if let Err(e) = result {
                                tracing::error!(error = %Chain(&e), "Forwarding failed.");
                            }
                        }
                        () = stop.cancelled() => break,
                        _ = reconnect.notified() => {
                            let uplink_config = uplink_configs.borrow_and_update().clone();
                            if let Err(e) = forwarder.reconfigure(uplink_config) {
                                tracing::error!(error = %Chain(&e), "Uplink not reloaded.");
                            }
                            continue;
                        }
                    }
                    health.progress(Stage::Uplink);
                    tokio::select! {
                        _ = committed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = stop.cancelled() => break,
                    }
                }
                forwarder
            })
        };
        Ok(Uplink {
            task,
            stop,
            configs,
            reconnect,
            spool: Arc::clone(spool),
            metrics: Arc::clone(metrics),
        })
    }

    /// Takes a changed `[uplink]` (SIGHUP): used at the next [`Uplink::reconnect`].
    pub(super) fn reconfigure(&self, config: UplinkConfig) {
        watch_certificate(&self.metrics, &config);
        let _ = self.configs.send(config);
    }

    /// Reconnects, so renewed certificates (or a new `[uplink]`) take effect at once.
    pub(super) fn reconnect(&self) {
        self.reconnect.notify_one();
    }

    /// Stops the forwarding loop and forwards what the spool holds until it is drained or
    /// `deadline` passes; the rest stays spooled for the next start.
    pub(super) async fn drain(self, deadline: Instant) -> UplinkStats {
        self.stop.cancel();
        let mut forwarder = match self.task.await {
            Ok(forwarder) => forwarder,
            Err(e) => {
                tracing::error!(error = %Chain(&e), "Uplink task failed.");
                return UplinkStats::default();
            }
        };
        let drained = forwarder.forward_until_drained(&self.spool, Some(deadline));
        match tokio::time::timeout_at(deadline.into(), drained).await {
            Ok(Ok(stats)) => stats,
            Ok(Err(ForwardError::Deadline(reason))) => {
                tracing::warn!("Collector not reached before the drain deadline ({reason}); the rest stays spooled.");
                forwarder.stats
            }
            Ok(Err(e)) => {
                tracing::error!(error = %Chain(&e), "Forwarding at shutdown failed.");
                forwarder.stats
            }
            Err(_) => {
                tracing::warn!("Drain deadline reached; the rest stays spooled.");
                forwarder.stats
            }
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
