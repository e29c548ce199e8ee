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

/// Reads a configuration file, the failure reported like any configuration problem.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigProblem {
            path: path.display().to_string(),
            message: e.to_string(),
        }])
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
