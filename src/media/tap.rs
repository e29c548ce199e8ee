//! The listen tap: RTP payloads of the calls someone listens to, handed from the capture
//! path to live-listen sessions (`listen`, WHEP).
//!
//! The capture path owns nothing here but a clone of [`ListenTap`] (the media tracker holds
//! it; [`crate::correlation::Correlator::set_listen_tap`] sets it). Its contract:
//!
//! - **Nothing is done when no one listens**: [`ListenTap::is_listening`] is one relaxed
//!   atomic load, checked before anything else; no lock, no lookup, no copy.
//! - While someone listens, each RTP packet of a measured stream takes one uncontended mutex
//!   and one hash lookup by its call; only packets of a listened call are copied (once, shared
//!   by that call's listeners) and offered to each listener with `try_send` on a bounded
//!   channel of [`LISTENER_QUEUE`] packets. The capture path never waits: a full queue drops
//!   the packet and counts it (`packets_dropped`).
//! - When a call ends ([`ListenTap::call_ended`]) its listeners are removed, so their
//!   channels close and the sessions end.
//! - Listeners are bounded per call, per supervisor and in all ([`TapLimits`]); a refused
//!   registration is counted. The per-supervisor bound keeps one supervisor (or one stolen
//!   token) from taking every slot of the node and locking the others out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::media::packet::RtpPacket;

/// Packets queued per listener between the capture path and its session: 2 s of 20 ms
/// packets for both directions.
pub const LISTENER_QUEUE: usize = 200;

/// Which way a tapped packet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapDirection {
    CallerToCallee,
    CalleeToCaller,
}

/// One tapped RTP packet: its header fields and its payload (shared by the call's listeners).
#[derive(Debug, Clone)]
pub struct TapPacket {
    pub direction: TapDirection,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Arc<[u8]>,
}

/// Listeners allowed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapLimits {
    pub per_call: usize,
    /// Listeners of one supervisor (the owner named at [`ListenTap::subscribe`]), all calls.
    pub per_supervisor: usize,
    pub total: usize,
}

impl Default for TapLimits {
    fn default() -> Self {
        TapLimits {
            per_call: 4,
            per_supervisor: 4,
            total: 20,
        }
    }
}

/// Why a listener was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TapFull {
    #[error("this call already has its most listeners ({0})")]
    Call(usize),
    #[error("this supervisor already has its most listen sessions ({0})")]
    Supervisor(usize),
    #[error("the node already has its most listeners ({0})")]
    Total(usize),
}

/// Counters of the tap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapCounters {
    /// Packets offered to a listener's queue and taken.
    pub packets_forwarded: u64,
    /// Packets a full listener queue could not take.
    pub packets_dropped: u64,
    /// Registrations refused at a bound (all three).
    pub listeners_refused: u64,
    /// Of those, refused at the per-supervisor bound.
    pub listeners_refused_supervisor: u64,
    /// Listeners registered now.
    pub listeners: u64,
}

/// The hook between the capture path and live-listen sessions; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ListenTap {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Listeners registered (the fast path's only read).
    listening: AtomicUsize,
    limits: Mutex<TapLimits>,
    calls: Mutex<HashMap<String, Vec<Listener>>>,
    next_id: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    refused_supervisor: AtomicU64,
}

#[derive(Debug)]
struct Listener {
    id: u64,
    /// The supervisor whose session this is (its id, not a secret).
    owner: String,
    tx: mpsc::Sender<TapPacket>,
}

/// A registered listener: the packets of its call, until the call ends or this is dropped
/// (which unregisters it).
#[derive(Debug)]
pub struct Subscription {
    pub packets: mpsc::Receiver<TapPacket>,
    id: u64,
    call: String,
    tap: ListenTap,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tap.remove(&self.call, self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ListenTap {
    pub fn new(limits: TapLimits) -> Self {
        let tap = ListenTap::default();
        *lock(&tap.inner.limits) = limits;
        tap
    }

    /// True when anyone listens to any call: the capture path's only question when no one
    /// does.
    #[inline]
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed) != 0
    }

