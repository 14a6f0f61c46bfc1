//! The document layer: streamed sealing into a backend, streamed and ranged reads.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use kluis_core::document::{DocumentOptions, PREFIX_LEN};
use kluis_core::{
    DocumentContext, DocumentHeader, DocumentMetadata, DocumentOpener, DocumentSealer, DomainKeySet,
    DomainName, KeyKind, KeyRef, Plaintext, SealKey, SubjectKey, TenantId,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::backend::{BlobBackend, GcReport, Upload};
use crate::error::{BlobError, Result};
use crate::name::ObjectName;

const TAG_LEN: usize = 16;
/// Longest subject or record id.
pub const MAX_ID_LEN: usize = 255;

/// How documents are written and read.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct VaultOptions {
    /// Sealing options for new documents (suite, chunk size, padding).
    pub document: DocumentOptions,
    /// Bytes fetched per read request (rounded down to whole chunks, at least one chunk).
    /// Uploads hand the backend one sealed chunk at a time; backends buffer writes as suits
    /// them ([`crate::LocalDir::with_write_buffer`], [`crate::azure::AzureOptions::block_size`]).
    pub read_size: usize,
    /// Largest plaintext range [`DocumentVault::get_range`] returns in memory.
    pub max_range_len: u64,
    /// Read ahead: while the chunks of one read are returned, the next read is fetched and its
    /// chunks are opened on tokio's blocking pool (a second core), so fetching, decrypting and
    /// writing overlap. At most two reads' worth of buffers per reader. Only for documents of
    /// more than one read, and only inside a tokio runtime. On by default.
    pub read_ahead: bool,
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self {
            document: DocumentOptions::default(),
            read_size: 4 << 20,
            max_range_len: 64 << 20,
            read_ahead: true,
        }
    }
}

impl VaultOptions {
    /// Options with a given read size (at least one chunk; at most 256 MiB).
    pub fn with_read_size(mut self, read_size: usize) -> Self {
        self.read_size = read_size;
        self
    }

    /// Options with read-ahead on or off (see [`VaultOptions::read_ahead`]).
    pub fn with_read_ahead(mut self, read_ahead: bool) -> Self {
        self.read_ahead = read_ahead;
        self
    }

    /// Options with given document sealing options.
    pub fn with_document(mut self, document: DocumentOptions) -> Self {
        self.document = document;
        self
    }
}

/// The keys a caller holds for one tenant and domain: the domain key set, and for documents of
/// a subject sealed under its subject key, that subject key.
#[derive(Debug, Clone, Copy)]
pub struct DocumentKeys<'a> {
    domain: &'a DomainKeySet,
    subject: Option<&'a SubjectKey>,
}

impl<'a> DocumentKeys<'a> {
    /// Domain keys only: new documents' data keys are sealed by the active domain key.
    pub fn domain(domain: &'a DomainKeySet) -> Self {
        Self { domain, subject: None }
    }

    /// With a subject key: new documents of that subject are sealed under it, so shredding the
    /// subject key makes them unreadable.
    pub fn with_subject(domain: &'a DomainKeySet, subject: &'a SubjectKey) -> Self {
        Self { domain, subject: Some(subject) }
    }
}

/// A document to store: who it belongs to and its (secret) metadata.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// The data subject (e.g. an employee id), 1 to 255 bytes.
    pub subject: String,
    /// The record it belongs to, if any, 1 to 255 bytes.
    pub record: Option<String>,
    /// File name, extension, content type, length, created, uploader: stored encrypted only.
    pub metadata: DocumentMetadata,
}

/// What a catalog stores for a document (see `docs/DOCUMENTS.md`). Holds no secret: no file name,
/// type or content. Reading needs all of it back unchanged: the object name, tenant, domain,
/// subject and record are bound into the document's encryption, so a row edited to point at
/// another object, subject or record fails to decrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentDescriptor {
    /// The storage object.
    pub object: ObjectName,
    /// Tenant.
    pub tenant: TenantId,
    /// Domain.
    pub domain: DomainName,
    /// Data subject.
    pub subject: String,
    /// Record, if any.
    pub record: Option<String>,
    /// Which key sealed the data key (a domain key version or a subject key version).
    pub wrapping_key: KeyRef,
    /// Length of the stored object in bytes (already visible to storage).
    pub object_len: u64,
}

