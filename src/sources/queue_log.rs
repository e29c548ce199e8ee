//! Following a growing log file (Asterisk's `queue_log`) line by line, across rotation,
//! truncation and restarts: every complete line is delivered once, in order.
//!
//! # What is promised
//!
//! - **Lines, whole.** A line is delivered when its newline has been written; a partial last
//!   line is held until then. A line longer than `max_line_len` is skipped to its newline
//!   and counted (`lines_too_long`); held bytes never exceed the bound.
//! - **Rename rotation** (`logrotate` default, `logger rotate`): the file at the path gets a
//!   new inode. The old file stays open and is read to its end, then for two more polls
//!   (late lines of a writer that has not reopened yet), and only then is the new file read
//!   from its start. A partial line left at the end of the old file is dropped and counted.
//! - **Truncation** (`copytruncate`, `> queue_log`): the file shrinks below the read position.
//!   The copy is looked for beside the file (a name starting with the file's name, another
//!   inode, holding the last line read at the same offset): the lines after the position are
//!   read from it first. Without a copy, what had been written but not read is lost:
//!   counted in `possibly_lost` and announced by the caller (a gap record).
//! - **Restarts.** [`Tailer::position`] is the end of the last complete line delivered:
//!   device, inode, offset, and the length and SHA-256 of that line. At start the position
//!   is checked against the file: the same inode holding the same last line resumes at the
//!   offset; a rotated-away inode is looked for beside the file and read to its end first;
//!   a file that shrank or whose line differs is read from its start (counted). The caller
//!   writes the position with [`write_state_atomically`] after it has handled the lines
//!   delivered, so a clean stop and start reads no line twice and loses none. After a crash,
//!   the lines since the last saved position are delivered again.
//! - **First start** (no position): from the end of the file (`StartAt::End`: what is
//!   written from now on, and the line being written when it is complete) or from its start
//!   (`StartAt::Beginning`). A file that does not exist at the first look is new when it
//!   appears, and read from its start.
//!
//! Plain file I/O, polled (the daemon every 250 ms): no inotify, so it works the same on any
//! file system and in tests. Reads are positional (`pread`), at most `max_bytes` per poll.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where to begin in a file never read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Only lines written from now on.
    #[default]
    End,
    /// The whole file.
    Beginning,
}

/// How the tailer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailSettings {
    pub path: PathBuf,
    pub max_line_len: usize,
    pub start_at: StartAt,
}

/// The end of the last complete line delivered: where a restart resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailPosition {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    /// Length of the last line (with its newline) and its SHA-256 in hex; `None` when no
    /// line was read yet at this offset (a first start at the end) or the line was longer
    /// than the bound (then only the newline before the offset is checked).
    pub last_line: Option<(u64, String)>,
}

/// What the tailer met, since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailCounters {
    pub lines: u64,
    pub bytes: u64,
    pub lines_too_long: u64,
    /// Partial lines dropped at the end of a rotated or truncated file.
    pub partial_lines_dropped: u64,
    pub rotations: u64,
    pub truncations: u64,
    /// Truncations and rotations while stopped whose unread rest could not be found.
    pub possibly_lost: u64,
    /// Restarts that resumed at the saved position (or in the rotated file).
    pub resumed: u64,
    /// Saved positions that did not match the file: read from its start.
    pub position_mismatch: u64,
}

/// An open file being read.
#[derive(Debug)]
struct Reading {
    file: File,
    dev: u64,
    ino: u64,
    /// Bytes of the file consumed (delivered, discarded, or held in `pending`).
    read_at: u64,
    /// A rotated-away file being finished: polls left that may still find late lines.
    grace_polls: Option<u8>,
}

/// Follows one file.
#[derive(Debug)]
pub struct Tailer {
    settings: TailSettings,
    /// The file at the path.
    current: Option<Reading>,
    /// A rotated-away or copied file read before `current`.
    draining: Option<Reading>,
    /// Bytes of the line in progress (after the last newline).
    pending: Vec<u8>,
    /// The line in progress is over the bound: skipped to its newline.
    discarding: bool,
    hasher: Sha256,
    line_len: u64,
    /// End of the last complete line, in the file being read.
    committed: Option<TailPosition>,
    /// A position to resume from at the first open.
    saved: Option<TailPosition>,
    /// Where a file never read before begins: `start_at`, until the first open finds no
    /// file — a file created later is new, and read from its start.
    start_at: StartAt,
    counters: TailCounters,
}

/// Polls a rotated-away file keeps being read after its end was reached.
const ROTATION_GRACE_POLLS: u8 = 2;

