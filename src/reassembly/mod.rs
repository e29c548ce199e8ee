//! Stateful reassembly between packets and messages: IP fragments, TCP streams, and the
//! framing of SIP (and SIP over WebSocket) on those streams. No I/O; time is capture time.

pub mod ip_fragments;
pub mod sip_stream;
pub mod tcp;
