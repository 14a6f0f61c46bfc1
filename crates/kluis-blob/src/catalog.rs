//! Documents joined with the `kluis-store` catalog (see `docs/DOCUMENTS.md` §11).
//!
//! [`Documents`] writes each document's object through a [`DocumentVault`] and its catalog row
//! through a [`Store`]. A document's data key is sealed by the subject key of its subject in its
//! domain ([`DocumentKeys::with_subject`]), so shredding the subject
//! ([`Store::shred_subject`]) makes its documents unreadable. The catalog's `key_ref` names that
//! subject key version: `subject:<domain>:v<N>`.
//!
//! Ordering, so that a crash at any point leaves a consistent state:
//! - put: the object is committed first, then the row inserted (a crash in between leaves an
//!   unreferenced object, removed by [`Documents::collect_garbage`] after its grace period);
//! - delete: the row is removed first, then the object (same leftover, same cleanup);
//! - re-encryption: the new object is committed, the row swapped by compare-and-swap on its
//!   object name, then the old object deleted (either object left behind is unreferenced).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kluis_core::{
    DocumentMetadata, DomainKeySet, DomainName, KeyKind, KeyRef, KeyVersion, Plaintext, SubjectKey,
};
use kluis_store::Engine;
use kluis_store::audit::AuditAppend;
use kluis_store::{Access, DocumentRow, Store, StoreError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::backend::{BlobBackend, GcReport};
use crate::error::{BlobError, Result};
use crate::name::ObjectName;
use crate::vault::{DocumentDescriptor, DocumentKeys, DocumentVault, NewDocument};

/// A document as listed: its catalog fields, and its decrypted metadata if the caller holds the
/// document's domain.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DocumentEntry {
    /// Catalog id of the document (stable across re-encryption).
    pub document_id: String,
    /// Domain.
    pub domain: DomainName,
    /// Data subject.
    pub subject: String,
    /// Record, if any.
    pub record: Option<String>,
    /// When the catalog row was written, Unix seconds.
    pub created_at: i64,
    /// File name, extension, content type, length, created, uploader; `None` (withheld) when the
    /// caller lacks the domain. Nothing is decrypted or fetched for a withheld entry.
    pub metadata: Option<DocumentMetadata>,
}

/// Entries being listed: their decrypted metadata is wiped if they are dropped before being
/// handed out.
struct WipeEntries(Vec<DocumentEntry>);

impl Drop for WipeEntries {
    fn drop(&mut self) {
        for m in self.0.iter_mut().filter_map(|e| e.metadata.as_mut()) {
            zeroize::Zeroize::zeroize(m);
        }
    }
}

impl DocumentEntry {
    /// True if the caller lacks the domain and the metadata was withheld.
    pub fn is_withheld(&self) -> bool {
        self.metadata.is_none()
    }
}

/// What one [`Documents::reencrypt_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DocReencryptProgress {
    /// Documents moved onto their subject's newest subject key version in this step.
    pub moved: u64,
    /// Documents of the domain still on an older subject key version after this step.
    pub remaining: u64,
    /// Documents changed or deleted concurrently while being moved (left as they are; their new
    /// object was removed).
    pub conflicts: u64,
}

/// Documents with their catalog: objects in a [`DocumentVault`], rows in a [`Store`].
pub struct Documents<S: Engine, B: BlobBackend> {
    store: Arc<Store<S>>,
    vault: DocumentVault<B>,
}

impl<S: Engine, B: BlobBackend> fmt::Debug for Documents<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Documents").field("vault", &self.vault).finish_non_exhaustive()
    }
}

/// The catalog `key_ref` of a document sealed under subject key `version` of `domain`.
fn key_ref(domain: &DomainName, version: KeyVersion) -> String {
    format!("subject:{domain}:v{version}")
}

