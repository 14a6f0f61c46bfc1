//! Protected columns in the application's own tables, on SQLite, PostgreSQL and MariaDB: tables
//! made by the test's own SQL (not by Kluis's migrations, which only make Kluis's own tables),
//! Kluis's columns added with the statements `AppTable::ddl` prints, rows written and read by the
//! application's own SQL in its own transactions, with a join to another table of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::app_sql::{AppSql, B, t};
use common::{Harness, Location, contains};
use kluis_core::{DomainName, TenantId};
use kluis_store::audit::AuditEntry;
use kluis_store::{
    AppRow, BatchLimits, Dialect, Engine, FieldValue, MySql, NewRecord, Postgres, Schema, Scope, Sqlite,
    Store, StoreError, Value,
};

const SCHEMA: &str = r#"
[collections.absence.fields]
diagnosis = { type = "text", domain = "medical" }

[tables.notes]
table = "absence_notes"
primary_key = ["id"]
tenant_column = "tenant_id"
subject_column = "employee_id"
retain_until_column = "keep_until"

[tables.notes.columns]
diagnosis = { type = "text", domain = "medical", max_bytes = 2000 }
bsn       = { type = "text", domain = "general", blind_index_column = "bsn_idx" }
capacity  = { type = "percentage", domain = "general" }
"#;

const CANARY: &str = "canary-app-7f3a";

/// The application's own tables on each engine (its own columns only).
trait AppTables: AppSql {
    const CREATE: [&'static str; 2];
}

impl AppTables for Sqlite {
    const CREATE: [&'static str; 2] = [
        "CREATE TABLE employees (tenant_id TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (tenant_id, id))",
        "CREATE TABLE absence_notes (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, employee_id TEXT NOT NULL, start_date TEXT NOT NULL, keep_until DATE)",
    ];
}

impl AppTables for Postgres {
    const CREATE: [&'static str; 2] = <Sqlite as AppTables>::CREATE;
}

impl AppTables for MySql {
    const CREATE: [&'static str; 2] = [
        "CREATE TABLE employees (tenant_id VARCHAR(64) NOT NULL, id VARCHAR(64) NOT NULL, name VARCHAR(200) NOT NULL, PRIMARY KEY (tenant_id, id))",
        "CREATE TABLE absence_notes (id VARCHAR(64) PRIMARY KEY, tenant_id VARCHAR(64) NOT NULL, employee_id VARCHAR(64) NOT NULL, start_date VARCHAR(10) NOT NULL, keep_until DATE)",
    ];
}

fn who() -> AuditEntry {
    AuditEntry { actor: "dr.jansen".into(), roles: "company_doctor".into(), ..AuditEntry::default() }
}

struct App<E: Engine> {
    h: Harness<E>,
    store: Store<E>,
}

const SELECT_FULL: &str = "SELECT n.id, n.employee_id, n.diagnosis, n.bsn, n.capacity, n.kluis_row_tag, e.name \
     FROM absence_notes n JOIN employees e ON e.tenant_id = n.tenant_id AND e.id = n.employee_id \
     WHERE n.tenant_id = ? ORDER BY n.id";

impl<E: AppTables> App<E> {
    async fn new(h: Harness<E>) -> Self {
        let pool = h.store.pool().clone();
        let store = Store::new(pool.clone(), Schema::from_toml(SCHEMA).unwrap());
        store.migrate().await.unwrap();
        for s in E::CREATE {
            E::run_pool(&pool, s, vec![]).await;
        }
        // Kluis's columns, as `kluis schema sql` prints them.
        let ddl = store.app_table("notes").unwrap().ddl(E::DIALECT);
        let ddl: String = ddl.lines().filter(|l| !l.starts_with("--")).collect::<Vec<_>>().join("\n");
        for stmt in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            E::run_pool(&pool, stmt, vec![]).await;
        }
        for (id, name) in [("emp-1", "Jan Jansen"), ("emp-2", "Piet Pietersen"), ("emp-new", "Nieuw")] {
            E::run_pool(
                &pool,
                "INSERT INTO employees (tenant_id, id, name) VALUES (?, ?, ?)",
                vec![t("acme"), t(id), t(name)],
            )
            .await;
        }
        Self { h, store }
    }

