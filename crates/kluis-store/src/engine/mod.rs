//! The engine seam: everything in which SQLite, PostgreSQL and MariaDB/MySQL differ, as the few
//! items of one sealed trait, [`Engine`], with one file per engine saying why each differs
//! ([`sqlite`], [`postgres`], [`mysql`]). Every SQL statement of the store is written once, in
//! code generic over the engine; the SQL uses `?` placeholders and [`Engine::sql`] turns them into
//! the engine's.
//!
//! sqlx's generic API needs a bound for every type bound or read; this module states them once,
//! on the engine's associated types ([`Binds`] for the arguments of a statement, [`Cols`] for the
//! columns of a row), so the generic code needs no `where` clauses.

use std::borrow::Cow;
use std::future::Future;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migrate, Migration, MigrationSource, MigrationType};
use sqlx::{Database, Decode, Encode, Executor, Type};

use crate::error::{Result, StoreError};
use crate::schema::FieldType;

pub mod mysql;
pub mod postgres;
pub mod sqlite;

pub use mysql::MySql;
pub use postgres::Postgres;
pub use sqlite::Sqlite;

/// Which database engine, as a value (for logs, reports and `match`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineKind {
    /// SQLite (embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL.
    MySql,
}

mod sealed {
    pub trait Sealed {}
}
pub(crate) use sealed::Sealed;

