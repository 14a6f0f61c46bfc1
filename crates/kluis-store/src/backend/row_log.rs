//! The row log's SQL: entries appended in the writing transaction, read by page, the baseline of an older database.

use super::*;
use crate::row_log::*;

/// Rows per multi-row INSERT into the log (5 binds each).
const LOG_ROWS_PER_INSERT: usize = 500;

fn hash32(b: &[u8], what: &'static str) -> Result<[u8; 32]> {
    b.try_into().map_err(|_| StoreError::Corrupt { what, reason: "hash is not 32 bytes".into() })
}

const BASELINE_META: &str = "row_log_baseline";

impl<E: Engine> SqlBackend<E> {
    /// Locks the audit head row inside `tx`: the first statement of every transaction that
    /// writes rows or audit entries (on SQLite, this takes the database write lock).
    pub(crate) async fn lock_head(tx: &mut sqlx::Transaction<'static, E::Db>) -> Result<()> {
        query::<E>(E::LOCK_HEAD).execute(&mut **tx).await?;
        Ok(())
    }

    /// Appends `entries` to the row log inside `tx` (whose head lock is held) and moves the
    /// head's row log position and running hash.
    pub(crate) async fn log_rows(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        entries: &[RowLogEntry],
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let head = query::<E>("SELECT rows_seq, rows_hash FROM kluis_audit_head WHERE id = 1")
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "audit head",
                reason: "the head row is missing".into(),
            })?;
        let last: i64 = head.col(0)?;
        let prev_bytes: Vec<u8> = head.col(1)?;
        let mut running = hash32(&prev_bytes, "row log head")?;
        let mut seq = u64::try_from(last).map_err(|_| StoreError::Corrupt {
            what: "row log head",
            reason: format!("negative position {last}"),
        })?;
        for chunk in entries.chunks(LOG_ROWS_PER_INSERT) {
            let values = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO kluis_row_log (seq, tenant, collection, record, row_tag) VALUES {values}"
            );
            let sql = E::sql(&sql).into_owned();
            let mut q = query::<E>(&sql);
            for e in chunk {
                seq = seq
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Invalid("row log position overflow".into()))?;
                running = rows_hash(&running, seq, e);
                let s = i64::try_from(seq)
                    .map_err(|_| StoreError::Invalid("row log position overflow".into()))?;
                q = q
                    .bind(s)
                    .bind(e.tenant.as_str())
                    .bind(e.collection.as_str())
                    .bind(e.record.as_str())
                    .bind(e.tag.as_deref());
            }
            q.execute(&mut **tx).await?;
        }
        let new = i64::try_from(seq).map_err(|_| StoreError::Invalid("row log position overflow".into()))?;
        let done = query::<E>(&E::sql(
            "UPDATE kluis_audit_head SET rows_seq = ?, rows_hash = ? WHERE id = 1 AND rows_seq = ?",
        ))
        .bind(new)
        .bind(running.to_vec())
        .bind(last)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Corrupt {
                what: "row log head",
                reason: "the head moved during an append".into(),
            });
        }
        Ok(())
    }

    /// `(tenant, id)` of the rows of `table` (a name from `kluis_tables`) whose subject is
    /// `subject`, inside `tx`.
    pub(crate) async fn subject_row_ids(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        table: &str,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<String>> {
        let sql = format!("SELECT id FROM {table} WHERE tenant = ? AND subject = ? ORDER BY id");
        let rows = query::<E>(&E::sql(&sql)).bind(tenant).bind(subject).fetch_all(&mut **tx).await?;
        rows.iter().map(|r| text(r, 0)).collect()
    }
}

impl<E: Engine> SqlBackend<E> {
    /// Up to `limit` row log entries after `after`, in sequence order.
    pub async fn row_log_page(&self, after: i64, limit: u32) -> Result<Vec<RowLogRow>> {
        let rows = query::<E>(&E::sql(
                "SELECT seq, tenant, collection, record, row_tag FROM kluis_row_log WHERE seq > ? ORDER BY seq LIMIT ?",
            ))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RowLogRow {
                    seq: r.col(0)?,
                    entry: RowLogEntry {
                        tenant: text(r, 1)?,
                        collection: text(r, 2)?,
                        record: text(r, 3)?,
                        tag: r.col(4)?,
                    },
                })
            })
            .collect()
    }

    /// The row log position and running hash the audit head row holds.
    pub async fn row_log_head(&self) -> Result<(i64, Vec<u8>)> {
        let row = query::<E>("SELECT rows_seq, rows_hash FROM kluis_audit_head WHERE id = 1")
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "audit head",
                reason: "the head row is missing".into(),
            })?;
        Ok((row.col(0)?, row.col(1)?))
    }

    /// Up to `limit` rows `(tenant, id, row_tag)` of the collection table `table` after
    /// `(tenant, id)`, in that order.
    pub async fn row_tags_page(
        &self,
        table: &str,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<(String, String, Vec<u8>)>> {
        if !crate::layout::is_table_name(table) {
            return Err(StoreError::Corrupt {
                what: "kluis_tables",
                reason: format!("table name {table:?}"),
            });
        }
        let sql = match after {
            None => format!("SELECT tenant, id, row_tag FROM {table} ORDER BY tenant, id LIMIT ?"),
            Some(_) => format!(
                "SELECT tenant, id, row_tag FROM {table} WHERE tenant > ? OR (tenant = ? AND id > ?) ORDER BY tenant, id LIMIT ?"
            ),
        };
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql);
        if let Some((t, id)) = after {
            q = q.bind(t).bind(t).bind(id);
        }
        let rows = q.bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok((text(r, 0)?, text(r, 1)?, r.col(2)?))).collect()
    }

    /// Every collection table in the database: (collection, table name).
    pub async fn collection_tables(&self) -> Result<Vec<(String, String)>> {
        let rows = query::<E>("SELECT collection, table_name FROM kluis_tables ORDER BY collection")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok((text(r, 0)?, text(r, 1)?))).collect()
    }

    /// Logs every row of every collection table once (a database written before the row log
    /// existed); a no-op afterwards.
    pub async fn log_baseline(&self) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        Self::lock_head(&mut tx).await?;
        let done: i64 = query_scalar::<E, i64>(&E::sql("SELECT COUNT(*) FROM kluis_meta WHERE name = ?"))
            .bind(BASELINE_META)
            .fetch_one(&mut *tx)
            .await?;
        if done > 0 {
            return Ok(());
        }
        let tables = query::<E>("SELECT collection, table_name FROM kluis_tables ORDER BY collection")
            .fetch_all(&mut *tx)
            .await?;
        let mut entries = Vec::new();
        for t in &tables {
            let collection = text(t, 0)?;
            let name = text(t, 1)?;
            if !crate::layout::is_table_name(&name) {
                return Err(StoreError::Corrupt {
                    what: "kluis_tables",
                    reason: format!("table name {name:?}"),
                });
            }
            let sql = format!("SELECT tenant, id, row_tag FROM {name} ORDER BY tenant, id");
            for r in query::<E>(&sql).fetch_all(&mut *tx).await? {
                entries.push(RowLogEntry {
                    tenant: text(&r, 0)?,
                    collection: collection.clone(),
                    record: text(&r, 1)?,
                    tag: Some(r.col(2)?),
                });
            }
        }
        Self::log_rows(&mut tx, &entries).await?;
        query::<E>(&E::sql("INSERT INTO kluis_meta (name, value) VALUES (?, ?)"))
            .bind(BASELINE_META)
            .bind(b"1".to_vec())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
