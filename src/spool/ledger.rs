//! The spool's ledger: what a store that cannot be written still holds, kept where writing
//! needs no new disk blocks.
//!
//! `<dir>/unspooled.ledger` is [`LEDGER_BYTES`] written whole (zeros) when the spool opens,
//! fsynced, then only ever overwritten in place: on a full file system (the usual reason a
//! store fails) writing it takes no new blocks, as a new file or a rename would. It has two
//! slots of half its size; an entry is written to the slot the last one is not in, with a
//! generation one higher and a SHA-256 of its body, then `fdatasync`ed: a power cut in the
//! middle tears at most the slot being written, and the other still holds the entry before.
//!
//! An entry holds the store's epoch, the next sequence number the process would give, the
//! records taken but not in the store (sealed, with their ids), and the losses counted but
//! not yet announced. [`super::Spool::open`] reads it back: the records are stored under their
//! ids, the ids given since the store's last flush that are neither in the store nor in the
//! entry are announced lost by a gap record naming them, the counts are announced, and once
//! all that is durable both slots are cleared. Reading it back again (a crash before the
//! slots were cleared) stores nothing twice; it may announce a loss twice, never none.
//!
//! The run marker: the last [`MARKER_ROOM`] bytes of the file (past the room an entry may
//! take in the second slot) say that a process has the spool open — written when the spool
//! opens, its `last_seen` time rewritten in place at most once a minute, cleared at a clean
//! close (everything flushed, or kept in an entry). A marker found at open means the
//! previous run ended without its final accounting (SIGKILL, a crash, a power cut, or a
//! file system that went read-only under it, where neither the store, nor an entry, nor the
//! clearing could be written): [`super::Spool::open`] announces it. Layout: `TLRUNMK2 |
//! started (u64, Unix seconds) | last_seen (u64) | epoch (u64) | run (u64) | SHA-256 of the
//! 32 bytes before`, big-endian; `run` is the run's random id, which the run also writes to
//! the spool's manifest. A marker of the version before run ids (`TLRUNMK1`, without `run`)
//! is still read.
//!
//! Versions before the marker (a rollback) neither write nor clear it, and never write
//! `run` in the manifest (they rewrite it without): a marker whose run is no longer the
//! manifest's tells the next start that such a version used the spool after the run that
//! left it — the announcement names that run as an earlier one, not as "the previous run",
//! which was the older version's (and whose own end, clean or not, no marker tells).
//!
//! Layout of a slot: `TLEDGER1 | generation (u64 BE) | body length (u32 BE) | SHA-256 of the
//! body (32) | body`; body: `epoch (u64) | durable_next (u64) | next_seq (u64) | failed since (u64, Unix seconds) |
//! losses (u16) × [detail length (u16) | detail | count (u64)] | records (u32) × [seq (u64) |
//! length (u32) | sealed]`, all big-endian.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The ledger's file in the spool directory.
pub(super) const LEDGER: &str = "unspooled.ledger";
/// Bytes of the ledger file (two slots).
pub const LEDGER_BYTES: usize = 2 << 20;
const SLOT: usize = LEDGER_BYTES / 2;
const MAGIC: &[u8; 8] = b"TLEDGER1";
const HEADER: usize = 8 + 8 + 4 + 32;
/// Body bytes kept for the fixed fields and the losses; the rest of a slot holds records.
const COUNTS_ROOM: usize = 4 << 10;

/// Bytes at the end of the file kept for the run marker (an entry in the second slot never
/// reaches them).
const MARKER_ROOM: usize = 4 << 10;
const MARKER_AT: usize = LEDGER_BYTES - MARKER_ROOM;
const MARKER_MAGIC_V1: &[u8; 8] = b"TLRUNMK1";
const MARKER_MAGIC: &[u8; 8] = b"TLRUNMK2";
/// Bytes a marker takes (the longer layout; the clearing zeroes them all).
const MARKER_LEN: usize = 8 + 32 + 32;

/// Sealed bytes of records a ledger entry holds at most (each also takes 12 bytes).
pub(super) const HELD_BYTES: usize = SLOT - HEADER - COUNTS_ROOM - MARKER_ROOM;

