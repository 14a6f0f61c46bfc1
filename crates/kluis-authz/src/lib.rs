//! Authorization: who may do what, on which domain, in which tenant.
//!
//! [`Authorizer::check`] answers one [`Request`] for one [`Principal`] with a [`Decision`]. It
//! never fails: anything unexpected (an unknown domain, a registry that cannot be read) is a
//! denial with a reason. The default is deny.
//!
//! An allow carries an [`AccessProof`]: a value with private fields and no public constructor,
//! not `Clone`, bound to the tenant, domains, action and target of the request. This crate sits
//! below the records store so that the store can take the proof itself: `kluis_store::Store::access`
//! turns an `&AccessProof` into the store's capability (`kluis_store::Access`) holding exactly the
//! proof's tenant and domain keys, limited to its target (a record, a collection, optionally one
//! subject's) and, for a read, search or export, to reading only. Every store call that opens or
//! writes a value takes that capability and checks the record against it before anything is
//! opened or written (`StoreError::OutOfScope`).
//!
//! What the types do not enforce: the store has one other way to mint a capability,
//! `kluis_store::Store::admin_access`, for the administrative tools (the CLI, re-encryption,
//! shredding, backups); any code holding the root key provider can call it. It is one named
//! method, so a review finds every use.
//!
//! Rules, in order:
//! 1. a principal of another tenant is denied ([`DenyReason::CrossTenant`]); a principal with no
//!    tenant and no support grant is denied;
//! 2. a data action needs at least one domain, and every domain must be known to the policy;
//! 3. every domain must be covered by one of the principal's roles (for `employee`-like roles:
//!    only when the target's subject is the principal's own subject);
//! 4. otherwise, a **break-glass** read: if each uncovered domain is listed in the `break_glass`
//!    of one of the roles and a reason of at least 10 characters is stated, the read is allowed,
//!    flagged, and recorded for review;
//! 5. otherwise, a **support grant** named by the principal: it must name this user and tenant,
//!    be active, not expired, used within the idle limit (31 days; an idle grant is disabled on
//!    the spot), and cover the action and every domain. Each allowed use is recorded.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
mod error;
mod grants;
mod policy;
mod types;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kluis_core::{Context, DomainName, TenantId};

pub use error::{Error, Result};
pub use grants::{
    AccessRegistry, AccessReview, BreakGlassEvent, GrantScope, GrantStatus, Holding, MemoryRegistry,
    ReviewEntry, RoleAssignment, SupportGrant, TenantState,
};
pub use policy::Policy;
pub use types::{Action, ActionSet, GrantId, Principal, Request, RoleName, Target, UserId};

use crate::clock::{Clock, SystemClock, since};
use policy::Coverage;

