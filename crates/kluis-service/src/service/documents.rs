//! Documents (`kluis_blob::catalog::Documents`) through the facade: the same check, key loading
//! through an [`AccessProof`] only, and audit log as the record calls (see `docs/SERVICE.md`,
//! "Documents").
//!
//! Audit entries of document calls have `collection = "documents"`, `record` = the document id(s)
//! (a document attached to a record adds `record:<record id>`), `subject`, and `fields` =
//! `<domain>:content` (the content was read or written) or `<domain>:metadata` (only the
//! encrypted metadata was read). Never the file name, extension, content type or content.

use std::collections::BTreeSet;
use std::fmt;

use kluis_blob::catalog::{DocumentEntry, Documents};
use kluis_blob::{BlobBackend, BlobError, NewDocument};
use kluis_core::{DocumentMetadata, DomainName, Plaintext, TenantId};
use kluis_store::audit::AuditEntry;
use kluis_store::{Access, DocumentRow, Engine};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{RequestContext, Service, error_kind, join};
use crate::authz::{Action, Deny, Principal, Request, Target};
use crate::error::{Error, Result};

/// The collection name document calls use in authorization targets and audit entries.
pub const DOCUMENTS: &str = "documents";

/// The facade's document calls over one [`Documents`] catalog, from [`Service::documents`].
/// Every call is checked, loads only the domain keys its proof names, and is audited.
pub struct ServiceDocuments<'a, B: Engine, D: BlobBackend> {
    svc: &'a Service<B>,
    docs: &'a Documents<B, D>,
}

impl<B: Engine, D: BlobBackend> fmt::Debug for ServiceDocuments<'_, B, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceDocuments").field("service", self.svc).field("documents", self.docs).finish()
    }
}

/// A short, value-free name for a document error (for the audit log).
fn blob_error_kind(e: &BlobError) -> String {
    let s = match e {
        BlobError::Store(s) => return error_kind(s),
        BlobError::UnknownDocument => "not_found",
        BlobError::NotFound => "object_not_found",
        BlobError::AlreadyExists => "already_exists",
        BlobError::LengthMismatch { .. } => "length_mismatch",
        BlobError::Invalid { .. } => "invalid",
        BlobError::Source(_) => "source_io",
        BlobError::Sink(_) => "sink_io",
        BlobError::Io { .. } | BlobError::Azure { .. } => "storage",
        BlobError::Unavailable { .. } => "storage_unavailable",
        BlobError::Core(_) => "crypto",
        BlobError::Catalog(_) => "catalog",
        BlobError::Task(_) => "task",
        _ => "blob_error",
    };
    s.to_owned()
}

/// A store error inside a blob error is a store error of the facade.
fn blob_err(e: BlobError) -> Error {
    match e {
        BlobError::Store(s) => Error::Store(s),
        other => Error::Blob(other),
    }
}

/// The `record` column of an entry about one document.
fn record_column(document_id: &str, record: Option<&str>) -> String {
    match record {
        Some(r) => format!("{document_id},record:{r}"),
        None => document_id.to_owned(),
    }
}

impl<B: Engine> Service<B> {
    /// The document calls of this facade over `docs`, which must catalog in this service's own
    /// store (same database: the catalog row of a put or delete commits in one transaction with
    /// its audit entry). Another store is [`Error::Invalid`].
    pub fn documents<'a, D: BlobBackend>(
        &'a self,
        docs: &'a Documents<B, D>,
    ) -> Result<ServiceDocuments<'a, B, D>> {
        if !std::ptr::eq(docs.store(), &*self.store) {
            return Err(Error::invalid("documents", "the catalog is in another store than the service's"));
        }
        Ok(ServiceDocuments { svc: self, docs })
    }
}

