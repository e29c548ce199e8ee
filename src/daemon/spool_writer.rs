//! The spool writer: a thread of its own (sled's appends and fsyncs block) that takes records
//! from the record queue to the [`Spooler`].

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
    ) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write(rx, spooler, &health, &metrics))?;
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
/// when the queue closes. Returns records spooled.
fn write(
    rx: Receiver<Record>,
    mut spooler: Spooler,
    health: &Health,
    metrics: &AgentMetrics,
) -> u64 {
    let flush_every = spooler.flush_every();
    loop {
        let received = rx.recv_timeout(flush_every);
        let closed = matches!(received, Err(RecvTimeoutError::Disconnected));
        if let Ok(record) = received {
            // A record that does not reach the spool is lost: logged and counted as one.
            match spooler.append(record) {
                Ok(()) => {}
                Err(SpoolerError::Serialise(_)) => RecordsDropped {
                    reason: DropReason::NotSerialisable,
                    count: 1,
                }
                .emit(metrics),
                Err(e) => SpoolAppendFailed { error: &e }.emit(metrics),
            }
        }
        let committed = if closed {
            spooler.commit()
        } else {
            spooler.commit_if_due().map(|_| ())
        };
        if let Err(e) = committed {
            tracing::error!("{:#}", anyhow::Error::new(e));
        }
        health.progress(Stage::SpoolWriter);
        if closed {
            return spooler.spooled();
        }
    }
}
