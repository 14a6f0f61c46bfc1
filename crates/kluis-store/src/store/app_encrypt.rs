//! Encrypting the application's plaintext columns in place (docs/APP_TABLES.md, "Encrypt a
//! column that holds plaintext today"): batches of rows, each batch one transaction that locks
//! its rows, seals each row's plaintext values into the protected columns (compare-and-swap
//! against what it read), reads them back and opens them, and only then clears the plaintext.
//!
//! The batch machinery here is shared with re-encryption ([`super::app_reencrypt`]): several
//! workers (processes) may run steps on one PostgreSQL or MariaDB database at once. A batch
//! claims its rows with `FOR UPDATE SKIP LOCKED` (rows another worker's open batch holds are
//! left to it), under a lease: the server ends a batch whose worker stops answering for
//! [`BatchLimits::lease`] (and at once one whose connection closes, a killed worker's), rolling
//! it back and releasing its rows. The work list is the data itself (plaintext left, values
//! under older keys), so a rolled-back batch's rows are simply taken again. A batch takes the
//! audit head last, without waiting: holding rows, it never waits for a lock an application's
//! transaction may hold while waiting for one of those rows; after [`HEAD_TRIES`] refusals it
//! rolls back whole ([`StoreError::Busy`], retryable). On SQLite a batch takes the database's
//! write lock first, so workers' batches run one after another.

use std::collections::HashMap;

use super::app_rows::index_columns;
use super::*;
use crate::app_table::{AppTable, ProtectedColumn, TenantSource};
use crate::audit::{AuditAppend, AuditEntry, DEFAULT_CHECKPOINT_EVERY};
use crate::engine::{Arg, Cols, opt_text, query};
use crate::schema::FieldType;

/// What encrypting a mapped table's plaintext columns has left to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncryptPlan {
    /// The mapping.
    pub table: String,
    /// Per protected column with a plaintext column: (protected column, plaintext column, rows
    /// of the tenant whose plaintext column is not NULL).
    pub columns: Vec<(String, String, u64)>,
    /// Rows of the tenant with at least one plaintext value: what a run will seal.
    pub rows: u64,
}

/// The size of a worker's batch and its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Rows per batch (one transaction); at least 1.
    pub rows: u32,
    /// How long the server waits for a batch's worker before it ends the batch (rolled back,
    /// its rows released for other workers): PostgreSQL's `idle_in_transaction_session_timeout`,
    /// MariaDB's `idle_transaction_timeout`; whole seconds, 1 to 86,400 ([`StoreError::Invalid`]
    /// otherwise). Not used on SQLite.
    pub lease: std::time::Duration,
}

impl Default for BatchLimits {
    /// 500 rows, a lease of 60 s.
    fn default() -> Self {
        Self { rows: 500, lease: std::time::Duration::from_secs(60) }
    }
}

impl BatchLimits {
    /// `rows` per batch, the default lease.
    pub fn rows(rows: u32) -> Self {
        Self { rows, ..Self::default() }
    }

    /// The lease in whole seconds, checked.
    fn lease_secs(&self) -> Result<u32> {
        match u32::try_from(self.lease.as_secs()) {
            Ok(s @ 1..=86_400) => Ok(s),
            _ => Err(StoreError::Invalid(format!(
                "a batch's lease must be 1 to 86,400 seconds, not {:?}",
                self.lease
            ))),
        }
    }
}

/// How many times a batch holding its rows asks for the audit head without waiting before it
/// rolls back ([`StoreError::Busy`]); about 1.5 s in all.
pub const HEAD_TRIES: u32 = 100;

/// What one step over a mapped table did ([`Store::encrypt_columns_step`],
/// [`Store::reencrypt_columns_step`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnsStep {
    /// Rows read: with at least one plaintext value (encrypting), with a value of the domain
    /// (re-encrypting).
    pub rows_read: u64,
    /// Rows written: plaintext values sealed and cleared, or values re-sealed.
    pub rows_written: u64,
    /// Rows left as they were, with why (a value that is not one of the column's type, a row
    /// that fails its row tag, a key that is not an id): the record id, or the primary key
    /// values read, and the reason (never a value). Skip them in the next step (its `skip`).
    pub rows_refused: Vec<(String, String)>,
    /// Rows that changed between the read and the write (none while the batch holds its locks;
    /// counted for safety): left for the next pass.
    pub conflicts: u64,
    /// Rows read that needed nothing (re-encrypting: every value of the domain already under the
    /// subject's newest key and the active domain key version, or a subject without keys).
    pub rows_current: u64,
    /// The primary key values of the last row read: the next step's `after`. `None` when the
    /// step read nothing (the pass is over).
    pub last_key: Option<Vec<String>>,
}

