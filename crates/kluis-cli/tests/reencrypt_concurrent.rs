//! Re-encryption (in-process, through the same function `kluis reencrypt` runs) while another
//! task inserts and updates records through the library: nothing lost, no update overwritten.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Data, kv, run_ok};
use kluis_core::DomainName;
use kluis_store::{Changes, NewRecord, Op, StoreError};

const RECORDS: usize = 1_500;
const SUBJECTS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_while_the_app_writes_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let data = Arc::new(Data::create(&dir).await);
    let access = data.access().await;
    let ops: Vec<Op> = (0..RECORDS)
        .map(|i| Op::Insert {
            collection: "absence".into(),
            record: NewRecord::new(&format!("emp-{:02}", i % SUBJECTS))
                .id(&format!("ar-{i:05}"))
                .set("diagnosis", format!("original {i}"))
                .set("work_capacity", kluis_store::Value::Decimal("50".into())),
        })
        .collect();
    data.store.transaction(&access, ops).await.unwrap();
    run_ok(&dir, &["keys", "rotate", "--tenant", "acme", "--domain", "medical"]);

    // The writer: the app, with keys unlocked before the rotation became known to it, then
    // refreshed on a retryable error, as the store asks.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let data = Arc::clone(&data);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut access = data.access().await;
            let mut expected: BTreeMap<String, String> = BTreeMap::new();
            let mut round = 0usize;
            let (mut retries, mut conflicts) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) || round < 200 {
                round += 1;
                // An update of an existing record (medical and general fields).
                let id = format!("ar-{:05}", (round * 37) % RECORDS);
                let value = format!("update {round}");
                loop {
                    let rec = data.store.get(&access, "absence", &id).await.unwrap().unwrap();
                    let ch = Changes::new()
                        .set("diagnosis", value.clone())
                        .set("work_capacity", kluis_store::Value::Decimal(format!("{}", round % 100)));
                    match data.store.update(&access, "absence", &id, rec.version, ch).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) if e.is_retryable() => {
                            retries += 1;
                            access = data.access().await;
                        }
                        Err(e) => panic!("update {id}: {e}"),
                    }
                }
                expected.insert(id, value);
                // A new record of a subject that may be moving right now.
                let new_id = format!("new-{round:05}");
                let value = format!("inserted {round}");
                loop {
                    let rec = NewRecord::new(&format!("emp-{:02}", round % SUBJECTS))
                        .id(&new_id)
                        .set("diagnosis", value.clone());
                    match data.store.insert(&access, "absence", rec).await {
                        Ok(_) => break,
                        Err(e) if e.is_retryable() => {
                            retries += 1;
                            access = data.access().await;
                        }
                        Err(e) => panic!("insert {new_id}: {e}"),
                    }
                }
                expected.insert(new_id, value);
            }
            (expected, retries, conflicts)
        })
    };

    // Re-encrypt through the command's code, in small batches, while the writer runs.
    let admin = data.access().await;
    let medical = DomainName::medical();
    let summary =
        kluis_cli::reencrypt::reencrypt(&data.store, &data.docs, &admin, &medical, 3, |_| {}).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let (expected, retries, conflicts) = writer.await.unwrap();
    eprintln!("concurrency: {summary:?}; writer retries {retries}, version conflicts {conflicts}");

    // Writes that landed after the last step may use the new subject keys already; finish.
    let admin = data.access().await;
    kluis_cli::reencrypt::reencrypt(&data.store, &data.docs, &admin, &medical, 50, |_| {}).await.unwrap();

    // Nothing lost, no update overwritten: every record holds the last value written to it.
    let fresh = Data::open(&dir).await;
    let access = fresh.access().await;
    for i in 0..RECORDS {
        let id = format!("ar-{i:05}");
        let rec = fresh.store.get(&access, "absence", &id).await.unwrap().expect("record lost");
        let want = expected.get(&id).cloned().unwrap_or_else(|| format!("original {i}"));
        assert_eq!(rec.get("diagnosis").and_then(|v| v.as_text()), Some(want.as_str()), "{id}");
        assert!(rec.get("work_capacity").is_some(), "{id}: general field lost");
    }
    for (id, want) in expected.iter().filter(|(k, _)| k.starts_with("new-")) {
        let rec = fresh.store.get(&access, "absence", id).await.unwrap().expect("inserted record lost");
        assert_eq!(rec.get("diagnosis").and_then(|v| v.as_text()), Some(want.as_str()), "{id}");
    }
    let usage = fresh.store.key_usage(Some(&fresh.tenant)).await.unwrap();
    let v1 = usage.iter().find(|u| u.domain == medical && u.version == kv(1)).unwrap();
    assert!(v1.is_unused(), "{v1:?}");
    fresh.store.retire_domain_version(&fresh.keyring, &fresh.tenant, &medical, kv(1)).await.unwrap();
    // The app's writes and the re-encryption's interleaved: every row is the one logged last.
    let rows = fresh.store.verify_rows(&[]).await.unwrap();
    assert!(rows.is_ok(), "{rows:?}");
    assert_eq!(rows.rows, RECORDS as u64 + expected.keys().filter(|k| k.starts_with("new-")).count() as u64);
}
