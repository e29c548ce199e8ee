//! Live capture through AF_PACKET, on real interfaces. These need root (CAP_NET_RAW to capture,
//! CAP_NET_ADMIN for namespaces and veth pairs), which CI has; without it they fail saying so.
//!
//! Each test runs in a network namespace of its own, made by the test's thread with
//! `unshare(CLONE_NEWNET)`: its loopback carries only the test's traffic (other people's
//! processes on the machine cannot cause drops or stray packets), interface names cannot
//! clash, and the namespace with its veth pairs vanishes when the thread ends, pass or fail.
#![allow(unsafe_code)]

use std::net::UdpSocket;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice, VlanId};
use teledge::decode::link::LinkType;
use teledge::decode::sip::SipMessage;
use teledge::dissect::{DissectLimits, Dissector, MessageMeta};
use teledge::sources::afpacket::{
    CaptureFilter, LiveCapture, LiveCaptureError, LivePacket, RingSettings,
};
use teledge::sources::capture_thread::{CaptureSettings, CaptureThread};
use teledge::time::Timestamp;

const INVITE: &str = "INVITE sip:2001@192.0.2.2 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-live-1\r\n\
Max-Forwards: 70\r\n\
From: <sip:1001@192.0.2.1>;tag=live1\r\n\
To: <sip:2001@192.0.2.2>\r\n\
Call-ID: live-capture-1@192.0.2.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:1001@192.0.2.1:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\
\r\n\
v=0\r\n\
o=- 1 1 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 192.0.2.1\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=ptime:20\r\n";

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        uid, "0",
        "the live capture tests need root (CAP_NET_RAW and CAP_NET_ADMIN, as in CI); \
         run them as root, e.g. `sudo -E cargo test --test it live`"
    );
}

/// Runs `f` on a thread in a fresh network namespace whose loopback is up.
pub(crate) fn in_fresh_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    require_root();
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves only this thread (namespaces are per
        // task) into a new network namespace, which ends with the thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        f()
    });
    match thread.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `ip` (iproute2); its child process inherits the calling thread's namespace.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 (`ip`) is needed");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes frames onto an interface through one AF_PACKET socket.
pub(crate) struct RawSender(i32, libc::sockaddr_ll);

impl RawSender {
    pub(crate) fn open(interface: &str) -> Self {
        let name = std::ffi::CString::new(interface).unwrap();
        // SAFETY: a NUL-terminated name that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {interface}");
        // SAFETY: no pointers; the descriptor is closed on drop.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        RawSender(fd, to)
    }

