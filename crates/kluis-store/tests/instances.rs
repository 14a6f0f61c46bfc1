//! A new root key version becomes active only when every running instance holds it, on every
//! engine: an application instance (its own `Store` with reports enabled, on a copy of the
//! keyring file) keeps working while the operator stages a new version; activation is refused,
//! naming the instance, until the instance holds the new file; new keys are never wrapped under
//! a version that is not active; after activation the instance opens every rewrapped key and an
//! older keyring file is refused. Reports older than the window are ignored, unreadable ones
//! block, and the keyring record cannot be edited in clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Bind, Harness, Raw, all_engines, kv, t};
use kluis_core::keys::RootKeyProvider;
use kluis_core::{DomainName, Error as CoreError, KeyringSecret, LocalKeyring, Suite, TenantId};
use kluis_store::{DEFAULT_INSTANCE_WINDOW, Engine, Held, NewRecord, Store, StoreError, Value};

const CANARY: &str = "instances-canary-burn-out";

fn secret() -> KeyringSecret {
    KeyringSecret::RawKey(kluis_core::KeyMaterial::from_bytes([7u8; 32]))
}

/// Writes `k` as a keyring file would be (its generation rises) and returns the file's bytes.
fn save(k: &mut LocalKeyring) -> Vec<u8> {
    let (bytes, g) = k.to_file_bytes(&secret(), Suite::default()).unwrap();
    k.set_generation(g);
    bytes
}

/// The keyring an instance loads from a copy of the file.
fn load(bytes: &[u8]) -> LocalKeyring {
    LocalKeyring::from_file_bytes(bytes, &secret()).unwrap()
}

fn both() -> [DomainName; 2] {
    [DomainName::general(), DomainName::medical()]
}

