//! Privacy (EN 15838 7.9): a capture with identities in every place a record can carry one
//! goes through `teledge replay --forward`; neither the spool (opened with its key and read
//! back) nor the collector's files hold any of them in clear.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::uplink::{collector, pki, stored, Pki};

const CALLER: ([u8; 4], u16) = ([198, 51, 100, 23], 5060);
const PBX: ([u8; 4], u16) = ([192, 0, 2, 10], 5060);
const CALLER_RTP: ([u8; 4], u16) = ([198, 51, 100, 23], 40000);
const PBX_RTP: ([u8; 4], u16) = ([192, 0, 2, 10], 50000);
const ORPHAN_SRC: ([u8; 4], u16) = ([203, 0, 113, 77], 30000);
const ORPHAN_DST: ([u8; 4], u16) = ([192, 0, 2, 10], 30002);

/// What must not reach the spool or the collector in clear: numbers, names, extensions,
/// routing numbers, Call-IDs, free text, addresses.
const SECRETS: &[&str] = &[
    "4915112345678",
    "4930111222",
    "4711",
    "4930999888",
    "Alice",
    "Secretname",
    "secretcall",
    "4915199887766",
    "4930555666",
    "4930777888",
    "Bobsecret",
    "198.51.100.23",
    "203.0.113.77",
    "192.0.2.10",
    "Desk",
];

/// A pcap (microseconds, Ethernet) of UDP datagrams.
struct Pcap(Vec<u8>);

impl Pcap {
    fn new() -> Pcap {
        let mut b = Vec::new();
        b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(&0i32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&65535u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        Pcap(b)
    }

    fn udp(&mut self, ms: u64, src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.0, dst.0, 64)
            .udp(src.1, dst.1);
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        let t = 1_700_000_000_000u64 + ms;
        self.0.extend_from_slice(&((t / 1000) as u32).to_le_bytes());
        self.0
            .extend_from_slice(&(((t % 1000) * 1000) as u32).to_le_bytes());
        self.0
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.0
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.0.extend_from_slice(&frame);
    }
}

