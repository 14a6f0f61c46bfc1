//! The audit log on real databases: tamper detection (edit, delete, insert, reorder, truncate)
//! with raw SQL, fail closed, concurrent appenders, canaries. Each test runs on SQLite, PostgreSQL
//! and MariaDB (server engines skip locally when unreachable; required with CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{H, Raw, ctx, kv, principal};
use kluis_core::DomainName;
use kluis_service::audit::{self, Checkpoint};
use kluis_service::erasure::{CertificateCheck, KeyVersionRef};
use kluis_service::{AdminActor, AdminEvent, Error};
use kluis_store::{Changes, Engine, NewRecord, Store, Value};

const N: u64 = 25;

async fn fill<B: Engine>(h: &H<B>) {
    let actor = AdminActor::new("ops.anna", "cli@host-1", "CHG-1234");
    for i in 0..N {
        h.svc
            .record_admin(
                &actor,
                AdminEvent::KeyRotation {
                    tenant: h.acme.clone(),
                    domain: DomainName::general(),
                    version: kv(i as u32 + 2),
                },
            )
            .await
            .unwrap();
    }
    let r = audit::verify(&h.store).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.entries, N);
    assert_eq!(r.head_seq, N);
    assert_eq!(r.checkpoints, 2, "checkpoints every 10 entries");
}

async fn first_bad<B: Engine>(h: &H<B>) -> (Option<u64>, String) {
    let r = audit::verify(&h.store).await.unwrap();
    (r.first_bad, r.problem.unwrap_or_default())
}

async fn edit<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    fill(&h).await;
    assert_eq!(h.store.exec("UPDATE kluis_audit SET outcome = 'denied' WHERE seq = 7").await, 1);
    let (bad, why) = first_bad(&h).await;
    assert_eq!(bad, Some(7), "{}: {why}", h.store.engine());
    assert!(why.contains("does not match its hash"), "{why}");
    h.cleanup().await;
}

async fn edit_hash_too<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    fill(&h).await;
    // Entry 7 edited with a value copied from entry 6 (a plausible value): 7 no longer chains.
    h.store.exec("UPDATE kluis_audit SET reason = (SELECT reason FROM (SELECT reason FROM kluis_audit WHERE seq = 6) x) WHERE seq = 7").await;
    let (bad, _) = first_bad(&h).await;
    assert_eq!(bad, Some(7), "{}", h.store.engine());
    h.cleanup().await;
}

async fn delete<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    fill(&h).await;
    assert_eq!(h.store.exec("DELETE FROM kluis_audit WHERE seq = 7").await, 1);
    let (bad, why) = first_bad(&h).await;
    assert_eq!(bad, Some(7), "{}: {why}", h.store.engine());
    assert!(why.contains("missing"), "{why}");
    h.cleanup().await;
}

const COLS: &str = "at_ms, actor, roles, support_grant, tenant, subject, collection, record, fields, action, outcome, reason, break_glass, access_point, purpose, on_behalf_of, hash";

async fn insert<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    fill(&h).await;
    // Make room at 7 and insert a copy of entry 5 there (hash and all).
    h.store.exec("UPDATE kluis_audit SET seq = seq + 1000 WHERE seq >= 7").await;
    h.store.exec("UPDATE kluis_audit SET seq = seq - 999 WHERE seq >= 1000").await;
    let n = h
        .store
        .exec(&format!(
            "INSERT INTO kluis_audit (seq, {COLS}) SELECT 7, {COLS} FROM kluis_audit WHERE seq = 5"
        ))
        .await;
    assert_eq!(n, 1);
    let (bad, why) = first_bad(&h).await;
    assert_eq!(bad, Some(7), "{}: {why}", h.store.engine());
    h.cleanup().await;
}

async fn append_forged<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    fill(&h).await;
    // A forged entry at the end (head not moved): its hash cannot chain.
    h.store
        .exec(&format!(
            "INSERT INTO kluis_audit (seq, {COLS}) SELECT 26, {COLS} FROM kluis_audit WHERE seq = 25"
        ))
        .await;
    let (bad, why) = first_bad(&h).await;
    assert_eq!(bad, Some(26), "{}: {why}", h.store.engine());
    h.cleanup().await;
}

