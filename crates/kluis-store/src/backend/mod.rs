//! The SQL layer under [`crate::Store`]: [`SqlBackend`], generic over the [`Engine`], with each
//! statement written once (what differs per engine is in [`crate::engine`]), one file per use
//! case. It works on rows that are already sealed: it never sees a key or a plaintext value.

use std::sync::Arc;

use sqlx::migrate::Migrator;

pub use crate::engine::Engine;
use crate::engine::{Arg, Cols, RowOf, opt_text, placeholders, query, query_scalar, text, text_ref};
use crate::error::{Result, StoreError};
pub use crate::layout::{Layout, Table};
use crate::row_log::RowLogEntry;
use crate::schema::FieldType;
use crate::value::Value;

mod access;
mod audit;
mod documents;
mod instances;
mod keys;
mod legacy;
mod read;
mod reencrypt;
mod row_log;
mod shred;
mod write;

pub use self::documents::document_key_version;
pub use self::instances::InstanceRow;
use self::{read::*, reencrypt::*, write::*};

/// What [`SqlBackend::delete_subject`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectDeleted {
    /// Records.
    pub records: u64,
    /// Document catalog entries.
    pub documents: u64,
    /// Subject keys, as (domain, version).
    pub subject_keys: Vec<(String, i64)>,
    /// Rows of the application's mapped tables whose protected values were cleared.
    pub app_rows: u64,
}

/// A record's clear columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRow {
    /// Tenant id.
    pub tenant: String,
    /// Collection.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// Subject (data subject, e.g. employee id).
    pub subject: String,
    /// Version (optimistic concurrency), from 1.
    pub version: i64,
    /// Created, unix seconds.
    pub created_at: i64,
    /// Last updated, unix seconds.
    pub updated_at: i64,
    /// Retain until, unix seconds.
    pub retain_until: Option<i64>,
    /// Row tag (`crate::layout`): empty in a row of the legacy layout, which has none.
    pub tag: Vec<u8>,
}

/// One sealed field cell.
#[derive(Clone, PartialEq, Eq)]
pub struct FieldRow {
    /// Field name.
    pub field: String,
    /// Domain whose subject key sealed it.
    pub domain: String,
    /// Sealed bytes.
    pub sealed: Vec<u8>,
    /// Version of the subject key that sealed it (stored in clear in the `k_<field>` column).
    pub key_version: i64,
}

impl std::fmt::Debug for FieldRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldRow")
            .field("field", &self.field)
            .field("domain", &self.domain)
            .field("sealed_len", &self.sealed.len())
            .field("key_version", &self.key_version)
            .finish()
    }
}

/// One blind index entry of a record's field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRow {
    /// Field name.
    pub field: String,
    /// Domain key version the index key was derived from.
    pub key_version: i64,
    /// The index bytes.
    pub idx: Vec<u8>,
}

/// A record with its sealed fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Clear columns.
    pub record: RecordRow,
    /// Sealed cells.
    pub fields: Vec<FieldRow>,
}

/// One write of a batch. A batch runs in one transaction.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum WriteOp {
    /// Insert a new record.
    Insert {
        /// The collection's table.
        table: Arc<Table>,
        /// Clear columns (version 1).
        record: RecordRow,
        /// Sealed cells.
        fields: Vec<FieldRow>,
        /// Blind indexes.
        indexes: Vec<IndexRow>,
    },
    /// Update a record whose version is `expected_version`; `record.version` is the new one.
    Update {
        /// The collection's table.
        table: Arc<Table>,
        /// New clear columns (with the row tag of the row as it will be).
        record: RecordRow,
        /// Version the caller read.
        expected_version: i64,
        /// Row tag the caller read: a row changed since without a new version (a re-encryption)
        /// is not overwritten ([`StoreError::KeyChanged`], the transaction is run again).
        expected_tag: Vec<u8>,
        /// Cells set (replacing any old value).
        set_fields: Vec<FieldRow>,
        /// Cells removed (with their blind index).
        remove_fields: Vec<String>,
        /// Blind indexes set.
        set_indexes: Vec<IndexRow>,
        /// Columns of the collection's table (as [`Table`] names them) set to NULL: where a
        /// value was before a schema migration moved it between a sealed and a clear column.
        null_columns: Vec<String>,
    },
    /// Replace the blind index of one field of a record (re-indexing after a key rotation).
    SetIndex {
        /// The collection's table.
        table: Arc<Table>,
        /// Tenant.
        tenant: String,
        /// Record id.
        record_id: String,
        /// The new index.
        index: IndexRow,
    },
    /// Remove the blind index of one field of a record.
    DropIndex {
        /// The collection's table.
        table: Arc<Table>,
        /// Tenant.
        tenant: String,
        /// Record id.
        record_id: String,
        /// Field.
        field: String,
    },
    /// Record a legal override (audit) in the same transaction.
    Override(OverrideRow),
    /// Append an entry to the hash-chained audit log in the same transaction
    /// ([`crate::audit`]): the batch takes the audit head lock first and appends the entry after
    /// its rows and their row log entries, wherever it stands in the batch.
    Audit(crate::audit::AuditAppend),
    /// Insert a documents catalog entry (with a [`WriteOp::Audit`] first in the batch, the entry
    /// and the row commit together).
    InsertDocument(DocumentRow),
    /// Remove a documents catalog entry; fails with [`StoreError::NotFound`] (so the whole batch
    /// is rolled back) if the tenant has no entry with this id.
    DeleteDocument {
        /// Tenant.
        tenant: String,
        /// Document id.
        document_id: String,
    },
    /// Delete a record (with its cells and indexes).
    Delete {
        /// The collection's table.
        table: Arc<Table>,
        /// Tenant.
        tenant: String,
        /// Record id.
        id: String,
        /// If given, the delete fails with a conflict unless the record has this version.
        expected_version: Option<i64>,
    },
}

