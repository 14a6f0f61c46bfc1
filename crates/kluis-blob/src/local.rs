//! The local directory backend (the embedded default).
//!
//! ```text
//! ROOT/objects/ab/ab12…ef      committed objects (fan-out by the first two name digits)
//! ROOT/tmp/ab12…ef.<random>.part  uploads in progress
//! ```
//!
//! An upload writes a temp file in `ROOT/tmp`, `fsync`s it, hard-links it to its final name
//! (which fails if that name exists: nothing is ever replaced), removes the temp name and
//! `fsync`s the directories, so a crash leaves either no object or the whole object, plus at
//! most a temp file that [`BlobBackend::collect_garbage`] removes. Names are validated
//! [`ObjectName`]s (hex only), so no path can be smuggled in. Directories are created `0700` and
//! files `0600` on Unix.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::backend::{BlobBackend, GcReport, Upload};
use crate::error::{BlobError, Result};
use crate::name::ObjectName;
use crate::vault::WipeBufs;

const OBJECTS: &str = "objects";
const TMP: &str = "tmp";
const PART_SUFFIX: &str = ".part";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| BlobError::Task("local storage task panicked or was cancelled"))?
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

fn sync_dir(p: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(p)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        Ok(())
    }
}

/// Default write buffer of an upload: 1 MiB.
pub const DEFAULT_WRITE_BUFFER: usize = 1 << 20;

/// Documents in a local directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
    write_buffer: usize,
}

impl LocalDir {
    /// Opens (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let r = root.clone();
        blocking(move || {
            create_private_dir(&r.join(OBJECTS)).map_err(BlobError::io("create directory"))?;
            create_private_dir(&r.join(TMP)).map_err(BlobError::io("create directory"))?;
            Ok(())
        })
        .await?;
        Ok(Self { root, write_buffer: DEFAULT_WRITE_BUFFER })
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

    fn object_path(&self, name: &ObjectName) -> PathBuf {
        self.root.join(OBJECTS).join(name.fan_out()).join(name.as_str())
    }
}

fn not_found_or(op: &'static str) -> impl FnOnce(io::Error) -> BlobError {
    move |e| {
        if e.kind() == io::ErrorKind::NotFound {
            BlobError::NotFound
        } else {
            BlobError::Io { op, source: e }
        }
    }
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
        let file = blocking(move || {
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            opts.open(&t).map_err(BlobError::io("create temp file"))
        })
        .await?;
        Ok(LocalUpload {
            file: Some(file),
            buf: Vec::with_capacity(self.write_buffer),
            write_buffer: self.write_buffer,
            tmp,
            objects: self.root.join(OBJECTS),
            dest: self.object_path(name),
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
            let f = fs::File::open(&p).map_err(not_found_or("open"));
            let res = f.and_then(|f| {
                let at = buf.len();
                buf.resize(at + n, 0);
                let slice = buf.get_mut(at..).ok_or(BlobError::Task("buffer"))?;
                read_exact_at(&f, slice, start)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            BlobError::Invalid { what: "range", reason: "beyond the end of the object" }
                        } else {
                            BlobError::Io { op: "read", source: e }
                        }
                    })
                    .inspect_err(|_| buf.truncate(at))
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
            let res = fs::File::open(&p).map_err(not_found_or("open")).and_then(|f| {
                let mut at = start;
                for b in bufs.0.iter_mut() {
                    let len = usize::try_from((end - at).min(piece as u64)).unwrap_or(piece);
                    b.clear();
                    b.resize(len, 0);
                    read_exact_at(&f, b, at).map_err(|e| {
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            BlobError::Invalid { what: "range", reason: "beyond the end of the object" }
                        } else {
                            BlobError::Io { op: "read", source: e }
                        }
                    })?;
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
        let dir = self.root.join(OBJECTS).join(name.fan_out());
        blocking(move || match fs::remove_file(&p) {
            Ok(()) => {
                sync_dir(&dir).map_err(BlobError::io("fsync directory"))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BlobError::Io { op: "delete", source: e }),
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
        let live = live.clone();
        blocking(move || {
            let mut report = GcReport::default();
            walk_objects(&objects, |name, path, meta| {
                match name {
                    Some(n) if live.contains(&n) => report.kept += 1,
                    Some(_) if older_than(meta, grace) => {
                        remove_if_present(path)?;
                        report.orphans += 1;
                    }
                    // Too young, or not a name we write: left alone.
                    _ => {}
                }
                Ok(())
            })?;
            for entry in fs::read_dir(&tmp).map_err(BlobError::io("list temp files"))? {
                let entry = entry.map_err(BlobError::io("list temp files"))?;
                let meta = entry.metadata().map_err(BlobError::io("stat temp file"))?;
                if meta.is_file() && older_than(&meta, grace) {
                    remove_if_present(&entry.path())?;
                    report.unfinished += 1;
                }
            }
            sync_dir(&tmp).map_err(BlobError::io("fsync directory"))?;
            Ok(report)
        })
        .await
    }
}

fn remove_if_present(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BlobError::Io { op: "delete", source: e }),
    }
}

/// Calls `f` for every file under `objects/<fan-out>/`, with its name if it is one we write (a
/// valid name in its own fan-out directory).
fn walk_objects(
    objects: &Path,
    mut f: impl FnMut(Option<ObjectName>, &Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    for dir in fs::read_dir(objects).map_err(BlobError::io("list objects"))? {
        let dir = dir.map_err(BlobError::io("list objects"))?;
        if !dir.file_type().map_err(BlobError::io("stat"))?.is_dir() {
            continue;
        }
        let fan = dir.file_name();
        for entry in fs::read_dir(dir.path()).map_err(BlobError::io("list objects"))? {
            let entry = entry.map_err(BlobError::io("list objects"))?;
            let meta = entry.metadata().map_err(BlobError::io("stat"))?;
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
    len: u64,
    done: bool,
}

impl LocalUpload {
    /// Writes the buffer out (on the blocking pool; the file and buffer travel there and back).
    async fn flush_buf(&mut self, sync: bool) -> Result<()> {
        let mut f = self.file.take().ok_or(BlobError::Task("upload already finished"))?;
        let buf = std::mem::take(&mut self.buf);
        let (f, mut buf) = blocking(move || {
            use std::io::Write;
            f.write_all(&buf).map_err(BlobError::io("write"))?;
            if sync {
                f.sync_all().map_err(BlobError::io("fsync"))?;
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
        self.file = None;
        let (tmp, dest, objects) = (self.tmp.clone(), self.dest.clone(), self.objects.clone());
        blocking(move || {
            let dir = dest.parent().ok_or(BlobError::Task("object path"))?.to_path_buf();
            let new_dir = !dir.exists();
            create_private_dir(&dir).map_err(BlobError::io("create directory"))?;
            // A hard link fails if the destination exists: a committed object is never replaced.
            fs::hard_link(&tmp, &dest).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    BlobError::AlreadyExists
                } else {
                    BlobError::Io { op: "link", source: e }
                }
            })?;
            sync_dir(&dir).map_err(BlobError::io("fsync directory"))?;
            if new_dir {
                sync_dir(&objects).map_err(BlobError::io("fsync directory"))?;
            }
            Ok(())
        })
        .await?;
        // The object is durable under its final name. The temp name goes now (or at GC).
        self.done = true;
        let tmp = self.tmp.clone();
        blocking(move || {
            remove_if_present(&tmp)?;
            if let Some(d) = tmp.parent() {
                sync_dir(d).map_err(BlobError::io("fsync directory"))?;
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
        blocking(move || remove_if_present(&tmp)).await
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
