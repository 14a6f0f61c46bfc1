//! SQLite, the embedded default. How it differs from the other two:
//!
//! - **Placeholders** `?`, as the store's SQL is written.
//! - **Locks**: none on a `SELECT`. A write transaction holds the database's one write lock
//!   from its first write to its commit, so write transactions are serial and a row read inside
//!   one cannot change under it. The audit head is locked by a no-op `UPDATE` of its row, which
//!   takes the write lock. A transaction that reads and then writes begins with
//!   `BEGIN IMMEDIATE`, which takes the write lock at once, so it cannot fail on a snapshot
//!   another writer moved on from.
//! - **Types**: `INTEGER` (64-bit), `BLOB`, `TEXT`; a boolean is an `INTEGER` 0 or 1.
//! - **Retry**: `SQLITE_BUSY` (5) and its extended codes 517 (`BUSY_SNAPSHOT`) and 261
//!   (`BUSY_RECOVERY`) when the busy timeout ran out.
//! - **Purge**: `secure_delete` zeroes freed cells and pages, `VACUUM` rewrites the file without
//!   free pages, and `wal_checkpoint(TRUNCATE)` empties the write-ahead log.

use sqlx::Database;

use super::{Cols, Ddl, Engine, EngineKind, Sealed};
use crate::error::{Result, StoreError};
use crate::schema::FieldType;

/// SQLite.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sqlite;

impl Sealed for Sqlite {}

impl Sqlite {
    /// Opens (creating if needed) a database file with WAL journaling, `secure_delete=ON`,
    /// `synchronous=FULL`, foreign keys and a busy timeout, and room for 1,000 rows between
    /// sqlx's worker thread and the caller (a whole page: the worker reads ahead instead of
    /// waiting for the caller, and waking it, row by row; sqlx's default is 50).
    ///
    /// On Unix a new database file is created with mode `0600` (owner read and write, whatever
    /// the umask) before SQLite opens it; SQLite gives its `-wal` and `-shm` files the database
    /// file's mode. An existing file keeps its mode.
    pub async fn open(path: &std::path::Path) -> Result<sqlx::SqlitePool> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
        create_private(path)?;
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10))
            .pragma("secure_delete", "ON")
            .row_buffer_size(1000);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        Ok(pool)
    }
}

/// Creates `path` as an empty file of mode `0600` if it does not exist (Unix; elsewhere SQLite
/// creates it). The mode is set after creation too, so a restrictive or permissive umask makes no
/// difference.
fn create_private(path: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(file) => file
                .set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::Database(sqlx::Error::Io(e))),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl Engine for Sqlite {
    type Db = sqlx::Sqlite;
    type Args<'q> = sqlx::sqlite::SqliteArguments<'q>;

    const KIND: EngineKind = EngineKind::Sqlite;
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)] = &[
        (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
        (2, "audit", include_str!("../../migrations/sqlite/0002_audit.sql")),
        (3, "key_versions", include_str!("../../migrations/sqlite/0003_key_versions.sql")),
        (4, "access", include_str!("../../migrations/sqlite/0004_access.sql")),
        (5, "key_tags", include_str!("../../migrations/sqlite/0005_key_tags.sql")),
        (6, "tables", include_str!("../../migrations/sqlite/0006_tables.sql")),
        (7, "row_log", include_str!("../../migrations/sqlite/0007_row_log.sql")),
        (8, "instances", include_str!("../../migrations/sqlite/0008_instances.sql")),
    ];
    const SHARE_LOCK: &'static str = "";
    const UPDATE_LOCK: &'static str = "";
    /// Nothing to claim: a batch's `BEGIN IMMEDIATE` holds the database's write lock, so batches
    /// of several workers run one after another.
    const CLAIM_LOCK: &'static str = "";
    const STREAM_PAGES: bool = false;
    const HEAD_NOWAIT: Option<&'static str> = None;
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    const PURGE_STEPS: &'static str =
        "secure_delete on, VACUUM of the database file, wal_checkpoint(TRUNCATE) of its write-ahead log";
    const LOCK_HEAD: &'static str = "UPDATE kluis_audit_head SET seq = seq WHERE id = 1";
    const COUNT_LOCK: &'static str = "";
    const DDL: Ddl = Ddl { int: "INTEGER", blob: "BLOB", id: "TEXT", index: "BLOB" };
    const COLUMNS_SQL: &'static str = "SELECT name FROM pragma_table_info(?)";

    fn clear_type(ty: FieldType) -> &'static str {
        match ty {
            FieldType::Integer | FieldType::Bool => "INTEGER",
            FieldType::Bytes => "BLOB",
            _ => "TEXT",
        }
    }

    fn count_shared(from_where: &str) -> Option<String> {
        // Write transactions are serial: no row lock is needed.
        Some(format!("SELECT COUNT(*) FROM {from_where}"))
    }

    fn null_safe_eq(column: &str) -> String {
        format!("{column} IS ?")
    }

    fn be_u32(expr: &str) -> String {
        format!("unhex(printf('%08X', {expr}))")
    }

    fn lock_unavailable(_e: &dyn sqlx::error::DatabaseError) -> bool {
        false
    }

    /// An embedded database has no client to wait for.
    fn lease_sql(_secs: u32) -> Option<String> {
        None
    }

    fn retryable(e: &dyn sqlx::error::DatabaseError) -> bool {
        matches!(e.code().as_deref(), Some("5" | "517" | "261"))
    }

    fn exec<'c>(
        c: &'c mut <Self::Db as Database>::Connection,
    ) -> impl sqlx::Executor<'c, Database = Self::Db> + 'c {
        c
    }

    fn rows_affected(r: &<Self::Db as Database>::QueryResult) -> u64 {
        r.rows_affected()
    }

    async fn purge_tables(pool: &sqlx::Pool<Self::Db>, _tables: &[&str]) -> Result<()> {
        use sqlx::Connection;
        let mut conn = pool.acquire().await?;
        // secure_delete zeroes freed cells and pages; VACUUM rewrites the file without free pages
        // (where older copies of a row can linger after page splits); checkpoint(TRUNCATE) copies
        // the WAL into the database file and truncates the WAL to zero bytes.
        sqlx::query("PRAGMA secure_delete = ON").execute(&mut *conn).await?;
        sqlx::query("VACUUM").execute(&mut *conn).await?;
        for _ in 0..50 {
            let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut *conn).await?;
            let busy: i64 = row.col(0)?;
            if busy == 0 {
                conn.ping().await?;
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(StoreError::Invalid(
            "the sqlite write-ahead log could not be truncated: other connections keep reading; retry the purge".into(),
        ))
    }
}
