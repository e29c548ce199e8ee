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
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Denied, Principal};
use crate::record::audit::{AuditAction, AuditAuth, AuditOutcome, AuditRecord, AUDIT_SCHEMA};
use crate::record::Record;
use crate::time::Timestamp;

/// Longest `User-Agent` kept.
const MAX_USER_AGENT: usize = 256;

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
        let user_agent = headers
            .get(hyper::header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .map(|mut ua| {
                if ua.len() > MAX_USER_AGENT {
                    let mut cut = MAX_USER_AGENT;
                    while !ua.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    ua.truncate(cut);
                }
                ua
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
        AuditSink {
            node: node.into(),
            emit: Arc::new(emit),
        }
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
            call_id: call.map(|(id, _)| id.to_owned()),
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
}
