//! NATS JetStream end to end with the real Debian `nats-server` 2.9 (`scripts/test.sh`
//! installs it): the agent's JetStream sink (a `tls://` uplink url), the collector
//! publishing what it accepts (`collect --nats`) and reading the stream back
//! (`collect --from-nats`). Real TLS with certificates of the test's site CA (the server
//! requires client certificates, `verify: true`), real SIGKILL of servers, a real 3-node
//! cluster on loopback with an R3 stream.
//!
//! Each test counts the stream's messages and reads every one back (its `Nats-Msg-Id` and
//! its line's id): a lost record or a record stored twice would show in either.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use teledge::collect::{BusConfig, StreamPlan};
use teledge::uplink::client::{Backoff, Forwarder};
use teledge::uplink::{NatsAuth, NatsSettings};

use crate::uplink::{pki, record, spool_records, stored, Pki};

use crate::daemon::free_port;

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A nats-server with JetStream and TLS (client certificates of the site CA required);
/// SIGKILLed when dropped.
struct Nats {
    child: Option<Child>,
    conf: PathBuf,
    port: u16,
    http: u16,
    name: String,
    log: PathBuf,
}

impl Nats {
    /// Node `name` with its store in `dir`; `cluster`: (route port, every node's route port).
    fn start(pki: &Pki, dir: &Path, name: &str, cluster: Option<(u16, &[u16])>) -> Nats {
        Nats::start_with(pki, dir, name, cluster, "")
    }

    /// [`Nats::start`] with `extra` configuration (an `authorization` block, say).
    fn start_with(
        pki: &Pki,
        dir: &Path,
        name: &str,
        cluster: Option<(u16, &[u16])>,
        extra: &str,
    ) -> Nats {
        assert!(
            Path::new(NATS_SERVER).exists(),
            "{NATS_SERVER} is required: run ./scripts/test.sh, which installs the Debian package nats-server"
        );
        let port = free_port();
        let http = free_port();
        let store = dir.join(format!("{name}-store"));
        let cluster = match cluster {
            Some((own, all)) => {
                let routes: Vec<String> = all
                    .iter()
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                format!(
                    "cluster {{ name: tc, listen: 127.0.0.1:{own}, routes: [{}] }}",
                    routes.join(", ")
                )
            }
            None => String::new(),
        };
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                r#"
server_name: {name}
listen: 127.0.0.1:{port}
http: 127.0.0.1:{http}
jetstream {{ store_dir: "{store}", max_mem: 64MB, max_file: 1GB }}
tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca}", verify: true, timeout: 2 }}
{cluster}
{extra}
"#,
                store = store.display(),
                cert = pki.path("nats-server.pem").display(),
                key = pki.path("nats-server.key").display(),
                ca = pki.path("ca.pem").display(),
            ),
        )
        .unwrap();
        let mut nats = Nats {
            child: None,
            conf,
            port,
            http,
            name: name.to_owned(),
            log: dir.join(format!("{name}.log")),
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no flush.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `GET /healthz` answers 200: a meta leader exists and the local streams are current.
    fn healthy(&self) -> bool {
        let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", self.http)) else {
            return false;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if tcp.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
    }

    fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} not healthy within {within:?}: {}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bus settings of a client with `cert` of the test PKI (`ca` its trust root).
