//! The persisted access registry: support grants and role assignments in the store's own database,
//! each row authenticated so that whoever holds the database cannot forge or edit one.
//!
//! [`StoreRegistry`] keeps the state of the tenants it has loaded in memory (so
//! [`super::Authorizer::check`] stays synchronous and never waits for the database) and writes
//! every grant and role change to the database **before** its async method returns:
//! [`StoreRegistry::grant_support`], [`StoreRegistry::revoke_support`],
//! [`StoreRegistry::assign_role`], [`StoreRegistry::revoke_role`]. The synchronous
//! [`AccessRegistry`] write methods that would need a durable write (`insert_grant`,
//! `assign_role`, `remove_role`, a revocation through `update_grant`) return
//! [`Error::Registry`] instead of changing memory only.
//!
//! Usage is not written on the check path: a grant's last use and use count, a user's last
//! allowed action and the break-glass accesses are derived, when a tenant is loaded, from the
//! audit log, which the [`crate::Service`] writes for every allowed access (with the grant id and
//! the break-glass reason) before it returns anything. After a restart the 31-day idle rule
//! therefore sees the same last use as before it. An idle grant's `disabled_idle` status is not
//! stored either: it follows again from the last use.
//!
//! Each row's MAC is HMAC-SHA256 under a key derived (HKDF-Expand, as blind index keys are) from
//! the tenant's `access_registry` domain key ([`ACCESS_MAC_DOMAIN`]), which the root key wraps; it
//! covers every column: tenant, kind, id, body and the key version. docs/SERVICE.md says what a DBA can still do.
//!
//! A tenant must be loaded ([`StoreRegistry::load_tenant`] or [`StoreRegistry::load_all`]) before
//! its grants are checked; until then a grant check denies (`RegistryUnavailable`). A row that
//! fails its check leaves the tenant unloaded ([`AuthzError::RegistryTampered`]): fail closed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kluis_core::blind::BlindIndexKey;
use kluis_core::keys::{DomainKeySet, RootKeyProvider};
use kluis_core::{DomainName, KeyVersion, TenantId};
use kluis_store::access::AccessRow;
use kluis_store::audit::{AuditAppend, AuditEntry, DEFAULT_CHECKPOINT_EVERY};
use kluis_store::{Engine, Store};
use serde::{Deserialize, Serialize};

use kluis_authz::{
    AccessRegistry, Action, ActionSet, Authorizer, BreakGlassEvent, Error as AuthzError, GrantId, GrantScope,
    GrantStatus, MemoryRegistry, Principal, Result as AuthzResult, RoleAssignment, RoleName, SupportGrant,
    TenantState, UserId,
};

use crate::error::{Error, Result};

/// The domain whose key the registry's MAC key is derived from: a key of its own per tenant
/// (created on the first registry write, wrapped by the root key like every domain key), which
/// the service that manages a tenant's access holds and no data field uses, so a shred (which
/// rotates and destroys the keys of the subject's domains) never invalidates the registry rows.
pub const ACCESS_MAC_DOMAIN: &str = "access_registry";

const MAC_LABEL: &[u8] = b"kluis-access-v1";
const KIND_GRANT: &str = "grant";
const KIND_ROLE: &str = "role";
const AUDIT_PAGE: u32 = 1000;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    support_user: String,
    granted_by: String,
    domains: Vec<String>,
    actions: Vec<String>,
    created_ms: i64,
    expires_ms: i64,
    /// `active` or `revoked`.
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_by: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    user: String,
    role: String,
    assigned_by: String,
    assigned_ms: i64,
}

fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn role_id(user: &UserId, role: &RoleName) -> String {
    format!("{user} {role}")
}

/// The bytes the MAC covers: a label, then each column as a u32 big-endian length and its bytes.
fn mac_input(tenant: &str, kind: &str, id: &str, body: &str, key_version: i64) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(MAC_LABEL.len() + tenant.len() + kind.len() + id.len() + body.len() + 28);
    out.extend_from_slice(MAC_LABEL);
    for part in [tenant.as_bytes(), kind.as_bytes(), id.as_bytes(), body.as_bytes()] {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&key_version.to_be_bytes());
    out
}

