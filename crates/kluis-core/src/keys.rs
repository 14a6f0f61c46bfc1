//! Key hierarchy: root key provider → domain keys (per tenant, domain, version) → subject keys.
//!
//! ```text
//! root key (keyring file or KMS; never in the database)
//!   └─ wraps ─ domain key (tenant, domain, version)   state: active | decrypt-only | destroyed
//!                 ├─ seals ─ field values of that domain
//!                 ├─ seals ─ subject key (tenant, domain, subject, version)  → destroy = crypto-shred
//!                 │             └─ seals ─ field values and document keys of that subject
//!                 └─ derives ─ blind index keys (HKDF, per tenant, domain, collection, field)
//! ```
//!
//! This module holds the records that a store persists ([`DomainKeyRecord`], [`SubjectKeyRecord`]),
//! the provider trait ([`RootKeyProvider`]), the unwrap cache ([`CachingProvider`]), unwrapped key
//! sets ([`DomainKeySet`]), and the rollback check ([`check_generation`]). It performs no I/O.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::crypto::{Backend, Suite};
use crate::error::{Error, Result};
use crate::ids::{Context, DomainName, KeyVersion, TenantId, labelled_ad};
use crate::seal::{FRESH_MAX, Fresh, KeyKind, KeyRef, SealKey, SealedHeader};
use crate::secret::{KeyMaterial, Plaintext};
use crate::wire::{Reader, put_bytes16, put_bytes32};

/// A boxed, sendable future (the provider trait is object-safe so a provider can be chosen at run
/// time from a URL).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A key wrapped by a root key provider.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Which provider and root key (e.g. `keyring`, or a KMS key URL).
    pub root_key_id: String,
    /// Root key version that wrapped it.
    pub root_version: KeyVersion,
    /// Provider-specific ciphertext.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Wrapped bytes are not secret, but there is no reason to print them.
        f.debug_struct("WrappedKey")
            .field("root_key_id", &self.root_key_id)
            .field("root_version", &self.root_version)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

const WRAPPED_KEY_VERSION: u8 = 1;

impl WrappedKey {
    /// Serialises: `0x01 | u16-len root key id | u32 root version | u32-len ciphertext`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(11 + self.root_key_id.len() + self.ciphertext.len());
        out.push(WRAPPED_KEY_VERSION);
        put_bytes16(&mut out, "root key id", self.root_key_id.as_bytes())?;
        out.extend_from_slice(&self.root_version.to_be_bytes());
        put_bytes32(&mut out, "wrapped key", &self.ciphertext)?;
        Ok(out)
    }

    /// Parses [`WrappedKey::to_bytes`] output. Root version 0 is refused
    /// (`Malformed { "wrapped key", "root key version 0" }`).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b, "wrapped key");
        let v = r.u8()?;
        if v != WRAPPED_KEY_VERSION {
            return Err(Error::UnsupportedVersion { what: "wrapped key", version: u16::from(v) });
        }
        let root_key_id = r.str16()?.to_owned();
        let root_version =
            KeyVersion::new(r.u32()?).map_err(|_| Error::malformed("wrapped key", "root key version 0"))?;
        let ciphertext = r.bytes32()?.to_vec();
        r.finish()?;
        Ok(Self { root_key_id, root_version, ciphertext })
    }
}

/// One item of a batched unwrap.
#[derive(Debug, Clone, Copy)]
pub struct UnwrapRequest<'a> {
    /// Associated data the key was wrapped with (see [`domain_key_ad`]).
    pub aad: &'a [u8],
    /// The wrapped key.
    pub wrapped: &'a WrappedKey,
}

/// A root key provider: wraps and unwraps key material under a named, versioned root key.
///
/// Implementations: the local keyring ([`crate::keyring::LocalKeyring`]); cloud KMS providers
/// (Azure Key Vault, AWS KMS) in their own crates. All methods are async so a network provider
/// fits; `unwrap_batch` lets a provider unwrap many keys in few round trips at start-up; wrap it in
/// [`CachingProvider`] so the hot path makes no provider call.
///
/// A provider must bind `aad` to the wrapped key: unwrapping with other associated data fails.
pub trait RootKeyProvider: Send + Sync + fmt::Debug {
    /// Stable id of the root key (stored with every wrapped key), e.g. `keyring` or a key URL.
    fn root_key_id(&self) -> &str;

    /// The root key version used for new wraps.
    fn primary_version(&self) -> BoxFuture<'_, Result<KeyVersion>>;

    /// Wraps `key` under the primary root key version, binding `aad`.
    fn wrap<'a>(&'a self, aad: &'a [u8], key: &'a KeyMaterial) -> BoxFuture<'a, Result<WrappedKey>>;

    /// Unwraps several keys. The outer error is a provider failure; inner errors are per item.
    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> BoxFuture<'a, Result<Vec<Result<KeyMaterial>>>>;

    /// The provider's generation counter, if it keeps one (the local keyring does), for rollback
    /// detection with [`check_generation`].
    fn generation(&self) -> Option<u64> {
        None
    }

    /// The root key versions this provider can unwrap with, as this process holds them: the
    /// local keyring's versions. `None` for a provider that reaches every version of its key
    /// when asked (a KMS). Instances report it so that a new root key version is activated only
    /// once every running instance holds it (`kluis-store`'s instance reports).
    fn held_versions(&self) -> Option<Vec<KeyVersion>> {
        None
    }

    /// Is `wrapped` in an older envelope that [`RootKeyProvider::unwrap_batch`] refuses because
    /// it can be forged (Azure Key Vault RSA wraps of Kluis 0.1, without a signature)? Such a key
    /// opens only through [`RootKeyProvider::unwrap_legacy`], in an explicit adoption run by an
    /// operator, which rewraps it at once.
    fn is_legacy(&self, _wrapped: &WrappedKey) -> bool {
        false
    }

    /// Unwraps a key in a legacy envelope ([`RootKeyProvider::is_legacy`]), trusting that the
    /// row was not forged. Only for `kluis keys adopt`; providers without a legacy form unwrap
    /// as usual.
    fn unwrap_legacy<'a>(
        &'a self,
        aad: &'a [u8],
        wrapped: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<KeyMaterial>> {
        Box::pin(async move {
            let items = [UnwrapRequest { aad, wrapped }];
            let mut out = self.unwrap_batch(&items).await?;
            out.pop().ok_or(Error::ApiMisuse("provider returned no result"))?
        })
    }
}

