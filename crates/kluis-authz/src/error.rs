//! Errors of the authorization crate.
//!
//! Authorization decisions are **not** errors: [`crate::Authorizer::check`] always returns a
//! decision. Errors are for loading a policy, naming things, and managing grants and roles.

/// Everything that can go wrong in `kluis-authz`.
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
    /// A row of a persisted access registry failed its integrity check: inserted, edited or
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
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// An error from `kluis-core` (names).
    #[error(transparent)]
    Core(#[from] kluis_core::Error),
}

impl Error {
    /// [`Error::Invalid`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { what, reason: reason.into() }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn random_fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Rng)
}