/// A database engine the store runs on: [`Sqlite`], [`Postgres`] or [`MySql`]. Sealed: the store's
/// SQL is written and tested for exactly these three.
pub trait Engine: Sealed + Clone + Copy + std::fmt::Debug + Default + Send + Sync + Unpin + 'static {
    /// The sqlx database.
    type Db: Native<Engine = Self, Row: Cols, Connection: Migrate>;

    /// The arguments of one statement.
    #[doc(hidden)]
    type Args<'q>: sqlx::IntoArguments<'q, Self::Db> + Binds<'q> + Default + Send;

    /// Which engine.
    const KIND: EngineKind;

    /// The embedded migrations: (version, description, SQL).
    #[doc(hidden)]
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)];

    /// A shared row lock on a plain `SELECT`, appended to it.
    #[doc(hidden)]
    const SHARE_LOCK: &'static str;

    /// An exclusive row lock on a plain `SELECT`, appended to it.
    #[doc(hidden)]
    const UPDATE_LOCK: &'static str;

    /// The lock a worker takes on the rows of its batch in an application's table: exclusive,
    /// skipping rows another worker's open batch holds (none on SQLite, whose writers take the
    /// database one at a time).
    #[doc(hidden)]
    const CLAIM_LOCK: &'static str;
    /// Does a page of records open each record as its row arrives (`true`: a server keeps
    /// reading the next rows meanwhile), or read the whole page first (`false`: SQLite, whose rows
    /// come from sqlx's worker thread in this process; opening while it reads made the two
    /// threads hand over row by row, and a page read first then opened took a third less time:
    /// BENCHMARKS.md)?
    #[doc(hidden)]
    const STREAM_PAGES: bool;

    /// The audit head lock without waiting (an error at once if another transaction holds it),
    /// for a worker that already holds row locks of an application's table; `None` where
    /// [`Engine::LOCK_HEAD`] is taken first anyway (SQLite's database write lock).
    #[doc(hidden)]
    const HEAD_NOWAIT: Option<&'static str>;

    /// Did a lock request without waiting ([`Engine::HEAD_NOWAIT`]) find the lock taken?
    #[doc(hidden)]
    fn lock_unavailable(e: &dyn sqlx::error::DatabaseError) -> bool;

    /// The statement that makes the server end the current transaction (rolling it back and
    /// releasing its locks) once it has waited `secs` seconds for its client: the lease of a
    /// worker's batch. `None` where the engine has no such limit.
    #[doc(hidden)]
    fn lease_sql(secs: u32) -> Option<String>;

    /// The statement that begins a transaction that reads and then writes, if not a plain
    /// `BEGIN`.
    #[doc(hidden)]
    const BEGIN_WRITE: Option<&'static str>;

    /// The statement that locks the audit head row until the transaction ends: the first of
    /// every transaction that changes rows or appends audit entries, so they commit one at a time.
    #[doc(hidden)]
    const LOCK_HEAD: &'static str;

    /// What makes a `COUNT(*)` inside a transaction see the latest committed rows.
    #[doc(hidden)]
    const COUNT_LOCK: &'static str;

    /// Column types of the tables made from the schema: integer, binary, id (tenant, record id,
    /// subject), blind index.
    #[doc(hidden)]
    const DDL: Ddl;

    /// The column type of a clear field of type `ty`.
    #[doc(hidden)]
    fn clear_type(ty: FieldType) -> &'static str;

    /// SQL written with `?` placeholders, in this engine's placeholders (as written, unless the
    /// engine says otherwise).
    #[doc(hidden)]
    fn sql(sql: &str) -> Cow<'_, str> {
        Cow::Borrowed(sql)
    }

    /// `INSERT INTO table (key, value) VALUES (?, ?)`, replacing the value of an existing key,
    /// in one statement (`ON CONFLICT ... DO UPDATE`, unless the engine says otherwise).
    #[doc(hidden)]
    fn upsert(table: &str, key: &str, value: &str) -> String {
        format!(
            "INSERT INTO {table} ({key}, {value}) VALUES (?, ?) ON CONFLICT ({key}) DO UPDATE SET {value} = excluded.{value}"
        )
    }

    /// `len` bytes of binary column `column` from byte `from` (1-based), comparable with a bound
    /// byte string.
    #[doc(hidden)]
    fn bytes_at(column: &str, from: u32, len: u32) -> String {
        format!("substr({column}, {from}, {len})")
    }

    /// The integer expression `expr` as 4 bytes, big-endian (comparable with
    /// [`Engine::bytes_at`] of a sealed value's key version).
    #[doc(hidden)]
    fn be_u32(expr: &str) -> String;

    /// The end of an `INSERT` that keeps an existing row of the same key instead (no error, which
    /// on PostgreSQL would abort the caller's transaction); `column` is any column of the table.
    #[doc(hidden)]
    fn keep_existing(_column: &str) -> String {
        " ON CONFLICT DO NOTHING".to_owned()
    }

    /// A `COUNT(*)` of the rows of `from_where` (`table WHERE ...`) that holds a shared lock on
    /// each row counted until the transaction ends; `None` where the engine cannot lock rows
    /// under an aggregate (the caller then reads the rows with [`Engine::SHARE_LOCK`]).
    #[doc(hidden)]
    fn count_shared(from_where: &str) -> Option<String>;

    /// How many of `keys` (tenant, domain, subject, version; distinct) exist in
    /// `kluis_subject_keys`, holding a shared lock on each row counted until the transaction
    /// ends, in one statement whose plan does not grow with the number of keys. `None` where the
    /// engine has no such form: the caller then counts with [`Engine::count_shared`] over an `OR`
    /// of the keys (PostgreSQL plans such an `OR` of a few hundred groups in milliseconds).
    #[doc(hidden)]
    fn count_subject_keys(
        _c: &mut <Self::Db as Database>::Connection,
        _keys: &[(&str, &str, &str, i64)],
    ) -> impl Future<Output = Result<Option<i64>>> + Send {
        async { Ok(None) }
    }

    /// `column` equal to the next bind, NULL equal to NULL.
    #[doc(hidden)]
    fn null_safe_eq(column: &str) -> String;

    /// Did the database roll the transaction back for a deadlock, a serialization failure or a
    /// busy database (so that a retry can succeed)?
    #[doc(hidden)]
    fn retryable(e: &dyn sqlx::error::DatabaseError) -> bool;

    /// The SQL that lists a table's column names (one bind: the table name).
    #[doc(hidden)]
    const COLUMNS_SQL: &'static str;

    /// Runs on one connection.
    #[doc(hidden)]
    fn exec<'c>(c: &'c mut <Self::Db as Database>::Connection)
    -> impl Executor<'c, Database = Self::Db> + 'c;

    /// The rows a statement changed.
    #[doc(hidden)]
    fn rows_affected(r: &<Self::Db as Database>::QueryResult) -> u64;

    /// What [`Engine::purge`] does, in a few words (for reports and erasure certificates).
    #[doc(hidden)]
    const PURGE_STEPS: &'static str;

    /// Rewrites the tables that held key bytes so that deleted rows leave no copy in the files.
    #[doc(hidden)]
    fn purge(pool: &sqlx::Pool<Self::Db>) -> impl Future<Output = Result<()>> + Send {
        Self::purge_tables(pool, &KEY_TABLES)
    }

    /// Rewrites `tables` so that older versions of their rows leave no copy in the files (on
    /// SQLite: the whole database file and its write-ahead log).
    #[doc(hidden)]
    fn purge_tables(pool: &sqlx::Pool<Self::Db>, tables: &[&str]) -> impl Future<Output = Result<()>> + Send;

    /// `column` read as text (for values of any type).
    #[doc(hidden)]
    fn cast_text(column: &str) -> String {
        format!("CAST({column} AS TEXT)")
    }

    /// The catalog query for a column's SQL type (binds: table, column), where a text bind
    /// compared with a column of another type needs a cast ([`Engine::param_as`]); `None` where
    /// the engine converts a text bind itself.
    #[doc(hidden)]
    const COLUMN_TYPE_SQL: Option<&'static str> = None;

    /// A bind compared with a column of SQL type `ty` (from [`Engine::COLUMN_TYPE_SQL`]).
    #[doc(hidden)]
    fn param_as(_ty: &str) -> String {
        "?".to_owned()
    }
}

