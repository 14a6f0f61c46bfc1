//! Domain key rotation to the end, on every engine: rotate, re-encrypt step by step (also
//! interrupted, also while other writers and a second `Store` with a warm subject key cache keep
//! writing), usage, retirement; root rewrap is atomic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Harness, Location, Raw, all_engines, kv, t};
use kluis_core::keys::{BoxFuture, RootKeyProvider, UnwrapRequest};
use kluis_core::{DomainName, KeyMaterial, KeyState, WrappedKey};
use kluis_store::Engine;
use kluis_store::{
    Access, Changes, DocumentRow, FieldValue, KeyUsage, NewRecord, ReencryptProgress, Store, StoreError,
    Value,
};
use kluis_store::{MySql, Postgres, Sqlite};

fn absence(subject: &str, emp: &str, diagnosis: &str) -> NewRecord {
    NewRecord::new(subject)
        .set("start_date", Value::Date("2025-03-01".into()))
        .set("end_date", Value::Date("2025-03-14".into()))
        .set("work_capacity", Value::Decimal("50".into()))
        .set("employee_number", emp)
        .set("diagnosis", diagnosis)
        .set("doctor_notes", "rest; see again in two weeks")
}

type Snapshot = BTreeMap<String, (String, BTreeMap<String, FieldValue>)>;

/// Every absence record as `access` reads it: id -> (subject, fields). Fails if any cell does
/// not open.
async fn snapshot<B: Engine>(s: &Store<B>, access: &Access) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list(access, "absence", None, after.as_deref(), 50).await.unwrap();
        for r in page.records {
            out.insert(r.id.clone(), (r.subject.clone(), r.fields.clone()));
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    out
}

fn usage_of(usage: &[KeyUsage], domain: &DomainName, version: u32) -> KeyUsage {
    usage.iter().find(|u| &u.domain == domain && u.version == kv(version)).cloned().unwrap()
}

/// Steps until nothing is left (or only documents block, when `docs_pending`).
async fn run_to_done<B: Engine>(s: &Store<B>, access: &Access, domain: &DomainName) -> ReencryptProgress {
    let mut total = ReencryptProgress::default();
    for _ in 0..200 {
        let p = s.reencrypt_step(access, domain, 2).await.unwrap();
        total.subjects_moved += p.subjects_moved;
        total.records_resealed += p.records_resealed;
        total.conflicts += p.conflicts;
        total.remaining_subjects = p.remaining_subjects;
        if p.remaining_subjects == 0 || (p.subjects_moved == 0 && p.conflicts == 0) {
            return total;
        }
    }
    panic!("re-encryption did not finish");
}

/// Cells whose subject key version no longer exists (must never happen).
async fn orphan_cells<B: Engine>(s: &Store<B>) -> Vec<Vec<u8>>
where
    Store<B>: Raw,
{
    s.raw_bytes(
        "SELECT r.id FROM kluis_r_absence r LEFT JOIN kluis_subject_keys k \
         ON k.tenant = r.tenant AND k.domain = 'medical' AND k.subject = r.subject AND k.version = r.k_diagnosis \
         WHERE r.f_diagnosis IS NOT NULL AND k.subject IS NULL",
        vec![],
    )
    .await
}