async fn negative_seq<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    fill(&h).await;
    assert_eq!(h.store.exec("UPDATE kluis_audit SET seq = -7 WHERE seq = 7").await, 1);
    let (bad, why) = first_bad(&h).await;
    // Pages are read from seq 1 up: the renumbered entry is a gap at 7.
    assert_eq!(bad, Some(7), "{}: {why}", h.store.engine());
    assert!(why.contains("entry 7 is missing"), "{why}");
    // The head renumbered too is named as such.
    h.store.exec("UPDATE kluis_audit SET seq = 7 WHERE seq = -7").await;
    h.store.exec("UPDATE kluis_audit_head SET seq = -1 WHERE id = 1").await;
    let (bad, why) = first_bad(&h).await;
    assert!(bad.is_some() && why.contains("negative sequence number -1"), "{why}");
    h.cleanup().await;
}

async fn reorder<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    fill(&h).await;
    h.store.exec("UPDATE kluis_audit SET seq = -7 WHERE seq = 7").await;
    h.store.exec("UPDATE kluis_audit SET seq = 7 WHERE seq = 8").await;
    h.store.exec("UPDATE kluis_audit SET seq = 8 WHERE seq = -7").await;
    let (bad, why) = first_bad(&h).await;
    assert_eq!(bad, Some(7), "{}: {why}", h.store.engine());
    h.cleanup().await;
}

async fn truncate<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    fill(&h).await;
    let kept: Checkpoint = audit::head(&h.store).await.unwrap().unwrap();
    assert_eq!(kept.seq, N);
    assert_eq!(Checkpoint::parse(&kept.to_text()).unwrap(), kept);
    // 1. Plain truncation: the head row still names entry 25.
    h.store.exec("DELETE FROM kluis_audit WHERE seq > 20").await;
    let (bad, why) = first_bad(&h).await;
    assert_eq!(bad, Some(21), "{}: {why}", h.store.engine());
    assert!(why.contains("truncated"), "{why}");
    // 2. Truncation to 15 with the head row rewound: checkpoint 20 still names a missing entry.
    h.store.exec("DELETE FROM kluis_audit WHERE seq > 15").await;
    h.store.exec("UPDATE kluis_audit_head SET seq = 15, hash = (SELECT hash FROM kluis_audit WHERE seq = 15) WHERE id = 1").await;
    let (bad, why) = first_bad(&h).await;
    assert_eq!(bad, Some(16), "{}: {why}", h.store.engine());
    // 3. Checkpoint rows removed too: the database alone cannot tell...
    h.store.exec("DELETE FROM kluis_audit_checkpoints WHERE seq > 15").await;
    let r = audit::verify(&h.store).await.unwrap();
    assert!(r.is_ok(), "a consistent truncation is invisible without an outside checkpoint: {r:?}");
    // ...but the checkpoint the operator kept elsewhere can.
    let r = audit::verify_against(&h.store, &kept).await.unwrap();
    assert_eq!(r.first_bad, Some(16), "{r:?}");
    assert!(r.problem.unwrap().contains("truncated"));
    h.cleanup().await;
}

async fn rewrite_detected_by_kept_checkpoint<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    fill(&h).await;
    let kept = audit::latest_checkpoint(&h.store).await.unwrap().unwrap();
    assert_eq!(kept.seq, 20);
    assert!(audit::verify_against(&h.store, &kept).await.unwrap().is_ok());
    // A different kept value (another database's chain) does not match.
    let other = Checkpoint { seq: 20, hash: "00".repeat(32) };
    let r = audit::verify_against(&h.store, &other).await.unwrap();
    assert_eq!(r.first_bad, Some(20), "{r:?}");
    h.cleanup().await;
}

