//! Encrypting an application's plaintext columns in place (`Store::encrypt_columns_step`) and
//! re-encrypting them after a rotation (`Store::reencrypt_columns_step`), with one and with two
//! workers, versus what a migration without Kluis would do to the same rows in the same run:
//! batches in key order under row locks (`FOR UPDATE`, `SKIP LOCKED` with two workers), one
//! `UPDATE` per row that moves the values into the new columns and clears the old ones
//! (backfill), or writes the values read back into their columns (re-encryption). SQLite (one
//! worker: one writer), PostgreSQL (`KLUIS_TEST_POSTGRES_URL`) and MariaDB (`KLUIS_TEST_MYSQL_URL`),
//! default the local servers; skipped with a message if unreachable, failing in CI.
//!
//! cargo bench -p kluis-store --bench app_encrypt
//!
//! 5,000 rows (500 under `--test`, the smoke run) of a text (30 bytes, medical) and an integer
//! (general) column, 200 subjects; batches of 500. `KLUIS_BENCH_ROUNDS` rounds (default 5; 1 under
//! `--test`), the two sides taking turns and alternating which goes first; each side starts from
//! the same rows. Standard error gets each round, standard output the medians:
//!
//! ```text
//! app_encrypt ENGINE backfill, W workers vs plain move: NN.N %   (Kluis rows/s, plain rows/s)
//! app_encrypt ENGINE re-encryption, W workers vs plain rewrite: NN.N %   (Kluis rows/s, plain rows/s)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::time::Instant;

use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_store::audit::AuditEntry;
use kluis_store::{Schema, Sqlite, Store};

const SCHEMA: &str = r#"
[tables.notes]
table = "bench_notes"
primary_key = ["id"]
tenant_column = "tenant_id"
subject_column = "employee_id"

[tables.notes.columns]
diagnosis = { type = "text", domain = "medical", plaintext_column = "diagnosis_text" }
hours     = { type = "integer", domain = "general", plaintext_column = "hours_plain" }
"#;

const BATCH: u32 = 500;
const SUBJECTS: i64 = 200;

fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

fn rows() -> i64 {
    if test_mode() { 500 } else { 5_000 }
}

