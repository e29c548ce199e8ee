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

/// Exit code when a capture could only be read in part (records before the damage are written).
const EXIT_DAMAGED_INPUT: u8 = 1;
/// Exit code for a runtime failure (cannot open a file, cannot write the output).
const EXIT_FAILURE: u8 = 2;

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
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TELEDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Replay(args) => replay(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("teledge: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if args.setup_timeout == 0 || args.max_call_duration == 0 {
        anyhow::bail!("--setup-timeout and --max-call-duration must be positive");
    }
    let settings = ReplaySettings {
        calls: CallLimits {
            setup_timeout: Duration::from_secs(args.setup_timeout),
            max_call_duration: Duration::from_secs(args.max_call_duration),
            ..CallLimits::default()
        },
        ..ReplaySettings::default()
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
            table_calls.sort_by_key(|c| c.invite_time);
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
