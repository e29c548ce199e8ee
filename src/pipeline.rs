//! The pipeline every command shares: frames → decode ([`Dissector`]) → calls
//! ([`Correlator`]) → records handed to a sink. `teledge replay`, `replay --forward` and the
//! daemon (`teledge run`) all drive this one type, so what a frame becomes does not depend on
//! where it came from.
//!
//! - [`Pipeline::frame`] decodes a captured frame on one of the pipeline's inputs (each input
//!   has its own decode state: one per capture file sequence, one per capture interface) and
//!   hands every SIP message, UDP datagram and HEP frame found in it to the correlator. HEP
//!   found on the wire is treated like HEP from the listener: SIP joins its calls, RTCP-JSON
//!   (type 5) joins the call named by its correlation id.
//! - [`Pipeline::hep`] takes a HEP frame from the HEP listener (the agent did the decoding).
//! - [`Pipeline::tick`] moves time forward on a quiet line (timeouts).
//! - [`Pipeline::finish`] flushes what every input's reassembly still holds (TCP data behind
//!   a hole, for instance), then closes every open call as partial with the reason given.
//!
//! A [`Mirror`] set with [`Pipeline::set_mirror`] is handed, as they pass, every SIP message
//! (with its bytes, addresses, transport and capture time as captured, before any time
//! check), every RTCP packet the media tracker attributes to a call (with its Call-ID), every
//! HEP frame of type 1 or 5 from the listener or found on the wire (as received), and every
//! record made. The HEP relay (`crate::relay`) is one; a mirror must not block (it is called
//! on the capture path).
//!
//! [`LivePipeline`] is the same path for the daemon's threads: every capture thread decodes
//! its own frames ([`LiveInput`]) and hands the events to a [`ShardedCorrelator`], whose
//! shards each take the calls (and their media) of a share of the Call-IDs. Replay stays on
//! [`Pipeline`]: one thread, one correlator, deterministic. Its mirror
//! ([`LivePipeline::set_mirror`]) is handed the same events from every capture thread, the
//! HEP task and the ticker, behind a mutex of its own (taken only for what is mirrored, after
//! any shard lock, never before one): RTCP held back by a capture thread
//! ([`crate::correlation::sharded::MediaHold`]) is mirrored when it is correlated.
//!
//! Times a sender stamped can be checked on their way in by an input's [`TimeCheck`] (the
//! daemon keeps one frame stamped a day ahead from freezing every timeout); replay has none.
//! No I/O: records leave through the `out` callback, so the same code runs over a file, a
//! live ring or a test vector.

use std::sync::{Arc, Mutex};

use crate::correlation::hep::{Fed, FeedError};
use crate::correlation::sharded::{HoldCounters, MediaHold, Routed, ShardedCorrelator};
use crate::correlation::{Correlate, Correlator, RtcpSeen};
use crate::decode::hep::{HepFrame, ProtoType};
use crate::decode::sip::SipMessage;
use crate::dissect::{
    DatagramMeta, DissectLimits, DissectStats, Dissector, Frame, MessageMeta, Observer,
};
use crate::record::{ClosedBy, Record};
use crate::time::Timestamp;

/// Checks a time a sender stamped before it drives the correlator's clock: returns the time
/// to use (the local clock's when the stamp is out of tolerance).
pub type TimeCheck = Box<dyn Fn(Timestamp) -> Timestamp + Send + Sync>;

/// What a [`Mirror`] is handed.
#[derive(Debug, Clone, Copy)]
pub enum Mirrored<'a> {
    /// A SIP message as captured: `message.raw` is its bytes, `meta` where and when it was
    /// seen (the capture time, not checked against the local clock).
    Sip {
        meta: &'a MessageMeta,
        message: &'a SipMessage<'a>,
    },
    /// An RTCP compound packet the media tracker attributes to the call `call_id`.
    Rtcp {
        meta: &'a DatagramMeta,
        payload: &'a [u8],
        call_id: &'a str,
    },
    /// A HEP frame of type 1 (SIP) or 5 (RTCP-JSON) as received, from the HEP listener or
    /// found inside a captured UDP datagram.
    Hep(&'a HepFrame<'a>),
    /// A record the correlator made (a call record carries its streams' quality).
    Record(&'a Record),
}

/// Something that sees what passes through the pipeline (the HEP relay). Called on the
/// capture path (in the live pipeline, records under the lock of a correlation shard): it
/// must queue, never wait.
pub trait Mirror: Send + std::fmt::Debug {
    fn mirror(&mut self, event: Mirrored<'_>);

    /// True for a frame the mirror itself sent, captured again on the wire (a capture
    /// interface that carries the relay's traffic): the pipeline neither mirrors nor
    /// correlates it, since what it carries was correlated when it was captured.
    fn own_frame(&self, hep: &HepFrame<'_>) -> bool {
        let _ = hep;
        false
    }
}

/// The mirror, if any, told about `record` before it goes `out`.
fn mirrored_out<'m>(
    mirror: &'m mut Option<Box<dyn Mirror>>,
    out: &'m mut impl FnMut(Record),
) -> impl FnMut(Record) + 'm {
    move |record| {
        if let Some(m) = mirror.as_mut() {
            m.mirror(Mirrored::Record(&record));
        }
        out(record)
    }
}

