//! Documents: a chunked, streamed AEAD (the STREAM construction) with an encrypted header.
//!
//! ```text
//! header  = prefix (44) | wrapped data key | encrypted metadata
//! prefix  = "kdoc" | version 0x01 | suite | chunk size log2 | flags | document nonce (32)
//!           | u16 wrapped-key length | u16 metadata length
//! chunks  = chunk 0 | chunk 1 | ... | final chunk        each = ciphertext | tag (16)
//! ```
//!
//! - A random 256-bit data key per document is sealed (a committing sealed value) by the domain or
//!   subject key, bound to tenant, domain and document id.
//! - Payload and metadata keys are HKDF-Expand(data key, label || first 40 header bytes).
//! - Chunk `i` uses nonce `i as 88-bit big-endian || flag`, flag 0x01 on the final chunk only.
//!   So reordering, dropping, duplicating or splicing chunks from another document, truncating
//!   at a chunk boundary and appending data all fail.
//! - The metadata (file name, extension, content type, length, created, uploaded by) is encrypted
//!   and padded to a multiple of 256 bytes; storage sees neither the name nor the type.
//! - Optional Padmé padding of the content (needs the length up front) hides the exact size: the
//!   stored stream is at most 12% longer than the content.
//!
//! Memory is bounded by the chunk size whatever the document size; any chunk range can be read and
//! checked without the rest ([`DocumentOpener::plan_range`]).

use std::fmt;

use crate::crypto::{AeadKey, Backend, Nonce96, Prk, Suite, TAG_LEN};
use crate::error::{Error, Result};
use crate::ids::{DomainName, TenantId, labelled_ad};
use crate::metrics;
use crate::seal::{KeyRef, SealKey, SealedHeader};
use crate::secret::{KeyMaterial, Plaintext, reserve_wiping};
use crate::wire::{Reader, put_bytes16};

use zeroize::{Zeroize, Zeroizing};

/// Document magic.
pub const MAGIC: [u8; 4] = *b"kdoc";
/// Current document format version.
pub const VERSION: u8 = 1;
/// Length of the random document nonce.
pub const DOC_NONCE_LEN: usize = 32;
/// Length of the fixed part of the header that keys are derived from.
pub const FIXED_LEN: usize = 4 + 4 + DOC_NONCE_LEN;
/// Length of the prefix that gives the whole header's length.
pub const PREFIX_LEN: usize = FIXED_LEN + 4;
/// Default chunk size: 64 KiB.
pub const DEFAULT_CHUNK_LOG2: u8 = 16;
/// Smallest chunk size (4 KiB).
pub const MIN_CHUNK_LOG2: u8 = 12;
/// Largest chunk size (16 MiB).
pub const MAX_CHUNK_LOG2: u8 = 24;
const FLAG_PADDED: u8 = 0x01;
const META_BUCKET: usize = 256;
const META_VERSION: u8 = 1;
const ZERO_NONCE: Nonce96 = [0u8; 12];

/// Where a document belongs; bound to its data key.
#[derive(Clone, Copy, Debug)]
pub struct DocumentContext<'a> {
    /// Tenant.
    pub tenant: &'a TenantId,
    /// Domain.
    pub domain: &'a DomainName,
    /// Document id (unique within the tenant).
    pub document_id: &'a str,
}

impl DocumentContext<'_> {
    fn ad(&self) -> Result<Vec<u8>> {
        labelled_ad(
            b"kluis/doc-key/v1",
            &[self.tenant.as_str().as_bytes(), self.domain.as_str().as_bytes(), self.document_id.as_bytes()],
        )
    }
}

/// What the encrypted header says about a document. `Debug` hides names and types.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DocumentMetadata {
    /// Original file name, e.g. `diagnose-jan-jansen.pdf`.
    pub file_name: String,
    /// Extension, e.g. `pdf`.
    pub extension: String,
    /// Content type, e.g. `application/pdf`.
    pub content_type: String,
    /// Content length if known when the upload started (required for padding).
    pub length: Option<u64>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: i64,
    /// Who uploaded it (a user id).
    pub uploaded_by: String,
}

impl fmt::Debug for DocumentMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentMetadata")
            .field("file_name", &"[REDACTED]")
            .field("extension", &"[REDACTED]")
            .field("content_type", &"[REDACTED]")
            .field("length", &self.length)
            .field("created_unix", &self.created_unix)
            .field("uploaded_by", &"[REDACTED]")
            .finish()
    }
}

/// Wipes the strings (contents and spare capacity) and the numbers. Kluis wipes the metadata it
/// decrypts when it drops it ([`DocumentOpener`]); copies an application makes are its own.
impl Zeroize for DocumentMetadata {
    fn zeroize(&mut self) {
        self.file_name.zeroize();
        self.extension.zeroize();
        self.content_type.zeroize();
        self.length.zeroize();
        self.created_unix.zeroize();
        self.uploaded_by.zeroize();
    }
}

