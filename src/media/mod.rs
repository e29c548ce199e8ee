//! Media quality: RTP/RTCP decoding, per-stream analysis as Wireshark does it, and the E-model.
//! [`tap`] hands the RTP of listened calls to live listen; [`g711`] decodes and mixes it.

pub mod emodel;
pub mod g711;
pub mod packet;
pub mod stream;
pub mod tap;
