//! Call tracking: SIP messages in, one [`CallRecord`] per call attempt out, made the moment the
//! call ends.
//!
//! Dialogs are keyed by Call-ID. The tracker is deterministic: it is driven only by the
//! messages and their capture times (`advance` moves time forward), so replay, live capture
//! and tests behave alike without a clock.
//!
//! It expects messages in capture order: the record is made at the message that ends the
//! call and is final, so a BYE seen before the 200 it follows, or a 487 before its CANCEL,
//! would give another outcome and other times. With several capture threads, [`super::sharded`] puts each
//! call's SIP back in capture order within a window before it reaches the tracker (its
//! module doc says why that rather than an order-tolerant state machine). On its own the
//! tracker tolerates only what a proxy's two hops make of the start of a call: an INVITE of
//! the call's transaction captured before the one it was opened with is adopted, and the
//! first provisional, ringing and answer times are the earliest captured.
//!
//! What it understands:
//! - retransmissions: a request with a transaction (method, CSeq, Via branch) already seen, or
//!   a response with a (status, CSeq, Via branch, To-tag) already seen, is counted and
//!   otherwise ignored;
//! - auth challenges: 401/407 (and 422) followed by a new INVITE (higher CSeq, no To-tag) in
//!   the same Call-ID continues the same attempt; a challenge not followed up within
//!   `setup_timeout` ends it as rejected;
//! - provisional responses, ringing (180/183) and early media (18x with SDP);
//! - CANCEL before answer (abandoned), BYE from either side (who hung up), re-INVITE/UPDATE
//!   holds (sendonly/inactive/`c=0.0.0.0`) and resumes;
//! - forking: the distinct To-tags of the responses are counted; the answered one is the
//!   dialog (a BYE in the dialog of another fork's 2xx — same From-tag, another To-tag —,
//!   which the caller acknowledges and hangs up, ends that dialog, not the call). The
//!   caller's INVITE transaction is the INVITE of its CSeq captured first (its top Via
//!   branch; one that arrives after a copy captured later — the hops of a proxy on the
//!   tapped box, delivered by two capture threads — is adopted, with the addresses, times,
//!   parties and offer the call takes from its INVITE); the same INVITE seen on other
//!   branches is a proxy's forks. First provisional, ringing and answer times are the
//!   earliest captured, whichever hop's arrived first. A failure on a
//!   fork's branch does not end the attempt (another fork may answer); a failure on any other
//!   branch does; a 2xx on any branch answers it;
//! - calls that never end: a setup that gets no final answer within `setup_timeout` is closed as
//!   timed out; a connected call with a session timer (RFC 4028: `Session-Expires` in the 2xx
//!   to its INVITE or to a refresh) that stays silent for its session interval plus `linger`
//!   is closed (its refreshes stopped, so both sides have torn it down: its BYE was lost or
//!   not captured); any connected call longer than `max_call_duration` is closed (both still
//!   answered, marked incomplete, `closed_by: timeout`);
//! - dialogs that started before the capture (a restart, a capture file that starts mid-call):
//!   the first message of an INVITE dialog whose INVITE was not seen (re-INVITE, UPDATE, INFO,
//!   PRACK, ACK, BYE, CANCEL, a response whose CSeq method is INVITE, BYE or CANCEL) opens a
//!   partial call (`started_before_capture`). Only those methods: a stray response to
//!   REGISTER or OPTIONS never makes a call. What such a record knows is what was seen: the
//!   answer time only when the provisional responses of the first INVITE were seen, the end,
//!   who hung up when the roles can be told (`roles_known`), media from later SDP. At most
//!   `max_partial_calls_per_minute` such calls are opened per minute (the rest counted), so
//!   stray in-dialog requests with made-up Call-IDs cannot each become a record;
//! - REGISTER and other out-of-dialog transactions are counted, not reported as calls.
//!
//! # When a call ends, and what comes after
//!
//! A call ends, and its record is made at once, with the message that ends it:
//! - the BYE (from either side), or the 2xx to a BYE whose request was not seen;
//! - a final failure response (≥ 300) on the caller's INVITE transaction, except 401, 407 and
//!   422, after which the same attempt may go on with a new INVITE (those end when no new
//!   INVITE follows within `setup_timeout`, when `advance` passes that time);
//! - after a CANCEL, the final response to the INVITE (487: abandoned; a 2xx that crossed the
//!   CANCEL answers the call instead); without one within `linger`, the CANCEL itself;
//! - a timeout (above), found by `advance`; eviction at the table's bound (below).
//!
//! The record is final: nothing is added to it later. The ended dialog is remembered
//! (a *tombstone*, keyed by a hash of its Call-ID) for `linger` (default 32 s, SIP's Timer B),
//! so that what still arrives — the 200 of the BYE, the ACK of a failure, retransmissions, a
//! BYE after a failure response — is counted (`late_messages`) and neither changes the record
//! nor opens a new call. Only a new INVITE transaction (no To-tag, a CSeq or Via branch not
//! seen) starts a new attempt in the same Call-ID. The media tracker keeps the ended call's
//! media endpoints for the same time, so RTP and RTCP in flight after the BYE are counted, not
//! turned into orphan streams. Messages after a final failure while the attempt waits for a
//! new INVITE (a 401/407) are counted in `ignored_after_final` and change nothing either.
//!
//! # What a crash can lose
//!
//! The tracker makes the record at the moment the last message of the call is seen (the BYE,
//! the final response), or when `advance` passes a timeout; the correlator then holds it for
//! `record_grace` (default 1 s, media in flight; see [`super`]), released by the next
//! message or the daemon's tick (250 ms). From then on only the way to the disk remains: the
//! bounded record queue to the spool writer and the spool's group commit (`flush_interval`,
//! default 50 ms). A SIGKILL therefore loses no call whose ending message was seen more than
//! grace + tick + flush interval before it; calls still open are lost to a SIGKILL (SIGTERM reports
//! them as partial records, `closed_by: shutdown`), and a call whose end comes after a restart
//! is reported as a partial record (`started_before_capture`).
//!
//! # Bounds
//!
//! Every text field held per call is capped ([`MAX_TEXT_BYTES`], tags [`MAX_TAG_BYTES`], SDP
//! [`MAX_SDP_MEDIA`] media lines of [`MAX_SDP_CODECS`] codecs; truncations are counted), and
//! the bytes the table holds are accounted ([`CallTracker::held_bytes`]: each allocation as
//! the allocator takes it, the map's and the eviction queue's slots with their growth slack,
//! and the queue's copies of ended calls' keys until they are pruned). The table holds at
//! most `max_calls` calls and `max_bytes` bytes: at the bound the oldest call still in setup
//! (no answer) or joined mid-call is evicted — its record made with `closed_by: evicted`,
//! counted (`evicted_in_setup`) — so junk INVITEs or stray in-dialog requests cannot hold the
//! table against real calls; only when every call is an answered one seen from its INVITE is
//! a new one refused (counted). Tombstones are bounded by `max_ended` (the oldest forgotten
//! first, counted).

use std::collections::VecDeque;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::Duration;

use super::footprint::{heap, table_share};
use super::hasher::{fingerprint, KeyedMap, KeyedSet};
use crate::decode::hep::{ReportBlock, RtcpJson};
use crate::decode::sdp::{self, Codec, MediaSection, SdpSummary};
use crate::decode::sip::{Method, NameAddr, SipMessage, StartLine};
use crate::dissect::{MessageMeta, Transport};
use crate::record::{
    text as record_text, CallRecord, ClosedBy, Hangup, HepRtcp, Outcome, Party, Reason, State,
    UserAgents, CALL_SCHEMA,
};
use crate::time::{round_secs, Timestamp};

/// A side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Caller,
    Callee,
}

/// Timeouts and bounds of the call table.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Calls tracked at once.
    pub max_calls: usize,
    /// Bytes the calls may hold (as [`CallTracker::held_bytes`] accounts them).
    pub max_bytes: usize,
    /// A call without a final answer and without any message for this long is timed out.
    pub setup_timeout: Duration,
    /// A connected call without BYE is closed after this long.
    pub max_call_duration: Duration,
    /// How long an ended dialog (and its media endpoints) is remembered, to absorb late
    /// retransmissions and media in flight.
    pub linger: Duration,
    /// How long a call's record waits after the call ended for RTP and RTCP still in flight
    /// (the other side keeps sending until it has processed the BYE: a one-way delay, a few
    /// 20 ms packets; a phone's last RTCP report), which is measured into the call's streams
    /// as TShark counts it. Default 1 s, at most [`MAX_RECORD_GRACE`]: every record reaches
    /// the collector that much after its call ended, and it is part of the window a crash can
    /// lose (README). SIP after the end is absorbed by the dialog's tombstone whatever this is.
    pub record_grace: Duration,
    /// Ended dialogs remembered at once.
    pub max_ended: usize,
    /// Calls opened mid-dialog (`started_before_capture`) per minute of capture time; beyond
    /// it such messages are counted (`partial_calls_refused`), so stray in-dialog requests
    /// with made-up Call-IDs cannot turn into a record each. A restart mid-busy-hour opens
    /// about as many as there are calls up, spread over their remaining durations.
    pub max_partial_calls_per_minute: usize,
    /// Ended calls' records held in their grace at once (`[correlation] grace_records`);
    /// beyond it the oldest record is made at once (counted, nothing lost).
    pub max_grace_records: usize,
    /// Bytes of those records, as [`crate::record::held_bytes`] weighs them (`[correlation]
    /// grace_bytes`); beyond it the oldest record is made at once (counted).
    pub max_grace_bytes: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            max_calls: 100_000,
            max_bytes: 128 << 20,
            setup_timeout: Duration::from_secs(300),
            max_call_duration: Duration::from_secs(4 * 3600),
            linger: Duration::from_secs(32),
            record_grace: Duration::from_secs(1),
            max_ended: 100_000,
            max_partial_calls_per_minute: 1000,
            max_grace_records: 10_000,
            max_grace_bytes: 16 << 20,
        }
    }
}

/// Longest `record_grace` accepted (configuration `correlation.record_grace_ms`, `replay
/// --record-grace-ms`): media in flight after a BYE arrives within a one-way delay, so a
/// longer wait only delays every record and widens what a crash can lose.
pub const MAX_RECORD_GRACE: Duration = Duration::from_secs(10);

/// Counters of the tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounters {
    pub calls: u64,
    /// Calls opened by a message of a dialog whose INVITE was not seen (in `calls` too).
    pub started_before_capture: u64,
    /// REGISTER transactions (distinct Call-ID and CSeq).
    pub registrations: u64,
    /// Other out-of-dialog transactions (OPTIONS, MESSAGE, SUBSCRIBE, ...).
    pub other_transactions: u64,
    /// Messages of unknown dialogs that are not INVITE dialogs (NOTIFY, REFER, ...).
    pub orphan_messages: u64,
    /// Messages that would have opened a call mid-dialog beyond
    /// `max_partial_calls_per_minute`.
    pub partial_calls_refused: u64,
    /// Messages of a dialog after its record was made (or after its final failure): the
    /// 200 of a BYE, ACKs, retransmissions, a BYE after a failure. Counted, not applied.
    pub late_messages: u64,
    /// Messages that came after a call's final failure while it waited for a new INVITE (a
    /// BYE, a CANCEL, a late provisional or 2xx): counted in the call's `messages`, not
    /// applied.
    pub ignored_after_final: u64,
    /// Ended dialogs forgotten before their linger passed, at `max_ended`.
    pub ended_forgotten: u64,
    /// Calls in setup (or joined mid-call) evicted at the table's bound (records with
    /// `closed_by: evicted`).
    pub evicted_in_setup: u64,
    /// New calls refused at the bound because every call held was answered.
    pub dropped_at_capacity: u64,
    /// Text fields, tags and SDP lists cut to their caps.
    pub fields_truncated: u64,
    /// HEP RTCP reports (type 5) attached to a tracked call.
    pub hep_rtcp_attached: u64,
    /// HEP RTCP reports whose correlation id names no tracked call.
    pub hep_rtcp_unmatched: u64,
    /// HEP RTCP reports for a call whose record was already made (within its linger).
    pub hep_rtcp_after_end: u64,
    /// HEP RTCP entries not kept because the call already had [`MAX_HEP_RTCP_PER_CALL`].
    pub hep_rtcp_dropped: u64,
    /// Records made before their `record_grace` passed because too many ended calls were
    /// waiting (a flood of short calls): nothing lost, trailing media not waited for.
    pub records_grace_cut_short: u64,
    /// The same because the records waiting held their byte bound (large records).
    pub records_grace_cut_short_bytes: u64,
    /// Call records made with a counter saturated at 2^32 − 1 (their `saturated` names it).
    pub calls_with_saturated_counters: u64,
}

impl CallCounters {
    /// Adds another tracker's counters (the shards of a sharded correlator). Every field is
    /// named, so a new counter cannot be left out of the sum.
    pub fn add(&mut self, other: &Self) {
        let CallCounters {
            calls,
            started_before_capture,
            registrations,
            other_transactions,
            orphan_messages,
            partial_calls_refused,
            late_messages,
            ignored_after_final,
            ended_forgotten,
            evicted_in_setup,
            dropped_at_capacity,
            fields_truncated,
            hep_rtcp_attached,
            hep_rtcp_unmatched,
            hep_rtcp_after_end,
            hep_rtcp_dropped,
            records_grace_cut_short,
            records_grace_cut_short_bytes,
            calls_with_saturated_counters,
        } = *other;
        self.calls += calls;
        self.started_before_capture += started_before_capture;
        self.registrations += registrations;
        self.other_transactions += other_transactions;
        self.orphan_messages += orphan_messages;
        self.partial_calls_refused += partial_calls_refused;
        self.late_messages += late_messages;
        self.ignored_after_final += ignored_after_final;
        self.ended_forgotten += ended_forgotten;
        self.evicted_in_setup += evicted_in_setup;
        self.dropped_at_capacity += dropped_at_capacity;
        self.fields_truncated += fields_truncated;
        self.hep_rtcp_attached += hep_rtcp_attached;
        self.hep_rtcp_unmatched += hep_rtcp_unmatched;
        self.hep_rtcp_after_end += hep_rtcp_after_end;
        self.hep_rtcp_dropped += hep_rtcp_dropped;
        self.records_grace_cut_short += records_grace_cut_short;
        self.records_grace_cut_short_bytes += records_grace_cut_short_bytes;
        self.calls_with_saturated_counters += calls_with_saturated_counters;
    }
}

