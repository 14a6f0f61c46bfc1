//! Streamed documents of 1 MiB and 64 MiB in 64 KiB chunks, beside the bare AEAD primitive
//! processing the same bytes in the same chunk size.
//!
//! - `seal|open/bare/...`: one AEAD call per 64 KiB chunk, in place, fixed key, fresh nonce.
//! - `seal|open/kluis-inplace/...`: `DocumentSealer::seal_chunk` / `DocumentOpener::open_chunk`
//!   (zero-copy API), including the per-document header work (data key, wrapping, metadata).
//! - `seal|open/kluis-stream/...`: `StreamSealer::push` / `StreamOpener::push` (copying API), fed
//!   64 KiB reads from one contiguous buffer, output appended to a preallocated `Vec`.
//!
//! In-place opening destroys its input, so open benches restore the ciphertext before each
//! iteration outside the timed region (`iter_custom`); bare and Kluis are measured the same way.
//!
//! Run: `cargo bench -p kluis-benches --bench documents`

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInOut, KeyInit};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use kluis_core::document::{DocumentHeader, DocumentOptions, StreamSealer};
use kluis_core::{Backend, DocumentContext, DocumentMetadata, DocumentSealer, SealKey, Suite};

use common::{BARE_KEY, counter_nonce, domain_key, filler, medical, tenant};

const CHUNK_LOG2: u8 = 16;
const CHUNK: usize = 1 << CHUNK_LOG2;
const TAG: usize = 16;
/// Size of each slice pushed into the streaming API (a typical read size).
const READ: usize = 64 * 1024;

fn index_nonce(i: usize) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&(i as u64).to_be_bytes());
    n
}

fn meta(len: usize) -> DocumentMetadata {
    DocumentMetadata {
        file_name: "verzuimdossier-2026-q1.pdf".into(),
        extension: "pdf".into(),
        content_type: "application/pdf".into(),
        length: Some(len as u64),
        created_unix: 1_767_225_600,
        uploaded_by: "user-4711".into(),
    }
}

fn opts(suite: Suite, backend: Backend) -> DocumentOptions {
    DocumentOptions { suite, chunk_log2: CHUNK_LOG2, pad: false, backend }
}

/// The bare primitives under test, behind one call shape.
enum Bare {
    Ring(Box<ring::aead::LessSafeKey>),
    RcAes(Box<aes_gcm::Aes256Gcm>),
    RcXChaCha(Box<chacha20poly1305::XChaCha20Poly1305>),
}

impl Bare {
    fn new(kind: &str) -> Self {
        match kind {
            "ring/aes256gcm" => Self::Ring(Box::new(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &BARE_KEY).expect("key"),
            ))),
            "rustcrypto/aes256gcm" => {
                Self::RcAes(Box::new(aes_gcm::Aes256Gcm::new_from_slice(&BARE_KEY).expect("key")))
            }
            _ => Self::RcXChaCha(Box::new(
                chacha20poly1305::XChaCha20Poly1305::new_from_slice(&BARE_KEY).expect("key"),
            )),
        }
    }

    /// Seals `buf` in place and appends the tag.
    #[inline]
    fn seal(&self, nonce: [u8; 12], buf: &mut Vec<u8>) {
        match self {
            Self::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::empty(),
                        buf,
                    )
                    .expect("seal");
                buf.extend_from_slice(tag.as_ref());
            }
            Self::RcAes(k) => {
                let tag = k
                    .encrypt_inout_detached(&aes_gcm::Nonce::from(nonce), b"", buf.as_mut_slice().into())
                    .expect("seal");
                buf.extend_from_slice(&tag);
            }
            Self::RcXChaCha(k) => {
                let mut x = [0u8; 24];
                x[12..].copy_from_slice(&nonce);
                let tag = k
                    .encrypt_inout_detached(
                        &chacha20poly1305::XNonce::from(x),
                        b"",
                        buf.as_mut_slice().into(),
                    )
                    .expect("seal");
                buf.extend_from_slice(&tag);
            }
        }
    }

    /// Opens `buf` (ciphertext || tag) in place and truncates it to the plaintext.
    #[inline]
    fn open(&self, nonce: [u8; 12], buf: &mut Vec<u8>) {
        let n = buf.len() - TAG;
        let mut tag = [0u8; TAG];
        tag.copy_from_slice(&buf[n..]);
        let body = &mut buf[..n];
        match self {
            Self::Ring(k) => {
                k.open_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::empty(),
                    ring::aead::Tag::from(tag),
                    body,
                    0..,
                )
                .expect("open");
            }
            Self::RcAes(k) => {
                k.decrypt_inout_detached(&aes_gcm::Nonce::from(nonce), b"", body.into(), &tag.into())
                    .expect("open");
            }
            Self::RcXChaCha(k) => {
                let mut x = [0u8; 24];
                x[12..].copy_from_slice(&nonce);
                k.decrypt_inout_detached(&chacha20poly1305::XNonce::from(x), b"", body.into(), &tag.into())
                    .expect("open");
            }
        }
        buf.truncate(n);
    }
}

