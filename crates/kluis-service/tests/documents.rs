//! Documents through the facade (`Service::documents`) on real parts: a SQLite, PostgreSQL
//! or MariaDB store with a real keyring, and a local directory or Azurite for the objects. Every built-in
//! role x {general, medical} x {get, range, metadata, list, put, delete}, cross-tenant and guessed
//! document ids, withheld listings, break-glass and support grants, canaries (file name,
//! extension, content type, content never in the audit log, its export or the database file), and
//! fail closed (a trigger refuses audit inserts: nothing returned, nothing stored or removed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../../kluis-blob/tests/common/mod.rs"]
mod blob;
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{H, Raw, ctx, principal};
use kluis_blob::catalog::Documents;
use kluis_blob::{BlobBackend, DocumentVault, LocalDir, NewDocument};
use kluis_core::{DocumentMetadata, DomainName, TenantId};
use kluis_service::authz::{Action, ActionSet, DenyReason, GrantScope, Principal, UserId};
use kluis_service::{Error, RequestContext, ServiceDocuments};
use kluis_store::audit::AuditRow;
use kluis_store::{Access, Engine};

const ROLES: [&str; 7] =
    ["hr_manager", "employee", "company_doctor", "case_manager", "key_admin", "auditor", "tenant_admin"];

/// The expected grants (docs/SERVICE.md, built-in roles); `employee` only on own subject.
fn expected(role: &str, domain: &str, action: &str) -> bool {
    match (role, domain) {
        ("hr_manager", "general") => true,
        ("employee", "general") => action == "read",
        ("company_doctor", _) => true,
        ("case_manager", "general") => matches!(action, "read" | "write"),
        _ => false,
    }
}

/// Canaries: the file name, extension, content type and content of the doctor's letter.
const NAME: &str = "CANARY-brief-bedrijfsarts-burnout-7f3a.cnrx";
const EXT: &str = "cnrx";
const CTYPE: &str = "application/x-canary-ctype-91b2";
const CONTENT: &[u8] = b"CANARY-CONTENT-Burnout-na-reorganisatie-d41e ";

fn letter() -> Vec<u8> {
    CONTENT.repeat(300)
}

fn meta(name: &str, len: usize) -> DocumentMetadata {
    DocumentMetadata {
        file_name: name.to_owned(),
        extension: name.rsplit_once('.').map(|(_, e)| e.to_owned()).unwrap_or_default(),
        content_type: CTYPE.to_owned(),
        length: Some(len as u64),
        created_unix: 1_790_000_000,
        uploaded_by: "dr.jansen".to_owned(),
    }
}

struct F<S: Engine, D: BlobBackend> {
    h: H<S>,
    docs: Documents<S, D>,
    /// The folder the blob backend stores into (for canary scans).
    storage: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl<S: Engine, D: BlobBackend> F<S, D> {
    fn d(&self) -> ServiceDocuments<'_, S, D> {
        self.h.svc.documents(&self.docs).unwrap()
    }

    async fn rows(&self) -> Vec<AuditRow> {
        self.h.store.audit_page(None, 0, 100_000).await.unwrap()
    }

    async fn last(&self) -> kluis_store::audit::AuditEntry {
        self.rows().await.pop().unwrap().entry
    }

    /// The company doctor stores a document of `domain` for `subject`, optionally on a record.
    async fn seed(&self, domain: &str, subject: &str, record: Option<&str>) -> String {
        let dr = principal("dr.seed", &self.h.acme, "company_doctor");
        self.put_as(&dr, domain, subject, record).await.unwrap()
    }

    async fn put_as(
        &self,
        p: &Principal,
        domain: &str,
        subject: &str,
        record: Option<&str>,
    ) -> Result<String, Error> {
        let body = letter();
        let doc = NewDocument {
            subject: subject.to_owned(),
            record: record.map(str::to_owned),
            metadata: meta(NAME, body.len()),
        };
        let domain = DomainName::new(domain).unwrap();
        self.d().put(p, &ctx(), &domain, doc, &body[..]).await.map(|r| r.document_id)
    }

    /// Objects in local storage (files under `objects/`), or `None` for Azurite.
    fn local_objects(&self) -> Option<usize> {
        let dir = self.storage.join("objects");
        if !dir.is_dir() {
            return None;
        }
        let mut n = 0;
        for sub in std::fs::read_dir(&dir).unwrap().flatten() {
            n += std::fs::read_dir(sub.path()).map(|r| r.count()).unwrap_or(0);
        }
        Some(n)
    }

