//! Sealed field values: Kluis seal+open beside the bare AEAD primitive, plus the pieces a Kluis
//! seal is made of (randomness, HKDF, AEAD key setup) and blind indexes.
//!
//! Run: `cargo bench -p kluis-benches --bench values`

mod common;

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::{AeadInOut, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kluis_core::crypto::hazmat;
use kluis_core::{Backend, BlindIndexKey, Context, Suite};

use common::{BARE_KEY, backend_name, counter_nonce, domain_key, filler, medical, tenant};

const SIZES: [usize; 3] = [64, 100, 1024];

fn suite_name(s: Suite) -> &'static str {
    match s {
        Suite::Aes256Gcm => "aes256gcm",
        Suite::XChaCha20Poly1305 => "xchacha20poly1305",
        _ => "other",
    }
}

/// seal+open of one value of 64 B, 100 B and 1 KiB.
fn seal_open(c: &mut Criterion) {
    let tenant = tenant();
    let domain = medical();
    // A realistic context: about 90 bytes of associated data with the 32-byte header.
    let ctx = Context {
        tenant: &tenant,
        domain: &domain,
        collection: "absence",
        field: "diagnosis",
        record: "0b9f6c1e-3a57-4d0e-9d8e-2f1a6c3b7e41",
    };
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &BARE_KEY).expect("ring key"),
    );
    let rc_aes = aes_gcm::Aes256Gcm::new_from_slice(&BARE_KEY).expect("aes-gcm key");
    let rc_xchacha = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&BARE_KEY).expect("xchacha key");

    let mut group = c.benchmark_group("value-seal-open");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50);

    for size in SIZES {
        let pt = filler(size);
        group.throughput(Throughput::Bytes(size as u64));

        for backend in [Backend::Ring, Backend::RustCrypto] {
            let key = domain_key(backend);
            for suite in [Suite::Aes256Gcm, Suite::XChaCha20Poly1305] {
                let id = format!("kluis/{}/{}", backend_name(backend), suite_name(suite));
                group.bench_with_input(BenchmarkId::new(id, size), &pt, |b, pt| {
                    b.iter(|| {
                        let sealed = key.seal(suite, &ctx, black_box(pt)).expect("seal");
                        let opened = key.open(&ctx, black_box(&sealed)).expect("open");
                        black_box(opened.len())
                    })
                });
            }
        }

        // Bare primitives: fixed key, fresh (counter) nonce, no associated data, in place.
        let mut buf = Vec::with_capacity(size + 16);
        let mut ctr = 0u64;
        group.bench_with_input(BenchmarkId::new("bare/ring/aes256gcm", size), &pt, |b, pt| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(black_box(pt));
                let n = counter_nonce(&mut ctr);
                let tag = ring_key
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(n),
                        ring::aead::Aad::empty(),
                        &mut buf,
                    )
                    .expect("seal");
                ring_key
                    .open_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(n),
                        ring::aead::Aad::empty(),
                        tag,
                        black_box(&mut buf),
                        0..,
                    )
                    .expect("open");
                black_box(buf.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("bare/rustcrypto/aes256gcm", size), &pt, |b, pt| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(black_box(pt));
                let n = aes_gcm::Nonce::from(counter_nonce(&mut ctr));
                let tag = rc_aes.encrypt_inout_detached(&n, b"", buf.as_mut_slice().into()).expect("seal");
                rc_aes
                    .decrypt_inout_detached(&n, b"", black_box(buf.as_mut_slice()).into(), &tag)
                    .expect("open");
                black_box(buf.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("bare/rustcrypto/xchacha20poly1305", size), &pt, |b, pt| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(black_box(pt));
                let mut x = [0u8; 24];
                x[12..].copy_from_slice(&counter_nonce(&mut ctr));
                let n = chacha20poly1305::XNonce::from(x);
                let tag =
                    rc_xchacha.encrypt_inout_detached(&n, b"", buf.as_mut_slice().into()).expect("seal");
                rc_xchacha
                    .decrypt_inout_detached(&n, b"", black_box(buf.as_mut_slice()).into(), &tag)
                    .expect("open");
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

/// What one Kluis seal is made of, to explain the gap to the bare primitive. Each Kluis seal+open
/// (format v2) does: 1 `getrandom` call (the 12-byte `r` with AES, the 24-byte salt with
/// XChaCha) and with AES 1 `getpid` (the fork check of the epoch; see `public_random`), 2 XAES
/// subkey derivations and 2 commitments (prepared per key), 2 AES-256-GCM key setups (XChaCha:
/// none), 1 AEAD seal and 1 open with ~120 bytes of associated data, 4 small allocations. Format
/// v1, still read, used 2 HKDF-Expand of 64 bytes instead of the derivations and commitments.
fn components(c: &mut Criterion) {
    let mut group = c.benchmark_group("value-components");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50);

    let rng = ring::rand::SystemRandom::new();
    group.bench_function("os-random-24B", |b| {
        b.iter(|| {
            let mut salt = [0u8; 24];
            ring::rand::SecureRandom::fill(&rng, &mut salt).expect("rng");
            black_box(salt)
        })
    });

    let info = [0x5Au8; 45]; // "kluis/seal/v1" (13) || header (32)
    for backend in [Backend::Ring, Backend::RustCrypto] {
        let name = backend_name(backend);
        group.bench_function(format!("hkdf-expand-64B-incl-prk-setup/{name}"), |b| {
            b.iter(|| {
                let mut okm = [0u8; 64];
                hazmat::hkdf_expand(backend, black_box(&BARE_KEY), &info, &mut okm).expect("hkdf");
                black_box(okm)
            })
        });
        group.bench_function(format!("aead-key-setup/{name}/aes256gcm"), |b| {
            b.iter(|| black_box(hazmat::RawAead::new(backend, Suite::Aes256Gcm, black_box(&BARE_KEY))))
        });
    }
    // Format v2: per message, two AES blocks under a prepared key (XAES-256-GCM) and one SHA-256
    // compression from a prepared state (the commitment) replace the two HKDF blocks above.
    let xaes = hazmat::XaesKey::new(&BARE_KEY);
    group.bench_function("v2-xaes-derive-prepared", |b| {
        b.iter(|| black_box(xaes.derive(black_box(&[7u8; 24]))))
    });
    let commit = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update([0x11u8; 64]);
        h
    };
    group.bench_function("v2-commitment-prepared", |b| {
        b.iter(|| {
            use sha2::Digest;
            let mut h = commit.clone();
            h.update(black_box([0x22u8; 32]));
            black_box(h.finalize())
        })
    });
    group.bench_function("aead-key-setup/rustcrypto/xchacha20poly1305", |b| {
        b.iter(|| {
            black_box(hazmat::RawAead::new(
                Backend::RustCrypto,
                Suite::XChaCha20Poly1305,
                black_box(&BARE_KEY),
            ))
        })
    });
    group.finish();
}

