//! Hardware sensors on serial ports. So far: pure decoders of the Megatec/Q1 and APC Smart UPS
//! protocols and of ASCII line sensors (key=value, NMEA), and the deviation-alert state machine; device profiles, port handling and records follow
//! (issue 6).

pub mod apc;
pub mod ascii;
pub mod deviation;
pub mod megatec;
pub mod profile;