/// The subject key version named by a catalog `key_ref` of `domain`: decimal, from 1, without
/// leading zeros (as [`key_ref`] writes it).
fn parse_key_ref(key_ref: &str, domain: &str) -> Result<KeyVersion> {
    key_ref
        .strip_prefix("subject:")
        .and_then(|r| r.strip_prefix(domain))
        .and_then(|r| r.strip_prefix(":v"))
        .filter(|v| !v.is_empty() && !v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<KeyVersion>().ok())
        .ok_or(BlobError::Catalog("key reference is not a subject key of the document's domain"))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A catalog row as the vault's descriptor, with the subject key version it names.
fn descriptor(access: &Access, row: &DocumentRow) -> Result<(DocumentDescriptor, KeyVersion)> {
    let version = parse_key_ref(&row.key_ref, &row.domain)?;
    let object = ObjectName::parse(&row.object_name).map_err(|_| BlobError::Catalog("object name"))?;
    let object_len = u64::try_from(row.padded_size).map_err(|_| BlobError::Catalog("object length"))?;
    let desc = DocumentDescriptor {
        object,
        tenant: access.tenant().clone(),
        domain: DomainName::new(row.domain.clone()).map_err(|_| BlobError::Catalog("domain"))?,
        subject: row.subject.clone(),
        record: row.record_id.clone(),
        wrapping_key: KeyRef::new(KeyKind::Subject, version),
        object_len,
    };
    Ok((desc, version))
}

fn require<'a>(access: &'a Access, domain: &str) -> Result<&'a DomainKeySet> {
    access.set(domain).ok_or_else(|| {
        BlobError::Store(StoreError::AccessDenied {
            tenant: access.tenant().to_string(),
            domain: domain.to_owned(),
        })
    })
}

impl<S: Engine, B: BlobBackend> Documents<S, B> {
    /// Documents stored through `vault`, catalogued in `store`.
    pub fn new(store: Arc<Store<S>>, vault: DocumentVault<B>) -> Self {
        Self { store, vault }
    }

    /// The store.
    pub fn store(&self) -> &Store<S> {
        &self.store
    }

    /// The vault.
    pub fn vault(&self) -> &DocumentVault<B> {
        &self.vault
    }

    /// Stores a document of `domain` (streamed from `content`), sealed under the subject's
    /// newest subject key, then inserts its catalog row and returns it. The caller must hold
    /// `domain`. If the row cannot be inserted the object is deleted again (or, if that fails
    /// too, left to garbage collection).
    pub async fn put<R: AsyncRead + Unpin + Send>(
        &self,
        access: &Access,
        domain: &DomainName,
        doc: NewDocument,
        content: R,
    ) -> Result<DocumentRow> {
        self.put_with(access, domain, doc, content, None::<fn(&DocumentRow) -> AuditAppend>).await
    }

    /// [`Documents::put`] with an audit entry (made by `audit` from the new row, so it can name
    /// the document id) appended in the **same database transaction** as the catalog row
    /// ([`Store::insert_document_audited`]): the document becomes visible only together with its
    /// entry. The object is committed before that transaction; if the transaction fails the
    /// object is deleted again (or, if that fails too, left to garbage collection).
    pub async fn put_audited<R, F>(
        &self,
        access: &Access,
        domain: &DomainName,
        doc: NewDocument,
        content: R,
        audit: F,
    ) -> Result<DocumentRow>
    where
        R: AsyncRead + Unpin + Send,
        F: FnOnce(&DocumentRow) -> AuditAppend + Send,
    {
        self.put_with(access, domain, doc, content, Some(audit)).await
    }

    async fn put_with<R, F>(
        &self,
        access: &Access,
        domain: &DomainName,
        doc: NewDocument,
        content: R,
        audit: Option<F>,
    ) -> Result<DocumentRow>
    where
        R: AsyncRead + Unpin + Send,
        F: FnOnce(&DocumentRow) -> AuditAppend + Send,
    {
        let set = require(access, domain.as_str())?;
        let (version, sk) = self.store.subject_key(access, domain, &doc.subject).await?;
        let desc = self.vault.put(&DocumentKeys::with_subject(set, &sk), &doc, content).await?;
        let row = DocumentRow {
            tenant: access.tenant().to_string(),
            document_id: ObjectName::random()?.to_string(),
            domain: domain.to_string(),
            subject: doc.subject,
            record_id: doc.record,
            object_name: desc.object.to_string(),
            key_ref: key_ref(domain, version),
            padded_size: i64::try_from(desc.object_len).map_err(|_| BlobError::Catalog("object length"))?,
            created_at: now_unix(),
            sealed_meta: Vec::new(),
        };
        let inserted = match audit {
            None => self.store.insert_document(access, row.clone()).await,
            Some(f) => self.store.insert_document_audited(access, row.clone(), f(&row)).await,
        };
        if let Err(e) = inserted {
            if let Err(d) = self.vault.delete(&desc).await {
                tracing::warn!(error = %d, "removing the object of an uncatalogued document failed; garbage collection will remove it");
            }
            return Err(e.into());
        }
        // The store deletes an old subject key version only when no row uses it. If that
        // happened between taking the key and inserting the row, the document could never be
        // read: take it back and let the caller retry (it then gets the newest key).
        if let Err(e) = self.store.subject_key_version(access, domain, &row.subject, version).await {
            self.store.delete_document(access, &row.document_id).await?;
            if let Err(d) = self.vault.delete(&desc).await {
                tracing::warn!(error = %d, "removing the object of a withdrawn document failed; garbage collection will remove it");
            }
            return Err(match e {
                StoreError::Core(kluis_core::Error::UnknownKey { .. }) => StoreError::KeyChanged {
                    what: format!("subject key v{version} was re-encrypted away during the upload: retry"),
                }
                .into(),
                other => other.into(),
            });
        }
        tracing::debug!(object = %desc.object, "document catalogued");
        Ok(row)
    }

