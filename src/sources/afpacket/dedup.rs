//! The frames a replaced ring handed on while its successor was already taking frames: a
//! bounded set of fingerprints, so the successor skips exactly those copies.
//!
//! A fingerprint is the kernel's timestamp (one per frame, shared by every socket that takes
//! it: see `LiveCapture::open_held`), the length on the wire and a 64-bit hash of the bytes
//! captured. Two different frames with one fingerprint would need the same nanosecond, the
//! same length and colliding hashes. The set holds at most its capacity; a fingerprint past
//! it is not remembered and counted in [`Fingerprints::overflowed`], and its copy in the new
//! ring would then be handed on twice: the capacity is sized for the old ring's whole
//! content, so that needs a reader slower than its ring by more than the ring.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use super::walk::LivePacket;

/// What tells one captured frame from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub time_ns: i64,
    pub original_len: u32,
    pub bytes_hash: u64,
}

impl Fingerprint {
    pub fn of(packet: &LivePacket<'_>) -> Self {
        // SipHash with fixed keys: the same bytes hash alike in both rings.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        packet.data.hash(&mut hasher);
        Fingerprint {
            time_ns: packet.time.as_nanos(),
            original_len: packet.original_len,
            bytes_hash: hasher.finish(),
        }
    }
}

/// A bounded set of fingerprints, each taken out when its copy is seen.
#[derive(Debug, Default)]
pub struct Fingerprints {
    set: HashSet<Fingerprint>,
    capacity: usize,
    /// The latest timestamp remembered: a frame of the new ring later than it (by more than
    /// the kernel's reordering across CPUs) is past every copy.
    latest_ns: i64,
    overflowed: u64,
}

impl Fingerprints {
    pub fn with_capacity(capacity: usize) -> Self {
        Fingerprints {
            set: HashSet::new(),
            capacity,
            latest_ns: i64::MIN,
            overflowed: 0,
        }
    }

    /// Remembers a frame handed on from the old ring; false (and counted) when full.
    pub fn remember(&mut self, fingerprint: Fingerprint) -> bool {
        self.latest_ns = self.latest_ns.max(fingerprint.time_ns);
        if self.set.len() >= self.capacity {
            self.overflowed += 1;
            return false;
        }
        self.set.insert(fingerprint);
        true
    }

    /// True when the frame was remembered (a copy already handed on): it is forgotten, since
    /// a ring holds a frame once.
    pub fn take(&mut self, fingerprint: &Fingerprint) -> bool {
        self.set.remove(fingerprint)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The latest timestamp remembered (`i64::MIN` before any).
    pub fn latest_ns(&self) -> i64 {
        self.latest_ns
    }

    /// Fingerprints not remembered because the set was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::link::LinkType;
    use crate::time::Timestamp;

    fn packet(time_ns: i64, data: &[u8]) -> LivePacket<'_> {
        LivePacket {
            time: Timestamp::from_nanos(time_ns),
            data,
            original_len: data.len() as u32,
            link: LinkType::Ethernet,
            outgoing: false,
        }
    }

    #[test]
    fn a_remembered_frame_is_taken_once_and_others_pass() {
        let mut seen = Fingerprints::with_capacity(8);
        assert!(seen.remember(Fingerprint::of(&packet(10, b"abc"))));
        assert!(seen.remember(Fingerprint::of(&packet(11, b"abd"))));
        assert_eq!(seen.latest_ns(), 11);
        // Same bytes at another time (a SIP retransmission), other bytes at the same time:
        // different frames.
        assert!(!seen.take(&Fingerprint::of(&packet(12, b"abc"))));
        assert!(!seen.take(&Fingerprint::of(&packet(10, b"abd"))));
        assert!(seen.take(&Fingerprint::of(&packet(10, b"abc"))));
        assert!(!seen.take(&Fingerprint::of(&packet(10, b"abc"))));
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn the_set_is_bounded_and_counts_what_it_could_not_hold() {
        let mut seen = Fingerprints::with_capacity(3);
        for t in 0..5 {
            seen.remember(Fingerprint::of(&packet(t, b"x")));
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen.overflowed(), 2);
        assert_eq!(seen.latest_ns(), 4);
        assert!(seen.take(&Fingerprint::of(&packet(2, b"x"))));
        assert!(!seen.take(&Fingerprint::of(&packet(4, b"x"))));
    }
}
