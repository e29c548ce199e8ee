//! systemd integration without libsystemd: `sd_notify` datagrams, the watchdog, the status
//! line.
//!
//! The protocol (`sd_notify(3)`) is one datagram of `KEY=value` lines sent to the unix socket
//! named by `$NOTIFY_SOCKET`: a path (`/run/systemd/notify`) or, with a leading `@`, a name in
//! the abstract namespace. That is small enough to speak directly, which keeps a C library
//! (and its cross-compilation) out of the build. The pure-Rust `sd-notify` crate (0.5.0,
//! read 2026-12-03) was weighed and not taken: it `connect`s to `$NOTIFY_SOCKET` as a path,
//! so an `@abstract` socket fails; its send has no timeout (a wedged PID 1 would hang the
//! caller); and its `watchdog_enabled` turns `WATCHDOG_USEC=0` into a zero interval, where
//! `sd_watchdog_enabled(3)` reports the watchdog off. Tests pin each of these (below, and
//! the abstract socket in `tests/it/observe.rs`).
//!
//! When `$NOTIFY_SOCKET` is unset (not started by systemd, or `Type=simple`), a [`Notifier`]
//! is disabled and every call is a no-op returning `Ok`.
//!
//! The [`Watchdog`] pings at half of `WatchdogSec=` (as `sd_watchdog_enabled(3)` advises), but
//! only when a liveness probe says the data path made progress since the previous tick: a
//! stuck pipeline stops the pings and systemd restarts the service, which a bare timer would
//! never let happen.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use super::metrics::Counter;

/// One assignment of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyState<'a> {
    /// Start-up finished (spool open and recovered, listeners bound), or a reload finished.
    Ready,
    /// A reload began; sent with `MONOTONIC_USEC` so systemd can tell reloads apart.
    Reloading,
    /// Shutdown began (drain under way).
    Stopping,
    /// The watchdog keep-alive.
    Watchdog,
    /// Free text for `systemctl status` (newlines are replaced: they would start new keys).
    Status(&'a str),
    /// Asks for more time for the current start, reload or stop (long spool recovery).
    ExtendTimeout(Duration),
}

/// Where notifications go; disabled when systemd did not ask for them.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<SocketAddr>,
}

/// A write to the notify socket that takes longer than this is given up: systemd's socket is
/// drained promptly, and the daemon must not hang on a wedged PID 1.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

