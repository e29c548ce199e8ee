//! The status page over real HTTP (the endpoint's hyper server on a loopback port, requests
//! written by hand so the test sees the bytes on the wire): security headers, the 401/403
//! refusals and their counts, the token login with its cookie and its audit records, ETag
//! revalidation, the snapshot JSON filtered per viewer, and the Server-Sent Events framing
//! as snapshots are published. The browser test with a real call is in `status_browser`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use teledge::access::audit::AuditSink;
use teledge::access::{make_token, Access, AccessSettings, ServiceSet, Supervisor};
use teledge::observe::http::{self, Endpoint};
use teledge::observe::page::{Page, CSP};
use teledge::observe::status::{CallView, Snapshot};
use teledge::observe::{AgentMetrics, Health, HealthThresholds, Stage};
use teledge::record::audit::{AuditAction, AuditAuth, AuditOutcome};

pub(crate) struct Served {
    pub addr: std::net::SocketAddr,
    pub alice: String,
    pub bob: String,
    /// carol: views sales, like alice (another supervisor's share of the event streams).
    pub carol: String,
    /// dave: views sales too.
    pub dave: String,
    pub tx: tokio::sync::watch::Sender<Arc<Snapshot>>,
    pub audit: Arc<std::sync::Mutex<Vec<teledge::record::audit::AuditRecord>>>,
    pub metrics: Arc<AgentMetrics>,
    pub stop: CancellationToken,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn call(id: &str, service: &str, seq: u64) -> CallView {
    CallView {
        id: id.into(),
        service: Some(service.into()),
        caller: Some("h:caller".into()),
        callee: Some("h:callee".into()),
        state: "connected".into(),
        started: teledge::time::Timestamp::from_secs_nanos(1_767_225_600, 0),
        duration_s: seq as f64,
        talk_s: Some(seq as f64),
        caller_to_callee: None,
        callee_to_caller: None,
        listen: false,
    }
}

fn snapshot(seq: u64) -> Snapshot {
    Snapshot {
        seq,
        node: "edge-01".into(),
        calls: vec![
            call("h:sales-call", "sales", seq),
            call("h:hr-call", "hr", seq),
        ],
        ..Snapshot::default()
    }
}

/// An endpoint with the page: alice views everything and may listen to sales (monitorable),
/// bob has no permission at all.
pub(crate) async fn serve() -> Served {
    let (alice, alice_hash) = make_token().unwrap();
    let (bob, bob_hash) = make_token().unwrap();
    let (carol, carol_hash) = make_token().unwrap();
    let (dave, dave_hash) = make_token().unwrap();
    let access = Arc::new(Access::new(AccessSettings {
        supervisors: vec![
            Supervisor {
                id: "alice".into(),
                token_sha256: Some(alice_hash),
                cert_cn: None,
                view: ServiceSet::only(["sales"]),
                listen: ServiceSet::only(["sales"]),
            },
            Supervisor {
                id: "bob".into(),
                token_sha256: Some(bob_hash),
                cert_cn: None,
                view: ServiceSet::Nothing,
                listen: ServiceSet::Nothing,
            },
            Supervisor {
                id: "carol".into(),
                token_sha256: Some(carol_hash),
                cert_cn: None,
                view: ServiceSet::only(["sales"]),
                listen: ServiceSet::Nothing,
            },
            Supervisor {
                id: "dave".into(),
                token_sha256: Some(dave_hash),
                cert_cn: None,
                view: ServiceSet::only(["sales"]),
                listen: ServiceSet::Nothing,
            },
        ],
        monitorable: ["sales".to_owned()].into(),
        ..AccessSettings::default()
    }));
    let metrics = Arc::new(AgentMetrics::new());
    metrics.watch_access(&access);
    let health = Arc::new(Health::new(
        &[Stage::SpoolWriter],
        HealthThresholds::default(),
    ));
    let (sink, audit) = AuditSink::collecting("edge-01");
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(snapshot(1)));
    let stop = CancellationToken::new();
    let page = Page::new(access, sink, rx, Arc::clone(&metrics), stop.clone());
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let endpoint = Endpoint {
        page: Some(page),
        ..Endpoint::new(Arc::clone(&metrics), health)
    };
    let server = tokio::spawn(http::serve(listener, endpoint, stop.clone()));
    Served {
        addr,
        alice,
        bob,
        carol,
        dave,
        tx,
        audit,
        metrics,
        stop,
        server,
    }
}

