//! Key hierarchy: domain keys wrapped by the root key, rotation, states, subject keys and
//! crypto-shredding, the unwrap cache, rollback detection.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use kluis_core::keys::{
    BoxFuture, CacheConfig, CachingProvider, GenerationStatus, ManualClock, UnwrapRequest, check_generation,
    destroy_domain_key, domain_key_ad, new_domain_key, rewrap_domain_key, rotate_domain_key, unwrap_one,
    validate_versions,
};
use kluis_core::{
    DomainKeySet, Error, KeyMaterial, KeyState, LocalKeyring, RootKeyProvider, Suite, WrappedKey,
};

#[tokio::test]
async fn domain_keys_are_wrapped_and_bound_to_tenant_domain_version() {
    let root = LocalKeyring::generate(0).unwrap();
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, key) = new_domain_key(&root, &t, &d, kv(1)).await.unwrap();
    assert_eq!(rec.state, KeyState::Active);
    let w = rec.wrapped.clone().unwrap();
    assert!(!contains(&w.ciphertext, key.expose_secret()));
    // Round trip through the serialised form.
    let w2 = WrappedKey::from_bytes(&w.to_bytes().unwrap()).unwrap();
    assert_eq!(w, w2);
    let back = unwrap_one(&root, &domain_key_ad(&t, &d, kv(1)).unwrap(), &w2).await.unwrap();
    assert_eq!(back, key);
    // Any other tenant, domain or version: refused.
    for aad in [
        domain_key_ad(&tenant("globex"), &d, kv(1)).unwrap(),
        domain_key_ad(&t, &domain("general"), kv(1)).unwrap(),
        domain_key_ad(&t, &d, kv(2)).unwrap(),
    ] {
        assert!(matches!(unwrap_one(&root, &aad, &w).await, Err(Error::Decrypt)));
    }
    // Another keyring's root key: refused.
    let other_root = LocalKeyring::generate(0).unwrap();
    assert!(unwrap_one(&other_root, &domain_key_ad(&t, &d, kv(1)).unwrap(), &w).await.is_err());
    // An edited wrapped key (as a DBA could do with raw SQL): refused.
    let mut edited = w.clone();
    let last = edited.ciphertext.len() - 1;
    edited.ciphertext[last] ^= 1;
    assert!(matches!(
        unwrap_one(&root, &domain_key_ad(&t, &d, kv(1)).unwrap(), &edited).await,
        Err(Error::Decrypt)
    ));
    assert!(WrappedKey::from_bytes(&[9, 9]).is_err());
}

#[tokio::test]
async fn rotation_keeps_exactly_one_active_version() {
    let root = LocalKeyring::generate(0).unwrap();
    let (t, d) = (tenant("acme"), domain("medical"));
    let (r1, _) = new_domain_key(&root, &t, &d, kv(1)).await.unwrap();
    let mut recs = vec![r1];
    let c = Ctx::new("acme", "medical", "absence", "diagnosis", "r1");
    let set1 = DomainKeySet::unwrap(&root, &recs).await.unwrap();
    let old = set1.seal(&c.get(), b"migraine").unwrap();

    let (r2, _) = rotate_domain_key(&root, &set1, &mut recs).await.unwrap();
    assert_eq!(r2.version, kv(2));
    assert_eq!(validate_versions(&recs).unwrap(), Some(kv(2)));
    assert_eq!(recs[0].state, KeyState::DecryptOnly);
    let set2 = DomainKeySet::unwrap(&root, &recs).await.unwrap();
    assert_eq!(set2.active_version(), Some(kv(2)));
    // Old data still opens; new data uses v2.
    assert_eq!(set2.open(&c.get(), &old).unwrap().expose_secret(), b"migraine");
    let new = set2.seal(&c.get(), b"migraine").unwrap();
    assert_eq!(kluis_core::SealedHeader::parse(&new).unwrap().key.version, Some(kv(2)));

    // The active version cannot be destroyed; v1 can, and then its data is gone.
    assert!(destroy_domain_key(&mut recs[1]).is_err());
    destroy_domain_key(&mut recs[0]).unwrap();
    assert!(recs[0].wrapped.is_none());
    // The live rows' tags still describe v1 as decrypt-only: refused until retagged.
    assert!(matches!(DomainKeySet::unwrap(&root, &recs).await, Err(Error::KeyStateTampered { .. })));
    set2.tag_records(&mut recs, None).unwrap();
    let set3 = DomainKeySet::unwrap(&root, &recs).await.unwrap();
    assert!(matches!(set3.open(&c.get(), &old), Err(Error::KeyDestroyed { .. })));
    assert_eq!(set3.open(&c.get(), &new).unwrap().expose_secret(), b"migraine");

    // Invariant violations are refused.
    let mut two_active = recs.clone();
    two_active[0].state = KeyState::Active;
    two_active[0].wrapped = recs[1].wrapped.clone();
    assert!(validate_versions(&two_active).is_err());
    let mut dup = recs.clone();
    dup[0].version = kv(2);
    assert!(validate_versions(&dup).is_err());
}

