//! `teledge run`: the daemon (the systemd service).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{load_agent_config, DEFAULT_CONFIG, EXIT_CONFIG};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
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
                "teledge: {}: {}; nothing started (configuration)",
                args.config.display(),
                teledge::report::chain(&e)
            );
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        Err(e) => return Err(e.into()),
    };
    // One line a supervisor or a test can account with.
    eprintln!("teledge: stopped: {}", serde_json::to_string(&summary)?);
    if !summary.panicked.is_empty() {
        // A bug stopped it: systemd (`Restart=on-failure`) starts it afresh.
        eprintln!(
            "teledge: stopped after a panic of {}; exiting with a failure code",
            summary.panicked.join(", ")
        );
        return Ok(ExitCode::from(super::EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}
