//! The write path: a batch of writes in one transaction, inserts gathered into multi-row statements, each row logged, the subject keys used checked before commit.

use super::*;

/// The subject key versions a batch's cells were sealed under, without duplicates, by subject then
/// (tenant, domain, version): [`SqlBackend::apply`] checks them all with a few statements before it
/// commits, instead of one lookup per record and domain.
#[derive(Default)]
pub(super) struct KeyUses {
    pub(super) by_subject: std::collections::BTreeMap<String, Vec<(String, String, i64)>>,
}

/// Subject key versions per check statement (4 binds each).
pub(super) const KEY_USES_PER_STATEMENT: usize = 200;

impl KeyUses {
    pub(super) fn add(&mut self, tenant: &str, domain: &str, subject: &str, version: i64) {
        match self.by_subject.get_mut(subject) {
            Some(list) => {
                if !list.iter().any(|(t, d, v)| t == tenant && d == domain && *v == version) {
                    list.push((tenant.to_owned(), domain.to_owned(), version));
                }
            }
            None => {
                self.by_subject
                    .insert(subject.to_owned(), vec![(tenant.to_owned(), domain.to_owned(), version)]);
            }
        }
    }

    /// (tenant, domain, subject, version).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &str, &str, i64)> {
        self.by_subject
            .iter()
            .flat_map(|(s, list)| list.iter().map(move |(t, d, v)| (t.as_str(), d.as_str(), s.as_str(), *v)))
    }
}

/// `s.version` (of a `kluis_subject_keys s` joined to a row `r`) is the key version of one of
/// `r`'s cells of `domain`.
/// What a write transaction appends at its end ([`crate::row_log`]): a row log entry per row
/// changed, then its audit entries, under the audit head lock it took before any row.
#[derive(Default)]
pub(super) struct TxLog {
    pub(super) locked: bool,
    pub(super) rows: Vec<RowLogEntry>,
    pub(super) audits: Vec<crate::audit::AuditAppend>,
}

impl TxLog {
    /// Does `op` change a row or append an audit entry (and so need the head lock)?
    pub(super) fn needs_lock(op: &WriteOp) -> bool {
        matches!(
            op,
            WriteOp::Insert { .. } | WriteOp::Update { .. } | WriteOp::Delete { .. } | WriteOp::Audit(_)
        )
    }

    /// Notes the row change `op` makes.
    pub(super) fn note(&mut self, op: &WriteOp) {
        let (table, tenant, id, tag) = match op {
            WriteOp::Insert { table, record, .. } | WriteOp::Update { table, record, .. } => {
                (table, &record.tenant, &record.id, Some(record.tag.clone()))
            }
            WriteOp::Delete { table, tenant, id, .. } => (table, tenant, id, None),
            _ => return,
        };
        self.rows.push(RowLogEntry {
            tenant: tenant.clone(),
            collection: table.collection.clone(),
            record: id.clone(),
            tag,
        });
    }
}

/// The bind of a clear field's column: the value (in its encoding, as the row tag covers it)
/// decoded into the column's type; `None` binds NULL.
pub(super) fn clear_arg(
    table: &Table,
    field: &str,
    ty: FieldType,
    encoded: Option<&[u8]>,
) -> Result<Arg<'static>> {
    let Some(b) = encoded else {
        return Ok(match ty {
            FieldType::Integer => Arg::I(None),
            FieldType::Bool => Arg::Bool(None),
            FieldType::Bytes => Arg::Bytes(None),
            _ => Arg::Text(None),
        });
    };
    let bad =
        || StoreError::Invalid(format!("field {}.{field}: not a {} value", table.collection, ty.as_str()));
    // The value goes into the database in clear anyway: the copies need no wiping.
    let value = Value::decode(b).ok_or_else(bad)?;
    Ok(match (ty, &value) {
        (FieldType::Integer, Value::Integer(i)) => Arg::I(Some(*i)),
        (FieldType::Bool, Value::Bool(v)) => Arg::Bool(Some(*v)),
        (FieldType::Bytes, Value::Bytes(v)) => Arg::Bytes(Some(v.clone())),
        (FieldType::Text, Value::Text(v))
        | (FieldType::Decimal | FieldType::Percentage, Value::Decimal(v))
        | (FieldType::Date, Value::Date(v)) => Arg::Text(Some(v.clone())),
        _ => return Err(bad()),
    })
}