/// One row as the batch read it.
pub(super) struct ReadRow {
    pub(super) key: Vec<String>,
    pub(super) subject: String,
    /// The plaintext values read (wiped when the row is dropped).
    pub(super) plain: Vec<Option<zeroize::Zeroizing<Vec<u8>>>>,
    /// Every protected column's value.
    pub(super) cells: Vec<Option<Vec<u8>>>,
    /// Every protected column's blind index column's value (`None` without one).
    pub(super) indexes: Vec<Option<Vec<u8>>>,
    pub(super) tag: Option<Vec<u8>>,
}

/// What a batch reads: which rows, and with which lock.
pub(super) struct BatchRead<'a> {
    pub(super) plain: &'a [&'a ProtectedColumn],
    pub(super) protected: &'a [&'a ProtectedColumn],
    /// The SQL condition a row needs to be read (the work list).
    pub(super) work: String,
    pub(super) rows: u32,
    pub(super) after: Option<&'a [String]>,
    /// [`Engine::CLAIM_LOCK`], or nothing for a read that only counts.
    pub(super) lock: &'static str,
}

impl<E: Engine> Store<E> {
    /// How much of `table` (a mapping of the application's tables) still holds plaintext in the
    /// tenant of `access`.
    pub async fn encrypt_columns_plan(&self, access: &Access, table: &str) -> Result<EncryptPlan> {
        let t = self.reachable_table(access, table, "encrypting its columns")?;
        let plain = plaintext_columns(t)?;
        let (tenant_where, tenant_bind) = tenant_filter(t);
        let mut columns = Vec::new();
        for c in &plain {
            let p = c.plaintext_column.as_deref().unwrap_or_default();
            let sql = format!("SELECT COUNT(*) FROM {} WHERE {tenant_where}{p} IS NOT NULL", t.table);
            let n = self.app_count(&sql, tenant_bind.then_some(access.tenant.as_str())).await?;
            columns.push((c.name.clone(), p.to_owned(), n));
        }
        let any = any_plaintext(&plain);
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {tenant_where}({any})", t.table);
        let rows = self.app_count(&sql, tenant_bind.then_some(access.tenant.as_str())).await?;
        Ok(EncryptPlan { table: t.name.clone(), columns, rows })
    }

    /// Encrypts up to `limits.rows` rows of `table` that still hold plaintext, in primary key
    /// order after the row whose key is `after` (the previous step's [`ColumnsStep::last_key`];
    /// `None` starts a pass from the first row), in one transaction:
    /// the rows are claimed (`FOR UPDATE SKIP LOCKED` under a lease; SQLite's write lock: see the
    /// module documentation for several workers), each row's plaintext values are
    /// sealed into its protected columns with a new row tag by an `UPDATE` that compares the
    /// plaintext and the row tag it read, then the sealed values of the rows written are read
    /// back from the table (a `SELECT` per 200 rows) and opened and compared with the plaintext,
    /// and only then are their plaintext columns set to NULL (an `UPDATE` per 200 rows). One
    /// audit entry (`who` with `encrypt_columns`, the rows, subjects and columns) commits with
    /// the batch. Killed at any point, a batch is either all done or not at all, and the next
    /// step continues where the data stands: plaintext is the work list. A pass ends with a
    /// step that reads nothing; a row given plaintext again behind the pass (by an application
    /// still writing it) is taken by the next pass.
    ///
    /// `access` must hold the domain keys of the columns and cover the whole tenant, writing.
    /// A plaintext value is taken as the newest: a row that holds both is sealed again from it.
    pub async fn encrypt_columns_step(
        &self,
        access: &Access,
        table: &str,
        limits: &BatchLimits,
        after: Option<&[String]>,
        who: &AuditEntry,
    ) -> Result<ColumnsStep> {
        let t = self.job_table(access, table, "encrypting its columns", "encrypting a table's columns")?;
        let plain = plaintext_columns(t)?;
        for c in &plain {
            access.require(c.domain.as_str())?;
        }
        let protected: Vec<&ProtectedColumn> = t.protected_columns().collect();
        let read = BatchRead {
            plain: &plain,
            protected: &protected,
            work: any_plaintext(&plain),
            rows: limits.rows,
            after,
            lock: E::CLAIM_LOCK,
        };
        let (mut tx, key_params, rows, mut step) = self.start_batch(access, t, &read, limits).await?;
        let mut done: Vec<(String, String)> = Vec::new();
        // One cache for the batch: the subject keys it finds or makes, the row tag key.
        let mut tags = Tags::new();
        let mut written: Vec<Written> = Vec::new();
        for row in rows {
            // An error once a row is written aborts the whole batch (the transaction rolls back).
            let outcome = self
                .encrypt_row(
                    &mut tx,
                    access,
                    t,
                    &plain,
                    &protected,
                    &row,
                    &key_params,
                    &mut tags,
                    &mut written,
                )
                .await?;
            step.count(t, &row, outcome, &mut done);
        }
        self.verify_and_clear(&mut tx, access, t, &plain, &written, &key_params, &mut tags).await?;
        let columns: Vec<&str> = plain.iter().map(|c| c.name.as_str()).collect();
        self.finish_batch(tx, access, t, &done, &columns, "encrypt_columns", who).await?;
        Ok(step)
    }

