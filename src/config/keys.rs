//! The one step that reads key material, after the file is validated: the spool's sealing
//! keys (current and older) and the site key for pseudonyms, turned into the [`Keyring`] and
//! the [`Privacy`] settings the spool and the pseudonymiser take. Validation before it only
//! checks where the keys are named; nothing else of the configuration reads a key, so the
//! layers below (spool, seal, privacy) are used here and nowhere else in it.
//!
//! Its findings are configuration problems like any other, with the TOML path of the key.
//! The HEP listener's auth key file is read here too ([`read_secret`]).

//!
//! A leaf of the configuration: validation ([`super::forward`]) describes the keys in a
//! [`KeyPlan`] and this module reads them; it knows nothing of the file's other sections.

use std::path::{Path, PathBuf};

use crate::config_problem::ConfigProblem;
use crate::privacy::{identifier_key_from_spool_key, AddressMode, Privacy, PrivacyMode};
use crate::seal::{load_key, KeySource, Keyring};

/// What validation found about the key material, before any key is read.
#[derive(Debug)]
pub(super) struct KeyPlan {
    pub(super) paths: KeyPaths,
    pub(super) sources: KeySources,
    pub(super) mode: ModeChoice,
    pub(super) addresses: AddressMode,
}

/// Where each key is named in the file, for the loader's problems.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyPaths {
    pub(super) spool: &'static str,
    pub(super) site: &'static str,
}

/// Where the key material is: the spool's sealing key (id and source), older sealing keys
/// by id, the site key for pseudonyms.
#[derive(Debug)]
pub(super) struct KeySources {
    pub(super) spool: (u32, KeySource),
    pub(super) old: Vec<(u32, PathBuf)>,
    pub(super) site: Option<KeySource>,
}

/// The pseudonymisation mode chosen, before its key is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ModeChoice {
    KeyedHash,
    KeepLastDigits(u8),
    Clear,
}

/// Reads every key `plan` names: the keyring and the pseudonymisation settings. Problems
/// are pushed, `None` when a key could not be read.
pub(super) fn load(
    plan: &KeyPlan,
    problems: &mut Vec<ConfigProblem>,
) -> Option<(Keyring, Privacy)> {
    let paths = plan.paths;
    let valid = &plan.sources;
    let mut problem = |path: &str, message: String| {
        problems.push(ConfigProblem {
            path: path.to_owned(),
            message,
        })
    };
    let (spool_key_id, spool_source) = &valid.spool;
    let spool_key = load_key(spool_source)
        .map_err(|e| problem(paths.spool, crate::report::chain(&e)))
        .ok();
    let mut old_keys = Vec::new();
    for (i, (id, file)) in valid.old.iter().enumerate() {
        match load_key(&KeySource::File(file.clone())) {
            Ok(key) => old_keys.push((*id, key)),
            Err(e) => problem(
                &format!("spool.old_keys[{i}].file"),
                crate::report::chain(&e),
            ),
        }
    }
    let site_key = match &valid.site {
        Some(source) => match load_key(source) {
            Ok(key) => Some(key),
            Err(e) => {
                problem(paths.site, crate::report::chain(&e));
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
    if old_keys.len() != valid.old.len() {
        return None;
    }
    let mode = match plan.mode {
        // Validation made sure keyed_hash names a site key.
        ModeChoice::KeyedHash => PrivacyMode::KeyedHash {
            site_key: site_key?,
        },
        ModeChoice::KeepLastDigits(n) => PrivacyMode::KeepLastDigits(n),
        ModeChoice::Clear => PrivacyMode::Clear,
    };
    let identifier_key = site_key.unwrap_or_else(|| identifier_key_from_spool_key(&spool_key));
    Some((
        Keyring::new((*spool_key_id, spool_key), &old_keys),
        Privacy::new(mode, plan.addresses, identifier_key),
    ))
}

/// The largest secret file read (a key is tens of bytes).
const MAX_SECRET_BYTES: u64 = 64 << 10;

/// A secret kept in a text file (the HEP auth key), trimmed; empty is refused.
pub(super) fn read_secret(file: &Path) -> Result<String, String> {
    let bytes = crate::config_problem::read_small(file, MAX_SECRET_BYTES)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", file.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{}: is empty", file.display()));
    }
    Ok(secret.to_owned())
}