    async fn doctor(&self) -> kluis_store::Access {
        self.store
            .admin_access(&self.h.keyring, &self.h.tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap()
    }

    async fn hr(&self) -> kluis_store::Access {
        self.store.admin_access(&self.h.keyring, &self.h.tenant, &[DomainName::general()]).await.unwrap()
    }

    /// The application's insert of one note, sealed in its own transaction.
    async fn insert(
        &self,
        access: &kluis_store::Access,
        id: &str,
        subject: &str,
        diagnosis: &str,
        bsn: &str,
    ) {
        let mut tx = self.store.pool().begin().await.unwrap();
        let sealed = self
            .store
            .seal_insert(
                &mut tx,
                access,
                "notes",
                &[id],
                subject,
                &[("diagnosis", Value::Text(diagnosis.into())), ("bsn", Value::Text(bsn.into()))],
                &who(),
            )
            .await
            .unwrap();
        Self::insert_sealed(&mut tx, id, access.tenant().as_str(), subject, &sealed).await;
        tx.commit().await.unwrap();
    }

    /// The application's own `INSERT` of a row, binding what `seal_insert` returned.
    async fn insert_sealed(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        id: &str,
        tenant: &str,
        subject: &str,
        sealed: &kluis_store::SealedRow,
    ) {
        let cols: Vec<(&str, Option<&[u8]>)> = sealed.columns().collect();
        let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
        let sql = format!(
            "INSERT INTO absence_notes (id, tenant_id, employee_id, start_date, {}) VALUES (?, ?, ?, ?, {})",
            names.join(", "),
            vec!["?"; names.len()].join(", ")
        );
        let mut binds = vec![t(id), t(tenant), t(subject), t("2026-03-01")];
        binds.extend(cols.iter().map(|(_, v)| B::Y(v.map(<[u8]>::to_vec))));
        assert_eq!(E::run(tx, &sql, binds).await.unwrap(), 1);
    }

    /// Every note of the tenant, read in full, joined with the employee's name.
    async fn read_all(&self) -> Vec<(AppRow, String)> {
        let rows = E::rows(self.store.pool(), SELECT_FULL, vec![t("acme")], 7).await;
        rows.into_iter()
            .map(|r| {
                let s = |i: usize| String::from_utf8(r[i].clone().unwrap()).unwrap();
                let row = AppRow::new(&[&s(0)], &s(1))
                    .cell("diagnosis", r[2].clone())
                    .cell("bsn", r[3].clone())
                    .cell("capacity", r[4].clone())
                    .row_tag(r[5].clone());
                (row, s(6))
            })
            .collect()
    }

    async fn open(
        &self,
        access: &kluis_store::Access,
        rows: &[AppRow],
    ) -> Result<Vec<kluis_store::OpenedRow>, StoreError> {
        self.store.open_app_rows(access, "notes", rows, &who()).await
    }

    async fn row(&self, id: &str) -> AppRow {
        self.read_all().await.into_iter().map(|(r, _)| r).find(|r| r.key == [id]).unwrap()
    }

    /// The ids of the rows whose BSN blind index is `index`.
    async fn bsn_hits(&self, index: Option<Vec<u8>>) -> Vec<Vec<Option<Vec<u8>>>> {
        E::rows(
            self.store.pool(),
            "SELECT id FROM absence_notes WHERE tenant_id = ? AND bsn_idx = ?",
            vec![t("acme"), B::Y(index)],
            1,
        )
        .await
    }

    /// A DBA's edit by raw SQL.
    async fn dba(&self, sql: &str, binds: Vec<B>) {
        E::run_pool(self.store.pool(), sql, binds).await;
    }
}

fn text(v: &FieldValue) -> &str {
    match v {
        FieldValue::Value(Value::Text(s)) => s,
        other => panic!("expected text, got {other:?}"),
    }
}

fn integrity<T: std::fmt::Debug>(r: Result<T, StoreError>, record: &str) {
    match r {
        Err(StoreError::RowIntegrity { collection, record: r })
        | Err(StoreError::Integrity { collection, record: r, .. }) => {
            assert_eq!(collection, "notes");
            assert_eq!(r, record);
        }
        other => panic!("expected an integrity error naming {record}, got {other:?}"),
    }
}

async fn round_trip<E: AppTables>(app: &App<E>) {
    let doctor = app.doctor().await;
    let diagnosis = format!("burn-out {CANARY}");
    app.insert(&doctor, "n1", "emp-1", &diagnosis, "123456782").await;
    app.insert(&doctor, "n2", "emp-2", "flu", "111222333").await;

    // The application's own join; Kluis opens the protected columns it selected.
    let read = app.read_all().await;
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].1, "Jan Jansen");
    let rows: Vec<AppRow> = read.iter().map(|(r, _)| r.clone()).collect();
    let opened = app.open(&doctor, &rows).await.unwrap();
    assert!(opened.iter().all(|o| o.row_checked));
    assert_eq!(text(&opened[0].values["diagnosis"]), diagnosis);
    assert_eq!(text(&opened[0].values["bsn"]), "123456782");
    assert!(!opened[0].values.contains_key("capacity"), "NULL stays absent");