/// One of a pipeline's inputs (an index handed out by [`Pipeline::add_input`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputId(usize);

/// An input's own decode state.
struct Input {
    name: String,
    dissector: Dissector,
    time_check: Option<TimeCheck>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("name", &self.name)
            .field("dissector", &self.dissector)
            .field("time_check", &self.time_check.is_some())
            .finish()
    }
}

/// Decode and correlation, from frames to records.
#[derive(Debug)]
pub struct Pipeline {
    inputs: Vec<Input>,
    correlator: Correlator,
    /// HEP frames captured on the wire whose SIP would not parse or whose RTCP-JSON had no
    /// Call-ID or would not read: counted (in [`Pipeline::loss_totals`] as `hep_unusable`).
    hep_unusable: u64,
    /// Told about what passes ([`Pipeline::set_mirror`]).
    mirror: Option<Box<dyn Mirror>>,
}

/// Hands decoded events to the correlator (one, or sharded) and its records on: the one
/// adapter between the decode path and the calls.
struct Feed<'a, C, F> {
    correlator: &'a mut C,
    time_check: Option<&'a TimeCheck>,
    out: &'a mut F,
    hep_unusable: &'a mut u64,
    mirror: &'a mut Option<Box<dyn Mirror>>,
}

impl<C, F> Feed<'_, C, F> {
    fn check(&self, time: Timestamp) -> Timestamp {
        self.time_check.map_or(time, |check| check(time))
    }
}

impl<C: Correlate, F: FnMut(Record)> Observer for Feed<'_, C, F> {
    fn sip(&mut self, meta: &MessageMeta, message: &SipMessage<'_>) {
        if let Some(m) = self.mirror.as_mut() {
            m.mirror(Mirrored::Sip { meta, message });
        }
        self.correlate_sip(meta, message);
    }

    fn hep_sip(&mut self, meta: &MessageMeta, message: &SipMessage<'_>, hep: &HepFrame<'_>) {
        // Relayed as received, not as if we had captured it.
        if let Some(m) = self.mirror.as_mut() {
            if m.own_frame(hep) {
                return;
            }
            m.mirror(Mirrored::Hep(hep));
        }
        self.correlate_sip(meta, message);
    }

    fn datagram(&mut self, meta: &DatagramMeta, payload: &[u8]) {
        let checked = DatagramMeta {
            time: self.check(meta.time),
            ..*meta
        };
        let Feed {
            correlator,
            out,
            mirror,
            ..
        } = self;
        if mirror.is_none() {
            correlator.datagram(&checked, payload, *out);
            return;
        }
        // Records and RTCP both go to the mirror, one after the other, never at once.
        let mirror = std::cell::RefCell::new(mirror);
        correlator.datagram_with_rtcp(
            &checked,
            payload,
            &mut |record| {
                if let Some(m) = mirror.borrow_mut().as_mut() {
                    m.mirror(Mirrored::Record(&record));
                }
                out(record)
            },
            // Only RTCP the tracker attributes to a call is mirrored: a report without a
            // Call-ID is useless to HOMER (it stores no type-5 frame without one). This
            // packet goes as captured; one a capture thread held back, as correlated.
            Some(&mut |seen: &DatagramMeta, bytes: &[u8], call_id: &str| {
                let meta = if std::ptr::eq(bytes.as_ptr(), payload.as_ptr()) {
                    meta
                } else {
                    seen
                };
                if let Some(m) = mirror.borrow_mut().as_mut() {
                    m.mirror(Mirrored::Rtcp {
                        meta,
                        payload: bytes,
                        call_id,
                    });
                }
            }),
        );
    }

    fn hep(&mut self, frame: u64, hep: &HepFrame<'_>) {
        if let Some(m) = self.mirror.as_mut() {
            if m.own_frame(hep) {
                return;
            }
            if hep.proto_type == ProtoType::RtcpJson {
                m.mirror(Mirrored::Hep(hep));
            }
        }
        // SIP joins its calls, RTCP JSON its call (a report for no tracked call is counted by
        // the tracker); a body that will not parse, or RTCP-JSON without a Call-ID, is
        // counted here. The frame is copied only when its time has to be replaced.
        let time = self.check(hep.time);
        let Feed {
            correlator,
            out,
            mirror,
            hep_unusable,
            ..
        } = self;
        let mut out = mirrored_out(mirror, *out);
        let fed = if time == hep.time {
            crate::correlation::hep::feed(*correlator, hep, frame, &mut out)
        } else {
            let mut hep = hep.clone();
            hep.time = time;
            crate::correlation::hep::feed(*correlator, &hep, frame, &mut out)
        };
        if fed.is_err() {
            **hep_unusable += 1;
        }
    }
}

impl<C: Correlate, F: FnMut(Record)> Feed<'_, C, F> {
    fn correlate_sip(&mut self, meta: &MessageMeta, message: &SipMessage<'_>) {
        // Kernel times are the local clock already; HEP frames captured on the wire carry
        // their sender's time, which must not drive the correlator's clock unchecked.
        let meta = MessageMeta {
            time: self.check(meta.time),
            ..*meta
        };
        let Feed {
            correlator,
            out,
            mirror,
            ..
        } = self;
        correlator.sip(&meta, message, &mut mirrored_out(mirror, *out));
    }
}