async fn fail_closed<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    let doctor = principal("dr.jansen", &h.acme, "company_doctor");
    let hr = principal("p.devries", &h.acme, "hr_manager");
    let c = ctx();
    h.svc
        .insert(&doctor, &c, "absence", NewRecord::new("emp-1").id("r-1").set("diagnosis", "flu"))
        .await
        .unwrap();
    let before = audit::verify(&h.store).await.unwrap().entries;
    h.store.break_audit().await;
    // A read returns nothing.
    let e = h.svc.get(&doctor, &c, "absence", "r-1").await.unwrap_err();
    assert!(matches!(e, Error::AuditUnavailable(_)), "{e:?}");
    // A denial cannot be logged either: still no data, an error.
    assert!(matches!(h.svc.get(&hr, &c, "absence", "r-1").await, Err(Error::AuditUnavailable(_))));
    // Writes change nothing.
    assert!(
        h.svc
            .insert(&doctor, &c, "absence", NewRecord::new("emp-1").id("r-2").set("diagnosis", "x"))
            .await
            .is_err()
    );
    assert!(
        h.svc
            .update(&doctor, &c, "absence", "r-1", 1, Changes::new().set("diagnosis", "changed"))
            .await
            .is_err()
    );
    assert!(h.svc.delete(&doctor, &c, "absence", "r-1", None, None).await.is_err());
    assert!(h.svc.find(&doctor, &c, "absence", "diagnosis", &Value::from("flu")).await.is_err());
    assert!(h.svc.list(&doctor, &c, "absence", None, None, 10).await.is_err());
    assert!(h.svc.shred(&doctor, &c, "emp-1", None).await.is_err(), "no shred without its audit entry");
    h.store.mend_audit().await;
    let rec = h.svc.get(&doctor, &c, "absence", "r-1").await.unwrap();
    assert_eq!(rec.version, 1);
    assert_eq!(rec.get("diagnosis"), Some(&Value::from("flu")));
    assert!(matches!(h.svc.get(&doctor, &c, "absence", "r-2").await, Err(Error::NotFound { .. })));
    let r = audit::verify(&h.store).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.entries, before + 2, "only the two reads after the repair were logged");
    // With the log working, a shred writes exactly one entry (in its removal transaction).
    h.svc.shred(&doctor, &c, "emp-1", None).await.unwrap();
    let r = audit::verify(&h.store).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.entries, before + 4, "one entry for the shred, one for its erasure certificate");
    assert!(matches!(h.svc.get(&doctor, &c, "absence", "r-1").await, Err(Error::NotFound { .. })));
    h.cleanup().await;
}

async fn dropped_table<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    let doctor = principal("dr.jansen", &h.acme, "company_doctor");
    let c = ctx();
    h.svc
        .insert(&doctor, &c, "absence", NewRecord::new("emp-1").id("r-1").set("diagnosis", "flu"))
        .await
        .unwrap();
    h.store.exec("DROP TABLE kluis_audit").await;
    assert!(matches!(h.svc.get(&doctor, &c, "absence", "r-1").await, Err(Error::AuditUnavailable(_))));
    assert!(
        h.svc.update(&doctor, &c, "absence", "r-1", 1, Changes::new().set("diagnosis", "x")).await.is_err()
    );
    let access = h.store.admin_access(&*h.keyring, &h.acme, &[DomainName::medical()]).await.unwrap();
    let rec = h.store.get(&access, "absence", "r-1").await.unwrap().unwrap();
    assert_eq!(rec.version, 1, "the update was rolled back with its audit entry");
    h.cleanup().await;
}

