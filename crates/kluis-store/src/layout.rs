//! The record layout: one table per collection, one row per record.
//!
//! Each collection of the schema gets a table (docs/STORE.md, "Tables"):
//!
//! | column | type | holds |
//! |---|---|---|
//! | `tenant`, `id` | text | primary key |
//! | `subject` | text | the data subject (indexed with the tenant) |
//! | `version` | integer | optimistic concurrency, from 1 |
//! | `created_at`, `updated_at` | integer | unix seconds |
//! | `retain_until` | integer, NULL | unix seconds |
//! | `row_tag` | binary | the row tag (below) |
//! | `f_<field>` | binary, NULL | the sealed value of a field |
//! | `k_<field>` | integer, NULL | the subject key version that sealed it |
//! | `i_<field>` | binary, NULL | the blind index of an indexed field (indexed with the tenant) |
//! | `j_<field>` | integer, NULL | the domain key version of that index |
//!
//! A name whose column or table identifier would be longer than 63 bytes (PostgreSQL's limit) is
//! shortened to as many of its first bytes as fit, `_` and 16 hex digits of the SHA-256 of the whole name, so
//! every identifier is unique and fits every engine. Names are `[a-z][a-z0-9_]*`
//! ([`crate::schema`]), so identifiers never need quoting.
//!
//! The **row tag** is `0x01 || u32 BE key version || HMAC-SHA256` under a key derived from the
//! tenant's `row_tags` domain key ([`ROW_TAG_DOMAIN`]); docs/FORMAT.md §10.1 gives the input byte
//! by byte (`tag_input` in the store's cells module). It covers every column except the blind index pair: a blind index only
//! narrows a search, whose hits are opened and compared before they are returned.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::engine::Engine;
use crate::error::{Result, StoreError};
use crate::schema::{Collection, FieldType, Schema};

/// The domain whose key the row tags' MAC key comes from: one per tenant, used by no field, so a
/// shred (which rotates and destroys the keys of the subject's domains) never touches it.
pub const ROW_TAG_DOMAIN: &str = "row_tags";

/// The first byte of a row tag of format 1.
pub(crate) const ROW_TAG_V1: u8 = 0x01;
/// Length of a format-1 row tag.
pub(crate) const ROW_TAG_LEN: usize = 1 + 4 + 32;
/// The label that starts a row tag's input.
pub(crate) const ROW_TAG_LABEL: &[u8] = b"kluis-row-v1";

const MAX_IDENT: usize = 63;

/// A SQL identifier for `prefix` + `name` (module documentation).
pub(crate) fn ident(prefix: &str, name: &str) -> String {
    if prefix.len() + name.len() <= MAX_IDENT {
        return format!("{prefix}{name}");
    }
    let digest = Sha256::digest(name.as_bytes());
    let mut hex = String::with_capacity(16);
    for b in digest.iter().take(8) {
        hex.push_str(&format!("{b:02x}"));
    }
    let keep = MAX_IDENT.saturating_sub(prefix.len() + 17);
    let head = name.get(..keep).unwrap_or(name);
    format!("{prefix}{head}_{hex}")
}

/// One field's columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellColumns {
    /// Field name.
    pub field: String,
    /// Domain (from the schema): the domain whose subject key seals the value.
    pub domain: String,
    /// Sealed value column (`f_<field>`), or for a clear field its typed column (`c_<field>`).
    pub sealed: String,
    /// Subject key version column (`k_<field>`; empty for a clear field, which has none).
    pub version: String,
    /// The type of a clear field (`None`: sealed).
    pub clear: Option<FieldType>,
    /// Blind index columns (index, domain key version), if the field is indexed.
    pub index: Option<(String, String)>,
}

/// One collection's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Collection name.
    pub collection: String,
    /// SQL table name.
    pub name: String,
    /// Field columns, by field name.
    pub cells: Vec<CellColumns>,
}

