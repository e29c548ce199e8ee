//! A bounded queue between threads that takes memory as it fills, not at creation.
//!
//! std's `sync_channel(n)` allocates its `n` slots at once and writes each slot's stamp, so
//! the daemon's record queue (65,536 slots of 24 bytes) held 1.5 MiB resident from the start
//! of an idle daemon that never queued more than a few records, and the HEP relay's queue
//! (`queue_frames`, 10,000 by default) its slots whether HOMER was reachable or not. This queue is std's unbounded
//! channel (blocks of 31 slots, allocated as messages arrive and freed as they are taken)
//! with the bound kept by a count: [`BoundedSender::try_send_weighted`] refuses a message when
//! `capacity` are waiting, exactly as `sync_channel`'s `try_send` did, and
//! [`BoundedSender::send_weighted`] waits for room. The receiver ends the queue when dropped.
//!
//! A queue made by [`channel_weighted`] is also bounded by the bytes its messages hold (each
//! message's weight given by the sender, [`BoundedSender::try_send_weighted`],
//! [`BoundedSender::send_weighted`]): a message is refused (or waits) when it would take the
//! bytes waiting past `max_bytes`, unless the queue is empty (a message larger than the
//! bound alone still passes, so nothing waits for ever). [`TrySendError::Full`] and
//! [`TrySendError::FullBytes`] tell the two bounds apart, for their counters.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a waiting sender sleeps before it looks again (a missed wake-up costs no more).
const RECHECK: Duration = Duration::from_millis(50);

/// What both ends share: the count of messages waiting and the waiting senders' wake-up.
#[derive(Debug)]
struct Shared {
    capacity: usize,
    waiting: AtomicUsize,
    /// Most bytes waiting (`usize::MAX`: no byte bound), and the bytes waiting now.
    max_bytes: usize,
    bytes: AtomicUsize,
    closed: AtomicBool,
    room: Mutex<()>,
    freed: Condvar,
}

/// Why [`BoundedSender::try_send`] did not queue its message (given back).
#[derive(Debug)]
pub(crate) enum TrySendError<T> {
    /// `capacity` messages are waiting.
    Full(T),
    /// The message would take the bytes waiting past the queue's `max_bytes`.
    FullBytes(T),
    /// The receiver is gone.
    Disconnected(T),
}

/// The sending end; clones share the bound.
#[derive(Debug)]
pub(crate) struct BoundedSender<T> {
    tx: mpsc::Sender<(T, usize)>,
    shared: Arc<Shared>,
}