async fn activation<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    // The operator's keyring is written to its file; the database records that generation.
    let file1 = save(&mut h.keyring);
    h.store.record_keyring_generation(&h.keyring).await.unwrap();
    let rec = h.store.keyring_record(&h.keyring).await.unwrap().unwrap();
    assert_eq!((rec.newest, rec.floor, rec.active), (1, 1, Some(kv(1))));

    // An application instance on a copy of that file, reporting.
    let app_keys = load(&file1);
    let app =
        Store::new(h.store.pool().clone(), common::schema()).with_instance_reports("hr-app vm-1").unwrap();
    let a = app.admin_access(&app_keys, &h.tenant, &both()).await.unwrap();
    app.insert(&a, "absence", absence("emp-1", CANARY).id("abs-1")).await.unwrap();
    let seen = h.store.instances(DEFAULT_INSTANCE_WINDOW).await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].id, app.instance_id().unwrap());
    assert_eq!(seen[0].label, "hr-app vm-1");
    assert_eq!((seen[0].generation, seen[0].held.clone()), (Some(1), Held::Versions(vec![kv(1)])));
    // At most one report a minute from unlocks: the row deleted, another unlock does not write it
    // again; a report on demand does, and deletes reports not renewed for a week.
    let week_old = kluis_keyring::unix_now() - 8 * 86_400;
    h.store
        .raw_exec(
            &format!(
                "INSERT INTO kluis_instances (id, label, root_key_id, generation, versions, seen_at) \
                 VALUES ('stale', 'old vm', 'keyring', 1, '1', {week_old})"
            ),
            vec![],
        )
        .await;
    h.store.raw_exec("DELETE FROM kluis_instances WHERE id <> 'stale'", vec![]).await;
    app.admin_access(&app_keys, &h.tenant, &both()).await.unwrap();
    assert!(h.store.instances(DEFAULT_INSTANCE_WINDOW).await.unwrap().is_empty(), "not due yet");
    app.report_instance(&app_keys).await.unwrap();
    assert_eq!(h.store.instances(DEFAULT_INSTANCE_WINDOW).await.unwrap().len(), 1);
    let all = h.store.instances(Duration::from_secs(30 * 86_400)).await.unwrap();
    assert!(all.iter().all(|i| i.id != "stale"), "a week-old report is deleted: {all:?}");

    // Stage: a new root version, primary in the operator's file, recorded but not active.
    h.keyring.rotate(1).unwrap();
    let file2 = save(&mut h.keyring);
    h.store.record_keyring_generation(&h.keyring).await.unwrap();
    let rec = h.store.keyring_record(&h.keyring).await.unwrap().unwrap();
    assert_eq!(
        (rec.newest, rec.floor, rec.active),
        (2, 1, Some(kv(1))),
        "the running instance keeps working"
    );

    // The instance with the older file keeps reading and writing, and makes new keys (v1 is active).
    let a = app.admin_access(&app_keys, &h.tenant, &both()).await.unwrap();
    assert_eq!(diagnosis(&app, &a, "abs-1").await, CANARY);
    app.admin_access(&app_keys, &TenantId::new("beta").unwrap(), &both()).await.unwrap();

    // Nothing is wrapped under the staged version: not a new domain key, a rotation or a rewrap.
    let not_active = |e: StoreError| matches!(e, StoreError::RootVersionNotActive { primary, active } if primary == kv(2) && active == kv(1));
    let e = h.store.admin_access(&h.keyring, &TenantId::new("gamma").unwrap(), &both()).await.unwrap_err();
    assert!(not_active(e));
    let e = h.store.rotate_domain_key(&h.keyring, &h.tenant, &DomainName::medical()).await.unwrap_err();
    assert!(not_active(e));
    let e = h.store.rewrap_domain_keys(&h.keyring).await.unwrap_err();
    assert!(not_active(e));
    // Reading with the new file works (it holds v1 too).
    h.refresh().await;

    // Activation is refused while the instance lacks v2, naming it; nothing changes.
    let e = h.store.activate_root_version(&h.keyring, DEFAULT_INSTANCE_WINDOW).await.unwrap_err();
    match &e {
        StoreError::RootVersionNotHeld { version, instances } => {
            assert_eq!(*version, kv(2));
            assert_eq!(instances.len(), 1);
            assert!(
                instances[0].contains("hr-app vm-1") && instances[0].contains("holds v1"),
                "{instances:?}"
            );
        }
        other => panic!("expected RootVersionNotHeld, got {other:?}"),
    }
    assert!(e.to_string().contains("hr-app vm-1"), "{e}");
    assert_eq!(h.store.keyring_record(&h.keyring).await.unwrap().unwrap().active, Some(kv(1)));

    // The instance gets the new file and reports; activation goes through.
    let app_keys = load(&file2);
    app.report_instance(&app_keys).await.unwrap();
    assert_eq!(h.store.activate_root_version(&h.keyring, DEFAULT_INSTANCE_WINDOW).await.unwrap(), kv(2));
    let rec = h.store.keyring_record(&h.keyring).await.unwrap().unwrap();
    assert_eq!((rec.newest, rec.floor, rec.active), (2, 2, Some(kv(2))));
    let n = h.store.rewrap_domain_keys(&h.keyring).await.unwrap();
    assert!(n >= 5, "acme's two keys and row tag key, beta's keys, the metadata key: {n}");
    let left = h.store.all_domain_key_records().await.unwrap();
    assert!(left.iter().filter_map(|r| r.wrapped.as_ref()).all(|w| w.root_version == kv(2)));

    // The instance opens everything under v2 and makes new keys under v2.
    let a = app.admin_access(&app_keys, &h.tenant, &both()).await.unwrap();
    assert_eq!(diagnosis(&app, &a, "abs-1").await, CANARY);
    app.admin_access(&app_keys, &TenantId::new("gamma").unwrap(), &both()).await.unwrap();
    let gamma = h.store.all_domain_key_records().await.unwrap();
    assert!(
        gamma.iter().filter(|r| r.tenant.as_str() == "gamma").all(|r| r
            .wrapped
            .as_ref()
            .unwrap()
            .root_version
            == kv(2))
    );

    // Domain key versions need no activation: an Access is unwrapped from the database's rows
    // when it is made. One kept from before a domain rotation meets a key of the new version with
    // a typed error; a fresh one opens it.
    let kept = app.admin_access(&app_keys, &h.tenant, &both()).await.unwrap();
    h.store.rotate_domain_key(&h.keyring, &h.tenant, &DomainName::medical()).await.unwrap();
    h.refresh().await;
    h.store.insert(&h.doctor, "absence", absence("emp-new", CANARY).id("abs-new")).await.unwrap();
    let e = app.get(&kept, "absence", "abs-new").await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert!(
        matches!(&e, StoreError::KeyChanged { what } if what.contains("medical v2") && what.contains("unlock again")),
        "{e:?}"
    );
    let fresh = app.admin_access(&app_keys, &h.tenant, &both()).await.unwrap();
    assert_eq!(diagnosis(&app, &fresh, "abs-new").await, CANARY);

    // An instance starting with the file from before the new version: refused (it could not open
    // the keys), as a rollback below the floor.
    let stale = Store::new(h.store.pool().clone(), common::schema());
    let e = stale.admin_access(&load(&file1), &h.tenant, &both()).await.unwrap_err();
    assert!(matches!(e, StoreError::Core(CoreError::KeyringRollback { keyring: 1, database: 2 })), "{e:?}");
    app.pool().close().await;
    h
}

