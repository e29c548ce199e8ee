//! teledge: the contact-centre telephony edge agent.
//!
//! A packet's way to the collector, one module at each step:
//!
//! 1. It **enters** in [`sources`]: a capture file, the AF_PACKET ring, or the HEP listener.
//! 2. Its **call is decided** in [`correlation`] (the call state machine in
//!    `correlation::calls`: answered, abandoned, busy, rejected, ...), fed by the
//!    [`pipeline`] after [`dissect`] has decoded the packet.
//! 3. The call's record **becomes durable** in [`spooler`]: pseudonymised, appended to the
//!    [`spool`] and group-committed (one fsync for many records); only then may it leave.
//! 4. It **leaves** through [`uplink`]: batches over mutual TLS, removed from the spool once
//!    the collector ([`collect`]) has acknowledged them.
//!
//! A map of the code, in pipeline order (sources → decode → correlation → records → outputs):
//!
//! - [`sources`]: where frames come from: capture files, live capture on Linux (AF_PACKET),
//!   the HEPv3 listener.
//! - [`dissect`]: the decode path shared by every source: link layer, IP with fragment
//!   reassembly, tunnels, UDP/TCP/SCTP with stream and message reassembly, SIP recognised by
//!   content, all reassembly within one memory budget.
//! - [`decode`]: pure decoders without I/O (SIP, SDP, link layers, tunnels, WebSocket frames,
//!   SCTP chunks).
//! - [`reassembly`]: bounded, stateful reassembly (IP fragments, TCP streams, SIP framing,
//!   SCTP user messages).
//! - [`correlation`]: call tracking, from SIP messages to call records; sharded by call for
//!   the daemon's capture threads (`correlation::sharded`).
//! - [`pipeline`]: decode and correlation together, the one path from frames to records that
//!   `replay`, `replay --forward` and `run` share.
//! - [`record`]: the record types and their documented, versioned schema (a leaf; the
//!   JSON Schema files in `schema/` list every field).
//! - [`stats`]: service statistics — calls classified into services, contact facts, KPI
//!   sums per interval (`teledge.interval/1`), merged exactly across nodes.
//! - [`outputs`]: JSON Lines and tables.
//! - [`relay`]: the HEP relay — SIP, RTCP and stream reports forwarded to a HOMER server as
//!   HEPv3 over UDP, TCP or TLS, from a bounded queue (`[hep_out]`, `replay --hep-out`).
//! - [`replay`]: `teledge replay`, the pipeline over capture files.
//! - [`privacy`]: pseudonymisation of numbers and names before storage.
//! - [`seal`]: sealing records at rest (XChaCha20-Poly1305 keyring).
//! - [`spooler`]: records into the spool: pseudonymise, serialise, append, group commit.
//! - [`spool`]: the store-and-forward queue in sled.
//! - [`uplink`]: batches to the collector over mutual TLS; [`collect`] is the receiving end.
//!   Or records to NATS JetStream ([`uplink::nats`]), which `collect` can also publish into;
//!   [`bus`] reads such a stream back into the collector's files.
//! - [`fleet`]: signed updates of packages and configuration (a TUF client), installed by a
//!   privileged one-shot unit and rolled back when the new version is not healthy; and the
//!   fleet owner's side (`teledge fleet`: keys, signed releases, rollouts, progress).
//! - [`listen`]: live listen to a call in the browser (WHEP over webrtc-rs; feature
//!   `listen`), fed by the media tap ([`media::tap`]).
//! - [`access`]: who may see the status page and listen to which service's calls
//!   (supervisor tokens, session cookies, client certificates), and the audit records of
//!   what they did (`teledge.audit/1`).
//! - [`observe`]: metrics (`/metrics`), health (`/health`), systemd notify and watchdog.
//! - [`secret`], [`backoff`], [`log_limit`], [`report`], [`server_url`], [`durable`],
//!   [`admission`]: small leaves (a value `Debug` never shows, retry waits, flood control for
//!   log lines, an error told with its causes once, a server's URL or `host:port` parsed by
//!   `http::Uri`, a file replaced so that a power cut leaves the old content or the new, a
//!   listener's per-address share of connections and its bound on peers that read nothing).
//!   Named internal events ([`observe::events`]) log and count a loss in one place.
//! - [`config`]: configuration, raw TOML to validated, every problem listed ([`config_problem`],
//!   a leaf the sensor profiles share): the forwarding
//!   sections ([`config::forward`]) and the daemon's ([`config::agent`]).
//! - [`daemon`]: `teledge run`, sources → pipeline → spooler → uplink as components under one
//!   cancellation token, with a designed shutdown; drivable in-process ([`daemon::Daemon`]).
//! - [`sensors`]: UPS, climate, CO2 and line sensors on serial ports; sensor and alert records.
//! - [`time`]: capture timestamps.
//!
//! Unsafe code is denied everywhere except two parts of [`sources::afpacket`], its system
//! calls (`sys`) and its memory-mapped ring (`ring`); every `unsafe` block there carries a
//! `SAFETY:` comment.
#![deny(unsafe_code)]

pub mod access;
pub mod admission;
pub mod backoff;
pub(crate) mod bounded;
pub mod bus;
pub mod collect;
pub mod config;
pub mod config_problem;
pub mod correlation;
pub mod daemon;
pub mod decode;
pub mod dissect;
pub mod durable;
pub mod fleet;
pub mod listen;
pub mod log_limit;
pub mod media;
pub mod observe;
pub mod outputs;
pub mod panics;
pub mod pipeline;
pub mod pki;
pub mod privacy;
pub mod reassembly;
pub mod record;
pub mod relay;
pub mod replay;
pub mod report;
pub mod seal;
pub mod secret;
pub mod sensors;
pub mod server_url;
pub mod sources;
pub mod spool;
pub mod spooler;
pub mod stats;
#[cfg(test)]
mod testing;
pub mod time;
pub mod uplink;
