//! Sealed values: one field value (or one wrapped key) encrypted with a committing AEAD.
//!
//! Layout (docs/FORMAT.md has the byte table):
//!
//! ```text
//! magic 0x6B | version | suite | key kind | key version (u32 BE) | salt (24)   = header, 32 bytes
//! commitment (32) | ciphertext (n) | tag (16)
//! ```
//!
//! **Version 2** (written now). Once per key: `Kx = HKDF-Expand(K, "kluis/seal/v2/aead", 32)` and
//! `Kc = HKDF-Expand(K, "kluis/seal/v2/commit", 32)`. Per message: the commitment is
//! `SHA-256(Kc || 0^32 || header)` (one compression from a precomputed state), and the AEAD is
//! XAES-256-GCM (C2SP) under `Kx` with the salt as its 192-bit nonce, or XChaCha20-Poly1305 under
//! `Kx` with the salt as its nonce.
//!
//! **Version 1** (still read, never written): `(k, c) = HKDF-Expand(K, "kluis/seal/v1" || header,
//! 64)`, a one-time AEAD key `k` with an all-zero nonce and the commitment `c`.
//!
//! In both, the associated data is `header || ad`, where `ad` is the canonical encoding of a
//! [`Context`] or another labelled structure.
//!
//! Nonce bound: uniqueness rests on the 192-bit random salt; after 2^64 messages under one key the
//! chance of any salt collision is about 2^-65, so the 2^32-message limit of random 96-bit GCM
//! nonces does not apply. Each message is limited to [`MAX_SEALED_PLAINTEXT`] bytes.

use std::fmt;

use crate::crypto::{AeadKey, Backend, Prk, Suite, TAG_LEN, XaesKdf, derive_keys, xchacha_open, xchacha_seal};
use crate::error::{Error, Result};
use crate::ids::Context;
use crate::metrics;
use crate::random;
use crate::secret::{KeyMaterial, Plaintext, ct_eq};
use crate::wire::Reader;

/// First byte of every sealed value.
pub const MAGIC: u8 = 0x6B;
/// Current sealed-value format version (the one written).
pub const VERSION: u8 = 0x02;
/// The first sealed-value format version: still read, no longer written.
pub const VERSION_1: u8 = 0x01;
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
const SEAL_V2_AEAD_LABEL: &[u8] = b"kluis/seal/v2/aead";
const SEAL_V2_COMMIT_LABEL: &[u8] = b"kluis/seal/v2/commit";
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
    /// Format version ([`VERSION`] or [`VERSION_1`]).
    pub format_version: u8,
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
        let format_version = r.u8()?;
        if format_version != VERSION && format_version != VERSION_1 {
            return Err(Error::UnsupportedVersion { what: "sealed value", version: u16::from(format_version) });
        }
        if sealed.len() < OVERHEAD {
            return Err(Error::malformed("sealed value", "too short"));
        }
        let suite = Suite::from_id(r.u8()?)?;
        let kind = KeyKind::from_id(r.u8()?)?;
        let version = r.u32()?;
        Ok(Self { format_version, suite, key: KeyRef { kind, version } })
    }
}

/// A key prepared for sealing and opening: the key material, its reference, and the precomputed
/// state of both format versions. Cheap to use many times; build once per key.
pub struct SealKey {
    material: KeyMaterial,
    key_ref: KeyRef,
    prk: Prk,
    backend: Backend,
    v2: V2Keys,
}

/// Version 2 state, derived once per key (all of it secret; zeroized on drop by the RustCrypto
/// types' `zeroize` features).
struct V2Keys {
    /// XAES-256-GCM key schedule and CMAC subkey for `Kx`.
    xaes: XaesKdf,
    /// XChaCha20-Poly1305 under `Kx`.
    xchacha: Box<chacha20poly1305::XChaCha20Poly1305>,
    /// SHA-256 chaining value after the first block, `Kc || 0^32`.
    commit: zeroize::Zeroizing<[u32; 8]>,
}

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

impl V2Keys {
    fn new(prk: &Prk) -> Result<Self> {
        use chacha20poly1305::KeyInit as _;
        let mut kx = zeroize::Zeroizing::new([0u8; crate::KEY_LEN]);
        prk.expand(&[SEAL_V2_AEAD_LABEL], kx.as_mut_slice())?;
        let mut block = zeroize::Zeroizing::new([0u8; 64]);
        if let Some(kc) = block.get_mut(..crate::KEY_LEN) {
            prk.expand(&[SEAL_V2_COMMIT_LABEL], kc)?;
        }
        let mut commit = zeroize::Zeroizing::new(SHA256_IV);
        sha2::block_api::compress256(&mut commit, std::slice::from_ref(&*block));
        Ok(Self {
            xaes: XaesKdf::new(&kx),
            xchacha: Box::new(chacha20poly1305::XChaCha20Poly1305::new(&(*kx).into())),
            commit,
        })
    }

