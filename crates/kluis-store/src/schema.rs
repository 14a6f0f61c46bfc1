//! Schemas: collections, their fields, each field's type, domain, blind index and size limit.
//!
//! Declared in code with [`Schema::builder`] or loaded from TOML with [`Schema::from_toml`]:
//!
//! ```toml
//! [collections.absence.fields]
//! start_date      = { type = "date", domain = "general" }
//! end_date        = { type = "date", domain = "general" }
//! work_capacity   = { type = "percentage", domain = "general" }
//! employee_number = { type = "text", domain = "general", blind_index = true, max_bytes = 32 }
//! diagnosis       = { type = "text", domain = "medical", max_bytes = 2000 }
//! hours_per_week  = { type = "integer", domain = "general", clear = true }
//! doctor_notes    = { type = "text", domain = "medical" }
//! ```
//!
//! A general field may name the kind of personal data it holds (`pseudonym = "name"`, `"bsn"`,
//! `"email"`, `"address"`, `"date"` or `"text"`): an anonymised copy for a test environment
//! (`kluis anonymise`) replaces its values with well-formed pseudonyms of that kind.

use std::collections::BTreeMap;

use kluis_core::{DomainName, TenantId};
use serde::Deserialize;

use crate::error::{Result, StoreError};

/// Default maximum size of a field value in bytes (64 KiB).
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;
/// Largest maximum a field may declare (1 MiB; larger data belongs in a document).
pub const LIMIT_MAX_BYTES: usize = 1 << 20;

/// The type of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldType {
    /// UTF-8 text.
    Text,
    /// A signed 64-bit integer.
    Integer,
    /// A decimal number written `-?digits[.digits]`.
    Decimal,
    /// A decimal number from 0 to 100.
    Percentage,
    /// A calendar date `YYYY-MM-DD`.
    Date,
    /// True or false.
    Bool,
    /// Raw bytes.
    Bytes,
}

impl FieldType {
    /// The name used in TOML and errors.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Integer => "integer",
            Self::Decimal => "decimal",
            Self::Percentage => "percentage",
            Self::Date => "date",
            Self::Bool => "bool",
            Self::Bytes => "bytes",
        }
    }

    /// Parses [`FieldType::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => Self::Text,
            "integer" => Self::Integer,
            "decimal" => Self::Decimal,
            "percentage" => Self::Percentage,
            "date" => Self::Date,
            "bool" => Self::Bool,
            "bytes" => Self::Bytes,
            _ => return None,
        })
    }
}

/// The kind of personal data a field holds, for an anonymised copy ([`FieldDef::pseudonym`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pseudonym {
    /// A person's name.
    Name,
    /// A Dutch citizen service number (BSN): nine digits that pass the eleven-test.
    Bsn,
    /// An e-mail address.
    Email,
    /// A postal address.
    Address,
    /// A date: shifted by one offset per subject, so durations stay true.
    Date,
    /// Free text.
    Text,
}

impl Pseudonym {
    /// The name used in TOML.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Bsn => "bsn",
            Self::Email => "email",
            Self::Address => "address",
            Self::Date => "date",
            Self::Text => "text",
        }
    }

    /// Parses [`Pseudonym::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "name" => Self::Name,
            "bsn" => Self::Bsn,
            "email" => Self::Email,
            "address" => Self::Address,
            "date" => Self::Date,
            "text" => Self::Text,
            _ => return None,
        })
    }

    /// The field type the kind needs.
    pub const fn field_type(self) -> FieldType {
        match self {
            Self::Date => FieldType::Date,
            _ => FieldType::Text,
        }
    }
}

/// One field of a collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDef {
    /// Name (`[a-z][a-z0-9_]*`, at most 64 bytes).
    pub name: String,
    /// Type.
    pub ty: FieldType,
    /// Domain whose keys seal it.
    pub domain: DomainName,
    /// Whether equality search through a blind index is possible.
    pub blind_index: bool,
    /// Maximum size of the value's encoding in bytes.
    pub max_bytes: usize,
    /// Stored in clear, in a typed column the application can filter, sort and report on
    /// (never a `medical` field; still covered by the row tag; outside crypto-shredding's reach
    /// in backups taken before a shred).
    pub clear: bool,
    /// The kind of personal data it holds, replaced by pseudonyms in an anonymised copy (never a
    /// `medical` field: the copy leaves those out altogether).
    pub pseudonym: Option<Pseudonym>,
}

