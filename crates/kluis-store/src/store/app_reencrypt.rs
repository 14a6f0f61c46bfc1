//! Re-encrypting the protected values of the application's mapped tables after a rotation
//! (docs/APP_TABLES.md, "Rotation, re-encryption and shredding"): batches of rows in primary key
//! order, each batch one transaction (claimed, leased and audited as encrypting is, see
//! [`super::app_encrypt`]); a row whose value of the domain is sealed under an older subject key
//! version than the subject's newest, or whose blind index is under an older domain key version
//! than the active one, has every value of the domain opened and sealed again under the newest
//! keys, with a new row tag, by an `UPDATE` that compares the row tag it read.

use super::app_encrypt::{BatchLimits, BatchRead, ColumnsStep, ReadRow, RowOutcome, locator_where, refuse};
use super::*;
use crate::app_table::{AppTable, ProtectedColumn};
use crate::audit::AuditEntry;
use crate::engine::{Arg, Cols, query, text};
use std::collections::HashMap;

/// Rows per page of [`Store::reencrypt_columns_plan`].
const PLAN_PAGE: u32 = 1000;

impl<E: Engine> Store<E> {
    /// How many rows of `table` (a mapping of the application's tables) in the tenant of `access`
    /// hold a value of `domain` that [`Store::reencrypt_columns_step`] would seal again: under
    /// an older subject key version than the subject's newest, or with a blind index under an
    /// older domain key version than the active one. Reads (without locks) every row with a
    /// value of the domain and checks each as the step does.
    pub async fn reencrypt_columns_plan(
        &self,
        access: &Access,
        table: &str,
        domain: &DomainName,
    ) -> Result<u64> {
        let t = self.reachable_table(access, table, "re-encrypting its columns")?;
        let set = access.require(domain.as_str())?;
        let active = active_of(set)?;
        let protected: Vec<&ProtectedColumn> = t.protected_columns().collect();
        let work = domain_work(t, domain)?;
        let mut tx = self.pool().begin().await?;
        let key_params = self.key_params(&mut tx, t).await?;
        let (mut n, mut after): (u64, Option<Vec<String>>) = (0, None);
        loop {
            let read = BatchRead {
                plain: &[],
                protected: &protected,
                work: work.clone(),
                rows: PLAN_PAGE,
                after: after.as_deref(),
                lock: "",
            };
            let rows = self.read_batch_rows(&mut tx, access, t, &read, &key_params).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.key.clone());
            let newest = self.newest_versions(set, &rows).await?;
            for row in &rows {
                if stale(domain, &protected, row, newest.get(&row.subject).copied(), active) {
                    n += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Re-encrypts up to `limits.rows` rows of `table` holding a value of `domain`, in primary
    /// key order after the row whose key is `after` (the previous step's
    /// [`ColumnsStep::last_key`]; `None` starts a pass), in one transaction. Each row read is
    /// checked against its row tag (a row that fails is refused and named, and left as it is);
    /// a row that needs it ([`Store::reencrypt_columns_plan`]) gets every value of the domain
    /// opened and sealed again under the subject's newest key version, its blind indexes under
    /// the active domain key version, and a new row tag, by an `UPDATE` that compares the row tag
    /// it read (a row changed meanwhile is a conflict, left for the next pass). One audit entry
    /// (`reencrypt_columns`, the rows, subjects and columns) commits with the batch.
    ///
    /// Run it after [`Store::reencrypt_step`] has given the subjects their new key versions;
    /// the next `reencrypt_step` then deletes the older versions nothing uses any more.
    /// `access` must hold `domain`, unlocked after the rotation ([`StoreError::KeyChanged`]
    /// otherwise), and cover the whole tenant, writing.
    pub async fn reencrypt_columns_step(
        &self,
        access: &Access,
        table: &str,
        domain: &DomainName,
        limits: &BatchLimits,
        after: Option<&[String]>,
        who: &AuditEntry,
    ) -> Result<ColumnsStep> {
        let t =
            self.job_table(access, table, "re-encrypting its columns", "re-encrypting a table's columns")?;
        let (set, active) = self.current_keys(access, domain).await?;
        let protected: Vec<&ProtectedColumn> = t.protected_columns().collect();
        let read = BatchRead {
            plain: &[],
            protected: &protected,
            work: domain_work(t, domain)?,
            rows: limits.rows,
            after,
            lock: E::CLAIM_LOCK,
        };
        let (mut tx, key_params, rows, mut step) = self.start_batch(access, t, &read, limits).await?;
        let mut done: Vec<(String, String)> = Vec::new();
        let mut tags = Tags::new();
        let newest = self.newest_versions(set, &rows).await?;
        for row in rows {
            let newest = newest.get(&row.subject).copied();
            let outcome = self
                .reencrypt_row(
                    &mut tx,
                    access,
                    t,
                    (set, active, newest),
                    &protected,
                    &row,
                    &key_params,
                    &mut tags,
                )
                .await?;
            step.count(t, &row, outcome, &mut done);
        }
        let columns: Vec<&str> =
            protected.iter().filter(|c| c.domain == *domain).map(|c| c.name.as_str()).collect();
        self.finish_batch(tx, access, t, &done, &columns, "reencrypt_columns", who).await?;
        Ok(step)
    }

    /// The newest key version of `set`'s domain of every subject of `rows`, as the database has
    /// it now (one query per 500 subjects; not as a cache of this process remembers it: another
    /// process may have made a newer one). A subject without a key is absent.
    async fn newest_versions(
        &self,
        set: &DomainKeySet,
        rows: &[ReadRow],
    ) -> Result<HashMap<String, KeyVersion>> {
        let mut subjects: Vec<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
        subjects.sort_unstable();
        subjects.dedup();
        let mut out = HashMap::with_capacity(subjects.len());
        for chunk in subjects.chunks(500) {
            let sql = format!(
                "SELECT subject, MAX(version) FROM kluis_subject_keys WHERE tenant = ? AND domain = ? \
                 AND subject IN ({}) GROUP BY subject",
                vec!["?"; chunk.len()].join(", ")
            );
            let sql = E::sql(&sql).into_owned();
            let mut q = query::<E>(&sql).bind(set.tenant().as_str()).bind(set.domain().as_str());
            for s in chunk {
                q = q.bind(*s);
            }
            for r in q.fetch_all(self.pool()).await? {
                let v: i64 = r.col(1)?;
                let v = KeyVersion::from_stored(v).map_err(|_| StoreError::Corrupt {
                    what: "subject key version",
                    reason: v.to_string(),
                })?;
                out.insert(text(&r, 0)?, v);
            }
        }
        Ok(out)
    }

    /// One row of [`Store::reencrypt_columns_step`]. Everything that can refuse it comes before
    /// its write.
    #[allow(clippy::too_many_arguments)]
    async fn reencrypt_row(
        &self,
        tx: &mut sqlx::Transaction<'static, E::Db>,
        access: &Access,
        t: &AppTable,
        (set, active, newest): (&DomainKeySet, KeyVersion, Option<KeyVersion>),
        protected: &[&ProtectedColumn],
        row: &ReadRow,
        key_params: &[String],
        tags: &mut Tags,
    ) -> Result<RowOutcome> {
        let domain = set.domain();
        let (record, present) = refuse!(row.identity(t, protected));
        // A row with nothing to do costs no more than its read; one to write is checked first.
        let Some(newest) = newest.filter(|_| stale(domain, protected, row, newest, active)) else {
            return Ok(RowOutcome::Current);
        };
        let Some(old_tag) = &row.tag else {
            return Ok(RowOutcome::Refused("a protected value without a row tag".into()));
        };
        refuse!(Self::check_app_row(access, t, &record, &row.subject, &present, old_tag, tags));
        // The newest key, for the sealing below.
        if self.load_subject_key(set, &row.subject, Some(newest), tags).await?.is_none() {
            return Err(StoreError::KeyChanged {
                what: format!("subject key {}/{domain}/{} v{newest}", access.tenant, row.subject),
            });
        }
        tags.remember_newest(&row.subject, domain.as_str(), newest);
        // Every value of the domain, opened under the version its header names.
        let mut fields: Vec<(String, Value)> = Vec::new();
        let mut ad = Vec::with_capacity(160);
        for (c, cell) in protected.iter().zip(&row.cells) {
            let Some(sealed) = cell.as_deref().filter(|_| c.domain == *domain) else { continue };
            let unreadable =
                || RowOutcome::Refused(format!("column {}: the value does not open under its key", c.name));
            let Some(v) = kluis_core::SealedHeader::parse(sealed).ok().and_then(|h| h.key.version) else {
                return Ok(unreadable());
            };
            let Some((_, sk)) = self.load_subject_key(set, &row.subject, Some(v), tags).await? else {
                return Ok(unreadable());
            };
            let ctx = Context {
                tenant: &access.tenant,
                domain,
                collection: &t.name,
                field: &c.name,
                record: &record,
            };
            let Ok(pt) = sk.open_vec(&ctx, sealed.to_vec(), &mut ad) else { return Ok(unreadable()) };
            let Some(value) = Value::decode(pt.expose_secret()) else { return Ok(unreadable()) };
            fields.push((c.name.clone(), value));
        }
        let coll = t.as_collection();
        let (cells, indexes) =
            refuse!(Self::seal_fields_now(access, &coll, &record, &row.subject, &fields, tags));
        let (sets, values) =
            refuse!(Self::sealed_sets(access, t, (&record, &row.subject), &present, &cells, &indexes, tags));
        let mut args: Vec<Arg<'_>> = values.iter().map(|v| Arg::B(Some(v.as_slice()))).collect();
        args.extend(row.key.iter().map(|k| Arg::S(k.as_str())));
        args.push(Arg::B(Some(old_tag.as_slice())));
        let sql = format!(
            "UPDATE {} SET {} WHERE {} AND {}",
            t.table,
            sets.join(", "),
            locator_where(t, key_params),
            E::null_safe_eq(&t.row_tag_column)
        );
        let sql = E::sql(&sql).into_owned();
        let done = query::<E>(&sql).bind_all(args).execute(&mut **tx).await?;
        match done.rows_affected() {
            1 => Ok(RowOutcome::Done(record)),
            0 => Ok(RowOutcome::Changed),
            n => Err(StoreError::Schema(format!(
                "table {}: the primary key found {n} rows for one key",
                t.name
            ))),
        }
    }
}

/// The active version of a key set.
fn active_of(set: &DomainKeySet) -> Result<KeyVersion> {
    set.active_version().ok_or_else(|| {
        StoreError::Core(kluis_core::Error::UnknownKey {
            key: format!("{}/{} (no active version)", set.tenant(), set.domain()),
        })
    })
}

/// The rows a re-encryption of `domain` reads: those with a value of the domain. Which of them
/// are under older keys is decided per row ([`stale`]) from the headers and the batch's newest
/// subject key versions (one query): a condition in SQL against `kluis_subject_keys` per row
/// made the step two to four times slower on PostgreSQL and MariaDB (BENCHMARKS.md).
fn domain_work(t: &AppTable, domain: &DomainName) -> Result<String> {
    let cols: Vec<String> = t
        .protected_columns()
        .filter(|c| c.domain == *domain)
        .map(|c| format!("{} IS NOT NULL", c.name))
        .collect();
    if cols.is_empty() {
        return Err(StoreError::Invalid(format!("table {}: no protected column of domain {domain}", t.name)));
    }
    Ok(cols.join(" OR "))
}

/// Does `row` hold a value of `domain` under another subject key version than `newest`, or a
/// blind index under another domain key version than `active`? A subject without a key (shredded)
/// has nothing to seal again.
fn stale(
    domain: &DomainName,
    protected: &[&ProtectedColumn],
    row: &ReadRow,
    newest: Option<KeyVersion>,
    active: KeyVersion,
) -> bool {
    let Some(newest) = newest else { return false };
    protected.iter().zip(row.cells.iter().zip(&row.indexes)).any(|(c, (cell, index))| {
        let Some(sealed) = cell.as_deref().filter(|_| c.domain == *domain) else { return false };
        // A value under a newer version than `newest` (made after `newest` was read) is left.
        let under = kluis_core::SealedHeader::parse(sealed).ok().and_then(|h| h.key.version);
        let index_stale = c.blind_index_column.is_some()
            && index.as_deref().and_then(|i| i.get(..4)) != Some(active.to_be_bytes().as_slice());
        under.is_none_or(|u| u < newest) || index_stale
    })
}
