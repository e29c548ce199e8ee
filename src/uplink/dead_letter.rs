//! The dead-letter area: single records the collector refused for good, kept sealed and
//! bounded at the edge until an operator resends them (`teledge dead-letters resend`).
//!
//! # What lands here
//!
//! Only a *single* record the collector refused as unusable (`400`, `422`) or too large
//! (`413`) after its batch was split down to that one record (see [`crate::uplink`]). A
//! batch is never dead-lettered whole, and a failing collector (unreachable, wrong
//! certificate, wrong URL, `401/403/404`, `5xx`, ...) never sends anything here: those
//! records stay in the spool.
//!
//! # On-disk layout
//!
//! `<spool dir>/dead-letter/<epoch>-<seq>-<digest>.sealed`, one file per record: the
//! record's spool id, the first 8 bytes (hex) of the SHA-256 of its payload (so the same
//! record refused twice after a crash is one file, and two records under a reused id are
//! two), sealed by the spool's [`Keyring`] with the record id bound as associated data
//! (domain `teledge-dead-letter`), so nothing in the area is plaintext and a file renamed to
//! another id does not open. The sealed content is JSON: `{"id", "status", "reason",
//! "refused_at", "record"}`.
//!
//! `<spool dir>/dead-letter/resend/` holds the files an operator marked for resending; the
//! forwarder (daemon, `replay --forward`) moves each back into its spool as a new record (a
//! new id) and deletes the file only after the spool holds it durably.
//!
//! # Bound
//!
//! The area holds at most `uplink.dead_letter_max_bytes` of files. When a new dead letter
//! does not fit, the oldest are removed to make room; each removal is counted
//! (`teledge_uplink_dead_letter_records_dropped_total`) and announced upstream by a gap
//! record (`reason: "dead_letter_area_full"`). Every dead letter is itself announced by a
//! gap record (`reason: "dead_letter"`, with the status), so the collector knows which ids
//! are held at the edge. Nothing else ever deletes a dead letter: only an operator, by hand.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::seal::{Keyring, SealError};
use crate::spool::{RecordId, Spool, SpoolError};

/// File name suffix of a dead letter.
const SUFFIX: &str = ".sealed";
/// Subdirectory of the files marked for resending.
pub const RESEND_DIR: &str = "resend";

/// Why the dead-letter area could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter area {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dead letter {path}")]
    Seal { path: PathBuf, source: SealError },
    #[error("dead letter {path}: not a dead letter ({message})")]
    Malformed { path: PathBuf, message: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DeadLetterError + '_ {
    move |source| DeadLetterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a dead letter holds (sealed on disk).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The record's id when it was refused (`node:epoch:seq`).
    pub id: String,
    /// The collector's HTTP status.
    pub status: u16,
    /// The collector's reason (first 200 characters of its answer).
    pub reason: String,
    /// RFC 3339.
    pub refused_at: String,
    /// The record, as it was in the spool.
    pub record: Box<serde_json::value::RawValue>,
}

/// One file of the area, as `list` shows it.
#[derive(Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub bytes: u64,
    /// Marked for resending, waiting for a forwarder.
    pub marked: bool,
    /// The opened content, or why it does not open.
    pub content: Result<DeadLetter, DeadLetterError>,
}

/// What storing a dead letter did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// Ids (`node:epoch:seq`) of older dead letters removed to stay in the bound.
    pub dropped: Vec<String>,
    /// The new one was larger than the whole bound and was not kept.
    pub refused: bool,
}

/// The dead-letter area of one spool.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    dir: PathBuf,
    max_bytes: u64,
    node: String,
    keyring: Keyring,
}

impl DeadLetters {
    pub fn new(dir: PathBuf, max_bytes: u64, node: String, keyring: Keyring) -> Self {
        DeadLetters {
            dir,
            max_bytes,
            node,
            keyring,
        }
    }

