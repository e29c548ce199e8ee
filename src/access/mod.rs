//! Access control for the supervisor view: who may see the status page and who may listen to
//! which service's calls, and the audit trail of what they did ([`audit`]).
//!
//! Off by default: without `[status] enabled = true` there is no page, and the page (and the
//! live listen, WHEP) serves nobody who has not proved who they are. Supervisors are
//! configured as `[[supervisor]]` (validated in `config::access`), each with
//!
//! - a **bearer token**, stored only as its SHA-256 (`token_sha256`): `teledge
//!   supervisor-token <id>` makes a token (`tdg1_` and 64 hex digits, 256 random bits) and
//!   prints the configuration lines with its hash. A plain SHA-256 is enough because the token
//!   is random with 256 bits: a slow password hash protects guessable passwords, and there is
//!   nothing to guess here; the configuration file (and a backup of it) never holds a token
//!   that would let its reader in. Hashes are compared in constant time;
//! - and/or a **client certificate** from the site CA (`cert_cn`: the certificate's subject
//!   CN), when the HTTP server is given a TLS certificate and the site CA ([`tls`]: the TLS
//!   layer verifies the chain; this module matches the CN);
//! - **permissions per service**: `view` (see the service's calls on the page) and `listen`
//!   (hear them live), each a list of `[[service]]` names or `"*"` for all. `listen` implies
//!   `view`. A service is listenable only if its `[[service]]` says `monitorable = true`
//!   (default `false`): no permission overrides a non-monitorable service, and calls of no
//!   service (unclassified) cannot be listened to at all.
//!
//! # The browser and `EventSource`
//!
//! `EventSource` (the page's live updates) cannot send an `Authorization` header. The page
//! therefore logs in once: the login page's script sends the token as `Authorization: Bearer`
//! to `POST /api/login`, and the agent answers with a session cookie (`teledge_session`, 256
//! random bits, `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` when served over TLS,
//! expiring after `[status] session_ttl_s`), which the browser then sends with every request,
//! `EventSource` included. A token in the URL was the other choice and is refused: URLs end up
//! in browser history, proxy logs and `Referer` headers, and the token would outlive the
//! session. Sessions live in memory (a restart logs everyone out), at most [`MAX_SESSIONS`]
//! (the oldest is ended to make room, counted) and at most [`MAX_SESSIONS_PER_SUPERVISOR`]
//! of one supervisor (their own oldest is ended, counted: one supervisor logging in over and
//! over cannot log the others out), and are stored by the SHA-256 of their id as well. API clients (curl, a WHEP player) may send `Authorization: Bearer <token>` with every
//! request instead.
//!
//! # API (for the HTTP handlers: the page, WHEP)
//!
//! ```
//! use teledge::access::{Access, AccessSettings, Credentials, Permission, Supervisor, ServiceSet};
//! let (token, hash) = teledge::access::make_token().expect("a random source");
//! let access = Access::new(AccessSettings {
//!     supervisors: vec![Supervisor {
//!         id: "alice".into(),
//!         token_sha256: Some(hash),
//!         cert_cn: None,
//!         view: ServiceSet::All,
//!         listen: ServiceSet::only(["sales"]),
//!     }],
//!     monitorable: ["sales".to_owned()].into(),
//!     ..AccessSettings::default()
//! });
//! let bearer = format!("Bearer {token}");
//! let creds = Credentials { authorization: Some(&bearer), ..Credentials::default() };
//! let who = access.authorize(&creds, Some("sales"), Permission::Listen).unwrap();
//! assert_eq!(who.id, "alice");
//! assert!(access.authorize(&creds, Some("support"), Permission::Listen).is_err());
//! ```
//!
//! Every refusal is counted here, by reason ([`Access::refused`]; the daemon exposes them as
//! `teledge_access_refused_total{reason}`), and a refused login or listen is audited by the
//! handler that refused it ([`audit::AuditSink`]).

pub mod audit;
pub mod tls;

pub use tls::ClientCertCn;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::record::audit::AuditAuth;