/// Unwraps one key through a provider.
pub async fn unwrap_one(
    provider: &dyn RootKeyProvider,
    aad: &[u8],
    wrapped: &WrappedKey,
) -> Result<KeyMaterial> {
    let items = [UnwrapRequest { aad, wrapped }];
    let mut out = provider.unwrap_batch(&items).await?;
    out.pop().ok_or_else(|| Error::ApiMisuse("provider returned no result"))?
}

/// State of a key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// Used for new writes. Exactly one version per tenant and domain is active.
    Active,
    /// May decrypt existing data; never used for new writes.
    DecryptOnly,
    /// Destroyed: the wrapped key is gone; data under it can no longer be read.
    Destroyed,
}

impl KeyState {
    /// Stable name for storage.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::DecryptOnly => "decrypt-only",
            Self::Destroyed => "destroyed",
        }
    }

    /// Parses [`KeyState::as_str`].
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(Self::Active),
            "decrypt-only" => Ok(Self::DecryptOnly),
            "destroyed" => Ok(Self::Destroyed),
            _ => Err(Error::invalid("key state", format!("unknown state {s:?}"))),
        }
    }
}

/// Associated data binding a domain key's wrap to its tenant, domain and version.
pub fn domain_key_ad(tenant: &TenantId, domain: &DomainName, version: KeyVersion) -> Result<Vec<u8>> {
    labelled_ad(
        b"kluis/domain-key/v1",
        &[tenant.as_str().as_bytes(), domain.as_str().as_bytes(), &version.to_be_bytes()],
    )
}

/// Associated data binding a subject key to its tenant, domain, subject and version.
pub fn subject_key_ad(
    tenant: &TenantId,
    domain: &DomainName,
    subject: &str,
    version: KeyVersion,
) -> Result<Vec<u8>> {
    labelled_ad(
        b"kluis/subject-key/v1",
        &[tenant.as_str().as_bytes(), domain.as_str().as_bytes(), subject.as_bytes(), &version.to_be_bytes()],
    )
}

/// A domain key as persisted by a store: wrapped by the root key, never in clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainKeyRecord {
    /// Tenant.
    pub tenant: TenantId,
    /// Domain.
    pub domain: DomainName,
    /// Version, starting at 1.
    pub version: KeyVersion,
    /// State.
    pub state: KeyState,
    /// The wrapped key; `None` once destroyed.
    pub wrapped: Option<WrappedKey>,
    /// The state tag (docs/FORMAT.md §7.5): HMAC-SHA256 under a key derived from this version's
    /// own key material, over this row's version and the version and state of every row of its
    /// tenant and domain. `None` once destroyed (the live rows' tags cover a destroyed row).
    pub tag: Option<[u8; 32]>,
}

impl DomainKeyRecord {
    fn label(&self) -> String {
        format!("{}/{} v{}", self.tenant, self.domain, self.version)
    }
}

const KEY_SET_LABEL: &[u8] = b"kluis/domain-key-set/v1";
const KEY_SET_TAG_INFO: &[u8] = b"kluis/domain-key-set-tag/v1";

const fn state_byte(s: KeyState) -> u8 {
    match s {
        KeyState::Active => 1,
        KeyState::DecryptOnly => 2,
        KeyState::Destroyed => 3,
    }
}

/// The set a state tag covers: `label || u16-len tenant || u16-len domain || u32 count ||
/// (u32 version || u8 state)*` in version order (docs/FORMAT.md §7.5).
fn key_set_manifest(records: &[DomainKeyRecord]) -> Result<Vec<u8>> {
    let first = records.first().ok_or_else(|| Error::invalid("domain key set", "no versions"))?;
    let mut versions: Vec<(KeyVersion, KeyState)> = records.iter().map(|r| (r.version, r.state)).collect();
    versions.sort_unstable_by_key(|(v, _)| *v);
    let count = u32::try_from(versions.len()).map_err(|_| Error::LimitReached("domain key versions"))?;
    let mut out =
        labelled_ad(KEY_SET_LABEL, &[first.tenant.as_str().as_bytes(), first.domain.as_str().as_bytes()])?;
    out.extend_from_slice(&count.to_be_bytes());
    for (v, s) in versions {
        out.extend_from_slice(&v.to_be_bytes());
        out.push(state_byte(s));
    }
    Ok(out)
}

/// The state tag of `version` over `manifest`, under a key derived from that version's material.
fn key_set_tag(
    material: &KeyMaterial,
    backend: Backend,
    manifest: &[u8],
    version: KeyVersion,
) -> Result<[u8; 32]> {
    let prk = crate::crypto::Prk::new(backend, material)?;
    let mut k = zeroize::Zeroizing::new([0u8; 32]);
    prk.expand(&[KEY_SET_TAG_INFO], k.as_mut_slice())?;
    Ok(crate::crypto::hmac_sha256_with(backend, k.as_slice(), &[manifest, &version.to_be_bytes()]))
}

