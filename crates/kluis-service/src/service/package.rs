//! [`Service::export_package`]: a subject access package (see [`crate::package`]) through the
//! facade: every collection and the documents checked for `export`, keys loaded only through
//! the proofs, the export's entries committed before the first byte is written.

use std::collections::BTreeSet;
use std::io::Write;

use kluis_blob::BlobBackend;
use kluis_blob::catalog::Documents;
use kluis_core::DomainName;
use kluis_store::{Access, Engine};

use super::documents::DOCUMENTS;
use super::{RequestContext, Service, join};
use crate::authz::{Action, Decision, Principal, Request, Target};
use crate::error::{Error, Result};
use crate::package::{PackagePlan, PackageProgress, PackageSummary, Recipients, write_package};

/// The reason the manifest gives for a domain the principal may not export.
pub const NOT_ALLOWED: &str = "the requester's roles do not allow exporting this domain";

impl<B: Engine> Service<B> {
    /// Writes the subject access package of `subject` (in the principal's tenant; a support user:
    /// [`RequestContext::in_tenant`]) to `out`, encrypted for `recipients`
    /// ([`crate::package`]). `docs` must catalog in this service's store.
    ///
    /// Each collection is checked for `export` as [`Service::export`] does, and the documents as
    /// the collection `documents` (its clear listing counts as `general`). Fields and documents
    /// of domains the roles do not allow are left out and listed in the manifest as withheld;
    /// a collection the roles allow nothing of is left out entirely. Nothing allowed at all is a
    /// denial (logged).
    ///
    /// Fail closed: one `export` entry per collection read (subject, collection, the domains
    /// opened as `domain:*`) and one for the documents (their ids, `domain:content`) are
    /// appended **before** anything, not even the age header, is written to `out`; if one cannot
    /// be, nothing is written. A failure while writing is logged as `error`; `out` then holds a
    /// truncated package that does not decrypt.
    #[allow(clippy::too_many_arguments)]
    pub async fn export_package<D, W, F>(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        docs: &Documents<B, D>,
        subject: &str,
        recipients: &Recipients,
        out: W,
        progress: F,
    ) -> Result<PackageSummary>
    where
        D: BlobBackend,
        W: Write + Send,
        F: FnMut(&PackageProgress) + Send,
    {
        if !std::ptr::eq(docs.store(), &*self.store) {
            return Err(Error::invalid("documents", "the catalog is in another store than the service's"));
        }
        kluis_store::check_id("subject id", subject)?;
        let home = Self::home_tenant(p, ctx);
        let mut base = self.entry(p, ctx, home.as_ref(), "export");
        base.subject = subject.to_owned();
        let Some(tenant) = home else {
            return Err(self.denied(base, crate::authz::Deny::no_tenant()).await);
        };

        // Decide every collection and the documents first; nothing is opened yet.
        let mut allowed = Vec::new();
        let mut denied = Vec::new();
        let mut first_denial = None;
        let mut opened: BTreeSet<DomainName> = BTreeSet::new();
        let mut present_all: BTreeSet<DomainName> = BTreeSet::new();
        let names: Vec<String> = self.store.schema().collections().map(|c| c.name.clone()).collect();
        for coll in &names {
            let present = self.collection_domains(coll)?;
            present_all.extend(present.iter().cloned());
            let target = Target::collection(coll, Some(subject));
            let domains = self.domains_to_open(p, ctx, &tenant, Action::Export, &target, &present);
            match self.authz.check(p, &Request::new(&tenant, Action::Export, &domains, target)) {
                Decision::Allow(a) => {
                    opened.extend(domains.iter().cloned());
                    allowed.push((coll.clone(), a.basis().to_string(), domains, a.into_proof()));
                }
                Decision::Deny(d) => {
                    denied.push((coll.clone(), NOT_ALLOWED.to_owned()));
                    if first_denial.is_none() {
                        first_denial = Some((coll.clone(), d));
                    }
                }
            }
        }
        // The subject's documents, from clear catalog columns (nothing decrypted).
        let rows = self.store.documents_of_subject(&Access::catalog(tenant.clone()), subject).await?;
        let mut doc_plan = None;
        if !rows.is_empty() {
            let mut present = BTreeSet::from([DomainName::general()]);
            for r in &rows {
                present.insert(DomainName::new(r.domain.clone())?);
            }
            present_all.extend(present.iter().cloned());
            let target = Target::collection(DOCUMENTS, Some(subject));
            let domains = self.domains_to_open(p, ctx, &tenant, Action::Export, &target, &present);
            match self.authz.check(p, &Request::new(&tenant, Action::Export, &domains, target)) {
                Decision::Allow(a) => {
                    let ids: Vec<&str> = rows
                        .iter()
                        .filter(|r| domains.iter().any(|d| d.as_str() == r.domain))
                        .map(|r| r.document_id.as_str())
                        .collect();
                    let fields = join(
                        rows.iter()
                            .filter(|r| domains.iter().any(|d| d.as_str() == r.domain))
                            .map(|r| format!("{}:content", r.domain))
                            .collect::<BTreeSet<_>>(),
                    );
                    opened.extend(domains.iter().cloned());
                    doc_plan = Some((a.basis().to_string(), join(ids), fields, a.into_proof()));
                }
                Decision::Deny(d) => {
                    if first_denial.is_none() {
                        first_denial = Some((DOCUMENTS.to_owned(), d));
                    }
                }
            }
        }
        if allowed.is_empty() && doc_plan.is_none() {
            let mut e = base;
            let Some((coll, d)) = first_denial else {
                return Err(Error::invalid("export", "the schema has no collections"));
            };
            e.collection = coll;
            return Err(self.denied(e, d).await);
        }

        // Keys, only through the proofs.
        let mut accesses = Vec::with_capacity(allowed.len());
        let mut entries = Vec::new();
        for (coll, basis, domains, proof) in &allowed {
            accesses.push((coll.clone(), self.keys(proof).await?));
            let mut e = base.clone();
            e.collection = coll.clone();
            e.outcome = "allowed".into();
            e.reason = basis.clone();
            let coll_domains = self.collection_domains(coll)?;
            e.fields = join(
                domains
                    .iter()
                    .filter(|d| coll_domains.contains(*d))
                    .map(|d| format!("{d}:*"))
                    .collect::<Vec<_>>(),
            );
            entries.push(e);
        }
        let doc_access = match &doc_plan {
            Some((basis, ids, fields, proof)) => {
                let access = self.keys(proof).await?;
                let mut e = base.clone();
                e.collection = DOCUMENTS.to_owned();
                e.outcome = "allowed".into();
                e.reason = basis.clone();
                e.record = ids.clone();
                e.fields = fields.clone();
                entries.push(e);
                Some(access)
            }
            None => None,
        };

        let mut plan = PackagePlan::new(tenant.clone(), subject)?;
        for (coll, access) in &accesses {
            plan = plan.collection(coll, access);
        }
        for (coll, reason) in &denied {
            plan = plan.deny_collection(coll, reason);
        }
        if let Some(a) = &doc_access {
            plan = plan.documents(a);
        }
        for d in present_all.difference(&opened) {
            plan = plan.withhold(d.as_str(), NOT_ALLOWED);
        }

        // Fail closed: every entry before the first byte.
        for e in &entries {
            self.log(e.clone()).await?;
        }
        match write_package(&self.store, docs, &plan, recipients, out, progress).await {
            Ok(s) => Ok(s),
            Err(err) => {
                let mut failed = base;
                failed.outcome = "error".into();
                failed.reason = match &err {
                    Error::Io(_) => "package_write".into(),
                    Error::Store(s) => super::error_kind(s),
                    Error::Blob(_) => "documents".into(),
                    _ => "package".into(),
                };
                self.log(failed).await?;
                Err(err)
            }
        }
    }
}