/// One request (`Connection: close`); status, lowercase head, body.
pub(crate) async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    tcp.write_all(text.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut response))
        .await
        .expect("the response within 10 s")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

fn assert_secure(head: &str) {
    assert_eq!(
        header(head, "content-security-policy"),
        Some(CSP.to_ascii_lowercase().as_str()),
        "{head}"
    );
    assert!(!CSP.contains("unsafe-inline") && CSP.contains("script-src 'self'"));
    assert_eq!(header(head, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(head, "referrer-policy"), Some("no-referrer"));
}

/// Logs in with a token; the `name=value` of the session cookie.
pub(crate) async fn login(addr: std::net::SocketAddr, token: &str) -> String {
    let bearer = format!("Bearer {token}");
    let (status, head, _) =
        request(addr, "POST", "/api/login", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 204, "{head}");
    let cookie = header(&head, "set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    // The head is lowercased; the cookie's value is lowercase hex anyway.
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn without_a_valid_token_the_page_and_its_data_are_refused_and_counted() {
    let s = serve().await;
    // Nothing: 401 with the login form as the body, and the Bearer challenge.
    let (status, head, body) = request(s.addr, "GET", "/", &[]).await;
    assert_eq!(status, 401);
    assert_secure(&head);
    assert_eq!(
        header(&head, "www-authenticate"),
        Some("bearer realm=\"teledge\"")
    );
    assert!(body.contains("id=\"login\""), "{body}");
    assert!(!body.contains("h:sales-call"));
    for path in ["/api/snapshot", "/api/events"] {
        let (status, _, body) = request(s.addr, "GET", path, &[]).await;
        assert_eq!(status, 401, "{path}");
        assert!(!body.contains("h:sales-call"));
    }
    // A wrong token, a wrong cookie, another scheme: 401.
    let wrong = format!("Bearer {}0", s.alice);
    let (status, _, _) =
        request(s.addr, "GET", "/api/snapshot", &[("Authorization", &wrong)]).await;
    assert_eq!(status, 401);
    let (status, _, _) = request(s.addr, "GET", "/", &[("Cookie", "teledge_session=00ff")]).await;
    assert_eq!(status, 401);
    let (status, _, _) = request(s.addr, "POST", "/api/login", &[("Authorization", &wrong)]).await;
    assert_eq!(status, 401);
    // Bob is known but may view nothing: 403.
    let bob = format!("Bearer {}", s.bob);
    let (status, _, body) =
        request(s.addr, "GET", "/api/snapshot", &[("Authorization", &bob)]).await;
    assert_eq!(status, 403);
    assert!(body.contains("not_permitted"));
    // Every refusal counted, by reason.
    let (_, _, metrics) = request(s.addr, "GET", "/metrics", &[]).await;
    let count = |reason: &str| {
        let prefix = format!("teledge_access_refused_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in\n{metrics}"))
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(count("no_credentials"), 3.0);
    assert_eq!(count("bad_credentials"), 3.0);
    assert_eq!(count("not_permitted"), 1.0);
    // The refused login is audited, nobody named.
    let audit = s.audit.lock().unwrap().clone();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].action,
            audit[0].outcome,
            audit[0].principal.as_deref(),
            audit[0].status
        ),
        (AuditAction::Login, AuditOutcome::Refused, None, Some(401))
    );
    assert_eq!(audit[0].reason.as_deref(), Some("bad_credentials"));
    s.stop.cancel();
    s.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_token_login_gives_a_cookie_that_opens_the_page_filtered_to_the_viewer() {
    let s = serve().await;
    let cookie = login(s.addr, &s.alice).await;
    let audit = s.audit.lock().unwrap().clone();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].action,
            audit[0].outcome,
            audit[0].principal.as_deref(),
            audit[0].auth
        ),
        (
            AuditAction::Login,
            AuditOutcome::Ok,
            Some("alice"),
            AuditAuth::Token
        )
    );
    assert!(audit[0].client_address.starts_with("127.0.0.1:"));

    let (status, head, body) = request(s.addr, "GET", "/", &[("Cookie", &cookie)]).await;
    assert_eq!(status, 200);
    assert_secure(&head);
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    // No inline script or style anywhere in the page: only files from the agent.
    assert!(body.contains("<script src=\"/static/app.js\" defer></script>"));
    assert_eq!(body.matches("<script").count(), 1);
    assert!(!body.contains("style=") && !body.contains("<style") && !body.contains("onclick"));

    // The snapshot: alice sees sales (listenable), not hr.
    let (status, head, body) =
        request(s.addr, "GET", "/api/snapshot", &[("Cookie", &cookie)]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let calls = json["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["id"], "h:sales-call");
    assert_eq!(calls[0]["listen"], true);
    assert_eq!(json["calls_not_shown"], 1);

    // The embedded files: an ETag, and 304 when the browser has them.
    let (status, head, js) = request(s.addr, "GET", "/static/app.js", &[]).await;
    assert_eq!(status, 200);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.contains("EventSource"));
    let etag = header(&head, "etag").unwrap().to_owned();
    let (status, _, body) =
        request(s.addr, "GET", "/static/app.js", &[("If-None-Match", &etag)]).await;
    assert_eq!((status, body.as_str()), (304, ""));

    // Logout ends the session.
    let (status, _, _) = request(s.addr, "POST", "/api/logout", &[("Cookie", &cookie)]).await;
    assert_eq!(status, 204);
    let (status, _, _) = request(s.addr, "GET", "/api/snapshot", &[("Cookie", &cookie)]).await;
    assert_eq!(status, 401);
    s.stop.cancel();
    s.server.await.unwrap().unwrap();
}