/// Why a request was denied. Messages are lower-case and never hold data values.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenyReason {
    /// The principal belongs to no tenant and holds no support grant.
    NoTenant,
    /// The data belongs to another tenant than the principal's.
    CrossTenant,
    /// A data action named no domain.
    NoDomain,
    /// A domain the policy does not know.
    UnknownDomain(DomainName),
    /// No role of the principal grants this tenant-level action (on every domain).
    ActionNotPermitted(Action),
    /// No role of the principal grants the action on the domain.
    NotPermitted {
        /// The action.
        action: Action,
        /// The first domain (in sorted order) not covered.
        domain: DomainName,
    },
    /// The roles grant the action on the domain only for the principal's own records, and the
    /// target is not one of them.
    OwnRecordsOnly {
        /// The action.
        action: Action,
        /// The domain.
        domain: DomainName,
    },
    /// Break-glass was asked for, but no role of the principal may break the glass into the domain.
    BreakGlassNotAllowed(DomainName),
    /// Break-glass opens only reads.
    BreakGlassReadOnly,
    /// The stated break-glass reason is too short or too long.
    BreakGlassReason,
    /// The support grant does not exist in this tenant.
    GrantUnknown,
    /// The support grant names another user.
    GrantOtherUser,
    /// The support grant was revoked.
    GrantRevoked,
    /// The support grant has expired.
    GrantExpired,
    /// The support grant was disabled after the idle limit without use.
    GrantIdle,
    /// The support grant does not cover the action or a domain.
    GrantOutOfScope {
        /// The action.
        action: Action,
        /// The first domain not covered, if a domain is the reason.
        domain: Option<DomainName>,
    },
    /// The access registry could not be read or written; denied to fail closed.
    RegistryUnavailable,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTenant => f.write_str("the principal belongs to no tenant and holds no support grant"),
            Self::CrossTenant => f.write_str("the data belongs to another tenant"),
            Self::NoDomain => f.write_str("the request names no domain"),
            Self::UnknownDomain(d) => write!(f, "domain {d} is not defined in the policy"),
            Self::ActionNotPermitted(a) => write!(f, "no role of the principal grants {a}"),
            Self::NotPermitted { action, domain } => {
                write!(f, "no role of the principal grants {action} on domain {domain}")
            }
            Self::OwnRecordsOnly { action, domain } => write!(
                f,
                "the principal's roles grant {action} on domain {domain} only for the principal's own records"
            ),
            Self::BreakGlassNotAllowed(d) => {
                write!(f, "no role of the principal may use break-glass access to domain {d}")
            }
            Self::BreakGlassReadOnly => f.write_str("break-glass access allows reading only"),
            Self::BreakGlassReason => {
                f.write_str("break-glass access needs a stated reason of 10 to 1000 characters")
            }
            Self::GrantUnknown => f.write_str("the support grant does not exist in this tenant"),
            Self::GrantOtherUser => f.write_str("the support grant names another user"),
            Self::GrantRevoked => f.write_str("the support grant was revoked"),
            Self::GrantExpired => f.write_str("the support grant has expired"),
            Self::GrantIdle => f.write_str("the support grant was disabled after going unused for too long"),
            Self::GrantOutOfScope { action, domain: Some(d) } => {
                write!(f, "the support grant does not cover {action} on domain {d}")
            }
            Self::GrantOutOfScope { action, domain: None } => {
                write!(f, "the support grant does not cover {action}")
            }
            Self::RegistryUnavailable => f.write_str("the access registry is unavailable"),
        }
    }
}

/// Why a request was allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Basis {
    /// The principal's roles (the smallest role name that covers each domain), sorted.
    Roles(Vec<RoleName>),
    /// Emergency access: flagged for audit and listed for review.
    BreakGlass {
        /// The roles that allow break-glass into the uncovered domains, sorted.
        roles: Vec<RoleName>,
        /// The domains the roles lacked.
        domains: Vec<DomainName>,
        /// The stated reason.
        reason: String,
    },
    /// A support grant.
    SupportGrant(GrantId),
}

/// The audit log's text: `roles:R1,R2`, `break_glass:R1 into D1,D2` (the reason is logged apart),
/// or `support_grant:ID`.
impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, items: &mut dyn Iterator<Item = &str>| {
            for (i, s) in items.enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                f.write_str(s)?;
            }
            Ok(())
        };
        match self {
            Self::Roles(r) => {
                f.write_str("roles:")?;
                join(f, &mut r.iter().map(|r| r.as_str()))
            }
            Self::BreakGlass { roles, domains, .. } => {
                f.write_str("break_glass:")?;
                join(f, &mut roles.iter().map(|r| r.as_str()))?;
                f.write_str(" into ")?;
                join(f, &mut domains.iter().map(|d| d.as_str()))
            }
            Self::SupportGrant(g) => write!(f, "support_grant:{g}"),
        }
    }
}

/// Proof that an authorization check allowed one action on one target in one tenant.
///
/// Only [`Authorizer::check`] creates it (private fields, no constructor, not `Clone`). A store
/// call that decrypts requires `&AccessProof` and checks [`AccessProof::covers`] against the exact
/// context it opens.
///
/// Code outside this crate cannot make one:
///
/// ```compile_fail
/// # use kluis_service::authz::AccessProof;
/// let forged = AccessProof { break_glass: false };
/// ```
///
/// nor copy one to use it twice or elsewhere:
///
/// ```compile_fail
/// # use kluis_service::authz::AccessProof;
/// fn duplicate(p: &AccessProof) -> AccessProof {
///     p.clone()
/// }
/// ```
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct AccessProof {
    user: UserId,
    tenant: TenantId,
    action: Action,
    domains: Vec<DomainName>,
    target: Target,
    break_glass: bool,
    grant: Option<GrantId>,
    issued_at: SystemTime,
}

