//! The access registry, through the store.

use super::*;
use crate::access::AccessRow;

impl<E: Engine> crate::store::Store<E> {
    /// A tenant's registry rows, as stored (the caller verifies each row's MAC).
    pub async fn access_rows(&self, tenant: &str) -> Result<Vec<AccessRow>> {
        self.backend.access_rows(tenant).await
    }

    /// Inserts or replaces a registry row (one transaction), durable when it returns.
    pub async fn access_put(&self, row: &AccessRow) -> Result<()> {
        self.backend.access_put(row).await
    }

    /// Deletes a registry row; `true` if it existed.
    pub async fn access_delete(&self, tenant: &str, kind: &str, id: &str) -> Result<bool> {
        self.backend.access_delete(tenant, kind, id).await
    }
}
