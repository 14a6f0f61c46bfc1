//! Shared test support: keys, content, backends (a temp directory; the same with
//! `Publish::ClaimRename`; a folder on the SMB test share; Azurite via a locally signed account
//! SAS), and storage-level access for tamper tests.
#![allow(dead_code, missing_debug_implementations)]
// Test support: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use hmac::{KeyInit, Mac};
use kluis_blob::azure::{AzureBlob, AzureOptions};
use kluis_blob::{BlobBackend, DocumentVault, LocalDir, ObjectName, Publish, Upload, VaultOptions};
use kluis_core::document::DocumentOptions;
use kluis_core::{
    Backend, DocumentMetadata, DomainKeySet, DomainName, KeyMaterial, KeyState, Suite, TenantId,
};

/// Key version `n` (from 1).
pub fn kv(n: u32) -> kluis_core::KeyVersion {
    kluis_core::KeyVersion::new(n).unwrap()
}

/// The Azurite account and its well-known key (public, emulator only).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub fn keys(tenant: &str, domain: DomainName) -> DomainKeySet {
    DomainKeySet::from_keys(
        TenantId::new(tenant).unwrap(),
        domain,
        vec![(kv(1), KeyState::Active, KeyMaterial::generate().unwrap())],
        Suite::default(),
        Backend::preferred(),
    )
    .unwrap()
}

pub fn medical() -> DomainKeySet {
    keys("acme", DomainName::medical())
}

pub fn meta(file_name: &str, length: Option<u64>) -> DocumentMetadata {
    let extension = file_name.rsplit_once('.').map(|(_, e)| e.to_owned()).unwrap_or_default();
    DocumentMetadata {
        file_name: file_name.to_owned(),
        extension,
        content_type: "application/pdf".to_owned(),
        length,
        created_unix: 1_760_000_000,
        uploaded_by: "hr-user-17".to_owned(),
    }
}

/// Deterministic pseudo-random content.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Small chunks (4 KiB), reads of three chunks, so tests cross chunk and read boundaries.
pub fn test_options() -> VaultOptions {
    let doc = DocumentOptions { chunk_log2: 12, ..DocumentOptions::default() };
    VaultOptions::default().with_document(doc).with_read_size(3 * (4096 + 16))
}

/// Backend write buffers / Azure blocks in tests: 10 000 bytes, not a multiple of a chunk, so
/// uploads cross many buffer boundaries.
pub const TEST_WRITE_BUFFER: usize = 10_000;

/// A backend under test plus what tests need to look behind it.
pub struct Harness<B> {
    pub vault: DocumentVault<B>,
    /// The folder holding everything the backend stored (for canary scans).
    pub storage_dir: PathBuf,
    kind: Kind,
    _tmp: Option<tempfile::TempDir>,
}

enum Kind {
    Local(PathBuf),
    Azure(AzureBlob),
}

impl<B: BlobBackend> Harness<B> {
    pub fn backend(&self) -> &B {
        self.vault.backend()
    }

    /// Leftovers of unfinished uploads still in storage (temp files; blobs with only
    /// uncommitted blocks).
    pub async fn leftovers(&self) -> usize {
        match &self.kind {
            Kind::Local(root) => local_leftovers(root),
            Kind::Azure(a) => a.list_unfinished().await.unwrap().len(),
        }
    }

    /// Leaves what a process that crashed during an upload of `name` leaves: a closed temp file
    /// (local directory, SMB share), or uncommitted blocks (Azure).
    pub async fn crashed_upload(&self, name: &ObjectName, bytes: &[u8]) {
        match &self.kind {
            Kind::Local(root) => {
                let tmp = root.join("tmp").join(format!("{}.{}.part", name, ObjectName::random().unwrap()));
                std::fs::write(tmp, bytes).unwrap();
            }
            Kind::Azure(_) => {
                let mut up = self.backend().begin(name).await.unwrap();
                up.append(bytes).await.unwrap();
                std::mem::forget(up);
            }
        }
    }

