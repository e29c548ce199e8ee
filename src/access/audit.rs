//! The audit sink: `teledge.audit/1` records (see [`crate::record::audit`]) of page logins
//! and live listen sessions, handed to the daemon's record queue and so through the spool to
//! the collector like every other record (a full queue drops and counts them like any
//! record: `teledge_records_dropped_total`).
//!
//! A listen session is audited exactly once: [`AuditSink::listen_started`] returns a
//! [`ListenAudit`] guard, and its end ([`ListenAudit::end`]) writes the one record with the
//! session's start and end; a guard dropped without an end (a task cancelled, a panic
//! unwound) still writes it, with reason `dropped`. A refused listen is one record with
//! outcome `refused` ([`AuditSink::listen_refused`]).
//!
//! Refusals of requests without valid credentials (a wrong token at `/api/login`, a WHEP
//! offer without a token) cost their sender nothing, so they are bounded: at most
//! [`MAX_ANONYMOUS_REFUSALS`] records a minute; the rest are not written but counted
//! ([`AuditSink::suppressed`]), logged, and announced upstream by one gap record
//! (`records_not_spooled`, `dropped` = how many, `detail` says which) at the end of the
//! minute — so a flood of wrong logins cannot fill the spool and push call records out.
//! Refusals of an authenticated supervisor (no permission) are always written. A call id
//! taken from the request is kept to [`MAX_CALL_ID`] bytes, like the `User-Agent`.
//!
//! ```
//! use teledge::access::audit::{AuditSink, Client, ListenEnd};
//! # use teledge::access::{Principal, ServiceSet};
//! # use teledge::record::audit::AuditAuth;
//! # let principal = Principal { id: "alice".into(), auth: AuditAuth::Token, view: ServiceSet::All, listen: ServiceSet::All };
//! let (sink, records) = AuditSink::collecting("edge-01");
//! let client = Client { address: "192.0.2.7:50000".parse().unwrap(), user_agent: None };
//! let session = sink.listen_started(&principal, "h:5f3a", Some("sales"), "whep-1", 201, &client);
//! // ... media flows until the call ends ...
//! session.end(ListenEnd::CallEnded);
//! assert_eq!(records.lock().unwrap().len(), 1);
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Denied, Principal};
use crate::record::audit::{AuditAction, AuditAuth, AuditOutcome, AuditRecord, AUDIT_SCHEMA};
use crate::record::gap::{GapReason, GapRecord};
use crate::record::Record;
use crate::time::Timestamp;

/// Longest `User-Agent` kept.
const MAX_USER_AGENT: usize = 256;
/// Longest call id kept (the request's path says it, whoever sent it).
pub const MAX_CALL_ID: usize = 256;
/// Audit records of refusals without valid credentials written a minute.
pub const MAX_ANONYMOUS_REFUSALS: u32 = 60;
/// What the gap record of suppressed refusals says.
const SUPPRESSED_DETAIL: &str = "audit records of refusals without valid credentials (status page \
     logins, live listen offers) beyond the bound a minute";

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

/// Where audit records go (the daemon's record queue).
type Emit = Arc<dyn Fn(Record) + Send + Sync>;

/// The client of a request, as the HTTP server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub address: SocketAddr,
    pub user_agent: Option<String>,
}

impl Client {
    /// The peer address and the `User-Agent` header (cut to 256 bytes at a character
    /// boundary).
    pub fn from_headers(address: SocketAddr, headers: &hyper::HeaderMap) -> Client {
        let user_agent = headers.get(hyper::header::USER_AGENT).map(|v| {
            cut(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                MAX_USER_AGENT,
            )
        });
        Client {
            address,
            user_agent,
        }
    }
}

/// How a listen session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenEnd {
    /// The call ended.
    CallEnded,
    /// The supervisor left (DELETE, page closed, ICE/DTLS gone).
    ClientLeft,
    /// The daemon stopped.
    Shutdown,
    /// The session failed after it was accepted (outcome `failed`).
    Error,
}

