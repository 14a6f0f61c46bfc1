//! Shared helpers: a data directory made by the real binary, opened in-process through the
//! library with the same parts the binary uses.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use kluis_blob::catalog::Documents;
use kluis_blob::{DocumentVault, LocalDir};
use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_store::{Access, Schema, Sqlite, Store};

pub const PASSPHRASE: &str = "crash test passphrase, not secret";

pub fn kluis(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kluis"));
    c.arg("--data-dir").arg(dir).args(args).env("KLUIS_PASSPHRASE", PASSPHRASE).env_remove("KLUIS_DATA_DIR");
    c
}

pub fn run_ok(dir: &Path, args: &[&str]) -> Output {
    let out = kluis(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "kluis {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub struct Data {
    pub dir: PathBuf,
    pub store: Arc<Store<Sqlite>>,
    pub docs: Documents<Sqlite, LocalDir>,
    pub keyring: LocalKeyring,
    pub tenant: TenantId,
}

impl Data {
    /// `kluis init` and `kluis tenant add acme` through the binary, then the parts in-process.
    pub async fn create(dir: &Path) -> Self {
        run_ok(dir, &["init"]);
        run_ok(dir, &["tenant", "add", "acme"]);
        Self::open(dir).await
    }

    pub async fn open(dir: &Path) -> Self {
        let secret = kluis_cli::config::keyring_secret(&zeroize::Zeroizing::new(PASSPHRASE.to_owned()));
        let keyring =
            kluis_keyring::KeyringFile::open(dir.join("keyring.kr"), secret).unwrap().into_keyring();
        let schema = Schema::from_toml(&std::fs::read_to_string(dir.join("schema.toml")).unwrap()).unwrap();
        let store = Arc::new(Store::new(Sqlite::open(&dir.join("kluis.sqlite")).await.unwrap(), schema));
        store.migrate().await.unwrap();
        let blobs = LocalDir::open(dir.join("blobs")).await.unwrap();
        let docs = Documents::new(Arc::clone(&store), DocumentVault::new(blobs));
        Self { dir: dir.to_owned(), store, docs, keyring, tenant: TenantId::new("acme").unwrap() }
    }

    pub async fn access(&self) -> Access {
        self.store
            .unlock(&self.keyring, &self.tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap()
    }
}

/// A random u64 (for random kill moments and test data).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}
