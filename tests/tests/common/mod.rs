#![allow(dead_code)]
//! Helpers shared by the integration tests.

use kluis_core::{
    Backend, Context, DomainKeySet, DomainName, KeyKind, KeyMaterial, KeyRef, KeyState, KeyVersion, SealKey,
    Suite, TenantId,
};

/// Key version `n` (from 1).
pub fn kv(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

pub fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

pub fn domain(s: &str) -> DomainName {
    DomainName::new(s).unwrap()
}

pub fn key(byte: u8) -> KeyMaterial {
    KeyMaterial::from_bytes([byte; 32])
}

pub fn domain_key(byte: u8, version: u32, backend: Backend) -> SealKey {
    SealKey::with_backend(key(byte), KeyRef::new(KeyKind::Domain, kv(version)), backend).unwrap()
}

pub const SUITES: [Suite; 2] = [Suite::Aes256Gcm, Suite::XChaCha20Poly1305];

pub fn backends() -> &'static [Backend] {
    Backend::all()
}

/// A key set with versions 1 (decrypt-only) and 2 (active).
pub fn keyset(t: &TenantId, d: &DomainName, suite: Suite, backend: Backend) -> DomainKeySet {
    DomainKeySet::from_keys(
        t.clone(),
        d.clone(),
        vec![(kv(1), KeyState::DecryptOnly, key(1)), (kv(2), KeyState::Active, key(2))],
        suite,
        backend,
    )
    .unwrap()
}

pub struct Ctx {
    pub tenant: TenantId,
    pub domain: DomainName,
    pub collection: String,
    pub field: String,
    pub record: String,
}

impl Ctx {
    pub fn new(t: &str, d: &str, c: &str, f: &str, r: &str) -> Self {
        Self { tenant: tenant(t), domain: domain(d), collection: c.into(), field: f.into(), record: r.into() }
    }

    pub fn get(&self) -> Context<'_> {
        Context {
            tenant: &self.tenant,
            domain: &self.domain,
            collection: &self.collection,
            field: &self.field,
            record: &self.record,
        }
    }
}

/// Does `haystack` contain `needle` anywhere?
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
