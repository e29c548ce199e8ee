//! Correlation sharded by call, so that several capture threads correlate at the same time
//! instead of taking turns at one lock (the daemon; replay keeps one [`Correlator`]).
//!
//! A call's SIP and its RTP arrive on different flows — the kernel's fanout spreads them over
//! different capture threads — yet must meet in one correlator. So:
//!
//! - **SIP goes to the shard of its Call-ID** (a keyed hash of [`calls::call_key`], see
//!   below), and so do RTCP reports relayed by HEP (their correlation id is the Call-ID).
//! - **RTP and RTCP go to the shard that learned their media endpoint.** When a shard's SDP
//!   teaches it an endpoint ([`Correlator::sip_learning`]), the endpoint → shard route is
//!   written into a table every capture thread reads ([`MediaRoutes`]: striped read-write
//!   locks, so two threads rarely touch the same cache line). A datagram takes the route of its
//!   destination, else of its source (an endpoint behind NAT), as [`super::media`] attaches a
//!   stream. The newest announcement of an address wins, as in one correlator.
//! - **Other datagrams** (orphan RTP, anything else) go to a shard chosen by a keyed hash of
//!   the unordered address pair, so both directions of an orphan flow are measured in one
//!   place.
//! - A route lives while its shard still knows the endpoint (open, ended within the linger,
//!   or forgotten by its call beyond 32 endpoints while a stream of the call still runs
//!   through it: [`super::media::MediaTracker::knows_endpoint`]; swept, that stream's later
//!   packets went to an orphan's shard and were measured twice, counted in
//!   `endpoints_kept_for_streams`): [`ShardedCorrelator::advance`]
//!   sweeps one stripe of the table per tick. The table is bounded (the endpoints every shard
//!   may hold, twice); a route beyond it is not written and counted
//!   ([`ShardStats::routes_dropped_at_capacity`]): that endpoint's RTP then goes where an
//!   orphan's would.
//!
//! Each shard is one [`Correlator`] behind its own mutex, holding its share of every capacity
//! bound (calls, bytes, streams, endpoints, orphan records a minute: the configured total
//! divided by the number of shards, rounded up), so the memory bound is the configured one
//! whatever the shard count. A lock that was taken when a thread wanted it is counted
//! ([`ShardStats::lock_waits`]): the evidence that threads do not serialise.
//!
//! **The placement is keyed.** Call-IDs and addresses are chosen by whoever sends packets.
//! With a fixed function (it was an unkeyed SipHash of the Call-ID and a fixed multiply of
//! the addresses), a sender could compute Call-IDs, or orphan address pairs, that all land in
//! one shard: one capture thread would then do all the correlation, the others waiting for its
//! lock, and the capture's rings would overflow at a fraction of the load the box takes
//! (speed and drops; not memory, which every shard bounds anyway). So the shard of a Call-ID
//! and of an address pair, and the stripe of a route, are a hash keyed as the tables are
//! ([`super::hasher::KeyedHasher`]: the process's key from the operating system's random
//! source, and a seed of its own per correlator), which a sender neither knows nor sees
//! (what a shard holds is shown only summed; the per-minute records of orphans and
//! registrations carry the shard in their id, which a sender cannot read back off the wire).
//! A call's records do not depend on the shard it lands in (they are one correlator's; the
//! tests assert on that, never on a placement: `tests::every_call_meets_its_media_in_one_shard`,
//! `tests::placement_is_keyed_and_spreads_crafted_call_ids`); only the ids of the per-minute
//! records name their shard, and B2BUA legs are joined as below.
//!
//! # Capture order: the SIP reorder window
//!
//! Each capture thread delivers its packets in capture order, but across threads one call's
//! packets can reach its shard out of order by up to a ring block timeout (a thread's block
//! is handed over when full or when the timeout passes): the two hops of a call through a
//! proxy on the tapped box (UAC → proxy, proxy → UAS: one Call-ID, two flows, often two
//! threads) interleave, so the second hop's INVITE can come first, a 200 before its 180,
//! the ACK or BYE before the 200, a 487 before the CANCEL. The call state machine is built
//! on capture order in many places (the first INVITE is the caller's, the record is made
//! at the BYE or the final response and is final, a CANCEL after the final response is too
//! late, ...), so rather than make every transition order-tolerant — a set of special cases
//! that could not be shown complete — each shard puts its SIP back in capture order
//! ([`ShardedCorrelator::with_reorder_window`]; the daemon sets it when it has more than one
//! capture thread in all: two ring block timeouts and 50 ms, the longest one thread's
//! packets can trail a sibling's):
//!
//! - a message waits in its shard's window until the shard has seen a capture time the
//!   window later (a later message, or the tick's [`ShardedCorrelator::advance`]); then the
//!   waiting messages are applied earliest first (ties in arrival order), so the call
//!   tracker sees exactly the time-ordered feed one thread gives, and the records are the
//!   same (`tests::proxied_calls_delivered_by_two_threads_give_the_time_ordered_records`);
//! - time in a shard ([`Correlator::advance`]: timeouts, the record grace) runs the window
//!   behind the tick, so a record is not made before the media captured within its grace
//!   has come from every thread;
//! - the window is bounded (its share of [`WINDOW_MAX_MESSAGES`] and [`WINDOW_MAX_BYTES`]
//!   per shard): beyond it, the earliest message is applied before its window passed
//!   ([`ShardStats::sip_window_full`]); a message more than the window late is applied
//!   after later ones ([`ShardStats::sip_late`]); both are counted, as are the messages the
//!   window put back in order ([`ShardStats::sip_reordered`]). Even then, the tracker adopts
//!   an INVITE of the call's transaction captured before the one it opened the call with,
//!   and keeps the earliest ringing and answer times ([`super::calls`]), so a late hop still
//!   gives the first hop's addresses;
//! - RTCP reports relayed by HEP wait in the window too (their call's INVITE may be
//!   waiting there); a report that finds the window full is applied at once, counted;
//! - SIP relayed by HEP carries its sender's time: from a sender whose clock is behind the
//!   local one by more than the window, it is applied as it comes (counted as late), as
//!   without a window;
//! - a waiting message is kept as the parse it came as, owning its bytes
//!   ([`OwnedMessage`]: the bytes and the ranges of them the parse found, viewed back as the
//!   same [`SipMessage`] when applied), and counted against the window's byte bound at all
//!   it holds. It used to be kept as its bytes and parsed again when applied, which was
//!   91 % of what the window cost (`examples/sip_window_cost.rs`, figures in
//!   `docs/performance.md`, "The reorder window's second parse");
//! - the cost: a call's SIP is applied (and its record made, its media routes written, its
//!   state shown on the status page) a window later; the RTP hold is that much longer, so
//!   RTP that comes before its SDP is applied is held, not made an orphan. With one capture
//!   thread the window is zero and every message is applied as it comes.
//!
//! What differs from one correlator, and why it is accepted:
//! - RTP and SIP are not put in one order: RTP is measured as it comes (its own flow is in
//!   order, on one thread), while the SIP around it may wait in the window. What a stream
//!   is attributed to depends on the SDP having been applied first, which the hold below
//!   ensures.
//! - RTP that a thread sees before another thread has handled the SDP announcing its endpoint
//!   is on probation (or an orphan) in the pair's shard until the route exists; with fanout by
//!   flow and the SDP sent before the media, that is a matter of the first packets at most.
//! - A route is written when its shard applies the SDP, so with a window a window late, and
//!   the newest *applied* announcement of an address wins. RTP that already flows under a
//!   newer announcement still in the window (routed by its other endpoint) can meanwhile
//!   follow an older announcement of the same address by a call of another shard, applied
//!   just then. RTP ignores RTCP-only routes, as the media tracker ignores RTCP-only
//!   endpoints for RTP (found 2026-12-02 with `teledge-gencap`, whose callee RTP ports are
//!   consecutive, so one call's RTCP port is the next call's RTP port: 81 of 300 calls lost
//!   packets to 80 separate stream records; `examples/sip_window_cost.rs` with `SHOW=1`
//!   compares). What is left needs one RTP address announced by two calls of different
//!   shards within one window: a port reused within a quarter of a second.
//! - The legs of a B2BUA with direct media (two Call-IDs announcing the same endpoints) are
//!   joined only when both calls fall in one shard; otherwise the stream belongs to the leg
//!   that announced last. One shard behaves exactly like one correlator.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, TryLockError};

use super::calls::{self, CallCounters, CallLimits};
use super::footprint::heap;
use super::hasher::{KeyedHasher, KeyedMap};
use super::media::{MediaCounters, MediaLimits};
use super::{rtcp_again, ActiveCall, Correlate, Correlator, ListenableCall, RtcpSeen};
use crate::decode::hep::RtcpJson;
use crate::decode::sip::{OwnedMessage, SipMessage};
use crate::dissect::{DatagramMeta, MessageMeta};
use crate::record::{ClosedBy, Record};
use crate::time::Timestamp;

/// Most shards: more than any edge box has cores, many times over.
pub const MAX_SHARDS: usize = 256;

/// Stripes of the route table: a power of two, enough that threads seldom share one.
const ROUTE_STRIPES: usize = 64;

/// Counters of the sharding itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shards: usize,
    /// Times a thread found the shard it needed locked by another thread and waited.
    pub lock_waits: u64,
    /// Media endpoint routes held now.
    pub routes: usize,
    /// Routes not written because the table was full.
    pub routes_dropped_at_capacity: u64,
    /// SIP messages that reached their shard after a message captured later (put back in
    /// capture order by the reorder window, unless also counted in `sip_late`).
    pub sip_reordered: u64,
    /// SIP messages that came more than the reorder window late: applied after a message
    /// captured later (the call tracker adopts an earlier INVITE even then).
    pub sip_late: u64,
    /// SIP messages applied before their window passed because the window was full.
    pub sip_window_full: u64,
}

/// Calls and their media, sharded by call (see the module doc). Shared by reference between
/// threads; every method takes `&self`.
#[derive(Debug)]
pub struct ShardedCorrelator {
    shards: Box<[Mutex<Shard>]>,
    /// Keys the shard of a Call-ID and of an orphan address pair (see the module doc).
    placement: KeyedHasher,
    routes: MediaRoutes,
    lock_waits: AtomicU64,
    /// The SIP reorder window ([`ShardedCorrelator::with_reorder_window`]); zero: none.
    window: std::time::Duration,
    /// Most messages and bytes each shard's window holds.
    window_max_messages: usize,
    window_max_bytes: usize,
    reorder: ReorderCounters,
}

/// A shard: its correlator and the SIP waiting in its reorder window.
#[derive(Debug)]
struct Shard {
    correlator: Correlator,
    window: SipWindow,
}

impl std::ops::Deref for Shard {
    type Target = Correlator;
    fn deref(&self) -> &Correlator {
        &self.correlator
    }
}

impl std::ops::DerefMut for Shard {
    fn deref_mut(&mut self) -> &mut Correlator {
        &mut self.correlator
    }
}

/// Most SIP messages, and bytes, the reorder windows of all shards hold together (each
/// shard its share): at 1,000 call attempts a second, about ten messages each, a 250 ms
/// window holds 2,500 messages. A message counts all it holds: its bytes, its parse
/// ([`OwnedMessage::held_bytes`]) and its slot — about 1.4 KiB for a 700-byte INVITE with
/// 14 headers, so the bytes bind first for messages that size (about 6,000 of them).
pub const WINDOW_MAX_MESSAGES: usize = 16_384;
pub const WINDOW_MAX_BYTES: usize = 8 << 20;

/// What a waiting SIP message holds beside its owned form ([`OwnedMessage::held_bytes`]):
/// its slot in the window's heap.
const WINDOWED_SIP_BYTES: usize = std::mem::size_of::<Pending>();