impl DocumentMetadata {
    /// The encoded length, padded to a multiple of 256 bytes; checks every length first.
    fn encoded_len(&self) -> Result<usize> {
        let mut n = 1 + 1 + 8 + 8;
        for (what, s) in [
            ("file name", &self.file_name),
            ("extension", &self.extension),
            ("content type", &self.content_type),
            ("uploaded by", &self.uploaded_by),
        ] {
            u16::try_from(s.len()).map_err(|_| Error::invalid(what, "longer than 65535 bytes"))?;
            n += 2 + s.len();
        }
        let padded = n.div_ceil(META_BUCKET) * META_BUCKET;
        if padded > usize::from(u16::MAX) - TAG_LEN {
            return Err(Error::invalid("document metadata", "longer than 64 KiB"));
        }
        Ok(padded)
    }

    /// The padded plaintext encoding. INVARIANT: written into one buffer allocated at its final
    /// size, so it is never reallocated (which would leave a copy of the names behind), and wiped
    /// on drop.
    fn encode(&self) -> Result<Zeroizing<Vec<u8>>> {
        let padded = self.encoded_len()?;
        let mut out = Zeroizing::new(Vec::with_capacity(padded));
        out.push(META_VERSION);
        put_bytes16(&mut out, "file name", self.file_name.as_bytes())?;
        put_bytes16(&mut out, "extension", self.extension.as_bytes())?;
        put_bytes16(&mut out, "content type", self.content_type.as_bytes())?;
        match self.length {
            Some(l) => {
                out.push(1);
                out.extend_from_slice(&l.to_be_bytes());
            }
            None => {
                out.push(0);
                out.extend_from_slice(&[0u8; 8]);
            }
        }
        out.extend_from_slice(&self.created_unix.to_be_bytes());
        put_bytes16(&mut out, "uploaded by", self.uploaded_by.as_bytes())?;
        out.resize(padded, 0);
        Ok(out)
    }

    /// Decodes decrypted metadata. On failure the fields read so far are wiped.
    fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b, "document metadata");
        let v = r.u8()?;
        if v != META_VERSION {
            return Err(Error::UnsupportedVersion { what: "document metadata", version: u16::from(v) });
        }
        let mut m = Zeroizing::new(Self::default());
        m.file_name = r.str16()?.to_owned();
        m.extension = r.str16()?.to_owned();
        m.content_type = r.str16()?.to_owned();
        let has_len = r.u8()?;
        let len = r.u64()?;
        // One encoding per value: an unknown length is flag 0 with eight zero bytes.
        m.length = match (has_len, len) {
            (0, 0) => None,
            (0, _) => return Err(Error::malformed("document metadata", "length without its flag")),
            (1, _) => Some(len),
            _ => return Err(Error::malformed("document metadata", "bad length flag")),
        };
        m.created_unix = i64::from_be_bytes(r.array()?);
        m.uploaded_by = r.str16()?.to_owned();
        if r.rest().iter().any(|&b| b != 0) {
            return Err(Error::malformed("document metadata", "non-zero padding"));
        }
        Ok(std::mem::take(&mut *m))
    }
}

/// Options for a new document.
#[derive(Debug, Clone, Copy)]
pub struct DocumentOptions {
    /// AEAD suite.
    pub suite: Suite,
    /// Chunk size as a power of two (12 to 24).
    pub chunk_log2: u8,
    /// Pad the content with Padmé (requires `DocumentMetadata::length`).
    pub pad: bool,
    /// Backend.
    pub backend: Backend,
}

impl Default for DocumentOptions {
    fn default() -> Self {
        Self {
            suite: Suite::default(),
            chunk_log2: DEFAULT_CHUNK_LOG2,
            pad: false,
            backend: Backend::preferred(),
        }
    }
}

/// Padmé padding (Nikitin et al., PETS 2019): rounds `len` up so that at most O(log log len) bits
/// of the length leak; overhead at most about 12%.
pub fn padme(len: u64) -> Result<u64> {
    if len < 2 {
        return Ok(len);
    }
    let e = 63 - len.leading_zeros(); // floor(log2 len)
    let s = 32 - e.leading_zeros(); // floor(log2 e) + 1
    let last_bits = e.saturating_sub(s);
    let mask = (1u64 << last_bits) - 1;
    len.checked_add(mask).map(|v| v & !mask).ok_or_else(|| Error::LimitReached("document length"))
}

