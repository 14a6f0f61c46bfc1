//! Errors of the document store.

/// Everything that can go wrong storing or reading a document.
///
/// Integrity failures (the stored bytes are not the document the catalog describes) are
/// [`BlobError::is_integrity`]: a wrong length, or a core error of the bad-data or decryption
/// family. They never come with wrong plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Sealing, opening or parsing failed in the core (including the opaque decryption failure).
    #[error(transparent)]
    Core(#[from] kluis_core::Error),
    /// No committed object has this name.
    #[error("object not found")]
    NotFound,
    /// An object with this name already exists (names are never reused).
    #[error("an object with this name already exists")]
    AlreadyExists,
    /// The stored object is longer or shorter than the catalog says.
    #[error("stored object length {actual} differs from the recorded length {expected}")]
    LengthMismatch {
        /// Length recorded in the descriptor.
        expected: u64,
        /// Length found in storage.
        actual: u64,
    },
    /// The caller passed an invalid value.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Reading the content to upload failed; nothing was stored.
    #[error("reading the document content failed; nothing was stored")]
    Source(#[source] std::io::Error),
    /// Writing decrypted content to the caller's writer failed.
    #[error("writing the document content failed")]
    Sink(#[source] std::io::Error),
    /// A local file-system operation failed.
    #[error("local storage: {op} failed")]
    Io {
        /// The operation (e.g. "rename", "fsync").
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The storage could not be reached or failed as a device: a network share that went away
    /// (connection lost, server gone: `EIO`, `ENOTCONN`, `ETIMEDOUT`, a stale handle, ...) or a
    /// disk I/O error. Retryable later; an upload that fails this way was not committed, and
    /// what it left is removed by garbage collection.
    #[error("local storage unavailable: {op} failed")]
    Unavailable {
        /// The operation (e.g. "write", "publish").
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An Azure Blob Storage request failed (after the SDK's retries).
    #[error("azure blob storage: {op} failed")]
    Azure {
        /// The operation (e.g. "stage block").
        op: &'static str,
        /// The HTTP status, if the service answered.
        status: Option<u16>,
        /// The cause, as text with any SAS signature in it redacted (a transport error can
        /// quote the request URL).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The catalog (the `kluis-store` database) refused or failed (access denied, shredded
    /// subject, database error, ...).
    #[error(transparent)]
    Store(#[from] kluis_store::StoreError),
    /// The catalog has no document with this id for the caller's tenant.
    #[error("document not found")]
    UnknownDocument,
    /// A catalog row is not one this crate wrote (unknown key reference, bad object name).
    #[error("catalog entry of a document is invalid: {0}")]
    Catalog(&'static str),
    /// A background task failed to run to completion.
    #[error("a storage task failed: {0}")]
    Task(&'static str),
}

impl BlobError {
    /// True if the stored bytes are not (all of) the document: tampered, truncated, extended,
    /// swapped or moved. Such a read never returned wrong plaintext.
    pub fn is_integrity(&self) -> bool {
        use kluis_core::Error as E;
        match self {
            Self::LengthMismatch { .. } => true,
            Self::Core(e) => matches!(
                e,
                E::Decrypt
                    | E::Truncated
                    | E::TrailingData
                    | E::Malformed { .. }
                    | E::UnsupportedVersion { .. }
                    | E::UnsupportedSuite(_)
            ),
            _ => false,
        }
    }
}

/// `Result` with [`BlobError`].
pub type Result<T, E = BlobError> = std::result::Result<T, E>;
