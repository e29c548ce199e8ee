//! The audit record (`"type": "audit"`, `"schema": "teledge.audit/1"`): who used the
//! supervisor view, and above all who listened to which call, from when to when. Made by
//! [`crate::access::audit`]: one record per page login (accepted or refused) and exactly one
//! per listen session (refused, or from its start to its end), through the spool like every
//! other record, so the central site keeps the trail even when the box is lost later.
//!
//! | field | meaning |
//! |---|---|
//! | `schema` | `"teledge.audit/1"` |
//! | `record_id` | 32 hex chars, random per record (two logins in the same microsecond are two records) |
//! | `node` | the node id (`[node] id`) |
//! | `action` | `login` (the status page's token login), `listen` (a live listen session, WHEP) |
//! | `principal` | who: the supervisor's `id` from the configuration (token or session) or the CN of the client certificate; `null` when the request named nobody known (no or wrong credentials) |
//! | `auth` | how they proved it: `token`, `session` (the cookie of an earlier token login), `certificate`, `none` |
//! | `call_id` | the call listened to, as the status page shows it (pseudonymised as in the call record); `null` for a login |
//! | `service` | the call's service (`[[service]] name`), `null` when unclassified or for a login |
//! | `session` | the listen session's id (the WHEP resource), `null` for a login |
//! | `start` | when the action started (RFC 3339 UTC, microseconds) |
//! | `end` | when it ended (a listen session's end; a login or a refusal: equal to `start`) |
//! | `duration_s` | `end − start` in seconds |
//! | `outcome` | `ok` (a login accepted, a listen session that ran), `refused` (credentials or permission), `failed` (accepted, but the session could not be set up) |
//! | `reason` | a short stable code: refusals `no_credentials`, `bad_credentials`, `not_permitted`, `not_monitorable`, `no_such_call`; ends of a session `call_ended`, `client_left`, `shutdown`, `error`, `dropped` (ended without saying why); `null` for an accepted login |
//! | `status` | the HTTP status answered to the request that started it (200, 201, 401, 403, 404, 409, ...) |
//! | `client_address` | the client's `ip:port` as the agent's HTTP server saw it |
//! | `user_agent` | the client's `User-Agent` header (at most 256 bytes), `null` without one |
//!
//! Kept as is by pseudonymisation: the call id is already the pseudonymised one the page
//! shows, the principal is a configured supervisor id, and the client address is the
//! supervisor's workstation, which an audit trail must name.

use serde::Serialize;

use crate::time::Timestamp;

/// Schema id of an audit record.
pub const AUDIT_SCHEMA: &str = "teledge.audit/1";

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A token login on the status page.
    Login,
    /// A live listen session (WHEP).
    Listen,
}

/// How the principal proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAuth {
    Token,
    Session,
    Certificate,
    None,
}

/// How it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Ok,
    Refused,
    Failed,
}

/// An audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub schema: &'static str,
    pub record_id: String,
    pub node: String,
    pub action: AuditAction,
    pub principal: Option<String>,
    pub auth: AuditAuth,
    pub call_id: Option<String>,
    pub service: Option<String>,
    pub session: Option<String>,
    pub start: Timestamp,
    pub end: Timestamp,
    pub duration_s: f64,
    pub outcome: AuditOutcome,
    pub reason: Option<String>,
    pub status: Option<u16>,
    pub client_address: String,
    pub user_agent: Option<String>,
}
