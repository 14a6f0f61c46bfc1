//! Insert and read 10,000 records (2 medical + 4 general fields): encrypted through the store
//! versus the table an application would write instead, `bench_plain_absence` (one row per
//! record, one typed column per field, an index on the employee number), through the same sqlx
//! pool; SQLite and PostgreSQL (`KLUIS_TEST_POSTGRES_URL`, default the local server; skipped with
//! a message if unreachable).
//!
//! cargo bench -p kluis-store --bench records
//!
//! Both sides do the same work for the caller: inserts go in transactions of 500 records (the
//! plain side as one multi-row `INSERT` of 500 rows, as an app would write it); reads are pages of
//! 1,000 ordered by id, each row decoded into the same `kluis_store::Record` (same `Value` types)
//! the store returns. The bench touches the store only through its public API (and the pool, for
//! its own table), so it runs unchanged over any record layout.
//!
//! `KLUIS_BENCH_N` (a multiple of 500) changes the record count, for profiling runs under
//! `valgrind --tool=callgrind`; the recorded figures use the default 10,000 (1,000 under `--test`).
//! `KLUIS_BENCH_ENGINES=sqlite` (or `postgres`) runs one engine only. `KLUIS_BENCH_PAIRED=<rounds>`
//! replaces criterion by paired rounds for a loaded machine: in each round the encrypted and the
//! plain case take turns per transaction (inserts) or page (reads), alternating which goes first;
//! the rounds go to standard error, and standard output gets, per engine, the median ratio of
//! encrypted to plain throughput:
//!
//! ```text
//! records sqlite insert vs plain table: NN.N %
//! records sqlite read vs plain table: NN.N %
//! ```
//!
//! With `KLUIS_BENCH_BOUND=1` the paired rounds also time the plain table against tables that
//! hold what the store stores, written and read by plain SQL with no Kluis work: the store's own
//! rows copied column for column, and the same rows with one sealed value per domain instead of
//! one per field; each with the store's four indexes and with only the plain table's two. Those
//! ratios are the most any code storing such rows could reach (BENCHMARKS.md):
//!
//! ```text
//! records sqlite insert, the store's rows by plain SQL, vs plain table: NN.N %
//! records sqlite insert, the store's rows with the plain table's indexes only by plain SQL, vs plain table: NN.N %
//! records sqlite insert, one sealed value per domain by plain SQL, vs plain table: NN.N %
//! records sqlite insert, one sealed value per domain with the plain table's indexes only by plain SQL, vs plain table: NN.N %
//! ```
//!
//! `KLUIS_BENCH_PROFILE=<case>` (one of `insert_encrypted`, `insert_plaintext`, `read_encrypted`,
//! `read_plaintext`, `none`) runs the same setup and then that case once, for instruction counts
//! under callgrind (subtract `none`). Under `--test` (the smoke run) the plain table's records are
//! also checked to equal the store's, field by field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_store::{
    Access, Engine, FieldValue, NewRecord, Op, Postgres, Record, Schema, Sqlite, Store, Value,
};
use sqlx::Row;

fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Records per iteration: 10,000 (1,000 under `--test`) unless `KLUIS_BENCH_N` says otherwise.
fn n_records() -> usize {
    std::env::var("KLUIS_BENCH_N")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0 && n % BATCH == 0)
        .unwrap_or(if test_mode() { 1_000 } else { 10_000 })
}
const BATCH: usize = 500;
const PAGE: usize = 1000;
const SUBJECTS: usize = 200;
const TENANT: &str = "bench";
const COLLECTION: &str = "absence";

const SCHEMA: &str = r#"
[collections.absence.fields]
start_date      = { type = "date", domain = "general" }
end_date        = { type = "date", domain = "general" }
work_capacity   = { type = "percentage", domain = "general" }
employee_number = { type = "text", domain = "general", blind_index = true }
diagnosis       = { type = "text", domain = "medical" }
doctor_notes    = { type = "text", domain = "medical" }
"#;

fn id(tag: &str, i: usize) -> String {
    format!("{tag}-{i:06}")
}

fn subject(i: usize) -> String {
    format!("emp-{}", i % SUBJECTS)
}

