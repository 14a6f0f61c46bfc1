//! The facade through a real SQLite database: every built-in role x domain x action, cross-tenant
//! and guessed ids, withholding, key loading limited to the decision, break-glass, support grants,
//! reading the audit log, and a property test. Every denial must be in the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{H, ctx, principal};
use kluis_core::{DomainName, TenantId};
use kluis_service::authz::{
    Action, ActionSet, DenyReason, GrantScope, Principal, Request, RoleName, Target, UserId,
};
use kluis_service::{Error, RequestContext};
use kluis_store::{Changes, Engine, FieldValue, NewRecord, Record, Value};

const ROLES: [&str; 7] =
    ["hr_manager", "employee", "company_doctor", "case_manager", "key_admin", "auditor", "tenant_admin"];
const ACTIONS: [&str; 5] = ["read", "write", "delete", "search", "export"];

/// The expected grants (docs/SERVICE.md, built-in roles). `employee` only on own records.
fn expected(role: &str, domain: &str, action: &str) -> bool {
    match (role, domain) {
        ("hr_manager", "general") => true,
        ("employee", "general") => matches!(action, "read" | "export"),
        ("company_doctor", _) => true,
        ("case_manager", "general") => matches!(action, "read" | "write" | "search"),
        _ => false,
    }
}

fn user(role: &str) -> Principal {
    let acme = TenantId::new("acme").unwrap();
    let p = principal(&format!("u.{role}"), &acme, role);
    if role == "employee" { p.with_subject("emp-1") } else { p }
}

fn seeder<B: Engine>(h: &H<B>) -> Principal {
    principal("dr.seed", &h.acme, "company_doctor")
}

fn field_of(domain: &str) -> (&'static str, &'static str) {
    // (blind-indexed field, another field) of the domain
    if domain == "general" { ("employee_number", "start_date") } else { ("diagnosis", "doctor_notes") }
}

async fn seed<B: Engine>(h: &H<B>, id: &str, subject: &str, domain: &str) {
    let (f, _) = field_of(domain);
    h.svc
        .insert(&seeder(h), &ctx(), "absence", NewRecord::new(subject).id(id).set(f, format!("v-{domain}")))
        .await
        .unwrap();
}

fn visible(recs: &[Record], domain: &str) -> bool {
    let (f, _) = field_of(domain);
    recs.iter().any(|r| r.get(f).is_some())
}

