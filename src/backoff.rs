//! Exponential backoff with full jitter: how long to wait before the next attempt at something
//! that keeps failing (a collector that does not answer, a serial port that went away).
//!
//! A leaf: it knows nothing of what is retried, so the uplink and the sensors share it.

use std::time::Duration;

/// Exponential backoff with full jitter between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next wait: uniform in [min, min(max, min·2^attempt)].
    pub fn next_wait(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let mut random = [0u8; 8];
        // Without randomness the wait is the cap: still bounded, merely not jittered.
        let fraction = getrandom::getrandom(&mut random)
            .map(|()| u64::from_le_bytes(random) as f64 / u64::MAX as f64)
            .unwrap_or(1.0);
        self.min + (cap.saturating_sub(self.min)).mul_f64(fraction)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_full_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 0..20 {
            let w = b.next_wait();
            let cap = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
            assert!(w >= Duration::from_secs(1) && w <= cap, "{attempt}: {w:?}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_secs(1));
    }
}
