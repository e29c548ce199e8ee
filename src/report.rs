//! How an error is told: its message and each of its causes once, `outer: inner: innermost`
//! (what anyhow's `{:#}` prints, for errors logged where they are handled).
//!
//! The crate's errors follow one rule so this is right: an error's own message never repeats
//! its source's text (the source is returned by `source()`, and the teller adds it). A leaf:
//! every module that logs an error can use it.

use std::error::Error;
use std::fmt;

/// `error` and its causes on one line, each once.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    Chain(error).to_string()
}

/// [`chain`] as a `Display` value, for log fields (`error = %Chain(&e)`).
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("spool")]
    struct Outer(#[source] Middle);
    #[derive(Debug, thiserror::Error)]
    #[error("manifest")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn each_cause_is_told_once_in_order() {
        let e = Outer(Middle(std::io::Error::other("disk on fire")));
        assert_eq!(chain(&e), "spool: manifest: disk on fire");
        assert_eq!(format!("{}", Chain(&e)), "spool: manifest: disk on fire");
    }
}
