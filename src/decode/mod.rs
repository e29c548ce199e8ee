//! Pure decoders: bytes in, typed values out. No I/O, no tokio, no panics on any input.

pub mod link;
pub mod sdp;
pub mod sip;
pub mod tunnel;
pub mod websocket;
