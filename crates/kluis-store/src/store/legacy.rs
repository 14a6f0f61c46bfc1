//! Data written by earlier layouts and key formats, moved or adopted.

use super::*;

/// Legacy records moved per transaction ([`Store::move_legacy`]).
pub(super) const LEGACY_BATCH: u32 = 500;

impl<E: Engine> Store<E> {
    /// Moves records of the legacy layout (a row per field in `kluis_fields`) into their
    /// collection tables, 500 per transaction, without re-sealing a cell (a cell's context does
    /// not depend on the layout), each row with its tag. Resumable: a killed move leaves every
    /// record either moved or not. [`Store::admin_access`] and [`Store::access`] run it; returns how many records moved.
    pub async fn move_legacy(&self, provider: &dyn RootKeyProvider) -> Result<u64> {
        use std::sync::atomic::Ordering;
        if self.legacy_moved.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut moved = 0u64;
        let mut sets: BTreeMap<String, Access> = BTreeMap::new();
        loop {
            let batch = self.backend.legacy_records(LEGACY_BATCH).await?;
            if batch.is_empty() {
                self.legacy_moved.store(true, Ordering::Release);
                return Ok(moved);
            }
            let mut tags = Tags::new();
            let mut rows = Vec::with_capacity(batch.len());
            for (mut stored, indexes) in batch {
                let r = &stored.record;
                let table = self.layout.table(&r.collection).map_err(|_| {
                    StoreError::Schema(format!(
                        "the database holds records of collection {:?}, which the schema lacks: open it with \
                         the schema it was written with",
                        r.collection
                    ))
                })?;
                let access = match sets.get(&r.tenant) {
                    Some(a) => a,
                    None => {
                        let tenant = TenantId::new(&r.tenant)?;
                        let a =
                            Access::new(tenant.clone()).with(self.row_tag_set(provider, &tenant).await?)?;
                        sets.entry(r.tenant.clone()).or_insert(a)
                    }
                };
                // The cells keep their bytes; the domain is the schema's (as on every read).
                for c in &mut stored.fields {
                    if let Some(cols) = table.cell(&c.field) {
                        c.domain.clone_from(&cols.domain);
                    }
                }
                stored.record.tag = Self::row_tag(access, &stored.record, &stored.fields, &mut tags)?;
                rows.push((table.clone(), stored, indexes));
            }
            let n = rows.len() as u64;
            self.backend.move_legacy(rows).await?;
            moved += n;
            tracing::info!(records = n, "kluis-store: records moved from the legacy layout");
        }
    }

    /// Upgrades a database written before state tags and signed Azure Key Vault wraps, trusting
    /// its key rows as they are now (an operator checks `kluis keys list` first): every domain
    /// key in a legacy envelope ([`RootKeyProvider::is_legacy`]) is rewrapped, every set without
    /// any state tag is tagged, and a missing keyring generation record is written. Sets that are
    /// already tagged are verified and left alone; a partly tagged set is refused. Each set is
    /// written in one transaction, only if its rows are still as read. Idempotent.
    pub async fn adopt_legacy_keys(&self, provider: &dyn RootKeyProvider) -> Result<AdoptReport> {
        let mut report = AdoptReport::default();
        if provider.generation().is_some() && self.backend.meta(META_GENERATION).await?.is_none() {
            self.record_keyring_generation(provider).await?;
            report.generation_recorded = true;
        }
        let all = self.backend.all_domain_keys().await?;
        let mut sets: BTreeMap<(String, String), Vec<DomainKeyRow>> = BTreeMap::new();
        for r in all {
            sets.entry((r.tenant.clone(), r.domain.clone())).or_default().push(r);
        }
        for ((t, d), old_rows) in sets {
            let tenant = TenantId::new(t)?;
            let domain = DomainName::new(d)?;
            let mut records = Self::records_from_rows(&tenant, &domain, &old_rows)?;
            let mut rewrapped = 0;
            for r in records.iter_mut() {
                let Some(w) = &r.wrapped else { continue };
                if !provider.is_legacy(w) {
                    continue;
                }
                let what = || format!("domain key {tenant}/{domain} v{}", r.version);
                let aad = keys::domain_key_ad(&tenant, &domain, r.version)?;
                let key = provider.unwrap_legacy(&aad, w).await.map_err(|e| key_integrity(what(), e))?;
                r.wrapped = Some(provider.wrap(&aad, &key).await?);
                rewrapped += 1;
            }
            let tagged =
                if records.iter().all(|r| r.tag.is_none()) && records.iter().any(|r| r.wrapped.is_some()) {
                    DomainKeySet::adopt_untagged(provider, &mut records)
                        .await
                        .map_err(|e| key_integrity(format!("domain key {tenant}/{domain}"), e))?;
                    true
                } else {
                    DomainKeySet::unwrap(provider, &records)
                        .await
                        .map_err(|e| key_integrity(format!("domain key {tenant}/{domain}"), e))?;
                    false
                };
            let rows = Self::rows_from_records(&records)?;
            let updates = key_row_updates(&old_rows, &rows);
            if !updates.is_empty() {
                self.backend.replace_domain_key_rows(updates).await?;
            }
            report.rewrapped += rewrapped;
            report.sets_tagged += usize::from(tagged);
        }
        Ok(report)
    }

    // ---------------------------------------------------------------- documents catalog
}
