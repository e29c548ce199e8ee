//! The spool and the secure uplink end to end, with the real binaries: `teledge collect` on
//! loopback, `teledge replay --forward`, certificates made here by rcgen, real TLS handshakes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::support::data_path;

/// A certificate authority of the test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// (certificate PEM, key PEM) for `cn` with the given names, signed by `ca`: a server
/// certificate (serverAuth) when it has names, else a node's client certificate (clientAuth).
fn leaf(ca: &Ca, cn: &str, names: &[&str], expired: bool) -> (String, String) {
    let eku = if names.is_empty() {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    };
    leaf_with(ca, cn, names, expired, &[eku])
}

fn leaf_with(
    ca: &Ca,
    cn: &str,
    names: &[&str],
    expired: bool,
    eku: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = eku.to_vec();
    params.distinguished_name.push(DnType::CommonName, cn);
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The site CA, a collector certificate for `localhost`, node certificates for edge-01 and
/// edge-02, and the bad ones: another CA's, an expired one, one for the wrong host.
pub(crate) fn pki() -> Pki {
    let pki = Pki {
        dir: tempfile::tempdir().unwrap(),
    };
    let site = ca("teledge site CA");
    let rogue = ca("rogue CA");
    pki.write("ca.pem", &site.pem);
    pki.write("rogue-ca.pem", &rogue.pem);
    let put = |name: &str, (cert, key): (String, String)| {
        pki.write(&format!("{name}.pem"), &cert);
        pki.write(&format!("{name}.key"), &key);
    };
    put("collector", leaf(&site, "collector", &["localhost"], false));
    put(
        "collector-rogue",
        leaf(&rogue, "collector", &["localhost"], false),
    );
    put(
        "collector-expired",
        leaf(&site, "collector", &["localhost"], true),
    );
    put(
        "collector-wrong-host",
        leaf(&site, "collector", &["collector.example"], false),
    );
    put("edge-01", leaf(&site, "edge-01", &[], false));
    put("edge-02", leaf(&site, "edge-02", &[], false));
    put("edge-01-rogue", leaf(&rogue, "edge-01", &[], false));
    // Certificates of the site CA whose common names are not safe node ids, and one without
    // the clientAuth extended key usage.
    let client = [ExtendedKeyUsagePurpose::ClientAuth];
    put("node-dotdot", leaf_with(&site, "..", &[], false, &client));
    put(
        "node-traversal",
        leaf_with(&site, "a/../b", &[], false, &client),
    );
    let absolute = pki.path("abs-node").display().to_string();
    put(
        "node-absolute",
        leaf_with(&site, &absolute, &[], false, &client),
    );
    put("node-no-eku", leaf_with(&site, "edge-03", &[], false, &[]));
    std::fs::write(pki.path("spool.key"), [11u8; 32]).unwrap();
    std::fs::write(pki.path("site.key"), [12u8; 32]).unwrap();
    pki
}

/// A running collector; killed when dropped. Its log (stderr) is in `log`.
pub(crate) struct Collector {
    child: Child,
    pub(crate) port: u16,
    out: PathBuf,
    log: PathBuf,
}

impl Collector {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn collector(pki: &Pki, cert: &str, out: &Path) -> Collector {
    collector_on(pki, cert, out, 0)
}

fn collector_on(pki: &Pki, cert: &str, out: &Path, port: u16) -> Collector {
    collector_with(pki, cert, out, port, &[], None)
}

/// A collector with extra arguments, and at most `nofile` file descriptors if given.
fn collector_with(
    pki: &Pki,
    cert: &str,
    out: &Path,
    port: u16,
    extra: &[&str],
    nofile: Option<u32>,
) -> Collector {
    let mut command = match nofile {
        // The shell lowers the limit, then becomes the collector.
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                .arg(env!("CARGO_BIN_EXE_teledge"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_teledge")),
    };
    let log = out.with_extension("log");
    let mut child = command
        .args(["collect", "--listen", &format!("127.0.0.1:{port}"), "--ca"])
        .arg(pki.path("ca.pem"))
        .arg("--cert")
        .arg(pki.path(&format!("{cert}.pem")))
        .arg("--key")
        .arg(pki.path(&format!("{cert}.key")))
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("collector said {line:?}"));
    Collector {
        child,
        port,
        out: out.to_owned(),
        log,
    }
}

/// Writes a forwarding configuration for `node` using `client` certificate files.
fn forward_config(
    pki: &Pki,
    spool: &Path,
    node: &str,
    client: &str,
    ca: &str,
    port: u16,
) -> PathBuf {
    let text = format!(
        r#"
[node]
id = "{node}"
[spool]
dir = "{spool}"
key_file = "{key}"
key_id = 1
[privacy]
mode = "keyed_hash"
site_key_file = "{site}"
[uplink]
url = "https://localhost:{port}/v1/batches"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{client_key}"
batch_records = 2
timeout_ms = 3000
"#,
        spool = spool.display(),
        key = pki.path("spool.key").display(),
        site = pki.path("site.key").display(),
        ca = pki.path(ca).display(),
        cert = pki.path(&format!("{client}.pem")).display(),
        client_key = pki.path(&format!("{client}.key")).display(),
    );
    let path = spool.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn replay_forward(config: &Path, timeout_s: u32) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["replay", "--no-progress", "--forward"])
        .arg(config)
        .args(["--forward-timeout", &timeout_s.to_string()])
        .arg(data_path("sngrep_aaa.pcap"))
        .output()
        .unwrap()
}

/// Every line the collector stored, over all files.
pub(crate) fn stored(out: &Path) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for node in std::fs::read_dir(out).into_iter().flatten() {
        for file in std::fs::read_dir(node.unwrap().path())
            .into_iter()
            .flatten()
        {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            lines.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
        }
    }
    lines
}

fn contains_bytes(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            contains_bytes(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

#[test]
fn replay_forwards_every_record_once_pseudonymised_and_sealed() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);

    // Listen on the wire too: tshark on loopback captures the uplink traffic.
    let wire = work.path().join("uplink.pcapng");
    let mut tshark = Command::new("tshark")
        .args(["-i", "lo", "-f", &format!("tcp port {}", c.port), "-w"])
        .arg(&wire)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tshark is required: run ./scripts/test.sh, which installs it");
    let mut tshark_err = BufReader::new(tshark.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Capturing on") {
        line.clear();
        assert!(
            tshark_err.read_line(&mut line).unwrap() > 0,
            "tshark did not start"
        );
    }

    let result = replay_forward(&config, 30);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &tshark.id().to_string()])
        .status();
    tshark.wait().unwrap();
    let captured = std::fs::read(&wire).unwrap();
    assert!(
        captured.len() > 4096,
        "the capture holds the uplink traffic"
    );
    assert!(
        !captured.windows(6).any(|w| w == b"816666")
            && !captured.windows(9).any(|w| w == b"105090259"),
        "a number or Call-ID crossed the wire in clear"
    );
    let lines = stored(&c.out);
    // Four calls and the capture summary.
    assert_eq!(lines.len(), 5, "{lines:?}");
    let calls: Vec<_> = lines
        .iter()
        .filter(|l| l["record"]["type"] == "call")
        .collect();
    assert_eq!(calls.len(), 4);
    let mut ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "each record stored once");
    assert!(ids.iter().all(|id| id.starts_with("edge-01:")));

    // The caller of the cancelled call, 816666, is a keyed hash everywhere.
    for call in &calls {
        let user = call["record"]["caller"]["user"].as_str().unwrap();
        assert!(user.starts_with("h:"), "{user}");
    }
    assert!(
        !contains_bytes(&c.out, b"816666"),
        "number in clear at the collector"
    );
    assert!(
        !contains_bytes(&spool, b"816666"),
        "number in clear in the spool"
    );
    assert!(
        !contains_bytes(&spool, b"105090259-446faf7a"),
        "spool is sealed"
    );

    // The spool is drained: a second run has nothing left of the first to send.
    let again = replay_forward(&config, 30);
    assert!(again.status.success());
    assert_eq!(stored(&c.out).len(), 10);
}

