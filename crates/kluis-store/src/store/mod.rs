//! The store: seals and opens records, keeps keys, enforces retention, shreds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kluis_authz::{AccessProof, Action, Target};
use kluis_core::blind::{BlindIndexKey, DEFAULT_INDEX_LEN};
use kluis_core::keys::{self, GenerationStatus, RootKeyProvider};
use kluis_core::{
    Context, DomainKeyRecord, DomainKeySet, DomainName, KeyState, KeyVersion, SubjectKey, SubjectKeyRecord,
    TenantId, WrappedKey, ct_eq,
};

use crate::audit::AuditAppend;
use crate::backend::{
    DocumentFilter, DocumentRow, DomainKeyRow, FieldRow, IndexRow, KeyRowUpdate, OverrideRow, RecordRow,
    ReencryptPlan, ReencryptRecord, SqlBackend, StoredRecord, SubjectKeyRow, WriteOp,
};
use crate::engine::{Engine, EngineKind};
use crate::error::{Result, StoreError};
use crate::layout::{self, Layout, ROW_TAG_DOMAIN, Table};
use crate::schema::{Collection, FieldDef, Schema};
use crate::value::Value;

mod access;
mod app_encrypt;
mod app_reencrypt;
mod app_rows;
mod audit;
mod cells;
mod documents;
mod domain_keys;
mod generation;
mod instances;
mod key_cache;
mod legacy;
mod records;
mod reencrypt;
mod row_log;
mod schema_migration;
mod scope;
mod shred;
mod write;

pub use self::app_encrypt::{BatchLimits, ColumnsStep, EncryptPlan};
pub use self::generation::KeyringRecord;
pub use self::instances::{DEFAULT_INSTANCE_WINDOW, Held, INSTANCE_REPORT_EVERY, InstanceReport};
pub use self::scope::{Access, DOCUMENTS_SCOPE, Scope};
// Items of one use case that others use too (each child module sees the rest through `super::*`).
use self::{domain_keys::*, generation::*, instances::*, key_cache::*, write::*};

/// A field as read: the value, or withheld because the caller holds no key for its domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue {
    /// The decrypted value.
    Value(Value),
    /// Withheld: sealed under a domain the caller has no key for. Not decrypted.
    Withheld {
        /// The field's domain.
        domain: String,
    },
}

impl FieldValue {
    /// The value, if not withheld.
    pub fn value(&self) -> Option<&Value> {
        match self {
            Self::Value(v) => Some(v),
            Self::Withheld { .. } => None,
        }
    }

    /// Is it withheld?
    pub fn is_withheld(&self) -> bool {
        matches!(self, Self::Withheld { .. })
    }
}

/// A record as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Collection.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Version (pass it to updates).
    pub version: u64,
    /// Created, unix seconds.
    pub created_at: i64,
    /// Updated, unix seconds.
    pub updated_at: i64,
    /// Retain until, unix seconds.
    pub retain_until: Option<i64>,
    /// Fields by name (fields never set are absent).
    pub fields: BTreeMap<String, FieldValue>,
}

impl Record {
    /// The value of a field (`None` if absent or withheld).
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field).and_then(FieldValue::value)
    }
}

/// A new record.
#[derive(Clone, Debug, Default)]
pub struct NewRecord {
    /// Record id; a random one is generated if `None`.
    pub id: Option<String>,
    /// Subject (e.g. employee id); `[A-Za-z0-9._:-]`, 1 to 128 characters.
    pub subject: String,
    /// Retain until, unix seconds.
    pub retain_until: Option<i64>,
    /// Field values.
    pub fields: Vec<(String, Value)>,
}

impl NewRecord {
    /// A record of `subject` with no fields yet.
    pub fn new(subject: &str) -> Self {
        Self { subject: subject.to_owned(), ..Self::default() }
    }

    /// Sets a field.
    pub fn set(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.fields.push((field.to_owned(), value.into()));
        self
    }