    async fn catalog_rows(&self, subject: &str) -> usize {
        self.h.store.documents_of_subject(&Access::catalog(self.h.acme.clone()), subject).await.unwrap().len()
    }
}

async fn local<S: Engine>(h: H<S>) -> F<S, LocalDir> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("blobs");
    let backend = LocalDir::open(&root).await.unwrap();
    let docs =
        Documents::new(h.store.clone(), DocumentVault::with_options(backend, blob::test_options()).unwrap());
    F { h, docs, storage: root, _tmp: Some(tmp) }
}

async fn azurite<S: Engine>(h: H<S>) -> Option<F<S, kluis_blob::azure::AzureBlob>> {
    let harness = blob::azure().await?;
    let storage = harness.storage_dir.clone();
    let blob::Harness { vault, .. } = harness;
    Some(F { docs: Documents::new(h.store.clone(), vault), h, storage, _tmp: None })
}

fn user(tenant: &TenantId, role: &str) -> Principal {
    let p = principal(&format!("u.{role}"), tenant, role);
    if role == "employee" { p.with_subject("emp-1") } else { p }
}

fn is_denied<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Denied(_)))
}

/// Every built-in role x domain x document call, each denial found in the audit log.
async fn matrix<S: Engine, D: BlobBackend>(f: F<S, D>) {
    let acme = f.h.acme.clone();
    let c = ctx();
    for domain in ["medical", "general"] {
        let id = f.seed(domain, "emp-1", Some("r-1")).await;
        for role in ROLES {
            let p = user(&acme, role);
            let read = expected(role, domain, "read");
            let denied_before = f.rows().await.iter().filter(|r| r.entry.outcome == "denied").count();

            let mut out = Vec::new();
            let got = f.d().get(&p, &c, &id, &mut out).await;
            assert_eq!(got.is_ok(), read, "{role} get {domain}: {got:?}");
            if read {
                assert_eq!(out, letter(), "{role} {domain}");
                assert_eq!(got.unwrap().file_name, NAME);
                let e = f.last().await;
                assert_eq!((e.action.as_str(), e.outcome.as_str()), ("read", "allowed"));
                assert_eq!(e.record, format!("{id},record:r-1"));
                assert_eq!(e.subject, "emp-1");
                assert_eq!(e.fields, format!("{domain}:content"));
            } else {
                assert!(is_denied(&got), "{role} {domain}: {got:?}");
                assert!(out.is_empty(), "a denied get writes nothing");
            }
            let range = f.d().get_range(&p, &c, &id, 3, 40).await;
            assert_eq!(range.is_ok(), read, "{role} range {domain}");
            if let Ok(r) = range {
                assert_eq!(r.expose_secret(), &letter()[3..40]);
            }
            let m = f.d().metadata(&p, &c, &id).await;
            assert_eq!(m.is_ok(), read, "{role} metadata {domain}");
            if read {
                assert_eq!(f.last().await.fields, format!("{domain}:metadata"));
            }
            // Listing: allowed when the role reads general (the catalog's clear columns); entries
            // of a domain it does not read are withheld.
            let list = expected(role, "general", "read");
            for l in [f.d().list_by_subject(&p, &c, "emp-1").await, f.d().list_by_record(&p, &c, "r-1").await]
            {
                assert_eq!(l.is_ok(), list, "{role} list {domain}: {l:?}");
                if let Ok(l) = l {
                    let mine = l.iter().find(|e| e.document_id == id).unwrap();
                    assert_eq!(mine.is_withheld(), !read, "{role} {domain}");
                    if read {
                        assert_eq!(mine.metadata.as_ref().unwrap().file_name, NAME);
                    }
                }
            }

            let write = expected(role, domain, "write");
            let put = f.put_as(&p, domain, "emp-1", None).await;
            assert_eq!(put.is_ok(), write, "{role} put {domain}: {put:?}");
            if !write {
                assert!(is_denied(&put));
            }
            let victim = f.seed(domain, "emp-1", None).await;
            let del = f.d().delete(&p, &c, &victim).await;
            let delete = expected(role, domain, "delete");
            assert_eq!(del.is_ok(), delete, "{role} delete {domain}: {del:?}");
            let still = f.d().metadata(&principal("dr.seed", &acme, "company_doctor"), &c, &victim).await;
            assert_eq!(still.is_err(), delete, "{role} delete {domain}: the document is gone iff allowed");

            // Every denial is in the log, naming the actor, action and document.
            let denials: Vec<AuditRow> =
                f.rows().await.into_iter().filter(|r| r.entry.outcome == "denied").collect();
            let new = &denials[denied_before..];
            let want = [!read, !read, !read, !list, !list, !write, !delete].iter().filter(|d| **d).count();
            assert_eq!(new.len(), want, "{role} {domain}: {new:?}");
            for r in new {
                assert_eq!(r.entry.actor, format!("u.{role}"));
                assert_eq!(r.entry.collection, "documents");
                assert_eq!(r.entry.tenant, "acme");
                assert!(!r.entry.reason.is_empty());
            }
        }
        // The employee on another subject's document: denied and logged.
        let other = f.seed(domain, "emp-2", None).await;
        let emp = user(&acme, "employee");
        assert!(is_denied(&f.d().metadata(&emp, &c, &other).await));
        let e = f.last().await;
        assert_eq!((e.outcome.as_str(), e.record.as_str()), ("denied", other.as_str()));
        assert!(is_denied(&f.d().list_by_subject(&emp, &c, "emp-2").await));
    }
    assert!(kluis_service::audit::verify(&f.h.store).await.unwrap().is_ok());
    f.h.cleanup().await;
}