fn rounds() -> usize {
    if test_mode() {
        return 1;
    }
    std::env::var("KLUIS_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(5)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// SQL with `?` placeholders in engine `E`'s placeholders (the store's own conversion).
fn placeholders<E: kluis_store::Engine>(sql: &str) -> String {
    E::sql(sql).into_owned()
}

/// Per job and number of workers: (Kluis rows/s, plain rows/s) of each round.
type Rates = std::collections::BTreeMap<(&'static str, usize), Vec<(f64, f64)>>;

fn report(label: &str, rates: &Rates) {
    for ((job, workers), v) in rates {
        let ratio = median(v.iter().map(|(k, p)| k / p * 100.0).collect());
        let base = if *job == "backfill" { "plain move" } else { "plain rewrite" };
        println!(
            "app_encrypt {label} {job}, {workers} worker{} vs {base}: {ratio:.1} %   ({:.0} rows/s, {:.0} rows/s)",
            if *workers == 1 { "" } else { "s" },
            median(v.iter().map(|r| r.0).collect()),
            median(v.iter().map(|r| r.1).collect()),
        );
    }
}

macro_rules! engine_bench {
    ($name:ident, $db:ty, $blob:expr, $conv:expr, $lock:expr, $skip:expr, $max_workers:expr) => {
        async fn $name(pool: sqlx::Pool<$db>, label: &str) {
            let conv = $conv;
            let store = Store::new(pool.clone(), Schema::from_toml(SCHEMA).unwrap());
            store.migrate().await.unwrap();
            let keyring = LocalKeyring::generate(0).unwrap();
            let tenant = TenantId::new("bench").unwrap();
            let domains = [DomainName::general(), DomainName::medical()];
            let who = AuditEntry { actor: "bench".into(), ..AuditEntry::default() };
            let limits = kluis_store::BatchLimits::rows(BATCH);
            sqlx::query("DROP TABLE IF EXISTS bench_notes").execute(&pool).await.unwrap();
            sqlx::query(&format!(
                "CREATE TABLE bench_notes (id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, employee_id TEXT NOT NULL, \
                 diagnosis_text TEXT, hours_plain INTEGER, diagnosis {0} NULL, hours {0} NULL, kluis_row_tag {0} NULL)",
                $blob
            ))
            .execute(&pool)
            .await
            .unwrap();
            let n = rows();
            // The same plaintext before each backfill.
            let reset = || async {
                sqlx::query("DELETE FROM bench_notes").execute(&pool).await.unwrap();
                let mut tx = pool.begin().await.unwrap();
                for start in (1..=n).step_by(500) {
                    let end = (start + 499).min(n);
                    let values: Vec<String> = (start..=end)
                        .map(|i| {
                            format!(
                                "({i}, 'bench', 'emp-{}', 'diagnosis text number {i:08}', {})",
                                i % SUBJECTS,
                                i % 40
                            )
                        })
                        .collect();
                    sqlx::query(&format!(
                        "INSERT INTO bench_notes (id, tenant_id, employee_id, diagnosis_text, hours_plain) VALUES {}",
                        values.join(", ")
                    ))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
            };
            // One worker's passes of Kluis steps until a pass writes nothing and nothing is left
            // (as `kluis encrypt-columns` does: rows another worker's batch held are skipped by a
            // pass, and on MariaDB so are rows whose subject key rows it held); rows written.
            let kluis_worker = |reencrypt: bool| {
                let (store, who, keyring, tenant, domains) = (&store, &who, &keyring, &tenant, &domains);
                async move {
                    let access = store.admin_access(keyring, tenant, domains).await.unwrap();
                    let mut done = 0u64;
                    loop {
                        let mut after: Option<Vec<String>> = None;
                        let mut wrote = 0u64;
                        loop {
                            let s = if reencrypt {
                                store
                                    .reencrypt_columns_step(&access, "notes", &domains[1], &limits, after.as_deref(), who)
                                    .await
                            } else {
                                store.encrypt_columns_step(&access, "notes", &limits, after.as_deref(), who).await
                            };
                            let s = match s {
                                Ok(s) => s,
                                Err(e) if e.is_retryable() => continue,
                                Err(e) => panic!("{e}"),
                            };
                            wrote += s.rows_written;
                            if s.rows_read == 0 {
                                break;
                            }
                            after = s.last_key;
                        }
                        done += wrote;
                        if wrote == 0 {
                            let left = if reencrypt {
                                store.reencrypt_columns_plan(&access, "notes", &domains[1]).await.unwrap()
                            } else {
                                store.encrypt_columns_plan(&access, "notes").await.unwrap().rows
                            };
                            if left == 0 {
                                return done;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                    }
                }
            };
            let kluis = |reencrypt: bool, workers: usize| async move {
                let t0 = Instant::now();
                let done = if workers == 1 {
                    kluis_worker(reencrypt).await
                } else {
                    let (a, b) = tokio::join!(kluis_worker(reencrypt), kluis_worker(reencrypt));
                    a + b
                };
                assert_eq!(done, n as u64, "Kluis, re-encryption {reencrypt}, {workers} workers");
                t0.elapsed().as_secs_f64()
            };
            // The plain side: one worker's batches until one reads nothing. A rewrite has no work
            // list to claim from, so each of several workers takes its own range of keys.
            let plain_worker = |rewrite: bool, workers: usize, index: usize| {
                let pool = &pool;
                async move {
                    // Workers of a rewrite take disjoint key ranges and lock without skipping (on
                    // MariaDB a range scan also locks the next key, which a neighbour's SKIP
                    // LOCKED would then leave undone).
                    let lock = if workers == 1 || rewrite { $lock } else { $skip };
                    let select = if rewrite {
                        conv(&format!(
                            "SELECT id, diagnosis, hours FROM bench_notes WHERE tenant_id = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?{lock}"
                        ))
                    } else {
                        conv(&format!(
                            "SELECT id, diagnosis_text, hours_plain FROM bench_notes WHERE tenant_id = ? AND id > ? AND id <= ? \
                             AND (diagnosis_text IS NOT NULL OR hours_plain IS NOT NULL) ORDER BY id LIMIT ?{lock}"
                        ))
                    };
                    let update = conv(if rewrite {
                        "UPDATE bench_notes SET diagnosis = ?, hours = ? WHERE id = ?"
                    } else {
                        "UPDATE bench_notes SET diagnosis = ?, hours = ?, diagnosis_text = NULL, hours_plain = NULL WHERE id = ?"
                    });
                    let (lo, hi) = if rewrite {
                        (n * index as i64 / workers as i64, n * (index as i64 + 1) / workers as i64)
                    } else {
                        (0, n)
                    };
                    let (mut done, mut after) = (0u64, lo);
                    loop {
                        use sqlx::Row;
                        let mut tx = pool.begin().await.unwrap();
                        let batch = sqlx::query(&select)
                            .bind("bench")
                            .bind(after)
                            .bind(hi)
                            .bind(i64::from(BATCH))
                            .fetch_all(&mut *tx)
                            .await
                            .unwrap();
                        if batch.is_empty() {
                            return done;
                        }
                        for r in &batch {
                            let id: i64 =
                                r.try_get::<i64, _>(0).or_else(|_| r.try_get::<i32, _>(0).map(i64::from)).unwrap();
                            let (d, h): (Vec<u8>, Vec<u8>) = if rewrite {
                                (r.get(1), r.get(2))
                            } else {
                                let text: String = r.get(1);
                                let hours: i64 =
                                    r.try_get::<i64, _>(2).or_else(|_| r.try_get::<i32, _>(2).map(i64::from)).unwrap();
                                (text.into_bytes(), hours.to_be_bytes().to_vec())
                            };
                            sqlx::query(&update).bind(d).bind(h).bind(id).execute(&mut *tx).await.unwrap();
                            done += 1;
                            after = id;
                        }
                        tx.commit().await.unwrap();
                    }
                }
            };
            let plain = |rewrite: bool, workers: usize| async move {
                let t0 = Instant::now();
                let done = if workers == 1 {
                    plain_worker(rewrite, 1, 0).await
                } else {
                    let (a, b) = tokio::join!(plain_worker(rewrite, workers, 0), plain_worker(rewrite, workers, 1));
                    a + b
                };
                assert_eq!(done, n as u64, "plain, rewrite {rewrite}, {workers} workers");
                t0.elapsed().as_secs_f64()
            };
            // Before each re-encryption: a rotation of the medical key and the store's steps, which
            // give the subjects their new key versions (not timed).
            let rotate = || async {
                store.rotate_domain_key(&keyring, &tenant, &domains[1]).await.unwrap();
                let access = store.admin_access(&keyring, &tenant, &domains).await.unwrap();
                while store.reencrypt_step(&access, &domains[1], 1000).await.unwrap().subjects_moved > 0 {}
            };
            let mut rates = Rates::new();
            for round in 0..rounds() {
                for workers in 1..=$max_workers {
                    // Backfill.
                    reset().await;
                    let (k, p) = if round % 2 == 0 {
                        let k = kluis(false, workers).await;
                        reset().await;
                        let p = plain(false, workers).await;
                        // The re-encryption below needs the rows as Kluis sealed them.
                        reset().await;
                        kluis(false, 1).await;
                        (k, p)
                    } else {
                        let p = plain(false, workers).await;
                        reset().await;
                        (kluis(false, workers).await, p)
                    };
                    let (kr, pr) = (n as f64 / k, n as f64 / p);
                    eprintln!("app_encrypt {label} round {round} backfill, {workers} workers: Kluis {kr:.0} rows/s, plain {pr:.0} rows/s");
                    rates.entry(("backfill", workers)).or_default().push((kr, pr));
                    // Re-encryption of the sealed rows (the plain rewrite goes first or second in
                    // turn; it writes the sealed bytes back as they are).
                    rotate().await;
                    let (k, p) = if round % 2 == 0 {
                        let k = kluis(true, workers).await;
                        (k, plain(true, workers).await)
                    } else {
                        let p = plain(true, workers).await;
                        (kluis(true, workers).await, p)
                    };
                    let (kr, pr) = (n as f64 / k, n as f64 / p);
                    eprintln!("app_encrypt {label} round {round} re-encryption, {workers} workers: Kluis {kr:.0} rows/s, plain {pr:.0} rows/s");
                    rates.entry(("re-encryption", workers)).or_default().push((kr, pr));
                }
            }
            report(label, &rates);
            sqlx::query("DROP TABLE bench_notes").execute(&pool).await.unwrap();
        }
    };
}

engine_bench!(sqlite_bench, sqlx::Sqlite, "BLOB", placeholders::<Sqlite>, "", "", 1);
engine_bench!(
    postgres_bench,
    sqlx::Postgres,
    "BYTEA",
    placeholders::<kluis_store::Postgres>,
    " FOR UPDATE",
    " FOR UPDATE SKIP LOCKED",
    2
);
engine_bench!(
    mysql_bench,
    sqlx::MySql,
    "LONGBLOB",
    placeholders::<kluis_store::MySql>,
    " FOR UPDATE",
    " FOR UPDATE SKIP LOCKED",
    2
);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let pool: sqlx::SqlitePool = Sqlite::open(&dir.path().join("bench.db")).await.unwrap();
        sqlite_bench(pool, "sqlite").await;
        let url = std::env::var("KLUIS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        // One database per run (by process id), dropped at the end.
        let db = format!("kluis_bench_ae_{}", std::process::id());
        let pool = async {
            let admin = sqlx::PgPool::connect(&url).await?;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await;
            sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await?;
            admin.close().await;
            let db_url = match url.rfind('/') {
                Some(i) if i > url.find("://").map_or(0, |j| j + 2) => format!("{}/{db}", &url[..i]),
                _ => format!("{url}/{db}"),
            };
            sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&db_url).await
        }
        .await;
        match pool {
            Ok(pool) => {
                postgres_bench(pool.clone(), "postgres").await;
                pool.close().await;
                if let Ok(admin) = sqlx::PgPool::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            }
            Err(e) => {
                assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "PostgreSQL is needed in CI: {e}");
                println!("SKIPPED: app_encrypt postgres ({e})");
            }
        }
        let url = std::env::var("KLUIS_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
        let pool = async {
            let admin = sqlx::MySqlPool::connect(&url).await?;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db}")).execute(&admin).await;
            sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await?;
            admin.close().await;
            let db_url = match url.rfind('/') {
                Some(i) if i > url.find("://").map_or(0, |j| j + 2) => format!("{}/{db}", &url[..i]),
                _ => format!("{url}/{db}"),
            };
            sqlx::mysql::MySqlPoolOptions::new().max_connections(4).connect(&db_url).await
        }
        .await;
        match pool {
            Ok(pool) => {
                mysql_bench(pool.clone(), "mariadb").await;
                pool.close().await;
                if let Ok(admin) = sqlx::MySqlPool::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db}")).execute(&admin).await;
                }
            }
            Err(e) => {
                assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "MariaDB is needed in CI: {e}");
                println!("SKIPPED: app_encrypt mariadb ({e})");
            }
        }
    });
}