    /// The area the uplink's settings name.
    pub fn for_uplink(
        settings: &crate::uplink::UplinkSettings,
        node: &str,
        keyring: &Keyring,
    ) -> Self {
        DeadLetters::new(
            settings.dead_letter_dir.clone(),
            settings.dead_letter_max_bytes,
            node.to_owned(),
            keyring.clone(),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn aad(&self, id: RecordId) -> Vec<u8> {
        let mut aad = b"teledge-dead-letter\0".to_vec();
        aad.extend_from_slice(self.node.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&id.epoch.to_be_bytes());
        aad.extend_from_slice(&id.seq.to_be_bytes());
        aad
    }

    /// Seals and stores one refused record (synced), removing the oldest dead letters if
    /// the area would exceed its bound.
    pub fn store(
        &self,
        id: RecordId,
        payload: &[u8],
        status: u16,
        reason: &str,
    ) -> Result<Stored, DeadLetterError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        self.resend_dir()?;
        let record = raw_record(payload);
        let letter = DeadLetter {
            id: id.display(&self.node),
            status,
            reason: reason.chars().take(200).collect(),
            refused_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            record,
        };
        let plain = serde_json::to_vec(&letter).map_err(|e| DeadLetterError::Malformed {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        let digest = sha2::Sha256::digest(payload);
        let name = format!(
            "{}-{}-{}{SUFFIX}",
            id.epoch,
            id.seq,
            hex::encode(&digest[..8])
        );
        let path = self.dir.join(&name);
        let sealed =
            self.keyring
                .seal(&self.aad(id), &plain)
                .map_err(|source| DeadLetterError::Seal {
                    path: path.clone(),
                    source,
                })?;
        let mut result = Stored::default();
        if sealed.len() as u64 > self.max_bytes {
            result.refused = true;
            return Ok(result);
        }
        // Make room first: oldest files (by name within the area, i.e. spool order, then the
        // marked ones) go until the new one fits.
        let mut files = self.files()?;
        files.retain(|(p, _)| p.file_name() != path.file_name());
        let mut total: u64 = files.iter().map(|(_, len)| len).sum();
        for (old, len) in &files {
            if total + sealed.len() as u64 <= self.max_bytes {
                break;
            }
            std::fs::remove_file(old).map_err(io(old))?;
            total -= len;
            result.dropped.push(
                id_of_path(old)
                    .map_or_else(|| old.display().to_string(), |id| id.display(&self.node)),
            );
        }
        crate::durable::replace(&path, &sealed, crate::durable::Mode::Default)
            .map_err(io(&path))?;
        Ok(result)
    }

    /// Every dead-letter file with its size, oldest (lowest id) first; those marked for
    /// resending last.
    fn files(&self) -> Result<Vec<(PathBuf, u64)>, DeadLetterError> {
        let mut files = Vec::new();
        for dir in [self.dir.clone(), self.dir.join(RESEND_DIR)] {
            let mut here = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io(&dir))?;
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "sealed") {
                    continue;
                }
                let len = entry.metadata().map_err(io(&path))?.len();
                here.push((id_of_path(&path), path, len));
            }
            here.sort();
            files.extend(here.into_iter().map(|(_, p, l)| (p, l)));
        }
        Ok(files)
    }

    /// (records, bytes) held, marked ones included.
    pub fn count(&self) -> Result<(u64, u64), DeadLetterError> {
        let files = self.files()?;
        Ok((files.len() as u64, files.iter().map(|(_, l)| l).sum()))
    }

