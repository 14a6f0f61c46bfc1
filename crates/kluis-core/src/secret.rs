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
///
/// The bytes live in their own heap allocation, written once and wiped on drop. INVARIANT: moving
/// a `KeyMaterial` (into a map that grows, out of a `Vec`, through a `Result`) moves only the
/// pointer, so no copy of the key bytes is left behind in memory that is freed without a wipe.
pub struct KeyMaterial(Box<[u8; KEY_LEN]>);

impl KeyMaterial {
    /// Fresh random key material from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut k = Self::zeroed();
        crate::random::fill(k.0.as_mut_slice())?;
        Ok(k)
    }

    fn zeroed() -> Self {
        Self(Box::new([0u8; KEY_LEN]))
    }

    /// Wraps existing bytes. The caller's copy is not zeroized by this call (this call's own
    /// copy of the argument is).
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        let mut k = Self::zeroed();
        k.0.copy_from_slice(&bytes);
        bytes.zeroize();
        k
    }

    /// Copies from a slice, which must be exactly [`KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(Error::invalid("key material", "must be 32 bytes"));
        }
        let mut k = Self::zeroed();
        k.0.copy_from_slice(bytes);
        Ok(k)
    }

    /// The raw key bytes. Every call site is a place where a secret leaves its box: keep them few.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Clone for KeyMaterial {
    /// A second allocation holding the same bytes (copied heap to heap).
    fn clone(&self) -> Self {
        let mut k = Self::zeroed();
        k.0.copy_from_slice(self.0.as_slice());
        k
    }
}

impl Zeroize for KeyMaterial {
    fn zeroize(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for KeyMaterial {}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial([REDACTED])")
    }
}

impl PartialEq for KeyMaterial {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
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

/// Makes room for `additional` more bytes in a buffer that holds plaintext. When the buffer must
/// grow, its contents move to a new allocation and the old one is wiped before it is freed
/// (`Vec`'s own growth would free it as it is). Growth stays amortised (at least doubling).
pub(crate) fn reserve_wiping(buf: &mut Vec<u8>, additional: usize) {
    if buf.capacity() - buf.len() >= additional {
        return;
    }
    let want = buf.len().saturating_add(additional).max(buf.capacity().saturating_mul(2));
    let mut grown = Vec::with_capacity(want);
    grown.extend_from_slice(buf);
    buf.zeroize();
    *buf = grown;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_stay_put_when_key_material_moves() {
        let k = KeyMaterial::generate().unwrap();
        let at = k.expose_secret().as_ptr();
        // A Vec that grows moves its elements; a map that grows does too.
        let mut v = Vec::with_capacity(1);
        v.push(k);
        for _ in 0..100 {
            v.push(KeyMaterial::generate().unwrap());
        }
        assert_eq!(v[0].expose_secret().as_ptr(), at, "the key bytes were copied by a move");
        let moved = v.swap_remove(0);
        assert_eq!(moved.expose_secret().as_ptr(), at);
        let copy = moved.clone();
        assert_eq!(copy, moved);
        assert_ne!(copy.expose_secret().as_ptr(), at);
        assert_eq!(KeyMaterial::from_slice(&[7; 32]).unwrap(), KeyMaterial::from_bytes([7; 32]));
        assert!(KeyMaterial::from_slice(&[7; 31]).is_err());
    }

    #[test]
    fn growing_a_plaintext_buffer_keeps_its_bytes_and_doubles() {
        let mut b = Vec::with_capacity(4);
        b.extend_from_slice(b"abcd");
        let before = b.as_ptr();
        reserve_wiping(&mut b, 0);
        assert_eq!(b.as_ptr(), before, "no growth needed, no move");
        reserve_wiping(&mut b, 1);
        assert_eq!(b, b"abcd");
        assert!(b.capacity() >= 8);
        let cap = b.capacity();
        let at = b.as_ptr();
        b.extend_from_slice(&vec![1u8; cap - 4]);
        assert_eq!(b.as_ptr(), at, "the reserved room is used without reallocating");
    }
}
