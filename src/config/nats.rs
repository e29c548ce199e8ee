//! `[uplink.nats]`: the JetStream sink's settings, used when the `[uplink]` url is
//! `nats://host:port` or `tls://host:port` (TLS is required either way; see
//! [`crate::uplink::nats`]). The uplink's `ca_file`, `cert_file`, `key_file`, `min_tls`,
//! `batch_records`, `batch_max_bytes`, `timeout_ms` (the PubAck timeout) and
//! `dead_letter_max_bytes` apply as for the HTTPS collector.
//!
//! ```toml
//! [uplink]
//! url = "tls://nats-1.example:4222"
//! ca_file = "/etc/teledge/ca.pem"
//! cert_file = "/etc/teledge/node.pem"
//! key_file = "/etc/teledge/node.key"
//!
//! [uplink.nats]
//! servers = ["tls://nats-2.example:4222", "tls://nats-3.example:4222"]  # more of the cluster
//! subject_prefix = "teledge"          # subjects <prefix>.<node>.<kind>
//! stream = "TELEDGE"                  # optional: refuse to land in any other stream
//! max_in_flight = 256                 # publishes awaiting their PubAck at once
//! # at most one of:
//! user = "edge-01"                    # with password_file
//! password_file = "/etc/teledge/nats.password"
//! # nkey_seed_file = "/etc/teledge/nats.nk"
//! # creds_file = "/etc/teledge/nats.creds"
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use super::{readable_file, ConfigProblem};
use crate::uplink::nats::valid_subject_prefix;
use crate::uplink::{NatsAuth, NatsSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNats {
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default = "default_prefix")]
    subject_prefix: String,
    stream: Option<String>,
    #[serde(default = "default_in_flight")]
    max_in_flight: usize,
    user: Option<String>,
    password_file: Option<PathBuf>,
    nkey_seed_file: Option<PathBuf>,
    creds_file: Option<PathBuf>,
}

/// No `[uplink.nats]` with a NATS url: every default.
impl Default for RawNats {
    fn default() -> Self {
        RawNats {
            servers: Vec::new(),
            subject_prefix: default_prefix(),
            stream: None,
            max_in_flight: default_in_flight(),
            user: None,
            password_file: None,
            nkey_seed_file: None,
            creds_file: None,
        }
    }
}

fn default_prefix() -> String {
    "teledge".into()
}
fn default_in_flight() -> usize {
    256
}

/// Whether `url` names a NATS server (the JetStream sink) rather than the HTTPS collector.
pub(super) fn is_nats_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("nats") || scheme.eq_ignore_ascii_case("tls")
    })
}

/// `nats://host[:port]` or `tls://host[:port]`, nothing else (no path, no credentials in the
/// url: they belong in files; [`crate::server_url`] says what else is refused).
fn check_server(url: &str) -> Result<(), String> {
    let parsed =
        crate::server_url::parse_url(url, &[("nats", 4222), ("tls", 4222)]).map_err(|e| {
            if e.contains("credentials") {
                format!(
                    "{:?}: no credentials in the url; use password_file, nkey_seed_file or \
                     creds_file",
                    crate::server_url::redacted(url)
                )
            } else {
                e
            }
        })?;
    if parsed.path_and_query.is_some() {
        return Err(format!("{url:?}: expected scheme://host[:port]"));
    }
    Ok(())
}

fn push(problems: &mut Vec<ConfigProblem>, path: &str, message: String) {
    problems.push(ConfigProblem {
        path: path.to_owned(),
        message,
    });
}

