//! Protected columns in the application's own tables (docs/APP_TABLES.md).
//!
//! A schema can describe a table the application already has, next to Kluis's own collections:
//!
//! ```toml
//! [tables.absence_notes]
//! table         = "absence_notes"   # the SQL table (default: the mapping's name)
//! primary_key   = ["id"]            # one or more columns
//! tenant_column = "tenant_id"       # or: tenant = "acme", for a table of one tenant
//! subject_column = "employee_id"
//! row_tag_column = "kluis_row_tag"  # the default
//!
//! [tables.absence_notes.columns]
//! diagnosis = { type = "text", domain = "medical", max_bytes = 2000 }
//! bsn       = { type = "text", domain = "general", blind_index_column = "bsn_idx" }
//! ```
//!
//! Each protected column holds one sealed value (docs/FORMAT.md §3, the same cells as Kluis's
//! own tables: sealed under the subject's key of the column's domain, with tenant, domain, the
//! mapping's name, the column and the row's key as associated data), or NULL. The row tag column
//! holds a MAC over the row's key, subject and every protected cell (§10.2). A blind index column
//! holds the domain key version and the index of the column's value (§10.2). The application's
//! other columns are its own: Kluis neither reads nor covers them. The subject key version of
//! each cell is in its header (bytes 4..8), so the mapping needs no version column.
//!
//! [`AppTable::ddl`] prints the columns to add; [`crate::Store::seal_insert`],
//! [`crate::Store::seal_update`], [`crate::Store::open_app_rows`] and
//! [`crate::Store::app_blind_index`] are the calls an application makes around its own SQL.

use std::collections::BTreeMap;

use crate::error::{Result, StoreError};
pub use crate::schema::{AppTable, DEFAULT_ROW_TAG_COLUMN, ProtectedColumn, TenantSource};

/// The label that starts an application row tag's input (docs/FORMAT.md §10.2).
pub(crate) const APP_ROW_TAG_LABEL: &[u8] = b"kluis-app-row-v1";

impl AppTable {
    /// The statements that add Kluis's columns to the table, for the application's own
    /// migrations: every protected column (binary, NULL), the row tag column, each blind index
    /// column with its index (tenant column first, if any). For a new table, put the same
    /// columns in its `CREATE TABLE` instead.
    pub fn ddl(&self, dialect: Dialect) -> String {
        let (blob, index) = dialect.types();
        let add = |col: &str, ty: &str| match dialect {
            Dialect::MsSql => format!("ALTER TABLE {} ADD {col} {ty} NULL;\n", self.table),
            _ => format!("ALTER TABLE {} ADD COLUMN {col} {ty} NULL;\n", self.table),
        };
        let mut out = format!("-- kluis: protected columns of {} (mapping {})\n", self.table, self.name);
        for c in self.protected_columns() {
            out.push_str(&add(&c.name, blob));
        }
        out.push_str(&add(&self.row_tag_column, blob));
        let bare = self.table.rsplit('.').next().unwrap_or(&self.table);
        for c in self.protected_columns() {
            if let Some(i) = &c.blind_index_column {
                out.push_str(&add(i, index));
                let cols = match &self.tenant {
                    TenantSource::Column(t) => format!("{t}, {i}"),
                    TenantSource::Fixed(_) => i.clone(),
                };
                out.push_str(&format!(
                    "CREATE INDEX {} ON {} ({cols});\n",
                    crate::layout::ident("kluis_ix_", &format!("{bare}_{i}")),
                    self.table
                ));
            }
        }
        out
    }
}

/// The SQL dialects [`AppTable::ddl`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MariaDB and MySQL.
    MySql,
    /// SQL Server and Azure SQL (printed only: no Kluis test runs against SQL Server).
    MsSql,
}

