//! Records of the layout before one table per collection, moved into the new tables.

use super::*;

impl<E: Engine> SqlBackend<E> {
    /// Up to `limit` records of the legacy layout (`kluis_records`, a row per field in
    /// `kluis_fields`), with their blind indexes, for [`SqlBackend::move_legacy`].
    pub async fn legacy_records(&self, limit: u32) -> Result<Vec<(StoredRecord, Vec<IndexRow>)>> {
        let sql = format!("SELECT {RECORD_COLS} FROM kluis_records ORDER BY tenant, collection, id LIMIT ?");
        let rows = query::<E>(&E::sql(&sql)).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        let recs = rows.iter().map(Self::record_from).collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(recs.len());
        // attach_fields reads the cells of one (tenant, collection) at a time.
        for group in recs.chunk_by(|a, b| a.tenant == b.tenant && a.collection == b.collection) {
            let Some(first) = group.first() else { continue };
            out.extend(self.attach_fields(&first.tenant, &first.collection, group.to_vec()).await?);
        }
        let mut with_indexes = Vec::with_capacity(out.len());
        for s in out {
            let idx = query::<E>(&E::sql(
                    "SELECT field, key_version, idx FROM kluis_blind_index WHERE tenant = ? AND collection = ? AND record_id = ?",
                ))
                .bind(&s.record.tenant)
                .bind(&s.record.collection)
                .bind(&s.record.id)
                .fetch_all(&self.pool)
                .await?;
            let idx = idx
                .iter()
                .map(|r| Ok(IndexRow { field: text(r, 0)?, key_version: r.col(1)?, idx: r.col(2)? }))
                .collect::<Result<Vec<_>>>()?;
            with_indexes.push((s, idx));
        }
        Ok(with_indexes)
    }

    /// Moves legacy records into their tables in one transaction: each given row (with its tag)
    /// is inserted and its legacy rows deleted; a record already moved by another process is
    /// left as it is.
    pub async fn move_legacy(&self, rows: Vec<(Arc<Table>, StoredRecord, Vec<IndexRow>)>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        Self::lock_head(&mut tx).await?;
        let mut moved = Vec::with_capacity(rows.len());
        for (table, s, idx) in &rows {
            let r = &s.record;
            let gone = query::<E>(&E::sql(
                "DELETE FROM kluis_records WHERE tenant = ? AND collection = ? AND id = ? AND version = ?",
            ))
            .bind(&r.tenant)
            .bind(&r.collection)
            .bind(&r.id)
            .bind(r.version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if gone == 0 {
                // Moved by another process meanwhile.
                continue;
            }
            for t in ["kluis_fields", "kluis_blind_index"] {
                let sql = format!("DELETE FROM {t} WHERE tenant = ? AND collection = ? AND record_id = ?");
                query::<E>(&E::sql(&sql))
                    .bind(&r.tenant)
                    .bind(&r.collection)
                    .bind(&r.id)
                    .execute(&mut *tx)
                    .await?;
            }
            let row = [(r.clone(), s.fields.clone(), idx.clone())];
            let (sql, args) = insert_rows(table, &row)?;
            let sql = E::sql(&sql).into_owned();
            query::<E>(&sql).bind_all(args.iter().map(Arg::borrowed)).execute(&mut *tx).await?;
            moved.push(RowLogEntry::written(&r.tenant, &table.collection, &r.id, &r.tag));
        }
        Self::log_rows(&mut tx, &moved).await?;
        tx.commit().await?;
        Ok(())
    }
}