    /// Waits until the storage folder holds these objects' records (Azurite saves its metadata
    /// database every 5 s), so a canary scan is not passed vacuously. Positive control: fails if
    /// they never appear.
    pub async fn settle(&self, names: &[ObjectName]) {
        match &self.kind {
            Kind::Local(root) => {
                for n in names {
                    let p = root.join("objects").join(&n.as_str()[..2]).join(n.as_str());
                    assert!(p.is_file(), "object file {p:?} missing");
                }
            }
            Kind::Azure(_) => {
                let db = self.storage_dir.join("__azurite_db_blob__.json");
                for _ in 0..100 {
                    let text = std::fs::read_to_string(&db).unwrap_or_default();
                    if names.iter().all(|n| text.contains(n.as_str())) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                panic!("azurite did not save the objects' records in {db:?} within 20 s");
            }
        }
    }

    /// The stored bytes of an object.
    pub async fn raw(&self, name: &ObjectName) -> Vec<u8> {
        let len = self.backend().len(name).await.unwrap();
        let mut out = Vec::new();
        self.backend().read_range(name, 0, len, &mut out).await.unwrap();
        out
    }

    /// Replaces (or creates) an object's bytes at the storage level, as an attacker with write
    /// access to storage could.
    pub async fn overwrite(&self, name: &ObjectName, bytes: &[u8]) {
        self.backend().delete(name).await.unwrap();
        let mut up = self.backend().begin(name).await.unwrap();
        up.append(bytes).await.unwrap();
        up.commit().await.unwrap();
    }
}

/// Temp files, and claims (`Publish::ClaimRename`) whose object is missing.
pub fn local_leftovers(root: &Path) -> usize {
    let tmp = std::fs::read_dir(root.join("tmp")).unwrap().count();
    let mut claims = 0;
    for fan in std::fs::read_dir(root.join("claims")).unwrap() {
        let fan = fan.unwrap();
        for c in std::fs::read_dir(fan.path()).unwrap() {
            let c = c.unwrap();
            if !root.join("objects").join(fan.file_name()).join(c.file_name()).exists() {
                claims += 1;
            }
        }
    }
    tmp + claims
}

pub async fn local() -> Harness<LocalDir> {
    local_with(test_options()).await
}

/// A temp directory published with `Publish::ClaimRename` (as on SMB), to run the suite on that
/// method where no share is at hand.
pub async fn local_claim_rename() -> Harness<LocalDir> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let backend =
        LocalDir::open_with(&root, Publish::ClaimRename).await.unwrap().with_write_buffer(TEST_WRITE_BUFFER);
    assert_eq!(backend.capabilities().publish, Publish::ClaimRename);
    Harness {
        vault: DocumentVault::with_options(backend, test_options()).unwrap(),
        storage_dir: root.clone(),
        kind: Kind::Local(root),
        _tmp: Some(tmp),
    }
}

/// `CI=true`: a missing server fails the test; elsewhere it prints `SKIPPED: <what> (<why>)`.
pub fn skip_or_fail(what: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is required in CI: {why}");
    }
    eprintln!("SKIPPED: {what} ({why})");
}

/// The SMB test share (`scripts/start-smb.sh`): `KLUIS_TEST_SMB_DIR` (client 1),
/// `KLUIS_TEST_SMB_DIR2` (client 2, the same share), `KLUIS_TEST_SMB_SERVER_DIR` (the server's
/// folder of it).
pub struct SmbShare {
    pub dir: PathBuf,
    pub dir2: Option<PathBuf>,
    pub server_dir: Option<PathBuf>,
}

pub fn smb_share() -> Option<SmbShare> {
    let var = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty()).map(PathBuf::from);
    let Some(dir) = var("KLUIS_TEST_SMB_DIR") else {
        skip_or_fail("smb", "KLUIS_TEST_SMB_DIR not set; run scripts/start-smb.sh");
        return None;
    };
    Some(SmbShare { dir, dir2: var("KLUIS_TEST_SMB_DIR2"), server_dir: var("KLUIS_TEST_SMB_SERVER_DIR") })
}

/// A fresh folder on the SMB share, removed when dropped.
pub fn smb_folder(share: &SmbShare) -> tempfile::TempDir {
    tempfile::Builder::new().prefix("t").tempdir_in(&share.dir).unwrap()
}

/// A fresh store on the SMB share; the canary scans the server's folder of it.
pub async fn smb() -> Option<Harness<LocalDir>> {
    let share = smb_share()?;
    let tmp = smb_folder(&share);
    let root = tmp.path().join("store");
    let backend = LocalDir::open(&root).await.unwrap().with_write_buffer(TEST_WRITE_BUFFER);
    // The share has no hard links: detected at open.
    assert_eq!(backend.capabilities().publish, Publish::ClaimRename, "{:?}", backend.capabilities());
    let storage_dir = match &share.server_dir {
        Some(s) => s.join(tmp.path().file_name().unwrap()).join("store"),
        None => root.clone(),
    };
    assert!(storage_dir.join("objects").is_dir(), "{storage_dir:?}");
    Some(Harness {
        vault: DocumentVault::with_options(backend, test_options()).unwrap(),
        storage_dir,
        kind: Kind::Local(root),
        _tmp: Some(tmp),
    })
}

pub async fn local_with(opts: VaultOptions) -> Harness<LocalDir> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let backend = LocalDir::open(&root).await.unwrap().with_write_buffer(TEST_WRITE_BUFFER);
    Harness {
        vault: DocumentVault::with_options(backend, opts).unwrap(),
        storage_dir: root.clone(),
        kind: Kind::Local(root),
        _tmp: Some(tmp),
    }
}

