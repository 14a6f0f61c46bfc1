//! Canary values must not appear in database files, WAL, dumps, logs or `Debug` output; a shred
//! must remove the wrapped key bytes from the SQLite file and WAL and from PostgreSQL's data files;
//! an older backup dies with the root key version that wrapped it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use common::{Harness, Location, Raw, contains, kv, read_tree, t};
use kluis_core::{DomainName, RootKeyProvider};
use kluis_store::Engine;
use kluis_store::{Changes, NewRecord, Sqlite, Store, StoreError, Value};

// ------------------------------------------------------------------ log capture

/// A minimal subscriber that keeps every event and span field at every level.
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut s = self.0.lock().unwrap();
        s.push_str(span.metadata().name());
        span.record(&mut Fields(&mut s));
        s.push('\n');
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut s = self.0.lock().unwrap();
        values.record(&mut Fields(&mut s));
        s.push('\n');
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut s = self.0.lock().unwrap();
        s.push_str(event.metadata().target());
        event.record(&mut Fields(&mut s));
        s.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn logs() -> Arc<Mutex<String>> {
    static LOGS: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(String::new()));
        tracing::subscriber::set_global_default(Capture(buf.clone())).unwrap();
        buf
    })
    .clone()
}

// ------------------------------------------------------------------ canaries

const CANARIES: &[&str] = &[
    "CANARY-diagnose-zwangerschapsvergiftiging",
    "CANARY-notes-Kx81Qz",
    "CANARY-EMP-77193",
    "CANARY-name-Bakker-Wq2",
    "CANARY-photo-bytes-9Zt",
    "CANARY-updated-diagnosis-Lm4",
    "CANARY-deleted-record-Pp0",
];

fn needles() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for c in CANARIES {
        out.push(c.as_bytes().to_vec());
        out.push(hex::encode(c).into_bytes());
        out.push(hex::encode_upper(c).into_bytes());
    }
    out
}

fn assert_clean(what: &str, hay: &[u8]) {
    for n in needles() {
        assert!(!contains(hay, &n), "{what} contains canary {:?}", String::from_utf8_lossy(&n));
    }
}

async fn write_canaries<B: Engine>(h: &Harness<B>) -> String {
    let s = &h.store;
    let rec = NewRecord::new("emp-c1")
        .id("c1")
        .set("diagnosis", CANARIES[0])
        .set("doctor_notes", CANARIES[1])
        .set("employee_number", CANARIES[2])
        .set("work_capacity", Value::Decimal("40".into()));
    s.insert(&h.doctor, "absence", rec).await.unwrap();
    let emp = NewRecord::new("emp-c1")
        .id("c1")
        .set("name", CANARIES[3])
        .set("photo", CANARIES[4].as_bytes().to_vec());
    s.insert(&h.hr, "employee", emp).await.unwrap();
    s.update(&h.doctor, "absence", "c1", 1, Changes::new().set("diagnosis", CANARIES[5])).await.unwrap();
    s.insert(&h.doctor, "absence", NewRecord::new("emp-c2").id("c2").set("diagnosis", CANARIES[6]))
        .await
        .unwrap();
    s.delete(&h.doctor, "absence", "c2", None, None).await.unwrap();
    // A failed write with a canary must not leak it through the error.
    let e = s.insert(&h.doctor, "absence", NewRecord::new("emp-c1").set("work_capacity", CANARIES[0])).await;
    let mut debug = format!("{e:?} {}", e.as_ref().map(|_| String::new()).unwrap_or_else(|e| e.to_string()));
    let e = s
        .insert(&h.doctor, "absence", NewRecord::new("emp-c1").set("diagnosis", CANARIES[0].repeat(20)))
        .await;
    debug.push_str(&format!("{e:?}"));
    // Reads, searches and their Debug output.
    let r = s.get(&h.doctor, "absence", "c1").await.unwrap().unwrap();
    assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some(CANARIES[5]));
    debug.push_str(&format!("{r:?} {:?} {:?}", h.doctor, s));
    let found = s.find(&h.hr, "absence", "employee_number", &Value::from(CANARIES[2])).await.unwrap();
    assert_eq!(found.len(), 1);
    debug.push_str(&format!("{found:?}"));
    let e = s.get(&h.hr, "employee", "c1").await.unwrap().unwrap();
    debug.push_str(&format!("{e:?}"));
    debug
}

