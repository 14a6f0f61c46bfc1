//! The local directory backend (the embedded default), also for network shares mounted as a
//! directory (SMB / Azure Files, NFS).
//!
//! ```text
//! ROOT/objects/ab/ab12…ef         committed objects (fan-out by the first two name digits)
//! ROOT/tmp/ab12…ef.<random>.part  uploads in progress
//! ROOT/claims/ab/ab12…ef/         names claimed by `Publish::ClaimRename` uploads (empty directories)
//! ```
//!
//! An upload writes a temp file in `ROOT/tmp`, `fsync`s and closes it, then publishes it under its
//! final name in one of two ways, chosen once at [`LocalDir::open`] by probing the file system
//! (or set with [`LocalDir::open_with`]):
//!
//! - [`Publish::HardLink`] (local file systems, NFS): `link(2)` to the final name, which fails if
//!   the name exists, so nothing is ever replaced; then the temp name is removed.
//! - [`Publish::ClaimRename`] (SMB shares such as Azure Files, which have no hard links and no
//!   `RENAME_NOREPLACE`, and whose `rename` replaces a target non-atomically): the name is first
//!   claimed by creating the directory `ROOT/claims/ab/<name>` (`mkdir`, which the server
//!   decides: exactly one upload of a name gets it, the others fail with
//!   [`BlobError::AlreadyExists`]; an `O_CREAT|O_EXCL` file is not enough, as two SMB clients
//!   racing through smbnetfs both "create" it); the claim holder checks that no object has the
//!   name, then renames its closed, complete temp file onto the absent name. Only a claim holder
//!   ever renames onto a name, so that rename never replaces anything, and a rename onto an
//!   absent name is atomic on the server: the object appears whole.
//!
//! Either way a crash leaves no object or the whole object, plus at most a temp file and a claim
//! without an object, which [`BlobBackend::collect_garbage`] removes. Names are validated
//! [`ObjectName`]s (hex only), so no path can be smuggled in. Directories are created `0700` and
//! files `0600` on Unix where the file system keeps modes ([`LocalCapabilities::private_modes`];
//! SMB mounts do not). Transient errors of network shares (`EBUSY` on rename and delete right
//! after a file was closed, interrupted or zero-length writes) are retried a bounded number of
//! times; a share that went away gives [`BlobError::Unavailable`].

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::backend::{BlobBackend, GcReport, Upload};
use crate::error::{BlobError, Result};
use crate::name::ObjectName;
use crate::vault::WipeBufs;

const OBJECTS: &str = "objects";
const TMP: &str = "tmp";
const CLAIMS: &str = "claims";
const PART_SUFFIX: &str = ".part";
const PROBE_SUFFIX: &str = ".probe";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| BlobError::Task("local storage task panicked or was cancelled"))?
}

/// Attempts of an operation that fails with a transient error (`EBUSY`, `EINTR`, `EAGAIN`, a
/// write of zero bytes) before the error is returned; the pauses between them double from 1 ms
/// up to 200 ms, about 1 s in all.
pub const TRANSIENT_ATTEMPTS: u32 = 12;

fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ResourceBusy | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock)
}

/// True for errors that mean the storage itself is gone or failing (a network share that went
/// away, a lost connection, a stale handle, a device error), as opposed to a refused operation.
fn is_unavailable(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::NotConnected
            | K::ConnectionAborted
            | K::ConnectionReset
            | K::BrokenPipe
            | K::TimedOut
            | K::NetworkDown
            | K::NetworkUnreachable
            | K::HostUnreachable
            | K::StaleNetworkFileHandle
    ) {
        return true;
    }
    // EIO (5 on every Unix), and on Linux EHOSTDOWN (112) and ENODEV (19), which have no kind.
    #[cfg(unix)]
    if e.raw_os_error() == Some(5) {
        return true;
    }
    #[cfg(target_os = "linux")]
    if matches!(e.raw_os_error(), Some(112 | 19)) {
        return true;
    }
    false
}

/// The error for a failed file-system operation: [`BlobError::Unavailable`] if the storage went
/// away, [`BlobError::Io`] otherwise.
fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> BlobError {
    move |source| {
        if is_unavailable(&source) {
            BlobError::Unavailable { op, source }
        } else {
            BlobError::Io { op, source }
        }
    }
}

