//! The store: seals and opens records, keeps keys, enforces retention, shreds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kluis_core::blind::{BlindIndexKey, DEFAULT_INDEX_LEN};
use kluis_core::keys::{self, GenerationStatus, RootKeyProvider};
use kluis_core::{
    Context, DomainKeyRecord, DomainKeySet, DomainName, KeyState, SubjectKey, SubjectKeyRecord, TenantId,
    WrappedKey, ct_eq,
};

use crate::audit::AuditAppend;
use crate::backend::{
    Backend, DocumentFilter, DocumentRow, DomainKeyRow, FieldRow, IndexRow, KeyRowUpdate, OverrideRow,
    RecordRow, ReencryptPlan, ReencryptRecord, StoredRecord, SubjectKeyRow, WriteOp,
};
use crate::error::{Result, StoreError};
use crate::layout::{self, Layout, ROW_TAG_DOMAIN, Table};
use crate::schema::{Collection, FieldDef, Schema};
use crate::value::Value;

/// The collection name a [`Scope`] uses for the documents catalog (a document's id stands for
/// the record id). A schema collection of this name would share it.
pub const DOCUMENTS_SCOPE: &str = "documents";

/// What an [`Access`] may touch inside its tenant. Every call that opens or writes a record
/// checks it against the record's collection, id and subject (as stored) before anything is
/// opened or written; a call outside it is [`StoreError::OutOfScope`]. Tenant-wide operations
/// (schema migration, re-encryption, shredding another subject) need [`Scope::Tenant`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Everything in the tenant (the default of [`Access::new`] and [`Store::unlock`]).
    #[default]
    Tenant,
    /// The records of one collection; of one subject only if `subject` is set.
    Collection {
        /// Collection.
        collection: String,
        /// Only this subject's records.
        subject: Option<String>,
    },
    /// One record; only if it is about `subject`, if set.
    Record {
        /// Collection.
        collection: String,
        /// Record id.
        record: String,
        /// Only if the record's subject is this one.
        subject: Option<String>,
    },
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let of = |s: &Option<String>| s.as_ref().map(|s| format!(" of subject {s}")).unwrap_or_default();
        match self {
            Self::Tenant => f.write_str("the whole tenant"),
            Self::Collection { collection, subject } => write!(f, "collection {collection}{}", of(subject)),
            Self::Record { collection, record, subject } => {
                write!(f, "record {collection}/{record}{}", of(subject))
            }
        }
    }
}

impl Scope {
    /// Does it cover the record `collection`/`id` about `subject`?
    pub fn covers(&self, collection: &str, id: &str, subject: &str) -> bool {
        let subject_ok = |s: &Option<String>| s.as_deref().is_none_or(|s| s == subject);
        match self {
            Self::Tenant => true,
            Self::Collection { collection: c, subject: s } => c == collection && subject_ok(s),
            Self::Record { collection: c, record: r, subject: s } => {
                c == collection && r == id && subject_ok(s)
            }
        }
    }

    /// Does it cover every record of `collection` (of `subject`, if given)?
    fn covers_collection(&self, collection: &str, subject: Option<&str>) -> bool {
        match self {
            Self::Tenant => true,
            Self::Collection { collection: c, subject: None } => c == collection,
            Self::Collection { collection: c, subject: Some(s) } => {
                c == collection && subject == Some(s.as_str())
            }
            Self::Record { .. } => false,
        }
    }

    /// Is `inner` within `self`?
    fn contains(&self, inner: &Scope) -> bool {
        match (self, inner) {
            (Self::Tenant, _) => true,
            (_, Self::Tenant) => false,
            (outer, Self::Collection { collection, subject }) => {
                outer.covers_collection(collection, subject.as_deref())
            }
            (Self::Collection { collection: c, subject: s }, Self::Record { collection, subject, .. }) => {
                c == collection && (s.is_none() || s == subject)
            }
            (Self::Record { .. }, Self::Record { .. }) => self == inner,
        }
    }
}

/// The keys a caller holds for one tenant: one [`DomainKeySet`] per domain it may read and write,
/// and the [`Scope`] of records it may touch. Fields of other domains are returned as
/// [`FieldValue::Withheld`] without any decryption attempt.
pub struct Access {
    tenant: TenantId,
    sets: BTreeMap<String, Arc<DomainKeySet>>,
    /// The tenant's [`ROW_TAG_DOMAIN`] key set: row tags are made and checked with it.
    rows: Option<Arc<DomainKeySet>>,
    scope: Scope,
    /// May it write (insert, update, delete, documents, shred, migrations, re-encryption)?
    writes: bool,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("tenant", &self.tenant)
            .field("domains", &self.sets.keys())
            .field("row_tags", &self.rows.is_some())
            .field("scope", &self.scope)
            .field("writes", &self.writes)
            .finish()
    }
}

impl Access {
    /// No keys yet.
    pub fn new(tenant: TenantId) -> Self {
        Self { tenant, sets: BTreeMap::new(), rows: None, scope: Scope::Tenant, writes: true }
    }

    /// The same keys for reading only: every call that writes fails with
    /// [`StoreError::OutOfScope`]. There is no way back.
    pub fn read_only(mut self) -> Self {
        self.writes = false;
        self
    }

    /// May it write?
    pub fn may_write(&self) -> bool {
        self.writes
    }

    /// Refuses a write through a read-only access.
    fn require_write(&self, what: &str) -> Result<()> {
        if self.writes {
            Ok(())
        } else {
            Err(StoreError::OutOfScope { what: what.to_owned(), scope: format!("{}, read only", self.scope) })
        }
    }

    /// The same keys, limited to `scope`, which must lie within the current one (an `Access`
    /// can only narrow): else [`StoreError::OutOfScope`].
    pub fn narrow(mut self, scope: Scope) -> Result<Self> {
        if !self.scope.contains(&scope) {
            return Err(StoreError::OutOfScope { what: scope.to_string(), scope: self.scope.to_string() });
        }
        self.scope = scope;
        Ok(self)
    }

    /// What it may touch.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Refuses a record outside the scope.
    fn in_scope(&self, collection: &str, id: &str, subject: &str) -> Result<()> {
        if self.scope.covers(collection, id, subject) {
            Ok(())
        } else {
            Err(StoreError::OutOfScope {
                what: format!("record {collection}/{id}"),
                scope: self.scope.to_string(),
            })
        }
    }

    /// Refuses a read of a whole collection (of `subject`, if given) outside the scope.
    fn collection_in_scope(&self, collection: &str, subject: Option<&str>) -> Result<()> {
        if self.scope.covers_collection(collection, subject) {
            Ok(())
        } else {
            let what = match subject {
                Some(s) => format!("collection {collection} of subject {s}"),
                None => format!("collection {collection}"),
            };
            Err(StoreError::OutOfScope { what, scope: self.scope.to_string() })
        }
    }

    /// Refuses a catalog entry outside the scope (documents are scoped under the collection
    /// name [`DOCUMENTS_SCOPE`], the document id as record id).
    fn document_in_scope(&self, row: &DocumentRow) -> Result<()> {
        if self.scope.covers(DOCUMENTS_SCOPE, &row.document_id, &row.subject) {
            Ok(())
        } else {
            Err(StoreError::OutOfScope {
                what: format!("document {}", row.document_id),
                scope: self.scope.to_string(),
            })
        }
    }

    /// Refuses a tenant-wide operation unless the scope is the whole tenant.
    fn whole_tenant(&self, what: &str) -> Result<()> {
        match self.scope {
            Scope::Tenant => Ok(()),
            _ => Err(StoreError::OutOfScope { what: what.to_owned(), scope: self.scope.to_string() }),
        }
    }

    /// Adds a domain key set of this tenant. The [`ROW_TAG_DOMAIN`] set (which every record
    /// read and write needs; [`Store::unlock`] adds it) is kept apart from the data domains.
    pub fn with(mut self, set: DomainKeySet) -> Result<Self> {
        if set.tenant() != &self.tenant {
            return Err(StoreError::Invalid("a key set of another tenant".into()));
        }
        if set.domain().as_str() == ROW_TAG_DOMAIN {
            self.rows = Some(Arc::new(set));
        } else {
            self.sets.insert(set.domain().as_str().to_owned(), Arc::new(set));
        }
        Ok(self)
    }

    fn rows(&self) -> Result<&DomainKeySet> {
        self.rows.as_deref().ok_or_else(|| StoreError::AccessDenied {
            tenant: self.tenant.to_string(),
            domain: ROW_TAG_DOMAIN.to_owned(),
        })
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Domains the caller holds keys for.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.sets.keys().map(String::as_str)
    }

    /// The key set of `domain`, if held.
    pub fn set(&self, domain: &str) -> Option<&DomainKeySet> {
        self.sets.get(domain).map(|s| &**s)
    }

    fn require(&self, domain: &str) -> Result<&DomainKeySet> {
        self.set(domain).ok_or_else(|| StoreError::AccessDenied {
            tenant: self.tenant.to_string(),
            domain: domain.to_owned(),
        })
    }
}

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
    /// Domain key versions destroyed (domain, version) after rotating.
    pub destroyed_versions: Vec<(String, u32)>,
}

/// (tenant, domain, subject, subject key version).
type SubjectCacheKey = (String, String, String, u32);

/// (tenant, domain, subject).
type NewestKey = (String, String, String);

/// Cache tags computed during one call, by (domain, domain key version).
type Tags = CallCache;

/// State kept for the length of one call (a read of a page, a transaction, a step): the cache
/// tags computed per (domain, domain key version), and the subject keys already opened, by
/// subject, so a page of records looks each key up once and without allocating.
///
/// Writes also keep the newest subject key version found per (subject, domain), so the records
/// of a transaction after the first of a subject skip the store-wide cache, and the blind index
/// keys derived per (domain, domain key version, collection, field). A retried transaction starts
/// from a new `CallCache`.
#[derive(Default)]
struct CallCache {
    tags: Vec<(String, u32, [u8; 32])>,
    keys: HashMap<String, Vec<(String, u32, Arc<SubjectKey>)>>,
    newest: HashMap<String, Vec<(String, u32)>>,
    index_keys: Vec<IndexKeyEntry>,
    /// Row tag keys derived during the call, by tenant and row_tags key version.
    row_keys: Vec<(String, u32, BlindIndexKey)>,
}

/// A blind index key derived during one call: (domain, domain key version, collection, field).
struct IndexKeyEntry {
    domain: String,
    version: u32,
    collection: String,
    field: String,
    key: BlindIndexKey,
}

impl CallCache {
    fn new() -> Self {
        Self::default()
    }

    fn tag(&self, domain: &str, version: u32) -> Option<[u8; 32]> {
        self.tags.iter().find(|(d, v, _)| d == domain && *v == version).map(|e| e.2)
    }

    fn key(&self, subject: &str, domain: &str, version: u32) -> Option<&Arc<SubjectKey>> {
        self.keys.get(subject)?.iter().find(|(d, v, _)| d == domain && *v == version).map(|e| &e.2)
    }

    fn remember(&mut self, subject: &str, domain: &str, version: u32, key: &Arc<SubjectKey>) {
        match self.keys.get_mut(subject) {
            Some(list) => list.push((domain.to_owned(), version, key.clone())),
            None => {
                self.keys.insert(subject.to_owned(), vec![(domain.to_owned(), version, key.clone())]);
            }
        }
    }

    fn forget_subject(&mut self, subject: &str) {
        self.keys.remove(subject);
        self.newest.remove(subject);
    }

    /// The newest subject key version found during this call for (subject, domain), with its key.
    fn newest_key(&self, subject: &str, domain: &str) -> Option<(u32, Arc<SubjectKey>)> {
        let v = self.newest.get(subject)?.iter().find(|(d, _)| d == domain)?.1;
        self.key(subject, domain, v).map(|k| (v, k.clone()))
    }

    fn remember_newest(&mut self, subject: &str, domain: &str, version: u32) {
        match self.newest.get_mut(subject) {
            Some(list) => match list.iter_mut().find(|(d, _)| d == domain) {
                Some(e) => e.1 = version,
                None => list.push((domain.to_owned(), version)),
            },
            None => {
                self.newest.insert(subject.to_owned(), vec![(domain.to_owned(), version)]);
            }
        }
    }
}

/// One operation of a transaction, checked, with its subject keys in the call's cache, not yet
/// sealed ([`Store::plan_transaction`], then [`Store::seal_planned`]).
enum Planned<'o> {
    Insert {
        row: RecordRow,
        fields: &'o [(String, Value)],
    },
    Update {
        row: RecordRow,
        expected_version: i64,
        set: &'o [(String, Value)],
        remove: &'o [String],
        /// The cells as read (the tag covers the row as it will be).
        current: Vec<FieldRow>,
        /// The row tag as read.
        current_tag: Vec<u8>,
    },
    /// Writes that need no sealing (a delete and its override).
    Ready(Vec<WriteOp>),
}

/// Legacy records moved per transaction ([`Store::move_legacy`]).
const LEGACY_BATCH: u32 = 500;

/// Sealed writes a transaction may have ready ahead of the one being written.
const PIPELINE_DEPTH: usize = 64;

struct CachedSubjectKey {
    key: Arc<SubjectKey>,
    wrapping: u32,
    tag: [u8; 32],
    expires: Instant,
}

const SUBJECT_CACHE_MAX: usize = 100_000;

/// How often a transaction is retried internally when a subject key it used changed
/// concurrently (re-encryption or shred in another process).
pub(crate) const KEY_CHANGED_RETRIES: usize = 4;

#[derive(Default)]
struct SubjectCache {
    keys: HashMap<SubjectCacheKey, CachedSubjectKey>,
    /// The newest subject key version seen per subject, for writes.
    newest: HashMap<NewestKey, (u32, Instant)>,
}

impl SubjectCache {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn forget_subject(&mut self, tenant: &str, domain: Option<&str>, subject: &str) {
        let hit = |t: &str, d: &str, s: &str| t == tenant && s == subject && domain.is_none_or(|x| x == d);
        self.keys.retain(|k, _| !hit(&k.0, &k.1, &k.2));
        self.newest.retain(|k, _| !hit(&k.0, &k.1, &k.2));
    }

    fn forget_domain(&mut self, tenant: &str, domain: &str) {
        self.keys.retain(|k, _| !(k.0 == tenant && k.1 == domain));
        self.newest.retain(|k, _| !(k.0 == tenant && k.1 == domain));
    }
}

/// Per domain key version: what still depends on it ([`Store::key_usage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUsage {
    /// Tenant.
    pub tenant: TenantId,
    /// Domain.
    pub domain: DomainName,
    /// Domain key version.
    pub version: u32,
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
    /// under one) after this step; 0 when the domain is done (documents included).
    pub remaining_subjects: u64,
    /// Subjects skipped because a record or key changed concurrently (the next step retries).
    pub conflicts: u64,
}

