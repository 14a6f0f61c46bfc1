//! Sealed values: one field value (or one wrapped key) encrypted with a committing AEAD.
//!
//! Layout (docs/FORMAT.md has the byte table):
//!
//! ```text
//! magic 0x6B | version 0x01 | suite | key kind | key version (u32 BE) | salt (24)   = header, 32 bytes
//! commitment (32) | ciphertext (n) | tag (16)
//! ```
//!
//! Per message: `(k, c) = HKDF-Expand(PRK = sealing key, info = "kluis/seal/v1" || header, 64)`,
//! where `k` is a one-time AEAD key and `c` the 256-bit key commitment. The AEAD nonce is all zero
//! (each `k` encrypts exactly one message). Associated data is `header || ad`, where `ad` is the
//! canonical encoding of a [`Context`] or another labelled structure.
//!
//! Nonce bound: uniqueness rests on the 192-bit random salt; after 2^64 messages under one key the
//! chance of any salt collision is about 2^-65, so the 2^32-message limit of random 96-bit GCM
//! nonces does not apply. Each message is limited to [`MAX_SEALED_PLAINTEXT`] bytes.

use std::fmt;

use crate::crypto::{AeadKey, Backend, Prk, Suite, TAG_LEN, derive_keys};
use crate::error::{Error, Result};
use crate::ids::Context;
use crate::metrics;
use crate::random;
use crate::secret::{KeyMaterial, Plaintext, ct_eq};
use crate::wire::Reader;

/// First byte of every sealed value.
pub const MAGIC: u8 = 0x6B;
/// Current sealed-value format version.
pub const VERSION: u8 = 0x01;
/// Length of the random salt.
pub const SALT_LEN: usize = 24;
/// Length of the header.
pub const HEADER_LEN: usize = 4 + 4 + SALT_LEN;
/// Length of the key commitment.
pub const COMMITMENT_LEN: usize = 32;
/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + COMMITMENT_LEN + TAG_LEN;
/// Largest plaintext one sealed value may hold (16 MiB). Larger data is a document.
pub const MAX_SEALED_PLAINTEXT: usize = 16 << 20;

const SEAL_INFO_LABEL: &[u8] = b"kluis/seal/v1";
const ZERO_NONCE: [u8; 12] = [0u8; 12];

/// What kind of key sealed a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyKind {
    /// A domain key of (tenant, domain).
    Domain,
    /// A subject key (one data subject within a tenant and domain).
    Subject,
    /// A root key version (used by the local keyring to wrap domain keys).
    Root,
    /// A key-encryption key derived from a passphrase or key file (the keyring file itself).
    KeyringKek,
}

impl KeyKind {
    /// Wire id.
    pub const fn id(self) -> u8 {
        match self {
            Self::Domain => 1,
            Self::Subject => 2,
            Self::Root => 3,
            Self::KeyringKek => 4,
        }
    }

    /// Parses the wire id.
    pub fn from_id(id: u8) -> Result<Self> {
        match id {
            1 => Ok(Self::Domain),
            2 => Ok(Self::Subject),
            3 => Ok(Self::Root),
            4 => Ok(Self::KeyringKek),
            _ => Err(Error::malformed("sealed value", "unknown key kind")),
        }
    }
}

/// Names the key a ciphertext was sealed with: its kind and version. Tenant, domain and subject are
/// known from the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRef {
    /// Kind of key.
    pub kind: KeyKind,
    /// Version of that key.
    pub version: u32,
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} key v{}", self.kind, self.version)
    }
}

/// The public header of a sealed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    /// Algorithm suite.
    pub suite: Suite,
    /// Which key.
    pub key: KeyRef,
}