/// Azurite from `KLUIS_TEST_AZURITE_URL` / `KLUIS_TEST_AZURITE_DIR`. In CI (`CI=true`) a missing
/// Azurite fails the test; elsewhere the test prints `SKIPPED` and passes.
pub async fn azure() -> Option<Harness<AzureBlob>> {
    azure_with(test_options(), TEST_WRITE_BUFFER).await
}

pub async fn azure_with(opts: VaultOptions, block_size: usize) -> Option<Harness<AzureBlob>> {
    let url = std::env::var("KLUIS_TEST_AZURITE_URL").ok().filter(|s| !s.is_empty());
    let dir = std::env::var("KLUIS_TEST_AZURITE_DIR").ok().filter(|s| !s.is_empty());
    let (Some(url), Some(dir)) = (url, dir) else {
        skip_or_fail(
            "azurite",
            "KLUIS_TEST_AZURITE_URL and KLUIS_TEST_AZURITE_DIR not set; run scripts/start-azurite.sh",
        );
        return None;
    };
    let container = format!("t{}", &ObjectName::random().unwrap().as_str()[..20]);
    let sas = account_sas(AZURITE_ACCOUNT, AZURITE_KEY);
    let backend = AzureBlob::with_sas_url(
        &format!("{}/{container}?{sas}", url.trim_end_matches('/')),
        &AzureOptions::quick().with_block_size(block_size),
    )
    .unwrap();
    backend.create_container_if_missing().await.unwrap();
    Some(Harness {
        vault: DocumentVault::with_options(backend.clone(), opts).unwrap(),
        storage_dir: PathBuf::from(dir),
        kind: Kind::Azure(backend),
        _tmp: None,
    })
}

/// An account SAS for the blob service (all resource types, read/write/delete/list/add/create),
/// signed with the account key: HMAC-SHA256 over the account-SAS string-to-sign of
/// service version 2021-08-06 (which includes the encryption-scope line).
pub fn account_sas(account: &str, key_b64: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD.decode(key_b64).unwrap();
    let (sv, ss, srt, sp, st, se, spr) =
        ("2021-08-06", "b", "sco", "rwdlac", "2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z", "http,https");
    let to_sign = format!("{account}\n{sp}\n{ss}\n{srt}\n{st}\n{se}\n\n{spr}\n{sv}\n\n");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "sv={sv}&ss={ss}&srt={srt}&sp={sp}&st={}&se={}&spr={}&sig={}",
        enc(st),
        enc(se),
        enc(spr),
        enc(&sig)
    )
}

/// Every file under `dir` (recursively) whose name or content contains `needle`
/// (case-insensitive ASCII).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let needle: Vec<u8> = needle.to_ascii_lowercase();
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let file_name = e.file_name().to_string_lossy().to_ascii_lowercase().into_bytes();
            if file_name.windows(needle.len()).any(|w| w == needle.as_slice()) {
                hits.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let lower = bytes.to_ascii_lowercase();
                if lower.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// Every path under `dir` whose file name contains `needle`, and every file that is not object
/// content (not under Azurite's `__blobstorage__` extents nor the local `objects/` and `tmp/`)
/// whose content contains it (case-insensitive ASCII).
/// `b` with every quoted base64 token of 24 characters or more blanked out: the random ids a
/// metadata file keeps (Azurite's block ids are base64 of random bytes), in which a short needle
/// turns up by chance (a three-letter one, case-insensitive, about once in 32,768 positions).
fn without_random_tokens(b: &[u8]) -> Vec<u8> {
    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=');
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let end = b[i + 1..].iter().position(|c| !is_b64(*c)).map_or(b.len(), |n| i + 1 + n);
            if end - (i + 1) >= 24 && b.get(end) == Some(&b'"') {
                out[i + 1..end].fill(b' ');
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

pub fn metadata_files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let needle: Vec<u8> = needle.to_ascii_lowercase();
    let has = |hay: &[u8]| hay.to_ascii_lowercase().windows(needle.len()).any(|w| w == needle.as_slice());
    let mut hits = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), false)];
    while let Some((d, content_dir)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if has(name.as_bytes()) {
                hits.push(p.clone());
            }
            if p.is_dir() {
                let content = content_dir || matches!(name.as_str(), "__blobstorage__" | "objects" | "tmp");
                stack.push((p, content));
            } else if !content_dir && std::fs::read(&p).is_ok_and(|b| has(&without_random_tokens(&b))) {
                hits.push(p);
            }
        }
    }
    hits
}

pub fn grace_zero() -> Duration {
    Duration::ZERO
}