/// Counters of the SIP reorder windows ([`ShardedCorrelator::with_reorder_window`]).
#[derive(Debug, Default)]
struct ReorderCounters {
    reordered: AtomicU64,
    late: AtomicU64,
    window_full: AtomicU64,
}

/// SIP messages of one shard waiting for their reorder window to pass, earliest capture
/// time first.
#[derive(Debug, Default)]
struct SipWindow {
    pending: std::collections::BinaryHeap<std::cmp::Reverse<Pending>>,
    bytes: usize,
    /// The latest capture time this shard has seen (SIP, or the time `advance` brought).
    newest: Timestamp,
    /// The capture time of the last message applied from the window.
    applied: Timestamp,
    /// Arrival order, to keep messages of one capture time in the order they came.
    arrivals: u64,
}

#[derive(Debug)]
struct Pending {
    time: Timestamp,
    arrival: u64,
    /// Bytes accounted against the window's bound.
    bytes: usize,
    event: Windowed,
}

/// What waits in a window: SIP, and RTCP reports relayed by HEP (which must find the call
/// their Call-ID names, whose INVITE may be waiting too).
#[derive(Debug)]
enum Windowed {
    /// The message parsed when it came, owning its bytes (viewed, not parsed, when applied).
    Sip {
        meta: MessageMeta,
        msg: Box<OwnedMessage>,
    },
    HepRtcp {
        call_id: Box<str>,
        report: Box<RtcpJson>,
    },
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.arrival) == (other.time, other.arrival)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.arrival).cmp(&(other.time, other.arrival))
    }
}

impl ShardedCorrelator {
    /// `shards` correlators (at least one, at most [`MAX_SHARDS`]) sharing the bounds in
    /// `calls` and `media` between them.
    pub fn new(shards: usize, calls: CallLimits, media: MediaLimits) -> Self {
        let n = shards.clamp(1, MAX_SHARDS);
        let share = |total: usize| total.div_ceil(n).max(1);
        let calls = CallLimits {
            max_calls: share(calls.max_calls),
            max_bytes: share(calls.max_bytes),
            max_ended: share(calls.max_ended),
            max_partial_calls_per_minute: share(calls.max_partial_calls_per_minute),
            max_grace_records: share(calls.max_grace_records),
            max_grace_bytes: share(calls.max_grace_bytes),
            ..calls
        };
        let media_share = MediaLimits {
            max_streams: share(media.max_streams),
            max_endpoints: share(media.max_endpoints),
            max_bytes: share(media.max_bytes),
            max_candidates: share(media.max_candidates),
            max_orphan_records_per_minute: share(media.max_orphan_records_per_minute),
            ..media
        };
        ShardedCorrelator {
            shards: (0..n)
                .map(|i| {
                    Mutex::new(Shard {
                        correlator: Correlator::new(calls, media_share).in_shard(i as u32),
                        window: SipWindow::default(),
                    })
                })
                .collect(),
            placement: KeyedHasher::default(),
            // Open endpoints and those of ended calls within their linger.
            routes: MediaRoutes::new(media.max_endpoints.saturating_mul(2)),
            lock_waits: AtomicU64::new(0),
            window: std::time::Duration::ZERO,
            window_max_messages: share(WINDOW_MAX_MESSAGES),
            window_max_bytes: share(WINDOW_MAX_BYTES),
            reorder: ReorderCounters::default(),
        }
    }

    /// Applies each shard's SIP in capture-time order within `window` (see the module doc):
    /// a message waits in its shard until the shard has seen a capture time `window` later
    /// (a later message, or [`ShardedCorrelator::advance`]). Zero (the default): every
    /// message is applied as it arrives, as one correlator does.
    pub fn with_reorder_window(mut self, window: std::time::Duration) -> Self {
        self.window = window;
        self
    }

    /// Bounds of each shard's window other than its share of [`WINDOW_MAX_MESSAGES`] and
    /// [`WINDOW_MAX_BYTES`], so that a test reaches each bound alone.
    #[cfg(test)]
    fn with_window_bounds(mut self, messages: usize, bytes: usize) -> Self {
        self.window_max_messages = messages;
        self.window_max_bytes = bytes;
        self
    }

    pub fn reorder_window(&self) -> std::time::Duration {
        self.window
    }

    /// Every shard times the REGISTERs of its Call-IDs and makes its own registrations
    /// record a minute ([`Correlator::with_registration_records`]): they hold counts and sums
    /// only, so the statistics add them up as they would one correlator's.
    pub fn with_registration_records(mut self, on: bool) -> Self {
        for shard in self.shards.iter_mut() {
            shard
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .set_registration_records(on);
        }
        self
    }

    /// Live listen's tap, a clone in every shard ([`Correlator::set_listen_tap`]): a call's
    /// RTP reaches it from the shard that measures it.
    pub fn with_listen_tap(mut self, tap: &crate::media::tap::ListenTap) -> Self {
        for shard in self.shards.iter_mut() {
            shard
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .set_listen_tap(tap.clone());
        }
        self
    }

    /// The open call with this Call-ID live listen may listen to, from its call's shard
    /// ([`Correlator::listenable`]).
    pub fn listenable(&self, call_id: &str) -> Option<ListenableCall> {
        self.lock(self.shard_of_call(call_id)).listenable(call_id)
    }

    /// The first open call whose key `matches` (live listen finds a call by the pseudonym
    /// the status page shows), shard by shard, each locked only while its keys are tried.
    pub fn listenable_matching(
        &self,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Option<ListenableCall> {
        (0..self.shards.len()).find_map(|shard| {
            let c = self.lock(shard);
            let key = c.calls().open_call_keys().find(|key| matches(key))?;
            c.listenable(key)
        })
    }

    /// The calls open now for the status view ([`Correlator::active_calls`]): every shard's,
    /// one shard locked at a time, the most recent `limit` of them in all, most recent first;
    /// `.1` is how many more are open.
    pub fn active_calls(&self, limit: usize) -> (Vec<ActiveCall>, usize) {
        let mut calls = Vec::new();
        let mut more = 0;
        for shard in 0..self.shards.len() {
            let (some, beyond) = self.lock(shard).active_calls(limit);
            calls.extend(some);
            more += beyond;
        }
        calls.sort_by_key(|c| std::cmp::Reverse(c.started));
        more += calls.len().saturating_sub(limit);
        calls.truncate(limit);
        (calls, more)
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard of a Call-ID: its keyed hash ([`calls::call_key`], this correlator's key).
    pub fn shard_of_call(&self, call_id: &str) -> usize {
        self.shard_of_hash(self.placement.hash_one(calls::call_key(call_id)))
    }

    /// A hash's shard: its high bits scaled to the shard count (Lemire's reduction).
    fn shard_of_hash(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.shards.len() as u128) >> 64) as usize
    }

    /// The shard of a datagram: the route of its destination, else of its source, else its
    /// address pair's.
    fn shard_of_datagram(&self, meta: &DatagramMeta, payload: &[u8]) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        if let Some(shard) = self.route_of(&meta.src, &meta.dst, payload) {
            return shard;
        }
        // Unordered: both directions of a flow meet. The ports' lowest bit left out: a
        // stream's RTCP flows between the ports one above its RTP's (RFC 3550's rule for
        // RTP on an even port), and must meet the stream it reports on to be kept with it.
        let (a, b) = pair(meta);
        let mut h = self.placement.build_hasher();
        write_addr(&mut h, &rtp_port_pair(a));
        write_addr(&mut h, &rtp_port_pair(b));
        self.shard_of_hash(h.finish())
    }

    /// The shard a route names for a datagram with this payload between these addresses
    /// (destination first). RTP does not take the route of an RTCP-only endpoint, as the
    /// media tracker does not attach RTP to one: the port may be another call's RTP port,
    /// whose route a reorder window writes later ([`super::media::MediaTracker`]).
    fn route_of(&self, src: &SocketAddr, dst: &SocketAddr, payload: &[u8]) -> Option<usize> {
        let rtp = crate::media::packet::classify(payload) == crate::media::packet::Kind::Rtp;
        let usable = |r: Route| (!rtp || !r.rtcp_only).then_some(r.shard);
        self.routes
            .get(dst)
            .and_then(usable)
            .or_else(|| self.routes.get(src).and_then(usable))
    }

