//! An application whose own table is on PostgreSQL through another driver (tokio-postgres, not
//! sqlx), with Kluis's keys and audit log in a database of their own (a SQLite file): the
//! `*_apart` calls seal for its own statements, `open_app_rows` opens what it selected, a value
//! tampered with by SQL is refused, and every write and read is in Kluis's audit log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_store::audit::AuditEntry;
use kluis_store::{AppRow, FieldValue, Schema, Sqlite, Store, StoreError, Value};

const SCHEMA: &str = r#"
[tables.notes]
table = "other_driver_notes"
primary_key = ["id"]
tenant = "acme"
subject_column = "employee"
external = true

[tables.notes.columns]
diagnosis = { type = "text", domain = "medical" }
capacity  = { type = "percentage", domain = "general" }
"#;

fn who() -> AuditEntry {
    AuditEntry { actor: "app".into(), ..AuditEntry::default() }
}

#[tokio::test]
async fn another_driver_seals_and_opens_through_the_apart_calls() {
    let (client, connection) =
        match tokio_postgres::connect(&common::postgres_url(), tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) => {
                common::unreachable("postgres", &e.to_string());
                return;
            }
        };
    let conn = tokio::spawn(connection);
    let table = format!("other_driver_notes_{}", std::process::id());
    let schema = SCHEMA.replace("\"other_driver_notes\"", &format!("\"{table}\""));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(
        Sqlite::open(&dir.path().join("kluis.db")).await.unwrap(),
        Schema::from_toml(&schema).unwrap(),
    );
    store.migrate().await.unwrap();
    let keyring = LocalKeyring::generate(0).unwrap();
    let acme = TenantId::new("acme").unwrap();
    let access =
        store.admin_access(&keyring, &acme, &[DomainName::general(), DomainName::medical()]).await.unwrap();
    let hr = store.admin_access(&keyring, &acme, &[DomainName::general()]).await.unwrap();

    client.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id TEXT PRIMARY KEY, employee TEXT NOT NULL, \
             diagnosis BYTEA, capacity BYTEA, kluis_row_tag BYTEA)"
        ))
        .await
        .unwrap();
    let sealed = store
        .seal_insert_apart(
            &access,
            "notes",
            &["n1"],
            "emp-42",
            &[
                ("diagnosis", Value::Text("burn-out canary-od-4d2".into())),
                ("capacity", Value::Decimal("50".into())),
            ],
            &who(),
        )
        .await
        .unwrap();
    let insert = format!(
        "INSERT INTO {table} (id, employee, diagnosis, capacity, kluis_row_tag) VALUES ($1, $2, $3, $4, $5)"
    );
    client
        .execute(
            &insert,
            &[
                &"n1",
                &"emp-42",
                &sealed.get("diagnosis").unwrap(),
                &sealed.get("capacity").unwrap(),
                &sealed.get("kluis_row_tag").unwrap(),
            ],
        )
        .await
        .unwrap();

    let row = read(&client, &table).await;
    let o = store.open_app_rows(&access, "notes", std::slice::from_ref(&row), &who()).await.unwrap();
    assert!(o[0].row_checked);
    assert_eq!(o[0].values["diagnosis"], FieldValue::Value(Value::Text("burn-out canary-od-4d2".into())));
    let o = store.open_app_rows(&hr, "notes", std::slice::from_ref(&row), &who()).await.unwrap();
    assert_eq!(o[0].values["diagnosis"], FieldValue::Withheld { domain: "medical".into() });

    // An update through the same driver, compare-and-swap on the tag it read.
    let sealed = store
        .seal_update_apart(
            &access,
            "notes",
            &row,
            &[("capacity", Value::Decimal("80".into()))],
            &["diagnosis"],
            &who(),
        )
        .await
        .unwrap();
    let n = client
        .execute(
            &format!("UPDATE {table} SET capacity = $1, diagnosis = $2, kluis_row_tag = $3 WHERE id = 'n1' AND kluis_row_tag = $4"),
            &[&sealed.get("capacity").unwrap(), &sealed.get("diagnosis").unwrap(), &sealed.get("kluis_row_tag").unwrap(), &sealed.previous_row_tag()],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let row = read(&client, &table).await;
    let o = store.open_app_rows(&access, "notes", std::slice::from_ref(&row), &who()).await.unwrap();
    assert_eq!(o[0].values["capacity"], FieldValue::Value(Value::Decimal("80".into())));
    assert!(!o[0].values.contains_key("diagnosis"));

    // A DBA nulls the capacity: the full read refuses the row.
    client.execute(&format!("UPDATE {table} SET capacity = NULL WHERE id = 'n1'"), &[]).await.unwrap();
    let e = store.open_app_rows(&access, "notes", &[read(&client, &table).await], &who()).await;
    assert!(matches!(e, Err(StoreError::RowIntegrity { ref record, .. }) if record == "n1"), "{e:?}");

    // Kluis's own database holds the audit entries of both writes and the reads, and no value.
    let audit = store.audit_page(Some("acme"), 0, 100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.entry.action.as_str()).collect();
    assert_eq!(actions, ["create", "read", "read", "update", "read", "read"]);
    assert!(audit.iter().all(|e| !format!("{:?}", e.entry).contains("canary-od")));

    // The table is out of Kluis's reach (`external = true`): the calls that run SQL on it
    // refuse, and a re-encryption keeps every older subject key version of the subject, since
    // Kluis cannot see which of them the table's values use.
    let e = store.encrypt_columns_plan(&access, "notes").await;
    assert!(matches!(e, Err(StoreError::Invalid(ref m)) if m.contains("another database")), "{e:?}");
    let medical = DomainName::medical();
    let s2 = store
        .seal_insert_apart(
            &access,
            "notes",
            &["n2"],
            "emp-42",
            &[("diagnosis", Value::Text("flu".into()))],
            &who(),
        )
        .await
        .unwrap();
    client
        .execute(
            &insert,
            &[
                &"n2",
                &"emp-42",
                &s2.get("diagnosis").unwrap(),
                &None::<&[u8]>,
                &s2.get("kluis_row_tag").unwrap(),
            ],
        )
        .await
        .unwrap();
    let e = store.reencrypt_columns_plan(&access, "notes", &medical).await;
    assert!(matches!(e, Err(StoreError::Invalid(_))), "{e:?}");
    store.rotate_domain_key(&keyring, &acme, &medical).await.unwrap();
    let access =
        store.admin_access(&keyring, &acme, &[DomainName::general(), medical.clone()]).await.unwrap();
    let mut last = None;
    for _ in 0..10 {
        let p = store.reencrypt_step(&access, &medical, 100).await.unwrap();
        let done = p.subjects_moved == 0;
        last = Some(p);
        if done {
            break;
        }
    }
    let p = last.unwrap();
    assert_eq!((p.remaining_subjects, p.kept_for_app_tables), (0, 1), "{p:?}");
    let e = store.retire_domain_version(&keyring, &acme, &medical, kluis_core::KeyVersion::FIRST).await;
    assert!(matches!(e, Err(StoreError::KeyInUse { .. })), "{e:?}");
    let sql = format!("SELECT id, employee, diagnosis, capacity, kluis_row_tag FROM {table} WHERE id = 'n2'");
    let r = client.query_one(&sql, &[]).await.unwrap();
    let row = AppRow::new(&["n2"], "emp-42")
        .cell("diagnosis", r.get(2))
        .cell("capacity", r.get(3))
        .row_tag(r.get(4));
    let o = store.open_app_rows(&access, "notes", &[row], &who()).await.unwrap();
    assert_eq!(o[0].values["diagnosis"], FieldValue::Value(Value::Text("flu".into())));
    client.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
    drop(client);
    conn.await.unwrap().unwrap();
}

/// The application's own read of row `n1`.
async fn read(client: &tokio_postgres::Client, table: &str) -> AppRow {
    let sql = format!("SELECT id, employee, diagnosis, capacity, kluis_row_tag FROM {table} WHERE id = 'n1'");
    let r = client.query_one(&sql, &[]).await.unwrap();
    AppRow::new(&[r.get::<_, &str>(0)], r.get(1))
        .cell("diagnosis", r.get(2))
        .cell("capacity", r.get(3))
        .row_tag(r.get(4))
}
