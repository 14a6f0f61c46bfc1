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
//! Nonce bound (docs/FORMAT.md §5): for the AES suite the salt is `epoch || r`, where the 12-byte
//! epoch selects the XAES subkey and the 12-byte `r` is the GCM nonce. A sealer keeps one epoch
//! (and its prepared AES-GCM subkey) for at most [`EPOCH_VALUES`] = 2^16 values, and starts a new
//! one when the process id changes (a forked child). Every `r` (and every XChaCha salt) is drawn
//! from the OS for that value alone, so a copy of the process (a VM snapshot restored twice)
//! cannot replay it. One process puts at most 2^16 random 96-bit nonces under one subkey
//! (collision chance below 2^-65), `c` copies sharing an epoch at most `c · 2^16` (below
//! `c^2 / 2^65`), and `n` values under one key risk a repeat with probability about
//! `n · 2^16 / 2^97`: 2^-32 only after 2^49 values. The XChaCha suite takes the whole salt as its
//! 192-bit nonce. Each message is limited to [`MAX_SEALED_PLAINTEXT`] bytes.

use std::fmt;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::crypto::{
    AeadKey, Backend, Prk, Suite, TAG_LEN, XaesKdf, derive_keys, xchacha_open, xchacha_seal,
};
use crate::error::{Error, Result};
use crate::ids::{Context, KeyVersion};
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
    /// Version of that key; `None` for the keyring's key-encryption key, which has no versions
    /// (0 in the header).
    pub version: Option<KeyVersion>,
}

impl KeyRef {
    /// A reference to version `version` of a key of `kind`.
    pub const fn new(kind: KeyKind, version: KeyVersion) -> Self {
        Self { kind, version: Some(version) }
    }

    /// The header's u32: the version, 0 for none.
    fn version_number(self) -> u32 {
        self.version.map_or(0, KeyVersion::get)
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} key v{}", self.kind, self.version_number())
    }
}

/// Key versions start at 1 (docs/FORMAT.md §3.2); only the keyring's key-encryption key, which
/// has no versions, is always 0 (`None`). Readers refuse version 0 of a versioned kind, and no
/// writer makes one (a [`SealKey`] for it cannot be built).
fn check_key_version(kind: KeyKind, version: Option<KeyVersion>) -> Result<()> {
    if version.is_none() && kind != KeyKind::KeyringKek {
        return Err(Error::malformed("sealed value", "key version 0"));
    }
    Ok(())
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
            return Err(Error::UnsupportedVersion {
                what: "sealed value",
                version: u16::from(format_version),
            });
        }
        if sealed.len() < OVERHEAD {
            return Err(Error::malformed("sealed value", "too short"));
        }
        let suite = Suite::from_id(r.u8()?)?;
        let kind = KeyKind::from_id(r.u8()?)?;
        // 0 is no version: the keyring's key-encryption key's, refused for any other kind.
        let version = KeyVersion::new(r.u32()?).ok();
        check_key_version(kind, version)?;
        Ok(Self { format_version, suite, key: KeyRef { kind, version } })
    }
}

/// A key prepared for sealing and opening: the key material, its reference, and the precomputed
/// state of both format versions. Cheap to use many times; build once per key and share it
/// (`SealKey` is `Send + Sync`).
///
/// It caches prepared AES-256-GCM subkeys: for sealing, one epoch per slot (threads take slots
/// round-robin), renewed every [`EPOCH_VALUES`] values and in a process with another id (after
/// `fork`); for opening, the most recent epoch per
/// slot. Slots are taken with `try_lock` and a busy slot means the uncached path (a fresh epoch, or
/// a subkey derived for one value), never waiting. At most 16 subkeys are held per `SealKey`.
///
/// INVARIANT: everything secret it holds (the key material, the prepared PRK, the v2 key
/// schedules and commitment state, the cached subkeys) is behind a `Box`, so moving a `SealKey`
/// (into a map that grows, a `Vec`, a struct) copies pointers, never key bytes.
pub struct SealKey {
    material: KeyMaterial,
    key_ref: KeyRef,
    prk: Box<Prk>,
    backend: Backend,
    v2: Box<V2Keys>,
}

