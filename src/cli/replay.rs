//! `teledge replay`: capture files through the pipeline, printed (JSON Lines or a table) or
//! forwarded through the spool to the collector (`--forward`).

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;

use super::{EXIT_DAMAGED_INPUT, EXIT_NOT_DRAINED};
use teledge::correlation::calls::CallLimits;
use teledge::outputs::{jsonl::JsonLines, table};
use teledge::record::Record;
use teledge::replay::{Replay, ReplaySettings};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Capture files, read in this order as one capture.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// With `--format table`: show times in this IANA time zone (e.g. Europe/Berlin, UTC);
    /// by default the system's.
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
    /// With `--format table`: also show each call's final SIP status and Call-ID.
    #[arg(long, short)]
    pub verbose: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Seconds without a final answer after which a call setup is closed as timed out.
    #[arg(long, default_value_t = 300)]
    pub setup_timeout: u64,
    /// Seconds after which a connected call without BYE is closed (marked incomplete).
    #[arg(long, default_value_t = 4 * 3600)]
    pub max_call_duration: u64,
    /// Milliseconds a call's record waits after the call ended for its RTP and RTCP still
    /// in flight (0 to 10000), as `correlation.record_grace_ms` in the daemon.
    #[arg(long, default_value_t = CallLimits::default().record_grace.as_millis() as u64, value_name = "MS")]
    pub record_grace_ms: u64,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// MiB the packet reassembly may hold in all (IP fragments, TCP segments and SIP
    /// messages being framed, WebSocket, SCTP); beyond it the least recently active state is
    /// dropped and counted in the summary.
    #[arg(long, default_value_t = teledge::dissect::DEFAULT_MEMORY_BUDGET / (1024 * 1024), value_name = "MIB")]
    pub memory_budget: usize,
    /// Send the records through the spool to the collector named in the configuration
    /// (pseudonymised, sealed, forwarded over mutual TLS) instead of printing them.
    #[arg(long)]
    pub forward: bool,
    /// The configuration for --forward: the daemon's file (only its [node], [spool],
    /// [privacy] and [uplink] are used) or one with just those sections; with a [stats]
    /// section (and [[service]]), interval records of the replayed calls are forwarded too.
    /// With `--format table`: its `[stats] time_zone` is the table's zone (unless --tz), and
    /// its `[[service]]` give a SERVICE column.
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Seconds to keep retrying an unreachable collector before exiting with the rest spooled.
    #[arg(long, default_value_t = 60)]
    pub forward_timeout: u64,
    /// Also time the REGISTER attempts (RFC 6076 RRD and IRA) and write one
    /// `teledge.registrations/1` record per minute; with `--forward` and a `[stats]` section
    /// they are always made (the statistics sum them).
    #[arg(long)]
    pub registrations: bool,
    /// Also send what the capture holds to a HOMER server (heplify-server) at HOST:PORT as
    /// HEPv3: every SIP message (type 1) with its original addresses and capture time, RTCP
    /// of calls (type 5 JSON, correlation id = Call-ID) and per-stream quality reports
    /// (type 34) as calls end.
    #[arg(long, value_name = "HOST:PORT")]
    pub hep_out: Option<String>,
    /// Transport for --hep-out.
    #[arg(long, value_enum, default_value_t = HepTransport::Udp, requires = "hep_out")]
    pub hep_transport: HepTransport,
    /// Capture id (HEP chunk 0x000c) of the frames of --hep-out.
    #[arg(long, default_value_t = teledge::config::hep_out::DEFAULT_CAPTURE_ID, requires = "hep_out")]
    pub hep_capture_id: u32,
    /// Node name (HEP chunk 0x0013) of the frames of --hep-out.
    #[arg(long, requires = "hep_out")]
    pub hep_node_name: Option<String>,
}

/// Transport of `--hep-out` (TLS and an auth key: the daemon's `[hep_out]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HepTransport {
    Udp,
    Tcp,
}

