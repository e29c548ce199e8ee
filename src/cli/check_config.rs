//! `teledge check-config`: every problem of a configuration file with its path and line.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{load_agent_config, DEFAULT_CONFIG, EXIT_CONFIG};

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The configuration file.
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The configuration file, as a plain argument (the older form of `--config`).
    #[arg(value_name = "PATH", conflicts_with = "config")]
    pub path: Option<PathBuf>,
}

impl CheckConfigArgs {
    fn config(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| self.path.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
}

pub fn run(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let path = args.config();
    match load_agent_config(&path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("teledge: {}: warning: {warning}", path.display());
            }
            // Records sealed under a key the keyring lost would be set aside unread.
            use teledge::spool::{check_spool_keys, SpoolKeyProblem};
            match check_spool_keys(&config.forward.spool.dir, &config.forward.keyring) {
                Ok(()) => {}
                Err(problem @ SpoolKeyProblem::Missing { .. }) => {
                    eprintln!("teledge: {}: spool.old_keys: {problem}", path.display());
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
                // Not a configuration error (e.g. run as a user who cannot read the spool).
                Err(problem) => eprintln!("teledge: warning: {problem}"),
            }
            println!(
                "{}: valid ({} capture interface(s), HEP {}, {} sensor(s), node {})",
                path.display(),
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
