//! An application that keeps its own tables with another driver and uses Kluis only for keys and
//! sealing: bytes in, bytes out. Here the application's table is on PostgreSQL through
//! `tokio-postgres` (not sqlx), with `BYTEA` columns; the store's own database (a SQLite file)
//! holds the wrapped domain keys.
//!
//! For SQL Server through tiberius the calls have the same shape, with `VARBINARY(MAX)` columns:
//!
//! ```text
//! CREATE TABLE dbo.Absence (Id NVARCHAR(64) PRIMARY KEY, Employee NVARCHAR(64) NOT NULL,
//!                           Diagnosis VARBINARY(MAX) NULL, WorkCapacity VARBINARY(MAX) NULL);
//! client.execute("INSERT INTO dbo.Absence (Id, Employee, Diagnosis, WorkCapacity) VALUES (@P1, @P2, @P3, @P4)",
//!                &[&id, &employee, &sealed_diagnosis.as_slice(), &sealed_capacity.as_slice()]).await?;
//! let row = client.query("SELECT Diagnosis FROM dbo.Absence WHERE Id = @P1", &[&id]).await?.into_row().await?;
//! let sealed: &[u8] = row.and_then(|r| r.get::<&[u8], _>(0)).unwrap_or_default();
//! ```
//!
//! `KLUIS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) names the
//! database; the example makes a table of its own there and drops it at the end. Without a
//! reachable server it says SKIPPED (in CI, with `CI=true`, it fails instead).
//!
//! cargo run -p kluis-store --example own_driver
//!
//! `cargo test` runs it too (the example's test below).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use kluis_core::{Context, DomainName, LocalKeyring, TenantId};
use kluis_store::{Schema, Sqlite, Store};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn url() -> String {
    std::env::var("KLUIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The whole story; `Ok(false)` if PostgreSQL is unreachable.
async fn run(url: &str) -> Result<bool, AnyError> {
    let (client, connection) = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            println!("PostgreSQL at {url} unreachable: {e}");
            return Ok(false);
        }
    };
    let conn = tokio::spawn(connection);

    // The keys: a store of their own (here a SQLite file), holding only wrapped keys.
    let dir = tempfile::tempdir()?;
    let keyring = LocalKeyring::generate(0)?; // in an app: kluis_keyring::KeyringFile::open(..)
    let keys = Store::new(Sqlite::open(&dir.path().join("keys.db")).await?, Schema::default());
    keys.migrate().await?;
    let tenant = TenantId::new("acme")?;
    let medical = DomainName::medical();
    keys.ensure_domain_key(&keyring, &tenant, &medical).await?;
    let set = keys.key_set(&keyring, &tenant, &medical).await?;

    // The application's own table, with its own driver.
    let table = format!("app_absence_{}", std::process::id());
    client.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id TEXT PRIMARY KEY, employee TEXT NOT NULL, \
             diagnosis BYTEA, work_capacity BYTEA)"
        ))
        .await?;

    // Seal each column with its full context: table, column and row id are bound in.
    let (id, employee) = ("abs-1", "emp-42");
    let ctx =
        |field| Context { tenant: &tenant, domain: &medical, collection: table.as_str(), field, record: id };
    let diagnosis = "burn-out, canary-7f3a";
    let sealed_diagnosis = set.seal(&ctx("diagnosis"), diagnosis.as_bytes())?;
    let sealed_capacity = set.seal(&ctx("work_capacity"), b"50")?;
    client
        .execute(
            &format!("INSERT INTO {table} (id, employee, diagnosis, work_capacity) VALUES ($1, $2, $3, $4)"),
            &[&id, &employee, &sealed_diagnosis.as_slice(), &sealed_capacity.as_slice()],
        )
        .await?;

    // Reading back: the driver returns the bytes, Kluis opens them with the same context.
    let row = client
        .query_one(&format!("SELECT diagnosis, work_capacity FROM {table} WHERE id = $1"), &[&id])
        .await?;
    let (diag, cap): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
    let opened = set.open(&ctx("diagnosis"), &diag)?;
    assert_eq!(opened.expose_secret(), diagnosis.as_bytes());
    println!("diagnosis: {}", String::from_utf8_lossy(opened.expose_secret()));
    println!(
        "capacity:  {}",
        String::from_utf8_lossy(set.open(&ctx("work_capacity"), &cap)?.expose_secret())
    );
    // What the database holds is ciphertext: the plaintext is in none of the stored bytes.
    let stored: Vec<u8> = client
        .query_one(&format!("SELECT convert_to(t::text, 'UTF8') FROM {table} t WHERE id = $1"), &[&id])
        .await?
        .get(0);
    assert!(!String::from_utf8_lossy(&stored).contains("canary-7f3a"));
    assert!(!diag.windows(11).any(|w| w == b"canary-7f3a"));

    // A DBA copies the diagnosis into the work capacity column by SQL: it does not open there.
    client.execute(&format!("UPDATE {table} SET work_capacity = diagnosis WHERE id = $1"), &[&id]).await?;
    let moved: Vec<u8> =
        client.query_one(&format!("SELECT work_capacity FROM {table} WHERE id = $1"), &[&id]).await?.get(0);
    assert!(set.open(&ctx("work_capacity"), &moved).is_err());
    println!("a diagnosis copied into work_capacity by SQL does not open: ok");

    client.batch_execute(&format!("DROP TABLE {table}")).await?;
    drop(client);
    conn.await??;
    Ok(true)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), AnyError> {
    if !run(&url()).await? {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            return Err("PostgreSQL is needed in CI".into());
        }
        println!("SKIPPED: own_driver (no PostgreSQL)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn own_driver_against_postgres() {
        if !super::run(&super::url()).await.unwrap() {
            assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "PostgreSQL is needed in CI");
            println!("SKIPPED: own_driver (no PostgreSQL)");
        }
    }
}