impl<T> Clone for BoundedSender<T> {
    fn clone(&self) -> Self {
        BoundedSender {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The receiving end.
#[derive(Debug)]
pub(crate) struct BoundedReceiver<T> {
    rx: mpsc::Receiver<(T, usize)>,
    shared: Arc<Shared>,
}

/// A queue of at most `capacity` messages (at least one), without a byte bound (the unit
/// tests' queue: every queue of the product weighs its messages).
#[cfg(test)]
pub(crate) fn channel<T>(capacity: usize) -> (BoundedSender<T>, BoundedReceiver<T>) {
    channel_weighted(capacity, usize::MAX)
}

/// A queue of at most `capacity` messages (at least one) and `max_bytes` bytes of them, as
/// their senders weigh them (see the module doc).
pub(crate) fn channel_weighted<T>(
    capacity: usize,
    max_bytes: usize,
) -> (BoundedSender<T>, BoundedReceiver<T>) {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        waiting: AtomicUsize::new(0),
        max_bytes,
        bytes: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        room: Mutex::new(()),
        freed: Condvar::new(),
    });
    (
        BoundedSender {
            tx,
            shared: Arc::clone(&shared),
        },
        BoundedReceiver { rx, shared },
    )
}

/// Which bound refused a place.
enum NoRoom {
    Count,
    Bytes,
}

impl<T> BoundedSender<T> {
    /// Takes one place and `weight` bytes in the queue if there is room for them.
    fn reserve(&self, weight: usize) -> Result<(), NoRoom> {
        let shared = &self.shared;
        let mut n = shared.waiting.load(Ordering::Acquire);
        loop {
            if n >= shared.capacity {
                return Err(NoRoom::Count);
            }
            match shared.waiting.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        if shared.max_bytes == usize::MAX {
            return Ok(());
        }
        let mut b = shared.bytes.load(Ordering::Acquire);
        loop {
            // Alone in the queue, a message passes whatever its weight.
            if n > 0 && b.saturating_add(weight) > shared.max_bytes {
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
                return Err(NoRoom::Bytes);
            }
            match shared.bytes.compare_exchange_weak(
                b,
                b.saturating_add(weight),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => b = now,
            }
        }
    }

    /// Gives back a place and its bytes.
    fn release(shared: &Shared, weight: usize) {
        if shared.max_bytes != usize::MAX {
            shared.bytes.fetch_sub(weight, Ordering::AcqRel);
        }
        shared.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Hands the message over after a place was reserved.
    fn put(&self, message: T, weight: usize) -> Result<(), T> {
        self.tx.send((message, weight)).map_err(|e| {
            Self::release(&self.shared, weight);
            e.0 .0
        })
    }

    /// Whether at least half the queue's places, or half its bytes, are taken: the point
    /// from which a sender may keep the rest for what matters more.
    pub(crate) fn half_full(&self) -> bool {
        let shared = &self.shared;
        shared.waiting.load(Ordering::Acquire).saturating_mul(2) >= shared.capacity
            || (shared.max_bytes != usize::MAX
                && shared.bytes.load(Ordering::Acquire).saturating_mul(2) >= shared.max_bytes)
    }

    /// The bytes of the messages waiting, as their senders weighed them (0 without a byte
    /// bound).
    #[cfg(test)]
    pub(crate) fn bytes_waiting(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }

    /// Queues `message` unless `capacity` are waiting or the receiver is gone; never waits.
    #[cfg(test)]
    pub(crate) fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        self.try_send_weighted(message, 0)
    }

    /// Queues `message`, weighing `weight` bytes, unless a bound is reached or the receiver
    /// is gone; never waits.
    pub(crate) fn try_send_weighted(
        &self,
        message: T,
        weight: usize,
    ) -> Result<(), TrySendError<T>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(TrySendError::Disconnected(message));
        }
        match self.reserve(weight) {
            Ok(()) => self
                .put(message, weight)
                .map_err(TrySendError::Disconnected),
            Err(NoRoom::Count) => Err(TrySendError::Full(message)),
            Err(NoRoom::Bytes) => Err(TrySendError::FullBytes(message)),
        }
    }

    /// Queues `message`, weighing `weight` bytes, waiting for room under both bounds;
    /// gives it back if the receiver is gone.
    pub(crate) fn send_weighted(&self, message: T, weight: usize) -> Result<(), T> {
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(message);
            }
            if self.reserve(weight).is_ok() {
                return self.put(message, weight);
            }
            let guard = self.shared.room.lock().unwrap_or_else(|p| p.into_inner());
            // Checked again under the lock the receiver takes to wake us: no wake-up is lost
            // (a place freed by bytes alone is seen at the next recheck at the latest).
            if self.shared.waiting.load(Ordering::Acquire) >= self.shared.capacity
                && !self.shared.closed.load(Ordering::Acquire)
            {
                let _ = self.shared.freed.wait_timeout(guard, RECHECK);
            } else if !self.shared.closed.load(Ordering::Acquire) {
                let _ = self.shared.freed.wait_timeout(guard, RECHECK / 10);
            }
        }
    }
}

impl<T> BoundedReceiver<T> {
    /// The next message, waiting up to `timeout`; `Disconnected` once every sender is gone
    /// and the queue is empty.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let (message, weight) = self.rx.recv_timeout(timeout)?;
        let before = self.shared.waiting.load(Ordering::Acquire);
        BoundedSender::<T>::release(&self.shared, weight);
        if before >= self.shared.capacity || self.shared.max_bytes != usize::MAX {
            // A sender may be waiting for this place.
            let _guard = self.shared.room.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.freed.notify_all();
        }
        Ok(message)
    }
}