    /// The row and the keys to read it: the caller must hold its domain.
    async fn open_row(&self, access: &Access, document_id: &str) -> Result<(DocumentDescriptor, SubjectKey)> {
        let row = self.store.document(access, document_id).await?.ok_or(BlobError::UnknownDocument)?;
        require(access, &row.domain)?;
        let (desc, version) = descriptor(access, &row)?;
        let sk = self.store.subject_key_version(access, &desc.domain, &desc.subject, version).await?;
        Ok((desc, sk))
    }

    /// Decrypts document `document_id` into `out` and returns its metadata. Every chunk is
    /// authenticated before it is written; if an error is returned, `out` may hold an
    /// authenticated prefix: discard it.
    pub async fn get<W: AsyncWrite + Unpin + Send>(
        &self,
        access: &Access,
        document_id: &str,
        mut out: W,
    ) -> Result<DocumentMetadata> {
        let (desc, sk) = self.open_row(access, document_id).await?;
        let set = require(access, desc.domain.as_str())?;
        let keys = DocumentKeys::with_subject(set, &sk);
        let mut r = self.vault.open(&desc, &keys).await?;
        while let Some(chunk) = r.next_chunk().await? {
            out.write_all(chunk).await.map_err(BlobError::Sink)?;
        }
        out.flush().await.map_err(BlobError::Sink)?;
        Ok(r.metadata().clone())
    }

    /// Content bytes `start..end` of document `document_id` (see [`DocumentVault::get_range`]).
    pub async fn get_range(
        &self,
        access: &Access,
        document_id: &str,
        start: u64,
        end: u64,
    ) -> Result<Plaintext> {
        let (desc, sk) = self.open_row(access, document_id).await?;
        let set = require(access, desc.domain.as_str())?;
        self.vault.get_range(&desc, &DocumentKeys::with_subject(set, &sk), start, end).await
    }

    /// The decrypted metadata of document `document_id` (reads only the object's header).
    pub async fn metadata(&self, access: &Access, document_id: &str) -> Result<DocumentMetadata> {
        let (desc, sk) = self.open_row(access, document_id).await?;
        let set = require(access, desc.domain.as_str())?;
        self.vault.metadata(&desc, &DocumentKeys::with_subject(set, &sk)).await
    }

    /// Documents of a subject, oldest first. Entries of a domain the caller lacks are withheld.
    pub async fn list_by_subject(&self, access: &Access, subject: &str) -> Result<Vec<DocumentEntry>> {
        let rows = self.store.documents_of_subject(access, subject).await?;
        self.entries(access, rows).await
    }

    /// Documents attached to a record, oldest first. Entries of a domain the caller lacks are
    /// withheld.
    pub async fn list_by_record(&self, access: &Access, record_id: &str) -> Result<Vec<DocumentEntry>> {
        let rows = self.store.documents_of_record(access, record_id).await?;
        self.entries(access, rows).await
    }