/// A Kluis document sealed with the in-place API: header and chunks.
struct SealedDoc {
    header: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

fn seal_doc(
    key: &SealKey,
    ctx: &DocumentContext<'_>,
    m: &DocumentMetadata,
    suite: Suite,
    plain: &[Vec<u8>],
) -> SealedDoc {
    let mut s = DocumentSealer::new(key, ctx, m, opts(suite, key.backend())).expect("sealer");
    let n = plain.len();
    let chunks = plain
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = Vec::with_capacity(CHUNK + TAG);
            c.extend_from_slice(p);
            s.seal_chunk(&mut c, i + 1 == n).expect("seal chunk");
            c
        })
        .collect();
    SealedDoc { header: s.header().to_vec(), chunks }
}

/// Copies `src` chunks into `dst` (reusing its allocations).
fn restore(dst: &mut [Vec<u8>], src: &[Vec<u8>]) {
    for (d, s) in dst.iter_mut().zip(src) {
        d.clear();
        d.extend_from_slice(s);
    }
}

/// Times `body` only; `prepare` runs before each iteration, untimed.
fn timed<S, P: FnMut(&mut S), B: FnMut(&mut S)>(
    iters: u64,
    state: &mut S,
    mut prepare: P,
    mut body: B,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        prepare(state);
        let t = Instant::now();
        body(state);
        total += t.elapsed();
    }
    total
}

