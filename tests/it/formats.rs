//! The capture formats besides pcap and pcapng: bundled captures converted to Microsoft
//! NetMon 2.x and 1.x and Sun snoop by the pinned TShark's `editcap -F`, and written as
//! Endace ERF here (`editcap -F erf` of 4.0.17 refuses every non-ERF packet: "has a record
//! type that can't be saved"), are read by teledge with TShark's figures on the converted
//! file — every frame's time to the nanosecond (`frame.time_epoch`), every SIP message
//! (frame, Call-ID, start line, CSeq), every RTP stream (`-z rtp,streams`, compared as the
//! media suite compares) — and with teledge's own SIP messages on the original. Public files
//! of each format (tests/data/README.md): the same against TShark. Cut and damaged variants:
//! the frames before the damage, then an error naming it.

use std::path::{Path, PathBuf};
use std::process::Command;

use teledge::dissect::Frame;
use teledge::sources::capture_file::{self, CaptureError};

use crate::media::{assert_streams_match, parse_tshark_streams, teledge_streams_in};
use crate::support::*;

/// Ethernet captures with SIP over UDP, TCP and IPv6, RTP with events and a B2BUA.
const CONVERTED: [&str; 7] = [
    "sipp_g711a.pcap",
    "sip_ipv4_tcp.pcap",
    "b2bua_direct_media.pcap",
    "sngrep_aaa.pcap",
    "gen_dtmf_in_voice.pcap",
    "sipp_dtmf_2833_1.pcap",
    "sip_ipv6_udp.pcap",
];

/// The public captures of the new formats in tests/data (provenance in its README).
const PUBLIC: [&str; 4] = [
    "c07-sip-r2.cap",
    "genbroad.snoop",
    "erf-ethernet-example.erf",
    "erf_linktype_sip_rtp.pcapng",
];

fn tshark(args: &[&str]) -> String {
    let out = Command::new("tshark")
        .env("TZ", "UTC")
        .args(args)
        .output()
        .expect("tshark (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// TShark's frame times, as nanoseconds since 1970.
fn tshark_times(path: &Path) -> Vec<i64> {
    tshark(&[
        "-r",
        path.to_str().unwrap(),
        "-T",
        "fields",
        "-e",
        "frame.time_epoch",
    ])
    .lines()
    .map(|l| {
        let (s, f) = l.split_once('.').unwrap_or((l, "0"));
        let secs: i64 = s.parse().unwrap_or_else(|_| panic!("{l}"));
        secs.checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(format!("{f:0<9}")[..9].parse::<i64>().unwrap()))
            .unwrap_or_else(|| panic!("TShark's time {l}"))
    })
    .collect()
}

/// TShark's SIP messages, as tests/tshark/regenerate.py reads them.
fn tshark_sip(path: &Path) -> Vec<MessageKey> {
    let json = tshark(&[
        "-r",
        path.to_str().unwrap(),
        "-d",
        "tcp.port==6060,sip",
        "-Y",
        "sip",
        "-T",
        "json",
        "--no-duplicate-keys",
        "-J",
        "frame sip",
    ]);
    let first = |v: &serde_json::Value| match v {
        serde_json::Value::Array(a) => a[0].clone(),
        other => other.clone(),
    };
    let text = |v: &serde_json::Value| first(v).as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    let packets: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
    for packet in packets {
        let layers = &packet["_source"]["layers"];
        let frame: u64 = text(&first(&layers["frame"])["frame.number"])
            .parse()
            .unwrap();
        let sips = match &layers["sip"] {
            serde_json::Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for sip in sips {
            let start = if let Some(l) = sip.get("sip.Request-Line") {
                text(l).split(' ').next().unwrap().to_owned()
            } else if let Some(l) = sip.get("sip.Status-Line") {
                text(l).split(' ').nth(1).unwrap().to_owned()
            } else {
                continue;
            };
            let headers = &sip["sip.msg_hdr_tree"];
            out.push((
                frame,
                text(&headers["sip.Call-ID"]),
                start,
                text(&headers["sip.CSeq"]),
            ));
        }
    }
    out.sort();
    out
}

fn teledge_times(bytes: &[u8]) -> Vec<i64> {
    let mut times = Vec::new();
    capture_file::read_frames(std::io::Cursor::new(bytes), |f: &Frame<'_>, _| {
        times.push(f.time.as_nanos())
    })
    .unwrap();
    times
}

/// Teledge against TShark on one capture file: times, SIP messages, RTP streams. Returns
/// the frames, messages and streams compared.
fn assert_matches_tshark(path: &Path) -> (usize, usize, usize) {
    let label = path.file_name().unwrap().to_string_lossy().into_owned();
    let bytes = std::fs::read(path).unwrap();
    let times = teledge_times(&bytes);
    assert_eq!(times, tshark_times(path), "{label}: frame times");
    let mut messages = teledge_messages_in(&bytes);
    messages.sort();
    assert_eq!(messages, tshark_sip(path), "{label}: SIP messages");
    let expected = parse_tshark_streams(&tshark(&[
        "-r",
        path.to_str().unwrap(),
        "-q",
        "-o",
        "rtp.heuristic_rtp:TRUE",
        "-z",
        "rtp,streams",
    ]));
    let (ours, records) = teledge_streams_in(&label, &bytes);
    let (compared, _, _) = assert_streams_match(&label, &expected, &ours, &records);
    (times.len(), messages.len(), compared)
}

fn convert(capture: &str, format: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{capture}.{format}"));
    let status = Command::new("editcap")
        .args(["-F", format])
        .arg(data_path(capture))
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "editcap -F {format} {capture}");
    out
}

