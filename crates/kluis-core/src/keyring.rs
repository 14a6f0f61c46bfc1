//! The local keyring: root key versions, sealed under a key-encryption key (KEK) derived with
//! Argon2id from a passphrase or from a raw 256-bit key file. This module is the file *format*
//! and the in-memory provider; `kluis-keyring` does the atomic file I/O.
//!
//! File layout (big-endian; docs/FORMAT.md has the byte table):
//!
//! ```text
//! magic "KLUISKR\x01"(8) | format version u16 = 1 | generation u64 | kek kind u8
//! | m_cost u32 | t_cost u32 | p_cost u32 | salt (16) | body length u32     = header, 51 bytes
//! | body: sealed value (key kind keyring-kek, version 0), ad = "kluis/keyring/v1" || header
//! | SHA-256 of everything before it (32)
//! ```
//!
//! The checksum tells a damaged file ([`Error::KeyringCorrupt`]) from a wrong passphrase
//! ([`Error::WrongPassphrase`], detected through the key commitment); a short file is
//! [`Error::KeyringTruncated`].

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

use crate::crypto::{Backend, Suite, sha256};
use crate::error::{Error, Result};
use crate::ids::KeyVersion;
use crate::keys::{BoxFuture, RootKeyProvider, UnwrapRequest, WrappedKey};
use crate::seal::{KeyKind, KeyRef, OpenFailure, SealKey};
use crate::secret::{KEY_LEN, KeyMaterial, Passphrase, ct_eq};
use crate::wire::Reader;

/// File magic.
pub const MAGIC: [u8; 8] = *b"KLUISKR\x01";
/// Current keyring format version.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 8 + 2 + 8 + 1 + 4 + 4 + 4 + 16 + 4;
/// Root key id under which the local keyring wraps keys.
pub const ROOT_KEY_ID: &str = "keyring";
const CHECKSUM_LEN: usize = 32;
const BODY_AD_LABEL: &[u8] = b"kluis/keyring/v1";
const WRAP_AD_LABEL: &[u8] = b"kluis/root-wrap/v1";
const RAW_KEK_INFO: &[u8] = b"kluis/keyring/raw-kek/v1";
/// Largest keyring body accepted (a keyring holds a few root key versions).
const MAX_BODY: usize = 1 << 20;

/// Argon2id parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// OWASP's minimum for Argon2id (m = 19 MiB, t = 2, p = 1). Files with weaker parameters are
    /// refused.
    pub const MINIMUM: Self = Self { m_cost_kib: 19 * 1024, t_cost: 2, p_cost: 1 };
    /// The default for new keyrings: m = 64 MiB, t = 3, p = 1 (RFC 9106's second recommendation
    /// with one lane, as the keyring is opened once at start-up).
    pub const DEFAULT: Self = Self { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 };
    /// Upper bounds (a hostile file must not make us allocate 4 TiB).
    pub const MAXIMUM: Self = Self { m_cost_kib: 4 * 1024 * 1024, t_cost: 64, p_cost: 64 };

    /// Checks the bounds.
    pub fn check(&self) -> Result<()> {
        if self.m_cost_kib < Self::MINIMUM.m_cost_kib || self.t_cost < Self::MINIMUM.t_cost || self.p_cost < 1
        {
            return Err(Error::WeakKdfParams(format!(
                "m={} KiB, t={}, p={}; the minimum is m={} KiB, t={}, p=1",
                self.m_cost_kib,
                self.t_cost,
                self.p_cost,
                Self::MINIMUM.m_cost_kib,
                Self::MINIMUM.t_cost
            )));
        }
        if self.m_cost_kib > Self::MAXIMUM.m_cost_kib
            || self.t_cost > Self::MAXIMUM.t_cost
            || self.p_cost > Self::MAXIMUM.p_cost
        {
            return Err(Error::KeyringCorrupt("key derivation parameters out of range"));
        }
        Ok(())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What unlocks a keyring.
pub enum KeyringSecret {
    /// A passphrase, stretched with Argon2id.
    Passphrase(Passphrase, KdfParams),
    /// A raw 256-bit key (the contents of a key file).
    RawKey(KeyMaterial),
}

impl fmt::Debug for KeyringSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Passphrase(_, p) => f.debug_tuple("Passphrase").field(&"[REDACTED]").field(p).finish(),
            Self::RawKey(_) => f.debug_tuple("RawKey").field(&"[REDACTED]").finish(),
        }
    }
}

