//! Live listen (WHEP) end to end: the agent captures a live SIPp call on the loopback of a
//! network namespace of its own (SIPp plays its recorded G.711 A-law audio, `uac_pcap`), and
//! a listener hears it over WebRTC: a WHEP client written with webrtc-rs here, and a real
//! headless Chromium driven by puppeteer-core. Nothing is faked: the agent is the release
//! path (`teledge run`), the collector is real, the audit records are read where they land.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::daemon::{agent_config, collected, free_port, is_root, sipp, Agent, Sipp};
use crate::uplink::{collector, pki, Collector, Pki};

/// A running agent with live listen on, a SIPp answering side, and a supervisor's token.
pub(crate) struct Rig {
    pub(crate) pki: Pki,
    _dir: tempfile::TempDir,
    pub(crate) out: PathBuf,
    _collector: Collector,
    pub(crate) agent: Option<Agent>,
    pub(crate) http: u16,
    /// Alice may listen to `sales` (monitorable).
    pub(crate) token: String,
    /// Bob may only view.
    pub(crate) viewer_token: String,
    pub(crate) work: PathBuf,
    _uas: Sipp,
    pub(crate) uas_port: u16,
}

/// Starts the rig; call inside a fresh network namespace.
pub(crate) fn rig() -> Rig {
    crate::daemon::require_sipp();
    assert!(
        is_root(),
        "live capture needs root (CAP_NET_RAW), as CI has"
    );
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let http = free_port();
    let (token, _) = teledge::access::make_token().unwrap();
    let (viewer_token, _) = teledge::access::make_token().unwrap();
    let sources = format!(
        r#"[[capture]]
interface = "lo"
ring_mib = 8
block_kib = 256
[status]
enabled = true
[[supervisor]]
id = "alice"
token_sha256 = "{alice}"
listen = ["sales"]
[[supervisor]]
id = "bob"
token_sha256 = "{bob}"
view = ["*"]
[[service]]
name = "sales"
numbers = ["service"]
monitorable = true
[listen]
enabled = true
max_listeners_per_supervisor = 1
"#,
        alice = teledge::access::token_hash_hex(&token),
        bob = teledge::access::token_hash_hex(&viewer_token),
    );
    let config = agent_config(&pki, dir.path(), c.port, &sources, Some(http));
    let mut agent = Agent::start(&config);
    agent.wait_for_log("teledge running");
    // uac_pcap plays pcap/g711a.pcap relative to its directory.
    let work = dir.path().join("sipp");
    std::fs::create_dir_all(work.join("pcap")).unwrap();
    for f in ["g711a.pcap", "dtmf_2833_1.pcap"] {
        std::os::unix::fs::symlink(
            Path::new("/usr/share/sip-tester").join(f),
            work.join("pcap").join(f),
        )
        .unwrap();
    }
    let uas_port = free_port();
    let uas = Sipp(
        sipp(
            &[
                "-sn",
                "uas",
                "-i",
                "127.0.0.1",
                "-p",
                &uas_port.to_string(),
                "-mp",
                "16000",
            ],
            &work,
        )
        .spawn()
        .unwrap(),
    );
    thread::sleep(Duration::from_millis(300));
    Rig {
        pki,
        _dir: dir,
        out,
        _collector: c,
        agent: Some(agent),
        http,
        token,
        viewer_token,
        work,
        _uas: uas,
        uas_port,
    }
}

impl Rig {
    /// Starts SIPp's `uac_pcap` call (8 s of recorded A-law audio, 1 s of DTMF, BYE): the
    /// process and the call's Call-ID (SIPp's default `[call_number]-[pid]@[local_ip]`).
    pub(crate) fn start_call(&self) -> (std::process::Child, String) {
        let port = free_port().to_string();
        let target = format!("127.0.0.1:{}", self.uas_port);
        let child = sipp(
            &[
                "-sn",
                "uac_pcap",
                "-mp",
                "17000",
                "-i",
                "127.0.0.1",
                "-p",
                &port,
                "-m",
                "1",
                &target,
            ],
            &self.work,
        )
        .spawn()
        .unwrap();
        let call_id = format!("1-{}@127.0.0.1", child.id());
        (child, call_id)
    }