impl AccessProof {
    /// The user it was issued to.
    pub fn user(&self) -> &UserId {
        &self.user
    }
    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    /// The action.
    pub fn action(&self) -> Action {
        self.action
    }
    /// The domains, sorted.
    pub fn domains(&self) -> &[DomainName] {
        &self.domains
    }
    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }
    /// Was it emergency access?
    pub fn is_break_glass(&self) -> bool {
        self.break_glass
    }
    /// The support grant used, if any.
    pub fn support_grant(&self) -> Option<&GrantId> {
        self.grant.as_ref()
    }
    /// When the check ran.
    pub fn issued_at(&self) -> SystemTime {
        self.issued_at
    }

    /// Does this proof allow its action on `record` of `collection` in `domain` of `tenant`?
    /// A record target covers exactly that record; a collection target without a subject limit
    /// covers every record of the collection; a tenant target covers everything in the tenant.
    /// A target limited to a subject needs [`AccessProof::covers_subject`].
    pub fn covers(&self, tenant: &TenantId, domain: &DomainName, collection: &str, record: &str) -> bool {
        if &self.tenant != tenant || self.domains.binary_search(domain).is_err() {
            return false;
        }
        match &self.target {
            Target::Record { collection: c, record: r, .. } => &**c == collection && &**r == record,
            Target::Collection { collection: c, subject: None } => &**c == collection,
            Target::Collection { subject: Some(_), .. } => false,
            Target::Tenant => true,
        }
    }

    /// As [`AccessProof::covers`], for a record about `subject` (as the store recorded it).
    pub fn covers_subject(
        &self,
        tenant: &TenantId,
        domain: &DomainName,
        collection: &str,
        record: &str,
        subject: Option<&str>,
    ) -> bool {
        if &self.tenant != tenant || self.domains.binary_search(domain).is_err() {
            return false;
        }
        let subject_ok = |want: &Option<Arc<str>>| want.is_none() || want.as_deref() == subject;
        match &self.target {
            Target::Record { collection: c, record: r, subject: s } => {
                &**c == collection && &**r == record && subject_ok(s)
            }
            Target::Collection { collection: c, subject: s } => &**c == collection && subject_ok(s),
            Target::Tenant => true,
        }
    }

    /// [`AccessProof::covers`] for a `kluis_core` sealing context.
    pub fn covers_context(&self, ctx: &Context<'_>) -> bool {
        self.covers(ctx.tenant, ctx.domain, ctx.collection, ctx.record)
    }

    /// May a store **decrypt** the value at `ctx` under this proof? The action must reveal
    /// plaintext (`read`, `search`, `export`) and the proof must cover the context. A
    /// `manage_keys` or `read_audit` proof never opens data. This is the check decrypting store
    /// calls make.
    pub fn allows_open(&self, ctx: &Context<'_>) -> bool {
        self.action.reveals_plaintext() && self.covers_context(ctx)
    }

    /// May a store **seal** (write) the value at `ctx` under this proof? The action must be
    /// `write` and the proof must cover the context.
    pub fn allows_write(&self, ctx: &Context<'_>) -> bool {
        self.action == Action::Write && self.covers_context(ctx)
    }
}

/// An allow: the proof, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Allow {
    proof: AccessProof,
    basis: Basis,
}

impl Allow {
    /// The proof.
    pub fn proof(&self) -> &AccessProof {
        &self.proof
    }
    /// Why it was allowed.
    pub fn basis(&self) -> &Basis {
        &self.basis
    }
    /// Takes the proof.
    pub fn into_proof(self) -> AccessProof {
        self.proof
    }
}

/// A denial, with its reason. Usable as an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("access denied: {reason}")]
pub struct Deny {
    reason: DenyReason,
}

