//! One conformance suite, compiled once per engine: SQLite (always), PostgreSQL and MariaDB
//! (`KLUIS_TEST_POSTGRES_URL`, `KLUIS_TEST_MYSQL_URL`; in CI an unreachable server fails).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{Bind, Harness, Raw, all_engines, kv, t};
use kluis_core::{DomainName, TenantId};
use std::sync::Arc;

use kluis_store::Engine;
use kluis_store::backend::{FieldRow, RecordRow, Table, WriteOp};
use kluis_store::{Changes, DocumentRow, FieldValue, LegalOverride, NewRecord, Op, Store, StoreError, Value};

fn absence(subject: &str, emp: &str, diagnosis: &str) -> NewRecord {
    NewRecord::new(subject)
        .set("start_date", Value::Date("2025-03-01".into()))
        .set("end_date", Value::Date("2025-03-14".into()))
        .set("work_capacity", Value::Decimal("50".into()))
        .set("employee_number", emp)
        .set("diagnosis", diagnosis)
        .set("doctor_notes", "rest; see again in two weeks")
}

fn far_future() -> i64 {
    4_102_444_800 // 2100-01-01
}

async fn crud<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    let w = s.insert(&h.doctor, "absence", absence("emp-1", "E001", "burn-out").id("abs-1")).await.unwrap();
    assert_eq!((w.id.as_str(), w.version), ("abs-1", 1));
    let r = s.get(&h.doctor, "absence", "abs-1").await.unwrap().unwrap();
    assert_eq!(r.subject, "emp-1");
    assert_eq!(r.version, 1);
    assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some("burn-out"));
    assert_eq!(r.get("work_capacity").and_then(Value::as_decimal), Some("50"));
    assert_eq!(r.get("start_date").and_then(Value::as_date), Some("2025-03-01"));
    assert_eq!(r.fields.len(), 6);

    // All field types round-trip.
    let emp = NewRecord::new("emp-1")
        .id("e1")
        .set("name", "Jan de Vries")
        .set("salary", 4200_i64)
        .set("on_leave", true)
        .set("photo", vec![0u8, 255, 7]);
    s.insert(&h.hr, "employee", emp).await.unwrap();
    let e = s.get(&h.hr, "employee", "e1").await.unwrap().unwrap();
    assert_eq!(e.get("salary").and_then(Value::as_integer), Some(4200));
    assert_eq!(e.get("on_leave").and_then(Value::as_bool), Some(true));
    assert_eq!(e.get("photo").and_then(Value::as_bytes), Some(&[0u8, 255, 7][..]));

    let w = s
        .update(
            &h.doctor,
            "absence",
            "abs-1",
            1,
            Changes::new().set("diagnosis", "hernia").remove("doctor_notes"),
        )
        .await
        .unwrap();
    assert_eq!(w.version, 2);
    let r = s.get(&h.doctor, "absence", "abs-1").await.unwrap().unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some("hernia"));
    assert!(!r.fields.contains_key("doctor_notes"));
    assert_eq!(r.get("employee_number").and_then(Value::as_text), Some("E001"));

    // Same id twice: typed error.
    let dup = s.insert(&h.doctor, "absence", absence("emp-1", "E001", "x").id("abs-1")).await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists { .. })), "{dup:?}");

    s.delete(&h.doctor, "absence", "abs-1", Some(2), None).await.unwrap();
    assert!(s.get(&h.doctor, "absence", "abs-1").await.unwrap().is_none());
    let gone = s.delete(&h.doctor, "absence", "abs-1", None, None).await;
    assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");
    h
}

async fn pagination<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    for i in 0..25 {
        let subject = if i % 5 == 0 { "emp-special" } else { "emp-other" };
        s.insert(&h.doctor, "absence", absence(subject, &format!("E{i:03}"), "flu")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = s.list(&h.doctor, "absence", None, after.as_deref(), 10).await.unwrap();
        pages += 1;
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert!(pages >= 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages are ordered by id, without repeats");
    let mine = s.list(&h.doctor, "absence", Some("emp-special"), None, 100).await.unwrap();
    assert_eq!(mine.records.len(), 5);
    assert!(mine.records.iter().all(|r| r.subject == "emp-special"));
    assert!(mine.next.is_none());
    // Another tenant sees nothing.
    let other = h.access("globex", &[DomainName::general()]).await;
    assert!(s.list(&other, "absence", None, None, 100).await.unwrap().records.is_empty());
    h
}

async fn blind_index<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E100", "burn-out").id("a1")).await.unwrap();
    s.insert(&h.doctor, "absence", absence("emp-2", "E200", "burn-out").id("a2")).await.unwrap();
    s.insert(&h.doctor, "absence", absence("emp-2", "E200", "flu").id("a3")).await.unwrap();
    let found = s.find(&h.hr, "absence", "employee_number", &Value::from("E200")).await.unwrap();
    let mut ids: Vec<_> = found.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a2", "a3"]);
    assert!(s.find(&h.hr, "absence", "employee_number", &Value::from("E999")).await.unwrap().is_empty());
    // Medical index: only with medical keys.
    let by_diag = s.find(&h.doctor, "absence", "diagnosis", &Value::from("burn-out")).await.unwrap();
    assert_eq!(by_diag.len(), 2);
    let denied = s.find(&h.hr, "absence", "diagnosis", &Value::from("burn-out")).await;
    assert!(matches!(denied, Err(StoreError::AccessDenied { .. })), "{denied:?}");
    let not_indexed = s.find(&h.doctor, "absence", "doctor_notes", &Value::from("x")).await;
    assert!(matches!(not_indexed, Err(StoreError::NotIndexed { .. })), "{not_indexed:?}");
    // Other tenant: its own index keys, no hits.
    let other = h.access("globex", &[DomainName::general()]).await;
    assert!(s.find(&other, "absence", "employee_number", &Value::from("E200")).await.unwrap().is_empty());
    h
}

async fn concurrent_update_conflict<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E1", "flu").id("c1")).await.unwrap();
    let a = s.update(&h.doctor, "absence", "c1", 1, Changes::new().set("diagnosis", "first"));
    let b =
        s.update(&h.hr, "absence", "c1", 1, Changes::new().set("work_capacity", Value::Decimal("80".into())));
    let (ra, rb) = tokio::join!(a, b);
    let oks = [ra.is_ok(), rb.is_ok()].iter().filter(|x| **x).count();
    assert_eq!(oks, 1, "exactly one of two concurrent updates wins: {ra:?} {rb:?}");
    let err = match (ra, rb) {
        (Err(e), _) | (_, Err(e)) => e,
        _ => unreachable!(),
    };
    assert!(
        matches!(err, StoreError::Conflict { ref record, expected: 1, found: 2, .. } if record == "c1"),
        "{err:?}"
    );
    // A stale version is a conflict too.
    let stale = s.update(&h.doctor, "absence", "c1", 1, Changes::new().set("diagnosis", "late")).await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
    let r = s.get(&h.doctor, "absence", "c1").await.unwrap().unwrap();
    assert_eq!(r.version, 2);
    h
}

async fn transaction_rollback<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E1", "flu").id("t1")).await.unwrap();
    let ops = vec![
        Op::Insert { collection: "absence".into(), record: absence("emp-1", "E2", "flu").id("t2") },
        Op::Update {
            collection: "absence".into(),
            id: "t1".into(),
            expected_version: 1,
            changes: Changes::new().set("diagnosis", "changed"),
        },
        // Fails inside the database (duplicate id): everything before rolls back.
        Op::Insert { collection: "absence".into(), record: absence("emp-1", "E3", "flu").id("t1") },
    ];
    let err = s.transaction(&h.doctor, ops).await;
    assert!(matches!(err, Err(StoreError::AlreadyExists { .. })), "{err:?}");
    assert!(s.get(&h.doctor, "absence", "t2").await.unwrap().is_none(), "insert rolled back");
    let t1 = s.get(&h.doctor, "absence", "t1").await.unwrap().unwrap();
    assert_eq!(t1.version, 1, "update rolled back");
    assert_eq!(t1.get("diagnosis").and_then(Value::as_text), Some("flu"));
    // A conflict in the middle rolls back too.
    let ops = vec![
        Op::Insert { collection: "absence".into(), record: absence("emp-1", "E4", "flu").id("t4") },
        Op::Update {
            collection: "absence".into(),
            id: "t1".into(),
            expected_version: 9,
            changes: Changes::new(),
        },
    ];
    assert!(matches!(s.transaction(&h.doctor, ops).await, Err(StoreError::Conflict { .. })));
    assert!(s.get(&h.doctor, "absence", "t4").await.unwrap().is_none());
    // A successful batch applies all.
    let ops = vec![
        Op::Insert { collection: "absence".into(), record: absence("emp-1", "E5", "flu").id("t5") },
        Op::Delete {
            collection: "absence".into(),
            id: "t1".into(),
            expected_version: Some(1),
            legal_override: None,
        },
    ];
    s.transaction(&h.doctor, ops).await.unwrap();
    assert!(s.get(&h.doctor, "absence", "t5").await.unwrap().is_some());
    assert!(s.get(&h.doctor, "absence", "t1").await.unwrap().is_none());
    h
}