    /// Sets the id.
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }

    /// Sets retain-until.
    pub fn retain_until(mut self, unix: i64) -> Self {
        self.retain_until = Some(unix);
        self
    }

    /// Checks the record as [`Store::insert`] (and an [`Op::Insert`]) checks it before touching
    /// a key or the database, with the same rules and errors, in the same order: the collection
    /// exists; the subject id and the record id, if set, pass [`check_id`]; every field is in the
    /// collection, holds a value of its type (well-formed decimals and `YYYY-MM-DD` dates,
    /// percentages from 0 to 100) within its `max_bytes`, and is set once. A record that passes
    /// can still be refused when written: for a domain whose key the caller does not hold, or an
    /// id that exists already.
    pub fn check(&self, schema: &Schema, collection: &str) -> Result<()> {
        let coll = schema.collection(collection)?;
        check_id("subject id", &self.subject)?;
        if let Some(id) = &self.id {
            check_id("record id", id)?;
        }
        check_fields(coll, &self.fields, |_| Ok(()))
    }
}

/// Changes to a record: only the named fields change; others (including fields the caller cannot
/// read) are kept.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Fields to set.
    pub set: Vec<(String, Value)>,
    /// Fields to remove.
    pub remove: Vec<String>,
    /// New retain-until (`None` keeps it).
    pub retain_until: Option<i64>,
}

impl Changes {
    /// No changes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field.
    pub fn set(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.set.push((field.to_owned(), value.into()));
        self
    }

    /// Removes a field.
    pub fn remove(mut self, field: &str) -> Self {
        self.remove.push(field.to_owned());
        self
    }

    /// Sets a new retain-until (it may be extended, not shortened while it runs).
    pub fn retain_until(mut self, unix: i64) -> Self {
        self.retain_until = Some(unix);
        self
    }
}

/// A recorded legal override: allows deleting or shredding before retain-until. Stored in clear in
/// the override audit table: do not put personal data in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegalOverride {
    /// The legal ground, e.g. a court order reference.
    pub reason: String,
    /// Who authorised it.
    pub authorised_by: String,
}

/// One operation of a transaction ([`Store::transaction`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Op {
    /// Insert.
    Insert {
        /// Collection.
        collection: String,
        /// The record.
        record: NewRecord,
    },
    /// Update a record at an expected version.
    Update {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        /// Version read.
        expected_version: u64,
        /// Changes.
        changes: Changes,
    },
    /// Delete a record.
    Delete {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        /// Version read, if known (otherwise the current one is used).
        expected_version: Option<u64>,
        /// Needed before retain-until.
        legal_override: Option<LegalOverride>,
    },
}

/// Id and version of a written record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Collection.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// New version (0 for a delete).
    pub version: u64,
}

/// A page of records and the cursor for the next page.
#[derive(Clone, Debug)]
pub struct Page {
    /// Records, ordered by id.
    pub records: Vec<Record>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next: Option<String>,
}

/// What a schema migration changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Records rewritten (each got a new version).
    pub records_updated: u64,
    /// Cells re-sealed under another domain.
    pub cells_resealed: u64,
    /// Blind index entries added or re-derived.
    pub indexes_written: u64,
    /// Blind index entries removed.
    pub indexes_dropped: u64,
    /// Values moved from a sealed to a clear column or back (the column left is emptied).
    pub cells_clear_changed: u64,
    /// Records skipped because they changed concurrently (run the migration again).
    pub conflicts: u64,
}

/// What a shred did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShredReport {
    /// Records removed.
    pub records_removed: u64,
    /// Rows of the application's mapped tables (in Kluis's database) whose protected values,
    /// blind indexes and row tags were cleared; `None` when the schema maps no such table.
    pub app_rows_cleared: Option<u64>,
    /// Rows of the mapped tables sealed again to derive their blind indexes under the rotated
    /// domain keys.
    pub app_rows_reindexed: u64,
    /// Document catalog entries removed (their blobs are unreadable: their keys are destroyed).
    pub documents_removed: u64,
    /// The subject's keys destroyed (domain, subject key version).
    pub subject_keys_destroyed: Vec<(String, KeyVersion)>,
    /// Domain key versions destroyed (domain, version) after rotating.
    pub destroyed_versions: Vec<(String, KeyVersion)>,
    /// The engine the purge ran on, and what it did to the database files.
    pub purge: (EngineKind, &'static str),
}

