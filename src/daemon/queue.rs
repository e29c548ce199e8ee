//! The queue-event component: one thread per `[[queue_log]]` (tail → parse → assemble →
//! record queue, its state file kept), one task pair per `[[callcenter]]` (event socket
//! client → assembler). Queue contacts go to the spool as `teledge.queue/1` records like
//! every other record, so they are durable and forwarded whoever consumes them later; so
//! do the agents' presence changes (`teledge.agent/1`), taken from the assembler after each
//! line or event (after a restart, the presences of the state file first, `restored`).
//!
//! - The `queue_log` thread polls every `poll_interval` (default 250 ms), reads at most
//!   1 MiB per poll and polls again at once while there is more (a backlog is read in
//!   bounded steps). Its state file — file position and the open queue calls and agent
//!   states, JSON, written atomically — is saved at most once a second after a change and
//!   when it stops; so a stop and start reads no line twice and loses none, and a crash
//!   repeats at most the last second's lines, whose records have the same `record_id` (the
//!   collector drops the duplicates). A state file that will not read is moved aside
//!   (`.bad`) and the file is read per `start_at`.
//! - Losses are counted in the metrics (`teledge_decode_errors_total{kind="queue_log_…"}`,
//!   `teledge_state_evictions_total{table="queue_stories"}`) and announced upstream by
//!   `input_dropped` gap records, at most once a minute per kind: lines skipped as too long,
//!   partial lines dropped at a rotation, unread lines possibly lost to a truncation or a
//!   rotation while stopped (count unknown: `dropped` is null), queue calls evicted before
//!   their end.
//! - The callcenter pair: the client task ([`crate::sources::callcenter`]) sends decoded
//!   events into a bounded channel (1024; the client waits when it is full, and TCP holds
//!   FreeSWITCH back); the assembler task makes the records. At shutdown the client stops,
//!   and open queue calls become records with `closed_by: shutdown`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Context, RecordQueue};
use crate::config::queue::{CallcenterConfig, QueueLogConfig};
use crate::correlation::queue::{AssemblerState, QueueAssembler};
use crate::decode::queue_log;
use crate::observe::events::{DecodeErrors, InternalEvent};
use crate::observe::AgentMetrics;
use crate::privacy::Pseudonymizer;
use crate::record::gap::{GapReason, GapRecord};
use crate::record::queue::QueueSource;
use crate::record::Record;
use crate::sources::callcenter::{self, CallcenterSettings, CallcenterStats};
use crate::sources::queue_log::{write_state_atomically, TailPosition, TailSettings, Tailer};
use crate::time::Timestamp;

/// Bytes read per poll at most; more is read by polling again at once.
const POLL_BYTES: usize = 1 << 20;
/// How often the state file is written at most (after a change).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often losses are announced by gap records at most, per kind.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(60);

/// The state file of one `[[queue_log]]`.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// The file the position is in: a position of another file is not used.
    path: PathBuf,
    position: Option<TailPosition>,
    queue: AssemblerState,
}

/// The running queue inputs.
#[derive(Debug)]
pub(super) struct QueueInputs {
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl QueueInputs {
    pub(super) fn build(
        queue_logs: &[QueueLogConfig],
        callcenters: &[CallcenterConfig],
        pseudonymizer: &Pseudonymizer,
        node: &str,
        ctx: &Context,
    ) -> Result<Self, std::io::Error> {
        let mut threads = Vec::new();
        for config in queue_logs {
            tracing::info!(path = %config.path.display(), state = %config.state_file.display(), group = %config.group, "Following queue_log.");
            let job = QueueLogJob {
                config: config.clone(),
                pseudonymizer: pseudonymizer.clone(),
                node: node.to_owned(),
                records: ctx.records.clone(),
                metrics: Arc::clone(&ctx.metrics),
                stop: ctx.sources.clone(),
            };
            // A panic of the reader (a bug) is caught, announced, and stops the daemon; the
            // state file says where the next start goes on.
            let supervisor = Arc::clone(&ctx.supervisor);
            let records = ctx.records.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("queue-log".into())
                    .spawn(move || supervisor.guard_thread("queue_log", &records, || job.run()))?,
            );
        }
        let mut tasks = Vec::new();
        for config in callcenters {
            tasks.push(spawn_callcenter(config, pseudonymizer, node, ctx));
        }
        Ok(QueueInputs { threads, tasks })
    }