/// `--hep-out`: the relay started and its mirror set on the replay.
struct HepOut {
    relay: teledge::relay::HepRelay,
    metrics: std::sync::Arc<teledge::observe::AgentMetrics>,
}

fn start_hep_out(args: &ReplayArgs, replay: &mut Replay) -> anyhow::Result<Option<HepOut>> {
    use teledge::config::hep_out::{HepOutConfig, HepOutTransport};
    let Some(address) = &args.hep_out else {
        return Ok(None);
    };
    teledge::server_url::parse_host_port(address).map_err(|m| anyhow::anyhow!("--hep-out {m}"))?;
    let transport = match args.hep_transport {
        HepTransport::Udp => HepOutTransport::Udp,
        HepTransport::Tcp => HepOutTransport::Tcp,
    };
    let mut config = HepOutConfig::to(address, transport);
    if let Some(warning) = teledge::config::in_clear::hep_out(
        address,
        config.transport.as_str(),
        config.sip,
        config.rtcp || config.stream_reports,
        false,
    ) {
        eprintln!("teledge: warning: --hep-out: {}", warning.message);
    }
    config.capture_id = args.hep_capture_id;
    config.node_name = args.hep_node_name.clone();
    let metrics = std::sync::Arc::new(teledge::observe::AgentMetrics::new());
    // A file has no ring to overflow: wait for room rather than drop (up to 5 s).
    let (relay, mirror) = teledge::relay::HepRelay::start(
        &config,
        teledge::relay::Overflow::Wait(Duration::from_secs(5)),
        std::sync::Arc::clone(&metrics),
    )?;
    replay.set_mirror(Box::new(mirror));
    Ok(Some(HepOut { relay, metrics }))
}

