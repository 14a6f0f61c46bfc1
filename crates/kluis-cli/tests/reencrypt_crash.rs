//! `kluis reencrypt` killed with SIGKILL at random moments loses nothing, and a rerun finishes.
//!
//! 10,000 absence reports (2 medical + 4 general fields) over 100 employees and 12 medical
//! documents, written through the library; the medical key rotated with the binary; then the
//! real binary is started and SIGKILLed at random moments (at least 20 trials, small batches so
//! the kills land mid-way), rerun to completion, and every record and document is read back
//! with its original value, and the old version is retired through the binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::needless_range_loop
)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Data, kluis, random_u64, run_ok};
use kluis_blob::NewDocument;
use kluis_core::{DocumentMetadata, DomainName};
use kluis_store::{NewRecord, Op};

const RECORDS: usize = 10_000;
const SUBJECTS: usize = 100;
const DOCUMENTS: usize = 12;
const TRIALS: usize = 24;

fn diagnosis(i: usize) -> String {
    format!("CANARY-diagnosis-{i:05}-burn-out")
}

fn notes(i: usize) -> String {
    format!("notes {i}: terugval, opnieuw {}%", i % 100)
}

fn doc_content(i: usize) -> Vec<u8> {
    (0..(20_000 + i * 1_000)).map(|j| (j * 31 + i) as u8).collect()
}