/// Runs `f` until it succeeds or fails with a non-transient error, at most
/// [`TRANSIENT_ATTEMPTS`] times.
fn retry_transient<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut pause = Duration::from_millis(1);
    for _ in 1..TRANSIENT_ATTEMPTS {
        match f() {
            Err(e) if is_transient(&e) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            r => return r,
        }
    }
    f()
}

/// `write_all` that also retries, a bounded number of times in a row, writes that fail with a
/// transient error or write nothing. Short writes continue where they stopped.
fn write_all_retrying(w: &mut impl Write, mut buf: &[u8]) -> io::Result<()> {
    let mut pause = Duration::from_millis(1);
    let mut failures = 0u32;
    while !buf.is_empty() {
        let err = match w.write(buf) {
            Ok(0) => io::Error::new(io::ErrorKind::WriteZero, "the file system accepted no bytes"),
            Ok(n) => {
                buf = buf.get(n..).unwrap_or_default();
                failures = 0;
                continue;
            }
            Err(e) if is_transient(&e) => e,
            Err(e) => return Err(e),
        };
        failures += 1;
        if failures >= TRANSIENT_ATTEMPTS {
            return Err(err);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    Ok(())
}

fn create_private_dir(p: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(p)
}

fn create_private_file(p: &Path) -> io::Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(p)
}

fn sync_dir(p: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        match fs::File::open(p)?.sync_all() {
            // Some network file systems do not sync directories at all.
            Err(e) if matches!(e.kind(), io::ErrorKind::Unsupported | io::ErrorKind::InvalidInput) => Ok(()),
            r => r,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        Ok(())
    }
}

/// Default write buffer of an upload: 1 MiB.
pub const DEFAULT_WRITE_BUFFER: usize = 1 << 20;

/// How a finished upload is made visible under its final name (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Publish {
    /// `link(2)` from the temp file to the final name (fails if the name exists). Needs hard
    /// links: local file systems, NFS.
    HardLink,
    /// Claim the name with a directory in `ROOT/claims/` (`mkdir`), then rename the temp file
    /// onto the absent final name. Needs only `mkdir` and `rename`: SMB shares (Azure Files),
    /// and any file system.
    ClaimRename,
}

/// What [`LocalDir::open`] found out about the file system under the root, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalCapabilities {
    /// How uploads are published.
    pub publish: Publish,
    /// Whether the file system kept the private modes Kluis asked for (`0700` on a directory,
    /// `0600` on a file). False on SMB mounts (modes are fixed by the mount) and on non-Unix
    /// systems: access to the objects is then whatever the mount or share grants.
    pub private_modes: bool,
}

/// Documents in a local directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
    write_buffer: usize,
    caps: LocalCapabilities,
}

impl LocalDir {
    /// Opens (creating if needed) a store rooted at `root`, and probes the file system once:
    /// hard links ([`Publish::HardLink`] if they work, [`Publish::ClaimRename`] otherwise) and
    /// private modes ([`LocalDir::capabilities`]).
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_inner(root.into(), None).await
    }

    /// Opens a store with the publishing method set by configuration instead of detected.
    /// [`Publish::HardLink`] is refused ([`BlobError::Invalid`]) if the file system has no hard
    /// links; [`Publish::ClaimRename`] works everywhere. Every process writing one root must
    /// use the same method (detection gives the same answer on the same file system).
    pub async fn open_with(root: impl Into<PathBuf>, publish: Publish) -> Result<Self> {
        Self::open_inner(root.into(), Some(publish)).await
    }

    async fn open_inner(root: PathBuf, want: Option<Publish>) -> Result<Self> {
        let r = root.clone();
        let caps = blocking(move || {
            for d in [OBJECTS, TMP, CLAIMS] {
                create_private_dir(&r.join(d)).map_err(io_err("create directory"))?;
            }
            probe(&r, want)
        })
        .await?;
        if !caps.private_modes {
            tracing::info!(
                publish = ?caps.publish,
                "the file system under the document root does not keep private file modes; access is what the mount grants"
            );
        }
        Ok(Self { root, write_buffer: DEFAULT_WRITE_BUFFER, caps })
    }

    /// Sets how many bytes an upload buffers before writing them (at least 1; default 1 MiB).
    pub fn with_write_buffer(mut self, bytes: usize) -> Self {
        self.write_buffer = bytes.max(1);
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the file system offers, as probed at open.
    pub fn capabilities(&self) -> LocalCapabilities {
        self.caps
    }

    fn object_path(&self, name: &ObjectName) -> PathBuf {
        self.root.join(OBJECTS).join(name.fan_out()).join(name.as_str())
    }

    fn claim_path(&self, name: &ObjectName) -> PathBuf {
        self.root.join(CLAIMS).join(name.fan_out()).join(name.as_str())
    }
}