/// A collection: a named set of fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collection {
    /// Name (`[a-z][a-z0-9_]*`, at most 64 bytes).
    pub name: String,
    fields: BTreeMap<String, FieldDef>,
}

impl Collection {
    /// A collection of already checked fields.
    pub(crate) fn from_parts(name: &str, fields: Vec<FieldDef>) -> Self {
        Self { name: name.to_owned(), fields: fields.into_iter().map(|f| (f.name.clone(), f)).collect() }
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.get(name)
    }

    /// All fields, by name.
    pub fn fields(&self) -> impl Iterator<Item = &FieldDef> {
        self.fields.values()
    }
}

/// A schema: collections by name, and the application's own tables it maps
/// ([`crate::app_table`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema {
    collections: BTreeMap<String, Collection>,
    tables: BTreeMap<String, AppTable>,
}

/// Checks a collection or field name: `[a-z][a-z0-9_]*`, 1 to 64 bytes. Names appear in SQL
/// values (never in SQL text) and in associated data.
pub(crate) fn check_name(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Schema(format!(
            "{what} name {s:?} must be 1 to 64 characters of a-z, 0-9 and _, starting with a letter"
        )))
    }
}

impl Schema {
    /// Starts an empty schema.
    pub fn builder() -> SchemaBuilder {
        SchemaBuilder { schema: Schema::default(), error: None }
    }

    /// The collection called `name`.
    pub fn collection(&self, name: &str) -> Result<&Collection> {
        self.collections.get(name).ok_or_else(|| StoreError::UnknownCollection(name.to_owned()))
    }

    /// All collections.
    pub fn collections(&self) -> impl Iterator<Item = &Collection> {
        self.collections.values()
    }

    /// The mapping of the application's table called `name`.
    pub fn app_table(&self, name: &str) -> Result<&AppTable> {
        self.tables.get(name).ok_or_else(|| StoreError::UnknownCollection(name.to_owned()))
    }

    /// Every mapped application table.
    pub fn app_tables(&self) -> impl Iterator<Item = &AppTable> {
        self.tables.values()
    }