async fn withheld_fields<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E1", "burn-out").id("w1")).await.unwrap();
    let r = s.get(&h.hr, "absence", "w1").await.unwrap().unwrap();
    assert_eq!(r.fields.get("diagnosis"), Some(&FieldValue::Withheld { domain: "medical".into() }));
    assert!(r.fields["doctor_notes"].is_withheld());
    assert_eq!(r.get("employee_number").and_then(Value::as_text), Some("E1"));
    // HR updates a general field: the medical fields it cannot read are kept.
    s.update(&h.hr, "absence", "w1", 1, Changes::new().set("work_capacity", Value::Decimal("75".into())))
        .await
        .unwrap();
    let r = s.get(&h.doctor, "absence", "w1").await.unwrap().unwrap();
    assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some("burn-out"));
    assert_eq!(r.get("work_capacity").and_then(Value::as_decimal), Some("75"));
    // HR may not write, remove or delete medical data.
    let e = s.update(&h.hr, "absence", "w1", 2, Changes::new().set("diagnosis", "x")).await;
    assert!(matches!(e, Err(StoreError::AccessDenied { ref domain, .. }) if domain == "medical"), "{e:?}");
    let e = s.update(&h.hr, "absence", "w1", 2, Changes::new().remove("diagnosis")).await;
    assert!(matches!(e, Err(StoreError::AccessDenied { .. })), "{e:?}");
    let e = s.insert(&h.hr, "absence", absence("emp-1", "E1", "x")).await;
    assert!(matches!(e, Err(StoreError::AccessDenied { .. })), "{e:?}");
    let e = s.delete(&h.hr, "absence", "w1", None, None).await;
    assert!(matches!(e, Err(StoreError::AccessDenied { .. })), "{e:?}");
    // A bogus medical key set (right names, wrong keys) gets an integrity error, never plaintext.
    let fake = kluis_core::DomainKeySet::from_keys(
        h.tenant.clone(),
        DomainName::medical(),
        vec![(kv(1), kluis_core::KeyState::Active, kluis_core::KeyMaterial::generate().unwrap())],
        kluis_core::Suite::default(),
        kluis_core::Backend::preferred(),
    )
    .unwrap();
    // The real row tag key (the row verifies) with a medical key the database never wrapped.
    let rows = s.admin_access(&h.keyring, &h.tenant, &[]).await.unwrap();
    let bogus = rows.with_unchecked(fake).unwrap();
    let e = s.get(&bogus, "absence", "w1").await;
    assert!(matches!(e, Err(StoreError::KeyIntegrity { .. })), "{e:?}");
    h
}

async fn retention<B: Engine>(h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let s = &h.store;
    let rec = absence("emp-r", "E1", "flu").id("r1").retain_until(far_future());
    s.insert(&h.doctor, "absence", rec).await.unwrap();
    s.insert(&h.doctor, "absence", absence("emp-r", "E1", "flu").id("r2").retain_until(1)).await.unwrap();
    let e = s.delete(&h.doctor, "absence", "r1", None, None).await;
    assert!(
        matches!(e, Err(StoreError::RetentionActive { ref record, retain_until, .. }) if record == "r1" && retain_until == far_future()),
        "{e:?}"
    );
    let mut access = h
        .store
        .admin_access(&h.keyring, &h.tenant, &[DomainName::general(), DomainName::medical()])
        .await
        .unwrap();
    let e = s.shred_subject(&h.keyring, &mut access, "emp-r", None).await;
    assert!(matches!(e, Err(StoreError::RetentionActive { .. })), "{e:?}");
    assert!(s.get(&h.doctor, "absence", "r1").await.unwrap().is_some(), "nothing deleted");
    // Retention cannot be shortened to get around it; it can be extended.
    let e = s.update(&h.doctor, "absence", "r1", 1, Changes::new().retain_until(2)).await;
    assert!(matches!(e, Err(StoreError::RetentionActive { .. })), "{e:?}");
    s.update(&h.doctor, "absence", "r1", 1, Changes::new().retain_until(far_future() + 1)).await.unwrap();
    // Past retain-until: deletable without override.
    s.delete(&h.doctor, "absence", "r2", None, None).await.unwrap();
    // With a recorded legal override.
    let o = LegalOverride { reason: "court order 2025/17".into(), authorised_by: "dpo@acme".into() };
    s.delete(&h.doctor, "absence", "r1", None, Some(o)).await.unwrap();
    assert!(s.get(&h.doctor, "absence", "r1").await.unwrap().is_none());
    let audit = s
        .raw_bytes("SELECT authorised_by FROM kluis_legal_overrides WHERE action = ?", vec![t("delete")])
        .await;
    assert_eq!(audit, vec![b"dpo@acme".to_vec()]);
    h
}

async fn shredding<B: Engine>(mut h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-gone", "E1", "burn-out").id("s1")).await.unwrap();
    s.insert(&h.doctor, "absence", absence("emp-stays", "E2", "flu").id("s2")).await.unwrap();
    let doc = DocumentRow {
        tenant: "acme".into(),
        document_id: "doc-1".into(),
        domain: "medical".into(),
        subject: "emp-gone".into(),
        record_id: Some("s1".into()),
        object_name: "obj-0001".into(),
        key_ref: "subject:medical:v1".into(),
        padded_size: 4096,
        created_at: 1,
        sealed_meta: vec![1, 2, 3],
    };
    s.insert_document(&h.doctor, doc).await.unwrap();
    let wrapped_before =
        s.raw_bytes("SELECT wrapped FROM kluis_subject_keys WHERE subject = ?", vec![t("emp-gone")]).await;
    assert_eq!(wrapped_before.len(), 2, "a general and a medical subject key");
    let mut access = h.doctor_clone().await;
    let report = s.shred_subject(&h.keyring, &mut access, "emp-gone", None).await.unwrap();
    assert_eq!(report.records_removed, 1);
    let mut destroyed = report.destroyed_versions.clone();
    destroyed.sort();
    assert_eq!(destroyed, vec![("general".to_string(), kv(1)), ("medical".to_string(), kv(1))]);
    assert!(s.get(&access, "absence", "s1").await.unwrap().is_none());
    assert!(s.documents_of_subject(&access, "emp-gone").await.unwrap().is_empty());
    let left =
        s.raw_bytes("SELECT wrapped FROM kluis_subject_keys WHERE subject = ?", vec![t("emp-gone")]).await;
    assert!(left.is_empty());
    // The destroyed domain key versions hold no wrapped key any more.
    let live_v1 = s
        .raw_bytes(
            "SELECT wrapped FROM kluis_domain_keys WHERE tenant = ? AND version = 1 AND wrapped IS NOT NULL \
             AND domain <> 'row_tags'",
            vec![t("acme")],
        )
        .await;
    assert!(live_v1.is_empty());
    // The other subject is intact: readable, and its blind index works under the new version.
    h.refresh().await;
    let s = &h.store;
    let r = s.get(&h.doctor, "absence", "s2").await.unwrap().unwrap();
    assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some("flu"));
    let hits = s.find(&h.hr, "absence", "employee_number", &Value::from("E2")).await.unwrap();
    assert_eq!(hits.len(), 1);
    let hits = s.find(&h.doctor, "absence", "diagnosis", &Value::from("flu")).await.unwrap();
    assert_eq!(hits.len(), 1);
    // New writes after the shred work.
    s.insert(&h.doctor, "absence", absence("emp-stays", "E3", "cold").id("s3")).await.unwrap();
    // The keys that went away are not in the tables (bytes scan of what is left).
    for w in &wrapped_before {
        let all = s.raw_bytes("SELECT wrapped FROM kluis_subject_keys", vec![]).await;
        assert!(all.iter().all(|x| x != w));
    }
    h
}

impl<B: Engine> Harness<B> {
    async fn doctor_clone(&self) -> kluis_store::Access {
        self.store
            .admin_access(&self.keyring, &self.tenant, &[DomainName::general(), DomainName::medical()])
            .await
            .unwrap()
    }
}

