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
    pub(crate) dir: tempfile::TempDir,
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

    /// Copies edge-01's keys and certificates into `etc` under the names the shipped example
    /// configuration (`teledge.example.toml`) gives them below `/etc/teledge/`.
    pub(crate) fn install_as_edge_01(&self, etc: &Path) {
        for (from, to) in [
            ("site.key", "site.key"),
            ("spool.key", "spool-key"),
            ("ca.pem", "ca.pem"),
            ("edge-01.pem", "node.pem"),
            ("edge-01.key", "node.key"),
        ] {
            std::fs::copy(self.path(from), etc.join(to)).unwrap();
        }
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
    // NATS (tests/it/nats.rs): a server certificate for loopback by address, and the
    // collector's client certificate towards NATS.
    put(
        "nats-server",
        leaf(&site, "nats", &["127.0.0.1", "localhost"], false),
    );
    put("bus-client", leaf(&site, "collector-bus", &[], false));
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
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log says `needle` within `timeout` (a line about what the client just
    /// saw may reach the file a moment after the client saw it).
    pub(crate) fn logs_within(&self, needle: &str, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
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

pub(crate) fn collector_on(pki: &Pki, cert: &str, out: &Path, port: u16) -> Collector {
    collector_with(pki, cert, out, port, &[], None)
}

/// A collector with extra arguments, and at most `nofile` file descriptors if given.
pub(crate) fn collector_with(
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
pub(crate) fn forward_config(
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

pub(crate) fn replay_forward(config: &Path, timeout_s: u32) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["replay", "--no-progress", "--forward", "--config"])
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

/// Every record a daemon made, at the collector (`out`) or still in its spool (the uplink's
/// drain at shutdown may end before the spool is empty): the daemon has stopped.
pub(crate) fn collected_or_spooled(out: &Path, config_path: &Path) -> Vec<serde_json::Value> {
    let mut records: Vec<serde_json::Value> = stored(out)
        .into_iter()
        .map(|l| l["record"].clone())
        .collect();
    let config = teledge::config::agent::load(config_path).unwrap();
    let (mut spool, _) =
        teledge::spool::Spool::open(config.forward.spool.clone(), config.forward.keyring.clone())
            .unwrap();
    records.extend(
        spool
            .read(None, 1000)
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()),
    );
    records
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

/// The `.sealed` files of a dead-letter area (marked ones included).
fn dead_letter_files(spool: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [spool.join("dead-letter"), spool.join("dead-letter/resend")] {
        for entry in std::fs::read_dir(dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sealed") {
                files.push(path);
            }
        }
    }
    files
}

/// Error lines saying the uplink started failing.
fn failing_alerts(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("Uplink failing"))
        .count()
}

#[test]
fn a_certificate_for_another_node_keeps_every_record_spooled() {
    // Regression: the collector's 403 dead-lettered every batch (and /health said ok).
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let spool = work.path().join("spool");
    // Configured as edge-01, presenting edge-02's certificate.
    let config = forward_config(&pki, &spool, "edge-01", "edge-02", "ca.pem", c.port);
    let result = replay_forward(&config, 4);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("5 records stay spooled"), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert_eq!(
        failing_alerts(&stderr),
        1,
        "one alert, not one per retry: {stderr}"
    );
    assert!(stored(&c.out).is_empty());
    assert!(dead_letter_files(&spool).is_empty());
}

#[test]
fn a_wrong_collector_path_keeps_every_record_spooled_and_alerts_once() {
    // Regression: a URL typo (404) sent good records to an unencrypted dead-letter file.
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("/v1/batches", "/v1/batchez")).unwrap();
    // Six seconds of backoff from 1 s: three attempts at least.
    let result = replay_forward(&config, 6);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    assert!(
        stderr.contains("/v1/batchez"),
        "the alert names the path: {stderr}"
    );
    assert_eq!(failing_alerts(&stderr), 1, "{stderr}");
    assert!(stored(&c.out).is_empty());
    assert!(dead_letter_files(&spool).is_empty());
    // The typo fixed: the first run's records go out with the second's.
    std::fs::write(&config, good).unwrap();
    let result = replay_forward(&config, 30);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(stored_ids(&c.out).len(), 10);
}

#[test]
fn clear_text_dead_letters_of_earlier_versions_are_forwarded_and_deleted() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector(&pki, "collector", &work.path().join("collected"));
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    // What the old agent wrote for a 404: a whole batch, gzip JSON Lines in clear.
    std::fs::create_dir_all(spool.join("dead-letter")).unwrap();
    let old = spool.join("dead-letter/edge-01_0_0-2.jsonl.gz");
    let lines: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            format!(r#"{{"id":"edge-01:0:{n}","record":{{"type":"old","n":{n}}}}}"#).into_bytes()
        })
        .collect();
    std::fs::write(&old, teledge::uplink::encode_lines(&lines).unwrap()).unwrap();
    let result = replay_forward(&config, 30);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(!old.exists(), "nothing stays in clear");
    let stored = stored(&c.out);
    let mut old_ones: Vec<u64> = stored
        .iter()
        .filter(|l| l["record"]["type"] == "old")
        .map(|l| l["record"]["n"].as_u64().unwrap())
        .collect();
    old_ones.sort();
    assert_eq!(old_ones, [0, 1, 2]);
    assert_eq!(stored.len(), 8);
}