    /// Waits until every input has stopped (the sources' token) and handed on its records.
    pub(super) async fn join(self) {
        for thread in self.threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// One `[[queue_log]]` on its thread.
struct QueueLogJob {
    config: QueueLogConfig,
    pseudonymizer: Pseudonymizer,
    node: String,
    records: RecordQueue,
    metrics: Arc<AgentMetrics>,
    stop: tokio_util::sync::CancellationToken,
}

impl QueueLogJob {
    fn run(self) {
        let config = &self.config;
        let saved = load_state(config);
        let mut tailer = Tailer::new(
            TailSettings {
                path: config.path.clone(),
                max_line_len: config.max_line_len,
                start_at: config.start_at,
            },
            saved.as_ref().and_then(|s| s.position.clone()),
        );
        let mut assembler = QueueAssembler::new(
            QueueSource::AsteriskQueueLog,
            config.group.clone(),
            config.limits,
            self.pseudonymizer.clone(),
        );
        if let Some(state) = saved {
            assembler.restore(state.queue);
            // The agents logged in before the restart are followed from now on (taken
            // with the first poll's records).
            assembler.announce_agents(Timestamp::now());
        }
        let mut losses = Losses::default();
        let mut last_save = Instant::now();
        // The first position is saved at once: a first start at the end of the file must
        // not skip what is written while the daemon is down before its first line.
        let mut dirty = true;
        let mut last_error: Option<std::io::ErrorKind> = None;
        let mut save_failing = false;
        loop {
            crate::panics::inject("queue_log");
            let stopping = self.stop.is_cancelled();
            // Everything already written is taken, also when stopping.
            loop {
                match self.poll(&mut tailer, &mut assembler) {
                    Ok(n) => {
                        last_error = None;
                        dirty |= n > 0;
                        if n < POLL_BYTES {
                            break;
                        }
                    }
                    Err(e) => {
                        if last_error != Some(e.kind()) {
                            tracing::error!(path = %config.path.display(), error = %e, "queue_log cannot be read.");
                        }
                        last_error = Some(e.kind());
                        break;
                    }
                }
            }
            self.publish(&tailer, &assembler);
            for gap in losses.due(&self.node, &tailer, &assembler, stopping) {
                self.records.push(Record::Gap(Box::new(gap)));
            }
            if stopping || (dirty && last_save.elapsed() >= SAVE_EVERY) {
                match save_state(config, &tailer, &assembler) {
                    Ok(()) => {
                        dirty = false;
                        save_failing = false;
                    }
                    // Said once until it works again, not every second.
                    Err(e) if !save_failing => {
                        save_failing = true;
                        tracing::error!(state = %config.state_file.display(), error = %e, "queue_log state file not written: a restart would read lines again.");
                    }
                    Err(_) => {}
                }
                last_save = Instant::now();
            }
            if stopping {
                break;
            }
            std::thread::sleep(config.poll_interval);
        }
        let c = assembler.counters();
        tracing::info!(path = %config.path.display(), lines = tailer.counters().lines, records = c.records, open = assembler.open(), "queue_log input stopped; open queue calls kept in the state file.");
    }

    /// One poll: lines parsed and assembled, records queued. Returns the bytes read.
    fn poll(&self, tailer: &mut Tailer, assembler: &mut QueueAssembler) -> std::io::Result<usize> {
        let records = &self.records;
        let metrics = &self.metrics;
        tailer.poll(POLL_BYTES, &mut |line| match queue_log::parse_line(line) {
            Ok(parsed) => {
                // A file can wait: a full record queue slows the tail down rather than
                // dropping a queue call whose line the saved position has already passed.
                assembler.asterisk(&parsed, &mut |r| {
                    records.push_waiting(Record::Queue(Box::new(r)))
                });
                for a in assembler.take_agent_states() {
                    records.push_waiting(Record::Agent(Box::new(a)));
                }
            }
            // Blank lines carry nothing.
            Err(queue_log::QueueLogError::Empty) => {}
            Err(e) => DecodeErrors {
                source: "queue_log",
                kind: e.kind(),
                count: 1,
            }
            .emit(metrics),
        })
    }

    fn publish(&self, tailer: &Tailer, assembler: &QueueAssembler) {
        let m = &self.metrics;
        let t = tailer.counters();
        m.source_packets.with(&["queue_log"]).raise_to(t.lines);
        m.source_bytes.with(&["queue_log"]).raise_to(t.bytes);
        for (kind, n) in [
            ("queue_log_too_long", t.lines_too_long),
            ("queue_log_partial_line_dropped", t.partial_lines_dropped),
            ("queue_log_possibly_lost", t.possibly_lost),
        ] {
            if n > 0 {
                m.decode_errors.with(&[kind]).raise_to(n);
            }
        }
        let c = assembler.counters();
        for (table, n) in [
            ("queue_stories", c.evicted),
            ("queue_stories_expired", c.expired),
            ("queue_agents", c.agents_refused),
            ("queue_agent_states", c.agent_states_dropped),
        ] {
            if n > 0 {
                m.state_evictions.with(&[table]).raise_to(n);
            }
        }
    }
}

/// The state file, or `None` (first start, another file, or unreadable: moved aside).
fn load_state(config: &QueueLogConfig) -> Option<StateFile> {
    let bytes = match std::fs::read(&config.state_file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(state = %config.state_file.display(), error = %e, "queue_log state file not readable: reading per start_at.");
            return None;
        }
    };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(state) if state.version == 1 && state.path == config.path => Some(state),
        Ok(state) => {
            tracing::warn!(state = %config.state_file.display(), was = %state.path.display(), "queue_log state file is for another file: not used.");
            None
        }
        Err(e) => {
            let aside = config.state_file.with_extension("bad");
            let _ = std::fs::rename(&config.state_file, &aside);
            tracing::error!(state = %config.state_file.display(), aside = %aside.display(), error = %e, "queue_log state file damaged: moved aside, reading per start_at.");
            None
        }
    }
}