/// How many values one cached XAES subkey seals before the sealer draws a new epoch (the first
/// 12 salt bytes). See [`SealKey`] and docs/FORMAT.md §5.
pub const EPOCH_VALUES: u32 = 1 << 16;

/// Cached prepared keys per [`SealKey`], for sealing (one per thread, by a per-thread index) and
/// for opening (by the epoch's first byte).
const CACHE_SLOTS: usize = 8;

/// Version 2 state, derived once per key (all of it secret; zeroized on drop by the RustCrypto
/// types' `zeroize` features, except `ring`'s key schedules, see SECURITY.md).
struct V2Keys {
    /// XAES-256-GCM key schedule and CMAC subkey for `Kx`.
    xaes: XaesKdf,
    /// XChaCha20-Poly1305 under `Kx`.
    xchacha: Box<chacha20poly1305::XChaCha20Poly1305>,
    /// SHA-256 chaining value after the first block, `Kc || 0^32`.
    commit: zeroize::Zeroizing<[u32; 8]>,
    /// Prepared AES-256-GCM subkeys of the current sealing epochs. Empty until used; `try_lock`
    /// only: a busy slot means the uncached path, never waiting.
    seal_slots: [Mutex<Option<Box<SealSlot>>>; CACHE_SLOTS],
    /// Prepared AES-256-GCM subkeys of recently opened epochs.
    open_slots: [Mutex<Option<Box<OpenSlot>>>; CACHE_SLOTS],
}

struct SealSlot {
    epoch: [u8; EPOCH_LEN],
    key: AeadKey,
    /// Values this epoch may still seal. INVARIANT: at most [`EPOCH_VALUES`] values are sealed
    /// per epoch in one process, which keeps the GCM random-nonce bound per subkey at
    /// 2^32 / 2^97, and at `(c · 2^16)^2 / 2^97` for `c` copies of a process (FORMAT.md §5.2).
    left: u32,
    /// The process that drew the epoch. INVARIANT: a process with another id (a forked child,
    /// which inherits the slot) draws its own epoch before sealing.
    pid: u32,
}

struct OpenSlot {
    epoch: [u8; EPOCH_LEN],
    key: AeadKey,
}

