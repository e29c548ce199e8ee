//! Where frames come from. Each source turns its input into [`crate::dissect::Frame`]s; the
//! decode path after it is the same for all.

// The one module allowed to use `unsafe`: the AF_PACKET socket and its memory-mapped ring.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub mod afpacket;
pub mod capture_file;
