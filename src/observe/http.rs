//! The local HTTP endpoint: `GET /metrics` (Prometheus text 0.0.4) and `GET /health`, and
//! with `[status] enabled` the status page ([`super::page`]) beside them.
//! Live listen's WHEP routes (`/whep/…`, handed to `listen::http`, which reads the offer's
//! body) when `[listen]` is enabled.
//!
//! `/health` answers 200 with `{"status":"ok",...}` while the data path makes progress and 503
//! with `{"status":"degraded","reasons":[...],...}` when it does not (see [`Health`]).
//!
//! Bounded like everything else ([`Bounds`]): at most [`MAX_CONNECTIONS`] connections at
//! once (more wait in the listen backlog), at most [`MAX_CONNECTIONS_PER_ADDRESS`] of them
//! from one source address (more are closed at once), so one peer that opens connections
//! and sends nothing cannot keep a scraper or a supervisor out; a request head must arrive
//! within [`HEADER_TIMEOUT`] and fit in [`MAX_HEAD_BYTES`] (431 beyond); a write that waits
//! [`WRITE_STALL_TIMEOUT`] for a peer that reads nothing back (pipelined requests never
//! read, an event stream left unread) ends the connection; bodies are never read (but a
//! WHEP offer's, bounded by `listen::http`). Every refusal and every connection ended by a
//! bound is counted by reason in `teledge_observe_connections_closed_total`. On shutdown it
//! stops accepting, lets requests in flight finish, and gives up on connections still open
//! after [`DRAIN_DEADLINE`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::agent::AgentMetrics;
use super::health::Health;
use super::metrics::CONTENT_TYPE;

/// Most connections served at once (a scraper, an operator's curl and a few supervisors'
/// browsers need a handful each; an idle connection costs a task and a small buffer).
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections from one source address (an IPv6 /64): supervisors behind one NAT or
/// SSH tunnel share an address, and every event stream ([`super::page::MAX_STREAMS`]) may
/// come from it, so a quarter of the table — one address cannot take it all.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// Time allowed for a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read (hyper's read buffer; a longer head is answered 431).
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// A write waiting this long for the peer to read ends the connection.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to finish requests in flight at shutdown.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

pub use super::page::Body;

/// The endpoint's connection bounds (the constants above; tests shorten the times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_timeout: Duration,
    pub write_stall_timeout: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_address: MAX_CONNECTIONS_PER_ADDRESS,
            header_timeout: HEADER_TIMEOUT,
            write_stall_timeout: WRITE_STALL_TIMEOUT,
        }
    }
}

/// What the endpoint serves.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub metrics: Arc<AgentMetrics>,
    pub health: Arc<Health>,
    /// The status page, when `[status]` enables it.
    pub page: Option<super::page::Page>,
    /// HTTPS (`[status] tls_cert_file`), with optional client certificates of the site CA
    /// whose CN reaches the handlers as a [`crate::access::ClientCertCn`] extension.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Live listen (WHEP, `/whep/…`), when `[listen]` is enabled.
    pub listen: Option<crate::listen::Service>,
}

impl Endpoint {
    /// `/metrics` and `/health` only.
    pub fn new(metrics: Arc<AgentMetrics>, health: Arc<Health>) -> Endpoint {
        Endpoint {
            metrics,
            health,
            page: None,
            tls: None,
            listen: None,
        }
    }
}

/// Answers one request from `peer`: the status page's paths when it is enabled, else
/// [`handle`].
pub fn route<B>(req: &Request<B>, peer: SocketAddr, endpoint: &Endpoint) -> Response<Body> {
    if let Some(page) = &endpoint.page {
        if super::page::is_page_path(req.uri().path()) {
            return super::page::handle(req, peer, page);
        }
    }
    handle(req, endpoint).map(|b| b.map_err(|e| match e {}).boxed())
}

/// Binds the listener (separate from [`serve`] so startup fails early on a taken port, and
/// tests can bind port 0 and read the address).
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Serves until `shutdown` is cancelled; returns when the connections in flight are done
/// (or after [`DRAIN_DEADLINE`]).
pub async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, endpoint, Bounds::default(), shutdown).await
}