/// Splits pushed bytes into units of `size` for the streaming sealer and opener. The last unit
/// seen may be the document's final one, so it is held back in `held` until at least one more byte
/// arrives; `full` is called for every unit known not to be the last, straight from `data` where
/// possible (no copy into `held`).
fn feed_units(
    held: &mut Vec<u8>,
    mut data: &[u8],
    size: usize,
    mut full: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    // Top up the held unit; if it is full and more data follows, it is not the last.
    if !held.is_empty() || data.len() <= size {
        let take = (size - held.len()).min(data.len());
        let (head, rest) = data.split_at(take);
        held.extend_from_slice(head);
        data = rest;
        if data.is_empty() {
            return Ok(());
        }
        let r = full(held.as_slice());
        held.clear();
        r?;
    }
    // Whole units straight from the input, while more data follows each of them.
    while data.len() > size {
        let (unit, rest) = data.split_at(size);
        full(unit)?;
        data = rest;
    }
    held.extend_from_slice(data);
    Ok(())
}

fn chunk_nonce(index: u64, last: bool) -> Nonce96 {
    let mut n = [0u8; 12];
    if let Some(dst) = n.get_mut(3..11) {
        dst.copy_from_slice(&index.to_be_bytes());
    }
    if let Some(f) = n.get_mut(11) {
        *f = u8::from(last);
    }
    n
}

struct DocKeys {
    payload: AeadKey,
    meta: AeadKey,
}

fn derive_doc_keys(dk: &KeyMaterial, fixed: &[u8], suite: Suite, backend: Backend) -> Result<DocKeys> {
    let prk = Prk::new(backend, dk)?;
    let mut k = zeroize::Zeroizing::new([0u8; 32]);
    prk.expand(&[b"kluis/doc/v1/payload", fixed], k.as_mut_slice())?;
    let payload = AeadKey::new(backend, suite, &k)?;
    prk.expand(&[b"kluis/doc/v1/meta", fixed], k.as_mut_slice())?;
    let meta = AeadKey::new(backend, suite, &k)?;
    Ok(DocKeys { payload, meta })
}

/// Encrypts one document, chunk by chunk. Use [`DocumentSealer::seal_chunk`] for zero-copy in-place
/// sealing, or [`StreamSealer`] to push arbitrary slices.
pub struct DocumentSealer {
    header: Vec<u8>,
    payload: AeadKey,
    chunk_size: usize,
    next_index: u64,
    written: u64,
    /// (declared content length, stream length = the padded length, or the declared one)
    padded: Option<(u64, u64)>,
    finished: bool,
}