#[test]
fn the_collector_drops_a_batch_sent_twice() {
    use teledge::spool::{Spool, SpoolConfig};
    use teledge::uplink::client::{encode_batch, Uplink};

    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let config_path = forward_config(
        &pki,
        &work.path().join("spool"),
        "edge-01",
        "edge-01",
        "ca.pem",
        c.port,
    );
    let config = teledge::config::load_forward(&config_path).unwrap();
    let (mut spool, _) = Spool::open(
        SpoolConfig::new(work.path().join("spool"), "edge-01"),
        config.keyring.clone(),
    )
    .unwrap();
    for i in 0..3 {
        spool.append(format!("{{\"n\":{i}}}").as_bytes()).unwrap();
    }
    spool.flush().unwrap();
    let batch = spool.read(None, 10).unwrap();
    let body = encode_batch("edge-01", &batch).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut uplink = Uplink::new(config.uplink.clone(), "edge-01".into()).unwrap();
    let first = runtime.block_on(uplink.send("b1", body.clone())).unwrap();
    // The acknowledgement was "lost": the agent sends the same batch again.
    let second = runtime.block_on(uplink.send("b1", body)).unwrap();
    assert_eq!((first.accepted, first.duplicates), (3, 0));
    assert_eq!((second.accepted, second.duplicates), (0, 3));
    assert_eq!(stored(&c.out).len(), 3);
}