async fn tamper_moved_cells<B: Engine>(h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E1", "burn-out").id("m1")).await.unwrap();
    s.insert(&h.doctor, "absence", absence("emp-1", "E2", "flu").id("m2")).await.unwrap();
    s.insert(&h.doctor, "absence", absence("emp-2", "E3", "flu").id("m3")).await.unwrap();
    s.insert(&h.doctor, "employee", NewRecord::new("emp-1").id("m1").set("name", "Jan")).await.unwrap();
    let globex = h.access("globex", &[DomainName::general(), DomainName::medical()]).await;
    s.insert(&globex, "absence", absence("emp-1", "E1", "flu").id("m1")).await.unwrap();

    let cell = |coll: &str, id: &str, field: &str, tenant: &str| {
        (coll.to_owned(), id.to_owned(), field.to_owned(), tenant.to_owned())
    };
    let src = s
        .raw_bytes(
            "SELECT f_diagnosis FROM kluis_r_absence WHERE tenant = ? AND id = ?",
            vec![t("acme"), t("m1")],
        )
        .await
        .pop()
        .unwrap();
    // Each target: same subject another row; another field; another subject; another collection; another tenant.
    let targets = [
        (cell("absence", "m2", "diagnosis", "acme"), h.doctor_clone().await),
        (cell("absence", "m2", "doctor_notes", "acme"), h.doctor_clone().await),
        (cell("absence", "m3", "diagnosis", "acme"), h.doctor_clone().await),
        (cell("employee", "m1", "name", "acme"), h.doctor_clone().await),
        (cell("absence", "m1", "diagnosis", "globex"), globex),
    ];
    for ((coll, id, field, tenant), access) in targets {
        let original = s
            .raw_bytes(
                &format!("SELECT f_{field} FROM kluis_r_{coll} WHERE tenant = ? AND id = ?"),
                vec![t(&tenant), t(&id)],
            )
            .await
            .pop()
            .unwrap();
        let n = s
            .raw_exec(
                &format!("UPDATE kluis_r_{coll} SET f_{field} = ? WHERE tenant = ? AND id = ?"),
                vec![Bind::Bytes(src.clone()), t(&tenant), t(&id)],
            )
            .await;
        assert_eq!(n, 1);
        let e = s.get(&access, &coll, &id).await;
        match e {
            Err(StoreError::RowIntegrity { collection, record }) => {
                assert_eq!((collection.as_str(), record.as_str()), (coll.as_str(), id.as_str()));
                let msg = StoreError::RowIntegrity { collection, record }.to_string();
                assert!(msg.contains(&id), "error names the record: {msg}");
            }
            other => panic!("moved cell to {tenant}/{coll}/{id}/{field} must fail integrity: {other:?}"),
        }
        s.raw_exec(
            &format!("UPDATE kluis_r_{coll} SET f_{field} = ? WHERE tenant = ? AND id = ?"),
            vec![Bind::Bytes(original), t(&tenant), t(&id)],
        )
        .await;
    }
    // A flipped bit.
    let mut flipped = src.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    s.raw_exec(
        "UPDATE kluis_r_absence SET f_diagnosis = ? WHERE tenant = ? AND id = ?",
        vec![Bind::Bytes(flipped), t("acme"), t("m1")],
    )
    .await;
    assert!(matches!(s.get(&h.doctor, "absence", "m1").await, Err(StoreError::RowIntegrity { .. })));
    // The record's subject column rewritten to another subject: the row no longer verifies.
    s.raw_exec(
        "UPDATE kluis_r_absence SET subject = ? WHERE tenant = ? AND id = ?",
        vec![t("emp-2"), t("acme"), t("m2")],
    )
    .await;
    assert!(matches!(s.get(&h.doctor, "absence", "m2").await, Err(StoreError::RowIntegrity { .. })));
    // HR, which never decrypts medical cells, still reads the general ones of m3.
    assert!(s.get(&h.hr, "absence", "m3").await.unwrap().is_some());
    h
}

async fn tamper_key_rows<B: Engine + Clone>(h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E1", "burn-out").id("k1")).await.unwrap();
    // Edit the wrapped medical domain key.
    let sel = "SELECT wrapped FROM kluis_domain_keys WHERE tenant = ? AND domain = ? AND version = 1";
    let orig = s.raw_bytes(sel, vec![t("acme"), t("medical")]).await.pop().unwrap();
    let mut bad = orig.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x40;
    let upd = "UPDATE kluis_domain_keys SET wrapped = ? WHERE tenant = ? AND domain = ? AND version = 1";
    s.raw_exec(upd, vec![Bind::Bytes(bad), t("acme"), t("medical")]).await;
    let e = s.key_set(&h.keyring, &h.tenant, &DomainName::medical()).await;
    assert!(matches!(e, Err(StoreError::KeyIntegrity { .. })), "{e:?}");
    // The general key row copied over the medical one: also detected (bound to its domain).
    let general = s.raw_bytes(sel, vec![t("acme"), t("general")]).await.pop().unwrap();
    s.raw_exec(upd, vec![Bind::Bytes(general), t("acme"), t("medical")]).await;
    let e = s.key_set(&h.keyring, &h.tenant, &DomainName::medical()).await;
    assert!(matches!(e, Err(StoreError::KeyIntegrity { .. })), "{e:?}");
    s.raw_exec(upd, vec![Bind::Bytes(orig), t("acme"), t("medical")]).await;
    s.key_set(&h.keyring, &h.tenant, &DomainName::medical()).await.unwrap();
    // Edit a subject key row: detected on read (a fresh store has no cached key).
    let ssel = "SELECT wrapped FROM kluis_subject_keys WHERE tenant = ? AND domain = ? AND subject = ?";
    let sk = s.raw_bytes(ssel, vec![t("acme"), t("medical"), t("emp-1")]).await.pop().unwrap();
    let mut bad = sk.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    s.raw_exec(
        "UPDATE kluis_subject_keys SET wrapped = ? WHERE tenant = ? AND domain = ? AND subject = ?",
        vec![Bind::Bytes(bad), t("acme"), t("medical"), t("emp-1")],
    )
    .await;
    let fresh = Store::new(clone_backend(&h), common::schema());
    let e = fresh.get(&h.doctor, "absence", "k1").await;
    assert!(matches!(e, Err(StoreError::KeyIntegrity { .. })), "{e:?}");
    // The keyring generation recorded in the database is authenticated.
    s.record_keyring_generation(&h.keyring).await.unwrap();
    s.check_keyring_generation(&h.keyring).await.unwrap();
    s.raw_exec(
        "UPDATE kluis_meta SET value = ? WHERE name = ?",
        vec![Bind::Bytes(vec![0x6b; 90]), t("keyring_generation")],
    )
    .await;
    let e = s.check_keyring_generation(&h.keyring).await;
    assert!(matches!(e, Err(StoreError::MetadataTampered(_))), "{e:?}");
    h
}

fn clone_backend<B: Engine + Clone>(h: &Harness<B>) -> sqlx::Pool<B::Db> {
    h.store.pool().clone()
}

async fn bad_input<B: Engine>(h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E1", "flu").id("b1")).await.unwrap();
    let before_cells = s.raw_bytes("SELECT row_tag FROM kluis_r_absence ORDER BY tenant, id", vec![]).await;
    let cases: Vec<(NewRecord, &str)> = vec![
        (NewRecord::new("emp-1").set("work_capacity", 50_i64), "wrong type"),
        (NewRecord::new("emp-1").set("work_capacity", Value::Decimal("150".into())), "out of range"),
        (NewRecord::new("emp-1").set("start_date", Value::Date("2025-02-30".into())), "bad date"),
        (NewRecord::new("emp-1").set("nonexistent", "x"), "unknown field"),
        (NewRecord::new("emp-1").set("diagnosis", "x".repeat(201)), "oversized"),
        (NewRecord::new("emp 1").set("diagnosis", "x"), "bad subject"),
        (NewRecord::new("emp-1").id("b2").set("diagnosis", "a").set("diagnosis", "b"), "twice"),
    ];
    for (rec, what) in cases {
        let e = s.insert(&h.doctor, "absence", rec).await;
        match (what, &e) {
            ("wrong type", Err(StoreError::WrongType { expected: "percentage", found, .. })) => {
                assert_eq!(found, "integer")
            }
            ("out of range" | "bad date", Err(StoreError::WrongType { .. })) => {}
            ("unknown field", Err(StoreError::UnknownField { field, .. })) => {
                assert_eq!(field, "nonexistent")
            }
            ("oversized", Err(StoreError::TooLarge { max: 200, len: 201, .. })) => {}
            ("bad subject", Err(StoreError::InvalidId { .. })) => {}
            ("twice", Err(StoreError::Invalid(_))) => {}
            _ => panic!("{what}: {e:?}"),
        }
    }
    let e = s.insert(&h.doctor, "nope", NewRecord::new("emp-1").set("x", "y")).await;
    assert!(matches!(e, Err(StoreError::UnknownCollection(ref c)) if c == "nope"), "{e:?}");
    // A bad update changes nothing (not even the version).
    let e = s
        .update(
            &h.doctor,
            "absence",
            "b1",
            1,
            Changes::new().set("diagnosis", "ok").set("end_date", "not a date"),
        )
        .await;
    assert!(matches!(e, Err(StoreError::WrongType { .. })), "{e:?}");
    let e = s.update(&h.doctor, "absence", "b1", 1, Changes::new().set("diagnosis", "y".repeat(500))).await;
    assert!(matches!(e, Err(StoreError::TooLarge { .. })), "{e:?}");
    let after_cells = s.raw_bytes("SELECT row_tag FROM kluis_r_absence ORDER BY tenant, id", vec![]).await;
    assert_eq!(before_cells, after_cells, "nothing stored changed");
    let r = s.get(&h.doctor, "absence", "b1").await.unwrap().unwrap();
    assert_eq!(r.version, 1);
    assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some("flu"));
    let e = s.get(&h.doctor, "absence", "bad id!").await;
    assert!(matches!(e, Err(StoreError::InvalidId { .. })), "{e:?}");
    h
}

