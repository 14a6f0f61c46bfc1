//! Audited transactions and the audit log, through the store.

use super::*;
use crate::audit::*;

impl<E: Engine> Store<E> {
    /// Runs `ops` as [`Store::transaction`] does, with `audit` appended **in the same database
    /// transaction**: the audit head lock is taken before anything else, the entry appended after
    /// the rows and their row log entries (so it covers them): either the changes and their
    /// audit entry are both committed, or neither is.
    pub async fn audited_transaction(
        &self,
        access: &Access,
        ops: Vec<Op>,
        audit: AuditAppend,
    ) -> Result<Vec<Written>> {
        // As `Store::transaction` (sealing while writing; a write sealed under a subject key that
        // a re-encryption or a shred removed meanwhile is refused by the database and retried
        // with fresh keys), with the head lock first and the audit entry last.
        self.run_transaction(access, ops, Some(&audit)).await
    }

    /// [`Store::shred_subject`] with its audit entry appended in the same database transaction as
    /// the removal of the subject's keys, records and catalog rows (the step that makes the shred
    /// happen; the rotation and purge that follow only harden it). If that transaction fails,
    /// neither the removal nor the entry is stored.
    pub async fn shred_subject_audited(
        &self,
        provider: &dyn kluis_core::RootKeyProvider,
        access: &mut Access,
        subject: &str,
        legal_override: Option<crate::store::LegalOverride>,
        audit: AuditAppend,
    ) -> Result<crate::store::ShredReport> {
        self.shred_subject_with(provider, access, subject, legal_override, Some(audit)).await
    }

    /// Up to `limit` audit entries after `after`, in sequence order; only `tenant`'s if given.
    pub async fn audit_page(&self, tenant: Option<&str>, after: i64, limit: u32) -> Result<Vec<AuditRow>> {
        self.backend.audit_page(tenant, after, limit).await
    }

    /// The audit head row: (last sequence number, its hash).
    pub async fn audit_head(&self) -> Result<(i64, Vec<u8>)> {
        self.backend.audit_head().await
    }

    /// Every audit checkpoint row, in sequence order.
    pub async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        self.backend.audit_checkpoints().await
    }

    /// Appends one audit entry in its own transaction (for reads, denials and admin events).
    pub async fn append_audit(&self, audit: AuditAppend) -> Result<()> {
        self.backend.apply(vec![WriteOp::Audit(audit)]).await
    }
}
