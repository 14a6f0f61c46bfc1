//! The CLI as a new user meets it (issue 14, point 6): the database files are private from the
//! start, and an import is checked whole before anything is written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Command, Output};

const PASSPHRASE: &str = "new user test passphrase, not secret";

/// Runs `kluis --data-dir DIR ARGS` under umask 000, so only the code decides the file modes.
fn kluis_umask_000(dir: &Path, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_kluis"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("KLUIS_PASSPHRASE", PASSPHRASE)
        .env_remove("KLUIS_DATA_DIR")
        .output()
        .unwrap()
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The database file is 0600; so are `-wal` and `-shm` if the command left them, and when a
/// connection has them open again (SQLite gives them the database file's mode).
#[cfg(unix)]
async fn assert_private_database(dir: &Path, after: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name)).map(|m| m.permissions().mode() & 0o777).map_err(|e| e.kind())
    };
    assert_eq!(mode("kluis.sqlite"), Ok(0o600), "kluis.sqlite after {after}");
    for name in ["kluis.sqlite-wal", "kluis.sqlite-shm"] {
        let m = mode(name);
        assert!(m == Ok(0o600) || m == Err(std::io::ErrorKind::NotFound), "{name} after {after}: {m:?}");
    }
    let backend = kluis_store::Sqlite::open(&dir.join("kluis.sqlite")).await.unwrap();
    let store = kluis_store::Store::new(backend, kluis_store::Schema::default());
    store.migrate().await.unwrap();
    for name in ["kluis.sqlite", "kluis.sqlite-wal", "kluis.sqlite-shm"] {
        assert_eq!(mode(name), Ok(0o600), "{name} after {after}, opened again");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn database_files_are_created_owner_only_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    ok(&kluis_umask_000(&dir, &["init"]));
    assert_private_database(&dir, "init").await;
    // As the keyring and the documents directory are.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("keyring.kr"), 0o600);
    assert_eq!(mode("blobs"), 0o700);
    // A write (domain keys of a new tenant) goes through the WAL.
    ok(&kluis_umask_000(&dir, &["tenant", "add", "acme"]));
    assert_private_database(&dir, "tenant add").await;
    let f = tmp.path().join("one.jsonl");
    std::fs::write(&f, "{\"id\":\"ar-1\",\"subject\":\"emp-1\",\"diagnosis\":\"griep\"}\n").unwrap();
    ok(&kluis_umask_000(
        &dir,
        &["import", "--tenant", "acme", "--collection", "absence", f.to_str().unwrap()],
    ));
    assert_private_database(&dir, "import").await;
}

/// A field of a domain the tenant has no key of (added to the schema after the tenant) is a bad
/// line of the first pass, reported with the others, and nothing is written.
#[test]
fn import_reports_a_domain_without_key_with_every_other_bad_line() {
    let (tmp, dir) = data_dir_with_tenant();
    let schema = dir.join("schema.toml");
    let mut text = std::fs::read_to_string(&schema).unwrap();
    text.push_str("arbo_note       = { type = \"text\", domain = \"arbo\" }\n");
    std::fs::write(&schema, text).unwrap();
    let file = tmp.path().join("in.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"id\":\"ar-1\",\"subject\":\"emp-1\",\"diagnosis\":\"griep\"}\n",
            "{\"id\":\"ar-2\",\"subject\":\"emp-1\",\"arbo_note\":\"x\"}\n",
            "{\"id\":\"ar-3\",\"subject\":\"emp-1\",\"end_date\":\"2026-13-01\"}\n",
        ),
    )
    .unwrap();
    let args = ["import", "--tenant", "acme", "--collection", "absence", file.to_str().unwrap()];
    let out = kluis_umask_000(&dir, &args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in.jsonl:2: field \"arbo_note\": the tenant has no key of domain \"arbo\""),
        "{err}"
    );
    assert!(err.contains("in.jsonl:3: field absence.end_date expects date"), "{err}");
    assert!(err.contains("2 bad line(s)"), "{err}");
    // Nothing was written: after fixing the file (dropping the bad lines) line 1 is imported.
    std::fs::write(&file, "{\"id\":\"ar-1\",\"subject\":\"emp-1\",\"diagnosis\":\"griep\"}\n").unwrap();
    let out = kluis_umask_000(&dir, &args);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 records imported"), "{out:?}");
}

/// A new data directory (under a temporary directory) with tenant `acme`.
fn data_dir_with_tenant() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    ok(&kluis_umask_000(&dir, &["init"]));
    ok(&kluis_umask_000(&dir, &["tenant", "add", "acme"]));
    (tmp, dir)
}

/// [`data_dir_with_tenant`] with one record imported: `ar-1` of `emp-1`, diagnosis "griep".
fn data_dir_with_one_record() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, dir) = data_dir_with_tenant();
    let file = tmp.path().join("in.jsonl");
    std::fs::write(&file, "{\"id\":\"ar-1\",\"subject\":\"emp-1\",\"diagnosis\":\"griep\"}\n").unwrap();
    ok(&kluis_umask_000(
        &dir,
        &["import", "--tenant", "acme", "--collection", "absence", file.to_str().unwrap()],
    ));
    (tmp, dir)
}

