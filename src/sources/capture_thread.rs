//! The thread that captures one interface: reads its AF_PACKET ring into a [`PacketSink`]
//! until cancelled, and when the interface goes down or away closes the capture and reopens
//! it with backoff (capped at 30 s) — a flapping link or a recreated VLAN interface must not
//! end capture for good. The one capture loop: the daemon and the tests run this.
//!
//! # A ring that grows
//!
//! A `TPACKET_V3` ring is allocated whole when the socket is set up and stays resident; it
//! cannot grow in place. So a capture starts with a small ring ([`CaptureSettings::start`])
//! and, when the traffic needs it, replaces it by one of the configured size
//! ([`CaptureSettings::ring`]), in one step, once. Triggers, looked at after every wake-up:
//! more than half the ring's blocks found retired at once, or any kernel drop (drops before
//! the switch are real losses, counted and announced as always). It never shrinks.
//!
//! The switch, for the capture threads of one interface together ([`RingGroup`]):
//! 1. One thread opens a new socket for every thread, with the big ring, *held* (a filter
//!    that takes nothing), bound, and — with several threads — joined to a NEW fanout group
//!    in the order the old group's members joined (the kernel indexes members in join order,
//!    a leaving member replaced by the last; [`RingGroup`] mirrors that). The kernel picks a
//!    member by `reciprocal_scale(symmetric flow hash, members)`, the hash keyed by a
//!    boot-wide secret, not by the group: once all members have joined, the new group hands
//!    every flow to the same thread as the old one.
//! 2. Each thread takes its new socket and lets it take frames (`arm`), noting the wall
//!    clock then (the clock of the kernel's frame stamps); from then on every frame reaches
//!    both rings. It reads on from the old ring, handing on only frames stamped before the
//!    arm (plus [`ARMED_SLACK_NS`]) and remembering a fingerprint of each (kernel timestamp,
//!    length, hash of the bytes: see [`Fingerprints`]); later ones are the new ring's. It
//!    closes the old socket (unmapping the ring first: a mapped packet socket outlives
//!    `close`) as soon as a frame stamped [`REORDER_NS`] past that is read from it (the ring
//!    holds frames in the kernel's order, so nothing earlier is left), or after two block
//!    timeouts and 20 ms on a quiet line (the kernel retires a block with frames at its
//!    timeout), so the new ring is not left unread long.
//! 3. It then reads the new ring, skipping every frame whose fingerprint was remembered (a
//!    frame stamped just before the arm can reach both); the set is freed once the new ring's
//!    stamps pass the last remembered one by [`REORDER_NS`] (or 10 s after the old ring
//!    closed, on a quiet line).
//!
//! Guaranteed: every frame that reached the old ring stamped before the arm, or the new ring,
//! is handed on once; the frames of a flow stay on their thread (the same flow→thread
//! mapping) and in the kernel's order: the old ring's part, then the new ring's, which is
//! whole from the arm on, so what the small ring, full, dropped meanwhile is not lost.
//! Drops of the small ring before the arm are real losses, counted as always. Not
//! guaranteed: a frame stamped after the arm that the new ring missed (it drops, or the
//! kernel on another CPU still ran the held filter [`ARMED_SLACK_NS`] after the
//! `setsockopt` returned) is lost without a drop count; a fingerprint the bounded set could
//! not hold leaves a duplicate (logged). The kernel stamps each frame once for every socket
//! because every capture sets `SO_TIMESTAMPNS` (`netstamp_needed`); a frame stamped per
//! socket would not be recognised, and be handed on twice. The old ring's kernel drops are
//! added to the capture's until it closes, including drops of frames stamped after the arm
//! that the new ring holds and hands on: a switch can over-count drops, never under-count.
//! Rings never shrink.
//! A thread down (its interface gone) when the switch happens reopens straight into the new
//! group with the big ring.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::sources::afpacket::{
    CaptureFilter, Fanout, Fingerprint, Fingerprints, KernelStats, LiveCapture, LiveCaptureError,
    PacketSink, RingSettings, STOP_CHECK_INTERVAL,
};

