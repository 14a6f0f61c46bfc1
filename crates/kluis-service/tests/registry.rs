//! The persisted access registry (`StoreRegistry`): grants, roles, last uses and break-glass
//! accesses survive a fresh pool, the 31-day idle rule holds across a restart, and rows forged,
//! edited or copied by raw SQL are refused. On SQLite, PostgreSQL and MariaDB.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{H, Raw, ctx, principal};
use kluis_core::{DomainName, TenantId};
use kluis_service::authz::{
    Action, ActionSet, Authorizer, DenyReason, GrantId, GrantScope, GrantStatus, Holding, Policy, Principal,
    Request, RoleName, StoreRegistry, Target, UserId,
};
use kluis_service::clock::Clock;
use kluis_service::{Error, Service};
use kluis_store::{Engine, MySql, NewRecord, Postgres, Schema, Sqlite, Store};

const DAY: Duration = Duration::from_secs(86_400);

/// A process: a registry, an authorizer and a service on one store.
struct Proc<B: Engine> {
    reg: Arc<StoreRegistry<B>>,
    authz: Authorizer,
    svc: Service<B>,
}

fn proc<B: Engine>(h: &H<B>, store: Arc<Store<B>>) -> Proc<B> {
    let reg = Arc::new(StoreRegistry::new(store.clone(), h.keyring.clone()));
    let authz = Authorizer::new(Policy::builtin(), reg.clone(), h.clock.clone());
    let svc = Service::new(authz.clone(), store, h.keyring.clone()).with_clock(h.clock.clone());
    Proc { reg, authz, svc }
}

/// A fresh pool on the same database, as a restarted process opens it.
trait Reopen: Engine + Sized {
    fn reopen(h: &H<Self>) -> impl std::future::Future<Output = Arc<Store<Self>>>;
}

impl Reopen for Sqlite {
    async fn reopen(h: &H<Self>) -> Arc<Store<Self>> {
        let b = Sqlite::open(h.file.as_ref().unwrap()).await.unwrap();
        Arc::new(Store::new(b, Schema::from_toml(common::SCHEMA_TOML).unwrap()))
    }
}

impl Reopen for Postgres {
    async fn reopen(h: &H<Self>) -> Arc<Store<Self>> {
        let (url, db, _) = h.drop.clone().unwrap();
        let pool = sqlx::PgPool::connect(&common::with_db(&url, &db)).await.unwrap();
        Arc::new(Store::new(pool, Schema::from_toml(common::SCHEMA_TOML).unwrap()))
    }
}

impl Reopen for MySql {
    async fn reopen(h: &H<Self>) -> Arc<Store<Self>> {
        let (url, db, _) = h.drop.clone().unwrap();
        let pool = sqlx::MySqlPool::connect(&common::with_db(&url, &db)).await.unwrap();
        Arc::new(Store::new(pool, Schema::from_toml(common::SCHEMA_TOML).unwrap()))
    }
}

fn admin(t: &TenantId) -> Principal {
    principal("admin.anna", t, "tenant_admin")
}

fn general_read() -> GrantScope {
    GrantScope { domains: BTreeSet::from([DomainName::general()]), actions: ActionSet::of(&[Action::Read]) }
}

fn bob() -> UserId {
    UserId::new("support.bob").unwrap()
}

async fn seed<B: Engine>(h: &H<B>, p: &Proc<B>) {
    let doctor = principal("dr.jansen", &h.acme, "company_doctor");
    p.svc
        .insert(
            &doctor,
            &ctx(),
            "absence",
            NewRecord::new("emp-1").id("r-1").set("employee_number", "E1").set("diagnosis", "flu"),
        )
        .await
        .unwrap();
}

fn support_read<B: Engine>(
    p: &Proc<B>,
    h: &H<B>,
    id: &GrantId,
) -> impl std::future::Future<Output = Result<kluis_store::Record, Error>> {
    let support = Principal::support(bob(), id.clone());
    let c = ctx().in_tenant(h.acme.clone());
    async move { p.svc.get(&support, &c, "absence", "r-g").await }
}