async fn sql(dir: &Path, statement: &str) -> Vec<sqlx::sqlite::SqliteRow> {
    use sqlx::ConnectOptions;
    let mut conn =
        sqlx::sqlite::SqliteConnectOptions::new().filename(dir.join("kluis.sqlite")).connect().await.unwrap();
    sqlx::query(statement).fetch_all(&mut conn).await.unwrap()
}

/// Each batch of an import commits with its own audit entry, in one transaction: when the entry
/// cannot be written (a trigger refuses audit inserts, as a full disk or a revoked permission
/// would), the batch is not written either; once the log works, a rerun imports everything and
/// the log has one entry per batch, each naming its lines and count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_batch_commits_with_its_audit_entry() {
    use sqlx::Row;
    let (tmp, dir) = data_dir_with_tenant();
    let file = tmp.path().join("in.jsonl");
    let lines: String = (1..=5)
        .map(|i| format!("{{\"id\":\"ar-{i}\",\"subject\":\"emp-{i}\",\"diagnosis\":\"griep\"}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let args =
        ["import", "--tenant", "acme", "--collection", "absence", "--batch", "2", file.to_str().unwrap()];
    sql(&dir, "CREATE TRIGGER refuse_audit BEFORE INSERT ON kluis_audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END")
        .await;
    let out = kluis_umask_000(&dir, &args);
    assert!(!out.status.success(), "the import fails without its audit entries");
    let rows = sql(&dir, "SELECT COUNT(*) FROM kluis_r_absence").await;
    assert_eq!(rows[0].get::<i64, _>(0), 0, "no batch was written without its entry");
    sql(&dir, "DROP TRIGGER refuse_audit").await;
    ok(&kluis_umask_000(&dir, &args));
    let rows = sql(&dir, "SELECT COUNT(*) FROM kluis_r_absence").await;
    assert_eq!(rows[0].get::<i64, _>(0), 5);
    let entries = sql(&dir, "SELECT reason FROM kluis_audit WHERE action = 'import' ORDER BY seq").await;
    let reasons: Vec<String> = entries.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        reasons,
        [
            "collection absence lines 1-2 (0 already present) count 2",
            "collection absence lines 3-4 (0 already present) count 2",
            "collection absence lines 5-5 (0 already present) count 1",
        ]
    );
    let out = kluis_umask_000(&dir, &["audit", "verify"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rows ok: 5 rows"), "{out:?}");
}

/// A tenant's new keys, a key rotation, a retirement and a shred commit with their audit entries:
/// when the entry cannot be written, the key rows and the subject's data stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_and_shreds_commit_with_their_audit_entries() {
    use sqlx::Row;
    let (_tmp, dir) = data_dir_with_one_record();
    let versions = |dir: std::path::PathBuf| async move {
        let rows =
            sql(&dir, "SELECT version, state FROM kluis_domain_keys WHERE tenant = 'acme' AND domain = 'general' ORDER BY version")
                .await;
        rows.iter().map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1))).collect::<Vec<_>>()
    };
    let before = versions(dir.clone()).await;
    let refuse = "CREATE TRIGGER refuse_audit BEFORE INSERT ON kluis_audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END";
    sql(&dir, refuse).await;
    assert!(!kluis_umask_000(&dir, &["tenant", "add", "globex"]).status.success());
    let globex = sql(&dir, "SELECT COUNT(*) FROM kluis_domain_keys WHERE tenant = 'globex'").await;
    assert_eq!(globex[0].get::<i64, _>(0), 0, "no tenant keys without their audit entry");
    let rotate = ["keys", "rotate", "--tenant", "acme", "--domain", "general"];
    assert!(!kluis_umask_000(&dir, &rotate).status.success());
    assert_eq!(versions(dir.clone()).await, before, "no key row without its audit entry");
    let shred = ["shred", "--tenant", "acme", "--subject", "emp-1"];
    assert!(!kluis_umask_000(&dir, &shred).status.success());
    let rows = sql(&dir, "SELECT COUNT(*) FROM kluis_r_absence").await;
    assert_eq!(rows[0].get::<i64, _>(0), 1, "the subject's record is still there");
    sql(&dir, "DROP TRIGGER refuse_audit").await;
    ok(&kluis_umask_000(&dir, &rotate));
    assert_eq!(versions(dir.clone()).await.len(), before.len() + 1);
    sql(&dir, refuse).await;
    let retire = ["keys", "retire", "--tenant", "acme", "--domain", "general", "--version", "1"];
    // Version 1 still seals the record's general cells unless re-encrypted: re-encrypt first.
    sql(&dir, "DROP TRIGGER refuse_audit").await;
    ok(&kluis_umask_000(&dir, &["reencrypt", "--tenant", "acme", "--domain", "general"]));
    sql(&dir, refuse).await;
    let live = versions(dir.clone()).await;
    assert!(!kluis_umask_000(&dir, &retire).status.success());
    assert_eq!(versions(dir.clone()).await, live, "not destroyed without its audit entry");
    sql(&dir, "DROP TRIGGER refuse_audit").await;
    ok(&kluis_umask_000(&dir, &retire));
    ok(&kluis_umask_000(&dir, &shred));
    ok(&kluis_umask_000(&dir, &["tenant", "add", "globex"]));
    let added =
        sql(&dir, "SELECT reason FROM kluis_audit WHERE action = 'tenant_add' AND tenant = 'globex'").await;
    assert_eq!(added.len(), 1);
    assert!(added[0].get::<String, _>(0).contains("medical"), "the entry names the domains created");
    let actions = sql(
        &dir,
        "SELECT action FROM kluis_audit WHERE action IN ('rotate_key', 'retire_key', 'shred') ORDER BY seq",
    )
    .await;
    let actions: Vec<String> = actions.iter().map(|r| r.get(0)).collect();
    assert_eq!(actions, ["rotate_key", "retire_key", "shred"]);
    let out = kluis_umask_000(&dir, &["audit", "verify"]);
    ok(&out);
}