    /// The schema as TOML that [`Schema::from_toml`] reads back to an equal schema.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for c in self.collections.values() {
            out.push_str(&format!("[collections.{}.fields]\n", c.name));
            for f in c.fields.values() {
                out.push_str(&format!(
                    "{} = {{ type = \"{}\", domain = \"{}\"",
                    f.name,
                    f.ty.as_str(),
                    f.domain
                ));
                if f.blind_index {
                    out.push_str(", blind_index = true");
                }
                if f.max_bytes != DEFAULT_MAX_BYTES {
                    out.push_str(&format!(", max_bytes = {}", f.max_bytes));
                }
                if f.clear {
                    out.push_str(", clear = true");
                }
                if let Some(p) = f.pseudonym {
                    out.push_str(&format!(", pseudonym = \"{}\"", p.as_str()));
                }
                out.push_str(" }\n");
            }
            out.push('\n');
        }
        for t in self.tables.values() {
            out.push_str(&format!("[tables.{}]\n", t.name));
            out.push_str(&format!("table = \"{}\"\n", t.table));
            let pk: Vec<String> = t.primary_key.iter().map(|k| format!("\"{k}\"")).collect();
            out.push_str(&format!("primary_key = [{}]\n", pk.join(", ")));
            match &t.tenant {
                TenantSource::Column(c) => out.push_str(&format!("tenant_column = \"{c}\"\n")),
                TenantSource::Fixed(x) => out.push_str(&format!("tenant = \"{x}\"\n")),
            }
            out.push_str(&format!("subject_column = \"{}\"\n", t.subject_column));
            if let Some(c) = &t.retain_until_column {
                out.push_str(&format!("retain_until_column = \"{c}\"\n"));
            }
            if t.external {
                out.push_str("external = true\n");
            }
            out.push_str(&format!("row_tag_column = \"{}\"\n\n", t.row_tag_column));
            out.push_str(&format!("[tables.{}.columns]\n", t.name));
            for c in t.protected_columns() {
                out.push_str(&format!(
                    "{} = {{ type = \"{}\", domain = \"{}\"",
                    c.name,
                    c.ty.as_str(),
                    c.domain
                ));
                if c.max_bytes != DEFAULT_MAX_BYTES {
                    out.push_str(&format!(", max_bytes = {}", c.max_bytes));
                }
                if let Some(i) = &c.blind_index_column {
                    out.push_str(&format!(", blind_index_column = \"{i}\""));
                }
                if let Some(p) = &c.plaintext_column {
                    out.push_str(&format!(", plaintext_column = \"{p}\""));
                }
                out.push_str(" }\n");
            }
            out.push('\n');
        }
        out
    }

    /// The schema without the fields of `domains` (a collection left without fields is left out).
    pub fn without_domains(&self, domains: &[DomainName]) -> Schema {
        let mut collections = BTreeMap::new();
        for c in self.collections.values() {
            let fields: BTreeMap<String, FieldDef> = c
                .fields
                .iter()
                .filter(|(_, f)| !domains.contains(&f.domain))
                .map(|(k, f)| (k.clone(), f.clone()))
                .collect();
            if !fields.is_empty() {
                collections.insert(c.name.clone(), Collection { name: c.name.clone(), fields });
            }
        }
        let tables = self
            .tables
            .values()
            .filter_map(|t| {
                let mut kept = t.without_columns();
                for c in t.protected_columns().filter(|c| !domains.contains(&c.domain)) {
                    kept = kept.column(c.clone());
                }
                let any = kept.protected_columns().next().is_some();
                any.then(|| (t.name.clone(), kept))
            })
            .collect();
        Schema { collections, tables }
    }

    /// Parses a schema from TOML (see the module docs). A syntax error or an unknown key names
    /// the line and column.
    pub fn from_toml(text: &str) -> Result<Self> {
        let raw: RawSchema = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            StoreError::SchemaToml { line, column, message: e.message().trim().to_owned() }
        })?;
        let mut b = Schema::builder();
        for (cname, rc) in raw.collections {
            let mut fields = Vec::new();
            for (fname, rf) in rc.fields {
                let ty = FieldType::parse(&rf.ty).ok_or_else(|| {
                    StoreError::Schema(format!(
                        "field {cname}.{fname}: unknown type {:?} (text, integer, decimal, percentage, date, bool, bytes)",
                        rf.ty
                    ))
                })?;
                let domain = DomainName::new(rf.domain.clone()).map_err(|e| {
                    StoreError::Schema(format!("field {cname}.{fname}: domain {:?}: {e}", rf.domain))
                })?;
                let pseudonym = match rf.pseudonym.as_deref() {
                    None => None,
                    Some(p) => Some(Pseudonym::parse(p).ok_or_else(|| {
                        StoreError::Schema(format!(
                            "field {cname}.{fname}: unknown pseudonym {p:?} (name, bsn, email, address, date, text)"
                        ))
                    })?),
                };
                fields.push(FieldDef {
                    name: fname,
                    ty,
                    domain,
                    blind_index: rf.blind_index,
                    max_bytes: rf.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
                    clear: rf.clear,
                    pseudonym,
                });
            }
            b = b.collection_with(&cname, fields);
        }
        for (tname, rt) in raw.tables {
            let tenant = match (rt.tenant_column, rt.tenant) {
                (Some(c), None) => TenantSource::Column(c),
                (None, Some(t)) => TenantSource::Fixed(
                    TenantId::new(t.clone())
                        .map_err(|e| StoreError::Schema(format!("table {tname}: tenant {t:?}: {e}")))?,
                ),
                _ => {
                    return Err(StoreError::Schema(format!(
                        "table {tname}: name exactly one of tenant_column and tenant"
                    )));
                }
            };
            let key: Vec<&str> = rt.primary_key.iter().map(String::as_str).collect();
            let mut t = AppTable::new(&tname, &key, tenant, &rt.subject_column);
            if let Some(sql) = &rt.table {
                t = t.in_table(sql);
            }
            if let Some(c) = &rt.row_tag_column {
                t = t.row_tag_column(c);
            }
            if let Some(c) = &rt.retain_until_column {
                t = t.retain_until_column(c);
            }
            if rt.external {
                t = t.external();
            }
            for (cname, rc) in rt.columns {
                let ty = FieldType::parse(&rc.ty).ok_or_else(|| {
                    StoreError::Schema(format!(
                        "column {tname}.{cname}: unknown type {:?} (text, integer, decimal, percentage, date, bool, bytes)",
                        rc.ty
                    ))
                })?;
                let domain = DomainName::new(rc.domain.clone()).map_err(|e| {
                    StoreError::Schema(format!("column {tname}.{cname}: domain {:?}: {e}", rc.domain))
                })?;
                t = t.column(ProtectedColumn {
                    name: cname,
                    ty,
                    domain,
                    max_bytes: rc.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
                    blind_index_column: rc.blind_index_column,
                    plaintext_column: rc.plaintext_column,
                });
            }
            b = b.app_table(t);
        }
        b.build()
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    #[serde(default)]
    collections: BTreeMap<String, RawCollection>,
    #[serde(default)]
    tables: BTreeMap<String, RawTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    table: Option<String>,
    primary_key: Vec<String>,
    tenant_column: Option<String>,
    tenant: Option<String>,
    subject_column: String,
    row_tag_column: Option<String>,
    retain_until_column: Option<String>,
    #[serde(default)]
    external: bool,
    #[serde(default)]
    columns: BTreeMap<String, RawColumn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    #[serde(rename = "type")]
    ty: String,
    domain: String,
    max_bytes: Option<usize>,
    blind_index_column: Option<String>,
    plaintext_column: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollection {
    #[serde(default)]
    fields: BTreeMap<String, RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: String,
    domain: String,
    #[serde(default)]
    blind_index: bool,
    max_bytes: Option<usize>,
    #[serde(default)]
    clear: bool,
    pseudonym: Option<String>,
}