impl Tailer {
    /// A tailer that resumes at `saved` when it still matches the file.
    pub fn new(settings: TailSettings, saved: Option<TailPosition>) -> Self {
        Tailer {
            start_at: settings.start_at,
            settings,
            current: None,
            draining: None,
            pending: Vec::new(),
            discarding: false,
            hasher: Sha256::new(),
            line_len: 0,
            committed: None,
            saved,
            counters: TailCounters::default(),
        }
    }

    pub fn counters(&self) -> TailCounters {
        self.counters
    }

    /// Where a restart would resume: the end of the last line delivered.
    pub fn position(&self) -> Option<TailPosition> {
        self.committed.clone().or_else(|| self.saved.clone())
    }

    /// Bytes held of a line not yet complete.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Reads what is there, at most `max_bytes`, and hands every complete line (without its
    /// newline) to `on_line`. Returns the bytes read: a full budget means more may wait. A
    /// missing file is no error (it may be between a rotation's rename and create).
    pub fn poll(&mut self, max_bytes: usize, on_line: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        if self.current.is_none() && self.draining.is_none() && !self.open()? {
            return Ok(0);
        }
        let mut total = 0;
        if let Some(mut drain) = self.draining.take() {
            let n = self.read_from(&mut drain, max_bytes, on_line)?;
            total += n;
            let at_end = n < max_bytes;
            let finished = at_end
                && match drain.grace_polls.as_mut() {
                    Some(0) | None => true,
                    Some(left) => {
                        if n == 0 {
                            *left -= 1;
                        }
                        false
                    }
                };
            if !finished {
                self.draining = Some(drain);
                return Ok(total);
            }
            self.end_of_file_dropped();
            if let Some(cur) = &self.current {
                self.committed = Some(TailPosition {
                    dev: cur.dev,
                    ino: cur.ino,
                    offset: cur.read_at,
                    last_line: None,
                });
            }
        }
        let Some(mut cur) = self.current.take() else {
            return Ok(total);
        };
        // Truncated below what was read (copytruncate), or truncated and written again past
        // it before this poll: the last line delivered is no longer where it was.
        let len = cur.file.metadata()?.len();
        let rewritten = self.committed.as_ref().is_some_and(|p| {
            (p.dev, p.ino) == (cur.dev, cur.ino)
                && p.offset <= len
                && p.last_line.is_some()
                && !matches_line(&cur.file, p)
        });
        if len < cur.read_at || rewritten {
            self.counters.truncations += 1;
            let copy = self
                .committed
                .clone()
                .and_then(|p| self.find_copy(&p, cur.ino));
            match copy {
                Some(copy) => {
                    self.pending.clear();
                    self.discarding = false;
                    self.hasher = Sha256::new();
                    self.line_len = 0;
                    // The position moves to the copy: a restart now finds it by its inode.
                    if let Some(p) = self.committed.as_mut() {
                        (p.dev, p.ino) = (copy.dev, copy.ino);
                    }
                    self.draining = Some(copy);
                }
                None => {
                    self.counters.possibly_lost += 1;
                    self.end_of_file_dropped();
                }
            }
            cur.read_at = 0;
            self.current = Some(cur);
            if self.draining.is_none() {
                self.commit_start_of_current();
            }
            return Ok(total);
        }
        let budget = max_bytes.saturating_sub(total);
        let n = self.read_from(&mut cur, budget, on_line)?;
        total += n;
        if n < budget {
            // At the end: has the path moved on to another file?
            if let Ok(meta) = std::fs::metadata(&self.settings.path) {
                if (meta.dev(), meta.ino()) != (cur.dev, cur.ino) {
                    self.counters.rotations += 1;
                    let new = Reading {
                        file: File::open(&self.settings.path)?,
                        dev: meta.dev(),
                        ino: meta.ino(),
                        read_at: 0,
                        grace_polls: None,
                    };
                    cur.grace_polls = Some(ROTATION_GRACE_POLLS);
                    self.draining = Some(cur);
                    self.current = Some(new);
                    return Ok(total);
                }
            }
        }
        self.current = Some(cur);
        Ok(total)
    }

