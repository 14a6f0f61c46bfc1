//! An application that keeps its own tables with another driver (here: SQL Server through
//! tiberius, with VARBINARY(MAX) columns) and uses Kluis only for keys and sealing: bytes in,
//! bytes out. The store's database (SQLite here) holds the wrapped domain and subject keys.
//!
//! ```sql
//! CREATE TABLE dbo.Absence (Id NVARCHAR(64) PRIMARY KEY, Employee NVARCHAR(64) NOT NULL,
//!                           Diagnosis VARBINARY(MAX) NULL, WorkCapacity VARBINARY(MAX) NULL);
//! ```
//!
//! With tiberius the sealed bytes go in as ordinary parameters:
//!
//! ```text
//! client.execute("INSERT INTO dbo.Absence (Id, Employee, Diagnosis, WorkCapacity) VALUES (@P1, @P2, @P3, @P4)",
//!                &[&id, &employee, &sealed_diagnosis.as_slice(), &sealed_capacity.as_slice()]).await?;
//! let row = client.query("SELECT Diagnosis FROM dbo.Absence WHERE Id = @P1", &[&id]).await?.into_row().await?;
//! let sealed: &[u8] = row.and_then(|r| r.get::<&[u8], _>(0)).unwrap_or_default();
//! ```
//!
//! This example runs without a SQL Server: a `Vec` stands in for the table.
//!
//! cargo run -p kluis-store --example own_driver
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use kluis_core::{Context, DomainName, LocalKeyring, TenantId};
use kluis_store::{Schema, SqliteBackend, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let keyring = LocalKeyring::generate(0)?; // in an app: kluis_keyring::KeyringFile::open(..)
    let keys = Store::new(SqliteBackend::open(&dir.path().join("keys.db")).await?, Schema::default());
    keys.migrate().await?;
    let tenant = TenantId::new("acme")?;
    let medical = DomainName::medical();
    keys.ensure_domain_key(&keyring, &tenant, &medical).await?;
    let set = keys.key_set(&keyring, &tenant, &medical).await?;

    // Seal each column with its full context: table, column and row id are bound in.
    let (id, employee) = ("abs-1", "emp-42");
    let ctx =
        |field| Context { tenant: &tenant, domain: &medical, collection: "dbo.Absence", field, record: id };
    let sealed_diagnosis = set.seal(&ctx("Diagnosis"), b"burn-out")?;
    let sealed_capacity = set.seal(&ctx("WorkCapacity"), b"50")?;
    let table = [(id, employee, sealed_diagnosis, sealed_capacity)]; // ← VARBINARY(MAX) columns

    // Reading back: open with the same context.
    let (_, _, diag, cap) = &table[0];
    println!("diagnosis: {}", String::from_utf8_lossy(set.open(&ctx("Diagnosis"), diag)?.expose_secret()));
    println!("capacity:  {}", String::from_utf8_lossy(set.open(&ctx("WorkCapacity"), cap)?.expose_secret()));
    // A value copied into another column (or row) by SQL does not open.
    assert!(set.open(&ctx("WorkCapacity"), diag).is_err());
    println!("a diagnosis copied into WorkCapacity does not open: ok");
    Ok(())
}
