//! HEP input: the SIP inside the HEP fixtures against TShark, and the listener over UDP, TCP
//! (odd-sized writes, garbage between frames) and TLS, with authentication and malformed
//! frames.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use teledge::decode::hep::{self, HepErrorKind, ProtoType};
use teledge::decode::link;
use teledge::decode::sip::{self, StartLine};
use teledge::dissect::Frame;
use teledge::sources::capture_file;
use teledge::sources::hep::{HepEvent, HepInput, HepListener, HepListenerSettings, HepStats};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const HEP_CAPTURES: [&str; 2] = ["hep.pcap", "hep3_compressed.pcapng"];

/// The UDP payloads (HEP frames) of a capture, with their frame numbers.
fn hep_frames(capture: &str) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    capture_file::read_frames(
        std::io::Cursor::new(&data(capture)[..]),
        |frame: &Frame<'_>, _| {
            let ip = link::ip_payload(frame.link, frame.data).unwrap().unwrap();
            let (slice, _) = etherparse::LaxIpSlice::from_slice(ip).unwrap();
            let udp = etherparse::UdpSlice::from_slice(slice.payload().payload).unwrap();
            out.push((frame.number, udp.payload().to_vec()));
        },
    )
    .unwrap();
    out
}

/// The SIP inside a HEP frame as a (frame, Call-ID, start, CSeq) key.
fn sip_key(frame_no: u64, frame: &hep::HepFrame<'_>) -> Option<MessageKey> {
    if frame.proto_type != ProtoType::Sip {
        return None;
    }
    let msg = sip::parse(&frame.payload).unwrap();
    let start = match msg.start {
        StartLine::Request { method, .. } => method.as_str().to_owned(),
        StartLine::Response { status, .. } => status.to_string(),
    };
    Some((
        frame_no,
        msg.call_id.to_owned(),
        start,
        format!("{} {}", msg.cseq.number, msg.cseq.method),
    ))
}

#[test]
fn hep_inner_sip_matches_tshark() {
    for capture in HEP_CAPTURES {
        let expected = tshark_messages(capture);
        assert!(!expected.is_empty(), "{capture}: empty reference");
        // Through the replay decode path (HEP recognised inside UDP by its magic)...
        let mut got = teledge_messages(capture);
        got.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(got, want, "{capture}: replay path");
        // ...and through the decoder alone.
        let direct: Vec<MessageKey> = hep_frames(capture)
            .iter()
            .filter_map(|(n, bytes)| sip_key(*n, &hep::parse(bytes).unwrap()))
            .collect();
        assert_eq!(direct, expected, "{capture}: decoder");
    }
    assert_eq!(tshark_messages("hep.pcap").len(), 6);
    assert_eq!(tshark_messages("hep3_compressed.pcapng").len(), 21);
}