impl KeyringSecret {
    fn kind(&self) -> u8 {
        match self {
            Self::Passphrase(..) => 1,
            Self::RawKey(_) => 2,
        }
    }
}

/// A root key version held by the keyring.
struct RootVersion {
    key: SealKey,
    created_unix: i64,
}

/// A decrypted keyring: root key versions, the primary one, and the generation.
pub struct LocalKeyring {
    versions: BTreeMap<KeyVersion, RootVersion>,
    primary: KeyVersion,
    generation: u64,
    backend: Backend,
}

impl fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyring")
            .field("versions", &self.versions.keys().collect::<Vec<_>>())
            .field("primary", &self.primary)
            .field("generation", &self.generation)
            .finish()
    }
}

/// Public facts of one root key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootVersionInfo {
    /// Version number.
    pub version: KeyVersion,
    /// Whether new wraps use it.
    pub primary: bool,
    /// Creation time (seconds since the Unix epoch).
    pub created_unix: i64,
}

fn root_ref(version: KeyVersion) -> KeyRef {
    KeyRef::new(KeyKind::Root, version)
}

impl LocalKeyring {
    /// A new keyring with one fresh root key version (1). Its generation is 0 until it is first
    /// written (the first file has generation 1).
    pub fn generate(created_unix: i64) -> Result<Self> {
        let first = KeyVersion::FIRST;
        let mut k =
            Self { versions: BTreeMap::new(), primary: first, generation: 0, backend: Backend::preferred() };
        k.versions.insert(
            first,
            RootVersion { key: SealKey::new(KeyMaterial::generate()?, root_ref(first))?, created_unix },
        );
        Ok(k)
    }

    /// The generation: increases with every change written to disk.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The primary version.
    pub fn primary(&self) -> KeyVersion {
        self.primary
    }

    /// All versions.
    pub fn versions(&self) -> Vec<RootVersionInfo> {
        self.versions
            .iter()
            .map(|(v, r)| RootVersionInfo {
                version: *v,
                primary: *v == self.primary,
                created_unix: r.created_unix,
            })
            .collect()
    }

    /// Adds a new root key version and makes it primary. Returns the new version. The caller
    /// persists the keyring (which bumps the generation) and then rewraps the domain keys.
    pub fn rotate(&mut self, created_unix: i64) -> Result<KeyVersion> {
        // No version yet (never the case of a keyring made here or read from a file): version 1.
        let next = match self.versions.keys().max() {
            Some(v) => v.next().map_err(|_| Error::LimitReached("root key versions exhausted"))?,
            None => KeyVersion::FIRST,
        };
        self.versions.insert(
            next,
            RootVersion { key: SealKey::new(KeyMaterial::generate()?, root_ref(next))?, created_unix },
        );
        self.primary = next;
        Ok(next)
    }

    /// Removes a non-primary version (after every domain key was rewrapped off it).
    pub fn remove_version(&mut self, version: KeyVersion) -> Result<()> {
        if version == self.primary {
            return Err(Error::invalid("root key version", "the primary version cannot be removed"));
        }
        self.versions
            .remove(&version)
            .map(|_| ())
            .ok_or_else(|| Error::UnknownKey { key: format!("root v{version}") })
    }