async fn documents_catalog<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    let mk = |id: &str, subject: &str, record: Option<&str>| DocumentRow {
        tenant: "acme".into(),
        document_id: id.into(),
        domain: "medical".into(),
        subject: subject.into(),
        record_id: record.map(str::to_owned),
        object_name: format!("obj-{id}"),
        key_ref: "subject:medical:v1".into(),
        padded_size: 8192,
        created_at: 1_700_000_000,
        sealed_meta: vec![0x6b, 1, 2, 3],
    };
    s.insert_document(&h.doctor, mk("d1", "emp-1", Some("r1"))).await.unwrap();
    s.insert_document(&h.doctor, mk("d2", "emp-1", None)).await.unwrap();
    s.insert_document(&h.doctor, mk("d3", "emp-2", Some("r1"))).await.unwrap();
    let e = s.insert_document(&h.doctor, mk("d1", "emp-1", None)).await;
    assert!(matches!(e, Err(StoreError::AlreadyExists { .. })), "{e:?}");
    let e = s.insert_document(&h.hr, mk("d9", "emp-1", None)).await;
    assert!(matches!(e, Err(StoreError::AccessDenied { .. })), "{e:?}");
    let by_subject = s.documents_of_subject(&h.doctor, "emp-1").await.unwrap();
    assert_eq!(by_subject.iter().map(|d| d.document_id.as_str()).collect::<Vec<_>>(), ["d1", "d2"]);
    assert_eq!(by_subject[0], mk("d1", "emp-1", Some("r1")));
    let by_record = s.documents_of_record(&h.doctor, "r1").await.unwrap();
    assert_eq!(by_record.iter().map(|d| d.document_id.as_str()).collect::<Vec<_>>(), ["d1", "d3"]);
    assert!(s.delete_document(&h.doctor, "d1").await.unwrap());
    assert!(!s.delete_document(&h.doctor, "d1").await.unwrap());
    assert_eq!(s.documents_of_record(&h.doctor, "r1").await.unwrap().len(), 1);
    h
}

async fn delete_removes_record_documents<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    let doc = |id: &str, subject: &str, record: Option<&str>| DocumentRow {
        tenant: "acme".into(),
        document_id: id.into(),
        domain: "medical".into(),
        subject: subject.into(),
        record_id: record.map(str::to_owned),
        object_name: format!("obj-{id}"),
        key_ref: "subject:medical:v1".into(),
        padded_size: 8192,
        created_at: 1_700_000_000,
        sealed_meta: vec![1, 2, 3],
    };
    // r1: general fields only, with a medical document attached.
    let r = NewRecord::new("emp-1").id("r1").set("start_date", Value::Date("2025-01-01".into()));
    s.insert(&h.hr, "absence", r).await.unwrap();
    s.insert(&h.doctor, "absence", absence("emp-2", "E2", "flu").id("r2")).await.unwrap();
    s.insert_document(&h.doctor, doc("d1", "emp-1", Some("r1"))).await.unwrap();
    s.insert_document(&h.doctor, doc("d2", "emp-1", None)).await.unwrap();
    s.insert_document(&h.doctor, doc("d3", "emp-2", Some("r2"))).await.unwrap();
    // Another subject's document naming r1 (e.g. a record id of another collection): kept.
    s.insert_document(&h.doctor, doc("d4", "emp-3", Some("r1"))).await.unwrap();
    // HR cannot delete r1: its attached document is medical.
    let e = s.delete(&h.hr, "absence", "r1", None, None).await;
    assert!(matches!(e, Err(StoreError::AccessDenied { .. })), "{e:?}");
    assert!(s.document(&h.doctor, "d1").await.unwrap().is_some());
    // A delete that fails (version conflict) leaves the documents too.
    let e = s.delete(&h.doctor, "absence", "r1", Some(7), None).await;
    assert!(matches!(e, Err(StoreError::Conflict { .. })), "{e:?}");
    assert!(s.document(&h.doctor, "d1").await.unwrap().is_some());
    s.delete(&h.doctor, "absence", "r1", None, None).await.unwrap();
    assert_eq!(s.document(&h.doctor, "d1").await.unwrap(), None);
    assert!(s.document(&h.doctor, "d2").await.unwrap().is_some(), "the subject's loose document stays");
    assert!(s.document(&h.doctor, "d4").await.unwrap().is_some());
    assert_eq!(
        s.document_object_names().await.unwrap(),
        vec!["obj-d2".to_owned(), "obj-d3".to_owned(), "obj-d4".to_owned()]
    );
    // In a transaction: a failing op (a duplicate id, refused by the database) rolls the
    // document removal back with the delete.
    s.insert(&h.doctor, "absence", absence("emp-2", "E3", "cold").id("r3")).await.unwrap();
    let ops = vec![
        Op::Delete {
            collection: "absence".into(),
            id: "r2".into(),
            expected_version: None,
            legal_override: None,
        },
        Op::Insert { collection: "absence".into(), record: absence("emp-2", "E3", "cold").id("r3") },
    ];
    let e = s.transaction(&h.doctor, ops).await;
    assert!(matches!(e, Err(StoreError::AlreadyExists { .. })), "{e:?}");
    assert!(s.document(&h.doctor, "d3").await.unwrap().is_some());
    assert!(s.get(&h.doctor, "absence", "r2").await.unwrap().is_some());
    h
}

async fn tenants_apart<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E1", "flu").id("x1")).await.unwrap();
    let other = h.access("Acme", &[DomainName::general(), DomainName::medical()]).await;
    assert!(s.get(&other, "absence", "x1").await.unwrap().is_none(), "tenant ids are case-sensitive");
    let t2 = TenantId::new("acme").unwrap();
    assert_eq!(h.doctor.tenant(), &t2);
    h
}

async fn schema_migration<B: Engine + Clone>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    for i in 0..7 {
        let rec = absence("emp-1", &format!("E{i}"), "flu").id(&format!("g{i}"));
        s.insert(&h.doctor, "absence", rec).await.unwrap();
    }
    // work_capacity moves from general to medical; end_date gains a blind index; employee_number
    // loses its index.
    let target = kluis_store::Schema::from_toml(
        &common::SCHEMA_TOML
            .replace(
                r#"work_capacity   = { type = "percentage", domain = "general" }"#,
                r#"work_capacity   = { type = "percentage", domain = "medical" }"#,
            )
            .replace(
                r#"end_date        = { type = "date", domain = "general" }"#,
                r#"end_date        = { type = "date", domain = "general", blind_index = true }"#,
            )
            .replace(r#"blind_index = true, max_bytes = 32"#, r#"max_bytes = 32"#),
    )
    .unwrap();
    let e = s.migrate_schema(&h.hr, &target).await;
    assert!(matches!(e, Err(StoreError::AccessDenied { .. })), "{e:?}");
    let report = s.migrate_schema(&h.doctor, &target).await.unwrap();
    assert_eq!(report.records_updated, 7);
    assert_eq!(report.cells_resealed, 7);
    assert_eq!(report.indexes_written, 7);
    assert_eq!(report.indexes_dropped, 7);
    assert_eq!(report.conflicts, 0);
    let again = s.migrate_schema(&h.doctor, &target).await.unwrap();
    assert_eq!(again.cells_resealed, 0, "idempotent: {again:?}");
    assert_eq!(again.conflicts, 0);
    let new = Store::new(h.store.pool().clone(), target);
    let r = new.get(&h.hr, "absence", "g3").await.unwrap().unwrap();
    assert!(r.fields["work_capacity"].is_withheld(), "HR no longer sees the moved field");
    let r = new.get(&h.doctor, "absence", "g3").await.unwrap().unwrap();
    assert_eq!(r.get("work_capacity").and_then(Value::as_decimal), Some("50"));
    assert_eq!(r.version, 2);
    let hits = new.find(&h.hr, "absence", "end_date", &Value::Date("2025-03-14".into())).await.unwrap();
    assert_eq!(hits.len(), 7);
    let e = new.find(&h.hr, "absence", "employee_number", &Value::from("E3")).await;
    assert!(matches!(e, Err(StoreError::NotIndexed { .. })), "{e:?}");
    h
}