/// Ids of another tenant (copied) and guessed ids: denied / not found, each audited, the other
/// tenant's subject not logged, nothing decrypted.
async fn cross_tenant<S: Engine, D: BlobBackend>(f: F<S, D>) {
    let id = f.seed("medical", "emp-1", Some("r-1")).await;
    let globex = f.h.globex.clone();
    let c = ctx();
    for role in ROLES {
        let p = user(&globex, role);
        let before = f.rows().await.len();
        let mut out = Vec::new();
        let calls = [
            f.d().get(&p, &c, &id, &mut out).await.map(|_| ()),
            f.d().get_range(&p, &c, &id, 0, 10).await.map(|_| ()),
            f.d().metadata(&p, &c, &id).await.map(|_| ()),
            f.d().delete(&p, &c, &id).await,
        ];
        for r in &calls {
            match r {
                Err(Error::Denied(d)) => assert_eq!(d.reason(), &DenyReason::CrossTenant, "{role}"),
                other => panic!("{role}: {other:?}"),
            }
        }
        assert!(out.is_empty());
        let rows = f.rows().await;
        assert_eq!(rows.len(), before + calls.len(), "{role}: every attempt is logged");
        for r in &rows[before..] {
            assert_eq!(r.entry.outcome, "denied");
            assert_eq!(r.entry.tenant, "globex");
            assert_eq!(r.entry.record, id);
            assert!(r.entry.subject.is_empty(), "the other tenant's subject is not logged");
            assert!(r.entry.fields.is_empty());
        }
        // Globex lists nothing of acme's.
        if expected(role, "medical", "read") {
            assert!(f.d().list_by_subject(&p, &c, "emp-1").await.unwrap().is_empty());
        }
    }
    // Still there for acme.
    let dr = principal("dr.jansen", &f.h.acme, "company_doctor");
    f.d().metadata(&dr, &c, &id).await.unwrap();
    // A guessed id: not found, audited.
    let guess = "0123456789abcdef0123456789abcdef";
    let r = f.d().metadata(&dr, &c, guess).await;
    assert!(matches!(r, Err(Error::DocumentNotFound { .. })), "{r:?}");
    let e = f.last().await;
    assert_eq!((e.outcome.as_str(), e.record.as_str(), e.tenant.as_str()), ("not_found", guess, "acme"));
    assert!(matches!(f.d().delete(&dr, &c, guess).await, Err(Error::DocumentNotFound { .. })));
    assert_eq!(f.last().await.action, "delete");
    // An invalid id is refused before any lookup.
    assert!(f.d().get_range(&dr, &c, "../etc/passwd", 0, 1).await.is_err());
    f.h.cleanup().await;
}