fn mac_key(set: &DomainKeySet, version: KeyVersion) -> Result<BlindIndexKey> {
    Ok(BlindIndexKey::derive(set.key(version)?, set.tenant(), set.domain(), "kluis-access", "mac", 32)?)
}

/// An [`AccessRegistry`] in the store's database (module documentation above).
pub struct StoreRegistry<B: Engine> {
    store: Arc<Store<B>>,
    provider: Arc<dyn RootKeyProvider>,
    mem: MemoryRegistry,
    loaded: Mutex<HashSet<TenantId>>,
}

impl<B: Engine> fmt::Debug for StoreRegistry<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.loaded.lock().map(|l| l.len()).unwrap_or(0);
        f.debug_struct("StoreRegistry").field("engine", &B::KIND).field("loaded_tenants", &n).finish()
    }
}

impl<B: Engine> StoreRegistry<B> {
    /// A registry on `store`'s database; `provider` unwraps the [`ACCESS_MAC_DOMAIN`] domain keys
    /// the MAC keys come from. Nothing is loaded yet.
    pub fn new(store: Arc<Store<B>>, provider: Arc<dyn RootKeyProvider>) -> Self {
        Self { store, provider, mem: MemoryRegistry::new(), loaded: Mutex::new(HashSet::new()) }
    }

