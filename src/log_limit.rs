//! Flood control for log lines: an event that can come in floods is logged at most once per
//! [`LOG_INTERVAL`] per event and reason, the line saying how many occurrences it stands for.
//! Counting is not limited: metrics count every occurrence (see [`crate::observe::events`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two log lines of one event and reason.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When each event and reason was last logged, and how many occurred since (one per
/// `AgentMetrics`, so two agents in one process do not silence each other).
#[derive(Debug, Default)]
pub struct Limiter {
    state: Mutex<HashMap<(&'static str, String), LastLine>>,
}

/// When the last line was written, and occurrences since.
type LastLine = (Instant, u64);

/// Most event/reason pairs tracked; reasons come from fixed sets, so this is never reached
/// in practice, and past it every occurrence is logged (never silenced).
const MAX_TRACKED: usize = 1024;

impl Limiter {
    /// `Some(occurrences since the last line, these included)` when a line is due.
    pub fn due(&self, (event, reason): (&'static str, &str), count: u64) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = (event, reason.to_owned());
        match state.get_mut(&key) {
            Some((last, pending)) => {
                *pending += count;
                if now.duration_since(*last) < LOG_INTERVAL {
                    return None;
                }
                *last = now;
                Some(std::mem::take(pending))
            }
            None => {
                if state.len() < MAX_TRACKED {
                    state.insert(key, (now, 0));
                }
                Some(count)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_once_per_interval_and_counted_in_full() {
        let limiter = Limiter::default();
        assert_eq!(limiter.due(("e", "r"), 1), Some(1));
        for _ in 0..99 {
            assert_eq!(limiter.due(("e", "r"), 1), None);
        }
        // Another reason has its own interval.
        assert_eq!(limiter.due(("e", "other"), 3), Some(3));
        // Once the interval has passed, the line stands for everything since the last one.
        limiter
            .state
            .lock()
            .unwrap()
            .get_mut(&("e", "r".to_owned()))
            .unwrap()
            .0 -= LOG_INTERVAL;
        assert_eq!(limiter.due(("e", "r"), 1), Some(100));
    }
}