async fn concurrent<B: Engine>(h: H<B>) {
    let h = std::sync::Arc::new(h);
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let doctor = principal(&format!("dr.{t}"), &h.acme, "company_doctor");
            let actor = AdminActor::new(format!("ops.{t}"), "cli", "test");
            for i in 0..8u32 {
                if i % 2 == 0 {
                    h.svc.record_admin(&actor, AdminEvent::RootRewrap { keys: u64::from(i) }).await.unwrap();
                } else {
                    h.svc
                        .insert(
                            &doctor,
                            &ctx(),
                            "absence",
                            NewRecord::new("emp-9").id(&format!("c-{t}-{i}")).set("diagnosis", "x"),
                        )
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = audit::verify(&h.store).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.entries, 32);
    assert_eq!(r.checkpoints, 3);
    if let Ok(h) = std::sync::Arc::try_unwrap(h) {
        h.cleanup().await;
    }
}

const CANARIES: [&str; 4] = [
    "CANARY-Zwangerschapsdiabetes-4f1e",
    "CANARY-Burnout-dossier-77ab",
    "CANARY-emp-nr-5531x",
    "CANARY-notes-Qx9",
];

async fn canary<B: Engine>(h: H<B>) {
    let doctor = principal("dr.jansen", &h.acme, "company_doctor");
    let hr = principal("p.devries", &h.acme, "hr_manager");
    let c = ctx();
    let w = h
        .svc
        .insert(
            &doctor,
            &c,
            "absence",
            NewRecord::new("emp-1")
                .id("r-1")
                .set("diagnosis", CANARIES[0])
                .set("doctor_notes", CANARIES[3])
                .set("employee_number", CANARIES[2]),
        )
        .await
        .unwrap();
    let mut debug = String::new();
    debug.push_str(&format!("{w:?}"));
    h.svc.get(&doctor, &c, "absence", "r-1").await.unwrap();
    h.svc.find(&doctor, &c, "absence", "diagnosis", &Value::from(CANARIES[0])).await.unwrap();
    h.svc.find(&hr, &c, "absence", "employee_number", &Value::from(CANARIES[2])).await.unwrap();
    debug.push_str(&format!(
        "{:?}",
        h.svc.find(&hr, &c, "absence", "diagnosis", &Value::from(CANARIES[0])).await.unwrap_err()
    ));
    h.svc
        .update(&doctor, &c, "absence", "r-1", 1, Changes::new().set("diagnosis", CANARIES[1]))
        .await
        .unwrap();
    debug.push_str(&format!(
        "{:?}",
        h.svc
            .update(&hr, &c, "absence", "r-1", 2, Changes::new().set("diagnosis", CANARIES[1]))
            .await
            .unwrap_err()
    ));
    debug.push_str(&format!(
        "{:?}",
        h.svc
            .update(&doctor, &c, "absence", "r-1", 1, Changes::new().set("diagnosis", CANARIES[1]))
            .await
            .unwrap_err()
    ));
    h.svc.get(&hr, &c, "absence", "r-1").await.unwrap();
    h.svc.export(&doctor, &c, "emp-1").await.unwrap();
    let mut out = Vec::new();
    audit::export_jsonl(&h.store, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let rows = h.store.audit_page(None, 0, 1000).await.unwrap();
    debug.push_str(&format!("{rows:?} {:?}", h.svc));
    assert!(rows.len() >= 9, "{}", rows.len());
    assert!(text.contains("medical:diagnosis"), "names are logged");
    for c in CANARIES {
        assert!(!text.contains(c), "canary in the export");
        assert!(!debug.contains(c), "canary in Debug output");
    }
    if let Some(file) = &h.file {
        // Positive control first: the scan finds a name that is in the log.
        let mut bytes = std::fs::read(file).unwrap();
        if let Ok(w) = std::fs::read(file.with_extension("db-wal")) {
            bytes.extend(w);
        }
        assert!(bytes.windows(17).any(|w| w == b"medical:diagnosis"));
        for c in CANARIES {
            assert!(!bytes.windows(c.len()).any(|w| w == c.as_bytes()), "canary in the sqlite file");
        }
    }
    h.cleanup().await;
}

/// A shred's entry is written in the transaction that removes the subject: when that transaction
/// fails (a trigger refuses the subject key delete), neither the removal nor an "allowed" entry is
/// stored; only the failure is logged.
async fn shred_entry_in_its_transaction<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    let doctor = principal("dr.jansen", &h.acme, "company_doctor");
    let c = ctx();
    h.svc
        .insert(&doctor, &c, "absence", NewRecord::new("emp-1").id("r-1").set("diagnosis", "flu"))
        .await
        .unwrap();
    let (block, unblock): (&[&str], &[&str]) = match h.store.engine() {
        "sqlite" => (
            &[
                "CREATE TRIGGER kluis_sk_refuse BEFORE DELETE ON kluis_subject_keys BEGIN SELECT RAISE(ABORT, 'refused'); END",
            ],
            &["DROP TRIGGER kluis_sk_refuse"],
        ),
        "postgres" => (
            &[
                "CREATE FUNCTION kluis_sk_refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER kluis_sk_refuse BEFORE DELETE ON kluis_subject_keys FOR EACH ROW EXECUTE FUNCTION kluis_sk_refuse()",
            ],
            &["DROP TRIGGER kluis_sk_refuse ON kluis_subject_keys", "DROP FUNCTION kluis_sk_refuse()"],
        ),
        _ => (
            &[
                "CREATE TRIGGER kluis_sk_refuse BEFORE DELETE ON kluis_subject_keys FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'",
            ],
            &["DROP TRIGGER kluis_sk_refuse"],
        ),
    };
    for sql in block {
        h.store.exec(sql).await;
    }
    assert!(h.svc.shred(&doctor, &c, "emp-1", None).await.is_err(), "the shred transaction is refused");
    for sql in unblock {
        h.store.exec(sql).await;
    }
    assert!(
        h.svc.erasure_certificates(h.acme.as_str(), None).await.unwrap().is_empty(),
        "no shred, no certificate"
    );
    let rows = h.store.audit_page(None, 0, 1000).await.unwrap();
    let shreds: Vec<_> = rows.iter().filter(|r| r.entry.action == "shred").collect();
    assert_eq!(shreds.len(), 1, "only the failure is logged: {shreds:?}");
    assert_eq!(shreds[0].entry.outcome, "error");
    let rec = h.svc.get(&doctor, &c, "absence", "r-1").await.unwrap();
    assert_eq!(rec.get("diagnosis"), Some(&Value::from("flu")), "nothing was removed");
    // Unblocked, the shred and its one "allowed" entry commit together.
    h.svc.shred(&doctor, &c, "emp-1", None).await.unwrap();
    let rows = h.store.audit_page(None, 0, 1000).await.unwrap();
    let outcomes: Vec<&str> =
        rows.iter().filter(|r| r.entry.action == "shred").map(|r| r.entry.outcome.as_str()).collect();
    assert_eq!(outcomes, ["error", "allowed"], "{outcomes:?}");
    assert!(audit::verify(&h.store).await.unwrap().is_ok());
    // Then the erasure certificate: what the shred destroyed, as an entry of the chain.
    let certs = h.svc.erasure_certificates(h.acme.as_str(), Some("emp-1")).await.unwrap();
    assert_eq!(certs.len(), 1, "{certs:?}");
    let cert = &certs[0];
    let c = &cert.certificate;
    assert_eq!((c.tenant.as_str(), c.subject.as_str()), ("acme", "emp-1"));
    assert_eq!((c.records_removed, c.catalog_documents_removed, c.blobs_deleted), (1, 0, None));
    let medical_v1 = KeyVersionRef { domain: "medical".into(), version: kv(1) };
    assert_eq!(c.subject_keys_destroyed, std::slice::from_ref(&medical_v1));
    assert!(c.domain_key_versions_destroyed.contains(&medical_v1), "{c:?}");
    let engine = match h.store.engine() {
        "mariadb" => "mysql",
        e => e,
    };
    assert_eq!(c.purge.engine, engine);
    assert!(!c.to_json().unwrap().contains("flu"), "no value in a certificate");
    assert!(
        rows.iter().filter(|r| r.entry.action == "shred").all(|r| r.seq < cert.audit_seq),
        "appended after the shred's entry"
    );
    assert_eq!(h.svc.check_certificate(cert).await.unwrap(), CertificateCheck::Matches);
    let mut fewer = cert.clone();
    fewer.certificate.records_removed = 0;
    assert_eq!(h.svc.check_certificate(&fewer).await.unwrap(), CertificateCheck::Differs);
    let mut elsewhere = cert.clone();
    elsewhere.audit_seq += 1000;
    assert_eq!(h.svc.check_certificate(&elsewhere).await.unwrap(), CertificateCheck::NoEntry);
    let mut at_min = cert.clone();
    at_min.audit_seq = i64::MIN;
    assert_eq!(h.svc.check_certificate(&at_min).await.unwrap(), CertificateCheck::NoEntry);
    let mut other_hash = cert.clone();
    other_hash.entry_hash = "00".repeat(32);
    assert_eq!(h.svc.check_certificate(&other_hash).await.unwrap(), CertificateCheck::Differs);
    h.cleanup().await;
}

fn hex_literal(engine: &str, b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    match engine {
        "postgres" => format!("decode('{hex}', 'hex')"),
        _ => format!("X'{hex}'"),
    }
}

/// Freshness through the chain: a record rolled back to its older version (a consistent row that
/// opens) is found by `verify`; an attacker who also rewrites the row log and its head is caught
/// by the audit entry that covers the log; one who also recomputes the audit entries after that
/// is caught by a checkpoint kept elsewhere after the write, and not by one kept before it (the
/// documented limit).
async fn rolled_back_rows<B: Engine>(h: H<B>)
where
    Store<B>: Raw,
{
    use kluis_store::audit::{GENESIS, entry_hash_v2};
    use kluis_store::row_log::{RowFinding, RowLogEntry, rows_hash};
    let engine = h.store.engine();
    let doctor = principal("dr.jansen", &h.acme, "company_doctor");
    let c = ctx();
    for id in ["r-1", "r-2"] {
        h.svc
            .insert(&doctor, &c, "absence", NewRecord::new("emp-1").id(id).set("diagnosis", "flu"))
            .await
            .unwrap();
    }
    let before = audit::head(&h.store).await.unwrap().unwrap();
    let t = "kluis_r_absence";
    h.store.exec(&format!("CREATE TABLE snap AS SELECT * FROM {t} WHERE id = 'r-1'")).await;
    h.svc
        .update(&doctor, &c, "absence", "r-1", 1, Changes::new().set("diagnosis", "burn-out"))
        .await
        .unwrap();
    let after = audit::head(&h.store).await.unwrap().unwrap();
    let r = audit::verify_against(&h.store, &after).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.rows.as_ref().map(|r| (r.rows, r.log_entries, r.uncovered)), Some((2, 3, 0)));

    // 1. The row alone rolled back: it opens, and verify names it.
    h.store.exec(&format!("DELETE FROM {t} WHERE id = 'r-1'")).await;
    h.store.exec(&format!("INSERT INTO {t} SELECT * FROM snap")).await;
    let rec = h.svc.get(&doctor, &c, "absence", "r-1").await.unwrap();
    assert_eq!(rec.get("diagnosis"), Some(&Value::from("flu")), "the older row is consistent");
    let r = audit::verify(&h.store).await.unwrap();
    assert!(r.first_bad.is_none() && !r.is_ok(), "{r:?}");
    let rows = r.rows.unwrap();
    assert_eq!(rows.problems.len(), 1, "{rows:?}");
    assert_eq!(
        (rows.problems[0].record.as_str(), rows.problems[0].finding),
        ("r-1", RowFinding::NotLastWritten)
    );

    // 2. The row log entry of the update and the log head rewritten to match: the audit entries
    // appended after the update cover the old running hash.
    let log = h.store.row_log_page(0, 100).await.unwrap();
    assert_eq!(log.len(), 3);
    let old_tag = log[0].entry.tag.clone().unwrap();
    let mut running = GENESIS;
    for (i, row) in log.iter().enumerate() {
        let mut e = row.entry.clone();
        if i == 2 {
            e = RowLogEntry { tag: Some(old_tag.clone()), ..e };
        }
        running = rows_hash(&running, row.seq as u64, &e);
    }
    h.store
        .exec(&format!("UPDATE kluis_row_log SET row_tag = {} WHERE seq = 3", hex_literal(engine, &old_tag)))
        .await;
    h.store
        .exec(&format!(
            "UPDATE kluis_audit_head SET rows_hash = {} WHERE id = 1",
            hex_literal(engine, &running)
        ))
        .await;
    let r = audit::verify(&h.store).await.unwrap();
    let problem = r.rows.as_ref().and_then(|r| r.log_problem.clone()).unwrap_or_default();
    assert!(problem.contains("differs from what audit entry"), "{r:?}");

    // 3. The audit entries from the update's on recomputed as well: the database alone agrees...
    let entries = h.store.audit_page(None, 0, 1000).await.unwrap();
    let mut prev = GENESIS;
    for e in &entries {
        let (rs, _) = e.rows.clone().unwrap();
        if rs >= 3 {
            let hash = entry_hash_v2(&prev, e.seq as u64, &e.entry, rs as u64, &running);
            h.store
                .exec(&format!(
                    "UPDATE kluis_audit SET rows_hash = {}, hash = {} WHERE seq = {}",
                    hex_literal(engine, &running),
                    hex_literal(engine, &hash),
                    e.seq
                ))
                .await;
            prev = hash;
        } else {
            prev = e.hash.clone().try_into().unwrap();
        }
    }
    h.store
        .exec(&format!("UPDATE kluis_audit_head SET hash = {} WHERE id = 1", hex_literal(engine, &prev)))
        .await;
    h.store.exec("DELETE FROM kluis_audit_checkpoints").await;
    let r = audit::verify(&h.store).await.unwrap();
    assert!(r.is_ok(), "a rewrite of everything after the write is consistent: {r:?}");
    // ...a checkpoint kept before the write does too (the limit)...
    assert!(audit::verify_against(&h.store, &before).await.unwrap().is_ok());
    // ...and the one kept after it does not.
    let r = audit::verify_against(&h.store, &after).await.unwrap();
    assert!(r.problem.unwrap_or_default().contains("differs from the kept checkpoint"));
    h.store.exec("DROP TABLE snap").await;
    h.cleanup().await;
}