    fn loaded_guard(&self) -> AuthzResult<std::sync::MutexGuard<'_, HashSet<TenantId>>> {
        self.loaded.lock().map_err(|_| AuthzError::Registry("registry lock poisoned".into()))
    }

    /// Is this tenant's state in memory?
    pub fn is_loaded(&self, tenant: &TenantId) -> bool {
        self.loaded_guard().map(|l| l.contains(tenant)).unwrap_or(false)
    }

    fn require_loaded(&self, tenant: &TenantId) -> AuthzResult<()> {
        if self.is_loaded(tenant) {
            Ok(())
        } else {
            Err(AuthzError::Registry(format!("the access registry of tenant {tenant} is not loaded")))
        }
    }

    async fn registry_key_set(&self, tenant: &TenantId, create: bool) -> Result<DomainKeySet> {
        let domain = DomainName::new(ACCESS_MAC_DOMAIN)?;
        if create {
            self.store.ensure_domain_key(&*self.provider, tenant, &domain).await?;
        }
        Ok(self.store.key_set(&*self.provider, tenant, &domain).await?)
    }

    async fn seal_row(&self, tenant: &TenantId, kind: &str, id: String, body: String) -> Result<AccessRow> {
        let set = self.registry_key_set(tenant, true).await?;
        let version = set.active_version().ok_or_else(|| {
            AuthzError::Registry("the access registry domain key has no active version".into())
        })?;
        let key_version = version.to_stored();
        let mac = mac_key(&set, version)?.index(&mac_input(tenant.as_str(), kind, &id, &body, key_version));
        Ok(AccessRow { tenant: tenant.to_string(), kind: kind.to_owned(), id, body, key_version, mac })
    }

    /// (Re)loads a tenant's grants and role assignments from the database, verifying every row,
    /// and its usage and break-glass accesses from the audit log. On any error the tenant is left
    /// unloaded (its grant checks deny).
    pub async fn load_tenant(&self, tenant: &TenantId) -> Result<()> {
        self.loaded_guard()?.remove(tenant);
        self.mem.forget_tenant(tenant)?;
        let state = self.read_tenant(tenant).await?;
        self.mem.replace_tenant(tenant, state)?;
        self.loaded_guard()?.insert(tenant.clone());
        Ok(())
    }

    /// Loads every tenant the store holds keys for. Stops at the first error.
    pub async fn load_all(&self) -> Result<()> {
        for t in self.store.tenants().await? {
            self.load_tenant(&t).await?;
        }
        Ok(())
    }

    async fn read_tenant(&self, tenant: &TenantId) -> Result<TenantState> {
        let (grants, assignments) = self.read_rows(tenant).await?;
        let mut state = TenantState { grants, assignments, ..TenantState::default() };
        self.read_usage(tenant, &mut state).await?;
        Ok(state)
    }

    /// Re-reads a loaded tenant's grant and role rows (each MAC verified) and applies their
    /// current state (existence, status, expiry, scope) to the copy in memory, keeping the usage
    /// already known;
    /// a tenant not loaded yet is loaded whole. Called (through
    /// [`AccessRegistry::refresh_grants`]) before every decision that uses a support grant, so a
    /// revocation or deletion written by another process counts at once. On an error the tenant
    /// is unloaded: its grant checks deny until a reload succeeds.
    pub async fn refresh_tenant_grants(&self, tenant: &TenantId) -> Result<()> {
        if !self.is_loaded(tenant) {
            return self.load_tenant(tenant).await;
        }
        match self.read_rows(tenant).await {
            Ok((grants, roles)) => Ok(self.mem.replace_rows(tenant, grants, roles)?),
            Err(e) => {
                self.loaded_guard()?.remove(tenant);
                self.mem.forget_tenant(tenant)?;
                Err(e)
            }
        }
    }

    /// A tenant's grants and role assignments from the database, every row verified.
    async fn read_rows(&self, tenant: &TenantId) -> Result<(Vec<SupportGrant>, Vec<RoleAssignment>)> {
        let rows = self.store.access_rows(tenant.as_str()).await?;
        let mut grants = Vec::new();
        let mut assignments = Vec::new();
        if !rows.is_empty() {
            let set = self.registry_key_set(tenant, false).await?;
            let mut keys: HashMap<KeyVersion, BlindIndexKey> = HashMap::new();
            for row in &rows {
                let tampered = || AuthzError::RegistryTampered {
                    tenant: tenant.to_string(),
                    kind: row.kind.clone(),
                    id: row.id.clone(),
                };
                let version = KeyVersion::from_stored(row.key_version).map_err(|_| tampered())?;
                let key = match keys.entry(version) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(mac_key(&set, version).map_err(|_| tampered())?)
                    }
                };
                let want = key.index(&mac_input(&row.tenant, &row.kind, &row.id, &row.body, row.key_version));
                if row.tenant != tenant.as_str() || !kluis_core::ct_eq(&want, &row.mac) {
                    return Err(tampered().into());
                }
                match row.kind.as_str() {
                    KIND_GRANT => grants.push(parse_grant(tenant, row).map_err(|_| tampered())?),
                    KIND_ROLE => assignments.push(parse_role(tenant, row).map_err(|_| tampered())?),
                    _ => return Err(tampered().into()),
                }
            }
        }
        Ok((grants, assignments))
    }

    /// Last uses, use counts and break-glass accesses from the tenant's audit entries.
    async fn read_usage(&self, tenant: &TenantId, state: &mut TenantState) -> Result<()> {
        let mut uses: HashMap<String, (u64, SystemTime)> = HashMap::new();
        let mut after = 0i64;
        loop {
            let page = self.store.audit_page(Some(tenant.as_str()), after, AUDIT_PAGE).await?;
            let n = page.len();
            for row in page {
                after = row.seq;
                let e = row.entry;
                if e.outcome != "allowed" {
                    continue;
                }
                let at = from_ms(e.at_ms);
                if let Some(g) = e.reason.strip_prefix("support_grant:") {
                    let u = uses.entry(g.to_owned()).or_insert((0, at));
                    u.0 = u.0.saturating_add(1);
                    u.1 = u.1.max(at);
                    continue;
                }
                let Ok(user) = UserId::new(e.actor.clone()) else { continue };
                if e.reason.starts_with("roles:") || e.reason.starts_with("break_glass:") {
                    let t = state.last_seen.entry(user.clone()).or_insert(at);
                    *t = (*t).max(at);
                }
                if let Some(rest) = e.reason.strip_prefix("break_glass:") {
                    let domains = rest
                        .split_once(" into ")
                        .map(|(_, d)| d.split(',').filter_map(|d| DomainName::new(d).ok()).collect())
                        .unwrap_or_default();
                    state.break_glass.push(BreakGlassEvent {
                        tenant: tenant.clone(),
                        user,
                        roles: e.roles.split(',').filter_map(|r| RoleName::new(r).ok()).collect(),
                        domains,
                        collection: Some(e.collection).filter(|c| !c.is_empty()),
                        record: Some(e.record).filter(|r| !r.is_empty()),
                        reason: e.break_glass,
                        at,
                    });
                }
            }
            if n < AUDIT_PAGE as usize {
                break;
            }
        }
        for g in &mut state.grants {
            if let Some((n, last)) = uses.get(g.id.as_str()) {
                g.uses = *n;
                g.last_used = Some(*last);
            }
        }
        Ok(())
    }

    /// Appends the audit entry of an access change **before** the change is written: no entry, no
    /// change.
    async fn audit(
        &self,
        authz: &Authorizer,
        admin: &Principal,
        tenant: &TenantId,
        action: &str,
        reason: String,
    ) -> Result<()> {
        let mut roles: Vec<&str> = admin.roles().iter().map(|r| r.as_str()).collect();
        roles.sort_unstable();
        let entry = AuditEntry {
            at_ms: to_ms(authz.clock().now()),
            actor: admin.user().to_string(),
            roles: roles.join(","),
            tenant: tenant.to_string(),
            action: action.to_owned(),
            outcome: "allowed".into(),
            reason,
            access_point: "kluis-service".into(),
            purpose: "access management".into(),
            ..AuditEntry::default()
        };
        self.store
            .append_audit(AuditAppend { entry, checkpoint_every: DEFAULT_CHECKPOINT_EVERY })
            .await
            .map_err(Error::AuditUnavailable)
    }

    async fn ensure_loaded(&self, tenant: &TenantId) -> Result<()> {
        if self.is_loaded(tenant) { Ok(()) } else { self.load_tenant(tenant).await }
    }

    /// [`Authorizer::grant_support`], stored in the database before it returns.
    pub async fn grant_support(
        &self,
        authz: &Authorizer,
        admin: &Principal,
        tenant: &TenantId,
        support_user: UserId,
        scope: GrantScope,
        duration: Duration,
    ) -> Result<SupportGrant> {
        let grant = authz.new_support_grant(admin, tenant, support_user, scope, duration)?;
        self.ensure_loaded(tenant).await?;
        let domains: Vec<&str> = grant.scope.domains.iter().map(|d| d.as_str()).collect();
        let reason = format!(
            "grant {} to {}: {} on {} for {} days",
            grant.id,
            grant.support_user,
            grant.scope.actions,
            domains.join(","),
            duration.as_secs() / 86_400
        );
        self.audit(authz, admin, tenant, "grant_support", reason).await?;
        let row = self.seal_row(tenant, KIND_GRANT, grant.id.to_string(), grant_body(&grant)?).await?;
        self.store.access_put(&row).await?;
        self.mem.insert_grant(grant.clone())?;
        Ok(grant)
    }

    /// [`Authorizer::revoke_support`], stored in the database before it returns.
    pub async fn revoke_support(
        &self,
        authz: &Authorizer,
        admin: &Principal,
        tenant: &TenantId,
        id: &GrantId,
    ) -> Result<()> {
        authz.require_admin(admin, tenant)?;
        self.ensure_loaded(tenant).await?;
        let mut g = self.mem.grant(tenant, id)?.ok_or_else(|| AuthzError::UnknownGrant(id.to_string()))?;
        g.status = GrantStatus::Revoked { at: authz.clock().now(), by: admin.user().clone() };
        self.audit(authz, admin, tenant, "revoke_support", format!("revoke {} of {}", g.id, g.support_user))
            .await?;
        let row = self.seal_row(tenant, KIND_GRANT, g.id.to_string(), grant_body(&g)?).await?;
        self.store.access_put(&row).await?;
        Ok(self.mem.update_grant(&g)?)
    }

    /// [`Authorizer::assign_role`], stored in the database before it returns.
    pub async fn assign_role(
        &self,
        authz: &Authorizer,
        admin: &Principal,
        tenant: &TenantId,
        user: UserId,
        role: RoleName,
    ) -> Result<()> {
        let a = authz.new_role_assignment(admin, tenant, user, role)?;
        self.ensure_loaded(tenant).await?;
        if self.mem.assignments(tenant)?.iter().any(|x| x.user == a.user && x.role == a.role) {
            return Ok(());
        }
        self.audit(authz, admin, tenant, "assign_role", format!("assign {} to {}", a.role, a.user)).await?;
        let body = serde_json::to_string(&RoleBody {
            user: a.user.to_string(),
            role: a.role.to_string(),
            assigned_by: a.assigned_by.to_string(),
            assigned_ms: to_ms(a.assigned_at),
        })
        .map_err(|e| AuthzError::Registry(e.to_string()))?;
        let row = self.seal_row(tenant, KIND_ROLE, role_id(&a.user, &a.role), body).await?;
        self.store.access_put(&row).await?;
        Ok(self.mem.assign_role(a)?)
    }

    /// [`Authorizer::revoke_role`], deleted from the database before it returns; `true` if it
    /// existed.
    pub async fn revoke_role(
        &self,
        authz: &Authorizer,
        admin: &Principal,
        tenant: &TenantId,
        user: &UserId,
        role: &RoleName,
    ) -> Result<bool> {
        authz.require_admin(admin, tenant)?;
        self.ensure_loaded(tenant).await?;
        self.audit(authz, admin, tenant, "remove_role", format!("remove {role} from {user}")).await?;
        let gone = self.store.access_delete(tenant.as_str(), KIND_ROLE, &role_id(user, role)).await?;
        let had = self.mem.remove_role(tenant, user, role)?;
        Ok(gone || had)
    }

    /// Re-authenticates every row of a tenant under the active [`ACCESS_MAC_DOMAIN`] key version (run it after
    /// a rotation of that key and before retiring the old version, whose rows would otherwise no
    /// longer verify). Returns the number of rows rewritten.
    pub async fn reseal_tenant(&self, tenant: &TenantId) -> Result<usize> {
        let state = self.read_tenant(tenant).await?;
        let mut n = 0usize;
        for g in &state.grants {
            let row = self.seal_row(tenant, KIND_GRANT, g.id.to_string(), grant_body(g)?).await?;
            self.store.access_put(&row).await?;
            n += 1;
        }
        for row in self.store.access_rows(tenant.as_str()).await? {
            if row.kind == KIND_ROLE {
                let r = self.seal_row(tenant, KIND_ROLE, row.id, row.body).await?;
                self.store.access_put(&r).await?;
                n += 1;
            }
        }
        self.load_tenant(tenant).await?;
        Ok(n)
    }
}

