//! Subject access packages through the facade (`Service::export_package`) on SQLite and
//! PostgreSQL with a local blob directory: every record and document read back byte for byte
//! (X25519 identity and passphrase), withheld domains for a role without medical, no plaintext in
//! the encrypted output, the export's entries before any byte (fail closed), a denial writing
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../../kluis-blob/tests/common/mod.rs"]
mod blob;
mod common;

use std::collections::BTreeMap;

use common::{H, Raw, ctx, principal};
use kluis_blob::catalog::Documents;
use kluis_blob::{DocumentVault, LocalDir, NewDocument};
use kluis_core::{DocumentMetadata, DomainName};
use kluis_service::Error;
use kluis_service::package::{PackageKey, Recipients, read_package_to_memory};
use kluis_store::{Engine, NewRecord};
use serde_json::Value as Json;
use zeroize::Zeroizing;

const DIAGNOSIS: &str = "CANARY-diagnosis-burnout-5c1e";
const NOTES: &str = "CANARY-notes-slaapproblemen-77aa";
const LETTER: &[u8] = b"CANARY-letter-content-bedrijfsarts-0b9d ";
const LETTER_NAME: &str = "CANARY-brief-bedrijfsarts.pdf";
const PAYSLIP: &[u8] = b"CANARY-general-document-loonstrook-3e21 ";
const PAYSLIP_NAME: &str = "loonstrook 2026-11.pdf";

struct F<S: Engine> {
    h: H<S>,
    docs: Documents<S, LocalDir>,
    _tmp: tempfile::TempDir,
}

fn meta(name: &str, len: usize) -> DocumentMetadata {
    DocumentMetadata {
        file_name: name.to_owned(),
        extension: "pdf".into(),
        content_type: "application/pdf".into(),
        length: Some(len as u64),
        created_unix: 1_790_000_000,
        uploaded_by: "dr.jansen".into(),
    }
}

async fn fixture<S: Engine>(h: H<S>) -> F<S> {
    let tmp = tempfile::tempdir().unwrap();
    let backend = LocalDir::open(tmp.path().join("blobs")).await.unwrap();
    let docs =
        Documents::new(h.store.clone(), DocumentVault::with_options(backend, blob::test_options()).unwrap());
    let f = F { h, docs, _tmp: tmp };
    let dr = principal("dr.jansen", &f.h.acme, "company_doctor");
    let c = ctx();
    // Two absence records of emp-1 (one without medical fields), one of emp-2.
    for (id, subject, medical) in [("ar-1", "emp-1", true), ("ar-2", "emp-1", false), ("ar-3", "emp-2", true)]
    {
        let mut r = NewRecord::new(subject)
            .id(id)
            .set("start_date", kluis_store::Value::Date("2026-11-02".into()))
            .set("employee_number", "E-100");
        if medical {
            r = r.set("diagnosis", DIAGNOSIS).set("doctor_notes", NOTES);
        }
        f.h.svc.insert(&dr, &c, "absence", r).await.unwrap();
    }
    let d = f.h.svc.documents(&f.docs).unwrap();
    let letter = LETTER.repeat(500);
    let doc = NewDocument {
        subject: "emp-1".into(),
        record: Some("ar-1".into()),
        metadata: meta(LETTER_NAME, letter.len()),
    };
    d.put(&dr, &c, &DomainName::medical(), doc, &letter[..]).await.unwrap();
    let payslip = PAYSLIP.repeat(100);
    let doc =
        NewDocument { subject: "emp-1".into(), record: None, metadata: meta(PAYSLIP_NAME, payslip.len()) };
    d.put(&dr, &c, &DomainName::general(), doc, &payslip[..]).await.unwrap();
    let doc = NewDocument { subject: "emp-2".into(), record: None, metadata: meta("other.pdf", 10) };
    d.put(&dr, &c, &DomainName::general(), doc, &b"emp-2 only"[..]).await.unwrap();
    f
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn manifest(files: &BTreeMap<String, Vec<u8>>) -> Json {
    serde_json::from_slice(&files["manifest.json"]).unwrap()
}

fn record(files: &BTreeMap<String, Vec<u8>>, id: &str) -> Json {
    serde_json::from_slice(&files[&format!("records/absence/{id}.json")]).unwrap()
}

fn document<'a>(files: &'a BTreeMap<String, Vec<u8>>, name: &str) -> &'a [u8] {
    let (_, v) =
        files.iter().find(|(k, _)| k.starts_with("documents/") && k.ends_with(&format!("/{name}"))).unwrap();
    v
}

