//! Blind indexes: equality search over sealed fields without decrypting.
//!
//! `index = truncate(HMAC-SHA256(k_field, value), n)`, where
//! `k_field = HKDF-Expand(domain key, info, 32)` and `info = "kluis/bidx/v1"` followed by tenant,
//! domain, collection and field, each as a u16 big-endian length and its bytes.
//!
//! Leakage (documented in SECURITY.md): within one tenant, field and domain key version, equal
//! values have equal indexes, so whoever reads the index column learns which rows share a value
//! and how often each value occurs (frequency analysis on low-entropy fields such as a yes/no flag
//! is possible: index only fields whose values are diverse). Across tenants, fields or key
//! versions indexes are unlinkable. Truncation to `n` bytes adds false positives (callers confirm
//! by decrypting) and makes offline confirmation of a guess harder.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::{Backend, Prk};
use crate::error::{Error, Result};
use crate::ids::{DomainName, KeyVersion, TenantId, labelled_ad};
use crate::seal::SealKey;

/// Default index length in bytes.
pub const DEFAULT_INDEX_LEN: usize = 16;
/// Shortest allowed index.
pub const MIN_INDEX_LEN: usize = 4;

/// A per-tenant, per-field blind index key.
///
/// It holds the HMAC state after the key (the inner and outer hashes of the padded key, on the
/// RustCrypto SHA-256, wiped on drop), boxed so a move does not copy it, so an index costs the
/// value's blocks only (both backends give the same bytes).
pub struct BlindIndexKey {
    mac: Box<Hmac<Sha256>>,
    len: usize,
    key_version: KeyVersion,
    backend: Backend,
}

impl fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlindIndexKey")
            .field("key", &"[REDACTED]")
            .field("len", &self.len)
            .field("key_version", &self.key_version)
            .finish()
    }
}

impl BlindIndexKey {
    /// Derives the index key of (tenant, domain, collection, field) from a domain key version.
    /// `len` is the index length in bytes (4 to 32). A key without a version (the keyring's
    /// key-encryption key) is refused (`Error::ApiMisuse`).
    pub fn derive(
        domain_key: &SealKey,
        tenant: &TenantId,
        domain: &DomainName,
        collection: &str,
        field: &str,
        len: usize,
    ) -> Result<Self> {
        if !(MIN_INDEX_LEN..=32).contains(&len) {
            return Err(Error::invalid("blind index length", "must be 4 to 32 bytes"));
        }
        let key_version = domain_key
            .key_ref()
            .version
            .ok_or(Error::ApiMisuse("a blind index key is derived from a versioned key"))?;
        let info = labelled_ad(
            b"kluis/bidx/v1",
            &[
                tenant.as_str().as_bytes(),
                domain.as_str().as_bytes(),
                collection.as_bytes(),
                field.as_bytes(),
            ],
        )?;
        let prk = Prk::new(domain_key.backend(), domain_key.material())?;
        let mut key = Zeroizing::new([0u8; 32]);
        prk.expand(&[&info], key.as_mut_slice())?;
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_slice())
            .map_err(|_| Error::ApiMisuse("blind index key length"))?;
        Ok(Self { mac: Box::new(mac), len, key_version, backend: domain_key.backend() })
    }

    /// The domain key version this index key comes from (store it beside the index).
    pub fn key_version(&self) -> KeyVersion {
        self.key_version
    }

    /// The index of `value`.
    pub fn index(&self, value: &[u8]) -> Vec<u8> {
        let mut m = (*self.mac).clone();
        m.update(value);
        let mac = Zeroizing::new(<[u8; 32]>::from(m.finalize().into_bytes()));
        mac.get(..self.len).unwrap_or(mac.as_slice()).to_vec()
    }

    /// The backend of the domain key this key was derived from.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}
