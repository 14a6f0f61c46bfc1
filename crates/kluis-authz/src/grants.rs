//! Support access grants, role assignments, break-glass events, and the registry that keeps them.
//!
//! Two registries implement the small [`AccessRegistry`] trait: the in-process [`MemoryRegistry`]
//! (lost when the process ends) and `kluis_service::authz::StoreRegistry`, kept in the store's own database
//! with every row authenticated, so grants, role assignments, last-use times and break-glass
//! accesses survive restarts.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use kluis_core::{DomainName, TenantId};

use super::types::{ActionSet, GrantId, RoleName, UserId};
use crate::error::{Error, Result};

/// What a support grant allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantScope {
    /// Domains, each named (medical only if listed).
    pub domains: BTreeSet<DomainName>,
    /// Actions on those domains.
    pub actions: ActionSet,
}

/// Whether a support grant can be used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantStatus {
    /// Usable until it expires or idles out.
    Active,
    /// Revoked by a tenant administrator.
    Revoked {
        /// When.
        at: SystemTime,
        /// By whom.
        by: UserId,
    },
    /// Disabled automatically after the idle limit (31 days by default) without use.
    DisabledIdle {
        /// When the registry noticed.
        at: SystemTime,
    },
}

/// A time-limited, scoped access for a named support user to one tenant's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupportGrant {
    /// Id (random).
    pub id: GrantId,
    /// The tenant whose data it opens.
    pub tenant: TenantId,
    /// The support user it names.
    pub support_user: UserId,
    /// The tenant administrator who granted it.
    pub granted_by: UserId,
    /// What it allows.
    pub scope: GrantScope,
    /// When it was granted.
    pub created_at: SystemTime,
    /// When it ends.
    pub expires_at: SystemTime,
    /// Last allowed use.
    pub last_used: Option<SystemTime>,
    /// Number of allowed uses.
    pub uses: u64,
    /// Status.
    pub status: GrantStatus,
}

/// A role held by a user in a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleAssignment {
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// The role.
    pub role: RoleName,
    /// Who assigned it.
    pub assigned_by: UserId,
    /// When.
    pub assigned_at: SystemTime,
}

/// One emergency access, kept for review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakGlassEvent {
    /// The tenant.
    pub tenant: TenantId,
    /// Who.
    pub user: UserId,
    /// Their roles at the time.
    pub roles: Vec<RoleName>,
    /// The domains opened by break-glass (those the roles lacked).
    pub domains: Vec<DomainName>,
    /// The collection, if the target named one.
    pub collection: Option<String>,
    /// The record, if the target named one.
    pub record: Option<String>,
    /// The reason stated.
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

/// Persistence of grants, role assignments, last-use times and break-glass events.
///
/// Every method may fail (a database); the authorizer then **denies**.
pub trait AccessRegistry: Send + Sync + fmt::Debug {
    /// Stores a new grant.
    fn insert_grant(&self, grant: SupportGrant) -> Result<()>;
    /// One grant of a tenant.
    fn grant(&self, tenant: &TenantId, id: &GrantId) -> Result<Option<SupportGrant>>;
    /// Every grant of a tenant.
    fn grants(&self, tenant: &TenantId) -> Result<Vec<SupportGrant>>;
    /// Replaces a stored grant (status, last use, use count).
    fn update_grant(&self, grant: &SupportGrant) -> Result<()>;
    /// Records one allowed use at `at` (last use and use count). The default reads and replaces
    /// the grant; a registry can do it in place.
    fn record_grant_use(&self, tenant: &TenantId, id: &GrantId, at: SystemTime) -> Result<()> {
        let mut g = self.grant(tenant, id)?.ok_or_else(|| Error::UnknownGrant(id.to_string()))?;
        g.last_used = Some(at);
        g.uses = g.uses.saturating_add(1);
        self.update_grant(&g)
    }
    /// Stores a role assignment (idempotent).
    fn assign_role(&self, assignment: RoleAssignment) -> Result<()>;
    /// Removes a role assignment; `true` if it existed.
    fn remove_role(&self, tenant: &TenantId, user: &UserId, role: &RoleName) -> Result<bool>;
    /// Every role assignment of a tenant.
    fn assignments(&self, tenant: &TenantId) -> Result<Vec<RoleAssignment>>;
    /// Records that a user's roles allowed an action at `at`.
    fn touch_user(&self, tenant: &TenantId, user: &UserId, at: SystemTime) -> Result<()>;
    /// The last time a user's roles allowed an action.
    fn last_seen(&self, tenant: &TenantId, user: &UserId) -> Result<Option<SystemTime>>;
    /// Records a break-glass access.
    fn record_break_glass(&self, event: BreakGlassEvent) -> Result<()>;
    /// Break-glass accesses of a tenant, oldest first.
    fn break_glass_events(&self, tenant: &TenantId) -> Result<Vec<BreakGlassEvent>>;
    /// Brings a tenant's support grants and role assignments up to date with durable storage
    /// before a decision that uses one, so that a revocation written by another process counts
    /// at once. The
    /// `kluis_service::Service` awaits it before every check of a principal with a support grant. On
    /// an error the registry must make that tenant's grant checks deny. The default (an
    /// in-process registry, nothing else can change it) does nothing.
    fn refresh_grants<'a>(
        &'a self,
        _tenant: &'a TenantId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[derive(Debug, Default)]
struct Inner {
    grants: HashMap<TenantId, Vec<SupportGrant>>,
    assignments: HashMap<TenantId, Vec<RoleAssignment>>,
    last_seen: HashMap<TenantId, HashMap<UserId, SystemTime>>,
    break_glass: HashMap<TenantId, Vec<BreakGlassEvent>>,
}

/// An in-process [`AccessRegistry`]: lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    inner: Mutex<Inner>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        let mut g = self.inner.lock().map_err(|_| Error::Registry("registry lock poisoned".into()))?;
        f(&mut g)
    }
}

