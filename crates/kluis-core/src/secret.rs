//! Secret types. None of them implements `Display`; their `Debug` never prints bytes; all are
//! zeroized on drop; the bytes are reachable only through an explicit `expose_secret()`;
//! equality is constant-time.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Length of every symmetric key in Kluis, in bytes.
pub const KEY_LEN: usize = 32;

/// 256 bits of key material: a root key, domain key, subject key or document data key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyMaterial([u8; KEY_LEN]);

impl KeyMaterial {
    /// Fresh random key material from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut k = Self([0u8; KEY_LEN]);
        crate::random::fill(&mut k.0)?;
        Ok(k)
    }

    /// Wraps existing bytes. The caller's copy is not zeroized by this call.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies from a slice, which must be exactly [`KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; KEY_LEN] =
            bytes.try_into().map_err(|_| Error::invalid("key material", "must be 32 bytes"))?;
        Ok(Self(arr))
    }

    /// The raw key bytes. Every call site is a place where a secret leaves its box: keep them few.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A non-secret fingerprint for logs: the first 8 bytes of HMAC-SHA256(key, "kluis key id").
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        let mac = crate::crypto::hmac_sha256(&self.0, &[b"kluis key id"]);
        out.copy_from_slice(mac.get(..8).unwrap_or(&[0u8; 8]));
        out
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial([REDACTED])")
    }
}

impl PartialEq for KeyMaterial {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for KeyMaterial {}

/// A passphrase, held zeroized. Its `Debug` is redacted.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(String);

impl Passphrase {
    /// Takes ownership of the string.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The passphrase bytes.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for Passphrase {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase([REDACTED])")
    }
}

/// Decrypted plaintext. Zeroized on drop, `Debug` redacted (it may be a diagnosis), equality in
/// constant time (for equal lengths).
#[derive(Clone, Default)]
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl PartialEq for Plaintext {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Plaintext {}

impl Plaintext {
    /// Wraps bytes.
    pub fn new(v: Vec<u8>) -> Self {
        Self(Zeroizing::new(v))
    }

    /// The plaintext bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Moves the bytes out into a `Zeroizing` vector.
    pub fn into_zeroizing(self) -> Zeroizing<Vec<u8>> {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext([REDACTED; {} bytes])", self.0.len())
    }
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
