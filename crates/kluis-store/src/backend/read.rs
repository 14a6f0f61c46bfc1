//! Reads of records: by id, by page, by blind index, by subject.

use super::*;

pub(super) const RECORD_COLS: &str =
    "tenant, collection, id, subject, version, created_at, updated_at, retain_until";

/// A page of `table` in id order: binds tenant, then subject and the id to start after if
/// given, then the limit.
pub(super) fn list_sql(table: &Table, subject: bool, after: bool) -> String {
    let mut sql = format!("SELECT {} FROM {} WHERE tenant = ?", table.select_list(""), table.name);
    if subject {
        sql.push_str(" AND subject = ?");
    }
    if after {
        sql.push_str(" AND id > ?");
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    sql
}

/// The statement of [`list_sql`] (`sql`, in the engine's placeholders) with its binds.
fn list_stmt<'q, E: Engine>(
    sql: &'q str,
    tenant: &'q str,
    subject: Option<&'q str>,
    after: Option<&'q str>,
    limit: u32,
) -> crate::engine::Stmt<'q, E> {
    let mut q = query::<E>(sql).bind(tenant);
    if let Some(s) = subject {
        q = q.bind(s);
    }
    if let Some(a) = after {
        q = q.bind(a);
    }
    q.bind(i64::from(limit))
}

impl<E: Engine> SqlBackend<E> {
    pub(super) fn record_from(row: &RowOf<E>) -> Result<RecordRow> {
        Ok(RecordRow {
            tenant: text(row, 0)?,
            collection: text(row, 1)?,
            id: text(row, 2)?,
            subject: text(row, 3)?,
            version: row.col(4)?,
            created_at: row.col(5)?,
            updated_at: row.col(6)?,
            retain_until: row.col(7)?,
            tag: Vec::new(),
        })
    }

    /// A whole row of `table` as selected by [`Table::select_list`].
    pub(super) fn stored_from(table: &Table, row: &RowOf<E>) -> Result<StoredRecord> {
        let record = RecordRow {
            tenant: text(row, 0)?,
            collection: table.collection.clone(),
            id: text(row, 1)?,
            subject: text(row, 2)?,
            version: row.col(3)?,
            created_at: row.col(4)?,
            updated_at: row.col(5)?,
            retain_until: row.col(6)?,
            tag: row.col(7)?,
        };
        let mut fields = Vec::with_capacity(table.cells.len());
        let mut at = 8;
        for c in &table.cells {
            if let Some(ty) = c.clear {
                if let Some(encoded) = Self::clear_cell(row, at, ty)? {
                    fields.push(FieldRow {
                        field: c.field.clone(),
                        domain: c.domain.clone(),
                        sealed: encoded,
                        key_version: 0,
                    });
                }
                at += 1;
                continue;
            }
            let sealed: Option<Vec<u8>> = row.col(at)?;
            let version: Option<i64> = row.col(at + 1)?;
            match (sealed, version) {
                (None, None) => {}
                (Some(sealed), Some(key_version)) => fields.push(FieldRow {
                    field: c.field.clone(),
                    domain: c.domain.clone(),
                    sealed,
                    key_version,
                }),
                // A value without its key version or the other way round was edited.
                _ => {
                    return Err(StoreError::Integrity {
                        collection: table.collection.clone(),
                        record: record.id,
                        field: c.field.clone(),
                    });
                }
            }
            at += 2;
        }
        Ok(StoredRecord { record, fields })
    }

    /// A clear field's column as read, back in the value encoding the row tag covers.
    pub(super) fn clear_cell(row: &RowOf<E>, at: usize, ty: FieldType) -> Result<Option<Vec<u8>>> {
        let v = match ty {
            FieldType::Integer => row.col::<Option<i64>>(at)?.map(Value::Integer),
            FieldType::Bool => row.col::<Option<bool>>(at)?.map(Value::Bool),
            FieldType::Bytes => row.col::<Option<Vec<u8>>>(at)?.map(Value::Bytes),
            FieldType::Decimal | FieldType::Percentage => opt_text(row, at)?.map(Value::Decimal),
            FieldType::Date => opt_text(row, at)?.map(Value::Date),
            _ => opt_text(row, at)?.map(Value::Text),
        };
        Ok(v.map(|v| v.encode().to_vec()))
    }

