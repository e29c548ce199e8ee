//! SCTP user messages from DATA chunks: fragments put back together (RFC 9260 §6.9).
//!
//! A user message larger than the path MTU is sent as several DATA chunks with consecutive
//! TSNs, the first flagged B, the last E, all with the same stream (and, when ordered, the
//! same stream sequence number). Fragments are held per association direction (addresses and
//! ports) by TSN until a B..E run is complete; a retransmitted fragment already held is
//! counted and ignored. Every bound is counted: a message over [`MAX_USER_MESSAGE`] is
//! dropped, a fragment not completed within the timeout is dropped, and the bytes held stay
//! within the limit ([`SctpLimits::max_bytes`], lowered with [`SctpReassembler::set_budget`]
//! by a caller sharing one budget), the oldest fragments going first.
//!
//! Only fragments the caller asks to keep are held (SIP uses payload protocol identifier 0;
//! Diameter, M3UA and the like on the same tap are not worth the memory). No I/O; time is
//! capture time.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use crate::decode::sctp::DataChunk;
use crate::time::Timestamp;

/// Largest user message reassembled (as for SIP over TCP).
pub const MAX_USER_MESSAGE: usize = crate::reassembly::sip_stream::MAX_MESSAGE;
/// Bookkeeping cost of one held fragment beyond its bytes.
const FRAGMENT_OVERHEAD: usize = 96;

/// Bounds of the reassembler.
#[derive(Debug, Clone, Copy)]
pub struct SctpLimits {
    /// Fragments held at once.
    pub max_fragments: usize,
    /// Bytes held across all fragments.
    pub max_bytes: usize,
    /// A fragment not part of a complete message this long after it arrived is dropped.
    pub timeout: Duration,
}

