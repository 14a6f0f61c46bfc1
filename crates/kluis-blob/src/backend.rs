//! The storage backend trait: opaque objects, staged uploads, ranged reads.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use crate::error::Result;
use crate::name::ObjectName;

/// Where encrypted objects are kept. Backends see only ciphertext and opaque names.
///
/// Guarantees every implementation gives (and the conformance suite checks):
/// - an object becomes visible (to [`BlobBackend::len`], reads and [`BlobBackend::list`]) only
///   when its upload is committed, and then whole; an aborted, failed or dropped upload leaves
///   nothing visible;
/// - committing never replaces an existing object ([`crate::BlobError::AlreadyExists`]);
/// - [`BlobBackend::collect_garbage`] removes every committed object not in the live set and
///   every leftover of unfinished uploads, if older than the grace period.
pub trait BlobBackend: Send + Sync + std::fmt::Debug {
    /// An upload in progress.
    type Upload: Upload;

    /// Starts a staged upload of `name`. Nothing is visible until [`Upload::commit`].
    fn begin(&self, name: &ObjectName) -> impl Future<Output = Result<Self::Upload>> + Send;

    /// The length of a committed object ([`crate::BlobError::NotFound`] if there is none).
    fn len(&self, name: &ObjectName) -> impl Future<Output = Result<u64>> + Send;

    /// Appends bytes `start..end` of a committed object to `out`. A range beyond the object's
    /// end is an error, never a short read.
    fn read_range(
        &self,
        name: &ObjectName,
        start: u64,
        end: u64,
        out: &mut Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads bytes `start..end` of a committed object into consecutive pieces of `piece` bytes
    /// (the last may be shorter): `out[0]` gets the first piece, and so on; each used `Vec` is
    /// cleared first. Returns how many pieces were filled. Lets readers open chunks in place
    /// without a copy. The default reads the range into one buffer and splits it.
    ///
    /// The vault hands in buffers that may still hold plaintext of chunks it returned before, each
    /// with room for a whole piece: write into them in place; do not replace, shrink or drop
    /// them (that would free their plaintext without a wipe).
    fn read_split(
        &self,
        name: &ObjectName,
        start: u64,
        end: u64,
        piece: usize,
        out: &mut [Vec<u8>],
    ) -> impl Future<Output = Result<usize>> + Send {
        async move {
            let n = check_split(start, end, piece, out.len())?;
            let mut all = Vec::new();
            self.read_range(name, start, end, &mut all).await?;
            for (dst, src) in out.iter_mut().zip(all.chunks(piece)) {
                dst.clear();
                dst.extend_from_slice(src);
            }
            Ok(n)
        }
    }

    /// Deletes a committed object. Returns whether it existed.
    fn delete(&self, name: &ObjectName) -> impl Future<Output = Result<bool>> + Send;

    /// Names of all committed objects.
    fn list(&self) -> impl Future<Output = Result<Vec<ObjectName>>> + Send;

    /// Removes committed objects not in `live` and leftovers of unfinished uploads (temp files,
    /// uncommitted blocks), all only when last changed more than `grace` ago, so uploads in
    /// progress and documents whose catalog row is being written survive.
    fn collect_garbage(
        &self,
        live: &HashSet<ObjectName>,
        grace: Duration,
    ) -> impl Future<Output = Result<GcReport>> + Send;
}

/// A staged upload. Dropping it without [`Upload::commit`] leaves nothing visible; the backend
/// removes what it can at once and garbage collection removes the rest.
pub trait Upload: Send {
    /// Appends bytes (the vault passes the header, then one sealed chunk at a time). Backends
    /// buffer up to their write size and send whole parts; memory stays bounded by that.
    fn append(&mut self, part: &[u8]) -> impl Future<Output = Result<()>> + Send;

    /// Makes the object visible, whole. Returns its length.
    fn commit(self) -> impl Future<Output = Result<u64>> + Send;

    /// Discards everything staged.
    fn abort(self) -> impl Future<Output = Result<()>> + Send;
}

/// Checks a [`BlobBackend::read_split`] request; returns the number of pieces.
pub(crate) fn check_split(start: u64, end: u64, piece: usize, have: usize) -> Result<usize> {
    let len = end
        .checked_sub(start)
        .ok_or(crate::BlobError::Invalid { what: "range", reason: "end before start" })?;
    if piece == 0 {
        return Err(crate::BlobError::Invalid { what: "piece size", reason: "must not be zero" });
    }
    let n = usize::try_from(len.div_ceil(piece as u64))
        .map_err(|_| crate::BlobError::Invalid { what: "range", reason: "too long" })?;
    if n > have {
        return Err(crate::BlobError::Invalid { what: "range", reason: "more pieces than buffers" });
    }
    Ok(n)
}

/// What garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Committed objects not in the live set.
    pub orphans: u64,
    /// Leftovers of unfinished uploads (temp files, blobs with only uncommitted blocks).
    pub unfinished: u64,
    /// Committed objects kept.
    pub kept: u64,
    /// Objects or leftovers due for removal that could not be removed now because they are in
    /// use (on an SMB share: still open somewhere, `EBUSY` after the bounded retries); the next
    /// run tries again.
    pub busy: u64,
}

macro_rules! forward_backend {
    ($($t:ty),*) => {$(
        impl<B: BlobBackend> BlobBackend for $t {
            type Upload = B::Upload;

            fn begin(&self, name: &ObjectName) -> impl Future<Output = Result<Self::Upload>> + Send {
                (**self).begin(name)
            }

            fn len(&self, name: &ObjectName) -> impl Future<Output = Result<u64>> + Send {
                (**self).len(name)
            }

            fn read_range(
                &self,
                name: &ObjectName,
                start: u64,
                end: u64,
                out: &mut Vec<u8>,
            ) -> impl Future<Output = Result<()>> + Send {
                (**self).read_range(name, start, end, out)
            }

            fn read_split(
                &self,
                name: &ObjectName,
                start: u64,
                end: u64,
                piece: usize,
                out: &mut [Vec<u8>],
            ) -> impl Future<Output = Result<usize>> + Send {
                (**self).read_split(name, start, end, piece, out)
            }

            fn delete(&self, name: &ObjectName) -> impl Future<Output = Result<bool>> + Send {
                (**self).delete(name)
            }

            fn list(&self) -> impl Future<Output = Result<Vec<ObjectName>>> + Send {
                (**self).list()
            }

            fn collect_garbage(
                &self,
                live: &HashSet<ObjectName>,
                grace: Duration,
            ) -> impl Future<Output = Result<GcReport>> + Send {
                (**self).collect_garbage(live, grace)
            }
        }
    )*};
}

// A shared backend (several vaults, or a vault and a maintenance job) is a backend.
forward_backend!(&B, std::sync::Arc<B>);
