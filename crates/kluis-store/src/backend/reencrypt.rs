//! Re-encryption: the subjects and rows still on an older key version, and one subject moved in one transaction.

use super::*;
use crate::app_table::{AppTable, TenantSource};

pub(super) fn versions_in(table: &Table, domain: &str) -> String {
    let cols: Vec<String> = table.cells_in(domain).map(|c| format!("r.{}", c.version)).collect();
    if cols.is_empty() { "1 = 0".to_owned() } else { format!("s.version IN ({})", cols.join(", ")) }
}

/// The SQL conditions on one stale subject key `s` (a row of `kluis_subject_keys`) that decide
/// whether a re-encryption step has work with it.
struct KeyConditions {
    /// `s` is the subject's newest version.
    newest: String,
    /// A cell of Kluis's own tables is sealed under `s`.
    sealing: String,
    /// No catalog document is sealed under `s`.
    docs_free: String,
    /// `s` is not the newest, seals no cell of Kluis's own tables, and a value in a mapped table
    /// of the application is sealed under it: it waits for the mapped tables' re-encryption
    /// (`Store::reencrypt_columns_step`), not for a step of the store's.
    app_wait: String,
}

impl KeyConditions {
    fn new<E: Engine>(layout: &Layout, app_tables: &[AppTable], tenant: &str, domain: &str) -> Self {
        let newest = "NOT EXISTS (SELECT 1 FROM kluis_subject_keys n WHERE n.tenant = s.tenant AND n.domain = s.domain AND n.subject = s.subject AND n.version > s.version)".to_owned();
        let mut sealing = vec!["1 = 0".to_owned()];
        for t in layout.tables() {
            if t.cells_in(domain).next().is_some() {
                sealing.push(format!(
                    "EXISTS (SELECT 1 FROM {} r WHERE r.tenant = s.tenant AND r.subject = s.subject AND {})",
                    t.name,
                    versions_in(t, domain)
                ));
            }
        }
        let sealing = format!("({})", sealing.join(" OR "));
        let docs_free = "NOT EXISTS (SELECT 1 FROM kluis_documents d WHERE d.tenant = s.tenant AND d.domain = s.domain AND d.subject = s.subject AND d.key_version = s.version)".to_owned();
        let mut app = vec!["1 = 0".to_owned()];
        for t in app_tables {
            let cols: Vec<String> = t
                .protected_columns()
                .filter(|c| c.domain.as_str() == domain)
                .map(|c| {
                    format!("{} = {}", E::bytes_at(&format!("a.{}", c.name), 5, 4), E::be_u32("s.version"))
                })
                .collect();
            if cols.is_empty() {
                continue;
            }
            let tenant_sql = match &t.tenant {
                TenantSource::Column(c) => format!("{} = s.tenant AND ", E::cast_text(&format!("a.{c}"))),
                TenantSource::Fixed(x) if x.as_str() == tenant => String::new(),
                TenantSource::Fixed(_) => continue,
            };
            if t.external {
                // Out of reach: any older version may seal a value there.
                app.push("1 = 1".to_owned());
                continue;
            }
            app.push(format!(
                "EXISTS (SELECT 1 FROM {} a WHERE {tenant_sql}{} = s.subject AND ({}))",
                t.table,
                E::cast_text(&format!("a.{}", t.subject_column)),
                cols.join(" OR ")
            ));
        }
        let app_wait = format!("(NOT {newest} AND NOT {sealing} AND ({}))", app.join(" OR "));
        Self { newest, sealing, docs_free, app_wait }
    }
}

