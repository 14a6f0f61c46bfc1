//! Errors of the store.

/// Everything that can go wrong in `kluis-store`.
///
/// Caller mistakes (unknown collection or field, wrong type, oversized value, missing rights) are
/// apart from data that fails its integrity check and from database failures. No variant carries a
/// plaintext field value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A cryptographic or format error from `kluis-core`.
    #[error(transparent)]
    Core(#[from] kluis_core::Error),
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The schema TOML does not parse; names the line and column.
    #[error("schema toml, line {line}, column {column}: {message}")]
    SchemaToml {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The schema is not valid (bad name, duplicate, bad limit).
    #[error("invalid schema: {0}")]
    Schema(String),
    /// The collection is not in the schema.
    #[error("unknown collection {0:?}")]
    UnknownCollection(String),
    /// The field is not in the collection's schema.
    #[error("unknown field {field:?} in collection {collection:?}")]
    UnknownField {
        /// Collection.
        collection: String,
        /// Field.
        field: String,
    },
    /// The value does not have the field's type (or is not a valid value of it).
    #[error("field {collection}.{field} expects {expected}, got {found}")]
    WrongType {
        /// Collection.
        collection: String,
        /// Field.
        field: String,
        /// The field's type.
        expected: &'static str,
        /// What was given (type or why it is invalid, never the value).
        found: String,
    },
    /// The value is larger than the field's maximum.
    #[error("field {collection}.{field} holds at most {max} bytes, got {len}")]
    TooLarge {
        /// Collection.
        collection: String,
        /// Field.
        field: String,
        /// Maximum size.
        max: usize,
        /// Given size.
        len: usize,
    },
    /// The field is not blind-indexed, so it cannot be searched.
    #[error("field {collection}.{field} has no blind index")]
    NotIndexed {
        /// Collection.
        collection: String,
        /// Field.
        field: String,
    },
    /// An id (record, subject, document) is not valid.
    #[error("invalid {what}: {reason}")]
    InvalidId {
        /// Which id.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The caller holds no key for a domain it tries to write or search.
    #[error("no key for domain {domain} of tenant {tenant}: access denied")]
    AccessDenied {
        /// Tenant.
        tenant: String,
        /// Domain.
        domain: String,
    },
    /// The caller's [`crate::Access`] is scoped ([`crate::Scope`]) to other data than this call
    /// touches: another collection, record or subject, or a tenant-wide operation.
    #[error("{what} is outside the scope of the caller's access ({scope})")]
    OutOfScope {
        /// What the call touches (collection/record, or the operation).
        what: String,
        /// The scope, as text.
        scope: String,
    },
    /// No such record.
    #[error("record {collection}/{record} not found")]
    NotFound {
        /// Collection.
        collection: String,
        /// Record id.
        record: String,
    },
    /// A record id that already exists was inserted again.
    #[error("record {collection}/{record} already exists")]
    AlreadyExists {
        /// Collection.
        collection: String,
        /// Record id.
        record: String,
    },
    /// Optimistic concurrency: the record changed since the caller read it.
    #[error(
        "record {collection}/{record} was changed concurrently: expected version {expected}, found {found}"
    )]
    Conflict {
        /// Collection.
        collection: String,
        /// Record id.
        record: String,
        /// Version the caller expected.
        expected: u64,
        /// Version in the database (0 if the record is gone).
        found: u64,
    },
    /// A sealed field does not open: it was altered, or copied from another record, field,
    /// collection, tenant or subject.
    #[error(
        "integrity check failed for field {field} of record {collection}/{record}: the value was altered or moved"
    )]
    Integrity {
        /// Collection.
        collection: String,
        /// Record id.
        record: String,
        /// Field.
        field: String,
    },
    /// A record's row does not match its row tag: a column was edited, a cell deleted, nulled or
    /// copied from another row or an older version of this one, or the tag itself was altered.
    #[error(
        "integrity check failed for record {collection}/{record}: the row was altered or assembled from other rows"
    )]
    RowIntegrity {
        /// Collection.
        collection: String,
        /// Record id.
        record: String,
    },
    /// A wrapped key row does not open or is inconsistent: it was altered in the database.
    #[error("key integrity check failed for {what}: the key row was altered or moved")]
    KeyIntegrity {
        /// Which key (tenant/domain/version, or subject key).
        what: String,
    },
    /// The subject's key was destroyed (crypto-shredded).
    #[error("subject {subject} of tenant {tenant} was shredded")]
    Shredded {
        /// Tenant.
        tenant: String,
        /// Subject.
        subject: String,
    },
    /// Retention: the record must be kept until `retain_until` (unix seconds).
    #[error(
        "record {collection}/{record} must be retained until {retain_until} (unix time); a legal override is required"
    )]
    RetentionActive {
        /// Collection.
        collection: String,
        /// Record id.
        record: String,
        /// Unix seconds.
        retain_until: i64,
    },
    /// The store's metadata (e.g. the recorded keyring generation) was altered in the database.
    #[error("store metadata {0} failed its integrity check")]
    MetadataTampered(&'static str),
    /// The store's metadata is missing although the database holds domain keys: it was deleted
    /// outside Kluis, or the database was written before Kluis recorded it.
    #[error(
        "store metadata {0} is missing although the database holds domain keys: it was deleted, or the database predates it (`kluis keys adopt` records it once checked)"
    )]
    MetadataMissing(&'static str),
    /// A stored row does not have the expected shape.
    #[error("corrupt stored {what}: {reason}")]
    Corrupt {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The operation is not possible in the current state.
    #[error("invalid operation: {0}")]
    Invalid(String),
    /// A domain key version cannot be retired while data depends on it (see `Store::key_usage`;
    /// run `Store::reencrypt_step`, and the documents' re-encryption, until nothing is left).
    #[error(
        "domain key {tenant}/{domain} v{version} is still in use: {subject_keys} subject keys, {records} records, {documents} documents"
    )]
    KeyInUse {
        /// Tenant.
        tenant: String,
        /// Domain.
        domain: String,
        /// Domain key version.
        version: kluis_core::KeyVersion,
        /// Subject keys wrapped under it.
        subject_keys: u64,
        /// Records with a cell sealed by such a subject key.
        records: u64,
        /// Documents wrapped by such a subject key.
        documents: u64,
    },
    /// The active domain key version cannot be retired: rotate first.
    #[error("domain key {tenant}/{domain} v{version} is the active version: rotate first")]
    ActiveKey {
        /// Tenant.
        tenant: String,
        /// Domain.
        domain: String,
        /// Domain key version.
        version: kluis_core::KeyVersion,
    },
    /// Retryable: a key changed concurrently (a subject key was re-encrypted or shredded, or a
    /// domain key rotated or retired) while this operation used an older one. Nothing was
    /// written; retry (after unlocking again if the caller's domain keys are older).
    #[error("key changed concurrently: {what}; nothing was written, retry")]
    KeyChanged {
        /// Which key.
        what: String,
    },
    /// Retryable: a worker's batch did not get the audit head lock in time while holding its
    /// rows (another transaction held it, perhaps waiting for one of those rows); the batch was
    /// rolled back whole so that the other could go on. Nothing was written; retry.
    #[error("busy: {what}; nothing was written, retry")]
    Busy {
        /// What was held.
        what: String,
    },
    /// A root key version cannot be activated yet: running instances that reported recently do
    /// not hold it (docs/STORE.md, "Instances and root key activation"). Nothing was changed.
    #[error(
        "root key v{version} is not held by every running instance yet: {}; give them the new keyring file and let them report (or wait until an instance that is gone drops out), then run this again",
        instances.join(", ")
    )]
    RootVersionNotHeld {
        /// The version to activate.
        version: kluis_core::KeyVersion,
        /// The instances that lack it: `label (id, generation G, holds vA,vB)`.
        instances: Vec<String>,
    },
    /// This keyring's primary root key version is not the one the database has activated: a
    /// staged version not activated yet, or a keyring file older than the activation. New keys
    /// are not wrapped under it (other instances might not open them); reading works.
    #[error(
        "this keyring's primary root key version v{primary} is not the active one (v{active}): {}",
        if primary > active { "activate it first (`kluis keys rotate-root`, once every instance holds it)" } else { "load the current keyring file" }
    )]
    RootVersionNotActive {
        /// The keyring's primary version.
        primary: kluis_core::KeyVersion,
        /// The version the database recorded as active.
        active: kluis_core::KeyVersion,
    },
}

impl StoreError {
    /// Is it worth retrying the same call unchanged (a key changed concurrently)? A
    /// [`StoreError::Conflict`] is not: read the record again first.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::KeyChanged { .. } | Self::Busy { .. }) || self.is_deadlock()
    }

    /// The database chose this transaction as a deadlock victim (or failed it for
    /// serialization) and rolled it back whole: SQLSTATE `40001` (MySQL/MariaDB error 1213,
    /// PostgreSQL serialization failure) or `40P01` (PostgreSQL deadlock). Nothing of it was
    /// written, so the same transaction can be run again.
    pub fn is_deadlock(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40001") | Some("40P01"))
            }
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
