//! `teledge report`: service statistics per interval, offline — from capture files (the
//! calls classified into services on their clear numbers, as the daemon does) or from a
//! collector's output directory (the nodes' interval records merged: highest revision per
//! node and run, then summed) — as a table, CSV or JSON Lines. Asterisk `queue_log` files
//! (`--queue-log`, with or without captures) are parsed and assembled into queue contacts as
//! the daemon does, and counted as queue facts in the `[[service]]` named like their queue
//! (without `--config`: all in the one service `default`); with captures too, a call and the
//! queue contact of the same caller (same number, the queue stay within the call) are
//! joined and counted once, queue figures from the queue, the rest from SIP (see
//! `Aggregator::with_queue_join`). Several `queue_log` files are one log, read in the time
//! order of their first lines (a rotation's `queue_log.1` before `queue_log`, in whatever
//! order they are given; said on standard error when it differs): a stay or an agent's
//! presence goes on from one into the next. Lines of events teledge does not know are
//! counted by name and said (no figure follows from them). Lines that are not `queue_log`
//! lines are counted and reported; the exit status then says the input was damaged.

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Read, Write};
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
    /// Capture files (pcap, pcapng, NetMon, snoop, ERF; gzip-compressed too), read in this
    /// order as one capture.
    #[arg(
        required_unless_present_any = ["collected", "queue_log"],
        conflicts_with = "collected"
    )]
    pub files: Vec<PathBuf>,
    /// An Asterisk `queue_log` file (repeatable: the files are one log, read in the time
    /// order of their first lines, e.g. `queue_log.1` before `queue_log` after a rotation):
    /// its queue contacts
    /// counted in the `[[service]]` named like their queue (without `--config`: in
    /// `default`).
    #[arg(long, value_name = "FILE", conflicts_with = "collected")]
    pub queue_log: Vec<PathBuf>,
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
            // Captures and a queue_log: a call and the queue record of the same contact
            // join (every record is at hand: they wait for each other to the end).
            let join = !args.files.is_empty() && !args.queue_log.is_empty();
            if join {
                aggregator = aggregator.with_queue_join(REPORT_JOIN_WINDOW, REPORT_JOIN_WAITING);
            }
            let clear = clear_pseudonymizer();
            // Each record with its own time as the aggregator's clock: all input is at hand,
            // so none is too late, whatever order the files are given in.
            let mut sink = |record: Record| match record {
                Record::Call(call) => {
                    let now = call.end_time.unwrap_or(call.last_message_time);
                    let keys = teledge::stats::interval::JoinKeys::of(&call, &clear);
                    aggregator.call_keyed(&call, keys, now);
                }
                Record::Registrations(minute) => {
                    let now = minute.minute_start.plus(std::time::Duration::from_secs(60));
                    aggregator.registrations(&minute, now);
                }
                _ => {}
            };
            let mut replay = Replay::with_registrations(ReplaySettings::default());
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
            // The files are one log, read in the time order of their first lines (a
            // rotation's `queue_log.1` before `queue_log`, whatever order a glob gave
            // them in): a stay or an agent's presence goes on from one file into the
            // next; only the last file's end ends them.
            let mut ordered = Vec::with_capacity(args.queue_log.len());
            for (i, path) in args.queue_log.iter().enumerate() {
                let file =
                    File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                let first = first_line_time(io::BufReader::with_capacity(1 << 16, file))
                    .with_context(|| format!("cannot read {}", path.display()))?;
                ordered.push((first, i, path));
            }
            ordered.sort();
            if ordered.iter().enumerate().any(|(at, (_, i, _))| at != *i) {
                eprintln!(
                    "teledge: the queue_log files are read in the time order of their first lines: {}",
                    ordered
                        .iter()
                        .map(|(_, _, p)| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let mut queue_log = QueueLog::new(args.config.is_none());
            for (_, _, path) in ordered {
                let file =
                    File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                let bad = queue_log
                    .read(io::BufReader::with_capacity(1 << 20, file), &mut aggregator)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if bad > 0 {
                    eprintln!(
                        "teledge: {}: {} line(s) are not queue_log lines and are left out",
                        path.display(),
                        bad
                    );
                    damaged = true;
                }
            }
            if !args.queue_log.is_empty() {
                queue_log.finish(&mut aggregator);
            }
            // Every interval emitted, closed: the capture is all there is (calls and queue
            // records still waiting for a partner are counted on their own first).
            let intervals = aggregator.finish(Timestamp::from_nanos(i64::MAX));
            let counters = aggregator.counters();
            if join {
                eprintln!(
                    "teledge: {} call(s) joined with the queue_log contact of the same caller",
                    counters.joined
                );
            }
            if counters.join_overflow > 0 {
                eprintln!(
                    "teledge: {} record(s) counted without waiting for their partner (over {} waiting)",
                    counters.join_overflow,
                    REPORT_JOIN_WAITING
                );
            }
            if counters.unclassified > 0 {
                eprintln!(
                    "teledge: {} call(s) matched no [[service]] and are not counted",
                    counters.unclassified
                );
            }
            if counters.queue_no_arrival > 0 {
                eprintln!(
                    "teledge: {} queue contact(s) tell no arrival and are not counted",
                    counters.queue_no_arrival
                );
            }
            intervals
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

/// The `queue_log` files of one report, read as one log: one assembler across them, so a
/// stay or an agent's presence that began in a file goes on in the next (a rotated
/// `queue_log.1` given before `queue_log`).
struct QueueLog {
    assembler: teledge::correlation::queue::QueueAssembler,
    /// Every queue into the service `default`.
    one_service: bool,
    /// The latest line time read.
    log_end: Timestamp,
    /// When the agents' presences were last counted up to the log's time.
    agents_cut: Timestamp,
    /// Lines of events teledge does not know, by event name.
    unknown: std::collections::BTreeMap<String, u64>,
}

/// Most event names teledge does not know that `teledge report` tells apart.
const MAX_UNKNOWN_NAMES: usize = 16;

/// How far the log's time goes on before the agents' open presences are counted up to it
/// (`Aggregator::follow_agents`): an hour of log time.
const AGENT_CUT_EVERY_NS: i64 = 3_600 * 1_000_000_000;

impl QueueLog {
    fn new(one_service: bool) -> QueueLog {
        use teledge::correlation::queue::{QueueAssembler, QueueLimits};
        use teledge::record::queue::QueueSource;
        QueueLog {
            assembler: QueueAssembler::new(
                QueueSource::AsteriskQueueLog,
                "report",
                QueueLimits::default(),
                clear_pseudonymizer(),
            ),
            one_service,
            log_end: Timestamp::default(),
            agents_cut: Timestamp::default(),
            unknown: std::collections::BTreeMap::new(),
        }
    }

    /// Counts a queue contact with its own end as the aggregator's clock: all input is at
    /// hand, so none is too late (the captures read before may be hours later).
    fn count(&self, mut r: teledge::record::queue::QueueCallRecord, aggregator: &mut Aggregator) {
        if self.one_service {
            r.queue = "default".into();
        }
        aggregator.queue_record(&r, r.end_time);
    }

    /// Agent states: in the service named like their queue; with every queue in
    /// `default`, each agent's presence in each queue is still followed on its own.
    fn agent(&self, mut a: teledge::record::agent::AgentStateRecord, aggregator: &mut Aggregator) {
        if self.one_service {
            if let Some(q) = a.queue.take() {
                a.agent = format!("{}\u{0}{q}", a.agent);
                a.queue = Some("default".into());
            }
        }
        let at = a.time;
        aggregator.agent_state(&a, at);
    }

    /// Parses one file line by line (each at most [`MAX_LINE_LEN`] bytes held) and counts
    /// the queue contacts it ends; returns how many lines are not `queue_log` lines (too
    /// long included).
    ///
    /// [`MAX_LINE_LEN`]: teledge::decode::queue_log::MAX_LINE_LEN
    fn read(
        &mut self,
        mut reader: impl io::BufRead,
        aggregator: &mut Aggregator,
    ) -> io::Result<u64> {
        use teledge::decode::queue_log::{parse_line, QueueLogError, MAX_LINE_LEN};
        let mut bad = 0;
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE_LEN as u64 + 2)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') && n > MAX_LINE_LEN {
                // Too long: the rest of the line is skipped, not held.
                bad += 1;
                skip_line(&mut reader)?;
                continue;
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            match parse_line(text) {
                Ok(parsed) => {
                    self.log_end = self.log_end.max(parsed.time);
                    if let teledge::decode::queue_log::QueueEvent::Unknown { name, .. } =
                        &parsed.event
                    {
                        self.unknown_event(name);
                    }
                    // The agents' presences counted as the log's time goes on, as the
                    // daemon's tick does: one unchanged for longer than the aggregator
                    // counts back (8 days) would lose its beginning at the next cut.
                    if self.log_end.as_nanos() - self.agents_cut.as_nanos() >= AGENT_CUT_EVERY_NS {
                        aggregator.follow_agents(self.log_end);
                        self.agents_cut = self.log_end;
                    }
                    let mut records = Vec::new();
                    self.assembler.asterisk(&parsed, &mut |r| records.push(r));
                    for r in records {
                        self.count(r, aggregator);
                    }
                    for a in self.assembler.take_agent_states() {
                        self.agent(a, aggregator);
                    }
                }
                Err(QueueLogError::Empty) => {}
                Err(_) => bad += 1,
            }
        }
        Ok(bad)
    }

    /// Counts a line of an event teledge does not know (kept, no figure follows from it),
    /// by name: at most [`MAX_UNKNOWN_NAMES`] names, the rest together.
    fn unknown_event(&mut self, name: &str) {
        let cut: String = name.chars().take(32).collect();
        let name = if self.unknown.contains_key(&cut) || self.unknown.len() < MAX_UNKNOWN_NAMES {
            cut
        } else {
            "(others)".to_owned()
        };
        *self.unknown.entry(name).or_default() += 1;
    }

    /// The events teledge does not know, said once for the whole log.
    fn say_unknown(&self) {
        if self.unknown.is_empty() {
            return;
        }
        let total: u64 = self.unknown.values().sum();
        let names: Vec<String> = self
            .unknown
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        eprintln!(
            "teledge: {total} queue_log line(s) of events teledge does not know carry no figure: {}",
            names.join(", ")
        );
    }

    /// The end of the log (the last file's): the stays still open are closed at its last
    /// line's time (answered when an agent had answered, else no contact), and agents
    /// still logged in count up to that line.
    fn finish(mut self, aggregator: &mut Aggregator) {
        self.say_unknown();
        let mut records = Vec::new();
        self.assembler
            .finish(self.log_end, &mut |r| records.push(r));
        for r in records {
            self.count(r, aggregator);
        }
        aggregator.end_agents(self.log_end);
    }
}

/// The time of a `queue_log` file's first line that is a `queue_log` line (`None`: it has
/// none), each line at most [`MAX_LINE_LEN`] bytes held.
///
/// [`MAX_LINE_LEN`]: teledge::decode::queue_log::MAX_LINE_LEN
fn first_line_time(mut reader: impl io::BufRead) -> io::Result<Option<Timestamp>> {
    use teledge::decode::queue_log::{parse_line, MAX_LINE_LEN};
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_LEN as u64 + 2)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') && n > MAX_LINE_LEN {
            skip_line(&mut reader)?;
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Ok(parsed) = parse_line(text) {
            return Ok(Some(parsed.time));
        }
    }
}

/// How long a call or queue record of `teledge report` waits for its partner: all input
/// is at hand, so to the end (a year of capture time).
const REPORT_JOIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Most calls (and queue stays) of `teledge report` waiting for their partner: about 300
/// bytes each. Beyond, the oldest call is counted alone (said on standard error).
const REPORT_JOIN_WAITING: usize = 500_000;

/// Clear identities: the report shows sums only and stores nothing; queue records and the
/// calls' join keys are made alike.
fn clear_pseudonymizer() -> teledge::privacy::Pseudonymizer {
    use teledge::privacy::{AddressMode, Privacy, PrivacyMode, Pseudonymizer};
    Pseudonymizer::new(Privacy::new(PrivacyMode::Clear, AddressMode::Keep, [0; 32]))
}

/// Skips to the next newline without holding what is skipped.
fn skip_line(reader: &mut impl io::BufRead) -> io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}