/// Probes `root/tmp` with a fresh file: are modes kept, do hard links work?
fn probe(root: &Path, want: Option<Publish>) -> Result<LocalCapabilities> {
    let base = root.join(TMP).join(format!("{}{PROBE_SUFFIX}", ObjectName::random()?.as_str()));
    let link = base.with_extension("probe-link");
    let file = create_private_file(&base).map_err(io_err("create probe file"))?;
    drop(file);
    let result = (|| {
        #[cfg(unix)]
        let private_modes = {
            use std::os::unix::fs::PermissionsExt;
            let f = fs::metadata(&base).map_err(io_err("stat probe file"))?.permissions().mode();
            let d = fs::metadata(root.join(TMP)).map_err(io_err("stat directory"))?.permissions().mode();
            f & 0o077 == 0 && d & 0o077 == 0
        };
        #[cfg(not(unix))]
        let private_modes = false;
        let publish = match want {
            Some(Publish::ClaimRename) => Publish::ClaimRename,
            _ => match fs::hard_link(&base, &link) {
                Ok(()) => {
                    retry_transient(|| remove_if_present(&link)).map_err(io_err("delete probe file"))?;
                    Publish::HardLink
                }
                // Refused (EPERM on SMB, EOPNOTSUPP, EMLINK, ...): unless the file system went
                // away (the probe file is gone too), there are no hard links here.
                Err(e) => {
                    fs::metadata(&base).map_err(io_err("stat probe file"))?;
                    if want == Some(Publish::HardLink) {
                        tracing::warn!(error = %e, "hard links configured but refused by the file system");
                        return Err(BlobError::Invalid {
                            what: "publish method",
                            reason: "the file system under the document root has no hard links",
                        });
                    }
                    Publish::ClaimRename
                }
            },
        };
        Ok(LocalCapabilities { publish, private_modes })
    })();
    let removed = retry_transient(|| remove_if_present(&base)).map_err(io_err("delete probe file"));
    let caps = result?;
    removed?;
    Ok(caps)
}

fn not_found_or(op: &'static str) -> impl FnOnce(io::Error) -> BlobError {
    move |e| if e.kind() == io::ErrorKind::NotFound { BlobError::NotFound } else { io_err(op)(e) }
}

fn read_err(e: io::Error) -> BlobError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        BlobError::Invalid { what: "range", reason: "beyond the end of the object" }
    } else {
        io_err("read")(e)
    }
}

fn open_object(p: &Path) -> Result<fs::File> {
    retry_transient(|| fs::File::open(p)).map_err(not_found_or("open"))
}

fn older_than(meta: &fs::Metadata, grace: Duration) -> bool {
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    SystemTime::now().duration_since(modified).map(|age| age >= grace).unwrap_or(grace.is_zero())
}

impl BlobBackend for LocalDir {
    type Upload = LocalUpload;

    async fn begin(&self, name: &ObjectName) -> Result<LocalUpload> {
        let tmp_name = format!("{}.{}{PART_SUFFIX}", name.as_str(), ObjectName::random()?.as_str());
        let tmp = self.root.join(TMP).join(tmp_name);
        let t = tmp.clone();
        let file = blocking(move || create_private_file(&t).map_err(io_err("create temp file"))).await?;
        Ok(LocalUpload {
            file: Some(file),
            buf: Vec::with_capacity(self.write_buffer),
            write_buffer: self.write_buffer,
            tmp,
            objects: self.root.join(OBJECTS),
            dest: self.object_path(name),
            claim: self.claim_path(name),
            publish: self.caps.publish,
            len: 0,
            done: false,
        })
    }