/// An ERF file of a pcap's Ethernet frames: type 2 (Ethernet, its 2-byte pad) and, every
/// other frame, type 11 with one extension header; 32.32 timestamps; records padded to 8.
fn to_erf(pcap: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = 0u64;
    capture_file::read_frames(std::io::Cursor::new(pcap), |f: &Frame<'_>, _| {
        let nanos = f.time.as_nanos();
        let (secs, frac) = (nanos / 1_000_000_000, (nanos % 1_000_000_000) as u64);
        // The nearest 2^-32 s (Wireshark reads it back rounded to the same nanosecond).
        let fraction = ((frac << 32) + 500_000_000) / 1_000_000_000;
        let ts = ((secs as u64) << 32) + fraction;
        let extension = n % 2 == 1;
        let body = usize::from(extension) * 8 + 2 + f.data.len();
        let rlen = (16 + body).div_ceil(8) * 8;
        out.extend_from_slice(&ts.to_le_bytes());
        out.push(if extension { 0x80 | 11 } else { 2 });
        out.push(0);
        out.extend_from_slice(&(rlen as u16).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&(f.data.len() as u16).to_be_bytes());
        if extension {
            // A Host ID extension header, the last.
            out.extend_from_slice(&[0x03, 0, 0, 0, 0, 0, 0, 7]);
        }
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(f.data);
        out.resize(out.len() + rlen - 16 - body, 0);
        n += 1;
    })
    .unwrap();
    out
}

#[test]
fn converted_captures_match_tshark_and_the_originals() {
    pinned_tshark();
    let dir = tempfile::tempdir().unwrap();
    let (mut frames, mut messages, mut streams) = (0, 0, 0);
    for capture in CONVERTED {
        let original = data(capture);
        let mut sip = teledge_messages_in(&original);
        sip.sort();
        let erf = dir.path().join(format!("{capture}.erf"));
        std::fs::write(&erf, to_erf(&original)).unwrap();
        for format in ["netmon2", "netmon1", "snoop", "erf"] {
            let path = if format == "erf" {
                erf.clone()
            } else {
                convert(capture, format, dir.path())
            };
            // sip_ipv6_udp.pcap's frames are years apart: no ERF reader takes that for ERF
            // (Wireshark checks the first records' times), and neither does teledge.
            if format == "erf" && capture == "sip_ipv6_udp.pcap" {
                let refused = Command::new("tshark")
                    .arg("-r")
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(!refused.status.success(), "TShark read {capture} as ERF");
                let result = capture_file::read_frames(
                    std::io::Cursor::new(std::fs::read(&path).unwrap()),
                    |_, _| {},
                );
                assert!(
                    matches!(result, Err(CaptureError::NotACapture)),
                    "{result:?}"
                );
                continue;
            }
            let (f, m, s) = assert_matches_tshark(&path);
            let mut ours = teledge_messages_in(&std::fs::read(&path).unwrap());
            ours.sort();
            assert_eq!(
                ours, sip,
                "{capture} as {format}: the original's SIP messages"
            );
            frames += f;
            messages += m;
            streams += s;
        }
    }
    assert!(frames >= 6800, "{frames} frames");
    assert!(messages >= 440, "{messages} SIP messages");
    eprintln!("{frames} frames, {messages} SIP messages, {streams} RTP streams compared");
    assert!(streams >= 28, "{streams} RTP streams");
}

#[test]
fn public_captures_of_each_format_match_tshark() {
    pinned_tshark();
    let mut messages = 0;
    for capture in PUBLIC {
        let (frames, m, _) = assert_matches_tshark(&data_path(capture));
        assert!(frames > 0, "{capture}: no frames");
        messages += m;
    }
    // c07-sip-r2.cap: one INVITE, as TShark decodes it; erf_linktype_sip_rtp.pcapng: 7.
    assert!(messages >= 8, "{messages} SIP messages");
}