#[test]
fn hep_fixture_chunks_decode_as_documented() {
    let frames = hep_frames("hep.pcap");
    let first = hep::parse(&frames[0].1).unwrap();
    assert_eq!(
        first.src,
        "192.168.1.1:5060".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(
        first.dst,
        "192.168.1.2:5060".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(first.capture_id, Some(2001));
    assert_eq!(first.auth_key.as_deref(), Some(&b"myHep"[..]));
    assert_eq!(first.correlation_id_str(), Some("qgf3dm9rudi@127.0.0.1"));
    let types: Vec<u8> = frames
        .iter()
        .map(|(_, b)| hep::parse(b).unwrap().proto_type.code())
        .collect();
    assert_eq!(types, [1, 1, 1, 1, 100, 1, 1, 5]);
    for (_, bytes) in hep_frames("hep3_compressed.pcapng") {
        let f = hep::parse(&bytes).unwrap();
        assert!(f.compressed, "captagent compresses every payload (zlib)");
        assert_eq!(f.ip_protocol, hep::IpProtocol::Tcp);
    }
}

#[test]
fn hep_rtcp_json_joins_its_call_in_replay() {
    let (calls, summary) = replay("hep.pcap");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.call_id, "qgf3dm9rudi@127.0.0.1");
    assert_eq!(call.final_status, Some(407));
    // Frame 8: {"ssrc":451916597, "report_blocks":[{"source_ssrc":898343773, "ia_jitter":1,
    // "fraction_lost":0, "packets_lost":0, "highest_seq_no":20881}]}
    assert_eq!(call.hep_rtcp.len(), 1);
    let r = &call.hep_rtcp[0];
    assert_eq!(r.reporter_ssrc.as_deref(), Some("0x1AEFB335"));
    assert_eq!(r.source_ssrc.as_deref(), Some("0x358BA35D"));
    assert_eq!(r.reports, 1);
    assert_eq!(r.last_jitter, Some(1));
    assert_eq!(r.last_cumulative_lost, Some(0));
    assert_eq!(r.last_highest_seq, Some(20881));
    assert_eq!(summary.decode.hep_frames, 8);
    assert_eq!(summary.decode.sip_messages_hep, 6);
    assert_eq!(summary.decode.hep_other, 2);
    assert_eq!(summary.decode.hep_errors, 0);
}

/// A running listener on loopback.
struct Running {
    listener_udp: Option<SocketAddr>,
    listener_tcp: Option<SocketAddr>,
    listener_tls: Option<SocketAddr>,
    stats: Arc<HepStats>,
    /// Where the listener's events are counted (the daemon passes its own).
    metrics: Arc<teledge::observe::AgentMetrics>,
    rx: mpsc::Receiver<HepEvent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(settings: HepListenerSettings, capacity: usize) -> Running {
    let stats = Arc::new(HepStats::default());
    let (tx, rx) = mpsc::channel(capacity);
    let metrics = Arc::new(teledge::observe::AgentMetrics::new());
    let listener = HepListener::bind(settings, Arc::clone(&stats), Arc::clone(&metrics), tx)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let (listener_udp, listener_tcp, listener_tls) = (
        listener.udp_addr(),
        listener.tcp_addr(),
        listener.tls_addr(),
    );
    let task = tokio::spawn(listener.run(
        stop.clone(),
        std::sync::Arc::new(|component, _| panic!("{component} panicked in the listener")),
    ));
    Running {
        listener_udp,
        listener_tcp,
        listener_tls,
        stats,
        metrics,
        rx,
        stop,
        task,
    }
}

fn local() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

impl Running {
    async fn events(&mut self, n: usize) -> Vec<HepEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            let event = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} events", out.len()))
                .unwrap();
            out.push(event);
        }
        out
    }

    /// Waits until `f` holds of the counters.
    async fn until(&self, what: &str, f: impl Fn(&HepStats) -> bool) {
        for _ in 0..500 {
            if f(&self.stats) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}: {:?}", self.stats);
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("listener stops on shutdown")
            .unwrap();
    }
}

async fn send_udp(to: SocketAddr, datagrams: impl IntoIterator<Item = Vec<u8>>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for d in datagrams {
        socket.send_to(&d, to).await.unwrap();
        // Loopback drops datagrams when the receive buffer overflows; pace the burst.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The SIP keys of events, numbered by the capture frame whose bytes they carry.
fn keys_of(events: &[HepEvent], frames: &[(u64, Vec<u8>)]) -> Vec<MessageKey> {
    events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| sip_key(frames[i].0, &e.frame))
        .collect()
}

#[tokio::test]
async fn hep_listener_udp_delivers_every_fixture_frame() {
    for capture in HEP_CAPTURES {
        let mut l = start(
            HepListenerSettings {
                udp: local(),
                ..HepListenerSettings::default()
            },
            64,
        )
        .await;
        let frames = hep_frames(capture);
        send_udp(
            l.listener_udp.unwrap(),
            frames.iter().map(|(_, b)| b.clone()),
        )
        .await;
        let events = l.events(frames.len()).await;
        assert!(events.iter().all(|e| e.input == HepInput::Udp));
        // Loopback keeps the order of one sender's datagrams.
        let mut got = keys_of(&events, &frames);
        let mut want = tshark_messages(capture);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{capture}");
        assert_eq!(l.stats.frames.load(Ordering::Relaxed), frames.len() as u64);
        assert_eq!(l.stats.malformed_total(), 0);
        l.stop().await;
    }
}

#[tokio::test]
async fn hep_listener_tcp_frames_odd_chunks_and_resyncs_over_garbage() {
    let mut l = start(
        HepListenerSettings {
            tcp: local(),
            ..HepListenerSettings::default()
        },
        64,
    )
    .await;
    let frames: Vec<(u64, Vec<u8>)> = HEP_CAPTURES.iter().flat_map(|c| hep_frames(c)).collect();
    // Garbage between frames: text, a partial magic, a header with an impossible length.
    let garbage: [&[u8]; 4] = [b"garbage\r\n", b"\x00\xffHEP", b"HEP3\x00\x02", b"E"];
    let mut stream = Vec::new();
    let mut garbage_bytes = 0;
    for (i, (_, frame)) in frames.iter().enumerate() {
        if i % 3 == 1 {
            let g = garbage[i % garbage.len()];
            stream.extend_from_slice(g);
            garbage_bytes += g.len();
        }
        stream.extend_from_slice(frame);
    }
    let mut conn = tokio::net::TcpStream::connect(l.listener_tcp.unwrap())
        .await
        .unwrap();
    let sizes = [1, 7, 13, 101, 499, 3, 1500];
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + size).min(stream.len());
        conn.write_all(&stream[at..end]).await.unwrap();
        conn.flush().await.unwrap();
        at = end;
    }
    let events = l.events(frames.len()).await;
    assert!(events.iter().all(|e| e.input == HepInput::Tcp));
    let got = keys_of(&events, &frames);
    let mut want = tshark_messages("hep.pcap");
    want.extend(tshark_messages("hep3_compressed.pcapng"));
    assert_eq!(got, want, "same messages, same order");
    assert_eq!(
        l.stats.resync_bytes.load(Ordering::Relaxed),
        garbage_bytes as u64
    );
    assert_eq!(l.stats.connections.load(Ordering::Relaxed), 1);
    assert_eq!(l.stats.malformed_total(), 0);
    drop(conn);
    l.stop().await;
}

