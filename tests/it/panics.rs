//! A panic of one of the daemon's long-lived threads or tasks, made on purpose in a real
//! `teledge run` (`TELEDGE_DEBUG_PANIC`, honoured only by debug builds — the binary `cargo
//! test` runs; see `teledge::panics`), with a real collector: the daemon announces it
//! (`component_panicked`), stops by itself with its whole final accounting, exits 2 (so
//! systemd restarts it), and no record it held is lost unannounced.
//!
//! Before, the panicking thread ended quietly and the daemon ran on: a dead spool writer
//! took its queue with it and every later record was dropped as `queue_closed` (counted,
//! never announced); the process never exited, so these tests time out waiting for it.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use serde_json::Value;

use crate::daemon::{agent_config, call_frames, free_port, pseudonym, teledge, Agent};
use crate::uplink::{collected_or_spooled, collector, pki};

const CALLS: u32 = 60;

/// What a run with `TELEDGE_DEBUG_PANIC=<panic>` left: the component_panicked gaps, the
/// calls (of the 60 sent) with a record, every record, and the `input_dropped` gaps.
struct Outcome {
    panics: Vec<Value>,
    calls: usize,
    records: Vec<Value>,
}

fn run_with_panic(panic: &str, extra: &str) -> Outcome {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let tcp_port = free_port();
    let config = agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!("[hep]\ntcp = \"127.0.0.1:{tcp_port}\"\n{extra}"),
        None,
    );
    let mut command = teledge();
    command
        .env("TELEDGE_LOG", "info")
        .env("TELEDGE_DEBUG_PANIC", panic);
    let mut agent = Agent::spawn(command, &config);
    agent.wait_for_log("teledge running");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut stream = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    for n in 0..CALLS {
        for frame in call_frames(n, now) {
            // The daemon may be stopping already (a panic early in the run).
            if stream.write_all(&frame).is_err() {
                break;
            }
        }
    }
    let _ = stream.flush();
    // No signal: the panic alone must stop it.
    let (status, lines) = agent
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{panic}: the daemon did not stop after the panic"));
    assert_eq!(status.code(), Some(2), "{panic}: {status:?}\n{lines:#?}");
    let summary = lines
        .iter()
        .find_map(|l| l.split_once("teledge: stopped: ").map(|(_, j)| j))
        .unwrap_or_else(|| panic!("no summary: {lines:#?}"));
    let summary: Value = serde_json::from_str(summary).unwrap();
    let component = panic.split(':').next().unwrap();
    assert_eq!(
        summary["panicked"],
        serde_json::json!([component]),
        "{summary}"
    );
    // Let the collector take what the drain sent; the rest is read from the spool.
    std::thread::sleep(Duration::from_millis(500));
    let records = collected_or_spooled(&out, &config);
    let ids: std::collections::HashMap<String, u32> = (0..CALLS)
        .map(|n| (pseudonym(&pki, &format!("load-{n}@hep.test")), n))
        .collect();
    let calls: std::collections::BTreeSet<u32> = records
        .iter()
        .filter(|r| r["type"] == "call")
        .filter_map(|r| r["call_id"].as_str().and_then(|id| ids.get(id)).copied())
        .collect();
    let panics: Vec<Value> = records
        .iter()
        .filter(|r| r["type"] == "gap" && r["reason"] == "component_panicked")
        .cloned()
        .collect();
    let schemas = crate::schema::Schemas::load();
    for gap in &panics {
        assert!(schemas.check(gap).is_empty(), "{:?}", schemas.check(gap));
        assert!(
            gap["detail"].as_str().unwrap().starts_with(component),
            "{gap}"
        );
    }
    // The stop was the daemon's own, with its final accounting: the next start (the
    // spool opened above) finds no unclean end.
    assert!(
        !records
            .iter()
            .any(|r| r["type"] == "gap" && r["reason"] == "run_ended_uncleanly"),
        "{panic}: the stop after the panic was not clean"
    );
    Outcome {
        panics,
        calls: calls.len(),
        records,
    }
}

/// The spool writer panics on its 10th record, with calls still coming: the record in its
/// hand is announced lost (`dropped` 1, or 0 if none), everything else — what waited in the
/// queue, the calls the stop closes — is spooled by the writer going on after the panic.
#[test]
fn a_panic_of_the_spool_writer_loses_only_the_record_in_hand_and_announces_it() {
    let o = run_with_panic("spool_writer:10", "");
    assert_eq!(o.panics.len(), 1, "{:#?}", o.panics);
    let lost = o.panics[0]["dropped"].as_u64().unwrap();
    assert!(lost <= 1, "{:#?}", o.panics);
    assert!(
        o.calls as u64 + lost >= u64::from(CALLS),
        "{} calls of {CALLS} with a record, {lost} announced lost",
        o.calls
    );
}