/// One ERF record (as a DAG card writes it, padded to 8 bytes) of a pcap's Ethernet frame:
/// by `n`, type 2 (Ethernet, its 2-byte pad), type 11 (colour Ethernet) behind an extension
/// header, or the IP packet alone as type 22/23 (IPv4/IPv6) when the frame is untagged IP.
fn erf_record(f: &Frame<'_>, n: u64) -> Vec<u8> {
    let nanos = f.time.as_nanos();
    let (secs, frac) = (nanos / 1_000_000_000, (nanos % 1_000_000_000) as u64);
    let ts = ((secs as u64) << 32) + ((frac << 32) + 500_000_000) / 1_000_000_000;
    let ether_type = f.data.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
    let (kind, extension, pad, frame) = match (n % 3, ether_type) {
        (2, Some(0x0800)) => (22, false, 0, &f.data[14..]),
        (2, Some(0x86DD)) => (23, false, 0, &f.data[14..]),
        (1, _) => (11, true, 2, f.data),
        _ => (2, false, 2, f.data),
    };
    let body = usize::from(extension) * 8 + pad + frame.len();
    let rlen = (16 + body).div_ceil(8) * 8;
    let mut out = ts.to_le_bytes().to_vec();
    out.push(if extension { 0x80 | kind } else { kind });
    out.push(0);
    out.extend_from_slice(&(rlen as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    if extension {
        out.extend_from_slice(&[0x03, 0, 0, 0, 0, 0, 0, 7]);
    }
    out.resize(out.len() + pad, 0);
    out.extend_from_slice(frame);
    // The record's padding stays in the pcap frame: the wire length ends the payload.
    out.resize(rlen, 0);
    out
}

/// A pcap's frames as ERF records in a classic pcap (`LINKTYPE_ERF`) and in a pcapng file
/// (one interface of that link type, nanoseconds), each record's pcap/pcapng time 1000 s
/// after its ERF time: TShark takes a classic pcap frame's time from its ERF header and a
/// pcapng frame's from its block.
fn erf_in_pcap_and_pcapng(pcap: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut classic = Vec::new();
    for word in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 262_144, 197] {
        classic.extend_from_slice(&word.to_le_bytes());
    }
    let mut ng = Vec::new();
    let block = |out: &mut Vec<u8>, kind: u32, body: &[u8]| {
        let len = 12 + body.len().div_ceil(4) * 4;
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + len - 12 - body.len(), 0);
        out.extend_from_slice(&(len as u32).to_le_bytes());
    };
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&[1, 0, 0, 0]);
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    block(&mut ng, 0x0A0D_0D0A, &shb);
    // Link type 197, snap length 0; if_tsresol 9 (nanoseconds), end of options.
    let idb = [197, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0];
    block(&mut ng, 1, &idb);
    let mut n = 0u64;
    capture_file::read_frames(std::io::Cursor::new(pcap), |f: &Frame<'_>, _| {
        let record = erf_record(f, n);
        n += 1;
        let shifted = f.time.as_nanos() as u64 + 1_000_000_000_000;
        let (secs, nanos) = (shifted / 1_000_000_000, shifted % 1_000_000_000);
        for word in [secs, nanos / 1000, record.len() as u64, record.len() as u64] {
            classic.extend_from_slice(&(word as u32).to_le_bytes());
        }
        classic.extend_from_slice(&record);
        let mut epb = 0u32.to_le_bytes().to_vec();
        for word in [
            shifted >> 32,
            shifted & 0xFFFF_FFFF,
            record.len() as u64,
            record.len() as u64,
        ] {
            epb.extend_from_slice(&(word as u32).to_le_bytes());
        }
        epb.extend_from_slice(&record);
        block(&mut ng, 6, &epb);
    })
    .unwrap();
    (classic, ng)
}

/// ERF records saved in pcap and pcapng (`LINKTYPE_ERF`, what a DAG card's capture becomes
/// in Wireshark): every frame's time, SIP message and RTP stream as TShark gives them. Every
/// frame used to be an unsupported link type (the fourth 2026-12-03 campaign's
/// dangdanding/Docs capture, bundled as erf_linktype_sip_rtp.pcapng, 0 of its 7 SIP
/// messages), and a classic pcap's frames would have kept their record's time.
#[test]
fn erf_records_in_pcap_and_pcapng_match_tshark() {
    pinned_tshark();
    let dir = tempfile::tempdir().unwrap();
    let (mut frames, mut messages, mut streams) = (0, 0, 0);
    for capture in CONVERTED {
        let original = data(capture);
        let mut sip = teledge_messages_in(&original);
        sip.sort();
        let (classic, ng) = erf_in_pcap_and_pcapng(&original);
        for (suffix, bytes) in [("erf.pcap", classic), ("erf.pcapng", ng)] {
            let path = dir.path().join(format!("{capture}.{suffix}"));
            std::fs::write(&path, &bytes).unwrap();
            let (f, m, s) = assert_matches_tshark(&path);
            let mut ours = teledge_messages_in(&bytes);
            ours.sort();
            assert_eq!(
                ours, sip,
                "{capture} as {suffix}: the original's SIP messages"
            );
            frames += f;
            messages += m;
            streams += s;
        }
    }
    eprintln!("{frames} frames, {messages} SIP messages, {streams} RTP streams compared");
    assert!(frames >= 3400, "{frames} frames");
    assert!(messages >= 220, "{messages} SIP messages");
    assert!(streams >= 14, "{streams} RTP streams");
}