    async fn len(&self, name: &ObjectName) -> Result<u64> {
        let p = self.object_path(name);
        let m = tokio::fs::metadata(&p).await.map_err(not_found_or("stat"))?;
        Ok(m.len())
    }

    async fn read_range(&self, name: &ObjectName, start: u64, end: u64, out: &mut Vec<u8>) -> Result<()> {
        let n = end
            .checked_sub(start)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(BlobError::Invalid { what: "range", reason: "end before start or too long" })?;
        let p = self.object_path(name);
        let mut buf = std::mem::take(out);
        let r = blocking(move || {
            let f = open_object(&p);
            let res = f.and_then(|f| {
                let at = buf.len();
                buf.resize(at + n, 0);
                let slice = buf.get_mut(at..).ok_or(BlobError::Task("buffer"))?;
                read_exact_at(&f, slice, start).map_err(read_err).inspect_err(|_| buf.truncate(at))
            });
            Ok((buf, res))
        })
        .await?;
        let (buf, res) = r;
        *out = buf;
        res
    }

    async fn read_split(
        &self,
        name: &ObjectName,
        start: u64,
        end: u64,
        piece: usize,
        out: &mut [Vec<u8>],
    ) -> Result<usize> {
        let n = crate::backend::check_split(start, end, piece, out.len())?;
        let p = self.object_path(name);
        // The buffers travel to the blocking pool and back; the kernel copies straight into them.
        // They may hold plaintext of chunks read before (the reader reuses them), so they travel
        // in a set that is wiped if it is dropped on the way (the read's future was dropped).
        let mut bufs = WipeBufs(out.iter_mut().take(n).map(std::mem::take).collect());
        let (mut bufs, res) = blocking(move || {
            let res = open_object(&p).and_then(|f| {
                let mut at = start;
                for b in bufs.0.iter_mut() {
                    let len = usize::try_from((end - at).min(piece as u64)).unwrap_or(piece);
                    b.clear();
                    b.resize(len, 0);
                    read_exact_at(&f, b, at).map_err(read_err)?;
                    at += len as u64;
                }
                Ok(())
            });
            Ok((bufs, res))
        })
        .await?;
        for (dst, b) in out.iter_mut().zip(std::mem::take(&mut bufs.0)) {
            *dst = b;
        }
        res.map(|()| n)
    }

    async fn delete(&self, name: &ObjectName) -> Result<bool> {
        let p = self.object_path(name);
        let claim = self.claim_path(name);
        let dir = self.root.join(OBJECTS).join(name.fan_out());
        blocking(move || match retry_transient(|| fs::remove_file(&p)) {
            Ok(()) => {
                // The claim goes only after its object (a claim whose object is still there
                // keeps every other upload of the name away), and only if the object was ours
                // to delete: the claim of an upload still in progress stays.
                retry_transient(|| remove_dir_if_present(&claim)).map_err(io_err("delete claim"))?;
                sync_dir(&dir).map_err(io_err("fsync directory"))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("delete")(e)),
        })
        .await
    }