    /// The mapping `table`, if its table is in Kluis's database ([`AppTable::require_reachable`],
    /// `what` runs SQL on it) and of the tenant of `access`.
    pub(super) fn reachable_table(&self, access: &Access, table: &str, what: &str) -> Result<&AppTable> {
        let t = self.schema.app_table(table)?;
        t.require_reachable(what)?;
        self.app_tenant(access, t)?;
        Ok(t)
    }

    /// [`Store::reachable_table`] for a step of a job over the table (`job`), which writes and
    /// needs `access` to cover the whole tenant.
    pub(super) fn job_table(&self, access: &Access, table: &str, what: &str, job: &str) -> Result<&AppTable> {
        let t = self.reachable_table(access, table, what)?;
        access.whole_tenant(job)?;
        access.require_write(job)?;
        Ok(t)
    }

    /// Begins a worker's batch ([`Store::begin_batch`]) and claims its rows: the transaction, the
    /// binds of the key columns, the rows, and the step's counts so far.
    #[allow(clippy::type_complexity)]
    pub(super) async fn start_batch(
        &self,
        access: &Access,
        t: &AppTable,
        read: &BatchRead<'_>,
        limits: &BatchLimits,
    ) -> Result<(sqlx::Transaction<'static, E::Db>, Vec<String>, Vec<ReadRow>, ColumnsStep)> {
        let mut tx = self.begin_batch(limits).await?;
        let key_params = self.key_params(&mut tx, t).await?;
        let rows = self.read_batch_rows(&mut tx, access, t, read, &key_params).await?;
        let step = ColumnsStep {
            rows_read: rows.len() as u64,
            last_key: rows.last().map(|r| r.key.clone()),
            ..ColumnsStep::default()
        };
        Ok((tx, key_params, rows, step))
    }