impl DocumentDescriptor {
    /// The document id bound into the data key's associated data: object name, subject and
    /// record, length-prefixed so no two triples give the same string.
    fn document_id(&self) -> String {
        document_id(&self.object, &self.subject, self.record.as_deref())
    }
}

/// A document whose (decrypted) metadata is wiped when it is dropped.
struct WipeMetadata(NewDocument);

impl Drop for WipeMetadata {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0.metadata);
    }
}

fn document_id(object: &ObjectName, subject: &str, record: Option<&str>) -> String {
    match record {
        Some(r) => format!("kluis-blob/v1:{}:{}:{}:r{}:{}", object, subject.len(), subject, r.len(), r),
        None => format!("kluis-blob/v1:{}:{}:{}:n", object, subject.len(), subject),
    }
}

fn check_id(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(BlobError::Invalid { what, reason: "must be 1 to 255 bytes" });
    }
    Ok(())
}

/// Encrypted documents on a [`BlobBackend`].
pub struct DocumentVault<B> {
    backend: B,
    opts: VaultOptions,
    /// Wiped chunk buffers of finished reads, reused by the next ones (at most one read's worth),
    /// so a read does not fault in fresh pages for its buffers each time.
    spare: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl<B: fmt::Debug> fmt::Debug for DocumentVault<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentVault").field("backend", &self.backend).field("opts", &self.opts).finish()
    }
}

impl<B: BlobBackend> DocumentVault<B> {
    /// A vault with default options (64 KiB chunks, 4 MiB parts).
    pub fn new(backend: B) -> Self {
        Self { backend, opts: VaultOptions::default(), spare: std::sync::Mutex::default() }
    }

