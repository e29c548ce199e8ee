//! `teledge collect`: the receiving end of the uplink, small and real.
//!
//! It listens with rustls and requires a client certificate from the site CA; the
//! certificate's common name is the node id. A batch must claim that node (header and every
//! record id), duplicates are dropped by record id, new records are appended to
//! `<out>/<node>/<YYYY-MM-DD>.jsonl` and synced, and only then is the batch acknowledged.
//!
//! Deduplication keeps one watermark per node and store epoch, not every id: an agent sends
//! each epoch's records in sequence order and re-sends only what was not acknowledged, so a
//! record at or below the highest sequence stored for its node and epoch is a duplicate.
//! Memory is bounded by nodes × epochs, whatever the volume. The watermarks are re-read from
//! the output files at start, so deduplication survives restarts.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::uplink::tls::{node_of_certificate, server_config, TlsError};
use crate::uplink::{decode_body, Ack, BatchLine};

/// Largest compressed batch accepted.
const MAX_BODY: usize = 64 << 20;
/// Largest inflated batch accepted.
const MAX_INFLATED: u64 = 256 << 20;

/// Collector settings.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    pub listen: SocketAddr,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub out_dir: PathBuf,
    pub tls12_allowed: bool,
}

#[derive(Debug)]
struct State {
    out_dir: PathBuf,
    /// Highest sequence stored per (node, store epoch).
    stored_through: HashMap<(String, u64), u64>,
}

/// Why the collector stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the collector until the process ends. Prints the bound address on stdout first
/// (`listening <addr>`), so a caller that asked for port 0 learns the port.
pub async fn run(config: CollectConfig) -> Result<(), CollectError> {
    let tls = server_config(
        &config.ca_file,
        &config.cert_file,
        &config.key_file,
        config.tls12_allowed,
    )?;
    std::fs::create_dir_all(&config.out_dir)?;
    let stored_through = load_watermarks(&config.out_dir)?;
    tracing::info!(
        node_epochs = stored_through.len(),
        "Collector state loaded."
    );
    let state = Arc::new(Mutex::new(State {
        out_dir: config.out_dir.clone(),
        stored_through,
    }));
    let listener = TcpListener::bind(config.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "TLS handshake refused.");
                        return;
                    }
                    Err(_) => return,
                };
            let node = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(node_of_certificate);
            let Some(node) = node else {
                tracing::warn!(%peer, "Client certificate names no node.");
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let node = node.clone();
                async move { Ok::<_, hyper::Error>(handle(req, &node, &state).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "Connection ended.");
            }
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn handle(req: Request<Incoming>, node: &str, state: &Mutex<State>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/batches" {
        return reply(StatusCode::NOT_FOUND, "not found");
    }
    let claimed = req
        .headers()
        .get("x-teledge-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if claimed != node {
        return reply(
            StatusCode::FORBIDDEN,
            format!("certificate is for node {node:?}"),
        );
    }
    let batch = req
        .headers()
        .get("x-teledge-batch")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "batch too large"),
    };
    let inflated = match decode_body(&body, MAX_INFLATED) {
        Ok(b) => b,
        Err(e) => return reply(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let lines = match parse_batch(node, &inflated) {
        Ok(lines) => lines,
        Err(BatchError::Malformed(m)) => return reply(StatusCode::BAD_REQUEST, m),
        Err(BatchError::OtherNode(m)) => return reply(StatusCode::FORBIDDEN, m),
    };
    let Some(through) = lines.last().map(|l| l.id.clone()) else {
        return reply(StatusCode::BAD_REQUEST, "empty batch");
    };
    // Write and sync under the lock: a watermark moves only once the records are on disk.
    let result = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        store(&mut state, node, &lines)
    };
    match result {
        Ok((accepted, duplicates)) => {
            let ack = Ack {
                batch,
                accepted,
                duplicates,
                through,
            };
            let body = serde_json::to_vec(&ack).unwrap_or_default();
            reply(StatusCode::OK, body)
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot store a batch; not acknowledged.");
            reply(StatusCode::SERVICE_UNAVAILABLE, "storage failure")
        }
    }
}

/// Why a batch body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchError {
    Malformed(String),
    /// A record claims another node than the certificate's.
    OtherNode(String),
}

/// Parses an inflated batch body; every record must belong to `node`. Pure, for fuzzing.
pub fn parse_batch(node: &str, inflated: &[u8]) -> Result<Vec<BatchLine>, BatchError> {
    let prefix = format!("{node}:");
    let mut lines = Vec::new();
    for (n, line) in inflated.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let parsed: BatchLine = serde_json::from_slice(line)
            .map_err(|e| BatchError::Malformed(format!("line {}: {e}", n + 1)))?;
        if !parsed.id.starts_with(&prefix) || epoch_and_seq(&parsed.id).is_none() {
            return Err(BatchError::OtherNode(format!(
                "record {} is not an id of node {node} (node:epoch:seq)",
                parsed.id
            )));
        }
        lines.push(parsed);
    }
    Ok(lines)
}