/// One tenant's state, as a persisted registry loads it.
#[derive(Debug, Default)]
pub struct TenantState {
    /// Support grants.
    pub grants: Vec<SupportGrant>,
    /// Role assignments.
    pub assignments: Vec<RoleAssignment>,
    /// Each user's last allowed action.
    pub last_seen: HashMap<UserId, SystemTime>,
    /// Break-glass accesses, oldest first.
    pub break_glass: Vec<BreakGlassEvent>,
}

impl MemoryRegistry {
    /// Replaces everything held for `tenant`.
    pub fn replace_tenant(&self, tenant: &TenantId, state: TenantState) -> Result<()> {
        self.with(|i| {
            i.grants.insert(tenant.clone(), state.grants);
            i.assignments.insert(tenant.clone(), state.assignments);
            i.last_seen.insert(tenant.clone(), state.last_seen);
            i.break_glass.insert(tenant.clone(), state.break_glass);
            Ok(())
        })
    }

    /// Replaces the grants and role assignments held for `tenant` with `fresh` and `roles` (as
    /// just read from durable storage), keeping the last use and use count already known for a
    /// grant that is still there.
    pub fn replace_rows(
        &self,
        tenant: &TenantId,
        fresh: Vec<SupportGrant>,
        roles: Vec<RoleAssignment>,
    ) -> Result<()> {
        self.with(|i| {
            i.assignments.insert(tenant.clone(), roles);
            let old = i.grants.remove(tenant).unwrap_or_default();
            let merged = fresh
                .into_iter()
                .map(|mut g| {
                    if let Some(o) = old.iter().find(|o| o.id == g.id) {
                        g.uses = g.uses.max(o.uses);
                        g.last_used = match (g.last_used, o.last_used) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            (a, b) => a.or(b),
                        };
                        if matches!(g.status, GrantStatus::Active)
                            && matches!(o.status, GrantStatus::DisabledIdle { .. })
                        {
                            g.status = o.status.clone();
                        }
                    }
                    g
                })
                .collect();
            i.grants.insert(tenant.clone(), merged);
            Ok(())
        })
    }

    /// Forgets everything held for `tenant`.
    pub fn forget_tenant(&self, tenant: &TenantId) -> Result<()> {
        self.with(|i| {
            i.grants.remove(tenant);
            i.assignments.remove(tenant);
            i.last_seen.remove(tenant);
            i.break_glass.remove(tenant);
            Ok(())
        })
    }
}

impl AccessRegistry for MemoryRegistry {
    fn insert_grant(&self, grant: SupportGrant) -> Result<()> {
        self.with(|i| {
            let v = i.grants.entry(grant.tenant.clone()).or_default();
            if v.iter().any(|g| g.id == grant.id) {
                return Err(Error::Registry(format!("grant {} exists already", grant.id)));
            }
            v.push(grant);
            Ok(())
        })
    }

    fn grant(&self, tenant: &TenantId, id: &GrantId) -> Result<Option<SupportGrant>> {
        self.with(|i| Ok(i.grants.get(tenant).and_then(|v| v.iter().find(|g| &g.id == id).cloned())))
    }