impl SealedHeader {
    /// Reads the header of a sealed value without decrypting it (to pick the key).
    pub fn parse(sealed: &[u8]) -> Result<Self> {
        let mut r = Reader::new(sealed, "sealed value");
        if r.u8()? != MAGIC {
            return Err(Error::malformed("sealed value", "bad magic byte"));
        }
        // The version comes before any length check, so a later format of another size is
        // reported as "unsupported version", not as malformed.
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion { what: "sealed value", version: u16::from(version) });
        }
        if sealed.len() < OVERHEAD {
            return Err(Error::malformed("sealed value", "too short"));
        }
        let suite = Suite::from_id(r.u8()?)?;
        let kind = KeyKind::from_id(r.u8()?)?;
        let version = r.u32()?;
        Ok(Self { suite, key: KeyRef { kind, version } })
    }
}

/// A key prepared for sealing and opening: the key material, its reference, and the precomputed
/// HKDF state. Cheap to use many times; build once per key.
pub struct SealKey {
    material: KeyMaterial,
    key_ref: KeyRef,
    prk: Prk,
    backend: Backend,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey")
            .field("key_ref", &self.key_ref)
            .field("backend", &self.backend)
            .field("material", &"[REDACTED]")
            .finish()
    }
}

impl SealKey {
    /// Prepares `material` under `key_ref` with the preferred backend.
    pub fn new(material: KeyMaterial, key_ref: KeyRef) -> Result<Self> {
        Self::with_backend(material, key_ref, Backend::preferred())
    }

    /// Prepares `material` with a chosen backend (for the AEAD). The per-message HKDF always runs
    /// on the RustCrypto HMAC: both give the same bytes, and for these short inputs it is the
    /// faster one (BENCHMARKS.md).
    pub fn with_backend(material: KeyMaterial, key_ref: KeyRef, backend: Backend) -> Result<Self> {
        let prk = Prk::new(Backend::RustCrypto, &material)?;
        Ok(Self { material, key_ref, prk, backend })
    }