/// A refused connection: the agent keeps its records (exit 3 at the deadline) and the
/// collector stores nothing.
fn assert_refused(pki: &Pki, collector_cert: &str, client: &str, ca: &str, reason: &str) {
    let work = tempfile::tempdir().unwrap();
    let c = collector(pki, collector_cert, &work.path().join("collected"));
    let spool = work.path().join("spool");
    let config = forward_config(pki, &spool, "edge-01", client, ca, c.port);
    let result = replay_forward(&config, 2);
    assert_eq!(
        result.status.code(),
        Some(3),
        "{collector_cert}/{client}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        stored(&c.out).is_empty(),
        "{collector_cert}/{client}: stored something"
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("stay spooled"), "{stderr}");
    assert!(stderr.contains(reason), "expected {reason:?} in {stderr}");
}

#[test]
fn tls_refuses_a_collector_from_an_unknown_ca() {
    assert_refused(
        &pki(),
        "collector-rogue",
        "edge-01",
        "ca.pem",
        "UnknownIssuer",
    );
}

#[test]
fn tls_refuses_a_collector_with_the_wrong_hostname() {
    assert_refused(
        &pki(),
        "collector-wrong-host",
        "edge-01",
        "ca.pem",
        "not valid for name",
    );
}

#[test]
fn tls_refuses_an_expired_collector_certificate() {
    assert_refused(
        &pki(),
        "collector-expired",
        "edge-01",
        "ca.pem",
        "certificate expired",
    );
}

#[test]
fn tls_refuses_an_untrusted_client_certificate() {
    // TLS 1.3: the server checks the client certificate after the client's handshake ends,
    // so the client sees the connection die on its request.
    assert_refused(
        &pki(),
        "collector",
        "edge-01-rogue",
        "ca.pem",
        "connection error",
    );
}

#[test]
fn tls_refuses_a_client_without_a_certificate() {
    // A TLS client that offers no certificate at all gets no answer.
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome: Result<usize, String> = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let roots = teledge::uplink::tls::load_roots(&pki.path("ca.pem")).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"POST /v1/batches HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())
    });
    assert!(matches!(outcome, Err(_) | Ok(0)), "{outcome:?}");
    assert!(stored(&c.out).is_empty());
}

#[test]
fn a_certificate_for_another_node_is_rejected_and_dead_lettered() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let spool = work.path().join("spool");
    // Configured as edge-01, presenting edge-02's certificate.
    let config = forward_config(&pki, &spool, "edge-01", "edge-02", "ca.pem", c.port);
    let result = replay_forward(&config, 10);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stored(&c.out).is_empty());
    let dead: Vec<_> = std::fs::read_dir(spool.join("dead-letter"))
        .unwrap()
        .collect();
    assert!(
        !dead.is_empty(),
        "the refused batches are kept as dead letters"
    );
}

#[test]
fn plaintext_is_refused_by_both_ends() {
    use std::io::{Read, Write};
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    // The collector answers plain HTTP with nothing.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    tcp.write_all(b"POST /v1/batches HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(stored(&c.out).is_empty());
    // The agent refuses an http:// collector URL in its configuration.
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("https://", "http://");
    std::fs::write(&config, text).unwrap();
    let result = replay_forward(&config, 2);
    assert_eq!(result.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&result.stderr).contains("uplink.url"));
}

/// Runs the load generator against a configuration.
fn spoolgen(config: &Path, records: u64, drain_timeout: u64) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_teledge-spoolgen"));
    command
        .args(["load", "--config"])
        .arg(config)
        .args(["--records", &records.to_string(), "--group", "25"])
        .args(["--drain-timeout", &drain_timeout.to_string()])
        .args(["--backoff-min-ms", "50", "--backoff-max-ms", "500"]);
    command
}

fn with_batches(config: &Path, records: usize) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("batch_records = 2", &format!("batch_records = {records}"));
    std::fs::write(config, text).unwrap();
}

