//! # kluis-keyring
//!
//! The local keyring file: root key versions sealed under a key derived with Argon2id from a
//! passphrase, or under a raw 256-bit key file (format: `kluis_core::keyring`, docs/FORMAT.md).
//!
//! Writes are atomic: the new file is written to a temporary file in the same directory, flushed
//! with `fsync`, renamed over the old one, and the directory is synced. A failed or interrupted
//! write leaves the old file as it was. Every write increases the keyring's generation, which the
//! store compares with the generation it last recorded to detect a restored older keyring.

#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use kluis_core::keyring::{KdfParams, KeyringFileInfo};
use kluis_core::{KeyringSecret, LocalKeyring, Suite};

/// Errors of the keyring file layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// There is no keyring at the path.
    #[error("no keyring file at {0}")]
    NotFound(PathBuf),
    /// `create` found a file already there.
    #[error("a keyring file already exists at {0}")]
    AlreadyExists(PathBuf),
    /// A file system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The keyring could not be opened or sealed (wrong passphrase, corrupt, truncated, ...).
    #[error(transparent)]
    Key(#[from] kluis_core::Error),
}

impl KeyringError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io { op, path: path.to_owned(), source }
    }
}

/// Result with [`KeyringError`].
pub type Result<T, E = KeyringError> = std::result::Result<T, E>;

/// An opened keyring file.
#[derive(Debug)]
pub struct KeyringFile {
    path: PathBuf,
    keyring: LocalKeyring,
    secret: KeyringSecret,
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl KeyringFile {
    /// Creates a new keyring with one root key version at `path`. Refuses to overwrite.
    pub fn create(path: impl AsRef<Path>, secret: KeyringSecret) -> Result<Self> {
        let path = path.as_ref().to_owned();
        if path.exists() {
            return Err(KeyringError::AlreadyExists(path));
        }
        let keyring = LocalKeyring::generate(unix_now())?;
        let mut f = Self { path, keyring, secret };
        f.save()?;
        Ok(f)
    }

    /// Opens and decrypts the keyring at `path`.
    pub fn open(path: impl AsRef<Path>, secret: KeyringSecret) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let bytes = read(&path)?;
        let keyring = LocalKeyring::from_file_bytes(&bytes, &secret)?;
        Ok(Self { path, keyring, secret })
    }

    /// Reads the public header without the secret (generation, KDF parameters).
    pub fn inspect(path: impl AsRef<Path>) -> Result<KeyringFileInfo> {
        let path = path.as_ref();
        Ok(kluis_core::keyring::inspect(&read(path)?)?)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decrypted keyring; it is the [`kluis_core::RootKeyProvider`].
    pub fn keyring(&self) -> &LocalKeyring {
        &self.keyring
    }

    /// Gives up the file handle and returns the provider.
    pub fn into_keyring(self) -> LocalKeyring {
        self.keyring
    }

    /// Adds a root key version, makes it primary and writes the file. On a failed write the
    /// in-memory keyring is reloaded from the (unchanged) file.
    pub fn rotate(&mut self) -> Result<u32> {
        let v = self.keyring.rotate(unix_now())?;
        if let Err(e) = self.save() {
            self.reload()?;
            return Err(e);
        }
        Ok(v)
    }

    /// Removes a non-primary root key version (after every domain key was rewrapped) and writes.
    pub fn remove_version(&mut self, version: u32) -> Result<()> {
        self.keyring.remove_version(version)?;
        if let Err(e) = self.save() {
            self.reload()?;
            return Err(e);
        }
        Ok(())
    }

    /// Re-seals the file under a new passphrase or key file.
    pub fn change_secret(&mut self, secret: KeyringSecret) -> Result<()> {
        let old = std::mem::replace(&mut self.secret, secret);
        if let Err(e) = self.save() {
            self.secret = old;
            return Err(e);
        }
        Ok(())
    }

    fn reload(&mut self) -> Result<()> {
        let bytes = read(&self.path)?;
        self.keyring = LocalKeyring::from_file_bytes(&bytes, &self.secret)?;
        Ok(())
    }

    /// Writes the keyring atomically with the next generation.
    pub fn save(&mut self) -> Result<()> {
        self.save_with(&mut |_| Ok(()))
    }

    fn save_with(&mut self, fault: &mut dyn FnMut(Stage) -> io::Result<()>) -> Result<()> {
        let (bytes, generation) = self.keyring.to_file_bytes(&self.secret, Suite::default())?;
        write_atomic(&self.path, &bytes, fault)?;
        self.keyring.set_generation(generation);
        Ok(())
    }
}

/// Default Argon2id parameters for new keyrings.
pub fn default_kdf() -> KdfParams {
    KdfParams::DEFAULT
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            KeyringError::NotFound(path.to_owned())
        } else {
            KeyringError::io("read", path, e)
        }
    })
}

