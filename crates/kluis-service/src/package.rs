//! Subject access / portability packages (GDPR art. 15 and 20): one archive per subject with every
//! record (JSON) and every document's content under its original file name, encrypted for the
//! requester with [age](https://age-encryption.org/v1), streamed with bounded memory.
//!
//! The package is an age file (X25519 recipients, or one scrypt passphrase recipient) whose
//! plaintext is a POSIX tar stream:
//!
//! ```text
//! records/<collection>/<record id>.json      one record each (fields of withheld domains left out)
//! documents/<document id>/<file name>        the document's content, decrypted
//! manifest.json                              last: what is in the package, what was withheld and why
//! ```
//!
//! [`write_package`] writes it from a [`PackagePlan`] (which collections and documents to read,
//! with which keys, and which domains are withheld and why); [`crate::Service::export_package`]
//! makes the plan from a principal's roles, and `kluis export` from the operator's `--domains`.
//! Neither writes anything before the export's audit entry is committed. [`read_package`] opens
//! a package again (for tests and for the requester's tooling).
//!
//! Memory: records are read a page of [`RECORD_PAGE`] at a time and each written as its own tar
//! entry; a document's content goes chunk by chunk (the vault's chunks) through a SHA-256 and
//! into the age writer, which encrypts 64 KiB at a time. Neither the archive nor a document is
//! ever held whole. What grows with the subject is the manifest's list of documents (metadata
//! only) and the catalog listing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use age::secrecy::SecretString;
use kluis_blob::BlobBackend;
use kluis_blob::catalog::Documents;
use kluis_core::TenantId;
use kluis_store::{Access, Engine, FieldValue, Record, Store, Value};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The manifest's `format`.
pub const FORMAT: &str = "kluis-subject-package/1";

/// Records read per page.
pub const RECORD_PAGE: u32 = 100;

/// The manifest's path in the archive.
pub const MANIFEST: &str = "manifest.json";

const BLOCK: u64 = 512;

/// Who can open a package: age X25519 recipients (`age1...`), or one passphrase (scrypt).
pub enum Recipients {
    /// One or more X25519 public keys.
    X25519(Vec<age::x25519::Recipient>),
    /// A passphrase (age's scrypt recipient). Never printed.
    Passphrase(SecretString),
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::X25519(r) => f.debug_tuple("X25519").field(&r.len()).finish(),
            Self::Passphrase(_) => f.write_str("Passphrase([REDACTED])"),
        }
    }
}

impl Recipients {
    /// Parses age X25519 recipients (`age1...`); none, or one that does not parse, is
    /// [`Error::Invalid`] (naming its position, not the string).
    pub fn x25519<S: AsRef<str>>(recipients: &[S]) -> Result<Self> {
        if recipients.is_empty() {
            return Err(Error::invalid("recipient", "no recipient given"));
        }
        let mut out = Vec::with_capacity(recipients.len());
        for (i, r) in recipients.iter().enumerate() {
            let parsed = r.as_ref().trim().parse::<age::x25519::Recipient>().map_err(|_| {
                Error::invalid(
                    "recipient",
                    format!("recipient {} is not an age X25519 recipient (age1...)", i + 1),
                )
            })?;
            out.push(parsed);
        }
        Ok(Self::X25519(out))
    }

    /// A passphrase recipient; an empty passphrase is [`Error::Invalid`].
    pub fn passphrase(passphrase: Zeroizing<String>) -> Result<Self> {
        if passphrase.is_empty() {
            return Err(Error::invalid("passphrase", "empty"));
        }
        Ok(Self::Passphrase(SecretString::from(passphrase.as_str().to_owned())))
    }

    /// A short description for reports and the manifest (no key material).
    pub fn describe(&self) -> String {
        match self {
            Self::X25519(r) => format!("age X25519, {} recipient(s)", r.len()),
            Self::Passphrase(_) => "age scrypt passphrase".to_owned(),
        }
    }

