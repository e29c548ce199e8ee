//! Forwarding as a running task: what the daemon (and the spool load tool) run beside the
//! spool writer. It forwards whatever is durable, sleeps until the spooler's next commit
//! (or a second), reconnects on request with the settings last given, and at the end
//! forwards until the spool is drained or a deadline passes; the rest stays spooled.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{ForwardError, Forwarder, UplinkStats};
use super::UplinkSettings;
use crate::report::Chain;
use crate::spool::Spool;

/// Called with a panic of the forwarding task (caught at its boundary; the records stay
/// in the spool, sent by the next start).
pub type OnPanic = Box<dyn FnOnce(&(dyn std::any::Any + Send)) + Send>;

/// The forwarding task, until [`Forwarding::drain`].
#[derive(Debug)]
pub struct Forwarding {
    /// The forwarder back, or `None` when the task panicked.
    task: JoinHandle<Option<Forwarder>>,
    /// Stops the forwarding loop (not the drain).
    stop: CancellationToken,
    settings: watch::Sender<UplinkSettings>,
    reconnect: Arc<Notify>,
    spool: Arc<Mutex<Spool>>,
}

/// How a drain ended short of an empty spool.
#[derive(Debug, thiserror::Error)]
#[error("the spool was not drained before the deadline: {reason}")]
pub struct NotDrained {
    /// What the forwarder achieved all the same.
    pub stats: UplinkStats,
    pub reason: String,
}

impl Forwarding {
    /// Starts forwarding `spool` with `forwarder` on `tracker` (inside a tokio runtime);
    /// `committed` wakes it after every commit, `after_round` is called after every round
    /// that ended with the spool drained or an error (the daemon's progress for its health).
    pub fn start(
        forwarder: Forwarder,
        spool: &Arc<Mutex<Spool>>,
        committed: Arc<Notify>,
        tracker: &TaskTracker,
        after_round: impl Fn() + Send + 'static,
    ) -> Forwarding {
        Forwarding::start_supervised(forwarder, spool, committed, tracker, after_round, None)
    }

    /// [`Forwarding::start`], with `on_panic` told of a panic of the task (the daemon
    /// announces it and stops); the drain then forwards nothing more (the records stay in
    /// the spool for the next start).
    pub fn start_supervised(
        mut forwarder: Forwarder,
        spool: &Arc<Mutex<Spool>>,
        committed: Arc<Notify>,
        tracker: &TaskTracker,
        after_round: impl Fn() + Send + 'static,
        on_panic: Option<OnPanic>,
    ) -> Forwarding {
        let reconnect = Arc::new(Notify::new());
        let (settings, mut new_settings) = watch::channel(forwarder.settings().clone());
        let stop = CancellationToken::new();
        let task = {
            let spool = Arc::clone(spool);
            let reconnect = Arc::clone(&reconnect);
            let stop = stop.clone();
            let run = async move {
                loop {
                    crate::panics::inject("uplink");
                    tokio::select! {
                        result = forwarder.forward_until_drained(&spool, None) => {
                            if let Err(e) = result {
                                tracing::error!(error = %Chain(&e), "Forwarding failed.");
                            }
                        }
                        () = stop.cancelled() => break,
                        _ = reconnect.notified() => {
                            let settings = new_settings.borrow_and_update().clone();
                            if let Err(e) = forwarder.reconfigure(settings) {
                                tracing::error!(error = %Chain(&e), "Uplink not reloaded.");
                            }
                            continue;
                        }
                    }
                    after_round();
                    tokio::select! {
                        _ = committed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = stop.cancelled() => break,
                    }
                }
                forwarder
            };
            tracker.spawn(async move {
                use futures_util::FutureExt;
                match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                    Ok(forwarder) => Some(forwarder),
                    Err(payload) => {
                        match on_panic {
                            Some(on_panic) => on_panic(payload.as_ref()),
                            None => tracing::error!(
                                message = crate::panics::message(payload.as_ref()),
                                "The forwarding task panicked: nothing more is forwarded by this run."
                            ),
                        }
                        None
                    }
                }
            })
        };
        Forwarding {
            task,
            stop,
            settings,
            reconnect,
            spool: Arc::clone(spool),
        }
    }

    /// Takes changed settings: used at the next [`Forwarding::reconnect`].
    pub fn reconfigure(&self, settings: UplinkSettings) {
        let _ = self.settings.send(settings);
    }

    /// Reconnects, so renewed certificates (or new settings) take effect at once.
    pub fn reconnect(&self) {
        self.reconnect.notify_one();
    }

    /// Stops the forwarding loop and forwards what the spool holds until it is drained or
    /// `deadline` passes; the rest stays spooled.
    pub async fn drain(self, deadline: Instant) -> Result<UplinkStats, NotDrained> {
        self.stop.cancel();
        let mut forwarder = match self.task.await {
            Ok(Some(forwarder)) => forwarder,
            Ok(None) => {
                return Err(NotDrained {
                    stats: UplinkStats::default(),
                    reason: "the forwarding task panicked".to_owned(),
                })
            }
            Err(e) => {
                return Err(NotDrained {
                    stats: UplinkStats::default(),
                    reason: format!("the forwarding task failed: {}", Chain(&e)),
                })
            }
        };
        let drained = forwarder.forward_until_drained(&self.spool, Some(deadline));
        let reason = match tokio::time::timeout_at(deadline.into(), drained).await {
            Ok(Ok(stats)) => return Ok(stats),
            Ok(Err(ForwardError::Deadline(reason))) => reason,
            Ok(Err(e)) => Chain(&e).to_string(),
            Err(_) => "drain deadline reached".to_owned(),
        };
        Err(NotDrained {
            stats: forwarder.stats,
            reason,
        })
    }
}