    /// A vault with options.
    pub fn with_options(backend: B, opts: VaultOptions) -> Result<Self> {
        let cs = 1usize << opts.document.chunk_log2;
        if opts.read_size < cs + TAG_LEN || opts.read_size > 256 << 20 {
            return Err(BlobError::Invalid {
                what: "read size",
                reason: "must hold at least one chunk and be at most 256 MiB",
            });
        }
        Ok(Self { backend, opts, spare: std::sync::Mutex::default() })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Encrypts the content read from `content` and stores it as a new object. The content is
    /// streamed: memory stays at two chunks plus the backend's write buffer whatever its size. The object
    /// becomes visible only once whole; if reading or storing fails, or the future is dropped,
    /// nothing is visible (and [`DocumentVault::collect_garbage`] removes any leftovers).
    pub async fn put<R: AsyncRead + Unpin + Send>(
        &self,
        keys: &DocumentKeys<'_>,
        doc: &NewDocument,
        content: R,
    ) -> Result<DocumentDescriptor> {
        self.put_from(keys, doc, AsyncSource(content)).await
    }

    /// Copies a stored document into a new object sealed under `new_keys` (a new data key, a new
    /// object name), streamed chunk by chunk: each chunk of the old object is authenticated
    /// before its bytes go into the new one, and the new object is committed only after the old
    /// one's final chunk authenticated, so a tampered or truncated source never yields a new
    /// object. The old object is left as it is. The new document keeps the metadata, subject and
    /// record; its sealing options are this vault's.
    pub async fn reseal(
        &self,
        desc: &DocumentDescriptor,
        old_keys: &DocumentKeys<'_>,
        new_keys: &DocumentKeys<'_>,
    ) -> Result<DocumentDescriptor> {
        let reader = self.open(desc, old_keys).await?;
        // A copy of the decrypted metadata, wiped when dropped (also if this future is dropped).
        let doc = WipeMetadata(NewDocument {
            subject: desc.subject.clone(),
            record: desc.record.clone(),
            metadata: reader.metadata().clone(),
        });
        self.put_from(new_keys, &doc.0, ReaderSource { reader, pos: 0, len: 0 }).await
    }

    async fn put_from<R: ReadInto>(
        &self,
        keys: &DocumentKeys<'_>,
        doc: &NewDocument,
        content: R,
    ) -> Result<DocumentDescriptor> {
        check_id("subject id", &doc.subject)?;
        if let Some(r) = &doc.record {
            check_id("record id", r)?;
        }
        let wrapping: &SealKey = match keys.subject {
            Some(sk) if sk.subject() == doc.subject => sk.seal_key(),
            Some(_) => {
                return Err(BlobError::Invalid { what: "subject key", reason: "belongs to another subject" });
            }
            None => keys.domain.active_key()?,
        };
        let object = ObjectName::random()?;
        let id = document_id(&object, &doc.subject, doc.record.as_deref());
        let ctx =
            DocumentContext { tenant: keys.domain.tenant(), domain: keys.domain.domain(), document_id: &id };
        let sealer = DocumentSealer::new(wrapping, &ctx, &doc.metadata, self.opts.document)?;

        let mut upload = self.backend.begin(&object).await?;
        match self.write_chunks(sealer, &doc.metadata, content, &mut upload).await {
            Ok(()) => {}
            Err(e) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(error = %abort, "aborting a failed upload failed; garbage collection will remove it");
                }
                return Err(e);
            }
        }
        let object_len = upload.commit().await?;
        tracing::debug!(object = %object, len = object_len, "document stored");
        Ok(DocumentDescriptor {
            object,
            tenant: keys.domain.tenant().clone(),
            domain: keys.domain.domain().clone(),
            subject: doc.subject.clone(),
            record: doc.record.clone(),
            wrapping_key: wrapping.key_ref(),
            object_len,
        })
    }

    async fn write_chunks<R: ReadInto>(
        &self,
        mut sealer: DocumentSealer,
        meta: &DocumentMetadata,
        content: R,
        upload: &mut B::Upload,
    ) -> Result<()> {
        let cs = sealer.chunk_size();
        let mut src = Source {
            reader: content,
            eof: false,
            read: 0,
            declared: meta.length,
            pad_left: 0,
            padded: sealer.padded_len(),
        };
        upload.append(sealer.header()).await?;
        // Two plaintext buffers: the next chunk is read before the current one is sealed, to
        // know whether the current one is the final chunk. Both are wiped when dropped.
        let mut cur = Zeroizing::new(Vec::with_capacity(cs + TAG_LEN));
        let mut next = Zeroizing::new(Vec::with_capacity(cs + TAG_LEN));
        let mut n = src.fill(&mut cur, cs).await?;
        loop {
            let (last, m) = if n < cs {
                (true, 0)
            } else {
                let m = src.fill(&mut next, cs).await?;
                (m == 0, m)
            };
            cur.truncate(n);
            sealer.seal_chunk(&mut cur, last)?;
            upload.append(&cur).await?;
            if last {
                break;
            }
            std::mem::swap(&mut cur, &mut next);
            n = m;
        }
        Ok(())
    }

    /// Opens a stored document for sequential reading. Checks the object's length against the
    /// descriptor and opens the header (so a wrong key, tenant, subject or object fails here).
    pub async fn open(
        &self,
        desc: &DocumentDescriptor,
        keys: &DocumentKeys<'_>,
    ) -> Result<DocumentReader<'_, B>> {
        let (opener, len) = self.open_header(desc, keys).await?;
        let layout = opener.layout(len)?;
        let c16 = opener.chunk_size() + TAG_LEN;
        // As many chunk buffers as one read fills, but no more than the document has chunks
        // (a small document does not get a 4 MiB buffer set). They are allocated by the first
        // read and reused for every later one.
        let chunks_per_part =
            usize::try_from(layout.chunks).unwrap_or(usize::MAX).min(self.opts.read_size / c16).max(1);
        // Read ahead only when there is a second read to overlap with.
        let read_ahead = self.opts.read_ahead
            && layout.chunks > chunks_per_part as u64
            && tokio::runtime::Handle::try_current().is_ok();
        let sets = if read_ahead { 2 } else { 1 };
        Ok(DocumentReader {
            backend: &self.backend,
            object: desc.object.clone(),
            object_len: len,
            next_index: 0,
            fetch_index: 0,
            final_chunk: layout.chunks - 1,
            offset: opener.header_len() as u64,
            content_left: layout.content_len,
            cur: WipeBufs(self.take_spare(chunks_per_part)),
            ok: 0,
            pos: 0,
            cur_err: None,
            failed: false,
            ahead: None,
            cancel: std::sync::Arc::default(),
            spare: &self.spare,
            spare_max: sets * (self.opts.read_size / c16).max(1),
            read_ahead,
            chunks_per_part,
            c16,
            opener: std::sync::Arc::new(opener),
        })
    }

    /// `n` chunk buffers: wiped ones left by earlier reads first, then new ones.
    fn take_spare(&self, n: usize) -> Vec<Vec<u8>> {
        take_spare(&self.spare, n)
    }

    async fn open_header(
        &self,
        desc: &DocumentDescriptor,
        keys: &DocumentKeys<'_>,
    ) -> Result<(DocumentOpener, u64)> {
        if keys.domain.tenant() != &desc.tenant || keys.domain.domain() != &desc.domain {
            return Err(BlobError::Invalid { what: "keys", reason: "belong to another tenant or domain" });
        }
        let len = self.backend.len(&desc.object).await?;
        if len != desc.object_len {
            return Err(BlobError::LengthMismatch { expected: desc.object_len, actual: len });
        }
        if len < PREFIX_LEN as u64 {
            return Err(kluis_core::Error::Truncated.into());
        }
        let mut buf = Vec::with_capacity(PREFIX_LEN);
        self.backend.read_range(&desc.object, 0, PREFIX_LEN as u64, &mut buf).await?;
        let hl = DocumentHeader::header_len(&buf)? as u64;
        if hl > len {
            return Err(kluis_core::Error::Truncated.into());
        }
        self.backend.read_range(&desc.object, PREFIX_LEN as u64, hl, &mut buf).await?;
        let header = DocumentHeader::parse(&buf)?;
        let key = wrapping_for_read(keys, desc, header.wrapping_key())?;
        let id = desc.document_id();
        let ctx = DocumentContext { tenant: &desc.tenant, domain: &desc.domain, document_id: &id };
        let opener = header.open(key, &ctx)?;
        Ok((opener, len))
    }

    /// Decrypts the document into `out`; returns the number of content bytes written.
    ///
    /// Every chunk is authenticated before its plaintext is written. If an error is returned
    /// the output may hold an authenticated prefix of the document: discard it.
    pub async fn get<W: AsyncWrite + Unpin + Send>(
        &self,
        desc: &DocumentDescriptor,
        keys: &DocumentKeys<'_>,
        mut out: W,
    ) -> Result<u64> {
        let mut r = self.open(desc, keys).await?;
        let mut n = 0u64;
        while let Some(chunk) = r.next_chunk().await? {
            out.write_all(chunk).await.map_err(BlobError::Sink)?;
            n += chunk.len() as u64;
        }
        out.flush().await.map_err(BlobError::Sink)?;
        Ok(n)
    }

    /// The decrypted metadata (file name, extension, content type, length, created, uploader).
    /// Reads only the header.
    pub async fn metadata(
        &self,
        desc: &DocumentDescriptor,
        keys: &DocumentKeys<'_>,
    ) -> Result<DocumentMetadata> {
        let (opener, len) = self.open_header(desc, keys).await?;
        opener.layout(len)?;
        Ok(opener.metadata().clone())
    }

    /// Content bytes `start..end` (clamped to the content). Only the chunks holding the range are
    /// fetched, and each is authenticated (including the final chunk when the range reaches it).
    pub async fn get_range(
        &self,
        desc: &DocumentDescriptor,
        keys: &DocumentKeys<'_>,
        start: u64,
        end: u64,
    ) -> Result<Plaintext> {
        if end.saturating_sub(start) > self.opts.max_range_len {
            return Err(BlobError::Invalid {
                what: "range",
                reason: "longer than the vault's maximum range",
            });
        }
        let (opener, len) = self.open_header(desc, keys).await?;
        let plan = opener.plan_range(len, start, end)?;
        let mut ct = Vec::new();
        self.backend.read_range(&desc.object, plan.object_start, plan.object_end, &mut ct).await?;
        Ok(opener.open_range(&plan, &ct)?)
    }

    /// Deletes a document's object. Returns whether it existed.
    pub async fn delete(&self, desc: &DocumentDescriptor) -> Result<bool> {
        self.backend.delete(&desc.object).await
    }

    /// Names of all stored objects (for reconciling with a catalog).
    pub async fn list_objects(&self) -> Result<Vec<ObjectName>> {
        self.backend.list().await
    }

    /// Removes every object not in `live` (the catalog's object names) and every leftover of an
    /// unfinished upload, if last changed more than `grace` ago. Use a grace period longer than
    /// the longest upload plus catalog insert (an hour is ample); zero only when no upload runs.
    pub async fn collect_garbage<'n>(
        &self,
        live: impl IntoIterator<Item = &'n ObjectName>,
        grace: Duration,
    ) -> Result<GcReport> {
        let live: HashSet<ObjectName> = live.into_iter().cloned().collect();
        self.backend.collect_garbage(&live, grace).await
    }
}

