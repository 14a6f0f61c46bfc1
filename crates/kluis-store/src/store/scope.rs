//! Scopes of access: what an [`Access`] may touch.

use super::*;

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
    /// Everything in the tenant (the scope of [`Store::admin_access`] and of a proof for the
    /// whole tenant).
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
    pub(super) fn covers_collection(&self, collection: &str, subject: Option<&str>) -> bool {
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
    pub(super) fn contains(&self, inner: &Scope) -> bool {
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

/// The capability every store call that opens or writes a value takes: the keys a caller holds for
/// one tenant (one [`DomainKeySet`] per domain it may read and write), the [`Scope`] of records it
/// may touch, and whether it may write. Fields of other domains are returned as
/// [`FieldValue::Withheld`] without any decryption attempt.
///
/// Three ways make one, and no other: [`Store::access`] from the [`AccessProof`] of an allowed
/// authorization decision (exactly its tenant, domains and target); [`Store::admin_access`], the
/// administrative path; and [`Access::catalog`], which holds no key. There is no public
/// constructor and no way to add a key set:
///
/// ```compile_fail
/// # fn f(t: kluis_core::TenantId) {
/// let forged = kluis_store::Access::new(t);
/// # }
/// ```
///
/// ```compile_fail
/// # fn f(a: kluis_store::Access, set: kluis_core::keys::DomainKeySet) {
/// let widened = a.with(set);
/// # }
/// ```
///
/// ```compile_fail
/// # fn f(t: kluis_core::TenantId) {
/// let forged = kluis_store::Access { tenant: t, sets: Default::default(), rows: None,
///     scope: kluis_store::Scope::Tenant, writes: true };
/// # }
/// ```
pub struct Access {
    pub(super) tenant: TenantId,
    pub(super) sets: BTreeMap<String, Arc<DomainKeySet>>,
    /// The tenant's [`ROW_TAG_DOMAIN`] key set: row tags are made and checked with it.
    pub(super) rows: Option<Arc<DomainKeySet>>,
    pub(super) scope: Scope,
    /// May it write (insert, update, delete, documents, shred, migrations, re-encryption)?
    pub(super) writes: bool,
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
    pub(crate) fn new(tenant: TenantId) -> Self {
        Self { tenant, sets: BTreeMap::new(), rows: None, scope: Scope::Tenant, writes: true }
    }

    /// No key at all, reading only: for the clear columns of the documents catalog (which
    /// documents of a subject or record exist, in which domain) that a caller needs before it
    /// can ask for a decision. Nothing it reaches is decrypted, and every record read fails for
    /// want of the row tag key.
    pub fn catalog(tenant: TenantId) -> Self {
        Self::new(tenant).read_only()
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
    pub(super) fn require_write(&self, what: &str) -> Result<()> {
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
    pub(super) fn in_scope(&self, collection: &str, id: &str, subject: &str) -> Result<()> {
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
    pub(super) fn collection_in_scope(&self, collection: &str, subject: Option<&str>) -> Result<()> {
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
    pub(super) fn document_in_scope(&self, row: &DocumentRow) -> Result<()> {
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
    pub(super) fn whole_tenant(&self, what: &str) -> Result<()> {
        match self.scope {
            Scope::Tenant => Ok(()),
            _ => Err(StoreError::OutOfScope { what: what.to_owned(), scope: self.scope.to_string() }),
        }
    }

    /// Adds a domain key set of this tenant. The [`ROW_TAG_DOMAIN`] set (which every record
    /// read and write needs) is kept apart from the data domains.
    pub(crate) fn with(mut self, set: DomainKeySet) -> Result<Self> {
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

    /// [`Access::with`] for kluis-store's own tests (a key set the database never wrapped). Only
    /// with the `sql-layer` feature, which bypasses every check anyway.
    #[cfg(feature = "sql-layer")]
    #[doc(hidden)]
    pub fn with_unchecked(self, set: DomainKeySet) -> Result<Self> {
        self.with(set)
    }

    pub(super) fn rows(&self) -> Result<&DomainKeySet> {
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

    pub(super) fn require(&self, domain: &str) -> Result<&DomainKeySet> {
        self.set(domain).ok_or_else(|| StoreError::AccessDenied {
            tenant: self.tenant.to_string(),
            domain: domain.to_owned(),
        })
    }
}
