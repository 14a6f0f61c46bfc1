//! The SQLite database files are private to their owner (issue 14): `Sqlite::open` creates
//! the database file with mode 0600, and SQLite gives the `-wal` and `-shm` files its mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[cfg(unix)]
#[tokio::test]
async fn a_new_database_and_its_wal_and_shm_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.sqlite");
    let backend = kluis_store::Sqlite::open(&file).await.unwrap();
    let store = kluis_store::Store::new(backend, kluis_store::Schema::default());
    store.migrate().await.unwrap();
    // The pool is open and has written: all three files exist.
    for name in ["k.sqlite", "k.sqlite-wal", "k.sqlite-shm"] {
        let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}: mode {mode:o}");
    }
    drop(store);
    // An existing file keeps the mode its owner gave it.
    let other = dir.path().join("shared.sqlite");
    std::fs::write(&other, b"").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o640)).unwrap();
    let backend = kluis_store::Sqlite::open(&other).await.unwrap();
    drop(backend);
    assert_eq!(std::fs::metadata(&other).unwrap().permissions().mode() & 0o777, 0o640);
}
