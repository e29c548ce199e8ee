//! `teledge report`: service statistics per interval, offline — from capture files (the
//! calls classified into services on their clear numbers, as the daemon does) or from a
//! collector's output directory (the nodes' interval records merged: highest revision per
//! node and run, then summed) — as a table, CSV or JSON Lines.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;

use super::{EXIT_CONFIG, EXIT_DAMAGED_INPUT};
use teledge::record::Record;
use teledge::replay::{Replay, ReplaySettings};
use teledge::stats::{report, Aggregator, Attribution, IntervalClock};
use teledge::time::Timestamp;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Capture files (pcap, pcapng), read in this order as one capture.
    #[arg(required_unless_present = "collected", conflicts_with = "collected")]
    pub files: Vec<PathBuf>,
    /// A collector's output directory (`<dir>/<node>/*.jsonl`): its interval records,
    /// merged across nodes.
    #[arg(long, value_name = "DIR")]
    pub collected: Option<PathBuf>,
    /// The configuration whose `[stats]` and `[[service]]` apply (other sections are
    /// ignored); without it, every call is one service "default", 15 min in UTC.
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Interval length in minutes (15, 30, 60), over the configuration's.
    #[arg(long, value_name = "MIN")]
    pub interval: Option<u32>,
    /// IANA time zone the intervals align in, over the configuration's.
    #[arg(long, value_name = "ZONE")]
    pub time_zone: Option<String>,
    /// Count a contact where its service-level event happened, or where it arrived.
    #[arg(long, value_enum)]
    pub attribution: Option<AttributionArg>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttributionArg {
    Event,
    Arrival,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Csv,
    Jsonl,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        None => teledge::config::stats::parse_stats("")
            .map_err(|e| anyhow::anyhow!("default statistics settings: {e:?}"))?,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            match teledge::config::stats::parse_stats(&text) {
                Ok(c) => c,
                Err(errors) => {
                    for problem in &errors.0 {
                        eprintln!("teledge: {}: {problem}", path.display());
                    }
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            }
        }
    };
    let settings = &mut config.settings;
    if args.interval.is_some() || args.time_zone.is_some() {
        let zone = args
            .time_zone
            .clone()
            .unwrap_or_else(|| settings.clock.zone_name().to_owned());
        let minutes = args.interval.unwrap_or(settings.clock.minutes());
        settings.clock = match IntervalClock::new(&zone, minutes) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("teledge: {e}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        };
    }
    if let Some(a) = args.attribution {
        settings.attribution = match a {
            AttributionArg::Event => Attribution::Event,
            AttributionArg::Arrival => Attribution::Arrival,
        };
    }
    let mut damaged = false;
    let records = match &args.collected {
        Some(dir) => {
            let found = report::read_collected(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?;
            for problem in found.unreadable.iter().take(10) {
                eprintln!("teledge: {problem}");
            }
            if !found.unreadable.is_empty() {
                eprintln!(
                    "teledge: {} line(s) could not be read; the report leaves them out",
                    found.unreadable.len()
                );
                damaged = true;
            }
            found.intervals
        }
        None => {
            let mut aggregator = Aggregator::new(config.settings.clone(), "report", 0);
            let mut last = Timestamp::default();
            let mut sink = |record: Record| {
                if let Record::Call(call) = record {
                    let now = call.end_time.unwrap_or(call.last_message_time);
                    last = last.max(now);
                    aggregator.call(&call, last);
                }
            };
            let mut replay = Replay::new(ReplaySettings::default());
            for path in &args.files {
                let file =
                    File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                if let Err(e) = replay.read(
                    &path.display().to_string(),
                    io::BufReader::with_capacity(1 << 20, file),
                    &mut sink,
                    |_| {},
                ) {
                    eprintln!("teledge: {}: {e}", path.display());
                    damaged = true;
                }
            }
            replay.finish(&mut sink);
            let counters = aggregator.counters();
            if counters.unclassified > 0 {
                eprintln!(
                    "teledge: {} call(s) matched no [[service]] and are not counted",
                    counters.unclassified
                );
            }
            // Every interval emitted, closed: the capture is all there is.
            aggregator.finish(Timestamp::from_nanos(i64::MAX))
        }
    };
    let merged = teledge::stats::merge::merge(records);
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    match args.format {
        ReportFormat::Table => report::write_table(&mut out, &merged),
        ReportFormat::Csv => report::write_csv(&mut out, &merged),
        ReportFormat::Jsonl => report::write_jsonl(&mut out, &merged),
    }
    .and_then(|()| out.flush())
    .context("cannot write the report")?;
    Ok(if damaged {
        ExitCode::from(EXIT_DAMAGED_INPUT)
    } else {
        ExitCode::SUCCESS
    })
}