/// Sessions (cookie logins) kept at once; the oldest is ended to make room.
pub const MAX_SESSIONS: usize = 256;
/// Sessions of one supervisor kept at once (a phone, a desk, a few tabs logging in again);
/// their own oldest is ended to make room.
pub const MAX_SESSIONS_PER_SUPERVISOR: usize = 16;
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "teledge_session";
/// Prefix of a supervisor token (so a leaked one is recognisable in a scan).
pub const TOKEN_PREFIX: &str = "tdg1_";
/// Default lifetime of a session.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// See a service's calls (the status page).
    View,
    /// Hear a call live.
    Listen,
}

/// A set of services a permission covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServiceSet {
    /// Every service, and calls of no service (`"*"`).
    All,
    /// These services only.
    Only(BTreeSet<String>),
    /// None.
    #[default]
    Nothing,
}

impl ServiceSet {
    /// The set of these names (empty: [`ServiceSet::Nothing`]).
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> ServiceSet {
        let set: BTreeSet<String> = names.into_iter().map(Into::into).collect();
        if set.is_empty() {
            ServiceSet::Nothing
        } else {
            ServiceSet::Only(set)
        }
    }

    /// Whether a call of `service` (`None`: unclassified) is in the set.
    pub fn covers(&self, service: Option<&str>) -> bool {
        match (self, service) {
            (ServiceSet::All, _) => true,
            (ServiceSet::Only(set), Some(s)) => set.contains(s),
            _ => false,
        }
    }
}

/// One supervisor from the configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Supervisor {
    /// The id audit records name (`[[supervisor]] id`).
    pub id: String,
    /// SHA-256 of the bearer token.
    pub token_sha256: Option<[u8; 32]>,
    /// Subject CN of the client certificate (issued by the site CA).
    pub cert_cn: Option<String>,
    pub view: ServiceSet,
    pub listen: ServiceSet,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is no secret in the strict sense, but nothing gains from printing it.
        f.debug_struct("Supervisor")
            .field("id", &self.id)
            .field("token", &self.token_sha256.map(|_| "<sha256>"))
            .field("cert_cn", &self.cert_cn)
            .field("view", &self.view)
            .field("listen", &self.listen)
            .finish()
    }
}

/// The access settings (`[status]` and `[[supervisor]]`, validated by `config::access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessSettings {
    pub supervisors: Vec<Supervisor>,
    /// Services whose `[[service]]` says `monitorable = true`.
    pub monitorable: BTreeSet<String>,
    pub session_ttl: Duration,
    /// Set `Secure` on the session cookie (the server speaks TLS).
    pub secure_cookie: bool,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            supervisors: Vec::new(),
            monitorable: BTreeSet::new(),
            session_ttl: DEFAULT_SESSION_TTL,
            secure_cookie: false,
        }
    }
}

/// What a request presents, taken from its headers and its TLS connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `Authorization` header's value.
    pub authorization: Option<&'a str>,
    /// The `Cookie` header's value.
    pub cookie: Option<&'a str>,
    /// The subject CN of a client certificate the TLS layer verified against the site CA.
    pub client_cert_cn: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// The credentials in a request's headers, and the verified client certificate's CN.
    pub fn from_headers(
        headers: &'a hyper::HeaderMap,
        client_cert_cn: Option<&'a str>,
    ) -> Credentials<'a> {
        Credentials {
            authorization: headers
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            cookie: headers
                .get(hyper::header::COOKIE)
                .and_then(|v| v.to_str().ok()),
            client_cert_cn,
        }
    }

    /// The credentials of a request: its headers, and the verified client certificate's
    /// CN the HTTPS server put into its extensions ([`ClientCertCn`]).
    pub fn from_request<B>(req: &'a hyper::Request<B>) -> Credentials<'a> {
        let cn = req.extensions().get::<ClientCertCn>().map(|c| &*c.0);
        Credentials::from_headers(req.headers(), cn)
    }

    fn bearer(&self) -> Option<&'a str> {
        let value = self.authorization?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }

    fn session(&self) -> Option<&'a str> {
        self.cookie?.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value)
        })
    }

    /// Whether the request presents anything at all.
    fn any(&self) -> bool {
        self.authorization.is_some() || self.session().is_some() || self.client_cert_cn.is_some()
    }
}

