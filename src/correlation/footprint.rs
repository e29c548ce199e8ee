//! What an entry of a correlation table really costs: each allocation as the allocator
//! takes it ([`heap`]) and a table slot with its growth slack ([`table_share`]). The call
//! table ([`super::calls`]) and the media tracker ([`super::media`]) count their byte bounds
//! with these, so that "at most N bytes" is what the process holds, not what it asked for.
//!
//! Measured against DHAT on an INVITE flood (2026-12-03): counting the bytes asked for,
//! the call table held a fifth more than its bound said; counted with these, its peak
//! follows the bound.

/// What the allocator takes for a request of `bytes`: glibc's malloc adds a one-word header,
/// rounds up to two words and takes at least four (32 bytes on 64-bit, 16 on 32-bit); no
/// request, nothing. A call or an endpoint is many small allocations, and their headers and
/// rounding were a fifth of what the call table really held (2026-12-03, DHAT of an INVITE
/// flood).
pub(crate) const fn heap(bytes: usize) -> usize {
    const WORD: usize = std::mem::size_of::<usize>();
    if bytes == 0 {
        return 0;
    }
    let chunk = (bytes + WORD).next_multiple_of(2 * WORD);
    if chunk < 4 * WORD {
        4 * WORD
    } else {
        chunk
    }
}

/// The share of a table's allocation one entry of `slot` bytes costs at worst: a hash table
/// (or a ring buffer, or a vector) grows by doubling, so just after it grew half its slots
/// are empty, and hashbrown fills at most 7/8 of its buckets and keeps a control byte for
/// each.
pub(crate) const fn table_share(slot: usize) -> usize {
    2 * (slot + 1) * 8 / 7
}

/// What an `Arc<str>` of `len` bytes takes: its two counts and the text, in one allocation.
pub(crate) const fn arc_str(len: usize) -> usize {
    heap(2 * std::mem::size_of::<usize>() + len)
}

/// What a vector's buffer takes: its capacity of `T`, as the allocator takes it.
pub(crate) fn vec<T>(v: &Vec<T>) -> usize {
    heap(v.capacity() * std::mem::size_of::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_s_share_is_accounted() {
        // glibc's chunks: a word of header, two-word alignment, four words at least.
        let word = std::mem::size_of::<usize>();
        assert_eq!(heap(0), 0);
        assert_eq!(heap(1), 4 * word);
        assert_eq!(heap(3 * word), 4 * word);
        assert_eq!(heap(3 * word + 1), 6 * word);
        assert_eq!(heap(200), (200 + word).next_multiple_of(2 * word));
        assert_eq!(arc_str(0), 4 * word);
        assert_eq!(vec(&Vec::<u64>::with_capacity(8)), heap(64));
        // A slot of a table that just doubled, with hashbrown's control byte and load.
        assert!(table_share(64) >= 2 * 64);
    }
}