/// The engine of a sqlx database: what lets [`crate::Store::new`] tell the engine from a pool.
#[doc(hidden)]
pub trait Native: Database {
    /// The engine.
    type Engine: Engine<Db = Self>;
}

impl Native for sqlx::Sqlite {
    type Engine = Sqlite;
}

impl Native for sqlx::Postgres {
    type Engine = Postgres;
}

impl Native for sqlx::MySql {
    type Engine = MySql;
}

/// The column types of an engine's tables.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Ddl {
    /// 64-bit integers.
    pub int: &'static str,
    /// Binary values of any length.
    pub blob: &'static str,
    /// Tenant, record id and subject.
    pub id: &'static str,
    /// A blind index (at most 64 bytes).
    pub index: &'static str,
}

/// The tables that hold key bytes: purged after a shred or a key destruction.
pub(crate) const KEY_TABLES: [&str; 2] = ["kluis_subject_keys", "kluis_domain_keys"];

/// A bind of a statement.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub enum Arg<'a> {
    /// Text.
    S(&'a str),
    /// Text or NULL.
    OptS(Option<&'a str>),
    /// An integer or NULL.
    I(Option<i64>),
    /// Bytes or NULL.
    B(Option<&'a [u8]>),
    /// Owned text or NULL.
    Text(Option<String>),
    /// A boolean or NULL.
    Bool(Option<bool>),
    /// Owned bytes or NULL.
    Bytes(Option<Vec<u8>>),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::S(v)
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::S(v)
    }
}
impl From<String> for Arg<'_> {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}
impl From<Option<String>> for Arg<'_> {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::OptS(v)
    }
}

impl Arg<'_> {
    /// The same bind, borrowing what `self` owns.
    pub(crate) fn borrowed(&self) -> Arg<'_> {
        match self {
            Arg::S(v) => Arg::S(v),
            Arg::OptS(v) => Arg::OptS(*v),
            Arg::I(v) => Arg::I(*v),
            Arg::B(v) => Arg::B(*v),
            Arg::Text(v) => Arg::OptS(v.as_deref()),
            Arg::Bool(v) => Arg::Bool(*v),
            Arg::Bytes(v) => Arg::B(v.as_deref()),
        }
    }
}
impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::I(Some(v))
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::I(v)
    }
}
impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(Some(v))
    }
}
impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::B(Some(v))
    }
}
impl<'a> From<&'a Vec<u8>> for Arg<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Arg::B(Some(v))
    }
}
impl<'a> From<Option<&'a [u8]>> for Arg<'a> {
    fn from(v: Option<&'a [u8]>) -> Self {
        Arg::B(v)
    }
}
impl<'a> From<&'a Option<Vec<u8>>> for Arg<'a> {
    fn from(v: &'a Option<Vec<u8>>) -> Self {
        Arg::B(v.as_deref())
    }
}
impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::OptS(v.as_deref())
    }
}
impl From<Vec<u8>> for Arg<'_> {
    fn from(v: Vec<u8>) -> Self {
        Arg::Bytes(Some(v))
    }
}
impl From<Option<Vec<u8>>> for Arg<'_> {
    fn from(v: Option<Vec<u8>>) -> Self {
        Arg::Bytes(v)
    }
}

/// The arguments of a statement take every kind of [`Arg`].
#[doc(hidden)]
pub trait Binds<'q> {
    /// Adds one bind.
    fn push(&mut self, a: Arg<'q>) -> std::result::Result<(), BoxDynError>;
}

