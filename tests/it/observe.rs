//! Observability and systemd: the exposition text, the HTTP endpoint, sd_notify on real
//! sockets, the watchdog, and the unit file checked by systemd's own tools.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use teledge::observe::health::{Health, HealthThresholds, Stage};
use teledge::observe::http::{self, Endpoint};
use teledge::observe::metrics::LABEL_OVERFLOW_METRIC;
use teledge::observe::systemd::{Notifier, Watchdog};
use teledge::observe::AgentMetrics;
use teledge::seal::Keyring;
use teledge::spool::{Spool, SpoolConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample line: name, labels (unescaped), value.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A strict reader of the text format 0.0.4, written from the format's description, so the
/// test does not trust the renderer's own idea of it. Returns the samples and, per family,
/// its type; fails on any line it does not understand.
fn parse_exposition(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut types = HashMap::new();
    let mut helps = HashMap::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "exposition must end with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a name and a text");
            assert!(valid_name(name), "{line}");
            assert!(!help.is_empty(), "{line}");
            assert!(
                helps.insert(name.to_owned(), help.to_owned()).is_none(),
                "two HELP: {line}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a type");
            assert!(helps.contains_key(name), "TYPE before HELP: {line}");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let sample = parse_sample(line);
            assert!(
                types.contains_key(&sample.name),
                "sample before its TYPE: {line}"
            );
            if types[&sample.name] == "counter" {
                assert!(sample.name.ends_with("_total"), "{line}");
                assert!(sample.value >= 0.0, "{line}");
            }
            samples.push(sample);
        }
    }
    (samples, types)
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "{line}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            let start = chars.peek().map(|(i, _)| *i).expect("label name");
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let eq = eq.unwrap_or_else(|| panic!("label without '=': {line}"));
            let label = &after[start..eq];
            assert!(valid_name(label) && !label.contains(':'), "{line}");
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?}: {line}"),
                    },
                    Some('"') => break,
                    Some('\n') | None => panic!("unterminated label value: {line}"),
                    Some(c) => value.push(c),
                }
            }
            labels.push((label.to_owned(), value));
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &after[i + 1..];
                    break;
                }
                other => panic!("expected ',' or '}}', got {other:?}: {line}"),
            }
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && s.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
    })
}

#[test]
fn exposition_parses_line_by_line_with_escaped_label_values() {
    let m = AgentMetrics::new();
    let awkward = "eth0 \"tap\" \\ a\nb";
    m.source_packets.with(&[awkward]).add(42);
    m.source_bytes.with(&["eth0"]).add(4200);
    m.decode_errors.with(&["sip_parse"]).inc();
    m.calls_active.set(12);
    m.records_produced.with(&["call"]).add(3);
    m.spool_oldest_age_seconds.set(1.5);
    m.uplink_client_cert_not_after_timestamp_seconds
        .set_source(|| Some(1.9e9));
    let (samples, types) = parse_exposition(&m.render());

    assert_eq!(
        find(
            &samples,
            "teledge_source_packets_total",
            &[("source", awkward)]
        )
        .unwrap()
        .value,
        42.0
    );
    assert_eq!(
        find(&samples, "teledge_calls_active", &[]).unwrap().value,
        12.0
    );
    assert_eq!(
        find(&samples, "teledge_spool_oldest_age_seconds", &[])
            .unwrap()
            .value,
        1.5
    );
    assert_eq!(
        find(
            &samples,
            "teledge_uplink_client_cert_not_after_timestamp_seconds",
            &[]
        )
        .unwrap()
        .value,
        1.9e9
    );
    assert_eq!(
        find(
            &samples,
            "teledge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .unwrap()
        .value,
        1.0
    );
    // Scrape-time values without a source yet are left out, but their family is declared.
    assert!(find(&samples, "teledge_spool_records", &[]).is_none());
    assert_eq!(types["teledge_spool_records"], "gauge");
    assert!(types.keys().all(|n| n.starts_with("teledge_")));
}

#[test]
fn label_sets_beyond_the_cap_share_one_series_and_are_counted() {
    let m = AgentMetrics::new();
    for i in 0..1000 {
        m.source_packets.with(&[&format!("if{i}")]).inc();
    }
    let (samples, _) = parse_exposition(&m.render());
    let series: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "teledge_source_packets_total")
        .collect();
    // The cap (32) plus the one overflow series.
    assert_eq!(series.len(), 33);
    let total: f64 = series.iter().map(|s| s.value).sum();
    assert_eq!(total, 1000.0, "no bump is lost, overflowed ones are pooled");
    assert_eq!(
        find(
            &samples,
            "teledge_source_packets_total",
            &[("source", "_overflow")]
        )
        .unwrap()
        .value,
        968.0
    );
    assert_eq!(
        find(
            &samples,
            LABEL_OVERFLOW_METRIC,
            &[("family", "teledge_source_packets_total")]
        )
        .unwrap()
        .value,
        968.0
    );
}