    fn encryptor(&self) -> Result<age::Encryptor> {
        match self {
            Self::X25519(rs) => age::Encryptor::with_recipients(rs.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| Error::invalid("recipient", e.to_string())),
            Self::Passphrase(p) => Ok(age::Encryptor::with_user_passphrase(p.clone())),
        }
    }
}

/// What a package holds and how to read it: the collections to list (each with the keys to
/// open it), the documents' keys, and the domains withheld with the reason. A field or document
/// of a domain the keys lack is left out and listed as withheld whether or not it was declared
/// (then with the reason "no key for this domain").
#[derive(Debug)]
pub struct PackagePlan<'a> {
    tenant: TenantId,
    subject: String,
    collections: Vec<(String, &'a Access)>,
    denied_collections: Vec<(String, String)>,
    documents: Option<&'a Access>,
    withheld: BTreeMap<String, String>,
}

impl<'a> PackagePlan<'a> {
    /// A plan for `subject` of `tenant` with nothing in it yet.
    pub fn new(tenant: TenantId, subject: &str) -> Result<Self> {
        kluis_store::check_id("subject id", subject)?;
        Ok(Self {
            tenant,
            subject: subject.to_owned(),
            collections: Vec::new(),
            denied_collections: Vec::new(),
            documents: None,
            withheld: BTreeMap::new(),
        })
    }

    /// Lists `collection`'s records of the subject with `access`.
    pub fn collection(mut self, collection: &str, access: &'a Access) -> Self {
        self.collections.push((collection.to_owned(), access));
        self
    }

    /// `collection` is left out entirely, for `reason`.
    pub fn deny_collection(mut self, collection: &str, reason: &str) -> Self {
        self.denied_collections.push((collection.to_owned(), reason.to_owned()));
        self
    }

    /// Lists and reads the subject's documents with `access` (documents of domains it lacks are
    /// withheld). Without this every document is withheld.
    pub fn documents(mut self, access: &'a Access) -> Self {
        self.documents = Some(access);
        self
    }

    /// `domain` is withheld for `reason` (listed in the manifest even if nothing of it exists).
    pub fn withhold(mut self, domain: &str, reason: &str) -> Self {
        self.withheld.insert(domain.to_owned(), reason.to_owned());
        self
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Progress while a package is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackageProgress {
    /// Records written.
    pub records: u64,
    /// Documents written.
    pub documents: u64,
    /// Documents to write in all (known once the catalog is listed).
    pub documents_total: u64,
    /// Document content bytes written.
    pub bytes: u64,
    /// Document content bytes to write in all (known once the catalog is listed).
    pub bytes_total: u64,
}

/// A domain left out of a package.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WithheldDomain {
    /// Domain.
    pub domain: String,
    /// Why.
    pub reason: String,
    /// `collection.field` of every schema field of the domain in the collections considered.
    pub fields: Vec<String>,
    /// Records of the subject that held a value of the domain (left out).
    pub records: u64,
    /// Documents of the subject in the domain (left out).
    pub documents: u64,
}

/// What [`write_package`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackageSummary {
    /// Records in the package.
    pub records: u64,
    /// Documents in the package.
    pub documents: u64,
    /// Document content bytes in the package.
    pub document_bytes: u64,
    /// Bytes of the encrypted package written.
    pub package_bytes: u64,
    /// Domains withheld.
    pub withheld: Vec<WithheldDomain>,
    /// Collections left out entirely, with the reason.
    pub withheld_collections: Vec<(String, String)>,
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::Io(format!("{what}: {e}"))
}

