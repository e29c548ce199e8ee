//! FreeSWITCH `mod_callcenter` over the event socket, against a **stand-in** server:
//! FreeSWITCH is not packaged in Debian, so the test runs a small TCP server that speaks the
//! event-socket protocol as `mod_event_socket` does (auth request, `command/reply`, events
//! as `text/event-plain` with URL-encoded values and a `Content-Length`, a disconnect
//! notice) and replays the `mod_callcenter` event text of FreeSWITCH's documentation
//! (`tests/data/callcenter/mod_callcenter_doc_events.txt`, provenance in
//! `tests/data/README.md`). What it proves: the client's protocol handling and the mapping
//! of documented events to queue contacts; not the behaviour of a real FreeSWITCH.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use teledge::correlation::queue::{QueueAssembler, QueueLimits};
use teledge::decode::esl::{encode_event_plain, CallcenterEvent};
use teledge::privacy::{Privacy, Pseudonymizer};
use teledge::record::queue::{FlowOut, QueueOutcome, QueueSource};
use teledge::secret::Secret;
use teledge::sources::callcenter::{self, CallcenterSettings, CallcenterStats};
use teledge::time::Timestamp;
use tokio_util::sync::CancellationToken;

/// The documented events, as header lists.
fn documented_events() -> Vec<Vec<(String, String)>> {
    let text = std::fs::read_to_string(crate::support::data_path(
        "callcenter/mod_callcenter_doc_events.txt",
    ))
    .unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            block
                .lines()
                .map(|l| {
                    let (name, value) = l.split_once(": ").unwrap();
                    (name.to_owned(), value.trim_end().to_owned())
                })
                .collect()
        })
        .collect()
}

/// Reads one command (ending in an empty line) from the client.
fn read_command(reader: &mut BufReader<TcpStream>) -> String {
    let mut command = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            return command;
        }
        if line.trim().is_empty() {
            if command.is_empty() {
                continue;
            }
            return command;
        }
        command.push_str(line.trim_end());
    }
}