/// Sets the tag of every live record of one (tenant, domain) over the set `records` describes;
/// destroyed records get none. `key_of` gives the material of a live version.
fn tag_records_with<'k>(
    records: &mut [DomainKeyRecord],
    backend: Backend,
    key_of: impl Fn(KeyVersion) -> Option<&'k KeyMaterial>,
) -> Result<()> {
    validate_versions(records)?;
    let manifest = key_set_manifest(records)?;
    for r in records.iter_mut() {
        r.tag = match r.state {
            KeyState::Destroyed => None,
            KeyState::Active | KeyState::DecryptOnly => {
                let k = key_of(r.version).ok_or_else(|| {
                    Error::ApiMisuse("tagging a domain key version whose key is not at hand")
                })?;
                Some(key_set_tag(k, backend, &manifest, r.version)?)
            }
        };
    }
    Ok(())
}

/// Creates version `version` of a domain key: fresh random key material, wrapped by the provider's
/// primary root key with [`domain_key_ad`]. Returns the record to persist (state active).
pub async fn new_domain_key(
    provider: &dyn RootKeyProvider,
    tenant: &TenantId,
    domain: &DomainName,
    version: KeyVersion,
) -> Result<(DomainKeyRecord, KeyMaterial)> {
    let key = KeyMaterial::generate()?;
    let aad = domain_key_ad(tenant, domain, version)?;
    let wrapped = provider.wrap(&aad, &key).await?;
    let mut rec = DomainKeyRecord {
        tenant: tenant.clone(),
        domain: domain.clone(),
        version,
        state: KeyState::Active,
        wrapped: Some(wrapped),
        tag: None,
    };
    // Tagged as the only version of its set (what version 1 is); a rotation retags every row.
    tag_records_with(std::slice::from_mut(&mut rec), Backend::preferred(), |_| Some(&key))?;
    Ok((rec, key))
}

/// Checks the invariants of all versions of one (tenant, domain): same tenant and domain, unique
/// versions, at most one active, destroyed versions hold no wrapped key, live ones do. Returns the
/// active version, if any.
pub fn validate_versions(records: &[DomainKeyRecord]) -> Result<Option<KeyVersion>> {
    let mut active = None;
    let mut seen = std::collections::BTreeSet::new();
    let first = records.first();
    for r in records {
        if let Some(f) = first
            && (r.tenant != f.tenant || r.domain != f.domain)
        {
            return Err(Error::invalid("domain key set", "records of several tenants or domains"));
        }
        if !seen.insert(r.version) {
            return Err(Error::invalid("domain key set", format!("version {} appears twice", r.version)));
        }
        match (r.state, &r.wrapped) {
            (KeyState::Destroyed, Some(_)) => {
                return Err(Error::invalid(
                    "domain key set",
                    format!("{} is destroyed but still wrapped", r.label()),
                ));
            }
            (KeyState::Active | KeyState::DecryptOnly, None) => {
                return Err(Error::invalid("domain key set", format!("{} has no wrapped key", r.label())));
            }
            _ => {}
        }
        if r.state == KeyState::Active {
            if active.is_some() {
                return Err(Error::invalid("domain key set", "more than one active version"));
            }
            // INVARIANT: exactly one active version per tenant and domain (new writes use it).
            active = Some(r.version);
        }
    }
    Ok(active)
}

/// Rotation: creates the next version as active and turns the current active one decrypt-only.
/// `set` must be the unwrapped (and so verified) set of `records`. `records` is updated in
/// place, every live record retagged over the new set; the new record is also returned (with its
/// key). A store persists all changed records in one transaction.
pub async fn rotate_domain_key(
    provider: &dyn RootKeyProvider,
    set: &DomainKeySet,
    records: &mut Vec<DomainKeyRecord>,
) -> Result<(DomainKeyRecord, KeyMaterial)> {
    validate_versions(records)?;
    set.check_matches(records)?;
    // `records` are the versions of `set` (checked above); none at all would make version 1.
    let next = match records.iter().map(|r| r.version).max() {
        Some(v) => v.next().map_err(|_| Error::LimitReached("domain key versions exhausted"))?,
        None => KeyVersion::FIRST,
    };
    let (rec, key) = new_domain_key(provider, &set.tenant, &set.domain, next).await?;
    for r in records.iter_mut() {
        if r.state == KeyState::Active {
            r.state = KeyState::DecryptOnly;
        }
    }
    records.push(rec);
    set.tag_records(records, Some((next, &key)))?;
    let rec = records.last().cloned().ok_or_else(|| Error::ApiMisuse("rotation lost its record"))?;
    Ok((rec, key))
}

/// Destroys a version: drops the wrapped key and marks it destroyed. Refuses the active version
/// (rotate first). Retag the set afterwards ([`DomainKeySet::tag_records`]).
pub fn destroy_domain_key(record: &mut DomainKeyRecord) -> Result<()> {
    if record.state == KeyState::Active {
        return Err(Error::invalid("key state", "the active version cannot be destroyed; rotate first"));
    }
    record.state = KeyState::Destroyed;
    record.wrapped = None;
    record.tag = None;
    Ok(())
}