    /// The key's reference.
    pub fn key_ref(&self) -> KeyRef {
        self.key_ref
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The key material (for wrapping it; keep such calls rare).
    pub fn material(&self) -> &KeyMaterial {
        &self.material
    }

    /// Seals a field value under `context`.
    pub fn seal(&self, suite: Suite, context: &Context<'_>, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut ad = Vec::with_capacity(HEADER_LEN + context.encoded_len());
        ad.extend_from_slice(&[0u8; HEADER_LEN]);
        ad.extend_from_slice(crate::ids::CONTEXT_LABEL);
        context.encode_into(&mut ad)?;
        self.seal_inner(suite, ad, plaintext)
    }

    /// Opens a field value sealed under `context`.
    pub fn open(&self, context: &Context<'_>, sealed: &[u8]) -> Result<Plaintext> {
        let mut ad = Vec::with_capacity(HEADER_LEN + context.encoded_len());
        ad.extend_from_slice(&[0u8; HEADER_LEN]);
        ad.extend_from_slice(crate::ids::CONTEXT_LABEL);
        context.encode_into(&mut ad)?;
        self.open_inner(ad, sealed, "sealed value").map_err(OpenFailure::into_error)
    }

    /// Seals with caller-supplied associated data (a labelled encoding, see [`crate::ids`]).
    pub(crate) fn seal_ad(&self, suite: Suite, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut full = Vec::with_capacity(HEADER_LEN + ad.len());
        full.extend_from_slice(&[0u8; HEADER_LEN]);
        full.extend_from_slice(ad);
        self.seal_inner(suite, full, plaintext)
    }

    /// Opens with caller-supplied associated data.
    pub(crate) fn open_ad(
        &self,
        ad: &[u8],
        sealed: &[u8],
        what: &'static str,
    ) -> Result<Plaintext, OpenFailure> {
        let mut full = Vec::with_capacity(HEADER_LEN + ad.len());
        full.extend_from_slice(&[0u8; HEADER_LEN]);
        full.extend_from_slice(ad);
        self.open_inner(full, sealed, what)
    }

    /// `ad` starts with `HEADER_LEN` placeholder bytes that are overwritten with the header.
    fn seal_inner(&self, suite: Suite, mut ad: Vec<u8>, plaintext: &[u8]) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_SEALED_PLAINTEXT {
            return Err(Error::LimitReached("a sealed value holds at most 16 MiB"));
        }
        let salt: [u8; SALT_LEN] = random::public_array()?;
        let mut header = [0u8; HEADER_LEN];
        write_header(&mut header, suite, self.key_ref, &salt);
        let derived = derive_keys(&self.prk, &[SEAL_INFO_LABEL, &header])?;
        if let Some(dst) = ad.get_mut(..HEADER_LEN) {
            dst.copy_from_slice(&header);
        }
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&derived.commitment);
        out.extend_from_slice(plaintext);
        let aead = AeadKey::new(self.backend, suite, &derived.aead_key)?;
        let body = out.get_mut(HEADER_LEN + COMMITMENT_LEN..).ok_or(Error::ApiMisuse("seal buffer"))?;
        let tag = aead.seal_detached(&ZERO_NONCE, &ad, body)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    fn open_inner(
        &self,
        mut ad: Vec<u8>,
        sealed: &[u8],
        what: &'static str,
    ) -> Result<Plaintext, OpenFailure> {
        let header = SealedHeader::parse(sealed).map_err(OpenFailure::Other)?;
        if header.key != self.key_ref {
            // The header names another key: opening with this one can only fail.
            metrics::decrypt_failed(what, true);
            return Err(OpenFailure::Commitment);
        }
        let mut r = Reader::new(sealed, "sealed value");
        let hdr = r.take(HEADER_LEN).map_err(OpenFailure::Other)?;
        let commitment = r.take(COMMITMENT_LEN).map_err(OpenFailure::Other)?;
        let body_len = r
            .remaining()
            .checked_sub(TAG_LEN)
            .ok_or(OpenFailure::Other(Error::malformed(what, "too short")))?;
        let ct = r.take(body_len).map_err(OpenFailure::Other)?;
        let tag: [u8; TAG_LEN] = r.array().map_err(OpenFailure::Other)?;

        let derived = derive_keys(&self.prk, &[SEAL_INFO_LABEL, hdr]).map_err(OpenFailure::Other)?;
        if !ct_eq(&derived.commitment, commitment) {
            metrics::decrypt_failed(what, true);
            return Err(OpenFailure::Commitment);
        }
        if let Some(dst) = ad.get_mut(..HEADER_LEN) {
            dst.copy_from_slice(hdr);
        }
        let aead = AeadKey::new(self.backend, header.suite, &derived.aead_key).map_err(OpenFailure::Other)?;
        let mut buf = Plaintext::new(ct.to_vec()).into_zeroizing();
        if aead.open_detached(&ZERO_NONCE, &ad, &mut buf, &tag).is_err() {
            metrics::decrypt_failed(what, false);
            return Err(OpenFailure::Tag);
        }
        Ok(Plaintext::new(std::mem::take(&mut *buf)))
    }
}

/// Why opening failed, for callers inside this crate that must tell a wrong key (commitment) from
/// altered data (tag), such as the keyring's wrong-passphrase check. Public APIs map both to
/// [`Error::Decrypt`].
#[derive(Debug)]
pub(crate) enum OpenFailure {
    Commitment,
    Tag,
    Other(Error),
}

impl OpenFailure {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Self::Commitment | Self::Tag => Error::Decrypt,
            Self::Other(e) => e,
        }
    }
}

fn write_header(out: &mut [u8; HEADER_LEN], suite: Suite, key: KeyRef, salt: &[u8; SALT_LEN]) {
    let (fixed, rest) = out.split_at_mut(8);
    let v = key.version.to_be_bytes();
    fixed.copy_from_slice(&[MAGIC, VERSION, suite.id(), key.kind.id(), v[0], v[1], v[2], v[3]]);
    rest.copy_from_slice(salt);
}