/// HR lists a subject's documents: the medical letter is withheld (no metadata, nothing fetched)
/// and the audit entry names only what was returned.
async fn withheld<S: Engine, D: BlobBackend>(f: F<S, D>) {
    let med = f.seed("medical", "emp-1", Some("r-1")).await;
    let gen_id = f.seed("general", "emp-1", Some("r-1")).await;
    let hr = user(&f.h.acme, "hr_manager");
    let c = ctx();
    for l in [
        f.d().list_by_subject(&hr, &c, "emp-1").await.unwrap(),
        f.d().list_by_record(&hr, &c, "r-1").await.unwrap(),
    ] {
        assert_eq!(l.len(), 2);
        let m = l.iter().find(|e| e.document_id == med).unwrap();
        assert!(m.is_withheld());
        assert_eq!(m.domain, DomainName::medical());
        assert!(!l.iter().find(|e| e.document_id == gen_id).unwrap().is_withheld());
        let e = f.last().await;
        assert_eq!(e.fields, "general:metadata", "withheld entries are not named as read");
        assert!(e.record.contains(&med) && e.record.contains(&gen_id));
    }
    assert!(f.last().await.record.ends_with("record:r-1"));
    // The doctor sees both.
    let dr = user(&f.h.acme, "company_doctor");
    let l = f.d().list_by_subject(&dr, &c, "emp-1").await.unwrap();
    assert!(l.iter().all(|e| !e.is_withheld()));
    assert_eq!(f.last().await.fields, "general:metadata,medical:metadata");
    // A subject with only a medical document: HR lists it, withheld.
    let only = f.seed("medical", "emp-3", None).await;
    let l = f.d().list_by_subject(&hr, &c, "emp-3").await.unwrap();
    assert!(l.len() == 1 && l[0].is_withheld() && l[0].document_id == only);
    assert_eq!(f.last().await.fields, "");
    // Roles without general are denied a listing.
    let ka = user(&f.h.acme, "key_admin");
    assert!(is_denied(&f.d().list_by_subject(&ka, &c, "emp-1").await));
    // A subject with nothing: an empty, audited listing.
    assert!(f.d().list_by_subject(&hr, &c, "emp-9").await.unwrap().is_empty());
    assert_eq!(f.last().await.outcome, "allowed");
    f.h.cleanup().await;
}

/// Break-glass reads of a medical document by a case manager (flagged, reason logged); HR may
/// not; a support grant for `general` reads a general document and is refused the medical one.
async fn break_glass_and_support<S: Engine, D: BlobBackend>(f: F<S, D>) {
    let med = f.seed("medical", "emp-1", None).await;
    let gen_id = f.seed("general", "emp-1", None).await;
    let cm = user(&f.h.acme, "case_manager");
    let reason = "employee collapsed at work, ambulance called";
    assert!(is_denied(&f.d().metadata(&cm, &ctx(), &med).await));
    let mut out = Vec::new();
    f.d().get(&cm, &ctx().break_glass(reason), &med, &mut out).await.unwrap();
    assert_eq!(out, letter());
    let e = f.last().await;
    assert_eq!(e.break_glass, reason);
    assert!(e.reason.starts_with("break_glass:case_manager"), "{}", e.reason);
    // Break-glass is read only.
    assert!(is_denied(&f.d().delete(&cm, &ctx().break_glass(reason), &med).await));
    let hr = user(&f.h.acme, "hr_manager");
    assert!(is_denied(&f.d().metadata(&hr, &ctx().break_glass(reason), &med).await));
    assert!(is_denied(&f.d().metadata(&cm, &ctx().break_glass("urgent"), &med).await));

    let admin = principal("admin", &f.h.acme, "tenant_admin");
    let scope =
        GrantScope { domains: [DomainName::general()].into(), actions: ActionSet::of(&[Action::Read]) };
    let g =
        f.h.svc
            .authorizer()
            .grant_support(
                &admin,
                &f.h.acme,
                UserId::new("sup.kees").unwrap(),
                scope,
                Duration::from_secs(86_400),
            )
            .unwrap();
    let sup = Principal::support(UserId::new("sup.kees").unwrap(), g.id.clone());
    let sc = ctx().in_tenant(f.h.acme.clone());
    f.d().metadata(&sup, &sc, &gen_id).await.unwrap();
    let e = f.last().await;
    assert_eq!(e.support_grant, g.id.to_string());
    assert_eq!(e.reason, format!("support_grant:{}", g.id));
    assert!(is_denied(&f.d().metadata(&sup, &sc, &med).await));
    assert!(is_denied(&f.put_as(&sup, "general", "emp-1", None).await), "the grant is read only");
    // Without a tenant to act in: denied, logged.
    assert!(is_denied(&f.d().list_by_subject(&sup, &RequestContext::new("x", "y"), "emp-1").await));
    assert_eq!(f.last().await.outcome, "denied");
    f.h.cleanup().await;
}

