//! Test harness: a fresh database per test on each engine, a keyring, two callers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use kluis_core::{DomainName, KeyVersion, LocalKeyring, TenantId};
use kluis_store::Engine;
use kluis_store::{Access, MySql, Postgres, Schema, Sqlite, Store};
use sqlx::Row;

pub mod app_sql;

/// Key version `n` (from 1).
pub fn kv(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

pub const SCHEMA_TOML: &str = r#"
[collections.absence.fields]
start_date      = { type = "date", domain = "general" }
end_date        = { type = "date", domain = "general" }
work_capacity   = { type = "percentage", domain = "general" }
employee_number = { type = "text", domain = "general", blind_index = true, max_bytes = 32 }
diagnosis       = { type = "text", domain = "medical", max_bytes = 200, blind_index = true }
doctor_notes    = { type = "text", domain = "medical" }

[collections.employee.fields]
name      = { type = "text", domain = "general" }
salary    = { type = "integer", domain = "general" }
on_leave  = { type = "bool", domain = "general" }
photo     = { type = "bytes", domain = "general", max_bytes = 1024 }
"#;

pub fn schema() -> Schema {
    Schema::from_toml(SCHEMA_TOML).unwrap()
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A server that is not reachable: a failure in CI, a plain SKIPPED line elsewhere.
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

/// Where a test database lives, for raw scans and dumps.
#[derive(Debug, Clone)]
pub enum Location {
    Sqlite { dir: std::path::PathBuf, file: std::path::PathBuf },
    Postgres { url: String, admin_url: String, db: String },
    MySql { url: String, admin_url: String, db: String },
}

pub struct Harness<B: Engine> {
    pub store: Store<B>,
    pub keyring: LocalKeyring,
    pub tenant: TenantId,
    /// Holds general and medical keys (the company doctor).
    pub doctor: Access,
    /// Holds only general keys (HR).
    pub hr: Access,
    pub location: Location,
    _tmp: Option<tempfile::TempDir>,
}

impl<B: Engine> Harness<B> {
    async fn finish(store: Store<B>, location: Location, tmp: Option<tempfile::TempDir>) -> Self {
        store.migrate().await.unwrap();
        let keyring = LocalKeyring::generate(0).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let doctor = store
            .admin_access(&keyring, &tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap();
        let hr = store.admin_access(&keyring, &tenant, &[DomainName::general()]).await.unwrap();
        Self { store, keyring, tenant, doctor, hr, location, _tmp: tmp }
    }

    pub async fn access(&self, tenant: &str, domains: &[DomainName]) -> Access {
        self.store.admin_access(&self.keyring, &TenantId::new(tenant).unwrap(), domains).await.unwrap()
    }

    pub async fn refresh(&mut self) {
        self.doctor = self
            .store
            .admin_access(&self.keyring, &self.tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap();
        self.hr =
            self.store.admin_access(&self.keyring, &self.tenant, &[DomainName::general()]).await.unwrap();
    }
}

pub async fn sqlite() -> Option<Harness<Sqlite>> {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("kluis.db");
    let backend = Sqlite::open(&file).await.unwrap();
    let loc = Location::Sqlite { dir: tmp.path().to_owned(), file };
    Some(Harness::finish(Store::new(backend, schema()), loc, Some(tmp)).await)
}

fn with_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && !url[..i].ends_with('/') => format!("{}/{db}", &url[..i]),
        _ => format!("{}/{db}", url.trim_end_matches('/')),
    }
}

pub fn postgres_url() -> String {
    std::env::var("KLUIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mysql_url() -> String {
    std::env::var("KLUIS_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub async fn postgres() -> Option<Harness<Postgres>> {
    let (backend, loc) = fresh_postgres().await?;
    Some(Harness::finish(Store::new(backend, schema()), loc, None).await)
}

pub async fn mysql() -> Option<Harness<MySql>> {
    let (backend, loc) = fresh_mysql().await?;
    Some(Harness::finish(Store::new(backend, schema()), loc, None).await)
}

/// Drops a server test database (best effort).
pub async fn drop_db<B: Engine>(h: Harness<B>) {
    let loc = h.location.clone();
    h.store.pool().close().await;
    drop(h);
    match loc {
        Location::Sqlite { .. } => {}
        Location::Postgres { admin_url, db, .. } => {
            if let Ok(p) = sqlx::PgPool::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&p).await;
                p.close().await;
            }
        }
        Location::MySql { admin_url, db, .. } => {
            if let Ok(p) = sqlx::MySqlPool::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db}")).execute(&p).await;
                p.close().await;
            }
        }
    }
}

/// Raw SQL on the store's own pool, as a DBA would run it. `?` placeholders, byte/text binds.
pub trait Raw {
    fn raw_exec(&self, sql: &str, binds: Vec<Bind>) -> impl std::future::Future<Output = u64>;
    fn raw_bytes(&self, sql: &str, binds: Vec<Bind>) -> impl std::future::Future<Output = Vec<Vec<u8>>>;
}

#[derive(Clone, Debug)]
pub enum Bind {
    Text(String),
    Bytes(Vec<u8>),
}

pub fn t(s: &str) -> Bind {
    Bind::Text(s.to_owned())
}

