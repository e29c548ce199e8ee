//! The `teledge` command. Thin: parse the arguments, set up logging, run the subcommand
//! (one module each under [`cli`]), print an error's chain, choose the exit code.

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, EXIT_FAILURE};

mod cli;

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
    match cli.command.run() {
        Ok(code) => code,
        Err(e) => {
            // `{:#}`: the error and each of its causes once (no error repeats its source).
            eprintln!("teledge: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