/// The file name, extension, content type and content never reach the audit log, its export,
/// `Debug` output or the database file; the document ids do (positive control).
async fn canaries<S: Engine, D: BlobBackend>(f: F<S, D>) {
    let dr = user(&f.h.acme, "company_doctor");
    let hr = user(&f.h.acme, "hr_manager");
    let c = ctx();
    let id = f.seed("medical", "emp-1", Some("r-1")).await;
    let mut debug = String::new();
    let mut out = Vec::new();
    f.d().get(&dr, &c, &id, &mut out).await.unwrap();
    f.d().get_range(&dr, &c, &id, 0, 100).await.unwrap();
    f.d().metadata(&dr, &c, &id).await.unwrap();
    f.d().list_by_subject(&dr, &c, "emp-1").await.unwrap();
    f.d().list_by_record(&dr, &c, "r-1").await.unwrap();
    debug.push_str(&format!("{:?}", f.d().list_by_record(&hr, &c, "r-1").await.unwrap()));
    let mut sink = Vec::new();
    debug.push_str(&format!("{:?}", f.d().get(&hr, &c, &id, &mut sink).await.unwrap_err()));
    debug.push_str(&format!("{:?}", f.d().metadata(&hr, &c, &id).await.unwrap_err()));
    debug.push_str(&format!("{:?}", f.put_as(&hr, "medical", "emp-1", None).await.unwrap_err()));
    let gone = f.seed("medical", "emp-1", None).await;
    f.d().delete(&dr, &c, &gone).await.unwrap();
    let mut export = Vec::new();
    kluis_service::audit::export_jsonl(&f.h.store, &mut export).await.unwrap();
    let export = String::from_utf8(export).unwrap();
    let rows = f.rows().await;
    debug.push_str(&format!("{rows:?} {:?}", f.d()));
    assert!(rows.len() >= 10, "{}", rows.len());
    assert!(export.contains(&id) && export.contains("medical:content"), "positive control");
    let content = String::from_utf8(CONTENT.to_vec()).unwrap();
    for canary in [NAME, EXT, CTYPE, content.trim_end(), "CANARY"] {
        assert!(!export.contains(canary), "{canary} in the export");
        assert!(!debug.contains(canary), "{canary} in Debug output");
    }
    if let Some(file) = &f.h.file {
        let mut bytes = std::fs::read(file).unwrap();
        if let Ok(w) = std::fs::read(file.with_extension("db-wal")) {
            bytes.extend(w);
        }
        assert!(
            bytes.windows(id.len()).any(|w| w == id.as_bytes()),
            "positive control: the id is in the file"
        );
        for canary in [NAME.as_bytes(), EXT.as_bytes(), CTYPE.as_bytes(), CONTENT, b"CANARY"] {
            assert!(!bytes.windows(canary.len()).any(|w| w == canary), "canary in the sqlite file");
        }
    }
    // Nor in the blob storage's files (names or, outside object content, bytes).
    for canary in [NAME.as_bytes(), CTYPE.as_bytes(), CONTENT] {
        assert!(blob::files_containing(&f.storage, canary).is_empty(), "canary in blob storage");
    }
    f.h.cleanup().await;
}

