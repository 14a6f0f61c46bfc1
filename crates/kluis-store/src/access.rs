//! The access registry's storage (owned by `kluis-service`, which builds, authenticates and
//! verifies the rows).
//!
//! One table, `kluis_access`, keyed by (tenant, kind, id): support grants, role assignments and
//! the like of one tenant, each row a JSON `body` with a MAC over every column (`key_version`
//! names the tenant's `access_registry` domain key version the MAC key comes from). This module only reads
//! and writes rows; it never trusts them: `kluis-service` refuses a row whose MAC does not verify.

use crate::engine::Cols;

use crate::backend::SqlBackend;
use crate::engine::{Engine, query, text_as};
use crate::error::Result;

/// One stored registry row, as the database holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRow {
    /// The tenant.
    pub tenant: String,
    /// What the row is (`grant`, `role`, ...).
    pub kind: String,
    /// Its id within the tenant and kind.
    pub id: String,
    /// The entry (JSON, names and times only).
    pub body: String,
    /// The registry's domain key version the MAC key was derived from.
    pub key_version: i64,
    /// The MAC over every other column.
    pub mac: Vec<u8>,
}

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

impl<E: Engine> crate::store::Store<E> {
    /// A tenant's registry rows, as stored (the caller verifies each row's MAC).
    pub async fn access_rows(&self, tenant: &str) -> Result<Vec<AccessRow>> {
        self.backend().access_rows(tenant).await
    }

    /// Inserts or replaces a registry row (one transaction), durable when it returns.
    pub async fn access_put(&self, row: &AccessRow) -> Result<()> {
        self.backend().access_put(row).await
    }

    /// Deletes a registry row; `true` if it existed.
    pub async fn access_delete(&self, tenant: &str, kind: &str, id: &str) -> Result<bool> {
        self.backend().access_delete(tenant, kind, id).await
    }
}