/// How often a transaction is retried internally when a subject key it used changed
/// concurrently (re-encryption or shred in another process).
pub(crate) const KEY_CHANGED_RETRIES: usize = 4;

/// Per domain key version: what still depends on it ([`Store::key_usage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUsage {
    /// Tenant.
    pub tenant: TenantId,
    /// Domain.
    pub domain: DomainName,
    /// Domain key version.
    pub version: KeyVersion,
    /// Its state.
    pub state: KeyState,
    /// Subject keys wrapped under this version.
    pub subject_keys: u64,
    /// Records with at least one cell sealed by such a subject key.
    pub records: u64,
    /// Catalog documents whose data key is wrapped by such a subject key.
    pub documents: u64,
}

impl KeyUsage {
    /// Nothing depends on this version any more (it can be retired unless it is active).
    pub fn is_unused(&self) -> bool {
        self.subject_keys == 0 && self.records == 0 && self.documents == 0
    }
}

/// What one [`Store::reencrypt_step`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReencryptProgress {
    /// Subjects whose cells now all use a subject key wrapped under the active domain key
    /// version (and whose blind indexes use the active version).
    pub subjects_moved: u64,
    /// Cells re-sealed.
    pub records_resealed: u64,
    /// Subjects that still have a subject key wrapped under an older version (or a blind index
    /// under one) for these steps to move after this step, documents included; 0 when they are
    /// done (`kept_for_app_tables` may still be more than 0).
    pub remaining_subjects: u64,
    /// Subjects skipped because a record or key changed concurrently (the next step retries).
    pub conflicts: u64,
    /// Subjects left with an older subject key version because values in the application's
    /// mapped tables are sealed under it: [`Store::reencrypt_columns_step`] seals those again,
    /// and the next step deletes the older version. Until then the older domain key version
    /// cannot be retired.
    pub kept_for_app_tables: u64,
}

/// Default lifetime of an unwrapped subject key in the store's cache.
pub const DEFAULT_SUBJECT_KEY_TTL: Duration = Duration::from_secs(300);

/// Encrypted records on one database.
pub struct Store<E: Engine> {
    backend: SqlBackend<E>,
    schema: Arc<Schema>,
    layout: Layout,
    subject_keys: Mutex<SubjectCache>,
    subject_key_ttl: Duration,
    /// The keyring generation record last opened (value, sealed bytes), so the rollback check at
    /// every unlock reads one row and opens it only when its bytes changed.
    generation_seen: Mutex<Option<(KeyringRecord, Vec<u8>)>>,
    /// This instance's reports of the root key versions it holds, if enabled.
    reporter: Option<Reporter>,
    /// Set once [`Store::move_legacy`] found no legacy row: later unlocks skip the lookup (only
    /// code from before the row layout writes legacy rows).
    legacy_moved: std::sync::atomic::AtomicBool,
}

/// What [`Store::adopt_legacy_keys`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Domain keys rewrapped out of a legacy envelope.
    pub rewrapped: usize,
    /// (tenant, domain) sets that got state tags.
    pub sets_tagged: usize,
    /// Whether the keyring generation was recorded (it was missing).
    pub generation_recorded: bool,
}

impl<E: Engine> fmt::Debug for Store<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.subject_keys.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("Store")
            .field("engine", &E::KIND)
            .field("collections", &self.schema.collections().map(|c| c.name.as_str()).collect::<Vec<_>>())
            .field("cached_subject_keys", &n)
            .finish()
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn field_def<'s>(coll: &'s Collection, name: &str) -> Result<&'s FieldDef> {
    coll.field(name)
        .ok_or_else(|| StoreError::UnknownField { collection: coll.name.clone(), field: name.to_owned() })
}