/// How often the kernel's counters are read and handed to the caller.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How long after the new ring's filter was set (the `setsockopt` returned) a frame stamped
/// by the kernel is sure to have met that filter: far more than a store takes to reach the
/// other CPUs.
pub const ARMED_SLACK_NS: i64 = 100_000;
/// How long a failed grow waits before it is tried again.
const GROW_RETRY: Duration = Duration::from_secs(60);
/// How far frame timestamps may run out of order across CPUs: a frame of the new ring this
/// much past the last remembered one ends the de-duplication.
pub const REORDER_NS: i64 = 10_000_000;

/// What to capture.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub interface: String,
    /// The ring a capture grows to (and reopens with once grown).
    pub ring: RingSettings,
    /// The ring a capture starts with; equal to `ring`, it never grows.
    pub start: RingSettings,
    /// Ask the NIC for frames not addressed to this host (a port mirror).
    pub promiscuous: bool,
    /// The fanout group the sockets of the interface's threads join (several threads), also
    /// when they reopen; a grown ring's group is this id plus the grows.
    pub fanout: Option<Fanout>,
}

/// The capture threads of one interface: their rings' size, the fanout group they are in
/// and its members in the kernel's order, and the new sockets of a grow waiting for their
/// threads.
#[derive(Debug)]
pub struct RingGroup {
    settings: CaptureSettings,
    inner: Mutex<GroupInner>,
    grows: AtomicU64,
    /// New sockets of a grow not yet taken by their threads, and whether the ring may still
    /// grow: read without the lock by every thread after every wake-up, so a capture whose
    /// ring started whole (the default) or has grown takes no lock for them.
    pending_count: AtomicU64,
    may_grow: std::sync::atomic::AtomicBool,
    /// Frames both rings held during a switch, handed on from one of them only.
    duplicates: AtomicU64,
    /// Bytes of ring each thread holds (both rings during a switch).
    ring_bytes: Vec<AtomicU64>,
}

#[derive(Debug)]
struct GroupInner {
    current: RingSettings,
    generation: u16,
    /// Threads in the order the kernel indexes the current group's members.
    members: Vec<usize>,
    pending: Vec<Option<LiveCapture>>,
    retry_at: Option<Instant>,
}

