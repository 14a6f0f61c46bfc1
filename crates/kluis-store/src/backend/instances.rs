//! Instance reports: which root key versions each running instance holds (docs/STORE.md).

use super::*;

/// One row of `kluis_instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: String,
    pub label: String,
    pub root_key_id: String,
    pub generation: Option<i64>,
    /// Comma-separated root key versions; NULL for a provider that reaches every version (KMS).
    pub versions: Option<String>,
    pub seen_at: i64,
}

impl<E: Engine> SqlBackend<E> {
    /// Writes this instance's report (its own row, by id) and deletes reports not renewed since
    /// `forget_before`.
    pub async fn report_instance(&self, row: &InstanceRow, forget_before: i64) -> Result<()> {
        // Only this instance writes its row: an update, else an insert. Two reports of the same
        // instance at once (its own timer and an unlock) may both insert: the second one's
        // unique violation means the row is there.
        let updated = query::<E>(&E::sql(
            "UPDATE kluis_instances SET label = ?, root_key_id = ?, generation = ?, versions = ?, seen_at = ? \
             WHERE id = ?",
        ))
        .bind(&row.label)
        .bind(&row.root_key_id)
        .bind(row.generation)
        .bind(&row.versions)
        .bind(row.seen_at)
        .bind(&row.id)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            let res = query::<E>(&E::sql(
                "INSERT INTO kluis_instances (id, label, root_key_id, generation, versions, seen_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            ))
            .bind(&row.id)
            .bind(&row.label)
            .bind(&row.root_key_id)
            .bind(row.generation)
            .bind(&row.versions)
            .bind(row.seen_at)
            .execute(&self.pool)
            .await;
            match res {
                Ok(_) => {}
                Err(e) if unique_violation(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        query::<E>(&E::sql("DELETE FROM kluis_instances WHERE seen_at < ?"))
            .bind(forget_before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The reports renewed at or after `seen_since`, by id.
    pub async fn instances(&self, seen_since: i64) -> Result<Vec<InstanceRow>> {
        let rows = query::<E>(&E::sql(
            "SELECT id, label, root_key_id, generation, versions, seen_at FROM kluis_instances \
             WHERE seen_at >= ? ORDER BY id",
        ))
        .bind(seen_since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InstanceRow {
                    id: text(r, 0)?,
                    label: text(r, 1)?,
                    root_key_id: text(r, 2)?,
                    generation: r.col(3)?,
                    // MariaDB reports the ascii_bin column as binary: `opt_text` reads both.
                    versions: opt_text(r, 4)?,
                    seen_at: r.col(5)?,
                })
            })
            .collect()
    }
}