// ------------------------------------------------------------------ the application's tables

/// The default name of the row tag column.
pub const DEFAULT_ROW_TAG_COLUMN: &str = "kluis_row_tag";

/// The largest number of primary key columns.
const MAX_KEY_COLUMNS: usize = 8;

/// Where a row's tenant comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantSource {
    /// A column of the table holds it (the application binds the tenant of the caller's keys).
    Column(String),
    /// Every row belongs to this tenant (a table of a single-tenant application).
    Fixed(TenantId),
}

/// One protected column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtectedColumn {
    /// The column's name in the table (an SQL identifier, as the application spells it).
    pub name: String,
    /// The type of the values it holds.
    pub ty: FieldType,
    /// The domain whose keys seal it.
    pub domain: DomainName,
    /// Maximum size of a value's encoding in bytes.
    pub max_bytes: usize,
    /// The column that holds its blind index, if it is searchable by equality.
    pub blind_index_column: Option<String>,
    /// The application's column that holds the same values in clear today, which
    /// [`crate::Store::encrypt_columns_step`] seals into this column and then clears.
    pub plaintext_column: Option<String>,
}

/// A table of the application, as the schema maps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppTable {
    /// The mapping's name (`[a-z][a-z0-9_]*`): bound into every cell as its collection.
    pub name: String,
    /// The SQL table (`name` or `schema.name`).
    pub table: String,
    /// The primary key columns, in order.
    pub primary_key: Vec<String>,
    /// Where a row's tenant comes from.
    pub tenant: TenantSource,
    /// The column that holds the data subject (an employee id).
    pub subject_column: String,
    /// The column that holds the row tag.
    pub row_tag_column: String,
    /// The column that holds the date (`YYYY-MM-DD...`) or unix time (seconds) until which a row
    /// must be kept: a shred of the row's subject is refused before it (unless a legal override
    /// is given), as for Kluis's own records.
    pub retain_until_column: Option<String>,
    /// The table is in another database than Kluis's (an application on another driver,
    /// docs/APP_TABLES.md section 7): Kluis runs no SQL on it, so it cannot encrypt, re-encrypt
    /// or clear its values, nor see which subject key versions they use (it keeps them all).
    pub external: bool,
    columns: BTreeMap<String, ProtectedColumn>,
}

/// Checks an SQL identifier of the application's: `[A-Za-z_][A-Za-z0-9_]*`, 1 to 63 bytes (so it
/// is never quoted, and is the same name on every engine).
pub(crate) fn check_ident(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Schema(format!(
            "{what} {s:?} must be 1 to 63 characters of A-Z, a-z, 0-9 and _, not starting with a digit"
        )))
    }
}

