//! Documents through the `kluis-store` catalog: a real SQLite store with a real keyring, and
//! every blob backend (local directory, SMB share, Azurite). Put/list/get/range/delete, withheld listings,
//! shredding, record deletion with garbage collection, re-encryption after a domain key
//! rotation, and simulated crashes in the middle of a re-encryption.
#![cfg(feature = "azure")]
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{content, grace_zero, kv, meta, test_options};
use kluis_blob::catalog::Documents;
use kluis_blob::{
    BlobBackend, BlobError, DocumentDescriptor, DocumentKeys, DocumentVault, GcReport, NewDocument,
    ObjectName, Upload,
};
use kluis_core::{DomainName, Error as CoreError, KeyKind, KeyRef, LocalKeyring, TenantId};
use kluis_store::{Access, DocumentRow, Schema, Sqlite, Store, StoreError};

const SCHEMA: &str = r#"
[collections.absence.fields]
start_date = { type = "date", domain = "general" }
diagnosis  = { type = "text", domain = "medical" }
"#;

/// A SQLite store with a keyring, a doctor (general + medical) and HR (general only).
struct Catalog {
    store: Arc<Store<Sqlite>>,
    keyring: LocalKeyring,
    tenant: TenantId,
    doctor: Access,
    hr: Access,
    _tmp: tempfile::TempDir,
}

impl Catalog {
    async fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Sqlite::open(&tmp.path().join("kluis.db")).await.unwrap();
        let store = Store::new(backend, Schema::from_toml(SCHEMA).unwrap());
        store.migrate().await.unwrap();
        let keyring = LocalKeyring::generate(0).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let doctor = store
            .admin_access(&keyring, &tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap();
        let hr = store.admin_access(&keyring, &tenant, &[DomainName::general()]).await.unwrap();
        Self { store: Arc::new(store), keyring, tenant, doctor, hr, _tmp: tmp }
    }

    async fn refresh(&mut self) {
        self.doctor = self
            .store
            .admin_access(&self.keyring, &self.tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap();
        self.hr =
            self.store.admin_access(&self.keyring, &self.tenant, &[DomainName::general()]).await.unwrap();
    }
}

/// Fault injection around a real backend: "crash" right after an upload is committed (the
/// object is stored, the caller sees an error), or refuse deletes (the process died before it
/// deleted). Everything else goes to the real backend.
#[derive(Debug)]
struct Faulty<B> {
    inner: B,
    fail_after_commit: Arc<AtomicBool>,
    fail_delete: Arc<AtomicBool>,
}

struct FaultyUpload<U> {
    inner: U,
    fail_after_commit: bool,
}

impl<U: Upload> Upload for FaultyUpload<U> {
    async fn append(&mut self, part: &[u8]) -> kluis_blob::Result<()> {
        self.inner.append(part).await
    }
    async fn commit(self) -> kluis_blob::Result<u64> {
        let n = self.inner.commit().await?;
        if self.fail_after_commit {
            return Err(BlobError::Task("simulated crash after commit"));
        }
        Ok(n)
    }
    async fn abort(self) -> kluis_blob::Result<()> {
        self.inner.abort().await
    }
}

impl<B: BlobBackend> BlobBackend for Faulty<B> {
    type Upload = FaultyUpload<B::Upload>;
    async fn begin(&self, name: &ObjectName) -> kluis_blob::Result<Self::Upload> {
        let inner = self.inner.begin(name).await?;
        Ok(FaultyUpload { inner, fail_after_commit: self.fail_after_commit.load(Ordering::SeqCst) })
    }
    async fn len(&self, name: &ObjectName) -> kluis_blob::Result<u64> {
        self.inner.len(name).await
    }
    async fn read_range(
        &self,
        name: &ObjectName,
        s: u64,
        e: u64,
        out: &mut Vec<u8>,
    ) -> kluis_blob::Result<()> {
        self.inner.read_range(name, s, e, out).await
    }
    async fn read_split(
        &self,
        name: &ObjectName,
        s: u64,
        e: u64,
        piece: usize,
        out: &mut [Vec<u8>],
    ) -> kluis_blob::Result<usize> {
        self.inner.read_split(name, s, e, piece, out).await
    }
    async fn delete(&self, name: &ObjectName) -> kluis_blob::Result<bool> {
        if self.fail_delete.load(Ordering::SeqCst) {
            return Err(BlobError::Task("simulated crash before delete"));
        }
        self.inner.delete(name).await
    }
    async fn list(&self) -> kluis_blob::Result<Vec<ObjectName>> {
        self.inner.list().await
    }
    async fn collect_garbage(
        &self,
        live: &HashSet<ObjectName>,
        grace: Duration,
    ) -> kluis_blob::Result<GcReport> {
        self.inner.collect_garbage(live, grace).await
    }
}

struct Fixture<B: BlobBackend> {
    cat: Catalog,
    docs: Documents<Sqlite, Faulty<B>>,
    fail_after_commit: Arc<AtomicBool>,
    fail_delete: Arc<AtomicBool>,
}

impl<B: BlobBackend> Fixture<B> {
    async fn new(backend: B) -> Self {
        let cat = Catalog::new().await;
        let fail_after_commit = Arc::new(AtomicBool::new(false));
        let fail_delete = Arc::new(AtomicBool::new(false));
        let faulty = Faulty {
            inner: backend,
            fail_after_commit: fail_after_commit.clone(),
            fail_delete: fail_delete.clone(),
        };
        let docs =
            Documents::new(cat.store.clone(), DocumentVault::with_options(faulty, test_options()).unwrap());
        Self { cat, docs, fail_after_commit, fail_delete }
    }