#[tokio::test]
async fn root_rotation_rewraps_without_touching_data() {
    let mut root = LocalKeyring::generate(0).unwrap();
    let (t, d) = (tenant("acme"), domain("general"));
    let (r1, k1) = new_domain_key(&root, &t, &d, kv(1)).await.unwrap();
    assert_eq!(r1.wrapped.as_ref().unwrap().root_version, kv(1));
    let v2 = root.rotate(0).unwrap();
    assert_eq!(v2, kv(2));
    let r1b = rewrap_domain_key(&root, &root, &r1).await.unwrap();
    assert_eq!(r1b.wrapped.as_ref().unwrap().root_version, kv(2));
    let k1b = unwrap_one(&root, &domain_key_ad(&t, &d, kv(1)).unwrap(), r1b.wrapped.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(k1, k1b);
    // After removing root v1, the old wrap no longer opens, the new one does.
    root.remove_version(kv(1)).unwrap();
    assert!(matches!(
        unwrap_one(&root, &domain_key_ad(&t, &d, kv(1)).unwrap(), r1.wrapped.as_ref().unwrap()).await,
        Err(Error::UnknownKey { .. })
    ));
    assert!(root.remove_version(kv(2)).is_err(), "the primary root version cannot be removed");
}

#[tokio::test]
async fn subject_keys_shred_one_subject_only() {
    let root = LocalKeyring::generate(0).unwrap();
    let (t, d) = (tenant("acme"), domain("medical"));
    let (r1, _) = new_domain_key(&root, &t, &d, kv(1)).await.unwrap();
    let set = DomainKeySet::unwrap(&root, &[r1]).await.unwrap();
    let (rec_jan, jan) = set.new_subject_key("emp-jan", kv(1)).unwrap();
    let (rec_piet, piet) = set.new_subject_key("emp-piet", kv(1)).unwrap();
    let c = Ctx::new("acme", "medical", "absence", "diagnosis", "r1");
    let sealed_jan = jan.seal(&c.get(), b"depression").unwrap();
    let sealed_piet = piet.seal(&c.get(), b"fracture").unwrap();
    // Reopen the keys from their records, as a store would.
    let jan2 = set.open_subject_key(&rec_jan).unwrap();
    assert_eq!(jan2.open(&c.get(), &sealed_jan).unwrap().expose_secret(), b"depression");
    // Subject keys are not interchangeable, and a record moved to another subject fails.
    assert!(matches!(piet.open(&c.get(), &sealed_jan), Err(Error::Decrypt)));
    let mut moved = rec_jan.clone();
    moved.subject = "emp-piet".into();
    assert!(matches!(set.open_subject_key(&moved), Err(Error::Decrypt)));
    // The domain key set does not open subject-sealed values directly.
    assert!(matches!(set.open(&c.get(), &sealed_jan), Err(Error::ApiMisuse(_))));
    // Shredding = deleting the subject key record: nothing else opens Jan's data any more, and
    // Piet's data is unaffected.
    drop((rec_jan, jan, jan2));
    let piet2 = set.open_subject_key(&rec_piet).unwrap();
    assert_eq!(piet2.open(&c.get(), &sealed_piet).unwrap().expose_secret(), b"fracture");
    assert!(matches!(piet2.open(&c.get(), &sealed_jan), Err(Error::Decrypt)));
}

#[tokio::test]
async fn subject_keys_follow_domain_key_rotation() {
    let root = LocalKeyring::generate(0).unwrap();
    let (t, d) = (tenant("acme"), domain("medical"));
    let (r1, _) = new_domain_key(&root, &t, &d, kv(1)).await.unwrap();
    let mut recs = vec![r1];
    let set1 = DomainKeySet::unwrap(&root, &recs).await.unwrap();
    let (srec, skey) = set1.new_subject_key("emp-jan", kv(1)).unwrap();
    let c = Ctx::new("acme", "medical", "absence", "notes", "r1");
    let sealed = skey.seal(&c.get(), b"bedrust").unwrap();
    rotate_domain_key(&root, &set1, &mut recs).await.unwrap();
    let set2 = DomainKeySet::unwrap(&root, &recs).await.unwrap();
    let srec2 = set2.rewrap_subject_key(&srec).unwrap();
    assert_eq!(DomainKeySet::subject_key_wrapping_version(&srec2).unwrap(), kv(2));
    destroy_domain_key(&mut recs[0]).unwrap();
    set2.tag_records(&mut recs, None).unwrap();
    let set3 = DomainKeySet::unwrap(&root, &recs).await.unwrap();
    assert!(matches!(set3.open_subject_key(&srec), Err(Error::KeyDestroyed { .. })));
    let skey2 = set3.open_subject_key(&srec2).unwrap();
    assert_eq!(skey2.open(&c.get(), &sealed).unwrap().expose_secret(), b"bedrust");
}

/// A provider that counts calls and can be switched off, to test the cache.
#[derive(Debug)]
struct Counting {
    inner: LocalKeyring,
    calls: AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
}

impl RootKeyProvider for Counting {
    fn root_key_id(&self) -> &str {
        self.inner.root_key_id()
    }
    fn primary_version(&self) -> BoxFuture<'_, kluis_core::Result<kluis_core::KeyVersion>> {
        self.inner.primary_version()
    }
    fn wrap<'a>(
        &'a self,
        aad: &'a [u8],
        key: &'a KeyMaterial,
    ) -> BoxFuture<'a, kluis_core::Result<WrappedKey>> {
        self.inner.wrap(aad, key)
    }
    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> BoxFuture<'a, kluis_core::Result<Vec<kluis_core::Result<KeyMaterial>>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(Error::Provider {
                    provider: "counting".into(),
                    kind: kluis_core::ProviderErrorKind::Unavailable,
                    source: None,
                })
            });
        }
        self.inner.unwrap_batch(items)
    }
}

