//! `teledge collect`: the receiving end of the uplink, and with `--enrol-ca`/`--enrol-listen`
//! the enrolment listener of new boxes ([`teledge::pki::enrol`]) in the same process. With
//! `--nats URL` it also (or, without `--out`, only) publishes what it accepts into a
//! JetStream stream; with `--from-nats URL` it reads such a stream into `--out` instead of
//! listening ([`teledge::bus`]).

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
    #[arg(long, required_unless_present = "from_nats")]
    pub cert: Option<PathBuf>,
    /// The collector's private key (PEM).
    #[arg(long, required_unless_present = "from_nats")]
    pub key: Option<PathBuf>,
    /// Directory for `<node>/<day>.jsonl` (optional with `--nats`: the stream only).
    #[arg(long, required_unless_present = "nats")]
    pub out: Option<PathBuf>,
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    #[arg(long)]
    pub tls12: bool,
    /// Most connections open at once; more are closed at once (counted).
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Most TLS handshakes under way at once; more are closed at once (counted).
    #[arg(long, default_value_t = 32)]
    pub max_handshakes: usize,
    /// Most TLS handshakes under way from one address (an IPv6 /64); more are closed at
    /// once (counted), so one source cannot hold every handshake slot.
    #[arg(long, default_value_t = 8)]
    pub max_handshakes_per_address: usize,
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
    /// Milliseconds a write may wait for a peer that reads nothing back.
    #[arg(long, default_value_t = 30_000)]
    pub write_stall_timeout_ms: u64,
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
    #[command(flatten)]
    pub bus: BusArgs,
}

// The JetStream side of the collector. (A plain comment: a doc comment on a flattened
// `Args` struct becomes the subcommand's about text when clap builds it deferred.)
#[derive(Debug, clap::Args)]
pub struct BusArgs {
    /// Publish every accepted record into JetStream (`nats://` or `tls://`, TLS required;
    /// repeat for more servers of a cluster). A batch is acknowledged only once every record
    /// has its PubAck.
    #[arg(long, conflicts_with = "from_nats")]
    pub nats: Vec<String>,
    /// Read the stream into `--out` with a durable pull consumer instead of listening.
    #[arg(long, requires = "out")]
    pub from_nats: Vec<String>,
    /// The stream: publishes must land in it (`Nats-Expected-Stream`); `--from-nats` reads it.
    #[arg(long, default_value = "TELEDGE")]
    pub nats_stream: String,
    /// Subjects are `<prefix>.<node>.<kind>`.
    #[arg(long, default_value = "teledge")]
    pub nats_subject_prefix: String,
    /// Create the stream (subjects `<prefix>.>`, file storage) when it does not exist.
    #[arg(long)]
    pub nats_create_stream: bool,
    /// Replicas of a stream made by `--nats-create-stream`.
    #[arg(long, default_value_t = 1)]
    pub nats_replicas: usize,
    /// Duplicate window of a stream made by `--nats-create-stream` (resends within it are
    /// dropped; make it longer than the longest outage to ride out).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub nats_duplicate_window: Duration,
    /// CA of the NATS servers (default: `--ca`).
    #[arg(long)]
    pub nats_ca: Option<PathBuf>,
    /// Client certificate towards NATS (clientAuth; e.g. `teledge pki issue-node`).
    #[arg(long)]
    pub nats_cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long)]
    pub nats_key: Option<PathBuf>,
    /// NATS user (with `--nats-password-file`).
    #[arg(long, requires = "nats_password_file")]
    pub nats_user: Option<String>,
    #[arg(long, requires = "nats_user")]
    pub nats_password_file: Option<PathBuf>,
    #[arg(long)]
    pub nats_nkey_seed_file: Option<PathBuf>,
    #[arg(long)]
    pub nats_creds_file: Option<PathBuf>,
    /// Publishes awaiting their PubAck at once, per batch.
    #[arg(long, default_value_t = 256)]
    pub nats_max_in_flight: usize,
    /// PubAck and JetStream API timeout, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub nats_timeout_ms: u64,
    /// `--from-nats`: the durable consumer's name.
    #[arg(long, default_value = "teledge-files")]
    pub nats_durable: String,
    /// `--from-nats`: stop once no message came for this many milliseconds.
    #[arg(long)]
    pub idle_exit_ms: Option<u64>,
}

