//! Hardware sensors on serial ports. So far: the pure decoder of the Megatec/Q1 UPS protocol;
//! device profiles, port handling, alerts and records follow (issue 6).

pub mod megatec;