/// Reads one SSE event (lines up to a blank line), skipping comments and `retry:`.
async fn next_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        if line.is_empty() {
            if fields.iter().any(|(k, _): &(String, String)| k == "event") {
                return fields;
            }
            fields.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (k, v) = line.split_once(": ").unwrap_or((&line, ""));
        fields.push((k.to_owned(), v.to_owned()));
    }
}

#[tokio::test]
async fn events_are_framed_as_server_sent_events_and_follow_the_snapshots() {
    let s = serve().await;
    let cookie = login(s.addr, &s.alice).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let text = format!(
        "GET /api/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nCookie: {cookie}\r\n\r\n"
    );
    tcp.write_all(text.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(tcp).lines();
    let mut head = Vec::new();
    loop {
        let line = lines.next_line().await.unwrap().unwrap();
        if line.is_empty() {
            break;
        }
        head.push(line.to_ascii_lowercase());
    }
    let head = head.join("\n");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    assert_eq!(header(&head, "x-accel-buffering"), Some("no"));
    assert_eq!(header(&head, "transfer-encoding"), Some("chunked"));
    // Chunked transfer: a size line, then the event text. Read the event lines through
    // the chunk framing by skipping the hex size lines.
    let mut events = Vec::new();
    while events.len() < 3 {
        let event = next_event(&mut lines).await;
        // Chunk size lines are bare hex numbers: drop them from the fields.
        let event: Vec<_> = event
            .into_iter()
            .filter(|(k, v)| !(v.is_empty() && u64::from_str_radix(k, 16).is_ok()))
            .collect();
        let id: u64 = event
            .iter()
            .find(|(k, _)| k == "id")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(
            event.iter().find(|(k, _)| k == "event").unwrap().1,
            "snapshot"
        );
        let data: Vec<_> = event.iter().filter(|(k, _)| k == "data").collect();
        assert_eq!(data.len(), 1, "one data line per event: {event:?}");
        let json: serde_json::Value = serde_json::from_str(&data[0].1).unwrap();
        assert_eq!(json["seq"], id);
        assert_eq!(
            json["calls"].as_array().unwrap().len(),
            1,
            "filtered: {json}"
        );
        events.push(id);
        // The daemon publishes the next one.
        s.tx.send_replace(Arc::new(snapshot(id + 1)));
    }
    assert_eq!(events, vec![1, 2, 3]);
    assert_eq!(s.metrics.status_streams.get(), 1);
    // Logging out ends the stream with a `logout` event at the next snapshot.
    let (status, _, _) = request(s.addr, "POST", "/api/logout", &[("Cookie", &cookie)]).await;
    assert_eq!(status, 204);
    s.tx.send_replace(Arc::new(snapshot(9)));
    // (The snapshot published after the third event may still come first.)
    let mut event = next_event(&mut lines).await;
    if event.iter().any(|(k, v)| k == "id" && v == "4") {
        event = next_event(&mut lines).await;
    }
    assert!(
        event.iter().any(|(k, v)| k == "event" && v == "logout"),
        "{event:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while s.metrics.status_streams.get() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stream's task ends");
    s.stop.cancel();
    s.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn event_streams_are_bounded_and_end_at_shutdown() {
    use teledge::observe::page::{MAX_STREAMS, MAX_STREAMS_PER_SUPERVISOR};
    let s = serve().await;
    let open_stream = |token: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let text = format!(
            "GET /api/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        tcp.write_all(text.as_bytes()).await.unwrap();
        let mut first = [0u8; 12];
        tcp.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        tcp
    };
    let refused = |token: &str| {
        let bearer = format!("Bearer {token}");
        async move {
            let (status, head, _) =
                request(s.addr, "GET", "/api/events", &[("Authorization", &bearer)]).await;
            assert_eq!(status, 503);
            assert_eq!(header(&head, "retry-after"), Some("10"));
        }
    };
    // Regression: one supervisor's tabs took every stream. Alice holds her share and no
    // more; carol still gets hers.
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_SUPERVISOR {
        open.push(open_stream(s.alice.clone()).await);
    }
    refused(&s.alice).await;
    assert_eq!(s.metrics.status_streams_refused.get(), 1);
    for _ in MAX_STREAMS_PER_SUPERVISOR..MAX_STREAMS {
        open.push(open_stream(s.carol.clone()).await);
    }
    // All of them open: nobody gets another, not even a supervisor with none.
    refused(&s.dave).await;
    assert_eq!(s.metrics.status_streams_refused.get(), 2);
    // Shutdown ends every stream: the server returns within its drain deadline.
    s.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), s.server)
        .await
        .expect("shutdown does not wait for open event streams")
        .unwrap()
        .unwrap();
    for mut tcp in open {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the stream was closed");
    }
}