/// A collector of the test over real mutual TLS whose refusals are chosen: 413 above
/// `max_inflated` bytes, 422 for a batch with a record containing `poison`, 400 for every
/// batch when `refuse_all`. Otherwise it stores the lines and acknowledges them.
struct Picky {
    port: u16,
    lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    refusals: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
    policy: std::sync::Arc<std::sync::Mutex<PickyPolicy>>,
    _runtime: tokio::runtime::Runtime,
}

#[derive(Clone, Copy)]
struct PickyPolicy {
    max_inflated: usize,
    poison: bool,
    refuse_all: bool,
}

fn picky(pki: &Pki, policy: PickyPolicy) -> Picky {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use std::sync::{Arc, Mutex};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tls = teledge::uplink::tls::server_config(
        &pki.path("ca.pem"),
        &pki.path("collector.pem"),
        &pki.path("collector.key"),
        false,
    )
    .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let policy = Arc::new(Mutex::new(policy));
    let (l, r, p) = (lines.clone(), refusals.clone(), policy.clone());
    runtime.spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let (l, r, p) = (l.clone(), r.clone(), p.clone());
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (l, r, p) = (l.clone(), r.clone(), p.clone());
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let inflated = teledge::uplink::decode_body(&body, 1 << 30).unwrap();
                        let batch = teledge::collect::parse_batch("edge-01", &inflated).unwrap();
                        let policy = *p.lock().unwrap();
                        let status = if policy.refuse_all {
                            400
                        } else if inflated.len() > policy.max_inflated {
                            413
                        } else if policy.poison
                            && batch.iter().any(|b| b.record.get().contains("poison"))
                        {
                            422
                        } else {
                            200
                        };
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        if status != 200 {
                            r.lock().unwrap().push(status);
                            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            *response.body_mut() = Full::new(Bytes::from("refused by the test"));
                            return Ok::<_, hyper::Error>(response);
                        }
                        let ack = serde_json::json!({
                            "batch": "b",
                            "accepted": batch.len(),
                            "duplicates": 0,
                            "through": batch.last().unwrap().id,
                        });
                        let mut stored = l.lock().unwrap();
                        for line in &batch {
                            stored.push(serde_json::to_value(line).unwrap());
                        }
                        *response.body_mut() = Full::new(Bytes::from(ack.to_string()));
                        Ok(response)
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Picky {
        port,
        lines,
        refusals,
        policy,
        _runtime: runtime,
    }
}

/// Appends records to the spool of `config` (opened and closed here).
pub(crate) fn spool_records(config: &teledge::config::ForwardConfig, records: &[Vec<u8>]) {
    let (mut spool, _) =
        teledge::spool::Spool::open(config.spool.clone(), config.keyring.clone()).unwrap();
    for r in records {
        spool.append(r).unwrap();
    }
    spool.flush().unwrap();
}

fn forward_once(
    config: &teledge::config::ForwardConfig,
    timeout: std::time::Duration,
) -> (
    Result<teledge::uplink::client::UplinkStats, String>,
    teledge::uplink::client::UplinkStats,
    u64,
) {
    use teledge::uplink::client::{Backoff, Forwarder};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (spool, _) =
        teledge::spool::Spool::open(config.spool.clone(), config.keyring.clone()).unwrap();
    let spool = std::sync::Mutex::new(spool);
    let mut forwarder = Forwarder::new(&config.node_id, &config.uplink, &config.keyring)
        .unwrap()
        .with_backoff(Backoff::new(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_millis(200),
        ));
    let deadline = std::time::Instant::now() + timeout;
    let result = runtime
        .block_on(forwarder.forward_until_drained(&spool, Some(deadline)))
        .map_err(|e| e.to_string());
    let left = spool.lock().unwrap().stats().records;
    (result, forwarder.stats, left)
}