/// The ticker panics on its 5th tick, the HEP task on the 298th of its 300 frames: each is
/// announced (`dropped` null: what the correlator was doing is unknown), the daemon stops
/// and every call has its record.
#[test]
fn a_panic_of_the_ticker_or_the_hep_task_is_announced_and_stops_the_daemon() {
    for panic in ["ticker:5", "hep:298"] {
        let o = run_with_panic(panic, "");
        assert_eq!(o.panics.len(), 1, "{panic}: {:#?}", o.panics);
        assert_eq!(o.panics[0]["dropped"], Value::Null);
        assert_eq!(o.calls as u32, CALLS, "{panic}");
    }
}

/// The HEP relay's sender thread panics on its 3rd frame: the frame in hand and its queue
/// are announced with the panic (`dropped`); every SIP frame mirrored (5 a call) is then
/// received by the HOMER side, announced with the panic, or announced as not relayed
/// (`input_dropped`, frames offered to the relay once it is gone).
#[test]
fn a_panic_of_the_hep_relay_is_announced_with_every_frame_it_lost() {
    let homer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "[hep_out]\nenabled = true\naddress = \"{}\"\ntransport = \"udp\"\n",
        homer.local_addr().unwrap()
    );
    homer
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        let mut frames = 0u64;
        let mut quiet = 0;
        while quiet < 40 {
            match homer.recv(&mut buf) {
                Ok(_) => frames += 1,
                Err(_) => quiet += 1,
            }
        }
        frames
    });
    let o = run_with_panic("hep_out:3", &extra);
    assert_eq!(o.panics.len(), 1, "{:#?}", o.panics);
    let with_panic = o.panics[0]["dropped"].as_u64().unwrap();
    assert!(with_panic >= 1);
    let not_relayed: u64 = not_relayed(&o.records)
        .iter()
        .map(|g| g["dropped"].as_u64().unwrap())
        .sum();
    let received = reader.join().unwrap();
    assert_eq!(
        received + with_panic + not_relayed,
        u64::from(CALLS) * 5,
        "{received} received, {with_panic} lost with the panic, {not_relayed} not relayed"
    );
    assert_eq!(o.calls as u32, CALLS);
}

/// The `input_dropped` gaps of HEP frames not relayed to HOMER.
fn not_relayed(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| {
            r["type"] == "gap"
                && r["reason"] == "input_dropped"
                && r["detail"]
                    .as_str()
                    .unwrap()
                    .contains("not relayed to HOMER")
        })
        .collect()
}

/// HOMER is not there (TCP, refused) and the relay's queue holds 16 frames: every frame
/// is dropped (queue full, or left at the stop) — and, now, announced upstream with the
/// time range it was counted in. Before, they were only counted
/// (`teledge_hep_out_dropped_total`).
#[test]
fn hep_frames_the_relay_drops_are_announced_upstream() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let tcp_port = free_port();
    let config = agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!(
            "[hep]\ntcp = \"127.0.0.1:{tcp_port}\"\n[hep_out]\nenabled = true\naddress = \"127.0.0.1:{}\"\ntransport = \"tcp\"\nqueue_frames = 16\n",
            free_port()
        ),
        None,
    );
    let mut agent = Agent::start(&config);
    agent.wait_for_log("teledge running");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut stream = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    for n in 0..CALLS {
        for frame in call_frames(n, now) {
            stream.write_all(&frame).unwrap();
        }
    }
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop();
    let records = collected_or_spooled(&out, &config);
    let gaps = not_relayed(&records);
    let total: u64 = gaps.iter().map(|g| g["dropped"].as_u64().unwrap()).sum();
    assert_eq!(total, u64::from(CALLS) * 5, "{gaps:#?}");
    let schemas = crate::schema::Schemas::load();
    for gap in &gaps {
        assert!(schemas.check(gap).is_empty(), "{:?}", schemas.check(gap));
        // Seconds against milliseconds: compared to the second.
        let since = &gap["counted_since"].as_str().unwrap()[..19];
        assert!(since <= &gap["time"].as_str().unwrap()[..19], "{gap}");
    }
}

