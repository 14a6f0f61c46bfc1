//! The audit log: append-only, hash-chained, in the store's own database.
//!
//! Entries are written by [`crate::Service`] (every data access, every denial, reads of the log
//! itself, admin events) through `kluis_store::audit`, in the same database transaction as the
//! change they record. This module verifies the chain, exports it as JSON lines, and hands out
//! checkpoints an operator keeps **outside** the database.
//!
//! Entry hash (SHA-256), byte by byte:
//!
//! ```text
//! "kluis-audit-v1\n"            15 bytes
//! previous entry's hash         32 bytes (32 zero bytes before entry 1)
//! seq                           u64 big-endian (1, 2, 3, ...)
//! at_ms                         i64 big-endian (unix milliseconds)
//! 15 text fields, each          u32 big-endian byte length || UTF-8 bytes, in this order:
//!   actor, roles, support_grant, tenant, subject, collection, record, fields, action,
//!   outcome, reason, break_glass, access_point, purpose, on_behalf_of
//! ```
//!
//! An entry appended since the row log exists (`kluis_store::row_log`) is hashed with the prefix
//! `"kluis-audit-v2\n"` instead, and the same bytes followed by the row log's position (u64
//! big-endian) and running hash (32 bytes) at the time of the append: so the chain also covers
//! every change Kluis made to a row of a collection table, and [`verify`] compares the rows with
//! the last change logged for each.
//!
//! A checkpoint is `(seq, hash of entry seq)`; its text form is
//! `kluis-audit-checkpoint:v1:<seq>:<64 lower-case hex digits>`.

use std::collections::BTreeMap;
use std::io::Write;

use kluis_core::TenantId;
use kluis_store::audit::{AuditRow, GENESIS, row_hash};
use kluis_store::row_log::{RowsClaim, RowsReport};
use kluis_store::{Engine, Store};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use kluis_store::audit::{AuditEntry, DEFAULT_CHECKPOINT_EVERY};

const PAGE: u32 = 1000;

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Entries read.
    pub entries: u64,
    /// The first bad position (sequence number), if any.
    pub first_bad: Option<u64>,
    /// What is wrong there (lower-case, names no values).
    pub problem: Option<String>,
    /// Checkpoint rows in the database that were checked.
    pub checkpoints: u64,
    /// The head row's sequence number.
    pub head_seq: u64,
    /// The rows of the collection tables against the row log the chain covers; `None` if the
    /// chain itself is broken (its claims prove nothing then).
    pub rows: Option<RowsReport>,
}

impl VerifyReport {
    /// No problem found, in the chain or in the rows.
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none() && self.rows.as_ref().is_none_or(RowsReport::is_ok)
    }

    fn fail(&mut self, seq: u64, problem: String) {
        if self.first_bad.is_none_or(|b| seq < b) {
            self.first_bad = Some(seq);
            self.problem = Some(problem);
        }
    }
}

/// A chain position an operator stores elsewhere (a ticket, a second system, paper): with it,
/// [`verify_against`] detects a truncated tail or a chain rewritten from scratch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the entry.
    pub seq: u64,
    /// That entry's hash, 64 lower-case hex digits.
    pub hash: String,
}

impl Checkpoint {
    /// `kluis-audit-checkpoint:v1:<seq>:<hex>`.
    pub fn to_text(&self) -> String {
        format!("kluis-audit-checkpoint:v1:{}:{}", self.seq, self.hash)
    }