/// `kluis audit verify` names a row deleted outside Kluis and exits 6 (integrity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_a_row_deleted_outside_kluis() {
    let (tmp, dir) = data_dir_with_tenant();
    let file = tmp.path().join("in.jsonl");
    std::fs::write(
        &file,
        "{\"id\":\"ar-1\",\"subject\":\"emp-1\",\"diagnosis\":\"griep\"}\n{\"id\":\"ar-2\",\"subject\":\"emp-2\"}\n",
    )
    .unwrap();
    ok(&kluis_umask_000(
        &dir,
        &["import", "--tenant", "acme", "--collection", "absence", file.to_str().unwrap()],
    ));
    ok(&kluis_umask_000(&dir, &["audit", "verify"]));
    sql(&dir, "DELETE FROM kluis_r_absence WHERE id = 'ar-2'").await;
    let out = kluis_umask_000(&dir, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("acme/absence/ar-2: the row Kluis wrote last is missing"), "{err}");
}

/// Without its audit entry, an export writes nothing out (fail closed, before any data leaves)
/// and a root rewrap leaves every domain key row as it was; with it, both go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_and_root_rewraps_need_their_audit_entries() {
    use sqlx::Row;
    let (tmp, dir) = data_dir_with_one_record();
    let wrapped = |dir: std::path::PathBuf| async move {
        let rows = sql(&dir, "SELECT wrapped FROM kluis_domain_keys ORDER BY tenant, domain, version").await;
        rows.iter().map(|r| r.get::<Vec<u8>, _>(0)).collect::<Vec<_>>()
    };
    sql(&dir, "CREATE TRIGGER refuse_audit BEFORE INSERT ON kluis_audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END")
        .await;
    let out_file = tmp.path().join("export.age");
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let export = [
        "export",
        "--tenant",
        "acme",
        "--subject",
        "emp-1",
        "--recipient",
        &recipient,
        "-o",
        out_file.to_str().unwrap(),
    ];
    assert!(!kluis_umask_000(&dir, &export).status.success());
    assert!(!out_file.exists(), "nothing written out without the entry");
    let left = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".kluis-export-"))
        .count();
    assert_eq!(left, 0, "no partial file either");
    let to_stdout = kluis_umask_000(
        &dir,
        &["export", "--tenant", "acme", "--subject", "emp-1", "--recipient", &recipient],
    );
    assert!(!to_stdout.status.success());
    assert!(to_stdout.stdout.is_empty(), "nothing on standard output either");
    let before = wrapped(dir.clone()).await;
    assert!(!kluis_umask_000(&dir, &["keys", "rotate-root"]).status.success());
    assert_eq!(wrapped(dir.clone()).await, before, "no row rewrapped without the entry");
    sql(&dir, "DROP TRIGGER refuse_audit").await;
    ok(&kluis_umask_000(&dir, &export));
    let package = std::fs::read(&out_file).unwrap();
    let files = kluis_service::package::read_package_to_memory(
        &package[..],
        &kluis_service::package::PackageKey::Identity(identity),
    )
    .unwrap();
    assert!(files.values().any(|v| v.windows(5).any(|w| w == b"griep")));
    ok(&kluis_umask_000(&dir, &["keys", "rotate-root"]));
    assert_ne!(wrapped(dir.clone()).await, before);
    let actions =
        sql(&dir, "SELECT action FROM kluis_audit WHERE action IN ('export', 'rewrap_root') ORDER BY seq")
            .await;
    let actions: Vec<String> = actions.iter().map(|r| r.get(0)).collect();
    assert_eq!(actions, ["export", "rewrap_root"]);
    ok(&kluis_umask_000(&dir, &["audit", "verify"]));
}