    /// Opens the file at the path, resuming at the saved position where it matches. False
    /// when there is no file.
    fn open(&mut self) -> io::Result<bool> {
        let file = match File::open(&self.settings.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.start_at = StartAt::Beginning;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let mut cur = Reading {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            read_at: 0,
            grace_polls: None,
        };
        match self.saved.take() {
            Some(p) if (p.dev, p.ino) == (cur.dev, cur.ino) => {
                if meta.len() >= p.offset && matches_line(&cur.file, &p) {
                    self.counters.resumed += 1;
                    cur.read_at = p.offset;
                    self.committed = Some(p);
                } else {
                    self.counters.position_mismatch += 1;
                    if meta.len() < p.offset {
                        self.counters.truncations += 1;
                    }
                }
            }
            Some(p) => {
                // Rotated while stopped: finish the old file first, if it is still there.
                match self.find_inode(&p) {
                    Some(mut old) if matches_line(&old.file, &p) => {
                        self.counters.resumed += 1;
                        old.read_at = p.offset;
                        self.committed = Some(p);
                        self.draining = Some(old);
                    }
                    _ => {
                        self.counters.possibly_lost += 1;
                        self.counters.position_mismatch += 1;
                    }
                }
            }
            // From the end, but from the start of a line: a line being written is read once
            // it is complete.
            None if self.start_at == StartAt::End => {
                cur.read_at = start_of_last_line(&cur.file, meta.len(), self.settings.max_line_len)
            }
            None => {}
        }
        if self.committed.is_none() {
            self.committed = Some(TailPosition {
                dev: cur.dev,
                ino: cur.ino,
                offset: cur.read_at,
                last_line: None,
            });
        }
        self.current = Some(cur);
        Ok(true)
    }

    /// Reads up to `budget` bytes of `r` from its position and delivers the lines.
    fn read_from(
        &mut self,
        r: &mut Reading,
        budget: usize,
        on_line: &mut dyn FnMut(&[u8]),
    ) -> io::Result<usize> {
        let mut buf = vec![0u8; budget.min(64 << 10)];
        let mut total = 0;
        while total < budget {
            let want = buf.len().min(budget - total);
            let n = r.file.read_at(&mut buf[..want], r.read_at)?;
            if n == 0 {
                break;
            }
            let chunk_start = r.read_at;
            r.read_at += n as u64;
            total += n;
            self.counters.bytes += n as u64;
            let mut rest = &buf[..n];
            let mut consumed = 0u64;
            while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                let (part, after) = rest.split_at(nl + 1);
                self.hasher.update(part);
                self.line_len += part.len() as u64;
                consumed += part.len() as u64;
                let line = &part[..nl];
                if self.discarding || self.pending.len() + line.len() > self.settings.max_line_len {
                    self.counters.lines_too_long += 1;
                    self.pending.clear();
                } else if self.pending.is_empty() {
                    self.counters.lines += 1;
                    on_line(line);
                } else {
                    self.pending.extend_from_slice(line);
                    self.counters.lines += 1;
                    on_line(&self.pending);
                    self.pending.clear();
                }
                self.discarding = false;
                let hash = std::mem::replace(&mut self.hasher, Sha256::new()).finalize();
                let len = std::mem::take(&mut self.line_len);
                let bounded = len <= self.settings.max_line_len as u64 + 1;
                self.committed = Some(TailPosition {
                    dev: r.dev,
                    ino: r.ino,
                    offset: chunk_start + consumed,
                    last_line: bounded.then(|| (len, hex::encode(hash))),
                });
                rest = after;
            }
            // The start of a line: held, or skipped when over the bound.
            self.hasher.update(rest);
            self.line_len += rest.len() as u64;
            if !self.discarding {
                if self.pending.len() + rest.len() > self.settings.max_line_len {
                    self.discarding = true;
                    self.pending.clear();
                } else {
                    self.pending.extend_from_slice(rest);
                }
            }
        }
        Ok(total)
    }

    /// A file's end reached with a partial line: that line will never complete.
    fn end_of_file_dropped(&mut self) {
        if !self.pending.is_empty() || self.discarding {
            self.counters.partial_lines_dropped += 1;
        }
        self.pending.clear();
        self.discarding = false;
        self.hasher = Sha256::new();
        self.line_len = 0;
    }

    fn commit_start_of_current(&mut self) {
        if let Some(cur) = &self.current {
            self.committed = Some(TailPosition {
                dev: cur.dev,
                ino: cur.ino,
                offset: 0,
                last_line: None,
            });
        }
    }

