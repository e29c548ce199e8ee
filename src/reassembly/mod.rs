//! Stateful reassembly between packets and messages: IP fragments, TCP streams, the framing
//! of SIP (and SIP over WebSocket) on those streams, and fragmented SCTP user messages. No
//! I/O; time is capture time. Every pool reports the bytes it holds and accepts a lowered
//! bound, so the decode path keeps them all within one memory budget.

pub mod ip_fragments;
pub mod sctp;
pub mod sip_stream;
pub mod tcp;