async fn rotate_reencrypt_retire<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let med = DomainName::medical();
    let s = &h.store;
    for i in 0..6 {
        let r = absence(&format!("emp-{}", i % 3), &format!("E{i}"), &format!("diag-{i}"))
            .id(&format!("abs-{i}"));
        s.insert(&h.doctor, "absence", r).await.unwrap();
    }
    // A catalog document of emp-1, wrapped by its medical subject key (as kluis-blob does).
    let (v, _key) = s.subject_key(&h.doctor, &med, "emp-1").await.unwrap();
    assert_eq!(v.get(), 1);
    let doc = DocumentRow {
        tenant: "acme".into(),
        document_id: "doc-1".into(),
        domain: "medical".into(),
        subject: "emp-1".into(),
        record_id: Some("abs-1".into()),
        object_name: "obj-a".into(),
        key_ref: format!("subject:medical:v{v}"),
        padded_size: 4096,
        created_at: 1,
        sealed_meta: vec![1, 2, 3],
    };
    s.insert_document(&h.doctor, doc.clone()).await.unwrap();
    let before = snapshot(s, &h.doctor).await;
    assert_eq!(before.len(), 6);

    let usage = s.key_usage(Some(&h.tenant)).await.unwrap();
    let m1 = usage_of(&usage, &med, 1);
    assert_eq!((m1.state, m1.subject_keys, m1.records, m1.documents), (KeyState::Active, 3, 6, 1));
    let g1 = usage_of(&usage, &DomainName::general(), 1);
    assert_eq!((g1.subject_keys, g1.records, g1.documents), (3, 6, 0));
    assert_eq!(s.tenants().await.unwrap(), vec![h.tenant.clone()]);

    assert_eq!(s.rotate_domain_key(&h.keyring, &h.tenant, &med).await.unwrap(), kv(2));
    // The caller's keys predate the rotation: re-encrypting with them is refused.
    let e = s.reencrypt_step(&h.doctor, &med, 10).await;
    assert!(matches!(&e, Err(err @ StoreError::KeyChanged { .. }) if err.is_retryable()), "{e:?}");
    // Nothing re-encrypted yet: retiring v1 is refused, and the active version never retires.
    let e = s.retire_domain_version(&h.keyring, &h.tenant, &med, kv(1)).await;
    assert!(
        matches!(e, Err(StoreError::KeyInUse { version, subject_keys: 3, records: 6, documents: 1, .. }) if version == kv(1)),
        "{e:?}"
    );
    let e = s.retire_domain_version(&h.keyring, &h.tenant, &med, kv(2)).await;
    assert!(matches!(e, Err(StoreError::ActiveKey { version, .. }) if version == kv(2)), "{e:?}");

    h.refresh().await;
    let s = &h.store;
    let p = s.reencrypt_step(&h.doctor, &med, 2).await.unwrap();
    assert_eq!((p.subjects_moved, p.conflicts), (2, 0), "{p:?}");
    assert_eq!(p.remaining_subjects, 2, "{p:?}");
    // Half-way: everything still opens, retiring is still refused.
    assert_eq!(snapshot(s, &h.doctor).await, before);
    assert!(matches!(
        s.retire_domain_version(&h.keyring, &h.tenant, &med, kv(1)).await,
        Err(StoreError::KeyInUse { .. })
    ));
    let total = run_to_done(s, &h.doctor, &med).await;
    // emp-1's cells moved, but its old subject key stays while the document uses it.
    assert_eq!(total.remaining_subjects, 1, "{total:?}");
    let m1 = usage_of(&s.key_usage(None).await.unwrap(), &med, 1);
    assert_eq!((m1.subject_keys, m1.records, m1.documents), (1, 0, 1), "{m1:?}");
    let e = s.retire_domain_version(&h.keyring, &h.tenant, &med, kv(1)).await;
    assert!(matches!(e, Err(StoreError::KeyInUse { subject_keys: 1, documents: 1, .. })), "{e:?}");

    // What the documents' re-encryption does: new object under the newest subject key, then a
    // compare-and-swap of the catalog row.
    let (v, _key) = s.subject_key(&h.doctor, &med, "emp-1").await.unwrap();
    assert_eq!(v.get(), 2);
    let old_key = s.subject_key_version(&h.doctor, &med, "emp-1", kv(1)).await;
    assert!(old_key.is_ok(), "the old version stays while the document uses it");
    let moved =
        DocumentRow { object_name: "obj-b".into(), key_ref: format!("subject:medical:v{v}"), ..doc.clone() };
    assert!(s.replace_document(&h.doctor, "obj-a", moved.clone()).await.unwrap());
    assert!(!s.replace_document(&h.doctor, "obj-a", moved.clone()).await.unwrap(), "compare-and-swap");
    assert_eq!(s.document(&h.doctor, "doc-1").await.unwrap(), Some(moved));
    assert_eq!(s.document_object_names().await.unwrap(), vec!["obj-b".to_owned()]);

    let total = run_to_done(s, &h.doctor, &med).await;
    assert_eq!(total.remaining_subjects, 0, "{total:?}");
    let m1 = usage_of(&s.key_usage(Some(&h.tenant)).await.unwrap(), &med, 1);
    assert!(m1.is_unused(), "{m1:?}");
    let e = s.subject_key_version(&h.doctor, &med, "emp-1", kv(1)).await;
    assert!(matches!(e, Err(StoreError::Core(kluis_core::Error::UnknownKey { .. }))), "{e:?}");
    // No subject key row is wrapped under v1 any more, not even in the raw table.
    let left = s
        .raw_bytes(
            "SELECT subject FROM kluis_subject_keys WHERE tenant = ? AND domain = ? AND wrap_version = 1",
            vec![t("acme"), t("medical")],
        )
        .await;
    assert!(left.is_empty());
    s.retire_domain_version(&h.keyring, &h.tenant, &med, kv(1)).await.unwrap();
    s.retire_domain_version(&h.keyring, &h.tenant, &med, kv(1)).await.unwrap(); // idempotent
    let m1 = usage_of(&s.key_usage(None).await.unwrap(), &med, 1);
    assert_eq!(m1.state, KeyState::Destroyed);
    let wrapped = s
        .raw_bytes(
            "SELECT wrapped FROM kluis_domain_keys WHERE tenant = ? AND domain = ? AND version = 1 AND wrapped IS NOT NULL",
            vec![t("acme"), t("medical")],
        )
        .await;
    assert!(wrapped.is_empty(), "the retired version's wrapped key is gone");

    // Everything opens with its original values (versions unchanged: re-sealing is not an edit),
    // blind-index search works under the new version, HR still sees medical fields withheld.
    h.refresh().await;
    let s = &h.store;
    assert_eq!(snapshot(s, &h.doctor).await, before);
    let hits = s.find(&h.doctor, "absence", "diagnosis", &Value::from("diag-4")).await.unwrap();
    assert_eq!(hits.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["abs-4"]);
    let hr = s.get(&h.hr, "absence", "abs-4").await.unwrap().unwrap();
    assert!(hr.fields["diagnosis"].is_withheld());
    assert_eq!(hr.get("employee_number"), Some(&Value::from("E4")));
    assert!(orphan_cells(s).await.is_empty());
    // Tampering still detected after re-encryption: a moved cell names the record.
    s.raw_exec(
        "UPDATE kluis_r_absence SET f_diagnosis = (SELECT f FROM (SELECT f_diagnosis AS f FROM kluis_r_absence WHERE id = 'abs-0') x) \
         WHERE id = 'abs-3'",
        vec![],
    )
    .await;
    let e = s.get(&h.doctor, "absence", "abs-3").await;
    assert!(matches!(&e, Err(StoreError::RowIntegrity { record, .. }) if record == "abs-3"), "{e:?}");
    h
}

