//! `kluis access review|assign|grant|revoke`: the persisted access registry
//! ([`kluis_service::authz::StoreRegistry`]) of one tenant.
//!
//! The operator holds the root key, so the CLI acts as the tenant's administrator
//! (`tenant_admin`) for changes and as its auditor for the review; every change is audited under
//! the operator's name.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kluis_blob::BlobBackend;
use kluis_core::keys::RootKeyProvider;
use kluis_core::{DomainName, TenantId};
use kluis_service::authz::{
    Action, ActionSet, Authorizer, GrantId, GrantScope, GrantStatus, Holding, Policy, Principal, RoleName,
    StoreRegistry, UserId,
};
use kluis_service::clock::SystemClock;
use kluis_store::Engine;
use serde_json::json;

use crate::env::Env;
use crate::error::{CliError, Result};
use crate::out::{Report, table};

fn svc(e: impl Into<kluis_service::Error>) -> CliError {
    let e: kluis_service::Error = e.into();
    CliError::Service(e.to_string())
}

fn usage(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("{what}: {e}"))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub(crate) fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn opt_utc(t: Option<SystemTime>) -> String {
    t.map(utc).unwrap_or_else(|| "never".into())
}

struct Registry<B: Engine> {
    reg: Arc<StoreRegistry<B>>,
    authz: Authorizer,
    tenant: TenantId,
}

async fn open<B: Engine, O: BlobBackend + Clone>(env: &Env<B, O>, tenant: &str) -> Result<Registry<B>> {
    let tenant = env.tenant(tenant).await?;
    let root: Arc<dyn RootKeyProvider> = Arc::clone(env.root().await?) as Arc<dyn RootKeyProvider>;
    let reg = Arc::new(StoreRegistry::new(Arc::clone(&env.store), root));
    reg.load_tenant(&tenant).await.map_err(svc)?;
    let authz = Authorizer::new(Policy::builtin(), reg.clone(), Arc::new(SystemClock));
    Ok(Registry { reg, authz, tenant })
}

fn operator(actor: &str, tenant: &TenantId, role: &str) -> Result<Principal> {
    let user = UserId::new(actor).map_err(|e| usage("operator name", e))?;
    let role = RoleName::new(role).map_err(|e| usage("role", e))?;
    Ok(Principal::new(user, Some(tenant.clone()), [role]))
}

fn status_text(s: &GrantStatus, expires: SystemTime, now: SystemTime) -> String {
    match s {
        GrantStatus::Active if now >= expires => "expired".into(),
        GrantStatus::Active => "active".into(),
        GrantStatus::Revoked { at, by } => format!("revoked {} by {by}", utc(*at)),
        GrantStatus::DisabledIdle { .. } => "disabled (idle)".into(),
        _ => "unknown".into(),
    }
}

/// `kluis access review --tenant T`.
pub async fn review<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    tenant: &str,
) -> Result<Report> {
    let r = open(env, tenant).await?;
    r.authz.sweep_idle_grants(&r.tenant).map_err(svc)?;
    let reviewer = operator(actor, &r.tenant, "auditor")?;
    let review = r.authz.access_review(&reviewer, &r.tenant).map_err(svc)?;
    let now = review.generated_at;
    let (mut roles, mut grants) = (Vec::new(), Vec::new());
    let (mut roles_j, mut grants_j) = (Vec::new(), Vec::new());
    for e in &review.entries {
        match &e.holding {
            Holding::Role(role) => {
                roles.push(vec![
                    e.user.to_string(),
                    role.to_string(),
                    e.granted_by.to_string(),
                    utc(e.since),
                    opt_utc(e.last_used),
                ]);
                roles_j.push(json!({
                    "user": e.user.as_str(), "role": role.as_str(), "assigned_by": e.granted_by.as_str(),
                    "since": utc(e.since), "last_use": e.last_used.map(utc),
                }));
            }
            Holding::SupportGrant { id, scope, expires_at, status, uses } => {
                let domains: Vec<&str> = scope.domains.iter().map(|d| d.as_str()).collect();
                let scope_text = format!("{} on {}", scope.actions, domains.join(","));
                let st = status_text(status, *expires_at, now);
                grants.push(vec![
                    e.user.to_string(),
                    id.to_string(),
                    scope_text.clone(),
                    st.clone(),
                    utc(*expires_at),
                    opt_utc(e.last_used),
                    uses.to_string(),
                    e.granted_by.to_string(),
                ]);
                grants_j.push(json!({
                    "user": e.user.as_str(), "grant": id.as_str(), "domains": domains,
                    "actions": scope.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                    "status": st, "expires": utc(*expires_at), "last_use": e.last_used.map(utc),
                    "uses": uses, "granted_by": e.granted_by.as_str(), "since": utc(e.since),
                }));
            }
            _ => {}
        }
    }
    let mut bg = Vec::new();
    let mut bg_j = Vec::new();
    for b in &review.break_glass {
        let roles_s: Vec<&str> = b.roles.iter().map(|r| r.as_str()).collect();
        let domains: Vec<&str> = b.domains.iter().map(|d| d.as_str()).collect();
        let target = match (&b.collection, &b.record) {
            (Some(c), Some(r)) => format!("{c}/{r}"),
            (Some(c), None) => c.clone(),
            _ => "-".into(),
        };
        bg.push(vec![
            utc(b.at),
            b.user.to_string(),
            roles_s.join(","),
            domains.join(","),
            target.clone(),
            b.reason.clone(),
        ]);
        bg_j.push(json!({
            "at": utc(b.at), "user": b.user.as_str(), "roles": roles_s, "domains": domains,
            "collection": b.collection, "record": b.record, "reason": b.reason,
        }));
    }
    let mut rep = Report::new(json!({
        "tenant": r.tenant.as_str(), "generated_at": utc(now), "roles": roles_j,
        "support_grants": grants_j, "break_glass": bg_j,
    }));
    rep.line(format!("access review of tenant {} at {}", r.tenant, utc(now)));
    let mut section = |title: &str, header: &[&str], rows: &[Vec<String>], none: &str| {
        rep.line(format!("{title}:"));
        if rows.is_empty() {
            rep.line(format!("  {none}"));
        } else {
            for l in table(header, rows) {
                rep.line(format!("  {l}"));
            }
        }
    };
    section(
        "roles",
        &["USER", "ROLE", "ASSIGNED BY", "SINCE", "LAST USE"],
        &roles,
        "none recorded (kluis access assign)",
    );
    section(
        "support grants",
        &["USER", "GRANT", "SCOPE", "STATUS", "EXPIRES", "LAST USE", "USES", "GRANTED BY"],
        &grants,
        "none",
    );
    section("break-glass accesses", &["AT", "USER", "ROLES", "DOMAINS", "TARGET", "REASON"], &bg, "none");
    Ok(rep)
}

