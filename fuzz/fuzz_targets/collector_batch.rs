//! What the collector does with a batch body from the network: inflate it (bounded) and
//! parse its lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::collect::parse_batch;
use teledge::uplink::decode_body;

fuzz_target!(|data: &[u8]| {
    let _ = parse_batch("edge-01", data);
    if let Ok(inflated) = decode_body(data, 1 << 20) {
        let _ = parse_batch("edge-01", &inflated);
    }
});