impl Deny {
    /// The denial of a call with no tenant to act in (a support user that named none).
    pub fn no_tenant() -> Self {
        Self { reason: DenyReason::NoTenant }
    }

    /// Why.
    pub fn reason(&self) -> &DenyReason {
        &self.reason
    }
}

/// The answer to one request.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Allowed.
    Allow(Allow),
    /// Denied.
    Deny(Deny),
}

impl Decision {
    /// Was it allowed?
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// Was it allowed through break-glass?
    pub fn is_break_glass(&self) -> bool {
        matches!(self, Decision::Allow(a) if a.proof.break_glass)
    }

    /// The denial reason, if denied.
    pub fn deny_reason(&self) -> Option<&DenyReason> {
        match self {
            Decision::Deny(d) => Some(&d.reason),
            Decision::Allow(_) => None,
        }
    }

    /// The basis, if allowed.
    pub fn basis(&self) -> Option<&Basis> {
        match self {
            Decision::Allow(a) => Some(&a.basis),
            Decision::Deny(_) => None,
        }
    }

    /// The proof, or the denial as an error.
    pub fn into_proof(self) -> Result<AccessProof, Deny> {
        match self {
            Decision::Allow(a) => Ok(a.proof),
            Decision::Deny(d) => Err(d),
        }
    }
}

/// Limits of the authorizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthzConfig {
    /// A support grant unused this long is disabled (default 31 days).
    pub grant_idle_limit: Duration,
    /// The longest a support grant may run (default 90 days).
    pub max_grant_duration: Duration,
    /// Shortest break-glass reason, in characters after trimming (default 10).
    pub min_reason_chars: usize,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self {
            grant_idle_limit: Duration::from_secs(31 * 24 * 3600),
            max_grant_duration: Duration::from_secs(90 * 24 * 3600),
            min_reason_chars: 10,
        }
    }
}

const MAX_REASON_CHARS: usize = 1000;

/// Makes decisions from a [`Policy`], an [`AccessRegistry`] and a [`Clock`].
#[derive(Debug, Clone)]
pub struct Authorizer {
    policy: Arc<Policy>,
    registry: Arc<dyn AccessRegistry>,
    clock: Arc<dyn Clock>,
    config: AuthzConfig,
}

fn deny(reason: DenyReason) -> Decision {
    Decision::Deny(Deny { reason })
}

impl Authorizer {
    /// Built-in roles, an in-memory registry and the system clock.
    pub fn builtin() -> Self {
        Self::new(Policy::builtin(), Arc::new(MemoryRegistry::new()), Arc::new(SystemClock))
    }

    /// An authorizer with default limits.
    pub fn new(policy: Policy, registry: Arc<dyn AccessRegistry>, clock: Arc<dyn Clock>) -> Self {
        Self { policy: Arc::new(policy), registry, clock, config: AuthzConfig::default() }
    }

