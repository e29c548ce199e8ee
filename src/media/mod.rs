//! Media quality: RTP/RTCP decoding, per-stream analysis as Wireshark does it, and the E-model.

pub mod emodel;
pub mod packet;
pub mod stream;
