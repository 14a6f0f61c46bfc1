//! Bench harness for documents (not a test): throughput against the bare AEAD, and memory and
//! speed of large documents on the local directory and Azurite.
//!
//! ```text
//! cargo bench -p kluis-blob --bench documents                        # throughput, 256 MiB
//! cargo bench -p kluis-blob --bench documents -- throughput 1024     # throughput, 1 GiB
//! cargo bench -p kluis-blob --bench documents -- roundtrip local 2048 [DIR]   # DIR may be on a share
//! cargo bench -p kluis-blob --bench documents -- roundtrip smb 2048       # needs KLUIS_TEST_SMB_DIR
//! cargo bench -p kluis-blob --bench documents -- roundtrip azurite 2048  # needs KLUIS_TEST_AZURITE_*
//! ```
//!
//! Peak memory is measured from outside: run the built binary under `/usr/bin/time -v` (see
//! docs/DOCUMENTS.md for the exact commands). `throughput` compares, in one run, the bare chunk
//! AEAD (`seal_chunk` / `open_chunk` in place on one buffer) with the whole streaming path
//! (async reader → vault → backend that discards, and in-memory object → vault → null writer).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kluis_blob::{
    BlobBackend, BlobError, DocumentKeys, DocumentVault, GcReport, LocalDir, NewDocument, ObjectName, Upload,
    VaultOptions,
};
use kluis_core::document::DocumentOptions;
use kluis_core::{DocumentContext, DocumentHeader, DocumentSealer};
use tokio::io::{AsyncReadExt, AsyncWrite};

const MIB: u64 = 1 << 20;
const BYTE: u8 = 0x5a;

/// Discards everything written to it (the "null sink" for puts).
#[derive(Debug, Default)]
struct NullBackend;

#[derive(Debug)]
struct NullUpload(u64);

impl Upload for NullUpload {
    async fn append(&mut self, part: &[u8]) -> kluis_blob::Result<()> {
        self.0 += std::hint::black_box(part).len() as u64;
        Ok(())
    }
    async fn commit(self) -> kluis_blob::Result<u64> {
        Ok(self.0)
    }
    async fn abort(self) -> kluis_blob::Result<()> {
        Ok(())
    }
}

/// Objects in memory (the source for the get-to-null-sink measurement).
#[derive(Debug, Default)]
struct MemBackend(Mutex<HashMap<ObjectName, std::sync::Arc<Vec<u8>>>>);

impl BlobBackend for NullBackend {
    type Upload = NullUpload;
    async fn begin(&self, _: &ObjectName) -> kluis_blob::Result<NullUpload> {
        Ok(NullUpload(0))
    }
    async fn len(&self, _: &ObjectName) -> kluis_blob::Result<u64> {
        Err(BlobError::NotFound)
    }
    async fn read_range(&self, _: &ObjectName, _: u64, _: u64, _: &mut Vec<u8>) -> kluis_blob::Result<()> {
        Err(BlobError::NotFound)
    }
    async fn delete(&self, _: &ObjectName) -> kluis_blob::Result<bool> {
        Ok(false)
    }
    async fn list(&self) -> kluis_blob::Result<Vec<ObjectName>> {
        Ok(Vec::new())
    }
    async fn collect_garbage(&self, _: &HashSet<ObjectName>, _: Duration) -> kluis_blob::Result<GcReport> {
        Ok(GcReport::default())
    }
}

/// The memory backend stores the whole object: only for the in-process throughput run.
#[derive(Debug, Clone, Default)]
struct Mem(std::sync::Arc<MemBackend>);

#[derive(Debug)]
struct MemUp(Mem, ObjectName, Vec<u8>);

impl Upload for MemUp {
    async fn append(&mut self, part: &[u8]) -> kluis_blob::Result<()> {
        self.2.extend_from_slice(part);
        Ok(())
    }
    async fn commit(self) -> kluis_blob::Result<u64> {
        let n = self.2.len() as u64;
        self.0.0.0.lock().unwrap().insert(self.1, std::sync::Arc::new(self.2));
        Ok(n)
    }
    async fn abort(self) -> kluis_blob::Result<()> {
        Ok(())
    }
}