/// [`serve`] with other bounds.
pub async fn serve_with(
    listener: TcpListener,
    endpoint: Endpoint,
    bounds: Bounds,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    let per_address = crate::admission::PerAddress::new(bounds.max_connections_per_address);
    let mut connections = JoinSet::new();
    loop {
        // Wait for a free slot before accepting, so excess clients queue in the kernel's
        // backlog instead of costing us memory.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                // The semaphore is never closed; treat it as shutdown if it ever is.
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        // Reap finished connections so the set stays as small as the live ones.
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Per-connection failures (EMFILE, a reset before accept) must not end the
                // endpoint; pause briefly so a persistent one does not spin.
                tracing::warn!(error = %crate::report::Chain(&e), "Metrics endpoint could not accept a connection.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(address_slot) = per_address.take(peer.ip()) else {
            // Closed at once (dropping it), so the source's flood costs it its connections,
            // not the others their place in the backlog.
            closed(&endpoint, "per_address");
            tracing::debug!(%peer, "Too many connections to the metrics endpoint from this address; refused.");
            continue;
        };
        let endpoint = endpoint.clone();
        let conn_shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _address_slot = address_slot;
            let (tcp, stalled) = crate::admission::StallGuard::new(tcp, bounds.write_stall_timeout);
            match endpoint.tls.clone() {
                None => {
                    connection(TokioIo::new(tcp), peer, None, &endpoint, bounds, conn_shutdown).await;
                }
                Some(config) => {
                    // The handshake within the head's time (a client that opens and waits
                    // holds a slot no longer than one that sends no head).
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let tls = match tokio::time::timeout(bounds.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %crate::report::Chain(&e), "Status endpoint TLS handshake failed.");
                            if stalled.load(std::sync::atomic::Ordering::Relaxed) {
                                closed(&endpoint, "write_stalled");
                            }
                            return;
                        }
                        Err(_) => {
                            closed(&endpoint, "head_timeout");
                            return;
                        }
                    };
                    let cn = crate::access::tls::client_cn(tls.get_ref().1);
                    connection(TokioIo::new(tls), peer, cn, &endpoint, bounds, conn_shutdown).await;
                }
            }
            if stalled.load(std::sync::atomic::Ordering::Relaxed) {
                closed(&endpoint, "write_stalled");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
    Ok(())
}

/// Serves one connection (plain or TLS) until it closes or shutdown.
async fn connection<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    cn: Option<crate::access::ClientCertCn>,
    endpoint: &Endpoint,
    bounds: Bounds,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let counters = endpoint.metrics.clone();
    let endpoint = endpoint.clone();
    // Whether a request came at all: a keep-alive connection left idle after its requests
    // ends at the head timeout too, and that is no refusal.
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served_in = served.clone();
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        served_in.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(cn) = &cn {
            req.extensions_mut().insert(cn.clone());
        }
        let endpoint = endpoint.clone();
        #[cfg(feature = "listen")]
        let cn = cn.clone();
        async move {
            #[cfg(feature = "listen")]
            if let (Some(whep), true) = (&endpoint.listen, req.uri().path().starts_with("/whep/")) {
                let cn = cn.as_ref().map(|c| c.0.as_ref());
                let answer = crate::listen::http::route(req, whep, peer, cn).await;
                return Ok::<_, std::convert::Infallible>(
                    answer.map(|b| b.map_err(|e| match e {}).boxed()),
                );
            }
            Ok::<_, std::convert::Infallible>(route(&req, peer, &endpoint))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the request in flight, then close (no new keep-alive request).
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() && !served.load(std::sync::atomic::Ordering::Relaxed) {
            counters
                .observe_connections_closed
                .with(&["head_timeout"])
                .inc();
        } else if e.is_parse_too_large() {
            counters
                .observe_connections_closed
                .with(&["head_too_large"])
                .inc();
        }
        tracing::debug!(%peer, error = %crate::report::Chain(&e), "Metrics connection ended.");
    }
}

/// Counts a connection refused or ended by a bound.
fn closed(endpoint: &Endpoint, reason: &'static str) {
    endpoint
        .metrics
        .observe_connections_closed
        .with(&[reason])
        .inc();
}

/// Answers one request. Pure apart from reading the metrics and health.
pub fn handle<B>(req: &Request<B>, endpoint: &Endpoint) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != "/metrics" && path != "/health" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    if req.method() != Method::GET {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
        return r;
    }
    if path == "/metrics" {
        return reply(StatusCode::OK, CONTENT_TYPE, endpoint.metrics.render());
    }
    let report = endpoint.health.check(Instant::now());
    let status = if report.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::to_vec(&report).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    // Metrics and health are live values; a cache in between would lie.
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}