impl BusArgs {
    /// The bus settings for `servers` (`--nats` or `--from-nats`), or `None` without any.
    fn config(
        &self,
        servers: &[String],
        ca: &std::path::Path,
        tls12_allowed: bool,
    ) -> anyhow::Result<Option<teledge::collect::BusConfig>> {
        use teledge::uplink::NatsAuth;
        if servers.is_empty() {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (&self.nats_cert, &self.nats_key) else {
            anyhow::bail!("--nats and --from-nats need --nats-cert and --nats-key (a client certificate of the site CA)");
        };
        if !teledge::uplink::nats::valid_subject_prefix(&self.nats_subject_prefix) {
            anyhow::bail!(
                "--nats-subject-prefix {:?}: expected dot-separated tokens of [A-Za-z0-9_-]",
                self.nats_subject_prefix
            );
        }
        let auth = match (
            &self.nats_user,
            &self.nats_password_file,
            &self.nats_nkey_seed_file,
            &self.nats_creds_file,
        ) {
            (Some(user), Some(password_file), None, None) => NatsAuth::UserPassword {
                user: user.clone(),
                password_file: password_file.clone(),
            },
            (None, None, Some(seed_file), None) => NatsAuth::Nkey {
                seed_file: seed_file.clone(),
            },
            (None, None, None, Some(file)) => NatsAuth::Credentials { file: file.clone() },
            (None, None, None, None) => NatsAuth::Certificate,
            _ => anyhow::bail!(
                "give at most one of --nats-user, --nats-nkey-seed-file and --nats-creds-file"
            ),
        };
        Ok(Some(teledge::collect::BusConfig {
            nats: teledge::uplink::NatsSettings {
                servers: servers.to_vec(),
                subject_prefix: self.nats_subject_prefix.clone(),
                stream: Some(self.nats_stream.clone()),
                max_in_flight: self.nats_max_in_flight.clamp(1, 4096),
                auth,
            },
            ca_file: self.nats_ca.clone().unwrap_or_else(|| ca.to_owned()),
            cert_file: cert.clone(),
            key_file: key.clone(),
            tls12_allowed,
            timeout: Duration::from_millis(self.nats_timeout_ms.max(100)),
            create_stream: self
                .nats_create_stream
                .then_some(teledge::collect::StreamPlan {
                    replicas: self.nats_replicas.clamp(1, 5),
                    duplicate_window: self.nats_duplicate_window,
                }),
        }))
    }
}

/// `collect --from-nats`: the stream into files, until `--idle-exit-ms` (or forever).
fn consume(args: CollectArgs) -> anyhow::Result<ExitCode> {
    let Some(bus) = args.bus.config(&args.bus.from_nats, &args.ca, args.tls12)? else {
        anyhow::bail!("--from-nats needs a server");
    };
    let Some(out_dir) = args.out else {
        anyhow::bail!("--from-nats needs --out");
    };
    let config = teledge::bus::ConsumeConfig {
        bus,
        durable: args.bus.nats_durable.clone(),
        out_dir,
        stamp: args.stamp,
        batch: 500,
        idle_exit: args.bus.idle_exit_ms.map(Duration::from_millis),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stats = runtime.block_on(teledge::bus::consume(config))?;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: CollectArgs) -> anyhow::Result<ExitCode> {
    if !args.bus.from_nats.is_empty() {
        return consume(args);
    }
    let bus = args.bus.config(&args.bus.nats, &args.ca, args.tls12)?;
    let (Some(cert_file), Some(key_file)) = (args.cert, args.key) else {
        anyhow::bail!("--cert and --key are required to listen");
    };
    let config = teledge::collect::CollectConfig {
        listen: args.listen,
        ca_file: args.ca,
        cert_file,
        key_file,
        out_dir: args.out,
        bus,
        tls12_allowed: args.tls12,
        stamp: args.stamp,
        fleet_dir: args.fleet,
        limits: teledge::collect::CollectLimits {
            max_connections: args.max_connections,
            max_handshakes: args.max_handshakes,
            max_handshakes_per_address: args.max_handshakes_per_address,
            max_node_connections: args.max_node_connections,
            max_batches: args.max_batches,
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
            header_timeout: Duration::from_millis(args.header_timeout_ms),
            body_timeout: Duration::from_millis(args.body_timeout_ms),
            write_stall_timeout: Duration::from_millis(args.write_stall_timeout_ms),
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
