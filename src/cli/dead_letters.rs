//! `teledge dead-letters`: what the collector refused for good, and resending it once the
//! cause is fixed (see `teledge::uplink::dead_letter`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use teledge::config::ForwardConfig;
use teledge::uplink::dead_letter::DeadLetters;

#[derive(Debug, clap::Subcommand)]
#[command(defer = true)]
pub enum DeadLettersCommand {
    /// List the dead letters: record id, the collector's status and reason, when.
    List(ConfigArg),
    /// Mark every dead letter for resending: the agent puts each back into its spool as a
    /// new record and forwards it (at once while `teledge run` is running, otherwise at its
    /// next start or the next `replay --forward`).
    Resend(ConfigArg),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The configuration (the daemon's file, or one with only the forwarding sections): it
    /// names the spool, whose dead-letter area is read, and the keys that open it.
    #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
    pub config: PathBuf,
}

pub fn run(command: DeadLettersCommand) -> anyhow::Result<ExitCode> {
    let (DeadLettersCommand::List(args) | DeadLettersCommand::Resend(args)) = &command;
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let area = DeadLetters::for_uplink(&config.uplink, &config.node_id, &config.keyring);
    match command {
        DeadLettersCommand::List(_) => list(&area),
        DeadLettersCommand::Resend(_) => {
            let marked = area.mark_all_for_resend()?;
            let (held, _) = area.count()?;
            println!(
                "{marked} dead letter(s) marked for resending ({held} marked in all) in {}; \
                 the agent puts them back into its spool and forwards them",
                area.dir().display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(area: &DeadLetters) -> anyhow::Result<ExitCode> {
    let entries = area.list()?;
    let mut bytes = 0;
    for entry in &entries {
        bytes += entry.bytes;
        let mark = if entry.marked {
            " [marked for resend]"
        } else {
            ""
        };
        match &entry.content {
            Ok(letter) => println!(
                "{}  status {}  refused {}  {} bytes{mark}  {}",
                letter.id, letter.status, letter.refused_at, entry.bytes, letter.reason
            ),
            Err(e) => println!(
                "{}  unreadable: {}{mark}",
                entry.path.display(),
                teledge::report::chain(e)
            ),
        }
    }
    println!(
        "{} dead letter(s), {bytes} bytes of {} allowed, in {}",
        entries.len(),
        area.max_bytes(),
        area.dir().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The forwarding sections of the configuration (the daemon's file, or one with just
/// those); every problem is printed (exit 78).
fn load(path: &Path) -> Result<ForwardConfig, ExitCode> {
    teledge::config::load_forward(path).map_err(|errors| {
        for problem in &errors.0 {
            eprintln!("teledge: {}: {problem}", path.display());
        }
        ExitCode::from(super::EXIT_CONFIG)
    })
}