/// A file name safe inside the archive: no separator or control character, not `.`/`..`, at
/// most 100 bytes (a ustar name field), the extension kept when it is cut.
fn safe_file_name(name: &str, extension: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c }).collect();
    if s.is_empty() || s == "." || s == ".." {
        s = if extension.is_empty() { "document".to_owned() } else { format!("document.{extension}") };
        s = s.chars().map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c }).collect();
    }
    if s.len() <= 100 {
        return s;
    }
    let ext = s.rfind('.').map(|i| s.split_at(i).1.to_owned()).filter(|e| e.len() <= 16).unwrap_or_default();
    let mut head = String::new();
    for c in s.chars() {
        if head.len() + c.len_utf8() + ext.len() > 100 {
            break;
        }
        head.push(c);
    }
    head.push_str(&ext);
    head
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Text(s) | Value::Decimal(s) | Value::Date(s) => Json::String(s.clone()),
        Value::Integer(i) => json!(i),
        Value::Bool(b) => json!(b),
        Value::Bytes(b) => Json::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        _ => Json::Null,
    }
}

/// A record as the package's JSON: withheld fields left out (their domains are returned).
fn record_json(r: &Record) -> (Json, BTreeSet<String>) {
    let mut fields = serde_json::Map::new();
    let mut withheld = BTreeSet::new();
    for (k, v) in &r.fields {
        match v {
            FieldValue::Withheld { domain } => {
                withheld.insert(domain.clone());
            }
            other => {
                fields.insert(k.clone(), other.value().map(to_json).unwrap_or(Json::Null));
            }
        }
    }
    let j = json!({
        "collection": r.collection, "id": r.id, "subject": r.subject, "version": r.version,
        "created_at": r.created_at, "updated_at": r.updated_at, "retain_until": r.retain_until,
        "fields": fields,
    });
    (j, withheld)
}

/// The tar stream inside the age stream.
struct TarOut<W: Write> {
    out: age::stream::StreamWriter<Counting<W>>,
}

impl<W: Write> TarOut<W> {
    /// A regular file entry's header (ustar; a path too long for it gets a GNU long-name entry
    /// first, as the `tar` crate writes it).
    fn header(&mut self, path: &str, size: u64, mtime: i64) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o600);
        h.set_mtime(u64::try_from(mtime).unwrap_or(0));
        h.set_entry_type(tar::EntryType::Regular);
        if h.set_path(path).is_err() {
            // GNU long name: a `././@LongLink` entry of type L holding the path, then the header.
            let bytes = path.as_bytes();
            let mut l = tar::Header::new_gnu();
            l.set_path("././@LongLink").map_err(io_err("archive path"))?;
            l.set_size(bytes.len() as u64 + 1);
            l.set_mode(0o644);
            l.set_entry_type(tar::EntryType::GNULongName);
            l.set_cksum();
            self.out.write_all(l.as_bytes()).map_err(io_err("write"))?;
            self.out.write_all(bytes).map_err(io_err("write"))?;
            self.out.write_all(&[0]).map_err(io_err("write"))?;
            self.pad(bytes.len() as u64 + 1)?;
            let cut: String = path.chars().rev().take(90).collect::<Vec<_>>().into_iter().rev().collect();
            h.set_path(cut.trim_start_matches('/')).map_err(io_err("archive path"))?;
        }
        h.set_cksum();
        self.out.write_all(h.as_bytes()).map_err(io_err("write"))
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let rem = len % BLOCK;
        if rem != 0 {
            let zeros = [0u8; BLOCK as usize];
            let n = usize::try_from(BLOCK - rem).unwrap_or(0);
            self.out.write_all(zeros.get(..n).unwrap_or_default()).map_err(io_err("write"))?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8], mtime: i64) -> Result<()> {
        self.header(path, data.len() as u64, mtime)?;
        self.out.write_all(data).map_err(io_err("write"))?;
        self.pad(data.len() as u64)
    }

    /// The end-of-archive marker, the age stream's last chunk; returns the output and its size.
    fn finish(mut self) -> Result<(W, u64)> {
        self.out.write_all(&[0u8; 2 * BLOCK as usize]).map_err(io_err("write"))?;
        let mut c = self.out.finish().map_err(io_err("finish the age stream"))?;
        c.inner.flush().map_err(io_err("flush"))?;
        Ok((c.inner, c.n))
    }
}

