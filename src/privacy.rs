//! Pseudonymisation of phone numbers and user names before records are stored or sent.
//!
//! Modes: a keyed hash (HMAC-SHA256 under a site key: stable per site, so a supervisor can
//! still count repeat callers, but not reversible without the key — a plain hash of an E.164
//! number could be brute-forced in minutes), keep the last N digits, or clear (only by
//! explicit configuration). Display names are treated like numbers: they are personal data.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::record::{CallRecord, Party, Record};

/// How numbers and names are written into records.
#[derive(Clone, PartialEq, Eq)]
pub enum PrivacyMode {
    /// `h:` and 16 hex characters of HMAC-SHA256(site key, value).
    KeyedHash { site_key: [u8; 32] },
    /// Every digit but the last N replaced by `*`; names hashed away as `(redacted)`.
    KeepLastDigits(u8),
    /// As captured.
    Clear,
}

impl std::fmt::Debug for PrivacyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrivacyMode::KeyedHash { .. } => f.write_str("KeyedHash"),
            PrivacyMode::KeepLastDigits(n) => write!(f, "KeepLastDigits({n})"),
            PrivacyMode::Clear => f.write_str("Clear"),
        }
    }
}

/// Applies a [`PrivacyMode`] to records.
#[derive(Debug, Clone)]
pub struct Pseudonymizer {
    mode: PrivacyMode,
}

impl Pseudonymizer {
    pub fn new(mode: PrivacyMode) -> Self {
        Pseudonymizer { mode }
    }

    /// Rewrites every number and name in a record.
    pub fn apply(&self, record: &mut Record) {
        if let Record::Call(call) = record {
            self.call(call);
        }
    }

    fn call(&self, call: &mut CallRecord) {
        for party in [&mut call.caller, &mut call.callee]
            .into_iter()
            .chain(call.asserted_identity.as_mut())
            .chain(call.diverted_from.as_mut())
        {
            self.party(party);
        }
    }

    fn party(&self, party: &mut Party) {
        if let Some(uri) = party.uri.as_mut() {
            *uri = self.uri(uri);
        }
        if let Some(user) = party.user.as_mut() {
            *user = self.number(user);
        }
        if let Some(name) = party.display_name.as_mut() {
            *name = self.name(name);
        }
    }

    /// A number or user part.
    pub fn number(&self, value: &str) -> String {
        match &self.mode {
            PrivacyMode::KeyedHash { site_key } => keyed_hash(site_key, &normalise(value)),
            PrivacyMode::KeepLastDigits(n) => {
                let digits = value.chars().filter(char::is_ascii_digit).count();
                let keep_from = digits.saturating_sub(usize::from(*n));
                let mut seen = 0;
                value
                    .chars()
                    .map(|c| {
                        if c.is_ascii_digit() {
                            seen += 1;
                            if seen <= keep_from {
                                return '*';
                            }
                        } else if c.is_alphabetic() {
                            return '*';
                        }
                        c
                    })
                    .collect()
            }
            PrivacyMode::Clear => value.to_owned(),
        }
    }

    fn name(&self, value: &str) -> String {
        match &self.mode {
            PrivacyMode::KeyedHash { site_key } => keyed_hash(site_key, value),
            PrivacyMode::KeepLastDigits(_) => "(redacted)".to_owned(),
            PrivacyMode::Clear => value.to_owned(),
        }
    }

    /// Replaces the user part of a `sip:`/`sips:` URI or the number of a `tel:` URI.
    fn uri(&self, uri: &str) -> String {
        if matches!(self.mode, PrivacyMode::Clear) {
            return uri.to_owned();
        }
        let Some((scheme, rest)) = uri.split_once(':') else {
            return self.number(uri);
        };
        if scheme.eq_ignore_ascii_case("tel") {
            let (number, params) = rest.split_at(rest.find(';').unwrap_or(rest.len()));
            return format!("{scheme}:{}{params}", self.number(number));
        }
        match rest.rfind('@') {
            Some(at) => {
                let user = &rest[..at];
                let (user, params) = user.split_at(user.find(';').unwrap_or(user.len()));
                format!("{scheme}:{}{params}{}", self.number(user), &rest[at..])
            }
            None => uri.to_owned(),
        }
    }
}

/// Removes visual separators so `+49 30 1234` and `+49-30-1234` hash alike.
fn normalise(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect()
}

fn keyed_hash(key: &[u8; 32], value: &str) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        // HMAC takes keys of any length; a 32-byte key cannot be refused.
        return "h:invalid-key".to_owned();
    };
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("h:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed() -> Pseudonymizer {
        Pseudonymizer::new(PrivacyMode::KeyedHash { site_key: [3; 32] })
    }

    #[test]
    fn keyed_hash_is_stable_and_hides_the_number() {
        let p = hashed();
        let a = p.number("+49 30 1234567");
        assert_eq!(a, p.number("+49-30-1234567"));
        assert!(a.starts_with("h:") && a.len() == 18);
        assert!(!a.contains("1234567"));
        let other = Pseudonymizer::new(PrivacyMode::KeyedHash { site_key: [4; 32] });
        assert_ne!(
            a,
            other.number("+49 30 1234567"),
            "another site, another pseudonym"
        );
        let uri = p.uri("sip:+49301234567;npdi@pbx.example:5060");
        assert!(
            uri.starts_with("sip:h:") && uri.ends_with(";npdi@pbx.example:5060"),
            "{uri}"
        );
        let tel = p.uri("tel:+49301234567;phone-context=x");
        assert!(
            !tel.contains("49301234567") && tel.ends_with(";phone-context=x"),
            "{tel}"
        );
    }

    #[test]
    fn last_digits_and_clear() {
        let p = Pseudonymizer::new(PrivacyMode::KeepLastDigits(3));
        assert_eq!(p.number("+49301234567"), "+********567");
        assert_eq!(p.name("Alice"), "(redacted)");
        let clear = Pseudonymizer::new(PrivacyMode::Clear);
        assert_eq!(clear.number("+49301234567"), "+49301234567");
    }
}