    async fn entries(&self, access: &Access, mut rows: Vec<DocumentRow>) -> Result<Vec<DocumentEntry>> {
        rows.sort_by(|a, b| (a.created_at, &a.document_id).cmp(&(b.created_at, &b.document_id)));
        let mut keys: HashMap<(String, String, KeyVersion), SubjectKey> = HashMap::new();
        // Decrypted metadata of the entries so far is wiped if a later row fails (or the future
        // is dropped); `out` never grows, so no entry is moved by a reallocation.
        let mut out = WipeEntries(Vec::with_capacity(rows.len()));
        for row in rows {
            let domain = DomainName::new(row.domain.clone()).map_err(|_| BlobError::Catalog("domain"))?;
            let metadata = match access.set(&row.domain) {
                None => None,
                Some(set) => {
                    let (desc, version) = descriptor(access, &row)?;
                    let k = (row.domain.clone(), row.subject.clone(), version);
                    if !keys.contains_key(&k) {
                        let sk =
                            self.store.subject_key_version(access, &domain, &row.subject, version).await?;
                        keys.insert(k.clone(), sk);
                    }
                    let sk = keys.get(&k).ok_or(BlobError::Task("subject key cache"))?;
                    Some(self.vault.metadata(&desc, &DocumentKeys::with_subject(set, sk)).await?)
                }
            };
            out.0.push(DocumentEntry {
                document_id: row.document_id,
                domain,
                subject: row.subject,
                record: row.record_id,
                created_at: row.created_at,
                metadata,
            });
        }
        Ok(std::mem::take(&mut out.0))
    }

    /// Deletes document `document_id`: its catalog row, then its object. The caller must hold
    /// its domain. Returns whether the document existed. If deleting the object fails after the
    /// row is gone, the object is left to garbage collection (logged, not an error).
    pub async fn delete(&self, access: &Access, document_id: &str) -> Result<bool> {
        let Some(row) = self.store.document(access, document_id).await? else {
            return Ok(false);
        };
        require(access, &row.domain)?;
        let object = ObjectName::parse(&row.object_name).map_err(|_| BlobError::Catalog("object name"))?;
        if !self.store.delete_document(access, document_id).await? {
            return Ok(false);
        }
        if let Err(e) = self.vault.backend().delete(&object).await {
            tracing::warn!(error = %e, object = %object, "deleting a document's object failed; garbage collection will remove it");
        }
        Ok(true)
    }

    /// [`Documents::delete`] with an audit entry appended in the same database transaction as
    /// the removal of the catalog row ([`Store::delete_document_audited`]): the row is gone only
    /// if the entry is committed. `false` (and nothing committed, not even the entry) if the
    /// tenant has no such document. The object is deleted after the commit (left to garbage
    /// collection if that fails).
    pub async fn delete_audited(
        &self,
        access: &Access,
        document_id: &str,
        audit: AuditAppend,
    ) -> Result<bool> {
        let Some(row) = self.store.document(access, document_id).await? else {
            return Ok(false);
        };
        require(access, &row.domain)?;
        let object = ObjectName::parse(&row.object_name).map_err(|_| BlobError::Catalog("object name"))?;
        if !self.store.delete_document_audited(access, document_id, audit).await? {
            return Ok(false);
        }
        if let Err(e) = self.vault.backend().delete(&object).await {
            tracing::warn!(error = %e, object = %object, "deleting a document's object failed; garbage collection will remove it");
        }
        Ok(true)
    }

    /// One step of document re-encryption after a domain key rotation and
    /// [`Store::reencrypt_step`]: up to `max_docs` documents of `domain` whose catalog `key_ref`
    /// names an older subject key version than their subject's newest are copied into a new
    /// object under the newest version ([`DocumentVault::reseal`]), the catalog row is swapped
    /// by compare-and-swap on the object name ([`Store::replace_document`]), then the old
    /// object is deleted. A crash or error between any two steps leaves the row on either the
    /// old or the new object, and the other one unreferenced for
    /// [`Documents::collect_garbage`]; rerunning continues. Run [`Store::reencrypt_step`] again
    /// afterwards so it deletes the subject key versions no longer used.
    pub async fn reencrypt_step(
        &self,
        access: &Access,
        domain: &DomainName,
        max_docs: usize,
    ) -> Result<DocReencryptProgress> {
        let set = require(access, domain.as_str())?;
        let d = domain.as_str();
        // Only a subject with more than one subject key version can have a document on an
        // older one (a version is deleted only once nothing uses it).
        let mut newest: BTreeMap<String, (KeyVersion, usize)> = BTreeMap::new();
        for (subject, version) in self.store.subject_key_versions(access.tenant(), domain).await? {
            let e = newest.entry(subject).or_insert((version, 0));
            e.0 = e.0.max(version);
            e.1 += 1;
        }
        let mut stale = Vec::new();
        for (subject, (version, _)) in newest.iter().filter(|(_, (_, n))| *n > 1) {
            for row in self.store.documents_of_subject(access, subject).await? {
                if row.domain == d && parse_key_ref(&row.key_ref, d)? < *version {
                    stale.push(row);
                }
            }
        }
        let mut progress = DocReencryptProgress::default();
        let total = stale.len() as u64;
        for row in stale.into_iter().take(max_docs) {
            if self.reencrypt_one(access, set, domain, row).await? {
                progress.moved += 1;
            } else {
                progress.conflicts += 1;
            }
        }
        progress.remaining = total - progress.moved;
        tracing::info!(
            tenant = %access.tenant(), domain = %domain, moved = progress.moved,
            remaining = progress.remaining, conflicts = progress.conflicts,
            "kluis-blob document re-encryption step"
        );
        Ok(progress)
    }

