//! `kluis export` (subject access packages) through the real binary on SQLite and PostgreSQL: the
//! package decrypts with the requester's age identity or passphrase and holds every record and
//! document of the subject byte for byte and nothing of another subject; `--domains general`
//! withholds the medical fields and documents and lists them in the manifest; no plaintext in the
//! package file; the export entry is in the audit log; bad input (no recipient, a bad recipient, an
//! unknown subject, a target that cannot be written or already exists) exits with its code and
//! leaves no file and no entry.
//!
//! PostgreSQL: `KLUIS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`); the
//! test creates and drops its own database. With `CI=true` an unreachable server fails the test;
//! otherwise it prints `SKIPPED: ...` and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use common::{PASSPHRASE, kluis};
use kluis_blob::catalog::Documents;
use kluis_blob::{DocumentVault, LocalDir, NewDocument};
use kluis_core::{DocumentMetadata, DomainName, LocalKeyring, TenantId};
use kluis_service::package::{PackageKey, read_package_to_memory};
use kluis_store::{Engine, NewRecord, Schema, Sqlite, Store};
use serde_json::Value as Json;

const DIAGNOSIS: &str = "CANARY-export-diagnose-Vb3";
const LETTER: &[u8] = b"CANARY-export-letter-content-9Kq %PDF-1.7 ";
const PAYSLIP: &[u8] = b"CANARY-export-payslip-content-2Wd ";
const OTHER: &str = "CANARY-other-subject-Hh8";

#[derive(Clone, Debug)]
enum Db {
    Sqlite,
    Postgres { admin: String, url: String, db: String },
}

impl Db {
    async fn postgres() -> Option<Self> {
        let d = common::ServerDb::new("postgres", "kluis_ex").await?;
        Some(Self::Postgres { url: d.url, admin: d.admin, db: d.db })
    }

    fn store_args(&self) -> Vec<String> {
        match self {
            Self::Sqlite => vec![],
            Self::Postgres { url, .. } => vec!["--store".into(), url.clone()],
        }
    }

    async fn drop_db(&self) {
        if let Self::Postgres { admin, db, .. } = self {
            let p = sqlx::PgPool::connect(admin).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&p).await;
            p.close().await;
        }
    }

    async fn audit_actions(&self, dir: &Path) -> Vec<String> {
        let q = "SELECT action FROM kluis_audit ORDER BY seq";
        match self {
            Self::Sqlite => {
                let p = sqlx::SqlitePool::connect(&format!("sqlite:{}", dir.join("kluis.sqlite").display()))
                    .await
                    .unwrap();
                let v = sqlx::query_scalar(q).fetch_all(&p).await.unwrap();
                p.close().await;
                v
            }
            Self::Postgres { url, .. } => {
                let p = sqlx::PgPool::connect(url).await.unwrap();
                let v = sqlx::query_scalar(q).fetch_all(&p).await.unwrap();
                p.close().await;
                v
            }
        }
    }
}

fn cli(dir: &Path, db: &Db, args: &[&str]) -> Output {
    let mut all: Vec<String> = db.store_args();
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    kluis(dir, &refs).env("EXPORT_PASS", "requester passphrase 42").output().unwrap()
}