/// A run of the spool not yet closed cleanly (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunMarker {
    /// When the run opened the spool (Unix seconds).
    pub started: u64,
    /// When it was last known alive (Unix seconds; at most a minute before its end).
    pub last_seen: u64,
    /// The store's epoch then.
    pub epoch: u64,
    /// The run's random id (also in the manifest while it runs); `None` in a marker of the
    /// version before run ids.
    pub run: Option<u64>,
}

impl RunMarker {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MARKER_LEN);
        out.extend_from_slice(if self.run.is_some() {
            MARKER_MAGIC
        } else {
            MARKER_MAGIC_V1
        });
        out.extend_from_slice(&self.started.to_be_bytes());
        out.extend_from_slice(&self.last_seen.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        if let Some(run) = self.run {
            out.extend_from_slice(&run.to_be_bytes());
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &out[8..]);
        out.extend_from_slice(digest.as_ref());
        out
    }

    fn decode(bytes: &[u8]) -> Option<RunMarker> {
        let fields = match bytes.get(..8)? {
            m if m == MARKER_MAGIC => 32,
            m if m == MARKER_MAGIC_V1 => 24,
            _ => return None,
        };
        let bytes = bytes.get(..8 + fields + 32)?;
        if ring::digest::digest(&ring::digest::SHA256, &bytes[8..8 + fields]).as_ref()
            != &bytes[8 + fields..]
        {
            return None;
        }
        let u = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        Some(RunMarker {
            started: u(8),
            last_seen: u(16),
            epoch: u(24),
            run: (fields == 32).then(|| u(32)),
        })
    }
}

/// What a ledger entry says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Entry {
    pub epoch: u64,
    /// The first id the store had not made durable when it failed: from here to `next_seq`,
    /// every id is in the store (sled's own flush may have written it), held here, or lost.
    pub durable_next: u64,
    pub next_seq: u64,
    /// When the store failed (Unix seconds), for the gap record's detail.
    pub failed_since: u64,
    /// Losses counted but not announced: (detail, count). `disk_full` is the spool's own.
    pub losses: Vec<(String, u64)>,
    /// Records taken and not in the store: (seq, sealed), oldest first.
    pub held: Vec<(u64, Vec<u8>)>,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(64 + self.held.iter().map(|(_, s)| s.len() + 12).sum::<usize>());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.durable_next.to_be_bytes());
        out.extend_from_slice(&self.next_seq.to_be_bytes());
        out.extend_from_slice(&self.failed_since.to_be_bytes());
        let losses: Vec<&(String, u64)> = self.losses.iter().take(64).collect();
        out.extend_from_slice(&(losses.len() as u16).to_be_bytes());
        for (detail, count) in losses {
            // At most 48 bytes, cut on a character boundary.
            let cut = (0..=detail.len().min(48))
                .rev()
                .find(|i| detail.is_char_boundary(*i))
                .unwrap_or(0);
            let detail = &detail.as_bytes()[..cut];
            out.extend_from_slice(&(detail.len() as u16).to_be_bytes());
            out.extend_from_slice(detail);
            out.extend_from_slice(&count.to_be_bytes());
        }
        out.extend_from_slice(&(self.held.len() as u32).to_be_bytes());
        for (seq, sealed) in &self.held {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
            out.extend_from_slice(sealed);
        }
        out
    }

    fn decode(mut body: &[u8]) -> Option<Entry> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = b.split_at_checked(n)?;
            *b = rest;
            Some(head)
        }
        fn u64_of(b: &mut &[u8]) -> Option<u64> {
            Some(u64::from_be_bytes(take(b, 8)?.try_into().ok()?))
        }
        fn u32_of(b: &mut &[u8]) -> Option<u32> {
            Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?))
        }
        fn u16_of(b: &mut &[u8]) -> Option<u16> {
            Some(u16::from_be_bytes(take(b, 2)?.try_into().ok()?))
        }
        let b = &mut body;
        let mut entry = Entry {
            epoch: u64_of(b)?,
            durable_next: u64_of(b)?,
            next_seq: u64_of(b)?,
            failed_since: u64_of(b)?,
            ..Entry::default()
        };
        for _ in 0..u16_of(b)? {
            let len = usize::from(u16_of(b)?);
            let detail = String::from_utf8_lossy(take(b, len)?).into_owned();
            entry.losses.push((detail, u64_of(b)?));
        }
        for _ in 0..u32_of(b)? {
            let seq = u64_of(b)?;
            let len = u32_of(b)? as usize;
            entry.held.push((seq, take(b, len)?.to_vec()));
        }
        b.is_empty().then_some(entry)
    }
}