impl AppTable {
    /// A mapping of table `name` (also the SQL table), with the given key, tenant and subject
    /// columns, the default row tag column and no protected column yet.
    pub fn new(name: &str, primary_key: &[&str], tenant: TenantSource, subject_column: &str) -> Self {
        Self {
            name: name.to_owned(),
            table: name.to_owned(),
            primary_key: primary_key.iter().map(|s| (*s).to_owned()).collect(),
            tenant,
            subject_column: subject_column.to_owned(),
            row_tag_column: DEFAULT_ROW_TAG_COLUMN.to_owned(),
            retain_until_column: None,
            external: false,
            columns: BTreeMap::new(),
        }
    }

    /// The same mapping with the retention date of a row in column `column`.
    pub fn retain_until_column(mut self, column: &str) -> Self {
        self.retain_until_column = Some(column.to_owned());
        self
    }

    /// The same mapping of a table in another database than Kluis's.
    pub fn external(mut self) -> Self {
        self.external = true;
        self
    }

    /// Refuses an operation that runs SQL on the table when it is in another database.
    pub(crate) fn require_reachable(&self, what: &str) -> Result<()> {
        if self.external {
            return Err(StoreError::Invalid(format!(
                "table {} is in another database (external = true): {what} runs SQL on the table itself",
                self.name
            )));
        }
        Ok(())
    }

    /// The same mapping over SQL table `table` (`name` or `schema.name`).
    pub fn in_table(mut self, table: &str) -> Self {
        self.table = table.to_owned();
        self
    }

    /// The same mapping with its row tag in column `column`.
    pub fn row_tag_column(mut self, column: &str) -> Self {
        self.row_tag_column = column.to_owned();
        self
    }

    /// Adds a protected column (checked by [`AppTable::check`], which the schema runs).
    pub fn column(mut self, column: ProtectedColumn) -> Self {
        self.columns.insert(column.name.clone(), column);
        self
    }

    /// A protected column of `ty` in `domain`, with the default size limit and no blind index.
    pub fn protected(name: &str, ty: FieldType, domain: DomainName) -> ProtectedColumn {
        ProtectedColumn {
            name: name.to_owned(),
            ty,
            domain,
            max_bytes: DEFAULT_MAX_BYTES,
            blind_index_column: None,
            plaintext_column: None,
        }
    }

    /// The same mapping without protected columns.
    pub(crate) fn without_columns(&self) -> Self {
        Self { columns: BTreeMap::new(), ..self.clone() }
    }

    /// The protected column called `name`.
    pub fn protected_column(&self, name: &str) -> Option<&ProtectedColumn> {
        self.columns.get(name)
    }

    /// Every protected column, by name.
    pub fn protected_columns(&self) -> impl Iterator<Item = &ProtectedColumn> {
        self.columns.values()
    }

    /// The domains of its protected columns.
    pub fn domains(&self) -> Vec<DomainName> {
        let mut out: Vec<DomainName> = Vec::new();
        for c in self.columns.values() {
            if !out.contains(&c.domain) {
                out.push(c.domain.clone());
            }
        }
        out
    }