fn cli_ok(dir: &Path, db: &Db, args: &[&str]) -> Output {
    let out = cli(dir, db, args);
    assert!(
        out.status.success(),
        "kluis {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn keyring(dir: &Path) -> LocalKeyring {
    let secret = kluis_cli::config::keyring_secret(&zeroize::Zeroizing::new(PASSPHRASE.to_owned()));
    kluis_keyring::KeyringFile::open(dir.join("keyring.kr"), secret).unwrap().into_keyring()
}

fn meta(name: &str, len: usize) -> DocumentMetadata {
    DocumentMetadata {
        file_name: name.into(),
        extension: "pdf".into(),
        content_type: "application/pdf".into(),
        length: Some(len as u64),
        created_unix: 1_700_000_000,
        uploaded_by: "dr".into(),
    }
}

/// emp-1: three absence reports (two with a diagnosis), an employee record, a medical letter and a
/// general payslip; emp-2: one report and one document.
async fn fill_store<S: Engine>(store: Arc<Store<S>>, dir: &Path) {
    let kr = keyring(dir);
    let tenant = TenantId::new("acme").unwrap();
    let access =
        store.admin_access(&kr, &tenant, &[DomainName::general(), DomainName::medical()]).await.unwrap();
    for i in 0..3 {
        let mut r = NewRecord::new("emp-1")
            .id(&format!("ar-{i}"))
            .set("reported_by", "hr")
            .set("start_date", kluis_store::Value::Date("2026-11-02".into()));
        if i < 2 {
            r = r.set("diagnosis", DIAGNOSIS);
        }
        store.insert(&access, "absence", r).await.unwrap();
    }
    let r = NewRecord::new("emp-1").id("e-1").set("name", "Jan Jansen").set("employee_number", "E-1");
    store.insert(&access, "employee", r).await.unwrap();
    let r = NewRecord::new("emp-2").id("ar-x").set("diagnosis", OTHER);
    store.insert(&access, "absence", r).await.unwrap();
    let docs = Documents::new(
        Arc::clone(&store),
        DocumentVault::new(LocalDir::open(dir.join("blobs")).await.unwrap()),
    );
    let letter = LETTER.repeat(3000);
    let doc = NewDocument {
        subject: "emp-1".into(),
        record: Some("ar-0".into()),
        metadata: meta("advies bedrijfsarts.pdf", letter.len()),
    };
    docs.put(&access, &DomainName::medical(), doc, &letter[..]).await.unwrap();
    let payslip = PAYSLIP.repeat(10);
    let doc = NewDocument {
        subject: "emp-1".into(),
        record: None,
        metadata: meta("loonstrook.pdf", payslip.len()),
    };
    docs.put(&access, &DomainName::general(), doc, &payslip[..]).await.unwrap();
    let doc = NewDocument { subject: "emp-2".into(), record: None, metadata: meta("other.pdf", OTHER.len()) };
    docs.put(&access, &DomainName::general(), doc, OTHER.as_bytes()).await.unwrap();
}

async fn setup(db: &Db) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    cli_ok(&dir, db, &["init"]);
    cli_ok(&dir, db, &["tenant", "add", "acme"]);
    let schema = Schema::from_toml(&std::fs::read_to_string(dir.join("schema.toml")).unwrap()).unwrap();
    match db {
        Db::Sqlite => {
            let s = Arc::new(Store::new(Sqlite::open(&dir.join("kluis.sqlite")).await.unwrap(), schema));
            fill_store(Arc::clone(&s), &dir).await;
            s.pool().close().await;
        }
        Db::Postgres { url, .. } => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            fill_store(Arc::new(Store::new(pool.clone(), schema)), &dir).await;
            pool.close().await;
        }
    }
    (tmp, dir)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn doc<'a>(files: &'a BTreeMap<String, Vec<u8>>, name: &str) -> Option<&'a Vec<u8>> {
    files
        .iter()
        .find(|(k, _)| k.starts_with("documents/") && k.ends_with(&format!("/{name}")))
        .map(|(_, v)| v)
}

fn json(files: &BTreeMap<String, Vec<u8>>, path: &str) -> Json {
    serde_json::from_slice(&files[path]).unwrap()
}

fn key(identity: &str) -> PackageKey {
    PackageKey::Identity(identity.parse().unwrap())
}