pub(crate) fn record(n: usize, pad: usize, marker: &str) -> Vec<u8> {
    format!(
        r#"{{"type":"test","n":{n},"marker":"{marker}","pad":"{}"}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

fn teledge_cli(args: &[&str], config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn refused_batches_are_split_and_only_a_refused_record_is_dead_lettered_sealed_then_resent() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = picky(
        &pki,
        PickyPolicy {
            max_inflated: 20_000,
            poison: true,
            refuse_all: false,
        },
    );
    let spool = work.path().join("spool");
    let path = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    with_batches(&path, 100);
    let config = teledge::config::load_forward(&path).unwrap();
    // 60 records of 1 kB: 60 kB in one batch, three times what the collector takes. One is
    // poison (422 whatever its company), one is 30 kB alone (413 even alone).
    let records: Vec<Vec<u8>> = (0..60)
        .map(|n| match n {
            17 => record(n, 900, "poison +4930123456"),
            40 => record(n, 30_000, "huge"),
            _ => record(n, 900, "fine"),
        })
        .collect();
    spool_records(&config, &records);

    let (result, stats, left) = forward_once(&config, std::time::Duration::from_secs(30));
    result.unwrap();
    assert_eq!(left, 0);
    let lines = c.lines.lock().unwrap().clone();
    let data: Vec<_> = lines
        .iter()
        .filter(|l| l["record"]["type"] == "test")
        .collect();
    let gaps: Vec<_> = lines
        .iter()
        .filter(|l| l["record"]["type"] == "gap")
        .collect();
    let mut delivered: Vec<u64> = data
        .iter()
        .map(|l| l["record"]["n"].as_u64().unwrap())
        .collect();
    delivered.sort();
    let expected: Vec<u64> = (0..60).filter(|n| *n != 17 && *n != 40).collect();
    assert_eq!(delivered, expected, "every good record delivered once");
    assert_eq!(stats.dead_lettered, 2);
    assert!(stats.splits >= 3, "{stats:?}");
    let refusals = c.refusals.lock().unwrap().clone();
    assert!(
        refusals.contains(&413) && refusals.contains(&422),
        "{refusals:?}"
    );
    // Each dead letter announced upstream, with its id and status.
    let mut announced: Vec<(String, u64)> = gaps
        .iter()
        .map(|g| {
            assert_eq!(g["record"]["reason"], "dead_letter");
            (
                g["record"]["first_dropped"].as_str().unwrap().to_owned(),
                g["record"]["status"].as_u64().unwrap(),
            )
        })
        .collect();
    announced.sort();
    assert_eq!(announced.len(), 2, "{announced:?}");
    assert!(
        announced[0].0.ends_with(":17") && announced[0].1 == 422,
        "{announced:?}"
    );
    assert!(
        announced[1].0.ends_with(":40") && announced[1].1 == 413,
        "{announced:?}"
    );
    // Sealed at rest: neither the number nor the marker is readable in the area.
    let files = dead_letter_files(&spool);
    assert_eq!(files.len(), 2);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"poison" || w == b"493012"));
    }
    // The operator's view, from the real command.
    let listing = teledge_cli(&["dead-letters", "list"], &path);
    assert!(
        listing.contains(&format!("{}  status 422", announced[0].0)),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("{}  status 413", announced[1].0)),
        "{listing}"
    );
    assert!(listing.contains("2 dead letter(s)"), "{listing}");

    // The cause fixed at the collector; the operator resends; the next round forwards them
    // as new records.
    *c.policy.lock().unwrap() = PickyPolicy {
        max_inflated: 1 << 30,
        poison: false,
        refuse_all: false,
    };
    let resend = teledge_cli(&["dead-letters", "resend"], &path);
    assert!(resend.starts_with("2 dead letter(s) marked"), "{resend}");
    let (result, stats, left) = forward_once(&config, std::time::Duration::from_secs(30));
    result.unwrap();
    assert_eq!((stats.requeued, stats.dead_letters_held, left), (2, 0, 0));
    assert!(dead_letter_files(&spool).is_empty());
    let lines = c.lines.lock().unwrap().clone();
    let resent: Vec<_> = lines[60..]
        .iter()
        .map(|l| l["record"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(resent, [17, 40]);
    let new_ids: Vec<&str> = lines[60..]
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert!(
        !new_ids.contains(&announced[0].0.as_str()),
        "resent under a new id"
    );
}

#[test]
fn a_full_dead_letter_area_drops_the_oldest_counted_and_announced() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = picky(
        &pki,
        PickyPolicy {
            max_inflated: 1 << 30,
            poison: true,
            refuse_all: false,
        },
    );
    let spool = work.path().join("spool");
    let path = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "timeout_ms = 3000",
        "timeout_ms = 3000\ndead_letter_max_bytes = 3000",
    );
    std::fs::write(&path, text).unwrap();
    let config = teledge::config::load_forward(&path).unwrap();
    // Five poison records of 1 kB, apart: the area holds two of them.
    let records: Vec<Vec<u8>> = (0..15)
        .map(|n| record(n, 1000, if n % 3 == 0 { "poison" } else { "fine" }))
        .collect();
    spool_records(&config, &records);
    let (result, stats, left) = forward_once(&config, std::time::Duration::from_secs(30));
    result.unwrap();
    assert_eq!(left, 0);
    assert_eq!(stats.dead_lettered, 5);
    assert_eq!(stats.dead_letter_dropped, 3);
    assert_eq!(dead_letter_files(&spool).len(), 2);
    let lines = c.lines.lock().unwrap().clone();
    let full: u64 = lines
        .iter()
        .filter(|l| l["record"]["reason"] == "dead_letter_area_full")
        .map(|l| l["record"]["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(full, 3, "every removal announced upstream");
    let listing = teledge_cli(&["dead-letters", "list"], &path);
    assert!(
        listing.contains(":9  status 422") && listing.contains(":12  status 422"),
        "{listing}"
    );
}

#[test]
fn a_collector_refusing_everything_is_failing_not_a_reason_to_dead_letter_everything() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = picky(
        &pki,
        PickyPolicy {
            max_inflated: 1 << 30,
            poison: false,
            refuse_all: true,
        },
    );
    let spool = work.path().join("spool");
    let path = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    with_batches(&path, 100);
    let config = teledge::config::load_forward(&path).unwrap();
    let records: Vec<Vec<u8>> = (0..40).map(|n| record(n, 100, "fine")).collect();
    spool_records(&config, &records);
    let (result, stats, left) = forward_once(&config, std::time::Duration::from_secs(3));
    assert!(result
        .unwrap_err()
        .contains("treated as a collector problem"));
    assert_eq!(
        stats.dead_lettered,
        teledge::uplink::client::MAX_DEAD_LETTERS_IN_A_ROW as u64
    );
    assert!(stats.retries >= 2, "{stats:?}");
    // The rest (and the gap records announcing the dead letters) stay in the spool.
    // 32 records and the 8 gap records announcing the dead letters.
    assert_eq!(left, 40);
    assert!(c.lines.lock().unwrap().is_empty());
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
    let mut command = Command::new(crate::support::tool("teledge-spoolgen"));
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
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Tmpfs {
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
        .filter(|l| l["record"]["type"] == "sensor")
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
fn a_sequence_regression_is_refused_and_the_agent_resends_under_a_new_epoch() {
    use teledge::spool::Spool;
    use teledge::uplink::client::{Backoff, Forwarder};

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
        let mut forwarder = Forwarder::new(&config.node_id, &config.uplink, &config.keyring)
            .unwrap()
            .with_backoff(Backoff::new(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_millis(300),
            ));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let result = runtime().block_on(forwarder.forward_until_drained(&spool, Some(deadline)));
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
    let (result, mut spool) = forward(spool, 10);
    // The collector refused the batch holding the regressed record (seq 2, a duplicate, and
    // 3) with 409, storing nothing of it; the agent moved what it held to a new epoch and
    // sent it again: forwarding goes on. Nothing dead-lettered, nothing overwritten.
    assert!(result.is_ok(), "{result:?}");
    assert!(spool.read(None, 10).unwrap().is_empty());
    assert!(!spool_dir.join("dead-letter").exists());
    let log = c.log();
    assert!(
        log.contains("Sequence went backwards")
            && log.contains("seq=3")
            && log.contains("node=edge-01"),
        "{log}"
    );
    let lines = stored(&c.out);
    let records: Vec<&serde_json::Value> = lines.iter().map(|l| &l["record"]).collect();
    // The six of before, untouched; "other" under a new id; seq 2 again under a new id (it
    // was in the refused batch: a duplicate, never a loss); and the gap record.
    assert_eq!(lines.len(), 9, "{lines:#?}");
    assert_eq!(stored_ids(&c.out).len(), 9);
    assert_eq!(records.iter().filter(|r| r["n"] == "other").count(), 1);
    let gap = records
        .iter()
        .find(|r| r["reason"] == "epoch_reused")
        .unwrap_or_else(|| panic!("no epoch_reused gap: {lines:#?}"));
    let old_epoch = lines[0]["id"].as_str().unwrap().split(':').nth(1).unwrap();
    assert_eq!(gap["epoch"].to_string(), old_epoch);
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
        matches!(&failed, Err(SendError::Retriable { reason, .. }) if reason.contains("503")),
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
        // The flood comes from one address: lift its share so that it reaches the
        // descriptor limit (the share alone would refuse it first).
        &[
            "--handshake-timeout-ms",
            "1000",
            "--max-handshakes-per-address",
            "1000",
        ],
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

/// A plain TCP connection from another loopback address (Linux routes all of 127/8 to lo).
pub(crate) fn connect_from(source: &str, port: u16) -> std::net::TcpStream {
    runtime().block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let tcp = socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        tcp.into_std().unwrap()
    })
}

/// Regression: 32 connections from one address that never began their handshake held every
/// handshake slot (for the whole handshake timeout, renewed at will), and every node was
/// refused meanwhile. Now one address holds its share; a node from another gets through
/// while the flood stays connected, and the refusals are counted and logged.
#[test]
fn a_handshake_flood_from_one_address_does_not_keep_the_nodes_out() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector_with(
        &pki,
        "collector",
        &work.path().join("collected"),
        0,
        &["--handshake-timeout-ms", "120000"],
        None,
    );
    let flood: Vec<_> = (0..100)
        .map(|_| connect_from("127.0.0.2", c.port))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let result = replay_forward(&config, 20);
    assert!(
        result.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&result.stderr),
        c.log()
    );
    assert_eq!(stored_ids(&c.out).len(), 5);
    assert!(
        c.log()
            .contains("Too many TLS handshakes under way from this address; refused."),
        "{}",
        c.log()
    );
    drop(flood);
}

