//! An HR application that keeps its own tables and its own SQL, with Kluis sealing the columns
//! that must be protected (docs/APP_TABLES.md walks through it).
//!
//! The application has `employees` (clear: name, department) and `absence_reports` (clear: the
//! dates and the work capacity an HR dashboard filters on; protected: the diagnosis, medical, and
//! the BSN, general and searchable). It writes with its own `INSERT` in its own sqlx transaction,
//! reports with its own `JOIN`, and lets Kluis open what the caller may see: the company doctor
//! sees the diagnosis, HR sees it withheld.
//!
//! cargo run -p kluis-store --example app_tables
//!
//! `cargo test` runs it too (the example's test below), on SQLite in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_store::audit::AuditEntry;
use kluis_store::{AppRow, FieldValue, Schema, Sqlite, Store, Value};
use sqlx::Row;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// The mapping of the application's table (normally in the schema file).
const SCHEMA: &str = r#"
[tables.absence]
table = "absence_reports"
primary_key = ["id"]
tenant_column = "tenant_id"
subject_column = "employee_id"

[tables.absence.columns]
diagnosis = { type = "text", domain = "medical", max_bytes = 2000 }
bsn       = { type = "text", domain = "general", blind_index_column = "bsn_idx" }
"#;

/// The application's own migration: its tables, then Kluis's columns as
/// `kluis schema sql --engine sqlite` prints them.
async fn migrate(pool: &sqlx::SqlitePool, store: &Store<Sqlite>) -> Result<(), AnyError> {
    sqlx::query(
        "CREATE TABLE employees (tenant_id TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, \
         department TEXT NOT NULL, PRIMARY KEY (tenant_id, id))",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "CREATE TABLE absence_reports (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, employee_id TEXT NOT NULL, \
         start_date TEXT NOT NULL, work_capacity INTEGER NOT NULL)",
    )
    .execute(pool)
    .await?;
    let ddl = store.app_table("absence")?.ddl(kluis_store::Dialect::Sqlite);
    let ddl: String = ddl.lines().filter(|l| !l.starts_with("--")).collect::<Vec<_>>().join("\n");
    for stmt in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::query(stmt).execute(pool).await?;
    }
    Ok(())
}

/// The whole story; returns what the HR dashboard line and the doctor's view showed.
async fn run(dir: &std::path::Path) -> Result<(String, String), AnyError> {
    // One database: the application's tables and Kluis's (keys, audit log) side by side.
    let pool = Sqlite::open(&dir.join("app.db")).await?;
    let store = Store::new(pool.clone(), Schema::from_toml(SCHEMA)?);
    store.migrate().await?;
    migrate(&pool, &store).await?;
    let keyring = LocalKeyring::generate(0)?; // in an app: kluis_keyring::KeyringFile::open(..)
    let acme = TenantId::new("acme")?;
    // Administrative keys for this example; an application behind kluis-service gets them
    // from an authorization decision instead (`Store::access(&proof)`).
    let doctor = store.admin_access(&keyring, &acme, &[DomainName::general(), DomainName::medical()]).await?;
    let hr = store.admin_access(&keyring, &acme, &[DomainName::general()]).await?;
    let who = |actor: &str| AuditEntry { actor: actor.into(), ..AuditEntry::default() };

    sqlx::query("INSERT INTO employees VALUES ('acme', 'emp-42', 'Jan Jansen', 'Logistics')")
        .execute(&pool)
        .await?;

    // The application's insert, in its own transaction: Kluis seals, the application binds.
    let mut tx = pool.begin().await?;
    let sealed = store
        .seal_insert(
            &mut tx,
            &doctor,
            "absence",
            &["abs-1"],
            "emp-42",
            &[("diagnosis", Value::Text("burn-out".into())), ("bsn", Value::Text("123456782".into()))],
            &who("dr.jansen"),
        )
        .await?;
    sqlx::query(
        "INSERT INTO absence_reports (id, tenant_id, employee_id, start_date, work_capacity, \
         diagnosis, bsn, bsn_idx, kluis_row_tag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind("abs-1")
    .bind(acme.as_str())
    .bind("emp-42")
    .bind("2026-11-02")
    .bind(50_i64)
    .bind(sealed.get("diagnosis")?)
    .bind(sealed.get("bsn")?)
    .bind(sealed.get("bsn_idx")?)
    .bind(sealed.get("kluis_row_tag")?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?; // the row and its audit entry, together

    // The application's own report: a join, a filter on a clear column, a lookup by BSN.
    let idx = store.app_blind_index(&hr, "absence", "bsn", &Value::Text("123456782".into()))?;
    let mut q = format!(
        "SELECT a.id, a.employee_id, e.name, a.work_capacity, a.diagnosis, a.bsn, a.kluis_row_tag \
         FROM absence_reports a JOIN employees e ON e.tenant_id = a.tenant_id AND e.id = a.employee_id \
         WHERE a.tenant_id = ? AND a.work_capacity < 100 AND a.bsn_idx IN ({})",
        vec!["?"; idx.len()].join(", ")
    );
    q.push_str(" ORDER BY a.id");
    let mut query = sqlx::query(&q).bind(acme.as_str());
    for i in &idx {
        query = query.bind(i.as_slice());
    }
    let found = query.fetch_all(&pool).await?;
    let rows: Vec<AppRow> = found
        .iter()
        .map(|r| {
            AppRow::new(&[r.get::<&str, _>(0)], r.get(1))
                .cell("diagnosis", r.get(4))
                .cell("bsn", r.get(5))
                .row_tag(r.get(6))
        })
        .collect();
    let shown = |v: &FieldValue| match v {
        FieldValue::Value(Value::Text(s)) => s.clone(),
        FieldValue::Withheld { domain } => format!("[{domain}: withheld]"),
        other => format!("{other:?}"),
    };
    let as_hr = store.open_app_rows(&hr, "absence", &rows, &who("hr.henk")).await?;
    let as_doctor = store.open_app_rows(&doctor, "absence", &rows, &who("dr.jansen")).await?;
    let name: &str = found[0].get(2);
    let capacity: i64 = found[0].get(3);
    let hr_line = format!(
        "{name} ({capacity}% able to work): BSN {}, diagnosis {}",
        shown(&as_hr[0].values["bsn"]),
        shown(&as_hr[0].values["diagnosis"])
    );
    let doctor_line = format!("{name}: diagnosis {}", shown(&as_doctor[0].values["diagnosis"]));
    Ok((hr_line, doctor_line))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), AnyError> {
    let dir = tempfile::tempdir()?;
    let (hr, doctor) = run(dir.path()).await?;
    println!("HR sees:     {hr}");
    println!("doctor sees: {doctor}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn app_tables_example() {
        let dir = tempfile::tempdir().unwrap();
        let (hr, doctor) = super::run(dir.path()).await.unwrap();
        assert_eq!(hr, "Jan Jansen (50% able to work): BSN 123456782, diagnosis [medical: withheld]");
        assert_eq!(doctor, "Jan Jansen: diagnosis burn-out");
        // Nothing of the diagnosis is stored in clear.
        let bytes: Vec<u8> = std::fs::read_dir(dir.path())
            .unwrap()
            .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap_or_default())
            .collect();
        assert!(!bytes.windows(8).any(|w| w == b"burn-out"));
    }
}
