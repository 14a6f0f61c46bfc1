//! Protected columns in the application's own tables: sealed for its own `INSERT`/`UPDATE` in its
//! own transaction, opened from the rows it selected, blind indexes for its `WHERE`
//! ([`crate::app_table`], docs/APP_TABLES.md).

use super::*;
use crate::app_table::{AppRow, AppTable, OpenedRow, SealedRow, TenantSource, app_tag_input};
use crate::audit::{AuditAppend, AuditEntry, DEFAULT_CHECKPOINT_EVERY};

/// Where a write's new subject keys and its audit entry go: the application's transaction, or
/// (`None`: an application whose tables Kluis's pool does not reach) Kluis's own database, each
/// committed before the values are returned.
type Via<'a, 'b, E> = &'a mut Option<&'b mut sqlx::Transaction<'static, <E as Engine>::Db>>;

/// What a write does, for its audit entry.
enum WriteKind {
    Insert,
    Update,
}

impl<E: Engine> Store<E> {
    /// The mapping of the application's table `table` ([`Schema::app_table`]).
    pub fn app_table(&self, table: &str) -> Result<&AppTable> {
        self.schema.app_table(table)
    }

    /// Seals the protected values of a new row of the application's table `table` with key `key`
    /// about `subject`, for the application to bind into its own `INSERT` in `tx`
    /// ([`SealedRow::columns`]: every protected column, NULL where `values` has none, the blind
    /// indexes and the row tag). Each value is sealed under the subject's key of its column's
    /// domain (made in `tx` if the subject has none yet), bound to tenant, domain, mapping,
    /// column and row key.
    ///
    /// `access` must hold the key of every domain written and cover the row (its tenant is the
    /// row's: a mapping with a tenant column needs the application to write `access.tenant()`
    /// there). The audit entry (`who` with the tenant, table, row, subject, columns and action
    /// filled in) is appended in `tx`, so it commits with the row or not at all. Kluis's tables
    /// must be in the same database as the application's.
    #[allow(clippy::too_many_arguments)]
    pub async fn seal_insert(
        &self,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        access: &Access,
        table: &str,
        key: &[&str],
        subject: &str,
        values: &[(&str, Value)],
        who: &AuditEntry,
    ) -> Result<SealedRow> {
        self.seal_insert_in(&mut Some(tx), access, table, key, subject, values, who).await
    }