/// A node that sends requests and reads none of the answers is disconnected once a write
/// has waited `--write-stall-timeout-ms`, and it is logged; before, it held its connection
/// (one of the node's four) for ever.
#[test]
fn a_node_that_reads_nothing_back_is_disconnected() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let c = collector_with(
        &pki,
        "collector",
        &work.path().join("collected"),
        0,
        &["--write-stall-timeout-ms", "1000"],
        None,
    );
    let closed = runtime().block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut tls = tls_client(&pki, "edge-01", c.port).await.unwrap();
        let requests = b"GET /nothing-here HTTP/1.1\r\nhost: x\r\n\r\n".repeat(256);
        // The answers (404s) fill both socket buffers; the collector's writes then wait,
        // and after a second it closes: our writes fail.
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while tls.write_all(&requests).await.is_ok() {}
        })
        .await
        .is_ok()
    });
    assert!(closed, "the collector kept the connection: {}", c.log());
    assert!(
        c.logs_within(
            "Node read nothing back; connection closed.",
            std::time::Duration::from_secs(10)
        ),
        "{}",
        c.log()
    );
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
    pki.install_as_edge_01(etc);
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

/// `replay --forward` of one capture.
fn replay_forward_capture(config: &Path, capture: &str, timeout_s: u32) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["replay", "--no-progress", "--forward"])
        .arg(config)
        .args(["--forward-timeout", &timeout_s.to_string()])
        .arg(data_path(capture))
        .output()
        .unwrap()
}