    /// Every dead letter, opened where possible.
    pub fn list(&self) -> Result<Vec<Entry>, DeadLetterError> {
        let mut out = Vec::new();
        for (path, bytes) in self.files()? {
            let marked = path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == RESEND_DIR);
            out.push(Entry {
                content: self.open(&path),
                path,
                bytes,
                marked,
            });
        }
        Ok(out)
    }

    /// Opens one file.
    pub fn open(&self, path: &Path) -> Result<DeadLetter, DeadLetterError> {
        let id = id_of_path(path).ok_or_else(|| DeadLetterError::Malformed {
            path: path.to_owned(),
            message: "the name is not <epoch>-<seq>-<digest>.sealed".into(),
        })?;
        let sealed = std::fs::read(path).map_err(io(path))?;
        let plain = self
            .keyring
            .open(&self.aad(id), &sealed)
            .map_err(|source| DeadLetterError::Seal {
                path: path.to_owned(),
                source,
            })?;
        serde_json::from_slice(&plain).map_err(|e| DeadLetterError::Malformed {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Creates `resend/` owned like the area itself: `teledge dead-letters resend` runs as
    /// root, the agent as its own user, who must be able to delete the files it requeues.
    fn resend_dir(&self) -> Result<PathBuf, DeadLetterError> {
        let target = self.dir.join(RESEND_DIR);
        if !target.is_dir() {
            std::fs::create_dir_all(&target).map_err(io(&target))?;
            let owner = std::fs::metadata(&self.dir).map_err(io(&self.dir))?;
            use std::os::unix::fs::MetadataExt;
            // Only root may give a directory away; anyone else created it as themselves,
            // which is the owner of the area already.
            let _ = std::os::unix::fs::chown(&target, Some(owner.uid()), Some(owner.gid()));
        }
        Ok(target)
    }

    /// Marks every dead letter for resending (moves it into `resend/`); returns how many.
    pub fn mark_all_for_resend(&self) -> Result<u64, DeadLetterError> {
        let target = self.resend_dir()?;
        let mut marked = 0;
        for (path, _) in self.files()? {
            if path.parent() == Some(target.as_path()) {
                continue;
            }
            let Some(name) = path.file_name() else {
                continue;
            };
            let to = target.join(name);
            std::fs::rename(&path, &to).map_err(io(&path))?;
            marked += 1;
        }
        if marked > 0 {
            sync_dir(&target)?;
            sync_dir(&self.dir)?;
        }
        Ok(marked)
    }

    /// The files marked for resending, oldest first.
    pub fn marked(&self) -> Result<Vec<PathBuf>, DeadLetterError> {
        let target = self.dir.join(RESEND_DIR);
        Ok(self
            .files()?
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.parent() == Some(target.as_path()))
            .collect())
    }

    /// Dead letters of earlier versions — whole batches in clear (`<batch id>.jsonl.gz`),
    /// written for any 4xx including a wrong URL or certificate — are put back into the
    /// spool (new ids) and their files deleted once the spool holds them durably: they were
    /// most likely good records, and nothing may stay in clear. Returns how many records.
    pub fn requeue_legacy(&self, spool: &mut Spool) -> Result<u64, DeadLetterError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut requeued = 0;
        for entry in entries {
            let path = entry.map_err(io(&self.dir))?.path();
            if !path.to_string_lossy().ends_with(".jsonl.gz") {
                continue;
            }
            let body = std::fs::read(&path).map_err(io(&path))?;
            let lines = match crate::uplink::decode_body(&body, 256 << 20) {
                Ok(lines) => lines,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %crate::report::Chain(&e), "Old dead-letter file unreadable, left in place.");
                    continue;
                }
            };
            let mut records = Vec::new();
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice::<crate::uplink::BatchLine>(line) {
                    Ok(l) => records.push(l.record),
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %crate::report::Chain(&e), "Old dead-letter line unreadable, skipped.")
                    }
                }
            }
            for record in &records {
                // A refusal by the spool's policy is counted and announced by the spool.
                spool.append(record.get().as_bytes())?;
            }
            spool.flush()?;
            std::fs::remove_file(&path).map_err(io(&path))?;
            sync_dir(&self.dir)?;
            requeued += records.len() as u64;
            tracing::warn!(file = %path.display(), records = records.len(), "Old dead-letter batch put back into the spool and its clear-text file deleted.");
        }
        Ok(requeued)
    }

    /// Puts the dead letters marked for resending back into `spool` as new records (new
    /// ids), oldest first; each file is deleted only once the spool holds its record
    /// durably. One that does not open is given back to the area (and logged). Returns how
    /// many were requeued.
    pub fn requeue_marked(&self, spool: &mut Spool) -> Result<u64, DeadLetterError> {
        let mut requeued = 0;
        for path in self.marked()? {
            let letter = match self.open(&path) {
                Ok(letter) => letter,
                Err(e) => {
                    tracing::error!(error = %crate::report::Chain(&e), "Dead letter not requeued, left in the area.");
                    if let Some(name) = path.file_name() {
                        std::fs::rename(&path, self.dir.join(name)).map_err(io(&path))?;
                    }
                    continue;
                }
            };
            if spool.append(letter.record.get().as_bytes())?.is_none() {
                // The spool's full-store policy refused it (counted and announced there); it
                // stays marked for the next round.
                break;
            }
            spool.flush()?;
            std::fs::remove_file(&path).map_err(io(&path))?;
            requeued += 1;
            tracing::info!(record = %letter.id, "Dead letter put back into the spool.");
        }
        if requeued > 0 {
            sync_dir(&self.dir.join(RESEND_DIR))?;
        }
        Ok(requeued)
    }
}