    /// Begins a worker's batch: SQLite's write lock and audit head first; elsewhere the lease.
    async fn begin_batch(&self, limits: &BatchLimits) -> Result<sqlx::Transaction<'static, E::Db>> {
        let lease = limits.lease_secs()?;
        let mut tx = self.backend.begin_write().await?;
        if E::HEAD_NOWAIT.is_none() {
            // The audit head first, as every writer of Kluis's takes it.
            SqlBackend::<E>::lock_head(&mut tx).await?;
        }
        if let Some(sql) = E::lease_sql(lease) {
            query::<E>(&sql).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// Ends a worker's batch: the audit head (without waiting, where the batch took it last),
    /// one audit entry for the rows written (`done`: record id and subject), the commit.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish_batch(
        &self,
        mut tx: sqlx::Transaction<'static, E::Db>,
        access: &Access,
        t: &AppTable,
        done: &[(String, String)],
        columns: &[&str],
        action: &str,
        who: &AuditEntry,
    ) -> Result<()> {
        if !done.is_empty() {
            if let Some(nowait) = E::HEAD_NOWAIT
                && let Err(e) = Self::head_nowait(&mut tx, nowait).await
            {
                // Rolled back here, releasing the rows for whoever waits for them, before the
                // error goes up (not left to the pool, which rolls a dropped one back later).
                if let Err(r) = tx.rollback().await {
                    tracing::warn!(error = %r, "kluis-store: rolling back a batch that did not get the audit head failed");
                }
                return Err(e);
            }
            let records: Vec<&str> = done.iter().map(|(r, _)| r.as_str()).collect();
            let mut subjects: Vec<&str> = done.iter().map(|(_, s)| s.as_str()).collect();
            subjects.sort_unstable();
            subjects.dedup();
            let entry =
                Self::app_entry(access, t, &records.join(","), &subjects.join(","), columns, action, who);
            SqlBackend::<E>::audit_append(
                &mut tx,
                AuditAppend { entry, checkpoint_every: DEFAULT_CHECKPOINT_EVERY },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The audit head for a batch that holds row locks: asked for without waiting, in a
    /// savepoint, up to [`HEAD_TRIES`] times with short pauses; never a wait in the lock
    /// manager, so never part of a deadlock.
    async fn head_nowait(tx: &mut sqlx::Transaction<'static, E::Db>, sql: &str) -> Result<()> {
        use sqlx::Acquire;
        for i in 0..HEAD_TRIES {
            let mut sp = (&mut *tx).begin().await?;
            match query::<E>(sql).execute(&mut *sp).await {
                Ok(_) => {
                    sp.commit().await?;
                    return Ok(());
                }
                Err(sqlx::Error::Database(e)) if E::lock_unavailable(&*e) => sp.rollback().await?,
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(std::time::Duration::from_millis(u64::from(1 + i.min(24)))).await;
        }
        Err(StoreError::Busy { what: "the audit head, while the batch held its rows".into() })
    }

    /// Rewrites the mapped table so that no older version of its rows (with the plaintext a run
    /// cleared) is left in the database's files: SQLite: `VACUUM` and a truncating WAL
    /// checkpoint of the whole file; PostgreSQL: `VACUUM (FULL)` of the table, twice, after
    /// waiting for other transactions' snapshots; MariaDB: `OPTIMIZE TABLE`. What stays outside
    /// the table's files (PostgreSQL's WAL, MariaDB's redo and undo logs and binary log,
    /// backups) is in docs/APP_TABLES.md.
    pub async fn purge_app_table(&self, table: &str) -> Result<()> {
        let t = self.schema.app_table(table)?;
        t.require_reachable("purging it")?;
        E::purge_tables(self.pool(), &[t.table.as_str()]).await
    }

    async fn app_count(&self, sql: &str, tenant: Option<&str>) -> Result<u64> {
        let sql = E::sql(sql).into_owned();
        let mut q = query::<E>(&sql);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let row = q.fetch_one(self.pool()).await?;
        let n: i64 = row.col(0)?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt { what: "row count", reason: n.to_string() })
    }

    /// The bind of each primary key column, as compared with the column (a cast on engines that
    /// do not convert a text bind themselves).
    pub(super) async fn key_params(
        &self,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        t: &AppTable,
    ) -> Result<Vec<String>> {
        let Some(sql) = E::COLUMN_TYPE_SQL else {
            return Ok(t.primary_key.iter().map(|_| "?".to_owned()).collect());
        };
        let sql = E::sql(sql).into_owned();
        let mut out = Vec::with_capacity(t.primary_key.len());
        for k in &t.primary_key {
            let row =
                query::<E>(&sql).bind(t.table.as_str()).bind(k.as_str()).fetch_optional(&mut **tx).await?;
            let ty = match row {
                Some(r) => opt_text(&r, 0)?,
                None => None,
            }
            .ok_or_else(|| StoreError::Schema(format!("table {}: no column {k} in {}", t.name, t.table)))?;
            // A type name from the catalog, used in SQL text: letters, digits, spaces, parentheses,
            // commas and underscores only.
            if !ty.chars().all(|c| c.is_ascii_alphanumeric() || " (),_".contains(c)) {
                return Err(StoreError::Schema(format!("table {}: column {k} has type {ty:?}", t.name)));
            }
            out.push(E::param_as(&ty));
        }
        Ok(out)
    }

    /// The rows of one batch ([`BatchRead`]): key, subject, plaintext values, protected
    /// values, blind index values, row tag.
    pub(super) async fn read_batch_rows(
        &self,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        access: &Access,
        t: &AppTable,
        read: &BatchRead<'_>,
        key_params: &[String],
    ) -> Result<Vec<ReadRow>> {
        let BatchRead { plain, protected, after, .. } = *read;
        let mut select: Vec<String> = Vec::new();
        // Aliased: PostgreSQL would take `ORDER BY id` for the text of an output column `id`.
        select.extend(
            t.primary_key.iter().enumerate().map(|(i, k)| format!("{} AS kluis_k{i}", E::cast_text(k))),
        );
        select.push(format!("{} AS kluis_subject", E::cast_text(&t.subject_column)));
        select.extend(
            plain.iter().enumerate().map(|(i, c)| format!("{} AS kluis_p{i}", plaintext_expr::<E>(c))),
        );
        select.extend(protected.iter().map(|c| c.name.clone()));
        select.extend(protected.iter().filter_map(|c| c.blind_index_column.as_ref()).map(ToOwned::to_owned));
        select.push(t.row_tag_column.clone());
        let (tenant_where, tenant_bind) = tenant_filter(t);
        let cursor = match after {
            Some(k) if k.len() == t.primary_key.len() => {
                format!(" AND ({}) > ({})", t.primary_key.join(", "), key_params.join(", "))
            }
            Some(_) => {
                return Err(StoreError::Invalid(format!("table {}: a cursor of the wrong length", t.name)));
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE {tenant_where}({}){cursor} ORDER BY {} LIMIT ?{}",
            select.join(", "),
            t.table,
            read.work,
            t.primary_key.join(", "),
            read.lock
        );
        let sql = E::sql(&sql).into_owned();
        let mut q = query::<E>(&sql);
        if tenant_bind {
            q = q.bind(access.tenant.as_str());
        }
        for k in after.unwrap_or_default() {
            q = q.bind(k.as_str());
        }
        let found = q.bind(i64::from(read.rows.max(1))).fetch_all(&mut **tx).await?;
        let mut out = Vec::with_capacity(found.len());
        let not_null = || StoreError::Corrupt {
            what: "application table",
            reason: "a key or subject column is NULL".into(),
        };
        for r in &found {
            let mut i = 0usize;
            let mut key = Vec::with_capacity(t.primary_key.len());
            for _ in &t.primary_key {
                key.push(opt_text(r, i)?.ok_or_else(not_null)?);
                i += 1;
            }
            let subject = opt_text(r, i)?.ok_or_else(not_null)?;
            i += 1;
            let mut plain_vals = Vec::with_capacity(plain.len());
            for c in plain {
                plain_vals.push(
                    if c.ty == FieldType::Bytes {
                        r.col::<Option<Vec<u8>>>(i)?
                    } else {
                        opt_text(r, i)?.map(String::into_bytes)
                    }
                    .map(zeroize::Zeroizing::new),
                );
                i += 1;
            }
            let mut cells = Vec::with_capacity(protected.len());
            for _ in protected {
                cells.push(r.col::<Option<Vec<u8>>>(i)?);
                i += 1;
            }
            let mut indexes = Vec::with_capacity(protected.len());
            for c in protected {
                indexes.push(if c.blind_index_column.is_some() {
                    i += 1;
                    r.col::<Option<Vec<u8>>>(i - 1)?
                } else {
                    None
                });
            }
            let tag = r.col::<Option<Vec<u8>>>(i)?;
            out.push(ReadRow { key, subject, plain: plain_vals, cells, indexes, tag });
        }
        Ok(out)
    }

    /// Step 1 of one row: its sealed values, blind indexes and new row tag written by an `UPDATE`
    /// that compares the plaintext and the row tag read; the row goes to `written` for steps 2
    /// and 3 ([`Store::verify_and_clear`]). Everything that can refuse it comes before its
    /// write; an error after that is returned, and the caller's transaction (the whole batch)
    /// rolls back.
    #[allow(clippy::too_many_arguments)]
    async fn encrypt_row(
        &self,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        access: &Access,
        t: &AppTable,
        plain: &[&ProtectedColumn],
        protected: &[&ProtectedColumn],
        row: &ReadRow,
        key_params: &[String],
        tags: &mut Tags,
        written: &mut Vec<Written>,
    ) -> Result<RowOutcome> {
        let (record, present) = refuse!(row.identity(t, protected));
        // The row as it stands must be one Kluis wrote (or hold no protected value yet).
        match &row.tag {
            Some(tag) => refuse!(Self::check_app_row(access, t, &record, &row.subject, &present, tag, tags)),
            None if present.is_empty() => {}
            None => return Ok(RowOutcome::Refused("a protected value without a row tag".into())),
        }
        // The plaintext values, as values of the columns' types.
        let mut fields: Vec<(String, Value)> = Vec::new();
        for (c, v) in plain.iter().zip(&row.plain) {
            if let Some(v) = v {
                match parse_plain(c, v) {
                    Ok(v) => fields.push((c.name.clone(), v)),
                    Err(why) => return Ok(RowOutcome::Refused(why)),
                }
            }
        }
        let (cells, indexes) = refuse!(
            self.app_seal(&mut Some(&mut *tx), access, t, &record, &row.subject, &fields, tags).await
        );
        let (sets, values) =
            refuse!(Self::sealed_sets(access, t, (&record, &row.subject), &present, &cells, &indexes, tags));
        // 1. The sealed values and the new tag, if the row still holds what was read.
        let mut args: Vec<Arg<'_>> = values.iter().map(|v| Arg::B(Some(v.as_slice()))).collect();
        let mut cond = vec![locator_where(t, key_params)];
        args.extend(row.key.iter().map(|k| Arg::S(k.as_str())));
        for (c, v) in plain.iter().zip(&row.plain) {
            cond.push(E::null_safe_eq(&plaintext_expr::<E>(c)));
            let v: Option<&[u8]> = v.as_ref().map(|b| b.as_slice());
            args.push(if c.ty == FieldType::Bytes {
                Arg::B(v)
            } else {
                Arg::OptS(v.and_then(|b| std::str::from_utf8(b).ok()))
            });
        }
        cond.push(E::null_safe_eq(&t.row_tag_column));
        args.push(Arg::B(row.tag.as_deref()));
        let sql = format!("UPDATE {} SET {} WHERE {}", t.table, sets.join(", "), cond.join(" AND "));
        let sql = E::sql(&sql).into_owned();
        let done = query::<E>(&sql).bind_all(args).execute(&mut **tx).await?;
        match done.rows_affected() {
            1 => {}
            0 => return Ok(RowOutcome::Changed),
            n => {
                return Err(StoreError::Schema(format!(
                    "table {}: the primary key found {n} rows for one key",
                    t.name
                )));
            }
        }
        written.push(Written {
            key: row.key.clone(),
            record: record.clone(),
            subject: row.subject.clone(),
            fields,
        });
        Ok(RowOutcome::Done(record))
    }

    /// Steps 2 and 3 of a batch, for the rows `written` in it: their sealed values are read back
    /// from the table (one `SELECT` per 200 rows) and opened, each must give the plaintext it
    /// replaces ([`StoreError::Integrity`] otherwise, and the whole batch rolls back), and only
    /// then are their plaintext columns set to NULL (one `UPDATE` per 200 rows).
    #[allow(clippy::too_many_arguments)]
    async fn verify_and_clear(
        &self,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        access: &Access,
        t: &AppTable,
        plain: &[&ProtectedColumn],
        written: &[Written],
        key_params: &[String],
        tags: &mut Tags,
    ) -> Result<()> {
        let keys_sql: Vec<String> = t
            .primary_key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS kluis_k{i}", E::cast_text(k)))
            .collect();
        let one_key = format!("({})", key_params.join(", "));
        let mut ad = Vec::with_capacity(160);
        for chunk in written.chunks(VERIFY_ROWS) {
            let keys_in = format!(
                "({}) IN ({})",
                t.primary_key.join(", "),
                vec![one_key.as_str(); chunk.len()].join(", ")
            );
            let key_args = || chunk.iter().flat_map(|w| w.key.iter().map(|k| Arg::S(k.as_str())));
            // 2. Read back and opened: each sealed value gives the plaintext it replaces.
            let cols: Vec<&str> = plain.iter().map(|c| c.name.as_str()).collect();
            let sql = format!(
                "SELECT {}, {} FROM {} WHERE {keys_in}",
                keys_sql.join(", "),
                cols.join(", "),
                t.table
            );
            let sql = E::sql(&sql).into_owned();
            let back = query::<E>(&sql).bind_all(key_args()).fetch_all(&mut **tx).await?;
            let mut stored: HashMap<Vec<String>, Vec<Option<Vec<u8>>>> = HashMap::with_capacity(back.len());
            let n = t.primary_key.len();
            for r in &back {
                let mut key = Vec::with_capacity(n);
                for i in 0..n {
                    key.push(opt_text(r, i)?.unwrap_or_default());
                }
                let mut values = Vec::with_capacity(cols.len());
                for i in 0..cols.len() {
                    values.push(r.col::<Option<Vec<u8>>>(n + i)?);
                }
                stored.insert(key, values);
            }
            for w in chunk {
                let integrity = |field: &str| StoreError::Integrity {
                    collection: t.name.clone(),
                    record: w.record.clone(),
                    field: field.to_owned(),
                };
                let Some(row) = stored.get(&w.key) else { return Err(integrity(&t.row_tag_column)) };
                for (name, value) in &w.fields {
                    let i = cols.iter().position(|c| c == name).ok_or_else(|| integrity(name))?;
                    let sealed = row.get(i).cloned().flatten().ok_or_else(|| integrity(name))?;
                    let c = t.protected_column(name).ok_or_else(|| integrity(name))?;
                    let set = access.require(c.domain.as_str())?;
                    let v = kluis_core::SealedHeader::parse(&sealed)
                        .ok()
                        .and_then(|h| h.key.version)
                        .ok_or_else(|| integrity(name))?;
                    let sk = self
                        .load_subject_key_in(tx, set, &w.subject, v, tags)
                        .await?
                        .ok_or_else(|| integrity(name))?;
                    let ctx = Context {
                        tenant: &access.tenant,
                        domain: set.domain(),
                        collection: &t.name,
                        field: name,
                        record: &w.record,
                    };
                    let pt = sk.open_vec(&ctx, sealed, &mut ad).map_err(|_| integrity(name))?;
                    if !ct_eq(pt.expose_secret(), value.encode().as_slice()) {
                        return Err(integrity(name));
                    }
                }
            }
            // 3. Only now the plaintext goes.
            let clears: Vec<String> = plain
                .iter()
                .map(|c| format!("{} = NULL", c.plaintext_column.as_deref().unwrap_or_default()))
                .collect();
            let sql = format!("UPDATE {} SET {} WHERE {keys_in}", t.table, clears.join(", "));
            let sql = E::sql(&sql).into_owned();
            let cleared = query::<E>(&sql).bind_all(key_args()).execute(&mut **tx).await?;
            if cleared.rows_affected() != chunk.len() as u64 {
                return Err(StoreError::Schema(format!(
                    "table {}: clearing {} rows by their primary keys changed {}",
                    t.name,
                    chunk.len(),
                    cleared.rows_affected()
                )));
            }
        }
        Ok(())
    }

    /// The `SET` of a row written with newly sealed `cells` (and their `indexes`): the cells, their
    /// blind index columns and the row tag over every cell the row holds afterwards (`present`,
    /// the cells read, with the new ones in their place); the clauses and their values, in order.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sealed_sets(
        access: &Access,
        t: &AppTable,
        (record, subject): (&str, &str),
        present: &[(&str, &[u8])],
        cells: &[FieldRow],
        indexes: &[IndexRow],
        tags: &mut Tags,
    ) -> Result<(Vec<String>, Vec<Vec<u8>>)> {
        let mut after: Vec<(&str, &[u8])> =
            present.iter().filter(|(c, _)| !cells.iter().any(|f| f.field == *c)).copied().collect();
        after.extend(cells.iter().map(|f| (f.field.as_str(), f.sealed.as_slice())));
        let tag = Self::app_row_tag(access, t, record, subject, &after, tags)?;
        let mut sets = Vec::new();
        let mut values = Vec::new();
        for f in cells {
            sets.push(format!("{} = ?", f.field));
            values.push(f.sealed.clone());
        }
        for (col, v) in index_columns(t, indexes)? {
            sets.push(format!("{col} = ?"));
            values.push(v);
        }
        sets.push(format!("{} = ?", t.row_tag_column));
        values.push(tag);
        Ok((sets, values))
    }

    /// A subject key version as this transaction sees it (made in it, or committed).
    pub(super) async fn load_subject_key_in(
        &self,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        set: &DomainKeySet,
        subject: &str,
        version: KeyVersion,
        tags: &mut Tags,
    ) -> Result<Option<Arc<SubjectKey>>> {
        if let Some((_, k)) = self.load_subject_key(set, subject, Some(version), tags).await? {
            return Ok(Some(k));
        }
        let row = SqlBackend::<E>::subject_key_locked(
            &mut **tx,
            set.tenant().as_str(),
            set.domain().as_str(),
            subject,
            version.to_stored(),
        )
        .await?;
        match row {
            Some(r) => Ok(Some(self.open_subject_row(set, &r, tags)?)),
            None => Ok(None),
        }
    }
}

/// Inside a row's function: on an error, the row is refused (left as it is, with the reason).
macro_rules! refuse {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Ok(RowOutcome::Refused(e.to_string())),
        }
    };
}
pub(super) use refuse;

/// A row's protected values, by column.
pub(super) type Cells<'a> = Vec<(&'a str, &'a [u8])>;

impl ReadRow {
    /// The row's record id (its key values and subject checked as ids) and the protected values
    /// it holds, by column.
    pub(super) fn identity<'a>(
        &'a self,
        t: &AppTable,
        protected: &'a [&'a ProtectedColumn],
    ) -> Result<(String, Cells<'a>)> {
        let key: Vec<&str> = self.key.iter().map(String::as_str).collect();
        let record = t.record_id(&key)?;
        check_id("subject id", &self.subject)?;
        let present = protected
            .iter()
            .zip(&self.cells)
            .filter_map(|(c, v)| v.as_deref().map(|v| (c.name.as_str(), v)))
            .collect();
        Ok((record, present))
    }
}

