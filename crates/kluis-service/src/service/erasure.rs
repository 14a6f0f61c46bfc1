//! The facade's erasure certificates (the format is in [`crate::erasure`]).

use kluis_core::TenantId;
use kluis_store::Engine;

use super::{AdminActor, AdminEvent, Service};
use crate::audit::hex;
use crate::erasure::{CERTIFICATE_ACTION, CertificateCheck, CertifiedErasure, ErasureCertificate};
use crate::error::{Error, Result};

impl<B: Engine> Service<B> {
    /// Appends `certificate` to the audit log (its own transaction, after the shred it describes
    /// has finished) and returns it with its entry's position and hash. Fails with
    /// [`Error::AuditUnavailable`] if the entry cannot be written.
    pub async fn certify_erasure(
        &self,
        actor: &AdminActor,
        certificate: ErasureCertificate,
    ) -> Result<CertifiedErasure> {
        let (before, _) = self.store().audit_head().await.map_err(Error::AuditUnavailable)?;
        let json = certificate.to_json()?;
        let tenant = TenantId::new(certificate.tenant.clone())?;
        let event = AdminEvent::Erasure {
            tenant: tenant.clone(),
            subject: certificate.subject.clone(),
            certificate: json.clone(),
        };
        self.record_admin(actor, event).await?;
        self.find_certificates(tenant.as_str(), before, |e| e.reason == json).await?.pop().ok_or_else(|| {
            Error::Invalid {
                what: "erasure certificate",
                reason: "its audit entry was not found after writing it".into(),
            }
        })
    }

    /// The erasure certificates of `tenant` in the audit log (of `subject` only, if given), in
    /// log order. Run [`crate::audit::verify`] to know the log is intact.
    pub async fn erasure_certificates(
        &self,
        tenant: &str,
        subject: Option<&str>,
    ) -> Result<Vec<CertifiedErasure>> {
        self.find_certificates(tenant, 0, |e| subject.is_none_or(|s| e.subject == s)).await
    }

    async fn find_certificates(
        &self,
        tenant: &str,
        after: i64,
        want: impl Fn(&kluis_store::audit::AuditEntry) -> bool,
    ) -> Result<Vec<CertifiedErasure>> {
        let mut out = Vec::new();
        let mut at = after;
        loop {
            let page = self.store().audit_page(Some(tenant), at, 1000).await?;
            let Some(last) = page.last() else { break };
            at = last.seq;
            for row in &page {
                if row.entry.action == CERTIFICATE_ACTION && want(&row.entry) {
                    out.push(CertifiedErasure {
                        certificate: ErasureCertificate::from_json(&row.entry.reason)?,
                        audit_seq: row.seq,
                        entry_hash: hex(&row.hash),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Ties a certificate kept elsewhere to the audit log: the whole chain verifies, and the
    /// entry at `c.audit_seq` is a certificate entry whose JSON is `c.certificate`'s, byte for
    /// byte, with hash `c.entry_hash`.
    pub async fn check_certificate(&self, c: &CertifiedErasure) -> Result<CertificateCheck> {
        let report = crate::audit::verify(self.store()).await?;
        if !report.is_ok() {
            return Ok(CertificateCheck::ChainBroken(Box::new(report)));
        }
        let json = c.certificate.to_json()?;
        let Some(after) = c.audit_seq.checked_sub(1) else { return Ok(CertificateCheck::NoEntry) };
        let page = self.store().audit_page(Some(&c.certificate.tenant), after, 1).await?;
        let Some(row) = page.first().filter(|r| r.seq == c.audit_seq) else {
            return Ok(CertificateCheck::NoEntry);
        };
        let same = row.entry.action == CERTIFICATE_ACTION
            && row.entry.reason == json
            && row.entry.subject == c.certificate.subject
            && hex(&row.hash) == c.entry_hash;
        Ok(if same { CertificateCheck::Matches } else { CertificateCheck::Differs })
    }
}