    // HR: general columns open, the medical one is withheld without a decryption attempt.
    let hr = app.hr().await;
    let opened = app.open(&hr, &rows).await.unwrap();
    assert_eq!(opened[1].values["diagnosis"], FieldValue::Withheld { domain: "medical".into() });
    assert_eq!(text(&opened[1].values["bsn"]), "111222333");
    // HR cannot write the medical column.
    let mut tx = app.store.pool().begin().await.unwrap();
    let e = app
        .store
        .seal_insert(
            &mut tx,
            &hr,
            "notes",
            &["n9"],
            "emp-1",
            &[("diagnosis", Value::Text("x".into()))],
            &who(),
        )
        .await;
    assert!(matches!(e, Err(StoreError::AccessDenied { ref domain, .. }) if domain == "medical"), "{e:?}");
    tx.rollback().await.unwrap();

    // A subset of columns: opened, not row-checked.
    let part = AppRow::new(&["n2"], "emp-2").cell("bsn", rows[1].cells[1].1.clone());
    let opened = app.open(&hr, &[part]).await.unwrap();
    assert!(!opened[0].row_checked);
    assert_eq!(text(&opened[0].values["bsn"]), "111222333");

    // The blind index finds the row by the application's own WHERE.
    let idx = app.store.app_blind_index(&hr, "notes", "bsn", &Value::Text("111222333".into())).unwrap();
    let placeholders = vec!["?"; idx.len()].join(", ");
    let hits = E::rows(
        app.store.pool(),
        &format!("SELECT id FROM absence_notes WHERE tenant_id = ? AND bsn_idx IN ({placeholders})"),
        std::iter::once(t("acme")).chain(idx.into_iter().map(|v| B::Y(Some(v)))).collect(),
        1,
    )
    .await;
    assert_eq!(hits, vec![vec![Some(b"n2".to_vec())]]);

    // The writes were audited with names and ids, never a value.
    let entries = app.store.audit_page(Some("acme"), 0, 1000).await.unwrap();
    let created: Vec<_> =
        entries.iter().filter(|e| e.entry.collection == "notes" && e.entry.action == "create").collect();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0].entry.fields, "general:bsn,medical:diagnosis");
    assert_eq!(created[0].entry.record, "n1");
    assert_eq!(created[0].entry.actor, "dr.jansen");
    assert!(entries.iter().any(|e| e.entry.collection == "notes" && e.entry.action == "read"));
    for e in &entries {
        assert!(!format!("{:?}", e.entry).contains(CANARY));
    }
}

