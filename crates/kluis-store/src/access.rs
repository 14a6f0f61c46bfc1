//! The access registry's storage (owned by `kluis-service`, which builds, authenticates and
//! verifies the rows).
//!
//! One table, `kluis_access`, keyed by (tenant, kind, id): support grants, role assignments and
//! the like of one tenant, each row a JSON `body` with a MAC over every column (`key_version`
//! names the tenant's `access_registry` domain key version the MAC key comes from). This module only reads
//! and writes rows; it never trusts them: `kluis-service` refuses a row whose MAC does not verify.

use std::future::Future;

use sqlx::Row;

use crate::backend::{Backend, MySqlBackend, PostgresBackend, SqliteBackend, numbered, plain};
use crate::error::{Result, StoreError};

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

/// Registry rows, per engine. A supertrait of [`crate::Backend`].
pub trait AccessBackend: Send + Sync + 'static {
    /// Every row of a tenant, by kind then id.
    fn access_rows(&self, tenant: &str) -> impl Future<Output = Result<Vec<AccessRow>>> + Send;

    /// Inserts or replaces a row (one transaction), durable when it returns.
    fn access_put(&self, row: &AccessRow) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a row; `true` if it existed.
    fn access_delete(&self, tenant: &str, kind: &str, id: &str) -> impl Future<Output = Result<bool>> + Send;
}

macro_rules! access_impl {
    ($ty:ty, $db:ty, $sql:path) => {
        impl $ty {
            fn access_text(row: &<$db as sqlx::Database>::Row, i: usize) -> Result<String> {
                match row.try_get::<String, _>(i) {
                    Ok(s) => Ok(s),
                    Err(_) => {
                        let b: Vec<u8> = row.try_get(i)?;
                        String::from_utf8(b)
                            .map_err(|_| StoreError::Corrupt { what: "access registry column", reason: "not utf-8".into() })
                    }
                }
            }
        }

        impl AccessBackend for $ty {
            async fn access_rows(&self, tenant: &str) -> Result<Vec<AccessRow>> {
                let rows = sqlx::query::<$db>(&$sql(
                    "SELECT tenant, kind, id, body, key_version, mac FROM kluis_access WHERE tenant = ? ORDER BY kind, id",
                ))
                .bind(tenant)
                .fetch_all(self.pool())
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(AccessRow {
                            tenant: Self::access_text(r, 0)?,
                            kind: Self::access_text(r, 1)?,
                            id: Self::access_text(r, 2)?,
                            body: Self::access_text(r, 3)?,
                            key_version: r.try_get(4)?,
                            mac: r.try_get(5)?,
                        })
                    })
                    .collect()
            }

            async fn access_put(&self, row: &AccessRow) -> Result<()> {
                let mut tx = self.pool().begin().await?;
                sqlx::query::<$db>(&$sql("DELETE FROM kluis_access WHERE tenant = ? AND kind = ? AND id = ?"))
                    .bind(&row.tenant)
                    .bind(&row.kind)
                    .bind(&row.id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query::<$db>(&$sql(
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

            async fn access_delete(&self, tenant: &str, kind: &str, id: &str) -> Result<bool> {
                let done = sqlx::query::<$db>(&$sql("DELETE FROM kluis_access WHERE tenant = ? AND kind = ? AND id = ?"))
                    .bind(tenant)
                    .bind(kind)
                    .bind(id)
                    .execute(self.pool())
                    .await?;
                Ok(done.rows_affected() > 0)
            }
        }
    };
}

access_impl!(SqliteBackend, sqlx::Sqlite, plain);
access_impl!(PostgresBackend, sqlx::Postgres, numbered);
access_impl!(MySqlBackend, sqlx::MySql, plain);

impl<B: crate::backend::Backend> crate::store::Store<B> {
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
