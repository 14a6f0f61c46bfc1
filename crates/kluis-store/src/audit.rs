//! The audit log's storage (owned by `kluis-service`, which builds entries and verifies the chain).
//!
//! An append-only, hash-chained table in the store's own database, appended **in the same
//! transaction** as the change it records ([`WriteOp::Audit`], [`Store::audited_transaction`]).
//! Entries hold names, ids and reasons, never a field value. Each entry's hash covers the previous
//! entry's hash ([`entry_hash`]); one head row holds the last sequence number and hash and is locked
//! by every appender, so appends are serialised on every engine:
//!
//! - PostgreSQL and MariaDB: `SELECT .. FROM kluis_audit_head .. FOR UPDATE` inside the write
//!   transaction (a locking read sees the latest committed head, also under REPEATABLE READ);
//! - SQLite: the append starts with an `UPDATE` of the head row, so the transaction takes the
//!   database write lock (waiting for the busy timeout) **before** it reads the head.
//!
//! A transaction with rows or an entry takes that lock as its first statement
//! ([`crate::row_log`]) and appends its entries last, after its row log entries.
//!
//! Every `checkpoint_every` entries a checkpoint row (seq, hash) is written in the same transaction.
//! docs/SERVICE.md gives the hash input byte by byte.

use crate::engine::Cols;
use sha2::{Digest, Sha256};

use crate::backend::{SqlBackend, WriteOp};
use crate::engine::{Engine, RowOf, query, text_as};
use crate::error::{Result, StoreError};
use crate::store::{Access, Op, Store, Written};

/// Domain separation prefix of the entry hash (15 bytes).
pub const HASH_PREFIX: &[u8] = b"kluis-audit-v1\n";

/// Domain separation prefix of the hash of an entry that covers the row log (15 bytes).
pub const HASH_PREFIX_V2: &[u8] = b"kluis-audit-v2\n";

/// The hash that precedes entry 1 (32 zero bytes).
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Default checkpoint interval (entries).
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;

/// One audit entry as stored: names and ids only, never a field value. Empty strings stand for
/// "none". Lists are comma-separated (roles; `domain:field` names; record ids).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditEntry {
    /// When, unix milliseconds.
    pub at_ms: i64,
    /// The acting user.
    pub actor: String,
    /// The actor's roles, comma-separated, sorted.
    pub roles: String,
    /// The support grant used, if any.
    pub support_grant: String,
    /// The tenant whose data (or log) was touched.
    pub tenant: String,
    /// Data subject(s), comma-separated.
    pub subject: String,
    /// Collection.
    pub collection: String,
    /// Record id(s), comma-separated.
    pub record: String,
    /// Fields touched, as `domain:field`, comma-separated (names, never values).
    pub fields: String,
    /// Action (`read`, `write`, `create`, `update`, `delete`, `search`, `export`, `shred`,
    /// `read_audit`, or an admin event name).
    pub action: String,
    /// Outcome: `allowed`, `denied`, `not_found`, `error`.
    pub outcome: String,
    /// Why (the deny reason, the basis of an allow, the error kind).
    pub reason: String,
    /// The stated break-glass reason (empty if none).
    pub break_glass: String,
    /// Client information the app passes in (workstation, IP, app name).
    pub access_point: String,
    /// Purpose of use.
    pub purpose: String,
    /// The user on whose behalf the action was taken.
    pub on_behalf_of: String,
}

impl AuditEntry {
    /// The text fields in hash order.
    pub fn text_fields(&self) -> [&str; 15] {
        [
            &self.actor,
            &self.roles,
            &self.support_grant,
            &self.tenant,
            &self.subject,
            &self.collection,
            &self.record,
            &self.fields,
            &self.action,
            &self.outcome,
            &self.reason,
            &self.break_glass,
            &self.access_point,
            &self.purpose,
            &self.on_behalf_of,
        ]
    }
}

/// SHA-256 over `HASH_PREFIX || prev (32) || seq (u64 BE) || at_ms (i64 BE)` and, for each of the
/// 15 text fields in [`AuditEntry::text_fields`] order, `len (u32 BE) || UTF-8 bytes`: the hash of
/// an entry written before the row log existed.
pub fn entry_hash(prev: &[u8; 32], seq: u64, e: &AuditEntry) -> [u8; 32] {
    entry_hasher(HASH_PREFIX, prev, seq, e).finalize().into()
}

