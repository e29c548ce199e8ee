//! The uplink: records from the spool to the collector over mutual TLS.
//!
//! # Wire format (version 1)
//!
//! `POST <path>` (default `/v1/batches`) over HTTP/1.1 in TLS 1.3 (1.2 only if configured),
//! both sides authenticated by certificates of the site's own CA.
//!
//! Request headers: `content-type: application/x-ndjson`, `content-encoding: gzip`,
//! `x-teledge-node: <node id>` (must equal the CN of the client certificate),
//! `x-teledge-batch: <node>:<epoch>:<first seq>-<last seq>`.
//!
//! Body (gzip): one JSON object per line, `{"id": "<node>:<epoch>:<seq>", "record": {...}}`, in
//! spool order. `id` is the idempotency key: the collector stores each id once.
//!
//! Response `200` with `{"batch": "<batch id>", "accepted": n, "duplicates": n, "through":
//! "<last id>"}` once every line is written and synced: only then, and only if `accepted +
//! duplicates` is the number of lines sent and `through` the last id sent, does the agent
//! remove the batch from its spool.
//!
//! # Batches
//!
//! A batch is sent as soon as records are durable and no batch is in flight: every group
//! commit of the spool wakes the uplink (and it looks again every second), so a lone record
//! goes alone, at once, and never waits for a batch to fill. Records committed while a batch
//! is in flight wait for its answer and then go together, up to the limits below: a busy
//! agent sends large batches, an idle one small ones, with one batch in flight at a time.
//!
//! A batch holds at most `uplink.batch_records` records and `uplink.batch_max_bytes`
//! (default 4 MiB) of uncompressed JSON lines, one record at least: the collector accepts
//! 16 MiB compressed and 64 MiB inflated by default, so a batch within the defaults never
//! meets them. `409` from `teledge collect` means the batch would move a sequence backwards
//! within a store epoch — the spool was restored from a backup or a VM snapshot, or cloned —
//! so retrying the same ids could never succeed: the agent moves every record it holds to a
//! fresh random epoch (new ids, same order, announced by an `epoch_reused` gap record; see
//! `Spool::start_new_epoch`) and sends on. Records of the refused batch the collector did
//! hold may so be stored twice (a duplicate, never a loss). A second `409` before any batch
//! is accepted is a failing collector (below).
//!
//! # What the agent does with each answer
//!
//! - **Refused content — `400` (a line the collector cannot read), `413` (too large), `422`**:
//!   the batch is split in half and the halves sent on (no wait), down to a single record;
//!   past the refused range, batches grow back. Only a *single record* refused with one of
//!   these is moved to the dead-letter area ([`dead_letter`]): sealed, bounded, announced
//!   upstream by a gap record (`reason: "dead_letter"`), resent by `teledge dead-letters
//!   resend`. After [`client::MAX_DEAD_LETTERS_IN_A_ROW`] single records refused in a row
//!   without any batch accepted in between, a refusal is treated as a failing collector
//!   (below) instead: one that refuses everything is broken, not the records.
//! - **Everything else is a failing uplink, never a reason to drop records**: connection
//!   refused or lost, TLS failures (unknown CA, wrong name, expired or refused certificate),
//!   timeouts, an acknowledgement that does not match the batch, and every other status —
//!   `401`/`403` (certificate or node id not accepted), `404`/`405` (wrong URL path), `408`,
//!   `409` (after the new epoch above), `421`, `429`, `5xx`, redirects. The records stay in the spool and the batch is
//!   retried with exponential backoff and full jitter (1 s to 60 s), without limit. The
//!   failure is logged at ERROR once when the uplink starts failing (and again when the kind
//!   of failure changes), at WARN when it works again; counted in
//!   `teledge_uplink_failures_total{kind}`; and `/health` degrades when it has lasted
//!   `observe.uplink_failing_after_s` (see [`crate::observe::health`]). A spool that does
//!   not drain meanwhile is bounded by the spool's own policy (drop oldest or newest,
//!   counted, announced by gap records).