/// A second, independent connection pool to the same database (another process).
trait Reopen: Engine + Sized {
    fn reopen(loc: &Location) -> impl std::future::Future<Output = sqlx::Pool<Self::Db>>;
}

impl Reopen for Sqlite {
    async fn reopen(loc: &Location) -> sqlx::Pool<Self::Db> {
        let Location::Sqlite { file, .. } = loc else { panic!("not sqlite") };
        kluis_store::Sqlite::open(file).await.unwrap()
    }
}

impl Reopen for Postgres {
    async fn reopen(loc: &Location) -> sqlx::Pool<Self::Db> {
        let Location::Postgres { url, .. } = loc else { panic!("not postgres") };
        sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(url).await.unwrap()
    }
}

impl Reopen for MySql {
    async fn reopen(loc: &Location) -> sqlx::Pool<Self::Db> {
        let Location::MySql { url, .. } = loc else { panic!("not mariadb") };
        sqlx::mysql::MySqlPoolOptions::new().max_connections(2).connect(url).await.unwrap()
    }
}

async fn reencrypt_interrupted<B: Engine + Clone + Reopen>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let med = DomainName::medical();
    for i in 0..12 {
        let r = absence(&format!("emp-{}", i % 6), &format!("E{i}"), &format!("diag-{i}"))
            .id(&format!("abs-{i:02}"));
        h.store.insert(&h.doctor, "absence", r).await.unwrap();
    }
    h.store.rotate_domain_key(&h.keyring, &h.tenant, &med).await.unwrap();
    h.refresh().await;
    let p = h.store.reencrypt_step(&h.doctor, &med, 1).await.unwrap();
    assert_eq!((p.subjects_moved, p.remaining_subjects), (1, 5), "{p:?}");
    // The app keeps writing between steps: an update of a subject not moved yet, a new record.
    let r = h.store.get(&h.doctor, "absence", "abs-05").await.unwrap().unwrap();
    h.store
        .update(&h.doctor, "absence", "abs-05", r.version, Changes::new().set("doctor_notes", "changed"))
        .await
        .unwrap();
    h.store.insert(&h.doctor, "absence", absence("emp-new", "E99", "diag-99").id("abs-99")).await.unwrap();
    let expected = snapshot(&h.store, &h.doctor).await;

    // Steps cut off at arbitrary points, as a killed process would be: its own connection pool,
    // the step dropped mid-flight, the connections closed (the server rolls back what was open).
    // Each subject's transaction is applied entirely or not at all.
    for i in 0..30u64 {
        let killed = Store::new(B::reopen(&h.location).await, common::schema());
        let access =
            killed.admin_access(&h.keyring, &h.tenant, &[DomainName::general(), med.clone()]).await.unwrap();
        let step = killed.reencrypt_step(&access, &med, 1);
        let _ = tokio::time::timeout(Duration::from_micros(400 * i), step).await;
        killed.pool().close().await;
        assert!(orphan_cells(&h.store).await.is_empty());
        assert_eq!(snapshot(&h.store, &h.doctor).await, expected);
    }
    // A new process (empty caches) continues where the others stopped.
    let other = Store::new(h.store.pool().clone(), common::schema());
    other.migrate().await.unwrap();
    let access =
        other.admin_access(&h.keyring, &h.tenant, &[DomainName::general(), med.clone()]).await.unwrap();
    let total = run_to_done(&other, &access, &med).await;
    assert_eq!(total.remaining_subjects, 0, "{total:?}");
    assert_eq!(snapshot(&other, &access).await, expected);
    assert_eq!(snapshot(&h.store, &h.doctor).await, expected);
    assert!(usage_of(&other.key_usage(None).await.unwrap(), &med, 1).is_unused());
    other.retire_domain_version(&h.keyring, &h.tenant, &med, kv(1)).await.unwrap();
    h.refresh().await;
    assert_eq!(snapshot(&h.store, &h.doctor).await, expected);
    h
}