impl<B: Engine, D: BlobBackend> ServiceDocuments<'_, B, D> {
    /// The catalog.
    pub fn catalog(&self) -> &Documents<B, D> {
        self.docs
    }

    fn base(&self, p: &Principal, ctx: &RequestContext, action: &str) -> AuditEntry {
        let mut e = self.svc.entry(p, ctx, Service::<B>::home_tenant(p, ctx).as_ref(), action);
        e.collection = DOCUMENTS.to_owned();
        e
    }

    /// Finds a document's catalog row **in the stored rows**: the caller's tenant first, then the
    /// other tenants (so a copied or guessed id of another tenant arrives as a cross-tenant
    /// request). Reads only clear catalog columns. An id no tenant holds is logged as
    /// `not_found`.
    async fn locate(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        document_id: &str,
        e: &mut AuditEntry,
    ) -> Result<DocumentRow> {
        kluis_store::check_id("document id", document_id)?;
        let store = &self.svc.store;
        let home = Service::<B>::home_tenant(p, ctx);
        if let Some(h) = &home
            && let Some(row) = store.document(&Access::catalog(h.clone()), document_id).await?
        {
            e.subject = row.subject.clone();
            e.record = record_column(document_id, row.record_id.as_deref());
            return Ok(row);
        }
        for t in store.tenants().await? {
            if home.as_ref() == Some(&t) {
                continue;
            }
            if let Some(row) = store.document(&Access::catalog(t), document_id).await? {
                return Ok(row);
            }
        }
        e.outcome = "not_found".into();
        e.reason = "no such document in the tenant".into();
        self.svc.log(e.clone()).await?;
        Err(Error::DocumentNotFound { document: document_id.to_owned() })
    }

    /// Locates, checks `action` on the document's domain (and, with break-glass, passes the
    /// reason on), and returns the row, its keys and the entry to complete.
    async fn open(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        document_id: &str,
        action: Action,
        audit_action: &str,
        part: &str,
    ) -> Result<(DocumentRow, Access, AuditEntry)> {
        let mut e = self.base(p, ctx, audit_action);
        e.record = document_id.to_owned();
        let row = self.locate(p, ctx, document_id, &mut e).await?;
        let tenant = TenantId::new(row.tenant.clone())?;
        let domain = DomainName::new(row.domain.clone())?;
        if !e.subject.is_empty() {
            e.fields = format!("{domain}:{part}");
        }
        let target = Target::record(DOCUMENTS, document_id, Some(&row.subject));
        let mut req = Request::new(&tenant, action, std::slice::from_ref(&domain), target);
        if action == Action::Read
            && let Some(r) = &ctx.break_glass
        {
            req = req.with_break_glass(r);
        }
        let proof = self.svc.decide(p, ctx, req, &mut e).await?;
        let access = self.svc.keys(&proof).await?;
        Ok((row, access, e))
    }

    /// Logs a failure after an allow (value-free kind) and returns the error.
    async fn failed(&self, e: AuditEntry, err: BlobError) -> Error {
        let mut failed = e;
        failed.outcome = "error".into();
        failed.reason = blob_error_kind(&err);
        match self.svc.log(failed).await {
            Ok(()) => blob_err(err),
            Err(a) => a,
        }
    }

    /// Stores a document of `domain` for `doc.subject` (optionally attached to `doc.record`) in
    /// the principal's tenant (a support user: [`RequestContext::in_tenant`]), streamed from
    /// `content`. Needs `write` on `domain`. The object is committed first; its catalog row and
    /// the audit entry then commit **in one transaction**, so the document is never visible
    /// without its entry. If that transaction fails (for example the audit log refuses the
    /// entry), the object is deleted again or, if that fails too, left to garbage collection
    /// ([`Documents::collect_garbage`]), and an `error` entry is attempted.
    pub async fn put<R: AsyncRead + Unpin + Send>(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        domain: &DomainName,
        doc: NewDocument,
        content: R,
    ) -> Result<DocumentRow> {
        let home = Service::<B>::home_tenant(p, ctx);
        let mut e = self.base(p, ctx, "create");
        e.subject = doc.subject.clone();
        e.fields = format!("{domain}:content");
        let Some(tenant) = home else {
            return Err(self.svc.denied(e, Deny::no_tenant()).await);
        };
        kluis_store::check_id("subject id", &doc.subject)?;
        if let Some(r) = &doc.record {
            kluis_store::check_id("record id", r)?;
            e.record = format!("record:{r}");
        }
        let target = Target::collection(DOCUMENTS, Some(&doc.subject));
        let req = Request::new(&tenant, Action::Write, std::slice::from_ref(domain), target);
        let proof = self.svc.decide(p, ctx, req, &mut e).await?;
        let access = self.svc.keys(&proof).await?;
        let svc = self.svc;
        let allowed = e.clone();
        let entry = move |row: &DocumentRow| {
            let mut e = allowed;
            e.record = record_column(&row.document_id, row.record_id.as_deref());
            svc.append(e)
        };
        match self.docs.put_audited(&access, domain, doc, content, entry).await {
            Ok(row) => Ok(row),
            Err(err) => Err(self.failed(e, err).await),
        }
    }

    /// Streams document `document_id` into `out` and returns its metadata. Needs `read` on its
    /// domain (break-glass as for records). The tenant comes from the stored row. The `read`
    /// entry is appended **before** the first byte is written (fail closed: no entry, no
    /// content); a failure while streaming is logged as `error`, and `out` may then hold an
    /// authenticated prefix: discard it.
    pub async fn get<W: AsyncWrite + Unpin + Send>(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        document_id: &str,
        out: W,
    ) -> Result<DocumentMetadata> {
        let (_, access, e) = self.open(p, ctx, document_id, Action::Read, "read", "content").await?;
        self.svc.log(e.clone()).await?;
        match self.docs.get(&access, document_id, out).await {
            Ok(m) => Ok(m),
            Err(err) => Err(self.failed(e, err).await),
        }
    }

    /// Content bytes `start..end` of document `document_id` (needs `read`; logged before the
    /// bytes are returned).
    pub async fn get_range(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        document_id: &str,
        start: u64,
        end: u64,
    ) -> Result<Plaintext> {
        let (_, access, e) = self.open(p, ctx, document_id, Action::Read, "read", "content").await?;
        match self.docs.get_range(&access, document_id, start, end).await {
            Ok(bytes) => {
                self.svc.log(e).await?;
                Ok(bytes)
            }
            Err(err) => Err(self.failed(e, err).await),
        }
    }

    /// The decrypted metadata of document `document_id` (needs `read`; logged before it is
    /// returned).
    pub async fn metadata(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        document_id: &str,
    ) -> Result<DocumentMetadata> {
        let (_, access, e) = self.open(p, ctx, document_id, Action::Read, "read", "metadata").await?;
        match self.docs.metadata(&access, document_id).await {
            Ok(m) => {
                self.svc.log(e).await?;
                Ok(m)
            }
            Err(err) => Err(self.failed(e, err).await),
        }
    }

    /// Documents of `subject` in the principal's tenant, oldest first. Needs `read` on `general`
    /// (the listing's clear columns) and opens the other present domains the roles allow;
    /// entries of domains the principal lacks are withheld (their keys are never loaded,
    /// nothing is fetched for them). The entry names every listed document.
    pub async fn list_by_subject(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        subject: &str,
    ) -> Result<Vec<DocumentEntry>> {
        kluis_store::check_id("subject id", subject)?;
        self.list(p, ctx, Some(subject), None).await
    }

    /// Documents attached to record `record_id` in the principal's tenant, oldest first (as
    /// [`ServiceDocuments::list_by_subject`]).
    pub async fn list_by_record(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        record_id: &str,
    ) -> Result<Vec<DocumentEntry>> {
        kluis_store::check_id("record id", record_id)?;
        self.list(p, ctx, None, Some(record_id)).await
    }

    async fn list(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        subject: Option<&str>,
        record: Option<&str>,
    ) -> Result<Vec<DocumentEntry>> {
        let home = Service::<B>::home_tenant(p, ctx);
        let mut e = self.base(p, ctx, "read");
        e.subject = subject.unwrap_or_default().to_owned();
        let Some(tenant) = home else {
            return Err(self.svc.denied(e, Deny::no_tenant()).await);
        };
        // The domains and subjects present, from clear catalog columns (nothing decrypted).
        let clear = Access::catalog(tenant.clone());
        let rows = match (subject, record) {
            (Some(s), _) => self.svc.store.documents_of_subject(&clear, s).await?,
            (None, Some(r)) => self.svc.store.documents_of_record(&clear, r).await?,
            (None, None) => return Err(Error::invalid("document listing", "neither subject nor record")),
        };
        // The listing itself (ids, domains, subject, dates: clear catalog columns) counts as
        // general data, so a role that reads `general` lists every document and gets the others
        // withheld, as the catalog does; a role without it is denied.
        let mut present = BTreeSet::from([DomainName::general()]);
        for r in &rows {
            present.insert(DomainName::new(r.domain.clone())?);
        }
        // A listing by record is about one subject if every document is: an own-records role
        // (employee) can then list its own record's documents.
        let subjects: BTreeSet<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
        let target_subject = match (subject, subjects.len()) {
            (Some(s), _) => Some(s),
            (None, 1) => subjects.first().copied(),
            _ => None,
        };
        let target = Target::collection(DOCUMENTS, target_subject);
        let domains = self.svc.domains_to_open(p, ctx, &tenant, Action::Read, &target, &present);
        let mut req = Request::new(&tenant, Action::Read, &domains, target);
        if let Some(r) = &ctx.break_glass {
            req = req.with_break_glass(r);
        }
        let proof = self.svc.decide(p, ctx, req, &mut e).await?;
        let access = self.svc.keys(&proof).await?;
        let listed = match (subject, record) {
            (Some(s), _) => self.docs.list_by_subject(&access, s).await,
            (None, Some(r)) => self.docs.list_by_record(&access, r).await,
            (None, None) => return Err(Error::invalid("document listing", "neither subject nor record")),
        };
        let entries = match listed {
            Ok(l) => l,
            Err(err) => return Err(self.failed(e, err).await),
        };
        Self::describe_listing(&mut e, &entries, record);
        self.svc.log(e).await?;
        Ok(entries)
    }

    fn describe_listing(e: &mut AuditEntry, entries: &[DocumentEntry], record: Option<&str>) {
        let mut ids: Vec<String> = entries.iter().map(|d| d.document_id.clone()).collect();
        if let Some(r) = record {
            ids.push(format!("record:{r}"));
        }
        e.record = join(ids);
        e.subject = join(entries.iter().map(|d| d.subject.as_str()).collect::<BTreeSet<_>>());
        e.fields = join(
            entries
                .iter()
                .filter(|d| !d.is_withheld())
                .map(|d| format!("{}:metadata", d.domain))
                .collect::<BTreeSet<_>>(),
        );
    }

    /// Deletes document `document_id` (needs `delete` on its domain). The catalog row is removed
    /// **in the same transaction** as the entry is appended: if the entry cannot be written,
    /// the document stays. The object is deleted after the commit (left to garbage collection if
    /// that fails).
    pub async fn delete(&self, p: &Principal, ctx: &RequestContext, document_id: &str) -> Result<()> {
        let (_, access, e) = self.open(p, ctx, document_id, Action::Delete, "delete", "content").await?;
        match self.docs.delete_audited(&access, document_id, self.svc.append(e.clone())).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                // Deleted concurrently: nothing was committed, not even the entry.
                let mut gone = e;
                gone.outcome = "not_found".into();
                gone.reason = "no such document in the tenant".into();
                self.svc.log(gone).await?;
                Err(Error::DocumentNotFound { document: document_id.to_owned() })
            }
            Err(err) => Err(self.failed(e, err).await),
        }
    }
}