    pub(super) async fn attach_fields(
        &self,
        tenant: &str,
        collection: &str,
        records: Vec<RecordRow>,
    ) -> Result<Vec<StoredRecord>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        // The id range lets every engine (and PostgreSQL's generic plan for a prepared
        // statement) use the primary key for a range scan; the IN list then filters it.
        // The records come ordered by id in the database's collation, so the first and
        // the last bound the range (Rust's byte order may differ from a locale's).
        let (Some(lo), Some(hi)) =
            (records.first().map(|r| r.id.as_str()), records.last().map(|r| r.id.as_str()))
        else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT record_id, field, domain, sealed, key_version FROM kluis_fields \
                 WHERE tenant = ? AND collection = ? AND record_id >= ? AND record_id <= ? \
                 AND record_id IN ({}) ORDER BY record_id, field",
            placeholders(records.len())
        );
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql).bind(tenant).bind(collection).bind(lo).bind(hi);
        for r in &records {
            q = q.bind(r.id.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        // Rows come ordered by record id: attach them without allocating a key per cell.
        let pos: std::collections::HashMap<&str, usize> =
            records.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect();
        let mut cells: Vec<Vec<FieldRow>> = (0..records.len()).map(|_| Vec::with_capacity(8)).collect();
        let mut current: Option<usize> = None;
        for row in &rows {
            let rid = text_ref(row, 0)?;
            let i = match current {
                Some(i) if records.get(i).is_some_and(|r| r.id == rid) => i,
                _ => match pos.get(rid) {
                    Some(i) => *i,
                    None => continue,
                },
            };
            current = Some(i);
            if let Some(list) = cells.get_mut(i) {
                list.push(FieldRow {
                    field: text(row, 1)?,
                    domain: text(row, 2)?,
                    sealed: row.col(3)?,
                    key_version: row.col(4)?,
                });
            }
        }
        drop(pos);
        Ok(records.into_iter().zip(cells).map(|(record, fields)| StoredRecord { record, fields }).collect())
    }

    /// One record.
    pub async fn get(&self, table: &Table, tenant: &str, id: &str) -> Result<Option<StoredRecord>> {
        let sql = format!("SELECT {} FROM {} WHERE tenant = ? AND id = ?", table.select_list(""), table.name);
        let row = query::<E>(&E::sql(&sql)).bind(tenant).bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| Self::stored_from(table, &r)).transpose()
    }

    /// Which of `ids` the tenant's table holds (one query; nothing opened).
    pub async fn existing_ids(&self, table: &Table, tenant: &str, ids: &[&str]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(1000) {
            let sql = format!(
                "SELECT id FROM {} WHERE tenant = ? AND id IN ({})",
                table.name,
                placeholders(chunk.len())
            );
            let sql = E::sql(&sql).into_owned();
            let mut q = query::<E>(&sql).bind(tenant);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(text(&r, 0)?);
            }
        }
        Ok(out)
    }

    /// A page of records ordered by id, after `after`, optionally only those of `subject`.
    pub async fn list(
        &self,
        table: &Table,
        tenant: &str,
        subject: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        let sql = E::sql(&list_sql(table, subject.is_some(), after.is_some())).into_owned();
        let rows = list_stmt::<E>(&sql, tenant, subject, after, limit).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Self::stored_from(table, r)).collect()
    }

    /// [`SqlBackend::list`], each record handed to `out` as the database produces it, so the caller
    /// opens one while the next are read. The channel is unbounded (at most `limit` records wait
    /// in it), so the read never waits for the caller and its connection is freed as soon as the
    /// rows are read: a caller that needs the pool meanwhile (a subject key to load) cannot
    /// deadlock it. Stops without error when `out` is closed (the caller's error is the answer).
    pub async fn list_each(
        &self,
        table: &Table,
        tenant: &str,
        subject: Option<&str>,
        after: Option<&str>,
        limit: u32,
        out: tokio::sync::mpsc::UnboundedSender<StoredRecord>,
    ) -> Result<()> {
        let sql = E::sql(&list_sql(table, subject.is_some(), after.is_some())).into_owned();
        list_stmt::<E>(&sql, tenant, subject, after, limit)
            .for_each(&self.pool, |row| Ok(out.send(Self::stored_from(table, &row)?).is_ok()))
            .await
    }

    /// Records whose blind index of `field` is one of `candidates` (key version, index), by id.
    pub async fn find_index(
        &self,
        table: &Table,
        tenant: &str,
        field: &str,
        candidates: Vec<(i64, Vec<u8>)>,
    ) -> Result<Vec<StoredRecord>> {
        let (i, j) = index_columns(table, field)?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut cond = String::new();
        for n in 0..candidates.len() {
            if n > 0 {
                cond.push_str(" OR ");
            }
            cond.push_str(&format!("({i} = ? AND {j} = ?)"));
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE tenant = ? AND ({cond}) ORDER BY id",
            table.select_list(""),
            table.name
        );
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql).bind(tenant);
        for (v, idx) in &candidates {
            q = q.bind(idx.as_slice()).bind(*v);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(|r| Self::stored_from(table, r)).collect()
    }

    /// Every record of a subject (clear columns only), over the tables of `layout`.
    pub async fn subject_records(
        &self,
        layout: &Layout,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<RecordRow>> {
        let mut out = Vec::new();
        for t in layout.tables() {
            let sql = format!(
                "SELECT {} FROM {} WHERE tenant = ? AND subject = ? ORDER BY id",
                t.select_list(""),
                t.name
            );
            let rows = query::<E>(&E::sql(&sql)).bind(tenant).bind(subject).fetch_all(&self.pool).await?;
            for r in &rows {
                out.push(Self::stored_from(t, r)?.record);
            }
        }
        out.sort_by(|a, b| (&a.collection, &a.id).cmp(&(&b.collection, &b.id)));
        Ok(out)
    }

    /// Every blind index of a tenant (collection, record id, field, key version), for re-indexing
    /// after a key rotation.
    pub async fn index_rows(
        &self,
        layout: &Layout,
        tenant: &str,
    ) -> Result<Vec<(String, String, String, i64)>> {
        let mut out = Vec::new();
        for t in layout.tables() {
            for c in &t.cells {
                let Some((i, j)) = &c.index else { continue };
                let sql = format!("SELECT id, {j} FROM {} WHERE tenant = ? AND {i} IS NOT NULL", t.name);
                let rows = query::<E>(&E::sql(&sql)).bind(tenant).fetch_all(&self.pool).await?;
                for r in &rows {
                    out.push((t.collection.clone(), text(r, 0)?, c.field.clone(), r.col(1)?));
                }
            }
        }
        Ok(out)
    }
}