/// The (epoch, seq) of every record the collector stored, checking none is stored twice.
fn stored_ids(out: &Path) -> std::collections::BTreeSet<(u64, u64)> {
    let lines = stored(out);
    let ids: std::collections::BTreeSet<(u64, u64)> = lines
        .iter()
        .map(|l| {
            let id = l["id"].as_str().unwrap();
            let mut parts = id.rsplit(':');
            let seq = parts.next().unwrap().parse().unwrap();
            let epoch = parts.next().unwrap().parse().unwrap();
            (epoch, seq)
        })
        .collect();
    assert_eq!(ids.len(), lines.len(), "a record was stored twice");
    ids
}

#[test]
fn sigkill_at_random_moments_loses_no_durable_record() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    with_batches(&config, 100);

    let mut durable: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let kills = 20;
    for _ in 0..kills {
        let mut child = spoolgen(&config, 3000, 5)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(std::time::Duration::from_millis(20 + seed % 300));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            if let Some(id) = line.strip_prefix("durable ") {
                let (epoch, seq) = id.split_once(':').unwrap();
                let (epoch, seq): (u64, u64) = (epoch.parse().unwrap(), seq.parse().unwrap());
                let max = durable.entry(epoch).or_default();
                *max = (*max).max(seq);
            }
        }
    }
    // One last run, not killed, drains what is left.
    let last = spoolgen(&config, 0, 60).output().unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );

    let ids = stored_ids(&c.out);
    let mut made_durable = 0;
    for (epoch, max) in &durable {
        for seq in 0..=*max {
            made_durable += 1;
            assert!(
                ids.contains(&(*epoch, seq)),
                "durable record {epoch}:{seq} lost"
            );
        }
    }
    assert!(made_durable > 0, "no run got as far as a flush");
    println!(
        "crash test: {kills} SIGKILLs, {made_durable} records made durable, {} stored by the collector, each once",
        ids.len()
    );
}

#[test]
fn collector_outage_loses_nothing_and_the_backlog_drains() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    // A free port for the collector that is not there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", port);
    with_batches(&config, 500);
    let records = 20_000;
    let producer = spoolgen(&config, records, 60)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = work.path().join("collected");
    let back = std::time::Instant::now();
    let c = collector_on(&pki, "collector", &out, port);
    let result = producer.wait_with_output().unwrap();
    let drain_time = back.elapsed().as_secs_f64();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let stdout = String::from_utf8_lossy(&result.stdout);
    let drained = stdout
        .lines()
        .find(|l| l.starts_with("drained"))
        .unwrap_or("");
    let ids = stored_ids(&c.out);
    assert_eq!(ids.len() as u64, records, "{drained}");
    println!(
        "outage test: collector down 3 s under load; {records} records, {drained}; backlog drained {:.0} records/s after the collector returned ({drain_time:.2} s)",
        records as f64 / drain_time
    );
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_drops_and_counts_then_recovers() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&work.path().join("disk"), "24m");
    // Something else fills most of the disk.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; 12 << 20]).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spool = disk.0.join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", port);
    with_batches(&config, 500);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("key_id = 1", "key_id = 1\ndisk_reserve_bytes = 4194304");
    std::fs::write(&config, text).unwrap();

    // 60 000 records need about 50 MB of spool: far more than the disk has.
    let records = 60_000u64;
    let producer = spoolgen(&config, records, 60)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the spool has filled the disk down to its reserve (4 MiB), then a moment
    // more so records are refused.
    let free = || -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&disk.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    };
    let waited = std::time::Instant::now();
    while free() > 4 << 20 {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(60),
            "the spool never filled the disk"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    // Space returns, and so does the collector.
    std::fs::remove_file(&filler).unwrap();
    let c = collector_on(&pki, "collector", &work.path().join("collected"), port);
    let result = producer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "the producer stayed up: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let dropped: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("dropped "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let lines = stored(&c.out);
    let data = lines
        .iter()
        .filter(|l| l["record"]["type"] == "load")
        .count() as u64;
    let announced: u64 = lines
        .iter()
        .filter(|l| l["record"]["type"] == "gap" && l["record"]["reason"] == "disk_full")
        .map(|l| l["record"]["dropped"].as_u64().unwrap())
        .sum();
    assert!(
        dropped > 0,
        "the disk filled up: {} / {}",
        stdout.lines().last().unwrap_or(""),
        String::from_utf8_lossy(&result.stderr)
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert_eq!(
        data + dropped,
        records,
        "every record is delivered or counted"
    );
    assert_eq!(
        announced, dropped,
        "the collector hears of every drop: {stdout}"
    );
    println!("disk-full test: {records} records, {data} delivered, {dropped} dropped while the disk was full and announced upstream");
}

/// A TLS client of the test presenting `client` (a certificate name of the PKI), connected to
/// the collector on `port`; `None` if the handshake failed.
async fn tls_client(
    pki: &Pki,
    client: &str,
    port: u16,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let roots = teledge::uplink::tls::load_roots(&pki.path("ca.pem")).unwrap();
    let certs = teledge::uplink::tls::load_certs(&pki.path(&format!("{client}.pem"))).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path(&format!("{client}.key")))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.ok()
}