#[test]
fn spool_levels_are_read_at_scrape_time() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(
        SpoolConfig::new(dir.path().join("spool"), "edge-01"),
        Keyring::new((1, [7; 32]), &[]),
    )
    .unwrap();
    spool.append(b"{\"type\":\"call\"}").unwrap();
    spool.append(b"{\"type\":\"call\"}").unwrap();
    let spool = Arc::new(Mutex::new(spool));
    let m = AgentMetrics::new();
    m.watch_spool(spool.clone());
    let (samples, _) = parse_exposition(&m.render());
    assert_eq!(
        find(&samples, "teledge_spool_records", &[]).unwrap().value,
        2.0
    );
    assert!(find(&samples, "teledge_spool_bytes", &[]).unwrap().value > 0.0);
    assert!(find(&samples, "teledge_spool_disk_bytes", &[]).is_some());
    assert_eq!(
        find(
            &samples,
            "teledge_spool_records_dropped_total",
            &[("reason", "oldest")]
        )
        .unwrap()
        .value,
        0.0
    );
    for (name, label) in [
        (
            "teledge_spool_records_dropped_total",
            ("reason", "unreadable"),
        ),
        ("teledge_spool_quarantines_total", ("event", "quarantined")),
        ("teledge_spool_quarantines_total", ("event", "pruned")),
    ] {
        assert_eq!(find(&samples, name, &[label]).unwrap().value, 0.0, "{name}");
    }
    // A scrape while the spool is busy does not wait: it shows the last values.
    let guard = spool.lock().unwrap();
    let started = Instant::now();
    let (samples, _) = parse_exposition(&m.render());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        find(&samples, "teledge_spool_records", &[]).unwrap().value,
        2.0
    );
    drop(guard);
    let status = m.status(SystemTime::now()).to_string();
    assert_eq!(status, "calls 0 active, queue 2 records, no upload yet");
}