/// The index columns of `field` in `table`.
pub(super) fn index_columns<'t>(table: &'t Table, field: &str) -> Result<(&'t str, &'t str)> {
    table
        .cell(field)
        .and_then(|c| c.index.as_ref())
        .map(|(i, j)| (i.as_str(), j.as_str()))
        .ok_or_else(|| StoreError::Schema(format!("field {}.{field} has no blind index", table.collection)))
}

pub(super) fn check_fields(table: &Table, fields: &[FieldRow], indexes: &[IndexRow]) -> Result<()> {
    for f in fields {
        if table.cell(&f.field).is_none() {
            return Err(StoreError::Schema(format!("unknown field {}.{}", table.collection, f.field)));
        }
    }
    for i in indexes {
        index_columns(table, &i.field)?;
    }
    Ok(())
}

/// One row of an insert: the clear columns (with the tag), the cells, the blind indexes.
pub(super) type InsertRow = (RecordRow, Vec<FieldRow>, Vec<IndexRow>);

/// Rows per multi-row `INSERT`: at most 500, and at most 30,000 binds per statement (SQLite
/// allows 32,766, PostgreSQL and MariaDB 65,535).
pub(super) fn rows_per_insert(table: &Table) -> usize {
    let binds = 8 + table.cells.iter().map(|c| if c.index.is_some() { 4 } else { 2 }).sum::<usize>();
    (30_000 / binds).clamp(1, 500)
}

/// One `INSERT` of whole rows (every column; NULL where a field is not set).
pub(super) fn insert_rows<'a>(table: &Table, rows: &'a [InsertRow]) -> Result<(String, Vec<Arg<'a>>)> {
    insert_rows_with(table, rows, None)
}

/// [`insert_rows`], with the row tags, sealed cells and blind indexes moved out of `rows` into
/// the binds, so the driver takes them without a copy (sqlx copies every borrowed bind before it
/// hands a statement over). The rest of `rows` (ids, subjects, fields, key versions) stays for
/// naming a duplicate and counting key uses.
pub(super) fn insert_rows_taking<'a>(
    table: &Table,
    rows: &'a mut [InsertRow],
) -> Result<(String, Vec<Arg<'a>>)> {
    let mut blobs = Vec::with_capacity(rows.len() * (1 + 2 * table.cells.len()));
    for (r, fields, indexes) in rows.iter_mut() {
        blobs.push(Some(std::mem::take(&mut r.tag)));
        // The order in which insert_rows_with binds them.
        for c in table.cells.iter().filter(|c| c.clear.is_none()) {
            blobs.push(fields.iter_mut().find(|f| f.field == c.field).map(|f| std::mem::take(&mut f.sealed)));
            if c.index.is_some() {
                blobs.push(
                    indexes.iter_mut().find(|x| x.field == c.field).map(|x| std::mem::take(&mut x.idx)),
                );
            }
        }
    }
    insert_rows_with(table, rows, Some(&mut blobs.into_iter()))
}