/// A converted capture cut anywhere, or with a record's length or the frame table damaged:
/// the frames before the damage (never a panic, a hang or a huge allocation), then an error.
#[test]
fn cut_and_damaged_files_give_the_frames_before_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let original = data("sipp_g711a.pcap");
    let all = teledge_times(&original).len();
    let erf = to_erf(&original);
    for format in ["netmon2", "netmon1", "snoop", "erf"] {
        let bytes = if format == "erf" {
            erf.clone()
        } else {
            std::fs::read(convert("sipp_g711a.pcap", format, dir.path())).unwrap()
        };
        for cut in [
            bytes.len() - 1,
            bytes.len() * 2 / 3,
            bytes.len() / 3,
            200,
            130,
            20,
        ] {
            let mut frames = 0;
            let result =
                capture_file::read_frames(std::io::Cursor::new(&bytes[..cut]), |_, _| frames += 1);
            match format {
                // The frame table at the end is gone: no frame can be found.
                "netmon2" | "netmon1" if cut >= 128 => {
                    assert!(
                        matches!(result, Err(CaptureError::IndexTruncated { .. })),
                        "{format} cut at {cut}: {result:?}"
                    );
                    assert_eq!(frames, 0);
                }
                "erf" if cut <= 200 => {
                    // Too little to be taken for ERF, or one record cut.
                    assert!(result.is_err(), "{format} cut at {cut}: {result:?}");
                }
                _ => {
                    assert!(
                        matches!(result, Err(CaptureError::Truncated { .. })),
                        "{format} cut at {cut}: {result:?}"
                    );
                    assert!(frames < all, "{format} cut at {cut}");
                }
            }
        }
    }
    // NetMon: a frame-table entry pointing past the end, then one at a record with a huge
    // length: the frames before it, then the error.
    let netmon = std::fs::read(convert("sipp_g711a.pcap", "netmon2", dir.path())).unwrap();
    let table = u32::from_le_bytes(netmon[24..28].try_into().unwrap()) as usize;
    for (damage, tenth) in [(u32::MAX, true), (0, false)] {
        let mut bytes = netmon.clone();
        let entry = table + 4 * 100;
        if tenth {
            bytes[entry..entry + 4].copy_from_slice(&damage.to_le_bytes());
        } else {
            let record = u32::from_le_bytes(bytes[entry..entry + 4].try_into().unwrap()) as usize;
            bytes[record + 12..record + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        }
        let mut frames = 0;
        let result =
            capture_file::read_frames(std::io::Cursor::new(&bytes[..]), |_, _| frames += 1);
        assert_eq!(frames, 100, "{result:?}");
        assert!(
            matches!(
                result,
                Err(CaptureError::Truncated { frame: 101, .. }
                    | CaptureError::Corrupt { frame: 101, .. })
            ),
            "{result:?}"
        );
    }
    // A frame-table length that is no multiple of 4: refused whole, as Wireshark refuses it.
    let mut bytes = netmon.clone();
    bytes[28] ^= 1;
    let result = capture_file::read_frames(std::io::Cursor::new(&bytes[..]), |_, _| {});
    assert!(
        matches!(result, Err(CaptureError::Corrupt { .. })),
        "{result:?}"
    );
    // snoop: a record whose captured length exceeds its record length.
    let mut snoop = std::fs::read(convert("sipp_g711a.pcap", "snoop", dir.path())).unwrap();
    snoop[16 + 8..16 + 12].copy_from_slice(&1u32.to_be_bytes());
    let mut frames = 0;
    let result = capture_file::read_frames(std::io::Cursor::new(&snoop[..]), |_, _| frames += 1);
    assert!(
        matches!(result, Err(CaptureError::Corrupt { frame: 1, .. })),
        "{result:?}"
    );
    assert_eq!(frames, 0);
}

/// A NetMon file on a pipe (no seeking) is refused by name; snoop and ERF read from one.
#[test]
fn only_netmon_needs_to_seek() {
    struct Pipe<'a>(&'a [u8]);
    impl std::io::Read for Pipe<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl std::io::Seek for Pipe<'_> {
        fn seek(&mut self, _: std::io::SeekFrom) -> std::io::Result<u64> {
            Err(std::io::Error::from_raw_os_error(29))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let original = data("sipp_g711a.pcap");
    let all = teledge_times(&original).len() as u64;
    let netmon = std::fs::read(convert("sipp_g711a.pcap", "netmon2", dir.path())).unwrap();
    let result = capture_file::read_frames(Pipe(&netmon), |_, _| {});
    assert!(
        matches!(result, Err(CaptureError::NotSeekable("NetMon"))),
        "{result:?}"
    );
    let snoop = std::fs::read(convert("sipp_g711a.pcap", "snoop", dir.path())).unwrap();
    assert_eq!(
        capture_file::read_frames(Pipe(&snoop), |_, _| {}).unwrap(),
        all
    );
    assert_eq!(
        capture_file::read_frames(Pipe(&to_erf(&original)), |_, _| {}).unwrap(),
        all
    );
}

