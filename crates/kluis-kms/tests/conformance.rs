//! One provider conformance suite, compiled once per provider: the local keyring, AWS KMS (moto,
//! over real HTTP) and Azure Key Vault (the HTTPS protocol stand-in, RSA-OAEP-256 vault keys and
//! A256KW Managed HSM keys).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assertion is the report"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kluis_core::keys::{
    CacheConfig, CachingProvider, ManualClock, UnwrapRequest, domain_key_ad, new_domain_key,
    rotate_domain_key, unwrap_one,
};
use kluis_core::{Context, DomainKeySet, KeyState, LocalKeyring, RootKeyProvider, WrappedKey};

const CANARY: &[u8] = b"CANARY-burn-out-diagnosis-7731";

/// Wrap and unwrap; the wrap is bound to tenant, domain and version; no key bytes in the wrap.
pub async fn round_trip_and_binding(p: &dyn RootKeyProvider) {
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, key) = new_domain_key(p, &t, &d, kv(1)).await.unwrap();
    let w = rec.wrapped.clone().unwrap();
    assert_eq!(w.root_key_id, p.root_key_id());
    assert_eq!(w.root_version, p.primary_version().await.unwrap());
    assert!(!contains(&w.ciphertext, key.expose_secret()));
    let w2 = WrappedKey::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let back = unwrap_one(p, &domain_key_ad(&t, &d, kv(1)).unwrap(), &w2).await.unwrap();
    assert_eq!(back, key);
    for aad in [
        domain_key_ad(&tenant("globex"), &d, kv(1)).unwrap(),
        domain_key_ad(&t, &domain("general"), kv(1)).unwrap(),
        domain_key_ad(&t, &d, kv(2)).unwrap(),
    ] {
        let e = unwrap_one(p, &aad, &w).await.unwrap_err();
        assert!(is_refusal(&e), "moved wrap must be refused: {e:?}");
    }
}

/// Edited wrapped keys (as a DBA could do) and wraps of another root key id are refused.
pub async fn tampering_refused(p: &dyn RootKeyProvider) {
    let (t, d) = (tenant("acme"), domain("general"));
    let (rec, _) = new_domain_key(p, &t, &d, kv(1)).await.unwrap();
    let aad = domain_key_ad(&t, &d, kv(1)).unwrap();
    let w = rec.wrapped.unwrap();
    let n = w.ciphertext.len();
    for i in [n - 1, n / 2, n - 17] {
        let mut edited = w.clone();
        edited.ciphertext[i] ^= 0x01;
        assert!(unwrap_one(p, &aad, &edited).await.is_err(), "flipped byte {i} must be refused");
    }
    let mut truncated = w.clone();
    truncated.ciphertext.truncate(n - 1);
    assert!(unwrap_one(p, &aad, &truncated).await.is_err());
    let mut empty = w.clone();
    empty.ciphertext.clear();
    assert!(unwrap_one(p, &aad, &empty).await.is_err());
    let mut other = w.clone();
    other.root_key_id = "keyring-of-someone-else".into();
    assert!(unwrap_one(p, &aad, &other).await.is_err());
}

/// A batch answers per item: one bad item does not fail the others.
pub async fn batch_is_per_item(p: &dyn RootKeyProvider) {
    let (t, d) = (tenant("acme"), domain("medical"));
    let mut recs = Vec::new();
    let mut keys = Vec::new();
    for v in 1..=3 {
        let (r, k) = new_domain_key(p, &t, &d, kv(v)).await.unwrap();
        recs.push(r);
        keys.push(k);
    }
    let aads: Vec<Vec<u8>> = (1..=3).map(|v| domain_key_ad(&t, &d, kv(v)).unwrap()).collect();
    let wrong = domain_key_ad(&t, &d, kv(9)).unwrap();
    let ws: Vec<WrappedKey> = recs.iter().map(|r| r.wrapped.clone().unwrap()).collect();
    let items = [
        UnwrapRequest { aad: &aads[0], wrapped: &ws[0] },
        UnwrapRequest { aad: &wrong, wrapped: &ws[1] },
        UnwrapRequest { aad: &aads[2], wrapped: &ws[2] },
    ];
    let out = p.unwrap_batch(&items).await.unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].as_ref().unwrap(), &keys[0]);
    assert!(is_refusal(out[1].as_ref().unwrap_err()));
    assert_eq!(out[2].as_ref().unwrap(), &keys[2]);
    assert!(p.unwrap_batch(&[]).await.unwrap().is_empty());
}