/// [`insert_rows`], taking the blobs from `owned` (in binding order) when given.
pub(super) fn insert_rows_with<'a>(
    table: &Table,
    rows: &'a [InsertRow],
    mut owned: Option<&mut std::vec::IntoIter<Option<Vec<u8>>>>,
) -> Result<(String, Vec<Arg<'a>>)> {
    let mut blob = |b: Option<&'a [u8]>| -> Result<Arg<'a>> {
        match owned.as_mut() {
            Some(it) => it.next().map(Arg::Bytes).ok_or_else(|| StoreError::Invalid("insert binds".into())),
            None => Ok(Arg::B(b)),
        }
    };
    let mut cols =
        String::from("tenant, id, subject, version, created_at, updated_at, retain_until, row_tag");
    for c in &table.cells {
        match c.clear {
            Some(_) => cols.push_str(&format!(", {}", c.sealed)),
            None => cols.push_str(&format!(", {}, {}", c.sealed, c.version)),
        }
        if let Some((i, j)) = &c.index {
            cols.push_str(&format!(", {i}, {j}"));
        }
    }
    let mut args = Vec::new();
    let mut values = String::new();
    for (r, fields, indexes) in rows {
        check_fields(table, fields, indexes)?;
        let start = args.len();
        args.extend([
            Arg::S(&r.tenant),
            Arg::S(&r.id),
            Arg::S(&r.subject),
            Arg::I(Some(r.version)),
            Arg::I(Some(r.created_at)),
            Arg::I(Some(r.updated_at)),
            Arg::I(r.retain_until),
        ]);
        args.push(blob(Some(&r.tag))?);
        for c in &table.cells {
            let cell = fields.iter().find(|f| f.field == c.field);
            if let Some(ty) = c.clear {
                args.push(clear_arg(table, &c.field, ty, cell.map(|f| f.sealed.as_slice()))?);
                continue;
            }
            args.push(blob(cell.map(|f| f.sealed.as_slice()))?);
            args.push(Arg::I(cell.map(|f| f.key_version)));
            if c.index.is_some() {
                let ix = indexes.iter().find(|x| x.field == c.field);
                args.push(blob(ix.map(|x| x.idx.as_slice()))?);
                args.push(Arg::I(ix.map(|x| x.key_version)));
            }
        }
        if !values.is_empty() {
            values.push_str(", ");
        }
        values.push('(');
        values.push_str(&placeholders(args.len() - start));
        values.push(')');
    }
    Ok((format!("INSERT INTO {} ({cols}) VALUES {values}", table.name), args))
}

/// Inserts of one table waiting to be written as one multi-row `INSERT`.
/// The first id that occurs twice in `rows`.
pub(super) fn duplicate_in(rows: &[InsertRow]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    rows.iter().map(|(r, _, _)| (r.tenant.as_str(), r.id.as_str())).find(|k| !seen.insert(*k)).map(|k| k.1)
}

pub(super) struct PendingInserts {
    pub(super) table: Arc<Table>,
    pub(super) rows: Vec<InsertRow>,
}

/// `UPDATE` of a row still at `expected`: new bookkeeping columns and tag, the cells set and
/// removed; the blind index of every field set or removed is replaced by the one given or cleared.
pub(super) fn update_row<'a>(
    table: &Table,
    r: &'a RecordRow,
    expected: (i64, &'a [u8]),
    (set, remove, indexes): (&'a [FieldRow], &'a [String], &'a [IndexRow]),
    null_columns: &[String],
) -> Result<(String, Vec<Arg<'a>>)> {
    check_fields(table, set, indexes)?;
    let mut sql =
        format!("UPDATE {} SET version = ?, updated_at = ?, retain_until = ?, row_tag = ?", table.name);
    let mut args = vec![
        Arg::I(Some(r.version)),
        Arg::I(Some(r.updated_at)),
        Arg::I(r.retain_until),
        Arg::B(Some(&r.tag)),
    ];
    for c in &table.cells {
        let cell = set.iter().find(|f| f.field == c.field);
        let removed = remove.contains(&c.field);
        if cell.is_none() && !removed {
            continue;
        }
        if let Some(ty) = c.clear {
            sql.push_str(&format!(", {} = ?", c.sealed));
            args.push(clear_arg(table, &c.field, ty, cell.map(|f| f.sealed.as_slice()))?);
            continue;
        }
        sql.push_str(&format!(", {} = ?, {} = ?", c.sealed, c.version));
        args.push(Arg::B(cell.map(|f| f.sealed.as_slice())));
        args.push(Arg::I(cell.map(|f| f.key_version)));
        if let Some((i, j)) = &c.index {
            let ix = indexes.iter().find(|x| x.field == c.field);
            sql.push_str(&format!(", {i} = ?, {j} = ?"));
            args.push(Arg::B(ix.map(|x| x.idx.as_slice())));
            args.push(Arg::I(ix.map(|x| x.key_version)));
        }
    }
    for f in remove {
        if table.cell(f).is_none() {
            return Err(StoreError::Schema(format!("unknown field {}.{f}", table.collection)));
        }
    }
    for col in null_columns {
        // Only identifiers a layout made (checked: never text from elsewhere in SQL).
        if !col.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(StoreError::Invalid(format!("column name {col:?}")));
        }
        sql.push_str(&format!(", {col} = NULL"));
    }
    sql.push_str(" WHERE tenant = ? AND id = ? AND version = ? AND row_tag = ?");
    args.push(Arg::S(&r.tenant));
    args.push(Arg::S(&r.id));
    args.push(Arg::I(Some(expected.0)));
    args.push(Arg::B(Some(expected.1)));
    Ok((sql, args))
}

