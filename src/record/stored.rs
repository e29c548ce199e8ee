//! Records as a collector stores them: `<dir>/<node>/<YYYY-MM-DD>.jsonl`, one line a record
//! (`{"id": ..., "record": {...}}`, the batch line of the uplink), read back in the order
//! they were stored. `teledge collect` writes them; `teledge report` and `teledge fleet
//! status` read them here, so the layout is walked in one place.

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

/// The `*.jsonl` files of one directory, oldest day first (the collector names them
/// `<YYYY-MM-DD>.jsonl`); an absent directory has none.
pub fn day_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads back what a collector stored under `dir`: every `<dir>/<node>/*.jsonl`, nodes and
/// days in order, lines in the order they were stored, one at a time (a busy node's day need
/// not fit in memory). Each line's record (`{"id": ..., "record": {...}}`, or a bare record)
/// is handed to `each`. A line whose text `keep` rejects is skipped unparsed (a cheap filter
/// for a reader that wants a few record kinds); a line that is not JSON, or whose record
/// `each` cannot use (it returns why), is listed as `file:line: why` in the result: counted
/// and shown, never fatal.
pub fn read_stored(
    dir: &Path,
    keep: impl Fn(&str) -> bool,
    mut each: impl FnMut(&serde_json::Value) -> Result<(), String>,
) -> io::Result<Vec<String>> {
    let mut unreadable = Vec::new();
    let mut nodes = Vec::new();
    for node in std::fs::read_dir(dir)? {
        let node = node?.path();
        if node.is_dir() {
            nodes.push(node);
        }
    }
    nodes.sort();
    for node in nodes {
        for path in day_files(&node)? {
            let reader = io::BufReader::new(std::fs::File::open(&path)?);
            for (i, line) in reader.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() || !keep(&line) {
                    continue;
                }
                let outcome = serde_json::from_str::<serde_json::Value>(&line)
                    .map_err(|e| e.to_string())
                    .and_then(|value| each(value.get("record").unwrap_or(&value)));
                if let Err(why) = outcome {
                    unreadable.push(format!("{}:{}: {why}", path.display(), i + 1));
                }
            }
        }
    }
    Ok(unreadable)
}
