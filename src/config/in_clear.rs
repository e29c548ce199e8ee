//! What the configuration would send or accept **in clear** over a network: the one place
//! that finds it and words the warnings (`check-config` prints them, `run` logs them), so
//! every such finding reads alike:
//!
//! > `<what>` travel(s) in clear (`<channel>`): anyone on the path can read it (them);
//! > `<remedy>`
//!
//! Each finding is a warning, not a problem: on a trusted network (a LAN segment of the
//! site, a VPN) clear text may be a choice, and the service runs. Nothing is said of a
//! loopback peer (`127.0.0.0/8`, `::1`, `localhost`): nothing leaves the box.
//!
//! | section | what travels in clear | when |
//! |---|---|---|
//! | `[hep_out]` | the SIP messages as captured (numbers, display names, addresses: the identities `[privacy]` pseudonymises in records), quality reports (RTCP, stream reports) with their Call-IDs, and `auth_key` | `transport = "udp"` or `"tcp"` to a non-loopback address |
//! | `[hep]` | `auth_key`, in every frame the senders send (whoever reads one can inject calls) | a `udp` or `tcp` listener on a non-loopback address, with a key |
//! | `[[callcenter]]` | the event-socket password and FreeSWITCH's events (callers' numbers, agents) | a non-loopback `address` (mod_event_socket has no TLS) |
//! | `[status]` (and `[listen]`) | supervisor tokens at login and in WHEP requests, session cookies, and the page's calls | the `[observe]` endpoint on a non-loopback address without `tls_cert_file` |
//!
//! The other outputs never go in clear, so there is nothing to warn of: the uplink is
//! `https://` only and a NATS uplink requires TLS for `nats://` as for `tls://` (anything
//! else is a problem, `config::forward`, `config::nats`); live listen's media is DTLS-SRTP;
//! `/metrics` and `/health` carry no identity and no secret.

use std::net::{IpAddr, SocketAddr};

use super::ConfigProblem;