/// The record as JSON: records are JSON already; anything else is carried as a string.
pub(crate) fn raw_record(payload: &[u8]) -> Box<serde_json::value::RawValue> {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| serde_json::value::RawValue::from_string(s.to_owned()).ok())
        .or_else(|| serde_json::value::to_raw_value(&String::from_utf8_lossy(payload)).ok())
        // A string always serialises: the default (`null`) is never used.
        .unwrap_or_default()
}

/// The record id in a file name `<epoch>-<seq>-<digest>.sealed`.
fn id_of_path(path: &Path) -> Option<RecordId> {
    let name = path.file_name()?.to_str()?.strip_suffix(SUFFIX)?;
    let mut parts = name.splitn(3, '-');
    let epoch = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(RecordId { epoch, seq })
}

fn sync_dir(dir: &Path) -> Result<(), DeadLetterError> {
    crate::durable::sync_dir(dir).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(dir: &Path, max: u64) -> DeadLetters {
        DeadLetters::new(
            dir.join("dead-letter"),
            max,
            "edge-01".into(),
            Keyring::new((1, [3; 32]), &[]),
        )
    }

    #[test]
    fn sealed_bound_to_the_id_bounded_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let dl = area(dir.path(), 1 << 20);
        let id = RecordId { epoch: 7, seq: 42 };
        let stored = dl
            .store(id, br#"{"caller":"+4930123456"}"#, 422, "no")
            .unwrap();
        assert_eq!(stored, Stored::default());
        // Stored twice (a crash before the ack): one file.
        dl.store(id, br#"{"caller":"+4930123456"}"#, 422, "no")
            .unwrap();
        let entries = dl.list().unwrap();
        assert_eq!(entries.len(), 1);
        let bytes = std::fs::read(&entries[0].path).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"+4930123456"));
        let letter = entries[0].content.as_ref().unwrap();
        assert_eq!(letter.id, "edge-01:7:42");
        assert_eq!(letter.record.get(), r#"{"caller":"+4930123456"}"#);
        // Renamed to another id: does not open.
        let other = dl.dir().join(
            entries[0]
                .path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .replacen("7-42", "7-43", 1),
        );
        std::fs::rename(&entries[0].path, &other).unwrap();
        assert!(matches!(dl.open(&other), Err(DeadLetterError::Seal { .. })));
        std::fs::rename(&other, &entries[0].path).unwrap();

        assert_eq!(dl.mark_all_for_resend().unwrap(), 1);
        assert_eq!(dl.marked().unwrap().len(), 1);
        assert!(dl.list().unwrap()[0].marked);
        assert_eq!(dl.count().unwrap().0, 1);
    }

    #[test]
    fn a_full_area_drops_the_oldest_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let payload = vec![b'x'; 300];
        let probe = area(dir.path(), 1 << 20);
        probe
            .store(RecordId { epoch: 0, seq: 0 }, &payload, 413, "big")
            .unwrap();
        let one = probe.count().unwrap().1;
        std::fs::remove_dir_all(probe.dir()).unwrap();

        let dl = area(dir.path(), one * 3);
        let mut dropped = Vec::new();
        for seq in 0..5 {
            let s = dl
                .store(RecordId { epoch: 0, seq }, &payload, 413, "big")
                .unwrap();
            dropped.extend(s.dropped);
        }
        assert_eq!(dropped, ["edge-01:0:0", "edge-01:0:1"]);
        assert_eq!(dl.count().unwrap(), (3, one * 3));
        // Larger than the whole bound: refused, nothing removed.
        let s = dl
            .store(RecordId { epoch: 0, seq: 9 }, &vec![b'y'; 4096], 413, "big")
            .unwrap();
        assert!(s.refused && s.dropped.is_empty());
        assert_eq!(dl.count().unwrap().0, 3);
    }
}