impl ListenEnd {
    fn code(self) -> &'static str {
        match self {
            ListenEnd::CallEnded => "call_ended",
            ListenEnd::ClientLeft => "client_left",
            ListenEnd::Shutdown => "shutdown",
            ListenEnd::Error => "error",
        }
    }
}

/// Makes audit records and hands them on. Cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    node: Arc<str>,
    emit: Emit,
    anonymous: Arc<Anonymous>,
}

/// The bound on refusals without valid credentials: a window and what it let through.
#[derive(Debug)]
struct Anonymous {
    max: u32,
    window: Duration,
    state: Mutex<Window>,
    suppressed_total: AtomicU64,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    /// Suppressed in this window and not yet announced.
    suppressed: u64,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn record_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        // Without randomness the clock and a counter still tell records apart.
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return crate::record::stable_id(&[
            &Timestamp::now().as_nanos().to_be_bytes(),
            &n.to_be_bytes(),
        ]);
    }
    hex::encode(bytes)
}

impl AuditSink {
    /// A sink handing records to `emit` (the daemon: its record queue).
    pub fn new(node: &str, emit: impl Fn(Record) + Send + Sync + 'static) -> AuditSink {
        AuditSink::bounded(node, emit, MAX_ANONYMOUS_REFUSALS, Duration::from_secs(60))
    }

    /// [`AuditSink::new`] with another bound on refusals without valid credentials (`max`
    /// records per `window`).
    pub fn bounded(
        node: &str,
        emit: impl Fn(Record) + Send + Sync + 'static,
        max: u32,
        window: Duration,
    ) -> AuditSink {
        AuditSink {
            node: node.into(),
            emit: Arc::new(emit),
            anonymous: Arc::new(Anonymous {
                max,
                window,
                state: Mutex::new(Window {
                    start: Instant::now(),
                    written: 0,
                    suppressed: 0,
                }),
                suppressed_total: AtomicU64::new(0),
            }),
        }
    }

    /// Audit records of refusals without valid credentials not written (beyond the bound).
    pub fn suppressed(&self) -> u64 {
        self.anonymous.suppressed_total.load(Ordering::Relaxed)
    }

