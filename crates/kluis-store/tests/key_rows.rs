//! Domain key rows and the keyring generation record edited by raw SQL, as a DBA could, on every
//! engine: a version promoted, demoted, revived, deleted or added, a state tag removed or copied,
//! the generation record deleted, replayed or copied, an older keyring: each is refused with a
//! typed error naming what was altered, and the rest of the tenant keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{Bind, Harness, Raw, all_engines, kv, t};
use kluis_core::{DomainName, Error as CoreError, TenantId};
use kluis_store::Engine;
use kluis_store::{NewRecord, Store, StoreError, Value};

fn absence(subject: &str, diagnosis: &str) -> NewRecord {
    NewRecord::new(subject)
        .set("start_date", Value::Date("2025-03-01".into()))
        .set("employee_number", "E1")
        .set("diagnosis", diagnosis)
}

/// (state, wrapped, tag) of one domain key row, as stored (empty bytes for NULL).
async fn row<B: Engine>(
    s: &Store<B>,
    tenant: &str,
    domain: &str,
    version: i64,
) -> Option<(String, Vec<u8>, Vec<u8>)>
where
    Store<B>: Raw,
{
    let sel = |col: &str| {
        format!(
            "SELECT {col} FROM kluis_domain_keys WHERE tenant = ? AND domain = ? AND version = {version} AND {col} IS NOT NULL"
        )
    };
    let state = s.raw_bytes(&sel("state"), vec![t(tenant), t(domain)]).await.pop()?;
    let wrapped = s.raw_bytes(&sel("wrapped"), vec![t(tenant), t(domain)]).await.pop().unwrap_or_default();
    let tag = s.raw_bytes(&sel("tag"), vec![t(tenant), t(domain)]).await.pop().unwrap_or_default();
    Some((String::from_utf8(state).unwrap(), wrapped, tag))
}

async fn set_state<B: Engine>(s: &Store<B>, version: i64, state: &str)
where
    Store<B>: Raw,
{
    let n = s
        .raw_exec(
            &format!("UPDATE kluis_domain_keys SET state = ? WHERE tenant = 'acme' AND domain = 'medical' AND version = {version}"),
            vec![t(state)],
        )
        .await;
    assert_eq!(n, 1);
}

/// Unlocking medical fails with a key integrity error that names `row` (`acme/medical vN`).
async fn refused<B: Engine>(h: &Harness<B>, row: &str) {
    let e = h.store.admin_access(&h.keyring, &h.tenant, &[DomainName::medical()]).await.unwrap_err();
    match &e {
        StoreError::KeyIntegrity { what } => assert!(what.contains(row), "{what} should name {row}"),
        other => panic!("expected a key integrity error naming {row}, got {other:?}"),
    }
    // The tenant's other domain, and other tenants, keep working.
    h.store.admin_access(&h.keyring, &h.tenant, &[DomainName::general()]).await.unwrap();
    h.store
        .admin_access(&h.keyring, &TenantId::new("globex").unwrap(), &[DomainName::medical()])
        .await
        .unwrap();
}

async fn rotated<B: Engine>(h: &mut Harness<B>)
where
    Store<B>: Raw,
{
    let med = DomainName::medical();
    h.store.insert(&h.doctor, "absence", absence("emp-1", "burn-out").id("a1")).await.unwrap();
    h.store.rotate_domain_key(&h.keyring, &h.tenant, &med).await.unwrap();
    h.refresh().await;
    assert_eq!(row(&h.store, "acme", "medical", 1).await.unwrap().0, "decrypt-only");
    assert_eq!(row(&h.store, "acme", "medical", 2).await.unwrap().0, "active");
}