fn grant_body(g: &SupportGrant) -> AuthzResult<String> {
    let (status, revoked_ms, revoked_by) = match &g.status {
        GrantStatus::Revoked { at, by } => ("revoked", Some(to_ms(*at)), Some(by.to_string())),
        // Idle-disabled is derived from the last use again on load: stored as active.
        _ => ("active", None, None),
    };
    serde_json::to_string(&GrantBody {
        support_user: g.support_user.to_string(),
        granted_by: g.granted_by.to_string(),
        domains: g.scope.domains.iter().map(|d| d.to_string()).collect(),
        actions: g.scope.actions.iter().map(|a| a.as_str().to_owned()).collect(),
        created_ms: to_ms(g.created_at),
        expires_ms: to_ms(g.expires_at),
        status: status.to_owned(),
        revoked_ms,
        revoked_by,
    })
    .map_err(|e| AuthzError::Registry(e.to_string()))
}

fn parse_grant(tenant: &TenantId, row: &AccessRow) -> AuthzResult<SupportGrant> {
    let b: GrantBody = serde_json::from_str(&row.body).map_err(|e| AuthzError::Registry(e.to_string()))?;
    let mut domains = BTreeSet::new();
    for d in &b.domains {
        domains.insert(DomainName::new(d.clone())?);
    }
    let mut actions = ActionSet::default();
    for a in &b.actions {
        actions.insert(Action::parse(a).ok_or_else(|| AuthzError::Registry(format!("unknown action {a}")))?);
    }
    let status = match (b.status.as_str(), b.revoked_ms, b.revoked_by) {
        ("active", None, None) => GrantStatus::Active,
        ("revoked", Some(at), Some(by)) => GrantStatus::Revoked { at: from_ms(at), by: UserId::new(by)? },
        _ => return Err(AuthzError::Registry("bad grant status".into())),
    };
    Ok(SupportGrant {
        id: GrantId::parse(&row.id)?,
        tenant: tenant.clone(),
        support_user: UserId::new(b.support_user)?,
        granted_by: UserId::new(b.granted_by)?,
        scope: GrantScope { domains, actions },
        created_at: from_ms(b.created_ms),
        expires_at: from_ms(b.expires_ms),
        last_used: None,
        uses: 0,
        status,
    })
}

