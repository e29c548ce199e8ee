//! TUF metadata from the fleet repository (the network) on arbitrary bytes: the root, then a
//! file of one role verified against it (parsing, the canonical encoding of `signed`, key
//! and signature decoding, thresholds). Never panics.
//!
//! Input: one byte choosing the role, two bytes (big-endian) giving the root's length, the
//! root's bytes, then the file's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::fleet::tuf::verify_with_root;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (root, file) = rest.split_at(len);
    let role = ["root", "timestamp", "snapshot", "targets"][usize::from(choice % 4)];
    // Parsing, canonical encoding of `signed` and signature checks run on whatever parses.
    let _ = verify_with_root(root, role, file);
});
