//! Three `kluis encrypt-columns` and then three `kluis reencrypt-columns` processes at once on one
//! PostgreSQL and one MariaDB database, each killed at random (SIGKILL) and started again, while
//! the application keeps writing the same table (first its plaintext column, as the old version
//! of an application does; then through `Store::seal_update`, as the new one does). Afterwards:
//! every worker that was left running ended by itself with success; no plaintext is left; every
//! row opens to the last value the application committed to it; the audit log names every row
//! the application did not touch exactly once per job (none twice, none missed) and a touched
//! row at most once in the re-encryption; the older key version can be retired; the canary is in
//! no worker's output, in no dump of the database and (after the table is rewritten) in none of
//! the database's files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{PASSPHRASE, ServerDb, kluis, random_u64, run_ok};
use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_store::audit::AuditEntry;
use kluis_store::{AppRow, FieldValue, MySql, Postgres, Schema, Store, Value};

const SCHEMA: &str = r#"
[collections.absence.fields]
diagnosis = { type = "text", domain = "medical" }

[tables.notes]
table = "app_notes"
primary_key = ["id"]
tenant_column = "tenant_id"
subject_column = "employee_id"

[tables.notes.columns]
diagnosis = { type = "text", domain = "medical", max_bytes = 200, plaintext_column = "diagnosis_text" }
bsn       = { type = "text", domain = "general", blind_index_column = "bsn_idx", plaintext_column = "bsn_text" }
"#;

const CANARY: &str = "canary-workers-5d2e";
const ROWS: i64 = 8000;
const WORKERS: usize = 3;
/// How long workers are killed and restarted (then the ones left run to the end).
const CHAOS: Duration = Duration::from_secs(6);

/// The raw SQL a test needs on one engine (values written into the SQL text: test data only).
trait TestDb: kluis_store::Engine {
    const CREATE: &'static str;
    const DIALECT: &'static str;
    async fn run_sql(pool: &sqlx::Pool<Self::Db>, sql: &str) -> u64;
    async fn texts(pool: &sqlx::Pool<Self::Db>, sql: &str) -> Vec<String>;
    /// `SELECT id, employee_id, diagnosis, bsn, kluis_row_tag`, as an application reads a row.
    async fn notes(pool: &sqlx::Pool<Self::Db>, filter: &str) -> Vec<AppRow>;
    /// The database's own files (the directory a DBA or a backup of the server's disk copies),
    /// flushed first; `None` outside CI if this process cannot read them.
    async fn files(pool: &sqlx::Pool<Self::Db>) -> Option<Vec<u8>>;
    /// The application's compare-and-swap `UPDATE` of the diagnosis, in its transaction.
    async fn cas(
        tx: &mut sqlx::Transaction<'static, Self::Db>,
        id: &str,
        diagnosis: Option<&[u8]>,
        tag: Option<&[u8]>,
        previous: Option<&[u8]>,
    ) -> Result<u64, sqlx::Error>;
}