    /// `SHA-256(Kc || 0^32 || header)`: the second and last block is the header with SHA-256's
    /// padding for a 96-byte message, so one compression from the stored chaining value.
    fn commitment(&self, header: &[u8; HEADER_LEN]) -> [u8; COMMITMENT_LEN] {
        let mut block = [0u8; 64];
        let (h, pad) = block.split_at_mut(HEADER_LEN);
        h.copy_from_slice(header);
        if let Some(first) = pad.first_mut() {
            *first = 0x80;
        }
        if let Some(len) = pad.last_chunk_mut::<8>() {
            *len = (96u64 * 8).to_be_bytes();
        }
        let mut state = *self.commit;
        sha2::block_api::compress256(&mut state, std::slice::from_ref(&block));
        let mut out = [0u8; COMMITMENT_LEN];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        zeroize::Zeroize::zeroize(&mut state);
        out
    }

    fn seal(&self, backend: Backend, suite: Suite, salt: &[u8; SALT_LEN], ad: &[u8], body: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        match suite {
            Suite::Aes256Gcm => {
                let (kx, nx) = self.xaes.derive(salt);
                AeadKey::new(backend, suite, &kx)?.seal_detached(&nx, ad, body)
            }
            Suite::XChaCha20Poly1305 => xchacha_seal(&self.xchacha, salt, ad, body),
        }
    }

    fn open(
        &self,
        backend: Backend,
        suite: Suite,
        salt: &[u8; SALT_LEN],
        ad: &[u8],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        match suite {
            Suite::Aes256Gcm => {
                let (kx, nx) = self.xaes.derive(salt);
                AeadKey::new(backend, suite, &kx)?.open_detached(&nx, ad, body, tag)
            }
            Suite::XChaCha20Poly1305 => xchacha_open(&self.xchacha, salt, ad, body, tag),
        }
    }
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
        let v2 = V2Keys::new(&prk)?;
        Ok(Self { material, key_ref, prk, backend, v2 })
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
        write_header(&mut header, VERSION, suite, self.key_ref, &salt);
        if let Some(dst) = ad.get_mut(..HEADER_LEN) {
            dst.copy_from_slice(&header);
        }
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.v2.commitment(&header));
        out.extend_from_slice(plaintext);
        let body = out.get_mut(HEADER_LEN + COMMITMENT_LEN..).ok_or_else(|| Error::ApiMisuse("seal buffer"))?;
        let tag = self.v2.seal(self.backend, suite, &salt, &ad, body)?;
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
        let hdr: &[u8; HEADER_LEN] = &r.array().map_err(OpenFailure::Other)?;
        let commitment = r.take(COMMITMENT_LEN).map_err(OpenFailure::Other)?;
        let body_len = r
            .remaining()
            .checked_sub(TAG_LEN)
            .ok_or_else(|| OpenFailure::Other(Error::malformed(what, "too short")))?;
        let ct = r.take(body_len).map_err(OpenFailure::Other)?;
        let tag: [u8; TAG_LEN] = r.array().map_err(OpenFailure::Other)?;

        if let Some(dst) = ad.get_mut(..HEADER_LEN) {
            dst.copy_from_slice(hdr);
        }
        let mut buf = Plaintext::new(ct.to_vec()).into_zeroizing();
        let opened = if header.format_version == VERSION_1 {
            let derived = derive_keys(&self.prk, &[SEAL_INFO_LABEL, hdr]).map_err(OpenFailure::Other)?;
            if !ct_eq(&derived.commitment, commitment) {
                metrics::decrypt_failed(what, true);
                return Err(OpenFailure::Commitment);
            }
            let aead =
                AeadKey::new(self.backend, header.suite, &derived.aead_key).map_err(OpenFailure::Other)?;
            aead.open_detached(&ZERO_NONCE, &ad, &mut buf, &tag)
        } else {
            if !ct_eq(&self.v2.commitment(hdr), commitment) {
                metrics::decrypt_failed(what, true);
                return Err(OpenFailure::Commitment);
            }
            let salt: &[u8; SALT_LEN] = hdr.last_chunk().ok_or(OpenFailure::Commitment)?;
            self.v2.open(self.backend, header.suite, salt, &ad, &mut buf, &tag)
        };
        if opened.is_err() {
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

fn write_header(out: &mut [u8; HEADER_LEN], format: u8, suite: Suite, key: KeyRef, salt: &[u8; SALT_LEN]) {
    let (fixed, rest) = out.split_at_mut(8);
    let v = key.version.to_be_bytes();
    fixed.copy_from_slice(&[MAGIC, format, suite.id(), key.kind.id(), v[0], v[1], v[2], v[3]]);
    rest.copy_from_slice(salt);
}
