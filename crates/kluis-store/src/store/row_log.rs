//! Row freshness: the rows of the collection tables against the row log the audit chain covers.

use std::collections::HashMap;

use super::*;
use crate::row_log::*;

/// Rows per page when the log or a table is read for verification.
const PAGE: u32 = 5000;

/// Checks the claims at log position `seq` (running hash `running`) and skips past them.
fn check_claims(
    seq: u64,
    running: &[u8; 32],
    report: &mut RowsReport,
    claims: &mut std::iter::Peekable<std::slice::Iter<'_, RowsClaim>>,
) {
    while let Some(c) = claims.peek() {
        if c.rows_seq > seq {
            break;
        }
        if c.rows_seq < seq {
            // Claims come in audit order, and positions never go back.
            report.log_problem.get_or_insert_with(|| {
                format!("audit entry {} names row log position {} after a later one", c.audit_seq, c.rows_seq)
            });
        } else if !kluis_core::ct_eq(&c.rows_hash, running) {
            report.log_problem.get_or_insert_with(|| {
                format!(
                    "the row log up to entry {seq} differs from what audit entry {} covers (entries edited, deleted or inserted)",
                    c.audit_seq
                )
            });
        }
        claims.next();
    }
}

/// The state the log gives a record: its last logged tag (`None`: deleted).
type Latest = HashMap<(String, String, String), Option<Vec<u8>>>;

impl<E: Engine> Store<E> {
    /// The row log from position `after` on, at most `limit` entries, in order.
    pub async fn row_log_page(&self, after: i64, limit: u32) -> Result<Vec<RowLogRow>> {
        self.backend.row_log_page(after, limit).await
    }
}

impl<E: Engine> Store<E> {
    /// Compares every row of the collection tables with the row log (see the module
    /// documentation), after checking the log against `claims`: the positions and running hashes
    /// the audit entries cover, in audit order (from [`crate::audit::AuditRow::rows`]; the caller
    /// verifies the audit chain itself). Without keys: it compares tags, it does not open rows.
    ///
    /// What it finds is only as trustworthy as the claims: someone with write access to the
    /// database can rewrite the rows, the log and the audit entries after the last checkpoint of
    /// the audit chain kept outside the database.
    pub async fn verify_rows(&self, claims: &[RowsClaim]) -> Result<RowsReport> {
        let backend = &self.backend;
        let mut report = RowsReport::default();
        let mut latest: Latest = HashMap::new();
        let mut running = ROWS_GENESIS;
        let mut seq: u64 = 0;
        let last_claimed = claims.last().map_or(0, |c| c.rows_seq);
        let mut claims = claims.iter().peekable();
        check_claims(0, &running, &mut report, &mut claims);
        let mut after = 0i64;
        loop {
            let page = backend.row_log_page(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let full = page.len() == PAGE as usize;
            for row in page {
                report.log_entries += 1;
                let expected = seq
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Invalid("row log position overflow".into()))?;
                if u64::try_from(row.seq).ok() != Some(expected) {
                    report.log_problem.get_or_insert_with(|| {
                        format!("row log entry {expected} is missing or out of order")
                    });
                    return Ok(report);
                }
                seq = expected;
                running = rows_hash(&running, seq, &row.entry);
                check_claims(seq, &running, &mut report, &mut claims);
                let e = row.entry;
                latest.insert((e.tenant, e.collection, e.record), e.tag);
            }
            if !full {
                break;
            }
        }
        if let Some(c) = claims.next() {
            report.log_problem.get_or_insert_with(|| {
                format!(
                    "truncated: audit entry {} covers {} row log entries but the log has {seq}",
                    c.audit_seq, c.rows_seq
                )
            });
        }
        let (head_seq, head_hash) = backend.row_log_head().await?;
        if u64::try_from(head_seq).ok() != Some(seq) || !kluis_core::ct_eq(&head_hash, &running) {
            report.log_problem.get_or_insert_with(|| {
                format!("the audit head names row log entry {head_seq} but the log ends at {seq} (log or head edited)")
            });
        }
        // A claim beyond the log's end is reported above as a truncation.
        report.uncovered = seq.saturating_sub(last_claimed);
        if report.log_problem.is_some() {
            return Ok(report);
        }
        for (collection, table) in backend.collection_tables().await? {
            let mut after: Option<(String, String)> = None;
            loop {
                let page = backend
                    .row_tags_page(&table, after.as_ref().map(|(t, i)| (t.as_str(), i.as_str())), PAGE)
                    .await?;
                let full = page.len() == PAGE as usize;
                after = page.last().map(|(t, i, _)| (t.clone(), i.clone()));
                for (tenant, id, tag) in page {
                    report.rows += 1;
                    let finding = match latest.remove(&(tenant.clone(), collection.clone(), id.clone())) {
                        Some(Some(t)) if kluis_core::ct_eq(&t, &tag) => None,
                        Some(Some(_)) => Some(RowFinding::NotLastWritten),
                        Some(None) | None => Some(RowFinding::NotLogged),
                    };
                    if let Some(finding) = finding {
                        report.problems.push(RowProblem {
                            tenant,
                            collection: collection.clone(),
                            record: id,
                            finding,
                        });
                    }
                }
                if !full {
                    break;
                }
            }
        }
        for ((tenant, collection, record), tag) in latest {
            if tag.is_some() {
                report.problems.push(RowProblem { tenant, collection, record, finding: RowFinding::Deleted });
            }
        }
        report.problems.sort_by(|a, b| {
            (&a.tenant, &a.collection, &a.record).cmp(&(&b.tenant, &b.collection, &b.record))
        });
        Ok(report)
    }
}