/// Who a request is, once proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The supervisor's id.
    pub id: String,
    /// How it was proved.
    pub auth: AuditAuth,
    pub view: ServiceSet,
    pub listen: ServiceSet,
}

impl Principal {
    fn of(s: &Supervisor, auth: AuditAuth) -> Principal {
        Principal {
            id: s.id.clone(),
            auth,
            view: s.view.clone(),
            listen: s.listen.clone(),
        }
    }

    /// Whether this principal may see calls of `service` on the page.
    pub fn may_view(&self, service: Option<&str>) -> bool {
        self.view.covers(service) || self.listen.covers(service)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Denied {
    /// Nothing presented: 401.
    #[error("no credentials")]
    NoCredentials,
    /// A token, session or certificate that names nobody (or an expired session): 401.
    #[error("credentials not accepted")]
    BadCredentials,
    /// Known, but without the permission for this service: 403.
    #[error("not permitted")]
    NotPermitted,
    /// Listen to a call of a service that is not monitorable (or of no service): 403.
    #[error("the call's service is not monitorable")]
    NotMonitorable,
    /// The system's random source failed, so no unguessable session id can be made: 503.
    #[error("no session: the system's random source failed")]
    NoRandomness,
}

impl Denied {
    /// Every reason, in the order of [`Access::refused`].
    pub const ALL: [Denied; 5] = [
        Denied::NoCredentials,
        Denied::BadCredentials,
        Denied::NotPermitted,
        Denied::NotMonitorable,
        Denied::NoRandomness,
    ];

    /// The HTTP status to answer: 401 (with `WWW-Authenticate: Bearer`), 403, or 503 when
    /// no session could be made.
    pub fn status(self) -> u16 {
        match self {
            Denied::NoCredentials | Denied::BadCredentials => 401,
            Denied::NotPermitted | Denied::NotMonitorable => 403,
            Denied::NoRandomness => 503,
        }
    }

    /// A short stable code (metric label, audit `reason`).
    pub fn code(self) -> &'static str {
        match self {
            Denied::NoCredentials => "no_credentials",
            Denied::BadCredentials => "bad_credentials",
            Denied::NotPermitted => "not_permitted",
            Denied::NotMonitorable => "not_monitorable",
            Denied::NoRandomness => "no_randomness",
        }
    }

    fn index(self) -> usize {
        match self {
            Denied::NoCredentials => 0,
            Denied::BadCredentials => 1,
            Denied::NotPermitted => 2,
            Denied::NotMonitorable => 3,
            Denied::NoRandomness => 4,
        }
    }
}

#[derive(Debug)]
struct Session {
    supervisor: String,
    auth: AuditAuth,
    expires: Instant,
}

/// A new session: the cookie's value goes into `Set-Cookie`.
#[derive(Debug)]
pub struct Login {
    pub principal: Principal,
    /// The whole `Set-Cookie` header value.
    pub set_cookie: String,
    /// A session was ended to make room ([`MAX_SESSIONS`]).
    pub evicted: bool,
}

/// The access decisions of one daemon: supervisors, sessions, refusal counts.
#[derive(Debug)]
pub struct Access {
    /// Replaced whole by a SIGHUP that changed `[[supervisor]]` ([`Access::replace`]).
    settings: std::sync::RwLock<std::sync::Arc<AccessSettings>>,
    /// By SHA-256 of the session id.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    refused: [AtomicU64; Denied::ALL.len()],
    sessions_evicted: AtomicU64,
    /// A refusal is logged (WARN) at most once per [`crate::log_limit::LOG_INTERVAL`] per
    /// reason, with how many it stands for; counted every time.
    log_limiter: crate::log_limit::Limiter,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Parses 64 hex digits (a `token_sha256`).
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// 32 bytes from the system's random source as hex, or `None` when that source fails (only
/// on a system without one): a token or session id made any other way could be guessed, so
/// the caller refuses instead.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

/// A new supervisor token and its SHA-256 (lowercase hex) for `token_sha256`, or `None` when
/// the system's random source fails.
pub fn make_token() -> Option<(String, [u8; 32])> {
    let token = format!("{TOKEN_PREFIX}{}", random_hex()?);
    let hash = sha256(token.as_bytes());
    Some((token, hash))
}

/// The SHA-256 of a token as `token_sha256` holds it (lowercase hex).
pub fn token_hash_hex(token: &str) -> String {
    hex::encode(sha256(token.as_bytes()))
}

impl Access {
    pub fn new(settings: AccessSettings) -> Access {
        Access {
            settings: std::sync::RwLock::new(std::sync::Arc::new(settings)),
            sessions: Mutex::new(HashMap::new()),
            refused: Default::default(),
            sessions_evicted: AtomicU64::new(0),
            log_limiter: crate::log_limit::Limiter::default(),
        }
    }