/// Rows per read-back `SELECT` and per clearing `UPDATE` of a batch.
const VERIFY_ROWS: usize = 200;

/// A row whose sealed values step 1 of a batch wrote: what steps 2 and 3 check and clear.
struct Written {
    key: Vec<String>,
    record: String,
    subject: String,
    /// The values sealed (wiped when dropped: `Value` holds plaintext).
    fields: Vec<(String, Value)>,
}

/// What became of one row.
pub(super) enum RowOutcome {
    /// Written: its record id.
    Done(String),
    /// Changed since it was read: left for the next pass.
    Changed,
    /// Nothing to do.
    Current,
    /// Left as it was, and why (never a value).
    Refused(String),
}

impl ColumnsStep {
    /// Counts one row's outcome; a written row goes to `done` (record id, subject).
    pub(super) fn count(
        &mut self,
        t: &AppTable,
        row: &ReadRow,
        outcome: RowOutcome,
        done: &mut Vec<(String, String)>,
    ) {
        match outcome {
            RowOutcome::Done(record) => {
                self.rows_written += 1;
                done.push((record, row.subject.clone()));
            }
            RowOutcome::Changed => self.conflicts += 1,
            RowOutcome::Current => self.rows_current += 1,
            RowOutcome::Refused(why) => {
                let id = t.record_id(&row.key.iter().map(String::as_str).collect::<Vec<_>>());
                self.rows_refused.push((id.unwrap_or_else(|_| row.key.join("/")), why));
            }
        }
    }
}

