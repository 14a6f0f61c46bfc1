//! `kluis reencrypt`: the loop over the store's and the documents' re-encryption steps.
//!
//! Each store step moves up to `batch` subjects onto a new subject key version under the active
//! domain key, one database transaction per subject; each documents step rewrites up to `batch`
//! documents (new object, compare-and-swap of the catalog row, old object deleted). Killed at
//! any moment, nothing is lost: every committed step stays, and a rerun continues where the
//! last committed one ended. The loop ends after a round in which neither moved anything and
//! nothing remains; that last store step also deletes old subject key versions nothing uses.

use std::time::Duration;

use kluis_blob::BlobBackend;
use kluis_blob::catalog::Documents;
use kluis_core::DomainName;
use kluis_store::{Access, Engine, Store, StoreError};
use serde::Serialize;

use crate::error::{CliError, Result};

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Subjects moved to a new subject key version.
    pub subjects_moved: u64,
    /// Records re-sealed.
    pub records_resealed: u64,
    /// Documents rewritten.
    pub documents_moved: u64,
    /// Records skipped in a step because a concurrent writer changed them (redone later).
    pub conflicts: u64,
    /// Steps that hit a retryable concurrent key change and were retried.
    pub retries: u64,
    /// Rounds (one store step plus one documents step).
    pub rounds: u64,
    /// Subjects left on an older subject key version because values in the application's
    /// mapped tables are sealed under it (`kluis reencrypt` then seals those again and runs
    /// these steps once more).
    pub kept_for_app_tables: u64,
}

/// Where a run stands, after each round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Totals so far.
    pub done: Summary,
    /// Subjects still on older versions.
    pub remaining_subjects: u64,
    /// Documents still on older subject key versions.
    pub remaining_documents: u64,
}

/// How many times in a row a retryable error is retried before giving up.
const MAX_RETRIES: u32 = 50;

/// Re-encrypts everything of `domain` (records through `store`, documents through `docs`)
/// onto the active domain key version, calling `on_round` after every round.
pub async fn reencrypt<B: Engine, O: BlobBackend>(
    store: &Store<B>,
    docs: &Documents<B, O>,
    access: &Access,
    domain: &DomainName,
    batch: usize,
    mut on_round: impl FnMut(&Progress),
) -> Result<Summary> {
    let batch = batch.max(1);
    let mut sum = Summary::default();
    let mut retries_in_row = 0u32;
    loop {
        let rec = match store.reencrypt_step(access, domain, batch).await {
            Ok(p) => p,
            Err(e) if e.is_retryable() && retries_in_row < MAX_RETRIES => {
                retries_in_row += 1;
                sum.retries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let doc = match docs.reencrypt_step(access, domain, batch).await {
            Ok(p) => p,
            Err(e) => return Err(CliError::from(e)),
        };
        retries_in_row = 0;
        sum.rounds += 1;
        sum.subjects_moved += rec.subjects_moved;
        sum.records_resealed += rec.records_resealed;
        sum.conflicts += rec.conflicts;
        sum.documents_moved += doc.moved;
        let progress = Progress {
            done: sum,
            remaining_subjects: rec.remaining_subjects,
            remaining_documents: doc.remaining,
        };
        on_round(&progress);
        // Subjects whose older keys only values in the application's mapped tables still use.
        sum.kept_for_app_tables = rec.kept_for_app_tables;
        let idle = rec.subjects_moved == 0 && doc.moved == 0;
        if idle && rec.remaining_subjects == 0 && doc.remaining == 0 {
            return Ok(sum);
        }
        if idle {
            // Something remains but nothing moved: a concurrent writer holds it; retry shortly.
            retries_in_row += 1;
            if retries_in_row > MAX_RETRIES {
                return Err(CliError::Store(StoreError::Invalid(format!(
                    "re-encryption makes no progress: {} subjects and {} documents remain; rerun later",
                    rec.remaining_subjects, doc.remaining
                ))));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