macro_rules! engine {
    ($m:ident, $make:path) => {
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tamper_edit() {
                let Some(h) = $make(10).await else { return };
                edit(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tamper_edit_copy() {
                let Some(h) = $make(10).await else { return };
                edit_hash_too(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tamper_delete() {
                let Some(h) = $make(10).await else { return };
                delete(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tamper_insert() {
                let Some(h) = $make(10).await else { return };
                insert(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tamper_append_forged() {
                let Some(h) = $make(10).await else { return };
                append_forged(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tamper_negative_seq() {
                let Some(h) = $make(10).await else { return };
                negative_seq(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tamper_reorder() {
                let Some(h) = $make(10).await else { return };
                reorder(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tamper_truncate() {
                let Some(h) = $make(10).await else { return };
                truncate(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rows_rolled_back() {
                let Some(h) = $make(10).await else { return };
                rolled_back_rows(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kept_checkpoint() {
                let Some(h) = $make(10).await else { return };
                rewrite_detected_by_kept_checkpoint(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fail_closed_trigger() {
                let Some(h) = $make(10).await else { return };
                fail_closed(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fail_closed_dropped_table() {
                let Some(h) = $make(10).await else { return };
                dropped_table(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_appenders_keep_one_chain() {
                let Some(h) = $make(10).await else { return };
                concurrent(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shred_entry_commits_with_the_shred() {
                let Some(h) = $make(10).await else { return };
                shred_entry_in_its_transaction(h).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn canaries_never_in_the_log() {
                let Some(h) = $make(10).await else { return };
                canary(h).await;
            }
        }
    };
}

engine!(sqlite, common::sqlite);
engine!(postgres, common::postgres);
engine!(mariadb, common::mysql);
