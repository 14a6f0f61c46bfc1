//! Shared helpers: a data directory made by the real binary, opened in-process through the
//! library with the same parts the binary uses.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use kluis_blob::catalog::Documents;
use kluis_blob::{DocumentVault, LocalDir};
use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_store::{Access, Schema, Sqlite, Store};

/// Key version `n` (from 1).
pub fn kv(n: u32) -> kluis_core::KeyVersion {
    kluis_core::KeyVersion::new(n).unwrap()
}

pub const PASSPHRASE: &str = "crash test passphrase, not secret";

pub fn kluis(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kluis"));
    c.arg("--data-dir").arg(dir).args(args).env("KLUIS_PASSPHRASE", PASSPHRASE).env_remove("KLUIS_DATA_DIR");
    c
}

pub fn run_ok(dir: &Path, args: &[&str]) -> Output {
    let out = kluis(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "kluis {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub struct Data {
    pub dir: PathBuf,
    pub store: Arc<Store<Sqlite>>,
    pub docs: Documents<Sqlite, LocalDir>,
    pub keyring: LocalKeyring,
    pub tenant: TenantId,
}

impl Data {
    /// `kluis init` and `kluis tenant add acme` through the binary, then the parts in-process.
    pub async fn create(dir: &Path) -> Self {
        run_ok(dir, &["init"]);
        run_ok(dir, &["tenant", "add", "acme"]);
        Self::open(dir).await
    }

    pub async fn open(dir: &Path) -> Self {
        let secret = kluis_cli::config::keyring_secret(&zeroize::Zeroizing::new(PASSPHRASE.to_owned()));
        let keyring =
            kluis_keyring::KeyringFile::open(dir.join("keyring.kr"), secret).unwrap().into_keyring();
        let schema = Schema::from_toml(&std::fs::read_to_string(dir.join("schema.toml")).unwrap()).unwrap();
        let store = Arc::new(Store::new(Sqlite::open(&dir.join("kluis.sqlite")).await.unwrap(), schema));
        store.migrate().await.unwrap();
        let blobs = LocalDir::open(dir.join("blobs")).await.unwrap();
        let docs = Documents::new(Arc::clone(&store), DocumentVault::new(blobs));
        Self { dir: dir.to_owned(), store, docs, keyring, tenant: TenantId::new("acme").unwrap() }
    }

    pub async fn access(&self) -> Access {
        self.store
            .admin_access(&self.keyring, &self.tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap()
    }
}

/// A random u64 (for random kill moments and test data).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Is this a CI run (`CI=true`), where a missing server fails the test instead of skipping it?
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports a server test as skipped (outside CI) or fails it (in CI).
pub fn skipped(engine: &str, why: &str) {
    if in_ci() {
        panic!("{engine} is required in CI (CI=true) but is not reachable: {why}");
    }
    eprintln!("SKIPPED: {engine} ({why})");
    println!("SKIPPED: {engine} ({why})");
}

/// A database made for one test on the PostgreSQL or MariaDB test server.
#[derive(Clone, Debug)]
pub struct ServerDb {
    /// `postgres` or `mariadb`.
    pub engine: &'static str,
    /// The URL of the test's database.
    pub url: String,
    /// The URL it was made through (`KLUIS_TEST_POSTGRES_URL` / `KLUIS_TEST_MYSQL_URL`).
    pub admin: String,
    /// Its name.
    pub db: String,
}

impl ServerDb {
    /// A new database named `PREFIX_<random>`; `None` (after [`skipped`]) if the server does not
    /// answer.
    pub async fn new(engine: &'static str, prefix: &str) -> Option<Self> {
        let (var, default) = match engine {
            "postgres" => ("KLUIS_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
            _ => ("KLUIS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
        };
        let admin = std::env::var(var).unwrap_or_else(|_| default.into());
        let db = format!("{prefix}_{:012x}", random_u64() & 0xffff_ffff_ffff);
        let create = format!("CREATE DATABASE {db}");
        let made = if engine == "postgres" {
            Self::run_pg(&admin, &create).await
        } else {
            Self::run_my(&admin, &create).await
        };
        if let Err(e) = made {
            skipped(engine, &format!("{admin}: {e}"));
            return None;
        }
        let (base, _) = admin.rsplit_once('/').unwrap();
        Some(Self { engine, url: format!("{base}/{db}"), admin, db })
    }

    /// Drops the database (best effort).
    pub async fn drop_db(&self) {
        let _ = if self.engine == "postgres" {
            Self::run_pg(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db)).await
        } else {
            Self::run_my(&self.admin, &format!("DROP DATABASE IF EXISTS {}", self.db)).await
        };
    }

    async fn run_pg(admin: &str, sql: &str) -> Result<(), sqlx::Error> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(admin)
            .await?;
        sqlx::query(sql).execute(&pool).await?;
        pool.close().await;
        Ok(())
    }

    async fn run_my(admin: &str, sql: &str) -> Result<(), sqlx::Error> {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(admin)
            .await?;
        sqlx::query(sql).execute(&pool).await?;
        pool.close().await;
        Ok(())
    }
}
