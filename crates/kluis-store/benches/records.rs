//! Insert and read 10,000 records (2 medical + 4 general fields): encrypted through the store
//! versus the same table layout holding plaintext, through the same sqlx pool; SQLite and
//! PostgreSQL (`KLUIS_TEST_POSTGRES_URL`, default the local server; skipped with a message if
//! unreachable). Inserts go in transactions of 500 records; reads are pages of 1,000.
//!
//! cargo bench -p kluis-store --bench records
//!
//! `KLUIS_BENCH_N` (a multiple of 500) changes the record count, for profiling runs under
//! `valgrind --tool=callgrind`; the recorded figures use the default 10,000.
//! `KLUIS_BENCH_ENGINES=sqlite` (or `postgres`) runs one engine only. `KLUIS_BENCH_PAIRED=<rounds>`
//! replaces criterion by paired rounds for a loaded machine: in each round the encrypted and the
//! plaintext case take turns per transaction (inserts) or page (reads), alternating which goes
//! first, and the round prints their throughput ratio; the median ratio is the figure to compare. `KLUIS_BENCH_PROFILE=<case>` (one of
//! `insert_encrypted`, `insert_plaintext`, `read_encrypted`, `read_plaintext`, `none`) runs the same
//! setup and then that case once, for instruction counts under callgrind (subtract `none`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_store::backend::{Backend, FieldRow, IndexRow, RecordRow, WriteOp};
use kluis_store::{
    Access, FieldValue, NewRecord, Op, PostgresBackend, Record, Schema, SqliteBackend, Store, Value,
};

/// Records per iteration: 10,000 unless `KLUIS_BENCH_N` says otherwise.
fn n_records() -> usize {
    std::env::var("KLUIS_BENCH_N")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0 && n % BATCH == 0)
        .unwrap_or(10_000)
}
const BATCH: usize = 500;
const SUBJECTS: usize = 200;
/// The plaintext rows live in the same tables under another tenant id.
const PLAIN_TENANT: &str = "bench-plain";

const SCHEMA: &str = r#"
[collections.absence.fields]
start_date      = { type = "date", domain = "general" }
end_date        = { type = "date", domain = "general" }
work_capacity   = { type = "percentage", domain = "general" }
employee_number = { type = "text", domain = "general", blind_index = true }
diagnosis       = { type = "text", domain = "medical" }
doctor_notes    = { type = "text", domain = "medical" }
"#;

fn fields(i: usize) -> Vec<(String, Value)> {
    vec![
        ("start_date".into(), Value::Date("2025-03-01".into())),
        ("end_date".into(), Value::Date("2025-03-14".into())),
        ("work_capacity".into(), Value::Decimal(format!("{}", i % 101))),
        ("employee_number".into(), Value::Text(format!("E{:06}", i % SUBJECTS))),
        ("diagnosis".into(), Value::Text(format!("diagnosis text number {i} with some words"))),
        ("doctor_notes".into(), Value::Text(format!("notes {i}: rest, reduce hours, review in two weeks"))),
    ]
}

fn domain_of(f: &str) -> &'static str {
    if f == "diagnosis" || f == "doctor_notes" { "medical" } else { "general" }
}

/// The plaintext layout stores each value in the store's own value encoding (type tag and
/// payload), unsealed, and reads it back into the same typed `Record` an app gets from the store.
fn encode(v: &Value) -> Vec<u8> {
    v.encode().to_vec()
}

struct Bench<B: Backend> {
    store: Store<B>,
    access: Access,
    keyring: LocalKeyring,
}

async fn setup<B: Backend>(backend: B) -> Bench<B> {
    let store = Store::new(backend, Schema::from_toml(SCHEMA).unwrap());
    store.migrate().await.unwrap();
    let keyring = LocalKeyring::generate(0).unwrap();
    let tenant = TenantId::new("bench").unwrap();
    let access =
        store.unlock(&keyring, &tenant, &[DomainName::general(), DomainName::medical()]).await.unwrap();
    Bench { store, access, keyring }
}

async fn insert_encrypted<B: Backend>(b: &Bench<B>, tag: &str) {
    for chunk in 0..n_records() / BATCH {
        insert_encrypted_chunk(b, tag, chunk).await;
    }
}