/// Most transactions remembered per call for retransmission detection.
const MAX_SEEN_PER_CALL: usize = 128;
/// Most HEP RTCP entries (reporter and reported SSRC pairs) kept per call.
pub const MAX_HEP_RTCP_PER_CALL: usize = 16;
/// Most To-tags remembered per call.
const MAX_FORKS: usize = 16;
/// Most out-of-dialog transactions remembered for de-duplication before the set is reset.
const MAX_OUT_OF_DIALOG_SEEN: usize = 100_000;
/// Longest text kept from a header (URIs, names, user agents, reasons, Call-IDs), in bytes.
pub const MAX_TEXT_BYTES: usize = 256;
/// Longest tag or Via branch kept, in bytes.
pub const MAX_TAG_BYTES: usize = 128;
/// Most media lines kept of an SDP.
pub const MAX_SDP_MEDIA: usize = 4;
/// Most codecs kept per media line.
pub const MAX_SDP_CODECS: usize = 16;
/// Longest codec name kept (`telephone-event` is 15).
pub const MAX_CODEC_NAME_BYTES: usize = 32;
/// Most INVITE transactions of an ended attempt remembered in its tombstone.
const MAX_ENDED_INVITES: usize = 4;

/// The Call-ID as the tables key it: cut to [`MAX_TEXT_BYTES`] (on a character boundary).
/// The media tracker uses the same key.
pub fn call_key(call_id: &str) -> &str {
    cut(call_id, MAX_TEXT_BYTES).0
}

fn cut(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// An SDP summary cut to the caps a call keeps (media lines, codecs, names); the media
/// tracker learns endpoints from the same cut.
/// Borrowed when it is within the caps already (almost always: no copy is made then).
pub fn capped_sdp(sdp: &SdpSummary) -> std::borrow::Cow<'_, SdpSummary> {
    let within_caps = sdp.media.len() <= MAX_SDP_MEDIA
        && sdp.media.iter().all(|m| {
            m.codecs.len() <= MAX_SDP_CODECS
                && m.media.len() <= MAX_TAG_BYTES
                && m.protocol.len() <= MAX_TAG_BYTES
                && m.address.as_ref().is_none_or(|a| a.len() <= MAX_TAG_BYTES)
                && m.codecs.iter().all(|c| {
                    c.name
                        .as_ref()
                        .is_none_or(|n| n.len() <= MAX_CODEC_NAME_BYTES)
                })
        });
    if within_caps {
        return std::borrow::Cow::Borrowed(sdp);
    }
    let mut ignored = 0;
    std::borrow::Cow::Owned(
        Capper {
            truncated: &mut ignored,
        }
        .sdp(sdp),
    )
}

/// Copies header text into the call under its cap, counting cuts.
struct Capper<'c> {
    truncated: &'c mut u64,
}

impl Capper<'_> {
    fn text(&mut self, s: &str) -> String {
        self.cap(s, MAX_TEXT_BYTES)
    }

    fn tag(&mut self, s: &str) -> String {
        self.cap(s, MAX_TAG_BYTES)
    }

    fn cap(&mut self, s: &str, max: usize) -> String {
        let (kept, cut_off) = cut(s, max);
        if cut_off {
            *self.truncated += 1;
        }
        kept.to_owned()
    }

    fn party(&mut self, addr: &NameAddr<'_>) -> Party {
        Party {
            user: addr.user.map(|s| self.text(s)),
            display_name: addr.display_name.map(|s| self.text(s)),
            uri: Some(self.text(addr.uri)),
        }
    }

    fn sdp(&mut self, sdp: &SdpSummary) -> SdpSummary {
        if sdp.media.len() > MAX_SDP_MEDIA {
            *self.truncated += 1;
        }
        let media = sdp
            .media
            .iter()
            .take(MAX_SDP_MEDIA)
            .map(|m| {
                if m.codecs.len() > MAX_SDP_CODECS {
                    *self.truncated += 1;
                }
                MediaSection {
                    media: self.tag(&m.media),
                    address: m.address.as_deref().map(|a| self.tag(a)),
                    port: m.port,
                    protocol: self.tag(&m.protocol),
                    rtcp_port: m.rtcp_port,
                    rtcp_mux: m.rtcp_mux,
                    direction: m.direction,
                    codecs: m
                        .codecs
                        .iter()
                        .take(MAX_SDP_CODECS)
                        .map(|c| Codec {
                            payload_type: c.payload_type,
                            name: c.name.as_deref().map(|n| self.cap(n, MAX_CODEC_NAME_BYTES)),
                            clock_rate: c.clock_rate,
                        })
                        .collect(),
                }
            })
            .collect();
        SdpSummary { media }
    }
}

/// The SDP a call keeps (cut to the caps): the first offer and answer.
#[derive(Debug, Clone, Default)]
struct CallMedia {
    offer: Option<SdpSummary>,
    answer: Option<SdpSummary>,
    renegotiations: u32,
}

/// An ended dialog, remembered for `linger`.
#[derive(Debug)]
struct Tombstone {
    ended: Timestamp,
    /// Hashes of the ended attempt's INVITE transactions (CSeq, Via branch).
    invites: Vec<u64>,
}

#[derive(Debug)]
struct Call {
    call_id: String,
    /// Creation order, for eviction.
    seq: u64,
    linked_call_id: Option<String>,
    caller: Party,
    callee: Party,
    /// Boxed, as the other parts most calls lack: a call's state is kept for up to
    /// `max_calls` calls, and each inline `Option<Party>` costs 72 bytes present or not.
    asserted_identity: Option<Box<Party>>,
    diverted_from: Option<Box<Party>>,
    caller_tag: Option<String>,
    transport: Transport,
    caller_address: SocketAddr,
    callee_address: SocketAddr,
    /// CSeq of the current initial INVITE; `None` when it was never seen (a dialog joined
    /// after its INVITE).
    invite_cseq: Option<u32>,
    /// Top Via branch of the first INVITE seen with `invite_cseq`: the caller's transaction.
    invite_branch: Option<String>,
    /// Top Via branches of other INVITEs with `invite_cseq`: a proxy's forks.
    fork_branches: Vec<String>,
    /// Hashes of the initial INVITE transactions seen (for the tombstone).
    invites: Vec<u64>,
    invite_time: Option<Timestamp>,
    first_message: Timestamp,
    started_before_capture: bool,
    roles_known: bool,
    /// A dialog joined mid-call showed it was confirmed (re-INVITE, 2xx, BYE, UPDATE, INFO)
    /// without its answer being seen.
    answered_before_capture: bool,
    first_provisional: Option<Timestamp>,
    ringing: Option<Timestamp>,
    answer: Option<Timestamp>,
    cancelled: Option<Timestamp>,
    bye: Option<(Timestamp, Hangup)>,
    final_response: Option<(u16, String, Timestamp)>,
    last_message: Timestamp,
    reason: Option<Reason>,
    user_agents: UserAgents,
    messages: u32,
    retransmissions: u32,
    auth_challenges: u32,
    to_tags: Vec<String>,
    /// The dialogs of the 2xx to the initial INVITE (boxed: most calls are never answered
    /// by more than one, and a call's state is what a flood of INVITEs costs).
    answered: Option<Box<AnsweredDialogs>>,
    early_media: bool,
    hold_since: Option<Timestamp>,
    hold_count: u32,
    hold_total: f64,
    /// The session interval (RFC 4028) the last 2xx to an INVITE or UPDATE set, in seconds.
    session_interval: Option<u32>,
    media: CallMedia,
    seen: KeyedSet<u64>,
    hep_rtcp: Vec<HepRtcp>,
    /// Why and when the record was (or will be) made.
    closed: Option<(ClosedBy, Timestamp)>,
}

/// The call table.
#[derive(Debug)]
pub struct CallTracker {
    limits: CallLimits,
    /// Boxed: a table grows by doubling, so at any time up to half its slots are empty,
    /// and a slot holding a whole call (about 850 bytes) would cost that much empty.
    calls: KeyedMap<String, Box<Call>>,
    /// Calls in creation order (lazily pruned), to find the oldest one in setup.
    order: VecDeque<(u64, String)>,
    /// What `order`'s entries hold, those of ended calls included until they are pruned.
    order_bytes: usize,
    next_seq: u64,
    /// What the calls and their map entries hold.
    held_bytes: usize,
    ended: KeyedMap<u64, Tombstone>,
    ended_order: VecDeque<(Timestamp, u64)>,
    out_of_dialog_seen: KeyedSet<u64>,
    /// Start of the current minute of partial calls, and how many were opened in it.
    partial_window: (Timestamp, usize),
    counters: CallCounters,
    last_sweep: Timestamp,
}

/// What a message did to the table.
enum Applied {
    /// The message's call (the key of its Call-ID) may have changed.
    Call,
    Nothing,
}

impl CallTracker {
    pub fn new(limits: CallLimits) -> Self {
        CallTracker {
            limits,
            calls: KeyedMap::default(),
            order: VecDeque::new(),
            order_bytes: 0,
            next_seq: 0,
            held_bytes: 0,
            ended: KeyedMap::default(),
            ended_order: VecDeque::new(),
            out_of_dialog_seen: KeyedSet::default(),
            partial_window: (Timestamp::default(), 0),
            counters: CallCounters::default(),
            last_sweep: Timestamp::default(),
        }
    }

    pub fn counters(&self) -> CallCounters {
        self.counters
    }

