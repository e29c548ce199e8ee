//! `teledge update-apply`: the privileged installer of fleet updates, run as root by
//! `teledge-update.service` (started by `teledge-update.path` when the daemon hands a
//! verified update over). See [`teledge::fleet::apply`].

use std::path::PathBuf;
use std::process::ExitCode;

use super::{load_agent_config, DEFAULT_CONFIG, EXIT_CONFIG};

#[derive(Debug, clap::Args)]
pub struct UpdateApplyArgs {
    /// The service's configuration file (its `[fleet]` section; replaced by configuration
    /// updates).
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The installer's own directory (root only): requests and files are copied here before
    /// they are checked (`teledge-update.service` creates it: `StateDirectory=`).
    #[arg(long, default_value = "/var/lib/teledge-update")]
    pub staging: PathBuf,
}

pub fn run(args: UpdateApplyArgs) -> anyhow::Result<ExitCode> {
    let config = match load_agent_config(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let Some(settings) = config.fleet else {
        eprintln!(
            "teledge: {}: no [fleet] section; nothing to apply",
            args.config.display()
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let installer = teledge::fleet::apply::Installer {
        settings,
        config_path: args.config,
        health: config.observe.listen,
        node: config.forward.node_id.clone(),
        staging: args.staging,
    };
    let records = installer.apply()?;
    for record in &records {
        // One line per step, for the journal and for tests.
        println!("{}", serde_json::to_string(record)?);
    }
    Ok(ExitCode::SUCCESS)
}