    /// Parses [`Checkpoint::to_text`].
    pub fn parse(s: &str) -> Result<Self> {
        let bad =
            || Error::invalid("audit checkpoint", "expected kluis-audit-checkpoint:v1:<seq>:<64 hex digits>");
        let rest = s.trim().strip_prefix("kluis-audit-checkpoint:v1:").ok_or_else(bad)?;
        let (seq, hash) = rest.split_once(':').ok_or_else(bad)?;
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
            return Err(bad());
        }
        Ok(Self { seq, hash: hash.to_owned() })
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

async fn walk<B: Engine>(
    store: &Store<B>,
    want: &[u64],
) -> Result<(VerifyReport, BTreeMap<u64, Vec<u8>>, Vec<RowsClaim>)> {
    let mut report = VerifyReport::default();
    let mut claims = Vec::new();
    let mut prev: Vec<u8> = GENESIS.to_vec();
    let mut expected: u64 = 1;
    let mut after: i64 = 0;
    let mut hashes = BTreeMap::new();
    loop {
        let page = store.audit_page(None, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() == PAGE as usize;
        for row in &page {
            report.entries += 1;
            let seq = to_u64(row.seq);
            if report.first_bad.is_none() {
                check_row(&mut report, row, &mut prev, &mut expected);
            }
            if want.binary_search(&seq).is_ok() {
                hashes.insert(seq, row.hash.clone());
            }
            claims.extend(row.rows_claim());
        }
        if !full {
            break;
        }
    }
    let (head_seq, head_hash) = store.audit_head().await?;
    report.head_seq = to_u64(head_seq);
    if head_seq < 0 && report.first_bad.is_none() {
        report.fail(expected, format!("the head row names the negative sequence number {head_seq} (edited)"));
    }
    if report.first_bad.is_none() {
        let last = expected - 1;
        if report.head_seq > last {
            report.fail(
                last + 1,
                format!("truncated: the head names entry {} but the chain ends at {last}", report.head_seq),
            );
        } else if report.head_seq < last || head_hash != prev {
            report.fail(
                report.head_seq.max(1),
                "the head row does not match the last entry (entries appended or head edited)".into(),
            );
        }
    }
    Ok((report, hashes, claims))
}

/// Adds the row check (the chain's claims against the row log and the tables) if the chain is
/// sound.
async fn check_rows<B: Engine>(
    store: &Store<B>,
    report: &mut VerifyReport,
    claims: &[RowsClaim],
) -> Result<()> {
    if report.first_bad.is_none() {
        report.rows = Some(store.verify_rows(claims).await?);
    }
    Ok(())
}

fn check_row(report: &mut VerifyReport, row: &AuditRow, prev: &mut Vec<u8>, expected: &mut u64) {
    let Ok(seq) = u64::try_from(row.seq) else {
        report.fail(*expected, format!("an entry has the negative sequence number {} (edited)", row.seq));
        return;
    };
    if seq != *expected {
        let problem = if seq > *expected {
            format!("entry {} is missing (deleted)", *expected)
        } else {
            format!("entry {seq} appears out of order")
        };
        report.fail(*expected, problem);
        return;
    }
    let prev32: [u8; 32] = prev.as_slice().try_into().unwrap_or(GENESIS);
    let h = row_hash(&prev32, row);
    if prev.len() != 32 || !h.is_some_and(|h| kluis_core::ct_eq(&h, &row.hash)) {
        report.fail(
            seq,
            format!("entry {seq} does not match its hash (edited, inserted, replaced or reordered)"),
        );
        return;
    }
    *prev = row.hash.clone();
    *expected += 1;
}

/// Verifies the whole chain: sequence numbers 1, 2, 3, ... without gaps, each hash recomputed
/// over the previous hash and the entry, the head row equal to the last entry, and every
/// checkpoint row equal to the entry it names. Reports the first bad position. If the chain is
/// sound, also compares the rows of the collection tables with the row log it covers
/// ([`kluis_store::Store::verify_rows`]): rows rolled back to an older state, deleted or inserted
/// outside Kluis ([`VerifyReport::rows`]).
///
/// It cannot detect a chain **rewritten as a whole** (every hash recomputed, head and checkpoint
/// rows replaced) by someone with write access to the database: keep [`latest_checkpoint`] or
/// [`head`] values elsewhere and use [`verify_against`].
pub async fn verify<B: Engine>(store: &Store<B>) -> Result<VerifyReport> {
    let cps = store.audit_checkpoints().await?;
    let want: Vec<u64> = cps.iter().map(|c| to_u64(c.seq)).collect();
    let (mut report, hashes, claims) = walk(store, &want).await?;
    for cp in &cps {
        report.checkpoints += 1;
        let Ok(seq) = u64::try_from(cp.seq) else {
            report.fail(1, format!("a checkpoint row has the negative sequence number {} (edited)", cp.seq));
            continue;
        };
        match hashes.get(&seq) {
            None => report.fail(
                (report.entries + 1).min(seq.max(1)),
                format!("truncated: checkpoint {seq} names an entry that is missing"),
            ),
            Some(h) if !kluis_core::ct_eq(h, &cp.hash) => {
                report.fail(seq.max(1), format!("entry {seq} differs from its checkpoint"))
            }
            Some(_) => {}
        }
    }
    check_rows(store, &mut report, &claims).await?;
    Ok(report)
}

/// [`verify`], plus the check against a checkpoint kept outside the database: the entry it names
/// must exist (else the tail was truncated) and have the recorded hash (else the chain was
/// rewritten at or before that position).
pub async fn verify_against<B: Engine>(store: &Store<B>, checkpoint: &Checkpoint) -> Result<VerifyReport> {
    let cps = store.audit_checkpoints().await?;
    let mut want: Vec<u64> = cps.iter().map(|c| to_u64(c.seq)).collect();
    want.push(checkpoint.seq);
    want.sort_unstable();
    want.dedup();
    let (mut report, hashes, claims) = walk(store, &want).await?;
    for cp in &cps {
        report.checkpoints += 1;
        let Ok(seq) = u64::try_from(cp.seq) else {
            report.fail(1, format!("a checkpoint row has the negative sequence number {} (edited)", cp.seq));
            continue;
        };
        match hashes.get(&seq) {
            None => report.fail(
                (report.entries + 1).min(seq.max(1)),
                format!("truncated: checkpoint {seq} names an entry that is missing"),
            ),
            Some(h) if !kluis_core::ct_eq(h, &cp.hash) => {
                report.fail(seq.max(1), format!("entry {seq} differs from its checkpoint"))
            }
            Some(_) => {}
        }
    }
    match hashes.get(&checkpoint.seq) {
        None if checkpoint.seq > 0 => report.fail(
            report.entries + 1,
            format!(
                "truncated: the kept checkpoint names entry {} but the chain has {}",
                checkpoint.seq, report.entries
            ),
        ),
        Some(h) if hex(h) != checkpoint.hash => report.fail(
            checkpoint.seq.max(1),
            format!(
                "the chain was rewritten at or before entry {}: it differs from the kept checkpoint",
                checkpoint.seq
            ),
        ),
        _ => {}
    }
    check_rows(store, &mut report, &claims).await?;
    Ok(report)
}

/// The newest periodic checkpoint the database holds (every `checkpoint_every` entries).
/// Verify first: a checkpoint taken from a tampered database proves nothing.
pub async fn latest_checkpoint<B: Engine>(store: &Store<B>) -> Result<Option<Checkpoint>> {
    let cps = store.audit_checkpoints().await?;
    Ok(cps.last().map(|c| Checkpoint { seq: to_u64(c.seq), hash: hex(&c.hash) }))
}

/// The chain head (last entry) as a checkpoint; `None` for an empty log.
pub async fn head<B: Engine>(store: &Store<B>) -> Result<Option<Checkpoint>> {
    let (seq, hash) = store.audit_head().await?;
    Ok((seq > 0).then(|| Checkpoint { seq: to_u64(seq), hash: hex(&hash) }))
}

/// One exported entry (a JSON line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedEntry {
    /// Position, as stored (negative only in a tampered log, which `verify` reports).
    pub seq: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Acting user.
    pub actor: String,
    /// Roles, comma-separated.
    pub roles: String,
    /// Support grant used.
    pub support_grant: String,
    /// Tenant.
    pub tenant: String,
    /// Subject(s).
    pub subject: String,
    /// Collection.
    pub collection: String,
    /// Record id(s).
    pub record: String,
    /// Fields touched (`domain:field`).
    pub fields: String,
    /// Action.
    pub action: String,
    /// Outcome.
    pub outcome: String,
    /// Reason.
    pub reason: String,
    /// Break-glass reason.
    pub break_glass: String,
    /// Access point.
    pub access_point: String,
    /// Purpose of use.
    pub purpose: String,
    /// On behalf of.
    pub on_behalf_of: String,
    /// Stored hash, hex.
    pub hash: String,
}

impl ExportedEntry {
    pub(crate) fn from_row(r: &AuditRow) -> Self {
        let e = &r.entry;
        Self {
            seq: r.seq,
            at_ms: e.at_ms,
            actor: e.actor.clone(),
            roles: e.roles.clone(),
            support_grant: e.support_grant.clone(),
            tenant: e.tenant.clone(),
            subject: e.subject.clone(),
            collection: e.collection.clone(),
            record: e.record.clone(),
            fields: e.fields.clone(),
            action: e.action.clone(),
            outcome: e.outcome.clone(),
            reason: e.reason.clone(),
            break_glass: e.break_glass.clone(),
            access_point: e.access_point.clone(),
            purpose: e.purpose.clone(),
            on_behalf_of: e.on_behalf_of.clone(),
            hash: hex(&r.hash),
        }
    }
}

pub(crate) async fn export_rows<B: Engine>(
    store: &Store<B>,
    tenant: Option<&str>,
    mut out: impl Write,
) -> Result<u64> {
    let mut after = 0i64;
    let mut n = 0u64;
    loop {
        let page = store.audit_page(tenant, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            let line = serde_json::to_string(&ExportedEntry::from_row(r))
                .map_err(|e| Error::invalid("audit export", e.to_string()))?;
            writeln!(out, "{line}").map_err(|e| Error::Io(e.to_string()))?;
            n += 1;
        }
        if page.len() < PAGE as usize {
            break;
        }
    }
    out.flush().map_err(|e| Error::Io(e.to_string()))?;
    Ok(n)
}

/// Writes every entry as one JSON object per line, in sequence order (for an operator or an
/// archive; [`crate::Service::export_audit`] is the audited, per-tenant variant). Returns the
/// number of entries written.
pub async fn export_jsonl<B: Engine>(store: &Store<B>, out: impl Write) -> Result<u64> {
    export_rows(store, None, out).await
}

/// [`export_jsonl`] of the entries of `tenant` only. It logs nothing itself: a caller logs the
/// export first, as `kluis audit export --tenant` does ([`crate::Service::export_audit`] is the
/// variant that logs). Entries of other tenants and without a tenant are left out, so the lines
/// alone do not verify as a chain: `kluis audit verify` checks the whole log.
pub async fn export_tenant_jsonl<B: Engine>(
    store: &Store<B>,
    tenant: &TenantId,
    out: impl Write,
) -> Result<u64> {
    export_rows(store, Some(tenant.as_str()), out).await
}