    /// Serialises and seals the keyring under `secret`, with `generation + 1` (the generation
    /// increases with every write; call [`LocalKeyring::set_generation`] after the write succeeds).
    pub fn to_file_bytes(&self, secret: &KeyringSecret, suite: Suite) -> Result<(Vec<u8>, u64)> {
        let generation =
            self.generation.checked_add(1).ok_or_else(|| Error::LimitReached("keyring generation"))?;
        let salt: [u8; 16] = crate::random::array()?;
        let params = match secret {
            KeyringSecret::Passphrase(_, p) => {
                p.check()?;
                *p
            }
            KeyringSecret::RawKey(_) => KdfParams { m_cost_kib: 0, t_cost: 0, p_cost: 0 },
        };
        let kek = derive_kek(secret, &params, &salt)?;

        let mut payload = Zeroizing::new(Vec::with_capacity(8 + self.versions.len() * 44));
        payload.extend_from_slice(&self.primary.to_be_bytes());
        let count =
            u32::try_from(self.versions.len()).map_err(|_| Error::LimitReached("root key versions"))?;
        payload.extend_from_slice(&count.to_be_bytes());
        for (v, r) in &self.versions {
            payload.extend_from_slice(&v.to_be_bytes());
            payload.extend_from_slice(&r.created_unix.to_be_bytes());
            payload.extend_from_slice(r.key.material().expose_secret());
        }

        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        header.extend_from_slice(&generation.to_be_bytes());
        header.push(secret.kind());
        header.extend_from_slice(&params.m_cost_kib.to_be_bytes());
        header.extend_from_slice(&params.t_cost.to_be_bytes());
        header.extend_from_slice(&params.p_cost.to_be_bytes());
        header.extend_from_slice(&salt);
        let body_len = payload.len() + crate::seal::OVERHEAD;
        if body_len > MAX_BODY {
            return Err(Error::LimitReached("a keyring holds at most about 20,000 root key versions"));
        }
        let body_len = u32::try_from(body_len).map_err(|_| Error::LimitReached("keyring size"))?;
        header.extend_from_slice(&body_len.to_be_bytes());

        let mut ad = BODY_AD_LABEL.to_vec();
        ad.extend_from_slice(&header);
        let body = kek.seal_ad(suite, &ad, &payload)?;
        let mut out = header;
        out.extend_from_slice(&body);
        let sum = sha256(&[&out]);
        out.extend_from_slice(&sum);
        Ok((out, generation))
    }

    /// Records the generation after a successful write.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Parses and opens a keyring file.
    pub fn from_file_bytes(bytes: &[u8], secret: &KeyringSecret) -> Result<Self> {
        let parsed = ParsedKeyring::parse(bytes)?;
        if parsed.kek_kind != secret.kind() {
            return Err(match secret {
                KeyringSecret::Passphrase(..) => Error::invalid(
                    "keyring secret",
                    "this keyring is opened with a key file, not a passphrase",
                ),
                KeyringSecret::RawKey(_) => Error::invalid(
                    "keyring secret",
                    "this keyring is opened with a passphrase, not a key file",
                ),
            });
        }
        let kek = derive_kek(secret, &parsed.params, &parsed.salt)?;
        let mut ad = BODY_AD_LABEL.to_vec();
        ad.extend_from_slice(parsed.header);
        let payload = match kek.open_ad(&ad, parsed.body, "keyring") {
            Ok(p) => p,
            Err(OpenFailure::Commitment) => return Err(Error::WrongPassphrase),
            Err(OpenFailure::Tag) => return Err(Error::KeyringCorrupt("authentication failed")),
            Err(OpenFailure::Other(e)) => return Err(e),
        };
        let mut r = Reader::new(payload.expose_secret(), "keyring payload");
        let primary = r.u32()?;
        let count = r.u32()?;
        let mut versions = BTreeMap::new();
        for _ in 0..count {
            let v = r.u32()?;
            let created_unix = i64::from_be_bytes(r.array()?);
            let key = KeyMaterial::from_bytes(r.array::<KEY_LEN>()?);
            // Root key versions start at 1 (docs/FORMAT.md §8.1).
            let v = KeyVersion::new(v).map_err(|_| Error::KeyringCorrupt("root key version 0"))?;
            if versions
                .insert(v, RootVersion { key: SealKey::new(key, root_ref(v))?, created_unix })
                .is_some()
            {
                return Err(Error::KeyringCorrupt("duplicate root key version"));
            }
        }
        r.finish()?;
        let primary = KeyVersion::new(primary)
            .ok()
            .filter(|p| versions.contains_key(p))
            .ok_or(Error::KeyringCorrupt("primary root key version missing"))?;
        Ok(Self { versions, primary, generation: parsed.generation, backend: Backend::preferred() })
    }

