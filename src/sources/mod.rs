//! Where frames come from. Each source turns its input into [`crate::dissect::Frame`]s; the
//! decode path after it is the same for all. The exception is [`hep`]: HEP agents capture
//! and reassemble themselves, so the HEP listener hands on decoded HEP frames instead.
//! Contact-centre queue events come from [`queue_log`] (following Asterisk's `queue_log`
//! file across rotation and restarts) and [`callcenter`] (FreeSWITCH `mod_callcenter` over
//! the event socket); they feed [`crate::correlation::queue`], not the packet path.

// The one module allowed to use `unsafe` (in its `ring` and `sys` parts): the AF_PACKET
// socket and its memory-mapped ring.
#[cfg(target_os = "linux")]
pub mod afpacket;
pub mod callcenter;
pub mod capture_file;
#[cfg(target_os = "linux")]
pub mod capture_thread;
pub mod hep;
pub mod queue_log;