/// `n` chunk buffers from a vault's pool of wiped ones, topped up with new (empty) ones.
fn take_spare(spare: &std::sync::Mutex<Vec<Vec<u8>>>, n: usize) -> Vec<Vec<u8>> {
    let mut out = match spare.lock() {
        Ok(mut s) => {
            let k = s.len().saturating_sub(n);
            s.split_off(k)
        }
        Err(_) => Vec::new(),
    };
    out.resize_with(n, Vec::new);
    out
}

fn wrapping_for_read<'k>(
    keys: &DocumentKeys<'k>,
    desc: &DocumentDescriptor,
    key: KeyRef,
) -> Result<&'k SealKey> {
    match key.kind {
        // A header of any kind but the keyring's key-encryption key names a version.
        KeyKind::Domain => match key.version {
            Some(v) => Ok(keys.domain.key(v)?),
            None => {
                Err(kluis_core::Error::Malformed { what: "document header", reason: "key version 0" }.into())
            }
        },
        KeyKind::Subject => match keys.subject {
            Some(sk) if sk.subject() == desc.subject && sk.seal_key().key_ref() == key => Ok(sk.seal_key()),
            _ => Err(kluis_core::Error::UnknownKey {
                key: match key.version {
                    Some(v) => format!("subject key v{v} of this document"),
                    None => "subject key of this document".to_owned(),
                },
            }
            .into()),
        },
        _ => Err(kluis_core::Error::Malformed {
            what: "document header",
            reason: "data key sealed by a key of the wrong kind",
        }
        .into()),
    }
}