#[tokio::test]
async fn hep_listener_auth_key_accepts_and_rejects() {
    let frames = hep_frames("hep.pcap");
    // The fixture's agent sends the key "myHep".
    let mut l = start(
        HepListenerSettings {
            udp: local(),
            auth_key: Some(b"myHep".to_vec()),
            ..HepListenerSettings::default()
        },
        64,
    )
    .await;
    send_udp(
        l.listener_udp.unwrap(),
        frames.iter().map(|(_, b)| b.clone()),
    )
    .await;
    assert_eq!(l.events(frames.len()).await.len(), frames.len());
    assert_eq!(l.stats.auth_rejected.load(Ordering::Relaxed), 0);
    l.stop().await;

    let mut l = start(
        HepListenerSettings {
            udp: local(),
            auth_key: Some(b"another key".to_vec()),
            ..HepListenerSettings::default()
        },
        64,
    )
    .await;
    send_udp(
        l.listener_udp.unwrap(),
        frames.iter().map(|(_, b)| b.clone()),
    )
    .await;
    let n = frames.len() as u64;
    l.until("rejections", |s| {
        s.auth_rejected.load(Ordering::Relaxed) == n
    })
    .await;
    assert!(l.rx.try_recv().is_err(), "nothing rejected is delivered");
    assert_eq!(l.stats.frames.load(Ordering::Relaxed), 0);
    l.stop().await;
}

#[tokio::test]
async fn hep_listener_counts_malformed_frames_and_keeps_serving() {
    let mut l = start(
        HepListenerSettings {
            udp: local(),
            tcp: local(),
            ..HepListenerSettings::default()
        },
        64,
    )
    .await;
    let good = hep_frames("hep.pcap").remove(0).1;
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 10);
    let mut bad_chunk = good.clone();
    bad_chunk[6 + 4..6 + 6].copy_from_slice(&[0, 3]); // first chunk length 3 < 6
    let hep2 = vec![2u8, 16, 2, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    send_udp(
        l.listener_udp.unwrap(),
        [
            b"not hep at all".to_vec(),
            truncated,
            bad_chunk.clone(),
            hep2,
            good.clone(),
        ],
    )
    .await;
    let events = l.events(1).await;
    assert_eq!(
        &*events[0].frame.payload,
        &*hep::parse(&good).unwrap().payload
    );
    l.until("malformed", |s| s.malformed_total() == 4).await;
    let s = &l.stats;
    assert_eq!(s.malformed(HepErrorKind::BadMagic), 1);
    assert_eq!(s.malformed(HepErrorKind::LengthMismatch), 1);
    assert_eq!(s.malformed(HepErrorKind::ChunkTooShort), 1);
    assert_eq!(s.malformed(HepErrorKind::UnsupportedVersion), 1);

    // Over TCP a frame refused by the decoder does not cost the frames after it.
    let mut conn = tokio::net::TcpStream::connect(l.listener_tcp.unwrap())
        .await
        .unwrap();
    let mut bytes = bad_chunk;
    bytes.extend_from_slice(&good);
    conn.write_all(&bytes).await.unwrap();
    assert_eq!(l.events(1).await.len(), 1);
    assert_eq!(l.stats.malformed(HepErrorKind::ChunkTooShort), 2);
    // Each refused frame is also told once as a named event: the agent's metric counts it.
    let decode_errors = l.metrics.decode_errors.with(&["hep_malformed"]);
    assert_eq!(decode_errors.get(), 5);
    l.stop().await;
}