    /// Moves one document onto its subject's newest key; `false` on a concurrent change.
    async fn reencrypt_one(
        &self,
        access: &Access,
        set: &DomainKeySet,
        domain: &DomainName,
        row: DocumentRow,
    ) -> Result<bool> {
        let (old, old_version) = descriptor(access, &row)?;
        let old_key = self.store.subject_key_version(access, domain, &row.subject, old_version).await?;
        let (version, new_key) = self.store.subject_key(access, domain, &row.subject).await?;
        if version <= old_version {
            // The subject's keys changed since the candidates were listed: next step.
            return Ok(false);
        }
        // 1. The new object, committed only after every chunk of the old one authenticated.
        let new = self
            .vault
            .reseal(
                &old,
                &DocumentKeys::with_subject(set, &old_key),
                &DocumentKeys::with_subject(set, &new_key),
            )
            .await?;
        // 2. The catalog swap, only if the row still points at the old object.
        let new_row = DocumentRow {
            object_name: new.object.to_string(),
            key_ref: key_ref(domain, version),
            padded_size: i64::try_from(new.object_len).map_err(|_| BlobError::Catalog("object length"))?,
            ..row
        };
        let swapped = match self.store.replace_document(access, old.object.as_str(), new_row).await {
            Ok(s) => s,
            Err(e) => {
                // Unknown whether the swap happened: leave both objects; garbage collection
                // removes whichever the catalog does not reference.
                return Err(e.into());
            }
        };
        if !swapped {
            if let Err(e) = self.vault.delete(&new).await {
                tracing::warn!(error = %e, "removing the object of a conflicting re-encryption failed; garbage collection will remove it");
            }
            return Ok(false);
        }
        // 3. The old object.
        if let Err(e) = self.vault.delete(&old).await {
            tracing::warn!(error = %e, object = %old.object, "deleting a re-encrypted document's old object failed; garbage collection will remove it");
        }
        Ok(true)
    }

    /// Removes objects no catalog row of any tenant references, and leftovers of unfinished
    /// uploads, if last changed more than `grace` ago (see [`DocumentVault::collect_garbage`]).
    /// `grace` must exceed the longest upload plus its catalog insert (an hour is ample), so a
    /// document whose row is being written is never removed.
    pub async fn collect_garbage(&self, grace: Duration) -> Result<GcReport> {
        let names = self.store.document_object_names().await?;
        // Names that are not ours cannot match any object of ours: they protect nothing.
        let live: Vec<ObjectName> = names.iter().filter_map(|n| ObjectName::parse(n).ok()).collect();
        self.vault.collect_garbage(&live, grace).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_refs_round_trip_and_reject_others() {
        let d = DomainName::medical();
        let v7 = KeyVersion::new(7).unwrap();
        assert_eq!(parse_key_ref(&key_ref(&d, v7), "medical").unwrap(), v7);
        for bad in [
            "subject:general:v7",
            "domain:medical:v7",
            "subject:medical:v",
            "subject:medical:v-1",
            "subject:medical:7",
            "subject:medical:v1x",
            "subject:medicalx:v1",
            "subject:medical:v0",
            "subject:medical:v07",
            "subject:medical:v4294967296",
        ] {
            assert!(parse_key_ref(bad, "medical").is_err(), "{bad}");
        }
    }
}