async fn denials<B: Engine>(h: &H<B>) -> Vec<kluis_store::audit::AuditRow> {
    h.store
        .audit_page(None, 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.entry.outcome == "denied")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_every_builtin_role_domain_action() {
    matrix(common::sqlite(1000).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_every_builtin_role_domain_action_postgres() {
    let Some(h) = common::postgres(1000).await else { return };
    matrix(h).await;
}

async fn matrix<B: Engine>(h: H<B>) {
    seed(&h, "g-1", "emp-1", "general").await;
    seed(&h, "m-1", "emp-1", "medical").await;
    let c = ctx();
    let mut cells = 0;
    for role in ROLES {
        let p = user(role);
        for domain in ["general", "medical"] {
            let (indexed, other) = field_of(domain);
            let rec = if domain == "general" { "g-1" } else { "m-1" };
            for action in ACTIONS {
                let before = denials(&h).await.len();
                let allowed = expected(role, domain, action);
                let (ok, audit_action) = match action {
                    "read" => {
                        let r = h.svc.get(&p, &c, "absence", rec).await;
                        if let Ok(r) = &r {
                            assert!(r.get(indexed).is_some(), "{role} read {domain}: value not visible");
                        }
                        (r.is_ok(), "read")
                    }
                    "search" => {
                        let r =
                            h.svc.find(&p, &c, "absence", indexed, &Value::from(format!("v-{domain}"))).await;
                        if let Ok(r) = &r {
                            assert!(r.iter().any(|x| x.id == rec), "{role} search {domain}");
                        }
                        (r.is_ok(), "search")
                    }
                    "write" => {
                        let cur = h.svc.get(&seeder(&h), &c, "absence", rec).await.unwrap();
                        let v = if domain == "general" {
                            Value::Date("2026-02-01".into())
                        } else {
                            Value::from("note")
                        };
                        let before = denials(&h).await.len();
                        let r = h
                            .svc
                            .update(&p, &c, "absence", rec, cur.version, Changes::new().set(other, v))
                            .await;
                        let after = denials(&h).await.len();
                        assert_eq!(after - before, usize::from(r.is_err()), "{role} write {domain}");
                        (r.is_ok(), "update")
                    }
                    "delete" => {
                        let id = format!("d-{role}-{domain}");
                        seed(&h, &id, "emp-1", domain).await;
                        let before = denials(&h).await.len();
                        let r = h.svc.delete(&p, &c, "absence", &id, None, None).await;
                        assert_eq!(denials(&h).await.len() - before, usize::from(r.is_err()));
                        (r.is_ok(), "delete")
                    }
                    "export" => {
                        let r = h.svc.export(&p, &c, "emp-1").await;
                        (r.as_ref().is_ok_and(|recs| visible(recs, domain)), "export")
                    }
                    _ => unreachable!(),
                };
                assert_eq!(ok, allowed, "{role} {action} {domain}");
                if !(allowed || action == "export" && ROLE_EXPORTS_SOMETHING.contains(&role)) {
                    let d = denials(&h).await;
                    assert_eq!(d.len(), before + 1, "{role} {action} {domain}: the denial is audited");
                    let last = d.last().unwrap();
                    assert_eq!(last.entry.actor, format!("u.{role}"));
                    assert_eq!(last.entry.action, audit_action);
                    assert_eq!(last.entry.tenant, "acme");
                    assert!(!last.entry.reason.is_empty());
                }
                cells += 1;
            }
        }
        // Shred needs every domain of the schema: only the company doctor has it.
        seed(&h, &format!("s-{role}"), &format!("subj-{role}"), "general").await;
        let before = denials(&h).await.len();
        let r = h.svc.shred(&p, &c, &format!("subj-{role}"), None).await;
        assert_eq!(r.is_ok(), role == "company_doctor", "{role} shred: {r:?}");
        assert_eq!(denials(&h).await.len() - before, usize::from(r.is_err()), "{role} shred audited");
        cells += 1;
    }
    assert_eq!(cells, 7 * 2 * 5 + 7);
    // The employee on someone else's records: nothing.
    seed(&h, "g-2", "emp-2", "general").await;
    let emp = user("employee");
    assert!(matches!(h.svc.get(&emp, &c, "absence", "g-2").await, Err(Error::Denied(_))));
    assert!(matches!(h.svc.export(&emp, &c, "emp-2").await, Err(Error::Denied(_))));
    assert!(matches!(h.svc.list(&emp, &c, "absence", None, None, 10).await, Err(Error::Denied(_))));
    let own = h.svc.list(&emp, &c, "absence", Some("emp-1"), None, 10).await.unwrap();
    assert!(own.records.iter().all(|r| r.subject == "emp-1") && !own.records.is_empty());
    assert!(kluis_service::audit::verify(&h.store).await.unwrap().is_ok());
    h.cleanup().await;
}

/// Roles whose export of emp-1 succeeds for *some* domain (the other domain is withheld, not denied).
const ROLE_EXPORTS_SOMETHING: [&str; 3] = ["hr_manager", "employee", "company_doctor"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_and_guessed_ids_are_denied_and_audited() {
    cross_tenant(common::sqlite(1000).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_and_guessed_ids_are_denied_and_audited_postgres() {
    let Some(h) = common::postgres(1000).await else { return };
    cross_tenant(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_and_guessed_ids_are_denied_and_audited_mariadb() {
    let Some(h) = common::mysql(1000).await else { return };
    cross_tenant(h).await;
}

async fn cross_tenant<B: Engine>(h: H<B>) {
    let globex_doc = principal("dr.globex", &h.globex, "company_doctor");
    h.svc
        .insert(
            &globex_doc,
            &ctx(),
            "absence",
            NewRecord::new("emp-7").id("x-1").set("diagnosis", "secret").set("employee_number", "G7"),
        )
        .await
        .unwrap();
    // The same id in both tenants: each sees its own.
    h.svc
        .insert(
            &globex_doc,
            &ctx(),
            "absence",
            NewRecord::new("emp-7").id("same-1").set("employee_number", "G"),
        )
        .await
        .unwrap();
    seed(&h, "same-1", "emp-1", "general").await;
    let c = ctx();
    for role in ROLES {
        let p = user(role);
        let before = denials(&h).await.len();
        let e = h.svc.get(&p, &c, "absence", "x-1").await.unwrap_err();
        assert!(matches!(&e, Error::Denied(d) if *d.reason() == DenyReason::CrossTenant), "{role}: {e:?}");
        let e = h
            .svc
            .update(&p, &c, "absence", "x-1", 1, Changes::new().set("employee_number", "A"))
            .await
            .unwrap_err();
        assert!(matches!(&e, Error::Denied(d) if *d.reason() == DenyReason::CrossTenant), "{role}: {e:?}");
        let e = h.svc.delete(&p, &c, "absence", "x-1", None, None).await.unwrap_err();
        assert!(matches!(&e, Error::Denied(d) if *d.reason() == DenyReason::CrossTenant), "{role}: {e:?}");
        let d = denials(&h).await;
        assert_eq!(d.len(), before + 3, "{role}");
        for row in &d[before..] {
            assert_eq!(row.entry.tenant, "acme", "logged for the caller's tenant");
            assert_eq!(row.entry.record, "x-1");
            assert_eq!(row.entry.subject, "", "the other tenant's subject is not revealed");
            assert_eq!(row.entry.reason, "the data belongs to another tenant");
        }
        // A guessed id: not found, audited.
        let e = h.svc.get(&p, &c, "absence", "guess-0001").await.unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }));
        let rows = h.store.audit_page(None, 0, 100_000).await.unwrap();
        let last = rows.last().unwrap();
        assert_eq!((last.entry.outcome.as_str(), last.entry.record.as_str()), ("not_found", "guess-0001"));
    }
    let hr = user("hr_manager");
    let mine = h.svc.get(&hr, &c, "absence", "same-1").await.unwrap();
    assert_eq!(mine.get("employee_number"), Some(&Value::from("v-general")));
    // A support user acting in acme cannot reach globex either.
    let admin = principal("admin", &h.acme, "tenant_admin");
    let scope =
        GrantScope { domains: [DomainName::general()].into(), actions: ActionSet::of(&[Action::Read]) };
    let g = h
        .svc
        .authorizer()
        .grant_support(&admin, &h.acme, UserId::new("sup.kees").unwrap(), scope, Duration::from_secs(86_400))
        .unwrap();
    let sup = Principal::support(UserId::new("sup.kees").unwrap(), g.id.clone());
    let sc = ctx().in_tenant(h.acme.clone());
    assert!(matches!(h.svc.get(&sup, &sc, "absence", "x-1").await, Err(Error::Denied(_))));
    assert!(kluis_service::audit::verify(&h.store).await.unwrap().is_ok());
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_fields_and_keys_limited_to_the_decision() {
    let h = common::sqlite(1000).await.unwrap();
    h.svc
        .insert(
            &seeder(&h),
            &ctx(),
            "absence",
            NewRecord::new("emp-1").id("b-1").set("diagnosis", "flu").set("employee_number", "E1"),
        )
        .await
        .unwrap();
    let hr = user("hr_manager");
    let r = h.svc.get(&hr, &ctx(), "absence", "b-1").await.unwrap();
    assert_eq!(r.get("employee_number"), Some(&Value::from("E1")));
    assert_eq!(r.fields.get("diagnosis"), Some(&FieldValue::Withheld { domain: "medical".into() }));
    let rows = h.store.audit_page(None, 0, 1000).await.unwrap();
    assert_eq!(rows.last().unwrap().entry.fields, "general:employee_number", "only what was read is listed");
    // The keys a decision loads are exactly its domains.
    let domains = [DomainName::general()];
    let proof = h
        .svc
        .authorizer()
        .check(
            &hr,
            &Request::new(&h.acme, Action::Read, &domains, Target::record("absence", "b-1", Some("emp-1"))),
        )
        .into_proof()
        .unwrap();
    let access = h.svc.keys(&proof).await.unwrap();
    assert_eq!(access.domains().collect::<Vec<_>>(), ["general"]);
    // ...and its target: the keys of a proof for b-1 open b-1 only.
    h.svc
        .insert(
            &seeder(&h),
            &ctx(),
            "absence",
            NewRecord::new("emp-2").id("b-2").set("employee_number", "E2"),
        )
        .await
        .unwrap();
    assert!(h.store.get(&access, "absence", "b-1").await.unwrap().is_some());
    for e in [
        h.store.get(&access, "absence", "b-2").await.map(|_| ()),
        h.store.list(&access, "absence", None, None, 10).await.map(|_| ()),
        h.store.find(&access, "absence", "employee_number", &Value::from("E2")).await.map(|_| ()),
        h.store
            .update(&access, "absence", "b-2", 1, Changes::new().set("employee_number", "E3"))
            .await
            .map(|_| ()),
        // A read proof's keys do not write, not even the record it names.
        h.store
            .update(&access, "absence", "b-1", 1, Changes::new().set("employee_number", "E3"))
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(e, Err(kluis_store::StoreError::OutOfScope { .. })), "{e:?}");
    }
    let medical = [DomainName::medical()];
    assert!(
        h.svc
            .authorizer()
            .check(&hr, &Request::new(&h.acme, Action::Read, &medical, Target::Tenant))
            .into_proof()
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_flagged_and_audited_with_its_reason() {
    let h = common::sqlite(1000).await.unwrap();
    seed(&h, "m-1", "emp-1", "medical").await;
    let cm = user("case_manager");
    assert!(matches!(h.svc.get(&cm, &ctx(), "absence", "m-1").await, Err(Error::Denied(_))));
    let reason = "employee collapsed at work, ambulance called";
    let r = h.svc.get(&cm, &ctx().break_glass(reason), "absence", "m-1").await.unwrap();
    assert_eq!(r.get("diagnosis"), Some(&Value::from("v-medical")));
    let rows = h.store.audit_page(None, 0, 1000).await.unwrap();
    let last = &rows.last().unwrap().entry;
    assert_eq!(last.break_glass, reason);
    assert!(last.reason.starts_with("break_glass:case_manager"), "{}", last.reason);
    assert_eq!(last.fields, "medical:diagnosis");
    // HR may not break the glass; a too-short reason is refused.
    assert!(matches!(
        h.svc.get(&user("hr_manager"), &ctx().break_glass(reason), "absence", "m-1").await,
        Err(Error::Denied(_))
    ));
    assert!(matches!(
        h.svc.get(&cm, &ctx().break_glass("urgent"), "absence", "m-1").await,
        Err(Error::Denied(_))
    ));
    let review =
        h.svc.authorizer().access_review(&principal("admin", &h.acme, "tenant_admin"), &h.acme).unwrap();
    assert_eq!(review.break_glass.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_grant_uses_are_audited() {
    let h = common::sqlite(1000).await.unwrap();
    seed(&h, "g-1", "emp-1", "general").await;
    seed(&h, "m-1", "emp-1", "medical").await;
    let admin = principal("admin", &h.acme, "tenant_admin");
    let scope =
        GrantScope { domains: [DomainName::general()].into(), actions: ActionSet::of(&[Action::Read]) };
    let g = h
        .svc
        .authorizer()
        .grant_support(&admin, &h.acme, UserId::new("sup.kees").unwrap(), scope, Duration::from_secs(86_400))
        .unwrap();
    let sup = Principal::support(UserId::new("sup.kees").unwrap(), g.id.clone());
    let c = ctx().in_tenant(h.acme.clone());
    let r = h.svc.get(&sup, &c, "absence", "g-1").await.unwrap();
    assert_eq!(r.get("employee_number"), Some(&Value::from("v-general")));
    let rows = h.store.audit_page(None, 0, 1000).await.unwrap();
    let last = &rows.last().unwrap().entry;
    assert_eq!(last.support_grant, g.id.to_string());
    assert_eq!(last.reason, format!("support_grant:{}", g.id));
    assert!(matches!(h.svc.get(&sup, &c, "absence", "m-1").await, Err(Error::Denied(_))));
    // Without a tenant to act in, a support user is denied (and that is logged).
    let before = denials(&h).await.len();
    assert!(matches!(h.svc.list(&sup, &ctx(), "absence", None, None, 10).await, Err(Error::Denied(_))));
    assert_eq!(denials(&h).await.len(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_audit_log_is_audited() {
    let h = common::sqlite(1000).await.unwrap();
    seed(&h, "g-1", "emp-1", "general").await;
    let auditor = user("auditor");
    let c = RequestContext::new("audit-ws", "quarterly review").on_behalf_of(UserId::new("dpo").unwrap());
    let rows = h.svc.audit_entries(&auditor, &c, 0, 100).await.unwrap();
    let last = &rows.last().unwrap().entry;
    assert_eq!(
        (last.action.as_str(), last.actor.as_str(), last.on_behalf_of.as_str()),
        ("read_audit", "u.auditor", "dpo")
    );
    assert!(rows.iter().all(|r| r.entry.tenant == "acme"));
    let mut out = Vec::new();
    let n = h.svc.export_audit(&auditor, &c, &mut out).await.unwrap();
    assert_eq!(n as usize, String::from_utf8(out).unwrap().lines().count());
    let hr = user("hr_manager");
    assert!(matches!(h.svc.audit_entries(&hr, &ctx(), 0, 100).await, Err(Error::Denied(_))));
    let d = denials(&h).await;
    assert_eq!(d.last().unwrap().entry.action, "read_audit");
}

/// An application instance's facade reports the root key versions it holds: once when a request
/// unlocks keys, and on demand (its timer); a facade over a store without reports refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_facade_reports_its_instance() {
    let h = common::sqlite(1000).await.unwrap();
    let file = h.file.clone().unwrap();
    let schema = h.store.schema().clone();
    let store = std::sync::Arc::new(
        kluis_store::Store::new(kluis_store::Sqlite::open(&file).await.unwrap(), schema)
            .with_instance_reports("verzuim-app vm-3")
            .unwrap(),
    );
    let authz = kluis_service::authz::Authorizer::new(
        kluis_service::authz::Policy::builtin(),
        std::sync::Arc::new(kluis_service::authz::MemoryRegistry::new()),
        h.clock.clone(),
    );
    let svc =
        kluis_service::Service::new(authz, store.clone(), h.keyring.clone()).with_clock(h.clock.clone());
    assert!(h.store.instances(kluis_store::DEFAULT_INSTANCE_WINDOW).await.unwrap().is_empty());
    svc.insert(&seeder(&h), &ctx(), "absence", NewRecord::new("emp-1").id("r-1").set("diagnosis", "flu"))
        .await
        .unwrap();
    let seen = h.store.instances(kluis_store::DEFAULT_INSTANCE_WINDOW).await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].label.as_str(), seen[0].id.as_str()),
        ("verzuim-app vm-3", store.instance_id().unwrap())
    );
    assert_eq!(seen[0].held, kluis_store::Held::Versions(vec![kluis_core::KeyVersion::FIRST]));
    svc.report_instance().await.unwrap();
    assert!(matches!(h.svc.report_instance().await, Err(Error::Store(kluis_store::StoreError::Invalid(_)))));
    store.pool().close().await;
}

mod props {
    use super::*;
    use proptest::prelude::*;

    const NON_MEDICAL: [&str; 6] =
        ["hr_manager", "employee", "case_manager", "key_admin", "auditor", "tenant_admin"];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Whatever non-medical roles are combined, no medical value leaves the facade through a
        /// read, list, search or export.
        #[test]
        fn no_non_medical_role_combination_gets_a_medical_value(mask in 1u8..64) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async {
                let h = common::sqlite(1000).await.unwrap();
                h.svc
                    .insert(&seeder(&h), &ctx(), "absence", NewRecord::new("emp-1").id("b-1").set("diagnosis", "flu").set("employee_number", "E1"))
                    .await
                    .unwrap();
                let roles: BTreeSet<&str> = NON_MEDICAL.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, r)| *r).collect();
                let p = Principal::new(UserId::new("mix").unwrap(), Some(h.acme.clone()), roles.iter().map(|r| RoleName::new(*r).unwrap()))
                    .with_subject("emp-1");
                let c = ctx();
                let mut seen: Vec<Record> = Vec::new();
                if let Ok(r) = h.svc.get(&p, &c, "absence", "b-1").await { seen.push(r) }
                if let Ok(pg) = h.svc.list(&p, &c, "absence", Some("emp-1"), None, 10).await { seen.extend(pg.records) }
                if let Ok(f) = h.svc.find(&p, &c, "absence", "employee_number", &Value::from("E1")).await { seen.extend(f) }
                assert!(h.svc.find(&p, &c, "absence", "diagnosis", &Value::from("flu")).await.is_err());
                if let Ok(e) = h.svc.export(&p, &c, "emp-1").await { seen.extend(e) }
                assert!(seen.iter().all(|r| r.get("diagnosis").is_none()), "{roles:?}");
            });
        }
    }
}
