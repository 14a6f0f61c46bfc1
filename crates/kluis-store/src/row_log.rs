//! The row log: freshness of the collection tables through the audit chain.
//!
//! A row tag ([`crate::layout`]) proves that a row is one Kluis wrote, not that it is the **last**
//! one Kluis wrote for that record: a row put back from a backup, or a row deleted, is consistent
//! on its own. So every transaction that changes a row of a collection table appends, in the same
//! transaction, one entry per changed row to `kluis_row_log`: tenant, collection, record id and the
//! row tag written (none for a deletion). The log has a running hash, kept in the audit head row
//! beside the audit chain's own; every audit entry appended after it covers the log's position and
//! running hash at that moment (docs/SERVICE.md, "Entry hash"). A checkpoint of the audit chain
//! kept outside the database therefore pins the row log up to that entry, and
//! [`crate::Store::verify_rows`] compares the last logged tag of every record with the tables.
//!
//! Running hash, byte by byte (SHA-256, starting from 32 zero bytes):
//!
//! ```text
//! "kluis-rows-v1\n"       14 bytes
//! previous running hash   32 bytes
//! seq                     u64 big-endian (1, 2, 3, ...)
//! tenant, collection, record   each u32 big-endian byte length || UTF-8 bytes
//! tag                     0x00 (deleted) | 0x01 || u32 big-endian length || tag bytes
//! ```
//!
//! Writers serialise on the audit head row: a transaction that writes rows or an audit entry
//! locks it first (before any row), appends its row log entries, then its audit entries.

use sha2::{Digest, Sha256};

/// Domain separation prefix of the row log's running hash (14 bytes).
pub const ROWS_PREFIX: &[u8] = b"kluis-rows-v1\n";

/// The running hash before entry 1 (32 zero bytes).
pub const ROWS_GENESIS: [u8; 32] = [0u8; 32];

/// One change to a row: the tag written, or `None` for a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowLogEntry {
    /// Tenant.
    pub tenant: String,
    /// Collection.
    pub collection: String,
    /// Record id.
    pub record: String,
    /// The row tag written; `None`: the row was deleted.
    pub tag: Option<Vec<u8>>,
}

impl RowLogEntry {
    /// A row written with `tag`.
    pub fn written(tenant: &str, collection: &str, record: &str, tag: &[u8]) -> Self {
        Self {
            tenant: tenant.to_owned(),
            collection: collection.to_owned(),
            record: record.to_owned(),
            tag: Some(tag.to_vec()),
        }
    }
}

/// A stored row log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowLogRow {
    /// Position, from 1.
    pub seq: i64,
    /// The change.
    pub entry: RowLogEntry,
}

fn put(h: &mut Sha256, b: &[u8]) {
    // Tenants, collections and ids are at most 255 bytes, tags 37: a u32 length is exact.
    h.update(u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(b);
}

/// The running hash after entry `seq` (see the module documentation for the bytes).
pub fn rows_hash(prev: &[u8; 32], seq: u64, e: &RowLogEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ROWS_PREFIX);
    h.update(prev);
    h.update(seq.to_be_bytes());
    put(&mut h, e.tenant.as_bytes());
    put(&mut h, e.collection.as_bytes());
    put(&mut h, e.record.as_bytes());
    match &e.tag {
        None => h.update([0u8]),
        Some(t) => {
            h.update([1u8]);
            put(&mut h, t);
        }
    }
    h.finalize().into()
}

/// A position of the row log an audit entry covers: the entry's sequence number, the row log's
/// length and running hash when the entry was appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowsClaim {
    /// The audit entry.
    pub audit_seq: u64,
    /// Row log entries before it.
    pub rows_seq: u64,
    /// The running hash after entry `rows_seq`.
    pub rows_hash: Vec<u8>,
}

/// What is wrong with one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowFinding {
    /// The row's tag is not the last one Kluis wrote: the row was put back to an older state
    /// (from a backup, say), copied, or changed outside Kluis.
    NotLastWritten,
    /// Kluis's last change wrote the row, and it is gone: deleted outside Kluis.
    Deleted,
    /// A row Kluis never wrote (or deleted last): inserted or put back outside Kluis.
    NotLogged,
}

impl RowFinding {
    /// A short description (lower-case).
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotLastWritten => {
                "the row is not the one Kluis wrote last (rolled back, copied or changed outside Kluis)"
            }
            Self::Deleted => "the row Kluis wrote last is missing (deleted outside Kluis)",
            Self::NotLogged => "the row is not in the row log (inserted or restored outside Kluis)",
        }
    }
}