    /// Calls currently tracked.
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    /// The calls open now, as the live status view shows them (see
    /// [`super::Correlator::active_calls`]); media is filled in by the correlator.
    pub fn active(&self) -> impl Iterator<Item = super::ActiveCall> + '_ {
        self.calls
            .values()
            .filter(|c| c.closed.is_none())
            .map(|c| super::ActiveCall {
                call_id: c.call_id.clone(),
                caller: c.caller.clone(),
                callee: c.callee.clone(),
                caller_address: c.caller_address,
                callee_address: c.callee_address,
                state: c.state(),
                started: c.invite_time.unwrap_or(c.first_message),
                answered: c.answer,
                started_before_capture: c.started_before_capture,
                caller_to_callee: Vec::new(),
                callee_to_caller: Vec::new(),
            })
    }

    /// Whether the call with this Call-ID is open (tracked and not ended): live listen may
    /// listen to it.
    pub fn is_open(&self, call_id: &str) -> bool {
        self.calls.contains_key(call_key(call_id))
    }

    /// The keys of the open calls (live listen finds a call by its pseudonym among them).
    pub fn open_call_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.calls.keys().map(String::as_str)
    }

    /// What service classification reads of an open call: the called number and the
    /// caller's and callee's signalling addresses.
    pub fn open_call_facts(&self, call_id: &str) -> Option<(Option<String>, String, String)> {
        let call = self.calls.get(call_key(call_id))?;
        Some((
            call.callee.user.clone(),
            record_text::socket_addr(call.caller_address),
            record_text::socket_addr(call.callee_address),
        ))
    }

    /// Ended dialogs remembered (tombstones).
    pub fn ended_dialogs(&self) -> usize {
        self.ended.len()
    }

    /// Bytes held by the open calls and the tombstones, as accounted: every string's and
    /// list's capacity plus the fixed size of each entry. An estimate of the heap the table
    /// uses, not counting the allocator's own overhead.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes + self.order_bytes + self.ended.len() * TOMBSTONE_BYTES
    }

    /// Handles one SIP message; records of calls that this message (or its time) ended go
    /// to `out`.
    /// `sdp` is the message's SDP, summarised once by the caller (media correlation needs it
    /// too).
    pub fn message(
        &mut self,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        sdp: Option<&SdpSummary>,
        out: &mut impl FnMut(CallRecord),
    ) {
        // The message is applied before time advances: a message of a call is proof the call
        // is alive, even when the capture's clock jumped past a timeout since the last one.
        if let Applied::Call = self.apply(meta, msg, sdp, out) {
            let key = call_key(msg.call_id);
            let ended = self.calls.get(key).and_then(|c| c.ended());
            if let Some(by) = ended {
                self.end(key, by, meta.time, out);
            }
        }
        self.advance(meta.time, out);
    }

    /// Which side of a tracked call sent this message; `None` when the call is not tracked.
    pub fn side_of(&self, msg: &SipMessage<'_>) -> Option<Side> {
        let call = self.calls.get(call_key(msg.call_id))?;
        let from_caller = msg.from.tag.is_some()
            && msg.from.tag.map(|t| cut(t, MAX_TAG_BYTES).0) == call.caller_tag.as_deref();
        let is_request = msg.method().is_some();
        Some(if is_request == from_caller {
            Side::Caller
        } else {
            Side::Callee
        })
    }

    fn apply(
        &mut self,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        sdp: Option<&SdpSummary>,
        out: &mut impl FnMut(CallRecord),
    ) -> Applied {
        let key = call_key(msg.call_id);
        let is_initial_invite = msg.method() == Some(Method::Invite) && msg.to.tag.is_none();
        if let Some(call) = self.calls.get_mut(key) {
            let before = call.held_bytes();
            let mut capper = Capper {
                truncated: &mut self.counters.fields_truncated,
            };
            if call.on_message(meta, msg, sdp, &mut capper) {
                self.counters.ignored_after_final += 1;
            }
            let after = call.held_bytes();
            self.held_bytes = (self.held_bytes + after).saturating_sub(before);
            return Applied::Call;
        }
        let hashed = fingerprint(&key);
        if let Some(tombstone) = self.ended.get(&hashed) {
            let new_attempt = is_initial_invite && !tombstone.invites.contains(&invite_key(msg));
            if !new_attempt {
                self.counters.late_messages += 1;
                return Applied::Nothing;
            }
            self.ended.remove(&hashed);
        }
        let partial = !is_initial_invite && opens_partial_call(msg);
        if partial && !self.partial_budget(meta.time) {
            self.counters.partial_calls_refused += 1;
            return Applied::Nothing;
        }
        if is_initial_invite || partial {
            if !self.make_room(meta.time, out) {
                self.counters.dropped_at_capacity += 1;
                return Applied::Nothing;
            }
            self.counters.calls += 1;
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut capper = Capper {
                truncated: &mut self.counters.fields_truncated,
            };
            let mut call = if partial {
                self.counters.started_before_capture += 1;
                Call::joined(meta, msg, seq, &mut capper)
            } else {
                Call::new(meta, msg, seq, &mut capper)
            };
            let mut capper = Capper {
                truncated: &mut self.counters.fields_truncated,
            };
            if call.on_message(meta, msg, sdp, &mut capper) {
                self.counters.ignored_after_final += 1;
            }
            self.held_bytes += call.held_bytes() + heap(key.len()) + ENTRY_BYTES;
            self.order_bytes += heap(key.len()) + ORDER_SLOT_BYTES;
            self.order.push_back((seq, key.to_owned()));
            self.calls.insert(key.to_owned(), Box::new(call));
            self.compact_order();
            return Applied::Call;
        }
        if msg.to.tag.is_some() && msg.cseq.method != Method::Register
            || msg.cseq.method == Method::Invite
        {
            self.counters.orphan_messages += 1;
            return Applied::Nothing;
        }
        // An out-of-dialog transaction: count each request once (retransmissions and
        // responses share its Call-ID and CSeq).
        if msg.method().is_some() {
            let key = fingerprint(&(msg.call_id, msg.cseq.number, msg.cseq.method.as_str()));
            if self.out_of_dialog_seen.len() >= MAX_OUT_OF_DIALOG_SEEN {
                self.out_of_dialog_seen.clear();
            }
            if self.out_of_dialog_seen.insert(key) {
                if msg.cseq.method == Method::Register {
                    self.counters.registrations += 1;
                } else {
                    self.counters.other_transactions += 1;
                }
            }
        }
        Applied::Nothing
    }

    /// Whether one more call may be opened mid-dialog in this minute.
    fn partial_budget(&mut self, now: Timestamp) -> bool {
        let (start, opened) = &mut self.partial_window;
        if now.seconds_since(*start) >= 60.0 || now < *start {
            *start = now;
            *opened = 0;
        }
        if *opened >= self.limits.max_partial_calls_per_minute {
            return false;
        }
        *opened += 1;
        true
    }

    /// Makes room for one more call: at the bound, evicts the oldest call still in setup.
    /// False when every call is answered (the new one is refused).
    fn make_room(&mut self, now: Timestamp, out: &mut impl FnMut(CallRecord)) -> bool {
        while self.calls.len() >= self.limits.max_calls.max(1)
            || self.held_bytes + self.order_bytes >= self.limits.max_bytes
        {
            let victim = loop {
                let Some((seq, key)) = self.order.pop_front() else {
                    break None;
                };
                self.order_bytes = self
                    .order_bytes
                    .saturating_sub(heap(key.len()) + ORDER_SLOT_BYTES);
                match self.calls.get(&key) {
                    Some(c) if c.seq == seq && c.evictable() => break Some(key),
                    // Answered calls stay until they end; their place in the queue is
                    // no longer needed (an answered call is never evicted).
                    _ => continue,
                }
            };
            let Some(key) = victim else {
                return false;
            };
            self.counters.evicted_in_setup += 1;
            self.end(&key, ClosedBy::Evicted, now, out);
        }
        true
    }

    /// Keeps the eviction queue proportional to the table (entries of ended calls linger
    /// in it until met).
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.calls.len() + 1024 {
            self.prune_order();
        }
    }

    /// Drops the eviction queue's entries of calls no longer in the table.
    fn prune_order(&mut self) {
        let calls = &self.calls;
        let order_bytes = &mut self.order_bytes;
        self.order.retain(|(seq, key)| {
            let live = calls.get(key).is_some_and(|c| c.seq == *seq);
            if !live {
                *order_bytes = order_bytes.saturating_sub(heap(key.len()) + ORDER_SLOT_BYTES);
            }
            live
        });
    }

    /// Ends a call: makes its record, remembers the dialog for `linger`.
    fn end(&mut self, key: &str, by: ClosedBy, now: Timestamp, out: &mut impl FnMut(CallRecord)) {
        let Some(mut call) = self.calls.remove(key) else {
            return;
        };
        self.held_bytes = self
            .held_bytes
            .saturating_sub(call.held_bytes() + heap(key.len()) + ENTRY_BYTES);
        call.closed = Some((by, now));
        self.remember_ended(fingerprint(&key), now, call.invites.clone());
        let record = call.into_record();
        self.counters.calls_with_saturated_counters += u64::from(!record.saturated.is_empty());
        out(record);
    }

    fn remember_ended(&mut self, hashed: u64, now: Timestamp, invites: Vec<u64>) {
        while self.ended.len() >= self.limits.max_ended.max(1) {
            let Some((_, oldest)) = self.ended_order.pop_front() else {
                break;
            };
            if self.ended.remove(&oldest).is_some() {
                self.counters.ended_forgotten += 1;
            }
        }
        self.ended.insert(
            hashed,
            Tombstone {
                ended: now,
                invites,
            },
        );
        self.ended_order.push_back((now, hashed));
    }

    /// Attaches an RTCP report relayed by a HEP agent to the call with this Call-ID. Returns
    /// false (and counts it) when no such call is tracked: RTCP outlives calls (reports after
    /// the BYE are counted apart) and may belong to calls that began before the capture.
    pub fn hep_rtcp(&mut self, call_id: &str, time: Timestamp, report: &RtcpJson) -> bool {
        let Some(call) = self.calls.get_mut(call_key(call_id)) else {
            if self.ended.contains_key(&fingerprint(&call_key(call_id))) {
                // The final reports of a call come after its BYE; the record is made.
                self.counters.hep_rtcp_after_end += 1;
            } else {
                self.counters.hep_rtcp_unmatched += 1;
            }
            return false;
        };
        let before = call.held_bytes();
        self.counters.hep_rtcp_attached += 1;
        let reporter = report.ssrc.map(ssrc_text);
        let blocks: Vec<Option<&ReportBlock>> = if report.report_blocks.is_empty() {
            vec![None]
        } else {
            report.report_blocks.iter().map(Some).collect()
        };
        for block in blocks {
            let source = block.and_then(|b| b.source_ssrc).map(ssrc_text);
            let index = call
                .hep_rtcp
                .iter()
                .position(|e| e.reporter_ssrc == reporter && e.source_ssrc == source);
            let entry = match index {
                Some(i) => &mut call.hep_rtcp[i],
                None if call.hep_rtcp.len() < MAX_HEP_RTCP_PER_CALL => {
                    call.hep_rtcp.push(HepRtcp {
                        reporter_ssrc: reporter.clone(),
                        source_ssrc: source,
                        first_time: time,
                        ..HepRtcp::default()
                    });
                    let last = call.hep_rtcp.len() - 1;
                    &mut call.hep_rtcp[last]
                }
                None => {
                    self.counters.hep_rtcp_dropped += 1;
                    continue;
                }
            };
            entry.reports = entry.reports.saturating_add(1);
            entry.last_time = entry.last_time.max(time);
            if let Some(b) = block {
                if let Some(f) = b.fraction_lost {
                    // 8-bit fixed point; anything larger is a broken agent, clamp to 100 %.
                    let percent = round_secs((f.min(256) as f64) * 100.0 / 256.0);
                    entry.last_fraction_lost_percent = Some(percent);
                    entry.max_fraction_lost_percent =
                        Some(entry.max_fraction_lost_percent.unwrap_or(0.0).max(percent));
                }
                if b.packets_lost.is_some() {
                    entry.last_cumulative_lost = b.packets_lost;
                }
                if let Some(j) = b.ia_jitter {
                    entry.last_jitter = Some(j);
                    entry.max_jitter = Some(entry.max_jitter.unwrap_or(0).max(j));
                }
                if b.highest_seq_no.is_some() {
                    entry.last_highest_seq = b.highest_seq_no;
                }
            }
        }
        let after = call.held_bytes();
        self.held_bytes = (self.held_bytes + after).saturating_sub(before);
        true
    }

    /// Counts a record made before its grace passed (see [`CallLimits::record_grace`]).
    pub fn note_grace_cut_short(&mut self) {
        self.counters.records_grace_cut_short += 1;
    }

    /// Counts a record made before its grace passed because the records waiting held their
    /// byte bound.
    pub fn note_grace_cut_short_bytes(&mut self) {
        self.counters.records_grace_cut_short_bytes += 1;
    }

    /// Moves time forward: ends calls that timed out (or whose challenge or CANCEL was not
    /// followed up) and forgets ended dialogs whose linger passed.
    pub fn advance(&mut self, now: Timestamp, out: &mut impl FnMut(CallRecord)) {
        if now.seconds_since(self.last_sweep) < 1.0 {
            return;
        }
        self.last_sweep = now;
        let limits = self.limits;
        let mut due: Vec<(u64, String, ClosedBy)> = self
            .calls
            .iter()
            .filter_map(|(id, call)| call.due(now, &limits).map(|by| (call.seq, id.clone(), by)))
            .collect();
        due.sort_by_key(|d| d.0);
        for (_, id, by) in due {
            self.end(&id, by, now, out);
        }
        let linger = limits.linger.as_secs_f64();
        while let Some(&(at, hashed)) = self.ended_order.front() {
            if now.seconds_since(at) <= linger {
                break;
            }
            self.ended_order.pop_front();
            if self.ended.get(&hashed).is_some_and(|t| t.ended == at) {
                self.ended.remove(&hashed);
            }
        }
    }

    /// Emits every call still tracked, as it stands (open calls are marked incomplete).
    pub fn finish(&mut self, closed_by: ClosedBy, out: &mut impl FnMut(CallRecord)) {
        let mut calls: Vec<Box<Call>> = self.calls.drain().map(|(_, c)| c).collect();
        self.order.clear();
        self.order_bytes = 0;
        self.held_bytes = 0;
        calls.sort_by_key(|c| c.seq);
        for mut call in calls {
            if call.closed.is_none() {
                call.closed = Some((closed_by, call.last_message));
            }
            let record = call.into_record();
            self.counters.calls_with_saturated_counters += u64::from(!record.saturated.is_empty());
            out(record);
        }
    }
}

/// Bytes accounted per call entry beyond the call's own: its slot in the call map (the key
/// and the box) and in the eviction queue (the sequence number and a copy of the key); each
/// copy of the key is a further [`heap`] of its length.
const ENTRY_BYTES: usize = table_share(std::mem::size_of::<(String, Box<Call>)>());
/// Bytes an eviction queue entry holds beside its copy of the key ([`CallTracker::order`]
/// keeps entries of ended calls until they reach its front or it is compacted, so they are
/// accounted until then, not until their call ends).
const ORDER_SLOT_BYTES: usize = table_share(std::mem::size_of::<(u64, String)>());
/// Bytes accounted per ended dialog: its map slot, its expiry queue entry and its INVITE
/// hashes (a vector of at most [`MAX_ENDED_INVITES`]).
const TOMBSTONE_BYTES: usize = table_share(std::mem::size_of::<(u64, Tombstone)>())
    + table_share(std::mem::size_of::<(Timestamp, u64)>())
    + heap(MAX_ENDED_INVITES * 8);

/// Whether the first message seen of an unknown Call-ID belongs to an INVITE dialog that
/// started before the capture. The CSeq method tells: only INVITE-dialog methods, so that a
/// stray response to REGISTER or OPTIONS never makes a call.
fn opens_partial_call(msg: &SipMessage<'_>) -> bool {
    let method = msg.cseq.method;
    let dialog_method = matches!(
        method,
        Method::Invite
            | Method::Ack
            | Method::Bye
            | Method::Cancel
            | Method::Update
            | Method::Prack
            | Method::Info
    );
    if !dialog_method {
        return false;
    }
    let tagged = msg.to.tag.is_some();
    match msg.start {
        // A CANCEL carries no To-tag; every other in-dialog request does.
        StartLine::Request { method, .. } => {
            method == msg.cseq.method && (tagged || method == Method::Cancel)
        }
        StartLine::Response { .. } => matches!(method, Method::Invite | Method::Cancel) || tagged,
    }
}

/// The key of an initial INVITE transaction: CSeq and top Via branch.
fn invite_key(msg: &SipMessage<'_>) -> u64 {
    fingerprint(&(
        msg.cseq.number,
        msg.via_branch
            .map(|b| cut(b, MAX_TAG_BYTES).0)
            .unwrap_or(""),
    ))
}

/// Longest session interval taken from a `Session-Expires` header (a day): a larger value is
/// no session timer a call could rely on, and `max_call_duration` bounds the call anyway.
const MAX_SESSION_INTERVAL: u32 = 86_400;

/// The session interval of a `Session-Expires` header (RFC 4028: `delta-seconds` then
/// parameters), in seconds; `None` without one, or when it is not a number from 1 to
/// [`MAX_SESSION_INTERVAL`].
fn session_interval(msg: &SipMessage<'_>) -> Option<u32> {
    let value = msg.header_values("Session-Expires").next()?;
    let seconds = value.split(';').next()?.trim().parse::<u32>().ok()?;
    (1..=MAX_SESSION_INTERVAL)
        .contains(&seconds)
        .then_some(seconds)
}

/// 401/407 challenges and 422 (session interval too small) are followed by a new INVITE in
/// the same attempt.
fn retried_in_same_attempt(status: u16) -> bool {
    matches!(status, 401 | 407 | 422)
}

/// The dialogs the 2xx to a call's initial INVITE made.
#[derive(Debug)]
struct AnsweredDialogs {
    /// The From-tag of the 2xx that answered: forks of one INVITE share it (they differ in
    /// the To-tag); the legs of a B2BUA that keeps the Call-ID do not, so a leg's 2xx is
    /// never taken for a fork (nor its BYE for a fork's).
    from_tag: Option<String>,
    /// Their To-tags, at most `MAX_FORKS`: the first answered the call (its dialog), the
    /// others are forks' dialogs. A BYE (or the 2xx of one) in another fork's dialog — a
    /// second 2xx the caller acknowledges and hangs up at once (RFC 3261 §13.2.2.4) — ends
    /// that dialog, not the call.
    to_tags: Vec<String>,
}

impl Call {
    fn blank(meta: &MessageMeta, msg: &SipMessage<'_>, seq: u64, cap: &mut Capper<'_>) -> Call {
        Call {
            call_id: cap.text(msg.call_id),
            seq,
            linked_call_id: msg.linked_call_id.map(|s| cap.text(s)),
            caller: cap.party(&msg.from),
            callee: cap.party(&msg.to),
            asserted_identity: None,
            diverted_from: None,
            caller_tag: msg.from.tag.map(|t| cap.tag(t)),
            transport: meta.transport,
            caller_address: meta.src,
            callee_address: meta.dst,
            invite_cseq: None,
            invite_branch: None,
            fork_branches: Vec::new(),
            invites: Vec::new(),
            invite_time: None,
            first_message: meta.time,
            started_before_capture: false,
            roles_known: true,
            answered_before_capture: false,
            first_provisional: None,
            ringing: None,
            answer: None,
            cancelled: None,
            bye: None,
            final_response: None,
            last_message: meta.time,
            reason: None,
            user_agents: UserAgents::default(),
            messages: 0,
            retransmissions: 0,
            auth_challenges: 0,
            to_tags: Vec::new(),
            answered: None,
            early_media: false,
            hold_since: None,
            hold_count: 0,
            hold_total: 0.0,
            session_interval: None,
            media: CallMedia::default(),
            seen: KeyedSet::default(),
            hep_rtcp: Vec::new(),
            closed: None,
        }
    }

    fn new(meta: &MessageMeta, invite: &SipMessage<'_>, seq: u64, cap: &mut Capper<'_>) -> Call {
        let mut call = Call::blank(meta, invite, seq, cap);
        call.asserted_identity = invite
            .asserted_identity
            .as_ref()
            .map(|p| Box::new(cap.party(p)));
        call.diverted_from = invite.diversion.as_ref().map(|p| Box::new(cap.party(p)));
        call.invite_cseq = Some(invite.cseq.number);
        call.invite_time = Some(meta.time);
        call.user_agents.caller = invite.user_agent.map(|s| cap.text(s));
        call
    }

