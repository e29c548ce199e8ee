//! `teledge pki`: make the site CA, issue the collector's and the nodes' certificates, and
//! one-time enrolment tokens (see [`teledge::pki`] for what each certificate holds).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
#[command(defer = true)]
pub enum PkiCommand {
    /// Create the site CA: DIR/ca.pem (give it to every box and the collector) and DIR/ca.key
    /// (mode 0600; keep it off the network). Never overwrites an existing CA.
    InitCa {
        /// Directory of the CA (created mode 0700).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long)]
        name: String,
        /// Days of validity.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue the collector's server certificate: OUT/collector.pem, OUT/collector.key,
    /// OUT/ca.pem.
    IssueCollector {
        /// Directory of the CA.
        #[arg(long)]
        ca: PathBuf,
        /// A DNS name the nodes use to reach the collector (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address the nodes use to reach the collector (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Issue a node's client certificate (CN = node id): OUT/node.pem, OUT/node.key, OUT/ca.pem.
    /// Prefer `enrol-token` + `teledge enrol`, so the key is made on the box.
    IssueNode {
        /// Directory of the CA.
        #[arg(long)]
        ca: PathBuf,
        /// The node id (`[node] id` of its configuration).
        #[arg(long)]
        node_id: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Make a one-time enrolment token for a node (printed on stdout; only its hash is kept).
    EnrolToken {
        /// Directory of the CA.
        #[arg(long)]
        ca: PathBuf,
        /// The node id the token may enrol.
        #[arg(long)]
        node_id: String,
        /// Seconds the token stays valid (at most a day).
        #[arg(long, default_value_t = 900)]
        ttl_s: u64,
    },
}

pub fn run(command: PkiCommand) -> anyhow::Result<ExitCode> {
    match command {
        PkiCommand::InitCa { dir, name, days } => {
            teledge::pki::init_ca(&dir, &name, days)?;
            println!("{}", dir.join(teledge::pki::CA_CERT).display());
        }
        PkiCommand::IssueCollector {
            ca,
            dns,
            ip,
            out,
            days,
        } => {
            teledge::pki::issue_collector(&ca, &dns, &ip, &out, days)?;
            println!("{}", out.join("collector.pem").display());
        }
        PkiCommand::IssueNode {
            ca,
            node_id,
            out,
            days,
        } => {
            teledge::pki::issue_node(&ca, &node_id, &out, days)?;
            println!("{}", out.join("node.pem").display());
        }
        PkiCommand::EnrolToken { ca, node_id, ttl_s } => {
            println!("{}", teledge::pki::enrol_token(&ca, &node_id, ttl_s)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

// `teledge enrol`: get this box's node certificate with a one-time token. Its `Debug` never
// shows the token. (A plain comment: clap would make a doc comment the subcommand's about
// text, built deferred, over the variant's.)
#[derive(clap::Args)]
pub struct EnrolArgs {
    /// The collector's enrolment listener, `https://host:port`.
    #[arg(long)]
    pub collector: String,
    /// The one-time token from `teledge pki enrol-token`.
    #[arg(long)]
    pub token: String,
    /// The site CA certificate, given to the box out of band (the only trust root).
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// This box's node id (the token's).
    #[arg(long)]
    pub node_id: String,
    /// Where to write node.key (0600, made here), node.pem and ca.pem.
    #[arg(long, default_value = "/etc/teledge")]
    pub out: PathBuf,
    /// The group that may read node.key (0640): the daemon's. When it does not exist yet
    /// (the package is installed later), the key stays 0600 and the package's postinst
    /// gives it to the group.
    #[arg(long, default_value = "teledge")]
    pub key_group: String,
}

impl std::fmt::Debug for EnrolArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolArgs")
            .field("collector", &self.collector)
            .field("token", &"<redacted>")
            .field("ca_cert", &self.ca_cert)
            .field("node_id", &self.node_id)
            .field("out", &self.out)
            .field("key_group", &self.key_group)
            .finish()
    }
}

pub fn enrol(args: EnrolArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(teledge::pki::enrol::enrol(
        &args.collector,
        &args.token,
        &args.ca_cert,
        &args.node_id,
        &args.out,
    ))?;
    let key = args.out.join("node.key");
    match group_id(Path::new("/etc/group"), &args.key_group)? {
        Some(gid) => {
            use std::os::unix::fs::PermissionsExt;
            let given = std::os::unix::fs::chown(&key, None, Some(gid)).and_then(|()| {
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640))
            });
            match given {
                Ok(()) => eprintln!(
                    "teledge enrol: {} is 0640, group {} (the daemon reads it)",
                    key.display(),
                    args.key_group
                ),
                Err(e) => eprintln!(
                    "teledge enrol: warning: cannot give {} to group {}: {e}; run \
                     'chgrp {} {} && chmod 0640 {}' as root",
                    key.display(),
                    args.key_group,
                    args.key_group,
                    key.display(),
                    key.display()
                ),
            }
        }
        None => eprintln!(
            "teledge enrol: group {:?} does not exist yet: {} stays 0600; installing the \
             package gives it to that group (postinst), or run \
             'chgrp {} {} && chmod 0640 {}'",
            args.key_group,
            key.display(),
            args.key_group,
            key.display(),
            key.display()
        ),
    }
    println!("{}", args.out.join("node.pem").display());
    Ok(ExitCode::SUCCESS)
}

/// The id of group `name` in a group file (`/etc/group`), `None` if it has no such group.
fn group_id(file: &Path, name: &str) -> anyhow::Result<Option<u32>> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name))
            .then(|| fields.nth(1).and_then(|gid| gid.parse().ok()))
            .flatten()
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::EnrolArgs;

    #[test]
    fn group_ids_are_read_from_the_group_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("group");
        std::fs::write(
            &file,
            "root:x:0:\nteledge-x:x:5:\nteledge:x:998:\nbad:x:y:\n",
        )
        .unwrap();
        assert_eq!(super::group_id(&file, "teledge").unwrap(), Some(998));
        assert_eq!(super::group_id(&file, "root").unwrap(), Some(0));
        assert_eq!(super::group_id(&file, "bad").unwrap(), None);
        assert_eq!(super::group_id(&file, "none").unwrap(), None);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let args = EnrolArgs {
            collector: "https://collector:8444".into(),
            token: "5ec2e7a11c0ffee".into(),
            ca_cert: "/media/ca.pem".into(),
            node_id: "edge-01".into(),
            out: "/etc/teledge".into(),
            key_group: "teledge".into(),
        };
        let shown = format!("{args:?}");
        assert!(!shown.contains("5ec2e7a11c0ffee"), "{shown}");
        assert!(shown.contains("edge-01"), "{shown}");
    }
}
