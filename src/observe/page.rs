//! The status page on the `/metrics` listener (`[status] enabled = true`): static files
//! embedded in the binary (no build step), a token login that sets a session cookie, the
//! node's [`Snapshot`] as JSON, and live updates by Server-Sent Events.
//!
//! | path | what | access |
//! |---|---|---|
//! | `GET /` | the page (HTML) | a session or token; otherwise 401 with the login form as its body |
//! | `GET /login` | the login form | public |
//! | `GET /static/{app.js,login.js,style.css}` | the page's script and style (no data) | public, `ETag` / 304 |
//! | `POST /api/login` | `Authorization: Bearer <token>` → 204 and `Set-Cookie` | audited (`teledge.audit/1`, `action: login`), accepted or refused |
//! | `POST /api/logout` | ends the session | — |
//! | `GET /api/snapshot` | the [`Snapshot`] the viewer may see (JSON) | a session or token |
//! | `GET /api/events` | `text/event-stream`: a `snapshot` event (id = its `seq`) whenever the daemon publishes one (once a second), a comment every 15 s when nothing changed, `retry: 2000` | a session or token; at most [`MAX_STREAMS`] at once and [`MAX_STREAMS_PER_SUPERVISOR`] of one supervisor (503 beyond, counted) |
//!
//! Every response carries a strict Content Security Policy (no inline script or style;
//! scripts, styles, `fetch` and `EventSource` only from the agent itself; no frames, no
//! forms posting anywhere), `X-Content-Type-Options: nosniff`, `Referrer-Policy:
//! no-referrer` and `Cache-Control: no-store` (static files: `no-cache` with an `ETag`).
//! Refusals: 401 with `WWW-Authenticate: Bearer` (nothing or a wrong token/cookie), 403
//! (known, but no view permission), all counted (`teledge_access_refused_total`). An event
//! stream ends when the session does (logout or expiry: a final `logout` event), when the
//! client goes, and at shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::agent::AgentMetrics;
use super::status::{Snapshot, SnapshotRx};
use crate::access::audit::{AuditSink, Client};
use crate::access::{Access, Credentials, Denied, Permission, Principal};

/// A response body of the endpoint: whole (metrics, health, the page's files) or streamed
/// (events).
pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Event streams open at once (each holds one of the endpoint's connections).
pub const MAX_STREAMS: usize = 8;
/// Event streams of one supervisor open at once (a desk, a phone, a tab opened again), so
/// that one supervisor's tabs cannot take every stream from the others.
pub const MAX_STREAMS_PER_SUPERVISOR: usize = 4;
/// A comment line this often keeps proxies and the browser from closing a quiet stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The Content Security Policy of every page response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An embedded file: its bytes, type and `ETag`.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

fn asset(body: &'static str, content_type: &'static str) -> Asset {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let etag = hex::encode(&digest.as_ref()[..12]);
    Asset {
        body,
        content_type,
        etag: format!("\"{etag}\""),
    }
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| asset(include_str!("web/index.html"), "text/html; charset=utf-8"));
static LOGIN: LazyLock<Asset> =
    LazyLock::new(|| asset(include_str!("web/login.html"), "text/html; charset=utf-8"));
static APP_JS: LazyLock<Asset> =
    LazyLock::new(|| asset(include_str!("web/app.js"), "text/javascript; charset=utf-8"));
static LOGIN_JS: LazyLock<Asset> = LazyLock::new(|| {
    asset(
        include_str!("web/login.js"),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| asset(include_str!("web/style.css"), "text/css; charset=utf-8"));

/// What the page needs: access control, the audit sink, the daemon's snapshots.
#[derive(Debug, Clone)]
pub struct Page {
    pub access: Arc<Access>,
    pub audit: AuditSink,
    pub snapshots: SnapshotRx,
    pub metrics: Arc<AgentMetrics>,
    /// Ends every event stream (the daemon's shutdown).
    pub stop: CancellationToken,
    streams: Arc<Semaphore>,
    /// Event streams open now by supervisor id.
    streams_by: Arc<Mutex<HashMap<String, usize>>>,
}

/// One supervisor's place among the open event streams, given back when the stream ends.
struct StreamShare {
    table: Arc<Mutex<HashMap<String, usize>>>,
    supervisor: String,
}

impl StreamShare {
    fn take(table: &Arc<Mutex<HashMap<String, usize>>>, supervisor: &str) -> Option<StreamShare> {
        let mut held = table.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(supervisor.to_owned()).or_insert(0);
        if *count >= MAX_STREAMS_PER_SUPERVISOR {
            return None;
        }
        *count += 1;
        Some(StreamShare {
            table: Arc::clone(table),
            supervisor: supervisor.to_owned(),
        })
    }
}

impl Drop for StreamShare {
    fn drop(&mut self) {
        let mut held = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.supervisor) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.supervisor);
            }
        }
    }
}

