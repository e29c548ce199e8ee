//! IPv4 and IPv6 fragment reassembly with a bounded pool.
//!
//! Large INVITEs with SDP, or with many Via and Record-Route headers, fragment over UDP; a tap
//! that cannot put them back together loses exactly the calls that matter. The pool is bounded
//! by datagrams in progress and by bytes held (the fragments' bytes and the bookkeeping of
//! their ranges, also as a datagram grows), a datagram not completed within the timeout
//! (capture time) is dropped, and every drop is counted. The byte bound can be lowered at any
//! time ([`FragmentPool::set_budget`]) by a caller sharing one budget among several pools.
//!
//! Overlaps: a fragment that repeats bytes already held (a duplicate, or a re-fragmentation
//! along other boundaries) is accepted when the bytes agree. A fragment whose bytes disagree
//! with what is held is an overlap attack or a corrupt capture: the whole datagram is dropped
//! and counted, as RFC 5722 requires for IPv6 and as is the safe choice for IPv4 too.
//!
//! A fragment cut by the capture's snapshot length ([`FragmentPool::add_cut`]) cannot be put
//! back: its datagram is followed by its fragments' offsets and lengths alone (no bytes
//! held), and counted once as `snaplen_cut` when its last range arrives or its time runs out,
//! not as a datagram the network lost (`timed_out`).
//!
//! `etherparse` has a defragmentation pool, but it is unbounded ("not safe against out of
//! memory attacks", its own doc) and lets later overlapping bytes win silently, so the pool is
//! our own; the header fields it reads come from `etherparse`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::time::Timestamp;

/// Bounds of the pool.
#[derive(Debug, Clone, Copy)]
pub struct FragmentLimits {
    /// Datagrams being reassembled at once.
    pub max_datagrams: usize,
    /// Bytes held across all datagrams being reassembled.
    pub max_bytes: usize,
    /// A datagram not completed this long after its first fragment is dropped.
    pub timeout: Duration,
}

impl Default for FragmentLimits {
    fn default() -> Self {
        FragmentLimits {
            max_datagrams: 1024,
            max_bytes: 16 * 1024 * 1024,
            // Linux's ipfrag_time default.
            timeout: Duration::from_secs(30),
        }
    }
}

/// Identifies the datagram a fragment belongs to (RFC 791 §3.2, RFC 8200 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub protocol: u8,
}

/// Counters of the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FragmentStats {
    pub fragments: u64,
    pub reassembled: u64,
    pub timed_out: u64,
    /// Dropped because the pool was full (datagram count or bytes).
    pub evicted: u64,
    pub overlap_conflicts: u64,
    /// Fragments with impossible offsets or lengths.
    pub malformed: u64,
    /// Size of the largest datagram payload reassembled.
    pub largest_reassembled: u64,
    /// Datagrams not reassembled because one of their fragments was cut by the capture's
    /// snapshot length.
    pub snaplen_cut: u64,
}

#[derive(Debug)]
struct Partial {
    data: Vec<u8>,
    /// Received byte ranges, sorted and merged.
    ranges: Vec<(usize, usize)>,
    /// Length of the whole payload, known once the last fragment arrived.
    total: Option<usize>,
    first_seen: Timestamp,
    /// A fragment was cut by the snapshot length: ranges are followed, bytes are not kept.
    cut: bool,
}

impl Partial {
    /// Bytes of memory held: the payload buffer and the range list.
    fn cost(&self) -> usize {
        self.data.capacity() + self.ranges.capacity() * std::mem::size_of::<(usize, usize)>()
    }
}

/// The reassembly pool.
#[derive(Debug)]
pub struct FragmentPool {
    limits: FragmentLimits,
    partials: HashMap<FragmentKey, Partial>,
    /// Sum of `Partial::cost` over the partials.
    bytes_held: usize,
    /// The byte bound in force (at most `limits.max_bytes`).
    budget: usize,
    last_sweep: Timestamp,
    stats: FragmentStats,
}

/// Largest payload an IP datagram can reassemble to.
const MAX_DATAGRAM: usize = 65_535;

impl FragmentPool {
    pub fn new(limits: FragmentLimits) -> Self {
        FragmentPool {
            limits,
            partials: HashMap::new(),
            bytes_held: 0,
            budget: limits.max_bytes,
            last_sweep: Timestamp::default(),
            stats: FragmentStats::default(),
        }
    }

    pub fn stats(&self) -> FragmentStats {
        self.stats
    }

    /// Datagrams currently being reassembled.
    pub fn in_progress(&self) -> usize {
        self.partials.len()
    }

