//! A panic of a long-lived thread or task (a bug in teledge or in a dependency), caught at
//! its boundary: what it said, and the debug builds' way to make one on purpose.
//!
//! The daemon catches a panic of each of its long-lived threads and tasks where it starts
//! the work (the spool writer, the capture threads, the HEP task, the ticker, the HEP relay,
//! the uplink), accounts for what the panic lost, announces it upstream, and stops with a
//! failure exit so systemd restarts it (`crate::daemon`, "supervise"). Here only the leaf
//! parts: the message a panic carried, and [`inject`].
//!
//! [`inject`] makes a component panic on purpose, so a test can check that path in a real
//! daemon process: `TELEDGE_DEBUG_PANIC=<component>[:<n>]` panics at the `n`-th time
//! (default 1) the component passes its injection point. It is honoured only in builds with
//! debug assertions (what `cargo test` runs as the `teledge` binary), not `cfg(test)`: the
//! integration tests run the real binary, which is never built with `cfg(test)`. A release
//! or edge build compiles the hook to nothing, so no environment can make a production
//! process panic.

use std::any::Any;

/// The text a panic carried (`panic!("...")`'s message), or a stand-in.
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".to_owned()
    }
}

/// Debug builds only: panics when `TELEDGE_DEBUG_PANIC` names `component` and this is the
/// `n`-th call for it (see the module doc). Release builds: nothing.
#[inline]
pub fn inject(component: &str) {
    #[cfg(debug_assertions)]
    debug_only::inject(component);
    #[cfg(not(debug_assertions))]
    let _ = component;
}

/// What of a panic's text may leave the box: a literal (`panic!("...")` without
/// arguments, `expect("...")` carries a `String`) is the code's own text; a formatted
/// message can hold what the code was handling — a SIP header in a slicing panic, a parse
/// error's input in `unwrap()`'s — so it stays in the local log only (free text is removed
/// from records for the same reason: `crate::privacy`).
pub fn code_text(payload: &(dyn Any + Send)) -> Option<&'static str> {
    payload.downcast_ref::<&'static str>().copied()
}

#[cfg(debug_assertions)]
mod debug_only {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// The component named and at which call it panics.
    fn target() -> Option<&'static (String, u64)> {
        static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
        TARGET
            .get_or_init(|| {
                let value = std::env::var("TELEDGE_DEBUG_PANIC").ok()?;
                let (name, at) = match value.split_once(':') {
                    Some((name, n)) => (name.to_owned(), n.parse().ok()?),
                    None => (value, 1),
                };
                Some((name, at))
            })
            .as_ref()
    }

    #[allow(clippy::panic)]
    pub(super) fn inject(component: &str) {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let Some((name, at)) = target() else {
            return;
        };
        if name == component && CALLS.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            panic!("{component}: panic injected by TELEDGE_DEBUG_PANIC (debug build)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_of_a_panic_is_read_back() {
        let caught = std::panic::catch_unwind(|| {
            #[allow(clippy::panic)]
            {
                panic!("boom {}", 7)
            }
        })
        .unwrap_err();
        assert_eq!(message(caught.as_ref()), "boom 7");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(3u8)).unwrap_err();
        assert_eq!(message(caught.as_ref()), "panic without a message");
    }
}
