//! Shared helpers: loading fixtures and TShark references, running the pipeline in memory.

use std::path::PathBuf;

use teledge::correlation::calls::CallLimits;
use teledge::decode::sip::StartLine;
use teledge::dissect::{DissectLimits, Dissector, Frame};
use teledge::record::{CallRecord, CaptureSummary, Record};
use teledge::replay::{Replay, ReplaySettings};
use teledge::sources::capture_file::{self, CaptureError};
use teledge::time::Timestamp;

/// Every capture bundled in `tests/data` (a conformance test checks this list against the
/// folder, so none is forgotten).
pub const ALL_CAPTURES: [&str; 28] = [
    "rtp_rtcp_sip_ipv4_udp.pcap",
    "sip_ipv4_tcp.pcap",
    "sip_ipv4_tcp_fragmented.pcap",
    "ipv6_udp_fragmented.pcap",
    "sip_ipv6_udp.pcap",
    "erspan_sip_ipv4_udp.pcapng",
    "sngrep_aaa.pcap",
    "hep.pcap",
    "hep3_compressed.pcapng",
    "sipp_g711a.pcap",
    "sipp_dtmf_2833_1.pcap",
    "websocket-sip.pcapng",
    "b2bua_direct_media.pcap",
    "sipp_branch_403_bye.pcap",
    "gen_rtcp_clock_offset.pcap",
    "gen_early_burst.pcap",
    "gen_timestamp_reset.pcap",
    "gen_dtmf_in_voice.pcap",
    "gen_static_payload_types.pcap",
    "sip_loopback_sll.pcap",
    "sip_sctp.pcap",
    "pppoe_sip_reqs.pcap",
    "sip_joined_100_with_tag.pcap",
    "geneve_sip.pcap",
    "pcapng_three_interfaces.pcapng",
    "rtp_over_tcp_and_turn.pcap",
    "erf_linktype_sip_rtp.pcapng",
    "gst_rtcp_orphan_streams.pcap",
];

/// The TShark version every reference in `tests/data/tshark` comes from (Debian 12's).
pub const PINNED_TSHARK: &str = "TShark (Wireshark) 4.0.";

/// The first line of `tshark --version`; panics with what to do when TShark is missing or
/// is not the pinned version, whose RTP analysis rules the references follow.
pub fn pinned_tshark() -> String {
    let out = std::process::Command::new("tshark")
        .arg("--version")
        .output()
        .expect("tshark is required: run ./scripts/test.sh, which installs Debian 12's tshark");
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        version.starts_with(PINNED_TSHARK),
        "installed {version:?}, but the references and teledge's Wireshark figures follow \
         {PINNED_TSHARK}x (Debian 12's package): RTP analysis rules differ between versions"
    );
    version
}

pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

pub fn data(name: &str) -> Vec<u8> {
    std::fs::read(data_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One SIP message as TShark or teledge saw it: (frame, Call-ID, method or status, CSeq).
pub type MessageKey = (u64, String, String, String);

/// The TShark reference for a capture.
pub fn tshark_messages(capture: &str) -> Vec<MessageKey> {
    let text = std::fs::read_to_string(data_path(&format!("tshark/{capture}.sip.tsv"))).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].parse().unwrap(), f[1].into(), f[2].into(), f[3].into())
        })
        .collect()
}

/// Every SIP message teledge's decode path yields for a bundled capture.
pub fn teledge_messages(capture: &str) -> Vec<MessageKey> {
    teledge_messages_in(&data(capture))
}

/// Every SIP message teledge's decode path yields for capture file bytes.
pub fn teledge_messages_in(bytes: &[u8]) -> Vec<MessageKey> {
    let mut dissector = Dissector::new(DissectLimits::default());
    let mut out = Vec::new();
    let mut sink = |meta: &teledge::dissect::MessageMeta,
                    msg: &teledge::decode::sip::SipMessage<'_>| {
        let start = match msg.start {
            StartLine::Request { method, .. } => method.as_str().to_owned(),
            StartLine::Response { status, .. } => status.to_string(),
        };
        out.push((
            meta.frame,
            msg.call_id.to_owned(),
            start,
            format!("{} {}", msg.cseq.number, msg.cseq.method),
        ));
    };
    let mut last = Timestamp::default();
    capture_file::read_frames(std::io::Cursor::new(bytes), |frame: &Frame<'_>, _| {
        last = frame.time;
        dissector.frame(frame, &mut sink);
    })
    .unwrap();
    dissector.finish(last, &mut sink);
    out
}

/// Runs the whole replay over bytes in memory.
pub fn replay_bytes(
    bytes: &[u8],
    settings: ReplaySettings,
) -> (Vec<CallRecord>, CaptureSummary, Result<u64, CaptureError>) {
    let mut calls = Vec::new();
    let mut replay = Replay::new(settings);
    let mut sink = |r: Record| {
        if let Record::Call(c) = r {
            calls.push(*c);
        }
    };
    let result = replay.read("memory", std::io::Cursor::new(bytes), &mut sink, |_| {});
    let summary = replay.finish(&mut sink);
    (calls, summary, result)
}

pub fn replay(capture: &str) -> (Vec<CallRecord>, CaptureSummary) {
    let (calls, summary, result) = replay_bytes(&data(capture), ReplaySettings::default());
    result.unwrap();
    (calls, summary)
}

/// Settings with timeouts long enough for captures whose clocks jump by years.
pub fn patient_settings() -> ReplaySettings {
    let forever = std::time::Duration::from_secs(200 * 365 * 86_400);
    ReplaySettings {
        calls: CallLimits {
            setup_timeout: forever,
            max_call_duration: forever,
            ..CallLimits::default()
        },
        ..ReplaySettings::default()
    }
}

/// Time of the first frame of a capture.
pub fn first_frame_time(capture: &str) -> Timestamp {
    let mut first = None;
    capture_file::read_frames(
        std::io::Cursor::new(&data(capture)[..]),
        |frame: &Frame<'_>, _| {
            first.get_or_insert(frame.time);
        },
    )
    .unwrap();
    first.unwrap()
}

pub fn call<'a>(calls: &'a [CallRecord], call_id: &str) -> &'a CallRecord {
    calls
        .iter()
        .find(|c| c.call_id == call_id)
        .unwrap_or_else(|| panic!("no call {call_id}"))
}

/// The path of a test tool (`teledge-gencap`, `teledge-spoolgen`, `teledge-loadgen`): they are
/// binaries of the `teledge-tools` workspace member, not of the product, so cargo does not
/// build them for these tests. The first call builds them (`cargo build -p teledge-tools
/// --bins`) into the target and profile directory this test binary was built in — so
/// `CARGO_TARGET_DIR` and `--release` are followed — and every later call reuses that build.
pub fn tool(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let profile_dir = BUILT.get_or_init(|| {
        // <target>/<profile>/deps/it-<hash>
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(std::path::Path::parent)
            .expect("the test binary lies in <target>/<profile>/deps")
            .to_owned();
        let target_dir = profile_dir.parent().expect("a target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "teledge-tools", "--bins"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the test tools failed: {status}");
        profile_dir
    });
    let path = profile_dir.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