/// The record's field values; the plain table has one column per field, in this order.
fn fields(i: usize) -> Vec<(&'static str, Value)> {
    vec![
        ("start_date", Value::Date("2025-03-01".into())),
        ("end_date", Value::Date("2025-03-14".into())),
        ("work_capacity", Value::Decimal(format!("{}", i % 101))),
        ("employee_number", Value::Text(format!("E{:06}", i % SUBJECTS))),
        ("diagnosis", Value::Text(format!("diagnosis text number {i} with some words"))),
        ("doctor_notes", Value::Text(format!("notes {i}: rest, reduce hours, review in two weeks"))),
    ]
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A column of the plain table as the app's string (dates and decimals are carried as text, as
/// the store's `Value` carries them).
fn text_of(v: &Value) -> &str {
    match v {
        Value::Text(s) | Value::Date(s) | Value::Decimal(s) => s,
        _ => unreachable!("the bench's fields are text, dates and decimals"),
    }
}

/// A typed value from a column's text.
type MakeValue = fn(String) -> Value;

/// A row of the plain table back into the `Record` the store would return: columns that are NULL
/// are fields never set.
#[allow(clippy::too_many_arguments)]
fn plain_record(
    id: String,
    subject: String,
    version: i64,
    created_at: i64,
    updated_at: i64,
    cols: [Option<String>; 6],
) -> Record {
    let [start_date, end_date, work_capacity, employee_number, diagnosis, doctor_notes] = cols;
    let mut fields = BTreeMap::new();
    let typed: [(&str, Option<String>, MakeValue); 6] = [
        ("start_date", start_date, Value::Date),
        ("end_date", end_date, Value::Date),
        ("work_capacity", work_capacity, Value::Decimal),
        ("employee_number", employee_number, Value::Text),
        ("diagnosis", diagnosis, Value::Text),
        ("doctor_notes", doctor_notes, Value::Text),
    ];
    for (name, col, make) in typed {
        if let Some(s) = col {
            fields.insert(name.to_owned(), FieldValue::Value(make(s)));
        }
    }
    Record {
        collection: COLLECTION.to_owned(),
        id,
        subject,
        version: version as u64,
        created_at,
        updated_at,
        retain_until: None,
        fields,
    }
}

/// A column of a stored row, read back as bytes, text or integer without opening anything (the
/// bound cases of `KLUIS_BENCH_BOUND`).
#[derive(Clone, Debug)]
enum Cell {
    Int(Option<i64>),
    Text(String),
    Blob(Option<Vec<u8>>),
}

/// The kind of a row-layout column, by its name.
fn cell_kind(col: &str) -> u8 {
    match col {
        "tenant" | "id" | "subject" => b't',
        "row_tag" => b'b',
        c if c.starts_with("f_") || c.starts_with("i_") => b'b',
        _ => b'i',
    }
}

/// The table an application would write instead of the store, per engine, through the store's
/// pool.
trait PlainTable: Engine {
    /// SQL types (integer, binary) for the bound tables.
    const BOUND_TYPES: (&'static str, &'static str);
    /// The end of a page query: `tenant` and `id` after the cursor, ordered, limited.
    const PAGE_SQL: &'static str;
    /// Runs one statement without parameters.
    fn run_sql(pool: &sqlx::Pool<Self::Db>, sql: &str) -> impl Future<Output = ()>;
    /// The columns of `kluis_r_absence`, in order.
    fn row_columns(pool: &sqlx::Pool<Self::Db>) -> impl Future<Output = Vec<String>>;
    /// Rows as stored, in pages: `(tenant = TENANT, id > after)` ordered by id.
    fn read_cells_page(
        pool: &sqlx::Pool<Self::Db>,
        table: &str,
        cols: &[String],
        after: &str,
    ) -> impl Future<Output = Vec<Vec<Cell>>>;
    /// One multi-row INSERT of `rows` in one transaction.
    fn insert_cells(
        pool: &sqlx::Pool<Self::Db>,
        table: &str,
        cols: &[String],
        rows: Vec<Vec<Cell>>,
    ) -> impl Future<Output = ()>;
    fn create_plain(pool: &sqlx::Pool<Self::Db>) -> impl Future<Output = ()>;
    /// Untimed between iterations: empty the table.
    fn clear_plain(pool: &sqlx::Pool<Self::Db>) -> impl Future<Output = ()>;
    /// Untimed: engine housekeeping after a clear (checkpoint, vacuum).
    fn settle(pool: &sqlx::Pool<Self::Db>) -> impl Future<Output = ()>;
    /// Records `first..first + BATCH` in one transaction, as one multi-row INSERT.
    fn insert_plain_chunk(pool: &sqlx::Pool<Self::Db>, tag: &str, first: usize) -> impl Future<Output = ()>;
    /// Up to `PAGE` records with id greater than `after`, ordered by id.
    fn read_plain_page(pool: &sqlx::Pool<Self::Db>, after: &str) -> impl Future<Output = Vec<Record>>;
}

/// The bound cases' statements, the same on both engines but for the database type.
macro_rules! bound_methods {
    ($db:ty) => {
        async fn run_sql(pool: &sqlx::Pool<Self::Db>, sql: &str) {
            sqlx::query(sql).execute(pool).await.unwrap();
        }

        async fn read_cells_page(
            pool: &sqlx::Pool<Self::Db>,
            table: &str,
            cols: &[String],
            after: &str,
        ) -> Vec<Vec<Cell>> {
            let sql = format!("SELECT {} FROM {table} {}", cols.join(", "), Self::PAGE_SQL);
            let rows =
                sqlx::query(&sql).bind(TENANT).bind(after).bind(PAGE as i64).fetch_all(pool).await.unwrap();
            rows.iter()
                .map(|r| {
                    cells_of(cols, |i, k| match k {
                        b't' => Cell::Text(r.get(i)),
                        b'b' => Cell::Blob(r.get(i)),
                        _ => Cell::Int(r.get(i)),
                    })
                })
                .collect()
        }

        async fn insert_cells(
            pool: &sqlx::Pool<Self::Db>,
            table: &str,
            cols: &[String],
            rows: Vec<Vec<Cell>>,
        ) {
            let mut q = sqlx::QueryBuilder::<$db>::new(format!("INSERT INTO {table} ({}) ", cols.join(", ")));
            q.push_values(rows, |mut b, row| {
                for c in row {
                    match c {
                        Cell::Int(v) => b.push_bind(v),
                        Cell::Text(v) => b.push_bind(v),
                        Cell::Blob(v) => b.push_bind(v),
                    };
                }
            });
            let mut tx = pool.begin().await.unwrap();
            q.build().execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
}

impl PlainTable for Sqlite {
    const BOUND_TYPES: (&'static str, &'static str) = ("INTEGER", "BLOB");
    const PAGE_SQL: &'static str = "WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?";

    async fn row_columns(pool: &sqlx::Pool<Self::Db>) -> Vec<String> {
        let rows = sqlx::query("SELECT name FROM pragma_table_info('kluis_r_absence') ORDER BY cid")
            .fetch_all(pool)
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    bound_methods!(sqlx::Sqlite);

    async fn create_plain(pool: &sqlx::Pool<Self::Db>) {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_plain_absence (
                tenant TEXT NOT NULL, id TEXT NOT NULL, subject TEXT NOT NULL,
                version INTEGER NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
                start_date TEXT, end_date TEXT, work_capacity TEXT, employee_number TEXT,
                diagnosis TEXT, doctor_notes TEXT,
                PRIMARY KEY (tenant, id))",
        )
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "CREATE INDEX IF NOT EXISTS bench_plain_absence_employee_number
                ON bench_plain_absence (tenant, employee_number)",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    async fn clear_plain(pool: &sqlx::Pool<Self::Db>) {
        sqlx::query("DELETE FROM bench_plain_absence").execute(pool).await.unwrap();
    }

    async fn settle(pool: &sqlx::Pool<Self::Db>) {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await.unwrap();
    }

    async fn insert_plain_chunk(pool: &sqlx::Pool<Self::Db>, tag: &str, first: usize) {
        let now = unix_now();
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO bench_plain_absence (tenant, id, subject, version, created_at, updated_at, \
             start_date, end_date, work_capacity, employee_number, diagnosis, doctor_notes) ",
        );
        let rows: Vec<(usize, Vec<(&str, Value)>)> = (first..first + BATCH).map(|i| (i, fields(i))).collect();
        q.push_values(&rows, |mut b, (i, f)| {
            b.push_bind(TENANT).push_bind(id(tag, *i)).push_bind(subject(*i)).push_bind(1_i64);
            b.push_bind(now).push_bind(now);
            for (_, v) in f {
                b.push_bind(text_of(v).to_owned());
            }
        });
        let mut tx = pool.begin().await.unwrap();
        q.build().execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn read_plain_page(pool: &sqlx::Pool<Self::Db>, after: &str) -> Vec<Record> {
        let rows = sqlx::query(
            "SELECT id, subject, version, created_at, updated_at, start_date, end_date, work_capacity,
                    employee_number, diagnosis, doctor_notes
             FROM bench_plain_absence WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(TENANT)
        .bind(after)
        .bind(PAGE as i64)
        .fetch_all(pool)
        .await
        .unwrap();
        rows.iter()
            .map(|r| {
                plain_record(
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    [r.get(5), r.get(6), r.get(7), r.get(8), r.get(9), r.get(10)],
                )
            })
            .collect()
    }
}

impl PlainTable for Postgres {
    const BOUND_TYPES: (&'static str, &'static str) = ("BIGINT", "BYTEA");
    const PAGE_SQL: &'static str = "WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3";

    async fn row_columns(pool: &sqlx::Pool<Self::Db>) -> Vec<String> {
        let rows = sqlx::query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'kluis_r_absence' \
             AND table_schema = current_schema() ORDER BY ordinal_position",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    bound_methods!(sqlx::Postgres);

    async fn create_plain(pool: &sqlx::Pool<Self::Db>) {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_plain_absence (
                tenant TEXT NOT NULL, id TEXT NOT NULL, subject TEXT NOT NULL,
                version BIGINT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
                start_date DATE, end_date DATE, work_capacity NUMERIC, employee_number TEXT,
                diagnosis TEXT, doctor_notes TEXT,
                PRIMARY KEY (tenant, id))",
        )
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "CREATE INDEX IF NOT EXISTS bench_plain_absence_employee_number
                ON bench_plain_absence (tenant, employee_number)",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    async fn clear_plain(pool: &sqlx::Pool<Self::Db>) {
        sqlx::query("TRUNCATE bench_plain_absence").execute(pool).await.unwrap();
    }

    async fn settle(pool: &sqlx::Pool<Self::Db>) {
        sqlx::query("VACUUM ANALYZE").execute(pool).await.unwrap();
    }

    async fn insert_plain_chunk(pool: &sqlx::Pool<Self::Db>, tag: &str, first: usize) {
        let now = unix_now();
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO bench_plain_absence (tenant, id, subject, version, created_at, updated_at, \
             start_date, end_date, work_capacity, employee_number, diagnosis, doctor_notes) ",
        );
        let rows: Vec<(usize, Vec<(&str, Value)>)> = (first..first + BATCH).map(|i| (i, fields(i))).collect();
        // Dates and the decimal go over the wire as text and are typed by the server (the crate
        // has no chrono/decimal types enabled; an app with them would bind those instead).
        q.push_values(&rows, |mut b, (i, f)| {
            b.push_bind(TENANT).push_bind(id(tag, *i)).push_bind(subject(*i)).push_bind(1_i64);
            b.push_bind(now).push_bind(now);
            for (name, v) in f {
                let s = text_of(v).to_owned();
                match *name {
                    "start_date" | "end_date" => {
                        b.push("CAST(").push_bind_unseparated(s).push_unseparated(" AS DATE)")
                    }
                    "work_capacity" => {
                        b.push("CAST(").push_bind_unseparated(s).push_unseparated(" AS NUMERIC)")
                    }
                    _ => b.push_bind(s),
                };
            }
        });
        let mut tx = pool.begin().await.unwrap();
        q.build().execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn read_plain_page(pool: &sqlx::Pool<Self::Db>, after: &str) -> Vec<Record> {
        let rows = sqlx::query(
            "SELECT id, subject, version, created_at, updated_at, start_date::text, end_date::text,
                    work_capacity::text, employee_number, diagnosis, doctor_notes
             FROM bench_plain_absence WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(TENANT)
        .bind(after)
        .bind(PAGE as i64)
        .fetch_all(pool)
        .await
        .unwrap();
        rows.iter()
            .map(|r| {
                plain_record(
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    [r.get(5), r.get(6), r.get(7), r.get(8), r.get(9), r.get(10)],
                )
            })
            .collect()
    }
}

fn cells_of(cols: &[String], mut get: impl FnMut(usize, u8) -> Cell) -> Vec<Cell> {
    cols.iter().enumerate().map(|(i, c)| get(i, cell_kind(c))).collect()
}

/// The bound cases of `KLUIS_BENCH_BOUND`: tables that hold what the store stores, written and
/// read by plain SQL with no key, seal, tag or audit work. `rows`: the store's own rows, column
/// for column; `domain`: the same rows with one sealed value per domain instead of one per field
/// (the general fields' plaintexts and the medical ones each under one 80-byte overhead, plus a
/// 2-byte length per field). Each comes twice: with the store's indexes (primary key, subject,
/// id, blind index), and with only the two the plain table has (primary key, blind index in the
/// place of the employee number's).
struct Bound {
    tables: Vec<BoundTable>,
}

/// (table, columns, rows as captured, index of the `id` column, what it holds, as printed).
type BoundTable = (String, Vec<String>, Vec<Vec<Cell>>, usize, &'static str);

const GENERAL_FIELDS: [&str; 4] = ["start_date", "end_date", "work_capacity", "employee_number"];
const MEDICAL_FIELDS: [&str; 2] = ["diagnosis", "doctor_notes"];

async fn make_bound<B: PlainTable>(b: &Bench<B>) -> Bound {
    let pool = b.store.pool();
    let cols = B::row_columns(pool).await;
    let mut rows = Vec::new();
    let mut after = String::new();
    loop {
        let page = B::read_cells_page(pool, "kluis_r_absence", &cols, &after).await;
        let id_at = cols.iter().position(|c| c == "id").unwrap();
        let last = page.last().map(|r| match &r[id_at] {
            Cell::Text(s) => s.clone(),
            _ => unreachable!(),
        });
        rows.extend(page);
        match last {
            Some(l) if rows.len() % PAGE == 0 => after = l,
            _ => break,
        }
    }
    assert_eq!(rows.len(), n_records());
    let at = |name: &str| cols.iter().position(|c| c == name).unwrap();
    let blob_len = |r: &[Cell], name: &str| match &r[at(name)] {
        Cell::Blob(Some(v)) => v.len(),
        _ => 0,
    };
    let keep = ["tenant", "id", "subject", "version", "created_at", "updated_at", "retain_until", "row_tag"];
    let index_cols: Vec<String> =
        cols.iter().filter(|c| c.starts_with("i_") || c.starts_with("j_")).cloned().collect();
    let mut dcols: Vec<String> = keep.iter().map(|c| (*c).to_owned()).collect();
    dcols.extend(["f_general", "k_general", "f_medical", "k_medical"].map(str::to_owned));
    dcols.extend(index_cols.iter().cloned());
    let drows: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            let mut out: Vec<Cell> = keep.iter().map(|c| r[at(c)].clone()).collect();
            for fields in [&GENERAL_FIELDS[..], &MEDICAL_FIELDS[..]] {
                let len = 80 + fields.iter().map(|f| blob_len(r, &format!("f_{f}")) - 80 + 2).sum::<usize>();
                out.push(Cell::Blob(Some((0..len).map(|i| (i * 131 + 7) as u8).collect())));
                out.push(Cell::Int(Some(1)));
            }
            out.extend(index_cols.iter().map(|c| r[at(c)].clone()));
            out
        })
        .collect();
    let (int, blob) = B::BOUND_TYPES;
    let mut tables = Vec::new();
    let sets = [
        ("bench_bound_rows", "the store's rows", cols.clone(), rows.clone(), true),
        (
            "bench_bound_rows_ix",
            "the store's rows with the plain table's indexes only",
            cols.clone(),
            rows,
            false,
        ),
        ("bench_bound_domain", "one sealed value per domain", dcols.clone(), drows.clone(), true),
        (
            "bench_bound_floor",
            "one sealed value per domain with the plain table's indexes only",
            dcols,
            drows,
            false,
        ),
    ];
    for (name, label, cs, rs, all_indexes) in sets {
        let defs: Vec<String> = cs
            .iter()
            .map(|c| {
                let ty = match cell_kind(c) {
                    b't' => "TEXT",
                    b'b' => blob,
                    _ => int,
                };
                let null = if ["tenant", "id", "subject", "version", "created_at", "updated_at", "row_tag"]
                    .contains(&c.as_str())
                {
                    " NOT NULL"
                } else {
                    ""
                };
                format!("{c} {ty}{null}")
            })
            .collect();
        let index = cs.iter().find(|c| c.starts_with("i_")).unwrap();
        let mut ddl = vec![
            format!("DROP TABLE IF EXISTS {name}"),
            format!("CREATE TABLE {name} ({}, PRIMARY KEY (tenant, id))", defs.join(", ")),
            format!("CREATE INDEX {name}_x ON {name} (tenant, {index})"),
        ];
        if all_indexes {
            ddl.push(format!("CREATE INDEX {name}_s ON {name} (tenant, subject)"));
            ddl.push(format!("CREATE INDEX {name}_i ON {name} (id)"));
        }
        for sql in ddl {
            B::run_sql(pool, &sql).await;
        }
        let id_at = cs.iter().position(|c| c == "id").unwrap();
        tables.push((name.to_owned(), cs, rs, id_at, label));
    }
    Bound { tables }
}

struct Bench<B: Engine> {
    store: Store<B>,
    access: Access,
}

async fn setup<B: PlainTable>(pool: sqlx::Pool<B::Db>, keyring: &LocalKeyring) -> Bench<B> {
    let store = Store::new(pool, Schema::from_toml(SCHEMA).unwrap());
    store.migrate().await.unwrap();
    B::create_plain(store.pool()).await;
    let tenant = TenantId::new(TENANT).unwrap();
    let access =
        store.admin_access(keyring, &tenant, &[DomainName::general(), DomainName::medical()]).await.unwrap();
    let b = Bench { store, access };
    // Untimed: one transaction creates the subject keys of all 200 subjects (each in its own
    // transaction), so every timed round writes for known employees, as an app mostly does.
    insert_encrypted_chunk(&b, "warm", 0).await;
    clear(&b).await;
    b
}

async fn insert_encrypted<B: Engine>(b: &Bench<B>, tag: &str) {
    for chunk in 0..n_records() / BATCH {
        insert_encrypted_chunk(b, tag, chunk).await;
    }
}

async fn insert_encrypted_chunk<B: Engine>(b: &Bench<B>, tag: &str, chunk: usize) {
    let ops = (chunk * BATCH..(chunk + 1) * BATCH)
        .map(|i| {
            let mut rec = NewRecord::new(&subject(i)).id(&id(tag, i));
            rec.fields = fields(i).into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
            Op::Insert { collection: COLLECTION.into(), record: rec }
        })
        .collect();
    b.store.transaction(&b.access, ops).await.unwrap();
}

async fn insert_plain<B: PlainTable>(b: &Bench<B>, tag: &str) {
    for chunk in 0..n_records() / BATCH {
        B::insert_plain_chunk(b.store.pool(), tag, chunk * BATCH).await;
    }
}

/// One page of the store after `after`: (records, cursor of the next page).
async fn read_encrypted_page<B: Engine>(b: &Bench<B>, after: Option<&str>) -> (usize, Option<String>) {
    let page = b.store.list(&b.access, COLLECTION, None, after, PAGE as u32).await.unwrap();
    let n = page.records.len();
    std::hint::black_box(page.records);
    (n, page.next)
}

/// One page of the plain table after `after`, decoded into `Record`s.
async fn read_plain_page<B: PlainTable>(b: &Bench<B>, after: Option<&str>) -> (usize, Option<String>) {
    let records = B::read_plain_page(b.store.pool(), after.unwrap_or("")).await;
    let n = records.len();
    let next = if n == PAGE { records.last().map(|r| r.id.clone()) } else { None };
    std::hint::black_box(records);
    (n, next)
}

async fn read_all<B: PlainTable>(b: &Bench<B>, encrypted: bool) -> usize {
    let (mut n, mut after) = (0, None::<String>);
    loop {
        let (k, next) = if encrypted {
            read_encrypted_page(b, after.as_deref()).await
        } else {
            read_plain_page(b, after.as_deref()).await
        };
        n += k;
        match next {
            Some(a) => after = Some(a),
            None => return n,
        }
    }
}

/// Untimed between iterations: delete every record of the store through its API (in
/// transactions of 500), empty the plain table, and let the engine settle, so every iteration
/// starts from the same state (the subject keys stay, as they would in an application).
async fn clear<B: PlainTable>(b: &Bench<B>) {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = b.store.list(&b.access, COLLECTION, None, after.as_deref(), PAGE as u32).await.unwrap();
        ids.extend(page.records.into_iter().map(|r| r.id));
        match page.next {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    for chunk in ids.chunks(BATCH) {
        let ops = chunk
            .iter()
            .map(|id| Op::Delete {
                collection: COLLECTION.into(),
                id: id.clone(),
                expected_version: None,
                legal_override: None,
            })
            .collect();
        b.store.transaction(&b.access, ops).await.unwrap();
    }
    B::clear_plain(b.store.pool()).await;
    B::settle(b.store.pool()).await;
}

/// Both sides hold records `tag-0..N`; the read cases read those.
async fn fill<B: PlainTable>(b: &Bench<B>, tag: &str) {
    clear(b).await;
    insert_encrypted(b, tag).await;
    insert_plain(b, tag).await;
    B::settle(b.store.pool()).await;
}

/// The smoke run's check: the plain table gives the caller the same records as the store.
async fn check_same_records<B: PlainTable>(b: &Bench<B>) {
    let (mut after, mut seen) = (None::<String>, 0);
    loop {
        let enc = b.store.list(&b.access, COLLECTION, None, after.as_deref(), PAGE as u32).await.unwrap();
        let plain = B::read_plain_page(b.store.pool(), after.as_deref().unwrap_or("")).await;
        assert_eq!(enc.records.len(), plain.len());
        for (e, p) in enc.records.iter().zip(&plain) {
            let same = |r: &Record| {
                (r.collection.clone(), r.id.clone(), r.subject.clone(), r.version, r.fields.clone())
            };
            assert_eq!(same(e), same(p), "record {}", e.id);
        }
        seen += plain.len();
        match enc.next {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, n_records());
}

fn run_engine<B: PlainTable>(c: &mut Criterion, rt: &tokio::runtime::Runtime, engine: &str, b: &Bench<B>) {
    let mut g = c.benchmark_group(format!("store_{engine}"));
    // Flat sampling: ten samples of one iteration each (an iteration is 10,000 records).
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(100));
    g.measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(n_records() as u64));
    for mode in ["encrypted", "plain_table"] {
        g.bench_function(BenchmarkId::new("insert_10k", mode), |bch| {
            bch.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        clear(b).await;
                        let t = Instant::now();
                        if mode == "encrypted" {
                            insert_encrypted(b, "w").await
                        } else {
                            insert_plain(b, "w").await
                        }
                        total += t.elapsed();
                    }
                    total
                })
            })
        });
    }
    rt.block_on(fill(b, "e"));
    if test_mode() {
        rt.block_on(check_same_records(b));
    }
    for mode in ["encrypted", "plain_table"] {
        g.bench_function(BenchmarkId::new("read_10k", mode), |bch| {
            bch.iter(|| {
                rt.block_on(async { assert_eq!(read_all(b, mode == "encrypted").await, n_records()) })
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

/// Paired rounds: (encrypted, plain) timed back to back, the order alternating.
fn run_paired<B: PlainTable>(rt: &tokio::runtime::Runtime, engine: &str, b: &Bench<B>, rounds: usize) {
    let report = |op: &str, pairs: &[(Duration, Duration)]| {
        for (i, (e, p)) in pairs.iter().enumerate() {
            eprintln!(
                "paired {engine} {op} round {i}: encrypted {:.1} ms, plain table {:.1} ms, ratio {:.1} %",
                e.as_secs_f64() * 1e3,
                p.as_secs_f64() * 1e3,
                100.0 * p.as_secs_f64() / e.as_secs_f64()
            );
        }
        let ratio = median(pairs.iter().map(|(e, p)| p.as_secs_f64() / e.as_secs_f64()).collect());
        let enc = median(pairs.iter().map(|(e, _)| e.as_secs_f64()).collect());
        let plain = median(pairs.iter().map(|(_, p)| p.as_secs_f64()).collect());
        eprintln!(
            "paired {engine} {op} median of {} rounds: encrypted {:.1} ms ({:.0} records/s), plain table {:.1} ms \
             ({:.0} records/s)",
            pairs.len(),
            enc * 1e3,
            n_records() as f64 / enc,
            plain * 1e3,
            n_records() as f64 / plain,
        );
        println!("records {engine} {op} vs plain table: {:.1} %", 100.0 * ratio);
    };
    rt.block_on(async {
        // Inserts: the two sides take turns per transaction of 500 records (the order
        // alternating), so load changes hit both alike.
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
                        B::insert_plain_chunk(b.store.pool(), "w", chunk * BATCH).await
                    }
                    t[usize::from(!encrypted)] += start.elapsed();
                }
            }
            inserts.push((t[0], t[1]));
        }
        report("insert", &inserts);
        fill(b, "e").await;
        // Reads: page by page, taking turns the same way.
        let mut reads = Vec::new();
        for r in 0..rounds * 3 {
            let mut t = [Duration::ZERO; 2];
            let mut count = [0usize; 2];
            let mut cursor: [Option<Option<String>>; 2] = [Some(None), Some(None)];
            let mut page = 0;
            while cursor.iter().any(Option::is_some) {
                for encrypted in if (r + page) % 2 == 0 { [true, false] } else { [false, true] } {
                    let i = usize::from(!encrypted);
                    let Some(after) = cursor[i].take() else { continue };
                    let start = Instant::now();
                    let (k, next) = if encrypted {
                        read_encrypted_page(b, after.as_deref()).await
                    } else {
                        read_plain_page(b, after.as_deref()).await
                    };
                    t[i] += start.elapsed();
                    count[i] += k;
                    cursor[i] = next.map(Some);
                }
                page += 1;
            }
            assert_eq!(count, [n_records(), n_records()]);
            reads.push((t[0], t[1]));
        }
        report("read", &reads);
        if std::env::var("KLUIS_BENCH_BOUND").is_ok_and(|v| v == "1") {
            run_bound(b, engine, rounds).await;
        }
    });
}

/// `KLUIS_BENCH_BOUND=1`: the plain table against each table of [`make_bound`] (the store's rows,
/// rows with one sealed value per domain, each with the store's indexes and with the plain
/// table's), written and read by plain SQL, paired the same way. The ratios are the most any code
/// that stores those rows could reach.
async fn run_bound<B: PlainTable>(b: &Bench<B>, engine: &str, rounds: usize) {
    let bound = make_bound(b).await;
    let pool = b.store.pool();
    let names: Vec<&str> = bound.tables.iter().map(|t| t.4).collect();
    let sides = names.len() + 1;
    let mut ins = vec![Vec::new(); names.len()];
    for r in 0..rounds {
        clear(b).await;
        for (t, ..) in &bound.tables {
            B::run_sql(pool, &format!("DELETE FROM {t}")).await;
        }
        B::settle(pool).await;
        let mut t = vec![Duration::ZERO; sides];
        for chunk in 0..n_records() / BATCH {
            let mut order: Vec<usize> = (0..sides).collect();
            order.rotate_left((r + chunk) % sides);
            for side in order {
                let start = Instant::now();
                if side == 0 {
                    B::insert_plain_chunk(pool, "w", chunk * BATCH).await;
                } else {
                    let (name, cols, rows, id_at, _) = &bound.tables[side - 1];
                    let part: Vec<Vec<Cell>> = (chunk * BATCH..(chunk + 1) * BATCH)
                        .map(|i| {
                            let mut row = rows[i].clone();
                            row[*id_at] = Cell::Text(id("w", i));
                            row
                        })
                        .collect();
                    B::insert_cells(pool, name, cols, part).await;
                }
                t[side] += start.elapsed();
            }
        }
        for k in 0..names.len() {
            ins[k].push((t[k + 1], t[0]));
        }
    }
    // Reads: each bound table holds the captured rows (ids `e-...`), the plain table its own.
    clear(b).await;
    insert_plain(b, "e").await;
    for (name, cols, rows, ..) in &bound.tables {
        B::run_sql(pool, &format!("DELETE FROM {name}")).await;
        for part in rows.chunks(BATCH) {
            B::insert_cells(pool, name, cols, part.to_vec()).await;
        }
    }
    B::settle(pool).await;
    let mut reads = vec![Vec::new(); names.len()];
    for r in 0..rounds * 3 {
        let mut t = vec![Duration::ZERO; sides];
        let mut after = vec![String::new(); sides];
        let mut done = vec![false; sides];
        let mut page = 0;
        while done.iter().any(|d| !d) {
            let mut order: Vec<usize> = (0..sides).collect();
            order.rotate_left((r + page) % sides);
            for side in order {
                if done[side] {
                    continue;
                }
                let start = Instant::now();
                let (n, last) = if side == 0 {
                    let recs = B::read_plain_page(pool, &after[0]).await;
                    (recs.len(), recs.last().map(|r| r.id.clone()))
                } else {
                    let (name, cols, _, id_at, _) = &bound.tables[side - 1];
                    let rows = B::read_cells_page(pool, name, cols, &after[side]).await;
                    let last = rows.last().map(|r| match &r[*id_at] {
                        Cell::Text(s) => s.clone(),
                        _ => unreachable!(),
                    });
                    (std::hint::black_box(rows).len(), last)
                };
                t[side] += start.elapsed();
                match last {
                    Some(l) if n == PAGE => after[side] = l,
                    _ => done[side] = true,
                }
            }
            page += 1;
        }
        for k in 0..names.len() {
            reads[k].push((t[k + 1], t[0]));
        }
    }
    for (k, name) in names.iter().enumerate() {
        for (op, pairs) in [("insert", &ins[k]), ("read", &reads[k])] {
            let ratio = median(pairs.iter().map(|(e, p)| p.as_secs_f64() / e.as_secs_f64()).collect());
            let side = median(pairs.iter().map(|(e, _)| e.as_secs_f64()).collect());
            let plain = median(pairs.iter().map(|(_, p)| p.as_secs_f64()).collect());
            eprintln!(
                "bound {engine} {op}, {name} by plain SQL: {:.1} ms, plain table {:.1} ms",
                side * 1e3,
                plain * 1e3
            );
            println!("records {engine} {op}, {name} by plain SQL, vs plain table: {:.1} %", 100.0 * ratio);
        }
    }
}

/// One case once after the same setup (for callgrind).
fn run_profile<B: PlainTable>(rt: &tokio::runtime::Runtime, b: &Bench<B>, case: &str) {
    rt.block_on(async {
        fill(b, "e").await;
        match case {
            "insert_encrypted" => insert_encrypted(b, "w").await,
            "insert_plaintext" => insert_plain(b, "w").await,
            "read_encrypted" => assert_eq!(read_all(b, true).await, n_records()),
            "read_plaintext" => assert_eq!(read_all(b, false).await, n_records()),
            "none" => {}
            other => panic!("unknown KLUIS_BENCH_PROFILE case {other}"),
        }
    });
}

fn run<B: PlainTable>(c: &mut Criterion, rt: &tokio::runtime::Runtime, engine: &str, b: &Bench<B>) {
    if let Ok(case) = std::env::var("KLUIS_BENCH_PROFILE") {
        return run_profile(rt, b, &case);
    }
    match std::env::var("KLUIS_BENCH_PAIRED").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(rounds) if rounds > 0 => run_paired(rt, engine, b, rounds),
        _ => run_engine(c, rt, engine, b),
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let keyring = LocalKeyring::generate(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    if engine_wanted("sqlite") {
        let sqlite = rt.block_on(async {
            setup::<Sqlite>(Sqlite::open(&dir.path().join("bench.db")).await.unwrap(), &keyring).await
        });
        run(c, &rt, "sqlite", &sqlite);
        rt.block_on(sqlite.store.pool().close());
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
        Some(setup::<Postgres>(pool, &keyring).await)
    });
    match pg {
        Some(pg) => {
            run(c, &rt, "postgres", &pg);
            rt.block_on(async {
                pg.store.pool().close().await;
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