    /// Announces at once the refusals suppressed in the current window (none: nothing).
    /// The daemon calls it at shutdown, once nothing can audit any more: the task that
    /// announces at the window's end does not outlive the runtime, so what the last window
    /// suppressed was counted and never announced.
    pub fn announce_suppressed(&self) {
        let n = {
            let mut w = self
                .anonymous
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut w.suppressed)
        };
        self.announce(n);
    }

    /// Reads [`AuditSink::suppressed`] without holding the sink: for a scrape-time source
    /// in the metrics, which the sink's `emit` (the daemon's record queue) holds in turn — a
    /// clone of the sink there made a cycle that kept the metrics, and through them the
    /// spool and its store's lock, alive after a shutdown.
    pub fn suppressed_reader(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let anonymous = Arc::clone(&self.anonymous);
        move || anonymous.suppressed_total.load(Ordering::Relaxed)
    }

    /// Whether a refusal without valid credentials may be written now; announces what an
    /// earlier window suppressed when a new one begins.
    fn admit_anonymous(&self) -> bool {
        let a = &self.anonymous;
        let (admitted, announce, first_suppressed) = {
            let mut w = a.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut announce = 0;
            if w.start.elapsed() >= a.window {
                announce = std::mem::take(&mut w.suppressed);
                w.start = Instant::now();
                w.written = 0;
            }
            if w.written < a.max {
                w.written += 1;
                (true, announce, false)
            } else {
                w.suppressed += 1;
                (false, announce, w.suppressed == 1)
            }
        };
        self.announce(announce);
        if !admitted {
            a.suppressed_total.fetch_add(1, Ordering::Relaxed);
            if first_suppressed {
                tracing::warn!(max = a.max, window_s = a.window.as_secs_f64(), "Refusals without valid credentials beyond the audit bound: not written, counted and announced by a gap record.");
                self.announce_at_window_end();
            }
        }
        admitted
    }

    /// The window's suppressed refusals are announced when it ends, even when no later
    /// refusal comes to roll it over (a task on the current runtime, if there is one).
    fn announce_at_window_end(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let sink = self.clone();
        runtime.spawn(async move {
            let left = {
                let w = sink
                    .anonymous
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                sink.anonymous.window.saturating_sub(w.start.elapsed())
            };
            tokio::time::sleep(left).await;
            let n = {
                let mut w = sink
                    .anonymous
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if w.start.elapsed() < sink.anonymous.window {
                    // A refusal already rolled the window over and announced it.
                    0
                } else {
                    w.start = Instant::now();
                    w.written = 0;
                    std::mem::take(&mut w.suppressed)
                }
            };
            sink.announce(n);
        });
    }

    /// One gap record for `n` suppressed refusals (none for 0).
    fn announce(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut gap = GapRecord::new(&self.node, GapReason::RecordsNotSpooled, Some(n));
        gap.detail = Some(SUPPRESSED_DETAIL.to_owned());
        tracing::warn!(
            suppressed = n,
            "Audit records of refusals without valid credentials suppressed; gap record written."
        );
        (self.emit)(Record::Gap(Box::new(gap)));
    }

    /// A sink that keeps its records in a list (tests, and a WHEP test of its own).
    pub fn collecting(node: &str) -> (AuditSink, Arc<Mutex<Vec<AuditRecord>>>) {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let list = Arc::clone(&kept);
        let sink = AuditSink::new(node, move |record| {
            if let Record::Audit(a) = record {
                list.lock().unwrap_or_else(|p| p.into_inner()).push(*a);
            }
        });
        (sink, kept)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        action: AuditAction,
        principal: Option<&Principal>,
        auth: AuditAuth,
        call: Option<(&str, Option<&str>)>,
        session: Option<&str>,
        (start, end): (Timestamp, Timestamp),
        outcome: AuditOutcome,
        reason: Option<&str>,
        status: Option<u16>,
        client: &Client,
    ) -> AuditRecord {
        AuditRecord {
            schema: AUDIT_SCHEMA,
            record_id: record_id(),
            node: self.node.to_string(),
            action,
            principal: principal.map(|p| p.id.clone()),
            auth,
            call_id: call.map(|(id, _)| cut(id.to_owned(), MAX_CALL_ID)),
            service: call.and_then(|(_, s)| s.map(str::to_owned)),
            session: session.map(str::to_owned),
            start,
            end,
            duration_s: end.seconds_since(start).max(0.0),
            outcome,
            reason: reason.map(str::to_owned),
            status,
            client_address: client.address.to_string(),
            user_agent: client.user_agent.clone(),
        }
    }

    fn emit(&self, record: AuditRecord) {
        (self.emit)(Record::Audit(Box::new(record)));
    }

    /// A page login, accepted (`Ok`: who) or refused (why), and the status answered.
    pub fn login(&self, result: Result<&Principal, Denied>, status: u16, client: &Client) {
        let now = Timestamp::now();
        let (principal, auth, outcome, reason) = match result {
            Ok(p) => (Some(p), p.auth, AuditOutcome::Ok, None),
            Err(d) => (None, AuditAuth::None, AuditOutcome::Refused, Some(d.code())),
        };
        if principal.is_none() && !self.admit_anonymous() {
            return;
        }
        self.emit(self.record(
            AuditAction::Login,
            principal,
            auth,
            None,
            None,
            (now, now),
            outcome,
            reason,
            Some(status),
            client,
        ));
    }

    /// A listen refused before it started: by access control (`reason` = the [`Denied`]
    /// code), or because there is no such call (`"no_such_call"`). `principal` when the
    /// credentials were good and the permission was not.
    #[allow(clippy::too_many_arguments)]
    pub fn listen_refused(
        &self,
        principal: Option<&Principal>,
        reason: &str,
        status: u16,
        call_id: Option<&str>,
        service: Option<&str>,
        client: &Client,
    ) {
        if principal.is_none() && !self.admit_anonymous() {
            return;
        }
        let now = Timestamp::now();
        self.emit(self.record(
            AuditAction::Listen,
            principal,
            principal.map_or(AuditAuth::None, |p| p.auth),
            call_id.map(|c| (c, service)),
            None,
            (now, now),
            AuditOutcome::Refused,
            Some(reason),
            Some(status),
            client,
        ));
    }

    /// A listen session accepted (answered with `status`): the guard writes its one record
    /// when it ends.
    pub fn listen_started(
        &self,
        principal: &Principal,
        call_id: &str,
        service: Option<&str>,
        session: &str,
        status: u16,
        client: &Client,
    ) -> ListenAudit {
        ListenAudit {
            sink: self.clone(),
            principal: principal.clone(),
            call_id: call_id.to_owned(),
            service: service.map(str::to_owned),
            session: session.to_owned(),
            status,
            client: client.clone(),
            start: Timestamp::now(),
            started: Instant::now(),
            done: false,
        }
    }
}

