//! # kluis-kms
//!
//! Root key providers in a cloud KMS: Azure Key Vault (and Managed HSM) and AWS KMS, behind
//! `kluis_core`'s `RootKeyProvider` trait, plus configuration by URL and the root migration.
//!
//! - [`AwsKmsProvider`] uses KMS `Encrypt`/`Decrypt` with an encryption context binding the
//!   associated data (tenant, domain, version).
//! - [`AzureKeyVaultProvider`] uses `wrapKey`/`unwrapKey` (RSA-OAEP-256, or A256KW on Managed HSM)
//!   with the associated data bound by Kluis (see [`azure`]).
//! - [`ProviderConfig`] parses `keyring://PATH`, `aws-kms://REGION/KEY-ARN`, `azure-kv://VAULT/KEY`;
//!   [`AnyProvider::connect`] opens the one a URL names.
//! - [`migrate_root`] rewraps domain keys from one root key to another, resumably.
//!
//! Wrap a provider in `kluis_core::CachingProvider` so the hot path makes no KMS call: unwrapped
//! keys are held for a bounded time and count, zeroized on eviction, and errors are never cached.
//! Both KMS providers verify every wrap by unwrapping it again before returning it, so no domain
//! key is stored under a root key version that cannot unwrap it (for example a version that is
//! disabled for decryption). `docs/KMS.md` has the design, the failure kinds and the tests.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod any;
pub mod aws;
pub mod azure;
pub mod config;
mod migrate;
mod util;

use std::time::Duration;

pub use any::{AnyProvider, ConnectError};
pub use aws::AwsKmsProvider;
pub use azure::AzureKeyVaultProvider;
pub use config::{AwsKmsConfig, AzureKeyVaultConfig, ConfigError, ProviderConfig};
pub use migrate::{MigrationReport, migrate_root};

/// Retries, timeouts and parallelism of the KMS providers.
///
/// Throttling (HTTP 429, AWS `ThrottlingException`) and server errors (5xx) are retried with
/// exponential backoff; Azure's `Retry-After` is honoured (the wait is the longer of it and the
/// backoff). Credentials refused (401/403), a missing or disabled key, and a refused unwrap are
/// never retried. When retries run out the error is typed (`ProviderErrorKind::Throttled`,
/// `Unavailable`, ...).
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay (doubles with every retry, with jitter).
    pub initial_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
    /// Longest time one operation may take, retries and `Retry-After` waits included; then it
    /// fails as `Unavailable`.
    pub max_total: Duration,
    /// Connection timeout (AWS; Azure uses its HTTP client's).
    pub connect_timeout: Duration,
    /// Timeout of one attempt (AWS).
    pub attempt_timeout: Duration,
    /// Unwraps in flight at once in a batch (start-up).
    pub concurrency: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 4,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_total: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(15),
            concurrency: 16,
        }
    }
}