fn bus(pki: &Pki, servers: &[String], ca: &str, cert: &str, replicas: usize) -> BusConfig {
    BusConfig {
        nats: NatsSettings {
            servers: servers.to_vec(),
            subject_prefix: "teledge".into(),
            stream: Some("TELEDGE".into()),
            max_in_flight: 64,
            auth: NatsAuth::Certificate,
        },
        ca_file: pki.path(ca),
        cert_file: pki.path(&format!("{cert}.pem")),
        key_file: pki.path(&format!("{cert}.key")),
        tls12_allowed: false,
        timeout: Duration::from_secs(2),
        create_stream: Some(StreamPlan {
            replicas,
            duplicate_window: Duration::from_secs(120),
        }),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Makes the stream (R`replicas`), retrying while a fresh cluster elects its leaders.
fn create_stream(rt: &tokio::runtime::Runtime, pki: &Pki, servers: &[String], replicas: usize) {
    let config = bus(pki, servers, "ca.pem", "bus-client", replicas);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rt.block_on(teledge::collect::connect_bus(&config, 1)) {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("stream not made yet: {}", teledge::report::chain(&e));
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("stream not made: {}", teledge::report::chain(&e)),
        }
    }
}

/// The stream as stored: its message count and, per message, (`Nats-Msg-Id`, the line).
struct Contents {
    messages: u64,
    lines: Vec<(String, serde_json::Value)>,
}

impl Contents {
    /// Every id once, each message's `Nats-Msg-Id` its line's id, `expected` of them.
    fn assert_each_once(&self, expected: usize) {
        let ids: HashSet<&str> = self.lines.iter().map(|(id, _)| id.as_str()).collect();
        for (msg_id, line) in &self.lines {
            assert_eq!(line["id"].as_str(), Some(msg_id.as_str()), "{line}");
        }
        assert_eq!(
            (self.messages, self.lines.len(), ids.len()),
            (expected as u64, expected, expected),
            "messages in the stream, read back, distinct ids"
        );
    }
}

fn read_stream(rt: &tokio::runtime::Runtime, pki: &Pki, servers: &[String]) -> Contents {
    // A cluster that just lost or regained a node may time out an API request for a few
    // seconds (its Raft groups elect leaders): the whole read is tried again then.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rt.block_on(try_read_stream(pki, servers)) {
            Ok(contents) => return contents,
            Err(e) if Instant::now() < deadline => {
                eprintln!("stream not read yet: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("stream not read: {e}"),
        }
    }
}

async fn try_read_stream(pki: &Pki, servers: &[String]) -> Result<Contents, String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let config = BusConfig {
        create_stream: None,
        ..bus(pki, servers, "ca.pem", "bus-client", 1)
    };
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let publisher = teledge::collect::connect_bus(&config, 1)
        .await
        .map_err(|e| teledge::report::chain(&e))?;
    let mut stream = publisher
        .context()
        .get_stream("TELEDGE")
        .await
        .map_err(|e| text(&e))?;
    let messages = stream.info().await.map_err(|e| text(&e))?.state.messages;
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| text(&e))?;
    // Read until every stored message is in: after a leader change an ephemeral consumer can
    // deliver in bursts, so an empty fetch ends the read only once 5 s of them pass, and a
    // short read is an error that `read_stream` retries as a whole.
    let mut lines = Vec::new();
    let mut empty = 0;
    while (lines.len() as u64) < messages {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| text(&e))?;
        let before = lines.len();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| text(&e))?;
            let msg_id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let line = serde_json::from_slice(&message.payload).map_err(|e| text(&e))?;
            lines.push((msg_id, line));
        }
        if lines.len() == before {
            empty += 1;
            if empty == 10 {
                return Err(format!("read {} of {messages} messages", lines.len()));
            }
        } else {
            empty = 0;
        }
    }
    Ok(Contents { messages, lines })
}

/// A forwarding configuration of `node` publishing to `servers` (first is the url).
fn nats_config(pki: &Pki, spool: &Path, node: &str, servers: &[String], batch: usize) -> PathBuf {
    let more: Vec<String> = servers[1..].iter().map(|s| format!("{s:?}")).collect();
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
url = "{url}"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{client_key}"
batch_records = {batch}
timeout_ms = 2000
[uplink.nats]
servers = [{more}]
stream = "TELEDGE"
max_in_flight = 64
"#,
        url = servers[0],
        more = more.join(", "),
        spool = spool.display(),
        key = pki.path("spool.key").display(),
        site = pki.path("site.key").display(),
        ca = pki.path("ca.pem").display(),
        cert = pki.path(&format!("{node}.pem")).display(),
        client_key = pki.path(&format!("{node}.key")).display(),
    );
    let path = spool.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Forwards `config`'s spool on another thread until drained (or `within` passes); the