/// An open listen session's audit: [`ListenAudit::end`] writes its record (dropping it
/// writes one with reason `dropped`).
#[derive(Debug)]
pub struct ListenAudit {
    sink: AuditSink,
    principal: Principal,
    call_id: String,
    service: Option<String>,
    session: String,
    status: u16,
    client: Client,
    start: Timestamp,
    /// The end is the start plus the monotonic time elapsed (a clock step in between does
    /// not make a session negative or a day long).
    started: Instant,
    done: bool,
}

impl ListenAudit {
    /// The session's id.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// When the session started (the record's `start`).
    pub fn start(&self) -> Timestamp {
        self.start
    }

    /// Ends the session: writes its record.
    pub fn end(mut self, how: ListenEnd) {
        self.write(how.code(), how);
    }

    fn write(&mut self, reason: &str, how: ListenEnd) {
        if self.done {
            return;
        }
        self.done = true;
        let end = self.start.plus(self.started.elapsed());
        let outcome = if how == ListenEnd::Error {
            AuditOutcome::Failed
        } else {
            AuditOutcome::Ok
        };
        let record = self.sink.record(
            AuditAction::Listen,
            Some(&self.principal),
            self.principal.auth,
            Some((&self.call_id, self.service.as_deref())),
            Some(&self.session),
            (self.start, end),
            outcome,
            Some(reason),
            Some(self.status),
            &self.client,
        );
        self.sink.emit(record);
    }
}

impl Drop for ListenAudit {
    fn drop(&mut self) {
        self.write("dropped", ListenEnd::ClientLeft);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::ServiceSet;

    fn alice() -> Principal {
        Principal {
            id: "alice".into(),
            auth: AuditAuth::Session,
            view: ServiceSet::All,
            listen: ServiceSet::All,
        }
    }

    fn client() -> Client {
        Client {
            address: "192.0.2.7:50000".parse().unwrap(),
            user_agent: Some("Mozilla/5.0".into()),
        }
    }

    #[test]
    fn a_listen_session_is_one_record_with_its_times() {
        let (sink, records) = AuditSink::collecting("edge-01");
        let session = sink.listen_started(&alice(), "h:1", Some("sales"), "s1", 201, &client());
        std::thread::sleep(std::time::Duration::from_millis(20));
        session.end(ListenEnd::CallEnded);
        let records = records.lock().unwrap();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r.action, AuditAction::Listen);
        assert_eq!(r.principal.as_deref(), Some("alice"));
        assert_eq!(r.call_id.as_deref(), Some("h:1"));
        assert_eq!(r.service.as_deref(), Some("sales"));
        assert_eq!(r.session.as_deref(), Some("s1"));
        assert_eq!(r.reason.as_deref(), Some("call_ended"));
        assert_eq!(r.outcome, AuditOutcome::Ok);
        assert!(
            r.duration_s >= 0.02 && r.duration_s < 5.0,
            "{}",
            r.duration_s
        );
        assert!(r.end > r.start);
        assert_eq!(r.client_address, "192.0.2.7:50000");
    }

