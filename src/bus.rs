//! `teledge collect --from-nats`: the round trip back from the bus. A durable JetStream pull
//! consumer (explicit acknowledgement) reads the stream that agents or collectors publish
//! into (see [`crate::uplink::nats`]) and writes the collector's own files
//! (`<out>/<node>/<day>.jsonl`, [`crate::collect::Files`]): the same lines, the same
//! deduplication by record id and content, the same refusal of a sequence that goes
//! backwards in an epoch.
//!
//! A message is acknowledged only after its line is written and synced (or found already
//! held: a redelivery). One that is not a batch line of a valid node id, or whose record
//! would move its node's sequence backwards, is terminated (`AckKind::Term`: never
//! redelivered), logged at ERROR and counted in [`ConsumeStats::refused`]. A write that
//! fails (full disk) is negatively acknowledged and retried after a second. The consumer's
//! subject filter is `<prefix>.>`; JetStream redelivers whatever was not acknowledged within
//! `ack_wait` (30 s), after a restart too, since the consumer is durable.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use serde::Serialize;

use crate::collect::{connect_bus, BusConfig, CollectError, Files, FilesError};
use crate::uplink::BatchLine;

/// What `collect --from-nats` reads and where it writes.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// The stream (`bus.nats.stream`, required) and how to reach it.
    pub bus: BusConfig,
    /// The durable consumer's name: its position survives restarts.
    pub durable: String,
    pub out_dir: std::path::PathBuf,
    pub stamp: bool,
    /// Most messages fetched at once.
    pub batch: usize,
    /// Stop once nothing arrived for this long (scripts and tests); `None`: run forever.
    pub idle_exit: Option<Duration>,
}

/// What the consumer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConsumeStats {
    pub messages: u64,
    /// Lines new to the files.
    pub stored: u64,
    /// Lines the files already held (redeliveries, records the stream holds twice).
    pub duplicates: u64,
    /// Messages terminated: not a line of a valid node, or a sequence regression.
    pub refused: u64,
    /// Writes that failed and were retried.
    pub storage_failures: u64,
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error("--nats-stream is required to read from NATS")]
    NoStream,
    #[error("JetStream {what}")]
    JetStream {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn jetstream(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> ConsumeError {
    let what = what.into();
    move |source| ConsumeError::JetStream { what, source }
}

/// Reads the stream into the files until `idle_exit` (if any) passes without a message.
pub async fn consume(config: ConsumeConfig) -> Result<ConsumeStats, ConsumeError> {
    let name = config
        .bus
        .nats
        .stream
        .clone()
        .ok_or(ConsumeError::NoStream)?;
    let publisher = connect_bus(&config.bus, 1).await?;
    let js = publisher.context();
    let stream = js
        .get_stream(&name)
        .await
        .map_err(|e| jetstream(format!("stream {name}"))(e.into()))?;
    let consumer = stream
        .get_or_create_consumer(
            &config.durable,
            pull::Config {
                durable_name: Some(config.durable.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                filter_subject: format!("{}.>", config.bus.nats.subject_prefix),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| jetstream(format!("consumer {}", config.durable))(e.into()))?;
    let mut files = Files::open(&config.out_dir, config.stamp)?;
    tracing::info!(stream = %name, durable = %config.durable, out = %config.out_dir.display(), "Reading the stream into files.");
    let mut stats = ConsumeStats::default();
    let mut last_message = Instant::now();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(config.batch.max(1))
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| jetstream("fetch")(e.into()))?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            match message {
                Ok(m) => messages.push(m),
                Err(e) => {
                    tracing::warn!(error = %crate::report::Chain(&*e), "Fetch ended early.");
                    break;
                }
            }
        }
        if messages.is_empty() {
            if config
                .idle_exit
                .is_some_and(|d| last_message.elapsed() >= d)
            {
                // Acknowledgements are written before the connection goes.
                let _ = js.client().flush().await;
                return Ok(stats);
            }
            continue;
        }
        last_message = Instant::now();
        stats.messages += messages.len() as u64;
        // Consecutive messages of one node go to its files in one write.
        let mut group: Vec<(async_nats::jetstream::Message, BatchLine)> = Vec::new();
        let mut group_node = String::new();
        for message in messages {
            let line = serde_json::from_slice::<BatchLine>(&message.payload)
                .ok()
                .and_then(|l| {
                    let node = crate::collect::node_of_id(&l.id)?.to_owned();
                    Some((node, l))
                });
            let Some((node, line)) = line else {
                stats.refused += 1;
                tracing::error!(subject = %message.subject, "Message is not a batch line of a valid node; terminated.");
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            };
            if node != group_node && !group.is_empty() {
                store_group(
                    &mut files,
                    &group_node,
                    std::mem::take(&mut group),
                    &mut stats,
                )
                .await;
            }
            group_node = node;
            group.push((message, line));
        }
        if !group.is_empty() {
            store_group(&mut files, &group_node, group, &mut stats).await;
        }
    }
}

/// Stores one node's consecutive lines and acknowledges their messages; on a regression,
/// line by line, terminating only the lines at fault.
async fn store_group(
    files: &mut Files,
    node: &str,
    group: Vec<(async_nats::jetstream::Message, BatchLine)>,
    stats: &mut ConsumeStats,
) {
    let lines: Vec<BatchLine> = group
        .iter()
        .map(|(_, l)| BatchLine {
            id: l.id.clone(),
            record: l.record.clone(),
        })
        .collect();
    match files.store(node, &lines) {
        Ok((new, duplicates)) => {
            stats.stored += new;
            stats.duplicates += duplicates;
            for (message, _) in &group {
                let _ = message.ack().await;
            }
            return;
        }
        Err(FilesError::Io { path, source }) => {
            stats.storage_failures += 1;
            tracing::error!(%node, file = %path.display(), error = %source, "Cannot write; messages not acknowledged, retried.");
            for (message, _) in &group {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
            return;
        }
        Err(_) => {}
    }
    for (message, line) in group {
        match files.store(node, std::slice::from_ref(&line)) {
            Ok((new, duplicates)) => {
                stats.stored += new;
                stats.duplicates += duplicates;
                let _ = message.ack().await;
            }
            Err(FilesError::Io { path, source }) => {
                stats.storage_failures += 1;
                tracing::error!(%node, file = %path.display(), error = %source, "Cannot write; message not acknowledged, retried.");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
            Err(e) => {
                stats.refused += 1;
                tracing::error!(%node, id = %line.id, error = %e, "Record refused; message terminated.");
                let _ = message.ack_with(AckKind::Term).await;
            }
        }
    }
}
