//! Sealing records at rest: XChaCha20-Poly1305 with the record id and key id bound as
//! associated data, under keys read from files or systemd credentials, rotated by key id.
//!
//! A sealed record is `version (1) | key id (4, BE) | nonce (24) | ciphertext+tag`. The nonce
//! is random (XChaCha's 192-bit nonce makes random nonces safe at any volume). Binding the
//! record id means a sealed value moved under another key cannot be opened: records cannot
//! be swapped or replayed inside the store without detection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// Why a key could not be loaded or a record not sealed/opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("key file {path}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: expected 32 bytes (raw) or 64 hex characters, found {len} bytes")]
    KeyLength { path: PathBuf, len: usize },
    #[error(
        "credential {0:?} requested but $CREDENTIALS_DIRECTORY is not set (systemd sets it for \
         the service from the unit's LoadCredential=; by hand, give the file: \
         teledge check-config --credential {0}=FILE)"
    )]
    NoCredentialsDirectory(String),
    #[error("sealed record too short or of unknown version")]
    Malformed,
    #[error("record sealed with key id {0}, which is not in the keyring")]
    UnknownKey(u32),
    #[error("record failed authentication (wrong key, wrong id, or tampered)")]
    Authentication,
    #[error("system random number generator failed")]
    Random,
}

/// Where a key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding 32 raw bytes or 64 hex characters.
    File(PathBuf),
    /// A systemd credential (`LoadCredential=`/`LoadCredentialEncrypted=`), by name.
    Credential(String),
}

impl KeySource {
    fn path(&self) -> Result<PathBuf, SealError> {
        match self {
            KeySource::File(p) => Ok(p.clone()),
            KeySource::Credential(name) => std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|dir| Path::new(&dir).join(name))
                .ok_or_else(|| SealError::NoCredentialsDirectory(name.clone())),
        }
    }
}

/// Reads a 32-byte key from a source.
pub fn load_key(source: &KeySource) -> Result<[u8; 32], SealError> {
    let path = source.path()?;
    // A key is 32 bytes or 64 hex digits: a longer file (or `/dev/urandom`) is refused,
    // not read for ever.
    let bytes =
        crate::config_problem::read_small(&path, 4096).map_err(|source| SealError::KeyFile {
            path: path.clone(),
            source,
        })?;
    let trimmed = bytes.trim_ascii();
    let key = if trimmed.len() == 64 && trimmed.iter().all(u8::is_ascii_hexdigit) {
        let mut key = [0u8; 32];
        for (i, pair) in trimmed.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| SealError::Malformed)?;
            key[i] = u8::from_str_radix(text, 16).map_err(|_| SealError::Malformed)?;
        }
        key
    } else if bytes.len() == 32 {
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        key
    } else {
        return Err(SealError::KeyLength {
            path,
            len: bytes.len(),
        });
    };
    Ok(key)
}

/// Keys by id: one current key seals, every key opens.
#[derive(Clone)]
pub struct Keyring {
    current: u32,
    keys: BTreeMap<u32, XChaCha20Poly1305>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A keyring sealing with `current` (id, key); `older` keys still open old records.
    pub fn new(current: (u32, [u8; 32]), older: &[(u32, [u8; 32])]) -> Keyring {
        let mut keys = BTreeMap::new();
        for (id, key) in older.iter().chain(std::iter::once(&current)) {
            keys.insert(*id, XChaCha20Poly1305::new(key.into()));
        }
        Keyring {
            current: current.0,
            keys,
        }
    }

    pub fn current_key_id(&self) -> u32 {
        self.current
    }

    /// Every key id this keyring can open.
    pub fn key_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// The key id a sealed record names in its header, if it has one.
    pub fn key_id_of(sealed: &[u8]) -> Option<u32> {
        if sealed.len() < HEADER_LEN || sealed[0] != VERSION {
            return None;
        }
        Some(u32::from_be_bytes([
            sealed[1], sealed[2], sealed[3], sealed[4],
        ]))
    }

    /// Seals `plaintext` bound to `record_id`.
    pub fn seal(&self, record_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let cipher = self
            .keys
            .get(&self.current)
            .ok_or(SealError::UnknownKey(self.current))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|_| SealError::Random)?;
        let aad = associated_data(self.current, record_id);
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Authentication)?;
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Opens a sealed record, checking it belongs to `record_id`.
    pub fn open(&self, record_id: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < HEADER_LEN || sealed[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let key_id = u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
        let cipher = self
            .keys
            .get(&key_id)
            .ok_or(SealError::UnknownKey(key_id))?;
        let aad = associated_data(key_id, record_id);
        cipher
            .decrypt(
                XNonce::from_slice(&sealed[5..HEADER_LEN]),
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Authentication)
    }
}

fn associated_data(key_id: u32, record_id: &[u8]) -> Vec<u8> {
    let mut aad = b"teledge-spool-v1".to_vec();
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad.extend_from_slice(record_id);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_bindings() {
        let ring = Keyring::new((2, [7; 32]), &[(1, [9; 32])]);
        let sealed = ring.seal(b"id-1", b"+4930123456").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"+4930123456"));
        assert_eq!(ring.open(b"id-1", &sealed).unwrap(), b"+4930123456");
        // Bound to its id.
        assert!(matches!(
            ring.open(b"id-2", &sealed),
            Err(SealError::Authentication)
        ));
        // Tampering is detected.
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            ring.open(b"id-1", &bad),
            Err(SealError::Authentication)
        ));
        // Rotation: a record sealed under the old key opens with a ring that has it.
        let old = Keyring::new((1, [9; 32]), &[]);
        let old_sealed = old.seal(b"id-3", b"x").unwrap();
        assert_eq!(ring.open(b"id-3", &old_sealed).unwrap(), b"x");
        let new_only = Keyring::new((2, [7; 32]), &[]);
        assert!(matches!(
            new_only.open(b"id-3", &old_sealed),
            Err(SealError::UnknownKey(1))
        ));
    }

    #[test]
    fn loads_a_systemd_credential() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spool-key"), [6u8; 32]).unwrap();
        // The only test that touches this variable.
        std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
        let key = load_key(&KeySource::Credential("spool-key".into())).unwrap();
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        assert_eq!(key, [6; 32]);
        assert!(matches!(
            load_key(&KeySource::Credential("spool-key".into())),
            Err(SealError::NoCredentialsDirectory(_))
        ));
    }

    #[test]
    fn loads_hex_and_raw_keys() {
        let dir = tempfile::tempdir().unwrap();
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(load_key(&KeySource::File(hex)).unwrap(), [0xab; 32]);
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [5u8; 32]).unwrap();
        assert_eq!(load_key(&KeySource::File(raw)).unwrap(), [5; 32]);
        let short = dir.path().join("short");
        std::fs::write(&short, [5u8; 10]).unwrap();
        assert!(matches!(
            load_key(&KeySource::File(short)),
            Err(SealError::KeyLength { .. })
        ));
    }
}