    /// [`Store::seal_insert`] for an application whose table is in another database than
    /// Kluis's (another driver: tokio-postgres, tiberius for SQL Server): a new subject key and
    /// the audit entry are committed in Kluis's own database **before** the values are returned.
    /// The entry then records that the values were sealed for this write; whether the
    /// application's own statement commits is the application's (docs/APP_TABLES.md).
    pub async fn seal_insert_apart(
        &self,
        access: &Access,
        table: &str,
        key: &[&str],
        subject: &str,
        values: &[(&str, Value)],
        who: &AuditEntry,
    ) -> Result<SealedRow> {
        self.seal_insert_in(&mut None, access, table, key, subject, values, who).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn seal_insert_in(
        &self,
        tx: Via<'_, '_, E>,
        access: &Access,
        table: &str,
        key: &[&str],
        subject: &str,
        values: &[(&str, Value)],
        who: &AuditEntry,
    ) -> Result<SealedRow> {
        let t = self.schema.app_table(table)?;
        let record = self.app_write_checks(access, t, key, subject)?;
        let fields: Vec<(String, Value)> = values.iter().map(|(c, v)| ((*c).to_owned(), v.clone())).collect();
        let mut tags = Tags::new();
        let (cells, indexes) = self.app_seal(tx, access, t, &record, subject, &fields, &mut tags).await?;
        let index_values = index_columns(t, &indexes)?;
        // Every protected column: the sealed ones, NULL for the others.
        let mut all: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        let mut present: Vec<(&str, &[u8])> = Vec::new();
        for c in t.protected_columns() {
            match cells.iter().find(|f| f.field == c.name) {
                Some(f) => {
                    present.push((&c.name, &f.sealed));
                    all.push((c.name.clone(), Some(f.sealed.clone())));
                }
                None => all.push((c.name.clone(), None)),
            }
        }
        for col in t.protected_columns().filter_map(|c| c.blind_index_column.as_ref()) {
            let idx = index_values.iter().find(|(c, _)| c == col).map(|(_, v)| v.clone());
            all.push((col.clone(), idx));
        }
        let tag = Self::app_row_tag(access, t, &record, subject, &present, &mut tags)?;
        all.push((t.row_tag_column.clone(), Some(tag)));
        let names: Vec<&str> = values.iter().map(|(c, _)| *c).collect();
        self.app_audit(tx, access, t, &record, subject, &names, WriteKind::Insert, who).await?;
        Ok(SealedRow { record, columns: all, previous_tag: None })
    }

    /// Seals new values of protected columns of a row the application read in full (`current`:
    /// every protected column and the row tag, as [`Store::open_app_rows`] takes them), for its
    /// own `UPDATE` in `tx`: `set` are sealed, `remove` become NULL, and the row tag is made
    /// anew over the cells the row will hold. `current` is checked against its row tag first
    /// ([`StoreError::RowIntegrity`] naming the row). [`SealedRow::columns`] holds the columns
    /// set or removed, their blind indexes and the row tag; [`SealedRow::previous_row_tag`] the
    /// tag to compare in the `UPDATE`'s `WHERE`. Audited in `tx` as [`Store::seal_insert`] is.
    #[allow(clippy::too_many_arguments)]
    pub async fn seal_update(
        &self,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        access: &Access,
        table: &str,
        current: &AppRow,
        set: &[(&str, Value)],
        remove: &[&str],
        who: &AuditEntry,
    ) -> Result<SealedRow> {
        self.seal_update_in(&mut Some(tx), access, table, current, set, remove, who).await
    }

    /// [`Store::seal_update`] for an application whose table is in another database, as
    /// [`Store::seal_insert_apart`] is.
    pub async fn seal_update_apart(
        &self,
        access: &Access,
        table: &str,
        current: &AppRow,
        set: &[(&str, Value)],
        remove: &[&str],
        who: &AuditEntry,
    ) -> Result<SealedRow> {
        self.seal_update_in(&mut None, access, table, current, set, remove, who).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn seal_update_in(
        &self,
        tx: Via<'_, '_, E>,
        access: &Access,
        table: &str,
        current: &AppRow,
        set: &[(&str, Value)],
        remove: &[&str],
        who: &AuditEntry,
    ) -> Result<SealedRow> {
        let t = self.schema.app_table(table)?;
        let record = self.app_write_checks(access, t, &current.key_refs(), &current.subject)?;
        let subject = current.subject.as_str();
        let bad = || StoreError::RowIntegrity { collection: t.name.clone(), record: record.clone() };
        // The row as it stands: every protected column, checked against its tag.
        let mut now: Vec<(String, Vec<u8>)> = Vec::new();
        for c in t.protected_columns() {
            match current.cells.iter().find(|(n, _)| n == &c.name) {
                Some((_, Some(v))) => now.push((c.name.clone(), v.clone())),
                Some((_, None)) => {}
                None => {
                    return Err(StoreError::Invalid(format!(
                        "an update of {}/{record} needs the row as read in full: column {} is missing",
                        t.name, c.name
                    )));
                }
            }
        }
        let mut tags = Tags::new();
        let stored_tag = current.row_tag.as_deref();
        let refs: Vec<(&str, &[u8])> = now.iter().map(|(c, v)| (c.as_str(), v.as_slice())).collect();
        match stored_tag {
            Some(tag) => Self::check_app_row(access, t, &record, subject, &refs, tag, &mut tags)?,
            // A row that holds no protected value and no tag: one Kluis has not written yet.
            None if now.is_empty() => {}
            None => return Err(bad()),
        }
        for r in remove {
            if t.protected_column(r).is_none() {
                return Err(StoreError::UnknownField { collection: t.name.clone(), field: (*r).to_owned() });
            }
            if set.iter().any(|(c, _)| c == r) {
                return Err(StoreError::Invalid(format!("column {}.{r} is both set and removed", t.name)));
            }
            let domain = t.protected_column(r).map(|c| c.domain.as_str()).unwrap_or_default();
            access.require(domain)?;
        }
        let fields: Vec<(String, Value)> = set.iter().map(|(c, v)| ((*c).to_owned(), v.clone())).collect();
        let (cells, indexes) = self.app_seal(tx, access, t, &record, subject, &fields, &mut tags).await?;
        let mut after: Vec<(&str, &[u8])> = refs
            .iter()
            .filter(|(c, _)| !remove.contains(c) && !cells.iter().any(|f| f.field == *c))
            .copied()
            .collect();
        after.extend(cells.iter().map(|f| (f.field.as_str(), f.sealed.as_slice())));
        let tag = Self::app_row_tag(access, t, &record, subject, &after, &mut tags)?;
        let mut columns: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for f in &cells {
            columns.push((f.field.clone(), Some(f.sealed.clone())));
        }
        for r in remove {
            columns.push(((*r).to_owned(), None));
        }
        columns.extend(index_columns(t, &indexes)?.into_iter().map(|(c, v)| (c, Some(v))));
        for c in t.protected_columns().filter(|c| remove.contains(&c.name.as_str())) {
            if let Some(col) = &c.blind_index_column {
                columns.push((col.clone(), None));
            }
        }
        columns.push((t.row_tag_column.clone(), Some(tag)));
        let mut names: Vec<&str> = set.iter().map(|(c, _)| *c).collect();
        names.extend(remove.iter().copied());
        self.app_audit(tx, access, t, &record, subject, &names, WriteKind::Update, who).await?;
        Ok(SealedRow { record, columns, previous_tag: stored_tag.map(<[u8]>::to_vec) })
    }

    /// Opens the protected columns the application selected from rows of its table `table`.
    /// Each row must lie in `access`'s scope. A row read in full (every protected column and its
    /// row tag) is checked against its tag first ([`StoreError::RowIntegrity`] naming the row:
    /// a value deleted, nulled, copied from another row or from an older version of the row);
    /// a row read in part has each value checked by its own binding (tenant, domain, mapping,
    /// column, row key). A column of a domain `access` has no key for comes back
    /// [`FieldValue::Withheld`] without a decryption attempt.
    ///
    /// One audit entry (`who` with the tenant, table, rows, subjects, columns and `read` filled
    /// in) is committed **before** anything is opened, in a transaction of its own: if it cannot
    /// be written, nothing is returned. (On SQLite that transaction waits for a write
    /// transaction the caller holds open: open before writing, or after committing.)
    pub async fn open_app_rows(
        &self,
        access: &Access,
        table: &str,
        rows: &[AppRow],
        who: &AuditEntry,
    ) -> Result<Vec<OpenedRow>> {
        let t = self.schema.app_table(table)?;
        self.app_tenant(access, t)?;
        let mut records = Vec::with_capacity(rows.len());
        for r in rows {
            let record = t.record_id(&r.key_refs())?;
            check_id("subject id", &r.subject)?;
            access.in_scope(&t.name, &record, &r.subject)?;
            for (c, _) in &r.cells {
                if t.protected_column(c).is_none() {
                    return Err(StoreError::UnknownField { collection: t.name.clone(), field: c.clone() });
                }
            }
            records.push(record);
        }
        let mut columns: Vec<&str> = Vec::new();
        for r in rows {
            for (c, _) in &r.cells {
                if !columns.contains(&c.as_str()) {
                    columns.push(c);
                }
            }
        }
        let mut subjects: Vec<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
        subjects.sort_unstable();
        subjects.dedup();
        let entry =
            Self::app_entry(access, t, &records.join(","), &subjects.join(","), &columns, "read", who);
        self.append_audit(AuditAppend { entry, checkpoint_every: DEFAULT_CHECKPOINT_EVERY }).await?;
        let mut tags = Tags::new();
        let mut out = Vec::with_capacity(rows.len());
        for (r, record) in rows.iter().zip(records) {
            out.push(self.open_app_row(access, t, r, record, &mut tags).await?);
        }
        Ok(out)
    }

    /// The values to look `value` up by in the blind index column of `column`
    /// (`WHERE tenant_id = ? AND bsn_idx IN (?, ...)`): one per live version of the column's
    /// domain key, since a row keeps the index of the version it was written under until it is
    /// written again. A hit still has to be opened: a blind index only narrows the search.
    pub fn app_blind_index(
        &self,
        access: &Access,
        table: &str,
        column: &str,
        value: &Value,
    ) -> Result<Vec<Vec<u8>>> {
        let t = self.schema.app_table(table)?;
        self.app_tenant(access, t)?;
        let c = t.protected_column(column).ok_or_else(|| StoreError::UnknownField {
            collection: t.name.clone(),
            field: column.to_owned(),
        })?;
        if c.blind_index_column.is_none() {
            return Err(StoreError::NotIndexed { collection: t.name.clone(), field: column.to_owned() });
        }
        let coll = t.as_collection();
        check_value(&coll, field_def(&coll, column)?, value)?;
        let set = access.require(c.domain.as_str())?;
        let encoded = value.encode();
        let mut out = Vec::new();
        for (v, state) in set.versions() {
            if matches!(state, KeyState::Active | KeyState::DecryptOnly) {
                let idx = Self::blind_index(set, v, &t.name, column, &encoded)?;
                out.push(index_value(v.to_stored(), &idx)?);
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- helpers

    /// The checks of every write: tenant, ids, scope, write access; the row's record id.
    fn app_write_checks(&self, access: &Access, t: &AppTable, key: &[&str], subject: &str) -> Result<String> {
        self.app_tenant(access, t)?;
        let record = t.record_id(key)?;
        check_id("subject id", subject)?;
        access.require_write(&format!("a write of {}/{record}", t.name))?;
        access.in_scope(&t.name, &record, subject)?;
        Ok(record)
    }

    /// A mapping of one fixed tenant is reached only with that tenant's keys.
    pub(super) fn app_tenant(&self, access: &Access, t: &AppTable) -> Result<()> {
        match &t.tenant {
            TenantSource::Fixed(x) if x != &access.tenant => Err(StoreError::OutOfScope {
                what: format!("table {} (tenant {x})", t.name),
                scope: format!("tenant {}", access.tenant),
            }),
            _ => Ok(()),
        }
    }

    /// Checks and seals `fields` of one row, the subject keys found or made in `tx` (and kept in
    /// `tags`, the call's cache).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn app_seal(
        &self,
        tx: Via<'_, '_, E>,
        access: &Access,
        t: &AppTable,
        record: &str,
        subject: &str,
        fields: &[(String, Value)],
        tags: &mut Tags,
    ) -> Result<(Vec<FieldRow>, Vec<IndexRow>)> {
        let coll = t.as_collection();
        check_fields(&coll, fields, |def| access.require(def.domain.as_str()).map(|_| ()))?;
        let mut done: Vec<&DomainName> = Vec::new();
        for (name, _) in fields {
            let def = field_def(&coll, name)?;
            if !done.contains(&&def.domain) {
                let set = access.require(def.domain.as_str())?;
                match tx {
                    Some(tx) => self.subject_key_in_tx(tx, set, subject, tags).await?,
                    None => {
                        self.subject_key_for_write(set, subject, tags).await?;
                    }
                }
                done.push(&def.domain);
            }
        }
        Self::seal_fields_now(access, &coll, record, subject, fields, tags)
    }

    /// The subject's newest key of `set`'s domain for a write inside the application's
    /// transaction: the newest committed one, or else version 1 inserted in `tx` (kept out of the
    /// store's cache until it is committed: the transaction may still roll back).
    pub(super) async fn subject_key_in_tx(
        &self,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        set: &DomainKeySet,
        subject: &str,
        tags: &mut Tags,
    ) -> Result<()> {
        let domain = set.domain().as_str();
        if tags.newest_key(subject, domain).is_some() {
            return Ok(());
        }
        if let Some((v, _)) = self.load_subject_key(set, subject, None, tags).await? {
            tags.remember_newest(subject, domain, v);
            return Ok(());
        }
        let (row, key) = Self::new_subject_key_pair(set, subject, KeyVersion::FIRST)?;
        let key = if SqlBackend::<E>::insert_subject_key_keep(&mut **tx, &row).await? {
            Arc::new(key)
        } else {
            // Another transaction (committed since) or this one made it first.
            let stored = SqlBackend::<E>::subject_key_locked(
                &mut **tx,
                &row.tenant,
                &row.domain,
                subject,
                row.version,
            )
            .await?
            .ok_or_else(|| StoreError::KeyChanged {
                what: format!("subject key {}/{domain}/{subject}", set.tenant()),
            })?;
            self.open_subject_row(set, &stored, tags)?
        };
        tags.remember(subject, domain, KeyVersion::FIRST, &key);
        tags.remember_newest(subject, domain, KeyVersion::FIRST);
        Ok(())
    }

    /// The row tag of an application row holding `cells`, under the active version of the
    /// tenant's row_tags key (docs/FORMAT.md §10.2).
    pub(super) fn app_row_tag(
        access: &Access,
        t: &AppTable,
        record: &str,
        subject: &str,
        cells: &[(&str, &[u8])],
        tags: &mut Tags,
    ) -> Result<Vec<u8>> {
        let input = app_tag_input(access.tenant.as_str(), &t.name, record, subject, cells);
        Self::tag_over(access, &input, tags)
    }

    /// Checks an application row against its tag.
    pub(super) fn check_app_row(
        access: &Access,
        t: &AppTable,
        record: &str,
        subject: &str,
        cells: &[(&str, &[u8])],
        tag: &[u8],
        tags: &mut Tags,
    ) -> Result<()> {
        let input = app_tag_input(access.tenant.as_str(), &t.name, record, subject, cells);
        if Self::tag_matches(access, tag, &input, tags)? {
            Ok(())
        } else {
            Err(StoreError::RowIntegrity { collection: t.name.clone(), record: record.to_owned() })
        }
    }

    async fn open_app_row(
        &self,
        access: &Access,
        t: &AppTable,
        r: &AppRow,
        record: String,
        tags: &mut Tags,
    ) -> Result<OpenedRow> {
        let subject = r.subject.as_str();
        let full = t.protected_columns().all(|c| r.cells.iter().any(|(n, _)| n == &c.name));
        let present: Vec<(&str, &[u8])> =
            r.cells.iter().filter_map(|(c, v)| v.as_deref().map(|v| (c.as_str(), v))).collect();
        let row_checked = match (&r.row_tag, full) {
            (Some(tag), true) => {
                Self::check_app_row(access, t, &record, subject, &present, tag, tags)?;
                true
            }
            // Read in full without a tag: only a row holding nothing may lack one.
            (None, true) if !present.is_empty() => {
                return Err(StoreError::RowIntegrity { collection: t.name.clone(), record });
            }
            _ => false,
        };
        let mut values = BTreeMap::new();
        let mut ad = Vec::with_capacity(160);
        for (column, sealed) in present {
            let integrity = || StoreError::Integrity {
                collection: t.name.clone(),
                record: record.clone(),
                field: column.to_owned(),
            };
            let c = t.protected_column(column).ok_or_else(integrity)?;
            let Some(set) = access.set(c.domain.as_str()) else {
                values.insert(column.to_owned(), FieldValue::Withheld { domain: c.domain.to_string() });
                continue;
            };
            // The subject key version is in the sealed value's header.
            let v = kluis_core::SealedHeader::parse(sealed)
                .ok()
                .and_then(|h| h.key.version)
                .ok_or_else(integrity)?;
            let sk = match tags.key(subject, c.domain.as_str(), v) {
                Some(k) => k.clone(),
                None => self.load_subject_key(set, subject, Some(v), tags).await?.ok_or_else(integrity)?.1,
            };
            let ctx = Context {
                tenant: &access.tenant,
                domain: set.domain(),
                collection: &t.name,
                field: column,
                record: &record,
            };
            let pt = sk.open_vec(&ctx, sealed.to_vec(), &mut ad).map_err(|_| integrity())?;
            let value = Value::decode(pt.expose_secret()).ok_or_else(integrity)?;
            values.insert(column.to_owned(), FieldValue::Value(value));
        }
        Ok(OpenedRow { record, values, row_checked })
    }

    #[allow(clippy::too_many_arguments)]
    async fn app_audit(
        &self,
        tx: Via<'_, '_, E>,
        access: &Access,
        t: &AppTable,
        record: &str,
        subject: &str,
        columns: &[&str],
        kind: WriteKind,
        who: &AuditEntry,
    ) -> Result<()> {
        let action = match kind {
            WriteKind::Insert => "create",
            WriteKind::Update => "update",
        };
        let entry = Self::app_entry(access, t, record, subject, columns, action, who);
        let append = AuditAppend { entry, checkpoint_every: DEFAULT_CHECKPOINT_EVERY };
        match tx {
            Some(tx) => SqlBackend::<E>::audit_append(tx, append).await,
            None => self.append_audit(append).await,
        }
    }

    /// `who` with what was touched filled in: names and ids, never a value.
    pub(super) fn app_entry(
        access: &Access,
        t: &AppTable,
        record: &str,
        subject: &str,
        columns: &[&str],
        action: &str,
        who: &AuditEntry,
    ) -> AuditEntry {
        let mut named: Vec<String> = columns
            .iter()
            .filter_map(|c| t.protected_column(c).map(|p| format!("{}:{}", p.domain, p.name)))
            .collect();
        named.sort();
        named.dedup();
        AuditEntry {
            tenant: access.tenant.to_string(),
            collection: t.name.clone(),
            record: record.to_owned(),
            subject: subject.to_owned(),
            fields: named.join(","),
            action: action.to_owned(),
            outcome: "allowed".to_owned(),
            ..who.clone()
        }
    }
}

/// The blind index columns of `t` that `indexes` (of sealed fields) fill, with their values.
pub(super) fn index_columns(t: &AppTable, indexes: &[IndexRow]) -> Result<Vec<(String, Vec<u8>)>> {
    indexes
        .iter()
        .filter_map(|i| {
            let col = t.protected_column(&i.field)?.blind_index_column.clone()?;
            Some(index_value(i.key_version, &i.idx).map(|v| (col, v)))
        })
        .collect()
}

/// A blind index column's value: the domain key version (u32 BE) and the index (docs/FORMAT.md
/// §10.2).
pub(super) fn index_value(version: i64, idx: &[u8]) -> Result<Vec<u8>> {
    let v = KeyVersion::from_stored(version)
        .map_err(|_| StoreError::Invalid("blind index key version".into()))?;
    let mut out = Vec::with_capacity(4 + idx.len());
    out.extend_from_slice(&v.to_be_bytes());
    out.extend_from_slice(idx);
    Ok(out)
}