impl<'q, A> Binds<'q> for A
where
    A: sqlx::Arguments<'q>,
    &'q str: Encode<'q, A::Database> + Type<A::Database>,
    Option<&'q str>: Encode<'q, A::Database> + Type<A::Database>,
    Option<i64>: Encode<'q, A::Database> + Type<A::Database>,
    Option<&'q [u8]>: Encode<'q, A::Database> + Type<A::Database>,
    Option<String>: Encode<'q, A::Database> + Type<A::Database>,
    Option<bool>: Encode<'q, A::Database> + Type<A::Database>,
    Option<Vec<u8>>: Encode<'q, A::Database> + Type<A::Database>,
{
    fn push(&mut self, a: Arg<'q>) -> std::result::Result<(), BoxDynError> {
        match a {
            Arg::S(v) => self.add(v),
            Arg::OptS(v) => self.add(v),
            Arg::I(v) => self.add(v),
            Arg::B(v) => self.add(v),
            Arg::Text(v) => self.add(v),
            Arg::Bool(v) => self.add(v),
            Arg::Bytes(v) => self.add(v),
        }
    }
}

/// The columns of a row, read as the store's types.
#[doc(hidden)]
pub trait Cols: sqlx::Row {
    /// An integer, NULL as `None`.
    fn opt_i64(&self, i: usize) -> std::result::Result<Option<i64>, sqlx::Error>;
    /// A boolean, NULL as `None`.
    fn opt_bool(&self, i: usize) -> std::result::Result<Option<bool>, sqlx::Error>;
    /// Bytes, NULL as `None`.
    fn opt_bytes(&self, i: usize) -> std::result::Result<Option<Vec<u8>>, sqlx::Error>;
    /// Bytes, borrowed from the row.
    fn opt_bytes_ref(&self, i: usize) -> std::result::Result<Option<&[u8]>, sqlx::Error>;
    /// Text, NULL as `None`.
    fn opt_string(&self, i: usize) -> std::result::Result<Option<String>, sqlx::Error>;
    /// Text, borrowed from the row.
    fn opt_str(&self, i: usize) -> std::result::Result<Option<&str>, sqlx::Error>;

    /// Column `i` as `T` (NULL only where `T` is an `Option`).
    fn col<'r, T: Col<'r>>(&'r self, i: usize) -> std::result::Result<T, sqlx::Error>
    where
        Self: Sized,
    {
        T::read(self, i)
    }
}

impl<R> Cols for R
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: Type<R::Database> + for<'r> Decode<'r, R::Database>,
    bool: Type<R::Database> + for<'r> Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database> + for<'r> Decode<'r, R::Database>,
    String: Type<R::Database> + for<'r> Decode<'r, R::Database>,
    for<'r> &'r [u8]: Type<R::Database> + Decode<'r, R::Database>,
    for<'r> &'r str: Type<R::Database> + Decode<'r, R::Database>,
{
    fn opt_i64(&self, i: usize) -> std::result::Result<Option<i64>, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_bool(&self, i: usize) -> std::result::Result<Option<bool>, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_bytes(&self, i: usize) -> std::result::Result<Option<Vec<u8>>, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_bytes_ref(&self, i: usize) -> std::result::Result<Option<&[u8]>, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_string(&self, i: usize) -> std::result::Result<Option<String>, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_str(&self, i: usize) -> std::result::Result<Option<&str>, sqlx::Error> {
        self.try_get(i)
    }
}

/// A type a column can be read as.
#[doc(hidden)]
pub trait Col<'r>: Sized {
    /// Reads column `i` of `row`.
    fn read<R: Cols>(row: &'r R, i: usize) -> std::result::Result<Self, sqlx::Error>;
}

fn not_null<T>(v: Option<T>, i: usize) -> std::result::Result<T, sqlx::Error> {
    v.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: i.to_string(),
        source: Box::new(sqlx::error::UnexpectedNullError),
    })
}