/// Sends what is queued (up to 10 s), then says on standard error what was sent and lost.
fn finish_hep_out(hep: Option<HepOut>, address: Option<&str>) {
    let Some(HepOut { relay, metrics }) = hep else {
        return;
    };
    relay.finish(Duration::from_secs(10));
    let sent = |t: &str| metrics.hep_out_frames.with(&[t]).get();
    let dropped = teledge::relay::dropped_total(&metrics);
    eprintln!(
        "teledge: HEP to {}: {} frames sent (sip {}, rtcp {}, stream_report {}), {} dropped",
        address.unwrap_or(""),
        sent("sip") + sent("rtcp") + sent("stream_report"),
        sent("sip"),
        sent("rtcp"),
        sent("stream_report"),
        dropped
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON record per line (calls, then a capture summary).
    Jsonl,
    /// A table of calls and a summary by outcome.
    Table,
}

/// The replay's settings from its arguments.
fn replay_settings(args: &ReplayArgs) -> anyhow::Result<ReplaySettings> {
    if args.setup_timeout == 0 || args.max_call_duration == 0 || args.memory_budget == 0 {
        anyhow::bail!("--setup-timeout, --max-call-duration and --memory-budget must be positive");
    }
    let max_grace = teledge::correlation::calls::MAX_RECORD_GRACE.as_millis() as u64;
    if args.record_grace_ms > max_grace {
        anyhow::bail!(
            "--record-grace-ms {} is out of range: must be between 0 and {max_grace}",
            args.record_grace_ms
        );
    }
    Ok(ReplaySettings {
        calls: CallLimits {
            setup_timeout: Duration::from_secs(args.setup_timeout),
            max_call_duration: Duration::from_secs(args.max_call_duration),
            record_grace: Duration::from_millis(args.record_grace_ms),
            ..CallLimits::default()
        },
        dissect: teledge::dissect::DissectLimits {
            memory_budget: args.memory_budget.saturating_mul(1024 * 1024),
            ..teledge::dissect::DissectLimits::default()
        },
        ..ReplaySettings::default()
    })
}

/// The table's options from the arguments: the zone named, else the configuration's
/// `[stats] time_zone`, else the system's; the configuration's services, if it has any.
fn table_options(args: &ReplayArgs) -> anyhow::Result<Result<table::TableOptions, ExitCode>> {
    if args.config.is_some() && args.format == Format::Jsonl {
        // Would be ignored: a usage error, as clap's.
        eprintln!("teledge: --config is read by --forward and by --format table only");
        return Ok(Err(ExitCode::from(2)));
    }
    let mut zone_of_config = None;
    let mut services = None;
    if let (Some(path), Format::Table) = (&args.config, args.format) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let table = text.parse::<toml::Table>().ok();
        let has = |key: &str| table.as_ref().is_some_and(|t| t.contains_key(key));
        match teledge::config::stats::parse_stats(&text) {
            Ok(config) => {
                let stats = config.settings;
                if table
                    .as_ref()
                    .and_then(|t| t.get("stats"))
                    .and_then(|s| s.get("time_zone"))
                    .is_some()
                {
                    zone_of_config = Some(stats.clock.zone_name().to_owned());
                }
                if has("service") {
                    services = Some(stats.services);
                }
            }
            Err(errors) => {
                for problem in &errors.0 {
                    eprintln!("teledge: {}: {problem}", path.display());
                }
                return Ok(Err(ExitCode::from(super::EXIT_CONFIG)));
            }
        }
    }
    let zone = match args.tz.as_ref().or(zone_of_config.as_ref()) {
        Some(name) => teledge::time::zone(name).map_err(|e| {
            anyhow::anyhow!(
                "--tz {name:?}: not a time zone this system knows ({e}); give an IANA name \
                 such as Europe/Berlin or UTC"
            )
        })?,
        // JSON Lines shows no local times: the system's zone is not looked up (jiff lists the
        // whole of /usr/share/zoneinfo for it, ~3.4 M instructions at every start).
        None if args.format == Format::Jsonl => jiff::tz::TimeZone::UTC,
        None => jiff::tz::TimeZone::system(),
    };
    Ok(Ok(table::TableOptions {
        zone,
        verbose: args.verbose,
        services,
    }))
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let settings = replay_settings(&args)?;
    // Checked before any work: a misspelt zone is known before a large capture is read.
    let table_options = match table_options(&args)? {
        Ok(o) => o,
        Err(code) => return Ok(code),
    };
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let mut jsonl = JsonLines::new(out);
    let mut table_calls = Vec::new();
    let mut write_error: Option<io::Error> = None;
    let mut sink = |record: Record| match args.format {
        Format::Jsonl => {
            if write_error.is_none() {
                if let Err(e) = jsonl.write(&record) {
                    write_error = Some(e);
                }
            }
        }
        Format::Table => {
            if let Record::Call(call) = record {
                table_calls.push(*call);
            }
        }
    };

    let mut damaged = false;
    let mut replay = if args.registrations {
        Replay::with_registrations(settings)
    } else {
        Replay::new(settings)
    };
    let hep_out = start_hep_out(&args, &mut replay)?;
    for path in &args.files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = progress_bar(path, size, args.no_progress);
        let result = replay.read(&path.display().to_string(), file, &mut sink, |p| {
            if let Some(bar) = &bar {
                bar.set_position(p.bytes);
            }
        });
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        match result {
            Ok(frames) => tracing::info!(file = %path.display(), frames, "Capture read."),
            Err(e) => {
                // Keep going: what was read is reported, and so is the damage.
                eprintln!(
                    "teledge: {}: {}",
                    path.display(),
                    teledge::report::chain(&e)
                );
                damaged = true;
            }
        }
    }
    let summary = replay.finish(&mut sink);
    finish_hep_out(hep_out, args.hep_out.as_deref());
    if let Some(e) = write_error {
        return Err(e).context("cannot write records");
    }
    match args.format {
        Format::Jsonl => {
            jsonl.finish().context("cannot write records")?;
        }
        Format::Table => {
            table_calls.sort_by_key(|c| c.invite_time.unwrap_or(c.first_message_time));
            let mut out = jsonl.finish().context("cannot write records")?;
            table::write_table(&mut out, &table_calls, &summary, &table_options)
                .and_then(|()| out.flush())
                .context("cannot write table")?;
        }
    }
    // Damaged packets inside a readable file do not fail the replay, but the user hears of
    // them, with the packet numbers to look at.
    for problem in summary.decode.problems.iter().take(5) {
        tracing::warn!(frame = problem.frame, kind = problem.kind, detail = %problem.detail, "Packet not decoded.");
    }
    Ok(if damaged {
        ExitCode::from(EXIT_DAMAGED_INPUT)
    } else {
        ExitCode::SUCCESS
    })
}

