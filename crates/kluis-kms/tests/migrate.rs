//! `migrate-root`: keyring → KMS and back, resumable after an interruption, idempotent, data
//! sealed before still opens after.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assertion is the report"
)]

mod common;

use common::*;
use kluis_core::keys::{destroy_domain_key, new_domain_key, rotate_domain_key};
use kluis_core::{Context, DomainKeyRecord, DomainKeySet, Error, KeyState, LocalKeyring, RootKeyProvider};
use kluis_kms::migrate_root;

async fn records(p: &dyn RootKeyProvider) -> Vec<DomainKeyRecord> {
    let mut out = Vec::new();
    for tn in ["acme", "globex"] {
        for dn in ["medical", "general"] {
            let mut recs = vec![new_domain_key(p, &tenant(tn), &domain(dn), kv(1)).await.unwrap().0];
            let set = DomainKeySet::unwrap(p, &recs).await.unwrap();
            rotate_domain_key(p, &set, &mut recs).await.unwrap();
            assert_eq!(recs[0].state, KeyState::DecryptOnly);
            if out.is_empty() {
                // One destroyed version (crypto-shredded): nothing to migrate, stays destroyed.
                let set = DomainKeySet::unwrap(p, &recs).await.unwrap();
                destroy_domain_key(&mut recs[0]).unwrap();
                set.tag_records(&mut recs, None).unwrap();
            }
            out.extend(recs);
        }
    }
    out
}

fn store_put(store: &mut [DomainKeyRecord], r: &DomainKeyRecord) {
    let slot = store
        .iter_mut()
        .find(|s| s.tenant == r.tenant && s.domain == r.domain && s.version == r.version)
        .unwrap();
    *slot = r.clone();
}

async fn there_and_back(target: &dyn RootKeyProvider) {
    let keyring = LocalKeyring::generate(0).unwrap();
    let mut store = records(&keyring).await;
    let (t, d) = (tenant("globex"), domain("medical"));
    let set: Vec<DomainKeyRecord> =
        store.iter().filter(|r| r.tenant == t && r.domain == d).cloned().collect();
    let ctx = Context { tenant: &t, domain: &d, collection: "absence", field: "note", record: "r9" };
    let sealed = DomainKeySet::unwrap(&keyring, &set).await.unwrap().seal(&ctx, b"kept").unwrap();

    // Interrupted after 3 records (the store's transaction failed).
    let snapshot = store.clone();
    let mut n = 0;
    let e = migrate_root(&keyring, target, &snapshot, |r| {
        if n == 3 {
            return Err(Error::ApiMisuse("simulated crash"));
        }
        n += 1;
        store_put(&mut store, r);
        Ok(())
    })
    .await
    .unwrap_err();
    assert!(matches!(e, Error::ApiMisuse("simulated crash")));
    let moved =
        store.iter().filter(|r| r.wrapped.as_ref().is_some_and(|w| w.root_key_id == target.root_key_id()));
    assert_eq!(moved.count(), 3);

    // Resumed: the three are skipped, the rest done.
    let snapshot = store.clone();
    let report = migrate_root(&keyring, target, &snapshot, |r| {
        store_put(&mut store, r);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!((report.rewrapped, report.already_done, report.destroyed), (4, 3, 1));
    // Idempotent: nothing left.
    let report = migrate_root(&keyring, target, &store, |_| panic!("nothing to do")).await.unwrap();
    assert_eq!((report.rewrapped, report.already_done), (0, 7));
    assert_eq!(store[0].state, KeyState::Destroyed);
    assert!(store[0].wrapped.is_none());

    // The keyring is no longer needed to read: the target alone opens old data.
    let set: Vec<DomainKeyRecord> =
        store.iter().filter(|r| r.tenant == t && r.domain == d).cloned().collect();
    let keys = DomainKeySet::unwrap(target, &set).await.unwrap();
    assert_eq!(keys.open(&ctx, &sealed).unwrap().expose_secret(), b"kept");
    assert!(DomainKeySet::unwrap(&keyring, &set).await.is_err());

    // And back to (another) keyring.
    let keyring2 = LocalKeyring::generate(0).unwrap();
    let snapshot = store.clone();
    let report = migrate_root(target, &keyring2, &snapshot, |r| {
        store_put(&mut store, r);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(report.rewrapped, 7);
    let set: Vec<DomainKeyRecord> =
        store.iter().filter(|r| r.tenant == t && r.domain == d).cloned().collect();
    let keys = DomainKeySet::unwrap(&keyring2, &set).await.unwrap();
    assert_eq!(keys.open(&ctx, &sealed).unwrap().expose_secret(), b"kept");
}

#[tokio::test]
async fn keyring_to_azure_key_vault_and_back() {
    let (p, _s) = azure_provider(false).await;
    there_and_back(&p).await;
}

#[tokio::test]
async fn keyring_to_aws_kms_and_back() {
    let Some((p, _, _)) = aws_provider().await else { return };
    there_and_back(&p).await;
}

#[tokio::test]
async fn migration_stops_on_a_provider_failure_and_changes_nothing() {
    let (p, s) = azure_provider(false).await;
    let keyring = LocalKeyring::generate(0).unwrap();
    let store = records(&keyring).await;
    s.with(|st| st.revoked = Some(403));
    let mut persisted = 0;
    let e = migrate_root(&keyring, &p, &store, |_| {
        persisted += 1;
        Ok(())
    })
    .await
    .unwrap_err();
    assert_eq!(kind_of(&e), Some(kluis_core::ProviderErrorKind::Unauthorized), "{e:?}");
    assert_eq!(persisted, 0);
}

#[tokio::test]
async fn records_under_an_older_version_of_the_target_are_moved_by_the_target() {
    // Half-way through keyring → Key Vault, the Key Vault key is rotated: records already under
    // its old version are rewrapped by Key Vault itself, the rest by the keyring.
    let (p, s) = azure_provider(false).await;
    let keyring = LocalKeyring::generate(0).unwrap();
    let mut store = records(&keyring).await;
    let snapshot = store.clone();
    let mut n = 0;
    let _ = migrate_root(&keyring, &p, &snapshot, |r| {
        if n == 2 {
            return Err(Error::ApiMisuse("simulated crash"));
        }
        n += 1;
        store_put(&mut store, r);
        Ok(())
    })
    .await
    .unwrap_err();
    s.with(|st| st.add_version(KV_KEY, false));
    let snapshot = store.clone();
    let report = migrate_root(&keyring, &p, &snapshot, |r| {
        store_put(&mut store, r);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!((report.rewrapped, report.already_done), (7, 0));
    assert!(store.iter().filter_map(|r| r.wrapped.as_ref()).all(|w| w.root_version == kv(2)));
}
