//! The layout-v1 fixture (`tests/fixtures/layout_v1/`, made by the `kluis` CLI as its README
//! says): a data directory written by the record layout of migrations 0001-0005, and the same
//! rows as INSERT statements per engine. Every record of `expected.json` (made by `kluis export`)
//! must read back equal through the public API:
//!
//! - SQLite: a copy of the fixture's `kluis.sqlite`, opened as the CLI opens a data directory;
//! - PostgreSQL and MariaDB: a fresh database, `Store::migrate`, then `tables_<engine>.sql`.
//!
//! It is the "before" half of a layout migration test: the data must still read back after the
//! migrations of a later layout have run over it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kluis_core::{DomainName, KdfParams, KeyringSecret, LocalKeyring, Passphrase, TenantId};
use kluis_store::{Changes, Engine, FieldValue, Record, Schema, Sqlite, Store, Value};
use serde_json::{Value as Json, json};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout_v1")
}

/// The keyring of a data directory, opened with the passphrase the fixture keeps beside it.
fn keyring(dir: &Path) -> LocalKeyring {
    let pass = std::fs::read_to_string(fixture().join("passphrase.txt")).unwrap();
    let secret = KeyringSecret::Passphrase(
        Passphrase::new(pass.trim_end_matches('\n').to_owned()),
        KdfParams::DEFAULT,
    );
    LocalKeyring::from_file_bytes(&std::fs::read(dir.join("keyring.kr")).unwrap(), &secret).unwrap()
}

fn schema(dir: &Path) -> Schema {
    Schema::from_toml(&std::fs::read_to_string(dir.join("schema.toml")).unwrap()).unwrap()
}

fn expected() -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap()).unwrap()
}

/// A value as `kluis export` writes it.
fn to_json(v: &Value) -> Json {
    match v {
        Value::Text(s) | Value::Decimal(s) | Value::Date(s) => Json::String(s.clone()),
        Value::Integer(i) => json!(i),
        Value::Bool(b) => json!(b),
        Value::Bytes(b) => Json::String(hex::encode(b)),
        _ => Json::Null,
    }
}

/// A record as `kluis export` writes it (without the tenant).
fn record_json(r: &Record) -> Json {
    let mut fields = serde_json::Map::new();
    for (k, v) in &r.fields {
        let j = match v {
            FieldValue::Withheld { domain } => json!({ "withheld": domain.to_string() }),
            other => other.value().map(to_json).unwrap_or(Json::Null),
        };
        fields.insert(k.clone(), j);
    }
    json!({
        "type": "record", "collection": r.collection, "id": r.id, "subject": r.subject,
        "version": r.version, "created_at": r.created_at, "updated_at": r.updated_at,
        "retain_until": r.retain_until, "fields": fields,
    })
}

fn s<'a>(j: &'a Json, k: &str) -> &'a str {
    j[k].as_str().unwrap_or_else(|| panic!("{k} in {j}"))
}