async fn roundtrip<S: Engine>(f: F<S>) {
    let dr = principal("dr.jansen", &f.h.acme, "company_doctor");
    let identity = age::x25519::Identity::generate();
    let recipients = Recipients::x25519(&[identity.to_public().to_string()]).unwrap();
    // A record id of 128 characters: its path is longer than a tar header holds (a GNU long name).
    let long_id = "l".repeat(128);
    let r = NewRecord::new("emp-1").id(&long_id).set("employee_number", "E-LONG");
    f.h.svc.insert(&dr, &ctx(), "absence", r).await.unwrap();
    let before = f.h.store.audit_page(None, 0, 100_000).await.unwrap().len();
    let mut out = Vec::new();
    let mut ticks = 0;
    let s =
        f.h.svc
            .export_package(&dr, &ctx(), &f.docs, "emp-1", &recipients, &mut out, |_| ticks += 1)
            .await
            .unwrap();
    assert!(ticks > 0);
    assert_eq!((s.records, s.documents), (3, 2));
    assert!(s.withheld.is_empty(), "{:?}", s.withheld);
    assert_eq!(s.package_bytes, out.len() as u64);
    // No plaintext in the encrypted output.
    for canary in
        [DIAGNOSIS.as_bytes(), NOTES.as_bytes(), LETTER, PAYSLIP, LETTER_NAME.as_bytes(), b"E-100", b"emp-1"]
    {
        assert!(!contains(&out, canary), "{}", String::from_utf8_lossy(canary));
    }
    // The export's entries: the collection and the documents, both allowed.
    let rows = f.h.store.audit_page(None, 0, 100_000).await.unwrap();
    let new: Vec<_> = rows[before..].iter().map(|r| &r.entry).collect();
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(new.iter().all(|e| e.action == "export" && e.outcome == "allowed" && e.subject == "emp-1"));
    assert_eq!(new[0].collection, "absence");
    assert_eq!(new[0].fields, "general:*,medical:*");
    assert_eq!(new[1].collection, "documents");
    assert_eq!(new[1].fields, "general:content,medical:content");

    // Read back: every record and document, byte for byte.
    let files = read_package_to_memory(&out[..], &PackageKey::Identity(identity)).unwrap();
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert_eq!(record(&files, &long_id)["fields"]["employee_number"], "E-LONG");
    let r1 = record(&files, "ar-1");
    assert_eq!(r1["subject"], "emp-1");
    assert_eq!(r1["fields"]["diagnosis"], DIAGNOSIS);
    assert_eq!(r1["fields"]["doctor_notes"], NOTES);
    assert_eq!(r1["fields"]["start_date"], "2026-11-02");
    assert_eq!(r1["fields"]["employee_number"], "E-100");
    let r2 = record(&files, "ar-2");
    assert!(r2["fields"].get("diagnosis").is_none());
    assert!(!files.contains_key("records/absence/ar-3.json"), "another subject's record");
    assert_eq!(document(&files, LETTER_NAME), &LETTER.repeat(500)[..]);
    assert_eq!(document(&files, PAYSLIP_NAME), &PAYSLIP.repeat(100)[..]);
    assert!(!files.values().any(|v| contains(v, b"emp-2 only")));
    let m = manifest(&files);
    assert_eq!(m["format"], "kluis-subject-package/1");
    assert_eq!(m["subject"], "emp-1");
    assert_eq!(m["records"]["count"], 3);
    assert_eq!(m["documents"]["count"], 2);
    assert_eq!(m["withheld"], serde_json::json!([]));
    for file in m["documents"]["files"].as_array().unwrap() {
        let content = &files[file["path"].as_str().unwrap()];
        assert_eq!(file["length"], content.len());
        assert_eq!(file["sha256"].as_str().unwrap(), hex::encode(sha2_digest(content)));
    }

    // A passphrase package opens with the passphrase only.
    let pass = Recipients::passphrase(Zeroizing::new("correct horse battery staple".into())).unwrap();
    let mut out2 = Vec::new();
    f.h.svc.export_package(&dr, &ctx(), &f.docs, "emp-1", &pass, &mut out2, |_| {}).await.unwrap();
    assert!(!contains(&out2, DIAGNOSIS.as_bytes()));
    let key = PackageKey::Passphrase("correct horse battery staple".to_owned().into());
    let again = read_package_to_memory(&out2[..], &key).unwrap();
    assert_eq!(record(&again, "ar-1"), r1);
    assert_eq!(document(&again, LETTER_NAME), &LETTER.repeat(500)[..]);
    let wrong = PackageKey::Passphrase("wrong".to_owned().into());
    assert!(read_package_to_memory(&out2[..], &wrong).is_err());
    let other = PackageKey::Identity(age::x25519::Identity::generate());
    assert!(read_package_to_memory(&out[..], &other).is_err());
    // An unknown subject: an empty package (the facade does not check existence).
    let mut empty = Vec::new();
    let s = f.h.svc.export_package(&dr, &ctx(), &f.docs, "nobody", &pass, &mut empty, |_| {}).await.unwrap();
    assert_eq!((s.records, s.documents), (0, 0));
    // A truncated package does not read back.
    assert!(read_package_to_memory(&out[..out.len() - 100], &other).is_err());
    f.h.cleanup().await;
}

