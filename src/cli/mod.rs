//! The `teledge` subcommands, one module each: arguments (a clap type) and what runs them.
//! Configuration files are loaded here, in one place, so every subcommand reports a bad one
//! the same way (every problem, exit 78).

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod check_config;
pub mod collect;
pub mod dead_letters;
pub mod fleet;
pub mod fleet_apply;
pub mod pki;
pub mod replay;
pub mod report;
pub mod run;
pub mod sensors;
pub mod supervisor_token;

/// Exit code when a capture could only be read in part (records before the damage are written).
pub const EXIT_DAMAGED_INPUT: u8 = 1;
/// Exit code for a runtime failure (cannot open a file, cannot write the output).
pub const EXIT_FAILURE: u8 = 2;
/// Exit code when forwarding stopped at its deadline with records still spooled (they are
/// kept and sent by the next run).
pub const EXIT_NOT_DRAINED: u8 = 3;
/// Exit code for an invalid configuration (EX_CONFIG): systemd must not restart on it.
pub const EXIT_CONFIG: u8 = 78;

/// Where the service's configuration lives.
pub const DEFAULT_CONFIG: &str = "/etc/teledge/teledge.toml";

#[derive(Debug, Parser)]
#[command(
    name = "teledge",
    version,
    about = "Contact-centre telephony edge agent"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `defer`: a subcommand's arguments are built only when it is the one invoked (here and in
/// the nested enums). Building every subcommand's arguments was a fifth of the code `teledge
/// run` executed before READY, and under emulation (qemu-user) code run once costs its
/// translation (docs/performance.md, "Binary size and start-up").
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Read capture files (pcap, pcapng, NetMon, snoop, ERF; gzip-compressed too) and report
    /// every SIP call in them.
    Replay(replay::ReplayArgs),
    /// Service statistics per interval (offered, answered, service levels, ...) from capture
    /// files or a collector's output directory.
    Report(report::ReportArgs),
    /// Receive records from agents over mutual TLS and store them as JSON Lines per day (and/or
    /// publish them into NATS JetStream; `--from-nats` reads such a stream back into files).
    Collect(Box<collect::CollectArgs>),
    /// Run the agent: capture, HEP, sensors → spool → collector (the systemd service).
    Run(run::RunArgs),
    /// Validate a configuration file; print every problem with its path and line.
    CheckConfig(check_config::CheckConfigArgs),
    /// Hardware sensors on serial ports: list ports, probe a device, watch devices.
    #[command(subcommand)]
    Sensors(sensors::SensorsCommand),
    /// Records the collector refused for good: list them, resend them once fixed.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Install a fleet update the daemon handed over, hold its probation, roll back if it
    /// fails (run as root by teledge-update.service).
    UpdateApply(fleet_apply::UpdateApplyArgs),
    /// The fleet owner's side: TUF keys, releases (packages per architecture, groups,
    /// rollout percentage, canaries), key rotation, re-signing, and a rollout's progress.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// The site CA, collector and node certificates, enrolment tokens.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Get this box's node certificate from the collector with a one-time token (the key is
    /// made here and never leaves the box).
    Enrol(pki::EnrolArgs),
    /// Make a bearer token for a supervisor of the status page, and the configuration lines
    /// with its hash.
    SupervisorToken(supervisor_token::SupervisorTokenArgs),
}

impl Command {
    /// Runs the subcommand; the exit code it chose, or an error for `main` to print.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Replay(args) if args.forward => replay::forward(args),
            Command::Replay(args) => replay::run(args),
            Command::Report(args) => report::run(args),
            Command::Collect(args) => collect::run(*args),
            Command::Sensors(command) => sensors::run(command),
            Command::DeadLetters(command) => dead_letters::run(command),
            Command::Run(args) => run::run(args),
            Command::CheckConfig(args) => check_config::run(args),
            Command::UpdateApply(args) => fleet_apply::run(args),
            Command::Fleet(command) => fleet::run(command),
            Command::Pki(command) => pki::run(command),
            Command::Enrol(args) => pki::enrol(args),
            Command::SupervisorToken(args) => supervisor_token::run(args),
        }
    }
}

/// Loads the agent configuration, printing every problem; `Err` carries exit code 78.
pub fn load_agent_config(path: &Path) -> Result<teledge::config::agent::AgentConfig, ExitCode> {
    teledge::config::agent::load(path).map_err(|errors| {
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

/// Loads the forwarding configuration of `replay --forward`, printing every problem; `Err`
/// carries exit code 78.
pub fn load_forward_config(path: &Path) -> Result<teledge::config::ForwardConfig, ExitCode> {
    teledge::config::load_forward(path).map_err(|errors| {
        for problem in &errors.0 {
            eprintln!("teledge: {}: {problem}", path.display());
        }
        ExitCode::from(EXIT_CONFIG)
    })
}