fn store(state: &mut State, node: &str, lines: &[BatchLine]) -> std::io::Result<(u64, u64)> {
    let mut fresh: Vec<&BatchLine> = Vec::new();
    // Watermarks as they will be once this batch is stored.
    let mut through: HashMap<(String, u64), u64> = HashMap::new();
    for line in lines {
        // parse_batch checked the node prefix; the rest is `epoch:seq`.
        let Some((epoch, seq)) = epoch_and_seq(&line.id) else {
            continue;
        };
        let key = (node.to_owned(), epoch);
        let stored = through
            .get(&key)
            .or_else(|| state.stored_through.get(&key))
            .copied();
        if stored.is_none_or(|s| seq > s) {
            through.insert(key, seq);
            fresh.push(line);
        }
    }
    let duplicates = (lines.len() - fresh.len()) as u64;
    if fresh.is_empty() {
        return Ok((0, duplicates));
    }
    let day = humantime::format_rfc3339(SystemTime::now()).to_string();
    let dir = state.out_dir.join(node);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.jsonl", &day[..10]));
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut buf = Vec::new();
    for line in &fresh {
        serde_json::to_writer(&mut buf, line)?;
        buf.push(b'\n');
    }
    file.write_all(&buf)?;
    file.sync_data()?;
    state.stored_through.extend(through);
    Ok((fresh.len() as u64, duplicates))
}

/// `(epoch, seq)` of a record id `node:epoch:seq`.
fn epoch_and_seq(id: &str) -> Option<(u64, u64)> {
    let mut parts = id.rsplitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((epoch, seq))
}

/// The highest sequence stored per node and epoch, from the output files.
fn load_watermarks(out_dir: &Path) -> std::io::Result<HashMap<(String, u64), u64>> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: String,
    }
    let mut through: HashMap<(String, u64), u64> = HashMap::new();
    for node_dir in std::fs::read_dir(out_dir)? {
        let node_dir = node_dir?.path();
        let Some(node) = node_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
        else {
            continue;
        };
        if !node_dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&node_dir)? {
            let path = file?.path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                for line in std::io::BufReader::new(File::open(&path)?).lines() {
                    // A torn last line (a crash mid-write) was never acknowledged: skip it.
                    let Ok(IdOnly { id }) = serde_json::from_str(&line?) else {
                        continue;
                    };
                    if let Some((epoch, seq)) = epoch_and_seq(&id) {
                        let max = through.entry((node.clone(), epoch)).or_insert(seq);
                        *max = (*max).max(seq);
                    }
                }
            }
        }
    }
    Ok(through)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(ids: &[&str]) -> Vec<BatchLine> {
        ids.iter()
            .map(|id| {
                serde_json::from_str(&format!(r#"{{"id":"{id}","record":{{"n":1}}}}"#)).unwrap()
            })
            .collect()
    }

    #[test]
    fn watermarks_drop_resent_records_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State {
            out_dir: dir.path().to_owned(),
            stored_through: HashMap::new(),
        };
        assert_eq!(
            store(&mut state, "n1", &lines(&["n1:0:0", "n1:0:1"])).unwrap(),
            (2, 0)
        );
        // A lost acknowledgement: the agent sends the batch again with one more record.
        assert_eq!(
            store(&mut state, "n1", &lines(&["n1:0:0", "n1:0:1", "n1:0:2"])).unwrap(),
            (1, 2)
        );
        // A new epoch (the agent's store was quarantined) starts again at 0.
        assert_eq!(
            store(&mut state, "n1", &lines(&["n1:3:0"])).unwrap(),
            (1, 0)
        );
        // After a restart the watermarks come back from the files.
        let reloaded = load_watermarks(dir.path()).unwrap();
        assert_eq!(reloaded.get(&("n1".to_owned(), 0)), Some(&2));
        assert_eq!(reloaded.get(&("n1".to_owned(), 3)), Some(&0));
        let mut state = State {
            out_dir: dir.path().to_owned(),
            stored_through: reloaded,
        };
        assert_eq!(
            store(&mut state, "n1", &lines(&["n1:0:2", "n1:0:3"])).unwrap(),
            (1, 1)
        );
    }

    #[test]
    fn ids_must_be_node_epoch_seq() {
        assert!(parse_batch("n1", br#"{"id":"n1:x","record":{}}"#).is_err());
        assert!(parse_batch("n1", br#"{"id":"n2:0:1","record":{}}"#).is_err());
        assert_eq!(
            parse_batch("n1", br#"{"id":"n1:0:1","record":{}}"#)
                .unwrap()
                .len(),
            1
        );
    }
}