    async fn put(
        &self,
        access: &Access,
        domain: DomainName,
        subject: &str,
        record: Option<&str>,
        name: &str,
        body: &[u8],
    ) -> DocumentRow {
        let doc = NewDocument {
            subject: subject.to_owned(),
            record: record.map(str::to_owned),
            metadata: meta(name, Some(body.len() as u64)),
        };
        self.docs.put(access, &domain, doc, body).await.unwrap()
    }

    async fn read(
        &self,
        access: &Access,
        id: &str,
    ) -> kluis_blob::Result<(Vec<u8>, kluis_core::DocumentMetadata)> {
        let mut out = Vec::new();
        let m = self.docs.get(access, id, &mut out).await?;
        Ok((out, m))
    }

    /// Objects in storage.
    async fn objects(&self) -> BTreeSet<String> {
        self.docs.vault().list_objects().await.unwrap().iter().map(|n| n.to_string()).collect()
    }

    /// Objects the catalog references.
    async fn referenced(&self) -> BTreeSet<String> {
        self.cat.store.document_object_names().await.unwrap().into_iter().collect()
    }
}

/// Runs a test body on every backend: a fresh local directory, a folder on the SMB test share
/// and Azurite (both skipped outside CI when not running).
macro_rules! both_backends {
    ($($name:ident => $body:ident;)*) => {
        mod local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let h = super::common::local().await;
                super::$body(super::Fixture::new(h.backend()).await).await;
            })*
        }
        mod smb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(h) = super::common::smb().await else { return };
                super::$body(super::Fixture::new(h.backend()).await).await;
            })*
        }
        mod azurite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(h) = super::common::azure().await else { return };
                super::$body(super::Fixture::new(h.backend()).await).await;
            })*
        }
    };
}

both_backends! {
    put_list_get_range_delete => put_list_get_range_delete_body;
    shredding_makes_documents_unreadable => shredding_body;
    record_deleted_then_gc_leaves_no_orphan => record_gc_body;
    reencrypt_after_rotation => reencrypt_body;
    reencrypt_survives_crashes => crash_body;
}