    /// Waits until the agent has the call open (HEAD on its WHEP URL answers 200).
    pub(crate) fn wait_for_call(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let auth = format!("Bearer {}", self.token);
            let (status, _, _) = request(self.http, "HEAD", path, &[("Authorization", &auth)], "");
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the call never became listenable"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn metric(&self, name: &str) -> f64 {
        let (_, _, body) = request(self.http, "GET", "/metrics", &[], "");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }
}

/// One HTTP/1.1 request on loopback: status, head, body.
pub(crate) fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The call's WHEP URL (the Call-ID percent-encoded).
pub(crate) fn whep_path(call_id: &str) -> String {
    format!("/whep/calls/{}", call_id.replace('@', "%40"))
}

/// Seconds since the epoch of an RFC 3339 time in a record.
fn epoch_s(v: &Value) -> f64 {
    let t: jiff::Timestamp = v.as_str().unwrap().parse().unwrap();
    t.as_microsecond() as f64 / 1e6
}

pub(crate) fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A WHEP client on webrtc-rs: a recvonly offer, the answer, and what arrives.
mod client {
    use super::*;
    use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
    use teledge::media::g711::Law;
    use tokio::sync::watch;
    use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
    use webrtc::peer_connection::{
        MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
        RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState,
        RTCSessionDescription, SettingEngineBuilder,
    };
    use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

    #[derive(Default)]
    pub(crate) struct Heard {
        pub(crate) packets: AtomicU64,
        /// Largest sample magnitude decoded.
        pub(crate) peak: AtomicI64,
        pub(crate) payload_type: AtomicI64,
        /// Seconds since the epoch of the last packet (×1000).
        pub(crate) last_ms: AtomicI64,
    }