#[tokio::test]
async fn hep_listener_drops_and_counts_when_the_channel_is_full() {
    let l = start(
        HepListenerSettings {
            udp: local(),
            ..HepListenerSettings::default()
        },
        1,
    )
    .await;
    let frame = hep_frames("hep.pcap").remove(0).1;
    send_udp(l.listener_udp.unwrap(), vec![frame; 5]).await;
    l.until("frames", |s| s.frames.load(Ordering::Relaxed) == 5)
        .await;
    assert_eq!(l.stats.dropped_full.load(Ordering::Relaxed), 4);
    let dropped = l.metrics.records_dropped.with(&["hep_queue_full"]);
    assert_eq!(dropped.get(), 4);
    l.stop().await;
}

#[tokio::test]
async fn hep_listener_closes_idle_connections() {
    let mut l = start(
        HepListenerSettings {
            tcp: local(),
            idle_timeout: Duration::from_millis(100),
            ..HepListenerSettings::default()
        },
        4,
    )
    .await;
    let mut conn = tokio::net::TcpStream::connect(l.listener_tcp.unwrap())
        .await
        .unwrap();
    // A sender that proved itself with a valid frame, then fell silent.
    conn.write_all(&hep_frames("hep.pcap").remove(0).1)
        .await
        .unwrap();
    l.events(1).await;
    assert!(
        closed_within(&mut conn, Duration::from_secs(5)).await,
        "the listener closes the idle connection"
    );
    assert_eq!(l.stats.idle_timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(l.stats.first_frame_timeouts.load(Ordering::Relaxed), 0);
    let closed = &l.metrics.hep_connections_closed;
    assert_eq!(closed.with(&["idle"]).get(), 1);
    assert_eq!(closed.with(&["no_valid_first_frame"]).get(), 0);
    l.stop().await;
}

#[tokio::test]
async fn hep_listener_bind_error_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let err = HepListener::bind(
        HepListenerSettings {
            tcp: Some(addr),
            ..HepListenerSettings::default()
        },
        Arc::new(HepStats::default()),
        Arc::default(),
        tx,
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("TCP"),
        "{text}"
    );
}

#[tokio::test]
async fn hep_listener_over_tls() {
    use rustls::pki_types::{CertificateDer, ServerName};
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    // The daemon's own server configuration, from PEM files (re-read when they change).
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("hep.pem"), dir.path().join("hep.key"));
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    let server =
        teledge::uplink::tls::server_config_without_client_auth(&cert_file, &key_file).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut l = start(
        HepListenerSettings {
            tls: Some(("127.0.0.1:0".parse().unwrap(), server)),
            auth_key: Some(b"myHep".to_vec()),
            ..HepListenerSettings::default()
        },
        64,
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(l.listener_tls.unwrap())
        .await
        .unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let frames = hep_frames("hep3_compressed.pcapng");
    for (_, f) in &frames {
        tls.write_all(f).await.unwrap();
    }
    tls.flush().await.unwrap();
    let events = l.events(frames.len()).await;
    assert!(events.iter().all(|e| e.input == HepInput::Tls));
    assert_eq!(
        keys_of(&events, &frames),
        tshark_messages("hep3_compressed.pcapng")
    );
    // A client that does not speak TLS is counted and does not disturb the listener.
    let mut plain = tokio::net::TcpStream::connect(l.listener_tls.unwrap())
        .await
        .unwrap();
    plain.write_all(&frames[0].1).await.unwrap();
    l.until("handshake failure", |s| {
        s.tls_handshake_failures.load(Ordering::Relaxed) == 1
    })
    .await;
    l.stop().await;
}

