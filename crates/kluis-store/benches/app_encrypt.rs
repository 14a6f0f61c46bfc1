//! Encrypting an application's plaintext columns in place (`Store::encrypt_columns_step`) versus
//! what a migration without Kluis would do to the same rows in the same run: move the values into
//! the new columns and clear the old ones, batch by batch in key order under row locks, one
//! `UPDATE` per row. SQLite and PostgreSQL (`KLUIS_TEST_POSTGRES_URL`, default the local server;
//! skipped with a message if unreachable). One worker.
//!
//! cargo bench -p kluis-store --bench app_encrypt
//!
//! 5,000 rows (500 under `--test`, the smoke run) of a text (30 bytes, medical) and an integer
//! (general) column; batches of 500. `KLUIS_BENCH_ROUNDS` rounds (default 5; 1 under `--test`),
//! the two sides taking turns and alternating which goes first; each side starts from the same
//! freshly written plaintext. Standard error gets each round, standard output the median:
//!
//! ```text
//! app_encrypt sqlite backfill vs plain move: NN.N %   (Kluis rows/s, plain rows/s)
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

fn numbered(sql: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

macro_rules! engine_bench {
    ($name:ident, $db:ty, $blob:expr, $conv:expr, $lock:expr) => {
        async fn $name(pool: sqlx::Pool<$db>, label: &str) {
            let conv = $conv;
            let store = Store::new(pool.clone(), Schema::from_toml(SCHEMA).unwrap());
            store.migrate().await.unwrap();
            let keyring = LocalKeyring::generate(0).unwrap();
            let tenant = TenantId::new("bench").unwrap();
            let access =
                store.admin_access(&keyring, &tenant, &[DomainName::general(), DomainName::medical()]).await.unwrap();
            let who = AuditEntry { actor: "bench".into(), ..AuditEntry::default() };
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
            // The same plaintext before each side's turn.
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
            let kluis = || async {
                let t0 = Instant::now();
                let mut after: Option<Vec<String>> = None;
                let mut done = 0u64;
                loop {
                    let s = store.encrypt_columns_step(&access, "notes", &kluis_store::BatchLimits::rows(BATCH), after.as_deref(), &who).await.unwrap();
                    done += s.rows_written;
                    if s.rows_read == 0 {
                        break;
                    }
                    after = s.last_key;
                }
                assert_eq!(done, n as u64);
                t0.elapsed().as_secs_f64()
            };
            let plain = || async {
                let t0 = Instant::now();
                let select = conv(&format!(
                    "SELECT id, diagnosis_text, hours_plain FROM bench_notes WHERE tenant_id = ? \
                     AND (diagnosis_text IS NOT NULL OR hours_plain IS NOT NULL) ORDER BY id LIMIT ?{}",
                    $lock
                ));
                let update = conv(
                    "UPDATE bench_notes SET diagnosis = ?, hours = ?, diagnosis_text = NULL, hours_plain = NULL WHERE id = ?",
                );
                let mut done = 0u64;
                loop {
                    use sqlx::Row;
                    let mut tx = pool.begin().await.unwrap();
                    let batch = sqlx::query(&select)
                        .bind("bench")
                        .bind(i64::from(BATCH))
                        .fetch_all(&mut *tx)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    for r in &batch {
                        let id: i64 = r.try_get::<i64, _>(0).or_else(|_| r.try_get::<i32, _>(0).map(i64::from)).unwrap();
                        let text: String = r.get(1);
                        let hours: i64 =
                            r.try_get::<i64, _>(2).or_else(|_| r.try_get::<i32, _>(2).map(i64::from)).unwrap();
                        sqlx::query(&update)
                            .bind(text.into_bytes())
                            .bind(hours.to_be_bytes().to_vec())
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                        done += 1;
                    }
                    tx.commit().await.unwrap();
                }
                assert_eq!(done, n as u64);
                t0.elapsed().as_secs_f64()
            };
            let mut ratios = Vec::new();
            let (mut k_rates, mut p_rates) = (Vec::new(), Vec::new());
            for round in 0..rounds() {
                let (k, p) = if round % 2 == 0 {
                    reset().await;
                    let k = kluis().await;
                    reset().await;
                    (k, plain().await)
                } else {
                    reset().await;
                    let p = plain().await;
                    reset().await;
                    (kluis().await, p)
                };
                let (kr, pr) = (n as f64 / k, n as f64 / p);
                eprintln!("app_encrypt {label} round {round}: Kluis {kr:.0} rows/s, plain {pr:.0} rows/s");
                ratios.push(kr / pr * 100.0);
                k_rates.push(kr);
                p_rates.push(pr);
            }
            println!(
                "app_encrypt {label} backfill vs plain move: {:.1} %   ({:.0} rows/s, {:.0} rows/s)",
                median(ratios),
                median(k_rates),
                median(p_rates)
            );
            sqlx::query("DROP TABLE bench_notes").execute(&pool).await.unwrap();
        }
    };
}

engine_bench!(sqlite_bench, sqlx::Sqlite, "BLOB", |s: &str| s.to_owned(), "");
engine_bench!(postgres_bench, sqlx::Postgres, "BYTEA", numbered, " FOR UPDATE");

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
    });
}