impl Pipeline {
    /// A pipeline without inputs yet.
    pub fn new(correlator: Correlator) -> Self {
        Pipeline {
            inputs: Vec::new(),
            correlator,
            hep_unusable: 0,
            mirror: None,
        }
    }

    /// Sets the mirror told about every SIP message, attributed RTCP packet, HEP frame and
    /// record from now on (see the module documentation).
    pub fn set_mirror(&mut self, mirror: Box<dyn Mirror>) {
        self.mirror = Some(mirror);
    }

    /// A pipeline with one input (a replay: every file is one continuous capture).
    pub fn single(correlator: Correlator, limits: DissectLimits) -> (Self, InputId) {
        let mut pipeline = Pipeline::new(correlator);
        let input = pipeline.add_input("capture", limits, None);
        (pipeline, input)
    }

    /// Adds an input with decode state of its own, bounded by `limits`, whose sender-stamped
    /// times pass `time_check` when there is one.
    pub fn add_input(
        &mut self,
        name: &str,
        limits: DissectLimits,
        time_check: Option<TimeCheck>,
    ) -> InputId {
        self.inputs.push(Input {
            name: name.to_owned(),
            dissector: Dissector::new(limits),
            time_check,
        });
        InputId(self.inputs.len() - 1)
    }

    /// Decodes one frame of `input` and correlates what it holds.
    pub fn frame(&mut self, input: InputId, frame: &Frame<'_>, out: &mut impl FnMut(Record)) {
        let Some(Input {
            dissector,
            time_check,
            ..
        }) = self.inputs.get_mut(input.0)
        else {
            return;
        };
        let mut feed = Feed {
            correlator: &mut self.correlator,
            time_check: time_check.as_ref(),
            out,
            hep_unusable: &mut self.hep_unusable,
            mirror: &mut self.mirror,
        };
        dissector.frame(frame, &mut feed);
    }

    /// Correlates a HEP frame from the HEP listener; `sequence` numbers it among the frames
    /// of its listener. The caller checks its time (it knows the listener's clock guard).
    pub fn hep(
        &mut self,
        frame: &HepFrame<'_>,
        sequence: u64,
        out: &mut impl FnMut(Record),
    ) -> Result<Fed, FeedError> {
        if matches!(frame.proto_type, ProtoType::Sip | ProtoType::RtcpJson) {
            if let Some(m) = self.mirror.as_mut() {
                m.mirror(Mirrored::Hep(frame));
            }
        }
        let mut out = mirrored_out(&mut self.mirror, out);
        crate::correlation::hep::feed(&mut self.correlator, frame, sequence, &mut out)
    }

    /// Moves time forward to `now`: calls and streams time out.
    pub fn tick(&mut self, now: Timestamp, out: &mut impl FnMut(Record)) {
        self.correlator
            .advance(now, &mut mirrored_out(&mut self.mirror, out));
    }

    /// Ends the pipeline: what every input's reassembly still holds is decoded (holes still
    /// open are skipped so what follows them is not lost), then every open call is closed as
    /// `closed_by` and reported.
    pub fn finish(&mut self, now: Timestamp, closed_by: ClosedBy, out: &mut impl FnMut(Record)) {
        for Input {
            dissector,
            time_check,
            ..
        } in &mut self.inputs
        {
            let mut feed = Feed {
                correlator: &mut self.correlator,
                time_check: time_check.as_ref(),
                out: &mut *out,
                hep_unusable: &mut self.hep_unusable,
                mirror: &mut self.mirror,
            };
            dissector.finish(now, &mut feed);
        }
        self.correlator
            .finish(closed_by, &mut mirrored_out(&mut self.mirror, out));
    }

    pub fn correlator(&self) -> &Correlator {
        &self.correlator
    }

    /// The decode counters of one input.
    pub fn dissect_stats(&self, input: InputId) -> DissectStats {
        self.inputs
            .get(input.0)
            .map(|i| i.dissector.stats())
            .unwrap_or_default()
    }

    /// Every input by name with the bytes its reassembly holds.
    pub fn bytes_held(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.inputs
            .iter()
            .map(|i| (i.name.as_str(), i.dissector.bytes_held()))
    }

    /// The losses of every input's decode path, summed by name
    /// ([`DissectStats::loss_counters`]): what `teledge_decode_errors_total` shows.
    pub fn loss_totals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let mut totals = std::collections::BTreeMap::new();
        for input in &self.inputs {
            for (kind, n) in input.dissector.stats().loss_counters() {
                *totals.entry(kind).or_default() += n;
            }
        }
        if self.hep_unusable > 0 {
            totals.insert("hep_unusable", self.hep_unusable);
        }
        totals
    }
}

/// One input of a [`LivePipeline`]: its decode state and the count of HEP found on the wire
/// that could not be used, used by one capture thread (and read by the ticker for its
/// counters).
#[derive(Debug)]
pub struct LiveInput {
    name: String,
    state: Mutex<LiveState>,
}

