//! # kluis-keyring
//!
//! The local keyring file: root key versions sealed under a key derived with Argon2id from a
//! passphrase, or under a raw 256-bit key file (format: `kluis_core::keyring`, docs/FORMAT.md).
//!
//! Writes are atomic: the new file is written to a temporary file in the same directory, flushed
//! with `fsync`, renamed over the old one, and the directory is synced (best effort: some file
//! systems refuse `fsync` on a directory). A failed or interrupted write leaves the old file as it
//! was. Writers hold an exclusive lock on a `.NAME.lock` file beside the keyring, apply every
//! change to a freshly read copy, and refuse to write if the file changed since it was opened
//! (another process rotated it), so no root key version is ever lost to a race. Every write
//! increases the keyring's generation, which the store compares with the generation it last
//! recorded to detect a restored older keyring.

#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use kluis_core::keyring::{KdfParams, KeyringFileInfo};
use kluis_core::{KeyVersion, KeyringSecret, LocalKeyring, Suite};

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
    /// The file changed on disk since it was opened (another process wrote it). Reopen it.
    #[error(
        "keyring file {path} changed since it was opened (generation {on_disk}, expected {in_memory}); reopen it"
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// Generation found on disk.
        on_disk: u64,
        /// Generation this handle holds.
        in_memory: u64,
    },
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
        let _lock = lock(&path)?;
        if path.exists() {
            return Err(KeyringError::AlreadyExists(path));
        }
        let mut keyring = LocalKeyring::generate(unix_now())?;
        let (bytes, generation) = keyring.to_file_bytes(&secret, Suite::default())?;
        write_atomic(&path, &bytes, &mut |_| Ok(()))?;
        keyring.set_generation(generation);
        Ok(Self { path, keyring, secret })
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

    /// Adds a root key version, makes it primary and writes the file. Returns the new version.
    pub fn rotate(&mut self) -> Result<KeyVersion> {
        self.update(&mut |_| Ok(()), &mut |k| Ok(k.rotate(unix_now())?))
    }

    /// Removes a non-primary root key version (after every domain key was rewrapped) and writes.
    pub fn remove_version(&mut self, version: KeyVersion) -> Result<()> {
        self.update(&mut |_| Ok(()), &mut |k| Ok(k.remove_version(version)?))
    }

    /// Re-seals the file under a new passphrase or key file.
    pub fn change_secret(&mut self, secret: KeyringSecret) -> Result<()> {
        let _lock = lock(&self.path)?;
        let fresh = self.read_fresh()?;
        let (bytes, generation) = fresh.to_file_bytes(&secret, Suite::default())?;
        write_atomic(&self.path, &bytes, &mut |_| Ok(()))?;
        self.keyring = fresh;
        self.keyring.set_generation(generation);
        self.secret = secret;
        Ok(())
    }

    /// Reads the file again and checks that nobody else wrote it since this handle last did.
    fn read_fresh(&self) -> Result<LocalKeyring> {
        let fresh = LocalKeyring::from_file_bytes(&read(&self.path)?, &self.secret)?;
        if fresh.generation() != self.keyring.generation() {
            return Err(KeyringError::Changed {
                path: self.path.clone(),
                on_disk: fresh.generation(),
                in_memory: self.keyring.generation(),
            });
        }
        Ok(fresh)
    }

    /// Under the lock: read a fresh copy, apply `change`, write it atomically, and only then
    /// replace the in-memory keyring. A failure anywhere leaves file and handle as they were.
    fn update<T>(
        &mut self,
        fault: &mut dyn FnMut(Stage) -> io::Result<()>,
        change: &mut dyn FnMut(&mut LocalKeyring) -> Result<T>,
    ) -> Result<T> {
        let _lock = lock(&self.path)?;
        let mut fresh = self.read_fresh()?;
        let out = change(&mut fresh)?;
        let (bytes, generation) = fresh.to_file_bytes(&self.secret, Suite::default())?;
        write_atomic(&self.path, &bytes, fault)?;
        fresh.set_generation(generation);
        self.keyring = fresh;
        Ok(out)
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// An exclusive advisory lock on `.NAME.lock` beside the keyring, held until dropped.
fn lock(path: &Path) -> Result<File> {
    let dir = parent_dir(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lock_path = dir.join(format!(".{name}.lock"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| KeyringError::io("create lock file", &lock_path, e))?;
    f.lock().map_err(|e| KeyringError::io("lock", &lock_path, e))?;
    Ok(f)
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
    let dir = parent_dir(path);
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
        // Make the rename durable (best effort: not every file system syncs directories).
        if let Ok(d) = File::open(&dir)
            && let Err(e) = d.sync_all()
        {
            tracing::warn!(target: "kluis::keyring", error = %e, "could not fsync the keyring directory");
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
            let err = kf
                .update(
                    &mut |s| if s == stage { Err(io::Error::other("injected")) } else { Ok(()) },
                    &mut |k| Ok(k.rotate(unix_now())?),
                )
                .unwrap_err();
            assert!(matches!(err, KeyringError::Io { .. }), "{err}");
            assert_eq!(fs::read(&path).unwrap(), before, "old file changed after failure at {stage:?}");
            assert_eq!(kf.keyring().generation(), gen_before);
            assert_eq!(kf.keyring().versions().len(), 1, "in-memory keyring changed after a failed write");
            // No temp file left behind (only the keyring and its lock file).
            let mut names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, [".keyring.kr.lock", "keyring.kr"], "{names:?}");
        }
        // The file still opens with the old contents, and the handle still works.
        let again = KeyringFile::open(&path, pass("correct horse battery staple")).unwrap();
        assert_eq!(again.keyring().versions().len(), 1);
        assert_eq!(kf.rotate().unwrap().get(), 2);
    }

    #[test]
    fn a_second_writer_cannot_lose_the_first_writers_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.kr");
        let secret = || KeyringSecret::RawKey(kluis_core::KeyMaterial::from_bytes([3; 32]));
        let mut a = KeyringFile::create(&path, secret()).unwrap();
        let mut b = KeyringFile::open(&path, secret()).unwrap();
        assert_eq!(a.rotate().unwrap().get(), 2);
        // b still holds generation 1: its write would drop root version 2.
        let err = b.rotate().unwrap_err();
        assert!(matches!(err, KeyringError::Changed { on_disk: 2, in_memory: 1, .. }), "{err}");
        let reopened = KeyringFile::open(&path, secret()).unwrap();
        assert_eq!(reopened.keyring().versions().len(), 2);
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
