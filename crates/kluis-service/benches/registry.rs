//! The persisted access registry on SQLite: a support-grant check through `StoreRegistry` beside
//! the same check through `MemoryRegistry` (one group, criterion interleaves nothing, so run both
//! in the same invocation and compare), and `load_tenant` of a tenant with 10 grants and 2,000
//! audit entries (what a restart costs per tenant).
//!
//! `cargo bench -p kluis-service --bench registry` (smoke: `-- --test`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kluis_core::{DomainName, KeyVersion, LocalKeyring, TenantId};
use kluis_service::authz::{
    Action, ActionSet, Authorizer, GrantScope, MemoryRegistry, Policy, Principal, Request, RoleName,
    StoreRegistry, Target, UserId,
};
use kluis_service::clock::SystemClock;
use kluis_service::{AdminActor, AdminEvent, Service};
use kluis_store::{Schema, Sqlite, Store};

const SCHEMA: &str = r#"
[collections.absence.fields]
start_date = { type = "date", domain = "general" }
"#;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("kluis.db");
    let store = rt.block_on(async {
        let s = Store::new(Sqlite::open(&path).await.unwrap(), Schema::from_toml(SCHEMA).unwrap());
        s.migrate().await.unwrap();
        Arc::new(s)
    });
    let keyring = Arc::new(LocalKeyring::generate(0).unwrap());
    let acme = TenantId::new("acme").unwrap();
    let admin = Principal::new(
        UserId::new("admin").unwrap(),
        Some(acme.clone()),
        [RoleName::new("tenant_admin").unwrap()],
    );
    let scope = || GrantScope {
        domains: BTreeSet::from([DomainName::general()]),
        actions: ActionSet::of(&[Action::Read]),
    };
    let day = Duration::from_secs(86_400);

    let stored = Arc::new(StoreRegistry::new(store.clone(), keyring.clone()));
    let s_authz = Authorizer::new(Policy::builtin(), stored.clone(), Arc::new(SystemClock));
    let m_authz = Authorizer::new(Policy::builtin(), Arc::new(MemoryRegistry::new()), Arc::new(SystemClock));
    let mut sg = None;
    rt.block_on(async {
        stored.load_tenant(&acme).await.unwrap();
        for i in 0..10 {
            let g = stored
                .grant_support(
                    &s_authz,
                    &admin,
                    &acme,
                    UserId::new(format!("support-{i}")).unwrap(),
                    scope(),
                    day,
                )
                .await
                .unwrap();
            sg.get_or_insert(g);
        }
        let svc = Service::new(s_authz.clone(), store.clone(), keyring.clone());
        let actor = AdminActor::new("ops.bench", "bench", "fill");
        for _ in 0..2000 {
            let e = AdminEvent::KeyRotation {
                tenant: acme.clone(),
                domain: DomainName::general(),
                version: KeyVersion::FIRST,
            };
            svc.record_admin(&actor, e).await.unwrap();
        }
    });
    let sg = sg.unwrap();
    let mg = m_authz.grant_support(&admin, &acme, UserId::new("support-0").unwrap(), scope(), day).unwrap();
    let general = [DomainName::general()];
    let req = Request::new(&acme, Action::Read, &general, Target::record("absence", "r-1", Some("emp-1")));
    let s_support = Principal::support(UserId::new("support-0").unwrap(), sg.id.clone());
    let m_support = Principal::support(UserId::new("support-0").unwrap(), mg.id.clone());

    let mut g = c.benchmark_group("registry");
    g.measurement_time(Duration::from_millis(1500)).sample_size(50);
    g.bench_function("check_support_grant_memory", |b| {
        b.iter(|| assert!(black_box(m_authz.check(&m_support, &req)).is_allowed()))
    });
    g.bench_function("check_support_grant_stored", |b| {
        b.iter(|| assert!(black_box(s_authz.check(&s_support, &req)).is_allowed()))
    });
    g.sample_size(10);
    g.bench_function("load_tenant_10_grants_2000_audit_entries", |b| {
        b.iter(|| rt.block_on(async { stored.load_tenant(&acme).await.unwrap() }))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