fn save_state(
    config: &QueueLogConfig,
    tailer: &Tailer,
    assembler: &QueueAssembler,
) -> std::io::Result<()> {
    let state = StateFile {
        version: 1,
        path: config.path.clone(),
        position: tailer.position(),
        queue: assembler.state(),
    };
    let bytes = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
    if let Some(dir) = config.state_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_state_atomically(Path::new(&config.state_file), &bytes)
}

/// What was announced by gap records so far.
#[derive(Debug, Default)]
struct Losses {
    announced: [u64; 5],
    last: Option<Instant>,
}

impl Losses {
    fn due(
        &mut self,
        node: &str,
        tailer: &Tailer,
        assembler: &QueueAssembler,
        force: bool,
    ) -> Vec<GapRecord> {
        if !force && self.last.is_some_and(|at| at.elapsed() < ANNOUNCE_EVERY) {
            return Vec::new();
        }
        let t = tailer.counters();
        let current = [
            t.lines_too_long,
            t.partial_lines_dropped,
            t.possibly_lost,
            assembler.counters().evicted,
            assembler.counters().agent_states_dropped,
        ];
        let details = [
            "queue_log lines longer than max_line_bytes skipped",
            "queue_log partial lines dropped at a rotation or truncation",
            "queue_log truncated or rotated with unread lines that could not be found",
            "queue calls evicted before their end (open queue calls table full)",
            "agent state records dropped (too many waiting to be taken)",
        ];
        let mut gaps = Vec::new();
        for (i, ((now, announced), detail)) in current
            .iter()
            .zip(self.announced.iter_mut())
            .zip(details)
            .enumerate()
        {
            if *now > *announced {
                // How many lines a truncation took is not known.
                let dropped = (i != 2).then_some(now - *announced);
                let mut gap = GapRecord::new(node, GapReason::InputDropped, dropped);
                gap.detail = Some(detail.to_owned());
                gaps.push(gap);
                *announced = *now;
            }
        }
        if !gaps.is_empty() {
            self.last = Some(Instant::now());
        }
        gaps
    }
}

/// The detail of a gap announcing queue calls evicted from a full table.
const QUEUE_CALLS_EVICTED: &str =
    "queue calls evicted before their end (open queue calls table full)";

