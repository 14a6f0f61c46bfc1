//! The documents catalog.

use super::*;

impl<E: Engine> Store<E> {
    /// Adds a documents catalog entry (issue 4 writes the blob). `row.tenant` must be the caller's.
    pub async fn insert_document(&self, access: &Access, row: DocumentRow) -> Result<()> {
        self.check_document(access, &row)?;
        self.backend.insert_document(row).await
    }

    /// [`Store::insert_document`] with an audit entry appended **in the same database
    /// transaction** (first): either the row and its entry are both committed, or neither is.
    pub async fn insert_document_audited(
        &self,
        access: &Access,
        row: DocumentRow,
        audit: crate::audit::AuditAppend,
    ) -> Result<()> {
        self.check_document(access, &row)?;
        self.backend.apply(vec![WriteOp::Audit(audit), WriteOp::InsertDocument(row)]).await
    }

    /// [`Store::delete_document`] with an audit entry appended in the same database transaction.
    /// `false` if the tenant has no such entry: then nothing is committed, not even the entry.
    /// The caller must hold the document's domain.
    pub async fn delete_document_audited(
        &self,
        access: &Access,
        document_id: &str,
        audit: crate::audit::AuditAppend,
    ) -> Result<bool> {
        check_id("document id", document_id)?;
        let Some(row) = self.backend.document(access.tenant.as_str(), document_id).await? else {
            return Ok(false);
        };
        access.require_write("a document delete")?;
        access.document_in_scope(&row)?;
        access.require(&row.domain)?;
        let op = WriteOp::DeleteDocument { tenant: row.tenant, document_id: row.document_id };
        match self.backend.apply(vec![WriteOp::Audit(audit), op]).await {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound { collection, .. }) if collection == "kluis_documents" => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) fn check_document(&self, access: &Access, row: &DocumentRow) -> Result<()> {
        if row.tenant != access.tenant.as_str() {
            return Err(StoreError::Invalid("a document of another tenant".into()));
        }
        access.require_write("a document write")?;
        access.document_in_scope(row)?;
        access.require(&row.domain)?;
        check_id("document id", &row.document_id)?;
        check_id("subject id", &row.subject)?;
        check_id("object name", &row.object_name)?;
        if let Some(r) = &row.record_id {
            check_id("record id", r)?;
        }
        if row.padded_size < 0 {
            return Err(StoreError::Invalid("negative document size".into()));
        }
        Ok(())
    }

    /// Catalog entries of a subject.
    pub async fn documents_of_subject(&self, access: &Access, subject: &str) -> Result<Vec<DocumentRow>> {
        check_id("subject id", subject)?;
        access.collection_in_scope(DOCUMENTS_SCOPE, Some(subject))?;
        self.backend.list_documents(access.tenant.as_str(), DocumentFilter::Subject(subject)).await
    }

    /// Catalog entries attached to a record.
    pub async fn documents_of_record(&self, access: &Access, record_id: &str) -> Result<Vec<DocumentRow>> {
        check_id("record id", record_id)?;
        let rows =
            self.backend.list_documents(access.tenant.as_str(), DocumentFilter::Record(record_id)).await?;
        // Entries outside the scope (another subject's) are left out.
        Ok(rows
            .into_iter()
            .filter(|d| access.scope.covers(DOCUMENTS_SCOPE, &d.document_id, &d.subject))
            .collect())
    }

    /// One catalog entry of the caller's tenant.
    pub async fn document(&self, access: &Access, document_id: &str) -> Result<Option<DocumentRow>> {
        check_id("document id", document_id)?;
        let row = self.backend.document(access.tenant.as_str(), document_id).await?;
        if let Some(r) = &row {
            access.document_in_scope(r)?;
        }
        Ok(row)
    }

    /// Replaces the catalog entry `new.document_id` of the caller's tenant if its object name is
    /// still `expected_object_name` (compare-and-swap); `false` if it changed or is gone.
    pub async fn replace_document(
        &self,
        access: &Access,
        expected_object_name: &str,
        new: DocumentRow,
    ) -> Result<bool> {
        self.check_document(access, &new)?;
        check_id("object name", expected_object_name)?;
        self.backend.replace_document(expected_object_name, new).await
    }

    /// Every blob object name referenced by any catalog entry of any tenant (for the blob
    /// store's garbage collection), sorted.
    pub async fn document_object_names(&self) -> Result<Vec<String>> {
        self.backend.document_object_names().await
    }

    /// Removes a catalog entry; `false` if absent.
    pub async fn delete_document(&self, access: &Access, document_id: &str) -> Result<bool> {
        check_id("document id", document_id)?;
        access.require_write("a document delete")?;
        if !matches!(access.scope, Scope::Tenant) {
            match self.backend.document(access.tenant.as_str(), document_id).await? {
                Some(row) => access.document_in_scope(&row)?,
                None => return Ok(false),
            }
        }
        self.backend.delete_document(access.tenant.as_str(), document_id).await
    }
}
