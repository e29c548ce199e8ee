//! Crash campaign: `teledge run` killed with SIGKILL at random moments under HEP load, over and
//! over, with a real `teledge collect` receiving. Every call whose last message reached the
//! agent more than [`window`] before a kill must be at the collector exactly once — including
//! calls that were open across a kill (their end is seen by the next incarnation, which makes
//! a partial record of a dialog that started before it).

use std::collections::{BTreeMap, HashMap};
use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use teledge::privacy::{Privacy, Pseudonymizer};

use crate::daemon::{agent_config, collected, free_port, hep_frame, Agent};
use crate::uplink::{collector, pki};

/// The loss window the README documents for a crash: a call whose last message reached the
/// agent longer ago than this is in the spool, durably. The real bound is the record grace
/// for media in flight (default 1 s), the daemon's tick that releases it when no other
/// message does (250 ms), and the group commit interval (20 ms in this configuration) plus
/// queueing; the rest absorbs a loaded CI box.
fn window() -> Duration {
    teledge::correlation::calls::CallLimits::default().record_grace + Duration::from_millis(1250)
}
const KILLS: usize = 50;

/// One call of the load: set up at once, ended after `hold`.
struct Call {
    n: u32,
    setup_sent: bool,
    end_due: Instant,
    /// When its last message (the 200 to BYE) was sent.
    ended_at: Option<Instant>,
    /// Which incarnation of the agent received the end.
    ended_in: Option<usize>,
}

fn message(n: u32, start: &str, method: &str, cseq: u32, to_tag: bool) -> String {
    let to = if to_tag {
        format!("<sip:200@pbx>;tag=b{n}")
    } else {
        "<sip:200@pbx>".to_owned()
    };
    format!(
        "{start}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{n}{method}{cseq}\r\nFrom: <sip:100{n}@pbx>;tag=a{n}\r\nTo: {to}\r\nCall-ID: crash-{n}@hep.test\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Sends SIP messages as HEP frames stamped with the sender's clock.
struct Sender {
    sock: UdpSocket,
    port: u16,
}

impl Sender {
    fn send(&self, caller_to_callee: bool, sip: &str) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let (a, b) = (([10, 0, 0, 1], 5060), ([10, 0, 0, 2], 5060));
        let (src, dst) = if caller_to_callee { (a, b) } else { (b, a) };
        let frame = hep_frame(
            src,
            dst,
            now.as_secs() as u32,
            now.subsec_micros(),
            sip.as_bytes(),
        );
        self.sock.send_to(&frame, ("127.0.0.1", self.port)).unwrap();
    }

    fn setup(&self, n: u32) {
        self.send(
            true,
            &message(n, "INVITE sip:200@pbx SIP/2.0", "INVITE", 1, false),
        );
        self.send(false, &message(n, "SIP/2.0 200 OK", "INVITE", 1, true));
        self.send(true, &message(n, "ACK sip:200@pbx SIP/2.0", "ACK", 1, true));
    }

    fn end(&self, n: u32) {
        self.send(true, &message(n, "BYE sip:200@pbx SIP/2.0", "BYE", 2, true));
        self.send(false, &message(n, "SIP/2.0 200 OK", "BYE", 2, true));
    }
}

/// A small deterministic generator (xorshift), so a failing run can be repeated by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

#[test]
fn sigkill_campaign_under_hep_load_loses_no_call_that_ended_before_the_window() {
    let seed = std::env::var("TELEDGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash campaign seed {seed} (TELEDGE_CRASH_SEED to repeat)");
    let mut rng = Rng(seed);

    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let udp_port = free_port();
    let config = agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!("[hep]\nudp = \"127.0.0.1:{udp_port}\"\n"),
        None,
    );
    let sender = Sender {
        sock: UdpSocket::bind("127.0.0.1:0").unwrap(),
        port: udp_port,
    };

    let mut calls: Vec<Call> = Vec::new();
    let mut kills: Vec<Instant> = Vec::new();
    // ~50 new calls a second, each held 0.05–3 s, so many are open across a kill.
    for incarnation in 0..=KILLS {
        let mut agent = Agent::start(&config);
        agent.wait_for_log("teledge running");
        let last = incarnation == KILLS;
        let run_for = if last {
            Duration::from_secs(4)
        } else {
            rng.millis(300, 3000)
        };
        let started = Instant::now();
        let mut next_call = started;
        while started.elapsed() < run_for {
            let now = Instant::now();
            if now >= next_call && !(last && started.elapsed() > Duration::from_secs(1)) {
                let n = calls.len() as u32;
                sender.setup(n);
                calls.push(Call {
                    n,
                    setup_sent: true,
                    end_due: now + rng.millis(50, 3000),
                    ended_at: None,
                    ended_in: None,
                });
                next_call = now + Duration::from_millis(20);
            }
            for call in calls.iter_mut() {
                if call.setup_sent && call.ended_at.is_none() && call.end_due <= now {
                    sender.end(call.n);
                    call.ended_at = Some(Instant::now());
                    call.ended_in = Some(incarnation);
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        if last {
            // Every call has ended by now; a clean stop drains the spool.
            assert!(calls.iter().all(|c| c.ended_at.is_some()));
            let summary = agent.stop();
            println!("last incarnation: {summary}");
        } else {
            kills.push(Instant::now());
            agent.sigkill();
        }
    }

    // Which calls must be at the collector: ended more than WINDOW before the kill of the
    // incarnation that saw the end, or in the last incarnation (stopped cleanly).
    let hasher = Pseudonymizer::new(Privacy::keyed_hash([12u8; 32]));
    let by_hash: HashMap<String, u32> = calls
        .iter()
        .map(|c| (hasher.number(&format!("100{}", c.n)), c.n))
        .collect();
    let must: Vec<u32> = calls
        .iter()
        .filter(|c| match c.ended_in {
            Some(i) if i == KILLS => true,
            Some(i) => kills[i].saturating_duration_since(c.ended_at.unwrap()) > window(),
            None => false,
        })
        .map(|c| c.n)
        .collect();
    let records = collected(
        &out,
        |r| r["type"] == "call",
        must.len(),
        Duration::from_secs(30),
    );
    let mut seen: BTreeMap<u32, Vec<serde_json::Value>> = BTreeMap::new();
    for r in records {
        let n = ["caller", "callee"]
            .iter()
            .find_map(|side| r[side]["user"].as_str().and_then(|u| by_hash.get(u)));
        if let Some(&n) = n {
            seen.entry(n).or_default().push(r);
        }
    }
    let missing: Vec<u32> = must
        .iter()
        .copied()
        .filter(|n| !seen.contains_key(n))
        .collect();
    let twice: Vec<(&u32, &Vec<serde_json::Value>)> =
        seen.iter().filter(|(_, v)| v.len() > 1).collect();
    let partial = seen
        .values()
        .flatten()
        .filter(|r| r["started_before_capture"] == true)
        .count();
    println!(
        "{} calls, {} kills, {} must be stored, {} stored, {} of them partial (began before a restart)",
        calls.len(),
        kills.len(),
        must.len(),
        seen.len(),
        partial
    );
    assert!(
        missing.is_empty(),
        "{} calls lost that ended more than {:?} before a kill: {:?}",
        missing.len(),
        window(),
        &missing[..missing.len().min(20)]
    );
    let must_twice: Vec<_> = twice.iter().filter(|(n, _)| must.contains(n)).collect();
    assert!(
        must_twice.is_empty(),
        "calls stored more than once: {:#?}",
        &must_twice[..must_twice.len().min(3)]
    );
    assert!(partial > 0, "some calls were open across a kill");
}