/// A trigger refuses every audit insert: nothing is returned, stored or removed, and the error
/// says so. Mended, everything works and the chain verifies.
async fn fail_closed<S: Engine, D: BlobBackend>(f: F<S, D>)
where
    kluis_store::Store<S>: Raw,
{
    let dr = user(&f.h.acme, "company_doctor");
    let hr = user(&f.h.acme, "hr_manager");
    let c = ctx();
    let id = f.seed("medical", "emp-1", Some("r-1")).await;
    let objects = f.local_objects();
    let entries = f.rows().await.len();
    f.h.store.break_audit().await;

    // put: no catalog row survives, the object is removed again.
    let r = f.put_as(&dr, "medical", "emp-1", None).await;
    assert!(matches!(r, Err(Error::AuditUnavailable(_))), "{r:?}");
    assert_eq!(f.catalog_rows("emp-1").await, 1, "the refused document is not catalogued");
    assert_eq!(f.local_objects(), objects, "its object was deleted again");
    // reads: nothing returned, nothing written to the sink.
    let mut out = Vec::new();
    let r = f.d().get(&dr, &c, &id, &mut out).await;
    assert!(matches!(r, Err(Error::AuditUnavailable(_))), "{r:?}");
    assert!(out.is_empty(), "no byte before the entry");
    assert!(matches!(f.d().get_range(&dr, &c, &id, 0, 10).await, Err(Error::AuditUnavailable(_))));
    assert!(matches!(f.d().metadata(&dr, &c, &id).await, Err(Error::AuditUnavailable(_))));
    assert!(matches!(f.d().list_by_subject(&dr, &c, "emp-1").await, Err(Error::AuditUnavailable(_))));
    assert!(matches!(f.d().list_by_record(&dr, &c, "r-1").await, Err(Error::AuditUnavailable(_))));
    // delete: the document stays.
    assert!(matches!(f.d().delete(&dr, &c, &id).await, Err(Error::AuditUnavailable(_))));
    assert_eq!(f.catalog_rows("emp-1").await, 1);
    // a denial that cannot be logged, and a guessed id.
    assert!(matches!(f.d().metadata(&hr, &c, &id).await, Err(Error::AuditUnavailable(_))));
    assert!(matches!(
        f.d().metadata(&dr, &c, "0123456789abcdef0123456789abcdef").await,
        Err(Error::AuditUnavailable(_))
    ));
    assert_eq!(f.rows().await.len(), entries, "nothing was logged");

    f.h.store.mend_audit().await;
    let mut out = Vec::new();
    f.d().get(&dr, &c, &id, &mut out).await.unwrap();
    assert_eq!(out, letter(), "the document survived the refused delete");
    let new = f.put_as(&dr, "medical", "emp-1", None).await.unwrap();
    f.d().delete(&dr, &c, &new).await.unwrap();
    assert_eq!(f.catalog_rows("emp-1").await, 1);
    let v = kluis_service::audit::verify(&f.h.store).await.unwrap();
    assert!(v.is_ok(), "{v:?}");
    f.h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_must_be_in_the_services_store() {
    let a = common::sqlite(1000).await.unwrap();
    let b = local(common::sqlite(1000).await.unwrap()).await;
    assert!(matches!(a.svc.documents(&b.docs), Err(Error::Invalid { .. })));
    assert!(b.h.svc.documents(&b.docs).is_ok());
    // The calls' futures are `Send` (an app spawns them); not awaited here.
    fn send<T: Send>(t: T) -> T {
        t
    }
    let (d, p, c) = (b.d(), user(&b.h.acme, "company_doctor"), ctx());
    let doc = NewDocument { subject: "emp-1".into(), record: None, metadata: meta(NAME, 1) };
    drop(send(d.put(&p, &c, &DomainName::medical(), doc, &b"x"[..])));
    drop(send(d.get(&p, &c, "x", Vec::new())));
    drop(send(d.get_range(&p, &c, "x", 0, 1)));
    drop(send(d.metadata(&p, &c, "x")));
    drop(send(d.list_by_subject(&p, &c, "emp-1")));
    drop(send(d.list_by_record(&p, &c, "r-1")));
    drop(send(d.delete(&p, &c, "x")));
}

async fn local_opt<S: Engine>(h: H<S>) -> Option<F<S, LocalDir>> {
    Some(local(h).await)
}

macro_rules! engine {
    ($m:ident, $s:ty, $d:ty, $store:path, $blob:path) => {
        mod $m {
            use super::*;
            async fn make() -> Option<F<$s, $d>> {
                let h = $store(1000).await?;
                $blob(h).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn role_domain_action_matrix() {
                let Some(f) = make().await else { return };
                matrix(f).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cross_tenant_and_guessed_ids() {
                let Some(f) = make().await else { return };
                cross_tenant(f).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn withheld_listing() {
                let Some(f) = make().await else { return };
                withheld(f).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn break_glass_and_support_grants() {
                let Some(f) = make().await else { return };
                break_glass_and_support(f).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn canaries_never_in_the_log() {
                let Some(f) = make().await else { return };
                canaries(f).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fail_closed_audit_refused() {
                let Some(f) = make().await else { return };
                fail_closed(f).await;
            }
        }
    };
}

use kluis_blob::azure::AzureBlob;
use kluis_store::{MySql, Postgres, Sqlite};

engine!(sqlite_local, Sqlite, LocalDir, common::sqlite, local_opt);
engine!(postgres_local, Postgres, LocalDir, common::postgres, local_opt);
engine!(mariadb_local, MySql, LocalDir, common::mysql, local_opt);
engine!(sqlite_azurite, Sqlite, AzureBlob, common::sqlite, azurite);