    /// Registers a listener of `owner` (a supervisor's id) to the call with this key (the
    /// correlator's call key). The caller checks that the call is active *after* this (a call
    /// ending in between then closes the subscription; one that ended before is seen by the
    /// check). The supervisor's own bound is checked before the node's, so a supervisor at
    /// its bound is told so even when the node is full too.
    pub fn subscribe(&self, call: &str, owner: &str) -> Result<Subscription, TapFull> {
        let limits = *lock(&self.inner.limits);
        let mut calls = lock(&self.inner.calls);
        let total: usize = calls.values().map(Vec::len).sum();
        let own = calls
            .values()
            .flatten()
            .filter(|l| l.owner == owner)
            .count();
        let refused = if own >= limits.per_supervisor {
            self.inner
                .refused_supervisor
                .fetch_add(1, Ordering::Relaxed);
            Some(TapFull::Supervisor(limits.per_supervisor))
        } else if total >= limits.total {
            Some(TapFull::Total(limits.total))
        } else if calls.get(call).map_or(0, Vec::len) >= limits.per_call {
            Some(TapFull::Call(limits.per_call))
        } else {
            None
        };
        if let Some(refused) = refused {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(refused);
        }
        let (tx, packets) = mpsc::channel(LISTENER_QUEUE);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        calls.entry(call.to_owned()).or_default().push(Listener {
            id,
            owner: owner.to_owned(),
            tx,
        });
        self.inner.listening.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            packets,
            id,
            call: call.to_owned(),
            tap: self.clone(),
        })
    }

    fn remove(&self, call: &str, id: u64) {
        let mut calls = lock(&self.inner.calls);
        if let Some(listeners) = calls.get_mut(call) {
            let before = listeners.len();
            listeners.retain(|l| l.id != id);
            let removed = before - listeners.len();
            self.inner.listening.fetch_sub(removed, Ordering::Relaxed);
            if listeners.is_empty() {
                calls.remove(call);
            }
        }
    }

    /// The call ended: its listeners' channels close (their sessions end).
    pub fn call_ended(&self, call: &str) {
        if !self.is_listening() {
            return;
        }
        if let Some(listeners) = lock(&self.inner.calls).remove(call) {
            self.inner
                .listening
                .fetch_sub(listeners.len(), Ordering::Relaxed);
        }
    }

    /// Every call ended (the correlator finished).
    pub fn all_ended(&self) {
        let mut calls = lock(&self.inner.calls);
        calls.clear();
        self.inner.listening.store(0, Ordering::Relaxed);
    }

    /// An RTP packet of a stream of `call` (`datagram` is the whole RTP packet `rtp` was
    /// decoded from). Call only when [`ListenTap::is_listening`].
    pub fn rtp(&self, call: &str, direction: TapDirection, rtp: &RtpPacket, datagram: &[u8]) {
        let calls = lock(&self.inner.calls);
        let Some(listeners) = calls.get(call) else {
            return;
        };
        let Some(payload) = payload_of(rtp, datagram) else {
            return;
        };
        let packet = TapPacket {
            direction,
            payload_type: rtp.payload_type,
            sequence: rtp.sequence,
            timestamp: rtp.timestamp,
            ssrc: rtp.ssrc,
            payload: Arc::from(payload),
        };
        for listener in listeners {
            match listener.tx.try_send(packet.clone()) {
                Ok(()) => self.inner.forwarded.fetch_add(1, Ordering::Relaxed),
                // A closed one is removed by its subscription's drop; a full one loses this
                // packet, counted.
                Err(_) => self.inner.dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    pub fn counters(&self) -> TapCounters {
        TapCounters {
            packets_forwarded: self.inner.forwarded.load(Ordering::Relaxed),
            packets_dropped: self.inner.dropped.load(Ordering::Relaxed),
            listeners_refused: self.inner.refused.load(Ordering::Relaxed),
            listeners_refused_supervisor: self.inner.refused_supervisor.load(Ordering::Relaxed),
            listeners: self.inner.listening.load(Ordering::Relaxed) as u64,
        }
    }
}

/// The payload of a decoded RTP packet: after the header (and extension), before padding.
fn payload_of<'a>(rtp: &RtpPacket, datagram: &'a [u8]) -> Option<&'a [u8]> {
    let pad = if datagram.first()? & 0x20 != 0 {
        usize::from(*datagram.last()?)
    } else {
        0
    };
    let end = datagram.len().checked_sub(pad)?;
    let start = end.checked_sub(rtp.payload_len)?;
    datagram.get(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::packet::decode_rtp;

    fn rtp(seq: u16, payload: &[u8], padding: u8) -> Vec<u8> {
        let mut p = vec![0x80 | if padding > 0 { 0x20 } else { 0 }, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&160u32.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(payload);
        if padding > 0 {
            p.extend(std::iter::repeat_n(0, usize::from(padding) - 1));
            p.push(padding);
        }
        p
    }

    #[test]
    fn payload_is_cut_from_header_and_padding() {
        let data = rtp(1, &[1, 2, 3], 4);
        let decoded = decode_rtp(&data).unwrap();
        assert_eq!(payload_of(&decoded, &data), Some(&[1u8, 2, 3][..]));
        let data = rtp(1, &[9; 160], 0);
        let decoded = decode_rtp(&data).unwrap();
        assert_eq!(payload_of(&decoded, &data).map(<[u8]>::len), Some(160));
    }

    #[test]
    fn listeners_get_their_call_only_are_bounded_and_end_with_the_call() {
        let tap = ListenTap::new(TapLimits {
            per_call: 2,
            per_supervisor: 3,
            total: 3,
        });
        assert!(!tap.is_listening());
        let mut a1 = tap.subscribe("a", "ann").unwrap();
        let _a2 = tap.subscribe("a", "bob").unwrap();
        assert_eq!(tap.subscribe("a", "cy").unwrap_err(), TapFull::Call(2));
        let b = tap.subscribe("b", "bob").unwrap();
        assert_eq!(tap.subscribe("c", "cy").unwrap_err(), TapFull::Total(3));
        assert!(tap.is_listening());
        let data = rtp(5, &[0xff; 160], 0);
        let packet = decode_rtp(&data).unwrap();
        tap.rtp("a", TapDirection::CallerToCallee, &packet, &data);
        tap.rtp("z", TapDirection::CallerToCallee, &packet, &data);
        let got = a1.packets.try_recv().unwrap();
        assert_eq!((got.sequence, got.payload.len()), (5, 160));
        assert!(a1.packets.try_recv().is_err());
        assert_eq!(tap.counters().packets_forwarded, 2);
        drop(b);
        assert_eq!(tap.counters().listeners, 2);
        tap.call_ended("a");
        assert!(!tap.is_listening());
        assert!(matches!(
            a1.packets.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert_eq!(tap.counters().listeners_refused, 2);
    }

    #[test]
    fn one_supervisor_cannot_take_every_slot() {
        let tap = ListenTap::new(TapLimits {
            per_call: 4,
            per_supervisor: 2,
            total: 5,
        });
        let _a = tap.subscribe("a", "eve").unwrap();
        let b = tap.subscribe("b", "eve").unwrap();
        // Eve's third session is refused although the node and the call have room ...
        assert_eq!(
            tap.subscribe("c", "eve").unwrap_err(),
            TapFull::Supervisor(2)
        );
        assert_eq!(
            tap.subscribe("a", "eve").unwrap_err(),
            TapFull::Supervisor(2)
        );
        // ... and the others still get theirs.
        let _c = tap.subscribe("c", "ann").unwrap();
        let _d = tap.subscribe("a", "bob").unwrap();
        let c = tap.counters();
        assert_eq!((c.listeners, c.listeners_refused), (4, 2));
        assert_eq!(c.listeners_refused_supervisor, 2);
        // A session that ends gives its slot back to its supervisor.
        drop(b);
        let _e = tap.subscribe("c", "eve").unwrap();
        // At the node's bound, a supervisor under its own bound is told the node is full.
        let _f = tap.subscribe("d", "cy").unwrap();
        assert_eq!(tap.subscribe("e", "dan").unwrap_err(), TapFull::Total(5));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let tap = ListenTap::default();
        let _s = tap.subscribe("a", "ann").unwrap();
        let data = rtp(5, &[0xff; 160], 0);
        let packet = decode_rtp(&data).unwrap();
        for _ in 0..LISTENER_QUEUE + 3 {
            tap.rtp("a", TapDirection::CalleeToCaller, &packet, &data);
        }
        let c = tap.counters();
        assert_eq!(
            (c.packets_forwarded, c.packets_dropped),
            (LISTENER_QUEUE as u64, 3)
        );
    }
}