/// A document's content on its way into the archive: hashed, counted, never more than the
/// length its header announced. Writes go straight into the age writer (chunk by chunk).
struct DocSink<'o, W: Write> {
    out: &'o mut age::stream::StreamWriter<Counting<W>>,
    hash: Sha256,
    written: u64,
    limit: u64,
    progress: &'o mut (dyn FnMut(u64) + Send),
}

impl<W: Write> tokio::io::AsyncWrite for DocSink<'_, W> {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.written + buf.len() as u64 > this.limit {
            return Poll::Ready(Err(io::Error::other("the document is longer than its metadata says")));
        }
        if let Err(e) = this.out.write_all(buf) {
            return Poll::Ready(Err(e));
        }
        this.hash.update(buf);
        this.written += buf.len() as u64;
        (this.progress)(buf.len() as u64);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Counts a document's length when its metadata does not give it (a first pass; nothing kept).
struct Measure(u64);

impl tokio::io::AsyncWrite for Measure {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().0 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn blob_err(e: kluis_blob::BlobError) -> Error {
    match e {
        kluis_blob::BlobError::Store(s) => Error::Store(s),
        kluis_blob::BlobError::Sink(io) => Error::Io(format!("write: {io}")),
        other => Error::Blob(other),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[derive(Default)]
struct Withheld {
    reason: Option<String>,
    fields: BTreeSet<String>,
    records: u64,
    documents: u64,
}

/// Writes the package of `plan` to `out`, encrypted for `recipients`. The caller appends the
/// export's audit entry **before** calling this: nothing (not even the age header) is written
/// before the call. On an error `out` holds a truncated package that does not decrypt: discard
/// it. `progress` is called as records and document bytes are written.
pub async fn write_package<E, D, W, F>(
    store: &Store<E>,
    documents: &Documents<E, D>,
    plan: &PackagePlan<'_>,
    recipients: &Recipients,
    out: W,
    mut progress: F,
) -> Result<PackageSummary>
where
    E: Engine,
    D: BlobBackend,
    W: Write + Send,
    F: FnMut(&PackageProgress) + Send,
{
    let encryptor = recipients.encryptor()?;
    let mut withheld: BTreeMap<String, Withheld> = BTreeMap::new();
    for (d, reason) in &plan.withheld {
        withheld.entry(d.clone()).or_default().reason = Some(reason.clone());
    }
    let schema = store.schema();
    // Fields of declared withheld domains, and of collections left out.
    for c in schema.collections() {
        let denied = plan.denied_collections.iter().any(|(n, _)| *n == c.name);
        for f in c.fields() {
            let d = f.domain.to_string();
            if denied || plan.withheld.contains_key(&d) {
                withheld.entry(d).or_default().fields.insert(format!("{}.{}", c.name, f.name));
            }
        }
    }
    let mut tar = TarOut {
        out: encryptor.wrap_output(Counting { inner: out, n: 0 }).map_err(io_err("write the age header"))?,
    };
    let mut state = PackageProgress::default();
    let mut per_collection: BTreeMap<String, u64> = BTreeMap::new();

    // Records, page by page, each its own entry.
    for (coll, access) in &plan.collections {
        let mut after: Option<String> = None;
        let n = per_collection.entry(coll.clone()).or_insert(0);
        loop {
            let page = store.list(access, coll, Some(&plan.subject), after.as_deref(), RECORD_PAGE).await?;
            for r in &page.records {
                let (j, held) = record_json(r);
                for d in held {
                    let w = withheld.entry(d.clone()).or_default();
                    w.records += 1;
                    for (name, v) in &r.fields {
                        if matches!(v, FieldValue::Withheld { domain } if *domain == d) {
                            w.fields.insert(format!("{coll}.{name}"));
                        }
                    }
                }
                let bytes =
                    Zeroizing::new(serde_json::to_vec_pretty(&j).map_err(|e| Error::Io(e.to_string()))?);
                tar.file(&format!("records/{coll}/{}.json", r.id), &bytes, r.updated_at)?;
                *n += 1;
                state.records += 1;
                progress(&state);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }

    // Documents, chunk by chunk.
    let mut files = Vec::new();
    // Decrypted metadata (file names, content types) is wiped however this function ends.
    struct WipeEntries(Vec<kluis_blob::catalog::DocumentEntry>);
    impl Drop for WipeEntries {
        fn drop(&mut self) {
            for m in self.0.iter_mut().filter_map(|e| e.metadata.as_mut()) {
                zeroize::Zeroize::zeroize(m);
            }
        }
    }
    let entries = WipeEntries(match plan.documents {
        Some(access) => documents.list_by_subject(access, &plan.subject).await.map_err(blob_err)?,
        None => {
            let clear = Access::catalog(plan.tenant.clone());
            for row in store.documents_of_subject(&clear, &plan.subject).await? {
                withheld.entry(row.domain.clone()).or_default().documents += 1;
            }
            Vec::new()
        }
    });
    let entries = &entries.0;
    state.documents_total = entries.iter().filter(|e| !e.is_withheld()).count() as u64;
    state.bytes_total = entries.iter().filter_map(|e| e.metadata.as_ref().and_then(|m| m.length)).sum();
    progress(&state);
    for e in entries {
        let (Some(meta), Some(access)) = (&e.metadata, plan.documents) else {
            withheld.entry(e.domain.to_string()).or_default().documents += 1;
            continue;
        };
        let length = match meta.length {
            Some(l) => l,
            None => {
                let mut m = Measure(0);
                documents.get(access, &e.document_id, &mut m).await.map_err(blob_err)?;
                state.bytes_total += m.0;
                m.0
            }
        };
        let name = safe_file_name(&meta.file_name, &meta.extension);
        let path = format!("documents/{}/{name}", e.document_id);
        tar.header(&path, length, meta.created_unix)?;
        let (written, digest) = {
            let mut tick = |n: u64| {
                state.bytes += n;
                progress(&state);
            };
            let mut sink = DocSink {
                out: &mut tar.out,
                hash: Sha256::new(),
                written: 0,
                limit: length,
                progress: &mut tick,
            };
            documents.get(access, &e.document_id, &mut sink).await.map_err(blob_err)?;
            (sink.written, sink.hash.finalize())
        };
        if written != length {
            return Err(Error::Io(format!(
                "document {} has {written} bytes, its metadata says {length}",
                e.document_id
            )));
        }
        tar.pad(length)?;
        state.documents += 1;
        progress(&state);
        files.push(json!({
            "path": path, "document_id": e.document_id, "domain": e.domain.as_str(), "record": e.record,
            "file_name": meta.file_name, "content_type": meta.content_type, "length": length,
            "created": meta.created_unix, "sha256": hex_lower(&digest),
        }));
    }

    // Withheld domains: declared ones with their reason, others found without a key.
    let withheld: Vec<WithheldDomain> = withheld
        .into_iter()
        .map(|(domain, w)| WithheldDomain {
            domain,
            reason: w.reason.unwrap_or_else(|| "no key for this domain".to_owned()),
            fields: w.fields.into_iter().collect(),
            records: w.records,
            documents: w.documents,
        })
        .collect();
    let manifest = json!({
        "format": FORMAT,
        "tenant": plan.tenant.as_str(),
        "subject": plan.subject,
        "created_at": now_unix(),
        "encryption": recipients.describe(),
        "records": { "count": state.records, "collections": per_collection },
        "documents": { "count": state.documents, "bytes": state.bytes, "files": files },
        "withheld": withheld.iter().map(|w| json!({
            "domain": w.domain, "reason": w.reason, "fields": w.fields,
            "records": w.records, "documents": w.documents,
        })).collect::<Vec<_>>(),
        "withheld_collections": plan.denied_collections.iter().map(|(c, r)| json!({
            "collection": c, "reason": r,
        })).collect::<Vec<_>>(),
    });
    let bytes = Zeroizing::new(serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Io(e.to_string()))?);
    tar.file(MANIFEST, &bytes, now_unix())?;
    let (_, package_bytes) = tar.finish()?;
    Ok(PackageSummary {
        records: state.records,
        documents: state.documents,
        document_bytes: state.bytes,
        package_bytes,
        withheld,
        withheld_collections: plan.denied_collections.clone(),
    })
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The key to open a package with.
pub enum PackageKey {
    /// An age X25519 identity (`AGE-SECRET-KEY-1...`).
    Identity(age::x25519::Identity),
    /// The passphrase.
    Passphrase(SecretString),
}

impl fmt::Debug for PackageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Identity(_) => "Identity([REDACTED])",
            Self::Passphrase(_) => "Passphrase([REDACTED])",
        })
    }
}

/// Opens a package from `input` and calls `visit` with each entry's path and a reader of its
/// content (streamed: nothing is held whole). A wrong key, a damaged or truncated package, or a
/// path that is not a plain relative path is an error.
pub fn read_package<R: Read>(
    input: R,
    key: &PackageKey,
    mut visit: impl FnMut(&str, &mut dyn Read) -> io::Result<()>,
) -> Result<()> {
    let decryptor = age::Decryptor::new(input).map_err(|e| Error::invalid("package", e.to_string()))?;
    let reader = match key {
        PackageKey::Identity(i) => decryptor.decrypt(std::iter::once(i as &dyn age::Identity)),
        PackageKey::Passphrase(p) => {
            let id = age::scrypt::Identity::new(p.clone());
            decryptor.decrypt(std::iter::once(&id as &dyn age::Identity))
        }
    }
    .map_err(|e| Error::invalid("package", e.to_string()))?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(io_err("read the package"))? {
        let mut entry = entry.map_err(io_err("read the package"))?;
        let path = entry.path().map_err(io_err("read the package"))?.into_owned();
        let ok = !path.as_os_str().is_empty()
            && path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        let Some(text) = path.to_str().filter(|_| ok).map(str::to_owned) else {
            return Err(Error::invalid("package", "an entry's path is not a plain relative path"));
        };
        visit(&text, &mut entry).map_err(io_err("read the package"))?;
    }
    Ok(())
}

/// Every entry of a package in memory, by path (for tests and small packages only).
pub fn read_package_to_memory<R: Read>(input: R, key: &PackageKey) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    read_package(input, key, |path, r| {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        out.insert(path.to_owned(), buf);
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(safe_file_name("a/b\\c.pdf", "pdf"), "a_b_c.pdf");
        assert_eq!(safe_file_name("..", "pdf"), "document.pdf");
        assert_eq!(safe_file_name("", ""), "document");
        let long = format!("{}.pdf", "x".repeat(300));
        let s = safe_file_name(&long, "pdf");
        assert!(s.len() <= 100 && s.ends_with(".pdf"), "{s}");
        let wide = "é".repeat(80);
        assert!(safe_file_name(&wide, "").len() <= 100);
    }

    #[test]
    fn recipients_parse_and_redact() {
        let id = age::x25519::Identity::generate();
        let r = Recipients::x25519(&[id.to_public().to_string()]).unwrap();
        assert_eq!(r.describe(), "age X25519, 1 recipient(s)");
        assert!(Recipients::x25519(&["age1nope"]).is_err());
        assert!(Recipients::x25519::<&str>(&[]).is_err());
        let p = Recipients::passphrase(Zeroizing::new("correct horse".into())).unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert!(Recipients::passphrase(Zeroizing::new(String::new())).is_err());
    }
}