    fn grants(&self, tenant: &TenantId) -> Result<Vec<SupportGrant>> {
        self.with(|i| Ok(i.grants.get(tenant).cloned().unwrap_or_default()))
    }

    fn update_grant(&self, grant: &SupportGrant) -> Result<()> {
        self.with(|i| {
            let slot = i
                .grants
                .get_mut(&grant.tenant)
                .and_then(|v| v.iter_mut().find(|g| g.id == grant.id))
                .ok_or_else(|| Error::UnknownGrant(grant.id.to_string()))?;
            *slot = grant.clone();
            Ok(())
        })
    }

    fn record_grant_use(&self, tenant: &TenantId, id: &GrantId, at: SystemTime) -> Result<()> {
        self.with(|i| {
            let g = i
                .grants
                .get_mut(tenant)
                .and_then(|v| v.iter_mut().find(|g| &g.id == id))
                .ok_or_else(|| Error::UnknownGrant(id.to_string()))?;
            g.last_used = Some(at);
            g.uses = g.uses.saturating_add(1);
            Ok(())
        })
    }

    fn assign_role(&self, a: RoleAssignment) -> Result<()> {
        self.with(|i| {
            let v = i.assignments.entry(a.tenant.clone()).or_default();
            if !v.iter().any(|x| x.user == a.user && x.role == a.role) {
                v.push(a);
            }
            Ok(())
        })
    }

    fn remove_role(&self, tenant: &TenantId, user: &UserId, role: &RoleName) -> Result<bool> {
        self.with(|i| {
            let Some(v) = i.assignments.get_mut(tenant) else { return Ok(false) };
            let before = v.len();
            v.retain(|x| !(&x.user == user && &x.role == role));
            Ok(v.len() != before)
        })
    }

    fn assignments(&self, tenant: &TenantId) -> Result<Vec<RoleAssignment>> {
        self.with(|i| Ok(i.assignments.get(tenant).cloned().unwrap_or_default()))
    }

    fn touch_user(&self, tenant: &TenantId, user: &UserId, at: SystemTime) -> Result<()> {
        self.with(|i| {
            let users = match i.last_seen.get_mut(tenant) {
                Some(u) => u,
                None => i.last_seen.entry(tenant.clone()).or_default(),
            };
            match users.get_mut(user) {
                Some(t) => *t = (*t).max(at),
                None => {
                    users.insert(user.clone(), at);
                }
            }
            Ok(())
        })
    }

    fn last_seen(&self, tenant: &TenantId, user: &UserId) -> Result<Option<SystemTime>> {
        self.with(|i| Ok(i.last_seen.get(tenant).and_then(|u| u.get(user)).copied()))
    }

    fn record_break_glass(&self, event: BreakGlassEvent) -> Result<()> {
        self.with(|i| {
            i.break_glass.entry(event.tenant.clone()).or_default().push(event);
            Ok(())
        })
    }

    fn break_glass_events(&self, tenant: &TenantId) -> Result<Vec<BreakGlassEvent>> {
        self.with(|i| Ok(i.break_glass.get(tenant).cloned().unwrap_or_default()))
    }
}

/// What an access-review line is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Holding {
    /// A role assignment.
    Role(RoleName),
    /// A support grant.
    SupportGrant {
        /// Id.
        id: GrantId,
        /// Scope.
        scope: GrantScope,
        /// End.
        expires_at: SystemTime,
        /// Status when the review was made (an expired grant shows as active with a past end).
        status: GrantStatus,
        /// Number of uses.
        uses: u64,
    },
}

/// One line of an access review: who holds what, since when, granted by whom, last used when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewEntry {
    /// The user.
    pub user: UserId,
    /// The role or grant.
    pub holding: Holding,
    /// Who gave it.
    pub granted_by: UserId,
    /// Since when.
    pub since: SystemTime,
    /// Last use (for a role: the user's last allowed action through any role).
    pub last_used: Option<SystemTime>,
}

/// A tenant's access review: every role assignment and support grant, and every break-glass
/// access, for the periodic review customers must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessReview {
    /// The tenant.
    pub tenant: TenantId,
    /// When it was made.
    pub generated_at: SystemTime,
    /// Roles and grants, sorted by user then holding.
    pub entries: Vec<ReviewEntry>,
    /// Break-glass accesses, oldest first.
    pub break_glass: Vec<BreakGlassEvent>,
}
