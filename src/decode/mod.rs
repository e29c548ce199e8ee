//! Pure decoders: bytes in, typed values out. No I/O, no tokio, no panics on any input.
//!
//! [`hep`] decodes HEPv3 frames (the capture protocol of HOMER agents and PBXs); [`sctp`] the
//! SCTP common header and chunks, for SIP over SCTP; [`queue_log`] Asterisk `queue_log` lines and
//! [`esl`] FreeSWITCH event-socket messages (contact-centre queue events); [`turn`] the framing
//! of media relayed by a TURN server (recognised to be counted, not measured).

pub mod esl;
pub mod hep;
pub mod link;
pub mod queue_log;
pub mod sctp;
pub mod sdp;
pub mod sip;
pub mod tunnel;
pub mod turn;
pub mod websocket;
