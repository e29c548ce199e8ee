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
use crate::spool::{RecordId, Spool, SpoolError};

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
    /// The record being appended, as JSON (reused: one allocation, not one a record).
    json: Vec<u8>,
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
            json: Vec::new(),
        }
    }

    /// Pseudonymises, serialises and appends one record (durable at the next commit). Its
    /// id, or `None` when the spool was full and its policy dropped this record (counted and
    /// announced by the spool).
    pub fn append(&mut self, mut record: Record) -> Result<Option<RecordId>, SpoolerError> {
        self.pseudonymizer.apply(&mut record);
        self.json.clear();
        crate::record::json::write(&mut self.json, &record).map_err(SpoolerError::Serialise)?;
        let id = lock(&self.spool)
            .append(&self.json)
            .map_err(SpoolerError::Append)?;
        // `None`: the spool was full and its policy dropped this record (counted there).
        self.spooled += u64::from(id.is_some());
        self.dirty = true;
        Ok(id)
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

    /// After a panic in the middle of an append (the spool writer's, caught at its
    /// boundary): the next [`Spooler::commit`] flushes, whatever was appended before it.
    pub fn mark_appended(&mut self) {
        self.dirty = true;
    }

    /// Records lost before the spool: announced upstream by a gap record (see
    /// [`crate::spool::Spool::note_lost_before_spool`]).
    pub fn note_lost(&mut self, detail: &'static str, count: u64) {
        lock(&self.spool).note_lost_before_spool(detail, count);
    }

    /// Records the spool itself dropped so far (full store, full disk), announced by it.
    pub fn spool_drops(&self) -> u64 {
        let s = lock(&self.spool).stats();
        s.dropped_oldest + s.dropped_newest + s.dropped_disk_full
    }

    /// Records appended (not those a full spool dropped).
    pub fn spooled(&self) -> u64 {
        self.spooled
    }

    /// The pseudonymiser records are rewritten with (the statistics make their join keys
    /// with it, the way queue records carry their identities).
    pub fn pseudonymizer(&self) -> &Pseudonymizer {
        &self.pseudonymizer
    }

    /// The flush interval: how long a record may wait for its commit.
    pub fn flush_every(&self) -> Duration {
        self.flush_every
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::privacy::Privacy;
    use crate::replay::{Replay, ReplaySettings};
    use crate::seal::Keyring;
    use crate::spool::SpoolConfig;

    /// The records of a bundled capture (calls, then the summary).
    fn records() -> Vec<Record> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sngrep_aaa.pcap");
        let mut replay = Replay::new(ReplaySettings::default());
        let mut out = Vec::new();
        replay
            .read(
                "sngrep_aaa.pcap",
                std::fs::File::open(path).unwrap(),
                &mut |r| out.push(r),
                |_| {},
            )
            .unwrap();
        replay.finish(&mut |r| out.push(r));
        out
    }

    fn woken(notify: &Notify) -> bool {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(Duration::from_millis(10), notify.notified()).await
            })
            .is_ok()
    }

    /// Appended records become readable (durable) only at a commit: at most one flush
    /// interval after the append, or at once on `commit`; each commit wakes the uplink; what
    /// is stored is pseudonymised.
    #[test]
    fn records_are_durable_at_the_group_commit_and_the_uplink_is_woken() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(
            SpoolConfig::new(dir.path(), "node-a"),
            Keyring::new((1, [42; 32]), &[]),
        )
        .unwrap();
        let spool = Arc::new(Mutex::new(spool));
        let notify = Arc::new(Notify::new());
        let flush_every = Duration::from_millis(200);
        // Before the spooler starts its interval, so `started.elapsed()` never falls short
        // of the spooler's own clock (under qemu the construction alone can take a while).
        let started = Instant::now();
        let mut spooler = Spooler::new(
            Arc::clone(&spool),
            Pseudonymizer::new(Privacy::keyed_hash([7; 32])),
            flush_every,
            Some(Arc::clone(&notify)),
        );
        let records = records();
        let call_id = records
            .iter()
            .find_map(|r| match r {
                Record::Call(c) => Some(c.call_id.clone()),
                _ => None,
            })
            .unwrap();
        for record in records.clone() {
            spooler.append(record).unwrap();
        }
        assert_eq!(spooler.spooled(), records.len() as u64);
        let committed = spooler.commit_if_due().unwrap();
        // Measured after the call: if the interval had not passed by now, it had not when
        // the spooler looked.
        if started.elapsed() < flush_every {
            // Within the interval: appended, not yet durable, nobody woken.
            assert!(!committed);
            assert!(lock(&spool).read(None, 1000).unwrap().is_empty());
            assert!(!woken(&notify));
        }
        if !committed {
            std::thread::sleep(flush_every);
            assert!(spooler.commit_if_due().unwrap());
        }
        assert!(woken(&notify));
        let stored = lock(&spool).read(None, 1000).unwrap();
        assert_eq!(stored.len(), records.len());
        // Nothing new: nothing to commit, nobody woken.
        assert!(!spooler.commit_if_due().unwrap());
        spooler.commit().unwrap();
        assert!(!woken(&notify));
        // The Call-ID left as a pseudonym.
        let text: String = stored
            .iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect();
        assert!(!text.contains(&call_id), "{call_id} stored in clear");
    }
}