    /// Checks the mapping: names, at least one protected column, no column used twice, size
    /// limits, no blind index on a bool.
    pub fn check(&self) -> Result<()> {
        check_name("table mapping", &self.name)?;
        let what = |s: &str| format!("table {}: {s}", self.name);
        let (schema, table) = match self.table.split_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, self.table.as_str()),
        };
        if let Some(s) = schema {
            check_ident(&what("SQL schema"), s)?;
        }
        check_ident(&what("SQL table"), table)?;
        if self.primary_key.is_empty() || self.primary_key.len() > MAX_KEY_COLUMNS {
            return Err(StoreError::Schema(what(&format!(
                "primary_key must name 1 to {MAX_KEY_COLUMNS} columns"
            ))));
        }
        if self.columns.is_empty() {
            return Err(StoreError::Schema(what("no protected column")));
        }
        // The key columns, then the tenant and subject columns unless they are key columns too
        // (a key of (tenant_id, id) is common); every other column has one role only.
        let mut all: Vec<(String, String)> = Vec::new();
        for k in &self.primary_key {
            all.push((k.clone(), "primary key column".into()));
        }
        let in_key = |c: &str| self.primary_key.iter().any(|k| k.eq_ignore_ascii_case(c));
        if let TenantSource::Column(c) = &self.tenant
            && !in_key(c)
        {
            all.push((c.clone(), "tenant column".into()));
        }
        if !in_key(&self.subject_column) {
            all.push((self.subject_column.clone(), "subject column".into()));
        }
        if let TenantSource::Column(c) = &self.tenant
            && c.eq_ignore_ascii_case(&self.subject_column)
        {
            return Err(StoreError::Schema(what(&format!("column {c:?} has two roles"))));
        }
        all.push((self.row_tag_column.clone(), "row tag column".into()));
        if let Some(c) = &self.retain_until_column {
            all.push((c.clone(), "retention column".into()));
        }
        for (name, c) in &self.columns {
            if name != &c.name {
                return Err(StoreError::Schema(what(&format!("column {name:?} is filed as {:?}", c.name))));
            }
            all.push((c.name.clone(), "protected column".into()));
            if let Some(p) = &c.plaintext_column {
                all.push((p.clone(), "plaintext column".into()));
            }
            if let Some(i) = &c.blind_index_column {
                all.push((i.clone(), "blind index column".into()));
                if c.ty == FieldType::Bool {
                    return Err(StoreError::Schema(what(&format!(
                        "column {}: a bool has two values; a blind index on it reveals them",
                        c.name
                    ))));
                }
            }
            if c.max_bytes == 0 || c.max_bytes > LIMIT_MAX_BYTES {
                return Err(StoreError::Schema(what(&format!(
                    "column {}: max_bytes must be 1 to {LIMIT_MAX_BYTES}",
                    c.name
                ))));
            }
        }
        let mut used: Vec<&str> = Vec::new();
        for (c, role) in &all {
            check_ident(&what(role), c)?;
            // Identifiers compare without case: PostgreSQL folds them, MariaDB and SQLite ignore it.
            if used.iter().any(|u| u.eq_ignore_ascii_case(c)) {
                return Err(StoreError::Schema(what(&format!("column {c:?} has two roles"))));
            }
            used.push(c);
        }
        Ok(())
    }

    /// The row's key as bound into its cells: the primary key values, each an id
    /// (`[A-Za-z0-9._:-]`, 1 to 128 characters), joined with `/`.
    pub fn record_id(&self, key: &[&str]) -> Result<String> {
        if key.len() != self.primary_key.len() {
            return Err(StoreError::Invalid(format!(
                "table {}: a key of {} values for {} primary key columns",
                self.name,
                key.len(),
                self.primary_key.len()
            )));
        }
        for k in key {
            crate::check_id("primary key value", k)?;
        }
        Ok(key.join("/"))
    }

    /// The protected columns as a collection of sealed fields (what the write and read paths of
    /// Kluis's own tables take).
    pub(crate) fn as_collection(&self) -> Collection {
        Collection::from_parts(
            &self.name,
            self.columns
                .values()
                .map(|c| FieldDef {
                    name: c.name.clone(),
                    ty: c.ty,
                    domain: c.domain.clone(),
                    blind_index: c.blind_index_column.is_some(),
                    max_bytes: c.max_bytes,
                    clear: false,
                    pseudonym: None,
                })
                .collect(),
        )
    }
}

/// Builds a [`Schema`] in code.
#[derive(Debug)]
pub struct SchemaBuilder {
    schema: Schema,
    error: Option<StoreError>,
}

/// Describes a field for [`SchemaBuilder::collection`]: `field("diagnosis", FieldType::Text, "medical")`.
pub fn field(name: &str, ty: FieldType, domain: &str) -> FieldSpec {
    FieldSpec {
        name: name.to_owned(),
        ty,
        domain: domain.to_owned(),
        blind_index: false,
        max_bytes: DEFAULT_MAX_BYTES,
        clear: false,
        pseudonym: None,
    }
}

/// A field under construction (see [`field`]).
#[derive(Clone, Debug)]
pub struct FieldSpec {
    name: String,
    ty: FieldType,
    domain: String,
    blind_index: bool,
    max_bytes: usize,
    clear: bool,
    pseudonym: Option<Pseudonym>,
}

impl FieldSpec {
    /// Declares the kind of personal data it holds (see [`FieldDef::pseudonym`]).
    pub fn pseudonym(mut self, kind: Pseudonym) -> Self {
        self.pseudonym = Some(kind);
        self
    }

    /// Stores the field in clear (see [`FieldDef::clear`]).
    pub fn clear(mut self) -> Self {
        self.clear = true;
        self
    }

    /// Adds a blind index.
    pub fn blind_index(mut self) -> Self {
        self.blind_index = true;
        self
    }