/// A backend insert of `id` for `subject` with one medical cell claiming subject key `version`
/// (the bytes are never opened here).
fn sealed_insert(table: &Arc<Table>, tenant: &str, id: &str, subject: &str, version: i64) -> WriteOp {
    WriteOp::Insert {
        table: table.clone(),
        record: RecordRow {
            tenant: tenant.into(),
            collection: "absence".into(),
            id: id.into(),
            subject: subject.into(),
            version: 1,
            created_at: 1,
            updated_at: 1,
            retain_until: None,
            tag: Vec::new(),
        },
        fields: vec![FieldRow {
            field: "diagnosis".into(),
            domain: "medical".into(),
            sealed: vec![0xA5; 40],
            key_version: version,
        }],
        indexes: Vec::new(),
    }
}

/// The subject key check runs once per batch (a few hundred key versions per statement) and still
/// refuses the whole batch when any one cell names a subject key version that does not exist,
/// wherever it falls; a batch whose versions all exist is written.
async fn batch_key_check<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    let tenant = h.tenant.as_str();
    let table = s.layout().table("absence").unwrap().clone();
    // 450 subjects with subject keys v1 (more than two check statements' worth).
    let subjects: Vec<String> = (0..450).map(|i| format!("s-{i:03}")).collect();
    let ops = subjects
        .iter()
        .enumerate()
        .map(|(i, sub)| Op::Insert {
            collection: "absence".into(),
            record: absence(sub, &format!("E{i}"), "flu").id(&format!("seed-{i:03}")),
        })
        .collect();
    s.transaction(&h.doctor, ops).await.unwrap();

    for missing in ["s-000", "s-201", "s-449"] {
        let batch: Vec<WriteOp> = subjects
            .iter()
            .map(|sub| {
                let v = if sub == missing { 9 } else { 1 };
                // Two cells per subject and key version in the batch: checked once.
                sealed_insert(&table, tenant, &format!("b-{sub}"), sub, v)
            })
            .chain(subjects.iter().map(|sub| sealed_insert(&table, tenant, &format!("c-{sub}"), sub, 1)))
            .collect();
        let e = s.backend().apply(batch).await;
        match &e {
            Err(StoreError::KeyChanged { what }) => {
                assert!(what.contains(missing) && what.contains("v9"), "{what}");
            }
            other => panic!("expected KeyChanged for {missing}, got {other:?}"),
        }
        for sub in [missing, "s-100", "s-449"] {
            assert!(s.backend().get(&table, tenant, &format!("b-{sub}")).await.unwrap().is_none());
            assert!(s.backend().get(&table, tenant, &format!("c-{sub}")).await.unwrap().is_none());
        }
    }
    // Another tenant's key of the same subject and version does not count.
    let e = s.backend().apply(vec![sealed_insert(&table, "other-tenant", "x-1", "s-001", 1)]).await;
    assert!(matches!(e, Err(StoreError::KeyChanged { .. })), "{e:?}");

    let batch: Vec<WriteOp> =
        subjects.iter().map(|sub| sealed_insert(&table, tenant, &format!("b-{sub}"), sub, 1)).collect();
    s.backend().apply(batch).await.unwrap();
    assert!(s.backend().get(&table, tenant, "b-s-449").await.unwrap().is_some());
    // Records written through the store in one transaction still open.
    let r = s.get(&h.doctor, "absence", "seed-449").await.unwrap().unwrap();
    assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some("flu"));
    h
}

/// A transaction is sealed while it is written. More operations than the pipeline holds: an
/// error from the database early, or at the very end, rolls all of it back and is the error
/// returned; a batch whose writes stop before their end mark (the sealing side failed) writes
/// nothing; a complete one writes everything.
async fn pipelined_transaction<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E1", "flu").id("p-dup")).await.unwrap();
    let batch = |tag: &str, dup_at: Option<usize>| -> Vec<Op> {
        (0..300)
            .map(|i| {
                let id = if dup_at == Some(i) { "p-dup".to_owned() } else { format!("{tag}-{i:03}") };
                Op::Insert {
                    collection: "absence".into(),
                    record: absence(&format!("emp-{}", i % 40), &format!("E{i}"), "flu").id(&id),
                }
            })
            .collect()
    };
    for (tag, at) in [("early", 2), ("late", 299)] {
        let e = s.transaction(&h.doctor, batch(tag, Some(at))).await;
        assert!(matches!(e, Err(StoreError::AlreadyExists { .. })), "{tag}: {e:?}");
        let page = s.list(&h.doctor, "absence", None, Some(&format!("{tag}-")), 1000).await.unwrap();
        assert!(page.records.iter().all(|r| !r.id.starts_with(tag)), "{tag}: rolled back");
    }
    // The backend side: writes that stop before the end mark are rolled back.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let tenant = h.tenant.as_str().to_owned();
    let cut_table = s.layout().table("absence").unwrap().clone();
    let sender = tokio::spawn(async move {
        for i in 0..3 {
            tx.send(Some(sealed_insert(&cut_table, &tenant, &format!("cut-{i}"), "s-1", 1))).await.unwrap();
        }
        // Dropped without `None`.
    });
    let e = s.backend().apply_stream(rx).await;
    sender.await.unwrap();
    assert!(matches!(e, Err(StoreError::Invalid(_))), "{e:?}");
    for i in 0..3 {
        assert!(
            s.backend()
                .get(s.layout().table("absence").unwrap(), h.tenant.as_str(), &format!("cut-{i}"))
                .await
                .unwrap()
                .is_none()
        );
    }
    // Nothing at all before the channel closed: nothing begun, nothing written.
    let (tx, rx) = tokio::sync::mpsc::channel::<Option<WriteOp>>(1);
    drop(tx);
    assert!(matches!(s.backend().apply_stream(rx).await, Err(StoreError::Invalid(_))));
    // A complete batch through the store.
    let written = s.transaction(&h.doctor, batch("ok", None)).await.unwrap();
    assert_eq!(written.len(), 300);
    let page = s.list(&h.doctor, "absence", None, Some("ok-"), 1000).await.unwrap();
    let ok: Vec<_> = page.records.iter().filter(|r| r.id.starts_with("ok-")).collect();
    assert_eq!(ok.len(), 300);
    assert!(ok.iter().all(|r| r.get("diagnosis").and_then(Value::as_text) == Some("flu")));
    h
}