    struct Handler {
        state: watch::Sender<RTCPeerConnectionState>,
        gathered: watch::Sender<bool>,
        heard: Arc<Heard>,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Handler {
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            if state == RTCIceGatheringState::Complete {
                let _ = self.gathered.send(true);
            }
        }
        async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
            let _ = self.state.send(state);
        }
        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let heard = Arc::clone(&self.heard);
            tokio::spawn(async move {
                while let Some(event) = track.poll().await {
                    match event {
                        TrackRemoteEvent::OnRtpPacket(p) => {
                            let pt = p.header.payload_type;
                            heard.payload_type.store(i64::from(pt), Ordering::Relaxed);
                            if let Some(law) = Law::of_payload_type(pt) {
                                let peak = p
                                    .payload
                                    .iter()
                                    .map(|b| i64::from(law.decode(*b)).abs())
                                    .max()
                                    .unwrap_or(0);
                                heard.peak.fetch_max(peak, Ordering::Relaxed);
                            }
                            heard.packets.fetch_add(1, Ordering::Relaxed);
                            heard
                                .last_ms
                                .store((now_s() * 1000.0) as i64, Ordering::Relaxed);
                        }
                        TrackRemoteEvent::OnEnded => break,
                        _ => {}
                    }
                }
            });
        }
    }

    pub(crate) struct Listening {
        pub(crate) pc: Arc<dyn PeerConnection>,
        pub(crate) state: watch::Receiver<RTCPeerConnectionState>,
        pub(crate) heard: Arc<Heard>,
        pub(crate) location: String,
        pub(crate) answer: String,
    }

    fn codec(mime: &str) -> RTCRtpCodec {
        RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: 8000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        }
    }

    /// Offers, POSTs with `auth`, and on 201 connects; otherwise the status and body.
    pub(crate) async fn listen(
        port: u16,
        path: &str,
        auth: Option<String>,
    ) -> Result<Listening, (u16, String, String)> {
        let mut media = MediaEngine::default();
        for (mime, pt) in [("audio/PCMU", 0), ("audio/PCMA", 8)] {
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: codec(mime),
                        payload_type: pt,
                    },
                    RtpCodecKind::Audio,
                )
                .unwrap();
        }
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, mut gathered) = watch::channel(false);
        let heard = Arc::new(Heard::default());
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(media)
                .with_setting_engine(
                    SettingEngineBuilder::new()
                        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                        .build(),
                )
                .with_handler(Arc::new(Handler {
                    state: state_tx,
                    gathered: gathered_tx,
                    heard: Arc::clone(&heard),
                }))
                .with_udp_addrs(vec!["127.0.0.1:0"])
                .build()
                .await
                .unwrap(),
        );
        pc.add_transceiver_from_kind(
            RtpCodecKind::Audio,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .await
        .unwrap();
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|g| *g))
            .await
            .unwrap()
            .unwrap();
        let offer = pc.local_description().await.unwrap().sdp;
        let path = path.to_owned();
        let (status, head, body) = tokio::task::spawn_blocking(move || {
            let mut headers = vec![("Content-Type", "application/sdp")];
            if let Some(a) = &auth {
                headers.push(("Authorization", a.as_str()));
            }
            request(port, "POST", &path, &headers, &offer)
        })
        .await
        .unwrap();
        if status != 201 {
            let _ = pc.close().await;
            return Err((status, head, body));
        }
        assert_eq!(
            header(&head, "content-type"),
            Some("application/sdp"),
            "{head}"
        );
        let location = header(&head, "location").unwrap().to_owned();
        pc.set_remote_description(RTCSessionDescription::answer(body.clone()).unwrap())
            .await
            .unwrap();
        Ok(Listening {
            pc,
            state,
            heard,
            location,
            answer: body,
        })
    }
}

#[test]
fn a_webrtc_rs_whep_client_hears_a_live_sipp_call_and_every_listen_is_audited() {
    crate::live::in_fresh_netns(webrtc_client_hears_a_live_call);
}