/// The hash of an entry that covers the row log ([`crate::row_log`]): as [`entry_hash`] with
/// `HASH_PREFIX_V2`, followed by the row log position (u64 BE) and running hash (32 bytes) at
/// the time of the append.
pub fn entry_hash_v2(
    prev: &[u8; 32],
    seq: u64,
    e: &AuditEntry,
    rows_seq: u64,
    rows_hash: &[u8; 32],
) -> [u8; 32] {
    let mut h = entry_hasher(HASH_PREFIX_V2, prev, seq, e);
    h.update(rows_seq.to_be_bytes());
    h.update(rows_hash);
    h.finalize().into()
}

/// The hash `row` should have after `prev`: [`entry_hash_v2`] if it covers the row log, else
/// [`entry_hash`]; `None` if its row log fields are malformed (a negative position, a hash that is
/// not 32 bytes).
pub fn row_hash(prev: &[u8; 32], row: &AuditRow) -> Option<[u8; 32]> {
    let seq = u64::try_from(row.seq).ok()?;
    match &row.rows {
        None => Some(entry_hash(prev, seq, &row.entry)),
        Some((rs, rh)) => {
            let rs = u64::try_from(*rs).ok()?;
            let rh: [u8; 32] = rh.as_slice().try_into().ok()?;
            Some(entry_hash_v2(prev, seq, &row.entry, rs, &rh))
        }
    }
}

fn entry_hasher(prefix: &[u8], prev: &[u8; 32], seq: u64, e: &AuditEntry) -> Sha256 {
    let mut h = Sha256::new();
    h.update(prefix);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(e.at_ms.to_be_bytes());
    for t in e.text_fields() {
        let len = u32::try_from(t.len()).unwrap_or(u32::MAX);
        h.update(len.to_be_bytes());
        h.update(t.as_bytes());
    }
    h
}

/// An entry to append, with the checkpoint interval.
#[derive(Clone, Debug)]
pub struct AuditAppend {
    /// The entry.
    pub entry: AuditEntry,
    /// Write a checkpoint when the new sequence number is a multiple of this (0: never).
    pub checkpoint_every: u64,
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// Position, from 1.
    pub seq: i64,
    /// The entry.
    pub entry: AuditEntry,
    /// Stored hash (as the database holds it: may have any length if tampered).
    pub hash: Vec<u8>,
    /// The row log position and running hash the entry covers ([`crate::row_log`]); `None` in an
    /// entry written before the row log existed.
    pub rows: Option<(i64, Vec<u8>)>,
}

impl AuditRow {
    /// The row log position this entry covers, as a claim for [`Store::verify_rows`]; `None` if it
    /// covers none, or its fields are malformed ([`row_hash`] then fails too).
    pub fn rows_claim(&self) -> Option<crate::row_log::RowsClaim> {
        let (rs, rh) = self.rows.as_ref()?;
        Some(crate::row_log::RowsClaim {
            audit_seq: u64::try_from(self.seq).ok()?,
            rows_seq: u64::try_from(*rs).ok()?,
            rows_hash: rh.clone(),
        })
    }
}

/// A stored checkpoint row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRow {
    /// Sequence number of the entry it seals.
    pub seq: i64,
    /// When, unix milliseconds.
    pub at_ms: i64,
    /// That entry's hash.
    pub hash: Vec<u8>,
}

/// Where a record lives: its tenant and subject (clear columns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOwner {
    /// Tenant.
    pub tenant: String,
    /// Subject.
    pub subject: String,
}

const AUDIT_COLS: &str = "seq, at_ms, actor, roles, support_grant, tenant, subject, collection, record, fields, \
                          action, outcome, reason, break_glass, access_point, purpose, on_behalf_of, hash, \
                          rows_seq, rows_hash";

fn hash32(b: &[u8]) -> Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt { what: "audit head", reason: "hash is not 32 bytes".into() })
}