/// A value fits its field: the field's type (well-formed decimals and dates, percentages from 0
/// to 100) and its size limit.
fn check_value(coll: &Collection, def: &FieldDef, v: &Value) -> Result<()> {
    v.check(def.ty).map_err(|found| StoreError::WrongType {
        collection: coll.name.clone(),
        field: def.name.clone(),
        expected: def.ty.as_str(),
        found,
    })?;
    if v.payload_len() > def.max_bytes {
        return Err(StoreError::TooLarge {
            collection: coll.name.clone(),
            field: def.name.clone(),
            max: def.max_bytes,
            len: v.payload_len(),
        });
    }
    Ok(())
}

/// Checks fields to be written, in order, each one: known to the collection, a value that fits it
/// ([`check_value`]), `per_field` (the write path checks the domain key there), set only once.
fn check_fields(
    coll: &Collection,
    fields: &[(String, Value)],
    mut per_field: impl FnMut(&FieldDef) -> Result<()>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    for (name, v) in fields {
        let def = field_def(coll, name)?;
        check_value(coll, def, v)?;
        per_field(def)?;
        if !seen.insert(name.as_str()) {
            return Err(StoreError::Invalid(format!("field {}.{name} is set twice", coll.name)));
        }
    }
    Ok(())
}

/// Checks a record, subject or document id: `[A-Za-z0-9._:-]`, 1 to 128 characters. Ids are
/// stored in clear: never put personal data (names, BSN) in them.
pub fn check_id(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 128 {
        return Err(StoreError::InvalidId { what, reason: "must be 1 to 128 characters" });
    }
    if !s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-')) {
        return Err(StoreError::InvalidId {
            what,
            reason: "only letters, digits, '.', '_', ':' and '-' are allowed",
        });
    }
    Ok(())
}

fn random_id() -> Result<String> {
    let k = kluis_core::KeyMaterial::generate()?;
    let mut s = String::with_capacity(32);
    for b in k.expose_secret().iter().take(16) {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Invalid("version out of range".into()))
}

fn key_integrity(what: String, e: kluis_core::Error) -> StoreError {
    use kluis_core::{Error as E, ProviderErrorKind};
    match e {
        E::Decrypt
        | E::Malformed { .. }
        | E::UnsupportedVersion { .. }
        | E::UnsupportedSuite(_)
        | E::Provider { kind: ProviderErrorKind::UnwrapRefused, .. } => StoreError::KeyIntegrity { what },
        E::KeyStateTampered { key, reason } => {
            StoreError::KeyIntegrity { what: format!("domain key {key}: {reason}") }
        }
        other => StoreError::Core(other),
    }
}