    /// Changes the limits.
    pub fn with_config(mut self, config: AuthzConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock its decisions use.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Brings the registry's copy of `tenant`'s support grants and role assignments up to date with durable storage
    /// ([`AccessRegistry::refresh_grants`]); the `kluis_service::Service` awaits it before every
    /// decision for a principal with a support grant. On an error the registry has made that
    /// tenant's grant checks deny, so the following [`Authorizer::check`] fails closed.
    pub async fn refresh_grants(&self, tenant: &TenantId) -> Result<()> {
        self.registry.refresh_grants(tenant).await
    }

    /// [`Authorizer::principal`] after [`Authorizer::refresh_grants`]: the user's roles as
    /// durable storage holds them now (a role removed by another process is gone).
    pub async fn principal_current(&self, tenant: &TenantId, user: &UserId) -> Result<Principal> {
        self.refresh_grants(tenant).await?;
        self.principal(tenant, user)
    }

    /// Decides one request. Never fails; denies by default.
    pub fn check(&self, principal: &Principal, req: &Request<'_>) -> Decision {
        if let Some(t) = principal.tenant()
            && t != req.tenant
        {
            return deny(DenyReason::CrossTenant);
        }
        if req.domains.is_empty() && req.action.is_data() {
            return deny(DenyReason::NoDomain);
        }
        if let Some(d) = req.domains.iter().filter(|d| !self.policy.has_domain(d)).min() {
            return deny(DenyReason::UnknownDomain(d.clone()));
        }
        let now = self.clock.now();
        let mut role_denial = DenyReason::NoTenant;
        if principal.tenant().is_some() {
            match self.check_roles(principal, req, now) {
                Ok(decision) => return decision,
                Err(reason) => role_denial = reason,
            }
        }
        match principal.support_grant() {
            // A grant is a fallback: when it does not apply either, the role denial is the more
            // useful reason for a tenant user; for a support user the grant's reason is.
            Some(id) => match self.check_grant(principal, id, req, now) {
                Ok(d) => d,
                Err(r) if principal.tenant().is_some() && matches!(r, DenyReason::GrantUnknown) => {
                    deny(role_denial)
                }
                Err(r) => deny(r),
            },
            None => deny(role_denial),
        }
    }

    fn proof(&self, principal: &Principal, req: &Request<'_>, now: SystemTime) -> AccessProof {
        let mut domains = req.domains.to_vec();
        domains.sort();
        domains.dedup();
        AccessProof {
            user: principal.user().clone(),
            tenant: req.tenant.clone(),
            action: req.action,
            domains,
            target: req.target.clone(),
            break_glass: false,
            grant: None,
            issued_at: now,
        }
    }

    /// Role path: `Ok` with an allow, `Err` with the reason to deny.
    fn check_roles(&self, p: &Principal, req: &Request<'_>, now: SystemTime) -> Result<Decision, DenyReason> {
        let own = match (p.subject(), req.target.subject()) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => false,
        };
        // For each domain, the smallest role name that covers it.
        let mut used: Vec<RoleName> = Vec::with_capacity(2);
        let mut first_missing: Option<(&DomainName, bool)> = None; // (domain, own-only seen)
        let mut missing: Vec<&DomainName> = Vec::new();
        let tenant_level = req.domains.is_empty();
        if tenant_level {
            let r = p
                .roles()
                .iter()
                .find(|r| self.policy.role(r).is_some_and(|def| def.any_domain.contains(req.action)));
            match r {
                Some(r) => used.push(r.clone()),
                None => return Err(DenyReason::ActionNotPermitted(req.action)),
            }
        }
        for d in req.domains {
            let mut covering: Option<&RoleName> = None;
            let mut own_only_seen = false;
            for r in p.roles() {
                let Some(def) = self.policy.role(r) else { continue };
                match def.coverage(d, req.action) {
                    Coverage::TenantWide => {
                        covering = Some(r);
                        break;
                    }
                    Coverage::OwnOnly if own => {
                        covering = Some(r);
                        break;
                    }
                    Coverage::OwnOnly => own_only_seen = true,
                    Coverage::None => {}
                }
            }
            match covering {
                Some(r) => {
                    if !used.contains(r) {
                        used.push(r.clone());
                    }
                }
                None => {
                    missing.push(d);
                    if first_missing.is_none_or(|(m, _)| d < m) {
                        first_missing = Some((d, own_only_seen));
                    }
                }
            }
        }
        let Some((first, own_only)) = first_missing else {
            if self.registry.touch_user(req.tenant, p.user(), now).is_err() {
                return Err(DenyReason::RegistryUnavailable);
            }
            used.sort();
            return Ok(Decision::Allow(Allow { proof: self.proof(p, req, now), basis: Basis::Roles(used) }));
        };
        let Some(reason) = req.break_glass else {
            return Err(if own_only {
                DenyReason::OwnRecordsOnly { action: req.action, domain: first.clone() }
            } else {
                DenyReason::NotPermitted { action: req.action, domain: first.clone() }
            });
        };
        self.break_glass(p, req, now, reason, missing)
    }