    async fn list(&self) -> Result<Vec<ObjectName>> {
        let objects = self.root.join(OBJECTS);
        blocking(move || {
            let mut out = Vec::new();
            walk_objects(&objects, |name, _path, _meta| {
                if let Some(n) = name {
                    out.push(n);
                }
                Ok(())
            })?;
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn collect_garbage(&self, live: &HashSet<ObjectName>, grace: Duration) -> Result<GcReport> {
        let objects = self.root.join(OBJECTS);
        let tmp = self.root.join(TMP);
        let claims = self.root.join(CLAIMS);
        let live = live.clone();
        blocking(move || {
            let mut report = GcReport::default();
            walk_objects(&objects, |name, path, meta| {
                match name {
                    Some(n) if live.contains(&n) => report.kept += 1,
                    Some(n) if older_than(meta, grace) => {
                        let removed = gc_remove(path, &mut report.busy)?;
                        if removed {
                            let claim = claims.join(n.fan_out()).join(n.as_str());
                            retry_transient(|| remove_dir_if_present(&claim))
                                .map_err(io_err("delete claim"))?;
                            report.orphans += 1;
                        }
                    }
                    // Too young, or not a name we write: left alone.
                    _ => {}
                }
                Ok(())
            })?;
            for entry in fs::read_dir(&tmp).map_err(io_err("list temp files"))? {
                let entry = entry.map_err(io_err("list temp files"))?;
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("stat temp file")(e)),
                };
                if meta.is_file() && older_than(&meta, grace) && gc_remove(&entry.path(), &mut report.busy)? {
                    report.unfinished += 1;
                }
            }
            sync_dir(&tmp).map_err(io_err("fsync directory"))?;
            // Claims without an object: an upload that stopped between claiming its name and
            // publishing (or a delete between removing the object and its claim). Young ones may
            // belong to an upload in progress.
            walk_claims(&claims, |name, path, meta| {
                let object = objects.join(name.fan_out()).join(name.as_str());
                let has_object = match fs::symlink_metadata(&object) {
                    Ok(_) => true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(io_err("stat")(e)),
                };
                if !has_object && older_than(meta, grace) {
                    match retry_transient(|| fs::remove_dir(path)) {
                        Ok(()) => report.unfinished += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) if e.kind() == io::ErrorKind::ResourceBusy => report.busy += 1,
                        Err(e) => return Err(io_err("delete claim")(e)),
                    }
                }
                Ok(())
            })?;
            Ok(report)
        })
        .await
    }
}

/// Removes a file for garbage collection: true if removed, false if it was gone already or is
/// still in use (counted in `busy`, left for the next run).
fn gc_remove(p: &Path, busy: &mut u64) -> Result<bool> {
    match retry_transient(|| fs::remove_file(p)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
            *busy += 1;
            Ok(false)
        }
        Err(e) => Err(io_err("delete")(e)),
    }
}