#[tokio::test]
async fn cache_serves_hot_keys_and_expires_them() {
    let clock = Arc::new(ManualClock::new());
    let counting = Counting {
        inner: LocalKeyring::generate(0).unwrap(),
        calls: AtomicUsize::new(0),
        fail: false.into(),
    };
    let (t, d) = (tenant("acme"), domain("medical"));
    let mut recs = Vec::new();
    for v in 1..=3 {
        let (mut r, _) = new_domain_key(&counting, &t, &d, kv(v)).await.unwrap();
        if v < 3 {
            r.state = KeyState::DecryptOnly;
        }
        recs.push(r);
    }
    let cache = CachingProvider::with_clock(
        counting,
        CacheConfig { ttl: Duration::from_secs(60), max_entries: 2 },
        clock.clone(),
    );
    // Start-up: one batched call for all three keys (two fit in the cache).
    unwrap_all(&cache, &recs).await.unwrap();
    assert_eq!(cache.inner().calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.len(), 2, "bounded size");
    // Warm: no provider call for cached keys.
    let warm = &recs[1..];
    let before = cache.inner().calls.load(Ordering::SeqCst);
    let hits_before = cache.stats().hits;
    for _ in 0..5 {
        // Whatever two are cached, at most one miss per round for the evicted one.
        unwrap_all(&cache, &recs[2..]).await.unwrap();
    }
    assert!(cache.stats().hits > hits_before);
    assert!(cache.inner().calls.load(Ordering::SeqCst) - before <= 1);
    let _ = warm;
    // Provider down: cached keys still served within their lifetime...
    cache.inner().fail.store(true, Ordering::SeqCst);
    unwrap_all(&cache, &recs[2..]).await.unwrap();
    // ...but never after it.
    clock.advance(Duration::from_secs(61));
    let err = unwrap_all(&cache, &recs[2..]).await.unwrap_err();
    assert!(matches!(err, Error::Provider { .. }), "{err:?}");
    assert_eq!(cache.len(), 0, "expired keys are dropped (and zeroized)");
    // Errors are not cached: when the provider is back, it works again.
    cache.inner().fail.store(false, Ordering::SeqCst);
    unwrap_all(&cache, &recs[2..]).await.unwrap();
    cache.clear();
    assert!(cache.is_empty());
}

/// Unwraps every live record through `p` in one batch (the cache's view: no state tags involved).
async fn unwrap_all(p: &dyn RootKeyProvider, recs: &[kluis_core::DomainKeyRecord]) -> Result<(), Error> {
    let aads: Vec<Vec<u8>> =
        recs.iter().map(|r| domain_key_ad(&r.tenant, &r.domain, r.version).unwrap()).collect();
    let items: Vec<UnwrapRequest<'_>> = recs
        .iter()
        .zip(&aads)
        .filter_map(|(r, aad)| r.wrapped.as_ref().map(|w| UnwrapRequest { aad, wrapped: w }))
        .collect();
    for r in p.unwrap_batch(&items).await? {
        r?;
    }
    Ok(())
}

#[test]
fn rollback_is_detected() {
    assert_eq!(check_generation(5, 5).unwrap(), GenerationStatus::InSync);
    assert_eq!(check_generation(6, 5).unwrap(), GenerationStatus::DatabaseBehind { keyring: 6, database: 5 });
    assert!(matches!(check_generation(4, 5), Err(Error::KeyringRollback { keyring: 4, database: 5 })));
}

#[test]
fn key_states_round_trip() {
    for s in [KeyState::Active, KeyState::DecryptOnly, KeyState::Destroyed] {
        assert_eq!(KeyState::parse(s.as_str()).unwrap(), s);
    }
    assert!(KeyState::parse("retired").is_err());
}

#[test]
fn key_set_without_active_version_cannot_seal() {
    let (t, d) = (tenant("acme"), domain("medical"));
    let set = DomainKeySet::from_keys(
        t.clone(),
        d.clone(),
        vec![(kv(1), KeyState::DecryptOnly, key(1))],
        Suite::default(),
        kluis_core::Backend::preferred(),
    )
    .unwrap();
    let c = Ctx::new("acme", "medical", "x", "y", "z");
    assert!(matches!(set.seal(&c.get(), b"v"), Err(Error::UnknownKey { .. })));
}
