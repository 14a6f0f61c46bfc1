//! Test harness for the facade: a fresh database per test on each engine (the same rules as
//! kluis-store's tests: `KLUIS_TEST_POSTGRES_URL`, `KLUIS_TEST_MYSQL_URL`; with `CI=true` an
//! unreachable server fails the test, otherwise it prints `SKIPPED: ...` and passes).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use kluis_core::{LocalKeyring, TenantId};
use kluis_service::authz::{Authorizer, MemoryRegistry, Policy, Principal, RoleName, UserId};
use kluis_service::clock::ManualClock;
use kluis_service::{RequestContext, Service, ServiceConfig};
use kluis_store::{Engine, MySql, Postgres, Schema, Sqlite, Store};

/// Key version `n` (from 1).
pub fn kv(n: u32) -> kluis_core::KeyVersion {
    kluis_core::KeyVersion::new(n).unwrap()
}

pub const SCHEMA_TOML: &str = r#"
[collections.absence.fields]
start_date      = { type = "date", domain = "general" }
employee_number = { type = "text", domain = "general", blind_index = true, max_bytes = 32 }
diagnosis       = { type = "text", domain = "medical", max_bytes = 200, blind_index = true }
doctor_notes    = { type = "text", domain = "medical" }
"#;

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub fn unreachable(engine: &str, why: &str) -> Option<()> {
    if in_ci() {
        panic!("{engine} is required in CI (CI=true) but is not reachable: {why}");
    }
    eprintln!("SKIPPED: {engine} ({why})");
    println!("SKIPPED: {engine} ({why})");
    None
}

pub fn unique_name(prefix: &str) -> String {
    let k = kluis_core::KeyMaterial::generate().unwrap();
    format!("{prefix}_{}", hex::encode(&k.expose_secret()[..6]))
}

pub fn with_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && !url[..i].ends_with('/') => format!("{}/{db}", &url[..i]),
        _ => format!("{}/{db}", url.trim_end_matches('/')),
    }
}

pub struct H<B: Engine> {
    pub svc: Service<B>,
    pub store: Arc<Store<B>>,
    pub keyring: Arc<LocalKeyring>,
    pub clock: Arc<ManualClock>,
    pub acme: TenantId,
    pub globex: TenantId,
    pub file: Option<std::path::PathBuf>,
    pub drop: Option<(String, String, bool)>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn principal(user: &str, tenant: &TenantId, role: &str) -> Principal {
    Principal::new(UserId::new(user).unwrap(), Some(tenant.clone()), [RoleName::new(role).unwrap()])
}

pub fn ctx() -> RequestContext {
    RequestContext::new("ws-17/10.0.0.5", "reintegration")
}

async fn finish<B: Engine>(
    store: Store<B>,
    file: Option<std::path::PathBuf>,
    drop: Option<(String, String, bool)>,
    tmp: Option<tempfile::TempDir>,
    checkpoint_every: u64,
) -> H<B> {
    store.migrate().await.unwrap();
    let store = Arc::new(store);
    let keyring = Arc::new(LocalKeyring::generate(0).unwrap());
    let clock = Arc::new(ManualClock::at_unix(1_790_000_000));
    let authz = Authorizer::new(Policy::builtin(), Arc::new(MemoryRegistry::new()), clock.clone());
    let mut config = ServiceConfig::default();
    config.checkpoint_every = checkpoint_every;
    let svc =
        Service::new(authz, store.clone(), keyring.clone()).with_clock(clock.clone()).with_config(config);
    H {
        svc,
        store,
        keyring,
        clock,
        acme: TenantId::new("acme").unwrap(),
        globex: TenantId::new("globex").unwrap(),
        file,
        drop,
        _tmp: tmp,
    }
}

pub async fn sqlite(checkpoint_every: u64) -> Option<H<Sqlite>> {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("kluis.db");
    let backend = Sqlite::open(&file).await.unwrap();
    let schema = Schema::from_toml(SCHEMA_TOML).unwrap();
    Some(finish(Store::new(backend, schema), Some(file), None, Some(tmp), checkpoint_every).await)
}

pub async fn postgres(checkpoint_every: u64) -> Option<H<Postgres>> {
    let admin_url = std::env::var("KLUIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&admin_url)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            unreachable("postgres", &format!("{admin_url}: {e}"))?;
            return None;
        }
    };
    let db = unique_name("kluis_svc");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.unwrap();
    admin.close().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&with_db(&admin_url, &db))
        .await
        .unwrap();
    let schema = Schema::from_toml(SCHEMA_TOML).unwrap();
    Some(finish(Store::new(pool, schema), None, Some((admin_url, db, true)), None, checkpoint_every).await)
}

