//! The audit log's storage (owned by `kluis-service`, which builds entries and verifies the chain).
//!
//! An append-only, hash-chained table in the store's own database, appended **in the same
//! transaction** as the change it records ([`crate::Store::audited_transaction`]).
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
//! docs/SERVICE.md gives the hash input byte by byte. This module holds the entry and its hash;
//! the SQL is in the store's SQL layer, the audited calls are methods of [`crate::Store`].

use sha2::{Digest, Sha256};

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
    /// The row log position this entry covers, as a claim for [`crate::Store::verify_rows`]; `None` if it
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