impl RingGroup {
    pub fn new(settings: CaptureSettings, threads: usize) -> Arc<Self> {
        let start = if settings.start.total_bytes() < settings.ring.total_bytes() {
            settings.start
        } else {
            settings.ring
        };
        let may_grow = start != settings.ring;
        Arc::new(RingGroup {
            settings,
            inner: Mutex::new(GroupInner {
                current: start,
                generation: 0,
                members: Vec::new(),
                pending: (0..threads).map(|_| None).collect(),
                retry_at: None,
            }),
            grows: AtomicU64::new(0),
            pending_count: AtomicU64::new(0),
            may_grow: std::sync::atomic::AtomicBool::new(may_grow),
            duplicates: AtomicU64::new(0),
            ring_bytes: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GroupInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fanout(&self, generation: u16) -> Option<Fanout> {
        self.settings.fanout.map(|f| Fanout {
            group: f.group.wrapping_add(generation),
        })
    }

    pub fn interface(&self) -> &str {
        &self.settings.interface
    }

    /// Opens `thread`'s capture with the current ring in the current group, and records it
    /// as the group's last member.
    pub fn open(&self, thread: usize) -> Result<LiveCapture, LiveCaptureError> {
        let mut inner = self.lock();
        let capture = LiveCapture::open_with(
            &self.settings.interface,
            inner.current,
            self.settings.promiscuous,
            CaptureFilter::IpOnly,
            self.fanout(inner.generation),
        )?;
        inner.members.retain(|m| *m != thread);
        inner.members.push(thread);
        self.ring_bytes[thread].store(inner.current.total_bytes(), Ordering::Relaxed);
        Ok(capture)
    }

    /// `thread`'s capture is closed: it leaves the group as the kernel has it leave (the last
    /// member takes its index), and a new socket waiting for it is closed too.
    fn leave(&self, thread: usize) {
        let mut inner = self.lock();
        if let Some(at) = inner.members.iter().position(|m| *m == thread) {
            inner.members.swap_remove(at);
        }
        if inner.pending[thread].take().is_some() {
            self.pending_count.fetch_sub(1, Ordering::Release);
        }
        self.ring_bytes[thread].store(0, Ordering::Relaxed);
    }

    /// Opens the big ring for every member, held, in the members' order, into a new group.
    /// False when there is nothing to grow (already grown, or a grow failed recently).
    fn grow(&self) -> bool {
        if !self.may_grow.load(Ordering::Relaxed) {
            return false;
        }
        let mut inner = self.lock();
        if inner.current == self.settings.ring || inner.retry_at.is_some_and(|t| Instant::now() < t)
        {
            return false;
        }
        let generation = inner.generation.wrapping_add(1);
        let mut opened = Vec::new();
        for &member in &inner.members {
            match LiveCapture::open_held(
                &self.settings.interface,
                self.settings.ring,
                self.settings.promiscuous,
                CaptureFilter::IpOnly,
                self.fanout(generation),
            ) {
                Ok(capture) => opened.push((member, capture)),
                Err(e) => {
                    tracing::warn!(interface = %self.settings.interface, error = %crate::report::Chain(&e), "Capture ring not grown; trying again in a minute.");
                    inner.retry_at = Some(Instant::now() + GROW_RETRY);
                    return false;
                }
            }
        }
        let bytes = self.settings.ring.total_bytes();
        for (member, capture) in opened {
            if inner.pending[member].replace(capture).is_none() {
                self.pending_count.fetch_add(1, Ordering::Release);
            }
            self.ring_bytes[member].fetch_add(bytes, Ordering::Relaxed);
        }
        inner.generation = generation;
        inner.current = self.settings.ring;
        self.may_grow.store(false, Ordering::Relaxed);
        self.grows.fetch_add(1, Ordering::Relaxed);
        tracing::info!(interface = %self.settings.interface, ring_bytes = bytes * self.ring_bytes.len() as u64, "Capture ring growing.");
        true
    }

    fn take(&self, thread: usize) -> Option<LiveCapture> {
        if self.pending_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let taken = self.lock().pending[thread].take();
        if taken.is_some() {
            self.pending_count.fetch_sub(1, Ordering::Release);
        }
        taken
    }

    /// Times the interface's rings grew.
    pub fn grows(&self) -> u64 {
        self.grows.load(Ordering::Relaxed)
    }

    /// Frames skipped since open as copies (see the module docs).
    pub fn duplicates_skipped(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Bytes of ring the interface's threads hold now.
    pub fn ring_bytes(&self) -> u64 {
        self.ring_bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    fn set_ring_bytes(&self, thread: usize, bytes: u64) {
        self.ring_bytes[thread].store(bytes, Ordering::Relaxed);
    }
}

/// A capture running on its thread.
#[derive(Debug)]
pub struct CaptureThread {
    interface: String,
    thread: JoinHandle<KernelStats>,
}

impl CaptureThread {
    /// Opens the capture (its errors come back here, before any thread starts) and runs it,
    /// alone on its interface.
    pub fn open_and_spawn<S: PacketSink + Send + 'static>(
        settings: CaptureSettings,
        stop: CancellationToken,
        sink: S,
    ) -> Result<Self, LiveCaptureError> {
        let interface = settings.interface.clone();
        let group = RingGroup::new(settings, 1);
        let capture = group.open(0)?;
        Self::spawn(group, 0, Some(capture), stop, sink, |_| {}).map_err(|source| {
            LiveCaptureError::Io {
                interface,
                operation: "spawning the capture thread",
                source,
            }
        })
    }

    /// Runs capture thread `thread` of `group` on a thread named after the interface until
    /// `stop` is cancelled (looked at every [`STOP_CHECK_INTERVAL`]). `first` is the capture
    /// already open (by [`RingGroup::open`]), if it could be; without it the interface is
    /// opened as soon as it is there. `kernel` receives the kernel's counters, summed over
    /// every opening, every second and at the end.
    pub fn spawn<S: PacketSink + Send + 'static>(
        group: Arc<RingGroup>,
        thread: usize,
        first: Option<LiveCapture>,
        stop: CancellationToken,
        mut sink: S,
        mut kernel: impl FnMut(KernelStats) + Send + 'static,
    ) -> std::io::Result<Self> {
        let interface = group.interface().to_owned();
        let handle = std::thread::Builder::new()
            .name(format!("capture-{interface}"))
            .spawn(move || capture_loop(first, &group, thread, &stop, &mut sink, &mut kernel))?;
        Ok(CaptureThread {
            interface,
            thread: handle,
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Waits for the thread (after `stop`): the kernel's counters summed over every opening.
    pub fn join(self) -> std::thread::Result<KernelStats> {
        self.thread.join()
    }
}

/// A ring being replaced: the old capture, read until drained, and what it handed on.
struct Handover {
    old: Option<LiveCapture>,
    armed_at: Instant,
    /// The wall clock (the kernel's frame stamps' clock) when the new ring was armed.
    armed_ns: i64,
    drain: Duration,
    seen: Fingerprints,
    /// When the old ring was closed.
    closed_at: Option<Instant>,
}

/// The old ring's sink during a switch: a frame stamped after the new ring was armed (by
/// more than [`ARMED_SLACK_NS`]) is the new ring's to hand on, so the flow goes on from
/// there in the kernel's order even where the old ring, full, dropped some; an earlier one is
/// handed on and remembered, as the new ring may hold it too.
/// `past` is set by a frame stamped later than any the old ring still has to hand on (by
/// more than [`REORDER_NS`]): the rest of the old ring is the new ring's.
fn remembering<'a>(
    seen: &'a mut Fingerprints,
    armed_ns: i64,
    left: &'a mut u64,
    past: &'a mut bool,
    sink: &'a mut impl PacketSink,
) -> impl FnMut(crate::sources::afpacket::LivePacket<'_>) + 'a {
    let last = armed_ns.saturating_add(ARMED_SLACK_NS);
    move |p| {
        let time = p.time.as_nanos();
        if time > last {
            *past |= time > last.saturating_add(REORDER_NS);
            *left += 1;
            return;
        }
        seen.remember(Fingerprint::of(&p));
        sink.packet(p);
    }
}

fn capture_loop(
    first: Option<LiveCapture>,
    group: &RingGroup,
    thread: usize,
    stop: &CancellationToken,
    sink: &mut impl PacketSink,
    kernel: &mut impl FnMut(KernelStats),
) -> KernelStats {
    let interface = group.interface();
    let mut capture = first;
    let mut handover: Option<Handover> = None;
    // Counters of captures already closed; the open one's are added on top.
    let mut closed = KernelStats::default();
    let mut current = KernelStats::default();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut reopen_at = Instant::now();
    let mut last_report = Instant::now();
    let mut last_drops = 0;
    // A blocking thread cannot select: it looks at the token at least every
    // STOP_CHECK_INTERVAL (the ring wait's timeout).
    while !stop.is_cancelled() {
        let Some(open) = capture.as_mut() else {
            if Instant::now() < reopen_at {
                std::thread::sleep(STOP_CHECK_INTERVAL);
                continue;
            }
            match group.open(thread) {
                Ok(c) => {
                    tracing::info!(interface, "Capture reopened.");
                    backoff.reset();
                    capture = Some(c);
                }
                Err(e) => {
                    tracing::debug!(interface, error = %crate::report::Chain(&e), "Capture not reopened yet.");
                    reopen_at = Instant::now() + backoff.next_wait();
                }
            }
            continue;
        };
        // A new ring the group opened for this thread: it takes over.
        if handover.is_none() {
            if let Some(mut new) = group.take(thread) {
                match new.arm() {
                    Ok(()) => {
                        let old = std::mem::replace(open, new);
                        let timeout = u64::from(old.ring_settings().block_timeout_ms.max(8));
                        // The old ring's whole content, at the smallest frame a ring holds.
                        let capacity = (old.ring_settings().total_bytes() / 64).max(4096);
                        // The old ring's counters are added when it closes.
                        current = KernelStats::default();
                        handover = Some(Handover {
                            old: Some(old),
                            armed_at: Instant::now(),
                            armed_ns: crate::time::Timestamp::now().as_nanos(),
                            drain: Duration::from_millis(2 * timeout + 20),
                            seen: Fingerprints::with_capacity(capacity as usize),
                            closed_at: None,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::report::Chain(&e), "Grown capture ring not armed; keeping the small one.");
                    }
                }
            }
        }
        let result = match handover.as_mut() {
            Some(h) => match h.old.as_mut() {
                Some(old) => {
                    let (mut left, mut past) = (0, false);
                    let result = old.next_batch(
                        Duration::from_millis(10),
                        remembering(&mut h.seen, h.armed_ns, &mut left, &mut past, sink),
                    );
                    group.duplicates.fetch_add(left, Ordering::Relaxed);
                    if result.is_err() || past || h.armed_at.elapsed() >= h.drain {
                        // Its kernel counters join the closed ones.
                        if let Ok(k) = old.stats() {
                            closed = add_stats(closed, k);
                        }
                        // Unmapped and closed together: the socket leaves its group now.
                        h.old = None;
                        h.closed_at = Some(Instant::now());
                        group.set_ring_bytes(thread, open.ring_settings().total_bytes());
                    }
                    // The new ring's errors surface when it is read.
                    Ok(0)
                }
                None => {
                    let seen = &mut h.seen;
                    let latest = seen.latest_ns();
                    let mut past = false;
                    let mut skipped = 0;
                    let result = open.next_batch(STOP_CHECK_INTERVAL, |p| {
                        if !seen.is_empty() && seen.take(&Fingerprint::of(&p)) {
                            skipped += 1;
                            return;
                        }
                        past |= p.time.as_nanos() > latest.saturating_add(REORDER_NS);
                        sink.packet(p);
                    });
                    group.duplicates.fetch_add(skipped, Ordering::Relaxed);
                    if past
                        || seen.is_empty()
                        || h.closed_at
                            .is_some_and(|t| t.elapsed() >= Duration::from_secs(10))
                    {
                        if h.seen.overflowed() > 0 {
                            tracing::warn!(interface, not_remembered = h.seen.overflowed(), "Capture ring switch: frames past the de-duplication bound may have been handed on twice.");
                        }
                        handover = None;
                    }
                    result
                }
            },
            None => open.next_batch(STOP_CHECK_INTERVAL, |p| sink.packet(p)),
        };
        if let Err(e) = result {
            tracing::warn!(error = %crate::report::Chain(&e), "Capture failed; reopening with backoff.");
            if let Some(open) = capture.as_mut() {
                if let Ok(k) = open.stats() {
                    current = k;
                }
            }
            closed = add_stats(closed, current);
            current = KernelStats::default();
            capture = None;
            handover = None;
            group.leave(thread);
            reopen_at = Instant::now() + backoff.next_wait();
        } else if handover.is_none() {
            // A ring found more than half full at one wake-up: it grows before it drops.
            if let Some(open) = capture.as_ref() {
                if open.last_batch_blocks() * 2 > open.ring_settings().block_count {
                    group.grow();
                }
            }
        }
        sink.batch_end();
        if last_report.elapsed() >= STATS_EVERY {
            last_report = Instant::now();
            if let Some(k) = capture.as_mut().and_then(|c| c.stats().ok()) {
                current = k;
            }
            let total = add_stats(closed, current);
            if total.drops > last_drops && handover.is_none() {
                group.grow();
            }
            last_drops = total.drops;
            kernel(total);
        }
    }
    if let Some(old) = handover.as_mut().and_then(|h| h.old.as_mut()) {
        // Stopping mid-switch: what the old ring still holds is not read, like the new one's.
        if let Ok(k) = old.stats() {
            closed = add_stats(closed, k);
        }
    }
    if let Some(k) = capture.as_mut().and_then(|c| c.stats().ok()) {
        current = k;
    }
    let total = add_stats(closed, current);
    kernel(total);
    total
}

fn add_stats(a: KernelStats, b: KernelStats) -> KernelStats {
    KernelStats {
        packets: a.packets + b.packets,
        drops: a.drops + b.drops,
        freeze_queue: a.freeze_queue + b.freeze_queue,
    }
}