/// A domain key row as read (`old`) and as it is to be written (`new`): the write happens only if
/// the row still holds `old`'s state, wrapped key and tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRowUpdate {
    /// The row as read.
    pub old: DomainKeyRow,
    /// The row to write (same tenant, domain and version).
    pub new: DomainKeyRow,
}

/// A stored domain key row (the wrapped key in [`kluis_core::WrappedKey::to_bytes`] form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainKeyRow {
    /// Tenant.
    pub tenant: String,
    /// Domain.
    pub domain: String,
    /// Version.
    pub version: i64,
    /// State name.
    pub state: String,
    /// Wrapped key; `None` once destroyed.
    pub wrapped: Option<Vec<u8>>,
    /// State tag ([`kluis_core::DomainKeyRecord::tag`]); `None` once destroyed, or in a row written
    /// before state tags.
    pub tag: Option<Vec<u8>>,
}

/// A stored subject key row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectKeyRow {
    /// Tenant.
    pub tenant: String,
    /// Domain.
    pub domain: String,
    /// Subject.
    pub subject: String,
    /// Version.
    pub version: i64,
    /// Sealed subject key.
    pub wrapped: Vec<u8>,
    /// Created, unix seconds.
    pub created_at: i64,
    /// Version of the domain key that wraps it (`kluis_subject_keys.wrap_version`; the same
    /// number as in the wrapped bytes' header).
    pub wrap_version: i64,
}

/// Per domain key version: what depends on it (see [`SqlBackend::key_usage`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyUsageRow {
    /// Tenant.
    pub tenant: String,
    /// Domain.
    pub domain: String,
    /// Domain key version.
    pub version: i64,
    /// State name of that version; `None` when no domain key row has it (subject keys name a
    /// version that is gone).
    pub state: Option<String>,
    /// Subject keys wrapped under it.
    pub subject_keys: u64,
    /// Records with at least one cell sealed by such a subject key.
    pub records: u64,
    /// Catalog documents whose data key is wrapped by such a subject key.
    pub documents: u64,
}

/// One subject's re-encryption, applied in one transaction by [`SqlBackend::reencrypt_subject`].
#[derive(Clone, Debug)]
pub struct ReencryptPlan {
    /// Tenant.
    pub tenant: String,
    /// Domain.
    pub domain: String,
    /// Subject.
    pub subject: String,
    /// A new subject key version to insert first (wrapped under the active domain key version).
    pub new_key: Option<SubjectKeyRow>,
    /// Re-sealed cells and re-derived blind indexes per record, replaced only while the record
    /// still has the version read.
    pub records: Vec<ReencryptRecord>,
    /// Older subject key versions to delete, each only if no cell and no catalog document uses it.
    pub drop_versions: Vec<i64>,
    /// Every table of the store's schema (where cells of a dropped version are looked for).
    pub tables: Vec<Arc<Table>>,
    /// The application's tables the schema maps: a value there sealed under a dropped version
    /// keeps that version too.
    pub app_tables: Vec<crate::app_table::AppTable>,
}

/// One record of a [`ReencryptPlan`].
#[derive(Clone, Debug)]
pub struct ReencryptRecord {
    /// The collection's table.
    pub table: Arc<Table>,
    /// Record id.
    pub id: String,
    /// Version read (the record is left alone and the plan fails if it changed).
    pub version: i64,
    /// Re-sealed cells (same field, same domain, new subject key version).
    pub cells: Vec<FieldRow>,
    /// Blind indexes re-derived under the active domain key version.
    pub indexes: Vec<IndexRow>,
    /// The row tag over the row with the re-sealed cells.
    pub tag: Vec<u8>,
    /// The row tag read (the row is left alone if it changed).
    pub expected_tag: Vec<u8>,
}

