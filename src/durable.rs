//! Files replaced so that a crash or a power cut leaves the old content or the new, whole.
//!
//! The one place teledge replaces a file: the spool manifest, keys and certificates, queue_log
//! positions, TUF metadata and the fleet's own state, the configuration a fleet update
//! rewrites, dead letters. Each used to carry its own copy of "temporary file, sync, rename",
//! and three of them did not sync the directory, so a power cut right after could lose the
//! rename: the file came back old (or, for a new file, not at all).
//!
//! # Contract
//!
//! [`replace`] writes the bytes to a hidden temporary file beside the target
//! (`.NAME.tmp`, created new: a left-over one from a crash is removed first), fsyncs it,
//! renames it over the target and fsyncs the directory. When it returns `Ok` the new content
//! survives a power cut; when it fails the target is untouched (old content or absent) and
//! the temporary file is removed. It never follows a symbolic link at the temporary name.
//! Concurrent writers of the same path are the caller's to prevent.
//!
//! Pure std: this module imports nothing of teledge.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode and owner of a file written by [`replace`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// What `File::create` gives: 0o666 less the umask.
    #[default]
    Default,
    /// This mode (less the umask), e.g. 0o600 for a key.
    Exactly(u32),
    /// The mode and owner of the file it replaces (the default when there is none): a
    /// configuration file an administrator made keeps its permissions.
    KeepExisting,
}

/// Replaces `path` with `bytes` durably (see the module doc).
pub fn replace(path: &Path, bytes: &[u8], mode: Mode) -> io::Result<()> {
    let dir = parent_of(path);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let existing = match mode {
        Mode::KeepExisting => std::fs::metadata(path).ok(),
        _ => None,
    };
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW);
        if let Mode::Exactly(mode) = mode {
            options.mode(mode);
        }
        let mut file = options.open(&tmp)?;
        if let Some(meta) = &existing {
            file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            // Only root may give a file away; a daemon rewriting its own file keeps it.
            let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a directory, so that files created, renamed or removed in it stay so after a
/// power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The hidden temporary name [`replace`] uses for `path` (for tests that look for left-overs).
pub fn temporary_of(path: &Path) -> Option<PathBuf> {
    let mut tmp_name = OsString::from(".");
    tmp_name.push(path.file_name()?);
    tmp_name.push(".tmp");
    Some(parent_of(path).join(tmp_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one", Mode::Default).unwrap();
        replace(&path, b"two", Mode::Default).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_left_over_temporary_file_does_not_stop_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.json");
        let tmp = temporary_of(&path).unwrap();
        std::fs::write(&tmp, b"half").unwrap();
        replace(&path, b"whole", Mode::Default).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_symbolic_link_at_the_temporary_name_is_removed_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("a.toml");
        std::os::unix::fs::symlink(&victim, temporary_of(&path).unwrap()).unwrap();
        replace(&path, b"new", Mode::Default).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn modes_exact_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("node.key");
        replace(&key, b"k", Mode::Exactly(0o600)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&key), 0o600);
        let config = dir.path().join("teledge.toml");
        std::fs::write(&config, b"old").unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
        replace(&config, b"new", Mode::KeepExisting).unwrap();
        assert_eq!(mode(&config), 0o640);
        assert_eq!(std::fs::read(&config).unwrap(), b"new");
    }

    #[test]
    fn a_failed_write_leaves_the_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"old").unwrap();
        // The target is a directory now: the rename fails.
        let target = dir.path().join("sub");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("f"), b"").unwrap();
        assert!(replace(&target, b"new", Mode::Default).is_err());
        assert!(target.is_dir());
        assert!(!temporary_of(&target).unwrap().exists());
        assert!(replace(Path::new("/"), b"x", Mode::Default).is_err());
    }
}