async fn insert_encrypted_chunk<B: Backend>(b: &Bench<B>, tag: &str, chunk: usize) {
    {
        let ops = (0..BATCH)
            .map(|j| {
                let i = chunk * BATCH + j;
                let mut rec = NewRecord::new(&format!("emp-{}", i % SUBJECTS)).id(&format!("{tag}-{i:06}"));
                rec.fields = fields(i);
                Op::Insert { collection: "absence".into(), record: rec }
            })
            .collect();
        b.store.transaction(&b.access, ops).await.unwrap();
    }
}

async fn insert_plain<B: Backend>(b: &Bench<B>, tag: &str) {
    for chunk in 0..n_records() / BATCH {
        insert_plain_chunk(b, tag, chunk).await;
    }
}

async fn insert_plain_chunk<B: Backend>(b: &Bench<B>, tag: &str, chunk: usize) {
    {
        let ops = (0..BATCH)
            .map(|j| {
                let i = chunk * BATCH + j;
                let f = fields(i);
                let indexes = f
                    .iter()
                    .filter(|(n, _)| n == "employee_number")
                    .map(|(n, v)| IndexRow { field: n.clone(), key_version: 1, idx: encode(v) })
                    .collect();
                WriteOp::Insert {
                    table: b.store.layout().table("absence").unwrap().clone(),
                    record: RecordRow {
                        tenant: PLAIN_TENANT.into(),
                        collection: "absence".into(),
                        id: format!("{tag}-{i:06}"),
                        subject: format!("emp-{}", i % SUBJECTS),
                        version: 1,
                        created_at: 1,
                        updated_at: 1,
                        retain_until: None,
                        tag: Vec::new(),
                    },
                    fields: f
                        .iter()
                        .map(|(n, v)| FieldRow {
                            field: n.clone(),
                            domain: domain_of(n).into(),
                            sealed: encode(v),
                            key_version: 0,
                        })
                        .collect(),
                    indexes,
                }
            })
            .collect();
        b.store.backend().apply(ops).await.unwrap();
    }
}

async fn read_encrypted<B: Backend>(b: &Bench<B>, tag: &str) -> usize {
    let mut n = 0;
    let mut after = Some(format!("{tag}-"));
    while let Some(a) = after {
        let (k, next) = read_encrypted_page(b, tag, &a).await;
        n += k;
        after = next;
    }
    n
}

/// One page after `after`: (records of `tag`, cursor of the next page).
async fn read_encrypted_page<B: Backend>(b: &Bench<B>, tag: &str, after: &str) -> (usize, Option<String>) {
    let page = b.store.list(&b.access, "absence", None, Some(after), 1000).await.unwrap();
    let n = page.records.iter().filter(|r| r.id.starts_with(tag)).count();
    let next = page.next.filter(|id| id.starts_with(tag));
    std::hint::black_box(page.records);
    (n, next)
}

/// The same pages through the same pool, decoded into the same typed `Record`s (what an app
/// reading a plaintext table does), without opening anything.
async fn read_plain<B: Backend>(b: &Bench<B>, tag: &str) -> usize {
    let mut n = 0;
    let mut after = Some(format!("{tag}-"));
    while let Some(a) = after {
        let (k, next) = read_plain_page(b, tag, &a).await;
        n += k;
        after = next;
    }
    n
}

async fn read_plain_page<B: Backend>(b: &Bench<B>, tag: &str, after: &str) -> (usize, Option<String>) {
    let page = b
        .store
        .backend()
        .list(b.store.layout().table("absence").unwrap(), PLAIN_TENANT, None, Some(after), 1000)
        .await
        .unwrap();
    let full = page.len() == 1000;
    let mut records = Vec::with_capacity(page.len());
    for s in page {
        let fields = s
            .fields
            .into_iter()
            .map(|f| {
                let v = Value::decode(&f.sealed).unwrap();
                (f.field, FieldValue::Value(v))
            })
            .collect();
        let r = s.record;
        records.push(Record {
            collection: r.collection,
            id: r.id,
            subject: r.subject,
            version: r.version as u64,
            created_at: r.created_at,
            updated_at: r.updated_at,
            retain_until: r.retain_until,
            fields,
        });
    }
    let n = records.iter().filter(|r| r.id.starts_with(tag)).count();
    let next =
        if full { records.last().map(|r| r.id.clone()).filter(|id| id.starts_with(tag)) } else { None };
    std::hint::black_box(records);
    (n, next)
}

