//! Where frames come from. Each source turns its input into [`crate::dissect::Frame`]s; the
//! decode path after it is the same for all. The exception is [`hep`]: HEP agents capture
//! and reassemble themselves, so the HEP listener hands on decoded HEP frames instead.

pub mod capture_file;
pub mod hep;