/// Reports outside the window are ignored; an unreadable one blocks; a KMS-like report (no
/// versions) holds every version; the record's clear part cannot be edited.
async fn reports<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    save(&mut h.keyring);
    h.store.record_keyring_generation(&h.keyring).await.unwrap();
    let now = kluis_keyring::unix_now();
    let ins = |id: &str, versions: &str, seen: i64| {
        format!(
            "INSERT INTO kluis_instances (id, label, root_key_id, generation, versions, seen_at) VALUES ('{id}', ?, 'keyring', 1, {versions}, {seen})"
        )
    };
    h.store.raw_exec(&ins("gone", "'1'", now - 3_600), vec![t("old vm")]).await;
    h.store.raw_exec(&ins("kms", "NULL", now), vec![t("kms app")]).await;
    h.keyring.rotate(1).unwrap();
    save(&mut h.keyring);
    h.store.record_keyring_generation(&h.keyring).await.unwrap();
    // The report from an hour ago is outside the window, and the KMS one holds every version.
    let listed = h.store.instances(DEFAULT_INSTANCE_WINDOW).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].held, Held::Every);
    assert_eq!(h.store.instances(Duration::from_secs(7_200)).await.unwrap().len(), 2);

    // An edited report (versions not numbers) blocks activation: it holds nothing.
    h.store.raw_exec(&ins("edited", "'1,x'", now), vec![t("edited vm")]).await;
    let e = h.store.activate_root_version(&h.keyring, DEFAULT_INSTANCE_WINDOW).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::RootVersionNotHeld { instances, .. } if instances.len() == 1 && instances[0].contains("unreadable")),
        "{e:?}"
    );
    h.store.raw_exec("DELETE FROM kluis_instances WHERE id = 'edited'", vec![]).await;
    // The wide window sees the old report and waits for it; the default one goes through.
    let e = h.store.activate_root_version(&h.keyring, Duration::from_secs(7_200)).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::RootVersionNotHeld { instances, .. } if instances[0].contains("old vm")),
        "{e:?}"
    );
    h.store.activate_root_version(&h.keyring, DEFAULT_INSTANCE_WINDOW).await.unwrap();
    h.store.rewrap_domain_keys(&h.keyring).await.unwrap();
    h.refresh().await;

    // The record's clear floor lowered by a DBA (to let an older keyring in): tampered.
    let read = "SELECT value FROM kluis_meta WHERE name = 'keyring_generation'";
    let upd = "UPDATE kluis_meta SET value = ? WHERE name = 'keyring_generation'";
    let good = h.store.raw_bytes(read, vec![]).await.pop().unwrap();
    assert_eq!(good[0], 0x02, "format 2");
    let mut edited = good.clone();
    edited[1 + 8 + 7] = 0; // floor 2 -> 0
    h.store.raw_exec(upd, vec![Bind::Bytes(edited)]).await;
    let e = h.store.admin_access(&h.keyring, &h.tenant, &both()).await.unwrap_err();
    assert!(matches!(e, StoreError::MetadataTampered("keyring_generation")), "{e:?}");
    // The active version edited in clear: tampered too.
    let mut edited = good.clone();
    edited[1 + 16 + 3] = 1; // active v2 -> v1
    h.store.raw_exec(upd, vec![Bind::Bytes(edited)]).await;
    let e = h.store.admin_access(&h.keyring, &h.tenant, &both()).await.unwrap_err();
    assert!(matches!(e, StoreError::MetadataTampered("keyring_generation")), "{e:?}");
    h.store.raw_exec(upd, vec![Bind::Bytes(good)]).await;
    h.refresh().await;

    // A label with a control character is refused.
    let e = Store::new(h.store.pool().clone(), common::schema()).with_instance_reports("a\nb").err();
    assert!(matches!(e, Some(StoreError::Invalid(_))), "{e:?}");
    // Reporting without reports enabled is refused.
    assert!(matches!(h.store.report_instance(&h.keyring).await, Err(StoreError::Invalid(_))));
    assert_eq!(h.keyring.primary_version().await.unwrap(), kv(2));
    h
}

fn absence(subject: &str, diagnosis: &str) -> NewRecord {
    NewRecord::new(subject)
        .set("start_date", Value::Date("2025-03-01".into()))
        .set("employee_number", "E1")
        .set("diagnosis", diagnosis)
}

async fn diagnosis<B: Engine>(s: &Store<B>, a: &kluis_store::Access, id: &str) -> String {
    let r = s.get(a, "absence", id).await.unwrap().unwrap();
    match r.get("diagnosis") {
        Some(Value::Text(t)) => t.clone(),
        other => panic!("diagnosis: {other:?}"),
    }
}

all_engines!(activation, reports);