/// What [`SqlBackend::reencrypt_subject`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReencryptOutcome {
    /// `false` if nothing was written because a record or key changed concurrently.
    pub applied: bool,
    /// Subject key versions deleted.
    pub dropped: Vec<i64>,
    /// Was an older version kept because values in the application's mapped tables are sealed
    /// under it?
    pub kept_for_app: bool,
}

/// A documents catalog entry (the blob itself lives in blob storage, issue 4).
#[derive(Clone, PartialEq, Eq)]
pub struct DocumentRow {
    /// Tenant.
    pub tenant: String,
    /// Document id.
    pub document_id: String,
    /// Domain of the document.
    pub domain: String,
    /// Subject the document belongs to.
    pub subject: String,
    /// Record it is attached to, if any.
    pub record_id: Option<String>,
    /// Opaque blob object name (reveals nothing about the document).
    pub object_name: String,
    /// Key reference, e.g. `subject:medical:v1`.
    pub key_ref: String,
    /// Padded size of the encrypted blob in bytes.
    pub padded_size: i64,
    /// Created, unix seconds.
    pub created_at: i64,
    /// Sealed metadata (name, type, ...): opaque here.
    pub sealed_meta: Vec<u8>,
}

impl std::fmt::Debug for DocumentRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentRow")
            .field("tenant", &self.tenant)
            .field("document_id", &self.document_id)
            .field("domain", &self.domain)
            .field("subject", &self.subject)
            .field("record_id", &self.record_id)
            .field("object_name", &self.object_name)
            .field("key_ref", &self.key_ref)
            .field("padded_size", &self.padded_size)
            .field("created_at", &self.created_at)
            .field("sealed_meta_len", &self.sealed_meta.len())
            .finish()
    }
}

/// A recorded legal override (audit row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideRow {
    /// Tenant.
    pub tenant: String,
    /// What was done (`delete`, `shred`).
    pub action: String,
    /// What it was done to (`collection/record` or `subject:<id>`).
    pub target: String,
    /// The legal ground (no personal data in here: it is stored in clear).
    pub reason: String,
    /// Who authorised it.
    pub authorised_by: String,
    /// When, unix seconds.
    pub at: i64,
}

/// Which documents to list.
#[derive(Clone, Copy, Debug)]
pub enum DocumentFilter<'a> {
    /// Every document of a subject.
    Subject(&'a str),
    /// Every document attached to a record.
    Record(&'a str),
}

/// The store's SQL on engine `E`.
#[derive(Debug)]
pub struct SqlBackend<E: Engine> {
    pool: sqlx::Pool<E::Db>,
}

impl<E: Engine> Clone for SqlBackend<E> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone() }
    }
}