/// The content source of an upload: the caller's reader, then the Padmé padding zeros.
struct Source<R> {
    reader: R,
    eof: bool,
    read: u64,
    declared: Option<u64>,
    pad_left: u64,
    padded: Option<u64>,
}

/// Where upload content comes from: the caller's reader, or another document (re-sealing).
trait ReadInto: Send {
    /// Reads up to `dst.len()` bytes; 0 only at the end.
    fn read_into(&mut self, dst: &mut [u8]) -> impl std::future::Future<Output = Result<usize>> + Send;
}

struct AsyncSource<R>(R);

impl<R: AsyncRead + Unpin + Send> ReadInto for AsyncSource<R> {
    async fn read_into(&mut self, dst: &mut [u8]) -> Result<usize> {
        self.0.read(dst).await.map_err(BlobError::Source)
    }
}

/// The authenticated content of a stored document, chunk by chunk.
struct ReaderSource<'v, B> {
    reader: DocumentReader<'v, B>,
    /// Position in, and length of, the current chunk (the reader's last returned chunk).
    pos: usize,
    len: usize,
}

impl<B: BlobBackend> ReadInto for ReaderSource<'_, B> {
    async fn read_into(&mut self, dst: &mut [u8]) -> Result<usize> {
        while self.pos >= self.len {
            match self.reader.next_chunk().await? {
                Some(c) => {
                    self.len = c.len();
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let src =
            self.reader.current_chunk().get(self.pos..self.len).ok_or(BlobError::Task("chunk buffer"))?;
        let n = src.len().min(dst.len());
        let (d, s) = (dst.get_mut(..n), src.get(..n));
        match (d, s) {
            (Some(d), Some(s)) => d.copy_from_slice(s),
            _ => return Err(BlobError::Task("chunk buffer")),
        }
        self.pos += n;
        Ok(n)
    }
}

impl<R: ReadInto> Source<R> {
    /// Fills `buf` with up to `cs` bytes; fewer only at the end of the stream.
    async fn fill(&mut self, buf: &mut Vec<u8>, cs: usize) -> Result<usize> {
        buf.resize(cs, 0);
        let mut n = 0;
        while n < cs && !self.eof {
            let dst = buf.get_mut(n..cs).ok_or(BlobError::Task("chunk buffer"))?;
            let k = self.reader.read_into(dst).await?;
            if k == 0 {
                self.eof = true;
                if let Some(d) = self.declared {
                    if self.read != d {
                        return Err(BlobError::Invalid {
                            what: "document",
                            reason: "content length differs from the declared length",
                        });
                    }
                    self.pad_left = self.padded.unwrap_or(d).saturating_sub(d);
                }
            } else {
                n += k;
                self.read += k as u64;
                if self.declared.is_some_and(|d| self.read > d) {
                    return Err(BlobError::Invalid {
                        what: "document",
                        reason: "content is longer than the declared length",
                    });
                }
            }
        }
        if n < cs && self.pad_left > 0 {
            let add = usize::try_from(self.pad_left).unwrap_or(usize::MAX).min(cs - n);
            if let Some(z) = buf.get_mut(n..n + add) {
                z.fill(0);
            }
            n += add;
            self.pad_left -= add as u64;
        }
        buf.truncate(n);
        Ok(n)
    }
}

/// Chunk buffers that are wiped (contents and spare capacity) when dropped. A set travels to the
/// blocking pool to be opened there; if the reader is dropped meanwhile, the set is dropped by
/// the pool thread when it finishes, and its plaintext with it.
#[derive(Default)]
pub(crate) struct WipeBufs(pub(crate) Vec<Vec<u8>>);

impl Drop for WipeBufs {
    fn drop(&mut self) {
        for b in &mut self.0 {
            zeroize::Zeroize::zeroize(b);
        }
    }
}

/// One read's chunks after opening: `bufs[..ok]` authenticated (in place), then the error that
/// stopped it, if any. Nothing at or after a failed chunk is ever returned.
struct Opened {
    bufs: WipeBufs,
    ok: usize,
    err: Option<kluis_core::Error>,
}

/// Opens the first `n` chunks of `bufs` in place, in order, chunk `first` first; stops at the
/// first failure, or when `cancel` is set (the reader was dropped).
fn open_part(
    opener: &DocumentOpener,
    mut bufs: WipeBufs,
    n: usize,
    first: u64,
    final_chunk: u64,
    cancel: &std::sync::atomic::AtomicBool,
) -> Opened {
    let mut ok = 0;
    for (index, chunk) in (first..).zip(bufs.0.iter_mut().take(n)) {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if let Err(e) = opener.open_chunk(index, index == final_chunk, chunk) {
            return Opened { bufs, ok, err: Some(e) };
        }
        ok += 1;
    }
    Opened { bufs, ok, err: None }
}

/// Reads a stored document chunk by chunk (see [`DocumentVault::open`]).
///
/// With [`VaultOptions::read_ahead`], while the caller consumes the chunks of one read, the next
/// read is opened on tokio's blocking pool, and the read after it is fetched while waiting for
/// that: at most two reads' worth of buffers. Errors keep their order: a chunk that fails, or a
/// read that fails, is reported after every authenticated chunk before it, and nothing after it
/// is returned. Dropping the reader stops the work in flight (the pool thread stops at the next
/// chunk) and wipes every buffer.
pub struct DocumentReader<'v, B> {
    backend: &'v B,
    object: ObjectName,
    object_len: u64,
    /// The next chunk to return.
    next_index: u64,
    /// The first chunk of the next read, and where it starts in the object.
    fetch_index: u64,
    offset: u64,
    final_chunk: u64,
    content_left: u64,
    /// The chunks being returned: `cur[..ok]` are opened in place, `pos` is the next; then
    /// `cur_err`, if set. Wiped on drop.
    cur: WipeBufs,
    ok: usize,
    pos: usize,
    cur_err: Option<BlobError>,
    /// An error was returned: every later call fails too.
    failed: bool,
    /// The next read, being opened on the blocking pool.
    ahead: Option<tokio::task::JoinHandle<Opened>>,
    /// Set when the reader is dropped: the read being opened stops at its next chunk.
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    read_ahead: bool,
    chunks_per_part: usize,
    c16: usize,
    opener: std::sync::Arc<DocumentOpener>,
    /// Where the wiped buffers go when the reader is dropped (at most `spare_max` kept).
    spare: &'v std::sync::Mutex<Vec<Vec<u8>>>,
    spare_max: usize,
}

impl<B> fmt::Debug for DocumentReader<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentReader")
            .field("object", &self.object)
            .field("next_index", &self.next_index)
            .field("final_chunk", &self.final_chunk)
            .field("read_ahead", &self.read_ahead)
            .finish_non_exhaustive()
    }
}

