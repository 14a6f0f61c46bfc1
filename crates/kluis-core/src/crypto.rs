//! The primitives Kluis uses, behind one small interface with two interchangeable backends.
//!
//! - [`Backend::RustCrypto`]: pure Rust (`aes-gcm`, `chacha20poly1305`, `hkdf`, `hmac`, `sha2`),
//!   portable, zeroizes its key schedules. Always compiled in; the reference implementation.
//! - [`Backend::Ring`] (feature `ring`, on by default): `ring`'s assembly AES-GCM and SHA-256, about
//!   twice as fast for AES-256-GCM on x86-64. `ring` does not zeroize its internal key schedules;
//!   SECURITY.md says so.
//!
//! Both backends produce and accept exactly the same bytes; `tests/tests/differential.rs` checks
//! it with property tests. XChaCha20-Poly1305 is always computed by RustCrypto (`ring` has no
//! XChaCha).

use aes_gcm::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::secret::{KEY_LEN, KeyMaterial};

/// Length of every AEAD tag used by Kluis.
pub const TAG_LEN: usize = 16;

/// Which implementation computes the primitives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Pure-Rust RustCrypto crates.
    RustCrypto,
    /// `ring` (feature `ring`).
    #[cfg(feature = "ring")]
    Ring,
}

impl Backend {
    /// The fastest backend compiled in.
    pub const fn preferred() -> Self {
        #[cfg(feature = "ring")]
        {
            Self::Ring
        }
        #[cfg(not(feature = "ring"))]
        {
            Self::RustCrypto
        }
    }

    /// Every backend compiled in.
    pub const fn all() -> &'static [Backend] {
        #[cfg(feature = "ring")]
        {
            &[Self::RustCrypto, Self::Ring]
        }
        #[cfg(not(feature = "ring"))]
        {
            &[Self::RustCrypto]
        }
    }
}

impl Default for Backend {
    fn default() -> Self {
        Self::preferred()
    }
}

/// An AEAD algorithm suite. The id is written into every ciphertext.
///
/// Both suites derive a fresh key per message (or per document) with HKDF-SHA256 and carry a
/// 256-bit key commitment; see docs/FORMAT.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Suite {
    /// AES-256-GCM. The default: with AES-NI/VAES it is the fastest (see BENCHMARKS.md).
    #[default]
    Aes256Gcm,
    /// XChaCha20-Poly1305. For platforms without AES hardware.
    XChaCha20Poly1305,
}

impl Suite {
    /// The id byte in the wire format.
    pub const fn id(self) -> u8 {
        match self {
            Self::Aes256Gcm => 0x01,
            Self::XChaCha20Poly1305 => 0x02,
        }
    }

    /// Parses the id byte.
    pub fn from_id(id: u8) -> Result<Self> {
        match id {
            0x01 => Ok(Self::Aes256Gcm),
            0x02 => Ok(Self::XChaCha20Poly1305),
            other => Err(Error::UnsupportedSuite(other)),
        }
    }
}

/// A prepared HKDF-SHA256 PRK (RFC 5869 section 3.3: the key is already uniformly random, so the
/// extract step is skipped and the key is used as the PRK). Preparing it once precomputes the HMAC
/// pads, so each expand costs only the hashing of `info`.
pub(crate) enum Prk {
    RustCrypto(Box<Hkdf<Sha256>>),
    #[cfg(feature = "ring")]
    Ring(ring::hkdf::Prk),
}

#[cfg(feature = "ring")]
struct RingLen(usize);
#[cfg(feature = "ring")]
impl ring::hkdf::KeyType for RingLen {
    fn len(&self) -> usize {
        self.0
    }
}