/// What travels: one thing or several (for the verb).
enum What<'a> {
    One(&'a str),
    Several(&'a str),
}

/// One finding: `path` (the TOML path the warning points at), what travels, over which
/// channel, and what to do.
fn in_clear(path: String, what: What<'_>, channel: String, remedy: &str) -> ConfigProblem {
    let (what, verb, it) = match what {
        What::One(w) => (w, "travels", "it"),
        What::Several(w) => (w, "travel", "them"),
    };
    ConfigProblem {
        path,
        message: format!(
            "{what} {verb} in clear ({channel}): anyone on the path can read {it}; {remedy}"
        ),
    }
}

/// Whether `host` (an IP address or a name, IPv6 possibly in brackets) is this box.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What `[hep_out]` (or `replay --hep-out`) sends in clear: `transport` is `"udp"`, `"tcp"`
/// or `"tls"`; `sip` and `reports` say which frames go; `key` whether an auth key does.
pub fn hep_out(
    address: &str,
    transport: &str,
    sip: bool,
    reports: bool,
    key: bool,
) -> Option<ConfigProblem> {
    let loopback =
        crate::server_url::parse_host_port(address).is_ok_and(|(host, _)| is_loopback_host(&host));
    if transport == "tls" || loopback {
        return None;
    }
    let mut what = Vec::new();
    if sip {
        what.push(
            "the SIP messages as captured (callers' and callees' numbers, display names and \
             addresses)",
        );
    }
    if reports {
        what.push("quality reports (RTCP, stream reports) with their Call-IDs");
    }
    if key {
        what.push("the HEP auth key");
    }
    let several = what.len() > 1 || sip || reports;
    let what = join(&what)?;
    Some(in_clear(
        "hep_out".into(),
        if several {
            What::Several(&what)
        } else {
            What::One(&what)
        },
        format!("{transport} to {address}"),
        "use transport = \"tls\" (with tls_ca_file) beyond a trusted network",
    ))
}

/// `[hep]`: a key the senders send in clear to a `udp` or `tcp` listener.
pub fn hep_in(udp: Option<SocketAddr>, tcp: Option<SocketAddr>, key: bool) -> Vec<ConfigProblem> {
    if !key {
        return Vec::new();
    }
    [("udp", udp), ("tcp", tcp)]
        .into_iter()
        .filter_map(|(field, addr)| {
            let addr = addr.filter(|a| !a.ip().is_loopback())?;
            Some(in_clear(
                format!("hep.{field}"),
                What::One("the HEP auth key (in every frame: whoever reads one can inject calls)"),
                format!("senders' {field} to {addr}"),
                "have senders use the [hep] tls listener beyond a trusted network",
            ))
        })
        .collect()
}

/// `[[callcenter]]` number `index` at `address`: FreeSWITCH's event socket has no TLS.
pub fn callcenter(index: usize, address: SocketAddr) -> Option<ConfigProblem> {
    if address.ip().is_loopback() {
        return None;
    }
    Some(in_clear(
        format!("callcenter[{index}].address"),
        What::Several(
            "the event-socket password and FreeSWITCH's events (callers' numbers, agents)",
        ),
        format!("tcp to {address}"),
        "mod_event_socket has no TLS: run teledge on the FreeSWITCH host (address = \
         \"127.0.0.1:8021\") or reach it through a tunnel (WireGuard, stunnel)",
    ))
}

/// `[status]` served on `listen` (the `[observe]` endpoint) without TLS; `whep`: live
/// listen is on too (its requests carry the token as well).
pub fn status_page(listen: SocketAddr, tls: bool, whep: bool) -> Option<ConfigProblem> {
    if tls || listen.ip().is_loopback() {
        return None;
    }
    let what = if whep {
        "supervisor tokens (login and live listen requests), session cookies and the page's calls"
    } else {
        "supervisor tokens (login), session cookies and the page's calls"
    };
    Some(in_clear(
        "status".into(),
        What::Several(what),
        format!("http on {listen}"),
        "set [status] tls_cert_file and tls_key_file (HTTPS for the whole endpoint)",
    ))
}

/// "a", "a and b", "a, b and c"; `None` for nothing.
fn join(parts: &[&str]) -> Option<String> {
    match parts {
        [] => None,
        [one] => Some((*one).to_owned()),
        [init @ .., last] => Some(format!("{} and {last}", init.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "homer",
            "[2001:db8::1]",
            "0.0.0.0",
            "localhost.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
        assert!(hep_out("[::1]:9060", "udp", true, true, true).is_none());
        assert!(hep_out("localhost:9060", "tcp", true, true, true).is_none());
        assert!(hep_out("homer:9060", "udp", true, true, true).is_some());
    }

    #[test]
    fn hep_out_in_clear_names_what_travels() {
        let w = hep_out("homer.example:9060", "udp", true, true, true).unwrap();
        assert_eq!(w.path, "hep_out");
        assert_eq!(
            w.message,
            "the SIP messages as captured (callers' and callees' numbers, display names and \
             addresses), quality reports (RTCP, stream reports) with their Call-IDs and the HEP \
             auth key \
             travel in clear (udp to homer.example:9060): anyone on the path can read them; use \
             transport = \"tls\" (with tls_ca_file) beyond a trusted network"
        );
        let w = hep_out("10.0.0.9:9061", "tcp", false, false, true).unwrap();
        assert!(
            w.message
                .starts_with("the HEP auth key travels in clear (tcp to 10.0.0.9:9061)"),
            "{w}"
        );
        let w = hep_out("10.0.0.9:9060", "udp", false, true, false).unwrap();
        assert!(w.message.starts_with("quality reports (RTCP"), "{w}");
        // TLS, loopback, nothing sent: nothing to say.
        assert!(hep_out("homer:9061", "tls", true, true, true).is_none());
        assert!(hep_out("127.0.0.1:9060", "udp", true, true, true).is_none());
        assert!(hep_out("[::1]:9060", "tcp", true, true, true).is_none());
        assert!(hep_out("localhost:9060", "udp", true, true, true).is_none());
        assert!(hep_out("homer:9060", "udp", false, false, false).is_none());
    }

    #[test]
    fn hep_in_with_a_key_on_a_plain_listener() {
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let w = hep_in(addr("192.0.2.1:9060"), addr("127.0.0.1:9061"), true);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].path, "hep.udp");
        assert!(
            w[0].message.starts_with(
                "the HEP auth key (in every frame: whoever reads one can inject calls) travels \
                 in clear (senders' udp to 192.0.2.1:9060)"
            ),
            "{}",
            w[0]
        );
        assert!(hep_in(addr("192.0.2.1:9060"), None, false).is_empty());
        assert_eq!(
            hep_in(addr("0.0.0.0:9060"), addr("[::]:9061"), true).len(),
            2
        );
    }

    #[test]
    fn callcenter_and_status_page() {
        let w = callcenter(1, "192.0.2.5:8021".parse().unwrap()).unwrap();
        assert_eq!(w.path, "callcenter[1].address");
        assert!(
            w.message
                .contains("travel in clear (tcp to 192.0.2.5:8021)"),
            "{w}"
        );
        assert!(callcenter(0, "127.0.0.1:8021".parse().unwrap()).is_none());

        let remote: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        let w = status_page(remote, false, true).unwrap();
        assert_eq!(w.path, "status");
        assert!(w.message.contains("live listen requests"), "{w}");
        assert!(
            w.message.contains("travel in clear (http on 0.0.0.0:9464)"),
            "{w}"
        );
        assert!(!status_page(remote, false, false)
            .unwrap()
            .message
            .contains("listen"));
        assert!(status_page(remote, true, true).is_none());
        assert!(status_page("127.0.0.1:9464".parse().unwrap(), false, true).is_none());
    }

    #[test]
    fn every_finding_reads_alike() {
        let addr: SocketAddr = "192.0.2.1:9060".parse().unwrap();
        let all = [
            hep_out("homer:9060", "udp", true, false, false),
            hep_in(Some(addr), None, true).pop(),
            callcenter(0, addr),
            status_page(addr, false, false),
        ];
        for w in all {
            let w = w.unwrap();
            assert!(
                w.message.contains(" in clear (")
                    && w.message.contains("): anyone on the path can read "),
                "{w}"
            );
        }
    }
}