/// Rewraps a domain key under the provider's current primary root key version (root rotation).
/// Only the wrap changes; data sealed under the domain key is untouched.
pub async fn rewrap_domain_key(
    from: &dyn RootKeyProvider,
    to: &dyn RootKeyProvider,
    record: &DomainKeyRecord,
) -> Result<DomainKeyRecord> {
    let Some(wrapped) = &record.wrapped else {
        return Ok(record.clone());
    };
    let aad = domain_key_ad(&record.tenant, &record.domain, record.version)?;
    let key = unwrap_one(from, &aad, wrapped).await?;
    let rewrapped = to.wrap(&aad, &key).await?;
    let mut out = record.clone();
    out.wrapped = Some(rewrapped);
    Ok(out)
}

/// The unwrapped keys of one (tenant, domain), ready to seal and open.
pub struct DomainKeySet {
    tenant: TenantId,
    domain: DomainName,
    suite: Suite,
    keys: BTreeMap<KeyVersion, (KeyState, Option<SealKey>)>,
    active: Option<KeyVersion>,
}

impl fmt::Debug for DomainKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<(KeyVersion, KeyState)> = self.keys.iter().map(|(v, (s, _))| (*v, *s)).collect();
        f.debug_struct("DomainKeySet")
            .field("tenant", &self.tenant)
            .field("domain", &self.domain)
            .field("suite", &self.suite)
            .field("versions", &versions)
            .field("active", &self.active)
            .finish()
    }
}

impl DomainKeySet {
    /// Unwraps every live version in one batched provider call.
    pub async fn unwrap(provider: &dyn RootKeyProvider, records: &[DomainKeyRecord]) -> Result<Self> {
        Self::unwrap_with(provider, records, Suite::default(), Backend::preferred()).await
    }

    /// As [`DomainKeySet::unwrap`], choosing suite (for new writes) and backend.
    ///
    /// Every live record's state tag is verified against the set the records describe (its
    /// versions and their states): a state changed, a version added, removed or revived outside
    /// Kluis gives [`Error::KeyStateTampered`] naming the row.
    pub async fn unwrap_with(
        provider: &dyn RootKeyProvider,
        records: &[DomainKeyRecord],
        suite: Suite,
        backend: Backend,
    ) -> Result<Self> {
        let set = Self::unwrap_unverified(provider, records, suite, backend).await?;
        set.verify_tags(records)?;
        Ok(set)
    }

    /// Adopts a set written before state tags existed (every record untagged): unwraps it,
    /// trusting the states as they are now, and tags `records` in place for persisting. Refuses a
    /// set of which any record is tagged (a partly untagged set was altered). For an explicit,
    /// operator-run upgrade only (`kluis keys adopt`).
    pub async fn adopt_untagged(
        provider: &dyn RootKeyProvider,
        records: &mut [DomainKeyRecord],
    ) -> Result<Self> {
        if let Some(r) = records.iter().find(|r| r.tag.is_some()) {
            return Err(Error::KeyStateTampered {
                key: r.label(),
                reason: "the set is partly tagged: only a set without any state tag can be adopted",
            });
        }
        let set = Self::unwrap_unverified(provider, records, Suite::default(), Backend::preferred()).await?;
        set.tag_records(records, None)?;
        Ok(set)
    }