macro_rules! col {
    ($t:ty, $m:ident) => {
        impl<'r> Col<'r> for Option<$t> {
            fn read<R: Cols>(row: &'r R, i: usize) -> std::result::Result<Self, sqlx::Error> {
                row.$m(i)
            }
        }
        impl<'r> Col<'r> for $t {
            fn read<R: Cols>(row: &'r R, i: usize) -> std::result::Result<Self, sqlx::Error> {
                not_null(row.$m(i)?, i)
            }
        }
    };
}
col!(i64, opt_i64);
col!(bool, opt_bool);
col!(Vec<u8>, opt_bytes);
col!(&'r [u8], opt_bytes_ref);
col!(String, opt_string);
col!(&'r str, opt_str);

/// Text column `i`. MariaDB reports `ascii_bin` columns as binary: bytes are read and must be
/// UTF-8.
pub(crate) fn text<R: Cols>(row: &R, i: usize) -> Result<String> {
    text_as(row, i, "name column")
}

/// [`text`], naming the column as `what` if it is not UTF-8.
pub(crate) fn text_as<R: Cols>(row: &R, i: usize, what: &'static str) -> Result<String> {
    match row.col::<String>(i) {
        Ok(s) => Ok(s),
        Err(_) => {
            let b: Vec<u8> = row.col(i)?;
            String::from_utf8(b).map_err(|_| StoreError::Corrupt { what, reason: "not utf-8".into() })
        }
    }
}

/// [`text`], borrowed from the row.
pub(crate) fn text_ref<R: Cols>(row: &R, i: usize) -> Result<&str> {
    match row.col::<&str>(i) {
        Ok(s) => Ok(s),
        Err(_) => {
            let b: &[u8] = row.col(i)?;
            std::str::from_utf8(b)
                .map_err(|_| StoreError::Corrupt { what: "name column", reason: "not utf-8".into() })
        }
    }
}

/// [`text`], NULL as `None`.
pub(crate) fn opt_text<R: Cols>(row: &R, i: usize) -> Result<Option<String>> {
    if let Ok(s) = row.col::<Option<String>>(i) {
        return Ok(s);
    }
    let b: Option<Vec<u8>> = row.col(i)?;
    b.map(|b| {
        String::from_utf8(b)
            .map_err(|_| StoreError::Corrupt { what: "name column", reason: "not utf-8".into() })
    })
    .transpose()
}

/// Where a statement runs: a connection (of a transaction, or acquired) or the pool.
pub(crate) enum Via<'c, E: Engine> {
    Conn(&'c mut <E::Db as Database>::Connection),
    Pool(&'c sqlx::Pool<E::Db>),
}

impl<'c, E: Engine> From<&'c mut <E::Db as Database>::Connection> for Via<'c, E> {
    fn from(c: &'c mut <E::Db as Database>::Connection) -> Self {
        Via::Conn(c)
    }
}

impl<'c, E: Engine> From<&'c sqlx::Pool<E::Db>> for Via<'c, E> {
    fn from(p: &'c sqlx::Pool<E::Db>) -> Self {
        Via::Pool(p)
    }
}

/// What a statement changed.
pub(crate) struct Done(u64);

impl Done {
    /// The rows changed.
    pub(crate) fn rows_affected(&self) -> u64 {
        self.0
    }
}

/// One statement with its binds (the SQL already in the engine's placeholders).
pub(crate) struct Stmt<'q, E: Engine> {
    sql: &'q str,
    args: E::Args<'q>,
    bad: Option<BoxDynError>,
}

/// A statement of `sql` (already in the engine's placeholders: see [`Engine::sql`]).
pub(crate) fn query<'q, E: Engine>(sql: &'q str) -> Stmt<'q, E> {
    Stmt { sql, args: E::Args::default(), bad: None }
}

/// The row type of engine `E`.
pub(crate) type RowOf<E> = <<E as Engine>::Db as Database>::Row;

impl<'q, E: Engine> Stmt<'q, E> {
    /// Binds the next `?`.
    pub(crate) fn bind(mut self, v: impl Into<Arg<'q>>) -> Self {
        if self.bad.is_none()
            && let Err(e) = self.args.push(v.into())
        {
            self.bad = Some(e);
        }
        self
    }

    /// Binds every arg of `args`, in order.
    pub(crate) fn bind_all(mut self, args: impl IntoIterator<Item = Arg<'q>>) -> Self {
        for a in args {
            self = self.bind(a);
        }
        self
    }

    fn ready(self) -> std::result::Result<sqlx::query::Query<'q, E::Db, E::Args<'q>>, sqlx::Error> {
        match self.bad {
            Some(e) => Err(sqlx::Error::Encode(e)),
            None => Ok(sqlx::query_with(self.sql, self.args)),
        }
    }