async fn canary_common<B: Engine>(h: &Harness<B>) {
    let buf = logs();
    let debug = write_canaries(h).await;
    assert_clean("Debug output and error messages", debug.as_bytes());
    let logged = buf.lock().unwrap().clone();
    assert!(logged.contains("kluis-store transaction committed"), "log capture works");
    assert_clean("captured logs", logged.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_absent_from_sqlite_file_and_wal() {
    let h = common::sqlite().await.unwrap();
    canary_common(&h).await;
    let Location::Sqlite { dir, file } = &h.location else { unreachable!() };
    // Scan while the WAL still holds the writes (no checkpoint yet), then after a checkpoint.
    let files = read_tree(dir);
    assert!(files.iter().any(|(p, _)| p.to_string_lossy().ends_with("-wal")), "WAL mode is on");
    for (p, b) in &files {
        assert_clean(&p.display().to_string(), b);
    }
    // Positive control: the scan does find clear columns.
    assert!(files.iter().any(|(_, b)| contains(b, b"emp-c1")));
    h.store.backend().purge().await.unwrap();
    let b = std::fs::read(file).unwrap();
    assert_clean("sqlite file after checkpoint", &b);
    assert!(contains(&b, b"emp-c1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_absent_from_pg_dump() {
    let Some(h) = common::postgres().await else { return };
    canary_common(&h).await;
    let dump = common::dump(&h.location).await;
    assert!(contains(&dump, b"emp-c1"), "the dump holds the data");
    assert_clean("pg_dump", &dump);
    common::drop_db(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_absent_from_mysqldump() {
    let Some(h) = common::mysql().await else { return };
    canary_common(&h).await;
    let dump = common::dump(&h.location).await;
    assert!(contains(&dump, b"emp-c1"), "the dump holds the data");
    assert_clean("mysqldump", &dump);
    common::drop_db(h).await;
}

// ------------------------------------------------------------------ shred byte scans

/// Writes records of two subjects; returns the wrapped bytes that must vanish when `emp-gone` is
/// shredded: its subject keys and the wrapped domain keys (v1) that will be destroyed.
async fn before_shred<B: Engine>(h: &Harness<B>) -> Vec<Vec<u8>>
where
    Store<B>: Raw,
{
    let s = &h.store;
    for i in 0..20 {
        let subject = if i % 2 == 0 { "emp-gone" } else { "emp-stays" };
        let rec = NewRecord::new(subject)
            .set("diagnosis", "griep")
            .set("employee_number", format!("E{i}").as_str())
            .set("start_date", Value::Date("2025-01-02".into()));
        s.insert(&h.doctor, "absence", rec).await.unwrap();
    }
    let mut secrets =
        s.raw_bytes("SELECT wrapped FROM kluis_subject_keys WHERE subject = ?", vec![t("emp-gone")]).await;
    assert_eq!(secrets.len(), 2);
    secrets.extend(
        s.raw_bytes(
            "SELECT wrapped FROM kluis_domain_keys WHERE tenant = ? AND version = 1 AND domain <> 'row_tags'",
            vec![t("acme")],
        )
        .await,
    );
    assert_eq!(secrets.len(), 4);
    secrets
}

async fn shred<B: Engine>(h: &mut Harness<B>) {
    let mut access = h
        .store
        .admin_access(&h.keyring, &h.tenant, &[DomainName::general(), DomainName::medical()])
        .await
        .unwrap();
    let report = h.store.shred_subject(&h.keyring, &mut access, "emp-gone", None).await.unwrap();
    assert_eq!(report.records_removed, 10);
    h.refresh().await;
    // The other subject is untouched.
    let page = h.store.list(&h.doctor, "absence", Some("emp-stays"), None, 100).await.unwrap();
    assert_eq!(page.records.len(), 10);
    assert!(page.records.iter().all(|r| r.get("diagnosis").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shred_leaves_no_key_bytes_in_sqlite_file_or_wal() {
    let mut h = common::sqlite().await.unwrap();
    let secrets = before_shred(&h).await;
    let Location::Sqlite { dir, .. } = h.location.clone() else { unreachable!() };
    // Positive control: before the shred the bytes are on disk (file or WAL).
    let files = read_tree(&dir);
    for s in &secrets {
        assert!(files.iter().any(|(_, b)| contains(b, s)), "control: key bytes are on disk before the shred");
    }
    shred(&mut h).await;
    let files = read_tree(&dir);
    for (p, b) in &files {
        for s in &secrets {
            assert!(!contains(b, s), "{} still holds shredded key bytes", p.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shred_leaves_no_key_bytes_in_postgres_data_files_or_dump() {
    let Some(mut h) = common::postgres().await else { return };
    let secrets = before_shred(&h).await;
    let pool = h.store.pool().clone();
    let data_dir: String = sqlx::query_scalar("SHOW data_directory").fetch_one(&pool).await.unwrap();
    let oid: i64 =
        sqlx::query_scalar("SELECT oid::bigint FROM pg_database WHERE datname = current_database()")
            .fetch_one(&pool)
            .await
            .unwrap();
    let base = std::path::Path::new(&data_dir).join("base").join(oid.to_string());
    if std::fs::read_dir(&base).is_err() {
        if common::in_ci() {
            panic!("cannot read the PostgreSQL data directory {}", base.display());
        }
        println!("SKIPPED: postgres data file scan (cannot read {})", base.display());
        common::drop_db(h).await;
        return;
    }
    sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
    let files = read_tree(&base);
    for s in &secrets {
        assert!(files.iter().any(|(_, b)| contains(b, s)), "control: key bytes are in the data files");
    }
    shred(&mut h).await;
    sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
    for (p, b) in &read_tree(&base) {
        for s in &secrets {
            assert!(!contains(b, s), "{} still holds shredded key bytes (dead tuple?)", p.display());
        }
    }
    let dump = common::dump(&h.location).await;
    for s in &secrets {
        assert!(!contains(&dump, hex::encode(s).as_bytes()), "pg_dump holds shredded key bytes");
    }
    drop(pool);
    common::drop_db(h).await;
}

/// Writes InnoDB's dirty pages of the key tables to their `.ibd` files.
async fn flush_key_tables(pool: &sqlx::MySqlPool) {
    let mut c = pool.acquire().await.unwrap();
    sqlx::query("FLUSH TABLES kluis_subject_keys, kluis_domain_keys FOR EXPORT")
        .execute(&mut *c)
        .await
        .unwrap();
    sqlx::query("UNLOCK TABLES").execute(&mut *c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shred_leaves_no_key_bytes_in_mariadb_table_files_or_dump() {
    let Some(mut h) = common::mysql().await else { return };
    let secrets = before_shred(&h).await;
    let pool = h.store.pool().clone();
    let data_dir: String = sqlx::query_scalar("SELECT @@datadir").fetch_one(&pool).await.unwrap();
    let db: String = sqlx::query_scalar("SELECT DATABASE()").fetch_one(&pool).await.unwrap();
    let dir = std::path::Path::new(&data_dir).join(&db);
    if std::fs::read_dir(&dir).is_err() {
        if common::in_ci() {
            panic!("cannot read the MariaDB data directory {}", dir.display());
        }
        println!("SKIPPED: mariadb table file scan (cannot read {})", dir.display());
        common::drop_db(h).await;
        return;
    }
    flush_key_tables(&pool).await;
    let files = read_tree(&dir);
    for s in &secrets {
        assert!(files.iter().any(|(_, b)| contains(b, s)), "control: key bytes are in the table files");
    }
    shred(&mut h).await;
    flush_key_tables(&pool).await;
    // OPTIMIZE TABLE rebuilt the key tables into new .ibd files: no old row version survives in
    // this database's table files. (The redo and undo logs are outside: see docs/STORE.md.)
    for (p, b) in &read_tree(&dir) {
        for s in &secrets {
            assert!(!contains(b, s), "{} still holds shredded key bytes (old row version?)", p.display());
        }
    }
    let dump = common::dump(&h.location).await;
    for s in &secrets {
        assert!(!contains(&dump, s), "mysqldump holds shredded key bytes");
        assert!(!contains(&dump, hex::encode(s).as_bytes()), "mysqldump holds shredded key bytes (hex)");
        assert!(
            !contains(&dump, hex::encode_upper(s).as_bytes()),
            "mysqldump holds shredded key bytes (HEX)"
        );
    }
    drop(pool);
    common::drop_db(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_backup_dies_with_the_root_version() {
    let mut h = common::sqlite().await.unwrap();
    let _ = before_shred(&h).await;
    let Location::Sqlite { dir, file } = h.location.clone() else { unreachable!() };
    // A backup taken before the shred (checkpointed copy of the file).
    h.store.backend().purge().await.unwrap();
    let backup = dir.join("backup.db");
    std::fs::copy(&file, &backup).unwrap();
    shred(&mut h).await;
    // With the root version still in the keyring, the backup would still open the shredded
    // subject's data: that is why the root version is retired next.
    let old = Store::new(Sqlite::open(&backup).await.unwrap(), common::schema());
    let old_access = old
        .admin_access(&h.keyring, &h.tenant, &[DomainName::general(), DomainName::medical()])
        .await
        .unwrap();
    let page = old.list(&old_access, "absence", Some("emp-gone"), None, 100).await.unwrap();
    assert_eq!(page.records.len(), 10, "before root retirement the backup is readable");
    drop(old_access);
    old.pool().close().await;
    // Root rotation: rotate the keyring, rewrap the live database's domain keys, remove v1.
    h.keyring.rotate(1).unwrap();
    h.store.activate_root_version(&h.keyring, kluis_store::DEFAULT_INSTANCE_WINDOW).await.unwrap();
    let n = h.store.rewrap_domain_keys(&h.keyring).await.unwrap();
    assert_eq!(n, 4, "the two live domain keys of acme, its row tag key and the store's metadata key");
    h.keyring.remove_version(kv(1)).unwrap();
    assert_eq!(h.keyring.primary_version().await.unwrap(), kv(2));
    // The live database works.
    h.refresh().await;
    assert_eq!(
        h.store.list(&h.doctor, "absence", Some("emp-stays"), None, 100).await.unwrap().records.len(),
        10
    );
    // The old backup does not open any more.
    let old = Store::new(Sqlite::open(&backup).await.unwrap(), common::schema());
    let e = old.key_set(&h.keyring, &h.tenant, &DomainName::medical()).await;
    assert!(e.is_err(), "{e:?}");
    let e = old.admin_access(&h.keyring, &h.tenant, &[DomainName::general()]).await;
    assert!(matches!(e, Err(StoreError::Core(_) | StoreError::KeyIntegrity { .. })), "{e:?}");
}
