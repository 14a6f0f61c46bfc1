//! Crypto-shredding a subject.

use super::*;

impl<E: Engine> Store<E> {
    /// Crypto-shreds a subject: refuses while any of its records, or any of its rows in a mapped
    /// table of the application with a `retain_until_column`, is under retention (unless a
    /// legal override is given, which is recorded), deletes its subject keys, records, cells,
    /// blind indexes and document catalog entries, and clears its protected values (with their
    /// blind indexes and row tags) in the mapped tables in this database, in one transaction;
    /// then for every domain the subject had a key in rotates the domain key, rewraps the other
    /// subjects' keys and re-derives blind indexes under the new version (in the mapped tables
    /// too, by [`Store::reencrypt_columns_step`] passes), destroys the old versions (so an older
    /// backup's copy of the subject key has no live wrapping key in this database), and purges the
    /// freed bytes from the database files. `access` must hold every domain of the schema; it is
    /// refreshed.
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
        let mut held: Option<(String, String, i64)> = records.iter().find_map(|r| {
            r.retain_until.filter(|u| *u > now).map(|u| (r.collection.clone(), r.id.clone(), u))
        });
        if held.is_none() {
            held = self.app_rows_retained(&tenant, subject, now).await?;
        }
        if let Some((collection, record, until)) = held {
            let Some(o) = legal_override else {
                return Err(StoreError::RetentionActive { collection, record, retain_until: until });
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
        let app_tables: Vec<crate::app_table::AppTable> = self.schema.app_tables().cloned().collect();
        let who = entry.as_ref().map(|e| e.entry.clone()).unwrap_or_else(|| crate::audit::AuditEntry {
            actor: "kluis-store".into(),
            ..Default::default()
        });
        let deleted =
            self.backend.delete_subject(tenant.as_str(), subject, audit, entry, &app_tables).await?;
        if let Ok(mut c) = self.subject_keys.lock() {
            c.forget_subject(tenant.as_str(), None, subject);
        }
        let mut destroyed = Vec::new();
        let mut app_reindexed = 0u64;
        for d in &affected {
            let domain = DomainName::new(d.clone())?;
            destroyed.extend(
                self.retire_domain_versions(provider, access, &domain)
                    .await?
                    .into_iter()
                    .map(|v| (d.clone(), v)),
            );
            app_reindexed += self.reindex_app_tables(access, &domain, &who).await?;
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
            app_rows_cleared: app_tables.iter().any(|t| !t.external).then_some(deleted.app_rows),
            app_rows_reindexed: app_reindexed,
            records_removed: deleted.records,
            documents_removed: deleted.documents,
            subject_keys_destroyed,
            destroyed_versions: destroyed,
            purge: (E::KIND, E::PURGE_STEPS),
        })
    }

    /// A row of `subject` in a mapped table (in this database) whose retention column holds a
    /// time after `now`: (mapping, row key, until).
    async fn app_rows_retained(
        &self,
        tenant: &TenantId,
        subject: &str,
        now: i64,
    ) -> Result<Option<(String, String, i64)>> {
        use crate::app_table::TenantSource;
        use crate::engine::{opt_text, query};
        for t in self.schema.app_tables().filter(|t| !t.external) {
            let Some(col) = &t.retain_until_column else { continue };
            let (tenant_sql, tenant_bind) = match &t.tenant {
                TenantSource::Column(c) => (format!("{c} = ? AND "), true),
                TenantSource::Fixed(x) if x == tenant => (String::new(), false),
                TenantSource::Fixed(_) => continue,
            };
            let keys: Vec<String> = t.primary_key.iter().map(|k| E::cast_text(k)).collect();
            let sql = format!(
                "SELECT {}, {} FROM {} WHERE {tenant_sql}{} = ? AND {col} IS NOT NULL",
                E::cast_text(col),
                keys.join(", "),
                t.table,
                t.subject_column
            );
            let sql = E::sql(&sql).into_owned();
            let mut q = query::<E>(&sql);
            if tenant_bind {
                q = q.bind(tenant.as_str());
            }
            for r in q.bind(subject).fetch_all(self.pool()).await? {
                let raw = opt_text(&r, 0)?.unwrap_or_default();
                let until = retention_time(&raw).ok_or_else(|| StoreError::Corrupt {
                    what: "retention column",
                    reason: format!("table {}: {col} holds neither a date nor a unix time", t.name),
                })?;
                if until > now {
                    let mut key = Vec::with_capacity(keys.len());
                    for i in 0..keys.len() {
                        key.push(opt_text(&r, i + 1)?.unwrap_or_default());
                    }
                    return Ok(Some((t.name.clone(), key.join("/"), until)));
                }
            }
        }
        Ok(None)
    }

    /// Re-derives the blind indexes of `domain` in every mapped table (in this database) with an
    /// indexed column of it, after the domain's older versions were destroyed: passes of
    /// [`Store::reencrypt_columns_step`] until one writes nothing. Rows written.
    async fn reindex_app_tables(
        &self,
        access: &Access,
        domain: &DomainName,
        who: &crate::audit::AuditEntry,
    ) -> Result<u64> {
        let tables: Vec<String> = self
            .schema
            .app_tables()
            .filter(|t| {
                !t.external
                    && t.protected_columns().any(|c| c.domain == *domain && c.blind_index_column.is_some())
            })
            .map(|t| t.name.clone())
            .collect();
        let limits = super::BatchLimits::default();
        let mut written = 0u64;
        for table in &tables {
            loop {
                let mut after: Option<Vec<String>> = None;
                let mut pass = 0u64;
                loop {
                    let s = self
                        .reencrypt_columns_step(access, table, domain, &limits, after.as_deref(), who)
                        .await?;
                    pass += s.rows_written;
                    match s.last_key {
                        Some(k) if s.rows_read > 0 => after = Some(k),
                        _ => break,
                    }
                }
                written += pass;
                if pass == 0 {
                    break;
                }
            }
        }
        Ok(written)
    }
}

/// A retention column's value as unix seconds: an integer, or a date `YYYY-MM-DD` (anything after
/// the date, a time of day, is ignored: the whole day counts) as the end of that day, UTC.
fn retention_time(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<i64>() {
        return Some(n);
    }
    let d = raw.get(..10)?;
    let (y, rest) = d.split_once('-')?;
    let (m, day) = rest.split_once('-')?;
    let (y, m, day): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, day.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + 86_399)
}

#[cfg(test)]
mod tests {
    use super::retention_time;

    #[test]
    fn retention_times() {
        assert_eq!(retention_time("0"), Some(0));
        assert_eq!(retention_time("1700000000"), Some(1_700_000_000));
        assert_eq!(retention_time("1970-01-01"), Some(86_399));
        assert_eq!(retention_time("2026-12-05"), Some(1_796_515_199));
        assert_eq!(retention_time("2026-12-05 10:00:00"), Some(1_796_515_199));
        assert_eq!(retention_time("2024-02-29"), Some(1_709_251_199));
        for bad in ["", "yesterday", "2026-13-01", "2026-00-10", "2026-1-1"] {
            assert_eq!(retention_time(bad), None, "{bad}");
        }
    }
}