async fn persists<B: Reopen>(h: H<B>)
where
    Store<B>: Raw,
{
    let p1 = proc(&h, h.store.clone());
    p1.reg.load_tenant(&h.acme).await.unwrap();
    let a = admin(&h.acme);
    p1.reg
        .assign_role(
            &p1.authz,
            &a,
            &h.acme,
            UserId::new("case.carla").unwrap(),
            RoleName::new("case_manager").unwrap(),
        )
        .await
        .unwrap();
    p1.reg
        .assign_role(
            &p1.authz,
            &a,
            &h.acme,
            UserId::new("hr.henk").unwrap(),
            RoleName::new("hr_manager").unwrap(),
        )
        .await
        .unwrap();
    let g = p1.reg.grant_support(&p1.authz, &a, &h.acme, bob(), general_read(), 60 * DAY).await.unwrap();
    // The sync trait path cannot make a change that would not be durable.
    assert!(matches!(
        p1.authz.grant_support(&a, &h.acme, bob(), general_read(), DAY),
        Err(kluis_service::authz::Error::Registry(_))
    ));
    let hr = principal("hr.henk", &h.acme, "hr_manager");
    p1.svc
        .insert(&hr, &ctx(), "absence", NewRecord::new("emp-2").id("r-g").set("employee_number", "E2"))
        .await
        .unwrap();
    seed(&h, &p1).await;
    h.clock.advance(DAY);
    support_read(&p1, &h, &g.id).await.unwrap();
    h.clock.advance(DAY);
    support_read(&p1, &h, &g.id).await.unwrap();
    let last_at = h.clock.now();
    let carla = principal("case.carla", &h.acme, "case_manager");
    p1.svc
        .get(&carla, &ctx().break_glass("acute crisis, employee unreachable"), "absence", "r-1")
        .await
        .unwrap();
    // A shred rotates and destroys the keys of emp-1's domains: the registry rows keep verifying.
    let doctor = principal("dr.jansen", &h.acme, "company_doctor");
    let report = p1.svc.shred(&doctor, &ctx(), "emp-1", None).await.unwrap();
    assert!(!report.destroyed_versions.is_empty(), "{report:?}");

    // A restart: a fresh pool, registry, authorizer and service.
    let store2 = B::reopen(&h).await;
    let p2 = proc(&h, store2.clone());
    // Not loaded: a grant check denies (fail closed).
    let req_domains = [DomainName::general()];
    let req =
        Request::new(&h.acme, Action::Read, &req_domains, Target::record("absence", "r-g", Some("emp-2")));
    let d = p2.authz.check(&Principal::support(bob(), g.id.clone()), &req);
    assert_eq!(d.deny_reason(), Some(&DenyReason::RegistryUnavailable));
    p2.reg.load_tenant(&h.acme).await.unwrap();
    let review = p2.authz.access_review(&a, &h.acme).unwrap();
    let users: Vec<(String, String)> = review
        .entries
        .iter()
        .map(|e| {
            let what = match &e.holding {
                Holding::Role(r) => r.to_string(),
                Holding::SupportGrant { id, .. } => id.to_string(),
                _ => "?".into(),
            };
            (e.user.to_string(), what)
        })
        .collect();
    assert_eq!(
        users,
        [
            ("case.carla".to_owned(), "case_manager".to_owned()),
            ("hr.henk".to_owned(), "hr_manager".to_owned()),
            ("support.bob".to_owned(), g.id.to_string()),
        ]
    );
    let grant_line = &review.entries[2];
    match &grant_line.holding {
        Holding::SupportGrant { uses, status, .. } => {
            assert_eq!(*uses, 2);
            assert_eq!(*status, GrantStatus::Active);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(grant_line.last_used, Some(last_at));
    assert!(review.entries[1].last_used.is_some(), "hr.henk's last use comes back from the audit log");
    assert_eq!(review.break_glass.len(), 1, "{:?}", review.break_glass);
    assert_eq!(review.break_glass[0].user.as_str(), "case.carla");
    assert_eq!(review.break_glass[0].domains, [DomainName::medical()]);
    assert_eq!(review.break_glass[0].reason, "acute crisis, employee unreachable");
    // Principal roles come from the persisted assignments.
    let henk = p2.authz.principal(&h.acme, &UserId::new("hr.henk").unwrap()).unwrap();
    assert_eq!(henk.roles(), [RoleName::new("hr_manager").unwrap()]);

    // The grant still works after the restart; a revocation is durable.
    support_read(&p2, &h, &g.id).await.unwrap();
    p2.reg.revoke_support(&p2.authz, &a, &h.acme, &g.id).await.unwrap();
    assert!(
        p2.reg
            .revoke_role(
                &p2.authz,
                &a,
                &h.acme,
                &UserId::new("hr.henk").unwrap(),
                &RoleName::new("hr_manager").unwrap()
            )
            .await
            .unwrap()
    );
    let p3 = proc(&h, B::reopen(&h).await);
    p3.reg.load_tenant(&h.acme).await.unwrap();
    match support_read(&p3, &h, &g.id).await {
        Err(Error::Denied(d)) => assert_eq!(d.reason(), &DenyReason::GrantRevoked),
        other => panic!("{other:?}"),
    }
    let review = p3.authz.access_review(&a, &h.acme).unwrap();
    assert_eq!(review.entries.len(), 2, "hr.henk's role was removed: {:?}", review.entries);
    h.cleanup().await;
}

async fn idle_after_restart<B: Reopen>(h: H<B>)
where
    Store<B>: Raw,
{
    let p1 = proc(&h, h.store.clone());
    let a = admin(&h.acme);
    let g = p1.reg.grant_support(&p1.authz, &a, &h.acme, bob(), general_read(), 90 * DAY).await.unwrap();
    let hr = principal("hr.henk", &h.acme, "hr_manager");
    p1.svc
        .insert(&hr, &ctx(), "absence", NewRecord::new("emp-2").id("r-g").set("employee_number", "E2"))
        .await
        .unwrap();
    h.clock.advance(20 * DAY);
    support_read(&p1, &h, &g.id).await.unwrap();
    // Restart 20 days later: 40 days after the grant, 20 after its last use: still usable (a lost
    // last use would make it idle since creation).
    h.clock.advance(20 * DAY);
    let p2 = proc(&h, B::reopen(&h).await);
    p2.reg.load_tenant(&h.acme).await.unwrap();
    support_read(&p2, &h, &g.id).await.unwrap();
    // 32 days without use, restart: disabled.
    h.clock.advance(32 * DAY);
    let p3 = proc(&h, B::reopen(&h).await);
    p3.reg.load_tenant(&h.acme).await.unwrap();
    assert_eq!(p3.authz.sweep_idle_grants(&h.acme).unwrap(), std::slice::from_ref(&g.id));
    match support_read(&p3, &h, &g.id).await {
        Err(Error::Denied(d)) => assert_eq!(d.reason(), &DenyReason::GrantIdle),
        other => panic!("{other:?}"),
    }
    let review = p3.authz.access_review(&a, &h.acme).unwrap();
    assert!(matches!(
        &review.entries[0].holding,
        Holding::SupportGrant { status: GrantStatus::DisabledIdle { .. }, .. }
    ));
    // And again after another restart (idle follows from the last use).
    let p4 = proc(&h, B::reopen(&h).await);
    p4.reg.load_tenant(&h.acme).await.unwrap();
    match support_read(&p4, &h, &g.id).await {
        Err(Error::Denied(d)) => assert_eq!(d.reason(), &DenyReason::GrantIdle),
        other => panic!("{other:?}"),
    }
    h.cleanup().await;
}

const FORGED: &str = "sg_0000000000000000000000000000dba1";

/// Loads must refuse the tenant, and a check with the row's grant must deny.
async fn refused<B: Reopen>(h: &H<B>, tenant: &TenantId, grant: &str) {
    let p = proc(h, B::reopen(h).await);
    match p.reg.load_tenant(tenant).await {
        Err(Error::Authz(kluis_service::authz::Error::RegistryTampered { tenant: t, kind, .. })) => {
            assert_eq!(&t, tenant.as_str());
            assert_eq!(kind, "grant");
        }
        other => panic!("expected RegistryTampered, got {other:?}"),
    }
    let domains = [DomainName::general()];
    let req = Request::new(tenant, Action::Read, &domains, Target::collection("absence", None));
    let d = p.authz.check(&Principal::support(bob(), GrantId::parse(grant).unwrap()), &req);
    assert!(!d.is_allowed(), "{d:?}");
    assert_eq!(d.deny_reason(), Some(&DenyReason::RegistryUnavailable));
}

async fn tamper<B: Reopen>(h: H<B>)
where
    Store<B>: Raw,
{
    let p1 = proc(&h, h.store.clone());
    let a = admin(&h.acme);
    let g = p1.reg.grant_support(&p1.authz, &a, &h.acme, bob(), general_read(), 30 * DAY).await.unwrap();
    // Control: the honest rows load, and the grant works.
    let p = proc(&h, B::reopen(&h).await);
    p.reg.load_tenant(&h.acme).await.unwrap();
    let domains = [DomainName::general()];
    let req = Request::new(&h.acme, Action::Read, &domains, Target::collection("absence", None));
    assert!(p.authz.check(&Principal::support(bob(), g.id.clone()), &req).is_allowed());

    // 1. A DBA inserts a grant for themselves (a copy of a real row's MAC, new id and user).
    h.store
        .exec(&format!(
            "INSERT INTO kluis_access (tenant, kind, id, body, key_version, mac) \
             SELECT tenant, kind, '{FORGED}', REPLACE(body, 'support.bob', 'dba.dirk'), key_version, mac \
             FROM kluis_access WHERE kind = 'grant'"
        ))
        .await;
    refused(&h, &h.acme, FORGED).await;
    h.store.exec(&format!("DELETE FROM kluis_access WHERE id = '{FORGED}'")).await;
    proc(&h, B::reopen(&h).await).reg.load_tenant(&h.acme).await.unwrap();

    // 2. The expiry pushed out.
    assert_eq!(
        h.store
            .exec("UPDATE kluis_access SET body = REPLACE(body, '\"expires_ms\":', '\"expires_ms\":9')")
            .await,
        1
    );
    refused(&h, &h.acme, g.id.as_str()).await;

    // 3. A revoked grant re-activated by editing its status.
    let g2 = p1
        .reg
        .grant_support(&p1.authz, &a, &h.acme, UserId::new("support.eve").unwrap(), general_read(), DAY)
        .await;
    let g2 = g2.unwrap();
    h.store.exec(&format!("DELETE FROM kluis_access WHERE id = '{}'", g.id)).await;
    p1.reg.load_tenant(&h.acme).await.unwrap();
    p1.reg.revoke_support(&p1.authz, &a, &h.acme, &g2.id).await.unwrap();
    let edited = h
        .store
        .exec("UPDATE kluis_access SET body = REPLACE(REPLACE(body, '\"status\":\"revoked\"', '\"status\":\"active\"'), ',\"revoked_ms\"', ',\"x\"')")
        .await;
    assert_eq!(edited, 1);
    refused(&h, &h.acme, g2.id.as_str()).await;

    // 4. A real row copied to another tenant (which has keys of its own).
    h.store.exec("DELETE FROM kluis_access").await;
    let ga = p1.reg.grant_support(&p1.authz, &a, &h.acme, bob(), general_read(), DAY).await.unwrap();
    let _ = p1
        .reg
        .grant_support(&p1.authz, &admin(&h.globex), &h.globex, bob(), general_read(), DAY)
        .await
        .unwrap();
    h.store
        .exec(&format!(
            "INSERT INTO kluis_access (tenant, kind, id, body, key_version, mac) \
             SELECT 'globex', kind, id, body, key_version, mac FROM kluis_access WHERE tenant = 'acme' AND id = '{}'",
            ga.id
        ))
        .await;
    refused(&h, &h.globex, ga.id.as_str()).await;
    // The source tenant is unaffected.
    proc(&h, B::reopen(&h).await).reg.load_tenant(&h.acme).await.unwrap();
    h.cleanup().await;
}

/// Two processes on one database, both loaded: a grant made, revoked or deleted in one counts in
/// the other at its next decision (the Service refreshes the tenant's grants before every check
/// of a support principal), and a removed role is gone from `principal_current`.
async fn across_processes<B: Reopen>(h: H<B>)
where
    Store<B>: Raw,
{
    let a = admin(&h.acme);
    let p1 = proc(&h, h.store.clone());
    p1.reg.load_tenant(&h.acme).await.unwrap();
    let hr = principal("hr.henk", &h.acme, "hr_manager");
    p1.svc
        .insert(&hr, &ctx(), "absence", NewRecord::new("emp-2").id("r-g").set("employee_number", "E2"))
        .await
        .unwrap();
    let p2 = proc(&h, B::reopen(&h).await);
    p2.reg.load_tenant(&h.acme).await.unwrap();

    // A grant made in process 1 after process 2 loaded: usable in process 2 at once.
    let g = p1.reg.grant_support(&p1.authz, &a, &h.acme, bob(), general_read(), 30 * DAY).await.unwrap();
    support_read(&p2, &h, &g.id).await.unwrap();
    // Revoked in process 1: refused in process 2 at its next use, without a reload.
    p1.reg.revoke_support(&p1.authz, &a, &h.acme, &g.id).await.unwrap();
    match support_read(&p2, &h, &g.id).await {
        Err(Error::Denied(d)) => assert_eq!(d.reason(), &DenyReason::GrantRevoked),
        other => panic!("revoked in another process but still usable: {other:?}"),
    }
    // A grant whose row is deleted (by a DBA, or a cleanup) is refused at once too.
    let g2 = p1.reg.grant_support(&p1.authz, &a, &h.acme, bob(), general_read(), 30 * DAY).await.unwrap();
    support_read(&p2, &h, &g2.id).await.unwrap();
    assert_eq!(h.store.exec(&format!("DELETE FROM kluis_access WHERE id = '{}'", g2.id)).await, 1);
    assert!(matches!(support_read(&p2, &h, &g2.id).await, Err(Error::Denied(_))));
    // A row edited meanwhile: refused (fail closed), and the tenant's grants deny until it is mended.
    let g3 = p1.reg.grant_support(&p1.authz, &a, &h.acme, bob(), general_read(), 30 * DAY).await.unwrap();
    support_read(&p2, &h, &g3.id).await.unwrap();
    let edited = h
        .store
        .exec(&format!(
            "UPDATE kluis_access SET body = REPLACE(body, '\"expires_ms\":', '\"expires_ms\":9') WHERE id = '{}'",
            g3.id
        ))
        .await;
    assert_eq!(edited, 1);
    assert!(matches!(support_read(&p2, &h, &g3.id).await, Err(Error::Denied(_))));
    assert!(!p2.reg.is_loaded(&h.acme), "a row that fails its MAC leaves the tenant unloaded");

    // Role assignments: removed in process 1, gone from process 2's current principal.
    h.store.exec(&format!("DELETE FROM kluis_access WHERE id = '{}'", g3.id)).await;
    let carla = UserId::new("case.carla").unwrap();
    let role = RoleName::new("case_manager").unwrap();
    p1.reg.assign_role(&p1.authz, &a, &h.acme, carla.clone(), role.clone()).await.unwrap();
    assert_eq!(
        p2.authz.principal_current(&h.acme, &carla).await.unwrap().roles(),
        std::slice::from_ref(&role)
    );
    assert!(p1.reg.revoke_role(&p1.authz, &a, &h.acme, &carla, &role).await.unwrap());
    assert!(p2.authz.principal_current(&h.acme, &carla).await.unwrap().roles().is_empty());
    h.cleanup().await;
}

macro_rules! engine {
    ($m:ident, $make:path) => {
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn grants_roles_and_break_glass_persist() {
                let Some(h) = $make(10).await else { return };
                persists(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn idle_rule_holds_after_restart() {
                let Some(h) = $make(10).await else { return };
                idle_after_restart(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn changes_in_another_process_count_at_once() {
                let Some(h) = $make(10).await else { return };
                across_processes(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn forged_edited_and_copied_rows_refused() {
                let Some(h) = $make(10).await else { return };
                tamper(h).await;
            }
        }
    };
}

engine!(sqlite, common::sqlite);
engine!(postgres, common::postgres);
engine!(mariadb, common::mysql);
