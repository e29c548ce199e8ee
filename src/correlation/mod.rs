//! Correlation: typed SIP events in, call records out; deterministic, driven by capture time.

pub mod calls;
