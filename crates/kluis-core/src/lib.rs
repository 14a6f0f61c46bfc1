//! # kluis-core
//!
//! Envelope encryption for HR records and documents, keeping medical data apart from
//! non-medical data. This crate holds the formats, key types and sealing; it does **no I/O**.
//!
//! - [`keys`]: root key provider trait, domain keys per (tenant, domain, version), subject keys,
//!   an unwrap cache with bounded lifetime, rollback detection.
//! - [`keyring`]: the local keyring file format (Argon2id or raw key file) and in-memory provider.
//! - [`seal`]: sealed values: committing AEAD bound to tenant, domain, collection, field, record.
//! - [`document`]: streamed documents (STREAM) with encrypted names and optional Padmé padding.
//! - [`blind`]: blind indexes for equality search.
//!
//! Every byte format is documented in `docs/FORMAT.md`; `tests/vectors/` holds known-answer
//! vectors that every future version must keep opening. The threat model is in `SECURITY.md`.
//!
//! ```
//! # fn main() -> Result<(), kluis_core::Error> {
//! use kluis_core::{Context, DomainKeySet, DomainName, KeyMaterial, KeyState, KeyVersion, Suite, TenantId, Backend};
//! let tenant = TenantId::new("acme")?;
//! let medical = DomainName::medical();
//! let keys = DomainKeySet::from_keys(
//!     tenant.clone(), medical.clone(),
//!     vec![(KeyVersion::FIRST, KeyState::Active, KeyMaterial::generate()?)],
//!     Suite::default(), Backend::preferred())?;
//! let ctx = Context { tenant: &tenant, domain: &medical, collection: "absence", field: "diagnosis", record: "r1" };
//! let sealed = keys.seal(&ctx, b"burn-out")?;
//! assert_eq!(keys.open(&ctx, &sealed)?.expose_secret(), b"burn-out");
//! let elsewhere = Context { record: "r2", ..ctx };
//! assert!(keys.open(&elsewhere, &sealed).is_err());
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blind;
pub mod crypto;
pub mod document;
mod error;
mod ids;
pub mod keyring;
pub mod keys;
pub mod metrics;
mod random;
pub mod seal;
mod secret;
mod wire;

pub use blind::BlindIndexKey;
pub use crypto::{Backend, Suite};
pub use document::{
    DocumentContext, DocumentHeader, DocumentMetadata, DocumentOpener, DocumentOptions, DocumentSealer,
};
pub use error::{Error, ProviderErrorKind, Result};
pub use ids::{Context, DomainName, KeyVersion, TenantId};
pub use keyring::{KdfParams, KeyringSecret, LocalKeyring};
pub use keys::{
    CacheConfig, CachingProvider, DomainKeyRecord, DomainKeySet, FieldToSeal, KeyState, RootKeyProvider,
    SubjectKey, SubjectKeyRecord, WrappedKey, seal_fields,
};
pub use seal::{KeyKind, KeyRef, SealKey, SealedHeader};
pub use secret::{KEY_LEN, KeyMaterial, Passphrase, Plaintext, ct_eq};
