//! `[listen]`: live listen to calls in the browser (WHEP), validated into
//! [`ListenSettings`] with every problem listed by its TOML path.
//!
//! ```toml
//! [listen]
//! enabled = true                # serve WHEP at /whep/calls/{Call-ID} (default false)
//! media_address = "192.0.2.10"  # where the WebRTC media sockets bind (default: observe.listen's address)
//! max_listeners = 20            # sessions at once on this node (1..=200, default 20)
//! max_listeners_per_call = 4    # sessions at once per call (1..=max_listeners, default 4)
//! max_listeners_per_supervisor = 4  # sessions at once of one supervisor (1..=max_listeners, default 4)
//! ```
//!
//! Live listen needs the status page's access control (`[status] enabled = true` and a
//! `[[supervisor]]` with a `listen` permission) and the `[observe]` endpoint that serves it;
//! a binary built without the `listen` feature says so.

use std::net::IpAddr;

use serde::Deserialize;

use super::ConfigProblem;
use crate::listen::{ListenSettings, TapLimits};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    #[serde(default)]
    enabled: bool,
    media_address: Option<String>,
    max_listeners: Option<usize>,
    max_listeners_per_call: Option<usize>,
    max_listeners_per_supervisor: Option<usize>,
}

/// Most sessions a node may be configured for (each is a peer connection, a UDP socket and
/// a 20 ms timer).
pub const MAX_LISTENERS: usize = 200;

/// Validates `[listen]`; `status_enabled`, `observe_enabled`: whether access control and the
/// HTTP endpoint it needs are on.
pub(super) fn validate_listen(
    raw: &RawListen,
    status_enabled: bool,
    observe_enabled: bool,
    problems: &mut Vec<ConfigProblem>,
) -> ListenSettings {
    let mut push = |path: &str, message: String| {
        problems.push(ConfigProblem {
            path: path.into(),
            message,
        })
    };
    let defaults = TapLimits::default();
    let total = raw.max_listeners.unwrap_or(defaults.total);
    if !(1..=MAX_LISTENERS).contains(&total) {
        push(
            "listen.max_listeners",
            format!("must be between 1 and {MAX_LISTENERS}"),
        );
    }
    let per_call = raw
        .max_listeners_per_call
        .unwrap_or(defaults.per_call.min(total));
    if per_call == 0 || per_call > total.max(1) {
        push(
            "listen.max_listeners_per_call",
            "must be between 1 and max_listeners".into(),
        );
    }
    let per_supervisor = raw
        .max_listeners_per_supervisor
        .unwrap_or(defaults.per_supervisor.min(total.max(1)));
    if per_supervisor == 0 || per_supervisor > total.max(1) {
        push(
            "listen.max_listeners_per_supervisor",
            "must be between 1 and max_listeners".into(),
        );
    }
    let media_address = raw
        .media_address
        .as_deref()
        .and_then(|a| match a.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                push(
                    "listen.media_address",
                    format!("{a:?} is not an IP address"),
                );
                None
            }
        });
    if raw.enabled {
        if !crate::listen::BUILT_IN {
            push(
                "listen.enabled",
                "this teledge was built without live listen (cargo feature `listen`)".into(),
            );
        }
        if !status_enabled {
            push(
                "listen.enabled",
                "live listen is authorised by the status page's access control: it needs \
                 [status] enabled = true and a [[supervisor]] with a listen permission"
                    .into(),
            );
        }
        if !observe_enabled {
            push(
                "listen.enabled",
                "WHEP is served by the [observe] endpoint: it needs observe.enabled".into(),
            );
        }
    }
    ListenSettings {
        enabled: raw.enabled,
        media_address,
        limits: TapLimits {
            per_call,
            per_supervisor,
            total,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawListen {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn off_by_default_and_needs_access_control() {
        let mut problems = Vec::new();
        let s = validate_listen(&raw(""), false, true, &mut problems);
        assert!(!s.enabled && problems.is_empty());
        assert_eq!(s.limits, TapLimits::default());
        validate_listen(&raw("enabled = true"), false, false, &mut problems);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["listen.enabled", "listen.enabled"], "{problems:?}");
    }

    #[test]
    fn every_bad_value_is_listed() {
        let mut problems = Vec::new();
        validate_listen(
            &raw("max_listeners = 0\nmax_listeners_per_call = 5\n\
                  max_listeners_per_supervisor = 0\nmedia_address = \"lan\""),
            true,
            true,
            &mut problems,
        );
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listen.max_listeners",
                "listen.max_listeners_per_call",
                "listen.max_listeners_per_supervisor",
                "listen.media_address"
            ]
        );
        // Unset, the supervisor bound follows a smaller node bound.
        let mut problems = Vec::new();
        let s = validate_listen(&raw("max_listeners = 2"), true, true, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((s.limits.per_supervisor, s.limits.total), (2, 2));
    }
}
