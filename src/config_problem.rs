//! Configuration problems, each with where it is (a TOML path or line): the vocabulary every
//! configuration reader shares (the forwarding and daemon sections, sensor profiles). A leaf,
//! so that what a section's owner reads does not import the configuration that builds it.

use std::path::Path;

/// One configuration problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

/// The largest configuration file read (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Reads a small file that a configuration names (the configuration itself, a key, a
/// secret): a regular file of at most `max` bytes. A path to a device (`/dev/zero`,
/// `/dev/urandom`), a FIFO or a directory is refused before it is opened, and a file that
/// grows past `max` is not read further, so a mistaken path is an error with its name, never
/// a command that hangs filling memory.
pub fn read_small(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let refuse = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(refuse(format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

/// Reads a configuration file, the failure reported like any configuration problem: not a
/// regular file, larger than [`MAX_CONFIG_BYTES`], or not UTF-8 (with the line and column
/// of the first byte that is not).
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    let problem = |message: String| {
        ConfigErrors(vec![ConfigProblem {
            path: path.display().to_string(),
            message,
        }])
    };
    let bytes = read_small(path, MAX_CONFIG_BYTES).map_err(|e| problem(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let good = e.utf8_error().valid_up_to();
        let line_start = bytes[..good]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |at| at + 1);
        let line = bytes[..good].iter().filter(|b| **b == b'\n').count() + 1;
        let column = good - line_start + 1;
        problem(format!(
            "line {line}, column {column}: not UTF-8 (byte 0x{:02x}); TOML files are UTF-8",
            bytes[good]
        ))
    })
}

/// The 1-based line of byte `offset` in `text` (the last line when it is past the end).
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|b| **b == b'\n').count() + 1
}

/// A TOML syntax or shape error, placed by its line.
pub(crate) fn toml_problem(text: &str, e: &toml::de::Error) -> ConfigErrors {
    let at = match e.span() {
        Some(span) => format!("line {}", line_at(text, span.start)),
        None => "config".into(),
    };
    ConfigErrors(vec![ConfigProblem {
        path: at,
        message: e.message().to_owned(),
    }])
}