impl<E: Engine> Store<E> {
    /// A store on `pool` (SQLite, PostgreSQL or MariaDB/MySQL; the engine follows from the pool)
    /// with `schema`. Run [`Store::migrate`] once before use.
    pub fn new<D>(pool: sqlx::Pool<D>, schema: Schema) -> Self
    where
        D: crate::engine::Native<Engine = E>,
        E: Engine<Db = D>,
    {
        Self {
            backend: SqlBackend::new(pool),
            layout: Layout::of(&schema),
            schema: Arc::new(schema),
            subject_keys: Mutex::new(SubjectCache::default()),
            subject_key_ttl: DEFAULT_SUBJECT_KEY_TTL,
            generation_seen: Mutex::new(None),
            reporter: None,
            legacy_moved: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sets how long an unwrapped subject key may be served from memory (default 5 minutes;
    /// zero disables the cache). Another process's shred takes effect here at the latest after
    /// this time.
    pub fn with_subject_key_ttl(mut self, ttl: Duration) -> Self {
        self.subject_key_ttl = ttl;
        self
    }

    /// Applies the embedded migrations and creates the schema's tables, columns and indexes
    /// that are missing (idempotent).
    pub async fn migrate(&self) -> Result<()> {
        self.backend.migrate().await?;
        self.backend.install(&self.layout).await?;
        // Rows written before the row log existed enter it once, as they stand.
        self.backend.log_baseline().await
    }

    /// The tables of the schema.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The domains `tenant` holds domain keys for (any state), in the order first seen.
    pub async fn tenant_domains(&self, tenant: &TenantId) -> Result<Vec<DomainName>> {
        let mut out: Vec<DomainName> = Vec::new();
        for row in self.backend.all_domain_keys().await? {
            if row.tenant == tenant.as_str() {
                let d = DomainName::new(row.domain.clone())?;
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Every subject key version of (`tenant`, `domain`): (subject, version). A stored version
    /// outside `1..=u32::MAX` is [`StoreError::Corrupt`].
    pub async fn subject_key_versions(
        &self,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<Vec<(String, KeyVersion)>> {
        self.backend
            .all_subject_keys(tenant.as_str(), domain.as_str())
            .await?
            .into_iter()
            .map(|k| match KeyVersion::from_stored(k.version) {
                Ok(v) => Ok((k.subject, v)),
                Err(_) => {
                    Err(StoreError::Corrupt { what: "subject key version", reason: k.version.to_string() })
                }
            })
            .collect()
    }

    /// The SQL layer: for this crate's tests and benches (feature `sql-layer`), not part of the
    /// API.
    #[cfg(feature = "sql-layer")]
    #[doc(hidden)]
    pub fn backend(&self) -> &SqlBackend<E> {
        &self.backend
    }

    /// The pool the store runs on: the same connections, for the application's own tables and
    /// for tools.
    pub fn pool(&self) -> &sqlx::Pool<E::Db> {
        self.backend.pool()
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    // ---------------------------------------------------------------- keys

    /// Tenants that have domain keys (not the store's own metadata key), sorted.
    pub async fn tenants(&self) -> Result<Vec<TenantId>> {
        let mut out = Vec::new();
        for t in self.backend.tenants().await? {
            if t != META_TENANT {
                out.push(TenantId::new(t)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::Sqlite;

    /// A key set of one active version from raw key bytes (the vectors' keys).
    pub(crate) fn set_of(tenant: &str, domain: &str, version: u32, key: Vec<u8>) -> DomainKeySet {
        DomainKeySet::from_keys(
            TenantId::new(tenant).unwrap(),
            DomainName::new(domain).unwrap(),
            vec![(
                KeyVersion::new(version).unwrap(),
                KeyState::Active,
                kluis_core::KeyMaterial::from_bytes(key.try_into().unwrap()),
            )],
            kluis_core::Suite::default(),
            kluis_core::Backend::preferred(),
        )
        .unwrap()
    }

    /// The committed row tag vector (tests/vectors/row_tags_v1.json, computed from
    /// docs/FORMAT.md §10.1 by a script, not by this code) is what the store makes and accepts;
    /// one byte changed anywhere in the row is refused.
    #[test]
    fn row_tag_vector() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../../../tests/vectors/row_tags_v1.json")).unwrap();
        let hexf = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let set = set_of("acme", ROW_TAG_DOMAIN, 1, hexf("row_tags_key"));
        let access = Access::new(tenant).with(set).unwrap();
        let r = &v["record"];
        let row = RecordRow {
            tenant: r["tenant"].as_str().unwrap().into(),
            collection: r["collection"].as_str().unwrap().into(),
            id: r["id"].as_str().unwrap().into(),
            subject: r["subject"].as_str().unwrap().into(),
            version: r["version"].as_i64().unwrap(),
            created_at: r["created_at"].as_i64().unwrap(),
            updated_at: r["updated_at"].as_i64().unwrap(),
            retain_until: r["retain_until"].as_i64(),
            tag: Vec::new(),
        };
        // The cells in reverse order: the tag sorts them by field name.
        let cells: Vec<FieldRow> = v["cells"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|c| FieldRow {
                field: c["field"].as_str().unwrap().into(),
                domain: "medical".into(),
                sealed: hex::decode(c["sealed"].as_str().unwrap()).unwrap(),
                key_version: c["key_version"].as_i64().unwrap(),
            })
            .collect();
        assert_eq!(cells::tag_input(&row, &cells), hexf("input"));
        let tag = Store::<Sqlite>::row_tag(&access, &row, &cells, &mut Tags::new()).unwrap();
        assert_eq!(hex::encode(&tag), v["tag"].as_str().unwrap());
        let mut stored = StoredRecord { record: RecordRow { tag, ..row }, fields: cells };
        Store::<Sqlite>::check_row(&access, &stored, &mut Tags::new()).unwrap();
        if let Some(b) = stored.fields.get_mut(0).and_then(|c| c.sealed.get_mut(0)) {
            *b ^= 1;
        }
        let e = Store::<Sqlite>::check_row(&access, &stored, &mut Tags::new());
        assert!(matches!(e, Err(StoreError::RowIntegrity { .. })), "{e:?}");
    }

    /// The committed application row vector (tests/vectors/app_rows_v1.json, computed from
    /// docs/FORMAT.md §10.2 by a script): the row tag the store makes and accepts, refused with
    /// one byte changed, and the blind index column's value.
    #[tokio::test]
    async fn app_row_vector() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../../../tests/vectors/app_rows_v1.json")).unwrap();
        let hexf = |x: &serde_json::Value| hex::decode(x.as_str().unwrap()).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let set = |domain: &str, version: u32, key: Vec<u8>| set_of("acme", domain, version, key);
        let access = Access::new(tenant.clone())
            .with(set(ROW_TAG_DOMAIN, 1, hexf(&v["row_tags_key"])))
            .unwrap()
            .with(set("general", 2, hexf(&v["blind_index"]["domain_key"])))
            .unwrap();
        let schema = Schema::from_toml(
            r#"
[tables.notes]
primary_key = ["id"]
tenant_column = "tenant_id"
subject_column = "employee_id"
[tables.notes.columns]
diagnosis = { type = "text", domain = "medical" }
bsn = { type = "text", domain = "general", blind_index_column = "bsn_idx" }
"#,
        )
        .unwrap();
        let t = schema.app_table("notes").unwrap();
        let r = &v["row"];
        let (record, subject) = (r["record"].as_str().unwrap(), r["subject"].as_str().unwrap());
        let cells: Vec<(String, Vec<u8>)> = v["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["column"].as_str().unwrap().to_owned(), hexf(&c["sealed"])))
            .collect();
        let refs: Vec<(&str, &[u8])> = cells.iter().map(|(c, s)| (c.as_str(), s.as_slice())).collect();
        assert_eq!(
            crate::app_table::app_tag_input("acme", &t.name, record, subject, &refs),
            hexf(&v["input"])
        );
        let tag = Store::<Sqlite>::app_row_tag(&access, t, record, subject, &refs, &mut Tags::new()).unwrap();
        assert_eq!(hex::encode(&tag), v["tag"].as_str().unwrap());
        Store::<Sqlite>::check_app_row(&access, t, record, subject, &refs, &tag, &mut Tags::new()).unwrap();
        let mut flipped = cells.clone();
        flipped[1].1[0] ^= 1;
        let refs: Vec<(&str, &[u8])> = flipped.iter().map(|(c, s)| (c.as_str(), s.as_slice())).collect();
        let e = Store::<Sqlite>::check_app_row(&access, t, record, subject, &refs, &tag, &mut Tags::new());
        assert!(matches!(e, Err(StoreError::RowIntegrity { .. })), "{e:?}");
        // The blind index column's value: the domain key version, then the index.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Sqlite::open(&dir.path().join("k.db")).await.unwrap(), schema.clone());
        let b = &v["blind_index"];
        let value = Value::Text(b["value_text"].as_str().unwrap().into());
        assert_eq!(value.encode().to_vec(), hexf(&b["encoded_value"]));
        let got = store.app_blind_index(&access, "notes", "bsn", &value).unwrap();
        assert_eq!(got, vec![hexf(&b["column_value"])]);
    }

    /// An operation that fails while being sealed, after others were written: the channel closes
    /// without its end mark, the database transaction rolls back, and the sealing error is the
    /// one returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sealing_error_mid_transaction_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Sqlite::open(&dir.path().join("k.db")).await.unwrap();
        let schema = Schema::from_toml(
            r#"
[collections.absence.fields]
diagnosis = { type = "text", domain = "medical" }
employee_number = { type = "text", domain = "general", blind_index = true }
"#,
        )
        .unwrap();
        let store = Store::new(backend, schema);
        store.migrate().await.unwrap();
        let keyring = kluis_core::LocalKeyring::generate(0).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let access = store
            .admin_access(&keyring, &tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap();
        let ops: Vec<Op> = (0..200)
            .map(|i| Op::Insert {
                collection: "absence".into(),
                record: NewRecord::new(&format!("emp-{}", i % 9))
                    .id(&format!("r-{i:03}"))
                    .set("diagnosis", "flu")
                    .set("employee_number", format!("E{i}").as_str()),
            })
            .collect();
        for bad_at in [0, 1, 150, 200] {
            let mut tags = Tags::new();
            let (mut planned, _) = store.plan_transaction(&access, &ops, &mut tags).await.unwrap();
            // A collection the schema does not know: only sealing finds it.
            let bad = Planned::Insert {
                row: RecordRow {
                    tenant: "acme".into(),
                    collection: "nope".into(),
                    id: "bad".into(),
                    subject: "emp-1".into(),
                    version: 1,
                    created_at: 1,
                    updated_at: 1,
                    retain_until: None,
                    tag: Vec::new(),
                },
                fields: &[],
            };
            planned.insert(bad_at, bad);
            let e = store.write_planned(&access, planned, None, tags).await;
            assert!(matches!(e, Err(StoreError::UnknownCollection(_))), "at {bad_at}: {e:?}");
            let page = store.list(&access, "absence", None, None, 1000).await.unwrap();
            assert!(page.records.is_empty(), "at {bad_at}: {} records written", page.records.len());
        }
        // The same operations without the bad one are written whole.
        store.transaction(&access, ops).await.unwrap();
        assert_eq!(store.list(&access, "absence", None, None, 1000).await.unwrap().records.len(), 200);
    }

    /// A page is opened while it is read (`SqlBackend::list_each`). With a pool of one connection
    /// and no subject key cache, opening needs that connection for the keys while the read holds
    /// it: the read never waits for the opening (unbounded hand-over), frees the connection at
    /// its end, and the page comes back whole. A row that fails its tag midway is the error.
    #[tokio::test]
    async fn a_page_opened_while_read_needs_no_second_connection() {
        let dir = tempfile::tempdir().unwrap();
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("one.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(20))
            .connect_with(opts)
            .await
            .unwrap();
        let schema = Schema::from_toml(
            r#"
[collections.absence.fields]
diagnosis = { type = "text", domain = "medical" }
employee_number = { type = "text", domain = "general", blind_index = true }
"#,
        )
        .unwrap();
        let store = Store::new(pool.clone(), schema).with_subject_key_ttl(Duration::ZERO);
        store.migrate().await.unwrap();
        let keyring = kluis_core::LocalKeyring::generate(0).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let access = store
            .admin_access(&keyring, &tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap();
        let ops: Vec<Op> = (0..300)
            .map(|i| Op::Insert {
                collection: "absence".into(),
                record: NewRecord::new(&format!("emp-{}", i % 40))
                    .id(&format!("r-{i:03}"))
                    .set("diagnosis", format!("flu {i}").as_str())
                    .set("employee_number", format!("E{i}").as_str()),
            })
            .collect();
        store.transaction(&access, ops).await.unwrap();
        let page =
            tokio::time::timeout(Duration::from_secs(60), store.list(&access, "absence", None, None, 1000))
                .await
                .expect("the read waited on itself")
                .unwrap();
        assert_eq!(page.records.len(), 300);
        assert!(page.next.is_none());
        for (i, r) in page.records.iter().enumerate() {
            assert_eq!(r.id, format!("r-{i:03}"));
            assert_eq!(r.get("diagnosis"), Some(&Value::Text(format!("flu {i}"))));
        }
        // A page of 100 names the next one.
        let first = store.list(&access, "absence", None, None, 100).await.unwrap();
        assert_eq!(first.next.as_deref(), Some("r-099"));
        // A tampered row midway: the page is an error naming it.
        sqlx::query("UPDATE kluis_r_absence SET version = 7 WHERE id = 'r-150'")
            .execute(&pool)
            .await
            .unwrap();
        let e = store.list(&access, "absence", None, None, 1000).await;
        assert!(matches!(&e, Err(StoreError::RowIntegrity { record, .. }) if record == "r-150"), "{e:?}");
    }
}
