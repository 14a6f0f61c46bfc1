//! Errors of the service crate.
//!
//! Authorization decisions are **not** errors: [`crate::authz::Authorizer::check`] always returns
//! a decision. Errors are for the auth helpers, the store, documents and the audit log; those of
//! policies and grants come from `kluis_authz` as [`Error::Authz`].

/// Everything that can go wrong in `kluis-service`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller passed an invalid value.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// An error of the authorization layer: a policy that does not load, an unknown support
    /// grant, an administrative call the caller may not make, the access registry.
    #[error(transparent)]
    Authz(#[from] kluis_authz::Error),
    /// A stored password hash does not parse or has parameters outside the accepted bounds.
    #[error("malformed password hash: {0}")]
    MalformedHash(&'static str),
    /// The password hashing function failed.
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// An error from `kluis-core` (names, keys).
    #[error(transparent)]
    Core(#[from] kluis_core::Error),
    /// The authorization check denied the request (the denial is in the audit log).
    #[error(transparent)]
    Denied(#[from] crate::authz::Deny),
    /// No such record in the caller's tenant (the attempt is in the audit log).
    #[error("no record {record} in collection {collection}")]
    NotFound {
        /// Collection.
        collection: String,
        /// Record id.
        record: String,
    },
    /// The audit entry could not be written, so nothing was returned or changed (fail closed).
    #[error("the audit log could not be written; nothing was returned or changed")]
    AuditUnavailable(#[source] kluis_store::StoreError),
    /// A shred finished (the subject's keys and records are gone), but its erasure certificate
    /// could not be written to the audit log: append one with `Service::certify_erasure`.
    #[error("the shred finished, but its erasure certificate could not be written to the audit log")]
    Uncertified(#[source] kluis_store::StoreError),
    /// An error from the records store.
    #[error(transparent)]
    Store(#[from] kluis_store::StoreError),
    /// No such document in the caller's tenant (the attempt is in the audit log).
    #[error("no document {document}")]
    DocumentNotFound {
        /// Document id.
        document: String,
    },
    /// An error from document storage (`kluis-blob`); store errors come as [`Error::Store`].
    #[error(transparent)]
    Blob(kluis_blob::BlobError),
    /// Writing an export failed.
    #[error("writing the export failed: {0}")]
    Io(String),
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { what, reason: reason.into() }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn random_fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Rng)
}