fn parse_role(tenant: &TenantId, row: &AccessRow) -> AuthzResult<RoleAssignment> {
    let b: RoleBody = serde_json::from_str(&row.body).map_err(|e| AuthzError::Registry(e.to_string()))?;
    let a = RoleAssignment {
        tenant: tenant.clone(),
        user: UserId::new(b.user)?,
        role: RoleName::new(b.role)?,
        assigned_by: UserId::new(b.assigned_by)?,
        assigned_at: from_ms(b.assigned_ms),
    };
    if role_id(&a.user, &a.role) != row.id {
        return Err(AuthzError::Registry("role row id does not match its body".into()));
    }
    Ok(a)
}

const DURABLE: &str =
    "a stored access registry writes grant and role changes through StoreRegistry's async methods";

impl<B: Engine> AccessRegistry for StoreRegistry<B> {
    fn refresh_grants<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AuthzResult<()>> + Send + 'a>> {
        Box::pin(async move {
            self.refresh_tenant_grants(tenant).await.map_err(|e| match e {
                Error::Authz(e) => e,
                e => AuthzError::Registry(e.to_string()),
            })
        })
    }

    fn insert_grant(&self, _grant: SupportGrant) -> AuthzResult<()> {
        Err(AuthzError::Registry(DURABLE.into()))
    }

    fn grant(&self, tenant: &TenantId, id: &GrantId) -> AuthzResult<Option<SupportGrant>> {
        self.require_loaded(tenant)?;
        self.mem.grant(tenant, id)
    }

    fn grants(&self, tenant: &TenantId) -> AuthzResult<Vec<SupportGrant>> {
        self.require_loaded(tenant)?;
        self.mem.grants(tenant)
    }

    fn update_grant(&self, grant: &SupportGrant) -> AuthzResult<()> {
        // Only the idle disabling comes through here (from a check or a sweep); it is derived
        // again from the last use on load. A revocation must be durable: refused here.
        if !matches!(grant.status, GrantStatus::DisabledIdle { .. }) {
            return Err(AuthzError::Registry(DURABLE.into()));
        }
        self.require_loaded(&grant.tenant)?;
        self.mem.update_grant(grant)
    }

    fn record_grant_use(&self, tenant: &TenantId, id: &GrantId, at: SystemTime) -> AuthzResult<()> {
        self.require_loaded(tenant)?;
        self.mem.record_grant_use(tenant, id, at)
    }

    fn assign_role(&self, _assignment: RoleAssignment) -> AuthzResult<()> {
        Err(AuthzError::Registry(DURABLE.into()))
    }

    fn remove_role(&self, _tenant: &TenantId, _user: &UserId, _role: &RoleName) -> AuthzResult<bool> {
        Err(AuthzError::Registry(DURABLE.into()))
    }

    fn assignments(&self, tenant: &TenantId) -> AuthzResult<Vec<RoleAssignment>> {
        self.require_loaded(tenant)?;
        self.mem.assignments(tenant)
    }

    fn touch_user(&self, tenant: &TenantId, user: &UserId, at: SystemTime) -> AuthzResult<()> {
        // Derived from the audit log on load; a tenant not loaded has nothing to update.
        if self.is_loaded(tenant) { self.mem.touch_user(tenant, user, at) } else { Ok(()) }
    }

    fn last_seen(&self, tenant: &TenantId, user: &UserId) -> AuthzResult<Option<SystemTime>> {
        self.require_loaded(tenant)?;
        self.mem.last_seen(tenant, user)
    }

    fn record_break_glass(&self, event: BreakGlassEvent) -> AuthzResult<()> {
        // The Service's audit entry of the access is the durable record; memory serves reviews
        // until the next load.
        if self.is_loaded(&event.tenant) { self.mem.record_break_glass(event) } else { Ok(()) }
    }

    fn break_glass_events(&self, tenant: &TenantId) -> AuthzResult<Vec<BreakGlassEvent>> {
        self.require_loaded(tenant)?;
        self.mem.break_glass_events(tenant)
    }
}