macro_rules! test_db {
    ($engine:ty, $db:ty, $create:expr, $dialect:expr, $id_text:expr, $p:expr, $files:expr) => {
        impl TestDb for $engine {
            const CREATE: &'static str = $create;
            const DIALECT: &'static str = $dialect;
            async fn files(pool: &sqlx::Pool<$db>) -> Option<Vec<u8>> {
                let dir: PathBuf = $files(pool).await;
                if std::fs::read_dir(&dir).is_err() {
                    assert!(!common::in_ci(), "cannot read the database files in {}", dir.display());
                    println!("SKIPPED: database file scan (cannot read {})", dir.display());
                    return None;
                }
                let mut out = Vec::new();
                read_tree(&dir, &mut out);
                Some(out)
            }
            async fn run_sql(pool: &sqlx::Pool<$db>, sql: &str) -> u64 {
                sqlx::query(sql).execute(pool).await.unwrap().rows_affected()
            }
            async fn texts(pool: &sqlx::Pool<$db>, sql: &str) -> Vec<String> {
                use sqlx::Row;
                let rows = sqlx::query(sql).fetch_all(pool).await.unwrap();
                // Text, or (MariaDB's TEXT of a binary collation) bytes.
                rows.iter()
                    .map(|r| match r.try_get::<Option<String>, _>(0) {
                        Ok(s) => s.unwrap_or_default(),
                        Err(_) => String::from_utf8(r.try_get::<Option<Vec<u8>>, _>(0).unwrap().unwrap_or_default())
                            .unwrap(),
                    })
                    .collect()
            }
            async fn notes(pool: &sqlx::Pool<$db>, filter: &str) -> Vec<AppRow> {
                use sqlx::Row;
                let sql = format!(
                    "SELECT {}, employee_id, diagnosis, bsn, kluis_row_tag FROM app_notes {filter} ORDER BY id",
                    $id_text
                );
                let rows = sqlx::query(&sql).fetch_all(pool).await.unwrap();
                rows.iter()
                    .map(|r| {
                        let id: String = r.try_get(0).unwrap();
                        let subject: String = r.try_get(1).unwrap();
                        AppRow::new(&[&id], &subject)
                            .cell("diagnosis", r.try_get(2).unwrap())
                            .cell("bsn", r.try_get(3).unwrap())
                            .row_tag(r.try_get(4).unwrap())
                    })
                    .collect()
            }
            async fn cas(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: &str,
                diagnosis: Option<&[u8]>,
                tag: Option<&[u8]>,
                previous: Option<&[u8]>,
            ) -> Result<u64, sqlx::Error> {
                let id: i64 = id.parse().unwrap();
                let sql = format!(
                    "UPDATE app_notes SET diagnosis = {}, kluis_row_tag = {} WHERE id = {} AND kluis_row_tag = {}",
                    $p[0], $p[1], $p[2], $p[3]
                );
                Ok(sqlx::query(&sql).bind(diagnosis).bind(tag).bind(id).bind(previous).execute(&mut **tx).await?.rows_affected())
            }
        }
    };
}

test_db!(
    Postgres,
    sqlx::Postgres,
    "CREATE TABLE app_notes (id BIGINT PRIMARY KEY, tenant_id TEXT NOT NULL, employee_id TEXT NOT NULL, diagnosis_text TEXT, bsn_text TEXT)",
    "postgres",
    "id::text",
    ["$1", "$2", "$3", "$4"],
    async |pool: &sqlx::PgPool| {
        sqlx::query("CHECKPOINT").execute(pool).await.unwrap();
        let data: String = sqlx::query_scalar("SHOW data_directory").fetch_one(pool).await.unwrap();
        let oid: i64 =
            sqlx::query_scalar("SELECT oid::bigint FROM pg_database WHERE datname = current_database()")
                .fetch_one(pool)
                .await
                .unwrap();
        Path::new(&data).join("base").join(oid.to_string())
    }
);
test_db!(
    MySql,
    sqlx::MySql,
    "CREATE TABLE app_notes (id BIGINT PRIMARY KEY, tenant_id VARCHAR(64) NOT NULL, employee_id VARCHAR(64) NOT NULL, diagnosis_text VARCHAR(200), bsn_text VARCHAR(20))",
    "mysql",
    "CAST(id AS CHAR)",
    ["?", "?", "?", "?"],
    async |pool: &sqlx::MySqlPool| {
        let mut c = pool.acquire().await.unwrap();
        sqlx::query("FLUSH TABLES app_notes FOR EXPORT").execute(&mut *c).await.unwrap();
        sqlx::query("UNLOCK TABLES").execute(&mut *c).await.unwrap();
        let data: String = sqlx::query_scalar("SELECT @@datadir").fetch_one(&mut *c).await.unwrap();
        let db: String = sqlx::query_scalar("SELECT DATABASE()").fetch_one(&mut *c).await.unwrap();
        Path::new(&data).join(db)
    }
);