impl Prk {
    pub(crate) fn new(backend: Backend, key: &KeyMaterial) -> Result<Self> {
        match backend {
            Backend::RustCrypto => Hkdf::<Sha256>::from_prk(key.expose_secret())
                .map(|h| Self::RustCrypto(Box::new(h)))
                .map_err(|_| Error::ApiMisuse("hkdf prk length")),
            #[cfg(feature = "ring")]
            Backend::Ring => {
                Ok(Self::Ring(ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, key.expose_secret())))
            }
        }
    }

    /// HKDF-Expand(PRK, info = concatenation of `info`, L = out.len()).
    pub(crate) fn expand(&self, info: &[&[u8]], out: &mut [u8]) -> Result<()> {
        match self {
            Self::RustCrypto(h) => {
                h.expand_multi_info(info, out).map_err(|_| Error::ApiMisuse("hkdf output length"))
            }
            #[cfg(feature = "ring")]
            Self::Ring(p) => p
                .expand(info, RingLen(out.len()))
                .and_then(|okm| okm.fill(out))
                .map_err(|_| Error::ApiMisuse("hkdf output length")),
        }
    }
}

impl KeyMaterial {
    /// A non-secret fingerprint for logs: the first 8 bytes of HMAC-SHA256(key, "kluis key id").
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        let mac = hmac_sha256(self.expose_secret(), &[b"kluis key id"]);
        out.copy_from_slice(mac.get(..8).unwrap_or(&[0u8; 8]));
        out
    }
}

/// HMAC-SHA256 over the concatenation of `parts`, with the preferred backend.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    hmac_sha256_with(Backend::preferred(), key, parts)
}

/// HMAC-SHA256 over the concatenation of `parts`, with a chosen backend.
pub(crate) fn hmac_sha256_with(backend: Backend, key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    match backend {
        Backend::RustCrypto => hmac_sha256_rustcrypto(key, parts),
        #[cfg(feature = "ring")]
        Backend::Ring => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            let mut ctx = ring::hmac::Context::with_key(&k);
            for p in parts {
                ctx.update(p);
            }
            let tag = ctx.sign();
            let mut out = [0u8; 32];
            out.copy_from_slice(tag.as_ref());
            out
        }
    }
}