async fn stale_cache_writer<B: Engine + Clone>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let med = DomainName::medical();
    let all = [DomainName::general(), med.clone()];
    h.store.insert(&h.doctor, "absence", absence("emp-9", "E9", "diag-9").id("abs-9")).await.unwrap();
    // Another process: its own subject key cache, warmed before the rotation, kept for an hour.
    let other =
        Store::new(h.store.pool().clone(), common::schema()).with_subject_key_ttl(Duration::from_secs(3600));
    let stale = other.admin_access(&h.keyring, &h.tenant, &all).await.unwrap();
    assert!(other.get(&stale, "absence", "abs-9").await.unwrap().is_some());

    h.store.rotate_domain_key(&h.keyring, &h.tenant, &med).await.unwrap();
    h.refresh().await;
    let total = run_to_done(&h.store, &h.doctor, &med).await;
    assert_eq!(total.remaining_subjects, 0);

    // The other process unlocks again (fresh domain keys) but still has emp-9's old subject key
    // (now deleted from the database) cached as the newest: its write is refused by the
    // database and retried internally under the new subject key.
    let fresh = other.admin_access(&h.keyring, &h.tenant, &all).await.unwrap();
    let r = h.store.get(&h.doctor, "absence", "abs-9").await.unwrap().unwrap();
    let w = other
        .update(&fresh, "absence", "abs-9", r.version, Changes::new().set("diagnosis", "diag-9b"))
        .await
        .unwrap();
    assert_eq!(w.version, r.version + 1);
    assert!(orphan_cells(&h.store).await.is_empty());
    let mine = h.store.get(&h.doctor, "absence", "abs-9").await.unwrap().unwrap();
    assert_eq!(mine.get("diagnosis"), Some(&Value::from("diag-9b")));
    assert!(usage_of(&h.store.key_usage(None).await.unwrap(), &med, 1).is_unused());

    // With keys unlocked before the rotation the write cannot succeed: a retryable error, and
    // nothing is written.
    let e = other.update(&stale, "absence", "abs-9", w.version, Changes::new().set("diagnosis", "x")).await;
    assert!(matches!(&e, Err(err @ StoreError::KeyChanged { .. }) if err.is_retryable()), "{e:?}");
    let mine = h.store.get(&h.doctor, "absence", "abs-9").await.unwrap().unwrap();
    assert_eq!((mine.version, mine.get("diagnosis")), (w.version, Some(&Value::from("diag-9b"))));
    h.store.retire_domain_version(&h.keyring, &h.tenant, &med, kv(1)).await.unwrap();
    h
}

