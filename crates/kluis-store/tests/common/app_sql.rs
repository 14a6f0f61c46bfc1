//! The application's own SQL in the app-table tests: its statements on each engine, in its own
//! transactions or on the pool, `?` placeholders, text, integer and byte binds.

use kluis_store::{Dialect, Engine, MySql, Postgres, Sqlite};

/// A bind.
#[derive(Clone, Debug)]
pub enum B {
    T(String),
    I(i64),
    Y(Option<Vec<u8>>),
}

pub fn t(s: &str) -> B {
    B::T(s.to_owned())
}

pub trait AppSql: Engine {
    const DIALECT: Dialect;
    /// One statement in the application's transaction.
    fn run(
        tx: &mut sqlx::Transaction<'static, Self::Db>,
        sql: &str,
        binds: Vec<B>,
    ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send;
    /// One statement in a transaction of its own.
    fn run_pool(
        pool: &sqlx::Pool<Self::Db>,
        sql: &str,
        binds: Vec<B>,
    ) -> impl std::future::Future<Output = u64> + Send;
    /// Rows of `n` columns, each as bytes (text as its UTF-8, an integer as its decimal text),
    /// NULL as `None`.
    fn rows(
        pool: &sqlx::Pool<Self::Db>,
        sql: &str,
        binds: Vec<B>,
        n: usize,
    ) -> impl std::future::Future<Output = Vec<Vec<Option<Vec<u8>>>>> + Send;
}

macro_rules! app_sql {
    ($ty:ty, $db:ty, $dialect:expr, $conv:expr) => {
        impl AppSql for $ty {
            const DIALECT: Dialect = $dialect;
            async fn run(
                tx: &mut sqlx::Transaction<'static, $db>,
                sql: &str,
                binds: Vec<B>,
            ) -> Result<u64, sqlx::Error> {
                let sql: String = $conv(sql);
                let mut q = sqlx::query::<$db>(&sql);
                for b in binds {
                    q = match b {
                        B::T(s) => q.bind(s),
                        B::I(i) => q.bind(i),
                        B::Y(v) => q.bind(v),
                    };
                }
                Ok(q.execute(&mut **tx).await?.rows_affected())
            }
            async fn run_pool(pool: &sqlx::Pool<$db>, sql: &str, binds: Vec<B>) -> u64 {
                let mut tx = pool.begin().await.unwrap();
                let n = <Self as AppSql>::run(&mut tx, sql, binds).await.unwrap();
                tx.commit().await.unwrap();
                n
            }
            async fn rows(
                pool: &sqlx::Pool<$db>,
                sql: &str,
                binds: Vec<B>,
                n: usize,
            ) -> Vec<Vec<Option<Vec<u8>>>> {
                use sqlx::Row;
                let sql: String = $conv(sql);
                let mut q = sqlx::query::<$db>(&sql);
                for b in binds {
                    q = match b {
                        B::T(s) => q.bind(s),
                        B::I(i) => q.bind(i),
                        B::Y(v) => q.bind(v),
                    };
                }
                let text = |v: Option<String>| v.map(String::into_bytes);
                let int = |v: Option<i64>| v.map(|v| v.to_string().into_bytes());
                q.fetch_all(pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (0..n)
                            .map(|i| {
                                r.try_get::<Option<Vec<u8>>, _>(i)
                                    .or_else(|_| r.try_get::<Option<String>, _>(i).map(text))
                                    .or_else(|_| r.try_get::<Option<i64>, _>(i).map(int))
                                    .or_else(|_| {
                                        r.try_get::<Option<i32>, _>(i).map(|v| int(v.map(i64::from)))
                                    })
                                    .unwrap()
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    };
}

app_sql!(Sqlite, sqlx::Sqlite, Dialect::Sqlite, |s: &str| s.to_owned());
app_sql!(Postgres, sqlx::Postgres, Dialect::Postgres, super::numbered);
app_sql!(MySql, sqlx::MySql, Dialect::MySql, |s: &str| s.to_owned());