/// One HTTP/1.1 request over a fresh connection; returns status, head and body.
async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn http_endpoint_serves_metrics_and_health_then_shuts_down() {
    let metrics = Arc::new(AgentMetrics::new());
    metrics.calls_active.set(3);
    let health = Arc::new(Health::new(
        &[Stage::Capture, Stage::SpoolWriter],
        HealthThresholds::default(),
    ));
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        Endpoint::new(metrics.clone(), health.clone()),
        stop.clone(),
    ));

    let (status, head, body) = get(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let (samples, _) = parse_exposition(&body);
    assert_eq!(
        find(&samples, "teledge_calls_active", &[]).unwrap().value,
        3.0
    );

    // The spool is not open yet: degraded, and says why.
    let (status, head, body) = get(addr, "GET", "/health").await;
    assert_eq!(status, 503);
    assert!(head.contains("content-type: application/json"), "{head}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "degraded");
    assert_eq!(report["reasons"][0], "spool is not open");

    health.set_spool_open(true);
    health.progress(Stage::Capture);
    health.progress(Stage::SpoolWriter);
    health.uplink_acked();
    let (status, _, body) = get(addr, "GET", "/health").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "ok");
    assert_eq!(report["stages"].as_array().unwrap().len(), 2);

    assert_eq!(get(addr, "GET", "/nope").await.0, 404);
    assert_eq!(get(addr, "POST", "/metrics").await.0, 405);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the endpoint stops on the shutdown signal")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A connection from `source` (another loopback address: Linux routes all of 127/8 to lo).
async fn connect_from(source: &str, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

fn closed_by(metrics: &AgentMetrics, reason: &str) -> u64 {
    metrics.observe_connections_closed.with(&[reason]).get()
}

/// Regression: the endpoint took 16 connections from anyone and left the rest in the
/// backlog, so one address that opened connections and sent nothing kept a scraper waiting
/// behind it for minutes (each of its connections held a slot for the 5 s head timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_keep_a_scraper_out() {
    let metrics = Arc::new(AgentMetrics::new());
    let health = Arc::new(Health::new(&[Stage::Capture], HealthThresholds::default()));
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        Endpoint::new(metrics.clone(), health),
        stop.clone(),
    ));
    // The flood: 300 connections from 127.0.0.2 that never send a byte, all open at once.
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(connect_from("127.0.0.2", addr).await);
    }
    // The scraper, from 127.0.0.1, is answered at once, not after the flood's head timeouts.
    let started = Instant::now();
    let (status, _, body) =
        tokio::time::timeout(Duration::from_secs(3), get(addr, "GET", "/metrics"))
            .await
            .expect("a scraper gets through beside the flood");
    assert_eq!(status, 200);
    assert!(
        body.contains("teledge_observe_connections_closed_total"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // The flood kept its share and no more; the rest was refused and counted.
    assert!(
        closed_by(&metrics, "per_address") >= (300 - http::MAX_CONNECTIONS_PER_ADDRESS) as u64,
        "{}",
        closed_by(&metrics, "per_address")
    );
    drop(flood);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Regression: a peer that sent requests and never read the answers held its connection
/// (and slot) for ever: nothing bounded a write. Now a write that waits for the peer
/// ends the connection, counted, and the others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_reads_nothing_back_is_disconnected_and_counted() {
    use tokio::io::AsyncWriteExt;
    let metrics = Arc::new(AgentMetrics::new());
    let health = Arc::new(Health::new(&[Stage::Capture], HealthThresholds::default()));
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let bounds = http::Bounds {
        write_stall_timeout: Duration::from_secs(1),
        ..http::Bounds::default()
    };
    let server = tokio::spawn(http::serve_with(
        listener,
        Endpoint::new(metrics.clone(), health),
        bounds,
        stop.clone(),
    ));
    // Eight connections (the address's share), each writing pipelined requests for ever
    // and reading nothing: the answers fill both socket buffers.
    let mut writers = Vec::new();
    for _ in 0..http::MAX_CONNECTIONS_PER_ADDRESS {
        let mut tcp = connect_from("127.0.0.2", addr).await;
        writers.push(tokio::spawn(async move {
            let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
            // Ends when the endpoint closes the connection (a reset or a broken pipe).
            while tcp.write_all(&request).await.is_ok() {}
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while closed_by(&metrics, "write_stalled") < http::MAX_CONNECTIONS_PER_ADDRESS as u64 {
        assert!(
            Instant::now() < deadline,
            "stalled connections still open: {} closed",
            closed_by(&metrics, "write_stalled")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the connection was closed")
            .unwrap();
    }
    // Their slots are free again: the same address is served.
    let tcp = connect_from("127.0.0.2", addr).await;
    drop(tcp);
    assert_eq!(get(addr, "GET", "/health").await.0, 503);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A request head larger than the endpoint reads is answered 431 and counted, not buffered.
#[tokio::test]
async fn an_oversized_request_head_is_refused_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let metrics = Arc::new(AgentMetrics::new());
    let health = Arc::new(Health::new(&[Stage::Capture], HealthThresholds::default()));
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        Endpoint::new(metrics.clone(), health),
        stop.clone(),
    ));
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cookie = "a".repeat(64 << 10);
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(closed_by(&metrics, "head_too_large"), 1);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn check_notifications(notifier: &Notifier, socket: &UnixDatagram) {
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    notifier.ready().unwrap();
    assert_eq!(receive(socket), "READY=1\n");
    notifier
        .status("calls 12 active, queue 340 records, last upload 4 s ago")
        .unwrap();
    assert_eq!(
        receive(socket),
        "STATUS=calls 12 active, queue 340 records, last upload 4 s ago\n"
    );
    notifier.watchdog().unwrap();
    assert_eq!(receive(socket), "WATCHDOG=1\n");
    notifier.reloading().unwrap();
    let reload = receive(socket);
    let usec: u64 = reload
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|r| r.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{reload:?}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    notifier.stopping().unwrap();
    assert_eq!(receive(socket), "STOPPING=1\n");
}

#[test]
fn sd_notify_reaches_a_socket_bound_at_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let notifier = Notifier::for_socket(path.to_str().unwrap()).unwrap();
    assert!(notifier.is_enabled());
    check_notifications(&notifier, &socket);
}

#[test]
fn sd_notify_reaches_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "teledge-test-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    let notifier = Notifier::for_socket(&format!("@{name}")).unwrap();
    check_notifications(&notifier, &socket);
}

fn drain_pings(socket: &UnixDatagram) -> usize {
    let mut buf = [0u8; 256];
    let mut pings = 0;
    while let Ok(n) = socket.recv(&mut buf) {
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
        pings += 1;
    }
    pings
}

/// Runs the pipeline's side for `span`: a progress every `every` if `progressing`.
async fn run_for(health: &Health, span: Duration, progressing: bool) {
    let every = Duration::from_millis(30);
    let mut elapsed = Duration::ZERO;
    while elapsed < span {
        if progressing {
            health.progress(Stage::SpoolWriter);
        }
        tokio::time::sleep(every).await;
        elapsed += every;
    }
}

// Time is paused: the watchdog's ticks and the pipeline's sleeps advance together and the
// counts below are exact, not subject to a busy machine's scheduling.
#[tokio::test(start_paused = true)]
async fn watchdog_stops_pinging_when_progress_stops_and_resumes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_nonblocking(true).unwrap();
    let metrics = AgentMetrics::new();
    let health = Arc::new(Health::new(
        &[Stage::SpoolWriter],
        HealthThresholds::default(),
    ));
    // WatchdogSec=200ms: a tick every 100 ms.
    let dog = Watchdog::new(
        Notifier::for_socket(path.to_str().unwrap()).unwrap(),
        Duration::from_millis(200),
    )
    .with_counters(
        metrics.watchdog_pings.clone(),
        metrics.watchdog_withheld.clone(),
    );
    assert_eq!(dog.tick_period(), Duration::from_millis(100));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(dog.run(health.clone().watchdog_probe(), stop.clone()));

    run_for(&health, Duration::from_millis(1000), true).await;
    let while_progressing = drain_pings(&socket);
    assert!(while_progressing >= 8, "{while_progressing}");

    run_for(&health, Duration::from_millis(1000), false).await;
    // At most the first tick of the stall still sees the last progress before it.
    let while_stuck = drain_pings(&socket);
    assert!(while_stuck <= 1, "{while_stuck}");
    assert!(metrics.watchdog_withheld.get() >= 8);

    run_for(&health, Duration::from_millis(1000), true).await;
    let after_resuming = drain_pings(&socket);
    assert!(after_resuming >= 8, "{after_resuming}");
    assert_eq!(
        metrics.watchdog_pings.get() as usize,
        while_progressing + while_stuck + after_resuming
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
}

/// systemd-analyze, or a loud failure: CI must have it (Debian package `systemd`).
fn systemd_analyze() -> Command {
    let path = Path::new("/usr/bin/systemd-analyze");
    assert!(
        path.exists(),
        "systemd-analyze is missing: install the Debian package `systemd` (scripts/test.sh does)"
    );
    Command::new(path)
}

fn unit_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

/// A copy of the unit whose ExecStart= binaries exist here: verify checks them.
fn unit_copy(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(unit_dir().join("teledge.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/teledge run"));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(Path::new("/bin/kill").exists());
    let copy = dir.join("teledge.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/teledge", env!("CARGO_BIN_EXE_teledge")),
    )
    .unwrap();
    copy
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let copy = unit_copy(dir.path());
    let out = systemd_analyze().arg("verify").arg(&copy).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The only complaint tolerated: the teledge user does not exist on this machine
    // (sysusers.d creates it on install).
    let other: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !(l.contains("teledge") && l.to_lowercase().contains("user") && l.contains("not found"))
        })
        .collect();
    assert!(other.is_empty(), "systemd-analyze verify:\n{stderr}");
    assert!(
        out.status.success() || !stderr.trim().is_empty(),
        "verify failed without saying why: {out:?}"
    );
}