async fn concurrent_writers<B: Engine + Clone>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    const ROUNDS: usize = 12;
    let med = DomainName::medical();
    let all = [DomainName::general(), med.clone()];
    for i in 0..8 {
        let r = absence(&format!("emp-{}", i % 4), &format!("E{i}"), &format!("diag-{i}"))
            .id(&format!("abs-{i}"));
        h.store.insert(&h.doctor, "absence", r).await.unwrap();
    }
    // A second store over the same database, as another process: warm cache, long TTL.
    let other =
        Store::new(h.store.pool().clone(), common::schema()).with_subject_key_ttl(Duration::from_secs(3600));
    let warm = other.admin_access(&h.keyring, &h.tenant, &all).await.unwrap();
    assert_eq!(snapshot(&other, &warm).await.len(), 8);

    h.store.rotate_domain_key(&h.keyring, &h.tenant, &med).await.unwrap();
    h.refresh().await;
    let access_b = other.admin_access(&h.keyring, &h.tenant, &all).await.unwrap();
    let done = AtomicUsize::new(0);

    // Writer A (this store): medical and general updates of abs-0..3.
    let writer_a = async {
        let mut versions: BTreeMap<String, u64> = BTreeMap::new();
        for round in 0..ROUNDS {
            for i in 0..4 {
                let id = format!("abs-{i}");
                let v = match versions.get(&id) {
                    Some(v) => *v,
                    None => h.store.get(&h.doctor, "absence", &id).await.unwrap().unwrap().version,
                };
                let c = Changes::new()
                    .set("doctor_notes", format!("A-{round}"))
                    .set("work_capacity", Value::Decimal(format!("{round}")));
                let w = h.store.update(&h.doctor, "absence", &id, v, c).await.unwrap();
                versions.insert(id, w.version);
            }
        }
        done.fetch_add(1, Ordering::SeqCst);
    };
    // Writer B (the other store, cached old subject keys): updates abs-4..7, inserts new records.
    let writer_b = async {
        let mut versions: BTreeMap<String, u64> = BTreeMap::new();
        for round in 0..ROUNDS {
            for i in 4..8 {
                let id = format!("abs-{i}");
                let v = match versions.get(&id) {
                    Some(v) => *v,
                    None => other.get(&access_b, "absence", &id).await.unwrap().unwrap().version,
                };
                let w = other
                    .update(
                        &access_b,
                        "absence",
                        &id,
                        v,
                        Changes::new().set("diagnosis", format!("B-{round}")),
                    )
                    .await
                    .unwrap();
                versions.insert(id, w.version);
            }
            let r = absence(&format!("emp-{}", round % 4), "E-new", &format!("new-{round}"))
                .id(&format!("new-{round:02}"));
            other.insert(&access_b, "absence", r).await.unwrap();
        }
        done.fetch_add(1, Ordering::SeqCst);
    };
    // The re-encryption runs meanwhile.
    let reencrypt = async {
        let mut conflicts = 0;
        while done.load(Ordering::SeqCst) < 2 {
            let p = h.store.reencrypt_step(&h.doctor, &med, 1).await.unwrap();
            conflicts += p.conflicts;
            tokio::task::yield_now().await;
        }
        conflicts
    };
    let ((), (), _conflicts) = tokio::join!(writer_a, writer_b, reencrypt);

    let total = run_to_done(&h.store, &h.doctor, &med).await;
    assert_eq!(total.remaining_subjects, 0, "{total:?}");
    assert!(orphan_cells(&h.store).await.is_empty());
    // Nothing lost, no update overwritten: every record holds its writer's last values.
    let snap = snapshot(&h.store, &h.doctor).await;
    assert_eq!(snap.len(), 8 + ROUNDS);
    let last = format!("{}", ROUNDS - 1);
    for i in 0..8 {
        let (_, f) = &snap[&format!("abs-{i}")];
        if i < 4 {
            assert_eq!(f["doctor_notes"], FieldValue::Value(Value::from(format!("A-{last}"))));
            assert_eq!(f["work_capacity"], FieldValue::Value(Value::Decimal(last.clone())));
            assert_eq!(f["diagnosis"], FieldValue::Value(Value::from(format!("diag-{i}"))));
        } else {
            assert_eq!(f["diagnosis"], FieldValue::Value(Value::from(format!("B-{last}"))));
            assert_eq!(f["doctor_notes"], FieldValue::Value(Value::from("rest; see again in two weeks")));
        }
    }
    for round in 0..ROUNDS {
        let (_, f) = &snap[&format!("new-{round:02}")];
        assert_eq!(f["diagnosis"], FieldValue::Value(Value::from(format!("new-{round}"))));
    }
    // The other process reads everything too (its cache is checked against the database).
    let fresh = other.admin_access(&h.keyring, &h.tenant, &all).await.unwrap();
    assert_eq!(snapshot(&other, &fresh).await, snap);
    assert!(usage_of(&h.store.key_usage(None).await.unwrap(), &med, 1).is_unused());
    h.store.retire_domain_version(&h.keyring, &h.tenant, &med, kv(1)).await.unwrap();
    h.refresh().await;
    assert_eq!(snapshot(&h.store, &h.doctor).await, snap);
    h
}

