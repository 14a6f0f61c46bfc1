//! The worker loop of `kluis encrypt-columns` and `kluis reencrypt-columns` (and of the mapped
//! tables' part of `kluis reencrypt`): passes of steps over a mapped table in primary key order
//! until what is left to do is only rows the steps refused.
//!
//! Several of these loops (processes) may run on one PostgreSQL or MariaDB database at once: a
//! step claims its rows (rows another worker's batch holds are skipped), so a pass can end with
//! rows left that another worker holds; the loop then waits and passes again, until nothing is
//! left, a killed worker's rows included (released by the server when its connection closes, or
//! when its lease runs out). On SQLite the batches of several processes run one after another.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kluis_store::{ColumnsStep, StoreError};

use crate::error::{CliError, Result};

/// Passes that write something, at most: a pass seals what it meets in key order; a row given
/// plaintext again behind it (an application still writing plaintext) needs another.
const MAX_PASSES: u32 = 20;

/// Retryable errors in a row (a batch that could not take the audit head, a deadlock victim)
/// before the run gives up.
const MAX_RETRIES: u32 = 50;

/// Totals of one worker's run.
#[derive(Debug, Default)]
pub(crate) struct ColumnsRun {
    /// Rows this worker wrote.
    pub written: u64,
    /// Passes made.
    pub passes: u32,
    /// Rows changed under a batch (left for the next pass).
    pub conflicts: u64,
    /// Steps retried after a retryable error.
    pub retries: u64,
    /// Rows refused, by record id, with why (never a value).
    pub refused: BTreeMap<String, String>,
}

/// Runs steps (`step(after)`) in passes until `left()` counts no more rows than were refused.
/// Waits (up to `wait`, counted from the last progress) while rows are left that this worker's
/// passes do not reach (held by other workers' batches); `on_step` sees every step.
pub(crate) async fn run(
    mut step: impl AsyncFnMut(Option<Vec<String>>) -> std::result::Result<ColumnsStep, StoreError>,
    mut left: impl AsyncFnMut() -> std::result::Result<u64, StoreError>,
    wait: Duration,
    mut on_step: impl FnMut(&ColumnsStep),
) -> Result<ColumnsRun> {
    let mut run = ColumnsRun::default();
    let mut writing_passes = 0u32;
    let mut progress_at = Instant::now();
    loop {
        run.passes += 1;
        let mut after: Option<Vec<String>> = None;
        let mut wrote = 0u64;
        let mut retries_in_row = 0u32;
        loop {
            let s = match step(after.clone()).await {
                Ok(s) => s,
                Err(e) if e.is_retryable() && retries_in_row < MAX_RETRIES => {
                    retries_in_row += 1;
                    run.retries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            retries_in_row = 0;
            on_step(&s);
            wrote += s.rows_written;
            run.conflicts += s.conflicts;
            run.refused.extend(s.rows_refused);
            match s.last_key {
                Some(k) if s.rows_read > 0 => after = Some(k),
                _ => break,
            }
        }
        run.written += wrote;
        let remaining = left().await?;
        if remaining <= run.refused.len() as u64 {
            return Ok(run);
        }
        if wrote > 0 {
            writing_passes += 1;
            progress_at = Instant::now();
            if writing_passes >= MAX_PASSES {
                // Rows keep getting work behind the passes: an application is still writing them.
                return Ok(run);
            }
        } else if progress_at.elapsed() > wait {
            return Err(CliError::Store(StoreError::Busy {
                what: format!("{remaining} rows are left that no batch of this worker could claim"),
            }));
        } else {
            // Left rows are held by other workers' batches: wait for them to commit, or for the
            // server to release a dead worker's.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