    /// The settings in force now.
    pub fn settings(&self) -> std::sync::Arc<AccessSettings> {
        std::sync::Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// New supervisors (a SIGHUP): a removed supervisor's token, certificate and open
    /// sessions stop working at once, changed permissions apply to the next request; the
    /// monitorable services and the cookie's `Secure` stay as they were started (they
    /// follow `[[service]]` and `[status]`, which take a restart).
    pub fn replace(&self, new: &AccessSettings) {
        let mut settings = self.settings.write().unwrap_or_else(|p| p.into_inner());
        *settings = std::sync::Arc::new(AccessSettings {
            supervisors: new.supervisors.clone(),
            session_ttl: new.session_ttl,
            monitorable: settings.monitorable.clone(),
            secure_cookie: settings.secure_cookie,
        });
    }

    /// Refusals so far by reason, in the order of [`Denied::ALL`].
    pub fn refused(&self, reason: Denied) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Sessions ended early to make room for new ones.
    pub fn sessions_evicted(&self) -> u64 {
        self.sessions_evicted.load(Ordering::Relaxed)
    }

    /// Sessions open now (expired ones included until they are next looked at).
    pub fn sessions(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one place a refusal is counted and logged.
    fn refuse(&self, reason: Denied) -> Denied {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.log_limiter.due(("access_refused", reason.code()), 1) {
            tracing::warn!(
                reason = reason.code(),
                count,
                "Supervisor view: request refused by access control."
            );
        }
        reason
    }

    fn by_token<'s>(settings: &'s AccessSettings, token: &str) -> Option<&'s Supervisor> {
        use subtle::ConstantTimeEq;
        let presented = sha256(token.as_bytes());
        // Every supervisor is compared (no early exit), each in constant time.
        let mut found = None;
        for s in &settings.supervisors {
            if let Some(hash) = &s.token_sha256 {
                if bool::from(hash.ct_eq(&presented)) && found.is_none() {
                    found = Some(s);
                }
            }
        }
        found
    }

    fn by_id<'s>(settings: &'s AccessSettings, id: &str) -> Option<&'s Supervisor> {
        settings.supervisors.iter().find(|s| s.id == id)
    }

    /// Who the credentials prove, without counting a refusal.
    fn identify(&self, creds: &Credentials<'_>) -> Result<Principal, Denied> {
        let settings = self.settings();
        if let Some(token) = creds.bearer() {
            return Self::by_token(&settings, token)
                .map(|s| Principal::of(s, AuditAuth::Token))
                .ok_or(Denied::BadCredentials);
        }
        if let Some(id) = creds.session() {
            let key = sha256(id.as_bytes());
            let mut sessions = self.lock();
            let now = Instant::now();
            return match sessions.get(&key) {
                Some(s) if s.expires > now => Self::by_id(&settings, &s.supervisor)
                    .map(|sup| Principal::of(sup, AuditAuth::Session))
                    .ok_or(Denied::BadCredentials),
                Some(_) => {
                    sessions.remove(&key);
                    Err(Denied::BadCredentials)
                }
                None => Err(Denied::BadCredentials),
            };
        }
        if let Some(cn) = creds.client_cert_cn {
            return settings
                .supervisors
                .iter()
                .find(|s| s.cert_cn.as_deref() == Some(cn))
                .map(|s| Principal::of(s, AuditAuth::Certificate))
                .ok_or(Denied::BadCredentials);
        }
        if creds.any() {
            // An Authorization header of another scheme.
            return Err(Denied::BadCredentials);
        }
        Err(Denied::NoCredentials)
    }