pub async fn mysql(checkpoint_every: u64) -> Option<H<MySql>> {
    let admin_url =
        std::env::var("KLUIS_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let admin = match sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&admin_url)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            unreachable("mariadb", &format!("{admin_url}: {e}"))?;
            return None;
        }
    };
    let db = unique_name("kluis_svc");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.unwrap();
    admin.close().await;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(6)
        .connect(&with_db(&admin_url, &db))
        .await
        .unwrap();
    let schema = Schema::from_toml(SCHEMA_TOML).unwrap();
    Some(finish(Store::new(pool, schema), None, Some((admin_url, db, false)), None, checkpoint_every).await)
}

impl<B: Engine> H<B> {
    /// Drops a server database (best effort).
    pub async fn cleanup(self) {
        let drop = self.drop.clone();
        self.store.pool().close().await;
        let Some((admin_url, db, pg)) = drop else { return };
        if pg {
            if let Ok(p) = sqlx::PgPool::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&p).await;
                p.close().await;
            }
        } else if let Ok(p) = sqlx::MySqlPool::connect(&admin_url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db}")).execute(&p).await;
            p.close().await;
        }
    }
}

/// Raw SQL on the store's own pool, as a DBA would run it.
pub trait Raw {
    fn exec(&self, sql: &str) -> impl std::future::Future<Output = u64>;
    /// Makes every insert into the audit table fail (a trigger), as a full disk or a revoked
    /// permission would.
    fn break_audit(&self) -> impl std::future::Future<Output = ()>;
    fn mend_audit(&self) -> impl std::future::Future<Output = ()>;
    fn engine(&self) -> &'static str;
}

impl Raw for Store<Sqlite> {
    async fn exec(&self, sql: &str) -> u64 {
        sqlx::query(sql).execute(self.pool()).await.unwrap().rows_affected()
    }
    async fn break_audit(&self) {
        self.exec("CREATE TRIGGER kluis_audit_refuse BEFORE INSERT ON kluis_audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END").await;
    }
    async fn mend_audit(&self) {
        self.exec("DROP TRIGGER kluis_audit_refuse").await;
    }
    fn engine(&self) -> &'static str {
        "sqlite"
    }
}

impl Raw for Store<Postgres> {
    async fn exec(&self, sql: &str) -> u64 {
        sqlx::query(sql).execute(self.pool()).await.unwrap().rows_affected()
    }
    async fn break_audit(&self) {
        self.exec("CREATE FUNCTION kluis_audit_refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$ LANGUAGE plpgsql").await;
        self.exec("CREATE TRIGGER kluis_audit_refuse BEFORE INSERT ON kluis_audit FOR EACH ROW EXECUTE FUNCTION kluis_audit_refuse()").await;
    }
    async fn mend_audit(&self) {
        self.exec("DROP TRIGGER kluis_audit_refuse ON kluis_audit").await;
        self.exec("DROP FUNCTION kluis_audit_refuse()").await;
    }
    fn engine(&self) -> &'static str {
        "postgres"
    }
}

impl Raw for Store<MySql> {
    async fn exec(&self, sql: &str) -> u64 {
        sqlx::raw_sql(sql).execute(self.pool()).await.unwrap().rows_affected()
    }
    async fn break_audit(&self) {
        self.exec("CREATE TRIGGER kluis_audit_refuse BEFORE INSERT ON kluis_audit FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'audit refused'").await;
    }
    async fn mend_audit(&self) {
        self.exec("DROP TRIGGER kluis_audit_refuse").await;
    }
    fn engine(&self) -> &'static str {
        "mariadb"
    }
}