/// Wraps the real keyring and fails every wrap after the first `ok` ones (a provider outage
/// half-way through a root rewrap).
#[derive(Debug)]
struct FailingAfter<'a> {
    inner: &'a kluis_core::LocalKeyring,
    ok: usize,
    wraps: AtomicUsize,
}

impl RootKeyProvider for FailingAfter<'_> {
    fn root_key_id(&self) -> &str {
        self.inner.root_key_id()
    }
    fn primary_version(&self) -> BoxFuture<'_, kluis_core::Result<kluis_core::KeyVersion>> {
        self.inner.primary_version()
    }
    fn wrap<'a>(
        &'a self,
        aad: &'a [u8],
        key: &'a KeyMaterial,
    ) -> BoxFuture<'a, kluis_core::Result<WrappedKey>> {
        if self.wraps.fetch_add(1, Ordering::SeqCst) >= self.ok {
            return Box::pin(async {
                Err(kluis_core::Error::Provider {
                    provider: "failing".into(),
                    kind: kluis_core::ProviderErrorKind::Unavailable,
                    source: None,
                })
            });
        }
        self.inner.wrap(aad, key)
    }
    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> BoxFuture<'a, kluis_core::Result<Vec<kluis_core::Result<KeyMaterial>>>> {
        self.inner.unwrap_batch(items)
    }
}

async fn domain_key_rows<B: Engine>(s: &Store<B>) -> Vec<Vec<u8>>
where
    Store<B>: Raw,
{
    s.raw_bytes(
        "SELECT wrapped FROM kluis_domain_keys WHERE wrapped IS NOT NULL ORDER BY tenant, domain, version",
        vec![],
    )
    .await
}

async fn rewrap_atomic<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let med = DomainName::medical();
    h.store.insert(&h.doctor, "absence", absence("emp-1", "E1", "diag-1").id("abs-1")).await.unwrap();
    h.store.rotate_domain_key(&h.keyring, &h.tenant, &med).await.unwrap();

    let before = domain_key_rows(&h.store).await;
    assert!(before.len() >= 3, "general v1, medical v1 and v2");
    h.keyring.rotate(1).unwrap();
    h.store.activate_root_version(&h.keyring, kluis_store::DEFAULT_INSTANCE_WINDOW).await.unwrap();
    let failing = FailingAfter { inner: &h.keyring, ok: 1, wraps: AtomicUsize::new(0) };
    let e = h.store.rewrap_domain_keys(&failing).await;
    assert!(matches!(e, Err(StoreError::Core(kluis_core::Error::Provider { .. }))), "{e:?}");
    assert!(failing.wraps.load(Ordering::SeqCst) >= 2, "failed half-way");
    assert_eq!(domain_key_rows(&h.store).await, before, "no row was rewrapped");
    let n = h.store.rewrap_domain_keys(&h.keyring).await.unwrap();
    assert_eq!(n, before.len());
    let after = domain_key_rows(&h.store).await;
    assert!(after.iter().zip(&before).all(|(a, b)| a != b), "every row rewrapped");
    assert_eq!(h.store.rewrap_domain_keys(&h.keyring).await.unwrap(), 0);
    h.refresh().await;
    let r = h.store.get(&h.doctor, "absence", "abs-1").await.unwrap().unwrap();
    assert_eq!(r.get("diagnosis"), Some(&Value::from("diag-1")));
    h
}

all_engines!(
    rotate_reencrypt_retire,
    reencrypt_interrupted,
    stale_cache_writer,
    concurrent_writers,
    rewrap_atomic
);