    /// Verifies every live record's state tag against the set `records` describes.
    fn verify_tags(&self, records: &[DomainKeyRecord]) -> Result<()> {
        let manifest = key_set_manifest(records)?;
        for r in records {
            match (r.state, &r.tag) {
                (KeyState::Destroyed, None) => {}
                (KeyState::Destroyed, Some(_)) => {
                    return Err(Error::KeyStateTampered {
                        key: r.label(),
                        reason: "a destroyed version carries a state tag",
                    });
                }
                (_, None) => {
                    return Err(Error::KeyStateTampered {
                        key: r.label(),
                        reason: "the row has no state tag (written before state tags: run `kluis keys adopt` once, or it was removed)",
                    });
                }
                (_, Some(tag)) => {
                    let key = self.key(r.version)?;
                    let expected = key_set_tag(key.material(), key.backend(), &manifest, r.version)?;
                    if !crate::secret::ct_eq(&expected, tag) {
                        return Err(Error::KeyStateTampered {
                            key: r.label(),
                            reason: "its state, or the versions and states of its set, were altered outside Kluis (state tag mismatch)",
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets the state tag of every live record in `records` (all versions of this set's tenant
    /// and domain) over the set they describe, with this set's keys and `fresh` (a version not
    /// in this set yet, with its key). Destroyed records get none.
    pub fn tag_records(
        &self,
        records: &mut [DomainKeyRecord],
        fresh: Option<(KeyVersion, &KeyMaterial)>,
    ) -> Result<()> {
        if records.iter().any(|r| r.tenant != self.tenant || r.domain != self.domain) {
            return Err(Error::ApiMisuse("tagging records of another tenant or domain"));
        }
        let backend = self.backend_of_active();
        tag_records_with(records, backend, |v| match fresh {
            Some((fv, k)) if fv == v => Some(k),
            _ => self.keys.get(&v).and_then(|(_, k)| k.as_ref()).map(SealKey::material),
        })
    }

    /// Checks that `records` are the versions this set was unwrapped from, in the same states.
    fn check_matches(&self, records: &[DomainKeyRecord]) -> Result<()> {
        let mine = self.versions();
        let theirs: Vec<(KeyVersion, KeyState)> = {
            let mut v: Vec<(KeyVersion, KeyState)> = records.iter().map(|r| (r.version, r.state)).collect();
            v.sort_unstable_by_key(|(v, _)| *v);
            v
        };
        if records.iter().any(|r| r.tenant != self.tenant || r.domain != self.domain) || mine != theirs {
            return Err(Error::ApiMisuse("the records are not the versions this key set was unwrapped from"));
        }
        Ok(())
    }

    async fn unwrap_unverified(
        provider: &dyn RootKeyProvider,
        records: &[DomainKeyRecord],
        suite: Suite,
        backend: Backend,
    ) -> Result<Self> {
        let active = validate_versions(records)?;
        let first = records.first().ok_or_else(|| Error::invalid("domain key set", "no versions"))?;
        let (tenant, domain) = (first.tenant.clone(), first.domain.clone());
        let mut aads = Vec::new();
        let mut live = Vec::new();
        for r in records {
            if let Some(w) = &r.wrapped {
                aads.push(domain_key_ad(&r.tenant, &r.domain, r.version)?);
                live.push((r, w));
            }
        }
        let reqs: Vec<UnwrapRequest<'_>> =
            aads.iter().zip(&live).map(|(aad, (_, w))| UnwrapRequest { aad, wrapped: w }).collect();
        let results = if reqs.is_empty() { Vec::new() } else { provider.unwrap_batch(&reqs).await? };
        if results.len() != reqs.len() {
            return Err(Error::ApiMisuse("provider returned a different number of keys"));
        }
        let mut keys = BTreeMap::new();
        for ((r, _), res) in live.into_iter().zip(results) {
            let material = res?;
            let sk = SealKey::with_backend(material, KeyRef::new(KeyKind::Domain, r.version), backend)?;
            keys.insert(r.version, (r.state, Some(sk)));
        }
        for r in records.iter().filter(|r| r.wrapped.is_none()) {
            keys.insert(r.version, (r.state, None));
        }
        Ok(Self { tenant, domain, suite, keys, active })
    }

    /// Builds a set from already unwrapped keys (tests, tools). `keys` are (version, state, key).
    pub fn from_keys(
        tenant: TenantId,
        domain: DomainName,
        keys: Vec<(KeyVersion, KeyState, KeyMaterial)>,
        suite: Suite,
        backend: Backend,
    ) -> Result<Self> {
        let mut map = BTreeMap::new();
        let mut active = None;
        for (v, state, k) in keys {
            if map.contains_key(&v) {
                return Err(Error::invalid("domain key set", format!("version {v} appears twice")));
            }
            if state == KeyState::Active {
                if active.is_some() {
                    return Err(Error::invalid("domain key set", "more than one active version"));
                }
                active = Some(v);
            }
            let sk = if state == KeyState::Destroyed {
                None
            } else {
                Some(SealKey::with_backend(k, KeyRef::new(KeyKind::Domain, v), backend)?)
            };
            map.insert(v, (state, sk));
        }
        Ok(Self { tenant, domain, suite, keys: map, active })
    }

    /// Tenant of this set.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Domain of this set.
    pub fn domain(&self) -> &DomainName {
        &self.domain
    }

    /// Active version, if any.
    pub fn active_version(&self) -> Option<KeyVersion> {
        self.active
    }

    /// Versions and their states.
    pub fn versions(&self) -> Vec<(KeyVersion, KeyState)> {
        self.keys.iter().map(|(v, (s, _))| (*v, *s)).collect()
    }

    fn key_label(&self, version: KeyVersion) -> String {
        format!("{}/{} v{}", self.tenant, self.domain, version)
    }

    /// The active key, for new writes.
    pub fn active_key(&self) -> Result<&SealKey> {
        let v = self.active.ok_or_else(|| Error::UnknownKey {
            key: format!("{}/{} (no active version)", self.tenant, self.domain),
        })?;
        self.key(v)
    }

    /// The key of `version`, for reading (active or decrypt-only).
    pub fn key(&self, version: KeyVersion) -> Result<&SealKey> {
        match self.keys.get(&version) {
            None => Err(Error::UnknownKey { key: self.key_label(version) }),
            Some((KeyState::Destroyed, _)) | Some((_, None)) => {
                Err(Error::KeyDestroyed { key: self.key_label(version) })
            }
            Some((_, Some(k))) => Ok(k),
        }
    }

    fn check_context(&self, ctx: &Context<'_>) -> Result<()> {
        check_scope(
            ctx,
            &self.tenant,
            &self.domain,
            "context names another tenant or domain than this key set",
        )
    }

    /// Seals a field value with the active version.
    pub fn seal(&self, ctx: &Context<'_>, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.check_context(ctx)?;
        self.active_key()?.seal(self.suite, ctx, plaintext)
    }

    /// Opens a field value sealed with any live version of this domain key.
    pub fn open(&self, ctx: &Context<'_>, sealed: &[u8]) -> Result<Plaintext> {
        self.check_context(ctx)?;
        let h = SealedHeader::parse(sealed)?;
        if h.key.kind != KeyKind::Domain {
            return Err(Error::ApiMisuse(
                "value was sealed with a subject key; open it with the subject key",
            ));
        }
        self.key(versioned(h.key)?)?.open(ctx, sealed)
    }

    /// Creates version `version` (from 1) of a subject key, sealed under the active domain key.
    pub fn new_subject_key(
        &self,
        subject: &str,
        version: KeyVersion,
    ) -> Result<(SubjectKeyRecord, SubjectKey)> {
        check_subject(subject)?;
        let material = KeyMaterial::generate()?;
        let ad = subject_key_ad(&self.tenant, &self.domain, subject, version)?;
        let dk = self.active_key()?;
        let sealed = dk.seal_ad(self.suite, &ad, material.expose_secret())?;
        let rec = SubjectKeyRecord {
            tenant: self.tenant.clone(),
            domain: self.domain.clone(),
            subject: subject.to_owned(),
            version,
            wrapped: sealed,
        };
        let key = SubjectKey::new(self, subject, version, material)?;
        Ok((rec, key))
    }

    /// Opens a subject key record. Fails with [`Error::Decrypt`] if the record was altered or
    /// moved to another tenant, domain or subject.
    pub fn open_subject_key(&self, rec: &SubjectKeyRecord) -> Result<SubjectKey> {
        if rec.tenant != self.tenant || rec.domain != self.domain {
            return Err(Error::ApiMisuse("subject key record of another tenant or domain"));
        }
        let h = SealedHeader::parse(&rec.wrapped)?;
        if h.key.kind != KeyKind::Domain {
            return Err(Error::malformed("subject key record", "not wrapped by a domain key"));
        }
        let ad = subject_key_ad(&self.tenant, &self.domain, &rec.subject, rec.version)?;
        let pt = self
            .key(versioned(h.key)?)?
            .open_ad(&ad, &rec.wrapped, "subject key")
            .map_err(crate::seal::OpenFailure::into_error)?;
        let material = KeyMaterial::from_slice(pt.expose_secret())?;
        SubjectKey::new(self, &rec.subject, rec.version, material)
    }

    /// Rewraps a subject key record under the active domain key version (used by re-encryption
    /// after a domain key rotation).
    pub fn rewrap_subject_key(&self, rec: &SubjectKeyRecord) -> Result<SubjectKeyRecord> {
        let key = self.open_subject_key(rec)?;
        let ad = subject_key_ad(&self.tenant, &self.domain, &rec.subject, rec.version)?;
        let sealed = self.active_key()?.seal_ad(self.suite, &ad, key.key.material().expose_secret())?;
        Ok(SubjectKeyRecord { wrapped: sealed, ..rec.clone() })
    }

    /// The version of the domain key that wraps a subject key record.
    pub fn subject_key_wrapping_version(rec: &SubjectKeyRecord) -> Result<KeyVersion> {
        versioned(SealedHeader::parse(&rec.wrapped)?.key)
    }

    /// Suite used for new writes.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub(crate) fn backend_of_active(&self) -> Backend {
        self.active_key().map(SealKey::backend).unwrap_or_default()
    }
}

/// The version a sealed value's header names. Only the keyring's key-encryption key has none, and
/// [`SealedHeader::parse`] refuses a header of any other kind without one.
fn versioned(key: KeyRef) -> Result<KeyVersion> {
    key.version.ok_or_else(|| Error::malformed("sealed value", "key version 0"))
}

/// A key belongs to one tenant and domain: refuse a context of any other before touching keys.
fn check_scope(ctx: &Context<'_>, tenant: &TenantId, domain: &DomainName, msg: &'static str) -> Result<()> {
    if ctx.tenant != tenant || ctx.domain != domain {
        return Err(Error::ApiMisuse(msg));
    }
    Ok(())
}

fn check_subject(subject: &str) -> Result<()> {
    if subject.is_empty() || subject.len() > 255 {
        return Err(Error::invalid("subject id", "must be 1 to 255 bytes"));
    }
    Ok(())
}

/// A subject key as persisted: sealed under a domain key version with [`subject_key_ad`].
/// Deleting this record (and every copy of the domain key version that sealed it) crypto-shreds
/// the subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectKeyRecord {
    /// Tenant.
    pub tenant: TenantId,
    /// Domain.
    pub domain: DomainName,
    /// Data subject (e.g. an employee id).
    pub subject: String,
    /// Subject key version.
    pub version: KeyVersion,
    /// Sealed value (key kind domain) holding the 32-byte subject key.
    pub wrapped: Vec<u8>,
}

/// An unwrapped subject key.
pub struct SubjectKey {
    tenant: TenantId,
    domain: DomainName,
    subject: String,
    version: KeyVersion,
    suite: Suite,
    key: SealKey,
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectKey")
            .field("tenant", &self.tenant)
            .field("domain", &self.domain)
            .field("subject", &self.subject)
            .field("key", &self.key)
            .finish()
    }
}

impl SubjectKey {
    fn new(set: &DomainKeySet, subject: &str, version: KeyVersion, material: KeyMaterial) -> Result<Self> {
        let key =
            SealKey::with_backend(material, KeyRef::new(KeyKind::Subject, version), set.backend_of_active())?;
        Ok(Self {
            tenant: set.tenant.clone(),
            domain: set.domain.clone(),
            subject: subject.to_owned(),
            version,
            suite: set.suite,
            key,
        })
    }

    /// The subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The subject key's version.
    pub fn version(&self) -> KeyVersion {
        self.version
    }

    /// The prepared key.
    pub fn seal_key(&self) -> &SealKey {
        &self.key
    }

    fn check_context(&self, ctx: &Context<'_>) -> Result<()> {
        check_scope(
            ctx,
            &self.tenant,
            &self.domain,
            "context names another tenant or domain than this subject key",
        )
    }

    /// Seals a field value of this subject.
    pub fn seal(&self, ctx: &Context<'_>, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.check_context(ctx)?;
        self.key.seal(self.suite, ctx, plaintext)
    }

    /// Opens a field value of this subject.
    pub fn open(&self, ctx: &Context<'_>, sealed: &[u8]) -> Result<Plaintext> {
        self.check_context(ctx)?;
        self.key.open(ctx, sealed)
    }

    /// [`Self::open`] in the sealed value's own buffer, with `ad` as scratch for the associated
    /// data ([`SealKey::open_vec`]): no copy of the value, and no allocation per value for a
    /// caller opening many.
    pub fn open_vec(&self, ctx: &Context<'_>, sealed: Vec<u8>, ad: &mut Vec<u8>) -> Result<Plaintext> {
        self.check_context(ctx)?;
        self.key.open_vec(ctx, sealed, ad)
    }
}

/// One field value for [`seal_fields`]: the subject key, the context and the plaintext.
pub struct FieldToSeal<'a> {
    /// The subject key to seal under.
    pub key: &'a SubjectKey,
    /// The value's context (associated data); must name the key's tenant and domain.
    pub context: Context<'a>,
    /// The plaintext.
    pub plaintext: &'a [u8],
}

impl fmt::Debug for FieldToSeal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldToSeal")
            .field("key", &self.key)
            .field("context", &self.context)
            .field("plaintext", &"[REDACTED]")
            .finish()
    }
}

/// Seals several field values, each under its own subject key and context, as
/// [`SubjectKey::seal`] would one by one (the same format; each value its own salt), with one
/// `getrandom` for the salts of up to 16 values instead of one per value (the cells of a record).
/// The bytes are drawn inside this call, after its inputs are fixed, and serve its values only:
/// nothing is kept for a later call (docs/FORMAT.md §5.2). Any error seals nothing.
pub fn seal_fields(values: &[FieldToSeal<'_>]) -> Result<Vec<Vec<u8>>> {
    for v in values {
        v.key.check_context(&v.context)?;
    }
    let mut out = Vec::with_capacity(values.len());
    // The associated data of each value in turn (public bytes: header, label, context).
    let mut ad = Vec::with_capacity(128);
    for chunk in values.chunks(FRESH_MAX) {
        let fresh = Fresh::draw(chunk.len())?;
        for (i, v) in chunk.iter().enumerate() {
            out.push(v.key.key.seal_with(v.key.suite, &v.context, v.plaintext, &mut ad, &fresh.salt(i)?)?);
        }
    }
    Ok(out)
}

/// The outcome of comparing the keyring's generation with the one the database last recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationStatus {
    /// Same generation.
    InSync,
    /// The keyring is newer than the database's record. Normal right after a root rotation that
    /// has not been recorded yet; otherwise an older database was restored onto a newer keyring.
    /// The store reports it and records the new generation only when told to.
    DatabaseBehind {
        /// Keyring generation.
        keyring: u64,
        /// Database's recorded generation.
        database: u64,
    },
}

/// Rollback check: a keyring older than what the database has seen is an error
/// ([`Error::KeyringRollback`]); a database behind the keyring is reported.
pub fn check_generation(keyring: u64, database: u64) -> Result<GenerationStatus> {
    use std::cmp::Ordering;
    match keyring.cmp(&database) {
        Ordering::Less => Err(Error::KeyringRollback { keyring, database }),
        Ordering::Equal => Ok(GenerationStatus::InSync),
        Ordering::Greater => Ok(GenerationStatus::DatabaseBehind { keyring, database }),
    }
}

/// Rollback check against a range: a keyring older than `floor` (the oldest generation the
/// database still accepts) is an error ([`Error::KeyringRollback`] naming `floor`); one newer
/// than `newest` (the newest the database recorded) is reported; anything between is in sync.
/// With `floor == newest` this is [`check_generation`].
pub fn check_generation_range(keyring: u64, floor: u64, newest: u64) -> Result<GenerationStatus> {
    if keyring < floor {
        return Err(Error::KeyringRollback { keyring, database: floor });
    }
    if keyring > newest {
        return Ok(GenerationStatus::DatabaseBehind { keyring, database: newest });
    }
    Ok(GenerationStatus::InSync)
}

/// A source of time for the cache (tests use a manual clock).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told (for tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl ManualClock {
    /// Starts at the current instant.
    pub fn new() -> Self {
        Self { now: Mutex::new(Instant::now()) }
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        if let Ok(mut n) = self.now.lock() {
            *n += d;
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.now.lock().map(|n| *n).unwrap_or_else(|p| *p.into_inner())
    }
}

/// Limits of the unwrap cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// How long an unwrapped key may be served from memory.
    pub ttl: Duration,
    /// How many keys at most.
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(15 * 60), max_entries: 10_000 }
    }
}

