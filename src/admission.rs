//! What every TCP listener does beside its global connection bound, so that one peer cannot
//! hold every slot: a per-address share of the connections ([`PerAddress`]), and a bound on
//! how long a write may wait for a peer that reads nothing back ([`StallGuard`]).
//!
//! A global bound alone (16 connections, say) lets a single address that opens connections
//! and sends nothing — or sends requests and never reads the answers — take every slot, and
//! legitimate clients then wait behind it in the kernel's backlog (or are refused). The
//! per-address share keeps one source to a part of the table, and the stall bound ends a
//! connection whose peer stopped reading, whatever the request was (a pipelined flood of
//! `GET /metrics`, an event stream, a TLS handshake's answer). IPv6 peers are counted by
//! their /64, the smallest block a site is given, so one host cannot take a share per
//! address; IPv4-mapped IPv6 addresses count as the IPv4 address.
//!
//! A leaf: the listeners count refusals in their own statistics.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Connections held per source address (or IPv6 /64), at most `max` each.
#[derive(Debug)]
pub struct PerAddress {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// At most `max` connections from one source (at least 1).
    pub fn new(max: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            max: max.max(1),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or `None` when that source holds `max` already.
    /// The map holds only sources with a connection open, so it is bounded by the
    /// listener's global connection bound.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let source = source_of(ip);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(source).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: Arc::clone(self),
            source,
        })
    }

    /// Connections held now from `ip`'s source.
    pub fn held(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&source_of(ip)).copied().unwrap_or(0)
    }
}

/// One connection's place in a [`PerAddress`] table, given back when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    table: Arc<PerAddress>,
    source: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

/// The source a connection is counted under: the IPv4 address, or the IPv6 /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
    }
}

/// A connection whose writes fail with [`io::ErrorKind::TimedOut`] once one has waited
/// `limit` for the peer to read (the socket's send buffer full all that time). Reads are
/// untouched: the listener's own head and body timeouts bound them.
#[derive(Debug)]
pub struct StallGuard<I> {
    inner: I,
    limit: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: Arc<AtomicBool>,
}

impl<I> StallGuard<I> {
    /// Wraps `inner`; the flag turns true when the guard ended a write (for the listener's
    /// counter, read after the connection is done).
    pub fn new(inner: I, limit: Duration) -> (StallGuard<I>, Arc<AtomicBool>) {
        let stalled = Arc::new(AtomicBool::new(false));
        let guard = StallGuard {
            inner,
            limit,
            waiting: None,
            stalled: Arc::clone(&stalled),
        };
        (guard, stalled)
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// After the inner write said `Pending`: start the clock, or fail once it ran out.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled.store(true, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer read nothing for {} s", limit.as_secs_f64()),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn done<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.pending(cx),
            ready => {
                self.waiting = None;
                ready
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for StallGuard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StallGuard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.done(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.done(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.done(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.done(result, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn one_source_holds_at_most_its_share() {
        let table = PerAddress::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = table.take(a).unwrap();
        let _second = table.take(a).unwrap();
        assert!(table.take(a).is_none());
        // The same address written as IPv4-mapped IPv6 is the same source.
        assert!(table.take("::ffff:192.0.2.1".parse().unwrap()).is_none());
        assert!(table.take(b).is_some());
        drop(first);
        assert!(table.take(a).is_some());
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64() {
        let table = PerAddress::new(1);
        let _slot = table.take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(table
            .take("2001:db8:1:2:ffff::9".parse().unwrap())
            .is_none());
        assert!(table.take("2001:db8:1:3::1".parse().unwrap()).is_some());
    }

    #[test]
    fn slots_given_back_leave_nothing_behind() {
        let table = PerAddress::new(4);
        let slots: Vec<_> = (0..200u8)
            .filter_map(|i| table.take(IpAddr::from([10, 0, 0, i])))
            .collect();
        assert_eq!(slots.len(), 200);
        drop(slots);
        assert!(table.held.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_limit() {
        let (near, _far) = tokio::io::duplex(64);
        let (mut guarded, stalled) = StallGuard::new(near, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let error = guarded
            .write_all(&[0u8; 4096])
            .await
            .expect_err("the peer reads nothing");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(stalled.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(64);
        let (mut guarded, stalled) = StallGuard::new(near, Duration::from_millis(300));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                total += far.read(&mut buf).await.unwrap();
            }
            total
        });
        // 4 KiB at 64 bytes every 20 ms: about 1.3 s in all, never 300 ms without progress.
        guarded.write_all(&[0u8; 4096]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 4096);
        assert!(!stalled.load(Ordering::Relaxed));
    }
}