/// forwarder's totals are shared while it runs.
fn forward_in_background(
    config: teledge::config::ForwardConfig,
    within: Duration,
) -> (
    std::thread::JoinHandle<Result<teledge::uplink::client::UplinkStats, String>>,
    Arc<Mutex<teledge::uplink::client::UplinkStats>>,
) {
    let progress = Arc::new(Mutex::new(Default::default()));
    let shared = Arc::clone(&progress);
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (spool, _) =
            teledge::spool::Spool::open(config.spool.clone(), config.keyring.clone()).unwrap();
        let spool = Mutex::new(spool);
        let mut forwarder = Forwarder::new(&config.node_id, &config.uplink, &config.keyring)
            .unwrap()
            .with_backoff(Backoff::new(
                Duration::from_millis(100),
                Duration::from_millis(1000),
            ));
        forwarder.on_progress(move |stats, _| *shared.lock().unwrap() = *stats);
        let result = rt
            .block_on(forwarder.forward_until_drained(&spool, Some(Instant::now() + within)))
            .map_err(|e| teledge::report::chain(&e));
        let left = spool.lock().unwrap().stats().records;
        assert_eq!(left, 0, "records left in the spool: {result:?}");
        result
    });
    (handle, progress)
}

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| record(i, 200, "nats")).collect()
}

#[test]
fn the_agent_publishes_each_record_once_and_the_stream_drops_resends() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&pki, work.path(), "n1", None);
    nats.wait_healthy(Duration::from_secs(10));
    let rt = runtime();
    let servers = vec![nats.url()];
    create_stream(&rt, &pki, &servers, 1);

    // 1000 records, batches of 100: every one published, none a duplicate.
    let spool = work.path().join("spool");
    let config =
        teledge::config::load_forward(&nats_config(&pki, &spool, "edge-01", &servers, 100))
            .unwrap();
    assert!(config.uplink.nats.is_some());
    spool_records(&config, &records(1000));
    let (forwarding, _) = forward_in_background(config.clone(), Duration::from_secs(30));
    let stats = forwarding.join().unwrap().unwrap();
    assert_eq!(
        (stats.records, stats.duplicates, stats.batches),
        (1000, 0, 10)
    );
    let contents = read_stream(&rt, &pki, &servers);
    contents.assert_each_once(1000);
    // The subject is <prefix>.<node>.<kind> and the message the HTTPS batch line.
    let (_, first) = &contents.lines[0];
    assert_eq!(first["record"]["type"], "test");
    assert_eq!(first["record"]["n"], 0);

    // The same records again under the same ids (a batch whose PubAcks were lost): every
    // one acknowledged as a duplicate, nothing stored twice.
    let resend: Vec<teledge::uplink::nats::Outgoing> = contents
        .lines
        .iter()
        .map(|(id, line)| {
            teledge::uplink::nats::Outgoing::line(
                "teledge",
                "edge-01",
                id.clone(),
                line["record"].to_string().as_bytes(),
            )
            .unwrap()
        })
        .collect();
    let published = rt.block_on(async {
        let publisher =
            teledge::collect::connect_bus(&bus(&pki, &servers, "ca.pem", "bus-client", 1), 1)
                .await
                .unwrap();
        publisher.publish(resend).await.unwrap()
    });
    assert_eq!((published.new, published.duplicates), (0, 1000));
    read_stream(&rt, &pki, &servers).assert_each_once(1000);

    // Killed and restarted mid-stream: 3000 more, the server SIGKILLed once a third is in.
    let spool2 = work.path().join("spool2");
    let config2 =
        teledge::config::load_forward(&nats_config(&pki, &spool2, "edge-02", &servers, 100))
            .unwrap();
    spool_records(&config2, &records(3000));
    let (forwarding, progress) = forward_in_background(config2, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.lock().unwrap().records < 1000 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    nats.kill();
    std::thread::sleep(Duration::from_millis(700));
    nats.spawn();
    let stats = forwarding.join().unwrap().unwrap();
    assert!(
        stats.retries > 0,
        "the kill went unnoticed (retries {})",
        stats.retries
    );
    assert_eq!(stats.records + stats.duplicates, 3000, "{stats:?}");
    nats.wait_healthy(Duration::from_secs(10));
    read_stream(&rt, &pki, &servers).assert_each_once(4000);
}