/// The open ledger file.
#[derive(Debug)]
pub(super) struct Ledger {
    file: File,
    /// Generation and slot of the last entry written (or read back).
    last: Option<(u64, usize)>,
    /// The run marker found at open (a run that did not close cleanly), until taken.
    found_marker: Option<RunMarker>,
}

impl Ledger {
    /// Opens the ledger of `dir`, creating it (written whole, fsynced, through
    /// [`crate::durable::replace`]) if it is missing or not its full size; returns the
    /// entry it holds, if any.
    pub(super) fn open(dir: &Path) -> io::Result<(Ledger, Option<Entry>)> {
        let path = dir.join(LEDGER);
        let mut found = None;
        let mut last = None;
        let mut found_marker = None;
        if let Ok(bytes) = std::fs::read(&path) {
            found_marker = bytes.get(MARKER_AT..).and_then(RunMarker::decode);
            for slot in 0..2 {
                if let Some((generation, entry)) = bytes
                    .get(slot * SLOT..(slot + 1) * SLOT)
                    .and_then(read_slot)
                {
                    if last.is_none_or(|(g, _)| generation > g) {
                        last = Some((generation, slot));
                        found = Some(entry);
                    }
                }
            }
        }
        let whole = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file() && m.len() == LEDGER_BYTES as u64);
        // Never replaced while it holds an entry (a file of another size with a whole slot
        // is used as it is; once cleared, the next open writes it whole).
        if !whole && found.is_none() && found_marker.is_none() {
            crate::durable::replace(
                &path,
                &vec![0u8; LEDGER_BYTES],
                crate::durable::Mode::Exactly(0o600),
            )?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        Ok((
            Ledger {
                file,
                last,
                found_marker,
            },
            found,
        ))
    }

    /// Writes `entry` to the slot the last entry is not in, durably. Records that do not fit
    /// ([`HELD_BYTES`]) must have been left out by the caller.
    pub(super) fn write(&mut self, entry: &Entry) -> io::Result<()> {
        let body = entry.encode();
        if HEADER + body.len() > SLOT - MARKER_ROOM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ledger entry larger than its slot",
            ));
        }
        let (generation, slot) = match self.last {
            Some((g, s)) => (g + 1, 1 - s),
            None => (1, 0),
        };
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&generation.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &body).as_ref());
        out.extend_from_slice(&body);
        self.file.write_all_at(&out, (slot * SLOT) as u64)?;
        self.file.sync_data()?;
        self.last = Some((generation, slot));
        Ok(())
    }

    /// The run marker found at open: the run before this one did not close cleanly.
    pub(super) fn take_found_marker(&mut self) -> Option<RunMarker> {
        self.found_marker.take()
    }

    /// Writes the run marker in place, durably.
    pub(super) fn write_marker(&mut self, marker: &RunMarker) -> io::Result<()> {
        self.file.write_all_at(&marker.encode(), MARKER_AT as u64)?;
        self.file.sync_data()
    }

    /// Clears the run marker, durably: the run closed cleanly.
    pub(super) fn clear_marker(&mut self) -> io::Result<()> {
        self.file
            .write_all_at(&[0u8; MARKER_LEN], MARKER_AT as u64)?;
        self.file.sync_data()
    }

    /// Whether the ledger holds an entry (written or read back, not cleared since).
    pub(super) fn holds_entry(&self) -> bool {
        self.last.is_some()
    }

    /// Clears both slots (their magic), durably: what they held is in the store now.
    pub(super) fn clear(&mut self) -> io::Result<()> {
        for slot in 0..2 {
            self.file.write_all_at(&[0u8; 8], (slot * SLOT) as u64)?;
        }
        self.file.sync_data()?;
        self.last = None;
        Ok(())
    }
}

