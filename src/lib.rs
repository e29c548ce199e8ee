//! teledge: the contact-centre telephony edge agent.
//!
//! A map of the code, in pipeline order (sources → decode → correlation → records → outputs):
//!
//! - [`sources`]: where frames come from (capture files, live capture on Linux; HEP later).
//! - [`dissect`]: the decode path shared by every source: link layer, IP with fragment
//!   reassembly, tunnels, UDP/TCP with stream reassembly, SIP recognised by content.
//! - [`decode`]: pure decoders without I/O (SIP, SDP, link layers, tunnels, WebSocket frames).
//! - [`reassembly`]: bounded, stateful reassembly (IP fragments, TCP streams, SIP framing).
//! - [`correlation`]: call tracking, from SIP messages to call records.
//! - [`record`]: the record types and their documented, versioned schema.
//! - [`outputs`]: JSON Lines and tables.
//! - [`replay`]: `teledge replay`, the pipeline over capture files.
//! - [`privacy`]: pseudonymisation of numbers and names before storage.
//! - [`seal`]: sealing records at rest (XChaCha20-Poly1305 keyring).
//! - [`spool`]: the store-and-forward queue in sled.
//! - [`uplink`]: batches to the collector over mutual TLS; [`collect`] is the receiving end.
//! - [`config`]: configuration, raw TOML to validated, every problem listed.
//! - [`time`]: capture timestamps.
//!
//! Unsafe code is denied everywhere except [`sources::afpacket`], which owns the AF_PACKET
//! socket and its memory-mapped ring; every `unsafe` block there carries a `SAFETY:` comment.
#![deny(unsafe_code)]

pub mod collect;
pub mod config;
pub mod correlation;
pub mod decode;
pub mod dissect;
pub mod media;
pub mod outputs;
pub mod privacy;
pub mod reassembly;
pub mod record;
pub mod replay;
pub mod seal;
pub mod sensors;
pub mod sources;
pub mod spool;
pub mod time;
pub mod uplink;
