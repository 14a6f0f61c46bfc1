//! Helpers shared by the providers.

use std::future::Future;

use futures_util::future::join_all;
use kluis_core::keys::UnwrapRequest;
use kluis_core::{Error, KeyMaterial, ProviderErrorKind, Result};
use sha2::{Digest, Sha256};

/// A provider error without a source.
pub(crate) fn provider_error(provider: &str, kind: ProviderErrorKind) -> Error {
    Error::Provider { provider: provider.to_owned(), kind, source: None }
}

/// A provider error with a source. The source is the SDK's error; SDK errors carry request ids
/// and messages, never the key material we sent.
pub(crate) fn provider_error_from(
    provider: &str,
    kind: ProviderErrorKind,
    source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> Error {
    Error::Provider { provider: provider.to_owned(), kind, source: Some(source.into()) }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of a label and data (length-prefixed so label and data cannot run together).
pub(crate) fn sha256_labelled(label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((label.len() as u64).to_be_bytes());
    h.update(label);
    h.update((data.len() as u64).to_be_bytes());
    h.update(data);
    h.finalize().into()
}

/// Is this provider error one that concerns the whole provider (so a batch stops), rather than
/// one item?
pub(crate) fn is_provider_wide(e: &Error) -> bool {
    matches!(
        e,
        Error::Provider {
            kind: ProviderErrorKind::Unavailable
                | ProviderErrorKind::Throttled
                | ProviderErrorKind::Unauthorized,
            ..
        }
    )
}

/// Unwraps `items`, `concurrency` requests in flight at a time, with `unwrap_one`. An error that
/// concerns the whole provider ([`is_provider_wide`]) fails the batch; any other comes back for
/// its own item.
pub(crate) async fn unwrap_in_chunks<'a, F, Fut>(
    items: &'a [UnwrapRequest<'a>],
    concurrency: usize,
    unwrap_one: F,
) -> Result<Vec<Result<KeyMaterial>>>
where
    F: Fn(&'a UnwrapRequest<'a>) -> Fut,
    Fut: Future<Output = Result<KeyMaterial>>,
{
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(concurrency.max(1)) {
        for r in join_all(chunk.iter().map(&unwrap_one)).await {
            match r {
                Err(e) if is_provider_wide(&e) => return Err(e),
                other => out.push(other),
            }
        }
    }
    Ok(out)
}