pub fn numbered(sql: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

macro_rules! raw_impl {
    ($ty:ty, $db:ty, $conv:expr) => {
        impl Raw for Store<$ty> {
            async fn raw_exec(&self, sql: &str, binds: Vec<Bind>) -> u64 {
                let sql: String = $conv(sql);
                let mut q = sqlx::query::<$db>(&sql);
                for b in binds {
                    q = match b {
                        Bind::Text(s) => q.bind(s),
                        Bind::Bytes(v) => q.bind(v),
                    };
                }
                q.execute(self.pool()).await.unwrap().rows_affected()
            }
            async fn raw_bytes(&self, sql: &str, binds: Vec<Bind>) -> Vec<Vec<u8>> {
                let sql: String = $conv(sql);
                let mut q = sqlx::query::<$db>(&sql);
                for b in binds {
                    q = match b {
                        Bind::Text(s) => q.bind(s),
                        Bind::Bytes(v) => q.bind(v),
                    };
                }
                let rows = q.fetch_all(self.pool()).await.unwrap();
                rows.iter()
                    .map(|r| {
                        r.try_get::<Vec<u8>, _>(0)
                            .or_else(|_| r.try_get::<String, _>(0).map(String::into_bytes))
                            .unwrap()
                    })
                    .collect()
            }
        }
    };
}

raw_impl!(Sqlite, sqlx::Sqlite, |s: &str| s.to_owned());
raw_impl!(Postgres, sqlx::Postgres, numbered);
raw_impl!(MySql, sqlx::MySql, |s: &str| s.to_owned());

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, concatenated per file: (path, bytes).
pub fn read_tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(read_tree(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

/// A dump of the test database (pg_dump / mysqldump), as bytes.
pub async fn dump(loc: &Location) -> Vec<u8> {
    let out = match loc {
        Location::Sqlite { .. } => return Vec::new(),
        Location::Postgres { url, .. } => {
            tokio::process::Command::new("pg_dump").arg("--dbname").arg(url).output().await
        }
        Location::MySql { db, .. } => {
            let u = mysql_url();
            let (host, port) = parse_host_port(&u, "127.0.0.1", 3306);
            tokio::process::Command::new("mysqldump")
                .args(["-h", &host, "-P", &port.to_string(), "-u", "root", db])
                .output()
                .await
        }
    }
    .expect("dump tool runs");
    assert!(out.status.success(), "dump failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn parse_host_port(url: &str, host: &str, port: u16) -> (String, u16) {
    let rest = url.split("://").nth(1).unwrap_or("");
    let hp = rest.split('/').next().unwrap_or("");
    let hp = hp.rsplit('@').next().unwrap_or(hp);
    let mut it = hp.split(':');
    let h = it.next().filter(|s| !s.is_empty()).unwrap_or(host).to_owned();
    let p = it.next().and_then(|p| p.parse().ok()).unwrap_or(port);
    (h, p)
}

/// A fresh, empty PostgreSQL database (no migrations, no keys) and where it is; `None` (after
/// [`unreachable`]) if the server does not answer.
pub async fn fresh_postgres() -> Option<(sqlx::PgPool, Location)> {
    let admin_url = postgres_url();
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
    let db = unique_name("kluis_t");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.unwrap();
    admin.close().await;
    let url = with_db(&admin_url, &db);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.unwrap();
    Some((pool, Location::Postgres { url, admin_url, db }))
}

/// A fresh, empty MariaDB database (no migrations, no keys) and where it is.
pub async fn fresh_mysql() -> Option<(sqlx::MySqlPool, Location)> {
    let admin_url = mysql_url();
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
    let db = unique_name("kluis_t");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.unwrap();
    admin.close().await;
    let url = with_db(&admin_url, &db);
    let pool = sqlx::mysql::MySqlPoolOptions::new().max_connections(4).connect(&url).await.unwrap();
    Some((pool, Location::MySql { url, admin_url, db }))
}

/// Drops the database of a [`fresh_postgres`] or [`fresh_mysql`] (best effort; close its pool
/// first).
pub async fn drop_location(loc: &Location) {
    match loc {
        Location::Sqlite { .. } => {}
        Location::Postgres { admin_url, db, .. } => {
            if let Ok(p) = sqlx::PgPool::connect(admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&p).await;
                p.close().await;
            }
        }
        Location::MySql { admin_url, db, .. } => {
            if let Ok(p) = sqlx::MySqlPool::connect(admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db}")).execute(&p).await;
                p.close().await;
            }
        }
    }
}

/// `conformance!(engine, setup, [tests])`: a module `engine` with one `#[tokio::test]` per test
/// function `async fn test(h: Harness<B>) -> Harness<B>`, run on a fresh database from `setup`
/// and dropped afterwards.
#[allow(unused_macros)]
macro_rules! conformance {
    ($engine:ident, $setup:path, [$($test:ident),* $(,)?]) => {
        mod $engine {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(h) = $setup().await else { return };
                    let h = super::$test(h).await;
                    common::drop_db(h).await;
                }
            )*
        }
    };
}

/// `all_engines!(tests)`: [`conformance!`] on SQLite, PostgreSQL and MariaDB.
#[allow(unused_macros)]
macro_rules! all_engines {
    ($($test:ident),* $(,)?) => {
        common::conformance!(sqlite, common::sqlite, [$($test),*]);
        common::conformance!(postgres, common::postgres, [$($test),*]);
        common::conformance!(mariadb, common::mysql, [$($test),*]);
    };
}

#[allow(unused_imports)]
pub(crate) use {all_engines, conformance};