/// The first half of the salt: the XAES key-derivation input.
const EPOCH_LEN: usize = 12;

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// This thread's seal slot index: threads take slots round-robin as they first seal.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % CACHE_SLOTS;
    }
    SLOT.try_with(|s| *s).unwrap_or(0)
}

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
            seal_slots: std::array::from_fn(|_| Mutex::new(None)),
            open_slots: std::array::from_fn(|_| Mutex::new(None)),
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

    /// Seals a v2 value: picks the salt, writes the header into `ad`'s first `HEADER_LEN` bytes,
    /// and returns `header || commitment || ciphertext || tag`.
    ///
    /// `fresh` are bytes the calling seal drew from the OS for this value alone, after its
    /// inputs were fixed ([`Fresh`]). AES suite: the salt is `epoch || r`. The epoch and its
    /// prepared AES-256-GCM subkey come from this thread's slot and are renewed after
    /// [`EPOCH_VALUES`] values, or when the process id is not the one that drew the epoch; `r` is
    /// the first 12 bytes of `fresh`. When the slot is busy (another thread on the same slot), the
    /// salt is the whole of `fresh` (a fresh epoch, with the subkey derived for this value alone).
    /// XChaCha suite: the salt is the whole of `fresh`.
    fn seal(
        &self,
        backend: Backend,
        suite: Suite,
        key_ref: KeyRef,
        ad: &mut [u8],
        plaintext: &[u8],
        fresh: &FreshSalt,
    ) -> Result<Vec<u8>> {
        let mut slot = match suite {
            Suite::Aes256Gcm => self.seal_slots.get(thread_slot()).and_then(|m| m.try_lock().ok()),
            Suite::XChaCha20Poly1305 => None,
        };
        // INVARIANT: every salt has bytes drawn from the OS for this value by the call sealing
        // it, after every earlier call's values: `r` (the GCM nonce) with a cached epoch, the
        // whole salt otherwise. A copy of this process made before that draw draws its own; one
        // made after it seals the same inputs with them, so the same bytes (FORMAT.md §5.2).
        let cached_epoch: Option<[u8; EPOCH_LEN]> = match slot.as_mut() {
            Some(guard) => {
                // Read by this call (Fresh::draw): a forked child is another process's call.
                let pid = fresh.pid;
                if guard.as_ref().is_none_or(|s| s.left == 0 || s.pid != pid) {
                    let epoch: [u8; EPOCH_LEN] = random::public_array()?;
                    let kx = self.xaes.derive_key(&epoch);
                    **guard = Some(Box::new(SealSlot {
                        epoch,
                        key: AeadKey::new(backend, suite, &kx)?,
                        left: EPOCH_VALUES,
                        pid,
                    }));
                }
                guard.as_mut().map(|s| {
                    s.left = s.left.saturating_sub(1);
                    s.epoch
                })
            }
            None => None,
        };
        let salt: [u8; SALT_LEN] = match cached_epoch {
            Some(epoch) => {
                let mut salt = [0u8; SALT_LEN];
                let (e, rest) = salt.split_at_mut(EPOCH_LEN);
                e.copy_from_slice(&epoch);
                let r: &[u8; SALT_LEN - EPOCH_LEN] =
                    fresh.bytes.first_chunk().ok_or(Error::ApiMisuse("seal salt"))?;
                rest.copy_from_slice(r);
                salt
            }
            // XChaCha, or a busy slot (an epoch for this value alone): all of it fresh.
            None => fresh.bytes,
        };
        let (epoch, r) = salt.split_at(EPOCH_LEN);
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(r);

        let mut header = [0u8; HEADER_LEN];
        write_header(&mut header, VERSION, suite, key_ref, &salt);
        if let Some(dst) = ad.get_mut(..HEADER_LEN) {
            dst.copy_from_slice(&header);
        }
        let ad: &[u8] = ad;
        // INVARIANT: `out` is allocated once at its final size, so the plaintext copied into it is
        // never moved by a reallocation; if sealing fails it still holds plaintext and is wiped.
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(OVERHEAD + plaintext.len()));
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.commitment(&header));
        out.extend_from_slice(plaintext);
        let body =
            out.get_mut(HEADER_LEN + COMMITMENT_LEN..).ok_or_else(|| Error::ApiMisuse("seal buffer"))?;
        let cached = slot.as_ref().and_then(|g| g.as_ref());
        let tag = match (suite, cached) {
            (Suite::Aes256Gcm, Some(s)) => s.key.seal_detached(&nonce, ad, body)?,
            (Suite::Aes256Gcm, None) => {
                let kx = self.xaes.derive_key(epoch);
                AeadKey::new(backend, suite, &kx)?.seal_detached(&nonce, ad, body)?
            }
            (Suite::XChaCha20Poly1305, _) => xchacha_seal(&self.xchacha, &salt, ad, body)?,
        };
        drop(slot);
        out.extend_from_slice(&tag);
        // Sealed: only ciphertext is left, handed out as a plain `Vec`.
        Ok(std::mem::take(&mut *out))
    }

    /// Opens a v2 body in place; the commitment was checked before.
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
                let (epoch, r) = salt.split_at(EPOCH_LEN);
                let mut nx = [0u8; 12];
                nx.copy_from_slice(r);
                // The epoch is public (it is in the header) and, after the commitment check,
                // authentic: only a holder of this key can make the cache hold a given epoch.
                let idx = epoch.first().map_or(0, |b| usize::from(*b) % CACHE_SLOTS);
                if let Some(mut guard) = self.open_slots.get(idx).and_then(|m| m.try_lock().ok()) {
                    if guard.as_ref().is_none_or(|s| s.epoch.as_slice() != epoch) {
                        let kx = self.xaes.derive_key(epoch);
                        let mut e = [0u8; EPOCH_LEN];
                        e.copy_from_slice(epoch);
                        *guard =
                            Some(Box::new(OpenSlot { epoch: e, key: AeadKey::new(backend, suite, &kx)? }));
                    }
                    if let Some(s) = guard.as_ref() {
                        return s.key.open_detached(&nx, ad, body, tag);
                    }
                }
                let kx = self.xaes.derive_key(epoch);
                AeadKey::new(backend, suite, &kx)?.open_detached(&nx, ad, body, tag)
            }
            Suite::XChaCha20Poly1305 => xchacha_open(&self.xchacha, salt, ad, body, tag),
        }
    }
}