impl<E: Engine> SqlBackend<E> {
    /// Wraps a pool.
    pub fn new(pool: sqlx::Pool<E::Db>) -> Self {
        Self { pool }
    }
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A bind of a count query.
enum Bind<'a> {
    S(&'a str),
    I(i64),
    B(&'a [u8]),
}

/// Did a re-encryption step meet a concurrent change (the step is tried again later)?
fn is_concurrency_error<E: Engine>(e: &StoreError) -> bool {
    match e {
        StoreError::Conflict { .. } | StoreError::KeyChanged { .. } => true,
        // Rolled back by the database: deadlock, serialization failure, busy.
        StoreError::Database(sqlx::Error::Database(d)) => E::retryable(d.as_ref()),
        _ => false,
    }
}

/// A row count as read: never negative.
fn count_of(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt { what: "row count", reason: n.to_string() })
}

impl<E: Engine> SqlBackend<E> {
    /// The pool.
    pub fn pool(&self) -> &sqlx::Pool<E::Db> {
        &self.pool
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> Result<()> {
        let m = Migrator::new(crate::engine::Embedded(E::MIGRATIONS)).await?;
        m.run(&self.pool).await?;
        self.backfill_versions().await
    }

    /// Creates the tables of `layout` that do not exist, adds the columns and indexes missing
    /// from those that do, and lists them in `kluis_tables` (idempotent).
    pub async fn install(&self, layout: &Layout) -> Result<()> {
        // The catalog, not a `SELECT *` probe: PostgreSQL refuses a cached plan of one
        // whose result type an ALTER TABLE changed.
        for t in layout.tables() {
            query::<E>(&t.create_sql::<E>()).execute(&self.pool).await?;
            let rows = query::<E>(&E::sql(E::COLUMNS_SQL)).bind(&t.name).fetch_all(&self.pool).await?;
            let existing = rows.iter().map(|r| text(r, 0)).collect::<Result<Vec<String>>>()?;
            for sql in t.add_columns_sql::<E>(&existing).into_iter().chain(t.index_sql()) {
                query::<E>(&sql).execute(&self.pool).await?;
            }
            let listed: i64 =
                query_scalar::<E, i64>(&E::sql("SELECT COUNT(*) FROM kluis_tables WHERE collection = ?"))
                    .bind(&t.collection)
                    .fetch_one(&self.pool)
                    .await?;
            if listed == 0 {
                let res =
                    query::<E>(&E::sql("INSERT INTO kluis_tables (collection, table_name) VALUES (?, ?)"))
                        .bind(&t.collection)
                        .bind(&t.name)
                        .execute(&self.pool)
                        .await;
                match res {
                    Ok(_) => {}
                    Err(e) if unique_violation(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Reads a metadata value.
    pub async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(query_scalar::<E, Vec<u8>>(&E::sql("SELECT value FROM kluis_meta WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Writes a metadata value.
    pub async fn set_meta(&self, name: &str, value: Vec<u8>) -> Result<()> {
        // One statement (an upsert), so two processes recording at once cannot collide.
        let sql = E::upsert("kluis_meta", "name", "value");
        query::<E>(&E::sql(&sql)).bind(name).bind(value).execute(&self.pool).await?;
        Ok(())
    }

    /// Makes deleted key bytes unrecoverable from the database files (engine specific; see
    /// docs/STORE.md): SQLite secure_delete + VACUUM + WAL checkpoint(TRUNCATE); PostgreSQL
    /// VACUUM FULL of the key tables; MariaDB OPTIMIZE TABLE of the key tables.
    pub async fn purge(&self) -> Result<()> {
        E::purge(&self.pool).await
    }

    /// Tenants that have domain keys, sorted.
    pub async fn tenants(&self) -> Result<Vec<String>> {
        let rows = query::<E>("SELECT DISTINCT tenant FROM kluis_domain_keys ORDER BY tenant")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| text(r, 0)).collect()
    }
}

impl<E: Engine> SqlBackend<E> {
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, E::Db>> {
        Ok(match E::BEGIN_WRITE {
            Some(begin) => self.pool.begin_with(begin).await?,
            None => self.pool.begin().await?,
        })
    }

    async fn count(
        conn: &mut <E::Db as sqlx::Database>::Connection,
        sql: &str,
        binds: &[Bind<'_>],
    ) -> Result<u64> {
        let sql = E::sql(sql).into_owned();
        let mut q = query_scalar::<E, i64>(&sql);
        for b in binds {
            q = match b {
                Bind::S(s) => q.bind(*s),
                Bind::I(i) => q.bind(*i),
                Bind::B(b) => q.bind(*b),
            };
        }
        count_of(q.fetch_one(&mut *conn).await?)
    }

    async fn backfill_versions(&self) -> Result<()> {
        let keys = query::<E>(
            "SELECT tenant, domain, subject, version, wrapped FROM kluis_subject_keys WHERE wrap_version = 0",
        )
        .fetch_all(&self.pool)
        .await?;
        let docs = query::<E>(
            "SELECT tenant, document_id, domain, key_ref FROM kluis_documents WHERE key_version IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut doc_versions = Vec::new();
        for r in &docs {
            if let Some(v) = document_key_version(&text(r, 3)?, &text(r, 2)?) {
                doc_versions.push((text(r, 0)?, text(r, 1)?, v));
            }
        }
        if keys.is_empty() && doc_versions.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for r in &keys {
            let wrapped: Vec<u8> = r.col(4)?;
            // A row whose header does not parse, or names no version, was altered: it stays 0
            // and fails to open.
            let Some(v) = kluis_core::SealedHeader::parse(&wrapped).ok().and_then(|h| h.key.version) else {
                continue;
            };
            query::<E>(&E::sql(
                    "UPDATE kluis_subject_keys SET wrap_version = ? WHERE tenant = ? AND domain = ? AND subject = ? AND version = ?",
                ))
                .bind(v.to_stored())
                .bind(text(r, 0)?)
                .bind(text(r, 1)?)
                .bind(text(r, 2)?)
                .bind(r.col::<i64>(3)?)
                .execute(&mut *tx)
                .await?;
        }
        for (t, d, v) in doc_versions {
            query::<E>(&E::sql(
                "UPDATE kluis_documents SET key_version = ? WHERE tenant = ? AND document_id = ?",
            ))
            .bind(v)
            .bind(t)
            .bind(d)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_override(tx: &mut sqlx::Transaction<'static, E::Db>, a: OverrideRow) -> Result<()> {
        query::<E>(&E::sql(
                "INSERT INTO kluis_legal_overrides (tenant, action, target, reason, authorised_by, at) VALUES (?, ?, ?, ?, ?, ?)",
            ))
            .bind(a.tenant)
            .bind(a.action)
            .bind(a.target)
            .bind(a.reason)
            .bind(a.authorised_by)
            .bind(a.at)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
