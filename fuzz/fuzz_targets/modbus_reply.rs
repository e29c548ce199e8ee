//! What teledge makes of the bytes of an unanswered Modbus RTU request (bad CRC, garbage),
//! and register decoding of whatever registers a device returns.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use teledge::sensors::modbus::classify_silence;
use teledge::sensors::profile::{decode_registers, ByteOrder, DataType};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let _ = classify_silence(&data[2..], data[0], data[1], Duration::from_millis(1));
    let registers: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    for data_type in [DataType::I16, DataType::U16, DataType::I32, DataType::U32, DataType::F32] {
        for order in [ByteOrder::Big, ByteOrder::Little, ByteOrder::BigSwap, ByteOrder::LittleSwap] {
            let _ = decode_registers(&registers, data_type, order, 0.1);
        }
    }
});