/// Reads every record of every tenant of `expected.json` through `store` and compares.
async fn check_reads<B: Engine>(engine: &str, store: &Store<B>, keyring: &LocalKeyring) {
    let exp = expected();
    let domains = [DomainName::general(), DomainName::medical()];
    let mut checked = 0;
    for tenant in exp["tenants"].as_array().unwrap() {
        let tenant = tenant.as_str().unwrap();
        let access = store.admin_access(keyring, &TenantId::new(tenant).unwrap(), &domains).await.unwrap();
        // Everything the tenant has, page by page.
        let mut got: BTreeMap<(String, String), Json> = BTreeMap::new();
        for c in store.schema().collections() {
            let mut after: Option<String> = None;
            loop {
                let page = store.list(&access, &c.name, None, after.as_deref(), 3).await.unwrap();
                for r in &page.records {
                    got.insert((r.collection.clone(), r.id.clone()), record_json(r));
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        let want: BTreeMap<(String, String), Json> = exp["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| s(r, "tenant") == tenant)
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("tenant");
                ((s(&r, "collection").to_owned(), s(&r, "id").to_owned()), r)
            })
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{engine}: records of {tenant}"
        );
        for (k, w) in &want {
            assert_eq!(&got[k], w, "{engine}: {tenant} {k:?}");
            // And one by one through get.
            let one = store.get(&access, &k.0, &k.1).await.unwrap().unwrap();
            assert_eq!(&record_json(&one), w, "{engine}: get {tenant} {k:?}");
            checked += 1;
        }
        // Blind index lookups still find each employee by number.
        for w in want.values().filter(|w| w["fields"]["employee_number"].is_string()) {
            let number = Value::Text(s(&w["fields"], "employee_number").to_owned());
            let found = store.find(&access, "employee", "employee_number", &number).await.unwrap();
            let ids: Vec<&str> = found.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, [s(w, "id")], "{engine}: find {tenant} {number:?}");
        }
        // Deleted and shredded records stay gone.
        for a in exp["absent"].as_array().unwrap().iter().filter(|a| s(a, "tenant") == tenant) {
            let r = store.get(&access, s(a, "collection"), s(a, "id")).await.unwrap();
            assert!(r.is_none(), "{engine}: {a} came back");
        }
        // The document catalog rows (their metadata is sealed for kluis-blob; checked by row).
        for d in exp["documents"].as_array().unwrap().iter().filter(|d| s(d, "tenant") == tenant) {
            let row = store.document(&access, s(d, "document_id")).await.unwrap().unwrap();
            assert_eq!(row.subject, s(d, "subject"), "{engine}: document {d}");
            assert_eq!(row.domain, s(d, "domain"), "{engine}: document {d}");
            assert_eq!(row.record_id.as_deref(), d["record"].as_str(), "{engine}: document {d}");
            assert_eq!(row.created_at, d["created_at"].as_i64().unwrap(), "{engine}: document {d}");
        }
    }
    assert_eq!(checked, exp["records"].as_array().unwrap().len(), "{engine}: every expected record");
}

/// The INSERT statements of `tables_<engine>.sql`, one per line.
fn statements(engine: &str) -> Vec<String> {
    std::fs::read_to_string(fixture().join(format!("tables_{engine}.sql")))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("INSERT "))
        .map(|l| l.trim_end_matches(';').to_owned())
        .collect()
}

#[tokio::test]
async fn sqlite_fixture_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["kluis.sqlite", "keyring.kr", "schema.toml"] {
        std::fs::copy(fixture().join(f), tmp.path().join(f)).unwrap();
    }
    let store = Store::new(Sqlite::open(&tmp.path().join("kluis.sqlite")).await.unwrap(), schema(tmp.path()));
    store.migrate().await.unwrap();
    check_reads("sqlite", &store, &keyring(tmp.path())).await;
}

/// The move out of the legacy layout is one transaction per batch: a batch that cannot move (here
/// a cell of a field the schema lacks, planted in the middle) moves nothing and keeps every legacy
/// row; once the cause is gone, the next unlock moves everything and every record reads back.
#[tokio::test]
async fn sqlite_legacy_move_is_all_or_nothing_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["kluis.sqlite", "keyring.kr", "schema.toml"] {
        std::fs::copy(fixture().join(f), tmp.path().join(f)).unwrap();
    }
    let store = Store::new(Sqlite::open(&tmp.path().join("kluis.sqlite")).await.unwrap(), schema(tmp.path()));
    store.migrate().await.unwrap();
    let pool = store.pool();
    let count =
        |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap() };
    let legacy = count("SELECT COUNT(*) FROM kluis_records").await;
    assert!(legacy > 10, "{legacy}");
    let (t, c, id): (String, String, String) = sqlx::query_as(
        "SELECT tenant, collection, id FROM kluis_records ORDER BY tenant, collection, id LIMIT 1 OFFSET 10",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO kluis_fields (tenant, collection, record_id, field, domain, sealed, key_version) \
         VALUES (?, ?, ?, 'not_in_schema', 'general', X'00', 1)",
    )
    .bind(&t)
    .bind(&c)
    .bind(&id)
    .execute(pool)
    .await
    .unwrap();
    let keyring = keyring(tmp.path());
    let e = store.admin_access(&keyring, &TenantId::new(&t).unwrap(), &[DomainName::general()]).await;
    assert!(matches!(e, Err(kluis_store::StoreError::Schema(_))), "{e:?}");
    assert_eq!(count("SELECT COUNT(*) FROM kluis_records").await, legacy, "every legacy row kept");
    assert_eq!(count("SELECT COUNT(*) FROM kluis_r_absence").await, 0, "nothing moved");
    assert_eq!(count("SELECT COUNT(*) FROM kluis_r_employee").await, 0, "nothing moved");
    sqlx::query("DELETE FROM kluis_fields WHERE field = 'not_in_schema'").execute(pool).await.unwrap();
    check_reads("sqlite (resumed move)", &store, &keyring).await;
    assert_eq!(count("SELECT COUNT(*) FROM kluis_records").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM kluis_fields").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM kluis_blind_index").await, 0);
}