impl<E: Engine> SqlBackend<E> {
    fn audit_row(row: &RowOf<E>) -> Result<AuditRow> {
        let t = |i| text_as(row, i, "audit column");
        Ok(AuditRow {
            seq: row.col(0)?,
            entry: AuditEntry {
                at_ms: row.col(1)?,
                actor: t(2)?,
                roles: t(3)?,
                support_grant: t(4)?,
                tenant: t(5)?,
                subject: t(6)?,
                collection: t(7)?,
                record: t(8)?,
                fields: t(9)?,
                action: t(10)?,
                outcome: t(11)?,
                reason: t(12)?,
                break_glass: t(13)?,
                access_point: t(14)?,
                purpose: t(15)?,
                on_behalf_of: t(16)?,
            },
            hash: row.col(17)?,
            rows: match (row.col::<Option<i64>>(18)?, row.col::<Option<Vec<u8>>>(19)?) {
                (Some(s), Some(h)) => Some((s, h)),
                (None, None) => None,
                // One without the other: kept so that the hash check fails on it.
                (s, h) => Some((s.unwrap_or(-1), h.unwrap_or_default())),
            },
        })
    }

    /// Appends one entry inside `tx` (see the module documentation for the locking); it
    /// covers the row log as it stands in `tx`, so a transaction appends its row log
    /// entries first.
    pub(crate) async fn audit_append(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        a: AuditAppend,
    ) -> Result<()> {
        // The head row, locked until the transaction ends (on SQLite, which has no row locks,
        // by taking the database's write lock first).
        if E::UPDATE_LOCK.is_empty() {
            Self::lock_head(tx).await?;
        }
        let head_sql = format!(
            "SELECT seq, hash, rows_seq, rows_hash FROM kluis_audit_head WHERE id = 1{}",
            E::UPDATE_LOCK
        );
        let head = query::<E>(&head_sql).fetch_optional(&mut **tx).await?.ok_or_else(|| {
            StoreError::Corrupt { what: "audit head", reason: "the head row is missing".into() }
        })?;
        let last: i64 = head.col(0)?;
        let prev_bytes: Vec<u8> = head.col(1)?;
        let prev = hash32(&prev_bytes)?;
        let rows_seq: i64 = head.col(2)?;
        let rows_bytes: Vec<u8> = head.col(3)?;
        let rows_hash = hash32(&rows_bytes)?;
        let urows = u64::try_from(rows_seq).map_err(|_| StoreError::Corrupt {
            what: "audit head",
            reason: "negative row log position".into(),
        })?;
        let seq = last.checked_add(1).ok_or_else(|| StoreError::Invalid("audit sequence overflow".into()))?;
        let useq = u64::try_from(seq).map_err(|_| StoreError::Invalid("audit sequence negative".into()))?;
        let e = &a.entry;
        let hash = entry_hash_v2(&prev, useq, e, urows, &rows_hash);
        let sql = format!(
            "INSERT INTO kluis_audit ({AUDIT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        let sql = E::sql(&sql);
        let mut q = query::<E>(&sql).bind(seq).bind(e.at_ms);
        for t in e.text_fields() {
            q = q.bind(t);
        }
        q.bind(hash.to_vec()).bind(rows_seq).bind(rows_hash.to_vec()).execute(&mut **tx).await?;
        let done =
            query::<E>(&E::sql("UPDATE kluis_audit_head SET seq = ?, hash = ? WHERE id = 1 AND seq = ?"))
                .bind(seq)
                .bind(hash.to_vec())
                .bind(last)
                .execute(&mut **tx)
                .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Corrupt {
                what: "audit head",
                reason: "the head moved during an append".into(),
            });
        }
        if a.checkpoint_every > 0 && useq % a.checkpoint_every == 0 {
            query::<E>(&E::sql("INSERT INTO kluis_audit_checkpoints (seq, at_ms, hash) VALUES (?, ?, ?)"))
                .bind(seq)
                .bind(e.at_ms)
                .bind(hash.to_vec())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

impl<E: Engine> SqlBackend<E> {
    /// Up to `limit` entries after `after`, in sequence order; only `tenant`'s if given.
    pub async fn audit_page(&self, tenant: Option<&str>, after: i64, limit: u32) -> Result<Vec<AuditRow>> {
        let sql = match tenant {
            Some(_) => format!(
                "SELECT {AUDIT_COLS} FROM kluis_audit WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT ?"
            ),
            None => format!("SELECT {AUDIT_COLS} FROM kluis_audit WHERE seq > ? ORDER BY seq LIMIT ?"),
        };
        let sql = E::sql(&sql);
        let mut q = query::<E>(&sql);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let rows = q.bind(after).bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.iter().map(Self::audit_row).collect()
    }

    /// The head row: (last sequence number, its hash).
    pub async fn audit_head(&self) -> Result<(i64, Vec<u8>)> {
        let row = query::<E>("SELECT seq, hash FROM kluis_audit_head WHERE id = 1")
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "audit head",
                reason: "the head row is missing".into(),
            })?;
        Ok((row.col(0)?, row.col(1)?))
    }