fn sdp(ip: [u8; 4], port: u16) -> String {
    let ip = Ipv4Addr::from(ip);
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An answered call with identities everywhere, DTMF typed into it, and an orphan stream.
fn identity_capture() -> Vec<u8> {
    let mut pcap = Pcap::new();
    let caller = Ipv4Addr::from(CALLER.0);
    let pbx = Ipv4Addr::from(PBX.0);
    let offer = sdp(CALLER_RTP.0, CALLER_RTP.1);
    let answer = sdp(PBX_RTP.0, PBX_RTP.1);
    let common = |cseq: &str, to_tag: &str, via: &str| {
        format!(
            "Via: SIP/2.0/UDP {via};branch=z9hG4bKpriv{}\r\nFrom: \"Alice Secretname\" <sip:+4915112345678@{caller}>;tag=a1\r\nTo: <sip:+4930111222;ext=4711@{pbx}>{to_tag}\r\nCall-ID: 4915112345678-secretcall@{caller}\r\nCSeq: {cseq}\r\n",
            cseq.len()
        )
    };
    let invite = format!(
        "INVITE sip:+4930111222;ext=4711;rn=+4930999888@{pbx} SIP/2.0\r\n{}X-CID: linked-4915199887766@{pbx}\r\nP-Asserted-Identity: \"Alice Secretname\" <sip:+4915112345678;cpc=ordinary@{caller}>\r\nDiversion: <sip:+4930555666;rn=+4930777888@{pbx}>;reason=unconditional\r\nUser-Agent: Yealink SIP-T46S Alice-Secretname-Desk\r\nContact: <sip:+4915112345678@{caller}:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        common("1 INVITE", "", &format!("{caller}:5060")),
        offer.len()
    );
    pcap.udp(0, CALLER, PBX, invite.as_bytes());
    let ok = format!(
        "SIP/2.0 200 OK Bobsecret\r\n{}Server: Asterisk PBX Bobsecret-Office\r\nContact: <sip:4930111222@{pbx}:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
        common("1 INVITE", ";tag=b1", &format!("{caller}:5060")),
        answer.len()
    );
    pcap.udp(500, PBX, CALLER, ok.as_bytes());
    let ack = format!(
        "ACK sip:4930111222@{pbx}:5060 SIP/2.0\r\n{}Content-Length: 0\r\n\r\n",
        common("1 ACK", ";tag=b1", &format!("{caller}:5060"))
    );
    pcap.udp(520, CALLER, PBX, ack.as_bytes());
    // Voice both ways, then the digits 7, 3, 9 typed as RFC 4733 events.
    let mut seq = 1u16;
    let mut ts = 0u32;
    for i in 0..50u64 {
        pcap.udp(
            600 + i * 20,
            CALLER_RTP,
            PBX_RTP,
            &rtp(0, i == 0, seq, ts, 0x1111, &[0xff; 160]),
        );
        pcap.udp(
            600 + i * 20,
            PBX_RTP,
            CALLER_RTP,
            &rtp(0, i == 0, seq, ts, 0x2222, &[0xff; 160]),
        );
        seq += 1;
        ts += 160;
    }
    let mut ms = 1700;
    for digit in [7u8, 3, 9] {
        let start = ts;
        for step in 0..4u16 {
            let end = step == 3;
            let payload = [digit, if end { 0x8a } else { 0x0a }, 0, 0];
            let mut payload = payload;
            payload[2..].copy_from_slice(&(160 * (step + 1)).to_be_bytes());
            pcap.udp(
                ms,
                CALLER_RTP,
                PBX_RTP,
                &rtp(101, step == 0, seq, start, 0x1111, &payload),
            );
            seq += 1;
            ms += 20;
        }
        ts += 800;
        for _ in 0..5 {
            pcap.udp(
                ms,
                CALLER_RTP,
                PBX_RTP,
                &rtp(0, false, seq, ts, 0x1111, &[0xff; 160]),
            );
            seq += 1;
            ts += 160;
            ms += 20;
        }
    }
    // RTP of no call, from another address.
    for i in 0..30u16 {
        pcap.udp(
            600 + u64::from(i) * 20,
            ORPHAN_SRC,
            ORPHAN_DST,
            &rtp(8, i == 0, 100 + i, u32::from(i) * 160, 0x3333, &[0xd5; 160]),
        );
    }
    let bye = format!(
        "BYE sip:+4915112345678@{caller}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {pbx}:5060;branch=z9hG4bKprivbye\r\nFrom: <sip:+4930111222;ext=4711@{pbx}>;tag=b1\r\nTo: \"Alice Secretname\" <sip:+4915112345678@{caller}>;tag=a1\r\nCall-ID: 4915112345678-secretcall@{caller}\r\nCSeq: 1 BYE\r\nReason: Q.850;cause=16;text=\"Bobsecret ended the call\"\r\nContent-Length: 0\r\n\r\n"
    );
    pcap.udp(ms + 1000, PBX, CALLER, bye.as_bytes());
    let bye_ok = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {pbx}:5060;branch=z9hG4bKprivbye\r\nFrom: <sip:+4930111222;ext=4711@{pbx}>;tag=b1\r\nTo: \"Alice Secretname\" <sip:+4915112345678@{caller}>;tag=a1\r\nCall-ID: 4915112345678-secretcall@{caller}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    pcap.udp(ms + 1050, CALLER, PBX, bye_ok.as_bytes());
    pcap.0
}

fn forward_config(pki: &Pki, dir: &Path, port: u16, privacy: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[node]
id = "edge-01"
[spool]
dir = "{spool}"
key_file = "{key}"
key_id = 1
[privacy]
{privacy}
site_key_file = "{site}"
[uplink]
url = "https://localhost:{port}/v1/batches"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{client_key}"
batch_records = 50
timeout_ms = 2000
"#,
        spool = dir.join("spool").display(),
        key = pki.path("spool.key").display(),
        site = pki.path("site.key").display(),
        ca = pki.path("ca.pem").display(),
        cert = pki.path("edge-01.pem").display(),
        client_key = pki.path("edge-01.key").display(),
    );
    let path = dir.join("forward.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn replay_forward(config: &Path, capture: &Path, timeout_s: u32) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["replay", "--no-progress", "--forward"])
        .arg(config)
        .args(["--forward-timeout", &timeout_s.to_string()])
        .arg(capture)
        .output()
        .unwrap()
}

/// A secret counts where it stands on its own: not inside a longer run of hex digits or
/// letters. Short secrets ("4711") otherwise turn up by chance inside the hex of record ids,
/// keyed hashes and timestamps (seen once in about twenty runs), while a leaked identity is
/// always delimited (`"4711"`, `sip:4711@`, `4711;tag`).
fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        let leaked = text.match_indices(secret).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + secret.len()..].chars().next();
            ![before, after]
                .into_iter()
                .flatten()
                .any(|c| c.is_ascii_alphanumeric())
        });
        assert!(!leaked, "{secret:?} in clear in {what}:\n{text}");
    }
}

/// The record ids of call and stream records in a replay's JSON Lines.
fn record_ids(jsonl: &str) -> Vec<String> {
    jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "call" || r["type"] == "stream")
        .filter_map(|r| r["record_id"].as_str().map(str::to_owned))
        .collect()
}