    /// Locks a shard, counting a wait.
    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        let m = &self.shards[shard % self.shards.len()];
        match m.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.lock_waits.fetch_add(1, Ordering::Relaxed);
                m.lock().unwrap_or_else(|p| p.into_inner())
            }
        }
    }

    /// Handles a SIP message in its call's shard and routes the media endpoints it taught.
    pub fn sip(&self, meta: &MessageMeta, msg: &SipMessage<'_>, out: &mut impl FnMut(Record)) {
        let shard = self.shard_of_call(msg.call_id);
        let mut learned = Vec::new();
        {
            let mut s = self.lock(shard);
            if self.window.is_zero() {
                s.correlator
                    .sip_learning(meta, msg, out, &mut |addr, rtcp_only| {
                        learned.push((addr, rtcp_only));
                    });
            } else {
                self.hold_sip(&mut s, meta, msg, out, &mut learned);
                self.apply_due(&mut s, out, &mut learned);
            }
        }
        self.route(shard, learned);
    }

    /// Writes the routes of the endpoints a shard learned, after it has learned them (and
    /// without holding its lock: the sweep takes a stripe, then shards).
    fn route(&self, shard: usize, learned: Vec<(SocketAddr, bool)>) {
        if self.shards.len() > 1 {
            for (addr, rtcp_only) in learned {
                self.routes.set(addr, Route { shard, rtcp_only });
            }
        }
    }

    /// Puts a message into its shard's reorder window, in its owned form (its bytes and the
    /// parse's ranges of them), accounted at all it holds. A message too large for that form
    /// (4 GiB: none that a frame carries) is applied at once, counted as finding the window full.
    fn hold_sip(
        &self,
        s: &mut Shard,
        meta: &MessageMeta,
        msg: &SipMessage<'_>,
        out: &mut impl FnMut(Record),
        learned: &mut Vec<(SocketAddr, bool)>,
    ) {
        let Some(owned) = OwnedMessage::new(msg) else {
            self.reorder.window_full.fetch_add(1, Ordering::Relaxed);
            s.correlator
                .sip_learning(meta, msg, out, &mut |addr, rtcp_only| {
                    learned.push((addr, rtcp_only));
                });
            return;
        };
        let bytes = owned.held_bytes() + WINDOWED_SIP_BYTES;
        let event = Windowed::Sip {
            meta: *meta,
            msg: Box::new(owned),
        };
        self.hold(s, meta.time, bytes, event);
    }

    /// Puts an event into its shard's reorder window, counting one that came after a
    /// later-captured one.
    fn hold(&self, s: &mut Shard, time: Timestamp, bytes: usize, event: Windowed) {
        let w = &mut s.window;
        if time < w.newest {
            self.reorder.reordered.fetch_add(1, Ordering::Relaxed);
            if time < w.applied {
                // A later-captured message was applied already: this one cannot go before
                // it (it came more than the window late).
                self.reorder.late.fetch_add(1, Ordering::Relaxed);
            }
        }
        w.newest = w.newest.max(time);
        w.arrivals += 1;
        w.bytes += bytes;
        w.pending.push(std::cmp::Reverse(Pending {
            time,
            arrival: w.arrivals,
            bytes,
            event,
        }));
    }

    /// Applies, earliest first, the messages of a shard's window whose window has passed
    /// (the shard has seen a capture time `window` later), and the earliest beyond the
    /// window's bound (counted).
    fn apply_due(
        &self,
        s: &mut Shard,
        out: &mut impl FnMut(Record),
        learned: &mut Vec<(SocketAddr, bool)>,
    ) {
        loop {
            let Some(std::cmp::Reverse(first)) = s.window.pending.peek() else {
                return;
            };
            let due = first.time.plus(self.window) <= s.window.newest;
            let full = s.window.pending.len() > self.window_max_messages
                || s.window.bytes > self.window_max_bytes;
            if !due && !full {
                return;
            }
            if !due {
                self.reorder.window_full.fetch_add(1, Ordering::Relaxed);
            }
            self.apply_first(s, out, learned);
        }
    }

    /// Applies the earliest message of a shard's window.
    fn apply_first(
        &self,
        s: &mut Shard,
        out: &mut impl FnMut(Record),
        learned: &mut Vec<(SocketAddr, bool)>,
    ) {
        let Some(std::cmp::Reverse(p)) = s.window.pending.pop() else {
            return;
        };
        s.window.bytes -= p.bytes;
        s.window.applied = s.window.applied.max(p.time);
        match p.event {
            Windowed::Sip { meta, msg } => {
                // Parsed when it came: viewed, not parsed again.
                s.correlator
                    .sip_learning(&meta, &msg.view(), out, &mut |addr, rtcp_only| {
                        learned.push((addr, rtcp_only));
                    });
            }
            Windowed::HepRtcp { call_id, report } => {
                // Attached or counted as unmatched by the tracker.
                s.correlator.hep_rtcp(&call_id, p.time, &report);
            }
        }
    }

    /// `now` less the reorder window.
    fn behind(&self, now: Timestamp) -> Timestamp {
        let window = i64::try_from(self.window.as_nanos()).unwrap_or(i64::MAX);
        Timestamp::from_nanos(now.as_nanos().saturating_sub(window))
    }

    /// SIP messages waiting in the reorder windows now.
    pub fn sip_in_window(&self) -> usize {
        let mut n = 0;
        for shard in 0..self.shards.len() {
            n += self.lock(shard).window.pending.len();
        }
        n
    }

    /// Handles a datagram that is not SIP in the shard of its media endpoint.
    pub fn datagram(&self, meta: &DatagramMeta, payload: &[u8], out: &mut impl FnMut(Record)) {
        self.datagram_with_rtcp(meta, payload, out, None);
    }

    /// [`ShardedCorrelator::datagram`], telling `rtcp` (after the shard's lock is let go)
    /// the call its shard attributes it to when it is RTCP ([`Correlate::datagram_with_rtcp`]).
    pub fn datagram_with_rtcp(
        &self,
        meta: &DatagramMeta,
        payload: &[u8],
        out: &mut impl FnMut(Record),
        rtcp: RtcpSeen<'_>,
    ) {
        let mut shard = self.lock(self.shard_of_datagram(meta, payload));
        shard.datagram(meta, payload, out);
        let Some(rtcp) = rtcp else {
            return;
        };
        let call_id = shard.rtcp_attributed(meta, payload);
        drop(shard);
        if let Some(call_id) = call_id {
            rtcp(meta, payload, &call_id);
        }
    }

    /// Attaches an RTCP report relayed by HEP to the call with this Call-ID.
    /// With a reorder window, the report waits in it with the call's SIP (and true is
    /// returned: whether it found its call is counted by the tracker when it is applied).
    pub fn hep_rtcp(&self, call_id: &str, time: Timestamp, report: &RtcpJson) -> bool {
        let shard = self.shard_of_call(call_id);
        let mut s = self.lock(shard);
        if self.window.is_zero() {
            return s.hep_rtcp(call_id, time, report);
        }
        // Its Call-ID and an estimate of the report's size.
        let bytes = call_id.len() + 256;
        if s.window.pending.len() >= self.window_max_messages
            || s.window.bytes + bytes > self.window_max_bytes
        {
            // The window is full: applied at once, counted. (Reports make no records, so
            // the window is let go by the next message or tick, which have a record sink.)
            self.reorder.window_full.fetch_add(1, Ordering::Relaxed);
            return s.hep_rtcp(call_id, time, report);
        }
        let event = Windowed::HepRtcp {
            call_id: call_id.into(),
            report: Box::new(report.clone()),
        };
        self.hold(&mut s, time, bytes, event);
        true
    }

    /// Moves time forward in every shard, and sweeps one stripe of the route table.
    pub fn advance(&self, now: Timestamp, out: &mut impl FnMut(Record)) {
        for shard in 0..self.shards.len() {
            let mut learned = Vec::new();
            {
                let mut s = self.lock(shard);
                if !s.window.pending.is_empty() {
                    s.window.newest = s.window.newest.max(now);
                    self.apply_due(&mut s, out, &mut learned);
                }
                // Time in a shard runs the window behind: packets captured up to then may
                // still be on their way from another capture thread, and a record in its
                // grace must not be made without them.
                s.correlator.advance(self.behind(now), out);
            }
            self.route(shard, learned);
        }
        if self.shards.len() > 1 {
            self.routes
                .sweep_next(|shard, addr| self.lock(shard).media().knows_endpoint(addr));
        }
    }

    /// Reports everything still open. One correlator reports its open calls in the order it
    /// first saw them, then its orphan streams by start; across shards that order is rebuilt
    /// (calls by their first message, then Call-ID; streams by their start, then record id),
    /// so that what a shutdown reports does not depend on which shard each call landed in
    /// (the placement is keyed per process).
    pub fn finish(&self, closed_by: ClosedBy, out: &mut impl FnMut(Record)) {
        self.flush_windows(out);
        if self.shards.len() == 1 {
            self.lock(0).finish(closed_by, out);
            return;
        }
        let mut records = Vec::new();
        for shard in 0..self.shards.len() {
            self.lock(shard)
                .finish(closed_by, &mut |record| records.push(record));
        }
        // Stable: what has no order of its own keeps its shard's.
        records.sort_by(|a, b| finish_order(a).cmp(&finish_order(b)));
        for record in records {
            out(record);
        }
    }

    /// Applies everything the reorder windows hold, in order, and writes the routes it
    /// teaches (the pipeline ends: nothing comes later; called before the capture threads'
    /// held RTP is let go, so that it finds its routes).
    pub fn flush_windows(&self, out: &mut impl FnMut(Record)) {
        for shard in 0..self.shards.len() {
            let mut learned = Vec::new();
            {
                let mut s = self.lock(shard);
                while !s.window.pending.is_empty() {
                    self.apply_first(&mut s, out, &mut learned);
                }
            }
            self.route(shard, learned);
        }
    }

    /// Calls `f` with every shard's correlator in turn (each locked while `f` runs).
    pub fn for_each(&self, mut f: impl FnMut(&Correlator)) {
        for shard in 0..self.shards.len() {
            f(&self.lock(shard));
        }
    }

    /// Calls open, summed over the shards.
    pub fn open_calls(&self) -> usize {
        let mut n = 0;
        self.for_each(|c| n += c.calls().open_calls());
        n
    }

    /// Bytes the call tables hold, summed over the shards.
    pub fn held_bytes(&self) -> usize {
        let mut n = 0;
        self.for_each(|c| n += c.calls().held_bytes());
        n
    }

    /// Streams measured now, summed over the shards.
    pub fn active_streams(&self) -> usize {
        let mut n = 0;
        self.for_each(|c| n += c.media().active_streams());
        n
    }

    /// Ended calls waiting out their grace, summed over the shards.
    pub fn calls_in_grace(&self) -> usize {
        let mut n = 0;
        self.for_each(|c| n += c.calls_in_grace());
        n
    }

    /// The call and media counters, summed over the shards (`peak_active_streams` is the
    /// sum of each shard's peak: an upper bound of the peak).
    pub fn counters(&self) -> (CallCounters, MediaCounters) {
        let (mut calls, mut media) = (CallCounters::default(), MediaCounters::default());
        self.for_each(|c| {
            calls.add(&c.calls().counters());
            media.add(&c.media().counters());
        });
        (calls, media)
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            shards: self.shards.len(),
            lock_waits: self.lock_waits.load(Ordering::Relaxed),
            routes: self.routes.len(),
            routes_dropped_at_capacity: self.routes.dropped.load(Ordering::Relaxed),
            sip_reordered: self.reorder.reordered.load(Ordering::Relaxed),
            sip_late: self.reorder.late.load(Ordering::Relaxed),
            sip_window_full: self.reorder.window_full.load(Ordering::Relaxed),
        }
    }
}

impl Correlate for &ShardedCorrelator {
    fn sip(&mut self, meta: &MessageMeta, msg: &SipMessage<'_>, out: &mut impl FnMut(Record)) {
        ShardedCorrelator::sip(self, meta, msg, out);
    }

    fn datagram_with_rtcp(
        &mut self,
        meta: &DatagramMeta,
        payload: &[u8],
        out: &mut impl FnMut(Record),
        rtcp: RtcpSeen<'_>,
    ) {
        ShardedCorrelator::datagram_with_rtcp(self, meta, payload, out, rtcp);
    }

    fn hep_rtcp(&mut self, call_id: &str, time: Timestamp, report: &RtcpJson) -> bool {
        ShardedCorrelator::hep_rtcp(self, call_id, time, report)
    }
}

/// Most flows one thread holds back at a time, and most bytes it holds for them (each
/// datagram counted at [`held_bytes`]).
const HOLD_MAX_FLOWS: usize = 8_192;
const HOLD_MAX_BYTES: usize = 4 << 20;

/// What holding a datagram of `len` bytes costs: its copy as the allocator takes it and its
/// place in its flow's list (metadata and pointer), with the list's doubling slack. Only the
/// payload was counted: RTP of 12 bytes held 4 MiB of payload in about 43 MiB.
fn held_bytes(len: usize) -> usize {
    heap(len) + 2 * std::mem::size_of::<(DatagramMeta, Box<[u8]>)>()
}

/// Counters of a thread's [`MediaHold`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldCounters {
    /// Datagrams held back because no route existed yet.
    pub held: u64,
    /// Held datagrams released to the shard a route named once it appeared.
    pub released_routed: u64,
    /// Held datagrams released to the address pair's shard after the hold (orphans).
    pub released_unrouted: u64,
    /// Datagrams not held because the hold was full (handled at once, as without a hold).
    pub not_held_full: u64,
}

/// One capture thread's hold on RTP and RTCP of flows no route names yet.
///
/// A call's SDP and its first RTP packets can be handled by two capture threads, and the
/// thread with the SDP may be a ring block behind (up to the block timeout): without a hold,
/// those first packets would open an orphan stream in the wrong shard and the call's stream
/// would start late. So a thread holds the datagrams of a new, unrouted RTP/RTCP flow for up
/// to `hold` (capture time, longer than a block timeout), in order: released to the shard
/// of the route as soon as one appears, else, after the hold, to the address pair's shard as
/// the orphan it is — from then on that flow is not held again while it is seen. Bounded in
/// flows and bytes; beyond, a datagram is handled at once and counted.
#[derive(Debug)]
pub struct MediaHold {
    hold: std::time::Duration,
    flows: KeyedMap<(SocketAddr, SocketAddr), HeldFlow>,
    bytes: usize,
    counters: HoldCounters,
}

#[derive(Debug)]
struct HeldFlow {
    first_seen: Timestamp,
    last_seen: Timestamp,
    /// Empty once the flow was released as unrouted (it is then only remembered).
    packets: Vec<(DatagramMeta, Box<[u8]>)>,
    settled: bool,
}

impl MediaHold {
    pub fn new(hold: std::time::Duration) -> Self {
        MediaHold {
            hold,
            flows: KeyedMap::default(),
            bytes: 0,
            counters: HoldCounters::default(),
        }
    }

    pub fn counters(&self) -> HoldCounters {
        self.counters
    }

    /// Datagrams held now.
    pub fn held_now(&self) -> usize {
        self.flows.values().map(|f| f.packets.len()).sum()
    }
}

/// An address with its port's lowest bit cleared: RTP's even port and RTCP's next one alike.
fn rtp_port_pair(mut addr: SocketAddr) -> SocketAddr {
    addr.set_port(addr.port() & !1);
    addr
}

