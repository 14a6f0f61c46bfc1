//! The facade an HR application calls instead of the store: every call is checked by the
//! [`Authorizer`], loads only the domain keys the decision allows, and is written to the audit
//! log (fail closed).

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use kluis_core::DomainName;
use kluis_core::KeyVersion;
use kluis_core::TenantId;
use kluis_core::keys::RootKeyProvider;
use kluis_store::audit::{AuditAppend, AuditEntry, AuditRow, DEFAULT_CHECKPOINT_EVERY};
use kluis_store::{
    Access, Changes, Engine, FieldValue, LegalOverride, NewRecord, Op, Page, Record, ShredReport, Store,
    StoreError, Value, Written,
};

mod documents;
mod erasure;
mod package;
pub use documents::{DOCUMENTS, ServiceDocuments};
pub use package::NOT_ALLOWED;

use crate::audit::export_rows;
use crate::authz::{AccessProof, Action, Authorizer, Decision, Principal, Request, Target, UserId};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};

/// What the application passes in with every call: where the request comes from, why, and for
/// whom. All of it is written to the audit log (do not put personal data in it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// Client information: workstation, IP address, application name.
    pub access_point: String,
    /// Purpose of use (e.g. `reintegration`, `payroll`).
    pub purpose: String,
    /// The user on whose behalf the action is taken, if not the principal.
    pub on_behalf_of: Option<UserId>,
    /// A stated reason for emergency (break-glass) access.
    pub break_glass: Option<String>,
    /// The tenant a support user (a principal without a tenant) acts in, for calls that do not
    /// start from a stored record (insert, list, find, export, shred, audit reads). Ignored for
    /// principals that have a tenant.
    pub tenant: Option<TenantId>,
}

impl RequestContext {
    /// A context with an access point and a purpose.
    pub fn new(access_point: impl Into<String>, purpose: impl Into<String>) -> Self {
        Self { access_point: access_point.into(), purpose: purpose.into(), ..Self::default() }
    }

    /// Acting on behalf of another user.
    pub fn on_behalf_of(mut self, user: UserId) -> Self {
        self.on_behalf_of = Some(user);
        self
    }

    /// Emergency access with a stated reason (flagged, audited and listed for review).
    pub fn break_glass(mut self, reason: impl Into<String>) -> Self {
        self.break_glass = Some(reason.into());
        self
    }

    /// The tenant a support user acts in.
    pub fn in_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }
}

/// Who performed an administrative operation (from the CLI or an operator tool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminActor {
    /// The operator's user name.
    pub user: String,
    /// Where from (host, tool).
    pub access_point: String,
    /// Why (ticket, change number).
    pub purpose: String,
}

impl AdminActor {
    /// An operator.
    pub fn new(user: impl Into<String>, access_point: impl Into<String>, purpose: impl Into<String>) -> Self {
        Self { user: user.into(), access_point: access_point.into(), purpose: purpose.into() }
    }
}

/// An administrative event recorded with [`Service::record_admin`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminEvent {
    /// A domain key was rotated to `version`.
    KeyRotation {
        /// Tenant.
        tenant: TenantId,
        /// Domain.
        domain: DomainName,
        /// The new active version.
        version: KeyVersion,
    },
    /// A re-encryption step ran.
    Reencrypt {
        /// Tenant.
        tenant: TenantId,
        /// Domain.
        domain: DomainName,
        /// Subjects or documents moved.
        moved: u64,
        /// Still to do.
        remaining: u64,
    },
    /// A decrypt-only domain key version was retired (destroyed).
    Retire {
        /// Tenant.
        tenant: TenantId,
        /// Domain.
        domain: DomainName,
        /// The destroyed version.
        version: KeyVersion,
    },
    /// The domain keys were rewrapped under a new root key version.
    RootRewrap {
        /// How many keys.
        keys: u64,
    },
    /// A subject was shredded by an operator.
    Shred {
        /// Tenant.
        tenant: TenantId,
        /// Subject.
        subject: String,
    },
    /// An erasure certificate: its canonical JSON, made by [`Service::certify_erasure`].
    Erasure {
        /// Tenant.
        tenant: TenantId,
        /// Subject.
        subject: String,
        /// [`crate::erasure::ErasureCertificate::to_json`].
        certificate: String,
    },
    /// Data was imported.
    Import {
        /// Tenant.
        tenant: TenantId,
        /// What (a file name or batch id; no personal data).
        what: String,
        /// Items.
        count: u64,
    },
    /// Data was exported.
    Export {
        /// Tenant.
        tenant: TenantId,
        /// What (a file name or batch id; no personal data).
        what: String,
        /// Items.
        count: u64,
    },
    /// Another operation, named.
    Other {
        /// Action name (`[a-z_]`).
        action: String,
        /// Tenant, if any.
        tenant: Option<TenantId>,
        /// Detail (no personal data, no values).
        detail: String,
    },
}