impl<B> DocumentReader<'_, B> {
    /// The chunk the last [`DocumentReader::next_chunk`] returned (empty before the first).
    fn current_chunk(&self) -> &[u8] {
        self.pos.checked_sub(1).and_then(|i| self.cur.0.get(i)).map_or(&[], Vec::as_slice)
    }
}

impl<B: BlobBackend> DocumentReader<'_, B> {
    /// The decrypted metadata.
    pub fn metadata(&self) -> &DocumentMetadata {
        self.opener.metadata()
    }

    /// The next chunk's authenticated plaintext (content only, no padding), or `None` after the
    /// final chunk. The slice is valid until the next call. After an error, every later call
    /// fails as well.
    pub async fn next_chunk(&mut self) -> Result<Option<&[u8]>> {
        if self.failed {
            return Err(BlobError::Invalid {
                what: "document reader",
                reason: "an earlier read failed or was cancelled",
            });
        }
        if self.next_index > self.final_chunk {
            return Ok(None);
        }
        // Until the step completes: a call that fails, or whose future is dropped half-way,
        // leaves the reader unusable rather than out of step.
        self.failed = true;
        let n = self.step().await?;
        self.failed = false;
        Ok(Some(self.cur.0.get(n).map(Vec::as_slice).ok_or(kluis_core::Error::Truncated)?))
    }

    /// Moves to the next chunk; returns its position in `cur`.
    async fn step(&mut self) -> Result<usize> {
        if self.pos >= self.ok {
            if let Some(e) = self.cur_err.take() {
                return Err(e);
            }
            self.advance().await?;
            if self.pos >= self.ok {
                return Err(self.cur_err.take().unwrap_or_else(|| kluis_core::Error::Truncated.into()));
            }
        }
        let last = self.next_index == self.final_chunk;
        let chunk = self.cur.0.get_mut(self.pos).ok_or(kluis_core::Error::Truncated)?;
        let keep = usize::try_from(self.content_left).unwrap_or(usize::MAX).min(chunk.len());
        chunk.truncate(keep);
        self.content_left -= keep as u64;
        self.next_index += 1;
        self.pos += 1;
        if last && self.content_left != 0 {
            return Err(kluis_core::Error::Truncated.into());
        }
        Ok(self.pos - 1)
    }

    /// Fetches the next whole chunks into `bufs` (one buffer per chunk); returns how many.
    async fn fetch(&mut self, bufs: &mut WipeBufs) -> Result<usize> {
        bufs.0.resize_with(self.chunks_per_part, Vec::new);
        // INVARIANT: the buffers may hold plaintext of chunks returned before, which the backend
        // overwrites in place. A buffer too small for a whole chunk would have to grow, and
        // growing frees the old allocation as it is: wipe such a buffer first.
        for b in bufs.0.iter_mut().filter(|b| b.capacity() < self.c16) {
            zeroize::Zeroize::zeroize(b);
        }
        let want = (self.chunks_per_part * self.c16) as u64;
        let end = self.offset.saturating_add(want).min(self.object_len);
        let n = self.backend.read_split(&self.object, self.offset, end, self.c16, &mut bufs.0).await?;
        if n == 0 {
            // The layout promised more chunks than the object holds.
            return Err(kluis_core::Error::Truncated.into());
        }
        self.offset = end;
        self.fetch_index += n as u64;
        Ok(n)
    }

    /// Replaces the returned chunks by the next read's, opened.
    async fn advance(&mut self) -> Result<()> {
        // The returned chunks' buffers take the next read; their plaintext is overwritten.
        let mut bufs = std::mem::take(&mut self.cur);
        self.ok = 0;
        self.pos = 0;
        loop {
            if let Some(ahead) = self.ahead.take() {
                // The next read is being opened on the pool: fetch the one after it meanwhile.
                // A failed fetch is reported after the chunks of the read before it.
                let fetched = if self.fetch_index <= self.final_chunk {
                    let first = self.fetch_index;
                    Some(self.fetch(&mut bufs).await.map(|n| (n, first)))
                } else {
                    None
                };
                let opened = ahead.await.map_err(|_| BlobError::Task("opening a document read panicked"))?;
                let failed = opened.err.is_some();
                self.cur = opened.bufs;
                self.ok = opened.ok;
                self.cur_err = opened.err.map(BlobError::from);
                match fetched {
                    // Nothing after a failed chunk is opened.
                    Some(Ok((n, first))) if !failed => self.spawn_open(bufs, n, first)?,
                    Some(Err(e)) if !failed => self.cur_err = Some(e),
                    // The last read: the set not needed any more goes back to the vault.
                    None => recycle(self.spare, self.spare_max, bufs),
                    _ => {}
                }
                return Ok(());
            }
            let first = self.fetch_index;
            let n = self.fetch(&mut bufs).await?;
            if self.read_ahead && self.fetch_index <= self.final_chunk {
                self.spawn_open(bufs, n, first)?;
                bufs = WipeBufs(take_spare(self.spare, self.chunks_per_part));
                continue;
            }
            let opened = open_part(&self.opener, bufs, n, first, self.final_chunk, &self.cancel);
            self.cur = opened.bufs;
            self.ok = opened.ok;
            self.cur_err = opened.err.map(BlobError::from);
            return Ok(());
        }
    }

    /// Starts opening a fetched read on the blocking pool.
    fn spawn_open(&mut self, bufs: WipeBufs, n: usize, first: u64) -> Result<()> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BlobError::Task("no tokio runtime"))?;
        let (opener, cancel, final_chunk) = (self.opener.clone(), self.cancel.clone(), self.final_chunk);
        self.ahead =
            Some(rt.spawn_blocking(move || open_part(&opener, bufs, n, first, final_chunk, &cancel)));
        Ok(())
    }
}

impl<B> Drop for DocumentReader<'_, B> {
    fn drop(&mut self) {
        // A read still being opened stops at its next chunk; the pool thread drops (wipes) it.
        self.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        recycle(self.spare, self.spare_max, std::mem::take(&mut self.cur));
    }
}

/// Wipes a set of buffers and gives them to the vault's pool (at most `max` kept there).
fn recycle(spare: &std::sync::Mutex<Vec<Vec<u8>>>, max: usize, mut bufs: WipeBufs) {
    for p in &mut bufs.0 {
        // Wipes the contents and the spare capacity; the allocation stays for reuse.
        zeroize::Zeroize::zeroize(p);
    }
    if let Ok(mut s) = spare.lock() {
        let room = max.saturating_sub(s.len());
        s.extend(bufs.0.drain(..).take(room));
    }
}