    /// Every checkpoint row, in sequence order.
    pub async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        let rows = query::<E>("SELECT seq, at_ms, hash FROM kluis_audit_checkpoints ORDER BY seq")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok(CheckpointRow { seq: r.col(0)?, at_ms: r.col(1)?, hash: r.col(2)? })).collect()
    }

    /// Which tenants hold a record with this collection and id (ids are unique per tenant only).
    pub async fn record_owners(&self, table: &crate::layout::Table, id: &str) -> Result<Vec<RecordOwner>> {
        let sql = format!("SELECT tenant, subject FROM {} WHERE id = ? ORDER BY tenant", table.name);
        let rows = query::<E>(&E::sql(&sql)).bind(id).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(RecordOwner {
                    tenant: text_as(r, 0, "audit column")?,
                    subject: text_as(r, 1, "audit column")?,
                })
            })
            .collect()
    }
}

impl<E: Engine> Store<E> {
    /// Runs `ops` as [`Store::transaction`] does, with `audit` appended **in the same database
    /// transaction**: the audit head lock is taken before anything else, the entry appended after
    /// the rows and their row log entries (so it covers them): either the changes and their
    /// audit entry are both committed, or neither is.
    pub async fn audited_transaction(
        &self,
        access: &Access,
        ops: Vec<Op>,
        audit: AuditAppend,
    ) -> Result<Vec<Written>> {
        // As `Store::transaction` (sealing while writing; a write sealed under a subject key that
        // a re-encryption or a shred removed meanwhile is refused by the database and retried
        // with fresh keys), with the head lock first and the audit entry last.
        self.run_transaction(access, ops, Some(&audit)).await
    }

    /// [`Store::shred_subject`] with its audit entry appended in the same database transaction as
    /// the removal of the subject's keys, records and catalog rows (the step that makes the shred
    /// happen; the rotation and purge that follow only harden it). If that transaction fails,
    /// neither the removal nor the entry is stored.
    pub async fn shred_subject_audited(
        &self,
        provider: &dyn kluis_core::RootKeyProvider,
        access: &mut Access,
        subject: &str,
        legal_override: Option<crate::store::LegalOverride>,
        audit: AuditAppend,
    ) -> Result<crate::store::ShredReport> {
        self.shred_subject_with(provider, access, subject, legal_override, Some(audit)).await
    }

    /// Up to `limit` audit entries after `after`, in sequence order; only `tenant`'s if given.
    pub async fn audit_page(&self, tenant: Option<&str>, after: i64, limit: u32) -> Result<Vec<AuditRow>> {
        self.backend().audit_page(tenant, after, limit).await
    }

    /// The audit head row: (last sequence number, its hash).
    pub async fn audit_head(&self) -> Result<(i64, Vec<u8>)> {
        self.backend().audit_head().await
    }

    /// Every audit checkpoint row, in sequence order.
    pub async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        self.backend().audit_checkpoints().await
    }

    /// Appends one audit entry in its own transaction (for reads, denials and admin events).
    pub async fn append_audit(&self, audit: AuditAppend) -> Result<()> {
        self.backend().apply(vec![WriteOp::Audit(audit)]).await
    }
}