impl Page {
    pub fn new(
        access: Arc<Access>,
        audit: AuditSink,
        snapshots: SnapshotRx,
        metrics: Arc<AgentMetrics>,
        stop: CancellationToken,
    ) -> Page {
        Page {
            access,
            audit,
            snapshots,
            metrics,
            stop,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            streams_by: Arc::default(),
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

/// The headers every page response carries.
fn secure(mut r: Response<Body>, cache: &'static str) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(r, "no-store")
}

fn serve_asset<B>(req: &Request<B>, a: &Asset) -> Response<Body> {
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag));
    let mut r = if matches {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(full(a.body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        r
    };
    if let Ok(v) = HeaderValue::from_str(&a.etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    secure(r, "no-cache")
}

fn refused(denied: Denied, body: Option<&Asset>) -> Response<Body> {
    let status = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut r = match body {
        Some(a) => respond(status, a.content_type, a.body),
        None => respond(
            status,
            "application/json",
            format!("{{\"error\":\"{}\"}}\n", denied.code()),
        ),
    };
    if denied.status() == 401 {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"teledge\""),
        );
    }
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        "method not allowed\n",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Whether `path` is one of the page's.
pub fn is_page_path(path: &str) -> bool {
    matches!(path, "/" | "/index.html" | "/login")
        || path.starts_with("/static/")
        || path.starts_with("/api/")
}

/// Answers a request for one of the page's paths ([`is_page_path`]).
pub fn handle<B>(req: &Request<B>, peer: SocketAddr, page: &Page) -> Response<Body> {
    let path = req.uri().path();
    let method = req.method();
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/login" if get => serve_asset(req, &LOGIN),
        "/static/app.js" if get => serve_asset(req, &APP_JS),
        "/static/login.js" if get => serve_asset(req, &LOGIN_JS),
        "/static/style.css" if get => serve_asset(req, &STYLE),
        "/login" | "/static/app.js" | "/static/login.js" | "/static/style.css" => {
            method_not_allowed("GET, HEAD")
        }
        "/api/login" if method == Method::POST => login(req, peer, page),
        "/api/logout" if method == Method::POST => {
            let creds = Credentials::from_request(req);
            let clear = page.access.logout(&creds);
            let mut r = respond(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
            if let Ok(v) = HeaderValue::from_str(&clear) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        "/api/login" | "/api/logout" => method_not_allowed("POST"),
        "/" | "/index.html" | "/api/snapshot" | "/api/events" if !get => {
            method_not_allowed("GET, HEAD")
        }
        "/" | "/index.html" => {
            match page
                .access
                .authorize(&Credentials::from_request(req), None, Permission::View)
            {
                Ok(_) => serve_asset(req, &INDEX),
                // The login form, with the status that says why.
                Err(d) if d.status() == 401 => refused(d, Some(&LOGIN)),
                Err(d) => refused(d, None),
            }
        }
        "/api/snapshot" => match viewer(req, page) {
            Ok(principal) => {
                let snapshot = page.snapshots.borrow().clone();
                let view = snapshot.for_principal(&principal, &page.access);
                let body = serde_json::to_vec(&view).unwrap_or_else(|_| b"{}".to_vec());
                respond(StatusCode::OK, "application/json", body)
            }
            Err(d) => refused(d, None),
        },
        "/api/events" => match viewer(req, page) {
            Ok(principal) => events(req, principal, page),
            Err(d) => refused(d, None),
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn viewer<B>(req: &Request<B>, page: &Page) -> Result<Principal, Denied> {
    page.access
        .authorize(&Credentials::from_request(req), None, Permission::View)
}

fn login<B>(req: &Request<B>, peer: SocketAddr, page: &Page) -> Response<Body> {
    let client = Client::from_headers(peer, req.headers());
    let creds = Credentials::from_request(req);
    match page.access.login(&creds) {
        Ok(login) => {
            page.audit.login(Ok(&login.principal), 204, &client);
            let mut r = respond(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
            if let Ok(v) = HeaderValue::from_str(&login.set_cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(d) => {
            page.audit.login(Err(d), d.status(), &client);
            refused(d, None)
        }
    }
}

/// A Server-Sent Events body fed by a task.
struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// One `snapshot` event: `id`, `event`, one `data` line (compact JSON has no newline).
pub fn sse_event(snapshot: &Snapshot) -> Bytes {
    let json = serde_json::to_string(snapshot).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!(
        "id: {}\nevent: snapshot\ndata: {json}\n\n",
        snapshot.seq
    ))
}

fn events<B>(req: &Request<B>, principal: Principal, page: &Page) -> Response<Body> {
    let share = StreamShare::take(&page.streams_by, &principal.id);
    let permit = Arc::clone(&page.streams).try_acquire_owned();
    let (Some(share), Ok(permit)) = (share, permit) else {
        page.metrics.status_streams_refused.inc();
        let mut r = respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "too many event streams open\n",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return r;
    };
    // The credentials, kept to see whether the session still holds before each event.
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cookie = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cert_cn = req
        .extensions()
        .get::<crate::access::ClientCertCn>()
        .map(|c| Arc::clone(&c.0));
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let mut snapshots = page.snapshots.clone();
    let access = Arc::clone(&page.access);
    let stop = page.stop.clone();
    let metrics = Arc::clone(&page.metrics);
    tokio::spawn(async move {
        let _permit = permit;
        let _share = share;
        metrics.status_streams.inc();
        // The first event at once: the current snapshot (also after a reconnect with
        // Last-Event-ID, since every event is a whole snapshot).
        snapshots.mark_changed();
        let _ = tx.try_send(Bytes::from_static(b"retry: 2000\n\n"));
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let creds = Credentials {
                        authorization: authorization.as_deref(),
                        cookie: cookie.as_deref(),
                        client_cert_cn: cert_cn.as_deref(),
                    };
                    if access.authorize(&creds, None, Permission::View).is_err() {
                        let _ = tx.send(Bytes::from_static(b"event: logout\ndata: {}\n\n")).await;
                        break;
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    let event = sse_event(&snapshot.for_principal(&principal, &access));
                    // A client that does not keep up misses snapshots, not memory: the
                    // next one replaces what it missed.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(event) {
                        break;
                    }
                }
                () = tokio::time::sleep(KEEP_ALIVE) => {
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        tx.try_send(Bytes::from_static(b": keep-alive\n\n"))
                    {
                        break;
                    }
                }
                () = tx.closed() => break,
                () = stop.cancelled() => break,
            }
        }
        metrics.status_streams.dec();
    });
    let mut r = Response::new(SseBody { rx }.boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    secure(r, "no-store")
}
