//! `kluis keys rotate-root` with an application instance running: the new root key version is
//! staged in the keyring file and not activated while the instance (reporting, on its own copy of
//! the keyring file) lacks it; `kluis keys instances` shows what it holds; once the instance has
//! the new file, a second `rotate-root` activates the staged version and rewraps, and the
//! instance reads on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{Data, PASSPHRASE, kluis, kv, run_ok};
use kluis_core::DomainName;
use kluis_core::keys::RootKeyProvider;
use kluis_keyring::KeyringFile;
use kluis_store::{NewRecord, Schema, Sqlite, Store, Value};

const CANARY: &str = "activation-canary-hernia";

/// The application: its own store on the same database, reporting, with the keyring loaded
/// from its own copy of the file.
async fn app(
    dir: &std::path::Path,
    keyring_copy: &std::path::Path,
) -> (Store<Sqlite>, kluis_core::LocalKeyring) {
    let secret = kluis_cli::config::keyring_secret(&zeroize::Zeroizing::new(PASSPHRASE.to_owned()));
    let keyring = KeyringFile::open(keyring_copy, secret).unwrap().into_keyring();
    let schema = Schema::from_toml(&std::fs::read_to_string(dir.join("schema.toml")).unwrap()).unwrap();
    let store = Store::new(Sqlite::open(&dir.join("kluis.sqlite")).await.unwrap(), schema)
        .with_instance_reports("verzuim-app vm-2")
        .unwrap();
    (store, keyring)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_waits_for_the_running_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = Data::create(dir).await;
    drop(data);
    // The application starts on a copy of today's keyring file and writes a record.
    let copy = dir.join("app-keyring.kr");
    std::fs::copy(dir.join("keyring.kr"), &copy).unwrap();
    let (app_store, app_keys) = app(dir, &copy).await;
    let both = [DomainName::general(), DomainName::medical()];
    let tenant = kluis_core::TenantId::new("acme").unwrap();
    let a = app_store.admin_access(&app_keys, &tenant, &both).await.unwrap();
    let rec = NewRecord::new("emp-7")
        .set("start_date", Value::Date("2025-03-01".into()))
        .set("reported_by", "HR")
        .set("diagnosis", CANARY)
        .id("abs-7");
    app_store.insert(&a, "absence", rec).await.unwrap();

    // rotate-root: v2 is made, and refused activation, naming the instance.
    let out = kluis(dir, &["keys", "rotate-root"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("root key v2 is new in the keyring file but not active"), "{err}");
    assert!(err.contains("verzuim-app vm-2") && err.contains("holds v1"), "{err}");
    // The instance keeps working with its older file.
    let a = app_store.admin_access(&app_keys, &tenant, &both).await.unwrap();
    assert!(app_store.get(&a, "absence", "abs-7").await.unwrap().is_some());

    // The operator looks at what the instances hold.
    let out = run_ok(dir, &["keys", "instances"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("active root key version v1"), "{text}");
    assert!(text.contains("verzuim-app vm-2") && text.contains("holds v1"), "{text}");
    let out = run_ok(dir, &["--json", "keys", "instances"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["active_root_version"], 1);
    assert_eq!(j["instances"][0]["holds"], "v1");

    // A second run before the instance has the file: still refused, the version stays staged
    // (no third version is made).
    let out = kluis(dir, &["keys", "rotate-root"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("root key v2 is staged"), "{err}");

    // The instance gets the new file (a restart would do; here it reloads) and reports.
    std::fs::copy(dir.join("keyring.kr"), &copy).unwrap();
    let secret = kluis_cli::config::keyring_secret(&zeroize::Zeroizing::new(PASSPHRASE.to_owned()));
    let app_keys = KeyringFile::open(&copy, secret).unwrap().into_keyring();
    assert_eq!(app_keys.held_versions(), Some(vec![kv(1), kv(2)]));
    app_store.report_instance(&app_keys).await.unwrap();

    let out = run_ok(dir, &["keys", "rotate-root"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("staged root key v2 activated"), "{text}");
    let out = run_ok(dir, &["--json", "keys", "instances"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["active_root_version"], 2);

    // Every domain key is under v2 now, and the instance opens the record with its file.
    let a = app_store.admin_access(&app_keys, &tenant, &both).await.unwrap();
    let r = app_store.get(&a, "absence", "abs-7").await.unwrap().unwrap();
    assert_eq!(r.get("diagnosis"), Some(&Value::Text(CANARY.into())));
    let keys = app_store.all_domain_key_records().await.unwrap();
    assert!(keys.iter().filter_map(|k| k.wrapped.as_ref()).all(|w| w.root_version == kv(2)));
    app_store.pool().close().await;
}