/// The most values one [`Fresh`] draw serves (one `getrandom` of `SALT_LEN` bytes per value).
pub(crate) const FRESH_MAX: usize = 16;

/// Salt bytes drawn from the OS by one sealing call for its own values: one `getrandom` for up to
/// [`FRESH_MAX`] values, `SALT_LEN` bytes for each. INVARIANT: made inside the call that seals
/// those values, after their inputs are fixed, used for them alone and dropped when the call
/// returns; never kept, handed on or reused (there is no buffer of randomness between calls,
/// FORMAT.md §5.2).
pub(crate) struct Fresh {
    bytes: [u8; SALT_LEN * FRESH_MAX],
    n: usize,
    pid: u32,
}

/// One value's part of a [`Fresh`] draw, with the process id read by the same call (a seal slot's
/// epoch is renewed when it differs from the one that drew it: one `getpid` per call, not per
/// value; a `fork` copies only the forking thread, so no call continues in a child).
pub(crate) struct FreshSalt {
    bytes: [u8; SALT_LEN],
    pid: u32,
}

impl Fresh {
    /// Draws the salt bytes of `n` values (at most [`FRESH_MAX`]) in one call to the OS.
    pub(crate) fn draw(n: usize) -> Result<Self> {
        let mut bytes = [0u8; SALT_LEN * FRESH_MAX];
        let part = bytes.get_mut(..SALT_LEN * n).ok_or(Error::ApiMisuse("too many values for one draw"))?;
        random::fill(part)?;
        Ok(Self { bytes, n, pid: random::process_id() })
    }

