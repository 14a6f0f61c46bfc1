//! Moving records of the legacy layout (`kluis_records`/`kluis_fields`) into the collection
//! tables survives SIGKILL at random moments: every record is in exactly one layout after each
//! kill, a rerun goes on from there, and at the end every record reads back with its values and
//! every row is the one the row log names (issue 15, point 5).
//!
//! The legacy rows are made from records written by this version and moved back by SQL: a cell's
//! sealing context does not depend on the layout, so they are what the old code wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{Data, kluis, random_u64, run_ok};
use kluis_store::{NewRecord, Op, Value};

const RECORDS: usize = 4_000;
const SUBJECTS: usize = 100;
const TRIALS: usize = 40;

fn diagnosis(i: usize) -> String {
    format!("CANARY-diagnosis-{i}")
}

async fn count(data: &Data, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(data.store.pool()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_move_survives_sigkill_and_a_rerun_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let data = Data::create(&dir).await;
    let access = data.access().await;
    let ids: Vec<String> = (0..RECORDS).map(|i| format!("lg-{i:05}")).collect();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(1_000) {
        let ops = chunk
            .iter()
            .map(|&i| Op::Insert {
                collection: "absence".into(),
                record: NewRecord::new(&format!("emp-{:03}", i % SUBJECTS))
                    .id(&ids[i])
                    .set("start_date", Value::Date("2026-11-02".into()))
                    .set("work_capacity", Value::Decimal(format!("{}", i % 101)))
                    .set("diagnosis", diagnosis(i)),
            })
            .collect();
        data.store.transaction(&access, ops).await.unwrap();
    }
    // How long the command takes to open the keyring (Argon2id) and the database and unlock the
    // keys, measured while there is nothing to move: kills land after that, while the move runs.
    // (`keys list` unlocks nothing: timed with it, most kills landed before the move began.)
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let args = ["import", "--tenant", "acme", "--collection", "absence", empty.to_str().unwrap()];
    let t = Instant::now();
    run_ok(&dir, &args);
    let startup = t.elapsed().as_millis() as u64;

    // Back into the legacy layout, cells as they are.
    let pool = data.store.pool();
    sqlx::query(
        "INSERT INTO kluis_records (tenant, collection, id, subject, version, created_at, updated_at, retain_until) \
         SELECT tenant, 'absence', id, subject, version, created_at, updated_at, retain_until FROM kluis_r_absence",
    )
    .execute(pool)
    .await
    .unwrap();
    for (field, domain) in [("start_date", "general"), ("work_capacity", "general"), ("diagnosis", "medical")]
    {
        sqlx::query(&format!(
            "INSERT INTO kluis_fields (tenant, collection, record_id, field, domain, sealed, key_version) \
             SELECT tenant, 'absence', id, '{field}', '{domain}', f_{field}, k_{field} FROM kluis_r_absence \
             WHERE f_{field} IS NOT NULL"
        ))
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query("DELETE FROM kluis_r_absence").execute(pool).await.unwrap();
    assert_eq!(count(&data, "SELECT COUNT(*) FROM kluis_records").await, RECORDS as i64);

    let (mut killed_midway, mut finished) = (0usize, false);
    for trial in 0..TRIALS {
        let mut child = kluis(&dir, &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(startup + random_u64() % 400)).await;
        match child.try_wait().unwrap() {
            Some(status) => {
                let out = child.wait_with_output().unwrap();
                assert!(status.success(), "trial {trial}: {}", String::from_utf8_lossy(&out.stderr));
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                assert!(!child.wait().unwrap().success());
            }
        }
        // Every record is in exactly one layout: none lost, none in both.
        let legacy = count(&data, "SELECT COUNT(*) FROM kluis_records").await;
        let moved = count(&data, "SELECT COUNT(*) FROM kluis_r_absence").await;
        let both =
            count(&data, "SELECT COUNT(*) FROM kluis_records r JOIN kluis_r_absence a ON a.id = r.id").await;
        assert_eq!((legacy + moved, both), (RECORDS as i64, 0), "trial {trial}");
        let cells = count(&data, "SELECT COUNT(*) FROM kluis_fields").await;
        assert_eq!(cells, legacy * 3, "trial {trial}: the legacy cells go with their record");
        if legacy > 0 && moved > 0 {
            killed_midway += 1;
        }
        if legacy == 0 {
            finished = true;
            break;
        }
    }
    eprintln!("legacy move: {killed_midway} kills landed mid-way (start-up {startup} ms)");
    if !finished {
        run_ok(&dir, &args);
    }
    assert!(killed_midway > 0, "no kill landed while the move ran");

    let fresh = Data::open(&dir).await;
    let access = fresh.access().await;
    let mut seen = 0usize;
    let mut after: Option<String> = None;
    loop {
        let page = fresh.store.list(&access, "absence", None, after.as_deref(), 1000).await.unwrap();
        for r in &page.records {
            let i: usize = r.id.trim_start_matches("lg-").parse().unwrap();
            assert_eq!(r.subject, format!("emp-{:03}", i % SUBJECTS));
            assert_eq!(r.get("diagnosis").and_then(Value::as_text), Some(diagnosis(i).as_str()));
            assert_eq!(
                r.get("work_capacity").and_then(Value::as_decimal),
                Some(format!("{}", i % 101).as_str())
            );
            seen += 1;
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, RECORDS);
    let out = run_ok(&dir, &["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("rows ok: {RECORDS} rows")), "{text}");
}