    #[test]
    fn a_dropped_guard_still_writes_exactly_one_record() {
        let (sink, records) = AuditSink::collecting("edge-01");
        drop(sink.listen_started(&alice(), "h:1", None, "s1", 201, &client()));
        let failed = sink.listen_started(&alice(), "h:2", None, "s2", 201, &client());
        failed.end(ListenEnd::Error);
        sink.listen_refused(
            None,
            Denied::BadCredentials.code(),
            401,
            Some("h:3"),
            None,
            &client(),
        );
        sink.login(Err(Denied::NoCredentials), 401, &client());
        sink.login(Ok(&alice()), 200, &client());
        let records = records.lock().unwrap();
        let summary: Vec<_> = records
            .iter()
            .map(|r| (r.action, r.outcome, r.reason.as_deref(), r.status))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    AuditAction::Listen,
                    AuditOutcome::Ok,
                    Some("dropped"),
                    Some(201)
                ),
                (
                    AuditAction::Listen,
                    AuditOutcome::Failed,
                    Some("error"),
                    Some(201)
                ),
                (
                    AuditAction::Listen,
                    AuditOutcome::Refused,
                    Some("bad_credentials"),
                    Some(401)
                ),
                (
                    AuditAction::Login,
                    AuditOutcome::Refused,
                    Some("no_credentials"),
                    Some(401)
                ),
                (AuditAction::Login, AuditOutcome::Ok, None, Some(200)),
            ]
        );
        assert_eq!(records[3].principal, None);
        assert_eq!(records[3].auth, AuditAuth::None);
        assert_ne!(records[0].record_id, records[1].record_id);
    }

    #[test]
    fn a_long_user_agent_is_cut() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(hyper::header::USER_AGENT, "é".repeat(300).parse().unwrap());
        let c = Client::from_headers("127.0.0.1:1".parse().unwrap(), &headers);
        assert!(c.user_agent.unwrap().len() <= MAX_USER_AGENT);
    }

    /// Every record a sink hands on, of any kind.
    fn every_record(max: u32, window: Duration) -> (AuditSink, Arc<Mutex<Vec<Record>>>) {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let list = Arc::clone(&kept);
        let sink = AuditSink::bounded(
            "edge-01",
            move |r| list.lock().unwrap().push(r),
            max,
            window,
        );
        (sink, kept)
    }

    /// Regression: every refused login and unauthenticated listen offer wrote a record, so a
    /// flood of wrong tokens filled the record queue and the spool (pushing call records out
    /// with `drop_oldest`). Now a window writes `max`, the rest is one gap record.
    #[tokio::test]
    async fn refusals_without_credentials_are_bounded_and_the_rest_announced() {
        let (sink, kept) = every_record(10, Duration::from_millis(300));
        for i in 0..100 {
            if i % 2 == 0 {
                sink.login(Err(Denied::BadCredentials), 401, &client());
            } else {
                let long = "x".repeat(10_000);
                sink.listen_refused(None, "no_credentials", 401, Some(&long), None, &client());
            }
        }
        // A supervisor's refusal (authenticated, no permission) is always written.
        sink.listen_refused(
            Some(&alice()),
            "not_permitted",
            403,
            Some("h:1"),
            None,
            &client(),
        );
        sink.login(Ok(&alice()), 204, &client());
        assert_eq!(sink.suppressed(), 90);
        {
            let records = kept.lock().unwrap();
            assert_eq!(
                records.len(),
                12,
                "10 refusals, the supervisor's refusal, the login"
            );
            for r in records.iter() {
                if let Record::Audit(a) = r {
                    assert!(a.call_id.as_ref().is_none_or(|c| c.len() <= MAX_CALL_ID));
                }
            }
        }
        // The window's end announces the 90 by one gap record, without another request.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let records = kept.lock().unwrap();
        let gaps: Vec<_> = records
            .iter()
            .filter_map(|r| match r {
                Record::Gap(g) => Some(g),
                _ => None,
            })
            .collect();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].reason, GapReason::RecordsNotSpooled);
        assert_eq!(gaps[0].dropped, Some(90));
        assert!(gaps[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("without valid credentials"));
        drop(records);
        // A new window writes again.
        sink.login(Err(Denied::BadCredentials), 401, &client());
        assert_eq!(kept.lock().unwrap().len(), 14);
    }
}