/// Default lifetime of an unwrapped subject key in the store's cache.
pub const DEFAULT_SUBJECT_KEY_TTL: Duration = Duration::from_secs(300);

/// Encrypted records on one database.
pub struct Store<B: Backend> {
    backend: B,
    schema: Arc<Schema>,
    layout: Layout,
    subject_keys: Mutex<SubjectCache>,
    subject_key_ttl: Duration,
    /// The keyring generation record last opened (value, sealed bytes), so the rollback check at
    /// every unlock reads one row and opens it only when its bytes changed.
    generation_seen: Mutex<Option<(u64, Vec<u8>)>>,
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

impl<B: Backend> fmt::Debug for Store<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.subject_keys.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("Store")
            .field("engine", &B::ENGINE)
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

/// The updates that turn `old` rows into `new` records (same tenant and domain): every row whose
/// state, wrapped key or tag changed, each written only if still as read.
fn key_row_updates(old: &[DomainKeyRow], new: &[DomainKeyRow]) -> Vec<KeyRowUpdate> {
    new.iter()
        .filter_map(|n| {
            let o = old.iter().find(|o| o.version == n.version)?;
            (o != n).then(|| KeyRowUpdate { old: o.clone(), new: n.clone() })
        })
        .collect()
}

/// Reserved tenant and domain of the store's own metadata key.
const META_TENANT: &str = "_kluis";
const META_DOMAIN: &str = "meta";
const META_GENERATION: &str = "keyring_generation";
/// First byte of the generation record's format 1 (docs/FORMAT.md §8.6).
const GENERATION_RECORD_V1: u8 = 0x01;

impl<B: Backend> Store<B> {
    /// A store over `backend` with `schema`. Run [`Store::migrate`] once before use.
    pub fn new(backend: B, schema: Schema) -> Self {
        Self {
            backend,
            layout: Layout::of(&schema),
            schema: Arc::new(schema),
            subject_keys: Mutex::new(SubjectCache::default()),
            subject_key_ttl: DEFAULT_SUBJECT_KEY_TTL,
            generation_seen: Mutex::new(None),
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

    /// Every subject key version of (`tenant`, `domain`): (subject, version), as stored.
    pub async fn subject_key_versions(
        &self,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<Vec<(String, i64)>> {
        Ok(self
            .backend
            .all_subject_keys(tenant.as_str(), domain.as_str())
            .await?
            .into_iter()
            .map(|k| (k.subject, k.version))
            .collect())
    }

    /// The backend (same pool; for tools and benches).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    // ---------------------------------------------------------------- keys

    fn records_from_rows(
        tenant: &TenantId,
        domain: &DomainName,
        rows: &[DomainKeyRow],
    ) -> Result<Vec<DomainKeyRecord>> {
        rows.iter()
            .map(|r| {
                let what = || format!("domain key {tenant}/{domain} v{}", r.version);
                let version =
                    u32::try_from(r.version).map_err(|_| StoreError::KeyIntegrity { what: what() })?;
                let state =
                    KeyState::parse(&r.state).map_err(|_| StoreError::KeyIntegrity { what: what() })?;
                let wrapped = match &r.wrapped {
                    Some(b) => Some(
                        WrappedKey::from_bytes(b).map_err(|_| StoreError::KeyIntegrity { what: what() })?,
                    ),
                    None => None,
                };
                let tag = match &r.tag {
                    Some(t) => {
                        Some(<[u8; 32]>::try_from(t.as_slice()).map_err(|_| StoreError::KeyIntegrity {
                            what: format!("{}: the state tag is not 32 bytes", what()),
                        })?)
                    }
                    None => None,
                };
                Ok(DomainKeyRecord {
                    tenant: tenant.clone(),
                    domain: domain.clone(),
                    version,
                    state,
                    wrapped,
                    tag,
                })
            })
            .collect()
    }

    fn rows_from_records(records: &[DomainKeyRecord]) -> Result<Vec<DomainKeyRow>> {
        records
            .iter()
            .map(|r| {
                Ok(DomainKeyRow {
                    tenant: r.tenant.to_string(),
                    domain: r.domain.to_string(),
                    version: i64::from(r.version),
                    state: r.state.as_str().to_owned(),
                    wrapped: r.wrapped.as_ref().map(WrappedKey::to_bytes).transpose()?,
                    tag: r.tag.map(|t| t.to_vec()),
                })
            })
            .collect()
    }

    async fn domain_records(&self, tenant: &TenantId, domain: &DomainName) -> Result<Vec<DomainKeyRecord>> {
        let rows = self.backend.domain_keys(tenant.as_str(), domain.as_str()).await?;
        Self::records_from_rows(tenant, domain, &rows)
    }

    /// The rows of (tenant, domain), their records and the unwrapped set (state tags verified).
    async fn verified_records(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<(Vec<DomainKeyRow>, Vec<DomainKeyRecord>, DomainKeySet)> {
        let rows = self.backend.domain_keys(tenant.as_str(), domain.as_str()).await?;
        let records = Self::records_from_rows(tenant, domain, &rows)?;
        if records.is_empty() {
            return Err(StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{tenant}/{domain}"),
            }));
        }
        // Two active versions, a destroyed one still wrapped, ...: the rows were altered.
        keys::validate_versions(&records)
            .map_err(|e| StoreError::KeyIntegrity { what: format!("domain key {tenant}/{domain}: {e}") })?;
        match DomainKeySet::unwrap(provider, &records).await {
            Ok(set) => Ok((rows, records, set)),
            Err(e) => Err(Self::name_failing_row(provider, &records, e).await),
        }
    }

    /// Turns a failed unwrap of a key set into an error naming the row that failed: a wrapped
    /// key the provider refuses (forged, altered, moved) is unwrapped alone to find it.
    async fn name_failing_row(
        provider: &dyn RootKeyProvider,
        records: &[DomainKeyRecord],
        e: kluis_core::Error,
    ) -> StoreError {
        use kluis_core::{Error as E, ProviderErrorKind};
        let per_row = matches!(
            e,
            E::Decrypt
                | E::Malformed { .. }
                | E::UnsupportedVersion { .. }
                | E::Provider { kind: ProviderErrorKind::UnwrapRefused, .. }
        );
        let set_label =
            records.first().map(|r| format!("domain key {}/{}", r.tenant, r.domain)).unwrap_or_default();
        if !per_row {
            return key_integrity(set_label, e);
        }
        for r in records {
            let Some(w) = &r.wrapped else { continue };
            let Ok(aad) = keys::domain_key_ad(&r.tenant, &r.domain, r.version) else { continue };
            if let Err(one) = keys::unwrap_one(provider, &aad, w).await {
                return key_integrity(
                    format!("domain key {}/{} v{}: {one}", r.tenant, r.domain, r.version),
                    one,
                );
            }
        }
        key_integrity(format!("{set_label}: {e}"), e)
    }

    /// Creates version 1 of a domain key if the tenant has none for `domain`, after the rollback
    /// check ([`Store::check_rollback`]).
    pub async fn ensure_domain_key(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<()> {
        self.check_rollback(provider).await?;
        self.ensure_domain_key_unchecked(provider, tenant, domain).await
    }

    async fn ensure_domain_key_unchecked(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<()> {
        if !self.backend.domain_keys(tenant.as_str(), domain.as_str()).await?.is_empty() {
            return Ok(());
        }
        let (rec, _key) = keys::new_domain_key(provider, tenant, domain, 1).await?;
        match self.backend.put_domain_keys(Self::rows_from_records(&[rec])?, true, None).await {
            Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates version 1 of every domain key of `domains` that `tenant` lacks, all in one
    /// database transaction with the audit entry `audit(domains created)`: the keys and their
    /// entry are committed together, or neither. Returns the domains created (none: nothing is
    /// written, not even the entry). Keys another process creates meanwhile are left to it.
    pub async fn add_domain_keys_audited(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domains: &[DomainName],
        audit: &(dyn Fn(&[DomainName]) -> AuditAppend + Send + Sync),
    ) -> Result<Vec<DomainName>> {
        self.check_rollback(provider).await?;
        let mut created = Vec::new();
        let mut records = Vec::new();
        for d in domains {
            if created.contains(d) || !self.backend.domain_keys(tenant.as_str(), d.as_str()).await?.is_empty()
            {
                continue;
            }
            let (rec, _key) = keys::new_domain_key(provider, tenant, d, 1).await?;
            records.push(rec);
            created.push(d.clone());
        }
        if created.is_empty() {
            return Ok(created);
        }
        let entry = audit(&created);
        match self.backend.put_domain_keys(Self::rows_from_records(&records)?, true, Some(entry)).await {
            Ok(()) => Ok(created),
            // Another process created one of them: it logs its own; ours are made one by one.
            Err(StoreError::AlreadyExists { .. }) => {
                for d in domains {
                    self.ensure_domain_key_unchecked(provider, tenant, d).await?;
                }
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Loads and unwraps the domain key set of (tenant, domain), after the rollback check
    /// ([`Store::check_rollback`]). A wrapped key row altered or forged in the database, or a
    /// row's state, or the set of versions, changed outside Kluis gives
    /// [`StoreError::KeyIntegrity`] naming the row.
    pub async fn key_set(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<DomainKeySet> {
        self.check_rollback(provider).await?;
        self.key_set_unchecked(provider, tenant, domain).await
    }

    async fn key_set_unchecked(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<DomainKeySet> {
        Ok(self.verified_records(provider, tenant, domain).await?.2)
    }

    /// Unlocks the named domains of a tenant (creating version 1 of missing domain keys), after
    /// the rollback check ([`Store::check_rollback`]).
    pub async fn unlock(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domains: &[DomainName],
    ) -> Result<Access> {
        self.check_rollback(provider).await?;
        self.move_legacy(provider).await?;
        let mut access = Access::new(tenant.clone()).with(self.row_tag_set(provider, tenant).await?)?;
        for d in domains {
            self.ensure_domain_key_unchecked(provider, tenant, d).await?;
            access = access.with(self.key_set_unchecked(provider, tenant, d).await?)?;
        }
        Ok(access)
    }

    /// The tenant's [`ROW_TAG_DOMAIN`] key set (created at its first use), for an [`Access`]
    /// assembled by hand with [`Access::with`]; [`Store::unlock`] adds it itself.
    pub async fn row_tag_set(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
    ) -> Result<DomainKeySet> {
        let d = DomainName::new(ROW_TAG_DOMAIN)?;
        self.ensure_domain_key_unchecked(provider, tenant, &d).await?;
        self.key_set_unchecked(provider, tenant, &d).await
    }

    /// Moves records of the legacy layout (a row per field in `kluis_fields`) into their
    /// collection tables, 500 per transaction, without re-sealing a cell (a cell's context does
    /// not depend on the layout), each row with its tag. Resumable: a killed move leaves every
    /// record either moved or not. [`Store::unlock`] runs it; returns how many records moved.
    pub async fn move_legacy(&self, provider: &dyn RootKeyProvider) -> Result<u64> {
        use std::sync::atomic::Ordering;
        if self.legacy_moved.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut moved = 0u64;
        let mut sets: BTreeMap<String, Access> = BTreeMap::new();
        loop {
            let batch = self.backend.legacy_records(LEGACY_BATCH).await?;
            if batch.is_empty() {
                self.legacy_moved.store(true, Ordering::Release);
                return Ok(moved);
            }
            let mut tags = Tags::new();
            let mut rows = Vec::with_capacity(batch.len());
            for (mut stored, indexes) in batch {
                let r = &stored.record;
                let table = self.layout.table(&r.collection).map_err(|_| {
                    StoreError::Schema(format!(
                        "the database holds records of collection {:?}, which the schema lacks: open it with \
                         the schema it was written with",
                        r.collection
                    ))
                })?;
                let access = match sets.get(&r.tenant) {
                    Some(a) => a,
                    None => {
                        let tenant = TenantId::new(&r.tenant)?;
                        let a =
                            Access::new(tenant.clone()).with(self.row_tag_set(provider, &tenant).await?)?;
                        sets.entry(r.tenant.clone()).or_insert(a)
                    }
                };
                // The cells keep their bytes; the domain is the schema's (as on every read).
                for c in &mut stored.fields {
                    if let Some(cols) = table.cell(&c.field) {
                        c.domain.clone_from(&cols.domain);
                    }
                }
                stored.record.tag = Self::row_tag(access, &stored.record, &stored.fields, &mut tags)?;
                rows.push((table.clone(), stored, indexes));
            }
            let n = rows.len() as u64;
            self.backend.move_legacy(rows).await?;
            moved += n;
            tracing::info!(records = n, "kluis-store: records moved from the legacy layout");
        }
    }

    fn subject_record(
        row: &SubjectKeyRow,
        tenant: &TenantId,
        set: &DomainKeySet,
    ) -> Result<SubjectKeyRecord> {
        let version = u32::try_from(row.version).map_err(|_| StoreError::KeyIntegrity {
            what: format!("subject key {}/{}/{}", tenant, set.domain(), row.subject),
        })?;
        Ok(SubjectKeyRecord {
            tenant: tenant.clone(),
            domain: set.domain().clone(),
            subject: row.subject.clone(),
            version,
            wrapped: row.wrapped.clone(),
        })
    }

    /// A tag that proves which domain key version a cached subject key was unwrapped with,
    /// without keeping a copy of that key: a 256-bit HMAC under a key derived from it.
    fn cache_tag(set: &DomainKeySet, version: u32, tags: &mut Tags) -> kluis_core::Result<[u8; 32]> {
        if let Some(t) = tags.tag(set.domain().as_str(), version) {
            return Ok(t);
        }
        let k = BlindIndexKey::derive(
            set.key(version)?,
            set.tenant(),
            set.domain(),
            "kluis-subject-cache",
            "tag",
            32,
        )?;
        let mut out = [0u8; 32];
        out.copy_from_slice(k.index(b"subject key cache").get(..32).unwrap_or(&[0u8; 32]));
        tags.tags.push((set.domain().to_string(), version, out));
        Ok(out)
    }

    fn open_subject_row(
        &self,
        set: &DomainKeySet,
        row: &SubjectKeyRow,
        tags: &mut Tags,
    ) -> Result<Arc<SubjectKey>> {
        let tenant = set.tenant();
        let what = || format!("subject key {}/{}/{} v{}", tenant, set.domain(), row.subject, row.version);
        let rec = Self::subject_record(row, tenant, set)?;
        let wv = DomainKeySet::subject_key_wrapping_version(&rec).map_err(|e| key_integrity(what(), e))?;
        Self::require_version(set, wv)?;
        let key = Arc::new(set.open_subject_key(&rec).map_err(|e| key_integrity(what(), e))?);
        let tag = Self::cache_tag(set, wv, tags).map_err(|e| key_integrity(what(), e))?;
        if let Ok(mut c) = self.subject_keys.lock() {
            if c.len() >= SUBJECT_CACHE_MAX {
                let now = Instant::now();
                c.keys.retain(|_, e| e.expires > now);
                c.newest.retain(|_, e| e.1 > now);
                if c.len() >= SUBJECT_CACHE_MAX {
                    c.keys.clear();
                    c.newest.clear();
                }
            }
            let ck = (
                tenant.as_str().to_owned(),
                set.domain().as_str().to_owned(),
                row.subject.clone(),
                rec.version,
            );
            let expires = Instant::now() + self.subject_key_ttl;
            c.keys.insert(ck, CachedSubjectKey { key: key.clone(), wrapping: wv, tag, expires });
        }
        Ok(key)
    }

    fn note_newest(&self, set: &DomainKeySet, subject: &str, version: u32) {
        if let Ok(mut c) = self.subject_keys.lock() {
            let k = (set.tenant().as_str().to_owned(), set.domain().as_str().to_owned(), subject.to_owned());
            c.newest.insert(k, (version, Instant::now() + self.subject_key_ttl));
        }
    }

    fn cached_key(
        &self,
        set: &DomainKeySet,
        subject: &str,
        version: u32,
        tags: &mut Tags,
    ) -> Option<Arc<SubjectKey>> {
        let ck =
            (set.tenant().as_str().to_owned(), set.domain().as_str().to_owned(), subject.to_owned(), version);
        let cached = self.subject_keys.lock().ok().and_then(|c| {
            c.keys.get(&ck).filter(|e| e.expires > Instant::now()).map(|e| (e.key.clone(), e.wrapping, e.tag))
        })?;
        let (key, wv, tag) = cached;
        let mine = Self::cache_tag(set, wv, tags).ok()?;
        ct_eq(&mine, &tag).then_some(key)
    }

    /// A subject key of (tenant, domain, subject): version `version`, or the newest if `None`;
    /// from the cache when the caller's key set holds the domain key version that unwrapped it,
    /// else from the database. The newest version may be served from the cache for up to the
    /// TTL: a write under a version that another process deleted meanwhile is refused by the
    /// database ([`StoreError::KeyChanged`]) and retried.
    async fn load_subject_key(
        &self,
        set: &DomainKeySet,
        subject: &str,
        version: Option<u32>,
        tags: &mut Tags,
    ) -> Result<Option<(u32, Arc<SubjectKey>)>> {
        let want = match version {
            Some(v) => Some(v),
            None => self.subject_keys.lock().ok().and_then(|c| {
                let k =
                    (set.tenant().as_str().to_owned(), set.domain().as_str().to_owned(), subject.to_owned());
                c.newest.get(&k).filter(|e| e.1 > Instant::now()).map(|e| e.0)
            }),
        };
        if let Some(v) = want {
            if let Some(key) = tags.key(subject, set.domain().as_str(), v) {
                return Ok(Some((v, key.clone())));
            }
            if let Some(key) = self.cached_key(set, subject, v, tags) {
                tags.remember(subject, set.domain().as_str(), v, &key);
                return Ok(Some((v, key)));
            }
        }
        let rows = self.backend.subject_keys(set.tenant().as_str(), set.domain().as_str(), subject).await?;
        if let Some(last) = rows.last()
            && let Ok(v) = u32::try_from(last.version)
        {
            self.note_newest(set, subject, v);
        }
        let row = match version {
            Some(v) => rows.iter().find(|r| r.version == i64::from(v)),
            None => rows.last(),
        };
        match row {
            None => Ok(None),
            Some(row) => {
                let key = self.open_subject_row(set, row, tags)?;
                let v = key.seal_key().key_ref().version;
                tags.remember(subject, set.domain().as_str(), v, &key);
                Ok(Some((v, key)))
            }
        }
    }

    async fn subject_key_for_write(
        &self,
        set: &DomainKeySet,
        subject: &str,
        tags: &mut Tags,
    ) -> Result<(u32, Arc<SubjectKey>)> {
        if let Some(k) = tags.newest_key(subject, set.domain().as_str()) {
            return Ok(k);
        }
        let found = match self.load_subject_key(set, subject, None, tags).await? {
            Some(k) => k,
            None => {
                let row = Self::new_subject_key_row(set, subject, 1)?;
                // Inserted, or another writer won the race: either way read back the stored one.
                self.backend.insert_subject_key(row).await?;
                self.load_subject_key(set, subject, None, tags).await?.ok_or_else(|| {
                    StoreError::KeyChanged {
                        what: format!("subject key {}/{}/{subject}", set.tenant(), set.domain()),
                    }
                })?
            }
        };
        tags.remember_newest(subject, set.domain().as_str(), found.0);
        Ok(found)
    }

    fn new_subject_key_row(set: &DomainKeySet, subject: &str, version: u32) -> Result<SubjectKeyRow> {
        Ok(Self::new_subject_key_pair(set, subject, version)?.0)
    }

    fn new_subject_key_pair(
        set: &DomainKeySet,
        subject: &str,
        version: u32,
    ) -> Result<(SubjectKeyRow, SubjectKey)> {
        let wrap = set.active_version().ok_or_else(|| {
            StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{}/{} (no active version)", set.tenant(), set.domain()),
            })
        })?;
        let (rec, key) = set.new_subject_key(subject, version)?;
        let row = SubjectKeyRow {
            tenant: rec.tenant.to_string(),
            domain: rec.domain.to_string(),
            subject: rec.subject.clone(),
            version: i64::from(rec.version),
            wrapped: rec.wrapped,
            created_at: now_unix(),
            wrap_version: i64::from(wrap),
        };
        Ok((row, key))
    }

    // ---------------------------------------------------------------- writes

    fn blind_index(
        set: &DomainKeySet,
        version: u32,
        coll: &str,
        field: &str,
        encoded: &[u8],
    ) -> Result<Vec<u8>> {
        let k = BlindIndexKey::derive(
            set.key(version)?,
            set.tenant(),
            set.domain(),
            coll,
            field,
            DEFAULT_INDEX_LEN,
        )?;
        Ok(k.index(encoded))
    }

    /// [`Self::blind_index`] with the index key derived once per call.
    fn blind_index_cached(
        set: &DomainKeySet,
        version: u32,
        coll: &str,
        field: &str,
        encoded: &[u8],
        tags: &mut Tags,
    ) -> Result<Vec<u8>> {
        let domain = set.domain().as_str();
        let hit = tags
            .index_keys
            .iter()
            .find(|e| e.version == version && e.domain == domain && e.collection == coll && e.field == field);
        if let Some(e) = hit {
            return Ok(e.key.index(encoded));
        }
        let key = BlindIndexKey::derive(
            set.key(version)?,
            set.tenant(),
            set.domain(),
            coll,
            field,
            DEFAULT_INDEX_LEN,
        )?;
        let idx = key.index(encoded);
        tags.index_keys.push(IndexKeyEntry {
            domain: domain.to_owned(),
            version,
            collection: coll.to_owned(),
            field: field.to_owned(),
            key,
        });
        Ok(idx)
    }

    /// Checks fields (known, of the right type and size, set once, domain key held) and makes
    /// sure this call holds the subject's newest key of each domain they use (loading or creating
    /// it), so [`Self::seal_fields_now`] needs no database.
    ///
    /// `values_checked`: [`check_fields`] already ran on `fields` (an insert's
    /// [`NewRecord::check`]); then only the domain keys are checked here, in the same order.
    async fn prepare_fields(
        &self,
        access: &Access,
        coll: &Collection,
        subject: &str,
        fields: &[(String, Value)],
        tags: &mut Tags,
        values_checked: bool,
    ) -> Result<()> {
        if values_checked {
            for (name, _) in fields {
                access.require(field_def(coll, name)?.domain.as_str())?;
            }
        } else {
            check_fields(coll, fields, |def| access.require(def.domain.as_str()).map(|_| ()))?;
        }
        // Once per domain of the record (a record has few domains and many fields).
        let mut done: Vec<&DomainName> = Vec::with_capacity(2);
        for (name, _) in fields {
            let def = field_def(coll, name)?;
            if def.clear || done.contains(&&def.domain) {
                continue;
            }
            let set = access.require(def.domain.as_str())?;
            self.subject_key_for_write(set, subject, tags).await?;
            done.push(&def.domain);
        }
        Ok(())
    }

    /// Seals fields checked by [`Self::prepare_fields`] under the subject keys it left in `tags`.
    ///
    /// The values are encoded into one buffer of their total size (wiped on drop, never
    /// reallocated) and sealed in one call ([`keys::seal_fields`]: one draw from the OS for the
    /// salts of the record's cells).
    fn seal_fields_now(
        access: &Access,
        coll: &Collection,
        id: &str,
        subject: &str,
        fields: &[(String, Value)],
        tags: &mut Tags,
    ) -> Result<(Vec<FieldRow>, Vec<IndexRow>)> {
        // Per field: its definition, key set, subject key (none for a clear field) and where its
        // encoding is in `encoded`.
        struct Cell<'f> {
            name: &'f str,
            def: &'f FieldDef,
            set: &'f DomainKeySet,
            key: Option<(u32, Arc<SubjectKey>)>,
            at: std::ops::Range<usize>,
        }
        let total = fields.iter().map(|(_, v)| v.encoded_len()).sum();
        let mut encoded = zeroize::Zeroizing::new(Vec::with_capacity(total));
        let mut plan: Vec<Cell<'_>> = Vec::with_capacity(fields.len());
        for (name, v) in fields {
            let def = field_def(coll, name)?;
            let set = access.require(def.domain.as_str())?;
            let key = if def.clear {
                None
            } else {
                // The key of the previous field's domain: fields of one domain usually come
                // together.
                match plan.iter().rev().find_map(|c| c.key.as_ref().filter(|_| c.def.domain == def.domain)) {
                    Some((v, k)) => Some((*v, k.clone())),
                    None => Some(tags.newest_key(subject, def.domain.as_str()).ok_or_else(|| {
                        StoreError::KeyChanged {
                            what: format!("subject key {}/{}/{subject}", access.tenant, def.domain),
                        }
                    })?),
                }
            };
            let start = encoded.len();
            v.encode_into(&mut encoded);
            plan.push(Cell { name, def, set, key, at: start..encoded.len() });
        }
        let bytes = |at: &std::ops::Range<usize>| {
            encoded.get(at.clone()).ok_or_else(|| StoreError::Invalid("encoded field".into()))
        };
        let mut to_seal = Vec::with_capacity(plan.len());
        for c in &plan {
            if let Some((_, k)) = &c.key {
                to_seal.push(keys::FieldToSeal {
                    key: k,
                    context: Context {
                        tenant: &access.tenant,
                        domain: &c.def.domain,
                        collection: &coll.name,
                        field: c.name,
                        record: id,
                    },
                    plaintext: bytes(&c.at)?,
                });
            }
        }
        let mut sealed = keys::seal_fields(&to_seal)?.into_iter();
        drop(to_seal);
        let mut cells = Vec::with_capacity(plan.len());
        let mut indexes = Vec::new();
        for c in &plan {
            let Some((skv, _)) = &c.key else {
                // Stored in clear, in its encoding (which the row tag covers); no subject key.
                cells.push(FieldRow {
                    field: c.name.to_owned(),
                    domain: c.def.domain.as_str().to_owned(),
                    sealed: bytes(&c.at)?.to_vec(),
                    key_version: 0,
                });
                continue;
            };
            cells.push(FieldRow {
                field: c.name.to_owned(),
                domain: c.def.domain.as_str().to_owned(),
                sealed: sealed.next().ok_or_else(|| StoreError::Invalid("sealed field".into()))?,
                key_version: i64::from(*skv),
            });
            if c.def.blind_index {
                let active = c.set.active_version().ok_or_else(|| {
                    StoreError::Core(kluis_core::Error::UnknownKey {
                        key: format!("{}/{} (no active version)", access.tenant, c.def.domain),
                    })
                })?;
                indexes.push(IndexRow {
                    field: c.name.to_owned(),
                    key_version: i64::from(active),
                    idx: Self::blind_index_cached(c.set, active, &coll.name, c.name, bytes(&c.at)?, tags)?,
                });
            }
        }
        Ok((cells, indexes))
    }

    /// Inserts one record.
    pub async fn insert(&self, access: &Access, collection: &str, record: NewRecord) -> Result<Written> {
        let mut out =
            self.transaction(access, vec![Op::Insert { collection: collection.to_owned(), record }]).await?;
        out.pop().ok_or_else(|| StoreError::Invalid("empty result".into()))
    }

    /// Updates one record that has `expected_version`; a concurrent change gives
    /// [`StoreError::Conflict`].
    pub async fn update(
        &self,
        access: &Access,
        collection: &str,
        id: &str,
        expected_version: u64,
        changes: Changes,
    ) -> Result<Written> {
        let op =
            Op::Update { collection: collection.to_owned(), id: id.to_owned(), expected_version, changes };
        let mut out = self.transaction(access, vec![op]).await?;
        out.pop().ok_or_else(|| StoreError::Invalid("empty result".into()))
    }

    /// Deletes one record (refused before retain-until without a legal override).
    pub async fn delete(
        &self,
        access: &Access,
        collection: &str,
        id: &str,
        expected_version: Option<u64>,
        legal_override: Option<LegalOverride>,
    ) -> Result<()> {
        let op = Op::Delete {
            collection: collection.to_owned(),
            id: id.to_owned(),
            expected_version,
            legal_override,
        };
        self.transaction(access, vec![op]).await.map(|_| ())
    }

    /// Runs several operations in one database transaction: all are applied, or (on any error,
    /// including a conflict) none.
    ///
    /// A write sealed under a subject key that another process re-encrypted away or shredded
    /// meanwhile is refused by the database and retried here with fresh keys; after
    /// a few attempts the error is [`StoreError::KeyChanged`] (retryable).
    pub async fn transaction(&self, access: &Access, ops: Vec<Op>) -> Result<Vec<Written>> {
        self.run_transaction(access, ops, None).await
    }

    /// [`Store::transaction`], with `audit` (if any) appended in the same database transaction
    /// (after the rows and their row log entries; the head lock is taken first).
    pub(crate) async fn run_transaction(
        &self,
        access: &Access,
        ops: Vec<Op>,
        audit: Option<&AuditAppend>,
    ) -> Result<Vec<Written>> {
        access.require_write("a write")?;
        let mut attempt = 1;
        loop {
            match self.write_pipelined(access, &ops, audit).await {
                Ok(written) => {
                    tracing::debug!(tenant = %access.tenant, ops = written.len(), "kluis-store transaction committed");
                    return Ok(written);
                }
                Err(StoreError::KeyChanged { .. }) if attempt < KEY_CHANGED_RETRIES => {
                    self.forget_cached_keys(&access.tenant);
                    attempt += 1;
                }
                // A deadlock victim (e.g. MariaDB, a writer's share locks against a concurrent
                // re-encryption) was rolled back whole: run it again.
                Err(e) if e.is_deadlock() && attempt < KEY_CHANGED_RETRIES => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt of a transaction. Everything is checked and every subject key is at hand
    /// before the database transaction begins; then the writes are sealed one operation at a
    /// time while the earlier ones are being written (the database works on one statement
    /// while the next record is sealed). Any error, in sealing or in writing, rolls all of it
    /// back.
    async fn write_pipelined(
        &self,
        access: &Access,
        ops: &[Op],
        audit: Option<&AuditAppend>,
    ) -> Result<Vec<Written>> {
        let mut tags = Tags::new();
        let (planned, written) = self.plan_transaction(access, ops, &mut tags).await?;
        self.write_planned(access, planned, audit, tags).await?;
        Ok(written)
    }

    /// Seals `planned` while writing it in one database transaction (audit head lock first, the
    /// entry last).
    async fn write_planned(
        &self,
        access: &Access,
        planned: Vec<Planned<'_>>,
        audit: Option<&AuditAppend>,
        mut tags: Tags,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Option<WriteOp>>(PIPELINE_DEPTH);
        let seal = async {
            let tx = tx;
            if let Some(a) = audit
                && tx.send(Some(WriteOp::Audit(a.clone()))).await.is_err()
            {
                // The writer stopped: its error is the answer.
                return Ok(());
            }
            for p in planned {
                for w in self.seal_planned(access, p, &mut tags)? {
                    if tx.send(Some(w)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            // The end mark: only now may the writer commit.
            let _ = tx.send(None).await;
            Ok::<(), StoreError>(())
        };
        let (sealed, applied) = tokio::join!(seal, self.backend.apply_stream(rx));
        // A sealing error closed the channel without the end mark: the writer rolled back.
        sealed?;
        applied
    }

    /// Drops every cached subject key of a tenant (after [`StoreError::KeyChanged`]).
    pub(crate) fn forget_cached_keys(&self, tenant: &TenantId) {
        if let Ok(mut c) = self.subject_keys.lock() {
            c.keys.retain(|k, _| k.0 != tenant.as_str());
            c.newest.retain(|k, _| k.0 != tenant.as_str());
        }
    }

    /// Checks a transaction's operations, reads what updates and deletes need, and gets every
    /// subject key the writes will be sealed under into `tags`; seals nothing, writes nothing.
    async fn plan_transaction<'o>(
        &self,
        access: &Access,
        ops: &'o [Op],
        tags: &mut Tags,
    ) -> Result<(Vec<Planned<'o>>, Vec<Written>)> {
        let tenant = access.tenant.to_string();
        let now = now_unix();
        let mut planned = Vec::with_capacity(ops.len());
        let mut written = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Insert { collection, record } => {
                    // The rules an import checks up front (NewRecord::check); the domain keys are
                    // checked by prepare_fields.
                    record.check(&self.schema, collection)?;
                    let coll = self.schema.collection(collection)?;
                    let id = match &record.id {
                        Some(id) => id.clone(),
                        None => random_id()?,
                    };
                    access.in_scope(collection, &id, &record.subject)?;
                    self.prepare_fields(access, coll, &record.subject, &record.fields, tags, true).await?;
                    let row = RecordRow {
                        tenant: tenant.clone(),
                        collection: collection.clone(),
                        id: id.clone(),
                        subject: record.subject.clone(),
                        version: 1,
                        created_at: now,
                        updated_at: now,
                        retain_until: record.retain_until,
                        tag: Vec::new(),
                    };
                    planned.push(Planned::Insert { row, fields: &record.fields });
                    written.push(Written { collection: collection.clone(), id, version: 1 });
                }
                Op::Update { collection, id, expected_version, changes } => {
                    let expected_version = *expected_version;
                    let coll = self.schema.collection(collection)?;
                    check_id("record id", id)?;
                    for f in &changes.remove {
                        let def = field_def(coll, f)?;
                        access.require(def.domain.as_str())?;
                    }
                    let table = self.layout.table(collection)?;
                    let current = self.backend.get(table, &tenant, id).await?.ok_or_else(|| {
                        StoreError::NotFound { collection: collection.clone(), record: id.clone() }
                    })?;
                    access.in_scope(collection, id, &current.record.subject)?;
                    Self::check_row(access, &current, tags)?;
                    let current_tag = current.record.tag.clone();
                    // Retention can be extended, never shortened while it runs.
                    if let (Some(old), Some(new)) = (current.record.retain_until, changes.retain_until)
                        && new < old
                        && old > now
                    {
                        return Err(StoreError::RetentionActive {
                            collection: collection.clone(),
                            record: id.clone(),
                            retain_until: old,
                        });
                    }
                    self.prepare_fields(access, coll, &current.record.subject, &changes.set, tags, false)
                        .await?;
                    let version = expected_version
                        .checked_add(1)
                        .ok_or_else(|| StoreError::Invalid("version overflow".into()))?;
                    let row = RecordRow {
                        version: to_i64(version)?,
                        updated_at: now,
                        retain_until: changes.retain_until.or(current.record.retain_until),
                        ..current.record
                    };
                    planned.push(Planned::Update {
                        row,
                        expected_version: to_i64(expected_version)?,
                        set: &changes.set,
                        remove: &changes.remove,
                        current: current.fields,
                        current_tag,
                    });
                    written.push(Written { collection: collection.clone(), id: id.clone(), version });
                }
                Op::Delete { collection, id, expected_version, legal_override } => {
                    let table = self.layout.table(collection)?.clone();
                    check_id("record id", id)?;
                    let current = self.backend.get(&table, &tenant, id).await?.ok_or_else(|| {
                        StoreError::NotFound { collection: collection.clone(), record: id.clone() }
                    })?;
                    access.in_scope(collection, id, &current.record.subject)?;
                    // Deleting needs the keys of every domain the record holds, including the
                    // domains of the catalog documents attached to it (deleted with it).
                    for f in &current.fields {
                        access.require(&f.domain)?;
                    }
                    for d in self.backend.list_documents(&tenant, DocumentFilter::Record(id)).await? {
                        if d.subject == current.record.subject {
                            access.require(&d.domain)?;
                        }
                    }
                    let expected = match *expected_version {
                        Some(v) => to_i64(v)?,
                        None => current.record.version,
                    };
                    let mut writes = Vec::with_capacity(2);
                    if let Some(until) = current.record.retain_until
                        && until > now
                    {
                        let Some(o) = legal_override else {
                            return Err(StoreError::RetentionActive {
                                collection: collection.clone(),
                                record: id.clone(),
                                retain_until: until,
                            });
                        };
                        writes.push(WriteOp::Override(OverrideRow {
                            tenant: tenant.clone(),
                            action: "delete".into(),
                            target: format!("{collection}/{id}"),
                            reason: o.reason.clone(),
                            authorised_by: o.authorised_by.clone(),
                            at: now,
                        }));
                    }
                    writes.push(WriteOp::Delete {
                        table,
                        tenant: tenant.clone(),
                        id: id.clone(),
                        expected_version: Some(expected),
                    });
                    planned.push(Planned::Ready(writes));
                    written.push(Written { collection: collection.clone(), id: id.clone(), version: 0 });
                }
            }
        }
        Ok((planned, written))
    }

    /// The writes of one planned operation, sealed (no database, no waiting).
    fn seal_planned(&self, access: &Access, p: Planned<'_>, tags: &mut Tags) -> Result<Vec<WriteOp>> {
        Ok(match p {
            Planned::Insert { mut row, fields } => {
                let coll = self.schema.collection(&row.collection)?;
                let table = self.layout.table(&row.collection)?.clone();
                let (fields, indexes) =
                    Self::seal_fields_now(access, coll, &row.id, &row.subject, fields, tags)?;
                row.tag = Self::row_tag(access, &row, &fields, tags)?;
                vec![WriteOp::Insert { table, record: row, fields, indexes }]
            }
            Planned::Update { mut row, expected_version, set, remove, current, current_tag } => {
                let coll = self.schema.collection(&row.collection)?;
                let table = self.layout.table(&row.collection)?.clone();
                let (fields, indexes) =
                    Self::seal_fields_now(access, coll, &row.id, &row.subject, set, tags)?;
                row.tag = Self::row_tag(access, &row, &Self::cells_after(current, &fields, remove), tags)?;
                vec![WriteOp::Update {
                    table,
                    record: row,
                    expected_version,
                    expected_tag: current_tag,
                    set_fields: fields,
                    remove_fields: remove.to_vec(),
                    set_indexes: indexes,
                    null_columns: Vec::new(),
                }]
            }
            Planned::Ready(writes) => writes,
        })
    }

    // ---------------------------------------------------------------- row tags

    /// The row tag key of `version` of the tenant's row_tags domain key, derived once per call.
    fn row_key<'c>(set: &DomainKeySet, version: u32, tags: &'c mut Tags) -> Result<&'c BlindIndexKey> {
        let tenant = set.tenant().as_str();
        let pos = match tags.row_keys.iter().position(|(t, v, _)| *v == version && t == tenant) {
            Some(p) => p,
            None => {
                let k = BlindIndexKey::derive(
                    set.key(version)?,
                    set.tenant(),
                    set.domain(),
                    "kluis-rows",
                    "tag",
                    32,
                )?;
                tags.row_keys.push((tenant.to_owned(), version, k));
                tags.row_keys.len() - 1
            }
        };
        tags.row_keys.get(pos).map(|(_, _, k)| k).ok_or_else(|| StoreError::Invalid("row key cache".into()))
    }

    /// The row tag of `row` with `cells` (every cell the row will hold), under the active version
    /// of the tenant's row_tags key.
    fn row_tag(access: &Access, row: &RecordRow, cells: &[FieldRow], tags: &mut Tags) -> Result<Vec<u8>> {
        let set = access.rows()?;
        let v = set.active_version().ok_or_else(|| {
            StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{}/{ROW_TAG_DOMAIN} (no active version)", access.tenant),
            })
        })?;
        let mac = Self::row_key(set, v, tags)?.index(&layout::tag_input(row, cells));
        let mut out = Vec::with_capacity(layout::ROW_TAG_LEN);
        out.push(layout::ROW_TAG_V1);
        out.extend_from_slice(&v.to_be_bytes());
        out.extend_from_slice(&mac);
        Ok(out)
    }

    /// Checks a row against its tag ([`StoreError::RowIntegrity`] naming the record if it does
    /// not match).
    fn check_row(access: &Access, stored: &StoredRecord, tags: &mut Tags) -> Result<()> {
        let r = &stored.record;
        let bad = || StoreError::RowIntegrity { collection: r.collection.clone(), record: r.id.clone() };
        if r.tenant != access.tenant.as_str() {
            return Err(bad());
        }
        let v = layout::tag_version(&r.tag).ok_or_else(bad)?;
        let set = access.rows()?;
        if set.key(v).is_err() {
            // No such version, or destroyed.
            return Err(bad());
        }
        let mac = Self::row_key(set, v, tags)?.index(&layout::tag_input(r, &stored.fields));
        match r.tag.get(5..) {
            Some(stored_mac) if ct_eq(stored_mac, &mac) => Ok(()),
            _ => Err(bad()),
        }
    }

    /// The cells a row holds after an update: `current` without the fields set or removed,
    /// then the new ones.
    fn cells_after(current: Vec<FieldRow>, set: &[FieldRow], remove: &[String]) -> Vec<FieldRow> {
        let mut out: Vec<FieldRow> = current
            .into_iter()
            .filter(|c| !remove.contains(&c.field) && !set.iter().any(|f| f.field == c.field))
            .collect();
        out.extend(set.iter().cloned());
        out
    }

    // ---------------------------------------------------------------- reads

    async fn open_record(&self, access: &Access, stored: StoredRecord, tags: &mut Tags) -> Result<Record> {
        access.in_scope(&stored.record.collection, &stored.record.id, &stored.record.subject)?;
        Self::check_row(access, &stored, tags)?;
        let table = self.layout.table(&stored.record.collection)?.clone();
        let r = stored.record;
        let mut fields = BTreeMap::new();
        // The associated data of each cell in turn (public bytes).
        let mut ad = Vec::with_capacity(160);
        let mut last: Option<(String, u32, Arc<SubjectKey>)> = None;
        for cell in stored.fields {
            let integrity = || StoreError::Integrity {
                collection: r.collection.clone(),
                record: r.id.clone(),
                field: cell.field.clone(),
            };
            let Some(set) = access.set(&cell.domain) else {
                // No key for this domain: withheld, and no decryption is attempted.
                fields.insert(cell.field, FieldValue::Withheld { domain: cell.domain });
                continue;
            };
            if !table.is_sealed(&cell.field) {
                // A clear field: its encoding, checked by the row tag already.
                let value = Value::decode(&cell.sealed).ok_or_else(integrity)?;
                fields.insert(cell.field, FieldValue::Value(value));
                continue;
            }
            let v = u32::try_from(cell.key_version).map_err(|_| integrity())?;
            // The previous cell's key when it is the same (cells of a domain share one).
            let sk = match &last {
                Some((d, lv, k)) if *lv == v && *d == cell.domain => k.clone(),
                _ => match tags.key(&r.subject, &cell.domain, v) {
                    Some(k) => k.clone(),
                    None => {
                        self.load_subject_key(set, &r.subject, Some(v), tags).await?.ok_or_else(integrity)?.1
                    }
                },
            };
            let ctx = Context {
                tenant: &access.tenant,
                domain: set.domain(),
                collection: &r.collection,
                field: &cell.field,
                record: &r.id,
            };
            let pt = sk.open_vec(&ctx, cell.sealed, &mut ad).map_err(|_| integrity())?;
            let value = Value::decode(pt.expose_secret()).ok_or_else(integrity)?;
            fields.insert(cell.field, FieldValue::Value(value));
            last = Some((cell.domain, v, sk));
        }
        Ok(Record {
            version: u64::try_from(r.version).map_err(|_| StoreError::RowIntegrity {
                collection: r.collection.clone(),
                record: r.id.clone(),
            })?,
            collection: r.collection,
            id: r.id,
            subject: r.subject,
            created_at: r.created_at,
            updated_at: r.updated_at,
            retain_until: r.retain_until,
            fields,
        })
    }

    /// Reads one record; `None` if absent.
    pub async fn get(&self, access: &Access, collection: &str, id: &str) -> Result<Option<Record>> {
        let mut tags = Tags::new();
        let table = self.layout.table(collection)?;
        check_id("record id", id)?;
        // Another collection or id is refused before reading; the subject is checked on the row
        // (open_record).
        let other = match &access.scope {
            Scope::Tenant => false,
            Scope::Collection { collection: c, .. } => c != collection,
            Scope::Record { collection: c, record: r, .. } => c != collection || r != id,
        };
        if other {
            return Err(StoreError::OutOfScope {
                what: format!("record {collection}/{id}"),
                scope: access.scope.to_string(),
            });
        }
        match self.backend.get(table, access.tenant.as_str(), id).await? {
            None => Ok(None),
            Some(s) => Ok(Some(self.open_record(access, s, &mut tags).await?)),
        }
    }

    /// The domains of the cells a record holds, from its row as stored (nothing is opened and
    /// the row tag is not checked: the read an authorization decision leads to checks it);
    /// `None` if the record is absent.
    pub async fn record_domains(
        &self,
        tenant: &TenantId,
        collection: &str,
        id: &str,
    ) -> Result<Option<BTreeSet<String>>> {
        let table = self.layout.table(collection)?;
        check_id("record id", id)?;
        Ok(self
            .backend
            .get(table, tenant.as_str(), id)
            .await?
            .map(|s| s.fields.into_iter().map(|f| f.domain).collect()))
    }

    /// Which of `ids` the caller's tenant already holds in `collection` (one query per 1,000 ids;
    /// nothing is opened), for an import that skips records already present.
    pub async fn existing_ids(
        &self,
        access: &Access,
        collection: &str,
        ids: &[&str],
    ) -> Result<BTreeSet<String>> {
        let table = self.layout.table(collection)?;
        for id in ids {
            check_id("record id", id)?;
        }
        Ok(self.backend.existing_ids(table, access.tenant.as_str(), ids).await?.into_iter().collect())
    }

    /// Which tenants hold a record with this collection and id, with its subject (clear
    /// columns; ids are unique per tenant only).
    pub async fn record_owners(&self, collection: &str, id: &str) -> Result<Vec<crate::audit::RecordOwner>> {
        let table = self.layout.table(collection)?;
        check_id("record id", id)?;
        self.backend.record_owners(table, id).await
    }

    /// A page of a collection's records (optionally of one subject), ordered by id.
    pub async fn list(
        &self,
        access: &Access,
        collection: &str,
        subject: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page> {
        let mut tags = Tags::new();
        self.schema.collection(collection)?;
        if let Some(s) = subject {
            check_id("subject id", s)?;
        }
        if let Some(a) = after {
            check_id("cursor", a)?;
        }
        access.collection_in_scope(collection, subject)?;
        let limit = limit.clamp(1, 1000);
        let table = self.layout.table(collection)?;
        // Each record is opened as its row arrives, while the database reads the next ones (both
        // in this task: the engine's own thread or server keeps reading meanwhile).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let read = self.backend.list_each(table, access.tenant.as_str(), subject, after, limit, tx);
        // Moves the receiver in: an error here drops it, and the read stops.
        let open = async move {
            let mut records = Vec::with_capacity(limit as usize);
            while let Some(s) = rx.recv().await {
                records.push(self.open_record(access, s, &mut tags).await?);
            }
            Ok::<_, StoreError>(records)
        };
        let (read, opened) = tokio::join!(read, open);
        // A read error closed the channel early: it is the answer, not the shorter page.
        read?;
        let records = opened?;
        let full = records.len() == limit as usize;
        let next = if full { records.last().map(|r| r.id.clone()) } else { None };
        Ok(Page { records, next })
    }

    /// Records whose blind-indexed `field` equals `value` (confirmed by decrypting).
    pub async fn find(
        &self,
        access: &Access,
        collection: &str,
        field: &str,
        value: &Value,
    ) -> Result<Vec<Record>> {
        let mut tags = Tags::new();
        let coll = self.schema.collection(collection)?;
        let def = field_def(coll, field)?;
        if !def.blind_index {
            return Err(StoreError::NotIndexed {
                collection: collection.to_owned(),
                field: field.to_owned(),
            });
        }
        check_value(coll, def, value)?;
        if !matches!(&access.scope, Scope::Tenant)
            && !matches!(&access.scope, Scope::Collection { collection: c, .. } if c == collection)
        {
            return Err(StoreError::OutOfScope {
                what: format!("a search of collection {collection}"),
                scope: access.scope.to_string(),
            });
        }
        let set = access.require(def.domain.as_str())?;
        let encoded = value.encode();
        let mut candidates = Vec::new();
        for (v, state) in set.versions() {
            if state != KeyState::Destroyed {
                candidates.push((i64::from(v), Self::blind_index(set, v, collection, field, &encoded)?));
            }
        }
        let table = self.layout.table(collection)?;
        let rows = self.backend.find_index(table, access.tenant.as_str(), field, candidates).await?;
        let mut out = Vec::new();
        // Hits outside the scope (another subject's, under a subject scope) are not opened.
        for s in rows.into_iter().filter(|s| access.scope.covers(collection, &s.record.id, &s.record.subject))
        {
            // A blind index is not covered by the row tag: each hit is opened and compared.
            let rec = self.open_record(access, s, &mut tags).await?;
            let hit = rec.get(field).is_some_and(|v| ct_eq(&v.encode(), &encoded));
            if hit {
                out.push(rec);
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- shredding

    /// Crypto-shreds a subject: refuses while any of its records is under retention (unless a
    /// legal override is given, which is recorded), deletes its subject keys, records, cells,
    /// blind indexes and document catalog entries in one transaction, then for every domain the
    /// subject had a key in rotates the domain key, rewraps the other subjects' keys and re-derives
    /// blind indexes under the new version, destroys the old versions (so an older backup's copy of
    /// the subject key has no live wrapping key in this database), and purges the freed bytes from
    /// the database files. `access` must hold every domain of the schema; it is refreshed.
    pub async fn shred_subject(
        &self,
        provider: &dyn RootKeyProvider,
        access: &mut Access,
        subject: &str,
        legal_override: Option<LegalOverride>,
    ) -> Result<ShredReport> {
        self.shred_subject_with(provider, access, subject, legal_override, None).await
    }

    /// [`Store::shred_subject`], appending `entry` to the audit log in the transaction that removes
    /// the subject's keys and records (`Store::shred_subject_audited`).
    pub(crate) async fn shred_subject_with(
        &self,
        provider: &dyn RootKeyProvider,
        access: &mut Access,
        subject: &str,
        legal_override: Option<LegalOverride>,
        entry: Option<crate::audit::AuditAppend>,
    ) -> Result<ShredReport> {
        check_id("subject id", subject)?;
        access.whole_tenant("a shred")?;
        access.require_write("a shred")?;
        let tenant = access.tenant.clone();
        let now = now_unix();
        let records = self.backend.subject_records(&self.layout, tenant.as_str(), subject).await?;
        let mut audit = None;
        if let Some((r, until)) =
            records.iter().find_map(|r| r.retain_until.filter(|u| *u > now).map(|u| (r, u)))
        {
            let Some(o) = legal_override else {
                return Err(StoreError::RetentionActive {
                    collection: r.collection.clone(),
                    record: r.id.clone(),
                    retain_until: until,
                });
            };
            audit = Some(OverrideRow {
                tenant: tenant.to_string(),
                action: "shred".into(),
                target: format!("subject:{subject}"),
                reason: o.reason,
                authorised_by: o.authorised_by,
                at: now,
            });
        }
        let mut domains: BTreeSet<String> = self
            .schema
            .collections()
            .flat_map(|c| c.fields().map(|f| f.domain.to_string()).collect::<Vec<_>>())
            .collect();
        domains.extend(access.domains().map(str::to_owned));
        let mut affected = Vec::new();
        for d in &domains {
            if !self.backend.subject_keys(tenant.as_str(), d, subject).await?.is_empty() {
                access.require(d)?;
                affected.push(d.clone());
            }
        }
        let removed = self.backend.delete_subject(tenant.as_str(), subject, audit, entry).await?;
        if let Ok(mut c) = self.subject_keys.lock() {
            c.forget_subject(tenant.as_str(), None, subject);
        }
        let mut destroyed = Vec::new();
        for d in &affected {
            let domain = DomainName::new(d.clone())?;
            destroyed.extend(
                self.retire_domain_versions(provider, access, &domain)
                    .await?
                    .into_iter()
                    .map(|v| (d.clone(), v)),
            );
        }
        self.backend.purge().await?;
        tracing::info!(tenant = %tenant, records = removed, "kluis-store subject shredded");
        Ok(ShredReport { records_removed: removed, destroyed_versions: destroyed })
    }

    /// Rotates the domain key of `domain`, moves every subject key and blind index of the tenant
    /// onto the new version, then destroys all older versions. Returns the destroyed versions.
    pub async fn retire_domain_versions(
        &self,
        provider: &dyn RootKeyProvider,
        access: &mut Access,
        domain: &DomainName,
    ) -> Result<Vec<u32>> {
        let mut tags = Tags::new();
        let tenant = access.tenant.clone();
        let new_rec = self.rotate_verified(provider, &tenant, domain, None).await?;
        let set = self.key_set(provider, &tenant, domain).await?;
        let records = self.domain_records(&tenant, domain).await?;
        // Rewrap the remaining subject keys under the new version.
        let rows = self.backend.all_subject_keys(tenant.as_str(), domain.as_str()).await?;
        let mut rewrapped = Vec::with_capacity(rows.len());
        for row in &rows {
            let rec = Self::subject_record(row, &tenant, &set)?;
            let what = format!("subject key {tenant}/{domain}/{}", row.subject);
            let new = set.rewrap_subject_key(&rec).map_err(|e| key_integrity(what, e))?;
            rewrapped.push(SubjectKeyRow {
                wrapped: new.wrapped,
                wrap_version: i64::from(new_rec.version),
                ..row.clone()
            });
        }
        self.backend.rewrap_subject_keys(rewrapped).await?;
        access.sets.insert(domain.to_string(), Arc::new(set));
        // Re-derive blind indexes of this domain's fields under the new version.
        let mut ops = Vec::new();
        for (collection, record_id, field, kv) in
            self.backend.index_rows(&self.layout, tenant.as_str()).await?
        {
            let Ok(coll) = self.schema.collection(&collection) else { continue };
            let Some(def) = coll.field(&field) else { continue };
            if def.domain != *domain || kv == i64::from(new_rec.version) {
                continue;
            }
            let table = self.layout.table(&collection)?.clone();
            let Some(stored) = self.backend.get(&table, tenant.as_str(), &record_id).await? else {
                continue;
            };
            let rec = self.open_record(access, stored, &mut tags).await?;
            let Some(v) = rec.get(&field) else { continue };
            let set = access.require(domain.as_str())?;
            let idx = Self::blind_index(set, new_rec.version, &collection, &field, &v.encode())?;
            ops.push(WriteOp::SetIndex {
                table,
                tenant: tenant.to_string(),
                record_id: record_id.clone(),
                index: IndexRow { field: field.clone(), key_version: i64::from(new_rec.version), idx },
            });
        }
        self.backend.apply(ops).await?;
        // Destroy every older version: nothing depends on them any more (checked again in the
        // destroying transaction: a version a concurrent writer used meanwhile is kept).
        let mut destroyed = Vec::new();
        for r in &records {
            if r.state != KeyState::DecryptOnly {
                continue;
            }
            match self.destroy_verified(provider, &tenant, domain, r.version, None).await {
                Ok(()) => destroyed.push(r.version),
                Err(StoreError::KeyInUse { .. }) => tracing::warn!(
                    tenant = %tenant, domain = %domain, version = r.version,
                    "kluis-store: domain key version still in use after rotation; kept (re-encrypt, then retire it)"
                ),
                Err(e) => return Err(e),
            }
        }
        let set = self.key_set(provider, &tenant, domain).await?;
        access.sets.insert(domain.to_string(), Arc::new(set));
        if let Ok(mut c) = self.subject_keys.lock() {
            c.forget_domain(tenant.as_str(), domain.as_str());
        }
        Ok(destroyed)
    }

    /// Root key rotation, database side: rewraps every live domain key of every tenant under the
    /// provider's primary root version (call after rotating the keyring or KMS key). Once this is
    /// done and recorded, the old root version can be removed from the keyring, which makes every
    /// older database backup unreadable, including the copies of shredded subject keys in it.
    /// Returns how many keys were rewrapped.
    pub async fn rewrap_domain_keys(&self, provider: &dyn RootKeyProvider) -> Result<usize> {
        self.rewrap_domain_keys_with(provider, None).await
    }

    /// [`Store::rewrap_domain_keys`] with the audit entry `audit(rows rewrapped)` appended **in
    /// the same database transaction** as the rewrapped rows (in its own when there is nothing
    /// to rewrap): both are committed, or neither.
    pub async fn rewrap_domain_keys_audited(
        &self,
        provider: &dyn RootKeyProvider,
        audit: &(dyn Fn(usize) -> AuditAppend + Send + Sync),
    ) -> Result<usize> {
        self.rewrap_domain_keys_with(provider, Some(audit)).await
    }

    async fn rewrap_domain_keys_with(
        &self,
        provider: &dyn RootKeyProvider,
        audit: Option<&(dyn Fn(usize) -> AuditAppend + Send + Sync)>,
    ) -> Result<usize> {
        self.check_rollback(provider).await?;
        let primary = provider.primary_version().await?;
        let rows = self.backend.all_domain_keys().await?;
        let mut out = Vec::new();
        for row in rows {
            let tenant = TenantId::new(row.tenant.clone())?;
            let domain = DomainName::new(row.domain.clone())?;
            let mut recs = Self::records_from_rows(&tenant, &domain, std::slice::from_ref(&row))?;
            let Some(rec) = recs.pop() else { continue };
            let Some(w) = &rec.wrapped else { continue };
            if w.root_key_id == provider.root_key_id() && w.root_version == primary {
                continue;
            }
            let what = format!("domain key {tenant}/{domain} v{}", rec.version);
            let new = keys::rewrap_domain_key(provider, provider, &rec)
                .await
                .map_err(|e| key_integrity(what, e))?;
            let old = row.wrapped.clone().unwrap_or_default();
            for r in Self::rows_from_records(std::slice::from_ref(&new))? {
                out.push((r, old.clone()));
            }
        }
        let n = out.len();
        // One transaction for every row, each written only if it still holds the bytes read:
        // a provider failure above writes nothing, and so does a concurrent change.
        let entry = audit.map(|a| a(n));
        if n > 0 {
            self.backend.rewrap_domain_key_rows(out, entry).await?;
        } else if let Some(e) = entry {
            self.backend.apply(vec![WriteOp::Audit(e)]).await?;
        }
        Ok(n)
    }

    /// Every domain key record of every tenant, as stored (a root migration through another
    /// provider rewraps them; [`Store::store_rewrapped`] writes the result).
    pub async fn all_domain_key_records(&self) -> Result<Vec<DomainKeyRecord>> {
        let mut out = Vec::new();
        for row in self.backend.all_domain_keys().await? {
            let tenant = TenantId::new(row.tenant.clone())?;
            let domain = DomainName::new(row.domain.clone())?;
            out.extend(Self::records_from_rows(&tenant, &domain, std::slice::from_ref(&row))?);
        }
        Ok(out)
    }

    /// Writes rewrapped domain key records (`new`, each a record of `old` with another wrapped
    /// key) in one transaction, each only if its row still holds the wrapped key of `old`
    /// ([`StoreError::KeyChanged`] and nothing written otherwise).
    pub async fn store_rewrapped(&self, old: &[DomainKeyRecord], new: &[DomainKeyRecord]) -> Result<()> {
        self.store_rewrapped_audited(old, new, None).await
    }

    /// [`Store::store_rewrapped`] with `audit` (if any) appended in the same database transaction
    /// as the rows (in its own when there is nothing to write).
    pub async fn store_rewrapped_audited(
        &self,
        old: &[DomainKeyRecord],
        new: &[DomainKeyRecord],
        audit: Option<AuditAppend>,
    ) -> Result<()> {
        let mut out = Vec::with_capacity(new.len());
        for n in new {
            let o = old
                .iter()
                .find(|o| o.tenant == n.tenant && o.domain == n.domain && o.version == n.version)
                .ok_or_else(|| {
                    StoreError::Invalid(format!(
                        "domain key {}/{} v{} was not read",
                        n.tenant, n.domain, n.version
                    ))
                })?;
            if (o.state, o.tag) != (n.state, n.tag) {
                return Err(StoreError::Invalid(format!(
                    "domain key {}/{} v{}: a rewrap changes the wrapped key only",
                    n.tenant, n.domain, n.version
                )));
            }
            let old_bytes = o.wrapped.as_ref().map(WrappedKey::to_bytes).transpose()?.unwrap_or_default();
            for r in Self::rows_from_records(std::slice::from_ref(n))? {
                out.push((r, old_bytes.clone()));
            }
        }
        if out.is_empty() {
            return match audit {
                Some(e) => self.backend.apply(vec![WriteOp::Audit(e)]).await,
                None => Ok(()),
            };
        }
        self.backend.rewrap_domain_key_rows(out, audit).await
    }

    // ---------------------------------------------------------------- rotation and re-encryption

    /// A subject key wrapped under a domain key version newer than any the caller holds: the
    /// domain key was rotated after the caller unlocked (retryable after unlocking again).
    fn require_version(set: &DomainKeySet, wrap_version: u32) -> Result<()> {
        let newest = set.versions().iter().map(|(v, _)| *v).max();
        if newest.is_none_or(|n| wrap_version > n) {
            return Err(StoreError::KeyChanged {
                what: format!(
                    "domain key {}/{} v{wrap_version} is newer than the caller's keys: unlock again",
                    set.tenant(),
                    set.domain()
                ),
            });
        }
        Ok(())
    }

    fn open_row_owned(set: &DomainKeySet, row: &SubjectKeyRow) -> Result<(u32, SubjectKey)> {
        let tenant = set.tenant();
        let what = || format!("subject key {}/{}/{} v{}", tenant, set.domain(), row.subject, row.version);
        let rec = Self::subject_record(row, tenant, set)?;
        let wv = DomainKeySet::subject_key_wrapping_version(&rec).map_err(|e| key_integrity(what(), e))?;
        Self::require_version(set, wv)?;
        let key = set.open_subject_key(&rec).map_err(|e| key_integrity(what(), e))?;
        Ok((rec.version, key))
    }

    /// The newest subject key of (caller's tenant, `domain`, `subject`) with its version,
    /// created (version 1, wrapped under the active domain key version) if the subject has none.
    /// For documents: the catalog's `key_ref` is then `subject:<domain>:v<version>`.
    pub async fn subject_key(
        &self,
        access: &Access,
        domain: &DomainName,
        subject: &str,
    ) -> Result<(u32, SubjectKey)> {
        check_id("subject id", subject)?;
        let set = access.require(domain.as_str())?;
        let (t, d) = (access.tenant.as_str(), domain.as_str());
        let mut rows = self.backend.subject_keys(t, d, subject).await?;
        if rows.is_empty() {
            self.backend.insert_subject_key(Self::new_subject_key_row(set, subject, 1)?).await?;
            rows = self.backend.subject_keys(t, d, subject).await?;
        }
        let row = rows
            .last()
            .ok_or_else(|| StoreError::KeyChanged { what: format!("subject key {t}/{d}/{subject}") })?;
        Self::open_row_owned(set, row)
    }

    /// Version `version` of the subject key of (caller's tenant, `domain`, `subject`).
    /// [`StoreError::Shredded`] if the subject has no key at all in this domain,
    /// [`kluis_core::Error::UnknownKey`] if only that version is gone (re-encrypted away).
    pub async fn subject_key_version(
        &self,
        access: &Access,
        domain: &DomainName,
        subject: &str,
        version: u32,
    ) -> Result<SubjectKey> {
        check_id("subject id", subject)?;
        let set = access.require(domain.as_str())?;
        let (t, d) = (access.tenant.as_str(), domain.as_str());
        let rows = self.backend.subject_keys(t, d, subject).await?;
        if rows.is_empty() {
            return Err(StoreError::Shredded { tenant: t.to_owned(), subject: subject.to_owned() });
        }
        let row = rows.iter().find(|r| r.version == i64::from(version)).ok_or_else(|| {
            StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("subject key {t}/{d}/{subject} v{version}"),
            })
        })?;
        Ok(Self::open_row_owned(set, row)?.1)
    }

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

    /// Per domain key version (of one tenant, or all): its state and what still depends on it.
    /// A version can be retired ([`Store::retire_domain_version`]) when it is not active and
    /// [`KeyUsage::is_unused`].
    pub async fn key_usage(&self, tenant: Option<&TenantId>) -> Result<Vec<KeyUsage>> {
        let rows = self.backend.key_usage(&self.layout, tenant.map(TenantId::as_str)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if r.tenant == META_TENANT {
                continue;
            }
            let what = || StoreError::KeyIntegrity {
                what: format!("domain key {}/{} v{}", r.tenant, r.domain, r.version),
            };
            out.push(KeyUsage {
                tenant: TenantId::new(r.tenant.clone())?,
                domain: DomainName::new(r.domain.clone())?,
                version: u32::try_from(r.version).map_err(|_| what())?,
                // A version used by subject keys but without a row of its own: gone.
                state: KeyState::parse(&r.state).unwrap_or(KeyState::Destroyed),
                subject_keys: r.subject_keys,
                records: r.records,
                documents: r.documents,
            });
        }
        Ok(out)
    }

    /// Rotates the domain key of (tenant, domain): a new version becomes active (new subject
    /// keys and blind indexes use it), the old active version becomes decrypt-only. Nothing is
    /// re-encrypted yet: run [`Store::reencrypt_step`] (with keys unlocked after the rotation)
    /// until it reports nothing remaining, then [`Store::retire_domain_version`]. Returns the
    /// new version.
    pub async fn rotate_domain_key(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<u32> {
        self.rotate_domain_key_with(provider, tenant, domain, None).await
    }

    /// [`Store::rotate_domain_key`] with the audit entry `audit(new version)` appended **in the
    /// same database transaction** as the new key row: both are committed, or neither.
    pub async fn rotate_domain_key_audited(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        audit: &(dyn Fn(u32) -> AuditAppend + Send + Sync),
    ) -> Result<u32> {
        self.rotate_domain_key_with(provider, tenant, domain, Some(audit)).await
    }

    async fn rotate_domain_key_with(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        audit: Option<&(dyn Fn(u32) -> AuditAppend + Send + Sync)>,
    ) -> Result<u32> {
        self.check_rollback(provider).await?;
        let new_rec = self.rotate_verified(provider, tenant, domain, audit).await?;
        tracing::info!(tenant = %tenant, domain = %domain, version = new_rec.version, "kluis-store domain key rotated");
        Ok(new_rec.version)
    }

    /// Rotation on a verified set: the new version is inserted and every live row retagged (the
    /// old active one turned decrypt-only) in one transaction.
    async fn rotate_verified(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        audit: Option<&(dyn Fn(u32) -> AuditAppend + Send + Sync)>,
    ) -> Result<DomainKeyRecord> {
        Self::not_row_tags(domain)?;
        let (old_rows, mut records, set) = self.verified_records(provider, tenant, domain).await?;
        let (new_rec, _) = keys::rotate_domain_key(provider, &set, &mut records).await?;
        let mut rows = Self::rows_from_records(&records)?;
        let new_row = rows.pop().ok_or_else(|| StoreError::Invalid("empty rotation".into()))?;
        let entry = audit.map(|a| a(new_rec.version));
        self.backend.rotate_domain_keys(key_row_updates(&old_rows, &rows), new_row, entry).await?;
        Ok(new_rec)
    }

    /// Every row is tagged under the row_tags key's version 1: rotating it (and then destroying
    /// the version the rows need) is refused until re-tagging exists.
    fn not_row_tags(domain: &DomainName) -> Result<()> {
        if domain.as_str() == ROW_TAG_DOMAIN {
            return Err(StoreError::Invalid(format!(
                "the {ROW_TAG_DOMAIN} key is not rotated or retired: every record row is tagged under it"
            )));
        }
        Ok(())
    }

    /// Destroys `version` on a verified set, retagging the remaining live rows, in the backend's
    /// one transaction that checks nothing uses the version.
    async fn destroy_verified(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        version: u32,
        audit: Option<AuditAppend>,
    ) -> Result<()> {
        Self::not_row_tags(domain)?;
        let (old_rows, mut records, set) = self.verified_records(provider, tenant, domain).await?;
        let Some(rec) = records.iter_mut().find(|r| r.version == version) else {
            return Err(StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{tenant}/{domain} v{version}"),
            }));
        };
        match rec.state {
            KeyState::Destroyed => return Ok(()),
            KeyState::Active => {
                return Err(StoreError::ActiveKey {
                    tenant: tenant.to_string(),
                    domain: domain.to_string(),
                    version,
                });
            }
            _ => keys::destroy_domain_key(rec)?,
        }
        set.tag_records(&mut records, None)?;
        let rows = Self::rows_from_records(&records)?;
        let updates = key_row_updates(&old_rows, &rows);
        self.backend
            .destroy_domain_version(
                &self.layout,
                tenant.as_str(),
                domain.as_str(),
                i64::from(version),
                updates,
                audit,
            )
            .await
    }

    /// One step of re-encryption after a rotation: up to `max_subjects` subjects whose subject
    /// key is wrapped under an older domain key version get a new subject key version wrapped
    /// under the active one; every cell of `domain` of that subject is re-sealed under it and its
    /// blind indexes re-derived under the active version; older subject key versions that no
    /// cell and no catalog document uses any more are deleted. One database transaction per
    /// subject (a crash loses nothing; the next step continues). A record changed concurrently
    /// makes its subject count as a conflict, left for the next step; nothing a writer did is
    /// overwritten. `access` must hold `domain`, unlocked after the rotation
    /// ([`StoreError::KeyChanged`] otherwise).
    pub async fn reencrypt_step(
        &self,
        access: &Access,
        domain: &DomainName,
        max_subjects: usize,
    ) -> Result<ReencryptProgress> {
        access.whole_tenant("a re-encryption")?;
        access.require_write("a re-encryption")?;
        let set = access.require(domain.as_str())?;
        let records = self.domain_records(&access.tenant, domain).await?;
        let db_active = keys::validate_versions(&records)
            .map_err(|e| key_integrity(format!("domain key {}/{domain}", access.tenant), e))?;
        let Some(active) = db_active else {
            return Err(StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{}/{domain} (no active version)", access.tenant),
            }));
        };
        if set.active_version() != Some(active) {
            return Err(StoreError::KeyChanged {
                what: format!(
                    "the caller's keys of {}/{domain} are older than the database's (active v{active}): unlock again",
                    access.tenant
                ),
            });
        }
        let (t, d) = (access.tenant.as_str(), domain.as_str());
        let limit = u32::try_from(max_subjects.max(1)).unwrap_or(u32::MAX);
        let mut tags = Tags::new();
        let mut progress = ReencryptProgress::default();
        for subject in self.backend.reencrypt_candidates(&self.layout, t, d, i64::from(active), limit).await?
        {
            match self.reencrypt_subject(access, set, &subject, active, &mut tags).await? {
                Some(resealed) => {
                    progress.subjects_moved += 1;
                    progress.records_resealed += resealed;
                }
                None => progress.conflicts += 1,
            }
        }
        progress.remaining_subjects =
            self.backend.count_stale_subjects(&self.layout, t, d, i64::from(active)).await?;
        tracing::info!(
            tenant = %access.tenant, domain = %domain, moved = progress.subjects_moved,
            remaining = progress.remaining_subjects, conflicts = progress.conflicts,
            "kluis-store re-encryption step"
        );
        Ok(progress)
    }

    /// One subject of [`Store::reencrypt_step`]: `Some(records re-sealed)`, or `None` on a
    /// concurrent change (nothing written).
    async fn reencrypt_subject(
        &self,
        access: &Access,
        set: &DomainKeySet,
        subject: &str,
        active: u32,
        tags: &mut Tags,
    ) -> Result<Option<u64>> {
        let (t, d) = (access.tenant.as_str(), set.domain().as_str());
        if let Ok(mut c) = self.subject_keys.lock() {
            c.forget_subject(t, Some(d), subject);
        }
        tags.forget_subject(subject);
        let rows = self.backend.subject_keys(t, d, subject).await?;
        let Some(newest) = rows.last() else { return Ok(Some(0)) };
        let newest_wrap = kluis_core::SealedHeader::parse(&newest.wrapped).map(|h| h.key.version).ok();
        let (target, target_key, new_key) =
            if newest_wrap == Some(active) && newest.wrap_version == i64::from(active) {
                let (v, k) = Self::open_row_owned(set, newest)?;
                (v, k, None)
            } else {
                let next = u32::try_from(newest.version)
                    .ok()
                    .and_then(|v| v.checked_add(1))
                    .ok_or_else(|| StoreError::Invalid("subject key versions exhausted".into()))?;
                let (row, key) = Self::new_subject_key_pair(set, subject, next)?;
                (next, key, Some(row))
            };
        let mut plan_records = Vec::new();
        let mut resealed = 0u64;
        for stored in self.backend.subject_cells(&self.layout, t, d, subject).await? {
            // The whole row is checked, and its new tag covers it with the re-sealed cells.
            Self::check_row(access, &stored, tags)?;
            let r = &stored.record;
            let coll = self.schema.collection(&r.collection).ok();
            let mut cells = Vec::new();
            let mut indexes = Vec::new();
            let table = self.layout.table(&stored.record.collection)?;
            // Clear fields have no subject key: nothing to re-seal.
            for cell in stored.fields.iter().filter(|c| c.domain == d && table.is_sealed(&c.field)) {
                let integrity = || StoreError::Integrity {
                    collection: r.collection.clone(),
                    record: r.id.clone(),
                    field: cell.field.clone(),
                };
                // The header's version is the one the cell really needs (authenticated on open).
                let hv = kluis_core::SealedHeader::parse(&cell.sealed).map_err(|_| integrity())?.key.version;
                let def = coll.and_then(|c| c.field(&cell.field));
                let indexed = def.is_some_and(|f| f.blind_index && f.domain == *set.domain());
                let needs_reseal = hv != target || cell.key_version != i64::from(target);
                if !needs_reseal && !indexed {
                    continue;
                }
                let ctx = Context {
                    tenant: &access.tenant,
                    domain: set.domain(),
                    collection: &r.collection,
                    field: &cell.field,
                    record: &r.id,
                };
                let (_, old) =
                    self.load_subject_key(set, subject, Some(hv), tags).await?.ok_or_else(integrity)?;
                let pt = old.open(&ctx, &cell.sealed).map_err(|_| integrity())?;
                if needs_reseal {
                    cells.push(FieldRow {
                        field: cell.field.clone(),
                        domain: cell.domain.clone(),
                        sealed: target_key.seal(&ctx, pt.expose_secret())?,
                        key_version: i64::from(target),
                    });
                }
                if indexed {
                    indexes.push(IndexRow {
                        field: cell.field.clone(),
                        key_version: i64::from(active),
                        idx: Self::blind_index(set, active, &r.collection, &cell.field, pt.expose_secret())?,
                    });
                }
            }
            if !cells.is_empty() {
                resealed += 1;
            }
            if !cells.is_empty() || !indexes.is_empty() {
                let tag =
                    Self::row_tag(access, r, &Self::cells_after(stored.fields.clone(), &cells, &[]), tags)?;
                plan_records.push(ReencryptRecord {
                    table: self.layout.table(&r.collection)?.clone(),
                    id: r.id.clone(),
                    version: r.version,
                    cells,
                    indexes,
                    tag,
                    expected_tag: r.tag.clone(),
                });
            }
        }
        let drop_versions: Vec<i64> =
            rows.iter().map(|r| r.version).filter(|v| *v != i64::from(target)).collect();
        let plan = ReencryptPlan {
            tenant: t.to_owned(),
            domain: d.to_owned(),
            subject: subject.to_owned(),
            new_key,
            records: plan_records,
            drop_versions,
            tables: self.layout.tables().to_vec(),
        };
        let outcome = self.backend.reencrypt_subject(plan).await?;
        if let Ok(mut c) = self.subject_keys.lock() {
            c.forget_subject(t, Some(d), subject);
        }
        tags.forget_subject(subject);
        Ok(outcome.applied.then_some(resealed))
    }

    /// Destroys version `version` of a domain key (state destroyed, wrapped bytes removed), in
    /// one transaction that first checks nothing depends on it: refused with
    /// [`StoreError::KeyInUse`] while any subject key, record cell, blind index or catalog
    /// document still uses it, and with [`StoreError::ActiveKey`] for the active version.
    pub async fn retire_domain_version(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        version: u32,
    ) -> Result<()> {
        self.retire_domain_version_with(provider, tenant, domain, version, None).await
    }

    /// [`Store::retire_domain_version`] with `audit` appended **in the same database
    /// transaction** as the destruction: both are committed, or neither (a version destroyed
    /// already commits nothing, the entry included).
    pub async fn retire_domain_version_audited(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        version: u32,
        audit: AuditAppend,
    ) -> Result<()> {
        self.retire_domain_version_with(provider, tenant, domain, version, Some(audit)).await
    }

    async fn retire_domain_version_with(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        version: u32,
        audit: Option<AuditAppend>,
    ) -> Result<()> {
        self.check_rollback(provider).await?;
        self.destroy_verified(provider, tenant, domain, version, audit).await?;
        tracing::info!(tenant = %tenant, domain = %domain, version, "kluis-store domain key version retired");
        Ok(())
    }

    // ---------------------------------------------------------------- schema migration

    /// Moves the stored data of the caller's tenant to `target`, a newer version of this store's
    /// schema: a field whose domain changed is re-sealed under the subject key of the new domain
    /// (and its blind index re-derived); a field that gained a blind index gets one; a field that
    /// lost it has it dropped. Each record is rewritten in its own transaction with the usual
    /// version check; a record changed concurrently is counted in `conflicts` and left for the
    /// next run. The migration is idempotent: run it until it reports nothing to do, then use a
    /// `Store` built with `target`. `access` must hold the old and the new domains.
    pub async fn migrate_schema(&self, access: &Access, target: &Schema) -> Result<MigrationReport> {
        access.whole_tenant("a schema migration")?;
        access.require_write("a schema migration")?;
        let mut tags = Tags::new();
        let mut report = MigrationReport::default();
        let tenant = access.tenant.to_string();
        // The target's columns (fields added, blind indexes added) exist before anything moves.
        let target_layout = Layout::of(target);
        self.backend.install(&target_layout).await?;
        for tcoll in target.collections() {
            let Ok(old) = self.schema.collection(&tcoll.name) else { continue };
            let new_table = target_layout.table(&tcoll.name)?;
            let changed: Vec<&FieldDef> = tcoll
                .fields()
                .filter(|f| {
                    old.field(&f.name).is_none_or(|o| {
                        o.domain != f.domain || o.blind_index != f.blind_index || o.clear != f.clear
                    })
                })
                .collect();
            // Read through the current columns and, for a field changing between sealed and
            // clear, its target column too: whichever holds the value (a record an earlier run
            // moved has it in the target column), so the row tag is checked over what is there.
            let mut read_table = (**self.layout.table(&tcoll.name)?).clone();
            for f in &changed {
                if old.field(&f.name).is_some_and(|o| o.clear != f.clear)
                    && let Some(c) = new_table.cell(&f.name)
                {
                    read_table.cells.push(c.clone());
                }
            }
            if changed.is_empty() {
                continue;
            }
            for f in &changed {
                access.require(f.domain.as_str())?;
            }
            let mut after: Option<String> = None;
            loop {
                let page = self.backend.list(&read_table, &tenant, None, after.as_deref(), 200).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.record.id.clone());
                let full = page.len() == 200;
                for stored in page {
                    Self::check_row(access, &stored, &mut tags)?;
                    let ops = self
                        .migrate_record(access, (tcoll, new_table), &changed, stored, &mut report, &mut tags)
                        .await?;
                    let Some(ops) = ops else { continue };
                    match self.backend.apply(ops).await {
                        Ok(()) => report.records_updated += 1,
                        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
                            report.conflicts += 1
                        }
                        Err(e) => return Err(e),
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok(report)
    }

    async fn migrate_record(
        &self,
        access: &Access,
        (tcoll, table): (&Collection, &Arc<Table>),
        changed: &[&FieldDef],
        stored: StoredRecord,
        report: &mut MigrationReport,
        tags: &mut Tags,
    ) -> Result<Option<Vec<WriteOp>>> {
        let r = &stored.record;
        let old_table = self.layout.table(&r.collection)?;
        let mut set_fields = Vec::new();
        let mut set_indexes = Vec::new();
        let mut null_columns = Vec::new();
        let mut extra = Vec::new();
        for def in changed {
            let Some(cell) = stored.fields.iter().find(|c| c.field == def.name) else { continue };
            let integrity = || StoreError::Integrity {
                collection: r.collection.clone(),
                record: r.id.clone(),
                field: cell.field.clone(),
            };
            // A cell read from a clear column has key version 0 (subject key versions start at 1).
            let was_clear = cell.key_version == 0;
            if was_clear && def.clear {
                // Clear before and after (its domain changed): nothing is sealed, nothing moves.
                continue;
            }
            let same_index = self
                .schema
                .collection(&r.collection)
                .ok()
                .and_then(|c| c.field(&def.name))
                .is_some_and(|o| o.blind_index == def.blind_index);
            if !was_clear && !def.clear && cell.domain == def.domain.as_str() && same_index {
                // Sealed in the right domain with the right index: moved by an earlier run.
                continue;
            }
            let cell_version = u32::try_from(cell.key_version).map_err(|_| integrity())?;
            // The table says which domain a field's cells are in by the schema: a sealed cell an
            // earlier run already moved opens under the target domain, and is done.
            if !was_clear
                && !def.clear
                && cell.domain != def.domain.as_str()
                && let Some(set) = access.set(def.domain.as_str())
                && let Ok(Some((_, k))) =
                    self.load_subject_key(set, &r.subject, Some(cell_version), tags).await
            {
                let ctx = Context {
                    tenant: &access.tenant,
                    domain: &def.domain,
                    collection: &r.collection,
                    field: &cell.field,
                    record: &r.id,
                };
                if k.open(&ctx, &cell.sealed).is_ok() {
                    continue;
                }
            }
            // The value's encoding, opened if it was sealed.
            let plain: zeroize::Zeroizing<Vec<u8>> = if was_clear {
                zeroize::Zeroizing::new(cell.sealed.clone())
            } else {
                let old_set = access.require(&cell.domain)?;
                let (_, old_key) = self
                    .load_subject_key(old_set, &r.subject, Some(cell_version), tags)
                    .await?
                    .ok_or_else(integrity)?;
                let old_ctx = Context {
                    tenant: &access.tenant,
                    domain: old_set.domain(),
                    collection: &r.collection,
                    field: &cell.field,
                    record: &r.id,
                };
                let pt = old_key.open(&old_ctx, &cell.sealed).map_err(|_| integrity())?;
                zeroize::Zeroizing::new(pt.expose_secret().to_vec())
            };
            let new_set = access.require(def.domain.as_str())?;
            let index = |set: &DomainKeySet| -> Result<IndexRow> {
                let v =
                    set.active_version().ok_or_else(|| StoreError::Invalid("no active domain key".into()))?;
                Ok(IndexRow {
                    field: def.name.clone(),
                    key_version: i64::from(v),
                    idx: Self::blind_index(set, v, &tcoll.name, &def.name, &plain)?,
                })
            };
            // The columns the value leaves when it changes between sealed and clear.
            let leaving = |out: &mut Vec<String>| {
                if let Some(c) = old_table.cell(&def.name) {
                    out.push(c.sealed.clone());
                    if c.clear.is_none() {
                        out.push(c.version.clone());
                    }
                    if let Some((i, j)) = &c.index {
                        out.push(i.clone());
                        out.push(j.clone());
                    }
                }
            };
            if def.clear {
                // Sealed before: the value goes to its clear column, the sealed one is emptied.
                set_fields.push(FieldRow {
                    field: def.name.clone(),
                    domain: def.domain.to_string(),
                    sealed: plain.to_vec(),
                    key_version: 0,
                });
                leaving(&mut null_columns);
                report.cells_clear_changed += 1;
            } else if was_clear || cell.domain != def.domain.as_str() {
                let (new_version, new_key) = self.subject_key_for_write(new_set, &r.subject, tags).await?;
                let ctx = Context {
                    tenant: &access.tenant,
                    domain: &def.domain,
                    collection: &r.collection,
                    field: &cell.field,
                    record: &r.id,
                };
                set_fields.push(FieldRow {
                    field: def.name.clone(),
                    domain: def.domain.to_string(),
                    sealed: new_key.seal(&ctx, &plain)?,
                    key_version: i64::from(new_version),
                });
                if was_clear {
                    // The plaintext column is emptied in the same statement.
                    leaving(&mut null_columns);
                    report.cells_clear_changed += 1;
                } else {
                    report.cells_resealed += 1;
                }
                if def.blind_index {
                    set_indexes.push(index(new_set)?);
                    report.indexes_written += 1;
                }
            } else if def.blind_index {
                extra.push(WriteOp::SetIndex {
                    table: table.clone(),
                    tenant: r.tenant.clone(),
                    record_id: r.id.clone(),
                    index: index(new_set)?,
                });
                report.indexes_written += 1;
            } else {
                extra.push(WriteOp::DropIndex {
                    // The columns being given up are the current schema's.
                    table: old_table.clone(),
                    tenant: r.tenant.clone(),
                    record_id: r.id.clone(),
                    field: def.name.clone(),
                });
                report.indexes_dropped += 1;
            }
        }
        if set_fields.is_empty() && extra.is_empty() {
            return Ok(None);
        }
        let mut ops = Vec::with_capacity(1 + extra.len());
        if set_fields.is_empty() {
            // Only index entries change: the record's data and version stay as they are.
            return Ok(Some(extra));
        }
        // Re-sealed cells bump the version, so a concurrent writer that read the old cells conflicts.
        let new_version =
            r.version.checked_add(1).ok_or_else(|| StoreError::Invalid("version overflow".into()))?;
        let mut record = RecordRow { version: new_version, updated_at: now_unix(), ..r.clone() };
        record.tag = Self::row_tag(
            access,
            &record,
            &Self::cells_after(stored.fields.clone(), &set_fields, &[]),
            tags,
        )?;
        ops.push(WriteOp::Update {
            table: table.clone(),
            record,
            expected_version: r.version,
            expected_tag: r.tag.clone(),
            set_fields,
            remove_fields: Vec::new(),
            set_indexes,
            null_columns,
        });
        ops.extend(extra);
        Ok(Some(ops))
    }

    // ---------------------------------------------------------------- metadata

    async fn meta_set(&self, provider: &dyn RootKeyProvider) -> Result<DomainKeySet> {
        let tenant = TenantId::new(META_TENANT)?;
        let domain = DomainName::new(META_DOMAIN)?;
        self.ensure_domain_key_unchecked(provider, &tenant, &domain).await?;
        self.key_set_unchecked(provider, &tenant, &domain).await
    }

    fn meta_ctx<'a>(tenant: &'a TenantId, domain: &'a DomainName) -> Context<'a> {
        Context { tenant, domain, collection: "kluis_meta", field: META_GENERATION, record: "database" }
    }

    /// The rollback check, run whenever keys are unlocked ([`Store::unlock`], [`Store::key_set`]
    /// and every operation that unwraps or rewraps domain keys). For a provider that keeps a
    /// generation (the local keyring) it compares that generation with the one this database
    /// recorded, sealed under the store's metadata key so it cannot be forged:
    /// - a keyring older than the record: [`kluis_core::Error::KeyringRollback`];
    /// - a keyring newer than the record (an older record put back, an older database restored,
    ///   or a keyring change not recorded): [`kluis_core::Error::DatabaseBehindKeyring`];
    /// - no record while the database holds tenants' domain keys (the record was deleted, or the
    ///   database predates it): [`StoreError::MetadataMissing`]; on a database without any the
    ///   generation is recorded now (first use).
    ///
    /// A keyring and a database rolled back together to a matching older pair are not detected
    /// here (SECURITY.md). Providers without a generation (KMS) pass.
    pub async fn check_rollback(&self, provider: &dyn RootKeyProvider) -> Result<()> {
        match self.check_keyring_generation(provider).await? {
            GenerationStatus::InSync => Ok(()),
            GenerationStatus::DatabaseBehind { keyring, database } => {
                Err(StoreError::Core(kluis_core::Error::DatabaseBehindKeyring { keyring, database }))
            }
        }
    }

    /// Compares the provider's keyring generation with the one this database recorded (sealed, so
    /// an edit by a DBA is detected) and reports the outcome: [`GenerationStatus::InSync`], or
    /// [`GenerationStatus::DatabaseBehind`] (which [`Store::check_rollback`] refuses). A keyring
    /// older than the record is [`kluis_core::Error::KeyringRollback`]; a missing record on a
    /// database that holds domain keys is [`StoreError::MetadataMissing`]. On a database without
    /// domain keys the generation is recorded (first use).
    pub async fn check_keyring_generation(&self, provider: &dyn RootKeyProvider) -> Result<GenerationStatus> {
        let Some(keyring) = provider.generation() else { return Ok(GenerationStatus::InSync) };
        let sealed = match self.backend.meta(META_GENERATION).await? {
            Some(s) => s,
            None => {
                // First use: no tenant key yet (the metadata key may exist: another process that
                // is recording the generation right now creates it first).
                if self.backend.tenants().await?.iter().all(|t| t == META_TENANT) {
                    self.write_generation(provider, keyring).await?;
                    return Ok(GenerationStatus::InSync);
                }
                // Tenant keys are created only after the generation is recorded: one that
                // another process recorded and then made tenant keys after our first read is
                // there now. Missing still, it is missing.
                self.backend
                    .meta(META_GENERATION)
                    .await?
                    .ok_or(StoreError::MetadataMissing(META_GENERATION))?
            }
        };
        let (clear, sealed_part) = match sealed.split_first() {
            // Format 1: 0x01 || u64_be(generation) || sealed(u64_be(generation)): the value in
            // clear lets a keyring too old to open the record (it lacks the root key version the
            // metadata key is wrapped under now) be recognised.
            Some((&GENERATION_RECORD_V1, rest)) => match rest.split_first_chunk::<8>() {
                Some((g, s)) => (Some(u64::from_be_bytes(*g)), s),
                None => return Err(StoreError::MetadataTampered(META_GENERATION)),
            },
            // Written before format 1: the sealed value alone.
            _ => (None, sealed.as_slice()),
        };
        let verified = self.generation_seen.lock().ok().and_then(|g| g.clone());
        let opened = match verified {
            // The same bytes were opened before: no need to unwrap the metadata key again.
            Some((g, bytes)) if ct_eq(&bytes, &sealed) => Ok(g),
            _ => self.open_generation(provider, sealed_part).await,
        };
        let database = match (opened, clear) {
            (Ok(g), Some(c)) if g != c => return Err(StoreError::MetadataTampered(META_GENERATION)),
            (Ok(g), _) => {
                if let Ok(mut seen) = self.generation_seen.lock() {
                    *seen = Some((g, sealed.clone()));
                }
                g
            }
            // A keyring older than the record cannot open it once a root rotation rewrapped the
            // metadata key: that failure is the rollback.
            (Err(_), Some(c)) if keyring < c => {
                return Err(StoreError::Core(kluis_core::Error::KeyringRollback { keyring, database: c }));
            }
            (Err(e), _) => return Err(e),
        };
        Ok(keys::check_generation(keyring, database)?)
    }

    async fn open_generation(&self, provider: &dyn RootKeyProvider, sealed: &[u8]) -> Result<u64> {
        let set = self.meta_set(provider).await?;
        let ctx = Self::meta_ctx(set.tenant(), set.domain());
        let pt = set.open(&ctx, sealed).map_err(|_| StoreError::MetadataTampered(META_GENERATION))?;
        let b: [u8; 8] =
            pt.expose_secret().try_into().map_err(|_| StoreError::MetadataTampered(META_GENERATION))?;
        Ok(u64::from_be_bytes(b))
    }

    /// Records the provider's current keyring generation: after a keyring change (root rotation,
    /// new passphrase), at setup, or after checking why the database is behind. Refuses a keyring
    /// older than the record ([`kluis_core::Error::KeyringRollback`]).
    pub async fn record_keyring_generation(&self, provider: &dyn RootKeyProvider) -> Result<()> {
        let Some(g) = provider.generation() else { return Ok(()) };
        match self.check_keyring_generation(provider).await {
            Ok(GenerationStatus::InSync) => Ok(()),
            Ok(GenerationStatus::DatabaseBehind { .. }) | Err(StoreError::MetadataMissing(_)) => {
                self.write_generation(provider, g).await
            }
            Err(e) => Err(e),
        }
    }

    async fn write_generation(&self, provider: &dyn RootKeyProvider, g: u64) -> Result<()> {
        let set = self.meta_set(provider).await?;
        let ctx = Self::meta_ctx(set.tenant(), set.domain());
        let mut record = Vec::with_capacity(9 + 8 + 80);
        record.push(GENERATION_RECORD_V1);
        record.extend_from_slice(&g.to_be_bytes());
        record.extend_from_slice(&set.seal(&ctx, &g.to_be_bytes())?);
        self.backend.set_meta(META_GENERATION, record.clone()).await?;
        if let Ok(mut seen) = self.generation_seen.lock() {
            *seen = Some((g, record));
        }
        Ok(())
    }

    /// Upgrades a database written before state tags and signed Azure Key Vault wraps, trusting
    /// its key rows as they are now (an operator checks `kluis keys list` first): every domain
    /// key in a legacy envelope ([`RootKeyProvider::is_legacy`]) is rewrapped, every set without
    /// any state tag is tagged, and a missing keyring generation record is written. Sets that are
    /// already tagged are verified and left alone; a partly tagged set is refused. Each set is
    /// written in one transaction, only if its rows are still as read. Idempotent.
    pub async fn adopt_legacy_keys(&self, provider: &dyn RootKeyProvider) -> Result<AdoptReport> {
        let mut report = AdoptReport::default();
        if provider.generation().is_some() && self.backend.meta(META_GENERATION).await?.is_none() {
            self.record_keyring_generation(provider).await?;
            report.generation_recorded = true;
        }
        let all = self.backend.all_domain_keys().await?;
        let mut sets: BTreeMap<(String, String), Vec<DomainKeyRow>> = BTreeMap::new();
        for r in all {
            sets.entry((r.tenant.clone(), r.domain.clone())).or_default().push(r);
        }
        for ((t, d), old_rows) in sets {
            let tenant = TenantId::new(t)?;
            let domain = DomainName::new(d)?;
            let mut records = Self::records_from_rows(&tenant, &domain, &old_rows)?;
            let mut rewrapped = 0;
            for r in records.iter_mut() {
                let Some(w) = &r.wrapped else { continue };
                if !provider.is_legacy(w) {
                    continue;
                }
                let what = || format!("domain key {tenant}/{domain} v{}", r.version);
                let aad = keys::domain_key_ad(&tenant, &domain, r.version)?;
                let key = provider.unwrap_legacy(&aad, w).await.map_err(|e| key_integrity(what(), e))?;
                r.wrapped = Some(provider.wrap(&aad, &key).await?);
                rewrapped += 1;
            }
            let tagged =
                if records.iter().all(|r| r.tag.is_none()) && records.iter().any(|r| r.wrapped.is_some()) {
                    DomainKeySet::adopt_untagged(provider, &mut records)
                        .await
                        .map_err(|e| key_integrity(format!("domain key {tenant}/{domain}"), e))?;
                    true
                } else {
                    DomainKeySet::unwrap(provider, &records)
                        .await
                        .map_err(|e| key_integrity(format!("domain key {tenant}/{domain}"), e))?;
                    false
                };
            let rows = Self::rows_from_records(&records)?;
            let updates = key_row_updates(&old_rows, &rows);
            if !updates.is_empty() {
                self.backend.replace_domain_key_rows(updates).await?;
            }
            report.rewrapped += rewrapped;
            report.sets_tagged += usize::from(tagged);
        }
        Ok(report)
    }

    // ---------------------------------------------------------------- documents catalog

    /// Adds a documents catalog entry (issue 4 writes the blob). `row.tenant` must be the caller's.
    pub async fn insert_document(&self, access: &Access, row: DocumentRow) -> Result<()> {
        self.check_document(access, &row)?;
        self.backend.insert_document(row).await
    }

    /// [`Store::insert_document`] with an audit entry appended **in the same database
    /// transaction** (first): either the row and its entry are both committed, or neither is.
    pub async fn insert_document_audited(
        &self,
        access: &Access,
        row: DocumentRow,
        audit: crate::audit::AuditAppend,
    ) -> Result<()> {
        self.check_document(access, &row)?;
        self.backend.apply(vec![WriteOp::Audit(audit), WriteOp::InsertDocument(row)]).await
    }

    /// [`Store::delete_document`] with an audit entry appended in the same database transaction.
    /// `false` if the tenant has no such entry: then nothing is committed, not even the entry.
    /// The caller must hold the document's domain.
    pub async fn delete_document_audited(
        &self,
        access: &Access,
        document_id: &str,
        audit: crate::audit::AuditAppend,
    ) -> Result<bool> {
        check_id("document id", document_id)?;
        let Some(row) = self.backend.document(access.tenant.as_str(), document_id).await? else {
            return Ok(false);
        };
        access.require_write("a document delete")?;
        access.document_in_scope(&row)?;
        access.require(&row.domain)?;
        let op = WriteOp::DeleteDocument { tenant: row.tenant, document_id: row.document_id };
        match self.backend.apply(vec![WriteOp::Audit(audit), op]).await {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound { collection, .. }) if collection == "kluis_documents" => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn check_document(&self, access: &Access, row: &DocumentRow) -> Result<()> {
        if row.tenant != access.tenant.as_str() {
            return Err(StoreError::Invalid("a document of another tenant".into()));
        }
        access.require_write("a document write")?;
        access.document_in_scope(row)?;
        access.require(&row.domain)?;
        check_id("document id", &row.document_id)?;
        check_id("subject id", &row.subject)?;
        check_id("object name", &row.object_name)?;
        if let Some(r) = &row.record_id {
            check_id("record id", r)?;
        }
        if row.padded_size < 0 {
            return Err(StoreError::Invalid("negative document size".into()));
        }
        Ok(())
    }

    /// Catalog entries of a subject.
    pub async fn documents_of_subject(&self, access: &Access, subject: &str) -> Result<Vec<DocumentRow>> {
        check_id("subject id", subject)?;
        access.collection_in_scope(DOCUMENTS_SCOPE, Some(subject))?;
        self.backend.list_documents(access.tenant.as_str(), DocumentFilter::Subject(subject)).await
    }

    /// Catalog entries attached to a record.
    pub async fn documents_of_record(&self, access: &Access, record_id: &str) -> Result<Vec<DocumentRow>> {
        check_id("record id", record_id)?;
        let rows =
            self.backend.list_documents(access.tenant.as_str(), DocumentFilter::Record(record_id)).await?;
        // Entries outside the scope (another subject's) are left out.
        Ok(rows
            .into_iter()
            .filter(|d| access.scope.covers(DOCUMENTS_SCOPE, &d.document_id, &d.subject))
            .collect())
    }

    /// One catalog entry of the caller's tenant.
    pub async fn document(&self, access: &Access, document_id: &str) -> Result<Option<DocumentRow>> {
        check_id("document id", document_id)?;
        let row = self.backend.document(access.tenant.as_str(), document_id).await?;
        if let Some(r) = &row {
            access.document_in_scope(r)?;
        }
        Ok(row)
    }

    /// Replaces the catalog entry `new.document_id` of the caller's tenant if its object name is
    /// still `expected_object_name` (compare-and-swap); `false` if it changed or is gone.
    pub async fn replace_document(
        &self,
        access: &Access,
        expected_object_name: &str,
        new: DocumentRow,
    ) -> Result<bool> {
        self.check_document(access, &new)?;
        check_id("object name", expected_object_name)?;
        self.backend.replace_document(expected_object_name, new).await
    }

    /// Every blob object name referenced by any catalog entry of any tenant (for the blob
    /// store's garbage collection), sorted.
    pub async fn document_object_names(&self) -> Result<Vec<String>> {
        self.backend.document_object_names().await
    }

    /// Removes a catalog entry; `false` if absent.
    pub async fn delete_document(&self, access: &Access, document_id: &str) -> Result<bool> {
        check_id("document id", document_id)?;
        access.require_write("a document delete")?;
        if !matches!(access.scope, Scope::Tenant) {
            match self.backend.document(access.tenant.as_str(), document_id).await? {
                Some(row) => access.document_in_scope(&row)?,
                None => return Ok(false),
            }
        }
        self.backend.delete_document(access.tenant.as_str(), document_id).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::SqliteBackend;

    /// The committed row tag vector (tests/vectors/row_tags_v1.json, computed from
    /// docs/FORMAT.md §10.1 by a script, not by this code) is what the store makes and accepts;
    /// one byte changed anywhere in the row is refused.
    #[test]
    fn row_tag_vector() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/vectors/row_tags_v1.json")).unwrap();
        let hexf = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
        let key: [u8; 32] = hexf("row_tags_key").try_into().unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let set = DomainKeySet::from_keys(
            tenant.clone(),
            DomainName::new(ROW_TAG_DOMAIN).unwrap(),
            vec![(1, KeyState::Active, kluis_core::KeyMaterial::from_bytes(key))],
            kluis_core::Suite::default(),
            kluis_core::Backend::preferred(),
        )
        .unwrap();
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
        assert_eq!(layout::tag_input(&row, &cells), hexf("input"));
        let tag = Store::<SqliteBackend>::row_tag(&access, &row, &cells, &mut Tags::new()).unwrap();
        assert_eq!(hex::encode(&tag), v["tag"].as_str().unwrap());
        let mut stored = StoredRecord { record: RecordRow { tag, ..row }, fields: cells };
        Store::<SqliteBackend>::check_row(&access, &stored, &mut Tags::new()).unwrap();
        if let Some(b) = stored.fields.get_mut(0).and_then(|c| c.sealed.get_mut(0)) {
            *b ^= 1;
        }
        let e = Store::<SqliteBackend>::check_row(&access, &stored, &mut Tags::new());
        assert!(matches!(e, Err(StoreError::RowIntegrity { .. })), "{e:?}");
    }

    /// An operation that fails while being sealed, after others were written: the channel closes
    /// without its end mark, the database transaction rolls back, and the sealing error is the
    /// one returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sealing_error_mid_transaction_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(&dir.path().join("k.db")).await.unwrap();
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
        let access =
            store.unlock(&keyring, &tenant, &[DomainName::general(), DomainName::medical()]).await.unwrap();
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

    /// A page is opened while it is read (`Backend::list_each`). With a pool of one connection
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
        let store = Store::new(SqliteBackend::new(pool.clone()), schema).with_subject_key_ttl(Duration::ZERO);
        store.migrate().await.unwrap();
        let keyring = kluis_core::LocalKeyring::generate(0).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let access =
            store.unlock(&keyring, &tenant, &[DomainName::general(), DomainName::medical()]).await.unwrap();
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