impl fmt::Debug for DocumentSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentSealer")
            .field("chunk_size", &self.chunk_size)
            .field("next_index", &self.next_index)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl DocumentSealer {
    /// Starts a document: draws a data key, seals it under `wrapping` (a domain or subject key),
    /// and builds the encrypted header.
    pub fn new(
        wrapping: &SealKey,
        ctx: &DocumentContext<'_>,
        meta: &DocumentMetadata,
        opts: DocumentOptions,
    ) -> Result<Self> {
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&opts.chunk_log2) {
            return Err(Error::invalid("chunk size", "log2 must be between 12 and 24"));
        }
        // (declared content length, stream length): a declared length is enforced, padded or not.
        let padded = match (opts.pad, meta.length) {
            (true, None) => return Err(Error::invalid("document", "padding needs the length up front")),
            (true, Some(len)) => Some((len, padme(len)?)),
            (false, Some(len)) => Some((len, len)),
            (false, None) => None,
        };
        let dk = KeyMaterial::generate()?;
        let wrapped = wrapping.seal_ad(opts.suite, &ctx.ad()?, dk.expose_secret())?;
        let doc_nonce: [u8; DOC_NONCE_LEN] = crate::random::public_array()?;
        // Encrypted in place below: it never holds plaintext outside this wiping buffer.
        let mut meta_buf = meta.encode()?;

        let mut header = Vec::with_capacity(PREFIX_LEN + wrapped.len() + meta_buf.len() + TAG_LEN);
        header.extend_from_slice(&MAGIC);
        header.push(VERSION);
        header.push(opts.suite.id());
        header.push(opts.chunk_log2);
        header.push(if opts.pad { FLAG_PADDED } else { 0 });
        header.extend_from_slice(&doc_nonce);
        let wl = u16::try_from(wrapped.len()).map_err(|_| Error::ApiMisuse("wrapped key length"))?;
        let ml = u16::try_from(meta_buf.len() + TAG_LEN)
            .map_err(|_| Error::invalid("document metadata", "too long"))?;
        header.extend_from_slice(&wl.to_be_bytes());
        header.extend_from_slice(&ml.to_be_bytes());
        header.extend_from_slice(&wrapped);

        let fixed = header.get(..FIXED_LEN).ok_or_else(|| Error::ApiMisuse("header"))?.to_vec();
        let keys = derive_doc_keys(&dk, &fixed, opts.suite, opts.backend)?;
        // The metadata AD is everything before it: prefix and wrapped key.
        let tag = keys.meta.seal_detached(&ZERO_NONCE, &header, &mut meta_buf)?;
        header.extend_from_slice(&meta_buf);
        header.extend_from_slice(&tag);

        Ok(Self {
            header,
            payload: keys.payload,
            chunk_size: 1usize << opts.chunk_log2,
            next_index: 0,
            written: 0,
            padded,
            finished: false,
        })
    }

    /// The header bytes: write them first.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The length of the stream to seal: the content length, or its padded length.
    pub fn padded_len(&self) -> Option<u64> {
        self.padded.map(|(_, p)| p)
    }

    /// Seals one chunk in place: `buf` holds the plaintext (exactly `chunk_size` bytes unless
    /// `last`; at most `chunk_size` if `last`) and gets the tag appended. The final chunk must be
    /// sealed with `last = true`, once; after it nothing more is accepted.
    pub fn seal_chunk(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<()> {
        if self.finished {
            return Err(Error::ApiMisuse("document already finished"));
        }
        if buf.len() > self.chunk_size || (!last && buf.len() != self.chunk_size) {
            return Err(Error::ApiMisuse("chunk has the wrong size"));
        }
        if last && buf.is_empty() && self.next_index > 0 {
            return Err(Error::ApiMisuse("the final chunk may be empty only for an empty document"));
        }
        let total = self
            .written
            .checked_add(buf.len() as u64)
            .ok_or_else(|| Error::LimitReached("document length"))?;
        if let Some((_, padded)) = self.padded
            && (total > padded || (last && total != padded))
        {
            return Err(Error::invalid("document", "content length differs from the declared length"));
        }
        let tag = self.seal_slice(buf, last, total)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Seals a chunk whose size was already checked; `total` is the stream length after it.
    fn seal_slice(&mut self, chunk: &mut [u8], last: bool, total: u64) -> Result<[u8; TAG_LEN]> {
        let nonce = chunk_nonce(self.next_index, last);
        let tag = self.payload.seal_detached(&nonce, &[], chunk)?;
        self.next_index =
            self.next_index.checked_add(1).ok_or_else(|| Error::LimitReached("chunk counter"))?;
        self.written = total;
        self.finished = last;
        Ok(tag)
    }

    /// Seals a full, non-final chunk at the tail of `out`: copies `plain` there, seals it in place,
    /// appends the tag. One copy per byte, no allocation beyond `out`'s growth.
    fn seal_full_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.finished || plain.len() != self.chunk_size {
            return Err(Error::ApiMisuse("chunk has the wrong size"));
        }
        let total = self
            .written
            .checked_add(plain.len() as u64)
            .ok_or_else(|| Error::LimitReached("document length"))?;
        if let Some((_, padded)) = self.padded
            && total > padded
        {
            return Err(Error::invalid("document", "content length differs from the declared length"));
        }
        let start = out.len();
        out.reserve(plain.len() + TAG_LEN);
        out.extend_from_slice(plain);
        let tag = match out.get_mut(start..) {
            Some(dst) => self.seal_slice(dst, false, total),
            None => Err(Error::ApiMisuse("output buffer")),
        };
        match tag {
            Ok(t) => {
                out.extend_from_slice(&t);
                Ok(())
            }
            Err(e) => {
                if let Some(tail) = out.get_mut(start..) {
                    zeroize::Zeroize::zeroize(tail);
                }
                out.truncate(start);
                Err(e)
            }
        }
    }
}

/// Pushes arbitrary slices through a [`DocumentSealer`], holding back at most one chunk.
pub struct StreamSealer {
    inner: DocumentSealer,
    /// The held plaintext chunk; reused for every chunk and wiped when dropped.
    buf: zeroize::Zeroizing<Vec<u8>>,
    content: u64,
}

impl fmt::Debug for StreamSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSealer").field("inner", &self.inner).field("content", &self.content).finish()
    }
}

impl StreamSealer {
    /// Wraps a sealer.
    pub fn new(inner: DocumentSealer) -> Self {
        let cap = inner.chunk_size + TAG_LEN;
        Self { inner, buf: zeroize::Zeroizing::new(Vec::with_capacity(cap)), content: 0 }
    }

    /// The header bytes.
    pub fn header(&self) -> &[u8] {
        self.inner.header()
    }

    /// Appends the ciphertext of every chunk that is complete (and known not to be the last) to
    /// `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.content = self
            .content
            .checked_add(data.len() as u64)
            .ok_or_else(|| Error::LimitReached("document length"))?;
        if let Some((declared, _)) = self.inner.padded
            && self.content > declared
        {
            return Err(Error::invalid("document", "content is longer than the declared length"));
        }
        let cs = self.inner.chunk_size;
        // The held plaintext is overwritten by the next chunk and wiped on drop.
        let inner = &mut self.inner;
        feed_units(&mut self.buf, data, cs, |unit| inner.seal_full_into(unit, out))
    }

    /// Ends the content. Returns the remaining chunks (held data, padding, the final chunk) one at
    /// a time, each at most one chunk long.
    pub fn finish(self) -> Result<SealerTail> {
        if let Some((declared, _)) = self.inner.padded
            && self.content != declared
        {
            return Err(Error::invalid("document", "content length differs from the declared length"));
        }
        let pad_left = self.inner.padded.map(|(d, p)| p - d).unwrap_or(0);
        Ok(SealerTail { inner: self.inner, buf: Some(self.buf), pad_left })
    }
}