async fn update_and_compare_and_swap<E: AppTables>(app: &App<E>) {
    let doctor = app.doctor().await;
    let before = app.row("n1").await;
    let mut tx = app.store.pool().begin().await.unwrap();
    let sealed = app
        .store
        .seal_update(
            &mut tx,
            &doctor,
            "notes",
            &before,
            &[("diagnosis", Value::Text("recovered".into())), ("capacity", Value::Decimal("50".into()))],
            &["bsn"],
            &who(),
        )
        .await
        .unwrap();
    let cols: Vec<(&str, Option<&[u8]>)> = sealed.columns().collect();
    let set: Vec<String> = cols.iter().map(|(c, _)| format!("{c} = ?")).collect();
    let sql = format!("UPDATE absence_notes SET {} WHERE id = ? AND kluis_row_tag = ?", set.join(", "));
    let mut binds: Vec<B> = cols.iter().map(|(_, v)| B::Y(v.map(<[u8]>::to_vec))).collect();
    binds.push(t("n1"));
    binds.push(B::Y(sealed.previous_row_tag().map(<[u8]>::to_vec)));
    assert_eq!(E::run(&mut tx, &sql, binds.clone()).await.unwrap(), 1);
    tx.commit().await.unwrap();
    let after = app.row("n1").await;
    let o = app.open(&doctor, std::slice::from_ref(&after)).await.unwrap();
    assert_eq!(text(&o[0].values["diagnosis"]), "recovered");
    assert_eq!(o[0].values["capacity"], FieldValue::Value(Value::Decimal("50".into())));
    assert!(!o[0].values.contains_key("bsn"));
    // The same update again, against the tag it read before: nothing changes (compare and swap).
    let mut tx = app.store.pool().begin().await.unwrap();
    assert_eq!(E::run(&mut tx, &sql, binds).await.unwrap(), 0);
    tx.rollback().await.unwrap();

    // An update from a row that was not read in full is refused.
    let part = AppRow::new(&["n1"], "emp-1")
        .cell("diagnosis", after.cells[0].1.clone())
        .row_tag(after.row_tag.clone());
    let mut tx = app.store.pool().begin().await.unwrap();
    let e = app.store.seal_update(&mut tx, &doctor, "notes", &part, &[], &["diagnosis"], &who()).await;
    assert!(matches!(e, Err(StoreError::Invalid(_))), "{e:?}");
    tx.rollback().await.unwrap();

    // A DBA puts back the older diagnosis (a value Kluis wrote for this very row and column):
    // read alone it opens, read in full the row tag refuses it.
    let old_diag = before.cells[0].1.clone();
    app.dba("UPDATE absence_notes SET diagnosis = ? WHERE id = ?", vec![B::Y(old_diag.clone()), t("n1")])
        .await;
    integrity(app.open(&doctor, &[app.row("n1").await]).await, "n1");
    let alone = AppRow::new(&["n1"], "emp-1").cell("diagnosis", old_diag);
    assert!(app.open(&doctor, &[alone]).await.is_ok(), "a partial read checks each value's binding only");
    // Put back the whole older row (every protected column and its tag): consistent on its own,
    // so it opens; docs/APP_TABLES.md says so.
    app.dba(
        "UPDATE absence_notes SET diagnosis = ?, bsn = ?, capacity = ?, kluis_row_tag = ? WHERE id = ?",
        vec![
            B::Y(before.cells[0].1.clone()),
            B::Y(before.cells[1].1.clone()),
            B::Y(before.cells[2].1.clone()),
            B::Y(before.row_tag.clone()),
            t("n1"),
        ],
    )
    .await;
    assert!(app.open(&doctor, &[app.row("n1").await]).await.is_ok());
}

async fn tampering<E: AppTables>(app: &App<E>) {
    let doctor = app.doctor().await;
    app.insert(&doctor, "t1", "emp-1", "migraine", "222333444").await;
    app.insert(&doctor, "t2", "emp-2", "sprain", "333444555").await;
    let t1 = app.row("t1").await;
    let t2 = app.row("t2").await;
    let restore = |r: &AppRow| {
        vec![
            B::Y(r.cells[0].1.clone()),
            B::Y(r.cells[1].1.clone()),
            B::Y(r.cells[2].1.clone()),
            B::Y(r.row_tag.clone()),
            t(&r.subject),
            t(&r.key[0]),
        ]
    };
    let put_back = "UPDATE absence_notes SET diagnosis = ?, bsn = ?, capacity = ?, kluis_row_tag = ?, employee_id = ? WHERE id = ?";
    // Each edit, then the row put back as it was.
    let edits: Vec<(&str, Vec<B>)> = vec![
        ("UPDATE absence_notes SET diagnosis = NULL WHERE id = ?", vec![t("t1")]),
        ("UPDATE absence_notes SET bsn = NULL WHERE id = ?", vec![t("t1")]),
        ("UPDATE absence_notes SET diagnosis = ? WHERE id = ?", vec![B::Y(t2.cells[0].1.clone()), t("t1")]),
        ("UPDATE absence_notes SET kluis_row_tag = ? WHERE id = ?", vec![B::Y(t2.row_tag.clone()), t("t1")]),
        ("UPDATE absence_notes SET kluis_row_tag = NULL WHERE id = ?", vec![t("t1")]),
        ("UPDATE absence_notes SET employee_id = ? WHERE id = ?", vec![t("emp-2"), t("t1")]),
        ("UPDATE absence_notes SET capacity = ? WHERE id = ?", vec![B::Y(t2.cells[1].1.clone()), t("t1")]),
    ];
    for (sql, binds) in edits {
        app.dba(sql, binds).await;
        integrity(app.open(&doctor, &[app.row("t1").await]).await, "t1");
        app.dba(put_back, restore(&t1)).await;
        app.open(&doctor, &[app.row("t1").await]).await.unwrap();
    }
    // The other row keeps working throughout.
    app.open(&doctor, &[app.row("t2").await]).await.unwrap();
    // A value copied from another row does not open even alone (its binding names the row).
    let moved = AppRow::new(&["t1"], "emp-1").cell("diagnosis", t2.cells[0].1.clone());
    integrity(app.open(&doctor, &[moved]).await, "t1");
    // Another tenant's keys do not open acme's values.
    let globex = app
        .store
        .admin_access(
            &app.h.keyring,
            &TenantId::new("globex").unwrap(),
            &[DomainName::general(), DomainName::medical()],
        )
        .await
        .unwrap();
    assert!(app.open(&globex, &[app.row("t1").await]).await.is_err());
}