/// Sends one raw HTTP request and reads until the collector closes or 10 s pass.
async fn exchange(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    request: &[u8],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tls.write_all(request).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && !request.is_empty() {
                    // One answer is enough once its body arrived (bodies here are short).
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    if let Ok(Ok(n)) = tokio::time::timeout(
                        std::time::Duration::from_millis(100),
                        tls.read(&mut buf),
                    )
                    .await
                    {
                        answer.extend_from_slice(&buf[..n]);
                    }
                    break;
                }
            }
            Err(_) => return format!("{}<no close within 10 s>", String::from_utf8_lossy(&answer)),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A POST of one gzip batch whose records claim `node`.
fn batch_request(node: &str, ids: &[String], content: &str) -> Vec<u8> {
    let lines: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| format!(r#"{{"id":"{id}","record":{content}}}"#).into_bytes())
        .collect();
    let body = teledge::uplink::encode_lines(&lines).unwrap();
    let mut request = format!(
        "POST /v1/batches HTTP/1.1\r\nhost: localhost\r\ncontent-encoding: gzip\r\nx-teledge-node: {node}\r\nx-teledge-batch: b\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

#[test]
fn a_wiped_spool_forwards_new_records_not_duplicates() {
    // Regression: a new store reused epoch 0, and the collector acknowledged its records as
    // duplicates of the old store's, so the agent deleted them unseen.
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let first = replay_forward(&config, 30);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(stored_ids(&c.out).len(), 5);
    // The state directory is wiped (re-image, operator) and the agent starts again.
    std::fs::remove_dir_all(&spool).unwrap();
    let second = replay_forward(&config, 30);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let ids = stored_ids(&c.out);
    assert_eq!(ids.len(), 10, "every new record stored: {ids:?}");
    let epochs: std::collections::BTreeSet<u64> = ids.iter().map(|(e, _)| *e).collect();
    assert_eq!(epochs.len(), 2, "two stores, two epochs: {epochs:?}");
}

#[test]
fn a_sequence_regression_is_refused_and_the_agent_keeps_its_records() {
    use teledge::spool::Spool;
    use teledge::uplink::client::{forward_until_drained, Backoff, DeadLetters, Uplink};

    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let spool_dir = work.path().join("spool");
    let config_path = forward_config(&pki, &spool_dir, "edge-01", "edge-01", "ca.pem", c.port);
    let config = teledge::config::load_forward(&config_path).unwrap();
    let open = || {
        Spool::open(config.spool.clone(), config.keyring.clone())
            .unwrap()
            .0
    };
    let forward = |spool: Spool, seconds: u64| {
        let spool = std::sync::Mutex::new(spool);
        let mut uplink = Uplink::new(config.uplink.clone(), "edge-01".into()).unwrap();
        let mut backoff = Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_millis(300),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let result = runtime().block_on(forward_until_drained(
            &spool,
            &mut uplink,
            &DeadLetters::for_uplink(&config.uplink),
            10,
            &mut backoff,
            Some(deadline),
        ));
        (result, spool.into_inner().unwrap())
    };
    let mut spool = open();
    for i in 0..3 {
        spool.append(format!("{{\"n\":{i}}}").as_bytes()).unwrap();
    }
    spool.flush().unwrap();
    drop(spool);
    // A snapshot of the agent's disk, taken now...
    let snapshot = work.path().join("snapshot");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&spool_dir)
        .arg(&snapshot)
        .status()
        .unwrap()
        .success());
    let mut spool = open();
    for i in 3..6 {
        spool.append(format!("{{\"n\":{i}}}").as_bytes()).unwrap();
    }
    spool.flush().unwrap();
    let (result, _) = forward(spool, 10);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(stored(&c.out).len(), 6);
    // ...is restored: the store's epoch runs again from seq 3, with other records.
    std::fs::remove_dir_all(&spool_dir).unwrap();
    std::fs::rename(&snapshot, &spool_dir).unwrap();
    let mut spool = open();
    spool.append(b"{\"n\":\"other\"}").unwrap();
    spool.flush().unwrap();
    let (result, spool) = forward(spool, 2);
    let reason = format!("{result:?}");
    assert!(
        reason.contains("409") && reason.contains("sequence regression"),
        "{reason}"
    );
    // Nothing deleted, nothing dead-lettered, nothing stored twice or overwritten.
    assert_eq!(
        spool.stats().records,
        4,
        "the agent keeps the refused records"
    );
    assert!(!spool_dir.join("dead-letter").exists());
    assert_eq!(stored_ids(&c.out).len(), 6);
    let log = c.log();
    assert!(
        log.contains("Sequence went backwards")
            && log.contains("seq=3")
            && log.contains("node=edge-01"),
        "{log}"
    );
}

#[test]
fn collector_writes_are_cut_back_when_the_disk_fills() {
    use teledge::spool::Spool;
    use teledge::uplink::client::{encode_batch, SendError, Uplink};

    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&work.path().join("collected"), "256k");
    // Something else takes most of the disk.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; 160 << 10]).unwrap();
    let c = collector(&pki, "collector", &disk.0);
    let config_path = forward_config(
        &pki,
        &work.path().join("spool"),
        "edge-01",
        "edge-01",
        "ca.pem",
        c.port,
    );
    let config = teledge::config::load_forward(&config_path).unwrap();
    let (mut spool, _) = Spool::open(config.spool.clone(), config.keyring.clone()).unwrap();
    let pad = "x".repeat(4000);
    for i in 0..40 {
        spool
            .append(format!("{{\"n\":{i},\"pad\":\"{pad}\"}}").as_bytes())
            .unwrap();
    }
    spool.flush().unwrap();
    let batch = spool.read(None, 100).unwrap();
    let body = encode_batch("edge-01", &batch).unwrap();
    let mut uplink = Uplink::new(config.uplink.clone(), "edge-01".into()).unwrap();
    let rt = runtime();
    // 160 KiB of records do not fit in the ~96 KiB left: the write fails part way.
    let failed = rt.block_on(uplink.send("b1", body.clone()));
    assert!(
        matches!(&failed, Err(SendError::Retriable(r)) if r.contains("503")),
        "{failed:?}"
    );
    // No torn line, no half batch left behind.
    let node_dir = disk.0.join("edge-01");
    for file in std::fs::read_dir(&node_dir).into_iter().flatten() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        assert!(
            bytes.is_empty(),
            "{} bytes of a failed write stayed",
            bytes.len()
        );
    }
    assert!(c.log().contains("Cannot store a batch"), "{}", c.log());
    // Space comes back; the retry stores every record exactly once.
    std::fs::remove_file(&filler).unwrap();
    let ack = rt.block_on(uplink.send("b1", body)).unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (40, 0));
    assert_eq!(stored_ids(&disk.0).len(), 40);
}