fn hmac_sha256_rustcrypto(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256 of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// AES-256-GCM on the encryption-only AES-256 key schedule: GCM never runs the block cipher
/// backwards, so the decryption round keys of `aes_gcm::Aes256Gcm` would be computed for nothing.
pub(crate) type Aes256GcmEnc = aes_gcm::AesGcm<aes_gcm::aes::Aes256Enc, aes_gcm::aead::consts::U12>;

/// A prepared AEAD key for one suite and backend. Not boxed: sealed values use each AES key for
/// one message, and a heap allocation plus a copy of the key schedule per message cost more than
/// the AEAD on a short value (BENCHMARKS.md); the owners that keep a key longer hold one per
/// document.
#[expect(clippy::large_enum_variant, reason = "one-time keys live on the stack; see above")]
pub(crate) enum AeadKey {
    RcAes(Aes256GcmEnc),
    RcXChaCha(chacha20poly1305::XChaCha20Poly1305),
    #[cfg(feature = "ring")]
    RingAes(ring::aead::LessSafeKey),
}

/// The 96-bit nonce part every Kluis nonce is built from. XChaCha20-Poly1305 receives twelve zero
/// bytes followed by these twelve (its 192-bit nonce is not needed for uniqueness, since every
/// key is derived per message or per document).
pub(crate) type Nonce96 = [u8; 12];

impl AeadKey {
    pub(crate) fn new(backend: Backend, suite: Suite, key: &[u8; KEY_LEN]) -> Result<Self> {
        match (suite, backend) {
            (Suite::XChaCha20Poly1305, _) => chacha20poly1305::XChaCha20Poly1305::new_from_slice(key)
                .map(Self::RcXChaCha)
                .map_err(|_| Error::ApiMisuse("aead key length")),
            (Suite::Aes256Gcm, Backend::RustCrypto) => Aes256GcmEnc::new_from_slice(key)
                .map(Self::RcAes)
                .map_err(|_| Error::ApiMisuse("aead key length")),
            #[cfg(feature = "ring")]
            (Suite::Aes256Gcm, Backend::Ring) => ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
                .map(|k| Self::RingAes(ring::aead::LessSafeKey::new(k)))
                .map_err(|_| Error::ApiMisuse("aead key length")),
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal_detached(&self, nonce: &Nonce96, aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let mut out = [0u8; TAG_LEN];
        match self {
            Self::RcAes(k) => {
                let n = aes_gcm::aead::Nonce::<Aes256GcmEnc>::from(*nonce);
                let tag = k
                    .encrypt_inout_detached(&n, aad, buf.into())
                    .map_err(|_| Error::LimitReached("aead message length"))?;
                out.copy_from_slice(tag.as_slice());
            }
            Self::RcXChaCha(k) => {
                let n = chacha20poly1305::XNonce::from(xnonce(nonce));
                let tag = k
                    .encrypt_inout_detached(&n, aad, buf.into())
                    .map_err(|_| Error::LimitReached("aead message length"))?;
                out.copy_from_slice(tag.as_slice());
            }
            #[cfg(feature = "ring")]
            Self::RingAes(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(*nonce);
                let tag = k
                    .seal_in_place_separate_tag(n, ring::aead::Aad::from(aad), buf)
                    .map_err(|_| Error::LimitReached("aead message length"))?;
                out.copy_from_slice(tag.as_ref());
            }
        }
        Ok(out)
    }

    /// Decrypts `buf` in place after checking `tag`. On failure `buf` holds no plaintext
    /// (RustCrypto and ring both leave it unchanged or zeroed).
    pub(crate) fn open_detached(
        &self,
        nonce: &Nonce96,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        match self {
            Self::RcAes(k) => {
                let n = aes_gcm::aead::Nonce::<Aes256GcmEnc>::from(*nonce);
                let t = aes_gcm::aead::Tag::<Aes256GcmEnc>::from(*tag);
                k.decrypt_inout_detached(&n, aad, buf.into(), &t).map_err(|_| Error::Decrypt)
            }
            Self::RcXChaCha(k) => {
                let n = chacha20poly1305::XNonce::from(xnonce(nonce));
                let t = chacha20poly1305::Tag::from(*tag);
                k.decrypt_inout_detached(&n, aad, buf.into(), &t).map_err(|_| Error::Decrypt)
            }
            #[cfg(feature = "ring")]
            Self::RingAes(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(*nonce);
                let t = ring::aead::Tag::from(*tag);
                k.open_in_place_separate_tag(n, ring::aead::Aad::from(aad), t, buf, 0..)
                    .map(|_| ())
                    .map_err(|_| Error::Decrypt)
            }
        }
    }
}

fn xnonce(n: &Nonce96) -> [u8; 24] {
    let mut x = [0u8; 24];
    if let Some(dst) = x.get_mut(12..) {
        dst.copy_from_slice(n);
    }
    x
}

/// XAES-256-GCM subkey derivation (<https://c2sp.org/XAES-256-GCM>), precomputed for one input
/// key: the AES-256 key schedule and the CMAC subkey `K1` (steps 1 and 2 of the spec) are computed
/// once, so each message costs two AES block encryptions (step 5).
pub(crate) struct XaesKdf {
    aes: aes_gcm::aes::Aes256Enc,
    k1: Zeroizing<[u8; 16]>,
}

impl XaesKdf {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Self {
        use aes_gcm::aes::cipher::{BlockCipherEncrypt, KeyInit as _};
        let aes = aes_gcm::aes::Aes256Enc::new(&(*key).into());
        let mut l = aes_gcm::aes::Block::default();
        aes.encrypt_block(&mut l);
        let l = Zeroizing::new(u128::from_be_bytes(l.into()));
        // K1 = L << 1, xor 0x87 when the top bit of L was set; without a branch on the secret bit.
        let carry = 0u128.wrapping_sub(*l >> 127);
        let k1 = Zeroizing::new(((*l << 1) ^ (carry & 0x87)).to_be_bytes());
        Self { aes, k1 }
    }

    /// The AES-256-GCM key `Kx` and nonce `Nx` for a 192-bit nonce (the raw primitive for the
    /// specification's test vectors; sealing splits the nonce itself).
    #[cfg(feature = "hazmat")]
    pub(crate) fn derive(&self, nonce: &[u8; 24]) -> (Zeroizing<[u8; KEY_LEN]>, Nonce96) {
        let (n1, n2) = nonce.split_at(12);
        let mut nx = [0u8; 12];
        nx.copy_from_slice(n2);
        (self.derive_key(n1), nx)
    }

    /// The AES-256-GCM key `Kx` for the first half `n1` (12 bytes) of a 192-bit nonce.
    pub(crate) fn derive_key(&self, n1: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        use aes_gcm::aes::cipher::BlockCipherEncrypt;
        let mut blocks = [aes_gcm::aes::Block::default(), aes_gcm::aes::Block::default()];
        for (i, b) in blocks.iter_mut().enumerate() {
            // M_i = 0x00 || i || 'X' || 0x00 || N[:12], then M_i xor K1.
            let mut m = [0u8; 16];
            let (prefix, rest) = m.split_at_mut(4);
            prefix.copy_from_slice(&[0x00, i as u8 + 1, 0x58, 0x00]);
            for (r, n) in rest.iter_mut().zip(n1) {
                *r = *n;
            }
            for (x, k) in m.iter_mut().zip(self.k1.iter()) {
                *x ^= k;
            }
            *b = m.into();
        }
        self.aes.encrypt_blocks(&mut blocks);
        let mut kx = Zeroizing::new([0u8; KEY_LEN]);
        let (a, b) = kx.split_at_mut(16);
        let [b0, b1] = &mut blocks;
        a.copy_from_slice(b0);
        b.copy_from_slice(b1);
        zeroize::Zeroize::zeroize(b0.as_mut_slice());
        zeroize::Zeroize::zeroize(b1.as_mut_slice());
        kx
    }
}

/// XChaCha20-Poly1305 with a full 192-bit nonce (sealed values v2 use the salt as the nonce).
pub(crate) fn xchacha_seal(
    key: &chacha20poly1305::XChaCha20Poly1305,
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; TAG_LEN]> {
    let n = chacha20poly1305::XNonce::from(*nonce);
    let tag = key
        .encrypt_inout_detached(&n, aad, buf.into())
        .map_err(|_| Error::LimitReached("aead message length"))?;
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_slice());
    Ok(out)
}

/// Opens [`xchacha_seal`]'s output in place.
pub(crate) fn xchacha_open(
    key: &chacha20poly1305::XChaCha20Poly1305,
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<()> {
    let n = chacha20poly1305::XNonce::from(*nonce);
    let t = chacha20poly1305::Tag::from(*tag);
    key.decrypt_inout_detached(&n, aad, buf.into(), &t).map_err(|_| Error::Decrypt)
}

/// 64 bytes of HKDF output: a one-time AEAD key and a key commitment.
pub(crate) struct DerivedKeys {
    pub(crate) aead_key: Zeroizing<[u8; KEY_LEN]>,
    pub(crate) commitment: [u8; 32],
}

/// Derives the one-time AEAD key and the commitment for `info` from a prepared PRK.
pub(crate) fn derive_keys(prk: &Prk, info: &[&[u8]]) -> Result<DerivedKeys> {
    let mut okm = Zeroizing::new([0u8; 64]);
    prk.expand(info, okm.as_mut_slice())?;
    let mut aead_key = Zeroizing::new([0u8; KEY_LEN]);
    let mut commitment = [0u8; 32];
    let (a, c) = okm.split_at(KEY_LEN);
    aead_key.copy_from_slice(a);
    commitment.copy_from_slice(c);
    Ok(DerivedKeys { aead_key, commitment })
}

/// Raw primitive wrappers, for test vectors and benchmarks only (feature `hazmat`).
///
/// These take caller-chosen nonces: reusing one breaks the AEAD. Applications use
/// [`crate::SealKey`] and [`crate::DocumentSealer`], which never expose a nonce.
#[cfg(feature = "hazmat")]
pub mod hazmat {
    use super::{AeadKey, Backend, Nonce96, Prk, Suite, TAG_LEN};
    use crate::error::Result;
    use crate::secret::{KEY_LEN, KeyMaterial};

    /// An AEAD key for one suite and backend (XChaCha20-Poly1305 receives `[0; 12] || nonce`).
    pub struct RawAead(AeadKey);

    impl std::fmt::Debug for RawAead {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("RawAead([REDACTED])")
        }
    }

    impl RawAead {
        /// Prepares a key.
        pub fn new(backend: Backend, suite: Suite, key: &[u8; KEY_LEN]) -> Result<Self> {
            AeadKey::new(backend, suite, key).map(Self)
        }

        /// Encrypts in place, returns the tag.
        pub fn seal(&self, nonce: &Nonce96, aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
            self.0.seal_detached(nonce, aad, buf)
        }

        /// Decrypts in place after checking the tag.
        pub fn open(&self, nonce: &Nonce96, aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<()> {
            self.0.open_detached(nonce, aad, buf, tag)
        }
    }

    /// A prepared XAES-256-GCM key derivation (key schedule and CMAC subkey computed once).
    pub struct XaesKey(super::XaesKdf);

    impl std::fmt::Debug for XaesKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("XaesKey([REDACTED])")
        }
    }

    impl XaesKey {
        /// Prepares `key`.
        pub fn new(key: &[u8; KEY_LEN]) -> Self {
            Self(super::XaesKdf::new(key))
        }

        /// `(Kx, Nx)` for a 192-bit `nonce`.
        pub fn derive(&self, nonce: &[u8; 24]) -> ([u8; KEY_LEN], [u8; 12]) {
            let (kx, nx) = self.0.derive(nonce);
            (*kx, nx)
        }
    }

    /// XAES-256-GCM subkey derivation: `(Kx, Nx)` for `key` and a 192-bit `nonce`.
    pub fn xaes_derive(key: &[u8; KEY_LEN], nonce: &[u8; 24]) -> ([u8; KEY_LEN], [u8; 12]) {
        let (kx, nx) = super::XaesKdf::new(key).derive(nonce);
        (*kx, nx)
    }

    /// XAES-256-GCM encryption in place (derivation, then AES-256-GCM on `backend`); returns the tag.
    pub fn xaes_seal(
        backend: Backend,
        key: &[u8; KEY_LEN],
        nonce: &[u8; 24],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let (kx, nx) = super::XaesKdf::new(key).derive(nonce);
        AeadKey::new(backend, Suite::Aes256Gcm, &kx)?.seal_detached(&nx, aad, buf)
    }

    /// XAES-256-GCM decryption in place after checking the tag.
    pub fn xaes_open(
        backend: Backend,
        key: &[u8; KEY_LEN],
        nonce: &[u8; 24],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        let (kx, nx) = super::XaesKdf::new(key).derive(nonce);
        AeadKey::new(backend, Suite::Aes256Gcm, &kx)?.open_detached(&nx, aad, buf, tag)
    }

    /// HKDF-Expand (SHA-256) with a 32-byte PRK.
    pub fn hkdf_expand(backend: Backend, prk: &[u8; KEY_LEN], info: &[u8], out: &mut [u8]) -> Result<()> {
        Prk::new(backend, &KeyMaterial::from_bytes(*prk))?.expand(&[info], out)
    }

    /// HMAC-SHA256.
    pub fn hmac_sha256(backend: Backend, key: &[u8], msg: &[u8]) -> [u8; 32] {
        super::hmac_sha256_with(backend, key, &[msg])
    }
}
