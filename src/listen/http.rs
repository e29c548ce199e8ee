//! WHEP over HTTP (draft-ietf-wish-whep), the routes `observe::http` hands over once the
//! request is authenticated:
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /whep/calls/{Call-ID}` (`application/sdp` offer, Call-ID percent-encoded) | `201`, `application/sdp` answer, `Location: /whep/sessions/{random}` |
//! | — no open call with that Call-ID | `409` + `Retry-After` |
//! | — listener bounds reached | `503` + `Retry-After` |
//! | — the call has no G.711 | `422` |
//! | — not `application/sdp` / offer unusable / over 64 KiB | `415` / `400` / `413` |
//! | `DELETE /whep/sessions/{id}` | `200`; `404` when the supervisor has no such session (another's is not theirs to end) |
//! | `PATCH /whep/sessions/{id}` (trickle, ICE restart) | `405`: the server does not trickle, the answer has every candidate |
//! | `OPTIONS` (any `/whep/` path, CORS preflight, no authentication) | `200`, `Accept-Post: application/sdp`, CORS headers |
//! | anything else without valid credentials | `401` + `WWW-Authenticate: Bearer` (a POST is audited as refused) |
//! | — not permitted for the call's service, or the service is not monitorable | `403` (audited) |
//! | `GET /whep/player.html`, `GET /whep/listen.js` (no authentication: no data) | a minimal player page and the WHEP client script the status page uses too |
//! | `HEAD /whep/calls/{Call-ID}` | `200` with `Content-Type: application/sdp` when the call is open, else `409` |

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::whep::{CreateError, Whep, MAX_OFFER_BYTES, RETRY_AFTER_S};
use crate::access::audit::Client;
use crate::access::{Credentials, Principal};

/// Time allowed for the offer's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a call's WHEP endpoint is.
pub const CALLS: &str = "/whep/calls/";
/// Where sessions are.
pub const SESSIONS: &str = "/whep/sessions/";
/// A minimal player page: a call id, a token (or the status page's login), *Listen*.
pub const PLAYER: &str = "/whep/player.html";
/// The WHEP client script (`teledgeListen(callId, {audio, token})`), for the status page too.
pub const SCRIPT: &str = "/whep/listen.js";

/// Whether this request is a CORS preflight (answered without authentication).
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
}

/// Answers a CORS preflight.
pub fn preflight() -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::OK, Bytes::new());
    let h = r.headers_mut();
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, DELETE, PATCH, OPTIONS, HEAD"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, if-match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// Handles a WHEP request from `peer`: the preflight as it is, everything else once
/// authenticated (`client_cert_cn`: a client certificate's CN the TLS layer verified).
pub async fn route<B>(
    req: Request<B>,
    whep: &Whep,
    peer: SocketAddr,
    client_cert_cn: Option<&str>,
) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    if is_preflight(&req) {
        return preflight();
    }
    if req.method() == Method::GET {
        if let Some(page) = static_file(&path) {
            return page;
        }
    }
    let client = Client::from_headers(peer, req.headers());
    let call = path.strip_prefix(CALLS).map(percent_decode);
    let principal = whep
        .access()
        .authenticate(&Credentials::from_headers(req.headers(), client_cert_cn));
    let principal = match principal {
        Ok(p) => p,
        Err(denied) => {
            if req.method() == Method::POST {
                whep.audit().listen_refused(
                    None,
                    denied.code(),
                    denied.status(),
                    call.as_ref().and_then(|c| c.as_deref()),
                    None,
                    &client,
                );
            }
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                format!("{denied}: send Authorization: Bearer <supervisor token>\n"),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    };
    if let Some(call_id) = call {
        let Some(call_id) = call_id else {
            return text(
                StatusCode::BAD_REQUEST,
                "the Call-ID is not valid percent-encoded UTF-8\n",
            );
        };
        let client = &client;
        let principal = &principal;
        return match *req.method() {
            Method::POST => post(req, whep, &call_id, principal, client).await,
            // Whether the call is live, to anyone authenticated (it says no more than the
            // status page's list).
            Method::HEAD => match whep.lookup(&call_id) {
                Some(_) => {
                    let mut r = reply(StatusCode::OK, Bytes::new());
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/sdp"),
                    );
                    r
                }
                None => not_live(),
            },
            _ => not_allowed("POST, HEAD, OPTIONS"),
        };
    }
    if let Some(session) = path.strip_prefix(SESSIONS) {
        return match *req.method() {
            Method::DELETE if whep.delete(session, &principal) => text(StatusCode::OK, "ended\n"),
            Method::DELETE => text(StatusCode::NOT_FOUND, "no such session\n"),
            // No trickle and no ICE restart: the answer carries every candidate.
            _ => not_allowed("DELETE, OPTIONS"),
        };
    }
    text(StatusCode::NOT_FOUND, "not found\n")
}

async fn post<B>(
    req: Request<B>,
    whep: &Whep,
    call_id: &str,
    principal: &Principal,
    client: &Client,
) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let sdp = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
        });
    if !sdp {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be Content-Type: application/sdp\n",
        );
    }
    let body = Limited::new(req.into_body(), MAX_OFFER_BYTES);
    let offer = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the offer did not arrive in time\n",
            )
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "the offer is too long\n")
        }
        Ok(Err(_)) => return text(StatusCode::BAD_REQUEST, "the offer could not be read\n"),
        Ok(Ok(collected)) => match String::from_utf8(collected.to_bytes().to_vec()) {
            Ok(s) => s,
            Err(_) => return text(StatusCode::BAD_REQUEST, "the offer is not UTF-8\n"),
        },
    };
    match whep.create(call_id, offer, principal, client).await {
        Ok(created) => {
            let mut r = reply(StatusCode::CREATED, Bytes::from(created.answer));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("{SESSIONS}{}", created.session)) {
                h.insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => {
            tracing::info!(
                principal = %principal.id,
                call = %call_id,
                client = %client.address,
                reason = e.kind(),
                error = %crate::report::Chain(&e),
                "Live listen refused."
            );
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = text(status, format!("{}\n", crate::report::Chain(&e)));
            if matches!(e, CreateError::NotActive | CreateError::Full(_)) {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
            }
            r
        }
    }
}

/// The player page and the WHEP client script (no data in them: served without
/// authentication, with a strict content security policy: no inline script).
fn static_file(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = match path {
        PLAYER => (include_str!("web/player.html"), "text/html; charset=utf-8"),
        SCRIPT => (
            include_str!("web/listen.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return None,
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; media-src 'self' blob:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}

fn not_live() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::CONFLICT, "no active call with this Call-ID\n");
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    r
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here\n");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = reply(status, body.into());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Every WHEP answer: CORS for a page on another origin (the token travels in
/// `Authorization`, never in a cookie, so `*` gives a foreign page nothing it lacks), the
/// session URL readable by scripts, and no caching.
fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("location"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `%XX` decoding of a path segment into UTF-8; `None` for a bad escape or bad UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_percent_decoded() {
        assert_eq!(
            percent_decode("1-2%40192.0.2.1").as_deref(),
            Some("1-2@192.0.2.1")
        );
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode(""), None);
    }
}