#[test]
fn the_collector_survives_running_out_of_file_descriptors() {
    // Regression: an accept error (EMFILE) ended `teledge collect`; 80 idle connections of
    // an unauthenticated client stopped it.
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let mut c = collector_with(
        &pki,
        "collector",
        &work.path().join("collected"),
        0,
        &["--handshake-timeout-ms", "1000"],
        Some(40),
    );
    let flood: Vec<_> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", c.port)).ok())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        c.child.try_wait().unwrap().is_none(),
        "the collector died: {}",
        c.log()
    );
    // The flood stays connected; a legitimate agent still gets through (its retries find the
    // descriptors the handshake timeout frees).
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let result = replay_forward(&config, 30);
    drop(flood);
    assert!(
        result.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&result.stderr),
        c.log()
    );
    assert_eq!(stored_ids(&c.out).len(), 5);
    assert!(c.child.try_wait().unwrap().is_none());
    assert!(
        c.log().contains("Accept failed; backing off"),
        "{}",
        c.log()
    );
}

/// How many of `conns` the collector closed within `wait`.
fn closed_within(conns: &mut [std::net::TcpStream], wait: std::time::Duration) -> usize {
    use std::io::Read;
    let deadline = std::time::Instant::now() + wait;
    let mut closed = vec![false; conns.len()];
    while std::time::Instant::now() < deadline {
        for (i, conn) in conns.iter_mut().enumerate() {
            if closed[i] {
                continue;
            }
            conn.set_read_timeout(Some(std::time::Duration::from_millis(10)))
                .unwrap();
            let mut b = [0u8; 16];
            match conn.read(&mut b) {
                Ok(0) => closed[i] = true,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed[i] = true,
                _ => {}
            }
        }
    }
    closed.iter().filter(|c| **c).count()
}