fn remove_if_present(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Calls `f` for every file under `objects/<fan-out>/`, with its name if it is one we write (a
/// valid name in its own fan-out directory).
fn walk_objects(
    objects: &Path,
    mut f: impl FnMut(Option<ObjectName>, &Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    for dir in fs::read_dir(objects).map_err(io_err("list objects"))? {
        let dir = dir.map_err(io_err("list objects"))?;
        if !dir.file_type().map_err(io_err("stat"))?.is_dir() {
            continue;
        }
        let fan = dir.file_name();
        for entry in fs::read_dir(dir.path()).map_err(io_err("list objects"))? {
            let entry = entry.map_err(io_err("list objects"))?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Removed since the listing (a concurrent delete or publish).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat")(e)),
            };
            if !meta.is_file() {
                continue;
            }
            let name = entry
                .file_name()
                .to_str()
                .and_then(|s| ObjectName::parse(s).ok())
                .filter(|n| fan.to_str() == Some(n.fan_out()));
            f(name, &entry.path(), &meta)?;
        }
    }
    Ok(())
}

/// Calls `f` for every claim directory `claims/<fan-out>/<name>/` with a valid name.
fn walk_claims(
    claims: &Path,
    mut f: impl FnMut(ObjectName, &Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    for dir in fs::read_dir(claims).map_err(io_err("list claims"))? {
        let dir = dir.map_err(io_err("list claims"))?;
        if !dir.file_type().map_err(io_err("stat"))?.is_dir() {
            continue;
        }
        let fan = dir.file_name();
        for entry in fs::read_dir(dir.path()).map_err(io_err("list claims"))? {
            let entry = entry.map_err(io_err("list claims"))?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat")(e)),
            };
            let name = entry
                .file_name()
                .to_str()
                .and_then(|s| ObjectName::parse(s).ok())
                .filter(|n| fan.to_str() == Some(n.fan_out()));
            if let (true, Some(n)) = (meta.is_dir(), name) {
                f(n, &entry.path(), &meta)?;
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
fn read_exact_at(f: &fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(f: &fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// An upload to a local temp file.
#[derive(Debug)]
pub struct LocalUpload {
    file: Option<fs::File>,
    buf: Vec<u8>,
    write_buffer: usize,
    tmp: PathBuf,
    objects: PathBuf,
    dest: PathBuf,
    claim: PathBuf,
    publish: Publish,
    len: u64,
    done: bool,
}

impl LocalUpload {
    /// Writes the buffer out (on the blocking pool; the file and buffer travel there and back).
    async fn flush_buf(&mut self, sync: bool) -> Result<()> {
        let mut f = self.file.take().ok_or(BlobError::Task("upload already finished"))?;
        let buf = std::mem::take(&mut self.buf);
        let (f, mut buf) = blocking(move || {
            write_all_retrying(&mut f, &buf).map_err(io_err("write"))?;
            if sync {
                f.sync_all().map_err(io_err("fsync"))?;
            }
            Ok((f, buf))
        })
        .await?;
        buf.clear();
        self.buf = buf;
        self.file = Some(f);
        Ok(())
    }
}

/// Creates the directory of `p` if missing; returns whether it was new.
fn ensure_parent(p: &Path) -> Result<(PathBuf, bool)> {
    let dir = p.parent().ok_or(BlobError::Task("object path"))?.to_path_buf();
    let new_dir = !dir.exists();
    create_private_dir(&dir).map_err(io_err("create directory"))?;
    Ok((dir, new_dir))
}

/// [`Publish::HardLink`]: links the complete temp file to the final name.
fn publish_link(tmp: &Path, dest: &Path) -> Result<()> {
    match fs::hard_link(tmp, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // NFS: a retransmitted link whose first attempt succeeded reports EEXIST. The link
            // is ours if the temp file now has two names.
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                if fs::metadata(tmp).is_ok_and(|m| m.nlink() == 2)
                    && fs::metadata(dest).is_ok_and(|d| fs::metadata(tmp).is_ok_and(|t| t.ino() == d.ino()))
                {
                    return Ok(());
                }
            }
            Err(BlobError::AlreadyExists)
        }
        Err(e) => Err(io_err("link")(e)),
    }
}

/// Creates a claim directory; fails with `AlreadyExists` if it exists. The server decides, also
/// between clients.
fn create_claim(p: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(p)
}

fn remove_dir_if_present(p: &Path) -> io::Result<()> {
    match fs::remove_dir(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// [`Publish::ClaimRename`]: claims the name exclusively, then renames the complete, closed temp
/// file onto it.
fn publish_claim_rename(tmp: &Path, dest: &Path, claim: &Path) -> Result<()> {
    ensure_parent(claim)?;
    // INVARIANT: only the holder of a name's claim renames onto that name, and it does so only
    // after seeing the name absent; so a rename never replaces an object.
    match retry_transient(|| create_claim(claim)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(BlobError::AlreadyExists),
        Err(e) => return Err(io_err("claim name")(e)),
    }
    let published = (|| {
        match fs::symlink_metadata(dest) {
            // An object without a claim (written by a hard-link publisher): never replaced.
            Ok(_) => return Err(BlobError::AlreadyExists),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat")(e)),
        }
        retry_transient(|| fs::rename(tmp, dest)).map_err(io_err("publish"))
    })();
    if published.is_err() {
        // Give the name back (best effort; garbage collection removes a claim left behind). Safe
        // even if the rename did happen and only its answer was lost: the absence check above
        // keeps the object from being replaced.
        let _ = remove_dir_if_present(claim);
    }
    published
}

impl Upload for LocalUpload {
    async fn append(&mut self, part: &[u8]) -> Result<()> {
        if self.file.is_none() {
            return Err(BlobError::Task("upload already finished"));
        }
        self.buf.extend_from_slice(part);
        self.len += part.len() as u64;
        if self.buf.len() >= self.write_buffer {
            self.flush_buf(false).await?;
        }
        Ok(())
    }

    async fn commit(mut self) -> Result<u64> {
        self.flush_buf(true).await?;
        // Closed before it is published: a network file system sends its last writes at the
        // latest on close, and an SMB server refuses to rename a file that is still open.
        self.file = None;
        let (tmp, dest, claim, objects, publish) =
            (self.tmp.clone(), self.dest.clone(), self.claim.clone(), self.objects.clone(), self.publish);
        blocking(move || {
            let (dir, new_dir) = ensure_parent(&dest)?;
            match publish {
                Publish::HardLink => publish_link(&tmp, &dest)?,
                Publish::ClaimRename => publish_claim_rename(&tmp, &dest, &claim)?,
            }
            sync_dir(&dir).map_err(io_err("fsync directory"))?;
            if new_dir {
                sync_dir(&objects).map_err(io_err("fsync directory"))?;
            }
            Ok(())
        })
        .await?;
        // The object is under its final name. A linked temp name goes now (or at GC).
        self.done = true;
        let tmp = self.tmp.clone();
        blocking(move || {
            retry_transient(|| remove_if_present(&tmp)).map_err(io_err("delete"))?;
            if let Some(d) = tmp.parent() {
                sync_dir(d).map_err(io_err("fsync directory"))?;
            }
            Ok(())
        })
        .await?;
        Ok(self.len)
    }

    async fn abort(mut self) -> Result<()> {
        self.file = None;
        self.done = true;
        let tmp = self.tmp.clone();
        blocking(move || retry_transient(|| remove_if_present(&tmp)).map_err(io_err("delete"))).await
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if !self.done {
            // Best effort; garbage collection removes whatever stays behind.
            self.file = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// A writer that takes at most `max` bytes per call and fails or writes nothing as scripted.
    struct Flaky {
        out: Vec<u8>,
        max: usize,
        script: Vec<Option<io::ErrorKind>>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.script.pop() {
                Some(Some(kind)) => Err(io::Error::from(kind)),
                Some(None) => Ok(0),
                None => {
                    let n = buf.len().min(self.max);
                    self.out.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn short_and_transient_writes_are_retried() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut w = Flaky {
            out: Vec::new(),
            max: 333,
            script: vec![
                Some(io::ErrorKind::ResourceBusy),
                None,
                Some(io::ErrorKind::Interrupted),
                Some(io::ErrorKind::WouldBlock),
            ],
        };
        write_all_retrying(&mut w, &data).unwrap();
        assert_eq!(w.out, data);
    }

    #[test]
    fn writes_that_keep_failing_stop() {
        let mut w = Flaky { out: Vec::new(), max: 1, script: vec![None; 100] };
        let e = write_all_retrying(&mut w, b"abc").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert_eq!(w.script.len(), 100 - TRANSIENT_ATTEMPTS as usize, "bounded attempts");
        let mut w = Flaky { out: Vec::new(), max: 1, script: vec![Some(io::ErrorKind::PermissionDenied)] };
        assert_eq!(write_all_retrying(&mut w, b"abc").unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn busy_is_retried_with_a_bound() {
        let mut calls = 0;
        let r = retry_transient(|| {
            calls += 1;
            if calls < 4 { Err(io::Error::from(io::ErrorKind::ResourceBusy)) } else { Ok(calls) }
        });
        assert_eq!(r.unwrap(), 4);
        let mut calls = 0;
        let r: io::Result<()> = retry_transient(|| {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::ResourceBusy))
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ResourceBusy);
        assert_eq!(calls, TRANSIENT_ATTEMPTS);
    }

    #[test]
    fn storage_gone_is_unavailable() {
        let gone = [
            io::Error::from(io::ErrorKind::NotConnected),
            io::Error::from(io::ErrorKind::StaleNetworkFileHandle),
            io::Error::from_raw_os_error(5),
        ];
        for e in gone {
            assert!(matches!(io_err("write")(e), BlobError::Unavailable { op: "write", .. }));
        }
        let refused = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(matches!(io_err("write")(refused), BlobError::Io { .. }));
    }

    /// NFS: a link whose reply was lost is retransmitted and reports EEXIST; the upload still
    /// owns the name if the temp file and the object are one file.
    #[cfg(unix)]
    #[test]
    fn link_already_done_by_us_is_success() {
        let d = tempfile::tempdir().unwrap();
        let (tmp, dest, other) = (d.path().join("t"), d.path().join("o"), d.path().join("x"));
        fs::write(&tmp, b"ours").unwrap();
        fs::hard_link(&tmp, &dest).unwrap();
        publish_link(&tmp, &dest).unwrap();
        fs::write(&other, b"theirs").unwrap();
        assert!(matches!(publish_link(&other, &dest), Err(BlobError::AlreadyExists)));
    }
}