/// The last chunks of a [`StreamSealer`].
pub struct SealerTail {
    inner: DocumentSealer,
    /// The held plaintext chunk (capacity: a chunk and its tag). Wiped if it is dropped unsealed:
    /// the tail dropped early, or sealing failed.
    buf: Option<Zeroizing<Vec<u8>>>,
    pad_left: u64,
}

impl fmt::Debug for SealerTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealerTail").field("pad_left", &self.pad_left).finish_non_exhaustive()
    }
}

impl SealerTail {
    /// The next sealed chunk, or `None` when done.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(mut buf) = self.buf.take() else { return Ok(None) };
        let cs = self.inner.chunk_size;
        // Fill the held chunk with padding.
        let room = (cs - buf.len()) as u64;
        let add = room.min(self.pad_left);
        let filled = buf.len() + add as usize;
        buf.resize(filled, 0);
        self.pad_left -= add;
        let last = self.pad_left == 0;
        self.inner.seal_chunk(&mut buf, last)?;
        if !last {
            // A full chunk and more padding to come.
            self.buf = Some(Zeroizing::new(Vec::with_capacity(cs + TAG_LEN)));
        }
        // Sealed: the buffer holds ciphertext only.
        Ok(Some(std::mem::take(&mut *buf)))
    }
}

/// A document header, parsed but not decrypted.
#[derive(Clone)]
pub struct DocumentHeader {
    raw: Vec<u8>,
    suite: Suite,
    chunk_log2: u8,
    padded: bool,
    wrapped_len: usize,
    wrapping_key: KeyRef,
}

impl fmt::Debug for DocumentHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentHeader")
            .field("len", &self.raw.len())
            .field("suite", &self.suite)
            .field("chunk_log2", &self.chunk_log2)
            .field("padded", &self.padded)
            .field("wrapping_key", &self.wrapping_key)
            .finish()
    }
}

impl DocumentHeader {
    /// From the first [`PREFIX_LEN`] bytes, the length of the whole header.
    pub fn header_len(prefix: &[u8]) -> Result<usize> {
        let mut r = Reader::new(prefix, "document header");
        if r.take(4)? != MAGIC {
            return Err(Error::malformed("document header", "bad magic"));
        }
        let v = r.u8()?;
        if v != VERSION {
            return Err(Error::UnsupportedVersion { what: "document", version: u16::from(v) });
        }
        r.take(FIXED_LEN - 5)?;
        let wl = usize::from(r.u16()?);
        let ml = usize::from(r.u16()?);
        Ok(PREFIX_LEN + wl + ml)
    }

    /// Parses a header (exactly [`DocumentHeader::header_len`] bytes, or more: the rest is ignored).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let len = Self::header_len(bytes)?;
        let raw = bytes.get(..len).ok_or_else(|| Error::malformed("document header", "too short"))?.to_vec();
        let mut r = Reader::new(&raw, "document header");
        r.take(5)?;
        let suite = Suite::from_id(r.u8()?)?;
        let chunk_log2 = r.u8()?;
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
            return Err(Error::malformed("document header", "chunk size out of range"));
        }
        let flags = r.u8()?;
        if flags & !FLAG_PADDED != 0 {
            return Err(Error::malformed("document header", "unknown flags"));
        }
        r.take(DOC_NONCE_LEN)?;
        let wl = usize::from(r.u16()?);
        let ml = usize::from(r.u16()?);
        if ml < TAG_LEN {
            return Err(Error::malformed("document header", "metadata too short"));
        }
        let wrapped = r.take(wl)?;
        let wrapping_key = SealedHeader::parse(wrapped)?.key;
        r.take(ml)?;
        r.finish()?;
        Ok(Self { raw, suite, chunk_log2, padded: flags & FLAG_PADDED != 0, wrapped_len: wl, wrapping_key })
    }

    /// The header's length in bytes (where chunk 0 starts).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Always false: a header has a fixed minimum size.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Which key sealed the data key (domain key version or subject key version).
    pub fn wrapping_key(&self) -> KeyRef {
        self.wrapping_key
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        1usize << self.chunk_log2
    }

    /// Unwraps the data key with `wrapping` and decrypts the metadata.
    pub fn open(&self, wrapping: &SealKey, ctx: &DocumentContext<'_>) -> Result<DocumentOpener> {
        self.open_with(wrapping, ctx, wrapping.backend())
    }

    /// As [`DocumentHeader::open`] with a chosen backend for the payload.
    pub fn open_with(
        &self,
        wrapping: &SealKey,
        ctx: &DocumentContext<'_>,
        backend: Backend,
    ) -> Result<DocumentOpener> {
        let wrapped = self
            .raw
            .get(PREFIX_LEN..PREFIX_LEN + self.wrapped_len)
            .ok_or_else(|| Error::ApiMisuse("header"))?;
        let dk_bytes = wrapping
            .open_ad(&ctx.ad()?, wrapped, "document key")
            .map_err(crate::seal::OpenFailure::into_error)?;
        let dk = KeyMaterial::from_slice(dk_bytes.expose_secret())?;
        let fixed = self.raw.get(..FIXED_LEN).ok_or_else(|| Error::ApiMisuse("header"))?;
        let keys = derive_doc_keys(&dk, fixed, self.suite, backend)?;
        let meta_start = PREFIX_LEN + self.wrapped_len;
        let ad = self.raw.get(..meta_start).ok_or_else(|| Error::ApiMisuse("header"))?;
        let ct = self.raw.get(meta_start..).ok_or_else(|| Error::ApiMisuse("header"))?;
        let (body, tag) = ct.split_at(ct.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| Error::ApiMisuse("tag"))?;
        let mut pt = Plaintext::new(body.to_vec()).into_zeroizing();
        if keys.meta.open_detached(&ZERO_NONCE, ad, &mut pt, &tag).is_err() {
            metrics::decrypt_failed("document metadata", false);
            return Err(Error::Decrypt);
        }
        let mut meta = Zeroizing::new(DocumentMetadata::decode(&pt)?);
        if self.padded && meta.length.is_none() {
            return Err(Error::malformed("document header", "padded document without a length"));
        }
        Ok(DocumentOpener {
            header_len: self.raw.len(),
            chunk_size: self.chunk_size(),
            padded: self.padded,
            payload: keys.payload,
            meta: std::mem::take(&mut *meta),
        })
    }
}

