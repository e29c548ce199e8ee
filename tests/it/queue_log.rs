//! The `queue_log` source against real files: a writer thread appends numbered lines while
//! the tailer polls on another, and the file is rotated by rename, copied and truncated,
//! truncated outright, and the tailer stopped and started again in between — every line
//! written is delivered exactly once, in order. Then the parser and the assembler over a
//! public real-world `queue_log` sample (provenance in `tests/data/README.md`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use teledge::sources::queue_log::{StartAt, TailPosition, TailSettings, Tailer};

fn settings(path: &Path) -> TailSettings {
    TailSettings {
        path: path.to_owned(),
        max_line_len: 8192,
        start_at: StartAt::Beginning,
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn line(n: usize) -> String {
    format!(
        "{}|{n}.1|support|NONE|ENTERQUEUE||4930{n:06}|1\n",
        1_700_000_000 + n
    )
}

/// A tailer polling on its own thread until told to stop, then until nothing is left.
struct Running {
    stop: Arc<AtomicBool>,
    lines: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<Tailer>,
}

impl Running {
    fn start(mut tailer: Tailer) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (Arc::clone(&stop), Arc::clone(&lines));
        let thread = std::thread::spawn(move || {
            let mut quiet = 0;
            loop {
                let n = tailer
                    .poll(4096, &mut |b| {
                        l.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(b).into_owned())
                    })
                    .unwrap();
                if s.load(Ordering::Relaxed) {
                    // Stopping: poll until several polls in a row find nothing (a rotated
                    // file is kept for a few polls).
                    quiet = if n == 0 { quiet + 1 } else { 0 };
                    if quiet >= 10 {
                        return tailer;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Running {
            stop,
            lines,
            thread,
        }
    }

    fn seen(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.seen() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} lines",
                self.seen()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stop(self) -> (Tailer, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let tailer = self.thread.join().unwrap();
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        (tailer, lines)
    }
}

/// The lines `from..to` as written, without newlines.
fn expected(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|n| line(n).trim_end().to_owned()).collect()
}

/// Writes lines `from..to` in bursts, the tailer reading meanwhile.
fn write_lines(path: &Path, from: usize, to: usize) {
    for n in from..to {
        append(path, &line(n));
        if n % 17 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue_log");
    (dir, path)
}

#[test]
fn rename_rotation_while_tailing_loses_and_repeats_nothing() {
    let (_dir, path) = tmp();
    append(&path, "");
    let run = Running::start(Tailer::new(settings(&path), None));
    write_lines(&path, 0, 300);
    // logrotate's default: rename, then the writer opens a new file. A few lines still go
    // to the old file after the rename (the writer has not reopened yet).
    std::fs::rename(&path, path.with_extension("1")).unwrap();
    write_lines(&path.with_extension("1"), 300, 310);
    write_lines(&path, 310, 600);
    // A second rotation, the old name already taken: .1 moves on to .2.
    std::fs::rename(path.with_extension("1"), path.with_extension("2")).unwrap();
    std::fs::rename(&path, path.with_extension("1")).unwrap();
    write_lines(&path, 600, 700);
    run.wait_for(700);
    let (tailer, lines) = run.stop();
    assert_eq!(lines, expected(0, 700));
    assert_eq!(tailer.counters().rotations, 2);
    assert_eq!(tailer.counters().possibly_lost, 0);
}

#[test]
fn copytruncate_while_tailing_reads_the_rest_from_the_copy() {
    let (_dir, path) = tmp();
    let run = Running::start(Tailer::new(settings(&path), None));
    write_lines(&path, 0, 200);
    // Let the tailer fall behind a little, then logrotate's copytruncate: copy, truncate.
    run.wait_for(100);
    write_lines(&path, 200, 400);
    std::fs::copy(&path, path.with_extension("1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    write_lines(&path, 400, 500);
    run.wait_for(500);
    let (tailer, lines) = run.stop();
    assert_eq!(lines, expected(0, 500));
    let c = tailer.counters();
    assert_eq!((c.truncations, c.possibly_lost), (1, 0), "{c:?}");
}

#[test]
fn truncation_without_a_copy_starts_over_and_counts_what_may_be_lost() {
    let (_dir, path) = tmp();
    let mut tailer = Tailer::new(settings(&path), None);
    append(&path, &line(0));
    append(&path, &line(1));
    let mut got = Vec::new();
    let mut take = |t: &mut Tailer| {
        for _ in 0..3 {
            t.poll(1 << 20, &mut |b| {
                got.push(String::from_utf8_lossy(b).into_owned())
            })
            .unwrap();
        }
    };
    take(&mut tailer);
    // Truncated to nothing (`> queue_log`) and written again, shorter than before.
    std::fs::write(&path, line(2)).unwrap();
    take(&mut tailer);
    // Truncated and rewritten *longer* than what was read, between two polls: the last line
    // read is no longer where it was, so this is a truncation too.
    std::fs::write(&path, [line(3), line(4), line(5)].concat()).unwrap();
    take(&mut tailer);
    assert_eq!(got, expected(0, 6));
    let c = tailer.counters();
    assert_eq!(c.truncations, 2, "{c:?}");
    // No copy beside it: whatever was written before the truncation and not read is lost,
    // and the tailer says it may have been.
    assert_eq!(c.possibly_lost, 2, "{c:?}");
}

#[test]
fn restart_resumes_at_the_saved_position_even_across_a_rotation() {
    let (_dir, path) = tmp();
    let run = Running::start(Tailer::new(settings(&path), None));
    write_lines(&path, 0, 150);
    run.wait_for(150);
    let (tailer, mut lines) = run.stop();
    // What the daemon writes to its state file, through JSON as it does.
    let saved: TailPosition =
        serde_json::from_str(&serde_json::to_string(&tailer.position().unwrap()).unwrap()).unwrap();
    drop(tailer);
    // While stopped: more lines, half a line, a rotation, more lines in the new file.
    write_lines(&path, 150, 200);
    append(&path, "1700000200|200.1|support|NONE|ENTER");
    // The writer finishes its line before it reopens.
    append(&path, "QUEUE||4930000200|1\n");
    std::fs::rename(&path, path.with_extension("1")).unwrap();
    write_lines(&path, 201, 260);
    let run = Running::start(Tailer::new(settings(&path), Some(saved)));
    run.wait_for(110);
    let (tailer, more) = run.stop();
    lines.extend(more);
    assert_eq!(lines, expected(0, 260));
    assert_eq!(tailer.counters().resumed, 1);

    // And a plain restart on the same file: nothing read twice.
    let saved = tailer.position();
    drop(tailer);
    write_lines(&path, 260, 270);
    let run = Running::start(Tailer::new(settings(&path), saved));
    run.wait_for(10);
    let (_, more) = run.stop();
    assert_eq!(more, expected(260, 270));
}

#[test]
fn a_saved_position_that_no_longer_matches_reads_the_file_from_its_start() {
    let (_dir, path) = tmp();
    append(&path, &[line(0), line(1)].concat());
    let mut tailer = Tailer::new(settings(&path), None);
    let mut n = 0;
    tailer.poll(1 << 20, &mut |_| n += 1).unwrap();
    assert_eq!(n, 2);
    let saved = tailer.position();
    drop(tailer);
    // Replaced in place by other content of the same length or more (same inode).
    std::fs::write(&path, [line(7), line(8), line(9)].concat()).unwrap();
    let mut tailer = Tailer::new(settings(&path), saved);
    let mut got = Vec::new();
    tailer
        .poll(1 << 20, &mut |b| {
            got.push(String::from_utf8_lossy(b).into_owned())
        })
        .unwrap();
    assert_eq!(got, expected(7, 10));
    assert_eq!(tailer.counters().position_mismatch, 1);
}

/// The rows of the public sample: the `queue_log` table of a real Asterisk (XiVO, 2012) as
/// printed in Wazo's documentation, newest first per scenario. Each row becomes the line
/// Asterisk writes to the file for the same event (`queue_log_to_file`): the realtime
/// `time` column (local time, zone not stated) is read as UTC with its microseconds, the
/// five data columns joined by `|` without trailing empty ones.
fn xivo_sample_lines() -> Vec<String> {
    let text = std::fs::read_to_string(crate::support::data_path(
        "queue_log/xivo-doc-queue_log.rst",
    ))
    .unwrap();
    let mut rows: Vec<(String, String)> = Vec::new();
    for row in text.lines() {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(time) = cells.first() else { continue };
        let Ok(t) = humantime::parse_rfc3339_weak(time) else {
            continue;
        };
        let since = t.duration_since(std::time::UNIX_EPOCH).unwrap();
        let mut data: Vec<&str> = cells[5..].to_vec();
        while data.last() == Some(&"") {
            data.pop();
        }
        let line = format!(
            "{}.{:06}|{}|{}|{}|{}{}{}",
            since.as_secs(),
            since.subsec_micros(),
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            if data.is_empty() { "" } else { "|" },
            data.join("|")
        );
        rows.push((time.to_string(), line));
    }
    rows.sort();
    rows.into_iter().map(|(_, line)| line).collect()
}

#[test]
fn the_public_real_world_sample_parses_fully_and_gives_the_hand_computed_facts() {
    use teledge::correlation::queue::{QueueAssembler, QueueLimits};
    use teledge::decode::queue_log::{parse_line, QueueEvent};
    use teledge::privacy::{Privacy, Pseudonymizer};
    use teledge::record::queue::{QueueClosedBy, QueueHangup, QueueOutcome, QueueSource};
    use teledge::time::Timestamp;

    let lines = xivo_sample_lines();
    // 12 rows in the sample, counted by hand.
    assert_eq!(lines.len(), 12, "{lines:#?}");
    let parsed: Vec<_> = lines
        .iter()
        .map(|l| parse_line(l.as_bytes()).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let unknown: Vec<&str> = parsed
        .iter()
        .filter(|l| matches!(l.event, QueueEvent::Unknown { .. }))
        .map(|l| l.event.name())
        .collect();
    // Wazo's own events (a call refused before it enters the queue); kept, not refused.
    assert_eq!(unknown, ["JOINEMPTY", "FULL", "CLOSED"]);

    let key = [5; 32];
    let p = Pseudonymizer::new(Privacy::keyed_hash(key));
    let mut assembler = QueueAssembler::new(
        QueueSource::AsteriskQueueLog,
        "xivo",
        QueueLimits::default(),
        Pseudonymizer::new(Privacy::keyed_hash(key)),
    );
    let mut records = Vec::new();
    for line in &parsed {
        assembler.asterisk(line, &mut |r| records.push(r));
    }
    // Two stays ended in the sample, each seen only from its end: COMPLETEAGENT of
    // 1341401851.34 (held 2 s, talked 12 s) and ABANDON of 1341402586.51 (waited 6 s).
    assert_eq!(records.len(), 2, "{records:#?}");
    let done = &records[0];
    assert_eq!(done.call_id, p.identifier("1341401851.34"));
    assert_eq!(
        (done.outcome, done.wait_s, done.talk_s, done.hangup_by),
        (
            QueueOutcome::Answered,
            Some(2.0),
            Some(12.0),
            Some(QueueHangup::Agent)
        )
    );
    assert_eq!(
        done.agent.as_deref(),
        Some(p.identifier("Agent/3001").as_str())
    );
    assert!(!done.complete, "its ENTERQUEUE is not in the sample");
    let abandoned = &records[1];
    assert_eq!(
        (
            abandoned.outcome,
            abandoned.wait_s,
            abandoned.position,
            abandoned.orig_position
        ),
        (QueueOutcome::Abandoned, Some(6.0), Some(1), Some(1))
    );
    // 1341401601.24 entered and was answered by Agent/3001 after 2 s (the agent rang 1 s);
    // the sample ends there: the stay is still open, and made at the end as answered (an
    // agent took it; its talk unknown), closed by the shutdown.
    assert_eq!(assembler.open(), 1);
    let mut open = Vec::new();
    assembler.finish(Timestamp::from_secs_nanos(1_341_500_000, 0), &mut |r| {
        open.push(r)
    });
    let connected = &open[0];
    assert_eq!(
        (connected.closed_by, connected.outcome),
        (QueueClosedBy::Shutdown, QueueOutcome::Answered)
    );
    assert_eq!((connected.wait_s, connected.ring_s), (Some(2.0), Some(1.0)));
    assert_eq!((connected.talk_s, connected.complete), (None, false));
    assert_eq!(connected.caller.as_deref(), Some(p.number("1000").as_str()));
    // 07:33:21.165823 → 07:33:23.085718: the microseconds of the realtime column survive.
    let waited = connected
        .connect_time
        .unwrap()
        .seconds_since(connected.enter_time.unwrap());
    assert!((waited - 1.919895).abs() < 1e-9, "{waited}");
    // Agent/3001 logged in, logged off, then was unpaused everywhere and in q1 and q2.
    let agent = &assembler.agents()[&p.identifier("Agent/3001")];
    assert_eq!(agent.logged_in, Some(false));
    assert!(!agent.paused_all && !agent.in_call);
    assert_eq!(
        agent.queues.keys().map(String::as_str).collect::<Vec<_>>(),
        ["q1", "q2"]
    );
}

/// The daemon end to end: a `[[queue_log]]` followed by the running daemon, its queue
/// contacts spooled and forwarded to a real collector over mutual TLS; the daemon stopped
/// while a caller waits and started again before the caller abandons — the state file
/// carries the open stay, so the collector holds exactly one complete record of it, and
/// no line is read twice (one record per stay, no superseded or partial ones).
#[test]
fn the_daemon_spools_queue_contacts_and_keeps_open_stays_across_a_restart() {
    use crate::daemon::{agent_config, pseudonym};
    use crate::uplink::{collector, pki, stored};
    use teledge::daemon::Daemon;

    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let log = dir.path().join("queue_log");
    append(&log, "1700000000|NONE|NONE|NONE|QUEUESTART|\n");
    let state = dir.path().join("queue_log.state");
    let config_path = agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!(
            "[[queue_log]]\npath = \"{}\"\nstate_file = \"{}\"\ngroup = \"pbx1\"\nstart_at = \"beginning\"\npoll_interval_ms = 20\nmax_line_bytes = 256\n",
            log.display(),
            state.display()
        ),
        None,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lines_read = |d: &Daemon| d.metrics().source_packets.with(&["queue_log"]).get();
    let wait_for = |d: &Daemon, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines_read(d) < n {
            assert!(Instant::now() < deadline, "{} of {n} lines", lines_read(d));
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    let config = teledge::config::agent::load(&config_path).unwrap();
    let daemon = runtime
        .block_on(Daemon::start(config, &config_path))
        .unwrap();
    append(
        &log,
        "1700000010|7.1|support|NONE|ENTERQUEUE||4930111|1\n\
         1700000012|7.2|support|NONE|ENTERQUEUE||4930222|2\n\
         1700000020|7.1|support|PJSIP/201|CONNECT|10|7.3|4\n\
         1700000080|7.1|support|PJSIP/201|COMPLETECALLER|10|60|1\n",
    );
    // A line over the bound: skipped, counted, and announced upstream at stop.
    append(
        &log,
        &format!("1700000090|7.9|support|NONE|INFO|{}\n", "x".repeat(300)),
    );
    wait_for(&daemon, 5);
    let too_long = |d: &Daemon| {
        d.metrics()
            .decode_errors
            .with(&["queue_log_too_long"])
            .get()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while too_long(&daemon) < 1 {
        assert!(Instant::now() < deadline, "long line not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    runtime.block_on(daemon.shutdown());
    assert!(state.exists(), "state file written at stop");
    // While the daemon is down, the waiting caller gives up.
    append(&log, "1700000100|7.2|support|NONE|ABANDON|1|2|88\n");
    let config = teledge::config::agent::load(&config_path).unwrap();
    let daemon = runtime
        .block_on(Daemon::start(config, &config_path))
        .unwrap();
    wait_for(&daemon, 1);
    let summary = runtime.block_on(daemon.shutdown());
    assert_eq!(summary.records_left_in_spool, 0, "{summary:?}");

    let queue: Vec<serde_json::Value> = stored(&out)
        .into_iter()
        .map(|l| l["record"].clone())
        .filter(|r| r["type"] == "queue")
        .collect();
    assert_eq!(queue.len(), 2, "{queue:#?}");
    let by_call = |id: &str| {
        let id = pseudonym(&pki, id);
        queue
            .iter()
            .find(|r| r["call_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not collected: {queue:#?}"))
            .clone()
    };
    let answered = by_call("7.1");
    assert_eq!(answered["outcome"], "answered");
    assert_eq!(answered["wait_s"], 10.0);
    assert_eq!(answered["talk_s"], 60.0);
    assert_eq!(answered["hangup_by"], "caller");
    let abandoned = by_call("7.2");
    assert_eq!(abandoned["outcome"], "abandoned");
    assert_eq!(abandoned["complete"], true, "{abandoned:#}");
    assert_eq!(abandoned["enter_time"], "2023-11-14T22:13:32.000000Z");
    assert_eq!(abandoned["wait_s"], 88.0);
    assert_eq!(abandoned["group"], "pbx1");
    let text = serde_json::to_string(&queue).unwrap();
    assert!(
        !text.contains("4930111") && !text.contains("PJSIP"),
        "{text}"
    );
    let gaps: Vec<serde_json::Value> = stored(&out)
        .into_iter()
        .map(|l| l["record"].clone())
        .filter(|r| r["type"] == "gap" && r["reason"] == "input_dropped")
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:#?}");
    assert_eq!(gaps[0]["dropped"], 1);
    assert!(
        gaps[0]["detail"]
            .as_str()
            .unwrap()
            .contains("max_line_bytes"),
        "{gaps:#?}"
    );
}

/// `check-config` lists every problem of the queue sections with its path, and exits 78.
#[test]
fn bad_queue_sections_are_all_listed_by_check_config() {
    use crate::daemon::agent_config;
    use crate::uplink::pki;
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(
        &pki,
        dir.path(),
        9,
        "[[queue_log]]\npath = \"relative/queue_log\"\ngroup = \"two words\"\nstart_at = \"middle\"\nmax_open_calls = 0\n\
         [[queue_log]]\npath = \"/var/log/asterisk/queue_log\"\nmax_line_bytes = 10\n\
         [[callcenter]]\naddress = \"localhost\"\n",
        None,
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{text}");
    for path in [
        "queue_log[0].path",
        "queue_log[0].group",
        "queue_log[0].start_at",
        "queue_log[0].max_open_calls",
        "queue_log[1].max_line_bytes",
        "callcenter[0].address",
        "callcenter[0].password",
    ] {
        assert!(text.contains(path), "{path} not in {text}");
    }
}

/// Queue contacts reach the service statistics in the daemon: `queue_log` lines of the last
/// minutes are followed, their `teledge.queue/1` records counted by the aggregator in the
/// `[[service]]` named like the queue, and the interval records forwarded. The figures are
/// computed here by hand from the lines (T = 10 s, short abandon 5 s):
/// - 1.1 waits 5 s (one agent rang without answering first), talks 30 s: answered within T;
/// - 1.2 abandons after 12 s (not within T, not short);
/// - 1.3 leaves by timeout after 30 s: a flow-out;
/// - 1.4 waits 20 s, talks 27 s: answered, not within T;
/// - 1.5 is seen only from its `COMPLETEAGENT` (held 3 s, talked 10 s): its arrival is
///   told by its end − talk − hold, answered within T;
/// - 2.1 is in queue `billing`, which no `[[service]]` names: not counted;
/// - 1.6 tells no arrival (seen from its end only, with an absurd hold time): not a
///   contact, counted in the interval's `queue_no_arrival` and the metric.
///
/// Offered 5, answered 3, abandoned 1, flowed out 1; ASA (5 + 20 + 3) / 3 s.
#[test]
fn queue_log_contacts_are_counted_in_the_service_named_like_their_queue() {
    use crate::daemon::agent_config;
    use crate::uplink::{collector, pki, stored};
    use teledge::daemon::Daemon;
    use teledge::record::interval::IntervalRecord;

    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let log = dir.path().join("queue_log");
    append(&log, "");
    let config_path = agent_config(
        &pki,
        dir.path(),
        c.port,
        &format!(
            "[[queue_log]]\npath = \"{}\"\nstate_file = \"{}\"\ngroup = \"pbx1\"\nstart_at = \"beginning\"\npoll_interval_ms = 20\n\n\
             [[service]]\nname = \"support\"\nsl_threshold_s = 10\nshort_abandon_s = 5\n",
            log.display(),
            dir.path().join("state").display()
        ),
        None,
    );
    let config = teledge::config::agent::load(&config_path).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let daemon = runtime
        .block_on(Daemon::start(config, &config_path))
        .unwrap();
    // Recent times: the aggregator holds intervals of the last hours only.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 120;
    let lines = [
        (0, "NONE|support|PJSIP/201|ADDMEMBER|"),
        (0, "1.1|support|NONE|ENTERQUEUE||4930111|1"),
        (1, "1.2|support|NONE|ENTERQUEUE||4930222|2"),
        (2, "NONE|billing|PJSIP/209|ADDMEMBER|"),
        (2, "1.3|support|NONE|ENTERQUEUE||4930333|3"),
        (3, "1.4|support|NONE|ENTERQUEUE||4930444|4"),
        (3, "1.1|support|PJSIP/202|RINGNOANSWER|2000"),
        (4, "2.1|billing|NONE|ENTERQUEUE||4930555|1"),
        (5, "1.1|support|PJSIP/201|CONNECT|5|7.1|1"),
        (9, "2.1|billing|NONE|ABANDON|1|1|5"),
        (10, "NONE|support|PJSIP/201|PAUSE|Lunch"),
        (13, "1.2|support|NONE|ABANDON|1|2|12"),
        (23, "1.4|support|PJSIP/203|CONNECT|20|7.4|2"),
        (32, "1.3|support|NONE|EXITWITHTIMEOUT|1|3|30"),
        (35, "1.1|support|PJSIP/201|COMPLETECALLER|5|30|1"),
        (40, "NONE|support|PJSIP/201|UNPAUSE|"),
        (50, "1.4|support|PJSIP/203|COMPLETEAGENT|20|27|4"),
        (55, "NONE|support|PJSIP/201|REMOVEMEMBER|"),
        (60, "1.5|support|PJSIP/204|COMPLETEAGENT|3|10|1"),
        // Seen only from its end, with a hold time of three years (a broken source): no
        // arrival can be told, so no contact — counted and announced in the interval.
        (61, "1.6|support|PJSIP/205|COMPLETECALLER|99999999|30|1"),
    ];
    let text: String = lines
        .iter()
        .map(|(dt, rest)| format!("{}|{rest}\n", t0 + dt))
        .collect();
    append(&log, &text);
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.metrics().source_packets.with(&["queue_log"]).get() < lines.len() as u64 {
        assert!(Instant::now() < deadline, "queue_log lines not read");
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let daemon_no_arrival = loop {
        // Published once a second by the spool writer.
        let n = daemon.metrics().stats_queue_no_arrival.get();
        if n > 0 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    runtime.block_on(daemon.shutdown());

    let stored = stored(&out);
    let queue_records = stored
        .iter()
        .filter(|l| l["record"]["type"] == "queue")
        .count();
    assert_eq!(queue_records, 7, "every stay ended is spooled too");
    // Every change of an agent's presence is spooled (pseudonymised at ingest): PJSIP/201
    // joins, pauses, unpauses, leaves `support`; PJSIP/209 joins `billing`.
    let agent_records: Vec<&serde_json::Value> = stored
        .iter()
        .filter(|l| l["record"]["type"] == "agent")
        .map(|l| &l["record"])
        .collect();
    assert_eq!(agent_records.len(), 5, "{agent_records:#?}");
    assert!(
        agent_records
            .iter()
            .all(|r| !r["agent"].as_str().unwrap().contains("PJSIP")),
        "{agent_records:#?}"
    );
    let intervals: Vec<IntervalRecord> = stored
        .iter()
        .filter(|l| l["record"]["type"] == "interval")
        .map(|l| serde_json::from_value(l["record"].clone()).unwrap())
        .collect();
    assert!(
        intervals.iter().all(|r| r.service == "support"),
        "{intervals:#?}"
    );
    // The contacts may straddle an interval boundary: summed over the intervals.
    let mut sums = teledge::record::interval::IntervalSums::default();
    for r in teledge::stats::merge::merge(intervals) {
        sums.merge(&r.sums);
    }
    assert_eq!(
        (
            sums.offered,
            sums.answered,
            sums.abandoned,
            sums.flowed_out,
            sums.from_queue
        ),
        (5, 3, 1, 1, 5),
        "{sums:#?}"
    );
    assert_eq!((sums.answered_within_t, sums.abandoned_within_t), (2, 0));
    assert_eq!(sums.short_abandoned, 0);
    // ASA = Σ wait of answered / answered.
    assert_eq!(sums.wait_answered_ms, (5 + 20 + 3) * 1000);
    assert_eq!(sums.wait_abandoned_ms, 12_000);
    assert_eq!((sums.handled, sums.talk_ms), (3, (30 + 27 + 10) * 1000));
    assert_eq!(sums.rona, 1);
    assert_eq!((sums.hangup_caller, sums.hangup_callee), (1, 2));
    assert_eq!(sums.longest_wait_ms, 30_000);
    // 1.6: not a contact, but the collector is told (and the metric counts it).
    assert_eq!(sums.queue_no_arrival, 1, "{sums:#?}");
    assert_eq!(daemon_no_arrival, 1);
    // PJSIP/201 in `support`: a member from t0 to t0 + 55 s (55 s staffed, one login, one
    // logoff), paused "Lunch" from t0 + 10 to t0 + 40 (30 s); whole seconds, so exact
    // whatever interval boundary lies between. `billing` is no service: not counted.
    let a = &sums.agents;
    assert_eq!(
        (a.staffed_ms, a.paused_ms, a.logins, a.logoffs),
        (55_000, 30_000, 1, 1),
        "{a:#?}"
    );
    assert_eq!(
        a.paused_by_reason_ms,
        std::collections::BTreeMap::from([("Lunch".to_owned(), 30_000)])
    );
}

/// `teledge report --queue-log` over the public sample, with figures computed by hand from
/// its rows (T = 20 s, short abandon 5 s, quarter-hours in UTC, attribution by event):
/// - 1341401851.34 is seen only from its `COMPLETEAGENT` at 07:37:46.6 (held 2 s, talked
///   12 s, the agent hung up): arrival 07:37:32.6, answered at 07:37:34.6 within T → the
///   07:30 interval;
/// - 1341402586.51 abandons at 07:49:52.9 after 6 s (not short, within T) → 07:45;
/// - 1341401601.24 was connected but the sample ends before its end: no outcome, excluded;
/// - JOINEMPTY, FULL, CLOSED are refused before entering the queue: no contacts;
/// - Agent/3001's login and logoff: its staffed time (see the agent figures below).
///
/// A line that is not a `queue_log` line is left out, said, and the exit status is 1.
#[test]
fn teledge_report_reads_a_queue_log_file_and_gives_the_hand_computed_figures() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("queue_log");
    let mut text = xivo_sample_lines().join("\n");
    text.push('\n');
    std::fs::write(&log, &text).unwrap();
    let config = dir.path().join("teledge.toml");
    std::fs::write(
        &config,
        "[[service]]\nname = \"q1\"\nsl_threshold_s = 20\nshort_abandon_s = 5\n",
    )
    .unwrap();
    let run = |log: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
            .args(["report", "--format", "jsonl", "--config"])
            .arg(&config)
            .arg("--queue-log")
            .arg(log)
            .output()
            .unwrap()
    };
    let check = |out: &std::process::Output| {
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout.clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let at = |start: &str| {
            lines
                .iter()
                .find(|l| l["interval_start"] == start)
                .unwrap_or_else(|| panic!("no interval {start}: {lines:#?}"))["sums"]
                .clone()
        };
        // 07:30: the row 1341401601.24 (ENTERQUEUE, CONNECT held 2 s, rang 1 s; the
        // sample shows no end for it) is answered all the same, talk unknown; the
        // COMPLETEAGENT of 1341401851.34 (held 2 s, 12 s of talk) is answered too.
        let a = at("2012-07-04T07:30:00.000000Z");
        let figures = |s: &serde_json::Value| {
            [
                "offered",
                "answered",
                "abandoned",
                "short_abandoned",
                "flowed_out",
                "answered_within_t",
                "abandoned_within_t",
                "wait_answered_ms",
                "wait_abandoned_ms",
                "handled",
                "talk_ms",
                "hangup_callee",
                "from_queue",
            ]
            .map(|k| s[k].as_u64().unwrap_or_else(|| panic!("{k}: {s:#}")))
        };
        assert_eq!(
            figures(&a),
            [2, 2, 0, 0, 0, 2, 0, 4000, 0, 1, 12_000, 1, 2],
            "{a:#}"
        );
        let b = at("2012-07-04T07:45:00.000000Z");
        assert_eq!(
            figures(&b),
            [1, 0, 1, 0, 0, 0, 1, 0, 6000, 0, 0, 0, 1],
            "{b:#}"
        );
        let offered: u64 = lines
            .iter()
            .map(|l| l["sums"]["offered"].as_u64().unwrap())
            .sum();
        let excluded: u64 = lines
            .iter()
            .map(|l| l["sums"]["excluded"].as_u64().unwrap())
            .sum();
        assert_eq!((offered, excluded), (3, 0), "{lines:#?}");
        // Agent/3001 logs in (AGENTCALLBACKLOGIN, queue NONE: no queue named yet, so its
        // presence counts in the first service, q1) at 15:27:23.896208 and off
        // (AGENTCALLBACKLOGOFF) at 15:28:06.249357: staffed 42.353149 s → 42,353 ms (the
        // log's own logintime says 43 s, whole seconds), one login, one logoff, in the
        // 15:15 interval; the UNPAUSEALL/UNPAUSE after the logoff staff nothing.
        let agents = &at("2012-07-03T15:15:00.000000Z")["agents"];
        let figure = |k: &str| {
            agents[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k}: {agents:#}"))
        };
        assert_eq!(
            ["staffed_ms", "paused_ms", "logins", "logoffs"].map(figure),
            [42_353, 0, 1, 1],
            "{agents:#}"
        );
        let staffed: u64 = lines
            .iter()
            .map(|l| l["sums"]["agents"]["staffed_ms"].as_u64().unwrap())
            .sum();
        assert_eq!(staffed, 42_353, "{lines:#?}");
    };
    let out = run(&log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(&out);

    // A damaged line and an overlong one in the middle: left out, said, exit status 1.
    let damaged = dir.path().join("queue_log.damaged");
    let mut lines = xivo_sample_lines();
    lines.insert(3, "not a queue_log line".into());
    lines.insert(
        5,
        format!("1341401000|x|q1|NONE|INFO|{}", "y".repeat(10_000)),
    );
    std::fs::write(&damaged, lines.join("\n") + "\n").unwrap();
    let out = run(&damaged);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("2 line(s) are not queue_log lines"),
        "{stderr}"
    );
    check(&out);
}

/// `teledge report --queue-log FILE...` as JSON Lines: each interval's sums by its UTC start.
fn report_queue_logs(
    files: &[&str],
    extra: &[&str],
) -> (
    std::process::Output,
    std::collections::BTreeMap<String, serde_json::Value>,
) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"));
    cmd.args(["report", "--format", "jsonl"]).args(extra);
    for f in files {
        cmd.arg("--queue-log").arg(crate::support::data_path(f));
    }
    let out = cmd.output().unwrap();
    let sums = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["interval_start"].as_str().unwrap().to_owned(),
                v["sums"].clone(),
            )
        })
        .collect();
    (out, sums)
}

/// The sample `queue_log` of "Asterisk: The Definitive Guide" (3rd ed.) as printed: the
/// book wraps both `CONNECT` lines, so their last two fields stand on lines of their own
/// (two damaged lines: said, exit 1) and each `CONNECT` keeps only its holdtime (2 s). The
/// second caller (`psy1-1292284515.93`) is connected at 1292284521 and the excerpt ends
/// before its `COMPLETE*`: answered all the same (it was excluded, neither offered nor
/// answered), talk unknown. Checked against `scripts/queue_log_reference.py`.
#[test]
fn a_call_connected_whose_end_never_comes_is_answered_on_the_books_real_sample() {
    let (out, sums) = report_queue_logs(&["queue_log/asterisk-book-3rd-ed-sample.queue_log"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("2 line(s) are not queue_log lines"),
        "{stderr}"
    );
    let figures = |start: &str| {
        let s = &sums[start];
        [
            "offered",
            "answered",
            "answered_within_t",
            "wait_answered_ms",
            "handled",
            "talk_ms",
            "rona",
            "hangup_caller",
            "excluded",
        ]
        .map(|k| s[k].as_u64().unwrap_or_else(|| panic!("{k}: {s:#}")))
    };
    // 1292281046 = 2010-12-13 22:57:26 UTC: held 2 s, talked 3073 s, one RONA.
    assert_eq!(
        figures("2010-12-13T22:45:00.000000Z"),
        [1, 1, 1, 2000, 1, 3_073_000, 1, 1, 0]
    );
    // 1292284519 = 23:55:19: held 2 s, one RONA, no end in the excerpt.
    assert_eq!(
        figures("2010-12-13T23:45:00.000000Z"),
        [1, 1, 1, 2000, 0, 0, 1, 0, 0]
    );
}

/// A log rotated into two files (`hard-cases-1` then `hard-cases-2`, cut between a call's
/// `CONNECT` and its `COMPLETECALLER`), given to `teledge report` in order: the same figures
/// as the one file they were cut from. Each file used to be a log of its own: the stay open
/// at the first file's end was closed as unknown there (its `COMPLETECALLER` then made a
/// partial stay without its ring time) and every agent's presence ended with the first file
/// (their `ADDMEMBER`s are not repeated in the second: staffed time lost). Given newest
/// first, they are still read oldest first (else the first file's agents would run on to
/// the second's end, and its open stays close there). Figures checked against
/// `scripts/queue_log_reference.py`.
#[test]
fn a_queue_log_rotated_into_two_files_reports_as_the_one_log() {
    let parts = [
        "queue_log/hard-cases-1.queue_log",
        "queue_log/hard-cases-2.queue_log",
    ];
    let (out, rotated) = report_queue_logs(&parts, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The second part's three damaged lines (not a line, a bad time, a CONNECT without
    // its holdtime); the unknown FOOBAR is kept.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("hard-cases-2.queue_log: 3 line(s)"),
        "{stderr}"
    );
    // The unknown event is kept, counted and said; QUEUESTART is known.
    assert!(
        stderr.contains(
            "1 queue_log line(s) of events teledge does not know carry no figure: FOOBAR 1"
        ),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("queue_log");
    let mut text = String::new();
    for p in parts {
        text += &std::fs::read_to_string(crate::support::data_path(p)).unwrap();
    }
    std::fs::write(&whole, text).unwrap();
    let (_, one) = report_queue_logs(&[whole.to_str().unwrap()], &[]);
    assert_eq!(rotated, one);
    // Given newest first (as `queue_log*` expands), they are read oldest first, and said.
    let (out, reversed) = report_queue_logs(&[parts[1], parts[0]], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("read in the time order of their first lines"),
        "{stderr}"
    );
    assert_eq!(reversed, rotated);
    // 01:30-01:45 UTC: PJSIP/201 in sales until its REMOVEMEMBER at 01:38 (8 min) and in
    // support to the log's end at 01:42 (12 min), PJSIP/202 in support, paused, 12 min;
    // the rotated call (CONNECT held 25 s, rang 3 s) and the call connected just before
    // Asterisk restarted (held 6 s, rang 2 s, no end) are both answered.
    let s = &rotated["2026-03-29T01:30:00.000000Z"];
    assert_eq!(
        [
            &s["agents"]["staffed_ms"],
            &s["agents"]["paused_ms"],
            &s["answered"],
            &s["rang"],
            &s["ring_ms"],
            &s["wait_answered_ms"],
            &s["handled"],
            &s["talk_ms"],
        ]
        .map(|v| v.as_u64().unwrap()),
        [1_920_000, 720_000, 2, 2, 5000, 31_000, 1, 120_000],
        "{s:#}"
    );
}

/// Flow-outs are told apart by kind (EN 15838 7.3 figures distinguish a queue's timeout, an
/// empty queue and a caller's exit key from abandons and from each other): the hard-case
/// log's `EXITWITHTIMEOUT` (sales, 60 s), `EXITEMPTY` (support, 0 s) and `EXITWITHKEY`
/// (support, key 5, 12 s) count at their service-level event in 01:00-01:15 UTC, the
/// second `EXITWITHTIMEOUT` (the caller then answered in support) at arrival + T in
/// 01:15; only their total was reported. Checked against `scripts/queue_log_reference.py`.
#[test]
fn flow_outs_are_counted_by_kind() {
    let parts = [
        "queue_log/hard-cases-1.queue_log",
        "queue_log/hard-cases-2.queue_log",
    ];
    let (_, sums) = report_queue_logs(&parts, &[]);
    let kinds = |start: &str| sums[start]["flowed_out_by_kind"].clone();
    assert_eq!(
        kinds("2026-03-29T01:00:00.000000Z"),
        serde_json::json!({"timeout": 1, "empty": 1, "key": 1})
    );
    assert_eq!(
        kinds("2026-03-29T01:15:00.000000Z"),
        serde_json::json!({"timeout": 1})
    );
    // The CSV's columns, one per kind.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["report", "--format", "csv"])
        .args(parts.iter().flat_map(|p| {
            [
                "--queue-log".into(),
                crate::support::data_path(p).into_os_string(),
            ]
        }))
        .output()
        .unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut rows = csv.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let header = rows.next().unwrap();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let row = rows
        .find(|r| r[0] == "2026-03-29T01:00:00.000000Z")
        .unwrap();
    assert_eq!(
        [
            "flowed_out",
            "flowed_out_timeout",
            "flowed_out_empty",
            "flowed_out_key",
            "flowed_out_withdraw"
        ]
        .map(|c| row[col(c)]),
        ["3", "1", "1", "1", "0"]
    );
    // The table a supervisor reads: offered = answered + abandoned + flowed out.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["report", "--time-zone", "Europe/Berlin"])
        .args(parts.iter().flat_map(|p| {
            [
                "--queue-log".into(),
                crate::support::data_path(p).into_os_string(),
            ]
        }))
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header[..8],
        ["interval", "(local)", "service", "rev", "offered", "answ", "aband", "short"]
    );
    assert_eq!(header[8], "flow", "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("2026-03-29T03:00:00+02:00"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[3..8], ["6", "3", "0", "0", "3"], "{table}");
}

/// An agent who stays a member, unchanged, for longer than the statistics count back at
/// one go (8 days): `teledge report` has no ticks, so its presence was counted only at its
/// next change, and then at most 8 days back — the first days of a 10-day membership were
/// lost, silently. The report now counts open presences as the log's time goes on (every
/// hour of it, as the daemon's tick does every second), and what still lies more than 8
/// days back (a log silent that long) is counted in `agents.too_late_ms`, not lost. The
/// log is written here (no public `queue_log` spans days): `ADDMEMBER`, a short abandon
/// each day, `REMOVEMEMBER` 10 days and 60 s later. Checked against
/// `scripts/queue_log_reference.py`.
#[test]
fn an_agent_member_for_ten_days_is_staffed_all_ten() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("queue_log");
    let t0 = 1_767_225_600u64; // 2026-01-01 00:00 UTC
    let mut text = format!("{t0}|MANAGER|sales|PJSIP/201|ADDMEMBER|\n");
    for day in 1..=10u64 {
        let t = t0 + day * 86_400;
        text += &format!("{t}|{t}.{day}|sales|NONE|ENTERQUEUE||555|1\n");
        text += &format!("{}|{t}.{day}|sales|NONE|ABANDON|1|1|5\n", t + 5);
    }
    text += &format!(
        "{}|MANAGER|sales|PJSIP/201|REMOVEMEMBER|\n",
        t0 + 10 * 86_400 + 60
    );
    std::fs::write(&log, text).unwrap();
    let (out, sums) = report_queue_logs(&[log.to_str().unwrap()], &["--interval", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = |k: &str| -> u64 {
        sums.values()
            .map(|s| s["agents"][k].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (total("staffed_ms"), total("too_late_ms")),
        ((10 * 86_400 + 60) * 1000, 0)
    );
    // Every hour of the ten days holds its hour of the agent.
    assert_eq!(
        sums["2026-01-01T00:00:00.000000Z"]["agents"]["staffed_ms"],
        3_600_000
    );
    assert_eq!(
        sums["2026-01-05T13:00:00.000000Z"]["agents"]["staffed_ms"],
        3_600_000
    );

    // A log silent for 20 days (the PBX off?) between the member's ADDMEMBER and the next
    // line: what lies more than 8 days before a count is not walked hour by hour but
    // counted as too late — 12 days at the line of day 20, 2 at the REMOVEMEMBER of day
    // 30 — so staffed + too late is the whole 30 days, nothing lost unsaid.
    let text = format!(
        "{t0}|MANAGER|sales|PJSIP/201|ADDMEMBER|\n\
         {a}|{a}.1|sales|NONE|ENTERQUEUE||555|1\n\
         {b}|{a}.1|sales|NONE|ABANDON|1|1|5\n\
         {c}|MANAGER|sales|PJSIP/201|REMOVEMEMBER|\n",
        a = t0 + 20 * 86_400,
        b = t0 + 20 * 86_400 + 5,
        c = t0 + 30 * 86_400,
    );
    std::fs::write(&log, text).unwrap();
    let (_, sums) = report_queue_logs(&[log.to_str().unwrap()], &["--interval", "60"]);
    let total = |k: &str| -> u64 {
        sums.values()
            .map(|s| s["agents"][k].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (total("staffed_ms"), total("too_late_ms")),
        (16 * 86_400_000, 14 * 86_400_000)
    );
}
