//! A subject access package is streamed with bounded memory: a 64 MiB document goes into the
//! package while the process's resident set grows by far less than the document (sampled from
//! `/proc/self/status` at every write into the output, and the kernel's peak after
//! `/proc/self/clear_refs`), and it reads back byte for byte. Alone in its test binary so no other
//! test's allocations count. Linux only (`/proc`); elsewhere the memory checks are skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::{ctx, principal};
use kluis_blob::catalog::Documents;
use kluis_blob::{DocumentVault, LocalDir, NewDocument};
use kluis_core::{DocumentMetadata, DomainName};
use kluis_service::package::{PackageKey, Recipients, read_package};
use sha2::{Digest, Sha256};

const SIZE: u64 = 64 << 20;
const MIB: u64 = 1 << 20;
/// How much the resident set may grow while the package is written (the vault reads 4 MiB
/// ahead; age encrypts 64 KiB at a time).
const BOUND: u64 = 32 * MIB;

/// Deterministic content, generated as it is read (never held whole).
struct Gen {
    pos: u64,
    state: u64,
}

impl Gen {
    fn new() -> Self {
        Self { pos: 0, state: 0x9e37_79b9_7f4a_7c15 }
    }
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = usize::try_from((SIZE - self.pos).min(buf.len() as u64)).unwrap();
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = (self.state >> 24) as u8;
        }
        self.pos += n as u64;
        n
    }
}

impl tokio::io::AsyncRead for Gen {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = this.fill(buf.initialize_unfilled());
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

fn status(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The output: a file, with the resident set sampled at every write and the largest write kept.
struct Sampling {
    file: std::fs::File,
    max_rss: u64,
    max_write: usize,
    writes: u64,
}

impl Write for Sampling {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        self.max_write = self.max_write.max(buf.len());
        if let Some(rss) = status("VmRSS:") {
            self.max_rss = self.max_rss.max(rss);
        }
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_document_is_streamed_with_bounded_memory() {
    let h = common::sqlite(1000).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let backend = LocalDir::open(tmp.path().join("blobs")).await.unwrap();
    // The production vault options (4 MiB reads with read-ahead).
    let docs = Documents::new(h.store.clone(), DocumentVault::new(backend));
    let dr = principal("dr.jansen", &h.acme, "company_doctor");
    let meta = DocumentMetadata {
        file_name: "scan.bin".into(),
        extension: "bin".into(),
        content_type: "application/octet-stream".into(),
        length: Some(SIZE),
        created_unix: 1_790_000_000,
        uploaded_by: "dr.jansen".into(),
    };
    let doc = NewDocument { subject: "emp-1".into(), record: None, metadata: meta };
    h.svc.documents(&docs).unwrap().put(&dr, &ctx(), &DomainName::medical(), doc, Gen::new()).await.unwrap();
    let mut expected = Sha256::new();
    let mut g = Gen::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = g.fill(&mut buf);
        if n == 0 {
            break;
        }
        expected.update(&buf[..n]);
    }
    let expected = expected.finalize();

    let identity = age::x25519::Identity::generate();
    let recipients = Recipients::x25519(&[identity.to_public().to_string()]).unwrap();
    let path = tmp.path().join("package.age");
    let base = status("VmRSS:");
    // Resets the kernel's peak (VmHWM) to the current resident set.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let mut out =
        Sampling { file: std::fs::File::create(&path).unwrap(), max_rss: 0, max_write: 0, writes: 0 };
    let s = h.svc.export_package(&dr, &ctx(), &docs, "emp-1", &recipients, &mut out, |_| {}).await.unwrap();
    assert_eq!((s.documents, s.document_bytes), (1, SIZE));
    let peak = status("VmHWM:");
    assert!(out.writes > 1000, "written in many pieces: {}", out.writes);
    assert!(out.max_write <= 1 << 20, "largest single write {}", out.max_write);
    if let Some(base) = base {
        let grew = out.max_rss.saturating_sub(base);
        eprintln!("resident set: base {} MiB, grew by at most {} MiB while writing", base / MIB, grew / MIB);
        assert!(
            grew < BOUND,
            "the resident set grew by {} MiB for a {} MiB document",
            grew / MIB,
            SIZE / MIB
        );
        if let (true, Some(peak)) = (peak_reset, peak) {
            let grew = peak.saturating_sub(base);
            eprintln!("peak after clear_refs: {} MiB above base", grew / MIB);
            assert!(grew < BOUND, "peak {} MiB above base", grew / MIB);
        }
    }
    assert!(std::fs::metadata(&path).unwrap().len() > SIZE);

    // Read back, streamed: the document's hash and length, the manifest's hash.
    let mut got = None;
    let mut manifest = None;
    read_package(std::fs::File::open(&path).unwrap(), &PackageKey::Identity(identity), |p, r| {
        if p == "manifest.json" {
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            manifest = Some(serde_json::from_slice::<serde_json::Value>(&v).unwrap());
        } else if p.starts_with("documents/") && p.ends_with("/scan.bin") {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0u64;
            loop {
                let k = r.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
                n += k as u64;
            }
            got = Some((n, hasher.finalize()));
        }
        Ok(())
    })
    .unwrap();
    let (n, hash) = got.unwrap();
    assert_eq!(n, SIZE);
    assert_eq!(hash, expected);
    let m = manifest.unwrap();
    assert_eq!(m["documents"]["files"][0]["sha256"].as_str().unwrap(), hex::encode(expected));
    h.cleanup().await;
}