async fn scope_and_rollback<E: AppTables>(app: &App<E>) {
    let doctor = app.doctor().await;
    // Keys narrowed to one row open that row only; read-only keys seal nothing.
    let one = app
        .doctor()
        .await
        .narrow(Scope::Record { collection: "notes".into(), record: "n2".into(), subject: None })
        .unwrap();
    app.open(&one, &[app.row("n2").await]).await.unwrap();
    let e = app.open(&one, &[app.row("t1").await]).await;
    assert!(matches!(e, Err(StoreError::OutOfScope { .. })), "{e:?}");
    let ro = app.doctor().await.read_only();
    let mut tx = app.store.pool().begin().await.unwrap();
    let e = app.store.seal_insert(&mut tx, &ro, "notes", &["r9"], "emp-9", &[], &who()).await;
    assert!(matches!(e, Err(StoreError::OutOfScope { .. })), "{e:?}");
    tx.rollback().await.unwrap();

    // A transaction rolled back leaves no row, no audit entry and no subject key behind.
    let audit_before = app.store.audit_head().await.unwrap().0;
    let mut tx = app.store.pool().begin().await.unwrap();
    let sealed = app
        .store
        .seal_insert(
            &mut tx,
            &doctor,
            "notes",
            &["r1"],
            "emp-new",
            &[("diagnosis", Value::Text("x".into()))],
            &who(),
        )
        .await
        .unwrap();
    App::<E>::insert_sealed(&mut tx, "r1", "acme", "emp-new", &sealed).await;
    tx.rollback().await.unwrap();
    assert_eq!(app.store.audit_head().await.unwrap().0, audit_before);
    assert!(app.read_all().await.iter().all(|(r, _)| r.key != ["r1"]));
    let keys = app.store.subject_key_versions(&app.h.tenant, &DomainName::medical()).await.unwrap();
    assert!(keys.iter().all(|(s, _)| s != "emp-new"), "{keys:?}");
    // The same insert again, committed, works (the subject key is made anew).
    app.insert(&doctor, "r1", "emp-new", "x", "999888777").await;
    app.open(&doctor, &[app.row("r1").await]).await.unwrap();
}