fn bench_size(group: &mut BenchmarkGroup<'_, WallTime>, size: usize) {
    assert_eq!(size % CHUNK, 0);
    let n = size / CHUNK;
    let tenant = tenant();
    let domain = medical();
    let ctx = DocumentContext { tenant: &tenant, domain: &domain, document_id: "doc-7f3a9c" };
    let m = meta(size);
    let ring_key = domain_key(Backend::Ring);
    let rc_key = domain_key(Backend::RustCrypto);

    let plain_chunk = filler(CHUNK);
    let plain: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let mut c = Vec::with_capacity(CHUNK + TAG);
            c.extend_from_slice(&plain_chunk);
            c
        })
        .collect();
    let input: Vec<u8> = plain.concat();
    // Working chunks (capacity for the tag, so sealing in place never reallocates).
    let mut work: Vec<Vec<u8>> = plain.clone();
    let mut ctr = 0u64;

    group.throughput(Throughput::Bytes(size as u64));

    // ---- bare primitives ----
    for kind in ["ring/aes256gcm", "rustcrypto/aes256gcm", "rustcrypto/xchacha20poly1305"] {
        let bare = Bare::new(kind);
        group.bench_function(format!("seal/bare/{kind}"), |b| {
            b.iter(|| {
                for c in work.iter_mut() {
                    c.truncate(CHUNK);
                    bare.seal(counter_nonce(&mut ctr), c);
                }
                black_box(&work);
            })
        });
        // Ciphertext under nonces 0..n for the open bench.
        let pristine: Vec<Vec<u8>> = plain
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut c = p.clone();
                bare.seal(index_nonce(i), &mut c);
                c
            })
            .collect();
        group.bench_function(format!("open/bare/{kind}"), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    &mut work,
                    |w| restore(w, &pristine),
                    |w| {
                        for (i, c) in w.iter_mut().enumerate() {
                            bare.open(index_nonce(i), c);
                        }
                        black_box(&*w);
                    },
                )
            })
        });
    }

    // ---- Kluis, in-place (zero-copy) API ----
    let cases: [(&str, &SealKey, Suite); 3] = [
        ("ring/aes256gcm", &ring_key, Suite::Aes256Gcm),
        ("rustcrypto/aes256gcm", &rc_key, Suite::Aes256Gcm),
        ("rustcrypto/xchacha20poly1305", &rc_key, Suite::XChaCha20Poly1305),
    ];
    for (name, key, suite) in cases {
        group.bench_function(format!("seal/kluis-inplace/{name}"), |b| {
            b.iter(|| {
                let mut s = DocumentSealer::new(key, &ctx, &m, opts(suite, key.backend())).expect("sealer");
                for (i, c) in work.iter_mut().enumerate() {
                    c.truncate(CHUNK);
                    s.seal_chunk(c, i + 1 == n).expect("seal chunk");
                }
                black_box((s.header().len(), &work));
            })
        });
        let doc = seal_doc(key, &ctx, &m, suite, &plain);
        group.bench_function(format!("open/kluis-inplace/{name}"), |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    &mut work,
                    |w| restore(w, &doc.chunks),
                    |w| {
                        let opener = DocumentHeader::parse(black_box(&doc.header))
                            .and_then(|h| h.open(key, &ctx))
                            .expect("open header");
                        for (i, c) in w.iter_mut().enumerate() {
                            opener.open_chunk(i as u64, i + 1 == n, c).expect("open chunk");
                        }
                        black_box(&*w);
                    },
                )
            })
        });
    }
    drop(work);

    // ---- Kluis, streaming (copying) API ----
    let out_cap = size + n * TAG + 4096;
    let mut out: Vec<u8> = Vec::with_capacity(out_cap);
    let stream_ct: Vec<u8> = {
        let doc = seal_doc(&ring_key, &ctx, &m, Suite::Aes256Gcm, &plain);
        let mut v = doc.header.clone();
        for c in &doc.chunks {
            v.extend_from_slice(c);
        }
        v
    };
    // Sanity check (untimed): the stored stream opens to the input with both backends.
    for key in [&ring_key, &rc_key] {
        out.clear();
        let hdr = DocumentHeader::parse(&stream_ct).expect("header");
        let mut so = hdr.open(key, &ctx).expect("open header").stream();
        so.push(&stream_ct[hdr.len()..], &mut out).expect("push");
        so.finish(&mut out).expect("finish");
        assert!(out == input, "document does not round-trip");
    }
    for (name, key) in [("ring/aes256gcm", &ring_key), ("rustcrypto/aes256gcm", &rc_key)] {
        group.bench_function(format!("seal/kluis-stream/{name}"), |b| {
            b.iter(|| {
                out.clear();
                let s = DocumentSealer::new(key, &ctx, &m, opts(Suite::Aes256Gcm, key.backend()))
                    .expect("sealer");
                let mut ss = StreamSealer::new(s);
                out.extend_from_slice(ss.header());
                for piece in black_box(&input).chunks(READ) {
                    ss.push(piece, &mut out).expect("push");
                }
                let mut tail = ss.finish().expect("finish");
                while let Some(c) = tail.next_chunk().expect("tail") {
                    out.extend_from_slice(&c);
                }
                black_box(&out);
            })
        });
        group.bench_function(format!("open/kluis-stream/{name}"), |b| {
            b.iter(|| {
                out.clear();
                let hdr = DocumentHeader::parse(black_box(&stream_ct)).expect("header");
                let body = &stream_ct[hdr.len()..];
                let mut so = hdr.open(key, &ctx).expect("open header").stream();
                for piece in body.chunks(READ) {
                    so.push(piece, &mut out).expect("push");
                }
                so.finish(&mut out).expect("finish");
                black_box(&out);
            })
        });
    }
}

fn documents(c: &mut Criterion) {
    {
        let mut g = c.benchmark_group("document-1MiB");
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_millis(1500))
            .sample_size(20);
        bench_size(&mut g, 1 << 20);
        g.finish();
    }
    {
        let mut g = c.benchmark_group("document-64MiB");
        // Flat sampling: every sample runs the same number of iterations (at least one); each
        // iteration is 10 to 60 ms. Open benches also spend untimed time restoring the input.
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(20)
            .sampling_mode(SamplingMode::Flat);
        bench_size(&mut g, 64 << 20);
        g.finish();
    }
}

criterion_group!(benches, documents);
criterion_main!(benches);
