//! Key lifecycle figures (a bench binary, `harness = false`):
//!
//! 1. `kluis keys rotate-root`'s work: `Store::rewrap_domain_keys` over N domain keys (10,000).
//! 2. `kluis reencrypt`'s work (`kluis_cli::reencrypt::reencrypt`, batches of 50 subjects) over
//!    M records (10,000, 2 medical + 4 general fields, 100 subjects) in records per second,
//!    beside a plain read-and-write of the same records in the same run (every record listed
//!    and its two medical fields written back unchanged, in transactions of 500).
//!
//! `cargo bench -p kluis-cli --bench keys` for figures (on a quiet machine);
//! `cargo bench -p kluis-cli --bench keys -- --test` is a smoke run with small N and M.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Instant;

use kluis_blob::catalog::Documents;
use kluis_blob::{DocumentVault, LocalDir};
use kluis_core::{DomainName, LocalKeyring, TenantId};
use kluis_store::{Changes, NewRecord, Op, Schema, Sqlite, Store};

const SCHEMA: &str = kluis_cli::config::DEFAULT_SCHEMA;

async fn store(dir: &std::path::Path) -> Arc<Store<Sqlite>> {
    let s =
        Store::new(Sqlite::open(&dir.join("b.sqlite")).await.unwrap(), Schema::from_toml(SCHEMA).unwrap());
    s.migrate().await.unwrap();
    Arc::new(s)
}

async fn root_rotation(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path()).await;
    let mut keyring = LocalKeyring::generate(0).unwrap();
    let general = DomainName::general();
    for i in 0..n {
        store
            .ensure_domain_key(&keyring, &TenantId::new(format!("t{i:05}")).unwrap(), &general)
            .await
            .unwrap();
    }
    keyring.rotate(1).unwrap();
    store.activate_root_version(&keyring, kluis_store::DEFAULT_INSTANCE_WINDOW).await.unwrap();
    let t = Instant::now();
    let rewrapped = store.rewrap_domain_keys(&keyring).await.unwrap();
    let el = t.elapsed();
    // The store's own metadata key (it seals the keyring generation record) is rewrapped too.
    assert_eq!(rewrapped, n + 1);
    println!(
        "root rotation: {rewrapped} domain keys rewrapped in one transaction in {:.3} s ({:.0} keys/s)",
        el.as_secs_f64(),
        rewrapped as f64 / el.as_secs_f64()
    );
}

async fn reencryption(m: usize, subjects: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path()).await;
    let keyring = LocalKeyring::generate(0).unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let medical = DomainName::medical();
    let access =
        store.admin_access(&keyring, &tenant, &[DomainName::general(), medical.clone()]).await.unwrap();
    for chunk in (0..m).collect::<Vec<_>>().chunks(2_500) {
        let ops = chunk
            .iter()
            .map(|&i| Op::Insert {
                collection: "absence".into(),
                record: NewRecord::new(&format!("emp-{:03}", i % subjects))
                    .id(&format!("ar-{i:05}"))
                    .set("start_date", kluis_store::Value::Date("2026-11-02".into()))
                    .set("end_date", kluis_store::Value::Date("2026-11-20".into()))
                    .set("work_capacity", kluis_store::Value::Decimal("50".into()))
                    .set("reported_by", "hr")
                    .set("diagnosis", format!("diagnosis {i}"))
                    .set("doctor_notes", format!("notes {i}")),
            })
            .collect();
        store.transaction(&access, ops).await.unwrap();
    }

    // Plain read-and-write of the same records: list them, write both medical fields back.
    let t = Instant::now();
    let mut after: Option<String> = None;
    let mut touched = 0usize;
    loop {
        let page = store.list(&access, "absence", None, after.as_deref(), 500).await.unwrap();
        let ops: Vec<Op> = page
            .records
            .iter()
            .map(|r| Op::Update {
                collection: "absence".into(),
                id: r.id.clone(),
                expected_version: r.version,
                changes: Changes::new()
                    .set("diagnosis", r.get("diagnosis").cloned().unwrap())
                    .set("doctor_notes", r.get("doctor_notes").cloned().unwrap()),
            })
            .collect();
        touched += ops.len();
        store.transaction(&access, ops).await.unwrap();
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let plain = t.elapsed();
    assert_eq!(touched, m);

    store.rotate_domain_key(&keyring, &tenant, &medical).await.unwrap();
    let admin = store.admin_access(&keyring, &tenant, std::slice::from_ref(&medical)).await.unwrap();
    let docs = Documents::new(
        Arc::clone(&store),
        DocumentVault::new(LocalDir::open(tmp.path().join("blobs")).await.unwrap()),
    );
    let t = Instant::now();
    let sum = kluis_cli::reencrypt::reencrypt(&store, &docs, &admin, &medical, 50, |_| {}).await.unwrap();
    let re = t.elapsed();
    assert_eq!(sum.records_resealed as usize, m);
    println!(
        "re-encryption: {m} records ({subjects} subjects) in {:.3} s = {:.0} records/s; plain read-and-write of the same records: {:.3} s = {:.0} records/s",
        re.as_secs_f64(),
        m as f64 / re.as_secs_f64(),
        plain.as_secs_f64(),
        m as f64 / plain.as_secs_f64()
    );
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let (n, m, s) = if smoke { (200, 300, 10) } else { (10_000, 10_000, 100) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        root_rotation(n).await;
        reencryption(m, s).await;
    });
}
