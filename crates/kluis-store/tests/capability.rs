//! The store's capability ([`Access`]) comes from an authorization decision: `Store::access` turns
//! the `AccessProof` of an allow into exactly its tenant, domains, target and mode, and nothing
//! else. (The engine does not matter here: SQLite.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use kluis_authz::{AccessProof, Action, Authorizer, Principal, Request, RoleName, Target, UserId};
use kluis_core::{DomainName, TenantId};
use kluis_store::{Changes, FieldValue, NewRecord, StoreError, Value};

fn absence(subject: &str, id: &str) -> NewRecord {
    NewRecord::new(subject)
        .id(id)
        .set("start_date", Value::Date("2025-03-01".into()))
        .set("employee_number", "E1")
        .set("diagnosis", "flu")
}

fn proof(
    role: &str,
    tenant: &TenantId,
    action: Action,
    domains: &[DomainName],
    target: Target,
) -> AccessProof {
    let p = Principal::new(UserId::new("u").unwrap(), Some(tenant.clone()), [RoleName::new(role).unwrap()]);
    Authorizer::builtin().check(&p, &Request::new(tenant, action, domains, target)).into_proof().unwrap()
}

fn out_of_scope<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::OutOfScope { .. })), "{r:?}");
}

#[tokio::test]
async fn a_proof_gives_exactly_its_domains_target_and_mode() {
    let h = common::sqlite().await.unwrap();
    let (s, t) = (&h.store, &h.tenant);
    s.insert(&h.doctor, "absence", absence("emp-1", "r1")).await.unwrap();
    s.insert(&h.doctor, "absence", absence("emp-2", "r2")).await.unwrap();
    let general = [DomainName::general()];
    let both = [DomainName::general(), DomainName::medical()];

    // A general read of one record: that record, without the medical field, read only.
    let p = proof("hr_manager", t, Action::Read, &general, Target::record("absence", "r1", Some("emp-1")));
    let a = s.access(&h.keyring, &p).await.unwrap();
    assert_eq!(a.domains().collect::<Vec<_>>(), ["general"]);
    assert!(!a.may_write());
    let r = s.get(&a, "absence", "r1").await.unwrap().unwrap();
    assert_eq!(r.fields.get("diagnosis"), Some(&FieldValue::Withheld { domain: "medical".into() }));
    assert_eq!(r.fields.get("employee_number"), Some(&FieldValue::Value(Value::Text("E1".into()))));
    out_of_scope(s.get(&a, "absence", "r2").await);
    out_of_scope(s.list(&a, "absence", None, None, 10).await);
    out_of_scope(s.update(&a, "absence", "r1", 1, Changes::new().set("employee_number", "E9")).await);

    // A medical read of one subject's records: theirs only, with the diagnosis.
    let p = proof("company_doctor", t, Action::Read, &both, Target::collection("absence", Some("emp-2")));
    let a = s.access(&h.keyring, &p).await.unwrap();
    let r = s.get(&a, "absence", "r2").await.unwrap().unwrap();
    assert_eq!(r.fields.get("diagnosis"), Some(&FieldValue::Value(Value::Text("flu".into()))));
    out_of_scope(s.get(&a, "absence", "r1").await);
    assert_eq!(s.list(&a, "absence", Some("emp-2"), None, 10).await.unwrap().records.len(), 1);

    // A write proof writes within its target, and not outside it.
    let p = proof("hr_manager", t, Action::Write, &general, Target::record("absence", "r1", Some("emp-1")));
    let a = s.access(&h.keyring, &p).await.unwrap();
    assert!(a.may_write());
    s.update(&a, "absence", "r1", 1, Changes::new().set("employee_number", "E9")).await.unwrap();
    out_of_scope(s.update(&a, "absence", "r2", 1, Changes::new().set("employee_number", "E9")).await);
    // ...and without the medical key it cannot touch the medical field.
    let e = s.update(&a, "absence", "r1", 2, Changes::new().set("diagnosis", "x")).await;
    assert!(matches!(e, Err(StoreError::AccessDenied { ref domain, .. }) if domain == "medical"), "{e:?}");
}

#[tokio::test]
async fn a_proof_of_another_kind_gives_no_data_keys() {
    let h = common::sqlite().await.unwrap();
    let t = &h.tenant;
    let general = [DomainName::general()];
    for (role, action) in [
        ("key_admin", Action::ManageKeys),
        ("auditor", Action::ReadAudit),
        ("tenant_admin", Action::ManageAccess),
    ] {
        let p = proof(role, t, action, &general, Target::Tenant);
        out_of_scope(h.store.access(&h.keyring, &p).await);
    }
    // A shred proof writes (it destroys), over its whole target.
    let p = proof("hr_manager", t, Action::Shred, &general, Target::Tenant);
    assert!(h.store.access(&h.keyring, &p).await.unwrap().may_write());
}

#[tokio::test]
async fn the_catalog_capability_holds_no_key_and_cannot_write() {
    let h = common::sqlite().await.unwrap();
    h.store.insert(&h.doctor, "absence", absence("emp-1", "r1")).await.unwrap();
    let c = kluis_store::Access::catalog(h.tenant.clone());
    assert_eq!(c.domains().count(), 0);
    assert!(!c.may_write());
    assert!(h.store.get(&c, "absence", "r1").await.is_err());
    out_of_scope(h.store.insert(&c, "absence", absence("emp-1", "r2")).await);
    // A proof of another tenant gives that tenant's keys only.
    let globex = TenantId::new("globex").unwrap();
    let p = proof("hr_manager", &globex, Action::Read, &[DomainName::general()], Target::Tenant);
    let a = h.store.access(&h.keyring, &p).await.unwrap();
    assert_eq!(a.tenant(), &globex);
    assert!(h.store.get(&a, "absence", "r1").await.unwrap().is_none());
}
