//! The keyed hasher of the correlation tables whose keys senders choose: Call-IDs, tags,
//! transaction fingerprints, signalling and media addresses.
//!
//! Keys come from whoever sends packets, so the hash must be keyed, or a sender could pick
//! Call-IDs (or addresses, branches, CSeqs) that all collide and make every lookup walk one
//! long probe sequence (hash flooding). std's keyed SipHash-1-3 was 3.8 % of the instructions
//! of a SIP replay (inclusive, base of 2026-12-03); foldhash is a keyed
//! multiply-fold hash, several times faster, keyed here with 128 bits from the operating
//! system's random source once per process (foldhash's own default seed is derived from
//! addresses and the clock, which it does not claim resists flooding). It is not a
//! cryptographic function: an attacker able to observe the hash values or the tables'
//! iteration order over time could in principle recover the key. Senders see neither
//! (nothing derived from these hashes is written to a record or a log; calls timed out or
//! left at the end are sorted by creation before their records are made), and every table
//! is bounded
//! (`max_calls`, the tombstone, transaction and held-flow caps, the route table's size).
//!
//! The media tracker's tables use it too: its stream table takes one lookup per RTP packet,
//! where SipHash was 12 % of the instructions of an RTP replay (2026-12-02). There the only
//! order a sender could see is that in which one idle sweep reports orphan streams.
//!
//! The sharded correlator places by it as well ([`super::sharded`]): the shard of a Call-ID
//! or of an orphan address pair, and a media route's stripe. There a fixed function would not
//! slow a lookup but let a sender steer every call onto one shard, one capture thread.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

/// A [`BuildHasher`] keyed from the operating system once per process (the shared seed),
/// with a seed of its own per table so two tables do not probe alike: a random base drawn
/// once plus a counter, as std's `RandomState` does, since tables are made per call (its
/// transactions seen) and a system call each would cost more than the hashing saves.
#[derive(Clone)]
pub struct KeyedHasher(foldhash::fast::SeedableRandomState);

impl Default for KeyedHasher {
    fn default() -> Self {
        static SHARED: std::sync::OnceLock<foldhash::SharedSeed> = std::sync::OnceLock::new();
        static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static TABLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let shared = SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(random_u64()));
        let table = TABLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = BASE.get_or_init(random_u64).wrapping_add(table);
        KeyedHasher(foldhash::fast::SeedableRandomState::with_seed(seed, shared))
    }
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHasher")
    }
}

impl BuildHasher for KeyedHasher {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A map on the keyed hasher.
pub type KeyedMap<K, V> = HashMap<K, V, KeyedHasher>;

/// A set on the keyed hasher.
pub type KeyedSet<T> = HashSet<T, KeyedHasher>;

/// A 64-bit fingerprint of `value` under this process's key, for the tables that keep a
/// hash in place of the value (tombstones of ended dialogs, transactions seen). Keyed like
/// the tables themselves: with a fixed function a sender could compute two Call-IDs or
/// transactions with the same fingerprint and make a new call look like an ended one.
/// foldhash's `quality` variant (one more folded multiply at the end than the tables' `fast`
/// one): the whole 64 bits count here, not only the bits a table's probe uses.
pub fn fingerprint(value: &impl Hash) -> u64 {
    static KEY: std::sync::OnceLock<foldhash::quality::SeedableRandomState> =
        std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        static SHARED: std::sync::OnceLock<foldhash::SharedSeed> = std::sync::OnceLock::new();
        let shared = SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(random_u64()));
        foldhash::quality::SeedableRandomState::with_seed(random_u64(), shared)
    })
    .hash_one(value)
}

/// 64 bits from the operating system's random source; should it fail (it does not on
/// Linux after boot), std's own per-process random keys.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_within_a_process_and_tables_are_keyed_apart() {
        assert_eq!(fingerprint(&"call-1"), fingerprint(&"call-1"));
        assert_ne!(fingerprint(&"call-1"), fingerprint(&"call-2"));
        let (a, b) = (KeyedHasher::default(), KeyedHasher::default());
        assert_eq!(a.hash_one("call-1"), a.hash_one("call-1"));
        // Two tables' own seeds differ (a 2^-64 chance of a false failure).
        assert_ne!(a.hash_one("call-1"), b.hash_one("call-1"));
    }
}
