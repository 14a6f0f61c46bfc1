//! Storage backends: one trait, implemented once for every engine ([`SqlBackend`], generic over
//! [`Engine`]): each statement is written once, and what differs per engine is in
//! [`crate::engine`].
//!
//! The trait works on rows that are already sealed: it never sees a key or a plaintext value.
//! It is public so that tools and benches can reach the same tables through the same pool.

use std::sync::Arc;

use crate::engine::Cols;
use sqlx::migrate::Migrator;

use crate::error::{Result, StoreError};
pub use crate::layout::{CellColumns, Layout, Table};
use crate::row_log::RowLogEntry;
use crate::schema::FieldType;
use crate::value::Value;

use crate::engine::{Arg, RowOf, opt_text, placeholders, query, query_scalar, text, text_ref};
pub use crate::engine::{Engine, EngineKind, MySql, Postgres, Sqlite};

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
    /// State name of that version.
    pub state: String,
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
}

/// The document key version named by a catalog key reference `subject:<domain>:v<N>`. `N` is
/// written in decimal without leading zeros and starts at 1: `v0`, `v01` and the like name no
/// version (`None`).
pub fn document_key_version(key_ref: &str, domain: &str) -> Option<i64> {
    let rest = key_ref.strip_prefix("subject:")?.strip_prefix(domain)?.strip_prefix(":v")?;
    if rest.starts_with('0') || rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse::<u32>().ok().map(i64::from)
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
}

fn is_concurrency_error(e: &StoreError) -> bool {
    match e {
        StoreError::Conflict { .. } | StoreError::KeyChanged { .. } => true,
        StoreError::Database(sqlx::Error::Database(d)) => {
            // Deadlock or serialization failure (PostgreSQL 40001/40P01, MariaDB 1213/1205 as
            // 40001/HY000, SQLite busy): the transaction was rolled back; retry later.
            matches!(d.code().as_deref(), Some("40001" | "40P01" | "5" | "517" | "261"))
                || d.message().contains("Deadlock")
                || d.message().contains("Lock wait timeout")
        }
        _ => false,
    }
}

const RECORD_COLS: &str = "tenant, collection, id, subject, version, created_at, updated_at, retain_until";

/// The subject key versions a batch's cells were sealed under, without duplicates, by subject then
/// (tenant, domain, version): [`SqlBackend::apply`] checks them all with a few statements before it
/// commits, instead of one lookup per record and domain.
#[derive(Default)]
struct KeyUses {
    by_subject: std::collections::BTreeMap<String, Vec<(String, String, i64)>>,
}

/// Subject key versions per check statement (4 binds each).
const KEY_USES_PER_STATEMENT: usize = 200;

impl KeyUses {
    fn add(&mut self, tenant: &str, domain: &str, subject: &str, version: i64) {
        match self.by_subject.get_mut(subject) {
            Some(list) => {
                if !list.iter().any(|(t, d, v)| t == tenant && d == domain && *v == version) {
                    list.push((tenant.to_owned(), domain.to_owned(), version));
                }
            }
            None => {
                self.by_subject
                    .insert(subject.to_owned(), vec![(tenant.to_owned(), domain.to_owned(), version)]);
            }
        }
    }

    /// (tenant, domain, subject, version).
    fn iter(&self) -> impl Iterator<Item = (&str, &str, &str, i64)> {
        self.by_subject
            .iter()
            .flat_map(|(s, list)| list.iter().map(move |(t, d, v)| (t.as_str(), d.as_str(), s.as_str(), *v)))
    }
}

/// `s.version` (of a `kluis_subject_keys s` joined to a row `r`) is the key version of one of
/// `r`'s cells of `domain`.
/// What a write transaction appends at its end ([`crate::row_log`]): a row log entry per row
/// changed, then its audit entries, under the audit head lock it took before any row.
#[derive(Default)]
struct TxLog {
    locked: bool,
    rows: Vec<RowLogEntry>,
    audits: Vec<crate::audit::AuditAppend>,
}

impl TxLog {
    /// Does `op` change a row or append an audit entry (and so need the head lock)?
    fn needs_lock(op: &WriteOp) -> bool {
        matches!(
            op,
            WriteOp::Insert { .. } | WriteOp::Update { .. } | WriteOp::Delete { .. } | WriteOp::Audit(_)
        )
    }

    /// Notes the row change `op` makes.
    fn note(&mut self, op: &WriteOp) {
        let (table, tenant, id, tag) = match op {
            WriteOp::Insert { table, record, .. } | WriteOp::Update { table, record, .. } => {
                (table, &record.tenant, &record.id, Some(record.tag.clone()))
            }
            WriteOp::Delete { table, tenant, id, .. } => (table, tenant, id, None),
            _ => return,
        };
        self.rows.push(RowLogEntry {
            tenant: tenant.clone(),
            collection: table.collection.clone(),
            record: id.clone(),
            tag,
        });
    }
}

/// A page of `table` in id order: binds tenant, then subject and the id to start after if
/// given, then the limit.
fn list_sql(table: &Table, subject: bool, after: bool) -> String {
    let mut sql = format!("SELECT {} FROM {} WHERE tenant = ?", table.select_list(""), table.name);
    if subject {
        sql.push_str(" AND subject = ?");
    }
    if after {
        sql.push_str(" AND id > ?");
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    sql
}

fn versions_in(table: &Table, domain: &str) -> String {
    let cols: Vec<String> = table.cells_in(domain).map(|c| format!("r.{}", c.version)).collect();
    if cols.is_empty() { "1 = 0".to_owned() } else { format!("s.version IN ({})", cols.join(", ")) }
}

/// A row count as read: never negative.
fn count_of(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt { what: "row count", reason: n.to_string() })
}

/// The bind of a clear field's column: the value (in its encoding, as the row tag covers it)
/// decoded into the column's type; `None` binds NULL.
fn clear_arg(table: &Table, field: &str, ty: FieldType, encoded: Option<&[u8]>) -> Result<Arg<'static>> {
    let Some(b) = encoded else {
        return Ok(match ty {
            FieldType::Integer => Arg::I(None),
            FieldType::Bool => Arg::Bool(None),
            FieldType::Bytes => Arg::Bytes(None),
            _ => Arg::Text(None),
        });
    };
    let bad =
        || StoreError::Invalid(format!("field {}.{field}: not a {} value", table.collection, ty.as_str()));
    // The value goes into the database in clear anyway: the copies need no wiping.
    let value = Value::decode(b).ok_or_else(bad)?;
    Ok(match (ty, &value) {
        (FieldType::Integer, Value::Integer(i)) => Arg::I(Some(*i)),
        (FieldType::Bool, Value::Bool(v)) => Arg::Bool(Some(*v)),
        (FieldType::Bytes, Value::Bytes(v)) => Arg::Bytes(Some(v.clone())),
        (FieldType::Text, Value::Text(v))
        | (FieldType::Decimal | FieldType::Percentage, Value::Decimal(v))
        | (FieldType::Date, Value::Date(v)) => Arg::Text(Some(v.clone())),
        _ => return Err(bad()),
    })
}

/// The index columns of `field` in `table`.
fn index_columns<'t>(table: &'t Table, field: &str) -> Result<(&'t str, &'t str)> {
    table
        .cell(field)
        .and_then(|c| c.index.as_ref())
        .map(|(i, j)| (i.as_str(), j.as_str()))
        .ok_or_else(|| StoreError::Schema(format!("field {}.{field} has no blind index", table.collection)))
}

fn check_fields(table: &Table, fields: &[FieldRow], indexes: &[IndexRow]) -> Result<()> {
    for f in fields {
        if table.cell(&f.field).is_none() {
            return Err(StoreError::Schema(format!("unknown field {}.{}", table.collection, f.field)));
        }
    }
    for i in indexes {
        index_columns(table, &i.field)?;
    }
    Ok(())
}

/// One row of an insert: the clear columns (with the tag), the cells, the blind indexes.
type InsertRow = (RecordRow, Vec<FieldRow>, Vec<IndexRow>);

/// Rows per multi-row `INSERT`: at most 500, and at most 30,000 binds per statement (SQLite
/// allows 32,766, PostgreSQL and MariaDB 65,535).
fn rows_per_insert(table: &Table) -> usize {
    let binds = 8 + table.cells.iter().map(|c| if c.index.is_some() { 4 } else { 2 }).sum::<usize>();
    (30_000 / binds).clamp(1, 500)
}

/// One `INSERT` of whole rows (every column; NULL where a field is not set).
fn insert_rows<'a>(table: &Table, rows: &'a [InsertRow]) -> Result<(String, Vec<Arg<'a>>)> {
    insert_rows_with(table, rows, None)
}

/// [`insert_rows`], with the row tags, sealed cells and blind indexes moved out of `rows` into
/// the binds, so the driver takes them without a copy (sqlx copies every borrowed bind before it
/// hands a statement over). The rest of `rows` (ids, subjects, fields, key versions) stays for
/// naming a duplicate and counting key uses.
fn insert_rows_taking<'a>(table: &Table, rows: &'a mut [InsertRow]) -> Result<(String, Vec<Arg<'a>>)> {
    let mut blobs = Vec::with_capacity(rows.len() * (1 + 2 * table.cells.len()));
    for (r, fields, indexes) in rows.iter_mut() {
        blobs.push(Some(std::mem::take(&mut r.tag)));
        // The order in which insert_rows_with binds them.
        for c in table.cells.iter().filter(|c| c.clear.is_none()) {
            blobs.push(fields.iter_mut().find(|f| f.field == c.field).map(|f| std::mem::take(&mut f.sealed)));
            if c.index.is_some() {
                blobs.push(
                    indexes.iter_mut().find(|x| x.field == c.field).map(|x| std::mem::take(&mut x.idx)),
                );
            }
        }
    }
    insert_rows_with(table, rows, Some(&mut blobs.into_iter()))
}

