//! The access registry's storage (owned by `kluis-service`, which builds, authenticates and
//! verifies the rows).
//!
//! One table, `kluis_access`, keyed by (tenant, kind, id): support grants, role assignments and
//! the like of one tenant, each row a JSON `body` with a MAC over every column (`key_version`
//! names the tenant's `access_registry` domain key version the MAC key comes from). The store only
//! reads and writes rows (`Store::access_rows`, `access_put`, `access_delete`); it never trusts them:
//! `kluis-service` refuses a row whose MAC does not verify.

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