impl Table {
    /// The table of a collection.
    pub fn of(coll: &Collection) -> Self {
        let cells = coll
            .fields()
            .map(|f| CellColumns {
                field: f.name.clone(),
                domain: f.domain.as_str().to_owned(),
                sealed: if f.clear { ident("c_", &f.name) } else { ident("f_", &f.name) },
                version: if f.clear { String::new() } else { ident("k_", &f.name) },
                clear: f.clear.then_some(f.ty),
                index: f.blind_index.then(|| (ident("i_", &f.name), ident("j_", &f.name))),
            })
            .collect();
        Self { collection: coll.name.clone(), name: ident("kluis_r_", &coll.name), cells }
    }

    /// The columns of `field`.
    pub fn cell(&self, field: &str) -> Option<&CellColumns> {
        self.cells.iter().find(|c| c.field == field)
    }

    /// Is `field` a sealed (not clear) field of the table?
    pub fn is_sealed(&self, field: &str) -> bool {
        self.cell(field).is_some_and(|c| c.clear.is_none())
    }

    /// The columns of the sealed fields of `domain` (clear fields have no key).
    pub fn cells_in<'a>(&'a self, domain: &'a str) -> impl Iterator<Item = &'a CellColumns> + 'a {
        self.cells.iter().filter(move |c| c.domain == domain && c.clear.is_none())
    }

    /// The domains of the table's fields, without duplicates.
    pub fn domains(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.cells.iter().map(|c| c.domain.as_str()).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `SELECT` list of a whole row: the bookkeeping columns (as [`RecordRow`], collection left
    /// out), `row_tag`, then in `cells` order each sealed field's value and version columns, or a
    /// clear field's one column.
    pub(crate) fn select_list(&self, alias: &str) -> String {
        let mut s = format!(
            "{alias}tenant, {alias}id, {alias}subject, {alias}version, {alias}created_at, {alias}updated_at, \
             {alias}retain_until, {alias}row_tag"
        );
        for c in &self.cells {
            match c.clear {
                Some(_) => s.push_str(&format!(", {alias}{}", c.sealed)),
                None => s.push_str(&format!(", {alias}{}, {alias}{}", c.sealed, c.version)),
            }
        }
        s
    }

    /// The statement that creates the table on `engine`, if absent.
    pub(crate) fn create_sql<E: Engine>(&self) -> String {
        let crate::engine::Ddl { int, blob, id: key, index: idx_blob } = E::DDL;
        let mut cols = format!(
            "tenant {key} NOT NULL, id {key} NOT NULL, subject {key} NOT NULL, version {int} NOT NULL, \
             created_at {int} NOT NULL, updated_at {int} NOT NULL, retain_until {int}, row_tag {blob} NOT NULL"
        );
        for c in &self.cells {
            match c.clear {
                Some(ty) => cols.push_str(&format!(", {} {}", c.sealed, E::clear_type(ty))),
                None => cols.push_str(&format!(", {} {blob}, {} {int}", c.sealed, c.version)),
            }
            if let Some((i, j)) = &c.index {
                cols.push_str(&format!(", {i} {idx_blob}, {j} {int}"));
            }
        }
        format!("CREATE TABLE IF NOT EXISTS {} ({cols}, PRIMARY KEY (tenant, id))", self.name)
    }

    /// The statements that create the table's indexes, if absent (after its columns exist).
    pub(crate) fn index_sql(&self) -> Vec<String> {
        let t = &self.name;
        let mut out = vec![
            create_index(&ident("kluis_s_", &self.collection), t, "tenant, subject"),
            // The service looks a record id up in every tenant (`Store::record_owners`).
            create_index(&ident("kluis_i_", &self.collection), t, "id"),
        ];
        for c in &self.cells {
            if let Some((i, _)) = &c.index {
                let name = ident("kluis_x_", &format!("{}_{}", self.collection, c.field));
                out.push(create_index(&name, t, &format!("tenant, {i}")));
            }
        }
        out
    }

    /// `ALTER TABLE` statements that add the columns of `self` missing from `existing` (column
    /// names as the database reports them).
    pub(crate) fn add_columns_sql<E: Engine>(&self, existing: &[String]) -> Vec<String> {
        let crate::engine::Ddl { int, blob, index: idx_blob, .. } = E::DDL;
        let has = |c: &str| existing.iter().any(|e| e.eq_ignore_ascii_case(c));
        let mut out = Vec::new();
        for c in &self.cells {
            if let Some(ty) = c.clear {
                if !has(&c.sealed) {
                    out.push(format!(
                        "ALTER TABLE {} ADD COLUMN {} {}",
                        self.name,
                        c.sealed,
                        E::clear_type(ty)
                    ));
                }
                continue;
            }
            for (col, ty) in [(&c.sealed, blob), (&c.version, int)] {
                if !has(col) {
                    out.push(format!("ALTER TABLE {} ADD COLUMN {col} {ty}", self.name));
                }
            }
            if let Some((i, j)) = &c.index {
                if !has(i) {
                    out.push(format!("ALTER TABLE {} ADD COLUMN {i} {idx_blob}", self.name));
                }
                if !has(j) {
                    out.push(format!("ALTER TABLE {} ADD COLUMN {j} {int}", self.name));
                }
            }
        }
        out
    }
}

fn create_index(name: &str, table: &str, cols: &str) -> String {
    // MariaDB, PostgreSQL and SQLite all know IF NOT EXISTS here (MySQL 8 does not).
    format!("CREATE INDEX IF NOT EXISTS {name} ON {table} ({cols})")
}

/// Is `name` a table name [`Table::of`] makes (`kluis_r_` and `[a-z0-9_]`, at most 63 bytes)?
pub(crate) fn is_table_name(name: &str) -> bool {
    name.len() <= MAX_IDENT
        && name.starts_with("kluis_r_")
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The tables of a schema.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    tables: Vec<Arc<Table>>,
}

impl Layout {
    /// The layout of `schema`.
    pub fn of(schema: &Schema) -> Self {
        Self { tables: schema.collections().map(|c| Arc::new(Table::of(c))).collect() }
    }

    /// The table of `collection`.
    pub fn table(&self, collection: &str) -> Result<&Arc<Table>> {
        self.tables
            .iter()
            .find(|t| t.collection == collection)
            .ok_or_else(|| StoreError::UnknownCollection(collection.to_owned()))
    }

    /// Every table.
    pub fn tables(&self) -> &[Arc<Table>] {
        &self.tables
    }
}

/// The key version a row tag names, if it is a well-formed format-1 tag (version 0 is none).
pub(crate) fn tag_version(tag: &[u8]) -> Option<kluis_core::KeyVersion> {
    if tag.len() != ROW_TAG_LEN || tag.first() != Some(&ROW_TAG_V1) {
        return None;
    }
    let b: [u8; 4] = tag.get(1..5)?.try_into().ok()?;
    kluis_core::KeyVersion::new(u32::from_be_bytes(b)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_uniquely() {
        let a = "a".repeat(64);
        let b = format!("{}b", "a".repeat(63));
        let (ia, ib) = (ident("kluis_r_", &a), ident("kluis_r_", &b));
        assert!(ia.len() <= MAX_IDENT && ib.len() <= MAX_IDENT);
        assert_ne!(ia, ib);
        assert_eq!(ident("f_", "diagnosis"), "f_diagnosis");
    }

    #[test]
    fn tag_versions_parse_only_well_formed_tags() {
        let mut t = vec![ROW_TAG_V1, 0, 0, 0, 7];
        t.extend_from_slice(&[0u8; 32]);
        assert_eq!(tag_version(&t), Some(kluis_core::KeyVersion::new(7).unwrap()));
        assert_eq!(tag_version(&t[..36]), None);
        t[0] = 2;
        assert_eq!(tag_version(&t), None);
    }
}