impl Default for SctpLimits {
    fn default() -> Self {
        SctpLimits {
            max_fragments: 16_384,
            max_bytes: 16 * 1024 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of the reassembler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SctpStats {
    /// Fragments (DATA chunks without both B and E) offered.
    pub fragments: u64,
    /// User messages put back together.
    pub reassembled: u64,
    /// Fragments already held (retransmissions), ignored.
    pub duplicates: u64,
    /// Fragments dropped after the timeout.
    pub timed_out: u64,
    /// Fragments dropped to stay within the bounds.
    pub evicted: u64,
    /// Messages dropped for being over [`MAX_USER_MESSAGE`].
    pub oversized: u64,
}

/// One direction of an association.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AssociationKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

#[derive(Debug)]
struct Fragment {
    begin: bool,
    end: bool,
    unordered: bool,
    stream: u16,
    ssn: u16,
    data: Vec<u8>,
    arrived: Timestamp,
    /// Position in arrival order, for eviction.
    order: u64,
}

impl Fragment {
    fn cost(&self) -> usize {
        self.data.capacity() + FRAGMENT_OVERHEAD
    }
}

/// What a fragment completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembled {
    /// Nothing yet.
    Pending,
    /// A whole user message.
    Message(Vec<u8>),
    /// The fragment was not kept (a duplicate, or over a bound): counted.
    Dropped,
}

/// Reassembles fragmented SCTP user messages.
#[derive(Debug)]
pub struct SctpReassembler {
    limits: SctpLimits,
    /// Held fragments per direction, by TSN.
    held: HashMap<AssociationKey, HashMap<u32, Fragment>>,
    /// Every held fragment by arrival order, oldest first.
    by_arrival: BTreeMap<u64, (AssociationKey, u32)>,
    next_order: u64,
    bytes_held: usize,
    budget: usize,
    stats: SctpStats,
}

impl SctpReassembler {
    pub fn new(limits: SctpLimits) -> Self {
        SctpReassembler {
            limits,
            held: HashMap::new(),
            by_arrival: BTreeMap::new(),
            next_order: 0,
            bytes_held: 0,
            budget: limits.max_bytes,
            stats: SctpStats::default(),
        }
    }

    pub fn stats(&self) -> SctpStats {
        self.stats
    }

    /// Bytes held by fragments waiting for the rest of their message.
    pub fn bytes_held(&self) -> usize {
        self.bytes_held
    }

    /// Fragments held.
    pub fn fragments_held(&self) -> usize {
        self.by_arrival.len()
    }

    /// Sets the byte bound for the next fragments (never above [`SctpLimits::max_bytes`]).
    pub fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes.min(self.limits.max_bytes);
    }

    /// Offers one fragment (a DATA chunk without both B and E). Returns the message it
    /// completed, if any.
    pub fn add(
        &mut self,
        key: AssociationKey,
        now: Timestamp,
        chunk: &DataChunk<'_>,
    ) -> Reassembled {
        self.stats.fragments += 1;
        self.expire(now);
        if chunk.payload.len() > MAX_USER_MESSAGE {
            self.stats.oversized += 1;
            return Reassembled::Dropped;
        }
        if self
            .held
            .get(&key)
            .is_some_and(|d| d.contains_key(&chunk.tsn))
        {
            self.stats.duplicates += 1;
            return Reassembled::Dropped;
        }
        let fragment = Fragment {
            begin: chunk.begin,
            end: chunk.end,
            unordered: chunk.unordered,
            stream: chunk.stream,
            ssn: chunk.ssn,
            data: chunk.payload.to_vec(),
            arrived: now,
            order: self.next_order,
        };
        self.next_order += 1;
        // Make room first: the oldest fragments go.
        let cost = fragment.cost();
        while self.bytes_held + cost > self.budget
            || self.by_arrival.len() >= self.limits.max_fragments
        {
            let Some((_, (k, tsn))) = self.by_arrival.pop_first() else {
                break;
            };
            self.remove(&k, tsn);
            self.stats.evicted += 1;
        }
        if self.bytes_held + cost > self.budget {
            self.stats.evicted += 1;
            return Reassembled::Dropped;
        }
        self.bytes_held += cost;
        self.by_arrival.insert(fragment.order, (key, chunk.tsn));
        self.held
            .entry(key)
            .or_default()
            .insert(chunk.tsn, fragment);
        self.complete(key, chunk.tsn)
    }

    /// Looks for a complete B..E run through `tsn`.
    fn complete(&mut self, key: AssociationKey, tsn: u32) -> Reassembled {
        let Some(direction) = self.held.get(&key) else {
            return Reassembled::Pending;
        };
        let Some(this) = direction.get(&tsn) else {
            return Reassembled::Pending;
        };
        let same_message = |f: &Fragment| {
            f.stream == this.stream
                && f.unordered == this.unordered
                && (f.unordered || f.ssn == this.ssn)
        };
        // Back to the B fragment, forward to the E fragment, each TSN present.
        let mut first = tsn;
        let mut size = this.data.len();
        let mut found_begin = this.begin;
        while !found_begin {
            let prev = first.wrapping_sub(1);
            match direction.get(&prev) {
                Some(f) if same_message(f) && !f.end => {
                    first = prev;
                    size += f.data.len();
                    found_begin = f.begin;
                }
                _ => return Reassembled::Pending,
            }
            if size > MAX_USER_MESSAGE {
                break;
            }
        }
        let mut last = tsn;
        let mut found_end = this.end;
        while !found_end && size <= MAX_USER_MESSAGE {
            let next = last.wrapping_add(1);
            match direction.get(&next) {
                Some(f) if same_message(f) && !f.begin => {
                    last = next;
                    size += f.data.len();
                    found_end = f.end;
                }
                _ => return Reassembled::Pending,
            }
        }
        let run = last.wrapping_sub(first);
        if size > MAX_USER_MESSAGE {
            // The message can never be delivered whole: drop what is held of it.
            for i in 0..=run {
                self.remove_counted(&key, first.wrapping_add(i));
            }
            self.stats.oversized += 1;
            return Reassembled::Dropped;
        }
        let mut message = Vec::with_capacity(size);
        for i in 0..=run {
            if let Some(f) = self.remove_counted(&key, first.wrapping_add(i)) {
                message.extend_from_slice(&f.data);
            }
        }
        self.stats.reassembled += 1;
        Reassembled::Message(message)
    }

    /// Removes a fragment and its arrival entry.
    fn remove_counted(&mut self, key: &AssociationKey, tsn: u32) -> Option<Fragment> {
        let fragment = self.remove(key, tsn)?;
        self.by_arrival.remove(&fragment.order);
        Some(fragment)
    }

    /// Removes a fragment (its arrival entry is the caller's).
    fn remove(&mut self, key: &AssociationKey, tsn: u32) -> Option<Fragment> {
        let direction = self.held.get_mut(key)?;
        let fragment = direction.remove(&tsn)?;
        if direction.is_empty() {
            self.held.remove(key);
        }
        self.bytes_held = self.bytes_held.saturating_sub(fragment.cost());
        Some(fragment)
    }

    /// Drops fragments older than the timeout (oldest first, so this stops at the first
    /// young one).
    fn expire(&mut self, now: Timestamp) {
        let timeout = self.limits.timeout.as_secs_f64();
        while let Some((&order, &(key, tsn))) = self.by_arrival.first_key_value() {
            let old = self
                .held
                .get(&key)
                .and_then(|d| d.get(&tsn))
                .is_none_or(|f| now.seconds_since(f.arrived) > timeout);
            if !old {
                return;
            }
            self.by_arrival.remove(&order);
            self.remove(&key, tsn);
            self.stats.timed_out += 1;
        }
    }
}

/// The reassembler's counters as the capture summary writes them (`decode.sctp`).
impl From<&SctpStats> for crate::record::SctpCounters {
    fn from(s: &SctpStats) -> Self {
        // Every field named: a counter added here fails to compile until the record (and its
        // schema file) says whether it is written.
        let SctpStats {
            fragments,
            reassembled,
            duplicates,
            timed_out,
            evicted,
            oversized,
        } = *s;
        crate::record::SctpCounters {
            fragments,
            reassembled,
            duplicates,
            timed_out,
            evicted,
            oversized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AssociationKey {
        AssociationKey {
            src: "10.0.0.1:5060".parse().unwrap(),
            dst: "10.0.0.2:5060".parse().unwrap(),
        }
    }

    fn chunk(tsn: u32, begin: bool, end: bool, payload: &[u8]) -> DataChunk<'_> {
        DataChunk {
            tsn,
            stream: 0,
            ssn: 3,
            ppid: 0,
            unordered: false,
            begin,
            end,
            payload,
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_secs_nanos(secs, 0)
    }

    #[test]
    fn reassembles_out_of_order_across_the_tsn_wrap() {
        let mut r = SctpReassembler::new(SctpLimits::default());
        let first = u32::MAX - 1;
        assert_eq!(
            r.add(key(), t(1), &chunk(0, false, true, b"!")),
            Reassembled::Pending
        );
        assert_eq!(
            r.add(key(), t(1), &chunk(first, true, false, b"hel")),
            Reassembled::Pending
        );
        assert_eq!(
            r.add(key(), t(1), &chunk(first, true, false, b"hel")),
            Reassembled::Dropped
        );
        assert_eq!(
            r.add(key(), t(1), &chunk(u32::MAX, false, false, b"lo")),
            Reassembled::Message(b"hello!".to_vec())
        );
        assert_eq!(r.fragments_held(), 0);
        assert_eq!(r.bytes_held(), 0);
        let stats = r.stats();
        assert_eq!((stats.reassembled, stats.duplicates), (1, 1));
    }

    #[test]
    fn bounds_time_bytes_and_message_size() {
        let limits = SctpLimits {
            max_bytes: 4096,
            ..SctpLimits::default()
        };
        let mut r = SctpReassembler::new(limits);
        // Fragments that never complete: the bytes held stay within the bound.
        for tsn in 0..200u32 {
            r.add(key(), t(1), &chunk(tsn * 2, true, false, &[b'x'; 100]));
            assert!(r.bytes_held() <= 4096, "{}", r.bytes_held());
        }
        assert!(r.stats().evicted > 150, "{:?}", r.stats());
        // They time out.
        r.add(key(), t(100), &chunk(5000, true, false, b"a"));
        assert!(r.stats().timed_out > 0);
        assert_eq!(r.fragments_held(), 1);
        // A message longer than the limit is dropped, whatever its fragments.
        let mut r = SctpReassembler::new(SctpLimits::default());
        let big = vec![b'y'; 40_000];
        r.add(key(), t(1), &chunk(10, true, false, &big));
        assert_eq!(
            r.add(key(), t(1), &chunk(11, false, true, &big)),
            Reassembled::Dropped
        );
        assert_eq!(r.stats().oversized, 1);
        assert_eq!(r.bytes_held(), 0);
    }
}
