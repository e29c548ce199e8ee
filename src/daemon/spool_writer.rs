//! The spool writer: a thread of its own (sled's appends and fsyncs block) that takes records
//! from the record queue to the [`Spooler`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::observe::agent::AgentMetrics;
use crate::observe::events::{DropReason, InternalEvent, RecordsDropped, SpoolAppendFailed};
use crate::observe::{Health, Stage};
use crate::record::Record;
use crate::spooler::{Spooler, SpoolerError};

/// The running writer.
#[derive(Debug)]
pub(super) struct SpoolWriter {
    thread: JoinHandle<u64>,
}

impl SpoolWriter {
    pub(super) fn spawn(
        rx: Receiver<Record>,
        spooler: Spooler,
        health: Arc<Health>,
        metrics: Arc<AgentMetrics>,
        queue_dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write(rx, spooler, &health, &metrics, &queue_dropped))?;
        Ok(SpoolWriter { thread })
    }

    /// Waits until the queue is closed (every sender dropped), drained and committed;
    /// returns the records spooled.
    pub(super) async fn join(self) -> u64 {
        match tokio::task::spawn_blocking(move || self.thread.join()).await {
            Ok(Ok(n)) => n,
            _ => {
                tracing::error!("Spool writer failed.");
                0
            }
        }
    }
}

/// Hands records to the [`Spooler`] (pseudonymise, append), commits in groups (durable at
/// most one flush interval after the append, the uplink woken), and commits what is left
/// when the queue closes. Returns records spooled. Every record lost on the way (the queue
/// full, an append that failed) is also announced upstream by a gap record.
fn write(
    rx: Receiver<Record>,
    mut spooler: Spooler,
    health: &Health,
    metrics: &AgentMetrics,
    queue_dropped: &AtomicU64,
) -> u64 {
    let flush_every = spooler.flush_every();
    let mut queue_announced = 0;
    let mut spool_drops_seen = spooler.spool_drops();
    loop {
        let queue_lost = queue_dropped.load(Ordering::Relaxed);
        if queue_lost > queue_announced {
            spooler.note_lost("record queue full", queue_lost - queue_announced);
            health.records_lost(queue_lost - queue_announced);
            queue_announced = queue_lost;
        }
        let spool_drops = spooler.spool_drops();
        if spool_drops > spool_drops_seen {
            health.records_lost(spool_drops - spool_drops_seen);
            spool_drops_seen = spool_drops;
        }
        let received = rx.recv_timeout(flush_every);
        let closed = matches!(received, Err(RecvTimeoutError::Disconnected));
        if let Ok(record) = received {
            // A record that does not reach the spool is lost: logged and counted as one.
            match spooler.append(record) {
                Ok(_) => {}
                Err(SpoolerError::Serialise(_)) => {
                    RecordsDropped {
                        reason: DropReason::NotSerialisable,
                        count: 1,
                    }
                    .emit(metrics);
                    spooler.note_lost("record not serialisable", 1);
                    health.records_lost(1);
                }
                Err(e) => {
                    SpoolAppendFailed { error: &e }.emit(metrics);
                    spooler.note_lost("spool append failed", 1);
                    health.records_lost(1);
                }
            }
        }
        let committed = if closed {
            spooler.commit()
        } else {
            spooler.commit_if_due().map(|_| ())
        };
        if let Err(e) = committed {
            tracing::error!(error = %crate::report::Chain(&e), "Spool commit failed.");
        }
        health.progress(Stage::SpoolWriter);
        if closed {
            return spooler.spooled();
        }
    }
}