#[test]
fn systemd_analyze_security_exposure_stays_low() {
    let dir = tempfile::tempdir().unwrap();
    let copy = unit_copy(dir.path());
    let out = systemd_analyze()
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for teledge.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // 1.8 when written (systemd 252); the rest is what capture and serial ports need.
    assert!(score <= 2.0, "exposure rose to {score}:\n{stdout}");
}

#[test]
fn sysusers_file_parses() {
    let path = Path::new("/usr/bin/systemd-sysusers");
    assert!(
        path.exists(),
        "systemd-sysusers is missing: install the Debian package `systemd`"
    );
    let out = Command::new(path)
        .arg("--dry-run")
        .arg(unit_dir().join("teledge.sysusers"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("Failed"), "{stderr}");
}

/// `/health` of a real agent (`teledge run`) whose uplink fails in a given way.
mod agent_health {
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::daemon::free_port;
    use crate::support::data_path;
    use crate::uplink::{collector, collector_on, pki, stored, Pki};

    /// The forwarding sections (also a `replay --forward` configuration).
    fn forward_sections(pki: &Pki, dir: &Path, url: &str) -> String {
        format!(
            r#"
[node]
id = "edge-01"
[privacy]
mode = "keyed_hash"
site_key_file = "{site}"
[spool]
dir = "{spool}"
key_file = "{key}"
key_id = 1
flush_interval_ms = 20
[uplink]
url = "{url}"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{client_key}"
timeout_ms = 2000
"#,
            site = pki.path("site.key").display(),
            spool = dir.join("spool").display(),
            key = pki.path("spool.key").display(),
            ca = pki.path("ca.pem").display(),
            cert = pki.path("edge-01.pem").display(),
            client_key = pki.path("edge-01.key").display(),
        )
    }

    /// Five records waiting in the spool: `replay --forward` towards a collector that is
    /// not there leaves them spooled (exit 3).
    fn spool_five_records(pki: &Pki, dir: &Path) {
        let config = dir.join("forward.toml");
        let url = format!("https://localhost:{}/v1/batches", free_port());
        std::fs::write(&config, forward_sections(pki, dir, &url)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args([
                "replay",
                "--no-progress",
                "--forward-timeout",
                "1",
                "--forward",
            ])
            .arg(&config)
            .arg(data_path("sngrep_aaa.pcap"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
    }

    struct Agent(Child);

    impl Drop for Agent {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start_agent(pki: &Pki, dir: &Path, url: &str, metrics_port: u16) -> Agent {
        let config: PathBuf = dir.join("teledge.toml");
        // HEP on loopback: a source is required, and this one stays quiet.
        let text = format!(
            "{}\n[hep]\nudp = \"127.0.0.1:{}\"\n[observe]\nlisten = \"127.0.0.1:{metrics_port}\"\nuplink_failing_after_s = 2\n",
            forward_sections(pki, dir, url),
            free_port()
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent(child)
    }

    fn http_get(port: u16, path: &str) -> String {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).unwrap();
        text
    }

    /// GET /health over HTTP: (status, report).
    fn health(port: u16) -> Option<(u16, serde_json::Value)> {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(
            tcp,
            "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, serde_json::from_str(body).ok()?))
    }

    /// Polls `/health` until it answers `status`; returns the report and when it came.
    fn wait_for(port: u16, status: u16, within: Duration) -> (serde_json::Value, Duration) {
        wait_until(port, |s, _| s == status, within)
    }

    /// Polls `/health` until `want(status, report)`; returns the report and when it came.
    fn wait_until(
        port: u16,
        want: impl Fn(u16, &serde_json::Value) -> bool,
        within: Duration,
    ) -> (serde_json::Value, Duration) {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < within {
            if let Some((s, report)) = health(port) {
                if want(s, &report) {
                    return (report, start.elapsed());
                }
                last = Some((s, report));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("/health never answered as wanted within {within:?}; last: {last:#?}");
    }

    fn reasons(report: &serde_json::Value) -> String {
        report["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Degraded within the configured time (2 s, plus start and a poll), naming `cause`, and
    /// never claiming a success that did not happen.
    fn assert_degraded_by(port: u16, cause: &str) -> serde_json::Value {
        // Before the configured time the agent has been failing, but says ok.
        let (early, _) = wait_for(port, 200, Duration::from_secs(20));
        assert_eq!(early["uplink_ever_acknowledged"], false, "{early:#}");
        assert!(
            early["uplink_last_success_seconds_ago"].is_null(),
            "{early:#}"
        );
        // Records wait from the start; the first attempt fails within a second of it.
        let (report, after) = wait_until(
            port,
            |s, r| s == 503 && reasons(r).contains("uplink failing for"),
            Duration::from_secs(20),
        );
        assert!(after < Duration::from_secs(10), "{after:?}");
        let why = reasons(&report);
        assert!(why.contains("uplink failing for"), "{why}");
        assert!(why.contains("no batch acknowledged since start"), "{why}");
        assert!(why.contains("spool not drained"), "{why}");
        assert!(why.contains(cause), "{cause:?} not in {why}");
        assert_eq!(report["uplink_ever_acknowledged"], false);
        assert!(report["uplink_last_success_seconds_ago"].is_null());
        assert!(report["uplink_failing_seconds"].as_f64().unwrap() > 2.0);
        report
    }

    #[test]
    fn health_degrades_while_the_collector_is_stopped_and_recovers_when_it_is_back() {
        let pki = pki();
        let work = tempfile::tempdir().unwrap();
        spool_five_records(&pki, work.path());
        let port = free_port();
        let metrics = free_port();
        let _agent = start_agent(
            &pki,
            work.path(),
            &format!("https://localhost:{port}/v1/batches"),
            metrics,
        );
        assert_degraded_by(metrics, "Connection refused");
        let out = work.path().join("collected");
        let c = collector_on(&pki, "collector", &out, port);
        // The agent's backoff is 1 s doubling to 60 s: after a few seconds of failures the
        // next attempt is at most 16 s away.
        let (report, _) = wait_for(metrics, 200, Duration::from_secs(40));
        assert_eq!(report["uplink_ever_acknowledged"], true, "{report:#}");
        assert!(report["uplink_last_success_seconds_ago"].as_f64().unwrap() < 30.0);
        assert!(report["uplink_failing_seconds"].is_null());
        // The five spooled before, and the running agent's heartbeat from its start.
        let lines = stored(&out);
        let kinds: Vec<&str> = lines
            .iter()
            .map(|l| l["record"]["type"].as_str().unwrap_or("marker"))
            .collect();
        assert_eq!(lines.len(), 6, "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == "heartbeat").count(), 1);
        drop(c);
    }

    #[test]
    fn health_degrades_on_a_collector_of_another_ca() {
        let pki = pki();
        let work = tempfile::tempdir().unwrap();
        spool_five_records(&pki, work.path());
        let out = work.path().join("collected");
        let c = collector(&pki, "collector-rogue", &out);
        let metrics = free_port();
        let _agent = start_agent(
            &pki,
            work.path(),
            &format!("https://localhost:{}/v1/batches", c.port),
            metrics,
        );
        assert_degraded_by(metrics, "UnknownIssuer");
        assert!(stored(&out).is_empty());
    }

    #[test]
    fn health_degrades_on_a_wrong_collector_path_and_nothing_is_dead_lettered() {
        let pki = pki();
        let work = tempfile::tempdir().unwrap();
        spool_five_records(&pki, work.path());
        let out = work.path().join("collected");
        let c = collector(&pki, "collector", &out);
        let metrics = free_port();
        let _agent = start_agent(
            &pki,
            work.path(),
            &format!("https://localhost:{}/v1/batchez", c.port),
            metrics,
        );
        let report = assert_degraded_by(metrics, "collector answered 404 to /v1/batchez");
        assert_eq!(report["dead_letter_records"], 0);
        assert!(stored(&out).is_empty());
        // The alert as metrics: failures by kind, and the uplink failing now.
        let text = http_get(metrics, "/metrics");
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        };
        assert!(value("teledge_uplink_failures_total{kind=\"status_404\"}") >= 2.0);
        assert!(value("teledge_uplink_consecutive_failures") >= 2.0);
        assert_eq!(value("teledge_uplink_records_dead_lettered_total"), 0.0);
        assert_eq!(value("teledge_uplink_batches_acked_total"), 0.0);
    }

    #[test]
    fn dead_letters_degrade_health_until_resent_to_the_running_agent() {
        let pki = pki();
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("collected");
        let c = collector(&pki, "collector", &out);
        let url = format!("https://localhost:{}/v1/batches", c.port);
        // A record refused earlier (by a collector since fixed), held as a dead letter.
        let forward = work.path().join("forward.toml");
        std::fs::write(&forward, forward_sections(&pki, work.path(), &url)).unwrap();
        let config = teledge::config::load_forward(&forward).unwrap();
        teledge::uplink::dead_letter::DeadLetters::for_uplink(
            &config.uplink,
            &config.node_id,
            &config.keyring,
        )
        .store(
            teledge::spool::RecordId { epoch: 0, seq: 7 },
            br#"{"type":"test","marker":"refused-once"}"#,
            422,
            "unprocessable",
        )
        .unwrap();
        let metrics = free_port();
        let _agent = start_agent(&pki, work.path(), &url, metrics);
        let (report, _) = wait_for(metrics, 503, Duration::from_secs(20));
        let why = reasons(&report);
        assert!(
            why.contains("1 record(s) refused by the collector held as dead letters"),
            "{why}"
        );
        assert_eq!(report["dead_letter_records"], 1);
        // The operator resends while the agent runs; it requeues and forwards the record.
        let resend = Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args(["dead-letters", "resend", "--config"])
            .arg(work.path().join("teledge.toml"))
            .output()
            .unwrap();
        assert!(resend.status.success(), "{resend:?}");
        let (report, _) = wait_for(metrics, 200, Duration::from_secs(20));
        assert_eq!(report["dead_letter_records"], 0);
        // Besides the agent's heartbeat from its start.
        let lines: Vec<_> = stored(&out)
            .into_iter()
            .filter(|l| l["record"]["type"] != "heartbeat")
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["record"]["marker"], "refused-once");
        assert_ne!(lines[0]["id"], "edge-01:0:7", "resent under a new id");
    }
}