#[test]
fn connection_and_handshake_caps_refuse_cleanly() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let wait = std::time::Duration::from_millis(1500);
    // At most 3 connections: 10 idle ones, 7 closed at once, 3 held until the handshake
    // timeout (20 s here, far beyond the wait).
    let c = collector_with(
        &pki,
        "collector",
        &work.path().join("a"),
        0,
        &["--max-connections", "3", "--handshake-timeout-ms", "20000"],
        None,
    );
    let mut conns: Vec<_> = (0..10)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap())
        .collect();
    assert_eq!(closed_within(&mut conns, wait), 7);
    assert!(
        c.log().contains("Too many connections; refused."),
        "{}",
        c.log()
    );
    // At most 2 handshakes under way: 8 of 10 closed at once.
    let c = collector_with(
        &pki,
        "collector",
        &work.path().join("b"),
        0,
        &["--max-handshakes", "2", "--handshake-timeout-ms", "20000"],
        None,
    );
    let mut conns: Vec<_> = (0..10)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap())
        .collect();
    assert_eq!(closed_within(&mut conns, wait), 8);
    assert!(c.log().contains("Too many TLS handshakes"), "{}", c.log());
    // Once the stalled handshakes are gone, an agent gets through.
    drop(conns);
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let result = replay_forward(&config, 30);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(stored_ids(&c.out).len(), 5);
}

#[test]
fn slow_clients_and_extra_node_connections_are_cut_off() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector_with(
        &pki,
        "collector",
        &work.path().join("collected"),
        0,
        &[
            "--header-timeout-ms",
            "500",
            "--body-timeout-ms",
            "500",
            "--max-node-connections",
            "2",
        ],
        None,
    );
    runtime().block_on(async {
        // Headers that never end (slowloris): closed.
        let mut slow = tls_client(&pki, "edge-01", c.port).await.unwrap();
        let answer = exchange(&mut slow, b"POST /v1/batches HTTP/1.1\r\nhost: x\r\n").await;
        assert!(!answer.contains("no close"), "{answer}");
        drop(slow);
        // A body that never ends: 408.
        let mut slow = tls_client(&pki, "edge-01", c.port).await.unwrap();
        let answer = exchange(
            &mut slow,
            b"POST /v1/batches HTTP/1.1\r\nhost: x\r\nx-teledge-node: edge-01\r\ncontent-length: 100000\r\n\r\nabc",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        drop(slow);
        // Two connections of a node at once, not three.
        let mut one = tls_client(&pki, "edge-01", c.port).await.unwrap();
        let mut two = tls_client(&pki, "edge-01", c.port).await.unwrap();
        assert!(exchange(&mut one, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(exchange(&mut two, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        // (TLS 1.3: the refusal shows once the client reads.)
        if let Some(mut three) = tls_client(&pki, "edge-01", c.port).await {
            let answer = exchange(&mut three, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
            assert!(answer.is_empty(), "{answer}");
        }
    });
    let log = c.log();
    assert!(log.contains("Too many connections from this node"), "{log}");
    assert!(log.contains("status=408"), "{log}");
}

#[test]
fn certificates_naming_no_safe_node_are_refused() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let absolute = pki.path("abs-node").display().to_string();
    for (cert, cn) in [
        ("node-dotdot", ".."),
        ("node-traversal", "a/../b"),
        ("node-absolute", absolute.as_str()),
        ("node-no-eku", "edge-03"),
    ] {
        let answer = runtime().block_on(async {
            let Some(mut tls) = tls_client(&pki, cert, c.port).await else {
                return String::new();
            };
            exchange(&mut tls, &batch_request(cn, &[format!("{cn}:1:0")], "{}")).await
        });
        assert!(!answer.contains("200"), "{cert}: {answer}");
    }
    // Nothing written anywhere: not in the output directory, not beside it, not at the
    // absolute path.
    assert!(stored(&out).is_empty());
    assert!(std::fs::read_dir(&out).unwrap().next().is_none());
    assert!(!pki.path("abs-node").exists());
    let beside: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".jsonl") || n == "b")
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    let log = c.log();
    assert!(log.contains("is not a valid node id"), "{log}");
    assert!(log.contains("lacks the clientAuth"), "{log}");
}

#[test]
fn the_collector_logs_connections_and_batches() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    assert!(replay_forward(&config, 30).status.success());
    let log = c.log();
    assert!(
        log.contains("Node connected.") && log.contains("node=edge-01"),
        "{log}"
    );
    assert!(
        log.contains("Batch stored.") && log.contains("new=2") && log.contains("duplicates=0"),
        "{log}"
    );
    // A refusal names its reason and the address.
    let forbidden = runtime().block_on(async {
        let mut tls = tls_client(&pki, "edge-01", c.port).await.unwrap();
        exchange(
            &mut tls,
            &batch_request("edge-02", &["edge-02:1:0".into()], "{}"),
        )
        .await
    });
    assert!(forbidden.starts_with("HTTP/1.1 403"), "{forbidden}");
    let log = c.log();
    assert!(
        log.contains("Batch refused.")
            && log.contains("status=403")
            && log.contains("peer=127.0.0.1:"),
        "{log}"
    );
}

#[test]
fn check_config_fails_when_the_spool_holds_a_key_the_keyring_lacks() {
    use teledge::seal::Keyring;
    use teledge::spool::{Spool, SpoolConfig};

    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path();
    for (from, to) in [
        ("site.key", "site.key"),
        ("spool.key", "spool-key"),
        ("ca.pem", "ca.pem"),
        ("edge-01.pem", "node.pem"),
        ("edge-01.key", "node.key"),
    ] {
        std::fs::copy(pki.path(from), etc.join(to)).unwrap();
    }
    let spool_dir = etc.join("spool");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("teledge.example.toml"))
        .unwrap()
        .replace("/var/lib/teledge/spool", &spool_dir.display().to_string())
        .replace("/etc/teledge/", &format!("{}/", etc.display()));
    let path = etc.join("teledge.toml");
    std::fs::write(&path, example).unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_teledge"))
            .current_dir(&root)
            .env("CREDENTIALS_DIRECTORY", etc)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let fine = check();
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
    // Records sealed under key id 7, which the configuration does not list.
    let (mut spool, _) = Spool::open(
        SpoolConfig::new(&spool_dir, "edge-01"),
        Keyring::new((7, [3; 32]), &[]),
    )
    .unwrap();
    spool.append(b"{}").unwrap();
    spool.flush().unwrap();
    // Checked while the agent holds the store open, as an operator would.
    let out = check();
    drop(spool);
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("key id(s) 7"), "{stderr}");
}