/// A record id is an unkeyed SHA-256 of the Call-ID, the invite time and the caller's
/// address (a stream's: of its addresses, SSRC and start), all but the hashed parts written
/// in the record beside it. Stored as it is made, it lets anyone holding the records test
/// guesses of the Call-ID or of a hashed address — a number inside a Call-ID, a /16 of
/// hosts — offline, at billions a second, which the keyed hashes of those fields exist to
/// prevent. So the ids that leave the box are keyed too: still stable (a resent record keeps
/// its id) and unique, but none equals the plain replay's id, nor the id recomputed from the
/// captured Call-ID.
fn assert_ids_are_no_oracle(plain_ids: &[String], spooled: &[Value]) {
    let call = spooled.iter().find(|r| r["type"] == "call").unwrap();
    let invite_ns = serde_json::from_value::<teledge::time::Timestamp>(call["invite_time"].clone())
        .unwrap()
        .as_nanos();
    let guessed = teledge::record::stable_id(&[
        format!("4915112345678-secretcall@{}", Ipv4Addr::from(CALLER.0)).as_bytes(),
        &invite_ns.to_be_bytes(),
        format!("{}:{}", Ipv4Addr::from(CALLER.0), CALLER.1).as_bytes(),
    ]);
    assert!(
        plain_ids.contains(&guessed),
        "the guess reproduces the plain id (else this test proves nothing): {guessed} not in {plain_ids:?}"
    );
    let mut seen = std::collections::HashSet::new();
    for record in spooled {
        let Some(id) = record["record_id"].as_str() else {
            continue;
        };
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(seen.insert(id.to_owned()), "{id} twice in the spool");
        assert!(
            !plain_ids.iter().any(|p| p == id),
            "{id}: the unkeyed id of a {} record left the box",
            record["type"]
        );
    }
}

/// The records are there and say what a supervisor needs: the checks above would pass
/// vacuously on records without those fields.
fn assert_useful(records: &[Value]) {
    let call = records
        .iter()
        .find(|r| r["type"] == "call")
        .unwrap_or_else(|| panic!("no call in {records:#?}"));
    assert_eq!(call["outcome"], "answered");
    assert_eq!(call["final_status"], 200);
    assert_eq!(call["final_reason"], Value::Null);
    assert_eq!(call["reason"]["cause"], 16);
    assert_eq!(call["reason"]["protocol"], "Q.850");
    assert_eq!(call["reason"]["text"], Value::Null);
    assert_eq!(call["user_agents"]["caller"], "Yealink");
    assert_eq!(call["user_agents"]["callee"], "Asterisk");
    assert!(call["call_id"].as_str().unwrap().starts_with("h:"));
    assert!(call["linked_call_id"].as_str().unwrap().starts_with("h:"));
    assert!(call["caller_address"].as_str().unwrap().ends_with(":5060"));
    let offer = &call["media"]["offer"]["media"][0];
    assert!(offer["address"].as_str().unwrap().starts_with("h:"));
    let streams = &call["media_quality"]["caller_to_callee"];
    let dtmf: Vec<&Value> = streams
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["metrics"]["dtmf"].as_array().unwrap())
        .collect();
    assert_eq!(dtmf.len(), 3, "the three digits are counted: {streams}");
    assert!(dtmf.iter().all(|d| d["digit"] == "x"), "{dtmf:?}");
    assert!(
        records.iter().any(|r| r["type"] == "stream"),
        "the orphan stream is recorded"
    );
}

#[test]
fn no_identity_reaches_the_spool_or_the_collector_in_clear() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let capture = work.path().join("identities.pcap");
    std::fs::write(&capture, identity_capture()).unwrap();
    // The capture does carry every secret (else the test proves nothing).
    let plain = Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["replay", "--no-progress"])
        .arg(&capture)
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout);
    let plain_ids = record_ids(&plain);
    assert!(plain_ids.len() >= 2, "a call and a stream: {plain}");
    for secret in [
        "4915112345678",
        "Bobsecret",
        "Desk",
        "ext=4711",
        "203.0.113.77",
    ] {
        assert!(
            plain.contains(secret),
            "{secret} not in the plain replay: {plain}"
        );
    }

    // No collector yet: the records stay in the spool, read back here with its key.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = forward_config(
        &pki,
        work.path(),
        port,
        "mode = \"keyed_hash\"\naddresses = \"hash\"",
    );
    let out = replay_forward(&config, &capture, 1);
    assert_eq!(
        out.status.code(),
        Some(3),
        "not drained: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forward = teledge::config::load_forward(&config).unwrap();
    let (mut spool, _) =
        teledge::spool::Spool::open(forward.spool.clone(), forward.keyring.clone()).unwrap();
    let spooled: Vec<Value> = spool
        .read(None, 1000)
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    drop(spool);
    for record in &spooled {
        assert_no_secret("the spool", &record.to_string());
    }
    assert_useful(&spooled);
    assert_ids_are_no_oracle(&plain_ids, &spooled);

    // Then the collector: what it stores is as clean.
    let out_dir = work.path().join("collected");
    let c = collector(&pki, "collector", &out_dir);
    let config = forward_config(
        &pki,
        work.path(),
        c.port,
        "mode = \"keyed_hash\"\naddresses = \"hash\"",
    );
    let out = replay_forward(&config, &capture, 30);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = stored(&out_dir);
    let records: Vec<Value> = lines.iter().map(|l| l["record"].clone()).collect();
    assert!(records.len() >= spooled.len(), "{records:#?}");
    for line in &lines {
        assert_no_secret("the collector's files", &line.to_string());
    }
    assert_useful(&records);
}

