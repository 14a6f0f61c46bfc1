//! Encrypting the application's plaintext columns in place, on SQLite, PostgreSQL and MariaDB: a
//! table made by the test's own SQL (an integer primary key, a text, an integer and a searchable
//! column in clear), sealed batch by batch while an application that still writes plaintext
//! keeps writing; afterwards every row holds the last value written to it, no plaintext is left
//! in the table, and after the purge none in the database's files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::app_sql::{AppSql, B};
use common::{Harness, Location, contains, read_tree};
use kluis_core::DomainName;
use kluis_store::audit::AuditEntry;
use kluis_store::{AppRow, Engine, FieldValue, MySql, Postgres, Schema, Sqlite, Store, Value};

const SCHEMA: &str = r#"
[collections.absence.fields]
diagnosis = { type = "text", domain = "medical" }

[tables.notes]
table = "legacy_notes"
primary_key = ["id"]
tenant_column = "tenant_id"
subject_column = "employee_id"

[tables.notes.columns]
diagnosis = { type = "text", domain = "medical", plaintext_column = "diagnosis_text" }
hours     = { type = "integer", domain = "general", plaintext_column = "hours_plain" }
bsn       = { type = "text", domain = "general", max_bytes = 16, blind_index_column = "bsn_idx", plaintext_column = "bsn_text" }
"#;

const CANARY: &str = "canary-legacy-5e1b";
const ROWS: i64 = 60;
/// The row whose BSN is too long for the column's `max_bytes`: refused, left as it is.
const BAD_ROW: i64 = 17;

/// The application's table on each engine, its own columns only.
trait LegacySql: AppSql {
    const CREATE: &'static str;
}

impl LegacySql for Sqlite {
    const CREATE: &'static str = "CREATE TABLE legacy_notes (id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, \
        employee_id TEXT NOT NULL, diagnosis_text TEXT, hours_plain INTEGER, bsn_text TEXT)";
}

impl LegacySql for Postgres {
    const CREATE: &'static str = <Sqlite as LegacySql>::CREATE;
}

impl LegacySql for MySql {
    const CREATE: &'static str = "CREATE TABLE legacy_notes (id INTEGER PRIMARY KEY, tenant_id VARCHAR(64) NOT NULL, \
        employee_id VARCHAR(64) NOT NULL, diagnosis_text TEXT, hours_plain INTEGER, bsn_text VARCHAR(64))";
}

/// The files a DBA's copy of the database would hold, flushed first.
async fn files_of<E: Engine>(h: &Harness<E>) -> Option<Vec<u8>> {
    let dir = match &h.location {
        Location::Sqlite { dir, .. } => dir.clone(),
        Location::Postgres { url, .. } => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
            let data: String = sqlx::query_scalar("SHOW data_directory").fetch_one(&pool).await.unwrap();
            let oid: i64 =
                sqlx::query_scalar("SELECT oid::bigint FROM pg_database WHERE datname = current_database()")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            std::path::Path::new(&data).join("base").join(oid.to_string())
        }
        Location::MySql { url, .. } => {
            let pool = sqlx::MySqlPool::connect(url).await.unwrap();
            let mut c = pool.acquire().await.unwrap();
            sqlx::query("FLUSH TABLES legacy_notes FOR EXPORT").execute(&mut *c).await.unwrap();
            sqlx::query("UNLOCK TABLES").execute(&mut *c).await.unwrap();
            let data: String = sqlx::query_scalar("SELECT @@datadir").fetch_one(&mut *c).await.unwrap();
            let db: String = sqlx::query_scalar("SELECT DATABASE()").fetch_one(&mut *c).await.unwrap();
            drop(c);
            pool.close().await;
            std::path::Path::new(&data).join(db)
        }
    };
    if std::fs::read_dir(&dir).is_err() {
        assert!(!common::in_ci(), "cannot read the database files in {}", dir.display());
        println!("SKIPPED: database file scan (cannot read {})", dir.display());
        return None;
    }
    Some(read_tree(&dir).into_iter().flat_map(|(_, b)| b).collect())
}

fn who() -> AuditEntry {
    AuditEntry { actor: "migration".into(), ..AuditEntry::default() }
}

fn bsn(i: i64) -> String {
    if i == BAD_ROW { format!("{:040}", i) } else { format!("{:09}", 100_000_000 + i) }
}

