//! `teledge-spoolgen`: drives the spool and the uplink with synthetic records, for the crash,
//! outage and disk tests and the spool benchmarks.
//!
//! `load`: a producer thread spools sensor records through the product's `Spooler` in groups
//! and commits each group, printing `durable <epoch>:<seq>` on stdout once the group's commit
//! returned; the product's forwarding task (`uplink::forwarding`, as the daemon runs it)
//! sends batches to the collector at the same time. After `--records` it waits
//! until the spool is drained (or `--drain-timeout`), prints `drained <n>` and exits.
//!
//! `bench`: measures durable appends per second with group commit, the bytes on disk per
//! record, the size after a churn of a million records, and an append-only file with
//! fdatasync on the same disk as the reference limit.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use teledge::privacy::Pseudonymizer;
use teledge::record::sensor::{
    Communication, PortCounters, SensorRecord, SensorValue, SENSOR_SCHEMA,
};
use teledge::record::Record;
use teledge::report::chain;
use teledge::seal::Keyring;
use teledge::spool::{Spool, SpoolConfig};
use teledge::spooler::Spooler;
use teledge::time::Timestamp;
use teledge::uplink::client::{Backoff, Forwarder};
use teledge::uplink::forwarding::Forwarding;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Append and forward under load (see the module doc).
    Load {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        records: u64,
        /// Records per durable group.
        #[arg(long, default_value_t = 50)]
        group: u64,
        #[arg(long, default_value_t = 120)]
        drain_timeout: u64,
        /// Backoff bounds in ms (the agent's default is 1000..60000).
        #[arg(long, default_value_t = 1000)]
        backoff_min_ms: u64,
        #[arg(long, default_value_t = 60_000)]
        backoff_max_ms: u64,
        /// Append (and make durable) every record before forwarding starts, then print the
        /// forwarding rate alone (`forwarded <n> records in <s> s: <rate> records/s`).
        #[arg(long)]
        prefill: bool,
    },
    /// Spool benchmarks in a directory.
    Bench {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        #[arg(long, default_value_t = 1_000_000)]
        churn: u64,
        /// Sealed bytes per sled value (the spool's segment; default: the spool's).
        #[arg(long)]
        segment_bytes: Option<usize>,
        /// sled log segment size of the new store (default: the spool's).
        #[arg(long)]
        sled_segment_bytes: Option<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
        .init();
    match Args::parse().command {
        Mode::Load {
            config,
            records,
            group,
            drain_timeout,
            backoff_min_ms,
            backoff_max_ms,
            prefill,
        } => load(
            &config,
            records,
            group,
            drain_timeout,
            (backoff_min_ms, backoff_max_ms),
            prefill,
        ),
        Mode::Bench {
            dir,
            records,
            churn,
            segment_bytes,
            sled_segment_bytes,
        } => bench(&dir, records, churn, segment_bytes, sled_segment_bytes),
    }
}

fn payload(n: u64) -> Vec<u8> {
    // About the size of a call record without media: 400 bytes.
    format!(
        "{{\"type\":\"load\",\"n\":{n},\"pad\":\"{}\"}}",
        "x".repeat(360)
    )
    .into_bytes()
}

/// A sensor reading record of about the size of a call record without media (the spool
/// and the uplink see what the agent spools: a `Record`, pseudonymised and serialised by the
/// product's spooler).
fn record(n: u64) -> Record {
    Record::Sensor(Box::new(SensorRecord {
        schema: SENSOR_SCHEMA,
        record_id: format!("load-{n}"),
        device: "load".into(),
        model: "spoolgen".into(),
        port: "/dev/null".into(),
        time: Timestamp::now(),
        communication: Communication::Ok,
        last_good_time: None,
        stale: false,
        values: (0..6)
            .map(|i| SensorValue {
                name: format!("value_{i}"),
                value: n as f64 + f64::from(i),
                unit: "unit".into(),
            })
            .collect(),
        states: BTreeMap::new(),
        counters: PortCounters::default(),
    }))
}

/// `load`: records through the product's [`Spooler`] (a commit per group) while the
/// product's [`Forwarding`] task sends them on, then a drain under the deadline.
fn load(
    config_path: &std::path::Path,
    records: u64,
    group: u64,
    drain_timeout: u64,
    (backoff_min, backoff_max): (u64, u64),
    prefill: bool,
) -> anyhow::Result<()> {
    let config = teledge::config::load_forward(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (spool, _) = Spool::open(config.spool.clone(), config.keyring.clone())?;
    let spool = Arc::new(Mutex::new(spool));
    let committed = Arc::new(Notify::new());
    let mut spooler = Spooler::new(
        Arc::clone(&spool),
        Pseudonymizer::new(config.privacy.clone()),
        config.spool.flush_interval,
        Some(Arc::clone(&committed)),
    );

    let producer = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut stdout = std::io::stdout();
        let mut n = 0;
        while n < records {
            let mut last = None;
            for _ in 0..group.min(records - n) {
                // A producer never stops for the spool: a refusal is counted by the spool
                // itself, an error is reported and the next record tried.
                match spooler.append(record(n)) {
                    Ok(id) => last = id.or(last),
                    Err(e) => eprintln!("append failed: {}", chain(&e)),
                }
                n += 1;
            }
            // One group, one commit: only then are its records durable.
            if let Err(e) = spooler.commit() {
                eprintln!("flush failed: {}", chain(&e));
                last = None;
            }
            if let Some(id) = last {
                writeln!(stdout, "durable {}:{}", id.epoch, id.seq)?;
                stdout.flush()?;
            }
        }
        Ok(())
    });

    if prefill {
        // Forwarding alone is measured: the producer finishes first.
        while !producer.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let forwarder = Forwarder::new(&config.node_id, &config.uplink, &config.keyring)?.with_backoff(
        Backoff::new(
            Duration::from_millis(backoff_min),
            Duration::from_millis(backoff_max),
        ),
    );
    let start = Instant::now();
    let tracker = TaskTracker::new();
    let drained = runtime.block_on(async {
        let forwarding = Forwarding::start(forwarder, &spool, committed, &tracker, || {});
        // The producer is a thread: wait for it without blocking the forwarding task.
        while !producer.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        forwarding
            .drain(Instant::now() + Duration::from_secs(drain_timeout))
            .await
    });
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let forwarded = drained.map_err(|e| anyhow::anyhow!("not drained: {}", e.reason))?;
    let stats = spool.lock().unwrap_or_else(|p| p.into_inner()).stats();
    if prefill {
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "forwarded {} records in {seconds:.3} s: {:.0} records/s",
            forwarded.records,
            forwarded.records as f64 / seconds
        );
    }
    println!(
        "drained {} records in {:.3} s",
        forwarded.records,
        start.elapsed().as_secs_f64()
    );
    println!(
        "dropped {} (disk full {}, oldest {}, newest {}), {} gap records",
        stats.dropped_disk_full + stats.dropped_oldest + stats.dropped_newest,
        stats.dropped_disk_full,
        stats.dropped_oldest,
        stats.dropped_newest,
        stats.gap_records
    );
    Ok(())
}