/// INVARIANT: `KeyMaterial` keeps its bytes in its own allocation, so when the table grows and
/// moves its entries only the pointer moves: no copy of a key is left in the old table.
struct CacheEntry {
    key: KeyMaterial,
    expires: Instant,
}

#[cfg(test)]
#[path = "keys_cache_tests.rs"]
mod cache_tests;

/// Wraps a provider with a cache of unwrapped keys: bounded in size and lifetime, zeroized on
/// eviction (the entries hold [`KeyMaterial`]). Errors are never cached. Misses of one batch go to
/// the inner provider in one call.
///
/// Expired keys are dropped (and zeroized) by every call that looks at the cache: `unwrap_batch`,
/// [`CachingProvider::len`], [`CachingProvider::is_empty`], `Debug`, and
/// [`CachingProvider::sweep_expired`]. Between such calls an expired key stays in memory: an
/// application that may leave the cache idle calls `sweep_expired` from a timer.
pub struct CachingProvider<P> {
    inner: P,
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<[u8; 32], CacheEntry>>,
    stats: Mutex<CacheStats>,
}

/// Hit and miss counts of a [`CachingProvider`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Served from memory.
    pub hits: u64,
    /// Sent to the provider.
    pub misses: u64,
}

impl<P: fmt::Debug> fmt::Debug for CachingProvider<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = self.clock.now();
        let n = self.entries.lock().map(|mut e| sweep(&mut e, now).1).unwrap_or(0);
        f.debug_struct("CachingProvider")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("entries", &n)
            .finish()
    }
}