/// Untimed between iterations: empty the tables (and, on PostgreSQL, vacuum away the dead tuples)
/// so every iteration starts from the same state.
trait Reset {
    fn reset(&self) -> impl std::future::Future<Output = ()>;
}

const TABLES: [&str; 3] = ["kluis_fields", "kluis_blind_index", "kluis_records"];

impl Reset for SqliteBackend {
    async fn reset(&self) {
        for t in TABLES {
            sqlx::query(&format!("DELETE FROM {t}")).execute(self.pool()).await.unwrap();
        }
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(self.pool()).await.unwrap();
    }
}

impl Reset for PostgresBackend {
    async fn reset(&self) {
        for t in TABLES {
            sqlx::query(&format!("TRUNCATE {t}")).execute(self.pool()).await.unwrap();
        }
        sqlx::query("VACUUM ANALYZE").execute(self.pool()).await.unwrap();
    }
}

async fn clear<B: Backend + Reset>(b: &Bench<B>) {
    b.store.backend().reset().await;
}

fn run_engine<B: Backend + Reset>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    engine: &str,
    b: Bench<B>,
) {
    let _ = &b.keyring;
    let mut g = c.benchmark_group(format!("store_{engine}"));
    // Flat sampling: ten samples of one iteration each (an iteration is 10,000 records).
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(100));
    g.measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(n_records() as u64));
    for mode in ["encrypted", "plaintext"] {
        g.bench_function(BenchmarkId::new("insert_10k", mode), |bch| {
            bch.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        clear(&b).await;
                        let t = Instant::now();
                        if mode == "encrypted" {
                            insert_encrypted(&b, "w").await
                        } else {
                            insert_plain(&b, "w").await
                        }
                        total += t.elapsed();
                    }
                    total
                })
            })
        });
    }
    // Reads: 10,000 records of each layout, read page by page.
    rt.block_on(async {
        clear(&b).await;
        insert_encrypted(&b, "e").await;
        insert_plain(&b, "p").await;
    });
    for mode in ["encrypted", "plaintext"] {
        g.bench_function(BenchmarkId::new("read_10k", mode), |bch| {
            bch.iter(|| {
                rt.block_on(async {
                    let n = if mode == "encrypted" {
                        read_encrypted(&b, "e").await
                    } else {
                        read_plain(&b, "p").await
                    };
                    assert_eq!(n, n_records());
                })
            })
        });
    }
    g.finish();
}