    fn wrap_sync(&self, aad: &[u8], key: &KeyMaterial) -> Result<WrappedKey> {
        let rv = self
            .versions
            .get(&self.primary)
            .ok_or_else(|| Error::KeyringCorrupt("primary root key version missing"))?;
        let mut ad = WRAP_AD_LABEL.to_vec();
        ad.extend_from_slice(aad);
        let ct = rv.key.seal_ad(Suite::default(), &ad, key.expose_secret())?;
        Ok(WrappedKey { root_key_id: ROOT_KEY_ID.to_owned(), root_version: self.primary, ciphertext: ct })
    }

    fn unwrap_sync(&self, aad: &[u8], w: &WrappedKey) -> Result<KeyMaterial> {
        if w.root_key_id != ROOT_KEY_ID {
            return Err(Error::UnknownKey { key: format!("root key {:?}", w.root_key_id) });
        }
        let rv = self
            .versions
            .get(&w.root_version)
            .ok_or_else(|| Error::UnknownKey { key: format!("root v{}", w.root_version) })?;
        let mut ad = WRAP_AD_LABEL.to_vec();
        ad.extend_from_slice(aad);
        let pt = rv.key.open_ad(&ad, &w.ciphertext, "wrapped key").map_err(OpenFailure::into_error)?;
        KeyMaterial::from_slice(pt.expose_secret())
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl RootKeyProvider for LocalKeyring {
    fn root_key_id(&self) -> &str {
        ROOT_KEY_ID
    }

    fn primary_version(&self) -> BoxFuture<'_, Result<KeyVersion>> {
        let v = self.primary;
        Box::pin(async move { Ok(v) })
    }

    fn wrap<'a>(&'a self, aad: &'a [u8], key: &'a KeyMaterial) -> BoxFuture<'a, Result<WrappedKey>> {
        Box::pin(async move { self.wrap_sync(aad, key) })
    }

    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> BoxFuture<'a, Result<Vec<Result<KeyMaterial>>>> {
        Box::pin(async move { Ok(items.iter().map(|i| self.unwrap_sync(i.aad, i.wrapped)).collect()) })
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation)
    }

    fn held_versions(&self) -> Option<Vec<KeyVersion>> {
        Some(self.versions.keys().copied().collect())
    }
}

/// The public part of a keyring file (readable without the secret).
#[derive(Debug, Clone)]
pub struct KeyringFileInfo {
    /// Format version.
    pub format_version: u16,
    /// Generation.
    pub generation: u64,
    /// Unlocked by a passphrase (`true`) or a key file (`false`).
    pub passphrase: bool,
    /// Argon2id parameters (zero for key files).
    pub params: KdfParams,
}

struct ParsedKeyring<'a> {
    header: &'a [u8],
    generation: u64,
    kek_kind: u8,
    params: KdfParams,
    salt: [u8; 16],
    body: &'a [u8],
}