/// [`insert_rows`], taking the blobs from `owned` (in binding order) when given.
fn insert_rows_with<'a>(
    table: &Table,
    rows: &'a [InsertRow],
    mut owned: Option<&mut std::vec::IntoIter<Option<Vec<u8>>>>,
) -> Result<(String, Vec<Arg<'a>>)> {
    let mut blob = |b: Option<&'a [u8]>| -> Result<Arg<'a>> {
        match owned.as_mut() {
            Some(it) => it.next().map(Arg::Bytes).ok_or_else(|| StoreError::Invalid("insert binds".into())),
            None => Ok(Arg::B(b)),
        }
    };
    let mut cols =
        String::from("tenant, id, subject, version, created_at, updated_at, retain_until, row_tag");
    for c in &table.cells {
        match c.clear {
            Some(_) => cols.push_str(&format!(", {}", c.sealed)),
            None => cols.push_str(&format!(", {}, {}", c.sealed, c.version)),
        }
        if let Some((i, j)) = &c.index {
            cols.push_str(&format!(", {i}, {j}"));
        }
    }
    let mut args = Vec::new();
    let mut values = String::new();
    for (r, fields, indexes) in rows {
        check_fields(table, fields, indexes)?;
        let start = args.len();
        args.extend([
            Arg::S(&r.tenant),
            Arg::S(&r.id),
            Arg::S(&r.subject),
            Arg::I(Some(r.version)),
            Arg::I(Some(r.created_at)),
            Arg::I(Some(r.updated_at)),
            Arg::I(r.retain_until),
        ]);
        args.push(blob(Some(&r.tag))?);
        for c in &table.cells {
            let cell = fields.iter().find(|f| f.field == c.field);
            if let Some(ty) = c.clear {
                args.push(clear_arg(table, &c.field, ty, cell.map(|f| f.sealed.as_slice()))?);
                continue;
            }
            args.push(blob(cell.map(|f| f.sealed.as_slice()))?);
            args.push(Arg::I(cell.map(|f| f.key_version)));
            if c.index.is_some() {
                let ix = indexes.iter().find(|x| x.field == c.field);
                args.push(blob(ix.map(|x| x.idx.as_slice()))?);
                args.push(Arg::I(ix.map(|x| x.key_version)));
            }
        }
        if !values.is_empty() {
            values.push_str(", ");
        }
        values.push('(');
        values.push_str(&placeholders(args.len() - start));
        values.push(')');
    }
    Ok((format!("INSERT INTO {} ({cols}) VALUES {values}", table.name), args))
}

/// Inserts of one table waiting to be written as one multi-row `INSERT`.
/// The first id that occurs twice in `rows`.
fn duplicate_in(rows: &[InsertRow]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    rows.iter().map(|(r, _, _)| (r.tenant.as_str(), r.id.as_str())).find(|k| !seen.insert(*k)).map(|k| k.1)
}

struct PendingInserts {
    table: Arc<Table>,
    rows: Vec<InsertRow>,
}

/// `UPDATE` of a row still at `expected`: new bookkeeping columns and tag, the cells set and
/// removed; the blind index of every field set or removed is replaced by the one given or cleared.
fn update_row<'a>(
    table: &Table,
    r: &'a RecordRow,
    expected: (i64, &'a [u8]),
    (set, remove, indexes): (&'a [FieldRow], &'a [String], &'a [IndexRow]),
    null_columns: &[String],
) -> Result<(String, Vec<Arg<'a>>)> {
    check_fields(table, set, indexes)?;
    let mut sql =
        format!("UPDATE {} SET version = ?, updated_at = ?, retain_until = ?, row_tag = ?", table.name);
    let mut args = vec![
        Arg::I(Some(r.version)),
        Arg::I(Some(r.updated_at)),
        Arg::I(r.retain_until),
        Arg::B(Some(&r.tag)),
    ];
    for c in &table.cells {
        let cell = set.iter().find(|f| f.field == c.field);
        let removed = remove.contains(&c.field);
        if cell.is_none() && !removed {
            continue;
        }
        if let Some(ty) = c.clear {
            sql.push_str(&format!(", {} = ?", c.sealed));
            args.push(clear_arg(table, &c.field, ty, cell.map(|f| f.sealed.as_slice()))?);
            continue;
        }
        sql.push_str(&format!(", {} = ?, {} = ?", c.sealed, c.version));
        args.push(Arg::B(cell.map(|f| f.sealed.as_slice())));
        args.push(Arg::I(cell.map(|f| f.key_version)));
        if let Some((i, j)) = &c.index {
            let ix = indexes.iter().find(|x| x.field == c.field);
            sql.push_str(&format!(", {i} = ?, {j} = ?"));
            args.push(Arg::B(ix.map(|x| x.idx.as_slice())));
            args.push(Arg::I(ix.map(|x| x.key_version)));
        }
    }
    for f in remove {
        if table.cell(f).is_none() {
            return Err(StoreError::Schema(format!("unknown field {}.{f}", table.collection)));
        }
    }
    for col in null_columns {
        // Only identifiers a layout made (checked: never text from elsewhere in SQL).
        if !col.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(StoreError::Invalid(format!("column name {col:?}")));
        }
        sql.push_str(&format!(", {col} = NULL"));
    }
    sql.push_str(" WHERE tenant = ? AND id = ? AND version = ? AND row_tag = ?");
    args.push(Arg::S(&r.tenant));
    args.push(Arg::S(&r.id));
    args.push(Arg::I(Some(expected.0)));
    args.push(Arg::B(Some(expected.1)));
    Ok((sql, args))
}

impl<E: Engine> SqlBackend<E> {
    fn record_from(row: &RowOf<E>) -> Result<RecordRow> {
        Ok(RecordRow {
            tenant: text(row, 0)?,
            collection: text(row, 1)?,
            id: text(row, 2)?,
            subject: text(row, 3)?,
            version: row.col(4)?,
            created_at: row.col(5)?,
            updated_at: row.col(6)?,
            retain_until: row.col(7)?,
            tag: Vec::new(),
        })
    }

    /// A whole row of `table` as selected by [`Table::select_list`].
    fn stored_from(table: &Table, row: &RowOf<E>) -> Result<StoredRecord> {
        let record = RecordRow {
            tenant: text(row, 0)?,
            collection: table.collection.clone(),
            id: text(row, 1)?,
            subject: text(row, 2)?,
            version: row.col(3)?,
            created_at: row.col(4)?,
            updated_at: row.col(5)?,
            retain_until: row.col(6)?,
            tag: row.col(7)?,
        };
        let mut fields = Vec::with_capacity(table.cells.len());
        let mut at = 8;
        for c in &table.cells {
            if let Some(ty) = c.clear {
                if let Some(encoded) = Self::clear_cell(row, at, ty)? {
                    fields.push(FieldRow {
                        field: c.field.clone(),
                        domain: c.domain.clone(),
                        sealed: encoded,
                        key_version: 0,
                    });
                }
                at += 1;
                continue;
            }
            let sealed: Option<Vec<u8>> = row.col(at)?;
            let version: Option<i64> = row.col(at + 1)?;
            match (sealed, version) {
                (None, None) => {}
                (Some(sealed), Some(key_version)) => fields.push(FieldRow {
                    field: c.field.clone(),
                    domain: c.domain.clone(),
                    sealed,
                    key_version,
                }),
                // A value without its key version or the other way round was edited.
                _ => {
                    return Err(StoreError::Integrity {
                        collection: table.collection.clone(),
                        record: record.id,
                        field: c.field.clone(),
                    });
                }
            }
            at += 2;
        }
        Ok(StoredRecord { record, fields })
    }

    /// A clear field's column as read, back in the value encoding the row tag covers.
    fn clear_cell(row: &RowOf<E>, at: usize, ty: FieldType) -> Result<Option<Vec<u8>>> {
        let v = match ty {
            FieldType::Integer => row.col::<Option<i64>>(at)?.map(Value::Integer),
            FieldType::Bool => row.col::<Option<bool>>(at)?.map(Value::Bool),
            FieldType::Bytes => row.col::<Option<Vec<u8>>>(at)?.map(Value::Bytes),
            FieldType::Decimal | FieldType::Percentage => opt_text(row, at)?.map(Value::Decimal),
            FieldType::Date => opt_text(row, at)?.map(Value::Date),
            _ => opt_text(row, at)?.map(Value::Text),
        };
        Ok(v.map(|v| v.encode().to_vec()))
    }