/// A NetMon 2.0 file (editcap's) rewritten as 2.`minor` (1 to 3): each record gets the
/// trailer of its version (media type; process index; UTC FILETIME and time zone index),
/// media types vary (NetMon Ethernet 1 and 0, a converted pcap's Ethernet 0xE001), a
/// DNS-cache record (not a frame) and a NetMon filter record (a frame TShark lists, no IP)
/// are added, the first record starts after a hole, and the first two records are stored
/// the other way round (the frame table keeps their order).
fn netmon_2x(base: &[u8], minor: u8) -> Vec<u8> {
    let le32 = |at: usize| u32::from_le_bytes(base[at..at + 4].try_into().unwrap()) as usize;
    let (table, frames) = (le32(24), le32(28) / 4);
    let mut records: Vec<Vec<u8>> = Vec::new();
    for i in 0..frames {
        let at = le32(table + 4 * i);
        let incl = le32(at + 12);
        let mut record = base[at..at + 16 + incl].to_vec();
        let network: u16 = match i % 7 {
            3 => 0xE001,
            5 => 0,
            _ => 1,
        };
        record.extend_from_slice(&network.to_le_bytes());
        if minor >= 2 {
            record.extend_from_slice(&(i as u32).to_le_bytes());
        }
        if minor >= 3 {
            // 2023-11-14 plus 20 ms and 300 ns a frame.
            let filetime = 133_444_444_440_000_000u64 + i as u64 * 200_003;
            record.extend_from_slice(&filetime.to_le_bytes());
            record.push(0);
        }
        records.push(record);
        if i == 2 {
            // A DNS-cache record and a filter record.
            for (network, data) in [(0xFFFEu16, &b"dns"[..]), (0xFFFF, &b"\x00\x00filter"[..])] {
                let mut extra = Vec::new();
                extra.extend_from_slice(&0u64.to_le_bytes());
                extra.extend_from_slice(&(data.len() as u32).to_le_bytes());
                extra.extend_from_slice(&(data.len() as u32).to_le_bytes());
                extra.extend_from_slice(data);
                extra.extend_from_slice(&network.to_le_bytes());
                extra.resize(extra.len() + [0, 0, 4, 4][usize::from(minor)], 0);
                if minor >= 3 {
                    extra.extend_from_slice(&133_444_444_440_600_009u64.to_le_bytes());
                    extra.push(0);
                }
                records.push(extra);
            }
        }
    }
    let mut out = base[..128].to_vec();
    out[4] = minor;
    out.extend_from_slice(b"hole!");
    let mut offsets = vec![0u32; records.len()];
    for i in [1, 0].into_iter().chain(2..records.len()) {
        offsets[i] = out.len() as u32;
        out.extend_from_slice(&records[i]);
    }
    let table_at = out.len() as u32;
    for offset in offsets {
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out[24..28].copy_from_slice(&table_at.to_le_bytes());
    let table_len = out.len() as u32 - table_at;
    out[28..32].copy_from_slice(&table_len.to_le_bytes());
    out
}

#[test]
fn netmon_2_1_to_2_3_trailers_media_types_and_record_order_match_tshark() {
    pinned_tshark();
    let dir = tempfile::tempdir().unwrap();
    for capture in ["sipp_g711a.pcap", "sip_ipv4_tcp.pcap"] {
        let base = std::fs::read(convert(capture, "netmon2", dir.path())).unwrap();
        for minor in 1..=3 {
            let path = dir.path().join(format!("{capture}.2{minor}.cap"));
            std::fs::write(&path, netmon_2x(&base, minor)).unwrap();
            let (frames, _, _) = assert_matches_tshark(&path);
            // The filter record is a frame; the DNS-cache record is not.
            assert_eq!(frames, teledge_times(&data(capture)).len() + 1);
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A gzip-compressed capture (how sample collections hand many over) is read as TShark reads
/// it: pcap and snoop inside match TShark on the `.gz`; a stream cut short gives the frames
/// before the cut and the truncation, as TShark says; gzip in gzip is no capture (TShark:
/// not a capture file either); NetMon inside (read through the frame table at its end) is
/// read whole in memory, as TShark reads it.
#[test]
fn gzip_compressed_captures_are_read_as_tshark_reads_them() {
    pinned_tshark();
    let dir = tempfile::tempdir().unwrap();
    let pcap = data("sngrep_aaa.pcap");
    let snoop = std::fs::read(convert("b2bua_direct_media.pcap", "snoop", dir.path())).unwrap();
    for (name, bytes) in [("sngrep_aaa.pcap.gz", &pcap), ("b2bua.snoop.gz", &snoop)] {
        let path = dir.path().join(name);
        std::fs::write(&path, gzip(bytes)).unwrap();
        let (frames, messages, _) = assert_matches_tshark(&path);
        assert!(frames > 100 && messages > 10, "{name}: {frames} frames");
    }
    let whole = teledge_times(&pcap).len() as u64;
    let compressed = gzip(&pcap);
    let mut frames = 0;
    let result = capture_file::read_frames(
        std::io::Cursor::new(&compressed[..compressed.len() / 2]),
        |_, _| frames += 1,
    );
    assert!(
        matches!(
            result,
            Err(CaptureError::Truncated { .. } | CaptureError::Compressed { .. })
        ),
        "{result:?}"
    );
    assert!(frames > 0 && frames < whole, "{frames} frames");
    // Cut where the data ends at a record boundary: still said, not taken for the end.
    let boundary = gzip(&pcap[..24]);
    let mut cut_stream = boundary.clone();
    cut_stream.truncate(boundary.len() - 8);
    let result = capture_file::read_frames(std::io::Cursor::new(&cut_stream), |_, _| {});
    assert!(
        matches!(result, Err(CaptureError::Compressed { .. })),
        "{result:?}"
    );
    let result = capture_file::read_frames(std::io::Cursor::new(gzip(&compressed)), |_, _| {});
    assert!(
        matches!(result, Err(CaptureError::NotACapture)),
        "{result:?}"
    );
    // NetMon inside gzip (its frames are found through a table at its end): read whole in
    // memory, as TShark reads it (it used to be refused as needing to seek).
    for capture in ["sipp_g711a.pcap", "b2bua_direct_media.pcap"] {
        let netmon = std::fs::read(convert(capture, "netmon2", dir.path())).unwrap();
        let path = dir.path().join(format!("{capture}.netmon2.cap.gz"));
        std::fs::write(&path, gzip(&netmon)).unwrap();
        let (frames, _, _) = assert_matches_tshark(&path);
        assert!(frames > 100, "{capture}: {frames} frames");
        // Cut short: the frame table at the end is lost, said as TShark says it.
        let whole = gzip(&netmon);
        let result = capture_file::read_frames(
            std::io::Cursor::new(&whole[..whole.len() * 3 / 4]),
            |_, _| {},
        );
        assert!(result.is_err(), "{capture}: {result:?}");
    }
}

/// Frames of a capture to write: time in nanoseconds, bytes.
type TimedFrames = Vec<(i64, Vec<u8>)>;

/// A classic pcap (microseconds, little-endian) of `link` holding `frames` (time, bytes).
fn classic_pcap(link: u32, frames: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 262_144, link] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (nanos, data) in frames {
        let (secs, frac) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
        for word in [secs, frac / 1000, data.len() as i64, data.len() as i64] {
            out.extend_from_slice(&(word as u32).to_le_bytes());
        }
        out.extend_from_slice(data);
    }
    out
}

/// A pcap's untagged IPv4/IPv6 Ethernet frames (time, EtherType, IP packet), cut to
/// microseconds.
fn ip_frames(pcap: &[u8]) -> Vec<(i64, u16, Vec<u8>)> {
    let mut out = Vec::new();
    capture_file::read_frames(std::io::Cursor::new(pcap), |f: &Frame<'_>, _| {
        let ether_type = f.data.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
        if let Some(t @ (0x0800 | 0x86DD)) = ether_type {
            let micros = f.time.as_nanos() / 1000 * 1000;
            out.push((micros, t, f.data[14..].to_vec()));
        }
    })
    .unwrap();
    out
}

/// The link types that wrap a frame or an IP packet in a header of their own, written from
/// the converted captures' IP frames: Cisco HDLC (104), Linux NFLOG (239: a packet header, a
/// prefix and the payload TLV, little-endian), Apple PKTAP (258: a 108-byte header, then the
/// Ethernet frame) and ERF HDLC/POS records with Cisco HDLC in them (197). Every frame's
/// time, SIP message and RTP stream as TShark gives them; each link type was an unsupported
/// one (the fourth 2026-12-03 campaign found ERF in pcapng; these are its siblings).
#[test]
fn wrapping_link_types_match_tshark() {
    pinned_tshark();
    let dir = tempfile::tempdir().unwrap();
    let (mut frames, mut messages, mut streams) = (0, 0, 0);
    for capture in CONVERTED {
        let original = data(capture);
        let ip = ip_frames(&original);
        let chdlc = |t: u16, p: &[u8]| {
            let mut f = vec![0x0F, 0x00];
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(p);
            f
        };
        let mut wrapped: Vec<(&str, u32, TimedFrames)> = Vec::new();
        wrapped.push((
            "chdlc",
            104,
            ip.iter().map(|(n, t, p)| (*n, chdlc(*t, p))).collect(),
        ));
        wrapped.push((
            "nflog",
            239,
            ip.iter()
                .map(|(n, t, p)| {
                    let family = if *t == 0x0800 { 2 } else { 10 };
                    let mut f = vec![family, 0, 0, 5];
                    let mut tlv = |kind: u16, value: &[u8]| {
                        f.extend_from_slice(&((4 + value.len()) as u16).to_le_bytes());
                        f.extend_from_slice(&kind.to_le_bytes());
                        f.extend_from_slice(value);
                        f.resize(f.len().div_ceil(4) * 4, 0);
                    };
                    let mut packet_header = t.to_be_bytes().to_vec();
                    packet_header.extend_from_slice(&[1, 0]);
                    tlv(1, &packet_header);
                    tlv(10, b"teledge\0");
                    tlv(9, p);
                    (*n, f)
                })
                .collect(),
        ));
        wrapped.push((
            "pktap",
            258,
            ip.iter()
                .map(|(n, t, p)| {
                    let mut f = vec![0u8; 108];
                    f[..4].copy_from_slice(&108u32.to_le_bytes());
                    f[4..8].copy_from_slice(&1u32.to_le_bytes());
                    f[8..12].copy_from_slice(&1u32.to_le_bytes());
                    f[12..15].copy_from_slice(b"en0");
                    f.extend_from_slice(&[0x02; 6]);
                    f.extend_from_slice(&[0x04; 6]);
                    f.extend_from_slice(&t.to_be_bytes());
                    f.extend_from_slice(p);
                    (*n, f)
                })
                .collect(),
        ));
        wrapped.push((
            "erf_hdlc",
            197,
            ip.iter()
                .map(|(n, t, p)| {
                    let payload = chdlc(*t, p);
                    let (secs, frac) = ((*n / 1_000_000_000) as u64, (*n % 1_000_000_000) as u64);
                    let ts = (secs << 32) + ((frac << 32) + 500_000_000) / 1_000_000_000;
                    let mut f = ts.to_le_bytes().to_vec();
                    f.extend_from_slice(&[1, 0]);
                    f.extend_from_slice(&((16 + payload.len()) as u16).to_be_bytes());
                    f.extend_from_slice(&[0, 0]);
                    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                    f.extend_from_slice(&payload);
                    (*n, f)
                })
                .collect(),
        ));
        for (name, link, list) in wrapped {
            let bytes = classic_pcap(link, &list);
            let path = dir.path().join(format!("{capture}.{name}.pcap"));
            std::fs::write(&path, &bytes).unwrap();
            let (f, m, s) = assert_matches_tshark(&path);
            assert_eq!(f, list.len(), "{capture} as {name}");
            frames += f;
            messages += m;
            streams += s;
        }
    }
    eprintln!("{frames} frames, {messages} SIP messages, {streams} RTP streams compared");
    assert!(frames >= 6600, "{frames} frames");
    assert!(messages >= 440, "{messages} SIP messages");
    assert!(streams >= 28, "{streams} RTP streams");
}

/// The sum of a TShark field over every frame (decimal or `0x` hex; empty values count
/// nothing).
fn tshark_sum(path: &Path, field: &str) -> u64 {
    tshark(&["-r", path.to_str().unwrap(), "-T", "fields", "-e", field])
        .lines()
        .map(str::trim)
        .filter_map(|l| match l.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => l.parse::<u64>().ok(),
        })
        .sum()
}

fn file_drops(bytes: &[u8]) -> capture_file::FileDrops {
    let mut drops = capture_file::FileDrops::default();
    capture_file::read_frames_noting_drops(std::io::Cursor::new(bytes), &mut drops, |_, _| {})
        .unwrap();
    drops
}

/// Sets the ERF loss counter of every ERF record of a classic pcap or pcapng file written by
/// [`erf_in_pcap_and_pcapng`] to its frame number (the colour records keep a colour there).
fn with_loss_counters(file: &mut [u8], pcapng: bool) {
    let mut at = if pcapng {
        // SHB (28 bytes) and the IDB (32).
        28 + 32
    } else {
        24
    };
    let mut n = 1u16;
    while at < file.len() {
        let (data, next) = if pcapng {
            let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
            (at + 28, at + len)
        } else {
            let caplen = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
            (at + 16, at + 16 + caplen)
        };
        file[data + 12..data + 14].copy_from_slice(&n.to_be_bytes());
        n += 1;
        at = next;
    }
}

/// Packets a capture lost before they were written, as the file records them, are counted
/// as TShark reads them: the ERF loss counter of a public DAG capture (one record says one
/// was lost) and of ERF records in pcap and pcapng (every record's counter set, the colour
/// records' field a colour, not counted: TShark shows it as `erf.color`). These used to be
/// ignored: a replay said nothing of packets the capture itself had lost.
#[test]
fn erf_loss_counters_are_counted_as_tshark_reads_them() {
    let public = data_path("erf-ethernet-example.erf");
    let want = tshark_sum(&public, "erf.lctr");
    assert_eq!(want, 1, "the public capture's loss counters");
    assert_eq!(
        file_drops(&std::fs::read(&public).unwrap()).erf_loss_counters,
        want
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut classic, mut ng) = erf_in_pcap_and_pcapng(&data("sipp_g711a.pcap"));
    with_loss_counters(&mut classic, false);
    with_loss_counters(&mut ng, true);
    for (name, bytes) in [("erf.pcap", &classic), ("erf.pcapng", &ng)] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let want = tshark_sum(&path, "erf.lctr");
        let colours = tshark_sum(&path, "erf.color");
        assert!(
            want > 0 && colours > 0,
            "{name}: {want} lost, colours {colours}"
        );
        let drops = file_drops(bytes);
        assert_eq!(drops.erf_loss_counters, want, "{name}");
        assert_eq!(drops.packet_drop_counts + drops.interface_statistics, 0);
    }
}