/// Where the chunks of a stored document are, computed from the object's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of chunks (at least 1).
    pub chunks: u64,
    /// Decrypted stream length (content plus padding).
    pub stream_len: u64,
    /// Content length.
    pub content_len: u64,
}

/// Which ciphertext bytes to fetch for a plaintext range, and how to cut the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangePlan {
    /// First chunk index.
    pub first_chunk: u64,
    /// Last chunk index (inclusive).
    pub last_chunk: u64,
    /// Byte offset of the first chunk in the object.
    pub object_start: u64,
    /// Byte offset just past the last chunk.
    pub object_end: u64,
    /// Plaintext bytes to skip at the start of the first chunk.
    pub skip: u64,
    /// Plaintext bytes to return.
    pub take: u64,
    /// Index of the document's final chunk.
    pub final_chunk: u64,
}

/// Decrypts one document's chunks. Its decrypted metadata is wiped when it is dropped.
pub struct DocumentOpener {
    header_len: usize,
    chunk_size: usize,
    padded: bool,
    payload: AeadKey,
    meta: DocumentMetadata,
}

impl Drop for DocumentOpener {
    fn drop(&mut self) {
        self.meta.zeroize();
    }
}

impl fmt::Debug for DocumentOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentOpener")
            .field("header_len", &self.header_len)
            .field("chunk_size", &self.chunk_size)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl DocumentOpener {
    /// The decrypted metadata.
    pub fn metadata(&self) -> &DocumentMetadata {
        &self.meta
    }

    /// Header length (offset of chunk 0).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The layout of a stored object of `object_len` bytes. A length that cannot come from a whole
    /// document is [`Error::Truncated`] (too short for its final chunk) or malformed.
    pub fn layout(&self, object_len: u64) -> Result<Layout> {
        let body = object_len.checked_sub(self.header_len as u64).ok_or_else(|| Error::Truncated)?;
        let c16 = (self.chunk_size + TAG_LEN) as u64;
        if body < TAG_LEN as u64 {
            return Err(Error::Truncated);
        }
        let chunks = body.div_ceil(c16);
        let last_ct = body - (chunks - 1) * c16;
        if last_ct < TAG_LEN as u64 {
            return Err(Error::Truncated);
        }
        if chunks > 1 && last_ct == TAG_LEN as u64 {
            return Err(Error::malformed("document", "empty final chunk"));
        }
        let stream_len = body - chunks * TAG_LEN as u64;
        let content_len = match self.meta.length {
            Some(declared) => {
                if self.expected_stream_len(declared)? != stream_len {
                    return Err(Error::malformed("document", "length does not match the declared length"));
                }
                declared
            }
            None => stream_len,
        };
        Ok(Layout { chunks, stream_len, content_len })
    }

    /// Plans the read of plaintext bytes `start..end` (clamped to the content).
    pub fn plan_range(&self, object_len: u64, start: u64, end: u64) -> Result<RangePlan> {
        let layout = self.layout(object_len)?;
        let end = end.min(layout.content_len);
        if start > end {
            return Err(Error::invalid("range", "start is after the end"));
        }
        let cs = self.chunk_size as u64;
        let c16 = cs + TAG_LEN as u64;
        let first_chunk = (start / cs).min(layout.chunks - 1);
        let last_chunk = if end == start { first_chunk } else { ((end - 1) / cs).min(layout.chunks - 1) };
        let hl = self.header_len as u64;
        // No overflow: both chunk indexes are below `chunks`, and chunks * c16 <= body + c16.
        let object_start = hl.saturating_add(first_chunk.saturating_mul(c16)).min(object_len);
        let object_end = hl.saturating_add(last_chunk.saturating_add(1).saturating_mul(c16)).min(object_len);
        Ok(RangePlan {
            first_chunk,
            last_chunk,
            object_start,
            object_end,
            skip: start - first_chunk * cs,
            take: end - start,
            final_chunk: layout.chunks - 1,
        })
    }

    fn expected_stream_len(&self, declared: u64) -> Result<u64> {
        if self.padded { padme(declared) } else { Ok(declared) }
    }

    /// Copies `ct` into `buf` and opens it as chunk `index`. When authentication fails, it tells
    /// a genuine chunk in the wrong role apart: a non-final chunk where the final one should be
    /// is [`Error::Truncated`]; a final chunk followed by more data is [`Error::TrailingData`].
    /// Anything else stays the opaque [`Error::Decrypt`].
    fn open_chunk_from(&self, index: u64, last: bool, ct: &[u8], buf: &mut Vec<u8>) -> Result<usize> {
        buf.clear();
        buf.extend_from_slice(ct);
        match self.open_chunk(index, last, buf) {
            Err(Error::Decrypt) => {
                buf.clear();
                buf.extend_from_slice(ct);
                let other_role = self.open_chunk(index, !last, buf).is_ok();
                zeroize::Zeroize::zeroize(buf);
                buf.clear();
                Err(match (other_role, last) {
                    (true, true) => Error::Truncated,
                    (true, false) => Error::TrailingData,
                    (false, _) => Error::Decrypt,
                })
            }
            other => other,
        }
    }

    /// Opens chunk `index` from `ct` directly at the tail of `out` (one copy, no temporary).
    /// On failure `out` is left as it was and the error is classified as in `open_chunk_from`.
    fn open_chunk_into(&self, index: u64, last: bool, ct: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let c16 = self.chunk_size + TAG_LEN;
        if ct.len() < TAG_LEN || ct.len() > c16 || (!last && ct.len() != c16) {
            return Err(Error::malformed("document chunk", "wrong length"));
        }
        let (body, tag) = ct.split_at(ct.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| Error::ApiMisuse("tag"))?;
        let start = out.len();
        // `out` holds the plaintext of earlier chunks: if it must grow, the old allocation is
        // wiped, not just freed.
        reserve_wiping(out, body.len());
        out.extend_from_slice(body);
        let ok = match out.get_mut(start..) {
            Some(dst) => self.payload.open_detached(&chunk_nonce(index, last), &[], dst, &tag).is_ok(),
            None => false,
        };
        if ok {
            return Ok(());
        }
        if let Some(tail) = out.get_mut(start..) {
            zeroize::Zeroize::zeroize(tail);
        }
        out.truncate(start);
        // Error path only: classify (truncated / trailing data / opaque) with a scratch buffer.
        let mut scratch = Vec::with_capacity(ct.len());
        self.open_chunk_from(index, last, ct, &mut scratch).and(Err(Error::Decrypt))
    }

    /// Opens chunk `index` in place; `buf` holds its ciphertext and tag. Returns the plaintext
    /// length (`buf` is truncated to it).
    pub fn open_chunk(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<usize> {
        if buf.len() < TAG_LEN || buf.len() > self.chunk_size + TAG_LEN {
            return Err(Error::malformed("document chunk", "wrong length"));
        }
        if !last && buf.len() != self.chunk_size + TAG_LEN {
            return Err(Error::malformed("document chunk", "short chunk before the final chunk"));
        }
        let n = buf.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(buf.get(n..).ok_or_else(|| Error::ApiMisuse("chunk"))?);
        let body = buf.get_mut(..n).ok_or_else(|| Error::ApiMisuse("chunk"))?;
        if self.payload.open_detached(&chunk_nonce(index, last), &[], body, &tag).is_err() {
            metrics::decrypt_failed("document chunk", false);
            buf.clear();
            return Err(Error::Decrypt);
        }
        buf.truncate(n);
        Ok(n)
    }

    /// Decrypts a planned range: `ciphertext` is the object bytes `plan.object_start..plan.object_end`.
    pub fn open_range(&self, plan: &RangePlan, ciphertext: &[u8]) -> Result<Plaintext> {
        // Sized by what was actually supplied, never by the (untrusted) planned length alone: the
        // plaintext is never longer than its ciphertext.
        let len = usize::try_from(plan.take).unwrap_or(usize::MAX).min(ciphertext.len());
        let mut out = zeroize::Zeroizing::new(vec![0u8; len]);
        let n = self.open_range_into(plan, ciphertext, &mut out)?;
        out.truncate(n);
        Ok(Plaintext::new(std::mem::take(&mut *out)))
    }

    /// [`DocumentOpener::open_range`] into `out`, which holds at least the range; returns the
    /// number of bytes written. On failure every byte of `out` is zero: no plaintext of the
    /// chunks opened before the failure is left in it.
    fn open_range_into(&self, plan: &RangePlan, ciphertext: &[u8], out: &mut [u8]) -> Result<usize> {
        let r = self.open_range_inner(plan, ciphertext, out);
        if r.is_err() {
            out.zeroize();
        }
        r
    }

    fn open_range_inner(&self, plan: &RangePlan, ciphertext: &[u8], out: &mut [u8]) -> Result<usize> {
        let c16 = self.chunk_size + TAG_LEN;
        let mut skip = plan.skip;
        let mut take = plan.take;
        let mut at = 0usize;
        // One chunk's plaintext at a time; it never grows (each chunk is at most `c16` bytes)
        // and is wiped when dropped, on every path.
        let mut buf = Zeroizing::new(Vec::with_capacity(c16));
        for (i, ct) in (plan.first_chunk..=plan.last_chunk).zip(ciphertext.chunks(c16)) {
            self.open_chunk_from(i, i == plan.final_chunk, ct, &mut buf)?;
            let from = usize::try_from(skip).unwrap_or(usize::MAX).min(buf.len());
            let n = usize::try_from(take).unwrap_or(usize::MAX).min(buf.len() - from);
            let dst = out.get_mut(at..at + n).ok_or(Error::Truncated)?;
            dst.copy_from_slice(buf.get(from..from + n).unwrap_or(&[]));
            at += n;
            skip = skip.saturating_sub(buf.len() as u64);
            take -= n as u64;
        }
        if take != 0 {
            return Err(Error::Truncated);
        }
        Ok(at)
    }

    /// A sequential reader over the chunks (after the header).
    pub fn stream(self) -> StreamOpener {
        let cap = 2 * (self.chunk_size + TAG_LEN);
        StreamOpener { opener: self, buf: Vec::with_capacity(cap), index: 0, stream: 0, emitted: 0 }
    }
}

#[cfg(test)]
#[path = "document_wipe_tests.rs"]
mod wipe_tests;

/// Opens a document sequentially from pushed ciphertext, holding back at most one chunk.
/// Plaintext is released chunk by chunk once authenticated; [`StreamOpener::finish`] must be
/// called and succeed before the content is trusted as complete (it detects truncation).
pub struct StreamOpener {
    opener: DocumentOpener,
    buf: Vec<u8>,
    index: u64,
    stream: u64,
    emitted: u64,
}

impl fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamOpener").field("index", &self.index).finish_non_exhaustive()
    }
}