impl<P: RootKeyProvider> CachingProvider<P> {
    /// A cache over `inner` with the system clock.
    pub fn new(inner: P, config: CacheConfig) -> Self {
        Self::with_clock(inner, config, Arc::new(SystemClock))
    }

    /// A cache with a chosen clock.
    pub fn with_clock(inner: P, config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner,
            config,
            clock,
            entries: Mutex::new(HashMap::new()),
            stats: Mutex::new(CacheStats::default()),
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Hit and miss counts.
    pub fn stats(&self) -> CacheStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Number of keys held (after dropping the expired ones).
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        self.entries.lock().map(|mut e| sweep(&mut e, now).1).unwrap_or(0)
    }

    /// Drops (and zeroizes) every expired key now; returns how many were dropped.
    pub fn sweep_expired(&self) -> usize {
        let now = self.clock.now();
        self.entries.lock().map(|mut e| sweep(&mut e, now).0).unwrap_or(0)
    }

    /// Is the cache empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops (and zeroizes) every cached key.
    pub fn clear(&self) {
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }

    fn cache_key(item: &UnwrapRequest<'_>) -> [u8; 32] {
        crate::crypto::sha256(&[
            &(item.wrapped.root_key_id.len() as u64).to_be_bytes(),
            item.wrapped.root_key_id.as_bytes(),
            &item.wrapped.root_version.to_be_bytes(),
            &(item.aad.len() as u64).to_be_bytes(),
            item.aad,
            &item.wrapped.ciphertext,
        ])
    }