fn engine_wanted(engine: &str) -> bool {
    std::env::var("KLUIS_BENCH_ENGINES").map_or(true, |v| v.split(',').any(|e| e.trim() == engine))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Paired rounds: (encrypted, plaintext) timed back to back, the order alternating per round.
fn run_paired<B: Backend + Reset>(rt: &tokio::runtime::Runtime, engine: &str, b: &Bench<B>, rounds: usize) {
    let report = |op: &str, pairs: &[(Duration, Duration)]| {
        for (i, (e, p)) in pairs.iter().enumerate() {
            println!(
                "paired {engine} {op} round {i}: encrypted {:.1} ms, plaintext {:.1} ms, ratio {:.1} %",
                e.as_secs_f64() * 1e3,
                p.as_secs_f64() * 1e3,
                100.0 * p.as_secs_f64() / e.as_secs_f64()
            );
        }
        let ratio = median(pairs.iter().map(|(e, p)| p.as_secs_f64() / e.as_secs_f64()).collect());
        let enc = median(pairs.iter().map(|(e, _)| e.as_secs_f64()).collect());
        let plain = median(pairs.iter().map(|(_, p)| p.as_secs_f64()).collect());
        println!(
            "paired {engine} {op} median of {} rounds: encrypted {:.1} ms, plaintext {:.1} ms, \
             encrypted/plaintext throughput {:.1} %",
            pairs.len(),
            enc * 1e3,
            plain * 1e3,
            100.0 * ratio
        );
    };
    rt.block_on(async {
        // Inserts: the two layouts take turns per transaction of 500 records (the order
        // alternating), into the same tables, so load changes hit both alike.
        let mut inserts = Vec::new();
        for r in 0..rounds {
            clear(b).await;
            let mut t = [Duration::ZERO; 2];
            for chunk in 0..n_records() / BATCH {
                for encrypted in if (r + chunk) % 2 == 0 { [true, false] } else { [false, true] } {
                    let start = Instant::now();
                    if encrypted {
                        insert_encrypted_chunk(b, "w", chunk).await
                    } else {
                        insert_plain_chunk(b, "w", chunk).await
                    }
                    t[usize::from(!encrypted)] += start.elapsed();
                }
            }
            inserts.push((t[0], t[1]));
        }
        report("insert", &inserts);
        clear(b).await;
        insert_encrypted(b, "e").await;
        insert_plain(b, "p").await;
        // Reads: page by page, taking turns the same way.
        let mut reads = Vec::new();
        for r in 0..rounds * 3 {
            let mut t = [Duration::ZERO; 2];
            let mut count = [0usize; 2];
            let mut cursor = [Some("e-".to_owned()), Some("p-".to_owned())];
            let mut page = 0;
            while cursor.iter().any(Option::is_some) {
                for encrypted in if (r + page) % 2 == 0 { [true, false] } else { [false, true] } {
                    let i = usize::from(!encrypted);
                    let Some(a) = cursor[i].take() else { continue };
                    let start = Instant::now();
                    let (k, next) = if encrypted {
                        read_encrypted_page(b, "e", &a).await
                    } else {
                        read_plain_page(b, "p", &a).await
                    };
                    t[i] += start.elapsed();
                    count[i] += k;
                    cursor[i] = next;
                }
                page += 1;
            }
            assert_eq!(count, [n_records(), n_records()]);
            reads.push((t[0], t[1]));
        }
        report("read", &reads);
    });
}

/// One case once after the same setup (for callgrind).
fn run_profile<B: Backend + Reset>(rt: &tokio::runtime::Runtime, b: &Bench<B>, case: &str) {
    rt.block_on(async {
        clear(b).await;
        insert_encrypted(b, "e").await;
        insert_plain(b, "p").await;
        match case {
            "insert_encrypted" => insert_encrypted(b, "w").await,
            "insert_plaintext" => insert_plain(b, "w").await,
            "read_encrypted" => assert_eq!(read_encrypted(b, "e").await, n_records()),
            "read_plaintext" => assert_eq!(read_plain(b, "p").await, n_records()),
            "none" => {}
            other => panic!("unknown KLUIS_BENCH_PROFILE case {other}"),
        }
    });
}

fn run<B: Backend + Reset>(c: &mut Criterion, rt: &tokio::runtime::Runtime, engine: &str, b: Bench<B>) {
    if let Ok(case) = std::env::var("KLUIS_BENCH_PROFILE") {
        return run_profile(rt, &b, &case);
    }
    match std::env::var("KLUIS_BENCH_PAIRED").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(rounds) if rounds > 0 => run_paired(rt, engine, &b, rounds),
        _ => run_engine(c, rt, engine, b),
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    if engine_wanted("sqlite") {
        let sqlite = rt.block_on(async {
            setup(SqliteBackend::open(&dir.path().join("bench.db")).await.unwrap()).await
        });
        run(c, &rt, "sqlite", sqlite);
    }
    if !engine_wanted("postgres") {
        return;
    }

    let url = std::env::var("KLUIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // One database per run (by process id), dropped at the end: parallel runs do not collide.
    let db = format!("kluis_bench_{}", std::process::id());
    let pg = rt.block_on(async {
        let admin = sqlx::PgPool::connect(&url).await.ok()?;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await;
        sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.ok()?;
        admin.close().await;
        let db_url = match url.rfind('/') {
            Some(i) if i > url.find("://").map_or(0, |j| j + 2) => format!("{}/{db}", &url[..i]),
            _ => format!("{url}/{db}"),
        };
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&db_url).await.ok()?;
        Some(setup(PostgresBackend::new(pool)).await)
    });
    match pg {
        Some(pg) => {
            let pool = pg.store.backend().pool().clone();
            run(c, &rt, "postgres", pg);
            rt.block_on(async {
                pool.close().await;
                if let Ok(admin) = sqlx::PgPool::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        }
        None => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("postgres unreachable in CI: {url}");
            }
            println!("SKIPPED: postgres bench ({url} unreachable)");
        }
    }
}

criterion_group!(store, benches);
criterion_main!(store);