fn pair(meta: &DatagramMeta) -> (SocketAddr, SocketAddr) {
    if meta.src <= meta.dst {
        (meta.src, meta.dst)
    } else {
        (meta.dst, meta.src)
    }
}

/// A capture thread's view of the shards: a [`ShardedCorrelator`] and the thread's
/// [`MediaHold`].
#[derive(Debug)]
pub struct Routed<'a> {
    pub shards: &'a ShardedCorrelator,
    pub hold: &'a mut MediaHold,
}

impl Routed<'_> {
    /// Releases what the hold may release at `now`: flows a route now names, and flows
    /// held longer than the hold (to their pair's shard). Settled flows not seen for a
    /// while are forgotten.
    pub fn release(&mut self, now: Timestamp, out: &mut impl FnMut(Record)) {
        self.release_with_rtcp(now, out, None);
    }

    /// [`Routed::release`], telling `rtcp` about the released RTCP packets attributed to a
    /// call ([`Correlate::datagram_with_rtcp`]).
    pub fn release_with_rtcp(
        &mut self,
        now: Timestamp,
        out: &mut impl FnMut(Record),
        mut rtcp: RtcpSeen<'_>,
    ) {
        if self.hold.flows.is_empty() {
            return;
        }
        let hold = self.hold.hold;
        let forget = hold.as_secs_f64() * 20.0;
        let mut due = Vec::new();
        self.hold.flows.retain(|key, flow| {
            if flow.settled {
                return now.seconds_since(flow.last_seen) <= forget;
            }
            due.push(*key);
            true
        });
        for key in due {
            let Some(flow) = self.hold.flows.get_mut(&key) else {
                continue;
            };
            let routed = flow
                .packets
                .first()
                .and_then(|(meta, payload)| self.shards.route_of(&meta.src, &meta.dst, payload));
            let expired = now.seconds_since(flow.first_seen) > hold.as_secs_f64();
            if routed.is_none() && !expired {
                continue;
            }
            let packets = std::mem::take(&mut flow.packets);
            if routed.is_some() {
                self.hold.flows.remove(&key);
                self.hold.counters.released_routed += packets.len() as u64;
            } else {
                flow.settled = true;
                self.hold.counters.released_unrouted += packets.len() as u64;
            }
            for (meta, payload) in packets {
                self.hold.bytes -= held_bytes(payload.len());
                self.shards
                    .datagram_with_rtcp(&meta, &payload, out, rtcp_again(&mut rtcp));
            }
        }
    }

    /// Releases everything held (the pipeline finishes).
    pub fn release_all(&mut self, out: &mut impl FnMut(Record)) {
        self.release_all_with_rtcp(out, None);
    }

    /// [`Routed::release_all`], telling `rtcp` as [`Routed::release_with_rtcp`] does.
    pub fn release_all_with_rtcp(&mut self, out: &mut impl FnMut(Record), mut rtcp: RtcpSeen<'_>) {
        let flows = std::mem::take(&mut self.hold.flows);
        self.hold.bytes = 0;
        for (_, flow) in flows {
            for (meta, payload) in flow.packets {
                self.hold.counters.released_unrouted += 1;
                self.shards
                    .datagram_with_rtcp(&meta, &payload, out, rtcp_again(&mut rtcp));
            }
        }
    }
}

impl Correlate for Routed<'_> {
    fn sip(&mut self, meta: &MessageMeta, msg: &SipMessage<'_>, out: &mut impl FnMut(Record)) {
        self.shards.sip(meta, msg, out);
    }

    fn datagram_with_rtcp(
        &mut self,
        meta: &DatagramMeta,
        payload: &[u8],
        out: &mut impl FnMut(Record),
        mut rtcp: RtcpSeen<'_>,
    ) {
        if self.shards.shards.len() == 1 {
            return self.shards.datagram_with_rtcp(meta, payload, out, rtcp);
        }
        let routed = self.shards.route_of(&meta.src, &meta.dst, payload);
        let key = pair(meta);
        let settled = if self.hold.flows.is_empty() {
            None
        } else {
            self.hold.flows.get_mut(&key).map(|flow| {
                flow.last_seen = meta.time;
                flow.settled
            })
        };
        match settled {
            // An orphan flow already released: handled at once.
            Some(true) => {}
            // The route came: what was held goes first, in order.
            Some(false) if routed.is_some() => {
                self.release_with_rtcp(meta.time, out, rtcp_again(&mut rtcp))
            }
            Some(false) => {
                let full = self.hold.bytes + held_bytes(payload.len()) > HOLD_MAX_BYTES;
                if let Some(flow) = self.hold.flows.get_mut(&key) {
                    if !full {
                        self.hold.bytes += held_bytes(payload.len());
                        self.hold.counters.held += 1;
                        flow.packets.push((*meta, payload.into()));
                        return;
                    }
                    // The hold is full: this flow goes on unheld, what it held first.
                    self.hold.counters.not_held_full += 1;
                    flow.settled = true;
                    let packets = std::mem::take(&mut flow.packets);
                    self.hold.counters.released_unrouted += packets.len() as u64;
                    for (meta, payload) in packets {
                        self.hold.bytes -= held_bytes(payload.len());
                        self.shards
                            .datagram_with_rtcp(&meta, &payload, out, rtcp_again(&mut rtcp));
                    }
                }
            }
            None if routed.is_none()
                && crate::media::packet::classify(payload) != crate::media::packet::Kind::Other =>
            {
                if self.hold.flows.len() < HOLD_MAX_FLOWS
                    && self.hold.bytes + held_bytes(payload.len()) <= HOLD_MAX_BYTES
                {
                    self.hold.bytes += held_bytes(payload.len());
                    self.hold.counters.held += 1;
                    self.hold.flows.insert(
                        key,
                        HeldFlow {
                            first_seen: meta.time,
                            last_seen: meta.time,
                            packets: vec![(*meta, payload.into())],
                            settled: false,
                        },
                    );
                    return;
                }
                self.hold.counters.not_held_full += 1;
            }
            None => {}
        }
        self.shards.datagram_with_rtcp(meta, payload, out, rtcp);
    }

    fn hep_rtcp(&mut self, call_id: &str, time: Timestamp, report: &RtcpJson) -> bool {
        self.shards.hep_rtcp(call_id, time, report)
    }
}

/// Where a record goes among what a sharded shutdown reports: calls, then orphan streams,
/// then the rest (in the order of their shards); each kind by its time, then its id.
fn finish_order(record: &Record) -> (u8, Option<Timestamp>, &str) {
    match record {
        Record::Call(call) => (0, Some(call.first_message_time), call.call_id.as_str()),
        Record::Stream(stream) => (
            1,
            Some(stream.stream.metrics.start_time),
            stream.record_id.as_str(),
        ),
        _ => (2, None, ""),
    }
}

/// Feeds an address to a keyed hasher: an IPv4 address and its port as one word (the two
/// fit without loss), an IPv6 address whole, so that no two addresses feed the same input
/// whatever the key (folding IPv6's halves would let a sender pick colliding addresses).
fn write_addr(h: &mut impl Hasher, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(v4) => h.write_u64(u64::from(u32::from(v4)) | (u64::from(addr.port()) << 32)),
        IpAddr::V6(v6) => {
            h.write_u128(u128::from(v6));
            h.write_u16(addr.port());
        }
    }
}

/// Where a media endpoint's datagrams go: the shard that learned it, and whether its SDP
/// announced it for RTCP only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    shard: usize,
    rtcp_only: bool,
}

/// Media endpoint → shard, read by every capture thread for every datagram.
#[derive(Debug)]
struct MediaRoutes {
    stripes: Box<[RwLock<KeyedMap<SocketAddr, Route>>]>,
    /// Keys the stripe of an address.
    placement: KeyedHasher,
    len: AtomicUsize,
    max: usize,
    dropped: AtomicU64,
    next_sweep: AtomicUsize,
}

impl MediaRoutes {
    fn new(max: usize) -> Self {
        MediaRoutes {
            stripes: (0..ROUTE_STRIPES)
                .map(|_| RwLock::new(KeyedMap::default()))
                .collect(),
            placement: KeyedHasher::default(),
            len: AtomicUsize::new(0),
            max: max.max(1),
            dropped: AtomicU64::new(0),
            next_sweep: AtomicUsize::new(0),
        }
    }

    fn stripe(&self, addr: &SocketAddr) -> &RwLock<KeyedMap<SocketAddr, Route>> {
        let mut h = self.placement.build_hasher();
        write_addr(&mut h, addr);
        &self.stripes[(h.finish() >> 58) as usize % ROUTE_STRIPES]
    }

    fn get(&self, addr: &SocketAddr) -> Option<Route> {
        let stripe = self.stripe(addr).read().unwrap_or_else(|p| p.into_inner());
        stripe.get(addr).copied()
    }

    fn set(&self, addr: SocketAddr, route: Route) {
        let mut stripe = self
            .stripe(&addr)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(old) = stripe.get_mut(&addr) {
            *old = route;
            return;
        }
        if self.len.load(Ordering::Relaxed) >= self.max {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stripe.insert(addr, route);
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Drops the routes of one stripe (the next in turn) whose shard no longer `knows` them.
    fn sweep_next(&self, mut knows: impl FnMut(usize, &SocketAddr) -> bool) {
        let i = self.next_sweep.fetch_add(1, Ordering::Relaxed) % ROUTE_STRIPES;
        let mut stripe = self.stripes[i].write().unwrap_or_else(|p| p.into_inner());
        let before = stripe.len();
        stripe.retain(|addr, route| knows(route.shard, addr));
        self.len.fetch_sub(before - stripe.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::record::Record;

    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xD5; 160]);
        p
    }

    const T0: i64 = 1_700_000_000_000_000_000;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_nanos(T0 + ms * 1_000_000)
    }

    fn sip(call: &str, first_line: &str, cseq: &str, media: Option<&str>) -> String {
        let body = media.map_or(String::new(), |ip| {
            format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n")
        });
        let to_tag = if first_line.starts_with("SIP/2.0") || !cseq.contains("INVITE") {
            ";tag=b"
        } else {
            ""
        };
        format!(
            "{first_line}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{call}{}\r\nFrom: <sip:a@x>;tag=a\r\n\
             To: <sip:b@x>{to_tag}\r\nCall-ID: {call}\r\nCSeq: {cseq}\r\n{}Content-Length: {}\r\n\r\n{body}",
            cseq.len(),
            if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" },
            body.len()
        )
    }

    /// Feeds one call (INVITE and 200 with SDP, 50 RTP packets each way, BYE and 200)
    /// into `c`, caller media on `10.1.x.y`, callee on `10.2.x.y`.
    fn call(c: &mut impl FnMut(Event), n: u32, start_ms: i64) {
        let id = format!("call-{n}@x");
        let caller = format!("10.1.{}.{}", n / 250, n % 250);
        let callee = format!("10.2.{}.{}", n / 250, n % 250);
        c(Event::Sip(
            start_ms,
            sip(&id, "INVITE sip:b@x SIP/2.0", "1 INVITE", Some(&caller)),
        ));
        c(Event::Sip(
            start_ms + 10,
            sip(&id, "SIP/2.0 200 OK", "1 INVITE", Some(&callee)),
        ));
        for i in 0..50u16 {
            let ms = start_ms + 20 + i64::from(i) * 20;
            c(Event::Rtp(
                ms,
                format!("{caller}:4000"),
                format!("{callee}:4000"),
                i,
                2 * n,
            ));
            c(Event::Rtp(
                ms,
                format!("{callee}:4000"),
                format!("{caller}:4000"),
                i,
                2 * n + 1,
            ));
        }
        c(Event::Sip(
            start_ms + 1_100,
            sip(&id, "BYE sip:b@x SIP/2.0", "2 BYE", None),
        ));
        c(Event::Sip(
            start_ms + 1_110,
            sip(&id, "SIP/2.0 200 OK", "2 BYE", None),
        ));
    }

