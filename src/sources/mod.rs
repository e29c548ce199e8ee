//! Where frames come from. Each source turns its input into [`crate::dissect::Frame`]s; the
//! decode path after it is the same for all.

pub mod capture_file;
