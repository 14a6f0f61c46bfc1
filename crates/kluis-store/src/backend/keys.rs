//! Rows of domain and subject keys: read, written, rotated, rewrapped, destroyed, and what still uses each version.

use super::*;

impl<E: Engine> SqlBackend<E> {
    pub(super) fn subject_key_from(row: &RowOf<E>) -> Result<SubjectKeyRow> {
        Ok(SubjectKeyRow {
            tenant: text(row, 0)?,
            domain: text(row, 1)?,
            subject: text(row, 2)?,
            version: row.col(3)?,
            wrapped: row.col(4)?,
            created_at: row.col(5)?,
            wrap_version: row.col(6)?,
        })
    }

    /// A row of `SELECT tenant, domain, version, state, wrapped, tag FROM kluis_domain_keys`.
    fn domain_key_from(row: &RowOf<E>) -> Result<DomainKeyRow> {
        Ok(DomainKeyRow {
            tenant: text(row, 0)?,
            domain: text(row, 1)?,
            version: row.col(2)?,
            state: text(row, 3)?,
            wrapped: row.col(4)?,
            tag: row.col(5)?,
        })
    }

    /// All versions of a domain key.
    pub async fn domain_keys(&self, tenant: &str, domain: &str) -> Result<Vec<DomainKeyRow>> {
        let rows = query::<E>(&E::sql(
            "SELECT tenant, domain, version, state, wrapped, tag FROM kluis_domain_keys \
                 WHERE tenant = ? AND domain = ? ORDER BY version",
        ))
        .bind(tenant)
        .bind(domain)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::domain_key_from).collect()
    }

    /// Every domain key row of every tenant (for root key rotation).
    pub async fn all_domain_keys(&self) -> Result<Vec<DomainKeyRow>> {
        let rows = query::<E>(
                "SELECT tenant, domain, version, state, wrapped, tag FROM kluis_domain_keys ORDER BY tenant, domain, version",
            )
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::domain_key_from).collect()
    }

    /// Inserts new domain key rows and updates existing ones (state, wrapped) in one transaction.
    /// `insert_only` rows fail with [`StoreError::AlreadyExists`] if present.
    pub async fn put_domain_keys(
        &self,
        rows: Vec<DomainKeyRow>,
        insert_only: bool,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let log = Self::start_log(&mut tx, audit).await?;
        for r in rows {
            let updated = if insert_only {
                0
            } else {
                query::<E>(&E::sql(
                        "UPDATE kluis_domain_keys SET state = ?, wrapped = ?, tag = ? WHERE tenant = ? AND domain = ? AND version = ?",
                    ))
                    .bind(&r.state)
                    .bind(&r.wrapped)
                    .bind(&r.tag)
                    .bind(&r.tenant)
                    .bind(&r.domain)
                    .bind(r.version)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            };
            if updated == 0 {
                match Self::insert_domain_key_row(&mut tx, &r).await {
                    Ok(_) => {}
                    Err(e) if unique_violation(&e) => {
                        return Err(StoreError::AlreadyExists {
                            collection: "kluis_domain_keys".into(),
                            record: format!("{}/{} v{}", r.tenant, r.domain, r.version),
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Self::finish_log(&mut tx, log).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The subject key rows of (tenant, domain, subject).
    pub async fn subject_keys(
        &self,
        tenant: &str,
        domain: &str,
        subject: &str,
    ) -> Result<Vec<SubjectKeyRow>> {
        let rows = query::<E>(&E::sql(
                "SELECT tenant, domain, subject, version, wrapped, created_at, wrap_version FROM kluis_subject_keys \
                 WHERE tenant = ? AND domain = ? AND subject = ? ORDER BY version",
            ))
            .bind(tenant)
            .bind(domain)
            .bind(subject)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::subject_key_from).collect()
    }

    /// Every subject key row of (tenant, domain).
    pub async fn all_subject_keys(&self, tenant: &str, domain: &str) -> Result<Vec<SubjectKeyRow>> {
        let rows = query::<E>(&E::sql(
                "SELECT tenant, domain, subject, version, wrapped, created_at, wrap_version FROM kluis_subject_keys \
                 WHERE tenant = ? AND domain = ? ORDER BY subject, version",
            ))
            .bind(tenant)
            .bind(domain)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::subject_key_from).collect()
    }

    /// Inserts a subject key row; `false` if that (tenant, domain, subject, version) exists.
    pub async fn insert_subject_key(&self, row: SubjectKeyRow) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // The wrapping domain key version must still be live; the share lock keeps a
        // concurrent retirement of it waiting until this key is visible to its check.
        Self::require_live_domain_key(&mut tx, &row.tenant, &row.domain, row.wrap_version).await?;
        let inserted = Self::insert_subject_key_tx(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Replaces the wrapped bytes of subject key rows (after a rewrap), in one transaction.
    pub async fn rewrap_subject_keys(&self, rows: Vec<SubjectKeyRow>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            query::<E>(&E::sql(
                    "UPDATE kluis_subject_keys SET wrapped = ?, wrap_version = ? WHERE tenant = ? AND domain = ? AND subject = ? AND version = ?",
                ))
                .bind(&r.wrapped)
                .bind(r.wrap_version)
                .bind(&r.tenant)
                .bind(&r.domain)
                .bind(&r.subject)
                .bind(r.version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Per domain key version (of one tenant or all): subject keys wrapped under it, records with
    /// a cell sealed by such a subject key, catalog documents wrapped by such a subject key.
    pub async fn key_usage(&self, layout: &Layout, tenant: Option<&str>) -> Result<Vec<KeyUsageRow>> {
        use std::collections::BTreeMap;
        let mut out: BTreeMap<(String, String, i64), KeyUsageRow> = BTreeMap::new();
        let filter = |col: &str| match tenant {
            Some(_) => format!(" WHERE {col} = ?"),
            None => String::new(),
        };
        let sql = format!(
            "SELECT tenant, domain, version, state FROM kluis_domain_keys{} ORDER BY tenant, domain, version",
            filter("tenant")
        );
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        for r in q.fetch_all(&self.pool).await? {
            let (t, d, v) = (text(&r, 0)?, text(&r, 1)?, r.col::<i64>(2)?);
            let state = text(&r, 3)?;
            out.insert(
                (t.clone(), d.clone(), v),
                KeyUsageRow {
                    tenant: t,
                    domain: d,
                    version: v,
                    state: Some(state),
                    ..KeyUsageRow::default()
                },
            );
        }
        // (statement, which count)
        let queries: [(String, u8); 3] = [
            // Records of the legacy layout not moved yet.
            (
                format!(
                    "SELECT x.tenant, x.domain, x.wrap_version, COUNT(*) FROM (SELECT DISTINCT s.tenant, s.domain, s.wrap_version, f.collection, f.record_id \
                         FROM kluis_fields f JOIN kluis_records r ON r.tenant = f.tenant AND r.collection = f.collection AND r.id = f.record_id \
                         JOIN kluis_subject_keys s ON s.tenant = f.tenant AND s.domain = f.domain AND s.subject = r.subject AND s.version = f.key_version{}) x \
                         GROUP BY x.tenant, x.domain, x.wrap_version",
                    filter("f.tenant")
                ),
                1,
            ),
            (
                format!(
                    "SELECT tenant, domain, wrap_version, COUNT(*) FROM kluis_subject_keys{} GROUP BY tenant, domain, wrap_version",
                    filter("tenant")
                ),
                0,
            ),
            (
                format!(
                    "SELECT s.tenant, s.domain, s.wrap_version, COUNT(*) FROM kluis_documents d JOIN kluis_subject_keys s ON s.tenant = d.tenant \
                         AND s.domain = d.domain AND s.subject = d.subject AND s.version = d.key_version{} GROUP BY s.tenant, s.domain, s.wrap_version",
                    filter("d.tenant")
                ),
                2,
            ),
        ];
        for (sql, which) in &queries {
            let sql = E::sql(sql).into_owned();
            let mut q = query::<E>(&sql);
            if let Some(t) = tenant {
                q = q.bind(t);
            }
            for r in q.fetch_all(&self.pool).await? {
                let (t, d, v) = (text(&r, 0)?, text(&r, 1)?, r.col::<i64>(2)?);
                let n = count_of(r.col::<i64>(3)?)?;
                let e = out.entry((t.clone(), d.clone(), v)).or_insert_with(|| KeyUsageRow {
                    tenant: t,
                    domain: d,
                    version: v,
                    state: None,
                    ..KeyUsageRow::default()
                });
                match which {
                    0 => e.subject_keys = n,
                    1 => e.records += n,
                    _ => e.documents = n,
                }
            }
        }
        // Records: per table and domain, those with a cell sealed under a subject key
        // that the domain key version wraps.
        for t in layout.tables() {
            for d in t.domains() {
                let sql = format!(
                    "SELECT x.tenant, x.wrap_version, COUNT(*) FROM (SELECT DISTINCT r.tenant, r.id, s.wrap_version FROM {} r \
                         JOIN kluis_subject_keys s ON s.tenant = r.tenant AND s.domain = ? AND s.subject = r.subject AND {}{}) x \
                         GROUP BY x.tenant, x.wrap_version",
                    t.name,
                    versions_in(t, d),
                    filter("r.tenant")
                );
                let sql = E::sql(&sql).into_owned();
                let mut q = query::<E>(&sql).bind(d);
                if let Some(tn) = tenant {
                    q = q.bind(tn);
                }
                for r in q.fetch_all(&self.pool).await? {
                    let (tn, v) = (text(&r, 0)?, r.col::<i64>(1)?);
                    let n = count_of(r.col::<i64>(2)?)?;
                    let e = out.entry((tn.clone(), d.to_owned(), v)).or_insert_with(|| KeyUsageRow {
                        tenant: tn,
                        domain: d.to_owned(),
                        version: v,
                        state: None,
                        ..KeyUsageRow::default()
                    });
                    e.records += n;
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// Inserts one domain key row inside `tx`.
    async fn insert_domain_key_row(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        r: &DomainKeyRow,
    ) -> std::result::Result<(), sqlx::Error> {
        let sql = E::sql(
            "INSERT INTO kluis_domain_keys (tenant, domain, version, state, wrapped, tag) VALUES (?, ?, ?, ?, ?, ?)",
        );
        query::<E>(&sql)
            .bind(&r.tenant)
            .bind(&r.domain)
            .bind(r.version)
            .bind(&r.state)
            .bind(&r.wrapped)
            .bind(&r.tag)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Rotation: applies `updates` (the old active version turned decrypt-only, every live row
    /// retagged) and inserts `new` (active), in one transaction; [`StoreError::KeyChanged`] if any
    /// updated row is no longer as read or `new`'s version exists.
    pub async fn rotate_domain_keys(
        &self,
        updates: Vec<KeyRowUpdate>,
        new: DomainKeyRow,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let log = Self::start_log(&mut tx, audit).await?;
        Self::update_key_rows(&mut tx, &updates).await?;
        match Self::insert_domain_key_row(&mut tx, &new).await {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => {
                return Err(StoreError::KeyChanged {
                    what: format!(
                        "domain key {}/{} v{} was created concurrently",
                        new.tenant, new.domain, new.version
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
        Self::finish_log(&mut tx, log).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces domain key rows (state, wrapped key, tag), each only if it is still as read, in
    /// one transaction ([`StoreError::KeyChanged`] and nothing written otherwise).
    pub async fn replace_domain_key_rows(&self, updates: Vec<KeyRowUpdate>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        Self::update_key_rows(&mut tx, &updates).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Destroys a decrypt-only version in one transaction, refusing with
    /// [`StoreError::KeyInUse`] while anything depends on it. `retag` holds the destroyed row
    /// (state `destroyed`, no wrapped key, no tag) and every other live row retagged over the new
    /// set, each written only if it is still as read.
    pub async fn destroy_domain_version(
        &self,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        version: i64,
        retag: Vec<KeyRowUpdate>,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let log = Self::start_log(&mut tx, audit).await?;
        let sql = format!(
            "SELECT state FROM kluis_domain_keys WHERE tenant = ? AND domain = ? AND version = ?{}",
            E::UPDATE_LOCK
        );
        let row = query::<E>(&E::sql(&sql))
            .bind(tenant)
            .bind(domain)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        let key_version = kluis_core::KeyVersion::from_stored(version)
            .map_err(|_| StoreError::Invalid(format!("domain key version {version} out of range")))?;
        let state = match &row {
            Some(r) => text(r, 0)?,
            None => {
                return Err(StoreError::Core(kluis_core::Error::UnknownKey {
                    key: format!("{tenant}/{domain} v{version}"),
                }));
            }
        };
        match kluis_core::KeyState::parse(&state) {
            Ok(kluis_core::KeyState::DecryptOnly) => {}
            Ok(kluis_core::KeyState::Active) => {
                return Err(StoreError::ActiveKey {
                    tenant: tenant.into(),
                    domain: domain.into(),
                    version: key_version,
                });
            }
            Ok(kluis_core::KeyState::Destroyed) => return Ok(()),
            _ => {
                return Err(StoreError::KeyIntegrity {
                    what: format!("domain key {tenant}/{domain} v{version}"),
                });
            }
        }
        let (subject_keys, records, documents, indexes) =
            Self::version_usage(&mut tx, layout, tenant, domain, version).await?;
        if subject_keys + records + documents + indexes > 0 {
            return Err(StoreError::KeyInUse {
                tenant: tenant.into(),
                domain: domain.into(),
                version: key_version,
                subject_keys,
                records: records.max(indexes.min(1)),
                documents,
            });
        }
        // `retag` holds the destroyed row (state, no wrap, no tag) and every other live row
        // with its tag over the new set, each written only if it is still as read.
        if !retag
            .iter()
            .any(|u| u.new.version == version && u.new.state == kluis_core::KeyState::Destroyed.as_str())
        {
            return Err(StoreError::Invalid(format!(
                "destroying {tenant}/{domain} v{version}: the update does not destroy it"
            )));
        }
        Self::update_key_rows(&mut tx, &retag).await?;
        Self::finish_log(&mut tx, log).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the wrapped bytes of domain key rows, each only if it still holds the given old
    /// bytes, all in one transaction ([`StoreError::KeyChanged`] and nothing written otherwise).
    pub async fn rewrap_domain_key_rows(
        &self,
        rows: Vec<(DomainKeyRow, Vec<u8>)>,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let log = Self::start_log(&mut tx, audit).await?;
        for (r, old) in rows {
            let done = query::<E>(&E::sql(
                    "UPDATE kluis_domain_keys SET wrapped = ? WHERE tenant = ? AND domain = ? AND version = ? AND wrapped = ?",
                ))
                .bind(&r.wrapped)
                .bind(&r.tenant)
                .bind(&r.domain)
                .bind(r.version)
                .bind(old)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                // Dropping `tx` rolls back every row written so far.
                return Err(StoreError::KeyChanged {
                    what: format!("domain key {}/{} v{}", r.tenant, r.domain, r.version),
                });
            }
        }
        Self::finish_log(&mut tx, log).await?;
        tx.commit().await?;
        Ok(())
    }
    /// Writes each update only if its row still holds what was read (state, wrapped key
    /// and tag): a concurrent change makes the whole transaction fail with
    /// [`StoreError::KeyChanged`].
    pub(super) async fn update_key_rows(
        conn: &mut <E::Db as sqlx::Database>::Connection,
        updates: &[KeyRowUpdate],
    ) -> Result<()> {
        let sql = format!(
            "UPDATE kluis_domain_keys SET state = ?, wrapped = ?, tag = ? \
                 WHERE tenant = ? AND domain = ? AND version = ? AND state = ? AND {} AND {}",
            E::null_safe_eq("wrapped"),
            E::null_safe_eq("tag"),
        );
        for u in updates {
            if (&u.new.tenant, &u.new.domain, u.new.version) != (&u.old.tenant, &u.old.domain, u.old.version)
            {
                return Err(StoreError::Invalid("a key row update names two rows".into()));
            }
            let done = query::<E>(&E::sql(&sql))
                .bind(&u.new.state)
                .bind(&u.new.wrapped)
                .bind(&u.new.tag)
                .bind(&u.old.tenant)
                .bind(&u.old.domain)
                .bind(u.old.version)
                .bind(&u.old.state)
                .bind(&u.old.wrapped)
                .bind(&u.old.tag)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() != 1 {
                return Err(StoreError::KeyChanged {
                    what: format!(
                        "domain key {}/{} v{} changed concurrently",
                        u.old.tenant, u.old.domain, u.old.version
                    ),
                });
            }
        }
        Ok(())
    }

    pub(super) async fn require_live_domain_key(
        conn: &mut <E::Db as sqlx::Database>::Connection,
        tenant: &str,
        domain: &str,
        version: i64,
    ) -> Result<()> {
        let sql = format!(
            "SELECT state FROM kluis_domain_keys WHERE tenant = ? AND domain = ? AND version = ?{}",
            E::SHARE_LOCK
        );
        let row = query::<E>(&E::sql(&sql))
            .bind(tenant)
            .bind(domain)
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
        let live = match &row {
            Some(r) => matches!(
                kluis_core::KeyState::parse(&text(r, 0)?),
                Ok(kluis_core::KeyState::Active | kluis_core::KeyState::DecryptOnly)
            ),
            None => false,
        };
        if !live {
            return Err(StoreError::KeyChanged { what: format!("domain key {tenant}/{domain} v{version}") });
        }
        Ok(())
    }

    /// Inserts a subject key row inside the application's transaction `conn`, keeping a row of
    /// the same key that exists (`false`) without an error; the wrapping domain key version must
    /// be live (share-locked, as [`Self::insert_subject_key`] does).
    ///
    /// Whether the row is this one is read back, not taken from the count of rows the statement
    /// changed: MariaDB counts a duplicate key's no-op update as a row found (sqlx connects with
    /// `CLIENT_FOUND_ROWS`), so the count cannot tell a row kept from a row inserted.
    pub(crate) async fn insert_subject_key_keep(
        conn: &mut <E::Db as sqlx::Database>::Connection,
        row: &SubjectKeyRow,
    ) -> Result<bool> {
        Self::require_live_domain_key(conn, &row.tenant, &row.domain, row.wrap_version).await?;
        let sql = E::sql(&format!("{INSERT_SUBJECT_KEY}{}", E::keep_existing("version"))).into_owned();
        insert_subject_key_stmt::<E>(&sql, row).execute(&mut *conn).await?;
        let stored =
            Self::subject_key_locked(conn, &row.tenant, &row.domain, &row.subject, row.version).await?;
        Ok(stored.is_some_and(|s| s.wrapped == row.wrapped))
    }

    /// One subject key row read inside `conn` with a shared lock (so it sees the latest committed
    /// row, on MariaDB too).
    pub(crate) async fn subject_key_locked(
        conn: &mut <E::Db as sqlx::Database>::Connection,
        tenant: &str,
        domain: &str,
        subject: &str,
        version: i64,
    ) -> Result<Option<SubjectKeyRow>> {
        let sql = format!(
            "SELECT tenant, domain, subject, version, wrapped, created_at, wrap_version FROM kluis_subject_keys \
             WHERE tenant = ? AND domain = ? AND subject = ? AND version = ?{}",
            E::SHARE_LOCK
        );
        let row = query::<E>(&E::sql(&sql))
            .bind(tenant)
            .bind(domain)
            .bind(subject)
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref().map(Self::subject_key_from).transpose()
    }

    pub(super) async fn insert_subject_key_tx(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        row: &SubjectKeyRow,
    ) -> Result<bool> {
        let sql = E::sql(INSERT_SUBJECT_KEY);
        let res = insert_subject_key_stmt::<E>(&sql, row).execute(&mut **tx).await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Usage of one domain key version, inside a transaction (locking reads on MariaDB).
    pub(super) async fn version_usage(
        tx: &mut <E::Db as sqlx::Database>::Connection,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        version: i64,
    ) -> Result<(u64, u64, u64, u64)> {
        let binds = [Bind::S(tenant), Bind::S(domain), Bind::I(version)];
        let keys = Self::count(
                tx,
                &format!(
                    "SELECT COUNT(*) FROM kluis_subject_keys WHERE tenant = ? AND domain = ? AND wrap_version = ?{}",
                    E::COUNT_LOCK
                ),
                &binds,
            )
            .await?;
        let mut indexes = 0u64;
        // Records of the legacy layout not moved yet count too.
        let mut records = Self::count(
                tx,
                "SELECT COUNT(*) FROM (SELECT DISTINCT f.collection, f.record_id FROM kluis_fields f \
                 JOIN kluis_records r ON r.tenant = f.tenant AND r.collection = f.collection AND r.id = f.record_id \
                 JOIN kluis_subject_keys s ON s.tenant = f.tenant AND s.domain = f.domain AND s.subject = r.subject AND s.version = f.key_version \
                 WHERE f.tenant = ? AND f.domain = ? AND s.wrap_version = ?) x",
                &binds,
            )
            .await?;
        for t in layout.tables() {
            for c in t.cells_in(domain) {
                let Some((i, j)) = &c.index else { continue };
                let sql = format!(
                    "SELECT COUNT(*) FROM {} WHERE tenant = ? AND {i} IS NOT NULL AND {j} = ?{}",
                    t.name,
                    E::COUNT_LOCK
                );
                indexes += Self::count(tx, &sql, &[Bind::S(tenant), Bind::I(version)]).await?;
            }
            if t.cells_in(domain).next().is_some() {
                let sql = format!(
                    "SELECT COUNT(*) FROM (SELECT DISTINCT r.id FROM {} r JOIN kluis_subject_keys s ON s.tenant = r.tenant \
                         AND s.domain = ? AND s.subject = r.subject AND {} WHERE r.tenant = ? AND s.wrap_version = ?) x",
                    t.name,
                    versions_in(t, domain)
                );
                records +=
                    Self::count(tx, &sql, &[Bind::S(domain), Bind::S(tenant), Bind::I(version)]).await?;
            }
        }
        let documents = Self::count(
            tx,
            "SELECT COUNT(*) FROM kluis_documents d JOIN kluis_subject_keys s ON s.tenant = d.tenant \
                 AND s.domain = d.domain AND s.subject = d.subject AND s.version = d.key_version \
                 WHERE d.tenant = ? AND d.domain = ? AND s.wrap_version = ?",
            &binds,
        )
        .await?;
        Ok((keys, records, documents, indexes))
    }
}

const INSERT_SUBJECT_KEY: &str = "INSERT INTO kluis_subject_keys (tenant, domain, subject, version, wrapped, created_at, wrap_version) \
     VALUES (?, ?, ?, ?, ?, ?, ?)";

/// [`INSERT_SUBJECT_KEY`] (and what follows it in `sql`) with `row`'s binds.
fn insert_subject_key_stmt<'q, E: Engine>(
    sql: &'q str,
    row: &'q SubjectKeyRow,
) -> crate::engine::Stmt<'q, E> {
    query::<E>(sql)
        .bind(&row.tenant)
        .bind(&row.domain)
        .bind(&row.subject)
        .bind(row.version)
        .bind(&row.wrapped)
        .bind(row.created_at)
        .bind(row.wrap_version)
}