    /// Files beside the path whose name starts with its name (`queue_log.1`,
    /// `queue_log-20250101`), regular, and not the path itself.
    fn siblings(&self) -> Vec<(PathBuf, std::fs::Metadata)> {
        let path = &self.settings.path;
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Vec::new();
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let name = name.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut found: Vec<(PathBuf, std::fs::Metadata)> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&name) && n != name
            })
            .filter_map(|e| {
                let p = e.path();
                let meta = std::fs::metadata(&p).ok()?;
                meta.is_file().then_some((p, meta))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// The rotated-away file of a saved position, by its inode.
    fn find_inode(&self, p: &TailPosition) -> Option<Reading> {
        let (path, meta) = self
            .siblings()
            .into_iter()
            .find(|(_, m)| (m.dev(), m.ino()) == (p.dev, p.ino))?;
        Some(Reading {
            file: File::open(path).ok()?,
            dev: meta.dev(),
            ino: meta.ino(),
            read_at: p.offset,
            grace_polls: None,
        })
    }

    /// The copy `copytruncate` left: another inode holding the last line read at the same
    /// offset.
    fn find_copy(&self, p: &TailPosition, truncated_ino: u64) -> Option<Reading> {
        p.last_line.as_ref()?;
        self.siblings()
            .into_iter()
            .filter(|(_, m)| m.ino() != truncated_ino && m.len() >= p.offset)
            .find_map(|(path, meta)| {
                let file = File::open(path).ok()?;
                matches_line(&file, p).then(|| Reading {
                    file,
                    dev: meta.dev(),
                    ino: meta.ino(),
                    read_at: p.offset,
                    grace_polls: None,
                })
            })
    }
}

/// The offset just after the last newline within `max_line_len` bytes before `len` (`len`
/// itself when the file ends with one, or when there is none that close).
fn start_of_last_line(file: &File, len: u64, max_line_len: usize) -> u64 {
    let back = len.min(max_line_len as u64 + 1);
    let mut buf = vec![0u8; back as usize];
    if file.read_exact_at(&mut buf, len - back).is_err() {
        return len;
    }
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => len - back + i as u64 + 1,
        None if back == len => 0,
        None => len,
    }
}

/// Whether `file` holds the position's last line just before its offset (or, without one,
/// a newline there or the offset at the start).
fn matches_line(file: &File, p: &TailPosition) -> bool {
    match &p.last_line {
        Some((len, sha)) => {
            let Some(start) = p.offset.checked_sub(*len) else {
                return false;
            };
            let mut buf = vec![0u8; *len as usize];
            match file.read_exact_at(&mut buf, start) {
                Ok(()) => hex::encode(Sha256::digest(&buf)) == *sha,
                Err(_) => false,
            }
        }
        None if p.offset == 0 => true,
        None => {
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, p.offset - 1).is_ok() && b[0] == b'\n'
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a
/// mix: a temporary file beside it, synced, renamed over it, the directory synced.
pub fn write_state_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::durable::replace(path, bytes, crate::durable::Mode::Default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn settings(path: &Path) -> TailSettings {
        TailSettings {
            path: path.to_owned(),
            max_line_len: 64,
            start_at: StartAt::Beginning,
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn drain(t: &mut Tailer) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..8 {
            t.poll(1 << 20, &mut |l| {
                out.push(String::from_utf8_lossy(l).into_owned())
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn partial_lines_wait_for_their_newline_and_long_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue_log");
        append(&path, "a\nb");
        let mut t = Tailer::new(settings(&path), None);
        assert_eq!(drain(&mut t), ["a"]);
        assert_eq!(t.held(), 1);
        append(&path, "c\n");
        assert_eq!(drain(&mut t), ["bc"]);
        append(&path, &format!("{}\nd\n", "x".repeat(200)));
        assert_eq!(drain(&mut t), ["d"]);
        assert_eq!(t.counters().lines_too_long, 1);
        assert!(t.held() == 0);
    }

    #[test]
    fn first_start_at_the_end_reads_only_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue_log");
        append(&path, "old\n");
        let mut t = Tailer::new(
            TailSettings {
                start_at: StartAt::End,
                ..settings(&path)
            },
            None,
        );
        assert!(drain(&mut t).is_empty());
        append(&path, "new\n");
        assert_eq!(drain(&mut t), ["new"]);
    }

    #[test]
    fn a_first_start_at_the_end_waits_for_the_line_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue_log");
        append(&path, "old\nhalf");
        let end = TailSettings {
            start_at: StartAt::End,
            ..settings(&path)
        };
        let mut t = Tailer::new(end.clone(), None);
        assert!(drain(&mut t).is_empty());
        append(&path, "-done\n");
        assert_eq!(drain(&mut t), ["half-done"]);
        // A file that did not exist at the first look is new: read from its start.
        let later = dir.path().join("later");
        let mut t = Tailer::new(
            TailSettings {
                path: later.clone(),
                ..end
            },
            None,
        );
        assert!(drain(&mut t).is_empty());
        append(&later, "first\n");
        assert_eq!(drain(&mut t), ["first"]);
    }

    #[test]
    fn the_state_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_state_atomically(&path, b"one").unwrap();
        write_state_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!crate::durable::temporary_of(&path).unwrap().exists());
    }
}