async fn put_list_get_range_delete_body<B: BlobBackend>(f: Fixture<B>) {
    let (doctor, hr) = (&f.cat.doctor, &f.cat.hr);
    let letter = content(20_000, 1);
    let contract = content(9_000, 2);
    let other = content(5_000, 3);
    let l = f.put(doctor, DomainName::medical(), "emp-1", Some("abs-1"), "brief-huisarts.pdf", &letter).await;
    let c = f.put(hr, DomainName::general(), "emp-1", None, "contract.docx", &contract).await;
    let o = f.put(hr, DomainName::general(), "emp-2", Some("abs-1"), "verlof.pdf", &other).await;
    assert_eq!(l.key_ref, "subject:medical:v1");
    assert_eq!(c.key_ref, "subject:general:v1");
    assert_ne!(l.document_id, l.object_name);

    // get: bytes and metadata come back.
    let (bytes, m) = f.read(doctor, &l.document_id).await.unwrap();
    assert_eq!(bytes, letter);
    assert_eq!(m.file_name, "brief-huisarts.pdf");
    assert_eq!(m.extension, "pdf");
    assert_eq!(f.docs.metadata(doctor, &c.document_id).await.unwrap().file_name, "contract.docx");
    let r = f.docs.get_range(doctor, &l.document_id, 4000, 12_345).await.unwrap();
    assert_eq!(r.expose_secret(), &letter[4000..12_345]);

    // list by subject: the doctor sees both; HR sees the contract and a withheld medical entry.
    let all = f.docs.list_by_subject(doctor, "emp-1").await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|e| !e.is_withheld()));
    let names: BTreeSet<_> = all.iter().map(|e| e.metadata.as_ref().unwrap().file_name.clone()).collect();
    assert_eq!(names, BTreeSet::from(["brief-huisarts.pdf".to_owned(), "contract.docx".to_owned()]));
    let hr_list = f.docs.list_by_subject(hr, "emp-1").await.unwrap();
    assert_eq!(hr_list.len(), 2);
    let med = hr_list.iter().find(|e| e.domain == DomainName::medical()).unwrap();
    assert!(med.is_withheld());
    assert_eq!(med.document_id, l.document_id);
    let general_doc = hr_list.iter().find(|e| e.domain == DomainName::general()).unwrap();
    assert_eq!(general_doc.metadata.as_ref().unwrap().file_name, "contract.docx");
    // Debug of a withheld listing and of rows holds no file name.
    let dbg = format!("{hr_list:?} {all:?} {l:?}");
    assert!(!dbg.contains("huisarts") && !dbg.contains("contract.docx"), "{dbg}");

    // list by record: across subjects.
    let rec = f.docs.list_by_record(doctor, "abs-1").await.unwrap();
    let ids: BTreeSet<_> = rec.iter().map(|e| e.document_id.clone()).collect();
    assert_eq!(ids, BTreeSet::from([l.document_id.clone(), o.document_id.clone()]));
    let rec_hr = f.docs.list_by_record(hr, "abs-1").await.unwrap();
    assert_eq!(rec_hr.iter().filter(|e| e.is_withheld()).count(), 1);

    // HR cannot read, range-read or delete the medical document.
    for e in [
        f.read(hr, &l.document_id).await.map(|_| ()).unwrap_err(),
        f.docs.get_range(hr, &l.document_id, 0, 10).await.map(|_| ()).unwrap_err(),
        f.docs.metadata(hr, &l.document_id).await.map(|_| ()).unwrap_err(),
        f.docs.delete(hr, &l.document_id).await.map(|_| ()).unwrap_err(),
    ] {
        assert!(matches!(e, BlobError::Store(StoreError::AccessDenied { .. })), "{e:?}");
    }
    // Another tenant sees nothing of acme's.
    let other_tenant = f
        .cat
        .store
        .admin_access(
            &f.cat.keyring,
            &TenantId::new("globex").unwrap(),
            &[DomainName::general(), DomainName::medical()],
        )
        .await
        .unwrap();
    assert!(matches!(f.read(&other_tenant, &l.document_id).await, Err(BlobError::UnknownDocument)));
    assert!(f.docs.list_by_subject(&other_tenant, "emp-1").await.unwrap().is_empty());
    assert!(!f.docs.delete(&other_tenant, &l.document_id).await.unwrap());

    // delete: row then object.
    assert_eq!(f.objects().await.len(), 3);
    assert!(f.docs.delete(doctor, &l.document_id).await.unwrap());
    assert!(!f.objects().await.contains(&l.object_name));
    assert!(matches!(f.read(doctor, &l.document_id).await, Err(BlobError::UnknownDocument)));
    assert!(!f.docs.delete(doctor, &l.document_id).await.unwrap());
    assert_eq!(f.docs.list_by_subject(doctor, "emp-1").await.unwrap().len(), 1);
    assert_eq!(f.objects().await, f.referenced().await);
}

fn descriptor(access: &Access, row: &DocumentRow, version: u32) -> DocumentDescriptor {
    DocumentDescriptor {
        object: ObjectName::parse(&row.object_name).unwrap(),
        tenant: access.tenant().clone(),
        domain: DomainName::new(row.domain.clone()).unwrap(),
        subject: row.subject.clone(),
        record: row.record_id.clone(),
        wrapping_key: KeyRef::new(KeyKind::Subject, kv(version)),
        object_len: row.padded_size as u64,
    }
}