#[test]
fn check_config_refuses_more_than_six_kept_digits() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let config = forward_config(
        &pki,
        work.path(),
        9,
        "mode = \"last_digits\"\nkeep_digits = 7",
    );
    let out = replay_forward(&config, Path::new("/nonexistent.pcap"), 1);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("privacy.keep_digits"), "{stderr}");
}

/// Every way a key's bytes could show in debug output.
fn renderings(key: &[u8]) -> Vec<String> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let decimal: Vec<String> = key.iter().map(u8::to_string).collect();
    vec![
        hex.clone(),
        hex.to_uppercase(),
        // `{:?}` of a byte array or slice, and of its first bytes.
        decimal[..8].join(", "),
        decimal[..8].join(",\n    "),
        String::from_utf8_lossy(key).into_owned(),
    ]
}

#[test]
fn no_key_reaches_debug_output() {
    // Keys of distinct bytes, so that any rendering of them is found.
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let spool_key: Vec<u8> = (100..132).collect();
    let site_key: Vec<u8> = (140..172).collect();
    std::fs::write(dir.path().join("spool.key"), &spool_key).unwrap();
    std::fs::write(dir.path().join("site.key"), &site_key).unwrap();
    let auth_key = "hep-auth-Vq7tXw9Lr2";
    let config = crate::daemon::agent_config(
        &pki,
        dir.path(),
        9,
        &format!("[hep]\ntcp = \"127.0.0.1:19060\"\nauth_key = \"{auth_key}\"\n"),
        None,
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            &pki.path("spool.key").display().to_string(),
            &dir.path().join("spool.key").display().to_string(),
        )
        .replace(
            &pki.path("site.key").display().to_string(),
            &dir.path().join("site.key").display().to_string(),
        );
    std::fs::write(&config, text).unwrap();
    let agent = teledge::config::agent::load(&config).unwrap();
    let forward = &agent.forward;

    let (spool, _) =
        teledge::spool::Spool::open(forward.spool.clone(), forward.keyring.clone()).unwrap();
    let forwarder = teledge::uplink::client::Forwarder::new(
        &forward.node_id,
        &forward.uplink,
        &forward.keyring,
    )
    .unwrap();
    let frame_bytes = {
        // A HEP frame carrying the key (chunk 0x000e), as an agent sends it.
        let mut frame =
            crate::daemon::hep_frame(([10, 0, 0, 1], 5060), ([10, 0, 0, 2], 5060), 1, 0, b"x");
        let mut chunk = vec![0, 0, 0, 0x0e];
        chunk.extend_from_slice(&((auth_key.len() + 6) as u16).to_be_bytes());
        chunk.extend_from_slice(auth_key.as_bytes());
        frame.extend_from_slice(&chunk);
        let len = frame.len() as u16;
        frame[4..6].copy_from_slice(&len.to_be_bytes());
        frame
    };
    let frame = teledge::decode::hep::parse(&frame_bytes).unwrap();
    assert_eq!(frame.auth_key.as_deref(), Some(auth_key.as_bytes()));
    let listener = teledge::sources::hep::HepListenerSettings {
        auth_key: Some(auth_key.as_bytes().to_vec()),
        ..Default::default()
    };
    let outputs = [
        format!("{agent:?}"),
        format!("{agent:#?}"),
        format!("{:?}", forward.keyring),
        format!("{:?}", forward.privacy),
        format!(
            "{:?}",
            teledge::privacy::Pseudonymizer::new(forward.privacy.clone())
        ),
        format!("{spool:?}"),
        format!("{forwarder:?}"),
        format!("{:?}", forwarder.dead_letters()),
        format!("{frame:?}"),
        format!("{frame:#?}"),
        format!("{listener:?}"),
        format!(
            "{:?}",
            teledge::sources::hep::HepAuth::key(auth_key.as_bytes())
        ),
    ];
    // The client certificate's private key, as its PEM holds it.
    let client_key_pem = std::fs::read_to_string(pki.path("edge-01.key")).unwrap();
    let pem_body = client_key_pem
        .lines()
        .find(|l| !l.starts_with("-----"))
        .unwrap()
        .to_owned();
    let mut secrets = renderings(&spool_key);
    secrets.extend(renderings(&site_key));
    secrets.push(auth_key.to_owned());
    secrets.extend(renderings(auth_key.as_bytes())[..4].iter().cloned());
    secrets.push(pem_body);
    for output in &outputs {
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "{secret:?} in debug output:\n{output}"
            );
        }
    }
    // The outputs are real: they name what they describe.
    assert!(outputs[0].contains("127.0.0.1:19060"), "{}", outputs[0]);
    assert!(outputs[8].contains("auth_key"), "{}", outputs[8]);
}