    /// Runs the statement.
    pub(crate) async fn execute<'c>(
        self,
        via: impl Into<Via<'c, E>>,
    ) -> std::result::Result<Done, sqlx::Error> {
        let q = self.ready()?;
        let r = match via.into() {
            Via::Conn(c) => q.execute(E::exec(c)).await?,
            Via::Pool(p) => {
                let mut c = p.acquire().await?;
                q.execute(E::exec(&mut c)).await?
            }
        };
        Ok(Done(E::rows_affected(&r)))
    }

    /// Runs the query and returns every row.
    pub(crate) async fn fetch_all<'c>(
        self,
        via: impl Into<Via<'c, E>>,
    ) -> std::result::Result<Vec<RowOf<E>>, sqlx::Error> {
        let q = self.ready()?;
        match via.into() {
            Via::Conn(c) => q.fetch_all(E::exec(c)).await,
            Via::Pool(p) => {
                let mut c = p.acquire().await?;
                q.fetch_all(E::exec(&mut c)).await
            }
        }
    }

    /// Runs the query and returns its first row, if any.
    pub(crate) async fn fetch_optional<'c>(
        self,
        via: impl Into<Via<'c, E>>,
    ) -> std::result::Result<Option<RowOf<E>>, sqlx::Error> {
        let q = self.ready()?;
        match via.into() {
            Via::Conn(c) => q.fetch_optional(E::exec(c)).await,
            Via::Pool(p) => {
                let mut c = p.acquire().await?;
                q.fetch_optional(E::exec(&mut c)).await
            }
        }
    }

    /// Runs the query and returns its first row (an error if none).
    pub(crate) async fn fetch_one<'c>(
        self,
        via: impl Into<Via<'c, E>>,
    ) -> std::result::Result<RowOf<E>, sqlx::Error> {
        self.fetch_optional(via).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs the query and hands each row to `each` while the rest are still being read, until
    /// `each` returns `false`.
    pub(crate) async fn for_each<'c>(
        self,
        via: impl Into<Via<'c, E>>,
        mut each: impl FnMut(RowOf<E>) -> Result<bool> + Send,
    ) -> Result<()> {
        let q = self.ready()?;
        let mut pooled;
        let c = match via.into() {
            Via::Conn(c) => c,
            Via::Pool(p) => {
                pooled = p.acquire().await?;
                &mut *pooled
            }
        };
        let mut rows = q.fetch(E::exec(c));
        while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
            if !each(row?)? {
                break;
            }
        }
        Ok(())
    }
}

/// A query of one column: each row read as `T`.
pub(crate) struct Scalar<'q, E: Engine, T>(Stmt<'q, E>, std::marker::PhantomData<fn() -> T>);

/// A query whose first column is read as `T` (SQL in the engine's placeholders).
pub(crate) fn query_scalar<'q, E: Engine, T: for<'r> Col<'r>>(sql: &'q str) -> Scalar<'q, E, T> {
    Scalar(query(sql), std::marker::PhantomData)
}

impl<'q, E: Engine, T: for<'r> Col<'r>> Scalar<'q, E, T> {
    /// Binds the next `?`.
    pub(crate) fn bind(self, v: impl Into<Arg<'q>>) -> Self {
        Scalar(self.0.bind(v), self.1)
    }

    /// The first row's value (an error if none).
    pub(crate) async fn fetch_one<'c>(
        self,
        via: impl Into<Via<'c, E>>,
    ) -> std::result::Result<T, sqlx::Error> {
        self.0.fetch_one(via).await?.col(0)
    }

    /// The first row's value, if any.
    pub(crate) async fn fetch_optional<'c>(
        self,
        via: impl Into<Via<'c, E>>,
    ) -> std::result::Result<Option<T>, sqlx::Error> {
        match self.0.fetch_optional(via).await? {
            Some(row) => Ok(Some(row.col(0)?)),
            None => Ok(None),
        }
    }
}

/// The embedded migrations of an engine, for sqlx's migrator.
#[derive(Debug)]
pub(crate) struct Embedded(pub(crate) &'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn Future<Output = std::result::Result<Vec<Migration>, Box<dyn std::error::Error + Send + Sync>>>
                + Send
                + 'static,
        >,
    > {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(*v, Cow::Borrowed(*d), MigrationType::Simple, Cow::Borrowed(*sql), false)
                })
                .collect())
        })
    }
}

/// `n` placeholders, comma-separated.
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 2);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push('?');
    }
    s
}
