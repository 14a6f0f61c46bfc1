//! Shared fixtures for the Kluis benches. Keys are fixed (benches only).
#![allow(dead_code)]

use kluis_core::{Backend, DomainName, KeyKind, KeyMaterial, KeyRef, KeyVersion, SealKey, TenantId};

/// A fixed 256-bit key for the bare-primitive baselines.
pub const BARE_KEY: [u8; 32] = [0x42; 32];

/// A domain key (version 1) with a fixed value and the chosen backend.
pub fn domain_key(backend: Backend) -> SealKey {
    SealKey::with_backend(
        KeyMaterial::from_bytes([0x17; 32]),
        KeyRef::new(KeyKind::Domain, KeyVersion::FIRST),
        backend,
    )
    .expect("seal key")
}

pub fn tenant() -> TenantId {
    TenantId::new("acme-bv").expect("tenant")
}

pub fn medical() -> DomainName {
    DomainName::medical()
}

/// Short label for a backend.
pub fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Ring => "ring",
        Backend::RustCrypto => "rustcrypto",
        _ => "other",
    }
}

/// A fresh 96-bit nonce from a counter (bare baselines: a nonce is never reused under a key
/// within one process, and drawing it costs nothing, the cheapest honest "fresh nonce").
pub fn counter_nonce(ctr: &mut u64) -> [u8; 12] {
    *ctr = ctr.wrapping_add(1);
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&ctr.to_be_bytes());
    n
}

/// Deterministic, non-trivial filler bytes.
pub fn filler(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
