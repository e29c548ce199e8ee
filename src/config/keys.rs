//! The one step that reads key material, after the file is validated: the spool's sealing
//! keys (current and older) and the site key for pseudonyms, turned into the [`Keyring`] and
//! the [`Privacy`] settings the spool and the pseudonymiser take. Validation before it only
//! checks where the keys are named; nothing else of the configuration reads a key, so the
//! layers below (spool, seal, privacy) are used here and nowhere else in it.
//!
//! Its findings are configuration problems like any other, with the TOML path of the key.
//! The HEP listener's auth key file is read here too ([`read_secret`]).

use std::path::Path;

use super::forward::{ForwardConfig, ModeChoice, ValidForward};
use super::ConfigProblem;
use crate::privacy::{identifier_key_from_spool_key, Privacy, PrivacyMode};
use crate::seal::{load_key, KeySource, Keyring};

/// Reads every key of `valid`; problems are pushed, `None` when a key could not be read.
pub(super) fn load(
    valid: ValidForward,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ForwardConfig> {
    let paths = valid.key_paths;
    let mut problem = |path: &str, message: String| {
        problems.push(ConfigProblem {
            path: path.to_owned(),
            message,
        })
    };
    let (spool_key_id, spool_source) = &valid.keys.spool;
    let spool_key = load_key(spool_source)
        .map_err(|e| problem(paths.spool, e.to_string()))
        .ok();
    let mut old_keys = Vec::new();
    for (i, (id, file)) in valid.keys.old.iter().enumerate() {
        match load_key(&KeySource::File(file.clone())) {
            Ok(key) => old_keys.push((*id, key)),
            Err(e) => problem(&format!("spool.old_keys[{i}].file"), e.to_string()),
        }
    }
    let site_key = match &valid.keys.site {
        Some(source) => match load_key(source) {
            Ok(key) => Some(key),
            Err(e) => {
                problem(paths.site, e.to_string());
                return None;
            }
        },
        None => None,
    };
    // One key, one purpose: whoever reads pseudonyms must not be able to open the spool,
    // and a spool key rotation must not change every pseudonym.
    if site_key.is_some() && site_key == spool_key {
        problem(
            paths.site,
            "is the spool sealing key: give the site key a file of its own".into(),
        );
        return None;
    }
    let spool_key = spool_key?;
    if old_keys.len() != valid.keys.old.len() {
        return None;
    }
    let mode = match valid.mode {
        // Validation made sure keyed_hash names a site key.
        ModeChoice::KeyedHash => PrivacyMode::KeyedHash {
            site_key: site_key?,
        },
        ModeChoice::KeepLastDigits(n) => PrivacyMode::KeepLastDigits(n),
        ModeChoice::Clear => PrivacyMode::Clear,
    };
    let identifier_key = site_key.unwrap_or_else(|| identifier_key_from_spool_key(&spool_key));
    Some(ForwardConfig {
        node_id: valid.node_id,
        spool: valid.spool,
        keyring: Keyring::new((*spool_key_id, spool_key), &old_keys),
        privacy: Privacy::new(mode, valid.addresses, identifier_key),
        uplink: valid.uplink,
        warnings: valid.warnings,
    })
}

/// A secret kept in a text file (the HEP auth key), trimmed; empty is refused.
pub(super) fn read_secret(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{}: is empty", file.display()));
    }
    Ok(secret.to_owned())
}