/// Validates `[uplink.nats]` for the uplink `url` (a NATS url) and node `node_id`; every
/// problem pushed.
pub(super) fn validate(
    url: &str,
    raw: RawNats,
    node_id: &str,
    problems: &mut Vec<ConfigProblem>,
) -> NatsSettings {
    let mut problem = |path: &str, message: String| push(problems, path, message);
    if let Err(message) = check_server(url) {
        problem("uplink.url", message);
    }
    for (i, server) in raw.servers.iter().enumerate() {
        if let Err(message) = check_server(server) {
            problem(&format!("uplink.nats.servers[{i}]"), message);
        }
    }
    // A subject token cannot hold a dot: `a.b` would publish as node `a`, kind `b`.
    if node_id.contains('.') {
        problem(
            "node.id",
            format!(
                "{node_id:?}: a node id published to NATS cannot contain \".\" (it separates \
                 subject tokens)"
            ),
        );
    }
    if !valid_subject_prefix(&raw.subject_prefix) {
        problem(
            "uplink.nats.subject_prefix",
            format!(
                "{:?}: expected dot-separated tokens of [A-Za-z0-9_-] (no wildcards)",
                raw.subject_prefix
            ),
        );
    }
    if let Some(stream) = &raw.stream {
        let ok = !stream.is_empty()
            && stream.len() <= 64
            && stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            problem(
                "uplink.nats.stream",
                format!("{stream:?}: expected 1 to 64 of [A-Za-z0-9_-]"),
            );
        }
    }
    if !(1..=4096).contains(&raw.max_in_flight) {
        problem(
            "uplink.nats.max_in_flight",
            format!("{}: must be between 1 and 4096", raw.max_in_flight),
        );
    }
    let given = [
        raw.user.is_some() || raw.password_file.is_some(),
        raw.nkey_seed_file.is_some(),
        raw.creds_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        problem(
            "uplink.nats.user",
            "give at most one of user/password_file, nkey_seed_file and creds_file".into(),
        );
    }
    let mut file = |path: &str, file: &PathBuf| {
        if let Err(message) = readable_file(file) {
            problem(path, message);
        }
    };
    let mut incomplete = false;
    let auth = match (
        raw.user,
        raw.password_file,
        raw.nkey_seed_file,
        raw.creds_file,
    ) {
        (Some(user), Some(password_file), None, None) => {
            file("uplink.nats.password_file", &password_file);
            NatsAuth::UserPassword {
                user,
                password_file,
            }
        }
        (None, None, Some(seed_file), None) => {
            file("uplink.nats.nkey_seed_file", &seed_file);
            NatsAuth::Nkey { seed_file }
        }
        (None, None, None, Some(creds)) => {
            file("uplink.nats.creds_file", &creds);
            NatsAuth::Credentials { file: creds }
        }
        (Some(_), None, None, None) | (None, Some(_), None, None) => {
            incomplete = true;
            NatsAuth::Certificate
        }
        _ => NatsAuth::Certificate,
    };
    if incomplete {
        push(
            problems,
            "uplink.nats.password_file",
            "user and password_file go together".into(),
        );
    }
    let mut servers = vec![url.to_owned()];
    servers.extend(raw.servers);
    NatsSettings {
        servers,
        subject_prefix: raw.subject_prefix,
        stream: raw.stream,
        max_in_flight: raw.max_in_flight,
        auth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawNats {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_non_ascii_host_is_refused_with_its_ascii_form_named() {
        let message = check_server("nats://bücher.example:4222").unwrap_err();
        assert!(message.contains("xn--"), "{message}");
        assert_eq!(check_server("tls://xn--bcher-kva.example:4222"), Ok(()));
    }

    #[test]
    fn every_problem_of_the_section_is_listed() {
        let mut problems = Vec::new();
        validate(
            "nats://u:p@host:4222",
            raw(r#"
servers = ["https://x", "tls://ok:4222"]
subject_prefix = "a.*"
stream = "has space"
max_in_flight = 0
user = "u"
nkey_seed_file = "/nonexistent/seed"
"#),
            "edge.01",
            &mut problems,
        );
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "uplink.url",
            "uplink.nats.servers[0]",
            "node.id",
            "uplink.nats.subject_prefix",
            "uplink.nats.stream",
            "uplink.nats.max_in_flight",
            "uplink.nats.user",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        assert!(!paths.contains(&"uplink.nats.servers[1]"), "{paths:?}");
    }

    #[test]
    fn defaults_and_credentials_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("pw");
        std::fs::write(&password, "s3cret\n").unwrap();
        let mut problems = Vec::new();
        let settings = validate(
            "tls://127.0.0.1:4222",
            raw(&format!(
                "user = \"edge-01\"\npassword_file = \"{}\"\n",
                password.display()
            )),
            "edge-01",
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.servers, ["tls://127.0.0.1:4222"]);
        assert_eq!(settings.subject_prefix, "teledge");
        assert_eq!(settings.max_in_flight, 256);
        assert!(matches!(settings.auth, NatsAuth::UserPassword { .. }));
        // Only the file's path is held: Debug cannot show the password.
        assert!(!format!("{settings:?}").contains("s3cret"));
    }
}