impl<T> BoundedReceiver<T> {
    /// The messages waiting now, taken without waiting (what is left at shutdown).
    pub(crate) fn try_iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv_timeout(Duration::ZERO).ok())
    }
}

impl<T> Drop for BoundedReceiver<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let _guard = self.shared.room.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_bound_and_takes_again_once_drained() {
        let (tx, rx) = channel::<u32>(3);
        for i in 0..3 {
            assert!(tx.try_send(i).is_ok());
        }
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.recv_timeout(Duration::ZERO).ok(), Some(0));
        assert!(tx.try_send(4).is_ok());
        assert!(matches!(tx.try_send(5), Err(TrySendError::Full(5))));
        let got: Vec<u32> = (0..3)
            .filter_map(|_| rx.recv_timeout(Duration::ZERO).ok())
            .collect();
        assert_eq!(got, vec![1, 2, 4]);
        assert!(matches!(
            rx.recv_timeout(Duration::ZERO),
            Err(RecvTimeoutError::Timeout)
        ));
    }

    /// A queue of one, full, and a thread whose `send(2)` waits for room.
    fn full_with_a_waiting_sender() -> (
        BoundedSender<u32>,
        BoundedReceiver<u32>,
        std::thread::JoinHandle<Result<(), u32>>,
    ) {
        let (tx, rx) = channel::<u32>(1);
        tx.send_weighted(1, 0).unwrap();
        let sender = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send_weighted(2, 0))
        };
        std::thread::sleep(Duration::from_millis(20));
        (tx, rx, sender)
    }

    #[test]
    fn a_waiting_send_goes_through_when_room_is_made() {
        let (_tx, rx, sender) = full_with_a_waiting_sender();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).ok(), Some(1));
        assert!(sender.join().unwrap().is_ok());
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).ok(), Some(2));
    }

    #[test]
    fn senders_learn_the_receiver_is_gone() {
        let (tx, rx, sender) = full_with_a_waiting_sender();
        drop(rx);
        assert_eq!(sender.join().unwrap(), Err(2));
        assert!(matches!(tx.try_send(3), Err(TrySendError::Disconnected(3))));
    }

    /// The byte bound refuses (or holds back) what would pass it, tells it apart from the
    /// count bound, gives the bytes back as messages are taken, and lets a message larger
    /// than the bound through alone.
    #[test]
    fn the_byte_bound_refuses_past_its_bytes_and_a_waiting_send_goes_through() {
        let (tx, rx) = channel_weighted::<u32>(10, 100);
        tx.try_send_weighted(1, 60).unwrap();
        tx.try_send_weighted(2, 40).unwrap();
        assert!(matches!(
            tx.try_send_weighted(3, 1),
            Err(TrySendError::FullBytes(3))
        ));
        let sender = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send_weighted(4, 50))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!sender.is_finished(), "waits for bytes");
        assert_eq!(rx.recv_timeout(Duration::ZERO).ok(), Some(1));
        assert!(sender.join().unwrap().is_ok());
        assert_eq!(rx.recv_timeout(Duration::ZERO).ok(), Some(2));
        assert_eq!(rx.recv_timeout(Duration::ZERO).ok(), Some(4));
        // Empty: one message larger than the bound passes alone, nothing beside it.
        tx.try_send_weighted(5, 1000).unwrap();
        assert!(matches!(
            tx.try_send_weighted(6, 1),
            Err(TrySendError::FullBytes(6))
        ));
        assert_eq!(rx.recv_timeout(Duration::ZERO).ok(), Some(5));
        for i in 0..10 {
            tx.try_send_weighted(i, 1).unwrap();
        }
        assert!(matches!(
            tx.try_send_weighted(10, 1),
            Err(TrySendError::Full(10))
        ));
    }

    #[test]
    fn the_receiver_sees_the_end_once_every_sender_is_gone() {
        let (tx, rx) = channel::<u32>(4);
        tx.try_send(7).unwrap();
        drop(tx);
        assert_eq!(rx.recv_timeout(Duration::ZERO).ok(), Some(7));
        assert!(matches!(
            rx.recv_timeout(Duration::ZERO),
            Err(RecvTimeoutError::Disconnected)
        ));
    }
}
