//! Counters that logs and metrics may read. Decryption failures are opaque to callers, but an
//! operator must be able to see that they happen (an attack, a bad restore, a bug).

use std::sync::atomic::{AtomicU64, Ordering};

static DECRYPT_FAILURES: AtomicU64 = AtomicU64::new(0);
static COMMITMENT_MISMATCHES: AtomicU64 = AtomicU64::new(0);

/// Counts one failure. `commitment` says whether the key commitment (rather than the tag) failed,
/// which in practice means "wrong key" rather than "altered data". This is recorded for operators
/// only; the caller always sees the same [`crate::Error::Decrypt`].
pub(crate) fn decrypt_failed(what: &'static str, commitment: bool) {
    DECRYPT_FAILURES.fetch_add(1, Ordering::Relaxed);
    if commitment {
        COMMITMENT_MISMATCHES.fetch_add(1, Ordering::Relaxed);
    }
    tracing::debug!(target: "kluis::crypto", object = what, key_mismatch = commitment, "decryption failed");
}

/// Snapshot of the process-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoCounters {
    /// Every opaque decryption failure since start.
    pub decrypt_failures: u64,
    /// Of those, how many failed the key commitment check (wrong key).
    pub commitment_mismatches: u64,
}

/// Reads the counters.
pub fn counters() -> CryptoCounters {
    CryptoCounters {
        decrypt_failures: DECRYPT_FAILURES.load(Ordering::Relaxed),
        commitment_mismatches: COMMITMENT_MISMATCHES.load(Ordering::Relaxed),
    }
}
