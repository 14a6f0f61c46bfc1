//! MariaDB and MySQL (InnoDB). How they differ from the other two:
//!
//! - **Placeholders** `?`, as the store's SQL is written.
//! - **Locks**: `LOCK IN SHARE MODE` / `FOR UPDATE` on a `SELECT`. A plain read in a transaction
//!   sees the transaction's first snapshot (repeatable read); a locking read sees the latest
//!   committed rows, so a `COUNT(*)` that must see them takes a shared lock. No aggregate locks
//!   the rows it counts, so a check that must hold them reads them with a locking read.
//! - **Types**: `BIGINT`, `LONGBLOB`; ids are `VARCHAR(128)` in `ascii_bin`, which compares byte
//!   by byte like the other engines (and which the driver reports as binary: names are read as
//!   bytes and checked to be UTF-8); a blind index is `VARBINARY(64)`, short enough for an index.
//! - **Upsert**: `ON DUPLICATE KEY UPDATE` (the others: `ON CONFLICT ... DO UPDATE`).
//! - **Retry**: deadlock (1213, SQLSTATE 40001) and lock wait timeout (1205, HY000).
//! - **Purge**: `OPTIMIZE TABLE` rebuilds each key table into a new tablespace file.

use sqlx::Database;

use super::{Ddl, Engine, EngineKind, Sealed};
use crate::error::Result;
use crate::schema::FieldType;

/// MariaDB or MySQL.
#[derive(Clone, Copy, Debug, Default)]
pub struct MySql;

impl Sealed for MySql {}

impl Engine for MySql {
    type Db = sqlx::MySql;
    type Args<'q> = sqlx::mysql::MySqlArguments;

    const KIND: EngineKind = EngineKind::MySql;
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[
        (1, "init", include_str!("../../migrations/mysql/0001_init.sql")),
        (2, "audit", include_str!("../../migrations/mysql/0002_audit.sql")),
        (3, "key_versions", include_str!("../../migrations/mysql/0003_key_versions.sql")),
        (4, "access", include_str!("../../migrations/mysql/0004_access.sql")),
        (5, "key_tags", include_str!("../../migrations/mysql/0005_key_tags.sql")),
        (6, "tables", include_str!("../../migrations/mysql/0006_tables.sql")),
        (7, "row_log", include_str!("../../migrations/mysql/0007_row_log.sql")),
        (8, "instances", include_str!("../../migrations/mysql/0008_instances.sql")),
    ];
    const SHARE_LOCK: &'static str = " LOCK IN SHARE MODE";
    const UPDATE_LOCK: &'static str = " FOR UPDATE";
    const CLAIM_LOCK: &'static str = " FOR UPDATE SKIP LOCKED";
    const STREAM_PAGES: bool = true;
    const HEAD_NOWAIT: Option<&'static str> =
        Some("SELECT seq FROM kluis_audit_head WHERE id = 1 FOR UPDATE NOWAIT");
    const BEGIN_WRITE: Option<&'static str> = None;
    const PURGE_STEPS: &'static str =
        "OPTIMIZE TABLE of kluis_subject_keys and kluis_domain_keys (rebuilt into new tablespace files)";
    const LOCK_HEAD: &'static str = "SELECT seq FROM kluis_audit_head WHERE id = 1 FOR UPDATE";
    const COUNT_LOCK: &'static str = " LOCK IN SHARE MODE";
    const DDL: Ddl = Ddl {
        int: "BIGINT",
        blob: "LONGBLOB",
        id: "VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin",
        index: "VARBINARY(64)",
    };
    const COLUMNS_SQL: &'static str = "SELECT column_name FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name = ?";

    fn clear_type(ty: FieldType) -> &'static str {
        match ty {
            FieldType::Integer => "BIGINT",
            FieldType::Bool => "BOOLEAN",
            FieldType::Bytes => "LONGBLOB",
            FieldType::Date => "VARCHAR(10) CHARACTER SET ascii COLLATE ascii_bin",
            _ => "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        }
    }

    fn count_shared(_from_where: &str) -> Option<String> {
        // The caller reads the rows with a locking read instead.
        None
    }

    fn upsert(table: &str, key: &str, value: &str) -> String {
        format!(
            "INSERT INTO {table} ({key}, {value}) VALUES (?, ?) ON DUPLICATE KEY UPDATE {value} = VALUES({value})"
        )
    }

    fn keep_existing(column: &str) -> String {
        // A no-op update: MariaDB's only way short of INSERT IGNORE, which would hide other errors.
        format!(" ON DUPLICATE KEY UPDATE {column} = {column}")
    }

    fn bytes_at(column: &str, from: u32, len: u32) -> String {
        format!("SUBSTRING({column}, {from}, {len})")
    }

    fn null_safe_eq(column: &str) -> String {
        format!("{column} <=> ?")
    }

    fn be_u32(expr: &str) -> String {
        format!("UNHEX(LPAD(HEX({expr}), 8, '0'))")
    }

    /// MariaDB answers `NOWAIT` on a held lock with error 1205, "Lock wait timeout exceeded"
    /// (rolling back the statement only); MySQL 8 with 3572, "... NOWAIT is set".
    fn lock_unavailable(e: &dyn sqlx::error::DatabaseError) -> bool {
        e.message().contains("Lock wait timeout") || e.message().contains("NOWAIT")
    }

    /// MariaDB's `idle_transaction_timeout` (the session's: MariaDB has no per-transaction
    /// setting; no Kluis transaction waits that long for its client). MySQL has no such
    /// variable and answers with an error, which the worker reports.
    fn lease_sql(secs: u32) -> Option<String> {
        Some(format!("SET SESSION idle_transaction_timeout = {secs}"))
    }

    fn retryable(e: &dyn sqlx::error::DatabaseError) -> bool {
        matches!(e.code().as_deref(), Some("40001"))
            || e.message().contains("Deadlock")
            || e.message().contains("Lock wait timeout")
    }

    fn exec<'c>(
        c: &'c mut <Self::Db as Database>::Connection,
    ) -> impl sqlx::Executor<'c, Database = Self::Db> + 'c {
        c
    }

    fn rows_affected(r: &<Self::Db as Database>::QueryResult) -> u64 {
        r.rows_affected()
    }

    fn cast_text(column: &str) -> String {
        format!("CAST({column} AS CHAR)")
    }

    async fn purge_tables(pool: &sqlx::Pool<Self::Db>, tables: &[&str]) -> Result<()> {
        for t in tables {
            sqlx::query(&format!("OPTIMIZE TABLE {t}")).fetch_all(pool).await?;
        }
        Ok(())
    }
}