/// Domain keys through the provider seal and open; rotation keeps old data readable; the canary
/// never appears in what a store would persist.
pub async fn domain_keys_seal_and_rotate(p: &dyn RootKeyProvider) {
    let (t, d) = (tenant("acme"), domain("medical"));
    let (r1, _) = new_domain_key(p, &t, &d, kv(1)).await.unwrap();
    let mut recs = vec![r1];
    let set = DomainKeySet::unwrap(p, &recs).await.unwrap();
    let ctx = Context { tenant: &t, domain: &d, collection: "absence", field: "diagnosis", record: "r1" };
    let sealed = set.seal(&ctx, CANARY).unwrap();
    rotate_domain_key(p, &set, &mut recs).await.unwrap();
    let set2 = DomainKeySet::unwrap(p, &recs).await.unwrap();
    assert_eq!(set2.active_version(), Some(kv(2)));
    assert_eq!(set2.open(&ctx, &sealed).unwrap().expose_secret(), CANARY);
    assert_eq!(recs[0].state, KeyState::DecryptOnly);
    for r in &recs {
        let bytes = r.wrapped.as_ref().unwrap().to_bytes().unwrap();
        assert!(!contains(&bytes, CANARY));
        assert!(!contains(format!("{r:?}").as_bytes(), CANARY));
    }
    assert!(!contains(format!("{p:?}").as_bytes(), CANARY));
}

/// Behind the cache: warm reads make no provider call; nothing is served after the lifetime.
pub async fn cache_warm_and_expiry<P: RootKeyProvider + 'static>(p: P) {
    let clock = Arc::new(ManualClock::new());
    let cache = CachingProvider::with_clock(
        Counting::new(p),
        CacheConfig { ttl: Duration::from_secs(300), max_entries: 100 },
        clock.clone(),
    );
    let (t, d) = (tenant("acme"), domain("medical"));
    let (r1, _) = new_domain_key(&cache, &t, &d, kv(1)).await.unwrap();
    let recs = vec![r1];
    DomainKeySet::unwrap(&cache, &recs).await.unwrap();
    let cold = cache.inner().calls();
    for _ in 0..20 {
        DomainKeySet::unwrap(&cache, &recs).await.unwrap();
    }
    assert_eq!(cache.inner().calls(), cold, "warm reads reach the provider");
    clock.advance(Duration::from_secs(301));
    DomainKeySet::unwrap(&cache, &recs).await.unwrap();
    assert_eq!(cache.inner().calls(), cold + 1, "an expired key must be fetched again");
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn round_trip_and_binding() {
                let Some(p) = $make else { return };
                super::round_trip_and_binding(&p).await;
            }
            #[tokio::test]
            async fn tampering_refused() {
                let Some(p) = $make else { return };
                super::tampering_refused(&p).await;
            }
            #[tokio::test]
            async fn batch_is_per_item() {
                let Some(p) = $make else { return };
                super::batch_is_per_item(&p).await;
            }
            #[tokio::test]
            async fn domain_keys_seal_and_rotate() {
                let Some(p) = $make else { return };
                super::domain_keys_seal_and_rotate(&p).await;
            }
            #[tokio::test]
            async fn cache_warm_and_expiry() {
                let Some(p) = $make else { return };
                super::cache_warm_and_expiry(p).await;
            }
        }
    };
}

conformance!(keyring, Some(LocalKeyring::generate(0).unwrap()));
conformance!(aws_kms_moto, aws_provider().await.map(|(p, _, _)| p));
conformance!(azure_key_vault_rsa, Some(StandInProvider::new(false).await));
conformance!(azure_managed_hsm_aes, Some(StandInProvider::new(true).await));

/// The Azure provider with its stand-in kept alive, checking at the end that the SDK sent nothing
/// Key Vault would refuse.
#[derive(Debug)]
struct StandInProvider {
    p: kluis_kms::AzureKeyVaultProvider,
    s: Arc<std::sync::Mutex<keyvault::State>>,
}

impl std::fmt::Debug for keyvault::State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

impl StandInProvider {
    async fn new(hsm: bool) -> Self {
        let (p, s) = azure_provider(hsm).await;
        Self { p, s: s.state.clone() }
    }
}

impl Drop for StandInProvider {
    fn drop(&mut self) {
        let st = self.s.lock().unwrap();
        assert!(st.violations.is_empty(), "protocol violations: {:?}", st.violations);
        // Every wrap/unwrap body carries only wrapped or bound key bytes, never the canary.
        for b in &st.bodies {
            assert!(!contains(b, CANARY));
        }
    }
}

impl RootKeyProvider for StandInProvider {
    fn root_key_id(&self) -> &str {
        self.p.root_key_id()
    }
    fn primary_version(&self) -> kluis_core::keys::BoxFuture<'_, kluis_core::Result<kluis_core::KeyVersion>> {
        self.p.primary_version()
    }
    fn wrap<'a>(
        &'a self,
        aad: &'a [u8],
        key: &'a kluis_core::KeyMaterial,
    ) -> kluis_core::keys::BoxFuture<'a, kluis_core::Result<WrappedKey>> {
        self.p.wrap(aad, key)
    }
    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> kluis_core::keys::BoxFuture<'a, kluis_core::Result<Vec<kluis_core::Result<kluis_core::KeyMaterial>>>>
    {
        self.p.unwrap_batch(items)
    }
}
