//! Where a server is, as the configuration and the command line name it: a URL
//! (`https://collector.example/v1/batches`, `tls://nats.example:4222`) or a bare `host:port`
//! (`homer.example:9060`, `[2001:db8::1]:9061`).
//!
//! The text is parsed by `http::Uri` and `http::uri::Authority` (RFC 3986: IPv6 literals in
//! brackets, no spaces), then held to what teledge can connect to, each refusal one line that
//! quotes the input:
//! - the scheme is one of the caller's (any case), and the port defaults to that scheme's;
//! - no user information (`user:password@`): credentials belong in files, and a URL is
//!   logged;
//! - no fragment (`#…`), which `http::Uri` would otherwise drop without a word;
//! - a port, when one is written, is a whole number from 1 to 65535 (`http::Uri` reads
//!   `:99999` and `host:` as "no port");
//! - a host that is not empty and is ASCII (an internationalised name in its `xn--` form:
//!   nothing here converts names, and a percent-encoded one matches no DNS name); an IPv6
//!   host is returned without its brackets (what a socket address and a TLS server name
//!   take).
//!
//! Pure: no I/O, no name resolution.

use http::uri::Authority;
use http::Uri;

/// A parsed server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The scheme, in lower case.
    pub scheme: String,
    /// The host: a name or an IP address, IPv6 without brackets.
    pub host: String,
    /// The port written, else the scheme's default.
    pub port: u16,
    /// The path and query, `None` when the URL has none or only `/`.
    pub path_and_query: Option<String>,
}

/// Parses `text` as a URL whose scheme is one of `schemes` (each with its default port).
pub fn parse_url(text: &str, schemes: &[(&str, u16)]) -> Result<ServerUrl, String> {
    let shown = redacted(text);
    let expected = || {
        let names: Vec<String> = schemes.iter().map(|(s, _)| format!("{s}://")).collect();
        format!("{shown:?}: must start with {}", names.join(" or "))
    };
    let (scheme_text, _) = text.split_once("://").ok_or_else(expected)?;
    let default_port = schemes
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(scheme_text))
        .map(|(_, port)| *port)
        .ok_or_else(expected)?;
    if !text.is_ascii() {
        return Err(format!(
            "{shown:?}: a server URL is ASCII; write an internationalised host name in its \
             xn-- (Punycode) form"
        ));
    }
    if text.contains('#') {
        return Err(format!("{shown:?}: a server URL has no fragment (#…)"));
    }
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{shown:?}: not a URL ({e})"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{shown:?}: no host"))?;
    let (host, port) = host_and_port(&shown, authority)?;
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty() && *p != "/")
        .map(str::to_owned);
    Ok(ServerUrl {
        scheme: scheme_text.to_ascii_lowercase(),
        host,
        port: port.unwrap_or(default_port),
        path_and_query,
    })
}

/// Parses `text` as `host:port` (the port required; IPv6 in brackets).
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let shown = redacted(text);
    if !text.is_ascii() {
        return Err(format!(
            "{shown:?}: write an internationalised host name in its xn-- (Punycode) form"
        ));
    }
    if text.contains(['/', '?', '#']) {
        return Err(format!("{shown:?}: not host:port"));
    }
    let authority: Authority = text
        .parse()
        .map_err(|e| format!("{shown:?}: not host:port ({e})"))?;
    match host_and_port(&shown, &authority)? {
        (host, Some(port)) => Ok((host, port)),
        (_, None) => Err(format!("{shown:?}: not host:port (no port)")),
    }
}

/// The host (without IPv6 brackets) and the port written, if any, of `authority`.
fn host_and_port(shown: &str, authority: &Authority) -> Result<(String, Option<u16>), String> {
    let written = authority.as_str();
    if written.contains('@') {
        return Err(format!(
            "{shown:?}: no user or password in a server address; credentials belong in files"
        ));
    }
    let host = authority.host();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.is_empty() {
        return Err(format!("{shown:?}: no host"));
    }
    let port = match written.strip_prefix(host).and_then(|r| r.strip_prefix(':')) {
        None => None,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Some(port),
            _ => return Err(format!("{shown:?}: the port must be 1 to 65535")),
        },
    };
    Ok((bare.to_owned(), port))
}

/// `text` with any user information (`user:password@` before the host) shown as `***@`:
/// what every message here quotes, so that a password written into a URL is refused without
/// being repeated into a log.
pub fn redacted(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTPS: &[(&str, u16)] = &[("https", 443)];
    const NATS: &[(&str, u16)] = &[("nats", 4222), ("tls", 4222)];

    #[test]
    fn urls_give_host_port_and_path() {
        let url = parse_url("https://c.example:8443/v1/batches?x=1", HTTPS).unwrap();
        assert_eq!(
            url,
            ServerUrl {
                scheme: "https".into(),
                host: "c.example".into(),
                port: 8443,
                path_and_query: Some("/v1/batches?x=1".into()),
            }
        );
        let url = parse_url("HTTPS://[2001:db8::1]/", HTTPS).unwrap();
        assert_eq!((url.host.as_str(), url.port), ("2001:db8::1", 443));
        assert_eq!(url.path_and_query, None);
        assert_eq!(
            parse_url("https://c.example", HTTPS)
                .unwrap()
                .path_and_query,
            None
        );
        let url = parse_url("tls://n.example", NATS).unwrap();
        assert_eq!((url.scheme.as_str(), url.port), ("tls", 4222));
    }

    #[test]
    fn what_a_server_url_cannot_be() {
        for (text, says) in [
            ("http://c.example", "must start with https://"),
            ("c.example", "must start with https://"),
            ("https://u:secret@c.example/", "credentials belong in files"),
            ("https://c.example/#top", "no fragment"),
            ("https://c.example:0/", "1 to 65535"),
            ("https://c.example:99999/", "1 to 65535"),
            ("https://c.example:/", "1 to 65535"),
            ("https://[::1/", "not a URL"),
            ("https://c example/", "not a URL"),
            ("https:///v1", "not a URL"),
            ("https://:443/", "no host"),
            ("https://bücher.example/", "xn-- (Punycode)"),
        ] {
            let error = parse_url(text, HTTPS).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
        // A password written into a URL is refused without being repeated.
        for error in [
            parse_url("https://u:hunter2@c.example/", HTTPS).unwrap_err(),
            parse_url("https://u:hunter2@c.example/#x", HTTPS).unwrap_err(),
            parse_host_port("u:hunter2@h:9060").unwrap_err(),
        ] {
            assert!(
                !error.contains("hunter2") && error.contains("***@"),
                "{error}"
            );
        }
        assert_eq!(
            redacted("tls://a:b@n.example:4222/x@y"),
            "tls://***@n.example:4222/x@y"
        );
        assert_eq!(redacted("https://c.example/p@q"), "https://c.example/p@q");
        assert!(parse_url("https://n.example", NATS)
            .unwrap_err()
            .contains("nats:// or tls://"));
    }

    #[test]
    fn host_port_pairs() {
        assert_eq!(
            parse_host_port("homer.example:9060"),
            Ok(("homer.example".into(), 9060))
        );
        assert_eq!(
            parse_host_port("[2001:db8::1]:9061"),
            Ok(("2001:db8::1".into(), 9061))
        );
        for text in [
            "homer",
            ":9060",
            "h:0",
            "h:70000",
            "h:",
            "2001:db8::1:9060",
            "u@h:9060",
            "h:9060/x",
            "h :9060",
        ] {
            assert!(parse_host_port(text).is_err(), "{text}");
        }
    }
}