async fn run<E: LegacySql>(h: Harness<E>) {
    let pool = h.store.pool().clone();
    let store = Arc::new(Store::new(pool.clone(), Schema::from_toml(SCHEMA).unwrap()));
    store.migrate().await.unwrap();
    E::run_pool(&pool, E::CREATE, vec![]).await;
    // Kluis's columns, as `kluis schema sql` prints them.
    let ddl = store.app_table("notes").unwrap().ddl(E::DIALECT);
    for stmt in ddl.lines().filter(|l| !l.starts_with("--")) {
        E::run_pool(&pool, stmt.trim_end_matches(';'), vec![]).await;
    }
    for i in 1..=ROWS {
        E::run_pool(
            &pool,
            "INSERT INTO legacy_notes (id, tenant_id, employee_id, diagnosis_text, hours_plain, bsn_text) VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                B::I(i),
                B::T("acme".into()),
                B::T(format!("emp-{}", i % 7)),
                B::T(format!("diagnosis {i} {CANARY}")),
                B::I(i * 2),
                B::T(bsn(i)),
            ],
        )
        .await;
    }
    let access = store
        .admin_access(&h.keyring, &h.tenant, &[DomainName::general(), DomainName::medical()])
        .await
        .unwrap();
    if let Some(before) = files_of(&h).await {
        assert!(contains(&before, CANARY.as_bytes()), "control: the plaintext is in the files before");
    }

    // The plan (a dry run).
    let plan = store.encrypt_columns_plan(&access, "notes").await.unwrap();
    assert_eq!(plan.rows, ROWS as u64);
    assert_eq!(plan.columns.len(), 3);
    assert!(plan.columns.iter().all(|(_, _, n)| *n == ROWS as u64));

    // An application that has not moved yet keeps writing plaintext hours while the run goes.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = std::collections::BTreeMap::new();
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = (n * 7) % ROWS + 1;
                let hours = 1000 + n;
                E::run_pool(
                    &pool,
                    "UPDATE legacy_notes SET hours_plain = ? WHERE id = ?",
                    vec![B::I(hours), B::I(id)],
                )
                .await;
                last.insert(id, hours);
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            last
        })
    };
    // One pass while the writer writes, in batches of 7 in key order.
    let mut refused = std::collections::BTreeSet::new();
    let pass = |batch: u32| {
        let store = store.clone();
        let access = &access;
        async move {
            let mut refused = Vec::new();
            let mut after: Option<Vec<String>> = None;
            let mut encrypted = 0;
            loop {
                let s = store
                    .encrypt_columns_step(
                        access,
                        "notes",
                        &kluis_store::BatchLimits::rows(batch),
                        after.as_deref(),
                        &who(),
                    )
                    .await
                    .unwrap();
                refused.extend(s.rows_refused);
                encrypted += s.rows_written;
                if s.rows_read == 0 {
                    return (encrypted, refused);
                }
                after = s.last_key;
            }
        }
    };
    let (first, r) = pass(7).await;
    assert!(first >= ROWS as u64 - 1, "the first pass sealed every row it met: {first}");
    refused.extend(r);
    stop.store(true, Ordering::Relaxed);
    let last = writer.await.unwrap();
    // The rows the writer gave plaintext again behind the first pass: a second pass seals
    // them, and a third finds nothing left but the refused row.
    let (_, r) = pass(50).await;
    refused.extend(r);
    let (third, r) = pass(50).await;
    assert_eq!(third, 0);
    refused.extend(r);
    let refused: Vec<(String, String)> = refused.into_iter().collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, BAD_ROW.to_string());
    assert!(refused[0].1.contains("bsn"), "{refused:?}");
    assert!(!refused[0].1.contains(&bsn(BAD_ROW)), "a refusal never holds the value");
    let plan = store.encrypt_columns_plan(&access, "notes").await.unwrap();
    assert_eq!(plan.rows, 1, "only the refused row keeps its plaintext");

    // Every other row: no plaintext, and its protected columns open to the last value written.
    let got = E::rows(
        &pool,
        "SELECT id, employee_id, diagnosis_text, hours_plain, bsn_text, diagnosis, hours, bsn, kluis_row_tag \
         FROM legacy_notes ORDER BY id",
        vec![],
        9,
    )
    .await;
    let mut rows = Vec::new();
    for r in &got {
        let id: i64 = String::from_utf8(r[0].clone().unwrap()).unwrap().parse().unwrap();
        if id == BAD_ROW {
            continue;
        }
        assert!(r[2].is_none() && r[3].is_none() && r[4].is_none(), "row {id} keeps plaintext");
        let subject = String::from_utf8(r[1].clone().unwrap()).unwrap();
        rows.push((
            id,
            AppRow::new(&[&id.to_string()], &subject)
                .cell("diagnosis", r[5].clone())
                .cell("hours", r[6].clone())
                .cell("bsn", r[7].clone())
                .row_tag(r[8].clone()),
        ));
    }
    assert_eq!(rows.len(), ROWS as usize - 1);
    let app_rows: Vec<AppRow> = rows.iter().map(|(_, r)| r.clone()).collect();
    let opened = store.open_app_rows(&access, "notes", &app_rows, &who()).await.unwrap();
    for ((id, _), o) in rows.iter().zip(&opened) {
        assert!(o.row_checked);
        assert_eq!(o.values["diagnosis"], FieldValue::Value(Value::Text(format!("diagnosis {id} {CANARY}"))));
        let want = last.get(id).copied().unwrap_or(id * 2);
        assert_eq!(o.values["hours"], FieldValue::Value(Value::Integer(want)), "row {id}");
        assert_eq!(o.values["bsn"], FieldValue::Value(Value::Text(bsn(*id))));
    }
    // Searchable by the blind index the run wrote.
    let idx = store.app_blind_index(&access, "notes", "bsn", &Value::Text(bsn(5))).unwrap();
    let hits =
        E::rows(&pool, "SELECT id FROM legacy_notes WHERE bsn_idx = ?", vec![B::Y(Some(idx[0].clone()))], 1)
            .await;
    assert_eq!(hits, vec![vec![Some(b"5".to_vec())]]);
    // The run is in the audit log, with ids and column names only.
    let audit = store.audit_page(Some("acme"), 0, 10_000).await.unwrap();
    let runs: Vec<_> = audit.iter().filter(|e| e.entry.action == "encrypt_columns").collect();
    assert!(!runs.is_empty());
    assert_eq!(runs[0].entry.fields, "general:bsn,general:hours,medical:diagnosis");
    assert!(audit.iter().all(|e| !format!("{:?}", e.entry).contains(CANARY)));

    // The refused row still holds its canary; clear it the application's way, then purge.
    E::run_pool(&pool, "DELETE FROM legacy_notes WHERE id = ?", vec![B::I(BAD_ROW)]).await;
    store.purge_app_table("notes").await.unwrap();
    if let Some(after) = files_of(&h).await {
        assert!(!contains(&after, CANARY.as_bytes()), "the plaintext is still in the database's files");
    }
    let dump = match &h.location {
        Location::Sqlite { .. } => Vec::new(),
        loc => common::dump(loc).await,
    };
    assert!(!contains(&dump, CANARY.as_bytes()), "the plaintext is in the dump");
    drop(store);
    if !matches!(h.location, Location::Sqlite { .. }) {
        common::drop_db(h).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_columns_sqlite() {
    run(common::sqlite().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_columns_postgres() {
    if let Some(h) = common::postgres().await {
        run(h).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_columns_mysql() {
    if let Some(h) = common::mysql().await {
        run(h).await;
    }
}

/// A value the table does not give back as written (here a trigger of the database's that
/// spoils it after the write) fails the read-back check, naming the row: the batch rolls back
/// whole, so every row keeps its plaintext and holds no sealed value.
#[tokio::test]
async fn a_value_that_does_not_read_back_keeps_its_plaintext() {
    let h = common::sqlite().await.unwrap();
    let pool = h.store.pool().clone();
    let store = Store::new(pool.clone(), Schema::from_toml(SCHEMA).unwrap());
    store.migrate().await.unwrap();
    <Sqlite as AppSql>::run_pool(&pool, <Sqlite as LegacySql>::CREATE, vec![]).await;
    for stmt in store
        .app_table("notes")
        .unwrap()
        .ddl(<Sqlite as AppSql>::DIALECT)
        .lines()
        .filter(|l| !l.starts_with("--"))
    {
        <Sqlite as AppSql>::run_pool(&pool, stmt.trim_end_matches(';'), vec![]).await;
    }
    for i in 1..=3 {
        <Sqlite as AppSql>::run_pool(
            &pool,
            "INSERT INTO legacy_notes (id, tenant_id, employee_id, diagnosis_text) VALUES (?, 'acme', 'emp-1', ?)",
            vec![B::I(i), B::T(format!("diagnosis {i}"))],
        )
        .await;
    }
    <Sqlite as AppSql>::run_pool(
        &pool,
        "CREATE TRIGGER spoil AFTER UPDATE OF diagnosis ON legacy_notes WHEN NEW.id = 2 AND NEW.diagnosis IS NOT NULL \
         BEGIN UPDATE legacy_notes SET diagnosis = substr(NEW.diagnosis, 1, length(NEW.diagnosis) - 1) || X'00' WHERE id = 2; END",
        vec![],
    )
    .await;
    let access = store
        .admin_access(&h.keyring, &h.tenant, &[DomainName::general(), DomainName::medical()])
        .await
        .unwrap();
    let e =
        store.encrypt_columns_step(&access, "notes", &kluis_store::BatchLimits::rows(10), None, &who()).await;
    match e {
        Err(kluis_store::StoreError::Integrity { collection, record, field }) => {
            assert_eq!((collection.as_str(), record.as_str(), field.as_str()), ("notes", "2", "diagnosis"));
        }
        other => panic!("expected an integrity error naming row 2, got {other:?}"),
    }
    let left = <Sqlite as AppSql>::rows(
        &pool,
        "SELECT id FROM legacy_notes WHERE diagnosis_text IS NOT NULL AND diagnosis IS NULL AND kluis_row_tag IS NULL",
        vec![],
        1,
    )
    .await;
    assert_eq!(left.len(), 3, "the batch rolled back whole");
}
