//! `kluis keys migrate-root --to URL`: moves domain keys from one root key to another (keyring to
//! KMS, KMS to keyring, one KMS key to another, or to a new version of the same key).
//!
//! Only the wraps change; data sealed under the domain keys is untouched. The migration is
//! **resumable and idempotent**: a record already wrapped under the target's root key id and
//! primary version is skipped, so running it again after an interruption (or twice) finishes the
//! job without rewrapping anything twice. It is **atomic per record**: each rewrapped record is
//! handed to `persist` (the store's transaction) before the next one is started, and a record is
//! only rewrapped after the target proved it can unwrap it again (the KMS providers check this
//! inside `wrap`; here it is checked once more against the source's key, in constant time).

use kluis_core::keys::{UnwrapRequest, domain_key_ad};
use kluis_core::{DomainKeyRecord, Error, Result, RootKeyProvider};

/// What a migration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Records rewrapped under the target now.
    pub rewrapped: usize,
    /// Records already under the target (an earlier, interrupted run did them).
    pub already_done: usize,
    /// Destroyed records (no wrapped key; nothing to do).
    pub destroyed: usize,
}

/// How many records are unwrapped per provider call.
const BATCH: usize = 100;

/// Rewraps `records` from `from` to `to`'s primary root key version, calling `persist` with each
/// rewrapped record (in order) so the caller stores it before the next one is done. Stops at the
/// first error: the records persisted so far are done, the rest untouched, and a new run resumes.
pub async fn migrate_root<F>(
    from: &dyn RootKeyProvider,
    to: &dyn RootKeyProvider,
    records: &[DomainKeyRecord],
    mut persist: F,
) -> Result<MigrationReport>
where
    F: FnMut(&DomainKeyRecord) -> Result<()>,
{
    let target_id = to.root_key_id().to_owned();
    let target_version = to.primary_version().await?;
    let mut report = MigrationReport::default();
    // Records under the target's root key but an older version (the KMS key was rotated since)
    // are unwrapped by the target itself; everything else by `from`.
    let mut via_from = Vec::new();
    let mut via_to = Vec::new();
    for r in records {
        match &r.wrapped {
            None => report.destroyed += 1,
            Some(w) if w.root_key_id == target_id && w.root_version == target_version => {
                report.already_done += 1
            }
            Some(w) if w.root_key_id == target_id => via_to.push(r),
            Some(_) => via_from.push(r),
        }
    }
    rewrap_all(to, to, &via_to, &mut persist, &mut report).await?;
    rewrap_all(from, to, &via_from, &mut persist, &mut report).await?;
    Ok(report)
}

async fn rewrap_all<F>(
    source: &dyn RootKeyProvider,
    to: &dyn RootKeyProvider,
    todo: &[&DomainKeyRecord],
    persist: &mut F,
    report: &mut MigrationReport,
) -> Result<()>
where
    F: FnMut(&DomainKeyRecord) -> Result<()>,
{
    for chunk in todo.chunks(BATCH) {
        let aads = chunk
            .iter()
            .map(|r| domain_key_ad(&r.tenant, &r.domain, r.version))
            .collect::<Result<Vec<_>>>()?;
        let reqs: Vec<UnwrapRequest<'_>> = chunk
            .iter()
            .zip(&aads)
            .filter_map(|(r, aad)| r.wrapped.as_ref().map(|wrapped| UnwrapRequest { aad, wrapped }))
            .collect();
        let keys = source.unwrap_batch(&reqs).await?;
        if keys.len() != chunk.len() {
            return Err(Error::ApiMisuse("provider returned a different number of keys"));
        }
        for ((r, aad), key) in chunk.iter().zip(&aads).zip(keys) {
            let key = key?;
            let wrapped = to.wrap(aad, &key).await?;
            // Constant-time comparison (`KeyMaterial`'s `PartialEq`).
            let check = kluis_core::keys::unwrap_one(to, aad, &wrapped).await?;
            if check != key {
                return Err(Error::Provider {
                    provider: to.root_key_id().to_owned(),
                    kind: kluis_core::ProviderErrorKind::UnwrapRefused,
                    source: None,
                });
            }
            let mut out = (*r).clone();
            out.wrapped = Some(wrapped);
            persist(&out)?;
            report.rewrapped += 1;
        }
    }
    Ok(())
}