async fn shredding_body<B: BlobBackend>(mut f: Fixture<B>) {
    let body = content(10_000, 7);
    let med = f.put(&f.cat.doctor, DomainName::medical(), "emp-9", None, "diagnose.pdf", &body).await;
    let general_doc =
        f.put(&f.cat.doctor, DomainName::general(), "emp-9", Some("abs-9"), "contract.pdf", &body).await;
    let keep = f.put(&f.cat.doctor, DomainName::medical(), "emp-10", None, "other.pdf", &body).await;
    // Before: readable with the subject key the catalog names.
    let sk =
        f.cat.store.subject_key_version(&f.cat.doctor, &DomainName::medical(), "emp-9", kv(1)).await.unwrap();
    let set = f.cat.doctor.set("medical").unwrap();
    let mut out = Vec::new();
    f.docs
        .vault()
        .get(&descriptor(&f.cat.doctor, &med, 1), &DocumentKeys::with_subject(set, &sk), &mut out)
        .await
        .unwrap();
    assert_eq!(out, body);
    drop(sk);

    f.cat.store.shred_subject(&f.cat.keyring, &mut f.cat.doctor, "emp-9", None).await.unwrap();
    f.cat.refresh().await;
    let doctor = &f.cat.doctor;
    // The catalog no longer knows them.
    assert!(matches!(f.read(doctor, &med.document_id).await, Err(BlobError::UnknownDocument)));
    assert!(f.docs.list_by_subject(doctor, "emp-9").await.unwrap().is_empty());
    assert!(f.docs.list_by_record(doctor, "abs-9").await.unwrap().is_empty());
    // The objects are still in storage (until GC), but no key opens them: the old subject key
    // version is gone, and a new subject key of the same subject (version 1 again) does not fit.
    assert!(f.objects().await.contains(&med.object_name));
    let gone =
        f.cat.store.subject_key_version(doctor, &DomainName::medical(), "emp-9", kv(1)).await.unwrap_err();
    assert!(matches!(gone, StoreError::Shredded { .. }), "{gone:?}");
    for (row, domain) in [(&med, DomainName::medical()), (&general_doc, DomainName::general())] {
        let (v, fresh) = f.cat.store.subject_key(doctor, &domain, "emp-9").await.unwrap();
        assert_eq!(v, kv(1));
        let set = doctor.set(domain.as_str()).unwrap();
        let mut out = Vec::new();
        let e = f
            .docs
            .vault()
            .get(&descriptor(doctor, row, 1), &DocumentKeys::with_subject(set, &fresh), &mut out)
            .await
            .unwrap_err();
        assert!(matches!(e, BlobError::Core(CoreError::Decrypt)), "{e:?}");
        assert!(out.is_empty());
        // Nor the domain key set alone.
        let e = f
            .docs
            .vault()
            .metadata(&descriptor(doctor, row, 1), &DocumentKeys::domain(set))
            .await
            .unwrap_err();
        assert!(matches!(e, BlobError::Core(CoreError::UnknownKey { .. })), "{e:?}");
    }
    // The other subject's document is untouched, and GC removes the shredded objects.
    assert_eq!(f.read(doctor, &keep.document_id).await.unwrap().0, body);
    let r = f.docs.collect_garbage(grace_zero()).await.unwrap();
    assert_eq!(r.orphans, 2);
    assert_eq!(f.objects().await, BTreeSet::from([keep.object_name.clone()]));
}

