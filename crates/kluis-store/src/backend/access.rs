//! The access registry's SQL.

use super::*;
use crate::access::AccessRow;
use crate::engine::text_as;

impl<E: Engine> SqlBackend<E> {
    /// Every row of a tenant, by kind then id.
    pub async fn access_rows(&self, tenant: &str) -> Result<Vec<AccessRow>> {
        let rows = query::<E>(&E::sql(
                "SELECT tenant, kind, id, body, key_version, mac FROM kluis_access WHERE tenant = ? ORDER BY kind, id",
            ))
            .bind(tenant)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AccessRow {
                    tenant: text_as(r, 0, "access registry column")?,
                    kind: text_as(r, 1, "access registry column")?,
                    id: text_as(r, 2, "access registry column")?,
                    body: text_as(r, 3, "access registry column")?,
                    key_version: r.col(4)?,
                    mac: r.col(5)?,
                })
            })
            .collect()
    }

    /// Inserts or replaces a row (one transaction), durable when it returns.
    pub async fn access_put(&self, row: &AccessRow) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        query::<E>(&E::sql("DELETE FROM kluis_access WHERE tenant = ? AND kind = ? AND id = ?"))
            .bind(&row.tenant)
            .bind(&row.kind)
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
        query::<E>(&E::sql(
            "INSERT INTO kluis_access (tenant, kind, id, body, key_version, mac) VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(&row.tenant)
        .bind(&row.kind)
        .bind(&row.id)
        .bind(&row.body)
        .bind(row.key_version)
        .bind(row.mac.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a row; `true` if it existed.
    pub async fn access_delete(&self, tenant: &str, kind: &str, id: &str) -> Result<bool> {
        let done = query::<E>(&E::sql("DELETE FROM kluis_access WHERE tenant = ? AND kind = ? AND id = ?"))
            .bind(tenant)
            .bind(kind)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