/// A long page whose records' subject keys are at hand, not at hand (a store that has not seen
/// them), or some of each: the page holds every record in id order with the right values,
/// records without cells and withheld fields included, and a bad cell anywhere in it fails the
/// page with an integrity error naming its record.
async fn list_pages<B: Engine + Clone>(h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    const N: usize = 300;
    let s = &h.store;
    let ops = (0..N)
        .map(|i| Op::Insert {
            collection: "absence".into(),
            record: absence(&format!("emp-{}", i % 7), &format!("E{i:03}"), &format!("diagnosis {i}"))
                .id(&format!("r-{i:03}")),
        })
        .collect();
    s.transaction(&h.doctor, ops).await.unwrap();
    // Records with general cells only, and one with no cells at all, between the others.
    s.insert(&h.hr, "absence", NewRecord::new("emp-9").id("r-005a").set("employee_number", "E905"))
        .await
        .unwrap();
    s.insert(&h.hr, "absence", NewRecord::new("emp-9").id("r-017a")).await.unwrap();
    s.insert(
        &h.hr,
        "absence",
        NewRecord::new("emp-8").id("r-239a").set("work_capacity", Value::Decimal("10".into())),
    )
    .await
    .unwrap();

    let check = |records: &[kluis_store::Record], medical: bool| {
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let mut want: Vec<String> = (0..N).map(|i| format!("r-{i:03}")).collect();
        want.extend(["r-005a".to_owned(), "r-017a".to_owned(), "r-239a".to_owned()]);
        want.sort();
        assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
        for r in records {
            match r.id.as_str() {
                "r-005a" => assert_eq!(r.get("employee_number").and_then(Value::as_text), Some("E905")),
                "r-017a" => assert!(r.fields.is_empty(), "{:?}", r.fields.keys()),
                "r-239a" => assert_eq!(r.get("work_capacity").and_then(Value::as_decimal), Some("10")),
                id => {
                    let i: usize = id.trim_start_matches("r-").parse().unwrap();
                    assert_eq!(r.subject, format!("emp-{}", i % 7));
                    assert_eq!(
                        r.get("employee_number").and_then(Value::as_text),
                        Some(format!("E{i:03}").as_str())
                    );
                    if medical {
                        assert_eq!(
                            r.get("diagnosis").and_then(Value::as_text),
                            Some(format!("diagnosis {i}").as_str())
                        );
                    } else {
                        assert!(r.fields.get("diagnosis").is_some_and(FieldValue::is_withheld));
                        assert!(r.fields.get("doctor_notes").is_some_and(FieldValue::is_withheld));
                    }
                    assert_eq!(r.fields.len(), 6);
                }
            }
        }
    };
    // Keys at hand (this store wrote them).
    check(&s.list(&h.doctor, "absence", None, None, 1000).await.unwrap().records, true);
    check(&s.list(&h.hr, "absence", None, None, 1000).await.unwrap().records, false);
    // A second store on the same database starts with no keys: all are loaded after the page.
    let cold = Store::new(s.pool().clone(), s.schema().clone());
    check(&cold.list(&h.doctor, "absence", None, None, 1000).await.unwrap().records, true);
    // Keys of some subjects only: a page mixes both ways.
    let mixed = Store::new(s.pool().clone(), s.schema().clone());
    for id in ["r-001", "r-003", "r-005a", "r-250"] {
        mixed.get(&h.doctor, "absence", id).await.unwrap().unwrap();
    }
    check(&mixed.list(&h.doctor, "absence", None, None, 1000).await.unwrap().records, true);
    // Small pages cut through both kinds.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let fresh = Store::new(s.pool().clone(), s.schema().clone());
    fresh.get(&h.doctor, "absence", "r-010").await.unwrap().unwrap();
    loop {
        let page = fresh.list(&h.doctor, "absence", None, after.as_deref(), 7).await.unwrap();
        seen.extend(page.records);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    check(&seen, true);

    // A cell copied to another record, early and late in the page: the
    // read fails and names that record, whether its keys were at hand or not.
    let cell = |id: &str| {
        s.raw_bytes(
            "SELECT f_diagnosis FROM kluis_r_absence WHERE tenant = ? AND id = ?",
            vec![t("acme"), t(id)],
        )
    };
    let src = cell("r-003").await.pop().unwrap();
    for target in ["r-010", "r-220"] {
        let original = cell(target).await.pop().unwrap();
        let put = |bytes: Vec<u8>| {
            s.raw_exec(
                "UPDATE kluis_r_absence SET f_diagnosis = ? WHERE tenant = ? AND id = ?",
                vec![Bind::Bytes(bytes), t("acme"), t(target)],
            )
        };
        put(src.clone()).await;
        let cold = Store::new(s.pool().clone(), s.schema().clone());
        for store in [s, &cold] {
            match store.list(&h.doctor, "absence", None, None, 1000).await {
                Err(StoreError::RowIntegrity { record, .. }) => assert_eq!(record.as_str(), target),
                other => panic!("a moved cell must fail the page: {:?}", other.map(|p| p.records.len())),
            }
        }
        // The row tag covers the sealed bytes of every domain: HR's page fails too, and names
        // the record, though HR never opens a medical cell.
        match s.list(&h.hr, "absence", None, None, 1000).await {
            Err(StoreError::RowIntegrity { record, .. }) => assert_eq!(record.as_str(), target),
            other => panic!("HR's page must fail on the row: {:?}", other.map(|p| p.records.len())),
        }
        put(original).await;
    }
    check(&s.list(&h.doctor, "absence", None, None, 1000).await.unwrap().records, true);
    h
}

/// Every column of a record's row is covered by its row tag: a cell deleted or nulled, a cell
/// put back from an older version of the same row, a bookkeeping column edited, the tag removed
/// or copied from another row: each read fails with an integrity error naming the record, and
/// the tenant's other records still read. Each case tampers with a record of its own.
async fn tamper_rows<B: Engine>(h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let s = &h.store;
    let cases: &[(&str, &str)] = &[
        (
            "cell-deleted",
            "UPDATE kluis_r_absence SET f_doctor_notes = NULL, k_doctor_notes = NULL WHERE tenant = ? AND id = ?",
        ),
        ("cell-nulled", "UPDATE kluis_r_absence SET f_diagnosis = NULL WHERE tenant = ? AND id = ?"),
        ("older-cell", "UPDATE kluis_r_absence SET f_diagnosis = ? WHERE tenant = ? AND id = ?"),
        ("version", "UPDATE kluis_r_absence SET version = 1 WHERE tenant = ? AND id = ?"),
        ("subject", "UPDATE kluis_r_absence SET subject = 'emp-9' WHERE tenant = ? AND id = ?"),
        ("retain-until", "UPDATE kluis_r_absence SET retain_until = 1 WHERE tenant = ? AND id = ?"),
        ("created-at", "UPDATE kluis_r_absence SET created_at = created_at + 1 WHERE tenant = ? AND id = ?"),
        ("updated-at", "UPDATE kluis_r_absence SET updated_at = updated_at - 1 WHERE tenant = ? AND id = ?"),
        (
            "key-version",
            "UPDATE kluis_r_absence SET k_diagnosis = k_diagnosis + 1 WHERE tenant = ? AND id = ?",
        ),
        ("tag-copied", "UPDATE kluis_r_absence SET row_tag = ? WHERE tenant = ? AND id = ?"),
        ("tag-cut", "UPDATE kluis_r_absence SET row_tag = ? WHERE tenant = ? AND id = ?"),
    ];
    s.insert(&h.doctor, "absence", absence("emp-2", "E2", "untouched").id("intact")).await.unwrap();
    for (name, sql) in cases {
        let id = format!("t-{name}");
        s.insert(&h.doctor, "absence", absence("emp-1", "E1", "first").id(&id).retain_until(far_future()))
            .await
            .unwrap();
        let first = s
            .raw_bytes(
                "SELECT f_diagnosis FROM kluis_r_absence WHERE tenant = ? AND id = ?",
                vec![t("acme"), t(&id)],
            )
            .await;
        s.update(&h.doctor, "absence", &id, 1, Changes::new().set("diagnosis", "second")).await.unwrap();
        assert!(s.get(&h.doctor, "absence", &id).await.unwrap().is_some());
        let mut binds = Vec::new();
        match *name {
            "older-cell" => binds.push(Bind::Bytes(first.first().cloned().unwrap())),
            "tag-copied" => binds.push(Bind::Bytes(
                s.raw_bytes(
                    "SELECT row_tag FROM kluis_r_absence WHERE tenant = ? AND id = ?",
                    vec![t("acme"), t("intact")],
                )
                .await
                .pop()
                .unwrap(),
            )),
            "tag-cut" => {
                let mut tag = s
                    .raw_bytes(
                        "SELECT row_tag FROM kluis_r_absence WHERE tenant = ? AND id = ?",
                        vec![t("acme"), t(&id)],
                    )
                    .await
                    .pop()
                    .unwrap();
                tag.truncate(20);
                binds.push(Bind::Bytes(tag));
            }
            _ => {}
        }
        binds.push(t("acme"));
        binds.push(t(&id));
        assert_eq!(s.raw_exec(sql, binds).await, 1, "{name}");
        for access in [&h.doctor, &h.hr] {
            match s.get(access, "absence", &id).await {
                Err(StoreError::RowIntegrity { record, .. } | StoreError::Integrity { record, .. }) => {
                    assert_eq!(record, id, "{name}")
                }
                other => panic!("{name}: the tampered row must fail with an integrity error: {other:?}"),
            }
        }
        let r = s.get(&h.doctor, "absence", "intact").await.unwrap().unwrap();
        assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some("untouched"), "{name}");
    }
    h
}