/// For the fuzz target (`spool_ledger`): `bytes` read as a slot (header, SHA-256), as a run
/// marker and as an entry's body (the digest checked or not, the body's decoder must hold); the number of
/// records the body holds, if it is a whole entry. An entry encoded (details cut to 48 bytes
/// on a character boundary, at most 64 losses) decodes to what encodes the same again.
pub fn read_slot_for_fuzzing(bytes: &[u8]) -> Option<usize> {
    let _ = read_slot(bytes);
    // The run marker (the file's last bytes, read at every open): what it accepts encodes
    // back to the same bytes.
    if let Some(marker) = RunMarker::decode(bytes) {
        let encoded = marker.encode();
        assert_eq!(
            &encoded[..],
            bytes.get(..encoded.len()).unwrap_or_default(),
            "marker round trip"
        );
    }
    let entry = Entry::decode(bytes)?;
    let once = entry.encode();
    let again = Entry::decode(&once).map(|e| e.encode());
    assert_eq!(again.as_deref(), Some(&once[..]), "round trip");
    Some(entry.held.len())
}

/// The generation and entry of a slot, if it holds a whole one.
fn read_slot(slot: &[u8]) -> Option<(u64, Entry)> {
    let rest = slot.strip_prefix(MAGIC)?;
    let generation = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let len = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
    let digest = rest.get(12..44)?;
    let body = rest.get(44..44 + len)?;
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != digest {
        return None;
    }
    Some((generation, Entry::decode(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry {
            epoch: 7,
            durable_next: 80,
            next_seq: 100 + n,
            failed_since: 1_700_000_000,
            losses: vec![("spool append failed".into(), n)],
            held: vec![(90, vec![1, 2, 3]), (91, vec![4; 300])],
        }
    }

    /// Entries alternate slots; the newest whole one is read back; a torn slot (a power cut
    /// while writing it) leaves the one before; cleared, nothing is read back.
    #[test]
    fn the_newest_whole_entry_is_read_back_and_a_torn_one_leaves_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ledger, found) = Ledger::open(dir.path()).unwrap();
        assert!(found.is_none());
        assert_eq!(
            std::fs::metadata(dir.path().join(LEDGER)).unwrap().len(),
            LEDGER_BYTES as u64
        );
        ledger.write(&entry(1)).unwrap();
        ledger.write(&entry(2)).unwrap();
        drop(ledger);
        let (mut ledger, found) = Ledger::open(dir.path()).unwrap();
        assert_eq!(found, Some(entry(2)));
        // Entry 3 goes to the other slot (0), torn: one byte of its body is not written.
        ledger.write(&entry(3)).unwrap();
        let path = dir.path().join(LEDGER);
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(read_slot(&bytes[..SLOT]).unwrap().1, entry(3));
        bytes[HEADER + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (mut ledger, found) = Ledger::open(dir.path()).unwrap();
        assert_eq!(found, Some(entry(2)));
        ledger.clear().unwrap();
        assert!(Ledger::open(dir.path()).unwrap().1.is_none());
    }

    /// The run marker is read back until cleared, beside an entry as large as a slot may
    /// take (neither touches the other); a torn marker is no marker.
    #[test]
    fn the_run_marker_is_read_back_until_cleared_and_leaves_entries_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ledger, _) = Ledger::open(dir.path()).unwrap();
        assert!(ledger.take_found_marker().is_none());
        let marker = RunMarker {
            started: 1_700_000_000,
            last_seen: 1_700_000_060,
            epoch: 7,
            run: Some(0xfeed),
        };
        ledger.write_marker(&marker).unwrap();
        let big = Entry {
            held: vec![(90, vec![5; HELD_BYTES - 12])],
            ..entry(1)
        };
        ledger.write(&big).unwrap();
        ledger.write(&big).unwrap();
        drop(ledger);
        let (mut ledger, found) = Ledger::open(dir.path()).unwrap();
        assert_eq!(found, Some(big));
        assert_eq!(ledger.take_found_marker(), Some(marker));
        ledger.clear_marker().unwrap();
        drop(ledger);
        let (mut ledger, _) = Ledger::open(dir.path()).unwrap();
        assert!(ledger.take_found_marker().is_none());
        ledger.write_marker(&marker).unwrap();
        // A marker of the version before run ids is read too.
        let v1 = RunMarker {
            run: None,
            ..marker
        };
        ledger.write_marker(&v1).unwrap();
        drop(ledger);
        let (mut ledger, _) = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.take_found_marker(), Some(v1));
        ledger.write_marker(&marker).unwrap();
        let path = dir.path().join(LEDGER);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MARKER_AT + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Ledger::open(dir.path())
            .unwrap()
            .0
            .take_found_marker()
            .is_none());
    }
}