/// `teledge supervisor-token`: a token, and the configuration lines with its SHA-256 (as an
/// independent SHA-256 implementation computes it).
pub(crate) fn supervisor_token(id: &str) -> (String, String) {
    let out = crate::daemon::teledge()
        .args(["supervisor-token", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix("tdg1_"))
        .map(|t| format!("tdg1_{t}"))
        .unwrap_or_else(|| panic!("no token in {text}"));
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("token_sha256 = \""))
        .map(|h| h.trim_end_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no hash line in {text}"));
    use sha2::Digest;
    let expected: String = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hash, expected, "token_sha256 is the SHA-256 of the token");
    assert!(
        text.contains(&format!("[[supervisor]]\nid = \"{id}\"\n")),
        "{text}"
    );
    assert!(!text.contains(&format!("token_sha256 = \"{token}")));
    (token, hash)
}

#[test]
fn supervisor_tokens_are_made_hashed_and_checked_with_the_configuration() {
    let (token, hash) = supervisor_token("alice");
    let (other, _) = supervisor_token("alice");
    assert_ne!(token, other, "every token is new");
    let refused = crate::daemon::teledge()
        .args(["supervisor-token", "no spaces"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(78));

    let pki = crate::uplink::pki();
    let dir = tempfile::tempdir().unwrap();
    let check = |sections: &str| {
        let config = crate::daemon::agent_config(&pki, dir.path(), 4433, sections, Some(9464));
        let out = crate::daemon::teledge()
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let services = "[hep]\nudp = \"127.0.0.1:9060\"\n[[service]]\nname = \"sales\"\nmonitorable = true\n[[service]]\nname = \"hr\"\n";
    let (code, text) = check(&format!(
        "[status]\nenabled = true\n{services}[[supervisor]]\nid = \"alice\"\ntoken_sha256 = \"{hash}\"\nview = [\"*\"]\nlisten = [\"sales\"]\n"
    ));
    assert_eq!(code, Some(0), "{text}");
    // Every problem, by its path: listen on a service that is not monitorable, a token
    // instead of its hash, an unknown service, a supervisor nobody can be, a duplicate id.
    let (code, text) = check(&format!(
        "[status]\nenabled = true\n{services}\
         [[supervisor]]\nid = \"alice\"\ntoken_sha256 = \"{hash}\"\nlisten = [\"hr\"]\n\
         [[supervisor]]\nid = \"bob\"\ntoken_sha256 = \"{token}\"\n\
         [[supervisor]]\nid = \"carol\"\ncert_cn = \"carol\"\nview = [\"nope\"]\n\
         [[supervisor]]\nid = \"alice\"\n"
    ));
    assert_eq!(code, Some(78), "{text}");
    for expected in [
        "supervisor[0].listen",
        "\"hr\" is not monitorable",
        "supervisor[1].token_sha256",
        "supervisor[2].view",
        "\"nope\" is not a [[service]]",
        "supervisor[3].id",
        "already a supervisor",
        "needs token_sha256 or cert_cn",
        "supervisor[2].cert_cn",
        "needs [status] client_ca_file",
    ] {
        assert!(text.contains(expected), "{expected} missing in:\n{text}");
    }
    assert!(!text.contains(&token), "the token is never echoed:\n{text}");
    // The page serves nobody anonymously.
    let (code, text) = check("[status]\nenabled = true\n[hep]\nudp = \"127.0.0.1:9060\"\n");
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("status.enabled"), "{text}");
}

/// One HTTPS request to the endpoint, with the client certificate `client` (a name in the
/// test PKI) or none; `Err` when the handshake fails.
async fn https_request(
    pki: &crate::uplink::Pki,
    addr: std::net::SocketAddr,
    client: Option<&str>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String, String), std::io::Error> {
    use teledge::uplink::tls::{load_certs, load_private_key, load_roots};
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(load_roots(&pki.path("ca.pem")).unwrap());
    let config = match client {
        Some(name) => builder
            .with_client_auth_cert(
                load_certs(&pki.path(&format!("{name}.pem"))).unwrap(),
                load_private_key(&pki.path(&format!("{name}.key"))).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let mut text = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    tls.write_all(text.as_bytes()).await?;
    let mut response = Vec::new();
    // TLS 1.3 reports a refused client certificate after the handshake, at the first read.
    tls.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response: {response:?}")))?;
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

#[tokio::test]
async fn over_https_a_client_certificate_of_the_site_ca_identifies_a_supervisor() {
    let pki = crate::uplink::pki();
    let (token, hash) = make_token().unwrap();
    let access = Arc::new(Access::new(AccessSettings {
        supervisors: vec![
            Supervisor {
                id: "carol".into(),
                token_sha256: None,
                cert_cn: Some("edge-01".into()),
                view: ServiceSet::All,
                listen: ServiceSet::Nothing,
            },
            Supervisor {
                id: "alice".into(),
                token_sha256: Some(hash),
                cert_cn: None,
                view: ServiceSet::All,
                listen: ServiceSet::Nothing,
            },
        ],
        secure_cookie: true,
        ..AccessSettings::default()
    }));
    let metrics = Arc::new(AgentMetrics::new());
    let health = Arc::new(Health::new(
        &[Stage::SpoolWriter],
        HealthThresholds::default(),
    ));
    let (sink, audit) = AuditSink::collecting("edge-01");
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(snapshot(1)));
    let stop = CancellationToken::new();
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let endpoint = Endpoint {
        page: Some(Page::new(
            access,
            sink,
            rx,
            Arc::clone(&metrics),
            stop.clone(),
        )),
        tls: Some(
            teledge::access::tls::server_config(
                &pki.path("collector.pem"),
                &pki.path("collector.key"),
                Some(&pki.path("ca.pem")),
            )
            .unwrap(),
        ),
        ..Endpoint::new(Arc::clone(&metrics), health)
    };
    let server = tokio::spawn(http::serve(listener, endpoint, stop.clone()));

    // Carol's certificate (CN edge-01, site CA): in, no token needed.
    let (status, _, body) = https_request(&pki, addr, Some("edge-01"), "/api/snapshot", &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("h:sales-call"));
    // A certificate of the site CA that names no supervisor: 401.
    let (status, _, _) = https_request(&pki, addr, Some("edge-02"), "/api/snapshot", &[])
        .await
        .unwrap();
    assert_eq!(status, 401);
    // A certificate of another CA: no TLS session at all.
    assert!(
        https_request(&pki, addr, Some("edge-01-rogue"), "/api/snapshot", &[])
            .await
            .is_err(),
        "a rogue CA's certificate is refused in the handshake"
    );
    // Without a certificate, a token still works, and the cookie is Secure.
    let (status, _, _) = https_request(&pki, addr, None, "/api/snapshot", &[])
        .await
        .unwrap();
    assert_eq!(status, 401);
    let bearer = format!("Bearer {token}");
    let (status, _, _) = https_request(
        &pki,
        addr,
        None,
        "/api/snapshot",
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    // Plain HTTP gets no answer from an HTTPS endpoint.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /api/snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut plain = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut plain)).await;
    assert!(!String::from_utf8_lossy(&plain).contains("h:sales-call"));
    assert!(audit.lock().unwrap().is_empty(), "no login was made");
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A daemon forwarding to the collector on `port`, its status page on and supervisor
/// "alice" allowed to listen to service "sales": its configuration file, runtime and
/// daemon.
fn start_with_a_listening_supervisor(
    pki: &crate::uplink::Pki,
    dir: &std::path::Path,
    port: u16,
) -> (
    std::path::PathBuf,
    tokio::runtime::Runtime,
    teledge::daemon::Daemon,
) {
    let (token, _) = make_token().unwrap();
    let hash = teledge::access::token_hash_hex(&token);
    let config_path = crate::daemon::agent_config(
        pki,
        dir,
        port,
        &format!(
            "[hep]\nudp = \"127.0.0.1:0\"\n[status]\nenabled = true\n\
             [[service]]\nname = \"sales\"\nmonitorable = true\n\
             [[supervisor]]\nid = \"alice\"\ntoken_sha256 = \"{hash}\"\nlisten = [\"sales\"]\n"
        ),
        Some(0),
    );
    let config = teledge::config::agent::load(&config_path).unwrap();
    let runtime = crate::daemon_in_process::runtime();
    let daemon = runtime
        .block_on(teledge::daemon::Daemon::start(config, &config_path))
        .unwrap();
    (config_path, runtime, daemon)
}

/// The daemon's audit sink for live listen sessions (the API the WHEP endpoint uses): a
/// session that ends on [`teledge::daemon::Daemon::listeners_token`] at shutdown still
/// reaches the spool and the collector, as exactly one record with its start and end.
#[test]
fn a_listen_session_ended_by_shutdown_is_audited_through_the_spool() {
    let pki = crate::uplink::pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = crate::uplink::collector(&pki, "collector", &out);
    let (_config_path, runtime, daemon) =
        start_with_a_listening_supervisor(&pki, dir.path(), c.port);
    let addr = daemon.observe_addr().unwrap();
    let (status, _, _) = runtime.block_on(request(addr, "GET", "/api/snapshot", &[]));
    assert_eq!(status, 401);
    let access = Arc::clone(daemon.access().unwrap());
    let principal = teledge::access::Principal {
        id: "alice".into(),
        auth: AuditAuth::Token,
        view: ServiceSet::Nothing,
        listen: ServiceSet::only(["sales"]),
    };
    access
        .check(
            &principal,
            Some("sales"),
            teledge::access::Permission::Listen,
        )
        .unwrap();
    let audit = daemon.audit().clone();
    let stop = daemon.listeners_token();
    let client = teledge::access::audit::Client {
        address: "192.0.2.7:50000".parse().unwrap(),
        user_agent: None,
    };
    // On the daemon's session tracker, as the WHEP service runs its sessions: a shutdown
    // waits for them before the record queue closes (regression: under load the session's
    // end came after it, and its audit record was dropped).
    let _guard = runtime.enter();
    let session = daemon.session_tracker().spawn(async move {
        let session = audit.listen_started(&principal, "h:0123", Some("sales"), "s1", 201, &client);
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancelled().await;
        // A session takes a moment to end (its peer connection closes): the shutdown waits.
        tokio::time::sleep(Duration::from_millis(500)).await;
        session.end(teledge::access::audit::ListenEnd::Shutdown);
    });
    std::thread::sleep(Duration::from_millis(500));
    let summary = runtime.block_on(daemon.shutdown());
    runtime.block_on(session).unwrap();
    assert_eq!(summary.records_left_in_spool, 0, "{summary:?}");
    let audits: Vec<serde_json::Value> = crate::uplink::stored(&out)
        .into_iter()
        .map(|l| l["record"].clone())
        .filter(|r| r["type"] == "audit")
        .collect();
    assert_eq!(audits.len(), 1, "{audits:#?}");
    let a = &audits[0];
    assert_eq!(a["action"], "listen");
    assert_eq!(a["outcome"], "ok");
    assert_eq!(a["reason"], "shutdown");
    assert_eq!(a["principal"], "alice");
    assert_eq!(a["call_id"], "h:0123");
    assert!(a["duration_s"].as_f64().unwrap() >= 0.3, "{a:#}");
    let schemas = crate::schema::Schemas::load();
    assert!(schemas.check(a).is_empty(), "{:?}", schemas.check(a));
}

/// A live-listen session that takes longer to end than the shutdown waits for
/// (`SESSIONS_END_WAIT`, 5 s) writes its audit record after the record queue closed: it goes
/// straight into the spool (and, the uplink still draining or at the next start, to the
/// collector). It was dropped, counted as `queue_closed` and announced nowhere.
#[test]
fn an_audit_record_offered_after_the_record_queue_closed_is_spooled() {
    let pki = crate::uplink::pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = crate::uplink::collector(&pki, "collector", &out);
    let (config_path, runtime, daemon) =
        start_with_a_listening_supervisor(&pki, dir.path(), c.port);
    let principal = teledge::access::Principal {
        id: "alice".into(),
        auth: AuditAuth::Token,
        view: ServiceSet::Nothing,
        listen: ServiceSet::only(["sales"]),
    };
    let audit = daemon.audit().clone();
    let stop = daemon.listeners_token();
    let metrics = Arc::clone(daemon.metrics());
    let client = teledge::access::audit::Client {
        address: "192.0.2.7:50000".parse().unwrap(),
        user_agent: None,
    };
    let _guard = runtime.enter();
    let session = daemon.session_tracker().spawn(async move {
        let session = audit.listen_started(&principal, "h:late", Some("sales"), "s1", 201, &client);
        stop.cancelled().await;
        // Longer than the shutdown waits for sessions: the record queue closes first.
        tokio::time::sleep(Duration::from_secs(6)).await;
        session.end(teledge::access::audit::ListenEnd::Shutdown);
    });
    std::thread::sleep(Duration::from_millis(300));
    runtime.block_on(daemon.shutdown());
    runtime.block_on(session).unwrap();
    assert_eq!(
        metrics.records_dropped.with(&["queue_closed"]).get(),
        0,
        "nothing dropped as queue_closed"
    );
    drop(metrics);
    // At the collector, or still in the spool (the uplink's drain may have ended first).
    let records = crate::uplink::collected_or_spooled(&out, &config_path);
    let audits: Vec<&serde_json::Value> = records.iter().filter(|r| r["type"] == "audit").collect();
    assert_eq!(audits.len(), 1, "{records:#?}");
    assert_eq!(audits[0]["call_id"], "h:late");
    assert_eq!(audits[0]["reason"], "shutdown");
}

/// Refusals without valid credentials beyond the audit bound (60 a minute) are announced
/// by one gap record when their minute ends; a stop within the minute announced them
/// nowhere (the task waiting for the minute's end does not outlive the daemon). Now the
/// shutdown announces them.
#[test]
fn refusals_suppressed_in_the_last_minute_before_a_stop_are_announced() {
    use crate::daemon_in_process::runtime;
    let pki = crate::uplink::pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = crate::uplink::collector(&pki, "collector", &out);
    let config_path = crate::daemon::agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!(
            "[hep]\nudp = \"127.0.0.1:0\"\n[status]\nenabled = true\n\
             [[supervisor]]\nid = \"alice\"\ntoken_sha256 = \"{}\"\nview = [\"*\"]\n",
            teledge::access::token_hash_hex(&make_token().unwrap().0)
        ),
        Some(0),
    );
    let config = teledge::config::agent::load(&config_path).unwrap();
    let runtime = runtime();
    let daemon = runtime
        .block_on(teledge::daemon::Daemon::start(config, &config_path))
        .unwrap();
    let client = teledge::access::audit::Client {
        address: "192.0.2.7:50000".parse().unwrap(),
        user_agent: None,
    };
    {
        let _guard = runtime.enter();
        for _ in 0..70 {
            daemon
                .audit()
                .login(Err(teledge::access::Denied::BadCredentials), 401, &client);
        }
    }
    assert_eq!(daemon.audit().suppressed(), 10);
    runtime.block_on(daemon.shutdown());
    let records = crate::uplink::collected_or_spooled(&out, &config_path);
    let announced: u64 = records
        .iter()
        .filter(|r| {
            r["type"] == "gap"
                && r["reason"] == "records_not_spooled"
                && r["detail"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("audit records")
        })
        .map(|r| r["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(announced, 10);
}

/// SIGHUP revokes a supervisor at once (token and open session), without a restart.
#[test]
fn a_reload_that_removes_a_supervisor_locks_them_out_at_once() {
    use crate::daemon_in_process::runtime;
    let pki = crate::uplink::pki();
    let dir = tempfile::tempdir().unwrap();
    let c = crate::uplink::collector(&pki, "collector", &dir.path().join("collected"));
    let (alice, _) = make_token().unwrap();
    let (bob, _) = make_token().unwrap();
    let supervisor = |id: &str, token: &str| {
        format!(
            "[[supervisor]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\nview = [\"*\"]\n",
            teledge::access::token_hash_hex(token)
        )
    };
    let base = "[hep]\nudp = \"127.0.0.1:0\"\n[status]\nenabled = true\n";
    let config_path = crate::daemon::agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!(
            "{base}{}{}",
            supervisor("alice", &alice),
            supervisor("bob", &bob)
        ),
        Some(0),
    );
    let config = teledge::config::agent::load(&config_path).unwrap();
    let runtime = runtime();
    let mut daemon = runtime
        .block_on(teledge::daemon::Daemon::start(config, &config_path))
        .unwrap();
    let addr = daemon.observe_addr().unwrap();
    let cookie = runtime.block_on(login(addr, &alice));
    let get = |headers: &[(&str, &str)]| {
        runtime
            .block_on(request(addr, "GET", "/api/snapshot", headers))
            .0
    };
    let alice_bearer = format!("Bearer {alice}");
    assert_eq!(get(&[("Cookie", &cookie)]), 200);

    let new_path = crate::daemon::agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!("{base}{}", supervisor("bob", &bob)),
        Some(0),
    );
    let new = teledge::config::agent::load(&new_path).unwrap();
    let plan = runtime.block_on(daemon.reload(&new));
    assert!(plan.applied.contains(&"supervisor"), "{plan:?}");
    assert_eq!(get(&[("Cookie", &cookie)]), 401, "her open session ends");
    assert_eq!(
        get(&[("Authorization", &alice_bearer)]),
        401,
        "her token is refused"
    );
    let bob_bearer = format!("Bearer {bob}");
    assert_eq!(get(&[("Authorization", &bob_bearer)]), 200);
    runtime.block_on(daemon.shutdown());
}