/// The capture summary names the files replayed, and those of which no frame decoded, by
/// their file names only: the directories they were in may name people (`/home/<agent>/`,
/// a folder per caller). Both lists, not just the first.
#[test]
fn capture_summary_names_no_directory_of_any_file_it_lists() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let private = work.path().join("Alice-Secretname-4915112345678");
    std::fs::create_dir(&private).unwrap();
    let good = private.join("calls.pcap");
    std::fs::write(&good, identity_capture()).unwrap();
    // A capture of which not one frame decodes: Ethernet frames too short for a header.
    let mut bad = Pcap::new();
    for ms in 0..3u32 {
        bad.0.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        bad.0.extend_from_slice(&(ms * 1000).to_le_bytes());
        bad.0.extend_from_slice(&5u32.to_le_bytes());
        bad.0.extend_from_slice(&5u32.to_le_bytes());
        bad.0.extend_from_slice(&[0xff; 5]);
    }
    let undecodable = private.join("broken.pcap");
    std::fs::write(&undecodable, &bad.0).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = forward_config(&pki, work.path(), port, "mode = \"keyed_hash\"");
    let out = Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["replay", "--no-progress", "--forward"])
        .arg(&config)
        .args(["--forward-timeout", "1"])
        .arg(&good)
        .arg(&undecodable)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let forward = teledge::config::load_forward(&config).unwrap();
    let (mut spool, _) =
        teledge::spool::Spool::open(forward.spool.clone(), forward.keyring.clone()).unwrap();
    let spooled: Vec<Value> = spool
        .read(None, 1000)
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let summary = spooled
        .iter()
        .find(|r| r["type"] == "capture_summary")
        .unwrap_or_else(|| panic!("no capture summary spooled ({stderr}): {spooled:#?}"));
    // Both lists hold the files (else the check below proves nothing)...
    assert_eq!(summary["files"].as_array().unwrap().len(), 2, "{summary}");
    assert_eq!(
        summary["undecodable_files"],
        serde_json::json!(["broken.pcap"]),
        "{summary}"
    );
    // ...and no directory.
    assert_no_secret("the capture summary", &summary.to_string());
}