impl<E: Engine> SqlBackend<E> {
    pub(super) async fn apply_one(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        op: WriteOp,
        used: &mut KeyUses,
    ) -> Result<()> {
        match op {
            WriteOp::Insert { table, record, fields, indexes } => {
                let row = [(record, fields, indexes)];
                let (sql, args) = insert_rows(&table, &row)?;
                let sql = E::sql(&sql).into_owned();
                if let Err(e) =
                    query::<E>(&sql).bind_all(args.iter().map(Arg::borrowed)).execute(&mut **tx).await
                {
                    if unique_violation(&e) {
                        return Err(StoreError::AlreadyExists {
                            collection: table.collection.clone(),
                            record: row[0].0.id.clone(),
                        });
                    }
                    return Err(e.into());
                }
                drop(args);
                let [(record, fields, _)] = row;
                for f in fields.iter().filter(|f| table.is_sealed(&f.field)) {
                    used.add(&record.tenant, &f.domain, &record.subject, f.key_version);
                }
                Ok(())
            }
            WriteOp::Update {
                table,
                record,
                expected_version,
                expected_tag,
                set_fields,
                remove_fields,
                set_indexes,
                null_columns,
            } => {
                let (sql, args) = update_row(
                    &table,
                    &record,
                    (expected_version, &expected_tag),
                    (&set_fields, &remove_fields, &set_indexes),
                    &null_columns,
                )?;
                let sql = E::sql(&sql).into_owned();
                let done =
                    query::<E>(&sql).bind_all(args.iter().map(Arg::borrowed)).execute(&mut **tx).await?;
                if done.rows_affected() != 1 {
                    return Err(
                        match Self::conflict(tx, &table, &record.tenant, &record.id, expected_version).await {
                            // Same version, other tag: a re-encryption rewrote the row.
                            StoreError::Conflict { expected, found, .. } if expected == found => {
                                StoreError::KeyChanged {
                                    what: format!(
                                        "record {}/{} was re-encrypted meanwhile",
                                        table.collection, record.id
                                    ),
                                }
                            }
                            e => e,
                        },
                    );
                }
                for f in set_fields.iter().filter(|f| table.is_sealed(&f.field)) {
                    used.add(&record.tenant, &f.domain, &record.subject, f.key_version);
                }
                Ok(())
            }
            WriteOp::SetIndex { table, tenant, record_id, index } => {
                let (i, j) = index_columns(&table, &index.field)?;
                let sql = format!("UPDATE {} SET {i} = ?, {j} = ? WHERE tenant = ? AND id = ?", table.name);
                query::<E>(&E::sql(&sql))
                    .bind(index.idx)
                    .bind(index.key_version)
                    .bind(tenant)
                    .bind(record_id)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
            WriteOp::DropIndex { table, tenant, record_id, field } => {
                let (i, j) = index_columns(&table, &field)?;
                let sql =
                    format!("UPDATE {} SET {i} = NULL, {j} = NULL WHERE tenant = ? AND id = ?", table.name);
                query::<E>(&E::sql(&sql)).bind(tenant).bind(record_id).execute(&mut **tx).await?;
                Ok(())
            }
            WriteOp::Override(row) => Self::insert_override(tx, row).await,
            WriteOp::Audit(a) => Self::audit_append(tx, a).await,
            WriteOp::InsertDocument(d) => Self::insert_document_tx(tx, d).await,
            WriteOp::DeleteDocument { tenant, document_id } => {
                let done =
                    query::<E>(&E::sql("DELETE FROM kluis_documents WHERE tenant = ? AND document_id = ?"))
                        .bind(&tenant)
                        .bind(&document_id)
                        .execute(&mut **tx)
                        .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::NotFound {
                        collection: "kluis_documents".into(),
                        record: document_id,
                    });
                }
                Ok(())
            }
            WriteOp::Delete { table, tenant, id, expected_version } => {
                // The record's catalog documents go in the same transaction (their blobs
                // are then unreferenced: the blob store's garbage collection removes
                // them). Before the record row, whose subject narrows the match.
                let sql = format!(
                    "DELETE FROM kluis_documents WHERE tenant = ? AND record_id = ? AND subject = \
                         (SELECT subject FROM {} WHERE tenant = ? AND id = ?)",
                    table.name
                );
                query::<E>(&E::sql(&sql))
                    .bind(&tenant)
                    .bind(&id)
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
                let sql = match expected_version {
                    Some(_) => {
                        format!("DELETE FROM {} WHERE tenant = ? AND id = ? AND version = ?", table.name)
                    }
                    None => format!("DELETE FROM {} WHERE tenant = ? AND id = ?", table.name),
                };
                let sql = E::sql(&sql).into_owned();
                let mut q = query::<E>(&sql).bind(&tenant).bind(&id);
                if let Some(v) = expected_version {
                    q = q.bind(v);
                }
                let done = q.execute(&mut **tx).await?;
                if done.rows_affected() != 1 {
                    return Err(match expected_version {
                        Some(v) => Self::conflict(tx, &table, &tenant, &id, v).await,
                        None => StoreError::NotFound { collection: table.collection.clone(), record: id },
                    });
                }
                Ok(())
            }
        }
    }

    /// Writes the pending inserts as one statement; a duplicate id is
    /// [`StoreError::AlreadyExists`] naming that record (found in the statement itself,
    /// else through `pool`: a concurrent insert of the same id has committed by then, the
    /// statement waited for it).
    pub(super) async fn flush_inserts(
        pool: &sqlx::Pool<E::Db>,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        pending: &mut Option<PendingInserts>,
        used: &mut KeyUses,
    ) -> Result<()> {
        let Some(mut p) = pending.take() else { return Ok(()) };
        let (sql, args) = insert_rows_taking(&p.table, &mut p.rows)?;
        let sql = E::sql(&sql).into_owned();
        let res = query::<E>(&sql).bind_all(args).execute(&mut **tx).await;
        match res {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => {
                let record = match duplicate_in(&p.rows) {
                    Some(id) => id.to_owned(),
                    None => Self::existing_id(pool, &p).await?,
                };
                return Err(StoreError::AlreadyExists { collection: p.table.collection.clone(), record });
            }
            Err(e) => return Err(e.into()),
        }
        for (r, fields, _) in &p.rows {
            // Once per (domain, version) of the row: its cells of a domain share a key.
            let mut last: Option<(&str, i64)> = None;
            for f in fields.iter().filter(|f| p.table.is_sealed(&f.field)) {
                if last != Some((f.domain.as_str(), f.key_version)) {
                    used.add(&r.tenant, &f.domain, &r.subject, f.key_version);
                    last = Some((f.domain.as_str(), f.key_version));
                }
            }
        }
        Ok(())
    }

    /// The first id of `p` its table already holds (the first of `p` if none).
    pub(super) async fn existing_id(pool: &sqlx::Pool<E::Db>, p: &PendingInserts) -> Result<String> {
        let cond = vec!["(tenant = ? AND id = ?)"; p.rows.len()].join(" OR ");
        let sql = format!("SELECT id FROM {} WHERE {cond} ORDER BY id LIMIT 1", p.table.name);
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql);
        for (r, _, _) in &p.rows {
            q = q.bind(r.tenant.as_str()).bind(r.id.as_str());
        }
        match q.fetch_optional(pool).await? {
            Some(row) => text(&row, 0),
            None => Ok(p.rows.first().map(|(r, _, _)| r.id.clone()).unwrap_or_default()),
        }
    }

    /// [`Self::apply_one`], with inserts of one table gathered into multi-row statements.
    pub(super) async fn apply_gathered(
        pool: &sqlx::Pool<E::Db>,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        op: WriteOp,
        pending: &mut Option<PendingInserts>,
        used: &mut KeyUses,
        log: &mut TxLog,
    ) -> Result<()> {
        if TxLog::needs_lock(&op) && !log.locked {
            Self::lock_head(tx).await?;
            log.locked = true;
        }
        log.note(&op);
        match op {
            WriteOp::Audit(a) => {
                log.audits.push(a);
                Ok(())
            }
            WriteOp::Insert { table, record, fields, indexes } => {
                let full = pending
                    .as_ref()
                    .is_some_and(|p| p.table.name != table.name || p.rows.len() >= rows_per_insert(&p.table));
                if full {
                    Self::flush_inserts(pool, tx, pending, used).await?;
                }
                pending
                    .get_or_insert_with(|| PendingInserts { table, rows: Vec::new() })
                    .rows
                    .push((record, fields, indexes));
                Ok(())
            }
            other => {
                Self::flush_inserts(pool, tx, pending, used).await?;
                Self::apply_one(tx, other, used).await
            }
        }
    }

    /// The log of a transaction that changes no row and appends `audit`, if any: the head
    /// lock is taken first (before any key row) when there is an entry.
    pub(super) async fn start_log(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<TxLog> {
        let log = TxLog { locked: audit.is_some(), rows: Vec::new(), audits: audit.into_iter().collect() };
        if log.locked {
            Self::lock_head(tx).await?;
        }
        Ok(log)
    }

    /// Appends the transaction's row log entries, then its audit entries (which so cover
    /// them).
    pub(super) async fn finish_log(tx: &mut sqlx::Transaction<'static, E::Db>, log: TxLog) -> Result<()> {
        Self::log_rows(tx, &log.rows).await?;
        for a in log.audits {
            Self::audit_append(tx, a).await?;
        }
        Ok(())
    }

    pub(super) async fn conflict(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        table: &Table,
        tenant: &str,
        id: &str,
        expected: i64,
    ) -> StoreError {
        let sql = format!("SELECT version FROM {} WHERE tenant = ? AND id = ?", table.name);
        let found: std::result::Result<Option<i64>, sqlx::Error> =
            query_scalar::<E, i64>(&E::sql(&sql)).bind(tenant).bind(id).fetch_optional(&mut **tx).await;
        match found {
            Err(e) => e.into(),
            Ok(None) => StoreError::NotFound { collection: table.collection.clone(), record: id.to_owned() },
            Ok(Some(v)) => match (u64::try_from(expected), u64::try_from(v)) {
                (Ok(expected), Ok(found)) => StoreError::Conflict {
                    collection: table.collection.clone(),
                    record: id.to_owned(),
                    expected,
                    found,
                },
                _ => StoreError::Corrupt {
                    what: "record version",
                    reason: format!("{}/{id}: {v}", table.collection),
                },
            },
        }
    }

    /// A cell may only be written under a subject key that still exists: the share lock
    /// makes a concurrent re-encryption or shred that deletes such a version wait for this
    /// commit (and then see the cell), or this writer see the deletion and give up
    /// ([`StoreError::KeyChanged`]). Run once per batch, after its writes and before the
    /// commit (the locks are held to the commit either way), a few hundred versions per
    /// statement.
    pub(super) async fn require_subject_keys(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        used: &KeyUses,
    ) -> Result<()> {
        let all: Vec<(&str, &str, &str, i64)> = used.iter().collect();
        for chunk in all.chunks(KEY_USES_PER_STATEMENT) {
            let counted = E::count_subject_keys(&mut **tx, chunk).await?;
            if counted.is_some_and(|n| usize::try_from(n).is_ok_and(|n| n == chunk.len())) {
                continue;
            }
            let mut cond = String::with_capacity(chunk.len() * 64);
            for i in 0..chunk.len() {
                if i > 0 {
                    cond.push_str(" OR ");
                }
                cond.push_str("(tenant = ? AND domain = ? AND subject = ? AND version = ?)");
            }
            // The versions of a chunk are distinct and the table's primary key is
            // (tenant, domain, subject, version): all exist exactly when the count of
            // matching rows is the chunk's length. Counting sends one row back instead of
            // a few hundred (on SQLite each row is a hop through sqlx's worker thread). An engine
            // that counted above already found a version missing: the same count again would too.
            let count =
                counted.is_none().then(|| E::count_shared(&format!("kluis_subject_keys WHERE {cond}")));
            if let Some(sql) = count.flatten() {
                let sql = E::sql(&sql).into_owned();
                let mut q = query_scalar::<E, i64>(&sql);
                for (t, d, s, v) in chunk {
                    q = q.bind(*t).bind(*d).bind(*s).bind(*v);
                }
                let n = q.fetch_one(&mut **tx).await?;
                if usize::try_from(n).is_ok_and(|n| n == chunk.len()) {
                    continue;
                }
            }
            // MariaDB, or a version is missing: read the rows to name it.
            let sql = format!(
                "SELECT tenant, domain, subject, version FROM kluis_subject_keys WHERE {cond}{}",
                E::SHARE_LOCK
            );
            let sql = E::sql(&sql).into_owned();
            let mut q = query::<E>(&sql);
            for (t, d, s, v) in chunk {
                q = q.bind(*t).bind(*d).bind(*s).bind(*v);
            }
            let rows = q.fetch_all(&mut **tx).await?;
            let mut found: Vec<(String, String, String, i64)> = Vec::with_capacity(rows.len());
            for row in &rows {
                found.push((text(row, 0)?, text(row, 1)?, text(row, 2)?, row.col(3)?));
            }
            found.sort_unstable();
            for (t, d, s, v) in chunk {
                let hit = found
                    .binary_search_by(|f| {
                        (f.0.as_str(), f.1.as_str(), f.2.as_str(), f.3).cmp(&(*t, *d, *s, *v))
                    })
                    .is_ok();
                if !hit {
                    return Err(StoreError::KeyChanged { what: format!("subject key {t}/{d}/{s} v{v}") });
                }
            }
        }
        Ok(())
    }

    /// Applies a batch of writes in one transaction; any error rolls all of it back.
    pub async fn apply(&self, ops: Vec<WriteOp>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let mut used = KeyUses::default();
        let mut pending = None;
        let mut log = TxLog::default();
        // The head lock before any row lock (see crate::row_log).
        if ops.iter().any(TxLog::needs_lock) {
            Self::lock_head(&mut tx).await?;
            log.locked = true;
        }
        for op in ops {
            // On error `tx` is dropped without commit: everything rolls back.
            Self::apply_gathered(&self.pool, &mut tx, op, &mut pending, &mut used, &mut log).await?;
        }
        Self::flush_inserts(&self.pool, &mut tx, &mut pending, &mut used).await?;
        Self::finish_log(&mut tx, log).await?;
        Self::require_subject_keys(&mut tx, &used).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`SqlBackend::apply`] for a batch whose writes arrive while earlier ones are being written:
    /// `Some(op)` is written, `None` ends the batch and commits it. If the channel closes before
    /// `None` (the sender failed), everything is rolled back and the answer is
    /// [`StoreError::Invalid`]; the sender's own error is the one to report.
    pub async fn apply_stream(&self, mut ops: tokio::sync::mpsc::Receiver<Option<WriteOp>>) -> Result<()> {
        let cut = || StoreError::Invalid("the batch ended before its end mark; nothing was written".into());
        // Nothing is begun before the first write arrives (a failed check sends none).
        let mut next = ops.recv().await.ok_or_else(cut)?;
        let mut tx = self.pool.begin().await?;
        let mut used = KeyUses::default();
        let mut pending = None;
        let mut log = TxLog::default();
        while let Some(op) = next {
            // On error `tx` is dropped without commit: everything rolls back.
            Self::apply_gathered(&self.pool, &mut tx, op, &mut pending, &mut used, &mut log).await?;
            next = ops.recv().await.ok_or_else(cut)?;
        }
        drop(ops);
        Self::flush_inserts(&self.pool, &mut tx, &mut pending, &mut used).await?;
        Self::finish_log(&mut tx, log).await?;
        Self::require_subject_keys(&mut tx, &used).await?;
        tx.commit().await?;
        Ok(())
    }
}