    /// A dialog whose INVITE was not seen, opened by its first message seen. The roles are
    /// known when the message is one only one side sends in the initial transaction (a CANCEL
    /// from the caller; a provisional or final failure response, or a response to a CANCEL,
    /// from the callee). Otherwise `caller` is the sender of the first request seen (the From
    /// of the message), which may be either party.
    fn joined(meta: &MessageMeta, msg: &SipMessage<'_>, seq: u64, cap: &mut Capper<'_>) -> Call {
        let mut call = Call::blank(meta, msg, seq, cap);
        call.started_before_capture = true;
        let (known_initial, from_requester) = match msg.start {
            StartLine::Request { method, .. } => (method == Method::Cancel, true),
            StartLine::Response { status, .. } => {
                let initial = match msg.cseq.method {
                    Method::Cancel => true,
                    Method::Invite => {
                        (101..200).contains(&status)
                            || status == 100 && msg.to.tag.is_none()
                            || status >= 300
                    }
                    _ => false,
                };
                (initial, false)
            }
        };
        if !from_requester {
            // From and To name the requester and its peer; the response travels back.
            call.caller_address = meta.dst;
            call.callee_address = meta.src;
        }
        call.roles_known = known_initial;
        if known_initial {
            call.invite_cseq = Some(msg.cseq.number);
        }
        call
    }

    fn is_answered(&self) -> bool {
        self.answer.is_some() || self.answered_before_capture
    }

    /// Calls in setup, and dialogs joined mid-call (a flood of stray in-dialog requests must
    /// not hold the table against new calls either), may be evicted at the table's bound.
    fn evictable(&self) -> bool {
        !self.is_answered() || self.started_before_capture
    }

    /// Applies a message; true when it came after the call's final failure and was ignored.
    fn on_message(
        &mut self,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        sdp: Option<&SdpSummary>,
        cap: &mut Capper<'_>,
    ) -> bool {
        self.messages = self.messages.saturating_add(1);
        self.last_message = self.last_message.max(meta.time);
        if self.is_retransmission(msg) {
            self.retransmissions = self.retransmissions.saturating_add(1);
            return false;
        }
        match msg.start {
            StartLine::Request { method, .. } => self.on_request(meta, msg, method, sdp, cap),
            StartLine::Response { status, reason } => {
                self.on_response(meta, msg, status, reason, sdp, cap)
            }
        }
    }

    fn is_retransmission(&mut self, msg: &SipMessage<'_>) -> bool {
        let branch = msg.via_branch.unwrap_or("");
        let key = match msg.start {
            StartLine::Request { method, .. } => {
                fingerprint(&(0u8, method.as_str(), msg.cseq.number, branch))
            }
            // The branch tells a proxy's forwarded copy (its own branch) from a retransmission.
            StartLine::Response { status, .. } => fingerprint(&(
                1u8,
                status,
                msg.cseq.number,
                msg.cseq.method.as_str(),
                msg.to.tag.unwrap_or(""),
                branch,
            )),
        };
        if self.seen.contains(&key) {
            return true;
        }
        if self.seen.len() < MAX_SEEN_PER_CALL {
            self.seen.insert(key);
        }
        false
    }

    /// True after a final failure on the caller's transaction (the attempt is over unless a
    /// new INVITE follows a challenge).
    fn failed(&self) -> bool {
        !self.is_answered() && self.final_response.as_ref().is_some_and(|f| f.0 >= 300)
    }

    fn on_request(
        &mut self,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        method: Method<'_>,
        sdp: Option<&SdpSummary>,
        cap: &mut Capper<'_>,
    ) -> bool {
        let t = meta.time;
        match method {
            Method::Invite if msg.to.tag.is_none() => {
                let cseq = msg.cseq.number;
                if self.invite_cseq == Some(cseq) && self.invite_time.is_some_and(|first| t < first)
                {
                    // The same INVITE captured earlier on another hop: the first hop.
                    self.adopt_first_hop(meta, msg, sdp, cap);
                }
                let newer = self.invite_cseq.is_none_or(|c| cseq > c);
                if newer {
                    // The same attempt, re-sent after a challenge (or a 422 retry).
                    if let Some((401 | 407, _, _)) = self.final_response {
                        self.auth_challenges = self.auth_challenges.saturating_add(1);
                    }
                    self.invite_cseq = Some(cseq);
                    self.invite_branch = None;
                    self.fork_branches.clear();
                    if !self.is_answered() {
                        self.final_response = None;
                        self.closed = None;
                    }
                }
                if self.invite_cseq == Some(cseq) {
                    match (&self.invite_branch, msg.via_branch) {
                        (None, branch) => self.invite_branch = branch.map(|b| cap.tag(b)),
                        (Some(ours), Some(theirs))
                            if ours != cut(theirs, MAX_TAG_BYTES).0
                                && self.fork_branches.len() < MAX_FORKS =>
                        {
                            // The same INVITE on another branch: a proxy forwarding it.
                            self.fork_branches.push(cap.tag(theirs));
                        }
                        _ => {}
                    }
                }
                if self.invites.len() < MAX_ENDED_INVITES {
                    let key = invite_key(msg);
                    if !self.invites.contains(&key) {
                        self.invites.push(key);
                    }
                }
                if self.media.offer.is_none() {
                    self.media.offer = sdp.map(|s| cap.sdp(s));
                }
                false
            }
            Method::Invite | Method::Update | Method::Info => {
                if self.failed() {
                    return true;
                }
                if self.in_other_fork(msg) {
                    // Another fork's dialog: neither holds nor renegotiates the call's media.
                    return false;
                }
                if self.started_before_capture && self.invite_cseq.is_none() {
                    // An in-dialog request of a dialog joined mid-call: it was confirmed.
                    self.answered_before_capture = true;
                }
                if let Some(sdp) = sdp {
                    if self.media.offer.is_none() {
                        self.media.offer = Some(cap.sdp(sdp));
                    } else {
                        self.media.renegotiations = self.media.renegotiations.saturating_add(1);
                    }
                    self.on_sdp_direction(sdp, t);
                }
                false
            }
            Method::Cancel => {
                if self.is_answered() || self.final_response.is_some() {
                    // Too late: the INVITE had its final response.
                    return true;
                }
                self.cancelled.get_or_insert(t);
                self.set_reason(msg, cap);
                self.closed.get_or_insert((ClosedBy::Cancel, t));
                false
            }
            Method::Bye => {
                // A BYE ends a confirmed dialog, or (from the caller) an early one; after a
                // final failure there is no dialog left to end.
                if self.failed() {
                    return true;
                }
                if self.in_other_fork(msg) {
                    // A fork's dialog the caller hangs up; the answered one goes on.
                    return false;
                }
                if self.bye.is_none() {
                    if self.started_before_capture && self.invite_cseq.is_none() {
                        self.answered_before_capture = true;
                    }
                    let hangup = self.sender_side(msg.from.tag, cap);
                    self.bye = Some((t, hangup));
                    self.set_reason(msg, cap);
                    if let Some(since) = self.hold_since.take() {
                        self.hold_total += t.seconds_since(since);
                    }
                }
                false
            }
            _ => false,
        }
    }

    /// Adopts an INVITE of the call's current transaction (same CSeq, no To-tag) captured
    /// before the one the call was opened with: a proxy's first hop (UAC → proxy) that reached
    /// this tracker after its second (proxy → UAS), as capture threads may deliver them. What
    /// the call takes from its INVITE is taken from this one, as a time-ordered feed would
    /// have: addresses, transport, invite time, parties, tags, identities, the caller's user
    /// agent, the offer; the branch seen first becomes a fork branch (a proxy's forwarded
    /// copy), this one the caller's transaction.
    fn adopt_first_hop(
        &mut self,
        meta: &MessageMeta,
        invite: &SipMessage<'_>,
        sdp: Option<&SdpSummary>,
        cap: &mut Capper<'_>,
    ) {
        let ours = invite.via_branch.map(|b| cap.tag(b));
        if let Some(seen) = self.invite_branch.take() {
            if ours.as_ref() != Some(&seen)
                && !self.fork_branches.contains(&seen)
                && self.fork_branches.len() < MAX_FORKS
            {
                self.fork_branches.push(seen);
            }
        }
        self.fork_branches.retain(|b| Some(b) != ours.as_ref());
        self.invite_branch = ours;
        self.linked_call_id = invite.linked_call_id.map(|s| cap.text(s));
        self.caller = cap.party(&invite.from);
        self.callee = cap.party(&invite.to);
        self.asserted_identity = invite
            .asserted_identity
            .as_ref()
            .map(|p| Box::new(cap.party(p)));
        self.diverted_from = invite.diversion.as_ref().map(|p| Box::new(cap.party(p)));
        self.caller_tag = invite.from.tag.map(|t| cap.tag(t));
        self.transport = meta.transport;
        self.caller_address = meta.src;
        self.callee_address = meta.dst;
        self.invite_time = Some(meta.time);
        self.first_message = self.first_message.min(meta.time);
        self.user_agents.caller = invite.user_agent.map(|s| cap.text(s));
        if let Some(sdp) = sdp {
            self.media.offer = Some(cap.sdp(sdp));
        }
    }

    /// Whether an in-dialog message belongs to another fork's dialog than the answered one:
    /// one of its tags is the answering 2xx's From-tag (the caller's side of every fork)
    /// and the other is the To-tag of another 2xx to the initial INVITE. Any other message
    /// (a B2BUA's other leg under the same Call-ID among them) is taken for the call's
    /// dialog, as before forks were told apart.
    fn in_other_fork(&self, msg: &SipMessage<'_>) -> bool {
        let Some(dialogs) = self.answered.as_deref() else {
            return false;
        };
        let Some((answered, forks)) = dialogs.to_tags.split_first() else {
            return false;
        };
        let (from, to) = (
            msg.from.tag.map(|t| cut(t, MAX_TAG_BYTES).0),
            msg.to.tag.map(|t| cut(t, MAX_TAG_BYTES).0),
        );
        let caller_side = dialogs.from_tag.as_deref();
        let callee_side = if caller_side.is_some() && from == caller_side {
            to
        } else if caller_side.is_some() && to == caller_side {
            from
        } else {
            return false;
        };
        callee_side.is_some_and(|tag| tag != answered && forks.iter().any(|t| t == tag))
    }

    /// Who sent a request whose From-tag is `tag`.
    fn sender_side(&self, tag: Option<&str>, _cap: &mut Capper<'_>) -> Hangup {
        let tag = tag.map(|t| cut(t, MAX_TAG_BYTES).0);
        if tag.is_some() && tag == self.caller_tag.as_deref() {
            Hangup::Caller
        } else {
            Hangup::Callee
        }
    }

    fn on_response(
        &mut self,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        status: u16,
        phrase: &str,
        sdp: Option<&SdpSummary>,
        cap: &mut Capper<'_>,
    ) -> bool {
        let t = meta.time;
        if self.started_before_capture
            && self.invite_cseq.is_none()
            && msg.cseq.method == Method::Invite
            && (101..200).contains(&status)
        {
            // Joined on a message that could not tell the transaction (a 100 Trying that
            // already carries a To-tag): a ringing or progress response can only be the
            // initial INVITE's, as when it is the first message seen. It names the roles (it
            // travels back to the caller) and makes the following 2xx the answer.
            self.invite_cseq = Some(msg.cseq.number);
            if !self.roles_known {
                self.roles_known = true;
                self.caller_address = meta.dst;
                self.callee_address = meta.src;
            }
        }
        if (200..300).contains(&status)
            && matches!(msg.cseq.method, Method::Invite | Method::Update)
        {
            // A session timer negotiated (or refreshed): its 2xx says the interval.
            if let Some(interval) = session_interval(msg) {
                self.session_interval = Some(interval);
            }
        }
        match msg.cseq.method {
            Method::Invite => {}
            Method::Bye => {
                // The 2xx of a BYE the capture missed ends the call as the BYE would have.
                if (200..300).contains(&status)
                    && self.bye.is_none()
                    && !self.failed()
                    && !self.in_other_fork(msg)
                {
                    if self.started_before_capture && self.invite_cseq.is_none() {
                        self.answered_before_capture = true;
                    }
                    // The BYE came from the side this response goes to: its From.
                    let hangup = self.sender_side(msg.from.tag, cap);
                    self.bye = Some((t, hangup));
                    return false;
                }
                return self.bye.is_some() || self.failed();
            }
            Method::Cancel => {
                // The response to a CANCEL the capture missed (a dialog joined mid-call).
                if self.started_before_capture
                    && self.cancelled.is_none()
                    && !self.is_answered()
                    && self.final_response.is_none()
                {
                    self.cancelled = Some(t);
                    self.closed.get_or_insert((ClosedBy::Cancel, t));
                }
                return false;
            }
            _ => return self.failed(),
        }
        // A 2xx to an earlier initial INVITE of the call (a caller that sent it again with a
        // new CSeq before any final response; both answered): it made the dialog and answers
        // the call (RFC 3261 §12.1), where TShark's first 2xx is (campaign 2026-12-03c, the
        // wiki's DTMFsipinfo.pcap). A re-INVITE's CSeq is above the initial one's.
        let earlier_initial = (200..300).contains(&status)
            && !self.is_answered()
            && !self.started_before_capture
            && self.invite_cseq.is_some_and(|c| msg.cseq.number < c);
        if self.invite_cseq != Some(msg.cseq.number) && !earlier_initial {
            // A response to a re-INVITE (or, joined mid-call, to an INVITE of unknown kind).
            if (200..300).contains(&status) {
                if self.started_before_capture && !self.is_answered() {
                    self.answered_before_capture = true;
                }
                if let Some(sdp) = sdp {
                    if self.media.answer.is_none() {
                        self.media.answer = Some(cap.sdp(sdp));
                    } else {
                        self.media.renegotiations = self.media.renegotiations.saturating_add(1);
                    }
                }
            }
            return false;
        }
        if let Some(tag) = msg.to.tag {
            if self.to_tags.len() < MAX_FORKS && !self.to_tags.iter().any(|t| t == tag) {
                self.to_tags.push(cap.tag(tag));
            }
        }
        if self.user_agents.callee.is_none() && status != 100 {
            self.user_agents.callee = msg.server.or(msg.user_agent).map(|s| cap.text(s));
        }
        match status {
            100..=199 => {
                if self.failed() {
                    return true;
                }
                // The earliest captured, whichever arrived first (the hops of a proxy, two
                // capture threads).
                earliest(&mut self.first_provisional, t);
                if status == 180 || status == 183 {
                    earliest(&mut self.ringing, t);
                }
                if let Some(sdp) = sdp {
                    self.early_media = true;
                    if self.media.answer.is_none() {
                        self.media.answer = Some(cap.sdp(sdp));
                    }
                }
                false
            }
            200..=299 => {
                if let (Some(answer), Some(final_response)) =
                    (self.answer.as_mut(), self.final_response.as_mut())
                {
                    if t < *answer {
                        // The same answer captured earlier on another hop.
                        *answer = t;
                        final_response.2 = t;
                    }
                }
                if self.answer.is_none() && !self.answered_before_capture {
                    if self.failed() {
                        // A 2xx after the caller's transaction failed: nothing to answer.
                        return true;
                    }
                    self.answer = Some(t);
                    if let Some(tag) = msg.to.tag {
                        self.answered = Some(Box::new(AnsweredDialogs {
                            from_tag: msg.from.tag.map(|t| cap.tag(t)),
                            to_tags: vec![cap.tag(tag)],
                        }));
                    }
                    self.final_response = Some((status, cap.text(phrase), t));
                    // A 200 that crossed a CANCEL wins: the call was answered.
                    self.closed = None;
                    if let Some(sdp) = sdp {
                        if !self.early_media || self.media.answer.is_none() {
                            self.media.answer = Some(cap.sdp(sdp));
                        }
                    }
                } else if let Some(tag) = msg.to.tag {
                    // Another fork's 2xx (the same caller side, another To-tag): a dialog of
                    // its own, which the caller ends. A B2BUA's other leg under the same
                    // Call-ID has another From-tag: not a fork.
                    let tag = cut(tag, MAX_TAG_BYTES).0;
                    let from = msg.from.tag.map(|t| cut(t, MAX_TAG_BYTES).0);
                    if let Some(dialogs) = self.answered.as_deref_mut() {
                        if from.is_some()
                            && from == dialogs.from_tag.as_deref()
                            && dialogs.to_tags.len() < MAX_FORKS
                            && !dialogs.to_tags.iter().any(|t| t == tag)
                        {
                            dialogs.to_tags.push(cap.tag(tag));
                        }
                    }
                }
                false
            }
            _ => {
                if self.is_answered() || self.final_response.is_some() {
                    // A second final (another status, a fork's late failure): the first wins.
                    return self.failed();
                }
                // Only a branch the capture saw the INVITE forwarded on is a fork's: a failure
                // on any other branch (some agents answer on the CANCEL's branch) is the
                // caller's.
                let fork = msg.via_branch.is_some_and(|theirs| {
                    let theirs = cut(theirs, MAX_TAG_BYTES).0;
                    self.fork_branches.iter().any(|b| b == theirs)
                });
                if fork {
                    // A fork's failure on a proxy's downstream branch: other branches may
                    // still answer; the proxy's final response to the caller ends the attempt.
                    return false;
                }
                self.final_response = Some((status, cap.text(phrase), t));
                if self.reason.is_none() {
                    self.set_reason(msg, cap);
                }
                false
            }
        }
    }