/// A pcapng file in either byte order: SHB, two Ethernet interfaces, the packets of a
/// bundled capture on interface 0 with `epb_dropcount` on every third, and Interface
/// Statistics Blocks (two for interface 0: the later, cumulative one counts; one for
/// interface 1; one naming an undeclared interface, ignored).
fn pcapng_with_drops(pcap: &[u8], big_endian: bool) -> (Vec<u8>, u64, u64) {
    let u16b = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u64b = |v: u64| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let block = |out: &mut Vec<u8>, kind: u32, body: &[u8]| {
        let len = 12 + body.len().div_ceil(4) * 4;
        out.extend_from_slice(&u32b(kind));
        out.extend_from_slice(&u32b(len as u32));
        out.extend_from_slice(body);
        out.resize(out.len() + len - 12 - body.len(), 0);
        out.extend_from_slice(&u32b(len as u32));
    };
    let option = |out: &mut Vec<u8>, code: u16, value: u64| {
        out.extend_from_slice(&u16b(code));
        out.extend_from_slice(&u16b(8));
        out.extend_from_slice(&u64b(value));
    };
    let mut ng = Vec::new();
    let mut shb = u32b(0x1a2b_3c4d).to_vec();
    shb.extend_from_slice(&u16b(1));
    shb.extend_from_slice(&u16b(0));
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    block(&mut ng, 0x0A0D_0D0A, &shb);
    for _ in 0..2 {
        let mut idb = u16b(1).to_vec();
        idb.extend_from_slice(&u16b(0));
        idb.extend_from_slice(&u32b(262_144));
        block(&mut ng, 1, &idb);
    }
    let mut n = 0u64;
    let mut dropcounts = 0;
    capture_file::read_frames(std::io::Cursor::new(pcap), |f: &Frame<'_>, _| {
        let micros = f.time.as_nanos() as u64 / 1000;
        let mut epb = u32b(0).to_vec();
        epb.extend_from_slice(&u32b((micros >> 32) as u32));
        epb.extend_from_slice(&u32b(micros as u32));
        epb.extend_from_slice(&u32b(f.data.len() as u32));
        epb.extend_from_slice(&u32b(f.data.len() as u32));
        epb.extend_from_slice(f.data);
        epb.resize(epb.len().div_ceil(4) * 4, 0);
        if n.is_multiple_of(3) {
            option(&mut epb, 4, n + 1); // epb_dropcount
            dropcounts += n + 1;
            epb.extend_from_slice(&[0, 0, 0, 0]);
        }
        n += 1;
        block(&mut ng, 6, &epb);
    })
    .unwrap();
    let isb = |interface: u32, ifdrop: u64, osdrop: Option<u64>| {
        let mut body = u32b(interface).to_vec();
        body.extend_from_slice(&u32b(0));
        body.extend_from_slice(&u32b(0));
        option(&mut body, 5, ifdrop);
        if let Some(osdrop) = osdrop {
            option(&mut body, 7, osdrop);
        }
        body.extend_from_slice(&[0, 0, 0, 0]);
        body
    };
    block(&mut ng, 5, &isb(0, 4, None));
    block(&mut ng, 5, &isb(1, 5, Some(6)));
    block(&mut ng, 5, &isb(0, 7, Some(1)));
    block(&mut ng, 5, &isb(9, 1000, None));
    // Interface 0's last block (7 + 1) and interface 1's (5 + 6).
    (ng, dropcounts, 8 + 11)
}