async fn record_gc_body<B: BlobBackend>(f: Fixture<B>) {
    let doctor = &f.cat.doctor;
    let body = content(6_000, 11);
    let a = f.put(doctor, DomainName::medical(), "emp-3", Some("abs-3"), "a.pdf", &body).await;
    let b = f.put(doctor, DomainName::general(), "emp-3", Some("abs-3"), "b.pdf", &body).await;
    let c = f.put(doctor, DomainName::general(), "emp-3", Some("abs-4"), "c.pdf", &body).await;
    // The record is deleted: one document through the catalog (row, then object); for the other
    // the process "died" after the row was removed, before the object was.
    assert!(f.docs.delete(doctor, &a.document_id).await.unwrap());
    f.fail_delete.store(true, Ordering::SeqCst);
    assert!(f.docs.delete(doctor, &b.document_id).await.unwrap());
    f.fail_delete.store(false, Ordering::SeqCst);
    assert!(f.docs.list_by_record(doctor, "abs-3").await.unwrap().is_empty());
    assert!(f.objects().await.contains(&b.object_name), "the orphan is there before GC");
    // A GC with a grace period keeps the young orphan; one without removes it.
    let r = f.docs.collect_garbage(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(r.orphans, 0);
    assert!(f.objects().await.contains(&b.object_name));
    let r = f.docs.collect_garbage(grace_zero()).await.unwrap();
    assert_eq!(r.orphans, 1);
    assert_eq!(f.objects().await, BTreeSet::from([c.object_name.clone()]));
    assert_eq!(f.objects().await, f.referenced().await);
    assert_eq!(f.read(doctor, &c.document_id).await.unwrap().0, body);
}

/// Documents on each domain key version of medical.
async fn medical_usage(cat: &Catalog) -> Vec<(u32, u64, u64)> {
    let mut v: Vec<_> = cat
        .store
        .key_usage(Some(&cat.tenant))
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.domain == DomainName::medical())
        .map(|u| (u.version.get(), u.subject_keys, u.documents))
        .collect();
    v.sort();
    v
}

async fn rotate_and_move_subjects<B: BlobBackend>(f: &mut Fixture<B>) -> u32 {
    let medical = DomainName::medical();
    let v = f.cat.store.rotate_domain_key(&f.cat.keyring, &f.cat.tenant, &medical).await.unwrap();
    f.cat.refresh().await;
    for _ in 0..20 {
        let p = f.cat.store.reencrypt_step(&f.cat.doctor, &medical, 10).await.unwrap();
        // Subjects whose old subject key version documents still use stay counted as
        // remaining until the documents move; a step that moves nothing is the end.
        if p.remaining_subjects == 0 || p.subjects_moved == 0 {
            return v.get();
        }
        eprintln!("store re-encryption step: {p:?}");
    }
    panic!("the store's re-encryption did not finish in 20 steps");
}

async fn reencrypt_body<B: BlobBackend>(mut f: Fixture<B>) {
    let medical = DomainName::medical();
    let bodies: Vec<Vec<u8>> = (0..4).map(|i| content(3_000 + i * 7_000, 20 + i as u64)).collect();
    let mut rows = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let subject = if i % 2 == 0 { "emp-5" } else { "emp-6" };
        rows.push(
            f.put(&f.cat.doctor, medical.clone(), subject, Some("abs-5"), &format!("scan-{i}.pdf"), b).await,
        );
    }
    let general =
        f.put(&f.cat.doctor, DomainName::general(), "emp-5", None, "contract.pdf", &bodies[0]).await;
    assert_eq!(medical_usage(&f.cat).await, vec![(1, 2, 4)]);

    let v2 = rotate_and_move_subjects(&mut f).await;
    assert_eq!(v2, 2);
    // The subjects moved to a new subject key under v2; the documents still hold v1's.
    let usage = medical_usage(&f.cat).await;
    assert_eq!(usage.iter().find(|u| u.0 == 1).unwrap().2, 4, "{usage:?}");
    let doctor = &f.cat.doctor;
    // Still readable while not moved.
    for (row, b) in rows.iter().zip(&bodies) {
        assert_eq!(&f.read(doctor, &row.document_id).await.unwrap().0, b);
    }

    // One document per step.
    let p = f.docs.reencrypt_step(doctor, &medical, 1).await.unwrap();
    assert_eq!((p.moved, p.remaining, p.conflicts), (1, 3, 0));
    let p = f.docs.reencrypt_step(doctor, &medical, 10).await.unwrap();
    assert_eq!((p.moved, p.remaining), (3, 0));
    let p = f.docs.reencrypt_step(doctor, &medical, 10).await.unwrap();
    assert_eq!((p.moved, p.remaining), (0, 0));

    for (i, (row, b)) in rows.iter().zip(&bodies).enumerate() {
        let (bytes, m) = f.read(doctor, &row.document_id).await.unwrap();
        assert_eq!(&bytes, b);
        assert_eq!(m.file_name, format!("scan-{i}.pdf"));
        let now = f.cat.store.document(doctor, &row.document_id).await.unwrap().unwrap();
        assert_ne!(now.object_name, row.object_name, "a new object");
        assert_ne!(now.key_ref, row.key_ref);
        assert_eq!((now.subject.as_str(), now.record_id.as_deref()), (row.subject.as_str(), Some("abs-5")));
    }
    // Old objects gone: storage holds exactly what the catalog references.
    let objects = f.objects().await;
    assert!(rows.iter().all(|r| !objects.contains(&r.object_name)));
    assert_eq!(objects, f.referenced().await);
    assert!(objects.contains(&general.object_name));
    // The store's next step deletes the unused old subject keys: nothing left on v1.
    f.cat.store.reencrypt_step(doctor, &medical, 10).await.unwrap();
    let usage = medical_usage(&f.cat).await;
    let v1 = usage.iter().find(|u| u.0 == 1).map_or((1, 0, 0), |u| *u);
    assert_eq!((v1.1, v1.2), (0, 0), "{usage:?}");
    assert_eq!(usage.iter().find(|u| u.0 == 2).unwrap().2, 4, "{usage:?}");
    for (row, b) in rows.iter().zip(&bodies) {
        assert_eq!(&f.read(doctor, &row.document_id).await.unwrap().0, b);
    }
    // The general document was not touched.
    let g = f.cat.store.document(doctor, &general.document_id).await.unwrap().unwrap();
    assert_eq!(g.object_name, general.object_name);
}