/// Every header, SDP line and RTCP item that can name a person or a site carries a marker
/// (`Zq…`: no hex digit, no base64 of anything teledge writes), in a call that is answered,
/// talks, reports RTCP and ends. Nothing of them may reach the spool in clear, in keyed-hash
/// mode with addresses hashed: the product token of a User-Agent/Server (the README keeps
/// it) and host names (kept: they name the PBX or carrier) are the only exceptions, and the
/// capture keeps its markers out of them.
#[test]
fn no_marker_of_any_identity_field_reaches_the_spool() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let capture = work.path().join("markers.pcap");
    std::fs::write(&capture, marker_capture().0).unwrap();
    let plain = Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["replay", "--no-progress"])
        .arg(&capture)
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout);
    assert!(plain.contains("\"outcome\":\"answered\""), "{plain}");
    for marker in ["ZqCodec", "ZqProtocol", "ZqFromName"] {
        assert!(
            plain.contains(marker),
            "the plain replay shows {marker}: {plain}"
        );
    }
    assert!(
        plain.contains("\"not_scored\":{\"reason\":\"unknown_codec\",\"codec\":\"ZqCodec\"}"),
        "{plain}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = forward_config(
        &pki,
        work.path(),
        port,
        "mode = \"keyed_hash\"\naddresses = \"hash\"",
    );
    let out = replay_forward(&config, &capture, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Zq"), "a marker on stderr: {stderr}");
    // On disk the records are sealed: no marker in any file of the spool directory.
    let mut files = vec![work.path().join("spool")];
    let mut read = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        read += bytes.len();
        // Whole markers: two bytes would turn up by chance in kilobytes of ciphertext.
        for marker in MARKERS {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{marker} in clear in {}",
                path.display()
            );
        }
    }
    assert!(read > 1000, "the spool was read: {read} bytes");
    let forward = teledge::config::load_forward(&config).unwrap();
    let (mut spool, _) =
        teledge::spool::Spool::open(forward.spool.clone(), forward.keyring.clone()).unwrap();
    let spooled: Vec<String> = spool
        .read(None, 1000)
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    drop(spool);
    assert!(spooled.iter().any(|r| r.contains("\"type\":\"call\"")));
    let leaks: Vec<&str> = spooled
        .iter()
        .flat_map(|r| {
            r.match_indices("Zq")
                .map(move |(at, _)| &r[at..(at + 24).min(r.len())])
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "markers in the spool: {leaks:#?}\n{spooled:#?}"
    );
    // Registered names stay: the record still says what was negotiated.
    let call = spooled
        .iter()
        .find(|r| r.contains("\"type\":\"call\""))
        .unwrap();
    for kept in [
        "\"name\":\"PCMU\"",
        "\"name\":\"telephone-event\"",
        "\"protocol\":\"RTP/AVP\"",
        "\"media\":\"audio\"",
        "\"name\":\"other\"",
        "\"protocol\":\"other\"",
        "\"codec\":\"other\"",
    ] {
        assert!(call.contains(kept), "{kept} not in {call}");
    }
}

/// Every marker [`marker_capture`] writes.
const MARKERS: &[&str] = &[
    "ZqOrigin",
    "ZqSessionName",
    "ZqInfo",
    "ZqUri",
    "ZqEmail",
    "ZqPhone",
    "ZqCodec",
    "ZqLabel",
    "ZqBranch",
    "ZqRecordRoute",
    "ZqFromName",
    "ZqFromUser",
    "ZqFromParam",
    "ZqFromTag",
    "ZqToName",
    "ZqToUser",
    "ZqCallId",
    "ZqRequestUser",
    "ZqRoute",
    "ZqContactName",
    "ZqContactUser",
    "ZqPaiName",
    "ZqPaiUser",
    "ZqPpiName",
    "ZqPpiUser",
    "ZqRpidName",
    "ZqRpidUser",
    "ZqDivName",
    "ZqDivUser",
    "ZqHistoryUser",
    "ZqReferredBy",
    "ZqReplyTo",
    "ZqUserAgent",
    "ZqOrganization",
    "ZqSubject",
    "ZqProxyAuthUser",
    "ZqRealm",
    "ZqXHeader",
    "ZqReasonPhrase",
    "ZqServer",
    "ZqContact2",
    "ZqToTag",
    "ZqAuthUser",
    "ZqCname",
    "ZqName",
    "ZqLoc",
    "ZqTool",
    "ZqNote",
    "ZqRefer",
    "ZqReferTo",
    "ZqBye",
    "ZqByeOk",
    "ZqProtocol",
    "ZqReasonText",
];

