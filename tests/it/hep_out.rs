//! The HEP relay (`[hep_out]`, `replay --hep-out`) against an independent decoder, and
//! Kamailio as a HEP source. Real parts only: Kamailio 5.6 from Debian (`sipcapture` to
//! receive, `siptrace` to send), SIPp, TShark for what went in.
//!
//! Kamailio's `sipcapture` with `nonsip_hook` hands every HEP packet to
//! `event_route[sipcapture:request]`, where `$hep(0x00N)` reads its chunks (reference:
//! scale-out-and-hep.md §5); the route logs them on one line per frame, which the tests read.
//! It does not expose 0x0012/0x0013/0x0020 (they read as empty): those are checked with our
//! own decoder in the unit tests (`relay::frames`, `decode::hep::encode`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::Digest;

use crate::daemon::{agent_config, collected, free_port, teledge, Agent};
use crate::support::data_path;
use crate::uplink::{collector, pki};

pub(crate) const MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules/";

/// A Kamailio process with its configuration and log in a directory of its own.
pub(crate) struct Kamailio {
    pub(crate) child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Kamailio {
    pub(crate) fn start(config: &str) -> Kamailio {
        assert!(
            Path::new("/usr/sbin/kamailio").exists(),
            "Kamailio is needed (Debian package kamailio; scripts/test.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kamailio.cfg");
        let config = config.replace("@DIR@", dir.path().to_str().unwrap());
        std::fs::write(&cfg, config).unwrap();
        std::fs::create_dir_all(dir.path().join("db")).unwrap();
        let check = Command::new("kamailio")
            .args(["-c", "-f"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "kamailio -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.path().join("kamailio.log");
        // A process group of its own: Kamailio forks workers, which outlive a kill of the
        // main process alone (reparented, listening on); `drop` kills the whole group.
        let child = Command::new("kamailio")
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-f"])
            .arg(&cfg)
            .arg("-Y")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        Kamailio {
            child,
            log,
            _dir: dir,
        }
    }

    pub(crate) fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The chunks of every frame the receiver logged, in arrival order.
    fn frames(&self) -> Vec<HashMap<String, String>> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("HEPLOG ").map(|(_, rest)| rest))
            .map(|rest| {
                rest.split(' ')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let group = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill takes a process group id (the group this Kamailio leads, made at
        // spawn) and a signal number.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `calls` calls from SIPp's built-in uac (on 127.0.0.1:`uac_port`) to the proxy `kamailio`
/// listening on 127.0.0.1:`proxy_port`, which routes them to SIPp's built-in uas on
/// 127.0.0.1:`uas_port`; `uac_options` add to the uac's (call rate `-r`, hold time `-d`).
/// Waits `settle` first and checks Kamailio is still running then (a configuration it
/// accepted with `-c` can still fail to start), and returns once the uac succeeded and the uas
/// has seen every call; SIPp runs in `work`.
pub(crate) fn sipp_through_proxy(
    kamailio: &mut Kamailio,
    settle: Duration,
    work: &Path,
    (proxy_port, uas_port, uac_port): (u16, u16, u16),
    calls: usize,
    uac_options: &[&str],
) {
    thread::sleep(settle);
    assert!(
        kamailio.child.try_wait().unwrap().is_none(),
        "Kamailio exited: {}",
        kamailio.log()
    );
    std::fs::create_dir_all(work).unwrap();
    let uas = format!("-sn uas -i 127.0.0.1 -p {uas_port} -m {calls}");
    let uas: Vec<&str> = uas.split(' ').collect();
    let mut uas = crate::daemon::sipp(&uas, work).spawn().unwrap();
    // The uas listening before the first INVITE reaches it.
    thread::sleep(Duration::from_millis(300));
    let uac = format!(
        "-sn uac 127.0.0.1:{proxy_port} -i 127.0.0.1 -p {uac_port} -s 1000 -m {calls} -timeout 30"
    );
    let mut uac: Vec<&str> = uac.split(' ').collect();
    uac.extend_from_slice(uac_options);
    let status = crate::daemon::sipp(&uac, work).status().unwrap();
    assert!(
        status.success(),
        "sipp uac through Kamailio: {status:?}\n{}",
        kamailio.log()
    );
    let _ = uas.wait();
}

/// A `sipcapture` receiver on UDP `port` that logs the chunks of every HEP frame; for type 5
/// frames also the JSON itself (it carries no spaces: heplify's and ours are compact).
fn sipcapture_receiver(port: u16) -> Kamailio {
    Kamailio::start(&format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
listen=udp:127.0.0.1:{port}
mpath="{MODULES}"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "db_text.so"
loadmodule "sipcapture.so"
modparam("sipcapture", "db_url", "text://@DIR@/db")
modparam("sipcapture", "hep_capture_on", 1)
modparam("sipcapture", "capture_on", 1)
modparam("sipcapture", "nonsip_hook", 1)
event_route[sipcapture:request] {{
    if ($hep(0x00b) == 5) {{
        xlog("L_ALERT", "HEPLOG v=$hep(version) f=$hep(0x001) p=$hep(0x002) s=$hep(0x003) d=$hep(0x004) s6=$hep(0x005) d6=$hep(0x006) sp=$hep(0x007) dp=$hep(0x008) ts=$hep(0x009) us=$hep(0x00a) t=$hep(0x00b) c=$hep(0x00c) a=$hep(0x00e) cid=$hep(0x011) len=$(hep(0x00f){{s.len}}) sha=$(hep(0x00f){{s.sha256}}) json=$hep(0x00f)\n");
    }} else {{
        xlog("L_ALERT", "HEPLOG v=$hep(version) f=$hep(0x001) p=$hep(0x002) s=$hep(0x003) d=$hep(0x004) s6=$hep(0x005) d6=$hep(0x006) sp=$hep(0x007) dp=$hep(0x008) ts=$hep(0x009) us=$hep(0x00a) t=$hep(0x00b) c=$hep(0x00c) a=$hep(0x00e) cid=$hep(0x011) len=$(hep(0x00f){{s.len}}) sha=$(hep(0x00f){{s.sha256}})\n");
    }}
    return 0;
}}
request_route {{ drop; }}
onreply_route {{ drop; }}
"#
    ))
}

/// Sends probe frames until the receiver logs one: it is then up.
fn wait_until_receiving(k: &Kamailio, port: u16) {
    let probe = probe_frame();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        socket.send_to(&probe, ("127.0.0.1", port)).unwrap();
        thread::sleep(Duration::from_millis(200));
        if k.frames().iter().any(|f| f["cid"] == "probe") {
            return;
        }
    }
    panic!("Kamailio never received a HEP frame:\n{}", k.log());
}

/// A HEP frame with correlation id `probe`, encoded by our encoder (any frame would do).
fn probe_frame() -> Vec<u8> {
    use std::borrow::Cow;
    use teledge::decode::hep::{encode, HepFrame, IpFamily, IpProtocol, ProtoType};
    encode(&HepFrame {
        family: IpFamily::V4,
        ip_protocol: IpProtocol::Udp,
        src: "127.0.0.1:1".parse().unwrap(),
        dst: "127.0.0.1:2".parse().unwrap(),
        time: teledge::time::Timestamp::now(),
        proto_type: ProtoType::Other(100),
        capture_id: Some(1),
        keep_alive_s: None,
        auth_key: None,
        payload: Cow::Borrowed(b"probe"),
        compressed: false,
        correlation_id: Some(Cow::Borrowed(b"probe")),
        vlan: None,
        node_name: None,
        tcp_flags: None,
        ip_tos: None,
        mos: None,
        vendor_chunks: 0,
        skipped_chunks: 0,
    })
    .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// TShark's fields of the frames matching `filter`, one row per frame.
fn tshark_rows(capture: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    crate::support::pinned_tshark();
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(capture)
        .args(["-Y", filter, "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// `1105725482.965944000` → ("1105725482", "965944").
fn sec_usec(epoch: &str) -> (String, String) {
    let (s, frac) = epoch.split_once('.').unwrap();
    let us: u32 = frac[..6].parse().unwrap();
    (s.to_owned(), us.to_string())
}

/// Every SIP message of a capture, as TShark reads it, arrives at Kamailio's `sipcapture`
/// as one type-1 frame with the same addresses, ports, transport, capture time (µs), Call-ID
/// and payload bytes, in capture order; every RTCP packet of the call as a type-5 frame
/// whose correlation id is the call's Call-ID and whose JSON names the packet's sender
/// SSRC and type; each stream of the call as a type-34 report; all with our capture id and
/// auth key.
#[test]
fn hep_out_of_a_replay_is_read_by_kamailio_sipcapture_message_for_message() {
    let port = free_port();
    let k = sipcapture_receiver(port);
    wait_until_receiving(&k, port);
    let capture = data_path("rtp_rtcp_sip_ipv4_udp.pcap");
    let out = teledge()
        .args(["replay", "--no-progress", "--hep-out"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--hep-capture-id", "4711"])
        .arg(&capture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 dropped"), "{stderr}");
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(500));
    let frames: Vec<HashMap<String, String>> = k
        .frames()
        .into_iter()
        .filter(|f| f["cid"] != "probe")
        .collect();
    for f in &frames {
        assert_eq!(f["v"], "3");
        assert_eq!(f["c"], "4711", "{f:?}");
        assert_eq!(f["f"], "2");
        assert_eq!(f["p"], "17");
    }
    let of_type = |t: &str| -> Vec<&HashMap<String, String>> {
        frames.iter().filter(|f| f["t"] == t).collect()
    };

    // SIP: message for message, in order.
    let sip = tshark_rows(
        &capture,
        "sip",
        &[
            "frame.time_epoch",
            "ip.src",
            "ip.dst",
            "udp.srcport",
            "udp.dstport",
            "sip.Call-ID",
            "udp.payload",
        ],
    );
    let got = of_type("1");
    assert_eq!(got.len(), sip.len(), "{got:#?}");
    assert_eq!(sip.len(), 14);
    for (row, f) in sip.iter().zip(&got) {
        let (s, us) = sec_usec(&row[0]);
        let payload = hex_bytes(&row[6]);
        assert_eq!(
            (&f["ts"], &f["us"], &f["s"], &f["d"], &f["sp"], &f["dp"], &f["cid"]),
            (&s, &us, &row[1], &row[2], &row[3], &row[4], &row[5]),
            "{row:?}"
        );
        assert_eq!(f["len"], payload.len().to_string());
        assert_eq!(f["sha"], sha256_hex(&payload), "payload of {row:?}");
    }

    // RTCP: every packet TShark dissects as RTCP, with the Call-ID of its call and its
    // sender SSRC and type in heplify's JSON.
    let call_with_media = "12013223@200.57.7.195";
    let rtcp = tshark_rows(
        &capture,
        "rtcp",
        &[
            "frame.time_epoch",
            "ip.src",
            "ip.dst",
            "udp.srcport",
            "udp.dstport",
            "rtcp.senderssrc",
            "rtcp.pt",
        ],
    );
    let got = of_type("5");
    assert!(rtcp.len() >= 20, "{rtcp:?}");
    for row in &rtcp {
        let (s, us) = sec_usec(&row[0]);
        let f = got
            .iter()
            .find(|f| {
                (&f["ts"], &f["us"], &f["s"], &f["d"], &f["sp"], &f["dp"])
                    == (&s, &us, &row[1], &row[2], &row[3], &row[4])
            })
            .unwrap_or_else(|| panic!("RTCP {row:?} not relayed: {got:#?}"));
        assert_eq!(f["cid"], call_with_media);
        let json: Value = serde_json::from_str(&f["json"]).unwrap();
        let ssrc = u64::from_str_radix(
            row[5].split(',').next().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        assert_eq!(json["ssrc"], ssrc, "{row:?} {json}");
        let first_type: u64 = row[6].split(',').next().unwrap().parse().unwrap();
        assert_eq!(json["type"], first_type, "{row:?} {json}");
        assert_eq!(f["len"], f["json"].len().to_string());
    }
    // The capture's README counts 28 RTCP packets; TShark dissects those its SDP
    // conversations cover. Every relayed one belongs to the call.
    assert_eq!(got.len(), 28, "{got:#?}");
    assert!(got.iter().all(|f| f["cid"] == call_with_media));

    // Stream reports: one per stream of the call's record, at the stream's end.
    let call = records
        .iter()
        .find(|r| r["call_id"] == call_with_media)
        .unwrap();
    let q = &call["media_quality"];
    let streams: Vec<&Value> = ["caller_to_callee", "callee_to_caller", "unknown_direction"]
        .iter()
        .flat_map(|d| q[d].as_array().unwrap())
        .collect();
    let reports = of_type("34");
    assert_eq!(reports.len(), streams.len(), "{reports:#?}");
    assert!(!streams.is_empty());
    for s in streams {
        let (src, dst) = (s["src"].as_str().unwrap(), s["dst"].as_str().unwrap());
        let (sip, sport) = src.rsplit_once(':').unwrap();
        let (dip, dport) = dst.rsplit_once(':').unwrap();
        assert!(
            reports
                .iter()
                .any(|f| (&*f["s"], &*f["sp"], &*f["d"], &*f["dp"], &*f["cid"])
                    == (sip, sport, dip, dport, call_with_media)),
            "no report for {src} -> {dst}: {reports:#?}"
        );
    }
}

/// The original family and transport: SIP over IPv6 arrives with its IPv6 addresses
/// (family 10, chunks 0x0005/0x0006) and SIP over TCP with IP protocol 6, each message with
/// the time and ports TShark gives its frame.
#[test]
fn hep_out_keeps_ipv6_addresses_and_tcp_transport() {
    for (capture, v6, proto) in [
        ("sip_ipv6_udp.pcap", true, "17"),
        ("sip_ipv4_tcp.pcap", false, "6"),
    ] {
        let port = free_port();
        let k = sipcapture_receiver(port);
        wait_until_receiving(&k, port);
        let path = data_path(capture);
        let out = teledge()
            .args([
                "replay",
                "--no-progress",
                "--output",
                "/dev/null",
                "--hep-out",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        thread::sleep(Duration::from_millis(500));
        let frames: Vec<HashMap<String, String>> = k
            .frames()
            .into_iter()
            .filter(|f| f["cid"] != "probe" && f["t"] == "1")
            .collect();
        let (ip, port_field) = match (v6, proto) {
            (true, _) => ("ipv6", "udp"),
            (false, "6") => ("ip", "tcp"),
            _ => ("ip", "udp"),
        };
        let rows = tshark_rows(
            &path,
            "sip",
            &[
                "frame.time_epoch",
                &format!("{ip}.src"),
                &format!("{ip}.dst"),
                &format!("{port_field}.srcport"),
                &format!("{port_field}.dstport"),
                "sip.Call-ID",
            ],
        );
        assert!(!rows.is_empty());
        assert!(frames.len() >= rows.len(), "{capture}: {frames:#?}");
        let addr = |f: &HashMap<String, String>, key: &str| -> std::net::IpAddr {
            f[key].parse().unwrap_or_else(|_| panic!("{key} in {f:?}"))
        };
        for row in &rows {
            let (s, us) = sec_usec(&row[0]);
            let (src, dst): (std::net::IpAddr, std::net::IpAddr) =
                (row[1].parse().unwrap(), row[2].parse().unwrap());
            let cid = row[5].split(',').next().unwrap();
            let (sk, dk) = if v6 { ("s6", "d6") } else { ("s", "d") };
            let found = frames.iter().any(|f| {
                (&f["ts"], &f["us"], &f["sp"], &f["dp"], &*f["cid"])
                    == (&s, &us, &row[3], &row[4], cid)
                    && (addr(f, sk), addr(f, dk)) == (src, dst)
                    && f["p"] == proto
                    && f["f"] == if v6 { "10" } else { "2" }
            });
            assert!(found, "{capture}: {row:?} not among {frames:#?}");
        }
    }
}

/// Kamailio proxies SIPp calls (uac → Kamailio → uas) and mirrors every message it
/// receives and sends as HEP (`siptrace`, `trace_mode 1`) to one agent's HEP listener; a
/// second agent captures the same calls live on the loopback. Both agents' call records
/// agree: the same calls, outcomes, parties (pseudonymised with the same key), addresses,
/// message counts and times (Kamailio stamps HEP with its own clock, at most a few
/// milliseconds from the kernel's capture time). The live agent also relays what it
/// captures to a `sipcapture` receiver (`[hep_out]` in `teledge run`): every SIP message
/// arrives there with its capture id and key, and its own HEP, seen again on the loopback,
/// is neither relayed nor counted twice.
///
/// The HEP agent runs in a network namespace of its own, reached over a veth pair: the live
/// agent captures the loopback, and Kamailio's mirror must not pass there, or it would see
/// each message twice (once as SIP, once inside HEP from Kamailio).
#[test]
fn kamailio_siptrace_gives_the_call_records_live_capture_gives() {
    crate::live::in_fresh_netns(kamailio_siptrace_in_netns);
}

/// Runs `ip` in the calling thread's network namespace.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// The HEP agent in a namespace of its own: a thread that moves into a fresh network
/// namespace, takes the veth end `vh` as 10.99.0.2, and runs a collector and an agent
/// listening for HEP on UDP `hep_port` until told to stop; returns the calls collected.
fn hep_agent_in_own_netns(
    hep_port: u16,
    dir: PathBuf,
    pki: std::sync::Arc<crate::uplink::Pki>,
) -> (
    std::sync::mpsc::Receiver<u32>,
    std::sync::mpsc::Sender<()>,
    thread::JoinHandle<Vec<Value>>,
) {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves only this thread into a new network
        // namespace. gettid has no arguments.
        #[allow(unsafe_code)]
        let (rc, tid) = unsafe { (libc::unshare(libc::CLONE_NEWNET), libc::gettid()) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        ip(&["link", "set", "lo", "up"]);
        tid_tx.send(tid as u32).unwrap();
        // Wait for the veth end to arrive.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("ip")
            .args(["link", "show", "vh"])
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "veth end never arrived");
            thread::sleep(Duration::from_millis(50));
        }
        ip(&["addr", "add", "10.99.0.2/24", "dev", "vh"]);
        ip(&["link", "set", "vh", "up"]);
        let out = dir.join("collected");
        let c = collector(&pki, "collector", &out);
        let config = agent_config(
            &pki,
            &dir,
            c.port,
            &format!("[hep]\nudp = \"10.99.0.2:{hep_port}\"\n"),
            None,
        );
        let mut agent = Agent::start(&config);
        agent.wait_for_log("teledge running");
        tid_tx.send(0).unwrap();
        let _ = stop_rx.recv_timeout(Duration::from_secs(120));
        let calls = collected(&out, |r| r["type"] == "call", 3, Duration::from_secs(20));
        println!("HEP agent: {}", agent.stop());
        calls
    });
    (tid_rx, stop_tx, handle)
}

fn kamailio_siptrace_in_netns() {
    crate::daemon::require_sipp();
    // One PKI for both agents: the same site key, so the same pseudonyms.
    let pki = std::sync::Arc::new(pki());
    let dir = tempfile::tempdir().unwrap();
    let (hep_port, proxy_port, uas_port, capture_port) =
        (free_port(), free_port(), free_port(), free_port());

    // The HOMER stand-in for the live agent's relay.
    let receiver = sipcapture_receiver(capture_port);
    wait_until_receiving(&receiver, capture_port);

    // Agent 1, in its own namespace: the HEP listener Kamailio mirrors to, over the veth.
    let hep_dir = dir.path().join("hep");
    std::fs::create_dir_all(&hep_dir).unwrap();
    let (ready, stop_hep, hep_thread) =
        hep_agent_in_own_netns(hep_port, hep_dir, std::sync::Arc::clone(&pki));
    let tid = ready.recv_timeout(Duration::from_secs(10)).unwrap();
    ip(&["link", "add", "vk", "type", "veth", "peer", "name", "vh"]);
    ip(&["link", "set", "vh", "netns", &tid.to_string()]);
    ip(&["addr", "add", "10.99.0.1/24", "dev", "vk"]);
    ip(&["link", "set", "vk", "up"]);
    ready
        .recv_timeout(Duration::from_secs(30))
        .expect("the HEP agent started");

    // Agent 2: live capture of the loopback, relaying to the receiver, with one capture
    // thread (the proxied calls captured by two threads are `proxied::`'s test).
    let live_dir = dir.path().join("live");
    std::fs::create_dir_all(&live_dir).unwrap();
    let live_out = live_dir.join("collected");
    let live_collector = collector(&pki, "collector", &live_out);
    let metrics_port = free_port();
    let live_config = agent_config(
        &pki,
        &live_dir,
        live_collector.port,
        &format!(
            "[[capture]]\ninterface = \"lo\"\nring_mib = 8\nblock_kib = 256\nthreads = 1\n\
             [hep_out]\nenabled = true\naddress = \"127.0.0.1:{capture_port}\"\n\
             capture_id = 4712\nauth_key = \"relay-key\"\n"
        ),
        Some(metrics_port),
    );
    let mut live_agent = Agent::start(&live_config);
    live_agent.wait_for_log("teledge running");

    let mut kamailio = Kamailio::start(&format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
listen=udp:127.0.0.1:{proxy_port}
listen=udp:10.99.0.1:{proxy_port}
mpath="{MODULES}"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "maxfwd.so"
loadmodule "siptrace.so"
modparam("siptrace", "duplicate_uri", "sip:10.99.0.2:{hep_port}")
modparam("siptrace", "send_sock_addr", "sip:10.99.0.1:{proxy_port}")
modparam("siptrace", "hep_mode_on", 1)
modparam("siptrace", "hep_version", 3)
modparam("siptrace", "hep_capture_id", 2001)
modparam("siptrace", "trace_on", 1)
modparam("siptrace", "trace_mode", 1)
modparam("siptrace", "trace_to_database", 0)
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    $du = "sip:127.0.0.1:{uas_port}";
    forward();
    exit;
}}
"#
    ));
    let calls = 3;
    sipp_through_proxy(
        &mut kamailio,
        Duration::from_millis(1500),
        &dir.path().join("sipp"),
        (proxy_port, uas_port, free_port()),
        calls,
        &["-d", "300"],
    );

    let want = |r: &Value| r["type"] == "call";
    let from_live = collected(&live_out, want, calls, Duration::from_secs(20));
    stop_hep.send(()).unwrap();
    let from_hep = hep_thread.join().unwrap();
    assert_eq!(from_hep.len(), calls, "{from_hep:#?}");
    assert_eq!(from_live.len(), calls, "{from_live:#?}");
    let metrics = crate::daemon::http_get(metrics_port, "/metrics");
    println!("live agent: {}", live_agent.stop());

    let by_call = |records: &[Value]| -> BTreeMap<String, Value> {
        records
            .iter()
            .map(|r| (r["call_id"].as_str().unwrap().to_owned(), r.clone()))
            .collect()
    };
    let (hep_calls, live_calls) = (by_call(&from_hep), by_call(&from_live));
    assert_eq!(
        hep_calls.keys().collect::<Vec<_>>(),
        live_calls.keys().collect::<Vec<_>>()
    );
    let time = |v: &Value| -> f64 {
        humantime::parse_rfc3339(v.as_str().unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    for (call_id, h) in &hep_calls {
        let l = &live_calls[call_id];
        for field in [
            "outcome",
            "state",
            "closed_by",
            "final_status",
            "caller",
            "callee",
            "transport",
            "caller_address",
            "callee_address",
            "messages",
            "retransmissions",
            "hangup_by",
            "complete",
        ] {
            assert_eq!(
                h[field], l[field],
                "{call_id}: {field}\nHEP {h:#}\nlive {l:#}"
            );
        }
        assert_eq!(h["outcome"], "answered");
        for field in ["invite_time", "answer_time", "end_time"] {
            let (a, b) = (time(&h[field]), time(&l[field]));
            assert!((a - b).abs() < 0.05, "{call_id}: {field} {a} vs {b}");
        }
    }

    // The live agent's relay: every SIP message it captured went to the receiver (with its
    // capture id and key); its own HEP, captured again on the loopback, was not relayed.
    thread::sleep(Duration::from_millis(300));
    let relayed: Vec<HashMap<String, String>> = receiver
        .frames()
        .into_iter()
        .filter(|f| f["cid"] != "probe")
        .collect();
    let sip: Vec<&HashMap<String, String>> = relayed.iter().filter(|f| f["t"] == "1").collect();
    // Each call through the stateless proxy is 6 messages (INVITE, 180, 200, ACK, BYE, 200),
    // each on both legs: 12 on the wire per call (reference scale-out-and-hep.md §5, which
    // counted 12 siptrace frames for one SIPp call; Kamailio sends no 100 statelessly).
    let messages = 12 * calls as u64;
    assert_eq!(sip.len() as u64, messages, "{sip:#?}");
    // Records carry the Call-ID pseudonymised; HEP carries it as captured (HOMER needs it).
    let mut per_call: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &sip {
        *per_call.entry(&f["cid"]).or_default() += 1;
    }
    assert_eq!(per_call.len(), calls, "{per_call:?}");
    assert!(per_call.values().all(|n| *n == 12), "{per_call:?}");
    for f in &sip {
        assert_eq!((&*f["c"], &*f["a"]), ("4712", "relay-key"));
    }
    for expected in [
        format!("teledge_hep_out_frames_total{{type=\"sip\"}} {messages}"),
        "teledge_hep_out_connected 1".to_owned(),
    ] {
        assert!(metrics.contains(&expected), "{expected} not in:\n{metrics}");
    }
    assert!(
        !metrics.contains("teledge_hep_out_dropped_total{"),
        "{metrics}"
    );
    // Its own frames, captured again on the loopback: seen, skipped, counted.
    let own = metrics
        .lines()
        .find_map(|l| l.strip_prefix("teledge_hep_out_skipped_total{reason=\"own_frame\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        own > 0 && own <= messages,
        "own frames skipped: {own}\n{metrics}"
    );
    let _ = std::io::stdout().flush();
}

/// A TLS server with the site's `localhost` certificate that reads frames with our framer
/// until `n` came (or the handshake failed: then none).
fn tls_server(pki: &crate::uplink::Pki, n: usize) -> (u16, thread::JoinHandle<Vec<Vec<u8>>>) {
    use std::io::Read;
    use teledge::decode::hep::{frame_len, Framing};
    use teledge::uplink::tls::{load_certs, load_private_key};
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        load_certs(&pki.path("collector.pem")).unwrap(),
        load_private_key(&pki.path("collector.key")).unwrap(),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let (mut buf, mut frames) = (Vec::new(), Vec::new());
        while frames.len() < n {
            let mut chunk = [0u8; 4096];
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(got) => buf.extend_from_slice(&chunk[..got]),
            }
            while let Framing::Frame(len) = frame_len(&buf, 65_535) {
                frames.push(buf.drain(..len).collect());
            }
        }
        frames
    });
    (port, handle)
}

fn relay_sip(mirror: &mut teledge::relay::HepMirror, n: u32) {
    use teledge::pipeline::Mirror;
    let raw = format!(
        "OPTIONS sip:a@h SIP/2.0\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: tls-{n}\r\nCSeq: {n} OPTIONS\r\n\r\n"
    );
    let message = teledge::decode::sip::parse(raw.as_bytes()).unwrap();
    let meta = teledge::dissect::MessageMeta {
        frame: u64::from(n),
        time: teledge::time::Timestamp::from_secs_nanos(1_700_000_000, n * 1000),
        src: "192.0.2.1:5060".parse().unwrap(),
        dst: "192.0.2.2:5062".parse().unwrap(),
        transport: teledge::dissect::Transport::Tcp,
    };
    mirror.mirror(teledge::pipeline::Mirrored::Sip {
        meta: &meta,
        message: &message,
    });
}

/// TLS (rustls, ring) to a server whose certificate the configured CA signed: every frame
/// arrives, as encoded. With another CA configured, the relay refuses the server: nothing
/// is sent, the failure is counted, and the frames are counted as dropped at shutdown.
#[test]
fn hep_out_over_tls_trusts_the_configured_ca_only() {
    use teledge::config::hep_out::{HepOutConfig, HepOutTls, HepOutTransport};
    use teledge::relay::{dropped_total, HepRelay, Overflow};
    let pki = pki();
    for (ca, expect) in [("ca.pem", 5), ("rogue-ca.pem", 0)] {
        let (port, server) = tls_server(&pki, 5);
        let mut config = HepOutConfig::to(
            &format!("127.0.0.1:{port}"),
            HepOutTransport::Tls(HepOutTls {
                ca_file: pki.path(ca),
                server_name: "localhost".into(),
                client_cert: None,
            }),
        );
        config.reconnect_min = Duration::from_millis(10);
        config.reconnect_max = Duration::from_millis(20);
        let metrics = std::sync::Arc::new(teledge::observe::AgentMetrics::new());
        let (relay, mut mirror) =
            HepRelay::start(&config, Overflow::Drop, std::sync::Arc::clone(&metrics)).unwrap();
        for n in 0..5 {
            relay_sip(&mut mirror, n);
        }
        let frames = server.join().unwrap();
        relay.finish(Duration::from_millis(500));
        assert_eq!(frames.len(), expect, "{ca}");
        for (n, bytes) in frames.iter().enumerate() {
            let f = teledge::decode::hep::parse(bytes).unwrap();
            assert_eq!(f.correlation_id_str(), Some(format!("tls-{n}").as_str()));
            assert_eq!(f.ip_protocol, teledge::decode::hep::IpProtocol::Tcp);
        }
        let sent = metrics.hep_out_frames.with(&["sip"]).get();
        assert_eq!(sent, expect as u64, "{ca}");
        assert_eq!(sent + dropped_total(&metrics), 5, "{ca}");
        if expect == 0 {
            assert!(metrics.hep_out_connection_failures.get() > 0);
        }
    }
}
