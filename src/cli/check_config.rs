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
    /// A systemd credential the configuration names (`key_credential`,
    /// `site_key_credential`), given by hand as the unit's `LoadCredential=NAME:FILE` gives
    /// it to the service: `--credential spool-key=/etc/teledge/spool.key`. Without it, outside
    /// the unit (no $CREDENTIALS_DIRECTORY), such a key is a problem that says so.
    #[arg(long, value_name = "NAME=FILE", value_parser = parse_credential)]
    pub credential: Vec<(String, PathBuf)>,
}

fn parse_credential(s: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=FILE"))?;
    if name.is_empty()
        || name == "."
        || name == ".."
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!("credential name {name:?}: [A-Za-z0-9._-] only"));
    }
    if file.is_empty() {
        return Err(format!("{s:?}: no file"));
    }
    Ok((name.to_owned(), PathBuf::from(file)))
}

/// A directory of symbolic links, one per `--credential`, set as $CREDENTIALS_DIRECTORY for
/// this process (as systemd does for the unit); removed when dropped.
struct Credentials(PathBuf);

impl Credentials {
    fn new(given: &[(String, PathBuf)]) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
        let name = hex::encode(random);
        let dir = std::env::temp_dir().join(format!("teledge-credentials-{name}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let credentials = Credentials(dir);
        for (name, file) in given {
            let file = std::path::absolute(file)?;
            std::os::unix::fs::symlink(&file, credentials.0.join(name))?;
        }
        // Only this process reads it, before any thread is started.
        std::env::set_var("CREDENTIALS_DIRECTORY", &credentials.0);
        Ok(credentials)
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    let _credentials = if args.credential.is_empty() {
        None
    } else {
        Some(Credentials::new(&args.credential).map_err(|e| anyhow::anyhow!("--credential: {e}"))?)
    };
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