/// Records spooled by a `replay --forward`, from its report line.
fn spooled_count(out: &std::process::Output) -> usize {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("teledge: ")?.split_once(" records spooled"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no spooled count in {stderr}"))
}

/// A spool restored from a backup or a VM snapshot gives again sequence numbers of its epoch
/// that the collector already holds other records under. The collector refuses that (409,
/// never a silent duplicate); the agent must not then retry the same ids for ever while its
/// spool fills and drops: it moves what it holds to a fresh epoch, announces it by a gap
/// record, and forwarding goes on. Every record reaches the collector exactly once.
#[test]
fn a_spool_restored_from_a_snapshot_moves_to_a_new_epoch_and_forwards_again() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let spool = dir.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let first = replay_forward_capture(&config, "sipp_g711a.pcap", 30);
    assert!(first.status.success(), "{first:?}");
    // The snapshot: the spool as it is now (drained, its epoch and next sequence on disk).
    let snapshot = dir.path().join("snapshot");
    assert!(Command::new("cp")
        .args(["-a"])
        .arg(&spool)
        .arg(&snapshot)
        .status()
        .unwrap()
        .success());
    let second = replay_forward_capture(&config, "sngrep_aaa.pcap", 30);
    assert!(second.status.success(), "{second:?}");
    // Restored: the sequence numbers of the second run are given again, to other records.
    std::fs::remove_dir_all(&spool).unwrap();
    std::fs::rename(&snapshot, &spool).unwrap();
    let third = replay_forward_capture(&config, "sipp_branch_403_bye.pcap", 20);
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert_eq!(third.status.code(), Some(0), "not forwarded: {stderr}");
    let lines = stored(&out);
    let records: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["record"]["type"] != "gap")
        .collect();
    let expected = spooled_count(&first) + spooled_count(&second) + spooled_count(&third);
    assert_eq!(records.len(), expected, "every record once: {lines:#?}");
    let mut ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), lines.len(), "an id stored twice");
    let gap = lines
        .iter()
        .find(|l| l["record"]["reason"] == "epoch_reused")
        .unwrap_or_else(|| panic!("the new epoch is not announced: {lines:#?}"));
    assert!(gap["record"]["epoch"].as_u64().is_some(), "{gap}");
    assert!(c.log().contains("Sequence went backwards"), "{}", c.log());
}