#[test]
fn tls_with_a_wrong_ca_or_a_foreign_client_certificate_is_refused() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let nats = Nats::start(&pki, work.path(), "n1", None);
    nats.wait_healthy(Duration::from_secs(10));
    let rt = runtime();
    let servers = vec![nats.url()];
    let connect = |ca: &str, cert: &str| {
        let config = BusConfig {
            create_stream: None,
            ..bus(&pki, &servers, ca, cert, 1)
        };
        rt.block_on(teledge::collect::connect_bus(&config, 1))
            .map(drop)
            .map_err(|e| teledge::report::chain(&e))
    };
    // The server's certificate is not of the CA the client trusts.
    let wrong_ca = connect("rogue-ca.pem", "edge-01").unwrap_err();
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");
    // The client's certificate is of another CA: the server refuses it.
    let foreign = connect("ca.pem", "edge-01-rogue").unwrap_err();
    assert!(
        foreign.to_lowercase().contains("certificate") || foreign.contains("tls"),
        "{foreign}"
    );
    // The right pair connects.
    connect("ca.pem", "edge-01").unwrap();

    // The agent with the wrong CA: a TLS failure, retried, and its records stay spooled.
    let spool = work.path().join("spool");
    let path = nats_config(&pki, &spool, "edge-01", &servers, 10);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &pki.path("ca.pem").display().to_string(),
        &pki.path("rogue-ca.pem").display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    let config = teledge::config::load_forward(&path).unwrap();
    spool_records(&config, &records(5));
    assert_refused_and_kept(&rt, &config, 5);
}

#[test]
fn a_cluster_node_killed_under_load_loses_nothing_and_stores_nothing_twice() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let routes = [free_port(), free_port(), free_port()];
    let mut nodes: Vec<Nats> = (0..3)
        .map(|i| {
            Nats::start(
                &pki,
                work.path(),
                &format!("n{}", i + 1),
                Some((routes[i], &routes)),
            )
        })
        .collect();
    for node in &nodes {
        node.wait_healthy(Duration::from_secs(30));
    }
    let rt = runtime();
    let servers: Vec<String> = nodes.iter().map(Nats::url).collect();
    create_stream(&rt, &pki, &servers, 3);
    let leader = rt.block_on(async {
        let config = BusConfig {
            create_stream: None,
            ..bus(&pki, &servers, "ca.pem", "bus-client", 3)
        };
        let publisher = teledge::collect::connect_bus(&config, 1).await.unwrap();
        let mut stream = publisher.context().get_stream("TELEDGE").await.unwrap();
        let info = stream.info().await.unwrap();
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap()
    });

    let spool = work.path().join("spool");
    let config =
        teledge::config::load_forward(&nats_config(&pki, &spool, "edge-01", &servers, 100))
            .unwrap();
    spool_records(&config, &records(3000));
    let (forwarding, progress) = forward_in_background(config, Duration::from_secs(90));
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.lock().unwrap().records < 600 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The stream leader is SIGKILLed under load; the others elect a new one (4–9 s).
    let at = nodes.iter().position(|n| n.name == leader).unwrap();
    nodes[at].kill();
    let killed = Instant::now();
    let stats = forwarding.join().unwrap().unwrap();
    eprintln!(
        "leader {leader} killed; drained {:?} later: {stats:?}",
        killed.elapsed()
    );
    assert!(stats.retries > 0, "the kill went unnoticed: {stats:?}");
    assert_eq!(stats.records + stats.duplicates, 3000, "{stats:?}");
    let survivors: Vec<String> = nodes
        .iter()
        .filter(|n| n.name != leader)
        .map(Nats::url)
        .collect();
    read_stream(&rt, &pki, &survivors).assert_each_once(3000);
    // Back in the cluster, the killed node catches up to the same stream.
    nodes[at].spawn();
    nodes[at].wait_healthy(Duration::from_secs(30));
    read_stream(&rt, &pki, &[nodes[at].url()]).assert_each_once(3000);
}

