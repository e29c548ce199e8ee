//! Hardware sensors on serial ports. So far: the pure decoder of the Megatec/Q1 UPS protocol
//! and the deviation-alert state machine; device profiles, port handling and records follow
//! (issue 6).

pub mod deviation;
pub mod megatec;