async fn medical_usage(data: &Data) -> BTreeMap<u32, (u64, u64, u64)> {
    data.store
        .key_usage(Some(&data.tenant))
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.domain == DomainName::medical())
        .map(|u| (u.version.get(), (u.subject_keys, u.records, u.documents)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_survives_sigkill_and_a_rerun_finishes() {
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let data = Data::create(&dir).await;
    let access = data.access().await;

    // 10,000 records in transactions of 2,500.
    let ids: Vec<String> = (0..RECORDS).map(|i| format!("ar-{i:05}")).collect();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(2_500) {
        let ops = chunk
            .iter()
            .map(|&i| Op::Insert {
                collection: "absence".into(),
                record: NewRecord::new(&format!("emp-{:03}", i % SUBJECTS))
                    .id(&ids[i])
                    .set("start_date", kluis_store::Value::Date("2026-11-02".into()))
                    .set("end_date", kluis_store::Value::Date("2026-11-20".into()))
                    .set("work_capacity", kluis_store::Value::Decimal(format!("{}", i % 101)))
                    .set("reported_by", format!("hr-{}", i % 7))
                    .set("diagnosis", diagnosis(i))
                    .set("doctor_notes", notes(i)),
            })
            .collect();
        data.store.transaction(&access, ops).await.unwrap();
    }
    let mut doc_ids = Vec::new();
    for i in 0..DOCUMENTS {
        let doc = NewDocument {
            subject: format!("emp-{:03}", i * 7 % SUBJECTS),
            record: Some(ids[i].clone()),
            metadata: DocumentMetadata {
                file_name: format!("verslag-{i}.pdf"),
                extension: "pdf".into(),
                content_type: "application/pdf".into(),
                length: Some(doc_content(i).len() as u64),
                created_unix: 1_795_000_000,
                uploaded_by: "dr.devries".into(),
            },
        };
        let row = data.docs.put(&access, &DomainName::medical(), doc, &doc_content(i)[..]).await.unwrap();
        doc_ids.push(row.document_id);
    }
    eprintln!("[{:?}] data written", t0.elapsed());
    let before = medical_usage(&data).await;
    assert_eq!(before[&1], (SUBJECTS as u64, RECORDS as u64, DOCUMENTS as u64), "{before:?}");

    run_ok(&dir, &["keys", "rotate", "--tenant", "acme", "--domain", "medical"]);

    // Kill the real binary at random moments.
    let mut killed_midway = 0usize;
    let mut finished_early = 0usize;
    let mut last = medical_usage(&data).await[&1];
    for trial in 0..TRIALS {
        let mut child =
            kluis(&dir, &["--json", "reencrypt", "--tenant", "acme", "--domain", "medical", "--batch", "2"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
        let delay = 100 + random_u64() % 900;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        match child.try_wait().unwrap() {
            Some(status) => {
                let out = child.wait_with_output().unwrap();
                assert!(status.success(), "trial {trial}: {}", String::from_utf8_lossy(&out.stderr));
                finished_early += 1;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                let status = child.wait().unwrap();
                assert!(!status.success());
            }
        }
        let now = medical_usage(&data).await;
        let v1 = now.get(&1).copied().unwrap_or((0, 0, 0));
        if v1 != last && v1 != (0, 0, 0) {
            killed_midway += 1;
        }
        // Nothing is ever lost: every subject key, record and document is on v1 or v2.
        let v2 = now.get(&2).copied().unwrap_or((0, 0, 0));
        assert!(v1.0 + v2.0 >= SUBJECTS as u64, "trial {trial}: subject keys {now:?}");
        assert_eq!(v2.2 + v1.2, DOCUMENTS as u64, "trial {trial}: documents {now:?}");
        last = v1;
        if v1 == (0, 0, 0) {
            break;
        }
    }
    eprintln!(
        "crash test: {killed_midway} kills landed mid-way, {finished_early} runs finished before the kill"
    );

    eprintln!("[{:?}] trials done", t0.elapsed());
    // A rerun finishes the job.
    let out = run_ok(&dir, &["--json", "reencrypt", "--tenant", "acme", "--domain", "medical"]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["retirable_versions"], serde_json::json!([1]), "{summary}");
    let after = medical_usage(&data).await;
    assert_eq!(after[&1], (0, 0, 0), "{after:?}");
    assert_eq!(after[&2], (SUBJECTS as u64, RECORDS as u64, DOCUMENTS as u64), "{after:?}");

    eprintln!("[{:?}] rerun done", t0.elapsed());
    // Every record and document opens with its original value (fresh keys, fresh store).
    let fresh = Data::open(&dir).await;
    let access = fresh.access().await;
    let mut after_id = None;
    let mut seen = 0usize;
    loop {
        let page = fresh.store.list(&access, "absence", None, after_id.as_deref(), 1_000).await.unwrap();
        for r in &page.records {
            let i: usize = r.id.trim_start_matches("ar-").parse().unwrap();
            assert_eq!(r.subject, format!("emp-{:03}", i % SUBJECTS));
            assert_eq!(r.get("diagnosis").and_then(|v| v.as_text()), Some(diagnosis(i).as_str()), "{}", r.id);
            assert_eq!(r.get("doctor_notes").and_then(|v| v.as_text()), Some(notes(i).as_str()), "{}", r.id);
            assert_eq!(r.get("start_date").and_then(|v| v.as_date()), Some("2026-11-02"));
            assert_eq!(r.get("end_date").and_then(|v| v.as_date()), Some("2026-11-20"));
            assert_eq!(
                r.get("work_capacity").and_then(|v| v.as_decimal()),
                Some(format!("{}", i % 101).as_str())
            );
            assert_eq!(
                r.get("reported_by").and_then(|v| v.as_text()),
                Some(format!("hr-{}", i % 7).as_str())
            );
            seen += 1;
        }
        match page.next {
            Some(n) => after_id = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, RECORDS);
    for (i, id) in doc_ids.iter().enumerate() {
        let mut content = Vec::new();
        let meta = fresh.docs.get(&access, id, &mut content).await.unwrap();
        assert_eq!(content, doc_content(i), "document {i}");
        assert_eq!(meta.file_name, format!("verslag-{i}.pdf"));
    }

    eprintln!("[{:?}] verified", t0.elapsed());
    // The old version can be retired now (and the canary is nowhere in the database file).
    run_ok(&dir, &["keys", "retire", "--tenant", "acme", "--domain", "medical", "--version", "1"]);
    let keys = run_ok(&dir, &["--json", "keys", "list", "--tenant", "acme"]);
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    let v1 = keys.as_array().unwrap().iter().find(|k| k["domain"] == "medical" && k["version"] == 1).unwrap();
    assert_eq!(v1["state"], "destroyed", "{keys}");
    let db = std::fs::read(dir.join("kluis.sqlite")).unwrap();
    assert!(!db.windows(14).any(|w| w == b"CANARY-diagnos"), "plaintext in the database file");
    // Every row is the one Kluis wrote last: the killed runs committed their row log entries
    // with their rows, or neither.
    let verify = run_ok(&dir, &["audit", "verify"]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(out.contains(&format!("rows ok: {RECORDS} rows")), "{out}");
}