/// An upgrade over a spool an earlier version left: its store (`gen-<G>`, the layout the
/// versions before store formats wrote — records in parts included) is taken over by the
/// real `teledge replay --forward` with its ids, and the collector's files hold every record
/// exactly once, under the id it was spooled with, the new ones after them. (Two real
/// versions, both directions and SIGKILL: scripts/upgrade-campaign.sh.)
#[test]
fn a_spool_an_earlier_version_left_is_forwarded_under_its_ids() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let forward = teledge::config::load_forward(&config).unwrap();
    // Call records of many streams are ~9 kB, a day's statistics more: stored in parts.
    let written: Vec<Vec<u8>> = (0..9)
        .map(|i| record(i, [100, 9_000, 40_000][i % 3], "earlier"))
        .collect();
    spool_records(&forward, &written);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spool.join("manifest.json")).unwrap()).unwrap();
    let epoch = manifest["epoch"].as_u64().unwrap();
    // The store as an earlier version names it.
    let store = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().ends_with("gen-0"))
        .unwrap();
    std::fs::rename(&store, spool.join("gen-0")).unwrap();

    let run = replay_forward(&config, 20);
    assert!(run.status.success(), "{run:?}");
    assert!(
        !spool.join("gen-0").exists(),
        "the earlier store is deleted once taken over"
    );
    let lines = stored(&out);
    let earlier: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["record"]["marker"] == "earlier")
        .collect();
    let ids: Vec<String> = earlier.iter().map(|l| l["id"].to_string()).collect();
    let want: Vec<String> = (0..9)
        .map(|seq| format!("\"edge-01:{epoch}:{seq}\""))
        .collect();
    assert_eq!(
        ids, want,
        "each record once, under the id it was spooled with"
    );
    for (line, payload) in earlier.iter().zip(&written) {
        let sent: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(line["record"], sent);
    }
    // The replayed calls come after, in the same epoch, no id given twice.
    let later: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["record"]["marker"] != "earlier")
        .collect();
    assert!(!later.is_empty());
    for line in later {
        let id = line["id"].as_str().unwrap();
        let seq: u64 = id.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            id.starts_with(&format!("edge-01:{epoch}:")) && seq >= 9,
            "{id}"
        );
    }
}
