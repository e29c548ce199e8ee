//! The supervisor view's sections: `[status]` (the status page on the `[observe]` listener)
//! and `[[supervisor]]` (who may see it and listen to which service's calls), validated into
//! a [`StatusConfig`] holding [`AccessSettings`] with every problem listed by its TOML path.
//!
//! ```toml
//! [status]
//! enabled = true              # serve the status page at / (default false)
//! session_ttl_s = 43200       # a login lasts this long (60..=604800, default 12 h)
//!
//! [[supervisor]]
//! id = "alice"                # 1..=64 of [A-Za-z0-9._@-], unique; audit records name it
//! token_sha256 = "3b1f…"      # from `teledge supervisor-token alice`; the token itself is never stored
//! cert_cn = "alice"           # and/or: the CN of her client certificate from the site CA
//! view = ["*"]                # services whose calls she sees ("*": all, and unclassified calls)
//! listen = ["sales"]          # services she may listen to (only monitorable ones; implies view)
//! ```
//!
//! The page is off by default; enabled, it requires at least one supervisor (there is no
//! anonymous view, on loopback either), and each supervisor needs a token hash or a
//! certificate CN. A service named in `view` or `listen` must be a `[[service]]`; naming one
//! in `listen` that is not `monitorable = true` is a problem (the permission could never be
//! used, and the file would mislead its reader).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigProblem;
use crate::access::{parse_sha256_hex, AccessSettings, ServiceSet, Supervisor};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStatus {
    #[serde(default)]
    enabled: bool,
    session_ttl_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSupervisor {
    id: String,
    token_sha256: Option<String>,
    cert_cn: Option<String>,
    #[serde(default)]
    view: Vec<String>,
    #[serde(default)]
    listen: Vec<String>,
}

/// `[status]` and `[[supervisor]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusConfig {
    /// Serve the status page (and its API) on the `[observe]` listener.
    pub enabled: bool,
    pub access: AccessSettings,
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// Validates the sections, pushing every problem. `services` are the `[[service]]`s with
/// whether each is monitorable.
pub(super) fn validate_status(
    status: &RawStatus,
    supervisors: &[RawSupervisor],
    services: &[(&str, bool)],
    problems: &mut Vec<ConfigProblem>,
) -> StatusConfig {
    let mut push = |path: String, message: String| problems.push(ConfigProblem { path, message });
    let session_ttl = match status.session_ttl_s {
        None => crate::access::DEFAULT_SESSION_TTL,
        Some(s) if (60..=604_800).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            push(
                "status.session_ttl_s".into(),
                format!("{s}: must be between 60 and 604800 seconds"),
            );
            crate::access::DEFAULT_SESSION_TTL
        }
    };
    if status.enabled && supervisors.is_empty() {
        push(
            "status.enabled".into(),
            "the status page needs at least one [[supervisor]] (it serves nobody anonymously); \
             make a token with `teledge supervisor-token <id>`"
                .into(),
        );
    }
    let known: BTreeSet<&str> = services.iter().map(|(n, _)| *n).collect();
    let monitorable: BTreeSet<String> = services
        .iter()
        .filter(|(_, m)| *m)
        .map(|(n, _)| (*n).to_owned())
        .collect();
    let mut ids = BTreeSet::new();
    let mut cns = BTreeSet::new();
    let mut valid = Vec::new();
    for (i, s) in supervisors.iter().enumerate() {
        let at = |field: &str| format!("supervisor[{i}].{field}");
        if !valid_id(&s.id) {
            push(
                at("id"),
                format!("{:?}: 1 to 64 of A-Z a-z 0-9 . _ @ -", s.id),
            );
        } else if !ids.insert(s.id.as_str()) {
            push(at("id"), format!("{:?} is already a supervisor", s.id));
        }
        let token_sha256 = match &s.token_sha256 {
            None => None,
            Some(text) => {
                let parsed = parse_sha256_hex(text);
                if parsed.is_none() {
                    push(
                        at("token_sha256"),
                        "expected 64 hex digits, the SHA-256 `teledge supervisor-token` prints \
                         (never the token itself)"
                            .into(),
                    );
                }
                parsed
            }
        };
        if let Some(cn) = &s.cert_cn {
            if cn.is_empty() {
                push(at("cert_cn"), "must not be empty".into());
            } else if !cns.insert(cn.as_str()) {
                push(
                    at("cert_cn"),
                    format!("{cn:?} is another supervisor's already"),
                );
            }
        }
        if s.token_sha256.is_none() && s.cert_cn.is_none() {
            push(
                at("id"),
                "needs token_sha256 or cert_cn (or both): otherwise nobody can be this supervisor"
                    .into(),
            );
        }
        let mut set = |field: &str, names: &[String], listen: bool| -> ServiceSet {
            if names.iter().any(|n| n == "*") {
                if names.len() > 1 {
                    push(at(field), "\"*\" already names every service".into());
                }
                return ServiceSet::All;
            }
            for n in names {
                if !known.contains(n.as_str()) {
                    push(at(field), format!("{n:?} is not a [[service]]"));
                } else if listen && !monitorable.contains(n) {
                    push(
                        at(field),
                        format!(
                            "service {n:?} is not monitorable: set monitorable = true in its \
                             [[service]] to allow listening"
                        ),
                    );
                }
            }
            ServiceSet::only(names.iter().cloned())
        };
        let view = set("view", &s.view, false);
        let listen = set("listen", &s.listen, true);
        valid.push(Supervisor {
            id: s.id.clone(),
            token_sha256,
            cert_cn: s.cert_cn.clone(),
            view,
            listen,
        });
    }
    StatusConfig {
        enabled: status.enabled,
        access: AccessSettings {
            supervisors: valid,
            monitorable,
            session_ttl,
            secure_cookie: false,
        },
    }
}
