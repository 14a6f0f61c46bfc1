//! Errors.
//!
//! One `#[non_exhaustive]` enum. Three families are kept apart on purpose:
//! - **bad data** (`Malformed`, `Unsupported*`, `Truncated`, `TrailingData`): the bytes are not a
//!   Kluis object of a version we read; says where, never why a key did not fit;
//! - **decryption failure** (`Decrypt`): deliberately opaque, one variant for every cryptographic
//!   failure (wrong key, wrong context, flipped bit, commitment mismatch), so a caller cannot be
//!   used as an oracle. Failures are counted (see [`crate::metrics`]) for logs and metrics;
//! - **caller mistakes** (`ApiMisuse`, `Invalid`): fix the calling code or the input.

use std::fmt;

/// Everything that can go wrong in `kluis-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ciphertext does not open under this key and context. Deliberately says no more.
    #[error("decryption failed: the data was altered, moved, or belongs to another key or context")]
    Decrypt,
    /// The bytes do not parse as the named structure.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which structure (e.g. "sealed value", "document header").
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A format version this build does not read.
    #[error("unsupported {what} format version {version}")]
    UnsupportedVersion {
        /// Which structure.
        what: &'static str,
        /// The version found.
        version: u16,
    },
    /// An algorithm suite id this build does not know.
    #[error("unsupported algorithm suite {0:#04x}")]
    UnsupportedSuite(u8),
    /// A document stream ended before its final chunk.
    #[error("document is truncated: the final chunk is missing")]
    Truncated,
    /// Data follows the final chunk of a document.
    #[error("document has data after its final chunk")]
    TrailingData,
    /// No key with this reference is available to the caller.
    #[error("no key {key} available")]
    UnknownKey {
        /// The key reference, e.g. `acme/medical v3`.
        key: String,
    },
    /// The key exists but was destroyed (crypto-shredded).
    #[error("key {key} was destroyed")]
    KeyDestroyed {
        /// The key reference.
        key: String,
    },
    /// A key that is decrypt-only was asked to encrypt.
    #[error("key {key} is not active: it may decrypt but not encrypt")]
    KeyNotActive {
        /// The key reference.
        key: String,
    },
    /// A limit that keeps the cryptography within its proven bounds was reached.
    #[error("usage limit reached: {0}")]
    LimitReached(&'static str),
    /// The caller passed an invalid value.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The API was used in a way it does not support.
    #[error("api misuse: {0}")]
    ApiMisuse(&'static str),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// The keyring's passphrase or key file does not open it.
    #[error("wrong passphrase or key file for this keyring")]
    WrongPassphrase,
    /// The keyring file is damaged (checksum, structure).
    #[error("keyring file is corrupt: {0}")]
    KeyringCorrupt(&'static str),
    /// The keyring file is shorter than its header says.
    #[error("keyring file is truncated")]
    KeyringTruncated,
    /// The key derivation parameters in a keyring are below the minimum Kluis accepts.
    #[error("keyring key derivation parameters are too weak: {0}")]
    WeakKdfParams(String),
    /// The keyring is older than what the database has seen: an old keyring was restored.
    #[error(
        "keyring rollback detected: keyring generation {keyring} is older than generation {database} recorded in the database"
    )]
    KeyringRollback {
        /// Generation of the keyring in use.
        keyring: u64,
        /// Generation the database last recorded.
        database: u64,
    },
    /// The keyring is newer than the generation the database recorded: the database was restored
    /// from an older backup, the generation record was replayed, or a keyring change was not
    /// recorded yet (`kluis keys record-generation` records it once checked).
    #[error(
        "keyring generation {keyring} is newer than generation {database} recorded in the database: an older database or generation record was restored, or the keyring change was not recorded"
    )]
    DatabaseBehindKeyring {
        /// Generation of the keyring in use.
        keyring: u64,
        /// Generation the database last recorded.
        database: u64,
    },
    /// A domain key row's state, or the set of versions of its tenant and domain, does not match
    /// the tag made when they were last written by Kluis: the rows were altered outside Kluis.
    #[error("domain key {key}: {reason}")]
    KeyStateTampered {
        /// The row, `tenant/domain vN`.
        key: String,
        /// What failed.
        reason: &'static str,
    },
    /// A root key provider failed.
    #[error("root key provider {provider}: {kind}")]
    Provider {
        /// The provider's name.
        provider: String,
        /// What kind of failure.
        kind: ProviderErrorKind,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

/// What kind of failure a root key provider reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderErrorKind {
    /// The provider could not be reached (network, timeout).
    Unavailable,
    /// The provider throttled the request (e.g. HTTP 429) and retries were exhausted.
    Throttled,
    /// The credentials were refused (HTTP 401/403).
    Unauthorized,
    /// The root key or version does not exist or is disabled.
    KeyUnavailable,
    /// The provider refused to unwrap (wrong associated data, tampered wrapped key).
    UnwrapRefused,
    /// Anything else.
    Other,
}

impl fmt::Display for ProviderErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "unavailable",
            Self::Throttled => "throttled",
            Self::Unauthorized => "credentials refused",
            Self::KeyUnavailable => "root key unavailable or disabled",
            Self::UnwrapRefused => "unwrap refused",
            Self::Other => "failed",
        })
    }
}

impl Error {
    pub(crate) fn malformed(what: &'static str, reason: &'static str) -> Self {
        Self::Malformed { what, reason }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { what, reason: reason.into() }
    }

    /// Is this the opaque decryption failure?
    pub fn is_decrypt(&self) -> bool {
        matches!(self, Self::Decrypt)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