impl<'a> ParsedKeyring<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() < MAGIC.len() {
            return Err(if MAGIC.starts_with(bytes) {
                Error::KeyringTruncated
            } else {
                Error::KeyringCorrupt("not a keyring file")
            });
        }
        if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
            return Err(Error::KeyringCorrupt("not a keyring file"));
        }
        if bytes.len() < HEADER_LEN {
            return Err(Error::KeyringTruncated);
        }
        let mut r = Reader::new(bytes, "keyring header");
        r.take(MAGIC.len())?;
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion { what: "keyring", version });
        }
        let generation = r.u64()?;
        let kek_kind = r.u8()?;
        let params = KdfParams { m_cost_kib: r.u32()?, t_cost: r.u32()?, p_cost: r.u32()? };
        let salt: [u8; 16] = r.array()?;
        let body_len = usize::try_from(r.u32()?).map_err(|_| Error::KeyringCorrupt("body length"))?;
        if body_len > MAX_BODY {
            return Err(Error::KeyringCorrupt("body length out of range"));
        }
        let header = bytes.get(..HEADER_LEN).ok_or_else(|| Error::KeyringTruncated)?;
        let total = HEADER_LEN + body_len + CHECKSUM_LEN;
        if bytes.len() < total {
            return Err(Error::KeyringTruncated);
        }
        if bytes.len() > total {
            return Err(Error::KeyringCorrupt("trailing bytes after the checksum"));
        }
        let (signed, sum) = bytes.split_at(HEADER_LEN + body_len);
        if !ct_eq(&sha256(&[signed]), sum) {
            return Err(Error::KeyringCorrupt("checksum mismatch"));
        }
        match kek_kind {
            1 => params.check()?,
            2 => {
                if params != (KdfParams { m_cost_kib: 0, t_cost: 0, p_cost: 0 }) {
                    return Err(Error::KeyringCorrupt("key-file keyring with key derivation parameters"));
                }
            }
            _ => return Err(Error::KeyringCorrupt("unknown key-encryption kind")),
        }
        let body = signed.get(HEADER_LEN..).ok_or_else(|| Error::KeyringTruncated)?;
        Ok(Self { header, generation, kek_kind, params, salt, body })
    }
}

/// Reads the public header of a keyring file without opening it.
pub fn inspect(bytes: &[u8]) -> Result<KeyringFileInfo> {
    let p = ParsedKeyring::parse(bytes)?;
    Ok(KeyringFileInfo {
        format_version: FORMAT_VERSION,
        generation: p.generation,
        passphrase: p.kek_kind == 1,
        params: p.params,
    })
}

fn derive_kek(secret: &KeyringSecret, params: &KdfParams, salt: &[u8; 16]) -> Result<SealKey> {
    let kek_ref = KeyRef { kind: KeyKind::KeyringKek, version: None };
    match secret {
        KeyringSecret::Passphrase(pass, _) => {
            params.check()?;
            let p = argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(KEY_LEN))
                .map_err(|_| Error::WeakKdfParams("rejected by argon2".to_owned()))?;
            let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
            let mut out = Zeroizing::new([0u8; KEY_LEN]);
            a.hash_password_into(pass.expose_secret().as_bytes(), salt, out.as_mut_slice())
                .map_err(|_| Error::invalid("passphrase", "argon2id failed"))?;
            SealKey::new(KeyMaterial::from_bytes(*out), kek_ref)
        }
        KeyringSecret::RawKey(k) => {
            // HKDF-Extract(salt, raw key) then Expand: the raw key is uniform but the salt makes
            // every file's KEK distinct.
            let h = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), k.expose_secret());
            let mut out = Zeroizing::new([0u8; KEY_LEN]);
            h.expand(RAW_KEK_INFO, out.as_mut_slice()).map_err(|_| Error::ApiMisuse("hkdf length"))?;
            SealKey::new(KeyMaterial::from_bytes(*out), kek_ref)
        }
    }
}

/// Parses a key file: exactly 32 raw bytes, or 64 hex digits with optional ASCII white space
/// (space, tab, LF, FF, CR) before and after them; no other white space.
pub fn parse_key_file(bytes: &[u8]) -> Result<KeyMaterial> {
    if bytes.len() == KEY_LEN {
        return KeyMaterial::from_slice(bytes);
    }
    let text = core::str::from_utf8(bytes)
        .map_err(|_| Error::invalid("key file", "must hold 32 raw bytes or 64 hex digits"))?;
    // ASCII only: `str::trim` would also take Unicode spaces (NBSP, U+2003, ...).
    let t = text.trim_ascii();
    if t.len() != 2 * KEY_LEN || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid("key file", "must hold 32 raw bytes or 64 hex digits"));
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    for (i, slot) in out.iter_mut().enumerate() {
        let pair = t.get(2 * i..2 * i + 2).ok_or_else(|| Error::invalid("key file", "bad hex"))?;
        *slot = u8::from_str_radix(pair, 16).map_err(|_| Error::invalid("key file", "bad hex"))?;
    }
    Ok(KeyMaterial::from_bytes(*out))
}

#[cfg(test)]
#[path = "keyring_format_tests.rs"]
mod format_tests;