/// Reads until the peer closes (0 bytes or an error); false when still open after `within`.
async fn closed_within(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(conn, &mut buf)).await
        {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn hep_listener_closes_connections_without_a_valid_first_frame() {
    let mut l = start(
        HepListenerSettings {
            tcp: local(),
            auth_key: Some(b"myHep".to_vec()),
            first_frame_timeout: Duration::from_millis(300),
            ..HepListenerSettings::default()
        },
        64,
    )
    .await;
    let addr = l.listener_tcp.unwrap();
    let good = hep_frames("hep.pcap").remove(0).1; // carries the key "myHep"
                                                   // Silent, garbage only, and a well-formed frame with the wrong key: all closed soon,
                                                   // not after the 300 s idle timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut wrong_key = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0x55; 4000]).await.unwrap();
    let mut unkeyed = good.clone();
    let at = unkeyed.windows(5).position(|w| w == b"myHep").unwrap();
    unkeyed[at..at + 5].copy_from_slice(b"wrong");
    wrong_key.write_all(&unkeyed).await.unwrap();
    // A sender with a valid first frame stays beyond the deadline.
    let mut honest = tokio::net::TcpStream::connect(addr).await.unwrap();
    honest.write_all(&good).await.unwrap();
    l.events(1).await;
    for (name, conn) in [
        ("silent", &mut silent),
        ("garbage", &mut garbage),
        ("wrong key", &mut wrong_key),
    ] {
        assert!(
            closed_within(conn, Duration::from_secs(5)).await,
            "{name} connection still open"
        );
    }
    l.until("first-frame timeouts", |s| {
        s.first_frame_timeouts.load(Ordering::Relaxed) == 3
    })
    .await;
    assert!(!closed_within(&mut honest, Duration::from_millis(500)).await);
    honest.write_all(&good).await.unwrap();
    assert_eq!(
        l.events(1).await.len(),
        1,
        "the honest sender is still served"
    );
    assert_eq!(l.stats.auth_rejected.load(Ordering::Relaxed), 1);
    assert_eq!(l.stats.idle_timeouts.load(Ordering::Relaxed), 0);
    l.stop().await;
}

async fn connect_from(local_ip: [u8; 4], to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((local_ip, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn hep_listener_limits_connections_per_source_and_in_total() {
    let mut l = start(
        HepListenerSettings {
            tcp: local(),
            max_connections: 3,
            max_connections_per_source: 2,
            ..HepListenerSettings::default()
        },
        64,
    )
    .await;
    let addr = l.listener_tcp.unwrap();
    let good = hep_frames("hep.pcap").remove(0).1;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from([127, 0, 0, 1], addr).await;
        c.write_all(&good).await.unwrap();
        open.push(c);
    }
    l.events(2).await;
    // A third from the same address is refused; another address still gets in.
    let mut third = connect_from([127, 0, 0, 1], addr).await;
    assert!(closed_within(&mut third, Duration::from_secs(5)).await);
    l.until("per-source refusal", |s| {
        s.connections_refused_per_source.load(Ordering::Relaxed) == 1
    })
    .await;
    let mut other = connect_from([127, 0, 0, 2], addr).await;
    other.write_all(&good).await.unwrap();
    l.events(1).await;
    // Three open: the total bound refuses a fourth, whatever its address.
    let mut fourth = connect_from([127, 0, 0, 3], addr).await;
    assert!(closed_within(&mut fourth, Duration::from_secs(5)).await);
    l.until("total refusal", |s| {
        s.connections_refused.load(Ordering::Relaxed) == 1
    })
    .await;
    // Closing one gives its place back.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from([127, 0, 0, 1], addr).await;
    again.write_all(&good).await.unwrap();
    l.events(1).await;
    assert_eq!(l.stats.connections.load(Ordering::Relaxed), 4);
    l.stop().await;
}

#[tokio::test]
async fn hep_listener_bounds_its_queue_by_bytes() {
    let frame = hep_frames("hep.pcap").remove(0).1;
    let payload = hep::parse(&frame).unwrap().payload.len();
    let bound = 8 * 1024;
    let mut l = start(
        HepListenerSettings {
            udp: local(),
            max_queue_bytes: bound,
            ..HepListenerSettings::default()
        },
        1000, // frames: far from the bound; bytes decide
    )
    .await;
    send_udp(l.listener_udp.unwrap(), vec![frame.clone(); 40]).await;
    l.until("frames", |s| s.frames.load(Ordering::Relaxed) == 40)
        .await;
    let dropped = l.stats.dropped_queue_bytes.load(Ordering::Relaxed);
    let queued = 40 - dropped as usize;
    assert!(
        dropped > 0 && queued > 0,
        "queued {queued}, dropped {dropped}"
    );
    let events = l.events(queued).await;
    let held: usize = events.iter().map(|e| e.charge.bytes()).sum();
    assert!(held <= bound, "{held} bytes queued over the bound {bound}");
    assert!(held > payload * queued, "each event is charged its payload");
    assert!(l.rx.try_recv().is_err());
    // Dropping the events gives their bytes back: the queue takes frames again.
    drop(events);
    send_udp(l.listener_udp.unwrap(), vec![frame; 2]).await;
    assert_eq!(l.events(2).await.len(), 2);
    assert_eq!(l.stats.dropped_queue_bytes.load(Ordering::Relaxed), dropped);
    l.stop().await;
}