    /// Sets the maximum size in bytes.
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }
}

impl SchemaBuilder {
    /// Adds a collection.
    pub fn collection(self, name: &str, fields: impl IntoIterator<Item = FieldSpec>) -> Self {
        let mut defs = Vec::new();
        let mut err = None;
        for f in fields {
            match DomainName::new(f.domain.clone()) {
                Ok(domain) => defs.push(FieldDef {
                    name: f.name,
                    ty: f.ty,
                    domain,
                    blind_index: f.blind_index,
                    max_bytes: f.max_bytes,
                    clear: f.clear,
                    pseudonym: f.pseudonym,
                }),
                Err(e) => {
                    err.get_or_insert(StoreError::Schema(format!("field {name}.{}: {e}", f.name)));
                }
            }
        }
        let mut s = self.collection_with(name, defs);
        if let Some(e) = err {
            s.error.get_or_insert(e);
        }
        s
    }

    fn collection_with(mut self, name: &str, fields: Vec<FieldDef>) -> Self {
        if self.error.is_some() {
            return self;
        }
        if let Err(e) = self.add(name, fields) {
            self.error = Some(e);
        }
        self
    }

    fn add(&mut self, name: &str, fields: Vec<FieldDef>) -> Result<()> {
        check_name("collection", name)?;
        if self.schema.collections.contains_key(name) {
            return Err(StoreError::Schema(format!("collection {name:?} is declared twice")));
        }
        if fields.is_empty() {
            return Err(StoreError::Schema(format!("collection {name:?} has no fields")));
        }
        let mut map = BTreeMap::new();
        for f in fields {
            check_name("field", &f.name)?;
            if f.max_bytes == 0 || f.max_bytes > LIMIT_MAX_BYTES {
                return Err(StoreError::Schema(format!(
                    "field {name}.{}: max_bytes must be 1 to {LIMIT_MAX_BYTES}",
                    f.name
                )));
            }
            if f.blind_index && f.ty == FieldType::Bool {
                return Err(StoreError::Schema(format!(
                    "field {name}.{}: a bool has two values; a blind index on it reveals them",
                    f.name
                )));
            }
            if f.clear && f.domain == DomainName::medical() {
                return Err(StoreError::Schema(format!(
                    "field {name}.{}: a medical field is never stored in clear",
                    f.name
                )));
            }
            if f.clear && f.blind_index {
                return Err(StoreError::Schema(format!(
                    "field {name}.{}: a clear field is searched in its own column, not through a blind index",
                    f.name
                )));
            }
            if let Some(p) = f.pseudonym {
                if f.domain == DomainName::medical() {
                    return Err(StoreError::Schema(format!(
                        "field {name}.{}: a medical field is left out of an anonymised copy, not pseudonymised",
                        f.name
                    )));
                }
                if f.ty != p.field_type() {
                    return Err(StoreError::Schema(format!(
                        "field {name}.{}: a {} pseudonym needs a {} field",
                        f.name,
                        p.as_str(),
                        p.field_type().as_str()
                    )));
                }
            }
            if map.contains_key(&f.name) {
                return Err(StoreError::Schema(format!("field {name}.{} is declared twice", f.name)));
            }
            map.insert(f.name.clone(), f);
        }
        self.schema.collections.insert(name.to_owned(), Collection { name: name.to_owned(), fields: map });
        Ok(())
    }

    /// Adds a mapping of one of the application's own tables ([`crate::app_table`]).
    pub fn app_table(mut self, table: AppTable) -> Self {
        if self.error.is_some() {
            return self;
        }
        if let Err(e) = table.check() {
            self.error = Some(e);
        } else if self.schema.tables.contains_key(&table.name) {
            self.error = Some(StoreError::Schema(format!("table {:?} is mapped twice", table.name)));
        } else {
            self.schema.tables.insert(table.name.clone(), table);
        }
        self
    }

    /// Finishes the schema, or returns the first error.
    pub fn build(self) -> Result<Schema> {
        if let Some(e) = self.error {
            return Err(e);
        }
        // A mapping's name is bound into its cells as their collection: it must not be one.
        if let Some(t) = self.schema.tables.keys().find(|t| self.schema.collections.contains_key(*t)) {
            return Err(StoreError::Schema(format!("{t:?} is both a collection and a table mapping")));
        }
        Ok(self.schema)
    }
}