    /// Who the credentials prove (token, session cookie, client certificate, in that
    /// order: the first one presented decides). Refusals are counted.
    pub fn authenticate(&self, creds: &Credentials<'_>) -> Result<Principal, Denied> {
        self.identify(creds).map_err(|d| self.refuse(d))
    }

    /// Whether the credentials may do `permission` on a call of `service` (`None`:
    /// unclassified; for [`Permission::View`] of the page as a whole, any view permission
    /// will do: the page shows each principal only the services it may view). Refusals are
    /// counted.
    pub fn authorize(
        &self,
        creds: &Credentials<'_>,
        service: Option<&str>,
        permission: Permission,
    ) -> Result<Principal, Denied> {
        let principal = self.authenticate(creds)?;
        self.check(&principal, service, permission)
            .map_err(|d| self.refuse(d))?;
        Ok(principal)
    }

    /// [`Access::authorize`] for a principal already known (not counted).
    pub fn check(
        &self,
        principal: &Principal,
        service: Option<&str>,
        permission: Permission,
    ) -> Result<(), Denied> {
        match permission {
            Permission::View => {
                let any = principal.view != ServiceSet::Nothing
                    || principal.listen != ServiceSet::Nothing;
                let ok = match service {
                    None => any,
                    Some(_) => principal.may_view(service),
                };
                if ok {
                    Ok(())
                } else {
                    Err(Denied::NotPermitted)
                }
            }
            Permission::Listen => {
                if !principal.listen.covers(service) {
                    return Err(Denied::NotPermitted);
                }
                match service {
                    Some(s) if self.settings().monitorable.contains(s) => Ok(()),
                    _ => Err(Denied::NotMonitorable),
                }
            }
        }
    }