/// Inserts of a transaction go in multi-row statements; an id that exists, or one given twice,
/// is still named, and nothing of the transaction is written.
async fn duplicate_ids_named<B: Engine>(h: Harness<B>) -> Harness<B> {
    let s = &h.store;
    s.insert(&h.doctor, "absence", absence("emp-1", "E1", "flu").id("d-007")).await.unwrap();
    let batch = |ids: &[&str]| -> Vec<Op> {
        ids.iter()
            .map(|id| Op::Insert {
                collection: "absence".into(),
                record: absence("emp-2", "E2", "flu").id(id),
            })
            .collect()
    };
    let ids: Vec<String> = (0..12).map(|i| format!("d-{i:03}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).filter(|i| *i != "d-007").collect();
    let mut with_existing = refs.clone();
    with_existing.push("d-007");
    let mut twice = refs.clone();
    twice.push("d-003");
    for (ops, named) in [(batch(&with_existing), "d-007"), (batch(&twice), "d-003")] {
        match s.transaction(&h.doctor, ops).await {
            Err(StoreError::AlreadyExists { collection, record }) => {
                assert_eq!((collection.as_str(), record.as_str()), ("absence", named))
            }
            other => panic!("expected AlreadyExists {named}: {other:?}"),
        }
        let page = s.list(&h.doctor, "absence", None, None, 100).await.unwrap();
        assert_eq!(page.records.len(), 1, "nothing of the transaction was written");
    }
    h
}

const CLEAR_SCHEMA: &str = r#"
[collections.leave.fields]
start_date   = { type = "date", domain = "general", clear = true }
hours        = { type = "integer", domain = "general", clear = true }
capacity     = { type = "percentage", domain = "general", clear = true }
paid         = { type = "bool", domain = "general", clear = true }
note         = { type = "text", domain = "general" }
diagnosis    = { type = "text", domain = "medical" }
"#;

/// Fields declared clear are typed columns the application's own SQL can filter and sort on;
/// they read back as written, are withheld from a caller without their domain, are covered by
/// the row tag, and a schema migration moves a field from sealed to clear and back (emptying the
/// column it leaves).
async fn clear_fields<B: Engine + Clone>(h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    let medical = kluis_store::Schema::from_toml(
        "[collections.x.fields]\nd = { type = \"text\", domain = \"medical\", clear = true }",
    );
    assert!(matches!(medical, Err(StoreError::Schema(ref m)) if m.contains("medical")), "{medical:?}");
    let indexed = kluis_store::Schema::from_toml(
        "[collections.x.fields]\nd = { type = \"text\", domain = \"general\", clear = true, blind_index = true }",
    );
    assert!(matches!(indexed, Err(StoreError::Schema(ref m)) if m.contains("blind index")), "{indexed:?}");
    let s = Store::new(h.store.pool().clone(), kluis_store::Schema::from_toml(CLEAR_SCHEMA).unwrap());
    s.migrate().await.unwrap();
    let both =
        s.admin_access(&h.keyring, &h.tenant, &[DomainName::general(), DomainName::medical()]).await.unwrap();
    for (i, day) in ["2025-03-01", "2025-01-15", "2025-06-30"].iter().enumerate() {
        let rec = NewRecord::new("emp-1")
            .id(&format!("l{i}"))
            .set("start_date", Value::Date((*day).into()))
            .set("hours", 8 * (i as i64 + 1))
            .set("capacity", Value::Decimal(format!("{}.5", 40 + i)))
            .set("paid", i != 1)
            .set("note", "private remark")
            .set("diagnosis", "flu");
        s.insert(&both, "leave", rec).await.unwrap();
    }
    // The app's own SQL: typed columns, filtered and sorted in the database.
    let ids = s
        .raw_bytes(
            "SELECT id FROM kluis_r_leave WHERE tenant = ? AND c_start_date >= '2025-02-01' AND c_hours > 7 ORDER BY c_start_date",
            vec![t("acme")],
        )
        .await;
    assert_eq!(ids, vec![b"l0".to_vec(), b"l2".to_vec()]);
    let r = s.get(&both, "leave", "l2").await.unwrap().unwrap();
    assert_eq!(r.get("start_date"), Some(&Value::Date("2025-06-30".into())));
    assert_eq!(r.get("hours"), Some(&Value::Integer(24)));
    assert_eq!(r.get("capacity"), Some(&Value::Decimal("42.5".into())));
    assert_eq!(r.get("paid"), Some(&Value::Bool(true)));
    assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some("flu"));
    // Only the declared fields are in clear.
    let notes = s.raw_bytes("SELECT f_note FROM kluis_r_leave WHERE id = 'l2'", vec![]).await;
    assert!(!notes[0].windows(7).any(|w| w == b"private"), "a sealed field stays sealed");
    // Withheld without the domain, as a sealed field would be.
    let med_only = s.admin_access(&h.keyring, &h.tenant, &[DomainName::medical()]).await.unwrap();
    assert!(s.get(&med_only, "leave", "l2").await.unwrap().unwrap().fields["hours"].is_withheld());
    // The row tag covers the clear columns.
    s.raw_exec("UPDATE kluis_r_leave SET c_hours = 80 WHERE id = 'l1'", vec![]).await;
    match s.get(&both, "leave", "l1").await {
        Err(StoreError::RowIntegrity { record, .. }) => assert_eq!(record, "l1"),
        other => panic!("an edited clear column must fail the row: {other:?}"),
    }
    s.raw_exec("UPDATE kluis_r_leave SET c_hours = 16 WHERE id = 'l1'", vec![]).await;
    assert!(s.get(&both, "leave", "l1").await.unwrap().is_some());
    // An update of a clear field.
    s.update(&both, "leave", "l0", 1, Changes::new().set("hours", 4_i64)).await.unwrap();
    assert_eq!(s.get(&both, "leave", "l0").await.unwrap().unwrap().get("hours"), Some(&Value::Integer(4)));

    // note: sealed -> clear; hours: clear -> sealed.
    let target_toml = CLEAR_SCHEMA
        .replace(
            r#"note         = { type = "text", domain = "general" }"#,
            r#"note         = { type = "text", domain = "general", clear = true }"#,
        )
        .replace(
            r#"hours        = { type = "integer", domain = "general", clear = true }"#,
            r#"hours        = { type = "integer", domain = "general" }"#,
        );
    let target = kluis_store::Schema::from_toml(&target_toml).unwrap();
    let report = s.migrate_schema(&both, &target).await.unwrap();
    assert_eq!(
        (report.records_updated, report.cells_clear_changed, report.conflicts),
        (3, 6, 0),
        "{report:?}"
    );
    let again = s.migrate_schema(&both, &target).await.unwrap();
    assert_eq!((again.records_updated, again.cells_clear_changed), (0, 0), "idempotent: {again:?}");
    let plain_hours = s.raw_bytes("SELECT id FROM kluis_r_leave WHERE c_hours IS NOT NULL", vec![]).await;
    assert!(plain_hours.is_empty(), "the clear column a field left is emptied");
    let sealed_notes = s.raw_bytes("SELECT id FROM kluis_r_leave WHERE f_note IS NOT NULL", vec![]).await;
    assert!(sealed_notes.is_empty(), "the sealed column a field left is emptied");
    let notes = s.raw_bytes("SELECT c_note FROM kluis_r_leave ORDER BY id", vec![]).await;
    assert_eq!(notes, vec![b"private remark".to_vec(); 3]);
    let new = Store::new(h.store.pool().clone(), target);
    let both = new
        .admin_access(&h.keyring, &h.tenant, &[DomainName::general(), DomainName::medical()])
        .await
        .unwrap();
    let r = new.get(&both, "leave", "l0").await.unwrap().unwrap();
    assert_eq!(r.get("hours"), Some(&Value::Integer(4)));
    assert_eq!(r.get("note").and_then(Value::as_text), Some("private remark"));
    assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some("flu"));
    h
}

/// Freshness (src/row_log.rs): a row rolled back to an older state Kluis wrote, a row deleted
/// outside Kluis, a row copied under another id and a deleted row restored from a snapshot all
/// read back (each is a consistent row with a valid tag), but `verify_rows` names each of them;
/// the writes Kluis made itself (insert, update, delete, shred, re-encryption) leave it clean.
async fn row_freshness<B: Engine>(h: Harness<B>) -> Harness<B>
where
    Store<B>: Raw,
{
    use kluis_store::row_log::{RowFinding, RowProblem};
    let s = &h.store;
    for (id, subject) in
        [("a", "emp-1"), ("b", "emp-1"), ("c", "emp-2"), ("d", "emp-2"), ("e", "emp-3"), ("f", "emp-4")]
    {
        s.insert(&h.doctor, "absence", absence(subject, "E1", &format!("first {id}")).id(id)).await.unwrap();
    }
    s.update(&h.doctor, "absence", "e", 1, Changes::new().set("diagnosis", "second e")).await.unwrap();
    s.delete(&h.doctor, "absence", "f", Some(1), None).await.unwrap();
    let mut access = h.doctor_clone().await;
    s.shred_subject(&h.keyring, &mut access, "emp-3", None).await.unwrap();
    // The shred rotated the domain keys: `access` holds the new ones.
    let clean = s.verify_rows(&[]).await.unwrap();
    assert!(clean.is_ok(), "{clean:?}");
    assert_eq!(clean.rows, 4);
    assert_eq!(clean.log_entries, 6 + 1 + 1 + 1, "six inserts, an update, a delete, a shred of one row");

    let snap = |name: &str, id: &str| {
        format!("CREATE TABLE {name} AS SELECT * FROM kluis_r_absence WHERE tenant = 'acme' AND id = '{id}'")
    };
    // a: rolled back to its first version after an update.
    s.raw_exec(&snap("snap_a", "a"), vec![]).await;
    s.update(&access, "absence", "a", 1, Changes::new().set("diagnosis", "second a")).await.unwrap();
    s.raw_exec("DELETE FROM kluis_r_absence WHERE tenant = 'acme' AND id = 'a'", vec![]).await;
    s.raw_exec("INSERT INTO kluis_r_absence SELECT * FROM snap_a", vec![]).await;
    let a = s.get(&access, "absence", "a").await.unwrap().unwrap();
    assert_eq!(a.get("diagnosis").and_then(Value::as_text), Some("first a"), "a consistent older row opens");
    // b: deleted outside Kluis.
    assert_eq!(s.raw_exec("DELETE FROM kluis_r_absence WHERE tenant = 'acme' AND id = 'b'", vec![]).await, 1);
    // c2: a copy of c under another id.
    s.raw_exec(&snap("snap_c", "c"), vec![]).await;
    s.raw_exec("UPDATE snap_c SET id = 'c2'", vec![]).await;
    s.raw_exec("INSERT INTO kluis_r_absence SELECT * FROM snap_c", vec![]).await;
    // d: deleted through Kluis, then restored from a snapshot.
    s.raw_exec(&snap("snap_d", "d"), vec![]).await;
    s.delete(&access, "absence", "d", Some(1), None).await.unwrap();
    s.raw_exec("INSERT INTO kluis_r_absence SELECT * FROM snap_d", vec![]).await;
    assert!(s.get(&access, "absence", "d").await.unwrap().is_some(), "the restored row opens");

    let report = s.verify_rows(&[]).await.unwrap();
    assert!(report.log_problem.is_none(), "{report:?}");
    let p = |record: &str, finding| RowProblem {
        tenant: "acme".into(),
        collection: "absence".into(),
        record: record.into(),
        finding,
    };
    assert_eq!(
        report.problems,
        vec![
            p("a", RowFinding::NotLastWritten),
            p("b", RowFinding::Deleted),
            p("c2", RowFinding::NotLogged),
            p("d", RowFinding::NotLogged),
        ]
    );
    // The rest of the tenant keeps working.
    assert!(s.get(&access, "absence", "c").await.unwrap().is_some());
    for name in ["snap_a", "snap_c", "snap_d"] {
        s.raw_exec(&format!("DROP TABLE {name}"), vec![]).await;
    }
    h
}