    async fn attach_fields(
        &self,
        tenant: &str,
        collection: &str,
        records: Vec<RecordRow>,
    ) -> Result<Vec<StoredRecord>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        // The id range lets every engine (and PostgreSQL's generic plan for a prepared
        // statement) use the primary key for a range scan; the IN list then filters it.
        // The records come ordered by id in the database's collation, so the first and
        // the last bound the range (Rust's byte order may differ from a locale's).
        let (Some(lo), Some(hi)) =
            (records.first().map(|r| r.id.as_str()), records.last().map(|r| r.id.as_str()))
        else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT record_id, field, domain, sealed, key_version FROM kluis_fields \
                 WHERE tenant = ? AND collection = ? AND record_id >= ? AND record_id <= ? \
                 AND record_id IN ({}) ORDER BY record_id, field",
            placeholders(records.len())
        );
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql).bind(tenant).bind(collection).bind(lo).bind(hi);
        for r in &records {
            q = q.bind(r.id.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        // Rows come ordered by record id: attach them without allocating a key per cell.
        let pos: std::collections::HashMap<&str, usize> =
            records.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect();
        let mut cells: Vec<Vec<FieldRow>> = (0..records.len()).map(|_| Vec::with_capacity(8)).collect();
        let mut current: Option<usize> = None;
        for row in &rows {
            let rid = text_ref(row, 0)?;
            let i = match current {
                Some(i) if records.get(i).is_some_and(|r| r.id == rid) => i,
                _ => match pos.get(rid) {
                    Some(i) => *i,
                    None => continue,
                },
            };
            current = Some(i);
            if let Some(list) = cells.get_mut(i) {
                list.push(FieldRow {
                    field: text(row, 1)?,
                    domain: text(row, 2)?,
                    sealed: row.col(3)?,
                    key_version: row.col(4)?,
                });
            }
        }
        drop(pos);
        Ok(records.into_iter().zip(cells).map(|(record, fields)| StoredRecord { record, fields }).collect())
    }

    async fn apply_one(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        op: WriteOp,
        used: &mut KeyUses,
    ) -> Result<()> {
        match op {
            WriteOp::Insert { table, record, fields, indexes } => {
                let row = [(record, fields, indexes)];
                let (sql, args) = insert_rows(&table, &row)?;
                let sql = E::sql(&sql).into_owned();
                if let Err(e) =
                    query::<E>(&sql).bind_all(args.iter().map(Arg::borrowed)).execute(&mut **tx).await
                {
                    if unique_violation(&e) {
                        return Err(StoreError::AlreadyExists {
                            collection: table.collection.clone(),
                            record: row[0].0.id.clone(),
                        });
                    }
                    return Err(e.into());
                }
                drop(args);
                let [(record, fields, _)] = row;
                for f in fields.iter().filter(|f| table.is_sealed(&f.field)) {
                    used.add(&record.tenant, &f.domain, &record.subject, f.key_version);
                }
                Ok(())
            }
            WriteOp::Update {
                table,
                record,
                expected_version,
                expected_tag,
                set_fields,
                remove_fields,
                set_indexes,
                null_columns,
            } => {
                let (sql, args) = update_row(
                    &table,
                    &record,
                    (expected_version, &expected_tag),
                    (&set_fields, &remove_fields, &set_indexes),
                    &null_columns,
                )?;
                let sql = E::sql(&sql).into_owned();
                let done =
                    query::<E>(&sql).bind_all(args.iter().map(Arg::borrowed)).execute(&mut **tx).await?;
                if done.rows_affected() != 1 {
                    return Err(
                        match Self::conflict(tx, &table, &record.tenant, &record.id, expected_version).await {
                            // Same version, other tag: a re-encryption rewrote the row.
                            StoreError::Conflict { expected, found, .. } if expected == found => {
                                StoreError::KeyChanged {
                                    what: format!(
                                        "record {}/{} was re-encrypted meanwhile",
                                        table.collection, record.id
                                    ),
                                }
                            }
                            e => e,
                        },
                    );
                }
                for f in set_fields.iter().filter(|f| table.is_sealed(&f.field)) {
                    used.add(&record.tenant, &f.domain, &record.subject, f.key_version);
                }
                Ok(())
            }
            WriteOp::SetIndex { table, tenant, record_id, index } => {
                let (i, j) = index_columns(&table, &index.field)?;
                let sql = format!("UPDATE {} SET {i} = ?, {j} = ? WHERE tenant = ? AND id = ?", table.name);
                query::<E>(&E::sql(&sql))
                    .bind(index.idx)
                    .bind(index.key_version)
                    .bind(tenant)
                    .bind(record_id)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
            WriteOp::DropIndex { table, tenant, record_id, field } => {
                let (i, j) = index_columns(&table, &field)?;
                let sql =
                    format!("UPDATE {} SET {i} = NULL, {j} = NULL WHERE tenant = ? AND id = ?", table.name);
                query::<E>(&E::sql(&sql)).bind(tenant).bind(record_id).execute(&mut **tx).await?;
                Ok(())
            }
            WriteOp::Override(row) => Self::insert_override(tx, row).await,
            WriteOp::Audit(a) => Self::audit_append(tx, a).await,
            WriteOp::InsertDocument(d) => Self::insert_document_tx(tx, d).await,
            WriteOp::DeleteDocument { tenant, document_id } => {
                let done =
                    query::<E>(&E::sql("DELETE FROM kluis_documents WHERE tenant = ? AND document_id = ?"))
                        .bind(&tenant)
                        .bind(&document_id)
                        .execute(&mut **tx)
                        .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::NotFound {
                        collection: "kluis_documents".into(),
                        record: document_id,
                    });
                }
                Ok(())
            }
            WriteOp::Delete { table, tenant, id, expected_version } => {
                // The record's catalog documents go in the same transaction (their blobs
                // are then unreferenced: the blob store's garbage collection removes
                // them). Before the record row, whose subject narrows the match.
                let sql = format!(
                    "DELETE FROM kluis_documents WHERE tenant = ? AND record_id = ? AND subject = \
                         (SELECT subject FROM {} WHERE tenant = ? AND id = ?)",
                    table.name
                );
                query::<E>(&E::sql(&sql))
                    .bind(&tenant)
                    .bind(&id)
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
                let sql = match expected_version {
                    Some(_) => {
                        format!("DELETE FROM {} WHERE tenant = ? AND id = ? AND version = ?", table.name)
                    }
                    None => format!("DELETE FROM {} WHERE tenant = ? AND id = ?", table.name),
                };
                let sql = E::sql(&sql).into_owned();
                let mut q = query::<E>(&sql).bind(&tenant).bind(&id);
                if let Some(v) = expected_version {
                    q = q.bind(v);
                }
                let done = q.execute(&mut **tx).await?;
                if done.rows_affected() != 1 {
                    return Err(match expected_version {
                        Some(v) => Self::conflict(tx, &table, &tenant, &id, v).await,
                        None => StoreError::NotFound { collection: table.collection.clone(), record: id },
                    });
                }
                Ok(())
            }
        }
    }

    /// Writes the pending inserts as one statement; a duplicate id is
    /// [`StoreError::AlreadyExists`] naming that record (found in the statement itself,
    /// else through `pool`: a concurrent insert of the same id has committed by then, the
    /// statement waited for it).
    async fn flush_inserts(
        pool: &sqlx::Pool<E::Db>,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        pending: &mut Option<PendingInserts>,
        used: &mut KeyUses,
    ) -> Result<()> {
        let Some(mut p) = pending.take() else { return Ok(()) };
        let (sql, args) = insert_rows_taking(&p.table, &mut p.rows)?;
        let sql = E::sql(&sql).into_owned();
        let res = query::<E>(&sql).bind_all(args).execute(&mut **tx).await;
        match res {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => {
                let record = match duplicate_in(&p.rows) {
                    Some(id) => id.to_owned(),
                    None => Self::existing_id(pool, &p).await?,
                };
                return Err(StoreError::AlreadyExists { collection: p.table.collection.clone(), record });
            }
            Err(e) => return Err(e.into()),
        }
        for (r, fields, _) in &p.rows {
            // Once per (domain, version) of the row: its cells of a domain share a key.
            let mut last: Option<(&str, i64)> = None;
            for f in fields.iter().filter(|f| p.table.is_sealed(&f.field)) {
                if last != Some((f.domain.as_str(), f.key_version)) {
                    used.add(&r.tenant, &f.domain, &r.subject, f.key_version);
                    last = Some((f.domain.as_str(), f.key_version));
                }
            }
        }
        Ok(())
    }

    /// The first id of `p` its table already holds (the first of `p` if none).
    async fn existing_id(pool: &sqlx::Pool<E::Db>, p: &PendingInserts) -> Result<String> {
        let cond = vec!["(tenant = ? AND id = ?)"; p.rows.len()].join(" OR ");
        let sql = format!("SELECT id FROM {} WHERE {cond} ORDER BY id LIMIT 1", p.table.name);
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql);
        for (r, _, _) in &p.rows {
            q = q.bind(r.tenant.as_str()).bind(r.id.as_str());
        }
        match q.fetch_optional(pool).await? {
            Some(row) => text(&row, 0),
            None => Ok(p.rows.first().map(|(r, _, _)| r.id.clone()).unwrap_or_default()),
        }
    }

    /// [`Self::apply_one`], with inserts of one table gathered into multi-row statements.
    async fn apply_gathered(
        pool: &sqlx::Pool<E::Db>,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        op: WriteOp,
        pending: &mut Option<PendingInserts>,
        used: &mut KeyUses,
        log: &mut TxLog,
    ) -> Result<()> {
        if TxLog::needs_lock(&op) && !log.locked {
            Self::lock_head(tx).await?;
            log.locked = true;
        }
        log.note(&op);
        match op {
            WriteOp::Audit(a) => {
                log.audits.push(a);
                Ok(())
            }
            WriteOp::Insert { table, record, fields, indexes } => {
                let full = pending
                    .as_ref()
                    .is_some_and(|p| p.table.name != table.name || p.rows.len() >= rows_per_insert(&p.table));
                if full {
                    Self::flush_inserts(pool, tx, pending, used).await?;
                }
                pending
                    .get_or_insert_with(|| PendingInserts { table, rows: Vec::new() })
                    .rows
                    .push((record, fields, indexes));
                Ok(())
            }
            other => {
                Self::flush_inserts(pool, tx, pending, used).await?;
                Self::apply_one(tx, other, used).await
            }
        }
    }

    /// The log of a transaction that changes no row and appends `audit`, if any: the head
    /// lock is taken first (before any key row) when there is an entry.
    async fn start_log(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<TxLog> {
        let log = TxLog { locked: audit.is_some(), rows: Vec::new(), audits: audit.into_iter().collect() };
        if log.locked {
            Self::lock_head(tx).await?;
        }
        Ok(log)
    }

    /// Appends the transaction's row log entries, then its audit entries (which so cover
    /// them).
    async fn finish_log(tx: &mut sqlx::Transaction<'static, E::Db>, log: TxLog) -> Result<()> {
        Self::log_rows(tx, &log.rows).await?;
        for a in log.audits {
            Self::audit_append(tx, a).await?;
        }
        Ok(())
    }

    async fn insert_document_tx(tx: &mut sqlx::Transaction<'static, E::Db>, d: DocumentRow) -> Result<()> {
        let res = query::<E>(&E::sql(
                "INSERT INTO kluis_documents (tenant, document_id, domain, subject, record_id, object_name, key_ref, padded_size, created_at, sealed_meta, key_version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(&d.tenant)
            .bind(&d.document_id)
            .bind(&d.domain)
            .bind(&d.subject)
            .bind(&d.record_id)
            .bind(&d.object_name)
            .bind(&d.key_ref)
            .bind(d.padded_size)
            .bind(d.created_at)
            .bind(&d.sealed_meta)
            .bind(document_key_version(&d.key_ref, &d.domain))
            .execute(&mut **tx)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) => {
                Err(StoreError::AlreadyExists { collection: "kluis_documents".into(), record: d.document_id })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn conflict(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        table: &Table,
        tenant: &str,
        id: &str,
        expected: i64,
    ) -> StoreError {
        let sql = format!("SELECT version FROM {} WHERE tenant = ? AND id = ?", table.name);
        let found: std::result::Result<Option<i64>, sqlx::Error> =
            query_scalar::<E, i64>(&E::sql(&sql)).bind(tenant).bind(id).fetch_optional(&mut **tx).await;
        match found {
            Err(e) => e.into(),
            Ok(None) => StoreError::NotFound { collection: table.collection.clone(), record: id.to_owned() },
            Ok(Some(v)) => match (u64::try_from(expected), u64::try_from(v)) {
                (Ok(expected), Ok(found)) => StoreError::Conflict {
                    collection: table.collection.clone(),
                    record: id.to_owned(),
                    expected,
                    found,
                },
                _ => StoreError::Corrupt {
                    what: "record version",
                    reason: format!("{}/{id}: {v}", table.collection),
                },
            },
        }
    }

    /// A cell may only be written under a subject key that still exists: the share lock
    /// makes a concurrent re-encryption or shred that deletes such a version wait for this
    /// commit (and then see the cell), or this writer see the deletion and give up
    /// ([`StoreError::KeyChanged`]). Run once per batch, after its writes and before the
    /// commit (the locks are held to the commit either way), a few hundred versions per
    /// statement.
    async fn require_subject_keys(tx: &mut sqlx::Transaction<'static, E::Db>, used: &KeyUses) -> Result<()> {
        let all: Vec<(&str, &str, &str, i64)> = used.iter().collect();
        for chunk in all.chunks(KEY_USES_PER_STATEMENT) {
            let mut cond = String::with_capacity(chunk.len() * 64);
            for i in 0..chunk.len() {
                if i > 0 {
                    cond.push_str(" OR ");
                }
                cond.push_str("(tenant = ? AND domain = ? AND subject = ? AND version = ?)");
            }
            // The versions of a chunk are distinct and the table's primary key is
            // (tenant, domain, subject, version): all exist exactly when the count of
            // matching rows is the chunk's length. Counting sends one row back instead of
            // a few hundred (on SQLite each row is a hop through sqlx's worker thread).
            // PostgreSQL takes the share locks in the subquery (no FOR SHARE beside an
            // aggregate); MariaDB keeps the plain locking read.
            let count = match E::KIND {
                EngineKind::Sqlite => Some(format!("SELECT COUNT(*) FROM kluis_subject_keys WHERE {cond}")),
                EngineKind::Postgres => Some(format!(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM kluis_subject_keys WHERE {cond} FOR SHARE) AS held"
                )),
                EngineKind::MySql => None,
            };
            if let Some(sql) = count {
                let sql = E::sql(&sql).into_owned();
                let mut q = query_scalar::<E, i64>(&sql);
                for (t, d, s, v) in chunk {
                    q = q.bind(*t).bind(*d).bind(*s).bind(*v);
                }
                let n = q.fetch_one(&mut **tx).await?;
                if usize::try_from(n).is_ok_and(|n| n == chunk.len()) {
                    continue;
                }
            }
            // MariaDB, or a version is missing: read the rows to name it.
            let sql = format!(
                "SELECT tenant, domain, subject, version FROM kluis_subject_keys WHERE {cond}{}",
                E::SHARE_LOCK
            );
            let sql = E::sql(&sql).into_owned();
            let mut q = query::<E>(&sql);
            for (t, d, s, v) in chunk {
                q = q.bind(*t).bind(*d).bind(*s).bind(*v);
            }
            let rows = q.fetch_all(&mut **tx).await?;
            let mut found: Vec<(String, String, String, i64)> = Vec::with_capacity(rows.len());
            for row in &rows {
                found.push((text(row, 0)?, text(row, 1)?, text(row, 2)?, row.col(3)?));
            }
            found.sort_unstable();
            for (t, d, s, v) in chunk {
                let hit = found
                    .binary_search_by(|f| {
                        (f.0.as_str(), f.1.as_str(), f.2.as_str(), f.3).cmp(&(*t, *d, *s, *v))
                    })
                    .is_ok();
                if !hit {
                    return Err(StoreError::KeyChanged { what: format!("subject key {t}/{d}/{s} v{v}") });
                }
            }
        }
        Ok(())
    }

    fn subject_key_from(row: &RowOf<E>) -> Result<SubjectKeyRow> {
        Ok(SubjectKeyRow {
            tenant: text(row, 0)?,
            domain: text(row, 1)?,
            subject: text(row, 2)?,
            version: row.col(3)?,
            wrapped: row.col(4)?,
            created_at: row.col(5)?,
            wrap_version: row.col(6)?,
        })
    }

    fn document_from(row: &RowOf<E>) -> Result<DocumentRow> {
        Ok(DocumentRow {
            tenant: text(row, 0)?,
            document_id: text(row, 1)?,
            domain: text(row, 2)?,
            subject: text(row, 3)?,
            record_id: opt_text(row, 4)?,
            object_name: text(row, 5)?,
            key_ref: text(row, 6)?,
            padded_size: row.col(7)?,
            created_at: row.col(8)?,
            sealed_meta: row.col(9)?,
        })
    }
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

    /// All versions of a domain key.
    pub async fn domain_keys(&self, tenant: &str, domain: &str) -> Result<Vec<DomainKeyRow>> {
        let rows = query::<E>(&E::sql(
            "SELECT tenant, domain, version, state, wrapped, tag FROM kluis_domain_keys \
                 WHERE tenant = ? AND domain = ? ORDER BY version",
        ))
        .bind(tenant)
        .bind(domain)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DomainKeyRow {
                    tenant: text(r, 0)?,
                    domain: text(r, 1)?,
                    version: r.col(2)?,
                    state: text(r, 3)?,
                    wrapped: r.col(4)?,
                    tag: r.col(5)?,
                })
            })
            .collect()
    }

    /// Every domain key row of every tenant (for root key rotation).
    pub async fn all_domain_keys(&self) -> Result<Vec<DomainKeyRow>> {
        let rows = query::<E>(
                "SELECT tenant, domain, version, state, wrapped, tag FROM kluis_domain_keys ORDER BY tenant, domain, version",
            )
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DomainKeyRow {
                    tenant: text(r, 0)?,
                    domain: text(r, 1)?,
                    version: r.col(2)?,
                    state: text(r, 3)?,
                    wrapped: r.col(4)?,
                    tag: r.col(5)?,
                })
            })
            .collect()
    }

    /// Inserts new domain key rows and updates existing ones (state, wrapped) in one transaction.
    /// `insert_only` rows fail with [`StoreError::AlreadyExists`] if present.
    pub async fn put_domain_keys(
        &self,
        rows: Vec<DomainKeyRow>,
        insert_only: bool,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let log = Self::start_log(&mut tx, audit).await?;
        for r in rows {
            let updated = if insert_only {
                0
            } else {
                query::<E>(&E::sql(
                        "UPDATE kluis_domain_keys SET state = ?, wrapped = ?, tag = ? WHERE tenant = ? AND domain = ? AND version = ?",
                    ))
                    .bind(&r.state)
                    .bind(&r.wrapped)
                    .bind(&r.tag)
                    .bind(&r.tenant)
                    .bind(&r.domain)
                    .bind(r.version)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            };
            if updated == 0 {
                let res = query::<E>(&E::sql(
                        "INSERT INTO kluis_domain_keys (tenant, domain, version, state, wrapped, tag) VALUES (?, ?, ?, ?, ?, ?)",
                    ))
                    .bind(&r.tenant)
                    .bind(&r.domain)
                    .bind(r.version)
                    .bind(&r.state)
                    .bind(&r.wrapped)
                    .bind(&r.tag)
                    .execute(&mut *tx)
                    .await;
                match res {
                    Ok(_) => {}
                    Err(e) if unique_violation(&e) => {
                        return Err(StoreError::AlreadyExists {
                            collection: "kluis_domain_keys".into(),
                            record: format!("{}/{} v{}", r.tenant, r.domain, r.version),
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Self::finish_log(&mut tx, log).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The subject key rows of (tenant, domain, subject).
    pub async fn subject_keys(
        &self,
        tenant: &str,
        domain: &str,
        subject: &str,
    ) -> Result<Vec<SubjectKeyRow>> {
        let rows = query::<E>(&E::sql(
                "SELECT tenant, domain, subject, version, wrapped, created_at, wrap_version FROM kluis_subject_keys \
                 WHERE tenant = ? AND domain = ? AND subject = ? ORDER BY version",
            ))
            .bind(tenant)
            .bind(domain)
            .bind(subject)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::subject_key_from).collect()
    }

    /// Every subject key row of (tenant, domain).
    pub async fn all_subject_keys(&self, tenant: &str, domain: &str) -> Result<Vec<SubjectKeyRow>> {
        let rows = query::<E>(&E::sql(
                "SELECT tenant, domain, subject, version, wrapped, created_at, wrap_version FROM kluis_subject_keys \
                 WHERE tenant = ? AND domain = ? ORDER BY subject, version",
            ))
            .bind(tenant)
            .bind(domain)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::subject_key_from).collect()
    }

    /// Inserts a subject key row; `false` if that (tenant, domain, subject, version) exists.
    pub async fn insert_subject_key(&self, row: SubjectKeyRow) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // The wrapping domain key version must still be live; the share lock keeps a
        // concurrent retirement of it waiting until this key is visible to its check.
        Self::require_live_domain_key(&mut tx, &row.tenant, &row.domain, row.wrap_version).await?;
        let inserted = Self::insert_subject_key_tx(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Replaces the wrapped bytes of subject key rows (after a rewrap), in one transaction.
    pub async fn rewrap_subject_keys(&self, rows: Vec<SubjectKeyRow>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            query::<E>(&E::sql(
                    "UPDATE kluis_subject_keys SET wrapped = ?, wrap_version = ? WHERE tenant = ? AND domain = ? AND subject = ? AND version = ?",
                ))
                .bind(&r.wrapped)
                .bind(r.wrap_version)
                .bind(&r.tenant)
                .bind(&r.domain)
                .bind(&r.subject)
                .bind(r.version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies a batch of writes in one transaction; any error rolls all of it back.
    pub async fn apply(&self, ops: Vec<WriteOp>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let mut used = KeyUses::default();
        let mut pending = None;
        let mut log = TxLog::default();
        // The head lock before any row lock (see crate::row_log).
        if ops.iter().any(TxLog::needs_lock) {
            Self::lock_head(&mut tx).await?;
            log.locked = true;
        }
        for op in ops {
            // On error `tx` is dropped without commit: everything rolls back.
            Self::apply_gathered(&self.pool, &mut tx, op, &mut pending, &mut used, &mut log).await?;
        }
        Self::flush_inserts(&self.pool, &mut tx, &mut pending, &mut used).await?;
        Self::finish_log(&mut tx, log).await?;
        Self::require_subject_keys(&mut tx, &used).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`SqlBackend::apply`] for a batch whose writes arrive while earlier ones are being written:
    /// `Some(op)` is written, `None` ends the batch and commits it. If the channel closes before
    /// `None` (the sender failed), everything is rolled back and the answer is
    /// [`StoreError::Invalid`]; the sender's own error is the one to report.
    pub async fn apply_stream(&self, mut ops: tokio::sync::mpsc::Receiver<Option<WriteOp>>) -> Result<()> {
        let cut = || StoreError::Invalid("the batch ended before its end mark; nothing was written".into());
        // Nothing is begun before the first write arrives (a failed check sends none).
        let mut next = ops.recv().await.ok_or_else(cut)?;
        let mut tx = self.pool.begin().await?;
        let mut used = KeyUses::default();
        let mut pending = None;
        let mut log = TxLog::default();
        while let Some(op) = next {
            // On error `tx` is dropped without commit: everything rolls back.
            Self::apply_gathered(&self.pool, &mut tx, op, &mut pending, &mut used, &mut log).await?;
            next = ops.recv().await.ok_or_else(cut)?;
        }
        drop(ops);
        Self::flush_inserts(&self.pool, &mut tx, &mut pending, &mut used).await?;
        Self::finish_log(&mut tx, log).await?;
        Self::require_subject_keys(&mut tx, &used).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One record.
    pub async fn get(&self, table: &Table, tenant: &str, id: &str) -> Result<Option<StoredRecord>> {
        let sql = format!("SELECT {} FROM {} WHERE tenant = ? AND id = ?", table.select_list(""), table.name);
        let row = query::<E>(&E::sql(&sql)).bind(tenant).bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| Self::stored_from(table, &r)).transpose()
    }

    /// Which of `ids` the tenant's table holds (one query; nothing opened).
    pub async fn existing_ids(&self, table: &Table, tenant: &str, ids: &[&str]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(1000) {
            let sql = format!(
                "SELECT id FROM {} WHERE tenant = ? AND id IN ({})",
                table.name,
                placeholders(chunk.len())
            );
            let sql = E::sql(&sql).into_owned();
            let mut q = query::<E>(&sql).bind(tenant);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(text(&r, 0)?);
            }
        }
        Ok(out)
    }

    /// A page of records ordered by id, after `after`, optionally only those of `subject`.
    pub async fn list(
        &self,
        table: &Table,
        tenant: &str,
        subject: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        let sql = E::sql(&list_sql(table, subject.is_some(), after.is_some())).into_owned();
        let mut q = query::<E>(&sql).bind(tenant);
        if let Some(s) = subject {
            q = q.bind(s);
        }
        if let Some(a) = after {
            q = q.bind(a);
        }
        let rows = q.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Self::stored_from(table, r)).collect()
    }

    /// [`SqlBackend::list`], each record handed to `out` as the database produces it, so the caller
    /// opens one while the next are read. The channel is unbounded (at most `limit` records wait
    /// in it), so the read never waits for the caller and its connection is freed as soon as the
    /// rows are read: a caller that needs the pool meanwhile (a subject key to load) cannot
    /// deadlock it. Stops without error when `out` is closed (the caller's error is the answer).
    pub async fn list_each(
        &self,
        table: &Table,
        tenant: &str,
        subject: Option<&str>,
        after: Option<&str>,
        limit: u32,
        out: tokio::sync::mpsc::UnboundedSender<StoredRecord>,
    ) -> Result<()> {
        let sql = E::sql(&list_sql(table, subject.is_some(), after.is_some())).into_owned();
        let mut q = query::<E>(&sql).bind(tenant);
        if let Some(s) = subject {
            q = q.bind(s);
        }
        if let Some(a) = after {
            q = q.bind(a);
        }
        q.bind(i64::from(limit))
            .for_each(&self.pool, |row| Ok(out.send(Self::stored_from(table, &row)?).is_ok()))
            .await
    }

    /// Records whose blind index of `field` is one of `candidates` (key version, index), by id.
    pub async fn find_index(
        &self,
        table: &Table,
        tenant: &str,
        field: &str,
        candidates: Vec<(i64, Vec<u8>)>,
    ) -> Result<Vec<StoredRecord>> {
        let (i, j) = index_columns(table, field)?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut cond = String::new();
        for n in 0..candidates.len() {
            if n > 0 {
                cond.push_str(" OR ");
            }
            cond.push_str(&format!("({i} = ? AND {j} = ?)"));
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE tenant = ? AND ({cond}) ORDER BY id",
            table.select_list(""),
            table.name
        );
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql).bind(tenant);
        for (v, idx) in &candidates {
            q = q.bind(idx.as_slice()).bind(*v);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(|r| Self::stored_from(table, r)).collect()
    }

    /// Every record of a subject (clear columns only), over the tables of `layout`.
    pub async fn subject_records(
        &self,
        layout: &Layout,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<RecordRow>> {
        let mut out = Vec::new();
        for t in layout.tables() {
            let sql = format!(
                "SELECT {} FROM {} WHERE tenant = ? AND subject = ? ORDER BY id",
                t.select_list(""),
                t.name
            );
            let rows = query::<E>(&E::sql(&sql)).bind(tenant).bind(subject).fetch_all(&self.pool).await?;
            for r in &rows {
                out.push(Self::stored_from(t, r)?.record);
            }
        }
        out.sort_by(|a, b| (&a.collection, &a.id).cmp(&(&b.collection, &b.id)));
        Ok(out)
    }

    /// Every blind index of a tenant (collection, record id, field, key version), for re-indexing
    /// after a key rotation.
    pub async fn index_rows(
        &self,
        layout: &Layout,
        tenant: &str,
    ) -> Result<Vec<(String, String, String, i64)>> {
        let mut out = Vec::new();
        for t in layout.tables() {
            for c in &t.cells {
                let Some((i, j)) = &c.index else { continue };
                let sql = format!("SELECT id, {j} FROM {} WHERE tenant = ? AND {i} IS NOT NULL", t.name);
                let rows = query::<E>(&E::sql(&sql)).bind(tenant).fetch_all(&self.pool).await?;
                for r in &rows {
                    out.push((t.collection.clone(), text(r, 0)?, c.field.clone(), r.col(1)?));
                }
            }
        }
        Ok(out)
    }

    /// Shreds a subject in one transaction: its subject keys, its rows in every table listed in
    /// `kluis_tables` and document catalog entries; records `audit` (a legal override) and
    /// appends `entry` (an audit log entry) in the same transaction if given. Returns the number
    /// of records removed.
    pub async fn delete_subject(
        &self,
        tenant: &str,
        subject: &str,
        audit: Option<OverrideRow>,
        entry: Option<crate::audit::AuditAppend>,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // The head lock first: on SQLite it takes the write lock up front.
        Self::lock_head(&mut tx).await?;
        let tables = query::<E>("SELECT collection, table_name FROM kluis_tables ORDER BY collection")
            .fetch_all(&mut *tx)
            .await?;
        let mut removed = 0u64;
        let mut gone = Vec::new();
        for row in &tables {
            let collection = text(row, 0)?;
            let name = text(row, 1)?;
            if !crate::layout::is_table_name(&name) {
                return Err(StoreError::Corrupt {
                    what: "kluis_tables",
                    reason: format!("table name {name:?}"),
                });
            }
            for id in Self::subject_row_ids(&mut tx, &name, tenant, subject).await? {
                gone.push(RowLogEntry {
                    tenant: tenant.to_owned(),
                    collection: collection.clone(),
                    record: id,
                    tag: None,
                });
            }
            let sql = format!("DELETE FROM {name} WHERE tenant = ? AND subject = ?");
            removed +=
                query::<E>(&E::sql(&sql)).bind(tenant).bind(subject).execute(&mut *tx).await?.rows_affected();
        }
        // Rows of the legacy layout not moved yet.
        let legacy =
            query::<E>(&E::sql("SELECT collection, id FROM kluis_records WHERE tenant = ? AND subject = ?"))
                .bind(tenant)
                .bind(subject)
                .fetch_all(&mut *tx)
                .await?;
        for row in &legacy {
            let collection = text(row, 0)?;
            let id = text(row, 1)?;
            for table in ["kluis_fields", "kluis_blind_index"] {
                let sql =
                    format!("DELETE FROM {table} WHERE tenant = ? AND collection = ? AND record_id = ?");
                query::<E>(&E::sql(&sql)).bind(tenant).bind(&collection).bind(&id).execute(&mut *tx).await?;
            }
        }
        removed += legacy.len() as u64;
        for table in ["kluis_records", "kluis_subject_keys", "kluis_documents"] {
            let sql = format!("DELETE FROM {table} WHERE tenant = ? AND subject = ?");
            query::<E>(&E::sql(&sql)).bind(tenant).bind(subject).execute(&mut *tx).await?;
        }
        if let Some(a) = audit {
            Self::insert_override(&mut tx, a).await?;
        }
        Self::finish_log(&mut tx, TxLog { locked: true, rows: gone, audits: entry.into_iter().collect() })
            .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Records a legal override.
    pub async fn record_override(&self, row: OverrideRow) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::insert_override(&mut tx, row).await?;
        tx.commit().await?;
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
        let sql = match E::KIND {
            EngineKind::MySql => {
                "INSERT INTO kluis_meta (name, value) VALUES (?, ?) ON DUPLICATE KEY UPDATE value = VALUES(value)"
            }
            EngineKind::Postgres | EngineKind::Sqlite => {
                "INSERT INTO kluis_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            }
        };
        query::<E>(&E::sql(sql)).bind(name).bind(value).execute(&self.pool).await?;
        Ok(())
    }

    /// Inserts a documents catalog entry.
    pub async fn insert_document(&self, d: DocumentRow) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::insert_document_tx(&mut tx, d).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lists catalog entries by subject or record, ordered by document id.
    pub async fn list_documents(&self, tenant: &str, filter: DocumentFilter<'_>) -> Result<Vec<DocumentRow>> {
        let (col, val) = match filter {
            DocumentFilter::Subject(s) => ("subject", s),
            DocumentFilter::Record(r) => ("record_id", r),
        };
        let sql = format!(
            "SELECT tenant, document_id, domain, subject, record_id, object_name, key_ref, padded_size, created_at, sealed_meta \
                 FROM kluis_documents WHERE tenant = ? AND {col} = ? ORDER BY document_id"
        );
        let rows = query::<E>(&E::sql(&sql)).bind(tenant).bind(val).fetch_all(&self.pool).await?;
        rows.iter().map(Self::document_from).collect()
    }

    /// Deletes a catalog entry; `false` if there was none.
    pub async fn delete_document(&self, tenant: &str, document_id: &str) -> Result<bool> {
        let done = query::<E>(&E::sql("DELETE FROM kluis_documents WHERE tenant = ? AND document_id = ?"))
            .bind(tenant)
            .bind(document_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Makes deleted key bytes unrecoverable from the database files (engine specific; see
    /// docs/STORE.md): SQLite secure_delete + VACUUM + WAL checkpoint(TRUNCATE); PostgreSQL
    /// VACUUM FULL of the key tables; MariaDB OPTIMIZE TABLE of the key tables.
    pub async fn purge(&self) -> Result<()> {
        E::purge(&self.pool).await
    }

    /// One catalog entry.
    pub async fn document(&self, tenant: &str, document_id: &str) -> Result<Option<DocumentRow>> {
        let row = query::<E>(&E::sql(
                "SELECT tenant, document_id, domain, subject, record_id, object_name, key_ref, padded_size, created_at, sealed_meta \
                 FROM kluis_documents WHERE tenant = ? AND document_id = ?",
            ))
            .bind(tenant)
            .bind(document_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::document_from).transpose()
    }

    /// Replaces the catalog entry (tenant, document id) of `row` if its object name is still
    /// `expected_object_name` (compare-and-swap); `false` if it changed or is gone.
    pub async fn replace_document(&self, expected_object_name: &str, d: DocumentRow) -> Result<bool> {
        let done = query::<E>(&E::sql(
                "UPDATE kluis_documents SET domain = ?, subject = ?, record_id = ?, object_name = ?, key_ref = ?, \
                 padded_size = ?, created_at = ?, sealed_meta = ?, key_version = ? \
                 WHERE tenant = ? AND document_id = ? AND object_name = ?",
            ))
            .bind(&d.domain)
            .bind(&d.subject)
            .bind(&d.record_id)
            .bind(&d.object_name)
            .bind(&d.key_ref)
            .bind(d.padded_size)
            .bind(d.created_at)
            .bind(&d.sealed_meta)
            .bind(document_key_version(&d.key_ref, &d.domain))
            .bind(&d.tenant)
            .bind(&d.document_id)
            .bind(expected_object_name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every object name referenced by any catalog entry, all tenants, sorted.
    pub async fn document_object_names(&self) -> Result<Vec<String>> {
        let rows = query::<E>("SELECT DISTINCT object_name FROM kluis_documents ORDER BY object_name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| text(r, 0)).collect()
    }

    /// Tenants that have domain keys, sorted.
    pub async fn tenants(&self) -> Result<Vec<String>> {
        let rows = query::<E>("SELECT DISTINCT tenant FROM kluis_domain_keys ORDER BY tenant")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| text(r, 0)).collect()
    }

    /// Per domain key version (of one tenant or all): subject keys wrapped under it, records with
    /// a cell sealed by such a subject key, catalog documents wrapped by such a subject key.
    pub async fn key_usage(&self, layout: &Layout, tenant: Option<&str>) -> Result<Vec<KeyUsageRow>> {
        use std::collections::BTreeMap;
        let mut out: BTreeMap<(String, String, i64), KeyUsageRow> = BTreeMap::new();
        let filter = |col: &str| match tenant {
            Some(_) => format!(" WHERE {col} = ?"),
            None => String::new(),
        };
        let sql = format!(
            "SELECT tenant, domain, version, state FROM kluis_domain_keys{} ORDER BY tenant, domain, version",
            filter("tenant")
        );
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        for r in q.fetch_all(&self.pool).await? {
            let (t, d, v) = (text(&r, 0)?, text(&r, 1)?, r.col::<i64>(2)?);
            let state = text(&r, 3)?;
            out.insert(
                (t.clone(), d.clone(), v),
                KeyUsageRow { tenant: t, domain: d, version: v, state, ..KeyUsageRow::default() },
            );
        }
        // (statement, which count)
        let queries: [(String, u8); 3] = [
            // Records of the legacy layout not moved yet.
            (
                format!(
                    "SELECT x.tenant, x.domain, x.wrap_version, COUNT(*) FROM (SELECT DISTINCT s.tenant, s.domain, s.wrap_version, f.collection, f.record_id \
                         FROM kluis_fields f JOIN kluis_records r ON r.tenant = f.tenant AND r.collection = f.collection AND r.id = f.record_id \
                         JOIN kluis_subject_keys s ON s.tenant = f.tenant AND s.domain = f.domain AND s.subject = r.subject AND s.version = f.key_version{}) x \
                         GROUP BY x.tenant, x.domain, x.wrap_version",
                    filter("f.tenant")
                ),
                1,
            ),
            (
                format!(
                    "SELECT tenant, domain, wrap_version, COUNT(*) FROM kluis_subject_keys{} GROUP BY tenant, domain, wrap_version",
                    filter("tenant")
                ),
                0,
            ),
            (
                format!(
                    "SELECT s.tenant, s.domain, s.wrap_version, COUNT(*) FROM kluis_documents d JOIN kluis_subject_keys s ON s.tenant = d.tenant \
                         AND s.domain = d.domain AND s.subject = d.subject AND s.version = d.key_version{} GROUP BY s.tenant, s.domain, s.wrap_version",
                    filter("d.tenant")
                ),
                2,
            ),
        ];
        for (sql, which) in &queries {
            let sql = E::sql(sql).into_owned();
            let mut q = query::<E>(&sql);
            if let Some(t) = tenant {
                q = q.bind(t);
            }
            for r in q.fetch_all(&self.pool).await? {
                let (t, d, v) = (text(&r, 0)?, text(&r, 1)?, r.col::<i64>(2)?);
                let n = count_of(r.col::<i64>(3)?)?;
                let e = out.entry((t.clone(), d.clone(), v)).or_insert_with(|| KeyUsageRow {
                    tenant: t,
                    domain: d,
                    version: v,
                    state: "missing".into(),
                    ..KeyUsageRow::default()
                });
                match which {
                    0 => e.subject_keys = n,
                    1 => e.records += n,
                    _ => e.documents = n,
                }
            }
        }
        // Records: per table and domain, those with a cell sealed under a subject key
        // that the domain key version wraps.
        for t in layout.tables() {
            for d in t.domains() {
                let sql = format!(
                    "SELECT x.tenant, x.wrap_version, COUNT(*) FROM (SELECT DISTINCT r.tenant, r.id, s.wrap_version FROM {} r \
                         JOIN kluis_subject_keys s ON s.tenant = r.tenant AND s.domain = ? AND s.subject = r.subject AND {}{}) x \
                         GROUP BY x.tenant, x.wrap_version",
                    t.name,
                    versions_in(t, d),
                    filter("r.tenant")
                );
                let sql = E::sql(&sql).into_owned();
                let mut q = query::<E>(&sql).bind(d);
                if let Some(tn) = tenant {
                    q = q.bind(tn);
                }
                for r in q.fetch_all(&self.pool).await? {
                    let (tn, v) = (text(&r, 0)?, r.col::<i64>(1)?);
                    let n = count_of(r.col::<i64>(2)?)?;
                    let e = out.entry((tn.clone(), d.to_owned(), v)).or_insert_with(|| KeyUsageRow {
                        tenant: tn,
                        domain: d.to_owned(),
                        version: v,
                        state: "missing".into(),
                        ..KeyUsageRow::default()
                    });
                    e.records += n;
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// Subjects of (tenant, domain) with work for a re-encryption step (a subject key wrapped
    /// under another version than `active` that is the newest, or still seals a cell, or is used
    /// by no document), sorted, at most `limit`.
    pub async fn reencrypt_candidates(
        &self,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        active: i64,
        limit: u32,
    ) -> Result<Vec<String>> {
        // A stale key that is not the newest, seals no cell and is used by a document is
        // waiting for the documents' re-encryption: not a candidate (it would block others).
        let mut sealing = String::new();
        for t in layout.tables() {
            if t.cells_in(domain).next().is_some() {
                sealing.push_str(&format!(
                        " OR EXISTS (SELECT 1 FROM {} r WHERE r.tenant = s.tenant AND r.subject = s.subject AND {})",
                        t.name,
                        versions_in(t, domain)
                    ));
            }
        }
        let sql = format!(
            "SELECT DISTINCT s.subject FROM kluis_subject_keys s WHERE s.tenant = ? AND s.domain = ? AND s.wrap_version <> ? AND ( \
                 NOT EXISTS (SELECT 1 FROM kluis_subject_keys n WHERE n.tenant = s.tenant AND n.domain = s.domain AND n.subject = s.subject AND n.version > s.version) \
                 {sealing} \
                 OR NOT EXISTS (SELECT 1 FROM kluis_documents d WHERE d.tenant = s.tenant AND d.domain = s.domain AND d.subject = s.subject AND d.key_version = s.version)) \
                 ORDER BY s.subject LIMIT ?"
        );
        let keys = query::<E>(&E::sql(&sql))
            .bind(tenant)
            .bind(domain)
            .bind(active)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut out = std::collections::BTreeSet::new();
        for r in &keys {
            out.insert(text(r, 0)?);
        }
        out.extend(self.stale_index_subjects(layout, tenant, domain, active, Some(limit)).await?);
        Ok(out.into_iter().take(limit as usize).collect())
    }

    /// How many subjects of (tenant, domain) still have a subject key wrapped under another
    /// version than `active`.
    pub async fn count_stale_subjects(
        &self,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        active: i64,
    ) -> Result<u64> {
        let rows = query::<E>(&E::sql(
                "SELECT DISTINCT subject FROM kluis_subject_keys WHERE tenant = ? AND domain = ? AND wrap_version <> ?",
            ))
            .bind(tenant)
            .bind(domain)
            .bind(active)
            .fetch_all(&self.pool)
            .await?;
        let mut subjects = std::collections::BTreeSet::new();
        for r in &rows {
            subjects.insert(text(r, 0)?);
        }
        subjects.extend(self.stale_index_subjects(layout, tenant, domain, active, None).await?);
        Ok(subjects.len() as u64)
    }

    /// Every record of a subject that has a cell of `domain`, whole (all its cells).
    pub async fn subject_cells(
        &self,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        subject: &str,
    ) -> Result<Vec<StoredRecord>> {
        let mut out = Vec::new();
        for t in layout.tables() {
            let cols: Vec<&str> = t.cells_in(domain).map(|c| c.sealed.as_str()).collect();
            if cols.is_empty() {
                continue;
            }
            let any = cols.iter().map(|c| format!("{c} IS NOT NULL")).collect::<Vec<_>>().join(" OR ");
            let sql = format!(
                "SELECT {} FROM {} WHERE tenant = ? AND subject = ? AND ({any}) ORDER BY id",
                t.select_list(""),
                t.name
            );
            let rows = query::<E>(&E::sql(&sql)).bind(tenant).bind(subject).fetch_all(&self.pool).await?;
            for r in &rows {
                out.push(Self::stored_from(t, r)?);
            }
        }
        Ok(out)
    }

    /// Applies one subject's re-encryption in one transaction (see [`ReencryptPlan`]).
    pub async fn reencrypt_subject(&self, plan: ReencryptPlan) -> Result<ReencryptOutcome> {
        match self.reencrypt_subject_tx(&plan).await {
            Ok(dropped) => Ok(ReencryptOutcome { applied: true, dropped }),
            Err(e) if is_concurrency_error(&e) => {
                Ok(ReencryptOutcome { applied: false, dropped: Vec::new() })
            }
            Err(e) => Err(e),
        }
    }

    /// Rotation: applies `updates` (the old active version turned decrypt-only, every live row
    /// retagged) and inserts `new` (active), in one transaction; [`StoreError::KeyChanged`] if any
    /// updated row is no longer as read or `new`'s version exists.
    pub async fn rotate_domain_keys(
        &self,
        updates: Vec<KeyRowUpdate>,
        new: DomainKeyRow,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let log = Self::start_log(&mut tx, audit).await?;
        Self::update_key_rows(&mut tx, &updates).await?;
        let res = query::<E>(&E::sql(
                "INSERT INTO kluis_domain_keys (tenant, domain, version, state, wrapped, tag) VALUES (?, ?, ?, ?, ?, ?)",
            ))
            .bind(&new.tenant)
            .bind(&new.domain)
            .bind(new.version)
            .bind(&new.state)
            .bind(&new.wrapped)
            .bind(&new.tag)
            .execute(&mut *tx)
            .await;
        match res {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => {
                return Err(StoreError::KeyChanged {
                    what: format!(
                        "domain key {}/{} v{} was created concurrently",
                        new.tenant, new.domain, new.version
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
        Self::finish_log(&mut tx, log).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces domain key rows (state, wrapped key, tag), each only if it is still as read, in
    /// one transaction ([`StoreError::KeyChanged`] and nothing written otherwise).
    pub async fn replace_domain_key_rows(&self, updates: Vec<KeyRowUpdate>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        Self::update_key_rows(&mut tx, &updates).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Destroys a decrypt-only version in one transaction, refusing with
    /// [`StoreError::KeyInUse`] while anything depends on it. `retag` holds the destroyed row
    /// (state `destroyed`, no wrapped key, no tag) and every other live row retagged over the new
    /// set, each written only if it is still as read.
    pub async fn destroy_domain_version(
        &self,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        version: i64,
        retag: Vec<KeyRowUpdate>,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let log = Self::start_log(&mut tx, audit).await?;
        let sql = format!(
            "SELECT state FROM kluis_domain_keys WHERE tenant = ? AND domain = ? AND version = ?{}",
            E::UPDATE_LOCK
        );
        let row = query::<E>(&E::sql(&sql))
            .bind(tenant)
            .bind(domain)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        let v32 = u32::try_from(version)
            .map_err(|_| StoreError::Invalid(format!("domain key version {version} out of range")))?;
        let state = match &row {
            Some(r) => text(r, 0)?,
            None => {
                return Err(StoreError::Core(kluis_core::Error::UnknownKey {
                    key: format!("{tenant}/{domain} v{version}"),
                }));
            }
        };
        match kluis_core::KeyState::parse(&state) {
            Ok(kluis_core::KeyState::DecryptOnly) => {}
            Ok(kluis_core::KeyState::Active) => {
                return Err(StoreError::ActiveKey {
                    tenant: tenant.into(),
                    domain: domain.into(),
                    version: v32,
                });
            }
            Ok(kluis_core::KeyState::Destroyed) => return Ok(()),
            _ => {
                return Err(StoreError::KeyIntegrity {
                    what: format!("domain key {tenant}/{domain} v{version}"),
                });
            }
        }
        let (subject_keys, records, documents, indexes) =
            Self::version_usage(&mut tx, layout, tenant, domain, version).await?;
        if subject_keys + records + documents + indexes > 0 {
            return Err(StoreError::KeyInUse {
                tenant: tenant.into(),
                domain: domain.into(),
                version: v32,
                subject_keys,
                records: records.max(indexes.min(1)),
                documents,
            });
        }
        // `retag` holds the destroyed row (state, no wrap, no tag) and every other live row
        // with its tag over the new set, each written only if it is still as read.
        if !retag
            .iter()
            .any(|u| u.new.version == version && u.new.state == kluis_core::KeyState::Destroyed.as_str())
        {
            return Err(StoreError::Invalid(format!(
                "destroying {tenant}/{domain} v{version}: the update does not destroy it"
            )));
        }
        Self::update_key_rows(&mut tx, &retag).await?;
        Self::finish_log(&mut tx, log).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the wrapped bytes of domain key rows, each only if it still holds the given old
    /// bytes, all in one transaction ([`StoreError::KeyChanged`] and nothing written otherwise).
    pub async fn rewrap_domain_key_rows(
        &self,
        rows: Vec<(DomainKeyRow, Vec<u8>)>,
        audit: Option<crate::audit::AuditAppend>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let log = Self::start_log(&mut tx, audit).await?;
        for (r, old) in rows {
            let done = query::<E>(&E::sql(
                    "UPDATE kluis_domain_keys SET wrapped = ? WHERE tenant = ? AND domain = ? AND version = ? AND wrapped = ?",
                ))
                .bind(&r.wrapped)
                .bind(&r.tenant)
                .bind(&r.domain)
                .bind(r.version)
                .bind(old)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                // Dropping `tx` rolls back every row written so far.
                return Err(StoreError::KeyChanged {
                    what: format!("domain key {}/{} v{}", r.tenant, r.domain, r.version),
                });
            }
        }
        Self::finish_log(&mut tx, log).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl<E: Engine> SqlBackend<E> {
    /// Writes each update only if its row still holds what was read (state, wrapped key
    /// and tag): a concurrent change makes the whole transaction fail with
    /// [`StoreError::KeyChanged`].
    async fn update_key_rows(
        conn: &mut <E::Db as sqlx::Database>::Connection,
        updates: &[KeyRowUpdate],
    ) -> Result<()> {
        let sql = format!(
            "UPDATE kluis_domain_keys SET state = ?, wrapped = ?, tag = ? \
                 WHERE tenant = ? AND domain = ? AND version = ? AND state = ? AND {} AND {}",
            E::null_safe_eq("wrapped"),
            E::null_safe_eq("tag"),
        );
        for u in updates {
            if (&u.new.tenant, &u.new.domain, u.new.version) != (&u.old.tenant, &u.old.domain, u.old.version)
            {
                return Err(StoreError::Invalid("a key row update names two rows".into()));
            }
            let done = query::<E>(&E::sql(&sql))
                .bind(&u.new.state)
                .bind(&u.new.wrapped)
                .bind(&u.new.tag)
                .bind(&u.old.tenant)
                .bind(&u.old.domain)
                .bind(u.old.version)
                .bind(&u.old.state)
                .bind(&u.old.wrapped)
                .bind(&u.old.tag)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() != 1 {
                return Err(StoreError::KeyChanged {
                    what: format!(
                        "domain key {}/{} v{} changed concurrently",
                        u.old.tenant, u.old.domain, u.old.version
                    ),
                });
            }
        }
        Ok(())
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, E::Db>> {
        // SQLite: take the write lock at BEGIN so a read-then-write transaction cannot
        // fail on a snapshot another writer moved on from.
        Ok(match E::KIND {
            EngineKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            _ => self.pool.begin().await?,
        })
    }

    async fn require_live_domain_key(
        conn: &mut <E::Db as sqlx::Database>::Connection,
        tenant: &str,
        domain: &str,
        version: i64,
    ) -> Result<()> {
        let sql = format!(
            "SELECT state FROM kluis_domain_keys WHERE tenant = ? AND domain = ? AND version = ?{}",
            E::SHARE_LOCK
        );
        let row = query::<E>(&E::sql(&sql))
            .bind(tenant)
            .bind(domain)
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
        let live = match &row {
            Some(r) => matches!(
                kluis_core::KeyState::parse(&text(r, 0)?),
                Ok(kluis_core::KeyState::Active | kluis_core::KeyState::DecryptOnly)
            ),
            None => false,
        };
        if !live {
            return Err(StoreError::KeyChanged { what: format!("domain key {tenant}/{domain} v{version}") });
        }
        Ok(())
    }

    async fn insert_subject_key_tx(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        row: &SubjectKeyRow,
    ) -> Result<bool> {
        let res = query::<E>(&E::sql(
                "INSERT INTO kluis_subject_keys (tenant, domain, subject, version, wrapped, created_at, wrap_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(&row.tenant)
            .bind(&row.domain)
            .bind(&row.subject)
            .bind(row.version)
            .bind(&row.wrapped)
            .bind(row.created_at)
            .bind(row.wrap_version)
            .execute(&mut **tx)
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
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
            };
        }
        count_of(q.fetch_one(&mut *conn).await?)
    }

    /// Usage of one domain key version, inside a transaction (locking reads on MariaDB).
    async fn version_usage(
        tx: &mut <E::Db as sqlx::Database>::Connection,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        version: i64,
    ) -> Result<(u64, u64, u64, u64)> {
        let binds = [Bind::S(tenant), Bind::S(domain), Bind::I(version)];
        let keys = Self::count(
                tx,
                &format!(
                    "SELECT COUNT(*) FROM kluis_subject_keys WHERE tenant = ? AND domain = ? AND wrap_version = ?{}",
                    E::COUNT_LOCK
                ),
                &binds,
            )
            .await?;
        let mut indexes = 0u64;
        // Records of the legacy layout not moved yet count too.
        let mut records = Self::count(
                tx,
                "SELECT COUNT(*) FROM (SELECT DISTINCT f.collection, f.record_id FROM kluis_fields f \
                 JOIN kluis_records r ON r.tenant = f.tenant AND r.collection = f.collection AND r.id = f.record_id \
                 JOIN kluis_subject_keys s ON s.tenant = f.tenant AND s.domain = f.domain AND s.subject = r.subject AND s.version = f.key_version \
                 WHERE f.tenant = ? AND f.domain = ? AND s.wrap_version = ?) x",
                &binds,
            )
            .await?;
        for t in layout.tables() {
            for c in t.cells_in(domain) {
                let Some((i, j)) = &c.index else { continue };
                let sql = format!(
                    "SELECT COUNT(*) FROM {} WHERE tenant = ? AND {i} IS NOT NULL AND {j} = ?{}",
                    t.name,
                    E::COUNT_LOCK
                );
                indexes += Self::count(tx, &sql, &[Bind::S(tenant), Bind::I(version)]).await?;
            }
            if t.cells_in(domain).next().is_some() {
                let sql = format!(
                    "SELECT COUNT(*) FROM (SELECT DISTINCT r.id FROM {} r JOIN kluis_subject_keys s ON s.tenant = r.tenant \
                         AND s.domain = ? AND s.subject = r.subject AND {} WHERE r.tenant = ? AND s.wrap_version = ?) x",
                    t.name,
                    versions_in(t, domain)
                );
                records +=
                    Self::count(tx, &sql, &[Bind::S(domain), Bind::S(tenant), Bind::I(version)]).await?;
            }
        }
        let documents = Self::count(
            tx,
            "SELECT COUNT(*) FROM kluis_documents d JOIN kluis_subject_keys s ON s.tenant = d.tenant \
                 AND s.domain = d.domain AND s.subject = d.subject AND s.version = d.key_version \
                 WHERE d.tenant = ? AND d.domain = ? AND s.wrap_version = ?",
            &binds,
        )
        .await?;
        Ok((keys, records, documents, indexes))
    }

    async fn reencrypt_subject_tx(&self, plan: &ReencryptPlan) -> Result<Vec<i64>> {
        use sqlx::Acquire;
        let mut tx = self.begin_write().await?;
        Self::lock_head(&mut tx).await?;
        let mut rewritten = Vec::with_capacity(plan.records.len());
        if let Some(k) = &plan.new_key {
            Self::require_live_domain_key(&mut tx, &k.tenant, &k.domain, k.wrap_version).await?;
            if !Self::insert_subject_key_tx(&mut tx, k).await? {
                return Err(StoreError::KeyChanged {
                    what: format!(
                        "subject key {}/{}/{} v{} was created concurrently",
                        k.tenant, k.domain, k.subject, k.version
                    ),
                });
            }
        }
        for r in &plan.records {
            let t = &r.table;
            let sql = format!("SELECT version FROM {} WHERE tenant = ? AND id = ?{}", t.name, E::UPDATE_LOCK);
            let found: Option<i64> = query_scalar::<E, i64>(&E::sql(&sql))
                .bind(&plan.tenant)
                .bind(&r.id)
                .fetch_optional(&mut *tx)
                .await?;
            if found != Some(r.version) {
                // Changed or deleted since the plan read it: the step is tried again.
                return Err(StoreError::KeyChanged {
                    what: format!("record {}/{} changed", t.collection, r.id),
                });
            }
            check_fields(t, &r.cells, &r.indexes)?;
            let mut sql = format!("UPDATE {} SET row_tag = ?", t.name);
            let mut args = vec![Arg::B(Some(r.tag.as_slice()))];
            for c in &r.cells {
                let Some(cols) = t.cell(&c.field) else { continue };
                sql.push_str(&format!(", {} = ?, {} = ?", cols.sealed, cols.version));
                args.push(Arg::B(Some(c.sealed.as_slice())));
                args.push(Arg::I(Some(c.key_version)));
            }
            for i in &r.indexes {
                let (ic, jc) = index_columns(t, &i.field)?;
                sql.push_str(&format!(", {ic} = ?, {jc} = ?"));
                args.push(Arg::B(Some(i.idx.as_slice())));
                args.push(Arg::I(Some(i.key_version)));
            }
            sql.push_str(" WHERE tenant = ? AND id = ? AND version = ? AND row_tag = ?");
            args.push(Arg::S(&plan.tenant));
            args.push(Arg::S(&r.id));
            args.push(Arg::I(Some(r.version)));
            args.push(Arg::B(Some(r.expected_tag.as_slice())));
            let sql = E::sql(&sql).into_owned();
            let done = query::<E>(&sql).bind_all(args.iter().map(Arg::borrowed)).execute(&mut *tx).await?;
            if done.rows_affected() != 1 {
                return Err(StoreError::KeyChanged {
                    what: format!("record {}/{} changed", t.collection, r.id),
                });
            }
            rewritten.push(RowLogEntry::written(&plan.tenant, &t.collection, &r.id, &r.tag));
        }
        Self::log_rows(&mut tx, &rewritten).await?;
        let mut dropped = Vec::new();
        for v in &plan.drop_versions {
            // Delete first (this waits for writers holding a share lock on the key row),
            // then look for users; keep the key (roll back to the savepoint) if any.
            let mut sp = (&mut tx).begin().await?;
            query::<E>(&E::sql(
                    "DELETE FROM kluis_subject_keys WHERE tenant = ? AND domain = ? AND subject = ? AND version = ?",
                ))
                .bind(&plan.tenant)
                .bind(&plan.domain)
                .bind(&plan.subject)
                .bind(*v)
                .execute(&mut *sp)
                .await?;
            let mut cells = 0u64;
            for t in &plan.tables {
                let cols: Vec<&str> = t.cells_in(&plan.domain).map(|c| c.version.as_str()).collect();
                if cols.is_empty() {
                    continue;
                }
                let any = cols.iter().map(|c| format!("{c} = ?")).collect::<Vec<_>>().join(" OR ");
                let sql = format!(
                    "SELECT COUNT(*) FROM {} WHERE tenant = ? AND subject = ? AND ({any}){}",
                    t.name,
                    E::COUNT_LOCK
                );
                let mut binds = vec![Bind::S(&plan.tenant), Bind::S(&plan.subject)];
                binds.extend(cols.iter().map(|_| Bind::I(*v)));
                cells += Self::count(&mut sp, &sql, &binds).await?;
            }
            let binds = [Bind::S(&plan.tenant), Bind::S(&plan.domain), Bind::S(&plan.subject), Bind::I(*v)];
            let docs = Self::count(
                    &mut sp,
                    &format!(
                        "SELECT COUNT(*) FROM kluis_documents WHERE tenant = ? AND domain = ? AND subject = ? AND key_version = ?{}",
                        E::COUNT_LOCK
                    ),
                    &binds,
                )
                .await?;
            if cells + docs == 0 {
                sp.commit().await?;
                dropped.push(*v);
            } else {
                sp.rollback().await?;
            }
        }
        tx.commit().await?;
        Ok(dropped)
    }

    /// Subjects with a blind index of a `domain` field under another version than `active`.
    async fn stale_index_subjects(
        &self,
        layout: &Layout,
        tenant: &str,
        domain: &str,
        active: i64,
        limit: Option<u32>,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for t in layout.tables() {
            for c in t.cells_in(domain) {
                let Some((i, j)) = &c.index else { continue };
                let mut sql = format!(
                    "SELECT DISTINCT subject FROM {} WHERE tenant = ? AND {i} IS NOT NULL AND {j} <> ? ORDER BY subject",
                    t.name
                );
                if limit.is_some() {
                    sql.push_str(" LIMIT ?");
                }
                let sql = E::sql(&sql).into_owned();
                let mut q = query::<E>(&sql).bind(tenant).bind(active);
                if let Some(l) = limit {
                    q = q.bind(i64::from(l));
                }
                for r in q.fetch_all(&self.pool).await? {
                    out.push(text(&r, 0)?);
                }
            }
        }
        Ok(out)
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
            // A row whose header does not parse was altered: it stays 0 and fails to open.
            let Ok(h) = kluis_core::SealedHeader::parse(&wrapped) else { continue };
            query::<E>(&E::sql(
                    "UPDATE kluis_subject_keys SET wrap_version = ? WHERE tenant = ? AND domain = ? AND subject = ? AND version = ?",
                ))
                .bind(i64::from(h.key.version))
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