/// `replay --forward`: records through pseudonymisation into the spool, then to the collector.
pub fn forward(mut args: ReplayArgs) -> anyhow::Result<ExitCode> {
    use teledge::uplink::client::Forwarder;

    let config_path = &forward_config_path(&mut args)?;
    let config = match super::load_forward_config(config_path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    for warning in &config.warnings {
        eprintln!("teledge: {}: warning: {warning}", config_path.display());
    }
    let (spool, events) =
        teledge::spool::Spool::open(config.spool.clone(), config.keyring.clone())?;
    for event in events {
        tracing::error!(
            ?event,
            "Spool store could not be opened and was moved aside."
        );
    }
    let spool = std::sync::Arc::new(std::sync::Mutex::new(spool));
    // Shared by the sink (calls in) and the end of the replay (intervals out).
    let aggregator = std::cell::RefCell::new(match stats_of(config_path, &config.node_id) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    });
    let mut last = teledge::time::Timestamp::default();
    let mut spooler = teledge::spooler::Spooler::new(
        std::sync::Arc::clone(&spool),
        teledge::privacy::Pseudonymizer::new(config.privacy.clone()),
        config.spool.flush_interval,
        None,
    );
    let mut spool_error: Option<teledge::spooler::SpoolerError> = None;
    let mut sink = |record: Record| {
        if spool_error.is_some() {
            return;
        }
        match (aggregator.borrow_mut().as_mut(), &record) {
            (Some(aggregator), Record::Call(call)) => {
                // Classified on the clear number, before the spooler pseudonymises it.
                last = last.max(call.end_time.unwrap_or(call.last_message_time));
                aggregator.call(call, last);
            }
            (Some(aggregator), Record::Registrations(minute)) => {
                last = last.max(minute.minute_start);
                aggregator.registrations(minute, last);
            }
            _ => {}
        }
        // Group commit: durable at most one interval after the append.
        if let Err(e) = spooler
            .append(record)
            .and_then(|_| spooler.commit_if_due().map(|_| ()))
        {
            spool_error = Some(e);
        }
    };
    let mut damaged = false;
    let with_stats = aggregator.borrow().is_some();
    let mut replay = if args.registrations || with_stats {
        Replay::with_registrations(replay_settings(&args)?)
    } else {
        Replay::new(replay_settings(&args)?)
    };
    let hep_out = start_hep_out(&args, &mut replay)?;
    for path in &args.files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        if let Err(e) = replay.read(&path.display().to_string(), file, &mut sink, |_| {}) {
            eprintln!(
                "teledge: {}: {}",
                path.display(),
                teledge::report::chain(&e)
            );
            damaged = true;
        }
    }
    replay.finish(&mut sink);
    finish_hep_out(hep_out, args.hep_out.as_deref());
    // The capture is all there is: every interval is closed.
    let intervals = aggregator
        .borrow_mut()
        .as_mut()
        .map(|a| a.finish(teledge::time::Timestamp::from_nanos(i64::MAX)))
        .unwrap_or_default();
    for interval in intervals {
        sink(Record::Interval(Box::new(interval)));
    }
    if let Some(e) = spool_error {
        return Err(e).context("cannot spool records");
    }
    spooler.commit().context("cannot spool records")?;
    eprintln!(
        "teledge: {} records spooled in {}",
        spooler.spooled(),
        config.spool.dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut forwarder = Forwarder::new(&config.node_id, &config.uplink, &config.keyring)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(args.forward_timeout);
    let result = runtime.block_on(forwarder.forward_until_drained(&spool, Some(deadline)));
    match result {
        Ok(stats) => {
            eprintln!(
                "teledge: forwarded {} records in {} batches ({} duplicates, {} retries, {} dead-lettered records)",
                stats.records, stats.batches, stats.duplicates, stats.retries, stats.dead_lettered
            );
            if stats.dead_letters_held > 0 {
                eprintln!(
                    "teledge: {} record(s) refused by the collector are held as dead letters; see `teledge dead-letters list --config {}`",
                    stats.dead_letters_held,
                    config_path.display()
                );
            }
            Ok(if damaged {
                ExitCode::from(EXIT_DAMAGED_INPUT)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(teledge::uplink::client::ForwardError::Deadline(reason)) => {
            let left = spool.lock().map(|s| s.stats().records).unwrap_or(0);
            eprintln!(
                "teledge: collector not reached before the deadline ({reason}); {left} records stay spooled for the next run"
            );
            Ok(ExitCode::from(EXIT_NOT_DRAINED))
        }
        Err(e) => Err(e.into()),
    }
}

/// The statistics of `replay --forward`: interval records of the replayed calls are spooled
/// with them when the configuration file has a `[stats]` section (with `enabled = true`, the
/// default); without one, only the records of the capture are.
fn stats_of(path: &Path, node: &str) -> Result<Option<teledge::stats::Aggregator>, ExitCode> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    if !text
        .parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("stats"))
    {
        return Ok(None);
    }
    match teledge::config::stats::parse_stats(&text) {
        Ok(config) if config.enabled => Ok(Some(teledge::stats::Aggregator::new(
            config.settings,
            node,
            teledge::stats::run_id(),
        ))),
        Ok(_) => Ok(None),
        Err(errors) => {
            for problem in &errors.0 {
                eprintln!("teledge: {}: {problem}", path.display());
            }
            Err(ExitCode::from(super::EXIT_CONFIG))
        }
    }
}

/// A progress bar for files over 16 MiB, only when stderr is a terminal.
fn progress_bar(path: &Path, size: u64, disabled: bool) -> Option<indicatif::ProgressBar> {
    if disabled || size < 16 * 1024 * 1024 || !io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(size);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(path.display().to_string());
    Some(bar)
}

/// The configuration of `replay --forward`: `--config PATH`, or the daemon's file. The
/// older form `--forward CONFIG FILE...` is still understood: a first file that is no
/// capture but TOML is the configuration (said on stderr, with the form to use now).
fn forward_config_path(args: &mut ReplayArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.config {
        return Ok(path.clone());
    }
    if args.files.first().is_some_and(|f| is_configuration(f)) {
        let path = args.files.remove(0);
        eprintln!(
            "teledge: warning: `--forward {0}` is the old form; give the configuration as \
             `--forward --config {0}`",
            path.display()
        );
        if args.files.is_empty() {
            anyhow::bail!("no capture files to replay after the configuration");
        }
        return Ok(path);
    }
    Ok(PathBuf::from(super::DEFAULT_CONFIG))
}

/// True for a file that is TOML and does not start like a capture (pcap, pcapng).
fn is_configuration(path: &std::path::Path) -> bool {
    const CAPTURE_MAGICS: [[u8; 4]; 5] = [
        [0xa1, 0xb2, 0xc3, 0xd4],
        [0xd4, 0xc3, 0xb2, 0xa1],
        [0xa1, 0xb2, 0x3c, 0x4d],
        [0x4d, 0x3c, 0xb2, 0xa1],
        [0x0a, 0x0d, 0x0d, 0x0a],
    ];
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() > 1 << 20 || CAPTURE_MAGICS.iter().any(|m| bytes.starts_with(m)) {
        return false;
    }
    std::str::from_utf8(&bytes).is_ok_and(|text| text.parse::<toml::Table>().is_ok())
}