    async fn unwrap_cached(&self, items: &[UnwrapRequest<'_>]) -> Result<Vec<Result<KeyMaterial>>> {
        let now = self.clock.now();
        let ids: Vec<[u8; 32]> = items.iter().map(Self::cache_key).collect();
        let mut out: Vec<Option<Result<KeyMaterial>>> = Vec::with_capacity(items.len());
        let mut miss_idx = Vec::new();
        {
            let mut entries = self.entries.lock().map_err(|_| Error::ApiMisuse("cache lock poisoned"))?;
            sweep(&mut entries, now);
            for (i, id) in ids.iter().enumerate() {
                match entries.get(id) {
                    Some(e) => out.push(Some(Ok(e.key.clone()))),
                    None => {
                        out.push(None);
                        miss_idx.push(i);
                    }
                }
            }
        }
        if let Ok(mut s) = self.stats.lock() {
            s.hits += (items.len() - miss_idx.len()) as u64;
            s.misses += miss_idx.len() as u64;
        }
        if !miss_idx.is_empty() {
            let misses: Vec<UnwrapRequest<'_>> =
                miss_idx.iter().filter_map(|&i| items.get(i).copied()).collect();
            let results = self.inner.unwrap_batch(&misses).await?;
            if results.len() != misses.len() {
                return Err(Error::ApiMisuse("provider returned a different number of keys"));
            }
            let now = self.clock.now();
            let expires = now + self.config.ttl;
            let mut entries = self.entries.lock().map_err(|_| Error::ApiMisuse("cache lock poisoned"))?;
            // Keys may have expired while the provider answered.
            sweep(&mut entries, now);
            for (&i, res) in miss_idx.iter().zip(results) {
                if let (Ok(k), Some(id)) = (&res, ids.get(i)) {
                    if entries.len() >= self.config.max_entries {
                        // Evict the entry closest to expiry.
                        if let Some(victim) = entries.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k) {
                            entries.remove(&victim);
                        }
                    }
                    if self.config.max_entries > 0 {
                        entries.insert(*id, CacheEntry { key: k.clone(), expires });
                    }
                }
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(res);
                }
            }
        }
        Ok(out.into_iter().map(|o| o.unwrap_or(Err(Error::ApiMisuse("missing unwrap result")))).collect())
    }
}

/// Drops (and so zeroizes) the entries expired at `now`. Returns (dropped, left).
fn sweep(entries: &mut HashMap<[u8; 32], CacheEntry>, now: Instant) -> (usize, usize) {
    let before = entries.len();
    entries.retain(|_, e| e.expires > now);
    (before - entries.len(), entries.len())
}

impl<P: RootKeyProvider> RootKeyProvider for CachingProvider<P> {
    fn root_key_id(&self) -> &str {
        self.inner.root_key_id()
    }

    fn primary_version(&self) -> BoxFuture<'_, Result<KeyVersion>> {
        self.inner.primary_version()
    }

    fn wrap<'a>(&'a self, aad: &'a [u8], key: &'a KeyMaterial) -> BoxFuture<'a, Result<WrappedKey>> {
        self.inner.wrap(aad, key)
    }

    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> BoxFuture<'a, Result<Vec<Result<KeyMaterial>>>> {
        Box::pin(self.unwrap_cached(items))
    }

    fn generation(&self) -> Option<u64> {
        self.inner.generation()
    }

    fn held_versions(&self) -> Option<Vec<KeyVersion>> {
        self.inner.held_versions()
    }

    fn is_legacy(&self, wrapped: &WrappedKey) -> bool {
        self.inner.is_legacy(wrapped)
    }

    fn unwrap_legacy<'a>(
        &'a self,
        aad: &'a [u8],
        wrapped: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<KeyMaterial>> {
        self.inner.unwrap_legacy(aad, wrapped)
    }
}
