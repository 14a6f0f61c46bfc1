//! Audit append throughput on SQLite and PostgreSQL: entries appended one per transaction
//! (`record_admin`, the cheapest audited call), and audited inserts (a record and its entry in one
//! transaction) against the same inserts through the store without an entry.
//!
//! `cargo bench -p kluis-service --bench audit` (smoke: `-- --test`). PostgreSQL from
//! `KLUIS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`); unreachable is
//! skipped locally and a failure with `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_service::authz::{Authorizer, MemoryRegistry, Policy, Principal, RoleName, UserId};
use kluis_service::clock::SystemClock;
use kluis_service::{AdminActor, AdminEvent, RequestContext, Service};
use kluis_store::{Engine, NewRecord, Postgres, Schema, Sqlite, Store};

const SCHEMA: &str = r#"
[collections.absence.fields]
start_date = { type = "date", domain = "general" }
diagnosis  = { type = "text", domain = "medical", max_bytes = 200 }
"#;
const BATCH: u64 = 100;

async fn service<B: Engine>(pool: sqlx::Pool<B::Db>) -> (Service<B>, Arc<Store<B>>, Arc<LocalKeyring>) {
    let store = Arc::new(Store::new(pool, Schema::from_toml(SCHEMA).unwrap()));
    store.migrate().await.unwrap();
    let keyring = Arc::new(LocalKeyring::generate(0).unwrap());
    let authz = Authorizer::new(Policy::builtin(), Arc::new(MemoryRegistry::new()), Arc::new(SystemClock));
    (Service::new(authz, store.clone(), keyring.clone()), store, keyring)
}

fn run<B: Engine>(c: &mut Criterion, rt: &tokio::runtime::Runtime, engine: &str, pool: sqlx::Pool<B::Db>) {
    let (svc, store, keyring) = rt.block_on(service::<B>(pool));
    let acme = TenantId::new("acme").unwrap();
    let actor = AdminActor::new("ops.bench", "bench", "throughput");
    let doctor = Principal::new(
        UserId::new("dr.bench").unwrap(),
        Some(acme.clone()),
        [RoleName::new("company_doctor").unwrap()],
    );
    let ctx = RequestContext::new("bench", "throughput");
    let access = rt
        .block_on(store.admin_access(&*keyring, &acme, &[DomainName::general(), DomainName::medical()]))
        .unwrap();
    let n = AtomicU64::new(0);
    let mut g = c.benchmark_group(format!("audit/{engine}"));
    g.sampling_mode(SamplingMode::Flat).sample_size(10).throughput(Throughput::Elements(BATCH));
    g.bench_function("append (record_admin), 100 entries", |b| {
        b.to_async(rt).iter(|| async {
            for _ in 0..BATCH {
                svc.record_admin(&actor, AdminEvent::RootRewrap { keys: 1 }).await.unwrap();
            }
        })
    });
    g.bench_function("audited insert, 100 records", |b| {
        b.to_async(rt).iter(|| async {
            for _ in 0..BATCH {
                let id = format!("a-{}", n.fetch_add(1, Ordering::Relaxed));
                svc.insert(&doctor, &ctx, "absence", NewRecord::new("emp-1").id(&id).set("diagnosis", "flu"))
                    .await
                    .unwrap();
            }
        })
    });
    g.bench_function("store insert without audit, 100 records", |b| {
        b.to_async(rt).iter(|| async {
            for _ in 0..BATCH {
                let id = format!("p-{}", n.fetch_add(1, Ordering::Relaxed));
                store
                    .insert(&access, "absence", NewRecord::new("emp-1").id(&id).set("diagnosis", "flu"))
                    .await
                    .unwrap();
            }
        })
    });
    g.finish();
    let r = rt.block_on(kluis_service::audit::verify(&store)).unwrap();
    assert!(r.is_ok(), "{r:?}");
}

fn audit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sqlite = rt.block_on(Sqlite::open(&tmp.path().join("bench.db"))).unwrap();
    run::<Sqlite>(c, &rt, "sqlite", sqlite);

    let url = std::env::var("KLUIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = format!("kluis_audit_bench_{}", std::process::id());
    let pg = rt.block_on(async {
        let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.ok()?;
        sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.ok()?;
        admin.close().await;
        let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&format!("{base}/{db}"))
            .await
            .ok()?;
        Some(pool)
    });
    match pg {
        Some(pg) => {
            let pool = pg.clone();
            run::<Postgres>(c, &rt, "postgres", pg);
            rt.block_on(async {
                pool.close().await;
                if let Ok(admin) = sqlx::PgPool::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        }
        None => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("postgres unreachable in CI: {url}");
            }
            println!("SKIPPED: postgres audit bench ({url} unreachable)");
        }
    }
}

criterion_group!(benches, audit);
criterion_main!(benches);