/// Points where a write can be interrupted (for fault-injection tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Created,
    Written,
    Synced,
}

/// Writes `bytes` to `path` atomically: temp file in the same directory (mode 0600), write, fsync,
/// rename, fsync the directory. Stale temp files of earlier interrupted writes are removed.
fn write_atomic(path: &Path, bytes: &[u8], fault: &mut dyn FnMut(Stage) -> io::Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| KeyringError::io("name", path, io::Error::other("path has no file name")))?
        .to_string_lossy()
        .into_owned();
    let prefix = format!(".{name}.tmp.");
    remove_stale_temps(&dir, &prefix);
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|_| kluis_core::Error::Rng)?;
    let tmp = dir.join(format!("{prefix}{}", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()));

    let result = (|| -> io::Result<()> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f: File = opts.open(&tmp)?;
        fault(Stage::Created)?;
        f.write_all(bytes)?;
        fault(Stage::Written)?;
        f.sync_all()?;
        fault(Stage::Synced)?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename durable.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(KeyringError::io("write", path, e));
    }
    Ok(())
}

fn remove_stale_temps(dir: &Path, prefix: &str) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kluis_core::{Error, Passphrase};

    fn pass(s: &str) -> KeyringSecret {
        KeyringSecret::Passphrase(Passphrase::new(s.to_owned()), KdfParams::MINIMUM)
    }

    #[test]
    fn failed_writes_leave_the_old_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.kr");
        let mut kf = KeyringFile::create(&path, pass("correct horse battery staple")).unwrap();
        let before = fs::read(&path).unwrap();
        let gen_before = kf.keyring().generation();
        for stage in [Stage::Created, Stage::Written, Stage::Synced] {
            kf.keyring.rotate(unix_now()).unwrap();
            let err = kf
                .save_with(&mut |s| if s == stage { Err(io::Error::other("injected")) } else { Ok(()) })
                .unwrap_err();
            assert!(matches!(err, KeyringError::Io { .. }), "{err}");
            kf.reload().unwrap();
            assert_eq!(fs::read(&path).unwrap(), before, "old file changed after failure at {stage:?}");
            assert_eq!(kf.keyring().generation(), gen_before);
            // No temp file left behind.
            let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names.len(), 1, "{names:?}");
        }
        // The file still opens with the old contents.
        let again = KeyringFile::open(&path, pass("correct horse battery staple")).unwrap();
        assert_eq!(again.keyring().versions().len(), 1);
    }

    #[test]
    fn a_stale_temp_file_from_a_crash_is_ignored_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.kr");
        let mut kf = KeyringFile::create(&path, pass("correct horse battery staple")).unwrap();
        // A crash mid-write leaves a partial temp file.
        let stale = dir.path().join(".keyring.kr.tmp.0011223344556677");
        fs::write(&stale, b"KLUISKR\x01partial").unwrap();
        KeyringFile::open(&path, pass("correct horse battery staple")).unwrap();
        kf.rotate().unwrap();
        assert!(!stale.exists());
        let again = KeyringFile::open(&path, pass("correct horse battery staple")).unwrap();
        assert_eq!(again.keyring().versions().len(), 2);
        assert_eq!(again.keyring().generation(), 2);
    }

    #[test]
    fn create_refuses_to_overwrite_and_open_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.kr");
        assert!(matches!(KeyringFile::open(&path, pass("x")), Err(KeyringError::NotFound(_))));
        KeyringFile::create(&path, pass("correct horse battery staple")).unwrap();
        assert!(matches!(
            KeyringFile::create(&path, pass("correct horse battery staple")),
            Err(KeyringError::AlreadyExists(_))
        ));
        assert!(matches!(
            KeyringFile::open(&path, pass("wrong")),
            Err(KeyringError::Key(Error::WrongPassphrase))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn keyring_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.kr");
        KeyringFile::create(&path, pass("correct horse battery staple")).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