/// `tables_sqlite.sql` holds exactly the rows of `kluis.sqlite`: loaded into a fresh database,
/// it reads back the same.
#[tokio::test]
async fn sqlite_tables_sql_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(Sqlite::open(&tmp.path().join("kluis.sqlite")).await.unwrap(), schema(&fixture()));
    store.migrate().await.unwrap();
    for q in statements("sqlite") {
        sqlx::query(&q).execute(store.pool()).await.unwrap();
    }
    check_reads("sqlite (tables_sqlite.sql)", &store, &keyring(&fixture())).await;
}

#[tokio::test]
async fn postgres_tables_sql_reads_back() {
    let Some((backend, loc)) = common::fresh_postgres().await else { return };
    let store = Store::new(backend, schema(&fixture()));
    store.migrate().await.unwrap();
    for q in statements("postgres") {
        sqlx::query(&q).execute(store.pool()).await.unwrap();
    }
    check_reads("postgres", &store, &keyring(&fixture())).await;
    store.pool().close().await;
    common::drop_location(&loc).await;
}

#[tokio::test]
async fn mariadb_tables_sql_reads_back() {
    let Some((backend, loc)) = common::fresh_mysql().await else { return };
    let store = Store::new(backend, schema(&fixture()));
    store.migrate().await.unwrap();
    for q in statements("mysql") {
        sqlx::query(&q).execute(store.pool()).await.unwrap();
    }
    check_reads("mariadb", &store, &keyring(&fixture())).await;
    store.pool().close().await;
    common::drop_location(&loc).await;
}

/// Not a check: the step of `make.sh` the CLI has no command for (an update to version 2 and a
/// delete), through the public API on the data directory `KLUIS_FIXTURE_DIR`.
#[tokio::test]
#[ignore = "run by tests/fixtures/layout_v1/make.sh only"]
async fn make_fixture_update_and_delete() {
    // `--include-ignored` (KLUIS_SOAK=1 in scripts/test.sh) runs it too: nothing to do then.
    let Some(dir) = std::env::var_os("KLUIS_FIXTURE_DIR").map(PathBuf::from) else {
        eprintln!("SKIPPED: make_fixture_update_and_delete (KLUIS_FIXTURE_DIR not set; make.sh sets it)");
        return;
    };
    let store = Store::new(Sqlite::open(&dir.join("kluis.sqlite")).await.unwrap(), schema(&dir));
    store.migrate().await.unwrap();
    let keyring = keyring(&dir);
    let tenant = TenantId::new("acme-zorg").unwrap();
    let access =
        store.admin_access(&keyring, &tenant, &[DomainName::general(), DomainName::medical()]).await.unwrap();
    let r = store.get(&access, "absence", "ar-3").await.unwrap().unwrap();
    let changes = Changes::new()
        .set("end_date", Value::Date("2026-01-16".into()))
        .set("work_capacity", Value::Decimal("100".into()))
        .remove("doctor_notes");
    let w = store.update(&access, "absence", "ar-3", r.version, changes).await.unwrap();
    assert_eq!(w.version, 2);
    store.delete(&access, "absence", "ar-7", None, None).await.unwrap();
    store.pool().close().await;
}