impl Notifier {
    /// From `$NOTIFY_SOCKET`. Unset, or a form we cannot speak (e.g. `vsock:`), disables it;
    /// the latter is logged.
    pub fn from_env() -> Notifier {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(name) => Notifier::for_socket(&name).unwrap_or_else(|e| {
                tracing::warn!(socket = %name, error = %crate::report::Chain(&e), "Cannot use NOTIFY_SOCKET; systemd notifications disabled.");
                Notifier::disabled()
            }),
            Err(_) => Notifier::disabled(),
        }
    }

    /// For a `$NOTIFY_SOCKET` value: an absolute path, or `@name` in the abstract namespace.
    pub fn for_socket(name: &str) -> io::Result<Notifier> {
        let target = if let Some(abstract_name) = name.strip_prefix('@') {
            abstract_address(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only absolute paths and @abstract names are supported",
            ));
        };
        Ok(Notifier {
            target: Some(target),
        })
    }

    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram with every state given.
    pub fn notify(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let message = encode(states);
        // A fresh unbound socket per message, as libsystemd does: nothing to keep open, and
        // the datagram carries our credentials, which is how systemd checks NotifyAccess=main.
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        let sent = socket.send_to_addr(message.as_bytes(), target)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification truncated",
            ));
        }
        Ok(())
    }

    pub fn ready(&self) -> io::Result<()> {
        self.notify(&[NotifyState::Ready])
    }

    pub fn status(&self, text: &str) -> io::Result<()> {
        self.notify(&[NotifyState::Status(text)])
    }

    pub fn watchdog(&self) -> io::Result<()> {
        self.notify(&[NotifyState::Watchdog])
    }

    pub fn stopping(&self) -> io::Result<()> {
        self.notify(&[NotifyState::Stopping])
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`; send [`Notifier::ready`] when the reload is done.
    pub fn reloading(&self) -> io::Result<()> {
        self.notify(&[NotifyState::Reloading])
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

/// The datagram for these states, one `KEY=value` per line.
pub fn encode(states: &[NotifyState<'_>]) -> String {
    let mut out = String::new();
    for state in states {
        match state {
            NotifyState::Ready => out.push_str("READY=1\n"),
            NotifyState::Reloading => {
                out.push_str("RELOADING=1\n");
                if let Some(usec) = monotonic_usec() {
                    out.push_str(&format!("MONOTONIC_USEC={usec}\n"));
                }
            }
            NotifyState::Stopping => out.push_str("STOPPING=1\n"),
            NotifyState::Watchdog => out.push_str("WATCHDOG=1\n"),
            NotifyState::Status(text) => {
                out.push_str("STATUS=");
                out.push_str(&text.replace(['\n', '\r'], " "));
                out.push('\n');
            }
            NotifyState::ExtendTimeout(d) => {
                out.push_str(&format!("EXTEND_TIMEOUT_USEC={}\n", d.as_micros()));
            }
        }
    }
    out
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` against.
/// `Instant` cannot give the raw value, so rustix reads it (no unsafe on our side).
pub fn monotonic_usec() -> Option<u64> {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let micros = u64::try_from(ts.tv_nsec).ok()? / 1_000;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`), if it is meant for this
/// process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Pure part of [`watchdog_interval`]: `None` when unset, malformed, zero, or for another PID.
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Pings systemd's watchdog while the data path is alive.
///
/// systemd arms the watchdog once start-up is complete (`READY=1`), so start this with or
/// after `READY=1`; during a long start-up, send `EXTEND_TIMEOUT_USEC` instead.
#[derive(Debug)]
pub struct Watchdog {
    notifier: Notifier,
    interval: Duration,
    pings: Option<Arc<Counter>>,
    withheld: Option<Arc<Counter>>,
}

impl Watchdog {
    /// A watchdog for systemd's `interval` (`WatchdogSec=`); it ticks at half of it.
    pub fn new(notifier: Notifier, interval: Duration) -> Watchdog {
        Watchdog {
            notifier,
            interval,
            pings: None,
            withheld: None,
        }
    }

    /// From the environment; `None` when systemd set no watchdog or no notify socket.
    pub fn from_env(notifier: Notifier) -> Option<Watchdog> {
        if !notifier.is_enabled() {
            return None;
        }
        Some(Watchdog::new(notifier, watchdog_interval()?))
    }

    /// Counts pings sent and ticks withheld (see `AgentMetrics::watchdog_*`).
    pub fn with_counters(mut self, pings: Arc<Counter>, withheld: Arc<Counter>) -> Watchdog {
        self.pings = Some(pings);
        self.withheld = Some(withheld);
        self
    }

    pub fn tick_period(&self) -> Duration {
        (self.interval / 2).max(Duration::from_millis(1))
    }

    /// Every half interval, asks `alive` and pings only if it says yes. Returns when
    /// `shutdown` is cancelled.
    pub async fn run(
        self,
        mut alive: impl FnMut() -> bool + Send,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(self.tick_period());
        // After a stall (or a suspended VM), do not fire a burst of catch-up ticks.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the data path has had no time to move yet.
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if alive() {
                match self.notifier.watchdog() {
                    Ok(()) => {
                        if let Some(c) = &self.pings {
                            c.inc();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::report::Chain(&e), "Cannot ping the systemd watchdog.")
                    }
                }
            } else {
                if let Some(c) = &self.withheld {
                    c.inc();
                }
                tracing::warn!(
                    "Data path made no progress; withholding the systemd watchdog ping."
                );
            }
        }
    }
}

/// What `systemctl status` shows: "calls 12 active, queue 340 records, last upload 4 s ago".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub active_calls: u64,
    /// `None`: the spool has not been read yet.
    pub queued_records: Option<u64>,
    /// `None`: no upload since start.
    pub last_upload_age: Option<Duration>,
}

impl std::fmt::Display for StatusLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "calls {} active, ", self.active_calls)?;
        match self.queued_records {
            Some(1) => write!(f, "queue 1 record, ")?,
            Some(n) => write!(f, "queue {n} records, ")?,
            None => write!(f, "queue unknown, ")?,
        }
        match self.last_upload_age {
            Some(age) => write!(f, "last upload {} ago", short_age(age)),
            None => write!(f, "no upload yet"),
        }
    }
}

/// "4 s", "17 min", "5 h", "3 d": short enough for a status line, precise enough to read.
pub fn short_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..120 => format!("{s} s"),
        120..7_200 => format!("{} min", s / 60),
        7_200..172_800 => format!("{} h", s / 3_600),
        _ => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_states_one_per_line() {
        let text = encode(&[
            NotifyState::Ready,
            NotifyState::Status("a\nb"),
            NotifyState::ExtendTimeout(Duration::from_secs(2)),
        ]);
        assert_eq!(text, "READY=1\nSTATUS=a b\nEXTEND_TIMEOUT_USEC=2000000\n");
        let reload = encode(&[NotifyState::Reloading]);
        assert!(
            reload.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reload}"
        );
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_usec().unwrap() > a);
    }

    #[test]
    fn watchdog_variables() {
        let d = Some(Duration::from_secs(30));
        assert_eq!(parse_watchdog(Some("30000000"), None, 7), d);
        assert_eq!(parse_watchdog(Some("30000000"), Some("7"), 7), d);
        assert_eq!(parse_watchdog(Some("30000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("30000000"), Some("x"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(None, Some("7"), 7), None);
    }

    #[test]
    fn status_line_reads_well() {
        let line = StatusLine {
            active_calls: 12,
            queued_records: Some(340),
            last_upload_age: Some(Duration::from_secs(4)),
        };
        assert_eq!(
            line.to_string(),
            "calls 12 active, queue 340 records, last upload 4 s ago"
        );
        let none = StatusLine {
            active_calls: 0,
            queued_records: None,
            last_upload_age: None,
        };
        assert_eq!(
            none.to_string(),
            "calls 0 active, queue unknown, no upload yet"
        );
        assert_eq!(short_age(Duration::from_secs(600)), "10 min");
        assert_eq!(short_age(Duration::from_secs(3 * 86_400)), "3 d");
    }

    #[test]
    fn relative_socket_names_are_refused_and_disabled_is_a_no_op() {
        assert!(Notifier::for_socket("relative/path").is_err());
        assert!(Notifier::disabled().ready().is_ok());
    }

    /// A manager that stops reading cannot hang the daemon: once the socket's queue is full
    /// a notification fails after [`SEND_TIMEOUT`] instead of blocking for good.
    #[test]
    fn a_notify_socket_nobody_reads_gives_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _manager = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::for_socket(path.to_str().unwrap()).unwrap();
        // The kernel queues at most net.unix.max_dgram_qlen (512 by default) datagrams.
        let failed = (0..100_000).find_map(|_| notifier.watchdog().err());
        let error = failed.expect("a full notify socket never failed a send");
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{error:?}"
        );
    }
}