impl<E: Engine> SqlBackend<E> {
    /// Subjects of (tenant, domain) with work for a re-encryption step (a subject key wrapped
    /// under another version than `active` that does not wait for the mapped tables'
    /// re-encryption and is the newest, or still seals a cell, or is used by no document),
    /// sorted, at most `limit`.
    pub async fn reencrypt_candidates(
        &self,
        layout: &Layout,
        app_tables: &[AppTable],
        tenant: &str,
        domain: &str,
        active: i64,
        limit: u32,
    ) -> Result<Vec<String>> {
        // A stale key that is not the newest, seals no cell and is used by a document is
        // waiting for the documents' re-encryption: not a candidate (it would block others);
        // one that seals a value in a mapped table waits for that table's.
        let k = KeyConditions::new::<E>(layout, app_tables, tenant, domain);
        let sql = format!(
            "SELECT DISTINCT s.subject FROM kluis_subject_keys s WHERE s.tenant = ? AND s.domain = ? AND s.wrap_version <> ? \
                 AND NOT {} AND ({} OR {} OR {}) ORDER BY s.subject LIMIT ?",
            k.app_wait, k.newest, k.sealing, k.docs_free
        );
        let keys = query::<E>(&E::sql(&sql))
            .bind(tenant)
            .bind(domain)
            .bind(active)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut out = std::collections::BTreeSet::new();
        for r in &keys {
            out.insert(text(r, 0)?);
        }
        out.extend(self.stale_index_subjects(layout, tenant, domain, active, Some(limit)).await?);
        Ok(out.into_iter().take(limit as usize).collect())
    }

    /// Subjects of (tenant, domain) with a subject key wrapped under another version than
    /// `active` (or a blind index under one): those a re-encryption step still has to move
    /// (`waiting_for_app = false`), or those whose older keys wait only for the re-encryption of
    /// the application's mapped tables (`true`).
    pub async fn count_stale_subjects(
        &self,
        layout: &Layout,
        app_tables: &[AppTable],
        tenant: &str,
        domain: &str,
        active: i64,
        waiting_for_app: bool,
    ) -> Result<u64> {
        let k = KeyConditions::new::<E>(layout, app_tables, tenant, domain);
        let cond = if waiting_for_app { k.app_wait } else { format!("NOT {}", k.app_wait) };
        let sql = format!(
            "SELECT DISTINCT s.subject FROM kluis_subject_keys s WHERE s.tenant = ? AND s.domain = ? AND s.wrap_version <> ? AND {cond}"
        );
        let rows =
            query::<E>(&E::sql(&sql)).bind(tenant).bind(domain).bind(active).fetch_all(&self.pool).await?;
        let mut subjects = std::collections::BTreeSet::new();
        for r in &rows {
            subjects.insert(text(r, 0)?);
        }
        if waiting_for_app {
            return Ok(subjects.len() as u64);
        }
        subjects.extend(self.stale_index_subjects(layout, tenant, domain, active, None).await?);
        Ok(subjects.len() as u64)
    }

    /// Every record of a subject that has a cell of `domain`, whole (all its cells).
    pub async fn subject_cells(
        &self,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        subject: &str,
    ) -> Result<Vec<StoredRecord>> {
        let mut out = Vec::new();
        for t in layout.tables() {
            let cols: Vec<&str> = t.cells_in(domain).map(|c| c.sealed.as_str()).collect();
            if cols.is_empty() {
                continue;
            }
            let any = cols.iter().map(|c| format!("{c} IS NOT NULL")).collect::<Vec<_>>().join(" OR ");
            let sql = format!(
                "SELECT {} FROM {} WHERE tenant = ? AND subject = ? AND ({any}) ORDER BY id",
                t.select_list(""),
                t.name
            );
            let rows = query::<E>(&E::sql(&sql)).bind(tenant).bind(subject).fetch_all(&self.pool).await?;
            for r in &rows {
                out.push(Self::stored_from(t, r)?);
            }
        }
        Ok(out)
    }