/// A DBA makes the old version active again (and the new one decrypt-only), so new values would
/// be sealed under the key the rotation retired: refused.
async fn promote_and_demote<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    rotated(&mut h).await;
    set_state(&h.store, 2, "decrypt-only").await;
    set_state(&h.store, 1, "active").await;
    refused(&h, "acme/medical v").await;
    // Only promoting v1 (two active versions) is refused too.
    set_state(&h.store, 2, "active").await;
    let e = h.store.admin_access(&h.keyring, &h.tenant, &[DomainName::medical()]).await.unwrap_err();
    assert!(matches!(e, StoreError::KeyIntegrity { .. }), "{e:?}");
    // Put back: works again.
    set_state(&h.store, 1, "decrypt-only").await;
    h.refresh().await;
    let r = h.store.get(&h.doctor, "absence", "a1").await.unwrap().unwrap();
    assert_eq!(r.get("diagnosis"), Some(&Value::from("burn-out")));
    h
}

/// Only demoting the active version (no active version left) is refused.
async fn demote_only<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    rotated(&mut h).await;
    set_state(&h.store, 2, "decrypt-only").await;
    refused(&h, "acme/medical v").await;
    h
}

/// A destroyed version revived with the row it had before it was destroyed (from a backup).
async fn revive_destroyed<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let med = DomainName::medical();
    h.store.rotate_domain_key(&h.keyring, &h.tenant, &med).await.unwrap();
    let (state, wrapped, tag) = row(&h.store, "acme", "medical", 1).await.unwrap();
    assert_eq!(state, "decrypt-only");
    h.store.retire_domain_version(&h.keyring, &h.tenant, &med, kv(1)).await.unwrap();
    assert_eq!(row(&h.store, "acme", "medical", 1).await.unwrap().0, "destroyed");
    h.refresh().await;
    let n = h
        .store
        .raw_exec(
            "UPDATE kluis_domain_keys SET state = 'decrypt-only', wrapped = ?, tag = ? \
             WHERE tenant = 'acme' AND domain = 'medical' AND version = 1",
            vec![Bind::Bytes(wrapped), Bind::Bytes(tag)],
        )
        .await;
    assert_eq!(n, 1);
    refused(&h, "acme/medical v").await;
    h
}

/// A decrypt-only version's row deleted, or a version row added.
async fn delete_or_add_version<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    rotated(&mut h).await;
    let (state, wrapped, tag) = row(&h.store, "acme", "medical", 1).await.unwrap();
    let del = "DELETE FROM kluis_domain_keys WHERE tenant = 'acme' AND domain = 'medical' AND version = 1";
    assert_eq!(h.store.raw_exec(del, vec![]).await, 1);
    refused(&h, "acme/medical v2").await;
    // Put it back: works again.
    let ins = "INSERT INTO kluis_domain_keys (tenant, domain, version, state, wrapped, tag) \
               VALUES ('acme', 'medical', 1, ?, ?, ?)";
    h.store.raw_exec(ins, vec![t(&state), Bind::Bytes(wrapped), Bind::Bytes(tag)]).await;
    h.refresh().await;
    // A destroyed version 3 that never was (no wrap, no tag): the set changed.
    let add = "INSERT INTO kluis_domain_keys (tenant, domain, version, state, wrapped, tag) \
               VALUES ('acme', 'medical', 3, 'destroyed', NULL, NULL)";
    h.store.raw_exec(add, vec![]).await;
    refused(&h, "acme/medical v").await;
    h
}

/// A state tag removed, or copied from another tenant's row of the same version.
async fn tag_removed_or_copied<B: Engine>(h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    h.store
        .admin_access(&h.keyring, &TenantId::new("globex").unwrap(), &[DomainName::medical()])
        .await
        .unwrap();
    let (_, _, acme_tag) = row(&h.store, "acme", "medical", 1).await.unwrap();
    let (_, _, globex_tag) = row(&h.store, "globex", "medical", 1).await.unwrap();
    let upd =
        "UPDATE kluis_domain_keys SET tag = ? WHERE tenant = 'acme' AND domain = 'medical' AND version = 1";
    h.store.raw_exec(upd, vec![Bind::Bytes(globex_tag)]).await;
    refused(&h, "acme/medical v1").await;
    let null = "UPDATE kluis_domain_keys SET tag = NULL WHERE tenant = 'acme' AND domain = 'medical' AND version = 1";
    h.store.raw_exec(null, vec![]).await;
    refused(&h, "acme/medical v1").await;
    h.store.raw_exec(upd, vec![Bind::Bytes(acme_tag)]).await;
    h.store.admin_access(&h.keyring, &h.tenant, &[DomainName::medical()]).await.unwrap();
    h
}