/// The salt pool that sealing used until issue 14 (a copy of `kluis-core`'s former
/// `random::public_array`): a per-thread 4 KiB buffer of OS randomness, refilled when empty or
/// when the process id changes, each value copied out and wiped. Kept here only to measure it
/// against a `getrandom` call per value (BENCHMARKS.md, "Randomness per value").
mod old_pool {
    use std::cell::RefCell;

    const POOL: usize = 4096;

    struct Pool {
        pid: u32,
        bytes: [u8; POOL],
        pos: usize,
    }

    thread_local! {
        static PUBLIC_POOL: RefCell<Pool> = const { RefCell::new(Pool { pid: 0, bytes: [0u8; POOL], pos: POOL }) };
    }

    pub fn public_array<const N: usize>() -> [u8; N] {
        let mut out = [0u8; N];
        let pid = std::process::id();
        PUBLIC_POOL.with(|cell| {
            let mut pool = cell.borrow_mut();
            if pool.pid != pid || POOL - pool.pos < N {
                getrandom::fill(&mut pool.bytes).expect("rng");
                pool.pid = pid;
                pool.pos = 0;
            }
            let start = pool.pos;
            let src = &mut pool.bytes[start..start + N];
            out.copy_from_slice(src);
            src.fill(0);
            pool.pos = start + N;
        });
        out
    }
}

/// Randomness per sealed value: the former pool against one `getrandom` system call per value
/// (what sealing does since issue 14), and `getpid` (the fork check, one per AES seal).
fn public_random(c: &mut Criterion) {
    let mut group = c.benchmark_group("public-random");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(2000))
        .sample_size(50);
    group.bench_function("pool-12B", |b| b.iter(|| black_box(old_pool::public_array::<12>())));
    group.bench_function("pool-24B", |b| b.iter(|| black_box(old_pool::public_array::<24>())));
    group.bench_function("getrandom-12B", |b| {
        b.iter(|| {
            let mut r = [0u8; 12];
            getrandom::fill(&mut r).expect("rng");
            black_box(r)
        })
    });
    group.bench_function("getrandom-24B", |b| {
        b.iter(|| {
            let mut r = [0u8; 24];
            getrandom::fill(&mut r).expect("rng");
            black_box(r)
        })
    });
    group.bench_function("getpid", |b| b.iter(|| black_box(std::process::id())));
    group.finish();
}

/// Blind index of a 20-byte value (e.g. a national id number with a prefix).
fn blind_index(c: &mut Criterion) {
    let tenant = tenant();
    let domain = medical();
    let value = b"NL-BSN:123456782-abc";
    assert_eq!(value.len(), 20);

    let mut group = c.benchmark_group("blind-index-20B");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50);
    for backend in [Backend::Ring, Backend::RustCrypto] {
        let key = domain_key(backend);
        let name = backend_name(backend);
        group.bench_function(format!("derive+index/{name}"), |b| {
            b.iter(|| {
                let k =
                    BlindIndexKey::derive(&key, &tenant, &domain, "employees", "bsn", 16).expect("derive");
                black_box(k.index(black_box(value)))
            })
        });
        let k = BlindIndexKey::derive(&key, &tenant, &domain, "employees", "bsn", 16).expect("derive");
        group.bench_function(format!("index-only/{name}"), |b| {
            b.iter(|| black_box(k.index(black_box(value))))
        });
    }
    group.finish();
}

criterion_group!(benches, seal_open, components, public_random, blind_index);
criterion_main!(benches);
