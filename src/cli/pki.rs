//! `teledge pki`: make the site CA, issue the collector's and the nodes' certificates, and
//! one-time enrolment tokens (see [`teledge::pki`] for what each certificate holds).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
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

/// `teledge enrol`: get this box's node certificate with a one-time token. Its `Debug` never
/// shows the token.
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
}

impl std::fmt::Debug for EnrolArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolArgs")
            .field("collector", &self.collector)
            .field("token", &"<redacted>")
            .field("ca_cert", &self.ca_cert)
            .field("node_id", &self.node_id)
            .field("out", &self.out)
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
    println!("{}", args.out.join("node.pem").display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::EnrolArgs;

    #[test]
    fn debug_never_shows_the_token() {
        let args = EnrolArgs {
            collector: "https://collector:8444".into(),
            token: "5ec2e7a11c0ffee".into(),
            ca_cert: "/media/ca.pem".into(),
            node_id: "edge-01".into(),
            out: "/etc/teledge".into(),
        };
        let shown = format!("{args:?}");
        assert!(!shown.contains("5ec2e7a11c0ffee"), "{shown}");
        assert!(shown.contains("edge-01"), "{shown}");
    }
}
