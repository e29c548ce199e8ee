//! The local HTTP endpoint: `GET /metrics` (Prometheus text 0.0.4) and `GET /health`, and
//! with `[status] enabled` the status page ([`super::page`]) beside them.
//! Live listen's WHEP routes (`/whep/…`, handed to `listen::http`, which reads the offer's
//! body) when `[listen]` is enabled.
//!
//! `/health` answers 200 with `{"status":"ok",...}` while the data path makes progress and 503
//! with `{"status":"degraded","reasons":[...],...}` when it does not (see [`Health`]).
//!
//! Bounded like everything else: at most [`MAX_CONNECTIONS`] connections at once (more wait
//! in the listen backlog), a request head must arrive within [`HEADER_TIMEOUT`], and bodies
//! are never read (but a WHEP offer's, bounded by `listen::http`). On shutdown it stops accepting, lets requests in flight finish, and gives
//! up on connections still open after [`DRAIN_DEADLINE`].

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

/// Most connections served at once (a scraper and an operator's curl need a handful).
pub const MAX_CONNECTIONS: usize = 16;
/// Time allowed for a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to finish requests in flight at shutdown.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

pub use super::page::Body;

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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let endpoint = endpoint.clone();
        let conn_shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            match endpoint.tls.clone() {
                None => connection(TokioIo::new(tcp), peer, None, endpoint, conn_shutdown).await,
                Some(config) => {
                    // The handshake within the head's time (a client that opens and waits
                    // holds a slot no longer than one that sends no head).
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %crate::report::Chain(&e), "Status endpoint TLS handshake failed.");
                            return;
                        }
                        Err(_) => return,
                    };
                    let cn = crate::access::tls::client_cn(tls.get_ref().1);
                    connection(TokioIo::new(tls), peer, cn, endpoint, conn_shutdown).await;
                }
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
    endpoint: Endpoint,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
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
        .header_read_timeout(HEADER_TIMEOUT)
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
        tracing::debug!(%peer, error = %crate::report::Chain(&e), "Metrics connection ended.");
    }
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