/// A rotation of the medical key: Kluis's own records move to the new version; a subject whose
/// values in the application's table are sealed under the older subject key keeps that key (and
/// so the older domain key version), and those values keep opening. Then a shred: the subject's
/// values in the application's table no longer open, the others do.
async fn rotation_and_shred<E: AppTables>(app: &App<E>) {
    let med = DomainName::medical();
    let doctor = app.doctor().await;
    // A record in Kluis's own collection too, so that the re-encryption has work of its own.
    app.store.insert(&doctor, "absence", NewRecord::new("emp-1").set("diagnosis", "flu")).await.unwrap();
    let before = app.read_all().await.len();
    app.store.rotate_domain_key(&app.h.keyring, &app.h.tenant, &med).await.unwrap();
    let access = app.doctor().await;
    let mut last = None;
    for _ in 0..20 {
        let p = app.store.reencrypt_step(&access, &med, 100).await.unwrap();
        let idle = p.subjects_moved == 0 && p.conflicts == 0;
        last = Some(p);
        if idle {
            break;
        }
    }
    let p = last.unwrap();
    assert_eq!(p.subjects_moved, 0, "the steps came to rest: {p:?}");
    assert!(p.kept_for_app_tables > 0, "{p:?}");
    assert_eq!(p.remaining_subjects, 0, "only the mapped table's values wait: {p:?}");
    // Every value in the application's table still opens.
    let rows: Vec<AppRow> = app.read_all().await.into_iter().map(|(r, _)| r).collect();
    assert_eq!(rows.len(), before);
    app.open(&access, &rows).await.unwrap();
    // The older medical version still wraps those subject keys: it cannot be retired.
    let e = app
        .store
        .retire_domain_version(&app.h.keyring, &app.h.tenant, &med, kluis_core::KeyVersion::FIRST)
        .await;
    assert!(matches!(e, Err(StoreError::KeyInUse { .. })), "{e:?}");

    // The general domain rotates too (the blind index column is of it).
    let general = DomainName::general();
    let opened_before: Vec<_> =
        app.open(&access, &rows).await.unwrap().into_iter().map(|o| o.values).collect();
    app.store.rotate_domain_key(&app.h.keyring, &app.h.tenant, &general).await.unwrap();
    let access = app.doctor().await;
    settle(app, &access, &general).await;
    // A lease out of range is refused before anything is read.
    for lease in [0, 86_401] {
        let limits = BatchLimits { rows: 2, lease: std::time::Duration::from_secs(lease) };
        let e = app.store.reencrypt_columns_step(&access, "notes", &med, &limits, None, &who()).await;
        assert!(matches!(e, Err(StoreError::Invalid(ref m)) if m.contains("lease")), "{e:?}");
    }
    // Re-encrypting the mapped table, domain by domain, in batches of 2 rows.
    for d in [&med, &general] {
        let todo = app.store.reencrypt_columns_plan(&access, "notes", d).await.unwrap();
        assert_eq!(todo, rows.len() as u64, "every row holds a value of {d} under an older key");
        let (mut after, mut written, mut steps) = (None, 0u64, 0);
        loop {
            let s = app
                .store
                .reencrypt_columns_step(&access, "notes", d, &BatchLimits::rows(2), after.as_deref(), &who())
                .await
                .unwrap();
            assert!(s.rows_refused.is_empty(), "{s:?}");
            written += s.rows_written;
            steps += 1;
            match s.last_key {
                Some(k) if s.rows_read > 0 => after = Some(k),
                _ => break,
            }
        }
        assert_eq!(written, todo);
        assert!(steps > 2, "batches of 2 rows");
        assert_eq!(app.store.reencrypt_columns_plan(&access, "notes", d).await.unwrap(), 0);
        // A second pass finds every row current.
        let s = app
            .store
            .reencrypt_columns_step(&access, "notes", d, &BatchLimits::rows(100), None, &who())
            .await
            .unwrap();
        assert_eq!((s.rows_written, s.rows_current), (0, rows.len() as u64), "{s:?}");
    }
    // The same values, each row checked against its new tag; the blind index under the new
    // general version finds the row.
    let rows: Vec<AppRow> = app.read_all().await.into_iter().map(|(r, _)| r).collect();
    let opened: Vec<_> = app.open(&access, &rows).await.unwrap();
    assert!(opened.iter().all(|o| o.row_checked));
    assert_eq!(opened.into_iter().map(|o| o.values).collect::<Vec<_>>(), opened_before);
    let new_idx =
        app.store.app_blind_index(&access, "notes", "bsn", &Value::Text("222333444".into())).unwrap();
    let hits = app.bsn_hits(new_idx.last().cloned()).await;
    assert_eq!(hits.len(), 1, "found under the new version");
    // The store's steps now delete the older subject key versions, and the older domain key
    // versions can go.
    for d in [&med, &general] {
        let p = settle(app, &access, d).await;
        assert_eq!((p.kept_for_app_tables, p.remaining_subjects), (0, 0), "{p:?}");
        app.store
            .retire_domain_version(&app.h.keyring, &app.h.tenant, d, kluis_core::KeyVersion::FIRST)
            .await
            .unwrap();
    }
    let rows: Vec<AppRow> = app.read_all().await.into_iter().map(|(r, _)| r).collect();
    app.open(&app.doctor().await, &rows).await.unwrap();

    // Shred emp-2. A row of it under retention (the application's own column) refuses the shred
    // and names the row; once the date has passed, the shred goes on.
    app.dba("UPDATE absence_notes SET keep_until = '2999-01-01' WHERE id = ?", vec![t("n2")]).await;
    let mut all = app.doctor().await;
    let e = app.store.shred_subject(&app.h.keyring, &mut all, "emp-2", None).await;
    match e {
        Err(StoreError::RetentionActive { collection, record, .. }) => {
            assert_eq!((collection.as_str(), record.as_str()), ("notes", "n2"));
        }
        other => panic!("expected RetentionActive, got {other:?}"),
    }
    app.open(&app.doctor().await, &[app.row("n2").await]).await.unwrap();
    app.dba("UPDATE absence_notes SET keep_until = '2001-01-01' WHERE id = ?", vec![t("n2")]).await;
    let mut all = app.doctor().await;
    let report = app.store.shred_subject(&app.h.keyring, &mut all, "emp-2", None).await.unwrap();
    let emp2_rows = app.read_all().await.into_iter().filter(|(r, _)| r.subject == "emp-2").count() as u64;
    assert!(emp2_rows >= 2);
    assert_eq!(report.app_rows_cleared, Some(emp2_rows), "{report:?}");
    // Its rows stay (they are the application's), with no protected value and no row tag left:
    // a full read opens nothing and is consistent.
    let fresh = app.doctor().await;
    for id in ["n2", "t2"] {
        let row = app.row(id).await;
        assert!(row.cells.iter().all(|(_, v)| v.is_none()) && row.row_tag.is_none(), "{row:?}");
        let opened = app.open(&fresh, &[row]).await.unwrap();
        assert!(opened[0].values.is_empty());
    }
    let bsn_idx =
        E::rows(app.store.pool(), "SELECT bsn_idx FROM absence_notes WHERE id = ?", vec![t("t2")], 1).await;
    assert_eq!(bsn_idx, vec![vec![None]], "the blind index is cleared too");
    app.open(&fresh, &[app.row("t1").await]).await.unwrap();
    // The shred destroyed the general key version the other rows' blind indexes were made under,
    // and derived them again under the new one: the search still finds them.
    assert!(report.app_rows_reindexed > 0, "{report:?}");
    assert_eq!(app.store.reencrypt_columns_plan(&fresh, "notes", &general).await.unwrap(), 0);
    let t1_idx = app.store.app_blind_index(&fresh, "notes", "bsn", &Value::Text("222333444".into())).unwrap();
    assert_eq!(t1_idx.len(), 1, "one live general version");
    let hits = app.bsn_hits(t1_idx.into_iter().next()).await;
    assert_eq!(hits.len(), 1, "{hits:?}");
}