    fn break_glass(
        &self,
        p: &Principal,
        req: &Request<'_>,
        now: SystemTime,
        reason: &str,
        mut missing: Vec<&DomainName>,
    ) -> Result<Decision, DenyReason> {
        missing.sort();
        missing.dedup();
        let mut bg_roles: Vec<RoleName> = Vec::new();
        for d in &missing {
            let r = p
                .roles()
                .iter()
                .find(|r| self.policy.role(r).is_some_and(|def| def.break_glass.contains(*d)));
            match r {
                Some(r) => {
                    if !bg_roles.contains(r) {
                        bg_roles.push(r.clone());
                    }
                }
                None => return Err(DenyReason::BreakGlassNotAllowed((*d).clone())),
            }
        }
        if req.action != Action::Read {
            return Err(DenyReason::BreakGlassReadOnly);
        }
        let reason = reason.trim();
        let n = reason.chars().count();
        if n < self.config.min_reason_chars || n > MAX_REASON_CHARS {
            return Err(DenyReason::BreakGlassReason);
        }
        bg_roles.sort();
        let domains: Vec<DomainName> = missing.into_iter().cloned().collect();
        let collection = req.target.collection_name().map(str::to_owned);
        let record = req.target.record_id().map(str::to_owned);
        let event = BreakGlassEvent {
            tenant: req.tenant.clone(),
            user: p.user().clone(),
            roles: p.roles().to_vec(),
            domains: domains.clone(),
            collection,
            record,
            reason: reason.to_owned(),
            at: now,
        };
        if self.registry.record_break_glass(event).is_err()
            || self.registry.touch_user(req.tenant, p.user(), now).is_err()
        {
            return Err(DenyReason::RegistryUnavailable);
        }
        let mut proof = self.proof(p, req, now);
        proof.break_glass = true;
        Ok(Decision::Allow(Allow {
            proof,
            basis: Basis::BreakGlass { roles: bg_roles, domains, reason: reason.to_owned() },
        }))
    }

    fn check_grant(
        &self,
        p: &Principal,
        id: &GrantId,
        req: &Request<'_>,
        now: SystemTime,
    ) -> Result<Decision, DenyReason> {
        let mut g = match self.registry.grant(req.tenant, id) {
            Ok(Some(g)) => g,
            Ok(None) => return Err(DenyReason::GrantUnknown),
            Err(_) => return Err(DenyReason::RegistryUnavailable),
        };
        // INVARIANT: the registry is keyed by tenant, but check the grant's own fields too.
        if &g.tenant != req.tenant {
            return Err(DenyReason::GrantUnknown);
        }
        if &g.support_user != p.user() {
            return Err(DenyReason::GrantOtherUser);
        }
        match g.status {
            GrantStatus::Active => {}
            GrantStatus::Revoked { .. } => return Err(DenyReason::GrantRevoked),
            GrantStatus::DisabledIdle { .. } => return Err(DenyReason::GrantIdle),
        }
        if now >= g.expires_at {
            return Err(DenyReason::GrantExpired);
        }
        let last = g.last_used.unwrap_or(g.created_at);
        if since(now, last) > self.config.grant_idle_limit {
            g.status = GrantStatus::DisabledIdle { at: now };
            if self.registry.update_grant(&g).is_err() {
                return Err(DenyReason::RegistryUnavailable);
            }
            return Err(DenyReason::GrantIdle);
        }
        // A grant covers named domains only: a request for "every domain" is out of its scope.
        if !g.scope.actions.contains(req.action) || req.domains.is_empty() {
            return Err(DenyReason::GrantOutOfScope { action: req.action, domain: None });
        }
        if let Some(d) = req.domains.iter().filter(|d| !g.scope.domains.contains(*d)).min() {
            return Err(DenyReason::GrantOutOfScope { action: req.action, domain: Some(d.clone()) });
        }
        if self.registry.record_grant_use(req.tenant, &g.id, now).is_err() {
            return Err(DenyReason::RegistryUnavailable);
        }
        let mut proof = self.proof(p, req, now);
        proof.grant = Some(g.id.clone());
        Ok(Decision::Allow(Allow { proof, basis: Basis::SupportGrant(g.id) }))
    }