/// State a callcenter input evicted or dropped: counted (`teledge_state_evictions_total`,
/// `kind`) and the gap record that announces it, in one place.
fn evicted_input(
    metrics: &AgentMetrics,
    node: &str,
    kind: &str,
    count: u64,
    detail: &str,
) -> Record {
    metrics.state_evictions.with(&[kind]).add(count);
    let mut gap = GapRecord::new(node, GapReason::InputDropped, Some(count));
    gap.detail = Some(detail.to_owned());
    Record::Gap(Box::new(gap))
}

/// One `[[callcenter]]`: the client task and the assembler task.
fn spawn_callcenter(
    config: &CallcenterConfig,
    pseudonymizer: &Pseudonymizer,
    node: &str,
    ctx: &Context,
) -> JoinHandle<()> {
    tracing::info!(address = %config.address, group = %config.group, "Reading FreeSWITCH mod_callcenter events.");
    let (tx, mut rx) = mpsc::channel(1024);
    let stats = Arc::new(CallcenterStats::default());
    let settings = CallcenterSettings::new(config.address, config.password.clone());
    ctx.tracker.spawn(callcenter::run(
        settings,
        tx,
        Arc::clone(&stats),
        ctx.sources.clone(),
    ));
    let mut assembler = QueueAssembler::new(
        QueueSource::FreeswitchCallcenter,
        config.group.clone(),
        config.limits,
        pseudonymizer.clone(),
    );
    let records = ctx.records.clone();
    let metrics = Arc::clone(&ctx.metrics);
    let node = node.to_owned();
    // No shutdown branch on purpose: this task ends when the client, stopped by the
    // sources' token, drops the channel's sender — after every event it took is assembled.
    // A panic (a bug) is caught, announced, and stops the daemon.
    let guard = Arc::clone(&ctx.supervisor);
    let guard_records = ctx.records.clone();
    ctx.tracker
        .spawn(guard.guard("callcenter", guard_records, async move {
            let mut evicted_announced = 0;
            let mut dropped_announced = 0;
            let mut last_gap: Option<Instant> = None;
            while let Some(event) = rx.recv().await {
                metrics.source_packets.with(&["callcenter"]).inc();
                assembler.callcenter(&event, Timestamp::now(), &mut |r| {
                    records.push(Record::Queue(Box::new(r)))
                });
                for a in assembler.take_agent_states() {
                    records.push(Record::Agent(Box::new(a)));
                }
                let dropped = assembler.counters().agent_states_dropped;
                if dropped > dropped_announced {
                    // Taken after every event, so never expected: logged and announced at once.
                    records.push(evicted_input(
                        &metrics,
                        &node,
                        "queue_agent_states",
                        dropped - dropped_announced,
                        "agent state records dropped (too many waiting to be taken)",
                    ));
                    dropped_announced = dropped;
                }
                let evicted = assembler.counters().evicted;
                let due = last_gap.is_none_or(|at| at.elapsed() >= ANNOUNCE_EVERY);
                if evicted > evicted_announced && due {
                    last_gap = Some(Instant::now());
                    records.push(evicted_input(
                        &metrics,
                        &node,
                        "queue_stories",
                        evicted - evicted_announced,
                        QUEUE_CALLS_EVICTED,
                    ));
                    evicted_announced = evicted;
                }
            }
            // Evictions since the last announcement (at most one a minute) are announced now:
            // after the stop nothing would.
            let evicted = assembler.counters().evicted;
            if evicted > evicted_announced {
                records.push_waiting(evicted_input(
                    &metrics,
                    &node,
                    "queue_stories",
                    evicted - evicted_announced,
                    QUEUE_CALLS_EVICTED,
                ));
            }
            assembler.finish(Timestamp::now(), &mut |r| {
                records.push_waiting(Record::Queue(Box::new(r)))
            });
            let decode_errors = stats.decode_errors.load(Ordering::Relaxed);
            if decode_errors > 0 {
                metrics
                    .decode_errors
                    .with(&["esl_callcenter"])
                    .raise_to(decode_errors);
            }
            tracing::info!(
                events = stats.events.load(Ordering::Relaxed),
                connections = stats.connections.load(Ordering::Relaxed),
                "FreeSWITCH mod_callcenter input stopped."
            );
        }))
}