async fn export_package(db: &Db) {
    use age::secrecy::ExposeSecret;
    let (tmp, dir) = setup(db).await;
    let id = age::x25519::Identity::generate();
    let (secret, recipient) = (id.to_string().expose_secret().to_owned(), id.to_public().to_string());
    let id2 = age::x25519::Identity::generate();
    let (secret2, recipient2) = (id2.to_string().expose_secret().to_owned(), id2.to_public().to_string());
    let pkg = tmp.path().join("emp-1.age");
    let p = pkg.to_str().unwrap();
    let base = ["export", "--tenant", "acme", "--subject", "emp-1"];

    // Everything, for two recipients.
    let args = [&base[..], &["--recipient", &recipient, "--recipient", &recipient2, "-o", p]].concat();
    let out = cli_ok(&dir, db, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("package of subject emp-1: 4 records, 2 documents"), "{text}");
    let bytes = std::fs::read(&pkg).unwrap();
    for canary in
        [DIAGNOSIS.as_bytes(), LETTER, PAYSLIP, OTHER.as_bytes(), b"Jan Jansen", b"advies bedrijfsarts"]
    {
        assert!(!contains(&bytes, canary), "plaintext {} in the package", String::from_utf8_lossy(canary));
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&pkg).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(db.audit_actions(&dir).await.last().is_some_and(|a| a == "export"));
    for k in [&secret, &secret2] {
        let files = read_package_to_memory(&bytes[..], &key(k)).unwrap();
        assert_eq!(files.len(), 4 + 2 + 1, "{:?}", files.keys());
        let ar0 = json(&files, "records/absence/ar-0.json");
        assert_eq!(ar0["fields"]["diagnosis"], DIAGNOSIS);
        assert_eq!(ar0["fields"]["reported_by"], "hr");
        assert_eq!(ar0["fields"]["start_date"], "2026-11-02");
        assert!(json(&files, "records/absence/ar-2.json")["fields"].get("diagnosis").is_none());
        assert_eq!(json(&files, "records/employee/e-1.json")["fields"]["name"], "Jan Jansen");
        assert_eq!(doc(&files, "advies bedrijfsarts.pdf").unwrap(), &LETTER.repeat(3000));
        assert_eq!(doc(&files, "loonstrook.pdf").unwrap(), &PAYSLIP.repeat(10));
        assert!(!files.values().any(|v| contains(v, OTHER.as_bytes())), "another subject's data");
        let m = json(&files, "manifest.json");
        assert_eq!(m["records"]["count"], 4);
        assert_eq!(m["records"]["collections"]["absence"], 3);
        assert_eq!(m["documents"]["count"], 2);
        assert_eq!(m["withheld"], serde_json::json!([]));
    }

    // An existing target is never overwritten: exit 1, the file unchanged, no entry.
    let entries = db.audit_actions(&dir).await.len();
    let again = cli(&dir, db, &args);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert_eq!(std::fs::read(&pkg).unwrap(), bytes);
    assert_eq!(db.audit_actions(&dir).await.len(), entries);

    // --domains general: the medical fields and the letter withheld, listed in the manifest.
    let general = tmp.path().join("general.age");
    let args =
        [&base[..], &["--recipient", &recipient, "--domains", "general", "-o", general.to_str().unwrap()]]
            .concat();
    let out = cli_ok(&dir, db, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 records, 1 documents"), "{text}");
    assert!(text.contains("withheld: domain medical"), "{text}");
    let files = read_package_to_memory(&std::fs::read(&general).unwrap()[..], &key(&secret)).unwrap();
    for v in files.values() {
        assert!(!contains(v, DIAGNOSIS.as_bytes()) && !contains(v, LETTER));
    }
    assert!(doc(&files, "advies bedrijfsarts.pdf").is_none());
    assert_eq!(doc(&files, "loonstrook.pdf").unwrap(), &PAYSLIP.repeat(10));
    assert_eq!(json(&files, "records/absence/ar-0.json")["fields"]["reported_by"], "hr");
    assert!(json(&files, "records/absence/ar-0.json")["fields"].get("diagnosis").is_none());
    let m = json(&files, "manifest.json");
    assert_eq!(
        m["withheld"],
        serde_json::json!([{
            "domain": "medical", "reason": kluis_cli::package::NOT_SELECTED,
            "fields": ["absence.diagnosis", "absence.doctor_notes"], "records": 2, "documents": 1,
        }])
    );

    // A passphrase from the environment; to standard output when it is not a terminal.
    let args = [&base[..], &["--passphrase-env", "EXPORT_PASS"]].concat();
    let out = cli_ok(&dir, db, &args);
    assert!(!contains(&out.stdout, DIAGNOSIS.as_bytes()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("written to standard output"));
    let pass = PackageKey::Passphrase("requester passphrase 42".to_owned().into());
    let files = read_package_to_memory(&out.stdout[..], &pass).unwrap();
    assert_eq!(doc(&files, "advies bedrijfsarts.pdf").unwrap(), &LETTER.repeat(3000));
    assert!(read_package_to_memory(&out.stdout[..], &key(&secret)).is_err());

    // Bad input: nothing written, no entry.
    let entries = db.audit_actions(&dir).await.len();
    let target = tmp.path().join("bad.age");
    let t = target.to_str().unwrap();
    let no_dir = tmp.path().join("no-such-dir").join("x.age");
    // Under a regular file: cannot be created, even by root.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("x.age");
    for (args, code) in [
        ([&base[..], &["-o", t]].concat(), 2),
        ([&base[..], &["--recipient", "age1notarecipient", "-o", t]].concat(), 2),
        ([&base[..], &["--passphrase-env", "NO_SUCH_VARIABLE_17", "-o", t]].concat(), 2),
        ([&base[..], &["--recipient", &recipient, "--passphrase-env", "EXPORT_PASS", "-o", t]].concat(), 2),
        (vec!["export", "--tenant", "acme", "--subject", "nobody", "--recipient", &recipient, "-o", t], 4),
        ([&base[..], &["--recipient", &recipient, "--domains", "nope", "-o", t]].concat(), 4),
        ([&base[..], &["--recipient", &recipient, "-o", no_dir.to_str().unwrap()]].concat(), 1),
        ([&base[..], &["--recipient", &recipient, "-o", under_file.to_str().unwrap()]].concat(), 1),
    ] {
        let out = cli(&dir, db, &args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!target.exists() && !no_dir.exists(), "{args:?}");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".kluis-export-"))
            .collect();
        assert!(left.is_empty(), "no partial file: {args:?}");
        assert_eq!(db.audit_actions(&dir).await.len(), entries, "no entry: {args:?}");
    }
    cli_ok(&dir, db, &["audit", "verify"]);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_export_package() {
    export_package(&Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_export_package() {
    let Some(db) = Db::postgres().await else { return };
    export_package(&db).await;
}
