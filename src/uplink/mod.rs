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
//! "<last id>"}` once every line is written and synced: only then does the agent remove the
//! batch from its spool. `4xx` (other than 408, 409 and 429) is permanent: the agent moves the
//! batch to its bounded dead-letter area and goes on. `409` means the batch would move a
//! sequence backwards within a store epoch (see `collect`): the agent logs an error and keeps
//! the batch. Anything else (connection errors, timeouts, `408`, `409`, `429`, `5xx`) is
//! retried with exponential backoff and full jitter (1 s to 60 s), without limit.

pub mod client;
pub mod tls;

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

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