fn sha2_digest(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

/// HR may not export medical data: its fields and documents are left out and listed as withheld.
async fn withheld<S: Engine>(f: F<S>) {
    let hr = principal("p.devries", &f.h.acme, "hr_manager");
    let identity = age::x25519::Identity::generate();
    let recipients = Recipients::x25519(&[identity.to_public().to_string()]).unwrap();
    let mut out = Vec::new();
    let s =
        f.h.svc.export_package(&hr, &ctx(), &f.docs, "emp-1", &recipients, &mut out, |_| {}).await.unwrap();
    assert_eq!((s.records, s.documents), (2, 1));
    let files = read_package_to_memory(&out[..], &PackageKey::Identity(identity)).unwrap();
    for v in files.values() {
        for canary in [DIAGNOSIS.as_bytes(), NOTES.as_bytes(), LETTER, LETTER_NAME.as_bytes()] {
            assert!(!contains(v, canary), "{}", String::from_utf8_lossy(canary));
        }
    }
    let r1 = record(&files, "ar-1");
    assert_eq!(r1["fields"]["start_date"], "2026-11-02");
    assert!(r1["fields"].get("diagnosis").is_none());
    assert_eq!(document(&files, PAYSLIP_NAME), &PAYSLIP.repeat(100)[..]);
    let m = manifest(&files);
    assert_eq!(
        m["withheld"],
        serde_json::json!([{
            "domain": "medical", "reason": kluis_service::NOT_ALLOWED,
            "fields": ["absence.diagnosis", "absence.doctor_notes"], "records": 1, "documents": 1,
        }])
    );
    let rows = f.h.store.audit_page(None, 0, 100_000).await.unwrap();
    let last: Vec<_> = rows.iter().rev().take(2).map(|r| &r.entry).collect();
    assert_eq!(last[1].fields, "general:*");
    assert_eq!(last[0].fields, "general:content");
    f.h.cleanup().await;
}

/// No entry, no package; a role without export is denied and gets nothing.
async fn fail_closed<S: Engine>(f: F<S>)
where
    kluis_store::Store<S>: Raw,
{
    let dr = principal("dr.jansen", &f.h.acme, "company_doctor");
    let identity = age::x25519::Identity::generate();
    let recipients = Recipients::x25519(&[identity.to_public().to_string()]).unwrap();
    f.h.store.break_audit().await;
    let mut out = Vec::new();
    let r = f.h.svc.export_package(&dr, &ctx(), &f.docs, "emp-1", &recipients, &mut out, |_| {}).await;
    assert!(matches!(r, Err(Error::AuditUnavailable(_))), "{r:?}");
    assert!(out.is_empty(), "nothing written without the entry");
    f.h.store.mend_audit().await;
    // A sink that fails part way: the error is returned and logged after the allowed entries.
    let mut failing = Failing(0);
    let r = f.h.svc.export_package(&dr, &ctx(), &f.docs, "emp-1", &recipients, &mut failing, |_| {}).await;
    assert!(matches!(r, Err(Error::Io(_))), "{r:?}");
    let last = f.h.store.audit_page(None, 0, 100_000).await.unwrap().pop().unwrap().entry;
    assert_eq!(
        (last.action.as_str(), last.outcome.as_str(), last.reason.as_str()),
        ("export", "error", "package_write")
    );
    let case = principal("c.manager", &f.h.acme, "case_manager");
    let r = f.h.svc.export_package(&case, &ctx(), &f.docs, "emp-1", &recipients, &mut out, |_| {}).await;
    assert!(matches!(r, Err(Error::Denied(_))), "{r:?}");
    assert!(out.is_empty());
    let last = f.h.store.audit_page(None, 0, 100_000).await.unwrap().pop().unwrap().entry;
    assert_eq!((last.action.as_str(), last.outcome.as_str()), ("export", "denied"));
    f.h.cleanup().await;
}

/// Takes 1,000 bytes, then fails.
struct Failing(usize);

impl std::io::Write for Failing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 + buf.len() > 1000 {
            return Err(std::io::Error::other("disk full"));
        }
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

macro_rules! engine {
    ($m:ident, $store:path) => {
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn package_roundtrip() {
                let Some(h) = $store(1000).await else { return };
                roundtrip(fixture(h).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn package_withholds_what_the_role_may_not_export() {
                let Some(h) = $store(1000).await else { return };
                withheld(fixture(h).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn package_fails_closed() {
                let Some(h) = $store(1000).await else { return };
                fail_closed(fixture(h).await).await;
            }
        }
    };
}

engine!(sqlite, common::sqlite);
engine!(postgres, common::postgres);
