//! A bounded queue between threads that takes memory as it fills, not at creation.
//!
//! std's `sync_channel(n)` allocates its `n` slots at once and writes each slot's stamp, so
//! the daemon's record queue (65,536 slots of 24 bytes) held 1.5 MiB resident from the start
//! of an idle daemon that never queued more than a few records, and the HEP relay's queue
//! (`queue_frames`, 10,000 by default) its slots whether HOMER was reachable or not. This queue is std's unbounded
//! channel (blocks of 31 slots, allocated as messages arrive and freed as they are taken)
//! with the bound kept by a count: [`BoundedSender::try_send`] refuses a message when
//! `capacity` are waiting, exactly as `sync_channel`'s `try_send` did, and
//! [`BoundedSender::send`] waits for room. The receiver ends the queue when dropped.

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
    closed: AtomicBool,
    room: Mutex<()>,
    freed: Condvar,
}

/// Why [`BoundedSender::try_send`] did not queue its message (given back).
#[derive(Debug)]
pub(crate) enum TrySendError<T> {
    /// `capacity` messages are waiting.
    Full(T),
    /// The receiver is gone.
    Disconnected(T),
}

/// The sending end; clones share the bound.
#[derive(Debug)]
pub(crate) struct BoundedSender<T> {
    tx: mpsc::Sender<T>,
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
    rx: mpsc::Receiver<T>,
    shared: Arc<Shared>,
}

/// A queue of at most `capacity` messages (at least one).
pub(crate) fn channel<T>(capacity: usize) -> (BoundedSender<T>, BoundedReceiver<T>) {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        waiting: AtomicUsize::new(0),
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

impl<T> BoundedSender<T> {
    /// Takes one place in the queue if there is one.
    fn reserve(&self) -> bool {
        let shared = &self.shared;
        let mut n = shared.waiting.load(Ordering::Acquire);
        while n < shared.capacity {
            match shared.waiting.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// Hands the message over after a place was reserved.
    fn put(&self, message: T) -> Result<(), T> {
        self.tx.send(message).map_err(|e| {
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }

    /// Queues `message` unless `capacity` are waiting or the receiver is gone; never waits.
    pub(crate) fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(TrySendError::Disconnected(message));
        }
        if !self.reserve() {
            return Err(TrySendError::Full(message));
        }
        self.put(message).map_err(TrySendError::Disconnected)
    }

    /// Queues `message`, waiting for room; gives it back if the receiver is gone.
    pub(crate) fn send(&self, message: T) -> Result<(), T> {
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(message);
            }
            if self.reserve() {
                return self.put(message);
            }
            let guard = self.shared.room.lock().unwrap_or_else(|p| p.into_inner());
            // Checked again under the lock the receiver takes to wake us: no wake-up is lost.
            if self.shared.waiting.load(Ordering::Acquire) >= self.shared.capacity
                && !self.shared.closed.load(Ordering::Acquire)
            {
                let _ = self.shared.freed.wait_timeout(guard, RECHECK);
            }
        }
    }
}

impl<T> BoundedReceiver<T> {
    /// The next message, waiting up to `timeout`; `Disconnected` once every sender is gone
    /// and the queue is empty.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let message = self.rx.recv_timeout(timeout)?;
        let before = self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
        if before >= self.shared.capacity {
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
        tx.send(1).unwrap();
        let sender = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(2))
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