    /// Applies one subject's re-encryption in one transaction (see [`ReencryptPlan`]).
    pub async fn reencrypt_subject(&self, plan: ReencryptPlan) -> Result<ReencryptOutcome> {
        match self.reencrypt_subject_tx(&plan).await {
            Ok((dropped, kept_for_app)) => Ok(ReencryptOutcome { applied: true, dropped, kept_for_app }),
            Err(e) if is_concurrency_error::<E>(&e) => {
                Ok(ReencryptOutcome { applied: false, dropped: Vec::new(), kept_for_app: false })
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn reencrypt_subject_tx(&self, plan: &ReencryptPlan) -> Result<(Vec<i64>, bool)> {
        use sqlx::Acquire;
        let mut tx = self.begin_write().await?;
        Self::lock_head(&mut tx).await?;
        let mut rewritten = Vec::with_capacity(plan.records.len());
        if let Some(k) = &plan.new_key {
            Self::require_live_domain_key(&mut tx, &k.tenant, &k.domain, k.wrap_version).await?;
            if !Self::insert_subject_key_tx(&mut tx, k).await? {
                return Err(StoreError::KeyChanged {
                    what: format!(
                        "subject key {}/{}/{} v{} was created concurrently",
                        k.tenant, k.domain, k.subject, k.version
                    ),
                });
            }
        }
        for r in &plan.records {
            let t = &r.table;
            let sql = format!("SELECT version FROM {} WHERE tenant = ? AND id = ?{}", t.name, E::UPDATE_LOCK);
            let found: Option<i64> = query_scalar::<E, i64>(&E::sql(&sql))
                .bind(&plan.tenant)
                .bind(&r.id)
                .fetch_optional(&mut *tx)
                .await?;
            if found != Some(r.version) {
                // Changed or deleted since the plan read it: the step is tried again.
                return Err(StoreError::KeyChanged {
                    what: format!("record {}/{} changed", t.collection, r.id),
                });
            }
            check_fields(t, &r.cells, &r.indexes)?;
            let mut sql = format!("UPDATE {} SET row_tag = ?", t.name);
            let mut args = vec![Arg::B(Some(r.tag.as_slice()))];
            for c in &r.cells {
                let Some(cols) = t.cell(&c.field) else { continue };
                sql.push_str(&format!(", {} = ?, {} = ?", cols.sealed, cols.version));
                args.push(Arg::B(Some(c.sealed.as_slice())));
                args.push(Arg::I(Some(c.key_version)));
            }
            for i in &r.indexes {
                let (ic, jc) = index_columns(t, &i.field)?;
                sql.push_str(&format!(", {ic} = ?, {jc} = ?"));
                args.push(Arg::B(Some(i.idx.as_slice())));
                args.push(Arg::I(Some(i.key_version)));
            }
            sql.push_str(" WHERE tenant = ? AND id = ? AND version = ? AND row_tag = ?");
            args.push(Arg::S(&plan.tenant));
            args.push(Arg::S(&r.id));
            args.push(Arg::I(Some(r.version)));
            args.push(Arg::B(Some(r.expected_tag.as_slice())));
            let sql = E::sql(&sql).into_owned();
            let done = query::<E>(&sql).bind_all(args.iter().map(Arg::borrowed)).execute(&mut *tx).await?;
            if done.rows_affected() != 1 {
                return Err(StoreError::KeyChanged {
                    what: format!("record {}/{} changed", t.collection, r.id),
                });
            }
            rewritten.push(RowLogEntry::written(&plan.tenant, &t.collection, &r.id, &r.tag));
        }
        Self::log_rows(&mut tx, &rewritten).await?;
        let mut dropped = Vec::new();
        let mut kept_for_app = false;
        for v in &plan.drop_versions {
            // Delete first (this waits for writers holding a share lock on the key row),
            // then look for users; keep the key (roll back to the savepoint) if any.
            let mut sp = (&mut tx).begin().await?;
            query::<E>(&E::sql(
                    "DELETE FROM kluis_subject_keys WHERE tenant = ? AND domain = ? AND subject = ? AND version = ?",
                ))
                .bind(&plan.tenant)
                .bind(&plan.domain)
                .bind(&plan.subject)
                .bind(*v)
                .execute(&mut *sp)
                .await?;
            let mut cells = 0u64;
            for t in &plan.tables {
                let cols: Vec<&str> = t.cells_in(&plan.domain).map(|c| c.version.as_str()).collect();
                if cols.is_empty() {
                    continue;
                }
                let any = cols.iter().map(|c| format!("{c} = ?")).collect::<Vec<_>>().join(" OR ");
                let sql = format!(
                    "SELECT COUNT(*) FROM {} WHERE tenant = ? AND subject = ? AND ({any}){}",
                    t.name,
                    E::COUNT_LOCK
                );
                let mut binds = vec![Bind::S(&plan.tenant), Bind::S(&plan.subject)];
                binds.extend(cols.iter().map(|_| Bind::I(*v)));
                cells += Self::count(&mut sp, &sql, &binds).await?;
            }
            let app = Self::app_cells_under(&mut sp, plan, *v).await?;
            kept_for_app |= app > 0;
            cells += app;
            let binds = [Bind::S(&plan.tenant), Bind::S(&plan.domain), Bind::S(&plan.subject), Bind::I(*v)];
            let docs = Self::count(
                    &mut sp,
                    &format!(
                        "SELECT COUNT(*) FROM kluis_documents WHERE tenant = ? AND domain = ? AND subject = ? AND key_version = ?{}",
                        E::COUNT_LOCK
                    ),
                    &binds,
                )
                .await?;
            if cells + docs == 0 {
                sp.commit().await?;
                dropped.push(*v);
            } else {
                sp.rollback().await?;
            }
        }
        tx.commit().await?;
        Ok((dropped, kept_for_app))
    }

    /// The rows of the application's mapped tables holding a value of the plan's subject in the
    /// plan's domain sealed under subject key version `version` (read from each sealed value's
    /// header, bytes 4..8).
    async fn app_cells_under(
        conn: &mut <E::Db as sqlx::Database>::Connection,
        plan: &ReencryptPlan,
        version: i64,
    ) -> Result<u64> {
        use crate::app_table::TenantSource;
        let header = kluis_core::KeyVersion::from_stored(version)
            .map_err(|_| StoreError::Invalid("subject key version".into()))?
            .to_be_bytes();
        let mut n = 0u64;
        for t in &plan.app_tables {
            let cols: Vec<&str> = t
                .protected_columns()
                .filter(|c| c.domain.as_str() == plan.domain)
                .map(|c| c.name.as_str())
                .collect();
            if cols.is_empty() {
                continue;
            }
            let any =
                cols.iter().map(|c| format!("{} = ?", E::bytes_at(c, 5, 4))).collect::<Vec<_>>().join(" OR ");
            let (tenant_sql, tenant_bind) = match &t.tenant {
                TenantSource::Column(c) => (format!("{c} = ? AND "), true),
                TenantSource::Fixed(x) if x.as_str() == plan.tenant => (String::new(), false),
                TenantSource::Fixed(_) => continue,
            };
            if t.external {
                // A table in another database: Kluis cannot count its values, so it keeps the
                // version (docs/APP_TABLES.md, section 7).
                n += 1;
                continue;
            }
            let sql = format!(
                "SELECT COUNT(*) FROM {} WHERE {tenant_sql}{} = ? AND ({any}){}",
                t.table,
                t.subject_column,
                E::COUNT_LOCK
            );
            let mut binds = Vec::new();
            if tenant_bind {
                binds.push(Bind::S(&plan.tenant));
            }
            binds.push(Bind::S(&plan.subject));
            binds.extend(cols.iter().map(|_| Bind::B(&header)));
            n += Self::count(conn, &sql, &binds).await?;
        }
        Ok(n)
    }

    /// Subjects with a blind index of a `domain` field under another version than `active`.
    pub(super) async fn stale_index_subjects(
        &self,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        active: i64,
        limit: Option<u32>,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for t in layout.tables() {
            for c in t.cells_in(domain) {
                let Some((i, j)) = &c.index else { continue };
                let mut sql = format!(
                    "SELECT DISTINCT subject FROM {} WHERE tenant = ? AND {i} IS NOT NULL AND {j} <> ? ORDER BY subject",
                    t.name
                );
                if limit.is_some() {
                    sql.push_str(" LIMIT ?");
                }
                let sql = E::sql(&sql).into_owned();
                let mut q = query::<E>(&sql).bind(tenant).bind(active);
                if let Some(l) = limit {
                    q = q.bind(i64::from(l));
                }
                for r in q.fetch_all(&self.pool).await? {
                    out.push(text(&r, 0)?);
                }
            }
        }
        Ok(out)
    }
}