/// Runs `teledge` with `args`, failing the test with its output on a non-zero exit.
fn teledge(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn two_collectors_publish_two_agents_into_one_stream_once_and_it_reads_back_into_files() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let nats = Nats::start(&pki, work.path(), "n1", None);
    nats.wait_healthy(Duration::from_secs(10));
    let rt = runtime();
    let servers = vec![nats.url()];
    let bus_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--nats".into(),
            nats.url(),
            "--nats-cert".into(),
            pki.path("bus-client.pem").display().to_string(),
            "--nats-key".into(),
            pki.path("bus-client.key").display().to_string(),
            "--nats-create-stream".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    // Collector A writes files and publishes; collector B publishes only (no --out).
    let out_a = work.path().join("a");
    let args_a = bus_args(&[]);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let a = crate::uplink::collector_with(&pki, "collector", &out_a, 0, &args_a, None);
    let b = {
        let log = work.path().join("b.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args(["collect", "--listen", "127.0.0.1:0", "--ca"])
            .arg(pki.path("ca.pem"))
            .arg("--cert")
            .arg(pki.path("collector.pem"))
            .arg("--key")
            .arg(pki.path("collector.key"))
            .args(bus_args(&[]))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        (KillOnDrop(child), port)
    };

    // edge-01 replays a capture through A; edge-02 through B, and a copy of edge-02's spool
    // taken before that is sent again through A: the same ids through another collector.
    let spool1 = work.path().join("spool1");
    let config1 =
        crate::uplink::forward_config(&pki, &spool1, "edge-01", "edge-01", "ca.pem", a.port);
    let out = crate::uplink::replay_forward(&config1, 30);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spool2 = work.path().join("spool2");
    let config2 = crate::uplink::forward_config(&pki, &spool2, "edge-02", "edge-02", "ca.pem", b.1);
    let forward2 = teledge::config::load_forward(&config2).unwrap();
    spool_records(&forward2, &records(300));
    let copy = work.path().join("spool2-copy");
    copy_dir(&spool2, &copy);
    let stats = forward_with(&rt, &forward2);
    assert_eq!((stats.records, stats.duplicates), (300, 0));
    let mut again = forward2.clone();
    again.spool.dir = copy;
    again.uplink.port = a.port;
    let stats = forward_with(&rt, &again);
    // A's files had none of them; the stream had them all.
    assert_eq!(stats.records, 300);

    let from_a = stored(&out_a);
    let edge01: Vec<&serde_json::Value> = from_a
        .iter()
        .filter(|l| l["id"].as_str().unwrap().starts_with("edge-01:"))
        .collect();
    assert!(!edge01.is_empty());
    let contents = read_stream(&rt, &pki, &servers);
    contents.assert_each_once(edge01.len() + 300);

    // The round trip: the stream back into files, the same lines as A's (what the HTTPS
    // path stored), one per id.
    let back = work.path().join("back");
    let summary = teledge(&[
        "collect",
        "--ca",
        &pki.path("ca.pem").display().to_string(),
        "--from-nats",
        &nats.url(),
        "--nats-cert",
        &pki.path("bus-client.pem").display().to_string(),
        "--nats-key",
        &pki.path("bus-client.key").display().to_string(),
        "--out",
        &back.display().to_string(),
        "--idle-exit-ms",
        "1500",
    ]);
    let summary: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(summary["stored"], edge01.len() + 300, "{summary}");
    assert_eq!(summary["refused"], 0, "{summary}");
    let read_back: BTreeMap<String, serde_json::Value> = stored(&back)
        .into_iter()
        .map(|l| (l["id"].as_str().unwrap().to_owned(), l))
        .collect();
    assert_eq!(read_back.len(), edge01.len() + 300);
    let by_a: BTreeMap<String, serde_json::Value> = from_a
        .into_iter()
        .map(|l| (l["id"].as_str().unwrap().to_owned(), l))
        .collect();
    assert_eq!(
        read_back, by_a,
        "what came back from the stream is what A stored"
    );
    drop(b);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn forward_with(
    rt: &tokio::runtime::Runtime,
    config: &teledge::config::ForwardConfig,
) -> teledge::uplink::client::UplinkStats {
    let (spool, _) =
        teledge::spool::Spool::open(config.spool.clone(), config.keyring.clone()).unwrap();
    let spool = Mutex::new(spool);
    let mut forwarder = Forwarder::new(&config.node_id, &config.uplink, &config.keyring).unwrap();
    // A liveness bound, not a speed test: on a loaded machine a publish's ack can time out
    // and the retry waits its backoff (seen once at load 6 with 30 s).
    let stats = rt
        .block_on(
            forwarder
                .forward_until_drained(&spool, Some(Instant::now() + Duration::from_secs(120))),
        )
        .unwrap();
    assert_eq!(spool.lock().unwrap().stats().records, 0);
    stats
}

/// GET `path` from the agent's observability port: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Polls `path` until `want(status, body)`; panics with the last answer after `within`.
fn wait_http(port: u16, path: &str, within: Duration, want: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = http_get(port, path) {
            if want(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{path} never answered as wanted within {within:?}; last: {last:#?}");
}

#[test]
fn the_daemon_shows_jetstream_failures_in_metrics_and_health_and_recovers() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    // The server runs, but no stream takes the agent's subjects yet.
    let nats = Nats::start(&pki, work.path(), "n1", None);
    nats.wait_healthy(Duration::from_secs(10));
    let servers = vec![nats.url()];
    let spool = work.path().join("spool");
    let config = nats_config(&pki, &spool, "edge-01", &servers, 100);
    let metrics = free_port();
    let text = format!(
        "{}\n[hep]\nudp = \"127.0.0.1:{}\"\n[observe]\nlisten = \"127.0.0.1:{metrics}\"\nuplink_failing_after_s = 1\n",
        std::fs::read_to_string(&config).unwrap(),
        free_port()
    );
    let config = work.path().join("teledge.toml");
    std::fs::write(&config, text).unwrap();
    let _agent = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    // Its heartbeat cannot land: /health degrades naming the cause, /metrics counts it.
    let health = wait_http(metrics, "/health", Duration::from_secs(20), |s, b| {
        s == 503 && b.contains("uplink failing for")
    });
    assert!(health.contains("no stream found"), "{health}");
    let text = wait_http(metrics, "/metrics", Duration::from_secs(5), |_, b| {
        b.contains("teledge_uplink_failures_total{kind=\"no_stream\"}")
    });
    assert!(
        text.contains("teledge_uplink_batches_acked_total 0"),
        "{text}"
    );

    // The stream appears: the agent delivers, health recovers.
    let rt = runtime();
    create_stream(&rt, &pki, &servers, 1);
    wait_http(metrics, "/health", Duration::from_secs(40), |s, b| {
        s == 200 && b.contains("\"uplink_ever_acknowledged\":true")
    });
    let contents = read_stream(&rt, &pki, &servers);
    assert!(contents
        .lines
        .iter()
        .any(|(_, l)| l["record"]["type"] == "heartbeat"));
    let ids: HashSet<&str> = contents.lines.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len() as u64, contents.messages);
}

/// NATS credentials besides the client certificate: a user with a password from a file, and
/// an nkey seed from a file, each accepted by a real nats-server whose `authorization` block
/// names them; a wrong password is refused (the records stay spooled).
#[test]
fn users_with_a_password_file_or_an_nkey_seed_publish_and_a_wrong_password_is_refused() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let pair = nkeys::KeyPair::new_user();
    let seed_file = work.path().join("edge.nk");
    std::fs::write(&seed_file, format!("{}\n", pair.seed().unwrap())).unwrap();
    let auth = format!(
        r#"authorization {{ users = [
  {{ user: "edge-01", password: "right horse battery" }},
  {{ user: "reader", password: "reader-pw" }},
  {{ nkey: "{}" }}
] }}"#,
        pair.public_key()
    );
    let nats = Nats::start_with(&pki, work.path(), "n1", None, &auth);
    nats.wait_healthy(Duration::from_secs(10));
    let rt = runtime();
    let servers = vec![nats.url()];
    let reader_password = work.path().join("reader.password");
    std::fs::write(&reader_password, "reader-pw\n").unwrap();
    let mut reader = bus(&pki, &servers, "ca.pem", "bus-client", 1);
    reader.nats.auth = NatsAuth::UserPassword {
        user: "reader".into(),
        password_file: reader_password,
    };
    // Without credentials the client certificate alone no longer gets in.
    let bare = bus(&pki, &servers, "ca.pem", "bus-client", 1);
    assert!(rt
        .block_on(teledge::collect::connect_bus(&bare, 1))
        .is_err());
    rt.block_on(teledge::collect::connect_bus(&reader, 1))
        .map_err(|e| teledge::report::chain(&e))
        .unwrap();

    let agent = |spool: &str, credentials: String| {
        let spool = work.path().join(spool);
        let path = nats_config(&pki, &spool, "edge-01", &servers, 10);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&credentials);
        std::fs::write(&path, text).unwrap();
        teledge::config::load_forward(&path).unwrap()
    };
    let password_file = work.path().join("edge.password");
    std::fs::write(&password_file, "right horse battery\n").unwrap();
    let with_password = agent(
        "spool-password",
        format!(
            "user = \"edge-01\"\npassword_file = \"{}\"\n",
            password_file.display()
        ),
    );
    spool_records(&with_password, &records(10));
    let (forwarding, _) = forward_in_background(with_password, Duration::from_secs(20));
    assert_eq!(forwarding.join().unwrap().unwrap().records, 10);

    let with_nkey = agent(
        "spool-nkey",
        format!("nkey_seed_file = \"{}\"\n", seed_file.display()),
    );
    spool_records(&with_nkey, &records(10));
    let (forwarding, _) = forward_in_background(with_nkey, Duration::from_secs(20));
    assert_eq!(forwarding.join().unwrap().unwrap().records, 10);

    // A wrong password: refused, retried, nothing leaves the spool.
    let wrong_file = work.path().join("wrong.password");
    std::fs::write(&wrong_file, "wrong\n").unwrap();
    let wrong = agent(
        "spool-wrong",
        format!(
            "user = \"edge-01\"\npassword_file = \"{}\"\n",
            wrong_file.display()
        ),
    );
    spool_records(&wrong, &records(3));
    assert_refused_and_kept(&rt, &wrong, 3);
}

/// Forwarding `config`'s spool for 2 s fails: retried, and all `spooled` records stay.
fn assert_refused_and_kept(
    rt: &tokio::runtime::Runtime,
    config: &teledge::config::ForwardConfig,
    spooled: u64,
) {
    let (spool, _) =
        teledge::spool::Spool::open(config.spool.clone(), config.keyring.clone()).unwrap();
    let spool = Mutex::new(spool);
    let mut forwarder = Forwarder::new(&config.node_id, &config.uplink, &config.keyring)
        .unwrap()
        .with_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(100),
        ));
    let result = rt.block_on(
        forwarder.forward_until_drained(&spool, Some(Instant::now() + Duration::from_secs(2))),
    );
    assert!(result.is_err(), "{result:?}");
    assert!(forwarder.stats.retries > 0);
    assert_eq!(spool.lock().unwrap().stats().records, spooled);
}
