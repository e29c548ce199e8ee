//! The `teledge` command. Thin: parse arguments, run the subcommand, choose the exit code.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use teledge::correlation::calls::CallLimits;
use teledge::outputs::{jsonl::JsonLines, table};
use teledge::record::Record;
use teledge::replay::{Replay, ReplaySettings};

mod cmd;

/// Exit code when a capture could only be read in part (records before the damage are written).
const EXIT_DAMAGED_INPUT: u8 = 1;
/// Exit code for a runtime failure (cannot open a file, cannot write the output).
pub(crate) const EXIT_FAILURE: u8 = 2;
/// Exit code when forwarding stopped at its deadline with records still spooled (they are
/// kept and sent by the next run).
const EXIT_NOT_DRAINED: u8 = 3;
/// Exit code for an invalid configuration (EX_CONFIG): systemd must not restart on it.
pub(crate) const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "teledge",
    version,
    about = "Contact-centre telephony edge agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read capture files (pcap, pcapng) and report every SIP call in them.
    Replay(ReplayArgs),
    /// Receive records from agents over mutual TLS and store them as JSON Lines per day.
    Collect(CollectArgs),
    /// Run the agent: capture, HEP, sensors → spool → collector (the systemd service).
    Run(RunArgs),
    /// Validate a configuration file; print every problem with its path and line.
    CheckConfig(CheckConfigArgs),
    /// Hardware sensors on serial ports: list ports, probe a device, watch devices.
    #[command(subcommand)]
    Sensors(cmd::sensors::SensorsCommand),
    /// Records the collector refused for good: list them, resend them once fixed.
    #[command(subcommand)]
    DeadLetters(cmd::dead_letters::DeadLettersCommand),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct CheckConfigArgs {
    /// The configuration file.
    #[arg(default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

/// Where the service's configuration lives.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/teledge/teledge.toml";

#[derive(Debug, clap::Args)]
struct CollectArgs {
    /// Address to listen on (port 0 picks a free port, printed on stdout).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: std::net::SocketAddr,
    /// The site CA: the only issuer of client certificates accepted.
    #[arg(long)]
    ca: PathBuf,
    /// The collector's certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The collector's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Directory for `<node>/<day>.jsonl`.
    #[arg(long)]
    out: PathBuf,
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    #[arg(long)]
    tls12: bool,
    /// Most connections open at once; more are closed at once (counted).
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Most TLS handshakes under way at once; more are closed at once (counted).
    #[arg(long, default_value_t = 32)]
    max_handshakes: usize,
    /// Most connections of one node at once.
    #[arg(long, default_value_t = 4)]
    max_node_connections: usize,
    /// Most batch bodies held and processed at once.
    #[arg(long, default_value_t = 4)]
    max_batches: usize,
    /// Milliseconds a TLS handshake may take.
    #[arg(long, default_value_t = 10_000)]
    handshake_timeout_ms: u64,
    /// Milliseconds to receive a request's headers (slowloris bound).
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Milliseconds to receive a request's body.
    #[arg(long, default_value_t = 60_000)]
    body_timeout_ms: u64,
    /// Largest compressed batch, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Largest inflated batch, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_inflated_bytes: u64,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Capture files, read in this order as one capture.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Seconds without a final answer after which a call setup is closed as timed out.
    #[arg(long, default_value_t = 300)]
    setup_timeout: u64,
    /// Seconds after which a connected call without BYE is closed (marked incomplete).
    #[arg(long, default_value_t = 4 * 3600)]
    max_call_duration: u64,
    /// Never show a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// MiB the packet reassembly may hold in all (IP fragments, TCP segments and SIP
    /// messages being framed, WebSocket, SCTP); beyond it the least recently active state is
    /// dropped and counted in the summary.
    #[arg(long, default_value_t = teledge::dissect::DEFAULT_MEMORY_BUDGET / (1024 * 1024), value_name = "MIB")]
    memory_budget: usize,
    /// Send the records through the spool to the collector named in this configuration
    /// (pseudonymised, sealed, forwarded over mutual TLS) instead of printing them.
    #[arg(long, value_name = "CONFIG")]
    forward: Option<PathBuf>,
    /// Seconds to keep retrying an unreachable collector before exiting with the rest spooled.
    #[arg(long, default_value_t = 60)]
    forward_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One JSON record per line (calls, then a capture summary).
    Jsonl,
    /// A table of calls and a summary by outcome.
    Table,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Under systemd (JOURNAL_STREAM set) journald stamps each line itself and shows no
    // colours: plain lines without a timestamp. On a terminal: colours and times.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // The daemon says what it runs and what it does at info, and the collector is a server an
    // operator watches (connections, batches); commands run by hand only speak up when
    // something is wrong.
    let default_level = match cli.command {
        Command::Run(_) | Command::Collect(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TELEDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal() && !journald)
        .with_env_filter(filter);
    if journald {
        logs.without_time().init();
    } else {
        logs.init();
    }
    let result = match cli.command {
        Command::Replay(args) if args.forward.is_some() => replay_forward(args),
        Command::Replay(args) => replay(args),
        Command::Collect(args) => collect(args),
        Command::Sensors(command) => cmd::sensors::run(command),
        Command::DeadLetters(command) => cmd::dead_letters::run(command),
        Command::Run(args) => run(args),
        Command::CheckConfig(args) => check_config(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("teledge: {}", error_chain(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// An error and its causes on one line, each cause once: many of our errors already name
/// their cause in their own message, which `{:#}` would repeat.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// The replay's settings from its arguments.
fn replay_settings(args: &ReplayArgs) -> anyhow::Result<ReplaySettings> {
    if args.setup_timeout == 0 || args.max_call_duration == 0 || args.memory_budget == 0 {
        anyhow::bail!("--setup-timeout, --max-call-duration and --memory-budget must be positive");
    }
    Ok(ReplaySettings {
        calls: CallLimits {
            setup_timeout: Duration::from_secs(args.setup_timeout),
            max_call_duration: Duration::from_secs(args.max_call_duration),
            ..CallLimits::default()
        },
        dissect: teledge::dissect::DissectLimits {
            memory_budget: args.memory_budget.saturating_mul(1024 * 1024),
            ..teledge::dissect::DissectLimits::default()
        },
        ..ReplaySettings::default()
    })
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let settings = replay_settings(&args)?;
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
    let mut replay = Replay::new(settings);
    for path in &args.files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = progress_bar(path, size, args.no_progress);
        let result = replay.read(
            &path.display().to_string(),
            io::BufReader::with_capacity(1 << 20, file),
            &mut sink,
            |p| {
                if let Some(bar) = &bar {
                    bar.set_position(p.bytes);
                }
            },
        );
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        match result {
            Ok(frames) => tracing::info!(file = %path.display(), frames, "Capture read."),
            Err(e) => {
                // Keep going: what was read is reported, and so is the damage.
                eprintln!("teledge: {}: {e}", path.display());
                damaged = true;
            }
        }
    }
    let summary = replay.finish(&mut sink);
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
            table::write_table(&mut out, &table_calls, &summary)
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

/// Loads the agent configuration, printing every problem; `Err` carries exit code 78.
fn load_agent_config(path: &Path) -> Result<teledge::agent_config::AgentConfig, ExitCode> {
    teledge::agent_config::load(path).map_err(|errors| {
        for problem in &errors.0 {
            eprintln!("teledge: {}: {problem}", path.display());
        }
        eprintln!(
            "teledge: {}: {} problem(s); nothing started",
            path.display(),
            errors.0.len()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check_config(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    match load_agent_config(&args.config) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("teledge: {}: warning: {warning}", args.config.display());
            }
            // Records sealed under a key the keyring lost would be set aside unread.
            use teledge::spool::{check_spool_keys, SpoolKeyProblem};
            match check_spool_keys(&config.forward.spool.dir, &config.forward.keyring) {
                Ok(()) => {}
                Err(problem @ SpoolKeyProblem::Missing { .. }) => {
                    eprintln!(
                        "teledge: {}: spool.old_keys: {problem}",
                        args.config.display()
                    );
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
                // Not a configuration error (e.g. run as a user who cannot read the spool).
                Err(problem) => eprintln!("teledge: warning: {problem}"),
            }
            println!(
                "{}: valid ({} capture interface(s), HEP {}, {} sensor(s), node {})",
                args.config.display(),
                config.captures.len(),
                if config.hep.is_some() { "on" } else { "off" },
                config.sensors.len(),
                config.forward.node_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match load_agent_config(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", args.config.display());
    }
    let summary = match teledge::daemon::run(config, args.config.clone()) {
        Ok(summary) => summary,
        // Found only now (a listen address not on this host, a certificate unreadable by
        // the service user): still the configuration's fault, and systemd must not loop.
        Err(e) if e.is_configuration() => {
            eprintln!(
                "teledge: {}: {e}; nothing started (configuration)",
                args.config.display()
            );
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        Err(e) => return Err(e.into()),
    };
    // One line a supervisor or a test can account with.
    eprintln!("teledge: stopped: {}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

fn collect(args: CollectArgs) -> anyhow::Result<ExitCode> {
    let config = teledge::collect::CollectConfig {
        listen: args.listen,
        ca_file: args.ca,
        cert_file: args.cert,
        key_file: args.key,
        out_dir: args.out,
        tls12_allowed: args.tls12,
        limits: teledge::collect::CollectLimits {
            max_connections: args.max_connections,
            max_handshakes: args.max_handshakes,
            max_node_connections: args.max_node_connections,
            max_batches: args.max_batches,
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
            header_timeout: Duration::from_millis(args.header_timeout_ms),
            body_timeout: Duration::from_millis(args.body_timeout_ms),
            max_body: args.max_body_bytes,
            max_inflated: args.max_inflated_bytes,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(teledge::collect::run(config))?;
    Ok(ExitCode::SUCCESS)
}

/// `replay --forward`: records through pseudonymisation into the spool, then to the collector.
fn replay_forward(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    use teledge::uplink::client::Forwarder;

    let Some(config_path) = &args.forward else {
        anyhow::bail!("--forward needs a configuration");
    };
    let config = match teledge::config::load_forward(config_path) {
        Ok(c) => c,
        Err(errors) => {
            for problem in &errors.0 {
                eprintln!("teledge: {}: {problem}", config_path.display());
            }
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    for warning in &config.warnings {
        eprintln!("teledge: {}: warning: {warning}", config_path.display());
    }
    let (mut spool, events) =
        teledge::spool::Spool::open(config.spool.clone(), config.keyring.clone())?;
    for event in events {
        tracing::error!(
            ?event,
            "Spool store could not be opened and was moved aside."
        );
    }
    let pseudonymizer = teledge::privacy::Pseudonymizer::new(config.privacy.clone());
    let flush_every = config.spool.flush_interval;
    let mut last_flush = std::time::Instant::now();
    let mut spool_error: Option<teledge::spool::SpoolError> = None;
    let mut spooled = 0u64;
    let mut sink = |mut record: Record| {
        if spool_error.is_some() {
            return;
        }
        pseudonymizer.apply(&mut record);
        let result = serde_json::to_vec(&record)
            .map_err(|e| teledge::spool::SpoolError::Storage(e.to_string()))
            .and_then(|json| spool.append(&json))
            .and_then(|id| {
                spooled += u64::from(id.is_some());
                // Group commit: durable at most one interval after the append.
                if last_flush.elapsed() >= flush_every {
                    last_flush = std::time::Instant::now();
                    spool.flush()?;
                }
                Ok(())
            });
        if let Err(e) = result {
            spool_error = Some(e);
        }
    };
    let mut damaged = false;
    let mut replay = Replay::new(replay_settings(&args)?);
    for path in &args.files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
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
    if let Some(e) = spool_error {
        return Err(e).context("cannot spool records");
    }
    spool.flush()?;
    eprintln!(
        "teledge: {spooled} records spooled in {}",
        config.spool.dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut forwarder = Forwarder::new(&config.node_id, &config.uplink, &config.keyring)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(args.forward_timeout);
    let spool = std::sync::Mutex::new(spool);
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