/// Limits of the facade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// A checkpoint row every this many audit entries (default 1000; 0 disables them).
    pub checkpoint_every: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self { checkpoint_every: DEFAULT_CHECKPOINT_EVERY }
    }
}

/// The facade: authorization, key loading limited to the allowed domains, the store, and the audit
/// log, for one database.
///
/// Domain keys are loaded only through [`Service::keys`], which takes an [`AccessProof`]; a proof
/// comes only from [`Authorizer::check`]:
///
/// ```no_run
/// # use kluis_service::authz::{Principal, Request};
/// # async fn f(svc: &kluis_service::Service<kluis_store::Sqlite>, p: &Principal, req: &Request<'_>)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// let proof = svc.authorizer().check(p, req).into_proof()?;
/// let keys = svc.keys(&proof).await?; // exactly the proof's tenant and domains
/// # let _ = keys; Ok(()) }
/// ```
///
/// Decrypting without a check does not compile:
///
/// ```compile_fail
/// # async fn f(svc: &kluis_service::Service<kluis_store::Sqlite>) {
/// // No proof: `keys` needs `&AccessProof`, and nothing outside the check can make one.
/// let keys = svc.keys(&kluis_service::authz::AccessProof { break_glass: false }).await;
/// # }
/// ```
///
/// ```compile_fail
/// # async fn f(svc: &kluis_service::Service<kluis_store::Sqlite>, d: kluis_service::authz::Decision) {
/// // A decision is not a proof: a denial must not open anything.
/// let keys = svc.keys(&d).await;
/// # }
/// ```
pub struct Service<B: Engine> {
    authz: Authorizer,
    store: Arc<Store<B>>,
    provider: Arc<dyn RootKeyProvider>,
    clock: Arc<dyn Clock>,
    config: ServiceConfig,
}

impl<B: Engine> fmt::Debug for Service<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service").field("store", &self.store).field("config", &self.config).finish()
    }
}

/// A record that is about to be audited: its tenant and subject as stored.
struct Located {
    tenant: TenantId,
    subject: String,
}

fn join<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> String {
    let mut out = String::new();
    for s in items {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(s.as_ref());
    }
    out
}

/// A short, value-free name for an error (for the audit log).
fn error_kind(e: &StoreError) -> String {
    let s = match e {
        StoreError::Conflict { .. } => "conflict",
        StoreError::NotFound { .. } => "not_found",
        StoreError::AlreadyExists { .. } => "already_exists",
        StoreError::RetentionActive { .. } => "retention_active",
        StoreError::AccessDenied { .. } => "access_denied",
        StoreError::Integrity { .. } | StoreError::RowIntegrity { .. } => "integrity",
        StoreError::KeyIntegrity { .. } => "key_integrity",
        StoreError::WrongType { .. } => "wrong_type",
        StoreError::TooLarge { .. } => "too_large",
        StoreError::UnknownField { .. } => "unknown_field",
        StoreError::UnknownCollection(_) => "unknown_collection",
        StoreError::InvalidId { .. } => "invalid_id",
        StoreError::Database(_) => "database",
        _ => "store_error",
    };
    s.to_owned()
}

impl<B: Engine> Service<B> {
    /// A facade over `store`, deciding with `authz`, unwrapping domain keys with `provider`.
    pub fn new(authz: Authorizer, store: Arc<Store<B>>, provider: Arc<dyn RootKeyProvider>) -> Self {
        Self { authz, store, provider, clock: Arc::new(SystemClock), config: ServiceConfig::default() }
    }