fn read_tree(dir: &Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            read_tree(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
}

fn who() -> AuditEntry {
    AuditEntry { actor: "app".into(), roles: "company_doctor".into(), ..AuditEntry::default() }
}

fn keyring(dir: &Path) -> LocalKeyring {
    let secret = kluis_cli::config::keyring_secret(&zeroize::Zeroizing::new(PASSPHRASE.to_owned()));
    kluis_keyring::KeyringFile::open(dir.join("keyring.kr"), secret).unwrap().into_keyring()
}

fn spawn(dir: &Path, url: &str, args: &[String]) -> Child {
    let mut all = vec!["--store".to_owned(), url.to_owned(), "--json".to_owned()];
    all.extend(args.iter().cloned());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    kluis(dir, &all).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// What the chaos left: kills made, every worker's output, and the outputs of the workers that
/// ran to the end.
struct Chaos {
    kills: u32,
    logs: Vec<u8>,
    finished: Vec<serde_json::Value>,
}

/// Runs `WORKERS` processes of `args`, killing one at random every 100–400 ms and starting it
/// again, for `CHAOS` or until every worker has ended by itself; then sets `calm` and waits for
/// the ones left, each of which must end with success.
async fn chaos(dir: &Path, url: &str, args: &[String], calm: &AtomicBool) -> Chaos {
    let mut kids: Vec<Option<Child>> = (0..WORKERS).map(|_| Some(spawn(dir, url, args))).collect();
    let mut out = Chaos { kills: 0, logs: Vec::new(), finished: Vec::new() };
    let end = Instant::now() + CHAOS;
    while Instant::now() < end && kids.iter().any(Option::is_some) {
        tokio::time::sleep(Duration::from_millis(100 + random_u64() % 300)).await;
        let i = (random_u64() % WORKERS as u64) as usize;
        let Some(mut c) = kids[i].take() else { continue };
        if c.try_wait().unwrap().is_some() {
            // Ran to the end already: nothing is left; do not start it again.
            finish(c, &mut out).await;
            continue;
        }
        c.kill().unwrap();
        let o = c.wait_with_output().unwrap();
        out.logs.extend(o.stdout);
        out.logs.extend(o.stderr);
        out.kills += 1;
        kids[i] = Some(spawn(dir, url, args));
    }
    calm.store(true, Ordering::SeqCst);
    for c in kids.into_iter().flatten() {
        finish(c, &mut out).await;
    }
    out
}

/// Waits for a worker to end without blocking the thread: the application's writer runs in the
/// same task (`tokio::join!`) and may be inside a transaction the worker waits for.
async fn finish(mut c: Child, out: &mut Chaos) {
    while c.try_wait().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "a worker failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    out.finished.push(serde_json::from_slice(&o.stdout).unwrap());
    out.logs.extend(o.stdout);
    out.logs.extend(o.stderr);
}

/// How many times each record is named by the audit entries of `action` on the mapping.
async fn audited<E: TestDb>(pool: &sqlx::Pool<E::Db>, action: &str) -> HashMap<String, u32> {
    let sql = format!("SELECT record FROM kluis_audit WHERE action = '{action}' AND collection = 'notes'");
    let mut n: HashMap<String, u32> = HashMap::new();
    for list in E::texts(pool, &sql).await {
        for id in list.split(',').filter(|s| !s.is_empty()) {
            *n.entry(id.to_owned()).or_default() += 1;
        }
    }
    n
}

/// Every row opened: id -> diagnosis.
async fn opened<E: TestDb>(store: &Store<E>, access: &kluis_store::Access) -> BTreeMap<String, String> {
    let rows = E::notes(store.pool(), "").await;
    assert_eq!(rows.len(), ROWS as usize);
    let mut out = BTreeMap::new();
    for chunk in rows.chunks(500) {
        for (row, o) in chunk.iter().zip(store.open_app_rows(access, "notes", chunk, &who()).await.unwrap()) {
            assert!(o.row_checked);
            match &o.values["diagnosis"] {
                FieldValue::Value(Value::Text(s)) => out.insert(row.key[0].clone(), s.clone()),
                other => panic!("{other:?}"),
            };
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn dump(db: &ServerDb) -> Vec<u8> {
    let out = if db.engine == "postgres" {
        std::process::Command::new("pg_dump").arg(&db.url).output().unwrap()
    } else {
        let u = url::Url::parse(&db.url).unwrap();
        std::process::Command::new("mysqldump")
            .args([
                "-h",
                u.host_str().unwrap(),
                "-P",
                &u.port().unwrap_or(3306).to_string(),
                "-u",
                u.username(),
            ])
            .arg(u.path().trim_start_matches('/'))
            .output()
            .unwrap()
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.len() > 1000);
    out.stdout
}

async fn run<E: TestDb>(db: ServerDb, pool: sqlx::Pool<E::Db>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("data");
    let schema_file = tmp.path().join("schema.toml");
    std::fs::write(&schema_file, SCHEMA).unwrap();
    let url = db.url.as_str();
    run_ok(&dir, &["--store", url, "init", "--schema", schema_file.to_str().unwrap()]);
    run_ok(&dir, &["--store", url, "tenant", "add", "acme"]);
    // The application's table with its rows in clear, and Kluis's columns from `kluis schema sql`.
    E::run_sql(&pool, E::CREATE).await;
    let ddl = run_ok(&dir, &["--store", url, "schema", "sql", "--engine", E::DIALECT]).stdout;
    let ddl: String = String::from_utf8(ddl)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for stmt in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        E::run_sql(&pool, stmt).await;
    }
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                let d = format!("diagnosis {i} {CANARY}");
                last.insert(i.to_string(), d.clone());
                format!("({i}, 'acme', 'emp-{}', '{d}', '{}')", i % 200, 100_000_000 + i)
            })
            .collect();
        E::run_sql(
            &pool,
            &format!(
                "INSERT INTO app_notes (id, tenant_id, employee_id, diagnosis_text, bsn_text) VALUES {}",
                values.join(", ")
            ),
        )
        .await;
    }

    // 1. Encrypting the plaintext columns: three workers, killed at random, while the old
    //    application still writes plaintext.
    let args: Vec<String> = [
        "encrypt-columns",
        "--tenant",
        "acme",
        "--table",
        "notes",
        "--batch",
        "50",
        "--lease",
        "5",
        "--no-purge",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut touched: BTreeMap<String, u32> = BTreeMap::new();
    let calm = AtomicBool::new(false);
    let writer = async {
        let mut k = 0u32;
        while !calm.load(Ordering::SeqCst) {
            let id = 1 + (random_u64() % ROWS as u64) as i64;
            k += 1;
            let d = format!("rewritten {id} {k} {CANARY}");
            E::run_sql(&pool, &format!("UPDATE app_notes SET diagnosis_text = '{d}' WHERE id = {id}")).await;
            last.insert(id.to_string(), d);
            *touched.entry(id.to_string()).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (c, ()) = tokio::join!(chaos(&dir, url, &args, &calm), writer);
    assert!(c.kills >= 5, "{} kills", c.kills);
    assert!(touched.len() > 20, "the application wrote {} rows", touched.len());
    // A last run seals what the application wrote after the last worker's last pass, and
    // rewrites the table.
    let out =
        run_ok(&dir, &["--store", url, "--json", "encrypt-columns", "--tenant", "acme", "--table", "notes"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows_left"].as_u64(), Some(0), "{v}");
    eprintln!("{}: the last run sealed {} rows", db.engine, v["rows_encrypted"]);
    // The last run rewrote the table: no file of the database holds the plaintext any more.
    if let Some(files) = E::files(&pool).await {
        assert!(!contains(&files, CANARY.as_bytes()), "the canary is in the database's files");
    }
    let clear = E::texts(
        &pool,
        "SELECT CAST(id AS CHAR(20)) FROM app_notes WHERE diagnosis_text IS NOT NULL OR bsn_text IS NOT NULL OR diagnosis IS NULL",
    )
    .await;
    assert!(clear.is_empty(), "rows left in clear: {clear:?}");
    let store = Store::new(pool.clone(), Schema::from_toml(SCHEMA).unwrap());
    let (kr, tenant) = (keyring(&dir), TenantId::new("acme").unwrap());
    let all = [DomainName::general(), DomainName::medical()];
    let access = store.admin_access(&kr, &tenant, &all).await.unwrap();
    assert_eq!(opened(&store, &access).await, last, "every row holds the last value written to it");
    let n = audited::<E>(&pool, "encrypt_columns").await;
    for i in 1..=ROWS {
        let id = i.to_string();
        let times = n.get(&id).copied().unwrap_or(0);
        if touched.contains_key(&id) {
            assert!(times >= 1, "row {id} sealed {times} times");
        } else {
            assert_eq!(times, 1, "row {id} sealed {times} times");
        }
    }
    let phase1 = c.kills;

    // 2. Re-encrypting after a rotation of the medical key: the subjects get their new key
    //    versions, then three workers seal the rows again, killed at random, while the new
    //    application updates rows through Kluis.
    let medical = DomainName::medical();
    run_ok(&dir, &["--store", url, "keys", "rotate", "--tenant", "acme", "--domain", "medical"]);
    let access = store.admin_access(&kr, &tenant, &all).await.unwrap();
    for _ in 0..50 {
        let p = store.reencrypt_step(&access, &medical, 100).await.unwrap();
        if p.subjects_moved == 0 && p.remaining_subjects == 0 {
            assert!(p.kept_for_app_tables > 0, "{p:?}");
            break;
        }
    }
    assert_eq!(store.reencrypt_columns_plan(&access, "notes", &medical).await.unwrap(), ROWS as u64);
    let args: Vec<String> = [
        "reencrypt-columns",
        "--tenant",
        "acme",
        "--domain",
        "medical",
        "--table",
        "notes",
        "--batch",
        "50",
        "--lease",
        "5",
    ]
    .map(str::to_owned)
    .to_vec();
    let app = Store::new(pool.clone(), Schema::from_toml(SCHEMA).unwrap());
    let app_access = app.admin_access(&kr, &tenant, &all).await.unwrap();
    let mut updated: BTreeMap<String, u32> = BTreeMap::new();
    let mut refused_cas = 0u32;
    let calm = AtomicBool::new(false);
    let writer = async {
        let mut k = 0u32;
        while !calm.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let id = 1 + (random_u64() % ROWS as u64) as i64;
            k += 1;
            let row = E::notes(app.pool(), &format!("WHERE id = {id}")).await.remove(0);
            let d = format!("updated {id} {k} {CANARY}");
            let mut tx = app.pool().begin().await.unwrap();
            let sealed = app
                .seal_update(
                    &mut tx,
                    &app_access,
                    "notes",
                    &row,
                    &[("diagnosis", Value::Text(d.clone()))],
                    &[],
                    &who(),
                )
                .await;
            let Ok(sealed) = sealed else {
                // Rolled back here rather than left to the drop (the pool's rollback of a
                // dropped transaction runs in a task of its own, later).
                tx.rollback().await.unwrap();
                refused_cas += 1;
                continue;
            };
            let done = E::cas(
                &mut tx,
                &id.to_string(),
                sealed.get("diagnosis").unwrap(),
                sealed.get("kluis_row_tag").unwrap(),
                sealed.previous_row_tag(),
            )
            .await;
            if done.is_ok_and(|n| n == 1) {
                tx.commit().await.unwrap();
                last.insert(id.to_string(), d);
                *updated.entry(id.to_string()).or_default() += 1;
            } else {
                tx.rollback().await.unwrap();
                refused_cas += 1;
            }
        }
    };
    let (c, ()) = tokio::join!(chaos(&dir, url, &args, &calm), writer);
    assert!(c.kills >= 5, "{} kills", c.kills);
    assert!(updated.len() > 20, "the application updated {} rows ({refused_cas} tries lost)", updated.len());
    let access = store.admin_access(&kr, &tenant, &all).await.unwrap();
    assert_eq!(store.reencrypt_columns_plan(&access, "notes", &medical).await.unwrap(), 0);
    assert_eq!(opened(&store, &access).await, last, "every row holds the last value written to it");
    let n = audited::<E>(&pool, "reencrypt_columns").await;
    for i in 1..=ROWS {
        let id = i.to_string();
        let times = n.get(&id).copied().unwrap_or(0);
        if updated.contains_key(&id) {
            assert!(times <= 1, "row {id} sealed again {times} times");
        } else {
            assert_eq!(times, 1, "row {id} sealed again {times} times");
        }
    }
    // `kluis reencrypt` now deletes the older subject key versions, and the older medical key
    // version can be retired.
    let out =
        run_ok(&dir, &["--store", url, "--json", "reencrypt", "--tenant", "acme", "--domain", "medical"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["kept_for_app_tables"], 0, "{v}");
    run_ok(
        &dir,
        &["--store", url, "keys", "retire", "--tenant", "acme", "--domain", "medical", "--version", "1"],
    );
    assert_eq!(opened(&store, &store.admin_access(&kr, &tenant, &all).await.unwrap()).await, last);
    // No worker printed the plaintext, and no dump of the database holds it.
    assert!(!contains(&c.logs, CANARY.as_bytes()));
    assert!(!contains(&dump(&db).await, CANARY.as_bytes()), "the canary is in a dump");
    if let Some(files) = E::files(&pool).await {
        assert!(!contains(&files, CANARY.as_bytes()), "the canary is in the database's files");
    }
    eprintln!("{}: {phase1} + {} workers killed", db.engine, c.kills);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_postgres() {
    let Some(db) = ServerDb::new("postgres", "kluis_workers").await else { return };
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&db.url).await.unwrap();
    run::<Postgres>(db, pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_mariadb() {
    let Some(db) = ServerDb::new("mariadb", "kluis_workers").await else { return };
    let pool = sqlx::mysql::MySqlPoolOptions::new().max_connections(8).connect(&db.url).await.unwrap();
    run::<MySql>(db, pool).await;
}