    /// The domains whose data the principal's **roles** allow `action` on for `target` in
    /// `tenant`, sorted, without break-glass or support grants and without recording anything.
    /// The store uses it to withhold fields of other domains (and never to load their keys), then
    /// asks [`Authorizer::check`] for the domains it will open.
    pub fn allowed_domains(
        &self,
        principal: &Principal,
        tenant: &TenantId,
        action: Action,
        target: &Target,
    ) -> Vec<DomainName> {
        if principal.tenant() != Some(tenant) {
            return Vec::new();
        }
        let own = matches!((principal.subject(), target.subject()), (Some(a), Some(b)) if a == b);
        self.policy
            .domains()
            .filter(|d| {
                principal.roles().iter().filter_map(|r| self.policy.role(r)).any(|def| {
                    match def.coverage(d, action) {
                        Coverage::TenantWide => true,
                        Coverage::OwnOnly => own,
                        Coverage::None => false,
                    }
                })
            })
            .cloned()
            .collect()
    }

    /// Checks that `admin` may manage access in `tenant` (a role with `manage_access`), else
    /// [`Error::NotPermitted`].
    pub fn require_admin(&self, admin: &Principal, tenant: &TenantId) -> Result<()> {
        let req = Request::new(tenant, Action::ManageAccess, &[], Target::Tenant);
        match self.check(admin, &req) {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(d) => Err(Error::NotPermitted(d.reason.to_string())),
        }
    }

    /// A tenant administrator (a role with `manage_access`) grants a named support user
    /// time-limited, scoped access to the tenant's data. Each domain must be named (medical only
    /// if listed); the duration is at most [`AuthzConfig::max_grant_duration`].
    pub fn grant_support(
        &self,
        admin: &Principal,
        tenant: &TenantId,
        support_user: UserId,
        scope: GrantScope,
        duration: Duration,
    ) -> Result<SupportGrant> {
        let grant = self.new_support_grant(admin, tenant, support_user, scope, duration)?;
        self.registry.insert_grant(grant.clone())?;
        Ok(grant)
    }

    /// [`Authorizer::grant_support`] without storing the grant (a persisted registry stores it).
    pub fn new_support_grant(
        &self,
        admin: &Principal,
        tenant: &TenantId,
        support_user: UserId,
        scope: GrantScope,
        duration: Duration,
    ) -> Result<SupportGrant> {
        self.require_admin(admin, tenant)?;
        if scope.domains.is_empty() || scope.actions.is_empty() {
            return Err(Error::invalid(
                "support grant scope",
                "must name at least one domain and one action",
            ));
        }
        if scope.actions.contains(Action::ManageAccess) {
            return Err(Error::invalid(
                "support grant scope",
                "manage_access stays with the tenant's administrators",
            ));
        }
        if let Some(d) = scope.domains.iter().find(|d| !self.policy.has_domain(d)) {
            return Err(Error::invalid(
                "support grant scope",
                format!("domain {d} is not defined in the policy"),
            ));
        }
        if duration.is_zero() || duration > self.config.max_grant_duration {
            return Err(Error::invalid(
                "support grant duration",
                format!(
                    "must be more than zero and at most {} days",
                    self.config.max_grant_duration.as_secs() / 86_400
                ),
            ));
        }
        if admin.user() == &support_user {
            return Err(Error::invalid(
                "support grant",
                "an administrator cannot grant support access to themselves",
            ));
        }
        let now = self.clock.now();
        let grant = SupportGrant {
            id: GrantId::generate()?,
            tenant: tenant.clone(),
            support_user,
            granted_by: admin.user().clone(),
            scope,
            created_at: now,
            expires_at: now + duration,
            last_used: None,
            uses: 0,
            status: GrantStatus::Active,
        };
        Ok(grant)
    }

    /// Revokes a support grant.
    pub fn revoke_support(&self, admin: &Principal, tenant: &TenantId, id: &GrantId) -> Result<()> {
        self.require_admin(admin, tenant)?;
        let mut g = self.registry.grant(tenant, id)?.ok_or_else(|| Error::UnknownGrant(id.to_string()))?;
        g.status = GrantStatus::Revoked { at: self.clock.now(), by: admin.user().clone() };
        self.registry.update_grant(&g)
    }

