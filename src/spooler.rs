//! From records to durable spool entries, the one way every command does it: pseudonymise
//! ([`Pseudonymizer`]) → serialise (JSON) → append (sealed by the spool) → group commit →
//! notify the uplink. `replay --forward` and the daemon's spool writer both use a
//! [`Spooler`].
//!
//! Durability: an appended record is durable after the next commit; [`Spooler::commit_if_due`]
//! commits at most one flush interval after the first append since the last commit (a group
//! commit: one fsync for many records), [`Spooler::commit`] at once. Only committed records
//! are read by the uplink, which is woken after each commit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::privacy::Pseudonymizer;
use crate::record::Record;
use crate::spool::{Spool, SpoolError};

/// Why a record did not reach the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolerError {
    #[error("record not serialisable")]
    Serialise(#[source] serde_json::Error),
    #[error("spool append failed")]
    Append(#[source] SpoolError),
    #[error("spool flush failed")]
    Commit(#[source] SpoolError),
}

/// Records into the spool, committed in groups.
#[derive(Debug)]
pub struct Spooler {
    spool: Arc<Mutex<Spool>>,
    pseudonymizer: Pseudonymizer,
    flush_every: Duration,
    last_commit: Instant,
    dirty: bool,
    committed: Option<Arc<Notify>>,
    spooled: u64,
}

impl Spooler {
    /// Spools into `spool`, committing every `flush_every`; `committed` (the uplink) is woken
    /// after every commit.
    pub fn new(
        spool: Arc<Mutex<Spool>>,
        pseudonymizer: Pseudonymizer,
        flush_every: Duration,
        committed: Option<Arc<Notify>>,
    ) -> Self {
        Spooler {
            spool,
            pseudonymizer,
            flush_every,
            last_commit: Instant::now(),
            dirty: false,
            committed,
            spooled: 0,
        }
    }

    /// Pseudonymises, serialises and appends one record (durable at the next commit).
    pub fn append(&mut self, mut record: Record) -> Result<(), SpoolerError> {
        self.pseudonymizer.apply(&mut record);
        let json = serde_json::to_vec(&record).map_err(SpoolerError::Serialise)?;
        let id = lock(&self.spool)
            .append(&json)
            .map_err(SpoolerError::Append)?;
        // `None`: the spool was full and its policy dropped this record (counted there).
        self.spooled += u64::from(id.is_some());
        self.dirty = true;
        Ok(())
    }

    /// Commits when something was appended and the flush interval has passed since the last
    /// commit. True when it committed.
    pub fn commit_if_due(&mut self) -> Result<bool, SpoolerError> {
        if self.dirty && self.last_commit.elapsed() >= self.flush_every {
            self.commit()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Commits what was appended, at once, and wakes the uplink.
    pub fn commit(&mut self) -> Result<(), SpoolerError> {
        // Whatever the outcome, the next commit waits a full interval: a failing disk is not
        // retried for every record.
        self.last_commit = Instant::now();
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        lock(&self.spool).flush().map_err(SpoolerError::Commit)?;
        if let Some(notify) = &self.committed {
            notify.notify_one();
        }
        Ok(())
    }

    /// Records appended (not those a full spool dropped).
    pub fn spooled(&self) -> u64 {
        self.spooled
    }

    /// The flush interval: how long a record may wait for its commit.
    pub fn flush_every(&self) -> Duration {
        self.flush_every
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