    fn on_sdp_direction(&mut self, sdp: &SdpSummary, t: Timestamp) {
        match (sdp.is_hold(), self.hold_since) {
            (true, None) => {
                self.hold_since = Some(t);
                self.hold_count = self.hold_count.saturating_add(1);
            }
            (false, Some(since)) => {
                self.hold_total += t.seconds_since(since);
                self.hold_since = None;
            }
            _ => {}
        }
    }

    fn set_reason(&mut self, msg: &SipMessage<'_>, cap: &mut Capper<'_>) {
        let mut reasons = msg.reasons().peekable();
        let first = reasons.peek().copied();
        let q850 = msg
            .reasons()
            .find(|r| r.protocol.eq_ignore_ascii_case("Q.850"));
        if let Some(r) = q850.or(first) {
            self.reason = Some(Reason {
                protocol: cap.tag(r.protocol),
                cause: r.cause,
                text: r.text.map(|s| cap.text(s)),
            });
        }
    }

    /// Whether the last message ended the call, and how.
    fn ended(&self) -> Option<ClosedBy> {
        if self.bye.is_some() {
            return Some(ClosedBy::Bye);
        }
        match self.final_response {
            Some((status, _, _))
                if !self.is_answered() && status >= 300 && !retried_in_same_attempt(status) =>
            {
                Some(if self.cancelled.is_some() {
                    ClosedBy::Cancel
                } else {
                    ClosedBy::FinalResponse
                })
            }
            _ => None,
        }
    }

    /// Whether time alone ends the call now, and how.
    fn due(&self, now: Timestamp, limits: &CallLimits) -> Option<ClosedBy> {
        let waited =
            |since: Timestamp, limit: Duration| now.seconds_since(since) > limit.as_secs_f64();
        if let Some((_, _, at)) = self.final_response.as_ref().filter(|_| self.failed()) {
            // A challenge waits for the INVITE with credentials (people type passwords:
            // sngrep's sample retries after 34 s).
            return waited(*at, limits.setup_timeout).then_some(ClosedBy::FinalResponse);
        }
        if self.is_answered() {
            // With a session timer, both sides refresh the session at least every half
            // interval and tear it down (BYE) when a refresh is missing (RFC 4028 §10): a
            // call silent for the whole interval and a transaction's lifetime more is over,
            // its BYE lost or not captured — not a call to hold for `max_call_duration`.
            if let Some(interval) = self.session_interval {
                let silent = Duration::from_secs(u64::from(interval)) + limits.linger;
                if waited(self.last_message, silent) {
                    return Some(ClosedBy::Timeout);
                }
            }
            let since = self.answer.unwrap_or(self.first_message);
            return waited(since, limits.max_call_duration).then_some(ClosedBy::Timeout);
        }
        if let Some(at) = self.cancelled {
            // A CANCEL whose INVITE never got its final response (lost, or not captured).
            return waited(at, limits.linger).then_some(ClosedBy::Cancel);
        }
        waited(self.last_message, limits.setup_timeout).then_some(ClosedBy::Timeout)
    }

    /// Bytes this call holds on the heap, its own box included, each allocation as the
    /// allocator takes it ([`heap`]).
    fn held_bytes(&self) -> usize {
        fn string(s: &String) -> usize {
            heap(s.capacity())
        }
        fn text(s: &Option<String>) -> usize {
            s.as_ref().map_or(0, string)
        }
        fn vec<T>(v: &Vec<T>) -> usize {
            heap(v.capacity() * std::mem::size_of::<T>())
        }
        fn party(p: &Party) -> usize {
            text(&p.user) + text(&p.display_name) + text(&p.uri)
        }
        fn boxed_party(p: &Option<Box<Party>>) -> usize {
            p.as_deref()
                .map_or(0, |p| heap(std::mem::size_of::<Party>()) + party(p))
        }
        fn sdp(s: &Option<SdpSummary>) -> usize {
            s.as_ref().map_or(0, |s| {
                vec(&s.media)
                    + s.media
                        .iter()
                        .map(|m| {
                            string(&m.media)
                                + text(&m.address)
                                + string(&m.protocol)
                                + vec(&m.codecs)
                                + m.codecs.iter().map(|c| text(&c.name)).sum::<usize>()
                        })
                        .sum::<usize>()
            })
        }
        heap(std::mem::size_of::<Call>())
            + string(&self.call_id)
            + text(&self.linked_call_id)
            + party(&self.caller)
            + party(&self.callee)
            + boxed_party(&self.asserted_identity)
            + boxed_party(&self.diverted_from)
            + text(&self.caller_tag)
            + self.answered.as_deref().map_or(0, |d| {
                heap(std::mem::size_of::<AnsweredDialogs>())
                    + text(&d.from_tag)
                    + vec(&d.to_tags)
                    + d.to_tags.iter().map(string).sum::<usize>()
            })
            + text(&self.invite_branch)
            + vec(&self.fork_branches)
            + self.fork_branches.iter().map(string).sum::<usize>()
            + vec(&self.invites)
            + self.final_response.as_ref().map_or(0, |f| string(&f.1))
            + self
                .reason
                .as_ref()
                .map_or(0, |r| string(&r.protocol) + text(&r.text))
            + text(&self.user_agents.caller)
            + text(&self.user_agents.callee)
            + vec(&self.to_tags)
            + self.to_tags.iter().map(string).sum::<usize>()
            + sdp(&self.media.offer)
            + sdp(&self.media.answer)
            // A hash set: a slot (the value and a control byte) per bucket, buckets at most
            // 8/7 of its capacity, and a group of control bytes more.
            + if self.seen.capacity() == 0 {
                0
            } else {
                heap(self.seen.capacity() * 8 / 7 * (std::mem::size_of::<u64>() + 1) + 16)
            }
            + vec(&self.hep_rtcp)
            + self
                .hep_rtcp
                .iter()
                .map(|h| text(&h.reporter_ssrc) + text(&h.source_ssrc))
                .sum::<usize>()
    }

    fn outcome(&self) -> Outcome {
        if self.is_answered() {
            return Outcome::Answered;
        }
        if self.cancelled.is_some() || self.bye.is_some() {
            return Outcome::Abandoned;
        }
        if let Some((status, _, _)) = self.final_response {
            return classify_failure(status);
        }
        match self.closed {
            // A dialog joined mid-call without a sign of its state: nothing is known.
            Some((ClosedBy::Timeout, _)) if !self.started_before_capture => Outcome::TimedOut,
            _ => Outcome::InProgress,
        }
    }

    fn state(&self) -> State {
        let ended = self.bye.is_some()
            || (!self.is_answered() && (self.final_response.is_some() || self.cancelled.is_some()));
        if ended {
            State::Ended
        } else if self.is_answered() {
            State::Connected
        } else if self.early_media {
            State::EarlyMedia
        } else if self.ringing.is_some() {
            State::Ringing
        } else if self.first_provisional.is_some() {
            State::Proceeding
        } else {
            State::Calling
        }
    }

    fn into_record(self) -> CallRecord {
        let outcome = self.outcome();
        let state = self.state();
        let (closed_by, _) = self
            .closed
            .unwrap_or((ClosedBy::CaptureEnd, self.last_message));
        let failure_time = match self.final_response {
            Some((status, _, t)) if status >= 300 => Some(t),
            _ => None,
        };
        let end_time = match outcome {
            Outcome::Answered => self.bye.map(|(t, _)| t),
            Outcome::Abandoned => self.cancelled.or(self.bye.map(|(t, _)| t)),
            _ => failure_time,
        };
        let since_invite = |t: Option<Timestamp>| {
            let start = self.invite_time?;
            t.map(|t| round_secs(t.seconds_since(start)))
        };
        // Only a call that rang has a ring time: without a 180/183 the caller heard nothing
        // ring (a challenge and its retry, a refusal, an answer straight away), and the time
        // before the end is the setup's, not ringing (a 407 retried 34 s later and refused
        // with 403 showed 34 s of "ring").
        let ring_start = self.ringing;
        let ring_end = self.answer.or(self.cancelled).or(failure_time);
        let hangup_by = match outcome {
            Outcome::Abandoned => Some(Hangup::Caller),
            _ => self.bye.map(|(_, h)| h),
        };
        let hold_open = match (self.hold_since, end_time) {
            (Some(since), Some(end)) => end.seconds_since(since),
            (Some(since), None) => self.last_message.seconds_since(since),
            _ => 0.0,
        };
        let q850_cause = self
            .reason
            .as_ref()
            .filter(|r| r.protocol.eq_ignore_ascii_case("Q.850"))
            .and_then(|r| r.cause);
        let ended_in_capture = matches!(
            closed_by,
            ClosedBy::Bye | ClosedBy::Cancel | ClosedBy::FinalResponse
        );
        // Written once: the record shows it, and its id hashes it.
        let caller_address = record_text::socket_addr(self.caller_address);
        CallRecord {
            schema: CALL_SCHEMA,
            record_id: record_id(
                &self.call_id,
                self.invite_time.unwrap_or(self.first_message),
                &caller_address,
            ),
            linked_call_id: self.linked_call_id,
            caller: self.caller,
            callee: self.callee,
            asserted_identity: self.asserted_identity.map(|p| *p),
            diverted_from: self.diverted_from.map(|p| *p),
            transport: self.transport.into(),
            caller_address,
            callee_address: record_text::socket_addr(self.callee_address),
            started_before_capture: self.started_before_capture,
            roles_known: self.roles_known,
            invite_time: self.invite_time,
            first_message_time: self.first_message,
            first_provisional_time: self.first_provisional,
            ringing_time: self.ringing,
            answer_time: self.answer,
            end_time,
            bye_answered_time: None,
            last_message_time: self.last_message,
            post_dial_delay_s: since_invite(self.ringing.or(failure_time).or(self.answer)),
            time_to_answer_s: since_invite(self.answer),
            ring_duration_s: match (ring_start, ring_end) {
                (Some(start), Some(end)) => Some(round_secs(end.seconds_since(start))),
                _ => None,
            },
            talk_duration_s: match (self.answer, self.bye) {
                (Some(a), Some((b, _))) => Some(round_secs(b.seconds_since(a))),
                _ => None,
            },
            outcome,
            state,
            complete: ended_in_capture && !self.started_before_capture,
            closed_by,
            final_status: self.final_response.as_ref().map(|f| f.0),
            final_reason: self.final_response.map(|f| f.1),
            q850_cause,
            reason: self.reason,
            hangup_by,
            user_agents: self.user_agents,
            messages: self.messages,
            retransmissions: self.retransmissions,
            auth_challenges: self.auth_challenges,
            forks: self.to_tags.len() as u32,
            early_media: self.early_media,
            hold_count: self.hold_count,
            hold_duration_s: round_secs(self.hold_total + hold_open),
            media: crate::record::Media {
                offer: self.media.offer.as_ref().map(Into::into),
                answer: self.media.answer.as_ref().map(Into::into),
                renegotiations: self.media.renegotiations,
            },
            media_quality: Default::default(),
            saturated: saturated_counters(
                &[
                    (self.messages, "messages"),
                    (self.retransmissions, "retransmissions"),
                    (self.auth_challenges, "auth_challenges"),
                    (self.hold_count, "hold_count"),
                    (self.media.renegotiations, "media.renegotiations"),
                ],
                self.hep_rtcp.iter().map(|h| h.reports),
            ),
            hep_rtcp: self.hep_rtcp,
            call_id: self.call_id,
        }
    }
}

