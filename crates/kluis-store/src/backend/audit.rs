//! The audit log's SQL: entries appended under the head lock, read by page, checkpoints.

use super::*;
use crate::audit::*;
use crate::engine::text_as;

const AUDIT_COLS: &str = "seq, at_ms, actor, roles, support_grant, tenant, subject, collection, record, fields, \
                          action, outcome, reason, break_glass, access_point, purpose, on_behalf_of, hash, \
                          rows_seq, rows_hash";

fn hash32(b: &[u8]) -> Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt { what: "audit head", reason: "hash is not 32 bytes".into() })
}

impl<E: Engine> SqlBackend<E> {
    fn audit_row(row: &RowOf<E>) -> Result<AuditRow> {
        let t = |i| text_as(row, i, "audit column");
        Ok(AuditRow {
            seq: row.col(0)?,
            entry: AuditEntry {
                at_ms: row.col(1)?,
                actor: t(2)?,
                roles: t(3)?,
                support_grant: t(4)?,
                tenant: t(5)?,
                subject: t(6)?,
                collection: t(7)?,
                record: t(8)?,
                fields: t(9)?,
                action: t(10)?,
                outcome: t(11)?,
                reason: t(12)?,
                break_glass: t(13)?,
                access_point: t(14)?,
                purpose: t(15)?,
                on_behalf_of: t(16)?,
            },
            hash: row.col(17)?,
            rows: match (row.col::<Option<i64>>(18)?, row.col::<Option<Vec<u8>>>(19)?) {
                (Some(s), Some(h)) => Some((s, h)),
                (None, None) => None,
                // One without the other: kept so that the hash check fails on it.
                (s, h) => Some((s.unwrap_or(-1), h.unwrap_or_default())),
            },
        })
    }

    /// Appends one entry inside `tx` (see the module documentation for the locking); it
    /// covers the row log as it stands in `tx`, so a transaction appends its row log
    /// entries first.
    pub(crate) async fn audit_append(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        a: AuditAppend,
    ) -> Result<()> {
        // The head row, locked until the transaction ends (on SQLite, which has no row locks,
        // by taking the database's write lock first).
        if E::UPDATE_LOCK.is_empty() {
            Self::lock_head(tx).await?;
        }
        let head_sql = format!(
            "SELECT seq, hash, rows_seq, rows_hash FROM kluis_audit_head WHERE id = 1{}",
            E::UPDATE_LOCK
        );
        let head = query::<E>(&head_sql).fetch_optional(&mut **tx).await?.ok_or_else(|| {
            StoreError::Corrupt { what: "audit head", reason: "the head row is missing".into() }
        })?;
        let last: i64 = head.col(0)?;
        let prev_bytes: Vec<u8> = head.col(1)?;
        let prev = hash32(&prev_bytes)?;
        let rows_seq: i64 = head.col(2)?;
        let rows_bytes: Vec<u8> = head.col(3)?;
        let rows_hash = hash32(&rows_bytes)?;
        let urows = u64::try_from(rows_seq).map_err(|_| StoreError::Corrupt {
            what: "audit head",
            reason: "negative row log position".into(),
        })?;
        let seq = last.checked_add(1).ok_or_else(|| StoreError::Invalid("audit sequence overflow".into()))?;
        let useq = u64::try_from(seq).map_err(|_| StoreError::Invalid("audit sequence negative".into()))?;
        let e = &a.entry;
        let hash = entry_hash_v2(&prev, useq, e, urows, &rows_hash);
        let sql = format!(
            "INSERT INTO kluis_audit ({AUDIT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        let sql = E::sql(&sql);
        let mut q = query::<E>(&sql).bind(seq).bind(e.at_ms);
        for t in e.text_fields() {
            q = q.bind(t);
        }
        q.bind(hash.to_vec()).bind(rows_seq).bind(rows_hash.to_vec()).execute(&mut **tx).await?;
        let done =
            query::<E>(&E::sql("UPDATE kluis_audit_head SET seq = ?, hash = ? WHERE id = 1 AND seq = ?"))
                .bind(seq)
                .bind(hash.to_vec())
                .bind(last)
                .execute(&mut **tx)
                .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Corrupt {
                what: "audit head",
                reason: "the head moved during an append".into(),
            });
        }
        if a.checkpoint_every > 0 && useq % a.checkpoint_every == 0 {
            query::<E>(&E::sql("INSERT INTO kluis_audit_checkpoints (seq, at_ms, hash) VALUES (?, ?, ?)"))
                .bind(seq)
                .bind(e.at_ms)
                .bind(hash.to_vec())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

impl<E: Engine> SqlBackend<E> {
    /// Up to `limit` entries after `after`, in sequence order; only `tenant`'s if given.
    pub async fn audit_page(&self, tenant: Option<&str>, after: i64, limit: u32) -> Result<Vec<AuditRow>> {
        let sql = match tenant {
            Some(_) => format!(
                "SELECT {AUDIT_COLS} FROM kluis_audit WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT ?"
            ),
            None => format!("SELECT {AUDIT_COLS} FROM kluis_audit WHERE seq > ? ORDER BY seq LIMIT ?"),
        };
        let sql = E::sql(&sql);
        let mut q = query::<E>(&sql);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let rows = q.bind(after).bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.iter().map(Self::audit_row).collect()
    }

    /// The head row: (last sequence number, its hash).
    pub async fn audit_head(&self) -> Result<(i64, Vec<u8>)> {
        let row = query::<E>("SELECT seq, hash FROM kluis_audit_head WHERE id = 1")
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "audit head",
                reason: "the head row is missing".into(),
            })?;
        Ok((row.col(0)?, row.col(1)?))
    }

    /// Every checkpoint row, in sequence order.
    pub async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        let rows = query::<E>("SELECT seq, at_ms, hash FROM kluis_audit_checkpoints ORDER BY seq")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok(CheckpointRow { seq: r.col(0)?, at_ms: r.col(1)?, hash: r.col(2)? })).collect()
    }

    /// Which tenants hold a record with this collection and id (ids are unique per tenant only).
    pub async fn record_owners(&self, table: &crate::layout::Table, id: &str) -> Result<Vec<RecordOwner>> {
        let sql = format!("SELECT tenant, subject FROM {} WHERE id = ? ORDER BY tenant", table.name);
        let rows = query::<E>(&E::sql(&sql)).bind(id).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(RecordOwner {
                    tenant: text_as(r, 0, "audit column")?,
                    subject: text_as(r, 1, "audit column")?,
                })
            })
            .collect()
    }
}