impl BlobBackend for Mem {
    type Upload = MemUp;
    async fn begin(&self, name: &ObjectName) -> kluis_blob::Result<MemUp> {
        Ok(MemUp(self.clone(), name.clone(), Vec::new()))
    }
    async fn len(&self, name: &ObjectName) -> kluis_blob::Result<u64> {
        self.0.0.lock().unwrap().get(name).map(|v| v.len() as u64).ok_or(BlobError::NotFound)
    }
    async fn read_range(
        &self,
        name: &ObjectName,
        s: u64,
        e: u64,
        out: &mut Vec<u8>,
    ) -> kluis_blob::Result<()> {
        let obj = self.0.0.lock().unwrap().get(name).cloned().ok_or(BlobError::NotFound)?;
        out.extend_from_slice(&obj[s as usize..e as usize]);
        Ok(())
    }
    async fn read_split(
        &self,
        name: &ObjectName,
        s: u64,
        e: u64,
        piece: usize,
        out: &mut [Vec<u8>],
    ) -> kluis_blob::Result<usize> {
        let obj = self.0.0.lock().unwrap().get(name).cloned().ok_or(BlobError::NotFound)?;
        let mut n = 0;
        for (dst, src) in out.iter_mut().zip(obj[s as usize..e as usize].chunks(piece)) {
            dst.clear();
            dst.extend_from_slice(src);
            n += 1;
        }
        Ok(n)
    }
    async fn delete(&self, name: &ObjectName) -> kluis_blob::Result<bool> {
        Ok(self.0.0.lock().unwrap().remove(name).is_some())
    }
    async fn list(&self) -> kluis_blob::Result<Vec<ObjectName>> {
        Ok(self.0.0.lock().unwrap().keys().cloned().collect())
    }
    async fn collect_garbage(&self, _: &HashSet<ObjectName>, _: Duration) -> kluis_blob::Result<GcReport> {
        Ok(GcReport::default())
    }
}

/// A source that costs nothing: it reports `left` bytes as read without writing them (the
/// caller's buffer keeps what it held). Isolates the vault's own overhead on put.
struct NullSource {
    left: u64,
}

impl tokio::io::AsyncRead for NullSource {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.remaining());
        // The vault passes initialised memory, so this only moves the cursor.
        buf.initialize_unfilled_to(n);
        buf.advance(n);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A writer that checks every byte is `BYTE` and counts them.
struct CheckSink(u64);