/// The recorded keyring generation: first use records it; a keyring older than the record, the
/// record deleted, an older record put back, a record copied from another database: refused.
async fn generation_record<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let read = "SELECT value FROM kluis_meta WHERE name = 'keyring_generation'";
    // The harness's first unlock recorded generation 0.
    let g0 = h.store.raw_bytes(read, vec![]).await.pop().expect("recorded at first use");
    // The keyring moves on (as a root rotation writes it) and the change is recorded.
    h.keyring.set_generation(5);
    let e = h.store.admin_access(&h.keyring, &h.tenant, &[DomainName::medical()]).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Core(CoreError::DatabaseBehindKeyring { keyring: 5, database: 0 })),
        "{e:?}"
    );
    h.store.record_keyring_generation(&h.keyring).await.unwrap();
    h.refresh().await;
    let g5 = h.store.raw_bytes(read, vec![]).await.pop().unwrap();
    // An older keyring put back: refused at unlock, and by every other unwrapping operation.
    h.keyring.set_generation(4);
    for e in [
        h.store.admin_access(&h.keyring, &h.tenant, &[DomainName::general()]).await.err(),
        h.store.key_set(&h.keyring, &h.tenant, &DomainName::general()).await.err(),
        h.store.rotate_domain_key(&h.keyring, &h.tenant, &DomainName::general()).await.err(),
        h.store.rewrap_domain_keys(&h.keyring).await.err(),
    ] {
        assert!(
            matches!(e, Some(StoreError::Core(CoreError::KeyringRollback { keyring: 4, database: 5 }))),
            "{e:?}"
        );
    }
    assert!(h.store.record_keyring_generation(&h.keyring).await.is_err(), "a rollback is never recorded");
    h.keyring.set_generation(5);
    h.refresh().await;
    // The record deleted: refused (a database that holds keys must have one).
    let upd = "UPDATE kluis_meta SET value = ? WHERE name = 'keyring_generation'";
    h.store.raw_exec("DELETE FROM kluis_meta WHERE name = 'keyring_generation'", vec![]).await;
    let e = h.store.admin_access(&h.keyring, &h.tenant, &[DomainName::general()]).await.unwrap_err();
    assert!(matches!(e, StoreError::MetadataMissing("keyring_generation")), "{e:?}");
    // An older record put back (with the keyring rolled back to match, the pair is consistent:
    // SECURITY.md); with the current keyring it is refused.
    let ins = "INSERT INTO kluis_meta (name, value) VALUES ('keyring_generation', ?)";
    h.store.raw_exec(ins, vec![Bind::Bytes(g0.clone())]).await;
    let e = h.store.admin_access(&h.keyring, &h.tenant, &[DomainName::general()]).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Core(CoreError::DatabaseBehindKeyring { keyring: 5, database: 0 })),
        "{e:?}"
    );
    // A record sealed for another database (its own metadata key): refused as tampered.
    let other = common::sqlite().await.unwrap();
    let foreign = other.store.raw_bytes(read, vec![]).await.pop().unwrap();
    h.store.raw_exec(upd, vec![Bind::Bytes(foreign)]).await;
    let e = h.store.admin_access(&h.keyring, &h.tenant, &[DomainName::general()]).await.unwrap_err();
    assert!(matches!(e, StoreError::MetadataTampered("keyring_generation")), "{e:?}");
    // The right record back: works.
    h.store.raw_exec(upd, vec![Bind::Bytes(g5)]).await;
    h.refresh().await;
    common::drop_db(other).await;
    h
}

all_engines!(
    promote_and_demote,
    demote_only,
    revive_destroyed,
    delete_or_add_version,
    tag_removed_or_copied,
    generation_record
);