/// The protected columns that have a plaintext column; at least one.
fn plaintext_columns(t: &AppTable) -> Result<Vec<&ProtectedColumn>> {
    let plain: Vec<&ProtectedColumn> =
        t.protected_columns().filter(|c| c.plaintext_column.is_some()).collect();
    if plain.is_empty() {
        return Err(StoreError::Invalid(format!(
            "table {}: no protected column names a plaintext_column",
            t.name
        )));
    }
    Ok(plain)
}

pub(super) fn tenant_filter(t: &AppTable) -> (String, bool) {
    match &t.tenant {
        TenantSource::Column(c) => (format!("{c} = ? AND "), true),
        TenantSource::Fixed(_) => (String::new(), false),
    }
}

fn any_plaintext(plain: &[&ProtectedColumn]) -> String {
    plain
        .iter()
        .map(|c| format!("{} IS NOT NULL", c.plaintext_column.as_deref().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// A plaintext column as read: bytes as they are, anything else as text.
fn plaintext_expr<E: Engine>(c: &ProtectedColumn) -> String {
    let p = c.plaintext_column.as_deref().unwrap_or_default();
    if c.ty == FieldType::Bytes { p.to_owned() } else { E::cast_text(p) }
}

/// The condition that finds a row by its primary key values (bound as text, each through its
/// column's bind).
pub(super) fn locator_where(t: &AppTable, key_params: &[String]) -> String {
    t.primary_key.iter().zip(key_params).map(|(k, p)| format!("{k} = {p}")).collect::<Vec<_>>().join(" AND ")
}

/// A plaintext column's value (as text, or bytes) as a value of the protected column's type.
fn parse_plain(c: &ProtectedColumn, raw: &[u8]) -> std::result::Result<Value, String> {
    let bad = |what: &str| format!("column {}: the plaintext is not {what}", c.name);
    let text = || std::str::from_utf8(raw).map(str::trim).map_err(|_| bad("UTF-8 text"));
    let v = match c.ty {
        FieldType::Text => Value::Text(std::str::from_utf8(raw).map_err(|_| bad("UTF-8 text"))?.to_owned()),
        FieldType::Integer => Value::Integer(text()?.parse().map_err(|_| bad("an integer"))?),
        FieldType::Decimal | FieldType::Percentage => Value::Decimal(text()?.to_owned()),
        FieldType::Date => Value::Date(text()?.to_owned()),
        FieldType::Bool => Value::Bool(match text()?.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => true,
            "0" | "f" | "false" => false,
            _ => return Err(bad("a boolean")),
        }),
        FieldType::Bytes => Value::Bytes(raw.to_vec()),
    };
    // The column's own checks (type, size) on the value, never echoing it.
    v.check(c.ty).map_err(|why| format!("column {}: {why}", c.name))?;
    if v.payload_len() > c.max_bytes {
        return Err(format!("column {}: larger than {} bytes", c.name, c.max_bytes));
    }
    Ok(v)
}
