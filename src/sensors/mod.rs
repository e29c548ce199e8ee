//! Hardware sensors on serial ports: UPSes (Megatec/Q1, APC Smart), Modbus RTU transmitters
//! (temperature/humidity, CO2, any register map) and ASCII line sensors (key=value, NMEA).
//!
//! - pure decoders: [`megatec`], [`apc`], [`ascii`], register decoding in [`profile`];
//! - [`profile`]: device profiles from `firmware-config/`, validated;
//! - [`deviation`]: the alert state machine (start, end, duration, hysteresis);
//! - [`serial`] (tokio-serial) and [`modbus`] (tokio-modbus): the outside dependencies;
//! - [`session`]: one conversation with a device over an open port;
//! - [`device`]: the task per device: polling, reopening, records and alerts;
//! - [`discover`]: serial ports of this machine with their USB ids.

pub mod apc;
pub mod ascii;
pub mod deviation;
pub mod device;
pub mod discover;
pub mod megatec;
pub mod modbus;
pub mod profile;
pub mod serial;
pub mod session;