/// The call of [`no_marker_of_any_identity_field_reaches_the_spool`].
fn marker_capture() -> (Vec<u8>, Vec<(bool, String)>) {
    let mut pcap = Pcap::new();
    let mut sip = Vec::new();
    let caller = Ipv4Addr::from(CALLER.0);
    let pbx = Ipv4Addr::from(PBX.0);
    let sdp = |ip: Ipv4Addr, port: u16| {
        format!(
            "v=0\r\no=ZqOrigin 1 1 IN IP4 {ip}\r\ns=ZqSessionName\r\ni=ZqInfo\r\nu=http://ZqUri.example/\r\ne=ZqEmail@example.com\r\np=+49 ZqPhone\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 96 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:96 ZqCodec/8000\r\na=rtpmap:101 telephone-event/8000\r\na=label:ZqLabel\r\na=sendrecv\r\n"
        )
    };
    let offer = sdp(caller, CALLER_RTP.1);
    let answer = sdp(pbx, PBX_RTP.1);
    let headers = |cseq: &str, to_tag: &str| {
        format!(
            "Via: SIP/2.0/UDP {caller}:5060;branch=z9hG4bKZqBranch;received={caller};rport=5060\r\n\
             Record-Route: <sip:{pbx};lr;ZqRecordRoute>\r\n\
             From: \"ZqFromName\" <sip:ZqFromUser@{caller};ZqFromParam=1>;tag=ZqFromTag\r\n\
             To: \"ZqToName\" <sip:ZqToUser@{pbx}>{to_tag}\r\n\
             Call-ID: ZqCallId@{caller}\r\nCSeq: {cseq}\r\n"
        )
    };
    let invite = format!(
        "INVITE sip:ZqRequestUser@{pbx} SIP/2.0\r\n{}\
         Route: <sip:{pbx};lr;ZqRoute>\r\n\
         Contact: \"ZqContactName\" <sip:ZqContactUser@{caller}:5060>\r\n\
         P-Asserted-Identity: \"ZqPaiName\" <sip:ZqPaiUser@{caller}>\r\n\
         P-Preferred-Identity: \"ZqPpiName\" <sip:ZqPpiUser@{caller}>\r\n\
         Remote-Party-ID: \"ZqRpidName\" <sip:ZqRpidUser@{caller}>;party=calling\r\n\
         Diversion: \"ZqDivName\" <sip:ZqDivUser@{pbx}>;reason=unconditional\r\n\
         History-Info: <sip:ZqHistoryUser@{pbx}>;index=1\r\n\
         Referred-By: <sip:ZqReferredBy@{pbx}>\r\n\
         Reply-To: <sip:ZqReplyTo@{pbx}>\r\n\
         User-Agent: Yealink ZqUserAgent\r\n\
         Organization: ZqOrganization\r\n\
         Subject: ZqSubject\r\n\
         Proxy-Authorization: Digest username=\"ZqProxyAuthUser\", realm=\"ZqRealm\", nonce=\"1\", uri=\"sip:{pbx}\", response=\"0\"\r\n\
         X-Zq-Header: ZqXHeader\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        headers("1 INVITE", ""),
        offer.len()
    );
    pcap.udp(0, CALLER, PBX, invite.as_bytes());
    sip.push((true, invite.clone()));
    let ok = format!(
        "SIP/2.0 200 ZqReasonPhrase\r\n{}Server: Asterisk ZqServer\r\nContact: <sip:ZqContact2@{pbx}:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
        headers("1 INVITE", ";tag=ZqToTag"),
        answer.len()
    );
    pcap.udp(500, PBX, CALLER, ok.as_bytes());
    sip.push((false, ok.clone()));
    let ack = format!(
        "ACK sip:ZqContact2@{pbx}:5060 SIP/2.0\r\n{}Authorization: Digest username=\"ZqAuthUser\", realm=\"x\", nonce=\"1\", uri=\"sip:x\", response=\"0\"\r\nContent-Length: 0\r\n\r\n",
        headers("1 ACK", ";tag=ZqToTag")
    );
    pcap.udp(520, CALLER, PBX, ack.as_bytes());
    sip.push((true, ack.clone()));
    for i in 0..100u64 {
        let seq = i as u16 + 1;
        let ts = (i * 160) as u32;
        pcap.udp(
            600 + i * 20,
            CALLER_RTP,
            PBX_RTP,
            &rtp(0, i == 0, seq, ts, 0x1111, &[0xff; 160]),
        );
        // The dynamic payload type the SDP names with a marker: the stream's codec, codecs
        // and why it is not scored name it.
        pcap.udp(
            600 + i * 20,
            PBX_RTP,
            CALLER_RTP,
            &rtp(96, i == 0, seq, ts, 0x2222, &[0xff; 160]),
        );
    }
    // RTCP SR + SDES with every item kind (CNAME, NAME, EMAIL, PHONE, LOC, TOOL, NOTE).
    let mut rtcp = vec![0x80, 200, 0, 6];
    rtcp.extend_from_slice(&0x1111u32.to_be_bytes());
    rtcp.extend_from_slice(&[0; 20]);
    let mut items = Vec::new();
    for (kind, text) in [
        (1u8, "ZqCname@host"),
        (2, "ZqName"),
        (3, "ZqEmail@x"),
        (4, "ZqPhone"),
        (5, "ZqLoc"),
        (6, "ZqTool"),
        (7, "ZqNote"),
    ] {
        items.push(kind);
        items.push(text.len() as u8);
        items.extend_from_slice(text.as_bytes());
    }
    items.push(0);
    while (items.len() + 4) % 4 != 0 {
        items.push(0);
    }
    let words = (4 + items.len()) / 4;
    rtcp.extend_from_slice(&[0x81, 202]);
    rtcp.extend_from_slice(&(words as u16).to_be_bytes());
    rtcp.extend_from_slice(&0x1111u32.to_be_bytes());
    rtcp.extend_from_slice(&items);
    pcap.udp(
        1500,
        (CALLER_RTP.0, CALLER_RTP.1 + 1),
        (PBX_RTP.0, PBX_RTP.1 + 1),
        &rtcp,
    );
    let refer = format!(
        "REFER sip:ZqContactUser@{caller}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {pbx}:5060;branch=z9hG4bKZqRefer\r\nFrom: <sip:ZqToUser@{pbx}>;tag=ZqToTag\r\nTo: <sip:ZqFromUser@{caller}>;tag=ZqFromTag\r\nCall-ID: ZqCallId@{caller}\r\nCSeq: 2 REFER\r\nRefer-To: <sip:ZqReferTo@{pbx}>\r\nReferred-By: <sip:ZqReferredBy2@{pbx}>\r\nContent-Length: 0\r\n\r\n"
    );
    pcap.udp(2600, PBX, CALLER, refer.as_bytes());
    sip.push((false, refer.clone()));
    let bye = format!(
        "BYE sip:ZqContactUser@{caller}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {pbx}:5060;branch=z9hG4bKZqBye\r\nFrom: <sip:ZqToUser@{pbx}>;tag=ZqToTag\r\nTo: \"ZqFromName\" <sip:ZqFromUser@{caller}>;tag=ZqFromTag\r\nCall-ID: ZqCallId@{caller}\r\nCSeq: 3 BYE\r\nReason: ZqProtocol;cause=16;text=\"ZqReasonText\"\r\nContent-Length: 0\r\n\r\n"
    );
    pcap.udp(3000, PBX, CALLER, bye.as_bytes());
    sip.push((false, bye.clone()));
    let bye_ok = format!(
        "SIP/2.0 200 ZqByeOk\r\nVia: SIP/2.0/UDP {pbx}:5060;branch=z9hG4bKZqBye\r\nFrom: <sip:ZqToUser@{pbx}>;tag=ZqToTag\r\nTo: \"ZqFromName\" <sip:ZqFromUser@{caller}>;tag=ZqFromTag\r\nCall-ID: ZqCallId@{caller}\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    pcap.udp(3050, CALLER, PBX, bye_ok.as_bytes());
    sip.push((true, bye_ok.clone()));
    (pcap.0, sip)
}

/// The daemon's path for the same call, its SIP sent as HEP: nothing of the markers in the
/// records the collector stores, in the status page's snapshot while the call is open (what
/// a supervisor sees), or in `/metrics`.
#[test]
fn no_marker_leaves_the_daemon() {
    use crate::daemon::{agent_config, collected, free_port, hep_frame, Agent};
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let (udp_port, http_port) = (free_port(), free_port());
    let (token, hash) = crate::status_page::supervisor_token("alice");
    let config = agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!(
            "[hep]\nudp = \"127.0.0.1:{udp_port}\"\n[status]\nenabled = true\n\
             [[supervisor]]\nid = \"alice\"\ntoken_sha256 = \"{hash}\"\nview = [\"*\"]\n"
        ),
        Some(http_port),
    );
    let mut agent = Agent::start(&config);
    agent.wait_for_log("teledge running");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let (_, messages) = marker_capture();
    let send = |(from_caller, text): &(bool, String)| {
        let (src, dst) = if *from_caller {
            (CALLER, PBX)
        } else {
            (PBX, CALLER)
        };
        let frame = hep_frame(src, dst, now, 0, text.as_bytes());
        sock.send_to(&frame, ("127.0.0.1", udp_port)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
    };
    let (setup, ending) = messages.split_at(3);
    setup.iter().for_each(send);
    // What the supervisor sees while the call is open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let snapshot = loop {
        let text = get_with_bearer(http_port, "/api/snapshot", &token);
        if text.contains("\"calls\":[{") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no open call in {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    ending.iter().for_each(send);
    let records = collected(
        &out,
        |r| r["type"] == "call",
        1,
        std::time::Duration::from_secs(20),
    );
    assert_eq!(records.len(), 1, "{records:#?}");
    let metrics = crate::daemon::http_get(http_port, "/metrics");
    agent.stop();
    let stored: Vec<String> = stored(&out).iter().map(|l| l.to_string()).collect();
    for (what, text) in [
        ("the snapshot", snapshot.as_str()),
        ("/metrics", metrics.as_str()),
        ("the collector's files", &stored.join("\n")),
    ] {
        for marker in MARKERS {
            assert!(!text.contains(marker), "{marker} in {what}:\n{text}");
        }
    }
    assert!(
        records[0]["user_agents"]["caller"] == "Yealink",
        "{:#}",
        records[0]
    );
}

/// A GET with `Authorization: Bearer TOKEN` on loopback: status line, headers and body.
fn get_with_bearer(port: u16, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}