/// Two application transactions write the first rows of a new subject at once: the first makes
/// the subject's key and holds it uncommitted while the second, which found no key, tries to make
/// its own; the second must then take the first's (on MariaDB the count of rows an
/// `INSERT ... ON DUPLICATE KEY UPDATE` changed cannot tell), or its values would not open.
async fn new_subject_race<E: AppTables>(app: &App<E>) {
    if matches!(app.h.location, Location::Sqlite { .. }) {
        // One writer at a time: the second transaction waits for the first's commit or fails
        // busy, it never overlaps it.
        return;
    }
    let doctor = app.doctor().await;
    app.dba(
        "INSERT INTO employees (tenant_id, id, name) VALUES (?, ?, ?)",
        vec![t("acme"), t("emp-race"), t("Race")],
    )
    .await;
    let first = async {
        let mut tx = app.store.pool().begin().await.unwrap();
        let sealed = app
            .store
            .seal_insert(
                &mut tx,
                &doctor,
                "notes",
                &["race-1"],
                "emp-race",
                &[("diagnosis", Value::Text("a".into()))],
                &who(),
            )
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        App::<E>::insert_sealed(&mut tx, "race-1", "acme", "emp-race", &sealed).await;
        tx.commit().await.unwrap();
    };
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        app.insert(&doctor, "race-2", "emp-race", "b", "123123123").await;
    };
    tokio::join!(first, second);
    let rows: Vec<AppRow> =
        app.read_all().await.into_iter().map(|(r, _)| r).filter(|r| r.subject == "emp-race").collect();
    assert_eq!(rows.len(), 2);
    let opened = app.open(&app.doctor().await, &rows).await.unwrap();
    assert_eq!(text(&opened[0].values["diagnosis"]), "a");
    assert_eq!(text(&opened[1].values["diagnosis"]), "b");
}

/// Re-encryption steps of `d` until one moves nothing; the last step's progress.
async fn settle<E: AppTables>(
    app: &App<E>,
    access: &kluis_store::Access,
    d: &DomainName,
) -> kluis_store::ReencryptProgress {
    for _ in 0..20 {
        let p = app.store.reencrypt_step(access, d, 100).await.unwrap();
        if p.subjects_moved == 0 && p.conflicts == 0 {
            return p;
        }
    }
    panic!("re-encryption of {d} did not come to rest");
}

