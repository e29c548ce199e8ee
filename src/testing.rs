//! Helpers shared by the unit tests (compiled for tests only).

/// A deterministic pseudo-random sequence (xorshift64) for tests that walk many generated
/// inputs: the same seed gives the same inputs, so a failure names a reproducible case.
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