/// Bytes this process handed to write(2)/pwrite(2) so far (`wchar` of /proc/self/io): the
/// write amplification of the store beside the sealed bytes it holds.
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn bench(
    dir: &std::path::Path,
    records: u64,
    churn: u64,
    segment_bytes: Option<usize>,
    sled_segment_bytes: Option<usize>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let keyring = Keyring::new((1, [1; 32]), &[]);

    // Durable appends with group commit: a flush every 50 ms, as the agent does.
    let spool_dir = dir.join("spool-bench");
    let _ = std::fs::remove_dir_all(&spool_dir);
    let mut config = SpoolConfig::new(&spool_dir, "bench");
    config.segment_bytes = segment_bytes.unwrap_or(config.segment_bytes);
    config.sled_segment_bytes = sled_segment_bytes.unwrap_or(config.sled_segment_bytes);
    println!(
        "spool settings: segment {} bytes, sled log segment {} bytes",
        config.segment_bytes, config.sled_segment_bytes
    );
    let (mut spool, _) = Spool::open(config, keyring.clone())?;
    let written_before = written();
    let start = Instant::now();
    let mut last_flush = Instant::now();
    let mut flushes = 0u64;
    let mut longest_wait = Duration::ZERO;
    for n in 0..records {
        spool.append(&payload(n))?;
        if last_flush.elapsed() >= Duration::from_millis(50) {
            spool.flush()?;
            flushes += 1;
            longest_wait = longest_wait.max(last_flush.elapsed());
            last_flush = Instant::now();
        }
    }
    spool.flush()?;
    flushes += 1;
    longest_wait = longest_wait.max(last_flush.elapsed());
    let elapsed = start.elapsed().as_secs_f64();
    let spool_rate = records as f64 / elapsed;
    let spool_written = written() - written_before;
    let on_disk = spool.size_on_disk()?;
    let sealed = spool.stats().bytes;
    println!(
        "spool: {records} records of {} bytes, group commit 50 ms ({flushes} flushes, longest wait for a commit {} ms): {spool_rate:.0} durable appends/s, {:.0} bytes on disk per record, on disk / sealed bytes {:.2}, written / sealed bytes {:.2}",
        payload(0).len(),
        longest_wait.as_millis(),
        on_disk as f64 / records as f64,
        on_disk as f64 / sealed as f64,
        spool_written as f64 / sealed as f64,
    );

    // Churn: a million records appended and acknowledged in waves, as a long-running agent.
    let start = Instant::now();
    let mut passed = 0;
    let mut peak = on_disk;
    while passed < churn {
        let mut last = None;
        for _ in 0..10_000 {
            last = spool.append(&payload(passed))?;
            passed += 1;
        }
        spool.flush()?;
        peak = peak.max(spool.size_on_disk()?);
        if let Some(last) = last {
            spool.ack(last)?;
        }
        spool.compact_if_drained()?;
    }
    println!(
        "churn: {churn} records appended and acknowledged in {:.1} s; on disk after: {} bytes (peak {} bytes), {} compactions",
        start.elapsed().as_secs_f64(),
        spool.size_on_disk()?,
        peak,
        spool.stats().compactions
    );
    drop(spool);

    // Reference limit: an append-only file, fdatasync every 50 ms.
    let path = dir.join("append-only.log");
    let mut file = std::fs::File::create(&path).context("reference file")?;
    let start = Instant::now();
    let mut last_sync = Instant::now();
    for n in 0..records {
        file.write_all(&payload(n))?;
        file.write_all(b"\n")?;
        if last_sync.elapsed() >= Duration::from_millis(50) {
            file.sync_data()?;
            last_sync = Instant::now();
        }
    }
    file.sync_data()?;
    let reference_rate = records as f64 / start.elapsed().as_secs_f64();
    println!(
        "reference: append-only file, fdatasync every 50 ms: {reference_rate:.0} durable appends/s, {:.0} bytes per record",
        std::fs::metadata(&path)?.len() as f64 / records as f64
    );
    println!(
        "ratio: spool / reference durable appends/s = {:.2}",
        spool_rate / reference_rate
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(&spool_dir);
    Ok(())
}