async fn canaries<E: AppTables>(app: &App<E>) {
    let bytes = match &app.h.location {
        Location::Sqlite { dir, .. } => {
            // Everything on disk: the database, its WAL and shared memory.
            app.store.pool().close().await;
            common::read_tree(dir).into_iter().flat_map(|(_, b)| b).collect()
        }
        loc => common::dump(loc).await,
    };
    assert!(!bytes.is_empty());
    assert!(!contains(&bytes, CANARY.as_bytes()), "the plaintext canary is in the database");
    assert!(!contains(&bytes, b"123456782"), "a BSN is in the database");
}

async fn run<E: AppTables>(h: Harness<E>) {
    let app = App::new(h).await;
    round_trip(&app).await;
    update_and_compare_and_swap(&app).await;
    tampering(&app).await;
    scope_and_rollback(&app).await;
    rotation_and_shred(&app).await;
    new_subject_race(&app).await;
    canaries(&app).await;
    if !matches!(app.h.location, Location::Sqlite { .. }) {
        common::drop_db(app.h).await;
    }
}

#[tokio::test]
async fn app_tables_sqlite() {
    run(common::sqlite().await.unwrap()).await;
}

#[tokio::test]
async fn app_tables_postgres() {
    if let Some(h) = common::postgres().await {
        run(h).await;
    }
}

#[tokio::test]
async fn app_tables_mysql() {
    if let Some(h) = common::mysql().await {
        run(h).await;
    }
}

#[test]
fn ddl_per_dialect() {
    let s = Schema::from_toml(SCHEMA).unwrap();
    let t = s.app_table("notes").unwrap();
    let pg = t.ddl(Dialect::Postgres);
    assert!(pg.contains("ALTER TABLE absence_notes ADD COLUMN diagnosis BYTEA NULL;"), "{pg}");
    assert!(pg.contains("ALTER TABLE absence_notes ADD COLUMN kluis_row_tag BYTEA NULL;"), "{pg}");
    assert!(pg.contains("ON absence_notes (tenant_id, bsn_idx);"), "{pg}");
    let ms = t.ddl(Dialect::MsSql);
    assert!(ms.contains("ALTER TABLE absence_notes ADD diagnosis VARBINARY(MAX) NULL;"), "{ms}");
    assert!(ms.contains("ALTER TABLE absence_notes ADD bsn_idx VARBINARY(64) NULL;"), "{ms}");
    // The schema reads back what it writes.
    assert_eq!(Schema::from_toml(&s.to_toml()).unwrap(), s);
}

#[test]
fn bad_mappings_are_refused() {
    let bad = [
        // a column with two roles (the subject column is protected too)
        (
            "[tables.x]\nprimary_key = [\"id\"]\ntenant_column = \"t\"\nsubject_column = \"a\"\n[tables.x.columns]\na = { type = \"text\", domain = \"general\" }",
            "two roles",
        ),
        // the tenant column as the subject column (identifiers compare without case)
        (
            "[tables.x]\nprimary_key = [\"id\"]\ntenant_column = \"t\"\nsubject_column = \"T\"\n[tables.x.columns]\na = { type = \"text\", domain = \"general\" }",
            "two roles",
        ),
        // both a tenant column and a fixed tenant
        (
            "[tables.x]\nprimary_key = [\"id\"]\ntenant_column = \"t\"\ntenant = \"acme\"\nsubject_column = \"s\"\n[tables.x.columns]\na = { type = \"text\", domain = \"general\" }",
            "exactly one",
        ),
        // no protected column
        (
            "[tables.x]\nprimary_key = [\"id\"]\ntenant = \"acme\"\nsubject_column = \"s\"",
            "no protected column",
        ),
        // an identifier that would need quoting
        (
            "[tables.x]\nprimary_key = [\"id; DROP TABLE y\"]\ntenant = \"acme\"\nsubject_column = \"s\"\n[tables.x.columns]\na = { type = \"text\", domain = \"general\" }",
            "must be 1 to 63",
        ),
        // a blind index on a bool
        (
            "[tables.x]\nprimary_key = [\"id\"]\ntenant = \"acme\"\nsubject_column = \"s\"\n[tables.x.columns]\na = { type = \"bool\", domain = \"general\", blind_index_column = \"ai\" }",
            "bool",
        ),
        // a mapping named like a collection
        (
            "[collections.x.fields]\nf = { type = \"text\", domain = \"general\" }\n[tables.x]\nprimary_key = [\"id\"]\ntenant = \"acme\"\nsubject_column = \"s\"\n[tables.x.columns]\na = { type = \"text\", domain = \"general\" }",
            "both a collection",
        ),
    ];
    for (toml, why) in bad {
        let e = Schema::from_toml(toml).unwrap_err().to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
}