    /// The bytes of value `i`.
    pub(crate) fn salt(&self, i: usize) -> Result<FreshSalt> {
        if i >= self.n {
            return Err(Error::ApiMisuse("salt index"));
        }
        let bytes = self
            .bytes
            .get(i * SALT_LEN..(i + 1) * SALT_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::ApiMisuse("salt index"))?;
        Ok(FreshSalt { bytes, pid: self.pid })
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
    ///
    /// Version 0 of a domain, subject or root key is refused (`Error::Invalid`): versions start
    /// at 1, and readers refuse a value that names version 0.
    pub fn with_backend(material: KeyMaterial, key_ref: KeyRef, backend: Backend) -> Result<Self> {
        if check_key_version(key_ref.kind, key_ref.version).is_err() {
            return Err(Error::invalid("key version", "versions start at 1"));
        }
        let prk = Box::new(Prk::new(Backend::RustCrypto, &material)?);
        let v2 = Box::new(V2Keys::new(&prk)?);
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
        self.seal_with(suite, context, plaintext, &mut ad, &Fresh::draw(1)?.salt(0)?)
    }

    /// [`Self::seal`] with the salt bytes `fresh` the caller drew for this value ([`Fresh`]), and
    /// `ad` as a scratch buffer for the associated data (its contents are replaced).
    pub(crate) fn seal_with(
        &self,
        suite: Suite,
        context: &Context<'_>,
        plaintext: &[u8],
        ad: &mut Vec<u8>,
        fresh: &FreshSalt,
    ) -> Result<Vec<u8>> {
        ad.clear();
        ad.extend_from_slice(&[0u8; HEADER_LEN]);
        ad.extend_from_slice(crate::ids::CONTEXT_LABEL);
        context.encode_into(ad)?;
        self.seal_inner(suite, ad, plaintext, fresh)
    }

    /// Opens a field value sealed under `context`.
    pub fn open(&self, context: &Context<'_>, sealed: &[u8]) -> Result<Plaintext> {
        let mut ad = Vec::with_capacity(HEADER_LEN + context.encoded_len());
        ad.extend_from_slice(&[0u8; HEADER_LEN]);
        ad.extend_from_slice(crate::ids::CONTEXT_LABEL);
        context.encode_into(&mut ad)?;
        self.open_inner(ad, sealed, "sealed value").map_err(OpenFailure::into_error)
    }

    /// [`Self::open`] in the sealed value's own buffer: `sealed` is decrypted in place and becomes
    /// the plaintext (no copy; wiped when the returned plaintext is dropped, or at once if
    /// opening fails). `ad` is a scratch buffer for the associated data (its contents are
    /// replaced), so a caller opening many values allocates it once.
    pub fn open_vec(&self, context: &Context<'_>, sealed: Vec<u8>, ad: &mut Vec<u8>) -> Result<Plaintext> {
        let mut buf = zeroize::Zeroizing::new(sealed);
        ad.clear();
        ad.extend_from_slice(&[0u8; HEADER_LEN]);
        ad.extend_from_slice(crate::ids::CONTEXT_LABEL);
        context.encode_into(ad)?;
        self.open_buf(ad, &mut buf, "sealed value").map_err(OpenFailure::into_error)?;
        Ok(Plaintext::new(std::mem::take(&mut *buf)))
    }

    /// Seals with caller-supplied associated data (a labelled encoding, see [`crate::ids`]).
    pub(crate) fn seal_ad(&self, suite: Suite, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut full = Vec::with_capacity(HEADER_LEN + ad.len());
        full.extend_from_slice(&[0u8; HEADER_LEN]);
        full.extend_from_slice(ad);
        self.seal_inner(suite, &mut full, plaintext, &Fresh::draw(1)?.salt(0)?)
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
    fn seal_inner(
        &self,
        suite: Suite,
        ad: &mut [u8],
        plaintext: &[u8],
        fresh: &FreshSalt,
    ) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_SEALED_PLAINTEXT {
            return Err(Error::LimitReached("a sealed value holds at most 16 MiB"));
        }
        self.v2.seal(self.backend, suite, self.key_ref, ad, plaintext, fresh)
    }

    fn open_inner(
        &self,
        mut ad: Vec<u8>,
        sealed: &[u8],
        what: &'static str,
    ) -> Result<Plaintext, OpenFailure> {
        let mut buf = zeroize::Zeroizing::new(sealed.to_vec());
        self.open_buf(&mut ad, &mut buf, what)?;
        Ok(Plaintext::new(std::mem::take(&mut *buf)))
    }

    /// Opens the sealed value in `buf` in place. On success `buf` holds the plaintext alone (the
    /// rest of its bytes are in its spare capacity, which `Zeroizing` wipes with it); on failure
    /// it holds whatever decryption left, wiped when the caller drops it. `ad` starts with
    /// `HEADER_LEN` placeholder bytes that are overwritten with the header.
    fn open_buf(
        &self,
        ad: &mut [u8],
        buf: &mut zeroize::Zeroizing<Vec<u8>>,
        what: &'static str,
    ) -> Result<(), OpenFailure> {
        let header = SealedHeader::parse(buf).map_err(OpenFailure::Other)?;
        if header.key != self.key_ref {
            // The header names another key: opening with this one can only fail.
            metrics::decrypt_failed(what, true);
            return Err(OpenFailure::Commitment);
        }
        let short = || OpenFailure::Other(Error::malformed(what, "too short"));
        let mut r = Reader::new(buf, "sealed value");
        let hdr: [u8; HEADER_LEN] = r.array().map_err(OpenFailure::Other)?;
        let commitment: [u8; COMMITMENT_LEN] = r.array().map_err(OpenFailure::Other)?;
        let body_len = r.remaining().checked_sub(TAG_LEN).ok_or_else(short)?;
        let body_start = HEADER_LEN + COMMITMENT_LEN;
        let body_end = body_start + body_len;
        let tag: [u8; TAG_LEN] = buf.get(body_end..).and_then(|t| t.try_into().ok()).ok_or_else(short)?;
        if let Some(dst) = ad.get_mut(..HEADER_LEN) {
            dst.copy_from_slice(&hdr);
        }
        let ad: &[u8] = ad;
        let body = buf.get_mut(body_start..body_end).ok_or_else(short)?;
        let opened = if header.format_version == VERSION_1 {
            let derived = derive_keys(&self.prk, &[SEAL_INFO_LABEL, &hdr]).map_err(OpenFailure::Other)?;
            if !ct_eq(&derived.commitment, &commitment) {
                metrics::decrypt_failed(what, true);
                return Err(OpenFailure::Commitment);
            }
            let aead =
                AeadKey::new(self.backend, header.suite, &derived.aead_key).map_err(OpenFailure::Other)?;
            aead.open_detached(&ZERO_NONCE, ad, body, &tag)
        } else {
            if !ct_eq(&self.v2.commitment(&hdr), &commitment) {
                metrics::decrypt_failed(what, true);
                return Err(OpenFailure::Commitment);
            }
            let salt: &[u8; SALT_LEN] = hdr.last_chunk().ok_or(OpenFailure::Commitment)?;
            self.v2.open(self.backend, header.suite, salt, ad, body, &tag)
        };
        if opened.is_err() {
            metrics::decrypt_failed(what, false);
            return Err(OpenFailure::Tag);
        }
        // The plaintext to the front; the vector keeps its allocation (never reallocated).
        buf.copy_within(body_start..body_end, 0);
        buf.truncate(body_len);
        Ok(())
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
    let v = key.version_number().to_be_bytes();
    fixed.copy_from_slice(&[MAGIC, format, suite.id(), key.kind.id(), v[0], v[1], v[2], v[3]]);
    rest.copy_from_slice(salt);
}

/// What a VM snapshot copies of one sealing thread: its seal slot of a key and its randomness
/// state (tests restore it to play a clone).
#[cfg(test)]
struct CloneState {
    slot: Option<([u8; EPOCH_LEN], u32, u32)>,
    thread: random::ThreadState,
}

#[cfg(test)]
impl SealKey {
    fn snapshot(&self) -> CloneState {
        let slot =
            self.v2.seal_slots[thread_slot()].lock().unwrap().as_ref().map(|s| (s.epoch, s.left, s.pid));
        CloneState { slot, thread: random::snapshot_thread_state() }
    }

    fn restore(&self, c: &CloneState) {
        let mut g = self.v2.seal_slots[thread_slot()].lock().unwrap();
        *g = c.slot.map(|(epoch, left, pid)| {
            let kx = self.v2.xaes.derive_key(&epoch);
            let key = AeadKey::new(self.backend, Suite::Aes256Gcm, &kx).unwrap();
            Box::new(SealSlot { epoch, key, left, pid })
        });
        random::restore_thread_state(&c.thread);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::ids::{DomainName, TenantId};

    fn key(backend: Backend) -> SealKey {
        SealKey::with_backend(
            KeyMaterial::from_bytes([9; 32]),
            KeyRef::new(KeyKind::Domain, KeyVersion::FIRST),
            backend,
        )
        .unwrap()
    }

    fn epoch_of(sealed: &[u8]) -> [u8; EPOCH_LEN] {
        sealed[8..8 + EPOCH_LEN].try_into().unwrap()
    }

    #[test]
    fn an_epoch_seals_at_most_epoch_values_and_every_salt_is_new() {
        let (t, d) = (TenantId::new("acme").unwrap(), DomainName::medical());
        let ctx = Context { tenant: &t, domain: &d, collection: "c", field: "f", record: "r" };
        for backend in Backend::all() {
            let k = key(*backend);
            let fresh = key(*backend); // an empty cache: opens through its own slots
            let mut epochs: Vec<[u8; EPOCH_LEN]> = Vec::new();
            let mut salts = HashSet::new();
            for i in 0..(EPOCH_VALUES as usize + 2) {
                let sealed = k.seal(Suite::Aes256Gcm, &ctx, b"x").unwrap();
                assert!(salts.insert(sealed[8..32].to_vec()), "salt repeated at {i}");
                let e = epoch_of(&sealed);
                if epochs.last() != Some(&e) {
                    epochs.push(e);
                }
                if i % 4096 == 0 {
                    assert_eq!(fresh.open(&ctx, &sealed).unwrap().expose_secret(), b"x");
                }
            }
            // The first EPOCH_VALUES values share one epoch, then a new one starts.
            assert_eq!(epochs.len(), 2, "{backend:?}");
            assert_ne!(epochs[0], epochs[1]);
        }
    }

    #[test]
    fn a_busy_slot_seals_with_a_fresh_epoch_and_opens_everywhere() {
        let (t, d) = (TenantId::new("acme").unwrap(), DomainName::general());
        let ctx = Context { tenant: &t, domain: &d, collection: "c", field: "f", record: "r" };
        let k = key(Backend::preferred());
        let cached = k.seal(Suite::Aes256Gcm, &ctx, b"one").unwrap();
        let slot = k.v2.seal_slots.get(thread_slot()).unwrap();
        let held = slot.lock().unwrap();
        let a = k.seal(Suite::Aes256Gcm, &ctx, b"two").unwrap();
        let b = k.seal(Suite::Aes256Gcm, &ctx, b"three").unwrap();
        drop(held);
        // Uncached values each get their own epoch, not the cached one.
        assert_ne!(epoch_of(&a), epoch_of(&cached));
        assert_ne!(epoch_of(&a), epoch_of(&b));
        // The open cache is busy too: opening falls back to deriving the subkey.
        let other = key(Backend::preferred());
        let guards: Vec<_> = other.v2.open_slots.iter().map(|m| m.lock().unwrap()).collect();
        assert_eq!(other.open(&ctx, &a).unwrap().expose_secret(), b"two");
        drop(guards);
        for (v, pt) in [(&cached, &b"one"[..]), (&a, b"two"), (&b, b"three")] {
            assert_eq!(other.open(&ctx, v).unwrap().expose_secret(), pt);
            assert_eq!(k.open(&ctx, v).unwrap().expose_secret(), pt);
        }
    }

    #[test]
    fn threads_sealing_with_one_key_never_repeat_a_salt() {
        let k = std::sync::Arc::new(key(Backend::preferred()));
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let k = std::sync::Arc::clone(&k);
                std::thread::spawn(move || {
                    let (t, d) = (TenantId::new("acme").unwrap(), DomainName::medical());
                    let rec = format!("r{i}");
                    let ctx = Context { tenant: &t, domain: &d, collection: "c", field: "f", record: &rec };
                    (0..2000)
                        .map(|j| {
                            let v = format!("{i}-{j}");
                            let sealed = k.seal(Suite::Aes256Gcm, &ctx, v.as_bytes()).unwrap();
                            assert_eq!(k.open(&ctx, &sealed).unwrap().expose_secret(), v.as_bytes());
                            sealed[8..32].to_vec()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut salts = HashSet::new();
        for h in handles {
            for s in h.join().unwrap() {
                assert!(salts.insert(s));
            }
        }
        assert_eq!(salts.len(), 24_000);
    }

    fn ctx_parts() -> (TenantId, DomainName) {
        (TenantId::new("acme").unwrap(), DomainName::medical())
    }

    #[test]
    fn two_clones_of_a_sealing_process_never_repeat_a_salt() {
        let (t, d) = ctx_parts();
        let ctx = Context { tenant: &t, domain: &d, collection: "c", field: "f", record: "r" };
        for backend in Backend::all() {
            for suite in [Suite::Aes256Gcm, Suite::XChaCha20Poly1305] {
                let k = key(*backend);
                for _ in 0..10 {
                    k.seal(suite, &ctx, b"x").unwrap();
                }
                // The snapshot: both clones continue from here, with the same pid.
                let snap = k.snapshot();
                let seal_n = |n| -> Vec<Vec<u8>> {
                    (0..n).map(|_| k.seal(suite, &ctx, b"x").unwrap()[8..32].to_vec()).collect()
                };
                let a = seal_n(1000);
                k.restore(&snap);
                let b = seal_n(1000);
                let seen: HashSet<&Vec<u8>> = a.iter().collect();
                assert!(
                    b.iter().all(|s| !seen.contains(s)),
                    "{backend:?} {suite:?}: a clone repeated a salt"
                );
                if suite == Suite::Aes256Gcm {
                    // Both clones seal in the epoch of the snapshot (the c * 2^16 bound), each
                    // value with its own r.
                    assert_eq!(a[0][..EPOCH_LEN], b[0][..EPOCH_LEN]);
                    let rs: HashSet<&[u8]> = a.iter().chain(&b).map(|s| &s[EPOCH_LEN..]).collect();
                    assert_eq!(rs.len(), 2000);
                }
            }
        }
    }

    #[test]
    fn open_vec_opens_in_place_what_open_opens_and_refuses_the_rest() {
        let (t, d) = ctx_parts();
        let ctx = Context { tenant: &t, domain: &d, collection: "c", field: "f", record: "r" };
        let other = Context { record: "r2", ..ctx };
        let mut ad = Vec::new();
        for backend in Backend::all() {
            let k = key(*backend);
            for suite in [Suite::Aes256Gcm, Suite::XChaCha20Poly1305] {
                for pt in [&b""[..], b"x", b"a longer value of several AES blocks, 48 bytes!!"] {
                    let sealed = k.seal(suite, &ctx, pt).unwrap();
                    let opened = k.open_vec(&ctx, sealed.clone(), &mut ad).unwrap();
                    assert_eq!(opened.expose_secret(), pt);
                    assert_eq!(opened, k.open(&ctx, &sealed).unwrap());
                    assert!(k.open_vec(&other, sealed.clone(), &mut ad).is_err());
                    let mut bad = sealed.clone();
                    *bad.last_mut().unwrap() ^= 1;
                    assert!(k.open_vec(&ctx, bad, &mut ad).is_err());
                    assert!(k.open_vec(&ctx, sealed[..OVERHEAD - 1].to_vec(), &mut ad).is_err());
                }
            }
        }
    }

    #[test]
    fn a_forked_child_starts_its_own_epoch() {
        let (t, d) = ctx_parts();
        let ctx = Context { tenant: &t, domain: &d, collection: "c", field: "f", record: "r" };
        let k = key(Backend::preferred());
        let parent = epoch_of(&k.seal(Suite::Aes256Gcm, &ctx, b"x").unwrap());
        assert_eq!(parent, epoch_of(&k.seal(Suite::Aes256Gcm, &ctx, b"x").unwrap()));
        // The child inherits the slot (the parent's epoch, values left) but has another pid.
        random::set_fake_pid(Some(std::process::id().wrapping_add(1)));
        let child = epoch_of(&k.seal(Suite::Aes256Gcm, &ctx, b"x").unwrap());
        let child2 = epoch_of(&k.seal(Suite::Aes256Gcm, &ctx, b"x").unwrap());
        random::set_fake_pid(None);
        assert_ne!(parent, child, "the child sealed in its parent's epoch");
        assert_eq!(child, child2, "the child keeps its own epoch");
    }

    #[test]
    fn moving_a_seal_key_leaves_its_secrets_in_place() {
        let (t, d) = ctx_parts();
        let ctx = Context { tenant: &t, domain: &d, collection: "c", field: "f", record: "r" };
        let k = key(Backend::RustCrypto);
        let sealed = k.seal(Suite::Aes256Gcm, &ctx, b"x").unwrap();
        let material = k.material().expose_secret().as_ptr();
        let commit = k.v2.commit.as_ptr();
        let xaes = std::ptr::from_ref(&k.v2.xaes);
        let mut v = Vec::with_capacity(1);
        v.push(k);
        for _ in 0..20 {
            v.push(key(Backend::RustCrypto));
        }
        let k = v.swap_remove(0);
        assert_eq!(k.material().expose_secret().as_ptr(), material, "key material copied by a move");
        assert_eq!(k.v2.commit.as_ptr(), commit, "commitment state copied by a move");
        assert_eq!(std::ptr::from_ref(&k.v2.xaes), xaes, "XAES key schedule copied by a move");
        assert_eq!(k.open(&ctx, &sealed).unwrap().expose_secret(), b"x");
    }
}