    /// Uses `clock` for audit timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Changes the limits.
    pub fn with_config(mut self, config: ServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authz
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store<B>> {
        &self.store
    }

    /// Reports this instance's root key versions now ([`Store::report_instance`]; the store must
    /// have been made with [`Store::with_instance_reports`]). Every request that unlocks keys
    /// already reports at most once a minute; call this from a timer so that an idle instance
    /// stays counted when a new root key version is activated.
    pub async fn report_instance(&self) -> Result<()> {
        Ok(self.store.report_instance(self.provider.as_ref()).await?)
    }

    // ------------------------------------------------------------------ keys and audit helpers

    /// The store's capability for one allowed decision ([`kluis_store::Store::access`]): exactly
    /// the proof's tenant and domain keys, limited to its target and, for a read, search or
    /// export, to reading only. The only way this crate loads keys for data: a proof for
    /// `general` never loads the `medical` key, and a store call with these keys on another
    /// record, subject or collection fails with `StoreError::OutOfScope` before anything is
    /// opened or written.
    pub async fn keys(&self, proof: &AccessProof) -> Result<Access> {
        Ok(self.store.access(&*self.provider, proof).await?)
    }

    /// The service clock's time, unix milliseconds (the time of its audit entries).
    pub fn now_ms(&self) -> i64 {
        self.clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn entry(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        tenant: Option<&TenantId>,
        action: &str,
    ) -> AuditEntry {
        AuditEntry {
            at_ms: self.now_ms(),
            actor: p.user().to_string(),
            roles: join(p.roles().iter().map(|r| r.as_str())),
            support_grant: p.support_grant().map(|g| g.to_string()).unwrap_or_default(),
            tenant: tenant.map(|t| t.to_string()).unwrap_or_default(),
            action: action.to_owned(),
            access_point: ctx.access_point.clone(),
            purpose: ctx.purpose.clone(),
            on_behalf_of: ctx.on_behalf_of.as_ref().map(|u| u.to_string()).unwrap_or_default(),
            ..AuditEntry::default()
        }
    }

    fn append(&self, entry: AuditEntry) -> AuditAppend {
        AuditAppend { entry, checkpoint_every: self.config.checkpoint_every }
    }

    /// Appends in its own transaction; a failure is [`Error::AuditUnavailable`].
    async fn log(&self, entry: AuditEntry) -> Result<()> {
        self.store.append_audit(self.append(entry)).await.map_err(Error::AuditUnavailable)
    }

    /// Logs a denial and returns it as the error.
    async fn denied(&self, mut entry: AuditEntry, d: crate::authz::Deny) -> Error {
        entry.outcome = "denied".into();
        entry.reason = d.reason().to_string();
        match self.log(entry).await {
            Ok(()) => Error::Denied(d),
            Err(e) => e,
        }
    }

    /// Decides and, when allowed, fills in the entry's outcome; a denial is logged and returned.
    async fn decide(
        &self,
        p: &Principal,
        _ctx: &RequestContext,
        req: Request<'_>,
        entry: &mut AuditEntry,
    ) -> Result<AccessProof> {
        if let Some(r) = req.break_glass {
            entry.break_glass = r.to_owned();
        }
        // A support grant may have been revoked or deleted by another process: read its current
        // state first. A failed refresh leaves the tenant's grants denying (fail closed).
        if p.support_grant().is_some() {
            // The error itself is not needed: the check below denies with its own reason.
            let _refreshed = self.authz.refresh_grants(req.tenant).await;
        }
        match self.authz.check(p, &req) {
            Decision::Allow(a) => {
                entry.outcome = "allowed".into();
                entry.reason = a.basis().to_string();
                if entry.support_grant.is_empty()
                    && let Some(g) = a.proof().support_grant()
                {
                    entry.support_grant = g.to_string();
                }
                Ok(a.into_proof())
            }
            Decision::Deny(d) => Err(self.denied(entry.clone(), d).await),
        }
    }

    /// The tenant a call that starts from no stored record acts in.
    fn home_tenant(p: &Principal, ctx: &RequestContext) -> Option<TenantId> {
        p.tenant().cloned().or_else(|| ctx.tenant.clone())
    }

    /// Finds the record's tenant **from the stored row**. A record of another tenant is reported
    /// with that tenant, so the check denies it as cross-tenant.
    async fn locate(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        collection: &str,
        id: &str,
        entry: &mut AuditEntry,
    ) -> Result<Located> {
        kluis_store::check_id("record id", id)?;
        let owners = self.store.record_owners(collection, id).await?;
        let home = Self::home_tenant(p, ctx);
        let owner = owners
            .iter()
            .find(|o| home.as_ref().is_some_and(|h| h.as_str() == o.tenant))
            .or_else(|| owners.first());
        let Some(o) = owner else {
            entry.outcome = "not_found".into();
            entry.reason = "no such record in the tenant".into();
            self.log(entry.clone()).await?;
            return Err(Error::NotFound { collection: collection.to_owned(), record: id.to_owned() });
        };
        let tenant = TenantId::new(o.tenant.clone())?;
        if home.as_ref() == Some(&tenant) {
            entry.subject = o.subject.clone();
        }
        Ok(Located { tenant, subject: o.subject.clone() })
    }

    /// The domains of the cells a record holds (clear columns; nothing is decrypted).
    async fn present_domains(
        &self,
        tenant: &TenantId,
        collection: &str,
        id: &str,
    ) -> Result<BTreeSet<DomainName>> {
        let mut out = BTreeSet::new();
        if let Some(domains) = self.store.record_domains(tenant, collection, id).await? {
            for d in domains {
                out.insert(DomainName::new(d)?);
            }
        }
        if out.is_empty() {
            out.insert(DomainName::general());
        }
        Ok(out)
    }

    fn collection_domains(&self, collection: &str) -> Result<BTreeSet<DomainName>> {
        let c = self.store.schema().collection(collection)?;
        Ok(c.fields().map(|f| f.domain.clone()).collect())
    }

    fn schema_domains(&self) -> BTreeSet<DomainName> {
        self.store
            .schema()
            .collections()
            .flat_map(|c| c.fields().map(|f| f.domain.clone()).collect::<Vec<_>>())
            .collect()
    }

    /// The domains to ask for: with break-glass or a support grant, every domain present; else the
    /// present domains the roles allow, or (none allowed) every present domain, which the check
    /// then denies with its reason.
    fn domains_to_open(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        tenant: &TenantId,
        action: Action,
        target: &Target,
        present: &BTreeSet<DomainName>,
    ) -> Vec<DomainName> {
        if ctx.break_glass.is_some() || p.tenant().is_none() {
            return present.iter().cloned().collect();
        }
        let allowed: BTreeSet<DomainName> =
            self.authz.allowed_domains(p, tenant, action, target).into_iter().collect();
        let open: Vec<DomainName> = present.intersection(&allowed).cloned().collect();
        if open.is_empty() { present.iter().cloned().collect() } else { open }
    }

    fn fields_read<'r>(
        records: impl IntoIterator<Item = &'r Record>,
        collection: &str,
        schema: &kluis_store::Schema,
    ) -> String {
        let mut names = BTreeSet::new();
        for r in records {
            for (name, v) in &r.fields {
                if let FieldValue::Value(_) = v {
                    let domain = schema
                        .collection(collection)
                        .ok()
                        .and_then(|c| c.field(name))
                        .map(|f| f.domain.to_string())
                        .unwrap_or_default();
                    names.insert(format!("{domain}:{name}"));
                }
            }
        }
        join(names)
    }

    fn field_names(
        &self,
        collection: &str,
        names: impl IntoIterator<Item = String>,
    ) -> Result<(String, BTreeSet<DomainName>)> {
        let c = self.store.schema().collection(collection)?;
        let mut out = BTreeSet::new();
        let mut domains = BTreeSet::new();
        for n in names {
            let f = c.field(&n).ok_or_else(|| StoreError::UnknownField {
                collection: collection.to_owned(),
                field: n.clone(),
            })?;
            out.insert(format!("{}:{n}", f.domain));
            domains.insert(f.domain.clone());
        }
        Ok((join(out), domains))
    }

    // ------------------------------------------------------------------ data calls

    /// Reads one record. The tenant comes from the stored row: an id of another tenant is denied
    /// (and audited). Fields of domains the principal's roles lack come back
    /// [`FieldValue::Withheld`], and their keys are never loaded. With
    /// [`RequestContext::break_glass`] every domain is opened if a role allows break-glass.
    pub async fn get(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        collection: &str,
        id: &str,
    ) -> Result<Record> {
        let mut e = self.entry(p, ctx, Self::home_tenant(p, ctx).as_ref(), "read");
        e.collection = collection.to_owned();
        e.record = id.to_owned();
        let loc = self.locate(p, ctx, collection, id, &mut e).await?;
        let present = self.present_domains(&loc.tenant, collection, id).await?;
        let target = Target::record(collection, id, Some(&loc.subject));
        let domains = self.domains_to_open(p, ctx, &loc.tenant, Action::Read, &target, &present);
        let mut req = Request::new(&loc.tenant, Action::Read, &domains, target);
        if let Some(r) = &ctx.break_glass {
            req = req.with_break_glass(r);
        }
        let proof = self.decide(p, ctx, req, &mut e).await?;
        let access = self.keys(&proof).await?;
        let rec = self
            .store
            .get(&access, collection, id)
            .await?
            .ok_or_else(|| Error::NotFound { collection: collection.to_owned(), record: id.to_owned() })?;
        e.subject = rec.subject.clone();
        e.fields = Self::fields_read([&rec], collection, self.store.schema());
        // Fail closed: no entry, no data.
        self.log(e).await?;
        Ok(rec)
    }

    /// A page of a collection (optionally one subject's records), with the same withholding.
    pub async fn list(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        collection: &str,
        subject: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page> {
        let home = Self::home_tenant(p, ctx);
        let mut e = self.entry(p, ctx, home.as_ref(), "read");
        e.collection = collection.to_owned();
        e.subject = subject.unwrap_or_default().to_owned();
        let Some(tenant) = home else {
            return Err(self.denied(e, crate::authz::Deny::no_tenant()).await);
        };
        let present = self.collection_domains(collection)?;
        let target = Target::collection(collection, subject);
        let domains = self.domains_to_open(p, ctx, &tenant, Action::Read, &target, &present);
        let mut req = Request::new(&tenant, Action::Read, &domains, target);
        if let Some(r) = &ctx.break_glass {
            req = req.with_break_glass(r);
        }
        let proof = self.decide(p, ctx, req, &mut e).await?;
        let access = self.keys(&proof).await?;
        let page = self.store.list(&access, collection, subject, after, limit).await?;
        e.record = join(page.records.iter().map(|r| r.id.as_str()));
        e.subject = join(page.records.iter().map(|r| r.subject.as_str()).collect::<BTreeSet<_>>());
        e.fields = Self::fields_read(&page.records, collection, self.store.schema());
        self.log(e).await?;
        Ok(page)
    }

    /// Blind-index search on `field` for `value` (the value is never logged; the field name is).
    pub async fn find(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        collection: &str,
        field: &str,
        value: &Value,
    ) -> Result<Vec<Record>> {
        let home = Self::home_tenant(p, ctx);
        let mut e = self.entry(p, ctx, home.as_ref(), "search");
        e.collection = collection.to_owned();
        let Some(tenant) = home else {
            return Err(self.denied(e, crate::authz::Deny::no_tenant()).await);
        };
        let (searched, field_domain) = self.field_names(collection, [field.to_owned()])?;
        e.fields = searched.clone();
        let present = self.collection_domains(collection)?;
        let target = Target::collection(collection, None);
        let mut domains = self.domains_to_open(p, ctx, &tenant, Action::Search, &target, &present);
        if field_domain.iter().any(|d| !domains.contains(d)) {
            // The searched field's domain is not open to the roles: ask for it, to be denied.
            domains = field_domain.into_iter().collect();
        }
        let req = Request::new(&tenant, Action::Search, &domains, target);
        let proof = self.decide(p, ctx, req, &mut e).await?;
        let access = self.keys(&proof).await?;
        let found = self.store.find(&access, collection, field, value).await?;
        e.record = join(found.iter().map(|r| r.id.as_str()));
        e.subject = join(found.iter().map(|r| r.subject.as_str()).collect::<BTreeSet<_>>());
        let read = Self::fields_read(&found, collection, self.store.schema());
        e.fields = join([searched, read].into_iter().filter(|s| !s.is_empty()));
        self.log(e).await?;
        Ok(found)
    }

    /// Runs an audited write; on failure after the check, logs the failure (value-free).
    async fn write(&self, access: &Access, op: Op, e: AuditEntry) -> Result<Written> {
        match self.store.audited_transaction(access, vec![op], self.append(e.clone())).await {
            Ok(mut w) => w.pop().ok_or_else(|| Error::invalid("write result", "empty")),
            Err(err) => {
                let mut failed = e;
                failed.outcome = "error".into();
                failed.reason = error_kind(&err);
                self.log(failed).await?;
                Err(Error::Store(err))
            }
        }
    }

    /// Inserts a record in the principal's tenant (a support user: [`RequestContext::in_tenant`]).
    /// The change and its audit entry are one transaction.
    pub async fn insert(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        collection: &str,
        mut record: NewRecord,
    ) -> Result<Written> {
        let home = Self::home_tenant(p, ctx);
        let mut e = self.entry(p, ctx, home.as_ref(), "create");
        e.collection = collection.to_owned();
        e.subject = record.subject.clone();
        let Some(tenant) = home else {
            return Err(self.denied(e, crate::authz::Deny::no_tenant()).await);
        };
        let id = match &record.id {
            Some(id) => id.clone(),
            None => random_id()?,
        };
        record.id = Some(id.clone());
        e.record = id.clone();
        let (fields, mut domains) =
            self.field_names(collection, record.fields.iter().map(|(n, _)| n.clone()))?;
        e.fields = fields;
        if domains.is_empty() {
            domains.insert(DomainName::general());
        }
        let domains: Vec<DomainName> = domains.into_iter().collect();
        let target = Target::record(collection, &id, Some(&record.subject));
        let proof =
            self.decide(p, ctx, Request::new(&tenant, Action::Write, &domains, target), &mut e).await?;
        let access = self.keys(&proof).await?;
        self.write(&access, Op::Insert { collection: collection.to_owned(), record }, e).await
    }

    /// Updates the named fields of a record at `expected_version` (fields the principal cannot
    /// read are kept). The tenant comes from the stored row.
    pub async fn update(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        collection: &str,
        id: &str,
        expected_version: u64,
        changes: Changes,
    ) -> Result<Written> {
        let mut e = self.entry(p, ctx, Self::home_tenant(p, ctx).as_ref(), "update");
        e.collection = collection.to_owned();
        e.record = id.to_owned();
        let loc = self.locate(p, ctx, collection, id, &mut e).await?;
        let names = changes.set.iter().map(|(n, _)| n.clone()).chain(changes.remove.iter().cloned());
        let (fields, mut domains) = self.field_names(collection, names)?;
        e.fields = fields;
        if domains.is_empty() {
            domains.insert(DomainName::general());
        }
        let domains: Vec<DomainName> = domains.into_iter().collect();
        let target = Target::record(collection, id, Some(&loc.subject));
        let proof =
            self.decide(p, ctx, Request::new(&loc.tenant, Action::Write, &domains, target), &mut e).await?;
        let access = self.keys(&proof).await?;
        let op =
            Op::Update { collection: collection.to_owned(), id: id.to_owned(), expected_version, changes };
        self.write(&access, op, e).await
    }

    /// Deletes a record (needs `delete` on every domain it holds).
    pub async fn delete(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        collection: &str,
        id: &str,
        expected_version: Option<u64>,
        legal_override: Option<LegalOverride>,
    ) -> Result<()> {
        let mut e = self.entry(p, ctx, Self::home_tenant(p, ctx).as_ref(), "delete");
        e.collection = collection.to_owned();
        e.record = id.to_owned();
        let loc = self.locate(p, ctx, collection, id, &mut e).await?;
        let present: Vec<DomainName> =
            self.present_domains(&loc.tenant, collection, id).await?.into_iter().collect();
        let target = Target::record(collection, id, Some(&loc.subject));
        let proof =
            self.decide(p, ctx, Request::new(&loc.tenant, Action::Delete, &present, target), &mut e).await?;
        let access = self.keys(&proof).await?;
        let op = Op::Delete {
            collection: collection.to_owned(),
            id: id.to_owned(),
            expected_version,
            legal_override,
        };
        self.write(&access, op, e).await.map(|_| ())
    }

    /// Exports every record of `subject` the principal may export, collection by collection (fields
    /// of other domains withheld). One audit entry per collection; none allowed is a denial.
    pub async fn export(&self, p: &Principal, ctx: &RequestContext, subject: &str) -> Result<Vec<Record>> {
        kluis_store::check_id("subject id", subject)?;
        let home = Self::home_tenant(p, ctx);
        let mut base = self.entry(p, ctx, home.as_ref(), "export");
        base.subject = subject.to_owned();
        let Some(tenant) = home else {
            return Err(self.denied(base, crate::authz::Deny::no_tenant()).await);
        };
        let mut plan = Vec::new();
        let mut first_denial = None;
        let names: Vec<String> = self.store.schema().collections().map(|c| c.name.clone()).collect();
        for coll in &names {
            let present = self.collection_domains(coll)?;
            let target = Target::collection(coll, Some(subject));
            let domains = self.domains_to_open(p, ctx, &tenant, Action::Export, &target, &present);
            match self.authz.check(p, &Request::new(&tenant, Action::Export, &domains, target)) {
                Decision::Allow(a) => plan.push((coll.clone(), a.basis().to_string(), a.into_proof())),
                Decision::Deny(d) => {
                    if first_denial.is_none() {
                        first_denial = Some((coll.clone(), d));
                    }
                }
            }
        }
        if plan.is_empty() {
            let mut e = base;
            let Some((coll, d)) = first_denial else {
                return Err(Error::invalid("export", "the schema has no collections"));
            };
            e.collection = coll;
            return Err(self.denied(e, d).await);
        }
        let mut out = Vec::new();
        let mut entries = Vec::new();
        for (coll, basis, proof) in plan {
            let access = self.keys(&proof).await?;
            let mut after: Option<String> = None;
            let mut got = Vec::new();
            loop {
                let page = self.store.list(&access, &coll, Some(subject), after.as_deref(), 1000).await?;
                got.extend(page.records);
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            let mut e = base.clone();
            e.collection = coll.clone();
            e.outcome = "allowed".into();
            e.reason = basis;
            e.record = join(got.iter().map(|r| r.id.as_str()));
            e.fields = Self::fields_read(&got, &coll, self.store.schema());
            entries.push(e);
            out.extend(got);
        }
        for e in entries {
            self.log(e).await?;
        }
        Ok(out)
    }

    /// Crypto-shreds a subject (needs `shred` on every domain of the schema). The decision is
    /// logged in the transaction that removes the subject's keys and records (no entry, no
    /// shred); a failure is logged after. Once the purge has run, an erasure certificate
    /// ([`crate::erasure`]) is appended as an entry of its own; if that append fails the shred
    /// has still happened, and the error is [`Error::Uncertified`].
    pub async fn shred(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        subject: &str,
        legal_override: Option<LegalOverride>,
    ) -> Result<ShredReport> {
        kluis_store::check_id("subject id", subject)?;
        let home = Self::home_tenant(p, ctx);
        let mut e = self.entry(p, ctx, home.as_ref(), "shred");
        e.subject = subject.to_owned();
        let Some(tenant) = home else {
            return Err(self.denied(e, crate::authz::Deny::no_tenant()).await);
        };
        let domains: Vec<DomainName> = self.schema_domains().into_iter().collect();
        e.fields = join(domains.iter().map(|d| format!("{d}:*")));
        let proof = self
            .decide(p, ctx, Request::new(&tenant, Action::Shred, &domains, Target::Tenant), &mut e)
            .await?;
        let mut access = self.keys(&proof).await?;
        // The entry is appended in the transaction that removes the subject's keys and records.
        match self
            .store
            .shred_subject_audited(
                &*self.provider,
                &mut access,
                subject,
                legal_override.clone(),
                self.append(e.clone()),
            )
            .await
        {
            Ok(r) => {
                // What was destroyed, once the purge has run: an entry of its own
                // (`erasure_certificates` reads it back).
                let certificate = crate::erasure::ErasureCertificate::of_shred(
                    tenant.as_str(),
                    subject,
                    self.now_ms(),
                    &r,
                    None,
                    legal_override.as_ref(),
                );
                let mut c = e;
                c.action = crate::erasure::CERTIFICATE_ACTION.to_owned();
                c.outcome = "done".into();
                c.reason = certificate.to_json()?;
                self.log(c).await.map_err(|e| match e {
                    Error::AuditUnavailable(source) => Error::Uncertified(source),
                    other => other,
                })?;
                Ok(r)
            }
            Err(err) => {
                let mut failed = e;
                failed.outcome = "error".into();
                failed.reason = error_kind(&err);
                self.log(failed).await?;
                Err(Error::Store(err))
            }
        }
    }

    // ------------------------------------------------------------------ the audit log itself

    async fn audit_proof(&self, p: &Principal, ctx: &RequestContext, action: &str) -> Result<TenantId> {
        let home = Self::home_tenant(p, ctx);
        let mut e = self.entry(p, ctx, home.as_ref(), action);
        let Some(tenant) = home else {
            return Err(self.denied(e, crate::authz::Deny::no_tenant()).await);
        };
        let proof = self
            .decide(p, ctx, Request::new(&tenant, Action::ReadAudit, &[], Target::Tenant), &mut e)
            .await?;
        let _ = proof;
        // Reading the log is itself logged, before anything is returned.
        self.log(e).await?;
        Ok(tenant)
    }

    /// Entries of the principal's tenant after `after` (needs `read_audit`; the read is logged).
    pub async fn audit_entries(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditRow>> {
        let tenant = self.audit_proof(p, ctx, "read_audit").await?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        Ok(self.store.audit_page(Some(tenant.as_str()), after, limit.clamp(1, 10_000)).await?)
    }

    /// Exports the principal's tenant's entries as JSON lines (needs `read_audit`; logged).
    pub async fn export_audit(&self, p: &Principal, ctx: &RequestContext, out: impl Write) -> Result<u64> {
        let tenant = self.audit_proof(p, ctx, "export_audit").await?;
        export_rows(&self.store, Some(tenant.as_str()), out).await
    }

    /// Records an administrative event (key rotation, re-encryption, retirement, shred, import,
    /// export, root rewrap) done outside the facade, e.g. by the CLI. Fails with
    /// [`Error::AuditUnavailable`] if the entry cannot be written.
    pub async fn record_admin(&self, actor: &AdminActor, event: AdminEvent) -> Result<()> {
        self.store.append_audit(self.admin_entry(actor, event)).await.map_err(Error::AuditUnavailable)
    }

    /// The audit entry of an administrative event, for a caller that commits it **in the same
    /// transaction** as the change (`Store::audited_transaction`), as `kluis import` does per
    /// batch.
    pub fn admin_entry(&self, actor: &AdminActor, event: AdminEvent) -> AuditAppend {
        let mut e = AuditEntry {
            at_ms: self.now_ms(),
            actor: actor.user.clone(),
            roles: "operator".into(),
            access_point: actor.access_point.clone(),
            purpose: actor.purpose.clone(),
            outcome: "done".into(),
            ..AuditEntry::default()
        };
        let (action, tenant, detail) = match event {
            AdminEvent::KeyRotation { tenant, domain, version } => {
                ("rotate_key".to_owned(), Some(tenant), format!("domain {domain} version {version}"))
            }
            AdminEvent::Reencrypt { tenant, domain, moved, remaining } => (
                "reencrypt".to_owned(),
                Some(tenant),
                format!("domain {domain} moved {moved} remaining {remaining}"),
            ),
            AdminEvent::Retire { tenant, domain, version } => {
                ("retire_key".to_owned(), Some(tenant), format!("domain {domain} version {version}"))
            }
            AdminEvent::RootRewrap { keys } => ("rewrap_root".to_owned(), None, format!("keys {keys}")),
            AdminEvent::Shred { tenant, subject } => {
                e.subject = subject;
                ("shred".to_owned(), Some(tenant), String::new())
            }
            AdminEvent::Erasure { tenant, subject, certificate } => {
                e.subject = subject;
                (crate::erasure::CERTIFICATE_ACTION.to_owned(), Some(tenant), certificate)
            }
            AdminEvent::Import { tenant, what, count } => {
                ("import".to_owned(), Some(tenant), format!("{what} count {count}"))
            }
            AdminEvent::Export { tenant, what, count } => {
                ("export".to_owned(), Some(tenant), format!("{what} count {count}"))
            }
            AdminEvent::Other { action, tenant, detail } => (action, tenant, detail),
        };
        e.action = action;
        e.tenant = tenant.map(|t| t.to_string()).unwrap_or_default();
        e.reason = detail;
        self.append(e)
    }
}

fn random_id() -> Result<String> {
    let mut b = [0u8; 16];
    crate::error::random_fill(&mut b)?;
    Ok(crate::audit::hex(&b))
}