/// What a capture thread's input holds.
#[derive(Debug)]
struct LiveState {
    input: Input,
    hep_unusable: u64,
    /// RTP of flows no route names yet, held back a moment ([`MediaHold`]).
    hold: MediaHold,
    /// The pipeline's mirror ([`LivePipeline::set_mirror`]), if any.
    mirror: Option<Box<dyn Mirror>>,
}

/// The mirror of a [`LivePipeline`], shared by its capture threads, the HEP task and the
/// ticker: each takes its lock for what it mirrors.
#[derive(Debug, Clone)]
struct SharedMirror(Arc<Mutex<Box<dyn Mirror>>>);

impl SharedMirror {
    fn boxed(&self) -> Box<dyn Mirror> {
        Box::new(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Mirror>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Mirror for SharedMirror {
    fn mirror(&mut self, event: Mirrored<'_>) {
        self.lock().mirror(event);
    }

    fn own_frame(&self, hep: &HepFrame<'_>) -> bool {
        self.lock().own_frame(hep)
    }
}

/// Runs `f` with `out` told to the mirror first, and an [`RtcpSeen`] that mirrors the RTCP
/// of calls (when there is a mirror).
fn mirroring<R>(
    mirror: &mut Option<Box<dyn Mirror>>,
    out: &mut impl FnMut(Record),
    f: impl FnOnce(&mut dyn FnMut(Record), RtcpSeen<'_>) -> R,
) -> R {
    if mirror.is_none() {
        return f(out, None);
    }
    let mirror = std::cell::RefCell::new(mirror);
    f(
        &mut |record| {
            if let Some(m) = mirror.borrow_mut().as_mut() {
                m.mirror(Mirrored::Record(&record));
            }
            out(record)
        },
        Some(&mut |meta: &DatagramMeta, payload: &[u8], call_id: &str| {
            if let Some(m) = mirror.borrow_mut().as_mut() {
                m.mirror(Mirrored::Rtcp {
                    meta,
                    payload,
                    call_id,
                });
            }
        }),
    )
}

impl LiveInput {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pipeline of the daemon: the same decode and correlation as [`Pipeline`], for several
/// threads at once. Each capture thread decodes its own frames (its [`LiveInput`], one per
/// thread, is locked only by that thread and the ticker), then hands every event to a
/// [`ShardedCorrelator`]: SIP to its call's shard, RTP to its media endpoint's — no lock
/// that every packet takes. With one shard and one input it does what [`Pipeline`] does.
#[derive(Debug)]
pub struct LivePipeline {
    inputs: Mutex<Vec<Arc<LiveInput>>>,
    correlator: ShardedCorrelator,
    /// Set once by [`LivePipeline::set_mirror`] (taken after `inputs`, never before).
    mirror: Mutex<Option<SharedMirror>>,
    /// How long a capture thread holds RTP of a flow no route names yet.
    media_hold: std::time::Duration,
}

impl LivePipeline {
    /// A live pipeline whose capture threads hold RTP of flows no route names yet for up
    /// to `media_hold` of capture time (longer than the rings' block timeout: see
    /// [`MediaHold`]).
    pub fn new(correlator: ShardedCorrelator, media_hold: std::time::Duration) -> Self {
        LivePipeline {
            inputs: Mutex::new(Vec::new()),
            correlator,
            mirror: Mutex::new(None),
            media_hold,
        }
    }

    /// Sets the mirror told, as [`Pipeline::set_mirror`]'s is, about what passes through
    /// every input (those added already and those to come), the HEP task and the ticks.
    pub fn set_mirror(&self, mirror: Box<dyn Mirror>) {
        let shared = SharedMirror(Arc::new(Mutex::new(mirror)));
        let inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        *self.mirror.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared.clone());
        for input in inputs.iter() {
            input.state().mirror = Some(shared.boxed());
        }
    }

    /// The mirror, for a moment's use (the HEP task, a tick, the finish).
    fn mirror(&self) -> Option<Box<dyn Mirror>> {
        self.mirror
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(SharedMirror::boxed)
    }

    /// Adds an input (one capture thread's decode state), bounded by `limits`.
    pub fn add_input(
        &self,
        name: &str,
        limits: DissectLimits,
        time_check: Option<TimeCheck>,
    ) -> Arc<LiveInput> {
        let mut inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        let input = Arc::new(LiveInput {
            name: name.to_owned(),
            state: Mutex::new(LiveState {
                input: Input {
                    name: name.to_owned(),
                    dissector: Dissector::new(limits),
                    time_check,
                },
                hep_unusable: 0,
                hold: MediaHold::new(self.media_hold),
                mirror: self.mirror(),
            }),
        });
        inputs.push(Arc::clone(&input));
        input
    }

    /// Decodes one frame of `input` and correlates what it holds.
    pub fn frame(&self, input: &LiveInput, frame: &Frame<'_>, out: &mut impl FnMut(Record)) {
        let mut state = input.state();
        let LiveState {
            input:
                Input {
                    dissector,
                    time_check,
                    ..
                },
            hep_unusable,
            hold,
            mirror,
        } = &mut *state;
        let mut feed = Feed {
            correlator: &mut Routed {
                shards: &self.correlator,
                hold,
            },
            time_check: time_check.as_ref(),
            out,
            hep_unusable,
            mirror,
        };
        dissector.frame(frame, &mut feed);
    }

    /// Releases the RTP `input` held whose route has appeared or whose hold has passed by
    /// `now` (a capture thread calls it after every batch).
    pub fn release_held(&self, input: &LiveInput, now: Timestamp, out: &mut impl FnMut(Record)) {
        let mut state = input.state();
        let LiveState { hold, mirror, .. } = &mut *state;
        let mut routed = Routed {
            shards: &self.correlator,
            hold,
        };
        mirroring(mirror, out, |out, rtcp| {
            routed.release_with_rtcp(now, &mut &mut *out, rtcp)
        });
    }

    /// The hold counters of every input, summed.
    pub fn hold_counters(&self) -> HoldCounters {
        let mut sum = HoldCounters::default();
        for input in self.inputs() {
            let c = input.state().hold.counters();
            sum.held += c.held;
            sum.released_routed += c.released_routed;
            sum.released_unrouted += c.released_unrouted;
            sum.not_held_full += c.not_held_full;
        }
        sum
    }

    /// Correlates a HEP frame from the HEP listener (see [`Pipeline::hep`]).
    pub fn hep(
        &self,
        frame: &HepFrame<'_>,
        sequence: u64,
        out: &mut impl FnMut(Record),
    ) -> Result<Fed, FeedError> {
        let mut mirror = self.mirror();
        if matches!(frame.proto_type, ProtoType::Sip | ProtoType::RtcpJson) {
            if let Some(m) = mirror.as_mut() {
                m.mirror(Mirrored::Hep(frame));
            }
        }
        let mut out = mirrored_out(&mut mirror, out);
        crate::correlation::hep::feed(&mut &self.correlator, frame, sequence, &mut out)
    }

    /// Moves time forward to `now` in every shard.
    pub fn tick(&self, now: Timestamp, out: &mut impl FnMut(Record)) {
        let mut mirror = self.mirror();
        self.correlator
            .advance(now, &mut mirrored_out(&mut mirror, out));
    }

    /// Ends the pipeline as [`Pipeline::finish`] does: every input's reassembly first, then
    /// every shard's open calls.
    pub fn finish(&self, now: Timestamp, closed_by: ClosedBy, out: &mut impl FnMut(Record)) {
        for input in self.inputs() {
            let mut state = input.state();
            let LiveState {
                input:
                    Input {
                        dissector,
                        time_check,
                        ..
                    },
                hep_unusable,
                hold,
                mirror,
            } = &mut *state;
            let mut routed = Routed {
                shards: &self.correlator,
                hold,
            };
            let mut feed = Feed {
                correlator: &mut routed,
                time_check: time_check.as_ref(),
                out: &mut *out,
                hep_unusable,
                mirror,
            };
            dissector.finish(now, &mut feed);
            // The SIP still in the shards' reorder windows first: the RTP held for want of
            // a route finds the routes it teaches.
            self.correlator
                .flush_windows(&mut mirrored_out(&mut self.mirror(), &mut *out));
            mirroring(mirror, out, |out, rtcp| {
                routed.release_all_with_rtcp(&mut &mut *out, rtcp)
            });
        }
        let mut mirror = self.mirror();
        self.correlator
            .finish(closed_by, &mut mirrored_out(&mut mirror, out));
    }

    pub fn correlator(&self) -> &ShardedCorrelator {
        &self.correlator
    }

    fn inputs(&self) -> Vec<Arc<LiveInput>> {
        self.inputs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The decode counters of one input.
    pub fn dissect_stats(&self, input: &LiveInput) -> DissectStats {
        input.state().input.dissector.stats()
    }

    /// Every input name with the bytes its reassembly holds (inputs of one name — the
    /// capture threads of one interface — summed).
    pub fn bytes_held(&self) -> std::collections::BTreeMap<String, usize> {
        let mut held = std::collections::BTreeMap::new();
        for input in self.inputs() {
            *held.entry(input.name.clone()).or_default() +=
                input.state().input.dissector.bytes_held();
        }
        held
    }

    /// The losses of every input's decode path, summed by kind, as [`Pipeline::loss_totals`].
    pub fn loss_totals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let mut totals = std::collections::BTreeMap::new();
        let mut hep_unusable = 0;
        for input in self.inputs() {
            let state = input.state();
            for (kind, n) in state.input.dissector.stats().loss_counters() {
                *totals.entry(kind).or_default() += n;
            }
            hep_unusable += state.hep_unusable;
        }
        if hep_unusable > 0 {
            totals.insert("hep_unusable", hep_unusable);
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::correlation::calls::CallLimits;
    use crate::correlation::media::MediaLimits;
    use crate::decode::link::LinkType;

    /// An Ethernet/IPv4/TCP frame from 10.0.0.1:`port` to 192.0.2.1:5060.
    fn tcp_frame(port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [192, 0, 2, 1], 64)
            .tcp(port, 5060, seq, 65_535)
            .ack(1);
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    fn invite(call_id: &str) -> Vec<u8> {
        format!(
            "INVITE sip:bob@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK{call_id}\r\n\
             From: <sip:alice@10.0.0.1>;tag=a\r\nTo: <sip:bob@192.0.2.1>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn feed(pipeline: &mut Pipeline, input: InputId, number: u64, data: &[u8]) -> Vec<Record> {
        let frame = Frame {
            number,
            time: Timestamp::from_secs_nanos(1_000 + number as i64, 0),
            link: LinkType::Ethernet,
            data,
        };
        let mut records = Vec::new();
        pipeline.frame(input, &frame, &mut |r| records.push(r));
        records
    }

    fn calls(records: &[Record]) -> Vec<(&str, ClosedBy)> {
        records
            .iter()
            .filter_map(|r| match r {
                Record::Call(c) => Some((c.call_id.as_str(), c.closed_by)),
                _ => None,
            })
            .collect()
    }

    /// A HEPv3 frame from 10.0.0.1:5060 to 10.0.0.2:5080, time 1000 s, of `proto_type`.
    fn hep_frame(proto_type: u8, payload: &[u8], correlation_id: Option<&str>) -> Vec<u8> {
        let mut chunks = Vec::new();
        let mut chunk = |t: u16, body: &[u8]| {
            chunks.extend_from_slice(&0u16.to_be_bytes());
            chunks.extend_from_slice(&t.to_be_bytes());
            chunks.extend_from_slice(&((body.len() + 6) as u16).to_be_bytes());
            chunks.extend_from_slice(body);
        };
        chunk(1, &[2]);
        chunk(2, &[17]);
        chunk(3, &[10, 0, 0, 1]);
        chunk(4, &[10, 0, 0, 2]);
        chunk(7, &5060u16.to_be_bytes());
        chunk(8, &5080u16.to_be_bytes());
        chunk(9, &1_000u32.to_be_bytes());
        chunk(10, &0u32.to_be_bytes());
        chunk(11, &[proto_type]);
        if let Some(id) = correlation_id {
            chunk(0x11, id.as_bytes());
        }
        chunk(0x0f, payload);
        let mut out = b"HEP3".to_vec();
        out.extend_from_slice(&((chunks.len() + 6) as u16).to_be_bytes());
        out.extend_from_slice(&chunks);
        out
    }

    /// The daemon lost a call whose INVITE sat in TCP reassembly behind a hole at shutdown:
    /// `finish` must decode what every input still holds before it closes the calls.
    #[test]
    fn finish_decodes_tcp_data_held_behind_a_hole_on_every_input() {
        let mut pipeline = Pipeline::new(Correlator::new(
            CallLimits::default(),
            MediaLimits::default(),
        ));
        let limits = DissectLimits::default();
        let first = pipeline.add_input("eth0", limits, None);
        let second = pipeline.add_input("eth1", limits, None);
        for (input, port, call_id) in [(first, 5070, "held-1"), (second, 5071, "held-2")] {
            // The stream starts with a keep-alive; the next 40 bytes never arrive, so the
            // INVITE after them waits in the reassembly.
            assert!(feed(&mut pipeline, input, 1, &tcp_frame(port, 1000, b"\r\n\r\n")).is_empty());
            let held = tcp_frame(port, 1044, &invite(call_id));
            assert!(feed(&mut pipeline, input, 2, &held).is_empty());
        }
        assert_eq!(pipeline.correlator().calls().open_calls(), 0);
        assert!(pipeline.bytes_held().all(|(_, held)| held > 0));

        let mut records = Vec::new();
        pipeline.finish(
            Timestamp::from_secs_nanos(1_010, 0),
            ClosedBy::Shutdown,
            &mut |r| records.push(r),
        );
        let mut found = calls(&records);
        found.sort_by_key(|c| c.0);
        assert_eq!(
            found,
            [
                ("held-1", ClosedBy::Shutdown),
                ("held-2", ClosedBy::Shutdown)
            ]
        );
    }

    /// `teledge_decode_errors_total` is the sum over every input, not one input's count.
    #[test]
    fn loss_totals_sum_every_input() {
        let mut pipeline = Pipeline::new(Correlator::new(
            CallLimits::default(),
            MediaLimits::default(),
        ));
        let limits = DissectLimits::default();
        let first = pipeline.add_input("eth0", limits, None);
        let second = pipeline.add_input("eth1", limits, None);
        // Frames too short for their Ethernet header: one link error each.
        for n in 1..=3 {
            feed(&mut pipeline, first, n, &[0u8; 6]);
        }
        for n in 1..=2 {
            feed(&mut pipeline, second, n, &[0u8; 6]);
        }
        let per_input: Vec<u64> = [first, second]
            .iter()
            .map(|&i| pipeline.dissect_stats(i).errors["link"])
            .collect();
        assert_eq!(per_input, [3, 2]);
        assert_eq!(pipeline.loss_totals()["link"], 5);
    }

    /// A HEP frame as a capture sees it: Ethernet, IPv4, UDP to port 9060.
    fn hep_on_the_wire(hep: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 9], [10, 0, 0, 10], 64)
            .udp(40_000, 9060)
            .write(&mut data, hep)
            .unwrap();
        data
    }

    /// HEP found on the wire: its RTCP-JSON joins the call named by its correlation id, as
    /// HEP from the listener does (the daemon used to drop it).
    #[test]
    fn hep_rtcp_json_captured_on_the_wire_reaches_its_call() {
        let (mut pipeline, input) = Pipeline::single(
            Correlator::new(CallLimits::default(), MediaLimits::default()),
            DissectLimits::default(),
        );
        let mut records = Vec::new();
        let mut out = |r| records.push(r);
        for (number, (proto, payload, correlation)) in [
            (1u8, invite("wire-hep"), None),
            (
                5u8,
                br#"{"type":200,"ssrc":1234,"report_count":0}"#.to_vec(),
                Some("wire-hep"),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let data = hep_on_the_wire(&hep_frame(proto, &payload, correlation));
            let frame = Frame {
                number: number as u64 + 1,
                time: Timestamp::from_secs_nanos(1_000, 0),
                link: LinkType::Ethernet,
                data: &data,
            };
            pipeline.frame(input, &frame, &mut out);
        }
        let counters = pipeline.correlator().calls().counters();
        assert_eq!(pipeline.correlator().calls().open_calls(), 1);
        assert_eq!(counters.hep_rtcp_unmatched, 0, "{counters:?}");
        assert_eq!(counters.hep_rtcp_attached, 1, "{counters:?}");
    }

    /// HEP on the wire whose content cannot be used was dropped without a counter.
    #[test]
    fn unusable_hep_captured_on_the_wire_is_counted() {
        let (mut pipeline, input) = Pipeline::single(
            Correlator::new(CallLimits::default(), MediaLimits::default()),
            DissectLimits::default(),
        );
        let mut records = Vec::new();
        let mut out = |r| records.push(r);
        for (number, (proto, payload, correlation)) in [
            // RTCP-JSON without a correlation id, and RTCP-JSON that is not JSON.
            (5u8, br#"{"type":200,"ssrc":1}"#.to_vec(), None),
            (5u8, b"not json".to_vec(), Some("x")),
        ]
        .into_iter()
        .enumerate()
        {
            let data = hep_on_the_wire(&hep_frame(proto, &payload, correlation));
            let frame = Frame {
                number: number as u64 + 1,
                time: Timestamp::from_secs_nanos(1_000, 0),
                link: LinkType::Ethernet,
                data: &data,
            };
            pipeline.frame(input, &frame, &mut out);
        }
        assert_eq!(pipeline.loss_totals().get("hep_unusable"), Some(&2));
    }

    /// A mirror that writes down what it is handed.
    #[derive(Debug, Clone, Default)]
    struct Recording(Arc<Mutex<Vec<String>>>);

    impl Mirror for Recording {
        fn mirror(&mut self, event: Mirrored<'_>) {
            let seen = match event {
                Mirrored::Sip { meta, message } => {
                    format!("sip {} {} {}", message.call_id, meta.src, meta.dst)
                }
                Mirrored::Rtcp {
                    meta,
                    payload,
                    call_id,
                } => format!("rtcp {call_id} {} {} {}", meta.src, meta.dst, payload.len()),
                Mirrored::Hep(hep) => format!("hep {:?}", hep.proto_type),
                Mirrored::Record(r) => match r {
                    Record::Call(c) => format!("call {} {:?}", c.call_id, c.closed_by),
                    other => format!("record {}", other.kind()),
                },
            };
            self.0.lock().unwrap().push(seen);
        }
    }

    /// Ethernet/IPv4/UDP from `src` to `dst`.
    fn udp_frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.0, dst.0, 64)
            .udp(src.1, dst.1);
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    /// One call: INVITE and 200 with SDP, RTP both ways, an RTCP report to each RTCP port,
    /// a HEP frame on the wire; then the call is left open.
    fn mirrored_call_frames() -> Vec<Vec<u8>> {
        let sdp = |ip: &str| {
            format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n")
        };
        let message = |first: &str, to_tag: &str, body: &str| {
            format!(
                "{first}\r\nVia: SIP/2.0/UDP 10.1.0.1:5060;branch=z9hG4bKm1\r\nFrom: <sip:a@x>;tag=a\r\n\
                 To: <sip:b@x>{to_tag}\r\nCall-ID: mirrored@x\r\nCSeq: 1 INVITE\r\n\
                 Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        let (caller, callee) = ([10, 1, 0, 1], [10, 2, 0, 1]);
        let mut frames = vec![
            udp_frame(
                (caller, 5060),
                (callee, 5060),
                &message("INVITE sip:b@x SIP/2.0", "", &sdp("10.1.0.1")),
            ),
            udp_frame(
                (callee, 5060),
                (caller, 5060),
                &message("SIP/2.0 200 OK", ";tag=b", &sdp("10.2.0.1")),
            ),
        ];
        for seq in 0..5u16 {
            let mut rtp = vec![0x80, 8];
            rtp.extend_from_slice(&seq.to_be_bytes());
            rtp.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            rtp.extend_from_slice(&7u32.to_be_bytes());
            rtp.extend_from_slice(&[0xD5; 160]);
            frames.push(udp_frame((caller, 4000), (callee, 4000), &rtp));
        }
        // A sender report of SSRC 7 (no report blocks), to the callee's RTCP port.
        let mut sr = vec![0x80, 200, 0, 6];
        sr.extend_from_slice(&7u32.to_be_bytes());
        sr.extend_from_slice(&[0; 20]);
        frames.push(udp_frame((caller, 4001), (callee, 4001), &sr));
        frames.push(udp_frame(
            ([10, 0, 0, 9], 40_000),
            ([10, 0, 0, 10], 9060),
            &hep_frame(
                5,
                br#"{"type":200,"ssrc":1234,"report_count":0}"#,
                Some("mirrored@x"),
            ),
        ));
        frames
    }

    /// The daemon's live pipeline mirrors what replay's does: the same SIP, RTCP of the
    /// call, HEP and records, in the same order, with two shards (the call in one of them).
    #[test]
    fn the_live_pipeline_mirrors_what_the_replay_pipeline_mirrors() {
        let frames = mirrored_call_frames();
        let limits = DissectLimits::default();
        let listener_hep = hep_frame(1, &invite("from-listener"), None);
        let listener_hep = crate::decode::hep::parse(&listener_hep).unwrap();

        let replay_seen = Recording::default();
        let (mut replay, input) = Pipeline::single(
            Correlator::new(CallLimits::default(), MediaLimits::default()),
            limits,
        );
        replay.set_mirror(Box::new(replay_seen.clone()));
        let mut replay_records = Vec::new();
        for (i, data) in frames.iter().enumerate() {
            let frame = Frame {
                number: i as u64 + 1,
                time: Timestamp::from_secs_nanos(1_000, i as u32 * 20_000_000),
                link: LinkType::Ethernet,
                data,
            };
            replay.frame(input, &frame, &mut |r| replay_records.push(r));
        }
        replay
            .hep(&listener_hep, 1, &mut |r| replay_records.push(r))
            .unwrap();
        replay.tick(Timestamp::from_secs_nanos(1_001, 0), &mut |r| {
            replay_records.push(r)
        });
        replay.finish(
            Timestamp::from_secs_nanos(1_002, 0),
            ClosedBy::Shutdown,
            &mut |r| replay_records.push(r),
        );

        let live_seen = Recording::default();
        let live = LivePipeline::new(
            ShardedCorrelator::new(2, CallLimits::default(), MediaLimits::default()),
            std::time::Duration::from_millis(250),
        );
        // The mirror is set after the input exists, as may happen in the daemon.
        let input = live.add_input("eth0", limits, None);
        live.set_mirror(Box::new(live_seen.clone()));
        let mut live_records = Vec::new();
        for (i, data) in frames.iter().enumerate() {
            let frame = Frame {
                number: i as u64 + 1,
                time: Timestamp::from_secs_nanos(1_000, i as u32 * 20_000_000),
                link: LinkType::Ethernet,
                data,
            };
            live.frame(&input, &frame, &mut |r| live_records.push(r));
            live.release_held(&input, frame.time, &mut |r| live_records.push(r));
        }
        live.hep(&listener_hep, 1, &mut |r| live_records.push(r))
            .unwrap();
        live.tick(Timestamp::from_secs_nanos(1_001, 0), &mut |r| {
            live_records.push(r)
        });
        live.finish(
            Timestamp::from_secs_nanos(1_002, 0),
            ClosedBy::Shutdown,
            &mut |r| live_records.push(r),
        );

        let replay_seen = replay_seen.0.lock().unwrap().clone();
        let live_seen = live_seen.0.lock().unwrap().clone();
        for expected in [
            "sip mirrored@x 10.1.0.1:5060 10.2.0.1:5060",
            "rtcp mirrored@x 10.1.0.1:4001 10.2.0.1:4001 28",
            "hep RtcpJson",
            "hep Sip",
            "call mirrored@x Shutdown",
            "call from-listener Shutdown",
        ] {
            assert!(
                replay_seen.iter().any(|s| s == expected),
                "{expected}: {replay_seen:?}"
            );
        }
        // What is mirrored as it passes comes in the same order; what the shutdown reports
        // comes in the order of its kind (one correlator: first seen; sharded: by first
        // message, whichever shard each call's keyed placement chose), so it is compared
        // as a set.
        let (live_passing, live_shutdown) = split_shutdown(&live_seen);
        let (replay_passing, replay_shutdown) = split_shutdown(&replay_seen);
        assert_eq!(live_passing, replay_passing);
        assert_eq!(live_shutdown, replay_shutdown);
        assert_eq!(live_records.len(), replay_records.len());
        assert_eq!(
            replay_seen
                .iter()
                .filter(|s| s.starts_with("call ") || s.starts_with("record "))
                .count(),
            replay_records.len()
        );
    }

    /// The events before the first one a shutdown reports, and those it reports, sorted.
    fn split_shutdown(seen: &[String]) -> (Vec<String>, Vec<String>) {
        let at = seen
            .iter()
            .position(|s| s.ends_with(" Shutdown"))
            .unwrap_or(seen.len());
        let mut shutdown = seen[at..].to_vec();
        shutdown.sort();
        (seen[..at].to_vec(), shutdown)
    }
}