//!
//! # JetStream instead
//!
//! An uplink url `nats://host:port` or `tls://host:port` (with `[uplink.nats]`) sends the
//! same records to a NATS JetStream stream instead, one message per record, each batch
//! removed from the spool once every record of it has its PubAck: the same forwarder, the
//! same splitting, dead letters, backoff, alerts and counters; see [`nats`].

pub mod client;
pub mod dead_letter;
pub mod forwarding;
pub mod nats;
pub mod tls;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest node id (it is a directory name at the collector and a certificate CN).
pub const MAX_NODE_ID: usize = 64;

/// Whether `id` may name a node: 1 to [`MAX_NODE_ID`] characters of `[A-Za-z0-9._-]`, not
/// `.` nor `..`. The one rule: the agent's configuration checks it, the collector refuses a
/// certificate whose common name breaks it (it becomes a directory name there).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What the uplink needs to know, validated (the configuration's `[uplink]` section builds it,
/// see [`crate::config`]).
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub tls12_allowed: bool,
    pub batch_records: usize,
    /// Most uncompressed bytes of JSON lines in one batch (a larger single record is sent
    /// alone). Below the collector's 256 MiB inflate and 64 MiB body limits.
    pub batch_max_bytes: usize,
    /// gzip level of a batch body, 0 (stored, no compression) to 9 (`uplink.compression_level`,
    /// default [`DEFAULT_COMPRESSION_LEVEL`]).
    pub compression_level: u32,
    pub timeout: Duration,
    pub dead_letter_dir: PathBuf,
    pub dead_letter_max_bytes: u64,
    /// Publish to NATS JetStream instead of POSTing to the HTTPS collector (a `nats://` or
    /// `tls://` uplink url, see [`nats`]); `None`: the HTTPS collector at `host:port/path`.
    pub nats: Option<NatsSettings>,
}

/// The JetStream sink's settings (`[uplink.nats]` with a `nats://`/`tls://` uplink url):
/// where to publish and how to authenticate. TLS (the site CA, the node's certificate) and
/// the acknowledgement timeout are the uplink's. Only file paths: no secret is held here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server URLs, the uplink url first (`nats://` or `tls://`; TLS is always required).
    pub servers: Vec<String>,
    /// Subjects are `<prefix>.<node>.<kind>`.
    pub subject_prefix: String,
    /// The stream the records must land in (`Nats-Expected-Stream`), or any.
    pub stream: Option<String>,
    /// Most publishes awaiting their acknowledgement at once.
    pub max_in_flight: usize,
    pub auth: NatsAuth,
}

/// How the agent (or the collector) proves who it is to NATS, besides its certificate.
/// Secrets stay in their files until the connection is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// The client certificate only (a server with `verify_and_map`, or no authorization).
    Certificate,
    /// A user name and a password read from a file (its first line).
    UserPassword {
        user: String,
        password_file: PathBuf,
    },
    /// An nkey seed (`SU…`) read from a file.
    Nkey { seed_file: PathBuf },
    /// A `.creds` file (user JWT and nkey seed), as `nsc` writes it.
    Credentials { file: PathBuf },
}

/// gzip level of batch bodies unless `uplink.compression_level` says otherwise: level 1
/// (zlib-rs' quick deflate) compressed call records ~4:1 at a fraction of the CPU of the
/// higher levels; measured in `scripts/bench-uplink.sh` (README, uplink figures).
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 1;

/// One line of a batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchLine {
    pub id: String,
    pub record: Box<serde_json::value::RawValue>,
}

/// The collector's acknowledgement.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ack {
    pub batch: String,
    pub accepted: u64,
    pub duplicates: u64,
    pub through: String,
}

/// Gzips newline-separated JSON lines.
pub fn encode_lines(lines: &[Vec<u8>]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for line in lines {
        gz.write_all(line)?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

/// Gunzips a body, refusing to inflate beyond `limit` bytes (a zip bomb is not a batch).
pub fn decode_body(body: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "batch inflates beyond the limit",
        ));
    }
    Ok(out)
}
