//! `teledge collect`: the receiving end of the uplink, and with `--enrol-ca`/`--enrol-listen`
//! the enrolment listener of new boxes ([`teledge::pki::enrol`]) in the same process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// Address to listen on (port 0 picks a free port, printed on stdout).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,
    /// The site CA: the only issuer of client certificates accepted.
    #[arg(long)]
    pub ca: PathBuf,
    /// The collector's certificate (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// The collector's private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// Directory for `<node>/<day>.jsonl`.
    #[arg(long)]
    pub out: PathBuf,
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    #[arg(long)]
    pub tls12: bool,
    /// Most connections open at once; more are closed at once (counted).
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Most TLS handshakes under way at once; more are closed at once (counted).
    #[arg(long, default_value_t = 32)]
    pub max_handshakes: usize,
    /// Most connections of one node at once.
    #[arg(long, default_value_t = 4)]
    pub max_node_connections: usize,
    /// Most batch bodies held and processed at once.
    #[arg(long, default_value_t = 4)]
    pub max_batches: usize,
    /// Milliseconds a TLS handshake may take.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Milliseconds to receive a request's headers (slowloris bound).
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Milliseconds to receive a request's body.
    #[arg(long, default_value_t = 60_000)]
    pub body_timeout_ms: u64,
    /// Largest compressed batch, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Add `"stored_at"` (the collector's clock as each batch is written and synced) to
    /// every line, to measure how long records take to arrive (scripts/bench-latency.sh).
    #[arg(long)]
    pub stamp: bool,
    /// Largest inflated batch, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_inflated_bytes: u64,
    /// Serve this TUF repository (`DIR/metadata`, `DIR/targets`) to the nodes at
    /// `/v1/fleet/`, over the same mutual TLS.
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// Enrol new boxes with one-time tokens made by `teledge pki enrol-token --ca DIR`, signing
    /// with the CA in DIR (needs `--enrol-listen`).
    #[arg(long, requires = "enrol_listen")]
    pub enrol_ca: Option<PathBuf>,
    /// Address of the enrolment listener: server-authenticated TLS with the collector's
    /// certificate, `POST /v1/enrol` only (boxes have no client certificate yet).
    #[arg(long, requires = "enrol_ca")]
    pub enrol_listen: Option<std::net::SocketAddr>,
    /// Days of validity of an enrolled node's certificate.
    #[arg(long, default_value_t = 365)]
    pub enrol_days: u32,
}

pub fn run(args: CollectArgs) -> anyhow::Result<ExitCode> {
    let config = teledge::collect::CollectConfig {
        listen: args.listen,
        ca_file: args.ca,
        cert_file: args.cert,
        key_file: args.key,
        out_dir: args.out,
        tls12_allowed: args.tls12,
        stamp: args.stamp,
        fleet_dir: args.fleet,
        limits: teledge::collect::CollectLimits {
            max_connections: args.max_connections,
            max_handshakes: args.max_handshakes,
            max_node_connections: args.max_node_connections,
            max_batches: args.max_batches,
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
            header_timeout: Duration::from_millis(args.header_timeout_ms),
            body_timeout: Duration::from_millis(args.body_timeout_ms),
            max_body: args.max_body_bytes,
            max_inflated: args.max_inflated_bytes,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let enrolment = match (args.enrol_ca, args.enrol_listen) {
            (Some(ca), Some(listen)) => Some(tokio::spawn(teledge::pki::enrol::serve(
                listen,
                ca,
                config.cert_file.clone(),
                config.key_file.clone(),
                args.enrol_days,
            ))),
            _ => None,
        };
        let collected = teledge::collect::run(config);
        match enrolment {
            // Whichever stops first (only a failure stops either) ends the collector.
            Some(enrolment) => tokio::select! {
                result = collected => result.map_err(anyhow::Error::from),
                result = enrolment => match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(e.into()),
                },
            },
            None => collected.await.map_err(anyhow::Error::from),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
