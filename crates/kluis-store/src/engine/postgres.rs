//! PostgreSQL. How it differs from the other two:
//!
//! - **Placeholders** `$1, $2, ...`: [`Engine::sql`] numbers the store's `?` (its SQL has no `?`
//!   inside a literal).
//! - **Locks**: `FOR SHARE` / `FOR UPDATE` on a `SELECT`. Transactions run at read committed,
//!   so each statement sees the rows committed before it started: a `COUNT(*)` needs no lock.
//!   `FOR SHARE` cannot stand beside an aggregate: a count that must hold its rows locks them in
//!   a subquery.
//! - **Types**: `BIGINT`, `BYTEA`, `TEXT`, `BOOLEAN`.
//! - **Retry**: serialization failure (40001) and deadlock (40P01).
//! - **Purge**: `VACUUM (FULL)` writes each key table to a new file; the old one, with the dead
//!   tuples that held key bytes, is unlinked at the next checkpoint.

use std::borrow::Cow;

use sqlx::Database;

use super::{Cols, Ddl, Engine, EngineKind, Sealed};
use crate::error::Result;
use crate::schema::FieldType;

/// PostgreSQL.
#[derive(Clone, Copy, Debug, Default)]
pub struct Postgres;

impl Sealed for Postgres {}

/// How long a purge waits for other transactions of the database to end.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Engine for Postgres {
    type Db = sqlx::Postgres;
    type Args<'q> = sqlx::postgres::PgArguments;

    const KIND: EngineKind = EngineKind::Postgres;
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[
        (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
        (2, "audit", include_str!("../../migrations/postgres/0002_audit.sql")),
        (3, "key_versions", include_str!("../../migrations/postgres/0003_key_versions.sql")),
        (4, "access", include_str!("../../migrations/postgres/0004_access.sql")),
        (5, "key_tags", include_str!("../../migrations/postgres/0005_key_tags.sql")),
        (6, "tables", include_str!("../../migrations/postgres/0006_tables.sql")),
        (7, "row_log", include_str!("../../migrations/postgres/0007_row_log.sql")),
        (8, "instances", include_str!("../../migrations/postgres/0008_instances.sql")),
    ];
    const SHARE_LOCK: &'static str = " FOR SHARE";
    const UPDATE_LOCK: &'static str = " FOR UPDATE";
    const CLAIM_LOCK: &'static str = " FOR UPDATE SKIP LOCKED";
    const STREAM_PAGES: bool = true;
    const HEAD_NOWAIT: Option<&'static str> =
        Some("SELECT seq FROM kluis_audit_head WHERE id = 1 FOR UPDATE NOWAIT");
    const BEGIN_WRITE: Option<&'static str> = None;
    const PURGE_STEPS: &'static str = "VACUUM (FULL) of kluis_subject_keys and kluis_domain_keys, twice (each after waiting up to 10 s for other transactions' snapshots to end)";
    const LOCK_HEAD: &'static str = "SELECT seq FROM kluis_audit_head WHERE id = 1 FOR UPDATE";
    const COUNT_LOCK: &'static str = "";
    const DDL: Ddl = Ddl { int: "BIGINT", blob: "BYTEA", id: "TEXT", index: "BYTEA" };
    const COLUMNS_SQL: &'static str = "SELECT column_name FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = ?";

    fn clear_type(ty: FieldType) -> &'static str {
        match ty {
            FieldType::Integer => "BIGINT",
            FieldType::Bool => "BOOLEAN",
            FieldType::Bytes => "BYTEA",
            _ => "TEXT",
        }
    }

    fn sql(sql: &str) -> Cow<'_, str> {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0u32;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    fn count_shared(from_where: &str) -> Option<String> {
        // No FOR SHARE beside an aggregate: the subquery takes the locks.
        Some(format!("SELECT COUNT(*) FROM (SELECT 1 FROM {from_where} FOR SHARE) AS held"))
    }

    async fn count_subject_keys(
        c: &mut <Self::Db as Database>::Connection,
        keys: &[(&str, &str, &str, i64)],
    ) -> Result<Option<i64>> {
        // Four arrays joined as a table: one plan whatever the number of keys.
        let mut cols: (Vec<&str>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
        for (t, d, s, v) in keys {
            cols.0.push(t);
            cols.1.push(d);
            cols.2.push(s);
            cols.3.push(*v);
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM kluis_subject_keys k \
             JOIN unnest($1::text[], $2::text[], $3::text[], $4::int8[]) AS u(tenant, domain, subject, version) \
             ON k.tenant = u.tenant AND k.domain = u.domain AND k.subject = u.subject AND k.version = u.version \
             FOR SHARE OF k) AS held",
        )
        .bind(cols.0)
        .bind(cols.1)
        .bind(cols.2)
        .bind(cols.3)
        .fetch_one(&mut *c)
        .await?;
        Ok(Some(n))
    }

    fn bytes_at(column: &str, from: u32, len: u32) -> String {
        format!("substring({column} from {from} for {len})")
    }

    fn null_safe_eq(column: &str) -> String {
        format!("{column} IS NOT DISTINCT FROM ?")
    }

    fn be_u32(expr: &str) -> String {
        format!("int4send(CAST({expr} AS INTEGER))")
    }

    /// `55P03` lock_not_available.
    fn lock_unavailable(e: &dyn sqlx::error::DatabaseError) -> bool {
        e.code().as_deref() == Some("55P03")
    }

    /// `idle_in_transaction_session_timeout`, for this transaction only (`SET LOCAL`): the server
    /// ends the session of a worker that stops answering, and with it the batch's row locks.
    fn lease_sql(secs: u32) -> Option<String> {
        Some(format!("SET LOCAL idle_in_transaction_session_timeout = '{secs}s'"))
    }

    fn retryable(e: &dyn sqlx::error::DatabaseError) -> bool {
        matches!(e.code().as_deref(), Some("40001" | "40P01"))
    }

    fn exec<'c>(
        c: &'c mut <Self::Db as Database>::Connection,
    ) -> impl sqlx::Executor<'c, Database = Self::Db> + 'c {
        c
    }

    fn rows_affected(r: &<Self::Db as Database>::QueryResult) -> u64 {
        r.rows_affected()
    }

    // A text bind compared with an integer (or uuid, ...) column is an error here ("operator
    // does not exist"), so keys read as text are bound back cast to their column's type.
    const COLUMN_TYPE_SQL: Option<&'static str> = Some(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = CAST(? AS regclass) AND a.attname = lower(?) AND NOT a.attisdropped",
    );

    fn param_as(ty: &str) -> String {
        format!("CAST(? AS {ty})")
    }

    async fn purge_tables(pool: &sqlx::Pool<Self::Db>, tables: &[&str]) -> Result<()> {
        // A row version that another transaction of this database could still see ("recently
        // dead": any backend with an older snapshot, an autovacuum ANALYZE included) is copied
        // into the new file, so the rewrite waits until no other backend of the database holds a
        // snapshot (up to PURGE_WAIT), and runs twice: a snapshot taken between the check and the
        // first rewrite keeps nothing the second one would.
        let mut conn = pool.acquire().await?;
        for _ in 0..2 {
            let deadline = std::time::Instant::now() + PURGE_WAIT;
            loop {
                let row = sqlx::query(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL",
                )
                .fetch_one(&mut *conn)
                .await?;
                let others: i64 = row.col(0)?;
                if others == 0 || std::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            for t in tables {
                sqlx::query(&format!("VACUUM (FULL) {t}")).execute(&mut *conn).await?;
            }
        }
        Ok(())
    }
}