    pub(crate) fn send(&self, frame: &[u8]) {
        // SAFETY: the pointers and lengths describe `frame` and the address, borrowed for
        // the call.
        let sent = unsafe {
            libc::sendto(
                self.0,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.1 as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            sent,
            frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Sends one frame as it is out of an interface, through an AF_PACKET socket.
fn send_raw(interface: &str, frame: &[u8]) {
    RawSender::open(interface).send(frame);
}

/// The UDP destination port and payload of an Ethernet frame, if it is UDP.
fn udp_of(frame: &[u8]) -> Option<(u16, Vec<u8>)> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    match packet.transport? {
        TransportSlice::Udp(udp) => Some((udp.destination_port(), udp.payload().to_vec())),
        _ => None,
    }
}

/// Captures until `f` returns true for a packet, or `limit` passes.
fn capture_until(
    capture: &mut LiveCapture,
    limit: Duration,
    mut f: impl FnMut(LivePacket<'_>) -> bool,
) {
    let deadline = Instant::now() + limit;
    let mut done = false;
    while !done && Instant::now() < deadline {
        capture
            .next_batch(Duration::from_millis(50), |p| done |= f(p))
            .unwrap();
    }
}

#[test]
fn loopback_capture_sees_every_datagram_once_with_its_bytes() {
    in_fresh_netns(|| {
        let mut capture = LiveCapture::open("lo", RingSettings::default(), false).unwrap();
        assert_eq!(capture.link(), LinkType::Ethernet);
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent: Vec<Vec<u8>> = vec![INVITE.as_bytes().to_vec()];
        for i in 0..300u32 {
            // An RTP-sized datagram: 12-byte header and a 160-byte G.711 payload.
            let mut payload = vec![0x80, 0x00];
            payload.extend((i as u16).to_be_bytes());
            payload.extend(i.to_be_bytes());
            payload.extend([0x12, 0x34, 0x56, 0x78]);
            payload.extend(std::iter::repeat_n(i as u8, 160));
            sent.push(payload);
        }
        for payload in &sent {
            sender.send_to(payload, ("127.0.0.1", port)).unwrap();
        }

        let mut seen: Vec<(Timestamp, Vec<u8>)> = Vec::new();
        let mut sip = Vec::new();
        let mut dissector = Dissector::new(DissectLimits::default());
        let mut number = 0;
        capture_until(&mut capture, Duration::from_secs(5), |packet| {
            assert!(!packet.is_truncated());
            assert!(!packet.outgoing, "loopback keeps the arriving copy");
            if let Some((dst, payload)) = udp_of(packet.data) {
                if dst == port {
                    seen.push((packet.time, payload));
                }
            }
            number += 1;
            dissector.frame(
                &packet.frame(number),
                &mut |_: &MessageMeta, m: &SipMessage<'_>| sip.push(m.call_id.to_owned()),
            );
            false
        });
        let payloads: Vec<&Vec<u8>> = seen.iter().map(|(_, p)| p).collect();
        assert_eq!(payloads.len(), sent.len(), "every datagram exactly once");
        assert!(
            payloads.iter().zip(&sent).all(|(a, b)| *a == b),
            "same bytes, same order"
        );
        assert!(
            seen.windows(2).all(|w| w[0].0 <= w[1].0),
            "timestamps never go back"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!(
            (now - seen[0].0.as_nanos()).abs() < 60_000_000_000,
            "wall-clock times"
        );
        assert_eq!(sip, ["live-capture-1@192.0.2.1"]);

        let stats = capture.stats().unwrap();
        assert!(stats.packets >= sent.len() as u64, "{stats:?}");
        assert_eq!(stats.drops, 0, "{stats:?}");
        let counters = capture.counters();
        assert_eq!(counters.packets, number);
        assert_eq!(counters.truncated, 0);
        // Reading resets the kernel's counters; ours accumulate.
        assert!(capture.stats().unwrap().packets >= stats.packets);
    });
}

#[test]
fn veth_vlan_tag_is_restored_and_the_frame_decodes_as_sip() {
    in_fresh_netns(|| {
        ip(&["link", "add", "tl0", "type", "veth", "peer", "name", "tl1"]);
        ip(&["link", "set", "tl0", "up"]);
        ip(&["link", "set", "tl1", "up"]);
        // The tagged frame is written raw onto tl1 (no 8021q module needed); tl0's receive
        // path strips the tag into the packet's metadata, as a NIC with VLAN offload does.
        let mut capture = LiveCapture::open("tl0", RingSettings::default(), true).unwrap();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .single_vlan(VlanId::try_new(100).unwrap())
            .ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
            .udp(5060, 5060)
            .write(&mut frame, INVITE.as_bytes())
            .unwrap();
        send_raw("tl1", &frame);

        let mut tagged = Vec::new();
        let mut sip = Vec::new();
        let mut dissector = Dissector::new(DissectLimits::default());
        let mut number = 0;
        capture_until(&mut capture, Duration::from_secs(5), |packet| {
            number += 1;
            let mut found = None;
            dissector.frame(
                &packet.frame(number),
                &mut |meta: &MessageMeta, m: &SipMessage<'_>| {
                    found = Some((meta.src, m.call_id.to_owned()));
                },
            );
            if let Some(found) = found {
                tagged.push((packet.data.to_vec(), packet.original_len, packet.outgoing));
                sip.push(found);
            }
            !sip.is_empty()
        });
        assert_eq!(
            sip,
            [(
                "192.0.2.1:5060".parse().unwrap(),
                "live-capture-1@192.0.2.1".to_owned()
            )]
        );
        let (frame, original_len, outgoing) = &tagged[0];
        assert!(!outgoing, "arrived on tl0 from its peer");
        assert_eq!(&frame[12..14], &[0x81, 0x00], "802.1Q TPID back in place");
        assert_eq!(u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff, 100);
        assert_eq!(&frame[16..18], &[0x08, 0x00], "IPv4 inside the tag");
        assert_eq!(*original_len as usize, frame.len());
        assert_eq!(frame.len(), 14 + 4 + 20 + 8 + INVITE.len());
        assert!(capture.counters().vlan_tags_restored >= 1);
    });
}

#[test]
fn tiny_ring_overrun_counts_kernel_drops() {
    in_fresh_netns(|| {
        let settings = RingSettings {
            block_size: 4096,
            block_count: 1,
            frame_size: 2048,
            block_timeout_ms: 1,
        };
        let mut capture = LiveCapture::open("lo", settings, false).unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..2000u32 {
            let payload = [i as u8; 172];
            sender
                .send_to(&payload, receiver.local_addr().unwrap())
                .unwrap();
        }
        // Nothing read: one block holds about fifteen of these, the rest must be dropped.
        let stats = capture.stats().unwrap();
        assert!(stats.drops > 1000, "{stats:?}");
        assert!(stats.packets >= 2000, "{stats:?}");
        // The capture goes on after an overrun.
        let got = capture
            .next_batch(Duration::from_millis(200), |_| {})
            .unwrap();
        assert!(got > 0);
    });
}

#[test]
fn oversized_frame_is_cut_to_the_block_and_flagged() {
    in_fresh_netns(|| {
        let settings = RingSettings {
            block_size: 16 * 1024,
            block_count: 4,
            frame_size: 2048,
            block_timeout_ms: 10,
        };
        let mut capture = LiveCapture::open("lo", settings, false).unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Loopback's MTU is 64 KiB: one 30,000-byte datagram is one frame, larger than a block.
        sender
            .send_to(&vec![7u8; 30_000], receiver.local_addr().unwrap())
            .unwrap();
        let mut cut = Vec::new();
        capture_until(&mut capture, Duration::from_secs(5), |p| {
            cut.push((p.data.len(), p.original_len, p.is_truncated()));
            false
        });
        assert_eq!(cut.len(), 1, "{cut:?}");
        let (captured, original, truncated) = cut[0];
        assert!(truncated);
        assert_eq!(original as usize, 14 + 20 + 8 + 30_000);
        assert!(captured < 16 * 1024);
        assert_eq!(capture.counters().truncated, 1);
    });
}

#[test]
fn unknown_interface_is_a_clear_error() {
    require_root();
    let error = LiveCapture::open("tl-missing9", RingSettings::default(), false).unwrap_err();
    assert!(
        matches!(error, LiveCaptureError::InterfaceNotFound { ref interface } if interface == "tl-missing9"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "capture on tl-missing9: no such network interface"
    );
    let bad = RingSettings {
        block_size: 1000,
        ..RingSettings::default()
    };
    let error = LiveCapture::open("lo", bad, false).unwrap_err();
    // The message is the context; the cause is its source, told once by the chain.
    assert_eq!(error.to_string(), "capture on lo");
    let told = teledge::report::chain(&error);
    assert!(
        told.starts_with("capture on lo: invalid capture ring settings"),
        "{told}"
    );
}

#[test]
fn interface_going_down_or_away_is_an_error() {
    in_fresh_netns(|| {
        ip(&["link", "add", "tl0", "type", "veth", "peer", "name", "tl1"]);
        ip(&["link", "set", "tl0", "up"]);
        let mut capture = LiveCapture::open("tl0", RingSettings::default(), false).unwrap();
        assert_eq!(
            capture
                .next_batch(Duration::from_millis(20), |_| {})
                .unwrap(),
            0
        );
        ip(&["link", "set", "tl0", "down"]);
        let error = capture
            .next_batch(Duration::from_secs(2), |_| {})
            .unwrap_err();
        assert!(
            matches!(error, LiveCaptureError::InterfaceDown { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("tl0"), "{error}");
        ip(&["link", "del", "tl0"]);
        let error = capture
            .next_batch(Duration::from_secs(2), |_| {})
            .unwrap_err();
        assert!(
            matches!(error, LiveCaptureError::InterfaceGone { .. }),
            "{error:?}"
        );
        let error = LiveCapture::open("tl0", RingSettings::default(), false).unwrap_err();
        assert!(
            matches!(error, LiveCaptureError::InterfaceNotFound { .. }),
            "{error:?}"
        );
    });
}

#[test]
fn capture_thread_delivers_and_stops_on_its_token() {
    in_fresh_netns(|| {
        let stop = tokio_util::sync::CancellationToken::new();
        let (tx, rx) = mpsc::channel();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let settings = CaptureSettings {
            interface: "lo".into(),
            ring: RingSettings::default(),
            start: RingSettings::default(),
            promiscuous: false,
            fanout: None,
        };
        let thread =
            CaptureThread::open_and_spawn(settings, stop.clone(), move |p: LivePacket<'_>| {
                if let Some((dst, payload)) = udp_of(p.data) {
                    if dst == port {
                        let _ = tx.send(payload);
                    }
                }
            })
            .unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..10u8 {
            sender.send_to(&[i; 20], ("127.0.0.1", port)).unwrap();
        }
        let got: Vec<Vec<u8>> = (0..10)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, (0..10u8).map(|i| vec![i; 20]).collect::<Vec<_>>());
        let started = Instant::now();
        stop.cancel();
        let stats = thread.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "stopped within a poll interval"
        );
        assert_eq!(stats.drops, 0);
        assert!(stats.packets >= 10);
    });
}

#[test]
fn unfiltered_capture_keeps_non_ip_frames() {
    in_fresh_netns(|| {
        ip(&["link", "add", "tl0", "type", "veth", "peer", "name", "tl1"]);
        ip(&["link", "set", "tl0", "up"]);
        ip(&["link", "set", "tl1", "up"]);
        ip(&["addr", "add", "192.0.2.1/24", "dev", "tl1"]);
        let mut all = LiveCapture::open_with_filter(
            "tl0",
            RingSettings::default(),
            false,
            CaptureFilter::All,
        )
        .unwrap();
        let mut ip_only = LiveCapture::open("tl0", RingSettings::default(), false).unwrap();
        // No neighbour entry: the datagram waits for an ARP request, which goes out on tl1.
        let sender = UdpSocket::bind("192.0.2.1:0").unwrap();
        sender.send_to(b"x", "192.0.2.2:9").unwrap();
        let is_arp = |p: &LivePacket<'_>| p.data.get(12..14) == Some(&[0x08, 0x06][..]);
        let mut arp_all = 0;
        capture_until(&mut all, Duration::from_secs(5), |p| {
            arp_all += usize::from(is_arp(&p));
            arp_all > 0
        });
        assert!(arp_all > 0, "ARP captured without a filter");
        let mut arp_ip_only = 0;
        ip_only
            .next_batch(Duration::from_millis(200), |p| {
                arp_ip_only += usize::from(is_arp(&p))
            })
            .unwrap();
        assert_eq!(arp_ip_only, 0, "ARP filtered out in the kernel");
    });
}

/// A burst of numbered datagrams over `flows` flows on a veth, captured by `threads` threads
/// whose rings start at 32 KiB and grow to 4 MiB mid-burst: every datagram delivered is
/// delivered once, in order within its flow, every flow on one thread, the ones missing no
/// more than the kernel dropped before the grow, and the switch really overlapped (copies
/// skipped).
fn growing_ring_keeps_every_flow_whole(threads: usize) {
    use teledge::sources::afpacket::Fanout;
    use teledge::sources::capture_thread::RingGroup;
    in_fresh_netns(move || {
        ip(&["link", "add", "tl0", "type", "veth", "peer", "name", "tl1"]);
        ip(&["link", "set", "tl0", "up"]);
        ip(&["link", "set", "tl1", "up"]);
        // 192.0.2.2 is not of this namespace (else the kernel would route to it through
        // `lo`): a fixed neighbour entry sends its datagrams out of tl1, into tl0.
        ip(&["addr", "add", "192.0.2.1/24", "dev", "tl1"]);
        ip(&[
            "neigh",
            "add",
            "192.0.2.2",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "tl1",
        ]);
        const PORT: u16 = 9999;
        let small = RingSettings {
            block_size: 8 * 1024,
            block_count: 4,
            frame_size: 2048,
            block_timeout_ms: 20,
        };
        let big = RingSettings {
            block_size: 256 * 1024,
            block_count: 16,
            frame_size: 2048,
            block_timeout_ms: 20,
        };
        let group = RingGroup::new(
            CaptureSettings {
                interface: "tl0".into(),
                ring: big,
                start: small,
                promiscuous: false,
                fanout: (threads > 1).then_some(Fanout {
                    group: 0x7e00 + threads as u16,
                }),
            },
            threads,
        );
        assert_eq!(group.ring_bytes(), 0);
        let stop = tokio_util::sync::CancellationToken::new();
        let (tx, rx) = mpsc::channel::<(usize, u32, u32)>();
        let mut running = Vec::new();
        for thread in 0..threads {
            let capture = group.open(thread).unwrap();
            let tx = tx.clone();
            running.push(
                CaptureThread::spawn(
                    std::sync::Arc::clone(&group),
                    thread,
                    Some(capture),
                    stop.clone(),
                    move |p: LivePacket<'_>| {
                        if let Some((dst, payload)) = udp_of(p.data) {
                            if dst == PORT && payload.len() >= 8 {
                                let flow = u32::from_be_bytes(payload[..4].try_into().unwrap());
                                let seq = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                                let _ = tx.send((thread, flow, seq));
                            }
                        }
                    },
                    |_| {},
                )
                .unwrap(),
            );
        }
        drop(tx);
        assert_eq!(group.ring_bytes(), small.total_bytes() * threads as u64);
        let flows: Vec<UdpSocket> = (0..16)
            .map(|_| UdpSocket::bind("192.0.2.1:0").unwrap())
            .collect();
        let mut sent = vec![0u32; flows.len()];
        let send_round = |sent: &mut Vec<u32>| {
            for (flow, socket) in flows.iter().enumerate() {
                let mut payload = [0u8; 100];
                payload[..4].copy_from_slice(&(flow as u32).to_be_bytes());
                payload[4..8].copy_from_slice(&sent[flow].to_be_bytes());
                socket.send_to(&payload, ("192.0.2.2", PORT)).unwrap();
                sent[flow] += 1;
            }
        };
        // A ramp: slow first, then as fast as the sender goes until the rings have grown
        // (and a while after, so the switch happens under load).
        for _ in 0..50 {
            send_round(&mut sent);
            std::thread::sleep(Duration::from_millis(2));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while group.grows() == 0 && Instant::now() < deadline {
            send_round(&mut sent);
        }
        assert_eq!(group.grows(), 1, "the rings grew under the burst");
        let at_grow = sent.clone();
        let after = Instant::now();
        while after.elapsed() < Duration::from_millis(500) {
            send_round(&mut sent);
            std::thread::sleep(Duration::from_micros(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.cancel();
        let drops: u64 = running.into_iter().map(|t| t.join().unwrap().drops).sum();
        let mut last: Vec<Option<(usize, u32)>> = vec![None; flows.len()];
        let mut delivered = 0u64;
        for (thread, flow, seq) in rx.iter() {
            let flow = flow as usize;
            // Nothing lost once the new rings took over (a few rounds after the grow).
            let expected_from = at_grow[flow] + 200;
            let previous = last[flow].map_or(0, |(_, s)| s + 1);
            assert!(
                seq == previous || seq <= expected_from,
                "flow {flow}: {seq} after {previous} missing ones, past the switch"
            );
            if let Some((t, s)) = last[flow] {
                assert_eq!(t, thread, "flow {flow} moved from thread {t} to {thread}");
                assert!(
                    seq > s,
                    "flow {flow}: {seq} after {s} (duplicate or reordered)"
                );
            }
            last[flow] = Some((thread, seq));
            delivered += 1;
        }
        let total: u64 = sent.iter().map(|&n| u64::from(n)).sum();
        assert!(
            total - delivered <= drops,
            "{total} sent, {delivered} delivered, {drops} dropped by the kernel"
        );
        assert!(
            group.duplicates_skipped() > 0,
            "the rings overlapped: copies were skipped"
        );
        assert_eq!(group.ring_bytes(), big.total_bytes() * threads as u64);
        eprintln!(
            "threads {threads}: sent {total}, delivered {delivered}, kernel drops {drops}, \
             copies skipped {}",
            group.duplicates_skipped()
        );
    });
}

#[test]
fn growing_ring_keeps_every_flow_whole_on_one_thread() {
    growing_ring_keeps_every_flow_whole(1);
}

#[test]
fn growing_ring_keeps_every_flow_whole_on_two_fanout_threads() {
    growing_ring_keeps_every_flow_whole(2);
}