/// One record whose row differs from the row log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowProblem {
    /// Tenant.
    pub tenant: String,
    /// Collection.
    pub collection: String,
    /// Record id.
    pub record: String,
    /// What is wrong.
    pub finding: RowFinding,
}

/// What [`crate::Store::verify_rows`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RowsReport {
    /// Row log entries read.
    pub log_entries: u64,
    /// Rows of the collection tables compared with the log.
    pub rows: u64,
    /// Row log entries after the last audit entry's claim: not yet covered by the audit chain
    /// (a later audit entry covers them).
    pub uncovered: u64,
    /// A break in the log itself (gap, edited entry, claim that does not match), if any: the
    /// comparison of the rows is then not made.
    pub log_problem: Option<String>,
    /// Records whose row differs from the log, in (tenant, collection, record) order.
    pub problems: Vec<RowProblem>,
}

impl RowsReport {
    /// No problem found.
    pub fn is_ok(&self) -> bool {
        self.log_problem.is_none() && self.problems.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, AuditRow, entry_hash, entry_hash_v2, row_hash};

    fn hex(s: &serde_json::Value) -> Vec<u8> {
        let s = s.as_str().unwrap();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The committed vector (tests/vectors/audit_rows_v1.json, computed by a script from the
    /// bytes documented here and in docs/SERVICE.md): the row log's running hash over an insert
    /// and a deletion, and the entry hash of an audit entry before and after the row log.
    #[test]
    fn row_log_and_audit_v2_vector() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/vectors/audit_rows_v1.json")).unwrap();
        let mut running = ROWS_GENESIS;
        for e in v["row_log"].as_array().unwrap() {
            let entry = RowLogEntry {
                tenant: e["tenant"].as_str().unwrap().into(),
                collection: e["collection"].as_str().unwrap().into(),
                record: e["record"].as_str().unwrap().into(),
                tag: (!e["tag"].is_null()).then(|| hex(&e["tag"])),
            };
            running = rows_hash(&running, e["seq"].as_u64().unwrap(), &entry);
            assert_eq!(running.to_vec(), hex(&e["running_hash"]));
        }
        let a = &v["audit_entry"];
        let t = |k: &str| a[k].as_str().unwrap().to_owned();
        let entry = AuditEntry {
            at_ms: a["at_ms"].as_i64().unwrap(),
            actor: t("actor"),
            roles: t("roles"),
            support_grant: t("support_grant"),
            tenant: t("tenant"),
            subject: t("subject"),
            collection: t("collection"),
            record: t("record"),
            fields: t("fields"),
            action: t("action"),
            outcome: t("outcome"),
            reason: t("reason"),
            break_glass: t("break_glass"),
            access_point: t("access_point"),
            purpose: t("purpose"),
            on_behalf_of: t("on_behalf_of"),
        };
        let prev: [u8; 32] = hex(&v["audit_prev_hash"]).try_into().unwrap();
        let seq = v["audit_seq"].as_u64().unwrap();
        assert_eq!(entry_hash(&prev, seq, &entry).to_vec(), hex(&v["audit_v1_hash"]));
        let rows_seq = v["audit_v2_rows_seq"].as_u64().unwrap();
        let rows_h: [u8; 32] = hex(&v["audit_v2_rows_hash"]).try_into().unwrap();
        assert_eq!(rows_h, running);
        assert_eq!(entry_hash_v2(&prev, seq, &entry, rows_seq, &rows_h).to_vec(), hex(&v["audit_v2_hash"]));
        // A stored row picks the version by its row log columns.
        let mut row = AuditRow { seq: 7, entry, hash: vec![], rows: None };
        assert_eq!(row_hash(&prev, &row).unwrap().to_vec(), hex(&v["audit_v1_hash"]));
        row.rows = Some((2, rows_h.to_vec()));
        assert_eq!(row_hash(&prev, &row).unwrap().to_vec(), hex(&v["audit_v2_hash"]));
        row.rows = Some((-1, rows_h.to_vec()));
        assert!(row_hash(&prev, &row).is_none(), "a negative position");
        row.rows = Some((2, rows_h[..31].to_vec()));
        assert!(row_hash(&prev, &row).is_none(), "a short hash");
    }
}