/// The forwarding task panics on its 3rd round: announced (`dropped` 0: the records stay in
/// the spool, sent by the next start), the daemon stops, every call is kept.
#[test]
fn a_panic_of_the_uplink_is_announced_and_loses_nothing() {
    let o = run_with_panic("uplink:3", "");
    assert_eq!(o.panics.len(), 1, "{:#?}", o.panics);
    assert_eq!(o.panics[0]["dropped"], 0);
    assert_eq!(o.calls as u32, CALLS);
}

/// The `queue_log` reader's thread panics on its 3rd poll: announced (`dropped` null), the
/// daemon stops (before, the thread ended quietly and the daemon ran on without it).
#[test]
fn a_panic_of_the_queue_log_reader_is_announced_and_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("queue_log");
    std::fs::write(&log, "1700000000|1.1|support|NONE|ENTERQUEUE||100|1\n").unwrap();
    let extra = format!(
        "[[queue_log]]\npath = \"{}\"\nstate_file = \"{}\"\ngroup = \"pbx1\"\nstart_at = \"beginning\"\npoll_interval_ms = 20\n",
        log.display(),
        dir.path().join("queue_log.state").display()
    );
    let o = run_with_panic("queue_log:3", &extra);
    assert_eq!(o.panics.len(), 1, "{:#?}", o.panics);
    assert_eq!(o.panics[0]["dropped"], Value::Null);
}

/// The heartbeat's task panics: announced, and the daemon stops with exit 2 (before, the
/// task ended quietly and the node sent no more heartbeats for as long as it ran).
#[test]
fn a_panic_of_the_heartbeat_is_announced_and_stops_the_daemon() {
    let o = run_with_panic("heartbeat:1", "");
    assert_eq!(o.panics.len(), 1, "{:#?}", o.panics);
    assert_eq!(o.panics[0]["dropped"], Value::Null);
}

/// The HEP listener's accept loop panics at its first connection: announced, the daemon
/// stops (before, the listener ended quietly and HEP input stopped while the daemon ran on).
#[test]
fn a_panic_of_the_hep_accept_loop_is_announced_and_stops_the_daemon() {
    let o = run_with_panic("hep_listener:1", "");
    assert_eq!(o.panics.len(), 1, "{:#?}", o.panics);
    assert!(
        o.panics[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("hep_listener panicked"),
        "{:#?}",
        o.panics
    );
}

/// One HEP connection's task panics on its 3rd frame: that connection is dropped, the panic
/// is counted and announced (`component_panicked`, "hep_connection"), and the listener
/// serves on — a second connection's calls all get their records, and the daemon stops
/// cleanly on SIGTERM (exit 0). Before, the panic vanished in the listener's task set:
/// neither counted nor announced.
#[test]
fn a_panic_of_one_hep_connection_drops_it_and_the_listener_serves_on() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let tcp_port = free_port();
    let config = agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!("[hep]\ntcp = \"127.0.0.1:{tcp_port}\"\n"),
        None,
    );
    let mut command = teledge();
    command
        .env("TELEDGE_LOG", "info")
        .env("TELEDGE_DEBUG_PANIC", "hep_connection:3");
    let mut agent = Agent::spawn(command, &config);
    agent.wait_for_log("teledge running");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut first = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    for frame in call_frames(0, now) {
        let _ = first.write_all(&frame);
    }
    let _ = first.flush();
    assert!(
        agent.wait_for_later_log("hep_connection", Duration::from_secs(10)),
        "the connection's panic was not logged"
    );
    let mut second = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    for n in 1..CALLS {
        for frame in call_frames(n, now) {
            second.write_all(&frame).unwrap();
        }
    }
    second.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let summary = agent.stop();
    // Not a stopping panic: a clean exit (`stop` checks it), nothing in `panicked`.
    assert_eq!(summary["panicked"], Value::Null, "{summary}");
    std::thread::sleep(Duration::from_millis(500));
    let records = collected_or_spooled(&out, &config);
    let panics: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "gap" && r["reason"] == "component_panicked")
        .collect();
    assert_eq!(panics.len(), 1, "{panics:#?}");
    let detail = panics[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("hep_connection panicked") && detail.contains("teledge goes on"),
        "{detail}"
    );
    let schemas = crate::schema::Schemas::load();
    assert!(schemas.check(panics[0]).is_empty());
    let ids: std::collections::HashMap<String, u32> = (1..CALLS)
        .map(|n| (pseudonym(&pki, &format!("load-{n}@hep.test")), n))
        .collect();
    let calls: std::collections::BTreeSet<u32> = records
        .iter()
        .filter(|r| r["type"] == "call")
        .filter_map(|r| r["call_id"].as_str().and_then(|id| ids.get(id)).copied())
        .collect();
    assert_eq!(calls.len() as u32, CALLS - 1);
}