    /// Disables every active grant of the tenant that has gone unused past the idle limit, and
    /// returns their ids. (Checks disable idle grants on use too; this keeps reviews accurate.)
    pub fn sweep_idle_grants(&self, tenant: &TenantId) -> Result<Vec<GrantId>> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for mut g in self.registry.grants(tenant)? {
            if g.status == GrantStatus::Active
                && since(now, g.last_used.unwrap_or(g.created_at)) > self.config.grant_idle_limit
            {
                g.status = GrantStatus::DisabledIdle { at: now };
                self.registry.update_grant(&g)?;
                out.push(g.id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// A tenant administrator records that `user` holds `role` (so the access review lists it).
    pub fn assign_role(
        &self,
        admin: &Principal,
        tenant: &TenantId,
        user: UserId,
        role: RoleName,
    ) -> Result<()> {
        let a = self.new_role_assignment(admin, tenant, user, role)?;
        self.registry.assign_role(a)
    }

    /// [`Authorizer::assign_role`] without storing the assignment (a persisted registry stores it).
    pub fn new_role_assignment(
        &self,
        admin: &Principal,
        tenant: &TenantId,
        user: UserId,
        role: RoleName,
    ) -> Result<RoleAssignment> {
        self.require_admin(admin, tenant)?;
        if !self.policy.has_role(&role) {
            return Err(Error::invalid("role", format!("role {role} is not defined in the policy")));
        }
        Ok(RoleAssignment {
            tenant: tenant.clone(),
            user,
            role,
            assigned_by: admin.user().clone(),
            assigned_at: self.clock.now(),
        })
    }

    /// Removes a role assignment; `true` if it existed.
    pub fn revoke_role(
        &self,
        admin: &Principal,
        tenant: &TenantId,
        user: &UserId,
        role: &RoleName,
    ) -> Result<bool> {
        self.require_admin(admin, tenant)?;
        self.registry.remove_role(tenant, user, role)
    }

    /// The principal for a user of a tenant, with the roles the registry holds for them.
    pub fn principal(&self, tenant: &TenantId, user: &UserId) -> Result<Principal> {
        let roles =
            self.registry.assignments(tenant)?.into_iter().filter(|a| &a.user == user).map(|a| a.role);
        Ok(Principal::new(user.clone(), Some(tenant.clone()), roles))
    }

    /// The access review of a tenant (needs `manage_access` or `read_audit`): every role
    /// assignment and support grant with its last use, and every break-glass access.
    pub fn access_review(&self, reviewer: &Principal, tenant: &TenantId) -> Result<AccessReview> {
        let admin = self.require_admin(reviewer, tenant);
        if admin.is_err() {
            let req = Request::new(tenant, Action::ReadAudit, &[], Target::Tenant);
            if let Decision::Deny(d) = self.check(reviewer, &req) {
                return Err(Error::NotPermitted(d.reason.to_string()));
            }
        }
        let mut entries = Vec::new();
        for a in self.registry.assignments(tenant)? {
            let last_used = self.registry.last_seen(tenant, &a.user)?;
            entries.push(ReviewEntry {
                user: a.user,
                holding: Holding::Role(a.role),
                granted_by: a.assigned_by,
                since: a.assigned_at,
                last_used,
            });
        }
        for g in self.registry.grants(tenant)? {
            entries.push(ReviewEntry {
                user: g.support_user,
                holding: Holding::SupportGrant {
                    id: g.id,
                    scope: g.scope,
                    expires_at: g.expires_at,
                    status: g.status,
                    uses: g.uses,
                },
                granted_by: g.granted_by,
                since: g.created_at,
                last_used: g.last_used,
            });
        }
        entries.sort_by(|a, b| {
            a.user.cmp(&b.user).then_with(|| holding_key(&a.holding).cmp(&holding_key(&b.holding)))
        });
        Ok(AccessReview {
            tenant: tenant.clone(),
            generated_at: self.clock.now(),
            entries,
            break_glass: self.registry.break_glass_events(tenant)?,
        })
    }
}

fn holding_key(h: &Holding) -> (u8, &str) {
    match h {
        Holding::Role(r) => (0, r.as_str()),
        Holding::SupportGrant { id, .. } => (1, id.as_str()),
    }
}