    /// Bytes held by datagrams in progress.
    pub fn bytes_held(&self) -> usize {
        self.bytes_held
    }

    /// Sets the byte bound for the next fragments (never above [`FragmentLimits::max_bytes`]).
    pub fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes.min(self.limits.max_bytes);
    }

    /// Adds a fragment (`offset` in bytes). Returns the whole payload when this fragment
    /// completed its datagram.
    pub fn add(
        &mut self,
        key: FragmentKey,
        now: Timestamp,
        offset: usize,
        more_fragments: bool,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        self.stats.fragments += 1;
        self.expire(now);
        let end = offset + payload.len();
        if end > MAX_DATAGRAM || (more_fragments && !payload.len().is_multiple_of(8)) {
            self.stats.malformed += 1;
            return None;
        }

        self.open(key, now, end, false);
        let partial = self.partials.get_mut(&key)?;
        if partial.cut {
            self.add_range_of_cut(key, offset, end, more_fragments);
            return None;
        }

        let conflicting_end = match partial.total {
            Some(total) => end > total || (!more_fragments && end != total),
            None => !more_fragments && partial.ranges.last().is_some_and(|r| r.1 > end),
        };
        let conflicting_bytes = partial.ranges.iter().any(|&(start, stop)| {
            let (lo, hi) = (start.max(offset), stop.min(end));
            lo < hi && partial.data[lo..hi] != payload[lo - offset..hi - offset]
        });
        if conflicting_end || conflicting_bytes {
            self.stats.overlap_conflicts += 1;
            self.remove(&key);
            return None;
        }

        let cost_before = partial.cost();
        if end > partial.data.len() {
            // Exactly what is needed: the bytes held are the bytes accounted.
            partial.data.reserve_exact(end - partial.data.len());
            partial.data.resize(end, 0);
        }
        partial.data[offset..end].copy_from_slice(payload);
        if !more_fragments {
            partial.total = Some(end);
        }
        insert_range(&mut partial.ranges, (offset, end));
        let complete = partial.total.is_some_and(|t| partial.ranges == [(0, t)]);
        self.bytes_held = (self.bytes_held + partial.cost()).saturating_sub(cost_before);

        if complete {
            let done = self.remove(&key)?;
            self.stats.reassembled += 1;
            self.stats.largest_reassembled =
                self.stats.largest_reassembled.max(done.data.len() as u64);
            return Some(done.data);
        }
        self.keep_within_budget(&key);
        None
    }

    /// Adds a fragment cut by the capture's snapshot length: `length` is the payload length its
    /// IP header declares. Its datagram cannot be reassembled; it is followed to its end (or
    /// its timeout) without its bytes, and then counted in `snaplen_cut`.
    pub fn add_cut(
        &mut self,
        key: FragmentKey,
        now: Timestamp,
        offset: usize,
        more_fragments: bool,
        length: usize,
    ) {
        self.stats.fragments += 1;
        self.expire(now);
        let end = offset + length;
        if end > MAX_DATAGRAM || (more_fragments && !length.is_multiple_of(8)) {
            self.stats.malformed += 1;
            return;
        }
        self.open(key, now, 0, true);
        if let Some(partial) = self.partials.get_mut(&key) {
            // The bytes held so far are of no use now.
            let before = partial.cost();
            partial.cut = true;
            partial.data = Vec::new();
            self.bytes_held = (self.bytes_held + partial.cost()).saturating_sub(before);
        }
        self.add_range_of_cut(key, offset, end, more_fragments);
    }

    /// Starts following the datagram of `key` unless it is followed already, making room
    /// first (the oldest datagrams evicted) for one more of `bytes`.
    fn open(&mut self, key: FragmentKey, now: Timestamp, bytes: usize, cut: bool) {
        if self.partials.contains_key(&key) {
            return;
        }
        while self.partials.len() >= self.limits.max_datagrams
            || self.bytes_held + bytes > self.budget
        {
            if !self.evict_oldest(None) {
                break;
            }
        }
        self.partials.insert(
            key,
            Partial {
                data: Vec::new(),
                ranges: Vec::new(),
                total: None,
                first_seen: now,
                cut,
            },
        );
    }

    /// A datagram that grew past the byte bound makes room by evicting older ones; if it
    /// alone is over, it goes (counted as evicted). Cut datagrams too: their ranges are all
    /// they hold, and a sender's scattered fragments can make many.
    fn keep_within_budget(&mut self, key: &FragmentKey) {
        while self.bytes_held > self.budget {
            if !self.evict_oldest(Some(key)) {
                self.remove(key);
                self.stats.evicted += 1;
                break;
            }
        }
    }

    /// Records a fragment's range in a cut datagram; at its last range the datagram is
    /// counted in `snaplen_cut` and forgotten.
    fn add_range_of_cut(&mut self, key: FragmentKey, offset: usize, end: usize, more: bool) {
        let Some(partial) = self.partials.get_mut(&key) else {
            return;
        };
        let before = partial.cost();
        if !more {
            partial.total = Some(end);
        }
        insert_range(&mut partial.ranges, (offset, end));
        let complete = partial.total.is_some_and(|t| partial.ranges == [(0, t)]);
        self.bytes_held = (self.bytes_held + partial.cost()).saturating_sub(before);
        if complete {
            self.remove(&key);
            self.stats.snaplen_cut += 1;
        } else {
            self.keep_within_budget(&key);
        }
    }

    /// Drops datagrams older than the timeout. Cheap to call per packet: it sweeps at most
    /// once a second of capture time.
    pub fn expire(&mut self, now: Timestamp) {
        if now.seconds_since(self.last_sweep) < 1.0 {
            return;
        }
        self.last_sweep = now;
        let timeout = self.limits.timeout.as_secs_f64();
        let expired: Vec<FragmentKey> = self
            .partials
            .iter()
            .filter(|(_, p)| now.seconds_since(p.first_seen) > timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            match self.remove(&key) {
                Some(p) if p.cut => self.stats.snaplen_cut += 1,
                _ => self.stats.timed_out += 1,
            }
        }
    }

    /// Evicts the oldest datagram other than `keep`; false when there is none.
    fn evict_oldest(&mut self, keep: Option<&FragmentKey>) -> bool {
        let oldest = self
            .partials
            .iter()
            .filter(|(k, _)| Some(*k) != keep)
            .min_by_key(|(_, p)| p.first_seen)
            .map(|(k, _)| *k);
        match oldest {
            Some(key) => {
                self.remove(&key);
                self.stats.evicted += 1;
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, key: &FragmentKey) -> Option<Partial> {
        let partial = self.partials.remove(key)?;
        self.bytes_held = self.bytes_held.saturating_sub(partial.cost());
        Some(partial)
    }
}

/// Inserts a range into a sorted list of disjoint ranges, merging touching ones.
fn insert_range(ranges: &mut Vec<(usize, usize)>, new: (usize, usize)) {
    let (mut start, mut end) = new;
    ranges.retain(|&(s, e)| {
        if s <= end && start <= e {
            start = start.min(s);
            end = end.max(e);
            false
        } else {
            true
        }
    });
    let at = ranges.partition_point(|&(s, _)| s < start);
    ranges.insert(at, (start, end));
}

/// The pool's counters as the capture summary writes them (`decode.fragments`).
impl From<&FragmentStats> for crate::record::FragmentCounters {
    fn from(s: &FragmentStats) -> Self {
        // Every field named: a counter added here fails to compile until the record (and its
        // schema file) says whether it is written.
        let FragmentStats {
            fragments,
            reassembled,
            timed_out,
            evicted,
            overlap_conflicts,
            malformed,
            largest_reassembled,
            snaplen_cut,
        } = *s;
        crate::record::FragmentCounters {
            fragments,
            reassembled,
            timed_out,
            evicted,
            overlap_conflicts,
            malformed,
            largest_reassembled,
            snaplen_cut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FragmentKey {
        FragmentKey {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            id: 7,
            protocol: 17,
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_secs_nanos(secs, 0)
    }

    /// A fragment cut by the snapshot length: its datagram is followed without its bytes and
    /// counted as cut when its last fragment arrives, or when its time runs out; never as a
    /// datagram the network lost (`timed_out`), nor handed over in part.
    #[test]
    fn a_datagram_with_a_cut_fragment_is_counted_as_cut() {
        let mut pool = FragmentPool::new(FragmentLimits::default());
        let data: Vec<u8> = (0..40u8).collect();
        // Cut first fragment (24 bytes declared), then the rest.
        pool.add_cut(key(), t(1), 0, true, 24);
        assert_eq!(pool.add(key(), t(1), 24, false, &data[24..]), None);
        assert_eq!(pool.in_progress(), 0);
        assert_eq!(pool.bytes_held(), 0);
        // The rest first, then the cut one (reverse order): the bytes held are let go.
        let other = FragmentKey { id: 8, ..key() };
        assert_eq!(pool.add(other, t(2), 24, false, &data[24..]), None);
        assert!(pool.bytes_held() >= 16);
        pool.add_cut(other, t(2), 0, true, 24);
        assert_eq!(pool.in_progress(), 0);
        // A cut datagram whose other fragments never come: cut, not timed out.
        let lost = FragmentKey { id: 9, ..key() };
        pool.add_cut(lost, t(3), 24, false, 16);
        pool.expire(t(100));
        let stats = pool.stats();
        assert_eq!((stats.snaplen_cut, stats.timed_out), (3, 0));
        assert_eq!(stats.reassembled, 0);
        assert_eq!(stats.fragments, 5);
    }

    #[test]
    fn reassembles_out_of_order_with_duplicates() {
        let mut pool = FragmentPool::new(FragmentLimits::default());
        let data: Vec<u8> = (0..40u8).collect();
        assert_eq!(pool.add(key(), t(1), 24, false, &data[24..]), None);
        assert_eq!(pool.add(key(), t(1), 0, true, &data[..16]), None);
        // An agreeing overlap (bytes 8..24) is accepted.
        assert_eq!(pool.add(key(), t(1), 8, true, &data[8..24]), Some(data));
        assert_eq!(pool.in_progress(), 0);
        assert_eq!(pool.stats().reassembled, 1);
    }

    #[test]
    fn conflicting_overlap_drops_datagram() {
        let mut pool = FragmentPool::new(FragmentLimits::default());
        assert_eq!(pool.add(key(), t(1), 0, true, &[1; 16]), None);
        assert_eq!(pool.add(key(), t(1), 8, false, &[2; 16]), None);
        assert_eq!(pool.stats().overlap_conflicts, 1);
        assert_eq!(pool.in_progress(), 0);
    }

    #[test]
    fn times_out_and_bounds_datagrams() {
        let limits = FragmentLimits {
            max_datagrams: 2,
            ..FragmentLimits::default()
        };
        let mut pool = FragmentPool::new(limits);
        for id in 0..3 {
            let k = FragmentKey { id, ..key() };
            pool.add(k, t(1), 0, true, &[0; 8]);
        }
        assert_eq!(pool.in_progress(), 2);
        assert_eq!(pool.stats().evicted, 1);
        pool.expire(t(100));
        assert_eq!(pool.in_progress(), 0);
        assert_eq!(pool.stats().timed_out, 2);
    }

    #[test]
    fn growing_datagrams_stay_within_the_byte_bound() {
        // Each datagram starts small and then grows to 64 KiB with a fragment at its end:
        // the bound must hold as they grow, not only when they start.
        let limits = FragmentLimits {
            max_bytes: 256 * 1024,
            ..FragmentLimits::default()
        };
        let mut pool = FragmentPool::new(limits);
        for id in 0..32 {
            let k = FragmentKey { id, ..key() };
            pool.add(k, t(1), 0, true, &[0; 8]);
            pool.add(k, t(1), 65_000, true, &[0; 8]);
            assert!(pool.bytes_held() <= 256 * 1024, "{}", pool.bytes_held());
        }
        assert!(pool.stats().evicted >= 28, "{:?}", pool.stats());
        pool.set_budget(1000);
        pool.add(FragmentKey { id: 99, ..key() }, t(1), 0, true, &[0; 8]);
        assert!(pool.bytes_held() <= 1000, "{}", pool.bytes_held());
    }

    #[test]
    fn cut_datagrams_stay_within_the_byte_bound_as_their_ranges_grow() {
        // A cut datagram holds no bytes, only the ranges seen: fragments a sender scatters
        // (8 bytes every 16) make thousands of them, and the bound must hold for those too.
        let mut pool = FragmentPool::new(FragmentLimits::default());
        pool.set_budget(4096);
        for id in 0..4 {
            let k = FragmentKey { id, ..key() };
            for i in 0..2000 {
                pool.add_cut(k, t(1), i * 16, true, 8);
                assert!(pool.bytes_held() <= 4096, "{}", pool.bytes_held());
            }
        }
        assert!(pool.stats().evicted >= 3, "{:?}", pool.stats());
    }

    #[test]
    fn rejects_oversized_and_unaligned() {
        let mut pool = FragmentPool::new(FragmentLimits::default());
        assert_eq!(pool.add(key(), t(1), 65_530, false, &[0; 16]), None);
        assert_eq!(pool.add(key(), t(1), 0, true, &[0; 5]), None);
        assert_eq!(pool.stats().malformed, 2);
    }
}
