//! Benches: per-request cost of a sealed read with a warm unwrap cache (no KMS call) against the
//! local keyring, and cold start-up unwrapping 1,000 domain keys through a KMS.
//!
//! AWS figures need moto: `eval "$(bash scripts/start-moto.sh)"` first (else they are skipped).
//! Azure figures use the HTTPS protocol stand-in from the tests (its RSA work runs in this
//! process, so they show the client's overhead, not Key Vault's latency).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "bench code"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use common::*;
use criterion::{Criterion, criterion_group, criterion_main};
use kluis_core::keys::{CacheConfig, CachingProvider, UnwrapRequest, domain_key_ad, new_domain_key};
use kluis_core::{Context, DomainKeyRecord, DomainKeySet, KeyVersion, LocalKeyring, RootKeyProvider};
use kluis_kms::RetryConfig;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn bench_retry() -> RetryConfig {
    RetryConfig { concurrency: 32, ..RetryConfig::default() }
}

/// `n` domain keys (one version each) across n/2 tenants × {medical, general}.
async fn many_keys(p: &dyn RootKeyProvider, n: usize) -> Vec<DomainKeyRecord> {
    let mut out = Vec::with_capacity(n);
    let specs: Vec<(String, &str)> = (0..n)
        .map(|i| (format!("tenant-{:04}", i / 2), if i % 2 == 0 { "medical" } else { "general" }))
        .collect();
    for chunk in specs.chunks(32) {
        let futs = chunk.iter().map(|(t, d)| {
            let (t, d) = (tenant(t), domain(d));
            async move { new_domain_key(p, &t, &d, KeyVersion::FIRST).await.unwrap().0 }
        });
        out.extend(futures_util::future::join_all(futs).await);
    }
    out
}

/// One request: get the key set of (tenant, domain) through the cache, open one sealed field.
fn sealed_read(
    rt: &tokio::runtime::Runtime,
    p: &dyn RootKeyProvider,
    recs: &[DomainKeyRecord],
    sealed: &[u8],
) {
    let (t, d) = (recs[0].tenant.clone(), recs[0].domain.clone());
    let ctx = Context { tenant: &t, domain: &d, collection: "absence", field: "diagnosis", record: "r1" };
    rt.block_on(async {
        let set = DomainKeySet::unwrap(p, recs).await.unwrap();
        black_box(set.open(&ctx, sealed).unwrap());
    });
}

fn warm(c: &mut Criterion) {
    let rt = rt();
    let cfg = CacheConfig::default();
    let (t, d) = (tenant("acme"), domain("medical"));
    let ctx = Context { tenant: &t, domain: &d, collection: "absence", field: "diagnosis", record: "r1" };
    let mut g = c.benchmark_group("kms/warm_sealed_read");

    // The local keyring without a cache: every request unwraps (one AEAD open) in process.
    let direct = LocalKeyring::generate(0).unwrap();
    let drecs = vec![rt.block_on(new_domain_key(&direct, &t, &d, KeyVersion::FIRST)).unwrap().0];
    let dsealed =
        rt.block_on(DomainKeySet::unwrap(&direct, &drecs)).unwrap().seal(&ctx, b"burn-out").unwrap();
    g.bench_function("keyring_direct", |b| b.iter(|| sealed_read(&rt, &direct, &drecs, &dsealed)));

    let keyring = CachingProvider::new(Counting::new(LocalKeyring::generate(0).unwrap()), cfg);
    let krecs = vec![rt.block_on(new_domain_key(&keyring, &t, &d, KeyVersion::FIRST)).unwrap().0];
    let ksealed =
        rt.block_on(DomainKeySet::unwrap(&keyring, &krecs)).unwrap().seal(&ctx, b"burn-out").unwrap();
    sealed_read(&rt, &keyring, &krecs, &ksealed);
    g.bench_function("keyring_cached", |b| b.iter(|| sealed_read(&rt, &keyring, &krecs, &ksealed)));

    if let Some(url) = moto_url() {
        let arn = rt.block_on(moto_key(&url));
        let aws = CachingProvider::new(Counting::new(aws_provider_at(&url, &arn, bench_retry())), cfg);
        let recs = vec![rt.block_on(new_domain_key(&aws, &t, &d, KeyVersion::FIRST)).unwrap().0];
        let sealed = rt.block_on(DomainKeySet::unwrap(&aws, &recs)).unwrap().seal(&ctx, b"burn-out").unwrap();
        sealed_read(&rt, &aws, &recs, &sealed);
        let before = aws.inner().calls();
        g.bench_function("aws_kms_cached", |b| b.iter(|| sealed_read(&rt, &aws, &recs, &sealed)));
        println!("aws kms calls during warm reads: {}", aws.inner().calls() - before);
        paired("aws_kms_cached", &rt, (&keyring, &krecs, &ksealed), (&aws, &recs, &sealed));
    }

    let (p, _s) = rt.block_on(azure_provider(false));
    let azure = CachingProvider::new(Counting::new(p), cfg);
    let recs = vec![rt.block_on(new_domain_key(&azure, &t, &d, KeyVersion::FIRST)).unwrap().0];
    let sealed = rt.block_on(DomainKeySet::unwrap(&azure, &recs)).unwrap().seal(&ctx, b"burn-out").unwrap();
    sealed_read(&rt, &azure, &recs, &sealed);
    let before = azure.inner().calls();
    g.bench_function("azure_kv_cached", |b| b.iter(|| sealed_read(&rt, &azure, &recs, &sealed)));
    println!("azure key vault calls during warm reads: {}", azure.inner().calls() - before);
    paired("azure_kv_cached", &rt, (&keyring, &krecs, &ksealed), (&azure, &recs, &sealed));
    g.finish();
}