    #[derive(Clone)]
    enum Event {
        Sip(i64, String),
        Rtp(i64, String, String, u16, u32),
    }

    fn feed(c: &mut impl Correlate, event: Event, out: &mut Vec<Record>) {
        match event {
            Event::Sip(ms, text) => {
                let msg = crate::decode::sip::parse(text.as_bytes()).unwrap();
                let meta = MessageMeta {
                    frame: 0,
                    time: at(ms),
                    src: "10.0.0.1:5060".parse().unwrap(),
                    dst: "10.0.0.2:5060".parse().unwrap(),
                    transport: crate::dissect::Transport::Udp,
                };
                c.sip(&meta, &msg, &mut |r| out.push(r));
            }
            Event::Rtp(ms, src, dst, seq, ssrc) => {
                let meta = DatagramMeta {
                    frame: 0,
                    time: at(ms),
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                };
                c.datagram(&meta, &rtp(seq, ssrc), &mut |r| out.push(r));
            }
        }
    }

    /// (Call-ID, packets measured in its streams), sorted.
    fn calls_with_packets(records: &[Record]) -> Vec<(String, u64)> {
        let mut calls: Vec<(String, u64)> = records
            .iter()
            .filter_map(|r| match r {
                Record::Call(c) => {
                    let q = &c.media_quality;
                    let packets = q
                        .caller_to_callee
                        .iter()
                        .chain(&q.callee_to_caller)
                        .map(|s| s.metrics.packets)
                        .sum();
                    Some((c.call_id.clone(), packets))
                }
                _ => None,
            })
            .collect();
        calls.sort();
        calls
    }

    /// The same calls give the same call records with 1 and with 8 shards: each call's SIP
    /// and its RTP meet in one shard although they are different flows.
    #[test]
    fn every_call_meets_its_media_in_one_shard() {
        let mut single = Correlator::new(CallLimits::default(), MediaLimits::default());
        let sharded = ShardedCorrelator::new(8, CallLimits::default(), MediaLimits::default());
        let (mut one, mut many) = (Vec::new(), Vec::new());
        for n in 0..200 {
            let start = i64::from(n) * 5;
            call(&mut |e| feed(&mut single, e, &mut one), n, start);
        }
        for n in 0..200 {
            let start = i64::from(n) * 5;
            call(&mut |e| feed(&mut &sharded, e, &mut many), n, start);
        }
        single.finish(ClosedBy::CaptureEnd, &mut |r| one.push(r));
        sharded.finish(ClosedBy::CaptureEnd, &mut |r| many.push(r));
        let (one, many) = (calls_with_packets(&one), calls_with_packets(&many));
        assert_eq!(one.len(), 200);
        assert!(one.iter().all(|(_, packets)| *packets == 100), "{one:?}");
        assert_eq!(one, many);
        let (calls, media) = sharded.counters();
        assert_eq!(calls.calls, 200);
        assert_eq!(media.orphan_streams, 0);
        assert_eq!(media.rtp_packets_in_calls, 200 * 100);
        // Calls spread over the shards.
        let mut per_shard = Vec::new();
        sharded.for_each(|c| per_shard.push(c.calls().counters().calls));
        assert!(per_shard.iter().all(|n| *n > 0), "{per_shard:?}");
    }

    /// The thread that sees a call's first RTP can be ahead of the thread with its SDP: the
    /// RTP is held until the route appears and then measured in the call, none of it as an
    /// orphan. RTP that no SDP ever names is released after the hold as the orphan it is.
    #[test]
    fn rtp_seen_before_its_sdp_is_held_until_the_route_appears() {
        let sharded = ShardedCorrelator::new(4, CallLimits::default(), MediaLimits::default());
        let mut hold = MediaHold::new(std::time::Duration::from_millis(250));
        let mut out = Vec::new();
        let id = "early@x";
        let invite = sip(id, "INVITE sip:b@x SIP/2.0", "1 INVITE", Some("10.1.0.1"));
        let ok = sip(id, "SIP/2.0 200 OK", "1 INVITE", Some("10.2.0.1"));
        // From an address the INVITE did not announce (a media relay), to the callee's
        // endpoint, which only the 200 announces.
        let rtp_at = |ms: i64, seq: u16| {
            Event::Rtp(ms, "10.3.0.1:4000".into(), "10.2.0.1:4000".into(), seq, 7)
        };
        // An orphan flow, never announced.
        let orphan_at = |ms: i64, seq: u16| {
            Event::Rtp(ms, "10.9.0.1:4000".into(), "10.9.0.2:4000".into(), seq, 9)
        };
        {
            let mut routed = Routed {
                shards: &sharded,
                hold: &mut hold,
            };
            feed(&mut routed, Event::Sip(0, invite), &mut out);
            // The callee's RTP endpoint is learned from the 200, which this thread sees late.
            for seq in 0..5u16 {
                feed(&mut routed, rtp_at(20 + i64::from(seq) * 20, seq), &mut out);
                feed(
                    &mut routed,
                    orphan_at(20 + i64::from(seq) * 20, seq),
                    &mut out,
                );
            }
            assert_eq!(routed.hold.held_now(), 10);
            feed(&mut routed, Event::Sip(90, ok), &mut out);
            routed.release(at(110), &mut |r| out.push(r));
            assert_eq!(
                routed.hold.held_now(),
                5,
                "the call's RTP released, the orphan's held"
            );
            for seq in 5..50u16 {
                feed(&mut routed, rtp_at(20 + i64::from(seq) * 20, seq), &mut out);
                feed(
                    &mut routed,
                    orphan_at(20 + i64::from(seq) * 20, seq),
                    &mut out,
                );
                routed.release(at(20 + i64::from(seq) * 20), &mut |r| out.push(r));
            }
            feed(
                &mut routed,
                Event::Sip(1_100, sip(id, "BYE sip:b@x SIP/2.0", "2 BYE", None)),
                &mut out,
            );
            routed.release_all(&mut |r| out.push(r));
        }
        sharded.finish(ClosedBy::CaptureEnd, &mut |r| out.push(r));
        assert_eq!(calls_with_packets(&out), [(id.to_owned(), 50)]);
        let c = hold.counters();
        assert_eq!(c.released_routed, 5);
        // The orphan flow: held for 250 ms of capture time (20 ms to 280 ms), then released.
        assert_eq!(c.released_unrouted, 14, "{c:?}");
        let (_, media) = sharded.counters();
        assert_eq!(media.orphan_streams, 1, "the unannounced flow, once");
        assert_eq!(media.rtp_packets, 100);
    }

    /// A capture thread's hold counted the payload of what it held, not what holding it
    /// costs: RTP of 12 bytes took a 32-byte copy and a 96-byte place in its flow's list
    /// each, so the 4 MiB bound held about 43 MiB. Counted as the allocator holds it, what
    /// is held stays within the bound, and the rest is handled at once, counted.
    #[test]
    fn the_media_hold_counts_what_holding_costs() {
        let sharded = ShardedCorrelator::new(4, CallLimits::default(), MediaLimits::default());
        let mut hold = MediaHold::new(std::time::Duration::from_millis(250));
        let packets = 40_000u32;
        {
            let mut routed = Routed {
                shards: &sharded,
                hold: &mut hold,
            };
            for i in 0..packets {
                let mut p = vec![0x80, 8];
                p.extend_from_slice(&(i as u16).to_be_bytes());
                p.extend_from_slice(&(i * 160).to_be_bytes());
                p.extend_from_slice(&7u32.to_be_bytes());
                let meta = DatagramMeta {
                    frame: 0,
                    time: at(0),
                    src: SocketAddr::new([10, 9, 0, (i % 8) as u8].into(), 4000),
                    dst: "10.9.1.1:5000".parse().unwrap(),
                };
                routed.datagram(&meta, &p, &mut |_| {});
            }
        }
        let held = hold.held_now();
        let each = heap(12) + std::mem::size_of::<(DatagramMeta, Box<[u8]>)>();
        assert!(
            held * each <= HOLD_MAX_BYTES,
            "{held} datagrams of {each} bytes held"
        );
        let c = hold.counters();
        // Beyond the bound a flow's held datagrams went on unheld, and so did it.
        assert!(c.not_held_full > 0, "{c:?}");
        assert!(c.held < u64::from(packets), "{c:?}");
        assert_eq!(hold.bytes, held * held_bytes(12));
    }

    /// Every shard times the REGISTERs of its Call-IDs: the registrations records of 8
    /// shards add up to one correlator's, with ids no two records share, and `finish`
    /// emits the minutes still held.
    #[test]
    fn registrations_of_every_shard_add_up_to_one_correlators() {
        let single = Correlator::new(CallLimits::default(), MediaLimits::default())
            .with_registration_records(true);
        let sharded = ShardedCorrelator::new(8, CallLimits::default(), MediaLimits::default())
            .with_registration_records(true);
        let mut single = single;
        let (mut one, mut many) = (Vec::new(), Vec::new());
        let reg = |n: u32, ms: i64| -> Vec<Event> {
            let id = format!("reg-{n}@x");
            vec![
                Event::Sip(ms, sip(&id, "REGISTER sip:x SIP/2.0", "1 REGISTER", None)),
                Event::Sip(ms + 20, sip(&id, "SIP/2.0 200 OK", "1 REGISTER", None)),
            ]
        };
        for n in 0..100u32 {
            // Two minutes of attempts, each one 20 ms.
            for e in reg(n, i64::from(n) * 1_000) {
                feed(&mut single, e, &mut one);
            }
            for e in reg(n, i64::from(n) * 1_000) {
                feed(&mut &sharded, e, &mut many);
            }
        }
        sharded.advance(at(200_000), &mut |r| many.push(r));
        single.advance(at(200_000), &mut |r| one.push(r));
        single.finish(ClosedBy::CaptureEnd, &mut |r| one.push(r));
        sharded.finish(ClosedBy::CaptureEnd, &mut |r| many.push(r));
        let sum = |records: &[Record]| {
            let mut by_minute = std::collections::BTreeMap::new();
            let mut ids = std::collections::BTreeSet::new();
            for r in records {
                if let Record::Registrations(r) = r {
                    assert!(ids.insert(r.record_id.clone()), "id shared: {r:?}");
                    let m = by_minute.entry(r.minute_start).or_insert((0, 0, 0));
                    m.0 += r.attempts;
                    m.1 += r.registered;
                    m.2 += r.rrd_ms;
                }
            }
            by_minute
        };
        let (one, many_sum) = (sum(&one), sum(&many));
        assert_eq!(one.values().map(|m| m.0).sum::<u64>(), 100);
        assert_eq!(one, many_sum);
        let records = many
            .iter()
            .filter(|r| matches!(r, Record::Registrations(_)))
            .count();
        assert!(records > one.len(), "one record per shard and minute");
    }