impl Dialect {
    /// By name: `sqlite`, `postgres`, `mysql` (also `mariadb`), `mssql`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sqlite" => Self::Sqlite,
            "postgres" | "postgresql" => Self::Postgres,
            "mysql" | "mariadb" => Self::MySql,
            "mssql" | "sqlserver" => Self::MsSql,
            _ => return None,
        })
    }

    /// (sealed values and row tags, blind indexes).
    fn types(self) -> (&'static str, &'static str) {
        match self {
            Self::Sqlite => ("BLOB", "BLOB"),
            Self::Postgres => ("BYTEA", "BYTEA"),
            Self::MySql => ("LONGBLOB", "VARBINARY(64)"),
            Self::MsSql => ("VARBINARY(MAX)", "VARBINARY(64)"),
        }
    }
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    // Names and ids are at most 128 bytes, cells at most a few MiB: a u32 length is exact.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// The bytes an application row tag covers (docs/FORMAT.md §10.2): the label, then tenant,
/// mapping name, record id and subject (each a u32 BE length and its bytes), the number of
/// present cells (u32 BE), and per present cell in column-name order (bytewise): the column name
/// and the sealed bytes (each a u32 BE length and its bytes).
pub(crate) fn app_tag_input(
    tenant: &str,
    table: &str,
    record: &str,
    subject: &str,
    cells: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut sorted: Vec<&(&str, &[u8])> = cells.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let size: usize = sorted.iter().map(|(c, s)| c.len() + s.len() + 8).sum();
    let mut out = Vec::with_capacity(APP_ROW_TAG_LABEL.len() + 64 + table.len() + record.len() + size);
    out.extend_from_slice(APP_ROW_TAG_LABEL);
    put(&mut out, tenant.as_bytes());
    put(&mut out, table.as_bytes());
    put(&mut out, record.as_bytes());
    put(&mut out, subject.as_bytes());
    out.extend_from_slice(&u32::try_from(sorted.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (c, s) in sorted {
        put(&mut out, c.as_bytes());
        put(&mut out, s);
    }
    out
}

/// The sealed values of one row, for the application to bind into its own `INSERT` or `UPDATE`
/// ([`crate::Store::seal_insert`], [`crate::Store::seal_update`]).
///
/// [`SealedRow::columns`] lists every column to write, with its value (`None`: NULL): the
/// protected columns written (all of them for an insert; for an update, those set or removed),
/// their blind index columns, and the row tag column last. The application writes all of them
/// in the same statement; a row written with some of them left out fails its next full-row
/// check.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedRow {
    pub(crate) record: String,
    pub(crate) columns: Vec<(String, Option<Vec<u8>>)>,
    pub(crate) previous_tag: Option<Vec<u8>>,
}

impl std::fmt::Debug for SealedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Sealed bytes are not secret, but there is no reason to print them.
        f.debug_struct("SealedRow")
            .field("record", &self.record)
            .field("columns", &self.columns.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl SealedRow {
    /// The row's key as bound into its cells ([`AppTable::record_id`]).
    pub fn record_id(&self) -> &str {
        &self.record
    }

    /// Every column to write, in order, with its value (`None`: NULL).
    pub fn columns(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.columns.iter().map(|(c, v)| (c.as_str(), v.as_deref()))
    }

    /// The value of `column`; [`StoreError::Invalid`] if this write does not set it.
    pub fn get(&self, column: &str) -> Result<Option<&[u8]>> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v.as_deref())
            .ok_or_else(|| StoreError::Invalid(format!("column {column} is not written by this row")))
    }

    /// For an update: the row tag the row held when it was read. Put it in the `UPDATE`'s
    /// `WHERE` (`AND kluis_row_tag = ?`): zero rows changed means another writer changed the row
    /// in between, and nothing was lost.
    pub fn previous_row_tag(&self) -> Option<&[u8]> {
        self.previous_tag.as_deref()
    }
}

/// A row of a mapped table as the application read it: its key, its subject, the protected
/// columns it selected (any of them; `None` for NULL) and, if selected, the row tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppRow {
    /// The primary key values, in the mapping's order.
    pub key: Vec<String>,
    /// The subject column's value.
    pub subject: String,
    /// The protected columns read, with their values.
    pub cells: Vec<(String, Option<Vec<u8>>)>,
    /// The row tag column's value, if it was read.
    pub row_tag: Option<Vec<u8>>,
}

impl AppRow {
    /// A row with key `key` about `subject`, no column yet.
    pub fn new(key: &[&str], subject: &str) -> Self {
        Self {
            key: key.iter().map(|k| (*k).to_owned()).collect(),
            subject: subject.to_owned(),
            cells: Vec::new(),
            row_tag: None,
        }
    }

    /// With the value read from protected column `column`.
    pub fn cell(mut self, column: &str, value: Option<Vec<u8>>) -> Self {
        self.cells.push((column.to_owned(), value));
        self
    }

    /// With the row tag read.
    pub fn row_tag(mut self, tag: Option<Vec<u8>>) -> Self {
        self.row_tag = tag;
        self
    }

    pub(crate) fn key_refs(&self) -> Vec<&str> {
        self.key.iter().map(String::as_str).collect()
    }
}

/// The opened protected columns of one row ([`crate::Store::open_app_rows`]).
#[derive(Clone, PartialEq, Eq)]
pub struct OpenedRow {
    /// The row's key as bound into its cells.
    pub record: String,
    /// Each protected column read and not NULL: its value, or withheld (no key for its domain,
    /// nothing decrypted).
    pub values: BTreeMap<String, crate::FieldValue>,
    /// Was the whole row checked against its row tag (every protected column and the tag read)?
    pub row_checked: bool,
}

impl std::fmt::Debug for OpenedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedRow")
            .field("record", &self.record)
            .field("columns", &self.values.keys().collect::<Vec<_>>())
            .field("row_checked", &self.row_checked)
            .finish()
    }
}