async fn crash_body<B: BlobBackend>(mut f: Fixture<B>) {
    let medical = DomainName::medical();
    let body = content(25_000, 31);
    let row = f.put(&f.cat.doctor, medical.clone(), "emp-7", None, "echo.pdf", &body).await;
    rotate_and_move_subjects(&mut f).await;
    let doctor = &f.cat.doctor;

    // Crash 1: the new object is written, the catalog not yet swapped.
    f.fail_after_commit.store(true, Ordering::SeqCst);
    let e = f.docs.reencrypt_step(doctor, &medical, 10).await.unwrap_err();
    assert!(matches!(e, BlobError::Task(_)), "{e:?}");
    f.fail_after_commit.store(false, Ordering::SeqCst);
    let now = f.cat.store.document(doctor, &row.document_id).await.unwrap().unwrap();
    assert_eq!(now.object_name, row.object_name, "the catalog still names the old object");
    assert_eq!(f.read(doctor, &row.document_id).await.unwrap().0, body);
    let objects = f.objects().await;
    assert_eq!(objects.len(), 2, "old object and the unreferenced new one");
    let stray: Vec<_> = objects.iter().filter(|o| **o != row.object_name).cloned().collect();

    // Crash 2 on the rerun: swapped, but the old object not deleted.
    f.fail_delete.store(true, Ordering::SeqCst);
    let p = f.docs.reencrypt_step(doctor, &medical, 10).await.unwrap();
    f.fail_delete.store(false, Ordering::SeqCst);
    assert_eq!((p.moved, p.remaining), (1, 0));
    let now = f.cat.store.document(doctor, &row.document_id).await.unwrap().unwrap();
    assert_ne!(now.object_name, row.object_name);
    assert_eq!(now.key_ref, "subject:medical:v2");
    let (bytes, m) = f.read(doctor, &row.document_id).await.unwrap();
    assert_eq!((bytes, m.file_name.as_str()), (body.clone(), "echo.pdf"));
    let objects = f.objects().await;
    assert_eq!(objects.len(), 3, "old, stray from crash 1, and the referenced new one");
    assert!(objects.contains(&row.object_name) && objects.contains(&stray[0]));

    // A rerun has nothing left to do; GC removes both leftovers and keeps the live object.
    let p = f.docs.reencrypt_step(doctor, &medical, 10).await.unwrap();
    assert_eq!((p.moved, p.remaining), (0, 0));
    let r = f.docs.collect_garbage(grace_zero()).await.unwrap();
    assert_eq!(r.orphans, 2);
    assert_eq!(f.objects().await, BTreeSet::from([now.object_name.clone()]));
    assert_eq!(f.read(doctor, &row.document_id).await.unwrap().0, body);
    f.cat.store.reencrypt_step(doctor, &medical, 10).await.unwrap();
    let usage = medical_usage(&f.cat).await;
    assert!(usage.iter().filter(|u| u.0 == 1).all(|u| u.1 == 0 && u.2 == 0), "{usage:?}");
}