    /// A token login (or a client certificate's): a new session and its cookie. A session
    /// cookie does not log in again (401: log in with the token).
    pub fn login(&self, creds: &Credentials<'_>) -> Result<Login, Denied> {
        let creds = Credentials {
            cookie: None,
            ..*creds
        };
        let principal = self.authorize(&creds, None, Permission::View)?;
        let Some(id) = random_hex() else {
            return Err(self.refuse(Denied::NoRandomness));
        };
        let settings = self.settings();
        let ttl = settings.session_ttl;
        let now = Instant::now();
        let mut evicted = false;
        {
            let mut sessions = self.lock();
            sessions.retain(|_, s| s.expires > now);
            let own = sessions
                .values()
                .filter(|s| s.supervisor == principal.id)
                .count();
            // The supervisor's own oldest first: their logins never end another's session
            // while they hold their share.
            let full = own >= MAX_SESSIONS_PER_SUPERVISOR || sessions.len() >= MAX_SESSIONS;
            if full {
                let own_only = own >= MAX_SESSIONS_PER_SUPERVISOR;
                if let Some(oldest) = sessions
                    .iter()
                    .filter(|(_, s)| !own_only || s.supervisor == principal.id)
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| *k)
                {
                    sessions.remove(&oldest);
                    self.sessions_evicted.fetch_add(1, Ordering::Relaxed);
                    evicted = true;
                }
            }
            sessions.insert(
                sha256(id.as_bytes()),
                Session {
                    supervisor: principal.id.clone(),
                    auth: principal.auth,
                    expires: now + ttl,
                },
            );
        }
        let secure = if settings.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        Ok(Login {
            principal,
            set_cookie: format!(
                "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                ttl.as_secs()
            ),
            evicted,
        })
    }

    /// Ends the session the cookie names, if any; the `Set-Cookie` value that clears it.
    pub fn logout(&self, creds: &Credentials<'_>) -> String {
        if let Some(id) = creds.session() {
            self.lock().remove(&sha256(id.as_bytes()));
        }
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }

    /// How the session of these credentials was opened (for audit), if it is one.
    pub fn session_auth(&self, creds: &Credentials<'_>) -> Option<AuditAuth> {
        let id = creds.session()?;
        self.lock().get(&sha256(id.as_bytes())).map(|s| s.auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> (Access, String, String) {
        let (alice, alice_hash) = make_token().unwrap();
        let (bob, bob_hash) = make_token().unwrap();
        let access = Access::new(AccessSettings {
            supervisors: vec![
                Supervisor {
                    id: "alice".into(),
                    token_sha256: Some(alice_hash),
                    cert_cn: Some("alice.example".into()),
                    view: ServiceSet::All,
                    listen: ServiceSet::only(["sales", "secret"]),
                },
                Supervisor {
                    id: "bob".into(),
                    token_sha256: Some(bob_hash),
                    cert_cn: None,
                    view: ServiceSet::only(["support"]),
                    listen: ServiceSet::Nothing,
                },
            ],
            monitorable: ["sales".to_owned(), "support".to_owned()].into(),
            ..AccessSettings::default()
        });
        (access, alice, bob)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let (a, ha) = make_token().unwrap();
        let (b, _) = make_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(token_hash_hex(&a), hex::encode(ha));
        assert_eq!(parse_sha256_hex(&token_hash_hex(&a)), Some(ha));
        assert_eq!(parse_sha256_hex("xyz"), None);
        assert_eq!(parse_sha256_hex(&"g".repeat(64)), None);
        // SHA-256 of "abc" (FIPS 180-2 example): the hash is the standard one.
        assert_eq!(
            token_hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn permissions_per_service_and_monitorable() {
        let (access, alice, bob) = access();
        let a = bearer(&alice);
        let a = Credentials {
            authorization: Some(&a),
            ..Credentials::default()
        };
        let b = bearer(&bob);
        let b = Credentials {
            authorization: Some(&b),
            ..Credentials::default()
        };
        assert_eq!(
            access
                .authorize(&a, Some("sales"), Permission::Listen)
                .unwrap()
                .id,
            "alice"
        );
        // Permission, but the service is not monitorable; no service at all: never.
        assert_eq!(
            access.authorize(&a, Some("secret"), Permission::Listen),
            Err(Denied::NotMonitorable)
        );
        assert_eq!(
            access.authorize(&a, Some("support"), Permission::Listen),
            Err(Denied::NotPermitted)
        );
        assert!(access.authorize(&a, None, Permission::View).is_ok());
        assert_eq!(
            access.authorize(&b, Some("support"), Permission::Listen),
            Err(Denied::NotPermitted)
        );
        assert!(access
            .authorize(&b, Some("support"), Permission::View)
            .is_ok());
        assert_eq!(
            access.authorize(&b, Some("sales"), Permission::View),
            Err(Denied::NotPermitted)
        );
        assert_eq!(access.refused(Denied::NotPermitted), 3);
        assert_eq!(access.refused(Denied::NotMonitorable), 1);
    }

    #[test]
    fn wrong_or_missing_credentials_are_401_and_counted() {
        let (access, alice, _) = access();
        let none = Credentials::default();
        assert_eq!(access.authenticate(&none), Err(Denied::NoCredentials));
        let wrong = bearer(&format!("{alice}0"));
        let wrong = Credentials {
            authorization: Some(&wrong),
            ..none
        };
        assert_eq!(access.authenticate(&wrong), Err(Denied::BadCredentials));
        let basic = Credentials {
            authorization: Some("Basic YWxpY2U6eA=="),
            ..none
        };
        assert_eq!(access.authenticate(&basic), Err(Denied::BadCredentials));
        let cookie = Credentials {
            cookie: Some("teledge_session=00"),
            ..none
        };
        assert_eq!(access.authenticate(&cookie), Err(Denied::BadCredentials));
        assert_eq!(Denied::BadCredentials.status(), 401);
        assert_eq!(Denied::NotMonitorable.status(), 403);
        assert_eq!(access.refused(Denied::NoCredentials), 1);
        assert_eq!(access.refused(Denied::BadCredentials), 3);
        // A certificate CN of the site CA.
        let cert = Credentials {
            client_cert_cn: Some("alice.example"),
            ..none
        };
        assert_eq!(
            access.authenticate(&cert).unwrap().auth,
            AuditAuth::Certificate
        );
        let other = Credentials {
            client_cert_cn: Some("mallory.example"),
            ..none
        };
        assert_eq!(access.authenticate(&other), Err(Denied::BadCredentials));
    }

    #[test]
    fn a_login_gives_a_session_cookie_that_identifies_until_logout() {
        let (access, alice, _) = access();
        let a = bearer(&alice);
        let login = access
            .login(&Credentials {
                authorization: Some(&a),
                ..Credentials::default()
            })
            .unwrap();
        assert!(login.set_cookie.contains("HttpOnly"));
        assert!(login.set_cookie.contains("SameSite=Strict"));
        // Plain HTTP: no Secure (the browser would not send it back); HTTPS: Secure.
        assert!(!login.set_cookie.contains("Secure"));
        let https = Access::new(AccessSettings {
            secure_cookie: true,
            ..(*access.settings()).clone()
        });
        let secure = https
            .login(&Credentials {
                authorization: Some(&a),
                ..Credentials::default()
            })
            .unwrap();
        assert!(
            secure.set_cookie.ends_with("; Secure"),
            "{}",
            secure.set_cookie
        );
        let pair = login.set_cookie.split(';').next().unwrap().to_owned();
        let header = format!("other=1; {pair}");
        let creds = Credentials {
            cookie: Some(&header),
            ..Credentials::default()
        };
        let p = access.authenticate(&creds).unwrap();
        assert_eq!((p.id.as_str(), p.auth), ("alice", AuditAuth::Session));
        assert_eq!(access.session_auth(&creds), Some(AuditAuth::Token));
        // A session cannot log in again (a stolen cookie does not renew itself).
        assert_eq!(access.login(&creds).unwrap_err(), Denied::NoCredentials);
        access.logout(&creds);
        assert_eq!(access.authenticate(&creds), Err(Denied::BadCredentials));
    }

    #[test]
    fn replaced_supervisors_take_effect_at_once_sessions_included() {
        let (access, alice, bob) = access();
        let a = bearer(&alice);
        let login = access
            .login(&Credentials {
                authorization: Some(&a),
                ..Credentials::default()
            })
            .unwrap();
        let pair = login.set_cookie.split(';').next().unwrap().to_owned();
        let session = Credentials {
            cookie: Some(&pair),
            ..Credentials::default()
        };
        assert!(access.authenticate(&session).is_ok());
        // Alice removed, bob kept: her token and her open session stop working.
        let mut settings = (*access.settings()).clone();
        settings.supervisors.retain(|s| s.id == "bob");
        settings.monitorable.clear();
        access.replace(&settings);
        assert_eq!(access.authenticate(&session), Err(Denied::BadCredentials));
        let token = Credentials {
            authorization: Some(&a),
            ..Credentials::default()
        };
        assert_eq!(access.authenticate(&token), Err(Denied::BadCredentials));
        let b = bearer(&bob);
        let b = Credentials {
            authorization: Some(&b),
            ..Credentials::default()
        };
        assert_eq!(access.authenticate(&b).unwrap().id, "bob");
        // What follows [[service]] stays as started.
        assert!(access.settings().monitorable.contains("sales"));
    }

    #[test]
    fn sessions_are_bounded_and_expire() {
        let (alice, hash) = make_token().unwrap();
        // The bound and the expiry on two instances, so that however slowly the logins run
        // (under qemu: 256 logins outlast a short lifetime) neither property hides the other.
        let with_ttl = |session_ttl| {
            Access::new(AccessSettings {
                supervisors: vec![Supervisor {
                    id: "alice".into(),
                    token_sha256: Some(hash),
                    cert_cn: None,
                    view: ServiceSet::All,
                    listen: ServiceSet::Nothing,
                }],
                session_ttl,
                ..AccessSettings::default()
            })
        };
        let a = bearer(&alice);
        let creds = Credentials {
            authorization: Some(&a),
            ..Credentials::default()
        };
        let cookie = |login: &Login| login.set_cookie.split(';').next().unwrap().to_owned();

        // Bounded: the oldest of alice's sessions gives way to her newest.
        let access = with_ttl(Duration::from_secs(3600));
        let first = access.login(&creds).unwrap();
        for _ in 1..MAX_SESSIONS_PER_SUPERVISOR {
            assert!(!access.login(&creds).unwrap().evicted);
        }
        assert!(access.login(&creds).unwrap().evicted);
        assert_eq!(access.sessions(), MAX_SESSIONS_PER_SUPERVISOR);
        assert_eq!(access.sessions_evicted(), 1);
        let pair = cookie(&first);
        let old = Credentials {
            cookie: Some(&pair),
            ..Credentials::default()
        };
        assert_eq!(access.authenticate(&old), Err(Denied::BadCredentials));

        // Expired: swept at the next login, and no longer accepted.
        let access = with_ttl(Duration::from_millis(200));
        let first = access.login(&creds).unwrap();
        access.login(&creds).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        let last = access.login(&creds).unwrap();
        assert_eq!(access.sessions(), 1, "expired sessions are swept at login");
        let pair = cookie(&first);
        let expired = Credentials {
            cookie: Some(&pair),
            ..Credentials::default()
        };
        assert!(access.authenticate(&expired).is_err());
        let pair = cookie(&last);
        let fresh = Credentials {
            cookie: Some(&pair),
            ..Credentials::default()
        };
        assert!(access.authenticate(&fresh).is_ok());
    }

    /// Regression: one supervisor logging in 256 times ended every other supervisor's
    /// session (the oldest overall made room). Now their own oldest does, and the whole table
    /// is still bounded when many supervisors log in.
    #[test]
    fn one_supervisors_logins_do_not_log_the_others_out() {
        let supervisors: Vec<(String, String, [u8; 32])> = (0..20)
            .map(|i| {
                let (token, hash) = make_token().unwrap();
                (format!("s{i}"), token, hash)
            })
            .collect();
        let access = Access::new(AccessSettings {
            supervisors: supervisors
                .iter()
                .map(|(id, _, hash)| Supervisor {
                    id: id.clone(),
                    token_sha256: Some(*hash),
                    cert_cn: None,
                    view: ServiceSet::All,
                    listen: ServiceSet::Nothing,
                })
                .collect(),
            session_ttl: Duration::from_secs(3600),
            ..AccessSettings::default()
        });
        let login = |i: usize| {
            let a = bearer(&supervisors[i].1);
            let creds = Credentials {
                authorization: Some(&a),
                ..Credentials::default()
            };
            access.login(&creds).unwrap()
        };
        let cookie_of = |l: &Login| l.set_cookie.split(';').next().unwrap().to_owned();
        let valid = |pair: &str| {
            access
                .authenticate(&Credentials {
                    cookie: Some(pair),
                    ..Credentials::default()
                })
                .is_ok()
        };
        let bob = cookie_of(&login(1));
        for _ in 0..MAX_SESSIONS {
            login(0);
        }
        assert!(valid(&bob), "bob is still logged in");
        assert_eq!(access.sessions(), MAX_SESSIONS_PER_SUPERVISOR + 1);
        // Many supervisors: the table stays within its bound.
        for i in 2..20 {
            for _ in 0..MAX_SESSIONS_PER_SUPERVISOR {
                login(i);
            }
        }
        assert_eq!(access.sessions(), MAX_SESSIONS);
    }
}