#[test]
fn a_key_rotated_without_the_old_one_does_not_stop_forwarding() {
    // Regression: one record the spool could not open stopped forwarding for good.
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    // The collector is not there yet: the first run's records stay spooled under key 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", port);
    let first = replay_forward(&config, 1);
    assert_eq!(
        first.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The key is rotated to id 2 without listing key 1 as an old key.
    std::fs::write(pki.path("spool-2.key"), [21u8; 32]).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("key_id = 1", "key_id = 2")
        .replace(
            &pki.path("spool.key").display().to_string(),
            &pki.path("spool-2.key").display().to_string(),
        );
    std::fs::write(&config, text).unwrap();
    let c = collector_on(&pki, "collector", &work.path().join("collected"), port);
    let second = replay_forward(&config, 30);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let lines = stored(&c.out);
    let calls = lines
        .iter()
        .filter(|l| l["record"]["type"] == "call")
        .count();
    assert_eq!(calls, 4, "the second run's records went through");
    let gap = lines
        .iter()
        .find(|l| l["record"]["reason"] == "unreadable_record")
        .expect("the unreadable records are announced");
    assert_eq!(gap["record"]["dropped"].as_u64(), Some(5));
    assert!(gap["record"]["detail"]
        .as_str()
        .unwrap()
        .contains("key id 1"));
    // Set aside, still sealed, not deleted.
    let aside = spool.join(gap["record"]["set_aside"].as_str().unwrap());
    assert!(std::fs::metadata(&aside).unwrap().len() > 5 * 29);
    assert!(!contains_bytes(&spool, b"816666"));
}

#[test]
fn oversized_and_inflating_batches_are_refused() {
    use std::io::Write;
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector_with(
        &pki,
        "collector",
        &work.path().join("collected"),
        0,
        &[
            "--max-body-bytes",
            "65536",
            "--max-inflated-bytes",
            "1048576",
        ],
        None,
    );
    let post = |body: &[u8]| {
        let mut request = format!(
            "POST /v1/batches HTTP/1.1\r\nhost: localhost\r\ncontent-encoding: gzip\r\nx-teledge-node: edge-01\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        runtime().block_on(async {
            let mut tls = tls_client(&pki, "edge-01", c.port).await.unwrap();
            exchange(&mut tls, &request).await
        })
    };
    // A body over the bound: 413.
    let mut noise = Vec::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..(100 << 10) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let answer = post(&noise);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A small body that inflates to 16 MiB: 400, without inflating it all.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 16 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 65536);
    let answer = post(&bomb);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("inflates beyond the limit"),
        "{answer}"
    );
    assert!(stored(&c.out).is_empty());
    let log = c.log();
    assert!(
        log.contains("status=413") && log.contains("status=400"),
        "{log}"
    );
}
