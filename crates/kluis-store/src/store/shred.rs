//! Crypto-shredding a subject.

use super::*;

impl<E: Engine> Store<E> {
    /// Crypto-shreds a subject: refuses while any of its records is under retention (unless a
    /// legal override is given, which is recorded), deletes its subject keys, records, cells,
    /// blind indexes and document catalog entries in one transaction, then for every domain the
    /// subject had a key in rotates the domain key, rewraps the other subjects' keys and re-derives
    /// blind indexes under the new version, destroys the old versions (so an older backup's copy of
    /// the subject key has no live wrapping key in this database), and purges the freed bytes from
    /// the database files. `access` must hold every domain of the schema; it is refreshed.
    pub async fn shred_subject(
        &self,
        provider: &dyn RootKeyProvider,
        access: &mut Access,
        subject: &str,
        legal_override: Option<LegalOverride>,
    ) -> Result<ShredReport> {
        self.shred_subject_with(provider, access, subject, legal_override, None).await
    }

    /// [`Store::shred_subject`], appending `entry` to the audit log in the transaction that removes
    /// the subject's keys and records (`Store::shred_subject_audited`).
    pub(crate) async fn shred_subject_with(
        &self,
        provider: &dyn RootKeyProvider,
        access: &mut Access,
        subject: &str,
        legal_override: Option<LegalOverride>,
        entry: Option<crate::audit::AuditAppend>,
    ) -> Result<ShredReport> {
        check_id("subject id", subject)?;
        access.whole_tenant("a shred")?;
        access.require_write("a shred")?;
        let tenant = access.tenant.clone();
        let now = now_unix();
        let records = self.backend.subject_records(&self.layout, tenant.as_str(), subject).await?;
        let mut audit = None;
        if let Some((r, until)) =
            records.iter().find_map(|r| r.retain_until.filter(|u| *u > now).map(|u| (r, u)))
        {
            let Some(o) = legal_override else {
                return Err(StoreError::RetentionActive {
                    collection: r.collection.clone(),
                    record: r.id.clone(),
                    retain_until: until,
                });
            };
            audit = Some(OverrideRow {
                tenant: tenant.to_string(),
                action: "shred".into(),
                target: format!("subject:{subject}"),
                reason: o.reason,
                authorised_by: o.authorised_by,
                at: now,
            });
        }
        let mut domains: BTreeSet<String> = self
            .schema
            .collections()
            .flat_map(|c| c.fields().map(|f| f.domain.to_string()).collect::<Vec<_>>())
            .collect();
        domains.extend(access.domains().map(str::to_owned));
        let mut affected = Vec::new();
        for d in &domains {
            if !self.backend.subject_keys(tenant.as_str(), d, subject).await?.is_empty() {
                access.require(d)?;
                affected.push(d.clone());
            }
        }
        let deleted = self.backend.delete_subject(tenant.as_str(), subject, audit, entry).await?;
        if let Ok(mut c) = self.subject_keys.lock() {
            c.forget_subject(tenant.as_str(), None, subject);
        }
        let mut destroyed = Vec::new();
        for d in &affected {
            let domain = DomainName::new(d.clone())?;
            destroyed.extend(
                self.retire_domain_versions(provider, access, &domain)
                    .await?
                    .into_iter()
                    .map(|v| (d.clone(), v)),
            );
        }
        self.backend.purge().await?;
        tracing::info!(tenant = %tenant, records = deleted.records, "kluis-store subject shredded");
        let subject_keys_destroyed = deleted
            .subject_keys
            .into_iter()
            .map(|(d, v)| match KeyVersion::from_stored(v) {
                Ok(v) => Ok((d, v)),
                Err(_) => Err(StoreError::Corrupt { what: "subject key version", reason: v.to_string() }),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ShredReport {
            records_removed: deleted.records,
            documents_removed: deleted.documents,
            subject_keys_destroyed,
            destroyed_versions: destroyed,
            purge: (E::KIND, E::PURGE_STEPS),
        })
    }
}