/// The counters of a call record at their top (they saturate at 2^32 − 1, a dialog of more
/// than four billion messages): named, so that a lower bound is never read as a count.
/// `hep_rtcp` counts each entry's reports.
fn saturated_counters(
    counters: &[(u32, &'static str)],
    mut hep_rtcp: impl Iterator<Item = u32>,
) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = counters
        .iter()
        .filter(|(n, _)| *n == u32::MAX)
        .map(|(_, name)| *name)
        .collect();
    if hep_rtcp.any(|n| n == u32::MAX) {
        names.push("hep_rtcp.reports");
    }
    names
}

/// Keeps the earliest time of an event seen more than once (on the hops of a proxy).
fn earliest(slot: &mut Option<Timestamp>, t: Timestamp) {
    if slot.is_none_or(|seen| t < seen) {
        *slot = Some(t);
    }
}

/// Maps a final failure status to what a supervisor calls it.
pub fn classify_failure(status: u16) -> Outcome {
    match status {
        486 | 600 => Outcome::Busy,
        401 | 403 | 407 | 603 | 607 | 608 => Outcome::Rejected,
        404 | 410 | 480 | 484 | 485 | 604 => Outcome::NotReached,
        408 | 487 => Outcome::NoAnswer,
        _ => Outcome::Failed,
    }
}

/// The SDP of a message, summarised (`None` without SDP or when it does not parse).
pub fn summarize_sdp(msg: &SipMessage<'_>) -> Option<SdpSummary> {
    msg.sdp().and_then(|body| sdp::summarize(body).ok())
}

fn ssrc_text(ssrc: u64) -> String {
    format!("0x{ssrc:08X}")
}

/// A stable id: the same call in the same capture always gets the same id.
/// `caller` is the caller's address as the record writes it (`SocketAddr`'s `Display`).
fn record_id(call_id: &str, invite_time: Timestamp, caller: &str) -> String {
    crate::record::stable_id(&[
        call_id.as_bytes(),
        &invite_time.as_nanos().to_be_bytes(),
        caller.as_bytes(),
    ])
}

/// The tracker's counters as the capture summary writes them (`call_counters`).
impl From<&CallCounters> for crate::record::CallCounters {
    fn from(c: &CallCounters) -> Self {
        // Every field named: a counter added here fails to compile until the record (and its
        // schema file) says whether it is written.
        let CallCounters {
            calls,
            started_before_capture,
            registrations,
            other_transactions,
            orphan_messages,
            partial_calls_refused,
            late_messages,
            ignored_after_final,
            ended_forgotten,
            evicted_in_setup,
            dropped_at_capacity,
            fields_truncated,
            hep_rtcp_attached,
            hep_rtcp_unmatched,
            hep_rtcp_after_end,
            hep_rtcp_dropped,
            records_grace_cut_short,
            records_grace_cut_short_bytes,
            calls_with_saturated_counters,
        } = *c;
        crate::record::CallCounters {
            calls,
            started_before_capture,
            registrations,
            other_transactions,
            orphan_messages,
            partial_calls_refused,
            late_messages,
            ignored_after_final,
            ended_forgotten,
            evicted_in_setup,
            dropped_at_capacity,
            fields_truncated,
            hep_rtcp_attached,
            hep_rtcp_unmatched,
            hep_rtcp_after_end,
            hep_rtcp_dropped,
            records_grace_cut_short,
            records_grace_cut_short_bytes,
            calls_with_saturated_counters,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::decode::sip;

    /// A call's state is held for up to `max_calls` calls (100,000 by default): its size is
    /// what a flood of INVITEs costs per call before any text. Printed with `--nocapture`.
    #[test]
    fn a_calls_state_stays_small() {
        use std::mem::size_of;
        println!("size_of::<Call>() = {}", size_of::<Call>());
        println!("size_of::<Party>() = {}", size_of::<Party>());
        assert!(size_of::<Call>() <= 900, "{}", size_of::<Call>());
    }

    const CALLER: &str = "10.0.0.1:5060";
    const CALLEE: &str = "10.0.0.2:5060";

    /// A call table fed with text messages at times in milliseconds.
    struct Harness {
        tracker: CallTracker,
        records: Vec<CallRecord>,
        call_id: String,
    }

    impl Harness {
        fn new() -> Self {
            Harness::with(CallLimits::default())
        }

        fn with(limits: CallLimits) -> Self {
            Harness {
                tracker: CallTracker::new(limits),
                records: Vec::new(),
                call_id: "call-1@test".to_owned(),
            }
        }

        fn feed(&mut self, at_ms: i64, text: &str, from_caller: bool) {
            let msg = sip::parse(text.as_bytes()).unwrap();
            let (src, dst) = if from_caller {
                (CALLER, CALLEE)
            } else {
                (CALLEE, CALLER)
            };
            let meta = MessageMeta {
                frame: 0,
                time: Timestamp::from_nanos(1_700_000_000_000_000_000 + at_ms * 1_000_000),
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                transport: Transport::Udp,
            };
            let sdp = summarize_sdp(&msg);
            let records = &mut self.records;
            self.tracker
                .message(&meta, &msg, sdp.as_ref(), &mut |r| records.push(r));
        }

        /// A request. `by_caller`: the caller sends it (From is the caller).
        fn req(&mut self, at: i64, method: &str, cseq: u32, by_caller: bool, dialog: bool) {
            self.req_branch(
                at,
                method,
                cseq,
                by_caller,
                dialog,
                &format!("z9hG4bK{method}{cseq}"),
            );
        }

        fn req_branch(
            &mut self,
            at: i64,
            method: &str,
            cseq: u32,
            by_caller: bool,
            dialog: bool,
            branch: &str,
        ) {
            let caller = "<sip:alice@example.com>;tag=A";
            let callee = if dialog {
                "<sip:bob@example.com>;tag=B"
            } else {
                "<sip:bob@example.com>"
            };
            let (from, to) = if by_caller {
                (caller, callee)
            } else {
                (callee, caller)
            };
            let text = format!(
                "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch={branch}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
                self.call_id
            );
            self.feed(at, &text, by_caller);
        }

        /// A response from the callee to a caller's request.
        fn resp(&mut self, at: i64, status: u16, cseq: u32, method: &str, to_tag: Option<&str>) {
            self.resp_branch(
                at,
                status,
                cseq,
                method,
                to_tag,
                &format!("z9hG4bK{method}{cseq}"),
            );
        }

        fn resp_branch(
            &mut self,
            at: i64,
            status: u16,
            cseq: u32,
            method: &str,
            to_tag: Option<&str>,
            branch: &str,
        ) {
            let to = match to_tag {
                Some(t) => format!("<sip:bob@example.com>;tag={t}"),
                None => "<sip:bob@example.com>".to_owned(),
            };
            let text = format!(
                "SIP/2.0 {status} Whatever\r\nVia: SIP/2.0/UDP 10.0.0.1;branch={branch}\r\nFrom: <sip:alice@example.com>;tag=A\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
                self.call_id
            );
            self.feed(at, &text, false);
        }

        fn advance(&mut self, at_ms: i64) {
            let records = &mut self.records;
            let now = Timestamp::from_nanos(1_700_000_000_000_000_000 + at_ms * 1_000_000);
            self.tracker.advance(now, &mut |r| records.push(r));
        }

        fn finish(&mut self) {
            let records = &mut self.records;
            self.tracker
                .finish(ClosedBy::CaptureEnd, &mut |r| records.push(r));
        }

        fn only(&self) -> &CallRecord {
            assert_eq!(self.records.len(), 1, "{:#?}", self.records);
            &self.records[0]
        }
    }

    /// INVITE → 180 → 403, then `follow` (a message that may come after a final failure).
    fn rejected_then(follow: impl Fn(&mut Harness)) -> Harness {
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(50, 180, 1, "INVITE", Some("B"));
        h.resp(900, 403, 1, "INVITE", Some("B"));
        assert_eq!(
            h.records.len(),
            1,
            "the record is made at the final response"
        );
        follow(&mut h);
        h.advance(600_000);
        h.finish();
        h
    }

    #[test]
    fn bye_after_a_failure_response_keeps_the_call_rejected() {
        // Issue 11 item 1: INVITE → 180 → 403 → BYE was reported abandoned by the caller.
        let h = rejected_then(|h| {
            h.req(910, "ACK", 1, true, true);
            h.req(1000, "BYE", 2, true, true);
        });
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Rejected);
        assert_eq!(c.final_status, Some(403));
        assert_eq!(c.hangup_by, None);
        assert_eq!(c.closed_by, ClosedBy::FinalResponse);
        assert!(c.complete);
        assert_eq!(h.tracker.counters().late_messages, 2);
    }

    #[test]
    fn every_message_that_can_follow_a_final_failure_leaves_it_alone() {
        type Follow = fn(&mut Harness);
        let follows: [(&str, Follow); 9] = [
            ("BYE from the caller", |h| h.req(1000, "BYE", 2, true, true)),
            ("BYE from the callee", |h| {
                h.req(1000, "BYE", 1, false, true)
            }),
            ("CANCEL", |h| h.req(1000, "CANCEL", 1, true, false)),
            ("the final re-sent", |h| {
                h.resp(1000, 403, 1, "INVITE", Some("B"))
            }),
            ("another final", |h| {
                h.resp(1000, 500, 1, "INVITE", Some("B"))
            }),
            ("ACK", |h| h.req(1000, "ACK", 1, true, true)),
            ("a 2xx after the failure", |h| {
                h.resp(1000, 200, 1, "INVITE", Some("C"))
            }),
            ("a late provisional", |h| {
                h.resp(1000, 183, 1, "INVITE", Some("B"))
            }),
            ("the 200 of a BYE", |h| {
                h.resp(1000, 200, 2, "BYE", Some("B"))
            }),
        ];
        for (what, follow) in follows {
            let h = rejected_then(follow);
            let c = h.only();
            assert_eq!(c.outcome, Outcome::Rejected, "{what}");
            assert_eq!(c.final_status, Some(403), "{what}");
            assert_eq!(c.hangup_by, None, "{what}");
            assert_eq!(c.answer_time, None, "{what}");
            assert_eq!(h.tracker.counters().late_messages, 1, "{what}");
            assert_eq!(h.tracker.counters().calls, 1, "{what}: no second call");
        }
    }

    #[test]
    fn messages_after_a_challenge_are_ignored_while_it_waits_for_credentials() {
        // A 407 keeps the attempt open for the INVITE with credentials; what else comes
        // meanwhile must not turn it into another outcome.
        for (what, follow) in [
            (
                "BYE",
                (|h: &mut Harness| h.req(1000, "BYE", 2, true, true)) as fn(&mut Harness),
            ),
            ("CANCEL", |h| h.req(1000, "CANCEL", 1, true, false)),
            ("2xx", |h| h.resp(1000, 200, 1, "INVITE", Some("C"))),
        ] {
            let mut h = Harness::new();
            h.req(0, "INVITE", 1, true, false);
            h.resp(50, 407, 1, "INVITE", Some("B"));
            follow(&mut h);
            assert!(h.records.is_empty(), "{what}: waiting for credentials");
            h.advance(400_000);
            let c = h.only();
            assert_eq!(c.outcome, Outcome::Rejected, "{what}");
            assert_eq!(c.final_status, Some(407), "{what}");
            assert_eq!(c.hangup_by, None, "{what}");
            assert_eq!(h.tracker.counters().ignored_after_final, 1, "{what}");
        }
    }

    /// A 2xx from the callee with a `Session-Expires` header.
    fn resp_with_timer(h: &mut Harness, at: i64, cseq: u32, method: &str, value: &str) {
        let text = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{method}{cseq}\r\nFrom: <sip:alice@example.com>;tag=A\r\nTo: <sip:bob@example.com>;tag=B\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nSession-Expires: {value}\r\nContent-Length: 0\r\n\r\n",
            h.call_id
        );
        h.feed(at, &text, false);
    }

    #[test]
    fn a_call_whose_session_timer_refreshes_stop_is_closed_not_held_for_hours() {
        // Session-Expires 90 s: refreshed (UPDATE) every 45 s while it lives.
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        resp_with_timer(&mut h, 1000, 1, "INVITE", "90;refresher=uac");
        h.req(1010, "ACK", 1, true, true);
        for (i, at) in (46_000..=226_000).step_by(45_000).enumerate() {
            let cseq = 2 + i as u32;
            h.req(at, "UPDATE", cseq, true, true);
            resp_with_timer(&mut h, at + 10, cseq, "UPDATE", "90;refresher=uac");
            h.advance(at + 20);
        }
        h.advance(226_010 + 90_000 + 32_000);
        assert!(
            h.records.is_empty(),
            "refreshed: alive until interval + linger of silence"
        );
        // The refreshes stop and no BYE is seen: the call is over a session interval and a
        // transaction's lifetime later, not after max_call_duration (4 h).
        h.advance(226_010 + 90_000 + 32_000 + 1_500);
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Answered);
        assert_eq!(c.closed_by, ClosedBy::Timeout);
        assert!(!c.complete);
        assert_eq!(c.end_time, None, "its end was not seen");

        // The interval of the initial 2xx alone (compact form `x`), no refresh ever.
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKINVITE1\r\nFrom: <sip:alice@example.com>;tag=A\r\nTo: <sip:bob@example.com>;tag=B\r\nCall-ID: call-1@test\r\nCSeq: 1 INVITE\r\nx: 1800\r\nContent-Length: 0\r\n\r\n";
        h.feed(500, text, false);
        h.advance(500 + 1_800_000 + 30_000);
        assert!(h.records.is_empty());
        h.advance(500 + 1_800_000 + 34_000);
        assert_eq!(h.only().closed_by, ClosedBy::Timeout);

        // Without a session timer (or with a value that is none) a silent call stays up.
        for value in [None, Some("0"), Some("soon"), Some("99999999999")] {
            let mut h = Harness::new();
            h.req(0, "INVITE", 1, true, false);
            match value {
                Some(v) => resp_with_timer(&mut h, 1000, 1, "INVITE", v),
                None => h.resp(1000, 200, 1, "INVITE", Some("B")),
            }
            h.advance(3_600_000);
            assert!(h.records.is_empty(), "{value:?}");
        }
    }

    #[test]
    fn only_a_call_that_rang_has_a_ring_time() {
        // sngrep_aaa.pcap's shape: a 407, the INVITE with credentials 34 s later, a 403. No
        // 180/183 ever came: no ring time (it showed the 34 s of the challenge as ringing).
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(150, 407, 1, "INVITE", Some("B"));
        h.req(200, "ACK", 1, true, true);
        h.req(34_130, "INVITE", 2, true, false);
        h.resp(34_330, 403, 2, "INVITE", Some("B"));
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Rejected);
        assert_eq!(c.auth_challenges, 1);
        assert_eq!(c.ringing_time, None);
        assert_eq!(c.ring_duration_s, None, "never rang");
        assert_eq!(c.time_to_answer_s, None);

        // Answered at once, without ringing: no ring time either.
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(300, 200, 1, "INVITE", Some("B"));
        h.req(310, "ACK", 1, true, true);
        h.req(5000, "BYE", 2, true, true);
        let c = h.only();
        assert_eq!(c.ring_duration_s, None);
        assert_eq!(c.time_to_answer_s, Some(0.3));

        // Given up after a 100 Trying only: abandoned, but it never rang.
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(20, 100, 1, "INVITE", None);
        h.req(9000, "CANCEL", 1, true, false);
        h.resp(9020, 487, 1, "INVITE", Some("B"));
        assert_eq!(h.only().outcome, Outcome::Abandoned);
        assert_eq!(h.only().ring_duration_s, None);

        // A call that rang: from the first 180 (after a challenge) to the answer.
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(100, 407, 1, "INVITE", Some("B"));
        h.req(150, "ACK", 1, true, true);
        h.req(400, "INVITE", 2, true, false);
        h.resp(1400, 180, 2, "INVITE", Some("B"));
        h.resp(6400, 200, 2, "INVITE", Some("B"));
        h.req(6410, "ACK", 2, true, true);
        h.req(9000, "BYE", 3, true, true);
        let c = h.only();
        assert_eq!(c.ring_duration_s, Some(5.0));
        assert_eq!(
            c.time_to_answer_s,
            Some(6.4),
            "from the caller's first INVITE"
        );
    }

    #[test]
    fn challenge_then_credentials_is_one_attempt() {
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(50, 407, 1, "INVITE", Some("B"));
        h.req(60, "ACK", 1, true, true);
        h.req(34_000, "INVITE", 2, true, false);
        h.resp(34_100, 200, 2, "INVITE", Some("C"));
        h.req(34_200, "ACK", 2, true, true);
        h.req(40_000, "BYE", 3, false, true);
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Answered);
        assert_eq!(c.auth_challenges, 1);
        assert_eq!(c.hangup_by, Some(Hangup::Callee));
    }

    #[test]
    fn the_record_is_made_at_the_bye_and_late_messages_are_absorbed() {
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(40, 180, 1, "INVITE", Some("B"));
        h.resp(2000, 200, 1, "INVITE", Some("B"));
        h.req(2010, "ACK", 1, true, true);
        h.req(9000, "BYE", 2, true, true);
        // No time has passed beyond the BYE: the record is there already.
        assert_eq!(h.records.len(), 1);
        assert_eq!(h.tracker.open_calls(), 0);
        h.resp(9010, 200, 2, "BYE", Some("B"));
        h.req(9500, "BYE", 2, true, true);
        h.resp(9600, 200, 1, "INVITE", Some("B"));
        h.req(9700, "INVITE", 1, true, false);
        h.advance(20_000);
        h.finish();
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Answered);
        assert_eq!(c.closed_by, ClosedBy::Bye);
        assert_eq!(c.hangup_by, Some(Hangup::Caller));
        assert_eq!(c.talk_duration_s, Some(7.0));
        assert_eq!(c.messages, 5);
        assert_eq!(h.tracker.counters().late_messages, 4);
        assert_eq!(h.tracker.ended_dialogs(), 1);
        // A HEP agent's last RTCP report comes after the BYE: counted, the record is final.
        let report = crate::decode::hep::rtcp_json(br#"{"ssrc":1,"type":200}"#).unwrap();
        let t = Timestamp::from_nanos(1_700_000_000_000_000_000 + 9_800_000_000);
        assert!(!h.tracker.hep_rtcp("call-1@test", t, &report));
        assert!(!h.tracker.hep_rtcp("no-such-call", t, &report));
        assert_eq!(h.tracker.counters().hep_rtcp_after_end, 1);
        assert_eq!(h.tracker.counters().hep_rtcp_unmatched, 1);
        // After the linger the dialog is forgotten.
        h.advance(60_000);
        assert_eq!(h.tracker.ended_dialogs(), 0);
    }

    #[test]
    fn a_new_invite_transaction_after_the_end_is_a_new_attempt() {
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(100, 486, 1, "INVITE", Some("B"));
        h.req(110, "ACK", 1, true, true);
        h.req(5000, "INVITE", 2, true, false);
        h.resp(5100, 180, 2, "INVITE", Some("C"));
        h.finish();
        assert_eq!(h.records.len(), 2);
        assert_eq!(h.records[0].outcome, Outcome::Busy);
        assert_eq!(h.records[1].outcome, Outcome::InProgress);
        assert_ne!(h.records[0].record_id, h.records[1].record_id);
    }

    #[test]
    fn a_bye_in_another_forks_dialog_does_not_end_the_answered_call() {
        // Campaign 2026-12-04a (sipp_fork_two_answers.pcap, SIPp): two forks answer one
        // INVITE (To-tags B, then C); the caller ACKs both, hangs up C at once (RFC 3261
        // §13.2.2.4) and talks on B, the dialog that answered, for two seconds.
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(500, 200, 1, "INVITE", Some("B"));
        h.req(501, "ACK", 1, true, true);
        h.resp(502, 200, 1, "INVITE", Some("C"));
        let in_c = |h: &mut Harness, at: i64, start: &str| {
            let text = format!(
                "{start}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKbyeC\r\nFrom: <sip:alice@example.com>;tag=A\r\nTo: <sip:bob@example.com>;tag=C\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
                h.call_id
            );
            h.feed(at, &text, start.starts_with("BYE"));
        };
        in_c(&mut h, 503, "BYE sip:bob@example.com SIP/2.0");
        in_c(&mut h, 505, "SIP/2.0 200 OK");
        assert!(h.records.is_empty(), "the second fork's BYE ended the call");
        // A re-INVITE putting the other fork's dialog on hold is not the call's hold.
        let body = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\na=sendonly\r\n";
        let reinvite = format!(
            "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKreC\r\nFrom: <sip:alice@example.com>;tag=A\r\nTo: <sip:bob@example.com>;tag=C\r\nCall-ID: {}\r\nCSeq: 3 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            h.call_id,
            body.len()
        );
        h.feed(504, &reinvite, true);
        h.req(2500, "BYE", 4, true, true);
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Answered);
        assert_eq!(c.forks, 2);
        assert_eq!(c.hold_count, 0);
        assert_eq!(c.hangup_by, Some(Hangup::Caller));
        let talk = c.end_time.unwrap().seconds_since(c.answer_time.unwrap());
        assert!((talk - 2.0).abs() < 1e-6, "talk {talk} s");
    }

    #[test]
    fn a_b2bua_legs_2xx_under_the_same_call_id_is_not_a_fork() {
        // erspan_sip_ipv4_udp.pcapng: a B2BUA keeps the Call-ID on its outgoing leg with a
        // From-tag of its own (L); the leg's 2xx (To-tag D) is captured before the caller's
        // (To-tag B). The caller's BYE in dialog A/B ends the call: B is not another fork's
        // tag, though it came second (the legs' From-tags differ).
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        let leg = |h: &mut Harness, at: i64, start: &str, cseq: &str| {
            let text = format!(
                "{start}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKleg{cseq}\r\nFrom: <sip:alice@example.com>;tag=L\r\nTo: <sip:bob@example.com>;tag=D\r\nCall-ID: {}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
                h.call_id
            );
            h.feed(at, &text, start.starts_with("BYE"));
        };
        leg(&mut h, 499, "SIP/2.0 200 OK", "1 INVITE");
        h.resp(500, 200, 1, "INVITE", Some("B"));
        h.req(501, "ACK", 1, true, true);
        h.req(2000, "BYE", 2, true, true);
        leg(&mut h, 2001, "BYE sip:bob@example.com SIP/2.0", "2 BYE");
        h.resp(2003, 200, 2, "BYE", Some("B"));
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Answered);
        assert_eq!(c.hangup_by, Some(Hangup::Caller));
        let talk = c.end_time.unwrap().seconds_since(c.answer_time.unwrap());
        assert!((talk - 1.501).abs() < 1e-6, "talk {talk} s");
    }

    #[test]
    fn a_forks_failure_does_not_end_the_attempt_a_2xx_answers_it() {
        // A proxy tapped on both sides: the caller's INVITE (branch c), two forks (f1, f2).
        let mut h = Harness::new();
        h.req_branch(0, "INVITE", 1, true, false, "z9hG4bKc");
        h.req_branch(5, "INVITE", 1, true, false, "z9hG4bKf1");
        h.req_branch(6, "INVITE", 1, true, false, "z9hG4bKf2");
        h.resp_branch(500, 486, 1, "INVITE", Some("X"), "z9hG4bKf1");
        assert!(
            h.records.is_empty(),
            "a fork's 486 is not the caller's answer"
        );
        h.resp_branch(2000, 200, 1, "INVITE", Some("Y"), "z9hG4bKf2");
        h.resp_branch(2001, 200, 1, "INVITE", Some("Y"), "z9hG4bKc");
        h.req(2100, "ACK", 1, true, true);
        h.req(8000, "BYE", 2, false, true);
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Answered);
        assert_eq!(c.forks, 2);
        assert_eq!(
            c.retransmissions, 0,
            "the proxy's copy of the 200 is no retransmission"
        );
    }

    /// One message of a call through a proxy on the tapped box: (time in ms, hop 1 or 2,
    /// from the caller's side, text). Hop 1 is UAC (10.0.0.1) → proxy (10.0.0.9, branch c),
    /// hop 2 proxy → UAS (10.0.0.2, branch p); one Call-ID.
    type HopMessage = (i64, u8, bool, String);

    fn proxied_call() -> Vec<HopMessage> {
        let req = |method: &str, cseq: u32, hop: u8, to_tag: bool, sdp: Option<&str>| {
            let branch = if hop == 1 { "z9hG4bKc" } else { "z9hG4bKp" };
            let to = if to_tag { ";tag=B" } else { "" };
            let body = sdp.map_or(String::new(), |ip| {
                format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n")
            });
            format!(
                "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.{};branch={branch}{method}{}\r\n\
                 From: <sip:alice@example.com>;tag=A\r\nTo: <sip:bob@example.com>{to}\r\nCall-ID: proxied@test\r\n\
                 CSeq: {cseq} {method}\r\nUser-Agent: hop{hop}\r\n{}Content-Length: {}\r\n\r\n{body}",
                if hop == 1 { 1 } else { 9 },
                if method == "INVITE" || method == "ACK" { String::new() } else { cseq.to_string() },
                if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" },
                body.len()
            )
        };
        let resp = |status: u16, cseq: u32, method: &str, hop: u8, to_tag: bool| {
            let branch = if hop == 1 { "z9hG4bKc" } else { "z9hG4bKp" };
            let branch = format!(
                "{branch}{}",
                if method == "INVITE" {
                    String::new()
                } else {
                    format!("{method}{cseq}")
                }
            );
            let to = if to_tag { ";tag=B" } else { "" };
            format!(
                "SIP/2.0 {status} Whatever\r\nVia: SIP/2.0/UDP 10.0.0.1;branch={branch}\r\n\
                 From: <sip:alice@example.com>;tag=A\r\nTo: <sip:bob@example.com>{to}\r\nCall-ID: proxied@test\r\n\
                 CSeq: {cseq} {method}\r\nServer: uas\r\nContent-Length: 0\r\n\r\n"
            )
        };
        vec![
            (0, 1, true, req("INVITE", 1, 1, false, Some("10.0.0.1"))),
            (1, 1, false, resp(100, 1, "INVITE", 1, false)),
            (3, 2, true, req("INVITE", 1, 2, false, Some("10.0.0.9"))),
            (4, 2, false, resp(100, 1, "INVITE", 2, false)),
            (50, 2, false, resp(180, 1, "INVITE", 2, true)),
            (51, 1, false, resp(180, 1, "INVITE", 1, true)),
            (900, 2, false, resp(200, 1, "INVITE", 2, true)),
            (901, 1, false, resp(200, 1, "INVITE", 1, true)),
            (910, 1, true, req("ACK", 1, 1, true, None)),
            (911, 2, true, req("ACK", 1, 2, true, None)),
            (5000, 1, true, req("BYE", 2, 1, true, None)),
            (5001, 2, true, req("BYE", 2, 2, true, None)),
            (5010, 2, false, resp(200, 2, "BYE", 2, true)),
            (5011, 1, false, resp(200, 2, "BYE", 1, true)),
        ]
    }

    impl Harness {
        fn feed_hop(&mut self, (at, hop, from_caller, text): &HopMessage) {
            let (near, far) = if *hop == 1 {
                ("10.0.0.1:5060", "10.0.0.9:5060")
            } else {
                ("10.0.0.9:5060", "10.0.0.2:5060")
            };
            let (src, dst) = if *from_caller {
                (near, far)
            } else {
                (far, near)
            };
            let msg = sip::parse(text.as_bytes()).unwrap();
            let meta = MessageMeta {
                frame: 0,
                time: Timestamp::from_nanos(1_700_000_000_000_000_000 + at * 1_000_000),
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                transport: Transport::Udp,
            };
            let sdp = summarize_sdp(&msg);
            let records = &mut self.records;
            self.tracker
                .message(&meta, &msg, sdp.as_ref(), &mut |r| records.push(r));
        }
    }

    /// A call through a proxy on the tapped box, whose second hop's INVITE reached the
    /// tracker before the first hop's (two capture threads): the call adopts the INVITE
    /// captured first, and its record is the one the time-ordered feed gives — the first
    /// hop's addresses, invite time, parties, user agent and offer, and the same id.
    #[test]
    fn the_second_hops_invite_first_still_gives_the_first_hops_call() {
        let call = proxied_call();
        let mut ordered = Harness::new();
        for m in &call {
            ordered.feed_hop(m);
        }
        let want = ordered.only().clone();
        assert_eq!(want.caller_address, "10.0.0.1:5060");
        assert_eq!(want.callee_address, "10.0.0.9:5060");
        assert_eq!(want.outcome, Outcome::Answered);
        assert_eq!(want.user_agents.caller.as_deref(), Some("hop1"));

        // Hop 2's INVITE (and its 100) first, then hop 1's, then the rest.
        let mut arrival = vec![
            call[2].clone(),
            call[3].clone(),
            call[0].clone(),
            call[1].clone(),
        ];
        arrival.extend(call[4..].iter().cloned());
        let mut shuffled = Harness::new();
        for m in &arrival {
            shuffled.feed_hop(m);
        }
        assert_eq!(shuffled.only(), &want);
        // The same with hop 2's INVITE first and nothing else out of order.
        let mut arrival = vec![call[2].clone(), call[0].clone(), call[1].clone()];
        arrival.extend(call[3..].iter().cloned());
        let mut shuffled = Harness::new();
        for m in &arrival {
            shuffled.feed_hop(m);
        }
        assert_eq!(shuffled.only(), &want);
    }

    #[test]
    fn the_proxys_failure_to_the_caller_ends_the_attempt() {
        let mut h = Harness::new();
        h.req_branch(0, "INVITE", 1, true, false, "z9hG4bKc");
        h.req_branch(5, "INVITE", 1, true, false, "z9hG4bKf1");
        h.resp_branch(500, 486, 1, "INVITE", Some("X"), "z9hG4bKf1");
        h.resp_branch(501, 486, 1, "INVITE", Some("X"), "z9hG4bKc");
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Busy);
        assert_eq!(c.end_time, Some(c.last_message_time));
    }

    #[test]
    fn cancel_ends_with_the_487_or_after_the_linger() {
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.resp(40, 180, 1, "INVITE", Some("B"));
        h.req(5000, "CANCEL", 1, true, false);
        h.resp(5010, 200, 1, "CANCEL", Some("B"));
        assert!(h.records.is_empty(), "a 200 may still cross the CANCEL");
        h.resp(5020, 487, 1, "INVITE", Some("B"));
        h.req(5030, "ACK", 1, true, true);
        let c = h.only();
        assert_eq!(c.outcome, Outcome::Abandoned);
        assert_eq!(c.closed_by, ClosedBy::Cancel);
        assert_eq!(c.hangup_by, Some(Hangup::Caller));
        assert_eq!(h.tracker.counters().late_messages, 1);

        // Some agents (SIPp's stock scenarios) send the CANCEL on a branch of its own and
        // answer the INVITE on it: an unknown branch is no fork, the 487 ends the call.
        let mut h = Harness::new();
        h.req_branch(0, "INVITE", 1, true, false, "z9hG4bKinvite");
        h.req_branch(5000, "CANCEL", 1, true, false, "z9hG4bKcancel");
        h.resp_branch(5010, 200, 1, "CANCEL", Some("B"), "z9hG4bKcancel");
        h.resp_branch(5020, 487, 1, "INVITE", Some("B"), "z9hG4bKcancel");
        assert_eq!(h.only().outcome, Outcome::Abandoned);

        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.req(5000, "CANCEL", 1, true, false);
        h.resp(5010, 200, 1, "INVITE", Some("B"));
        h.req(5020, "ACK", 1, true, true);
        h.req(9000, "BYE", 2, true, true);
        assert_eq!(
            h.only().outcome,
            Outcome::Answered,
            "the 200 crossed the CANCEL"
        );

        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.req(5000, "CANCEL", 1, true, false);
        h.advance(30_000);
        assert!(h.records.is_empty());
        h.advance(40_000);
        assert_eq!(h.only().outcome, Outcome::Abandoned);
        assert_eq!(h.only().closed_by, ClosedBy::Cancel);
    }

    #[test]
    fn a_bye_first_seen_makes_a_partial_record() {
        let mut h = Harness::new();
        h.req(0, "BYE", 7, false, true);
        h.resp(10, 200, 7, "BYE", Some("A"));
        let c = h.only();
        assert!(c.started_before_capture);
        assert!(!c.complete);
        assert!(!c.roles_known, "a BYE does not tell who called");
        assert_eq!(c.outcome, Outcome::Answered);
        assert_eq!(c.closed_by, ClosedBy::Bye);
        assert_eq!(c.invite_time, None);
        assert_eq!(c.answer_time, None);
        assert_eq!(c.end_time, Some(c.first_message_time));
        // The caller is named as the sender of the first request seen: the BYE's.
        assert_eq!(c.caller.user.as_deref(), Some("bob"));
        assert_eq!(c.hangup_by, Some(Hangup::Caller));
        assert_eq!(h.tracker.counters().started_before_capture, 1);
        assert_eq!(h.tracker.counters().late_messages, 1);
    }

    #[test]
    fn the_200_of_a_bye_first_seen_makes_a_partial_record() {
        let mut h = Harness::new();
        h.resp(10, 200, 2, "BYE", Some("B"));
        let c = h.only();
        assert!(c.started_before_capture);
        assert_eq!(c.closed_by, ClosedBy::Bye);
        assert_eq!(c.caller.user.as_deref(), Some("alice"));
        assert_eq!(
            c.caller_address, CALLER,
            "the BYE came from where its 200 goes"
        );
    }

    #[test]
    fn a_reinvite_first_seen_opens_a_connected_partial_call() {
        let mut h = Harness::new();
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\na=sendonly\r\n";
        let text = format!(
            "INVITE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKr\r\nFrom: <sip:bob@example.com>;tag=B\r\nTo: <sip:alice@example.com>;tag=A\r\nCall-ID: call-1@test\r\nCSeq: 3 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        h.feed(0, &text, false);
        assert_eq!(h.tracker.open_calls(), 1);
        h.req(60_000, "BYE", 4, true, true);
        let c = h.only();
        assert!(c.started_before_capture);
        assert_eq!(c.outcome, Outcome::Answered);
        assert_eq!(c.state, State::Ended);
        assert_eq!(c.hold_count, 1);
        assert_eq!(c.media.offer.as_ref().unwrap().media[0].port, 4000);
        // The re-INVITE came from bob (named caller); alice's BYE is the callee's.
        assert_eq!(c.hangup_by, Some(Hangup::Callee));
    }

    #[test]
    fn provisional_responses_first_seen_tell_the_roles_and_the_answer() {
        let mut h = Harness::new();
        h.resp(0, 100, 1, "INVITE", None);
        h.resp(500, 180, 1, "INVITE", Some("B"));
        h.resp(3000, 200, 1, "INVITE", Some("B"));
        h.req(3010, "ACK", 1, true, true);
        h.req(9000, "BYE", 2, false, true);
        let c = h.only();
        assert!(c.started_before_capture && c.roles_known);
        assert_eq!(c.caller.user.as_deref(), Some("alice"));
        assert!(c.answer_time.is_some());
        assert_eq!(c.talk_duration_s, Some(6.0));
        assert_eq!(c.hangup_by, Some(Hangup::Callee));
        assert_eq!(c.time_to_answer_s, None, "the INVITE was not seen");
    }

    /// ppp_sip_resp.pcap (PcapPlusPlus): 100 Trying with a To-tag, 180, 200 of INVITE, the
    /// INVITE before the capture. The 100 cannot tell the initial INVITE from a re-INVITE,
    /// the 180 can: the 200 is the answer (it was reported answered without an answer time).
    #[test]
    fn a_ringing_after_an_ambiguous_first_message_tells_the_answer() {
        let mut h = Harness::new();
        h.resp(0, 100, 1, "INVITE", Some("B"));
        h.resp(500, 180, 1, "INVITE", Some("B"));
        h.resp(3000, 200, 1, "INVITE", Some("B"));
        h.req(3010, "ACK", 1, true, true);
        h.req(9000, "BYE", 2, false, true);
        let c = h.only();
        assert!(c.started_before_capture && c.roles_known);
        assert_eq!(c.caller_address, CALLER);
        assert_eq!(c.final_status, Some(200));
        assert!(c.answer_time.is_some());
        assert_eq!(c.talk_duration_s, Some(6.0));
        assert_eq!(c.hangup_by, Some(Hangup::Callee));
        // A 2xx alone after such a 100 stays a response to an INVITE of unknown kind.
        let mut h = Harness::new();
        h.resp(0, 100, 1, "INVITE", Some("B"));
        h.resp(3000, 200, 1, "INVITE", Some("B"));
        h.req(9000, "BYE", 2, false, true);
        assert_eq!(h.only().answer_time, None);
    }

    #[test]
    fn a_failure_first_seen_is_a_partial_rejected_call() {
        let mut h = Harness::new();
        h.resp(0, 486, 1, "INVITE", Some("B"));
        h.req(10, "ACK", 1, true, true);
        let c = h.only();
        assert!(c.started_before_capture && c.roles_known);
        assert_eq!(c.outcome, Outcome::Busy);
        assert_eq!(h.tracker.counters().late_messages, 1);
    }

    #[test]
    fn a_lone_ack_is_a_partial_call_of_unknown_state() {
        let mut h = Harness::new();
        h.req(0, "ACK", 1, true, true);
        h.advance(301_000 + 1000);
        let c = h.only();
        assert!(c.started_before_capture);
        assert_eq!(c.outcome, Outcome::InProgress, "nothing says how it went");
        assert_eq!(c.closed_by, ClosedBy::Timeout);
    }

    #[test]
    fn stray_responses_and_other_dialogs_make_no_call() {
        let mut h = Harness::new();
        h.resp(0, 200, 5, "OPTIONS", Some("B"));
        h.resp(1, 200, 6, "REGISTER", Some("B"));
        h.resp(2, 401, 7, "REGISTER", None);
        h.req(3, "NOTIFY", 8, true, true);
        h.req(4, "REFER", 9, true, true);
        h.req(5, "OPTIONS", 10, true, false);
        h.req(6, "BYE", 11, true, false); // a BYE without To-tag is no dialog's
        h.finish();
        assert!(h.records.is_empty(), "{:#?}", h.records);
        assert_eq!(h.tracker.counters().calls, 0);
        // The tagged 200 to OPTIONS, NOTIFY and REFER; the tagless BYE is a transaction.
        assert_eq!(h.tracker.counters().orphan_messages, 3);
    }

    #[test]
    fn stray_byes_with_made_up_call_ids_open_a_bounded_number_of_calls_per_minute() {
        let limits = CallLimits {
            max_partial_calls_per_minute: 100,
            ..CallLimits::default()
        };
        let mut h = Harness::with(limits);
        for i in 0..1000 {
            h.call_id = format!("stray-{i}");
            h.req(i, "BYE", 2, true, true);
        }
        assert_eq!(h.records.len(), 100);
        assert_eq!(h.tracker.counters().partial_calls_refused, 900);
        // A new minute, a new budget; calls with their INVITE are never refused by it.
        h.call_id = "later".into();
        h.req(61_000, "BYE", 2, true, true);
        h.call_id = "fresh".into();
        h.req(61_001, "INVITE", 1, true, false);
        assert_eq!(h.records.len(), 101);
        assert_eq!(h.tracker.open_calls(), 1);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_call_in_setup() {
        let limits = CallLimits {
            max_calls: 3,
            ..CallLimits::default()
        };
        let mut h = Harness::with(limits);
        h.call_id = "answered".into();
        h.req(0, "INVITE", 1, true, false);
        h.resp(10, 200, 1, "INVITE", Some("B"));
        for (i, id) in ["junk-1", "junk-2", "real"].iter().enumerate() {
            h.call_id = (*id).into();
            h.req(100 + i as i64, "INVITE", 1, true, false);
        }
        assert_eq!(h.records.len(), 1);
        assert_eq!(h.records[0].call_id, "junk-1");
        assert_eq!(h.records[0].closed_by, ClosedBy::Evicted);
        assert_eq!(h.records[0].outcome, Outcome::InProgress);
        assert_eq!(h.tracker.counters().evicted_in_setup, 1);
        assert_eq!(h.tracker.open_calls(), 3);
        // A stray re-INVITE opens a connected partial call; it may be evicted too.
        h.call_id = "stray".into();
        h.req(150, "INVITE", 5, true, true);
        assert_eq!(h.records[1].call_id, "junk-2");
        h.call_id = "next".into();
        h.req(160, "INVITE", 1, true, false);
        assert_eq!(h.records[2].call_id, "real");
        h.call_id = "next2".into();
        h.req(170, "INVITE", 1, true, false);
        assert_eq!(h.records[3].call_id, "stray", "joined mid-call: evictable");
        assert_eq!(h.records[3].closed_by, ClosedBy::Evicted);
        assert_eq!(h.tracker.counters().evicted_in_setup, 4);
        assert_eq!(h.tracker.open_calls(), 3);
        // Only answered calls left: a new one is refused, counted.
        for id in ["next", "next2"] {
            h.call_id = id.into();
            h.resp(200, 200, 1, "INVITE", Some("B"));
        }
        h.call_id = "late".into();
        h.req(300, "INVITE", 1, true, false);
        assert_eq!(h.tracker.counters().dropped_at_capacity, 1);
        assert_eq!(h.tracker.open_calls(), 3);
    }

    #[test]
    fn header_text_is_capped_and_the_bytes_held_are_bounded() {
        let mut h = Harness::new();
        let long = "x".repeat(4096);
        let text = format!(
            "INVITE sip:{long}@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{long}\r\nFrom: \"{long}\" <sip:{long}@example.com>;tag={long}\r\nTo: \"{long}\" <sip:{long}@example.com>\r\nCall-ID: {long}\r\nCSeq: 1 INVITE\r\nUser-Agent: {long}\r\nP-Asserted-Identity: \"{long}\" <sip:{long}@example.com>\r\nDiversion: <sip:{long}@example.com>\r\nX-CID: {long}\r\nContent-Length: 0\r\n\r\n"
        );
        h.feed(0, &text, true);
        let held = h.tracker.held_bytes();
        assert!(held < 8 * 1024, "one junk call holds {held} bytes");
        assert!(h.tracker.counters().fields_truncated >= 10);
        h.finish();
        let c = h.only();
        assert_eq!(c.call_id.len(), MAX_TEXT_BYTES);
        assert_eq!(
            c.caller.display_name.as_ref().unwrap().len(),
            MAX_TEXT_BYTES
        );
        assert_eq!(c.user_agents.caller.as_ref().unwrap().len(), MAX_TEXT_BYTES);
        assert_eq!(h.tracker.held_bytes(), 0);
    }

    #[test]
    fn queue_entries_of_ended_calls_stay_accounted_until_pruned() {
        let mut h = Harness::new();
        for i in 0..50 {
            h.call_id = format!("ended-{i}");
            h.req(i, "INVITE", 1, true, false);
            h.resp(i + 1, 486, 1, "INVITE", Some("B"));
        }
        assert_eq!(h.tracker.open_calls(), 0);
        // The 50 calls are gone; their copies of the key wait in the eviction queue, which
        // is pruned only when it outgrows the table, and are memory held all the same.
        let queued = h.tracker.held_bytes() - h.tracker.ended_dialogs() * TOMBSTONE_BYTES;
        let expected: usize = (0..50)
            .map(|i| heap(format!("ended-{i}").len()) + ORDER_SLOT_BYTES)
            .sum();
        assert_eq!(queued, expected);
        h.finish();
        assert_eq!(
            h.tracker.held_bytes(),
            h.tracker.ended_dialogs() * TOMBSTONE_BYTES
        );
    }

    /// A call record's counters saturate at 2^32 − 1 (a dialog of four billion messages):
    /// at the top they were written as plain numbers. The record names them, counted.
    #[test]
    fn a_saturated_call_counter_is_named_in_the_record() {
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        let call = h.tracker.calls.get_mut("call-1@test").unwrap();
        call.messages = u32::MAX - 2;
        // Two messages more: the first leaves it one below the top, the second reaches it.
        h.req(10, "INVITE", 1, true, false);
        h.req(20, "INVITE", 1, true, false);
        h.finish();
        let record = h.records.last().unwrap();
        assert_eq!(record.messages, u32::MAX);
        assert_eq!(record.retransmissions, 2);
        assert_eq!(record.saturated, ["messages"]);
        assert_eq!(h.tracker.counters().calls_with_saturated_counters, 1);
        // One below the top is a count.
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        h.tracker.calls.get_mut("call-1@test").unwrap().messages = u32::MAX - 2;
        h.req(10, "INVITE", 1, true, false);
        h.finish();
        assert!(h.records.last().unwrap().saturated.is_empty());
        assert_eq!(h.tracker.counters().calls_with_saturated_counters, 0);
    }

    /// The worst case of the call tracker's tables bounded by count, at the defaults
    /// (README, "Threat model and bounds"); printed with `--nocapture`.
    #[test]
    fn worst_cases_of_the_call_tables() {
        let d = CallLimits::default();
        let seen = table_share(std::mem::size_of::<u64>());
        let rows = [
            ("ended dialogs (tombstones)", d.max_ended, TOMBSTONE_BYTES),
            (
                "out-of-dialog transactions seen",
                MAX_OUT_OF_DIALOG_SEEN,
                seen,
            ),
        ];
        for (what, count, each) in rows {
            println!(
                "{what}: {count} x {each} B = {:.1} MiB",
                (count * each) as f64 / 1048576.0
            );
        }
        println!("calls: max_bytes {} MiB", d.max_bytes >> 20);
        const { assert!(TOMBSTONE_BYTES < 256) };
    }

    #[test]
    fn a_call_is_accounted_as_the_allocator_holds_it() {
        // A call is accounted at least as the allocator holds its box and its strings.
        let mut h = Harness::new();
        h.req(0, "INVITE", 1, true, false);
        let held = h.tracker.held_bytes();
        assert!(held >= heap(std::mem::size_of::<Call>()) + ENTRY_BYTES + ORDER_SLOT_BYTES);
    }

    #[test]
    fn the_byte_bound_evicts_like_the_count_bound() {
        let limits = CallLimits {
            max_bytes: 20_000,
            ..CallLimits::default()
        };
        let mut h = Harness::with(limits);
        for i in 0..100 {
            h.call_id = format!("junk-{i}");
            h.req(i, "INVITE", 1, true, false);
            let calls = h.tracker.held_bytes() - h.tracker.ended_dialogs() * TOMBSTONE_BYTES;
            assert!(calls < 20_000 + 8 * 1024, "{calls}");
        }
        assert!(h.tracker.counters().evicted_in_setup > 50);
    }
}
