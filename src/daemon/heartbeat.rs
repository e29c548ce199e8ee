//! The heartbeat component: a `teledge.heartbeat/1` record ([`crate::record::heartbeat`])
//! at start, every `[node] heartbeat_interval_s`, and at once when a SIGHUP read a
//! configuration file whose digest differs from the last one, into the record queue like
//! every other record (so through the spool: a node that cannot reach the collector
//! reports later, not never). Stops with the sources. A panic of it is caught by the
//! daemon's supervisor (`component_panicked`, the daemon stops with exit 2).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Context;
use crate::record::heartbeat::{HeartbeatReason, HeartbeatRecord, HEARTBEAT_SCHEMA};
use crate::record::Record;

/// The running heartbeat: tells it the digest of each configuration read.
#[derive(Debug)]
pub(super) struct Heartbeat {
    digest: watch::Sender<String>,
    task: JoinHandle<()>,
}

/// What every heartbeat of this run says besides the digest and the time.
#[derive(Debug, Clone)]
struct Identity {
    node: String,
    started_at: Instant,
    started: String,
}

impl Identity {
    fn record(&self, config_sha256: &str, reason: HeartbeatReason) -> HeartbeatRecord {
        HeartbeatRecord {
            schema: HEARTBEAT_SCHEMA.to_owned(),
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            arch: crate::fleet::native_arch().to_owned(),
            config_sha256: config_sha256.to_owned(),
            reason,
            started: self.started.clone(),
            uptime_s: (self.started_at.elapsed().as_millis() as f64) / 1000.0,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }
}

impl Heartbeat {
    /// Starts the heartbeat; the first record is queued before this returns.
    pub(super) fn spawn(
        ctx: &Context,
        node: &str,
        interval: Duration,
        config_sha256: &str,
    ) -> Heartbeat {
        let identity = Identity {
            node: node.to_owned(),
            started_at: Instant::now(),
            started: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        let records = ctx.records.clone();
        records.push(Record::Heartbeat(Box::new(
            identity.record(config_sha256, HeartbeatReason::Start),
        )));
        let (digest, mut changed) = watch::channel(config_sha256.to_owned());
        let stop = ctx.sources.clone();
        let guarded = records.clone();
        // A panic of the heartbeat is caught by the supervisor: announced, the daemon stops.
        let task = ctx.tracker.spawn(Arc::clone(&ctx.supervisor).guard(
            "heartbeat",
            guarded,
            async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                // A node that slept (a suspended VM) sends one heartbeat, not a burst.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    crate::panics::inject("heartbeat");
                    let reason = tokio::select! {
                        _ = tick.tick() => HeartbeatReason::Interval,
                        result = changed.changed() => match result {
                            Ok(()) => HeartbeatReason::Reload,
                            // The daemon is gone: nothing more to report.
                            Err(_) => break,
                        },
                        () = stop.cancelled() => break,
                    };
                    let current = changed.borrow_and_update().clone();
                    records.push(Record::Heartbeat(Box::new(
                        identity.record(&current, reason),
                    )));
                    if reason == HeartbeatReason::Reload {
                        // The next periodic one counts from this one.
                        tick.reset();
                    }
                }
            },
        ));
        Heartbeat { digest, task }
    }

    /// A configuration file was read (a valid SIGHUP): a heartbeat at once when its digest
    /// differs from the last one.
    pub(super) fn config_read(&self, config_sha256: &str) {
        self.digest.send_if_modified(|current| {
            if current == config_sha256 {
                false
            } else {
                config_sha256.clone_into(current);
                true
            }
        });
    }

    /// Waits for the task (after the sources' token was cancelled).
    pub(super) async fn join(self) {
        drop(self.digest);
        let _ = self.task.await;
    }
}