    /// Open calls of every shard: the status view gets the most recent in all, and live
    /// listen finds a call by its Call-ID and by any key test, whatever its shard.
    #[test]
    fn open_calls_are_found_over_every_shard() {
        let sharded = ShardedCorrelator::new(4, CallLimits::default(), MediaLimits::default());
        let mut out = Vec::new();
        for n in 0..20u32 {
            let id = format!("open-{n}@x");
            let ip = format!("10.1.0.{}", n + 1);
            feed(
                &mut &sharded,
                Event::Sip(
                    i64::from(n) * 10,
                    sip(&id, "INVITE sip:b@x SIP/2.0", "1 INVITE", Some(&ip)),
                ),
                &mut out,
            );
        }
        let mut per_shard = Vec::new();
        sharded.for_each(|c| per_shard.push(c.calls().open_calls()));
        assert!(
            per_shard.iter().filter(|n| **n > 0).count() > 1,
            "{per_shard:?}"
        );

        let (calls, more) = sharded.active_calls(5);
        let ids: Vec<&str> = calls.iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "open-19@x",
                "open-18@x",
                "open-17@x",
                "open-16@x",
                "open-15@x"
            ]
        );
        assert_eq!(more, 15);
        let (calls, more) = sharded.active_calls(100);
        assert_eq!((calls.len(), more), (20, 0));

        for n in 0..20u32 {
            let id = format!("open-{n}@x");
            let call = sharded.listenable(&id).expect("open");
            assert_eq!(call.call_key, id);
            assert_eq!(call.codecs.len(), 1, "{call:?}");
            let found = sharded.listenable_matching(|key| key == id).expect("found");
            assert_eq!(found.call_key, id);
        }
        assert!(sharded.listenable("none@x").is_none());
        assert!(sharded.listenable_matching(|_| false).is_none());
    }

    /// Orphan RTP beyond every shard's share of the per-minute budget: each shard sums up
    /// its own in a summary of the minute, with an id of its own, and the summaries add up
    /// to every orphan stream.
    #[test]
    fn orphan_summaries_of_several_shards_have_ids_of_their_own() {
        let media = MediaLimits {
            max_orphan_records_per_minute: 4,
            ..MediaLimits::default()
        };
        let sharded = ShardedCorrelator::new(4, CallLimits::default(), media);
        let mut out = Vec::new();
        let streams = 200u32;
        for i in 0..streams {
            for seq in 0..3u16 {
                feed(
                    &mut &sharded,
                    Event::Rtp(
                        i64::from(i) * 10 + i64::from(seq),
                        format!("10.66.{}.{}:4000", i / 250, i % 250),
                        "10.0.0.1:5000".into(),
                        seq,
                        i,
                    ),
                    &mut out,
                );
            }
        }
        sharded.advance(at(200_000), &mut |r| out.push(r));
        sharded.finish(ClosedBy::CaptureEnd, &mut |r| out.push(r));
        let summaries: Vec<_> = out
            .iter()
            .filter_map(|r| match r {
                Record::OrphanStreams(s) => Some(s),
                _ => None,
            })
            .collect();
        let singles = out
            .iter()
            .filter(|r| matches!(r, Record::Stream(_)))
            .count() as u64;
        assert!(summaries.len() > 1, "{} summaries", summaries.len());
        let ids: std::collections::BTreeSet<&str> =
            summaries.iter().map(|s| s.record_id.as_str()).collect();
        assert_eq!(ids.len(), summaries.len(), "ids shared");
        let summed: u64 = summaries.iter().map(|s| s.streams).sum();
        assert_eq!(singles + summed, u64::from(streams));
    }

    /// An orphan stream's RTCP (both ports one above the RTP's, RFC 3550) goes to the shard
    /// of the stream it reports on, so it is kept with it: at top speed on two capture
    /// threads the sources campaign's `gst_rtcp_orphan_streams.pcap` lost the RTCP of its
    /// orphan streams when it landed in another shard.
    #[test]
    fn an_orphan_streams_rtcp_goes_to_the_streams_shard() {
        let sharded = ShardedCorrelator::new(8, CallLimits::default(), MediaLimits::default());
        let mut next = crate::testing::xorshift(7);
        let meta = |src: SocketAddr, dst: SocketAddr| DatagramMeta {
            frame: 1,
            time: at(0),
            src,
            dst,
        };
        let mut shards = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let r = next();
            let a = SocketAddr::from(([10, 1, (r >> 8) as u8, r as u8], (r >> 16) as u16 & !1));
            let b = SocketAddr::from((
                [10, 2, (r >> 32) as u8, (r >> 40) as u8],
                (r >> 48) as u16 & !1,
            ));
            let rtcp = |addr: SocketAddr| SocketAddr::new(addr.ip(), addr.port() | 1);
            let shard = sharded.shard_of_datagram(&meta(a, b), &[0x80]);
            assert_eq!(shard, sharded.shard_of_datagram(&meta(b, a), &[0x80]));
            assert_eq!(
                shard,
                sharded.shard_of_datagram(&meta(rtcp(a), rtcp(b)), &[0x81])
            );
            assert_eq!(
                shard,
                sharded.shard_of_datagram(&meta(rtcp(b), rtcp(a)), &[0x81])
            );
            shards.insert(shard);
        }
        assert_eq!(shards.len(), 8, "orphan flows spread over every shard");
    }

    /// The placement is keyed: two correlators (each with a key of its own) place the same
    /// Call-IDs differently, and Call-IDs crafted to share one shard under the unkeyed hash
    /// the placement used before (std's SipHash with its fixed key, the shard the remainder)
    /// spread over every shard, as do address pairs crafted against the fixed multiply that
    /// placed orphan flows; the calls are whole and counted in the shards they went to.
    /// What a shutdown reports does not depend on where the keyed placement put each call:
    /// two correlators (two keys) fed the same calls report them in the same order, by
    /// first message.
    #[test]
    fn a_shutdown_reports_in_the_same_order_whatever_the_placement() {
        let report = || {
            let c = ShardedCorrelator::new(8, CallLimits::default(), MediaLimits::default());
            let mut out = Vec::new();
            for n in 0..40 {
                let invite = sip(
                    &format!("order-{n}@x"),
                    "INVITE sip:b@x SIP/2.0",
                    "1 INVITE",
                    None,
                );
                feed(&mut &c, Event::Sip(n, invite), &mut out);
            }
            let mut ended = Vec::new();
            c.finish(ClosedBy::Shutdown, &mut |r| {
                if let Record::Call(call) = r {
                    ended.push(call.call_id.clone());
                }
            });
            ended
        };
        let expected: Vec<String> = (0..40).map(|n| format!("order-{n}@x")).collect();
        assert_eq!(report(), expected);
        assert_eq!(report(), expected);
    }

    #[test]
    fn placement_is_keyed_and_spreads_crafted_call_ids() {
        use std::hash::BuildHasherDefault;
        let shards = 8;
        let new = || ShardedCorrelator::new(shards, CallLimits::default(), MediaLimits::default());
        let (a, b) = (new(), new());
        let ids: Vec<String> = (0..64).map(|i| format!("fixed-{i}@x")).collect();
        let place = |c: &ShardedCorrelator| -> Vec<usize> {
            ids.iter().map(|id| c.shard_of_call(id)).collect()
        };
        // Equal by chance once in 8^64.
        assert_ne!(place(&a), place(&b));
        assert_eq!(place(&a), place(&a), "stable within a correlator");

        // What a sender who knew the old function could send: Call-IDs all in shard 0.
        let unkeyed = |id: &str| {
            BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(calls::call_key(id))
                % shards as u64
        };
        let crafted: Vec<String> = (0..)
            .map(|i| format!("crafted-{i}@x"))
            .filter(|id| unkeyed(id) == 0)
            .take(256)
            .collect();
        let mut out = Vec::new();
        for (n, id) in crafted.iter().enumerate() {
            let invite = sip(id, "INVITE sip:b@x SIP/2.0", "1 INVITE", None);
            feed(&mut &a, Event::Sip(n as i64, invite), &mut out);
        }
        let mut per_shard = Vec::new();
        a.for_each(|c| per_shard.push(c.calls().open_calls()));
        // An empty shard by chance once in about 10^14.
        assert!(per_shard.iter().all(|n| *n > 0), "{per_shard:?}");
        assert_eq!(per_shard.iter().sum::<usize>(), crafted.len());
        for (i, id) in crafted.iter().enumerate() {
            assert_eq!(
                a.listenable(id).map(|c| c.call_key),
                Some(id.clone()),
                "found in its shard"
            );
            assert_eq!(a.shard_of_call(id), place_of(&a, id), "{i}");
        }

        // Orphan address pairs the fixed multiply put in shard 0.
        let old_mix = |addr: &SocketAddr| -> u64 {
            let IpAddr::V4(v4) = addr.ip() else {
                unreachable!()
            };
            (u64::from(u32::from(v4)) ^ (u64::from(addr.port()) << 32))
                .wrapping_mul(0xFF51_AFD7_ED55_8CCD)
        };
        let old_pair = |m: &DatagramMeta| {
            ((old_mix(&m.src) ^ old_mix(&m.dst)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
                % shards
        };
        let metas: Vec<DatagramMeta> = (0u32..)
            .map(|i| DatagramMeta {
                frame: 0,
                time: at(0),
                src: SocketAddr::from(([10, 66, (i >> 8) as u8, i as u8], 4000)),
                dst: "10.0.0.1:5000".parse().unwrap(),
            })
            .filter(|m| old_pair(m) == 0)
            .take(256)
            .collect();
        let mut per_shard = vec![0; shards];
        for m in &metas {
            let shard = a.shard_of_datagram(m, &rtp(0, 1));
            let back = DatagramMeta {
                src: m.dst,
                dst: m.src,
                ..*m
            };
            assert_eq!(a.shard_of_datagram(&back, &rtp(0, 1)), shard, "both ways");
            per_shard[shard] += 1;
        }
        assert!(per_shard.iter().all(|n| *n > 0), "{per_shard:?}");
    }

    /// The shard whose correlator holds the open call `id`.
    fn place_of(c: &ShardedCorrelator, id: &str) -> usize {
        (0..c.shard_count())
            .find(|&s| c.lock(s).calls().open_call_keys().any(|k| k == id))
            .unwrap()
    }

    /// One packet of the proxied calls below: capture time (ms), the capture thread that
    /// sees it, and what it is.
    #[derive(Clone)]
    struct Captured {
        ms: i64,
        thread: usize,
        src: SocketAddr,
        dst: SocketAddr,
        packet: Packet,
    }

    #[derive(Clone)]
    enum Packet {
        Sip(String),
        Rtp(u16, u32),
    }

    const UAC: &str = "10.0.0.1:5060";
    const PROXY: &str = "10.0.0.9:5060";
    const UAS: &str = "10.0.0.2:5060";

    /// Calls through a proxy on the tapped box (UAC → proxy → UAS, one Call-ID per call,
    /// the proxy record-routing and stateful): answered (with RTP both ways), busy and
    /// cancelled ones. Hop 1 (UAC ↔ proxy) and the caller's RTP are captured by thread 0,
    /// hop 2 (proxy ↔ UAS) and the callee's RTP by thread 1, as a fanout by flow may split
    /// them.
    fn proxied_calls(calls: u32) -> Vec<Captured> {
        let mut out = Vec::new();
        for n in 0..calls {
            let id = format!("proxied-{n}@x");
            let start = i64::from(n) * 37;
            let caller_media = format!("10.1.0.{}", n + 1);
            let callee_media = format!("10.2.0.{}", n + 1);
            let msg = |first: &str, cseq: &str, branch: &str, to_tag: bool, sdp: Option<&str>| {
                let body = sdp.map_or(String::new(), |ip| {
                    format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n")
                });
                format!(
                    "{first}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{id}{branch}\r\nFrom: <sip:a@x>;tag=a\r\n\
                     To: <sip:b@x>{}\r\nCall-ID: {id}\r\nCSeq: {cseq}\r\nUser-Agent: {branch}\r\n{}Content-Length: {}\r\n\r\n{body}",
                    if to_tag { ";tag=b" } else { "" },
                    if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" },
                    body.len()
                )
            };
            let mut media = Vec::new();
            let mut sip = |ms: i64, hop: usize, forward: bool, text: String| {
                let (near, far) = if hop == 1 { (UAC, PROXY) } else { (PROXY, UAS) };
                let (src, dst) = if forward { (near, far) } else { (far, near) };
                out.push(Captured {
                    ms: start + ms,
                    thread: hop - 1,
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    packet: Packet::Sip(text),
                });
            };
            let invite = "INVITE sip:b@x SIP/2.0";
            for hop in [1, 2] {
                let b = if hop == 1 { "c" } else { "p" };
                let at = if hop == 1 { 0 } else { 2 };
                sip(
                    at,
                    hop,
                    true,
                    msg(invite, "1 INVITE", b, false, Some(&caller_media)),
                );
                sip(
                    at + 1,
                    hop,
                    false,
                    msg("SIP/2.0 100 Trying", "1 INVITE", b, false, None),
                );
            }
            match n % 3 {
                0 => {
                    for (at, hop) in [(40, 2), (41, 1)] {
                        let b = if hop == 1 { "c" } else { "p" };
                        sip(
                            at,
                            hop,
                            false,
                            msg("SIP/2.0 180 Ringing", "1 INVITE", b, true, None),
                        );
                    }
                    for (at, hop) in [(300, 2), (301, 1)] {
                        let b = if hop == 1 { "c" } else { "p" };
                        let ok = msg("SIP/2.0 200 OK", "1 INVITE", b, true, Some(&callee_media));
                        sip(at, hop, false, ok);
                    }
                    for (at, hop) in [(310, 1), (311, 2)] {
                        sip(
                            at,
                            hop,
                            true,
                            msg("ACK sip:b@x SIP/2.0", "1 ACK", "ack", true, None),
                        );
                    }
                    for i in 0..40u16 {
                        let ms = start + 320 + i64::from(i) * 20;
                        for (thread, src, dst, ssrc) in [
                            (0, &caller_media, &callee_media, 2 * n),
                            (1, &callee_media, &caller_media, 2 * n + 1),
                        ] {
                            media.push(Captured {
                                ms,
                                thread,
                                src: format!("{src}:4000").parse().unwrap(),
                                dst: format!("{dst}:4000").parse().unwrap(),
                                packet: Packet::Rtp(i, ssrc),
                            });
                        }
                    }
                    for (at, hop) in [(1_200, 1), (1_201, 2)] {
                        sip(
                            at,
                            hop,
                            true,
                            msg("BYE sip:b@x SIP/2.0", "2 BYE", "bye", true, None),
                        );
                    }
                    for (at, hop) in [(1_210, 2), (1_211, 1)] {
                        sip(
                            at,
                            hop,
                            false,
                            msg("SIP/2.0 200 OK", "2 BYE", "bye", true, None),
                        );
                    }
                }
                1 => {
                    for (at, hop) in [(60, 2), (63, 1)] {
                        let b = if hop == 1 { "c" } else { "p" };
                        sip(
                            at,
                            hop,
                            false,
                            msg("SIP/2.0 486 Busy Here", "1 INVITE", b, true, None),
                        );
                        sip(
                            at + 1,
                            hop,
                            true,
                            msg("ACK sip:b@x SIP/2.0", "1 ACK", b, true, None),
                        );
                    }
                }
                _ => {
                    for (at, hop) in [(40, 2), (41, 1)] {
                        let b = if hop == 1 { "c" } else { "p" };
                        sip(
                            at,
                            hop,
                            false,
                            msg("SIP/2.0 180 Ringing", "1 INVITE", b, true, None),
                        );
                    }
                    for (at, hop) in [(500, 1), (502, 2)] {
                        let b = if hop == 1 { "c" } else { "p" };
                        sip(
                            at,
                            hop,
                            true,
                            msg("CANCEL sip:b@x SIP/2.0", "1 CANCEL", b, false, None),
                        );
                        sip(
                            at + 1,
                            hop,
                            false,
                            msg("SIP/2.0 200 OK", "1 CANCEL", b, true, None),
                        );
                    }
                    for (at, hop) in [(510, 2), (512, 1)] {
                        let b = if hop == 1 { "c" } else { "p" };
                        sip(
                            at,
                            hop,
                            false,
                            msg("SIP/2.0 487 Request Terminated", "1 INVITE", b, true, None),
                        );
                        sip(
                            at + 1,
                            hop,
                            true,
                            msg("ACK sip:b@x SIP/2.0", "1 ACK", b, true, None),
                        );
                    }
                }
            }
            out.extend(media);
        }
        out
    }

    fn feed_captured(c: &mut impl Correlate, p: &Captured, out: &mut Vec<Record>) {
        match &p.packet {
            Packet::Sip(text) => {
                let msg = crate::decode::sip::parse(text.as_bytes()).unwrap();
                let meta = MessageMeta {
                    frame: 0,
                    time: at(p.ms),
                    src: p.src,
                    dst: p.dst,
                    transport: crate::dissect::Transport::Udp,
                };
                c.sip(&meta, &msg, &mut |r| out.push(r));
            }
            Packet::Rtp(seq, ssrc) => {
                let meta = DatagramMeta {
                    frame: 0,
                    time: at(p.ms),
                    src: p.src,
                    dst: p.dst,
                };
                c.datagram(&meta, &rtp(*seq, *ssrc), &mut |r| out.push(r));
            }
        }
    }

    /// The call records, by Call-ID.
    fn call_records(records: &[Record]) -> Vec<crate::record::CallRecord> {
        let mut calls: Vec<_> = records
            .iter()
            .filter_map(|r| match r {
                Record::Call(c) => Some((**c).clone()),
                _ => None,
            })
            .collect();
        calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        calls
    }

    /// Proxied calls (two hops, one Call-ID) whose packets two capture threads deliver in
    /// their own order — each thread's ring hands over a block when its timeout (100 ms)
    /// passes, so one thread's packets come up to a block timeout after the other's
    /// (the second hop's INVITE before the first's, a 200 before its 180, the ACK and BYE
    /// before the 200, the 487 before the CANCEL, RTP before its SDP) — give, with the
    /// reorder window of the daemon (two block timeouts and a margin), the records one
    /// correlator gives fed in capture order: every field, the first hop's addresses too.
    #[test]
    fn proxied_calls_delivered_by_two_threads_give_the_time_ordered_records() {
        let packets = proxied_calls(30);
        let mut ordered = packets.clone();
        ordered.sort_by_key(|p| p.ms);
        let mut single = Correlator::new(CallLimits::default(), MediaLimits::default());
        let mut want = Vec::new();
        for p in &ordered {
            feed_captured(&mut single, p, &mut want);
        }
        single.finish(ClosedBy::CaptureEnd, &mut |r| want.push(r));
        let want = call_records(&want);
        assert_eq!(want.len(), 30);
        for c in &want {
            assert_eq!(
                (c.caller_address.as_str(), c.callee_address.as_str()),
                (UAC, PROXY)
            );
            assert_eq!(c.user_agents.caller.as_deref(), Some("c"));
            assert!(c.complete, "{c:?}");
        }
        let answered: Vec<_> = want
            .iter()
            .filter(|c| c.outcome == crate::record::Outcome::Answered)
            .collect();
        assert_eq!(answered.len(), 10);
        assert!(answered.iter().all(|c| c
            .media_quality
            .caller_to_callee
            .iter()
            .chain(&c.media_quality.callee_to_caller)
            .map(|s| s.metrics.packets)
            .sum::<u64>()
            == 80));

        let block = 100;
        let window = std::time::Duration::from_millis(2 * block as u64 + 50);
        let hold = window + std::time::Duration::from_millis(2 * block as u64 + 50 + 250);
        // Block phases of the two threads, and a pseudo-random delay within a block
        // (a block handed over early when full).
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for phases in [(0, 50), (50, 0), (0, 99), (99, 0), (30, 70), (0, 0)] {
            for shards in [1, 2, 4] {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let early = (seed >> 33).is_multiple_of(2);
                let arrival = |p: &Captured| {
                    let phase = if p.thread == 0 { phases.0 } else { phases.1 };
                    let retired = (p.ms - phase).div_euclid(block) * block + block + phase;
                    // Some blocks fill up and are handed over early: what their first
                    // half holds comes half way, the rest as it is captured (a thread
                    // still delivers in its own capture order).
                    if early && (retired / block).rem_euclid(3) == 0 {
                        p.ms.max(retired - block / 2)
                    } else {
                        retired
                    }
                };
                let mut arrived = packets.clone();
                arrived.sort_by_key(|p| (arrival(p), p.thread, p.ms));
                assert!(
                    arrived.windows(2).any(|w| w[1].ms < w[0].ms),
                    "the threads deliver out of capture order"
                );
                let sharded =
                    ShardedCorrelator::new(shards, CallLimits::default(), MediaLimits::default())
                        .with_reorder_window(window);
                let mut holds = [MediaHold::new(hold), MediaHold::new(hold)];
                let mut got = Vec::new();
                let mut tick = 0;
                for p in &arrived {
                    let now = arrival(p);
                    while tick + 250 <= now {
                        tick += 250;
                        sharded.advance(at(tick), &mut |r| got.push(r));
                    }
                    let mut routed = Routed {
                        shards: &sharded,
                        hold: &mut holds[p.thread],
                    };
                    feed_captured(&mut routed, p, &mut got);
                    routed.release(at(now), &mut |r| got.push(r));
                }
                for hold in &mut holds {
                    Routed {
                        shards: &sharded,
                        hold,
                    }
                    .release_all(&mut |r| got.push(r));
                }
                sharded.finish(ClosedBy::CaptureEnd, &mut |r| got.push(r));
                let got = call_records(&got);
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g, w, "phases {phases:?}, {shards} shards");
                }
                let stats = sharded.stats();
                assert!(stats.sip_reordered > 0, "{stats:?}");
                assert_eq!((stats.sip_late, stats.sip_window_full), (0, 0), "{stats:?}");
                assert_eq!(sharded.sip_in_window(), 0);
            }
        }
    }

    /// Regression: with a reorder window, call A's SDP (callee port 4000, so RTCP on 4001)
    /// is applied a window late, after call B's RTP to port 4001 of the same callee address
    /// (B's answer, still in the window) has started. Its route for 4001 (RTCP only) took
    /// B's RTP to A's shard, where it became an orphan stream until B's answer was applied
    /// (found with `teledge-gencap`, whose callee ports are consecutive). RTP does not take
    /// an RTCP-only route, as the media tracker does not attach RTP to one.
    #[test]
    fn rtp_to_a_port_another_call_announced_for_rtcp_stays_with_its_call_in_a_window() {
        let sharded = ShardedCorrelator::new(2, CallLimits::default(), MediaLimits::default())
            .with_reorder_window(std::time::Duration::from_millis(250));
        let mut ids = (0..).map(|i| format!("call-{i}@x"));
        let a = ids.next().unwrap();
        let b = ids
            .find(|id| sharded.shard_of_call(id) != sharded.shard_of_call(&a))
            .unwrap();
        let answer = |id: &str, port: &str| {
            sip(id, "SIP/2.0 200 OK", "1 INVITE", Some("10.2.0.1"))
                .replace("m=audio 4000", &format!("m=audio {port}"))
        };
        let mut events = vec![
            Event::Sip(
                0,
                sip(&a, "INVITE sip:b@x SIP/2.0", "1 INVITE", Some("10.1.0.1")),
            ),
            Event::Sip(
                5,
                sip(&b, "INVITE sip:b@x SIP/2.0", "1 INVITE", Some("10.1.0.2")),
            ),
            Event::Sip(1_000, answer(&a, "4000")),
            Event::Sip(1_050, answer(&b, "4001")),
        ];
        for i in 0..50u16 {
            let ms = 1_070 + i64::from(i) * 20;
            let (caller, callee) = ("10.1.0.2:4000".to_owned(), "10.2.0.1:4001".to_owned());
            events.push(Event::Rtp(ms, caller.clone(), callee.clone(), i, 1));
            events.push(Event::Rtp(ms, callee, caller, i, 2));
        }
        for (id, ms) in [(&a, 2_100), (&b, 2_110)] {
            events.push(Event::Sip(
                ms,
                sip(id, "BYE sip:b@x SIP/2.0", "2 BYE", None),
            ));
            events.push(Event::Sip(ms + 5, sip(id, "SIP/2.0 200 OK", "2 BYE", None)));
        }
        let (mut single, mut one, mut many) = (
            Correlator::new(CallLimits::default(), MediaLimits::default()),
            Vec::new(),
            Vec::new(),
        );
        let mut tick = 250;
        for event in events {
            let (Event::Sip(ms, _) | Event::Rtp(ms, ..)) = &event;
            // The daemon's tick, every 250 ms.
            while tick <= *ms {
                sharded.advance(at(tick), &mut |r| many.push(r));
                tick += 250;
            }
            feed(&mut single, event.clone(), &mut one);
            feed(&mut &sharded, event, &mut many);
        }
        single.finish(ClosedBy::CaptureEnd, &mut |r| one.push(r));
        sharded.finish(ClosedBy::CaptureEnd, &mut |r| many.push(r));
        let mut expected = vec![(a, 0), (b, 100)];
        expected.sort();
        assert_eq!(calls_with_packets(&one), expected);
        assert_eq!(calls_with_packets(&many), expected);
        let (_, media) = sharded.counters();
        assert_eq!(media.orphan_streams, 0, "{media:?}");
        assert!(
            !many.iter().any(|r| matches!(r, Record::Stream(_))),
            "{many:#?}"
        );
    }

    /// A call re-INVITEd with ever new ports forgets its oldest endpoints beyond 32
    /// ([`super::media::MAX_ENDPOINTS_PER_CALL`]), while a stream to the first one still
    /// flows (from a relay no SDP announced, so only its destination has a route). Its route
    /// must outlive the endpoint as long as the stream does: swept, the stream's later
    /// packets went to the address pair's shard and were measured a second time there, as
    /// an orphan, the call keeping only its first packets.
    #[test]
    fn a_forgotten_endpoint_keeps_its_route_while_its_stream_flows() {
        let sharded = ShardedCorrelator::new(8, CallLimits::default(), MediaLimits::default());
        let id = "renegotiated@x";
        let home = sharded.shard_of_call(id);
        let caller: SocketAddr = "10.1.0.1:4000".parse().unwrap();
        // A relay port whose address pair lands in another shard than the call.
        let relay = (7000..)
            .map(|port| SocketAddr::new("10.3.0.1".parse().unwrap(), port))
            .find(|relay| {
                let meta = DatagramMeta {
                    frame: 0,
                    time: at(0),
                    src: *relay,
                    dst: caller,
                };
                sharded.shard_of_datagram(&meta, &rtp(0, 5)) != home
            })
            .unwrap();
        let offer = |cseq: u32, port: u32| {
            let text = sip(
                id,
                "INVITE sip:b@x SIP/2.0",
                &format!("{cseq} INVITE"),
                Some("10.1.0.1"),
            )
            .replace("m=audio 4000", &format!("m=audio {port}"));
            // A re-INVITE is in the dialog: it carries the callee's tag.
            if cseq > 1 {
                text.replace("To: <sip:b@x>\r\n", "To: <sip:b@x>;tag=b\r\n")
            } else {
                text
            }
        };
        let answer = |cseq: u32| {
            sip(
                id,
                "SIP/2.0 200 OK",
                &format!("{cseq} INVITE"),
                Some("10.2.0.1"),
            )
        };
        let mut events = vec![Event::Sip(0, offer(1, 4000)), Event::Sip(10, answer(1))];
        // 20 re-INVITEs, each moving the caller's RTP and RTCP: 40 endpoints more.
        for n in 2..=21u32 {
            let ms = 100 + i64::from(n) * 20;
            events.push(Event::Sip(ms, offer(n, 4000 + 2 * (n - 1))));
            events.push(Event::Sip(ms + 5, answer(n)));
        }
        // The relay's stream to the first endpoint, 20 s: past a sweep of every stripe.
        let packets = 1_000u16;
        for seq in 0..packets {
            events.push(Event::Rtp(
                20 + i64::from(seq) * 20,
                relay.to_string(),
                caller.to_string(),
                seq,
                5,
            ));
        }
        events.push(Event::Sip(
            20_100,
            sip(id, "BYE sip:b@x SIP/2.0", "30 BYE", None),
        ));
        events.push(Event::Sip(
            20_105,
            sip(id, "SIP/2.0 200 OK", "30 BYE", None),
        ));
        events.sort_by_key(|e| match e {
            Event::Sip(ms, _) | Event::Rtp(ms, ..) => *ms,
        });
        let (mut single, mut one, mut many) = (
            Correlator::new(CallLimits::default(), MediaLimits::default()),
            Vec::new(),
            Vec::new(),
        );
        let mut tick = 250;
        for event in events {
            let (Event::Sip(ms, _) | Event::Rtp(ms, ..)) = &event;
            // The daemon's tick, every 250 ms: each sweeps one stripe of the route table.
            while tick <= *ms {
                sharded.advance(at(tick), &mut |r| many.push(r));
                tick += 250;
            }
            feed(&mut single, event.clone(), &mut one);
            feed(&mut &sharded, event, &mut many);
        }
        assert!(tick / 250 > ROUTE_STRIPES as i64, "every stripe swept");
        single.finish(ClosedBy::CaptureEnd, &mut |r| one.push(r));
        sharded.finish(ClosedBy::CaptureEnd, &mut |r| many.push(r));
        let expected = vec![(id.to_owned(), u64::from(packets))];
        assert_eq!(calls_with_packets(&one), expected);
        assert_eq!(calls_with_packets(&many), expected);
        let (_, media) = sharded.counters();
        assert!(media.call_endpoints_forgotten >= 8, "{media:?}");
        assert_eq!(media.endpoints_kept_for_streams, 1, "{media:?}");
        assert_eq!(media.orphan_streams, 0, "{media:?}");
        assert_eq!(media.rtp_packets, u64::from(packets), "measured once");
        assert!(!many.iter().any(|r| matches!(r, Record::Stream(_))));
        // The stream closed with its call: nothing is kept for it any more.
        let mut kept = 0;
        sharded.for_each(|c| kept += c.media().kept_for_streams());
        assert_eq!(kept, 0);
    }

    /// The window's bounds apply the earliest messages before their window passed, counted;
    /// a message more than the window late is applied after later ones, counted. Each bound
    /// alone (messages, then bytes: every waiting message counted at its owned form, its
    /// bytes included, and its slot), then both at their defaults.
    #[test]
    fn the_reorder_window_is_bounded_and_counted() {
        let window = std::time::Duration::from_millis(250);
        let flood = |sharded: &ShardedCorrelator, n: u32, out: &mut Vec<Record>| {
            for i in 0..n {
                feed(&mut &*sharded, Event::Sip(0, flood_invite(i)), out);
            }
        };
        let held = |sharded: &ShardedCorrelator| sharded.lock(0).window.bytes;
        let new = || {
            ShardedCorrelator::new(1, CallLimits::default(), MediaLimits::default())
                .with_reorder_window(window)
        };

        // The message bound.
        let sharded = new().with_window_bounds(WINDOW_MAX_MESSAGES, usize::MAX);
        let mut out = Vec::new();
        let n = WINDOW_MAX_MESSAGES as u32 + 10;
        flood(&sharded, n, &mut out);
        let stats = sharded.stats();
        assert_eq!(stats.sip_window_full, 10, "{stats:?}");
        assert_eq!(sharded.sip_in_window(), WINDOW_MAX_MESSAGES);
        assert_eq!(sharded.open_calls(), 10);
        // A message more than the window late is applied at once after later ones, counted.
        let late = sip("late@x", "INVITE sip:b@x SIP/2.0", "1 INVITE", None);
        sharded.advance(at(1_000), &mut |r| out.push(r));
        assert_eq!(sharded.sip_in_window(), 0);
        assert_eq!(held(&sharded), 0);
        feed(&mut &sharded, Event::Sip(-10, late), &mut out);
        sharded.advance(at(2_000), &mut |r| out.push(r));
        let stats = sharded.stats();
        assert_eq!((stats.sip_reordered, stats.sip_late), (1, 1), "{stats:?}");
        assert_eq!(sharded.open_calls(), n as usize + 1);

        // The byte bound: what the window holds stays within it, less than a message short.
        let bound = 64 << 10;
        let sharded = new().with_window_bounds(usize::MAX, bound);
        let n = 1_000;
        flood(&sharded, n, &mut out);
        let largest = flood_held_bytes(n - 1);
        assert!(largest > flood_invite(n - 1).len(), "the parse is counted");
        let (bytes, waiting) = (held(&sharded), sharded.sip_in_window());
        assert!(
            bytes <= bound && bytes + largest > bound,
            "{bytes} of {bound}"
        );
        assert_eq!(
            bytes,
            (n - waiting as u32..n).map(flood_held_bytes).sum::<usize>(),
            "the latest messages wait, each counted at what it holds"
        );
        let stats = sharded.stats();
        assert_eq!(
            stats.sip_window_full as usize + waiting,
            n as usize,
            "{stats:?}"
        );
        assert_eq!(sharded.open_calls() as u64, stats.sip_window_full);
        sharded.advance(at(1_000), &mut |r| out.push(r));
        assert_eq!((sharded.sip_in_window(), held(&sharded)), (0, 0));
        assert_eq!(sharded.open_calls(), n as usize);

        // Both at their defaults: whichever binds first holds.
        let sharded = new();
        let n = WINDOW_MAX_MESSAGES as u32 + 10;
        flood(&sharded, n, &mut out);
        let (bytes, waiting) = (held(&sharded), sharded.sip_in_window());
        assert!(bytes <= WINDOW_MAX_BYTES && waiting <= WINDOW_MAX_MESSAGES);
        assert!(
            waiting == WINDOW_MAX_MESSAGES || bytes + flood_held_bytes(n - 1) > WINDOW_MAX_BYTES
        );
        assert_eq!(
            sharded.stats().sip_window_full as usize + waiting,
            n as usize
        );
    }

    fn flood_invite(i: u32) -> String {
        sip(
            &format!("flood-{i}@x"),
            "INVITE sip:b@x SIP/2.0",
            "1 INVITE",
            None,
        )
    }

    /// What the window counts for [`flood_invite`] `i`.
    fn flood_held_bytes(i: u32) -> usize {
        let text = flood_invite(i);
        let msg = crate::decode::sip::parse(text.as_bytes()).unwrap();
        OwnedMessage::new(&msg).unwrap().held_bytes() + WINDOWED_SIP_BYTES
    }

    /// An RTCP report relayed by HEP waits in the window with its call's SIP: it reaches
    /// the call whose INVITE is still waiting there.
    #[test]
    fn hep_rtcp_waits_with_its_calls_sip_in_the_window() {
        let sharded = ShardedCorrelator::new(2, CallLimits::default(), MediaLimits::default())
            .with_reorder_window(std::time::Duration::from_millis(250));
        let mut out = Vec::new();
        let id = "rtcp@x";
        let invite = sip(id, "INVITE sip:b@x SIP/2.0", "1 INVITE", Some("10.1.0.1"));
        feed(&mut &sharded, Event::Sip(0, invite), &mut out);
        let ok = sip(id, "SIP/2.0 200 OK", "1 INVITE", Some("10.2.0.1"));
        feed(&mut &sharded, Event::Sip(10, ok), &mut out);
        assert_eq!(sharded.open_calls(), 0, "the INVITE waits in the window");
        assert!(sharded.hep_rtcp(id, at(50), &RtcpJson::default()));
        let bye = sip(id, "BYE sip:b@x SIP/2.0", "2 BYE", None);
        feed(&mut &sharded, Event::Sip(100, bye), &mut out);
        sharded.advance(at(5_000), &mut |r| out.push(r));
        let (calls, _) = sharded.counters();
        assert_eq!((calls.hep_rtcp_attached, calls.hep_rtcp_unmatched), (1, 0));
        let records = call_records(&out);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].hep_rtcp.len(), 1, "{:?}", records[0]);
    }
}