impl AsyncWrite for CheckSink {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        assert!(buf.iter().all(|&b| b == BYTE), "wrong bytes read back");
        self.0 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn new_doc(len: u64) -> NewDocument {
    NewDocument { subject: "emp-bench".into(), record: None, metadata: common::meta("bench.bin", Some(len)) }
}

const ROUNDS: usize = 7;
const DEFAULT_READ_KIB: usize = 4096;

fn throughput(rt: &tokio::runtime::Runtime, size_mib: u64, read_kib: usize) {
    let size = size_mib * MIB;
    let keys = common::medical();
    let k = DocumentKeys::domain(&keys);
    let opts = DocumentOptions::default();
    let cs = 1usize << opts.chunk_log2;
    let chunks = size / cs as u64;
    let ctx = DocumentContext { tenant: keys.tenant(), domain: keys.domain(), document_id: "bench" };

    // Bare AEAD: seal every chunk in place in one buffer (no I/O, no copies).
    let seal_run = || {
        let mut sealer =
            DocumentSealer::new(keys.active_key().unwrap(), &ctx, &common::meta("b", None), opts).unwrap();
        let mut buf = vec![BYTE; cs];
        let t = Instant::now();
        for i in 0..chunks {
            buf.truncate(cs);
            sealer.seal_chunk(&mut buf, i + 1 == chunks).unwrap();
        }
        std::hint::black_box(&buf);
        t.elapsed()
    };
    // Bare AEAD open: 64 sealed chunks opened in place, cycling, `chunks` times.
    let sample = 64u64.min(chunks);
    let mut sealer =
        DocumentSealer::new(keys.active_key().unwrap(), &ctx, &common::meta("b", None), opts).unwrap();
    let header = sealer.header().to_vec();
    let mut sealed = Vec::new();
    for i in 0..sample {
        let mut b = vec![BYTE; cs];
        sealer.seal_chunk(&mut b, i + 1 == sample).unwrap();
        sealed.push(b);
    }
    let opener = DocumentHeader::parse(&header).unwrap().open(keys.active_key().unwrap(), &ctx).unwrap();
    let open_run = || {
        let mut buf = Vec::with_capacity(cs + 16);
        let t = Instant::now();
        for i in 0..chunks {
            let j = i % sample;
            buf.clear();
            buf.extend_from_slice(&sealed[j as usize]);
            opener.open_chunk(j, j + 1 == sample, &mut buf).unwrap();
        }
        std::hint::black_box(&buf);
        t.elapsed()
    };

    // Bare AEAD open with a source in RAM: every chunk sealed into one buffer of the document's
    // size (too big for the cache, like the in-memory object the get reads), then each chunk
    // copied into one buffer and opened in place. The same work as the get path minus the vault.
    let mut big = Vec::with_capacity((chunks as usize) * (cs + 16));
    let mut big_sealer =
        DocumentSealer::new(keys.active_key().unwrap(), &ctx, &common::meta("b", None), opts).unwrap();
    let big_header = big_sealer.header().to_vec();
    let mut b = Vec::with_capacity(cs + 16);
    for i in 0..chunks {
        b.clear();
        b.resize(cs, BYTE);
        big_sealer.seal_chunk(&mut b, i + 1 == chunks).unwrap();
        big.extend_from_slice(&b);
    }
    let big_opener =
        DocumentHeader::parse(&big_header).unwrap().open(keys.active_key().unwrap(), &ctx).unwrap();
    let open_ram_run = || {
        let mut buf = Vec::with_capacity(cs + 16);
        let t = Instant::now();
        for (i, c) in big.chunks(cs + 16).enumerate() {
            buf.clear();
            buf.extend_from_slice(c);
            big_opener.open_chunk(i as u64, i as u64 + 1 == chunks, &mut buf).unwrap();
        }
        std::hint::black_box(&buf);
        t.elapsed()
    };

    // Streaming put: async reader → vault → a backend that discards the parts.
    let null = DocumentVault::new(NullBackend);
    let put_run = || {
        rt.block_on(async {
            let t = Instant::now();
            let src = tokio::io::repeat(BYTE).take(size);
            null.put(&k, &new_doc(size), src).await.unwrap();
            t.elapsed()
        })
    };

    let put_null_run = || {
        rt.block_on(async {
            let t = Instant::now();
            null.put(&k, &new_doc(size), NullSource { left: size }).await.unwrap();
            t.elapsed()
        })
    };

    // Streaming get: object in memory → vault → a writer that drops the bytes.
    let mem =
        DocumentVault::with_options(Mem::default(), VaultOptions::default().with_read_size(read_kib << 10))
            .unwrap();
    let d = rt.block_on(mem.put(&k, &new_doc(size), tokio::io::repeat(BYTE).take(size))).unwrap();
    let get_run = || {
        rt.block_on(async {
            let t = Instant::now();
            let n = mem.get(&d, &k, tokio::io::sink()).await.unwrap();
            assert_eq!(n, size);
            t.elapsed()
        })
    };
    // The same get on one core: read-ahead off, every chunk opened on the caller's task.
    let mem1 = DocumentVault::with_options(
        mem.backend().clone(),
        VaultOptions::default().with_read_size(read_kib << 10).with_read_ahead(false),
    )
    .unwrap();
    let get1_run = || {
        rt.block_on(async {
            let t = Instant::now();
            let n = mem1.get(&d, &k, tokio::io::sink()).await.unwrap();
            assert_eq!(n, size);
            t.elapsed()
        })
    };
    // Interleaved rounds, best of each: the machine is shared, so the minimum is the figure least
    // disturbed by other load, and bare and streamed runs see the same conditions.
    let max = Duration::MAX;
    let (mut seal, mut open, mut put, mut get, mut put_null, mut open_ram) = (max, max, max, max, max, max);
    let mut get1 = max;
    // Also paired: in each round the bare open runs right before each get, and the median of
    // the per-round ratios is less sensitive to load bursts than the best of each.
    let rounds = std::env::var("KLUIS_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let (mut pair_ahead, mut pair_one) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        seal = seal.min(seal_run());
        put = put.min(put_run());
        put_null = put_null.min(put_null_run());
        open_ram = open_ram.min(open_ram_run());
        let o1 = open_run();
        let g = get_run();
        let o2 = open_run();
        let g1 = get1_run();
        open = open.min(o1).min(o2);
        get = get.min(g);
        get1 = get1.min(g1);
        pair_ahead.push(o1.as_secs_f64() / g.as_secs_f64());
        pair_one.push(o2.as_secs_f64() / g1.as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        100.0 * v[v.len() / 2]
    };
    let (pa, p1) = (median(&mut pair_ahead), median(&mut pair_one));
    let (s, o, p, g) = (mbps(size, seal), mbps(size, open), mbps(size, put), mbps(size, get));
    println!(
        "throughput, {size_mib} MiB, 64 KiB chunks, {:?}, reads of {read_kib} KiB, best of {rounds} interleaved rounds",
        opts.suite
    );
    println!("  bare AEAD seal (in place)           {s:8.0} MiB/s");
    println!("  put: reader -> vault -> null sink  {p:8.0} MiB/s  = {:5.1}% of bare seal", 100.0 * p / s);
    let pn = mbps(size, put_null);
    println!("  put: null source -> vault -> null  {pn:8.0} MiB/s  = {:5.1}% of bare seal", 100.0 * pn / s);
    println!("  bare AEAD open (in place)           {o:8.0} MiB/s");
    let or = mbps(size, open_ram);
    println!("  bare open, chunks copied from RAM  {or:8.0} MiB/s  = {:5.1}% of bare open", 100.0 * or / o);
    println!(
        "  get: memory -> vault -> null sink  {g:8.0} MiB/s  = {:5.1}% of bare open, {:5.1}% of bare open from RAM  (read-ahead: 2 threads)",
        100.0 * g / o,
        100.0 * g / or
    );
    let g1 = mbps(size, get1);
    println!(
        "  get, read-ahead off (one thread)   {g1:8.0} MiB/s  = {:5.1}% of bare open, {:5.1}% of bare open from RAM",
        100.0 * g1 / o,
        100.0 * g1 / or
    );
    println!(
        "  paired (bare open then get, median of {rounds} rounds): read-ahead {pa:5.1}% of bare open, read-ahead off {p1:5.1}%"
    );
}

async fn roundtrip<B: BlobBackend>(vault: &DocumentVault<B>, label: &str, size_mib: u64) {
    let size = size_mib * MIB;
    let keys = common::medical();
    let k = DocumentKeys::domain(&keys);
    let t = Instant::now();
    let d = vault.put(&k, &new_doc(size), tokio::io::repeat(BYTE).take(size)).await.unwrap();
    let put = t.elapsed();
    // Get with read-ahead (the vault's default) and with read-ahead off, in that order or, with
    // KLUIS_BENCH_OFF_FIRST=1, the other way round (to see any effect of the order).
    let one =
        DocumentVault::with_options(vault.backend(), VaultOptions::default().with_read_ahead(false)).unwrap();
    let off_first = std::env::var("KLUIS_BENCH_OFF_FIRST").is_ok_and(|v| v == "1");
    let (mut get, mut get1) = (Duration::ZERO, Duration::ZERO);
    for ahead in if off_first { [false, true] } else { [true, false] } {
        let t = Instant::now();
        let mut sink = CheckSink(0);
        if ahead {
            vault.get(&d, &k, &mut sink).await.unwrap();
            get = t.elapsed();
        } else {
            one.get(&d, &k, &mut sink).await.unwrap();
            get1 = t.elapsed();
        }
        assert_eq!(sink.0, size);
    }
    let t = Instant::now();
    let r = vault.get_range(&d, &k, size / 2, size / 2 + MIB).await.unwrap();
    let range = t.elapsed();
    assert!(r.expose_secret().iter().all(|&b| b == BYTE));
    vault.delete(&d).await.unwrap();
    println!(
        "{label}: {size_mib} MiB (object {} bytes): put {:.1} s = {:.0} MiB/s; get {:.1} s = {:.0} MiB/s (read-ahead), {:.1} s = {:.0} MiB/s (read-ahead off); 1 MiB range in the middle {:.1} ms",
        d.object_len,
        put.as_secs_f64(),
        mbps(size, put),
        get.as_secs_f64(),
        mbps(size, get),
        get1.as_secs_f64(),
        mbps(size, get1),
        range.as_secs_f64() * 1000.0
    );
}

fn main() {
    // `--test` (the suite's smoke run, `cargo test --benches -- --test`) alone: 16 MiB.
    let smoke = std::env::args().any(|a| a == "--test");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    match args.as_slice() {
        [] if smoke => throughput(&rt, 16, DEFAULT_READ_KIB),
        [] | ["throughput"] => throughput(&rt, 256, DEFAULT_READ_KIB),
        ["throughput", n] => throughput(&rt, n.parse().unwrap(), DEFAULT_READ_KIB),
        ["throughput", n, r] => throughput(&rt, n.parse().unwrap(), r.parse().unwrap()),
        ["roundtrip", kind @ ("local" | "smb"), n, rest @ ..] => {
            let n: u64 = n.parse().unwrap();
            let tmp;
            let dir = match (*kind, rest.first()) {
                (_, Some(d)) => std::path::PathBuf::from(d),
                ("smb", None) => {
                    let share = std::env::var("KLUIS_TEST_SMB_DIR")
                        .expect("KLUIS_TEST_SMB_DIR (scripts/start-smb.sh)");
                    tmp = tempfile::tempdir_in(share).unwrap();
                    tmp.path().to_path_buf()
                }
                _ => {
                    tmp = tempfile::tempdir().unwrap();
                    tmp.path().to_path_buf()
                }
            };
            rt.block_on(async {
                let backend = LocalDir::open(&dir).await.unwrap();
                let caps = backend.capabilities();
                let vault = DocumentVault::with_options(backend, VaultOptions::default()).unwrap();
                let label = format!("{kind} dir ({:?}, private modes: {})", caps.publish, caps.private_modes);
                roundtrip(&vault, &label, n).await;
            });
        }
        ["roundtrip", "azurite", n] => {
            let n: u64 = n.parse().unwrap();
            rt.block_on(async {
                let h = common::azure_with(VaultOptions::default(), 4 << 20).await.expect("azurite required");
                roundtrip(&h.vault, "azurite", n).await;
            });
        }
        other => panic!("unknown arguments {other:?}; see the top of benches/documents.rs"),
    }
}