/// An `Access` narrowed to a record, or to one subject's records of a collection, refuses every
/// other record, subject, collection and tenant-wide operation (`OutOfScope`) before anything is
/// opened or written, and can only narrow further.
async fn scoped_access<B: Engine>(h: Harness<B>) -> Harness<B> {
    use kluis_store::Scope;
    let s = &h.store;
    for (id, subject, emp) in [("a", "emp-1", "E1"), ("b", "emp-2", "E1"), ("c", "emp-1", "E2")] {
        s.insert(&h.doctor, "absence", absence(subject, emp, "flu").id(id)).await.unwrap();
    }
    let out = |e: Result<(), StoreError>, what: &str| {
        assert!(matches!(e, Err(StoreError::OutOfScope { .. })), "{what}: {e:?}");
    };
    // One record.
    let rec = h
        .doctor_clone()
        .await
        .narrow(Scope::Record {
            collection: "absence".into(),
            record: "a".into(),
            subject: Some("emp-1".into()),
        })
        .unwrap();
    assert!(s.get(&rec, "absence", "a").await.unwrap().is_some());
    s.update(&rec, "absence", "a", 1, Changes::new().set("diagnosis", "burn-out")).await.unwrap();
    out(s.get(&rec, "absence", "b").await.map(|_| ()), "get another record");
    out(
        s.update(&rec, "absence", "b", 1, Changes::new().set("diagnosis", "x")).await.map(|_| ()),
        "update another",
    );
    out(s.delete(&rec, "absence", "c", None, None).await, "delete another");
    out(s.insert(&rec, "absence", absence("emp-1", "E9", "x").id("d")).await.map(|_| ()), "insert another");
    out(s.list(&rec, "absence", None, None, 10).await.map(|_| ()), "list");
    out(s.find(&rec, "absence", "employee_number", &Value::from("E1")).await.map(|_| ()), "find");
    out(s.migrate_schema(&rec, s.schema()).await.map(|_| ()), "schema migration");
    // A record scope whose subject is not the row's: refused on the row, before opening.
    let wrong = h
        .doctor_clone()
        .await
        .narrow(Scope::Record {
            collection: "absence".into(),
            record: "a".into(),
            subject: Some("emp-2".into()),
        })
        .unwrap();
    out(s.get(&wrong, "absence", "a").await.map(|_| ()), "another subject's record");
    // Widening is refused.
    out(rec.narrow(Scope::Tenant).map(|_| ()), "widen to the tenant");
    // One subject's records of a collection.
    let subj = h
        .doctor_clone()
        .await
        .narrow(Scope::Collection { collection: "absence".into(), subject: Some("emp-1".into()) })
        .unwrap();
    let page = s.list(&subj, "absence", Some("emp-1"), None, 10).await.unwrap();
    assert_eq!(page.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    out(s.list(&subj, "absence", None, None, 10).await.map(|_| ()), "list every subject");
    out(s.list(&subj, "absence", Some("emp-2"), None, 10).await.map(|_| ()), "list another subject");
    let hits = s.find(&subj, "absence", "employee_number", &Value::from("E1")).await.unwrap();
    assert_eq!(hits.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a"], "b is emp-2's: not opened");
    out(s.get(&subj, "absence", "b").await.map(|_| ()), "get another subject's record");
    out(
        s.insert(&subj, "absence", absence("emp-2", "E9", "x").id("e")).await.map(|_| ()),
        "insert for another subject",
    );
    s.insert(&subj, "absence", absence("emp-1", "E9", "x").id("e")).await.unwrap();
    let mut subj = subj;
    out(s.shred_subject(&h.keyring, &mut subj, "emp-1", None).await.map(|_| ()), "shred");
    assert!(s.get(&h.doctor, "absence", "b").await.unwrap().is_some(), "nothing outside the scope changed");
    // Read only: reads work, every write is refused.
    let mut ro = h.doctor_clone().await.read_only();
    assert!(!ro.may_write());
    assert!(s.get(&ro, "absence", "b").await.unwrap().is_some());
    out(s.insert(&ro, "absence", absence("emp-2", "E9", "x").id("f")).await.map(|_| ()), "read-only insert");
    out(
        s.update(&ro, "absence", "b", 1, Changes::new().set("diagnosis", "x")).await.map(|_| ()),
        "read-only update",
    );
    out(s.delete(&ro, "absence", "b", None, None).await, "read-only delete");
    out(s.shred_subject(&h.keyring, &mut ro, "emp-2", None).await.map(|_| ()), "read-only shred");
    out(s.delete_document(&ro, "doc-1").await.map(|_| ()), "read-only document delete");
    assert_eq!(s.get(&h.doctor, "absence", "b").await.unwrap().unwrap().version, 1, "b unchanged");
    h
}

all_engines!(
    crud,
    pagination,
    blind_index,
    concurrent_update_conflict,
    transaction_rollback,
    withheld_fields,
    retention,
    shredding,
    tamper_moved_cells,
    tamper_rows,
    duplicate_ids_named,
    clear_fields,
    tamper_key_rows,
    bad_input,
    documents_catalog,
    delete_removes_record_documents,
    tenants_apart,
    schema_migration,
    batch_key_check,
    list_pages,
    pipelined_transaction,
    row_freshness,
    scoped_access,
);

/// On a PostgreSQL database whose ids sort by a locale (ICU) collation, where `a-1 < B-2` while
/// Rust's byte order says `B-2 < a-1`, every record of a page still gets all its cells: the id
/// range of the cells query comes from the page's first and last record as the database orders
/// them. (With Rust's min and max the range was `[B-2, c-3]` and missed `a-1` and `D-4`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locale_collation_pages() {
    let Some(h) = common::postgres().await else { return };
    let s = &h.store;
    for (table, column) in [("kluis_r_absence", "id")] {
        s.raw_exec(
            &format!("ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT COLLATE \"und-x-icu\""),
            vec![],
        )
        .await;
    }
    let ids = ["a-1", "B-2", "c-3", "D-4"];
    for id in ids {
        s.insert(&h.doctor, "absence", absence("emp-1", "E1", &format!("flu {id}")).id(id)).await.unwrap();
    }
    let page = s.list(&h.doctor, "absence", None, None, 100).await.unwrap();
    assert_eq!(page.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ids, "the database's order");
    for r in &page.records {
        assert_eq!(r.fields.len(), 6, "{} has all its cells", r.id);
        assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some(format!("flu {}", r.id).as_str()));
    }
    // Two records per page: the ranges of both pages too.
    let first = s.list(&h.doctor, "absence", None, None, 2).await.unwrap();
    let second = s.list(&h.doctor, "absence", None, first.next.as_deref(), 2).await.unwrap();
    for r in first.records.iter().chain(&second.records) {
        assert_eq!(r.fields.len(), 6, "{} has all its cells", r.id);
    }
    common::drop_db(h).await;
}