type Case<'a> = (&'a dyn RootKeyProvider, &'a [DomainKeyRecord], &'a [u8]);

/// A paired comparison that survives a busy machine: alternate rounds of the keyring and the KMS
/// case and print the median ratio of their per-read times.
fn paired(name: &str, rt: &tokio::runtime::Runtime, a: Case<'_>, b: Case<'_>) {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    const ROUNDS: usize = 31;
    const ITERS: u32 = 5_000;
    let time = |c: Case<'_>| {
        let start = std::time::Instant::now();
        for _ in 0..ITERS {
            sealed_read(rt, c.0, c.1, c.2);
        }
        start.elapsed() / ITERS
    };
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let x = time(a);
        let y = time(b);
        ta.push(x);
        tb.push(y);
        ratios.push(y.as_secs_f64() / x.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    ta.sort();
    tb.sort();
    println!(
        "paired warm read, {name} / keyring_cached: median ratio {:.3} (keyring {:?}, {name} {:?}; medians of {ROUNDS} alternating rounds of {ITERS})",
        ratios[ROUNDS / 2],
        ta[ROUNDS / 2],
        tb[ROUNDS / 2]
    );
}

/// Start-up: one batched unwrap of 1,000 domain keys into an empty cache.
fn cold_start(
    rt: &tokio::runtime::Runtime,
    cache: &CachingProvider<impl RootKeyProvider>,
    recs: &[DomainKeyRecord],
) {
    cache.clear();
    let aads: Vec<Vec<u8>> =
        recs.iter().map(|r| domain_key_ad(&r.tenant, &r.domain, r.version).unwrap()).collect();
    let items: Vec<UnwrapRequest<'_>> = recs
        .iter()
        .zip(&aads)
        .map(|(r, aad)| UnwrapRequest { aad, wrapped: r.wrapped.as_ref().unwrap() })
        .collect();
    let out = rt.block_on(cache.unwrap_batch(&items)).unwrap();
    assert!(out.iter().all(Result::is_ok));
    assert_eq!(cache.len(), recs.len());
}

fn cold(c: &mut Criterion) {
    // `cargo bench -- --test` (a smoke run) uses 20 keys; a real run 1,000.
    let n: usize = if std::env::args().any(|a| a == "--test") { 20 } else { 1000 };
    let rt = rt();
    let cfg = CacheConfig::default();
    let mut g = c.benchmark_group("kms/cold_start_1000_keys");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(20));

    let keyring = CachingProvider::new(LocalKeyring::generate(0).unwrap(), cfg);
    let recs = rt.block_on(many_keys(&keyring, n));
    g.bench_function("keyring", |b| b.iter(|| cold_start(&rt, &keyring, &recs)));

    if let Some(url) = moto_url() {
        let arn = rt.block_on(moto_key(&url));
        let aws = CachingProvider::new(aws_provider_at(&url, &arn, bench_retry()), cfg);
        let recs = rt.block_on(many_keys(&aws, n));
        g.bench_function("aws_kms_moto", |b| b.iter(|| cold_start(&rt, &aws, &recs)));
    }

    let (p, _s) = rt.block_on(azure_provider(false));
    let azure = CachingProvider::new(p, cfg);
    let recs = rt.block_on(many_keys(&azure, n));
    g.bench_function("azure_kv_stand_in", |b| b.iter(|| cold_start(&rt, &azure, &recs)));
    g.finish();
}

criterion_group!(benches, warm, cold);
criterion_main!(benches);