/// pcapng's own loss figures, in either byte order: every packet block's `epb_dropcount`
/// (TShark's `frame.drop_count`), and the Interface Statistics Blocks' `isb_ifdrop` and
/// `isb_osdrop` (TShark shows them in no field; dumpcap writes the kernel's drops there when
/// it stops), counted from each interface's last block. The replay's summary carries them
/// and its table says so.
#[test]
fn pcapng_drop_counts_and_interface_statistics_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    for big_endian in [false, true] {
        let (ng, dropcounts, statistics) = pcapng_with_drops(&data("sipp_g711a.pcap"), big_endian);
        let path = dir.path().join(format!("drops-{big_endian}.pcapng"));
        std::fs::write(&path, &ng).unwrap();
        assert_eq!(
            tshark_sum(&path, "frame.drop_count"),
            dropcounts,
            "{big_endian}"
        );
        let drops = file_drops(&ng);
        assert_eq!(drops.packet_drop_counts, dropcounts, "{big_endian}");
        assert_eq!(drops.interface_statistics, statistics, "{big_endian}");
        assert_eq!(drops.erf_loss_counters, 0);

        let out = Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args(["replay", "--no-progress"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let summary: serde_json::Value =
            serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(
            summary["capture_drops"],
            serde_json::json!({
                "interface_statistics": statistics,
                "packet_drop_counts": dropcounts,
                "erf_loss_counters": 0,
                "snoop_cumulative_drops": 0,
            })
        );
        let table = Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args([
                "replay",
                "--no-progress",
                "--format",
                "table",
                "--tz",
                "UTC",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(
            text.contains(&format!(
                "the capture lost {} packets before they were written",
                dropcounts + statistics
            )),
            "{text}"
        );
    }
}

/// A snoop file's records carry the capturing host's cumulative drop count: the highest is
/// counted (TShark reads the field but shows it in no field; the public Solaris capture has
/// none, so its records are given rising counts, one falling back, which must not count).
#[test]
fn snoop_cumulative_drops_are_counted() {
    let mut bytes = data("genbroad.snoop");
    assert_eq!(file_drops(&bytes).snoop_cumulative_drops, 0);
    let mut at = 16;
    let mut n = 0u32;
    while at + 24 <= bytes.len() {
        let record = u32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let cumulative = match n {
            0..=9 => n / 2,
            10 => 1,
            _ => 7,
        };
        bytes[at + 12..at + 16].copy_from_slice(&cumulative.to_be_bytes());
        n += 1;
        at += record;
    }
    assert!(n > 20);
    let drops = file_drops(&bytes);
    assert_eq!(drops.snoop_cumulative_drops, 7);
    assert_eq!(
        drops.interface_statistics + drops.packet_drop_counts + drops.erf_loss_counters,
        0
    );
}
