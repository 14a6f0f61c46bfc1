//! Errors of the service crate.
//!
//! Authorization decisions are **not** errors: [`crate::authz::Authorizer::check`] always returns
//! a decision. Errors are for loading a policy, managing grants, and the auth helpers.

/// Everything that can go wrong in `kluis-service`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TOML policy file does not parse or does not validate. `line` and `column` are 1-based.
    #[error("policy line {line}, column {column}: {reason}")]
    Policy {
        /// 1-based line of the offending entry.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// The caller passed an invalid value.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The caller lacks the right for an administrative call (for example granting support access).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// No support grant with this id exists in this tenant.
    #[error("no support grant {0} in this tenant")]
    UnknownGrant(String),
    /// The grant registry failed (a persisted registry: its database).
    #[error("grant registry failed: {0}")]
    Registry(String),
    /// A row of the persisted access registry failed its integrity check: inserted, edited or
    /// copied from another tenant by someone without the application's keys. The tenant's registry
    /// is not loaded, so its support grants and recorded roles deny until the row is removed.
    #[error("access registry row {kind} {id} of tenant {tenant} failed its integrity check")]
    RegistryTampered {
        /// The tenant whose rows were being loaded.
        tenant: String,
        /// The row's kind (`grant`, `role`).
        kind: String,
        /// The row's id.
        id: String,
    },
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