/// One stand-in connection: greets, checks the password and the subscription, then sends
/// `events` (split into small writes, as TCP may deliver them) and a disconnect notice.
fn serve(stream: TcpStream, password: &str, events: &[Vec<u8>]) -> Vec<String> {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut commands = Vec::new();
    writer.write_all(b"Content-Type: auth/request\n\n").unwrap();
    let auth = read_command(&mut reader);
    commands.push(auth.clone());
    if auth != format!("auth {password}") {
        writer
            .write_all(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n")
            .unwrap();
        writer
            .write_all(b"Content-Type: text/disconnect-notice\nContent-Length: 0\n\n")
            .unwrap();
        return commands;
    }
    writer
        .write_all(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
        .unwrap();
    let subscribe = read_command(&mut reader);
    commands.push(subscribe);
    writer
        .write_all(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n")
        .unwrap();
    let mut all = Vec::new();
    for e in events {
        all.extend_from_slice(e);
    }
    for chunk in all.chunks(97) {
        writer.write_all(chunk).unwrap();
        writer.flush().unwrap();
    }
    writer
        .write_all(b"Content-Type: text/disconnect-notice\nContent-Length: 0\n\n")
        .unwrap();
    // Hold the connection until the client goes (it reconnects after the notice).
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    commands
}

#[test]
fn documented_callcenter_events_become_queue_contacts() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut events: Vec<Vec<u8>> = documented_events()
        .iter()
        .map(|headers| {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            encode_event_plain(&h)
        })
        .collect();
    // Events of other kinds on the same socket are skipped.
    events.insert(
        1,
        encode_event_plain(&[("Event-Name", "HEARTBEAT"), ("Up-Time", "0 years")]),
    );
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        serve(stream, "ClueCon", &events)
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = Arc::new(CallcenterStats::default());
    let received: Vec<CallcenterEvent> = runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let stop = CancellationToken::new();
        let client = tokio::spawn(callcenter::run(
            CallcenterSettings::new(addr, Secret::new("ClueCon".to_owned())),
            tx,
            Arc::clone(&stats),
            stop.clone(),
        ));
        let mut got = Vec::new();
        while got.len() < 10 {
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("events in time")
                .expect("client running");
            got.push(event);
        }
        stop.cancel();
        client.await.unwrap();
        got
    });
    let commands = server.join().unwrap();
    assert_eq!(
        commands,
        ["auth ClueCon", "event plain CUSTOM callcenter::info"]
    );
    assert_eq!(stats.events.load(std::sync::atomic::Ordering::Relaxed), 10);
    assert_eq!(
        stats
            .other_events
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let key = [9; 32];
    let p = Pseudonymizer::new(Privacy::keyed_hash(key));
    let mut assembler = QueueAssembler::new(
        QueueSource::FreeswitchCallcenter,
        "fs1",
        QueueLimits::default(),
        Pseudonymizer::new(Privacy::keyed_hash(key)),
    );
    let mut records = Vec::new();
    let now = Timestamp::now();
    for event in &received {
        assembler.callcenter(event, now, &mut |r| records.push(r));
    }
    // The answered record waits for its agent's next state change (the end of its
    // wrap-up, see `QueueAssembler::wrap_up_state`); the documented events have none for
    // AgentNameHere, so it is made when the source ends, its wrap-up unknown.
    assert_eq!(records.len(), 1, "{records:#?}");
    assembler.finish(now, &mut |r| records.push(r));
    assert_eq!(records.len(), 2, "{records:#?}");
    // Expected values computed by hand from the documented times: joined 9000, agent called
    // 10000, answered 10009, bridge terminated 10500, caller left 10100.
    let answered = &records[1];
    assert_eq!(answered.wrap_up_s, None);
    assert_eq!(answered.outcome, QueueOutcome::Answered);
    assert_eq!(answered.queue, "support@default");
    assert_eq!(answered.wait_s, Some(1009.0));
    assert_eq!(answered.ring_s, Some(9.0));
    assert_eq!(answered.talk_s, Some(491.0));
    assert_eq!(answered.ring_no_answer, 1, "the bridge-agent-fail");
    assert_eq!(
        answered.connect_time,
        Some(Timestamp::from_secs_nanos(10_009, 0))
    );
    assert_eq!(answered.end_time, Timestamp::from_secs_nanos(10_100, 0));
    assert_eq!(
        answered.caller.as_deref(),
        Some(p.number("4385551212").as_str())
    );
    assert_eq!(
        answered.agent.as_deref(),
        Some(p.identifier("AgentNameHere").as_str())
    );
    assert_eq!(
        answered.call_id,
        p.identifier("b77c49c2-a732-11df-9438-e7d9456f8886")
    );
    assert!(answered.complete);
    // The TIMEOUT cancel: a flow-out after 10050 − 9000 seconds.
    let timeout = &records[0];
    assert_eq!(timeout.outcome, QueueOutcome::FlowOut);
    assert_eq!(timeout.flow_out, Some(FlowOut::Timeout));
    assert_eq!(timeout.wait_s, Some(1050.0));
    assert_eq!(
        timeout.enter_time,
        Some(Timestamp::from_secs_nanos(9_000, 0))
    );
    // No number or name of the events is in the records in clear.
    let json = serde_json::to_string(&records).unwrap();
    for clear in [
        "4385551212",
        "5145551212",
        "AgentNameHere",
        "CHOUINARD",
        "b77c49c2",
    ] {
        assert!(!json.contains(clear), "{clear} in {json}");
    }
    // The agent events: logged in (Available), in a queue call? no (Receiving).
    let agent = &assembler.agents()[&p.identifier("1000@default")];
    assert_eq!(agent.logged_in, Some(true));
    assert!(!agent.paused_all);
    // Its presence: staffed from the `Available` status, in no queue (the events name
    // none); the state change to Receiving changes no presence.
    let states = assembler.take_agent_states();
    assert_eq!(states.len(), 1, "{states:#?}");
    assert_eq!(
        (
            states[0].agent.as_str(),
            states[0].queue.as_deref(),
            states[0].state
        ),
        (
            p.identifier("1000@default").as_str(),
            None,
            teledge::record::agent::AgentPresence::Staffed
        )
    );
    assert_eq!(states[0].event, "agent-status-change");
}

#[test]
fn a_refused_password_is_counted_and_retried_and_never_shown_by_debug() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            seen.extend(serve(stream, "right", &[]));
        }
        seen
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = Arc::new(CallcenterStats::default());
    runtime.block_on(async {
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let stop = CancellationToken::new();
        let mut settings = CallcenterSettings::new(addr, Secret::new("wrong".to_owned()));
        settings.retry_min = Duration::from_millis(10);
        settings.retry_max = Duration::from_millis(20);
        assert!(!format!("{settings:?}").contains("wrong"), "{settings:?}");
        let client = tokio::spawn(callcenter::run(
            settings,
            tx,
            Arc::clone(&stats),
            stop.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stats
            .auth_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            < 2
        {
            assert!(tokio::time::Instant::now() < deadline, "no retry");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        client.await.unwrap();
    });
    assert_eq!(server.join().unwrap(), ["auth wrong", "auth wrong"]);
    assert_eq!(
        stats.connections.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(format!("{stats:?}").contains("auth_failures: 2"));
}

/// After-call work over the event socket, to the AHT and the occupancy. The events (in
/// `mod_callcenter`'s format and in the order `outbound_agent_thread_run` fires them;
/// written for this test, no FreeSWITCH here) of one agent `1000@default` in status
/// `Available (On Demand)` from 1000 s (epoch), one call (joined 1010, answered 1015,
/// bridge end and leaving 1075), its state `Idle` at 1075.5 and `Waiting` at 1105, `On
/// Break` at 1500, `Logged Out` at 1800. By hand, in the quarter-hour 00:15–00:30 UTC of
/// 1 January 1970 (900–1800 s):
/// - the contact: wait 5 s, talk 60 s, wrap-up 1105 − 1075 = 30 s → AHT (60 + 30) / 1 =
///   90 s, the formula saying every handled contact had its wrap-up;
/// - the agent (no queue in FreeSWITCH's events: the first service): staffed 1000 → 1800
///   = 800 s, paused ("On Break") 1500 → 1800 = 300 s, one login; the logoff at 1800 s
///   (00:30:00) counts in the next quarter-hour, which starts then;
/// - occupancy (60 + 30) / (800 − 300) = 18 %.
#[test]
fn an_on_demand_agents_wrap_up_reaches_aht_and_occupancy_over_the_event_socket() {
    use teledge::stats::service::{ServiceSettings, Services};
    use teledge::stats::{Aggregator, Attribution, IntervalClock, StatsSettings};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let at = |s: f64| format!("{}", (s * 1e6) as u64);
    let cc = |action: &str, rest: &[(&str, String)]| {
        let mut h: Vec<(String, String)> = vec![
            ("Event-Name".into(), "CUSTOM".into()),
            ("Event-Subclass".into(), "callcenter::info".into()),
            ("CC-Action".into(), action.into()),
        ];
        h.extend(rest.iter().map(|(n, v)| ((*n).to_owned(), v.clone())));
        let refs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        encode_event_plain(&refs)
    };
    let agent = |action: &str, header: &str, value: &str, t: f64| {
        cc(
            action,
            &[
                ("CC-Agent", "1000@default".into()),
                (header, value.into()),
                ("Event-Date-Timestamp", at(t)),
            ],
        )
    };
    let member = |action: &str, t: f64, extra: &[(&str, &str)]| {
        let mut rest: Vec<(&str, String)> = vec![
            ("CC-Queue", "support@default".into()),
            ("CC-Member-UUID", "m-1".into()),
            ("CC-Member-Session-UUID", "s-1".into()),
            ("CC-Member-CID-Number", "4385551212".into()),
            ("Event-Date-Timestamp", at(t)),
        ];
        rest.extend(extra.iter().map(|(n, v)| (*n, (*v).to_owned())));
        cc(action, &rest)
    };
    let events = vec![
        agent(
            "agent-status-change",
            "CC-Agent-Status",
            "Available (On Demand)",
            1000.0,
        ),
        member(
            "member-queue-start",
            1010.0,
            &[("CC-Member-Joined-Time", "1010")],
        ),
        member(
            "bridge-agent-start",
            1015.0,
            &[
                ("CC-Agent", "1000@default"),
                ("CC-Member-Joined-Time", "1010"),
                ("CC-Agent-Called-Time", "1012"),
                ("CC-Agent-Answered-Time", "1015"),
            ],
        ),
        member(
            "bridge-agent-end",
            1075.0,
            &[
                ("CC-Agent", "1000@default"),
                ("CC-Agent-Answered-Time", "1015"),
                ("CC-Bridge-Terminated-Time", "1075"),
            ],
        ),
        member(
            "member-queue-end",
            1075.0,
            &[
                ("CC-Agent", "1000@default"),
                ("CC-Cause", "Terminated"),
                ("CC-Member-Joined-Time", "1010"),
                ("CC-Agent-Answered-Time", "1015"),
                ("CC-Member-Leaving-Time", "1075"),
            ],
        ),
        agent("agent-state-change", "CC-Agent-State", "Idle", 1075.5),
        agent("agent-state-change", "CC-Agent-State", "Waiting", 1105.0),
        agent("agent-status-change", "CC-Agent-Status", "On Break", 1500.0),
        agent(
            "agent-status-change",
            "CC-Agent-Status",
            "Logged Out",
            1800.0,
        ),
    ];
    let n = events.len();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        serve(stream, "ClueCon", &events)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = Arc::new(CallcenterStats::default());
    let received: Vec<CallcenterEvent> = runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let stop = CancellationToken::new();
        let client = tokio::spawn(callcenter::run(
            CallcenterSettings::new(addr, Secret::new("ClueCon".to_owned())),
            tx,
            Arc::clone(&stats),
            stop.clone(),
        ));
        let mut got = Vec::new();
        while got.len() < n {
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("events in time")
                .expect("client running");
            got.push(event);
        }
        stop.cancel();
        client.await.unwrap();
        got
    });
    server.join().unwrap();

    let mut assembler = QueueAssembler::new(
        QueueSource::FreeswitchCallcenter,
        "fs1",
        QueueLimits::default(),
        Pseudonymizer::new(Privacy::keyed_hash([9; 32])),
    );
    let mut service = ServiceSettings::default_service();
    service.name = "support@default".into();
    let settings = StatsSettings {
        clock: IntervalClock::new("UTC", 15).unwrap(),
        attribution: Attribution::Event,
        grace: Duration::from_secs(300),
        services: Services::new(vec![service]),
    };
    let mut aggregator = Aggregator::new(settings, "fs-node", 1);
    let now = Timestamp::from_secs_nanos(2000, 0);
    let mut records = Vec::new();
    for event in &received {
        assembler.callcenter(event, now, &mut |r| records.push(r));
        for a in assembler.take_agent_states() {
            aggregator.agent_state(&a, a.time);
        }
    }
    assert_eq!(
        records.len(),
        1,
        "made at the end of its wrap-up: {records:#?}"
    );
    assert_eq!(records[0].wrap_up_s, Some(30.0));
    assert_eq!(
        (records[0].wait_s, records[0].talk_s),
        (Some(5.0), Some(60.0))
    );
    aggregator.queue_record(&records[0], now);
    let intervals = aggregator.finish(Timestamp::from_secs_nanos(4000, 0));
    let r = intervals
        .iter()
        .find(|r| r.local_start == "1970-01-01T00:15:00+00:00")
        .unwrap_or_else(|| panic!("{intervals:#?}"));
    let s = &r.sums;
    assert_eq!(
        (s.handled, s.talk_ms, s.wrap_up_ms, s.wrap_up_known),
        (1, 60_000, 30_000, 1)
    );
    assert_eq!(
        (
            s.agents.staffed_ms,
            s.agents.paused_ms,
            s.agents.logins,
            s.agents.logoffs
        ),
        (800_000, 300_000, 1, 0)
    );
    let next = intervals
        .iter()
        .find(|r| r.local_start == "1970-01-01T00:30:00+00:00")
        .unwrap_or_else(|| panic!("{intervals:#?}"));
    assert_eq!(
        (next.sums.agents.staffed_ms, next.sums.agents.logoffs),
        (0, 1)
    );
    assert_eq!(s.agents.paused_by_reason_ms["On Break"], 300_000);
    let kpis = teledge::stats::kpi::kpis(s);
    let kpi = |name: &str| kpis.iter().find(|k| k.name == name).unwrap().clone();
    let aht = kpi("aht_s");
    assert_eq!(aht.value, Some(90.0));
    assert!(
        aht.formula.contains("every handled contact"),
        "{}",
        aht.formula
    );
    let occupancy = kpi("occupancy_percent").value.unwrap();
    assert!((occupancy - 18.0).abs() < 1e-9, "{occupancy}");
}