/// `kluis access assign --tenant T --user U --role R`.
pub async fn assign<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    tenant: &str,
    user: &str,
    role: &str,
) -> Result<Report> {
    let r = open(env, tenant).await?;
    let admin = operator(actor, &r.tenant, "tenant_admin")?;
    let user = UserId::new(user).map_err(|e| usage("--user", e))?;
    let role = RoleName::new(role).map_err(|e| usage("--role", e))?;
    r.reg.assign_role(&r.authz, &admin, &r.tenant, user.clone(), role.clone()).await.map_err(svc)?;
    let mut rep =
        Report::new(json!({"tenant": r.tenant.as_str(), "user": user.as_str(), "role": role.as_str()}));
    rep.line(format!("{user} holds {role} in tenant {}", r.tenant));
    Ok(rep)
}

/// `kluis access grant --tenant T --user U --domain D [--action A] --days N`.
pub async fn grant<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    tenant: &str,
    user: &str,
    domains: &[String],
    actions: &[String],
    days: u64,
) -> Result<Report> {
    let r = open(env, tenant).await?;
    let admin = operator(actor, &r.tenant, "tenant_admin")?;
    let user = UserId::new(user).map_err(|e| usage("--user", e))?;
    let mut ds = BTreeSet::new();
    for d in domains {
        ds.insert(DomainName::new(d.clone()).map_err(|e| usage("--domain", e))?);
    }
    let mut acts = ActionSet::default();
    for a in actions {
        acts.insert(
            Action::parse(a).ok_or_else(|| CliError::Usage(format!("--action: unknown action {a:?}")))?,
        );
    }
    let scope = GrantScope { domains: ds, actions: acts };
    let duration = Duration::from_secs(days.saturating_mul(86_400));
    let g = r.reg.grant_support(&r.authz, &admin, &r.tenant, user, scope, duration).await.map_err(svc)?;
    let mut rep = Report::new(json!({
        "tenant": r.tenant.as_str(), "grant": g.id.as_str(), "user": g.support_user.as_str(),
        "expires": utc(g.expires_at),
    }));
    rep.line(format!("granted {} to {} until {}", g.id, g.support_user, utc(g.expires_at)));
    Ok(rep)
}

/// `kluis access revoke --tenant T --grant G`.
pub async fn revoke<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    tenant: &str,
    grant: &str,
) -> Result<Report> {
    let r = open(env, tenant).await?;
    let admin = operator(actor, &r.tenant, "tenant_admin")?;
    let id = GrantId::parse(grant).map_err(|e| usage("--grant", e))?;
    r.reg.revoke_support(&r.authz, &admin, &r.tenant, &id).await.map_err(svc)?;
    let mut rep = Report::new(json!({"tenant": r.tenant.as_str(), "grant": id.as_str(), "revoked": true}));
    rep.line(format!("revoked {id}"));
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(1_796_353_845)), "2026-12-04T03:10:45Z");
    }
}