impl StreamOpener {
    /// The metadata.
    pub fn metadata(&self) -> &DocumentMetadata {
        &self.opener.meta
    }

    /// Opens the next chunk from `ct` straight into the tail of `out`, keeping only content (not
    /// padding) there.
    fn open_into(&mut self, last: bool, ct: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        self.opener.open_chunk_into(self.index, last, ct, out)?;
        let n = out.len() - start;
        self.stream += n as u64;
        let limit = self.opener.meta.length.unwrap_or(u64::MAX);
        let room = limit.saturating_sub(self.emitted);
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(n);
        if keep < n {
            // Padding (zeros) or content beyond the declared length: not released.
            if let Some(tail) = out.get_mut(start + keep..) {
                zeroize::Zeroize::zeroize(tail);
            }
            out.truncate(start + keep);
        }
        self.emitted += keep as u64;
        if !last {
            self.index = self.index.checked_add(1).ok_or_else(|| Error::LimitReached("chunk counter"))?;
        }
        Ok(())
    }

    /// Feeds ciphertext; appends authenticated plaintext to `out`. A chunk is released once at
    /// least one byte follows it (so it is known not to be the final one).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let c16 = self.opener.chunk_size + TAG_LEN;
        // `open_into` needs `&mut self`, so the held ciphertext is lent out for the call.
        let mut held = std::mem::take(&mut self.buf);
        let r = feed_units(&mut held, data, c16, |unit| self.open_into(false, unit, out));
        self.buf = held;
        r
    }

    /// Ends the stream: opens the held final chunk and appends its plaintext to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.buf.is_empty() {
            return Err(Error::Truncated);
        }
        let held = std::mem::take(&mut self.buf);
        if held.len() < TAG_LEN {
            return Err(Error::Truncated);
        }
        if self.index > 0 && held.len() == TAG_LEN {
            return Err(Error::malformed("document", "empty final chunk"));
        }
        self.open_into(true, &held, out)?;
        if let Some(declared) = self.opener.meta.length
            && self.opener.expected_stream_len(declared)? != self.stream
        {
            return Err(Error::malformed("document", "length does not match the declared length"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "document_format_tests.rs"]
mod format_tests;