fn webrtc_client_hears_a_live_call() {
    let rig = rig();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Nobody listens: the tap does nothing.
    let (mut uac, call_id) = rig.start_call();
    let path = whep_path(&call_id);
    rig.wait_for_call(&path);

    // Refused: no token, a wrong token, a supervisor who may only view, a call that is not
    // there. No media flows to any of them.
    let refusals: Vec<(Option<String>, &str, u16)> = vec![
        (None, path.as_str(), 401),
        (Some("Bearer tdg1_0000".into()), path.as_str(), 401),
        (
            Some(format!("Bearer {}", rig.viewer_token)),
            path.as_str(),
            403,
        ),
        (
            Some(format!("Bearer {}", rig.token)),
            "/whep/calls/no-such-call",
            409,
        ),
    ];
    for (auth, p, want) in &refusals {
        let got = runtime.block_on(client::listen(rig.http, p, auth.clone()));
        let (status, head, _) = got.err().expect("refused");
        assert_eq!(status, *want, "{p} {auth:?}: {head}");
        if *want == 401 {
            assert_eq!(header(&head, "www-authenticate"), Some("Bearer"), "{head}");
        }
        if *want == 409 {
            assert!(header(&head, "retry-after").is_some(), "{head}");
        }
    }
    assert_eq!(
        rig.metric("teledge_listen_packets_total{what=\"tapped\"}"),
        0.0
    );
    assert_eq!(rig.metric("teledge_listen_sessions"), 0.0);
    // The preflight needs no token and says what it takes.
    let (status, head, _) = request(rig.http, "OPTIONS", &path, &[], "");
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "accept-post"), Some("application/sdp"));
    // Not an SDP offer.
    let auth = format!("Bearer {}", rig.token);
    let (status, _, _) = request(
        rig.http,
        "POST",
        &path,
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        "v=0",
    );
    assert_eq!(status, 415);

    // Alice listens.
    let posted = now_s();
    let listening = runtime
        .block_on(client::listen(rig.http, &path, Some(auth.clone())))
        .unwrap_or_else(|e| panic!("listen refused: {e:?}"));
    let session = listening
        .location
        .strip_prefix("/whep/sessions/")
        .unwrap()
        .to_owned();
    assert!(
        session.len() == 32 && session.bytes().all(|b| b.is_ascii_hexdigit()),
        "{session}"
    );
    let answer = &listening.answer;
    assert!(answer.contains("a=sendonly"), "{answer}");
    // One G.711 law: the one the call's newest SDP names. SIPp's uas answers PCMU to the
    // uac's PCMA offer (and the uac sends A-law anyway): the answer's PCMU is then the law
    // of the mix, the A-law packets are decoded as what they are.
    assert!(answer.contains("a=rtpmap:0 PCMU/8000"), "{answer}");
    assert!(!answer.contains("PCMA/8000"), "{answer}");
    assert!(answer.contains("typ host"), "{answer}");
    assert!(!answer.contains("typ srflx") && !answer.contains("typ relay"));
    let mut state = listening.state.clone();
    runtime
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                state
                    .wait_for(|s| *s == webrtc::peer_connection::RTCPeerConnectionState::Connected),
            )
            .await
            .map(|r| r.is_ok())
        })
        .expect("connected within 5 s");
    assert_eq!(rig.metric("teledge_listen_sessions"), 1.0);
    // Regression: any authenticated supervisor could end another's session with its URL.
    // Another supervisor gets what no session at all would give, and the session lives.
    let (status, _, _) = request(
        rig.http,
        "DELETE",
        &listening.location,
        &[("Authorization", &format!("Bearer {}", rig.viewer_token))],
        "",
    );
    assert_eq!(status, 404);
    assert_eq!(rig.metric("teledge_listen_sessions"), 1.0);
    // Regression: one supervisor could take every listener slot of the node. Alice is at
    // her own bound (1 in this rig) while the node and the call have room.
    let got = runtime.block_on(client::listen(rig.http, &path, Some(auth.clone())));
    let (status, head, _) = got.err().expect("alice's second session refused");
    assert_eq!(status, 503, "{head}");
    assert!(header(&head, "retry-after").is_some(), "{head}");
    assert_eq!(
        rig.metric("teledge_listen_refused_total{reason=\"supervisor_listeners_full\"}"),
        1.0
    );
    assert_eq!(rig.metric("teledge_listen_sessions"), 1.0);

    // The call plays to its end (BYE); the session ends with it.
    let status = uac.wait().unwrap();
    let call_end = now_s();
    assert!(status.success(), "sipp uac_pcap: {status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.metric("teledge_listen_sessions") != 0.0 {
        assert!(Instant::now() < deadline, "the session outlived its call");
        thread::sleep(Duration::from_millis(100));
    }
    let heard = &listening.heard;
    let packets = heard.packets.load(Ordering::Relaxed);
    // About 7 s of the 8 s recording were left when the listener connected: 50 packets/s.
    assert!(packets >= 200, "packets heard {packets}");
    assert_eq!(heard.payload_type.load(Ordering::Relaxed), 0, "PCMU");
    let peak = heard.peak.load(Ordering::Relaxed);
    assert!(
        peak > 1000,
        "the recording's speech, not silence: peak {peak}"
    );
    let tapped = rig.metric("teledge_listen_packets_total{what=\"tapped\"}");
    // g711a.pcap sends 30 ms packets (240 samples); the mix sends 20 ms ones.
    assert!(tapped >= 150.0, "tapped {tapped}");
    let sent = rig.metric("teledge_listen_packets_total{what=\"sent\"}");
    assert!(sent >= packets as f64, "sent {sent}, heard {packets}");
    assert_eq!(
        rig.metric("teledge_listen_packets_total{what=\"tap_dropped\"}"),
        0.0
    );
    // Nothing arrives after the session ended.
    let before = heard.packets.load(Ordering::Relaxed);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(heard.packets.load(Ordering::Relaxed), before);
    // DELETE of the ended session: gone.
    let (status, _, _) = request(
        rig.http,
        "DELETE",
        &listening.location,
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 404);
    runtime.block_on(async { listening.pc.close().await.unwrap() });

    // The audit trail at the collector: one record per refusal (the 415 never reached
    // access) and exactly one for the session, with its times.
    let mut rig = rig;
    rig.agent.take().unwrap().stop();
    let audits = collected(
        &rig.out,
        |r| r["type"] == "audit",
        6,
        Duration::from_secs(10),
    );
    let sessions: Vec<&Value> = audits.iter().filter(|r| r["outcome"] == "ok").collect();
    assert_eq!(sessions.len(), 1, "{audits:#?}");
    let s = sessions[0];
    assert_eq!(s["principal"], "alice");
    assert_eq!(s["action"], "listen");
    assert_eq!(s["service"], "sales");
    assert_eq!(s["session"], session.as_str());
    assert_eq!(s["reason"], "call_ended");
    assert_eq!(s["status"], 201);
    assert_eq!(
        s["call_id"],
        crate::daemon::pseudonym(&rig.pki, &call_id).as_str(),
        "the call as the page shows it"
    );
    let (start, end) = (epoch_s(&s["start"]), epoch_s(&s["end"]));
    assert!(
        (posted - 0.5..posted + 3.0).contains(&start),
        "start {start} vs POST {posted}"
    );
    assert!(
        (call_end - 3.0..call_end + 3.0).contains(&end),
        "end {end} vs call end {call_end}"
    );
    let mut refused: Vec<(String, u64)> = audits
        .iter()
        .filter(|r| r["outcome"] == "refused")
        .map(|r| {
            (
                r["reason"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            ("bad_credentials".to_owned(), 401),
            ("no_credentials".to_owned(), 401),
            ("no_such_call".to_owned(), 409),
            ("not_permitted".to_owned(), 403),
            ("supervisor_listeners_full".to_owned(), 503),
        ],
        "{audits:#?}"
    );
}

/// puppeteer-core, installed by scripts/test.sh (npm, pinned) into target/.
fn puppeteer() -> PathBuf {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/puppeteer/node_modules/puppeteer-core");
    assert!(
        dir.join("package.json").exists(),
        "puppeteer-core 24.43.1 is needed in {} (scripts/test.sh installs it with npm)",
        dir.display()
    );
    dir
}

/// Chromium gathers no candidate in a namespace without a route out: a veth pair (both ends
/// in this namespace) with the default route stands in for the LAN.
fn lan_for_chromium() {
    for args in [
        &[
            "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
        ][..],
        &["addr", "add", "10.77.0.1/24", "dev", "lan0"],
        &["link", "set", "lan0", "up"],
        &["link", "set", "lan1", "up"],
        &["route", "add", "default", "dev", "lan0"],
    ] {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
}

/// A puppeteer-core script under `tests/listen/` run by Node: it prints one JSON object a
/// line (steps, then its result) and reads lines from stdin (what it waits for).
struct Driver {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Driver {
    fn start(script: &str, rig: &Rig, profile: &Path, env: &[(&str, &str)]) -> Driver {
        use std::io::BufRead;
        use std::process::Stdio;
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/listen")
            .join(script);
        let mut child = Command::new("node")
            .arg(&script)
            .env("PUPPETEER", puppeteer())
            .env("BASE", format!("http://127.0.0.1:{}", rig.http))
            .env("USER_DATA", profile)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node is needed (Debian package nodejs; scripts/test.sh installs it)");
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Driver { child, lines }
    }

    /// The script's next line.
    fn next(&mut self) -> Value {
        let line = self
            .lines
            .next()
            .expect("the browser script ended early")
            .expect("the browser script's output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("browser script output {e}: {line}"))
    }

    /// Waits for `{"step": step}`.
    fn step(&mut self, step: &str) {
        let v = self.next();
        assert_eq!(v["step"], step, "{v:#}");
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The script's result (its last line), once it has ended.
    fn result(mut self) -> Value {
        let v = self.next();
        let _ = self.child.wait();
        v
    }
}

/// Starts the rig's call once the browser script has its page open (`{"step":"ready"}`:
/// the recording is not spent on browser start-up) and tells the script which call it is,
/// as the status page shows it (its pseudonym): the SIPp process, the call as shown.
fn call_for(driver: &mut Driver, rig: &Rig) -> (std::process::Child, String) {
    driver.step("ready");
    let (uac, call_id) = rig.start_call();
    rig.wait_for_call(&whep_path(&call_id));
    let shown = crate::daemon::pseudonym(&rig.pki, &call_id);
    driver.send(&shown);
    (uac, shown)
}

#[test]
fn a_headless_chromium_listens_on_the_player_page_and_the_session_ends_with_the_call() {
    crate::live::in_fresh_netns(chromium_listens);
}

fn chromium_listens() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is needed (Debian package chromium; scripts/test.sh installs it)"
    );
    lan_for_chromium();
    let rig = rig();
    let profile = tempfile::tempdir().unwrap();
    let mut driver = Driver::start(
        "chromium.js",
        &rig,
        profile.path(),
        &[
            ("TOKEN", rig.token.as_str()),
            ("LISTEN_S", "4"),
            ("END_WAIT_S", "20"),
        ],
    );
    let (mut uac, shown) = call_for(&mut driver, &rig);
    let result = driver.result();
    let status = uac.wait().unwrap();
    assert!(status.success(), "sipp uac_pcap: {status:?}");
    println!("chromium: {result:#}");
    // The one error a page may log: the browser's note on the refused (401) POST.
    let errors: Vec<&Value> = result["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e.as_str().unwrap_or("").contains("status of 401"))
        .collect();
    assert!(errors.is_empty(), "{result:#}");
    // A wrong token: refused, no peer connection kept.
    let wrong = result["wrong_token"].as_str().unwrap();
    assert!(wrong.starts_with("refused: 401"), "{wrong}");
    assert_eq!(result["wrong_token_session"], false);
    // The right one: connected within 5 s, PCMU at 50 packets/s, a level that is not
    // silence, nothing lost on the loopback.
    assert_eq!(result["state"], "connected", "{result:#}");
    assert!(result["connect_ms"].as_u64().unwrap() < 5000, "{result:#}");
    // (A sample taken after the call ended finds no inbound stream: the page closes its
    // peer connection as soon as the agent ends the session.)
    let samples = result["samples"].as_array().unwrap();
    let last = samples.iter().rev().find(|s| !s.is_null()).unwrap();
    assert_eq!(last["codec"], "audio/PCMU", "{result:#}");
    let received = last["packetsReceived"].as_u64().unwrap();
    assert!(received >= 100, "packets received {received}: {result:#}");
    let level = samples
        .iter()
        .filter_map(|s| s["audioLevel"].as_f64())
        .fold(0.0, f64::max);
    assert!(level > 0.01, "audio level {level}: {result:#}");
    let energy = last["totalAudioEnergy"].as_f64().unwrap();
    assert!(energy > 0.0, "{result:#}");
    assert_eq!(last["packetsLost"], 0, "{result:#}");
    // The call ended (BYE): the session ended with it.
    let ended = result["ended_state"].as_str().unwrap_or("still connected");
    assert!(
        ["closed", "failed", "disconnected"].contains(&ended),
        "{ended}: {result:#}"
    );
    assert_eq!(
        result["ended_text"], "ended: ended by the agent",
        "the player says why: {result:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.metric("teledge_listen_sessions") != 0.0 {
        assert!(Instant::now() < deadline, "the session outlived its call");
        thread::sleep(Duration::from_millis(100));
    }
    let mut rig = rig;
    rig.agent.take().unwrap().stop();
    let audits = collected(
        &rig.out,
        |r| r["type"] == "audit",
        2,
        Duration::from_secs(10),
    );
    let ok: Vec<&Value> = audits.iter().filter(|r| r["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 1, "{audits:#?}");
    assert_eq!(ok[0]["call_id"], shown.as_str());
    assert_eq!(ok[0]["reason"], "call_ended");
    assert!(
        ok[0]["user_agent"].as_str().unwrap().contains("Chrome"),
        "{audits:#?}"
    );
}

/// The status page's own *Listen* button in a real headless Chromium
/// (`tests/listen/status_page.js`): a supervisor who may only view gets no button and a WHEP
/// POST made from the page with their session is refused (403), with no media; a supervisor
/// who may listen clicks the button, the page loads `/whep/listen.js`, and its
/// RTCPeerConnection's `getStats()` shows the call's recorded audio arriving; the session
/// ends when the call ends, and leaves exactly one `teledge.audit/1` listen record.
#[test]
fn a_headless_chromium_listens_with_the_status_pages_button_and_a_viewer_cannot() {
    crate::live::in_fresh_netns(chromium_listens_on_the_status_page);
}

fn chromium_listens_on_the_status_page() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is needed (Debian package chromium; scripts/test.sh installs it)"
    );
    lan_for_chromium();
    let rig = rig();
    let profile = tempfile::tempdir().unwrap();
    let mut driver = Driver::start(
        "status_page.js",
        &rig,
        profile.path(),
        &[
            ("TOKEN", rig.token.as_str()),
            ("VIEWER_TOKEN", rig.viewer_token.as_str()),
            ("LISTEN_S", "3"),
            ("END_WAIT_S", "20"),
        ],
    );
    // Both supervisors are logged in: the call starts.
    let (mut uac, shown) = call_for(&mut driver, &rig);

    // The viewer is done: nothing was tapped, no session exists.
    driver.step("viewer");
    assert_eq!(rig.metric("teledge_listen_sessions"), 0.0);
    assert_eq!(
        rig.metric("teledge_listen_packets_total{what=\"tapped\"}"),
        0.0,
        "no media for a refused listener"
    );
    driver.send("go");
    let result = driver.result();
    let status = uac.wait().unwrap();
    assert!(status.success(), "sipp uac_pcap: {status:?}");
    println!("chromium: {result:#}");

    // The viewer: no button, refused, nothing received.
    assert_eq!(result["viewer_buttons"], 0, "{result:#}");
    assert_eq!(result["viewer_listen_cell"], "–", "{result:#}");
    assert_eq!(result["viewer_post"]["status"], 403, "{result:#}");
    assert!(result["viewer_post"]["location"].is_null(), "{result:#}");
    // The browser's own note on the refused POST is the one error the viewer's page logs.
    let viewer_errors: Vec<&Value> = result["viewer_errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e.as_str().unwrap_or("").contains("status of 403"))
        .collect();
    assert!(viewer_errors.is_empty(), "{result:#}");

    // The listener: the button, a click, the WHEP client loaded on that click, connected.
    assert!(
        result["errors"].as_array().unwrap().is_empty(),
        "{result:#}"
    );
    assert_eq!(result["button_before"], "Listen", "{result:#}");
    assert_eq!(result["listen_script_before"], "undefined", "{result:#}");
    assert_eq!(result["listen_script_after"], "function", "{result:#}");
    assert_eq!(result["state"], "listening", "{result:#}");
    assert!(result["connect_ms"].as_u64().unwrap() < 5000, "{result:#}");
    assert_eq!(result["peer_connections"], 1, "{result:#}");
    assert_eq!(result["button_listening"], "Stop", "{result:#}");
    // (Samples are taken while the session is connected; at least 1 s of the call's audio,
    // 50 packets, even on a loaded machine where the click comes late in the recording.)
    let samples = result["samples"].as_array().unwrap();
    let last = samples
        .last()
        .unwrap_or_else(|| panic!("no sample: {result:#}"));
    assert_eq!(last["codec"], "audio/PCMU", "{result:#}");
    assert_eq!(last["playing"], true, "the page plays it: {result:#}");
    let received = last["packetsReceived"].as_u64().unwrap();
    assert!(received >= 50, "packets received {received}: {result:#}");
    let level = samples
        .iter()
        .filter_map(|s| s["audioLevel"].as_f64())
        .fold(0.0, f64::max);
    assert!(level > 0.01, "audio level {level}: {result:#}");
    assert!(
        last["totalAudioEnergy"].as_f64().unwrap() > 0.0,
        "{result:#}"
    );
    assert_eq!(last["packetsLost"], 0, "{result:#}");
    // The call ended: the agent ended the session with it (its DTLS transport closed), and
    // the page said so as the call left the table, not seconds later when the browser's ICE
    // checks would have noticed the silence.
    let end = &result["end"];
    assert_eq!(end["pc"], "closed", "{result:#}");
    assert_eq!(end["dtls"], "closed", "{result:#}");
    assert_eq!(end["text"], "listening ended", "{result:#}");
    assert_eq!(result["row_gone"], true, "{result:#}");
    let said = result["page_said_after_ms"].as_u64().unwrap();
    let gone = result["row_gone_after_ms"].as_u64().unwrap();
    assert!(said <= gone + 2500, "{result:#}");
    assert_eq!(
        result["last"]["playing"], false,
        "the page let go of the audio: {result:#}"
    );
    assert_eq!(result["csp"], serde_json::json!([]), "{result:#}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.metric("teledge_listen_sessions") != 0.0 {
        assert!(Instant::now() < deadline, "the session outlived its call");
        thread::sleep(Duration::from_millis(100));
    }
    // The viewer's refused peer connection received nothing, all call long.
    assert_eq!(result["viewer_media"]["packetsReceived"], 0, "{result:#}");
    assert_ne!(result["viewer_media"]["connectionState"], "connected");
    assert_eq!(result["viewer_csp"], serde_json::json!([]), "{result:#}");

    // The audit trail: two logins, the viewer's refusal, and exactly one listen session.
    let mut rig = rig;
    rig.agent.take().unwrap().stop();
    let audits = collected(
        &rig.out,
        |r| r["type"] == "audit",
        4,
        Duration::from_secs(10),
    );
    let listens: Vec<&Value> = audits.iter().filter(|r| r["action"] == "listen").collect();
    assert_eq!(listens.len(), 2, "{audits:#?}");
    let refused = listens.iter().find(|r| r["outcome"] == "refused").unwrap();
    assert_eq!(refused["principal"], "bob");
    assert_eq!(refused["reason"], "not_permitted");
    assert_eq!(refused["status"], 403);
    let ok: Vec<&&Value> = listens.iter().filter(|r| r["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 1, "{audits:#?}");
    assert_eq!(ok[0]["principal"], "alice");
    assert_eq!(ok[0]["call_id"], shown.as_str());
    assert_eq!(ok[0]["service"], "sales");
    assert_eq!(ok[0]["reason"], "call_ended");
    assert!(
        ok[0]["user_agent"].as_str().unwrap().contains("Chrome"),
        "{audits:#?}"
    );
    let logins: Vec<(&str, &str)> = audits
        .iter()
        .filter(|r| r["action"] == "login")
        .map(|r| {
            (
                r["principal"].as_str().unwrap_or("?"),
                r["outcome"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(logins, [("bob", "ok"), ("alice", "ok")], "{audits:#?}");
}
